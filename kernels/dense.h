// Dense bf16 projections with bias: y[T, N] (+)= x[T, K] W^T + b, W bf16 [N, K] as stored in the checkpoint
// (q/k/v/o projections, router, lm_head). Few tokens take the GEMV path (streams W once with 16-byte loads, every
// token of the batch reuses each loaded chunk; at one token the first chunks are issued before the PDL wait); many
// tokens take the tensor-core path: wgmma on sm_90 (dense_wgmma.cuh) where K is a multiple of 64, else mma.sync
// (bf16, fp32 accumulate; both give the same bits).
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
  // Fused RMSNorm (GEMV path only, T <= kDenseGemvMaxTokens): when norm_x is set the input is
  // rmsnorm(norm_x) = norm_w * norm_x * rsqrt(mean(norm_x^2) + norm_eps) in fp32 (x / x_lo unused), and block 0
  // also writes the normed rows as bf16 to norm_out when given (the experts' input), so no separate norm launch.
  const float* norm_x = nullptr;  // fp32 [T, K] contiguous
  const uint16_t* norm_w = nullptr;  // bf16 [K]
  float norm_eps = 1e-5f;
  uint16_t* norm_out = nullptr;   // optional bf16 [T, K]
  bool accumulate = false;  // y += ... (residual add fused) instead of y = ...
  bool pdl = false;
  int force_path = 0;       // 0 = choose by T, 1 = GEMV, 2 = tensor cores (tests)
  int gemm = 0;             // the tensor-core kernel: 0 = by device and shape, 1 = mma.sync, 2 = wgmma (sm_90a),
                            // 3 = wgmma fed by the TMA (sm_90a, dense_tma.cuh) wherever it applies (no K split;
                            // 0 takes it for prompt-sized T, 2 never)
  int wgmma_tile = -1;      // wgmma tile shape for tests and timing (kDwTiles index; gemm 3: 0 the 256-token tile,
                            // above 0 the 128-token one); -1 picks by T and N
  // wgmma GEMM's K splits (a cluster of blocks a tile, summed in rank order): 0 picks by the tiles' blocks (splits
  // where they leave SMs idle: batched decode steps; the bits then depend on T), 1 never (mma.sync's bits, batch
  // invariant), 2..4 forced.
  int split_k = 0;
  // GEMV variant for tests and timing (N > 256); -1 picks by shape: chunks per lane copied to shared memory before
  // pdl_wait, 4 / 8 / 12 / 16, or 0 for the unstaged kernel.
  int gemv_stage = -1;
};
// Tokens up to this count take the GEMV path.
constexpr int kDenseGemvMaxTokens = 8;
void dense(const DenseParams& p, cudaStream_t stream);
// Whether dense() would run the wgmma GEMM for p at many tokens (gemm 0 or 2): an sm_90 device, K % 64 == 0.
bool dense_wgmma_ok(const DenseParams& p);
// The wgmma GEMM's tile shapes (tests and timing): how many, and their warpgroups (64 weight rows each) and tokens.
int dense_wgmma_tiles();
void dense_wgmma_tile_shape(int i, int& warpgroups, int& tokens);

}  // namespace hm::cuda
