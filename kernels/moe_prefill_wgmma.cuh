// The prefill path's grouped GEMM for MXFP4 experts on Hopper's warpgroup MMA (wgmma): kPrefill's and kAuto's
// GEMM on an sm_90 device (MoePath::kPrefillWgmma names it; kPrefillMma forces moe_prefill_mma.cuh's, the one
// every other device runs: wgmma exists on sm_90a only). H200 lab, one layer, pipelined (the default): 1,212 us at
// 2048 tokens E = 32 (336 TFLOP/s; v2 2,190), 4,996 at 8192 E = 128 (326; v2 8,625), 283 at 64 tokens E = 32 (v1 531).
//
// The GEMM is computed transposed, D[weight row][token] = W[e] x X^T, so the decoded weights are the A operand,
// straight from registers (moe_prefill_wgmma: no bf16 copy of any weight in shared memory), and the tokens of a
// tile are wgmma's N, which may be as narrow as 8: so the same kernel serves an expert's 16 tokens (a batched
// decode step) and its thousands (a prompt), at the tile width BN (16, 32, 64 or 128) picked per call from the
// tokens an expert:
//   - a block: 128 weight rows (two warpgroups of 64) x BN sorted pair-rows (one expert, the tile list of
//     moe_prefill_mma.cuh at BN rows), 256 threads, every thread a loader and a consumer;
//   - k-tiles of 64 columns through a ring of WgCfg<BN>::STAGES stages by cp.async: the tokens' bf16 rows (gathered by
//     sorted row, 128 bytes a row, stored in the 128-byte swizzle wgmma's descriptor reads) and the weights' raw
//     MXFP4 bytes (32 a row, rows padded to 48 bytes so a quad's 8-byte reads of 8 rows do not conflict);
//   - per k16 step each lane decodes its A fragment from the raw bytes: lane (g, t) of warp q takes nibbles t and
//     t + 4 of the k-step's two words of rows 16q + g and 16q + g + 8 (decode_word's pair t, one shift more), in
//     the k-permutation of moe_impl.cuh, so the tokens' rows must be in it too: gate_up reads ws.xp
//     (moe_permute_x) and writes act permuted (kperm_pos), down reads act as is;
//   - one wgmma m64nBNk16 per warpgroup and k16 step, fp32 accumulators in registers (BN / 2 a thread); the
//     weights carry decode_word's 2^-63, multiplied back in the epilogue; narrow tiles keep a deeper ring (the
//     weights' bytes in flight: they stream once per token tile);
//   - PIPE (the default): k-tile kt is decoded into one of two A register sets while kt - 1's MMAs run (see the
//     kernel); without it each k-tile's MMAs retire before the next is decoded (MoeParams::wgmma_a 1, for A/B);
//   - epilogues as v2's: SwiGLU x routing weight into act (gate and up rows are neighbours, lanes l and l ^ 4),
//     bias x routing weight into ws.out.
// moe_prefill_wgmma_ss is the same GEMM with each k-tile's weights decoded into a bf16 tile in shared memory
// (both operands by descriptor, the next k-tile decoded while this one's MMAs run; still no bf16 copy in global
// memory): an A/B path now (MoeParams::wgmma_a 2), bound by shared memory (a 16 KB decoded tile written and read
// per k-tile beside 4 KB of raw bytes); the pipelined register kernel beats it at every width.
// Bits: v1's, at every tile width and either operand (op tests "v1_bits": the H200's wgmma sums a k16 step as its
// mma.sync does, the weights are exact and 2^-63 is exact), so the batch-invariance argument of v1 carries over.
#pragma once

#include "wgmma.cuh"  // the wgmma PTX wrappers

namespace hm::cuda::moe {
namespace {

constexpr int kWgBM = 128;             // weight rows a block (two warpgroups of 64)
constexpr int kWgBK = 64;              // columns a k-tile: one 128-byte swizzle atom a token row
constexpr int kWgThreads = 256;
constexpr int kWgRowBytes = 48;        // a weight row's 32 raw bytes a k-tile, padded
constexpr int kWgWBytes = kWgBM * kWgRowBytes;

// The ring for BN tokens a tile: stages of BN token rows (128 bytes each, 1024-aligned: the swizzle's period) and
// the weights' raw bytes; deeper when narrow.
template <int BN>
struct WgCfg {
  static_assert(BN == 16 || BN == 32 || BN == 64 || BN == 128, "WgCfg: BN 16, 32, 64 or 128");
  static constexpr int STAGES = BN >= 64 ? 4 : 8;  // 8 stages at 64 left one block an SM (1.8x slower in the lab)
  static constexpr int X_BYTES = BN * kWgBK * 2;
  static constexpr int STAGE_BYTES = X_BYTES + kWgWBytes;
  static constexpr size_t SMEM = size_t(STAGES) * STAGE_BYTES + 1024;  // + the alignment of the ring
  static_assert(STAGE_BYTES % 1024 == 0, "the swizzled token tiles must start 1024-aligned");
};

// The tile width for P pairs over E experts. A tile's weight decode costs the same at any width, so wide tiles win
// once an expert fills them; narrow ones while it cannot. H200 lab, one layer, the best width by mean tokens an
// expert: 2 and 8 -> 16 (E = 128: 983 vs 1,619 us at 128), 16 -> 32 (1,450 vs 1,583 at 16), 32 -> 64 (E = 32:
// 445 vs 521 at 128), 64 and up -> 128 (557 vs 648 at 64).
inline int prefill_wgmma_bn(int P, int E) {
  const int mean = (P + E - 1) / E;
  return mean <= 12 ? 16 : mean <= 24 ? 32 : mean <= 48 ? 64 : 128;
}

// Shapes the kernel takes: K a multiple of the k-tile, rows in pairs, I in groups of 8 (kperm_pos), offsets in 32 bits.
inline bool prefill_wgmma_ok(const WMat& gu, const WMat& dn, int n, int H, int I, int P) {
  return gu.K % kWgBK == 0 && dn.K % kWgBK == 0 && gu.rows % 2 == 0 && I % 8 == 0 && prefill_mma_fits(n, H, P, I);
}


// Pair t of a word's decode (decode_word's p[t]): nibbles t and t + 4, times the factor.
__device__ __forceinline__ uint32_t decode_pair(uint32_t w, int t, uint32_t f) {
  w >>= 4 * t;
  return bf16x2_mul(((w << 6) & 0x01C001C0u) | ((w << 12) & 0x80008000u), f);
}

// The same pair by two rotations of lane constants (ROT: one instruction a pair fewer than the shift by 4t, then two
// shifts): ra = (6 - 4t) & 31 brings nibble t's three low bits to 6..8 (and t + 4's to 22..24), rb = (12 - 4t) & 31
// its sign to 15 (and 31); the masks drop what the rotation wrapped. The same bits as decode_pair for every word and
// t (checked for every 32-bit word and t on the host, session 8; op tests v1_bits on the GPU).
__device__ __forceinline__ uint32_t decode_pair_rot(uint32_t w, uint32_t ra, uint32_t rb, uint32_t f) {
  return bf16x2_mul((__funnelshift_l(w, w, ra) & 0x01C001C0u) | (__funnelshift_l(w, w, rb) & 0x80008000u), f);
}
// mx_factor with the two shifts and the or as one multiply: the clamped exponent + 63 is below 256, so its copies at
// bits 7 and 23 cannot overlap and (s << 7) | (s << 23) = s * 0x00800080.
__device__ __forceinline__ uint32_t mx_factor_mul(uint32_t s) { return (min(max(s, 65u), 191u) + 63u) * 0x00800080u; }

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The epilogue of both kernels. acc[4 j + 2 h + c]: weight row lr0 + 8 h, token column 8 j + 2 t + c of the tile
// (wgmma's D fragment); gate_up: SwiGLU x routing weight into act, down: + bias x routing weight into ws.out.
template <bool GATE_UP, int BN>
__device__ __forceinline__ void wg_epilogue(const GemmArgs& a, const float (&acc)[BN / 2], int e, int m0, int m_end,
                                            int n0, int lr0, int lr1, int g, int t) {
  const int N = a.W.rows;
  const uint16_t* bias = a.W.bias + size_t(e) * N;
  if constexpr (GATE_UP) {
    // Gate row 2i and up row 2i + 1 sit in lanes l and l ^ 4 (g and g + 1): an even-g lane takes the pair of its
    // first row (its own gate, the partner's up), an odd-g lane the pair of its second (the partner's gate, its up).
    const bool odd = g & 1;
    const int grow = n0 + (odd ? lr1 - 1 : lr0);  // the pair's gate row
    const bool ok = grow + 1 < N;
    const float bg = ok ? bf2f_bits(bias[grow]) : 0.f, bu = ok ? bf2f_bits(bias[grow + 1]) : 0.f;
    const int I = N >> 1, col = kperm_pos(grow >> 1);
#pragma unroll
    for (int j = 0; j < BN / 8; j++)
#pragma unroll
      for (int c = 0; c < 2; c++) {
        const float mine0 = acc[4 * j + c], mine1 = acc[4 * j + 2 + c];
        const float other = __shfl_xor_sync(0xffffffffu, odd ? mine0 : mine1, 4);
        const int row = m0 + 8 * j + 2 * t + c;
        if (!ok || row >= m_end) continue;
        const float gate = (odd ? other : mine0) * kTwoPow63 + bg;
        const float up = (odd ? mine1 : other) * kTwoPow63 + bu;
        const float wr_ = a.weights[a.ws.perm[row]];
        a.ws.act[size_t(row) * I + col] = f2bf_bits(swiglu1(gate, up, a.limit) * wr_);
      }
  } else {
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int wrow = n0 + lr0 + 8 * h;
      if (wrow >= N) continue;
      const float b = bf2f_bits(bias[wrow]);
#pragma unroll
      for (int j = 0; j < BN / 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int row = m0 + 8 * j + 2 * t + c;
          if (row >= m_end) continue;
          const float wr_ = a.weights[a.ws.perm[row]];
          a.ws.out[size_t(row) * N + wrow] = acc[4 * j + 2 * h + c] * kTwoPow63 + wr_ * b;
        }
    }
  }
}

#endif

// Grid: (ceil(N / kWgBM), prefill_max_tiles(P, E, BN)); blocks past the last tile exit. Dynamic shared memory
// WgCfg<BN>::SMEM.
// PIPE (MoeParams::wgmma_a 3): a k-tile's MMAs stay in flight while the next k-tile is decoded into a second set of
// A registers (wgmma.wait_group 1, the loads one stage less ahead so no stage is overwritten under a pending MMA);
// both register sets are kept alive past the wait that retires them (wg_keep), so the compiler cannot hand an
// in-flight MMA's A registers to the next decode.
// ROT (with PIPE; MoeParams::wgmma_a 4, not yet GPU-run): the pair decode by rotations (decode_pair_rot) and the
// scale factor by one multiply (mx_factor_mul), the same bits in fewer instructions (bench/moe_playground/NOTES.md,
// session 8: the tile-16 loop is issue-bound).
template <bool GATE_UP, int BN, bool PIPE = false, bool ROT = false>
__global__ void __launch_bounds__(kWgThreads, 2) moe_prefill_wgmma(GemmArgs a, int E) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = WgCfg<BN>;
  constexpr int NST = C::STAGES, NACC = BN / 2, XR = (BN * 8 + kWgThreads - 1) / kWgThreads;  // token-row copies a thread
  extern __shared__ __align__(16) unsigned char wg_smem[];
  // The ring starts at the first 1024-aligned shared address (the tile list's static words come first).
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(wg_smem));
  const uint32_t ring = (raw + 1023u) & ~1023u;
  unsigned char* ring_p = wg_smem + (ring - raw);
  pdl_wait();
  pdl_trigger();
  int e, m0, m_end;
  if (!prefill_tile<BN>(a.ws.offsets, E, int(blockIdx.y), e, m0, m_end)) return;
  const int N = a.W.rows, K = a.W.K, kb = K >> 5, KT = K / kWgBK, n0 = blockIdx.x * kWgBM;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wgi = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, t = lane & 3;

  // Token-row copies: 16-byte chunk xc of rows xr0 + 32 i (those below BN), into the swizzled slot of (row, chunk).
  const int xc = tid & 7, xr0 = tid >> 3;
  uint32_t x_off[XR];
  bool x_ok[XR];
#pragma unroll
  for (int i = 0; i < XR; i++) {
    const int r = m0 + xr0 + 32 * i;
    x_ok[i] = r < m_end && xr0 + 32 * i < BN;
    x_off[i] = x_ok[i] ? uint32_t(GATE_UP ? a.ws.perm[r] / a.k : r) * uint32_t(a.lda) + uint32_t(xc * 8) : 0u;
  }
  // Raw weight copies: chunk wc (16 bytes, 32 columns) of row wr.
  const int wr = tid >> 1, wc = tid & 1;
  const bool w_ok = n0 + wr < N;
  const uint8_t* w_src = static_cast<const uint8_t*>(a.W.data) + ((size_t(e) * N + (w_ok ? n0 + wr : 0)) * kb + wc) * 16;
  auto issue = [&](int kt) {  // k-tile kt into stage kt % NST (always one group, empty past the end)
    if (kt < KT) {
      unsigned char* st = ring_p + (kt % NST) * C::STAGE_BYTES;
#pragma unroll
      for (int i = 0; i < XR; i++) {
        const int r = xr0 + 32 * i;
        if (r < BN) cp_async16_zfill(st + r * 128 + ((xc ^ (r & 7)) << 4), a.A + x_off[i] + kt * kWgBK, x_ok[i]);
      }
      cp_async16_zfill(st + C::X_BYTES + wr * kWgRowBytes + wc * 16, w_src + size_t(kt) * 32, w_ok);
    }
    cp_async_commit();
  };

  // This lane's two weight rows (fragment rows g and g + 8 of its warp's 16) and their scales, a k-tile ahead.
  const int lr0 = wgi * 64 + wq * 16 + g, lr1 = lr0 + 8;
  const bool ok0 = n0 + lr0 < N, ok1 = n0 + lr1 < N;
  const uint8_t* s0 = a.W.scales + (size_t(e) * N + (ok0 ? n0 + lr0 : 0)) * kb;
  const uint8_t* s1 = a.W.scales + (size_t(e) * N + (ok1 ? n0 + lr1 : 0)) * kb;
  auto scales = [&](int kt, uint32_t* s) {  // the k-tile's two 32-column blocks of both rows
    const bool in = kt < KT;
    s[0] = ok0 && in ? __ldg(s0 + 2 * kt) : 127u;
    s[1] = ok0 && in ? __ldg(s0 + 2 * kt + 1) : 127u;
    s[2] = ok1 && in ? __ldg(s1 + 2 * kt) : 127u;
    s[3] = ok1 && in ? __ldg(s1 + 2 * kt + 1) : 127u;
  };

  // The A fragment of k16 step kk of k-tile kt from its stage (scales s_ of the k-tile): lane (g, t) takes pair t
  // of words 2 kk and 2 kk + 1 of rows lr0 and lr1.
  const uint32_t ra = uint32_t(6 - 4 * t) & 31u, rb = uint32_t(12 - 4 * t) & 31u;  // decode_pair_rot's rotations
  auto fragment = [&](int kt, int kk, const uint32_t* s_, uint32_t (&af)[4]) {
    const unsigned char* st = ring_p + (kt % NST) * C::STAGE_BYTES;
    const uint2 q0 = *reinterpret_cast<const uint2*>(st + C::X_BYTES + lr0 * kWgRowBytes + kk * 8);
    const uint2 q1 = *reinterpret_cast<const uint2*>(st + C::X_BYTES + lr1 * kWgRowBytes + kk * 8);
    if constexpr (ROT) {
      const uint32_t f0 = mx_factor_mul(s_[kk >> 1]), f1 = mx_factor_mul(s_[2 + (kk >> 1)]);
      af[0] = decode_pair_rot(q0.x, ra, rb, f0);
      af[1] = decode_pair_rot(q1.x, ra, rb, f1);
      af[2] = decode_pair_rot(q0.y, ra, rb, f0);
      af[3] = decode_pair_rot(q1.y, ra, rb, f1);
    } else {
      const uint32_t f0 = mx_factor(s_[kk >> 1]), f1 = mx_factor(s_[2 + (kk >> 1)]);
      af[0] = decode_pair(q0.x, t, f0);  // (row g, k 2t, 2t+1)
      af[1] = decode_pair(q1.x, t, f1);  // (row g+8, k 2t, 2t+1)
      af[2] = decode_pair(q0.y, t, f0);  // (row g, k 2t+8, 2t+9)
      af[3] = decode_pair(q1.y, t, f1);  // (row g+8, k 2t+8, 2t+9)
    }
  };

  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; i++) acc[i] = 0.f;
  uint32_t sc[4], sc_next[4];
  if constexpr (!PIPE) {
    for (int s = 0; s < NST - 1; s++) issue(s);
    scales(0, sc);
    for (int kt = 0; kt < KT; kt++) {
      cp_async_wait<NST - 2>();        // this thread's copies of k-tile kt have landed
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // visible to wgmma's operand reads
      __syncthreads();                 // everyone's; every warpgroup is past its MMAs of kt - 1 (waited below)
      issue(kt + NST - 1);             // into the stage of kt - 1
      scales(kt + 1, sc_next);
      const uint32_t x_lo = wg_desc_lo(ring + uint32_t((kt % NST) * C::STAGE_BYTES));
      wg_fence_acc(acc);
#pragma unroll
      for (int kk = 0; kk < kWgBK / 16; kk++) {
        uint32_t af[4];
        fragment(kt, kk, sc, af);
        wg_fence();
        wg_mma_k16(acc, af, wg_desc_from_lo(x_lo + uint32_t(2 * kk)));
        wg_commit();
      }
      wg_wait<0>();
      wg_fence_acc(acc);
#pragma unroll
      for (int i = 0; i < 4; i++) sc[i] = sc_next[i];
    }
  } else {
    // A fragments of k-tile kt: 4 k16 steps x 4 registers.
    auto decode_tile = [&](int kt, const uint32_t* s_, uint32_t (&af)[4][4]) {
#pragma unroll
      for (int kk = 0; kk < kWgBK / 16; kk++) fragment(kt, kk, s_, af[kk]);
    };
    auto mma_tile = [&](int kt, const uint32_t (&af)[4][4]) {
      const uint32_t x_lo = wg_desc_lo(ring + uint32_t((kt % NST) * C::STAGE_BYTES));
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < kWgBK / 16; kk++) wg_mma_k16(acc, af[kk], wg_desc_from_lo(x_lo + uint32_t(2 * kk)));
      wg_commit();
    };
    uint32_t afa[4][4], afb[4][4];
    // The loads run NST - 2 tiles ahead: tile kt + NST - 2 goes into the stage of kt - 2, whose MMAs every
    // warpgroup retired (wait_group 1 in iteration kt - 1) before this iteration's barrier.
    for (int s_ = 0; s_ < NST - 2; s_++) issue(s_);
    scales(0, sc);
    auto step = [&](int kt, uint32_t (&cur)[4][4], uint32_t (&prev)[4][4]) {
      cp_async_wait<NST - 3>();
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      __syncthreads();
      issue(kt + NST - 2);
      scales(kt + 1, sc_next);
      decode_tile(kt, sc, cur);
      mma_tile(kt, cur);
      wg_wait<1>();  // tile kt - 1's MMAs retired: its registers (prev) and its stage are free
      wg_keep(prev);
#pragma unroll
      for (int i = 0; i < 4; i++) sc[i] = sc_next[i];
    };
    int kt = 0;
    for (; kt + 1 < KT; kt += 2) {
      step(kt, afa, afb);
      step(kt + 1, afb, afa);
    }
    if (kt < KT) step(kt, afa, afb);
    wg_wait<0>();
    wg_keep(afa);
    wg_keep(afb);
    wg_fence_acc(acc);
  }

  wg_epilogue<GATE_UP, BN>(a, acc, e, m0, m_end, n0, lr0, lr1, g, t);
#endif
}

// The same GEMM with the weights decoded into shared memory (MoeParams::wgmma_a 2): a k-tile's MXFP4 bytes are
// decoded by all 256 threads (thread = one row's 32-column block: its 16 raw bytes, its scale) into a bf16 tile in
// the 128-byte swizzle, and both wgmma operands come from shared memory, so one k-tile's MMAs run while the next
// tile is decoded (two decoded tiles, wait_group 1), which the register operand cannot do (its registers must live
// until the MMA retires). Per decoded word the columns are decode_pair's, as the register kernel's fragments, so
// every k16 step sums the same products: v1's bits again (op tests).
template <int BN>
struct WgSsCfg {
  static constexpr int STAGES = 6;  // ring of (token rows, raw weight bytes): 3 blocks an SM at BN = 16, 2 to 64
  static constexpr int X_BYTES = BN * kWgBK * 2;
  static constexpr int RAW_BYTES = kWgBM * 32;      // a row's 32 raw bytes a k-tile
  static constexpr int STAGE_BYTES = X_BYTES + RAW_BYTES;
  static constexpr int A_BYTES = kWgBM * 128;       // the decoded tile: 128 rows x 64 bf16
  static constexpr size_t SMEM = size_t(STAGES) * STAGE_BYTES + 2 * A_BYTES + 1024;
  static_assert(STAGE_BYTES % 1024 == 0, "the swizzled token tiles must start 1024-aligned");
};

template <bool GATE_UP, int BN>
__global__ void __launch_bounds__(kWgThreads, 1) moe_prefill_wgmma_ss(GemmArgs a, int E) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = WgSsCfg<BN>;
  constexpr int NST = C::STAGES, NACC = BN / 2, XR = (BN * 8 + kWgThreads - 1) / kWgThreads;
  constexpr uint32_t SB = C::STAGE_BYTES, RING = NST * SB;
  extern __shared__ __align__(16) unsigned char wg_smem[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(wg_smem));
  const uint32_t ring = (raw + 1023u) & ~1023u;
  const uint32_t a_tiles = ring + RING;  // two decoded tiles after the ring
  const int tid = threadIdx.x;
  const int N = a.W.rows, K = a.W.K, kb = K >> 5, KT = K / kWgBK, n0 = blockIdx.x * kWgBM;
  // Raw weight copies and their decode: chunk wc (16 bytes, 32 columns) of row wr, the same thread both.
  const int wr = tid >> 1, wc = tid & 1;
  const bool w_ok = n0 + wr < N;
  const uint8_t* w_src = static_cast<const uint8_t*>(a.W.data);  // set below, once the tile's expert is known
  const uint8_t* s_src = a.W.scales;
  pdl_wait();
  pdl_trigger();
  int e, m0, m_end;
  if (!prefill_tile<BN>(a.ws.offsets, E, int(blockIdx.y), e, m0, m_end)) return;
  w_src += ((size_t(e) * N + (w_ok ? n0 + wr : 0)) * kb + wc) * 16;
  s_src += (size_t(e) * N + (w_ok ? n0 + wr : 0)) * kb + wc;

  // Everything a k-tile's copies and decode address is a per-thread offset fixed here, so the loop only adds the
  // stage's offset (ncu, 64 tokens E = 32: 226 -> about 180 instructions a warp a k-tile, yet 3% faster only: the
  // kernel is bound by shared memory, not by issue).
  const int xc = tid & 7, xr0 = tid >> 3;
  const uint16_t* x_src[XR];
  uint32_t x_dst[XR];
  bool x_ok[XR];
#pragma unroll
  for (int i = 0; i < XR; i++) {
    const int r = m0 + xr0 + 32 * i, lr = xr0 + 32 * i;
    x_ok[i] = r < m_end && lr < BN;
    x_src[i] = a.A + (x_ok[i] ? size_t(uint32_t(GATE_UP ? a.ws.perm[r] / a.k : r) * uint32_t(a.lda)) : 0) + xc * 8;
    x_dst[i] = uint32_t(lr * 128 + ((xc ^ (lr & 7)) << 4));
  }
  const uint32_t w_dst = uint32_t(C::X_BYTES + wr * 32 + wc * 16);
  auto issue = [&](int kt, uint32_t st) {  // k-tile kt into the stage at offset st (one group, empty past the end)
    if (kt < KT) {
#pragma unroll
      for (int i = 0; i < XR; i++)
        if (xr0 + 32 * i < BN) cp_async16_zfill_s(ring + st + x_dst[i], x_src[i] + kt * kWgBK, x_ok[i]);
      cp_async16_zfill_s(ring + st + w_dst, w_src + size_t(kt) * 32, w_ok);
    }
    cp_async_commit();
  };
  // Decodes this thread's 16 raw bytes of the k-tile in stage st (scale sc) into words 4 wc .. 4 wc + 3 of its row
  // of the decoded tile at offset at: word w is 16-byte chunk w of the row (k16 step w / 2, columns 8 (w & 1) ..),
  // pairs t at columns 2t, 2t + 1; chunk w sits at w ^ (row & 7) (the 128-byte swizzle).
  uint32_t d_dst[4];
#pragma unroll
  for (int i = 0; i < 4; i++) d_dst[i] = uint32_t(wr * 128 + (((4 * wc + i) ^ (wr & 7)) << 4));
  auto decode = [&](uint32_t st, uint32_t at, uint32_t sc) {
    uint4 q;
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(q.x), "=r"(q.y), "=r"(q.z), "=r"(q.w)
                 : "r"(ring + st + w_dst));
    const uint32_t f = mx_factor(sc);
    const uint32_t wv[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++)
      asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};" ::"r"(a_tiles + at + d_dst[i]),
                   "r"(decode_pair(wv[i], 0, f)), "r"(decode_pair(wv[i], 1, f)), "r"(decode_pair(wv[i], 2, f)),
                   "r"(decode_pair(wv[i], 3, f))
                   : "memory");
  };
  auto scale = [&](int kt) { return w_ok && kt < KT ? uint32_t(__ldg(s_src + 2 * kt)) : 127u; };

  const int lane = tid & 31, warp = tid >> 5, wgi = warp >> 2, wq = warp & 3, g = lane >> 2, t = lane & 3;
  const uint32_t x_lo = wg_desc_lo(ring), a_lo = wg_desc_lo(a_tiles + uint32_t(wgi * 64 * 128));
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; i++) acc[i] = 0.f;
  for (int s = 0; s < NST - 1; s++) issue(s, uint32_t(s) * SB);
  uint32_t sc_next = scale(1), sc_next2 = scale(2);
  cp_async_wait<NST - 2>();  // tile 0 (this thread's raw bytes)
  decode(0, 0, scale(0));
  // Stage offsets of tiles kt, kt + 1 and kt + NST - 1, and the decoded tile of kt.
  uint32_t st_use = 0, st_next = SB, st_issue = (NST - 1) * SB, at = 0;
  for (int kt = 0; kt < KT; kt++) {
    // Tile kt is decoded by this thread; tile kt + 1's copies: this thread's have landed.
    cp_async_wait<NST - 3>();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // decoded tile kt and token rows: to wgmma
    __syncthreads();  // everyone's; every warpgroup's MMAs of tile kt - 1 have retired (waited below)
    issue(kt + NST - 1, st_issue);  // into the stage of tile kt - 1
    const uint32_t xd = x_lo + (st_use >> 4), ad = a_lo + (at >> 4);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < kWgBK / 16; kk++)
      wg_mma_ss_k16(acc, wg_desc_from_lo(ad + uint32_t(2 * kk)), wg_desc_from_lo(xd + uint32_t(2 * kk)));
    wg_commit();
    // Tile kt + 1 into the other decoded buffer (its MMAs, of tile kt - 1, retired before the barrier).
    if (kt + 1 < KT) decode(st_next, at ^ uint32_t(C::A_BYTES), sc_next);
    sc_next = sc_next2;
    sc_next2 = scale(kt + 3);
    st_use = st_next;
    st_next = st_next + SB == RING ? 0u : st_next + SB;
    st_issue = st_issue + SB == RING ? 0u : st_issue + SB;
    at ^= uint32_t(C::A_BYTES);
    wg_wait<0>();
  }
  wg_fence_acc(acc);
  cp_async_wait<0>();
  const int lr0 = wgi * 64 + wq * 16 + g, lr1 = lr0 + 8;
  wg_epilogue<GATE_UP, BN>(a, acc, e, m0, m_end, n0, lr0, lr1, g, t);
#endif
}

// Either kernel (KERNEL: moe_prefill_wgmma or moe_prefill_wgmma_ss, SMEM its configuration's), grid
// (ceil(N / kWgBM), T tile slots).
template <auto KERNEL, size_t SMEM>
void launch_prefill_wgmma_kernel(const GemmArgs& g, int E, int T, cudaStream_t stream, bool pdl) {
  static const bool attr_set = [] {  // once per instantiation (the dynamic shared memory is above 48 KB)
    CUDA_CHECK(cudaFuncSetAttribute(KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, int(SMEM)));
    return true;
  }();
  (void)attr_set;
  launch(KERNEL, dim3(ceil_div(g.W.rows, kWgBM), T), dim3(kWgThreads), SMEM, stream, pdl, g, E);
}
// The weights' operand (MoeParams::wgmma_a 1 .. 4): registers, decoded into shared memory, registers pipelined,
// and pipelined with the decode by rotations.
enum class WgA { kRegs, kSmem, kRegsPipe, kRegsPipeRot };

template <bool GATE_UP, int BN>
void launch_prefill_wgmma_gemm(const GemmArgs& g, int E, int T, WgA op, cudaStream_t stream, bool pdl) {
  if (op == WgA::kSmem) {
    launch_prefill_wgmma_kernel<moe_prefill_wgmma_ss<GATE_UP, BN>, WgSsCfg<BN>::SMEM>(g, E, T, stream, pdl);
  } else if (op == WgA::kRegsPipe) {
    launch_prefill_wgmma_kernel<moe_prefill_wgmma<GATE_UP, BN, true>, WgCfg<BN>::SMEM>(g, E, T, stream, pdl);
  } else if (op == WgA::kRegsPipeRot) {  // up to tile 64: at 128 the two rotation registers spill (ptxas)
    constexpr bool rot = BN <= 64;
    launch_prefill_wgmma_kernel<moe_prefill_wgmma<GATE_UP, BN, true, rot>, WgCfg<BN>::SMEM>(g, E, T, stream, pdl);
  } else {
    launch_prefill_wgmma_kernel<moe_prefill_wgmma<GATE_UP, BN>, WgCfg<BN>::SMEM>(g, E, T, stream, pdl);
  }
}

template <int BN>
void launch_prefill_wgmma_both(GemmArgs g, const WMat& gu, const WMat& dn, const MoeParams& p, const Workspace& ws,
                               int P, WgA op, cudaStream_t stream) {
  const int T = prefill_max_tiles(P, p.E, BN);
  g.W = gu;
  g.A = ws.xp;
  g.lda = p.H;
  launch_prefill_wgmma_gemm<true, BN>(g, p.E, T, op, stream, p.pdl);
  g.W = dn;
  g.A = ws.act;
  g.lda = p.I;
  launch_prefill_wgmma_gemm<false, BN>(g, p.E, T, op, stream, p.pdl);
}

// x into the k-permutation (ws.xp), gate_up, down (after route_sort, before the combine), at the tile width for
// the mean tokens an expert (prefill_wgmma_bn) unless `bn` names one; the weights' operand pipelined in registers
// unless MoeParams::wgmma_a names another. H200 lab, us, unpipelined registers / shared memory / pipelined: E = 32
// 64 tokens 317 / 287 / 283, 256 422 / 411 / 362, 2048 1,365 / 1,705 / 1,212; E = 128 64 968 / 896 / 858, 2048
// 2,112 / 2,630 / 1,853.
void launch_prefill_wgmma_pair(const MoeParams& p, const GemmArgs& g, const WMat& gu, const WMat& dn,
                               const Workspace& ws, int P, cudaStream_t stream, int bn = 0) {
  launch(moe_permute_x, dim3(p.n), dim3(256), 0, stream, p.pdl, p.x, p.ldx, p.H, ws.xp);
  const int width = bn > 0 ? bn : prefill_wgmma_bn(P, p.E);
  const WgA op = p.wgmma_a == 1   ? WgA::kRegs
                 : p.wgmma_a == 2 ? WgA::kSmem
                 : p.wgmma_a == 3 ? WgA::kRegsPipe
                 : p.wgmma_a == 4 ? WgA::kRegsPipeRot
                                  : WgA::kRegsPipe;
  switch (width) {
    case 16: return launch_prefill_wgmma_both<16>(g, gu, dn, p, ws, P, op, stream);
    case 32: return launch_prefill_wgmma_both<32>(g, gu, dn, p, ws, P, op, stream);
    case 64: return launch_prefill_wgmma_both<64>(g, gu, dn, p, ws, P, op, stream);
    default: return launch_prefill_wgmma_both<128>(g, gu, dn, p, ws, P, op, stream);
  }
}

}  // namespace
}  // namespace hm::cuda::moe
