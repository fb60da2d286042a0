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
//   gate_up: item = (unique expert u, 16-row tile); epilogue = bias + SwiGLU x routing weight -> act (bf16).
//   down:    a block owns whole 16-row tiles and streams the tile of every selected expert in turn (items
//            (tile, u = 0 .. nuniq-1)); the warps accumulate over u, the epilogue adds the weighted biases and
//            writes y once: the combine of the k experts stays in the accumulators (no atomics).
// Barriers per stage: full (the producer's expect_tx + the copies), empty (every consumer lane has read it);
// per reduction slot: red (every consumer lane has written its partial). A reduction slot r is reused NST
// "last" items later, by which time the producer has refilled a stage only after the epilogue warp's read
// (it arrives on empty after summing), so no slot is overwritten early.
//
// PDL: gate_up initialises its barriers before pdl_wait() (experts are known only from the router's output);
// down computes the routing (from the router logits, complete once gate_up has triggered, as in the register
// path) and streams its weights before pdl_wait(); only the SwiGLU rows wait.
#pragma once
#include "moe_impl.cuh"

namespace hm::cuda::moe {
namespace {

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void mbar_init(uint64_t* b, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t parity) {
  asm volatile(
      "{\n\t.reg .pred P1;\n"
      "LAB_WAIT:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n\t"
      "@!P1 bra LAB_WAIT;\n}" ::"r"(smem_u32(b)),
      "r"(parity)
      : "memory");
}
// 1-D bulk copy global -> shared, completing `bytes` of transaction on the mbarrier (sizes and addresses % 16).
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
#else
  __trap();  // the launcher takes this path only on sm_90+
#endif
}

// Shared-memory layout of a block (dynamic): NST stages, then 3 x NST mbarriers, then NST reduction slots.
__host__ __device__ inline uint32_t bulk_stage_bytes(int K) {
  return (uint32_t(16 * K / 2 + 16 * K / 32) + 127u) & ~127u;
}
inline size_t bulk_smem_bytes(int K, int NCW, int NST) {
  return size_t(NST) * bulk_stage_bytes(K) + 3 * NST * 8 + size_t(NST) * NCW * 32 * 4 * 4;
}

template <bool GATE_UP, int NCW, int NST>
__global__ void __launch_bounds__((NCW + 1) * 32) moe_decode_bulk(DecodeArgs a) {
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ DecodeRouting rt;
  const int rows = a.W.rows, K = a.W.K, kb = K >> 5, ntiles = rows >> 4, nchunks = (K + 127) >> 7;
  const uint32_t blk_bytes = uint32_t(16 * kb * 16), sc_bytes = uint32_t(16 * kb);
  const uint32_t stage_bytes = bulk_stage_bytes(K);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + NST * stage_bytes);
  uint64_t* empty = full + NST;
  uint64_t* redbar = empty + NST;
  float(*red)[NCW][32][4] = reinterpret_cast<float(*)[NCW][32][4]>(redbar + NST);
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

  // The block's item sequence j = 0 .. nitems-1 -> (unique expert slot u, tile, last item of its tile?).
  const int nu = rt.nuniq, G = gridDim.x, b = blockIdx.x;
  const int nitems = GATE_UP ? (b < nu * ntiles ? (nu * ntiles - 1 - b) / G + 1 : 0)
                             : (b < ntiles ? ((ntiles - 1 - b) / G + 1) * nu : 0);
  auto item = [&](int j, int& u, int& tile) {
    if (GATE_UP) {
      const int f = b + j * G;
      u = f / ntiles;
      tile = f - u * ntiles;
    } else {
      const int q = j / nu;
      u = j - q * nu;
      tile = b + q * G;
    }
  };

  if (warp == NCW) {  // producer
    if (lane == 0) {
      for (int j = 0; j < nitems; j++) {
        const int s = j % NST;
        if (j >= NST) mbar_wait(&empty[s], uint32_t(j / NST - 1) & 1u);
        int u, tile;
        item(j, u, tile);
        const size_t row0 = size_t(rt.uniq[u]) * rows + size_t(tile) * 16;
        uint8_t* st = smem + s * stage_bytes;
        mbar_expect_tx(&full[s], blk_bytes + sc_bytes);
        bulk_g2s(st, static_cast<const uint8_t*>(a.W.data) + row0 * kb * 16, blk_bytes, &full[s]);
        bulk_g2s(st + blk_bytes, a.W.scales + row0 * kb, sc_bytes, &full[s]);
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
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int nlast = 0;  // "last" items done: picks the reduction slot and its barrier phase
  for (int j = 0; j < nitems; j++) {
    const int s = j % NST;
    int u, tile;
    item(j, u, tile);
    int xr;  // the activation row of token g for this expert, or -1
    if (GATE_UP) {
      xr = g < a.n ? g : -1;
    } else {
      const int slot = g < a.n ? rt.slot[u][g] : -1;
      xr = slot >= 0 ? g * a.k + slot : -1;
    }
    mbar_wait(&full[s], uint32_t(j / NST) & 1u);
    const uint8_t* st = smem + s * stage_bytes;
    const uint8_t* sc = st + blk_bytes;
#pragma unroll 2
    for (int c = warp; c < nchunks; c += NCW) {
      const int blk = c * 4 + t;
      const bool ok = blk < kb;
      RowChunk<WFmt::kMxfp4> ra, rb;
      ra.q = ok ? *reinterpret_cast<const uint4*>(st + (g * kb + blk) * 16) : make_uint4(0, 0, 0, 0);
      rb.q = ok ? *reinterpret_cast<const uint4*>(st + ((g + 8) * kb + blk) * 16) : make_uint4(0, 0, 0, 0);
      ra.s = ok ? sc[g * kb + blk] : 127u;
      rb.s = ok ? sc[(g + 8) * kb + blk] : 127u;
      uint32_t px[16];
      const uint4* src = reinterpret_cast<const uint4*>(a.x + size_t(xr) * a.ldx + blk * 32);
#pragma unroll
      for (int q = 0; q < 4; q++) perm8(ok && xr >= 0 ? __ldg(src + q) : make_uint4(0, 0, 0, 0), px + 4 * q);
      uint32_t pa[16], pb[16];
      ra.decode(pa);
      rb.decode(pb);
      mma_chunk(acc, pa, pb, px);
    }
    const bool last = GATE_UP || u == nu - 1;
    if (!last) {
      mbar_arrive(&empty[s]);
      continue;
    }
    const int r = nlast % NST;
    const uint32_t rphase = uint32_t(nlast / NST) & 1u;
    const int ew = nlast % NCW;  // the epilogue warp of this tile
    nlast++;
#pragma unroll
    for (int i = 0; i < 4; i++) red[r][warp][lane][i] = acc[i];
    mbar_arrive(&redbar[r]);
    if (warp != ew) {
      mbar_arrive(&empty[s]);
#pragma unroll
      for (int i = 0; i < 4; i++) acc[i] = 0.f;
      continue;
    }
    mbar_wait(&redbar[r], rphase);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float v = 0.f;
#pragma unroll
      for (int q = 0; q < NCW; q++) v += red[r][q][lane][i];
      acc[i] = v;
    }
    mbar_arrive(&empty[s]);
    const int r0 = tile * 16;
    // acc: [0] (row g, token 2t) [1] (row g, token 2t+1) [2] (row g+8, token 2t) [3] (row g+8, token 2t+1).
    if (GATE_UP) {
      // Rows alternate gate/up, so lane g^1 (lane ^ 4) holds the partner row.
      const int e = rt.uniq[u], I = rows >> 1;
      float partner[4];
#pragma unroll
      for (int i = 0; i < 4; i++) partner[i] = __shfl_xor_sync(0xffffffffu, acc[i], 4);
      if (!(g & 1)) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
          const int row = r0 + g + 8 * h;
          const float bg = bf2f_bits(a.W.bias[size_t(e) * rows + row]);
          const float bu = bf2f_bits(a.W.bias[size_t(e) * rows + row + 1]);
#pragma unroll
          for (int q = 0; q < 2; q++) {
            const int tok = 2 * t + q;
            const int slot = tok < a.n ? rt.slot[u][tok] : -1;
            if (slot < 0) continue;
            const float gate = acc[2 * h + q] * kTwoPow63 + bg;
            const float up = partner[2 * h + q] * kTwoPow63 + bu;
            const float v = swiglu1(gate, up, a.limit) * rt.w[tok * a.k + slot];
            a.act[size_t(tok * a.k + slot) * I + (row >> 1)] = f2bf_bits(v);
          }
        }
      }
    } else {
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int row = r0 + g + 8 * h;
#pragma unroll
        for (int q = 0; q < 2; q++) {
          const int tok = 2 * t + q;
          if (tok >= a.n) continue;
          float v = acc[2 * h + q] * kTwoPow63;
          for (int jj = 0; jj < a.k; jj++)
            v += rt.w[tok * a.k + jj] * bf2f_bits(a.W.bias[size_t(rt.ids[tok * a.k + jj]) * rows + row]);
          float* dst = a.y + size_t(tok) * a.ldy + row;
          *dst = a.accumulate ? *dst + v : v;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) acc[i] = 0.f;
  }
}

// A configuration of the bulk kernels: NCW consumer warps, NST stages, at most BPS blocks per SM (0: as many as
// fit). Chosen by bench/moe_playground.
template <int NCW_, int NST_, int BPS_>
struct BulkCfg {
  static constexpr int NCW = NCW_, NST = NST_, BPS = BPS_;
};

// The device facts the launcher needs, read once per device.
struct BulkDevice {
  int sms = 0, smem_optin = 0, major = 0;
};
inline const BulkDevice& bulk_device() {
  static BulkDevice d[16];
  static bool done[16] = {};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  dev &= 15;
  if (!done[dev]) {
    CUDA_CHECK(cudaDeviceGetAttribute(&d[dev].sms, cudaDevAttrMultiProcessorCount, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&d[dev].smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&d[dev].major, cudaDevAttrComputeCapabilityMajor, dev));
    done[dev] = true;
  }
  return d[dev];
}

// Whether the bulk kernels apply: sm_90+, both scale tensors 16-byte aligned (the copies' rule), the stages fit.
template <typename Gu, typename Dn>
bool bulk_ok(const WMat& gu, const WMat& dn) {
  const BulkDevice& d = bulk_device();
  return d.major >= 9 && reinterpret_cast<uintptr_t>(gu.scales) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(dn.scales) % 16 == 0 &&
         bulk_smem_bytes(gu.K, Gu::NCW, Gu::NST) <= size_t(d.smem_optin) &&
         bulk_smem_bytes(dn.K, Dn::NCW, Dn::NST) <= size_t(d.smem_optin);
}

template <bool GATE_UP, typename C>
void launch_bulk_kernel(const DecodeArgs& a, int nwork, cudaStream_t stream, bool pdl) {
  auto kern = moe_decode_bulk<GATE_UP, C::NCW, C::NST>;
  const int threads = (C::NCW + 1) * 32;
  const size_t smem = bulk_smem_bytes(a.W.K, C::NCW, C::NST);
  static int occ_K = -1, occ = 0;  // the occupancy for the last K seen (one model per process in practice)
  if (occ_K != a.W.K) {
    CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, threads, smem));
    occ_K = a.W.K;
  }
  const int per_sm = C::BPS > 0 && C::BPS < occ ? C::BPS : occ;
  const int grid = nwork < bulk_device().sms * per_sm ? nwork : bulk_device().sms * per_sm;
  launch(kern, dim3(grid < 1 ? 1 : grid), dim3(threads), smem, stream, pdl, a);
}

template <typename Gu, typename Dn>
void launch_decode_bulk(const MoeParams& p, const WMat& gu, const WMat& dn, const Workspace& ws,
                        cudaStream_t stream) {
  DecodeArgs a{p.n,         p.E,           p.k,       p.swiglu_limit, p.x,  p.ldx,  p.ids,      p.weights,
               p.logits,    p.ld_logits,   p.ids_out, p.weights_out,  gu,   ws.act, p.y,        p.ldy,
               p.accumulate};
  const int nuniq_max = p.n * p.k < p.E ? p.n * p.k : p.E;
  launch_bulk_kernel<true, Gu>(a, nuniq_max * (gu.rows >> 4), stream, p.pdl);
  a.x = ws.act;
  a.ldx = p.I;
  a.W = dn;
  a.ids_out = nullptr;
  a.weights_out = nullptr;
  launch_bulk_kernel<false, Dn>(a, dn.rows >> 4, stream, p.pdl);
}

}  // namespace
}  // namespace hm::cuda::moe
