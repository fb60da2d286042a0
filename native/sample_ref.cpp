// The CPU reference of exact sampling in the step (the definition and the selection scheme are in sampling.h):
// plain loops over the row, one per pass of the CUDA kernels, with the same fp32 adjusted logits, the same
// fixed-point nucleus mass and the same threshold selection; the Gumbel scores in fp64 (the noise of rng.ts).
#include <algorithm>
#include <cmath>
#include <vector>

#include "sampling.h"

namespace hm {
namespace {

struct Row {
  const float* a;  // adjusted logits
  int vocab;
  std::vector<uint32_t> key;
  uint64_t comp(int i) const { return sample_composite(key[i], i); }
};

// The canonical-order threshold where the cumulative weight of the tokens that pass `alive` reaches `need`:
// keep C >= the result. 0 (keep all) when their total weight is below `need`. Radix levels over the key, then,
// when the boundary falls inside a run of equal keys, the lowest ids of that run.
template <typename Alive, typename Weight>
uint64_t select_threshold(const Row& r, uint64_t need, Alive alive, Weight weight) {
  uint64_t total = 0;
  for (int i = 0; i < r.vocab; i++)
    if (alive(i)) total += weight(i);
  if (total < need) return 0;
  uint32_t prefix = 0, mask = 0;
  std::vector<uint64_t> hist(kSampleBuckets);
  for (int l = 0; l < kSampleLevels; l++) {
    const int shift = kSampleShift[l];
    const uint32_t width = (1u << kSampleBits[l]) - 1u;
    std::fill(hist.begin(), hist.end(), 0);
    for (int i = 0; i < r.vocab; i++)
      if (alive(i) && (r.key[i] & mask) == prefix) hist[(r.key[i] >> shift) & width] += weight(i);
    uint64_t cum = 0;
    int b = int(width);
    for (; b > 0; b--) {
      if (cum + hist[b] >= need) break;
      cum += hist[b];
    }
    need -= cum;
    prefix |= uint32_t(b) << shift;
    mask |= width << shift;
  }
  // Every token of key `prefix` has the same weight (the same adjusted logit).
  uint64_t count = 0, w = 0;
  for (int i = 0; i < r.vocab; i++)
    if (alive(i) && r.key[i] == prefix) count++, w = weight(i);
  const uint64_t n = w ? (need + w - 1) / w : count;
  if (n >= count) return uint64_t(prefix) << 32;
  uint64_t seen = 0;
  for (int i = 0; i < r.vocab; i++)
    if (alive(i) && r.key[i] == prefix && ++seen == n) return sample_composite(prefix, i);
  return uint64_t(prefix) << 32;  // not reached
}

double gumbel(uint32_t key1, uint32_t key2, int id) {
  uint32_t a, b;
  sample_noise_bits(key1, key2, id, &a, &b);
  const double u = ((a >> 5) * 67108864.0 + (b >> 6) + 0.5) / 9007199254740992.0;
  return -std::log(-std::log(u));
}

}  // namespace

void sample_row_ref(const float* raw, int vocab, const SampleRow& p, const SampleEntry* entries, int num_entries,
                    int32_t* token, float* raw_logit, double* margin) {
  std::vector<float> a(raw, raw + vocab);
  for (int j = 0; j < num_entries; j++) a[entries[j].id] = sample_adjust(raw[entries[j].id], p, entries[j]);
  Row r{a.data(), vocab, std::vector<uint32_t>(vocab)};
  int best = 0;
  for (int i = 0; i < vocab; i++) {
    r.key[i] = sample_order_key(a[i]);
    if (r.comp(i) > r.comp(best)) best = i;
  }
  *token = best;
  *raw_logit = raw[best];
  if (margin) *margin = INFINITY;
  if (p.mode != kSampleDraw) return;

  const float amax = a[best];
  std::vector<float> s(vocab);
  for (int i = 0; i < vocab; i++) s[i] = (a[i] - amax) * p.inv_temperature;
  auto alive0 = [&](int i) { return s[i] >= p.log_min_p; };
  uint64_t bk = 0;
  if (p.top_k > 0) bk = select_threshold(r, uint64_t(p.top_k), alive0, [](int) { return uint64_t(1); });
  auto alive1 = [&](int i) { return alive0(i) && r.comp(i) >= bk; };
  uint64_t bp = 0;
  if (p.top_p < 1.f) {
    std::vector<uint64_t> q(vocab);
    uint64_t z = 0;
    for (int i = 0; i < vocab; i++) {
      q[i] = uint64_t(double(std::exp(s[i])) * kMassOne);
      if (alive1(i)) z += q[i];
    }
    const uint64_t need = uint64_t(std::ceil(double(p.top_p) * double(z)));
    bp = select_threshold(r, need, alive1, [&](int i) { return q[i]; });
  }
  double best_score = -INFINITY, second = -INFINITY;
  int pick = best;
  for (int i = 0; i < vocab; i++) {
    if (!alive1(i) || r.comp(i) < bp) continue;
    const double score = double(s[i]) + gumbel(p.key1, p.key2, i);
    if (score > best_score) second = best_score, best_score = score, pick = i;  // ascending ids: ties keep the lower
    else if (score > second) second = score;
  }
  *token = pick;
  *raw_logit = raw[pick];
  if (margin) *margin = best_score - second;
}

}  // namespace hm
