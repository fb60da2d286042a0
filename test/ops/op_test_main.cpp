// hm_op_test [filter]: runs every registered op case; exit code 1 if any case misses its tolerance.
#include <cstdio>
#include <cstring>

#include "op_test.h"

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : "";
  // Line-buffered even into a file: a case that aborts leaves every line before it in the log (fully buffered, the
  // log of a crash stops at a 4 KiB boundary, rows short of the one that crashed).
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  int failed = 0, total = 0;
  std::printf("%-34s %-44s %-12s %12s %12s  %s\n", "op", "params", "metric", "error", "tolerance", "result");
  for (auto& [name, fn] : hm::optest::Registry::all()) {
    if (*filter && !std::strstr(name.c_str(), filter)) continue;
    for (const auto& r : fn()) {
      total++;
      bool ok = r.ok();
      if (!ok) failed++;
      std::printf("%-34s %-44s %-12s %12.3e %12.3e  %s%s\n", name.c_str(), r.params.c_str(), r.metric.c_str(),
                  r.error, r.tolerance, ok ? "ok" : "FAIL", r.nan_or_inf ? " (NaN/Inf)" : "");
    }
  }
  std::printf("%d/%d cases passed\n", total - failed, total);
  return failed ? 1 : 0;
}
