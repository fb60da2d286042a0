// Embedding gather: x[t, :] = float(table[ids[t], :]). Starts the fp32 residual stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace hm::cuda {

struct EmbeddingParams {
  const uint16_t* table = nullptr;  // bf16 [V, H]
  const int32_t* ids = nullptr;     // [T] (device)
  float* x = nullptr;               // fp32 [T, H]
  int T = 0, H = 0, V = 0;
  bool pdl = false;
};
void embedding(const EmbeddingParams& p, cudaStream_t stream);

}  // namespace hm::cuda
