// The one boundary between the TypeScript host and the math: a Backend owns the weights and the paged KV
// cache on its device, and runs one model step for a batch of sequences per call.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "hm_limits.h"
#include "kv_layout.h"
#include "model_config.h"
#include "sampling.h"
#include "tensor_source.h"

namespace hm {

// One model step. Tokens of all sequences are packed back to back: sequence s owns seq_lens[s] consecutive
// tokens (a prefill chunk, or 1 for decode). positions[i] is token i's absolute position in its sequence; the
// cache already holds positions 0 .. positions[first token of s] - 1 for that sequence. Sequence s's KV lives in
// the blocks block_tables[s * max_blocks_per_seq + j] (position p is in block p / block_size, slot p % block_size).
// A model with sliding-window layers (StepLimits::window > 0, kv_layout.h) keeps their KV in other blocks, named
// by window_tables (the same shape and addressing): only the entries the window reads or the step writes are
// looked at (blocks of positions first - window + 1 .. last of each sequence), so the host may give the rest back.
struct StepBatch {
  const int32_t* tokens = nullptr;
  const int32_t* positions = nullptr;
  int num_tokens = 0;
  const int32_t* seq_lens = nullptr;
  int num_seqs = 0;
  const int32_t* block_tables = nullptr;
  const int32_t* window_tables = nullptr;  // required iff the model's limits have window > 0, else null
  int max_blocks_per_seq = 0;
  // Output rows: every token when all_positions (scoring), else one row per sequence (its last token).
  bool all_positions = false;
  // Per sequence: 1 = copy that sequence's full fp32 logits row(s) to the host. Null = none.
  const uint8_t* full_logits = nullptr;
  // Narrowed candidates per output row, computed on the device (0..kMaxTopK).
  int top_k = 0;
  // Sampling in the step (sampling.h), after the raw narrowing above: one SampleRow per sequence (its output row;
  // not with all_positions), and the rows' SampleEntry ranges. Null = no row is sampled.
  const SampleRow* sample_rows = nullptr;
  const SampleEntry* sample_entries = nullptr;
  int num_sample_entries = 0;
};

struct StepOutput {
  int num_rows = 0;
  int vocab = 0;
  int top_k = 0;
  std::vector<int32_t> argmax;        // [rows]
  std::vector<float> max_logit;       // [rows]
  std::vector<float> logsumexp;       // [rows] over the full vocabulary, temperature 1
  std::vector<int32_t> top_ids;       // [rows * top_k], by logit descending (ties: lower id first)
  std::vector<float> top_logits;      // [rows * top_k] raw logits
  std::vector<int32_t> logits_rows;   // which output rows have full logits, in order
  std::vector<float> logits;          // [logits_rows.size() * vocab]
  std::vector<int32_t> sampled;       // [rows] when sample_rows: the drawn token (-1 where mode is none)
  std::vector<float> sampled_logit;   // [rows] its raw logit (logprob = sampled_logit - logsumexp)
};

// Every default of a load lives here; the addon fills a missing option from default_load_options() and publishes
// these through buildInfo(), so the TypeScript host does not restate them.
struct LoadOptions {
  std::string backend = "cpu";          // "cpu" | "cuda"
  std::string expert_format = "mxfp4";  // cuda only: "mxfp4" (sm_90+) | "bf16" (fallback, any GPU)
  int num_blocks = 0;                   // KV blocks; 0 = choose from memory left
  int block_size = 16;
  int max_seqs = 16;
  // Tokens a step may hold (the activation workspace). CUDA: 8192, measured on the H200 (bench/throughput.ts,
  // step budget 2048 / 8192 tokens, tok/s): 20b pp8192 35,685 / 39,379, pp32768 21,462 / 22,921; 120b pp8192
  // 18,612 / 24,081, pp32768 12,264 / 14,577 (wider expert GEMMs); a step of 8192 prompt tokens holds the decodes
  // beside it 208 ms (20b) / 340 ms (120b), so latency-bound servers pass 2048 (README, Options).
  int max_batch_tokens = 8192;
  int threads = 0;                      // cpu: 0 = hardware concurrency
  int device = 0;
  bool dummy = false;                   // fill weights with random values instead of reading tensors
  bool window_kv = false;               // sliding layers page through window_tables (kv_layout.h); false: one table
  uint64_t seed = 0;
};

// The defaults for one backend: the CPU reference steps fewer tokens at once (its scratch is per token).
inline LoadOptions default_load_options(const std::string& backend) {
  LoadOptions o;
  o.backend = backend;
  if (backend == "cpu") o.max_batch_tokens = 512;
  return o;
}

// Throws std::runtime_error naming the first option out of range (sizes positive, numBlocks >= 0, a known
// backend and expert format). The addon calls it once per load; backends may rely on it.
void validate_load_options(const LoadOptions& opt);

// What a step may hold on a loaded model: checked once per step by validate_step(), reported by info().
struct StepLimits {
  int max_batch_tokens = 0;
  int max_seqs = 0;
  int max_blocks_per_seq = 0;  // ceil(max_positions / block_size)
  int num_blocks = 0;
  int block_size = 0;
  int vocab = 0;
  int max_positions = 0;
  int window = 0;  // > 0: steps carry window_tables for the sliding layers, read over this many positions
};
StepLimits step_limits(const ModelConfig& cfg, const LoadOptions& opt, const KvLayout& kv, int num_blocks);

// Throws std::runtime_error naming the first field of the batch that breaks the limits or the batch's own rules
// (consecutive positions per sequence, block ids in the pool for every position read). Every check runs before a
// backend touches its cache, so a bad batch leaves the model as it was.
void validate_step(const StepBatch& b, const StepLimits& lim);
// The sampling part of validate_step (ranges, CSR bounds, ids; sampleLogits() runs it alone).
void validate_sampling(const StepBatch& batch, int vocab);

struct BackendInfo {
  std::string backend;
  std::string device_name;
  std::string expert_format;
  StepLimits limits;  // num_blocks and block_size included
  uint64_t weight_bytes = 0;
  uint64_t kv_bytes = 0;
  uint64_t device_total_bytes = 0;
  uint64_t device_free_bytes = 0;
};

// The addon runs a model's steps one at a time, in submission order, on one thread of its own (step_runner.h's
// StepRunner), so the host can submit step N+1 while step N runs. A token of N+1 that the host does not know yet
// is named as "the token step N produced for its output row r" (tokens[i] = -1 - r, src/native.ts); the addon
// fills it in from N's output (sampled[r] where the row was sampled in the step, else argmax[r]) before calling
// step(), and adds it to the entries of a row the host flagged (sampling.countPrevious: its output penalties count
// it), so a backend always sees concrete token ids and ordinary entries.
class Backend {
 public:
  virtual ~Backend() = default;
  // batch has passed validate_step(batch, limits()). Called from one thread at a time; info() may run beside it.
  virtual void step(const StepBatch& batch, StepOutput& out) = 0;
  virtual BackendInfo info() const = 0;
  virtual const StepLimits& limits() const = 0;
};

// Each factory throws std::runtime_error with a one-line message on any failure, after freeing what it took.
std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& cfg, const TensorMap& tensors,
                                          const LoadOptions& opt, const ProgressFn& progress);
#ifdef HARMONIUM_CUDA
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& cfg, const TensorMap& tensors,
                                           const LoadOptions& opt, const ProgressFn& progress);
// Number of visible CUDA devices and a description of each; never throws (0 when no driver/device).
int cuda_device_count(std::string* why_none);
#endif

// Shared by every backend: fills argmax / top-k / logsumexp for one row of logits (host side).
void narrow_logits_row(const float* logits, int vocab, int top_k, int32_t* top_ids, float* top_logits,
                       int32_t* argmax, float* max_logit, float* logsumexp);

}  // namespace hm
