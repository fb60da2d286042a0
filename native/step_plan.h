// The host half of a CUDA step, without CUDA (in hm_core, so the CPU build tests and times it: test/host/): each
// token's sequence and cache slot, the decode list, prefill tiles, output rows, and, for decode-only steps replayed
// from CUDA graphs, the padding that makes the launch sequence a function of a few buckets instead of the exact
// batch (a graph is captured once per bucket and replayed for every batch that falls in it).
//
// Padding (StepPlanOptions::pad, a decode-only step of T sequences): the step becomes T_b = decode_bucket(T)
// rows; pad row t >= T repeats the real row with the shortest context (its token, position and sequence, so its
// block-table row), with cache slot -1 (no KV write) and one output row that is never sampled (SampleRow mode none,
// set at upload) nor read back. A repeated row reads only KV the step's real rows read and routes to experts they
// already chose, so it adds no expert weights to the step (a fresh token would add up to k experts per layer) and
// every value it computes is finite. The block tables get the stride blocks_bucket(max blocks per seq) and the
// attention plan is sized for that bucket's keys, so the split shape is a function of the bucket too. Every kernel
// computes rows independently, so the real rows' results do not depend on the pad rows (bit-exact under
// HARMONIUM_BATCH_INVARIANT=1: test/gpu/graphs.test.ts).
#pragma once
#include <cstdint>
#include <vector>

#include "backend.h"

namespace hm {

// The token buckets of decode graphs: exact up to 8 (the decode kernels' cost grows with every token), then
// multiples of 8 to 64, 16 to 128, 32 to 256, 64 beyond: 23 graphs up to 256 sequences; above 24 rows at most a
// quarter of a bucket is padding (just past an edge: 65 -> 80, 129 -> 160, 257 -> 320).
int decode_bucket(int n);
// The block-table stride buckets: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5 times them), at most
// `cap` (the step limit): a graph is recaptured only when the longest sequence crosses one (about every third of
// its length), not every block.
int blocks_bucket(int n, int cap);

struct StepPlanOptions {
  int block_size = 16;
  int sliding_window = 0;     // 0: no sliding layers
  bool batch_invariant = false;  // decode tokens as 1-token prefill tiles (HARMONIUM_BATCH_INVARIANT=1)
  bool pad = false;           // pad decode-only steps to their bucket (CUDA graphs on)
  int max_pad_tokens = 0;     // a bucket above this is not padded (the workspace rows it was sized for)
  int max_blocks_per_seq = 1; // the step limit: no block-table bucket exceeds it
  int prefill_tile = 16;      // tokens per prefill attention tile (kernels/attention.h)
};

// The launch shape of a step and the index arrays it uploads (vectors reused step after step).
struct StepPlan {
  std::vector<int32_t> tokens, positions;  // [T]
  std::vector<int32_t> tok_seq, slot;      // [T] each token's sequence and KV cache slot (-1: not written)
  std::vector<int32_t> block_tables;       // [S, max_bps]
  std::vector<int32_t> window_tables;      // [S, max_bps] the sliding layers' (kv_layout.h); empty when none
  std::vector<int32_t> slot_window;        // [T] each token's cache slot in the sliding layers; empty when none
  std::vector<int32_t> decode;             // tokens that are the one new token of their sequence
  std::vector<int32_t> tiles;              // prefill tiles: (first token, count) pairs
  std::vector<int32_t> out_rows;           // the token of each output row
  std::vector<int32_t> full_rows;          // output rows whose full logits go to the host (real rows only)
  int T = 0, S = 0, max_bps = 0, rows = 0;  // the launch shape (padded when `padded`)
  int real_T = 0, real_S = 0, real_rows = 0;  // the batch's own
  int top_k = 0, n_decode = 0, n_tiles = 0;
  bool decode_only = false;  // every sequence one token, one output row each: a CUDA graph's kind of step
  bool padded = false;
  int max_keys[2] = {1, 1};  // keys the decode attention plan covers: [0] full layers, [1] sliding layers
};

void plan_step(const StepBatch& b, const StepPlanOptions& o, StepPlan& p);

}  // namespace hm
