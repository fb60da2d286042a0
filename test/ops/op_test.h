// The op-test table (after llama.cpp's test-backend-ops): every CUDA kernel against its CPU reference twin in
// native/cpu/ref_ops.h. Each op family registers cases from its own file with HM_OP_TEST; hm_op_test runs them
// all (or those whose name contains argv[1]) and prints one line per case: name, parameters, error, tolerance.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace hm::optest {

struct Result {
  std::string params;  // printable parameters of the case, e.g. "n=7 H=2880"
  double error = 0;    // the case's error metric (see metric)
  double tolerance = 0;
  std::string metric;  // e.g. "nmse", "max_abs_rel", "exact"
  bool nan_or_inf = false;
  bool ok() const { return !nan_or_inf && error <= tolerance; }
};

using CaseFn = std::function<std::vector<Result>()>;

struct Registry {
  static std::vector<std::pair<std::string, CaseFn>>& all() {
    static std::vector<std::pair<std::string, CaseFn>> v;
    return v;
  }
};

struct Registrar {
  Registrar(const char* name, CaseFn fn) { Registry::all().emplace_back(name, std::move(fn)); }
};

#define HM_OP_TEST_CAT2(a, b) a##b
#define HM_OP_TEST_CAT(a, b) HM_OP_TEST_CAT2(a, b)
#define HM_OP_TEST(name, fn) static ::hm::optest::Registrar HM_OP_TEST_CAT(hm_op_reg_, __LINE__)(name, fn)

// Normalised mean squared error: sum((a-b)^2) / sum(b^2). Flags NaN/Inf in a.
inline double nmse(const float* a, const float* b, size_t n, bool* bad) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(a[i])) *bad = true;
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return den > 0 ? num / den : num;
}

// max |a-b| / (atol + rtol*|b|) style error, reported as max |a-b| / max(|b|) over the tensor.
inline double max_abs_rel(const float* a, const float* b, size_t n, bool* bad) {
  double m = 0, mb = 0;
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(a[i])) *bad = true;
    m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
    mb = std::max(mb, std::fabs(double(b[i])));
  }
  return mb > 0 ? m / mb : m;
}

// Run-to-run reproducibility: the same launch on the same inputs must give the same bits (metric "repeat_bits",
// the number of elements that differ; tolerance 0). Cases call it with a second run made after refilling every
// workspace with another byte pattern, so a read of memory the kernel did not write shows up as well as a race.
template <typename T>
Result repeat_bits(const std::string& params, const std::vector<T>& first, const std::vector<T>& again) {
  Result r;
  r.params = params;
  r.metric = "repeat_bits";
  size_t diff = first.size() == again.size() ? 0 : first.size() + again.size();
  for (size_t i = 0; i < first.size() && i < again.size(); i++)
    diff += std::memcmp(&first[i], &again[i], sizeof(T)) != 0;
  r.error = double(diff);
  return r;
}

inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

}  // namespace hm::optest
