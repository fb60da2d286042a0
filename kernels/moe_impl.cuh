// The expert kernels of kernels/moe.h, written once and instantiated for both weight formats (moe_mxfp4.cu,
// moe_bf16.cu). Internal to those two files.
//
// One k-permutation is used everywhere: within every group of 8 input columns the operands hold the columns in
// the order (0,4,1,5,2,6,3,7). A dot product does not care about the order of its terms, and this order is what
// makes MXFP4 cheap: the nibble pairs (p, p+4) of one 32-bit word sit 16 bits apart, so one shift and one mask
// place both into a bf16x2 register. Activations and bf16 weights are brought to the same order with one PRMT
// per bf16 pair.
//
// MXFP4 -> bf16 without a table: the 3 magnitude bits of an E2M1 nibble, shifted into bf16 bits 6..8 with the
// sign at bit 15, are the bf16 number v * 2^-126 (E2M1's one subnormal, 0.5, lands on a bf16 subnormal, which
// the bf16 multiply keeps). Multiplying by the bf16 2^(s - 64) gives v * 2^(s-127) * 2^-63, exact for every
// scale byte 65 <= s <= 191 (weights between 2^-62 and 2^64 in magnitude); the fp32 accumulators are multiplied
// by 2^63 once at the end (decode path; the prefill path rescales the staged weights instead, see BTileRegs).
// The kernels read the blocks in mxfp4_prepare's layout (kernels/mxfp4_prepare.cu, applied at load): the same
// nibbles reordered within each 16-byte block so that a pair's bits are one mask, or one shift and a mask, from
// those positions (one slot in four takes three shifts); about 1.4 integer ops and half a bf16 multiply a weight
// (the checkpoint's order took 2).
//
// Decode path (n <= 8 tokens; for MXFP4 on sm_90+ the kernels of moe_decode_bulk.cuh take it, reusing the
// fragment layout and routing below): a warp owns 16 weight rows; lane (g = lane/4, t = lane%4) loads, per
// 128-column chunk, the 16-byte MXFP4 block t of rows g and g+8 (mxfp4) or 64 bytes of each (bf16), decodes it into the
// A fragments of 8 mma.sync m16n8k16 steps, and reads the B fragments (token g's activations) straight from
// global memory (L1-resident). Warps of a block split K (KS ways) and sum through shared memory in a fixed
// order, so results are deterministic. gate_up: one block row per selected expert (grid.y = unique experts);
// down: every block runs over all selected experts of its rows, with the SwiGLU output already multiplied by the
// routing weight, so the combine of the k experts happens in the accumulators (no atomics).
//
// Prefill path: (token, slot) pairs sorted by expert (route_sort: count, scan, stable scatter in one block), a tile list
// of 64 pair-rows per expert, then a grouped GEMM per matrix: 64 x 128 x 32 tiles, 8 warps of 32 x 32,
// mma.sync bf16 from ldmatrix, operands double-buffered in shared memory through registers (the weights are
// decoded on the way in), SwiGLU (x routing weight) fused into the gate_up epilogue, bias (x routing weight)
// into the down epilogue, then a combine that sums each token's k rows in slot order.
//
// Grouped path (MXFP4, sm_90+; moe_grouped.cuh): the same sort and combine around two streaming kernels in place
// of the GEMMs (each expert's weights read once, a fragment decoded once for all of the expert's tokens).
#pragma once
#include "common.cuh"
#include "moe.h"
#include "moe_topk.cuh"
#include "mxfp4_layout.h"

namespace hm::cuda::moe {
namespace {  // each including file gets its own copy of the kernels

enum class WFmt { kMxfp4, kBf16 };

// One weight matrix of every expert: rows x K per expert.
struct WMat {
  const void* data = nullptr;        // mxfp4: blocks [E, rows, K/32, 16]; bf16: [E, rows, K]
  const uint8_t* scales = nullptr;   // mxfp4: [E, rows, K/32]
  const uint16_t* bias = nullptr;    // bf16 [E, rows]
  int rows = 0, K = 0;
};

constexpr float kTwoPow63 = 9.223372036854775808e18f;
template <WFmt F>
constexpr float acc_scale() {
  return F == WFmt::kMxfp4 ? kTwoPow63 : 1.0f;
}

// ---- small device helpers ----

__device__ __forceinline__ void mma16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* smem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// 8 bf16 columns c0..c7 (a uint4 in memory order) -> the permuted pairs (c0,c4) (c1,c5) (c2,c6) (c3,c7).
__device__ __forceinline__ void perm8(const uint4& v, uint32_t* p) {
  p[0] = __byte_perm(v.x, v.z, 0x5410);
  p[1] = __byte_perm(v.x, v.z, 0x7632);
  p[2] = __byte_perm(v.y, v.w, 0x5410);
  p[3] = __byte_perm(v.y, v.w, 0x7632);
}

// E8M0 byte s -> bf16x2 of 2^(s-64) (see the header comment; s clamped to the exact range).
__device__ __forceinline__ uint32_t mx_factor(uint32_t s) {
  s = mxfp4::clamp_scale(s) + 63u;  // the range prepared scales are already in
  return (s << 7) | (s << 23);
}

// The E8M0 factor of a prepared scale byte (mxfp4_prepare clamped it to [65, 191]): mx_factor in one multiply-add.
__device__ __forceinline__ uint32_t mx_factor_fast(uint32_t s) { return s * 0x00800080u + 63u * 0x00800080u; }

// Slot i of a word of a prepared block (mxfp4_prepare.cu): the pair's sign and magnitude bits on bf16x2's, times
// the factor. Slot i of prepared word t is pair t of the checkpoint's word i (nibbles t and t + 4 of columns
// 8i..8i+7, the permuted k order). Always called with a constant i (unrolled loops fold the branches).
__device__ __forceinline__ uint32_t decode_slot(uint32_t w, int i, uint32_t f) {
  return bf16x2_mul(mxfp4::slot_bits(w, i), f);
}

// The pairs of the checkpoint's word i (p[t] = pair t, 8 columns) from a prepared block's four words.
__device__ __forceinline__ void decode_word(const uint4& q, int i, uint32_t f, uint32_t* p) {
  p[0] = decode_slot(q.x, i, f);
  p[1] = decode_slot(q.y, i, f);
  p[2] = decode_slot(q.z, i, f);
  p[3] = decode_slot(q.w, i, f);
}

// A whole prepared block: p[4 i + t] = pair t of the checkpoint's word i.
__device__ __forceinline__ void decode_block(const uint4& q, uint32_t f, uint32_t* p) {
#pragma unroll
  for (int i = 0; i < 4; i++) decode_word(q, i, f, p + 4 * i);
}

// E2M1 value of a nibble (the loader's conversion; the matmuls never use it).
__device__ __forceinline__ float fp4_lut(uint32_t nib) {
  const uint32_t e = (nib >> 1) & 3u, m = nib & 1u;
  const float v = e == 0 ? 0.5f * float(m) : ldexpf(1.f + 0.5f * float(m), int(e) - 1);
  return (nib & 8u) ? -v : v;
}

// Expert ids come from the router; a corrupt id must not become an out-of-bounds read (a sticky CUDA fault).
__device__ __forceinline__ int clamp_id(int e, int E) { return min(max(e, 0), E - 1); }

__device__ __forceinline__ float swiglu1(float g, float u, float limit) {
  g = fminf(g, limit);
  u = fminf(fmaxf(u, -limit), limit);
  return (u + 1.f) * g / (1.f + __expf(-1.702f * g));
}

__device__ __forceinline__ uint16_t f2bf_bits(float f) {
  __nv_bfloat16 h = __float2bfloat16_rn(f);
  return *reinterpret_cast<uint16_t*>(&h);
}

// ---- decode path: one thread's 32 weights of one row in one 128-column chunk ----

template <WFmt F>
struct RowChunk;
template <>
struct RowChunk<WFmt::kMxfp4> {
  uint4 q;
  uint32_t s;
  __device__ __forceinline__ void load(const WMat& W, size_t row, int blk, bool ok) {
    const int kb = W.K >> 5;
    if (ok) {
      q = ld_stream16(static_cast<const uint8_t*>(W.data) + (row * kb + blk) * 16);
      s = __ldg(W.scales + row * kb + blk);
    } else {
      q = make_uint4(0, 0, 0, 0);
      s = 127;
    }
  }
  __device__ __forceinline__ void decode(uint32_t* p) const { decode_block(q, mx_factor(s), p); }
};
template <>
struct RowChunk<WFmt::kBf16> {
  uint4 q[4];
  __device__ __forceinline__ void load(const WMat& W, size_t row, int blk, bool ok) {
    const uint16_t* src = static_cast<const uint16_t*>(W.data) + row * W.K + blk * 32;
#pragma unroll
    for (int i = 0; i < 4; i++) q[i] = ok ? ld_stream16(src + 8 * i) : make_uint4(0, 0, 0, 0);
  }
  __device__ __forceinline__ void decode(uint32_t* p) const {
#pragma unroll
    for (int i = 0; i < 4; i++) perm8(q[i], p + 4 * i);
  }
};

// 8 mma steps over one chunk: A rows g and g+8, B token g.
__device__ __forceinline__ void mma_chunk(float* acc, const uint32_t* pa, const uint32_t* pb, const uint32_t* px) {
#pragma unroll
  for (int s = 0; s < 8; s++) {
    const int j = (s >> 1) * 4 + (s & 1) * 2;
    mma16816(acc, pa[j], pb[j], pa[j + 1], pb[j + 1], px[j], px[j + 1]);
  }
}

struct DecodeArgs {
  int n, E, k;
  float limit;
  const uint16_t* x;  // gate_up: x [n, H] (ldx); down: act [n*k, I] (ldx = I)
  int ldx;
  const int32_t* ids;      // routing given: [n, k]
  const float* weights;
  const float* logits;     // or routing computed from the router logits [n, E] (ld_logits)
  int ld_logits;
  int32_t* ids_out;        // gate_up publishes the computed routing here when set
  float* weights_out;
  WMat W;
  uint16_t* act;  // gate_up output [n*k, I]
  float* y;       // down output
  int ldy;
  bool accumulate;
};

// A decode launch's arguments for gate_up (x in, act out); the launchers then point them at down.
inline DecodeArgs decode_args(const MoeParams& p, const WMat& gu, uint16_t* act) {
  return DecodeArgs{p.n,      p.E,         p.k,       p.swiglu_limit, p.x,   p.ldx, p.ids,  p.weights, p.logits,
                    p.ld_logits, p.ids_out, p.weights_out, gu,        act,   p.y,   p.ldy,  p.accumulate};
}

// The routing (ids clamped, weights), the unique experts of the batch in order of first appearance, and per
// (unique expert, token) the slot (or -1). Built by every block in parallel (one warp per token for the top-k,
// one thread per (token, slot) pair after): a serial loop here cost more than the matmul at 8 tokens.
struct DecodeRouting {
  int nuniq;
  int ids[kMoeDecodeMaxTokens * 8];
  float w[kMoeDecodeMaxTokens * 8];
  int first[kMoeDecodeMaxTokens * 8];
  int uniq[kMoeDecodeMaxTokens * 8];
  int8_t slot[kMoeDecodeMaxTokens * 8][kMoeDecodeMaxTokens];
};

__device__ void build_routing(const DecodeArgs& a, DecodeRouting& r) {
  const int P = a.n * a.k;
  for (int i = threadIdx.x; i < kMoeDecodeMaxTokens * 8 * kMoeDecodeMaxTokens; i += blockDim.x)
    (&r.slot[0][0])[i] = -1;
  if (a.logits) {
    for (int tok = threadIdx.x >> 5; tok < a.n; tok += blockDim.x >> 5)
      warp_topk(a.logits + size_t(tok) * a.ld_logits, a.E, a.k, r.ids + tok * a.k, r.w + tok * a.k);
  } else {
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
      r.ids[p] = clamp_id(a.ids[p], a.E);
      r.w[p] = a.weights[p];
    }
  }
  __syncthreads();
  if (a.ids_out && blockIdx.x == 0 && blockIdx.y == 0)
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
      a.ids_out[p] = r.ids[p];
      a.weights_out[p] = r.w[p];
    }
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    int f = 1;
    for (int q = 0; q < p; q++) f &= r.ids[q] != r.ids[p];
    r.first[p] = f;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    int q = 0;
    while (r.ids[q] != r.ids[p]) q++;  // the first pair with this expert
    int u = 0;
    for (int i = 0; i < q; i++) u += r.first[i];
    if (q == p) r.uniq[u] = r.ids[p];
    r.slot[u][p / a.k] = int8_t(p % a.k);
  }
  if (threadIdx.x == 0) {
    int nu = 0;
    for (int i = 0; i < P; i++) nu += r.first[i];
    r.nuniq = nu;
  }
  __syncthreads();
}

// Sums the KS partial accumulators of each m-tile (fixed order); returns true in the warps that hold the sum.
template <int MT, int KS>
__device__ __forceinline__ bool reduce_ks(float* acc, float (*red)[32][4], int mt, int kp, int lane) {
  if constexpr (KS == 1) return true;
#pragma unroll
  for (int i = 0; i < 4; i++) red[mt * KS + kp][lane][i] = acc[i];
  __syncthreads();
  if (kp != 0) return false;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float s = 0.f;
#pragma unroll
    for (int q = 0; q < KS; q++) s += red[mt * KS + q][lane][i];
    acc[i] = s;
  }
  return true;
}

// The weight stream of one warp: work items f = kp, kp + KS, ... < total, item f = (expert slot u, chunk c)
// with u = f / nchunks, c = f % nchunks (the division by a multiply-high, exact for f * nchunks < 2^32: a real
// division per item cost 15% of the down kernel's time, NOTES.md run 4). The weights of the next D items are
// loaded into registers while the current D are multiplied; the activations (B operand, L1-resident) of the
// current D items are loaded together just before use. act_row(u) returns the row of x holding this lane's
// token for expert slot u (or -1). With `pre_wait`, the first D items' weights are loaded before pdl_wait().
// (Tried and not faster on the H100, NOTES.md: L2 prefetch of later items, activations prefetched with the
// weights, activations staged in shared memory.)
template <WFmt F, int KS, int D, typename ExpertOf, typename ActRow>
__device__ __forceinline__ void stream_items(float* acc, const WMat& W, int r0, int g, int t, int kp, int total,
                                             int nchunks, ExpertOf expert_of, ActRow act_row, const uint16_t* x,
                                             int ldx, bool pre_wait) {
  const int rows = W.rows, kb = W.K >> 5;
  const bool ok0 = r0 + g < rows, ok1 = r0 + g + 8 < rows;
  const uint32_t magic = 0xFFFFFFFFu / uint32_t(nchunks) + 1u;  // wraps to 0 for nchunks = 1: handled below
  auto item = [&](int i, int& u, int& blk) {  // item i of this warp -> expert slot, block index; false past the end
    const int f = kp + KS * i;
    if (f >= total) return false;
    u = nchunks == 1 ? f : int(__umulhi(uint32_t(f), magic));
    blk = (f - u * nchunks) * 4 + t;
    return blk < kb;
  };
  auto load_w = [&](int i0, RowChunk<F>* xa, RowChunk<F>* xb) {
#pragma unroll
    for (int d = 0; d < D; d++) {
      int u = 0, blk = 0;
      const bool ok = item(i0 + d, u, blk);
      const size_t rb = size_t(expert_of(ok ? u : 0)) * rows + r0 + g;
      xa[d].load(W, rb, blk, ok && ok0);
      xb[d].load(W, rb + 8, blk, ok && ok1);
    }
  };
  RowChunk<F> ca[D], cb[D];
  load_w(0, ca, cb);
  if (pre_wait) {
    pdl_wait();
    pdl_trigger();
  }
  for (int i0 = 0; kp + KS * i0 < total; i0 += D) {
    RowChunk<F> na[D], nb[D];
    load_w(i0 + D, na, nb);
    uint32_t px[D][16];  // the activations of the current D items, loaded together
#pragma unroll
    for (int d = 0; d < D; d++) {
      int u = 0, blk = 0;
      const bool ok = item(i0 + d, u, blk);
      const int r = ok ? act_row(u) : -1;
      const uint4* src = reinterpret_cast<const uint4*>(x + size_t(r) * ldx + blk * 32);
#pragma unroll
      for (int q = 0; q < 4; q++) perm8(r >= 0 ? __ldg(src + q) : make_uint4(0, 0, 0, 0), px[d] + 4 * q);
    }
#pragma unroll
    for (int d = 0; d < D; d++) {
      if (kp + KS * (i0 + d) >= total) break;
      uint32_t pa[16], pb[16];
      ca[d].decode(pa);
      cb[d].decode(pb);
      mma_chunk(acc, pa, pb, px[d]);
    }
#pragma unroll
    for (int d = 0; d < D; d++) {
      ca[d] = na[d];
      cb[d] = nb[d];
    }
  }
}

// gate_up + clamped SwiGLU for the selected experts. Grid: (ceil(2I / (16 MT)), min(n k, E)).
template <WFmt F, int MT, int KS, int D, int MINB>
__global__ void __launch_bounds__(MT* KS * 32, MINB) moe_decode_gate_up(DecodeArgs a) {
  __shared__ DecodeRouting rt;
  __shared__ float red[MT * KS][32][4];
  pdl_wait();  // ids come from the router
  pdl_trigger();
  build_routing(a, rt);
  if (int(blockIdx.y) >= rt.nuniq) return;
  const int u = blockIdx.y, e = rt.uniq[u];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int mt = warp / KS, kp = warp % KS;
  const int rows = a.W.rows, nchunks = (a.W.K + 127) >> 7;
  const int r0 = (blockIdx.x * MT + mt) * 16;
  const int xrow = g < a.n ? g : -1;

  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  stream_items<F, KS, D>(
      acc, a.W, r0, g, t, kp, nchunks, nchunks, [&](int) { return e; }, [&](int) { return xrow; }, a.x, a.ldx,
      false);
  if (!reduce_ks<MT, KS>(acc, red, mt, kp, lane)) return;

  // acc: [0] (row g, token 2t) [1] (row g, token 2t+1) [2] (row g+8, token 2t) [3] (row g+8, token 2t+1).
  // Rows alternate gate/up, so lane g^1 (lane ^ 4) holds the partner row.
  float partner[4];
#pragma unroll
  for (int i = 0; i < 4; i++) partner[i] = __shfl_xor_sync(0xffffffffu, acc[i], 4);
  if (g & 1) return;
  const int I = rows >> 1;
#pragma unroll
  for (int h = 0; h < 2; h++) {  // h = 0: row g, h = 1: row g + 8
    const int r = r0 + g + 8 * h;
    if (r >= rows) continue;
    const float bg = bf2f_bits(a.W.bias[size_t(e) * rows + r]);
    const float bu = bf2f_bits(a.W.bias[size_t(e) * rows + r + 1]);
#pragma unroll
    for (int q = 0; q < 2; q++) {
      const int tok = 2 * t + q;
      if (tok >= a.n) continue;
      const int slot = rt.slot[u][tok];
      if (slot < 0) continue;
      const float gate = acc[2 * h + q] * acc_scale<F>() + bg;
      const float up = partner[2 * h + q] * acc_scale<F>() + bu;
      const float v = swiglu1(gate, up, a.limit) * rt.w[tok * a.k + slot];
      a.act[size_t(tok * a.k + slot) * I + (r >> 1)] = f2bf_bits(v);
    }
  }
}

// down + bias + weighted combine over all selected experts. Grid: ceil(H / (16 MT)).
// Reads the routing and starts its weight stream before pdl_wait(): its PDL predecessor is always
// moe_decode_gate_up, which triggers only after its own wait, so the router's outputs are complete by then.
template <WFmt F, int MT, int KS, int D, int MINB>
__global__ void __launch_bounds__(MT* KS * 32, MINB) moe_decode_down(DecodeArgs a) {
  __shared__ DecodeRouting rt;
  __shared__ float red[MT * KS][32][4];
  build_routing(a, rt);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int mt = warp / KS, kp = warp % KS;
  const int rows = a.W.rows, nchunks = (a.W.K + 127) >> 7;
  const int r0 = (blockIdx.x * MT + mt) * 16;

  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  stream_items<F, KS, D>(
      acc, a.W, r0, g, t, kp, rt.nuniq * nchunks, nchunks, [&](int u) { return rt.uniq[u]; },
      [&](int u) {
        const int slot = g < a.n ? rt.slot[u][g] : -1;
        return slot >= 0 ? g * a.k + slot : -1;
      },
      a.x, a.ldx, true);
  if (!reduce_ks<MT, KS>(acc, red, mt, kp, lane)) return;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int r = r0 + g + 8 * h;
    if (r >= rows) continue;
#pragma unroll
    for (int q = 0; q < 2; q++) {
      const int tok = 2 * t + q;
      if (tok >= a.n) continue;
      float v = acc[2 * h + q] * acc_scale<F>();
      for (int j = 0; j < a.k; j++)
        v += rt.w[tok * a.k + j] * bf2f_bits(a.W.bias[size_t(rt.ids[tok * a.k + j]) * rows + r]);
      float* dst = a.y + size_t(tok) * a.ldy + r;
      *dst = a.accumulate ? *dst + v : v;
    }
  }
}

// ---- prefill path ----

constexpr int kBM = 64, kBN = 128, kBK = 32, kLDS = kBK + 8;  // +8 bf16 per row: ldmatrix conflict-free

// Workspace carve-up, shared by moe_workspace_bytes and the launchers.
struct Workspace {
  uint16_t* act;       // bf16 [P, I]: decode indexes it by pair (tok*k + slot), prefill by sorted row
  float* out;          // fp32 [P, H] (prefill: down output per sorted row)
  int32_t* perm;       // [P] sorted row -> pair
  int32_t* pair_row;   // [P] pair -> sorted row
  int32_t* tile_e;     // [max_tiles]
  int32_t* tile_r0;    // [max_tiles]
  int32_t* offsets;    // [E + 1]
  int32_t* num_tiles;  // [1]
  uint16_t* xp;        // [n, H]: x in the k-permutation (the grouped and wgmma paths' gate_up operand)
  unsigned* count;     // [H / 16]: the split decode's per-tile counters (cleared by its gate_up every call)
  size_t bytes;
};
inline int max_tiles(int P, int E) { return (P + kBM - 1) / kBM + (E < P ? E : P); }
inline Workspace carve(void* base, int n, int H, int I, int E, int k) {
  const size_t P = size_t(n) * k;
  const int T = max_tiles(int(P), E);
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* r = p + off;
    off += (bytes + 255) & ~size_t(255);
    return r;
  };
  Workspace w;
  w.act = reinterpret_cast<uint16_t*>(take(P * I * 2));
  w.out = reinterpret_cast<float*>(take(P * H * 4));
  w.perm = reinterpret_cast<int32_t*>(take(P * 4));
  w.pair_row = reinterpret_cast<int32_t*>(take(P * 4));
  w.tile_e = reinterpret_cast<int32_t*>(take(size_t(T) * 4));
  w.tile_r0 = reinterpret_cast<int32_t*>(take(size_t(T) * 4));
  w.offsets = reinterpret_cast<int32_t*>(take(size_t(E + 1) * 4));
  w.num_tiles = reinterpret_cast<int32_t*>(take(4));
  w.xp = reinterpret_cast<uint16_t*>(take(size_t(n) * H * 2));
  w.count = reinterpret_cast<unsigned*>(take(size_t(H / 16 + 1) * 4));
  w.bytes = off;
  return w;
}

// Count, scan and scatter the (token, slot) pairs by expert; the tile list of kBM rows per expert. The scatter is
// stable (pairs keep their order within an expert's group): chunks of 1024 pairs in order, a pair's place being its
// expert's cursor plus the pairs of that expert before it in the chunk (earlier warps' counts, then earlier lanes
// by __match_any_sync). An atomic cursor here gave each run another row order within a group.
__global__ void __launch_bounds__(1024) moe_route_sort(const int32_t* __restrict__ ids, int P, int E, Workspace w) {
  __shared__ int cnt[256], cursor[256];
  __shared__ int wcnt[32][256];  // per chunk: pairs of expert e in warp w
  pdl_wait();
  pdl_trigger();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int e = tid; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int p = tid; p < P; p += blockDim.x) atomicAdd(&cnt[clamp_id(ids[p], E)], 1);
  __syncthreads();
  if (tid == 0) {
    int off = 0, nt = 0;
    for (int e = 0; e < E; e++) {
      w.offsets[e] = off;
      cursor[e] = off;
      for (int r = 0; r < cnt[e]; r += kBM) {
        w.tile_e[nt] = e;
        w.tile_r0[nt] = off + r;
        nt++;
      }
      off += cnt[e];
    }
    w.offsets[E] = off;
    *w.num_tiles = nt;
  }
  for (int base = 0; base < P; base += 1024) {
    for (int i = tid; i < 32 * 256; i += 1024) (&wcnt[0][0])[i] = 0;
    __syncthreads();
    const int p = base + tid;
    const int e = p < P ? clamp_id(ids[p], E) : -1;
    const unsigned same = __match_any_sync(0xffffffffu, e);
    const int rank = __popc(same & ((1u << lane) - 1u));
    if (e >= 0 && rank == 0) wcnt[warp][e] = __popc(same);
    __syncthreads();
    if (e >= 0) {
      int pos = cursor[e] + rank;
      for (int q = 0; q < warp; q++) pos += wcnt[q][e];
      w.perm[pos] = p;
      w.pair_row[p] = pos;
    }
    __syncthreads();
    for (int x = tid; x < E; x += 1024) {
      int s = 0;
      for (int q = 0; q < 32; q++) s += wcnt[q][x];
      cursor[x] += s;
    }
    __syncthreads();
  }
}

struct GemmArgs {
  WMat W;              // N = W.rows, K = W.K
  const uint16_t* A;   // gate_up: x [n, H] (lda = ldx, row = perm / k); down: act [P, I] (lda = I)
  int lda, k;
  const float* weights;  // [P] routing weights by pair
  float limit;
  Workspace ws;
};

// Loads one thread's share of a k-tile into registers (A: 8 columns of one row; B: 16 columns of one row).
template <WFmt F>
struct BTileRegs;
template <>
struct BTileRegs<WFmt::kMxfp4> {
  uint2 q;
  uint32_t s;
  __device__ __forceinline__ void load(const WMat& W, size_t row, int kt, int half, bool ok) {
    const int kb = W.K >> 5;
    if (ok) {
      q = __ldg(reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(W.data) + (row * kb + kt) * 16) + half);
      s = __ldg(W.scales + row * kb + kt);
    } else {
      q = make_uint2(0, 0);
      s = 127;
    }
  }
  // dst: 16 bf16, permuted order, the exact weights v * 2^(s-127): the decode's v * 2^(s-127) * 2^-63 times the
  // bf16 2^63, so the fp32 accumulators need no 2^63 at the end. With the 2^-63-scaled weights a token's rows
  // changed bits when the rows around them in the tile changed (op test, before the stable route sort); the bf16
  // path's did not, and with exact weights this path computes the bf16 path's bits (op test "format_bits").
  // Once per staged tile: the extra multiply is free beside the MMAs.
  // dst_block: the tile's 32 columns of this block; this thread's half (prepared words 2 half, 2 half + 1) holds
  // pairs 2 half and 2 half + 1 of each checkpoint word I, pair 4 I + t at 32-bit offset 4 I + t.
  __device__ __forceinline__ void store(uint16_t* dst_block, int half) const {
    constexpr uint32_t kTwoPow63x2 = 0x5F005F00u;
    const uint32_t f = mx_factor(s);
    uint2* dst = reinterpret_cast<uint2*>(dst_block) + half;
#pragma unroll
    for (int i = 0; i < 4; i++)
      dst[2 * i] = make_uint2(bf16x2_mul(decode_slot(q.x, i, f), kTwoPow63x2),
                              bf16x2_mul(decode_slot(q.y, i, f), kTwoPow63x2));
  }
};
template <>
struct BTileRegs<WFmt::kBf16> {
  uint4 q[2];
  __device__ __forceinline__ void load(const WMat& W, size_t row, int kt, int half, bool ok) {
    const uint4* src = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(W.data) + row * W.K + kt * 32 +
                                                      half * 16);
    q[0] = ok ? __ldg(src) : make_uint4(0, 0, 0, 0);
    q[1] = ok ? __ldg(src + 1) : make_uint4(0, 0, 0, 0);
  }
  __device__ __forceinline__ void store(uint16_t* dst_block, int half) const {
    uint16_t* dst = dst_block + 16 * half;
    uint32_t p[8];
    perm8(q[0], p);
    perm8(q[1], p + 4);
    reinterpret_cast<uint4*>(dst)[0] = make_uint4(p[0], p[1], p[2], p[3]);
    reinterpret_cast<uint4*>(dst)[1] = make_uint4(p[4], p[5], p[6], p[7]);
  }
};

// Grouped GEMM over the tile list. Grid: (ceil(N / kBN), max_tiles); blocks past num_tiles exit.
template <WFmt F, bool GATE_UP>
__global__ void __launch_bounds__(256) moe_grouped_gemm(GemmArgs a) {
  __shared__ __align__(16) uint16_t As[2][kBM][kLDS];
  __shared__ __align__(16) uint16_t Bs[2][kBN][kLDS];
  pdl_wait();
  pdl_trigger();
  if (int(blockIdx.y) >= *a.ws.num_tiles) return;
  const int e = a.ws.tile_e[blockIdx.y], m0 = a.ws.tile_r0[blockIdx.y], m_end = a.ws.offsets[e + 1];
  const int N = a.W.rows, K = a.W.K, KT = K / kBK, n0 = blockIdx.x * kBN;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;

  // A loader: row tid/4, 8 columns (tid%4)*8 of each k-tile.
  const int ar = tid >> 2, ac = (tid & 3) * 8;
  const bool a_ok = m0 + ar < m_end;
  const uint16_t* a_src = a.A;
  if (a_ok) a_src += size_t(GATE_UP ? a.ws.perm[m0 + ar] / a.k : m0 + ar) * a.lda;
  // B loader: weight row tid/2, half tid%2 (16 columns) of each k-tile.
  const int br = tid >> 1, bh = tid & 1;
  const bool b_ok = n0 + br < N;
  const size_t b_row = size_t(e) * N + n0 + br;

  uint4 ra;
  BTileRegs<F> rb;
  auto gload = [&](int kt) {
    ra = a_ok ? __ldg(reinterpret_cast<const uint4*>(a_src + kt * kBK + ac)) : make_uint4(0, 0, 0, 0);
    rb.load(a.W, b_row, kt, bh, b_ok);
  };
  auto sstore = [&](int buf) {
    uint32_t p[4];
    perm8(ra, p);
    *reinterpret_cast<uint4*>(&As[buf][ar][ac]) = make_uint4(p[0], p[1], p[2], p[3]);
    rb.store(&Bs[buf][br][0], bh);
  };

  float acc[2][4][4] = {};
  gload(0);
  sstore(0);
  __syncthreads();
  for (int kt = 0; kt < KT; kt++) {
    const int buf = kt & 1;
    if (kt + 1 < KT) gload(kt + 1);
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[2][4], bfr[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; mi++) ldsm_x4(af[mi], &As[buf][wm * 32 + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
      for (int nb = 0; nb < 2; nb++)
        ldsm_x4(bfr[nb], &Bs[buf][wn * 32 + nb * 16 + (lane >> 4) * 8 + (lane & 7)][kk + ((lane >> 3) & 1) * 8]);
#pragma unroll
      for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int nj = 0; nj < 4; nj++)
          mma16816(acc[mi][nj], af[mi][0], af[mi][1], af[mi][2], af[mi][3], bfr[nj >> 1][(nj & 1) * 2],
                   bfr[nj >> 1][(nj & 1) * 2 + 1]);
    }
    if (kt + 1 < KT) sstore(buf ^ 1);
    __syncthreads();
  }

  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int row = m0 + wm * 32 + mi * 16 + g + 8 * h;
      if (row >= m_end) continue;
      const float wr = a.weights[a.ws.perm[row]];
#pragma unroll
      for (int nj = 0; nj < 4; nj++) {
        const int col = n0 + wn * 32 + nj * 8 + 2 * t;
        if (col >= N) continue;
        const float v0 = acc[mi][nj][2 * h], v1 = acc[mi][nj][2 * h + 1];  // exact weights: no acc_scale
        const uint16_t* bias = a.W.bias + size_t(e) * N;
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

// y[tok] (+)= sum over slots j (in order) of out[pair_row[tok k + j]].
__global__ void __launch_bounds__(256) moe_combine(Workspace w, int H, int k, float* __restrict__ y, int ldy,
                                                   bool accumulate) {
  pdl_wait();
  pdl_trigger();
  const int tok = blockIdx.x;
  for (int h = threadIdx.x * 4; h < H; h += blockDim.x * 4) {
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j = 0; j < k; j++) {
      const float4 v = *reinterpret_cast<const float4*>(w.out + size_t(w.pair_row[tok * k + j]) * H + h);
      s.x += v.x;
      s.y += v.y;
      s.z += v.z;
      s.w += v.w;
    }
    float4* dst = reinterpret_cast<float4*>(y + size_t(tok) * ldy + h);
    if (accumulate) {
      const float4 o = *dst;
      s.x += o.x;
      s.y += o.y;
      s.z += o.z;
      s.w += o.w;
    }
    *dst = s;
  }
}

}  // namespace
}  // namespace hm::cuda::moe
#include "moe_decode_bulk.cuh"  // the MXFP4 decode kernels through shared memory (they use the helpers above)
#include "moe_grouped.cuh"      // the MXFP4 grouped streaming kernels (a few tokens per expert)
#include "moe_prefill_mma.cuh"  // the MXFP4 prefill GEMM through a cp.async ring (it uses v1's pieces above)
#include "moe_prefill_wgmma.cuh"  // the MXFP4 prefill GEMM on wgmma (sm_90a; its tile list is moe_prefill_mma.cuh's)
#include "moe_decode_split.cuh"  // the one-token MXFP4 decode kernels (register fragments, down split by expert)
namespace hm::cuda::moe {
namespace {

// ---- the launcher shared by both formats ----

// A decode-kernel configuration: MT m-tiles of 16 rows per block, KS warps splitting each m-tile's work items,
// D items in flight per warp, MINB blocks per SM for the register budget. Chosen by bench/moe_playground.
template <int MT_, int KS_, int D_, int MINB_>
struct DecodeCfg {
  static constexpr int MT = MT_, KS = KS_, D = D_, MINB = MINB_;
};
// H100, real shapes (bench/moe_playground/NOTES.md, run 5): gate_up 22.3 us, down 16.9 us at one token, E = 32.
// (MXFP4 decode on sm_90+ takes the bulk kernels; these remain for older GPUs and as the lab's comparison.)
using GuMxfp4 = DecodeCfg<2, 4, 1, 4>;
using DnMxfp4 = DecodeCfg<1, 16, 1, 2>;
using GuBf16 = DecodeCfg<4, 2, 1, 1>;
using DnBf16 = DecodeCfg<1, 8, 1, 1>;
// The bulk kernels (moe_decode_bulk.cuh): B6 of the H200 lab run of 2026-12-01 (NOTES.md, run 6; one tile per
// item): gate_up 24.9 us at one token (B5 24.2 but 134 vs 118 us at 8 tokens), down 17.2 us, E = 32, with the
// bf16 inner loop. An fp8 loop (NOTES.md, run 8) passed the op tests but measured slower on the H200: n = 1,
// E = 32 layer (graph + PDL, bulk+route) 46.0 us vs 41.3 with bf16; Nsight Compute showed both loops
// latency-bound (issue slots 40-47%, DRAM 29-31%), so the loop is not the limit; it has been removed.
using GuBulk = BulkCfg<8, 2, 3, 1>;
// The split kernels (moe_decode_split.cuh) at one token: 8 warps a tile, 3 chunks a warp (K <= 3072), from
// bench/moe_playground/stream_probe.cu (KS 8 D 3: 16.1 us for gate_up's stream against the bulk kernel's 24) and
// the lab (layer with routing, graph + PDL: 34.1 us against bulk's 40.9; KS 4/6/12/16 and one block an item slower;
// the engine-like chain 55.8 against 60.0 us a layer; NOTES.md, session 5). Session 12: 30.7 us (E = 32) with a
// chain of MMAs a chunk and gate_up's biases loaded with its weights; a persistent kernel staging down in shared
// memory under gate_up measured 41-42 us and was not kept (NOTES.md, session 12). Session 13: a tile reduction
// without the block barrier (30.7 against 30.0 us at E = 128), the block scales applied after the MMAs (31.2
// against 29.5; about a fifth fewer instructions a weight) and a warp's next item loaded before its current one is
// multiplied (34.7 against 29.4) were all slower and removed.
using GuSplit = SplitCfg<8, 3>;
using DnSplit = SplitCfg<8, 3>;
using DnBulk = BulkCfg<8, 2, 3, 1>;
// The grouped kernels (moe_grouped.cuh), from the H200 lab (NOTES.md, "grouped path"; MOE_GROUPED_ONLY=1): V1
// (bf16 loop, NCW8 NST2 NTB2 BPS3) was the fastest configuration at every n from 8 to 2048, E = 32 and 128; an fp8
// loop (lab F0-F5 then) measured 2-31% slower than the bf16 one at the same configuration and has been removed.
// GroupedBf16 (MoePath::kGroupedBf16) is round 1's configuration V0, the comparison variant of the op tests.
using GroupedDefault = GroupedCfg<8, 2, 2, 3>;
using GroupedBf16 = GroupedCfg<8, 2, 4, 2>;

template <WFmt F, typename G, typename Dn>
void launch_decode(const MoeParams& p, const WMat& gu, const WMat& dn, const Workspace& ws, cudaStream_t stream) {
  DecodeArgs a = decode_args(p, gu, ws.act);
  const int nuniq_max = p.n * p.k < p.E ? p.n * p.k : p.E;
  launch(moe_decode_gate_up<F, G::MT, G::KS, G::D, G::MINB>, dim3(ceil_div(2 * p.I, 16 * G::MT), nuniq_max),
         dim3(G::MT * G::KS * 32), 0, stream, p.pdl, a);
  a.ids_out = nullptr;
  a.weights_out = nullptr;
  a.x = ws.act;
  a.ldx = p.I;
  a.W = dn;
  launch(moe_decode_down<F, Dn::MT, Dn::KS, Dn::D, Dn::MINB>, dim3(ceil_div(p.H, 16 * Dn::MT)),
         dim3(Dn::MT * Dn::KS * 32), 0, stream, p.pdl, a);
}

template <WFmt F>
void forward(const MoeParams& p, const WMat& gu, const WMat& dn, cudaStream_t stream, const char* who) {
  HM_REQUIRE(p.n >= 0, who);
  HM_REQUIRE(p.H > 0 && p.H % 32 == 0 && p.I > 0 && p.I % 32 == 0, who);
  HM_REQUIRE(p.k >= 1 && p.k <= 8 && p.E >= p.k && p.E <= 256, who);
  HM_REQUIRE(p.x && p.y && p.workspace, who);
  HM_REQUIRE(p.logits ? p.ld_logits >= p.E : (p.ids && p.weights), who);
  HM_REQUIRE(!p.ids_out == !p.weights_out, who);
  HM_REQUIRE(p.ldx >= p.H && p.ldx % 8 == 0 && p.ldy >= p.H && p.ldy % 4 == 0, who);
  HM_REQUIRE(reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.y) % 16 == 0, who);
  HM_REQUIRE(reinterpret_cast<uintptr_t>(p.workspace) % 256 == 0, who);
  HM_REQUIRE(p.workspace_bytes >= moe_workspace_bytes(p.n, p.H, p.I, p.E, p.k), who);
  if (p.n == 0) return;
  const bool decode = p.path == MoePath::kDecode || p.path == MoePath::kDecodeRegs || p.path == MoePath::kDecodeSplit ||
                      (p.path == MoePath::kAuto && p.n <= kMoeDecodeMaxTokens);
  HM_REQUIRE(!decode || p.n <= kMoeDecodeMaxTokens, who);
  const Workspace ws = carve(p.workspace, p.n, p.H, p.I, p.E, p.k);

  if (decode) {
    if constexpr (F == WFmt::kMxfp4) {
      if ((p.path == MoePath::kAuto || p.path == MoePath::kDecodeSplit) && split_ok<GuSplit, DnSplit>(p, gu, dn))
        launch_decode_split<GuSplit, DnSplit>(p, gu, dn, ws, stream);
      else if (p.path != MoePath::kDecodeRegs && bulk_ok<GuBulk, DnBulk>(gu, dn))
        launch_decode_bulk<GuBulk, DnBulk>(p, gu, dn, ws, stream);
      else
        launch_decode<F, GuMxfp4, DnMxfp4>(p, gu, dn, ws, stream);
    } else {
      launch_decode<F, GuBf16, DnBf16>(p, gu, dn, ws, stream);
    }
    return;
  }
  const int P = p.n * p.k;
  // Whether the wgmma GEMMs run here (MXFP4 on an sm_90 device, shapes they take): kAuto's switch to the grouped
  // kernels and the GEMM choice below both follow it.
  bool wgmma_here = false;
  if constexpr (F == WFmt::kMxfp4) wgmma_here = wgmma_device() && prefill_wgmma_ok(gu, dn, p.n, p.H, p.I, P);
  int grouped = 0;  // 1: GroupedDefault, 2: GroupedBf16 (where they apply; else the GEMMs)
  if constexpr (F == WFmt::kMxfp4) {
    if (p.path == MoePath::kGroupedBf16)
      grouped = grouped_ok<GroupedBf16>(gu, dn) ? 2 : 0;
    else if (p.path == MoePath::kGrouped ||
             (p.path == MoePath::kAuto && moe_grouped_auto(p.n, p.k, p.E, p.wgmma && wgmma_here)))
      grouped = grouped_ok<GroupedDefault>(gu, dn) ? 1 : 0;
  }
  const int32_t* ids = p.ids;
  const float* weights = p.weights;
  if (p.logits) {  // prefill and grouped route first
    HM_REQUIRE(p.ids_out && p.weights_out, who);
    RouterTopkParams rt;
    rt.logits = p.logits;
    rt.ld_logits = p.ld_logits;
    rt.n = p.n;
    rt.E = p.E;
    rt.k = p.k;
    rt.ids = p.ids_out;
    rt.weights = p.weights_out;
    rt.pdl = p.pdl;
    router_topk_softmax(rt, stream);
    ids = p.ids_out;
    weights = p.weights_out;
  }
  launch(moe_route_sort, dim3(1), dim3(1024), 0, stream, p.pdl, ids, P, p.E, ws);
  if (grouped == 1) {
    launch_grouped<GroupedDefault>(p, gu, dn, weights, ws, stream);
  } else if (grouped == 2) {
    launch_grouped<GroupedBf16>(p, gu, dn, weights, ws, stream);
  } else {
    GemmArgs g{gu, p.x, p.ldx, p.k, weights, p.swiglu_limit, ws};
    bool v2 = false;  // the MXFP4 GEMM of moe_prefill_mma.cuh (v1's bits); v1 for bf16 and kPrefillV1
    if constexpr (F == WFmt::kMxfp4) {
      // The wgmma GEMMs (v1's bits too) wherever they run: on the H200 lab they beat v2 and v1 at every size
      // timed (E = 32: 318 vs 563 us at 64 tokens, 1362 vs 2187 at 2048; E = 128: 2123 vs 3141 at 2048).
      const bool gemm = (p.wgmma && (p.path == MoePath::kAuto || p.path == MoePath::kPrefill)) ||
                        p.path == MoePath::kPrefillWgmma;
      if (gemm && wgmma_here) {
        launch_prefill_wgmma_pair<F>(p, g, gu, dn, ws, P, stream, p.wgmma_tile);
        launch(moe_combine, dim3(p.n), dim3(256), 0, stream, p.pdl, ws, p.H, p.k, p.y, p.ldy, p.accumulate);
        return;
      }
      // Elsewhere (not sm_90, or shapes it does not take): v2 wins from ~128 tokens an expert (H200 lab: 2186 vs
      // 2449 us at 2048 tokens E = 32, 8615 vs 9642 at 8192 E = 128) and loses below 64 (742 vs 526 at 64 tokens
      // E = 32); kPrefill forces it, for the tests.
      v2 = p.path != MoePath::kPrefillV1 && prefill_mma_fits(p.n, p.ldx, P, p.I) &&
           (p.path == MoePath::kPrefill || P >= 128 * p.E);
      if (v2) launch_prefill_mma_pair(g, gu, dn, ws.act, p.I, P, p.E, stream, p.pdl);
    }
    if (!v2) {
      const int T = max_tiles(P, p.E);
      launch(moe_grouped_gemm<F, true>, dim3(ceil_div(2 * p.I, kBN), T), dim3(256), 0, stream, p.pdl, g);
      g.W = dn;
      g.A = ws.act;
      g.lda = p.I;
      launch(moe_grouped_gemm<F, false>, dim3(ceil_div(p.H, kBN), T), dim3(256), 0, stream, p.pdl, g);
    }
  }
  launch(moe_combine, dim3(p.n), dim3(256), 0, stream, p.pdl, ws, p.H, p.k, p.y, p.ldy, p.accumulate);
}

}  // namespace
}  // namespace hm::cuda::moe
