// N-API surface of harmonium: loadModel() -> NativeModel with step()/info()/close(), buildInfo() (limits and
// defaults), weightLayout() (the checkpoint's tensors), cudaDevices(). Everything slow runs off the main thread and
// resolves a Promise (reading weights on a libuv worker thread, a model's steps on its runner thread:
// native/step_runner.h); the event loop never waits on the math. src/native.ts is the one TypeScript module that
// declares these exports.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "backend.h"
#include "step_runner.h"
#include "weight_layout.h"

namespace {

using hm::Backend;
using hm::addon::Clock;
using hm::addon::StepJob;
using hm::addon::StepRunner;

// A strict reader of one JS object: a required key that is missing, a key of the wrong type, or (at done()) a key
// nobody read is an error naming it, so a renamed field fails loudly instead of falling back to a default.
class Fields {
 public:
  Fields(const Napi::Value& v, std::string what) : what_(std::move(what)) {
    if (!v.IsObject() || v.IsArray()) throw std::runtime_error(what_ + ": expected an object");
    o_ = v.As<Napi::Object>();
  }
  bool has(const char* key) {
    if (std::find_if(seen_.begin(), seen_.end(), [&](const char* k) { return std::strcmp(k, key) == 0; }) == seen_.end())
      seen_.push_back(key);
    return o_.Has(key) && !o_.Get(key).IsUndefined();
  }
  Napi::Value get(const char* key) {
    if (!has(key)) throw std::runtime_error(what_ + "." + key + ": missing");
    return o_.Get(key);
  }
  double num(const char* key) {
    Napi::Value v = get(key);
    if (!v.IsNumber()) throw std::runtime_error(what_ + "." + key + ": expected a number");
    return v.As<Napi::Number>().DoubleValue();
  }
  int integer(const char* key) {
    const double d = num(key);
    if (d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0)
      throw std::runtime_error(what_ + "." + key + ": expected a 32-bit integer");
    return static_cast<int>(d);
  }
  int integer_or(const char* key, int def) { return has(key) ? integer(key) : def; }
  bool flag(const char* key) {
    Napi::Value v = get(key);
    if (!v.IsBoolean()) throw std::runtime_error(what_ + "." + key + ": expected a boolean");
    return v.As<Napi::Boolean>().Value();
  }
  bool flag_or(const char* key, bool def) { return has(key) ? flag(key) : def; }
  std::string str(const char* key) {
    Napi::Value v = get(key);
    if (!v.IsString()) throw std::runtime_error(what_ + "." + key + ": expected a string");
    return v.As<Napi::String>().Utf8Value();
  }
  std::string str_or(const char* key, const std::string& def) { return has(key) ? str(key) : def; }
  Napi::Array array(const char* key) {
    Napi::Value v = get(key);
    if (!v.IsArray()) throw std::runtime_error(what_ + "." + key + ": expected an array");
    return v.As<Napi::Array>();
  }
  // A key the host sends for its own use (the native side has nothing to do with it).
  void ignore(const char* key) { seen_.push_back(key); }
  void done() {
    Napi::Array keys = o_.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); i++) {
      const std::string k = keys.Get(i).ToString().Utf8Value();
      if (std::find_if(seen_.begin(), seen_.end(), [&](const char* s) { return k == s; }) == seen_.end())
        throw std::runtime_error(what_ + "." + k + ": unknown key");
    }
  }

 private:
  Napi::Object o_;
  std::string what_;
  std::vector<const char*> seen_;  // keys asked for (string literals): a step's object has a dozen
};

hm::ModelConfig parse_config(const Napi::Value& v) {
  Fields c(v, "config");
  hm::ModelConfig cfg;
  cfg.num_layers = c.integer("numLayers");
  cfg.num_experts = c.integer("numExperts");
  cfg.experts_per_token = c.integer("expertsPerToken");
  cfg.hidden = c.integer("hiddenSize");
  cfg.intermediate = c.integer("intermediateSize");
  cfg.num_heads = c.integer("numHeads");
  cfg.num_kv_heads = c.integer("numKvHeads");
  cfg.head_dim = c.integer("headDim");
  cfg.vocab = c.integer("vocabSize");
  cfg.sliding_window = c.integer("slidingWindow");
  cfg.rms_eps = static_cast<float>(c.num("rmsNormEps"));
  cfg.swiglu_limit = static_cast<float>(c.num("swigluLimit"));
  cfg.max_positions = c.integer("maxPositions");
  const std::string experts = c.str("expertFormat");
  if (experts != "mxfp4" && experts != "bf16")
    throw std::runtime_error("config.expertFormat: expected mxfp4 or bf16, got '" + experts + "'");
  cfg.expert_format = experts == "mxfp4" ? hm::ExpertFormat::kMxfp4 : hm::ExpertFormat::kBf16;
  c.ignore("eosTokenIds");  // sampling and stopping are the host's
  c.ignore("padTokenId");
  auto sliding = c.array("layerSliding");
  for (uint32_t i = 0; i < sliding.Length(); i++) {
    if (!sliding.Get(i).IsBoolean()) throw std::runtime_error("config.layerSliding: expected booleans");
    cfg.layer_sliding.push_back(sliding.Get(i).As<Napi::Boolean>().Value() ? 1 : 0);
  }
  Fields r(c.get("rope"), "config.rope");
  const std::string type = r.str("type");
  if (type != "yarn" && type != "default") throw std::runtime_error("config.rope.type: expected yarn or default, got '" + type + "'");
  cfg.rope.yarn = type == "yarn";
  cfg.rope.theta = r.num("theta");
  cfg.rope.factor = r.num("factor");
  cfg.rope.original_max_positions = r.num("originalMaxPositions");
  cfg.rope.beta_fast = r.num("betaFast");
  cfg.rope.beta_slow = r.num("betaSlow");
  cfg.rope.truncate = r.flag("truncate");
  r.done();
  c.done();
  if (cfg.num_layers <= 0 || cfg.hidden <= 0 || cfg.vocab <= 0 || cfg.max_positions <= 0 ||
      static_cast<int>(cfg.layer_sliding.size()) != cfg.num_layers)
    throw std::runtime_error("config: malformed model config (sizes must be positive, one layerSliding entry per layer)");
  return cfg;
}

hm::DType parse_dtype(const std::string& dt, const std::string& where) {
  if (dt == "BF16") return hm::DType::BF16;
  if (dt == "F32") return hm::DType::F32;
  if (dt == "U8") return hm::DType::U8;
  throw std::runtime_error(where + ": unsupported dtype " + dt);
}

hm::TensorMap parse_tensors(const Napi::Value& v) {
  if (!v.IsArray()) throw std::runtime_error("tensors: expected an array");
  auto arr = v.As<Napi::Array>();
  hm::TensorMap m;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Fields o(arr.Get(i), "tensors[" + std::to_string(i) + "]");
    hm::TensorSource t;
    t.name = o.str("name");
    t.file = o.str("file");
    t.offset = static_cast<uint64_t>(o.num("offset"));
    t.nbytes = static_cast<uint64_t>(o.num("nbytes"));
    t.dtype = parse_dtype(o.str("dtype"), "tensor " + t.name);
    auto shape = o.array("shape");
    for (uint32_t j = 0; j < shape.Length(); j++)
      t.shape.push_back(static_cast<int64_t>(shape.Get(j).As<Napi::Number>().DoubleValue()));
    o.done();
    m.emplace(t.name, std::move(t));
  }
  return m;
}

// Options the caller leaves out take default_load_options(backend) (published by buildInfo()).
hm::LoadOptions parse_options(const Napi::Value& v) {
  Fields o(v, "options");
  hm::LoadOptions opt = hm::default_load_options(o.str("backend"));
  opt.expert_format = o.str_or("expertFormat", opt.expert_format);
  opt.num_blocks = o.integer_or("numBlocks", opt.num_blocks);
  opt.block_size = o.integer_or("blockSize", opt.block_size);
  opt.max_seqs = o.integer_or("maxSeqs", opt.max_seqs);
  opt.max_batch_tokens = o.integer_or("maxBatchTokens", opt.max_batch_tokens);
  opt.threads = o.integer_or("threads", opt.threads);
  opt.device = o.integer_or("device", opt.device);
  opt.dummy = o.flag_or("dummy", opt.dummy);
  opt.window_kv = o.flag_or("windowKv", opt.window_kv);
  if (o.has("seed")) opt.seed = static_cast<uint64_t>(o.num("seed"));
  o.done();
  hm::validate_load_options(opt);
  return opt;
}

Napi::Object limits_to_js(Napi::Env env, const hm::StepLimits& l) {
  auto o = Napi::Object::New(env);
  o.Set("maxBatchTokens", l.max_batch_tokens);
  o.Set("maxSeqs", l.max_seqs);
  o.Set("maxBlocksPerSeq", l.max_blocks_per_seq);
  o.Set("kvWindow", l.window);
  o.Set("maxTopK", hm::kMaxTopK);
  o.Set("maxSampleEntries", hm::kMaxSampleEntries);
  return o;
}

Napi::Object info_to_js(Napi::Env env, const hm::BackendInfo& i) {
  auto o = Napi::Object::New(env);
  o.Set("backend", i.backend);
  o.Set("deviceName", i.device_name);
  o.Set("expertFormat", i.expert_format);
  o.Set("numBlocks", i.limits.num_blocks);
  o.Set("blockSize", i.limits.block_size);
  o.Set("limits", limits_to_js(env, i.limits));
  o.Set("weightBytes", static_cast<double>(i.weight_bytes));
  o.Set("kvBytes", static_cast<double>(i.kv_bytes));
  o.Set("deviceTotalBytes", static_cast<double>(i.device_total_bytes));
  o.Set("deviceFreeBytes", static_cast<double>(i.device_free_bytes));
  return o;
}


// ---------------------------------------------------------------------------------------------------------------
template <typename T, typename A, napi_typedarray_type kType>
std::vector<T> copy_typed(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kType)
    throw std::runtime_error(std::string("step: ") + what + " must be an " + (kType == napi_int32_array ? "Int32Array" : "Uint8Array"));
  auto a = v.As<A>();
  return std::vector<T>(a.Data(), a.Data() + a.ElementLength());
}

// ---- sampling in the step: NativeSampling (src/native.ts) -> SampleRow / SampleEntry (sampling.h) ----------------
template <typename A, napi_typedarray_type kType>
A typed_field(Fields& o, const char* key, size_t length) {
  const Napi::Value v = o.get(key);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kType)
    throw std::runtime_error(std::string("step.sampling.") + key + ": has the wrong type");
  A a = v.As<A>();
  if (length != size_t(-1) && a.ElementLength() != length)
    throw std::runtime_error(std::string("step.sampling.") + key + ": must hold " + std::to_string(length) + " entries");
  return a;
}

// `count_previous` (a step's, not sampleLogits'): the rows' countPrevious flags, empty where none is given.
void parse_sampling(const Napi::Value& v, size_t rows, std::vector<hm::SampleRow>& out,
                    std::vector<hm::SampleEntry>& entries, std::vector<uint8_t>* count_previous) {
  Fields o(v, "step.sampling");
  auto mode = typed_field<Napi::Uint8Array, napi_uint8_array>(o, "mode", rows);
  auto temperature = typed_field<Napi::Float32Array, napi_float32_array>(o, "temperature", rows);
  auto top_k = typed_field<Napi::Int32Array, napi_int32_array>(o, "topK", rows);
  auto top_p = typed_field<Napi::Float32Array, napi_float32_array>(o, "topP", rows);
  auto min_p = typed_field<Napi::Float32Array, napi_float32_array>(o, "minP", rows);
  auto rep = typed_field<Napi::Float32Array, napi_float32_array>(o, "repetitionPenalty", rows);
  auto freq = typed_field<Napi::Float32Array, napi_float32_array>(o, "frequencyPenalty", rows);
  auto pres = typed_field<Napi::Float32Array, napi_float32_array>(o, "presencePenalty", rows);
  auto keys = typed_field<Napi::Uint32Array, napi_uint32_array>(o, "noiseKeys", 2 * rows);
  auto offsets = typed_field<Napi::Int32Array, napi_int32_array>(o, "entryOffsets", rows + 1);
  auto ids = typed_field<Napi::Int32Array, napi_int32_array>(o, "entryIds", size_t(-1));
  const size_t n = ids.ElementLength();
  auto bias = typed_field<Napi::Float32Array, napi_float32_array>(o, "entryBias", n);
  auto counts = typed_field<Napi::Int32Array, napi_int32_array>(o, "entryCounts", n);
  auto in_prompt = typed_field<Napi::Uint8Array, napi_uint8_array>(o, "entryInPrompt", n);
  if (o.has("countPrevious")) {
    if (!count_previous) throw std::runtime_error("sampleLogits: sampling.countPrevious names a previous step, and there is none");
    auto flags = typed_field<Napi::Uint8Array, napi_uint8_array>(o, "countPrevious", rows);
    count_previous->assign(flags.Data(), flags.Data() + rows);
  }
  o.done();
  if (offsets[0] != 0 || size_t(offsets[rows]) != n)
    throw std::runtime_error("step.sampling.entryOffsets: must run from 0 to the number of entries");
  out.resize(rows);
  for (size_t r = 0; r < rows; r++) {
    hm::SampleRow& p = out[r];
    p.mode = mode[r];
    p.inv_temperature = p.mode == hm::kSampleDraw ? 1.f / temperature[r] : 1.f;
    p.top_k = top_k[r];
    p.top_p = top_p[r];
    p.log_min_p = min_p[r] > 0.f ? std::log(min_p[r]) : -INFINITY;
    p.repetition = rep[r];
    p.frequency = freq[r];
    p.presence = pres[r];
    p.key1 = keys[2 * r];
    p.key2 = keys[2 * r + 1];
    p.entry_begin = offsets[r];
    p.entry_end = offsets[r + 1];
  }
  entries.resize(n);
  for (size_t j = 0; j < n; j++) entries[j] = {ids[j], bias[j], counts[j], in_prompt[j]};
}

// sampleLogits(logits, vocab, sampling): the CPU reference draw over given rows (tests hold the device path
// against the TypeScript definition with it).
Napi::Value SampleLogits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsNumber())
      throw std::runtime_error("sampleLogits(logits, vocab, sampling)");
    auto logits = info[0].As<Napi::Float32Array>();
    const int vocab = info[1].As<Napi::Number>().Int32Value();
    if (vocab <= 0 || logits.ElementLength() % size_t(vocab)) throw std::runtime_error("sampleLogits: logits must be rows of vocab");
    const size_t rows = logits.ElementLength() / size_t(vocab);
    std::vector<hm::SampleRow> p;
    std::vector<hm::SampleEntry> entries;
    parse_sampling(info[2], rows, p, entries, nullptr);
    hm::StepBatch b;
    b.num_seqs = int(rows);
    b.sample_rows = p.data();
    b.sample_entries = entries.data();
    b.num_sample_entries = int(entries.size());
    hm::validate_sampling(b, vocab);
    auto token = Napi::Int32Array::New(env, rows);
    auto logit = Napi::Float32Array::New(env, rows);
    for (size_t r = 0; r < rows; r++) {
      token[r] = -1;
      logit[r] = NAN;
      if (p[r].mode != hm::kSampleNone)
        hm::sample_row_ref(logits.Data() + r * vocab, vocab, p[r], entries.data() + p[r].entry_begin,
                           p[r].entry_end - p[r].entry_begin, &token[r], &logit[r]);
    }
    auto o = Napi::Object::New(env);
    o.Set("sampled", token);
    o.Set("sampledLogit", logit);
    return o;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}
// ---- end of sampling in the step --------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------------------
class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::FunctionReference* ctor;
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {InstanceMethod("step", &NativeModel::Step), InstanceMethod("info", &NativeModel::Info),
                        InstanceMethod("close", &NativeModel::Close)});
  }
  explicit NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {}
  ~NativeModel() override { close(Env(), nullptr); }

  void adopt(Napi::Env env, std::unique_ptr<Backend> b) { runner_ = StepRunner::start(env, std::move(b)); }

 private:
  bool open() const { return runner_ != nullptr; }
  void close(Napi::Env env, const Napi::Promise::Deferred* freed) {
    // Steps already accepted still run; the runner then frees the backend and exits.
    if (runner_) runner_->close(env, freed);
    else if (freed) freed->Resolve(env.Undefined());  // closed before (LoadedModel.close returns that first promise)
    runner_.reset();
  }
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info) {
    if (!open()) throw Napi::Error::New(info.Env(), "model is closed");
    return info_to_js(info.Env(), runner_->backend()->info());
  }
  // Resolves once the backend (weights, KV cache) is freed: after the steps already accepted have run.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    auto freed = Napi::Promise::Deferred::New(info.Env());
    close(info.Env(), &freed);
    return freed.Promise();
  }
  std::shared_ptr<StepRunner> runner_;  // null once closed
};
Napi::FunctionReference* NativeModel::ctor = nullptr;

Napi::Value NativeModel::Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Clock::time_point t_call = Clock::now();
  auto reject = [&](const std::string& msg) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(Napi::Error::New(env, msg).Value());
    return d.Promise();
  };
  if (!open()) return reject("model is closed");
  if (info.Length() < 1 || !info[0].IsObject()) return reject("step: expected an input object");
  auto job = std::make_unique<StepJob>(env);
  job->t_call = t_call;
  const int prev_rows = runner_->last_rows;
  runner_->last_rows = -1;  // a rejected step leaves nothing for the next one to name
  try {
    Fields in(info[0], "step");
    job->tokens = copy_typed<int32_t, Napi::Int32Array, napi_int32_array>(in.get("tokens"), "tokens");
    job->positions = copy_typed<int32_t, Napi::Int32Array, napi_int32_array>(in.get("positions"), "positions");
    job->seq_lens = copy_typed<int32_t, Napi::Int32Array, napi_int32_array>(in.get("seqLens"), "seqLens");
    job->block_tables = copy_typed<int32_t, Napi::Int32Array, napi_int32_array>(in.get("blockTables"), "blockTables");
    if (in.has("windowTables")) {
      job->window_tables = copy_typed<int32_t, Napi::Int32Array, napi_int32_array>(in.get("windowTables"), "windowTables");
      job->has_window_tables = true;
    }
    if (in.has("fullLogits"))
      job->full_logits = copy_typed<uint8_t, Napi::Uint8Array, napi_uint8_array>(in.get("fullLogits"), "fullLogits");
    hm::StepBatch& b = job->batch;
    b.num_tokens = static_cast<int>(job->tokens.size());
    b.num_seqs = static_cast<int>(job->seq_lens.size());
    b.max_blocks_per_seq = in.integer("maxBlocksPerSeq");
    b.all_positions = in.flag_or("allPositions", false);
    b.top_k = in.integer_or("topK", 0);
    std::vector<uint8_t> count_previous;
    if (in.has("sampling"))
      parse_sampling(in.get("sampling"), job->seq_lens.size(), job->sample_rows, job->sample_entries, &count_previous);
    in.done();
    // The arrays' lengths (the batch itself is checked by validate_step).
    if (job->positions.size() != job->tokens.size()) throw std::runtime_error("step: positions and tokens differ in length");
    if (!job->full_logits.empty() && job->full_logits.size() != job->seq_lens.size())
      throw std::runtime_error("step: fullLogits must have one entry per sequence");
    if (b.num_seqs > 0 && job->block_tables.size() != static_cast<size_t>(b.num_seqs) * b.max_blocks_per_seq)
      throw std::runtime_error("step: blockTables must hold numSeqs * maxBlocksPerSeq entries");
    if (job->has_window_tables && job->window_tables.size() != job->block_tables.size())
      throw std::runtime_error("step: windowTables must hold numSeqs * maxBlocksPerSeq entries, as blockTables");
    // Previous-step tokens: checked against the step accepted just before; validated as token 0, filled in by the
    // runner from that step's output.
    for (int i = 0; i < b.num_tokens; i++) {
      const int32_t v = job->tokens[i];
      if (v >= 0) continue;
      const int row = -1 - v;
      if (row >= prev_rows)
        throw std::runtime_error("step: token " + std::to_string(i) + " is " + std::to_string(v) + ", the previous step's row " +
                                 std::to_string(row) + (prev_rows < 0 ? ", but no step was accepted just before it"
                                                                     : ", but that step has " + std::to_string(prev_rows) + " rows"));
      job->prev_refs.push_back(i);
      job->prev_refs.push_back(row);
      job->tokens[i] = 0;
    }
    // countPrevious rows: a sampled 1-token sequence whose token is a previous-step token; room for the entry each
    // adds at the start (validate_step checks the entries the host sent).
    for (size_t s = 0, t = 0, k = 0; s < count_previous.size(); t += size_t(job->seq_lens[s]), s++) {
      if (!count_previous[s]) continue;
      while (k < job->prev_refs.size() && size_t(job->prev_refs[k]) < t) k += 2;  // prev_refs: token order
      if (job->seq_lens[s] != 1 || k == job->prev_refs.size() || size_t(job->prev_refs[k]) != t)
        throw std::runtime_error("step.sampling.countPrevious: sequence " + std::to_string(s) + " is flagged, but its token is not one previous-step token");
      if (job->sample_rows[s].mode == hm::kSampleNone)
        throw std::runtime_error("step.sampling.countPrevious: sequence " + std::to_string(s) + " is flagged, but it is not sampled in the step");
      job->count_refs.push_back(int32_t(s));
      job->count_refs.push_back(job->prev_refs[k + 1]);
    }
    if (job->sample_entries.size() + job->count_refs.size() / 2 > size_t(hm::kMaxSampleEntries))
      throw std::runtime_error("step: sampling entries, one more per countPrevious row, must number 0.." + std::to_string(hm::kMaxSampleEntries));
    job->bind_arrays();
    hm::validate_step(b, runner_->backend()->limits());
    runner_->last_rows = b.all_positions ? b.num_tokens : b.num_seqs;
  } catch (const std::exception& e) {
    return reject(e.what());
  }
  auto p = job->deferred.Promise();
  runner_->submit(env, std::move(job));
  return p;
}

// ---------------------------------------------------------------------------------------------------------------
class LoadWorker : public Napi::AsyncProgressQueueWorker<uint64_t> {
 public:
  LoadWorker(Napi::Env env, hm::ModelConfig cfg, hm::TensorMap tensors, hm::LoadOptions opt, Napi::Function progress)
      : Napi::AsyncProgressQueueWorker<uint64_t>(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        cfg_(std::move(cfg)),
        tensors_(std::move(tensors)),
        opt_(std::move(opt)) {
    if (!progress.IsEmpty()) progress_ = Napi::Persistent(progress);
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute(const ExecutionProgress& p) override {
    try {
      hm::ProgressFn fn = [&p](uint64_t done, uint64_t total) {
        uint64_t v[2] = {done, total};
        p.Send(v, 2);
      };
      if (opt_.backend == "cpu") {
        backend_ = hm::make_cpu_backend(cfg_, tensors_, opt_, fn);
      } else if (opt_.backend == "cuda") {
#ifdef HARMONIUM_CUDA
        backend_ = hm::make_cuda_backend(cfg_, tensors_, opt_, fn);
#else
        throw std::runtime_error("this build of harmonium has no CUDA backend (nvcc was not found at build time)");
#endif
      }
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnProgress(const uint64_t* data, size_t count) override {
    if (progress_.IsEmpty() || count < 2) return;
    Napi::HandleScope scope(Env());
    progress_.Call({Napi::Number::New(Env(), static_cast<double>(data[0])),
                    Napi::Number::New(Env(), static_cast<double>(data[1]))});
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object obj = NativeModel::ctor->New({});
    NativeModel::Unwrap(obj)->adopt(env, std::move(backend_));
    deferred_.Resolve(obj);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  hm::ModelConfig cfg_;
  hm::TensorMap tensors_;
  hm::LoadOptions opt_;
  Napi::FunctionReference progress_;
  std::unique_ptr<Backend> backend_;
};

// ---------------------------------------------------------------------------------------------------------------
Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto d = Napi::Promise::Deferred::New(env);
  try {
    if (info.Length() < 3) throw std::runtime_error("loadModel(config, tensors, options, onProgress?)");
    auto cfg = parse_config(info[0]);
    auto tensors = parse_tensors(info[1]);
    auto opt = parse_options(info[2]);
    Napi::Function progress;
    if (info.Length() > 3 && info[3].IsFunction()) progress = info[3].As<Napi::Function>();
    auto* w = new LoadWorker(env, std::move(cfg), std::move(tensors), std::move(opt), progress);
    auto p = w->promise();
    w->Queue();
    return p;
  } catch (const std::exception& e) {
    d.Reject(Napi::Error::New(env, e.what()).Value());
    return d.Promise();
  }
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto o = Napi::Object::New(env);
#ifdef HARMONIUM_CUDA
  o.Set("cuda", true);
  o.Set("cudaArchitectures", HARMONIUM_CUDA_ARCHS);
#else
  o.Set("cuda", false);
  o.Set("cudaArchitectures", "");
#endif
  auto defaults = Napi::Object::New(env);
  for (const char* backend : {"cpu", "cuda"}) {
    const hm::LoadOptions d = hm::default_load_options(backend);
    auto b = Napi::Object::New(env);
    b.Set("blockSize", d.block_size);
    b.Set("maxSeqs", d.max_seqs);
    b.Set("maxBatchTokens", d.max_batch_tokens);
    b.Set("expertFormat", d.expert_format);
    b.Set("windowKv", d.window_kv);
    defaults.Set(backend, b);
  }
  o.Set("defaults", defaults);
  o.Set("maxTopK", hm::kMaxTopK);
  o.Set("maxSampleEntries", hm::kMaxSampleEntries);
  return o;
}

// weightLayout(config): every tensor the config implies, from the one layout table (weight_layout.h).
Napi::Value WeightLayout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    if (info.Length() < 1) throw std::runtime_error("weightLayout(config)");
    const std::vector<hm::TensorSpec> layout = hm::weight_layout(parse_config(info[0]));
    auto arr = Napi::Array::New(env, layout.size());
    for (size_t i = 0; i < layout.size(); i++) {
      const hm::TensorSpec& t = layout[i];
      auto o = Napi::Object::New(env);
      o.Set("name", t.name);
      o.Set("dtype", hm::dtype_name(t.dtype));
      auto accepts = Napi::Array::New(env);
      accepts.Set(0u, hm::dtype_name(t.dtype));
      if (t.accepts_f32) accepts.Set(1u, hm::dtype_name(hm::DType::F32));
      o.Set("accepts", accepts);
      auto shape = Napi::Array::New(env, t.shape.size());
      for (size_t j = 0; j < t.shape.size(); j++) shape.Set(uint32_t(j), static_cast<double>(t.shape[j]));
      o.Set("shape", shape);
      arr.Set(uint32_t(i), o);
    }
    return arr;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

Napi::Value CudaDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto o = Napi::Object::New(env);
#ifdef HARMONIUM_CUDA
  std::string why;
  int n = hm::cuda_device_count(&why);
  o.Set("count", n);
  o.Set("reason", why);
#else
  o.Set("count", 0);
  o.Set("reason", "this build of harmonium has no CUDA backend (nvcc was not found at build time)");
#endif
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  NativeModel::ctor = new Napi::FunctionReference(Napi::Persistent(NativeModel::Init(env)));
  exports.Set("loadModel", Napi::Function::New(env, LoadModel));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("weightLayout", Napi::Function::New(env, WeightLayout));
  exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices));
  exports.Set("sampleLogits", Napi::Function::New(env, SampleLogits));
  return exports;
}

}  // namespace

NODE_API_MODULE(harmonium, Init)
