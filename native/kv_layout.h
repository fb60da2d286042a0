// How the paged KV cache spreads over the layers. A page (one block of the host's pool, block_size positions)
// holds K and V for `slots` layers. A model with sliding-window layers pages them through a second block table
// per sequence (StepBatch::window_tables) that holds only the blocks the window still reads: the i-th full layer
// and the i-th sliding layer share slot i of a page, so a page serves either kind from one pool. gpt-oss
// alternates the two kinds, so a page is half a whole-model block, and a long sequence needs its full table's
// pages plus about window / block_size + 1 more: the same memory holds about twice the context.
#pragma once
#include <algorithm>
#include <vector>

#include "model_config.h"

namespace hm {

struct KvLayout {
  int slots = 0;                   // layers a page holds
  std::vector<int> slot_of_layer;  // [num_layers]
  int window = 0;                  // > 0: sliding layers read and write through window_tables (the sliding window)
};

// window_kv: the load option; without it (or without sliding layers) every layer has a slot and one table serves all.
KvLayout kv_layout(const ModelConfig& cfg, bool window_kv);

// The first window table entry a chunk starting at position `first` reads (its window's first position's block);
// the chunk then reads and writes every entry up to its last position's.
inline int window_first_block(int first, int window, int block_size) {
  const int from = first - window + 1;
  return from > 0 ? from / block_size : 0;
}

// Blocks one sequence of up to `positions` positions holds at most while it steps `chunk` tokens at a time: its
// full table, and its window table's entries for a chunk and the window before it.
inline long long blocks_per_sequence(const KvLayout& k, int positions, int block_size, int chunk) {
  const long long full = (positions + block_size - 1) / block_size;
  if (k.window == 0) return full;
  const long long window = (k.window - 1 + chunk + block_size - 1) / block_size + 1;
  return full + std::min(window, full);
}

}  // namespace hm
