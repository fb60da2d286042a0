// Device helpers of the MXFP4 bulk-copy expert kernels (moe_decode_bulk.cuh, moe_grouped.cuh): the 1-D bulk copy
// of their shared-memory rings (the mbarriers are mbarrier.cuh's) and the device facts their launchers read.
#pragma once
#include "mbarrier.cuh"  // smem_u32 and the mbarrier primitives
#include "moe_impl.cuh"

namespace hm::cuda::moe {
namespace {

// 1-D bulk copy global -> shared, completing `bytes` of transaction on the mbarrier (sizes and addresses % 16).
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
#else
  __trap();  // the launcher takes this path only on sm_90+
#endif
}

// The device facts their launchers need, read once per device.
struct BulkDevice {
  int sms = 0, smem_optin = 0, major = 0;
};
inline const BulkDevice& bulk_device() {
  static BulkDevice d[16];
  static bool done[16] = {};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  dev &= 15;
  if (!done[dev]) {
    CUDA_CHECK(cudaDeviceGetAttribute(&d[dev].sms, cudaDevAttrMultiProcessorCount, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&d[dev].smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&d[dev].major, cudaDevAttrComputeCapabilityMajor, dev));
    done[dev] = true;
  }
  return d[dev];
}

}  // namespace
}  // namespace hm::cuda::moe
