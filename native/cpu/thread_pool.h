// A tiny fork-join pool for the CPU reference: parallel_for splits [0, n) into contiguous chunks and runs them on
// the calling thread plus a few workers. One job at a time (callers queue on a mutex); a call made from inside a
// job runs inline, so nesting never deadlocks. Clarity over speed: no work stealing, no per-thread queues.
#pragma once
#include <functional>

namespace hm::cpu {

// Runs fn(begin, end) over disjoint chunks covering [0, n). Chunks of at least min_chunk items (avoid waking
// threads for tiny loops). Exceptions thrown by fn are rethrown on the calling thread (the first one wins).
void parallel_for(int n, const std::function<void(int begin, int end)>& fn, int min_chunk = 1);

// Worker threads used by parallel_for, counting the caller. 0 = hardware concurrency. Takes effect for the next
// job; the pool is shared by every CPU model in the process.
void set_num_threads(int threads);
int num_threads();

}  // namespace hm::cpu
