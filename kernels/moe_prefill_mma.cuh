// The prefill path's grouped GEMM for MXFP4 experts (moe_prefill_mma), the default of MoePath::kPrefill for
// moe_mxfp4_forward; v1 (moe_grouped_gemm in moe_impl.cuh) stays for bf16 weights and as MoePath::kPrefillV1.
// Internal to moe_impl.cuh (uses its helpers, its workspace and its route sort).
//
// Why a second kernel: v1's 64 x 128 x 32 tiles decode each block's 128 weight rows once per 64 tokens and stage
// both operands through registers with a barrier every 32 columns. Per 32 columns a v1 block issues ~384 warp
// instructions of E2M1 decode for its 128 MMAs, about half of the ~6.7 issue slots an SM has per m16n8k16 at the
// H200's mma.sync rate (640 TFLOP/s measured): it ran at 131-167 TFLOP/s at 2048 tokens. Here:
//   - tiles of 128 pair-rows (one expert) x 128 weight rows: the decode per MMA halves; a warp skips its m16
//     sub-tiles past the expert's rows, so a 40-row tile costs 3 of 8 sub-tiles' MMAs on each SM sub-partition;
//   - operands by cp.async into a ring of NST stages (activations as bf16 rows, weights as raw MXFP4 bytes: 4x
//     fewer bytes in shared memory than decoded), NST - 2 k-tiles ahead of use, no registers held in flight;
//   - each k-tile's weights decoded once into a double-buffered bf16 tile (the exact weights, as v1), activations
//     permuted in place into the k order of moe_impl.cuh; one barrier per k-tile;
//   - the tile list derived in every block from route_sort's offsets (no host sync, capturable for a given n).
// Bits: every output element sees the same sequence of m16n8k16 MMAs over the same operands in the same k order
// as in v1 (exact bf16 weights, permuted columns, k-steps of 16 in increasing order from zero accumulators) and
// the same epilogue, so it gives v1's bits (op test "v1_bits"): the batch-invariance argument of v1 carries over,
// and MoePath::kPrefill may pick either kernel by size without breaking HARMONIUM_BATCH_INVARIANT=1.
#pragma once

namespace hm::cuda::moe {
namespace {

constexpr int kPfBM = 128, kPfBN = 128, kPfThreads = 256;

// A configuration: BK columns per k-tile (32 or 64; K % BK == 0), NST ring stages (>= 3).
template <int BK_, int NST_>
struct PrefillCfg {
  static constexpr int BK = BK_, NST = NST_;
  static_assert((BK == 32 || BK == 64) && NST >= 3, "PrefillCfg: BK 32 or 64, NST >= 3");
  static constexpr int LDS = BK + 8;              // bf16 per shared row (+8: ldmatrix conflict-free)
  static constexpr int A_BYTES = kPfBM * LDS * 2; // one stage of activations
  static constexpr int R_BYTES = kPfBN * BK / 2;  // one stage of raw MXFP4 bytes
  static constexpr int D_BYTES = kPfBN * LDS * 2; // one decoded weight tile (two of them)
  static constexpr size_t SMEM = size_t(NST) * (A_BYTES + R_BYTES) + 2 * size_t(D_BYTES);
};
// Defaults (until the H200 lab picks): BK 64 where K allows (both real matrices), else BK 32.
using PfCfg64 = PrefillCfg<64, 3>;
using PfCfg32 = PrefillCfg<32, 4>;

// The kernel's 32-bit activation offsets: x [n, ldx] (gate_up) and act [P, I] (down) must fit (4.3 G elements,
// far beyond any step); larger calls take v1.
inline bool prefill_mma_fits(int n, int ldx, int P, int I) {
  return uint64_t(n) * uint64_t(ldx) < (uint64_t(1) << 32) && uint64_t(P) * uint64_t(I) < (uint64_t(1) << 32);
}

// Tiles of `rows` sorted rows (kPfBM here; moe_prefill_wgmma.cuh's narrower ones too).
inline int prefill_max_tiles(int P, int E, int rows = kPfBM) { return (P + rows - 1) / rows + (E < P ? E : P); }

// An expert's n rows in fitted tiles (FIT below): as few tiles of at most ROWS rows as hold them, all of one width,
// the smallest multiple of 16 that holds an equal share (n = 129 at ROWS 128: two tiles of 80, not 128 + 16).
__host__ __device__ __forceinline__ int fit_tile_width(int n, int tiles) { return ((n + tiles - 1) / tiles + 15) & ~15; }

// Block t's tile among the tiles of ROWS rows of each expert in expert order (counted from route_sort's
// offsets): expert, first row, end of the expert's rows. False past the last tile. Every thread must call it.
// FIT: the expert's tiles are fitted (fit_tile_width), `width` their width; otherwise ROWS.
template <int ROWS = kPfBM, bool FIT = false>
__device__ __forceinline__ bool prefill_tile(const int32_t* offsets, int E, int t, int& e, int& m0, int& m_end,
                                             int* width = nullptr) {
  __shared__ int s_tile[4];
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x, per = (E + 31) >> 5;  // lane l counts experts [l per, (l + 1) per)
    int local = 0;
    for (int i = 0; i < per; i++) {
      const int x = lane * per + i;
      if (x < E) local += (offsets[x + 1] - offsets[x] + ROWS - 1) / ROWS;
    }
    int incl = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const int total = __shfl_sync(0xffffffffu, incl, 31);
    if (t >= total) {
      if (lane == 0) s_tile[0] = -1;
    } else if (t >= incl - local && t < incl) {
      int rest = t - (incl - local);
      for (int i = 0; i < per; i++) {
        const int x = lane * per + i;
        const int n = offsets[x + 1] - offsets[x], nt = (n + ROWS - 1) / ROWS;
        if (rest < nt) {
          const int w = FIT ? fit_tile_width(n, nt) : ROWS;
          s_tile[0] = x;
          s_tile[1] = offsets[x] + rest * w;
          s_tile[2] = offsets[x + 1];
          s_tile[3] = w;
          break;
        }
        rest -= nt;
      }
    }
  }
  __syncthreads();
  e = s_tile[0];
  m0 = s_tile[1];
  m_end = s_tile[2];
  if (width) *width = s_tile[3];
  return e >= 0;
}

// Grid: (ceil(N / kPfBN), prefill_max_tiles(P, E)); blocks past the last tile exit. Dynamic shared memory C::SMEM.
// E: the experts (route_sort's offsets has E + 1 entries).
template <bool GATE_UP, int BK, int NST>
__global__ void __launch_bounds__(kPfThreads, 2) moe_prefill_mma(GemmArgs a, int E) {
  using C = PrefillCfg<BK, NST>;
  constexpr int LDS = C::LDS, CPR = BK / 8, NA = kPfBM * CPR / kPfThreads, BPT = BK / 32;
  extern __shared__ __align__(16) unsigned char pf_smem[];
  auto As = reinterpret_cast<uint16_t(*)[kPfBM][LDS]>(pf_smem);                                  // [NST]
  auto Rs = reinterpret_cast<uint8_t(*)[kPfBN][BK / 2]>(pf_smem + NST * C::A_BYTES);              // [NST]
  auto Bs = reinterpret_cast<uint16_t(*)[kPfBN][LDS]>(pf_smem + NST * (C::A_BYTES + C::R_BYTES)); // [2]
  pdl_wait();
  pdl_trigger();
  int e, m0, m_end;
  if (!prefill_tile(a.ws.offsets, E, int(blockIdx.y), e, m0, m_end)) return;
  const int N = a.W.rows, K = a.W.K, kb = K >> 5, KT = K / BK, n0 = blockIdx.x * kPfBN;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;

  // Activation copies: column chunk ach of rows ar0 + i * (256 / CPR). Row offsets in elements as 32 bits
  // (prefill_mma_fits), to keep the kernel within 128 registers.
  const int ach = tid % CPR, ar0 = tid / CPR;
  const uint16_t* a_base = a.A + ach * 8;
  uint32_t a_off[NA];
  bool a_ok[NA];
#pragma unroll
  for (int i = 0; i < NA; i++) {
    const int r = m0 + ar0 + i * (kPfThreads / CPR);
    a_ok[i] = r < m_end;
    a_off[i] = a_ok[i] ? uint32_t(GATE_UP ? a.ws.perm[r] / a.k : r) * uint32_t(a.lda) : 0u;
  }
  // Raw weight copies: threads below kPfBN * BPT copy block rblk of weight row rr.
  const int rr = tid / BPT, rblk = tid % BPT;
  const bool r_copy = tid < kPfBN * BPT, r_ok = r_copy && n0 + rr < N;
  const uint8_t* r_src = static_cast<const uint8_t*>(a.W.data) +
                         ((size_t(e) * N + (r_ok ? n0 + rr : 0)) * kb + rblk) * 16;
  // Decode: weight row br, half bh (16 weights) of each of the k-tile's BPT blocks.
  const int br = tid >> 1, bh = tid & 1;
  const bool b_ok = n0 + br < N;
  const uint8_t* s_src = a.W.scales + (size_t(e) * N + (b_ok ? n0 + br : 0)) * kb;
  uint32_t sc[BPT];
  auto load_scales = [&](int kt) {
#pragma unroll
    for (int j = 0; j < BPT; j++) sc[j] = b_ok && kt < KT ? __ldg(s_src + kt * BPT + j) : 127u;
  };

  auto issue = [&](int kt) {  // k-tile kt into stage kt % NST (always one group, empty past the end)
    if (kt < KT) {
      const int st = kt % NST;
#pragma unroll
      for (int i = 0; i < NA; i++)
        cp_async16_zfill(&As[st][ar0 + i * (kPfThreads / CPR)][ach * 8], a_base + a_off[i] + kt * BK, a_ok[i]);
      if (r_copy) cp_async16_zfill(&Rs[st][rr][rblk * 16], r_src + size_t(kt) * BPT * 16, r_ok);
    }
    cp_async_commit();
  };
  auto prepare = [&](int kt) {  // stage kt: activations permuted in place, weights decoded into Bs[kt & 1]
    const int st = kt % NST;
#pragma unroll
    for (int i = 0; i < NA; i++) {
      uint4* p = reinterpret_cast<uint4*>(&As[st][ar0 + i * (kPfThreads / CPR)][ach * 8]);
      uint32_t q[4];
      perm8(*p, q);
      *p = make_uint4(q[0], q[1], q[2], q[3]);
    }
#pragma unroll
    for (int j = 0; j < BPT; j++) {
      BTileRegs<WFmt::kMxfp4> rb;
      rb.q = *reinterpret_cast<const uint2*>(&Rs[st][br][j * 16 + bh * 8]);
      rb.s = sc[j];
      rb.store(&Bs[kt & 1][br][j * 32], bh);
    }
  };

  bool mi_ok[4];
#pragma unroll
  for (int mi = 0; mi < 4; mi++) mi_ok[mi] = m0 + wm * 64 + mi * 16 < m_end;
  float acc[4][4][4] = {};

  for (int s = 0; s < NST - 1; s++) issue(s);
  load_scales(0);
  cp_async_wait<NST - 2>();
  __syncthreads();
  prepare(0);
  load_scales(1);
  for (int kt = 0; kt < KT; kt++) {
    cp_async_wait<NST - 3>();  // this thread's copies of k-tile kt + 1 have landed
    __syncthreads();           // everyone's, and prepare(kt); every warp is past the MMAs of kt - 1
    issue(kt + NST - 1);       // into the stage of kt - 1
    if (kt + 1 < KT) {
      prepare(kt + 1);
      load_scales(kt + 2);
    }
    const int st = kt % NST, buf = kt & 1;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[4][4], bfr[2][4];
#pragma unroll
      for (int mi = 0; mi < 4; mi++)
        if (mi_ok[mi]) ldsm_x4(af[mi], &As[st][wm * 64 + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
      for (int nb = 0; nb < 2; nb++)
        ldsm_x4(bfr[nb], &Bs[buf][wn * 32 + nb * 16 + (lane >> 4) * 8 + (lane & 7)][kk + ((lane >> 3) & 1) * 8]);
#pragma unroll
      for (int mi = 0; mi < 4; mi++) {
        if (!mi_ok[mi]) continue;
#pragma unroll
        for (int nj = 0; nj < 4; nj++)
          mma16816(acc[mi][nj], af[mi][0], af[mi][1], af[mi][2], af[mi][3], bfr[nj >> 1][(nj & 1) * 2],
                   bfr[nj >> 1][(nj & 1) * 2 + 1]);
      }
    }
  }

  // The epilogue of v1 (moe_grouped_gemm), over this warp's 64 x 32.
  const int g = lane >> 2, t = lane & 3;
  const uint16_t* bias = a.W.bias + size_t(e) * N;
#pragma unroll
  for (int mi = 0; mi < 4; mi++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int row = m0 + wm * 64 + mi * 16 + g + 8 * h;
      if (row >= m_end) continue;
      const float wr = a.weights[a.ws.perm[row]];
#pragma unroll
      for (int nj = 0; nj < 4; nj++) {
        const int col = n0 + wn * 32 + nj * 8 + 2 * t;
        if (col >= N) continue;
        const float v0 = acc[mi][nj][2 * h], v1 = acc[mi][nj][2 * h + 1];
        if constexpr (GATE_UP) {
          const float gate = v0 + bf2f_bits(bias[col]), up = v1 + bf2f_bits(bias[col + 1]);
          a.ws.act[size_t(row) * (N >> 1) + (col >> 1)] = f2bf_bits(swiglu1(gate, up, a.limit) * wr);
        } else {
          const float2 o = make_float2(v0 + wr * bf2f_bits(bias[col]), v1 + wr * bf2f_bits(bias[col + 1]));
          *reinterpret_cast<float2*>(a.ws.out + size_t(row) * N + col) = o;
        }
      }
    }
}

// One matrix: T = prefill_max_tiles(P, E) tile slots.
template <bool GATE_UP, typename C>
void launch_prefill_mma(const GemmArgs& g, int E, int T, cudaStream_t stream, bool pdl) {
  constexpr auto kern = moe_prefill_mma<GATE_UP, C::BK, C::NST>;
  allow_dynamic_smem<kern>(C::SMEM);
  launch(kern, dim3(ceil_div(g.W.rows, kPfBN), T), dim3(kPfThreads), C::SMEM, stream, pdl, g, E);
}

// gate_up then down for the MXFP4 prefill path (after route_sort, before the combine): each matrix with CW where
// its K is a multiple of CW::BK, else with CN.
template <typename CW = PfCfg64, typename CN = PfCfg32>
void launch_prefill_mma_pair(GemmArgs g, const WMat& gu, const WMat& dn, uint16_t* act, int I, int P, int E,
                             cudaStream_t stream, bool pdl) {
  const int T = prefill_max_tiles(P, E);
  g.W = gu;
  if (gu.K % CW::BK == 0)
    launch_prefill_mma<true, CW>(g, E, T, stream, pdl);
  else
    launch_prefill_mma<true, CN>(g, E, T, stream, pdl);
  g.W = dn;
  g.A = act;
  g.lda = I;
  if (dn.K % CW::BK == 0)
    launch_prefill_mma<false, CW>(g, E, T, stream, pdl);
  else
    launch_prefill_mma<false, CN>(g, E, T, stream, pdl);
}

}  // namespace
}  // namespace hm::cuda::moe
