// The CUDA backend: hm::Backend on one GPU. Owns the weights (weights.cu), the paged bf16 KV cache and an
// activation workspace sized once at load. A step is four parts: plan_step (host: index arrays, prefill tiles,
// split-K shapes, which sampling kernels run), upload (the batch's small index arrays in one copy, the sampling
// rows and entries in their own buffers), launch (the forward pass as a fixed sequence of kernel launches on one
// stream, PDL-chained on sm_90+; a decode-only step is padded to its bucket (native/step_plan.h), captured once
// per bucket as a CUDA graph and replayed; the logits narrowed on the GPU, then sampled there: kernels/sample.h)
// and readback (one synchronisation, then the narrowed results and the sampled tokens). HARMONIUM_PDL=0 / HARMONIUM_CUDA_GRAPHS=0 turn either off.
// HARMONIUM_BATCH_INVARIANT=1: every step runs the prefill-shaped kernels for every row (tensor-core GEMMs, the
// grouped expert GEMM, decode tokens as 1-token attention tiles), so a sequence's logits do not depend on what else
// is in the batch nor on how its prompt was chunked; it costs decode throughput (docs/reproducibility.md).
//
// Per layer: rmsnorm -> fused qkv projection (the norm fused in for decode) -> rope + KV write (inside the decode
// attention kernel on decode-only steps) -> attention (prefill tiles and/or split-K
// decode) -> o_proj (+ residual) -> rmsnorm -> router logits (norm fused for decode) + top-k -> experts (+ residual).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "../backend.h"
#include "../cpu/ref_ops.h"
#include "../step_plan.h"
#include "attention.h"
#include "common.cuh"
#include "dense.h"
#include "embedding.h"
#include "logits.h"
#include "moe.h"
#include "norm_rope.h"
#include "sample.h"
#include "weights.h"

namespace hm {
namespace {

using namespace hm::cuda;

// An A/B switch read from the environment: the index of its value among `choices`, or -1 when unset, empty or
// "auto"; anything else throws, naming the choices.
int env_choice(const char* name, std::initializer_list<const char*> choices) {
  const char* env = std::getenv(name);
  if (!env || !*env || std::strcmp(env, "auto") == 0) return -1;
  int i = 0;
  std::string list;
  for (const char* c : choices) {
    if (std::strcmp(env, c) == 0) return i;
    list += std::string(i++ ? ", " : "") + c;
  }
  throw std::runtime_error(std::string(name) + " must be " + list + " or auto (got '" + env + "')");
}

// lm_head rows per pass: at least 64 (64 x 201088 fp32 = 51 MB of logits), up to the padded decode batch (at 256
// sequences one pass reads the 1.16 GB of lm_head once instead of four times: ~0.75 ms a step at 4.5 TB/s).
constexpr int kMinLogitRows = 64, kMaxLogitRows = 256;
constexpr uint64_t kHeadroomBytes = 1536ull << 20;  // left free after the KV cache (cudart, graphs, fragmentation)
constexpr size_t kAttnWorkspaceFloats = 16ull << 20;  // 64 MB of split-K partials

// Device allocations of the backend besides the weights, freed together.
struct DeviceAllocs {
  std::vector<void*> ptrs;
  ~DeviceAllocs() {
    for (void* p : ptrs) cudaFree(p);
  }
  template <typename T>
  T* alloc(size_t count, const std::string& what) {
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(count * sizeof(T), 256);
    if (cudaMalloc(&p, bytes) != cudaSuccess) throw std::runtime_error(oom_message(bytes, what));
    ptrs.push_back(p);
    return static_cast<T*>(p);
  }
};

struct PinnedBuf {
  void* p = nullptr;
  size_t bytes = 0;
  ~PinnedBuf() {
    if (p) cudaFreeHost(p);
  }
  void reserve(size_t n) {
    if (n <= bytes) return;
    if (p) cudaFreeHost(p);
    p = nullptr;
    bytes = 0;
    CUDA_CHECK(cudaMallocHost(&p, n));
    bytes = n;
  }
};

// HARMONIUM_PROFILE=1: GPU time per op family, from events recorded between launches (eager launches only: graphs
// are turned off, and events between kernels break the PDL overlap, so totals run a little above the real step).
// Printed to stderr when the backend is freed, per kind of step (decode-only or with prefill). The first step of each
// kind is left out of the means (printed apart): it carries the one-time costs (modules loaded on first launch,
// shared-memory opt-ins), 10-60 ms on the H200, which a short warm-up step would otherwise spread over the rest.
struct StepProfiler {
  enum Op { kEmbed, kNorm, kQkv, kRope, kAttn, kOProj, kRouter, kExperts, kLogits, kNumOps };
  static constexpr const char* kNames[kNumOps] = {"embedding", "rmsnorm", "qkv proj", "rope+kv write", "attention",
                                                  "o proj", "router", "experts", "lm_head+narrow"};
  bool on = false;
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> events;
  std::vector<int> ops;
  size_t used = 0;
  double ms[2][kNumOps] = {};
  int steps[2] = {0, 0};
  bool seen[2] = {false, false};
  double first_ms[2] = {0, 0};
  void begin(cudaStream_t s) {
    if (!on) return;
    stream = s;
    used = 0;
    ops.clear();
    record(-1);
  }
  void mark(Op op) {
    if (on) record(op);
  }
  void record(int op) {
    if (used == events.size()) {
      cudaEvent_t e;
      CUDA_CHECK(cudaEventCreate(&e));
      events.push_back(e);
    }
    CUDA_CHECK(cudaEventRecord(events[used++], stream));
    ops.push_back(op);
  }
  void end(bool decode) {  // after the step's stream synchronisation
    if (!on) return;
    const int k = decode ? 0 : 1;
    double step[kNumOps] = {}, total = 0;
    for (size_t i = 1; i < used; i++) {
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, events[i - 1], events[i]));
      step[ops[i]] += t;
      total += t;
    }
    if (!seen[k]) {
      seen[k] = true;
      first_ms[k] = total;
      return;
    }
    for (int o = 0; o < kNumOps; o++) ms[k][o] += step[o];
    steps[k]++;
  }
  ~StepProfiler() {
    if (!on) return;
    for (int k = 0; k < 2; k++) {
      if (!steps[k]) continue;
      double total = 0;
      for (double v : ms[k]) total += v;
      std::fprintf(stderr, "[harmonium profile] %s steps: %d, %.3f ms per step (the first, left out: %.3f ms)\n",
                   k ? "prefill" : "decode", steps[k], total / steps[k], first_ms[k]);
      for (int o = 0; o < kNumOps; o++)
        std::fprintf(stderr, "  %-16s %9.3f ms/step %5.1f%%\n", kNames[o], ms[k][o] / steps[k], 100 * ms[k][o] / total);
    }
    for (cudaEvent_t e : events) cudaEventDestroy(e);
  }
};

// HARMONIUM_PROFILE=2: what the backend adds inside a step, with graphs and PDL as configured: GPU time of the
// launched work (events around it), the host's work before the step's work is enqueued (plan, upload, graph
// launch) and after its synchronisation (readback), and the CUDA graphs captured (count, host time: the cost of a
// new bucket). The host's idle time between steps is the addon's (native/step_runner.h's HostTimer). Printed when
// the backend is freed.
struct StepTimer {
  bool on = false;
  cudaEvent_t ev[2] = {nullptr, nullptr};
  std::chrono::steady_clock::time_point t0, t_launched, t_synced;
  double gpu_ms = 0, before_ms = 0, after_ms = 0, capture_ms = 0;
  int steps = 0, captures = 0;
  static double since(std::chrono::steady_clock::time_point a) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
  }
  void begin(cudaStream_t s) {
    if (!on) return;
    if (!ev[0]) {
      CUDA_CHECK(cudaEventCreate(&ev[0]));
      CUDA_CHECK(cudaEventCreate(&ev[1]));
    }
    t0 = std::chrono::steady_clock::now();
    CUDA_CHECK(cudaEventRecord(ev[0], s));
  }
  void launched(cudaStream_t s) {
    if (!on) return;
    t_launched = std::chrono::steady_clock::now();
    CUDA_CHECK(cudaEventRecord(ev[1], s));
  }
  void synced() {
    if (on) t_synced = std::chrono::steady_clock::now();
  }
  void end() {  // after the step's stream synchronisation
    if (!on) return;
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, ev[0], ev[1]));
    gpu_ms += t;
    before_ms += std::chrono::duration<double, std::milli>(t_launched - t0).count();
    after_ms += since(t_synced);
    steps++;
  }
  ~StepTimer() {
    if (!on) return;
    if (steps)
      std::fprintf(stderr,
                   "[harmonium timing] steps %d: GPU %.3f ms, host before the launch %.4f ms, after the sync %.4f ms "
                   "per step; %d CUDA graphs captured, %.2f ms each\n",
                   steps, gpu_ms / steps, before_ms / steps, after_ms / steps, captures,
                   captures ? capture_ms / captures : 0.0);
    for (cudaEvent_t e : ev)
      if (e) cudaEventDestroy(e);
  }
};

// The backend's stream, destroyed even when the constructor throws half way.
struct StreamOwner {
  cudaStream_t s = nullptr;
  ~StreamOwner() {
    if (s) {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const ModelConfig& cfg, const TensorMap& tensors, const LoadOptions& opt, const ProgressFn& progress);
  ~CudaBackend() override { cudaSetDevice(device_); }
  void step(const StepBatch& batch, StepOutput& out) override;
  BackendInfo info() const override;
  const StepLimits& limits() const override { return limits_; }

 private:
  void forward_layers(int T);
  void logits_rows(int first_row, int rows, int top_k, int sample_stages);

  ModelConfig cfg_;
  LoadOptions opt_;
  int device_ = 0;
  int num_sms_ = 1;  // the decode attention planner fills them
  std::string device_name_;
  bool pdl_ = false;
  // HARMONIUM_PDL_OFF=dense,attn,moe,norm,rope,embed,narrow,sample: launch those op families without PDL (A/B);
  // parsed once at construction into one bit per family (kPdlFamilies order).
  static constexpr const char* kPdlFamilies[] = {"dense", "attn", "moe", "norm", "rope", "embed", "narrow", "sample"};
  unsigned pdl_off_ = 0;
  bool pdl_for(const char* op) const {
    if (!pdl_ || pdl_off_ == 0) return pdl_;
    for (unsigned i = 0; i < std::size(kPdlFamilies); i++)
      if (std::strcmp(op, kPdlFamilies[i]) == 0) return !(pdl_off_ >> i & 1u);
    return true;
  }
  StreamOwner stream_owner_;
  cudaStream_t stream_ = nullptr;
  GpuWeights w_;
  DeviceAllocs mem_;
  uint64_t kv_bytes_ = 0, ws_bytes_ = 0;
  int num_blocks_ = 0;
  StepLimits limits_;
  uint16_t* kv_ = nullptr;
  KvLayout kv_layout_;         // which slot of a block each layer's KV lives in (kv_layout.h)
  size_t kv_layer_elems_ = 0;  // elements of K (or V) of one layer slot
  float attn_factor_ = 1.f;
  float* inv_freq_ = nullptr;

  // activations
  int qkv_width_ = 0;
  float* x_ = nullptr;         // fp32 [Tmax, H] residual stream
  uint16_t* xn_ = nullptr;     // bf16 [Tmax, H] normed
  uint16_t* xn_lo_ = nullptr;  // bf16 [Tmax, H] rounding residual of the norm (xn + xn_lo ~ fp32)
  float* qkv_ = nullptr;       // fp32 [Tmax, qkv_width]
  uint16_t* attn_ = nullptr;   // bf16 [Tmax, nq*D]
  float* router_logits_ = nullptr;
  int32_t* expert_ids_ = nullptr;
  float* expert_w_ = nullptr;
  void* moe_ws_ = nullptr;
  size_t moe_ws_bytes_ = 0;
  float* attn_ws_ = nullptr;
  uint32_t* attn_counters_ = nullptr;  // [Tmax * nkv] decode attention arrival counters, left zero by each launch
  uint16_t* xf_ = nullptr;     // bf16 [logit_rows_, H] final-normed rows
  float* logits_ = nullptr;    // fp32 [logit_rows_, V]
  // narrowed outputs, [Tmax] rows
  int32_t* d_argmax_ = nullptr;
  float* d_maxl_ = nullptr;
  float* d_lse_ = nullptr;
  int32_t* d_top_ids_ = nullptr;
  float* d_top_logits_ = nullptr;
  // sampling in the step (kernels/sample.h): per-sequence params and entries uploaded each step, outputs per row
  SampleRow* d_sample_rows_ = nullptr;        // [max_seqs]
  SampleEntry* d_sample_entries_ = nullptr;   // [kMaxSampleEntries]
  float* d_sample_saved_ = nullptr;           // [kMaxSampleEntries] raw logits of the entries
  int32_t* d_sampled_ = nullptr;              // [Tmax]
  float* d_sampled_logit_ = nullptr;          // [Tmax]
  void* sample_ws_ = nullptr;
  size_t sample_ws_bytes_ = 0;
  PinnedBuf h_sample_;                        // the rows and entries, staged for their upload
  // the step's index arrays, uploaded in one copy
  int32_t* d_idx_ = nullptr;
  size_t idx_cap_ = 0;
  PinnedBuf h_idx_, h_out_, h_logits_;
  // per-step views into d_idx_ (set by upload())
  int32_t *d_tokens_ = nullptr, *d_pos_ = nullptr, *d_slot_ = nullptr, *d_tok_seq_ = nullptr, *d_bt_ = nullptr,
          *d_decode_ = nullptr, *d_tiles_ = nullptr, *d_out_rows_ = nullptr;
  // the sliding layers' block tables and cache slots, when the layout keeps them apart (else the ones above)
  int32_t *d_bt_window_ = nullptr, *d_slot_window_ = nullptr;
  bool batch_invariant_ = false;  // HARMONIUM_BATCH_INVARIANT=1 (see the top of this file)
  MoePath moe_decode_path_ = MoePath::kAuto;  // HARMONIUM_MOE_DECODE=split|bulk|regs: the one-token expert kernels (A/B)
  // HARMONIUM_MOE_PREFILL (A/B): wgmma = every step above 8 tokens on the wgmma GEMMs (no grouped path); mma = no
  // wgmma GEMMs (moe_prefill_mma.cuh / v1, the kernels before them); auto (default).
  MoePath moe_prefill_path_ = MoePath::kAuto;
  bool moe_wgmma_ = true;
  int moe_wgmma_tile_ = 0;  // MoeParams::wgmma_tile (HARMONIUM_MOE_WGMMA_TILE)
  int dense_gemm_ = 0;  // HARMONIUM_DENSE=mma|wgmma|tma (A/B): the dense projections' tensor-core kernel (DenseParams::gemm)
  bool fused_rope_ = true;  // decode-only steps rotate and write the KV cache inside attention (HARMONIUM_FUSED_ROPE=0: off)

  // ---- one step, in four parts: plan (host), upload, launch (graph or eager), readback ----
  StepPlanOptions plan_opt_;  // set at load (native/step_plan.h: padding of decode-only steps when graphs are on)
  StepPlan plan_;             // the step in flight (its vectors are reused, step after step)
  // What plan_step adds to the host plan for the launches: the sampling kernels and the decode attention shape.
  bool sampled_ = false;   // the batch has sample rows (the output carries sampled / sampled_logit)
  int sample_stages_ = 0;  // their SampleStage mask: which sampling kernels run (0 = none)
  // split-K decode attention shape per layer kind (index 0: full layers, 1: sliding layers); with padding a
  // function of the bucket (plan_.max_keys), so of the graph key
  int dec_kps_[2] = {0, 0}, dec_splits_[2] = {0, 0};
  int dec_variant_[2] = {0, 0}, dec_slices_ = 1;  // attention_decode_plan's kernel per layer kind (full, sliding)
  bool clusters_ = false;                          // sm_90+: thread block clusters (decode variant 3)
  void plan_step(const StepBatch& b);
  void upload(const StepBatch& b);
  void launch();
  void readback(StepOutput& out);

  // params builders for forward_layers / logits_rows: the fields every launch of a kind shares
  DenseParams dense_params(const uint16_t* x, int ldx, const uint16_t* W, const uint16_t* b, float* y, int ldy, int T,
                           int N, int K) const;
  RmsNormParams rmsnorm_params(const uint16_t* w, int T) const;
  AttentionCommon attention_params(const LayerWeights& L, uint16_t* kc, uint16_t* vc, const int32_t* tables,
                                   int window) const;
  MoeParams moe_params(int T) const;

  // CUDA graphs of decode-only steps, one per launch shape (padded to its bucket: native/step_plan.h), captured on
  // first use and kept, least recently used dropped beyond kMaxGraphs. Everything a step changes within a shape
  // (tokens, positions, slots, block tables, sampling rows) is in device buffers the graph reads.
  struct GraphKey {
    int T, S, mbps, rows, top_k, kps0, splits0, kps1, splits1, sample_stages;
    bool operator==(const GraphKey& o) const { return std::memcmp(this, &o, sizeof o) == 0; }
  };
  class GraphCache {
   public:
    // A few dozen: 23 token buckets up to 256 sequences times the block-table buckets a run passes through; an
    // executable graph costs host memory only.
    static constexpr int kMaxGraphs = 48;
    ~GraphCache() {
      for (Entry& e : entries_) cudaGraphExecDestroy(e.exec);
    }
    bool enabled = true;
    // Replays the graph of `key`, capturing `record` first when it is new (timed into `timer`). False when graphs
    // are off or the capture failed (then logged once, and graphs stay off for this model): the caller runs eagerly.
    template <typename F>
    bool run(const GraphKey& key, cudaStream_t stream, StepTimer& timer, F&& record);

   private:
    struct Entry {
      GraphKey key;
      cudaGraphExec_t exec;
      uint64_t used;  // the step it last ran in
    };
    std::vector<Entry> entries_;
    uint64_t clock_ = 0;
  };
  GraphCache graphs_;
  // The forward pass and the logits of every output row (all chunks: the chunks' full-logits copies are the
  // caller's, so only a step without them, or with one chunk, runs all of this in one graph).
  void run_forward(int T, int rows, int top_k, int sample_stages);
  int logit_rows_ = 0;  // output rows per lm_head pass (the logits buffer's rows)
  StepProfiler prof_;
  StepTimer timer_;
};

CudaBackend::CudaBackend(const ModelConfig& cfg, const TensorMap& tensors, const LoadOptions& opt,
                         const ProgressFn& progress)
    : cfg_(cfg), opt_(opt), device_(opt.device) {
  std::string why;
  const int n = cuda_device_count(&why);
  if (n == 0) throw std::runtime_error("cuda backend: " + why);
  if (opt.device < 0 || opt.device >= n)
    throw std::runtime_error("cuda backend: device " + std::to_string(opt.device) + " does not exist (" +
                             std::to_string(n) + " CUDA device(s) visible)");
  CUDA_CHECK(cudaSetDevice(device_));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
  device_name_ = prop.name;
  num_sms_ = prop.multiProcessorCount;
  const int cc = prop.major * 10 + prop.minor;
  clusters_ = cc >= 90;
  if (cc < 80)
    throw std::runtime_error("cuda backend: " + device_name_ + " (sm_" + std::to_string(cc) +
                             ") is not supported: bf16 kernels need compute capability 8.0 or newer");
  const bool mxfp4 = opt.expert_format == "mxfp4";
  if (mxfp4 && cc < 90)
    throw std::runtime_error("cuda backend: the MXFP4 expert kernels need sm_90 or newer; " + device_name_ +
                             " is sm_" + std::to_string(cc) + ": load with expertFormat 'bf16'");
  const char* pdl_env = std::getenv("HARMONIUM_PDL");
  pdl_ = cc >= 90 && !(pdl_env && std::strcmp(pdl_env, "0") == 0);
  if (const char* off = std::getenv("HARMONIUM_PDL_OFF")) {
    const std::string list = std::string(",") + off + ",";
    for (unsigned i = 0; i < std::size(kPdlFamilies); i++)
      if (list.find(std::string(",") + kPdlFamilies[i] + ",") != std::string::npos) pdl_off_ |= 1u << i;
  }
  const char* graph_env = std::getenv("HARMONIUM_CUDA_GRAPHS");
  graphs_.enabled = !(graph_env && std::strcmp(graph_env, "0") == 0);
  const char* rope_env = std::getenv("HARMONIUM_FUSED_ROPE");
  fused_rope_ = !(rope_env && std::strcmp(rope_env, "0") == 0);
  const char* inv_env = std::getenv("HARMONIUM_BATCH_INVARIANT");
  batch_invariant_ = inv_env && std::strcmp(inv_env, "1") == 0;
  const int moe_decode = env_choice("HARMONIUM_MOE_DECODE", {"split", "bulk", "regs"});
  if (moe_decode == 1) moe_decode_path_ = MoePath::kDecode;
  if (moe_decode == 2) moe_decode_path_ = MoePath::kDecodeRegs;
  const int moe_prefill = env_choice("HARMONIUM_MOE_PREFILL", {"wgmma", "mma"});
  if (moe_prefill == 0) moe_prefill_path_ = MoePath::kPrefillWgmma;
  if (moe_prefill == 1) moe_wgmma_ = false;
  // HARMONIUM_MOE_WGMMA_TILE (A/B): fit (every expert's tiles fitted to its tokens), fixed (one width by the mean
  // tokens an expert, the rule before fitted tiles), or one width for every step.
  const int wgmma_tile = env_choice("HARMONIUM_MOE_WGMMA_TILE", {"fit", "fixed", "16", "32", "64", "128"});
  if (wgmma_tile >= 0)
    moe_wgmma_tile_ = wgmma_tile == 0 ? kMoeWgmmaTileFit : wgmma_tile == 1 ? kMoeWgmmaTileFixed : 16 << (wgmma_tile - 2);
  const int dense = env_choice("HARMONIUM_DENSE", {"wgmma", "mma", "tma"});
  dense_gemm_ = dense == 0 ? 2 : dense == 1 ? 1 : dense == 2 ? 3 : 0;  // DenseParams::gemm
  const char* prof_env = std::getenv("HARMONIUM_PROFILE");
  prof_.on = prof_env && std::strcmp(prof_env, "1") == 0;
  if (prof_.on) graphs_.enabled = false;
  timer_.on = prof_env && std::strcmp(prof_env, "2") == 0;

  if (cfg.head_dim != 16 && cfg.head_dim != 32 && cfg.head_dim != 64)
    throw std::runtime_error("cuda backend: head_dim must be 16, 32 or 64 (gpt-oss: 64)");
  const int group = cfg.num_kv_heads > 0 ? cfg.num_heads / cfg.num_kv_heads : 0;
  if (cfg.num_kv_heads <= 0 || cfg.num_heads % cfg.num_kv_heads || (group & (group - 1)) || group > 16)
    throw std::runtime_error("cuda backend: num_heads / num_kv_heads must be 1, 2, 4, 8 or 16");
  if (cfg.hidden % 32 || cfg.intermediate % 32)
    throw std::runtime_error("cuda backend: hidden and intermediate sizes must be multiples of 32");

  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_owner_.s, cudaStreamNonBlocking));
  stream_ = stream_owner_.s;
  load_gpu_weights(cfg, tensors, opt, mxfp4, progress, w_);

  // ---- activations workspace ----
  const int Tm = opt.max_batch_tokens, H = cfg.hidden, nqD = cfg.num_heads * cfg.head_dim;
  const int E = cfg.num_experts, K = cfg.experts_per_token;
  qkv_width_ = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim;
  const std::string what = "activations of " + std::to_string(Tm) + " tokens (maxBatchTokens)";
  // Decode-only steps are padded to their bucket when graphs are on, up to the bucket of maxSeqs (within Tm).
  plan_opt_.block_size = opt.block_size;
  plan_opt_.sliding_window = cfg.sliding_window;
  plan_opt_.batch_invariant = batch_invariant_;
  plan_opt_.pad = graphs_.enabled;
  plan_opt_.max_pad_tokens = std::min(Tm, decode_bucket(opt.max_seqs));
  kv_layout_ = kv_layout(cfg, opt.window_kv);
  plan_opt_.max_blocks_per_seq = step_limits(cfg, opt, kv_layout_, 0).max_blocks_per_seq;
  plan_opt_.prefill_tile = kPrefillTileTokens;
  const int max_rows_seqs = std::max(opt.max_seqs, plan_opt_.max_pad_tokens);  // sequences of a padded step
  logit_rows_ = std::clamp(plan_opt_.max_pad_tokens, kMinLogitRows, kMaxLogitRows);
  size_t before_free = 0, total = 0;
  cudaMemGetInfo(&before_free, &total);
  x_ = mem_.alloc<float>(size_t(Tm) * H, what);
  xn_ = mem_.alloc<uint16_t>(size_t(Tm) * H, what);
  xn_lo_ = mem_.alloc<uint16_t>(size_t(Tm) * H, what);
  qkv_ = mem_.alloc<float>(size_t(Tm) * qkv_width_, what);
  attn_ = mem_.alloc<uint16_t>(size_t(Tm) * nqD, what);
  router_logits_ = mem_.alloc<float>(size_t(Tm) * E, what);
  expert_ids_ = mem_.alloc<int32_t>(size_t(Tm) * K, what);
  expert_w_ = mem_.alloc<float>(size_t(Tm) * K, what);
  moe_ws_bytes_ = moe_workspace_bytes(Tm, H, cfg.intermediate, E, K);
  moe_ws_ = mem_.alloc<char>(moe_ws_bytes_, what);
  attn_ws_ = mem_.alloc<float>(kAttnWorkspaceFloats, what);
  attn_counters_ = mem_.alloc<uint32_t>(size_t(Tm) * cfg.num_kv_heads, what);
  CUDA_CHECK(cudaMemset(attn_counters_, 0, size_t(Tm) * cfg.num_kv_heads * 4));
  xf_ = mem_.alloc<uint16_t>(size_t(logit_rows_) * H, what);
  logits_ = mem_.alloc<float>(size_t(logit_rows_) * cfg.vocab, what);
  d_argmax_ = mem_.alloc<int32_t>(Tm, what);
  d_maxl_ = mem_.alloc<float>(Tm, what);
  d_lse_ = mem_.alloc<float>(Tm, what);
  d_top_ids_ = mem_.alloc<int32_t>(size_t(Tm) * kMaxTopK, what);
  d_top_logits_ = mem_.alloc<float>(size_t(Tm) * kMaxTopK, what);
  d_sample_rows_ = mem_.alloc<SampleRow>(max_rows_seqs, what);
  d_sample_entries_ = mem_.alloc<SampleEntry>(kMaxSampleEntries, what);
  d_sample_saved_ = mem_.alloc<float>(kMaxSampleEntries, what);
  d_sampled_ = mem_.alloc<int32_t>(Tm, what);
  d_sampled_logit_ = mem_.alloc<float>(Tm, what);
  // One scratch for the logits stage: the narrowing uses it, then the sampling after it on the same stream.
  sample_ws_bytes_ = std::max(sample_workspace_bytes(logit_rows_), narrow_workspace_bytes(logit_rows_, cfg.vocab));
  sample_ws_ = mem_.alloc<char>(sample_ws_bytes_, what);
  // tokens, positions, slots (two kinds), tok_seq, decode, out_rows, tiles; block tables of two kinds
  idx_cap_ = size_t(Tm) * 7 + 2 * size_t(max_rows_seqs) * plan_opt_.max_blocks_per_seq + 2 * size_t(Tm) + 64;
  d_idx_ = mem_.alloc<int32_t>(idx_cap_, what);
  inv_freq_ = mem_.alloc<float>(cfg.head_dim / 2, what);
  {
    std::vector<float> f(cfg.head_dim / 2);
    ref::rope_inv_freq(cfg.rope, cfg.head_dim, f.data(), &attn_factor_);
    CUDA_CHECK(cudaMemcpy(inv_freq_, f.data(), f.size() * 4, cudaMemcpyHostToDevice));
  }
  size_t after_free = 0;
  cudaMemGetInfo(&after_free, &total);
  ws_bytes_ = before_free > after_free ? before_free - after_free : 0;

  // ---- paged KV cache: every layer slot (kv_layout.h) holds [num_blocks * block_size, nkv, D] bf16 for K and V ----
  const uint64_t per_block =
      uint64_t(kv_layout_.slots) * 2 * opt.block_size * cfg.num_kv_heads * cfg.head_dim * sizeof(uint16_t);
  size_t free_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
  num_blocks_ = opt.num_blocks;
  if (num_blocks_ <= 0) {
    const uint64_t avail = free_b > kHeadroomBytes ? free_b - kHeadroomBytes : 0;
    num_blocks_ = int(std::min<uint64_t>(avail / per_block, 1u << 30));
    if (num_blocks_ < 1)
      throw std::runtime_error(oom_message(per_block + kHeadroomBytes, "one KV-cache block after the weights"));
  }
  kv_bytes_ = per_block * uint64_t(num_blocks_);
  kv_ = mem_.alloc<uint16_t>(kv_bytes_ / 2, "the KV cache (" + std::to_string(num_blocks_) + " blocks of " +
                                                std::to_string(opt.block_size) + " tokens)");
  kv_layer_elems_ = size_t(num_blocks_) * opt.block_size * cfg.num_kv_heads * cfg.head_dim;
  limits_ = step_limits(cfg, opt, kv_layout_, num_blocks_);
  CUDA_CHECK(cudaDeviceSynchronize());
}

BackendInfo CudaBackend::info() const {
  BackendInfo i;
  i.backend = "cuda";
  i.device_name = device_name_;
  i.expert_format = w_.mxfp4 ? "mxfp4" : "bf16";
  i.limits = limits_;
  i.weight_bytes = w_.bytes;
  i.kv_bytes = kv_bytes_;
  cudaSetDevice(device_);
  size_t f = 0, t = 0;
  cudaMemGetInfo(&f, &t);
  i.device_total_bytes = t;
  i.device_free_bytes = f;
  return i;
}

// ---- params builders: what every launch of a kind shares; each call site adds only what is its own ----
DenseParams CudaBackend::dense_params(const uint16_t* x, int ldx, const uint16_t* W, const uint16_t* b, float* y,
                                      int ldy, int T, int N, int K) const {
  DenseParams d;
  d.x = x;
  d.ldx = ldx;
  d.W = W;
  d.b = b;
  d.y = y;
  d.ldy = ldy;
  d.T = T;
  d.N = N;
  d.K = K;
  d.pdl = pdl_for("dense");
  d.gemm = dense_gemm_;
  if (batch_invariant_) {
    d.force_path = 2;  // the tensor-core GEMM at every T: a row's bits never depend on T
    d.split_k = 1;     // nor on the split of K a step's tile count would pick
  }
  // K is split (dense_wgmma_splits) in decode-only steps alone, so a prompt's rows get the same bits however it was
  // chunked or how much of it a prefix-cache hit skipped: a hit's short remainder would split the o projection and
  // the router where the cold prefill does not (H200, window_kv.test.ts: the first token's logits 1.69e-1 apart on
  // the dummy 20b; bit-identical with this rule, session 16).
  if (plan_.n_tiles > 0) d.split_k = 1;
  return d;
}

RmsNormParams CudaBackend::rmsnorm_params(const uint16_t* w, int T) const {
  RmsNormParams n;
  n.x = x_;
  n.w = w;
  n.T = T;
  n.H = cfg_.hidden;
  n.eps = cfg_.rms_eps;
  n.pdl = pdl_for("norm");
  return n;
}

AttentionCommon CudaBackend::attention_params(const LayerWeights& L, uint16_t* kc, uint16_t* vc,
                                              const int32_t* tables, int window) const {
  AttentionCommon ac;
  ac.q = qkv_;
  ac.ldq = qkv_width_;
  ac.k_cache = kc;
  ac.v_cache = vc;
  ac.block_tables = tables;
  ac.max_blocks_per_seq = plan_.max_bps;
  ac.block_size = opt_.block_size;
  ac.tok_seq = d_tok_seq_;
  ac.pos = d_pos_;
  ac.sinks = L.sinks;
  ac.out = attn_;
  ac.nq = cfg_.num_heads;
  ac.nkv = cfg_.num_kv_heads;
  ac.D = cfg_.head_dim;
  ac.window = window;
  ac.scale = 1.0f / std::sqrt(float(cfg_.head_dim));
  ac.pdl = pdl_for("attn");
  return ac;
}

MoeParams CudaBackend::moe_params(int T) const {
  MoeParams mp;
  mp.n = T;
  mp.H = cfg_.hidden;
  mp.I = cfg_.intermediate;
  mp.E = cfg_.num_experts;
  mp.k = cfg_.experts_per_token;
  mp.swiglu_limit = cfg_.swiglu_limit;
  mp.x = xn_;
  mp.ldx = cfg_.hidden;
  // The experts route from the router logits themselves (top-k + softmax inside the decode kernels: one launch
  // less per layer; the prefill path runs router_topk_softmax first); expert_ids_/expert_w_ receive the routing.
  mp.logits = router_logits_;
  mp.ld_logits = cfg_.num_experts;
  mp.ids_out = expert_ids_;
  mp.weights_out = expert_w_;
  mp.y = x_;
  mp.ldy = cfg_.hidden;
  mp.accumulate = true;
  mp.workspace = moe_ws_;
  mp.workspace_bytes = moe_ws_bytes_;
  mp.pdl = pdl_for("moe");
  if (batch_invariant_) mp.path = MoePath::kPrefill;
  else if (T <= kMoeDecodeMaxTokens) mp.path = moe_decode_path_;
  else mp.path = moe_prefill_path_;
  mp.wgmma = moe_wgmma_;
  mp.wgmma_tile = moe_wgmma_tile_;
  return mp;
}

void CudaBackend::forward_layers(int T) {
  const ModelConfig& c = cfg_;
  const int H = c.hidden, nqD = c.num_heads * c.head_dim;
  {
    EmbeddingParams p;
    p.table = w_.embed;
    p.ids = d_tokens_;
    p.x = x_;
    p.T = T;
    p.H = H;
    p.V = c.vocab;
    p.pdl = pdl_for("embed");
    embedding(p, stream_);
    prof_.mark(StepProfiler::kEmbed);
  }
  // Decode-sized batches fuse each RMSNorm into the projection after it (fp32 normed input, one launch less).
  const bool fuse_norm = T <= kDenseGemvMaxTokens && !batch_invariant_;
  // A step of decode tokens only (each the one new token of its sequence) rotates q/k and writes the KV cache
  // inside the attention kernel: one launch less per layer.
  const bool fuse_rope = fused_rope_ && plan_.n_tiles == 0 && plan_.n_decode == T;
  for (int l = 0; l < c.num_layers; l++) {
    const LayerWeights& L = w_.layers[l];
    uint16_t* kc = kv_ + size_t(kv_layout_.slot_of_layer[l]) * 2 * kv_layer_elems_;
    uint16_t* vc = kc + kv_layer_elems_;
    const int window = c.layer_sliding[l] ? c.sliding_window : 0;
    // A sliding layer's KV lives in the blocks of the window tables when the layout keeps the kinds apart.
    const bool own_tables = window > 0 && kv_layout_.window > 0;
    const int32_t* tables = own_tables ? d_bt_window_ : d_bt_;
    const int32_t* slots = own_tables ? d_slot_window_ : d_slot_;

    RmsNormParams n1 = rmsnorm_params(L.input_norm, T);
    n1.out = xn_;
    n1.out_lo = xn_lo_;
    if (!fuse_norm) {
      rmsnorm(n1, stream_);
      prof_.mark(StepProfiler::kNorm);
    }

    DenseParams qkv = dense_params(xn_, H, L.qkv_w, L.qkv_b, qkv_, qkv_width_, T, qkv_width_, H);
    qkv.x_lo = xn_lo_;  // fp32-grade input: see the router below
    if (fuse_norm) {
      qkv.norm_x = x_;
      qkv.norm_w = L.input_norm;
      qkv.norm_eps = c.rms_eps;
    }
    dense(qkv, stream_);
    prof_.mark(StepProfiler::kQkv);

    if (!fuse_rope) {
      RopeKvParams r;
      r.qkv = qkv_;
      r.pos = d_pos_;
      r.slot = slots;
      r.inv_freq = inv_freq_;
      r.attn_factor = attn_factor_;
      r.k_cache = kc;
      r.v_cache = vc;
      r.T = T;
      r.nq = c.num_heads;
      r.nkv = c.num_kv_heads;
      r.D = c.head_dim;
      r.pdl = pdl_for("rope");
      rope_kv_write(r, stream_);
      prof_.mark(StepProfiler::kRope);
    }

    const AttentionCommon ac = attention_params(L, kc, vc, tables, window);
    if (plan_.n_tiles > 0) {
      AttentionPrefillParams ap;
      ap.c = ac;
      ap.tiles = d_tiles_;
      ap.num_tiles = plan_.n_tiles;
      ap.variant = attention_prefill_env_variant();  // HARMONIUM_ATTN_PREFILL=tile: the fp32 kernel, to compare
      attention_prefill(ap, stream_);
      prof_.mark(StepProfiler::kAttn);
    }
    if (plan_.n_decode > 0) {
      AttentionDecodeParams ad;
      ad.c = ac;
      ad.tokens = d_decode_;
      ad.num_tokens = plan_.n_decode;
      ad.keys_per_split = dec_kps_[window ? 1 : 0];
      ad.max_splits = dec_splits_[window ? 1 : 0];
      ad.variant = dec_variant_[window ? 1 : 0];
      ad.head_slices = dec_slices_;
      ad.workspace = attn_ws_;
      ad.counters = attn_counters_;
      if (fuse_rope) {
        ad.inv_freq = inv_freq_;
        ad.attn_factor = attn_factor_;
        ad.slot = slots;
      }
      attention_decode(ad, stream_);
      prof_.mark(StepProfiler::kAttn);
    }

    DenseParams o = dense_params(attn_, nqD, L.o_w, L.o_b, x_, H, T, H, nqD);
    o.accumulate = true;
    dense(o, stream_);
    prof_.mark(StepProfiler::kOProj);

    RmsNormParams n2 = n1;
    n2.w = L.post_norm;
    if (!fuse_norm) {
      rmsnorm(n2, stream_);
      prof_.mark(StepProfiler::kNorm);
    }

    // Router logits from the fp32-grade input (xn + xn_lo): a bf16-rounded input flips experts at routing near-ties
    // against the fp32 oracle (seen on the window16 fixture: a 0.005 gap between the 2nd and 3rd logit).
    DenseParams rd = dense_params(xn_, H, L.router_w, L.router_b, router_logits_, c.num_experts, T, c.num_experts, H);
    rd.x_lo = xn_lo_;
    if (fuse_norm) {  // also writes xn (bf16) for the experts
      rd.norm_x = x_;
      rd.norm_w = L.post_norm;
      rd.norm_eps = c.rms_eps;
      rd.norm_out = xn_;
    }
    dense(rd, stream_);
    prof_.mark(StepProfiler::kRouter);

    const MoeParams mp = moe_params(T);
    if (w_.mxfp4)
      moe_mxfp4_forward(mp, L.mxfp4, stream_);
    else
      moe_bf16_forward(mp, L.bf16, stream_);
    prof_.mark(StepProfiler::kExperts);
  }
}

// Final norm, lm_head, narrowing and sampling for output rows [first_row, first_row + rows)
// (rows <= logit_rows_).
void CudaBackend::logits_rows(int first_row, int rows, int top_k, int sample_stages) {
  RmsNormParams n = rmsnorm_params(w_.final_norm, rows);
  n.rows = d_out_rows_ + first_row;
  n.out = xf_;
  rmsnorm(n, stream_);
  dense(dense_params(xf_, cfg_.hidden, w_.lm_head, nullptr, logits_, cfg_.vocab, rows, cfg_.vocab, cfg_.hidden),
        stream_);
  NarrowLogitsParams nl;
  nl.logits = logits_;
  nl.rows = rows;
  nl.vocab = cfg_.vocab;
  nl.ld = cfg_.vocab;
  nl.top_k = top_k;
  nl.argmax = d_argmax_ + first_row;
  nl.max_logit = d_maxl_ + first_row;
  nl.logsumexp = d_lse_ + first_row;
  nl.top_ids = d_top_ids_ + size_t(first_row) * top_k;
  nl.top_logits = d_top_logits_ + size_t(first_row) * top_k;
  nl.workspace = sample_ws_;
  nl.workspace_bytes = sample_ws_bytes_;
  nl.pdl = pdl_for("narrow");
  narrow_logits(nl, stream_);
  if (sample_stages) {  // after the raw narrowing: it adjusts the sampled rows in place (output row r = sequence r)
    SampleRowsParams sp;
    sp.logits = logits_;
    sp.rows = rows;
    sp.vocab = sp.ld = cfg_.vocab;
    sp.params = d_sample_rows_ + first_row;
    sp.entries = d_sample_entries_;
    sp.saved = d_sample_saved_;
    sp.token = d_sampled_ + first_row;
    sp.raw_logit = d_sampled_logit_ + first_row;
    sp.workspace = sample_ws_;
    sp.workspace_bytes = sample_ws_bytes_;
    sp.stages = sample_stages;
    sp.argmax = d_argmax_ + first_row;  // the raw logits' argmax, just narrowed
    sp.pdl = pdl_for("sample");
    sample_rows(sp, stream_);
  }
  prof_.mark(StepProfiler::kLogits);
}

// The device work of one step up to the narrowed and sampled logits of every output row (a fixed launch sequence
// for a given batch shape and sample_stages, so it can be captured in a CUDA graph; the sampling values live in
// device buffers that upload() refills each step). Chunks after the first reuse the logits buffer: only a step
// without full-logits rows, or with one chunk, may run them here (launch()).
void CudaBackend::run_forward(int T, int rows, int top_k, int sample_stages) {
  forward_layers(T);
  for (int r0 = 0; r0 < rows; r0 += logit_rows_) logits_rows(r0, std::min(logit_rows_, rows - r0), top_k, sample_stages);
}

// A step: validated by the addon (validate_step) before it gets here.
void CudaBackend::step(const StepBatch& b, StepOutput& out) {
  CUDA_CHECK(cudaSetDevice(device_));
  timer_.begin(stream_);
  plan_step(b);
  upload(b);
  launch();
  timer_.launched(stream_);
  readback(out);
  timer_.end();
}

// Host planning (native/step_plan.h: index arrays, tiles, output rows, padding), then what the launches add: the
// split-K shape of decode attention and which sampling kernels run.
void CudaBackend::plan_step(const StepBatch& b) {
  const ModelConfig& c = cfg_;
  hm::plan_step(b, plan_opt_, plan_);
  const StepPlan& p = plan_;
  if (p.n_decode > 0) {
    const size_t per_split = attention_decode_workspace_floats(p.n_decode, c.num_heads, c.head_dim, 1);
    const int cap = int(std::min<size_t>(1024, std::max<size_t>(1, kAttnWorkspaceFloats / per_split)));
    for (int kind = 0; kind < 2; kind++) {
      const AttentionDecodePlan d =
          attention_decode_plan(p.max_keys[kind], p.n_decode, c.num_heads, c.num_kv_heads, c.head_dim, num_sms_, cap,
                                clusters_);
      dec_kps_[kind] = d.keys_per_split;
      dec_splits_[kind] = d.splits;
      dec_variant_[kind] = d.variant;
      dec_slices_ = d.head_slices;
    }
  }
  sampled_ = b.sample_rows != nullptr;
  sample_stages_ = sampled_ ? cuda::sample_stages(b.sample_rows, b.num_seqs) : 0;
}

// One host-to-device copy of every index array, through pinned memory; points the d_* views into it (their offsets
// are a function of the padded shape, so a graph's baked-in pointers stay right). Then the sampling rows (pad rows
// not sampled) and their entries, when some row is sampled (into fixed buffers: a graph reads them, never bakes
// them in).
void CudaBackend::upload(const StepBatch& b) {
  const StepPlan& p = plan_;
  const size_t total = 4 * size_t(p.T) + p.slot_window.size() + p.block_tables.size() + p.window_tables.size() +
                       p.decode.size() + p.tiles.size() + p.out_rows.size();
  if (total > idx_cap_) throw std::runtime_error("step: batch index arrays exceed the workspace");
  h_idx_.reserve(total * 4);
  int32_t* h = static_cast<int32_t*>(h_idx_.p);
  size_t at = 0;
  auto put = [&](const std::vector<int32_t>& src, int32_t** dev) {
    if (!src.empty()) std::memcpy(h + at, src.data(), src.size() * 4);
    *dev = d_idx_ + at;
    at += src.size();
  };
  put(p.tokens, &d_tokens_);
  put(p.positions, &d_pos_);
  put(p.slot, &d_slot_);
  put(p.tok_seq, &d_tok_seq_);
  put(p.block_tables, &d_bt_);
  put(p.slot_window, &d_slot_window_);
  put(p.window_tables, &d_bt_window_);
  put(p.decode, &d_decode_);
  put(p.tiles, &d_tiles_);
  put(p.out_rows, &d_out_rows_);
  CUDA_CHECK(cudaMemcpyAsync(d_idx_, h, at * 4, cudaMemcpyHostToDevice, stream_));
  if (sample_stages_) {
    const size_t row_bytes = size_t(p.S) * sizeof(SampleRow), entry_bytes = size_t(b.num_sample_entries) * sizeof(SampleEntry);
    h_sample_.reserve(row_bytes + entry_bytes);
    char* hs = static_cast<char*>(h_sample_.p);
    std::memcpy(hs, b.sample_rows, size_t(p.real_S) * sizeof(SampleRow));
    SampleRow* pad_rows = reinterpret_cast<SampleRow*>(hs) + p.real_S;
    std::fill(pad_rows, pad_rows + (p.S - p.real_S), SampleRow{});  // mode none: not sampled, no entries
    if (entry_bytes) std::memcpy(hs + row_bytes, b.sample_entries, entry_bytes);
    CUDA_CHECK(cudaMemcpyAsync(d_sample_rows_, hs, row_bytes, cudaMemcpyHostToDevice, stream_));
    if (entry_bytes)
      CUDA_CHECK(cudaMemcpyAsync(d_sample_entries_, hs + row_bytes, entry_bytes, cudaMemcpyHostToDevice, stream_));
  }
}

template <typename F>
bool CudaBackend::GraphCache::run(const GraphKey& key, cudaStream_t stream, StepTimer& timer, F&& record) {
  if (!enabled) return false;
  clock_++;
  for (Entry& e : entries_)
    if (e.key == key) {
      e.used = clock_;
      CUDA_CHECK(cudaGraphLaunch(e.exec, stream));
      return true;
    }
  const auto t0 = std::chrono::steady_clock::now();
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  std::string why;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    record();
  } catch (const std::exception& e) {
    // A launch that cannot be captured; errors that are not about capturing show up again in the eager run
    // and are thrown there.
    why = e.what();
  }
  const cudaError_t ee = cudaStreamEndCapture(stream, &g);
  if (why.empty() && ee != cudaSuccess) why = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(ee);
  if (why.empty() && g) {
    const cudaError_t ie = cudaGraphInstantiate(&exec, g, 0);
    if (ie != cudaSuccess) {
      exec = nullptr;
      why = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(ie);
    }
  }
  if (g) cudaGraphDestroy(g);
  if (!exec) {
    if (why.empty()) why = "the capture produced no graph";
    enabled = false;
    cudaGetLastError();
    std::fprintf(stderr, "harmonium: CUDA graph capture failed (%s); this model runs its steps without graphs\n",
                 why.c_str());
    return false;
  }
  if (int(entries_.size()) == kMaxGraphs) {
    auto lru = std::min_element(entries_.begin(), entries_.end(),
                                [](const Entry& a, const Entry& b) { return a.used < b.used; });
    cudaGraphExecDestroy(lru->exec);
    entries_.erase(lru);
  }
  entries_.push_back({key, exec, clock_});
  if (timer.on) {
    timer.captures++;
    timer.capture_ms += StepTimer::since(t0);
  }
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
  return true;
}

// The device work: the forward pass (replayed from a graph for decode-only shapes), the logits of every output row,
// and the copies of the results to pinned host memory. Nothing here synchronises.
void CudaBackend::launch() {
  const StepPlan& p = plan_;
  const ModelConfig& c = cfg_;
  prof_.begin(stream_);
  h_logits_.reserve(std::max<size_t>(1, p.full_rows.size()) * size_t(c.vocab) * 4);
  // A graph holds every logits chunk, so its full-logits copies (which must run between chunks) need one chunk.
  const bool one_chunk = p.rows <= logit_rows_;
  const bool graphable = p.decode_only && (one_chunk || p.full_rows.empty());
  const GraphKey key{p.T, p.S, p.max_bps, p.rows, p.top_k, dec_kps_[0], dec_splits_[0], dec_kps_[1],
                     dec_splits_[1], sample_stages_};
  const bool graphed =
      graphable && graphs_.run(key, stream_, timer_, [&] { run_forward(p.T, p.rows, p.top_k, sample_stages_); });
  if (!graphs_.enabled) plan_opt_.pad = false;  // a capture failed: no more padding for graphs that never come
  if (!graphed && one_chunk) run_forward(p.T, p.rows, p.top_k, sample_stages_);
  if (!graphed && !one_chunk) forward_layers(p.T);
  size_t fi = 0;
  for (int r0 = 0; r0 < p.real_rows; r0 += logit_rows_) {
    const int n = std::min(logit_rows_, p.rows - r0);
    if (!graphed && !one_chunk) logits_rows(r0, n, p.top_k, sample_stages_);
    for (; fi < p.full_rows.size() && p.full_rows[fi] < r0 + n; fi++)
      CUDA_CHECK(cudaMemcpyAsync(static_cast<float*>(h_logits_.p) + fi * size_t(c.vocab),
                                 logits_ + size_t(p.full_rows[fi] - r0) * c.vocab, size_t(c.vocab) * 4,
                                 cudaMemcpyDeviceToHost, stream_));
  }
  // narrowed results of the real rows: argmax, max, lse, top ids, top logits; then the sampled tokens and their
  // raw logits
  const int rows = p.real_rows, k = p.top_k;
  const size_t narrowed_bytes = size_t(rows) * (12 + 8 * size_t(k));
  h_out_.reserve(narrowed_bytes + size_t(rows) * 8);
  char* ho = static_cast<char*>(h_out_.p);
  CUDA_CHECK(cudaMemcpyAsync(ho, d_argmax_, rows * 4, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaMemcpyAsync(ho + rows * 4, d_maxl_, rows * 4, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaMemcpyAsync(ho + rows * 8, d_lse_, rows * 4, cudaMemcpyDeviceToHost, stream_));
  if (k > 0) {  // [rows, k] contiguous: the pad rows' candidates come after the real rows'
    CUDA_CHECK(cudaMemcpyAsync(ho + rows * 12, d_top_ids_, size_t(rows) * k * 4, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaMemcpyAsync(ho + rows * 12 + size_t(rows) * k * 4, d_top_logits_, size_t(rows) * k * 4,
                               cudaMemcpyDeviceToHost, stream_));
  }
  if (sample_stages_) {
    CUDA_CHECK(cudaMemcpyAsync(ho + narrowed_bytes, d_sampled_, rows * 4, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaMemcpyAsync(ho + narrowed_bytes + rows * 4, d_sampled_logit_, rows * 4, cudaMemcpyDeviceToHost, stream_));
  }
}

// The step's one synchronisation, then the pinned results into the output.
void CudaBackend::readback(StepOutput& out) {
  const StepPlan& p = plan_;
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  timer_.synced();
  CUDA_CHECK(cudaGetLastError());
  prof_.end(p.n_tiles == 0);
  const int rows = p.real_rows, k = p.top_k;
  const char* ho = static_cast<const char*>(h_out_.p);
  out.num_rows = rows;
  out.vocab = cfg_.vocab;
  out.top_k = k;
  auto i32 = [&](size_t off, size_t n) {
    const int32_t* q = reinterpret_cast<const int32_t*>(ho + off);
    return std::vector<int32_t>(q, q + n);
  };
  auto f32 = [&](size_t off, size_t n) {
    const float* q = reinterpret_cast<const float*>(ho + off);
    return std::vector<float>(q, q + n);
  };
  out.argmax = i32(0, rows);
  out.max_logit = f32(rows * 4, rows);
  out.logsumexp = f32(rows * 8, rows);
  out.top_ids = k ? i32(rows * 12, size_t(rows) * k) : std::vector<int32_t>{};
  out.top_logits = k ? f32(rows * 12 + size_t(rows) * k * 4, size_t(rows) * k) : std::vector<float>{};
  out.logits_rows = p.full_rows;
  const float* hl = static_cast<const float*>(h_logits_.p);
  out.logits.assign(hl, hl + p.full_rows.size() * size_t(cfg_.vocab));
  const size_t narrowed_bytes = size_t(rows) * (12 + 8 * size_t(k));
  out.sampled.clear();
  out.sampled_logit.clear();
  if (sample_stages_) {
    out.sampled = i32(narrowed_bytes, rows);
    out.sampled_logit = f32(narrowed_bytes + rows * 4, rows);
  } else if (sampled_) {  // sample rows, none of them sampled on the device
    out.sampled.assign(rows, -1);
    out.sampled_logit.assign(rows, NAN);
  }
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& cfg, const TensorMap& tensors, const LoadOptions& opt,
                                           const ProgressFn& progress) {
  return std::make_unique<CudaBackend>(cfg, tensors, opt, progress);
}

}  // namespace hm
