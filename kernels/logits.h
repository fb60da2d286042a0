// Narrowing of the logits on the GPU, so the host never reads 201,088 floats per token to sample: per row the
// argmax (ties: lower id), the max logit, logsumexp over the full vocabulary, and the top-k candidates (k <= 256)
// with their raw logits sorted descending, ties by lower id. The final norm and lm_head before it are
// rmsnorm() and dense() (norm_rope.h, dense.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "hm_limits.h"  // kMaxTopK

namespace hm::cuda {

struct NarrowLogitsParams {
  const float* logits = nullptr;  // fp32 [rows, ld]
  int rows = 0, vocab = 0, ld = 0;
  int top_k = 0;                  // 0..kMaxTopK
  int32_t* argmax = nullptr;      // [rows]
  float* max_logit = nullptr;     // [rows]
  float* logsumexp = nullptr;     // [rows]
  int32_t* top_ids = nullptr;     // [rows, top_k] (needed when top_k > 0)
  float* top_logits = nullptr;    // [rows, top_k]
  void* workspace = nullptr;      // narrow_workspace_bytes(rows, vocab) of scratch
  size_t workspace_bytes = 0;
  bool pdl = false;
  bool one_block_stats = false;   // the previous kernel, one block of 1024 threads a row (op benchmark comparison)
};
size_t narrow_workspace_bytes(int rows, int vocab);
void narrow_logits(const NarrowLogitsParams& p, cudaStream_t stream);

}  // namespace hm::cuda
