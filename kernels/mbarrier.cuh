// The shared-memory mbarrier primitives of the kernels whose rings are filled by the copy engines (bulk copies and
// the tensor memory accelerator): the MoE bulk and grouped kernels (moe_bulk_ops.cuh) and the dense TMA GEMM
// (dense_tma.cuh). A stage's barrier counts its arrivals and, with expect_tx, the bytes the copies still owe it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hm::cuda {
namespace {

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void mbar_init(uint64_t* b, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t parity) {
  asm volatile(
      "{\n\t.reg .pred P1;\n"
      "LAB_WAIT:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n\t"
      "@!P1 bra LAB_WAIT;\n}" ::"r"(smem_u32(b)),
      "r"(parity)
      : "memory");
}
}  // namespace
}  // namespace hm::cuda
