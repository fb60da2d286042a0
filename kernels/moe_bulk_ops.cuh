// Device helpers of the MXFP4 bulk-copy expert kernels (moe_decode_bulk.cuh, moe_grouped.cuh): the mbarrier and
// 1-D bulk-copy primitives of their shared-memory rings, and the fp8 (e4m3) tensor-core pieces of their fp8 inner
// loops (E2M1 placed as exact e4m3, activations split hi + lo; moe_decode_bulk.cuh's header has the exactness
// argument), and the device facts their launchers read.
#pragma once
#include <cuda_fp8.h>

#include "moe_impl.cuh"

namespace hm::cuda::moe {
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

__device__ __forceinline__ void mma_e4m3(float* d, uint32_t a0, uint32_t a1, uint32_t b0, uint32_t b1, float c0,
                                         float c1, float c2, float c3) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%4,%5}, {%6,%7}, "
      "{%8,%9,%10,%11};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a0), "r"(a1), "r"(b0), "r"(b1), "f"(c0), "f"(c1), "f"(c2), "f"(c3));
}
// A word of 8 E2M1 nibbles -> the e4m3 bytes (v x 2^-6) of its even (0, 2, 4, 6) and odd (1, 3, 5, 7) nibbles.
__device__ __forceinline__ uint32_t e2m1_even_e4m3(uint32_t w) {
  return ((w << 2) & 0x1C1C1C1Cu) | ((w << 4) & 0x80808080u);
}
__device__ __forceinline__ uint32_t e2m1_odd_e4m3(uint32_t w) { return ((w >> 2) & 0x1C1C1C1Cu) | (w & 0x80808080u); }
// E8M0 byte s -> 2^(s - 127) as float bits, one shift (s = 0, 2^-127, gives 0; 255 is E8M0's NaN). The
// accumulators then hold sum(w x) x 2^-6 x f_tok (the e4m3 weights' 2^-6, the token's power of two): finite
// for every scale byte up to 191 (weights below 2^65, as kBf16) whatever f_tok.
__device__ __forceinline__ float fp8_block_scale(uint32_t s) { return __uint_as_float(s << 23); }

// Two floats (already scaled, exact in bf16) -> hi = rn_e4m3 (low byte: a), lo = rn_e4m3(x - hi).
__device__ __forceinline__ uint32_t fp8_split2(float a, float b, uint32_t& lo) {
  const __nv_fp8x2_storage_t h = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  const __half2_raw hr = __nv_cvt_fp8x2_to_halfraw2(h, __NV_E4M3);
  __half_raw ha, hb;
  ha.x = hr.x;
  hb.x = hr.y;
  lo = __nv_cvt_float2_to_fp8x2(make_float2(a - __half2float(__half(ha)), b - __half2float(__half(hb))),
                                __NV_SATFINITE, __NV_E4M3);
  return h;
}
// 8 bf16 columns (memory order) times the power of two f -> the uint4 of fp8_prep_bytes' layout.
__device__ __forceinline__ uint4 fp8_split8(const uint4& v, float f) {
  float c[8];
  unpack8(v, c);
  uint32_t l[4], h[4];
#pragma unroll
  for (int i = 0; i < 4; i++) h[i] = fp8_split2(c[(i & 1) + 4 * (i >> 1)] * f, c[(i & 1) + 4 * (i >> 1) + 2] * f, l[i]);
  return make_uint4(h[0] | (h[2] << 16), l[0] | (l[2] << 16), h[1] | (h[3] << 16), l[1] | (l[3] << 16));
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
