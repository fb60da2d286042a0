// The CPU reference backend: the gpt-oss forward pass of docs/model.md in fp32, built from the
// reference ops (ref_ops.h) in the order the model defines them, over a paged fp32 KV cache. It is the oracle
// every CUDA kernel is held against, so it favours clarity; rows of weight matrices and attention heads are
// spread over the cores by thread_pool.h.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "../backend.h"
#include "cpu_weights.h"
#include "ref_ops.h"
#include "thread_pool.h"

namespace hm {
namespace {

using cpu::LayerWeights;
using cpu::ModelWeights;

constexpr uint64_t kDefaultKvBytes = 1ull << 30;  // num_blocks = 0: as many blocks as fit in 1 GiB of KV
constexpr int kLogitsRowsPerPass = 32;            // lm_head rows computed at once (bounds the [rows, V] scratch)

// fp32 K or V of every layer slot (kv_layout.h): [slots][num_blocks][block_size][nkv][D]. calloc so untouched
// pages cost nothing.
struct KvArena {
  float* data = nullptr;
  size_t per_layer = 0;  // floats
  KvArena() = default;
  KvArena(const KvArena&) = delete;
  KvArena& operator=(const KvArena&) = delete;
  ~KvArena() { std::free(data); }
  void allocate(int layers, size_t floats_per_layer) {
    per_layer = floats_per_layer;
    data = static_cast<float*>(std::calloc(static_cast<size_t>(layers) * floats_per_layer, sizeof(float)));
    if (!data) throw std::runtime_error("cpu backend: cannot allocate the KV cache");
  }
  float* layer(int l) { return data + static_cast<size_t>(l) * per_layer; }
};

std::string str(long long v) { return std::to_string(v); }

class CpuBackend : public Backend {
 public:
  CpuBackend(const ModelConfig& cfg, ModelWeights w, const LoadOptions& opt)
      : cfg_(cfg), w_(std::move(w)), opt_(opt), kv_(kv_layout(cfg, opt.window_kv)), inv_freq_(cfg.head_dim / 2) {
    const size_t slot_floats = static_cast<size_t>(cfg.num_kv_heads) * cfg.head_dim;
    const uint64_t block_bytes = 2ull * kv_.slots * opt.block_size * slot_floats * sizeof(float);
    num_blocks_ = opt.num_blocks;
    if (num_blocks_ == 0) {
      uint64_t fit = std::max<uint64_t>(1, kDefaultKvBytes / block_bytes);
      uint64_t useful = static_cast<uint64_t>(std::max(1, opt.max_seqs)) *
                        blocks_per_sequence(kv_, cfg.max_positions, opt.block_size, opt.max_batch_tokens);
      num_blocks_ = static_cast<int>(std::min<uint64_t>({fit, useful, 1u << 30}));
    }
    const size_t per_layer = static_cast<size_t>(num_blocks_) * opt.block_size * slot_floats;
    k_cache_.allocate(kv_.slots, per_layer);
    v_cache_.allocate(kv_.slots, per_layer);
    kv_bytes_ = block_bytes * static_cast<uint64_t>(num_blocks_);
    ref::rope_inv_freq(cfg.rope, cfg.head_dim, inv_freq_.data(), &attn_factor_);
    threads_ = cpu::num_threads();
    limits_ = step_limits(cfg, opt, kv_, num_blocks_);
  }

  BackendInfo info() const override {
    BackendInfo i;
    i.backend = "cpu";
    i.device_name = "CPU reference (" + str(threads_) + " threads)";
    i.expert_format = w_.layers.empty() || w_.layers[0].experts.mxfp4 ? "mxfp4" : "bf16";
    i.limits = limits_;
    i.weight_bytes = w_.bytes;
    i.kv_bytes = kv_bytes_;
    return i;
  }

  const StepLimits& limits() const override { return limits_; }

  void step(const StepBatch& b, StepOutput& out) override {
    const int T = b.num_tokens, H = cfg_.hidden;
    std::vector<int> seq_start(b.num_seqs + 1, 0);
    for (int s = 0; s < b.num_seqs; s++) seq_start[s + 1] = seq_start[s] + b.seq_lens[s];

    std::vector<float> x(static_cast<size_t>(T) * H), xn(x.size());
    ref::embedding(w_.embed_tokens.data(), b.tokens, T, H, x.data());
    for (int l = 0; l < cfg_.num_layers; l++) {
      const LayerWeights& L = w_.layers[l];
      ref::rmsnorm(x.data(), L.input_norm.data(), T, H, cfg_.rms_eps, xn.data());
      attention_block(l, L, b, seq_start, xn.data(), x.data());
      ref::rmsnorm(x.data(), L.post_attention_norm.data(), T, H, cfg_.rms_eps, xn.data());
      moe_block(L, T, xn.data(), x.data());
    }
    ref::rmsnorm(x.data(), w_.final_norm.data(), T, H, cfg_.rms_eps, xn.data());
    write_output(b, seq_start, xn.data(), out);
  }

 private:
  // x += o_proj(attention(rope(q), cache with rope(k), v)) for every sequence of the batch.
  void attention_block(int l, const LayerWeights& L, const StepBatch& b, const std::vector<int>& seq_start,
                       const float* xn, float* x) {
    const int T = b.num_tokens, H = cfg_.hidden, D = cfg_.head_dim, nq = cfg_.num_heads, nkv = cfg_.num_kv_heads;
    std::vector<float> q(static_cast<size_t>(T) * nq * D), k(static_cast<size_t>(T) * nkv * D), v(k.size());
    ref::linear(xn, L.q_weight.data(), L.q_bias.data(), T, H, nq * D, q.data());
    ref::linear(xn, L.k_weight.data(), L.k_bias.data(), T, H, nkv * D, k.data());
    ref::linear(xn, L.v_weight.data(), L.v_bias.data(), T, H, nkv * D, v.data());
    ref::rope(q.data(), b.positions, T, nq, D, inv_freq_.data(), attn_factor_);
    ref::rope(k.data(), b.positions, T, nkv, D, inv_freq_.data(), attn_factor_);
    const int window = cfg_.layer_sliding[l] ? cfg_.sliding_window : 0;
    // A sliding layer's KV lives in the blocks of the window tables when the layout keeps the kinds apart.
    const int32_t* tables = window > 0 && kv_.window > 0 ? b.window_tables : b.block_tables;
    float* kc = k_cache_.layer(kv_.slot_of_layer[l]);
    float* vc = v_cache_.layer(kv_.slot_of_layer[l]);
    std::vector<float> attn(q.size());
    for (int s = 0; s < b.num_seqs; s++) {
      const int t0 = seq_start[s], n = b.seq_lens[s];
      const int32_t* table = tables + static_cast<size_t>(s) * b.max_blocks_per_seq;
      const size_t kv_off = static_cast<size_t>(t0) * nkv * D;
      ref::kv_write(kc, vc, k.data() + kv_off, v.data() + kv_off, b.positions + t0, table, opt_.block_size, n, nkv, D);
      ref::attention(q.data() + static_cast<size_t>(t0) * nq * D, kc, vc, table, opt_.block_size,
                     b.positions + t0, n, nq, nkv, D, window, L.sinks.data(), attn.data() + static_cast<size_t>(t0) * nq * D);
    }
    std::vector<float> o(static_cast<size_t>(T) * H);
    ref::linear(attn.data(), L.o_weight.data(), L.o_bias.data(), T, nq * D, H, o.data());
    for (size_t i = 0; i < o.size(); i++) x[i] += o[i];
  }

  // x += sum over each token's top-k experts of weight * expert_mlp(xn). Tokens are grouped by expert so that
  // each expert's rows are decoded once per step.
  void moe_block(const LayerWeights& L, int T, const float* xn, float* x) {
    const int H = cfg_.hidden, I = cfg_.intermediate, E = cfg_.num_experts, K = cfg_.experts_per_token;
    std::vector<float> router(static_cast<size_t>(T) * E), weights(static_cast<size_t>(T) * K);
    std::vector<int32_t> ids(static_cast<size_t>(T) * K);
    ref::linear(xn, L.router_weight.data(), L.router_bias.data(), T, H, E, router.data());
    ref::router_topk(router.data(), T, E, K, ids.data(), weights.data());

    std::vector<std::vector<int>> routed(E);  // per expert: indices into ids (token * K + slot)
    for (int i = 0; i < T * K; i++) routed[ids[i]].push_back(i);
    std::vector<float> moe(static_cast<size_t>(T) * H, 0.0f);
    const auto& X = L.experts;
    const size_t gu_rows = 2 * static_cast<size_t>(I), gu_groups = H / 32, dn_groups = I / 32;
    std::vector<float> xe, gu, a, y;
    for (int e = 0; e < E; e++) {
      const int n = static_cast<int>(routed[e].size());
      if (n == 0) continue;
      xe.resize(static_cast<size_t>(n) * H);
      for (int r = 0; r < n; r++)
        std::copy_n(xn + static_cast<size_t>(routed[e][r] / K) * H, H, xe.begin() + static_cast<size_t>(r) * H);
      gu.resize(static_cast<size_t>(n) * gu_rows);
      a.resize(static_cast<size_t>(n) * I);
      y.resize(static_cast<size_t>(n) * H);
      const uint16_t* gu_bias = X.gate_up_bias.data() + e * gu_rows;
      const uint16_t* dn_bias = X.down_bias.data() + static_cast<size_t>(e) * H;
      if (X.mxfp4)
        ref::linear_mxfp4(xe.data(), X.gate_up_blocks.data() + e * gu_rows * gu_groups * 16,
                          X.gate_up_scales.data() + e * gu_rows * gu_groups, gu_bias, n, H, static_cast<int>(gu_rows), gu.data());
      else
        ref::linear(xe.data(), X.gate_up_weight.data() + e * gu_rows * H, gu_bias, n, H, static_cast<int>(gu_rows), gu.data());
      for (int r = 0; r < n; r++) ref::swiglu(gu.data() + r * gu_rows, I, cfg_.swiglu_limit, a.data() + static_cast<size_t>(r) * I);
      if (X.mxfp4)
        ref::linear_mxfp4(a.data(), X.down_blocks.data() + static_cast<size_t>(e) * H * dn_groups * 16,
                          X.down_scales.data() + static_cast<size_t>(e) * H * dn_groups, dn_bias, n, I, H, y.data());
      else
        ref::linear(a.data(), X.down_weight.data() + static_cast<size_t>(e) * H * I, dn_bias, n, I, H, y.data());
      for (int r = 0; r < n; r++) {
        const int token = routed[e][r] / K;
        const float wt = weights[routed[e][r]];
        float* dst = moe.data() + static_cast<size_t>(token) * H;
        for (int h = 0; h < H; h++) dst[h] += wt * y[static_cast<size_t>(r) * H + h];
      }
    }
    for (size_t i = 0; i < moe.size(); i++) x[i] += moe[i];
  }

  // lm_head on the output rows only, a few rows at a time, narrowed on the host; full rows where asked.
  void write_output(const StepBatch& b, const std::vector<int>& seq_start, const float* xn, StepOutput& out) const {
    const int H = cfg_.hidden, V = cfg_.vocab;
    std::vector<int> row_token, row_seq;
    for (int s = 0; s < b.num_seqs; s++) {
      if (b.all_positions) {
        for (int i = seq_start[s]; i < seq_start[s + 1]; i++) row_token.push_back(i), row_seq.push_back(s);
      } else {
        row_token.push_back(seq_start[s + 1] - 1);
        row_seq.push_back(s);
      }
    }
    const int rows = static_cast<int>(row_token.size());
    out = StepOutput{};
    out.num_rows = rows;
    out.vocab = V;
    out.top_k = b.top_k;
    out.argmax.resize(rows);
    out.max_logit.resize(rows);
    out.logsumexp.resize(rows);
    out.top_ids.resize(static_cast<size_t>(rows) * b.top_k);
    out.top_logits.resize(static_cast<size_t>(rows) * b.top_k);
    for (int r = 0; r < rows; r++)
      if (b.full_logits && b.full_logits[row_seq[r]]) out.logits_rows.push_back(r);
    out.logits.resize(out.logits_rows.size() * static_cast<size_t>(V));
    if (b.sample_rows) {
      out.sampled.assign(rows, -1);
      out.sampled_logit.assign(rows, NAN);
    }

    std::vector<float> h, logits;
    size_t full_done = 0;
    for (int r0 = 0; r0 < rows; r0 += kLogitsRowsPerPass) {
      const int n = std::min(kLogitsRowsPerPass, rows - r0);
      h.resize(static_cast<size_t>(n) * H);
      for (int r = 0; r < n; r++) std::copy_n(xn + static_cast<size_t>(row_token[r0 + r]) * H, H, h.begin() + static_cast<size_t>(r) * H);
      logits.resize(static_cast<size_t>(n) * V);
      ref::linear(h.data(), w_.lm_head.data(), nullptr, n, H, V, logits.data());
      cpu::parallel_for(n, [&](int i0, int i1) {
        for (int i = i0; i < i1; i++) {
          const int r = r0 + i;
          narrow_logits_row(logits.data() + static_cast<size_t>(i) * V, V, b.top_k, out.top_ids.data() + static_cast<size_t>(r) * b.top_k,
                            out.top_logits.data() + static_cast<size_t>(r) * b.top_k, &out.argmax[r], &out.max_logit[r],
                            &out.logsumexp[r]);
          // Sampling in the step (sampling.h): on the raw row, after its narrowing.
          if (b.sample_rows && b.sample_rows[row_seq[r]].mode != kSampleNone) {
            const SampleRow& p = b.sample_rows[row_seq[r]];
            sample_row_ref(logits.data() + static_cast<size_t>(i) * V, V, p, b.sample_entries + p.entry_begin,
                           p.entry_end - p.entry_begin, &out.sampled[r], &out.sampled_logit[r]);
          }
        }
      });
      for (int i = 0; i < n; i++) {
        if (full_done < out.logits_rows.size() && out.logits_rows[full_done] == r0 + i) {
          std::copy_n(logits.begin() + static_cast<size_t>(i) * V, V, out.logits.begin() + full_done * V);
          full_done++;
        }
      }
    }
  }

  ModelConfig cfg_;
  ModelWeights w_;
  LoadOptions opt_;
  KvLayout kv_;
  int num_blocks_ = 0;
  StepLimits limits_;
  uint64_t kv_bytes_ = 0;
  KvArena k_cache_, v_cache_;
  std::vector<float> inv_freq_;  // [D/2]
  float attn_factor_ = 1.0f;
  int threads_ = 1;  // at load (info() must not wait on the pool while a step runs)
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& cfg, const TensorMap& tensors, const LoadOptions& opt,
                                          const ProgressFn& progress) {
  if (opt.threads > 0) cpu::set_num_threads(opt.threads);
  ModelWeights w = cpu::load_weights(cfg, tensors, opt, progress);
  return std::make_unique<CpuBackend>(cfg, std::move(w), opt);
}

}  // namespace hm
