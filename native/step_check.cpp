// The one check of the load options and of a step batch (backend.h), shared by every backend and run by the addon.
#include <cmath>
#include <stdexcept>
#include <string>

#include "backend.h"

namespace hm {
namespace {
std::string str(long long v) { return std::to_string(v); }
}  // namespace

void validate_load_options(const LoadOptions& o) {
  if (o.backend != "cpu" && o.backend != "cuda")
    throw std::runtime_error("options.backend: unknown backend '" + o.backend + "' (expected cpu or cuda)");
  if (o.expert_format != "mxfp4" && o.expert_format != "bf16")
    throw std::runtime_error("options.expertFormat: unknown expert format '" + o.expert_format + "' (mxfp4 or bf16)");
  if (o.block_size <= 0 || o.max_batch_tokens <= 0 || o.max_seqs <= 0)
    throw std::runtime_error("options: blockSize, maxBatchTokens and maxSeqs must be positive");
  if (o.num_blocks < 0 || o.threads < 0 || o.device < 0)
    throw std::runtime_error("options: numBlocks, threads and device must be >= 0");
}

StepLimits step_limits(const ModelConfig& cfg, const LoadOptions& opt, const KvLayout& kv, int num_blocks) {
  StepLimits l;
  l.max_batch_tokens = opt.max_batch_tokens;
  l.max_seqs = opt.max_seqs;
  l.block_size = opt.block_size;
  l.max_blocks_per_seq = (cfg.max_positions + opt.block_size - 1) / opt.block_size;
  l.num_blocks = num_blocks;
  l.vocab = cfg.vocab;
  l.max_positions = cfg.max_positions;
  l.window = kv.window;
  return l;
}

void validate_sampling(const StepBatch& b, int vocab) {
  if (!b.sample_rows) return;
  if (b.all_positions) throw std::runtime_error("step: sampling needs one output row per sequence (not allPositions)");
  if (b.num_sample_entries < 0 || b.num_sample_entries > kMaxSampleEntries || (b.num_sample_entries && !b.sample_entries))
    throw std::runtime_error("step: sampling entries must number 0.." + str(kMaxSampleEntries));
  for (int s = 0; s < b.num_seqs; s++) {
    const SampleRow& p = b.sample_rows[s];
    auto where = [&] { return "step: sampling of sequence " + str(s) + ": "; };
    if (p.mode < kSampleNone || p.mode > kSampleDraw) throw std::runtime_error(where() + "unknown mode");
    if (p.entry_begin < 0 || p.entry_end < p.entry_begin || p.entry_end > b.num_sample_entries)
      throw std::runtime_error(where() + "entry range outside the entries");
    if (!(p.inv_temperature > 0.f) || !std::isfinite(p.inv_temperature) || p.top_k < 0 || !(p.top_p > 0.f && p.top_p <= 1.f) ||
        !(p.repetition > 0.f) || std::isnan(p.log_min_p) || p.log_min_p > 0.f)
      throw std::runtime_error(where() + "parameter out of range");
    if (b.full_logits && b.full_logits[s] && p.mode != kSampleNone)
      throw std::runtime_error(where() + "a row with full logits is sampled on the host");
    for (int j = p.entry_begin; j < p.entry_end; j++) {
      const SampleEntry& e = b.sample_entries[j];
      if (e.id < 0 || e.id >= vocab) throw std::runtime_error(where() + "entry token id " + str(e.id) + " outside the vocabulary");
      if (e.count < 0) throw std::runtime_error(where() + "negative count");
      if (j > p.entry_begin && e.id <= b.sample_entries[j - 1].id)
        throw std::runtime_error(where() + "entry ids must be strictly increasing");
    }
  }
}

void validate_step(const StepBatch& b, const StepLimits& lim) {
  if (b.num_tokens <= 0 || b.num_seqs <= 0) throw std::runtime_error("step: empty batch");
  if (!b.tokens || !b.positions || !b.seq_lens || !b.block_tables) throw std::runtime_error("step: missing batch arrays");
  if (lim.window > 0 && !b.window_tables)
    throw std::runtime_error("step: windowTables missing (the model's sliding-window layers keep their KV in blocks of their own)");
  if (lim.window == 0 && b.window_tables)
    throw std::runtime_error("step: windowTables given, but the model has no sliding-window layers");
  if (b.num_tokens > lim.max_batch_tokens)
    throw std::runtime_error("step: " + str(b.num_tokens) + " tokens exceed maxBatchTokens " + str(lim.max_batch_tokens));
  if (b.num_seqs > lim.max_seqs)
    throw std::runtime_error("step: " + str(b.num_seqs) + " sequences exceed maxSeqs " + str(lim.max_seqs));
  if (b.max_blocks_per_seq <= 0 || b.max_blocks_per_seq > lim.max_blocks_per_seq)
    throw std::runtime_error("step: maxBlocksPerSeq must be in 1.." + str(lim.max_blocks_per_seq) + ", got " +
                             str(b.max_blocks_per_seq));
  if (b.top_k < 0 || b.top_k > kMaxTopK || b.top_k > lim.vocab)
    throw std::runtime_error("step: topK must be in 0.." + str(kMaxTopK) + " (and at most the vocabulary), got " + str(b.top_k));
  int t = 0;
  for (int s = 0; s < b.num_seqs; s++) {
    const int n = b.seq_lens[s];
    if (n <= 0) throw std::runtime_error("step: sequence " + str(s) + " has no tokens");
    if (t + n > b.num_tokens) throw std::runtime_error("step: seqLens add up to more than the number of tokens");
    for (int i = t; i < t + n; i++) {
      // built only for a message: a prefill checks thousands of tokens per step
      auto where = [&] { return "step: sequence " + str(s) + " token " + str(i - t); };
      if (b.tokens[i] < 0 || b.tokens[i] >= lim.vocab)
        throw std::runtime_error(where() + ": id " + str(b.tokens[i]) + " is outside the vocabulary 0.." + str(lim.vocab - 1));
      if (b.positions[i] < 0 || b.positions[i] >= lim.max_positions)
        throw std::runtime_error(where() + ": position " + str(b.positions[i]) + " is outside 0.." + str(lim.max_positions - 1));
      if (i > t && b.positions[i] != b.positions[i - 1] + 1)
        throw std::runtime_error(where() + ": positions must be consecutive within a sequence");
    }
    const int last_block = b.positions[t + n - 1] / lim.block_size;
    if (last_block >= b.max_blocks_per_seq)
      throw std::runtime_error("step: sequence " + str(s) + ": position " + str(b.positions[t + n - 1]) +
                               " needs block table entry " + str(last_block) + " but the table holds " +
                               str(b.max_blocks_per_seq));
    auto check_table = [&](const int32_t* tables, int lo, const char* name) {
      const int32_t* table = tables + size_t(s) * b.max_blocks_per_seq;
      for (int j = lo; j <= last_block; j++)
        if (table[j] < 0 || table[j] >= lim.num_blocks)
          throw std::runtime_error("step: sequence " + str(s) + ": block id " + str(table[j]) + " is outside the pool 0.." +
                                   str(lim.num_blocks - 1) + " (" + name + " entry " + str(j) + ")");
    };
    check_table(b.block_tables, 0, "blockTables");
    if (lim.window > 0)
      check_table(b.window_tables, window_first_block(b.positions[t], lim.window, lim.block_size), "windowTables");
    t += n;
  }
  if (t != b.num_tokens) throw std::runtime_error("step: seqLens do not add up to the number of tokens");
  validate_sampling(b, lim.vocab);
}

}  // namespace hm
