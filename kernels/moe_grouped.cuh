// The grouped streaming MXFP4 expert kernels (moe.h, "grouped"): the regime of a few tokens per expert (9 to a
// few hundred tokens a call: batched decode, chunked prefill), included by moe_impl.cuh after the decode kernels.
// sm_90+ (cp.async.bulk).
//
// Why: from 64 tokens the prefill GEMM's 64-row M tiles are mostly padding (64 tokens, E = 128: about 2 tokens an
// expert) and it decodes the weights once per tile, streaming at 0.87 TB/s. Here, as in the decode bulk kernels
// (moe_decode_bulk.cuh), a work item is MT consecutive 16-row tiles of one expert (one contiguous range of blocks
// + one of scales, 24.5 KB a tile at K = 2880) brought by one producer thread into a ring of NST shared-memory
// stages completing on mbarriers, so every expert's weights are read ONCE per call. The consumer warps split the
// item's K in 128-column chunks; a lane decodes its chunk's weight fragments once and multiplies them by ALL of
// the expert's tokens, 8 at a time (the 8-wide N of mma.sync m16n8k16), up to NTB N-tiles per pass with their
// accumulators in registers (an expert with more than 8 NTB tokens takes more passes over the same stage,
// decoding again once per 8 NTB tokens); each N-tile's activation loads serve the item's MT tiles.
//
// Tokens arrive grouped by expert (moe_route_sort: sorted rows, offsets[E + 1]); every block reads the offsets
// and lists the experts with tokens (in id order), so the items are (listed expert u, tile group) flattened
// u-major and block b takes items b, b + grid, ...: the grid is persistent and sized from n alone (fixed for a
// given n, no host sync: capturable). Heavy experts' items carry more N-tiles; the interleaving spreads them.
//   gate_up: epilogue = bias + clamped SwiGLU x routing weight -> act[sorted row] (bf16, as the prefill path);
//   down:    epilogue = + routing weight x bias -> out[sorted row] (fp32), then moe_combine sums each token's k
//            rows in slot order (deterministic, no atomics).
// Deterministic: a warp's partials follow its fixed chunk order; after one named barrier of the consumer warps
// (double-buffered partial slots, so one barrier per pass suffices: a warp writing slot b again has passed the
// next pass's barrier, which every warp reaches only after reading slot b), warp nt sums N-tile nt's NCW
// partials in warp order. Nothing depends on the grid, on timing or on the other tokens of the N-tile.
// Activations in the k-permutation (XP, the default): moe_permute_x writes x permuted once per token and gate_up
// writes act permuted, so a lane's 16-byte load is its B fragment as is (16 PRMTs fewer per N-tile and chunk).
// PDL: gate_up initialises its barriers before pdl_wait() (the offsets come from moe_route_sort, complete once
// moe_permute_x's blocks, which wait for it, have finished). down lists its experts and streams its weights before
// pdl_wait() (its predecessor is gate_up, which triggers only after its own wait, so the offsets are complete by
// then, as in the decode bulk kernels); the SwiGLU rows wait.
//
// The inner loop: the E2M1 nibbles decoded to bf16 x the block scale (HMUL2), mma.sync m16n8k16, 16-byte stage
// loads. (An fp8 loop, the decode bulk kernels' of NOTES.md run 8, lost here too and is gone.)
// The mbarrier / bulk-copy helpers are moe_bulk_ops.cuh's, shared with moe_decode_bulk.cuh.
#pragma once
#include "moe_bulk_ops.cuh"
#include "moe_impl.cuh"

namespace hm::cuda::moe {
namespace {

// The consumer warps only (the producer warp has left): barrier 1, NCW warps.
__device__ __forceinline__ void grp_consumer_sync(int nthreads) {
  asm volatile("bar.sync 1, %0;" ::"r"(nthreads) : "memory");
}

// Shared memory of a block (dynamic): NST stages of MT 16-row tiles (blocks, then scales), two partial-sum slots
// of NCW x NTB x MT float4 per lane, 2 x NST mbarriers.
__host__ __device__ inline uint32_t grouped_stage_bytes(int K, int MT) {
  return (uint32_t(MT * 16 * K / 2 + MT * 16 * K / 32) + 127u) & ~127u;
}
__host__ __device__ inline size_t grouped_red_bytes(int NCW, int NTB, int MT) {
  return size_t(2) * NCW * NTB * MT * 32 * 16;
}
inline size_t grouped_smem_bytes(int K, int NCW, int NST, int NTB, int MT) {
  return size_t(NST) * grouped_stage_bytes(K, MT) + grouped_red_bytes(NCW, NTB, MT) + 2 * NST * 8;
}

// The experts with tokens, in id order: expert id, first sorted row, token count.
struct GroupedList {
  int nu;
  int e[256], start[256], cnt[256];
};

struct GroupedArgs {
  WMat W;               // rows x K per expert
  const uint16_t* x;    // gate_up: x [n, H] (row = perm[sorted row] / k); down: act [P, I] by sorted row
  int ldx, k, E;
  const float* weights;  // [P] routing weights by pair
  float limit;
  uint16_t* act;         // gate_up: where the SwiGLU rows go, bf16 [P, I] by sorted row
  Workspace ws;          // perm, offsets (moe_route_sort); out (down writes)
};

// xp[t] = x[t] with every 8 columns in the k-permutation (moe_impl.cuh's top): one 16-byte load of xp is then a
// lane's 4 B-fragment registers, no PRMT per use (each row is used by every tile of its k experts).
__global__ void __launch_bounds__(256) moe_permute_x(const uint16_t* __restrict__ x, int ldx, int H,
                                                     uint16_t* __restrict__ xp) {
  pdl_wait();
  pdl_trigger();
  const int tok = blockIdx.x;
  for (int c = threadIdx.x * 8; c < H; c += blockDim.x * 8) {
    uint32_t p[4];
    perm8(*reinterpret_cast<const uint4*>(x + size_t(tok) * ldx + c), p);
    *reinterpret_cast<uint4*>(xp + size_t(tok) * H + c) = make_uint4(p[0], p[1], p[2], p[3]);
  }
}

// The place of column c within its group of 8 in the k-permutation (0,4,1,5,2,6,3,7).
__device__ __forceinline__ int kperm_pos(int c) {
  const int r = c & 7;
  return (c & ~7) | (r < 4 ? 2 * r : 2 * r - 7);
}

// MINB: the blocks per SM the register budget must allow. XP: the activations are stored in the k-permutation
// (gate_up reads xp, moe_permute_x's output, and writes act permuted; down reads act as is), else gate_up reads x
// and both permute each 16-byte load (the first version, kept for the lab).
// MT: 16-row tiles per item (consecutive, one contiguous range), each N-tile's activations loaded once for all MT.
template <bool GATE_UP, int NCW, int NST, int NTB, int MT, int MINB, bool XP>
__global__ void __launch_bounds__((NCW + 1) * 32, MINB) moe_grouped_mxfp4(GroupedArgs a) {
  static_assert(NTB <= NCW, "one epilogue N-tile per warp");
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ GroupedList gl;
  const int rows = a.W.rows, K = a.W.K, kb = K >> 5, ntiles = rows >> 4, nchunks = (K + 127) >> 7;
  const int ngroups = (ntiles + MT - 1) / MT;  // an item: up to MT consecutive tiles of one expert
  const uint32_t tile_bytes = uint32_t(16 * kb * 16), tile_sc = uint32_t(16 * kb);
  const uint32_t stage_bytes = grouped_stage_bytes(K, MT);
  float4(*red)[NCW][NTB][MT][32] = reinterpret_cast<float4(*)[NCW][NTB][MT][32]>(smem + NST * stage_bytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + NST * stage_bytes + grouped_red_bytes(NCW, NTB, MT));
  uint64_t* empty = full + NST;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < NST; s++) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], NCW * 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  if (GATE_UP) pdl_wait();  // the offsets come from moe_route_sort
  if (warp == 0) {
    int nu = 0;
    for (int e0 = 0; e0 < a.E; e0 += 32) {
      const int e = e0 + lane;
      const int s = e < a.E ? a.ws.offsets[e] : 0;
      const int c = e < a.E ? a.ws.offsets[e + 1] - s : 0;
      const unsigned m = __ballot_sync(0xffffffffu, c > 0);
      if (c > 0) {
        const int u = nu + __popc(m & ((1u << lane) - 1u));
        gl.e[u] = e;
        gl.start[u] = s;
        gl.cnt[u] = c;
      }
      nu += __popc(m);
    }
    if (lane == 0) gl.nu = nu;
  }
  __syncthreads();  // (also publishes the barrier init)
  if (GATE_UP) pdl_trigger();

  const int G = gridDim.x, b = blockIdx.x, total = gl.nu * ngroups;
  const int nitems = b < total ? (total - 1 - b) / G + 1 : 0;

  if (warp == NCW) {  // producer
    if (lane == 0) {
      for (int j = 0; j < nitems; j++) {
        const int s = j % NST;
        if (j >= NST) mbar_wait(&empty[s], uint32_t(j / NST - 1) & 1u);
        const int f = b + j * G, u = f / ngroups, grp = f - u * ngroups;
        const uint32_t mc = uint32_t(min(MT, ntiles - grp * MT));
        const size_t row0 = size_t(gl.e[u]) * rows + size_t(grp) * MT * 16;
        uint8_t* st = smem + s * stage_bytes;
        mbar_expect_tx(&full[s], mc * (tile_bytes + tile_sc));
        bulk_g2s(st, static_cast<const uint8_t*>(a.W.data) + row0 * kb * 16, mc * tile_bytes, &full[s]);
        bulk_g2s(st + MT * tile_bytes, a.W.scales + row0 * kb, mc * tile_sc, &full[s]);
      }
    }
    if (!GATE_UP) pdl_trigger();
    return;
  }
  if (!GATE_UP) {
    pdl_wait();  // the SwiGLU rows come from gate_up
    pdl_trigger();
  }

  const int g = lane >> 2, t = lane & 3;
  // This lane group's stage rows, pr and pr + 8: moe_decode_bulk.cuh's conflict-free order (bits 0 and 1 of g
  // swapped when kb = 2 mod 4, the real shapes), whose gate/up partner row pr ^ 1 is then lane ^ 8.
  const bool swz = (kb & 3) == 2;
  const int pr = swz ? (g & 4) | ((g & 1) << 1) | ((g >> 1) & 1) : g;
  int rbuf = 0;
  for (int j = 0; j < nitems; j++) {
    const int s = j % NST;
    const int f = b + j * G, u = f / ngroups, grp = f - u * ngroups;
    const int e = gl.e[u], start = gl.start[u], cnt = gl.cnt[u];
    const int mc = MT == 1 ? 1 : min(MT, ntiles - grp * MT);
    mbar_wait(&full[s], uint32_t(j / NST) & 1u);
    const uint8_t* st = smem + s * stage_bytes;
    const uint8_t* sc = st + MT * tile_bytes;
    for (int base = 0; base < cnt; base += 8 * NTB) {  // passes of up to NTB N-tiles of 8 tokens
      const int nnt = min(NTB, (cnt - base + 7) >> 3);
      int xr[NTB];  // the activation row of this lane's token (column g) of each N-tile, or -1
#pragma unroll
      for (int nt = 0; nt < NTB; nt++) {
        const int i = base + nt * 8 + g;
        xr[nt] = i < cnt ? (GATE_UP ? a.ws.perm[start + i] / a.k : start + i) : -1;
      }
      float acc[NTB][MT][4];
#pragma unroll
      for (int nt = 0; nt < NTB; nt++)
#pragma unroll
        for (int m = 0; m < MT; m++) acc[nt][m][0] = acc[nt][m][1] = acc[nt][m][2] = acc[nt][m][3] = 0.f;
      for (int c = warp; c < nchunks; c += NCW) {
        const int blk = c * 4 + t;
        const bool ok = blk < kb;
        uint4 wa[MT], wb[MT];  // rows pr, pr + 8 of each tile: the prepared block and its scale factor
        uint32_t fa[MT], fb[MT];
#pragma unroll
        for (int m = 0; m < MT; m++) {
          const int ra = m * 16 + pr, rb = ra + 8;
          const bool okm = ok && m < mc;
          const uint4 qa = okm ? *reinterpret_cast<const uint4*>(st + (ra * kb + blk) * 16) : make_uint4(0, 0, 0, 0);
          const uint4 qb = okm ? *reinterpret_cast<const uint4*>(st + (rb * kb + blk) * 16) : make_uint4(0, 0, 0, 0);
          fa[m] = mx_factor(okm ? sc[ra * kb + blk] : 127u);
          fb[m] = mx_factor(okm ? sc[rb * kb + blk] : 127u);
          wa[m] = qa;
          wb[m] = qb;
        }
        // The checkpoint's word i of the block (32 columns in 4 words of 8; its pairs are slot i of the prepared
        // words) is two k16 steps: decoded once for every N-tile, one word at a time (a whole chunk's fragments
        // decoded up front cost 32 live registers more: spills).
#pragma unroll
        for (int i = 0; i < 4; i++) {
          uint32_t pa[MT][4], pb[MT][4];
#pragma unroll
          for (int m = 0; m < MT; m++) {
            decode_word(wa[m], i, fa[m], pa[m]);
            decode_word(wb[m], i, fb[m], pb[m]);
          }
#pragma unroll
          for (int nt = 0; nt < NTB; nt++) {
            if (nt >= nnt) break;
            const uint4 v = ok && xr[nt] >= 0
                                ? __ldg(reinterpret_cast<const uint4*>(a.x + size_t(xr[nt]) * a.ldx + blk * 32) + i)
                                : make_uint4(0, 0, 0, 0);
            uint32_t px[4] = {v.x, v.y, v.z, v.w};
            if (!XP) perm8(v, px);
#pragma unroll
            for (int m = 0; m < MT; m++) {
              if (m >= mc) break;
              mma16816(acc[nt][m], pa[m][0], pb[m][0], pa[m][1], pb[m][1], px[0], px[1]);
              mma16816(acc[nt][m], pa[m][2], pb[m][2], pa[m][3], pb[m][3], px[2], px[3]);
            }
          }
        }
      }
      if (base + 8 * NTB >= cnt) mbar_arrive(&empty[s]);  // the item's last pass has read the stage
#pragma unroll
      for (int nt = 0; nt < NTB; nt++)
#pragma unroll
        for (int m = 0; m < MT; m++)
          if (nt < nnt && m < mc)
            red[rbuf][warp][nt][m][lane] = make_float4(acc[nt][m][0], acc[nt][m][1], acc[nt][m][2], acc[nt][m][3]);
      grp_consumer_sync(NCW * 32);
      // This warp's N-tile: nt = warp, every tile m of the item.
      for (int m = 0; m < mc && warp < nnt; m++) {
        const int nt = warp, r0 = (grp * MT + m) * 16;
        float v[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int q = 0; q < NCW; q++) {
          const float4 p = red[rbuf][q][nt][m][lane];
          v[0] += p.x;
          v[1] += p.y;
          v[2] += p.z;
          v[3] += p.w;
        }
        // v: [0] (row pr, token 2t) [1] (row pr, token 2t+1) [2] (row pr+8, token 2t) [3] (row pr+8, 2t+1).
        const int i0 = base + nt * 8 + 2 * t;  // the expert's token of column 2t
#pragma unroll
        for (int i = 0; i < 4; i++) v[i] *= kTwoPow63;
        if (GATE_UP) {
          float partner[4];
#pragma unroll
          for (int i = 0; i < 4; i++) partner[i] = __shfl_xor_sync(0xffffffffu, v[i], swz ? 8 : 4);
          if (!(pr & 1)) {
            const int I = rows >> 1;
#pragma unroll
            for (int h = 0; h < 2; h++) {
              const int row = r0 + pr + 8 * h;  // even: gate row; row + 1 (the partner's) is up
              const float bg = bf2f_bits(a.W.bias[size_t(e) * rows + row]);
              const float bu = bf2f_bits(a.W.bias[size_t(e) * rows + row + 1]);
#pragma unroll
              for (int q = 0; q < 2; q++) {
                if (i0 + q >= cnt) continue;
                const int srow = start + i0 + q;
                const float wr = a.weights[a.ws.perm[srow]];
                const float act = swiglu1(v[2 * h + q] + bg, partner[2 * h + q] + bu, a.limit) * wr;
                a.act[size_t(srow) * I + (XP ? kperm_pos(row >> 1) : row >> 1)] = f2bf_bits(act);
              }
            }
          }
        } else {
#pragma unroll
          for (int h = 0; h < 2; h++) {
            const int row = r0 + pr + 8 * h;
            const float bias = bf2f_bits(a.W.bias[size_t(e) * rows + row]);
#pragma unroll
            for (int q = 0; q < 2; q++) {
              if (i0 + q >= cnt) continue;
              const int srow = start + i0 + q;
              a.ws.out[size_t(srow) * rows + row] = v[2 * h + q] + a.weights[a.ws.perm[srow]] * bias;
            }
          }
        }
      }
      rbuf ^= 1;
    }
  }
}

// A configuration of the grouped kernels: NCW consumer warps, NST stages, NTB N-tiles (8 tokens each) per pass,
// at most BPS blocks per SM (also the register budget's minimum), MT and XP (see moe_grouped_mxfp4). Chosen by
// bench/moe_playground.
template <int NCW_, int NST_, int NTB_, int BPS_, int MT_ = 1, bool XP_ = true>
struct GroupedCfg {
  static constexpr int NCW = NCW_, NST = NST_, NTB = NTB_, BPS = BPS_, MT = MT_;
  static constexpr bool XP = XP_;
};

// Whether the grouped kernels apply: sm_90+, both scale tensors 16-byte aligned (the copies' rule), stages fit.
template <typename C>
bool grouped_ok(const WMat& gu, const WMat& dn) {
  const BulkDevice& d = bulk_device();
  return d.major >= 9 &&
         reinterpret_cast<uintptr_t>(gu.scales) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(dn.scales) % 16 == 0 &&
         grouped_smem_bytes(gu.K, C::NCW, C::NST, C::NTB, C::MT) + sizeof(GroupedList) <= size_t(d.smem_optin) &&
         grouped_smem_bytes(dn.K, C::NCW, C::NST, C::NTB, C::MT) + sizeof(GroupedList) <= size_t(d.smem_optin);
}

// nuniq_max: the most experts the routing can touch (min(n k, E)); the grid is at most what is resident.
template <bool GATE_UP, typename C>
void launch_grouped_kernel(const GroupedArgs& a, int nuniq_max, cudaStream_t stream, bool pdl) {
  auto kern = moe_grouped_mxfp4<GATE_UP, C::NCW, C::NST, C::NTB, C::MT, C::BPS, C::XP>;
  const int threads = (C::NCW + 1) * 32;
  const size_t smem = grouped_smem_bytes(a.W.K, C::NCW, C::NST, C::NTB, C::MT);
  static int occ_K = -1, occ = 0;  // the occupancy for the last K seen (one model per process in practice)
  if (occ_K != a.W.K) {
    CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, threads, smem));
    occ_K = a.W.K;
  }
  const int per_sm = C::BPS < occ ? C::BPS : occ;
  const int nwork = nuniq_max * (((a.W.rows >> 4) + C::MT - 1) / C::MT);
  const int cap = bulk_device().sms * (per_sm < 1 ? 1 : per_sm);
  const int grid = nwork < cap ? nwork : cap;
  launch(kern, dim3(grid < 1 ? 1 : grid), dim3(threads), smem, stream, pdl, a);
}

// (XP: x permuted,) gate_up + SwiGLU, then down, over the rows
// moe_route_sort grouped by expert (the caller runs it before and moe_combine after).
template <typename C>
void launch_grouped(const MoeParams& p, const WMat& gu, const WMat& dn, const float* weights, const Workspace& ws,
                    cudaStream_t stream) {
  const int nuniq_max = p.n * p.k < p.E ? p.n * p.k : p.E;
  GroupedArgs a{gu, p.x, p.ldx, p.k, p.E, weights, p.swiglu_limit, ws.act, ws};
  if (C::XP) {
    launch(moe_permute_x, dim3(p.n), dim3(256), 0, stream, p.pdl, p.x, p.ldx, p.H, ws.xp);
    a.x = ws.xp;
    a.ldx = p.H;
  }
  launch_grouped_kernel<true, C>(a, nuniq_max, stream, p.pdl);
  a.W = dn;
  a.x = ws.act;
  a.ldx = p.I;
  launch_grouped_kernel<false, C>(a, nuniq_max, stream, p.pdl);
}

}  // namespace
}  // namespace hm::cuda::moe
