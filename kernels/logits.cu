// Logit narrowing. The statistics (argmax, max, logsumexp) and a small top-k (k <= kSplitMaxK, top_logprobs) are
// split over the row: blocks of 2048 tokens each (narrow_slices) reduce their slice to (max, sum of exp, best
// token) and pick their own k best by k rounds of block argmax, then one block per row (narrow_merge) combines the
// slices in a fixed order and ranks the candidates that can reach the top k. The slices depend on the vocabulary
// only, so a row's logsumexp (a float sum) is the same bits whatever the batch around it; the top-k order (logit
// desc, id asc) is total, so its result is the same token for token whatever the split.
// A larger k (up to 256) also takes narrow_rows, one block of 1024 threads per row:
//   1. radix select on order-preserving uint32 keys (4 passes of 8 bits) -> the exact k-th largest key T and how
//      many elements equal to T to take;
//   2. collect keys > T with an atomic counter, keys == T in ascending id order (block-wide ordered scan, so ties
//      keep the lower ids), then a bitonic sort of 256 entries by (logit desc, id asc).
// Measured on the H200 (HM_OP_BENCH=1, V = 201088, rows 1 / 64, us): the previous one-block-per-row statistics
// pass (NarrowLogitsParams::one_block_stats, kept to compare) 27 / 40; narrow_rows' top-k 163 / 217 whatever k;
// the previous split merge (a binary search per slice list per candidate) k = 5 66 / 125, k = 20 246 / 416.
// Where rows * top_k is large (rows_path) narrow_rows alone serves the batch: it replays the split passes'
// statistics in their order (sliced_stats), so a row's logsumexp keeps its bits whichever path its batch takes.
#include <climits>

#include "common.cuh"
#include "logits.h"

namespace hm::cuda {
namespace {

constexpr int NT = 1024;
using u64 = unsigned long long;

// top-k up to this is split over the row (k rounds of block argmax a slice; above, narrow_rows' radix select).
constexpr int kSplitMaxK = 32;
constexpr int kSplitNT = 256, kSplitPer = 8;       // a slice block: 256 threads, 8 tokens each
constexpr int kSplitSlice = kSplitNT * kSplitPer;  // tokens a slice block covers
constexpr int kSplitMaxCand = 4096;                // candidates of a row the merge holds in shared memory

int split_blocks(int vocab) { return (vocab + kSplitSlice - 1) / kSplitSlice; }
bool split_topk(int vocab, int k) { return k > 1 && k <= kSplitMaxK && split_blocks(vocab) * k <= kSplitMaxCand; }

// -0 keyed as +0 (the reference compares floats: they tie, the lower id first).
__device__ __forceinline__ uint32_t order_key(float f) {
  f = __fadd_rn(f, 0.f);
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The canonical order as one integer: larger = earlier (logit desc, id asc); 0 is no token.
__device__ __forceinline__ u64 composite(float v, int id) {
  return (u64(order_key(v)) << 32) | (0xffffffffu - uint32_t(id));
}
__device__ __forceinline__ int composite_id(u64 c) { return int(0xffffffffu - uint32_t(c & 0xffffffffu)); }

__device__ __forceinline__ u64 warp_max(u64 v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// (max, sum of exp(v - max)) of two parts; commutative, so both lanes of a shuffle pair agree.
__device__ __forceinline__ void combine_ms(float& m, float& s, float om, float os) {
  const float nm = fmaxf(m, om);
  s = (m == -INFINITY ? 0.f : s * __expf(m - nm)) + (om == -INFINITY ? 0.f : os * __expf(om - nm));
  m = nm;
}

// The slice pass both narrow_slices and sliced_stats run, so their statistics are the same bits: thread t of a
// slice block takes tokens lo + j * kSplitNT + t (its values as composites in c, 0 past the vocabulary, and their
// best), then its warp's (max, sum of exp(v - max), best composite) by shuffles, in every lane.
__device__ __forceinline__ void slice_pass(const float* x, int vocab, int lo, int t, u64 (&c)[kSplitPer], u64& best,
                                           float& m, float& s, u64& warp_best) {
  float v[kSplitPer];
  best = 0;
  m = -INFINITY;
#pragma unroll
  for (int j = 0; j < kSplitPer; j++) {
    const int i = lo + j * kSplitNT + t;
    v[j] = i < vocab ? x[i] : -INFINITY;
    c[j] = i < vocab ? composite(v[j], i) : 0ull;
    best = max(best, c[j]);
    m = fmaxf(m, v[j]);
  }
  s = 0.f;
  if (m != -INFINITY) {
#pragma unroll
    for (int j = 0; j < kSplitPer; j++) s += __expf(v[j] - m);
  }
  for (int o = 16; o > 0; o >>= 1) combine_ms(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  warp_best = warp_max(best);
}

// A block's warp partials (n of them, in shared memory) combined in warp order: one thread's fixed loop.
__device__ __forceinline__ void combine_warps(const float* wm, const float* ws, const u64* wb, int n, float& M, float& S,
                                              u64& B) {
  M = wm[0], S = ws[0], B = wb[0];
  for (int q = 1; q < n; q++) combine_ms(M, S, wm[q], ws[q]), B = max(B, wb[q]);
}

// narrow_rows' statistics: none (the split passes ran), online per thread (the previous kernel), or narrow_slices
// and narrow_merge's tree replayed in the block (the same bits as the split passes).
enum RowsStats : int { kStatsNone = 0, kStatsOnline = 1, kStatsSliced = 2 };
constexpr int kRowsMaxSlices = 256;  // slices narrow_rows replays itself (V <= 524288)

// The whole block of narrow_rows: argmax, max and logsumexp of the row bit for bit as narrow_slices + narrow_merge
// give them. Its four groups of 256 threads each reduce a slice (group g slices g, g + 4, ...) with narrow_slices'
// operations in its order, then warps 0-7 combine the B slices with narrow_merge's.
__device__ void sliced_stats(const float* x, int vocab, int B, int row, int32_t* argmax, float* max_logit, float* lse) {
  constexpr int G = NT / kSplitNT, W = kSplitNT / 32;
  __shared__ float g_m[G][W], g_s[G][W];
  __shared__ u64 g_b[G][W];
  __shared__ float sl_m[kRowsMaxSlices], sl_s[kRowsMaxSlices];
  __shared__ u64 sl_b[kRowsMaxSlices];
  const int tid = threadIdx.x, g = tid / kSplitNT, t = tid % kSplitNT, lane = tid & 31, wg = t >> 5;
  for (int b0 = 0; b0 < B; b0 += G) {
    const int b = b0 + g;  // b >= B: its tokens lie past the vocabulary, none
    u64 c[kSplitPer], best, wb;
    float m, s;
    slice_pass(x, vocab, b * kSplitSlice, t, c, best, m, s, wb);
    if (lane == 0) g_m[g][wg] = m, g_s[g][wg] = s, g_b[g][wg] = wb;
    __syncthreads();
    if (t == 0 && b < B) combine_warps(g_m[g], g_s[g], g_b[g], W, sl_m[b], sl_s[b], sl_b[b]);
    __syncthreads();
  }
  if (tid < kSplitNT) {  // narrow_merge's block
    float m = -INFINITY, s = 0.f;
    u64 best = 0;
    for (int b = tid; b < B; b += kSplitNT) {
      combine_ms(m, s, sl_m[b], sl_s[b]);
      best = max(best, sl_b[b]);
    }
    for (int o = 16; o > 0; o >>= 1) combine_ms(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    best = warp_max(best);
    if (lane == 0) g_m[0][wg] = m, g_s[0][wg] = s, g_b[0][wg] = best;
  }
  __syncthreads();
  if (tid == 0) {
    float M, S;
    u64 Bc;
    combine_warps(g_m[0], g_s[0], g_b[0], W, M, S, Bc);
    const int id = composite_id(Bc);
    argmax[row] = id;
    max_logit[row] = x[id];
    lse[row] = M + logf(S);
  }
}

__global__ void __launch_bounds__(NT) narrow_rows(const float* __restrict__ logits, int vocab, int ld, int k, int stats, int B,
                                                  int32_t* __restrict__ argmax, float* __restrict__ max_logit,
                                                  float* __restrict__ lse, int32_t* __restrict__ top_ids,
                                                  float* __restrict__ top_logits) {
  __shared__ float red_m[NT / 32], red_s[NT / 32];
  __shared__ int red_i[NT / 32];
  __shared__ uint32_t hist[256];
  __shared__ uint32_t sh_prefix, sh_remaining, sh_count, sh_taken, sh_equal;
  __shared__ uint32_t warp_cnt[NT / 32];
  __shared__ uint32_t cand_key[kMaxTopK];
  __shared__ int cand_id[kMaxTopK];
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float* x = logits + size_t(row) * ld;

  if (stats == kStatsSliced) sliced_stats(x, vocab, B, row, argmax, max_logit, lse);  // k > 1 (rows_path)
  // The previous statistics (one_block_stats): max / argmax / sum of exp, online per thread.
  if (stats == kStatsOnline) {
    float m = -INFINITY, s = 0.f;
    int bi = INT_MAX;
    for (int i = tid; i < vocab; i += NT) {
      const float v = x[i];
      if (v > m) {
        s = s * __expf(m - v) + 1.f;
        m = v;
        bi = i;
      } else {
        s += __expf(v - m);
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float om = __shfl_xor_sync(0xffffffffu, m, o);
      const float os = __shfl_xor_sync(0xffffffffu, s, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      const float nm = fmaxf(m, om);
      s = (m == -INFINITY ? 0.f : s * __expf(m - nm)) + (om == -INFINITY ? 0.f : os * __expf(om - nm));
      if (om > m || (om == m && oi < bi)) bi = oi;
      m = nm;
    }
    if (lane == 0) {
      red_m[warp] = m;
      red_s[warp] = s;
      red_i[warp] = bi;
    }
    __syncthreads();
    if (tid == 0) {
      float M = red_m[0], Ssum = red_s[0];
      int I = red_i[0];
      for (int w = 1; w < NT / 32; w++) {
        const float om = red_m[w], os = red_s[w];
        const float nm = fmaxf(M, om);
        Ssum = (M == -INFINITY ? 0.f : Ssum * __expf(M - nm)) + (om == -INFINITY ? 0.f : os * __expf(om - nm));
        if (om > M || (om == M && red_i[w] < I)) I = red_i[w];
        M = nm;
      }
      argmax[row] = I == INT_MAX ? 0 : I;
      max_logit[row] = M;
      lse[row] = M + logf(Ssum);
      if (k == 1) {  // the top-1 candidate is the argmax (same tie rule)
        top_ids[row] = I == INT_MAX ? 0 : I;
        top_logits[row] = M;
      }
    }
  }
  if (k <= 1) return;

  // 1. radix select of the k-th largest key.
  if (tid == 0) {
    sh_prefix = 0;
    sh_remaining = uint32_t(k);
  }
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += NT) hist[b] = 0;
    __syncthreads();
    const uint32_t prefix = sh_prefix;
    const uint32_t hi_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
    for (int i = tid; i < vocab; i += NT) {
      const uint32_t u = order_key(x[i]);
      if ((u & hi_mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      uint32_t rem = sh_remaining, cum = 0;
      int b = 255;
      for (; b > 0; b--) {
        if (cum + hist[b] >= rem) break;
        cum += hist[b];
      }
      sh_remaining = rem - cum;
      sh_prefix = prefix | (uint32_t(b) << shift);
    }
    __syncthreads();
  }
  const uint32_t T = sh_prefix;
  const int remaining = int(sh_remaining);
  const int above = k - remaining;
  for (int i = tid; i < kMaxTopK; i += NT) {
    cand_key[i] = 0;
    cand_id[i] = INT_MAX;
  }
  if (tid == 0) {
    sh_count = 0;
    sh_taken = 0;
    sh_equal = 0;
  }
  __syncthreads();
  // 2a. strictly above the threshold: exactly `above` of them; and count those equal to it.
  for (int i = tid; i < vocab; i += NT) {
    const uint32_t u = order_key(x[i]);
    if (u > T) {
      const uint32_t at = atomicAdd(&sh_count, 1u);
      if (at < uint32_t(kMaxTopK)) {
        cand_key[at] = u;
        cand_id[at] = i;
      }
    } else if (u == T) {
      atomicAdd(&sh_equal, 1u);
    }
  }
  __syncthreads();
  // 2b. equal to the threshold. Usually all of them are taken (no tie across the k-th place): collect in any
  // order, the sort below orders them. Otherwise the `remaining` lowest ids, by an ordered block scan.
  const bool take_all = sh_equal == uint32_t(remaining);
  if (take_all) {
    for (int i = tid; i < vocab; i += NT) {
      if (order_key(x[i]) == T) {
        const uint32_t at = atomicAdd(&sh_count, 1u);
        cand_key[at] = T;
        cand_id[at] = i;
      }
    }
  }
  for (int base = 0; !take_all && base < vocab; base += NT) {
    __syncthreads();
    const uint32_t taken = sh_taken;
    if (taken >= uint32_t(remaining)) break;
    const int i = base + tid;
    const bool eq = i < vocab && order_key(x[i]) == T;
    const uint32_t bal = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) warp_cnt[warp] = __popc(bal);
    __syncthreads();
    uint32_t before = 0, total = 0;
    for (int w = 0; w < NT / 32; w++) {
      if (w < warp) before += warp_cnt[w];
      total += warp_cnt[w];
    }
    const uint32_t rank = taken + before + __popc(bal & ((1u << lane) - 1u));
    if (eq && rank < uint32_t(remaining)) {
      cand_key[above + rank] = T;
      cand_id[above + rank] = i;
    }
    __syncthreads();
    if (tid == 0) sh_taken = taken + total;
  }
  __syncthreads();
  // 2c. bitonic sort of 256 entries: key descending, id ascending.
  for (int size = 2; size <= kMaxTopK; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      if (tid < kMaxTopK) {
        const int j = tid ^ stride;
        if (j > tid) {
          const bool desc = (tid & size) == 0;  // first half of each run sorts "better first"
          const uint32_t ka = cand_key[tid], kb = cand_key[j];
          const int ia = cand_id[tid], ib = cand_id[j];
          const bool a_better = ka > kb || (ka == kb && ia < ib);
          if (desc ? !a_better : a_better) {
            cand_key[tid] = kb;
            cand_key[j] = ka;
            cand_id[tid] = ib;
            cand_id[j] = ia;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < k; i += NT) {
    const int id = cand_id[i];
    top_ids[size_t(row) * k + i] = id == INT_MAX ? -1 : id;
    top_logits[size_t(row) * k + i] = id == INT_MAX ? -INFINITY : x[id];
  }
}

// Per-slice partials of narrow_slices, read by narrow_merge.
struct Parts {
  float* m;   // [rows * B] slice max
  float* s;   // [rows * B] sum of exp(v - slice max)
  u64* best;  // [rows * B] slice argmax (composite)
  u64* cand;  // [rows * B * k] the slice's k best, best first (0 past its end)
};

Parts carve(void* ws, int rows, int vocab, size_t* bytes) {
  const size_t n = size_t(rows) * split_blocks(vocab);
  WorkspaceCarve c(ws);
  Parts w;
  w.m = c.take<float>(4 * n);
  w.s = c.take<float>(4 * n);
  w.best = c.take<u64>(8 * n);
  w.cand = c.take<u64>(8 * n * kSplitMaxK);
  *bytes = c.bytes();
  return w;
}

// Grid (split_blocks(vocab), rows): block b reduces tokens [b * kSplitSlice, (b + 1) * kSplitSlice) to its
// partials and, for k > 1, its k best. The tokens stay in registers; a round takes the block maximum and the one
// thread that holds it drops it.
__global__ void __launch_bounds__(kSplitNT) narrow_slices(const float* __restrict__ logits, int vocab, int ld, int k,
                                                          Parts w) {
  __shared__ u64 red[2][kSplitNT / 32];
  __shared__ float red_m[kSplitNT / 32], red_s[kSplitNT / 32];
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, B = gridDim.x;
  const float* x = logits + size_t(row) * ld;
  u64 c[kSplitPer], best, wb;
  float m, s;
  slice_pass(x, vocab, blockIdx.x * kSplitSlice, tid, c, best, m, s, wb);
  if (lane == 0) red_m[warp] = m, red_s[warp] = s, red[1][warp] = wb;
  __syncthreads();
  const size_t part = size_t(row) * B + blockIdx.x;
  if (tid == 0) {
    float M, S;
    u64 Bc;
    combine_warps(red_m, red_s, red[1], kSplitNT / 32, M, S, Bc);
    w.m[part] = M;
    w.s[part] = S;
    w.best[part] = Bc;
  }
  if (k <= 1) return;
  u64* out = w.cand + part * k;
  for (int r = 0; r < k; r++) {
    // Two buffers: a thread writes round r + 2's only after round r + 1's barrier, which every read of r precedes
    // (round 0 writes buffer 0: buffer 1's reads above precede round 0's barrier).
    const u64 wm = warp_max(best);
    if (lane == 0) red[r & 1][warp] = wm;
    __syncthreads();
    u64 M = red[r & 1][0];
#pragma unroll
    for (int q = 1; q < kSplitNT / 32; q++) M = max(M, red[r & 1][q]);
    if (tid == 0) out[r] = M;
    if (M != 0 && best == M) {  // composites are distinct: exactly one thread holds it
      best = 0;
#pragma unroll
      for (int j = 0; j < kSplitPer; j++) {
        if (c[j] == M) c[j] = 0;
        best = max(best, c[j]);
      }
    }
  }
}

// One block per row. The statistics: the slices' partials combined in slice order (a fixed tree for a given
// vocabulary). The top k: every token of the top k is at or above T, the best of the slices' k-th (a token below
// T has k better in its own slice), and at or above L, the k-th best of the slices' maxima (k tokens are at or
// above L); every token at or above T is in its slice's list. So the top k are the k best of the listed
// candidates at or above max(T, L), and a candidate's rank is how many of those beat it (usually a few dozen).
__global__ void __launch_bounds__(kSplitNT) narrow_merge(const float* __restrict__ logits, int ld, int k, int B,
                                                         Parts w, int32_t* __restrict__ argmax,
                                                         float* __restrict__ max_logit, float* __restrict__ lse,
                                                         int32_t* __restrict__ top_ids, float* __restrict__ top_logits) {
  __shared__ u64 list[kSplitMaxCand];
  __shared__ u64 red[kSplitNT / 32];
  __shared__ float red_m[kSplitNT / 32], red_s[kSplitNT / 32];
  __shared__ u64 sh_bound;
  __shared__ int sh_n;
  constexpr int kPer = kSplitMaxCand / kSplitNT;
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float* x = logits + size_t(row) * ld;
  const size_t part = size_t(row) * B;
  float m = -INFINITY, s = 0.f;
  u64 best = 0;
  for (int b = tid; b < B; b += kSplitNT) {
    combine_ms(m, s, __ldg(&w.m[part + b]), __ldg(&w.s[part + b]));
    best = max(best, __ldg(&w.best[part + b]));
  }
  for (int o = 16; o > 0; o >>= 1) combine_ms(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  best = warp_max(best);
  if (lane == 0) red_m[warp] = m, red_s[warp] = s, red[warp] = best;
  __syncthreads();
  if (tid == 0) {
    float M, S;
    u64 Bc;
    combine_warps(red_m, red_s, red, kSplitNT / 32, M, S, Bc);
    const int id = composite_id(Bc);
    argmax[row] = id;
    max_logit[row] = x[id];
    lse[row] = M + logf(S);
    if (k == 1) {
      top_ids[row] = id;
      top_logits[row] = x[id];
    }
    sh_n = 0;
  }
  if (k <= 1) return;
  const int n = B * k;
  const u64* c = w.cand + part * k;
  for (int q = tid; q < n; q += kSplitNT) list[q] = __ldg(&c[q]);
  __syncthreads();
  u64 t = 0;
  for (int b = tid; b < B; b += kSplitNT) {
    t = max(t, list[b * k + k - 1]);
    if (B >= k) {  // the k-th best slice maximum: the one that exactly k - 1 others beat
      const u64 v = list[b * k];
      int above = 0;
      for (int q = 0; q < B; q++) above += list[q * k] > v;
      if (above == k - 1) t = max(t, v);
    }
  }
  t = warp_max(t);
  if (lane == 0) red[warp] = t;
  __syncthreads();
  if (tid == 0) {
    u64 T = red[0];
    for (int q = 1; q < kSplitNT / 32; q++) T = max(T, red[q]);
    sh_bound = T;
  }
  __syncthreads();
  // Compact the candidates at or above the bound to the front of the list (any order: ranks are counts).
  const u64 bound = sh_bound;
  u64 mine[kPer];
#pragma unroll
  for (int j = 0; j < kPer; j++) {
    const int q = j * kSplitNT + tid;
    mine[j] = q < n ? list[q] : 0ull;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kPer; j++)
    if (mine[j] != 0 && mine[j] >= bound) list[atomicAdd(&sh_n, 1)] = mine[j];
  __syncthreads();
  const int sel = sh_n;
  for (int q = tid; q < sel; q += kSplitNT) {
    const u64 v = list[q];
    int rank = 0;
    for (int j = 0; j < sel; j++) rank += list[j] > v;
    if (rank < k) {
      const int id = composite_id(v);
      top_ids[size_t(row) * k + rank] = id;
      top_logits[size_t(row) * k + rank] = x[id];
    }
  }
}

// One launch of narrow_rows (its statistics replayed in the split order: the same bits) instead of the split passes
// where a batch's top-k work is large. Measured on the H200 (HM_OP_BENCH=1, us, split / narrow_rows with the
// previous online statistics): 64 rows top_k 50 270 / 225, top_k 20 186 / 220; 256 rows top_k 20 697 / 398, top_k
// 50 678 / 614; 8 rows top_k 50 157 / 174.
constexpr int kRowsPathWork = 64 * 50;  // rows * top_k
bool rows_path(int rows, int B, int k) { return k > 1 && B <= kRowsMaxSlices && rows * k >= kRowsPathWork; }

}  // namespace

size_t narrow_workspace_bytes(int rows, int vocab) {
  size_t bytes = 0;
  carve(nullptr, rows, vocab, &bytes);
  return bytes;
}

void narrow_logits(const NarrowLogitsParams& p, cudaStream_t stream) {
  HM_REQUIRE(p.logits && p.argmax && p.max_logit && p.logsumexp, "narrow_logits");
  HM_REQUIRE(p.rows >= 0 && p.vocab > 0 && p.ld >= p.vocab, "narrow_logits");
  HM_REQUIRE(p.top_k >= 0 && p.top_k <= kMaxTopK && p.top_k <= p.vocab, "narrow_logits");
  HM_REQUIRE(p.top_k == 0 || (p.top_ids && p.top_logits), "narrow_logits");
  HM_REQUIRE(p.rows <= 65535, "narrow_logits");
  if (p.rows == 0) return;
  if (p.one_block_stats) {
    launch(narrow_rows, dim3(p.rows), dim3(NT), 0, stream, p.pdl, p.logits, p.vocab, p.ld, p.top_k, int(kStatsOnline), 0,
           p.argmax, p.max_logit, p.logsumexp, p.top_ids, p.top_logits);
    return;
  }
  HM_REQUIRE(p.workspace && p.workspace_bytes >= narrow_workspace_bytes(p.rows, p.vocab), "narrow_logits");
  const int B = split_blocks(p.vocab);
  if (rows_path(p.rows, B, p.top_k)) {
    launch(narrow_rows, dim3(p.rows), dim3(NT), 0, stream, p.pdl, p.logits, p.vocab, p.ld, p.top_k, int(kStatsSliced), B,
           p.argmax, p.max_logit, p.logsumexp, p.top_ids, p.top_logits);
    return;
  }
  const bool split = p.top_k <= 1 || split_topk(p.vocab, p.top_k);
  const int k = split ? p.top_k : 0;
  size_t bytes = 0;
  const Parts w = carve(p.workspace, p.rows, p.vocab, &bytes);
  launch(narrow_slices, dim3(B, p.rows), dim3(kSplitNT), 0, stream, p.pdl, p.logits, p.vocab, p.ld, k, w);
  launch(narrow_merge, dim3(p.rows), dim3(kSplitNT), 0, stream, p.pdl, p.logits, p.ld, k, B, w, p.argmax, p.max_logit,
         p.logsumexp, p.top_ids, p.top_logits);
  if (!split)
    launch(narrow_rows, dim3(p.rows), dim3(NT), 0, stream, p.pdl, p.logits, p.vocab, p.ld, p.top_k, int(kStatsNone), B,
           p.argmax, p.max_logit, p.logsumexp, p.top_ids, p.top_logits);
}

}  // namespace hm::cuda
