// Loading the CPU backend's weights: walks the one weight layout (weight_layout.h) once to validate every tensor
// before allocating, then once to read (or, for a dummy model, generate) each one into the buffer its TensorId
// names.
#include "cpu_weights.h"

#include <stdexcept>
#include <string>

#include "dummy_init.h"
#include "ref_ops.h"
#include "weight_layout.h"

namespace hm::cpu {
namespace {

// Where one tensor goes: exactly one of these is set.
struct Dest {
  std::vector<uint16_t>* bf16 = nullptr;
  std::vector<uint8_t>* u8 = nullptr;
  std::vector<float>* f32 = nullptr;  // bf16 or fp32 in the file, widened to fp32
};

Dest dest_of(const TensorSpec& t, ModelWeights& w) {
  if (t.id == TensorId::kEmbed) return {&w.embed_tokens};
  if (t.id == TensorId::kFinalNorm) return {&w.final_norm};
  if (t.id == TensorId::kLmHead) return {&w.lm_head};
  LayerWeights& L = w.layers.at(t.layer);
  ExpertWeights& X = L.experts;
  switch (t.id) {
    case TensorId::kInputNorm: return {&L.input_norm};
    case TensorId::kQWeight: return {&L.q_weight};
    case TensorId::kQBias: return {&L.q_bias};
    case TensorId::kKWeight: return {&L.k_weight};
    case TensorId::kKBias: return {&L.k_bias};
    case TensorId::kVWeight: return {&L.v_weight};
    case TensorId::kVBias: return {&L.v_bias};
    case TensorId::kOWeight: return {&L.o_weight};
    case TensorId::kOBias: return {&L.o_bias};
    case TensorId::kSinks: return {nullptr, nullptr, &L.sinks};
    case TensorId::kPostNorm: return {&L.post_attention_norm};
    case TensorId::kRouterWeight: return {&L.router_weight};
    case TensorId::kRouterBias: return {&L.router_bias};
    case TensorId::kGateUpBlocks: return {nullptr, &X.gate_up_blocks};
    case TensorId::kGateUpScales: return {nullptr, &X.gate_up_scales};
    case TensorId::kGateUp: return {&X.gate_up_weight};
    case TensorId::kGateUpBias: return {&X.gate_up_bias};
    case TensorId::kDownBlocks: return {nullptr, &X.down_blocks};
    case TensorId::kDownScales: return {nullptr, &X.down_scales};
    case TensorId::kDown: return {&X.down_weight};
    case TensorId::kDownBias: return {&X.down_bias};
    default: throw std::logic_error("cpu backend: tensor " + t.name + " has no buffer");
  }
}

// bf16 experts are stored [E, in, out] (x @ W); every linear here reads [E, out, in].
bool transposed(const TensorSpec& t) { return t.id == TensorId::kGateUp || t.id == TensorId::kDown; }

// [batch, rows, cols] -> [batch, cols, rows]
void transpose_batched(std::vector<uint16_t>& v, int64_t batch, int64_t rows) {
  const size_t per = v.size() / batch, cols = per / rows;
  std::vector<uint16_t> t(v.size());
  for (int64_t b = 0; b < batch; b++)
    for (size_t r = 0; r < size_t(rows); r++)
      for (size_t c = 0; c < cols; c++) t[b * per + c * rows + r] = v[b * per + r * cols + c];
  v.swap(t);
}

void check_config(const ModelConfig& c) {
  if (c.num_heads <= 0 || c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0 || c.head_dim % 2 != 0)
    throw std::runtime_error("cpu backend: num_heads must be a multiple of num_kv_heads and head_dim even");
  if (c.num_experts <= 0 || c.experts_per_token <= 0 || c.experts_per_token > c.num_experts)
    throw std::runtime_error("cpu backend: experts_per_token must be in 1..num_experts");
}

uint64_t held_bytes(const TensorSpec& t) { return t.elems * (t.dtype == DType::U8 ? 1 : t.accepts_f32 ? 4 : 2); }

// Fills one tensor as a checkpoint would hold it, from the shared generator.
void generate(const TensorSpec& t, const Dest& d, uint64_t seed) {
  const dummy::Fill f = dummy::fill_for(t.init, t.fan_in);
  if (d.u8) {
    d.u8->resize(t.elems);
    for (uint64_t i = 0; i < t.elems; i++) (*d.u8)[i] = dummy::byte(f, dummy::bits(seed, t.key, i));
  } else if (d.bf16) {
    d.bf16->resize(t.elems);
    for (uint64_t i = 0; i < t.elems; i++) (*d.bf16)[i] = dummy::to_bf16(dummy::value(f, dummy::bits(seed, t.key, i)));
  } else {
    d.f32->resize(t.elems);
    for (uint64_t i = 0; i < t.elems; i++)
      (*d.f32)[i] = ref::bf16_to_f32(dummy::to_bf16(dummy::value(f, dummy::bits(seed, t.key, i))));
  }
}

void read(const TensorSpec& s, const TensorSource& t, const Dest& d) {
  if (d.bf16) {
    d.bf16->resize(s.elems);
    read_tensor(t, d.bf16->data());
  } else if (d.u8) {
    d.u8->resize(s.elems);
    read_tensor(t, d.u8->data());
  } else if (t.dtype == DType::F32) {
    d.f32->resize(s.elems);
    read_tensor(t, d.f32->data());
  } else {
    std::vector<uint16_t> raw(s.elems);
    read_tensor(t, raw.data());
    d.f32->resize(s.elems);
    for (uint64_t i = 0; i < s.elems; i++) (*d.f32)[i] = ref::bf16_to_f32(raw[i]);
  }
}

}  // namespace

ModelWeights load_weights(const ModelConfig& cfg, const TensorMap& tensors, const LoadOptions& opt,
                          const ProgressFn& progress) {
  check_config(cfg);
  const std::vector<TensorSpec> layout = weight_layout(cfg);
  uint64_t total = 0, fp32_values = 0;
  for (const TensorSpec& s : layout) {
    fp32_values += s.init == Init::kFp4Blocks ? 2 * s.elems : s.init == Init::kE8m0Scales ? 0 : s.elems;
    if (opt.dummy) {
      total += held_bytes(s);
      continue;
    }
    // Validate everything before allocating anything.
    const TensorSource& t = find_tensor(tensors, s.name);
    const bool dtype_ok = t.dtype == s.dtype || (s.accepts_f32 && t.dtype == DType::F32);
    if (!dtype_ok) throw std::runtime_error(t.file + ": tensor " + s.name + ": unexpected dtype " + dtype_name(t.dtype));
    if (t.nbytes != s.elems * dtype_size(t.dtype))
      throw std::runtime_error(t.file + ": tensor " + s.name + ": holds " + std::to_string(t.nbytes) +
                               " bytes, the config implies " + std::to_string(s.elems * dtype_size(t.dtype)));
    total += t.nbytes;
  }
  const double fp32_gib = double(fp32_values) * 4.0 / (1ull << 30);
  if (opt.dummy && fp32_gib > 8.0)
    throw std::runtime_error("cpu backend: dummy weights for this config would be " + std::to_string(fp32_gib).substr(0, 6) +
                             " GiB in fp32 (the CPU reference allows 8 GiB); use a smaller config or --backend cuda");
  ModelWeights w;
  w.layers.resize(cfg.num_layers);
  for (auto& L : w.layers) L.experts.mxfp4 = cfg.expert_format == ExpertFormat::kMxfp4;
  uint64_t done = 0;
  for (const TensorSpec& s : layout) {
    const Dest d = dest_of(s, w);
    if (opt.dummy) {
      generate(s, d, opt.seed);
      done += held_bytes(s);
    } else {
      const TensorSource& t = tensors.at(s.name);
      read(s, t, d);
      done += t.nbytes;
    }
    if (transposed(s)) transpose_batched(*d.bf16, s.shape[0], s.shape[1]);
    w.bytes += held_bytes(s);
    if (progress) progress(done, total);
  }
  return w;
}

}  // namespace hm::cpu
