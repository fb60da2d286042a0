// Op-test cases of the core kernels (everything but the MoE) against the CPU reference (native/cpu/ref_ops.h):
//   embedding        vs ref::embedding, exact.
//   rmsnorm          vs ref::rmsnorm (bf16 output widened): nmse 1e-5 (bf16 rounding of the output ~1e-6); the
//                    output plus its bf16 residual (out_lo): nmse 1e-9.
//   rope_kv_write    q vs ref::rope (fp32, nmse 1e-8), cache rows vs bf16(ref) (nmse 1e-5); positions up to 131071.
//   dense_gemv/_mma  vs ref::linear on the same bf16 inputs: nmse 1e-6 (fp32 accumulation order only); real
//                    shapes (qkv 5120x2880, o 2880x4096, lm_head 201088x2880), odd N, accumulate (residual) mode,
//                    fp32-grade inputs as bf16 hi + lo (x_lo) on both paths.
//   dense_rmsnorm    the decode GEMV with the RMSNorm fused in vs ref::rmsnorm + ref::linear (nmse 1e-6), and its
//                    bf16 normed rows (nmse 1e-5); the router's shapes (E = 32, 128, H = 2880, T = 1..8) take the
//                    one-block-per-row GEMV (also in dense, with x + x_lo).
//   dense_decode     every decode GEMV variant (staged 0/4/8/12/16 chunks, the router kernel) at the real shapes
//                    (q/k/v 5120x2880 fused norm and x + x_lo, o 2880x4096 +=, routers 128/32 x 2880, lm_head
//                    201088x2880) and odd ones, T = 1..8, vs ref::rmsnorm + ref::linear: nmse 1e-6 (norm_out 1e-5);
//                    the staged kernels also bit for bit against the unstaged one (without the fused norm).
//   bench_dense      HM_OP_BENCH=1 only: timings of those variants in a CUDA graph with PDL (prints, no cases).
//   dense_wgmma      sm_90 only: the wgmma GEMM at every tile shape bit for bit against the mma.sync one (mma_bits),
//                    vs ref::linear (nmse 1e-6) where quick; real shapes at T = 9 .. 2048 and ragged ones.
//   bench_dense_gemm HM_OP_BENCH=1 only: mma.sync vs wgmma (every tile) at T = 16, 64, 256, 2048.
//   attention_*      decode (split-K, contexts to 20k, several sequences with permuted block tables) and prefill
//                    tiles (chunks crossing the 128 window, with a cached prefix); sliding cases name a block of
//                    NaNs for every table entry before the window (window KV gives those back) vs ref::attention on the bf16
//                    cache widened to fp32: nmse 2e-5 (bf16 output).
//   attention_decode_rope  decode attention with RoPE + KV write fused in vs rope_kv_write + attention_decode:
//                    outputs, caches and the untouched qkv rows (observed identical, nmse 0).
//   attention_decode runs the merged kernel with 1, 2 and 4 head slices, the split + combine pair (variant 1) and
//                    the tensor-core kernel (variant 2, head dims 32 and 64; variant 3 its cluster merge, up to 8
//                    splits), checks the one-launch kernels leave their arrival counters zero;
//                    batch 1 at contexts 1..32768 and ragged batches of 8, 64 and 256 sequences, sliding and full.
//   bench_attention_decode  HM_OP_BENCH=1 only: us per layer of the decode kernels (see above the case).
//   narrow_logits    argmax / top-k ids exact against hm::narrow_logits_row (ties included), lse rel 1e-5.
// Outputs are poisoned with NaN before each launch, so an unwritten element fails the case.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.h"
#include "backend.h"
#include "common.cuh"
#include "cpu/ref_ops.h"
#include "dense.h"
#include "embedding.h"
#include "logits.h"
#include "norm_rope.h"
#include "op_test.h"
#include "wgmma.cuh"

namespace hm::optest {
namespace {

#define C_CHECK(expr)                                                                                   \
  do {                                                                                                  \
    cudaError_t e_ = (expr);                                                                            \
    if (e_ != cudaSuccess) throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(e_)); \
  } while (0)

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { C_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T))); }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) { C_CHECK(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice)); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  void poison() { C_CHECK(cudaMemset(p, 0xff, n * sizeof(T))); }  // NaN for floats, -1 for ints
  std::vector<T> get() const {
    std::vector<T> h(n);
    C_CHECK(cudaDeviceSynchronize());
    C_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

// Fast seeded uniform [-a, a) for large arrays (mt19937 normal is too slow for 579 M values).
std::vector<float> uniform(size_t n, uint64_t seed, float a = 1.f) {
  std::vector<float> v(n);
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (auto& x : v) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x = (float(s >> 40) * (2.0f / 16777216.0f) - 1.0f) * a;
  }
  return v;
}
std::vector<uint16_t> to_bf16(const std::vector<float>& f) {
  std::vector<uint16_t> b(f.size());
  for (size_t i = 0; i < f.size(); i++) b[i] = ref::f32_to_bf16(f[i]);
  return b;
}
std::vector<float> widen(const std::vector<uint16_t>& b) {
  std::vector<float> f(b.size());
  for (size_t i = 0; i < b.size(); i++) f[i] = ref::bf16_to_f32(b[i]);
  return f;
}
Result nmse_result(const std::string& params, const std::vector<float>& got, const std::vector<float>& want,
                   double tol) {
  Result r;
  r.params = params;
  r.metric = "nmse";
  r.tolerance = tol;
  r.error = nmse(got.data(), want.data(), want.size(), &r.nan_or_inf);
  return r;
}

// ---- embedding ----
std::vector<Result> test_embedding() {
  std::vector<Result> out;
  for (auto [V, H, T] : {std::tuple{1000, 2880, 7}, std::tuple{257, 72, 1}}) {
    auto table = to_bf16(uniform(size_t(V) * H, 1));
    std::vector<int32_t> ids(T);
    for (int i = 0; i < T; i++) ids[i] = (i * 131 + 7) % V;
    ids[T - 1] = V - 1;
    std::vector<float> want(size_t(T) * H);
    ref::embedding(table.data(), ids.data(), T, H, want.data());
    Dev<uint16_t> dt(table);
    Dev<int32_t> di(ids);
    Dev<float> dx(size_t(T) * H);
    dx.poison();
    cuda::EmbeddingParams p;
    p.table = dt.p, p.ids = di.p, p.x = dx.p, p.T = T, p.H = H, p.V = V;
    cuda::embedding(p, nullptr);
    Result r;
    r.params = "V=" + std::to_string(V) + " H=" + std::to_string(H) + " T=" + std::to_string(T);
    r.metric = "max_abs_rel";
    r.error = max_abs_rel(dx.get().data(), want.data(), want.size(), &r.nan_or_inf);
    r.tolerance = 0;
    out.push_back(r);
  }
  return out;
}
HM_OP_TEST("embedding", test_embedding);

// ---- rmsnorm ----
std::vector<Result> test_rmsnorm() {
  std::vector<Result> out;
  // 2880 and 4096 (3 and 4 float4s a thread), 1000 (250 float4s, a partial warp), 64, 1002 (the scalar loop).
  for (auto [T, H, gather] : {std::tuple{5, 2880, false}, std::tuple{3, 1000, false}, std::tuple{4, 2880, true},
                              std::tuple{3, 4096, false}, std::tuple{2, 64, false}, std::tuple{3, 1002, false},
                              std::tuple{257, 2880, false}}) {
    const int rows_in = gather ? 9 : T;
    auto x = uniform(size_t(rows_in) * H, 2, 3.f);
    auto w = to_bf16(uniform(H, 3, 0.5f));
    for (auto& v : w) v = ref::f32_to_bf16(1.f + ref::bf16_to_f32(v));
    std::vector<int32_t> rows = {8, 0, 5, 2};
    std::vector<float> xin(size_t(T) * H);
    for (int t = 0; t < T; t++)
      std::copy_n(x.begin() + size_t(gather ? rows[t] : t) * H, H, xin.begin() + size_t(t) * H);
    std::vector<float> want(size_t(T) * H);
    ref::rmsnorm(xin.data(), w.data(), T, H, 1e-5f, want.data());
    Dev<float> dx(x);
    Dev<uint16_t> dw(w), dout(size_t(T) * H), dlo(size_t(T) * H);
    Dev<int32_t> drows(rows);
    dout.poison();
    dlo.poison();
    cuda::RmsNormParams p;
    p.x = dx.p, p.w = dw.p, p.out = dout.p, p.out_lo = dlo.p, p.T = T, p.H = H, p.eps = 1e-5f;
    if (gather) p.rows = drows.p;
    cuda::rmsnorm(p, nullptr);
    const std::string params = "T=" + std::to_string(T) + " H=" + std::to_string(H) + (gather ? " gather" : "");
    auto hi = widen(dout.get()), lo = widen(dlo.get());
    out.push_back(nmse_result(params, hi, want, 1e-5));
    for (size_t i = 0; i < hi.size(); i++) hi[i] += lo[i];
    out.push_back(nmse_result(params + " hi+lo", hi, want, 1e-9));
  }
  return out;
}
HM_OP_TEST("rmsnorm", test_rmsnorm);

// ---- rope + kv write ----
// gpt-oss's published YaRN settings (docs/model.md): the shape the rope kernels are tested at.
RopeConfig gpt_oss_rope() {
  RopeConfig rc;
  rc.theta = 150000.0;
  rc.yarn = true;
  rc.factor = 32.0;
  rc.original_max_positions = 4096.0;
  rc.beta_fast = 32.0;
  rc.beta_slow = 1.0;
  return rc;
}

std::vector<Result> test_rope_kv() {
  std::vector<Result> out;
  const int nq = 64, nkv = 8, D = 64, bs = 16, nblocks = 8;
  const RopeConfig rc = gpt_oss_rope();
  std::vector<float> inv(D / 2);
  float af = 1.f;
  ref::rope_inv_freq(rc, D, inv.data(), &af);
  std::vector<int32_t> pos = {0, 1, 127, 128, 129, 4095, 50000, 131071};
  const int T = int(pos.size());
  const int W = (nq + 2 * nkv) * D;
  auto qkv = uniform(size_t(T) * W, 4, 2.f);
  std::vector<int32_t> slot(T);
  for (int t = 0; t < T; t++) slot[t] = (t * 37 + 3) % (nblocks * bs);
  slot[2] = -1;  // not written
  // reference: rotate q and k
  std::vector<float> q(size_t(T) * nq * D), k(size_t(T) * nkv * D), v(size_t(T) * nkv * D);
  for (int t = 0; t < T; t++) {
    std::copy_n(qkv.begin() + size_t(t) * W, nq * D, q.begin() + size_t(t) * nq * D);
    std::copy_n(qkv.begin() + size_t(t) * W + nq * D, nkv * D, k.begin() + size_t(t) * nkv * D);
    std::copy_n(qkv.begin() + size_t(t) * W + (nq + nkv) * D, nkv * D, v.begin() + size_t(t) * nkv * D);
  }
  ref::rope(q.data(), pos.data(), T, nq, D, inv.data(), af);
  ref::rope(k.data(), pos.data(), T, nkv, D, inv.data(), af);
  Dev<float> dqkv(qkv), dinv(inv);
  Dev<int32_t> dpos(pos), dslot(slot);
  const size_t cache_elems = size_t(nblocks) * bs * nkv * D;
  Dev<uint16_t> kc(cache_elems), vc(cache_elems);
  kc.poison();
  vc.poison();
  cuda::RopeKvParams p;
  p.qkv = dqkv.p, p.pos = dpos.p, p.slot = dslot.p, p.inv_freq = dinv.p, p.attn_factor = af;
  p.k_cache = kc.p, p.v_cache = vc.p, p.T = T, p.nq = nq, p.nkv = nkv, p.D = D;
  cuda::rope_kv_write(p, nullptr);
  auto got = dqkv.get();
  std::vector<float> gq(q.size());
  for (int t = 0; t < T; t++) std::copy_n(got.begin() + size_t(t) * W, nq * D, gq.begin() + size_t(t) * nq * D);
  out.push_back(nmse_result("q nq=64 D=64 pos<=131071", gq, q, 1e-8));
  auto hk = widen(kc.get()), hv = widen(vc.get());
  std::vector<float> gk, wk, gv, wv;
  for (int t = 0; t < T; t++) {
    if (slot[t] < 0) continue;
    for (int e = 0; e < nkv * D; e++) {
      gk.push_back(hk[size_t(slot[t]) * nkv * D + e]);
      wk.push_back(k[size_t(t) * nkv * D + e]);
      gv.push_back(hv[size_t(slot[t]) * nkv * D + e]);
      wv.push_back(v[size_t(t) * nkv * D + e]);
    }
  }
  out.push_back(nmse_result("k cache nkv=8 (bf16)", gk, wk, 1e-5));
  out.push_back(nmse_result("v cache nkv=8 (bf16)", gv, wv, 1e-5));
  // the skipped slot stays poisoned (0xffff)
  Result r;
  r.params = "slot -1 not written";
  r.metric = "exact";
  r.tolerance = 0;
  const uint16_t* raw = nullptr;
  auto kraw = kc.get();
  raw = kraw.data();
  int written = 0;
  for (int s = 0; s < nblocks * bs; s++) {
    bool used = false;
    for (int t = 0; t < T; t++) used |= slot[t] == s;
    if (!used && raw[size_t(s) * nkv * D] != 0xffff) written++;
  }
  r.error = written;
  out.push_back(r);
  return out;
}
HM_OP_TEST("rope_kv_write", test_rope_kv);

// ---- dense ----
std::vector<Result> test_dense() {
  std::vector<Result> out;
  struct Case { int T, N, K; bool acc; int path; bool lo = false; };
  const Case cases[] = {{1, 5120, 2880, false, 1},     {3, 2880, 4096, true, 1},   {8, 1000, 72, false, 1},
                        {5, 201088, 2880, false, 1},   {9, 5120, 2880, false, 2},  {64, 2880, 4096, true, 2},
                        {130, 1000, 72, false, 2},     {2, 333, 2880, true, 2},    {17, 201088, 2880, false, 2},
                        {1, 5120, 2880, false, 1, true}, {7, 32, 2880, false, 1, true}, {100, 5120, 2880, false, 2, true},
                        {33, 128, 2880, false, 2, true}, {80, 320, 128, false, 2, true}};
  // The router's shapes on the one-block-per-row GEMV (N <= 256): E = 32 and 128 rows, fp32-grade input, T = 1..8.
  std::vector<Case> all(std::begin(cases), std::end(cases));
  for (int E : {32, 128})
    for (int T = 1; T <= 8; T++) all.push_back({T, E, 2880, T == 3, 1, true});
  all.push_back({2, 256, 4096, true, 1});
  uint64_t seed = 10;
  for (const Case& c : all) {
    // With x_lo: x is an fp32 input split into bf16 hi + lo, and the reference sees hi + lo exactly.
    const auto xf = uniform(size_t(c.T) * c.K, seed++);
    auto x = to_bf16(xf);
    std::vector<uint16_t> xlo(x.size());
    for (size_t i = 0; i < x.size(); i++) xlo[i] = ref::f32_to_bf16(xf[i] - ref::bf16_to_f32(x[i]));
    std::vector<float> xin = widen(x);
    if (c.lo)
      for (size_t i = 0; i < x.size(); i++) xin[i] += ref::bf16_to_f32(xlo[i]);
    auto W = to_bf16(uniform(size_t(c.N) * c.K, seed++, std::sqrt(3.f / c.K)));
    auto b = to_bf16(uniform(c.N, seed++, 0.1f));
    auto y0 = uniform(size_t(c.T) * c.N, seed++);
    std::vector<float> want(size_t(c.T) * c.N);
    ref::linear(xin.data(), W.data(), b.data(), c.T, c.K, c.N, want.data());
    if (c.acc)
      for (size_t i = 0; i < want.size(); i++) want[i] += y0[i];
    Dev<uint16_t> dx(x), dxlo(xlo), dW(W), db(b);
    Dev<float> dy(y0);
    if (!c.acc) dy.poison();
    cuda::DenseParams p;
    if (c.lo) p.x_lo = dxlo.p;
    p.x = dx.p, p.W = dW.p, p.b = db.p, p.y = dy.p, p.T = c.T, p.N = c.N, p.K = c.K, p.ldx = c.K, p.ldy = c.N;
    p.accumulate = c.acc;
    p.force_path = c.path;
    p.split_k = 1;  // the prefix check below is the batch-invariant claim: no K split (dense_wgmma checks those)
    cuda::dense(p, nullptr);
    char params[96];
    std::snprintf(params, sizeof params, "%s T=%d N=%d K=%d%s%s", c.path == 1 ? "gemv" : "mma", c.T, c.N, c.K,
                  c.acc ? " +=" : "", c.lo ? " x+x_lo" : "");
    const auto y = dy.get();
    out.push_back(nmse_result(params, y, want, 1e-6));
    if (c.acc)
      C_CHECK(cudaMemcpy(dy.p, y0.data(), y0.size() * 4, cudaMemcpyHostToDevice));
    else
      dy.poison();
    cuda::dense(p, nullptr);
    out.push_back(repeat_bits(params, y, dy.get()));
    if (c.T >= 2 && !c.acc) {  // batch invariance: the first T/2 rows alone give the same bits
      dy.poison();
      p.T = c.T / 2;
      cuda::dense(p, nullptr);
      const auto part = dy.get();
      const size_t m = size_t(p.T) * c.N;
      Result inv = repeat_bits(params + std::string(" first T/2 alone"), std::vector<float>(y.begin(), y.begin() + m),
                               std::vector<float>(part.begin(), part.begin() + m));
      inv.metric = "prefix_bits";
      out.push_back(inv);
    }
  }
  return out;
}
HM_OP_TEST("dense", test_dense);

// ---- dense on wgmma (sm_90 only) ----
// Every tile shape against the mma.sync kernel bit for bit (metric mma_bits, tolerance 0: the claim that lets
// batch-invariant mode take either), vs ref::linear (nmse 1e-6) where the CPU reference is quick, and repeat bits.
// Real shapes (q/k/v with x + x_lo, o +=, routers 32 / 128, lm_head rows) at batched-decode and prefill token
// counts, and ragged ones (odd N, T not a multiple of any tile).
std::vector<Result> test_dense_wgmma() {
  std::vector<Result> out;
  {
    cuda::DenseParams probe;
    probe.K = 64;
    if (!cuda::dense_wgmma_ok(probe)) return out;  // not an sm_90 device: nothing to compare
  }
  struct Case { int T, N, K; bool acc, lo; };
  const Case cases[] = {{9, 5120, 2880, false, true},   {17, 2880, 4096, true, false},  {64, 5120, 2880, false, true},
                        {64, 2880, 4096, true, false},  {64, 32, 2880, false, true},    {255, 128, 2880, false, true},
                        {256, 5120, 2880, false, true}, {130, 1000, 128, false, false}, {33, 333, 64, true, false},
                        {2048, 5120, 2880, false, true}, {2048, 2880, 4096, true, false}, {2048, 32, 2880, false, true},
                        {17, 201088, 2880, false, false}};
  uint64_t seed = 900;
  for (const Case& c : cases) {
    const auto xf = uniform(size_t(c.T) * c.K, seed++);
    auto x = to_bf16(xf);
    std::vector<uint16_t> xlo(x.size());
    for (size_t i = 0; i < x.size(); i++) xlo[i] = ref::f32_to_bf16(xf[i] - ref::bf16_to_f32(x[i]));
    auto W = to_bf16(uniform(size_t(c.N) * c.K, seed++, std::sqrt(3.f / c.K)));
    auto b = to_bf16(uniform(c.N, seed++, 0.1f));
    auto y0 = uniform(size_t(c.T) * c.N, seed++);
    Dev<uint16_t> dx(x), dxlo(xlo), dW(W), db(b);
    Dev<float> dy(y0);
    cuda::DenseParams p;
    if (c.lo) p.x_lo = dxlo.p;
    p.x = dx.p, p.W = dW.p, p.b = db.p, p.y = dy.p, p.T = c.T, p.N = c.N, p.K = c.K, p.ldx = c.K, p.ldy = c.N;
    p.accumulate = c.acc;
    p.force_path = 2;
    auto run = [&](int gemm, int tile, int split = 1) {
      if (c.acc)
        C_CHECK(cudaMemcpy(dy.p, y0.data(), y0.size() * 4, cudaMemcpyHostToDevice));
      else
        dy.poison();
      p.gemm = gemm;
      p.wgmma_tile = tile;
      p.split_k = split;
      cuda::dense(p, nullptr);
      return dy.get();
    };
    const auto want_bits = run(1, -1);
    char base[96];
    std::snprintf(base, sizeof base, "T=%d N=%d K=%d%s%s", c.T, c.N, c.K, c.acc ? " +=" : "", c.lo ? " x+x_lo" : "");
    if (double(c.T) * c.N * c.K <= 1.5e9) {
      std::vector<float> xin = widen(x);
      if (c.lo)
        for (size_t i = 0; i < x.size(); i++) xin[i] += ref::bf16_to_f32(xlo[i]);
      std::vector<float> want(size_t(c.T) * c.N);
      ref::linear(xin.data(), W.data(), b.data(), c.T, c.K, c.N, want.data());
      if (c.acc)
        for (size_t i = 0; i < want.size(); i++) want[i] += y0[i];
      out.push_back(nmse_result(std::string("wgmma auto ") + base, run(2, -1), want, 1e-6));
      // K split in a cluster (the pick, then 2..4 forced): the reference's tolerance, and the same bits twice.
      for (int split : {0, 2, 3, 4}) {
        char params[128];
        std::snprintf(params, sizeof params, "wgmma split %s %s", split ? std::to_string(split).c_str() : "auto", base);
        const auto got = run(2, -1, split);
        out.push_back(nmse_result(params, got, want, 1e-6));
        out.push_back(repeat_bits(params, got, run(2, -1, split)));
      }
    }
    auto bits_vs_mma = [&](const char* params, const std::vector<float>& got) {  // tolerance 0, NaN / Inf flagged
      Result r = repeat_bits(params, want_bits, got);
      r.metric = "mma_bits";
      for (float v : got)
        if (!std::isfinite(v)) r.nan_or_inf = true;
      out.push_back(r);
    };
    for (int tile = -1; tile < cuda::dense_wgmma_tiles(); tile++) {
      int nwg = 0, bn = 0;
      if (tile >= 0) cuda::dense_wgmma_tile_shape(tile, nwg, bn);
      char params[128];
      if (tile < 0)
        std::snprintf(params, sizeof params, "wgmma auto %s", base);
      else
        std::snprintf(params, sizeof params, "wgmma %dx%d %s", 64 * nwg, bn, base);
      const auto got = run(2, tile);
      bits_vs_mma(params, got);
      if (tile < 0) out.push_back(repeat_bits(params, got, run(2, tile)));
    }
    // The TMA-fed kernel (gemm 3): its pick, the 256-token tile (without x_lo) and the 128-token one.
    for (int tile : {-1, 0, 1}) {
      if (tile == 0 && c.lo) continue;
      char params[128];
      std::snprintf(params, sizeof params, "tma %s %s", tile < 0 ? "auto" : tile == 0 ? "128x256" : "128x128", base);
      const auto got = run(3, tile);
      bits_vs_mma(params, got);
      if (tile < 0) out.push_back(repeat_bits(params, got, run(3, tile)));
    }
  }
  return out;
}
HM_OP_TEST("dense_wgmma", test_dense_wgmma);

// ---- dense with the RMSNorm fused in (decode path) ----
std::vector<Result> test_dense_norm() {
  std::vector<Result> out;
  struct Case { int T, N, K; bool acc; };
  uint64_t seed = 300;
  std::vector<Case> cases = {Case{1, 5120, 2880, false}, Case{8, 128, 2880, false}, Case{3, 2880, 2880, true},
                             Case{2, 4, 64, false},      Case{5, 320, 128, false},  Case{8, 5120, 2880, false},
                             Case{4, 257, 2880, false}};
  // The router (one block per row for N <= 256, norm_out written in slices by every block): E = 32 and 128, T = 1..8.
  for (int E : {32, 128})
    for (int T = 1; T <= 8; T++) cases.push_back({T, E, 2880, false});
  for (const Case& c : cases) {
    auto x = uniform(size_t(c.T) * c.K, seed++, 3.f);
    auto nw = to_bf16(uniform(c.K, seed++, 0.5f));
    for (auto& v : nw) v = ref::f32_to_bf16(1.f + ref::bf16_to_f32(v));
    auto W = to_bf16(uniform(size_t(c.N) * c.K, seed++, std::sqrt(3.f / c.K)));
    auto b = to_bf16(uniform(c.N, seed++, 0.1f));
    auto y0 = uniform(size_t(c.T) * c.N, seed++);
    std::vector<float> xn(x.size()), want(size_t(c.T) * c.N);
    ref::rmsnorm(x.data(), nw.data(), c.T, c.K, 1e-5f, xn.data());
    ref::linear(xn.data(), W.data(), b.data(), c.T, c.K, c.N, want.data());
    if (c.acc)
      for (size_t i = 0; i < want.size(); i++) want[i] += y0[i];
    Dev<float> dx(x), dy(y0);
    Dev<uint16_t> dnw(nw), dW(W), db(b), dnorm(x.size());
    if (!c.acc) dy.poison();
    dnorm.poison();
    cuda::DenseParams p;
    p.norm_x = dx.p, p.norm_w = dnw.p, p.norm_eps = 1e-5f, p.norm_out = dnorm.p;
    p.W = dW.p, p.b = db.p, p.y = dy.p, p.T = c.T, p.N = c.N, p.K = c.K, p.ldy = c.N, p.accumulate = c.acc;
    cuda::dense(p, nullptr);
    char params[96];
    std::snprintf(params, sizeof params, "T=%d N=%d K=%d%s", c.T, c.N, c.K, c.acc ? " +=" : "");
    out.push_back(nmse_result(params, dy.get(), want, 1e-6));
    out.push_back(nmse_result(std::string(params) + " norm_out", widen(dnorm.get()), xn, 1e-5));
  }
  return out;
}
HM_OP_TEST("dense_rmsnorm", test_dense_norm);

// ---- decode GEMV variants at the real shapes ----
// Every GEMV variant (gemv_stage 0 / 4 / 8 / 12 / 16 for N > 256, the one-block-per-row kernel for N <= 256) against
// the CPU twin, T = 1..8, outputs and norm_out poisoned before each launch. The staged kernels consume each lane's
// chunks in the unstaged kernel's order on the same fp32 inputs, so without the fused norm (whose sums of squares
// they add in an order of their own) they must also equal it bit for bit ("bits_vs_unstaged").
struct GemvCase {
  int N, K;
  bool norm, lo, acc;
  std::vector<int> Ts;
};
std::vector<Result> test_dense_decode() {
  std::vector<Result> out;
  const std::vector<int> all_t = {1, 2, 3, 4, 5, 6, 7, 8};
  const GemvCase cases[] = {
      {5120, 2880, true, false, false, all_t},  // q/k/v with the fused norm (decode)
      {5120, 2880, false, true, false, all_t},  // q/k/v on x + x_lo
      {2880, 4096, false, false, true, all_t},  // o with the residual add
      {128, 2880, true, false, false, all_t},   // routers with the fused norm and norm_out
      {32, 2880, true, false, false, all_t},
      {128, 2880, false, true, false, all_t},   // routers on x + x_lo
      {32, 2880, false, true, true, {1, 3, 8}},
      {201088, 2880, false, false, false, {1, 8}},  // lm_head
      {333, 2880, true, false, true, {3, 8}},       // odd shapes: last block partial, few chunks, K past 64 x 8
      {1000, 72, false, true, false, {1, 8}},
      {257, 4104, false, false, false, {2, 7}},
      {200, 4104, true, false, false, {1, 5}},
      {5, 64, true, false, false, {1, 4}},
      {3, 8, false, true, true, {2}},
      {256, 4096, false, true, true, {8}}};
  uint64_t seed = 900;
  for (const GemvCase& c : cases)
    for (int T : c.Ts) {
      const size_t TK = size_t(T) * c.K, TN = size_t(T) * c.N;
      std::vector<float> xn(TK), want(TN);
      std::vector<float> xf = uniform(TK, seed++, c.norm ? 3.f : 1.f);
      auto nw = to_bf16(uniform(c.K, seed++, 0.5f));
      for (auto& v : nw) v = ref::f32_to_bf16(1.f + ref::bf16_to_f32(v));
      auto x = to_bf16(xf);
      std::vector<uint16_t> xlo(TK);
      for (size_t i = 0; i < TK; i++) xlo[i] = ref::f32_to_bf16(xf[i] - ref::bf16_to_f32(x[i]));
      if (c.norm) {
        ref::rmsnorm(xf.data(), nw.data(), T, c.K, 1e-5f, xn.data());
      } else {
        xn = widen(x);
        if (c.lo)
          for (size_t i = 0; i < TK; i++) xn[i] += ref::bf16_to_f32(xlo[i]);
      }
      auto W = to_bf16(uniform(size_t(c.N) * c.K, seed++, std::sqrt(3.f / c.K)));
      auto b = to_bf16(uniform(c.N, seed++, 0.1f));
      auto y0 = uniform(TN, seed++);
      ref::linear(xn.data(), W.data(), b.data(), T, c.K, c.N, want.data());
      if (c.acc)
        for (size_t i = 0; i < TN; i++) want[i] += y0[i];
      Dev<float> dxf(xf), dy(TN);
      Dev<uint16_t> dx(x), dxlo(xlo), dnw(nw), dW(W), db(b), dnorm(TK);
      cuda::DenseParams p;
      if (c.norm) {
        p.norm_x = dxf.p, p.norm_w = dnw.p, p.norm_eps = 1e-5f, p.norm_out = dnorm.p;
      } else {
        p.x = dx.p, p.ldx = c.K;
        if (c.lo) p.x_lo = dxlo.p;
      }
      p.W = dW.p, p.b = db.p, p.y = dy.p, p.T = T, p.N = c.N, p.K = c.K, p.ldy = c.N, p.accumulate = c.acc;
      p.force_path = 1;
      const bool few = c.N <= 256;
      std::vector<int> variants = few ? std::vector<int>{-1} : std::vector<int>{0, 4, 8, 12, 16};
      if (c.N > 100000) variants = {0, 8};
      std::vector<float> unstaged;
      for (int v : variants) {
        p.gemv_stage = v;
        if (c.acc)
          C_CHECK(cudaMemcpy(dy.p, y0.data(), TN * 4, cudaMemcpyHostToDevice));
        else
          dy.poison();
        dnorm.poison();
        cuda::dense(p, nullptr);
        char params[128];
        std::snprintf(params, sizeof params, "stage=%d T=%d N=%d K=%d%s%s%s", v, T, c.N, c.K,
                      c.norm ? " norm" : "", c.lo ? " x+x_lo" : "", c.acc ? " +=" : "");
        const auto y = dy.get();
        out.push_back(nmse_result(params, y, want, 1e-6));
        if (c.norm) out.push_back(nmse_result(std::string(params) + " norm_out", widen(dnorm.get()), xn, 1e-5));
        if (!few && v == 0) unstaged = y;
        if (!few && v != 0 && !c.norm) {
          Result r = repeat_bits(std::string(params) + " vs stage=0", unstaged, y);
          r.metric = "bits_vs_unstaged";
          out.push_back(r);
        }
      }
    }
  return out;
}
HM_OP_TEST("dense_decode", test_dense_decode);

// ---- decode GEMV timings (HM_OP_BENCH=1) ----
// Each variant inside a CUDA graph with PDL, as the decode step runs it: `iters` launches, each after a ~10 us
// spin kernel (waits on its predecessor, triggers at once), the weights rotated over enough copies (>= 256 MB) that
// none is L2-resident. Printed per launch: "alone" (a graph of back-to-back launches of the variant, PDL between
// them) and "+after spin" (graph of spin + variant minus a graph of the spins alone: what the projection adds to
// the step when its predecessor leaves it time to stream its weights before pdl_wait). HM_BENCH_SPIN_MAXSMEM=1 runs
// the spin kernel with the most shared memory in its carveout, as the staged kernels do.
__global__ void spin_kernel(long long cycles) {
  cuda::pdl_wait();
  cuda::pdl_trigger();
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

float graph_us(cudaStream_t s, int iters, const std::function<void(int)>& body) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  C_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < iters; i++) body(i);
  C_CHECK(cudaStreamEndCapture(s, &g));
  C_CHECK(cudaGraphInstantiate(&ge, g, 0));
  C_CHECK(cudaGraphLaunch(ge, s));
  cudaEvent_t e0, e1;
  C_CHECK(cudaEventCreate(&e0));
  C_CHECK(cudaEventCreate(&e1));
  const int reps = 5;
  C_CHECK(cudaEventRecord(e0, s));
  for (int r = 0; r < reps; r++) C_CHECK(cudaGraphLaunch(ge, s));
  C_CHECK(cudaEventRecord(e1, s));
  C_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  C_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  return ms * 1000 / (reps * iters);
}

std::vector<Result> bench_dense() {
  const char* env = std::getenv("HM_OP_BENCH");
  if (!env || std::strcmp(env, "1") != 0) return {};
  struct Shape {
    const char* name;
    int N, K;
    bool norm, lo, acc;
    std::vector<int> variants;
  };
  const Shape shapes[] = {{"qkv+norm", 5120, 2880, true, false, false, {0, 4, 8, 12}},
                          {"qkv x+lo", 5120, 2880, false, true, false, {0, 8}},
                          {"o +=", 2880, 4096, false, false, true, {0, 8, 12, 16}},
                          {"router128+norm", 128, 2880, true, false, false, {-1}},
                          {"router32+norm", 32, 2880, true, false, false, {-1}},
                          {"router128 x+lo", 128, 2880, false, true, false, {-1}},
                          {"lm_head", 201088, 2880, false, false, false, {0, 4, 8}}};
  cudaStream_t s;
  C_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  int dev = 0, khz = 0;
  C_CHECK(cudaGetDevice(&dev));
  C_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev));
  const long long spin_cycles = 10LL * khz / 1000;  // ~10 us
  auto spin = [&] { cuda::launch(spin_kernel, dim3(132), dim3(64), 0, s, true, spin_cycles); };
  // The spin kernel at the default carveout, then ("spin@maxsmem") at the most shared memory: a predecessor whose
  // L1 / shared split differs from the projection's may keep its blocks off the SM until it drains.
  const bool smem_spin = std::getenv("HM_BENCH_SPIN_MAXSMEM") != nullptr;
  if (smem_spin)
    C_CHECK(cudaFuncSetAttribute(spin_kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 int(cudaSharedmemCarveoutMaxShared)));
  std::printf("-- decode GEMV timings (graph + PDL, weights rotated past L2; us per launch; spin carveout %s) --\n",
              smem_spin ? "max shared" : "default");
  for (const Shape& sh : shapes) {
    const size_t wbytes = size_t(sh.N) * sh.K * 2;
    const int copies = int(std::max<size_t>(2, (size_t(256) << 20) / wbytes + 1));
    const int iters = sh.N > 100000 ? 8 : 40;
    Dev<uint16_t> W(wbytes / 2 * copies), x(8 * size_t(sh.K)), xlo(8 * size_t(sh.K)), nw(sh.K), b(sh.N), norm(8 * size_t(sh.K));
    Dev<float> xf(8 * size_t(sh.K)), y(8 * size_t(sh.N));
    C_CHECK(cudaMemset(W.p, 0x3c, W.n * 2));
    C_CHECK(cudaMemset(x.p, 0x3c, x.n * 2));
    C_CHECK(cudaMemset(xlo.p, 0x1c, xlo.n * 2));
    C_CHECK(cudaMemset(nw.p, 0x3f, nw.n * 2));
    C_CHECK(cudaMemset(b.p, 0, b.n * 2));
    C_CHECK(cudaMemset(xf.p, 0x3c, xf.n * 4));
    C_CHECK(cudaMemset(y.p, 0, y.n * 4));
    for (int T : {1, 8}) {
      const float t_spin = graph_us(s, iters, [&](int) { spin(); });
      for (int v : sh.variants) {
        cuda::DenseParams p;
        if (sh.norm) {
          p.norm_x = xf.p, p.norm_w = nw.p, p.norm_out = norm.p;
        } else {
          p.x = x.p, p.ldx = sh.K;
          if (sh.lo) p.x_lo = xlo.p;
        }
        p.b = b.p, p.y = y.p, p.T = T, p.N = sh.N, p.K = sh.K, p.ldy = sh.N, p.accumulate = sh.acc, p.pdl = true;
        p.force_path = 1;
        p.gemv_stage = v;
        auto run = [&](int i) {
          p.W = W.p + size_t(i % copies) * (wbytes / 2);
          cuda::dense(p, s);
        };
        run(0);  // eager once: any one-time set-up (shared-memory opt-in) outside the capture
        C_CHECK(cudaStreamSynchronize(s));
        const float alone = graph_us(s, iters, run);
        const float after = graph_us(s, iters, [&](int i) {
          spin();
          run(i);
        }) - t_spin;
        std::printf("%-15s T=%d stage=%-2d: alone %7.2f us (%5.2f TB/s)   +after spin %7.2f us\n", sh.name, T, v,
                    alone, wbytes / (alone * 1e6), after);
      }
    }
  }
  C_CHECK(cudaStreamDestroy(s));
  return {};
}
HM_OP_TEST("bench_dense", bench_dense);

// HM_OP_BENCH=1 only: the tensor-core GEMMs at batched-decode and prefill token counts, mma.sync against wgmma
// (auto tile and every tile), in a CUDA graph with PDL, weights rotated past L2: us, TB/s of the weights, TFLOP/s
// (the x_lo shapes count their second MMA: the tensor work they do).
std::vector<Result> bench_dense_gemm() {
  const char* env = std::getenv("HM_OP_BENCH");
  if (!env || std::strcmp(env, "1") != 0) return {};
  struct Shape {
    const char* name;
    int N, K;
    bool lo, acc;
  };
  // "o =" and "qkv x only" separate the += epilogue and x_lo from the loop (NOTES session 17).
  const Shape shapes[] = {{"qkv x+lo", 5120, 2880, true, false},   {"o +=", 2880, 4096, false, true},
                          {"o =", 2880, 4096, false, false},        {"qkv x only", 5120, 2880, false, false},
                          {"router32 x+lo", 32, 2880, true, false}, {"router128 x+lo", 128, 2880, true, false}};
  cudaStream_t s;
  C_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::printf("-- dense tensor-core GEMMs (graph + PDL, weights rotated past L2; us per launch) --\n");
  const int maxT = 8192;
  for (const Shape& sh : shapes) {
    const size_t wbytes = size_t(sh.N) * sh.K * 2;
    const int copies = int(std::max<size_t>(2, (size_t(256) << 20) / wbytes + 1));
    Dev<uint16_t> W(wbytes / 2 * copies), x(maxT * size_t(sh.K)), xlo(maxT * size_t(sh.K)), b(sh.N);
    Dev<float> y(maxT * size_t(sh.N));
    C_CHECK(cudaMemset(W.p, 0x3c, W.n * 2));
    C_CHECK(cudaMemset(x.p, 0x3c, x.n * 2));
    C_CHECK(cudaMemset(xlo.p, 0x1c, xlo.n * 2));
    C_CHECK(cudaMemset(b.p, 0, b.n * 2));
    C_CHECK(cudaMemset(y.p, 0, y.n * 4));
    for (int T : {16, 64, 256, 512, 1024, 2048, 8192}) {
      if (T > 2048 && sh.N < 1024) continue;  // the routers: no prompt step is that long a row
      const int iters = T >= 2048 ? 10 : 40;
      // -8..-6: the TMA kernel's 128-token tile, 256-token tile, pick; -5..-3: wgmma's tile split 2..4, -2:
      // mma.sync, -1: wgmma's pick (split by shape), else that tile
      for (int v = -8; v < cuda::dense_wgmma_tiles(); v++) {
        int nwg_v = 0, bn_v = 0;
        if (v >= 0) cuda::dense_wgmma_tile_shape(v, nwg_v, bn_v);
        if (bn_v > 128 && (sh.lo || T < 256)) continue;  // the wide tiles: without x_lo only (else the 128 one runs)
        if (v == -7 && (sh.lo || T < 256)) continue;
        if (v <= -6 && T < 64) continue;
        cuda::DenseParams p;
        p.x = x.p, p.ldx = sh.K;
        if (sh.lo) p.x_lo = xlo.p;
        p.b = b.p, p.y = y.p, p.T = T, p.N = sh.N, p.K = sh.K, p.ldy = sh.N, p.accumulate = sh.acc, p.pdl = true;
        p.force_path = 2;
        p.gemm = v == -2 ? 1 : v <= -6 ? 3 : 2;
        p.wgmma_tile = v >= 0 ? v : v == -8 ? 1 : v == -7 ? 0 : -1;
        p.split_k = v <= -6 ? 1 : v <= -3 ? v + 7 : v == -1 ? 0 : 1;
        auto run = [&](int i) {
          p.W = W.p + size_t(i % copies) * (wbytes / 2);
          cuda::dense(p, s);
        };
        run(0);
        C_CHECK(cudaStreamSynchronize(s));
        const float us = graph_us(s, iters, run);
        const double flop = 2.0 * T * sh.N * sh.K * (sh.lo ? 2 : 1);
        char what[24];
        if (v <= -6) std::snprintf(what, sizeof what, "tma %s", v == -8 ? "128x128" : v == -7 ? "128x256" : "auto");
        else if (v <= -3) std::snprintf(what, sizeof what, "wgmma split %d", v + 7);
        else if (v == -2) std::snprintf(what, sizeof what, "mma.sync");
        else if (v == -1) std::snprintf(what, sizeof what, "wgmma auto");
        else {
          int nwg = 0, bn = 0;
          cuda::dense_wgmma_tile_shape(v, nwg, bn);
          std::snprintf(what, sizeof what, "wgmma %dx%d", 64 * nwg, bn);
        }
        std::printf("%-15s T=%-5d %-12s %8.2f us  %5.2f TB/s  %6.1f TFLOP/s\n", sh.name, T, what, us,
                    wbytes / (us * 1e6), flop / (us * 1e6));
      }
    }
  }
  C_CHECK(cudaStreamDestroy(s));
  return {};
}
HM_OP_TEST("bench_dense_gemm", bench_dense_gemm);

// ---- attention ----
// A paged cache of num_blocks blocks with random bf16 K/V; each sequence gets a permuted run of blocks.
struct CacheFixture {
  int nq, nkv, D, bs = 16, num_blocks, mbps, spare = 0;
  std::vector<uint16_t> k16, v16;
  std::vector<float> kf, vf;
  std::vector<int32_t> bt;  // [seqs, mbps]
  CacheFixture(int nq_, int nkv_, const std::vector<int>& ctx, uint64_t seed, int D_) : nq(nq_), nkv(nkv_), D(D_) {
    int need = 0;
    mbps = 1;
    for (int c : ctx) {
      need += (c + bs - 1) / bs;
      mbps = std::max(mbps, (c + bs - 1) / bs);
    }
    num_blocks = need + 3;
    std::vector<int32_t> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937 g{static_cast<uint32_t>(seed)};
    std::shuffle(perm.begin(), perm.end(), g);
    bt.assign(ctx.size() * mbps, 0);
    int at = 0;
    for (size_t s = 0; s < ctx.size(); s++)
      for (int j = 0; j < (ctx[s] + bs - 1) / bs; j++) bt[s * mbps + j] = perm[at++];
    spare = perm[at];
    const size_t elems = size_t(num_blocks) * bs * nkv * D;
    k16 = to_bf16(uniform(elems, seed + 1, 2.f));
    v16 = to_bf16(uniform(elems, seed + 2, 1.f));
    kf = widen(k16);
    vf = widen(v16);
  }
  // Window KV (native/kv_layout.h): a sliding layer's table entries that a step does not read (blocks wholly
  // before each sequence's window) name blocks given back to the pool, holding anything. Here they name a spare
  // block of NaNs, so a kernel that reads one (even masked: 0 x NaN) fails its case. firsts[s]: sequence s's first
  // query position. The reference reads only the window.
  void poison_outside_window(int window, const std::vector<int>& firsts) {
    if (window <= 0) return;
    const size_t per = size_t(bs) * nkv * D, at = size_t(spare) * per;
    std::fill(k16.begin() + at, k16.begin() + at + per, uint16_t(0x7FC0));
    std::fill(v16.begin() + at, v16.begin() + at + per, uint16_t(0x7FC0));
    std::fill(kf.begin() + at, kf.begin() + at + per, NAN);
    std::fill(vf.begin() + at, vf.begin() + at + per, NAN);
    for (size_t s = 0; s < firsts.size(); s++)
      for (int j = 0; j < std::max(0, firsts[s] - window + 1) / bs; j++) bt[s * mbps + j] = spare;
  }
};

// A launch the device refuses (the launcher throws) fails its case instead of ending the table.
Result launch_failure(const std::string& params, const char* what) {
  Result r;
  r.params = params + " launch: " + what;
  r.metric = "launch";
  r.error = 1;
  r.tolerance = 0;
  return r;
}

std::vector<Result> run_attention(int nq, int nkv, int window, const std::vector<int>& ctx,
                                  const std::vector<int>& new_tokens, bool prefill, uint64_t seed, int D = 64,
                                  bool all_prefill_variants = false, float q_amp = 1.f) {
  // Sequence s has ctx[s] positions in total, the last new_tokens[s] of them are this step's query tokens.
  CacheFixture f(nq, nkv, ctx, seed, D);
  std::vector<int> firsts;
  for (size_t s = 0; s < ctx.size(); s++) firsts.push_back(ctx[s] - new_tokens[s]);
  f.poison_outside_window(window, firsts);
  std::vector<int32_t> tok_seq, pos;
  for (size_t s = 0; s < ctx.size(); s++)
    for (int i = ctx[s] - new_tokens[s]; i < ctx[s]; i++) {
      tok_seq.push_back(int(s));
      pos.push_back(i);
    }
  const int T = int(pos.size());
  auto q = uniform(size_t(T) * nq * D, seed + 3, q_amp);
  auto sinks = uniform(nq, seed + 4, 2.f);
  std::vector<float> want(size_t(T) * nq * D);
  int t0 = 0;
  for (size_t s = 0; s < ctx.size(); s++) {
    ref::attention(q.data() + size_t(t0) * nq * D, f.kf.data(), f.vf.data(), f.bt.data() + s * f.mbps, f.bs,
                   pos.data() + t0, new_tokens[s], nq, nkv, D, window, sinks.data(), want.data() + size_t(t0) * nq * D);
    t0 += new_tokens[s];
  }
  Dev<float> dq(q), dsinks(sinks);
  Dev<uint16_t> dk(f.k16), dv(f.v16), dout(size_t(T) * nq * D);
  Dev<int32_t> dbt(f.bt), dseq(tok_seq), dpos(pos);
  dout.poison();
  cuda::AttentionCommon c;
  c.q = dq.p, c.ldq = nq * D, c.k_cache = dk.p, c.v_cache = dv.p, c.block_tables = dbt.p;
  c.max_blocks_per_seq = f.mbps, c.block_size = f.bs, c.tok_seq = dseq.p, c.pos = dpos.p, c.sinks = dsinks.p;
  c.out = dout.p, c.nq = nq, c.nkv = nkv, c.D = D, c.window = window, c.scale = 1.f / std::sqrt(float(D));
  std::string params = "D=" + std::to_string(D) + " nq=" + std::to_string(nq) + " nkv=" + std::to_string(nkv) + " W=" + std::to_string(window) +
                       " ctx=" + std::to_string(*std::max_element(ctx.begin(), ctx.end())) + " T=" + std::to_string(T) +
                       (q_amp != 1.f ? " q_amp=" + std::to_string(int(q_amp)) : "");
  // Sharp softmaxes (q_amp > 1: scores of std ~10) magnify the mma kernel's bf16 q and P roundings (~1e-4 nmse);
  // 1e-3 still fails a single wrong row among a few hundred.
  const double prefill_tol = q_amp > 1.f ? 1e-3 : 2e-5;
  if (prefill) {
    // Tilings of each sequence's new tokens: the backend's (16 tokens), 1-token tiles (HARMONIUM_BATCH_INVARIANT=1
    // decode) and a first tile of 5 then 16s (a prompt continued in chunks); the other two must give the first's
    // bits (metric "tile_bits": elements that differ, tolerance 0).
    auto tiling = [&](int head, int size) {
      std::vector<int32_t> tiles;
      int at = 0;
      for (size_t s = 0; s < ctx.size(); s++) {
        for (int i = 0; i < new_tokens[s];) {
          const int n = std::min(i == 0 && head ? head : size, new_tokens[s] - i);
          tiles.push_back(at + i);
          tiles.push_back(n);
          i += n;
        }
        at += new_tokens[s];
      }
      return tiles;
    };
    const std::vector<int32_t> tilings[3] = {tiling(0, cuda::kPrefillTileTokens), tiling(0, 1),
                                             tiling(5, cuda::kPrefillTileTokens)};
    std::vector<Result> out;
    // The default, then every kernel it may pick and the A/B shapes: head dim 64 the mma.sync kernel in both
    // precisions (q and P hi + lo; q hi + lo, P bf16) and, on sm_90, the wgmma one in both; other head dims the
    // tile kernel only.
    std::vector<int> variants = {cuda::kPrefillAuto, cuda::kPrefillTile};
    if (D == 64) variants.insert(variants.end(), {cuda::kPrefillMma, cuda::kPrefillMmaQlo});
    if (D == 64 && cuda::wgmma_device()) variants.insert(variants.end(), {cuda::kPrefillWgmma, cuda::kPrefillWgmmaQlo});
    if (D == 64 && all_prefill_variants)
      variants.insert(variants.end(), {cuda::kPrefillMma1b, cuda::kPrefillMma2, cuda::kPrefillMmaBf16});
    const char* names[] = {" (default)",          " (tile kernel)",        " (mma, 1 block/SM)",
                           " (mma, 2 heads/warp)", " (mma, q and P bf16)",  " (mma, q hi+lo, P bf16)",
                           " (wgmma, q and P hi+lo)", " (wgmma, q hi+lo, P bf16)", " (mma, q and P hi+lo)"};
    for (int variant : variants) {
      const std::string ps = params + names[variant];
      std::vector<uint16_t> first;
      for (int k = 0; k < 3; k++) {
        Dev<int32_t> dtiles(tilings[k]);
        cuda::AttentionPrefillParams p;
        p.c = c;
        p.tiles = dtiles.p;
        p.num_tiles = int(tilings[k].size() / 2);
        p.variant = variant;
        dout.poison();
        cuda::attention_prefill(p, nullptr);
        const auto o = dout.get();
        if (k == 0) {
          first = o;
          // The tensor-core kernels with q and P as hi + lo (and every bf16 bench variant at G != 8, which runs
          // the mma one so) leave only the bf16 output rounding (~2.7e-6, as the fp32 tile kernel); bf16 q and P (the
          // G = 8 bench variants) 4.1e-6 .. 6.4e-6, and bf16 P alone (the default) 4.1e-6 .. 6.0e-6.
          const bool bench_bf16 = variant == cuda::kPrefillMma1b || variant == cuda::kPrefillMma2 ||
                                  variant == cuda::kPrefillMmaBf16;
          const bool lo = D == 64 && (variant == cuda::kPrefillMma || variant == cuda::kPrefillWgmma ||
                                      (bench_bf16 && nq / nkv != 8));
          out.push_back(nmse_result(ps, widen(o), want, lo && q_amp == 1.f ? 4e-6 : prefill_tol));
          dout.poison();
          cuda::attention_prefill(p, nullptr);
          out.push_back(repeat_bits(ps, o, dout.get()));
        } else {
          Result r = repeat_bits(ps + (k == 1 ? " 1-token tiles" : " tiles 5+16"), first, o);
          r.metric = "tile_bits";
          out.push_back(r);
        }
      }
    }
    return out;
  }
  std::vector<Result> out;
  std::vector<int32_t> toks(T);
  std::iota(toks.begin(), toks.end(), 0);
  int max_keys = 1;
  for (int p : pos) max_keys = std::max(max_keys, window ? std::min(p + 1, window) : p + 1);
  Dev<int32_t> dtoks(toks);
  Dev<uint32_t> counters(size_t(T) * nkv);
  C_CHECK(cudaMemset(counters.p, 0, counters.n * 4));
  // one split, a few, as many as the context needs, the fill rule on an H200 (132 SMs) and the bench's fixed 256
  // keys a split (more than a sliding layer's keys at times); the merged kernel with 1, 2 and 4 head slices, the
  // previous pair and the tensor-core kernel (variant 2) and its cluster variant (3); then the planner's own plan
  // (attention_decode_plan at 132 SMs with clusters: its variant, head slices and keys per split)
  struct Kernel {
    int variant, slices;
  };
  const cuda::AttentionDecodePlan plan = cuda::attention_decode_plan(max_keys, T, nq, nkv, D, 132, 1024, true);
  for (const Kernel kn : {Kernel{0, 1}, Kernel{0, 2}, Kernel{0, 4}, Kernel{1, 1}, Kernel{2, 1}, Kernel{3, 1},
                          Kernel{4, 1}, Kernel{5, 1}, Kernel{-1, 0}}) {
    const bool planner = kn.variant < 0;
    const int variant = planner ? plan.variant : kn.variant;
    const int slices = planner ? plan.head_slices : kn.slices;
    if (variant >= 2 && D < 32) continue;  // the tensor-core kernels take head dims 32 and 64
    if (variant >= 4 && D != 64) continue;  // their ring form head dim 64
    const int planned = cuda::attention_decode_keys_per_split(max_keys, T, nkv, 132, 1024, slices > 1 ? 1 : 2);
    const int kps_cases[] = {cuda::attention_keys_per_split(max_keys, 1), cuda::attention_keys_per_split(max_keys, 7),
                             cuda::attention_keys_per_split(max_keys, 1024), planned, 256};
    for (int k = 0; k < (planner ? 1 : 5); k++) {
      if (!planner && variant == 1 && k == 3) continue;  // the pair has its own split rule, not the fill rule
      const int kps = planner ? plan.keys_per_split : kps_cases[k];
      if ((variant == 3 || variant == 5) && (max_keys + kps - 1) / kps > 8) continue;  // one cluster: at most 8 splits
      cuda::AttentionDecodeParams p;
      p.c = c;
      p.tokens = dtoks.p;
      p.num_tokens = T;
      p.keys_per_split = kps;
      p.max_splits = (max_keys + p.keys_per_split - 1) / p.keys_per_split;
      p.variant = variant;
      p.head_slices = slices;
      p.counters = counters.p;
      Dev<float> ws(cuda::attention_decode_workspace_floats(T, nq, D, p.max_splits));
      p.workspace = ws.p;
      dout.poison();
      C_CHECK(cudaMemset(ws.p, 0xff, ws.n * sizeof(float)));
      const std::string ps = params + " splits=" + std::to_string(p.max_splits) +
                             (variant == 1   ? " (previous kernel)"
                              : variant == 2 ? " (mma)"
                              : variant == 3 ? " (mma, cluster)"
                              : variant == 4 ? " (mma, ring)"
                              : variant == 5 ? " (mma, ring, cluster)"
                                             : " slices=" + std::to_string(slices)) +
                             (planner ? " planned" : "");
      try {
        cuda::attention_decode(p, nullptr);
      } catch (const std::exception& e) {
        out.push_back(launch_failure(ps, e.what()));
        continue;
      }
      const auto o = dout.get();
      out.push_back(nmse_result(ps, widen(o), want, 2e-5));
      dout.poison();
      C_CHECK(cudaMemset(ws.p, 0, ws.n * sizeof(float)));
      cuda::attention_decode(p, nullptr);
      out.push_back(repeat_bits(ps, o, dout.get()));
      if (variant != 1) {  // the arrival counters are left zero for the next launch
        const auto ctr = counters.get();
        Result r;
        r.params = ps + " counters";
        r.metric = "nonzero";
        r.error = double(std::count_if(ctr.begin(), ctr.end(), [](uint32_t x) { return x != 0; }));
        out.push_back(r);
      }
    }
  }
  return out;
}

// Context lengths of n ragged sequences decoding a token each: a spread from 1 to max_ctx (seeded).
std::vector<int> ragged(int n, int max_ctx, uint64_t seed) {
  std::mt19937 g{static_cast<uint32_t>(seed)};
  std::vector<int> ctx(n);
  for (int s = 0; s < n; s++) ctx[s] = s == 0 ? max_ctx : 1 + int(g() % uint32_t(max_ctx));
  return ctx;
}

std::vector<Result> test_attention_decode() {
  std::vector<Result> out;
  auto add = [&](std::vector<Result> r) { out.insert(out.end(), r.begin(), r.end()); };
  // several sequences decoding one token each, contexts around the window
  add(run_attention(64, 8, 0, {1, 5, 127, 128, 129, 300}, {1, 1, 1, 1, 1, 1}, false, 100));
  add(run_attention(64, 8, 128, {1, 5, 127, 128, 129, 300}, {1, 1, 1, 1, 1, 1}, false, 200));
  add(run_attention(64, 8, 0, {20000}, {1}, false, 300));
  add(run_attention(64, 8, 128, {20000}, {1}, false, 400));
  add(run_attention(6, 3, 0, {77, 1000}, {1, 1}, false, 500));
  // the decode kernel also takes several query tokens of one sequence
  add(run_attention(64, 8, 128, {200}, {5}, false, 600));
  add(run_attention(8, 2, 32, {40, 3}, {1, 1}, false, 650, 16));
  add(run_attention(8, 1, 16, {80}, {1}, false, 660, 32));
  // batch 1 at the contexts the decode planner and the key loop's edges care about, sliding and full
  for (int window : {0, 128})
    for (int ctx : {1, 17, 128, 129, 1000, 4096, 32768})
      add(run_attention(64, 8, window, {ctx}, {1}, false, 2000 + ctx + window));
  // ragged batches: 8, 64 and 256 sequences of mixed lengths (the planner takes the tensor-core kernel for the
  // 256 full-layer ones, the split + combine pair for their sliding layer)
  for (int window : {0, 128}) {
    const auto c8 = ragged(8, 4096, 41 + window), c64 = ragged(64, 2048, 42 + window);
    const auto c256 = ragged(256, 1200, 43 + window);
    add(run_attention(64, 8, window, c8, std::vector<int>(c8.size(), 1), false, 2100 + window));
    add(run_attention(64, 8, window, c64, std::vector<int>(c64.size(), 1), false, 2200 + window));
    add(run_attention(64, 8, window, c256, std::vector<int>(c256.size(), 1), false, 2250 + window));
  }
  // the decode bench's batches of 8 (HM_OP_BENCH=1 bench_attention_decode): 1024 keys sliding and full, 8192 full
  // (128 splits of 64 keys)
  const std::vector<int> one8(8, 1);
  for (int window : {0, 128}) add(run_attention(64, 8, window, std::vector<int>(8, 1024), one8, false, 2300 + window));
  add(run_attention(64, 8, 0, std::vector<int>(8, 8192), one8, false, 2400));
  return out;
}
HM_OP_TEST("attention_decode", test_attention_decode);

// ---- decode attention with RoPE + KV write fused in (AttentionDecodeParams::inv_freq) ----
// Against the unfused GPU chain (rope_kv_write, then attention_decode; both tested against the reference above) on
// the same unrotated qkv rows and cache: outputs and whole caches, one decode token per sequence.
std::vector<Result> run_attention_rope(int nq, int nkv, int D, int window, const std::vector<int>& ctx, uint64_t seed) {
  std::vector<Result> out;
  CacheFixture f(nq, nkv, ctx, seed, D);
  std::vector<int> firsts;
  for (int c : ctx) firsts.push_back(c - 1);
  f.poison_outside_window(window, firsts);
  const RopeConfig rc = gpt_oss_rope();
  std::vector<float> inv(D / 2);
  float af = 1.f;
  ref::rope_inv_freq(rc, D, inv.data(), &af);
  const int T = int(ctx.size()), W = (nq + 2 * nkv) * D;
  std::vector<int32_t> tok_seq(T), pos(T), slot(T), toks(T);
  for (int s = 0; s < T; s++) {
    tok_seq[s] = s, pos[s] = ctx[s] - 1, toks[s] = s;
    slot[s] = f.bt[size_t(s) * f.mbps + pos[s] / f.bs] * f.bs + pos[s] % f.bs;
  }
  const auto qkv = uniform(size_t(T) * W, seed + 3, 2.f);
  auto sinks = uniform(nq, seed + 4, 2.f);
  Dev<float> dinv(inv), dsinks(sinks), dq_fused(qkv), dq_chain(qkv);
  Dev<int32_t> dbt(f.bt), dseq(tok_seq), dpos(pos), dslot(slot), dtoks(toks);
  int max_keys = 1;
  for (int p : pos) max_keys = std::max(max_keys, window ? std::min(p + 1, window) : p + 1);
  // merged with 1 (0), 2, 4 head slices; the previous pair (1); the tensor-core kernel (3, head dims 32 and 64) and
  // its cluster variant (5, up to 8 splits)
  // and their ring forms (6: variant 4, 7: variant 5; head dim 64)
  for (int kn : {0, 2, 4, 1, 3, 5, 6, 7}) for (int cap : {1, 7, 1024}) {
    if (kn >= 3 && D < 32) continue;
    if (kn >= 6 && D != 64) continue;
    const int variant = kn == 1 ? 1 : kn == 3 ? 2 : kn == 5 ? 3 : kn == 6 ? 4 : kn == 7 ? 5 : 0;
    Dev<uint16_t> k1(f.k16), v1(f.v16), k2(f.k16), v2(f.v16), o1(size_t(T) * nq * D), o2(size_t(T) * nq * D);
    o1.poison();
    o2.poison();
    C_CHECK(cudaMemcpy(dq_chain.p, qkv.data(), qkv.size() * 4, cudaMemcpyHostToDevice));
    cuda::AttentionDecodeParams p;
    p.c.ldq = W, p.c.block_tables = dbt.p, p.c.max_blocks_per_seq = f.mbps, p.c.block_size = f.bs;
    p.c.tok_seq = dseq.p, p.c.pos = dpos.p, p.c.sinks = dsinks.p, p.c.nq = nq, p.c.nkv = nkv, p.c.D = D;
    p.c.window = window, p.c.scale = 1.f / std::sqrt(float(D));
    p.tokens = dtoks.p, p.num_tokens = T;
    p.keys_per_split = cuda::attention_keys_per_split(max_keys, cap);
    p.max_splits = (max_keys + p.keys_per_split - 1) / p.keys_per_split;
    if ((variant == 3 || variant == 5) && p.max_splits > 8) continue;
    Dev<float> ws(cuda::attention_decode_workspace_floats(T, nq, D, p.max_splits));
    p.workspace = ws.p;
    Dev<uint32_t> counters(size_t(T) * nkv);
    C_CHECK(cudaMemset(counters.p, 0, counters.n * 4));
    p.counters = counters.p;
    p.variant = variant;
    p.head_slices = variant == 0 ? std::max(1, kn) : 1;
    // the chain
    cuda::RopeKvParams r;
    r.qkv = dq_chain.p, r.pos = dpos.p, r.slot = dslot.p, r.inv_freq = dinv.p, r.attn_factor = af;
    r.k_cache = k1.p, r.v_cache = v1.p, r.T = T, r.nq = nq, r.nkv = nkv, r.D = D;
    cuda::rope_kv_write(r, nullptr);
    cuda::AttentionDecodeParams a = p;
    a.c.q = dq_chain.p, a.c.k_cache = k1.p, a.c.v_cache = v1.p, a.c.out = o1.p;
    std::string failed;
    try {
      cuda::attention_decode(a, nullptr);
    } catch (const std::exception& e) {
      failed = e.what();
    }
    // fused
    cuda::AttentionDecodeParams b = p;
    b.c.q = dq_fused.p, b.c.k_cache = k2.p, b.c.v_cache = v2.p, b.c.out = o2.p;
    b.inv_freq = dinv.p, b.attn_factor = af, b.slot = dslot.p;
    try {
      if (failed.empty()) cuda::attention_decode(b, nullptr);
    } catch (const std::exception& e) {
      failed = e.what();
    }
    const std::string params = "D=" + std::to_string(D) + " nq=" + std::to_string(nq) + " nkv=" +
                               std::to_string(nkv) + " W=" + std::to_string(window) + " ctx=" +
                               std::to_string(*std::max_element(ctx.begin(), ctx.end())) + " T=" + std::to_string(T) +
                               " splits=" + std::to_string(p.max_splits) +
                               (variant == 1   ? " (previous kernel)"
                                : variant == 2 ? " (mma)"
                                : variant == 3 ? " (mma, cluster)"
                                : variant == 4 ? " (mma, ring)"
                                : variant == 5 ? " (mma, ring, cluster)"
                                               : " slices=" + std::to_string(p.head_slices));
    if (!failed.empty()) {
      out.push_back(launch_failure(params, failed.c_str()));
      continue;
    }
    out.push_back(nmse_result(params + " out vs chain", widen(o2.get()), widen(o1.get()), 1e-8));
    // The caches without the NaN block of window KV's given-back entries (poison_outside_window; never written).
    auto cache = [&](Dev<uint16_t>& c) {
      std::vector<float> v = widen(c.get());
      if (window > 0) std::fill_n(v.begin() + size_t(f.spare) * f.bs * nkv * D, size_t(f.bs) * nkv * D, 0.f);
      return v;
    };
    out.push_back(nmse_result(params + " k cache vs chain", cache(k2), cache(k1), 1e-9));
    out.push_back(nmse_result(params + " v cache vs chain", cache(v2), cache(v1), 0.0));
  }
  // the fused path leaves q/k/v unrotated in place
  out.push_back(nmse_result("qkv rows untouched", dq_fused.get(), qkv, 0.0));
  return out;
}

std::vector<Result> test_attention_decode_rope() {
  std::vector<Result> out;
  auto add = [&](std::vector<Result> r) { out.insert(out.end(), r.begin(), r.end()); };
  add(run_attention_rope(64, 8, 64, 0, {1, 5, 127, 128, 129, 640}, 1500));
  add(run_attention_rope(64, 8, 64, 128, {1, 5, 127, 128, 129, 640}, 1600));
  add(run_attention_rope(64, 8, 64, 0, {20000}, 1700));
  add(run_attention_rope(8, 2, 16, 32, {40, 3}, 1800));
  add(run_attention_rope(8, 1, 32, 16, {80}, 1900));
  for (int window : {0, 128}) {
    for (int ctx : {1, 17, 128, 129, 1000, 4096, 32768}) add(run_attention_rope(64, 8, 64, window, {ctx}, 3000 + ctx + window));
    add(run_attention_rope(64, 8, 64, window, ragged(8, 4096, 51 + window), 3100 + window));
    add(run_attention_rope(64, 8, 64, window, ragged(64, 2048, 52 + window), 3200 + window));
    add(run_attention_rope(64, 8, 64, window, std::vector<int>(8, 1024), 3300 + window));  // the bench's T=8 ctx=1024
  }
  return out;
}
HM_OP_TEST("attention_decode_rope", test_attention_decode_rope);

std::vector<Result> test_attention_prefill() {
  std::vector<Result> out;
  auto add = [&](std::vector<Result> r) { out.insert(out.end(), r.begin(), r.end()); };
  add(run_attention(64, 8, 0, {37}, {37}, true, 700, 64, true));
  add(run_attention(64, 8, 128, {300}, {300}, true, 800, 64, true));
  add(run_attention(64, 8, 0, {300}, {300}, true, 900));
  add(run_attention(64, 8, 128, {250, 40}, {70, 40}, true, 1000));  // cached prefix of 180, then a new sequence
  add(run_attention(6, 3, 0, {45}, {19}, true, 1100));
  add(run_attention(8, 2, 128, {200}, {200}, true, 1200, 16));
  add(run_attention(8, 1, 16, {80}, {80}, true, 1300, 32));
  // one prompt of each length (the tile and key-tile edges), full, sliding and a short window
  for (int window : {0, 128, 16})
    for (int n : {1, 3, 17, 64, 255, 1000}) add(run_attention(64, 8, window, {n}, {n}, true, 1400 + n + window));
  // several sequences in one call, most continuing a cached prefix (positions not starting at 0, nor at a
  // multiple of 64)
  for (int window : {0, 128, 16}) {
    add(run_attention(64, 8, window, {1000, 300, 40, 5, 129}, {255, 300, 17, 3, 1}, true, 1500 + window));
    add(run_attention(64, 8, window, {1200}, {64}, true, 1600 + window, 64, true));
  }
  // other GQA groups at head dim 64: 16, 4, 1 query heads per KV head
  add(run_attention(64, 4, 0, {200, 77}, {200, 30}, true, 1700));
  add(run_attention(16, 4, 128, {300}, {150}, true, 1800));
  add(run_attention(4, 4, 16, {90}, {90}, true, 1900));
  // The hd64-realyarn-3shards fixture's shape (6 q / 3 KV heads: G = 2; window 32 on its sliding layers, full on
  // the other; 100 tokens in one call: a last tile of 4), then G = 2 at the other windows and lengths, a
  // continued prompt, and sharp softmaxes; window 32 (half a key tile) at every other G.
  for (int window : {32, 0}) {
    add(run_attention(6, 3, window, {100}, {100}, true, 2000 + window));
    add(run_attention(6, 3, window, {100}, {100}, true, 2100 + window, 64, false, 8.f));
  }
  for (int window : {128, 16, 32})
    for (int n : {3, 17, 64, 255}) add(run_attention(6, 3, window, {n}, {n}, true, 2200 + n + window));
  add(run_attention(6, 3, 32, {300, 100}, {70, 100}, true, 2300));
  add(run_attention(64, 8, 32, {100}, {100}, true, 2400));
  add(run_attention(64, 4, 32, {100}, {100}, true, 2500));
  add(run_attention(16, 4, 32, {100}, {100}, true, 2600));
  add(run_attention(4, 4, 32, {100}, {100}, true, 2700, 64, false, 8.f));
  return out;
}
HM_OP_TEST("attention_prefill", test_attention_prefill);

// ---- HM_OP_BENCH=1: prefill attention timings ----
// One sequence of ctx positions whose last n are this call's query tokens (n = ctx: a whole prompt in one step; n
// = 2048 at ctx 32768: the last 2048-token chunk of a 32k prompt), gpt-oss shape
// (64 q / 8 KV heads, D 64), full and sliding (128) layers; every prefill kernel on the same inputs. Per row: the
// mean of R back-to-back launches (R from a first timed launch: about 30 ms of work, at least 1), microseconds per
// layer and TFLOP/s counting 4 * nq * D FLOPs per visible (query, key) pair.
std::vector<Result> bench_attention_prefill() {
  const char* env = std::getenv("HM_OP_BENCH");
  if (!env || std::strcmp(env, "1") != 0) return {};
  constexpr int nq = 64, nkv = 8, D = 64, bs = 16;
  std::printf("-- prefill attention (us per layer; nq 64, nkv 8, D 64) --\n");
  std::printf("%-24s %-34s %12s %9s %8s\n", "case", "kernel", "us", "TFLOP/s", "vs tile");
  struct Case {
    int ctx, n;
  };
  const char* only = std::getenv("HM_BENCH_ATTN_CTX");  // one context (n = ctx) only, e.g. for a profiler
  for (const Case cs : {Case{512, 512}, Case{2048, 2048}, Case{8192, 8192}, Case{32768, 32768}, Case{32768, 2048}}) {
    if (only && (cs.ctx != std::atoi(only) || cs.n != cs.ctx)) continue;
    const int blocks = cs.ctx / bs;
    std::vector<int32_t> bt(blocks), seq(cs.n, 0), pos(cs.n), tiles;
    std::iota(bt.begin(), bt.end(), 0);
    for (int i = 0; i < cs.n; i++) pos[i] = cs.ctx - cs.n + i;
    for (int i = 0; i < cs.n; i += cuda::kPrefillTileTokens) {
      tiles.push_back(i);
      tiles.push_back(std::min(cuda::kPrefillTileTokens, cs.n - i));
    }
    const size_t elems = size_t(cs.ctx) * nkv * D;
    Dev<uint16_t> dk(to_bf16(uniform(elems, 11, 2.f))), dv(to_bf16(uniform(elems, 12, 1.f)));
    Dev<uint16_t> dout(size_t(cs.n) * nq * D);
    Dev<float> dq(uniform(size_t(cs.n) * nq * D, 13, 1.f)), dsinks(uniform(nq, 14, 2.f));
    Dev<int32_t> dbt(bt), dseq(seq), dpos(pos), dtiles(tiles);
    for (int window : {0, 128}) {
      double pairs = 0;
      for (int p : pos) pairs += window ? std::min(p + 1, window) : p + 1;
      const double flops = 4.0 * nq * D * pairs;
      cuda::AttentionPrefillParams p;
      p.c.q = dq.p, p.c.ldq = nq * D, p.c.k_cache = dk.p, p.c.v_cache = dv.p, p.c.block_tables = dbt.p;
      p.c.max_blocks_per_seq = blocks, p.c.block_size = bs, p.c.tok_seq = dseq.p, p.c.pos = dpos.p;
      p.c.sinks = dsinks.p, p.c.out = dout.p, p.c.nq = nq, p.c.nkv = nkv, p.c.D = D, p.c.window = window;
      p.c.scale = 0.125f;
      p.tiles = dtiles.p, p.num_tiles = int(tiles.size() / 2);
      const std::string name = "ctx=" + std::to_string(cs.ctx) + " n=" + std::to_string(cs.n) + (window ? " slide" : " full");
      struct Row {
        const char* kernel;
        int variant;
      };
      float tile_us = 0;
      for (const Row r : {Row{"tile (fp32)", cuda::kPrefillTile}, Row{"mma, q and P hi+lo", cuda::kPrefillMma},
                          Row{"mma, 1 block/SM", cuda::kPrefillMma1b}, Row{"mma, 2 heads/warp", cuda::kPrefillMma2},
                          Row{"mma, q and P bf16", cuda::kPrefillMmaBf16}, Row{"mma, q hi+lo, P bf16", cuda::kPrefillMmaQlo},
                          Row{"wgmma, q and P hi+lo", cuda::kPrefillWgmma}, Row{"wgmma, q hi+lo, P bf16 (default)", cuda::kPrefillWgmmaQlo}}) {
        p.variant = r.variant;
        cudaEvent_t e0, e1;
        C_CHECK(cudaEventCreate(&e0));
        C_CHECK(cudaEventCreate(&e1));
        auto time_ms = [&](int reps) {
          C_CHECK(cudaEventRecord(e0, nullptr));
          for (int i = 0; i < reps; i++) cuda::attention_prefill(p, nullptr);
          C_CHECK(cudaEventRecord(e1, nullptr));
          C_CHECK(cudaEventSynchronize(e1));
          float ms = 0;
          C_CHECK(cudaEventElapsedTime(&ms, e0, e1));
          return ms;
        };
        time_ms(1);  // warm-up
        const float first = time_ms(1);
        const int reps = std::max(1, std::min(200, int(30.f / std::max(first, 1e-3f))));
        const float us = time_ms(reps) * 1000.f / reps;
        if (r.variant == cuda::kPrefillTile) tile_us = us;
        std::printf("%-24s %-34s %12.1f %9.1f %7.2fx\n", name.c_str(), r.kernel, us, flops / (us * 1e6),
                    tile_us / us);
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
      }
    }
  }
  return {};
}
HM_OP_TEST("bench_attention_prefill", bench_attention_prefill);

// ---- HM_OP_BENCH=1: decode attention timings ----
// The split + combine pair (variant 1, with its split rule) against attn_decode_merged with 1 head slice (fill
// rule at 2 blocks/SM, half and twice its splits, the pair's splits) and 2 or 4 head slices (fill rule at 1 block/SM;
// 4: also half and twice), then the planner's choice (attention_decode_plan), then the tensor-core kernel (variant
// 2: fill rule at 2 and 1 blocks/SM, twice the splits, 128 and 256 keys a split; variant 3, its splits one cluster:
// 128 keys a split, 4 and 8 splits, where at most 8), and a summary, gpt-oss shape (64 q / 8 KV heads, D 64, fused RoPE + KV write as
// on decode-only steps). Each row: a graph of 24 launches cycling over 8 layers' caches (the KV is read from HBM,
// not L2), replayed 20 times; the median replay / 24 is the time per layer, without and with PDL between launches.
// GB/s counts the K and V rows the layer must read.
struct BenchDecode {
  int T, nkv = 8, nq = 64, D = 64, window;
  std::vector<int> ctx;
  int mbps = 1, blocks = 0;
  static constexpr int kLayers = 8, kLaunches = 24;
  std::vector<uint16_t*> k, v;
  std::unique_ptr<Dev<int32_t>> bt, seq, pos, slot, toks;
  std::unique_ptr<Dev<float>> qkv, sinks, inv, ws;
  std::unique_ptr<Dev<uint16_t>> out;
  std::unique_ptr<Dev<uint32_t>> counters;
  float af = 1.f;
  double kv_bytes = 0;
  int max_keys = 1, ws_splits = 1;
  BenchDecode(const std::vector<int>& c, int w) : T(int(c.size())), window(w), ctx(c) {
    std::vector<int32_t> tb, ts(T), tp(T), tsl(T), tt(T);
    for (int x : ctx) mbps = std::max(mbps, (x + 15) / 16);
    tb.assign(size_t(T) * mbps, 0);
    for (int s = 0; s < T; s++) {
      const int n = (ctx[s] + 15) / 16;
      for (int j = 0; j < n; j++) tb[size_t(s) * mbps + j] = blocks + j;
      blocks += n;
      ts[s] = s, tp[s] = ctx[s] - 1, tt[s] = s;
      tsl[s] = tb[size_t(s) * mbps + tp[s] / 16] * 16 + tp[s] % 16;
      const int keys = window ? std::min(ctx[s], window) : ctx[s];
      max_keys = std::max(max_keys, keys);
      kv_bytes += double(keys) * nkv * D * 2 * 2;
    }
    const size_t elems = size_t(blocks) * 16 * nkv * D;
    const auto kh = to_bf16(uniform(std::min<size_t>(elems, 1 << 22), 5, 2.f));
    for (int l = 0; l < kLayers; l++) {
      uint16_t *pk, *pv;
      C_CHECK(cudaMalloc(&pk, elems * 2));
      C_CHECK(cudaMalloc(&pv, elems * 2));
      for (size_t at = 0; at < elems; at += kh.size()) {
        const size_t n = std::min(kh.size(), elems - at);
        C_CHECK(cudaMemcpy(pk + at, kh.data(), n * 2, cudaMemcpyHostToDevice));
        C_CHECK(cudaMemcpy(pv + at, kh.data(), n * 2, cudaMemcpyHostToDevice));
      }
      k.push_back(pk);
      v.push_back(pv);
    }
    bt = std::make_unique<Dev<int32_t>>(tb), seq = std::make_unique<Dev<int32_t>>(ts);
    pos = std::make_unique<Dev<int32_t>>(tp), slot = std::make_unique<Dev<int32_t>>(tsl);
    toks = std::make_unique<Dev<int32_t>>(tt);
    qkv = std::make_unique<Dev<float>>(uniform(size_t(T) * (nq + 2 * nkv) * D, 6, 2.f));
    sinks = std::make_unique<Dev<float>>(uniform(nq, 7, 2.f));
    std::vector<float> f(D / 2);
    ref::rope_inv_freq(gpt_oss_rope(), D, f.data(), &af);
    inv = std::make_unique<Dev<float>>(f);
    // splits: every row takes at least 64 keys a split (the launcher's unit), so at most one per 64 keys (the
    // previous pair at T=8 ctx=8192 takes 128; a 64-split workspace let it write past the end)
    ws_splits = (max_keys + 63) / 64;
    ws = std::make_unique<Dev<float>>(cuda::attention_decode_workspace_floats(T, nq, D, ws_splits));
    out = std::make_unique<Dev<uint16_t>>(size_t(T) * nq * D);
    counters = std::make_unique<Dev<uint32_t>>(size_t(T) * nkv);
    C_CHECK(cudaMemset(counters->p, 0, counters->n * 4));
  }
  ~BenchDecode() {
    for (auto* p : k) cudaFree(p);
    for (auto* p : v) cudaFree(p);
  }
  cuda::AttentionDecodeParams params(int variant, int slices, int kps, bool pdl) const {
    cuda::AttentionDecodeParams p;
    p.c.q = qkv->p, p.c.ldq = (nq + 2 * nkv) * D, p.c.block_tables = bt->p, p.c.max_blocks_per_seq = mbps;
    p.c.block_size = 16, p.c.tok_seq = seq->p, p.c.pos = pos->p, p.c.sinks = sinks->p, p.c.out = out->p;
    p.c.nq = nq, p.c.nkv = nkv, p.c.D = D, p.c.window = window, p.c.scale = 0.125f, p.c.pdl = pdl;
    p.tokens = toks->p, p.num_tokens = T, p.keys_per_split = kps, p.max_splits = (max_keys + kps - 1) / kps;
    if (p.max_splits > ws_splits) throw std::runtime_error("bench workspace holds fewer splits than the row takes");
    p.workspace = ws->p, p.counters = counters->p, p.variant = variant, p.head_slices = slices;
    p.inv_freq = inv->p, p.attn_factor = af, p.slot = slot->p;
    return p;
  }
  // Median microseconds per launch of a 24-launch graph.
  float time_us(int variant, int slices, int kps, bool pdl) {
    cudaStream_t s;
    C_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    C_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    try {
      for (int i = 0; i < kLaunches; i++) {
        cuda::AttentionDecodeParams p = params(variant, slices, kps, pdl);
        p.c.k_cache = k[i % kLayers], p.c.v_cache = v[i % kLayers];
        cuda::attention_decode(p, s);
      }
    } catch (...) {  // a refused launch: close the capture, the caller prints the row as failed
      if (cudaStreamEndCapture(s, &g) == cudaSuccess && g) cudaGraphDestroy(g);
      cudaGetLastError();
      cudaStreamDestroy(s);
      throw;
    }
    C_CHECK(cudaStreamEndCapture(s, &g));
    C_CHECK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    C_CHECK(cudaEventCreate(&e0));
    C_CHECK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int r = 0; r < 23; r++) {
      C_CHECK(cudaEventRecord(e0, s));
      C_CHECK(cudaGraphLaunch(ge, s));
      C_CHECK(cudaEventRecord(e1, s));
      C_CHECK(cudaEventSynchronize(e1));
      float x = 0;
      C_CHECK(cudaEventElapsedTime(&x, e0, e1));
      if (r >= 3) ms.push_back(x);
    }
    std::sort(ms.begin(), ms.end());
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);
    return ms[ms.size() / 2] * 1000.f / kLaunches;
  }
};

std::vector<Result> bench_attention_decode() {
  const char* env = std::getenv("HM_OP_BENCH");
  if (!env || std::strcmp(env, "1") != 0) return {};
  int sms = 0;
  C_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  int cc_major = 0;
  C_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, 0));
  std::printf("-- decode attention (us per layer; nq 64, nkv 8, D 64, fused RoPE + KV write; %d SMs) --\n", sms);
  std::printf("%-30s %-25s %6s %9s %9s %9s\n", "batch / context", "kernel", "splits", "us", "us (pdl)", "KV GB/s");
  struct Case {
    std::string name;
    std::vector<int> ctx;
  };
  std::vector<Case> cases;
  for (int c : {512, 1024, 8192, 32768}) cases.push_back({"T=1 ctx=" + std::to_string(c), {c}});
  for (int c : {1024, 8192}) cases.push_back({"T=8 ctx=" + std::to_string(c), std::vector<int>(8, c)});
  cases.push_back({"T=8 ctx=1..4096 mixed", ragged(8, 4096, 76)});
  cases.push_back({"T=16 ctx=1..4096 mixed", ragged(16, 4096, 79)});
  cases.push_back({"T=64 ctx=1024", std::vector<int>(64, 1024)});
  cases.push_back({"T=64 ctx=1..2048 mixed", ragged(64, 2048, 77)});
  cases.push_back({"T=256 ctx=1..2048 mixed", ragged(256, 2048, 78)});
  struct Summary {
    std::string name;
    float plan, best_old, best_mma;
    int mma_splits;
    double kv_bytes;
    std::string mma_row;
  };
  std::vector<Summary> summary;
  for (const Case& cs : cases)
    for (int window : {0, 128}) {
      BenchDecode b(cs.ctx, window);
      const std::string name = cs.name + (window ? " slide" : " full");
      // the previous planner: per-split workspace cap, 128 keys in one split
      const size_t per_split = cuda::attention_decode_workspace_floats(b.T, b.nq, b.D, 1);
      const int cap = int(std::min<size_t>(1024, std::max<size_t>(1, (16ull << 20) / per_split)));
      const int old_kps = b.max_keys <= 128 ? 128 : cuda::attention_keys_per_split(b.max_keys, cap);
      const int planned = cuda::attention_decode_keys_per_split(b.max_keys, b.T, b.nkv, sms, 1024, 2);
      const int splits = (b.max_keys + planned - 1) / planned;
      const int planned4 = cuda::attention_decode_keys_per_split(b.max_keys, b.T, b.nkv, sms, 1024, 1);
      const int splits4 = (b.max_keys + planned4 - 1) / planned4;
      const cuda::AttentionDecodePlan plan =
          cuda::attention_decode_plan(b.max_keys, b.T, b.nq, b.nkv, b.D, sms, cap, cc_major >= 9);
      struct Row {
        const char* kernel;
        int variant, slices, kps;
      };
      const Row rows[] = {
          {"previous (split+combine)", 1, 1, old_kps},
          {"merged, planned", 0, 1, planned},
          {"merged, half the splits", 0, 1, cuda::attention_keys_per_split(b.max_keys, std::max(1, splits / 2))},
          {"merged, twice the splits", 0, 1, cuda::attention_keys_per_split(b.max_keys, splits * 2)},
          {"merged, previous splits", 0, 1, old_kps},
          {"merged 2 slices, planned", 0, 2, planned4},
          {"merged 4 slices, planned", 0, 4, planned4},
          {"merged 4 sl, half splits", 0, 4, cuda::attention_keys_per_split(b.max_keys, std::max(1, splits4 / 2))},
          {"merged 4 sl, twice splits", 0, 4, cuda::attention_keys_per_split(b.max_keys, splits4 * 2)},
          {"planner's choice", plan.variant, plan.head_slices, plan.keys_per_split},
          {"mma, planned (2/SM)", 2, 1, planned},
          {"mma, 1/SM", 2, 1, planned4},
          {"mma, twice the splits", 2, 1, cuda::attention_keys_per_split(b.max_keys, splits * 2)},
          {"mma, 128 keys a split", 2, 1, 128},
          {"mma, 256 keys a split", 2, 1, 256},
          {"mma+cluster, 128 keys", 3, 1, 128},
          {"mma+cluster, 4 splits", 3, 1, cuda::attention_keys_per_split(b.max_keys, 4)},
          {"mma+cluster, 8 splits", 3, 1, cuda::attention_keys_per_split(b.max_keys, 8)},
          {"ring, planned (2/SM)", 4, 1, planned},
          {"ring, 1/SM", 4, 1, planned4},
          {"ring, twice the splits", 4, 1, cuda::attention_keys_per_split(b.max_keys, splits * 2)},
          {"ring, 4x the splits", 4, 1, cuda::attention_keys_per_split(b.max_keys, splits * 4)},
          {"ring, 256 keys a split", 4, 1, 256},
          {"ring+cluster, 4 splits", 5, 1, cuda::attention_keys_per_split(b.max_keys, 4)},
          {"ring+cluster, 8 splits", 5, 1, cuda::attention_keys_per_split(b.max_keys, 8)}};
      float best_old = 1e30f, best_mma = 1e30f, plan_us = 0;
      int best_mma_splits = 0;
      const char* best_mma_row = "";
      for (const Row& r : rows) {
        const int nsplits = (b.max_keys + r.kps - 1) / r.kps;
        if ((r.variant == 3 || r.variant == 5) && nsplits > 8) continue;  // one cluster a (token, KV head)
        float us = 0, us_pdl = 0;
        try {
          us = b.time_us(r.variant, r.slices, r.kps, false);
          us_pdl = b.time_us(r.variant, r.slices, r.kps, true);
        } catch (const std::exception& e) {
          std::printf("%-30s %-25s %6d launch failed: %s\n", name.c_str(), r.kernel, nsplits, e.what());
          continue;
        }
        std::printf("%-30s %-25s %6d %9.2f %9.2f %9.0f\n", name.c_str(), r.kernel, nsplits, us, us_pdl,
                    b.kv_bytes / (us * 1e3));
        if (r.variant >= 2 && us_pdl < best_mma) best_mma = us_pdl, best_mma_splits = nsplits, best_mma_row = r.kernel;
        if (r.variant < 2) best_old = std::min(best_old, us_pdl);
        if (std::strcmp(r.kernel, "planner's choice") == 0) plan_us = us_pdl;
      }
      summary.push_back({name, plan_us, best_old, best_mma, best_mma_splits, b.kv_bytes, best_mma_row});
    }
  // One line per case (us per layer with PDL): the planner's choice today, the best of the previous kernels, the
  // best tensor-core row and its splits, and the KV rate of that row.
  std::printf("-- summary (us per layer with PDL) --\n%-30s %9s %9s %9s %6s %9s  %s\n", "batch / context", "planned",
              "best old", "best mma", "splits", "mma GB/s", "best mma row");
  for (const Summary& x : summary)
    std::printf("%-30s %9.2f %9.2f %9.2f %6d %9.0f  %s\n", x.name.c_str(), x.plan, x.best_old, x.best_mma,
                x.mma_splits, x.kv_bytes / (x.best_mma * 1e3), x.mma_row.c_str());
  return {};
}
HM_OP_TEST("bench_attention_decode", bench_attention_decode);

// ---- logits narrowing ----
std::vector<Result> test_narrow() {
  std::vector<Result> out;
  struct Case { int rows, V, k; bool ties; };
  for (const Case& c : {Case{3, 201088, 256, false}, Case{2, 201088, 1, false}, Case{2, 201088, 50, true},
                        Case{4, 1000, 256, true}, Case{1, 300, 7, false}, Case{3, 201088, 5, false},
                        Case{2, 201088, 10, true}, Case{2, 201088, 20, true}, Case{3, 5000, 32, true}}) {
    auto x = uniform(size_t(c.rows) * c.V, 1200 + c.k, 8.f);
    if (c.ties)
      for (auto& v : x) v = std::round(v * 2.f) / 2.f;  // 33 levels: many ties, including at the k-th value
    Dev<float> dx(x), dmax(c.rows), dlse(c.rows), dtl(size_t(c.rows) * c.k);
    Dev<int32_t> darg(c.rows), dti(size_t(c.rows) * c.k);
    Dev<char> dws(cuda::narrow_workspace_bytes(c.rows, c.V));
    dtl.poison();
    dti.poison();
    cuda::NarrowLogitsParams p;
    p.logits = dx.p, p.rows = c.rows, p.vocab = c.V, p.ld = c.V, p.top_k = c.k;
    p.argmax = darg.p, p.max_logit = dmax.p, p.logsumexp = dlse.p, p.top_ids = dti.p, p.top_logits = dtl.p;
    p.workspace = dws.p, p.workspace_bytes = dws.n;
    cuda::narrow_logits(p, nullptr);
    auto garg = darg.get(), gti = dti.get();
    auto gmax = dmax.get(), glse = dlse.get(), gtl = dtl.get();
    double mismatches = 0, lse_err = 0;
    bool bad = false;
    for (int r = 0; r < c.rows; r++) {
      std::vector<int32_t> ids(c.k);
      std::vector<float> tl(c.k);
      int32_t am;
      float mx, lse;
      narrow_logits_row(x.data() + size_t(r) * c.V, c.V, c.k, ids.data(), tl.data(), &am, &mx, &lse);
      mismatches += (am != garg[r]) + (mx != gmax[r]);
      for (int i = 0; i < c.k; i++)
        mismatches += (ids[i] != gti[size_t(r) * c.k + i]) + (tl[i] != gtl[size_t(r) * c.k + i]);
      lse_err = std::max(lse_err, std::fabs(double(glse[r]) - lse) / std::max(1.0, std::fabs(double(lse))));
      bad |= !std::isfinite(glse[r]);
    }
    char params[96];
    std::snprintf(params, sizeof params, "rows=%d V=%d k=%d%s", c.rows, c.V, c.k, c.ties ? " ties" : "");
    Result a;
    a.params = std::string(params) + " ids";
    a.metric = "exact";
    a.error = mismatches;
    a.tolerance = 0;
    out.push_back(a);
    Result l;
    l.params = std::string(params) + " lse";
    l.metric = "rel";
    l.error = lse_err;
    l.tolerance = 1e-5;
    l.nan_or_inf = bad;
    out.push_back(l);
  }
  return out;
}
HM_OP_TEST("narrow_logits", test_narrow);

}  // namespace
}  // namespace hm::optest
