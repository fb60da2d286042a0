// Loading the CPU backend's weights: one table of every tensor the config implies (name, format, size, and how a
// dummy model initialises it), walked once to validate everything before allocating, then once to read or fill.
#include "cpu_weights.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "ref_ops.h"

namespace hm::cpu {
namespace {

// How a dummy model fills a tensor (std ~ 1/sqrt(fan_in) for matrices so activations stay O(1)).
enum class Init { kNorm, kLinear, kBias, kEmbed, kSinks, kFp4Blocks, kE8m0Scales };

struct Slot {
  std::string name;
  uint64_t elems = 0;
  Init init = Init::kLinear;
  int fan_in = 1;
  std::vector<uint16_t>* bf16 = nullptr;  // exactly one of these is set
  std::vector<uint8_t>* u8 = nullptr;
  std::vector<float>* f32 = nullptr;      // bf16 or fp32 in the file, widened to fp32
  int transpose_rows = 0;                 // > 0: the file holds [batch, rows, elems/batch/rows]; store [batch, cols, rows]
  int transpose_batch = 1;
};

// [batch, rows, cols] -> [batch, cols, rows]
void transpose_batched(std::vector<uint16_t>& v, int batch, int rows) {
  const size_t per = v.size() / batch, cols = per / rows;
  std::vector<uint16_t> t(v.size());
  for (int b = 0; b < batch; b++)
    for (size_t r = 0; r < static_cast<size_t>(rows); r++)
      for (size_t c = 0; c < cols; c++) t[b * per + c * rows + r] = v[b * per + r * cols + c];
  v.swap(t);
}

std::vector<Slot> layout(const ModelConfig& c, bool mxfp4_experts, ModelWeights& w) {
  const uint64_t H = c.hidden, I = c.intermediate, E = c.num_experts, V = c.vocab;
  const uint64_t q = static_cast<uint64_t>(c.num_heads) * c.head_dim, kv = static_cast<uint64_t>(c.num_kv_heads) * c.head_dim;
  std::vector<Slot> s;
  auto bf16 = [&](std::string name, uint64_t n, Init init, int fan_in, std::vector<uint16_t>* dst) {
    s.push_back({std::move(name), n, init, fan_in, dst, nullptr, nullptr});
  };
  auto u8 = [&](std::string name, uint64_t n, Init init, int fan_in, std::vector<uint8_t>* dst) {
    s.push_back({std::move(name), n, init, fan_in, nullptr, dst, nullptr});
  };
  w.layers.resize(c.num_layers);
  bf16("model.embed_tokens.weight", V * H, Init::kEmbed, 1, &w.embed_tokens);
  for (int l = 0; l < c.num_layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& L = w.layers[l];
    bf16(p + "input_layernorm.weight", H, Init::kNorm, 1, &L.input_norm);
    bf16(p + "self_attn.q_proj.weight", q * H, Init::kLinear, c.hidden, &L.q_weight);
    bf16(p + "self_attn.q_proj.bias", q, Init::kBias, 1, &L.q_bias);
    bf16(p + "self_attn.k_proj.weight", kv * H, Init::kLinear, c.hidden, &L.k_weight);
    bf16(p + "self_attn.k_proj.bias", kv, Init::kBias, 1, &L.k_bias);
    bf16(p + "self_attn.v_proj.weight", kv * H, Init::kLinear, c.hidden, &L.v_weight);
    bf16(p + "self_attn.v_proj.bias", kv, Init::kBias, 1, &L.v_bias);
    bf16(p + "self_attn.o_proj.weight", H * q, Init::kLinear, static_cast<int>(q), &L.o_weight);
    bf16(p + "self_attn.o_proj.bias", H, Init::kBias, 1, &L.o_bias);
    s.push_back({p + "self_attn.sinks", static_cast<uint64_t>(c.num_heads), Init::kSinks, 1, nullptr, nullptr, &L.sinks});
    bf16(p + "post_attention_layernorm.weight", H, Init::kNorm, 1, &L.post_attention_norm);
    bf16(p + "mlp.router.weight", E * H, Init::kLinear, c.hidden, &L.router_weight);
    bf16(p + "mlp.router.bias", E, Init::kBias, 1, &L.router_bias);
    ExpertWeights& X = L.experts;
    X.mxfp4 = mxfp4_experts;
    if (mxfp4_experts) {
      u8(p + "mlp.experts.gate_up_proj_blocks", E * 2 * I * (H / 32) * 16, Init::kFp4Blocks, c.hidden, &X.gate_up_blocks);
      u8(p + "mlp.experts.gate_up_proj_scales", E * 2 * I * (H / 32), Init::kE8m0Scales, c.hidden, &X.gate_up_scales);
    } else {
      bf16(p + "mlp.experts.gate_up_proj", E * H * 2 * I, Init::kLinear, c.hidden, &X.gate_up_weight);
      s.back().transpose_rows = c.hidden;
      s.back().transpose_batch = c.num_experts;
    }
    bf16(p + "mlp.experts.gate_up_proj_bias", E * 2 * I, Init::kBias, 1, &X.gate_up_bias);
    if (mxfp4_experts) {
      u8(p + "mlp.experts.down_proj_blocks", E * H * (I / 32) * 16, Init::kFp4Blocks, c.intermediate, &X.down_blocks);
      u8(p + "mlp.experts.down_proj_scales", E * H * (I / 32), Init::kE8m0Scales, c.intermediate, &X.down_scales);
    } else {
      bf16(p + "mlp.experts.down_proj", E * I * H, Init::kLinear, c.intermediate, &X.down_weight);
      s.back().transpose_rows = c.intermediate;
      s.back().transpose_batch = c.num_experts;
    }
    bf16(p + "mlp.experts.down_proj_bias", E * H, Init::kBias, 1, &X.down_bias);
  }
  bf16("model.norm.weight", H, Init::kNorm, 1, &w.final_norm);
  bf16("lm_head.weight", V * H, Init::kLinear, c.hidden, &w.lm_head);
  return s;
}

void check_config(const ModelConfig& c, bool mxfp4) {
  if (mxfp4 && (c.hidden % 32 != 0 || c.intermediate % 32 != 0))
    throw std::runtime_error("cpu backend: hidden and intermediate sizes must be multiples of 32 (MXFP4 blocks)");
  if (c.num_heads <= 0 || c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0 || c.head_dim % 2 != 0)
    throw std::runtime_error("cpu backend: num_heads must be a multiple of num_kv_heads and head_dim even");
  if (c.num_experts <= 0 || c.experts_per_token <= 0 || c.experts_per_token > c.num_experts)
    throw std::runtime_error("cpu backend: experts_per_token must be in 1..num_experts");
}

uint64_t slot_bytes(const Slot& s) { return s.elems * (s.bf16 ? 2 : s.u8 ? 1 : 4); }

// splitmix64: a tiny seeded generator, one stream per tensor so the fill does not depend on the order.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }  // [-1, 1)
};

float dummy_value(Init init, int fan_in, Rng& r) {
  switch (init) {
    case Init::kNorm: return 1.0f + 0.1f * r.uniform();
    case Init::kLinear: return r.uniform() * std::sqrt(3.0f / static_cast<float>(fan_in));
    case Init::kBias: return 0.1f * r.uniform();
    case Init::kEmbed: return r.uniform();
    case Init::kSinks: return r.uniform();
    default: return 0.0f;
  }
}

}  // namespace

ModelWeights load_weights(const ModelConfig& cfg, const TensorMap& tensors, const ProgressFn& progress) {
  ModelWeights w;
  // The checkpoint's expert format shows in its tensor names (the TypeScript loader checked they match config.json).
  const bool mxfp4 = cfg.num_layers == 0 || tensors.count("model.layers.0.mlp.experts.gate_up_proj_blocks") > 0;
  check_config(cfg, mxfp4);
  std::vector<Slot> slots = layout(cfg, mxfp4, w);
  uint64_t total = 0;
  for (const Slot& s : slots) {  // validate everything before allocating anything
    const TensorSource& t = find_tensor(tensors, s.name);
    bool dtype_ok = s.bf16 ? t.dtype == DType::BF16
                  : s.u8   ? t.dtype == DType::U8
                           : (t.dtype == DType::BF16 || t.dtype == DType::F32);
    if (!dtype_ok) throw std::runtime_error(t.file + ": tensor " + s.name + ": unexpected dtype " + dtype_name(t.dtype));
    if (t.nbytes != s.elems * dtype_size(t.dtype))
      throw std::runtime_error(t.file + ": tensor " + s.name + ": holds " + std::to_string(t.nbytes) + " bytes, the config implies " +
                               std::to_string(s.elems * dtype_size(t.dtype)));
    total += t.nbytes;
  }
  uint64_t done = 0;
  for (const Slot& s : slots) {
    const TensorSource& t = tensors.at(s.name);
    if (s.bf16) {
      s.bf16->resize(s.elems);
      read_tensor(t, s.bf16->data());
      if (s.transpose_rows > 0) transpose_batched(*s.bf16, s.transpose_batch, s.transpose_rows);
    } else if (s.u8) {
      s.u8->resize(s.elems);
      read_tensor(t, s.u8->data());
    } else if (t.dtype == DType::F32) {
      s.f32->resize(s.elems);
      read_tensor(t, s.f32->data());
    } else {
      std::vector<uint16_t> raw(s.elems);
      read_tensor(t, raw.data());
      s.f32->resize(s.elems);
      for (uint64_t i = 0; i < s.elems; i++) (*s.f32)[i] = ref::bf16_to_f32(raw[i]);
    }
    w.bytes += slot_bytes(s);
    done += t.nbytes;
    if (progress) progress(done, total);
  }
  return w;
}

ModelWeights dummy_weights(const ModelConfig& cfg, uint64_t seed, const ProgressFn& progress) {
  check_config(cfg, true);
  ModelWeights w;
  std::vector<Slot> slots = layout(cfg, /*mxfp4_experts=*/true, w);
  uint64_t values = 0, total = 0;
  for (const Slot& s : slots) {
    values += s.init == Init::kFp4Blocks ? 2 * s.elems : s.init == Init::kE8m0Scales ? 0 : s.elems;
    total += slot_bytes(s);
  }
  const double fp32_gib = static_cast<double>(values) * 4.0 / (1ull << 30);
  if (fp32_gib > 8.0)
    throw std::runtime_error("cpu backend: dummy weights for this config would be " + std::to_string(fp32_gib).substr(0, 6) +
                             " GiB in fp32 (the CPU reference allows 8 GiB); use a smaller config or --backend cuda");
  uint64_t done = 0;
  for (size_t i = 0; i < slots.size(); i++) {
    const Slot& s = slots[i];
    Rng r{seed * 0x100000001b3ull + i};
    if (s.bf16) {
      s.bf16->resize(s.elems);
      for (auto& v : *s.bf16) v = ref::f32_to_bf16(dummy_value(s.init, s.fan_in, r));
    } else if (s.f32) {
      s.f32->resize(s.elems);
      for (auto& v : *s.f32) v = ref::bf16_to_f32(ref::f32_to_bf16(dummy_value(s.init, s.fan_in, r)));
    } else if (s.init == Init::kFp4Blocks) {
      s.u8->resize(s.elems);
      for (auto& v : *s.u8) v = static_cast<uint8_t>(r.next());
    } else {
      // E2M1 values average ~2.6 in magnitude: pick 2^e with 2.6 * 2^e ~ 1/sqrt(fan_in), jittered by one step.
      int e = static_cast<int>(std::lround(-std::log2(2.6 * std::sqrt(static_cast<double>(s.fan_in)))));
      s.u8->resize(s.elems);
      for (auto& v : *s.u8) v = static_cast<uint8_t>(127 + e - static_cast<int>(r.next() & 1));
    }
    w.bytes += slot_bytes(s);
    done += slot_bytes(s);
    if (progress) progress(done, total);
  }
  return w;
}

}  // namespace hm::cpu
