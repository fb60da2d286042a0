// The fork-join pool behind hm::cpu::parallel_for (see thread_pool.h for the contract).
#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace hm::cpu {
namespace {

thread_local bool t_inside_job = false;

class Pool {
 public:
  ~Pool() { stop_workers(); }

  void set_threads(int threads) {
    std::lock_guard<std::mutex> job_lock(job_mu_);
    int want = threads > 0 ? threads : default_threads();
    if (want == static_cast<int>(workers_.size()) + 1) return;
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
    int parts = static_cast<int>(workers_.size()) + 1;
    // A few chunks per thread so that uneven chunks (e.g. expert rows) still balance.
    int chunk = std::max(std::max(min_chunk, 1), (n + parts * 4 - 1) / (parts * 4));
    int chunks = (n + chunk - 1) / chunk;
    if (chunks == 1 || parts == 1) {
      t_inside_job = true;
      try {
        fn(0, n);
      } catch (...) {
        t_inside_job = false;
        throw;
      }
      t_inside_job = false;
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_ = n;
      chunk_ = chunk;
      next_.store(0);
      error_ = nullptr;
      busy_ = static_cast<int>(workers_.size());
      generation_++;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return busy_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
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

  // Grabs chunks until none is left; shared by the caller and the workers.
  void work() {
    t_inside_job = true;
    for (;;) {
      int c = next_.fetch_add(1);
      int begin = c * chunk_;
      if (begin >= n_) break;
      try {
        (*fn_)(begin, std::min(n_, begin + chunk_));
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
      }
    }
    t_inside_job = false;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      work();
      std::lock_guard<std::mutex> lk(mu_);
      if (--busy_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex job_mu_;  // one job at a time
  std::mutex mu_;      // guards the job fields and the worker handshake
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  bool started_ = false;
  bool stop_ = false;
  uint64_t generation_ = 0;
  int busy_ = 0;
  const std::function<void(int, int)>* fn_ = nullptr;
  int n_ = 0;
  int chunk_ = 1;
  std::atomic<int> next_{0};
  std::exception_ptr error_;
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
