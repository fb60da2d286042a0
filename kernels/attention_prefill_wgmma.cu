// attn_prefill_wgmma: the prefill attention tile on Hopper's warpgroup MMA (sm_90a), head dim 64: the same tile,
// masks, online softmax, sink and bits argument as attn_prefill_mma (attention_prefill_mma.cu, whose header says
// why q and P enter as bf16 hi + lo), with the two products as asynchronous wgmma instead of mma.sync:
//   - a block: one prefill tile of up to 16 query tokens x one KV head; its G query heads in warpgroups of 4 (warp
//     w of warpgroup wg holds head 4 wg + w for the tile's 16 tokens: the rows of mma.sync's fragments, so the
//     softmax below has attn_prefill_mma's layout register for register, its arithmetic as the softmax lambda
//     says); a warp past G is padding (q = 0, writes nothing);
//   - q rounded to bf16 (and its remainder, LO) once into shared memory in the 128-byte swizzle, so S = Q K^T reads
//     both operands by descriptor (no q registers: the accumulators of S and O and the P fragments fit beside each
//     other at two blocks an SM);
//   - key tiles of 64 keys through a 4-stage cp.async ring (K and V rows of 128 bytes, the same swizzle); V is
//     wgmma's B in N-major form (keys are its K, the head dims its contiguous N);
//   - per key tile: S by 4 (LO: 8) wgmma m64n64k16, retired; the softmax; P (LOP: hi + lo) into registers in wgmma's
//     A layout (the D layout of S); O += P V by 4 (8) wgmma, left in flight while the next tile's barrier, loads and
//     S are issued (its wait is S's wait; the ring is one stage deeper than the loads' lead, so no stage is refilled
//     under a pending MMA).
// The default on sm_90 is LO without LOP (q hi + lo, P bf16: kPrefillAuto, attention.h). H200, session 10, full
// layers at 2k / 8k / 32k tokens: 269 / 329 / 333 TFLOP/s (the mma.sync kernel with q and P hi + lo: 113 / 128 / 133);
// docs/performance.md has how it got there and bench/moe_playground/NOTES.md what was tried.
// Bits: every score, max, sum and product of a row depends on its own q row and the tile's keys only (a wgmma
// output element reads one row of A and one column of B, summed in a fixed order), key tiles start at multiples of
// 64 keys and run in order, and a tile with no visible key leaves a row's state unchanged (attn_prefill_mma's
// argument), so a row's bits do not depend on which rows share its tile.
#include <cfloat>
#include <climits>
#include <type_traits>

#include "attention.h"
#include "attention_prefill_rows.cuh"
#include "common.cuh"
#include "wgmma.cuh"

namespace hm::cuda {
namespace {

constexpr int kWHD = 64;             // head dim
constexpr int kWKeys = 64;           // keys a tile
constexpr int kWStages = 4;          // ring depth; the loads run 2 tiles ahead
constexpr int kWTileBytes = kWKeys * kWHD * 2;  // one K or V tile: 64 rows of 128 bytes
constexpr int kWQBytes = 64 * kWHD * 2;         // one warpgroup's q rows (64 x 128 bytes)

__host__ __device__ constexpr int wg_count(int G) { return (G + 3) / 4; }
// Dynamic shared memory: q (hi, and lo when LO) per warpgroup, the ring of K and V tiles, 1024 bytes of alignment.
__host__ __device__ constexpr size_t wg_attn_smem(int G, bool lo) {
  return size_t(wg_count(G)) * kWQBytes * (lo ? 2 : 1) + size_t(kWStages) * 2 * kWTileBytes + 1024;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Byte offset of (row, 16-byte chunk) in a tile of 128-byte rows, 1024-aligned: the 128-byte swizzle.
__device__ __forceinline__ uint32_t wswz(int row, int chunk) { return uint32_t(row * 128 + ((chunk ^ (row & 7)) << 4)); }

template <int N>
__device__ __forceinline__ void wkeep(const uint32_t (&a)[N][4]) {  // see wg_keep (wgmma.cuh)
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" ::"r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]) : "memory");
}
#endif

template <int G, bool LO, bool LOP>
__global__ void __launch_bounds__(128 * wg_count(G), G <= 8 ? 2 : 1)
    attn_prefill_wgmma(AttentionCommon c, const int32_t* __restrict__ tiles, int num_tiles) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int NWG = wg_count(G), NT = 128 * NWG;
  extern __shared__ __align__(16) unsigned char wa_smem[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(wa_smem));
  const uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* base_p = wa_smem + (base - raw);
  // Layout: q hi [NWG][64 rows], q lo [NWG][64 rows] (LO), then stage s's K tile and V tile.
  constexpr uint32_t kQLo = NWG * kWQBytes, kRing = kQLo * (LO ? 2 : 1);
  pdl_wait();
  pdl_trigger();
  const int tile = num_tiles - 1 - int(blockIdx.x) / c.nkv, kvh = int(blockIdx.x) % c.nkv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wgi = __shfl_sync(0xffffffffu, warp >> 2, 0);  // known warp-uniform: its descriptors in uniform registers
  const int g = lane >> 2, tg = lane & 3;
  const int hw = warp;  // this warp's head within the KV head's group (padding when >= G)
  const int first = tiles[2 * tile], count = tiles[2 * tile + 1];
  const int seq = c.tok_seq[first];

  const PrefillKeys keys = prefill_keys(c, first, count, g, lane);  // this lane's rows' and the tile's key ranges
  const int t_lo = keys.t_lo, t_hi = keys.t_hi, t_lo_max = keys.t_lo_max, t_hi_min = keys.t_hi_min;

  const int* bt = c.block_tables + size_t(seq) * c.max_blocks_per_seq;
  const int bs = c.block_size;
  const int bs_shift = (bs & (bs - 1)) == 0 ? __ffs(bs) - 1 : -1;
  const int k_begin = t_lo & ~(kWKeys - 1);
  const int n_tiles = t_hi < k_begin ? 0 : (t_hi - k_begin) / kWKeys + 1;
  // A thread's chunks of a tile: 16-byte chunk ch of rows row0 + i NT / 8. A key's K (V) row is row
  // slot * nkv + kvh of the layer's cache, 128 bytes each, counted in 32 bits (2^32 rows of 128 bytes is 512 GiB, past
  // any layer's cache) so each chunk's address is one wide multiply-add.
  const int ch = tid & 7, row0 = tid >> 3;
  const uint32_t bs_nkv = uint32_t(bs) * uint32_t(c.nkv);
  const char* k_bytes = reinterpret_cast<const char*>(c.k_cache) + ch * 16;
  const char* v_bytes = reinterpret_cast<const char*>(c.v_cache) + ch * 16;
  auto load_tile = [&](int j) {  // key tile j (keys k_begin + 64 j ..) into stage j % kWStages; always one group
    if (j < n_tiles) {
      const int k0 = k_begin + j * kWKeys;
      unsigned char* kst = base_p + kRing + (j % kWStages) * 2 * kWTileBytes;
#pragma unroll
      for (int i = 0; i < kWKeys * 8 / NT; i++) {
        const int row = row0 + i * (NT / 8), key = k0 + row;
        const bool ok = key >= t_lo && key <= t_hi;
        uint32_t kv_row = 0;
        if (ok) {
          const int blk = bs_shift >= 0 ? key >> bs_shift : key / bs;
          kv_row = uint32_t(bt[blk]) * bs_nkv + uint32_t(key - blk * bs) * uint32_t(c.nkv) + uint32_t(kvh);
        }
        const size_t off = size_t(kv_row) * (kWHD * 2);
        cp_async16_zfill(kst + wswz(row, ch), k_bytes + off, ok);
        cp_async16_zfill(kst + kWTileBytes + wswz(row, ch), v_bytes + off, ok);
      }
    }
    cp_async_commit();
  };
  load_tile(0);
  load_tile(1);

  // q (bf16 hi, and the remainder when LO) into shared memory: row 16 w + ti of warpgroup wg is token ti of head
  // 4 wg + w; rows of padding heads and of tokens past count are zero.
  for (int e = tid; e < NWG * 64 * 8; e += NT) {
    const int row = e >> 3, qc = e & 7, wq = row >> 6, r = row & 63, h_in = 4 * wq + (r >> 4), ti = r & 15;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (h_in < G && ti < count) {
      const float* src = c.q + size_t(first + ti) * c.ldq + (kvh * G + h_in) * kWHD + qc * 8;
      const float4 a = *reinterpret_cast<const float4*>(src), b = *reinterpret_cast<const float4*>(src + 4);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
    uint4 hi, lo;
    uint32_t* hp = &hi.x;
    uint32_t* lp = &lo.x;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const __nv_bfloat162 h2 = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
      hp[i] = *reinterpret_cast<const uint32_t*>(&h2);
      lp[i] = prefill_pack_bf16(v[2 * i] - __low2float(h2), v[2 * i + 1] - __high2float(h2));
    }
    const uint32_t off = uint32_t(wq) * kWQBytes + wswz(r, qc);
    *reinterpret_cast<uint4*>(base_p + off) = hi;
    if constexpr (LO) *reinterpret_cast<uint4*>(base_p + kQLo + off) = lo;
  }

  const float sl2 = c.scale * kPrefillLog2e;
  float o[32];
#pragma unroll
  for (int i = 0; i < 32; i++) o[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const uint32_t q_hi = base + uint32_t(wgi) * kWQBytes, q_lo = q_hi + kQLo;
  float s[32];
  // S = Q K^T (+ Q_lo K^T) of tile j into s, committed as one group.
  // The descriptors, built once: a descriptor plus offset / 16 is the descriptor of address + offset (the address
  // field, bits 0-13, holds any shared address below 256 KB without carrying).
  const uint64_t qh_desc = wg_desc_sw128(q_hi), ql_desc = wg_desc_sw128(q_lo), ring_desc = wg_desc_sw128(base + kRing);
  auto stage_desc = [&](int j) { return ring_desc + uint64_t((j % kWStages) * (2 * kWTileBytes / 16)); };
  auto issue_s = [&](int j) {
    const uint64_t kd = stage_desc(j);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_mma_ss_k16(s, qh_desc + 2 * kk, kd + 2 * kk, kk > 0 ? 1u : 0u);
    if constexpr (LO) {
#pragma unroll
      for (int kk = 0; kk < 4; kk++) wg_mma_ss_k16(s, ql_desc + 2 * kk, kd + 2 * kk, 1u);
    }
    wg_commit();
  };
  // O += P V (+ P_lo V) of tile j, committed as one group.
  auto issue_pv = [&](int j, const uint32_t (&pf)[4][4], const uint32_t (&pl)[LOP ? 4 : 1][4]) {
    const uint64_t vd = stage_desc(j) + kWTileBytes / 16;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_mma_k16_bmn(o, pf[kk], vd + 2048 / 16 * kk);
    if constexpr (LOP) {
#pragma unroll
      for (int kk = 0; kk < 4; kk++) wg_mma_k16_bmn(o, pl[kk], vd + 2048 / 16 * kk);
    }
    wg_commit();
  };
  // Online softmax (base 2) of tile j's scores: s becomes P, m and l move on, alpha[r] is the factor the state of
  // row g + 8 r needs (applied to o by rescale). s[4 jj + 2 r + e] is key k0 + 8 jj + 2 tg + e of row g + 8 r.
  // MASK: the tile has keys some row must not see (the diagonal, the window's edge); the tiles between run without
  // the per-key tests (as a branch the compiler predicated them into every tile: 160 of 626 instructions a tile).
  // The scale enters by one fma with the max (x * sl2 - m): max(x) * sl2 is max(x * sl2) (rounding is monotonic),
  // and a masked key is -inf in both paths, so a row's bits do not depend on whether its tile needed the mask.
  auto softmax = [&](int j, float (&alpha)[2], auto mask) {
    constexpr bool MASK = decltype(mask)::value;
    const int k0 = k_begin + j * kWKeys;
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = -INFINITY;
#pragma unroll
      for (int jj = 0; jj < 8; jj++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          float x = s[4 * jj + 2 * r + e];
          if constexpr (MASK) {
            const int key = k0 + 8 * jj + 2 * tg + e;
            if (key < keys.lo[r] || key > keys.hi[r]) x = -INFINITY;
            s[4 * jj + 2 * r + e] = x;
          }
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[r], mx * sl2);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      alpha[r] = prefill_exp2(m[r] - m_use);
      m[r] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int jj = 0; jj < 8; jj++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const float p = prefill_exp2(fmaf(s[4 * jj + 2 * r + e], sl2, -m_use));
          s[4 * jj + 2 * r + e] = p;
          sum += p;
        }
      l[r] = l[r] * alpha[r] + sum;
    }
  };
  // o times alpha; skipped when the warp's every row kept its max (alpha exactly 1: the same bits).
  auto rescale = [&](const float (&alpha)[2]) {
    if (__all_sync(0xffffffffu, alpha[0] == 1.f && alpha[1] == 1.f)) return;
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int r = 0; r < 2; r++) {
        o[4 * n + 2 * r] *= alpha[r];
        o[4 * n + 2 * r + 1] *= alpha[r];
      }
  };
  // P as the A operand of k16 step kk (keys 16 kk ..): register a is rows g / g + 8, keys 2 tg / + 8.
  auto pack = [&](uint32_t (&pf)[4][4], uint32_t (&pl)[LOP ? 4 : 1][4]) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
      for (int a = 0; a < 4; a++) {
        const float* sp = &s[4 * (2 * kk + (a >> 1)) + 2 * (a & 1)];
        pf[kk][a] = prefill_pack_bf16(sp[0], sp[1]);
        if constexpr (LOP) {
          const __nv_bfloat162 h2 = __floats2bfloat162_rn(sp[0], sp[1]);
          pl[kk][a] = prefill_pack_bf16(sp[0] - __low2float(h2), sp[1] - __high2float(h2));
        }
      }
  };
  auto ready = [&]() {  // after the cp.async wait: the tile's bytes (and the q stores) visible to every wgmma
    fence_cp_async_for_wgmma();
    __syncthreads();
  };

  uint32_t pf[4][4], pl[LOP ? 4 : 1][4];
  float alpha[2];
  using Masked = std::integral_constant<bool, true>;
  using Full = std::integral_constant<bool, false>;
  for (int j = 0; j < n_tiles; j++) {
    cp_async_wait<1>();  // tile j landed (tile j + 1 may be in flight)
    ready();
    issue_s(j);  // retired before the softmax; its wait retires the previous tile's P V too
    // The next loads (issued after the MMAs or before them: the same time on the H200), into the stage of tile
    // j - 2, whose P V every warpgroup retired in iteration j - 1.
    load_tile(j + 2);
    wg_wait<0>();
    wkeep(pf);
    if constexpr (LOP) wkeep(pl);
    wg_fence_acc(s);
    wg_fence_acc(o);
    // Every key of the tile visible to every active row: no per-key tests (the window's edge and the diagonal
    // take them).
    const int k0 = k_begin + j * kWKeys;
    if (k0 >= t_lo_max && k0 + kWKeys - 1 <= t_hi_min) softmax(j, alpha, Full{});
    else softmax(j, alpha, Masked{});
    rescale(alpha);
    pack(pf, pl);
    issue_pv(j, pf, pl);  // left in flight
  }
  wg_wait<0>();
  wkeep(pf);
  if constexpr (LOP) wkeep(pl);
  wg_fence_acc(o);
  if (hw >= G) return;

  const int h = kvh * G + hw;
  const float sink = c.sinks[h] * kPrefillLog2e;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int ti = g + 8 * r;
    if (ti >= count) continue;
    const float M = fmaxf(m[r], sink);
    const float w = prefill_exp2(m[r] - M);
    const float inv = 1.f / (sum * w + prefill_exp2(sink - M));
    uint16_t* out = c.out + size_t(first + ti) * c.nq * kWHD + h * kWHD + 2 * tg;
#pragma unroll
    for (int n = 0; n < 8; n++)
      *reinterpret_cast<uint32_t*>(out + 8 * n) =
          prefill_pack_bf16(o[4 * n + 2 * r] * w * inv, o[4 * n + 2 * r + 1] * w * inv);
  }
#endif
}

template <int G, bool LO, bool LOP>
void launch_prefill_wgmma(const AttentionPrefillParams& p, cudaStream_t stream) {
  constexpr auto kernel = attn_prefill_wgmma<G, LO, LOP>;
  constexpr size_t smem = wg_attn_smem(G, LO);
  allow_dynamic_smem<kernel>(smem);
  launch(kernel, dim3(p.num_tiles * p.c.nkv), dim3(128 * wg_count(G)), smem, stream, p.c.pdl, p.c, p.tiles,
         p.num_tiles);
}

template <bool LO, bool LOP>
void dispatch_prefill_wgmma(const AttentionPrefillParams& p, int G, cudaStream_t stream) {
  switch (G) {
    case 1: return launch_prefill_wgmma<1, LO, LOP>(p, stream);
    case 2: return launch_prefill_wgmma<2, LO, LOP>(p, stream);
    case 4: return launch_prefill_wgmma<4, LO, LOP>(p, stream);
    case 8: return launch_prefill_wgmma<8, LO, LOP>(p, stream);
    default: return launch_prefill_wgmma<16, LO, LOP>(p, stream);
  }
}

}  // namespace

bool attention_prefill_wgmma_ok(const AttentionCommon& c) {
  if (c.D != kWHD || c.nkv <= 0 || c.nq % c.nkv != 0 || !wgmma_device()) return false;
  const int G = c.nq / c.nkv;
  return G == 1 || G == 2 || G == 4 || G == 8 || G == 16;
}

void attention_prefill_wgmma(const AttentionPrefillParams& p, bool lo_p, cudaStream_t stream) {
  const AttentionCommon& c = p.c;
  HM_REQUIRE(attention_prefill_wgmma_ok(c), "attention_prefill_wgmma");
  HM_REQUIRE(size_t(p.num_tiles) * c.nkv <= size_t(INT_MAX), "attention_prefill_wgmma");
  if (p.num_tiles == 0) return;
  const int G = c.nq / c.nkv;
  if (lo_p) dispatch_prefill_wgmma<true, true>(p, G, stream);
  else dispatch_prefill_wgmma<true, false>(p, G, stream);
}

}  // namespace hm::cuda
