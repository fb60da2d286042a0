// RMSNorm (fp32 math, bf16 out for the projections that follow) and YaRN RoPE fused with the paged KV-cache
// write. inv_freq comes from hm::ref::rope_inv_freq on the host, so GPU and CPU use the same table.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace hm::cuda {

struct RmsNormParams {
  const float* x = nullptr;       // fp32 [*, H] (row stride H)
  const int32_t* rows = nullptr;  // optional [T]: output row i normalises x row rows[i] (else row i)
  const uint16_t* w = nullptr;    // bf16 [H]
  uint16_t* out = nullptr;        // bf16 [T, H]
  uint16_t* out_lo = nullptr;     // optional bf16 [T, H]: y - out (the rounding residual), so that out + out_lo
                                  // carries y to ~2^-17 for projections that want fp32-grade inputs (dense x_lo)
  int T = 0, H = 0;
  float eps = 1e-5f;
  bool pdl = false;
};
void rmsnorm(const RmsNormParams& p, cudaStream_t stream);

// In place on qkv fp32 [T, (nq + 2 nkv) * D] (q heads, then k heads, then v heads): rotates q and k at
// positions pos[t], then writes k and v as bf16 to the paged cache slot slot[t] (= block * block_size + offset;
// negative = do not write). Cache layout per layer: [num_blocks * block_size, nkv, D] for K and for V.
struct RopeKvParams {
  float* qkv = nullptr;
  const int32_t* pos = nullptr;   // [T]
  const int32_t* slot = nullptr;  // [T]
  const float* inv_freq = nullptr;  // [D/2] device
  float attn_factor = 1.f;
  uint16_t* k_cache = nullptr;
  uint16_t* v_cache = nullptr;
  int T = 0, nq = 0, nkv = 0, D = 0;
  bool pdl = false;
};
void rope_kv_write(const RopeKvParams& p, cudaStream_t stream);

}  // namespace hm::cuda
