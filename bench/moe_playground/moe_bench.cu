// MoE kernel playground (llm.c dev/cuda style): times the public launchers of kernels/moe.h and a few launch
// configurations of the decode kernels at the real gpt-oss shapes (H = I = 2880, top-4, E = 32 and 128).
// Before it times a shape, it checks the launchers' output there against the CPU twin (ref::expert_mlp_mxfp4,
// native/cpu/ref_ops.h) and stops if they disagree; the numbered decode variants are then checked against the
// launcher. Random (never zero) weights. MOE_DECODE_ONLY=1 skips the prefill and grouped timings,
// MOE_PREFILL_ONLY=1 the decode and grouped ones; MOE_DECODE_N=1,8 picks the decode token counts (default 1, 2, 4, 8),
// MOE_NO_CHAIN=1 leaves MOE_DECODE_ONLY's chain out;
// MOE_CHAIN_ONLY=1 only the engine-like one-token chain (chain_section). MOE_GROUPED_ONLY=1 runs only the grouped section: at n = 8 .. 2048, E = 32 and 128, the launcher's kAuto, the
// prefill GEMM and every grouped configuration V0-V10 (moe_grouped.cuh; all XP but V7; MT2: V8-V10), checked
// (CPU twin at n = 16 and 64, and against the prefill path at every n), then timed as whole layers in a CUDA graph;
// its tables (GB/s, TFLOP/s, crossover) come last.
// Decode layers timed: "bulk" (the default MXFP4 decode: bulk copies into shared memory, moe_decode_bulk.cuh),
// "bulk+route" (the same with the routing computed from router logits inside the kernels, as the engine calls it),
// "bulk-direct"/"bulk-direct+route" (the bulk kernels in configuration B6 launched directly, without the launcher),
// "regs" (the register-streaming kernels, MoePath::kDecodeRegs), at n = 1 "split"/"split+route"
// (moe_decode_split.cuh, MoePath::kDecodeSplit) and its configurations KS*/CPW*.
// Variants, each kernel alone: B* = bulk configurations, G*/D* = register kernel configurations. A summary table
// is printed last. (Run 8's fp8 inner loops, F* / FP*, measured slower and were removed: NOTES.md.)
// Prefill: v1 (MoePath::kPrefillV1), the default MXFP4 GEMM (the wgmma one of moe_prefill_wgmma.cuh on sm_90, and
// each of its tile widths), v2 (moe_prefill_mma.cuh: MoeParams::wgmma off) and its configurations M*, at
// 64 .. 8192 tokens, each checked against the CPU twin (all tokens at 64, the first 16 above) and against v1's bits
// on every token before it is timed; "route sort + combine only" is the layer without its two GEMMs.
//
// Decode bytes count only what must be read: the selected experts' MXFP4 blocks, scales and biases
// (13.24 MB per expert). The routing rotates over disjoint expert sets so no iteration finds its experts in L2.
// Build: the CMake target hm_moe_lab (not built by default): cmake --build build-gpu --target hm_moe_lab
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/ref_ops.h"
#include "dense.h"
#include "lab_common.h"
#include "moe.h"
#include "moe_impl.cuh"

using namespace hm::cuda;


__global__ void fill_bf16(uint16_t* p, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    const float u = float(h >> 40) / float(1 << 24) - 0.5f;
    p[i] = moe::f2bf_bits(u * scale);
  }
}

// The summary table printed last: one row per timed thing.
struct Row {
  std::string what;
  int E, n;
  float us;
  double gbs;
};
std::vector<Row> g_rows;
void row(const std::string& what, int E, int n, float us, double bytes) {
  g_rows.push_back({what, E, n, us, bytes / us * 1e-3});
}



struct Layer {
  int E, H = 2880, I = 2880, k = 4;
  uint8_t *gu_b, *gu_s, *dn_b, *dn_s;
  uint16_t *gu_bias, *dn_bias, *gu_w = nullptr, *dn_w = nullptr;
  explicit Layer(int E_, bool with_bf16) : E(E_) {
    const size_t gr = size_t(E) * 2 * I, dr = size_t(E) * H;
    gu_b = dalloc<uint8_t>(gr * H / 2);
    gu_s = dalloc<uint8_t>(gr * H / 32);
    dn_b = dalloc<uint8_t>(dr * I / 2);
    dn_s = dalloc<uint8_t>(dr * I / 32);
    gu_bias = dalloc<uint16_t>(gr);
    dn_bias = dalloc<uint16_t>(dr);
    fill_bytes<<<1024, 256>>>(gu_b, gr * H / 2, 1, 0, 0);
    fill_bytes<<<1024, 256>>>(gu_s, gr * H / 32, 2, 120, 3);
    fill_bytes<<<1024, 256>>>(dn_b, dr * I / 2, 3, 0, 0);
    fill_bytes<<<1024, 256>>>(dn_s, dr * I / 32, 4, 120, 3);
    fill_bf16<<<256, 256>>>(gu_bias, gr, 5, 1.f);
    fill_bf16<<<256, 256>>>(dn_bias, dr, 6, 1.f);
    if (with_bf16) {
      gu_w = dalloc<uint16_t>(gr * H);
      dn_w = dalloc<uint16_t>(dr * I);
      mxfp4_to_bf16({gu_b, gu_s, gu_w, int64_t(gr), H}, 0);
      mxfp4_to_bf16({dn_b, dn_s, dn_w, int64_t(dr), I}, 0);
    }
    mxfp4_prepare({gu_b, gu_s, int64_t(gr) * (H / 32)}, 0);  // the layout the MXFP4 kernels read (after the bf16 copy)
    mxfp4_prepare({dn_b, dn_s, int64_t(dr) * (I / 32)}, 0);
    CK(cudaDeviceSynchronize());
  }
  ~Layer() {
    for (void* p : {(void*)gu_b, (void*)gu_s, (void*)dn_b, (void*)dn_s, (void*)gu_bias, (void*)dn_bias, (void*)gu_w,
                    (void*)dn_w})
      cudaFree(p);
  }
  MoeMxfp4Weights mx() const { return {gu_b, gu_s, gu_bias, dn_b, dn_s, dn_bias}; }
  MoeBf16Weights bf() const { return {gu_w, gu_bias, dn_w, dn_bias}; }
  double expert_bytes_mx() const {
    return double(2 * I) * (H / 2 + H / 32 + 2) + double(H) * (I / 2 + I / 32 + 2);
  }
  double expert_bytes_bf16() const { return double(2 * I) * (2 * H + 2) + double(H) * (2 * I + 2); }
  double flops_per_pair() const { return 2.0 * (double(2 * I) * H + double(H) * I); }
};

// Routing sets: set s gives token t the experts ((s * n + t) * k + j) mod E (disjoint across consecutive sets
// while they fit), weights 1/k.
struct Routing {
  int sets, n, k;
  int32_t* ids;
  float* w;
  Routing(int sets_, int n_, int k_, int E, bool random) : sets(sets_), n(n_), k(k_) {
    std::vector<int32_t> h(size_t(sets) * n * k);
    std::vector<float> hw(h.size(), 1.f / k);
    uint64_t st = 12345;
    for (int s = 0; s < sets; s++)
      for (int t = 0; t < n; t++) {
        std::vector<int> used;
        for (int j = 0; j < k; j++) {
          int e;
          if (random) {
            do {
              st = st * 6364136223846793005ull + 1442695040888963407ull;
              e = int((st >> 33) % E);
            } while (std::find(used.begin(), used.end(), e) != used.end());
          } else {
            e = ((s * n + t) * k + j) % E;
          }
          used.push_back(e);
          h[(size_t(s) * n + t) * k + j] = e;
        }
      }
    ids = dalloc<int32_t>(h.size());
    w = dalloc<float>(h.size());
    CK(cudaMemcpy(ids, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(w, hw.data(), hw.size() * 4, cudaMemcpyHostToDevice));
    // Router logits with the same top-k (the chosen experts 1, the others 0: weights 1/k, ids in ascending order).
    std::vector<float> hl(size_t(sets) * n * E, 0.f);
    for (size_t r = 0; r < size_t(sets) * n; r++)
      for (int j = 0; j < k; j++) hl[r * E + h[r * k + j]] = 1.f;
    logits = dalloc<float>(hl.size());
    CK(cudaMemcpy(logits, hl.data(), hl.size() * 4, cudaMemcpyHostToDevice));
    E_ = E;
  }
  const int32_t* ids_of(int i) const { return ids + size_t(i % sets) * n * k; }
  const float* w_of(int i) const { return w + size_t(i % sets) * n * k; }
  const float* logits_of(int i) const { return logits + size_t(i % sets) * n * E_; }
  float* logits;
  int E_;
};

double nmse_dev(const float* a, const float* b, size_t n);
uint16_t* g_act_ref;  // the public launcher's SwiGLU output and result on routing set 0 (decode_variants)
float* g_y_ref;
double nmse_bf16_dev(const uint16_t* a, const uint16_t* b, size_t n) {
  std::vector<uint16_t> ha(n), hb(n);
  CK(cudaMemcpy(ha.data(), a, n * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(hb.data(), b, n * 2, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const uint32_t ua = uint32_t(ha[i]) << 16, ub = uint32_t(hb[i]) << 16;
    float fa, fb;
    std::memcpy(&fa, &ua, 4);
    std::memcpy(&fb, &ub, 4);
    if (!std::isfinite(fa)) return INFINITY;
    num += double(fa - fb) * (fa - fb);
    den += double(fb) * fb;
  }
  return num / den;
}

// One decode-kernel configuration, launched directly (the playground's numbered variants): gate_up or down alone.
template <bool GATE_UP, int MT, int KS, int D, int MINB>
void decode_variant(const char* name, const Layer& L, const Routing& R, const uint16_t* x, float* y, void* ws,
                    double bytes) {
  const moe::Workspace w = moe::carve(ws, R.n, L.H, L.I, L.E, L.k);
  moe::WMat gu{L.gu_b, L.gu_s, L.gu_bias, 2 * L.I, L.H};
  moe::WMat dn{L.dn_b, L.dn_s, L.dn_bias, L.H, L.I};
  const int nu = std::min(R.n * L.k, L.E);
  constexpr auto F = moe::WFmt::kMxfp4;
  const float t = time_us([&](int i) {
    moe::DecodeArgs a{R.n,    L.E, L.k, 7.f, x, L.H, R.ids_of(i), R.w_of(i), nullptr, 0, nullptr, nullptr,
                      gu,     w.act, y, L.H, false};
    if (GATE_UP) {
      moe::moe_decode_gate_up<F, MT, KS, D, MINB>
          <<<dim3((2 * L.I + 16 * MT - 1) / (16 * MT), nu), MT * KS * 32>>>(a);
    } else {
      a.x = w.act;
      a.ldx = L.I;
      a.W = dn;
      moe::moe_decode_down<F, MT, KS, D, MINB><<<(L.H + 16 * MT - 1) / (16 * MT), MT * KS * 32>>>(a);
    }
  });
  // Check against the public launcher's output on routing set 0 (act_ref / y_ref, computed by the caller).
  {
    moe::DecodeArgs a{R.n,    L.E, L.k, 7.f, x, L.H, R.ids_of(0), R.w_of(0), nullptr, 0, nullptr, nullptr,
                      gu,     w.act, y, L.H, false};
    if (GATE_UP) {
      moe::moe_decode_gate_up<F, MT, KS, D, MINB>
          <<<dim3((2 * L.I + 16 * MT - 1) / (16 * MT), nu), MT * KS * 32>>>(a);
    } else {
      CK(cudaMemcpy(w.act, g_act_ref, size_t(R.n) * L.k * L.I * 2, cudaMemcpyDeviceToDevice));
      a.x = w.act;
      a.ldx = L.I;
      a.W = dn;
      moe::moe_decode_down<F, MT, KS, D, MINB><<<(L.H + 16 * MT - 1) / (16 * MT), MT * KS * 32>>>(a);
    }
    CK(cudaDeviceSynchronize());
  }
  const double err = GATE_UP ? nmse_bf16_dev(w.act, g_act_ref, size_t(R.n) * L.k * L.I)
                             : nmse_dev(y, g_y_ref, size_t(R.n) * L.H);
  const double b = bytes * (GATE_UP ? 2.0 / 3.0 : 1.0 / 3.0);
  std::printf("  %-8s %-36s %7.1f us  %6.0f GB/s  (nmse vs launcher %.1e)\n", GATE_UP ? "gate_up" : "down", name, t,
              b / t * 1e-3, err);
  row(std::string(GATE_UP ? "gate_up " : "down ") + name, L.E, R.n, t, b);
}

// One bulk-kernel configuration (moe_decode_bulk.cuh) alone, checked against the launcher like decode_variant.
template <bool GATE_UP, typename C>
void bulk_variant(const char* name, const Layer& L, const Routing& R, const uint16_t* x, float* y, void* ws,
                  double bytes) {
  const moe::Workspace w = moe::carve(ws, R.n, L.H, L.I, L.E, L.k);
  moe::WMat gu{L.gu_b, L.gu_s, L.gu_bias, 2 * L.I, L.H};
  moe::WMat dn{L.dn_b, L.dn_s, L.dn_bias, L.H, L.I};
  const int nu = std::min(R.n * L.k, L.E);
  auto go = [&](int i) {
    moe::DecodeArgs a{R.n,    L.E, L.k, 7.f, x, L.H, R.ids_of(i), R.w_of(i), nullptr, 0, nullptr, nullptr,
                      gu,     w.act, y, L.H, false};
    if (GATE_UP) {
      moe::launch_bulk_kernel<true, C>(a, nu, 0, false);
    } else {
      a.x = w.act;
      a.ldx = L.I;
      a.W = dn;
      moe::launch_bulk_kernel<false, C>(a, nu, 0, false);
    }
  };
  const float t = time_us(go);
  if (!GATE_UP) CK(cudaMemcpy(w.act, g_act_ref, size_t(R.n) * L.k * L.I * 2, cudaMemcpyDeviceToDevice));
  go(0);
  CK(cudaDeviceSynchronize());
  const double err = GATE_UP ? nmse_bf16_dev(w.act, g_act_ref, size_t(R.n) * L.k * L.I)
                             : nmse_dev(y, g_y_ref, size_t(R.n) * L.H);
  const double b = bytes * (GATE_UP ? 2.0 / 3.0 : 1.0 / 3.0);
  std::printf("  %-8s %-36s %7.1f us  %6.0f GB/s  (nmse vs launcher %.1e)\n", GATE_UP ? "gate_up" : "down", name, t,
              b / t * 1e-3, err);
  // (1e-4, the CPU twin's tolerance: the launcher's inner loop may be the other one, and the SwiGLU rows are
  // rounded to bf16, so the two loops differ by a bf16 ulp in a few of them)
  if (!(err <= 1e-4)) {
    std::fprintf(stderr, "moe_bench: bulk variant %s disagrees with the launcher (nmse %.2e)\n", name, err);
    std::exit(1);
  }
  row(std::string(GATE_UP ? "gate_up " : "down ") + name, L.E, R.n, t, b);
}

void decode_variants(const Layer& L, const Routing& R, const uint16_t* x, float* y, void* ws, double bytes) {
  const moe::Workspace w = moe::carve(ws, R.n, L.H, L.I, L.E, L.k);
  g_act_ref = dalloc<uint16_t>(size_t(R.n) * L.k * L.I);
  g_y_ref = dalloc<float>(size_t(R.n) * L.H);
  {
    MoeParams p;
    p.n = R.n;
    p.H = L.H;
    p.I = L.I;
    p.E = L.E;
    p.k = L.k;
    p.x = x;
    p.ldx = L.H;
    p.ids = R.ids_of(0);
    p.weights = R.w_of(0);
    p.y = g_y_ref;
    p.ldy = L.H;
    p.workspace = ws;
    p.workspace_bytes = moe_workspace_bytes(R.n, L.H, L.I, L.E, L.k);
    p.path = MoePath::kDecode;
    moe_mxfp4_forward(p, L.mx(), 0);
    CK(cudaMemcpy(g_act_ref, w.act, size_t(R.n) * L.k * L.I * 2, cudaMemcpyDeviceToDevice));
    CK(cudaDeviceSynchronize());
  }
  // Run 2 tried the register depth D and the block shape; run 3 also L2 prefetch of later items (PF) and
  // activations prefetched with the weights (XP): both slower, removed (NOTES.md). Run 4 tried activations staged
  // in shared memory (no faster, removed) and the block shapes below with the division-free item loop.
  using moe::BulkCfg;
  // Run 6 (H200) lost clearly and removed: NCW4 NST4 BPS2, NCW8 NST4/NST6 BPS1, NCW16 NST6 BPS1, NCW2 NST2 BPS8.
  // Run 7: MT tiles per item (one activation load per chunk for MT tiles), conflict-free rows, float4 reduction.
  // Run 8: an fp8 inner loop (F*, FP*) at the same shapes: slower, removed.
  auto bulk_all = [&](auto gate_up) {  // the same configurations for gate_up and for down
    constexpr bool GU = decltype(gate_up)::value;
    bulk_variant<GU, BulkCfg<8, 2, 3, 1>>("B6 NCW8 NST2 BPS3 MT1 (default)", L, R, x, y, ws, bytes);
    bulk_variant<GU, BulkCfg<4, 2, 4, 1>>("B5 NCW4 NST2 BPS4 MT1", L, R, x, y, ws, bytes);
    bulk_variant<GU, BulkCfg<4, 2, 2, 2>>("B9 NCW4 NST2 BPS2 MT2", L, R, x, y, ws, bytes);
  };
  bulk_all(std::true_type{});
  bulk_all(std::false_type{});
  decode_variant<true, 2, 4, 1, 4>("G1 MT2 KS4 D1 MINB4 (regs default)", L, R, x, y, ws, bytes);
  decode_variant<true, 2, 2, 1, 8>("G2 MT2 KS2 D1 MINB8", L, R, x, y, ws, bytes);
  decode_variant<true, 4, 2, 1, 4>("G3 MT4 KS2 D1 MINB4", L, R, x, y, ws, bytes);
  decode_variant<true, 1, 4, 1, 8>("G4 MT1 KS4 D1 MINB8", L, R, x, y, ws, bytes);
  decode_variant<false, 1, 16, 1, 2>("D1 MT1 KS16 D1 MINB2 (regs default)", L, R, x, y, ws, bytes);
  decode_variant<false, 1, 8, 2, 2>("D2 MT1 KS8 D2 MINB2 (run-3 default)", L, R, x, y, ws, bytes);
  decode_variant<false, 1, 8, 1, 4>("D4 MT1 KS8 D1 MINB4", L, R, x, y, ws, bytes);
  cudaFree(g_act_ref);
  cudaFree(g_y_ref);
}

double nmse_dev(const float* a, const float* b, size_t n) {
  std::vector<float> ha(n), hb(n);
  CK(cudaMemcpy(ha.data(), a, n * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(hb.data(), b, n * 4, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(ha[i])) return INFINITY;
    num += double(ha[i] - hb[i]) * (ha[i] - hb[i]);
    den += double(hb[i]) * hb[i];
  }
  return num / den;
}

// The checkpoint's bytes of prepared MXFP4 blocks (mxfp4_layout.h's inverse of the layout), for the CPU twin.
void unprepare_blocks(std::vector<uint8_t>& b) {
  for (size_t off = 0; off + 16 <= b.size(); off += 16) {
    uint32_t o[4], w[4];
    std::memcpy(o, &b[off], 16);
    hm::mxfp4::unprepare_words(o, w);
    std::memcpy(&b[off], w, 16);
  }
}

// The CPU twin of one MoE call: y[t] = sum over the k chosen experts of weight * ref::expert_mlp_mxfp4(x[t]).
// Only the experts the routing uses are copied to the host.
std::vector<float> moe_on_cpu(const Layer& L, const int32_t* d_ids, const float* d_w, const uint16_t* d_x, int n) {
  std::vector<int32_t> ids(size_t(n) * L.k);
  std::vector<float> w(ids.size());
  std::vector<uint16_t> x(size_t(n) * L.H);
  CK(cudaMemcpy(ids.data(), d_ids, ids.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(w.data(), d_w, w.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(x.data(), d_x, x.size() * 2, cudaMemcpyDeviceToHost));
  const size_t gu_rows = 2 * size_t(L.I);
  struct Expert {
    std::vector<uint8_t> gu_b, gu_s, dn_b, dn_s;
    std::vector<uint16_t> gu_bias, dn_bias;
  };
  std::vector<Expert> experts(L.E);
  auto get = [](auto& v, const auto* d, size_t off, size_t n) {
    v.resize(n);
    CK(cudaMemcpy(v.data(), d + off, n * sizeof(v[0]), cudaMemcpyDeviceToHost));
  };
  std::vector<float> y(size_t(n) * L.H, 0.f), xe(L.H), ye(L.H);
  for (int t = 0; t < n; t++) {
    for (int h = 0; h < L.H; h++) xe[h] = hm::ref::bf16_to_f32(x[size_t(t) * L.H + h]);
    for (int j = 0; j < L.k; j++) {
      const int e = ids[size_t(t) * L.k + j];
      Expert& X = experts[e];
      if (X.gu_b.empty()) {
        get(X.gu_b, L.gu_b, e * gu_rows * L.H / 2, gu_rows * L.H / 2);
        get(X.gu_s, L.gu_s, e * gu_rows * L.H / 32, gu_rows * L.H / 32);
        get(X.gu_bias, L.gu_bias, e * gu_rows, gu_rows);
        get(X.dn_b, L.dn_b, size_t(e) * L.H * L.I / 2, size_t(L.H) * L.I / 2);
        get(X.dn_s, L.dn_s, size_t(e) * L.H * L.I / 32, size_t(L.H) * L.I / 32);
        get(X.dn_bias, L.dn_bias, size_t(e) * L.H, size_t(L.H));
        unprepare_blocks(X.gu_b);
        unprepare_blocks(X.dn_b);
      }
      hm::ref::expert_mlp_mxfp4(xe.data(), X.gu_b.data(), X.gu_s.data(), X.gu_bias.data(), X.dn_b.data(), X.dn_s.data(),
                                X.dn_bias.data(), L.H, L.I, 7.f, ye.data());
      for (int h = 0; h < L.H; h++) y[size_t(t) * L.H + h] += w[size_t(t) * L.k + j] * ye[h];
    }
  }
  return y;
}

// Runs `launch` (which writes p.y for routing set 0) and stops the program unless it matches the CPU twin (the
// op-test tolerance: nmse 1e-4, the SwiGLU output being rounded to bf16 between the matmuls).
// With fused routing (p.logits), the routing the kernels wrote to p.ids_out / p.weights_out is the twin's input.
// With rows < p.n only the first `rows` tokens are checked (the twin of thousands of tokens would take minutes).
template <typename F>
void check_cpu_twin(const char* what, const Layer& L, const MoeParams& p, F&& launch, int rows = -1) {
  CK(cudaMemset(p.y, 0xFF, size_t(p.n) * L.H * 4));
  launch();
  CK(cudaDeviceSynchronize());
  const std::vector<float> want = moe_on_cpu(L, p.logits ? p.ids_out : p.ids, p.logits ? p.weights_out : p.weights,
                                             p.x, rows < 0 ? p.n : rows);
  float* d_want = dalloc<float>(want.size());
  CK(cudaMemcpy(d_want, want.data(), want.size() * 4, cudaMemcpyHostToDevice));
  const double err = nmse_dev(p.y, d_want, want.size());
  cudaFree(d_want);
  std::printf("  check %s n=%d E=%d vs CPU twin (%zu tokens): nmse %.2e\n", what, p.n, L.E, want.size() / L.H, err);
  if (!(err <= 1e-4)) {
    std::fprintf(stderr, "moe_bench: %s n=%d disagrees with ref::expert_mlp_mxfp4 (nmse %.2e): not timing it\n", what,
                 p.n, err);
    std::exit(1);
  }
}

// ---- the grouped path (moe_grouped.cuh) against the prefill GEMM, 8 .. 2048 tokens ----

// One grouped layer with configuration C, as forward() runs it (router_topk_softmax, moe_route_sort, launch_grouped:
// moe_permute_x where XP, and the two grouped kernels, moe_combine), so the
// configurations compare in one run.
template <typename C>
void grouped_layer(const MoeParams& p, const Layer& L, cudaStream_t st) {
  const MoeMxfp4Weights w = L.mx();
  const moe::WMat gu{w.gu_blocks, w.gu_scales, w.gu_bias, 2 * p.I, p.H};
  const moe::WMat dn{w.dn_blocks, w.dn_scales, w.dn_bias, p.H, p.I};
  const moe::Workspace ws = moe::carve(p.workspace, p.n, p.H, p.I, p.E, p.k);
  RouterTopkParams rt;
  rt.logits = p.logits;
  rt.ld_logits = p.ld_logits;
  rt.n = p.n;
  rt.E = p.E;
  rt.k = p.k;
  rt.ids = p.ids_out;
  rt.weights = p.weights_out;
  rt.pdl = p.pdl;
  router_topk_softmax(rt, st);
  launch(moe::moe_route_sort, dim3(1), dim3(1024), 0, st, p.pdl, p.ids_out, p.n * p.k, p.E, ws);
  moe::launch_grouped<C>(p, gu, dn, p.weights_out, ws, st);
  launch(moe::moe_combine, dim3(p.n), dim3(256), 0, st, p.pdl, ws, p.H, p.k, p.y, p.ldy, p.accumulate);
}

// Median time of one layer call inside a CUDA graph of `sets` calls (routing set i each), with PDL.
float graph_us(int sets, const std::function<void(int, cudaStream_t)>& call, int iters) {
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  call(0, s);  // first call outside the capture (kernel attributes, occupancy queries)
  CK(cudaStreamSynchronize(s));
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < sets; i++) call(i, s);
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  const float t = time_us([&](int) { CK(cudaGraphLaunch(ge, s)); }, iters, 5, s) / sets;
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  CK(cudaStreamDestroy(s));
  return t;
}

struct GroupedRow {
  int E, n, k, uniq;
  double mb, gflop;
  float t_auto, t_prefill;
  std::vector<float> t_var;
};
std::vector<GroupedRow> g_grouped;
const char* const kGroupedNames[] = {"V0 NCW8 NST2 NTB4 BPS2 (bf16 loop, kGroupedBf16)",
                                     "V1 NCW8 NST2 NTB2 BPS3",
                                     "V2 NCW8 NST3 NTB4 BPS2",
                                     "V3 NCW8 NST2 NTB8 BPS1",
                                     "V4 NCW4 NST2 NTB4 BPS4",
                                     "V5 NCW8 NST4 NTB4 BPS1",
                                     "V6 NCW4 NST3 NTB2 BPS4",
                                     "V7 = V0 without XP (x permuted per load)",
                                     "V8 NCW8 NST2 NTB2 MT2 BPS1",
                                     "V9 NCW8 NST2 NTB4 MT2 BPS1",
                                     "V10 NCW4 NST2 NTB1 MT2 BPS2"};
constexpr int kGroupedVariants = 11, kBf16V0 = 0;
// The label of variant v ("V3").
std::string grouped_label(int v) {
  const std::string s = kGroupedNames[v];
  return s.substr(0, s.find(' '));
}
void grouped_variant_call(int v, const MoeParams& p, const Layer& L, cudaStream_t st) {
  using moe::GroupedCfg;
  switch (v) {
    case 0: return grouped_layer<GroupedCfg<8, 2, 4, 2>>(p, L, st);
    case 1: return grouped_layer<GroupedCfg<8, 2, 2, 3>>(p, L, st);
    case 2: return grouped_layer<GroupedCfg<8, 3, 4, 2>>(p, L, st);
    case 3: return grouped_layer<GroupedCfg<8, 2, 8, 1>>(p, L, st);
    case 4: return grouped_layer<GroupedCfg<4, 2, 4, 4>>(p, L, st);
    case 5: return grouped_layer<GroupedCfg<8, 4, 4, 1>>(p, L, st);
    case 6: return grouped_layer<GroupedCfg<4, 3, 2, 4>>(p, L, st);
    case 7: return grouped_layer<GroupedCfg<8, 2, 4, 2, 1, false>>(p, L, st);
    case 8: return grouped_layer<GroupedCfg<8, 2, 2, 1, 2>>(p, L, st);
    case 9: return grouped_layer<GroupedCfg<8, 2, 4, 1, 2>>(p, L, st);
    default: return grouped_layer<GroupedCfg<4, 2, 1, 2, 2>>(p, L, st);
  }
}

// Every n: the launcher's kAuto and kGrouped layers and every grouped configuration checked against the prefill
// path (nmse 1e-5), the prefill and grouped launchers against the CPU twin at n = 64 (grouped also at 16), then
// the layer (routing from the router logits included) timed in a graph for kAuto, kPrefill and every grouped
// configuration.
void grouped_section(const Layer& L, const uint16_t* x, float* y, void* ws, size_t ws_bytes) {
  for (int n : {8, 16, 32, 64, 128, 256, 512, 1024, 2048}) {
    const int sets = 2;
    Routing R(sets, n, L.k, L.E, true);
    std::vector<int32_t> h(size_t(n) * L.k);
    CK(cudaMemcpy(h.data(), R.ids_of(0), h.size() * 4, cudaMemcpyDeviceToHost));
    std::sort(h.begin(), h.end());
    const int uniq = int(std::unique(h.begin(), h.end()) - h.begin());
    int32_t* ids_out = dalloc<int32_t>(size_t(n) * L.k);
    float* w_out = dalloc<float>(size_t(n) * L.k);
    auto params = [&](MoePath path, int i, bool pdl) {
      MoeParams p;
      p.n = n;
      p.H = L.H;
      p.I = L.I;
      p.E = L.E;
      p.k = L.k;
      p.x = x;
      p.ldx = L.H;
      p.logits = R.logits_of(i);
      p.ld_logits = L.E;
      p.ids_out = ids_out;
      p.weights_out = w_out;
      p.y = y;
      p.ldy = L.H;
      p.accumulate = false;
      p.workspace = ws;
      p.workspace_bytes = ws_bytes;
      p.path = path;
      p.pdl = pdl;
      return p;
    };
    const size_t ny = size_t(n) * L.H;
    float* y_prefill = dalloc<float>(ny);
    {
      const MoeParams q = params(MoePath::kPrefill, 0, false);
      if (n == 64) check_cpu_twin("prefill mxfp4", L, q, [&] { moe_mxfp4_forward(q, L.mx(), 0); });
      moe_mxfp4_forward(q, L.mx(), 0);
      CK(cudaDeviceSynchronize());
      CK(cudaMemcpy(y_prefill, y, ny * 4, cudaMemcpyDeviceToDevice));
    }
    auto check_vs_prefill = [&](const char* what, const std::function<void()>& launch_it) {
      CK(cudaMemset(y, 0xFF, ny * 4));
      launch_it();
      CK(cudaDeviceSynchronize());
      const double err = nmse_dev(y, y_prefill, ny);
      std::printf("  check %s n=%d E=%d vs prefill: nmse %.2e\n", what, n, L.E, err);
      if (!(err <= 1e-5)) {
        std::fprintf(stderr, "moe_bench: %s n=%d E=%d disagrees with the prefill path (nmse %.2e)\n", what, n, L.E,
                     err);
        std::exit(1);
      }
    };
    for (MoePath path : {MoePath::kAuto, MoePath::kGrouped, MoePath::kGroupedBf16}) {
      const MoeParams q = params(path, 0, false);
      const char* name = path == MoePath::kAuto ? "auto" : path == MoePath::kGrouped ? "grouped" : "grouped_bf16";
      if (path != MoePath::kAuto && (n == 16 || n == 64))
        check_cpu_twin(name, L, q, [&] { moe_mxfp4_forward(q, L.mx(), 0); });
      check_vs_prefill(name, [&] { moe_mxfp4_forward(q, L.mx(), 0); });
    }
    for (int v = 0; v < kGroupedVariants; v++)
      check_vs_prefill(kGroupedNames[v], [&] { grouped_variant_call(v, params(MoePath::kGrouped, 0, false), L, 0); });

    const int iters = n >= 1024 ? 4 : n >= 256 ? 10 : 20;
    GroupedRow r{L.E, n, L.k, uniq, uniq * L.expert_bytes_mx() * 1e-6, double(n) * L.k * L.flops_per_pair() * 1e-9,
                 0.f, 0.f, {}};
    auto launcher = [&](MoePath path) {
      return graph_us(sets, [&](int i, cudaStream_t st) { moe_mxfp4_forward(params(path, i, true), L.mx(), st); },
                      iters);
    };
    r.t_auto = launcher(MoePath::kAuto);
    r.t_prefill = launcher(MoePath::kPrefill);
    for (int v = 0; v < kGroupedVariants; v++)
      r.t_var.push_back(graph_us(
          sets, [&](int i, cudaStream_t st) { grouped_variant_call(v, params(MoePath::kGrouped, i, true), L, st); },
          iters));
    std::printf("grouped n=%d E=%d (%d experts, %.0f MB): auto %.1f us | prefill %.1f us | grouped", n, L.E, uniq,
                r.mb, r.t_auto, r.t_prefill);
    for (float t : r.t_var) std::printf(" %.1f", t);
    std::printf(" us\n");
    g_grouped.push_back(r);
    cudaFree(y_prefill);
    cudaFree(ids_out);
    cudaFree(w_out);
  }
}

void grouped_summary() {
  if (g_grouped.empty()) return;
  std::printf("\n== grouped path (one layer: routing + gate_up + SwiGLU + down + combine, graph + PDL; GB/s of the "
              "unique experts' MXFP4 bytes) ==\n");
  for (int v = 0; v < kGroupedVariants; v++) std::printf("%s\n", kGroupedNames[v]);
  std::printf("| E | n | tokens/expert | experts | MB | auto us | prefill us | V0 us | best | best us | best GB/s "
              "| best TFLOP/s | prefill / best |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const GroupedRow& r : g_grouped) {
    int b = 0;
    for (int v = 1; v < kGroupedVariants; v++)
      if (r.t_var[v] < r.t_var[b]) b = v;
    std::printf("| %d | %d | %.1f | %d | %.0f | %.1f | %.1f | %.1f | %s | %.1f | %.0f | %.1f | %.2f |\n", r.E, r.n,
                double(r.n) * r.k / r.E, r.uniq, r.mb, r.t_auto, r.t_prefill, r.t_var[kBf16V0],
                grouped_label(b).c_str(), r.t_var[b], r.mb / r.t_var[b] * 1e3, r.gflop / r.t_var[b] * 1e-3,
                r.t_prefill / r.t_var[b]);
  }
  for (int E : {32, 128}) {  // the largest n at which V0 still beats the GEMM
    int cross_v = 0;
    for (const GroupedRow& r : g_grouped)
      if (r.E == E && r.t_var[kBf16V0] < r.t_prefill) cross_v = r.n;
    std::printf("E=%d: faster than prefill up to n = %d (V0) of those timed\n", E, cross_v);
  }
}

MoeParams with_path(MoeParams q, MoePath path) {
  q.path = path;
  return q;
}
MoeParams with_wgmma_tile(MoeParams q, int tile) {
  q.path = MoePath::kPrefillWgmma;
  q.wgmma_tile = tile;
  return q;
}

// ---- prefill: v1 (moe_grouped_gemm) against the cp.async-ring GEMM (moe_prefill_mma.cuh) and its configurations ----

struct PrefillRow {
  std::string what;
  int E, n;
  float us;
  double tflops;
};
std::vector<PrefillRow> g_prefill_rows;

// One layer through a chosen moe_prefill_mma configuration (both matrices), as moe::forward runs the prefill path.
template <typename C>
void prefill_mma_layer(const Layer& L, const MoeParams& q) {
  const moe::Workspace w = moe::carve(q.workspace, q.n, L.H, L.I, L.E, L.k);
  const int P = q.n * L.k;
  const moe::WMat gu{L.gu_b, L.gu_s, L.gu_bias, 2 * L.I, L.H}, dn{L.dn_b, L.dn_s, L.dn_bias, L.H, L.I};
  launch(moe::moe_route_sort, dim3(1), dim3(1024), 0, 0, false, q.ids, P, L.E, w);
  moe::GemmArgs g{gu, q.x, q.ldx, q.k, q.weights, q.swiglu_limit, w};
  moe::launch_prefill_mma_pair<C, C>(g, gu, dn, w.act, L.I, P, L.E, 0, false);
  launch(moe::moe_combine, dim3(q.n), dim3(256), 0, 0, false, w, L.H, L.k, q.y, q.ldy, false);
}
// What is not a GEMM: the route sort and the combine (the layer minus both GEMMs).
void prefill_overhead(const Layer& L, const MoeParams& q) {
  const moe::Workspace w = moe::carve(q.workspace, q.n, L.H, L.I, L.E, L.k);
  launch(moe::moe_route_sort, dim3(1), dim3(1024), 0, 0, false, q.ids, q.n * L.k, L.E, w);
  launch(moe::moe_combine, dim3(q.n), dim3(256), 0, 0, false, w, L.H, L.k, q.y, q.ldy, false);
}

std::vector<float> download(const float* d, size_t n) {
  std::vector<float> h(n);
  CK(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost));
  return h;
}

// Checks (CPU twin on all tokens at n = 64, on the first 16 above; every variant bit-identical to v1 on all
// tokens), then times v1, the launcher's default and the configurations; random routing.
void prefill_section(const Layer& L, int n, const uint16_t* x, float* y, void* ws, size_t ws_bytes) {
  Routing R(2, n, L.k, L.E, true);
  MoeParams p;
  p.n = n;
  p.H = L.H;
  p.I = L.I;
  p.E = L.E;
  p.k = L.k;
  p.x = x;
  p.ldx = L.H;
  p.y = y;
  p.ldy = L.H;
  p.workspace = ws;
  p.workspace_bytes = ws_bytes;
  p.ids = R.ids_of(0);
  p.weights = R.w_of(0);
  const double flops = double(n) * L.k * L.flops_per_pair();
  const int rows = n <= 64 ? -1 : 16;
  auto with = [&](MoePath path) {
    MoeParams q = p;
    q.path = path;
    return q;
  };
  check_cpu_twin("prefill mxfp4 v1", L, with(MoePath::kPrefillV1),
                 [&] { moe_mxfp4_forward(with(MoePath::kPrefillV1), L.mx(), 0); }, rows);
  const std::vector<float> y_v1 = download(y, size_t(n) * L.H);
  check_cpu_twin("prefill mxfp4 (default: kPrefill)", L, with(MoePath::kPrefill),
                 [&] { moe_mxfp4_forward(with(MoePath::kPrefill), L.mx(), 0); }, rows);
  if (n <= 64) check_cpu_twin("prefill bf16", L, with(MoePath::kPrefill), [&] { moe_bf16_forward(with(MoePath::kPrefill), L.bf(), 0); });
  check_cpu_twin("prefill mxfp4 wgmma (moe_prefill_wgmma)", L, with(MoePath::kPrefillWgmma),
                 [&] { moe_mxfp4_forward(with(MoePath::kPrefillWgmma), L.mx(), 0); }, rows);

  struct V {
    const char* name;
    std::function<void(const MoeParams&)> call;
  };
  const std::vector<V> vs = {
      {"v1 mxfp4 (kPrefillV1)", [&](const MoeParams& q) { moe_mxfp4_forward(with_path(q, MoePath::kPrefillV1), L.mx(), 0); }},
      {"default (kPrefill)", [&](const MoeParams& q) { moe_mxfp4_forward(with_path(q, MoePath::kPrefill), L.mx(), 0); }},
      {"v2 (kPrefill, wgmma off)", [&](const MoeParams& q) {
         MoeParams r = with_path(q, MoePath::kPrefill);
         r.wgmma = false;
         moe_mxfp4_forward(r, L.mx(), 0);
       }},
      {"M1 BK32 NST4", [&](const MoeParams& q) { prefill_mma_layer<moe::PrefillCfg<32, 4>>(L, q); }},
      {"M2 BK32 NST6", [&](const MoeParams& q) { prefill_mma_layer<moe::PrefillCfg<32, 6>>(L, q); }},
      {"M3 BK64 NST3", [&](const MoeParams& q) { prefill_mma_layer<moe::PrefillCfg<64, 3>>(L, q); }},
      {"M4 BK64 NST4 (1 block/SM)", [&](const MoeParams& q) { prefill_mma_layer<moe::PrefillCfg<64, 4>>(L, q); }},
      {"bf16 v1", [&](const MoeParams& q) { moe_bf16_forward(with_path(q, MoePath::kPrefill), L.bf(), 0); }},
      {"wgmma (kPrefillWgmma)", [&](const MoeParams& q) { moe_mxfp4_forward(with_path(q, MoePath::kPrefillWgmma), L.mx(), 0); }},
      {"wgmma tile 16", [&](const MoeParams& q) { moe_mxfp4_forward(with_wgmma_tile(q, 16), L.mx(), 0); }},
      {"wgmma tile 32", [&](const MoeParams& q) { moe_mxfp4_forward(with_wgmma_tile(q, 32), L.mx(), 0); }},
      {"wgmma tile 64", [&](const MoeParams& q) { moe_mxfp4_forward(with_wgmma_tile(q, 64), L.mx(), 0); }},
      {"wgmma tile 128", [&](const MoeParams& q) { moe_mxfp4_forward(with_wgmma_tile(q, 128), L.mx(), 0); }},
      {"wgmma fitted tiles", [&](const MoeParams& q) { moe_mxfp4_forward(with_wgmma_tile(q, kMoeWgmmaTileFit), L.mx(), 0); }},
      {"wgmma fixed width (by mean)", [&](const MoeParams& q) { moe_mxfp4_forward(with_wgmma_tile(q, kMoeWgmmaTileFixed), L.mx(), 0); }},
      {"route sort + combine only", [&](const MoeParams& q) { prefill_overhead(L, q); }},
  };
  for (const V& v : vs) {
    const bool is_overhead = std::strcmp(v.name, "route sort + combine only") == 0;
    if (!is_overhead) {  // every variant gives v1's bits on every token (the wgmma ones too)
      CK(cudaMemset(y, 0xFF, size_t(n) * L.H * 4));
      v.call(p);
      CK(cudaDeviceSynchronize());
      const std::vector<float> got = download(y, size_t(n) * L.H);
      size_t diff = 0;
      for (size_t i = 0; i < got.size(); i++) diff += std::memcmp(&got[i], &y_v1[i], 4) != 0;
      if (diff) {
        std::fprintf(stderr, "moe_bench: prefill %s n=%d E=%d: %zu elements differ from v1's bits\n", v.name, n, L.E,
                     diff);
        std::exit(1);
      }
    }
    const float t = time_us([&](int i) {
      MoeParams q = p;
      q.ids = R.ids_of(i);
      q.weights = R.w_of(i);
      v.call(q);
    }, 10, 5);
    std::printf("prefill n=%d E=%d %-28s %8.0f us  %6.1f TFLOP/s  %8.0f tok/s per layer%s\n", n, L.E, v.name, t,
                is_overhead ? 0.0 : flops / t * 1e-6, n / t * 1e6,
                is_overhead ? "" : "  (v1 bits)");
    g_prefill_rows.push_back({v.name, L.E, n, t, is_overhead ? 0.0 : flops / t * 1e-6});
  }
}

// The one-token layer as the engine runs it, attention left out: q/k/v GEMV (RMSNorm fused, 2880 -> 5120), o GEMV
// (4096 -> 2880, residual add), router GEMV (RMSNorm fused, writing the experts' input), the MoE layer routing
// from the logits (y += into the residual), each launched with PDL, 8 layers of distinct weights in one graph.
// What the MoE kernels' neighbours do to them: the bulk and split paths both ways (MOE_DECODE_ONLY runs it).
void chain_section(const Layer& L, void* ws, size_t ws_bytes) {
  constexpr int kLayers = 8, H = 2880, Q = 5120, O = 4096;
  std::vector<uint16_t*> wq(kLayers), wo(kLayers), wr(kLayers);
  for (int l = 0; l < kLayers; l++) {
    wq[l] = dalloc<uint16_t>(size_t(Q) * H);
    wo[l] = dalloc<uint16_t>(size_t(H) * O);
    wr[l] = dalloc<uint16_t>(size_t(L.E) * H);
    fill_bf16<<<256, 256>>>(wq[l], size_t(Q) * H, 100 + l, 0.05f);
    fill_bf16<<<256, 256>>>(wo[l], size_t(H) * O, 200 + l, 0.05f);
    fill_bf16<<<256, 256>>>(wr[l], size_t(L.E) * H, 300 + l, 0.5f);
  }
  uint16_t *nw = dalloc<uint16_t>(H), *xn = dalloc<uint16_t>(H), *attn = dalloc<uint16_t>(O);
  float *resid = dalloc<float>(H), *qkv = dalloc<float>(Q), *logits = dalloc<float>(L.E), *w_out = dalloc<float>(8);
  int32_t* ids_out = dalloc<int32_t>(8);
  fill_bf16<<<16, 256>>>(nw, H, 400, 2.f);
  fill_bf16<<<16, 256>>>(attn, O, 401, 2.f);
  CK(cudaMemset(resid, 0, H * 4));
  CK(cudaDeviceSynchronize());
  std::vector<float*> lstat(kLayers);  // without the router: fixed logits per layer (other experts each layer)
  for (int l = 0; l < kLayers; l++) {
    std::vector<float> h(L.E);
    for (int e = 0; e < L.E; e++) h[e] = float((e * 37 + l * 11) % L.E);
    lstat[l] = dalloc<float>(L.E);
    CK(cudaMemcpy(lstat[l], h.data(), L.E * 4, cudaMemcpyHostToDevice));
  }
  // mask: 1 q/k/v, 2 o, 4 router (without it the MoE takes lstat[l] and x = xn as last written)
  // 8: q/k/v launched without PDL; 16: the MoE kernels launched without PDL
  for (int mask : {7, 1, 2, 4, 0, 1 | 8, 1 | 16})
  for (MoePath path : {MoePath::kDecode, MoePath::kDecodeSplit}) {
    auto layer = [&](int l, cudaStream_t st) {
      // One token's GEMV y (+)= W x (x bf16, or the RMSNorm of the fp32 residual when normed).
      auto gemv = [&](const uint16_t* W, const uint16_t* x, bool normed, float* y, int N, int K, bool acc,
                      uint16_t* norm_out, bool pdl) {
        DenseParams d;
        d.T = 1;
        d.pdl = pdl;
        d.x = normed ? nullptr : x;
        d.norm_x = normed ? resid : nullptr;
        d.norm_w = normed ? nw : nullptr;
        d.norm_out = norm_out;
        d.W = W;
        d.y = y;
        d.N = N;
        d.K = K;
        d.ldx = K;
        d.ldy = N;
        d.accumulate = acc;
        dense(d, st);
      };
      if (mask & 1) gemv(wq[l], nullptr, true, qkv, Q, H, false, nullptr, !(mask & 8));
      if (mask & 2) gemv(wo[l], attn, false, resid, H, O, true, nullptr, true);
      if (mask & 4) gemv(wr[l], nullptr, true, logits, L.E, H, false, xn, true);
      MoeParams m;
      m.n = 1;
      m.H = H;
      m.I = L.I;
      m.E = L.E;
      m.k = L.k;
      m.x = xn;
      m.ldx = H;
      m.logits = mask & 4 ? logits : lstat[l];
      m.ld_logits = L.E;
      m.ids_out = ids_out;
      m.weights_out = w_out;
      m.y = resid;
      m.ldy = H;
      m.accumulate = true;
      m.workspace = ws;
      m.workspace_bytes = ws_bytes;
      m.path = path;
      m.pdl = !(mask & 16);
      moe_mxfp4_forward(m, L.mx(), st);
    };
    const float t = graph_us(kLayers, layer, 20);
    std::printf("chain E=%d (%s%s%sMoE%s, one token, graph + PDL) %s: %.1f us per layer\n", L.E,
                mask & 1 ? (mask & 8 ? "qkv no-PDL + " : "qkv + ") : "", mask & 2 ? "o + " : "",
                mask & 4 ? "router + " : "", mask & 16 ? " no-PDL" : "",
                path == MoePath::kDecode ? "bulk " : "split", t);
  }
  for (float* q : lstat) cudaFree(q);
  for (int l = 0; l < kLayers; l++) {
    cudaFree(wq[l]);
    cudaFree(wo[l]);
    cudaFree(wr[l]);
  }
  for (void* q : {(void*)nw, (void*)xn, (void*)attn, (void*)resid, (void*)qkv, (void*)logits, (void*)w_out,
                  (void*)ids_out})
    cudaFree(q);
}

// A comma list of integers from the environment, or `fallback` when unset or empty.
static std::vector<int> env_ints(const char* name, std::vector<int> fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  std::vector<int> out;
  for (const char* p = v; *p;) {
    char* end = nullptr;
    out.push_back(int(std::strtol(p, &end, 10)));
    p = *end == ',' ? end + 1 : end;
    if (end == p && *p) break;
  }
  return out;
}

int main() {
  int dev = 0;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  {  // the bandwidth ceiling: a large device-to-device copy (bytes read + written)
    const size_t n = size_t(1) << 30;
    void *a = dalloc<uint8_t>(n), *b = dalloc<uint8_t>(n);
    CK(cudaMemset(a, 1, n));
    const float t = time_us([&](int) { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice)); }, 10, 5);
    std::printf("D2D copy 1 GiB: %.0f us, %.0f GB/s (read + write)\n", t, 2.0 * n / t * 1e-3);
    cudaFree(a);
    cudaFree(b);
  }

  const int n_prefill = 8192;
  // MOE_E=32|128 runs one expert count; MOE_PREFILL_N=64,256 the prefill section at those token counts only
  // (both for profiling one shape under ncu).
  const char* only_e = std::getenv("MOE_E");
  const std::vector<int> prefill_ns = env_ints("MOE_PREFILL_N", {64, 256, 512, 2048, n_prefill});
  for (int E : {32, 128}) {
    if (only_e && std::atoi(only_e) != E) continue;
    const bool grouped_only = std::getenv("MOE_GROUPED_ONLY") != nullptr;
    Layer L(E, !grouped_only);
    const size_t ws_bytes = moe_workspace_bytes(n_prefill, L.H, L.I, L.E, L.k);
    void* ws = dalloc<uint8_t>(ws_bytes);
    uint16_t* x = dalloc<uint16_t>(size_t(n_prefill) * L.H);
    fill_bf16<<<256, 256>>>(x, size_t(n_prefill) * L.H, 9, 2.f);
    float* y = dalloc<float>(size_t(n_prefill) * L.H);
    CK(cudaDeviceSynchronize());
    std::printf("\n== E=%d, H=I=2880, k=4 ==\n", E);

    if (std::getenv("MOE_CHAIN_ONLY")) {  // the engine-like chain alone (chain_section)
      chain_section(L, ws, ws_bytes);
      cudaFree(ws);
      cudaFree(x);
      cudaFree(y);
      continue;
    }
    for (int n : env_ints("MOE_DECODE_N", {1, 2, 4, 8})) {
      if (grouped_only || std::getenv("MOE_PREFILL_ONLY")) break;  // grouped-only and prefill-only runs
      const int sets = std::max(2, E / std::min(E, n * L.k)) * 4;
      Routing R(sets, n, L.k, E, n > 1);
      // Bytes a step must read: the union of the experts (consecutive sets are disjoint for n = 1).
      std::vector<int32_t> h(size_t(n) * L.k);
      CK(cudaMemcpy(h.data(), R.ids_of(0), h.size() * 4, cudaMemcpyDeviceToHost));
      std::sort(h.begin(), h.end());
      const int uniq = int(std::unique(h.begin(), h.end()) - h.begin());
      const double bytes_mx = uniq * L.expert_bytes_mx(), bytes_bf = uniq * L.expert_bytes_bf16();
      MoeParams p;
      p.n = n;
      p.H = L.H;
      p.I = L.I;
      p.E = E;
      p.k = L.k;
      p.x = x;
      p.ldx = L.H;
      p.y = y;
      p.ldy = L.H;
      p.workspace = ws;
      p.workspace_bytes = ws_bytes;
      int32_t* ids_out = dalloc<int32_t>(size_t(n) * L.k);
      float* w_out = dalloc<float>(size_t(n) * L.k);
      // One layer call of a decode variant on routing set i: 0 regs, 1 bulk, 2 bulk+route, 3 router_topk_softmax
      // then regs (what the engine ran before: 2 vs 3 is the engine's change), 4 bulk-direct, 5 bulk-direct+route
      // (the bulk kernels in configuration B6 launched directly, without the launcher).
      auto params = [&](int v, int i, bool pdl) {
        MoeParams q = p;
        q.path = v == 0 || v == 3 ? MoePath::kDecodeRegs : v >= 6 ? MoePath::kDecodeSplit : MoePath::kDecode;
        if (v == 3) {
          q.ids = ids_out;
          q.weights = w_out;
        } else if (v == 2 || v == 5 || v == 7) {
          q.logits = R.logits_of(i);
          q.ld_logits = E;
          q.ids_out = ids_out;
          q.weights_out = w_out;
        } else {
          q.ids = R.ids_of(i);
          q.weights = R.w_of(i);
        }
        q.pdl = pdl;
        return q;
      };
      auto call = [&](int v, int i, bool pdl, cudaStream_t st) {
        if (v == 3) {
          RouterTopkParams rt;
          rt.logits = R.logits_of(i);
          rt.ld_logits = E;
          rt.n = n;
          rt.E = E;
          rt.k = L.k;
          rt.ids = ids_out;
          rt.weights = w_out;
          rt.pdl = pdl;
          router_topk_softmax(rt, st);
        }
        if (v == 4 || v == 5) {
          using Bf = moe::BulkCfg<8, 2, 3, 1>;
          const MoeParams q = params(v, i, pdl);
          moe::launch_decode_bulk<Bf, Bf>(q, moe::WMat{L.gu_b, L.gu_s, L.gu_bias, 2 * L.I, L.H},
                                          moe::WMat{L.dn_b, L.dn_s, L.dn_bias, L.H, L.I},
                                          moe::carve(q.workspace, q.n, L.H, L.I, L.E, L.k), st);
          return;
        }
        moe_mxfp4_forward(params(v, i, pdl), L.mx(), st);
      };
      const char* names[8] = {"regs",      "bulk",           "bulk+route", "router+regs",
                              "bulk-direct", "bulk-direct+route", "split",    "split+route"};
      const int nv = n == 1 ? 8 : 6;  // the split kernels: one token
      for (int v = 0; v < nv; v++)
        check_cpu_twin((std::string("decode mxfp4 ") + names[v]).c_str(), L, params(v, 0, false),
                       [&] { call(v, 0, false, 0); });
      {
        MoeParams q = params(0, 0, false);
        check_cpu_twin("decode bf16", L, q, [&] { moe_bf16_forward(q, L.bf(), 0); });
      }
      for (int v = 0; v < nv; v++) {
        const float t_mx = time_us([&](int i) { call(v, i, false, 0); });
        const float t_mx_pdl = time_us([&](int i) { call(v, i, true, 0); });
        // The same calls captured in a CUDA graph (one graph = `sets` layers of different experts).
        cudaStream_t s;
        CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < R.sets; i++) call(v, i, true, s);
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        const float t_graph = time_us([&](int) { CK(cudaGraphLaunch(ge, s)); }, 10, 7, s) / R.sets;
        CK(cudaGraphExecDestroy(ge));
        CK(cudaGraphDestroy(g));
        CK(cudaStreamDestroy(s));
        std::printf("decode n=%d (%d experts, %.1f MB mxfp4) %-11s: %.1f us (%.0f GB/s) | +pdl %.1f us | graph+pdl %.1f us "
                    "(%.0f GB/s)\n",
                    n, uniq, bytes_mx * 1e-6, names[v], t_mx, bytes_mx / t_mx * 1e-3, t_mx_pdl, t_graph,
                    bytes_mx / t_graph * 1e-3);
        row(std::string("layer ") + names[v], E, n, t_mx, bytes_mx);
        row(std::string("layer ") + names[v] + " graph+pdl", E, n, t_graph, bytes_mx);
      }
      if (n == 1) {  // the split kernels' configurations (whole layer, routing from logits, graph + PDL)
        auto split_cfg = [&](const char* name, auto cfg) {
          using C = decltype(cfg);
          auto layer = [&](const MoeParams& q, cudaStream_t st) {
            moe::launch_decode_split<C, C>(q, moe::WMat{L.gu_b, L.gu_s, L.gu_bias, 2 * L.I, L.H},
                                           moe::WMat{L.dn_b, L.dn_s, L.dn_bias, L.H, L.I},
                                           moe::carve(q.workspace, q.n, L.H, L.I, L.E, L.k), st);
          };
          const MoeParams q0 = params(7, 0, false);
          check_cpu_twin((std::string("decode mxfp4 split+route ") + name).c_str(), L, q0, [&] { layer(q0, 0); });
          const float t = graph_us(R.sets, [&](int i, cudaStream_t st) { layer(params(7, i, true), st); }, 10);
          std::printf("decode n=1 split+route %-20s graph+pdl %.1f us (%.0f GB/s)\n", name, t, bytes_mx / t * 1e-3);
          row(std::string("layer split+route ") + name + " graph+pdl", E, n, t, bytes_mx);
        };
        split_cfg("KS8 CPW3", moe::SplitCfg<8, 3>{});
        split_cfg("KS8 CPW3 grid=items", moe::SplitCfg<8, 3, false>{});
        split_cfg("KS6 CPW4 grid=items", moe::SplitCfg<6, 4, false>{});
        split_cfg("KS4 CPW6", moe::SplitCfg<4, 6>{});
        split_cfg("KS6 CPW4", moe::SplitCfg<6, 4>{});
        split_cfg("KS12 CPW2", moe::SplitCfg<12, 2>{});
        split_cfg("KS16 CPW2", moe::SplitCfg<16, 2>{});
      }
      const float t_bf = time_us([&](int i) { moe_bf16_forward(params(0, i, false), L.bf(), 0); });
      std::printf("decode n=%d bf16: %.1f us (%.0f GB/s of %.1f MB)\n", n, t_bf, bytes_bf / t_bf * 1e-3, bytes_bf * 1e-6);
      cudaFree(ids_out);
      cudaFree(w_out);
      decode_variants(L, R, x, y, ws, bytes_mx);
    }

    if (std::getenv("MOE_DECODE_ONLY") && !std::getenv("MOE_NO_CHAIN")) chain_section(L, ws, ws_bytes);
    for (int n : prefill_ns) {
      if (std::getenv("MOE_DECODE_ONLY") || grouped_only) break;  // decode-only (run 4), grouped-only runs
      prefill_section(L, n, x, y, ws, ws_bytes);
    }
    if (!std::getenv("MOE_DECODE_ONLY") && !std::getenv("MOE_PREFILL_ONLY")) grouped_section(L, x, y, ws, ws_bytes);
    cudaFree(ws);
    cudaFree(x);
    cudaFree(y);
  }
  CK(cudaGetLastError());
  std::printf("\n== summary (decode; bytes = the selected experts' MXFP4 weights; kernels alone split 2/3 gate_up, 1/3 down) ==\n");
  std::printf("| what | E | n | us | GB/s |\n|---|---|---|---|---|\n");
  for (const Row& r : g_rows) std::printf("| %s | %d | %d | %.1f | %.0f |\n", r.what.c_str(), r.E, r.n, r.us, r.gbs);
  grouped_summary();
  if (!g_prefill_rows.empty()) {
    std::printf("\n== summary (prefill, whole layer: route sort + gate_up + down + combine; FLOPs of both GEMMs) ==\n");
    std::printf("| what | E | n | us | TFLOP/s |\n|---|---|---|---|---|\n");
    for (const PrefillRow& r : g_prefill_rows)
      std::printf("| %s | %d | %d | %.0f | %.1f |\n", r.what.c_str(), r.E, r.n, r.us, r.tflops);
  }
  return 0;
}
