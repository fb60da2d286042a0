// The one-token MXFP4 decode kernels (MoePath::kDecodeSplit; kAuto's choice at n = 1 on sm_90+), included by
// moe_impl.cuh after the register-streaming decode kernels whose fragments and routing they share.
//
// Why a third pair: bench/moe_playground/stream_probe.cu took gate_up's one-token stream apart on the H200. A
// plain read of its 35 MB takes 10.7-11 us, the register kernels' loads alone 12.1 us, their decode + mma alone
// 8-14 us, both ~16 us in the best split of K (8 warps a tile, all 3 chunks of a warp in flight at once), while
// the bulk kernels (a shared-memory ring fed by one producer warp) took 24 us. And down had only 180 output
// tiles for 132 SMs, each tile streaming all k experts (17 us for 17.6 MB): here down's work is (expert, tile),
// k times as many blocks, and the k partial tiles are summed by whichever block of a tile finishes last, in
// expert order, so the result does not depend on timing.
//
// Block: KS warps, one 16-row tile at a time; warp w owns the 128-column chunks w, w + KS, ... (at most CPW),
// lane (g, t) MXFP4 block 4c + t of rows g and g + 8 (the register kernels' fragments, RowChunk / mma_chunk),
// every load of the warp issued before the first multiply. The KS partial sums meet in shared memory, summed in
// warp order. Items: (slot u, tile), block b takes b, b + grid, ...; the grid is at most what is resident.
//   gate_up: expert ids[u]; epilogue bias + SwiGLU x routing weight -> act[u] (bf16), as the other decode
//            kernels. Block 0 also clears down's tile counters and publishes the routing (ids_out). Its weights
//            wait for the routing, which waits for the router, so it is launched without PDL (the launcher says
//            why) and starts once the router is done. Every warp computes the routing itself (moe_topk.cuh's
//            warp_topk), so no block barrier precedes the loads.
//   down:    routes from the router's logits (complete before gate_up triggered), issues its first item's loads,
//            then pdl_wait() for act; writes each fp32 partial to ws.out[u], then counts the tile; the k-th
//            block to finish a tile adds the k partials in slot order plus the weighted biases into y (= or +=).
// Only n = 1 (the token's k slots; a repeated id is simply computed twice) and K <= 128 KS CPW.
#pragma once
#include "moe_impl.cuh"

namespace hm::cuda::moe {
namespace {

// KS warps a block, at most CPW chunks a warp; PERSIST: a grid of at most what is resident (else one block an
// item, the lab's comparison). Session 13 measured two more forms and removed them (NOTES.md; commit c540c60 has
// them): the tile's partials summed without a block barrier, and the block scales applied to the MMAs' fp32 sums
// (each of B's 8 columns one block's activations) instead of to the decoded weights. Both were slower, and so was a
// warp loading its next item's weights before multiplying the current one (f521fcb: 34.7 against 29.4 us).
template <int KS_, int CPW_, bool PERSIST_ = true>
struct SplitCfg {
  static constexpr int KS = KS_, CPW = CPW_;
  static constexpr bool PERSIST = PERSIST_;
};

// The routing of the one token, computed by every warp into its own slot (no block barrier before the loads).
__device__ __forceinline__ void split_route(const DecodeArgs& a, int32_t* ids, float* w) {
  const int lane = threadIdx.x & 31;
  if (a.logits) {
    warp_topk(a.logits, a.E, a.k, ids, w);
  } else if (lane < a.k) {
    ids[lane] = clamp_id(a.ids[lane], a.E);
    w[lane] = a.weights[lane];
  }
  __syncwarp();
}

// One warp's chunks of one tile: loads all CPW chunks (rows g, g + 8), then multiplies them by the token's
// activations, already in the k-permutation: xfrag(blk, px) gives MXFP4 block blk's 16 pairs (every lane loads them,
// so B's 8 columns all hold the token; the results read are column 0's). `between` runs after the loads are issued,
// before the activations are read (down's pdl_wait). Each chunk accumulates on its own and the chunks are then
// summed in order: CPW chains of 8 dependent MMAs instead of one of 8 CPW (the layer 33.1 -> 30.7 us with gate_up's
// bias loaded early, session 12).
template <int KS, int CPW, typename XFrag, typename Between>
__device__ __forceinline__ void split_tile(float* acc, const WMat& W, size_t row_a, XFrag xfrag, int warp, int t,
                                           Between between) {
  const int kb = W.K >> 5, nchunks = (W.K + 127) >> 7;
  RowChunk<WFmt::kMxfp4> ca[CPW], cb[CPW];
#pragma unroll
  for (int i = 0; i < CPW; i++) {
    const int c = warp + KS * i, blk = c * 4 + t;
    const bool ok = c < nchunks && blk < kb;
    ca[i].load(W, row_a, blk, ok);
    cb[i].load(W, row_a + 8, blk, ok);
  }
  between();
  float part[CPW][4];
#pragma unroll
  for (int i = 0; i < CPW; i++) {
    part[i][0] = part[i][1] = part[i][2] = part[i][3] = 0.f;
    const int c = warp + KS * i, blk = c * 4 + t;
    if (c >= nchunks) continue;
    uint32_t px[16];
    if (blk < kb) {
      xfrag(blk, px);
    } else {
#pragma unroll
      for (int q = 0; q < 16; q++) px[q] = 0u;
    }
    uint32_t pa[16], pb[16];
    ca[i].decode(pa);
    cb[i].decode(pb);
    mma_chunk(part[i], pa, pb, px);
  }
#pragma unroll
  for (int i = 0; i < CPW; i++)
#pragma unroll
    for (int q = 0; q < 4; q++) acc[q] += part[i][q];
}

// The KS partials of the block's tile, summed in warp order; true in warp 0, which holds the sum. red is double
// buffered by the caller (item j uses red[j & 1]): warp 0 reads buffer j & 1 before it reaches the barrier of
// item j + 1, after which the others may write it again (item j + 2).
template <int KS>
__device__ __forceinline__ bool split_reduce(float* acc, float4 (*red)[32], int warp, int lane) {
  red[warp][lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  __syncthreads();
  if (warp != 0) return false;
  float4 v = red[0][lane];
#pragma unroll
  for (int q = 1; q < KS; q++) {
    const float4 p = red[q][lane];
    v.x += p.x;
    v.y += p.y;
    v.z += p.z;
    v.w += p.w;
  }
  acc[0] = v.x, acc[1] = v.y, acc[2] = v.z, acc[3] = v.w;
  return true;
}

// The 16 pairs of MXFP4 block blk from activations stored in the k-permutation (16-byte pieces, 4 a block); NC:
// global memory written by an earlier kernel, read through the non-coherent cache.
template <bool NC = false>
__device__ __forceinline__ void xfrag_of(const uint4* xp, int blk, uint32_t* px) {
#pragma unroll
  for (int q = 0; q < 4; q++) {
    const uint4 v = NC ? __ldg(xp + blk * 4 + q) : xp[blk * 4 + q];
    px[4 * q] = v.x, px[4 * q + 1] = v.y, px[4 * q + 2] = v.z, px[4 * q + 3] = v.w;
  }
}
// Column c of act in the k-permutation (gate_up writes act so, down reads it with plain loads).
__device__ __forceinline__ int act_perm(int c) { return (c & ~7) | ((c & 3) << 1) | ((c >> 2) & 1); }

// Both kernels loop over their items (block b: items b, b + grid, ...; the grid is at most what is resident, so
// every block has triggered the next kernel's launch early, as the persistent bulk kernels do, and the routing is
// computed once per block). Warp 0 reduces a tile and runs its epilogue.

template <int KS, int CPW>
__global__ void __launch_bounds__(KS * 32) moe_split_gate_up(DecodeArgs a, unsigned* tile_count, int dn_tiles) {
  __shared__ int32_t s_ids[KS][8];
  __shared__ float s_w[KS][8];
  __shared__ float4 red[2][KS][32];
  __shared__ uint4 xs[128 * KS * CPW / 8];  // the token's x in the k-permutation (once a block, not per chunk)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int rows = a.W.rows, ntiles = rows >> 4, I = rows >> 1;
  pdl_wait();  // the routing and x come from the router kernel
  split_route(a, s_ids[warp], s_w[warp]);
  pdl_trigger();
  if (blockIdx.x == 0) {
    for (int i = threadIdx.x; i < dn_tiles; i += blockDim.x) tile_count[i] = 0u;  // down counts after its pdl_wait
    if (a.ids_out && threadIdx.x < a.k) {
      a.ids_out[threadIdx.x] = s_ids[0][threadIdx.x];
      a.weights_out[threadIdx.x] = s_w[0][threadIdx.x];
    }
  }
  // Warp 0's lanes t = 0, g even write the SwiGLU rows; their gate / up biases (a bf16 pair: gate row even, up row
  // odd) are loaded with the tile's weights, not after the reduction (a DRAM latency a tile on warp 0's path).
  const bool bias_lane = warp == 0 && t == 0 && !(g & 1);
  int j = 0;
  for (int item = blockIdx.x; item < a.k * ntiles; item += gridDim.x, j++) {
    const int u = item / ntiles, r0 = (item - u * ntiles) * 16;
    const size_t row_a = size_t(s_ids[warp][u]) * rows + r0 + g;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    uint32_t b0 = 0, b1 = 0;
    split_tile<KS, CPW>(
        acc, a.W, row_a, [&](int blk, uint32_t* px) { xfrag_of(xs, blk, px); }, warp, t,
        [&] {
          if (bias_lane) {
            b0 = __ldg(reinterpret_cast<const unsigned*>(a.W.bias + row_a));
            b1 = __ldg(reinterpret_cast<const unsigned*>(a.W.bias + row_a + 8));
          }
          if (j == 0) {  // x permuted into shared memory while the first tile's weights are in flight
            for (int i = threadIdx.x; i < (a.W.K >> 3); i += blockDim.x) {
              uint32_t p[4];
              perm8(__ldg(reinterpret_cast<const uint4*>(a.x) + i), p);
              xs[i] = make_uint4(p[0], p[1], p[2], p[3]);
            }
            __syncthreads();
          }
        });
    if (!split_reduce<KS>(acc, red[j & 1], warp, lane)) continue;
    // acc[0]: (row g, token 0), acc[2]: (row g + 8, token 0) in lanes t = 0. Rows alternate gate / up: the
    // partner row g ^ 1 sits in lane group g ^ 1 (lane ^ 4).
    const float p0 = __shfl_xor_sync(0xffffffffu, acc[0], 4), p1 = __shfl_xor_sync(0xffffffffu, acc[2], 4);
    if (!bias_lane) continue;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const uint32_t b = h ? b1 : b0;
      const float gate = (h ? acc[2] : acc[0]) * kTwoPow63 + bf2f_bits(uint16_t(b & 0xFFFFu));
      const float up = (h ? p1 : p0) * kTwoPow63 + bf2f_bits(uint16_t(b >> 16));
      a.act[size_t(u) * I + act_perm((r0 + g + 8 * h) >> 1)] = f2bf_bits(swiglu1(gate, up, a.limit) * s_w[warp][u]);
    }
  }
}

// Down's tile epilogue runs in warp 0: its lanes t = 0 store the partial, lane 0 counts the tile, and in the tile's
// last block lanes 0-15 add the k partials (slot order) and the weighted biases into y.
template <int KS, int CPW>
__global__ void __launch_bounds__(KS * 32) moe_split_down(DecodeArgs a, float* part, unsigned* tile_count) {
  __shared__ int32_t s_ids[KS][8];
  __shared__ float s_w[KS][8];
  __shared__ float4 red[2][KS][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int rows = a.W.rows, ntiles = rows >> 4;
  split_route(a, s_ids[warp], s_w[warp]);  // the router's logits: complete once gate_up has triggered
  int j = 0;
  for (int item = blockIdx.x; item < a.k * ntiles; item += gridDim.x, j++) {
    const int u = item / ntiles, tile = item - u * ntiles, r0 = tile * 16;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    const uint4* xp = reinterpret_cast<const uint4*>(a.x + size_t(u) * a.ldx);  // act, written permuted
    split_tile<KS, CPW>(
        acc, a.W, size_t(s_ids[warp][u]) * rows + r0 + g, [&](int blk, uint32_t* px) { xfrag_of<true>(xp, blk, px); },
        warp, t,
        [&] {
          if (j == 0) {
            pdl_wait();  // act comes from gate_up (the first item's loads are in flight)
            pdl_trigger();
          }
        });
    if (!split_reduce<KS>(acc, red[j & 1], warp, lane)) continue;
    if (t == 0) {
      part[size_t(u) * rows + r0 + g] = acc[0];
      part[size_t(u) * rows + r0 + g + 8] = acc[2];
    }
    __threadfence();
    __syncwarp();
    unsigned last = 0;
    if (lane == 0) last = atomicAdd(&tile_count[tile], 1u) == unsigned(a.k - 1);
    if (!__shfl_sync(0xffffffffu, last, 0) || lane >= 16) continue;
    __threadfence();  // the other slots' partials of this tile
    const int row = r0 + lane;
    float v = 0.f;
    for (int q = 0; q < a.k; q++) v += __ldcg(part + size_t(q) * rows + row);
    v *= kTwoPow63;
    for (int q = 0; q < a.k; q++) v += s_w[warp][q] * bf2f_bits(a.W.bias[size_t(s_ids[warp][q]) * rows + row]);
    float* dst = a.y + row;
    *dst = a.accumulate ? *dst + v : v;
  }
}

// sm_90+ (the launcher's PDL ordering is what makes down's early routing safe; older GPUs keep the register
// kernels), n = 1, and each K within one block's chunks.
template <typename Gu, typename Dn>
bool split_ok(const MoeParams& p, const WMat& gu, const WMat& dn) {
  return bulk_device().major >= 9 && p.n == 1 && p.k <= 8 && gu.K <= 128 * Gu::KS * Gu::CPW &&
         dn.K <= 128 * Dn::KS * Dn::CPW && reinterpret_cast<uintptr_t>(gu.bias) % 4 == 0;
}

// The grid of a split kernel: its items, at most what is resident at once (occupancy cached per kernel: C and
// GATE_UP name it, since kernels of one signature share the type K).
template <typename C, bool GATE_UP, typename K>
int split_grid(K kern, int threads, int items) {
  if (!C::PERSIST) return items;
  static int per_sm = 0;
  if (per_sm == 0) CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, 0));
  const int most = bulk_device().sms * (per_sm > 0 ? per_sm : 1);
  return items < most ? items : most;
}

template <typename Gu, typename Dn>
void launch_decode_split(const MoeParams& p, const WMat& gu, const WMat& dn, const Workspace& ws,
                         cudaStream_t stream) {
  DecodeArgs a = decode_args(p, gu, ws.act);
  const int dn_tiles = dn.rows >> 4;
  auto gk = moe_split_gate_up<Gu::KS, Gu::CPW>;
  auto dk = moe_split_down<Dn::KS, Dn::CPW>;
  // gate_up goes without the PDL attribute: it cannot read a weight before the routing is known, and launched
  // early (while the router and the o projection drain) its persistent blocks were placed on the SMs as they
  // freed, each with a fixed share of the items: the engine-like lab chain (moe_bench.cu chain_section) measured
  // 60.9 us a layer that way and 55.8 without; the engine's tg128 went from 512 / 356 to 553 / 388 tok/s.
  // Down keeps it: it streams its first item before pdl_wait and lets the next layer's q/k/v start early.
  launch(gk, dim3(split_grid<Gu, true>(gk, Gu::KS * 32, p.k * (gu.rows >> 4))), dim3(Gu::KS * 32), 0, stream,
         false, a, ws.count, dn_tiles);
  a.x = ws.act;
  a.ldx = p.I;
  a.W = dn;
  a.ids_out = nullptr;
  a.weights_out = nullptr;
  launch(dk, dim3(split_grid<Dn, false>(dk, Dn::KS * 32, p.k * dn_tiles)), dim3(Dn::KS * 32), 0, stream, p.pdl, a,
         ws.out, ws.count);
}

}  // namespace
}  // namespace hm::cuda::moe
