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

// An order-preserving key of a logit: larger logit, larger key; NaN ranks as -inf (0x007FFFFF), so every valid
// key is above 0, which marks a taken or absent expert.
__device__ __forceinline__ uint32_t topk_key(float l) {
  const uint32_t b = __float_as_uint(l == l ? (l == 0.f ? 0.f : l) : -INFINITY);  // -0 ties with +0
  return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}
__device__ __forceinline__ float topk_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? key & 0x7FFFFFFFu : ~key);
}

// The warp's top-k over one row of logits (E <= kMaxE); lane 0 writes ids and softmax weights (global or shared
// memory). Every lane of the warp must call it. Each of the k rounds is one warp max of the keys (redux.sync) and
// a ballot per 32 experts for the lowest id holding it: the decode expert kernels run this in every block, and
// the shuffle tree it replaced (5 levels of value + id per round) cost the one-token layer several us.
__device__ __forceinline__ void warp_topk(const float* logits, int E, int k, int32_t* ids, float* weights) {
  const int lane = threadIdx.x & 31;
  uint32_t key[kMaxE / 32];
#pragma unroll
  for (int i = 0; i < kMaxE / 32; i++) {
    const int e = i * 32 + lane;
    key[i] = e < E ? topk_key(logits[e]) : 0u;
  }
  float top[8], m = 0.f, sum = 0.f;
#pragma unroll
  for (int j = 0; j < 8; j++) {  // unrolled so top[] stays in registers
    if (j >= k) break;
    uint32_t mine = 0;
#pragma unroll
    for (int i = 0; i < kMaxE / 32; i++) mine = max(mine, key[i]);
    const uint32_t best = __reduce_max_sync(0xffffffffu, mine);
    int be = 0;
#pragma unroll
    for (int i = 0; i < kMaxE / 32; i++) {  // the lowest expert id holding the best key (ties: lower id first)
      const uint32_t hit = __ballot_sync(0xffffffffu, key[i] == best);
      if (hit) {
        be = i * 32 + __ffs(hit) - 1;
        if ((be & 31) == lane) key[i] = 0u;
        break;
      }
    }
    const float bv = topk_value(best);
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
