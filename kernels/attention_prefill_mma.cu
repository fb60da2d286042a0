// attn_prefill_mma: the prefill attention tile on tensor cores (flash-attention 2 style), head dim 64.
// One block per (prefill tile of up to 16 query tokens, KV head): its G = nq / nkv query heads all read that KV
// head's keys, so the block's rows are 16 tokens x G heads (128 rows for gpt-oss), G / HPW warps of HPW heads x 16
// tokens each. Per key tile of 64 keys (double-buffered by cp.async from the paged cache into XOR-swizzled shared
// memory, read with ldmatrix):
//   S = Q K^T       mma.sync m16n8k16, q rounded to bf16 once (fragments kept in registers), fp32 accumulators;
//   online softmax  fp32, base 2 (scores times scale * log2 e), per-lane partial row sums reduced at the end;
//   O += P V        P rounded to bf16 straight from the S accumulators (the C layout of S is the A layout of P),
//                   V through ldmatrix.trans; O fp32, rescaled by the running max.
// The sink joins the normaliser at the end, as in attn_prefill_tile.
// LO: q enters as two bf16 terms (hi + lo), so scores are fp32-grade (the products of K's bf16 values are exact in
// the fp32 accumulators); LOP: P too, so weights are fp32-grade, for twice the mma work. Why q hi + lo: bf16 q and P
// move a layer's attention output enough to flip a routing near-tie of the hd64-realyarn-3shards fixture (token 96,
// layer 1: the gap between its 3rd and 4th expert logits, 0.021 in fp32, shrinks to 0.0003 with bf16 q and P
// emulated on the CPU reference; on the GPU that token's KL against the oracle rose to 0.26, an expert flip's size).
// q hi + lo with P in bf16 (LOP false, kPrefillMmaQlo) is the default where wgmma is absent (on sm_90 the same math
// runs on attention_prefill_wgmma.cu): that fixture's prefill KL 1.77e-4 (q and P hi + lo: 5.41e-4, bound 1.89e-3);
// H200, session 9, full layers at 8k-32k, TFLOP/s, q and P hi + lo / qlo / bf16: 128-133 / 152-158 / 187-198. The
// bf16 kernels stay as G = 8 bench variants (kPrefillMmaBf16, kPrefillMma1b, kPrefillMma2).
//
// Batch invariance (docs/reproducibility.md): key tiles start at multiples of 64 (absolute key index) and run in
// order, a row's scores, max, sums and P V products depend on its own q and keys only (a tensor-core output element
// reads one row of A and one column of B), and a key tile with no visible key for a row leaves that row's state
// bit for bit unchanged (m stays, alpha is exactly 1, or 0 times a zero state before its first visible key; p = 0
// and zero products). Keys outside the tile's range are zero-filled, never read from the cache, so a masked key's
// V is always finite. So a row's bits do not depend on which rows share its tile (1-token tiles in
// HARMONIUM_BATCH_INVARIANT=1 decode give a prompt's bits).
#include <cfloat>
#include <climits>

#include "attention.h"
#include "attention_prefill_rows.cuh"
#include "common.cuh"

namespace hm::cuda {
namespace {

constexpr int kHD = 64;          // head dim (the only one this kernel takes; attention_prefill routes the others)
constexpr int kKeys = 64;        // keys per tile
constexpr int kChunks = kHD / 8; // 16-byte chunks per K/V row

__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* smem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, const void* smem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void mma_bf16_16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Element (row, 16-byte chunk) of a 64 x 64 bf16 tile: chunks XOR-swizzled by row so the 8 rows an ldmatrix
// 8x8 matrix reads sit in 8 different bank groups.
__device__ __forceinline__ int swz(int row, int chunk) { return row * kHD + ((chunk ^ (row & 7)) << 3); }

// MINB: blocks per SM the registers are capped for (2: 128 registers at 8 warps, 16 warps per SM). LO: q as two
// bf16 terms (hi + lo: fp32-grade scores, see the top); LOP: P as two terms too (fp32-grade weights).
template <int G, int HPW, int MINB, bool LO, bool LOP = LO>
__global__ void __launch_bounds__(32 * G / HPW, MINB) attn_prefill_mma(AttentionCommon c,
                                                                       const int32_t* __restrict__ tiles,
                                                                       int num_tiles) {
  constexpr int NW = G / HPW, NT = 32 * NW;
  __shared__ __align__(128) uint16_t Ks[2][kKeys * kHD];
  __shared__ __align__(128) uint16_t Vs[2][kKeys * kHD];
  pdl_wait();
  pdl_trigger();
  // Longest tiles first (a sequence's later tiles see more keys): block b takes tile num_tiles - 1 - b / nkv.
  const int tile = num_tiles - 1 - int(blockIdx.x) / c.nkv, kvh = int(blockIdx.x) % c.nkv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tg = lane & 3;  // mma fragment coordinates: row group, thread in group
  const int first = tiles[2 * tile], count = tiles[2 * tile + 1];
  const int seq = c.tok_seq[first];

  // Key ranges of this lane's rows (tokens g and g + 8) and of the whole tile.
  const PrefillKeys keys = prefill_keys(c, first, count, g, lane);
  const int t_lo = keys.t_lo, t_hi = keys.t_hi, t_lo_max = keys.t_lo_max, t_hi_min = keys.t_hi_min;

  // Stages key tile k0 (keys outside [t_lo, t_hi] zero-filled: never read from the cache).
  const int* bt = c.block_tables + size_t(seq) * c.max_blocks_per_seq;
  const int bs = c.block_size;
  const int bs_shift = (bs & (bs - 1)) == 0 ? __ffs(bs) - 1 : -1;  // power-of-two block sizes: shifts, no division
  auto load_tile = [&](int k0, int st) {
#pragma unroll
    for (int i = 0; i < kKeys * kChunks / NT; i++) {
      const int e = tid + i * NT, row = e / kChunks, ch = e % kChunks;
      const int key = k0 + row;
      const bool ok = key >= t_lo && key <= t_hi;
      size_t off = 0;
      if (ok) {
        const int blk = bs_shift >= 0 ? key >> bs_shift : key / bs;
        const size_t slot = size_t(bt[blk]) * bs + (key - blk * bs);
        off = (slot * c.nkv + kvh) * kHD + ch * 8;
      }
      cp_async16_zfill(&Ks[st][swz(row, ch)], c.k_cache + off, ok);
      cp_async16_zfill(&Vs[st][swz(row, ch)], c.v_cache + off, ok);
    }
    cp_async_commit();
  };
  const int k_begin = t_lo & ~(kKeys - 1);
  load_tile(k_begin, 0);

  // q fragments (A operand, 16 rows x 64 dims per head, bf16), straight from the fp32 rows.
  uint32_t qf[HPW][4][4], ql[LO ? HPW : 1][4][4];
#pragma unroll
  for (int hw = 0; hw < HPW; hw++) {
    const int h = kvh * G + warp * HPW + hw;
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int ti = g + 8 * r;
      const float* qrow = c.q + size_t(first + (ti < count ? ti : 0)) * c.ldq + h * kHD;
#pragma unroll
      for (int ks = 0; ks < 4; ks++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
          float2 v = make_float2(0.f, 0.f);
          if (ti < count) v = *reinterpret_cast<const float2*>(qrow + ks * 16 + half * 8 + 2 * tg);
          qf[hw][ks][r + 2 * half] = prefill_pack_bf16(v.x, v.y);
          if constexpr (LO) {
            const __nv_bfloat162 hi = __floats2bfloat162_rn(v.x, v.y);
            ql[hw][ks][r + 2 * half] = prefill_pack_bf16(v.x - __low2float(hi), v.y - __high2float(hi));
          }
        }
    }
  }
  const float sl2 = c.scale * kPrefillLog2e;

  float o[HPW][8][4];
  float m[HPW][2], l[HPW][2];
#pragma unroll
  for (int hw = 0; hw < HPW; hw++) {
#pragma unroll
    for (int n = 0; n < 8; n++) o[hw][n][0] = o[hw][n][1] = o[hw][n][2] = o[hw][n][3] = 0.f;
    m[hw][0] = m[hw][1] = -INFINITY;
    l[hw][0] = l[hw][1] = 0.f;
  }

  int st = 0;
  for (int k0 = k_begin; k0 <= t_hi; k0 += kKeys, st ^= 1) {
    if (k0 + kKeys <= t_hi) {
      load_tile(k0 + kKeys, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t* K = Ks[st];
    const uint16_t* V = Vs[st];

    // S = Q K^T: per 8-key column block j, two ldmatrix.x4 give the B fragments of the 4 k-steps (dims 0..63).
    float s[HPW][8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) {
#pragma unroll
      for (int hw = 0; hw < HPW; hw++) s[hw][j][0] = s[hw][j][1] = s[hw][j][2] = s[hw][j][3] = 0.f;
#pragma unroll
      for (int p = 0; p < 2; p++) {
        uint32_t b[4];
        ldsm_x4(b, &K[swz(8 * j + (lane & 7), 4 * p + (lane >> 3))]);
#pragma unroll
        for (int hw = 0; hw < HPW; hw++) {
          mma_bf16_16816(s[hw][j], qf[hw][2 * p], b[0], b[1]);
          mma_bf16_16816(s[hw][j], qf[hw][2 * p + 1], b[2], b[3]);
          if constexpr (LO) {
            mma_bf16_16816(s[hw][j], ql[hw][2 * p], b[0], b[1]);
            mma_bf16_16816(s[hw][j], ql[hw][2 * p + 1], b[2], b[3]);
          }
        }
      }
    }

    // Online softmax (base 2). Element e of s[.][j] is key k0 + 8j + 2tg + (e & 1) of row g + 8 * (e >> 1).
    const bool full = k0 >= t_lo_max && k0 + kKeys - 1 <= t_hi_min;  // every key visible to every active row
    uint32_t pf[HPW][4][4], pl[LOP ? HPW : 1][4][4];
#pragma unroll
    for (int hw = 0; hw < HPW; hw++) {
#pragma unroll
      for (int r = 0; r < 2; r++) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
          for (int e = 0; e < 2; e++) {
            // _rn: never contracted into an FMA with the subtraction below, which the masked path (a select in
            // between) could not match: a row's scores must not depend on whether its tile needed the mask.
            float x = __fmul_rn(s[hw][j][2 * r + e], sl2);
            if (!full) {
              const int key = k0 + 8 * j + 2 * tg + e;
              if (key < keys.lo[r] || key > keys.hi[r]) x = -INFINITY;
            }
            s[hw][j][2 * r + e] = x;
            mx = fmaxf(mx, x);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[hw][r], mx);
        // No visible key yet: subtract 0, so p = 0 and alpha = 0 keep the zero state (never -inf - -inf).
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = prefill_exp2(m[hw][r] - m_use);
        m[hw][r] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
          for (int e = 0; e < 2; e++) {
            const float p = prefill_exp2(__fsub_rn(s[hw][j][2 * r + e], m_use));
            s[hw][j][2 * r + e] = p;
            sum += p;
          }
        l[hw][r] = l[hw][r] * alpha + sum;
#pragma unroll
        for (int n = 0; n < 8; n++) {
          o[hw][n][2 * r] *= alpha;
          o[hw][n][2 * r + 1] *= alpha;
        }
      }
      // P as the A operand of k-step kk (keys 16kk .. 16kk + 15): column blocks 2kk and 2kk + 1.
#pragma unroll
      for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int a = 0; a < 4; a++) {  // a: the A register (rows g / g + 8, keys 16kk + 2tg / + 8)
          const float* sp = &s[hw][2 * kk + (a >> 1)][2 * (a & 1)];
          pf[hw][kk][a] = prefill_pack_bf16(sp[0], sp[1]);
          if constexpr (LOP) {
            const __nv_bfloat162 hi = __floats2bfloat162_rn(sp[0], sp[1]);
            pl[hw][kk][a] = prefill_pack_bf16(sp[0] - __low2float(hi), sp[1] - __high2float(hi));
          }
        }
    }

    // O += P V: per 8-dim column block n, two ldmatrix.x4.trans give the B fragments of the 4 k-steps (keys).
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int q2 = 0; q2 < 2; q2++) {
        uint32_t b[4];
        ldsm_x4_trans(b, &V[swz(32 * q2 + lane, n)]);
#pragma unroll
        for (int hw = 0; hw < HPW; hw++) {
          mma_bf16_16816(o[hw][n], pf[hw][2 * q2], b[0], b[1]);
          mma_bf16_16816(o[hw][n], pf[hw][2 * q2 + 1], b[2], b[3]);
          if constexpr (LOP) {
            mma_bf16_16816(o[hw][n], pl[hw][2 * q2], b[0], b[1]);
            mma_bf16_16816(o[hw][n], pl[hw][2 * q2 + 1], b[2], b[3]);
          }
        }
      }
    __syncthreads();  // every warp is done with stage st before the next iteration's load overwrites it
  }

  // The sink in the normaliser; rows past count write nothing.
#pragma unroll
  for (int hw = 0; hw < HPW; hw++) {
    const int h = kvh * G + warp * HPW + hw;
    const float sink = c.sinks[h] * kPrefillLog2e;
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float sum = l[hw][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int ti = g + 8 * r;
      if (ti >= count) continue;
      const float M = fmaxf(m[hw][r], sink);
      const float w = prefill_exp2(m[hw][r] - M);
      const float inv = 1.f / (sum * w + prefill_exp2(sink - M));
      uint16_t* out = c.out + size_t(first + ti) * c.nq * kHD + h * kHD + 2 * tg;
#pragma unroll
      for (int n = 0; n < 8; n++)
        *reinterpret_cast<uint32_t*>(out + 8 * n) = prefill_pack_bf16(o[hw][n][2 * r] * w * inv, o[hw][n][2 * r + 1] * w * inv);
    }
  }
}

}  // namespace

void attention_prefill_mma(const AttentionPrefillParams& p, int heads_per_warp, int min_blocks, bool lo,
                           cudaStream_t stream, bool lo_p) {
  const AttentionCommon& c = p.c;
  HM_REQUIRE(c.D == kHD, "attention_prefill_mma");
  HM_REQUIRE(c.nkv > 0 && c.nq % c.nkv == 0, "attention_prefill_mma");
  const int G = c.nq / c.nkv;
  HM_REQUIRE(G == 1 || G == 2 || G == 4 || G == 8 || G == 16, "attention_prefill_mma");
  // The precise shape: 1 head per warp, q hi + lo (P too when lo_p), registers for 2 blocks per SM below 8 warps
  // (one at 8 and 16), at every G. The bf16 shapes only for gpt-oss's G = 8 (the bench compares them).
  const bool dflt = heads_per_warp == 1 && min_blocks == (G < 8 ? 2 : 1) && lo;
  HM_REQUIRE(lo_p || dflt, "attention_prefill_mma (lo_p)");
  HM_REQUIRE(dflt || (G == 8 && !lo && (min_blocks == 1 || (min_blocks == 2 && heads_per_warp == 1))),
             "attention_prefill_mma (heads_per_warp, min_blocks, lo)");
  HM_REQUIRE(size_t(p.num_tiles) * c.nkv <= size_t(INT_MAX), "attention_prefill_mma");
  if (p.num_tiles == 0) return;
  const dim3 grid(p.num_tiles * c.nkv);
  auto go = [&](auto kernel, int threads) {
    launch(kernel, grid, dim3(threads), 0, stream, c.pdl, c, p.tiles, p.num_tiles);
  };
  switch (G) {
    case 1: lo_p ? go(attn_prefill_mma<1, 1, 2, true>, 32) : go(attn_prefill_mma<1, 1, 2, true, false>, 32); break;
    case 2: lo_p ? go(attn_prefill_mma<2, 1, 2, true>, 64) : go(attn_prefill_mma<2, 1, 2, true, false>, 64); break;
    case 4: lo_p ? go(attn_prefill_mma<4, 1, 2, true>, 128) : go(attn_prefill_mma<4, 1, 2, true, false>, 128); break;
    case 16: lo_p ? go(attn_prefill_mma<16, 1, 1, true>, 512) : go(attn_prefill_mma<16, 1, 1, true, false>, 512); break;
    default:
      if (dflt && !lo_p) go(attn_prefill_mma<8, 1, 1, true, false>, 256);
      else if (dflt) go(attn_prefill_mma<8, 1, 1, true>, 256);
      else if (min_blocks == 2) go(attn_prefill_mma<8, 1, 2, false>, 256);
      else if (heads_per_warp == 1) go(attn_prefill_mma<8, 1, 1, false>, 256);
      else go(attn_prefill_mma<8, 2, 1, false>, 128);
  }
}

}  // namespace hm::cuda
