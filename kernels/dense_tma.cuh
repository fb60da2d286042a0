// The dense projections' GEMM for prompt-sized steps on Hopper (sm_90a), fed by the tensor memory accelerator:
// y[T, N] (+)= x[T, K] W^T + b, computed transposed as dense_wgmma.cuh's (D[weight row][token] = W x^T, the
// weights wgmma's A, the tokens its N), with the same MMAs in the same order, so the same bits (op tests' mma_bits).
//
// Why a second kernel: dense_wgmma.cuh's loop has every thread issue its share of a k-tile's copies (cp.async, the
// addresses rebuilt each tile) and meet the others at a block barrier every k-tile; a 128-row k-tile costs it about
// 1 us whatever its MMAs (session 15), so o at 2,048 tokens runs at ~266 TFLOP/s. Here one producer warp issues a
// k-tile's copies as two or three TMA boxes completing on the stage's mbarrier, and the two consumer warpgroups wait
// on that barrier alone and hand the stage back by arriving on its "empty" barrier once their MMAs have retired
// (wgmma wait 1: one k-tile of MMAs stays in flight under the next tile's wait). No block barrier in the loop.
//   - a block: 2 consumer warpgroups of 64 weight rows (BM = 128) x BN tokens (128 or 256: two MMAs of 128 a k16
//     step, as dense_wgmma's wide tiles), plus warp 8, the producer; one block an SM (a ring of about 192 KB);
//   - k-tiles of 64 columns (128 bytes, the swizzle atom): the weight box (64 x 128 rows), the token box (64 x BN)
//     and x_lo's, all in the 128-byte swizzle wgmma's descriptors read (the TMA writes it; stages 1024-aligned);
//     rows past N or T are zero-filled by the TMA and never stored;
//   - the first stages' weight boxes are issued before pdl_wait (they do not depend on the previous kernel);
//   - blockIdx.x walks the token tiles, so the blocks sharing a weight tile run together and read it from L2.
// No K split: dense() keeps dense_wgmma's cluster split for decode batches, and takes this kernel by
// dense_tma_auto (below) or DenseParams::gemm 3.
#pragma once

#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include "dense_wgmma.cuh"  // dense_store_tile, the epilogue both share
#include "mbarrier.cuh"
#include "wgmma.cuh"

namespace hm::cuda {
namespace {

template <int BN, bool LO>
struct DtCfg {
  static constexpr int BM = 128, THREADS = 288;  // 2 consumer warpgroups + the producer warp
  static constexpr int W_BYTES = BM * 128, X_BYTES = BN * 128;
  static constexpr int STAGE_BYTES = W_BYTES + X_BYTES * (LO ? 2 : 1);
  static constexpr int STAGES = 196608 / STAGE_BYTES > 8 ? 8 : 196608 / STAGE_BYTES;
  static constexpr size_t SMEM = size_t(STAGES) * STAGE_BYTES + 1024 + 2 * 8 * STAGES;  // + alignment, barriers
  static_assert(STAGES >= 3, "a ring of at least three stages");
  static_assert(SMEM <= 227 * 1024, "a block's shared memory");
  static_assert(BN == 128 || (BN == 256 && !LO), "tiles of 128 tokens, or 256 without x_lo");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}
#endif

// Grid (ceil(T / BN), ceil(N / 128)), DtCfg::THREADS threads, DtCfg::SMEM bytes of dynamic shared memory. The maps:
// W [N, K], x and x_lo [T, K] (row strides ldx), boxes of 64 columns x 128 / BN / BN rows, 128-byte swizzle.
template <int BN, bool LO>
__global__ void __launch_bounds__(288, 1)
    dense_tma(const __grid_constant__ CUtensorMap map_w, const __grid_constant__ CUtensorMap map_x,
              const __grid_constant__ CUtensorMap map_xlo, const uint16_t* __restrict__ b, float* __restrict__ y,
              int ldy, int M, int N, int K, bool accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = DtCfg<BN, LO>;
  constexpr int NST = C::STAGES, NACC = BN / 2;
  extern __shared__ __align__(16) unsigned char dt_smem[];
  const uint32_t raw = smem_u32(dt_smem);
  const uint32_t ring = (raw + 1023u) & ~1023u;
  uint64_t* full = reinterpret_cast<uint64_t*>(dt_smem + (ring - raw) + NST * C::STAGE_BYTES);
  uint64_t* empty = full + NST;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int KT = K / 64, m0 = blockIdx.x * BN, n0 = blockIdx.y * C::BM;
  if (tid == 0) {
    for (int s = 0; s < NST; s++) {
      mbar_init(&full[s], 1);   // the producer's expect_tx; the boxes' bytes complete it
      mbar_init(&empty[s], 8);  // one arrival a consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (warp == 8) {  // the producer: one lane issues every box
    if (lane == 0) {
      constexpr uint32_t kTx = uint32_t(C::STAGE_BYTES);
      const int first = KT < NST ? KT : NST;
      for (int kt = 0; kt < first; kt++) {  // the weights of the first stages before the previous kernel is done
        mbar_expect_tx(&full[kt], kTx);
        tma_load_2d(ring + kt * C::STAGE_BYTES, &map_w, kt * 64, n0, &full[kt]);
      }
      pdl_wait();
      pdl_trigger();
      for (int kt = 0; kt < KT; kt++) {
        const int s = kt % NST;
        const uint32_t st = ring + uint32_t(s * C::STAGE_BYTES);
        if (kt >= NST) {
          mbar_wait(&empty[s], uint32_t((kt / NST - 1) & 1));  // the consumers' MMAs of tile kt - NST retired
          mbar_expect_tx(&full[s], kTx);
          tma_load_2d(st, &map_w, kt * 64, n0, &full[s]);
        }
        tma_load_2d(st + C::W_BYTES, &map_x, kt * 64, m0, &full[s]);
        if (LO) tma_load_2d(st + C::W_BYTES + C::X_BYTES, &map_xlo, kt * 64, m0, &full[s]);
      }
    }
    return;
  }

  // The consumers: warpgroup wgi of 64 weight rows.
  pdl_wait();  // the epilogue reads y (accumulate) and the next kernel may write it
  pdl_trigger();
  const int wgi = warp >> 2, wq = warp & 3, g = lane >> 2, t = lane & 3;
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; i++) acc[i] = 0.f;
  for (int kt = 0; kt < KT; kt++) {
    const int s = kt % NST;
    mbar_wait(&full[s], uint32_t((kt / NST) & 1));
    const uint32_t st = ring + uint32_t(s * C::STAGE_BYTES);
    const uint32_t a_addr = st + uint32_t(wgi * 64 * 128), x_addr = st + uint32_t(C::W_BYTES);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      const uint64_t da = wg_desc_sw128(a_addr + uint32_t(kk * 32));
      if constexpr (BN == 128) {
        wg_mma_ss_k16(acc, da, wg_desc_sw128(x_addr + uint32_t(kk * 32)));
        if (LO) wg_mma_ss_k16(acc, da, wg_desc_sw128(x_addr + uint32_t(C::X_BYTES + kk * 32)));
      } else {  // tokens 0-127 into acc[0, 64), 128-255 (16 KB on) into acc[64, 128): dense_wgmma's wide tile
        wg_mma_ss_k16(*reinterpret_cast<float(*)[64]>(acc), da, wg_desc_sw128(x_addr + uint32_t(kk * 32)));
        wg_mma_ss_k16(*reinterpret_cast<float(*)[64]>(acc + 64), da,
                      wg_desc_sw128(x_addr + uint32_t(128 * 128 + kk * 32)));
      }
    }
    wg_commit();
    wg_wait<1>();  // tile kt - 1's MMAs have retired: its stage goes back to the producer
    if (kt > 0 && lane == 0) mbar_arrive(&empty[(kt - 1) % NST]);
  }
  wg_wait<0>();
  wg_fence_acc(acc);

  dense_store_tile<BN>(acc, b, y, ldy, M, N, m0, n0 + wgi * 64 + wq * 16, g, t, accumulate);  // dense_wgmma's epilogue
#endif
}

// A 2-D map of a bf16 row-major matrix [rows, cols] (row stride `ld` elements) in boxes of 64 columns x box_rows,
// 128-byte swizzle, zeros past the edges. The driver's encoder is looked up once through the runtime.
inline CUtensorMap dense_tma_map(const uint16_t* base, int rows, int cols, int ld, int box_rows) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
    HM_REQUIRE(fn && q == cudaDriverEntryPointSuccess, "dense (tma: no cuTensorMapEncodeTiled in the driver)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap m;
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(ld) * 2};
  const cuuint32_t box[2] = {64, cuuint32_t(box_rows)};
  const cuuint32_t estr[2] = {1, 1};
  const CUresult r = encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<uint16_t*>(base), dims, strides, box,
                            estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  HM_REQUIRE(r == CUDA_SUCCESS, "dense (tma: the tensor map was refused)");
  return m;
}

template <int BN, bool LO>
void launch_dense_tma(const DenseParams& p, cudaStream_t s) {
  using C = DtCfg<BN, LO>;
  allow_dynamic_smem<dense_tma<BN, LO>>(C::SMEM);
  const CUtensorMap mw = dense_tma_map(p.W, p.N, p.K, p.K, C::BM);
  const CUtensorMap mx = dense_tma_map(p.x, p.T, p.K, p.ldx, BN);
  const CUtensorMap mlo = LO ? dense_tma_map(p.x_lo, p.T, p.K, p.ldx, BN) : mx;
  launch(dense_tma<BN, LO>, dim3(ceil_div(p.T, BN), ceil_div(p.N, C::BM)), dim3(C::THREADS), C::SMEM, s, p.pdl, mw,
         mx, mlo, p.b, p.y, p.ldy, p.T, p.N, p.K, p.accumulate);
}

// Where dense() takes this kernel by default: prompt-sized steps of the big projections with at least half a wave of
// 128-token tiles. H200 (HM_OP_BENCH=1 hm_op_test bench_dense_gemm, graph + PDL, us, this kernel / dense_wgmma's
// pick): q/k/v (x + x_lo) T = 64 29.2 / 21.7, 256 30.1 / 44.6, 512 59.8 / 73.8, 1024 89.6 / 123.6, 2048 151.6 /
// 224.3 (796 TFLOP/s of MMAs), 8192 735 / 894; o (+=) T = 256 35.9 / 33.2, 512 41.7 / 59.4, 1024 80.3 / 107.6, 2048
// 140.7 / 181.0, 8192 483 / 669; the routers (N = 32, 128: one row tile) 28-29 against 5-20 at every T.
inline bool dense_tma_auto(int T, int N, int sms) {
  return T >= 256 && N >= 1024 && long(ceil_div(N, 128)) * ceil_div(T, 128) * 2 >= sms;
}

// The token tile: 256 (without x_lo) where it needs no more waves than 128 at half the tiles' count, else 128.
inline int dense_tma_bn(int T, int N, int sms, bool lo) {
  if (lo) return 128;
  const long rows = ceil_div(N, 128);
  const long w256 = ceil_div(rows * ceil_div(T, 256), long(sms)), w128 = ceil_div(rows * ceil_div(T, 128), long(sms));
  return w256 * 2 <= w128 ? 256 : 128;
}

}  // namespace
}  // namespace hm::cuda
