// Attention over the paged bf16 KV cache, with the per-head sinks in the softmax denominator, causal, optional
// sliding window, GQA (query head h reads KV head h / (nq / nkv)). Head dim 16, 32 or 64 (gpt-oss: 64).
//   attention_decode:  one query token per entry of `tokens` (decode, or any token): flash-decoding, the keys
//                      split into chunks of keys_per_split processed by separate blocks; the last block of a
//                      token's KV head to finish merges the partial softmaxes with the sink (an arrival counter,
//                      merge in split order), no second launch. Stays parallel at 100k+ tokens of context.
//   attention_prefill: tiles of up to 16 consecutive query tokens of one sequence; K/V tiles staged in shared
//                      memory and reused by all the tile's query rows (flash-style online softmax, no T x T matrix
//                      anywhere): on tensor cores for head dim 64 (attention_prefill_mma.cu), else in fp32.
// The cache must already hold the keys of every visible position (rope_kv_write runs first), except each decode
// token's own key when attention_decode does the RoPE + KV write itself (AttentionDecodeParams::inv_freq).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace hm::cuda {

struct AttentionCommon {
  const float* q = nullptr;  // fp32 [T, ldq]: query heads (nq * D) at the start of each row, already rotated
  int ldq = 0;
  const uint16_t* k_cache = nullptr;  // bf16 [slots, nkv, D] of this layer
  const uint16_t* v_cache = nullptr;
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int max_blocks_per_seq = 0;
  int block_size = 0;
  const int32_t* tok_seq = nullptr;  // [T] sequence of each token
  const int32_t* pos = nullptr;      // [T] absolute position of each token
  const float* sinks = nullptr;      // fp32 [nq]
  uint16_t* out = nullptr;           // bf16 [T, nq * D]
  int nq = 0, nkv = 0, D = 0;
  int window = 0;  // > 0: keys j with pos - window < j <= pos
  float scale = 0.f;
  bool pdl = false;
};

// Workspace floats needed by attention_decode for `num_tokens` tokens and `max_splits` splits.
size_t attention_decode_workspace_floats(int num_tokens, int nq, int D, int max_splits);
// Keys per split for a context of up to max_keys keys when at most max_splits splits fit (multiple of 64).
int attention_keys_per_split(int max_keys, int max_splits);
// Keys per split that give num_tokens * nkv * splits blocks enough to fill num_sms SMs at blocks_per_sm resident
// each, never more than max_splits splits nor one per 64 keys.
int attention_decode_keys_per_split(int max_keys, int num_tokens, int nkv, int num_sms, int max_splits,
                                    int blocks_per_sm);
// The decode planner: per batch and layer kind (max_keys), its kernel (few tokens: attn_decode_mma for head dims 32
// and 64, as one cluster a token (variant 3) at batch 1 with 2..8 splits when the device has clusters (sm_90+),
// else attn_decode_merged with head slices, their splits filling the SMs; larger batches: attn_decode_mma too up
// to 64 tokens, and above where a sequence reads more than 128 keys, else the split + combine pair) and its keys
// per split.
struct AttentionDecodePlan {
  int variant = 0, head_slices = 1, keys_per_split = 64, splits = 1;
};
AttentionDecodePlan attention_decode_plan(int max_keys, int num_tokens, int nq, int nkv, int D, int num_sms,
                                          int max_splits, bool clusters);

struct AttentionDecodeParams {
  AttentionCommon c;
  const int32_t* tokens = nullptr;  // [num_tokens] token indices (rows of q / out) to process
  int num_tokens = 0;
  int keys_per_split = 64;   // multiple of 64 (attention_keys_per_split)
  int max_splits = 1;        // grid size in splits: ceil(max visible keys / keys_per_split)
  float* workspace = nullptr;  // attention_decode_workspace_floats(num_tokens, nq, D, max_splits)
  // [num_tokens * nkv] arrival counters: zero before the first launch; every launch leaves them zero.
  uint32_t* counters = nullptr;
  // 0: attn_decode_merged (one launch); 1: the split kernel, then a combine launch (no counters), faster for
  // large batches; 2: attn_decode_mma (one launch like 0, scores and p * V on tensor cores; head dims 32 and 64);
  // 3: attn_decode_mma with a token's splits (max_splits <= 8) one thread block cluster, merged in distributed
  // shared memory (no counters; sm_90+); 4 and 5: 2 and 3 in their ring form (head dim 64: K/V chunks through a
  // cp.async ring in shared memory; the same bits), which the planner takes at head dim 64 unless
  // HARMONIUM_ATTN_DECODE_RING=0. attention_decode_plan picks.
  int variant = 0;
  // variant 0: the G heads of a KV head spread over this many groups of 4 warps (1, 2, 4; clamped to G): fewer
  // registers and a shorter serial chain per warp, K/V rows read once per slice (L1).
  int head_slices = 1;
  // RoPE + KV-cache write fused in (decode steps whose every token is the only new token of its sequence; one
  // launch less per layer than rope_kv_write): c.q then holds the unrotated qkv rows (q heads, k heads, v heads;
  // row stride ldq), the query heads are rotated as they load, and the block whose split holds the token's own
  // position rotates its k head and writes k and v as bf16 to cache slot slot[t] (negative: not written) with the
  // same math as rope_kv_write. Null inv_freq: rope_kv_write already ran.
  const float* inv_freq = nullptr;  // [D/2] device
  float attn_factor = 1.f;
  const int32_t* slot = nullptr;  // [T]
};
void attention_decode(const AttentionDecodeParams& p, cudaStream_t stream);

struct AttentionPrefillParams {
  AttentionCommon c;
  const int32_t* tiles = nullptr;  // [num_tiles, 2]: first token index, token count (1..16), one sequence each
  int num_tiles = 0;
  // kPrefillAuto (default), head dim 64: q as bf16 hi + lo (fp32-grade scores), P in bf16, on wgmma
  // (attention_prefill_wgmma.cu) on sm_90, else on mma.sync (attention_prefill_mma.cu); other head dims: the fp32
  // tile kernel. H200, session 10, full layers at 8k-32k: 246-251 TFLOP/s on wgmma against 128-133 for the mma.sync
  // kernel with q and P hi + lo (the default before); the 20b's pp32768 23,052 -> 30,899 tok/s. Precision: P in
  // bf16 moves the output by the bf16 rounding of the weights only (op tests nmse 4.1e-6 .. 6.0e-6); q stays
  // hi + lo because with q and P both in bf16 a routing near-tie of the oracle fixture hd64-realyarn-3shards
  // flipped (token 96: its KL 0.26; prefill KL 2.75e-3 against the bound 1.89e-3); with P alone in bf16 that
  // fixture's prefill KL is 1.77e-4 (q and P hi + lo: 5.41e-4, a near-tie at token 85 going the other way).
  // The others, for A/B runs and the bench: kPrefillTile (fp32, the comparison kernel), kPrefillMma (mma.sync, q
  // and P hi + lo), kPrefillMmaQlo (mma.sync, q hi + lo, P bf16: the default off sm_90), kPrefillWgmma (wgmma, q and
  // P hi + lo), kPrefillWgmmaQlo (wgmma, q hi + lo, P bf16: the default on sm_90), and at G = 8 only (else as
  // kPrefillMma) q and P in plain bf16 on mma.sync: kPrefillMmaBf16 (2 blocks per SM), kPrefillMma1b (registers
  // uncapped, one block per SM), kPrefillMma2 (2 heads per warp). The wgmma variants fall back to the mma.sync ones
  // where wgmma is absent.
  int variant = 0;
};
constexpr int kPrefillTileTokens = 16;
constexpr int kPrefillAuto = 0, kPrefillTile = 1, kPrefillMma1b = 2, kPrefillMma2 = 3, kPrefillMmaBf16 = 4,
              kPrefillMmaQlo = 5, kPrefillWgmma = 6, kPrefillWgmmaQlo = 7, kPrefillMma = 8;
void attention_prefill(const AttentionPrefillParams& p, cudaStream_t stream);
// The variant HARMONIUM_ATTN_PREFILL names (read once): "tile" -> kPrefillTile, "mma" -> kPrefillMma, "qlo" ->
// kPrefillMmaQlo, "bf16" -> kPrefillMmaBf16, "wgmma" -> kPrefillWgmma, "wgmma_qlo" -> kPrefillWgmmaQlo, else
// kPrefillAuto.
int attention_prefill_env_variant();
// attention_prefill's tensor-core kernel (kernels/attention_prefill_mma.cu): head dim 64 only; heads_per_warp
// (the rows of one warp: 16 tokens x that many query heads), min_blocks (blocks per SM its registers are capped
// for), lo (q as bf16 hi + lo) and lo_p (P too; false only in the default shape): 1, 2 (1 for G = 16), G != 8;
// for G = 8 also 1, 1, false / 2, 1, false / 1, 1, true.
void attention_prefill_mma(const AttentionPrefillParams& p, int heads_per_warp, int min_blocks, bool lo,
                           cudaStream_t stream, bool lo_p = true);
// The wgmma kernel (kernels/attention_prefill_wgmma.cu): whether it takes these shapes on this device (head dim 64,
// G in 1, 2, 4, 8, 16, an sm_90 device), and the launch (q hi + lo; P hi + lo when lo_p).
bool attention_prefill_wgmma_ok(const AttentionCommon& c);
void attention_prefill_wgmma(const AttentionPrefillParams& p, bool lo_p, cudaStream_t stream);

}  // namespace hm::cuda
