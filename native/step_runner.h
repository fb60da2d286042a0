// The model's step queue, used by native/addon.cpp only: one runner thread per model runs the model's steps in
// submission order and hands the results back to the main thread through one thread-safe function.
#pragma once
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"

namespace hm::addon {

// A step may name, instead of a token id, the token the step submitted just before it produced for one of its
// output rows (a "previous-step token", tokens[i] = -1 - row; src/native.ts). So the host submits step N+1 while
// step N runs, and the runner starts N+1 the moment N's results are read: the device does not wait for the host's
// round trip (completion, promise, JavaScript, the next call). Results come back through one thread-safe function.
using Clock = std::chrono::steady_clock;

struct StepJob {
  std::vector<int32_t> tokens, positions, seq_lens, block_tables, window_tables;
  std::vector<uint8_t> full_logits;
  std::vector<hm::SampleRow> sample_rows;
  std::vector<hm::SampleEntry> sample_entries;
  std::vector<int32_t> prev_refs;  // (token index, row of the previous step) pairs
  bool has_window_tables = false;  // windowTables given (an empty one is still given)
  std::vector<int32_t> count_refs;  // (sequence, row of the previous step) pairs: countPrevious (src/native.ts)
  hm::StepBatch batch;
  hm::StepOutput out;
  std::string error;
  Napi::Promise::Deferred deferred;
  // HARMONIUM_PROFILE=2: the call, queued, backend start and end, result callback, promise resolved
  Clock::time_point t_call, t_queued, t_start, t_end, t_callback, t_resolved;
  explicit StepJob(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}

  void bind_arrays() {
    batch.tokens = tokens.data();
    batch.positions = positions.data();
    batch.seq_lens = seq_lens.data();
    batch.block_tables = block_tables.data();
    batch.window_tables = has_window_tables ? window_tables.data() : nullptr;
    batch.full_logits = full_logits.empty() ? nullptr : full_logits.data();
    batch.sample_rows = sample_rows.empty() ? nullptr : sample_rows.data();
    batch.sample_entries = sample_entries.data();
    batch.num_sample_entries = static_cast<int>(sample_entries.size());
  }
};

// HARMONIUM_PROFILE=2 at the addon, for every backend: the backend's idle time between consecutive steps, and for
// steps submitted only after the one before resolved (unpipelined), where that time goes. Printed on the main
// thread once the model is closed and its last step delivered.
struct HostTimer {
  bool on = false;
  std::vector<double> idle, completion, conversion, js, call, handoff;  // ms
  int pipelined = 0;
  static double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }
  void pair(const StepJob& prev, const StepJob& next) {
    idle.push_back(ms(prev.t_end, next.t_start));
    if (next.t_call < prev.t_resolved) {
      pipelined++;
      return;
    }
    completion.push_back(ms(prev.t_end, prev.t_callback));
    conversion.push_back(ms(prev.t_callback, prev.t_resolved));
    js.push_back(ms(prev.t_resolved, next.t_call));
    call.push_back(ms(next.t_call, next.t_queued));
    handoff.push_back(ms(next.t_queued, next.t_start));
  }
  static double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  }
  void print() {
    if (!on || idle.empty()) return;
    on = false;  // once
    double mean = 0;
    for (double d : idle) mean += d;
    std::fprintf(stderr,
                 "[harmonium host] %zu step pairs (%d pipelined): backend idle between steps median %.4f ms, mean %.4f ms;"
                 " unpipelined medians: worker done -> JS callback %.4f, output conversion %.4f, JS -> next step call"
                 " %.4f, step call %.4f, queue -> backend start %.4f ms\n",
                 idle.size(), pipelined, median(idle), mean / idle.size(), median(completion), median(conversion),
                 median(js), median(call), median(handoff));
  }
};

class StepRunner;
void deliver_results(Napi::Env env, Napi::Function, StepRunner* runner, void*);
using ResultFn = Napi::TypedThreadSafeFunction<StepRunner, void, deliver_results>;

// Owned together by its NativeModel, its thread (until it exits) and its thread-safe function (until finalized,
// after the last result is delivered), so none of them outlives it, whichever lets go first. The backend and the
// function are freed on the main thread (finish()), never by the runner thread, which may still be running when
// the process exits.
class StepRunner : public std::enable_shared_from_this<StepRunner> {
 public:
  static std::shared_ptr<StepRunner> start(Napi::Env env, std::unique_ptr<Backend> backend) {
    std::shared_ptr<StepRunner> r(new StepRunner(std::move(backend)));
    r->results_ = ResultFn::New(env, "harmonium step", 0, 1, r.get(),
                                [](Napi::Env, std::shared_ptr<StepRunner>* own, StepRunner*) { delete own; },
                                new std::shared_ptr<StepRunner>(r));
    r->results_.Unref(env);  // keeps the event loop alive only while steps are in flight (submit / deliver)
    std::thread([self = r] { self->run(); }).detach();
    return r;
  }
  Backend* backend() { return backend_.get(); }

  // Main thread. Rows of the last accepted step (previous-step tokens must name one of them).
  int last_rows = -1;

  void submit(Napi::Env env, std::unique_ptr<StepJob> job) {
    if (in_flight_++ == 0) results_.Ref(env);
    job->t_queued = Clock::now();
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(job));
    cv_.notify_one();
  }

  // Main thread: the steps already accepted still run; the last one delivered frees the backend (finish()).
  // `freed` resolves once it is freed, so a caller can await the memory before loading another model.
  // (No promise from a finalizer: `freed` is null there.)
  void close(Napi::Env env, const Napi::Promise::Deferred* freed) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
      cv_.notify_one();
    }
    if (freed) freed_.push_back(*freed);
    if (in_flight_ == 0) finish(env);
  }

  // Main thread (the thread-safe function's callback): settles every finished step's promise, in order.
  void deliver(Napi::Env env) {
    std::deque<std::unique_ptr<StepJob>> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done.swap(done_);
    }
    for (auto& job : done) {
      job->t_callback = Clock::now();
      Napi::HandleScope scope(env);
      if (job->error.empty()) job->deferred.Resolve(output_to_js(env, job->out));
      else job->deferred.Reject(Napi::Error::New(env, job->error).Value());
      job->t_resolved = Clock::now();
      if (timer_.on) {
        if (last_done_) timer_.pair(*last_done_, *job);
        last_done_ = std::move(job);
      }
      if (--in_flight_ == 0) {
        results_.Unref(env);
        if (closing_) finish(env);
      }
    }
  }

 private:
  // The runner thread.
  void run() {
    std::vector<int32_t> prev_tokens;  // the token of each output row of the last step run
    bool prev_ok = false;
    for (;;) {
      std::unique_ptr<StepJob> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty() || closing_; });  // closing: after the queue drains
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job->t_start = Clock::now();
      if (!job->prev_refs.empty() && !prev_ok) {
        job->error = "step: its previous-step tokens come from a step that failed";
      } else {
        for (size_t i = 0; i < job->prev_refs.size(); i += 2) job->tokens[job->prev_refs[i]] = prev_tokens[job->prev_refs[i + 1]];
        if (!job->count_refs.empty()) count_previous(*job, prev_tokens);
        try {
          backend_->step(job->batch, job->out);
        } catch (const std::exception& e) {
          job->error = e.what();
        }
      }
      job->t_end = Clock::now();
      prev_ok = job->error.empty();
      if (prev_ok) row_tokens(job->out, prev_tokens);
      // The call under the lock: deliver() cannot settle the job (and finish() release the function) before it.
      std::lock_guard<std::mutex> lock(mu_);
      done_.push_back(std::move(job));
      results_.NonBlockingCall();
    }
  }

  // Main thread, once closed with no step in flight: the runner thread has left the backend and the function for
  // good, so both go here, on the main thread, as a model without a queue would free them.
  void finish(Napi::Env env) {
    timer_.print();
    backend_.reset();
    results_.Release();
    for (auto& d : freed_) d.Resolve(env.Undefined());
    freed_.clear();
  }

  // The runner thread: each countPrevious row's entries gain one occurrence of its previous-step token (its
  // count + 1, or a new entry in id order), so the backend sees the entries as if the host had known the token.
  static void count_previous(StepJob& job, const std::vector<int32_t>& prev_tokens) {
    std::vector<hm::SampleEntry> merged;
    merged.reserve(job.sample_entries.size() + job.count_refs.size() / 2);
    size_t next = 0;  // the next count_refs pair (sequences ascending)
    for (int s = 0; s < int(job.sample_rows.size()); s++) {
      hm::SampleRow& p = job.sample_rows[s];
      const hm::SampleEntry* e = job.sample_entries.data() + p.entry_begin;
      const hm::SampleEntry* end = job.sample_entries.data() + p.entry_end;
      p.entry_begin = int32_t(merged.size());
      if (next < job.count_refs.size() && job.count_refs[next] == s) {
        const int32_t id = prev_tokens[job.count_refs[next + 1]];
        next += 2;
        for (; e < end && e->id < id; e++) merged.push_back(*e);
        if (e < end && e->id == id) {
          merged.push_back(*e++);
          merged.back().count++;
        } else {
          merged.push_back({id, 0.f, 1, 0});
        }
      }
      merged.insert(merged.end(), e, end);
      p.entry_end = int32_t(merged.size());
    }
    job.sample_entries.swap(merged);
    job.bind_arrays();
  }

  // The token a row produced: the step's draw where the row was sampled in the step, else its argmax.
  static void row_tokens(const hm::StepOutput& out, std::vector<int32_t>& tokens) {
    tokens.resize(out.num_rows);
    for (int r = 0; r < out.num_rows; r++)
      tokens[r] = r < int(out.sampled.size()) && out.sampled[r] >= 0 ? out.sampled[r] : out.argmax[r];
  }

  static Napi::Object output_to_js(Napi::Env env, const hm::StepOutput& out);

  explicit StepRunner(std::unique_ptr<Backend> backend) : backend_(std::move(backend)) {
    const char* prof = std::getenv("HARMONIUM_PROFILE");
    timer_.on = prof && std::strcmp(prof, "2") == 0;
  }

  std::unique_ptr<Backend> backend_;
  ResultFn results_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<StepJob>> queue_, done_;
  std::atomic<bool> closing_{false};
  int in_flight_ = 0;  // main thread
  HostTimer timer_;
  std::unique_ptr<StepJob> last_done_;  // main thread, HARMONIUM_PROFILE=2
  std::vector<Napi::Promise::Deferred> freed_;  // main thread: close() calls waiting for finish()
};

// StepRunner's thread-safe function: runs on the main thread after the runner finished one or more steps.
inline void deliver_results(Napi::Env env, Napi::Function, StepRunner* runner, void*) {
  if (env) runner->deliver(env);
}

// One allocation for the output's arrays: a single ArrayBuffer, each array a view of it.
inline Napi::Object StepRunner::output_to_js(Napi::Env env, const hm::StepOutput& out) {
  const size_t bytes = 4 * (out.argmax.size() + out.max_logit.size() + out.logsumexp.size() + out.top_ids.size() +
                            out.top_logits.size() + out.logits_rows.size() + out.logits.size() + out.sampled.size() +
                            out.sampled_logit.size());
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, std::max<size_t>(bytes, 4));
  char* base = static_cast<char*>(buf.Data());
  size_t at = 0;
  auto view = [&](const auto& v, auto tag) {
    using A = decltype(tag);
    if (!v.empty()) std::memcpy(base + at, v.data(), 4 * v.size());
    A a = A::New(env, v.size(), buf, at);
    at += 4 * v.size();
    return a;
  };
  auto o = Napi::Object::New(env);
  o.Set("numRows", out.num_rows);
  o.Set("vocab", out.vocab);
  o.Set("topK", out.top_k);
  o.Set("argmax", view(out.argmax, Napi::Int32Array()));
  o.Set("maxLogit", view(out.max_logit, Napi::Float32Array()));
  o.Set("logsumexp", view(out.logsumexp, Napi::Float32Array()));
  o.Set("topIds", view(out.top_ids, Napi::Int32Array()));
  o.Set("topLogits", view(out.top_logits, Napi::Float32Array()));
  o.Set("logitsRows", view(out.logits_rows, Napi::Int32Array()));
  o.Set("logits", view(out.logits, Napi::Float32Array()));
  o.Set("sampled", view(out.sampled, Napi::Int32Array()));
  o.Set("sampledLogit", view(out.sampled_logit, Napi::Float32Array()));
  return o;
}

}  // namespace hm::addon
