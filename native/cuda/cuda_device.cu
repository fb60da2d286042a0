// Device discovery for the CUDA backend: never throws, so a machine without a GPU gets a reason, not a crash.
#include <cuda_runtime.h>

#include <string>

#include "../backend.h"

namespace hm {

int cuda_device_count(std::string* why_none) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why_none) *why_none = std::string("no CUDA device: ") + cudaGetErrorString(err);
    cudaGetLastError();
    return 0;
  }
  if (n == 0 && why_none) *why_none = "no CUDA device found";
  return n;
}

}  // namespace hm
