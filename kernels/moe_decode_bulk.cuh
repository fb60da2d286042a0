// The MXFP4 decode kernels that stream the weights through shared memory (moe.h, "decode"), included by
// moe_impl.cuh after the register-streaming decode kernels whose helpers they share. sm_90+ (cp.async.bulk).
//
// Why: the register-streaming kernels keep 1-2 KB in flight per warp, and the chain of dependent loads of each
// warp, not the bytes, set their speed (bench/moe_playground/NOTES.md). Here one thread per block moves whole
// work items with 1-D bulk copies: 16 consecutive rows of one expert are ONE contiguous range of blocks
// (16 x K/2 bytes) plus one contiguous range of scales (16 x K/32 bytes), 24.5 KB at K = 2880. A block keeps
// NST such items in flight in a shared-memory ring, each stage completing on an mbarrier, so an SM has
// 100-150 KB of weights in flight without a register spent on them.
//
// Block: NCW consumer warps + 1 producer warp. The grid is persistent (at most what is resident at once);
// block b takes work items b, b + grid, ... in order. The consumer warps split each item's K in 128-column
// chunks (warp w: chunks w, w + NCW, ...; the A/B fragment layout of the register kernels, A read from the stage),
// and the item's epilogue warp (a fixed function of the item's place in the block's sequence) sums the NCW
// partials in warp order: the result does not depend on the grid, on timing or on which warp finishes first.
// An item is a group of MT consecutive 16-row tiles of one expert (still one contiguous range): each chunk's
// activations (4 global loads + 16 PRMTs per lane, the B fragments) are loaded once and used by all MT tiles.
//   gate_up: item = (unique expert u, tile group); epilogue = bias + SwiGLU x routing weight -> act (bf16).
//   down:    a block owns whole tile groups and streams the group of every selected expert in turn (items
//            (group, u = 0 .. nuniq-1)); the warps accumulate over u, the epilogue adds the weighted biases and
//            writes y once: the combine of the k experts stays in the accumulators (no atomics).
// Shared memory without bank conflicts: each lane group reads its stage rows in the order of bulk_row_of, and
// the partial sums are stored as one float4 per lane.
// Barriers per stage: full (the producer's expect_tx + the copies), empty (every consumer lane has read it);
// per reduction slot: red (every consumer lane has written its partial). A reduction slot r is reused NST
// "last" items later, by which time the producer has refilled a stage only after the epilogue warp's read
// (it arrives on empty after summing), so no slot is overwritten early.
//
// PDL: gate_up initialises its barriers before pdl_wait() (experts are known only from the router's output);
// down computes the routing (from the router logits, complete once gate_up has triggered, as in the register
// path) and streams its weights before pdl_wait(); only the SwiGLU rows wait.
//
// The inner loop: the E2M1 nibbles decoded to bf16 and multiplied by the block scale (HMUL2), 8 mma.sync m16n8k16
// per 128-column chunk and tile (the register kernels' fragments). About 2-2.4 instructions per weight for the
// decode alone: issue-bound (NOTES.md, runs 6 and 7). An fp8 inner loop (e4m3 MMAs on the E2M1 nibbles placed as
// exact e4m3 bytes, activations split into hi + lo e4m3) passed the op tests and lost on the H200 (NOTES.md, run
// 8); it is gone from the code.
#pragma once
#include "moe_bulk_ops.cuh"
#include "moe_impl.cuh"

namespace hm::cuda::moe {
namespace {

// Shared-memory layout of a block (dynamic): NST stages of MT 16-row tiles (blocks, then scales), NST
// reduction slots (float4 per lane: conflict-free), then 3 x NST mbarriers.
__host__ __device__ inline uint32_t bulk_stage_bytes(int K, int MT) {
  return (uint32_t(MT * 16) * uint32_t(K / 2) + uint32_t(MT * 16 * K / 32) + 127u) & ~127u;
}
__host__ __device__ inline uint32_t bulk_base_bytes(int K, int NCW, int NST, int MT) {
  return (uint32_t(NST) * bulk_stage_bytes(K, MT) + uint32_t(NST * MT * NCW * 32 * 16) + 3u * NST * 8u + 15u) & ~15u;
}

// The stage row a lane of group g reads as its MMA row g. A warp's 16-byte shared loads are served 8 lanes at
// a time (rows g, g+1: 64 bytes each); they are conflict-free when those two rows start 64 bytes apart modulo
// 128. Rows are kb * 16 bytes long; for kb = 2 (mod 4) (the real shapes: kb = 90, 1440-byte rows) that holds
// for rows 2 apart, so the lanes of group g read row g with bits 0 and 1 swapped (0,2,1,3,4,6,5,7).
__device__ __forceinline__ int bulk_row_of(int g, bool swz) {
  return swz ? (g & 4) | ((g & 1) << 1) | ((g >> 1) & 1) : g;
}

// MINB: the blocks per SM the register budget must allow (a few more registers can cost a resident block).
template <bool GATE_UP, int NCW, int NST, int MT, int MINB>
__global__ void __launch_bounds__((NCW + 1) * 32, MINB) moe_decode_bulk(DecodeArgs a) {
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ DecodeRouting rt;
  const int rows = a.W.rows, K = a.W.K, kb = K >> 5, ntiles = rows >> 4, nchunks = (K + 127) >> 7;
  const int ngroups = (ntiles + MT - 1) / MT;  // an item = up to MT consecutive 16-row tiles of one expert
  const uint32_t tile_bytes = uint32_t(16 * kb * 16), tile_sc = uint32_t(16 * kb);
  const uint32_t rs = uint32_t(K / 2);  // a stage row's bytes
  const uint32_t stage_bytes = bulk_stage_bytes(K, MT);
  float4(*red)[MT][NCW][32] = reinterpret_cast<float4(*)[MT][NCW][32]>(smem + NST * stage_bytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + NST * stage_bytes + size_t(NST) * MT * NCW * 32 * 16);
  uint64_t* empty = full + NST;
  uint64_t* redbar = empty + NST;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < NST; s++) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], NCW * 32);
      mbar_init(&redbar[s], NCW * 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  if (GATE_UP) pdl_wait();  // the routing comes from the router
  build_routing(a, rt);     // (its __syncthreads also publishes the barrier init)
  if (GATE_UP) pdl_trigger();

  // The block's item sequence j = 0 .. nitems-1 -> (unique expert slot u, tile group, last item of its group?).
  const int nu = rt.nuniq, G = gridDim.x, b = blockIdx.x;
  const int nitems = GATE_UP ? (b < nu * ngroups ? (nu * ngroups - 1 - b) / G + 1 : 0)
                             : (b < ngroups ? ((ngroups - 1 - b) / G + 1) * nu : 0);
  auto item = [&](int j, int& u, int& grp) {
    if (GATE_UP) {
      const int f = b + j * G;
      u = f / ngroups;
      grp = f - u * ngroups;
    } else {
      const int q = j / nu;
      u = j - q * nu;
      grp = b + q * G;
    }
  };

  if (warp == NCW) {  // producer
    if (lane == 0) {
      for (int j = 0; j < nitems; j++) {
        const int s = j % NST;
        if (j >= NST) mbar_wait(&empty[s], uint32_t(j / NST - 1) & 1u);
        int u, grp;
        item(j, u, grp);
        const uint32_t mc = uint32_t(min(MT, ntiles - grp * MT));
        const size_t row0 = size_t(rt.uniq[u]) * rows + size_t(grp) * MT * 16;
        uint8_t* st = smem + s * stage_bytes;
        mbar_expect_tx(&full[s], mc * (tile_bytes + tile_sc));
        bulk_g2s(st, static_cast<const uint8_t*>(a.W.data) + row0 * kb * 16, mc * tile_bytes, &full[s]);
        bulk_g2s(st + MT * 16 * rs, a.W.scales + row0 * kb, mc * tile_sc, &full[s]);
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
  const bool swz = (kb & 3) == 2;
  const int pr = bulk_row_of(g, swz);  // this lane's stage rows: pr and pr + 8 of each tile
  float acc[MT][4];
#pragma unroll
  for (int m = 0; m < MT; m++) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.f;
  int nlast = 0;  // "last" items done: picks the reduction slot and its barrier phase
  for (int j = 0; j < nitems; j++) {
    const int s = j % NST;
    int u, grp;
    item(j, u, grp);
    const int mc = MT == 1 ? 1 : min(MT, ntiles - grp * MT);
    int xr;  // the activation row of token g for this expert, or -1
    if (GATE_UP) {
      xr = g < a.n ? g : -1;
    } else {
      const int slot = g < a.n ? rt.slot[u][g] : -1;
      xr = slot >= 0 ? g * a.k + slot : -1;
    }
    mbar_wait(&full[s], uint32_t(j / NST) & 1u);
    const uint8_t* st = smem + s * stage_bytes;
    const uint8_t* sc = st + MT * 16 * rs;
#pragma unroll(MT == 1 ? 2 : 1)  // (two chunks of MT >= 2 tiles spill registers)
    for (int c = warp; c < nchunks; c += NCW) {
      const int blk = c * 4 + t;
      const bool ok = blk < kb;
      // The activations (B fragments) of this chunk: loaded and permuted once, used by all MT tiles.
      uint32_t px[16];
      const uint4* src = reinterpret_cast<const uint4*>(a.x + size_t(xr) * a.ldx + blk * 32);
#pragma unroll
      for (int q = 0; q < 4; q++) perm8(ok && xr >= 0 ? __ldg(src + q) : make_uint4(0, 0, 0, 0), px + 4 * q);
#pragma unroll
      for (int m = 0; m < MT; m++) {
        if (m >= mc) break;
        const int ra_row = m * 16 + pr, rb_row = ra_row + 8;
        RowChunk<WFmt::kMxfp4> ra, rb;
        ra.q = ok ? *reinterpret_cast<const uint4*>(st + (ra_row * kb + blk) * 16) : make_uint4(0, 0, 0, 0);
        rb.q = ok ? *reinterpret_cast<const uint4*>(st + (rb_row * kb + blk) * 16) : make_uint4(0, 0, 0, 0);
        ra.s = ok ? sc[ra_row * kb + blk] : 127u;
        rb.s = ok ? sc[rb_row * kb + blk] : 127u;
        uint32_t pa[16], pb[16];
        ra.decode(pa);
        rb.decode(pb);
        mma_chunk(acc[m], pa, pb, px);
      }
    }
    const bool last = GATE_UP || u == nu - 1;
    if (!last) {
      mbar_arrive(&empty[s]);
      continue;
    }
    const int r = nlast % NST;
    const uint32_t rphase = uint32_t(nlast / NST) & 1u;
    const int ew = nlast % NCW;  // the epilogue warp of this group
    nlast++;
#pragma unroll
    for (int m = 0; m < MT; m++) red[r][m][warp][lane] = make_float4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
    mbar_arrive(&redbar[r]);
    if (warp != ew) {
      mbar_arrive(&empty[s]);
#pragma unroll
      for (int m = 0; m < MT; m++) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.f;
      continue;
    }
    mbar_wait(&redbar[r], rphase);
#pragma unroll
    for (int m = 0; m < MT; m++) {
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int q = 0; q < NCW; q++) {
        const float4 p = red[r][m][q][lane];
        v.x += p.x;
        v.y += p.y;
        v.z += p.z;
        v.w += p.w;
      }
      acc[m][0] = v.x;
      acc[m][1] = v.y;
      acc[m][2] = v.z;
      acc[m][3] = v.w;
    }
    mbar_arrive(&empty[s]);
#pragma unroll
    for (int m = 0; m < MT; m++) {
      if (m >= mc) break;
      const int r0 = (grp * MT + m) * 16;
      // acc[m]: [0] (row pr, token 2t) [1] (row pr, token 2t+1) [2] (row pr+8, token 2t) [3] (row pr+8, 2t+1).
      if (GATE_UP) {
        // Rows alternate gate/up: the partner row pr ^ 1 is in lane group g ^ 1 (g ^ 2 with the swapped rows).
        const int e = rt.uniq[u], I = rows >> 1;
        float partner[4];
#pragma unroll
        for (int i = 0; i < 4; i++) partner[i] = __shfl_xor_sync(0xffffffffu, acc[m][i], swz ? 8 : 4);
        if (!(pr & 1)) {
#pragma unroll
          for (int h = 0; h < 2; h++) {
            const int row = r0 + pr + 8 * h;
            const float bg = bf2f_bits(a.W.bias[size_t(e) * rows + row]);
            const float bu = bf2f_bits(a.W.bias[size_t(e) * rows + row + 1]);
#pragma unroll
            for (int q = 0; q < 2; q++) {
              const int tok = 2 * t + q;
              const int slot = tok < a.n ? rt.slot[u][tok] : -1;
              if (slot < 0) continue;
              const float gate = acc[m][2 * h + q] * kTwoPow63 + bg;
              const float up = partner[2 * h + q] * kTwoPow63 + bu;
              const float v = swiglu1(gate, up, a.limit) * rt.w[tok * a.k + slot];
              a.act[size_t(tok * a.k + slot) * I + (row >> 1)] = f2bf_bits(v);
            }
          }
        }
      } else {
#pragma unroll
        for (int h = 0; h < 2; h++) {
          const int row = r0 + pr + 8 * h;
#pragma unroll
          for (int q = 0; q < 2; q++) {
            const int tok = 2 * t + q;
            if (tok >= a.n) continue;
            float v = acc[m][2 * h + q] * kTwoPow63;
            for (int jj = 0; jj < a.k; jj++)
              v += rt.w[tok * a.k + jj] * bf2f_bits(a.W.bias[size_t(rt.ids[tok * a.k + jj]) * rows + row]);
            float* dst = a.y + size_t(tok) * a.ldy + row;
            *dst = a.accumulate ? *dst + v : v;
          }
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MT; m++) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.f;
  }
}

// A configuration of the bulk kernels: NCW consumer warps, NST stages, at most BPS blocks per SM (0: as many as
// fit), MT 16-row tiles per work item (sharing each chunk's activations). Chosen by bench/moe_playground.
template <int NCW_, int NST_, int BPS_, int MT_>
struct BulkCfg {
  static constexpr int NCW = NCW_, NST = NST_, BPS = BPS_, MT = MT_;
};

// Whether the bulk kernels apply: sm_90+, both scale tensors 16-byte aligned (the copies' rule), the stages fit.
template <typename Gu, typename Dn>
bool bulk_ok(const WMat& gu, const WMat& dn) {
  const BulkDevice& d = bulk_device();
  return d.major >= 9 && reinterpret_cast<uintptr_t>(gu.scales) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(dn.scales) % 16 == 0 &&
         bulk_base_bytes(gu.K, Gu::NCW, Gu::NST, Gu::MT) <= size_t(d.smem_optin) &&
         bulk_base_bytes(dn.K, Dn::NCW, Dn::NST, Dn::MT) <= size_t(d.smem_optin);
}

// nuniq_max: the most unique experts the routing can have (gate_up's grid covers them all).
template <bool GATE_UP, typename C>
void launch_bulk_kernel(const DecodeArgs& a, int nuniq_max, cudaStream_t stream, bool pdl) {
  const size_t smem = size_t(bulk_base_bytes(a.W.K, C::NCW, C::NST, C::MT));
  auto kern = moe_decode_bulk<GATE_UP, C::NCW, C::NST, C::MT, (C::BPS > 0 ? C::BPS : 1)>;
  const int threads = (C::NCW + 1) * 32;
  const int ngroups = ((a.W.rows >> 4) + C::MT - 1) / C::MT;
  const int nwork = GATE_UP ? nuniq_max * ngroups : ngroups;
  // The occupancy per shared-memory size seen (it depends on K; one model per process in practice, so a
  // handful of sizes).
  static size_t occ_smem[16], attr_smem = 0;
  static int occ_val[16], occ_used = 0;
  int occ = -1;
  for (int i = 0; i < occ_used; i++)
    if (occ_smem[i] == smem) occ = occ_val[i];
  if (occ < 0) {
    if (smem > attr_smem) {
      CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      attr_smem = smem;
    }
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, threads, smem));
    if (occ_used < 16) {
      occ_smem[occ_used] = smem;
      occ_val[occ_used++] = occ;
    }
  }
  const int per_sm = C::BPS > 0 && C::BPS < occ ? C::BPS : occ;
  const int grid = nwork < bulk_device().sms * per_sm ? nwork : bulk_device().sms * per_sm;
  launch(kern, dim3(grid < 1 ? 1 : grid), dim3(threads), smem, stream, pdl, a);
}

template <typename Gu, typename Dn>
void launch_decode_bulk(const MoeParams& p, const WMat& gu, const WMat& dn, const Workspace& ws,
                        cudaStream_t stream) {
  DecodeArgs a = decode_args(p, gu, ws.act);
  const int nuniq_max = p.n * p.k < p.E ? p.n * p.k : p.E;
  launch_bulk_kernel<true, Gu>(a, nuniq_max, stream, p.pdl);
  a.x = ws.act;
  a.ldx = p.I;
  a.W = dn;
  a.ids_out = nullptr;
  a.weights_out = nullptr;
  launch_bulk_kernel<false, Dn>(a, nuniq_max, stream, p.pdl);
}

}  // namespace
}  // namespace hm::cuda::moe
