// Where the batch-1 expert time goes (issue 12): gate_up's shape at one token (4 experts x 5760 rows x 2880
// columns of MXFP4, 35.2 MB) streamed by one kernel in pieces, each stage left out in turn (H200.md: "time
// variants that leave one stage out"). The warp structure is the register decode path's (moe_impl.cuh: a warp
// owns a 16-row tile, lane (g, t) takes MXFP4 block 4c + t of rows g and g + 8 per 128-column chunk c, KS warps
// split K, D chunks prefetched while D are multiplied). Modes:
//   flat     every thread reads 16-byte pieces of the 4 experts' blocks, grid-stride: the read ceiling
//   load     the tile structure's loads only (words XOR-folded so they stay live)
//   math     decode + mma on words that never came from memory (the compute ceiling)
//   full     both; B fragments from global memory (perm8 per chunk, as the decode kernels do)
//   full-sB  both; B fragments pre-permuted in shared memory (4 shared loads per chunk, no PRMT)
// Each is timed over 32 rotating expert sets (E = 128: no set is in L2 when it is read). No routing, no
// epilogue: the partial sums go to a sink. Build: cmake --build build-gpu --target hm_stream_probe.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "lab_common.h"
#include "moe_impl.cuh"

using namespace hm::cuda;
using namespace hm::cuda::moe;


constexpr int kE = 128, kRows = 5760, kK = 2880, kKb = kK / 32, kChunks = (kK + 127) / 128, kTiles = kRows / 16;
constexpr int kNu = 4;  // experts a token selects

enum Mode { kFlat, kLoad, kMath, kFull, kFullSB };

struct Args {
  const uint8_t* blocks;  // [E, rows, kb, 16]
  const uint8_t* scales;  // [E, rows, kb]
  const uint16_t* x;      // [K] one token
  int e0;                 // first expert of the set (experts e0 .. e0 + 3)
  float4* sink;
};

__global__ void flat_read(Args a) {
  const size_t per = size_t(kRows) * kKb;  // 16-byte pieces per expert
  const uint32_t f = xor_stream(reinterpret_cast<const uint4*>(a.blocks) + size_t(a.e0) * per, per * kNu);
  if (f == 0x12345678u) a.sink[0] = make_float4(1.f, 0.f, 0.f, 0.f);
}

template <int MODE, int KS, int D, int TPB>
__global__ void __launch_bounds__(TPB* KS * 32) tile_stream(Args a) {
  __shared__ uint4 xs[kChunks * 4 * 4];  // full-sB: [chunk][q][t] the permuted B fragments of token 0
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int tile = blockIdx.x * TPB + warp / KS, kp = warp % KS;
  if (MODE == kFullSB) {
    for (int i = threadIdx.x; i < kChunks * 16; i += blockDim.x) {
      const int c = i >> 4, q = (i >> 2) & 3, tt = i & 3, blk = c * 4 + tt;
      uint32_t p[4] = {0, 0, 0, 0};
      if (blk < kKb) perm8(__ldg(reinterpret_cast<const uint4*>(a.x + blk * 32) + q), p);
      xs[i] = make_uint4(p[0], p[1], p[2], p[3]);
    }
    __syncthreads();
  }
  if (tile >= kNu * kTiles) return;
  const int u = tile / kTiles, r0 = (tile % kTiles) * 16;
  const size_t row_a = size_t(a.e0 + u) * kRows + r0 + g, row_b = row_a + 8;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  uint32_t fold = 0;
  constexpr int kMine = (kChunks + KS - 1) / KS;  // chunks of this warp (the last may be empty)
  RowChunk<WFmt::kMxfp4> ca[D], cb[D];
  auto load = [&](int i0, RowChunk<WFmt::kMxfp4>* xa, RowChunk<WFmt::kMxfp4>* xb) {
#pragma unroll
    for (int d = 0; d < D; d++) {
      const int c = kp + KS * (i0 + d), blk = c * 4 + t;
      const bool ok = c < kChunks && blk < kKb;
      if (MODE == kMath) {
        xa[d].q = make_uint4(lane * 0x9E3779B9u ^ c, c * 0x85EBCA6Bu, lane ^ 0x5bd1e995u, c + lane);
        xb[d].q = make_uint4(xa[d].q.y, xa[d].q.x, xa[d].q.w, xa[d].q.z);
        xa[d].s = 120u + (c & 3);
        xb[d].s = 121u;
      } else {
        WMat W{a.blocks, a.scales, nullptr, kRows, kK};
        xa[d].load(W, row_a, blk, ok);
        xb[d].load(W, row_b, blk, ok);
      }
    }
  };
  load(0, ca, cb);
  for (int i0 = 0; i0 < kMine; i0 += D) {
    RowChunk<WFmt::kMxfp4> na[D], nb[D];
    load(i0 + D, na, nb);
#pragma unroll
    for (int d = 0; d < D; d++) {
      const int c = kp + KS * (i0 + d);
      if (i0 + d >= kMine || c >= kChunks) break;
      if (MODE == kLoad) {
        fold ^= ca[d].q.x ^ ca[d].q.y ^ ca[d].q.z ^ ca[d].q.w ^ cb[d].q.x ^ cb[d].q.y ^ cb[d].q.z ^ cb[d].q.w ^
                ca[d].s ^ cb[d].s;
        continue;
      }
      uint32_t px[16];
      if (MODE == kFullSB) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
          const uint4 v = g == 0 ? xs[(c * 4 + q) * 4 + t] : make_uint4(0, 0, 0, 0);
          px[4 * q] = v.x, px[4 * q + 1] = v.y, px[4 * q + 2] = v.z, px[4 * q + 3] = v.w;
        }
      } else {
        const int blk = c * 4 + t;
        const uint4* src = reinterpret_cast<const uint4*>(a.x + blk * 32);
#pragma unroll
        for (int q = 0; q < 4; q++)
          perm8(g == 0 && blk < kKb ? __ldg(src + q) : make_uint4(0, 0, 0, 0), px + 4 * q);
      }
      uint32_t pa[16], pb[16];
      ca[d].decode(pa);
      cb[d].decode(pb);
      mma_chunk(acc, pa, pb, px);
    }
#pragma unroll
    for (int d = 0; d < D; d++) {
      ca[d] = na[d];
      cb[d] = nb[d];
    }
  }
  if (MODE == kLoad) acc[0] = __uint_as_float(fold);
  a.sink[size_t(tile * KS + kp) * 32 + lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
}



const double kBytes = double(kNu) * kRows * (kK / 2 + kKb);  // blocks + scales read

template <int MODE, int KS, int D, int TPB>
void tile_variant(const char* mode, Args a) {
  const int blocks = (kNu * kTiles + TPB - 1) / TPB;
  auto k = tile_stream<MODE, KS, D, TPB>;
  int occ = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k, TPB * KS * 32, 0));
  const float us = time_us([&](int i) {
    Args b = a;
    b.e0 = (i % 32) * kNu;
    k<<<blocks, TPB * KS * 32>>>(b);
  }, 64);
  std::printf("| %-8s | KS %d D %d TPB %d | %4d blocks x %3d thr, %2d/SM | %6.2f us | %5.0f GB/s |\n", mode, KS, D,
              TPB, blocks, TPB * KS * 32, occ, us, MODE == kMath ? 0.0 : kBytes / us * 1e-3);
}

template <int KS, int D, int TPB>
void all_modes(Args a) {
  tile_variant<kLoad, KS, D, TPB>("load", a);
  tile_variant<kMath, KS, D, TPB>("math", a);
  tile_variant<kFull, KS, D, TPB>("full", a);
  tile_variant<kFullSB, KS, D, TPB>("full-sB", a);
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs; gate_up at one token: %d experts x %d rows x %d columns, %.1f MB\n", prop.name,
              prop.multiProcessorCount, kNu, kRows, kK, kBytes * 1e-6);
  const size_t nb = size_t(kE) * kRows * kK / 2, ns = size_t(kE) * kRows * kKb;
  uint8_t *blocks, *scales;
  uint16_t* x;
  float4* sink;
  CK(cudaMalloc(&blocks, nb));
  CK(cudaMalloc(&scales, ns));
  CK(cudaMalloc(&x, kK * 2));
  CK(cudaMalloc(&sink, size_t(kNu) * kTiles * 8 * 32 * sizeof(float4)));
  fill_bytes<<<1024, 256>>>(blocks, nb, 1, 0, 0);
  fill_bytes<<<1024, 256>>>(scales, ns, 2, 120, 3);
  fill_bytes<<<16, 256>>>(reinterpret_cast<uint8_t*>(x), kK * 2, 3, 0x30, 16);  // bf16 bytes: small positive/negative
  CK(cudaDeviceSynchronize());
  Args a{blocks, scales, x, 0, sink};
  std::printf("| mode | config | grid | time | rate |\n|---|---|---|---|---|\n");
  for (int threads : {256, 512, 1024})
    for (int per_sm : {1, 2, 4}) {
      const int grid = prop.multiProcessorCount * per_sm;
      const float us = time_us([&](int i) {
        Args b = a;
        b.e0 = (i % 32) * kNu;
        flat_read<<<grid, threads>>>(b);
      }, 64);
      std::printf("| flat | %d thr x %d/SM | %d blocks | %6.2f us | %5.0f GB/s |\n", threads, per_sm, grid, us,
                  double(kNu) * kRows * kK / 2 / us * 1e-3);
    }
  all_modes<1, 2, 4>(a);
  all_modes<1, 4, 4>(a);
  all_modes<2, 2, 4>(a);
  all_modes<2, 4, 2>(a);
  all_modes<4, 2, 2>(a);
  all_modes<4, 4, 1>(a);
  all_modes<8, 2, 1>(a);
  all_modes<8, 3, 1>(a);
  return 0;
}
