// Limits fixed at build time, written once here; the addon publishes them (buildInfo(), info().limits).
#pragma once

namespace hm {

// Narrowed candidates per output row: the most a step may ask for (the GPU narrowing sorts them in shared memory).
constexpr int kMaxTopK = 256;

// Sampling entries (sampling.h's SampleEntry: the tokens some adjustment touches) one step may carry: the CUDA
// backend's buffer; the host falls back to full logits for a step beyond it.
constexpr int kMaxSampleEntries = 1 << 20;

}  // namespace hm
