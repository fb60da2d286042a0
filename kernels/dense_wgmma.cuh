// The dense projections' GEMM on Hopper's warpgroup MMA (sm_90a): y[T, N] (+)= x[T, K] W^T + b for T above the
// GEMV's 8 tokens (q/k/v, o, router, lm_head rows of a prefill or a batched decode step). dense() takes it on an
// sm_90 device when K is a multiple of 64; bf16_gemm_mma (mma.sync) everywhere else.
//
// Computed transposed, D[weight row][token] = W x^T: the weights are wgmma's A (M = 64 rows a warpgroup), the
// tokens its N (16 .. 128), so a step of 64 tokens still fills whole MMAs while streaming each weight once.
//   - a block: NWG warpgroups of 64 weight rows (BM = 64 NWG) x BN tokens, 128 NWG threads, all loaders;
//   - k-tiles of 64 columns (one 128-byte row, the swizzle atom) through a ring of DwCfg::STAGES stages by
//     cp.async: the weights' and the tokens' rows (and x_lo's) stored in the 128-byte swizzle both descriptors
//     read; the ring runs STAGES - 2 tiles ahead so that a k-tile's MMAs may still run (wait_group 1) while the
//     next tile's are issued: a stage is refilled two tiles after its MMAs were issued, when they have retired;
//   - the first tiles' weights are issued before pdl_wait (they do not depend on the previous kernel);
//   - blockIdx.x walks the token tiles, so the blocks that share a weight tile run together and read it from L2;
//   - where the tiles leave SMs idle (batched decode steps: o at 45 tiles, the routers at 1-16) K is split over a
//     thread block cluster of 2-4 blocks a tile, summed in rank order (dense_wgmma_splits, DenseParams::split_k).
// Bits, unsplit (split_k = 1, which batch-invariant mode sets): bf16_gemm_mma's. Per k16 step the same products are
// summed into the same fp32 accumulator in the same order (x, then x_lo), and the H200's wgmma sums a k16 step as
// its mma.sync does (moe_prefill_wgmma.cuh found the same); the op tests check it bit for bit ("mma_bits"), so
// batch-invariant mode may take either kernel.
#pragma once

#include <cooperative_groups.h>

#include "wgmma.cuh"

namespace hm::cuda {
namespace {

constexpr int kDwBK = 64;  // columns a k-tile: one 128-byte swizzle atom a row

// The tile shapes, most rows and tokens first (dense_wgmma_tile picks one): {warpgroups, tokens}. The two widest
// (kDwWide of them, 192 and 256 tokens: two MMAs a k16 step, N 128 and the rest) only without x_lo, whose second
// token tile would not leave three stages in shared memory; asked for with x_lo they run the 128-token tile.
struct DwTile {
  int nwg, bn;
};
constexpr DwTile kDwTiles[] = {{2, 256}, {2, 192}, {2, 128}, {2, 64}, {1, 64}, {1, 32}, {1, 16}};
constexpr int kDwWide = 2;
constexpr int kDwTileCount = int(sizeof(kDwTiles) / sizeof(kDwTiles[0]));

template <int NWG, int BN, bool LO>
struct DwCfg {
  static constexpr int BM = 64 * NWG, THREADS = 128 * NWG;
  static constexpr int W_BYTES = BM * 128, X_BYTES = BN * 128;
  static constexpr int STAGE_BYTES = W_BYTES + X_BYTES * (LO ? 2 : 1);
  // As many stages as fit about 192 KB (3 .. 8): the narrow tiles are bound by the weights' bytes in flight.
  static constexpr int STAGES = 196608 / STAGE_BYTES > 8 ? 8 : 196608 / STAGE_BYTES < 3 ? 3 : 196608 / STAGE_BYTES;
  static constexpr int AHEAD = STAGES - 2;  // k-tiles in flight
  static constexpr size_t SMEM = size_t(STAGES) * STAGE_BYTES + 1024;  // + the ring's 1024-byte alignment
  static_assert(SMEM <= 227 * 1024, "a block's shared memory");
  static_assert(STAGE_BYTES % 1024 == 0, "swizzled tiles start 1024-aligned");
  static_assert(BN == 16 || BN == 32 || BN == 64 || BN == 128 || BN == 192 || BN == 256,
                "wg_mma_ss_k16 has N 16, 32, 64, 128; 192 and 256 are two MMAs (128 + the rest)");
  static_assert(BN <= 128 || !LO, "the wide tiles leave no room for x_lo's stages");
};

// The tile for T tokens x N rows. Where a tile of two warpgroups (128 rows) has 3/5 of a block an SM or more, the
// one of them with the least time by waves x tokens a block / its rate a block (every such tile runs a block an
// SM: 192 KB of ring), the wide ones (192, 256 tokens) without x_lo only; else, as before the wide tiles, the
// widest tile no wider than the tokens with 3/5 of a block an SM, or the narrowest with the most blocks.
// Rates, H200 (HM_OP_BENCH bench_dense_gemm, us per block-wave against the 128-token tile's, o and q/k/v at T =
// 2048 and 8192): 256 tokens 1.09, 192 1.02, 128 1.0, 64 0.87. The waves decide as much as the rates: o (N = 2880)
// at T = 1024 128x64 109 us (128x128 123, 128x256 115), at 2048 128x192 184 (128x128 188, 128x256 228: 1.4 waves),
// at 8192 128x256 676 (128x128 730); q/k/v x + x_lo (N = 5120) at T = 512 128x64 74.5 (128x128 88.5: 1.2 waves),
// 1024 124.6 (133.1), at 2048 and 8192 128x128 (222.5 / 900.4; 128x64 248.9 / 1,047). Before: q/k/v T = 16
// 64x16 12.6 (64x64 21.0), T = 64 64x64 21.2 (64x32 29.6), T = 256 128x128 40.1 (128x64 49.1); o T = 16 64x16 14.9
// (26.5), T = 256 128x64 36.5 (65.7); routers 64x16 (11.7 at T = 64, mma.sync 55).
inline int dense_wgmma_tile(int T, int N, int sms, bool lo = false) {
  const int widest = T <= 16 ? 16 : ceil_div(T, 16) * 16;
  constexpr int k64 = kDwWide + 1;  // the index of 128 rows x 64 tokens, the narrowest two-warpgroup tile
  if (widest >= 64 && long(ceil_div(N, 128)) * ceil_div(T, 64) * 5 >= long(sms) * 3) {
    constexpr double kRate[k64 + 1] = {1.09, 1.02, 1.0, 0.87};  // 256, 192, 128, 64 tokens
    int best = k64;
    double best_cost = 0;
    for (int i = lo ? kDwWide : 0; i <= k64; i++) {
      if (kDwTiles[i].bn > widest) continue;
      const long waves = ceil_div(long(ceil_div(N, 128)) * ceil_div(T, kDwTiles[i].bn), long(sms));
      const double cost = double(waves) * kDwTiles[i].bn / kRate[i];
      if (best_cost == 0 || cost < best_cost) best = i, best_cost = cost;
    }
    return best;
  }
  int best = kDwTileCount - 1;
  long best_blocks = 0;
  for (int i = kDwWide; i < kDwTileCount; i++) {
    if (kDwTiles[i].bn > widest) continue;
    const long blocks = long(ceil_div(N, 64 * kDwTiles[i].nwg)) * ceil_div(T, kDwTiles[i].bn);
    if (blocks * 5 >= long(sms) * 3) return i;
    if (blocks >= best_blocks) best = i, best_blocks = blocks;
  }
  return best;
}

// The K splits for `blocks` tiles of KT k-tiles with `resident` blocks of the kernel on the GPU at once: the most
// (up to 4) that still fit one wave with at least 16 k-tiles a split (8 for grids of a block per 8 SMs or fewer:
// the routers). H200 (HM_OP_BENCH bench_dense_gemm, us, unsplit -> split): q/k/v x + x_lo T = 16 15.7 -> 11.3 (2;
// 3 gave 14.8), o T = 16 21.1 -> 10.1 (4), o T = 64 24.1 -> 18.1 (2), routers 15.1 -> 5.4 (4); q/k/v at T = 64 and
// 256 and o at 256 (a block an SM, 80-92 blocks) got slower split (21.6 -> 24.4, 44.7 -> 51.7, 34.2 -> 50.1): 1.
inline int dense_wgmma_splits(long blocks, int KT, long resident, int sms) {
  const int min_kt = blocks * 8 <= sms ? 8 : 16;
  int s = 1;
  while (s < 4 && blocks * (s + 1) <= resident && KT / (s + 1) >= min_kt) s++;
  return s;
}

// The epilogue of both wgmma GEMMs (this one and dense_tma.cuh's): acc[4 j + 2 h + c] is weight row n16 + g + 8 h (a
// warp's 16 rows from n16), token column m0 + 8 j + 2 t + c (wgmma's D); bf16_gemm_mma's expressions, for its bits.
// With `accumulate` the old values of a group of column blocks (8 a group, 32 values a thread; 4 at the 256-token
// tiles, whose accumulators leave fewer registers) are all loaded before any is stored:
// element by element, each load waited behind the previous store (the compiler cannot prove two of y's elements
// apart), and o's += at 2048 tokens took 141 us against 80 for o = (H200, dense_tma).
template <int BN>
__device__ __forceinline__ void dense_store_tile(const float* acc, const uint16_t* __restrict__ b, float* __restrict__ y,
                                                 int ldy, int M, int N, int m0, int n16, int g, int t,
                                                 bool accumulate) {
  constexpr int G = BN > 128 ? 4 : BN / 8 < 8 ? BN / 8 : 8;
  float bias[2];
  bool ok[2];
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int n = n16 + g + 8 * h;
    ok[h] = n < N;
    bias[h] = ok[h] && b ? bf2f_bits(b[n]) : 0.f;
  }
#pragma unroll
  for (int j0 = 0; j0 < BN / 8; j0 += G) {
    float old[2][G][2] = {};
    if (accumulate) {
#pragma unroll
      for (int h = 0; h < 2; h++)
#pragma unroll
        for (int jj = 0; jj < G; jj++)
#pragma unroll
          for (int c = 0; c < 2; c++) {
            const int m = m0 + 8 * (j0 + jj) + 2 * t + c;
            old[h][jj][c] = ok[h] && m < M ? y[size_t(m) * ldy + n16 + g + 8 * h] : 0.f;
          }
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
      if (!ok[h]) continue;
#pragma unroll
      for (int jj = 0; jj < G; jj++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int m = m0 + 8 * (j0 + jj) + 2 * t + c;
          if (m >= M) continue;
          const float v = acc[4 * (j0 + jj) + 2 * h + c] + bias[h];
          y[size_t(m) * ldy + n16 + g + 8 * h] = accumulate ? old[h][jj][c] + v : v;
        }
    }
  }
}

// Grid (ceil(T / BN), ceil(N / BM), S), DwCfg::THREADS threads, DwCfg::SMEM bytes of dynamic shared memory. S > 1
// splits K: the S blocks of a tile are one thread block cluster along z, block z computes the k-tiles
// [z KT / S, (z + 1) KT / S), and block 0 adds the others' accumulators in rank order (distributed shared memory)
// before the epilogue: deterministic, but not the unsplit sum's bits (dense_wgmma_splits says when).
template <int NWG, int BN, bool LO>
__global__ void __launch_bounds__(128 * NWG) dense_wgmma(const uint16_t* __restrict__ x,
                                                        const uint16_t* __restrict__ x_lo, int ldx,
                                                        const uint16_t* __restrict__ W,
                                                        const uint16_t* __restrict__ b, float* __restrict__ y,
                                                        int ldy, int M, int N, int K, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = DwCfg<NWG, BN, LO>;
  constexpr int NST = C::STAGES, AHEAD = C::AHEAD, NACC = BN / 2;
  constexpr int WR = C::BM * 8 / C::THREADS;                    // weight-row chunks a thread (4)
  constexpr int XR = (BN * 8 + C::THREADS - 1) / C::THREADS;     // token-row chunks a thread
  extern __shared__ __align__(16) unsigned char dw_smem[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(dw_smem));
  const uint32_t ring = (raw + 1023u) & ~1023u;
  unsigned char* ring_p = dw_smem + (ring - raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wgi = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  const int splits = int(gridDim.z), KT_all = K / kDwBK;
  const int kt0 = KT_all * int(blockIdx.z) / splits, KT = KT_all * (int(blockIdx.z) + 1) / splits - kt0;
  const int m0 = blockIdx.x * BN, n0 = blockIdx.y * C::BM;
  W += size_t(kt0) * kDwBK;  // this split's first column (x, x_lo below)
  x += size_t(kt0) * kDwBK;
  if (LO) x_lo += size_t(kt0) * kDwBK;

  // Chunk c (16 bytes) of row r goes to r * 128 + ((c ^ (r & 7)) << 4): the 128-byte swizzle.
  auto issue_w = [&](int kt) {
    unsigned char* st = ring_p + (kt % NST) * C::STAGE_BYTES;
#pragma unroll
    for (int i = 0; i < WR; i++) {
      const int idx = tid + i * C::THREADS, r = idx >> 3, c = idx & 7;
      const bool ok = n0 + r < N;
      cp_async16_zfill(st + r * 128 + ((c ^ (r & 7)) << 4), ok ? W + size_t(n0 + r) * K + kt * kDwBK + c * 8 : W,
                       ok);
    }
  };
  auto issue_x = [&](int kt) {
    unsigned char* st = ring_p + (kt % NST) * C::STAGE_BYTES + C::W_BYTES;
#pragma unroll
    for (int i = 0; i < XR; i++) {
      const int idx = tid + i * C::THREADS, r = idx >> 3, c = idx & 7;
      if (r >= BN) break;
      const bool ok = m0 + r < M;
      const size_t off = size_t(ok ? m0 + r : 0) * ldx + kt * kDwBK + c * 8;
      cp_async16_zfill(st + r * 128 + ((c ^ (r & 7)) << 4), x + off, ok);
      if (LO) cp_async16_zfill(st + C::X_BYTES + r * 128 + ((c ^ (r & 7)) << 4), x_lo + off, ok);
    }
  };

  // The first AHEAD tiles' weights before the wait (in the first group with tile 0's tokens), then one group a tile.
  for (int s = 0; s < AHEAD; s++)
    if (s < KT) issue_w(s);
  pdl_wait();
  pdl_trigger();
  for (int s = 0; s < AHEAD; s++) {
    if (s < KT) issue_x(s);
    cp_async_commit();
  }

  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; i++) acc[i] = 0.f;
  for (int kt = 0; kt < KT; kt++) {
    cp_async_wait<AHEAD - 1>();  // this thread's copies of tile kt have landed
    fence_cp_async_for_wgmma();
    __syncthreads();  // everyone's; every warpgroup's MMAs of tile kt - 2 have retired (wait_group 1 below)
    if (kt + AHEAD < KT) {  // into the stage of tile kt - 2
      issue_w(kt + AHEAD);
      issue_x(kt + AHEAD);
    }
    cp_async_commit();
    const uint32_t st = ring + uint32_t((kt % NST) * C::STAGE_BYTES);
    const uint32_t a_addr = st + uint32_t(wgi * 64 * 128), x_addr = st + uint32_t(C::W_BYTES);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < kDwBK / 16; kk++) {
      const uint64_t da = wg_desc_sw128(a_addr + uint32_t(kk * 32));
      if constexpr (BN <= 128) {
        wg_mma_ss_k16(acc, da, wg_desc_sw128(x_addr + uint32_t(kk * 32)));
        if (LO) wg_mma_ss_k16(acc, da, wg_desc_sw128(x_addr + uint32_t(C::X_BYTES + kk * 32)));
      } else {  // tokens 0-127 into acc[0, 64), the rest (rows 128.. of the tile, 16 KB on) into acc[64, BN / 2)
        wg_mma_ss_k16(*reinterpret_cast<float(*)[64]>(acc), da, wg_desc_sw128(x_addr + uint32_t(kk * 32)));
        wg_mma_ss_k16(*reinterpret_cast<float(*)[BN / 2 - 64]>(acc + 64), da,
                      wg_desc_sw128(x_addr + uint32_t(128 * 128 + kk * 32)));
      }
    }
    wg_commit();
    wg_wait<1>();
  }
  wg_wait<0>();
  wg_fence_acc(acc);
  cp_async_wait<0>();
  if (splits > 1) {  // block 0 of the cluster sums the splits in rank order; the others stop here
    const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    __syncthreads();  // every warpgroup's MMAs have read their stages: the ring is free
    float* red = reinterpret_cast<float*>(ring_p);  // [NACC][THREADS]
#pragma unroll
    for (int i = 0; i < NACC; i++) red[i * C::THREADS + tid] = acc[i];
    cluster.sync();
    const int rank = int(cluster.block_rank());
    if (rank == 0)
      for (int r = 1; r < splits; r++) {
        const float* other = cluster.map_shared_rank(red, r);
#pragma unroll
        for (int i = 0; i < NACC; i++) acc[i] += other[i * C::THREADS + tid];
      }
    cluster.sync();  // the others' shared memory stays until block 0 has read it
    if (rank != 0) return;
  }

  dense_store_tile<BN>(acc, b, y, ldy, M, N, m0, n0 + wgi * 64 + wq * 16, g, t, accumulate);
#endif
}

}  // namespace
}  // namespace hm::cuda
