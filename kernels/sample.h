// Exact sampling inside the step on the GPU (the definition and the CPU reference: native/sampling.h,
// native/sample_ref.cpp). Runs after narrow_logits on the same fp32 logits, which it adjusts in place for the
// rows it samples (their raw values stay readable through `saved`). Several blocks per row; every cross-block
// sum is an integer (counts, fixed-point mass) or a max, so the result does not depend on the split.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "sampling.h"

namespace hm::cuda {

// Which kernels a batch needs (part of a CUDA graph's key: the launch sequence depends on it, the values not).
enum SampleStage : int {
  kStageSample = 1,  // some row is sampled: the max pass and the outputs
  kStageAdjust = 2,  // some row has entries
  kStageTopK = 4,
  kStageTopP = 8,
  kStageDraw = 16,
  kStageGreedy = 32,  // some row is sampled greedily
};
int sample_stages(const SampleRow* rows, int n);

// A select pass's block histogram (kernels/sample.cu): auto = pieces where a block's slice is <= 65536 tokens,
// else 64-bit atomics; match = round 1's warp aggregation by __match_any_sync.
enum SampleHist : int { kHistAuto = 0, kHistPieces = 1, kHist64 = 2, kHistMatch = 3 };

struct SampleRowsParams {
  float* logits = nullptr;             // fp32 [rows, ld], adjusted in place where sampled
  int rows = 0, vocab = 0, ld = 0;
  const SampleRow* params = nullptr;   // [rows] device
  const SampleEntry* entries = nullptr;  // device, the rows' ranges
  float* saved = nullptr;              // [entries] the raw logits of the entries (written by the adjust pass)
  int32_t* token = nullptr;            // [rows] the drawn token (-1 where not sampled)
  float* raw_logit = nullptr;          // [rows] its raw logit
  void* workspace = nullptr;           // sample_workspace_bytes(rows)
  size_t workspace_bytes = 0;
  int stages = 0;                      // sample_stages() of the rows
  // [rows] narrow_logits' argmax of these logits (optional): where no row has entries or is greedy, it stands for
  // the max pass (one launch fewer); the same results.
  const int32_t* argmax = nullptr;
  bool pdl = false;
  bool top_p_three_passes = false;     // the previous top_p select, three passes over the row (op benchmark, tests)
  // Op benchmark variants (the result is the same): blocks a row (0: the default, at most 256), and how a select
  // pass builds its block histogram (SampleHist).
  int blocks_per_row = 0;
  int select_hist = 0;
};
size_t sample_workspace_bytes(int rows);
void sample_rows(const SampleRowsParams& p, cudaStream_t stream);

}  // namespace hm::cuda
