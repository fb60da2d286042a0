// The host plan of a CUDA step (native/step_plan.h) on the CPU: the graph buckets, the padding of decode-only steps
// (pad rows harmless: a repeat of the shortest real row with slot -1, never a full-logits row; real rows as
// unpadded), what is
// never padded, and the cost of planning a step of 256 sequences at 1k context (printed; the step's host budget).
// Run by test/step_plan.test.ts: `hm_plan_test` exits 0 when every check holds; `hm_plan_test time` only times.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "step_plan.h"

namespace {

int failures = 0, checks = 0;
void check(bool ok, const std::string& what) {
  checks++;
  if (!ok) {
    failures++;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// A batch of S sequences, sequence s at context ctx(s) (decode: one token at that position; prefill: `chunk`
// tokens ending there), each owning blocks [s * per_seq, (s + 1) * per_seq), and with window KV its window table
// the blocks kWindowBase + the same.
constexpr int32_t kWindowBase = 1 << 20;
struct Batch {
  std::vector<int32_t> tokens, positions, seq_lens, block_tables, window_tables;
  std::vector<uint8_t> full;
  hm::StepBatch b;
  Batch(int S, int ctx0, int chunk, int bs, bool window = false) {
    int max_pos = 0;
    std::vector<int> ctx(S);
    for (int s = 0; s < S; s++) ctx[s] = ctx0 + (s * 37) % 200, max_pos = std::max(max_pos, ctx[s]);
    const int mbps = max_pos / bs + 1, per_seq = mbps;
    for (int s = 0; s < S; s++) {
      for (int i = 0; i < chunk; i++) {
        tokens.push_back((s * 131 + i) % 1000 + 1);
        positions.push_back(ctx[s] - chunk + 1 + i);
      }
      seq_lens.push_back(chunk);
      for (int j = 0; j < mbps; j++) block_tables.push_back(s * per_seq + j);
      for (int j = 0; window && j < mbps; j++) window_tables.push_back(kWindowBase + s * per_seq + j);
      full.push_back(s % 5 == 0);
    }
    b.tokens = tokens.data();
    b.positions = positions.data();
    b.num_tokens = int(tokens.size());
    b.seq_lens = seq_lens.data();
    b.num_seqs = S;
    b.block_tables = block_tables.data();
    b.window_tables = window ? window_tables.data() : nullptr;
    b.max_blocks_per_seq = mbps;
    b.full_logits = full.data();
    b.top_k = 8;
  }
};

hm::StepPlanOptions options(bool pad, bool invariant = false) {
  hm::StepPlanOptions o;
  o.block_size = 16;
  o.sliding_window = 128;
  o.batch_invariant = invariant;
  o.pad = pad;
  o.max_pad_tokens = 256;
  o.max_blocks_per_seq = 8192;
  return o;
}

void check_buckets() {
  int prev = 0, count = 0;
  for (int n = 1; n <= 512; n++) {
    const int b = hm::decode_bucket(n);
    check(b >= n && b >= prev, "decode_bucket(" + std::to_string(n) + ") = " + std::to_string(b) + " covers n, monotone");
    check(n > 8 || b == n, "decode_bucket exact up to 8");
    check(n <= 24 || (b - n) * 4 <= b, "decode_bucket: at most a quarter padding above 24 (n " + std::to_string(n) + ")");
    if (b != prev && n <= 256) count++;
    prev = b;
  }
  check(count == 23, "23 token buckets up to 256, got " + std::to_string(count));
  const int want[][2] = {{9, 16}, {16, 16}, {17, 24}, {64, 64}, {65, 80}, {100, 112}, {129, 160}, {255, 256}, {257, 320}};
  for (auto& w : want) check(hm::decode_bucket(w[0]) == w[1], "decode_bucket(" + std::to_string(w[0]) + ")");
  const int bw[][3] = {{1, 8192, 1}, {2, 8192, 2}, {3, 8192, 3}, {5, 8192, 6}, {7, 8192, 8}, {9, 8192, 12},
                       {13, 8192, 16}, {72, 8192, 96}, {97, 8192, 128}, {72, 80, 80}, {80, 80, 80}};
  for (auto& w : bw)
    check(hm::blocks_bucket(w[0], w[1]) == w[2], "blocks_bucket(" + std::to_string(w[0]) + ", " +
                                                     std::to_string(w[1]) + ") = " +
                                                     std::to_string(hm::blocks_bucket(w[0], w[1])));
}

// A padded decode step against the unpadded plan of the same batch.
void check_padded(int S, bool invariant, bool window) {
  const std::string at = "S " + std::to_string(S) + (invariant ? " invariant" : "") + (window ? " window KV" : "") + ": ";
  Batch B(S, 1024, 1, 16, window);
  hm::StepPlan a, p;
  hm::plan_step(B.b, options(false, invariant), a);
  hm::plan_step(B.b, options(true, invariant), p);
  const int Tb = hm::decode_bucket(S), mb = hm::blocks_bucket(B.b.max_blocks_per_seq, 8192);
  check(a.T == S && a.S == S && !a.padded && a.decode_only, at + "unpadded shape");
  check(p.T == Tb && p.S == Tb && p.rows == Tb && p.max_bps == mb && p.padded && p.decode_only, at + "padded shape");
  check(p.real_T == S && p.real_S == S && p.real_rows == S, at + "real counts");
  check(p.max_keys[0] == mb * 16 && p.max_keys[1] == 128, at + "attention plan sized for the bucket");
  check(p.full_rows == a.full_rows, at + "full-logits rows are the real ones");
  for (int t = 0; t < S; t++) {
    check(p.tokens[t] == a.tokens[t] && p.positions[t] == a.positions[t] && p.slot[t] == a.slot[t] &&
              p.tok_seq[t] == a.tok_seq[t] && p.out_rows[t] == a.out_rows[t],
          at + "real token " + std::to_string(t) + " as unpadded");
    for (int j = 0; j < mb; j++) {
      const int32_t want = j < a.max_bps ? a.block_tables[size_t(t) * a.max_bps + j] : 0;
      if (p.block_tables[size_t(t) * mb + j] != want) check(false, at + "block table row " + std::to_string(t));
    }
    if (window) {
      const int pos = B.positions[t];
      const int32_t slot = B.window_tables[size_t(t) * B.b.max_blocks_per_seq + pos / 16] * 16 + pos % 16;
      check(a.slot_window[t] == slot && p.slot_window[t] == slot, at + "window slot of token " + std::to_string(t));
      for (int j = 0; j < mb; j++) {
        const int32_t want = j < a.max_bps ? a.window_tables[size_t(t) * a.max_bps + j] : 0;
        if (p.window_tables[size_t(t) * mb + j] != want) check(false, at + "window table row " + std::to_string(t));
      }
    }
  }
  check(window == !p.window_tables.empty() && window == !p.slot_window.empty(), at + "window arrays only with window KV");
  if (window) check(p.window_tables.size() == p.block_tables.size() && int(p.slot_window.size()) == Tb, at + "window arrays' shape");
  int twin = 0;  // the shortest context
  for (int t = 0; t < S; t++)
    if (B.positions[t] < B.positions[twin]) twin = t;
  for (int t = S; t < Tb; t++)
    check(p.tokens[t] == B.tokens[twin] && p.positions[t] == B.positions[twin] && p.tok_seq[t] == twin &&
              p.slot[t] == -1 && p.out_rows[t] == t,
          at + "pad token " + std::to_string(t) + " repeats real row " + std::to_string(twin) + " without a KV write");
  for (int t = S; window && t < Tb; t++) check(p.slot_window[t] == -1, at + "pad token " + std::to_string(t) + ": no window write");
  if (invariant) {
    check(p.n_decode == 0 && p.n_tiles == Tb, at + "every token a 1-token tile");
    for (int t = 0; t < Tb; t++) check(p.tiles[2 * t] == t && p.tiles[2 * t + 1] == 1, at + "tile " + std::to_string(t));
  } else {
    check(p.n_tiles == 0 && p.n_decode == Tb, at + "every token decodes");
    for (int t = 0; t < Tb; t++) check(p.decode[t] == t, at + "decode list " + std::to_string(t));
  }
}

void check_not_padded() {
  Batch pre(3, 300, 40, 16);  // prefill chunks: never padded, exact stride
  hm::StepPlan p;
  hm::plan_step(pre.b, options(true), p);
  check(!p.padded && !p.decode_only && p.T == 120 && p.S == 3 && p.max_bps == pre.b.max_blocks_per_seq,
        "a prefill step is not padded");
  check(p.n_tiles == 9 && p.n_decode == 0, "40-token chunks: 3 tiles each");
  Batch dec(5, 100, 1, 16);
  dec.b.all_positions = true;  // scoring rows: not a graph's kind of step
  hm::plan_step(dec.b, options(true), p);
  check(!p.padded && p.T == 5, "an all-positions step is not padded");
  dec.b.all_positions = false;
  hm::StepPlanOptions o = options(true);
  o.max_pad_tokens = 4;  // the bucket (5) is past the workspace: exact rows, bucketed stride
  hm::plan_step(dec.b, o, p);
  check(p.padded && p.T == 5 && p.max_bps == hm::blocks_bucket(dec.b.max_blocks_per_seq, 8192), "past max_pad_tokens");
}

double time_plan(int S, bool pad) {
  Batch B(S, 1024, 1, 16);
  hm::StepPlan p;
  const hm::StepPlanOptions o = options(pad);
  for (int i = 0; i < 100; i++) hm::plan_step(B.b, o, p);
  const int n = 20000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; i++) hm::plan_step(B.b, o, p);
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / n;
}

}  // namespace

int main(int argc, char** argv) {
  const bool time_only = argc > 1 && std::strcmp(argv[1], "time") == 0;
  if (!time_only) {
    check_buckets();
    for (int S : {1, 5, 8, 9, 17, 63, 64, 65, 100, 200, 255, 256})
      for (bool inv : {false, true})
        for (bool window : {false, true}) check_padded(S, inv, window);
    check_not_padded();
    std::printf("step plan: %d checks, %d failed\n", checks, failures);
  }
  for (int S : {1, 64, 256})
    std::printf("plan_step, %d decode sequences at 1k context: %.2f us unpadded, %.2f us padded\n", S,
                time_plan(S, false), time_plan(S, true));
  return failures ? 1 : 0;
}
