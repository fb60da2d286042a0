// N-API surface of harmonium: loadModel() -> NativeModel with step()/info()/close(). Everything slow
// (reading weights, a model step) runs on a libuv worker thread and resolves a Promise; the event loop never
// waits on the math. src/native.ts is the one TypeScript module that declares these exports.
#include <napi.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "backend.h"

namespace {

using hm::Backend;

int get_int(const Napi::Object& o, const char* key, int def) {
  if (!o.Has(key) || o.Get(key).IsUndefined() || o.Get(key).IsNull()) return def;
  return o.Get(key).As<Napi::Number>().Int32Value();
}
double get_num(const Napi::Object& o, const char* key, double def) {
  if (!o.Has(key) || o.Get(key).IsUndefined() || o.Get(key).IsNull()) return def;
  return o.Get(key).As<Napi::Number>().DoubleValue();
}
bool get_bool(const Napi::Object& o, const char* key, bool def) {
  if (!o.Has(key) || o.Get(key).IsUndefined() || o.Get(key).IsNull()) return def;
  return o.Get(key).ToBoolean().Value();
}
std::string get_str(const Napi::Object& o, const char* key, const std::string& def) {
  if (!o.Has(key) || o.Get(key).IsUndefined() || o.Get(key).IsNull()) return def;
  return o.Get(key).ToString().Utf8Value();
}

hm::ModelConfig parse_config(const Napi::Object& c) {
  hm::ModelConfig cfg;
  cfg.num_layers = get_int(c, "numLayers", 0);
  cfg.num_experts = get_int(c, "numExperts", 0);
  cfg.experts_per_token = get_int(c, "expertsPerToken", 0);
  cfg.hidden = get_int(c, "hiddenSize", 0);
  cfg.intermediate = get_int(c, "intermediateSize", 0);
  cfg.num_heads = get_int(c, "numHeads", 0);
  cfg.num_kv_heads = get_int(c, "numKvHeads", 0);
  cfg.head_dim = get_int(c, "headDim", 0);
  cfg.vocab = get_int(c, "vocabSize", 0);
  cfg.sliding_window = get_int(c, "slidingWindow", 0);
  cfg.rms_eps = static_cast<float>(get_num(c, "rmsNormEps", 1e-5));
  cfg.swiglu_limit = static_cast<float>(get_num(c, "swigluLimit", 7.0));
  cfg.max_positions = get_int(c, "maxPositions", 131072);
  auto sliding = c.Get("layerSliding").As<Napi::Array>();
  for (uint32_t i = 0; i < sliding.Length(); i++)
    cfg.layer_sliding.push_back(sliding.Get(i).ToBoolean().Value() ? 1 : 0);
  auto r = c.Get("rope").As<Napi::Object>();
  cfg.rope.theta = get_num(r, "theta", 150000.0);
  cfg.rope.yarn = get_str(r, "type", "yarn") == "yarn";
  cfg.rope.factor = get_num(r, "factor", 1.0);
  cfg.rope.original_max_positions = get_num(r, "originalMaxPositions", 4096.0);
  cfg.rope.beta_fast = get_num(r, "betaFast", 32.0);
  cfg.rope.beta_slow = get_num(r, "betaSlow", 1.0);
  cfg.rope.truncate = get_bool(r, "truncate", false);
  if (cfg.num_layers <= 0 || cfg.hidden <= 0 || cfg.vocab <= 0 ||
      static_cast<int>(cfg.layer_sliding.size()) != cfg.num_layers)
    throw std::runtime_error("native: malformed model config");
  return cfg;
}

hm::TensorMap parse_tensors(const Napi::Array& arr) {
  hm::TensorMap m;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    auto o = arr.Get(i).As<Napi::Object>();
    hm::TensorSource t;
    t.name = get_str(o, "name", "");
    t.file = get_str(o, "file", "");
    t.offset = static_cast<uint64_t>(get_num(o, "offset", 0));
    t.nbytes = static_cast<uint64_t>(get_num(o, "nbytes", 0));
    std::string dt = get_str(o, "dtype", "");
    if (dt == "BF16") t.dtype = hm::DType::BF16;
    else if (dt == "F32") t.dtype = hm::DType::F32;
    else if (dt == "U8") t.dtype = hm::DType::U8;
    else throw std::runtime_error("native: tensor " + t.name + ": unsupported dtype " + dt);
    auto shape = o.Get("shape").As<Napi::Array>();
    for (uint32_t j = 0; j < shape.Length(); j++)
      t.shape.push_back(static_cast<int64_t>(shape.Get(j).As<Napi::Number>().DoubleValue()));
    m.emplace(t.name, std::move(t));
  }
  return m;
}

Napi::Object info_to_js(Napi::Env env, const hm::BackendInfo& i) {
  auto o = Napi::Object::New(env);
  o.Set("backend", i.backend);
  o.Set("deviceName", i.device_name);
  o.Set("expertFormat", i.expert_format);
  o.Set("numBlocks", i.num_blocks);
  o.Set("blockSize", i.block_size);
  o.Set("weightBytes", static_cast<double>(i.weight_bytes));
  o.Set("kvBytes", static_cast<double>(i.kv_bytes));
  o.Set("deviceTotalBytes", static_cast<double>(i.device_total_bytes));
  o.Set("deviceFreeBytes", static_cast<double>(i.device_free_bytes));
  return o;
}

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

  void adopt(std::unique_ptr<Backend> b) { backend_ = std::move(b); }
  Backend* backend() { return backend_.get(); }
  std::atomic<bool> busy{false};
  bool close_pending = false;
  void release() { backend_.reset(); }

 private:
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info) {
    if (!backend_) throw Napi::Error::New(info.Env(), "model is closed");
    return info_to_js(info.Env(), backend_->info());
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    // A step in flight keeps the backend alive; it is freed when that step finishes.
    if (busy.load()) close_pending = true;
    else backend_.reset();
    return info.Env().Undefined();
  }
  std::unique_ptr<Backend> backend_;
};
Napi::FunctionReference* NativeModel::ctor = nullptr;

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
      } else {
        throw std::runtime_error("unknown backend '" + opt_.backend + "' (expected cpu or cuda)");
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
    NativeModel::Unwrap(obj)->adopt(std::move(backend_));
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
template <typename T, typename A>
std::vector<T> copy_typed(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray()) throw std::runtime_error(std::string("step: ") + what + " must be a typed array");
  auto a = v.As<A>();
  return std::vector<T>(a.Data(), a.Data() + a.ElementLength());
}

// ---- sampling in the step: NativeSampling (src/native.ts) -> SampleRow / SampleEntry (sampling.h) ----------------
template <typename A, napi_typedarray_type kType>
A typed_field(const Napi::Object& o, const char* key, size_t length) {
  const Napi::Value v = o.Get(key);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kType)
    throw std::runtime_error(std::string("step: sampling.") + key + " has the wrong type");
  A a = v.As<A>();
  if (length != size_t(-1) && a.ElementLength() != length)
    throw std::runtime_error(std::string("step: sampling.") + key + " must hold " + std::to_string(length) + " entries");
  return a;
}

void parse_sampling(const Napi::Object& o, size_t rows, std::vector<hm::SampleRow>& out,
                    std::vector<hm::SampleEntry>& entries) {
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
  if (offsets[0] != 0 || size_t(offsets[rows]) != n)
    throw std::runtime_error("step: sampling.entryOffsets must run from 0 to the number of entries");
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
    if (info.Length() < 3 || !info[0].IsTypedArray() || !info[2].IsObject())
      throw std::runtime_error("sampleLogits(logits, vocab, sampling)");
    auto logits = info[0].As<Napi::Float32Array>();
    const int vocab = info[1].As<Napi::Number>().Int32Value();
    if (vocab <= 0 || logits.ElementLength() % size_t(vocab)) throw std::runtime_error("sampleLogits: logits must be rows of vocab");
    const size_t rows = logits.ElementLength() / size_t(vocab);
    std::vector<hm::SampleRow> p;
    std::vector<hm::SampleEntry> entries;
    parse_sampling(info[2].As<Napi::Object>(), rows, p, entries);
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

class StepWorker : public Napi::AsyncWorker {
 public:
  StepWorker(Napi::Env env, NativeModel* model, Napi::Object self)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), model_(model) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  std::vector<int32_t> tokens, positions, seq_lens, block_tables;
  std::vector<uint8_t> full_logits;
  std::vector<hm::SampleRow> sample_rows;
  std::vector<hm::SampleEntry> sample_entries;
  hm::StepBatch batch;

  void Execute() override {
    try {
      batch.tokens = tokens.data();
      batch.positions = positions.data();
      batch.seq_lens = seq_lens.data();
      batch.block_tables = block_tables.data();
      batch.full_logits = full_logits.empty() ? nullptr : full_logits.data();
      batch.sample_rows = sample_rows.empty() ? nullptr : sample_rows.data();
      batch.sample_entries = sample_entries.data();
      batch.num_sample_entries = static_cast<int>(sample_entries.size());
      model_->backend()->step(batch, out_);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void finish() {
    model_->busy.store(false);
    if (model_->close_pending) model_->release();
  }
  void OnOK() override {
    Napi::Env env = Env();
    finish();
    auto o = Napi::Object::New(env);
    auto i32 = [&](const std::vector<int32_t>& v) {
      auto a = Napi::Int32Array::New(env, v.size());
      std::copy(v.begin(), v.end(), a.Data());
      return a;
    };
    auto f32 = [&](const std::vector<float>& v) {
      auto a = Napi::Float32Array::New(env, v.size());
      std::copy(v.begin(), v.end(), a.Data());
      return a;
    };
    o.Set("numRows", out_.num_rows);
    o.Set("vocab", out_.vocab);
    o.Set("topK", out_.top_k);
    o.Set("argmax", i32(out_.argmax));
    o.Set("maxLogit", f32(out_.max_logit));
    o.Set("logsumexp", f32(out_.logsumexp));
    o.Set("topIds", i32(out_.top_ids));
    o.Set("topLogits", f32(out_.top_logits));
    o.Set("logitsRows", i32(out_.logits_rows));
    o.Set("logits", f32(out_.logits));
    o.Set("sampled", i32(out_.sampled));
    o.Set("sampledLogit", f32(out_.sampled_logit));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override {
    finish();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  NativeModel* model_;
  Napi::ObjectReference self_;  // keeps the model object alive while the step runs
  hm::StepOutput out_;
};

Napi::Value NativeModel::Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto reject = [&](const std::string& msg) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(Napi::Error::New(env, msg).Value());
    return d.Promise();
  };
  if (!backend_ || close_pending) return reject("model is closed");
  if (info.Length() < 1 || !info[0].IsObject()) return reject("step: expected an input object");
  bool expected = false;
  if (!busy.compare_exchange_strong(expected, true)) return reject("step: another step of this model is in flight");
  auto* w = new StepWorker(env, this, info.This().As<Napi::Object>());
  try {
    auto in = info[0].As<Napi::Object>();
    w->tokens = copy_typed<int32_t, Napi::Int32Array>(in.Get("tokens"), "tokens");
    w->positions = copy_typed<int32_t, Napi::Int32Array>(in.Get("positions"), "positions");
    w->seq_lens = copy_typed<int32_t, Napi::Int32Array>(in.Get("seqLens"), "seqLens");
    w->block_tables = copy_typed<int32_t, Napi::Int32Array>(in.Get("blockTables"), "blockTables");
    if (in.Has("fullLogits") && in.Get("fullLogits").IsTypedArray())
      w->full_logits = copy_typed<uint8_t, Napi::Uint8Array>(in.Get("fullLogits"), "fullLogits");
    w->batch.num_tokens = static_cast<int>(w->tokens.size());
    w->batch.num_seqs = static_cast<int>(w->seq_lens.size());
    w->batch.max_blocks_per_seq = get_int(in, "maxBlocksPerSeq", 0);
    w->batch.all_positions = get_bool(in, "allPositions", false);
    w->batch.top_k = get_int(in, "topK", 0);
    if (in.Has("sampling") && in.Get("sampling").IsObject())
      parse_sampling(in.Get("sampling").As<Napi::Object>(), w->seq_lens.size(), w->sample_rows, w->sample_entries);
    if (w->positions.size() != w->tokens.size()) throw std::runtime_error("step: positions and tokens differ in length");
    if (!w->full_logits.empty() && w->full_logits.size() != w->seq_lens.size())
      throw std::runtime_error("step: fullLogits must have one entry per sequence");
    if (w->batch.top_k < 0 || w->batch.top_k > 256) throw std::runtime_error("step: topK must be in 0..256");
    if (w->batch.num_seqs > 0 &&
        w->block_tables.size() != static_cast<size_t>(w->batch.num_seqs) * w->batch.max_blocks_per_seq)
      throw std::runtime_error("step: blockTables must hold numSeqs * maxBlocksPerSeq entries");
    size_t total = 0;
    for (int32_t n : w->seq_lens) {
      if (n <= 0) throw std::runtime_error("step: every sequence needs at least one token");
      total += static_cast<size_t>(n);
    }
    if (total != w->tokens.size()) throw std::runtime_error("step: seqLens do not add up to the number of tokens");
  } catch (const std::exception& e) {
    busy.store(false);
    delete w;
    return reject(e.what());
  }
  auto p = w->promise();
  w->Queue();
  return p;
}

// ---------------------------------------------------------------------------------------------------------------
Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto d = Napi::Promise::Deferred::New(env);
  try {
    if (info.Length() < 3) throw std::runtime_error("loadModel(config, tensors, options, onProgress?)");
    auto cfg = parse_config(info[0].As<Napi::Object>());
    auto tensors = parse_tensors(info[1].As<Napi::Array>());
    auto o = info[2].As<Napi::Object>();
    hm::LoadOptions opt;
    opt.backend = get_str(o, "backend", "cpu");
    opt.expert_format = get_str(o, "expertFormat", "mxfp4");
    opt.num_blocks = get_int(o, "numBlocks", 0);
    opt.block_size = get_int(o, "blockSize", 16);
    opt.max_seqs = get_int(o, "maxSeqs", 64);
    opt.max_batch_tokens = get_int(o, "maxBatchTokens", 2048);
    opt.threads = get_int(o, "threads", 0);
    opt.device = get_int(o, "device", 0);
    opt.dummy = get_bool(o, "dummy", false);
    opt.seed = static_cast<uint64_t>(get_num(o, "seed", 0));
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
  o.Set("maxSampleEntries", hm::kMaxSampleEntries);
  return o;
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
  exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices));
  exports.Set("sampleLogits", Napi::Function::New(env, SampleLogits));
  return exports;
}

}  // namespace

NODE_API_MODULE(harmonium, Init)
