// What the MoE lab's programs share (moe_bench.cu, stream_probe.cu, stage_probe.cu): a CUDA check that exits, device
// allocation, deterministic byte fill, the median-of-repetitions timer and a plain streaming read.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "common.cuh"  // ld_stream16

#define CK(x)                                                                                    \
  do {                                                                                           \
    cudaError_t e_ = (x);                                                                        \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));   \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

// Bytes from a hash of their index: lo + h % span, or any byte with span 0.
__global__ void fill_bytes(uint8_t* p, size_t n, uint64_t seed, int lo, int span) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    p[i] = span ? uint8_t(lo + int(h % span)) : uint8_t(h);
  }
}

template <typename T>
T* dalloc(size_t n) {
  T* p;
  CK(cudaMalloc(&p, n * sizeof(T)));
  return p;
}

// Median of `reps` timings, each the mean over `iters` calls of fn(i).
inline float time_us(const std::function<void(int)>& fn, int iters = 50, int reps = 7, cudaStream_t st = 0) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 5; i++) fn(i);
  CK(cudaDeviceSynchronize());
  std::vector<float> ts;
  for (int r = 0; r < reps; r++) {
    CK(cudaEventRecord(a, st));
    for (int i = 0; i < iters; i++) fn(i);
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    ts.push_back(ms * 1000.f / iters);
  }
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  CK(cudaGetLastError());
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

// n 16-byte pieces from base, grid-stride, eight loads in flight a thread, XOR-folded so they stay live: a plain
// streaming read (stream_probe's flat ceiling, stage_probe's register stream).
__device__ __forceinline__ uint32_t xor_stream(const uint4* base, size_t n) {
  uint32_t f = 0;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  for (; i + 7 * stride < n; i += 8 * stride) {
    uint4 v[8];
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = hm::cuda::ld_stream16(base + i + j * stride);
#pragma unroll
    for (int j = 0; j < 8; j++) f ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  for (; i < n; i += stride) {
    const uint4 v = hm::cuda::ld_stream16(base + i);
    f ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  return f;
}
