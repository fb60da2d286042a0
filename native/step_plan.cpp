// plan_step and its buckets (step_plan.h).
#include "step_plan.h"

#include <algorithm>
#include <cstring>

namespace hm {

int decode_bucket(int n) {
  if (n <= 8) return n;
  const int step = n <= 64 ? 8 : n <= 128 ? 16 : n <= 256 ? 32 : 64;
  return (n + step - 1) / step * step;
}

int blocks_bucket(int n, int cap) {
  int b = 1;
  while (b < n) b = b == 1 ? 2 : (b & (b - 1)) == 0 ? b + b / 2 : b / 3 * 4;
  return std::max(n, std::min(b, cap));
}

void plan_step(const StepBatch& b, const StepPlanOptions& o, StepPlan& p) {
  const int T = b.num_tokens, S = b.num_seqs, bs = o.block_size;
  // Sequence lengths are >= 1 (validate_step), so T == S means one token each.
  p.decode_only = !b.all_positions && T == S;
  const bool bucketed = p.decode_only && o.pad;
  const int Tb = bucketed && decode_bucket(T) <= o.max_pad_tokens ? decode_bucket(T) : T;
  p.padded = bucketed;
  p.real_T = T;
  p.real_S = S;
  p.T = Tb;
  p.S = bucketed ? Tb : S;
  p.max_bps = bucketed ? blocks_bucket(b.max_blocks_per_seq, o.max_blocks_per_seq) : b.max_blocks_per_seq;
  p.top_k = b.top_k;
  p.tokens.resize(Tb);
  p.positions.resize(Tb);
  p.tok_seq.resize(Tb);
  p.slot.resize(Tb);
  p.decode.clear();
  p.tiles.clear();
  p.out_rows.clear();
  p.full_rows.clear();
  std::memcpy(p.tokens.data(), b.tokens, size_t(T) * 4);
  std::memcpy(p.positions.data(), b.positions, size_t(T) * 4);
  // Pad rows use a real row's table (their tok_seq), so their rows of the tables are never read.
  auto copy_tables = [&](const int32_t* src, std::vector<int32_t>& dst) {
    dst.resize(size_t(p.S) * p.max_bps);
    if (p.max_bps == b.max_blocks_per_seq) {
      std::memcpy(dst.data(), src, size_t(S) * p.max_bps * 4);
    } else {
      for (int s = 0; s < S; s++) {
        int32_t* row = dst.data() + size_t(s) * p.max_bps;
        std::memcpy(row, src + size_t(s) * b.max_blocks_per_seq, size_t(b.max_blocks_per_seq) * 4);
        std::fill(row + b.max_blocks_per_seq, row + p.max_bps, 0);  // past every position: never read
      }
    }
    std::fill(dst.begin() + size_t(S) * p.max_bps, dst.end(), 0);
  };
  copy_tables(b.block_tables, p.block_tables);
  const bool windowed = b.window_tables != nullptr;
  if (windowed) copy_tables(b.window_tables, p.window_tables);
  else p.window_tables.clear();
  p.slot_window.resize(windowed ? Tb : 0);

  const int W = o.sliding_window;
  int max_keys_full = 1, max_keys_sliding = 1;
  // A sequence of one token is a decode token (a 1-token prefill tile under batch invariance: the same attention
  // kernel as a prompt's rows); longer ones are prefill tiles.
  auto one_token = [&](int t) {
    if (o.batch_invariant) {
      p.tiles.push_back(t);
      p.tiles.push_back(1);
    } else {
      p.decode.push_back(t);
    }
  };
  int t = 0;
  for (int s = 0; s < S; s++) {
    const int n = b.seq_lens[s];
    const int32_t* bt = b.block_tables + size_t(s) * b.max_blocks_per_seq;
    const int32_t* wt = windowed ? b.window_tables + size_t(s) * b.max_blocks_per_seq : nullptr;
    for (int i = 0; i < n; i++, t++) {
      const int pos = b.positions[t];
      p.tok_seq[t] = s;
      p.slot[t] = bt[pos / bs] * bs + pos % bs;
      if (windowed) p.slot_window[t] = wt[pos / bs] * bs + pos % bs;
      if (b.all_positions) p.out_rows.push_back(t);
    }
    if (!b.all_positions) p.out_rows.push_back(t - 1);
    if (n == 1) {
      one_token(t - 1);
      const int pos = b.positions[t - 1];
      max_keys_full = std::max(max_keys_full, pos + 1);
      max_keys_sliding = std::max(max_keys_sliding, W > 0 ? std::min(pos + 1, W) : pos + 1);
    } else {
      for (int f = t - n; f < t; f += o.prefill_tile) {
        p.tiles.push_back(f);
        p.tiles.push_back(std::min(o.prefill_tile, t - f));
      }
    }
  }
  p.real_rows = int(p.out_rows.size());
  for (int r = 0; r < p.real_rows; r++)
    if (b.full_logits && b.full_logits[p.tok_seq[p.out_rows[r]]]) p.full_rows.push_back(r);
  int twin = 0;  // the real row pad rows repeat: the shortest context
  for (int r = 1; r < T && Tb > T; r++)
    if (p.positions[r] < p.positions[twin]) twin = r;
  for (; t < Tb; t++) {
    p.tokens[t] = p.tokens[twin];
    p.positions[t] = p.positions[twin];
    p.tok_seq[t] = p.tok_seq[twin];
    p.slot[t] = -1;
    if (windowed) p.slot_window[t] = -1;
    p.out_rows.push_back(t);
    one_token(t);
  }
  p.rows = int(p.out_rows.size());
  p.n_decode = int(p.decode.size());
  p.n_tiles = int(p.tiles.size() / 2);
  if (bucketed) {  // the attention plan of the bucket: every key the block-table stride can address
    max_keys_full = p.max_bps * bs;
    max_keys_sliding = W > 0 ? std::min(W, max_keys_full) : max_keys_full;
  }
  p.max_keys[0] = max_keys_full;
  p.max_keys[1] = max_keys_sliding;
}

}  // namespace hm
