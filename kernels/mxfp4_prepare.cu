// The MXFP4 experts' load-time layout (mxfp4_prepare): every 16-byte block of 32 E2M1 nibbles rewritten in place
// so the kernels place a pair of weights as bf16 bits with one mask (and at most one shift), and the E8M0 scales
// clamped to the range the kernels' factor represents. Run once, after the checkpoint's bytes (or the dummy
// generator's) are on the GPU, on the tensors moe_mxfp4_forward reads; never on the bytes mxfp4_to_bf16 reads.
//
// The checkpoint's block: words i = 0..3 (bytes 4i..4i+3, columns 8i..8i+7), nibble j of word i at bits 4j..4j+3.
// The kernels multiply a permuted k order (moe_impl.cuh): their pair t of word i is (nibble t, nibble t + 4), a
// bf16x2 of (sign << 15 | magnitude << 6) in each half (the magnitude's 3 bits land on the exponent's two low bits
// and the mantissa's top bit: the E2M1 value times 2^-126, made whole by the scale factor).
// The prepared block (the bit arithmetic in mxfp4_layout.h, shared with the host test): word t holds pair t of the
// four checkpoint words, word i's pair in slot i, each slot's bits where one operation puts them on bf16x2's sign
// and magnitude bits (mask M = 0x81C081C0):
//   slot 0: w & M                     (bits 15, 8..6 and 31, 24..22)
//   slot 1: (w << 3) & M              (bits 12, 5..3 and 28, 21..19)
//   slot 2: (w << 6) & M              (bits 9, 2..0 and 25, 18..16)
//   slot 3: the bits left, 14 (sign), 13, 11, 10 (magnitude, high to low) and 16 above: three shifts, three masks.
// So a whole block is four words of four pairs each (RowChunk), a lane of the wgmma GEMM reads its four pairs of
// a k16 step pair from one word, and half a block (words 2h, 2h + 1) holds pairs 2h and 2h + 1 of every word.
// The checkpoint word's decode took 4, 4, 4 and 3 integer operations a pair (the wgmma GEMM one more, for its
// lane's pair); this one 1, 2, 2 and 6 (decode_slot).
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
