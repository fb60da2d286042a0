// Logit narrowing: one block of 1024 threads per row.
//   1. one pass: per-thread online (max, sum of exp) and argmax, block-reduced -> argmax, max, logsumexp;
//   2. top-k by radix select on order-preserving uint32 keys (4 passes of 8 bits) -> the exact k-th largest key T
//      and how many elements equal to T to take;
//   3. collect keys > T with an atomic counter, keys == T in ascending id order (block-wide ordered scan, so ties
//      keep the lower ids), then a bitonic sort of 256 entries by (logit desc, id asc).
// Measured on the H100 (HM_OP_BENCH=1, one row of 201088): 27 us for k <= 1, 161 us for k = 50 with plain shared
// histogram atomics; warp-aggregated atomics (__match_any_sync per element) were slower (328 us).
// Small k (top_logprobs, k <= kSplitMaxK) skips steps 2-3: one block per row still does step 1, and the top-k is
// split over the row instead (narrow_topk_slices, narrow_topk_merge): each block of 2048 tokens picks its own k
// best by k rounds of block argmax, then one block per row ranks the union. The order (logit desc, id asc) is
// total, so the result is the same token for token whatever the split.
#include <climits>

#include "common.cuh"
#include "logits.h"

namespace hm::cuda {
namespace {

constexpr int NT = 1024;
using u64 = unsigned long long;

// top-k up to this is split over the row. Measured on the H200 (rows 1 / 64): k = 5 split 66 / 125 us, k = 20 split
// 246 / 416 us (the merge's rank searches dominate), unsplit 163 / 217 us whatever k: the split wins below ~13.
constexpr int kSplitMaxK = 10;
constexpr int kSplitNT = 256, kSplitPer = 8;       // a slice block: 256 threads, 8 tokens each
constexpr int kSplitSlice = kSplitNT * kSplitPer;  // tokens a slice block covers
constexpr int kSplitMaxCand = 4096;                // candidates of a row the merge holds in shared memory

int split_blocks(int vocab) { return (vocab + kSplitSlice - 1) / kSplitSlice; }
bool split_topk(int vocab, int k) { return k > 1 && k <= kSplitMaxK && split_blocks(vocab) * k <= kSplitMaxCand; }

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(NT) narrow_rows(const float* __restrict__ logits, int vocab, int ld, int k,
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

  // 1. max / argmax / sum of exp, online per thread.
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
  if (k <= 1) return;

  // 2. radix select of the k-th largest key.
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
  // 3a. strictly above the threshold: exactly `above` of them; and count those equal to it.
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
  // 3b. equal to the threshold. Usually all of them are taken (no tie across the k-th place): collect in any
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
  // 3c. bitonic sort of 256 entries: key descending, id ascending.
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

// The canonical order as one integer: larger = earlier (logit desc, id asc); 0 is no token.
__device__ __forceinline__ u64 composite(uint32_t key, int id) { return (u64(key) << 32) | (0xffffffffu - uint32_t(id)); }

__device__ __forceinline__ u64 warp_max(u64 v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Grid (split_blocks(vocab), rows): block b's k best of tokens [b * kSplitSlice, (b + 1) * kSplitSlice), best
// first, as composites (0 past the slice's end) into cand[row][b][0..k). The tokens stay in registers; a round
// takes the block maximum and the one thread that holds it drops it.
__global__ void __launch_bounds__(kSplitNT) narrow_topk_slices(const float* __restrict__ logits, int vocab, int ld,
                                                               int k, u64* __restrict__ cand) {
  __shared__ u64 red[2][kSplitNT / 32];
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float* x = logits + size_t(row) * ld;
  const int lo = blockIdx.x * kSplitSlice;
  u64 c[kSplitPer];
  u64 best = 0;
#pragma unroll
  for (int j = 0; j < kSplitPer; j++) {
    const int i = lo + j * kSplitNT + tid;
    c[j] = i < vocab ? composite(order_key(x[i]), i) : 0ull;
    best = max(best, c[j]);
  }
  u64* out = cand + (size_t(row) * gridDim.x + blockIdx.x) * k;
  for (int r = 0; r < k; r++) {
    // Two buffers: a thread writes round r + 2's only after round r + 1's barrier, which every read of r precedes.
    const u64 m = warp_max(best);
    if (lane == 0) red[r & 1][warp] = m;
    __syncthreads();
    u64 M = red[r & 1][0];
#pragma unroll
    for (int w = 1; w < kSplitNT / 32; w++) M = max(M, red[r & 1][w]);
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

// One block per row: the global rank of a candidate is the sum over the slices' lists (descending) of how many
// are better. Only candidates at or above T, the best of the slices' k-th, can rank below k, and every token at or
// above T is in its slice's list (else k tokens of that slice beat it, so it is below T).
__global__ void __launch_bounds__(kSplitNT) narrow_topk_merge(const float* __restrict__ logits, int ld, int k, int B,
                                                              const u64* __restrict__ cand, int32_t* __restrict__ top_ids,
                                                              float* __restrict__ top_logits) {
  __shared__ u64 list[kSplitMaxCand];
  __shared__ u64 red[kSplitNT / 32];
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.x, tid = threadIdx.x, n = B * k;
  const u64* c = cand + size_t(row) * n;
  for (int q = tid; q < n; q += kSplitNT) list[q] = c[q];
  __syncthreads();
  u64 t = 0;
  for (int b = tid; b < B; b += kSplitNT) t = max(t, list[b * k + k - 1]);
  t = warp_max(t);
  if ((tid & 31) == 0) red[tid >> 5] = t;
  __syncthreads();
  u64 T = red[0];
  for (int w = 1; w < kSplitNT / 32; w++) T = max(T, red[w]);
  const float* x = logits + size_t(row) * ld;
  for (int q = tid; q < n; q += kSplitNT) {
    const u64 v = list[q];
    if (v == 0 || v < T) continue;
    int rank = 0;
    for (int b = 0; b < B; b++) {
      const u64* L = list + b * k;
      int l = 0, h = k;
      while (l < h) {
        const int mid = (l + h) >> 1;
        if (L[mid] > v) l = mid + 1;
        else h = mid;
      }
      rank += l;
    }
    if (rank < k) {
      const int id = int(0xffffffffu - uint32_t(v & 0xffffffffu));
      top_ids[size_t(row) * k + rank] = id;
      top_logits[size_t(row) * k + rank] = x[id];
    }
  }
}

}  // namespace

size_t narrow_workspace_bytes(int rows, int vocab) {
  return sizeof(u64) * size_t(rows) * split_blocks(vocab) * kSplitMaxK;
}

void narrow_logits(const NarrowLogitsParams& p, cudaStream_t stream) {
  HM_REQUIRE(p.logits && p.argmax && p.max_logit && p.logsumexp, "narrow_logits");
  HM_REQUIRE(p.rows >= 0 && p.vocab > 0 && p.ld >= p.vocab, "narrow_logits");
  HM_REQUIRE(p.top_k >= 0 && p.top_k <= kMaxTopK && p.top_k <= p.vocab, "narrow_logits");
  HM_REQUIRE(p.top_k == 0 || (p.top_ids && p.top_logits), "narrow_logits");
  if (p.rows == 0) return;
  const bool split = split_topk(p.vocab, p.top_k);
  HM_REQUIRE(!split || (p.workspace && p.workspace_bytes >= narrow_workspace_bytes(p.rows, p.vocab)), "narrow_logits");
  launch(narrow_rows, dim3(p.rows), dim3(NT), 0, stream, p.pdl, p.logits, p.vocab, p.ld, split ? 0 : p.top_k, p.argmax,
         p.max_logit, p.logsumexp, p.top_ids, p.top_logits);
  if (!split) return;
  u64* cand = static_cast<u64*>(p.workspace);
  const int B = split_blocks(p.vocab);
  launch(narrow_topk_slices, dim3(B, p.rows), dim3(kSplitNT), 0, stream, p.pdl, p.logits, p.vocab, p.ld, p.top_k, cand);
  launch(narrow_topk_merge, dim3(p.rows), dim3(kSplitNT), 0, stream, p.pdl, p.logits, p.ld, p.top_k, B, cand,
         p.top_ids, p.top_logits);
}

}  // namespace hm::cuda
