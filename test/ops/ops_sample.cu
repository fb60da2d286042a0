// Op-test cases of sampling in the step (kernels/sample.h) against the CPU reference hm::sample_row_ref:
//   sample_rows      per row the same token as the reference wherever the reference's winning margin (best minus
//                    second Gumbel score) is above 1e-3 (fp32 scores on the device, fp64 in the reference; greedy
//                    rows always), and its raw logit exactly; rows 1/3/64/256, V = 201088 and odd V, every
//                    combination of the issue mixed in one batch, entries (bias, prompt, counts), tied logits.
//                    The params column prints how many rows were compared and how many near-ties were skipped.
//                    Run as the engine does (narrow_logits' argmax given: no max pass where no row has entries
//                    or is greedy); also bit for bit against the max pass, top_p's previous three select passes
//                    and, up to 8 rows, the benchmark's variants (1, 32 and 256 blocks a row; the select histograms).
//   sample_flat      rows of equal logits: top_p's open bucket overflows the gumbel pass's list, ties at the cut.
//   sample_batch     the same row alone and inside a batch of 64 rows of other parameters: the same token, bit
//                    for bit (the device's own determinism, no margin rule).
//   narrow_batch     narrow_logits of a row alone (top_k 0, 5) and inside 64 rows (top_k 5, 20, 50, and the
//                    one-block-per-row variant's top-k) and 256 rows (top_k 20): the same argmax, logsumexp bits
//                    and top-k ids and logits (64 x 50 and 256 x 20 take narrow_rows alone).
//   narrow_zeros     top-k ids of rows topped by +0 / -0 ties against hm::narrow_logits_row, on both paths.
// HM_OP_BENCH=1 times sample_rows per stage set as the engine calls it (narrow_logits' argmax given; top_p also
// round 1's path, the max pass, the select histogram variants, and up to 8 rows other blocks a row), and narrow_logits
// per top_k (logprobs; also the one-block-per-row variant), at V = 201088 (rows 1, 8, 64, 256).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.h"  // narrow_logits_row
#include "logits.h"
#include "op_test.h"
#include "sample.h"
#include "sampling.h"

namespace hm::optest {
namespace {

#define S_CHECK(expr)                                                                                   \
  do {                                                                                                  \
    cudaError_t e_ = (expr);                                                                            \
    if (e_ != cudaSuccess) throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(e_)); \
  } while (0)

template <typename T>
struct Buf {
  T* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t count) : n(count) { S_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T))); }
  Buf(const Buf&) = delete;
  ~Buf() { cudaFree(p); }
  void put(const T* h, size_t count) { S_CHECK(cudaMemcpy(p, h, count * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    S_CHECK(cudaDeviceSynchronize());
    S_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

uint32_t mix(uint32_t x) { return sample_fmix32(x * 0x9e3779b1u + 0x7f4a7c15u); }

// Flat logits as random weights give (uniform +-1.5, a few raised), or coarse levels for ties.
std::vector<float> logits_of(int rows, int V, uint32_t seed, bool ties) {
  std::vector<float> x(size_t(rows) * V);
  for (size_t i = 0; i < x.size(); i++) {
    const float u = float(mix(uint32_t(i) ^ seed) >> 8) / 16777216.f;
    float v = u * 3.f - 1.5f + ((i % size_t(V)) % 9973 == 0 ? 3.f : 0.f);
    if (ties) v = std::round(v * 4.f) / 4.f;
    x[i] = v;
  }
  return x;
}

// The issue's combinations plus greedy-with-penalties and an all-filters row; row r takes combo (r + shift) % n.
SampleRow combo(int c, uint32_t seed) {
  SampleRow p;
  p.mode = kSampleDraw;
  p.key1 = mix(seed * 2 + 1);
  p.key2 = mix(seed * 2 + 2);
  switch (c % 7) {
    case 0: break;                                                      // temperature 1
    case 1: p.top_p = 0.9f; break;                                      // + top_p 0.9
    case 2: p.inv_temperature = 1.f / 0.7f, p.top_k = 50, p.log_min_p = std::log(0.05f); break;
    case 3: p.presence = 0.5f, p.frequency = 0.5f, p.repetition = 1.1f; break;
    case 4: p.mode = kSampleGreedy, p.repetition = 1.3f; break;
    case 5: p.inv_temperature = 1.f / 1.3f, p.top_k = 200, p.top_p = 0.5f, p.log_min_p = std::log(0.01f); break;
    case 6: p.top_k = 1000, p.top_p = 0.95f; break;
  }
  return p;
}

// Entries for row r: a prompt of 40 tokens, a few output tokens with counts, two biases; ids ascending.
void entries_of(int r, int V, std::vector<SampleEntry>& out) {
  std::vector<SampleEntry> e;
  for (int j = 0; j < 48; j++) {
    SampleEntry s;
    s.id = int(mix(uint32_t(r * 131 + j)) % uint32_t(V));
    s.in_prompt = j < 40;
    s.count = j >= 36 ? 1 + j % 3 : 0;
    s.bias = j == 46 ? 5.f : j == 47 ? -100.f : 0.f;
    e.push_back(s);
  }
  std::sort(e.begin(), e.end(), [](const SampleEntry& a, const SampleEntry& b) { return a.id < b.id; });
  for (size_t j = 0; j < e.size(); j++)
    if (j == 0 || e[j].id != e[j - 1].id) out.push_back(e[j]);
}

struct Batch {
  std::vector<float> x;
  std::vector<SampleRow> rows;
  std::vector<SampleEntry> entries;
};

Batch make_batch(int rows, int V, uint32_t seed, bool ties, int shift) {
  Batch b;
  b.x = logits_of(rows, V, seed, ties);
  for (int r = 0; r < rows; r++) {
    SampleRow p = combo(r + shift, seed + r);
    p.entry_begin = int(b.entries.size());
    if ((r + shift) % 7 == 3 || (r + shift) % 7 == 4 || r % 5 == 1) entries_of(r + int(seed), V, b.entries);
    p.entry_end = int(b.entries.size());
    b.rows.push_back(p);
  }
  return b;
}

// Microseconds per call of `launch` (3 warm-up calls, then 20 timed between two events on the default stream).
template <class Launch>
float time_us(Launch launch) {
  for (int i = 0; i < 3; i++) launch();
  cudaEvent_t e0, e1;
  S_CHECK(cudaEventCreate(&e0));
  S_CHECK(cudaEventCreate(&e1));
  S_CHECK(cudaEventRecord(e0));
  const int iters = 20;
  for (int i = 0; i < iters; i++) launch();
  S_CHECK(cudaEventRecord(e1));
  S_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  S_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms * 1000 / iters;
}

// The row argmax narrow_logits gives (the engine hands it to sample_rows: SampleRowsParams::argmax).
void narrow_argmax(const float* x, int rows, int V, int32_t* argmax) {
  Buf<float> mx(rows), lse(rows);
  Buf<char> ws(cuda::narrow_workspace_bytes(rows, V));
  cuda::NarrowLogitsParams p;
  p.logits = x, p.rows = rows, p.vocab = V, p.ld = V, p.argmax = argmax, p.max_logit = mx.p, p.logsumexp = lse.p;
  p.workspace = ws.p, p.workspace_bytes = ws.n;
  cuda::narrow_logits(p, nullptr);
  S_CHECK(cudaDeviceSynchronize());
}

// How run_device calls sample_rows: by default as the engine does (narrow_logits' argmax given).
struct Variant {
  bool three_passes = false, max_pass = false;
  int select_hist = cuda::kHistAuto, blocks_per_row = 0;
};

// A batch on the device and the sample_rows parameters the engine passes for it (narrow_logits' argmax given);
// the op test and the benchmark both start from these.
struct DeviceBatch {
  const int rows;
  Buf<float> x, saved, lg;
  Buf<SampleRow> pr;
  Buf<SampleEntry> en;
  Buf<int32_t> tk, am;
  Buf<char> ws;
  cuda::SampleRowsParams p;
  DeviceBatch(const Batch& b, int V)
      : rows(int(b.rows.size())), x(b.x.size()), saved(std::max<size_t>(1, b.entries.size())), lg(rows), pr(rows),
        en(std::max<size_t>(1, b.entries.size())), tk(rows), am(rows), ws(cuda::sample_workspace_bytes(rows)) {
    x.put(b.x.data(), b.x.size());
    pr.put(b.rows.data(), rows);
    if (!b.entries.empty()) en.put(b.entries.data(), b.entries.size());
    S_CHECK(cudaMemset(tk.p, 0xff, rows * 4));
    narrow_argmax(x.p, rows, V, am.p);
    p.logits = x.p, p.rows = rows, p.vocab = V, p.ld = V, p.params = pr.p, p.entries = en.p, p.saved = saved.p;
    p.token = tk.p, p.raw_logit = lg.p, p.workspace = ws.p, p.workspace_bytes = ws.n;
    p.stages = cuda::sample_stages(b.rows.data(), rows);
    p.argmax = am.p;
  }
};

// Runs sample_rows on a batch; returns tokens and raw logits.
void run_device(const Batch& b, int V, std::vector<int32_t>* token, std::vector<float>* logit, const Variant& v = {}) {
  DeviceBatch d(b, V);
  cuda::SampleRowsParams& p = d.p;
  if (v.max_pass) p.argmax = nullptr;
  p.top_p_three_passes = v.three_passes;
  p.blocks_per_row = v.blocks_per_row, p.select_hist = v.select_hist;
  cuda::sample_rows(p, nullptr);
  *token = d.tk.get();
  *logit = d.lg.get();
}

std::vector<Result> test_sample() {
  std::vector<Result> out;
  struct Case { int rows, V; bool ties; };
  for (const Case& c : {Case{1, 201088, false}, Case{3, 201088, false}, Case{64, 201088, false}, Case{256, 201088, false},
                        Case{3, 50001, false}, Case{64, 1031, false}, Case{7, 201088, true}, Case{16, 4093, true}}) {
    for (int shift = 0; shift < (c.rows < 7 ? 7 : 1); shift++) {
      const Batch b = make_batch(c.rows, c.V, 900u + c.rows + shift, c.ties, shift);
      std::vector<int32_t> tok;
      std::vector<float> lg;
      run_device(b, c.V, &tok, &lg);
      std::vector<int32_t> tok3;
      std::vector<float> lg3;
      double mismatches = 0;
      int compared = 0, near = 0, diff3 = 0;
      // Round 1's path (the max pass, three top_p passes, the match_any histogram), the max pass with 64-bit
      // histogram atomics and, up to 8 rows, the benchmark's variants (1 block a row: a slice too long for pieces).
      std::vector<Variant> variants = {Variant{true, true, cuda::kHistMatch, 0}, Variant{false, true, cuda::kHist64, 0}};
      if (c.rows <= 8)
        for (int blocks : {1, 32, 256}) variants.push_back(Variant{false, false, blocks == 256 ? cuda::kHistMatch : cuda::kHistAuto, blocks});
      for (const Variant& v : variants) {
        run_device(b, c.V, &tok3, &lg3, v);
        for (int r = 0; r < c.rows; r++) diff3 += tok3[r] != tok[r] || lg3[r] != lg[r];
      }
      mismatches += diff3;
      bool bad = false;
      std::string first;
      for (int r = 0; r < c.rows; r++) {
        const SampleRow& p = b.rows[r];
        int32_t rt;
        float rl;
        double margin;
        sample_row_ref(b.x.data() + size_t(r) * c.V, c.V, p, b.entries.data() + p.entry_begin, p.entry_end - p.entry_begin,
                       &rt, &rl, &margin);
        if (tok[r] < 0 || tok[r] >= c.V || std::isnan(lg[r])) bad = true;
        if (margin < 1e-3) {
          near++;
          continue;
        }
        compared++;
        if (tok[r] != rt || lg[r] != rl) {
          mismatches++;
          if (first.empty())
            first = " first@row" + std::to_string(r) + " combo" + std::to_string((r + shift) % 7) + " dev=" + std::to_string(tok[r]) +
                    " ref=" + std::to_string(rt);
        }
      }
      char params[192];
      std::snprintf(params, sizeof params, "rows=%d V=%d%s shift=%d cmp=%d near=%d variant-diff=%d", c.rows, c.V,
                    c.ties ? " ties" : "", shift, compared, near, diff3);
      Result res;
      res.params = params + first;
      res.metric = "exact";
      res.error = mismatches;
      res.tolerance = 0;
      res.nan_or_inf = bad;
      out.push_back(res);
    }
  }
  return out;
}
HM_OP_TEST("sample_rows", test_sample);

// Rows of equal logits (a few raised): top_p's open bucket holds most of the row, more than the gumbel pass lists,
// so its last block settles it over the row, and the cut falls inside a run of equal keys (the tie cut).
std::vector<Result> test_sample_flat() {
  std::vector<Result> out;
  const int V = 201088;
  for (float level : {0.5f, -2.f}) {
    Batch b;
    for (int c : {1, 5, 6, 0, 1, 6}) {
      const int r = int(b.rows.size());
      SampleRow p = combo(c, 300 + r);
      p.entry_begin = p.entry_end = 0;
      b.rows.push_back(p);
      for (int i = 0; i < V; i++) b.x.push_back(level + (i % 50021 == 7 ? 0.25f : 0.f));
    }
    const int rows = int(b.rows.size());
    std::vector<int32_t> tok, tok3;
    std::vector<float> lg, lg3;
    run_device(b, V, &tok, &lg);
    run_device(b, V, &tok3, &lg3, Variant{true, true, cuda::kHist64, 0});
    double bad = 0;
    int near = 0;
    for (int r = 0; r < rows; r++) {
      int32_t rt;
      float rl;
      double margin;
      sample_row_ref(b.x.data() + size_t(r) * V, V, b.rows[r], nullptr, 0, &rt, &rl, &margin);
      bad += tok3[r] != tok[r] || lg3[r] != lg[r];
      if (margin < 1e-3) near++;
      else bad += tok[r] != rt || lg[r] != rl;
    }
    Result res;
    res.params = "V=201088 flat rows at " + std::to_string(level) + " (top_p, top_k+top_p) vs reference and 3-pass, near=" +
                 std::to_string(near);
    res.metric = "exact";
    res.error = bad;
    res.tolerance = 0;
    out.push_back(res);
  }
  return out;
}
HM_OP_TEST("sample_flat", test_sample_flat);

std::vector<Result> test_sample_batch() {
  std::vector<Result> out;
  const int V = 201088;
  for (int c = 0; c < 7; c++) {
    Batch crowd = make_batch(64, V, 4242u + c, false, c + 1);
    Batch alone;
    const int at = 17;
    alone.x.assign(crowd.x.begin() + size_t(at) * V, crowd.x.begin() + size_t(at + 1) * V);
    SampleRow p = crowd.rows[at];
    alone.entries.assign(crowd.entries.begin() + p.entry_begin, crowd.entries.begin() + p.entry_end);
    p.entry_end -= p.entry_begin;
    p.entry_begin = 0;
    alone.rows = {p};
    std::vector<int32_t> t1, t64;
    std::vector<float> l1, l64;
    run_device(alone, V, &t1, &l1);
    run_device(crowd, V, &t64, &l64);
    Result res;
    res.params = "V=201088 row 17 of 64 vs alone, combo " + std::to_string((at + c + 1) % 7) + " tokens " +
                 std::to_string(t64[at]) + "/" + std::to_string(t1[0]);
    res.metric = "exact";
    res.error = (t1[0] != t64[at]) + (l1[0] != l64[at]);
    res.tolerance = 0;
    out.push_back(res);
  }
  return out;
}
HM_OP_TEST("sample_batch", test_sample_batch);

struct Narrowed {
  std::vector<int32_t> argmax, ids;
  std::vector<float> lse, top;
};

Narrowed run_narrow(const float* x, int rows, int V, int k, bool one_block) {
  Buf<float> dx(size_t(rows) * V), mx(rows), lse(rows), tl(size_t(rows) * std::max(k, 1));
  Buf<int32_t> am(rows), ti(size_t(rows) * std::max(k, 1));
  Buf<char> ws(cuda::narrow_workspace_bytes(rows, V));
  dx.put(x, size_t(rows) * V);
  cuda::NarrowLogitsParams p;
  p.logits = dx.p, p.rows = rows, p.vocab = V, p.ld = V, p.top_k = k, p.argmax = am.p, p.max_logit = mx.p;
  p.logsumexp = lse.p, p.top_ids = ti.p, p.top_logits = tl.p, p.workspace = ws.p, p.workspace_bytes = ws.n;
  p.one_block_stats = one_block;
  cuda::narrow_logits(p, nullptr);
  return Narrowed{am.get(), ti.get(), lse.get(), tl.get()};
}

std::vector<Result> test_narrow_batch() {
  std::vector<Result> out;
  const int V = 201088, at = 17;
  const std::vector<float> crowd = logits_of(256, V, 9090u, false);
  const float* row = crowd.data() + size_t(at) * V;
  const Narrowed a0 = run_narrow(row, 1, V, 0, false), a5 = run_narrow(row, 1, V, 5, false);
  // rows * top_k >= 3200 takes narrow_rows alone (its statistics replayed in the split order), below the split passes.
  struct Case { int rows, k; bool one_block; };
  for (const Case& c : {Case{64, 5, false}, Case{64, 20, false}, Case{64, 50, false}, Case{256, 20, false},
                        Case{64, 20, true}}) {
    const Narrowed b = run_narrow(crowd.data(), c.rows, V, c.k, c.one_block);
    double bad = (b.argmax[at] != a0.argmax[0]) + (b.argmax[at] != a5.argmax[0]) + (a0.lse[0] != a5.lse[0]);
    if (!c.one_block) bad += b.lse[at] != a0.lse[0];  // the variant sums in another order: its own bits
    for (int i = 0; i < 5; i++)
      bad += (b.ids[size_t(at) * c.k + i] != a5.ids[i]) + (b.top[size_t(at) * c.k + i] != a5.top[i]);
    Result res;
    res.params = "V=201088 row 17 of " + std::to_string(c.rows) + " (top_k " + std::to_string(c.k) +
                 (c.one_block ? ", one block a row" : "") + ") vs alone (top_k 0, 5)";
    res.metric = "exact";
    res.error = bad;
    res.tolerance = 0;
    out.push_back(res);
  }
  return out;
}
HM_OP_TEST("narrow_batch", test_narrow_batch);

// Rows whose top is a run of +0 and -0 (they tie, the lower id first): top-k ids against the CPU reference on both
// paths (8 rows x top_k 20: the split passes; 64 x 50: narrow_rows alone).
std::vector<Result> test_narrow_zeros() {
  std::vector<Result> out;
  const int V = 201088;
  std::vector<float> x(size_t(64) * V);
  for (size_t i = 0; i < x.size(); i++) {
    const int id = int(i % size_t(V));
    x[i] = id % 997 == 5 ? (id % 2 ? -0.f : 0.f) : -1.f - float(mix(uint32_t(i)) >> 8) / 16777216.f;
  }
  for (const int rows : {8, 64}) {
    const int k = rows == 8 ? 20 : 50;
    const Narrowed d = run_narrow(x.data(), rows, V, k, false);
    double bad = 0;
    for (int r = 0; r < rows; r++) {
      std::vector<int32_t> ids(k);
      std::vector<float> tl(k);
      int32_t am;
      float mx, lse;
      narrow_logits_row(x.data() + size_t(r) * V, V, k, ids.data(), tl.data(), &am, &mx, &lse);
      bad += d.argmax[r] != am;
      for (int i = 0; i < k; i++) bad += d.ids[size_t(r) * k + i] != ids[i];
    }
    Result res;
    res.params = "V=201088 rows=" + std::to_string(rows) + " top_k " + std::to_string(k) + ": +0/-0 ties at the top";
    res.metric = "exact";
    res.error = bad;
    res.tolerance = 0;
    out.push_back(res);
  }
  return out;
}
HM_OP_TEST("narrow_zeros", test_narrow_zeros);

std::vector<Result> bench_sample() {
  const char* env = std::getenv("HM_OP_BENCH");
  if (!env || std::strcmp(env, "1") != 0) return {};
  const int V = 201088;
  std::printf("-- sample_rows timings (us per call, V=201088; all stages a combination needs) --\n");
  for (int rows : {1, 8, 64, 256}) {
    for (int c : {0, 1, 2, 3, 4}) {
      Batch b = make_batch(rows, V, 77, false, 0);
      for (int r = 0; r < rows; r++) {
        const SampleRow q = combo(c, 100 + r);
        b.rows[r].mode = q.mode, b.rows[r].inv_temperature = q.inv_temperature, b.rows[r].top_k = q.top_k;
        b.rows[r].top_p = q.top_p, b.rows[r].log_min_p = q.log_min_p, b.rows[r].repetition = q.repetition;
        b.rows[r].frequency = q.frequency, b.rows[r].presence = q.presence;
      }
      DeviceBatch d(b, V);
      cuda::SampleRowsParams& p = d.p;
      const float us = time_us([&] { cuda::sample_rows(p, nullptr); });
      static const char* names[] = {"t=1", "t=1 top_p=0.9", "t=0.7 top_k=50 min_p=0.05", "t=1 pen", "greedy+rep"};
      std::printf("sample_rows rows=%-3d %-28s stages=%-2d: %8.1f us\n", rows, names[c], p.stages, us);
      if (p.stages & cuda::kStageTopP) {
        p.top_p_three_passes = true, p.select_hist = cuda::kHistMatch;  // round 1's path
        p.argmax = nullptr;
        const float us3 = time_us([&] { cuda::sample_rows(p, nullptr); });
        std::printf("sample_rows rows=%-3d %-28s stages=%-2d: %8.1f us\n", rows, "  (previous: 3 passes, match)", p.stages, us3);
        p.top_p_three_passes = false, p.select_hist = cuda::kHistAuto;
        const float usm = time_us([&] { cuda::sample_rows(p, nullptr); });
        std::printf("sample_rows rows=%-3d %-28s stages=%-2d: %8.1f us\n", rows, "  (previous: the max pass)", p.stages, usm);
        p.argmax = d.am.p;
        // Variants (the same tokens): the select histogram (SampleHist), blocks a row.
        struct BenchVariant { int blocks, hist; };
        static const char* hist_names[] = {"pieces/auto", "pieces", "64-bit atomics", "match_any"};
        for (const BenchVariant& v : {BenchVariant{0, cuda::kHist64}, BenchVariant{0, cuda::kHistMatch},
                                      BenchVariant{32, 0}, BenchVariant{64, 0}, BenchVariant{256, 0}}) {
          if (rows > 8 && v.blocks) continue;
          p.blocks_per_row = v.blocks, p.select_hist = v.hist;
          const float usv = time_us([&] { cuda::sample_rows(p, nullptr); });
          char name[64];
          std::snprintf(name, sizeof name, "  (%s blocks a row, %s)", v.blocks ? std::to_string(v.blocks).c_str() : "default",
                        hist_names[v.hist]);
          std::printf("sample_rows rows=%-3d %-28s stages=%-2d: %8.1f us\n", rows, name, p.stages, usv);
        }
        p.blocks_per_row = 0, p.select_hist = cuda::kHistAuto;
      }
    }
    for (int k : {0, 5, 20, 50, -20, -50}) {  // negative: the one-block-per-row variant (the previous kernel)
      const bool one_block = k < 0;
      k = std::abs(k);
      Batch b = make_batch(rows, V, 78, false, 0);
      Buf<float> x(b.x.size()), mx(rows), lse(rows), tl(size_t(rows) * std::max(k, 1));
      Buf<int32_t> am(rows), ti(size_t(rows) * std::max(k, 1));
      Buf<char> ws(cuda::narrow_workspace_bytes(rows, V));
      x.put(b.x.data(), b.x.size());
      cuda::NarrowLogitsParams p;
      p.logits = x.p, p.rows = rows, p.vocab = V, p.ld = V, p.top_k = k, p.argmax = am.p, p.max_logit = mx.p;
      p.logsumexp = lse.p, p.top_ids = ti.p, p.top_logits = tl.p, p.workspace = ws.p, p.workspace_bytes = ws.n;
      p.one_block_stats = one_block;
      const float us = time_us([&] { cuda::narrow_logits(p, nullptr); });
      std::printf("narrow_logits rows=%-3d top_k=%-2d%s: %8.1f us\n", rows, k, one_block ? " one block a row" : "", us);
    }
  }
  return {};
}
HM_OP_TEST("bench_sample", bench_sample);

}  // namespace
}  // namespace hm::optest
