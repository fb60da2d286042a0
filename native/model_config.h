// The model hyper-parameters the kernels need, already validated and normalised by the TypeScript loader
// (src/model/config.ts, which also holds config.json's defaults). Both config.json forms (rope_scaling /
// rope_parameters) arrive here as one struct; the addon requires every field (no defaults here).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hm {

// How the checkpoint stores the expert weights, as config.json says (validated once, in TypeScript).
enum class ExpertFormat { kMxfp4, kBf16 };

struct RopeConfig {
  double theta = 0;
  bool yarn = false;  // false: plain RoPE (factor ignored)
  double factor = 0;
  double original_max_positions = 0;
  double beta_fast = 0;
  double beta_slow = 0;
  bool truncate = false;
};

struct ModelConfig {
  int num_layers = 0;
  int num_experts = 0;
  int experts_per_token = 0;
  int hidden = 0;        // H
  int intermediate = 0;  // I (per expert)
  int num_heads = 0;     // nq
  int num_kv_heads = 0;  // nkv
  int head_dim = 0;      // D
  int vocab = 0;         // V
  int sliding_window = 0;
  std::vector<uint8_t> layer_sliding;  // per layer: 1 = sliding_attention, 0 = full_attention
  RopeConfig rope;
  float rms_eps = 0;
  float swiglu_limit = 0;
  int max_positions = 0;
  ExpertFormat expert_format = ExpertFormat::kMxfp4;
};

}  // namespace hm
