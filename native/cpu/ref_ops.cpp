// The reference ops of ref_ops.h: the gpt-oss math in fp32, in the order the model defines it. Loops that are
// worth it (rows of a weight matrix, attention heads) run on hm::cpu::parallel_for; everything else is serial.
#include "ref_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "thread_pool.h"

namespace hm::ref {

namespace {
// File-local inline bodies of the small conversions: the addon is built with -fPIC, where calls to the exported
// functions below go through the PLT and are never inlined, which made the hot loops ~5x slower.
inline float widen_bf16(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

constexpr float kE2M1[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                             -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

inline void decode_mxfp4_row(const uint8_t* blocks, const uint8_t* scales, int cols, float* out) {
  for (int g = 0; g < cols / 32; g++) {
    const float scale = std::ldexp(1.0f, static_cast<int>(scales[g]) - 127);
    const uint8_t* b = blocks + static_cast<size_t>(g) * 16;
    float* o = out + g * 32;
    for (int j = 0; j < 16; j++) {
      o[2 * j] = kE2M1[b[j] & 15] * scale;     // low nibble: even column
      o[2 * j + 1] = kE2M1[b[j] >> 4] * scale;  // high nibble: odd column
    }
  }
}
}  // namespace

float bf16_to_f32(uint16_t v) { return widen_bf16(v); }

uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0)
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN, sign kept
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);       // round to nearest, ties to even
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float fp4_value(uint8_t nibble) { return kE2M1[nibble & 15]; }

float e8m0_scale(uint8_t s) { return std::ldexp(1.0f, static_cast<int>(s) - 127); }

void mxfp4_decode_row(const uint8_t* blocks, const uint8_t* scales, int cols, float* out) {
  decode_mxfp4_row(blocks, scales, cols, out);
}

void embedding(const uint16_t* table, const int32_t* ids, int n, int H, float* out) {
  for (int i = 0; i < n; i++) {
    const uint16_t* row = table + static_cast<size_t>(ids[i]) * H;
    for (int h = 0; h < H; h++) out[static_cast<size_t>(i) * H + h] = widen_bf16(row[h]);
  }
}

void rmsnorm(const float* x, const uint16_t* w, int n, int H, float eps, float* out) {
  for (int i = 0; i < n; i++) {
    const float* xi = x + static_cast<size_t>(i) * H;
    float* oi = out + static_cast<size_t>(i) * H;
    double ss = 0.0;  // the mean of squares in double: H terms of one sign, cheap to get exact
    for (int h = 0; h < H; h++) ss += static_cast<double>(xi[h]) * xi[h];
    float r = 1.0f / std::sqrt(static_cast<float>(ss / H) + eps);
    for (int h = 0; h < H; h++) oi[h] = widen_bf16(w[h]) * (xi[h] * r);
  }
}

namespace {
// Eight running sums so the compiler can keep them in vector lanes without reassociating (no -ffast-math).
float dot(const float* a, const float* b, int n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; l++) s[l] += a[i + l] * b[i + l];
  float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; i++) t += a[i] * b[i];
  return t;
}
}  // namespace

void linear(const float* x, const uint16_t* W, const uint16_t* b, int n, int in, int out, float* y) {
  // Each output row of W is widened once and reused for all n tokens.
  cpu::parallel_for(out, [&](int r0, int r1) {
    std::vector<float> w(in);
    for (int r = r0; r < r1; r++) {
      const uint16_t* wr = W + static_cast<size_t>(r) * in;
      for (int c = 0; c < in; c++) w[c] = widen_bf16(wr[c]);
      float bias = b ? widen_bf16(b[r]) : 0.0f;
      for (int i = 0; i < n; i++) y[static_cast<size_t>(i) * out + r] = dot(x + static_cast<size_t>(i) * in, w.data(), in) + bias;
    }
  }, 16);
}

void rope_inv_freq(const RopeConfig& rope, int head_dim, float* inv_freq, float* attn_factor) {
  // fp32 like transformers, so that angles match it bit for bit where possible.
  const int half = head_dim / 2;
  const double base = rope.theta;
  if (!rope.yarn) {
    for (int i = 0; i < half; i++)
      inv_freq[i] = 1.0f / std::pow(static_cast<float>(base), static_cast<float>(2 * i) / static_cast<float>(head_dim));
    *attn_factor = 1.0f;
    return;
  }
  const double pi = 3.14159265358979323846;
  auto corr = [&](double n_rot) {
    return head_dim * std::log(rope.original_max_positions / (n_rot * 2 * pi)) / (2 * std::log(base));
  };
  double low = corr(rope.beta_fast), high = corr(rope.beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(head_dim - 1));
  if (low == high) high += 0.001;  // transformers avoids a zero-width ramp the same way
  for (int i = 0; i < half; i++) {
    float pos_freq = std::pow(static_cast<float>(base), static_cast<float>(2 * i) / static_cast<float>(head_dim));
    float extrap_f = 1.0f / pos_freq;
    float interp_f = 1.0f / (static_cast<float>(rope.factor) * pos_freq);
    float ramp = static_cast<float>((i - low) / (high - low));
    ramp = std::min(std::max(ramp, 0.0f), 1.0f);
    float extrap = 1.0f - ramp;
    inv_freq[i] = interp_f * (1.0f - extrap) + extrap_f * extrap;
  }
  *attn_factor = static_cast<float>(0.1 * std::log(rope.factor) + 1.0);
}

void rope(float* x, const int32_t* pos, int n, int heads, int D, const float* inv_freq, float attn_factor) {
  const int half = D / 2;
  std::vector<float> cs(half), sn(half);
  for (int i = 0; i < n; i++) {
    for (int f = 0; f < half; f++) {
      float angle = static_cast<float>(pos[i]) * inv_freq[f];
      cs[f] = std::cos(angle) * attn_factor;
      sn[f] = std::sin(angle) * attn_factor;
    }
    for (int h = 0; h < heads; h++) {
      float* v = x + (static_cast<size_t>(i) * heads + h) * D;
      for (int f = 0; f < half; f++) {
        float x1 = v[f], x2 = v[f + half];
        v[f] = x1 * cs[f] - x2 * sn[f];
        v[f + half] = x2 * cs[f] + x1 * sn[f];
      }
    }
  }
}

void kv_write(float* k_cache, float* v_cache, const float* k, const float* v, const int32_t* pos,
              const int32_t* block_table, int block_size, int n, int nkv, int D) {
  const size_t tok = static_cast<size_t>(nkv) * D;
  for (int i = 0; i < n; i++) {
    size_t slot = static_cast<size_t>(block_table[pos[i] / block_size]) * block_size + pos[i] % block_size;
    std::memcpy(k_cache + slot * tok, k + i * tok, tok * sizeof(float));
    std::memcpy(v_cache + slot * tok, v + i * tok, tok * sizeof(float));
  }
}

void attention(const float* q, const float* k_cache, const float* v_cache, const int32_t* block_table,
               int block_size, const int32_t* pos, int n, int nq, int nkv, int D, int window,
               const float* sinks, float* out) {
  const int group = nq / nkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const size_t tok = static_cast<size_t>(nkv) * D;
  // One (token, head) pair per item: each owns its output slice.
  cpu::parallel_for(n * nq, [&](int i0, int i1) {
    std::vector<float> p;
    for (int item = i0; item < i1; item++) {
      int i = item / nq, h = item % nq, kvh = h / group;
      int last = pos[i];
      int first = window > 0 ? std::max(0, last - window + 1) : 0;
      const float* qi = q + (static_cast<size_t>(i) * nq + h) * D;
      p.assign(last - first + 1, 0.0f);
      float m = sinks[h];
      for (int j = first; j <= last; j++) {
        size_t slot = static_cast<size_t>(block_table[j / block_size]) * block_size + j % block_size;
        const float* kj = k_cache + slot * tok + static_cast<size_t>(kvh) * D;
        float s = dot(qi, kj, D) * scale;
        p[j - first] = s;
        m = std::max(m, s);
      }
      float denom = std::exp(sinks[h] - m);  // the sink's column: in the denominator, then dropped
      for (float& s : p) {
        s = std::exp(s - m);
        denom += s;
      }
      float* oi = out + (static_cast<size_t>(i) * nq + h) * D;
      std::fill(oi, oi + D, 0.0f);
      for (int j = first; j <= last; j++) {
        size_t slot = static_cast<size_t>(block_table[j / block_size]) * block_size + j % block_size;
        const float* vj = v_cache + slot * tok + static_cast<size_t>(kvh) * D;
        float w = p[j - first] / denom;
        for (int d = 0; d < D; d++) oi[d] += w * vj[d];
      }
    }
  });
}

void router_topk(const float* logits, int n, int E, int k, int32_t* ids, float* weights) {
  std::vector<int32_t> idx(E);
  for (int i = 0; i < n; i++) {
    const float* l = logits + static_cast<size_t>(i) * E;
    for (int e = 0; e < E; e++) idx[e] = e;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    float m = l[idx[0]], sum = 0.0f;
    for (int j = 0; j < k; j++) {
      ids[i * k + j] = idx[j];
      weights[i * k + j] = std::exp(l[idx[j]] - m);
      sum += weights[i * k + j];
    }
    for (int j = 0; j < k; j++) weights[i * k + j] /= sum;
  }
}

void swiglu(const float* gu, int I, float limit, float* a) {
  for (int j = 0; j < I; j++) {
    float gate = std::min(gu[2 * j], limit);
    float up = std::min(std::max(gu[2 * j + 1], -limit), limit);
    float glu = gate / (1.0f + std::exp(-1.702f * gate));  // gate * sigmoid(1.702 * gate)
    a[j] = (up + 1.0f) * glu;
  }
}

void linear_mxfp4(const float* x, const uint8_t* blocks, const uint8_t* scales, const uint16_t* b, int n, int in,
                  int out, float* y) {
  if (in % 32 != 0) throw std::runtime_error("linear_mxfp4: the input width must be a multiple of 32");
  const size_t groups = static_cast<size_t>(in) / 32;
  // Each output row is decoded once and reused for all n tokens.
  cpu::parallel_for(out, [&](int r0, int r1) {
    std::vector<float> w(in);
    for (int r = r0; r < r1; r++) {
      decode_mxfp4_row(blocks + r * groups * 16, scales + r * groups, in, w.data());
      float bias = b ? widen_bf16(b[r]) : 0.0f;
      for (int i = 0; i < n; i++) y[static_cast<size_t>(i) * out + r] = dot(x + static_cast<size_t>(i) * in, w.data(), in) + bias;
    }
  }, 16);
}

void expert_mlp_mxfp4(const float* x, const uint8_t* gu_blocks, const uint8_t* gu_scales, const uint16_t* gu_bias,
                      const uint8_t* dn_blocks, const uint8_t* dn_scales, const uint16_t* dn_bias, int H, int I,
                      float limit, float* y) {
  std::vector<float> gu(2 * static_cast<size_t>(I)), a(I);
  linear_mxfp4(x, gu_blocks, gu_scales, gu_bias, 1, H, 2 * I, gu.data());
  swiglu(gu.data(), I, limit, a.data());
  linear_mxfp4(a.data(), dn_blocks, dn_scales, dn_bias, 1, I, H, y);
}

}  // namespace hm::ref
