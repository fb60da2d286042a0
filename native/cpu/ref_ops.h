// The reference ops: the exact gpt-oss math in fp32, one function per op family, written for clarity.
// The CPU backend is built from these, and every CUDA kernel is tested against its twin here
// (see test/ops: the op-test table). Layouts are row-major; weights keep the checkpoint's formats
// (bf16 as uint16_t bit patterns, MXFP4 as the raw _blocks/_scales bytes) and are widened on the fly.
#pragma once
#include <cstdint>

#include "../model_config.h"

namespace hm::ref {

float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float f);  // round to nearest even, NaN kept
// E2M1 value of a 4-bit code (0..15) and the E8M0 scale 2^(s-127).
float fp4_value(uint8_t nibble);
float e8m0_scale(uint8_t s);
// Decodes one MXFP4 row of `cols` values (cols % 32 == 0): blocks [cols/32, 16] bytes, scales [cols/32].
void mxfp4_decode_row(const uint8_t* blocks, const uint8_t* scales, int cols, float* out);

// out[i, :] = table[ids[i], :]   (table bf16 [V, H])
void embedding(const uint16_t* table, const int32_t* ids, int n, int H, float* out);
// out = w * x * rsqrt(mean(x^2) + eps), per row of H (w bf16 [H]).
void rmsnorm(const float* x, const uint16_t* w, int n, int H, float eps, float* out);
// y[n, out] = x[n, in] W^T + b   (W bf16 [out, in], b bf16 [out] or null). Parallel over rows of W.
void linear(const float* x, const uint16_t* W, const uint16_t* b, int n, int in, int out, float* y);

// YaRN (or plain) RoPE tables: inv_freq[D/2] and the attention factor that multiplies cos and sin.
void rope_inv_freq(const RopeConfig& rope, int head_dim, float* inv_freq, float* attn_factor);
// In place on x [n, heads, D], half-split (NeoX) rotation at positions pos[n].
void rope(float* x, const int32_t* pos, int n, int heads, int D, const float* inv_freq, float attn_factor);

// Paged KV cache of one layer: [num_blocks, block_size, nkv, D] fp32 for K and for V.
// Writes token i's k/v [nkv, D] to the slot of position pos[i] through block_table.
void kv_write(float* k_cache, float* v_cache, const float* k, const float* v, const int32_t* pos,
              const int32_t* block_table, int block_size, int n, int nkv, int D);
// Attention of n query tokens of one sequence (q [n, nq, D], already rotated) over that sequence's cache,
// causal up to each token's position, window > 0: only keys j with pos - window < j <= pos.
// Sinks (fp32 [nq]) join each head's softmax denominator. out [n, nq * D].
void attention(const float* q, const float* k_cache, const float* v_cache, const int32_t* block_table,
               int block_size, const int32_t* pos, int n, int nq, int nkv, int D, int window,
               const float* sinks, float* out);

// Router: top-k of logits [n, E] (ties: lower expert id first), then softmax over the k selected.
void router_topk(const float* logits, int n, int E, int k, int32_t* ids, float* weights);

// y[n, out] = x[n, in] W^T + b with W as MXFP4 rows (blocks [out, in/32, 16], scales [out, in/32]; b bf16 [out]
// or null). Parallel over rows of W; each row is decoded once for all n tokens (the experts of a batch).
void linear_mxfp4(const float* x, const uint8_t* blocks, const uint8_t* scales, const uint16_t* b, int n, int in,
                  int out, float* y);

// One expert's MLP on one token (H = hidden, I = intermediate):
// g = x W_gu^T + b_gu (2I, gate/up interleaved), clamped SwiGLU with (up + 1), y = a W_down^T + b_down.
// W_gu as MXFP4 (blocks [2I, H/32, 16], scales [2I, H/32]); W_down (blocks [H, I/32, 16], scales [H, I/32]).
void expert_mlp_mxfp4(const float* x, const uint8_t* gu_blocks, const uint8_t* gu_scales, const uint16_t* gu_bias,
                      const uint8_t* dn_blocks, const uint8_t* dn_scales, const uint16_t* dn_bias, int H, int I,
                      float limit, float* y);
// Clamped SwiGLU on interleaved [2I] -> [I]: gate = min(g, limit), up = clamp(u, -limit, limit),
// a = (up + 1) * gate * sigmoid(1.702 * gate).
void swiglu(const float* gu, int I, float limit, float* a);

}  // namespace hm::ref
