// The prepared MXFP4 layout as bit arithmetic, for the GPU kernels (mxfp4_prepare.cu writes it, moe_impl.cuh's
// decode_slot reads it) and for the host (the lab's CPU twin reads the checkpoint's bytes back; test/host checks
// the layout against the checkpoint's decode on the CPU, in CI). No CUDA headers: plain integer code.
//
// A checkpoint block: words i = 0..3 (columns 8i..8i+7), nibble j of word i at bits 4j..4j+3 (sign bit 3,
// magnitude bits 2..0). The kernels' pair t of word i is (nibble t, nibble t + 4): a bf16x2 whose halves are
// sign << 15 | magnitude << 6 (the E2M1 value times 2^-126; pair_bits). Prepared word t holds pair t of
// checkpoint word i in slot i, at the positions one operation moves onto those bits (slot_bits; M = kPairMask):
//   slot 0: w & M                     (bits 15, 8..6 and 31, 24..22)
//   slot 1: (w << 3) & M              (bits 12, 5..3 and 28, 21..19)
//   slot 2: (w << 6) & M              (bits 9, 2..0 and 25, 18..16)
//   slot 3: the bits left, 14 (sign), 13, 11, 10 (magnitude, high to low) and 16 above: three shifts, three masks.
// So a whole block is four words of four pairs each (RowChunk), a lane of the wgmma GEMM reads its four pairs of a
// k16 step pair from one word, and half a block (words 2h, 2h + 1) holds pairs 2h and 2h + 1 of every word. The
// checkpoint word's decode took 4, 4, 4 and 3 integer operations a pair (the wgmma GEMM one more, for its lane's
// pair); this one 1, 2, 2 and 6.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HM_MXFP4_HD __host__ __device__ __forceinline__
#else
#define HM_MXFP4_HD inline
#endif

namespace hm::mxfp4 {

constexpr uint32_t kPairMask = 0x81C081C0u;  // bf16x2's sign and top three exponent-mantissa bits

// The checkpoint's decode: pair t of word w, before the scale factor.
HM_MXFP4_HD uint32_t pair_bits(uint32_t w, int t) {
  w >>= 4 * t;
  return ((w << 6) & 0x01C001C0u) | ((w << 12) & 0x80008000u);
}

// Slot `slot` of a prepared word, as pair_bits gives it: one mask, or one shift and a mask; slot 3 holds the bits
// the others leave (14 the sign, 13 / 11 / 10 the magnitude, 16 above for the high half).
HM_MXFP4_HD uint32_t slot_bits(uint32_t w, int slot) {
  return slot == 0   ? w & kPairMask
         : slot == 1 ? (w << 3) & kPairMask
         : slot == 2 ? (w << 6) & kPairMask
                     : ((w << 1) & 0x80008000u) | ((w >> 5) & 0x01000100u) | ((w >> 4) & 0x00C000C0u);
}

// Nibble n (sign bit 3, magnitude 2..0) at slot `slot`'s positions of the low (half 0) or high (half 1) 16 bits.
HM_MXFP4_HD uint32_t place(uint32_t n, int slot, int half) {
  const uint32_t s = (n >> 3) & 1u, m = n & 7u;
  const uint32_t v = slot == 0   ? (s << 15) | (m << 6)
                     : slot == 1 ? (s << 12) | (m << 3)
                     : slot == 2 ? (s << 9) | m
                                 : (s << 14) | (((m >> 2) & 1u) << 13) | ((m & 3u) << 10);
  return v << (16 * half);
}

// The nibble at slot `slot` of a 16-bit half (place's inverse).
HM_MXFP4_HD uint32_t nibble_at(uint32_t v, int slot) {
  return slot == 0   ? ((v >> 15) & 1u) << 3 | ((v >> 6) & 7u)
         : slot == 1 ? ((v >> 12) & 1u) << 3 | ((v >> 3) & 7u)
         : slot == 2 ? ((v >> 9) & 1u) << 3 | (v & 7u)
                     : ((v >> 14) & 1u) << 3 | ((v >> 13) & 1u) << 2 | ((v >> 10) & 3u);
}

// A checkpoint block's four words -> the prepared block's, and back.
HM_MXFP4_HD void prepare_words(const uint32_t (&w)[4], uint32_t (&o)[4]) {
  for (int t = 0; t < 4; t++) {
    o[t] = 0u;
    for (int i = 0; i < 4; i++)
      o[t] |= place((w[i] >> (4 * t)) & 0xFu, i, 0) | place((w[i] >> (4 * t + 16)) & 0xFu, i, 1);
  }
}
HM_MXFP4_HD void unprepare_words(const uint32_t (&o)[4], uint32_t (&w)[4]) {
  for (int i = 0; i < 4; i++) w[i] = 0u;
  for (int t = 0; t < 4; t++)
    for (int i = 0; i < 4; i++)
      w[i] |= nibble_at(o[t] & 0xFFFFu, i) << (4 * t) | nibble_at(o[t] >> 16, i) << (4 * t + 16);
}

// The scale byte the kernels' factor represents exactly (2^(s - 64) beside the decode's 2^-63).
HM_MXFP4_HD uint32_t clamp_scale(uint32_t s) { return s < 65u ? 65u : s > 191u ? 191u : s; }

}  // namespace hm::mxfp4
