// Routing: top-k of the router logits (ties: lower expert id first) and the softmax over the k selected.
//   router_topk_kernel: one warp per token, each lane holding E/32 logits; k rounds of a warp arg-max.
//   router_fused_kernel: the router GEMV for few tokens (one warp per expert row, its bf16 row loaded into
//                        registers before pdl_wait), then the last block to arrive runs the top-k for every token
//                        and resets the arrival counter (so a graph replays without a memset).
#include <cfloat>
#include <climits>

#include "common.cuh"
#include "moe.h"

namespace hm::cuda {
namespace {

constexpr int kMaxE = 256;       // 8 logits per lane
constexpr int kFusedMaxH = 4096; // fused router: 16 x 16-byte chunks of a row per lane
constexpr int kFusedWarps = 2;

// The warp's top-k over one row of logits; lane 0 writes ids and softmax weights.
__device__ __forceinline__ void warp_topk(const float* logits, int E, int k, int32_t* ids, float* weights,
                                          bool coherent) {
  const int lane = threadIdx.x & 31;
  float v[kMaxE / 32];
#pragma unroll
  for (int i = 0; i < kMaxE / 32; i++) {
    const int e = i * 32 + lane;
    const float l = e < E ? (coherent ? __ldcg(logits + e) : logits[e]) : -INFINITY;
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
  warp_topk(p.logits + size_t(tok) * p.ld_logits, p.E, p.k, p.ids + tok * p.k, p.weights + tok * p.k, false);
}

__global__ void __launch_bounds__(kFusedWarps * 32) router_fused_kernel(RouterParams p, unsigned int* counter) {
  const int lane = threadIdx.x & 31, e = blockIdx.x * kFusedWarps + (threadIdx.x >> 5);
  const int nch = p.H / 8;  // 16-byte chunks per row
  uint4 w[kFusedMaxH / 256];
  const uint4* wrow = reinterpret_cast<const uint4*>(p.W + size_t(e < p.E ? e : 0) * p.H);
#pragma unroll
  for (int i = 0; i < kFusedMaxH / 256; i++) {
    const int c = i * 32 + lane;
    w[i] = (e < p.E && c < nch) ? ld_stream16(wrow + c) : make_uint4(0, 0, 0, 0);
  }
  const float bias = (e < p.E && p.b) ? bf2f_bits(p.b[e]) : 0.f;
  pdl_wait();
  pdl_trigger();
  if (e < p.E)
    for (int t = 0; t < p.n; t++) {
      const uint4* xr = reinterpret_cast<const uint4*>(p.x + size_t(t) * p.ldx);
      float acc = 0.f;
#pragma unroll
      for (int i = 0; i < kFusedMaxH / 256; i++) {
        const int c = i * 32 + lane;
        if (c < nch) {
          float wf[8], xf[8];
          unpack8(w[i], wf);
          unpack8(__ldg(xr + c), xf);
#pragma unroll
          for (int q = 0; q < 8; q++) acc = fmaf(wf[q], xf[q], acc);
        }
      }
      acc = warp_sum(acc);
      if (lane == 0) p.logits[size_t(t) * p.E + e] = acc + bias;
    }
  // Last block to arrive computes the top-k of every token.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int t = threadIdx.x >> 5; t < p.n; t += kFusedWarps)
    warp_topk(p.logits + size_t(t) * p.E, p.E, p.k, p.ids + t * p.k, p.weights + t * p.k, true);
  if (threadIdx.x == 0) *counter = 0;
}

}  // namespace

void router_topk_softmax(const RouterTopkParams& p, cudaStream_t stream) {
  const char* who = "router_topk_softmax";
  HM_REQUIRE(p.n >= 0 && p.E >= 1 && p.E <= kMaxE && p.k >= 1 && p.k <= 8 && p.k <= p.E, who);
  HM_REQUIRE(p.logits && p.ids && p.weights && p.ld_logits >= p.E, who);
  if (p.n == 0) return;
  launch(router_topk_kernel, dim3(ceil_div(p.n, 4)), dim3(128), 0, stream, p.pdl, p);
}

size_t router_workspace_bytes() { return 256; }

void router_forward(const RouterParams& p, cudaStream_t stream) {
  const char* who = "router_forward";
  HM_REQUIRE(p.n >= 0 && p.n <= kMoeDecodeMaxTokens, who);
  HM_REQUIRE(p.E >= 1 && p.E <= kMaxE && p.k >= 1 && p.k <= 8 && p.k <= p.E, who);
  HM_REQUIRE(p.H > 0 && p.H % 8 == 0 && p.H <= kFusedMaxH && p.ldx >= p.H && p.ldx % 8 == 0, who);
  HM_REQUIRE(p.x && p.W && p.logits && p.ids && p.weights && p.workspace, who);
  HM_REQUIRE(reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.W) % 16 == 0, who);
  if (p.n == 0) return;
  launch(router_fused_kernel, dim3(ceil_div(p.E, kFusedWarps)), dim3(kFusedWarps * 32), 0, stream, p.pdl, p,
         static_cast<unsigned int*>(p.workspace));
}

}  // namespace hm::cuda
