// The checkpoint's weight layout, written once: every tensor a gpt-oss checkpoint holds, with its name, dtype,
// shape (in the shape alphabet of docs/model.md), and how a dummy model fills it. Both native loaders walk
// weight_layout() and bind each tensor to its buffer by TensorId; the TypeScript checkpoint checks read the same
// list through the addon's weightLayout() (src/native.ts). Adding a tensor is one row in weight_layout.cpp.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model_config.h"
#include "tensor_source.h"

namespace hm {

// Which tensor of the model (per layer for the layer tensors): what the loaders switch on to bind a buffer.
enum class TensorId : uint8_t {
  kEmbed,
  kInputNorm,
  kQWeight,
  kQBias,
  kKWeight,
  kKBias,
  kVWeight,
  kVBias,
  kOWeight,
  kOBias,
  kSinks,
  kPostNorm,
  kRouterWeight,
  kRouterBias,
  kGateUpBlocks,  // MXFP4 experts: E2M1 nibbles [E, 2I, H/32, 16]
  kGateUpScales,  // MXFP4 experts: E8M0 scales [E, 2I, H/32]
  kGateUp,        // bf16 experts, stored [E, H, 2I] (x @ W, unlike every other matrix)
  kGateUpBias,
  kDownBlocks,
  kDownScales,
  kDown,          // bf16 experts, stored [E, I, H]
  kDownBias,
  kFinalNorm,
  kLmHead,
};

// How a dummy model fills a tensor (dummy_init.h turns this into values).
enum class Init : uint8_t { kNorm, kLinear, kBias, kEmbed, kSinks, kFp4Blocks, kE8m0Scales };

struct TensorSpec {
  TensorId id;
  int layer = -1;  // -1: a model-level tensor
  std::string name;
  DType dtype = DType::BF16;  // as written and counted
  bool accepts_f32 = false;   // sinks come as BF16 or F32
  std::vector<int64_t> shape;
  uint64_t elems = 0;
  Init init = Init::kLinear;
  int fan_in = 1;             // Init::kLinear / kE8m0Scales: the matrix's input size
  uint64_t key = 0;           // the dummy generator's stream for this tensor (a hash of the name)
};

// Every tensor cfg implies, in checkpoint order (embedding, then each layer, then the final norm and lm_head),
// with the experts in cfg.expert_format. Throws on a config the layout cannot describe (sizes not multiples of 32
// for MXFP4).
std::vector<TensorSpec> weight_layout(const ModelConfig& cfg);

}  // namespace hm
