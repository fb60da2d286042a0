// Narrowing one row of logits to what the sampler needs (host side; the CUDA backend does the same on the GPU).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "backend.h"

namespace hm {

void narrow_logits_row(const float* logits, int vocab, int top_k, int32_t* top_ids, float* top_logits,
                       int32_t* argmax, float* max_logit, float* logsumexp) {
  int best = 0;
  for (int i = 1; i < vocab; i++)
    if (logits[i] > logits[best]) best = i;  // strict: ties keep the lower id
  *argmax = best;
  *max_logit = logits[best];
  double s = 0.0;
  for (int i = 0; i < vocab; i++) s += std::exp(static_cast<double>(logits[i]) - logits[best]);
  *logsumexp = static_cast<float>(logits[best] + std::log(s));
  if (top_k <= 0) return;
  int k = std::min(top_k, vocab);
  std::vector<int32_t> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
  for (int i = 0; i < k; i++) {
    top_ids[i] = idx[i];
    top_logits[i] = logits[idx[i]];
  }
  for (int i = k; i < top_k; i++) {
    top_ids[i] = -1;
    top_logits[i] = -INFINITY;
  }
}

}  // namespace hm
