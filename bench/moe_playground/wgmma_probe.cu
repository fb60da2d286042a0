// Tensor-core probe for the expert GEMM's narrow tiles (moe_prefill_wgmma.cuh): what a k-tile of four chained
// wgmma m64nNk16 (A from registers, B from shared memory) costs, alone and behind the kernel's MXFP4 decode of its A
// fragments (LDS of the prepared words, decode_slot, the factor), at 1..3 blocks of two warpgroups an SM. No global
// traffic: B and the weight words sit in shared memory.
// Build and run (not part of the CMake build):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Ikernels -Inative -o wgmma_probe \
//     bench/moe_playground/wgmma_probe.cu && ./wgmma_probe
// H200 (session 19, 132 SMs), ns for one k-tile of every block in flight, at 1 / 2 / 3 blocks an SM:
//   MMAs only (A from registers)  N = 8: 60 / 117 / 175, N = 16: 62 / 119 / 177, N = 32: 74 / 145 / 217,
//                                 N = 64: 145 / 287 / 429 (956-967 TFLOP/s)
//   the decode alone              129 / 241 / 356 (the 16-token loop's decode, folded by 8 LOP3, no MMA)
//   decode + MMAs (the kernel's)  N = 8: 174 / 281 / 415, N = 16: 177 / 295 / 435, N = 32: 180 / 319 / 472,
//                                 N = 64: 219 / 397 / 601
//   A from shared memory          N = 16: 91 / 180 / 269 alone, 208 / 370 / 548 with the decode beside it
//   the decode alone, slot 3 as cheap as slots 1 and 2 (mode 5): 100 / 184 / 272
// So at 16 tokens a k-tile is mostly the decode (356 of 435 ns at three blocks), the MMAs hide only partly behind it
// (+79 ns), an 8-token MMA costs what a 16-token one does, and shared-memory A operands overlap worse, not better.
// The decode has about 40 LOP3 / SHF a warp and k-tile in the kernel (SASS count; ~48 here with the fold); if those
// issue at half rate (the integer pipe, not measured here), they alone are ~280 ns of the 356.
#include <cuda_runtime.h>

#include <cstdio>

#include "common.cuh"
#include "moe_impl.cuh"
#include "wgmma.cuh"

namespace wgmma_probe {

using namespace hm::cuda;
using namespace hm::cuda::moe;

constexpr int kThreads = 256, kKt = 512;  // k-tiles a block

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// m64n8k16 (not in wgmma.cuh: no kernel uses 8-token tiles), A from registers.
__device__ __forceinline__ void wg_mma_k16(float (&d)[4], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, %8, p, 1, 1, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
using hm::cuda::wg_mma_k16;  // wgmma.cuh's widths beside this one
#endif

// MODE 0: MMAs only (A fixed); 1: the kernel's decode of A from shared words, then the MMAs; 2: A from shared memory
// (a descriptor) with the same decode issued beside it, its results folded but not multiplied; 3: MMAs with A from
// shared memory only; 4: the decode alone (folded, no MMA); 5: 4 with slot 3 at the cost of slots 1 and 2.
template <int NACC, int MODE>
__global__ void __launch_bounds__(kThreads) probe(float* out, int reps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t base = (smem_addr + 1023u) & ~1023u;
  const int tid = threadIdx.x, lane = tid & 31, g = lane >> 2, t = lane & 3;
  // 40 KB of arbitrary words: B's tile (from base) and the 8 stages of weight words (from base + 4 KB) overlap, as
  // only their timing matters.
  uint32_t* words = reinterpret_cast<uint32_t*>(smem + (base - smem_addr));
  for (int i = tid; i < 10240; i += kThreads) words[i] = 0x3C003C00u ^ (i * 2654435761u & 0x00FF00FFu);
  __syncthreads();
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; i++) acc[i] = 0.f;
  uint32_t afa[4][4], afb[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) afa[i][j] = afb[i][j] = 0x3C003C00u + lane + i + j;
  const uint32_t wd = opaque_u32(base + 4096u + uint32_t((tid >> 5) * 512 + g * 32 + t * 4));
  const uint32_t x_lo = wg_desc_lo(base);
  auto decode = [&](int kt, uint32_t (&af)[4][4]) {
    const uint32_t st = uint32_t((kt & 7) * 4096);
#pragma unroll
    for (int b = 0; b < 2; b++) {
      const uint32_t v0 = lds_u32(wd + st + 16 * b), v1 = lds_u32(wd + st + 16 * b + 256);
      const uint32_t f0 = mx_factor_fast((v0 >> 24) & 0x3F), f1 = mx_factor_fast((v1 >> 24) & 0x3F);
#pragma unroll
      for (int h = 0; h < 2; h++) {
        af[2 * b + h][0] = decode_slot(v0, 2 * h, f0);
        af[2 * b + h][1] = decode_slot(v1, 2 * h, f1);
        // MODE 5: the decode alone with slot 3 as cheap as slots 1 and 2 (one shift and the mask; wrong bits, only
        // the cost of a layout whose every slot is one operation or two).
        constexpr uint32_t M = hm::mxfp4::kPairMask;
        af[2 * b + h][2] = MODE == 5 && h == 1 ? bf16x2_mul((v0 >> 3) & M, f0) : decode_slot(v0, 2 * h + 1, f0);
        af[2 * b + h][3] = MODE == 5 && h == 1 ? bf16x2_mul((v1 >> 3) & M, f1) : decode_slot(v1, 2 * h + 1, f1);
      }
    }
  };
  const uint32_t a_lo = wg_desc_lo(base + 16384u + uint32_t((tid >> 7) * 8192));  // this warpgroup's 64 x 64 A
  // Modes 2, 4 and 5 fold the decoded registers into `sink` (8 more LOP3 a k-tile): ptxas drops an unused result.
  uint32_t sink = 0;
  auto fold = [&](const uint32_t (&af)[4][4]) {
    if constexpr (MODE == 2 || MODE >= 4)
#pragma unroll
      for (int i = 0; i < 4; i++) sink ^= af[i][0] ^ af[i][1] ^ af[i][2] ^ af[i][3];
  };
  auto mma = [&](int kt, const uint32_t (&af)[4][4]) {
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      const uint64_t desc_b = wg_desc_from_lo(x_lo + uint32_t(2 * kk + 64 * (kt & 1)));
      if constexpr (MODE >= 2)
        wg_mma_ss_k16(acc, wg_desc_from_lo(a_lo + uint32_t(2 * kk)), desc_b);
      else
        wg_mma_k16(acc, af[kk], desc_b);
    }
    wg_commit();
  };
  for (int r = 0; r < reps; r++)
    for (int kt = 0; kt < kKt; kt += 2) {
      if constexpr (MODE >= 4) {
        decode(kt, afa);
        fold(afa);
        decode(kt + 1, afb);
        fold(afb);
      } else {
        if constexpr (MODE == 1 || MODE == 2) decode(kt, afa);
        fold(afa);
        mma(kt, afa);
        wg_wait<1>();
        wg_keep(afb);
        if constexpr (MODE == 1 || MODE == 2) decode(kt + 1, afb);
        fold(afb);
        mma(kt + 1, afb);
        wg_wait<1>();
        wg_keep(afa);
      }
    }
  wg_wait<0>();
  wg_fence_acc(acc);
  float s = float(sink & 1u);
#pragma unroll
  for (int i = 0; i < NACC; i++) s += acc[i];
  if (s == 12345.f) out[tid] = s;
#endif
}

template <int NACC, int MODE>
void run(const char* name, int per_sm, int sms, float* out) {
  // Shared memory per block sized so that per_sm blocks fit an SM.
  const size_t smem = per_sm == 1 ? 150 * 1024 : per_sm == 2 ? 100 * 1024 : 70 * 1024;
  cudaFuncSetAttribute(probe<NACC, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  const int blocks = sms * per_sm, reps = 4;
  probe<NACC, MODE><<<blocks, kThreads, smem>>>(out, 1);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a);
  probe<NACC, MODE><<<blocks, kThreads, smem>>>(out, reps);
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, a, b);
  const cudaError_t e = cudaGetLastError();
  const double kt_ns = ms * 1e6 / (reps * kKt);  // one k-tile of every block in flight
  const double flops = 2.0 * 128 * (2 * NACC) * 64 * double(kKt) * reps * blocks;
  std::printf("%-22s N=%3d blocks/SM %d: %7.1f ns a k-tile (4 k16 MMAs a warpgroup), %6.1f TFLOP/s%s%s\n", name,
              2 * NACC, per_sm, kt_ns, MODE >= 4 ? 0.0 : flops / (ms * 1e-3) / 1e12, e ? " error: " : "",
              e ? cudaGetErrorString(e) : "");
}

}  // namespace wgmma_probe

int main() {
  using namespace wgmma_probe;
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  float* out = nullptr;
  cudaMalloc(&out, kThreads * 4);
  for (int per_sm = 1; per_sm <= 3; per_sm++) {
    run<4, 0>("mma only", per_sm, sms, out);
    run<8, 0>("mma only", per_sm, sms, out);
    run<16, 0>("mma only", per_sm, sms, out);
    run<32, 0>("mma only", per_sm, sms, out);
    run<8, 4>("decode only", per_sm, sms, out);
    run<8, 5>("decode only, cheap slot 3", per_sm, sms, out);
    run<4, 1>("decode + mma", per_sm, sms, out);
    run<8, 1>("decode + mma", per_sm, sms, out);
    run<16, 1>("decode + mma", per_sm, sms, out);
    run<32, 1>("decode + mma", per_sm, sms, out);
    run<8, 3>("ss mma only", per_sm, sms, out);
    run<8, 2>("decode beside ss mma", per_sm, sms, out);
    run<32, 3>("ss mma only", per_sm, sms, out);
    run<32, 2>("decode beside ss mma", per_sm, sms, out);
  }
  return 0;
}
