// Dense bf16 projections with bias: y[T, N] (+)= x[T, K] W^T + b, W bf16 [N, K] as stored in the checkpoint
// (q/k/v/o projections, lm_head). Few tokens take the GEMV path (streams W once with 16-byte loads, every token
// of the batch reuses each loaded chunk); many tokens take the tensor-core path (mma.sync bf16, fp32 accumulate).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace hm::cuda {

struct DenseParams {
  const uint16_t* x = nullptr;  // bf16 [T, K], row stride ldx (elements)
  const uint16_t* x_lo = nullptr;  // optional bf16 [T, K] (same stride): x + x_lo is the input (fp32-grade, from
                                   // rmsnorm's out_lo); the tensor-core path runs a second MMA for it
  const uint16_t* W = nullptr;  // bf16 [N, K], rows contiguous
  const uint16_t* b = nullptr;  // bf16 [N] or null
  float* y = nullptr;           // fp32 [T, N], row stride ldy
  int T = 0, N = 0, K = 0;
  int ldx = 0, ldy = 0;
  bool accumulate = false;  // y += ... (residual add fused) instead of y = ...
  bool pdl = false;
  int force_path = 0;       // 0 = choose by T, 1 = GEMV, 2 = tensor cores (tests)
};
// Tokens up to this count take the GEMV path.
constexpr int kDenseGemvMaxTokens = 8;
void dense(const DenseParams& p, cudaStream_t stream);

}  // namespace hm::cuda
