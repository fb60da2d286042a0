// Attention kernels (see attention.h for the two paths). Both are written for head dims 16, 32 and 64 (HD) and a GQA group of
// G = nq / nkv query heads per KV head (templated: 1, 2, 4, 8, 16), so each K/V row read serves G heads.
//   attn_decode_merged:  grid (tokens, nkv, splits), 128 * HS threads (HS head slices), the decode path for few
//                        tokens: per-lane K/V rows in registers, no block barrier in the key loop, and the split
//                        merge done by the token's last split to finish (one launch). See the comment above it.
//   attn_decode_split + attn_decode_combine: the pair (AttentionDecodeParams::variant 1) the planner takes for
//                        batches above kMmaManyMaxTokens whose sequences read at most 128 keys (sliding layers),
//                        where its 55-register blocks fill the SMs better:
//   attn_decode_split:   grid (tokens, nkv, splits), 128 threads. Per 64-key chunk: K and V rows staged in shared
//                        memory by independent 16-byte loads (padded rows), two threads per key score the G heads,
//                        per-head online softmax (warp per head), then a thread per (head, dim pair) accumulates
//                        p * V from shared memory. Writes unnormalised partial outputs and (max, sum) per split, or,
//                        when there is one split, the final output with the sink. Lanes own dims 2*lane, 2*lane+1.
//                        With inv_freq (decode-only steps) it also does rope_kv_write's job: q rotated on load, the
//                        token's own k/v row rotated, cached and staged by the split that holds its position.
//   attn_decode_combine: grid (tokens, nq), D threads: merges the splits and the sink column, writes bf16.
//   attn_decode_mma:     grid (tokens, nkv, splits), 8 warps (variant 2, head dims 32 and 64): the merged kernel's
//                        protocol (one launch, last split merges; decode_merge_tail is shared) with the scores and
//                        p * V on tensor cores, a 16-key tile per warp, fragments loaded straight from the cache.
//                        Variant 3: the same with a token's splits (at most 8) as one thread block cluster, merged
//                        through distributed shared memory (decode_merge_cluster).
//   attn_prefill_tile:   (head dims 16 and 32, and the comparison kernel for attn_prefill_mma, which has its own
//                        file) grid (tiles, nkv), 16 * G threads, one per (query token, head) row holding q, the output
//                        accumulator and 32 scores in registers; K/V tiles of 32 keys in shared memory (fp32).
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <cooperative_groups.h>

#include "attention.h"
#include "common.cuh"

namespace hm::cuda {
namespace {

constexpr int kDecodeChunk = 64;  // keys staged per iteration; splits are multiples of it
// Decode blocks the planner aims for per SM with one head slice: attn_decode_merged<8, 64, 1> takes 255 registers
// (-Xptxas -v), so two 128-thread blocks are resident per SM; HM_OP_BENCH=1 times split counts around it. With head
// slices the planner aims for one (512-thread) block per SM.
constexpr int kDecodeBlocksPerSm = 2;
// The planner's head slices for the merged kernel (1, 2, 4; HM_OP_BENCH=1 times each).
constexpr int kDecodeHeadSlices = 4;
// Up to this many decode tokens the planner takes attn_decode_merged; above, the split + combine pair (variant 1).
// H200 (2026-12-01, us per layer with PDL), merged with 4 head slices vs the pair: T=1 at 1k 6.7 vs 10.6 (full),
// 5.6 vs 10.6 (sliding), at 32k 76 vs 156; T=8 mixed 52.8 vs 50.4 (full), 6.5 vs 11.3 (sliding); T=16 mixed 127
// vs 72 (full), 11.6 vs 13.3 (sliding); T=64 at 1k 146 vs 105 (full). So the cut is 8.
constexpr int kMergedMaxTokens = 8;
// Above kMergedMaxTokens: up to this many tokens the tensor-core kernel at any context, above it only where some
// sequence reads more than 128 keys (attention_decode_plan).
constexpr int kMmaManyMaxTokens = 64;

__device__ __forceinline__ void key_range(int pos, int window, int* lo, int* hi) {
  *hi = pos;
  *lo = window > 0 ? max(0, pos - window + 1) : 0;
}

__device__ __forceinline__ size_t slot_of(const AttentionCommon& c, int seq, int j) {
  const int blk = c.block_tables[size_t(seq) * c.max_blocks_per_seq + j / c.block_size];
  return size_t(blk) * c.block_size + (j % c.block_size);
}

// Element d of a head rotated at position p (half-split layout): the same expressions as rope_kv_write, so the
// fused decode path sees the same fp32 values.
template <int HD>
__device__ __forceinline__ float rope_elem(const float* __restrict__ head, int d, float p,
                                           const float* __restrict__ inv_freq, float attn_factor) {
  constexpr int HALF = HD / 2;
  const int f = d % HALF;
  float s, cs;
  sincosf(p * inv_freq[f], &s, &cs);
  cs *= attn_factor;
  s *= attn_factor;
  const float x1 = head[f], x2 = head[f + HALF];
  return d < HALF ? x1 * cs - x2 * s : x2 * cs + x1 * s;
}

template <int G, int HD>
__global__ void __launch_bounds__(128) attn_decode_split(AttentionCommon c, const int32_t* __restrict__ tokens,
                                                         int keys_per_split, int max_splits,
                                                         float* __restrict__ ws, const float* __restrict__ inv_freq,
                                                         float attn_factor, const int32_t* __restrict__ slot) {
  constexpr int KROW = HD + 8;  // padded rows: the thread-per-key 16-byte reads hit 8 different bank groups
  constexpr int GH = (G + 1) / 2;  // heads scored per thread (two threads per key)
  __shared__ float qs[G][HD];
  __shared__ __align__(16) uint16_t Ks[kDecodeChunk][KROW];
  __shared__ __align__(16) uint16_t Vs[kDecodeChunk][KROW];
  __shared__ float S[G][kDecodeChunk];
  __shared__ int slots[kDecodeChunk];
  __shared__ float alpha_s[G];
  __shared__ float m_s[G], l_s[G];
  __shared__ __align__(16) uint16_t k_own[HD], v_own[HD];  // fused rope: the token's own K/V row (bf16)
  pdl_wait();
  pdl_trigger();
  const int i = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int t = tokens[i];
  const int seq = c.tok_seq[t];
  int lo, hi;
  key_range(c.pos[t], c.window, &lo, &hi);
  const int s_begin = lo + split * keys_per_split;
  if (s_begin > hi) return;
  const int s_end = min(hi + 1, s_begin + keys_per_split);

  const bool fuse = inv_freq != nullptr;
  const float p = float(hi);
  for (int e = tid; e < G * HD; e += blockDim.x) {
    const float* qh = c.q + size_t(t) * c.ldq + (kvh * G + e / HD) * HD;
    qs[e / HD][e % HD] = (fuse ? rope_elem<HD>(qh, e % HD, p, inv_freq, attn_factor) : qh[e % HD]) * c.scale;
  }
  // Fused rope: the split holding the token's own position rotates its k head, stores k and v to the cache slot and
  // stages them from shared memory (no other block of this launch reads that slot: one new token per sequence).
  const bool own = fuse && s_end == hi + 1;
  if (own && tid < HD) {
    const float* kh = c.q + size_t(t) * c.ldq + size_t(c.nq + kvh) * HD;
    const float* vh = c.q + size_t(t) * c.ldq + size_t(c.nq + c.nkv + kvh) * HD;
    const uint16_t kb = __bfloat16_as_ushort(__float2bfloat16(rope_elem<HD>(kh, tid, p, inv_freq, attn_factor)));
    const uint16_t vb = __bfloat16_as_ushort(__float2bfloat16(vh[tid]));
    k_own[tid] = kb;
    v_own[tid] = vb;
    const int sl = slot[t];
    if (sl >= 0) {
      const size_t off = (size_t(sl) * c.nkv + kvh) * HD + tid;
      const_cast<uint16_t*>(c.k_cache)[off] = kb;
      const_cast<uint16_t*>(c.v_cache)[off] = vb;
    }
  }
  if (tid < G) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.f;
  }
  // V phase ownership: dims 2*lane, 2*lane+1 (HD <= 64; lanes past HD/2 idle) of heads warp, warp + 4, ...
  constexpr int HPT = (G + 3) / 4;
  const bool vlane = 2 * lane < HD;
  float acc[HPT][2];
#pragma unroll
  for (int a = 0; a < HPT; a++) acc[a][0] = acc[a][1] = 0.f;

  for (int c0 = s_begin; c0 < s_end; c0 += kDecodeChunk) {
    const int n = min(kDecodeChunk, s_end - c0);
    if (tid < n) slots[tid] = int(slot_of(c, seq, c0 + tid));
    __syncthreads();
    // Stage the chunk's K and V rows: every thread issues independent 16-byte loads.
    constexpr int CPR = HD / 8;  // 16-byte chunks per row
    for (int e = tid; e < n * CPR; e += blockDim.x) {
      const int j = e / CPR, ch = e % CPR;
      const size_t off = (size_t(slots[j]) * c.nkv + kvh) * HD + ch * 8;
      const bool mine = own && c0 + j == hi;
      *reinterpret_cast<uint4*>(&Ks[j][ch * 8]) = mine ? *reinterpret_cast<const uint4*>(&k_own[ch * 8])
                                                       : __ldg(reinterpret_cast<const uint4*>(c.k_cache + off));
      *reinterpret_cast<uint4*>(&Vs[j][ch * 8]) = mine ? *reinterpret_cast<const uint4*>(&v_own[ch * 8])
                                                       : __ldg(reinterpret_cast<const uint4*>(c.v_cache + off));
    }
    __syncthreads();
    {
      const int j = tid % kDecodeChunk, h0 = (tid / kDecodeChunk) * GH;
      float dot[GH];
#pragma unroll
      for (int h = 0; h < GH; h++) dot[h] = 0.f;
      if (j < n) {
#pragma unroll
        for (int ch = 0; ch < CPR; ch++) {
          float kf[8];
          unpack8(*reinterpret_cast<const uint4*>(&Ks[j][ch * 8]), kf);
#pragma unroll
          for (int h = 0; h < GH; h++)
            if (h0 + h < G)
#pragma unroll
              for (int e = 0; e < 8; e++) dot[h] = fmaf(qs[h0 + h][ch * 8 + e], kf[e], dot[h]);
        }
      }
#pragma unroll
      for (int h = 0; h < GH; h++)
        if (h0 + h < G) S[h0 + h][j] = j < n ? dot[h] : -INFINITY;
    }
    __syncthreads();
    for (int h = warp; h < G; h += 4) {
      float mx = -INFINITY;
      for (int j = lane; j < kDecodeChunk; j += 32) mx = fmaxf(mx, S[h][j]);
      mx = warp_max(mx);
      const float m_new = fmaxf(m_s[h], mx);
      float sum = 0.f;
      for (int j = lane; j < kDecodeChunk; j += 32) {
        const float pj = __expf(S[h][j] - m_new);
        S[h][j] = pj;
        sum += pj;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float al = __expf(m_s[h] - m_new);
        alpha_s[h] = al;
        l_s[h] = l_s[h] * al + sum;
        m_s[h] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int a = 0; a < HPT; a++) {
      const int h = warp + 4 * a;
      if (h < G) {
        acc[a][0] *= alpha_s[h];
        acc[a][1] *= alpha_s[h];
      }
    }
    if (vlane) {
      for (int j = 0; j < n; j++) {
        const uint32_t vv = *reinterpret_cast<const uint32_t*>(&Vs[j][2 * lane]);
        const float v0 = __uint_as_float(vv << 16), v1 = __uint_as_float(vv & 0xffff0000u);
#pragma unroll
        for (int a = 0; a < HPT; a++) {
          const int h = warp + 4 * a;
          if (h < G) {
            const float pj = S[h][j];
            acc[a][0] = fmaf(pj, v0, acc[a][0]);
            acc[a][1] = fmaf(pj, v1, acc[a][1]);
          }
        }
      }
    }
    __syncthreads();
  }
  const size_t nq = size_t(c.nq);
  if (max_splits == 1) {  // the only split: fold in the sink and write the output, no combine launch
#pragma unroll
    for (int a = 0; a < HPT; a++) {
      const int h = warp + 4 * a;
      if (h < G && vlane) {
        const int qh = kvh * G + h;
        const float sink = c.sinks[qh];
        const float M = fmaxf(m_s[h], sink);
        const float w = __expf(m_s[h] - M);
        const float inv = 1.f / (l_s[h] * w + __expf(sink - M));
        *reinterpret_cast<__nv_bfloat162*>(c.out + size_t(t) * nq * HD + qh * HD + 2 * lane) =
            __floats2bfloat162_rn(acc[a][0] * w * inv, acc[a][1] * w * inv);
      }
    }
    return;
  }
  // Partial layout: o [tokens, nq, max_splits, D], then ml [tokens, nq, max_splits, 2].
  float* o = ws;
  float* ml = ws + size_t(gridDim.x) * nq * max_splits * HD;
#pragma unroll
  for (int a = 0; a < HPT; a++) {
    const int h = warp + 4 * a;
    if (h < G) {
      const size_t row = (size_t(i) * nq + kvh * G + h) * max_splits + split;
      if (vlane) {
        o[row * HD + 2 * lane] = acc[a][0];
        o[row * HD + 2 * lane + 1] = acc[a][1];
      }
      if (lane == 0) {
        ml[row * 2] = m_s[h];
        ml[row * 2 + 1] = l_s[h];
      }
    }
  }
}

template <int HD>
__global__ void attn_decode_combine(AttentionCommon c, const int32_t* __restrict__ tokens, int keys_per_split,
                                    int max_splits, const float* __restrict__ ws) {
  pdl_wait();
  pdl_trigger();
  const int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int t = tokens[i];
  int lo, hi;
  key_range(c.pos[t], c.window, &lo, &hi);
  const int nsplit = (hi - lo + 1 + keys_per_split - 1) / keys_per_split;
  const size_t nq = size_t(c.nq);
  const float* o = ws;
  const float* ml = ws + size_t(gridDim.x) * nq * max_splits * HD;
  const size_t base = (size_t(i) * nq + h) * max_splits;
  const float sink = c.sinks[h];
  float M = sink;
  for (int s = 0; s < nsplit; s++) M = fmaxf(M, ml[(base + s) * 2]);
  float L = __expf(sink - M), acc = 0.f;
  for (int s = 0; s < nsplit; s++) {
    const float w = __expf(ml[(base + s) * 2] - M);
    L += ml[(base + s) * 2 + 1] * w;
    acc += o[(base + s) * HD + d] * w;
  }
  c.out[size_t(t) * nq * HD + h * HD + d] = __bfloat16_as_ushort(__float2bfloat16(acc / L));
}

// Output unit e (head e * 4 / HD, dims e * 4 % HD .. + 3) of a block's NW warp partials, merged in warp order.
template <int G, int HD, int NW>
__device__ __forceinline__ void merge_warps(int e, const float (&wo)[NW][G][HD], const float (&wm)[NW][G],
                                            const float (&wl)[NW][G], float& M, float& L, float4& O) {
  const int h = e * 4 / HD, d = e * 4 % HD;
  M = -INFINITY;
#pragma unroll
  for (int w = 0; w < NW; w++) M = fmaxf(M, wm[w][h]);
  L = 0.f;
  O = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int w = 0; w < NW; w++) {
    const float wt = wm[w][h] == -INFINITY ? 0.f : __expf(wm[w][h] - M);
    const float4 x = *reinterpret_cast<const float4*>(&wo[w][h][d]);
    L += wl[w][h] * wt;
    O.x += x.x * wt, O.y += x.y * wt, O.z += x.z * wt, O.w += x.w * wt;
  }
}

// The end of a decode block: its NW warps' partials over their keys (wo, wm, wl) merged per output unit (G * HD / 4
// float4 units, NT threads); a token's single split writes the output with the sink, otherwise the split writes its
// partial and the last of the token's splits to arrive (counter) merges them all in split order, so the result
// does not depend on arrival order. sink_first: the sink of unit tid's head (tid < units).
template <int G, int HD, int NW, int NT>
__device__ __forceinline__ void decode_merge_tail(const AttentionCommon& c, int i, int t, int kvh, int split, int nsplit,
                                                  int max_splits, float* __restrict__ ws,
                                                  uint32_t* __restrict__ counters, float sink_first,
                                                  float (&wo)[NW][G][HD], float (&wm)[NW][G], float (&wl)[NW][G],
                                                  int& is_last) {
  constexpr int UNITS = G * HD / 4;
  static_assert(NW >= 4, "the split merge reuses wo[sub] for up to 4 sub-ranges");
  const int tid = threadIdx.x;
  const size_t nq = size_t(c.nq);
  float* wso = ws;
  float* wsml = ws + size_t(gridDim.x) * nq * max_splits * HD;
  uint16_t* out = c.out + size_t(t) * nq * HD + size_t(kvh) * G * HD;
  auto store_out = [&](int e, float4 o, float scale) {
    const __nv_bfloat162 a = __floats2bfloat162_rn(o.x * scale, o.y * scale);
    const __nv_bfloat162 b = __floats2bfloat162_rn(o.z * scale, o.w * scale);
    uint2 pk;
    pk.x = *reinterpret_cast<const uint32_t*>(&a);
    pk.y = *reinterpret_cast<const uint32_t*>(&b);
    *reinterpret_cast<uint2*>(out + e * 4) = pk;
  };
  for (int e = tid; e < UNITS; e += blockDim.x) {
    const int h = e * 4 / HD, d = e * 4 % HD;
    float M, L;
    float4 O;
    merge_warps<G, HD, NW>(e, wo, wm, wl, M, L, O);
    if (nsplit == 1) {  // the token's only split: fold in the sink and write the output
      const float sink = e == tid ? sink_first : c.sinks[kvh * G + h];
      const float M2 = fmaxf(M, sink);
      const float w = __expf(M - M2);
      store_out(e, O, w / (L * w + __expf(sink - M2)));
    } else {  // partial layout: o [tokens, nq, max_splits, D], then ml [tokens, nq, max_splits, 2]
      const size_t row = (size_t(i) * nq + kvh * G + h) * max_splits + split;
      *reinterpret_cast<float4*>(wso + row * HD + d) = O;
      if (d == 0) {
        wsml[row * 2] = M;
        wsml[row * 2 + 1] = L;
      }
    }
  }
  if (nsplit == 1) return;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    uint32_t* ctr = counters + size_t(i) * c.nkv + kvh;
    is_last = atomicAdd(ctr, 1u) == uint32_t(nsplit - 1);
    if (is_last) *ctr = 0;  // every split has arrived: ready for the next launch
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  // The last split merges all of the token's splits with the sink (L2 reads: other blocks wrote them). With threads
  // to spare (head slices), SUBS threads per output unit each merge a contiguous range of splits and the first
  // merges their results in order, so the order never depends on arrival.
  constexpr int SUBS = NT / UNITS >= 4 ? 4 : NT / UNITS >= 2 ? 2 : 1;
  for (int x = tid; x < UNITS * SUBS; x += NT) {
    const int e = x % UNITS, sub = x / UNITS;
    const int h = e * 4 / HD, d = e * 4 % HD;
    const size_t base = (size_t(i) * nq + kvh * G + h) * max_splits;
    const int sa = sub * nsplit / SUBS, sb = (sub + 1) * nsplit / SUBS;
    float M = -INFINITY;
    for (int s = sa; s < sb; s++) M = fmaxf(M, __ldcg(wsml + (base + s) * 2));
    float L = 0.f;
    float4 O = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int s = sa; s < sb; s++) {
      const float2 ml = __ldcg(reinterpret_cast<const float2*>(wsml + (base + s) * 2));
      const float4 v = __ldcg(reinterpret_cast<const float4*>(wso + (base + s) * HD + d));
      const float w = __expf(ml.x - M);
      L += ml.y * w;
      O.x += v.x * w, O.y += v.y * w, O.z += v.z * w, O.w += v.w * w;
    }
    if (SUBS == 1) {
      const float sink = e == tid ? sink_first : c.sinks[kvh * G + h];
      const float M2 = fmaxf(M, sink);
      const float w = __expf(M - M2);
      store_out(e, O, w / (L * w + __expf(sink - M2)));
    } else {
      *reinterpret_cast<float4*>(&wo[sub][h][d]) = O;
      if (d == 0) {
        wm[sub][h] = M;
        wl[sub][h] = L;
      }
    }
  }
  if (SUBS == 1) return;
  __syncthreads();
  if (tid < UNITS) {
    const int h = tid * 4 / HD, d = tid * 4 % HD;
    float M = sink_first;
#pragma unroll
    for (int sub = 0; sub < SUBS; sub++) M = fmaxf(M, wm[sub][h]);
    float L = __expf(sink_first - M);
    float4 O = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int sub = 0; sub < SUBS; sub++) {
      const float w = __expf(wm[sub][h] - M);  // an empty range: -inf, weight 0
      const float4 v = *reinterpret_cast<const float4*>(&wo[sub][h][d]);
      L += wl[sub][h] * w;
      O.x += v.x * w, O.y += v.y * w, O.z += v.z * w, O.w += v.w * w;
    }
    store_out(tid, O, 1.f / L);
  }
}

// Decode attention in one launch. Block = 4 * HS warps over one (token, KV head, split): warp w takes key quarter
// w % 4 for the GH = G / HS heads of slice w / 4 (the slices read the same K/V rows, the repeats served by L1).
// Each warp holds GPW key groups of LPK = HD/8 lanes, a lane owning 8 dims (one 16-byte K and V load per key) with
// its GH heads' q dims and accumulators in registers, so no shared memory or block barrier in the key loop: a group scores its key for the
// G heads (FMAs, then a butterfly over its LPK lanes), keeps its own online softmax and accumulates p * V. The
// next chunk's K loads are issued before this chunk's softmax and its V loads before the next scores (one chunk of
// loads always in flight). The split's groups merge through shuffles and shared memory; a token's single split
// writes the output with the sink, otherwise the split writes its partial and the last of the token's splits to
// arrive (counter) merges them all in split order, so the result does not depend on arrival order.
// Why head slices: at batch 1 the grid has ~128 blocks, one per SM, and each warp's instructions run as one serial
// chain (ncu of the previous kernel: 4.6% issue busy, ~8 cycles an instruction). Splitting the G heads over HS
// slices divides a warp's score, softmax, p * V and group-merge work by HS and puts HS times the warps on each SM
// (HS 4: 16 warps, 120 registers); the prologue's eight sincosf a lane became one plus shuffles, the slot walk one
// division a chunk. Counted by hand per warp for one 64-key chunk (G 8, D 64, fused; batch 1 at 1k: 16 splits;
// PTX, no cuobjdump here): HS 1: sincosf 8 x ~30, q 160, scores 288 + 192 shuffle/add, softmax 240, p * V 288,
// group merge 560, block merge 50, last-block merge 16 splits ~240: ~2.3 K (ncu of the previous pair: 2.1 K). HS 4:
// sincosf+shuffles ~50, q 60, scores 96 + 48, softmax 60, p * V 96, group merge 140, block merge 50, last-block
// merge 4 splits a thread ~100, indices ~60: ~0.8 K. At ~8 cycles an instruction (ncu's serial chain) that is ~18 K
// cycles (9.5 us at 1.9 GHz, as measured) before and ~6.5 K (~3.5 us + ~1 us of dependent index/K loads) after.
template <int G, int HD, int HS>
__global__ void __launch_bounds__(128 * HS) attn_decode_merged(AttentionCommon c, const int32_t* __restrict__ tokens,
                                                               int keys_per_split, int max_splits,
                                                               float* __restrict__ ws, uint32_t* __restrict__ counters,
                                                               const float* __restrict__ inv_freq, float attn_factor,
                                                               const int32_t* __restrict__ slot) {
  constexpr int LPK = HD / 8;                  // lanes per key
  constexpr int GPW = 32 / LPK;                // key groups per warp
  constexpr int U = kDecodeChunk / (4 * GPW);  // keys per group per chunk: 64 keys per block per chunk
  constexpr int HALF = HD / 2;
  constexpr int GH = G / HS;         // heads per warp
  constexpr int UNITS = G * HD / 4;  // float4 output units of the block (merge phases)
  __shared__ __align__(16) uint16_t k_own[HD], v_own[HD];
  __shared__ float wm[4][G], wl[4][G];
  __shared__ __align__(16) float wo[4][G][HD];
  __shared__ int is_last;
  const int i = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kw = warp & 3, h0 = (warp >> 2) * GH;  // the warp's key quarter and first head of the group
  const int part = lane % LPK, grp = lane / LPK;
  // Before pdl_wait: the sinks (weights), the step's index arrays and, with inv_freq, the cached K/V of earlier
  // positions. All were written before this step's first kernel started (the index upload precedes it, earlier
  // steps wrote the cache, and on decode-only steps no kernel of this step writes this layer's cache but this one),
  // so no kernel still running can change them.
  const float sink_first = tid < UNITS ? c.sinks[kvh * G + tid * 4 / HD] : 0.f;
  const int t = tokens[i];
  const int seq = c.tok_seq[t];
  int lo, hi;
  key_range(c.pos[t], c.window, &lo, &hi);
  const int nsplit = (hi - lo + keys_per_split) / keys_per_split;
  const int s_begin = lo + split * keys_per_split;
  if (s_begin > hi) return;
  const int s_end = min(hi + 1, s_begin + keys_per_split);
  const bool fuse = inv_freq != nullptr;
  const bool own = fuse && s_end == hi + 1;
  const int32_t* bt = c.block_tables + size_t(seq) * c.max_blocks_per_seq;
  const size_t kv_row = size_t(c.nkv) * HD;
  const uint16_t* kbase = c.k_cache + size_t(kvh) * HD + part * 8;
  const uint16_t* vbase = c.v_cache + size_t(kvh) * HD + part * 8;
  const int key0 = (kw * GPW + grp) * U;  // the group's first key in each chunk
  int sl[U];
  uint4 kr[U], vr[U];
  auto load_slots = [&](int c0) {  // one division per chunk: the group's U keys are consecutive
    const int bs = c.block_size, j0 = c0 + key0;
    int bq = j0 / bs, br = j0 - bq * bs;
#pragma unroll
    for (int u = 0; u < U; u++) {
      sl[u] = j0 + u < s_end ? bt[bq] * bs + br : -1;
      if (++br == bs) br = 0, bq++;
    }
  };
  auto load_k = [&] {
#pragma unroll
    for (int u = 0; u < U; u++)
      kr[u] = sl[u] >= 0 ? __ldg(reinterpret_cast<const uint4*>(kbase + size_t(sl[u]) * kv_row)) : make_uint4(0, 0, 0, 0);
  };
  auto load_v = [&] {
#pragma unroll
    for (int u = 0; u < U; u++)
      vr[u] = sl[u] >= 0 ? __ldg(reinterpret_cast<const uint4*>(vbase + size_t(sl[u]) * kv_row)) : make_uint4(0, 0, 0, 0);
  };
  load_slots(s_begin);
  if (fuse) {
    load_k();
    load_v();
  }
  pdl_wait();
  pdl_trigger();
  if (!fuse) {
    load_k();
    load_v();
  }

  // q: the lane's 8 dims of the warp's GH heads, rotated once (fused: the same expressions as rope_kv_write) and
  // scaled. Each lane computes one sincosf (frequency lane % HALF) and takes its 8 dims' from the lanes by shuffle:
  // one sincosf a lane instead of eight. The k head rotation (threads tid < HD, frequency tid % HALF = lane % HALF)
  // uses the lane's own.
  const float* qrow = c.q + size_t(t) * c.ldq;
  const float p = float(hi);
  float q[GH][8];
  float cs_l = 0.f, sn_l = 0.f;
  if (fuse) {
    sincosf(p * inv_freq[lane % HALF], &sn_l, &cs_l);
    cs_l *= attn_factor;
    sn_l *= attn_factor;
    const int f0 = (part * 8) % HALF;
    const bool lo_half = part * 8 < HALF;
    float cs[8], sn[8];
#pragma unroll
    for (int e = 0; e < 8; e++) {
      cs[e] = __shfl_sync(0xffffffffu, cs_l, f0 + e);
      sn[e] = __shfl_sync(0xffffffffu, sn_l, f0 + e);
    }
#pragma unroll
    for (int h = 0; h < GH; h++) {
      const float* qh = qrow + (kvh * G + h0 + h) * HD;
      const float4 a0 = *reinterpret_cast<const float4*>(qh + f0), a1 = *reinterpret_cast<const float4*>(qh + f0 + 4);
      const float4 b0 = *reinterpret_cast<const float4*>(qh + f0 + HALF);
      const float4 b1 = *reinterpret_cast<const float4*>(qh + f0 + HALF + 4);
      const float x1[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float x2[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int e = 0; e < 8; e++)
        q[h][e] = (lo_half ? x1[e] * cs[e] - x2[e] * sn[e] : x2[e] * cs[e] + x1[e] * sn[e]) * c.scale;
    }
  } else {
#pragma unroll
    for (int h = 0; h < GH; h++) {
      const float4* qh = reinterpret_cast<const float4*>(qrow + (kvh * G + h0 + h) * HD + part * 8);
      const float4 a = qh[0], b = qh[1];
      q[h][0] = a.x * c.scale, q[h][1] = a.y * c.scale, q[h][2] = a.z * c.scale, q[h][3] = a.w * c.scale;
      q[h][4] = b.x * c.scale, q[h][5] = b.y * c.scale, q[h][6] = b.z * c.scale, q[h][7] = b.w * c.scale;
    }
  }
  // Fused rope: the split holding the token's own position rotates its k head and writes k and v to the cache slot;
  // the group that scores that key takes them from shared memory (the cache row it loaded is stale).
  if (own) {
    if (tid < HD) {
      const float* kh = qrow + size_t(c.nq + kvh) * HD;
      const float* vh = qrow + size_t(c.nq + c.nkv + kvh) * HD;
      const int f = tid % HALF;
      const float x1 = kh[f], x2 = kh[f + HALF];
      const float kr0 = tid < HALF ? x1 * cs_l - x2 * sn_l : x2 * cs_l + x1 * sn_l;
      const uint16_t kb = __bfloat16_as_ushort(__float2bfloat16(kr0));
      const uint16_t vb = __bfloat16_as_ushort(__float2bfloat16(vh[tid]));
      k_own[tid] = kb;
      v_own[tid] = vb;
      const int s = slot[t];
      if (s >= 0) {
        const size_t off = (size_t(s) * c.nkv + kvh) * HD + tid;
        const_cast<uint16_t*>(c.k_cache)[off] = kb;
        const_cast<uint16_t*>(c.v_cache)[off] = vb;
      }
    }
    __syncthreads();
  }

  float m[GH], l[GH], acc[GH][8];
#pragma unroll
  for (int h = 0; h < GH; h++) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; e++) acc[h][e] = 0.f;
  }
  for (int c0 = s_begin; c0 < s_end; c0 += kDecodeChunk) {
    const bool more = c0 + kDecodeChunk < s_end;
    if (own) {
#pragma unroll
      for (int u = 0; u < U; u++)
        if (c0 + key0 + u == hi) {
          kr[u] = *reinterpret_cast<const uint4*>(&k_own[part * 8]);
          vr[u] = *reinterpret_cast<const uint4*>(&v_own[part * 8]);
        }
    }
    float s[U][GH];
#pragma unroll
    for (int u = 0; u < U; u++) {
      float kf[8];
      unpack8(kr[u], kf);
#pragma unroll
      for (int h = 0; h < GH; h++) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) dot = fmaf(q[h][e], kf[e], dot);
        s[u][h] = dot;
      }
    }
    if (more) {
      load_slots(c0 + kDecodeChunk);
      load_k();
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const bool valid = c0 + key0 + u < s_end;
#pragma unroll
      for (int h = 0; h < GH; h++) {
#pragma unroll
        for (int o = 1; o < LPK; o <<= 1) s[u][h] += __shfl_xor_sync(0xffffffffu, s[u][h], o);
        if (!valid) s[u][h] = -INFINITY;
      }
    }
#pragma unroll
    for (int h = 0; h < GH; h++) {
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < U; u++) mx = fmaxf(mx, s[u][h]);
      if (mx == -INFINITY) {  // none of the group's keys so far
#pragma unroll
        for (int u = 0; u < U; u++) s[u][h] = 0.f;
        continue;
      }
      const float al = __expf(m[h] - mx);
      float sum = 0.f;
#pragma unroll
      for (int u = 0; u < U; u++) {
        s[u][h] = __expf(s[u][h] - mx);
        sum += s[u][h];
      }
      l[h] = l[h] * al + sum;
      m[h] = mx;
#pragma unroll
      for (int e = 0; e < 8; e++) acc[h][e] *= al;
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      float vf[8];
      unpack8(vr[u], vf);
#pragma unroll
      for (int h = 0; h < GH; h++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[h][e] = fmaf(s[u][h], vf[e], acc[h][e]);
    }
    if (more) load_v();
  }

  // Merge the warp's groups (lanes of one dim slice, LPK apart), then the 4 warps through shared memory.
#pragma unroll
  for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
    for (int h = 0; h < GH; h++) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[h], o), lo2 = __shfl_xor_sync(0xffffffffu, l[h], o);
      const float M = fmaxf(m[h], mo);
      const float wa = m[h] == -INFINITY ? 0.f : __expf(m[h] - M), wb = mo == -INFINITY ? 0.f : __expf(mo - M);
      l[h] = l[h] * wa + lo2 * wb;
      m[h] = M;
#pragma unroll
      for (int e = 0; e < 8; e++) acc[h][e] = acc[h][e] * wa + __shfl_xor_sync(0xffffffffu, acc[h][e], o) * wb;
    }
  }
  if (grp == 0) {
#pragma unroll
    for (int h = 0; h < GH; h++) {
      *reinterpret_cast<float4*>(&wo[kw][h0 + h][part * 8]) = make_float4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]);
      *reinterpret_cast<float4*>(&wo[kw][h0 + h][part * 8 + 4]) = make_float4(acc[h][4], acc[h][5], acc[h][6], acc[h][7]);
      if (part == 0) {
        wm[kw][h0 + h] = m[h];
        wl[kw][h0 + h] = l[h];
      }
    }
  }
  __syncthreads();
  decode_merge_tail<G, HD, 4, 128 * HS>(c, i, t, kvh, split, nsplit, max_splits, ws, counters, sink_first, wo, wm, wl,
                                        is_last);
}

// The split merge inside a thread block cluster (variant 3: a (token, KV head)'s splits are one cluster along z, at
// most 8): each block merges its warps per unit into its own shared memory (wo[0], bm, bl); after a cluster barrier
// block r merges units r, r + S, ... over the S blocks' partials in rank (= split) order through distributed shared
// memory, with the sink; a second barrier keeps every block's partials alive until they are read. No workspace,
// counter, fence or global round trip.
template <int G, int HD, int NW>
__device__ __forceinline__ void decode_merge_cluster(const AttentionCommon& c, int t, int kvh, float (&wo)[NW][G][HD],
                                                     float (&wm)[NW][G], float (&wl)[NW][G], float (&bm)[G],
                                                     float (&bl)[G]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int UNITS = G * HD / 4;
  const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  const int tid = threadIdx.x;
  for (int e = tid; e < UNITS; e += blockDim.x) {
    const int h = e * 4 / HD, d = e * 4 % HD;
    float M, L;
    float4 O;
    merge_warps<G, HD, NW>(e, wo, wm, wl, M, L, O);
    *reinterpret_cast<float4*>(&wo[0][h][d]) = O;  // unit e of wo[0] is this thread's alone
    if (d == 0) bm[h] = M, bl[h] = L;
  }
  cluster.sync();
  const int S = int(cluster.num_blocks()), r = int(cluster.block_rank());
  uint16_t* out = c.out + size_t(t) * c.nq * HD + size_t(kvh) * G * HD;
  for (int e = r + S * tid; e < UNITS; e += S * int(blockDim.x)) {
    const int h = e * 4 / HD, d = e * 4 % HD;
    const float sink = c.sinks[kvh * G + h];
    float M = sink;
    for (int s = 0; s < S; s++) M = fmaxf(M, cluster.map_shared_rank(&bm[0], s)[h]);
    float L = __expf(sink - M);
    float4 O = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s = 0; s < S; s++) {
      const float w = __expf(cluster.map_shared_rank(&bm[0], s)[h] - M);  // a split without keys: -inf, weight 0
      const float4 v = *reinterpret_cast<const float4*>(cluster.map_shared_rank(&wo[0][h][d], s));
      L += cluster.map_shared_rank(&bl[0], s)[h] * w;
      O.x += v.x * w, O.y += v.y * w, O.z += v.z * w, O.w += v.w * w;
    }
    const float inv = 1.f / L;
    const __nv_bfloat162 a = __floats2bfloat162_rn(O.x * inv, O.y * inv);
    const __nv_bfloat162 b = __floats2bfloat162_rn(O.z * inv, O.w * inv);
    uint2 pk;
    pk.x = *reinterpret_cast<const uint32_t*>(&a);
    pk.y = *reinterpret_cast<const uint32_t*>(&b);
    *reinterpret_cast<uint2*>(out + e * 4) = pk;
  }
  cluster.sync();
#else
  __trap();  // clusters need sm_90; the launcher never takes variant 3 elsewhere
#endif
}

// mma.sync m16n8k16, bf16 operands, fp32 accumulators: d += a * b (fragment layouts as in the PTX ISA).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair (the first in the low half) and the bf16 pair of what that leaves: hi + lo keeps about
// 16 bits of each, so an fp32 operand enters the mma as two bf16 ones and the products stay fp32-grade.
__device__ __forceinline__ void split_bf16x2(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const float2 hf = __bfloat1622float2(h);
  const __nv_bfloat162 l = __floats2bfloat162_rn(x0 - hf.x, x1 - hf.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

constexpr int kMmaWarps = 8;               // warps of attn_decode_mma
constexpr int kMmaChunk = 16 * kMmaWarps;  // keys a block takes per iteration: a 16-key tile per warp
constexpr int kMmaBlocksPerSm = 2;         // resident per SM at 128 registers (__launch_bounds__ below)
constexpr int kMaxClusterSplits = 8;       // variant 3: the splits of a (token, KV head) in one portable cluster
constexpr int kMmaRingStages = 3;          // RING: chunks in shared memory (3 x 32 KB at head dim 64: two blocks an SM)
template <int HD>
constexpr size_t mma_ring_bytes() { return size_t(kMmaRingStages) * 2 * kMmaChunk * HD * 2; }

// Decode attention on tensor cores (AttentionDecodeParams::variant 2), grid (tokens, nkv, splits), 8 warps. The
// G <= 16 heads of a KV head are the 16 rows of the mma (rows past G zero), so a warp's 16-key tile is S = Q K^T as
// 2 n-tiles x HD/16 k-steps and O += P V as HD/8 n-tiles x 1 k-step, with q and p entering as bf16 hi + lo (two
// mmas each, fp32-grade: K and V are bf16 already). No operand goes through shared memory: the contraction and
// output orders are free, so a thread loads exactly its fragments. Scores: thread (g, q4) = (lane / 4, lane % 4)
// holds the K row of key 8 n + g, dims of chunks q4 and q4 + 4 (16-byte loads; q in the same dim order).
// P V: output column g of n-tile j is dim g * HD/8 + j, so the thread loads one 16-byte V chunk (dims
// g * HD/8 ...) of each of its keys 2 q4, 2 q4 + 1, 8 + 2 q4, 9 + 2 q4 and pairs their halves by byte_perm. Online
// softmax per row (head) over the 4 lanes of a row group; warp w takes tile w of each 128-key chunk, its next
// chunk's K issued before this one's softmax, its V before the next scores. Before pdl_wait: indices, sinks, the
// RoPE sines and (fused) the cached K/V; after it: q, the own token's k/v, the math, then decode_merge_tail or,
// CLUSTER (variant 3), decode_merge_cluster.
//
// RING (variants 4 and 5; head dim 64, the planner's choice there since session 16): the chunks' K and V rows go
// through a ring of kMmaRingStages stages in shared memory by cp.async, issued kMmaRingStages - 1 chunks ahead by
// all 256 threads (a thread a key, half its row's 16-byte pieces, K and V), instead of each warp's next tile in
// registers one chunk ahead: several chunks' bytes in flight a block where the register form had one K or V tile a
// warp (and 128 registers with spills).
// The stage rows are swizzled so a quarter warp's 16-byte fragment loads hit distinct banks: K piece p of row r at
// p ^ 4 (r & 1) (a quarter warp reads rows r, r + 1 at pieces 0..3 or 4..7), V at p ^ (r & 6) (rows 2 q4 + c,
// piece g). The warps' partials (wo) reuse the ring after the last chunk.
template <int G, int HD, bool CLUSTER, bool RING>
__global__ void __launch_bounds__(32 * kMmaWarps, kMmaBlocksPerSm) attn_decode_mma(AttentionCommon c, const int32_t* __restrict__ tokens,
                                                                    int keys_per_split, int max_splits,
                                                                    float* __restrict__ ws, uint32_t* __restrict__ counters,
                                                                    const float* __restrict__ inv_freq, float attn_factor,
                                                                    const int32_t* __restrict__ slot) {
  static_assert(G <= 16 && (HD == 32 || HD == 64), "attn_decode_mma: G <= 16, HD 32 or 64");
  constexpr int NW = kMmaWarps, NT = 32 * NW;
  constexpr int HALF = HD / 2;
  constexpr int KS = HD / 16;  // k-steps of the scores
  constexpr int KW = HD / 8;   // 32-bit K words a thread holds per key row (dims of chunks q4, q4 + 4)
  constexpr int NJ = HD / 8;   // n-tiles of P V
  constexpr int VW = NJ / 2;   // 32-bit V words a thread holds per key (NJ dims)
  constexpr int UNITS = G * HD / 4;
  static_assert(!RING || HD == 64, "attn_decode_mma: the ring's swizzle is head dim 64's");
  __shared__ __align__(16) uint16_t k_own[HD], v_own[HD];
  __shared__ __align__(16) float wo_static[RING ? 4 : NW * G * HD];
  extern __shared__ __align__(1024) unsigned char mma_ring[];  // RING: the ring (dynamic), then wo
  float (&wo)[NW][G][HD] = *reinterpret_cast<float (*)[NW][G][HD]>(RING ? reinterpret_cast<float*>(mma_ring) : wo_static);
  __shared__ float wm[NW][G], wl[NW][G];
  __shared__ int is_last;
  __shared__ float bm[G], bl[G];  // CLUSTER: the block's merged partial (max, sum) per head
  const int i = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, q4 = lane & 3;
  const float sink_first = tid < UNITS ? c.sinks[kvh * G + tid * 4 / HD] : 0.f;
  const int t = tokens[i];
  const int seq = c.tok_seq[t];
  int lo, hi;
  key_range(c.pos[t], c.window, &lo, &hi);
  const int nsplit = (hi - lo + keys_per_split) / keys_per_split;
  const int s_begin = lo + split * keys_per_split;
  // A split past the token's keys: gone, except in a cluster, where it still meets the barriers with an empty part.
  const bool empty = s_begin > hi;
  if (!CLUSTER && empty) return;
  const int s_end = empty ? s_begin : min(hi + 1, s_begin + keys_per_split);
  const bool fuse = inv_freq != nullptr;
  const bool own = fuse && !empty && s_end == hi + 1;
  const int32_t* bt = c.block_tables + size_t(seq) * c.max_blocks_per_seq;
  const size_t kv_row = size_t(c.nkv) * HD;
  const uint16_t* kbase = c.k_cache + size_t(kvh) * HD;
  const uint16_t* vbase = c.v_cache + size_t(kvh) * HD;
  // Keys of the thread in the chunk at c0 (tile base b = c0 + 16 warp): K rows b + 8 n + g (n = 0, 1), V rows
  // b + vkey(u) (u = 0..3); past s_end: zeros (their scores are masked).
  auto vkey = [&](int u) { return (u >> 1) * 8 + 2 * q4 + (u & 1); };
  auto slot_at = [&](int j) { return j < s_end ? bt[j / c.block_size] * c.block_size + j % c.block_size : -1; };
  uint32_t kr[2][KW], vr[4][VW];
  auto load_k = [&](int c0) {
#pragma unroll
    for (int n = 0; n < 2; n++) {
      const int sl = slot_at(c0 + 16 * warp + 8 * n + g);
#pragma unroll
      for (int v = 0; v < KW / 4; v++) {
        const uint4 x = sl >= 0 ? __ldg(reinterpret_cast<const uint4*>(kbase + size_t(sl) * kv_row + 8 * (q4 + 4 * v)))
                                : make_uint4(0, 0, 0, 0);
        kr[n][4 * v] = x.x, kr[n][4 * v + 1] = x.y, kr[n][4 * v + 2] = x.z, kr[n][4 * v + 3] = x.w;
      }
    }
  };
  auto load_v = [&](int c0) {
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int sl = slot_at(c0 + 16 * warp + vkey(u));
      const uint16_t* src = vbase + size_t(sl) * kv_row + g * NJ;
      if constexpr (VW == 4) {
        const uint4 x = sl >= 0 ? __ldg(reinterpret_cast<const uint4*>(src)) : make_uint4(0, 0, 0, 0);
        vr[u][0] = x.x, vr[u][1] = x.y, vr[u][2] = x.z, vr[u][3] = x.w;
      } else {
        const uint2 x = sl >= 0 ? __ldg(reinterpret_cast<const uint2*>(src)) : make_uint2(0, 0);
        vr[u][0] = x.x, vr[u][1] = x.y;
      }
    }
  };
  // RING: chunk c0 into stage st (zeros past s_end, so masked keys' V is finite), one group a chunk; and the
  // fragments of chunk `it`'s stage as load_k / load_v leave them in registers.
  constexpr int KROW = HD * 2, HALF_PIECES = HD / 16;  // bytes a key row; a thread's pieces of it
  constexpr int CHUNK_BYTES = kMmaChunk * KROW, STAGE_BYTES = 2 * CHUNK_BYTES;
  const uint32_t ring_s = static_cast<uint32_t>(__cvta_generic_to_shared(mma_ring));
  const int rk = tid >> 1, rp0 = (tid & 1) * HALF_PIECES;  // the thread's key of a chunk and first piece
  auto ring_issue = [&](int c0, int st) {
    if (c0 < s_end) {
      const int sl = slot_at(c0 + rk);
      const uint16_t* ks = kbase + size_t(sl < 0 ? 0 : sl) * kv_row;
      const uint16_t* vs = vbase + size_t(sl < 0 ? 0 : sl) * kv_row;
      const uint32_t kd = ring_s + uint32_t(st * STAGE_BYTES + rk * KROW), vd = kd + CHUNK_BYTES;
#pragma unroll
      for (int j = 0; j < HALF_PIECES; j++) {
        const int pc = rp0 + j;
        cp_async16_zfill_s(kd + uint32_t(((pc ^ ((rk & 1) * 4)) << 4)), ks + 8 * pc, sl >= 0);
        cp_async16_zfill_s(vd + uint32_t(((pc ^ (rk & 6)) << 4)), vs + 8 * pc, sl >= 0);
      }
    }
    cp_async_commit();
  };
  auto ring_k = [&](int st) {
    const unsigned char* base = mma_ring + st * STAGE_BYTES;
#pragma unroll
    for (int n = 0; n < 2; n++) {
      const int r = 16 * warp + 8 * n + g;
#pragma unroll
      for (int v = 0; v < KW / 4; v++) {
        const uint4 x = *reinterpret_cast<const uint4*>(base + r * KROW + (((q4 + 4 * v) ^ ((r & 1) * 4)) << 4));
        kr[n][4 * v] = x.x, kr[n][4 * v + 1] = x.y, kr[n][4 * v + 2] = x.z, kr[n][4 * v + 3] = x.w;
      }
    }
  };
  auto ring_v = [&](int st) {
    const unsigned char* base = mma_ring + st * STAGE_BYTES + CHUNK_BYTES;
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int r = 16 * warp + vkey(u);
      const uint4 x = *reinterpret_cast<const uint4*>(base + r * KROW + ((g ^ (r & 6)) << 4));
      vr[u][0] = x.x, vr[u][1] = x.y, vr[u][2] = x.z, vr[u][3] = x.w;
    }
  };
  auto ring_prologue = [&]() {
#pragma unroll
    for (int st = 0; st < kMmaRingStages - 1; st++) ring_issue(s_begin + st * kMmaChunk, st);
  };
  // RoPE (fused): the thread's q dims are chunks q4 (+ 4): frequencies f0 + e with one f0 for both chunks; the own
  // k head's thread tid < HD needs frequency tid % HALF. The same expressions as rope_kv_write.
  const float p = float(hi);
  const int f0 = (8 * q4) % HALF;
  float cs[8], sn[8], cs_k = 0.f, sn_k = 0.f;
  if (fuse) {
#pragma unroll
    for (int e = 0; e < 8; e++) {
      sincosf(p * inv_freq[f0 + e], &sn[e], &cs[e]);
      cs[e] *= attn_factor;
      sn[e] *= attn_factor;
    }
    if (own && tid < HD) {
      sincosf(p * inv_freq[tid % HALF], &sn_k, &cs_k);
      cs_k *= attn_factor;
      sn_k *= attn_factor;
    }
    if constexpr (RING) {
      ring_prologue();
    } else {
      load_k(s_begin);
      load_v(s_begin);
    }
  }
  pdl_wait();
  pdl_trigger();
  if (!fuse) {
    if constexpr (RING) {
      ring_prologue();
    } else {
      load_k(s_begin);
      load_v(s_begin);
    }
  }

  // q as the A fragments: rows g and g + 8 (heads kvh * G + row; zero past G), the K words' dims, scaled.
  const float* qrow = c.q + size_t(t) * c.ldq;
  uint32_t qh[2][KW], ql[2][KW];
#pragma unroll
  for (int rr = 0; rr < 2; rr++) {
    const int h = g + 8 * rr;
#pragma unroll
    for (int v = 0; v < KW / 4; v++) {
      const int ch = q4 + 4 * v;
      float x[8];
      if (h < G) {
        const float* qh_ = qrow + (kvh * G + h) * HD;
        if (fuse) {
          const bool lo_half = 8 * ch < HALF;
          const float4 a0 = *reinterpret_cast<const float4*>(qh_ + f0), a1 = *reinterpret_cast<const float4*>(qh_ + f0 + 4);
          const float4 b0 = *reinterpret_cast<const float4*>(qh_ + f0 + HALF);
          const float4 b1 = *reinterpret_cast<const float4*>(qh_ + f0 + HALF + 4);
          const float x1[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
          const float x2[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
          for (int e = 0; e < 8; e++)
            x[e] = (lo_half ? x1[e] * cs[e] - x2[e] * sn[e] : x2[e] * cs[e] + x1[e] * sn[e]) * c.scale;
        } else {
          const float4 a = *reinterpret_cast<const float4*>(qh_ + 8 * ch);
          const float4 b = *reinterpret_cast<const float4*>(qh_ + 8 * ch + 4);
          x[0] = a.x * c.scale, x[1] = a.y * c.scale, x[2] = a.z * c.scale, x[3] = a.w * c.scale;
          x[4] = b.x * c.scale, x[5] = b.y * c.scale, x[6] = b.z * c.scale, x[7] = b.w * c.scale;
        }
      } else {
#pragma unroll
        for (int e = 0; e < 8; e++) x[e] = 0.f;
      }
#pragma unroll
      for (int w = 0; w < 4; w++) split_bf16x2(x[2 * w], x[2 * w + 1], qh[rr][4 * v + w], ql[rr][4 * v + w]);
    }
  }
  // Fused rope: the split holding the token's own position rotates its k head and writes k and v to the cache slot;
  // the threads holding that key take them from shared memory (the cache rows they loaded are stale).
  if (own) {
    if (tid < HD) {
      const float* kh = qrow + size_t(c.nq + kvh) * HD;
      const float* vh = qrow + size_t(c.nq + c.nkv + kvh) * HD;
      const int f = tid % HALF;
      const float x1 = kh[f], x2 = kh[f + HALF];
      const float kr0 = tid < HALF ? x1 * cs_k - x2 * sn_k : x2 * cs_k + x1 * sn_k;
      const uint16_t kb = __bfloat16_as_ushort(__float2bfloat16(kr0));
      const uint16_t vb = __bfloat16_as_ushort(__float2bfloat16(vh[tid]));
      k_own[tid] = kb;
      v_own[tid] = vb;
      const int s = slot[t];
      if (s >= 0) {
        const size_t off = (size_t(s) * c.nkv + kvh) * HD + tid;
        const_cast<uint16_t*>(c.k_cache)[off] = kb;
        const_cast<uint16_t*>(c.v_cache)[off] = vb;
      }
    }
    __syncthreads();
  }

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, acc[NJ][4];
#pragma unroll
  for (int j = 0; j < NJ; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  int st = 0;  // RING: chunk c0's stage
  for (int c0 = s_begin; c0 < s_end; c0 += kMmaChunk) {
    const bool more = c0 + kMmaChunk < s_end;
    (void)more;  // RING: its loads run ahead by the ring
    const int b = c0 + 16 * warp;
    if constexpr (RING) {
      cp_async_wait<kMmaRingStages - 2>();  // chunk c0 has landed (this thread's part; the barrier: everyone's)
      __syncthreads();                      // and every warp is past the previous chunk: its stage is free
      ring_issue(c0 + (kMmaRingStages - 1) * kMmaChunk, st == 0 ? kMmaRingStages - 1 : st - 1);
      ring_k(st);
      ring_v(st);
    }
    if (own) {
#pragma unroll
      for (int n = 0; n < 2; n++)
        if (b + 8 * n + g == hi) {
#pragma unroll
          for (int v = 0; v < KW / 4; v++) {
            const uint4 x = *reinterpret_cast<const uint4*>(&k_own[8 * (q4 + 4 * v)]);
            kr[n][4 * v] = x.x, kr[n][4 * v + 1] = x.y, kr[n][4 * v + 2] = x.z, kr[n][4 * v + 3] = x.w;
          }
        }
#pragma unroll
      for (int u = 0; u < 4; u++)
        if (b + vkey(u) == hi) {
#pragma unroll
          for (int w = 0; w < VW; w++) vr[u][w] = *reinterpret_cast<const uint32_t*>(&v_own[g * NJ + 2 * w]);
        }
    }
    // S = Q K^T: s[n] = rows g, g + 8 x keys b + 8 n + 2 q4 (+1).
    float s[2][4];
#pragma unroll
    for (int n = 0; n < 2; n++) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int k = 0; k < KS; k++) {
        const uint32_t ah[4] = {qh[0][2 * k], qh[1][2 * k], qh[0][2 * k + 1], qh[1][2 * k + 1]};
        const uint32_t al[4] = {ql[0][2 * k], ql[1][2 * k], ql[0][2 * k + 1], ql[1][2 * k + 1]};
        mma_bf16_16816(s[n], ah, kr[n][2 * k], kr[n][2 * k + 1]);
        mma_bf16_16816(s[n], al, kr[n][2 * k], kr[n][2 * k + 1]);
      }
    }
    if constexpr (!RING) {
      if (more) load_k(c0 + kMmaChunk);
    }
    // Online softmax per row over the row group's 4 lanes (16 keys).
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (b + 8 * n + 2 * q4 + (e & 1) >= s_end) s[n][e] = -INFINITY;
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
      float mx = fmaxf(fmaxf(s[0][2 * rr], s[0][2 * rr + 1]), fmaxf(s[1][2 * rr], s[1][2 * rr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mn = fmaxf(m[rr], mx);
      const bool none = mn == -INFINITY;  // no key of the row so far
      const float al = none ? 1.f : __expf(m[rr] - mn);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 2; n++)
#pragma unroll
        for (int e = 2 * rr; e < 2 * rr + 2; e++) {
          s[n][e] = none ? 0.f : __expf(s[n][e] - mn);
          sum += s[n][e];
        }
      l[rr] = l[rr] * al + sum;
      m[rr] = mn;
#pragma unroll
      for (int j = 0; j < NJ; j++) acc[j][2 * rr] *= al, acc[j][2 * rr + 1] *= al;
    }
    // O += P V: P's A fragment is the two score tiles' accumulators (rows g, g + 8; keys 2 q4.., 8 + 2 q4..).
    uint32_t ph[4], pl[4];
    split_bf16x2(s[0][0], s[0][1], ph[0], pl[0]);
    split_bf16x2(s[0][2], s[0][3], ph[1], pl[1]);
    split_bf16x2(s[1][0], s[1][1], ph[2], pl[2]);
    split_bf16x2(s[1][2], s[1][3], ph[3], pl[3]);
#pragma unroll
    for (int j = 0; j < NJ; j++) {
      const uint32_t sel = (j & 1) ? 0x7632u : 0x5410u;
      const uint32_t b0 = __byte_perm(vr[0][j >> 1], vr[1][j >> 1], sel);
      const uint32_t b1 = __byte_perm(vr[2][j >> 1], vr[3][j >> 1], sel);
      mma_bf16_16816(acc[j], ph, b0, b1);
      mma_bf16_16816(acc[j], pl, b0, b1);
    }
    if constexpr (RING) {
      st = st + 1 == kMmaRingStages ? 0 : st + 1;
    } else {
      if (more) load_v(c0 + kMmaChunk);
    }
  }
  if constexpr (RING) {  // wo reuses the ring: every copy landed (empty groups included), every warp done reading
    cp_async_wait<0>();
    __syncthreads();
  }
  // The warp's partial: row sums over the row group, then acc[j][2 rr + x] is head g + 8 rr, dim (2 q4 + x) NJ + j.
#pragma unroll
  for (int rr = 0; rr < 2; rr++) {
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 1);
    l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 2);
    const int h = g + 8 * rr;
    if (h < G) {
#pragma unroll
      for (int j = 0; j < NJ; j++) {
        wo[warp][h][2 * q4 * NJ + j] = acc[j][2 * rr];
        wo[warp][h][(2 * q4 + 1) * NJ + j] = acc[j][2 * rr + 1];
      }
      if (q4 == 0) wm[warp][h] = m[rr], wl[warp][h] = l[rr];
    }
  }
  __syncthreads();
  if constexpr (CLUSTER)
    decode_merge_cluster<G, HD, NW>(c, t, kvh, wo, wm, wl, bm, bl);
  else
    decode_merge_tail<G, HD, NW, NT>(c, i, t, kvh, split, nsplit, max_splits, ws, counters, sink_first, wo, wm, wl,
                                     is_last);
}

constexpr int KT = 32;

template <int G, int HD>
__global__ void __launch_bounds__(kPrefillTileTokens* G) attn_prefill_tile(AttentionCommon c,
                                                                          const int32_t* __restrict__ tiles) {
  __shared__ __align__(16) float Ks[KT][HD];
  __shared__ __align__(16) float Vs[KT][HD];
  __shared__ int range_lo, range_hi;
  pdl_wait();
  pdl_trigger();
  const int tile = blockIdx.x, kvh = blockIdx.y, tid = threadIdx.x;
  const int first = tiles[2 * tile], count = tiles[2 * tile + 1];
  const int ti = tid / G, hh = tid % G;
  const bool active = ti < count;
  const int t = first + (active ? ti : 0);
  const int seq = c.tok_seq[first];
  int lo, hi;
  key_range(c.pos[t], c.window, &lo, &hi);
  if (tid == 0) {
    range_lo = INT_MAX;
    range_hi = -1;
  }
  __syncthreads();
  if (active) {
    atomicMin(&range_lo, lo);
    atomicMax(&range_hi, hi);
  }
  float q[HD], acc[HD];
  const int h = kvh * G + hh;
#pragma unroll
  for (int d = 0; d < HD; d++) {
    q[d] = active ? c.q[size_t(t) * c.ldq + h * HD + d] * c.scale : 0.f;
    acc[d] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  __syncthreads();
  // Key chunks start at multiples of KT, not at the tile's first key: a chunk outside a row's range leaves its
  // state bit for bit unchanged, so each row's result depends on its own keys only, never on which rows share its
  // tile (a prompt prefilled in one chunk or several, or decoded a token at a time as 1-token tiles, gives the
  // same bits).
  const int blo = range_lo, bhi = range_hi;
  for (int k0 = blo & ~(KT - 1); k0 <= bhi; k0 += KT) {
    // Stage KT keys (bf16 -> fp32): D/8 chunks of 8 values per key row.
    for (int e = tid; e < KT * (HD / 8); e += blockDim.x) {
      const int j = e / (HD / 8), ch = e % (HD / 8);
      float kf[8], vf[8];
      if (k0 + j >= blo && k0 + j <= bhi) {
        const size_t sl = slot_of(c, seq, k0 + j);
        unpack8(__ldg(reinterpret_cast<const uint4*>(c.k_cache + (sl * c.nkv + kvh) * HD) + ch), kf);
        unpack8(__ldg(reinterpret_cast<const uint4*>(c.v_cache + (sl * c.nkv + kvh) * HD) + ch), vf);
      } else {
#pragma unroll
        for (int x = 0; x < 8; x++) kf[x] = vf[x] = 0.f;
      }
#pragma unroll
      for (int x = 0; x < 8; x++) {
        Ks[j][ch * 8 + x] = kf[x];
        Vs[j][ch * 8 + x] = vf[x];
      }
    }
    __syncthreads();
    float s[KT];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < KT; j++) {
      const int key = k0 + j;
      float dot = 0.f;
#pragma unroll
      for (int d = 0; d < HD; d += 4) {
        const float4 kv = *reinterpret_cast<const float4*>(&Ks[j][d]);
        dot = fmaf(q[d], kv.x, dot);
        dot = fmaf(q[d + 1], kv.y, dot);
        dot = fmaf(q[d + 2], kv.z, dot);
        dot = fmaf(q[d + 3], kv.w, dot);
      }
      s[j] = (active && key >= lo && key <= hi) ? dot : -INFINITY;
      mx = fmaxf(mx, s[j]);
    }
    const float m_new = fmaxf(m, mx);
    if (m_new != -INFINITY) {
      const float al = __expf(m - m_new);
      l *= al;
#pragma unroll
      for (int d = 0; d < HD; d++) acc[d] *= al;
#pragma unroll
      for (int j = 0; j < KT; j++) {
        const float pj = __expf(s[j] - m_new);
        l += pj;
#pragma unroll
        for (int d = 0; d < HD; d += 4) {
          const float4 vv = *reinterpret_cast<const float4*>(&Vs[j][d]);
          acc[d] = fmaf(pj, vv.x, acc[d]);
          acc[d + 1] = fmaf(pj, vv.y, acc[d + 1]);
          acc[d + 2] = fmaf(pj, vv.z, acc[d + 2]);
          acc[d + 3] = fmaf(pj, vv.w, acc[d + 3]);
        }
      }
      m = m_new;
    }
    __syncthreads();
  }
  if (!active) return;
  const float sink = c.sinks[h];
  const float M = fmaxf(m, sink);
  const float w = __expf(m - M);
  const float inv = 1.f / (l * w + __expf(sink - M));
  uint16_t* out = c.out + size_t(t) * c.nq * HD + h * HD;
#pragma unroll
  for (int d = 0; d < HD; d += 2) {
    const __nv_bfloat162 pr = __floats2bfloat162_rn(acc[d] * w * inv, acc[d + 1] * w * inv);
    *reinterpret_cast<__nv_bfloat162*>(out + d) = pr;
  }
}

void check_common(const AttentionCommon& c, const char* who) {
  HM_REQUIRE(c.q && c.k_cache && c.v_cache && c.block_tables && c.tok_seq && c.pos && c.sinks && c.out, who);
  HM_REQUIRE(c.D == 16 || c.D == 32 || c.D == 64, who);
  HM_REQUIRE(c.nkv > 0 && c.nq % c.nkv == 0, who);
  HM_REQUIRE(c.block_size > 0 && c.max_blocks_per_seq > 0 && c.ldq >= c.nq * c.D, who);
  const int G = c.nq / c.nkv;
  HM_REQUIRE(G == 1 || G == 2 || G == 4 || G == 8 || G == 16, who);
}


}  // namespace

size_t attention_decode_workspace_floats(int num_tokens, int nq, int D, int max_splits) {
  return size_t(num_tokens) * nq * max_splits * (D + 2);
}

int attention_keys_per_split(int max_keys, int max_splits) {
  const int per = (max_keys + max_splits - 1) / max_splits;
  return std::max(kDecodeChunk, (per + kDecodeChunk - 1) / kDecodeChunk * kDecodeChunk);
}

int attention_decode_keys_per_split(int max_keys, int num_tokens, int nkv, int num_sms, int max_splits,
                                    int blocks_per_sm) {
  const int rows = std::max(1, num_tokens * nkv);
  const int fill = (std::max(1, blocks_per_sm) * std::max(1, num_sms) + rows - 1) / rows;
  return attention_keys_per_split(max_keys, std::max(1, std::min(fill, max_splits)));
}

AttentionDecodePlan attention_decode_plan(int max_keys, int num_tokens, int nq, int nkv, int D, int num_sms,
                                          int max_splits, bool clusters) {
  AttentionDecodePlan p;
  // The tensor-core kernel also wins for many tokens, except where every sequence reads at most 128 keys at the
  // largest batch timed (H200, HM_OP_BENCH bench_attention_decode, us per layer with PDL, split + combine against
  // the tensor-core kernel at its fill rule): T = 16 ctx 1..4096 full 72.2 / 38.4, sliding 13.2 / 4.4; T = 64
  // ctx 1024 full 104.8 / 58.2, sliding 18.4 / 13.6; T = 256 ctx 1..2048 full 337.7 / 266.1 but sliding 49.8 /
  // 55.8. Between 64 and 256 tokens at 128 keys: unmeasured, the pair kept.
  const bool mma_many = D >= 32 && (num_tokens <= kMmaManyMaxTokens || max_keys > 128);
  if (num_tokens > kMergedMaxTokens && !mma_many) {  // the previous pair's rule: one split up to 128 keys, else the cap
    p.variant = 1;
    p.keys_per_split = max_keys <= 128 ? 128 : attention_keys_per_split(max_keys, max_splits);
  } else if (D >= 32) {  // the tensor-core kernel: its fill rule, whole 128-key chunks a split (no idle warp)
    p.variant = 2;
    const int kps = attention_decode_keys_per_split(max_keys, num_tokens, nkv, num_sms, max_splits, kMmaBlocksPerSm);
    p.keys_per_split = (kps + kMmaChunk - 1) / kMmaChunk * kMmaChunk;
    // Batch 1, 2..8 splits: the same splits merged in one cluster beat the workspace merge on the H200 (2026-12-01,
    // us per layer with PDL, full layers: 512 keys 4.45 vs 5.52, 1024 keys 5.18 vs 5.53); one split: no merge to
    // save (3.80 vs 3.71 sliding); at batch 8 the clusters lost (4 splits at 1024 keys: 21.1 vs 12.7).
    const int splits = (max_keys + p.keys_per_split - 1) / p.keys_per_split;
    if (clusters && num_tokens == 1 && splits >= 2 && splits <= kMaxClusterSplits) p.variant = 3;
  } else {
    p.head_slices = std::min(kDecodeHeadSlices, nq / std::max(1, nkv));
    p.keys_per_split = attention_decode_keys_per_split(max_keys, num_tokens, nkv, num_sms, max_splits,
                                                       p.head_slices > 1 ? 1 : kDecodeBlocksPerSm);
  }
  p.splits = (max_keys + p.keys_per_split - 1) / p.keys_per_split;
  // At head dim 64 the tensor-core kernels run in their ring form (variants 4, 5: the same bits, faster at every
  // full-layer row of bench_attention_decode, e.g. T = 64 at 1k 58.4 -> 49.9 us, T = 1 at 32k 32.0 -> 27.7;
  // engine 20b S = 64 / 256 7,684 -> 7,876 / 17,437 -> 18,128 tok/s, H200, session 16).
  // HARMONIUM_ATTN_DECODE_RING=0 keeps the register form (variants 2, 3), to compare.
  static const bool ring = [] {
    const char* e = std::getenv("HARMONIUM_ATTN_DECODE_RING");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  if (ring && D == 64 && (p.variant == 2 || p.variant == 3)) p.variant += 2;
  return p;
}

// Instantiates KERNEL<G, D> for the supported GQA groups and head dims and launches it.
#define HM_ATTN_DISPATCH(KERNEL, G, D, ...)                                              \
  do {                                                                                   \
    auto go = [&](auto g, auto d) { launch(KERNEL<decltype(g)::value, decltype(d)::value>, __VA_ARGS__); }; \
    auto by_d = [&](auto g) {                                                            \
      if ((D) == 16) go(g, std::integral_constant<int, 16>{});                           \
      else if ((D) == 32) go(g, std::integral_constant<int, 32>{});                      \
      else go(g, std::integral_constant<int, 64>{});                                     \
    };                                                                                   \
    switch (G) {                                                                         \
      case 1: by_d(std::integral_constant<int, 1>{}); break;                             \
      case 2: by_d(std::integral_constant<int, 2>{}); break;                             \
      case 4: by_d(std::integral_constant<int, 4>{}); break;                             \
      case 8: by_d(std::integral_constant<int, 8>{}); break;                             \
      default: by_d(std::integral_constant<int, 16>{}); break;                           \
    }                                                                                    \
  } while (0)

// Calls f(G, D) with both as integral constants (GQA groups 1, 2, 4, 8, 16; head dims 16, 32, 64).
template <class F>
void with_group_and_dim(int G, int D, F&& f) {
  auto by_d = [&](auto g) {
    if (D == 16) f(g, std::integral_constant<int, 16>{});
    else if (D == 32) f(g, std::integral_constant<int, 32>{});
    else f(g, std::integral_constant<int, 64>{});
  };
  switch (G) {
    case 1: by_d(std::integral_constant<int, 1>{}); break;
    case 2: by_d(std::integral_constant<int, 2>{}); break;
    case 4: by_d(std::integral_constant<int, 4>{}); break;
    case 8: by_d(std::integral_constant<int, 8>{}); break;
    default: by_d(std::integral_constant<int, 16>{}); break;
  }
}

void attention_decode(const AttentionDecodeParams& p, cudaStream_t stream) {
  check_common(p.c, "attention_decode");
  HM_REQUIRE(p.tokens && p.workspace && p.keys_per_split > 0 && p.keys_per_split % kDecodeChunk == 0,
             "attention_decode");
  HM_REQUIRE(p.max_splits >= 1 && p.max_splits <= 65535, "attention_decode");
  HM_REQUIRE(p.variant >= 0 && p.variant <= 5, "attention_decode");
  HM_REQUIRE(p.variant < 2 || p.c.D >= 32, "attention_decode (variants 2, 3: head dim 32 or 64)");
  HM_REQUIRE(p.variant < 4 || p.c.D == 64, "attention_decode (variants 4, 5: head dim 64)");
  HM_REQUIRE((p.variant != 3 && p.variant != 5) || p.max_splits <= kMaxClusterSplits,
             "attention_decode (variants 3, 5: at most 8 splits)");
  HM_REQUIRE(!p.inv_freq || p.slot, "attention_decode (fused rope)");
  if (p.num_tokens == 0) return;
  const dim3 grid(p.num_tokens, p.c.nkv, p.max_splits);
  const int G = p.c.nq / p.c.nkv;
  HM_REQUIRE(p.variant == 1 || p.variant == 3 || p.variant == 5 || p.max_splits == 1 || p.counters,
             "attention_decode (counters)");
  if (p.variant >= 2) {
    auto go = [&](auto g, auto d) {
      constexpr int GG = decltype(g)::value, DD = decltype(d)::value;
      auto run = [&](auto cl, auto rg) {
        constexpr bool CL = decltype(cl)::value, RG = decltype(rg)::value;
        constexpr auto kernel = attn_decode_mma<GG, DD, CL, RG>;
        const size_t smem = RG ? mma_ring_bytes<DD>() : 0;
        if constexpr (RG) allow_dynamic_smem<kernel>(smem);
        if constexpr (CL)
          launch_clustered(kernel, grid, dim3(32 * kMmaWarps), smem, stream, p.c.pdl, unsigned(p.max_splits), p.c,
                           p.tokens, p.keys_per_split, p.max_splits, p.workspace, p.counters, p.inv_freq,
                           p.attn_factor, p.slot);
        else
          launch(kernel, grid, dim3(32 * kMmaWarps), smem, stream, p.c.pdl, p.c, p.tokens, p.keys_per_split,
                 p.max_splits, p.workspace, p.counters, p.inv_freq, p.attn_factor, p.slot);
      };
      using T_ = std::true_type;
      using F_ = std::false_type;
      if constexpr (DD == 64) {
        if (p.variant == 4) return run(F_{}, T_{});
        if (p.variant == 5) return run(T_{}, T_{});
      }
      if constexpr (DD >= 32) {
        if (p.variant == 3) return run(T_{}, F_{});
        run(F_{}, F_{});
      }
    };
    with_group_and_dim(G, p.c.D, go);
    return;
  }
  if (p.variant == 0) {
    HM_REQUIRE(p.head_slices == 1 || p.head_slices == 2 || p.head_slices == 4, "attention_decode (head_slices)");
    const int hs = std::min(p.head_slices, G);
    auto go = [&](auto g, auto d) {
      constexpr int GG = decltype(g)::value, DD = decltype(d)::value;
      auto run = [&](auto k) {
        constexpr int HS = decltype(k)::value;
        launch(attn_decode_merged<GG, DD, HS>, grid, dim3(128 * HS), 0, stream, p.c.pdl, p.c, p.tokens,
               p.keys_per_split, p.max_splits, p.workspace, p.counters, p.inv_freq, p.attn_factor, p.slot);
      };
      if constexpr (GG >= 4) {
        if (hs == 4) return run(std::integral_constant<int, 4>{});
      }
      if constexpr (GG >= 2) {
        if (hs >= 2) return run(std::integral_constant<int, 2>{});
      }
      run(std::integral_constant<int, 1>{});
    };
    with_group_and_dim(G, p.c.D, go);
    return;
  }
  HM_ATTN_DISPATCH(attn_decode_split, G, p.c.D, grid, dim3(128), 0, stream, p.c.pdl, p.c, p.tokens,
                   p.keys_per_split, p.max_splits, p.workspace, p.inv_freq, p.attn_factor, p.slot);
  if (p.max_splits == 1) return;  // the split kernel wrote the output itself
  const dim3 cgrid(p.num_tokens, p.c.nq), cblock(p.c.D);
  const float* ws = p.workspace;
  if (p.c.D == 16)
    launch(attn_decode_combine<16>, cgrid, cblock, 0, stream, p.c.pdl, p.c, p.tokens, p.keys_per_split, p.max_splits, ws);
  else if (p.c.D == 32)
    launch(attn_decode_combine<32>, cgrid, cblock, 0, stream, p.c.pdl, p.c, p.tokens, p.keys_per_split, p.max_splits, ws);
  else
    launch(attn_decode_combine<64>, cgrid, cblock, 0, stream, p.c.pdl, p.c, p.tokens, p.keys_per_split, p.max_splits, ws);
}

void attention_prefill(const AttentionPrefillParams& p, cudaStream_t stream) {
  check_common(p.c, "attention_prefill");
  HM_REQUIRE(p.tiles, "attention_prefill");
  HM_REQUIRE(p.variant >= kPrefillAuto && p.variant <= kPrefillMma, "attention_prefill");
  if (p.variant != kPrefillTile && p.c.D == 64) {
    const int G = p.c.nq / p.c.nkv, minb = G < 8 ? 2 : 1;
    const bool wg = attention_prefill_wgmma_ok(p.c);
    switch (p.variant) {
      case kPrefillAuto:
      case kPrefillWgmmaQlo:
        return wg ? attention_prefill_wgmma(p, false, stream) : attention_prefill_mma(p, 1, minb, true, stream, false);
      case kPrefillWgmma:
        return wg ? attention_prefill_wgmma(p, true, stream) : attention_prefill_mma(p, 1, minb, true, stream);
      case kPrefillMmaQlo: return attention_prefill_mma(p, 1, minb, true, stream, false);
      case kPrefillMma: return attention_prefill_mma(p, 1, minb, true, stream);
      default:  // the bf16 bench shapes, G = 8 only
        if (G != 8) return attention_prefill_mma(p, 1, minb, true, stream);
        return attention_prefill_mma(p, p.variant == kPrefillMma2 ? 2 : 1, p.variant == kPrefillMmaBf16 ? 2 : 1,
                                     false, stream);
    }
  }
  if (p.num_tiles == 0) return;
  const dim3 grid(p.num_tiles, p.c.nkv);
  const int G = p.c.nq / p.c.nkv;
  HM_ATTN_DISPATCH(attn_prefill_tile, G, p.c.D, grid, dim3(kPrefillTileTokens * G), 0, stream, p.c.pdl, p.c,
                   p.tiles);
}

int attention_prefill_env_variant() {
  static const int v = [] {
    const char* e = std::getenv("HARMONIUM_ATTN_PREFILL");
    if (!e) return kPrefillAuto;
    const struct {
      const char* name;
      int variant;
    } names[] = {{"tile", kPrefillTile},   {"mma", kPrefillMma},     {"qlo", kPrefillMmaQlo},
                 {"bf16", kPrefillMmaBf16}, {"wgmma", kPrefillWgmma}, {"wgmma_qlo", kPrefillWgmmaQlo}};
    for (const auto& n : names)
      if (std::strcmp(e, n.name) == 0) return n.variant;
    return kPrefillAuto;
  }();
  return v;
}

}  // namespace hm::cuda
