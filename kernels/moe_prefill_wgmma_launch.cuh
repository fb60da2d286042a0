// The launchers of the wgmma expert GEMMs: x into the k-permutation, then gate_up and down in the tiles
// prefill_wgmma_bn picks, on moe_prefill_wgmma.cuh's kernel or (MoeParams::wgmma_ws) moe_prefill_wgmma_ws.cuh's.
#pragma once

#include "moe_prefill_wgmma_ws.cuh"

namespace hm::cuda::moe {
namespace {

// Grid (ceil(N / kWgBM), T tile slots). BN 0: the fitted tiles.
// `ws`: the producer-warp form (moe_prefill_wgmma_ws.cuh).
template <bool GATE_UP, int BN>
void launch_prefill_wgmma_gemm(const GemmArgs& g, int E, int T, cudaStream_t stream, bool pdl, bool ws) {
  if (ws) {
    using S = WsShape<BN>;
    constexpr auto kernel = moe_prefill_wgmma_ws<GATE_UP, BN>;
    allow_dynamic_smem<kernel>(S::SMEM);
    launch(kernel, dim3(ceil_div(g.W.rows, S::BM), T), dim3(S::THREADS), S::SMEM, stream, pdl, g, E);
  } else {
    constexpr auto kernel = moe_prefill_wgmma<GATE_UP, BN>;
    constexpr size_t smem = wg_smem_bytes<BN>();
    allow_dynamic_smem<kernel>(smem);
    launch(kernel, dim3(ceil_div(g.W.rows, kWgBM), T), dim3(kWgThreads), smem, stream, pdl, g, E);
  }
}

template <int BN>
void launch_prefill_wgmma_both(GemmArgs g, const WMat& gu, const WMat& dn, const MoeParams& p, const Workspace& ws,
                               int P, cudaStream_t stream) {
  const int T = prefill_max_tiles(P, p.E, BN == 0 ? 128 : BN);
  g.W = gu;
  g.A = ws.xp;
  g.lda = p.H;
  launch_prefill_wgmma_gemm<true, BN>(g, p.E, T, stream, p.pdl, p.wgmma_ws);
  g.W = dn;
  g.A = ws.act;
  g.lda = p.I;
  launch_prefill_wgmma_gemm<false, BN>(g, p.E, T, stream, p.pdl, p.wgmma_ws);
}

// x into the k-permutation (ws.xp), gate_up, down (after route_sort, before the combine), in the tiles
// prefill_wgmma_bn picks unless `tile` (MoeParams::wgmma_tile) names them. A template on the weights' format (MXFP4
// only) so that the bf16 path's translation unit, whose forward() never calls it, does not compile its kernels.
template <WFmt F>
void launch_prefill_wgmma_pair(const MoeParams& p, const GemmArgs& g, const WMat& gu, const WMat& dn,
                               const Workspace& ws, int P, cudaStream_t stream, int tile = 0) {
  launch(moe_permute_x, dim3(p.n), dim3(256), 0, stream, p.pdl, p.x, p.ldx, p.H, ws.xp);
  switch (prefill_wgmma_bn(P, p.E, tile)) {
    case 16: return launch_prefill_wgmma_both<16>(g, gu, dn, p, ws, P, stream);
    case 32: return launch_prefill_wgmma_both<32>(g, gu, dn, p, ws, P, stream);
    case 64: return launch_prefill_wgmma_both<64>(g, gu, dn, p, ws, P, stream);
    case 128: return launch_prefill_wgmma_both<128>(g, gu, dn, p, ws, P, stream);
    default: return launch_prefill_wgmma_both<0>(g, gu, dn, p, ws, P, stream);
  }
}

}  // namespace
}  // namespace hm::cuda::moe
