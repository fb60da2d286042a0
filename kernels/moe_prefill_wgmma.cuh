// The prefill path's grouped GEMM for MXFP4 experts on Hopper's warpgroup MMA (wgmma): kPrefill's and kAuto's
// GEMM on an sm_90 device (MoePath::kPrefillWgmma names it; kPrefillMma forces moe_prefill_mma.cuh's, the one
// every other device runs: wgmma exists on sm_90a only). H200 lab, one layer (session 11): 1,114 us at 2048 tokens
// E = 32 (366 TFLOP/s; v2 2,190), 332 at 256, 241 at 64 (v1 531); E = 128 1,697 / 847 / 721 (session 10: 4,996 at
// 8192, 326 TFLOP/s; v2 8,625); session 14 (fitted tiles, the copies' addresses in registers): E = 32 2048 / 512 /
// 256 / 64 tokens 1,046 / 391 / 305 / 233, E = 128 2048 / 256 / 64 tokens 1,456 / 805 / 690.
//
// The GEMM is computed transposed, D[weight row][token] = W[e] x X^T, so the decoded weights are the A operand,
// straight from registers (moe_prefill_wgmma: no bf16 copy of any weight in shared memory), and the tokens of a
// tile are wgmma's N, which may be as narrow as 8: so the same kernel serves an expert's 16 tokens (a batched
// decode step) and its thousands (a prompt), at the tile width BN (16, 32, 64 or 128) picked per call from the
// tokens an expert, or in tiles fitted to each expert's tokens (moe_prefill_wgmma<GATE_UP, 0>, widths 16 to 128 by 16):
//   - a block: 128 weight rows (two warpgroups of 64) x BN sorted pair-rows (one expert, the tile list of
//     moe_prefill_mma.cuh at BN rows), 256 threads, every thread a loader and a consumer;
//   - k-tiles of 64 columns through a ring of WgCfg<BN>::STAGES stages by cp.async: the tokens' bf16 rows (gathered by
//     sorted row, 128 bytes a row, stored in the 128-byte swizzle wgmma's descriptor reads) and the weights' prepared
//     MXFP4 bytes (32 a row, its two 16-byte chunks swapped in rows 4..7 of every 8, wg_w_chunk, so a warp's 32 words
//     of a block fall in 32 banks and a warp's copies write 512 contiguous bytes);
//   - the block's scales (its 128 rows' K / 32 bytes, one contiguous run of the checkpoint's layout) copied into shared
//     memory once, with k-tile 0's group: read per k-tile from there, not from global memory;
//   - per k16 step each lane decodes its A fragment from the prepared bytes (mxfp4_prepare.cu): lane (g, t) of
//     warp q reads prepared word t of its block of rows 16q + g and 16q + g + 8, whose four slots are its pairs
//     of both k16 steps of the block, in the k-permutation of moe_impl.cuh, so the tokens' rows must be in it
//     too: gate_up reads ws.xp (moe_permute_x) and writes act permuted (kperm_pos), down reads act as is; the
//     scales are prepared too (clamped), so a factor is one multiply-add;
//   - one wgmma m64nBNk16 per warpgroup and k16 step, fp32 accumulators in registers (BN / 2 a thread); the
//     weights carry decode_word's 2^-63, multiplied back in the epilogue; narrow tiles keep a deeper ring (the
//     weights' bytes in flight: they stream once per token tile);
//   - k-tile kt is decoded into one of two A register sets while kt - 1's MMAs run (see the kernel);
//   - epilogues as v2's: SwiGLU x routing weight into act (gate and up rows are neighbours, lanes l and l ^ 4),
//     bias x routing weight into ws.out.
// Tried and removed (bench/moe_playground/NOTES.md, sessions 7-9): the weights decoded into a bf16 tile in shared
// memory with both operands by descriptor (bound by shared memory), the unpipelined register loop (each k-tile's
// MMAs retired before the next decode), a 256-token tile, the pair decode by rotations and the scale factor by one
// multiply (fewer instructions, slower or no faster).
// Bits: v1's, at every tile width (op tests "v1_bits": the H200's wgmma sums a k16 step as its mma.sync does, the
// weights are exact and 2^-63 is exact), so the batch-invariance argument of v1 carries over.
#pragma once

#include "wgmma.cuh"  // the wgmma PTX wrappers

namespace hm::cuda::moe {
namespace {

constexpr int kWgBM = 128;             // weight rows a block (two warpgroups of 64)
constexpr int kWgBK = 64;              // columns a k-tile: one 128-byte swizzle atom a token row
constexpr int kWgThreads = 256;
constexpr int kWgRowBytes = 32;        // a weight row's raw bytes a k-tile (two blocks of 16)
constexpr int kWgWBytes = kWgBM * kWgRowBytes;
constexpr int kWgMaxKb = 128;          // scale bytes a row the block's table holds (K <= 4096)

// Where chunk c (block c of the k-tile) of weight row r sits in a stage: rows 4..7 of every 8 swap their two chunks,
// so the 8 rows a decode's LDS reads (g = 0..7, word t of one block) cover all 32 banks. H200 Nsight Compute (session
// 18, 16-token tile): rows padded to 48 bytes instead cost the weights' copies 24 shared-memory wavefronts a warp,
// against 4 for 512 contiguous bytes.
__device__ __forceinline__ int wg_w_chunk(int r, int c) { return c ^ ((r >> 2) & 1); }

// The ring for BN tokens a tile: stages of BN token rows (128 bytes each, 1024-aligned: the swizzle's period) and
// the weights' raw bytes; deeper when narrow.
template <int BN>
struct WgCfg {
  static_assert(BN % 16 == 0 && BN >= 16 && BN <= 128, "WgCfg: BN a multiple of 16 up to 128");
  // 8 stages at 64 left one block an SM (1.8x slower in the lab); 6 keep two. The fitted widths between (48, 80, 96,
  // 112) as deep as about 98 KB allows, so two blocks still share an SM; 32 at 7 leaves room for three.
  static constexpr int STAGES = BN >= 112 ? 4 : BN == 96 ? 5 : BN >= 64 ? 6 : BN == 32 ? 7 : 8;
  // Two k-tiles between barriers (the narrow and middle tiles, bound by the decode's issue more than by the MMAs).
  static constexpr bool PAIRED = BN <= 64;
  static constexpr int X_BYTES = BN * kWgBK * 2;
  static constexpr int STAGE_BYTES = X_BYTES + kWgWBytes;
  static constexpr size_t SMEM = size_t(STAGES) * STAGE_BYTES + 1024;  // + the alignment of the ring
  static_assert(STAGE_BYTES % 1024 == 0, "the swizzled token tiles must start 1024-aligned");
  static_assert(!PAIRED || STAGES >= 5, "the paired loop keeps NST - 3 tiles ahead and waits for two");
};

// The tiles for P pairs over E experts under MoeParams::wgmma_tile `tile`: a fixed width (16, 32, 64, 128) or 0, the
// fitted tiles; by default (tile 0) chosen by the mean tokens an expert, as measured below. A tile's weight decode
// costs the same at any width, so wide tiles win once an expert fills them; narrow ones while it cannot. H200 lab,
// one layer, the best fixed width by mean tokens an expert: 2 and 8 -> 16 (E = 128: 983 vs 1,619 us at 128), 16 ->
// 32 (1,450 vs 1,583 at 16), 32 -> 64 (E = 32: 445 vs 521 at 128), 64 and up -> 128 (557 vs 648 at 64). Fitted
// tiles (session 14, us, fitted / the fixed rule; the third call's kernels, their copies' addresses kept in registers):
// at a mean of 64 they win (E = 128 2048 tokens 1,485 / 1,650, E = 32 512 tokens 392 / 423: the 128-token tile's
// padding half its MMAs), at 32 too (E = 32 256 tokens 303 / 322; the second call's kernels, which spilled, tied),
// at 256 they tie (E = 32 2048 tokens 1,064 / 1,056); below 32 the fixed narrow tiles keep three blocks an SM (E =
// 128 64 tokens 762 / 693, 256 tokens 891 / 806, 512 tokens 973 / 923; E = 32 64 tokens 249 / 233). Session 18
// (scales in shared memory, 32-byte weight rows): at 256 they win (E = 32 2048 tokens 944 / 1,054), so above 24.
inline int prefill_wgmma_bn(int P, int E, int tile = 0) {
  if (tile > 1) return tile;
  if (tile == kMoeWgmmaTileFit) return 0;
  const int mean = (P + E - 1) / E;
  if (tile != kMoeWgmmaTileFixed && mean > 24) return 0;
  return mean <= 12 ? 16 : mean <= 24 ? 32 : mean <= 48 ? 64 : 128;
}

// Shapes the kernel takes: K a multiple of the k-tile and at most 32 kWgMaxKb (the scale table), rows in pairs, I in
// groups of 8 (kperm_pos), offsets in 32 bits, scales 4-byte aligned (the table is copied 4 bytes a thread).
inline bool prefill_wgmma_ok(const WMat& gu, const WMat& dn, int n, int H, int I, int P) {
  const bool scales4 =
      reinterpret_cast<uintptr_t>(gu.scales) % 4 == 0 && reinterpret_cast<uintptr_t>(dn.scales) % 4 == 0;
  return gu.K % kWgBK == 0 && dn.K % kWgBK == 0 && gu.K <= 32 * kWgMaxKb && dn.K <= 32 * kWgMaxKb &&
         gu.rows % 2 == 0 && dn.rows % 2 == 0 && I % 8 == 0 && scales4 && prefill_mma_fits(n, H, P, I);
}


#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The kernel's epilogue. acc[4 j + 2 h + c]: weight row lr0 + 8 h, token column 8 j + 2 t + c of the tile
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

// One block's tile: expert e's sorted rows [m0, m0 + BN) below m_end, against the block's 128 weight rows, through
// the ring at shared address `ring`.
// A k-tile's MMAs stay in flight while the next k-tile is decoded into a second set of A registers
// (wgmma.wait_group 1, the loads one stage less ahead so no stage is overwritten under a pending MMA); both register
// sets are kept alive past the wait that retires them (wg_keep), so the compiler cannot hand an in-flight MMA's A
// registers to the next decode (session 6's attempt at wait_group 1 had no such guard and failed).
template <bool GATE_UP, int BN>
__device__ __forceinline__ void wg_tile(const GemmArgs& a, uint32_t ring_, int e, int m0, int m_end) {
  using C = WgCfg<BN>;
  constexpr int NST = C::STAGES, NACC = BN / 2, XR = (BN * 8 + kWgThreads - 1) / kWgThreads;  // token-row copies a thread
  const int N = a.W.rows, K = a.W.K, kb = K >> 5, KT = K / kWgBK, n0 = blockIdx.x * kWgBM;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wgi = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  // The addresses below are built once and kept (opaque_u32): Nsight Compute on the 16-token tile (session 18) had
  // ptxas rebuilding them, and the ring's base under them, every k-tile (325 instructions a pair of k-tiles).
  const uint32_t ring = opaque_u32(ring_);

  // Token-row copies: 16-byte chunk xc of tile row xr0 + 32 i into the swizzled slot of (row, chunk). Where BN is not
  // a multiple of 32 the last i's rows past BN copy row xr0 + 32 i - 16 again (the same bytes into the same slot), so
  // no copy is predicated. Each copy's source is a pointer advanced a k-tile per issue, its destination a stage offset
  // added to a kept shared address, and its size (16, or 0: zeros past the expert's rows) a kept register: session
  // 18's SASS had ptxas rebuilding the predicates from the thread index at every issue (about 30 instructions).
  const int xc = tid & 7, xr0 = tid >> 3;
  const uint16_t* x_src[XR];
  uint32_t x_sz[XR], x_dst[XR];
#pragma unroll
  for (int i = 0; i < XR; i++) {
    const int tr = xr0 + 32 * i < BN ? xr0 + 32 * i : xr0 + 32 * i - 16, r = m0 + tr;
    const bool ok = r < m_end;
    x_src[i] = a.A + (ok ? size_t(GATE_UP ? a.ws.perm[r] / a.k : r) * size_t(a.lda) + size_t(xc * 8) : 0);
    x_sz[i] = opaque_u32(ok ? 16u : 0u);
    // Row tr's slot (tr keeps xr0's low 3 bits, the swizzle's phase).
    x_dst[i] = opaque_u32(ring + uint32_t(tr * 128 + ((xc ^ (tr & 7)) << 4)));
  }
  // Raw weight copies: chunk wc (16 bytes, 32 columns) of row wr.
  const int wr = tid >> 1, wc = tid & 1;
  const bool w_ok = n0 + wr < N;
  const uint8_t* w_src = static_cast<const uint8_t*>(a.W.data) + ((size_t(e) * N + (w_ok ? n0 + wr : 0)) * kb + wc) * 16;
  const uint32_t w_sz = opaque_u32(w_ok ? 16u : 0u);
  const uint32_t w_dst = opaque_u32(ring + uint32_t(C::X_BYTES + wr * kWgRowBytes + wg_w_chunk(wr, wc) * 16));
  int kt_next = 0;
  uint32_t st_next = 0;  // the stage offset of k-tile kt_next
  auto issue = [&]() {  // the next k-tile into stage kt_next % NST (always one group, empty past the end)
    if (kt_next < KT) {
#pragma unroll
      for (int i = 0; i < XR; i++) {
        cp_async16_sz_s(x_dst[i] + st_next, x_src[i], x_sz[i]);
        x_src[i] += kWgBK;
      }
      cp_async16_sz_s(w_dst + st_next, w_src, w_sz);
      w_src += 32;
    }
    cp_async_commit();
    kt_next++;
    st_next = st_next + C::STAGE_BYTES == uint32_t(NST * C::STAGE_BYTES) ? 0u : st_next + C::STAGE_BYTES;
  };

  // The block's scale table, after the ring: its rows' kb bytes each, one contiguous run of W.scales (rows past N
  // not copied), in the first group issued, so k-tile 0's wait and barrier cover it. Session 18's Nsight Compute
  // (16-token tile): the per-k-tile 16-bit loads from global memory were 40% of the kernel's L2 sectors (8 rows a
  // warp load, 2 of each 32 bytes used) and a fifth of its stalls.
  const uint32_t sc = ring + uint32_t(NST * C::STAGE_BYTES);
  {
    const int rows = N - n0 < kWgBM ? N - n0 : kWgBM;
    const uint8_t* src = a.W.scales + (size_t(e) * N + n0) * kb;
    for (int i = tid; i < rows * kb / 4; i += kWgThreads) cp_async4_s(sc + 4 * i, src + 4 * i);
  }
  // This lane's two weight rows (fragment rows g and g + 8 of its warp's 16) and their places in the table; a row
  // past N reads row 0's scales, which multiply its zero-filled weights (its results are never stored).
  const int lr0 = wgi * 64 + wq * 16 + g, lr1 = lr0 + 8;
  const uint32_t s0 = opaque_u32(sc + uint32_t((n0 + lr0 < N ? lr0 : 0) * kb));
  const uint32_t s1 = opaque_u32(sc + uint32_t((n0 + lr1 < N ? lr1 : 0) * kb));
  // k-tile kt's four scale bytes (row lr0's two blocks, then lr1's), from the table (after k-tile 0's barrier).
  auto scales = [&](int kt, uint32_t (&s)[4]) {
    const uint32_t u0 = lds_u16(s0 + 2 * kt), u1 = lds_u16(s1 + 2 * kt);
    s[0] = u0 & 0xFFu;
    s[1] = u0 >> 8;
    s[2] = u1 & 0xFFu;
    s[3] = u1 >> 8;
  };

  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; i++) acc[i] = 0.f;
  // The A fragments of k-tile kt from its stage (scales s_ of the k-tile), 4 registers a k16 step kk: lane (g, t)
  // takes prepared word t of rows lr0 and lr1 in each of the k-tile's two blocks b, whose slots 2h and 2h + 1 are
  // pair t of the checkpoint's words 2h and 2h + 1 (k 2t, 2t + 1 and 2t + 8, 2t + 9 of k16 step kk = 2b + h).
  // Block b of rows lr0 and lr1 is chunk wg_w_chunk(lr, b), the same for both (they differ in bit 3): word t of it
  // at wd[b] in stage 0, row lr1's 8 rows further.
  const uint32_t wd[2] = {
      opaque_u32(ring + uint32_t(C::X_BYTES + lr0 * kWgRowBytes + wg_w_chunk(lr0, 0) * 16 + t * 4)),
      opaque_u32(ring + uint32_t(C::X_BYTES + lr0 * kWgRowBytes + wg_w_chunk(lr0, 1) * 16 + t * 4))};
  auto decode_tile = [&](int kt, const uint32_t* s_, uint32_t (&af)[4][4]) {
    const uint32_t st = uint32_t((kt % NST) * C::STAGE_BYTES);
#pragma unroll
    for (int b = 0; b < 2; b++) {
      const uint32_t v0 = lds_u32(wd[b] + st);
      const uint32_t v1 = lds_u32(wd[b] + st + 8 * kWgRowBytes);
      const uint32_t f0 = mx_factor_fast(s_[b]), f1 = mx_factor_fast(s_[2 + b]);
#pragma unroll
      for (int h = 0; h < 2; h++) {
        af[2 * b + h][0] = decode_slot(v0, 2 * h, f0);      // (row g, k 2t, 2t+1)
        af[2 * b + h][1] = decode_slot(v1, 2 * h, f1);      // (row g+8, k 2t, 2t+1)
        af[2 * b + h][2] = decode_slot(v0, 2 * h + 1, f0);  // (row g, k 2t+8, 2t+9)
        af[2 * b + h][3] = decode_slot(v1, 2 * h + 1, f1);  // (row g+8, k 2t+8, 2t+9)
      }
    }
  };
  auto mma_tile = [&](int kt, const uint32_t (&af)[4][4]) {
    const uint32_t x_lo = wg_desc_lo(ring + uint32_t((kt % NST) * C::STAGE_BYTES));
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < kWgBK / 16; kk++) wg_mma_k16(acc, af[kk], wg_desc_from_lo(x_lo + uint32_t(2 * kk)));
    wg_commit();
  };
  uint32_t afa[4][4], afb[4][4];
  int kt = 0;
  if constexpr (C::PAIRED) {
    // Two k-tiles between barriers: half the barriers, waits and fences a weight. The loads run NST - 3 tiles
    // ahead: tiles kt + NST - 3 and kt + NST - 2 go into the stages of kt - 3 and kt - 2, retired (wait_group 1
    // after kt - 1 was committed) before the barrier.
    for (int s_ = 0; s_ < NST - 3; s_++) issue();
    for (; kt + 1 < KT; kt += 2) {
      cp_async_wait<NST - 5>();  // tiles kt and kt + 1 have landed
      fence_cp_async_for_wgmma();
      __syncthreads();
      issue();
      issue();
      uint32_t sa[4], sb[4];
      scales(kt, sa);
      scales(kt + 1, sb);
      decode_tile(kt, sa, afa);
      mma_tile(kt, afa);
      wg_wait<1>();  // tile kt - 1's MMAs retired: afb is free
      wg_keep(afb);
      decode_tile(kt + 1, sb, afb);
      mma_tile(kt + 1, afb);
      wg_wait<1>();  // tile kt's MMAs retired: afa is free
      wg_keep(afa);
    }
    if (kt < KT) {
      cp_async_wait<0>();
      fence_cp_async_for_wgmma();
      __syncthreads();
      uint32_t sa[4];
      scales(kt, sa);
      decode_tile(kt, sa, afa);
      mma_tile(kt, afa);
    }
  } else {
    // The loads run NST - 2 tiles ahead: tile kt + NST - 2 goes into the stage of kt - 2, whose MMAs every
    // warpgroup retired (wait_group 1 in iteration kt - 1) before this iteration's barrier.
    for (int s_ = 0; s_ < NST - 2; s_++) issue();
    auto step = [&](int kt_, uint32_t (&cur)[4][4], uint32_t (&prev)[4][4]) {
      cp_async_wait<NST - 3>();
      fence_cp_async_for_wgmma();
      __syncthreads();
      issue();  // tile kt_ + NST - 2
      uint32_t sc_[4];
      scales(kt_, sc_);
      decode_tile(kt_, sc_, cur);
      mma_tile(kt_, cur);
      wg_wait<1>();  // tile kt_ - 1's MMAs retired: its registers (prev) and its stage are free
      wg_keep(prev);
    };
    for (; kt + 1 < KT; kt += 2) {
      step(kt, afa, afb);
      step(kt + 1, afb, afa);
    }
    if (kt < KT) step(kt, afa, afb);
  }
  wg_wait<0>();
  wg_keep(afa);
  wg_keep(afb);
  wg_fence_acc(acc);

  wg_epilogue<GATE_UP, BN>(a, acc, e, m0, m_end, n0, lr0, lr1, g, t);
}

// The ring starts at the first 1024-aligned shared address (the tile list's static words come first).
__device__ __forceinline__ uint32_t wg_ring(unsigned char* smem) {
  return (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) + 1023u) & ~1023u;
}
#endif

// The fitted tiles (BN 0, prefill_tile<128, true>): each expert's rows in as few tiles as hold them, of the width
// that holds an equal share (a multiple of 16 up to 128), so the MMAs of a tile run on no more than 15 padding tokens
// where a fixed width pads up to BN - 1 (at 64 tokens an expert, the fixed 128-token tile multiplies twice the
// tokens there are). The width is the tile's, chosen at run time: every width's loop is in that kernel, one per
// block runs. Shared memory and registers are the widest's (two blocks an SM). Bits: a tile's width is the MMA's N,
// which leaves each output element's k sums as they are (the op tests' v1_bits cover these tiles too).
constexpr size_t kWgFitSmem = WgCfg<80>::SMEM > WgCfg<128>::SMEM ? WgCfg<80>::SMEM : WgCfg<128>::SMEM;
static_assert(WgCfg<16>::SMEM <= kWgFitSmem && WgCfg<32>::SMEM <= kWgFitSmem && WgCfg<48>::SMEM <= kWgFitSmem &&
                  WgCfg<64>::SMEM <= kWgFitSmem && WgCfg<96>::SMEM <= kWgFitSmem && WgCfg<112>::SMEM <= kWgFitSmem,
              "kWgFitSmem: the deepest ring of any width");
template <int BN>
constexpr size_t wg_smem_bytes() {
  if constexpr (BN == 0) return kWgFitSmem;
  else return WgCfg<BN>::SMEM;
}

// Grid: (ceil(N / kWgBM), prefill_max_tiles(P, E, BN or 128)); blocks past the last tile exit. Dynamic shared memory
// wg_smem_bytes<BN>(). BN: the tile width, or 0 for the fitted tiles.
template <bool GATE_UP, int BN>
__global__ void __launch_bounds__(kWgThreads, BN != 0 && BN <= 32 ? 3 : 2) moe_prefill_wgmma(GemmArgs a, int E) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char wg_smem[];
  const uint32_t ring = wg_ring(wg_smem);
  pdl_wait();
  pdl_trigger();
  int e, m0, m_end, w;
  if (!prefill_tile<BN == 0 ? 128 : BN, BN == 0>(a.ws.offsets, E, int(blockIdx.y), e, m0, m_end, &w)) return;
  if constexpr (BN != 0) {
    wg_tile<GATE_UP, BN>(a, ring, e, m0, m_end);
  } else {
    switch (w) {
      case 16: return wg_tile<GATE_UP, 16>(a, ring, e, m0, m_end);
      case 32: return wg_tile<GATE_UP, 32>(a, ring, e, m0, m_end);
      case 48: return wg_tile<GATE_UP, 48>(a, ring, e, m0, m_end);
      case 64: return wg_tile<GATE_UP, 64>(a, ring, e, m0, m_end);
      case 80: return wg_tile<GATE_UP, 80>(a, ring, e, m0, m_end);
      case 96: return wg_tile<GATE_UP, 96>(a, ring, e, m0, m_end);
      case 112: return wg_tile<GATE_UP, 112>(a, ring, e, m0, m_end);
      default: return wg_tile<GATE_UP, 128>(a, ring, e, m0, m_end);
    }
  }
#endif
}

// Grid (ceil(N / kWgBM), T tile slots). BN 0: the fitted tiles.
template <bool GATE_UP, int BN>
void launch_prefill_wgmma_gemm(const GemmArgs& g, int E, int T, cudaStream_t stream, bool pdl) {
  constexpr auto kernel = moe_prefill_wgmma<GATE_UP, BN>;
  // The ring, then the block's scale table (kWgBM rows of K / 32 bytes; the attribute allows the largest).
  const size_t smem = wg_smem_bytes<BN>() + size_t(kWgBM) * (g.W.K / 32);
  allow_dynamic_smem<kernel>(wg_smem_bytes<BN>() + size_t(kWgBM) * kWgMaxKb);
  launch(kernel, dim3(ceil_div(g.W.rows, kWgBM), T), dim3(kWgThreads), smem, stream, pdl, g, E);
}

template <int BN>
void launch_prefill_wgmma_both(GemmArgs g, const WMat& gu, const WMat& dn, const MoeParams& p, const Workspace& ws,
                               int P, cudaStream_t stream) {
  const int T = prefill_max_tiles(P, p.E, BN == 0 ? 128 : BN);
  g.W = gu;
  g.A = ws.xp;
  g.lda = p.H;
  launch_prefill_wgmma_gemm<true, BN>(g, p.E, T, stream, p.pdl);
  g.W = dn;
  g.A = ws.act;
  g.lda = p.I;
  launch_prefill_wgmma_gemm<false, BN>(g, p.E, T, stream, p.pdl);
}

// x into the k-permutation (ws.xp), gate_up, down (after route_sort, before the combine), in the tiles
// prefill_wgmma_bn picks unless `tile` (MoeParams::wgmma_tile) names them. A template on the weights' format (MXFP4
// only) so that the bf16 path's translation unit, whose forward() never calls it, does not compile its kernels.
template <WFmt F>
void launch_prefill_wgmma_pair(const MoeParams& p, const GemmArgs& g, const WMat& gu, const WMat& dn,
                               const Workspace& ws, int P, cudaStream_t stream, int tile = 0) {
  launch(moe_permute_x, dim3(p.n), dim3(256), 0, stream, p.pdl, p.x, p.ldx, p.H, ws.xp);
  switch (prefill_wgmma_bn(P, p.E, tile)) {
    case 16: return launch_prefill_wgmma_both<16>(g, gu, dn, p, ws, P, stream);
    case 32: return launch_prefill_wgmma_both<32>(g, gu, dn, p, ws, P, stream);
    case 64: return launch_prefill_wgmma_both<64>(g, gu, dn, p, ws, P, stream);
    case 128: return launch_prefill_wgmma_both<128>(g, gu, dn, p, ws, P, stream);
    default: return launch_prefill_wgmma_both<0>(g, gu, dn, p, ws, P, stream);
  }
}

}  // namespace
}  // namespace hm::cuda::moe
