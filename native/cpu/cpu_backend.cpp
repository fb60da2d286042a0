// Placeholder until the CPU reference backend lands (issue 2).
#include <stdexcept>

#include "../backend.h"

namespace hm {
std::unique_ptr<Backend> make_cpu_backend(const ModelConfig&, const TensorMap&, const LoadOptions&, const ProgressFn&) {
  throw std::runtime_error("cpu backend: not built yet");
}
}  // namespace hm
