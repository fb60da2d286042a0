// The CUDA backend's weights: one device arena holding every tensor in the layout the kernels read
// (q/k/v fused into one [nq*D + 2*nkv*D, H] projection, sinks widened to fp32, experts as MXFP4 bytes or decoded
// to bf16 [E, out, in]). Filled by streaming the checkpoint through pinned staging buffers, or with random
// values generated on the GPU (dummy).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../backend.h"
#include "moe.h"

namespace hm::cuda {

struct LayerWeights {
  const uint16_t* input_norm = nullptr;  // [H]
  const uint16_t* post_norm = nullptr;   // [H]
  const uint16_t* qkv_w = nullptr;       // [nq*D + 2*nkv*D, H]
  const uint16_t* qkv_b = nullptr;       // [nq*D + 2*nkv*D]
  const uint16_t* o_w = nullptr;         // [H, nq*D]
  const uint16_t* o_b = nullptr;         // [H]
  const float* sinks = nullptr;          // [nq]
  const uint16_t* router_w = nullptr;    // [E, H]
  const uint16_t* router_b = nullptr;    // [E]
  MoeMxfp4Weights mxfp4;                 // set when the experts are MXFP4
  MoeBf16Weights bf16;                   // set when the experts are bf16
};

struct GpuWeights {
  void* arena = nullptr;  // owns everything below
  uint64_t bytes = 0;
  bool mxfp4 = true;
  const uint16_t* embed = nullptr;       // [V, H]
  std::vector<LayerWeights> layers;
  const uint16_t* final_norm = nullptr;  // [H]
  const uint16_t* lm_head = nullptr;     // [V, H]
  GpuWeights() = default;
  GpuWeights(const GpuWeights&) = delete;
  GpuWeights& operator=(const GpuWeights&) = delete;
  ~GpuWeights();
};

// Allocates the arena (throwing "out of GPU memory: ..." with nothing left allocated) and fills it from the
// checkpoint or, when opt.dummy, with seeded random values. expert_mxfp4 picks the expert format on the GPU.
void load_gpu_weights(const ModelConfig& cfg, const TensorMap& tensors, const LoadOptions& opt, bool expert_mxfp4,
                      const ProgressFn& progress, GpuWeights& w);

// "out of GPU memory: needed X GiB for WHAT, Y GiB free"
std::string oom_message(uint64_t needed, const std::string& what);

}  // namespace hm::cuda
