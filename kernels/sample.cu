// Exact sampling in the step (kernels/sample.h, native/sampling.h; the CPU reference is native/sample_ref.cpp, pass for pass).
// Grid (B blocks per row, rows); a row's blocks split its vocabulary into B contiguous slices. Passes, one launch
// each, only those some row of the batch needs (SampleStage):
//   adjust      one block per row: bias and penalties on the row's entries, in place (raw values to `saved`);
//   max         the best adjusted logit as the largest 64-bit canonical composite (greedy rows are done here);
//               skipped where no row has entries or is greedy and narrow_logits' argmax of the same logits is
//               given (SampleRowsParams::argmax): the first pass then takes the row's state from it;
//   select      top_k, then top_p: radix levels (11 + 11 + 10 key bits) of a 2048-bucket histogram of
//               counts (top_k) or fixed-point mass (top_p) over the row's survivors (native 32-bit shared
//               atomics on three pieces of a weight; one a warp where the whole warp hits one bucket: flat rows
//               crowd a few level-0 buckets); a tie run at the boundary
//               key is cut by an ordered scan of the row (rare: fp32 logits seldom tie). top_k runs its three
//               levels as passes; top_p only level 0: the gumbel pass settles its open bucket (below). Tried and
//               not kept (branch issue-9c): level 0 binned by value over [row min, max] so flat rows spread over the
//               buckets; exact, but slower on the H200 (top_p 0.9: 81.7 us at 1 row vs 64, 700 vs 624 at 64 rows);
//   gumbel      argmax over the kept tokens of s + gumbel (fp32), ties by lower id. With top_p's level 0 done,
//               tokens above its boundary bucket are kept, those in it listed (composites, up to kListCap a row); the
//               last block runs levels 1 and 2 and the tie cut over the list (over the row when it overflowed:
//               equal logits) and draws from the list's kept part too. Same thresholds as three passes over the
//               row (the list holds exactly the tokens level 1 would look at), two launches fewer.
// Each pass's blocks leave per-block partials (maxima, or a select pass's histogram added into the row's by integer
// atomics, so their order cannot change the result); the last block of a row to finish (an arrival counter)
// combines them and writes the row's state for the next pass. That keeps the result of a row fixed whatever the
// batch around it and however many blocks split it, with no atomics on floats: a small batch takes many blocks a
// row (up to 128 at batch 1, so a pass spreads over the SMs), a large one few.
#include <algorithm>
#include <climits>
#include <cmath>

#include "common.cuh"
#include "sample.h"

namespace hm::cuda {
namespace {

constexpr int NT = 512;
// Blocks a row: about 256 in all for a few rows (at most 128 a row), at least 16 a row up to 1024 in all for many.
// Measured on the H200 (HM_OP_BENCH=1, t=1 / top_p 0.9 / top_k 50 us): 8 rows at 32 a row 28 / 120 / 39, at 128 a
// row 36 / 172 / 66; 64 rows at 4 a row 131 / 640 / 163, at 16 a row 113 / 624 / 139. Speed only: a row's result
// does not depend on its number of blocks.
constexpr int kMaxBlocksPerRow = 128;
constexpr int kFewRowsBlocks = 256;
constexpr int kManyRowsPerRow = 16, kManyRowsBlocks = 1024;

constexpr int kPartBlocks = 256;  // the most blocks a row (the op benchmark's SampleRowsParams::blocks_per_row)

int blocks_per_row(int rows) {
  rows = std::max(rows, 1);
  return std::max({1, std::min(kMaxBlocksPerRow, kFewRowsBlocks / rows), std::min(kManyRowsPerRow, kManyRowsBlocks / rows)});
}

using u64 = unsigned long long;

// The open top_p bucket's tokens the gumbel pass lists for its last block (more: it rescans the row).
constexpr int kListCap = 32768;

struct StageState {
  u64 need;      // weight still to reach (top_k: tokens, top_p: fixed-point mass)
  u64 bound;     // final: keep composite >= bound (0 = all)
  uint32_t prefix, mask;  // key bits fixed so far
  int32_t done;  // 1 = bound is final (or the stage is off for the row)
  int32_t pad;
};
struct RowState {
  float amax;
  int32_t best;
  StageState st[2];  // 0: top_k, 1: top_p
};

struct Work {
  RowState* state;    // [rows]
  uint32_t* counter;  // [rows] arrivals of the current pass
  uint32_t* nlist;    // [rows] tokens of the open top_p bucket the gumbel pass met (zero between passes)
  u64* hist;          // [rows * kSampleBuckets] a select pass's histogram (zero between passes)
  u64* part;          // [rows * B] per-block maxima
  u64* list;          // [rows * kListCap] the open top_p bucket's tokens as composites (key and id: all it needs)
};

Work carve(void* ws, int rows, size_t* bytes) {
  WorkspaceCarve c(ws);
  Work w;
  w.state = c.take<RowState>(sizeof(RowState) * rows);
  w.counter = c.take<uint32_t>(4 * size_t(rows));  // counter, nlist and hist adjacent: one memset
  w.nlist = c.take<uint32_t>(4 * size_t(rows));
  w.hist = c.take<u64>(8 * size_t(rows) * kSampleBuckets);
  w.part = c.take<u64>(8 * size_t(rows) * kPartBlocks);
  w.list = c.take<u64>(8 * size_t(rows) * kListCap);
  *bytes = c.bytes();
  return w;
}

// sampling.h's kSampleShift / kSampleBits (host arrays) on the device.
__device__ __forceinline__ int level_shift(int level) { return level == 0 ? 21 : level == 1 ? 10 : 0; }
__device__ __forceinline__ uint32_t level_width(int level) { return level == 2 ? 1023u : 2047u; }
__device__ __forceinline__ float s_rel(float a, float amax, float inv_t) { return __fmul_rn(__fsub_rn(a, amax), inv_t); }
__device__ __forceinline__ u64 mass_q(float s) { return u64(double(expf(s)) * kMassOne); }
__device__ __forceinline__ float key_float(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// StepNoise.gumbel in fp32: -log(-log(u)) with -log(u) taken as -log1p(-(1 - u)) above 1/2, 1 - u formed from the
// bits exactly, so the large values (u near 1) keep their precision.
__device__ __forceinline__ float gumbel_f(uint32_t k1, uint32_t k2, int id) {
  uint32_t a, b;
  sample_noise_bits(k1, k2, id, &a, &b);
  const uint32_t hi = a >> 5, lo = b >> 6;  // 27 + 26 bits
  float t;
  if (hi < (1u << 26)) {
    t = -logf((float(hi) + (float(lo) + 0.5f) * 0x1p-26f) * 0x1p-27f);
  } else {
    const float v = (float((1u << 27) - 1u - hi) + (float((1u << 26) - 1u - lo) + 0.5f) * 0x1p-26f) * 0x1p-27f;
    t = -log1pf(-v);
  }
  return -logf(t);
}

// The last block of a row to arrive: true in every thread of that block; the counter is reset for the next pass.
__device__ bool last_block(uint32_t* counter, int B) {
  __shared__ bool is_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    is_last = atomicAdd(counter, 1u) == uint32_t(B - 1);
    if (is_last) *counter = 0;
  }
  __syncthreads();
  if (is_last) __threadfence();
  return is_last;
}

__device__ StageState load_stage(const StageState* s) {
  StageState r;
  r.need = __ldcg(&s->need);
  r.bound = __ldcg(&s->bound);
  r.prefix = __ldcg(&s->prefix);
  r.mask = __ldcg(&s->mask);
  r.done = __ldcg(&s->done);
  r.pad = 0;
  return r;
}

// A row's state after the max pass: its best token and the stages' starting points.
__device__ RowState fresh_state(const SampleRow& p, const float* x, int best) {
  RowState s;
  s.amax = x[best];
  s.best = best;
  const bool draw = p.mode == kSampleDraw;
  s.st[0] = StageState{u64(max(p.top_k, 0)), 0ull, 0u, 0u, !(draw && p.top_k > 0), 0};
  s.st[1] = StageState{0ull, 0ull, 0u, 0u, !(draw && p.top_p < 1.f), 0};
  return s;
}

// The first pass when the max pass is skipped (SampleRowsParams::argmax): the row's state from narrow_logits'
// argmax, which block 0 stores for the passes after (before its arrival, so before the last block's update), and
// a row not sampled gets its outputs.
__device__ RowState first_pass_state(const SampleRow& p, const float* x, const int32_t* argmax, int row, Work w,
                                     int32_t* token, float* raw_logit) {
  const RowState s = fresh_state(p, x, __ldg(&argmax[row]));
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    if (p.mode == kSampleNone) {
      token[row] = -1;
      raw_logit[row] = NAN;
    } else {
      w.state[row] = s;
    }
  }
  return s;
}

// The raw logit of a token after the adjust pass: its saved value if it is an entry (ids ascending), else the row.
__device__ float raw_of(const float* x, const SampleRow& p, const SampleEntry* entries, const float* saved, int id) {
  int lo = p.entry_begin, hi = p.entry_end - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) >> 1;
    const int v = entries[mid].id;
    if (v == id) return saved[mid];
    if (v < id) lo = mid + 1;
    else hi = mid - 1;
  }
  return x[id];
}

__device__ __forceinline__ void slice(int vocab, int B, int* lo, int* hi) {
  const int chunk = (vocab + B - 1) / B;
  *lo = min(vocab, int(blockIdx.x) * chunk);
  *hi = min(vocab, *lo + chunk);
}

__global__ void __launch_bounds__(NT) sample_adjust_rows(float* __restrict__ logits, int ld, const SampleRow* __restrict__ params,
                                                         const SampleEntry* __restrict__ entries, float* __restrict__ saved) {
  pdl_wait();
  pdl_trigger();
  const SampleRow p = params[blockIdx.x];
  if (p.mode == kSampleNone) return;
  float* x = logits + size_t(blockIdx.x) * ld;
  for (int j = p.entry_begin + threadIdx.x; j < p.entry_end; j += NT) {
    const SampleEntry e = entries[j];
    const float raw = x[e.id];
    saved[j] = raw;
    x[e.id] = sample_adjust(raw, p, e);
  }
}

__global__ void __launch_bounds__(NT) sample_max(const float* __restrict__ logits, int vocab, int ld,
                                                 const SampleRow* __restrict__ params, const SampleEntry* __restrict__ entries,
                                                 const float* __restrict__ saved, int32_t* __restrict__ token,
                                                 float* __restrict__ raw_logit, Work w, int B) {
  __shared__ u64 red[NT / 32];
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.y, tid = threadIdx.x;
  const SampleRow p = params[row];
  if (p.mode == kSampleNone) {
    if (blockIdx.x == 0 && tid == 0) {
      token[row] = -1;
      raw_logit[row] = NAN;
    }
    return;
  }
  const float* x = logits + size_t(row) * ld;
  int lo, hi;
  slice(vocab, B, &lo, &hi);
  u64 m = 0;
  for (int i = lo + tid; i < hi; i += NT) m = max(m, u64(sample_composite(sample_order_key(x[i]), i)));
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((tid & 31) == 0) red[tid >> 5] = m;
  __syncthreads();
  if (tid == 0) {
    for (int j = 1; j < NT / 32; j++) m = max(m, red[j]);
    w.part[size_t(row) * B + blockIdx.x] = m;
  }
  if (!last_block(w.counter + row, B)) return;
  u64 M = 0;
  for (int j = tid; j < B; j += NT) M = max(M, __ldcg(&w.part[size_t(row) * B + j]));
  for (int o = 16; o > 0; o >>= 1) M = max(M, __shfl_xor_sync(0xffffffffu, M, o));
  if ((tid & 31) == 0) red[tid >> 5] = M;
  __syncthreads();
  if (tid != 0) return;
  for (int j = 1; j < NT / 32; j++) M = max(M, red[j]);
  const int best = int(0xffffffffu - uint32_t(M & 0xffffffffu));
  w.state[row] = fresh_state(p, x, best);
  if (p.mode != kSampleDraw) {
    token[row] = best;
    raw_logit[row] = raw_of(x, p, entries, saved, best);
  }
}

// The result of pick_bucket (shared).
struct Pick {
  u64 need, at;            // weight still to reach inside the bucket; the bucket's weight
  uint32_t prefix, mask;   // key bits fixed with it
  int keep_all;            // fewer survivors than the weight asked: keep them all
};

// The whole block (every thread calls it; `out` is read after a barrier): the bucket of `hist` (descending) where
// the cumulative weight reaches `need` (nucleus: top_p of the total, at level 0). Thread t sums the `per` buckets
// t*per .. from the top, a block scan of those sums finds the one thread whose run crosses `need`, and it walks its
// run; in one warp with 64 buckets a lane (a stride that hit one shared bank), it was a serial tail of the pass.
__device__ void pick_bucket(const u64* hist, int level, bool nucleus, float top_p, u64 need, uint32_t prefix,
                            uint32_t mask, Pick* out) {
  __shared__ u64 warp_sum[NT / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int shift = level_shift(level);
  const uint32_t width = level_width(level);
  const int nb = int(width) + 1, per = nb / NT;  // 4 or 2
  u64 mine = 0;
  for (int j = 0; j < per; j++) mine += hist[nb - 1 - (tid * per + j)];
  u64 incl = mine;
  for (int o = 1; o < 32; o <<= 1) {
    const u64 v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) warp_sum[warp] = incl;
  __syncthreads();
  u64 before = 0, total = 0;
  for (int j = 0; j < NT / 32; j++) {
    if (j < warp) before += warp_sum[j];
    total += warp_sum[j];
  }
  incl += before;
  const u64 excl = incl - mine;
  if (level == 0 && nucleus) need = u64(ceil(double(top_p) * double(total)));
  const bool keep_all = total < need;  // past level 0 not reached: the level before guarantees it
  if (tid == 0) out->keep_all = keep_all;
  if (!keep_all && incl >= need && (tid == 0 || excl < need)) {  // the first thread whose run reaches need
    u64 cum = excl;
    int bk = nb - 1 - (tid * per + per - 1);
    for (int j = 0; j < per; j++) {
      const int bi = nb - 1 - (tid * per + j);
      if (cum + hist[bi] >= need) {
        bk = bi;
        break;
      }
      cum += hist[bi];
    }
    out->need = need - cum;
    out->at = hist[bk];
    out->prefix = prefix | (uint32_t(bk) << shift);
    out->mask = mask | (width << shift);
  }
}

// The whole block: the id of the n-th (from 1) token of key `key` in id order among those `alive` passes, by an
// ordered scan of the row (a tie run at the boundary: rare, fp32 logits seldom tie).
template <typename Alive>
__device__ int tie_cut(const float* x, int vocab, uint32_t key, u64 n, Alive alive) {
  __shared__ uint32_t sh_taken, warp_cnt[NT / 32];
  __shared__ int sh_found;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (tid == 0) {
    sh_taken = 0;
    sh_found = -1;
  }
  __syncthreads();
  for (int base = 0; base < vocab; base += NT) {
    const int i = base + tid;
    const bool eq = i < vocab && sample_order_key(x[i]) == key && alive(i, x[i]);
    const uint32_t bal = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) warp_cnt[warp] = __popc(bal);
    __syncthreads();
    uint32_t before = 0, total = 0;
    for (int j = 0; j < NT / 32; j++) {
      if (j < warp) before += warp_cnt[j];
      total += warp_cnt[j];
    }
    if (eq && u64(sh_taken + before + __popc(bal & ((1u << lane) - 1u))) == n - 1) sh_found = i;
    __syncthreads();
    if (tid == 0) sh_taken += total;
    __syncthreads();
    if (sh_found >= 0) break;
  }
  return sh_found;
}

__global__ void __launch_bounds__(NT) sample_select(const float* __restrict__ logits, int vocab, int ld,
                                                    const SampleRow* __restrict__ params, Work w, int B, int stage, int level,
                                                    int hist_mode, const int32_t* __restrict__ argmax,
                                                    int32_t* __restrict__ token, float* __restrict__ raw_logit) {
  __shared__ u64 hist[kSampleBuckets * 3 / 2];  // kHistPieces: three uint32 histograms in the same bytes
  uint32_t* piece = reinterpret_cast<uint32_t*>(hist);
  __shared__ Pick pick;
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.y, tid = threadIdx.x, lane = tid & 31;
  const SampleRow p = params[row];
  const float* x = logits + size_t(row) * ld;
  RowState first;
  if (argmax) first = first_pass_state(p, x, argmax, row, w, token, raw_logit);
  if (p.mode != kSampleDraw) return;
  StageState* sp = &w.state[row].st[stage];
  const StageState st = argmax ? (stage == 0 ? first.st[0] : first.st[1]) : load_stage(sp);
  if (st.done) return;
  const float amax = argmax ? first.amax : __ldcg(&w.state[row].amax);
  const u64 bound_k = stage == 1 && !argmax ? __ldcg(&w.state[row].st[0].bound) : 0ull;
  const int shift = level_shift(level);
  const uint32_t width = level_width(level);
  // A survivor of the filters before this stage (min_p; for top_p also top_k).
  auto alive = [&](int i, float a) {
    return s_rel(a, amax, p.inv_temperature) >= p.log_min_p &&
           (stage == 0 || u64(sample_composite(sample_order_key(a), i)) >= bound_k);
  };
  for (int i = tid; i < kSampleBuckets * 3 / 2; i += NT) hist[i] = 0;
  __syncthreads();
  int lo, hi;
  slice(vocab, B, &lo, &hi);
  // kHistPieces: a weight (< 2^45) as three pieces of 16, 16 and 13 bits into three uint32 histograms by native
  // 32-bit shared atomics (a piece's sum over a slice of <= 65536 tokens fits), summed exactly at the flush.
  // kHist64: one 64-bit shared atomic a token. Both: one for the warp where the whole warp hits one bucket (flat
  // rows crowd a few level-0 buckets). kHistMatch (round 1): every bucket's lanes add first, a match and two
  // reduces per distinct bucket of the warp (22-bit halves for the 32-bit reduce).
  for (int base = lo; base < hi; base += NT) {
    const int i = base + tid;
    uint32_t bucket = 0xffffffffu;
    u64 wq = 0;
    if (i < hi) {
      const float a = x[i];
      const uint32_t key = sample_order_key(a);
      if ((key & st.mask) == st.prefix && alive(i, a)) {
        bucket = (key >> shift) & width;
        wq = stage == 0 ? 1ull : mass_q(s_rel(a, amax, p.inv_temperature));
      }
    }
    if (hist_mode == kHistPieces) {
      const uint32_t w0 = uint32_t(wq & 0xffffu), w1 = uint32_t(wq >> 16) & 0xffffu, w2 = uint32_t(wq >> 32);
      const uint32_t b0 = __shfl_sync(0xffffffffu, bucket, 0);
      if (__all_sync(0xffffffffu, bucket == b0)) {
        if (b0 != 0xffffffffu) {
          const uint32_t s0 = __reduce_add_sync(0xffffffffu, w0), s1 = __reduce_add_sync(0xffffffffu, w1);
          const uint32_t s2 = __reduce_add_sync(0xffffffffu, w2);
          if (lane == 0) {
            if (s0) atomicAdd(&piece[b0], s0);
            if (s1) atomicAdd(&piece[kSampleBuckets + b0], s1);
            if (s2) atomicAdd(&piece[2 * kSampleBuckets + b0], s2);
          }
        }
      } else if (bucket != 0xffffffffu) {
        if (w0) atomicAdd(&piece[bucket], w0);
        if (w1) atomicAdd(&piece[kSampleBuckets + bucket], w1);
        if (w2) atomicAdd(&piece[2 * kSampleBuckets + bucket], w2);
      }
      continue;
    }
    if (hist_mode == kHist64) {
      const uint32_t b0 = __shfl_sync(0xffffffffu, bucket, 0);
      if (__all_sync(0xffffffffu, bucket == b0)) {
        if (b0 != 0xffffffffu) {
          const uint32_t lo_sum = __reduce_add_sync(0xffffffffu, uint32_t(wq & 0x3fffffu));
          const uint32_t hi_sum = __reduce_add_sync(0xffffffffu, uint32_t(wq >> 22));
          if (lane == 0) atomicAdd(&hist[b0], (u64(hi_sum) << 22) + lo_sum);
        }
      } else if (bucket != 0xffffffffu) {
        atomicAdd(&hist[bucket], wq);
      }
      continue;
    }
    const uint32_t peers = __match_any_sync(0xffffffffu, bucket);
    const uint32_t lo_sum = __reduce_add_sync(peers, uint32_t(wq & 0x3fffffu));
    const uint32_t hi_sum = __reduce_add_sync(peers, uint32_t(wq >> 22));
    if (bucket != 0xffffffffu && lane == __ffs(peers) - 1) atomicAdd(&hist[bucket], (u64(hi_sum) << 22) + lo_sum);
  }
  __syncthreads();
  u64* g = w.hist + size_t(row) * kSampleBuckets;
  for (int i = tid; i <= int(width); i += NT) {
    const u64 v = hist_mode == kHistPieces ? u64(piece[i]) + (u64(piece[kSampleBuckets + i]) << 16) +
                                                 (u64(piece[2 * kSampleBuckets + i]) << 32)
                                           : hist[i];
    if (v) atomicAdd(&g[i], v);
  }
  if (!last_block(w.counter + row, B)) return;
  for (int i = tid; i <= int(width); i += NT) {
    hist[i] = __ldcg(&g[i]);
    g[i] = 0;  // for the next pass
  }
  __syncthreads();
  pick_bucket(hist, level, stage == 1, p.top_p, st.need, st.prefix, st.mask, &pick);
  __syncthreads();
  if (pick.keep_all) {
    if (tid == 0) {
      sp->bound = 0;
      sp->done = 1;
    }
    return;
  }
  if (level < 2) {
    if (tid == 0) {
      sp->need = pick.need;
      sp->prefix = pick.prefix;
      sp->mask = pick.mask;
    }
    return;
  }
  // The exact boundary key: its tokens share one weight; keep the first n of them by id.
  const uint32_t key = pick.prefix;
  const u64 wk = stage == 0 ? 1ull : mass_q(s_rel(key_float(key), amax, p.inv_temperature));
  const u64 count = wk ? pick.at / wk : 0, n = wk ? (pick.need + wk - 1) / wk : count;
  u64 bound = u64(key) << 32;
  if (n < count) bound = u64(sample_composite(key, tie_cut(x, vocab, key, n, alive)));
  if (tid == 0) {
    sp->bound = bound;
    sp->done = 1;
  }
}

// (score desc, id asc) as one integer, larger = better; 0 = none.
__device__ __forceinline__ u64 score_composite(float score, int id) {
  return (u64(sample_order_key(__fadd_rn(score, 0.f))) << 32) | (0xffffffffu - uint32_t(id));  // -0 ties +0
}
__device__ __forceinline__ u64 block_max(u64 v, u64* red) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = red[0];
  for (int j = 1; j < NT / 32; j++) v = max(v, red[j]);
  return v;
}

// The draw: argmax over the kept tokens of s + gumbel. When top_p ran its level 0 only (its stage not done), the
// row's open bucket is settled here: tokens above it are kept, below dropped, and the blocks list the ids in it;
// the last block runs levels 1 and 2 and the tie cut over that list (over the row if it overflowed), as the
// select passes would over the row, and draws from the kept part of the list too.
__global__ void __launch_bounds__(NT) sample_gumbel(const float* __restrict__ logits, int vocab, int ld,
                                                    const SampleRow* __restrict__ params, const SampleEntry* __restrict__ entries,
                                                    const float* __restrict__ saved, int32_t* __restrict__ token,
                                                    float* __restrict__ raw_logit, Work w, int B,
                                                    const int32_t* __restrict__ argmax) {
  __shared__ u64 red[NT / 32];
  __shared__ u64 hist[kSampleBuckets];
  __shared__ Pick pick;
  __shared__ uint32_t sh_base;
  pdl_wait();
  pdl_trigger();
  const int row = blockIdx.y, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const SampleRow p = params[row];
  const float* x = logits + size_t(row) * ld;
  RowState first;
  if (argmax) first = first_pass_state(p, x, argmax, row, w, token, raw_logit);
  if (p.mode != kSampleDraw) return;
  const float amax = argmax ? first.amax : __ldcg(&w.state[row].amax);
  const u64 bound_k = argmax ? 0ull : __ldcg(&w.state[row].st[0].bound);
  const StageState sp = argmax ? first.st[1] : load_stage(&w.state[row].st[1]);
  const bool open = !sp.done;
  const u64 bound = max(bound_k, open ? 0ull : sp.bound);
  u64* list = w.list + size_t(row) * kListCap;
  // 1 kept, 0 dropped, 2 in the open bucket.
  auto fate = [&](int i, float a) {
    if (!(s_rel(a, amax, p.inv_temperature) >= p.log_min_p)) return 0;
    const uint32_t key = sample_order_key(a);
    if (bound && u64(sample_composite(key, i)) < bound) return 0;
    if (!open) return 1;
    const uint32_t pk = key & sp.mask;
    return pk > sp.prefix ? 1 : pk == sp.prefix ? 2 : 0;
  };
  int lo, hi;
  slice(vocab, B, &lo, &hi);
  uint32_t at = 0;  // this thread's next list slot
  if (open) {       // reserve the block's slots: count, scan the threads' counts, one atomic
    uint32_t mine = 0;
    for (int i = lo + tid; i < hi; i += NT) mine += fate(i, x[i]) == 2;
    uint32_t incl = mine;
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    __shared__ uint32_t warp_sum[NT / 32];
    if (lane == 31) warp_sum[warp] = incl;
    __syncthreads();
    uint32_t before = 0, total = 0;
    for (int j = 0; j < NT / 32; j++) {
      if (j < warp) before += warp_sum[j];
      total += warp_sum[j];
    }
    if (tid == 0) sh_base = total ? atomicAdd(w.nlist + row, total) : 0u;
    __syncthreads();
    at = sh_base + before + incl - mine;
  }
  u64 best = 0;
  for (int i = lo + tid; i < hi; i += NT) {
    const float a = x[i];
    const int f = fate(i, a);
    if (f == 2 && at++ < uint32_t(kListCap)) list[at - 1] = sample_composite(sample_order_key(a), i);
    if (f != 1) continue;
    best = max(best, score_composite(s_rel(a, amax, p.inv_temperature) + gumbel_f(p.key1, p.key2, i), i));
  }
  best = block_max(best, red);
  if (tid == 0) w.part[size_t(row) * B + blockIdx.x] = best;
  if (!last_block(w.counter + row, B)) return;
  best = 0;
  for (int j = tid; j < B; j += NT) best = max(best, __ldcg(&w.part[size_t(row) * B + j]));
  best = block_max(best, red);
  if (open) {
    const uint32_t listed = __ldcg(w.nlist + row);
    const bool from_list = listed <= uint32_t(kListCap);
    const int n = from_list ? int(listed) : vocab;
    // The j-th token of the open bucket as a composite, or 0 (scanning the row: j is an id, maybe elsewhere).
    auto member = [&](int j) -> u64 {
      if (from_list) return __ldcg(&list[j]);
      const float a = x[j];
      return fate(j, a) == 2 ? u64(sample_composite(sample_order_key(a), j)) : 0ull;
    };
    uint32_t prefix = sp.prefix, mask = sp.mask;
    u64 need = sp.need, at_w = 0;
    bool keep_all = false;
    for (int level = 1; level < kSampleLevels && !keep_all; level++) {
      const int shift = level_shift(level);
      const uint32_t width = level_width(level);
      for (int i = tid; i < kSampleBuckets; i += NT) hist[i] = 0;
      __syncthreads();
#pragma unroll 4
      for (int j = tid; j < n; j += NT) {
        const u64 c = member(j);
        const uint32_t key = uint32_t(c >> 32);
        if (c && (key & mask) == prefix)
          atomicAdd(&hist[(key >> shift) & width], mass_q(s_rel(key_float(key), amax, p.inv_temperature)));
      }
      __syncthreads();
      pick_bucket(hist, level, true, p.top_p, need, prefix, mask, &pick);
      __syncthreads();
      keep_all = pick.keep_all;
      need = pick.need, at_w = pick.at, prefix = pick.prefix, mask = pick.mask;
      __syncthreads();  // pick is rewritten by the next level
    }
    u64 cut = 0;  // keep the open bucket's tokens of composite >= cut (not reached: keep_all keeps them all)
    if (!keep_all) {
      const uint32_t key = prefix;
      const u64 wk = mass_q(s_rel(key_float(key), amax, p.inv_temperature));
      const u64 count = wk ? at_w / wk : 0, nk = wk ? (need + wk - 1) / wk : count;
      cut = u64(key) << 32;
      if (nk < count)
        cut = u64(sample_composite(key, tie_cut(x, vocab, key, nk, [&](int i, float a) { return fate(i, a) == 2; })));
    }
    u64 b2 = 0;
#pragma unroll 4
    for (int j = tid; j < n; j += NT) {
      const u64 c = member(j);
      if (!c || c < cut) continue;
      const int i = int(0xffffffffu - uint32_t(c & 0xffffffffu));
      b2 = max(b2, score_composite(s_rel(key_float(uint32_t(c >> 32)), amax, p.inv_temperature) + gumbel_f(p.key1, p.key2, i), i));
    }
    best = max(best, block_max(b2, red));
  }
  if (tid != 0) return;
  const int bi = best ? int(0xffffffffu - uint32_t(best & 0xffffffffu)) : argmax ? first.best : __ldcg(&w.state[row].best);  // not reached: the best token always survives
  token[row] = bi;
  raw_logit[row] = raw_of(x, p, entries, saved, bi);
}

}  // namespace

int sample_stages(const SampleRow* rows, int n) {
  int s = 0;
  for (int r = 0; r < n; r++) {
    const SampleRow& p = rows[r];
    if (p.mode == kSampleNone) continue;
    s |= kStageSample;
    if (p.entry_end > p.entry_begin) s |= kStageAdjust;
    if (p.mode != kSampleDraw) {
      s |= kStageGreedy;
      continue;
    }
    s |= kStageDraw;
    if (p.top_k > 0) s |= kStageTopK;
    if (p.top_p < 1.f) s |= kStageTopP;
  }
  return s;
}

size_t sample_workspace_bytes(int rows) {
  size_t bytes = 0;
  carve(nullptr, rows, &bytes);
  return bytes;
}

void sample_rows(const SampleRowsParams& p, cudaStream_t stream) {
  HM_REQUIRE(p.rows >= 0 && p.vocab > 0 && p.ld >= p.vocab, "sample_rows");
  if (p.rows == 0 || !(p.stages & kStageSample)) return;
  HM_REQUIRE(p.logits && p.params && p.token && p.raw_logit && p.workspace, "sample_rows");
  HM_REQUIRE(!(p.stages & kStageAdjust) || (p.entries && p.saved), "sample_rows");
  HM_REQUIRE(p.rows <= 65535, "sample_rows");
  HM_REQUIRE(p.workspace_bytes >= sample_workspace_bytes(p.rows), "sample_rows");
  HM_REQUIRE(p.blocks_per_row >= 0 && p.blocks_per_row <= kPartBlocks, "sample_rows");
  const int B = p.blocks_per_row ? p.blocks_per_row : blocks_per_row(p.rows);
  const bool pieces_fit = (p.vocab + B - 1) / B <= 65536;  // a block's slice (slice()): a piece's sum fits 32 bits
  const int hist_mode = p.select_hist != kHistAuto ? p.select_hist : pieces_fit ? kHistPieces : kHist64;
  HM_REQUIRE(hist_mode != kHistPieces || pieces_fit, "sample_rows");
  size_t bytes = 0;
  const Work w = carve(p.workspace, p.rows, &bytes);
  const bool selects = p.stages & (kStageTopK | kStageTopP);
  const char* zero_end = selects ? reinterpret_cast<char*>(w.hist + size_t(p.rows) * kSampleBuckets)
                                : reinterpret_cast<char*>(w.counter + p.rows);
  CUDA_CHECK(cudaMemsetAsync(w.counter, 0, zero_end - reinterpret_cast<char*>(w.counter), stream));
  const dim3 grid(B, p.rows);
  if (p.stages & kStageAdjust)
    launch(sample_adjust_rows, dim3(p.rows), dim3(NT), 0, stream, p.pdl, p.logits, p.ld, p.params, p.entries, p.saved);
  // Logits as narrow_logits saw them and only draw rows: its argmax is the max pass's result (the value and, what a
  // draw uses, the kept sets, are the same; greedy rows keep the pass: narrow ties -0 with +0, the definition not).
  const int32_t* argmax = p.argmax && !(p.stages & (kStageAdjust | kStageGreedy)) ? p.argmax : nullptr;
  if (!argmax)
    launch(sample_max, grid, dim3(NT), 0, stream, p.pdl, p.logits, p.vocab, p.ld, p.params, p.entries, p.saved, p.token,
           p.raw_logit, w, B);
  for (int stage = 0; stage < 2; stage++) {
    if (!(p.stages & (stage == 0 ? kStageTopK : kStageTopP))) continue;
    // top_p's levels 1 and 2 run in the gumbel pass's last block, over the listed tokens of its open bucket.
    const int levels = stage == 1 && !p.top_p_three_passes ? 1 : kSampleLevels;
    for (int level = 0; level < levels; level++) {
      launch(sample_select, grid, dim3(NT), 0, stream, p.pdl, p.logits, p.vocab, p.ld, p.params, w, B, stage, level,
             hist_mode, argmax, p.token, p.raw_logit);
      argmax = nullptr;  // the first pass stored the state
    }
  }
  if (p.stages & kStageDraw)
    launch(sample_gumbel, grid, dim3(NT), 0, stream, p.pdl, p.logits, p.vocab, p.ld, p.params, p.entries, p.saved,
           p.token, p.raw_logit, w, B, argmax);
}

}  // namespace hm::cuda
