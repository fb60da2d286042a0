// Routing: top-k of the router logits (ties: lower expert id first) and the softmax over the k selected.
//   router_topk_kernel: one warp per token, each lane holding E/32 logits; k rounds of a warp arg-max.
// The router logits themselves are a dense() GEMV (kernels/dense.h), with the RMSNorm fused in for decode.
#include <cfloat>
#include <climits>

#include "common.cuh"
#include "moe.h"

namespace hm::cuda {
namespace {

constexpr int kMaxE = 256;       // 8 logits per lane

// The warp's top-k over one row of logits; lane 0 writes ids and softmax weights.
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

__global__ void router_topk_kernel(RouterTopkParams p) {
  pdl_wait();
  pdl_trigger();
  const int tok = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (tok >= p.n) return;
  warp_topk(p.logits + size_t(tok) * p.ld_logits, p.E, p.k, p.ids + tok * p.k, p.weights + tok * p.k);
}

}  // namespace

void router_topk_softmax(const RouterTopkParams& p, cudaStream_t stream) {
  const char* who = "router_topk_softmax";
  HM_REQUIRE(p.n >= 0 && p.E >= 1 && p.E <= kMaxE && p.k >= 1 && p.k <= 8 && p.k <= p.E, who);
  HM_REQUIRE(p.logits && p.ids && p.weights && p.ld_logits >= p.E, who);
  if (p.n == 0) return;
  launch(router_topk_kernel, dim3(ceil_div(p.n, 4)), dim3(128), 0, stream, p.pdl, p);
}

}  // namespace hm::cuda
