// Routing: top-k of the router logits (ties: lower expert id first) and the softmax over the k selected.
//   router_topk_kernel: one warp per token, each lane holding E/32 logits; k rounds of a warp arg-max (moe_topk.cuh).
// The router logits themselves are a dense() GEMV (kernels/dense.h), with the RMSNorm fused in for decode.
#include "moe.h"
#include "moe_topk.cuh"

namespace hm::cuda {
namespace {

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
