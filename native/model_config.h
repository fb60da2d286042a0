// The model hyper-parameters the kernels need, already validated and normalised by the TypeScript loader
// (src/model/config.ts). Both config.json forms (rope_scaling / rope_parameters) arrive here as one struct.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hm {

struct RopeConfig {
  double theta = 150000.0;
  bool yarn = true;               // false: plain RoPE (factor ignored)
  double factor = 32.0;
  double original_max_positions = 4096.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
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
  float rms_eps = 1e-5f;
  float swiglu_limit = 7.0f;
  int max_positions = 131072;
};

}  // namespace hm
