// The CPU backend's weights, kept in the checkpoint's formats (bf16 bit patterns, MXFP4 blocks and scales) and
// widened on the fly by the reference ops, so a 20b-size model needs its checkpoint size in RAM, not 4x that.
#pragma once
#include <cstdint>
#include <vector>

#include "../backend.h"

namespace hm::cpu {

struct ExpertWeights {  // all E experts of one layer, back to back
  bool mxfp4 = true;                    // false: unquantised bf16 checkpoint (the two *_weight fields)
  std::vector<uint8_t> gate_up_blocks;  // [E, 2I, H/32, 16]
  std::vector<uint8_t> gate_up_scales;  // [E, 2I, H/32]
  std::vector<uint16_t> gate_up_bias;   // [E, 2I] bf16, gate/up interleaved
  std::vector<uint8_t> down_blocks;     // [E, H, I/32, 16]
  std::vector<uint8_t> down_scales;     // [E, H, I/32]
  std::vector<uint16_t> down_bias;      // [E, H] bf16
  // bf16 experts, transposed at load from the file's [E, in, out] (x @ W) to [E, out, in] like every linear here.
  std::vector<uint16_t> gate_up_weight;  // [E, 2I, H]
  std::vector<uint16_t> down_weight;     // [E, H, I]
};

struct LayerWeights {
  std::vector<uint16_t> input_norm, post_attention_norm;  // [H]
  std::vector<uint16_t> q_weight, q_bias;                 // [nq*D, H], [nq*D]
  std::vector<uint16_t> k_weight, k_bias;                 // [nkv*D, H], [nkv*D]
  std::vector<uint16_t> v_weight, v_bias;                 // [nkv*D, H], [nkv*D]
  std::vector<uint16_t> o_weight, o_bias;                 // [H, nq*D], [H]
  std::vector<float> sinks;                               // [nq] (bf16 or fp32 in the file)
  std::vector<uint16_t> router_weight, router_bias;       // [E, H], [E]
  ExpertWeights experts;
};

struct ModelWeights {
  std::vector<uint16_t> embed_tokens;  // [V, H]
  std::vector<LayerWeights> layers;
  std::vector<uint16_t> final_norm;    // [H]
  std::vector<uint16_t> lm_head;       // [V, H]
  uint64_t bytes = 0;                  // as held in memory
};

// Reads every tensor of the weight layout (checking dtype and size first), or when opt.dummy generates it
// from opt.seed (dummy_init.h), reporting bytes through progress. A dummy config whose fp32 size would pass
// 8 GiB is refused: the CPU reference is only practical for small models.
ModelWeights load_weights(const ModelConfig& cfg, const TensorMap& tensors, const LoadOptions& opt,
                          const ProgressFn& progress);

}  // namespace hm::cpu
