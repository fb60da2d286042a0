// The dummy-weight generator (native/dummy_init.h) on the GPU against the same functions on the host: every Init
// kind, a few seeds and tensor keys, bits exact. This is what makes the same --seed give the same dummy model on
// the CPU and the CUDA backend.
//   dummy_init  bf16 values, bf16-rounded fp32 (sinks) and raw bytes (E2M1 pairs, E8M0 scales), exact
#include <cuda_runtime.h>

#include <cstring>
#include <string>
#include <vector>

#include "common.cuh"
#include "dummy_init.h"
#include "op_test.h"

namespace hm::optest {
namespace {

// out[i] = the 32-bit pattern the loader would store for element i (bf16 / byte zero-extended).
__global__ void generate_kernel(uint32_t* out, uint64_t n, uint64_t seed, uint64_t key, dummy::Fill f) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x) {
    const uint64_t h = dummy::bits(seed, key, i);
    out[i] = f.bytes ? dummy::byte(f, h) : dummy::to_bf16(dummy::value(f, h));
  }
}

std::vector<Result> test_dummy_init() {
  std::vector<Result> out;
  const uint64_t n = 100003;
  uint32_t* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, n * 4));
  const struct {
    Init init;
    int fan_in;
    const char* name;
  } kinds[] = {{Init::kNorm, 1, "norm"},         {Init::kLinear, 2880, "linear"},  {Init::kBias, 1, "bias"},
               {Init::kEmbed, 1, "embed"},       {Init::kSinks, 1, "sinks"},       {Init::kFp4Blocks, 2880, "fp4"},
               {Init::kE8m0Scales, 2880, "e8m0"}};
  for (uint64_t seed : {0ull, 1ull, 123456789ull})
    for (const auto& k : kinds) {
      const uint64_t key = 0xcbf29ce484222325ull * (seed + 7) ^ uint64_t(k.init);
      const dummy::Fill f = dummy::fill_for(k.init, k.fan_in);
      generate_kernel<<<256, 256>>>(d, n, seed, key, f);
      CUDA_CHECK(cudaGetLastError());
      std::vector<uint32_t> got(n);
      CUDA_CHECK(cudaMemcpy(got.data(), d, n * 4, cudaMemcpyDeviceToHost));
      uint64_t mismatches = 0;
      for (uint64_t i = 0; i < n; i++) {
        const uint64_t h = dummy::bits(seed, key, i);
        const uint32_t want = f.bytes ? dummy::byte(f, h) : dummy::to_bf16(dummy::value(f, h));
        mismatches += got[i] != want;
      }
      Result r;
      r.params = std::string(k.name) + " seed=" + std::to_string(seed) + " n=" + std::to_string(n);
      r.error = double(mismatches);
      r.tolerance = 0;
      r.metric = "mismatches";
      out.push_back(r);
    }
  cudaFree(d);
  return out;
}
HM_OP_TEST("dummy_init", test_dummy_init);

}  // namespace
}  // namespace hm::optest
