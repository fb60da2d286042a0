// Placeholder until the CUDA backend lands (issue 3).
#include <stdexcept>

#include "../backend.h"

namespace hm {
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig&, const TensorMap&, const LoadOptions&, const ProgressFn&) {
  throw std::runtime_error("cuda backend: not built yet");
}
}  // namespace hm
