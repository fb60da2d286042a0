// The one dummy-weight generator, shared by the CPU backend and the CUDA fill kernels: every value is a pure
// function of (seed, tensor key, element index), counter-based like Philox, so the same seed gives bit-identical
// weights on every backend whatever order or parallel split fills them. A dummy model is a synthesised
// checkpoint: the generator writes the tensors as a file would hold them and the loaders convert them as usual.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "weight_layout.h"

#if defined(__CUDACC__)
#define HM_HD __host__ __device__ __forceinline__
#else
#define HM_HD inline
#endif

namespace hm::dummy {

// splitmix64's finaliser.
HM_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// 64 random bits for element i of the tensor whose stream is `key` (TensorSpec::key).
HM_HD uint64_t bits(uint64_t seed, uint64_t key, uint64_t i) {
  return mix64(mix64(seed ^ key) + 0x9e3779b97f4a7c15ull * (i + 1));
}

// How one tensor is filled: real values offset + scale * u with u uniform in [-1, 1), or raw bytes.
struct Fill {
  float scale = 1.f, offset = 0.f;
  int byte_base = -1;  // >= 0: E8M0 scale bytes byte_base or byte_base - 1; -1 with bytes: any byte (E2M1 pairs)
  bool bytes = false;
};

// Host side, once per tensor: std ~ 1/sqrt(fan_in) for matrices so activations stay O(1).
inline Fill fill_for(Init init, int fan_in) {
  Fill f;
  switch (init) {
    case Init::kNorm: f.scale = 0.1f, f.offset = 1.f; break;
    case Init::kLinear: f.scale = std::sqrt(3.0f / float(fan_in)); break;
    case Init::kBias: f.scale = 0.1f; break;
    case Init::kEmbed:
    case Init::kSinks: break;
    case Init::kFp4Blocks: f.bytes = true; break;
    case Init::kE8m0Scales:
      // E2M1 values average ~2.6 in magnitude: 2^e with 2.6 * 2^e ~ 1/sqrt(fan_in), jittered by one step.
      f.bytes = true;
      f.byte_base = 127 + int(std::lround(-std::log2(2.6 * std::sqrt(double(fan_in)))));
      break;
  }
  return f;
}

// u is exact (a 24-bit integer times a power of two, minus 1) and fmaf rounds once on host and device alike.
HM_HD float value(const Fill& f, uint64_t h) {
  const float u = float(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
  return fmaf(f.scale, u, f.offset);
}

HM_HD uint8_t byte(const Fill& f, uint64_t h) {
  return f.byte_base < 0 ? uint8_t(h) : uint8_t(f.byte_base - int(h & 1));
}

// fp32 -> bf16 bits, round to nearest even (finite inputs: the generator makes no NaN).
HM_HD uint16_t to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace hm::dummy
