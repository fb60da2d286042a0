// The bf16 fallback experts (moe_bf16_forward): the same kernels as the MXFP4 path (moe_impl.cuh) reading expert
// weights decoded to bf16 once at load by mxfp4_to_bf16; runs on any sm_80+ GPU.
#include "moe_impl.cuh"

namespace hm::cuda {
namespace {

// One thread per 32-value block: 16 bytes + 1 scale byte -> 32 bf16 in column order. Run once at load.
__global__ void mxfp4_to_bf16_kernel(const uint8_t* __restrict__ blocks, const uint8_t* __restrict__ scales,
                                     uint16_t* __restrict__ out, int64_t nblocks) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= nblocks) return;
  const uint4 q = __ldg(reinterpret_cast<const uint4*>(blocks) + b);
  const float scale = exp2f(float(int(scales[b]) - 127));
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
  uint32_t o[16];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {  // byte j of word i: low nibble = even column, high nibble = odd column
      const uint32_t byte = (w[i] >> (8 * j)) & 0xFFu;
      const float lo = moe::fp4_lut(byte & 0xFu) * scale, hi = moe::fp4_lut(byte >> 4) * scale;
      o[i * 4 + j] = uint32_t(moe::f2bf_bits(lo)) | (uint32_t(moe::f2bf_bits(hi)) << 16);
    }
  uint4* dst = reinterpret_cast<uint4*>(out + b * 32);
#pragma unroll
  for (int i = 0; i < 4; i++) dst[i] = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
}

}  // namespace

void moe_bf16_forward(const MoeParams& p, const MoeBf16Weights& w, cudaStream_t stream) {
  const char* who = "moe_bf16_forward";
  HM_REQUIRE(w.gu_weight && w.gu_bias && w.dn_weight && w.dn_bias, who);
  HM_REQUIRE(reinterpret_cast<uintptr_t>(w.gu_weight) % 16 == 0 && reinterpret_cast<uintptr_t>(w.dn_weight) % 16 == 0,
             who);
  moe::WMat gu{w.gu_weight, nullptr, w.gu_bias, 2 * p.I, p.H};
  moe::WMat dn{w.dn_weight, nullptr, w.dn_bias, p.H, p.I};
  moe::forward<moe::WFmt::kBf16>(p, gu, dn, stream, who);
}

void mxfp4_to_bf16(const Mxfp4ToBf16Params& p, cudaStream_t stream) {
  const char* who = "mxfp4_to_bf16";
  HM_REQUIRE(p.blocks && p.scales && p.out && p.rows >= 0 && p.cols > 0 && p.cols % 32 == 0, who);
  HM_REQUIRE(reinterpret_cast<uintptr_t>(p.blocks) % 16 == 0 && reinterpret_cast<uintptr_t>(p.out) % 16 == 0, who);
  const int64_t nblocks = p.rows * (p.cols / 32);
  if (nblocks == 0) return;
  launch(mxfp4_to_bf16_kernel, dim3(unsigned((nblocks + 255) / 256)), dim3(256), 0, stream, false, p.blocks, p.scales,
         p.out, nblocks);
}

}  // namespace hm::cuda
