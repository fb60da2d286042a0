// The MXFP4 experts (moe_mxfp4_forward): the checkpoint's E2M1 blocks and E8M0 scales are decoded in registers
// inside both matmuls of both paths (see moe_impl.cuh for the kernels and the decode trick), and the workspace
// query shared by both formats.
#include "moe_impl.cuh"

namespace hm::cuda {

size_t moe_workspace_bytes(int n_max, int H, int I, int E, int k) {
  return moe::carve(nullptr, n_max < 1 ? 1 : n_max, H, I, E, k).bytes;
}

void moe_mxfp4_forward(const MoeParams& p, const MoeMxfp4Weights& w, cudaStream_t stream) {
  const char* who = "moe_mxfp4_forward";
  HM_REQUIRE(w.gu_blocks && w.gu_scales && w.gu_bias && w.dn_blocks && w.dn_scales && w.dn_bias, who);
  HM_REQUIRE(reinterpret_cast<uintptr_t>(w.gu_blocks) % 16 == 0 && reinterpret_cast<uintptr_t>(w.dn_blocks) % 16 == 0,
             who);
  moe::WMat gu{w.gu_blocks, w.gu_scales, w.gu_bias, 2 * p.I, p.H};
  moe::WMat dn{w.dn_blocks, w.dn_scales, w.dn_bias, p.H, p.I};
  moe::forward<moe::WFmt::kMxfp4>(p, gu, dn, stream, who);
}

}  // namespace hm::cuda
