// The fork-join pool behind hm::cpu::parallel_for (see thread_pool.h for the contract).
//
// Each job is a counter of chunks that the caller and the workers claim until none is left; the caller returns as
// soon as every chunk is DONE, without waiting for workers that never got scheduled (on a busy machine a sleeping
// worker would otherwise stall every small loop by a time slice). A late worker only finds an exhausted counter.
#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace hm::cpu {
namespace {

thread_local bool t_inside_job = false;

struct Job {
  const std::function<void(int, int)>* fn = nullptr;
  int n = 0, chunk = 1, chunks = 0;
  std::atomic<int> next{0};  // next chunk to claim
  std::atomic<int> done{0};  // chunks finished
  std::mutex error_mu;
  std::exception_ptr error;
};

class Pool {
 public:
  ~Pool() { stop_workers(); }

  void set_threads(int threads) {
    std::lock_guard<std::mutex> job_lock(job_mu_);
    int want = threads > 0 ? threads : default_threads();
    if (started_ && want == static_cast<int>(workers_.size()) + 1) return;
    stop_workers();
    start_workers(want - 1);
  }
  int threads() {
    std::lock_guard<std::mutex> job_lock(job_mu_);
    ensure_started();
    return static_cast<int>(workers_.size()) + 1;
  }

  void run(int n, const std::function<void(int, int)>& fn, int min_chunk) {
    if (n <= 0) return;
    if (t_inside_job) {  // nested: the outer job already uses every thread
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> job_lock(job_mu_);
    ensure_started();
    const int parts = static_cast<int>(workers_.size()) + 1;
    // A few chunks per thread so that uneven chunks (e.g. expert rows) still balance.
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    job->chunk = std::max(std::max(min_chunk, 1), (n + parts * 4 - 1) / (parts * 4));
    job->chunks = (n + job->chunk - 1) / job->chunk;
    if (job->chunks > 1 && parts > 1) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        job_ = job;
        generation_++;
      }
      cv_.notify_all();
    }
    work(*job);
    {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [&] { return job->done.load() == job->chunks; });
      job_.reset();
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  static int default_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

  void ensure_started() {
    if (!started_) start_workers(default_threads() - 1);
  }
  void start_workers(int count) {
    started_ = true;
    stop_ = false;
    for (int i = 0; i < count; i++) workers_.emplace_back([this] { worker_loop(); });
  }
  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  // Claims chunks until none is left; shared by the caller and the workers.
  void work(Job& job) {
    t_inside_job = true;
    for (;;) {
      const int c = job.next.fetch_add(1);
      if (c >= job.chunks) break;
      const int begin = c * job.chunk;
      try {
        (*job.fn)(begin, std::min(job.n, begin + job.chunk));
      } catch (...) {
        std::lock_guard<std::mutex> lk(job.error_mu);
        if (!job.error) job.error = std::current_exception();
      }
      if (job.done.fetch_add(1) + 1 == job.chunks) {
        std::lock_guard<std::mutex> lk(mu_);  // under the lock, so the caller cannot miss the wake-up
        done_cv_.notify_all();
      }
    }
    t_inside_job = false;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      if (job) work(*job);
    }
  }

  std::mutex job_mu_;  // one job at a time
  std::mutex mu_;      // guards job_, generation_, stop_ and the done wake-up
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  bool started_ = false;
  bool stop_ = false;
  uint64_t generation_ = 0;
  std::shared_ptr<Job> job_;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

void parallel_for(int n, const std::function<void(int, int)>& fn, int min_chunk) { pool().run(n, fn, min_chunk); }
void set_num_threads(int threads) { pool().set_threads(threads); }
int num_threads() { return pool().threads(); }

}  // namespace hm::cpu
