// The one table of checkpoint tensors (see weight_layout.h), expanded per config.
#include "weight_layout.h"

#include <stdexcept>

namespace hm {
namespace {

// Sizes a shape is written in: the shape alphabet of docs/model.md.
enum Dim : uint8_t { kV, kH, kI, k2I, kE, kQ /* nq*D */, kKV /* nkv*D */, kNq, kH32 /* H/32 */, kI32 /* I/32 */, k16, k1 };
enum Scope : uint8_t { kModel, kLayer };
enum Experts : uint8_t { kAny, kOnlyMxfp4, kOnlyBf16 };

struct Row {
  TensorId id;
  Scope scope;
  Experts only;
  const char* name;  // full name (model scope) or the part after "model.layers.N."
  DType dtype;
  bool accepts_f32;
  int rank;
  Dim shape[4];
  Init init;
  Dim fan_in;
};

// clang-format off
constexpr Row kRows[] = {
  {TensorId::kEmbed,        kModel, kAny,       "model.embed_tokens.weight",            DType::BF16, false, 2, {kV, kH},             Init::kEmbed,      k1},
  {TensorId::kInputNorm,    kLayer, kAny,       "input_layernorm.weight",               DType::BF16, false, 1, {kH},                 Init::kNorm,       k1},
  {TensorId::kQWeight,      kLayer, kAny,       "self_attn.q_proj.weight",              DType::BF16, false, 2, {kQ, kH},             Init::kLinear,     kH},
  {TensorId::kQBias,        kLayer, kAny,       "self_attn.q_proj.bias",                DType::BF16, false, 1, {kQ},                 Init::kBias,       k1},
  {TensorId::kKWeight,      kLayer, kAny,       "self_attn.k_proj.weight",              DType::BF16, false, 2, {kKV, kH},            Init::kLinear,     kH},
  {TensorId::kKBias,        kLayer, kAny,       "self_attn.k_proj.bias",                DType::BF16, false, 1, {kKV},                Init::kBias,       k1},
  {TensorId::kVWeight,      kLayer, kAny,       "self_attn.v_proj.weight",              DType::BF16, false, 2, {kKV, kH},            Init::kLinear,     kH},
  {TensorId::kVBias,        kLayer, kAny,       "self_attn.v_proj.bias",                DType::BF16, false, 1, {kKV},                Init::kBias,       k1},
  {TensorId::kOWeight,      kLayer, kAny,       "self_attn.o_proj.weight",              DType::BF16, false, 2, {kH, kQ},             Init::kLinear,     kQ},
  {TensorId::kOBias,        kLayer, kAny,       "self_attn.o_proj.bias",                DType::BF16, false, 1, {kH},                 Init::kBias,       k1},
  {TensorId::kSinks,        kLayer, kAny,       "self_attn.sinks",                      DType::BF16, true,  1, {kNq},                Init::kSinks,      k1},
  {TensorId::kPostNorm,     kLayer, kAny,       "post_attention_layernorm.weight",      DType::BF16, false, 1, {kH},                 Init::kNorm,       k1},
  {TensorId::kRouterWeight, kLayer, kAny,       "mlp.router.weight",                    DType::BF16, false, 2, {kE, kH},             Init::kLinear,     kH},
  {TensorId::kRouterBias,   kLayer, kAny,       "mlp.router.bias",                      DType::BF16, false, 1, {kE},                 Init::kBias,       k1},
  {TensorId::kGateUpBlocks, kLayer, kOnlyMxfp4, "mlp.experts.gate_up_proj_blocks",      DType::U8,   false, 4, {kE, k2I, kH32, k16}, Init::kFp4Blocks,  kH},
  {TensorId::kGateUpScales, kLayer, kOnlyMxfp4, "mlp.experts.gate_up_proj_scales",      DType::U8,   false, 3, {kE, k2I, kH32},      Init::kE8m0Scales, kH},
  {TensorId::kGateUp,       kLayer, kOnlyBf16,  "mlp.experts.gate_up_proj",             DType::BF16, false, 3, {kE, kH, k2I},        Init::kLinear,     kH},
  {TensorId::kGateUpBias,   kLayer, kAny,       "mlp.experts.gate_up_proj_bias",        DType::BF16, false, 2, {kE, k2I},            Init::kBias,       k1},
  {TensorId::kDownBlocks,   kLayer, kOnlyMxfp4, "mlp.experts.down_proj_blocks",         DType::U8,   false, 4, {kE, kH, kI32, k16},  Init::kFp4Blocks,  kI},
  {TensorId::kDownScales,   kLayer, kOnlyMxfp4, "mlp.experts.down_proj_scales",         DType::U8,   false, 3, {kE, kH, kI32},       Init::kE8m0Scales, kI},
  {TensorId::kDown,         kLayer, kOnlyBf16,  "mlp.experts.down_proj",                DType::BF16, false, 3, {kE, kI, kH},         Init::kLinear,     kI},
  {TensorId::kDownBias,     kLayer, kAny,       "mlp.experts.down_proj_bias",           DType::BF16, false, 2, {kE, kH},             Init::kBias,       k1},
  {TensorId::kFinalNorm,    kModel, kAny,       "model.norm.weight",                    DType::BF16, false, 1, {kH},                 Init::kNorm,       k1},
  {TensorId::kLmHead,       kModel, kAny,       "lm_head.weight",                       DType::BF16, false, 2, {kV, kH},             Init::kLinear,     kH},
};
// clang-format on

int64_t size_of(Dim d, const ModelConfig& c) {
  switch (d) {
    case kV: return c.vocab;
    case kH: return c.hidden;
    case kI: return c.intermediate;
    case k2I: return 2 * int64_t(c.intermediate);
    case kE: return c.num_experts;
    case kQ: return int64_t(c.num_heads) * c.head_dim;
    case kKV: return int64_t(c.num_kv_heads) * c.head_dim;
    case kNq: return c.num_heads;
    case kH32: return c.hidden / 32;
    case kI32: return c.intermediate / 32;
    case k16: return 16;
    case k1: return 1;
  }
  return 0;
}

// FNV-1a: a stable 64-bit name hash, so a tensor's dummy values do not depend on where it sits in any order.
uint64_t name_key(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

TensorSpec expand(const Row& r, int layer, const ModelConfig& c) {
  TensorSpec t;
  t.id = r.id;
  t.layer = layer;
  t.name = layer < 0 ? std::string(r.name) : "model.layers." + std::to_string(layer) + "." + r.name;
  t.dtype = r.dtype;
  t.accepts_f32 = r.accepts_f32;
  t.elems = 1;
  for (int i = 0; i < r.rank; i++) {
    t.shape.push_back(size_of(r.shape[i], c));
    t.elems *= uint64_t(t.shape.back());
  }
  t.init = r.init;
  t.fan_in = int(size_of(r.fan_in, c));
  t.key = name_key(t.name);
  return t;
}

}  // namespace

std::vector<TensorSpec> weight_layout(const ModelConfig& c) {
  const bool mxfp4 = c.expert_format == ExpertFormat::kMxfp4;
  if (mxfp4 && (c.hidden % 32 != 0 || c.intermediate % 32 != 0))
    throw std::runtime_error("model config: hidden and intermediate sizes must be multiples of 32 (MXFP4 blocks)");
  auto wanted = [&](const Row& r) { return r.only == kAny || (r.only == kOnlyMxfp4) == mxfp4; };
  std::vector<TensorSpec> out;
  bool layers_done = false;
  for (const Row& r : kRows) {
    if (!wanted(r)) continue;
    if (r.scope == kModel) {
      out.push_back(expand(r, -1, c));
      continue;
    }
    if (layers_done) continue;
    // The layer rows are contiguous in the table: emit all of them for each layer at the first one.
    layers_done = true;
    for (int l = 0; l < c.num_layers; l++)
      for (const Row& lr : kRows)
        if (lr.scope == kLayer && wanted(lr)) out.push_back(expand(lr, l, c));
  }
  return out;
}

}  // namespace hm
