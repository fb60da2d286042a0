// Dense bf16 projections: y (+)= x W^T + b.
//   staged_gemv<NT, S, kNorm>: the single-token decode default for N > 256 (q/k/v, o): warp per output row, each
//                  lane's first S 16-byte chunks copied to shared memory (cp.async) BEFORE pdl_wait, so the weights
//                  stream while the previous kernel drains; the rest through registers. The block builds its fp32
//                  input once in shared memory; kNorm fuses the RMSNorm before the projection (the block's sums of
//                  squares scale the dots; block 0 also writes the bf16 normed rows for the experts), saving a
//                  launch per norm.
//   bf16_gemv<NT, U>, rmsnorm_bf16_gemv<NT>: the unstaged decode kernels (weights loaded after pdl_wait), the
//                  default for batches and lm_head: warp per row with U chunks per lane in flight.
//   rowblock_gemv<NT, kNorm>: few rows (N <= 256, the router): one block per row.
//   bf16_gemm_mma: 64 x 128 x 32 block tiles, 4 warps of 32 x 64, mma.sync m16n8k16 bf16 with fp32 accumulators,
//                  3-stage cp.async pipeline, rows padded by 16 bytes so ldmatrix is bank-conflict free. With x_lo
//                  (the bf16 residual of an fp32 input) a second MMA per tile adds x_lo W^T: fp32-grade inputs at
//                  twice the tensor work (used for the q/k/v and router projections, where routing near-ties
//                  made bf16 inputs flip experts against the fp32 oracle).
//   dense_wgmma:   the same GEMM on wgmma (dense_wgmma.cuh), the tensor-core path on sm_90 when K % 64 == 0: the
//                  same bits, tiles from 64 weight rows x 16 tokens (batched decode) to 128 x 128 (prefill).

#include <algorithm>
#include <atomic>

#include "common.cuh"
#include "dense.h"
#include "dense_tma.cuh"  // (includes dense_wgmma.cuh)

namespace hm::cuda {
namespace {

template <int NT, int U>
__global__ void __launch_bounds__(256) bf16_gemv(const uint16_t* __restrict__ x, const uint16_t* __restrict__ x_lo,
                                                 int ldx,
                                                 const uint16_t* __restrict__ W, const uint16_t* __restrict__ b,
                                                 float* __restrict__ y, int ldy, int N, int K, bool accumulate,
                                                 bool prefetch) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const bool active = row < N;
  const char* wrow = reinterpret_cast<const char*>(W + size_t(active ? row : 0) * K);
  if (active && prefetch)
    for (int off = lane * 128; off < K * 2; off += 32 * 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(wrow + off));
  pdl_wait();
  pdl_trigger();
  if (!active) return;
  const uint4* w4 = reinterpret_cast<const uint4*>(wrow);
  const int nchunks = K / 8;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.f;
  for (int c0 = lane; c0 < nchunks; c0 += 32 * U) {
    uint4 wv[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + u * 32;
      wv[u] = c < nchunks ? ld_stream16(w4 + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + u * 32;
      if (c >= nchunks) break;
      float wf[8];
      unpack8(wv[u], wf);
#pragma unroll
      for (int t = 0; t < NT; t++) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + size_t(t) * ldx) + c);
        float xf[8];
        unpack8(xv, xf);
        if (x_lo) {
          float lf[8];
          unpack8(__ldg(reinterpret_cast<const uint4*>(x_lo + size_t(t) * ldx) + c), lf);
#pragma unroll
          for (int i = 0; i < 8; i++) xf[i] += lf[i];
        }
#pragma unroll
        for (int i = 0; i < 8; i++) acc[t] = fmaf(wf[i], xf[i], acc[t]);
      }
    }
  }
  const float bias = b ? bf2f_bits(b[row]) : 0.f;
#pragma unroll
  for (int t = 0; t < NT; t++) {
    const float s = warp_sum(acc[t]);
    if (lane == t % 32) {
      float* dst = y + size_t(t) * ldy + row;
      *dst = (accumulate ? *dst : 0.f) + s + bias;
    }
  }
}

// The decode path with the RMSNorm before it fused in. Every warp covers all K of its row, so it accumulates the
// token rows' sums of squares in the same pass as the dot products and scales the dot by rsqrt(mean + eps) at the
// end: sum_k W[k] (w[k] x[k]) r = (w * x * r) . W in fp32, with no serial norm pass (a warp walking K floats from L2
// before any W chunk is consumed) and no block barrier in front of the weight stream.
template <int NT, int U>
__global__ void __launch_bounds__(256) rmsnorm_bf16_gemv(const float* __restrict__ x, const uint16_t* __restrict__ nw,
                                                         float eps, uint16_t* __restrict__ norm_out,
                                                         const uint16_t* __restrict__ W, const uint16_t* __restrict__ b,
                                                         float* __restrict__ y, int ldy, int N, int K,
                                                         bool accumulate, bool prefetch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * (blockDim.x >> 5) + warp;
  const bool active = row < N;
  // An inactive warp (past N in the last block) walks row 0 for its sums of squares and writes no logits: block 0
  // needs every warp's norm scales when it writes norm_out.
  const char* wrow = reinterpret_cast<const char*>(W + size_t(active ? row : 0) * K);
  if (active && prefetch)
    for (int off = lane * 128; off < K * 2; off += 32 * 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(wrow + off));
  pdl_wait();
  pdl_trigger();
  const uint4* w4 = reinterpret_cast<const uint4*>(wrow);
  const int nchunks = K / 8;
  float acc[NT], ss[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = ss[t] = 0.f;
  for (int c0 = lane; c0 < nchunks; c0 += 32 * U) {
    uint4 wv[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + u * 32;
      wv[u] = c < nchunks ? ld_stream16(w4 + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + u * 32;
      if (c >= nchunks) break;
      float wf[8], nf[8];
      unpack8(wv[u], wf);
      unpack8(__ldg(reinterpret_cast<const uint4*>(nw) + c), nf);
#pragma unroll
      for (int t = 0; t < NT; t++) {
        const float4* xp = reinterpret_cast<const float4*>(x + size_t(t) * K) + 2 * c;
        const float4 a = __ldg(xp), bq = __ldg(xp + 1);
        const float xs[8] = {a.x, a.y, a.z, a.w, bq.x, bq.y, bq.z, bq.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
          acc[t] = fmaf(wf[i], nf[i] * xs[i], acc[t]);
          ss[t] = fmaf(xs[i], xs[i], ss[t]);
        }
      }
    }
  }
  float r[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) r[t] = rsqrtf(warp_sum(ss[t]) / K + eps);
  if (norm_out && blockIdx.x == 0)  // every warp has the same r (same lanes, same order)
    for (int e = threadIdx.x; e < NT * K; e += blockDim.x) {
      float rt = r[0];
#pragma unroll
      for (int t = 1; t < NT; t++)
        if (e / K == t) rt = r[t];
      norm_out[e] = __bfloat16_as_ushort(__float2bfloat16(bf2f_bits(nw[e % K]) * (x[e] * rt)));
    }
  if (!active) return;
  const float bias = b ? bf2f_bits(b[row]) : 0.f;
#pragma unroll
  for (int t = 0; t < NT; t++) {
    const float s = warp_sum(acc[t]) * r[t];
    if (lane == t % 32) {
      float* dst = y + size_t(t) * ldy + row;
      *dst = (accumulate ? *dst : 0.f) + s + bias;
    }
  }
}

// Projections with few output rows (the router: E = 32 or 128 rows of K = 2880). A warp per row would give N/8
// blocks whose lanes each walk K/256 chunks in series (latency-bound: ~4 blocks for the 20b router); here one
// 256-thread block per row splits the row's K chunks over its threads (one or two each at K = 2880) and reduces
// across warps in shared memory in a fixed order. kNorm: the fused RMSNorm as above (sums of squares in the same
// pass, every block writes a slice of norm_out once its scales are known).
constexpr int kRowBlockMaxN = 256;
template <int NT, bool kNorm>
__global__ void __launch_bounds__(256) rowblock_gemv(const uint16_t* __restrict__ x, const uint16_t* __restrict__ x_lo,
                                                     int ldx, const float* __restrict__ nx,
                                                     const uint16_t* __restrict__ nw, float eps,
                                                     uint16_t* __restrict__ norm_out, const uint16_t* __restrict__ W,
                                                     const uint16_t* __restrict__ b, float* __restrict__ y, int ldy,
                                                     int N, int K, bool accumulate) {
  __shared__ float red[8][2 * NT];
  __shared__ float r_s[NT];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int row = blockIdx.x;
  const char* wrow = reinterpret_cast<const char*>(W + size_t(row) * K);
  for (int off = tid * 128; off < K * 2; off += 256 * 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(wrow + off));
  pdl_wait();
  pdl_trigger();
  const uint4* w4 = reinterpret_cast<const uint4*>(wrow);
  const int nchunks = K / 8;
  float acc[NT], ss[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = ss[t] = 0.f;
  for (int c = tid; c < nchunks; c += 256) {
    float wf[8];
    unpack8(ld_stream16(w4 + c), wf);
    if (kNorm) {
      float nf[8];
      unpack8(__ldg(reinterpret_cast<const uint4*>(nw) + c), nf);
#pragma unroll
      for (int t = 0; t < NT; t++) {
        const float4* xp = reinterpret_cast<const float4*>(nx + size_t(t) * K) + 2 * c;
        const float4 a = __ldg(xp), bq = __ldg(xp + 1);
        const float xs[8] = {a.x, a.y, a.z, a.w, bq.x, bq.y, bq.z, bq.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
          acc[t] = fmaf(wf[i], nf[i] * xs[i], acc[t]);
          ss[t] = fmaf(xs[i], xs[i], ss[t]);
        }
      }
    } else {
#pragma unroll
      for (int t = 0; t < NT; t++) {
        float xf[8];
        unpack8(__ldg(reinterpret_cast<const uint4*>(x + size_t(t) * ldx) + c), xf);
        if (x_lo) {
          float lf[8];
          unpack8(__ldg(reinterpret_cast<const uint4*>(x_lo + size_t(t) * ldx) + c), lf);
#pragma unroll
          for (int i = 0; i < 8; i++) xf[i] += lf[i];
        }
#pragma unroll
        for (int i = 0; i < 8; i++) acc[t] = fmaf(wf[i], xf[i], acc[t]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
    const float a = warp_sum(acc[t]);
    const float q = kNorm ? warp_sum(ss[t]) : 0.f;
    if (lane == 0) {
      red[warp][t] = a;
      red[warp][NT + t] = q;
    }
  }
  __syncthreads();
  if (tid < NT) {
    float a = 0.f, q = 0.f;
#pragma unroll
    for (int w = 0; w < 8; w++) {
      a += red[w][tid];
      q += red[w][NT + tid];
    }
    if (kNorm) {
      const float r = rsqrtf(q / K + eps);
      r_s[tid] = r;
      a *= r;
    }
    float* dst = y + size_t(tid) * ldy + row;
    *dst = (accumulate ? *dst : 0.f) + a + (b ? bf2f_bits(b[row]) : 0.f);
  }
  if (kNorm && norm_out) {
    __syncthreads();
    for (int e = row * 256 + tid; e < NT * K; e += N * 256)
      norm_out[e] = __bfloat16_as_ushort(__float2bfloat16(bf2f_bits(nw[e % K]) * (nx[e] * r_s[e / K])));
  }
}

// The decode GEMV with its weights in flight before pdl_wait (the PDL contract allows weight reads there): warp
// per row as bf16_gemv / rmsnorm_bf16_gemv, but each lane first issues cp.async copies of its first S chunks
// (c = lane + 32 j, j < S) into shared memory, so the previous kernel's drain overlaps this one's stream; shared
// memory holds them at no register cost (the register-held 8 / 12 chunks lost occupancy, docs/performance.md).
// The chunks past 32 S stream through registers U at a time, the first batch also issued before the wait (q/k/v at
// S = 8: 8 + 4 chunks per lane, the whole 2880-wide row in flight before pdl_wait).
// After the wait the block builds its input once in shared memory as fp32 (x, x + x_lo, or nw * x with kNorm),
// each thread a few chunks, so the row loop has W as its only global stream and reads the input from shared
// memory (the previous kernel's 8 warps each re-read x and nw from L1 per chunk and waited on them: 21 of 27
// cycles per instruction, ncu). Each lane consumes its chunks in ascending order as the unstaged kernels do, and
// the fp32 input values are the same, so the dots have the same bits; with kNorm the sums of squares now run once
// per block in a fixed order of their own (each thread over its chunks c = tid + 256 i, then the warp's
// butterfly, then warps 0..7 in order), so the norm scale may differ from the unstaged kernel's in the last bit.
template <int NT, int S>
constexpr int staged_min_blocks() {  // q/k/v (S = 8) at 5 blocks per SM, o (S = 12) at 3: the grid resident at once
  return NT > 1 ? 1 : S <= 8 ? 5 : 3;
}
template <int NT, int S, bool kNorm>
__global__ void __launch_bounds__(256, (staged_min_blocks<NT, S>()))
    staged_gemv(const uint16_t* __restrict__ x, const uint16_t* __restrict__ x_lo, int ldx,
                const float* __restrict__ nx, const uint16_t* __restrict__ nw, float eps,
                uint16_t* __restrict__ norm_out, const uint16_t* __restrict__ W, const uint16_t* __restrict__ b,
                float* __restrict__ y, int ldy, int N, int K, bool accumulate) {
  constexpr int U = 4;
  extern __shared__ uint4 smem[];  // [warp][S][32 lanes] W chunks (a lane reads back only what it copied), then
                                   // the input: float4 [NT][2 halves of a chunk][nchunks]
  __shared__ float red[NT][8];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int row = blockIdx.x * 8 + warp;
  const bool active = row < N;
  const uint4* w4 = reinterpret_cast<const uint4*>(W + size_t(active ? row : 0) * K);
  const int nchunks = K / 8;
  uint4* mine = smem + warp * S * 32 + lane;
  float4* xs = reinterpret_cast<float4*>(smem + 8 * S * 32);
  if (active) {
#pragma unroll
    for (int j = 0; j < S; j++)
      if (j * 32 + lane < nchunks) cp_async16_zfill(mine + j * 32, w4 + j * 32 + lane, true);
  }
  cp_async_commit();
  int c0 = 32 * S + lane;
  uint4 wv[U];
#pragma unroll
  for (int u = 0; u < U; u++)
    wv[u] = active && c0 + u * 32 < nchunks ? ld_stream16(w4 + c0 + u * 32) : make_uint4(0, 0, 0, 0);
  pdl_wait();
  pdl_trigger();

  float ss[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) ss[t] = 0.f;
#pragma unroll 2
  for (int c = tid; c < nchunks; c += 256) {
    float nf[8];
    if (kNorm) unpack8(__ldg(reinterpret_cast<const uint4*>(nw) + c), nf);
#pragma unroll
    for (int t = 0; t < NT; t++) {
      float v[8];
      if (kNorm) {
        const float4* xp = reinterpret_cast<const float4*>(nx + size_t(t) * K) + 2 * c;
        const float4 a = __ldg(xp), bq = __ldg(xp + 1);
        const float xv[8] = {a.x, a.y, a.z, a.w, bq.x, bq.y, bq.z, bq.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
          ss[t] = fmaf(xv[i], xv[i], ss[t]);
          v[i] = nf[i] * xv[i];
        }
      } else {
        unpack8(__ldg(reinterpret_cast<const uint4*>(x + size_t(t) * ldx) + c), v);
        if (x_lo) {
          float lf[8];
          unpack8(__ldg(reinterpret_cast<const uint4*>(x_lo + size_t(t) * ldx) + c), lf);
#pragma unroll
          for (int i = 0; i < 8; i++) v[i] += lf[i];
        }
      }
      xs[(2 * t) * nchunks + c] = make_float4(v[0], v[1], v[2], v[3]);
      xs[(2 * t + 1) * nchunks + c] = make_float4(v[4], v[5], v[6], v[7]);
    }
  }
  if (kNorm) {
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const float q = warp_sum(ss[t]);
      if (lane == 0) red[t][warp] = q;
    }
  }
  __syncthreads();
  float r[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) {
    float q = 0.f;
    if (kNorm)
#pragma unroll
      for (int w = 0; w < 8; w++) q += red[t][w];
    r[t] = kNorm ? rsqrtf(q / K + eps) : 1.f;
  }
  if (kNorm && norm_out && blockIdx.x == 0)
    for (int e = tid; e < NT * K; e += blockDim.x) {
      float rt = r[0];
#pragma unroll
      for (int t = 1; t < NT; t++)
        if (e / K == t) rt = r[t];
      norm_out[e] = __bfloat16_as_ushort(__float2bfloat16(bf2f_bits(nw[e % K]) * (nx[e] * rt)));
    }
  if (!active) return;

  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.f;
  auto dot = [&](const uint4& wq, int c) {
    float wf[8];
    unpack8(wq, wf);
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const float4 a = xs[(2 * t) * nchunks + c], bq = xs[(2 * t + 1) * nchunks + c];
      const float xv[8] = {a.x, a.y, a.z, a.w, bq.x, bq.y, bq.z, bq.w};
#pragma unroll
      for (int i = 0; i < 8; i++) acc[t] = fmaf(wf[i], xv[i], acc[t]);
    }
  };
  cp_async_wait<0>();
#pragma unroll
  for (int j = 0; j < S; j++)
    if (j * 32 + lane < nchunks) dot(mine[j * 32], j * 32 + lane);
  for (; c0 < nchunks; c0 += 32 * U) {
#pragma unroll
    for (int u = 0; u < U; u++)
      if (c0 + u * 32 < nchunks) dot(wv[u], c0 + u * 32);
    const int next = c0 + 32 * U;
#pragma unroll
    for (int u = 0; u < U; u++)
      if (next + u * 32 < nchunks) wv[u] = ld_stream16(w4 + next + u * 32);
  }
  const float bias = b ? bf2f_bits(b[row]) : 0.f;
#pragma unroll
  for (int t = 0; t < NT; t++) {
    const float s = kNorm ? warp_sum(acc[t]) * r[t] : warp_sum(acc[t]);
    if (lane == t % 32) {
      float* dst = y + size_t(t) * ldy + row;
      *dst = (accumulate ? *dst : 0.f) + s + bias;
    }
  }
}

constexpr int BM = 64, BN = 128, BK = 32, LDS = BK + 8, STAGES = 3;

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <bool kLo>
__global__ void __launch_bounds__(128) bf16_gemm_mma(const uint16_t* __restrict__ x,
                                                     const uint16_t* __restrict__ x_lo, int ldx,
                                                     const uint16_t* __restrict__ W,
                                                     const uint16_t* __restrict__ b, float* __restrict__ y, int ldy,
                                                     int M, int N, int K, bool accumulate) {
  constexpr int S = kLo ? 2 : STAGES;  // two A operands fit the 48 KB of static shared memory with 2 stages
  __shared__ __align__(16) uint16_t As[S][kLo ? 2 : 1][BM][LDS];
  __shared__ __align__(16) uint16_t Bs[S][BN][LDS];
  pdl_wait();
  pdl_trigger();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int wm = warp >> 1, wn = warp & 1;
  const int KT = (K + BK - 1) / BK;

  auto load_tile = [&](int stage, int kt) {
    const int k0 = kt * BK;
#pragma unroll
    for (int i = 0; i < 2; i++) {  // A: 64 rows x 4 chunks
      const int idx = tid + i * 128, r = idx >> 2, c = idx & 3;
      const int gm = m0 + r, gk = k0 + c * 8;
      const bool ok = gm < M && gk < K;
      cp_async16_zfill(&As[stage][0][r][c * 8], ok ? x + size_t(gm) * ldx + gk : x, ok);
      if (kLo) cp_async16_zfill(&As[stage][kLo ? 1 : 0][r][c * 8], ok ? x_lo + size_t(gm) * ldx + gk : x_lo, ok);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {  // B: 128 rows x 4 chunks
      const int idx = tid + i * 128, r = idx >> 2, c = idx & 3;
      const int gn = n0 + r, gk = k0 + c * 8;
      const bool ok = gn < N && gk < K;
      cp_async16_zfill(&Bs[stage][r][c * 8], ok ? W + size_t(gn) * K + gk : W, ok);
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
      for (int k = 0; k < 4; k++) acc[i][j][k] = 0.f;

#pragma unroll
  for (int s = 0; s < S - 1; s++) {
    if (s < KT) load_tile(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; kt++) {
    cp_async_wait<S - 2>();
    __syncthreads();
    const int nk = kt + S - 1;
    if (nk < KT) load_tile(nk % S, nk);
    cp_async_commit();
    const int st = kt % S;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[2][4], al[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; mi++) {
        ldmatrix_x4(af[mi], &As[st][0][wm * 32 + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
        if (kLo) ldmatrix_x4(al[mi], &As[st][kLo ? 1 : 0][wm * 32 + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
      }
#pragma unroll
      for (int nj = 0; nj < 8; nj += 2) {
        uint32_t bf[4];
        ldmatrix_x4(bf, &Bs[st][wn * 64 + nj * 8 + (lane & 7) + (lane >> 4) * 8][kk + ((lane >> 3) & 1) * 8]);
#pragma unroll
        for (int mi = 0; mi < 2; mi++) {
          mma_bf16(acc[mi][nj], af[mi], bf[0], bf[1]);
          mma_bf16(acc[mi][nj + 1], af[mi], bf[2], bf[3]);
          if (kLo) {
            mma_bf16(acc[mi][nj], al[mi], bf[0], bf[1]);
            mma_bf16(acc[mi][nj + 1], al[mi], bf[2], bf[3]);
          }
        }
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int nj = 0; nj < 8; nj++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int m = m0 + wm * 32 + mi * 16 + (lane >> 2) + h * 8;
        if (m >= M) continue;
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int n = n0 + wn * 64 + nj * 8 + (lane & 3) * 2 + e;
          if (n >= N) continue;
          float* dst = y + size_t(m) * ldy + n;
          const float v = acc[mi][nj][h * 2 + e] + (b ? bf2f_bits(b[n]) : 0.f);
          *dst = accumulate ? *dst + v : v;
        }
      }
}

int device_attr(cudaDeviceAttr a) {
  int dev = 0, v = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&v, a, dev));
  return v;
}

// Dynamic shared memory of staged_gemv: the W chunks of 8 warps, then the fp32 input rows.
size_t staged_bytes(int S, int T, int K) { return size_t(8) * S * 32 * 16 + size_t(T) * K * 4; }

// The staged GEMV with S chunks per lane. Once per device: dynamic shared memory opted into up to the device's
// limit, and the carveout set to the most shared memory, so that blocks need no SM reconfiguration to sit beside a
// draining predecessor that runs with the same carveout (an SM changes its L1 / shared split only when idle).
template <int NT, int S, bool kNorm>
void launch_staged(const DenseParams& p, cudaStream_t s) {
  auto* kernel = staged_gemv<NT, S, kNorm>;
  const size_t bytes = staged_bytes(S, NT, p.K);
  const int optin = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  HM_REQUIRE(bytes + sizeof(float) * NT * 8 <= size_t(optin), "dense (gemv_stage: the row does not fit)");
  allow_dynamic_smem<staged_gemv<NT, S, kNorm>>(optin - sizeof(float) * NT * 8, int(cudaSharedmemCarveoutMaxShared));
  launch(kernel, dim3(ceil_div(p.N, 8)), dim3(256), bytes, s, p.pdl, p.x, p.x_lo, p.ldx, p.norm_x, p.norm_w,
         p.norm_eps, p.norm_out, p.W, p.b, p.y, p.ldy, p.N, p.K, p.accumulate);
}

// Chunks per lane to stage by shape: single-token grids of at most 6 blocks per SM stage the most chunks (whole
// rows at most) that keep every block resident at once (q/k/v 5120 x 2880: 640 blocks, 5 per SM -> 8; o
// 2880 x 4096: 360 blocks, 3 per SM -> 12). Batches and grids of many waves (lm_head) run the unstaged kernel:
// staging lost there on the H200 (HM_OP_BENCH, 2026-12-01: T = 8 q/k/v 54 vs 50 us, o 29-34 vs 25; lm_head at
// T = 1 279 / 324 us at 4 / 8 chunks vs 256).
int stage_for(const DenseParams& p) {
  const int per_sm = ceil_div(ceil_div(p.N, 8), device_attr(cudaDevAttrMultiProcessorCount));
  if (p.T != 1 || per_sm > 6) return 0;
  const size_t sm_bytes = size_t(device_attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor));
  const int lane_chunks = ceil_div(p.K / 8, 32);
  for (int S : {16, 12, 8, 4})
    if (S <= lane_chunks && per_sm * (staged_bytes(S, 1, p.K) + 32 + 1024) <= sm_bytes) return S;  // 1 KB per block
  return 0;                                                                                        // reserved
}

template <int NT, bool kNorm>
void launch_gemv_rows(const DenseParams& p, cudaStream_t s) {
  int S = p.gemv_stage >= 0 ? p.gemv_stage : stage_for(p);
  switch (S) {
    case 4: launch_staged<NT, 4, kNorm>(p, s); return;
    case 8: launch_staged<NT, 8, kNorm>(p, s); return;
    case 12: launch_staged<NT, 12, kNorm>(p, s); return;
    case 16: launch_staged<NT, 16, kNorm>(p, s); return;
    default: break;
  }
  HM_REQUIRE(S == 0, "dense (gemv_stage is 0, 4, 8, 12 or 16)");
  // The unstaged kernel: warp per row, 8 rows per block, 4 16-byte chunks per lane in flight (more lose
  // occupancy: 58-80 registers, and run slower). Single-token decode skips the L2 prefetch of the weight row
  // before pdl_wait: measured on the H100 (docs/performance.md) it runs 1.3-2.6 us faster per launch without it;
  // batches keep it, their x reuse already lengthening each pass.
  const bool prefetch = NT != 1;
  const dim3 grid(ceil_div(p.N, 8)), block(32 * 8);
  if (kNorm)
    launch(rmsnorm_bf16_gemv<NT, 4>, grid, block, 0, s, p.pdl, p.norm_x, p.norm_w, p.norm_eps, p.norm_out, p.W, p.b,
           p.y, p.ldy, p.N, p.K, p.accumulate, prefetch);
  else
    launch(bf16_gemv<NT, 4>, grid, block, 0, s, p.pdl, p.x, p.x_lo, p.ldx, p.W, p.b, p.y, p.ldy, p.N, p.K,
           p.accumulate, prefetch);
}

template <int NT, bool kNorm>
void launch_gemv_few(const DenseParams& p, cudaStream_t s) {
  launch(rowblock_gemv<NT, kNorm>, dim3(p.N), dim3(256), 0, s, p.pdl, p.x, p.x_lo, p.ldx, p.norm_x, p.norm_w,
         p.norm_eps, p.norm_out, p.W, p.b, p.y, p.ldy, p.N, p.K, p.accumulate);
}

template <int NT>
void launch_gemv(const DenseParams& p, cudaStream_t s) {
  if (p.N <= kRowBlockMaxN) {
    if (p.norm_x)
      launch_gemv_few<NT, true>(p, s);
    else
      launch_gemv_few<NT, false>(p, s);
  } else if (p.norm_x) {
    launch_gemv_rows<NT, true>(p, s);
  } else {
    launch_gemv_rows<NT, false>(p, s);
  }
}

template <int NWG, int BN, bool LO>
void launch_dense_wgmma(const DenseParams& p, int sms, cudaStream_t s) {
  using C = DwCfg<NWG, BN, LO>;
  auto* kernel = dense_wgmma<NWG, BN, LO>;
  allow_dynamic_smem<dense_wgmma<NWG, BN, LO>>(C::SMEM);
  static std::atomic<int> per_sm{0};  // resident blocks an SM (the same on every sm_90 device)
  if (per_sm.load() == 0) {
    int n = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, C::THREADS, C::SMEM));
    per_sm = n > 0 ? n : 1;
  }
  const dim3 grid(ceil_div(p.T, BN), ceil_div(p.N, C::BM));
  const long blocks = long(grid.x) * grid.y, resident = long(per_sm.load()) * sms;
  const int splits = p.split_k >= 1 ? p.split_k : dense_wgmma_splits(blocks, p.K / kDwBK, resident, sms);
  launch_clustered(kernel, dim3(grid.x, grid.y, splits), dim3(C::THREADS), C::SMEM, s, p.pdl, unsigned(splits), p.x,
                   p.x_lo, p.ldx, p.W, p.b, p.y, p.ldy, p.T, p.N, p.K, p.accumulate);
}

template <bool LO>
void launch_dense_wgmma_tile(const DenseParams& p, int tile, int sms, cudaStream_t s) {
  switch (tile) {
    case 0:
      if constexpr (!LO) return launch_dense_wgmma<2, 256, LO>(p, sms, s);
      [[fallthrough]];
    case 1:
      if constexpr (!LO) return launch_dense_wgmma<2, 192, LO>(p, sms, s);
      [[fallthrough]];
    case 2: return launch_dense_wgmma<2, 128, LO>(p, sms, s);
    case 3: return launch_dense_wgmma<2, 64, LO>(p, sms, s);
    case 4: return launch_dense_wgmma<1, 64, LO>(p, sms, s);
    case 5: return launch_dense_wgmma<1, 32, LO>(p, sms, s);
    default: return launch_dense_wgmma<1, 16, LO>(p, sms, s);
  }
}

}  // namespace

bool dense_wgmma_ok(const DenseParams& p) { return p.gemm != 1 && p.K % kDwBK == 0 && wgmma_device(); }
int dense_wgmma_tiles() { return kDwTileCount; }
void dense_wgmma_tile_shape(int i, int& warpgroups, int& tokens) {
  HM_REQUIRE(i >= 0 && i < kDwTileCount, "dense_wgmma_tile_shape");
  warpgroups = kDwTiles[i].nwg;
  tokens = kDwTiles[i].bn;
}

void dense(const DenseParams& p, cudaStream_t stream) {
  HM_REQUIRE((p.x || p.norm_x) && p.W && p.y, "dense");
  HM_REQUIRE(!p.norm_x || (p.norm_w && p.force_path != 2 && p.T <= kDenseGemvMaxTokens), "dense (fused rmsnorm)");
  HM_REQUIRE(reinterpret_cast<uintptr_t>(p.norm_x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.norm_w) % 16 == 0,
             "dense (fused rmsnorm)");
  HM_REQUIRE(p.T >= 0 && p.N > 0 && p.K > 0 && p.K % 8 == 0, "dense");
  HM_REQUIRE(p.norm_x || (p.ldx >= p.K && p.ldx % 8 == 0), "dense");
  HM_REQUIRE(p.ldy >= p.N, "dense");
  HM_REQUIRE(reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.W) % 16 == 0, "dense");
  HM_REQUIRE(reinterpret_cast<uintptr_t>(p.x_lo) % 16 == 0, "dense");
  if (p.T == 0) return;
  const bool gemv = p.force_path == 1 || (p.force_path == 0 && p.T <= kDenseGemvMaxTokens);
  if (gemv) {
    HM_REQUIRE(p.T <= kDenseGemvMaxTokens, "dense (gemv path)");
    switch (p.T) {
      case 1: launch_gemv<1>(p, stream); break;
      case 2: launch_gemv<2>(p, stream); break;
      case 3: launch_gemv<3>(p, stream); break;
      case 4: launch_gemv<4>(p, stream); break;
      case 5: launch_gemv<5>(p, stream); break;
      case 6: launch_gemv<6>(p, stream); break;
      case 7: launch_gemv<7>(p, stream); break;
      default: launch_gemv<8>(p, stream); break;
    }
    return;
  }
  const bool wgmma = dense_wgmma_ok(p);
  HM_REQUIRE(p.gemm != 2 || wgmma, "dense (gemm 2: wgmma needs an sm_90 device and K % 64 == 0)");
  HM_REQUIRE(p.wgmma_tile < kDwTileCount, "dense (wgmma_tile)");
  HM_REQUIRE(p.split_k >= 0 && p.split_k <= 4, "dense (split_k)");
  if (wgmma) {
    HM_REQUIRE(ceil_div(p.N, 64) <= 65535, "dense (rows per call)");
    const int sms = device_attr(cudaDevAttrMultiProcessorCount);
    // gemm 3 asks for the TMA kernel wherever it applies (no K split), gemm 0 takes it where it wins.
    if (p.split_k <= 1 && (p.gemm == 3 || (p.gemm == 0 && dense_tma_auto(p.T, p.N, sms)))) {
      const int bn = p.wgmma_tile == 0 ? 256 : p.wgmma_tile > 0 ? 128 : dense_tma_bn(p.T, p.N, sms, p.x_lo != nullptr);
      if (p.x_lo)
        launch_dense_tma<128, true>(p, stream);
      else if (bn == 256)
        launch_dense_tma<256, false>(p, stream);
      else
        launch_dense_tma<128, false>(p, stream);
      return;
    }
    const int tile = p.wgmma_tile >= 0 ? p.wgmma_tile : dense_wgmma_tile(p.T, p.N, sms, p.x_lo != nullptr);
    if (p.x_lo)
      launch_dense_wgmma_tile<true>(p, tile, sms, stream);
    else
      launch_dense_wgmma_tile<false>(p, tile, sms, stream);
    return;
  }
  const dim3 grid(ceil_div(p.N, BN), ceil_div(p.T, BM));
  HM_REQUIRE(grid.y <= 65535, "dense (tokens per call)");
  if (p.x_lo)
    launch(bf16_gemm_mma<true>, grid, dim3(128), 0, stream, p.pdl, p.x, p.x_lo, p.ldx, p.W, p.b, p.y, p.ldy, p.T, p.N,
           p.K, p.accumulate);
  else
    launch(bf16_gemm_mma<false>, grid, dim3(128), 0, stream, p.pdl, p.x, p.x_lo, p.ldx, p.W, p.b, p.y, p.ldy, p.T,
           p.N, p.K, p.accumulate);
}

}  // namespace hm::cuda
