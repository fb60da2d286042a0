// Exact sampling inside the model step: the per-row parameters a step receives, the tokens whose logits some
// adjustment touches (a CSR list per row), and the CPU reference of the whole draw (sample_ref.cpp), which the
// CUDA kernels (kernels/sample.cu) are tested against. The definition is src/sampling/sampler.ts's:
//   a = raw + logit_bias; repetition penalty on tokens in the prompt or output (a > 0 ? a / r : a * r);
//   a -= frequency * count + presence * [count > 0]                   (vLLM's order)
//   greedy: the best a (ties: lower id)
//   else s = a / T; keep s >= max(s) + log(min_p); keep the top_k best of those (canonical order: a descending,
//   id ascending); keep a survivor while the mass of the survivors before it is < top_p times theirs;
//   token = argmax over the kept of s + gumbel(key1, key2, id)        (the noise of src/sampling/rng.ts)
// Thresholds are found by selection over order-preserving keys, never by a sort; the nucleus mass is summed in
// fixed point (kMassOne per unit of exp(s - max s)) so the sum, and so the kept set, does not depend on the order
// of the additions: the same row gives the same token whatever else is in the batch and however it is split.
#pragma once
#include <cmath>
#include <cstdint>

#include "hm_limits.h"  // kMaxSampleEntries

// The helpers below are shared by the reference and the CUDA kernels (one definition of the arithmetic).
#ifdef __CUDACC__
#define HM_SAMPLE_HD __host__ __device__ __forceinline__
#else
#define HM_SAMPLE_HD inline
#endif

namespace hm {

enum SampleMode : int32_t {
  kSampleNone = 0,    // the row is not sampled on the device (argmax rows, full-logits rows, scoring)
  kSampleGreedy = 1,  // the best adjusted logit
  kSampleDraw = 2,    // a draw from the adjusted, filtered distribution
};

// One output row's parameters, as the step receives them (48 bytes; the CUDA backend uploads them each step).
struct SampleRow {
  int32_t mode = kSampleNone;
  float inv_temperature = 1.f;
  int32_t top_k = 0;            // 0 = off
  float top_p = 1.f;            // 1 = off
  float log_min_p = -INFINITY;  // log(min_p); -inf = off
  float repetition = 1.f;
  float frequency = 0.f;
  float presence = 0.f;
  uint32_t key1 = 0, key2 = 0;  // the noise keys of (seed, step) (StepNoise in rng.ts)
  int32_t entry_begin = 0, entry_end = 0;  // this row's SampleEntry range
};
static_assert(sizeof(SampleRow) == 48, "SampleRow is uploaded as is");

// A token whose logit an adjustment touches (logit bias, or it occurred in the prompt or the output).
struct SampleEntry {
  int32_t id = 0;
  float bias = 0.f;
  int32_t count = 0;      // occurrences in the output so far
  int32_t in_prompt = 0;  // 1 = occurs in the prompt (repetition penalty)
};
static_assert(sizeof(SampleEntry) == 16, "SampleEntry is uploaded as is");

// exp(s - max s) = 1 is this many units of nucleus mass: 201,088 tokens sum below 2^62.
constexpr double kMassOne = 17592186044416.0;  // 2^44
// The radix levels of every threshold selection over the 32-bit order keys: 11 + 11 + 10 bits.
constexpr int kSampleLevels = 3;
constexpr int kSampleShift[kSampleLevels] = {21, 10, 0};
constexpr int kSampleBits[kSampleLevels] = {11, 11, 10};
constexpr int kSampleBuckets = 2048;

// Order-preserving key of a float (larger float, larger key), and the canonical order as one 64-bit composite:
// larger composite = earlier (a descending, then id ascending). A threshold is a composite B: keep C >= B.
HM_SAMPLE_HD uint32_t sample_order_key(float f) {
#ifdef __CUDA_ARCH__
  const uint32_t u = __float_as_uint(f);
#else
  uint32_t u;
  static_assert(sizeof u == sizeof f, "float is 32 bits");
  __builtin_memcpy(&u, &f, 4);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
HM_SAMPLE_HD uint64_t sample_composite(uint32_t key, int32_t id) { return (uint64_t(key) << 32) | (0xffffffffu - uint32_t(id)); }

// The adjusted logit of one touched token (bias, then repetition, then frequency and presence), in fp32.
HM_SAMPLE_HD float sample_adjust(float raw, const SampleRow& p, const SampleEntry& e) {
  float a = raw + e.bias;
  if (p.repetition != 1.f && (e.count > 0 || e.in_prompt)) a = a > 0.f ? a / p.repetition : a * p.repetition;
  // No fused multiply-add on the device: both backends round the same way.
#ifdef __CUDA_ARCH__
  if (e.count > 0) a = __fsub_rn(a, __fadd_rn(__fmul_rn(p.frequency, float(e.count)), p.presence));
#else
  if (e.count > 0) a -= p.frequency * float(e.count) + p.presence;
#endif
  return a;
}

// murmur3's finaliser and the per-token uniform of rng.ts's StepNoise.uniform, bit for bit (53 random bits).
HM_SAMPLE_HD uint32_t sample_fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}
HM_SAMPLE_HD void sample_noise_bits(uint32_t key1, uint32_t key2, int32_t id, uint32_t* a, uint32_t* b) {
  const uint32_t x = uint32_t(id) * 0x9e3779b1u;
  *a = sample_fmix32(sample_fmix32(x ^ key1) + 0x6a09e667u);
  *b = sample_fmix32(sample_fmix32(x ^ key2) + 0xbb67ae85u);
}

// The CPU reference: draws the token of one row from its raw logits (not modified). Writes the token and its raw
// logit (for logprobs). `entries` are the row's [entry_begin, entry_end) range already offset.
// `margin` (optional): the gap between the best and the second best score of a draw (where fp32 noise on the
// device could pick the other token), or +inf for greedy rows and draws from one kept token.
void sample_row_ref(const float* raw, int vocab, const SampleRow& p, const SampleEntry* entries, int num_entries,
                    int32_t* token, float* raw_logit, double* margin = nullptr);

}  // namespace hm
