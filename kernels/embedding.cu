// Embedding gather. One block per token; ids outside [0, V) produce zeros rather than reading out of bounds
// (the host validates ids; this only keeps a bad id from faulting the device).
#include "common.cuh"
#include "embedding.h"

namespace hm::cuda {
namespace {

__global__ void embedding_gather(const uint16_t* __restrict__ table, const int32_t* __restrict__ ids,
                                 float* __restrict__ x, int H, int V) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  const int id = ids[t];
  float* out = x + size_t(t) * H;
  if (id < 0 || id >= V) {
    for (int i = threadIdx.x; i < H; i += blockDim.x) out[i] = 0.f;
    return;
  }
  const uint16_t* row = table + size_t(id) * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x) out[i] = bf2f_bits(row[i]);
}

}  // namespace

void embedding(const EmbeddingParams& p, cudaStream_t stream) {
  HM_REQUIRE(p.table && p.ids && p.x, "embedding");
  HM_REQUIRE(p.T >= 0 && p.H > 0 && p.V > 0, "embedding");
  if (p.T == 0) return;
  launch(embedding_gather, dim3(p.T), dim3(256), 0, stream, p.pdl, p.table, p.ids, p.x, p.H, p.V);
}

}  // namespace hm::cuda
