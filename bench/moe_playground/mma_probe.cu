// Tensor-core probe for the MXFP4 expert kernels' design: mma.sync throughput of e4m3 m16n8k32 against bf16
// m16n8k16 on one GPU, and how exactly one e4m3 MMA accumulates (against an fp64 sum of the same products).
// Build and run (not part of the CMake build; one file, no dependencies):
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o mma_probe bench/moe_playground/mma_probe.cu && ./mma_probe
// Measured on the H200 (2026-12-01, driver 580.159.04, CUDA 13.0), 528 blocks, 4 independent accumulators a warp:
//   bf16 m16n8k16: 619 / 637 / 641 TFLOP/s at 4 / 8 / 16 warps a block
//   e4m3 m16n8k32: 1227 / 1248 / 1270 TFLOP/s (twice bf16: fp8 MMAs are not emulated on sm_90)
//   one e4m3 MMA, |error| / sum of |products| at most 2.2e-7 (2^-22) over 200 random tiles each of: any e4m3
//   values, one 448-sized term per column, E2M1-sized weights, and a +-1000 fp32 accumulator input; so the
//   accumulation inside one k32 step is fp32-grade, not the ~2^-13 reported for fp8 wgmma accumulators.
#include <cstdio>
#include <cstdint>
#include <cmath>
#include <vector>
#include <random>
#include <cuda_fp8.h>
#include <cuda_bf16.h>

__device__ __forceinline__ void mma_e4m3(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
template <bool FP8>
__global__ void tput(float* out, int iters, uint32_t seed) {
  uint32_t a[4], b[2];
  for (int i = 0; i < 4; i++) a[i] = seed * (threadIdx.x + i) | 0x30303030u;
  b[0] = seed ^ threadIdx.x; b[1] = seed + threadIdx.x;
  float acc[4][4] = {};
  for (int it = 0; it < iters; it++) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
      if (FP8) mma_e4m3(acc[j], a, b, acc[j]); else mma_bf16(acc[j], a, b, acc[j]);
    }
  }
  float s = 0; for (int j = 0; j < 4; j++) for (int i = 0; i < 4; i++) s += acc[j][i];
  if (s == 1.2345f) out[0] = s;
}
// one mma with given fragments: A 16x32 e4m3 row-major bytes, B 32x8 (col-major: B[n][k]) bytes; D 16x8
__global__ void one(const uint8_t* A, const uint8_t* B, float* D, const float* Cin) {
  int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  uint32_t a[4], b[2]; float c[4], d[4];
  auto ld4 = [](const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; };
  a[0] = ld4(A + g * 32 + t * 4); a[1] = ld4(A + (g + 8) * 32 + t * 4);
  a[2] = ld4(A + g * 32 + 16 + t * 4); a[3] = ld4(A + (g + 8) * 32 + 16 + t * 4);
  b[0] = ld4(B + g * 32 + t * 4); b[1] = ld4(B + g * 32 + 16 + t * 4);
  c[0] = Cin[g * 8 + 2 * t]; c[1] = Cin[g * 8 + 2 * t + 1]; c[2] = Cin[(g + 8) * 8 + 2 * t]; c[3] = Cin[(g + 8) * 8 + 2 * t + 1];
  mma_e4m3(d, a, b, c);
  D[g * 8 + 2 * t] = d[0]; D[g * 8 + 2 * t + 1] = d[1]; D[(g + 8) * 8 + 2 * t] = d[2]; D[(g + 8) * 8 + 2 * t + 1] = d[3];
}
static float e4m3f(uint8_t v) { __nv_fp8_e4m3 x; x.__x = v; return float(x); }
int main() {
  float* out; cudaMalloc(&out, 4);
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  for (int fp8 = 0; fp8 < 2; fp8++) for (int wpb : {4, 8, 16}) {
    int iters = 4096, blocks = 132 * 4;
    for (int rep = 0; rep < 2; rep++) {
      cudaEventRecord(e0);
      if (fp8) tput<true><<<blocks, 32 * wpb>>>(out, iters, 7); else tput<false><<<blocks, 32 * wpb>>>(out, iters, 7);
      cudaEventRecord(e1); cudaEventSynchronize(e1);
      float ms; cudaEventElapsedTime(&ms, e0, e1);
      double flop = double(blocks) * wpb * iters * 4 * (fp8 ? 16.0 * 8 * 32 * 2 : 16.0 * 8 * 16 * 2);
      if (rep) printf("%s warps/block %2d: %.1f TFLOP/s (%.3f ms)\n", fp8 ? "e4m3 m16n8k32" : "bf16 m16n8k16", wpb, flop / ms / 1e9, ms);
    }
  }
  // precision: random e4m3 A,B; compare with exact double
  std::mt19937 rng(1);
  uint8_t *dA, *dB; float *dD, *dC; cudaMalloc(&dA, 512); cudaMalloc(&dB, 256); cudaMalloc(&dD, 512); cudaMalloc(&dC, 512);
  for (int mode = 0; mode < 4; mode++) {
    double worst = 0, worst_abs_rel = 0; int trials = 200;
    for (int tr = 0; tr < trials; tr++) {
      std::vector<uint8_t> A(512), B(256); std::vector<float> C(128, 0.f), D(128);
      for (auto& v : A) { do v = rng() & 0xff; while ((v & 0x7f) == 0x7f); }
      for (auto& v : B) { do v = rng() & 0xff; while ((v & 0x7f) == 0x7f); }
      if (mode == 1) for (int i = 0; i < 256; i += 32) B[i] = 0x7e;  // one huge term per column
      if (mode == 2) for (auto& v : A) v = (v & 0x80) | (0x04 + (rng() % 28));  // E2M1-like small codes
      if (mode == 3) for (int i = 0; i < 128; i++) C[i] = 1000.f * ((rng() % 2) ? 1 : -1);
      cudaMemcpy(dA, A.data(), 512, cudaMemcpyHostToDevice); cudaMemcpy(dB, B.data(), 256, cudaMemcpyHostToDevice);
      cudaMemcpy(dC, C.data(), 512, cudaMemcpyHostToDevice);
      one<<<1, 32>>>(dA, dB, dD, dC); cudaMemcpy(D.data(), dD, 512, cudaMemcpyDeviceToHost);
      for (int m = 0; m < 16; m++) for (int n = 0; n < 8; n++) {
        double s = C[m * 8 + n], sa = std::fabs(C[m * 8 + n]);
        for (int k = 0; k < 32; k++) { double p = double(e4m3f(A[m * 32 + k])) * e4m3f(B[n * 32 + k]); s += p; sa += std::fabs(p); }
        double err = std::fabs(D[m * 8 + n] - s);
        worst = std::max(worst, err / sa);
        if (std::fabs(s) > 1e-3 * sa) worst_abs_rel = std::max(worst_abs_rel, err / std::fabs(s));
      }
    }
    printf("precision mode %d: max |err| / sum|terms| = %.3e (2^%.1f); max rel to |sum| = %.3e\n", mode, worst, std::log2(worst + 1e-30), worst_abs_rel);
  }
  return 0;
}
