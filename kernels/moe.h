// The mixture-of-experts block of gpt-oss on the GPU: routing (router logits -> top-k -> softmax over the k) and
// the experts (gate_up with bias -> clamped SwiGLU -> down with bias -> weighted combine of the k experts).
//
// Two expert-weight formats, one launcher each:
//   moe_mxfp4_forward: the checkpoint's MXFP4 bytes in the layout mxfp4_prepare gives them at load (the same
//                      bytes, each block's nibbles reordered); E2M1 values and E8M0 scales are decoded in
//                      registers inside the matmul (no bf16 copy of the expert weights ever exists).
//   moe_bf16_forward:  the fallback, weights decoded to bf16 once at load (mxfp4_to_bf16), any sm_80+ GPU.
// Each has two paths, chosen by the token count (or forced, for tests):
//   decode  (n <= kMoeDecodeMaxTokens): two kernels (gate_up+SwiGLU, down+combine); only the selected experts'
//           weights are read, each once, feeding mma.sync with the tokens as the 8-wide N dimension. Fixed grid,
//           no host sync, no allocation: capturable in a CUDA graph (checked by bench/moe_playground).
//           MXFP4 on sm_90+ at one token (moe_decode_split.cuh, kAuto's choice): persistent grids of 8-warp blocks,
//           a 16-row tile at a time, every warp's loads in flight before its first multiply, the routing computed
//           by every warp (warp_topk on redux.sync); down split by expert, each tile's k partials summed by its
//           last block in slot order; gate_up launched without PDL (launched early it lost its gain to the
//           blocks' placement). H200: 34.1 us a layer alone (bulk 40.9), 55.8 vs 60.0 us in the engine-like lab
//           chain, tg128 560 / 391 tok/s against 515 / 363 (NOTES.md, session 5).
//           MXFP4 on sm_90+, 2-8 tokens (moe_decode_bulk.cuh): a persistent grid whose blocks pull runs of whole 16-row tiles of an
//           expert (one contiguous 23 KB range of blocks + 1.4 KB of scales at H = 2880) with 1-D bulk copies into
//           a ring of shared-memory stages completing on mbarriers, consumer warps splitting each tile's K. With
//           `logits` the kernels also do the routing (router_topk_softmax's result, computed by every block), so
//           the router's top-k launch disappears. PDL: gate_up sets up its barriers before pdl_wait(); down
//           routes and starts its weight stream before pdl_wait(). Measured on the H200 (2026-12-01, one tile per
//           item, before the conflict-free rows): 37.0 us per layer at one token, graph + PDL (1.43 TB/s), the
//           same as the register kernels; 205 vs 232 us at 8 tokens, E = 128. Issue-bound, not byte-bound
//           (about 4.6 thread-instructions per weight; bench/moe_playground/NOTES.md, runs 6 and 7). An fp8
//           inner loop (run 8: weights as exact e4m3, activations split into hi + lo e4m3, the block scale on the
//           fp32 result) passed the op tests but measured slower (46.0 vs 41.3 us a layer at one token) and was
//           removed; Nsight Compute had both latency-bound.
//           Otherwise (bf16, older GPUs, MoePath::kDecodeRegs): the register-streaming kernels, 16-byte loads
//           straight into registers. Measured on the H200 at one token, E = 128: 36.7 us per layer (graph + PDL,
//           1.44 TB/s): each warp's chain of dependent loads, not the bytes, limits it (NOTES.md).
//   grouped (MXFP4 on sm_90+, n > kMoeDecodeMaxTokens and at most kMoeGroupedMaxPairsPerExpert tokens an expert
//           on average; moe_grouped.cuh): the prefill path's sort by expert, then the decode bulk kernels' weight
//           stream generalised: persistent grids over (expert, 16-row tiles) items, each expert's weights read
//           once into a shared-memory ring, a weight fragment decoded once and multiplied by all of the expert's
//           tokens (N-tiles of 8) with bf16 mma.sync (an fp8 loop was measured slower and removed); gate_up +
//           SwiGLU writes the prefill path's act rows, down + bias its out rows, and the prefill path's combine
//           sums them. Deterministic, fixed grid, capturable. Measured on the H200 (one layer, graph + PDL): 64
//           tokens E = 32 361 us (prefill GEMM 526), 256 tokens E = 128 1399 us (1968).
//   prefill (many tokens): (token, expert) pairs counted, scanned and scattered by expert on the GPU (a stable
//           scatter: the same row order every run), then grouped GEMMs on tensor cores (mma.sync bf16, fp32
//           accumulate, MXFP4 decoded into shared memory as the exact bf16 weights, so both formats give the same
//           bits), SwiGLU fused into the gate_up epilogue, then a deterministic combine of each token's k rows.
//           MXFP4 on sm_90 (moe_prefill_wgmma.cuh): wgmma with the decoded weights as its register operand and
//           16-128 of an expert's tokens as N (1,365 us for a 20b layer at 2048 tokens, 1.6x v2), v1's bits; on
//           other devices (moe_prefill_mma.cuh, v2): 128 x 128 tiles fed by a cp.async ring of activations and raw
//           MXFP4 bytes, each k-tile's weights decoded once in shared memory; the same bits as v1 (kept for bf16
//           and as MoePath::kPrefillV1). Beside wgmma kAuto takes no grouped kernels (kMoeGroupedMaxPairsBesideWgmma).
//           A token's rows do not depend on the other tokens of the call (docs/reproducibility.md).
//
// Activation dtypes (the same as kernels/dense.h): x is bf16 [n, H] (the RMSNorm output), y is fp32 [n, H], the
// residual stream, written (y = moe(x)) or accumulated (y += moe(x)). The SwiGLU output between the two matmuls
// is kept in bf16 (pre-multiplied by the routing weight) in the workspace. Routing weights are fp32.
//
// Layouts are row-major with the checkpoint's shapes (E experts, H hidden, I intermediate, k experts per token):
//   gate_up: blocks [E, 2I, H/32, 16] u8, scales [E, 2I, H/32] u8 (E8M0), bias [E, 2I] bf16, rows interleaved
//            (even row 2j = gate_j, odd row 2j+1 = up_j);  bf16 fallback weight [E, 2I, H].
//   down:    blocks [E, H, I/32, 16] u8, scales [E, H, I/32] u8, bias [E, H] bf16;  bf16 fallback weight [E, H, I].
// Requirements: H % 32 == 0, I % 32 == 0, 1 <= k <= 8, k <= E <= 256, all pointers 16-byte aligned, expert ids
// in [0, E) and distinct within a token (what the router produces; others are clamped, never a fault, but give
// meaningless output). MXFP4 decode is exact for E8M0 scale bytes 65..191 (block scales 2^-62 .. 2^64, far beyond
// any trained weight); bytes outside are clamped to that range.
//
// Launchers check shapes (throwing std::invalid_argument), never allocate, never synchronise; CUDA launch errors
// throw std::runtime_error (kernels/common.cuh). The caller owns every buffer, including the workspace, sized
// once by moe_workspace_bytes for the largest token count it will pass.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace hm::cuda {

// ---- routing ----

// ids[n, k], weights[n, k] = top-k of logits[n, E] (ties: lower expert id first, ids in descending-logit order),
// softmax over the k selected logits. One warp per token.
struct RouterTopkParams {
  const float* logits = nullptr;  // fp32 [n, E], row stride ld_logits (elements)
  int ld_logits = 0;
  int n = 0, E = 0, k = 0;
  int32_t* ids = nullptr;   // [n, k] contiguous
  float* weights = nullptr; // [n, k] contiguous
  bool pdl = false;
};
void router_topk_softmax(const RouterTopkParams& p, cudaStream_t stream);

// ---- experts ----

// Token counts up to this take the decode path (the 8-wide N of one mma.sync tile).
constexpr int kMoeDecodeMaxTokens = 8;

// kAuto at one token takes the split kernels (MXFP4 on sm_90+, moe_decode_split.cuh: 8 warps a tile, down split
// by expert and summed by a tile's last block); kDecodeSplit forces them where they apply (n = 1), else kDecode;
// kDecode takes the bulk-copy kernels where they apply (MXFP4 on sm_90+, see the top), else the register-streaming
// ones; kDecodeRegs forces the register-streaming ones (the comparison variant of tests and the lab). kGrouped
// takes the grouped kernels where they apply (MXFP4 on sm_90+; any n), else the prefill path; kGroupedBf16 the
// same in round 1's configuration V0 (the comparison variant; named when the default was to be an fp8 loop, since
// removed: moe_impl.cuh). kPrefill takes the MXFP4 GEMM: moe_prefill_wgmma.cuh's on an sm_90 device where
// its shapes allow, else moe_prefill_mma.cuh's (kAuto's GEMM the same); MoeParams::wgmma = false keeps the wgmma
// ones out (what other devices run: A/B and tests), kPrefillWgmma names them. kPrefillV1 forces the v1 GEMM. All
// give the same bits; the bf16 weights always take v1.
// MoeParams::wgmma_tile's names beside a width: each expert's tiles fitted to its tokens, or one width for the step
// by the mean tokens an expert (the rule before fitted tiles).
constexpr int kMoeWgmmaTileFit = -1, kMoeWgmmaTileFixed = 1;

enum class MoePath : int {
  kAuto = 0, kDecode = 1, kPrefill = 2, kDecodeRegs = 3, kGrouped = 4, kGroupedBf16 = 5, kPrefillV1 = 6,
  kDecodeSplit = 7, kPrefillWgmma = 8
};

// kAuto takes the grouped path above the decode path while the tokens per expert, n k / E, stay at most this:
// against the older GEMMs 8 (E = 32: n <= 64; E = 128: n <= 256), against the wgmma GEMMs never since they keep the
// next k-tile's decode under the MMAs (session 8). H200, the engine's batched decode at 1k context (tok/s, grouped /
// pipelined wgmma): 1 pair an expert 1,568 / 1,607 (120b, S = 32); 2 pairs 2,341 / 2,316 (20b, S = 16) and
// 2,235 / 2,435 (120b, S = 64); 4 pairs 3,636 / 3,934 (20b, S = 32) and 3,136 / 3,724 (120b, S = 128). The older
// GEMMs lost at 8 (lab: grouped V1 361 vs 526 us at 64 tokens E = 32, 1399 vs 1968 at 256 E = 128).
constexpr int kMoeGroupedMaxPairsPerExpert = 8, kMoeGroupedMaxPairsBesideWgmma = 0;
constexpr bool moe_grouped_auto(int n, int k, int E, bool wgmma = false) {
  return n > kMoeDecodeMaxTokens &&
         n * k <= (wgmma ? kMoeGroupedMaxPairsBesideWgmma : kMoeGroupedMaxPairsPerExpert) * E;
}

struct MoeMxfp4Weights {
  const uint8_t* gu_blocks = nullptr;  // [E, 2I, H/32, 16]
  const uint8_t* gu_scales = nullptr;  // [E, 2I, H/32]
  const uint16_t* gu_bias = nullptr;   // bf16 [E, 2I]
  const uint8_t* dn_blocks = nullptr;  // [E, H, I/32, 16]
  const uint8_t* dn_scales = nullptr;  // [E, H, I/32]
  const uint16_t* dn_bias = nullptr;   // bf16 [E, H]
};

struct MoeBf16Weights {
  const uint16_t* gu_weight = nullptr;  // bf16 [E, 2I, H]
  const uint16_t* gu_bias = nullptr;    // bf16 [E, 2I]
  const uint16_t* dn_weight = nullptr;  // bf16 [E, H, I]
  const uint16_t* dn_bias = nullptr;    // bf16 [E, H]
};

// What both formats share: shapes, activations, routing, output, scratch.
struct MoeParams {
  int n = 0;  // tokens
  int H = 0, I = 0, E = 0, k = 0;
  float swiglu_limit = 7.0f;
  const uint16_t* x = nullptr;  // bf16 [n, H], row stride ldx (elements)
  int ldx = 0;
  const int32_t* ids = nullptr;    // [n, k] expert ids (router output); unused when `logits` is set
  const float* weights = nullptr;  // [n, k] routing weights; unused when `logits` is set
  // Fused routing: the router logits [n, E] (row stride ld_logits) instead of ids/weights. The decode kernels
  // compute router_topk_softmax's result themselves (every block the same); the prefill path runs
  // router_topk_softmax first. ids_out/weights_out [n, k] receive the routing (required for prefill, optional
  // for decode).
  const float* logits = nullptr;
  int ld_logits = 0;
  int32_t* ids_out = nullptr;
  float* weights_out = nullptr;
  float* y = nullptr;              // fp32 [n, H], row stride ldy
  int ldy = 0;
  bool accumulate = false;         // y += moe(x) (residual add fused) instead of y = moe(x)
  void* workspace = nullptr;       // moe_workspace_bytes(n_max, ...) bytes, 256-byte aligned; no init needed
  size_t workspace_bytes = 0;
  MoePath path = MoePath::kAuto;
  bool wgmma = true;               // sm_90: kPrefill / kAuto's GEMM on the wgmma kernels where they apply (see MoePath)
  int wgmma_tile = 0;              // their tokens a tile: 16, 32, 64, 128, kMoeWgmmaTileFit or kMoeWgmmaTileFixed;
                                   // 0 fitted or fixed by the mean tokens an expert
  bool pdl = false;
};

// Workspace for up to n_max tokens (either path; the same for both formats).
size_t moe_workspace_bytes(int n_max, int H, int I, int E, int k);

void moe_mxfp4_forward(const MoeParams& p, const MoeMxfp4Weights& w, cudaStream_t stream);
void moe_bf16_forward(const MoeParams& p, const MoeBf16Weights& w, cudaStream_t stream);

// Loader helper for the fallback: out[r, c] = bf16(FP4[nibble] * 2^(scale - 127)) (exact: every MXFP4 value is a
// bf16), rows x cols values from blocks [rows, cols/32, 16] and scales [rows, cols/32]. Decode all E experts of a
// tensor at once with rows = E * out_rows.
struct Mxfp4ToBf16Params {
  const uint8_t* blocks = nullptr;
  const uint8_t* scales = nullptr;
  uint16_t* out = nullptr;  // bf16 [rows, cols]
  int64_t rows = 0;
  int cols = 0;             // % 32 == 0
};
void mxfp4_to_bf16(const Mxfp4ToBf16Params& p, cudaStream_t stream);

// The load-time layout moe_mxfp4_forward reads (kernels/mxfp4_prepare.cu): nblocks 16-byte blocks rewritten in
// place (a lane's pairs where one mask places them) and their scales clamped to the kernels' range. Run once on
// every expert tensor the MXFP4 path gets, after its bytes are on the GPU (exactly once: a second pass reorders the
// nibbles again); mxfp4_to_bf16 reads the bytes as stored.
struct Mxfp4PrepareParams {
  uint8_t* blocks = nullptr;  // [nblocks, 16]
  uint8_t* scales = nullptr;  // [nblocks]
  int64_t nblocks = 0;
};
void mxfp4_prepare(const Mxfp4PrepareParams& p, cudaStream_t stream);

}  // namespace hm::cuda
