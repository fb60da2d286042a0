// What both tensor-core prefill attention kernels (attention_prefill_mma.cu, attention_prefill_wgmma.cu) derive the
// same way: the key range of each row a lane holds and of the whole tile, and two small arithmetic helpers.
#pragma once

#include <climits>

#include "attention.h"
#include "common.cuh"

namespace hm::cuda {

constexpr float kPrefillLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t prefill_pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ float prefill_exp2(float x) {  // ex2.approx: exp2(-inf) = +0, exact 1 at 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Keys a lane's rows (tokens g and g + 8 of the tile, mma fragment rows) and the whole tile may see: row r sees
// [lo[r], hi[r]] (an idle row past count sees none: INT_MAX, -1); the tile's union is [t_lo, t_hi], and every
// active row sees [t_lo_max, t_hi_min] (warp reductions over the tile's tokens, the same in every warp).
struct PrefillKeys {
  int lo[2], hi[2];
  int t_lo, t_hi, t_lo_max, t_hi_min;
};
__device__ __forceinline__ PrefillKeys prefill_keys(const AttentionCommon& c, int first, int count, int g, int lane) {
  PrefillKeys k;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int ti = g + 8 * r;
    if (ti < count) {
      k.hi[r] = c.pos[first + ti];
      k.lo[r] = c.window > 0 ? max(0, k.hi[r] - c.window + 1) : 0;
    } else {
      k.lo[r] = INT_MAX, k.hi[r] = -1;
    }
  }
  int t_lo = INT_MAX, t_hi = -1, t_lo_max = -1, t_hi_min = INT_MAX;
  if (lane < count) {
    const int p = c.pos[first + lane];
    const int l0 = c.window > 0 ? max(0, p - c.window + 1) : 0;
    t_lo = l0, t_hi = p, t_lo_max = l0, t_hi_min = p;
  }
  k.t_lo = __reduce_min_sync(0xffffffffu, t_lo);
  k.t_hi = __reduce_max_sync(0xffffffffu, t_hi);
  k.t_lo_max = __reduce_max_sync(0xffffffffu, t_lo_max);
  k.t_hi_min = __reduce_min_sync(0xffffffffu, t_hi_min);
  return k;
}

}  // namespace hm::cuda
