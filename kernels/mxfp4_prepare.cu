// The MXFP4 experts' load-time layout (mxfp4_prepare): every 16-byte block of 32 E2M1 nibbles rewritten in place
// so the kernels place a pair of weights as bf16 bits with one mask (and at most one shift), and the E8M0 scales
// clamped to the range the kernels' factor represents. Run once, after the checkpoint's bytes (or the dummy
// generator's) are on the GPU, on the tensors moe_mxfp4_forward reads; never on the bytes mxfp4_to_bf16 reads.
//
// The layout and why (its slots, the operations each takes): kernels/mxfp4_layout.h, whose bit arithmetic this
// kernel, the kernels' decode_slot and the host test share.
// Scales: mx_factor clamps s to [65, 191] (2^(s - 64) is then an exact bf16 beside the 2^-63 of the decode); the
// prepared bytes are clamped already, so a kernel may build the factor with one multiply-add (mx_factor_fast).
#include "common.cuh"
#include "moe.h"
#include "mxfp4_layout.h"

namespace hm::cuda {
namespace {

__global__ void mxfp4_prepare_kernel(uint8_t* __restrict__ blocks, uint8_t* __restrict__ scales, int64_t nblocks) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= nblocks) return;
  uint4* p = reinterpret_cast<uint4*>(blocks) + b;
  const uint4 q = *p;
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
  uint32_t o[4];
  mxfp4::prepare_words(w, o);
  *p = make_uint4(o[0], o[1], o[2], o[3]);
  scales[b] = uint8_t(mxfp4::clamp_scale(scales[b]));
}

}  // namespace

void mxfp4_prepare(const Mxfp4PrepareParams& p, cudaStream_t stream) {
  const char* who = "mxfp4_prepare";
  HM_REQUIRE(p.blocks && p.scales && p.nblocks >= 0, who);
  HM_REQUIRE(reinterpret_cast<uintptr_t>(p.blocks) % 16 == 0, who);
  if (p.nblocks == 0) return;
  launch(mxfp4_prepare_kernel, dim3(unsigned((p.nblocks + 255) / 256)), dim3(256), 0, stream, false, p.blocks,
         p.scales, p.nblocks);
}

}  // namespace hm::cuda
