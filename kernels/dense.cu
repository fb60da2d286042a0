// Dense bf16 projections: y (+)= x W^T + b.
//   staged_gemv<NT, S, kNorm>: the decode default for N > 256 (q/k/v, o, lm_head): warp per output row, each
//                  lane's first S 16-byte chunks copied to shared memory (cp.async) BEFORE pdl_wait, so the weights
//                  stream while the previous kernel drains; the rest through registers. kNorm fuses the RMSNorm
//                  before the projection (fp32 normed input, the sums of squares accumulated in the same pass;
//                  block 0 also writes the bf16 normed rows for the experts), saving a launch per norm.
//   split_gemv<NT, kNorm>: the decode default for N <= 256 (the router): K split over a cluster of 8 blocks, the
//                  partial dots summed in slice order through distributed shared memory.
//   bf16_gemv<NT, U>, rmsnorm_bf16_gemv<NT>, rowblock_gemv<NT>: the previous decode kernels (weights loaded after
//                  pdl_wait; kept as the variants the new ones are timed and checked against): warp per row with U
//                  chunks per lane in flight, and one block per row for N <= 256.
//   bf16_gemm_mma: 64 x 128 x 32 block tiles, 4 warps of 32 x 64, mma.sync m16n8k16 bf16 with fp32 accumulators,
//                  3-stage cp.async pipeline, rows padded by 16 bytes so ldmatrix is bank-conflict free. With x_lo
//                  (the bf16 residual of an fp32 input) a second MMA per tile adds x_lo W^T: fp32-grade inputs at
//                  twice the tensor work (used for the q/k/v and router projections, where routing near-ties
//                  made bf16 inputs flip experts against the fp32 oracle).

#include <cooperative_groups.h>

#include <algorithm>
#include <atomic>

#include "common.cuh"
#include "dense.h"

namespace hm::cuda {
namespace {

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

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

// One 16-byte W chunk (columns 8c .. 8c+7) against every token, in the same fma order as the kernels above (so the
// staged kernels below give their bits): acc[t] += W . x[t] (x + x_lo when x_lo is set), or with kNorm
// acc[t] += W . (nw * x[t]) and ss[t] += x[t]^2 over the fp32 rows nx (stride K).
template <int NT, bool kNorm>
__device__ __forceinline__ void dot_chunk(const uint4& wv, int c, const uint16_t* __restrict__ x,
                                          const uint16_t* __restrict__ x_lo, int ldx, const float* __restrict__ nx,
                                          const uint16_t* __restrict__ nw, int K, float* acc, float* ss) {
  float wf[8];
  unpack8(wv, wf);
  if constexpr (kNorm) {
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

// The decode GEMV with its weights in flight before pdl_wait (the PDL contract allows weight reads there): warp
// per row as bf16_gemv / rmsnorm_bf16_gemv, but each lane first issues cp.async copies of its first S chunks
// (c = lane + 32 j, j < S) into shared memory, so the previous kernel's drain overlaps this one's stream; shared
// memory holds them at no register cost (the register-held 8 / 12 chunks lost occupancy, bench/cuda_notes.md).
// The chunks past 32 S stream through registers U at a time, the first batch also issued before the wait (q/k/v at
// S = 8: 8 + 4 chunks per lane, the whole 2880-wide row in flight before pdl_wait). Each lane consumes its chunks
// in ascending order, as the unstaged kernels do (same bits).
template <int NT, int S, bool kNorm>
__global__ void __launch_bounds__(256) staged_gemv(const uint16_t* __restrict__ x, const uint16_t* __restrict__ x_lo,
                                                   int ldx, const float* __restrict__ nx,
                                                   const uint16_t* __restrict__ nw, float eps,
                                                   uint16_t* __restrict__ norm_out, const uint16_t* __restrict__ W,
                                                   const uint16_t* __restrict__ b, float* __restrict__ y, int ldy,
                                                   int N, int K, bool accumulate) {
  constexpr int U = 4;
  extern __shared__ uint4 staged[];  // [warp][S][32 lanes]: a lane reads back only what it copied
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * (blockDim.x >> 5) + warp;
  const bool active = row < N;
  // Past N: a plain warp has nothing to do; a norm warp walks row 0 for the sums of squares block 0 needs.
  if (!kNorm && !active) return;
  const uint4* w4 = reinterpret_cast<const uint4*>(W + size_t(active ? row : 0) * K);
  const int nchunks = K / 8;
  uint4* mine = staged + warp * S * 32 + lane;
#pragma unroll
  for (int j = 0; j < S; j++)
    if (j * 32 + lane < nchunks) cp_async16(mine + j * 32, w4 + j * 32 + lane, true);
  cp_async_commit();
  int c0 = 32 * S + lane;
  uint4 wv[U];
#pragma unroll
  for (int u = 0; u < U; u++) wv[u] = c0 + u * 32 < nchunks ? ld_stream16(w4 + c0 + u * 32) : make_uint4(0, 0, 0, 0);
  pdl_wait();
  pdl_trigger();
  float acc[NT], ss[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = ss[t] = 0.f;
  cp_async_wait<0>();
#pragma unroll
  for (int j = 0; j < S; j++)
    if (j * 32 + lane < nchunks) dot_chunk<NT, kNorm>(mine[j * 32], j * 32 + lane, x, x_lo, ldx, nx, nw, K, acc, ss);
  for (; c0 < nchunks; c0 += 32 * U) {
#pragma unroll
    for (int u = 0; u < U; u++)
      if (c0 + u * 32 < nchunks) dot_chunk<NT, kNorm>(wv[u], c0 + u * 32, x, x_lo, ldx, nx, nw, K, acc, ss);
    const int next = c0 + 32 * U;
#pragma unroll
    for (int u = 0; u < U; u++)
      if (next + u * 32 < nchunks) wv[u] = ld_stream16(w4 + next + u * 32);
  }
  float r[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) r[t] = kNorm ? rsqrtf(warp_sum(ss[t]) / K + eps) : 1.f;
  if (kNorm && norm_out && blockIdx.x == 0)  // every warp has the same r (same lanes, same order)
    for (int e = threadIdx.x; e < NT * K; e += blockDim.x) {
      float rt = r[0];
#pragma unroll
      for (int t = 1; t < NT; t++)
        if (e / K == t) rt = r[t];
      norm_out[e] = __bfloat16_as_ushort(__float2bfloat16(bf2f_bits(nw[e % K]) * (nx[e] * rt)));
    }
  if (!active) return;
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

// Few output rows (the router, N <= 256) with K split over a cluster of kSplitK blocks: block (s, g) takes rows
// 8g .. 8g+7 (a warp each) over the s-th K slice, so the 0.74 MB of a 128-expert router streams from 128 SMs, each
// lane's one or two chunks issued before pdl_wait. The slices' partial dots (and, with kNorm, the slices' sums of
// squares) meet in the rank-0 block through distributed shared memory, summed in slice order: deterministic, no
// atomics, no workspace. With kNorm the row-group-0 blocks write their K slice of norm_out.
constexpr int kSplitK = 8;  // portable cluster size
template <int NT, bool kNorm>
__global__ void __launch_bounds__(256) split_gemv(const uint16_t* __restrict__ x, const uint16_t* __restrict__ x_lo,
                                                  int ldx, const float* __restrict__ nx,
                                                  const uint16_t* __restrict__ nw, float eps,
                                                  uint16_t* __restrict__ norm_out, const uint16_t* __restrict__ W,
                                                  const uint16_t* __restrict__ b, float* __restrict__ y, int ldy,
                                                  int N, int K, bool accumulate) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ float part[NT][8];  // this slice's dot of each (token, row of the group)
  __shared__ float sq[NT];       // this slice's sum of squares of each token (kNorm)
  __shared__ float r_s[NT];
  namespace cg = cooperative_groups;
  cg::cluster_group cl = cg::this_cluster();
  const int s = int(cl.block_rank());
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int row = blockIdx.y * 8 + warp;
  const bool active = row < N;  // warp 0 always is: it carries the sums of squares
  const int nchunks = K / 8, per = (nchunks + kSplitK - 1) / kSplitK;
  const int c_begin = min(nchunks, s * per), c_end = min(nchunks, c_begin + per);
  const uint4* w4 = reinterpret_cast<const uint4*>(W + size_t(active ? row : 0) * K);
  uint4 wv[2];
#pragma unroll
  for (int j = 0; j < 2; j++) {
    const int c = c_begin + j * 32 + lane;
    wv[j] = active && c < c_end ? ld_stream16(w4 + c) : make_uint4(0, 0, 0, 0);
  }
  pdl_wait();
  pdl_trigger();
  float acc[NT], ss[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = ss[t] = 0.f;
  if (active) {
#pragma unroll
    for (int j = 0; j < 2; j++) {
      const int c = c_begin + j * 32 + lane;
      if (c < c_end) dot_chunk<NT, kNorm>(wv[j], c, x, x_lo, ldx, nx, nw, K, acc, ss);
    }
    for (int c = c_begin + 64 + lane; c < c_end; c += 32)
      dot_chunk<NT, kNorm>(ld_stream16(w4 + c), c, x, x_lo, ldx, nx, nw, K, acc, ss);
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
    const float a = warp_sum(acc[t]);
    const float q = kNorm ? warp_sum(ss[t]) : 0.f;
    if (lane == 0) {
      part[t][warp] = a;
      if (warp == 0) sq[t] = q;
    }
  }
  cl.sync();
  const bool writes_norm = kNorm && norm_out && blockIdx.y == 0;
  if (kNorm && tid < NT && (s == 0 || writes_norm)) {
    float q = 0.f;
    for (int k = 0; k < kSplitK; k++) q += cl.map_shared_rank(&sq[0], k)[tid];
    r_s[tid] = rsqrtf(q / K + eps);
  }
  if (kNorm) __syncthreads();
  if (s == 0 && tid < 8 * NT) {
    const int w = tid & 7, t = tid >> 3, r = blockIdx.y * 8 + w;
    if (r < N) {
      float a = 0.f;
      for (int k = 0; k < kSplitK; k++) a += cl.map_shared_rank(&part[0][0], k)[t * 8 + w];
      if (kNorm) a *= r_s[t];
      float* dst = y + size_t(t) * ldy + r;
      *dst = (accumulate ? *dst : 0.f) + a + (b ? bf2f_bits(b[r]) : 0.f);
    }
  }
  if (writes_norm)
    for (int e = tid; e < NT * (c_end - c_begin) * 8; e += blockDim.x) {
      const int t = e / ((c_end - c_begin) * 8), k = c_begin * 8 + e % ((c_end - c_begin) * 8);
      norm_out[size_t(t) * K + k] =
          __bfloat16_as_ushort(__float2bfloat16(bf2f_bits(nw[k]) * (nx[size_t(t) * K + k] * r_s[t])));
    }
  cl.sync();  // the rank-0 block reads the others' shared memory: keep it alive until then
#else
  __trap();  // launched only on sm_90+ (the launcher checks)
#endif
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
      cp_async16(&As[stage][0][r][c * 8], ok ? x + size_t(gm) * ldx + gk : x, ok);
      if (kLo) cp_async16(&As[stage][kLo ? 1 : 0][r][c * 8], ok ? x_lo + size_t(gm) * ldx + gk : x_lo, ok);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {  // B: 128 rows x 4 chunks
      const int idx = tid + i * 128, r = idx >> 2, c = idx & 3;
      const int gn = n0 + r, gk = k0 + c * 8;
      const bool ok = gn < N && gk < K;
      cp_async16(&Bs[stage][r][c * 8], ok ? W + size_t(gn) * K + gk : W, ok);
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

// Launches with a cluster of cluster_x blocks along x (and PDL when `pdl`).
template <typename... KArgs, typename... Args>
void launch_cluster(void (*kernel)(KArgs...), dim3 grid, dim3 block, int cluster_x, cudaStream_t stream, bool pdl,
                    Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster_x;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 2 : 1;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
}

int device_attr(cudaDeviceAttr a) {
  int dev = 0, v = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&v, a, dev));
  return v;
}

// The staged GEMV with S chunks per lane. Once per device: shared memory past 48 KB opted into, and the carveout
// set to the most shared memory, so that blocks need no SM reconfiguration to sit beside a draining predecessor
// that runs with the same carveout (an SM changes its L1 / shared split only when idle).
template <int NT, int S, bool kNorm>
void launch_staged(const DenseParams& p, cudaStream_t s) {
  constexpr int kWarps = 8, kBytes = kWarps * S * 32 * 16;
  auto* kernel = staged_gemv<NT, S, kNorm>;
  static std::atomic<uint64_t> configured{0};  // one bit per device ordinal
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = 1ull << (dev & 63);
  if (!(configured.load() & bit)) {
    if (kBytes > 48 * 1024)
      CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes));
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                    int(cudaSharedmemCarveoutMaxShared)));
    configured |= bit;
  }
  launch(kernel, dim3(ceil_div(p.N, kWarps)), dim3(32 * kWarps), kBytes, s, p.pdl, p.x, p.x_lo, p.ldx, p.norm_x,
         p.norm_w, p.norm_eps, p.norm_out, p.W, p.b, p.y, p.ldy, p.N, p.K, p.accumulate);
}

// Chunks per lane to stage by shape: the most (whole rows at most) that keep every block of the grid resident at
// once in ~200 KB of shared memory per SM (q/k/v 5120 x 2880: 640 blocks, 5 per SM -> 8; o 2880 x 4096: 360
// blocks, 3 per SM -> 16); grids of many waves (lm_head) take 8.
int stage_for(const DenseParams& p) {
  const int lane_chunks = ceil_div(p.K / 8, 32);
  const int per_sm = ceil_div(ceil_div(p.N, 8), device_attr(cudaDevAttrMultiProcessorCount));
  int S = per_sm > 6 ? 8 : std::min(16, 200 * 1024 / (per_sm * 8 * 32 * 16));
  S = std::min(S, lane_chunks);
  return S >= 16 ? 16 : S >= 12 ? 12 : S >= 8 ? 8 : S >= 4 ? 4 : 0;
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
  // before pdl_wait: measured on the H100 (bench/cuda_notes.md) it runs 1.3-2.6 us faster per launch without it;
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
  const int split = p.split_k >= 0 ? p.split_k : device_attr(cudaDevAttrComputeCapabilityMajor) >= 9 ? kSplitK : 1;
  if (split == kSplitK) {
    HM_REQUIRE(device_attr(cudaDevAttrComputeCapabilityMajor) >= 9, "dense (split_k needs sm_90)");
    launch_cluster(split_gemv<NT, kNorm>, dim3(kSplitK, ceil_div(p.N, 8)), dim3(256), kSplitK, s, p.pdl, p.x, p.x_lo,
                   p.ldx, p.norm_x, p.norm_w, p.norm_eps, p.norm_out, p.W, p.b, p.y, p.ldy, p.N, p.K, p.accumulate);
    return;
  }
  HM_REQUIRE(split == 1, "dense (split_k is 1 or 8)");
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

}  // namespace

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
