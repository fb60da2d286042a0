// Op-test cases of the MoE kernels (kernels/moe.h) against the CPU reference (native/cpu/ref_ops.h):
//   router_topk   router_topk_softmax vs ref::router_topk: ids exact (well separated logits, and ties), weights.
//   moe_mxfp4_to_bf16  the loader conversion vs ref::mxfp4_decode_row, exact.
//   moe_experts_* moe_mxfp4_forward and moe_bf16_forward (weights converted on the GPU) vs the sum over the k
//                 experts of weight * ref::expert_mlp_mxfp4, decode (MXFP4: the bulk-copy kernels, "decode", and the
//                 register-streaming ones, "decode_regs"; at n = 1 also the split kernels, "decode_split") and prefill
//                 paths, real and odd shapes, and the fused
//                 routing ("+logits": router logits in, ids/weights out, checked against ref::router_topk).
//                 Tolerance: nmse 1e-4 (the SwiGLU output is rounded to bf16 between the matmuls: about 1e-6 expected).
//                 MXFP4 prefill also through MoePath::kPrefillV1 (v1's GEMM) and with MoeParams::wgmma off
//                 ("prefill_mma", moe_prefill_mma.cuh): the same bits as kPrefill, the wgmma GEMMs ("v1_bits").
//   moe_grouped_* the grouped path in two configurations ("grouped": MoePath::kGrouped, the default V1;
//                 "grouped_bf16": kGroupedBf16, round 1's V0; both bf16 mma.sync, both also run by moe_experts_* at
//                 their token counts, with the prefill path's "halves alone" bit check) at the batched-decode /
//                 chunked-prefill sizes (n = 9 .. 512, E = 32 and 128) and with forced ragged loads (1, 3, 17 or 255
//                 tokens on one expert), against a per-expert batched CPU reference (the same ref::linear_mxfp4 +
//                 ref::swiglu math as ref::expert_mlp_mxfp4); nmse 1e-4, the same bits over four workspace fills,
//                 fused routing ids exact.
//   moe_experts_wide_range  the same over activations with a wide range (written for fp8 loops since removed):
//                 rows with one huge value, tiny rows, rows mixing normal values with ones 2^-14 smaller and zeros,
//                 zero rows; checked per token (the worst token's nmse, 1e-4).
//   moe_prefill_ragged  the MXFP4 prefill GEMM at real shapes, n = 64 .. 4096, with expert group sizes 0, 1, 3, 17,
//                 128, 129, 255 (tile edges of both GEMMs): v1's bits on every token, the CPU twin on 16 of them
//                 (nmse 1e-4), run-to-run bits; for kPrefill (the wgmma GEMMs), moe_prefill_mma.cuh's (wgmma off)
//                 and the wgmma GEMMs at each tile width ("prefill_wgmma tile 16 .. 128").
//   moe_fused_routing  the decode kernels' own top-k + softmax (ties, NaN) vs ref::router_topk: ids exact, weights.
// Outputs are poisoned with NaN before each launch, so an unwritten element fails the case.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/ref_ops.h"
#include "moe.h"
#include "op_test.h"

namespace hm::optest {
namespace {

#define T_CHECK(expr)                                                                                   \
  do {                                                                                                  \
    cudaError_t e_ = (expr);                                                                            \
    if (e_ != cudaSuccess) throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(e_)); \
  } while (0)

template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  DevBuf() = default;
  explicit DevBuf(size_t count) : n(count) { T_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T))); }
  explicit DevBuf(const std::vector<T>& h) : DevBuf(h.size()) { upload(h); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void upload(const std::vector<T>& h) { T_CHECK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> download() const {
    std::vector<T> h(n);
    T_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void poison() { T_CHECK(cudaMemset(p, 0xFF, n * sizeof(T))); }  // NaN for floats, -1 for ints
};

// Fast deterministic bytes (the expert tensors are up to 1.6 GB).
struct XorShift {
  uint64_t s;
  explicit XorShift(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

std::vector<uint16_t> to_bf16(const std::vector<float>& f) {
  std::vector<uint16_t> b(f.size());
  for (size_t i = 0; i < f.size(); i++) b[i] = ref::f32_to_bf16(f[i]);
  return b;
}
std::vector<float> from_bf16(const std::vector<uint16_t>& b) {
  std::vector<float> f(b.size());
  for (size_t i = 0; i < b.size(); i++) f[i] = ref::bf16_to_f32(b[i]);
  return f;
}

Result fail(const std::string& params, const std::string& why) {
  Result r;
  r.params = params + " EXCEPTION " + why;
  r.error = 1;
  r.tolerance = 0;
  r.metric = "exception";
  r.nan_or_inf = true;
  return r;
}

Result exact_ids(const std::string& params, const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  Result r;
  r.params = params;
  r.metric = "ids_mismatch";
  r.tolerance = 0;
  for (size_t i = 0; i < a.size(); i++) r.error += a[i] != b[i];
  return r;
}

Result close(const std::string& params, const char* metric, const std::vector<float>& a, const std::vector<float>& b,
             double tol) {
  Result r;
  r.params = params;
  r.metric = metric;
  r.tolerance = tol;
  r.error = std::strcmp(metric, "nmse") == 0 ? nmse(a.data(), b.data(), a.size(), &r.nan_or_inf)
                                             : max_abs_rel(a.data(), b.data(), a.size(), &r.nan_or_inf);
  return r;
}

// ---------------- routing ----------------

std::vector<Result> router_topk_cases() {
  std::vector<Result> out;
  struct C { int n, E, k; bool ties; };
  const C cases[] = {{1, 32, 4, false}, {7, 32, 4, false}, {64, 128, 4, false}, {300, 128, 4, false},
                     {300, 32, 4, true}, {37, 5, 2, false},  {9, 256, 8, true},   {3, 4, 4, false}};
  uint64_t seed = 100;
  for (const C& c : cases) {
    char params[96];
    std::snprintf(params, sizeof params, "n=%d E=%d k=%d%s", c.n, c.E, c.k, c.ties ? " ties" : "");
    try {
      std::vector<float> logits(size_t(c.n) * c.E);
      XorShift rng(seed++);
      for (int t = 0; t < c.n; t++) {
        // Well separated: a random permutation of 0.05-spaced values; ties: 4 distinct values only.
        std::vector<int> perm(c.E);
        for (int e = 0; e < c.E; e++) perm[e] = e;
        for (int e = c.E - 1; e > 0; e--) std::swap(perm[e], perm[rng.next() % (e + 1)]);
        for (int e = 0; e < c.E; e++)
          logits[size_t(t) * c.E + e] = c.ties ? float(perm[e] % 4) : 0.05f * float(perm[e]) - 3.0f;
      }
      std::vector<int32_t> ids_ref(size_t(c.n) * c.k);
      std::vector<float> w_ref(ids_ref.size());
      ref::router_topk(logits.data(), c.n, c.E, c.k, ids_ref.data(), w_ref.data());
      DevBuf<float> d_logits(logits), d_w(w_ref.size());
      DevBuf<int32_t> d_ids(ids_ref.size());
      d_w.poison();
      d_ids.poison();
      cuda::RouterTopkParams p;
      p.logits = d_logits.p;
      p.ld_logits = c.E;
      p.n = c.n;
      p.E = c.E;
      p.k = c.k;
      p.ids = d_ids.p;
      p.weights = d_w.p;
      cuda::router_topk_softmax(p, 0);
      T_CHECK(cudaDeviceSynchronize());
      out.push_back(exact_ids(params, d_ids.download(), ids_ref));
      out.push_back(close(params, "max_abs_rel", d_w.download(), w_ref, 1e-5));
    } catch (const std::exception& e) {
      out.push_back(fail(params, e.what()));
    }
  }
  return out;
}

// ---------------- experts ----------------

// One layer's experts in the checkpoint layout, with scales chosen so that every matmul output is O(1..5)
// (the SwiGLU clamps at 7 are reached by some rows).
struct Experts {
  int E, H, I;
  std::vector<uint8_t> gu_blocks, gu_scales, dn_blocks, dn_scales;
  std::vector<uint16_t> gu_bias, dn_bias;
  Experts(int E_, int H_, int I_, uint64_t seed) : E(E_), H(H_), I(I_) {
    XorShift rng(seed);
    auto fill = [&](std::vector<uint8_t>& blocks, std::vector<uint8_t>& scales, size_t rows, int K) {
      blocks.resize(rows * K / 2);
      for (size_t i = 0; i < blocks.size(); i += 8) {
        const uint64_t v = rng.next();
        std::memcpy(&blocks[i], &v, std::min<size_t>(8, blocks.size() - i));
      }
      // rms of a random E2M1 value is 2.93; aim the dot over K at about 2.
      const int center = 127 - int(std::lround(std::log2(2.93 * std::sqrt(double(K)) / 2.0)));
      scales.resize(rows * K / 32);
      for (auto& s : scales) s = uint8_t(center - 1 + int(rng.next() % 3));
    };
    fill(gu_blocks, gu_scales, size_t(E) * 2 * I, H);
    fill(dn_blocks, dn_scales, size_t(E) * H, I);
    gu_bias = to_bf16(randn(size_t(E) * 2 * I, seed + 1, 0.5f));
    dn_bias = to_bf16(randn(size_t(E) * H, seed + 2, 0.5f));
  }
};

// The expert tensors into the layout the MXFP4 kernels read (mxfp4_prepare), as the loader leaves them; the CPU
// twins read the checkpoint's bytes (X), so every MXFP4 case below also checks the layout against them.
void prepare_mxfp4(DevBuf<uint8_t>& gu_b, DevBuf<uint8_t>& gu_s, DevBuf<uint8_t>& dn_b, DevBuf<uint8_t>& dn_s,
                   const Experts& X) {
  cuda::mxfp4_prepare({gu_b.p, gu_s.p, int64_t(X.gu_scales.size())}, 0);
  cuda::mxfp4_prepare({dn_b.p, dn_s.p, int64_t(X.dn_scales.size())}, 0);
  T_CHECK(cudaDeviceSynchronize());
}

struct MoeCase {
  int n, k;
  bool decode_ok;  // n <= kMoeDecodeMaxTokens
};

// Reference: y[t] = sum_j w[t, j] * expert_mlp(x[t], ids[t, j]).
std::vector<float> moe_ref(const Experts& X, const std::vector<float>& x, const std::vector<int32_t>& ids,
                           const std::vector<float>& w, int n, int k, float limit) {
  const int H = X.H, I = X.I;
  std::vector<float> y(size_t(n) * H, 0.f), ye(H);
  const size_t gu_rb = size_t(2) * I * H / 2, gu_rs = size_t(2) * I * H / 32;
  const size_t dn_rb = size_t(H) * I / 2, dn_rs = size_t(H) * I / 32;
  for (int t = 0; t < n; t++) {
    for (int j = 0; j < k; j++) {
      const int e = ids[size_t(t) * k + j];
      ref::expert_mlp_mxfp4(x.data() + size_t(t) * H, X.gu_blocks.data() + e * gu_rb, X.gu_scales.data() + e * gu_rs,
                            X.gu_bias.data() + size_t(e) * 2 * I, X.dn_blocks.data() + e * dn_rb,
                            X.dn_scales.data() + e * dn_rs, X.dn_bias.data() + size_t(e) * H, H, I, limit, ye.data());
      for (int h = 0; h < H; h++) y[size_t(t) * H + h] += w[size_t(t) * k + j] * ye[h];
    }
  }
  return y;
}

// Activations [n, H]: randn, or (wide) token t by t % 4: one value 1000 among randn, randn x 1e-12, randn with
// every other value x 2^-14 and every 7th 0, all 0.
std::vector<float> activations(int n, int H, uint64_t seed, bool wide) {
  std::vector<float> x = randn(size_t(n) * H, seed);
  if (!wide) return x;
  for (int t = 0; t < n; t++) {
    float* r = x.data() + size_t(t) * H;
    for (int h = 0; h < H; h++) {
      if (t % 4 == 1) r[h] *= 1e-12f;
      if (t % 4 == 2) r[h] = h % 7 == 0 ? 0.f : h % 2 ? r[h] * 0x1p-14f : r[h];
      if (t % 4 == 3) r[h] = 0.f;
    }
    if (t % 4 == 0) r[(t * 977 + 13) % H] = 1000.f;
  }
  return x;
}

// The worst token's nmse (wide-range activations: one token's large output must not hide another's error).
Result token_nmse(const std::string& params, const std::vector<float>& y, const std::vector<float>& want, int n,
                  int H, double tol) {
  Result r;
  r.params = params;
  r.metric = "token_nmse_max";
  r.tolerance = tol;
  for (int t = 0; t < n; t++)
    r.error = std::max(r.error, nmse(y.data() + size_t(t) * H, want.data() + size_t(t) * H, size_t(H), &r.nan_or_inf));
  return r;
}

// The MoeParams every case starts from: n tokens of x [n, H] into y [n, H], the shape, the workspace, the path
// (routing, limit and accumulate are the caller's).
cuda::MoeParams base_params(int n, int H, int I, int E, int k, const uint16_t* x, float* y, const DevBuf<uint8_t>& ws,
                            cuda::MoePath path) {
  cuda::MoeParams p;
  p.n = n;
  p.H = H;
  p.I = I;
  p.E = E;
  p.k = k;
  p.x = x;
  p.ldx = H;
  p.y = y;
  p.ldy = H;
  p.workspace = ws.p;
  p.workspace_bytes = ws.n;
  p.path = path;
  return p;
}

// Runs every token count of one expert set through both formats and, where allowed, both paths.
std::vector<Result> moe_cases(int E, int H, int I, int k, const std::vector<int>& ns, uint64_t seed,
                              bool bf16_all, bool wide = false) {
  std::vector<Result> out;
  char shape[96];
  std::snprintf(shape, sizeof shape, "E=%d H=%d I=%d k=%d", E, H, I, k);
  try {
    const float limit = 7.0f;
    const Experts X(E, H, I, seed);
    DevBuf<uint8_t> gu_b(X.gu_blocks), gu_s(X.gu_scales), dn_b(X.dn_blocks), dn_s(X.dn_scales);
    DevBuf<uint16_t> gu_bias(X.gu_bias), dn_bias(X.dn_bias);
    DevBuf<uint16_t> gu_w(size_t(E) * 2 * I * H), dn_w(size_t(E) * H * I);
    cuda::mxfp4_to_bf16({gu_b.p, gu_s.p, gu_w.p, int64_t(E) * 2 * I, H}, 0);
    cuda::mxfp4_to_bf16({dn_b.p, dn_s.p, dn_w.p, int64_t(E) * H, I}, 0);
    T_CHECK(cudaDeviceSynchronize());
    prepare_mxfp4(gu_b, gu_s, dn_b, dn_s, X);  // after the bf16 copies, which read the bytes as stored
    const cuda::MoeMxfp4Weights wm{gu_b.p, gu_s.p, gu_bias.p, dn_b.p, dn_s.p, dn_bias.p};
    const cuda::MoeBf16Weights wb{gu_w.p, gu_bias.p, dn_w.p, dn_bias.p};
    const int n_max = *std::max_element(ns.begin(), ns.end());
    DevBuf<uint8_t> ws(cuda::moe_workspace_bytes(n_max, H, I, E, k));

    for (int n : ns) {
      // Tokens choose k distinct random experts with softmax weights.
      const auto x16 = to_bf16(activations(n, H, seed + 10 + n, wide));
      const auto xf = from_bf16(x16);
      std::vector<int32_t> ids(size_t(n) * k);
      std::vector<float> wts(ids.size());
      XorShift rng(seed + 1000 + n);
      for (int t = 0; t < n; t++) {
        std::vector<int> perm(E);
        for (int e = 0; e < E; e++) perm[e] = e;
        for (int j = 0; j < k; j++) std::swap(perm[j], perm[j + rng.next() % (E - j)]);
        const auto l = randn(k, rng.next());
        float s = 0.f;
        for (int j = 0; j < k; j++) s += std::exp(l[j]);
        for (int j = 0; j < k; j++) {
          ids[size_t(t) * k + j] = perm[j];
          wts[size_t(t) * k + j] = std::exp(l[j]) / s;
        }
      }
      const auto y0 = randn(size_t(n) * H, seed + 20 + n);
      const auto y_ref = moe_ref(X, xf, ids, wts, n, k, limit);
      auto y_ref_acc = y_ref;
      for (size_t i = 0; i < y_ref_acc.size(); i++) y_ref_acc[i] += y0[i];
      DevBuf<uint16_t> d_x(x16);
      DevBuf<int32_t> d_ids(ids);
      DevBuf<float> d_w(wts), d_y(size_t(n) * H);

      // Router logits whose top-k is exactly (ids, in descending-logit order) with softmax weights wts: the chosen
      // experts get l_j + 10 (l_j = log of the weight up to a constant), the others values below -5.
      std::vector<float> logits(size_t(n) * E);
      for (int t = 0; t < n; t++) {
        for (int e = 0; e < E; e++) logits[size_t(t) * E + e] = -5.f - float(rng.next() % 1000) * 1e-3f;
        for (int j = 0; j < k; j++)
          logits[size_t(t) * E + ids[size_t(t) * k + j]] = 10.f + std::log(wts[size_t(t) * k + j]);
      }
      std::vector<int32_t> ids_routed(ids.size());
      std::vector<float> wts_routed(ids.size());
      ref::router_topk(logits.data(), n, E, k, ids_routed.data(), wts_routed.data());
      DevBuf<float> d_logits(logits), d_w_out(ids.size());
      DevBuf<int32_t> d_ids_out(ids.size());

      struct Variant { bool bf16; cuda::MoePath path; bool acc; bool fused; bool mma = false; };  // mma: no wgmma
      std::vector<Variant> vs;
      const bool decode_ok = n <= cuda::kMoeDecodeMaxTokens;
      for (int f = 0; f < 2; f++) {
        if (f == 1 && !bf16_all && n != ns.front() && n != ns.back()) continue;
        if (decode_ok) vs.push_back({f == 1, cuda::MoePath::kDecode, false, false});
        if (decode_ok && f == 0) vs.push_back({false, cuda::MoePath::kDecodeRegs, false, false});
        if (n == 1 && f == 0) vs.push_back({false, cuda::MoePath::kDecodeSplit, false, false});
        if (n == 1 && f == 0) vs.push_back({false, cuda::MoePath::kDecodeSplit, true, true});
        if (decode_ok) vs.push_back({f == 1, cuda::MoePath::kDecode, false, true});
        vs.push_back({f == 1, cuda::MoePath::kPrefill, false, false});
        if (f == 0) vs.push_back({false, cuda::MoePath::kGrouped, false, false});
        if (f == 0) vs.push_back({false, cuda::MoePath::kGroupedBf16, false, false});
        if (f == 0) vs.push_back({false, cuda::MoePath::kPrefillV1, false, false});
        if (f == 0) vs.push_back({false, cuda::MoePath::kPrefill, false, false, true});
        if (f == 0) vs.push_back({false, cuda::MoePath::kAuto, true, false});
        if (f == 0) vs.push_back({false, cuda::MoePath::kAuto, true, true});
      }
      std::vector<float> y_mxfp4_prefill;
      for (const Variant& v : vs) {
        char params[160];
        const char* path = v.path == cuda::MoePath::kDecode       ? "decode"
                           : v.path == cuda::MoePath::kDecodeRegs ? "decode_regs"
                           : v.path == cuda::MoePath::kDecodeSplit ? "decode_split"
                           : v.path == cuda::MoePath::kPrefill    ? (v.mma ? "prefill_mma" : "prefill")
                           : v.path == cuda::MoePath::kGrouped    ? "grouped"
                           : v.path == cuda::MoePath::kGroupedBf16 ? "grouped_bf16"
                           : v.path == cuda::MoePath::kPrefillV1  ? "prefill_v1"
                           : v.path == cuda::MoePath::kPrefillWgmma ? "prefill_wgmma"
                                                                  : "auto";
        std::snprintf(params, sizeof params, "%s %s%s n=%d %s%s%s", v.bf16 ? "bf16" : "mxfp4", path,
                      v.fused ? "+logits" : "", n, shape, v.acc ? " accumulate" : "", wide ? " wide" : "");
        try {
          cuda::MoeParams p = base_params(n, H, I, E, k, d_x.p, d_y.p, ws, v.path);
          p.swiglu_limit = limit;
          p.wgmma = !v.mma;
          p.ids = d_ids.p;
          p.weights = d_w.p;
          p.accumulate = v.acc;
          auto run = [&](int ws_byte, int rows = -1, int first = 0) {  // tokens [first, first + rows)
            p.n = rows < 0 ? n : rows;
            p.x = d_x.p + size_t(first) * H;
            p.ids = d_ids.p + size_t(first) * k;
            p.weights = d_w.p + size_t(first) * k;
            if (v.fused) {
              p.ids = nullptr;
              p.weights = nullptr;
              p.logits = d_logits.p + size_t(first) * E;
              p.ld_logits = E;
              p.ids_out = d_ids_out.p + size_t(first) * k;
              p.weights_out = d_w_out.p + size_t(first) * k;
              d_ids_out.poison();
              d_w_out.poison();
            }
            p.y = d_y.p + size_t(first) * H;
            T_CHECK(cudaMemset(ws.p, ws_byte, ws.n));
            if (v.acc)
              d_y.upload(y0);
            else
              d_y.poison();
            if (v.bf16)
              cuda::moe_bf16_forward(p, wb, 0);
            else
              cuda::moe_mxfp4_forward(p, wm, 0);
            T_CHECK(cudaDeviceSynchronize());
            return d_y.download();
          };
          const auto y = run(0xFF);
          out.push_back(wide ? token_nmse(params, y, v.acc ? y_ref_acc : y_ref, n, H, 1e-4)
                             : close(params, "nmse", y, v.acc ? y_ref_acc : y_ref, 1e-4));
          if (v.fused) {
            out.push_back(exact_ids(std::string(params) + " ids_out", d_ids_out.download(), ids_routed));
            out.push_back(
                close(std::string(params) + " weights_out", "max_abs_rel", d_w_out.download(), wts_routed, 1e-6));
          }
          size_t diff = 0;  // three more runs over other workspace contents: the same bits every time
          for (int ws_byte : {0x00, 0x7F, 0xFF}) diff += size_t(repeat_bits(params, y, run(ws_byte)).error);
          Result rep = repeat_bits(params, y, y);
          rep.error = double(diff);
          out.push_back(rep);
          if (v.path == cuda::MoePath::kPrefill && !v.bf16 && !v.mma) y_mxfp4_prefill = y;
          if ((v.path == cuda::MoePath::kPrefillV1 || v.mma) && !y_mxfp4_prefill.empty()) {
            // The MXFP4 prefill GEMM (moe_prefill_mma.cuh) computes v1's bits.
            Result same = repeat_bits(std::string(params) + " vs prefill", y_mxfp4_prefill, y);
            same.metric = "v1_bits";
            out.push_back(same);
          }
          if ((v.path == cuda::MoePath::kPrefill || v.path == cuda::MoePath::kGrouped ||
               v.path == cuda::MoePath::kGroupedBf16) &&
              n >= 2) {
            // Batch invariance: the first n/2 tokens alone, and the others alone (their rows then sit elsewhere in
            // their experts' groups and tiles or N-tiles), give the bits they gave side by side.
            const int half = n / 2;
            const size_t cut = size_t(half) * H;
            const auto y_first = run(0x00, half);
            const auto y_last = run(0x00, n - half, half);
            Result inv = repeat_bits(std::string(params) + " halves alone",
                                     std::vector<float>(y.begin(), y.begin() + cut),
                                     std::vector<float>(y_first.begin(), y_first.begin() + cut));
            inv.error += repeat_bits(params, std::vector<float>(y.begin() + cut, y.end()),
                                     std::vector<float>(y_last.begin() + cut, y_last.end())).error;
            inv.metric = "prefix_bits";
            out.push_back(inv);
            // The prefill path stages the MXFP4 weights as their exact bf16 values: the same bits as the bf16 path.
            if (v.path == cuda::MoePath::kPrefill && v.bf16 && !y_mxfp4_prefill.empty()) {
              Result same = repeat_bits(std::string(params) + " vs mxfp4", y_mxfp4_prefill, y);
              same.metric = "format_bits";
              out.push_back(same);
            }
          }
        } catch (const std::exception& e) {
          out.push_back(fail(params, e.what()));
          cudaGetLastError();
        }
      }
    }
  } catch (const std::exception& e) {
    out.push_back(fail(shape, e.what()));
  }
  return out;
}

// Reference by expert: each expert's tokens through ref::linear_mxfp4 at once (its rows decoded once, not once per
// token; the same per-row math as ref::expert_mlp_mxfp4), then y[t] = sum_j w[t, j] * out[t, j] in slot order.
std::vector<float> moe_ref_by_expert(const Experts& X, const std::vector<float>& x, const std::vector<int32_t>& ids,
                                     const std::vector<float>& w, int n, int k, float limit) {
  const int H = X.H, I = X.I;
  const size_t gu_rb = size_t(2) * I * H / 2, gu_rs = size_t(2) * I * H / 32;
  const size_t dn_rb = size_t(H) * I / 2, dn_rs = size_t(H) * I / 32;
  std::vector<float> out(size_t(n) * k * H);
  for (int e = 0; e < X.E; e++) {
    std::vector<int> pairs;
    for (int p = 0; p < n * k; p++)
      if (ids[p] == e) pairs.push_back(p);
    if (pairs.empty()) continue;
    const int m = int(pairs.size());
    std::vector<float> xe(size_t(m) * H), gu(size_t(m) * 2 * I), a(size_t(m) * I), ye(size_t(m) * H);
    for (int i = 0; i < m; i++)
      std::copy_n(x.data() + size_t(pairs[i] / k) * H, H, xe.data() + size_t(i) * H);
    ref::linear_mxfp4(xe.data(), X.gu_blocks.data() + e * gu_rb, X.gu_scales.data() + e * gu_rs,
                      X.gu_bias.data() + size_t(e) * 2 * I, m, H, 2 * I, gu.data());
    for (int i = 0; i < m; i++) ref::swiglu(gu.data() + size_t(i) * 2 * I, I, limit, a.data() + size_t(i) * I);
    ref::linear_mxfp4(a.data(), X.dn_blocks.data() + e * dn_rb, X.dn_scales.data() + e * dn_rs,
                      X.dn_bias.data() + size_t(e) * H, m, I, H, ye.data());
    for (int i = 0; i < m; i++) std::copy_n(ye.data() + size_t(i) * H, H, out.data() + size_t(pairs[i]) * H);
  }
  std::vector<float> y(size_t(n) * H, 0.f);
  for (int t = 0; t < n; t++)
    for (int j = 0; j < k; j++)
      for (int h = 0; h < H; h++) y[size_t(t) * H + h] += w[size_t(t) * k + j] * out[(size_t(t) * k + j) * H + h];
  return y;
}

// The grouped path at one expert set. heavy >= 0 forces the routing: tokens 0 .. heavy-1 take expert 0 (in slot
// t % k), every other choice is among experts 1 .. E-1, so expert 0 holds exactly `heavy` tokens. wide: every third
// value of x times 2^-14 (rows of a wide range: the removed fp8 loop's hi + lo split was inexact below 2^-9 of a row's
// max; kept as a wide-range case).
struct GroupedCase {
  int n, heavy;
  bool wide = false;
};
std::vector<Result> grouped_cases(int E, int H, int I, int k, const std::vector<GroupedCase>& cs, uint64_t seed) {
  std::vector<Result> out;
  char shape[96];
  std::snprintf(shape, sizeof shape, "E=%d H=%d I=%d k=%d", E, H, I, k);
  try {
    const float limit = 7.0f;
    const Experts X(E, H, I, seed);
    DevBuf<uint8_t> gu_b(X.gu_blocks), gu_s(X.gu_scales), dn_b(X.dn_blocks), dn_s(X.dn_scales);
    prepare_mxfp4(gu_b, gu_s, dn_b, dn_s, X);
    DevBuf<uint16_t> gu_bias(X.gu_bias), dn_bias(X.dn_bias);
    const cuda::MoeMxfp4Weights wm{gu_b.p, gu_s.p, gu_bias.p, dn_b.p, dn_s.p, dn_bias.p};
    int n_max = 1;
    for (const GroupedCase& c : cs) n_max = std::max(n_max, c.n);
    DevBuf<uint8_t> ws(cuda::moe_workspace_bytes(n_max, H, I, E, k));
    for (const GroupedCase& c : cs) {
      const int n = c.n;
      XorShift rng(seed + 1000 + n * 7 + c.heavy);
      auto xf = randn(size_t(n) * H, seed + 10 + n);
      if (c.wide)
        for (size_t i = 0; i < xf.size(); i += 3) xf[i] *= 1.f / 16384.f;
      const auto x16 = to_bf16(xf);
      std::vector<int32_t> ids(size_t(n) * k);
      std::vector<float> wts(ids.size());
      for (int t = 0; t < n; t++) {
        const bool on0 = t < c.heavy;
        const int lo = c.heavy >= 0 ? 1 : 0;  // forced: expert 0 only where chosen above
        std::vector<int> perm;
        for (int e = lo; e < E; e++) perm.push_back(e);
        for (int j = 0; j < k; j++) std::swap(perm[j], perm[j + rng.next() % (perm.size() - j)]);
        const auto l = randn(k, rng.next());
        float s = 0.f;
        for (int j = 0; j < k; j++) s += std::exp(l[j]);
        for (int j = 0; j < k; j++) {
          ids[size_t(t) * k + j] = on0 && j == t % k ? 0 : perm[j];
          wts[size_t(t) * k + j] = std::exp(l[j]) / s;
        }
      }
      const auto y_ref = moe_ref_by_expert(X, from_bf16(x16), ids, wts, n, k, limit);
      const auto y0 = randn(size_t(n) * H, seed + 20 + n);
      auto y_ref_acc = y_ref;
      for (size_t i = 0; i < y_ref_acc.size(); i++) y_ref_acc[i] += y0[i];
      // Router logits whose top-k is (ids, weights), as in moe_cases.
      std::vector<float> logits(size_t(n) * E);
      for (int t = 0; t < n; t++) {
        for (int e = 0; e < E; e++) logits[size_t(t) * E + e] = -5.f - float(rng.next() % 1000) * 1e-3f;
        for (int j = 0; j < k; j++)
          logits[size_t(t) * E + ids[size_t(t) * k + j]] = 10.f + std::log(wts[size_t(t) * k + j]);
      }
      std::vector<int32_t> ids_routed(ids.size());
      std::vector<float> wts_routed(ids.size());
      ref::router_topk(logits.data(), n, E, k, ids_routed.data(), wts_routed.data());
      DevBuf<uint16_t> d_x(x16);
      DevBuf<int32_t> d_ids(ids), d_ids_out(ids.size());
      DevBuf<float> d_w(wts), d_y(size_t(n) * H), d_logits(logits), d_w_out(ids.size());
      for (int run_i = 0; run_i < 4; run_i++) {  // (fused: router logits in, accumulate into y) x both loops
        const int fused = run_i & 1;
        const bool bf16_loop = run_i >= 2;
        char params[160];
        std::snprintf(params, sizeof params, "mxfp4 grouped%s%s n=%d %s%s", bf16_loop ? "_bf16" : "",
                      fused ? "+logits" : "", n, shape, fused ? " accumulate" : "");
        std::string pr = params;
        if (c.heavy >= 0) pr += " heavy=" + std::to_string(c.heavy);
        if (c.wide) pr += " wide";
        try {
          cuda::MoeParams p = base_params(n, H, I, E, k, d_x.p, d_y.p, ws,
                                          bf16_loop ? cuda::MoePath::kGroupedBf16 : cuda::MoePath::kGrouped);
          p.swiglu_limit = limit;
          if (fused) {
            p.logits = d_logits.p;
            p.ld_logits = E;
            p.ids_out = d_ids_out.p;
            p.weights_out = d_w_out.p;
          } else {
            p.ids = d_ids.p;
            p.weights = d_w.p;
          }
          p.accumulate = fused == 1;
          auto run = [&](int ws_byte) {
            T_CHECK(cudaMemset(ws.p, ws_byte, ws.n));
            if (fused) {
              d_ids_out.poison();
              d_w_out.poison();
              d_y.upload(y0);
            } else {
              d_y.poison();
            }
            cuda::moe_mxfp4_forward(p, wm, 0);
            T_CHECK(cudaDeviceSynchronize());
            return d_y.download();
          };
          const auto y = run(0xFF);
          out.push_back(close(pr, "nmse", y, fused ? y_ref_acc : y_ref, 1e-4));
          if (fused) {
            out.push_back(exact_ids(pr + " ids_out", d_ids_out.download(), ids_routed));
            out.push_back(close(pr + " weights_out", "max_abs_rel", d_w_out.download(), wts_routed, 1e-6));
          }
          size_t diff = 0;
          for (int ws_byte : {0x00, 0x7F, 0xFF}) diff += size_t(repeat_bits(pr, y, run(ws_byte)).error);
          Result rep = repeat_bits(pr, y, y);
          rep.error = double(diff);
          out.push_back(rep);
        } catch (const std::exception& e) {
          out.push_back(fail(pr, e.what()));
          cudaGetLastError();
        }
      }
    }
  } catch (const std::exception& e) {
    out.push_back(fail(shape, e.what()));
  }
  return out;
}

std::vector<Result> mxfp4_to_bf16_cases() {
  std::vector<Result> out;
  struct C { int rows, cols; };
  for (const C c : {C{1, 32}, C{77, 96}, C{5760, 2880}}) {
    char params[64];
    std::snprintf(params, sizeof params, "rows=%d cols=%d", c.rows, c.cols);
    try {
      std::vector<uint8_t> blocks(size_t(c.rows) * c.cols / 2), scales(size_t(c.rows) * c.cols / 32);
      XorShift rng(300 + c.rows);
      for (auto& b : blocks) b = uint8_t(rng.next());
      for (auto& s : scales) s = uint8_t(100 + rng.next() % 50);
      DevBuf<uint8_t> d_b(blocks), d_s(scales);
      DevBuf<uint16_t> d_o(size_t(c.rows) * c.cols);
      d_o.poison();
      cuda::mxfp4_to_bf16({d_b.p, d_s.p, d_o.p, c.rows, c.cols}, 0);
      T_CHECK(cudaDeviceSynchronize());
      std::vector<float> ref_out(size_t(c.rows) * c.cols);
      for (int r = 0; r < c.rows; r++)
        ref::mxfp4_decode_row(blocks.data() + size_t(r) * c.cols / 2, scales.data() + size_t(r) * c.cols / 32, c.cols,
                              ref_out.data() + size_t(r) * c.cols);
      out.push_back(close(params, "max_abs_rel", from_bf16(d_o.download()), ref_out, 0.0));
    } catch (const std::exception& e) {
      out.push_back(fail(params, e.what()));
    }
  }
  return out;
}

// The decode kernels' fused routing on heavy ties and NaN (NaN ranks as -inf: last, lower id first among equals),
// checked through ids_out / weights_out of moe_mxfp4_forward (decode path; y itself is checked by moe_experts_*).
std::vector<Result> fused_routing_cases() {
  std::vector<Result> out;
  struct C { int E, k, n; bool ties, nans; };
  const C cases[] = {{32, 4, 1, true, false}, {32, 4, 8, true, true}, {128, 4, 5, true, true},
                     {128, 4, 3, false, true}, {256, 8, 8, true, true}, {5, 2, 7, true, true}, {4, 4, 2, false, true},
                     {128, 4, 1, true, true}, {256, 8, 1, false, true}};
  const int H = 64, I = 32;
  uint64_t seed = 500;
  for (const C& c : cases) {
    char params[96];
    std::snprintf(params, sizeof params, "E=%d k=%d n=%d%s%s", c.E, c.k, c.n, c.ties ? " ties" : "",
                  c.nans ? " nan" : "");
    try {
      const Experts X(c.E, H, I, seed);
      XorShift rng(seed++);
      std::vector<float> logits(size_t(c.n) * c.E), clean(logits.size());
      for (size_t i = 0; i < logits.size(); i++) {
        logits[i] = c.ties ? float(rng.next() % 4) : float(int(rng.next() % 20001) - 10000) * 1e-3f;
        if (c.nans && rng.next() % 5 == 0) logits[i] = std::nanf("");
        clean[i] = logits[i] == logits[i] ? logits[i] : -INFINITY;
      }
      std::vector<int32_t> ids_ref(size_t(c.n) * c.k);
      std::vector<float> w_ref(ids_ref.size());
      ref::router_topk(clean.data(), c.n, c.E, c.k, ids_ref.data(), w_ref.data());
      DevBuf<uint8_t> gu_b(X.gu_blocks), gu_s(X.gu_scales), dn_b(X.dn_blocks), dn_s(X.dn_scales);
      prepare_mxfp4(gu_b, gu_s, dn_b, dn_s, X);
      DevBuf<uint16_t> gu_bias(X.gu_bias), dn_bias(X.dn_bias), d_x(to_bf16(randn(size_t(c.n) * H, seed)));
      DevBuf<float> d_logits(logits), d_w(ids_ref.size()), d_y(size_t(c.n) * H);
      DevBuf<int32_t> d_ids(ids_ref.size());
      DevBuf<uint8_t> ws(cuda::moe_workspace_bytes(c.n, H, I, c.E, c.k));
      for (cuda::MoePath path : {cuda::MoePath::kDecode, cuda::MoePath::kDecodeRegs, cuda::MoePath::kDecodeSplit}) {
        if (path == cuda::MoePath::kDecodeSplit && c.n != 1) continue;
        const std::string pr = std::string(params) + (path == cuda::MoePath::kDecode       ? " decode"
                                                      : path == cuda::MoePath::kDecodeRegs ? " decode_regs"
                                                                                            : " decode_split");
        d_ids.poison();
        d_w.poison();
        cuda::MoeParams p = base_params(c.n, H, I, c.E, c.k, d_x.p, d_y.p, ws, path);
        p.logits = d_logits.p;
        p.ld_logits = c.E;
        p.ids_out = d_ids.p;
        p.weights_out = d_w.p;
        cuda::moe_mxfp4_forward(p, {gu_b.p, gu_s.p, gu_bias.p, dn_b.p, dn_s.p, dn_bias.p}, 0);
        T_CHECK(cudaDeviceSynchronize());
        out.push_back(exact_ids(pr, d_ids.download(), ids_ref));
        out.push_back(close(pr, "max_abs_rel", d_w.download(), w_ref, 1e-6));
      }
    } catch (const std::exception& e) {
      out.push_back(fail(params, e.what()));
    }
  }
  return out;
}

// Routing with prescribed expert group sizes: expert e takes the pairs [start_e, start_e + c_e) of the n k pairs
// laid out slot-major (pair q = slot q / n of token q % n), so with every c_e <= n a token never gets an expert
// twice and has exactly k. Even experts take the sizes in turn (clamped to n) while they fit; the other pairs are
// spread evenly over the odd experts (then over any expert with room).
std::vector<int32_t> ragged_ids(int n, int k, int E, const std::vector<int>& sizes) {
  const int P = n * k;
  std::vector<int> c(E, 0);
  int used = 0;
  for (int e = 0; e < E; e += 2) {
    const int want = std::min(sizes[(e / 2) % sizes.size()], n);
    if (used + want > P) break;
    c[e] = want;
    used += want;
  }
  for (int pass = 0; pass < 2; pass++)
    for (int e = 1 - pass, step = 2 - pass, idle = 0; used < P && idle < E; e = (e + step) % E) {
      if (c[e] < n) {
        c[e]++;
        used++;
        idle = 0;
      } else {
        idle++;
      }
    }
  std::vector<int32_t> ids(static_cast<size_t>(P));
  int q = 0;
  for (int e = 0; e < E; e++)
    for (int i = 0; i < c[e]; i++, q++) ids[size_t(q % n) * k + q / n] = e;
  return ids;
}

std::vector<Result> prefill_ragged_cases(int E, uint64_t seed) {
  std::vector<Result> out;
  const int H = 2880, I = 2880, k = 4;
  const float limit = 7.0f;
  const std::vector<int> ns = {64, 512, 2048, 4096};
  try {
    const Experts X(E, H, I, seed);
    DevBuf<uint8_t> gu_b(X.gu_blocks), gu_s(X.gu_scales), dn_b(X.dn_blocks), dn_s(X.dn_scales);
    prepare_mxfp4(gu_b, gu_s, dn_b, dn_s, X);
    DevBuf<uint16_t> gu_bias(X.gu_bias), dn_bias(X.dn_bias);
    const cuda::MoeMxfp4Weights wm{gu_b.p, gu_s.p, gu_bias.p, dn_b.p, dn_s.p, dn_bias.p};
    DevBuf<uint8_t> ws(cuda::moe_workspace_bytes(ns.back(), H, I, E, k));
    for (int n : ns) {
      char params[96];
      std::snprintf(params, sizeof params, "n=%d E=%d H=%d I=%d k=%d sizes 0,1,3,17,40,90,128,129,255", n, E, H, I, k);
      try {
        const auto x16 = to_bf16(randn(size_t(n) * H, seed + 10 + n));
        const auto ids = ragged_ids(n, k, E, {1, 3, 17, 255, 0, 128, 129, 40, 90});
        std::vector<float> wts(ids.size());
        XorShift rng(seed + 1000 + n);
        for (int t = 0; t < n; t++) {
          const auto l = randn(k, rng.next());
          float sum = 0.f;
          for (int j = 0; j < k; j++) sum += std::exp(l[j]);
          for (int j = 0; j < k; j++) wts[size_t(t) * k + j] = std::exp(l[j]) / sum;
        }
        DevBuf<uint16_t> d_x(x16);
        DevBuf<int32_t> d_ids(ids);
        DevBuf<float> d_w(wts), d_y(size_t(n) * H);
        auto run = [&](cuda::MoePath path, int ws_byte, int tile = 0, bool wgmma = true) {
          cuda::MoeParams p = base_params(n, H, I, E, k, d_x.p, d_y.p, ws, path);
          p.swiglu_limit = limit;
          p.wgmma = wgmma;
          p.wgmma_tile = tile;
          p.ids = d_ids.p;
          p.weights = d_w.p;
          T_CHECK(cudaMemset(ws.p, ws_byte, ws.n));
          d_y.poison();
          cuda::moe_mxfp4_forward(p, wm, 0);
          T_CHECK(cudaDeviceSynchronize());
          return d_y.download();
        };
        const auto y = run(cuda::MoePath::kPrefill, 0xFF);
        Result same = repeat_bits(std::string(params) + " vs prefill_v1", y, run(cuda::MoePath::kPrefillV1, 0x00));
        same.metric = "v1_bits";
        out.push_back(same);
        Result same2 = repeat_bits(std::string(params) + " prefill_mma vs prefill_v1", y, run(cuda::MoePath::kPrefill, 0x00, 0, false));
        same2.metric = "v1_bits";
        out.push_back(same2);
        out.push_back(repeat_bits(params, y, run(cuda::MoePath::kPrefill, 0x7F)));
        // The CPU twin on the first and last 8 tokens.
        std::vector<int> toks;
        for (int t = 0; t < 8; t++) toks.push_back(t);
        for (int t = n - 8; t < n; t++) toks.push_back(t);
        const int m = int(toks.size());
        std::vector<float> xs(size_t(m) * H), ys(size_t(m) * H);
        std::vector<int32_t> is(size_t(m) * k);
        std::vector<float> wsub(is.size());
        const auto xf = from_bf16(x16);
        for (int i = 0; i < m; i++) {
          std::copy_n(xf.begin() + size_t(toks[i]) * H, H, xs.begin() + size_t(i) * H);
          std::copy_n(y.begin() + size_t(toks[i]) * H, H, ys.begin() + size_t(i) * H);
          std::copy_n(ids.begin() + size_t(toks[i]) * k, k, is.begin() + size_t(i) * k);
          std::copy_n(wts.begin() + size_t(toks[i]) * k, k, wsub.begin() + size_t(i) * k);
        }
        const auto want = moe_ref(X, xs, is, wsub, m, k, limit);
        out.push_back(close(std::string(params) + " 16 tokens vs CPU", "nmse", ys, want, 1e-4));
        // The wgmma GEMMs (moe_prefill_wgmma.cuh, kPrefill's on the H200) at each tile width and in fitted tiles
        // (every width of 16 to 128 among these sizes): v1's bits on every token, the CPU twin on the same 16,
        // repeat bits.
        for (int tile : {16, 32, 64, 128, cuda::kMoeWgmmaTileFit}) {
          const std::string pw = std::string(params) + " prefill_wgmma tile " + (tile < 0 ? "fit" : std::to_string(tile));
          const auto yw = run(cuda::MoePath::kPrefillWgmma, 0xFF, tile);
          Result bits = repeat_bits(pw + " vs prefill_v1", y, yw);
          bits.metric = "v1_bits";
          out.push_back(bits);
          out.push_back(repeat_bits(pw, yw, run(cuda::MoePath::kPrefillWgmma, 0x7F, tile)));
          for (int i = 0; i < m; i++) std::copy_n(yw.begin() + size_t(toks[i]) * H, H, ys.begin() + size_t(i) * H);
          out.push_back(close(pw + " 16 tokens vs CPU", "nmse", ys, want, 1e-4));
        }
      } catch (const std::exception& e) {
        out.push_back(fail(params, e.what()));
        cudaGetLastError();
      }
    }
  } catch (const std::exception& e) {
    out.push_back(fail("moe_prefill_ragged", e.what()));
  }
  return out;
}

HM_OP_TEST("router_topk", router_topk_cases);
HM_OP_TEST("moe_fused_routing", fused_routing_cases);
HM_OP_TEST("moe_mxfp4_to_bf16", mxfp4_to_bf16_cases);
HM_OP_TEST("moe_experts_small", [] {
  std::vector<Result> out;
  for (auto& r : moe_cases(5, 96, 64, 2, {1, 3, 8, 37}, 11, true)) out.push_back(r);
  for (auto& r : moe_cases(8, 160, 224, 3, {1, 2, 8, 21}, 12, true)) out.push_back(r);
  for (auto& r : moe_cases(4, 32, 32, 4, {1, 9}, 13, true)) out.push_back(r);
  for (auto& r : moe_cases(9, 384, 256, 1, {1, 5, 130}, 14, true)) out.push_back(r);
  return out;
});
HM_OP_TEST("moe_grouped_small", [] {
  std::vector<Result> out;
  for (auto& r : grouped_cases(8, 160, 224, 3, {{9, -1}, {40, -1}, {40, 33}, {90, 1}, {40, -1, true}}, 31))
    out.push_back(r);
  for (auto& r : grouped_cases(5, 96, 64, 2, {{17, -1}, {64, 3}}, 32)) out.push_back(r);
  for (auto& r : grouped_cases(9, 384, 256, 1, {{100, -1}, {100, 17}}, 33)) out.push_back(r);
  return out;
});
HM_OP_TEST("moe_grouped_real_e32", [] {
  return grouped_cases(32, 2880, 2880, 4,
                       {{9, -1}, {17, -1}, {64, -1}, {255, -1}, {256, -1}, {512, -1}, {256, 1}, {256, 3}, {256, 17},
                        {256, 255}, {64, -1, true}},
                       41);
});
HM_OP_TEST("moe_grouped_real_e128", [] {
  return grouped_cases(128, 2880, 2880, 4,
                       {{9, -1}, {17, -1}, {64, -1}, {255, -1}, {256, -1}, {512, -1}, {256, 1}, {256, 3}, {256, 17},
                        {256, 255}},
                       42);
});
HM_OP_TEST("moe_experts_wide_range", [] {
  std::vector<Result> out;
  for (auto& r : moe_cases(32, 2880, 2880, 4, {1, 2, 4, 8}, 31, false, true)) out.push_back(r);
  for (auto& r : moe_cases(5, 96, 64, 2, {4, 8}, 32, true, true)) out.push_back(r);
  return out;
});
HM_OP_TEST("moe_experts_real_e32", [] { return moe_cases(32, 2880, 2880, 4, {1, 2, 3, 5, 7, 8, 64, 300}, 21, false); });
HM_OP_TEST("moe_experts_real_e128",
           [] { return moe_cases(128, 2880, 2880, 4, {1, 2, 3, 5, 7, 8, 64, 300}, 22, false); });
HM_OP_TEST("moe_prefill_ragged", [] {
  std::vector<Result> out;
  for (int E : {32, 128})
    for (auto& r : prefill_ragged_cases(E, 31 + E)) out.push_back(r);
  return out;
});

}  // namespace
}  // namespace hm::optest
