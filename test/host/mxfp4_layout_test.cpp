// The prepared MXFP4 layout (kernels/mxfp4_layout.h) on the CPU: every slot of a prepared block gives the pair the
// checkpoint's decode gives (the kernels' bits, so no result of theirs changes), the layout is undone exactly, and
// the decode's bf16 bits are the E2M1 value times 2^-126 for all 16 nibbles. Run by test/mxfp4_layout.test.ts:
// `hm_layout_test` exits 0 when every check holds. The GPU kernels use the same functions (op tests: moe).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "mxfp4_layout.h"

namespace {

int failures = 0, checks = 0;
void check(bool ok, const std::string& what) {
  checks++;
  if (!ok && ++failures <= 20) std::printf("FAIL %s\n", what.c_str());
}

uint64_t rng_state = 0x9E3779B97F4A7C15ull;
uint32_t next_u32() {  // xorshift64*
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return uint32_t((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

float bf16_bits_to_float(uint32_t h) {
  const uint32_t u = h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// E2M1 by its definition (the spec's table): sign, 2 exponent bits (bias 1), 1 mantissa bit, one subnormal.
float e2m1(uint32_t n) {
  const float mag[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  return (n & 8u) ? -mag[n & 7u] : mag[n & 7u];
}

}  // namespace

int main() {
  using namespace hm::mxfp4;
  // Random blocks: slot i of prepared word t is the checkpoint's pair t of word i; the layout is undone exactly.
  for (int n = 0; n < 200000; n++) {
    uint32_t w[4], o[4], back[4];
    for (uint32_t& x : w) x = next_u32();
    prepare_words(w, o);
    unprepare_words(o, back);
    check(std::memcmp(w, back, 16) == 0, "unprepare(prepare(w)) == w, block " + std::to_string(n));
    for (int t = 0; t < 4; t++)
      for (int i = 0; i < 4; i++)
        check(slot_bits(o[t], i) == pair_bits(w[i], t),
              "slot " + std::to_string(i) + " of word " + std::to_string(t) + ", block " + std::to_string(n));
  }
  // Every nibble in every position: its place and back, and the decode's value (both halves of the pair).
  for (uint32_t nib = 0; nib < 16; nib++) {
    for (int slot = 0; slot < 4; slot++)
      for (int half = 0; half < 2; half++)
        check(nibble_at(place(nib, slot, half) >> (16 * half), slot) == nib,
              "nibble " + std::to_string(nib) + " at slot " + std::to_string(slot));
    for (int t = 0; t < 4; t++) {
      const uint32_t p = pair_bits(nib << (4 * t) | (nib ^ 8u) << (4 * t + 16), t);
      const float lo = std::ldexp(bf16_bits_to_float(p & 0xFFFFu), 126), hi = std::ldexp(bf16_bits_to_float(p >> 16), 126);
      check(lo == e2m1(nib) && hi == e2m1(nib ^ 8u), "decode of nibble " + std::to_string(nib) + " at pair " +
                                                         std::to_string(t));
    }
  }
  // Scales: the range the kernels' factor represents.
  check(clamp_scale(0) == 65 && clamp_scale(64) == 65 && clamp_scale(65) == 65 && clamp_scale(127) == 127 &&
            clamp_scale(191) == 191 && clamp_scale(255) == 191,
        "clamp_scale");
  std::printf("mxfp4 layout: %d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
