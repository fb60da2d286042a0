// The expert GEMM on wgmma with its copies in a producer warp (MoeParams::wgmma_ws, HARMONIUM_MOE_WGMMA_WS=1; an
// A/B against moe_prefill_wgmma.cuh's kernel, whose math, tiles and bits it keeps).
//
// Why: in moe_prefill_wgmma every one of a block's 256 threads is a loader and a consumer, so each k-tile costs
// every warp its copies' issue and bookkeeping, a cp.async wait and a block barrier that ties the two warpgroups
// to the slowest warp (session 14's SASS of the 16-token tile: of 281 instructions a warp for two k-tiles, 120 the
// decode, ~160 the copies, scales, descriptors and fences; ncu at 2048 tokens: 0.82 eligible warps a scheduler).
// Here a ninth warp issues every copy of the ring and the two warpgroups only wait on a stage's mbarrier, decode,
// multiply and release the stage, each at its own pace.
//
//   - stages, swizzle, weight rows, scales, decode and MMAs as moe_prefill_wgmma (WgCfg<BN>, wg_decode_tile,
//     wg_mma_tile, wg_epilogue): the same instructions on the same values, so v1's bits;
//   - the producer warp: lane l copies chunk l & 7 of token rows l / 8 + 4 i, and weight chunks l + 32 j (8 a
//     k-tile); it waits for a stage's `empty` barrier (8 arrivals: one a consumer warp, after the MMAs that read the
//     stage retired) before refilling it; it signals a stage `full` (32 arrivals) LAG k-tiles after issuing it, once
//     cp.async.wait_group has seen its own copies land and fence.proxy.async has made them visible to wgmma (the
//     writer's fence, as moe_prefill_wgmma does before its barrier). LAG = STAGES - 2, the most that cannot
//     deadlock: the consumers release tile kt - 1's stage only once tile kt is full;
//   - the consumers: per k-tile, wait `full`, decode into one of two A register sets, MMA, wait_group 1 (the
//     previous tile's MMAs retired), release its stage; the scales as in moe_prefill_wgmma (one or two tiles ahead).
// Registers decide the shape (a ninth warp leaves a partition of the register file five or seven warps, so 96 or 72
// registers a thread, and ptxas serialises the MMAs of a tile that does not fit: warning C7511): the 16-token tile
// keeps three blocks an SM (72 registers), 32 and 64 two (96); the wide tiles and the fitted ones (128 registers
// with both A sets and 64 accumulators) run three consumer warpgroups, 192 weight rows, one block an SM with an
// 8-stage ring (13 warps: 128 registers). The row blocking does not touch a result's k sums, so the bits stay.
#pragma once

#include "moe_prefill_wgmma.cuh"

namespace hm::cuda::moe {
namespace {

constexpr int kWgWsMaxStages = 8;

// A tile of BN tokens on WGS consumer warpgroups (64 weight rows each) and the producer warp.
template <int BN, int WGS>
struct WsCfg {
  static constexpr int BM = 64 * WGS, CONSUMERS = 128 * WGS, THREADS = CONSUMERS + 32;
  static constexpr int X_BYTES = BN * kWgBK * 2, STAGE_BYTES = X_BYTES + BM * kWgRowBytes;
  // Two warpgroups: moe_prefill_wgmma's rings (two or three blocks share an SM); three: one block, 8 stages.
  static constexpr int STAGES = WGS == 2 ? WgCfg<BN>::STAGES : kWgWsMaxStages;
  static constexpr size_t SMEM = size_t(STAGES) * STAGE_BYTES + 1024;
  static_assert(STAGE_BYTES % 1024 == 0, "the swizzled token tiles must start 1024-aligned");
};
// The kernel's shape for a tile width (0: the fitted tiles).
template <int BN>
struct WsShape {
  static constexpr int WGS = BN == 0 || BN >= 80 ? 3 : 2;
  static constexpr int MINB = WGS == 3 ? 1 : BN <= 16 ? 3 : 2;
  static constexpr int THREADS = 128 * WGS + 32, BM = 64 * WGS;
  static constexpr size_t SMEM = WsCfg<BN == 0 ? 128 : BN, WGS>::SMEM;  // the fitted tiles: the widest's ring
};
static_assert(WsCfg<128, 3>::SMEM >= WsCfg<112, 3>::SMEM, "WsShape<0>: the 128-token ring is the deepest");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The producer warp's part of a tile: every k-tile's copies into the ring, in order, each stage signalled `full`.
template <bool GATE_UP, int BN, int WGS>
__device__ __forceinline__ void wg_ws_produce(const GemmArgs& a, uint32_t ring, uint64_t* full, uint64_t* empty, int e,
                                              int m0, int m_end) {
  using C = WsCfg<BN, WGS>;
  constexpr int NST = C::STAGES, LAG = NST - 2, XRW = BN / 4, WRW = C::BM / 16;  // token rows, weight rows a lane
  const int N = a.W.rows, K = a.W.K, kb = K >> 5, KT = K / kWgBK, n0 = blockIdx.x * C::BM;
  const int lane = threadIdx.x & 31;
  // Token rows lane / 8 + 4 i, chunk lane % 8: a row's byte offset from a.A (32 bits: prefill_wgmma_ok), 0 and
  // zero-filled past m_end. Row r's swizzled slot is r * 128 + ((chunk ^ (r & 7)) << 4); r & 7 is r0 + 4 (i & 1).
  const int xc = lane & 7, r0 = lane >> 3;
  uint32_t x_off[XRW];
  uint32_t x_live = 0;  // bit i: row r0 + 4 i is a token of the tile
#pragma unroll
  for (int i = 0; i < XRW; i++) {
    const int r = m0 + r0 + 4 * i;
    const bool ok = r < m_end;
    x_live |= uint32_t(ok) << i;
    x_off[i] = ok ? uint32_t(GATE_UP ? a.ws.perm[r] / a.k : r) * uint32_t(a.lda) * 2u : 0u;
  }
  const unsigned char* x_base = reinterpret_cast<const unsigned char*>(a.A) + xc * 16;
  const uint32_t x_dst0 = uint32_t(r0 * 128 + ((xc ^ r0) << 4)), x_dst1 = uint32_t((r0 + 4) * 128 + ((xc ^ (r0 + 4)) << 4));
  // Weight chunks lane + 32 j (j < WRW): row lane / 2 + 16 j, 16-byte half lane % 2 of its 32 bytes a k-tile.
  const int wr0 = lane >> 1, wc = lane & 1;
  const size_t w_row_bytes = size_t(kb) * 16;
  const unsigned char* w_base =
      static_cast<const unsigned char*>(a.W.data) + (size_t(e) * N + n0 + wr0) * w_row_bytes + wc * 16;
  uint32_t w_live = 0;
#pragma unroll
  for (int j = 0; j < WRW; j++) w_live |= uint32_t(n0 + wr0 + 16 * j < N) << j;
  const uint32_t w_dst = uint32_t(C::X_BYTES + wr0 * kWgRowBytes + wc * 16);

  int s = 0;
  uint32_t phase = 0;  // the parity of stage s's current round
  for (int kt = 0; kt < KT; kt++) {
    if (kt >= NST) mbar_wait(&empty[s], phase ^ 1u);  // round kt / NST - 1 of stage s released
    const uint32_t st = ring + uint32_t(s * C::STAGE_BYTES);
    const unsigned char* xk = x_base + kt * (kWgBK * 2);
#pragma unroll
    for (int i = 0; i < XRW; i++)
      cp_async16_zfill_s(st + ((i & 1) ? x_dst1 : x_dst0) + uint32_t(1024 * (i >> 1)), xk + x_off[i], (x_live >> i) & 1u);
    const unsigned char* wk = w_base + kt * 32;
#pragma unroll
    for (int j = 0; j < WRW; j++)
      cp_async16_zfill_s(st + w_dst + uint32_t(16 * kWgRowBytes * j), (w_live >> j) & 1u ? wk + 16 * j * w_row_bytes : w_base,
                         (w_live >> j) & 1u);
    cp_async_commit();
    if (kt >= LAG) {  // tile kt - LAG has landed: visible to wgmma, then signalled
      cp_async_wait<LAG>();
      fence_cp_async_for_wgmma();
      const int ss = s - LAG < 0 ? s - LAG + NST : s - LAG;
      mbar_arrive(&full[ss]);
    }
    if (++s == NST) {
      s = 0;
      phase ^= 1u;
    }
  }
  cp_async_wait<0>();
  fence_cp_async_for_wgmma();
  for (int kt = KT - LAG < 0 ? 0 : KT - LAG; kt < KT; kt++) mbar_arrive(&full[kt % NST]);
}

// The consumers' part: moe_prefill_wgmma's k-loop on barriers instead of the block's copies and syncs.
template <bool GATE_UP, int BN, int WGS>
__device__ __forceinline__ void wg_ws_consume(const GemmArgs& a, uint32_t ring, unsigned char* ring_p, uint64_t* full,
                                              uint64_t* empty, int e, int m0, int m_end) {
  using C = WsCfg<BN, WGS>;
  constexpr int NST = C::STAGES, NACC = BN / 2;
  constexpr bool SCALES2 = BN <= 32;  // the scales two tiles ahead (one for the wider tiles: registers)
  const int N = a.W.rows, K = a.W.K, kb = K >> 5, KT = K / kWgBK, n0 = blockIdx.x * C::BM;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wgi = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  const int lr0 = wgi * 64 + wq * 16 + g, lr1 = lr0 + 8;
  const bool ok0 = n0 + lr0 < N, ok1 = n0 + lr1 < N;
  const uint16_t* s0 = reinterpret_cast<const uint16_t*>(a.W.scales + (size_t(e) * N + (ok0 ? n0 + lr0 : 0)) * kb);
  const uint16_t* s1 = reinterpret_cast<const uint16_t*>(a.W.scales + (size_t(e) * N + (ok1 ? n0 + lr1 : 0)) * kb);

  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; i++) acc[i] = 0.f;
  uint32_t su[2][2];
  wg_scales(s0, s1, 0, KT, su[0]);
  if constexpr (SCALES2) wg_scales(s0, s1, 1, KT, su[1]);
  int s = 0, sprev = NST - 1;
  uint32_t phase = 0;
  // Tile kt from stage s into `cur`; then the MMAs of kt - 1 (in `prev`) retired, their stage released.
  auto step = [&](int kt, int slot, uint32_t (&cur)[4][4], uint32_t (&prev)[4][4]) {
    mbar_wait(&full[s], phase);
    uint32_t sc[4];
    if constexpr (SCALES2) {
      wg_scale_bytes(su[slot], sc);
      wg_scales(s0, s1, kt + 2, KT, su[slot]);
    } else {
      wg_scale_bytes(su[0], sc);
      wg_scales(s0, s1, kt + 1, KT, su[0]);
    }
    wg_decode_tile(ring_p + s * C::STAGE_BYTES + C::X_BYTES + t * 4, lr0, lr1, sc, cur);
    wg_mma_tile(acc, wg_desc_lo(ring + uint32_t(s * C::STAGE_BYTES)), cur);
    wg_wait<1>();
    wg_keep(prev);
    if (kt > 0) {
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[sprev]);
    }
    sprev = s;
    if (++s == NST) {
      s = 0;
      phase ^= 1u;
    }
  };
  uint32_t afa[4][4], afb[4][4];
  int kt = 0;
  for (; kt + 1 < KT; kt += 2) {
    step(kt, 0, afa, afb);
    step(kt + 1, 1, afb, afa);
  }
  if (kt < KT) step(kt, 0, afa, afb);
  wg_wait<0>();
  wg_keep(afa);
  wg_keep(afb);
  wg_fence_acc(acc);

  wg_epilogue<GATE_UP, BN>(a, acc, e, m0, m_end, n0, lr0, lr1, g, t);
}

template <bool GATE_UP, int BN, int WGS>
__device__ __forceinline__ void wg_tile_ws(const GemmArgs& a, uint32_t ring, unsigned char* ring_p, uint64_t* full,
                                           uint64_t* empty, int e, int m0, int m_end) {
  if (threadIdx.x >= 128 * WGS) return wg_ws_produce<GATE_UP, BN, WGS>(a, ring, full, empty, e, m0, m_end);
  wg_ws_consume<GATE_UP, BN, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
}
#endif

// Grid (ceil(N / WsShape<BN>::BM), prefill_max_tiles(P, E, BN or 128)), WsShape<BN>::THREADS threads and SMEM bytes
// of dynamic shared memory (BN: the tile width, or 0 for the fitted tiles).
template <bool GATE_UP, int BN>
__global__ void __launch_bounds__(WsShape<BN>::THREADS, WsShape<BN>::MINB) moe_prefill_wgmma_ws(GemmArgs a, int E) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int WGS = WsShape<BN>::WGS;
  extern __shared__ __align__(16) unsigned char wg_smem[];
  __shared__ uint64_t full[kWgWsMaxStages], empty[kWgWsMaxStages];
  unsigned char* ring_p;
  const uint32_t ring = wg_ring(wg_smem, ring_p);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kWgWsMaxStages; s++) {
      mbar_init(&full[s], 32);
      mbar_init(&empty[s], 4 * WGS);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  pdl_wait();
  pdl_trigger();
  int e, m0, m_end, w;
  if (!prefill_tile<BN == 0 ? 128 : BN, BN == 0>(a.ws.offsets, E, int(blockIdx.y), e, m0, m_end, &w)) return;
  if constexpr (BN != 0) {
    wg_tile_ws<GATE_UP, BN, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
  } else {
    switch (w) {
      case 16: return wg_tile_ws<GATE_UP, 16, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
      case 32: return wg_tile_ws<GATE_UP, 32, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
      case 48: return wg_tile_ws<GATE_UP, 48, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
      case 64: return wg_tile_ws<GATE_UP, 64, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
      case 80: return wg_tile_ws<GATE_UP, 80, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
      case 96: return wg_tile_ws<GATE_UP, 96, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
      case 112: return wg_tile_ws<GATE_UP, 112, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
      default: return wg_tile_ws<GATE_UP, 128, WGS>(a, ring, ring_p, full, empty, e, m0, m_end);
    }
  }
#endif
}

}  // namespace
}  // namespace hm::cuda::moe
