// Limits fixed at build time, written once here; the addon publishes them (buildInfo(), info().limits).
#pragma once

namespace hm {

// Narrowed candidates per output row: the most a step may ask for (the GPU narrowing sorts them in shared memory).
constexpr int kMaxTopK = 256;

}  // namespace hm
