// The top-k of one row of router logits, shared by router_topk_softmax (kernels/router.cu) and the decode expert
// kernels that route for themselves (moe_impl.cuh): ties lower expert id first, ids in descending-logit order,
// NaN ranks last, softmax over the k selected.
#pragma once
#include <cfloat>
#include <climits>

#include "common.cuh"

namespace hm::cuda {
namespace {

constexpr int kMaxE = 256;       // 8 logits per lane

// The warp's top-k over one row of logits (E <= kMaxE); lane 0 writes ids and softmax weights (global or shared
// memory). Every lane of the warp must call it.
__device__ __forceinline__ void warp_topk(const float* logits, int E, int k, int32_t* ids, float* weights) {
  const int lane = threadIdx.x & 31;
  float v[kMaxE / 32];
#pragma unroll
  for (int i = 0; i < kMaxE / 32; i++) {
    const int e = i * 32 + lane;
    const float l = e < E ? logits[e] : -INFINITY;
    v[i] = l == l ? l : -INFINITY;  // NaN ranks last, so k valid ids are always chosen
  }
  uint32_t taken = 0;
  float top[8], m = 0.f, sum = 0.f;
#pragma unroll
  for (int j = 0; j < 8; j++) {  // unrolled so top[] stays in registers
    if (j >= k) break;
    float bv = -INFINITY;
    int be = INT_MAX;
#pragma unroll
    for (int i = 0; i < kMaxE / 32; i++) {
      const int e = i * 32 + lane;
      if (e < E && !(taken >> i & 1u) && (v[i] > bv || (v[i] == bv && e < be))) {
        bv = v[i];
        be = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      if (ov > bv || (ov == bv && oe < be)) {
        bv = ov;
        be = oe;
      }
    }
    if ((be & 31) == lane) taken |= 1u << (be >> 5);
    if (j == 0) m = bv;
    top[j] = bv;
    sum += expf(bv - m);
    if (lane == 0) ids[j] = be;
  }
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < 8; j++)
      if (j < k) weights[j] = expf(top[j] - m) / sum;
  }
}

}  // namespace
}  // namespace hm::cuda
