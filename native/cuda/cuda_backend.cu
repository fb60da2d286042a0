// The CUDA backend: hm::Backend on one GPU. Owns the weights (weights.cu), the paged bf16 KV cache and an
// activation workspace sized once at load; a step uploads the batch's small index arrays in one copy, runs the
// forward pass as a fixed sequence of kernel launches on one stream (PDL-chained on sm_90+; a decode-only step is
// captured once per batch shape as a CUDA graph and replayed), narrows the logits on the GPU and synchronises once
// to copy the narrowed results back. HARMONIUM_PDL=0 / HARMONIUM_CUDA_GRAPHS=0 turn either off.
//
// Per layer: rmsnorm -> fused qkv projection (the norm fused in for decode) -> rope + KV write (inside the decode
// attention kernel on decode-only steps) -> attention (prefill tiles and/or split-K
// decode) -> o_proj (+ residual) -> rmsnorm -> router logits (norm fused for decode) + top-k -> experts (+ residual).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "../backend.h"
#include "../cpu/ref_ops.h"
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

constexpr int kLogitRowsPerChunk = 64;  // lm_head rows per pass: 64 x 201088 fp32 = 51 MB of logits
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
// Printed to stderr when the backend is freed, per kind of step (decode-only or with prefill).
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
    for (size_t i = 1; i < used; i++) {
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, events[i - 1], events[i]));
      ms[decode ? 0 : 1][ops[i]] += t;
    }
    steps[decode ? 0 : 1]++;
  }
  ~StepProfiler() {
    if (!on) return;
    for (int k = 0; k < 2; k++) {
      if (!steps[k]) continue;
      double total = 0;
      for (double v : ms[k]) total += v;
      std::fprintf(stderr, "[harmonium profile] %s steps: %d, %.3f ms per step\n", k ? "prefill" : "decode", steps[k],
                   total / steps[k]);
      for (int o = 0; o < kNumOps; o++)
        std::fprintf(stderr, "  %-16s %9.3f ms/step %5.1f%%\n", kNames[o], ms[k][o] / steps[k], 100 * ms[k][o] / total);
    }
    for (cudaEvent_t e : events) cudaEventDestroy(e);
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
  ~CudaBackend() override {
    cudaSetDevice(device_);
    drop_graph();
  }
  void step(const StepBatch& batch, StepOutput& out) override;
  BackendInfo info() const override;

 private:
  void forward_layers(int T);
  void logits_rows(int first_row, int rows, int top_k);

  ModelConfig cfg_;
  LoadOptions opt_;
  int device_ = 0;
  std::string device_name_;
  bool pdl_ = false;
  StreamOwner stream_owner_;
  cudaStream_t stream_ = nullptr;
  GpuWeights w_;
  DeviceAllocs mem_;
  uint64_t kv_bytes_ = 0, ws_bytes_ = 0;
  int num_blocks_ = 0, max_blocks_per_seq_cap_ = 0;
  uint16_t* kv_ = nullptr;
  size_t kv_layer_elems_ = 0;  // elements of K (or V) of one layer
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
  uint16_t* xf_ = nullptr;     // bf16 [kLogitRowsPerChunk, H] final-normed rows
  float* logits_ = nullptr;    // fp32 [kLogitRowsPerChunk, V]
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
  int sample_stages_ = 0;                     // this step's SampleStage mask (0 = nothing sampled)
  PinnedBuf h_sample_;
  // the step's index arrays, uploaded in one copy
  int32_t* d_idx_ = nullptr;
  size_t idx_cap_ = 0;
  PinnedBuf h_idx_, h_out_, h_logits_;
  // per-step views into d_idx_
  int32_t *d_tokens_ = nullptr, *d_pos_ = nullptr, *d_slot_ = nullptr, *d_tok_seq_ = nullptr, *d_bt_ = nullptr,
          *d_decode_ = nullptr, *d_tiles_ = nullptr, *d_out_rows_ = nullptr;
  int n_decode_ = 0, n_tiles_ = 0, max_bps_ = 0;
  int decode_max_keys_full_ = 0, decode_max_keys_sliding_ = 0;
  // split-K decode attention shape per layer kind (index 0: full layers, 1: sliding layers)
  int dec_kps_[2] = {0, 0}, dec_splits_[2] = {0, 0};

  // CUDA graph of the last decode-only step shape, replayed while the shape holds (one host launch per step).
  struct GraphKey {
    int T, S, mbps, rows, top_k, kps0, splits0, kps1, splits1, sample_stages;
    bool operator==(const GraphKey& o) const { return std::memcmp(this, &o, sizeof o) == 0; }
  };
  bool graphs_ = true;
  bool fused_rope_ = true;  // decode-only steps rotate and write the KV cache inside attention (HARMONIUM_FUSED_ROPE=0: off)
  bool have_graph_ = false;
  GraphKey graph_key_{};
  cudaGraphExec_t graph_exec_ = nullptr;
  void drop_graph() {
    if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
    graph_exec_ = nullptr;
    have_graph_ = false;
  }
  void run_forward(int T, int rows, int top_k);
  StepProfiler prof_;
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
  const int cc = prop.major * 10 + prop.minor;
  if (cc < 80)
    throw std::runtime_error("cuda backend: " + device_name_ + " (sm_" + std::to_string(cc) +
                             ") is not supported: bf16 kernels need compute capability 8.0 or newer");
  const bool mxfp4 = opt.expert_format == "mxfp4";
  if (!mxfp4 && opt.expert_format != "bf16")
    throw std::runtime_error("cuda backend: unknown expertFormat '" + opt.expert_format + "' (mxfp4 or bf16)");
  if (mxfp4 && cc < 90)
    throw std::runtime_error("cuda backend: the MXFP4 expert kernels need sm_90 or newer; " + device_name_ +
                             " is sm_" + std::to_string(cc) + ": load with expertFormat 'bf16'");
  const char* pdl_env = std::getenv("HARMONIUM_PDL");
  pdl_ = cc >= 90 && !(pdl_env && std::strcmp(pdl_env, "0") == 0);
  const char* graph_env = std::getenv("HARMONIUM_CUDA_GRAPHS");
  graphs_ = !(graph_env && std::strcmp(graph_env, "0") == 0);
  const char* rope_env = std::getenv("HARMONIUM_FUSED_ROPE");
  fused_rope_ = !(rope_env && std::strcmp(rope_env, "0") == 0);
  const char* prof_env = std::getenv("HARMONIUM_PROFILE");
  prof_.on = prof_env && std::strcmp(prof_env, "1") == 0;
  if (prof_.on) graphs_ = false;

  if (cfg.head_dim != 16 && cfg.head_dim != 32 && cfg.head_dim != 64)
    throw std::runtime_error("cuda backend: head_dim must be 16, 32 or 64 (gpt-oss: 64)");
  const int group = cfg.num_kv_heads > 0 ? cfg.num_heads / cfg.num_kv_heads : 0;
  if (cfg.num_kv_heads <= 0 || cfg.num_heads % cfg.num_kv_heads || (group & (group - 1)) || group > 16)
    throw std::runtime_error("cuda backend: num_heads / num_kv_heads must be 1, 2, 4, 8 or 16");
  if (cfg.hidden % 32 || cfg.intermediate % 32)
    throw std::runtime_error("cuda backend: hidden and intermediate sizes must be multiples of 32");
  if (opt.block_size <= 0 || opt.max_batch_tokens <= 0 || opt.max_seqs <= 0)
    throw std::runtime_error("cuda backend: blockSize, maxBatchTokens and maxSeqs must be positive");

  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_owner_.s, cudaStreamNonBlocking));
  stream_ = stream_owner_.s;
  load_gpu_weights(cfg, tensors, opt, mxfp4, progress, w_);

  // ---- activations workspace ----
  const int Tm = opt.max_batch_tokens, H = cfg.hidden, nqD = cfg.num_heads * cfg.head_dim;
  const int E = cfg.num_experts, K = cfg.experts_per_token;
  qkv_width_ = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim;
  const std::string what = "activations of " + std::to_string(Tm) + " tokens (maxBatchTokens)";
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
  xf_ = mem_.alloc<uint16_t>(size_t(kLogitRowsPerChunk) * H, what);
  logits_ = mem_.alloc<float>(size_t(kLogitRowsPerChunk) * cfg.vocab, what);
  d_argmax_ = mem_.alloc<int32_t>(Tm, what);
  d_maxl_ = mem_.alloc<float>(Tm, what);
  d_lse_ = mem_.alloc<float>(Tm, what);
  d_top_ids_ = mem_.alloc<int32_t>(size_t(Tm) * kMaxTopK, what);
  d_top_logits_ = mem_.alloc<float>(size_t(Tm) * kMaxTopK, what);
  d_sample_rows_ = mem_.alloc<SampleRow>(opt.max_seqs, what);
  d_sample_entries_ = mem_.alloc<SampleEntry>(kMaxSampleEntries, what);
  d_sample_saved_ = mem_.alloc<float>(kMaxSampleEntries, what);
  d_sampled_ = mem_.alloc<int32_t>(Tm, what);
  d_sampled_logit_ = mem_.alloc<float>(Tm, what);
  sample_ws_bytes_ = sample_workspace_bytes(kLogitRowsPerChunk);
  sample_ws_ = mem_.alloc<char>(sample_ws_bytes_, what);
  max_blocks_per_seq_cap_ = (cfg.max_positions + opt.block_size - 1) / opt.block_size;
  idx_cap_ = size_t(Tm) * 6 + size_t(opt.max_seqs) * max_blocks_per_seq_cap_ + 2 * size_t(Tm) + 64;
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

  // ---- paged KV cache: every layer holds [num_blocks * block_size, nkv, D] bf16 for K and for V ----
  const uint64_t per_block =
      uint64_t(cfg.num_layers) * 2 * opt.block_size * cfg.num_kv_heads * cfg.head_dim * sizeof(uint16_t);
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
  CUDA_CHECK(cudaDeviceSynchronize());
}

BackendInfo CudaBackend::info() const {
  BackendInfo i;
  i.backend = "cuda";
  i.device_name = device_name_;
  i.expert_format = w_.mxfp4 ? "mxfp4" : "bf16";
  i.num_blocks = num_blocks_;
  i.block_size = opt_.block_size;
  i.weight_bytes = w_.bytes;
  i.kv_bytes = kv_bytes_;
  cudaSetDevice(device_);
  size_t f = 0, t = 0;
  cudaMemGetInfo(&f, &t);
  i.device_total_bytes = t;
  i.device_free_bytes = f;
  return i;
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
    p.pdl = pdl_;
    embedding(p, stream_);
    prof_.mark(StepProfiler::kEmbed);
  }
  for (int l = 0; l < c.num_layers; l++) {
    const LayerWeights& L = w_.layers[l];
    uint16_t* kc = kv_ + size_t(l) * 2 * kv_layer_elems_;
    uint16_t* vc = kc + kv_layer_elems_;
    const int window = c.layer_sliding[l] ? c.sliding_window : 0;

    RmsNormParams n1;
    n1.x = x_;
    n1.w = L.input_norm;
    n1.out = xn_;
    n1.out_lo = xn_lo_;
    n1.T = T;
    n1.H = H;
    n1.eps = c.rms_eps;
    n1.pdl = pdl_;
    // Decode-sized batches fuse each RMSNorm into the projection after it (fp32 normed input, one launch less).
    const bool fuse_norm = T <= kDenseGemvMaxTokens;
    if (!fuse_norm) {
      rmsnorm(n1, stream_);
      prof_.mark(StepProfiler::kNorm);
    }

    DenseParams qkv;
    qkv.x = xn_;
    qkv.x_lo = xn_lo_;  // fp32-grade input: see the router below
    qkv.ldx = H;
    if (fuse_norm) {
      qkv.norm_x = x_;
      qkv.norm_w = L.input_norm;
      qkv.norm_eps = c.rms_eps;
    }
    qkv.W = L.qkv_w;
    qkv.b = L.qkv_b;
    qkv.y = qkv_;
    qkv.ldy = qkv_width_;
    qkv.T = T;
    qkv.N = qkv_width_;
    qkv.K = H;
    qkv.pdl = pdl_;
    dense(qkv, stream_);
    prof_.mark(StepProfiler::kQkv);

    RopeKvParams r;
    r.qkv = qkv_;
    r.pos = d_pos_;
    r.slot = d_slot_;
    r.inv_freq = inv_freq_;
    r.attn_factor = attn_factor_;
    r.k_cache = kc;
    r.v_cache = vc;
    r.T = T;
    r.nq = c.num_heads;
    r.nkv = c.num_kv_heads;
    r.D = c.head_dim;
    r.pdl = pdl_;
    // A step of decode tokens only (each the one new token of its sequence) rotates q/k and writes the KV cache
    // inside the attention kernel: one launch less per layer.
    const bool fuse_rope = fused_rope_ && n_tiles_ == 0 && n_decode_ == T;
    if (!fuse_rope) {
      rope_kv_write(r, stream_);
      prof_.mark(StepProfiler::kRope);
    }

    AttentionCommon ac;
    ac.q = qkv_;
    ac.ldq = qkv_width_;
    ac.k_cache = kc;
    ac.v_cache = vc;
    ac.block_tables = d_bt_;
    ac.max_blocks_per_seq = max_bps_;
    ac.block_size = opt_.block_size;
    ac.tok_seq = d_tok_seq_;
    ac.pos = d_pos_;
    ac.sinks = L.sinks;
    ac.out = attn_;
    ac.nq = c.num_heads;
    ac.nkv = c.num_kv_heads;
    ac.D = c.head_dim;
    ac.window = window;
    ac.scale = 1.0f / std::sqrt(float(c.head_dim));
    ac.pdl = pdl_;
    if (n_tiles_ > 0) {
      AttentionPrefillParams ap;
      ap.c = ac;
      ap.tiles = d_tiles_;
      ap.num_tiles = n_tiles_;
      attention_prefill(ap, stream_);
      prof_.mark(StepProfiler::kAttn);
    }
    if (n_decode_ > 0) {
      AttentionDecodeParams ad;
      ad.c = ac;
      ad.tokens = d_decode_;
      ad.num_tokens = n_decode_;
      ad.keys_per_split = dec_kps_[window ? 1 : 0];
      ad.max_splits = dec_splits_[window ? 1 : 0];
      ad.workspace = attn_ws_;
      if (fuse_rope) {
        ad.inv_freq = inv_freq_;
        ad.attn_factor = attn_factor_;
        ad.slot = d_slot_;
      }
      attention_decode(ad, stream_);
      prof_.mark(StepProfiler::kAttn);
    }

    DenseParams o;
    o.x = attn_;
    o.ldx = nqD;
    o.W = L.o_w;
    o.b = L.o_b;
    o.y = x_;
    o.ldy = H;
    o.T = T;
    o.N = H;
    o.K = nqD;
    o.accumulate = true;
    o.pdl = pdl_;
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
    DenseParams rd;
    rd.x = xn_;
    rd.x_lo = xn_lo_;
    rd.ldx = H;
    if (fuse_norm) {  // also writes xn (bf16) for the experts
      rd.norm_x = x_;
      rd.norm_w = L.post_norm;
      rd.norm_eps = c.rms_eps;
      rd.norm_out = xn_;
    }
    rd.W = L.router_w;
    rd.b = L.router_b;
    rd.y = router_logits_;
    rd.ldy = c.num_experts;
    rd.T = T;
    rd.N = c.num_experts;
    rd.K = H;
    rd.pdl = pdl_;
    dense(rd, stream_);
    RouterTopkParams rt;
    rt.logits = router_logits_;
    rt.ld_logits = c.num_experts;
    rt.n = T;
    rt.E = c.num_experts;
    rt.k = c.experts_per_token;
    rt.ids = expert_ids_;
    rt.weights = expert_w_;
    rt.pdl = pdl_;
    router_topk_softmax(rt, stream_);
    prof_.mark(StepProfiler::kRouter);

    MoeParams mp;
    mp.n = T;
    mp.H = H;
    mp.I = c.intermediate;
    mp.E = c.num_experts;
    mp.k = c.experts_per_token;
    mp.swiglu_limit = c.swiglu_limit;
    mp.x = xn_;
    mp.ldx = H;
    mp.ids = expert_ids_;
    mp.weights = expert_w_;
    mp.y = x_;
    mp.ldy = H;
    mp.accumulate = true;
    mp.workspace = moe_ws_;
    mp.workspace_bytes = moe_ws_bytes_;
    mp.pdl = pdl_;
    if (w_.mxfp4)
      moe_mxfp4_forward(mp, L.mxfp4, stream_);
    else
      moe_bf16_forward(mp, L.bf16, stream_);
    prof_.mark(StepProfiler::kExperts);
  }
}

// Final norm, lm_head and narrowing for output rows [first_row, first_row + rows) (rows <= kLogitRowsPerChunk).
void CudaBackend::logits_rows(int first_row, int rows, int top_k) {
  RmsNormParams n;
  n.x = x_;
  n.rows = d_out_rows_ + first_row;
  n.w = w_.final_norm;
  n.out = xf_;
  n.T = rows;
  n.H = cfg_.hidden;
  n.eps = cfg_.rms_eps;
  n.pdl = pdl_;
  rmsnorm(n, stream_);
  DenseParams d;
  d.x = xf_;
  d.ldx = cfg_.hidden;
  d.W = w_.lm_head;
  d.y = logits_;
  d.ldy = cfg_.vocab;
  d.T = rows;
  d.N = cfg_.vocab;
  d.K = cfg_.hidden;
  d.pdl = pdl_;
  dense(d, stream_);
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
  nl.pdl = pdl_;
  narrow_logits(nl, stream_);
  if (sample_stages_) {  // after the raw narrowing: it adjusts the sampled rows in place
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
    sp.stages = sample_stages_;
    sp.pdl = pdl_;
    sample_rows(sp, stream_);
  }
  prof_.mark(StepProfiler::kLogits);
}

// The device work of one step up to the narrowed logits of the first chunk of output rows (a fixed launch
// sequence for a given batch shape, so it can be captured in a CUDA graph).
void CudaBackend::run_forward(int T, int rows, int top_k) {
  forward_layers(T);
  logits_rows(0, std::min(kLogitRowsPerChunk, rows), top_k);
}

void CudaBackend::step(const StepBatch& b, StepOutput& out) {
  CUDA_CHECK(cudaSetDevice(device_));
  const ModelConfig& c = cfg_;
  const int T = b.num_tokens, S = b.num_seqs, bs = opt_.block_size;
  if (T <= 0 || S <= 0) throw std::runtime_error("step: empty batch");
  if (T > opt_.max_batch_tokens)
    throw std::runtime_error("step: " + std::to_string(T) + " tokens exceed maxBatchTokens " +
                             std::to_string(opt_.max_batch_tokens));
  if (S > opt_.max_seqs)
    throw std::runtime_error("step: " + std::to_string(S) + " sequences exceed maxSeqs " + std::to_string(opt_.max_seqs));
  if (b.max_blocks_per_seq <= 0 || b.max_blocks_per_seq > max_blocks_per_seq_cap_)
    throw std::runtime_error("step: maxBlocksPerSeq must be in 1.." + std::to_string(max_blocks_per_seq_cap_));
  if (b.top_k < 0 || b.top_k > kMaxTopK || b.top_k > c.vocab) throw std::runtime_error("step: topK out of range");
  validate_sampling(b, c.vocab);
  max_bps_ = b.max_blocks_per_seq;

  // ---- host: per-token sequence, cache slot; decode list, prefill tiles, output rows ----
  std::vector<int32_t> tok_seq(T), slot(T), decode, tiles, out_rows;
  decode_max_keys_full_ = decode_max_keys_sliding_ = 1;
  int t = 0;
  for (int s = 0; s < S; s++) {
    const int n = b.seq_lens[s];
    const int32_t* bt = b.block_tables + size_t(s) * b.max_blocks_per_seq;
    for (int i = 0; i < n; i++, t++) {
      const int p = b.positions[t];
      if (b.tokens[t] < 0 || b.tokens[t] >= c.vocab)
        throw std::runtime_error("step: token id " + std::to_string(b.tokens[t]) + " outside the vocabulary");
      if (p < 0 || p >= c.max_positions || p / bs >= b.max_blocks_per_seq)
        throw std::runtime_error("step: position " + std::to_string(p) + " outside the sequence's block table");
      tok_seq[t] = s;
      // every block this token's attention reads must be a valid cache block
      const int blk = bt[p / bs];
      if (blk < 0 || blk >= num_blocks_)
        throw std::runtime_error("step: block id " + std::to_string(blk) + " outside the KV cache (" +
                                 std::to_string(num_blocks_) + " blocks)");
      slot[t] = blk * bs + p % bs;
      if (b.all_positions) out_rows.push_back(t);
    }
    for (int j = 0; j * bs <= b.positions[t - 1]; j++)
      if (bt[j] < 0 || bt[j] >= num_blocks_)
        throw std::runtime_error("step: block table entry " + std::to_string(bt[j]) + " outside the KV cache");
    if (!b.all_positions) out_rows.push_back(t - 1);
    if (n == 1) {
      decode.push_back(t - 1);
      const int p = b.positions[t - 1];
      decode_max_keys_full_ = std::max(decode_max_keys_full_, p + 1);
      decode_max_keys_sliding_ =
          std::max(decode_max_keys_sliding_, c.sliding_window > 0 ? std::min(p + 1, c.sliding_window) : p + 1);
    } else {
      for (int f = t - n; f < t; f += kPrefillTileTokens) {
        tiles.push_back(f);
        tiles.push_back(std::min(kPrefillTileTokens, t - f));
      }
    }
  }
  n_decode_ = int(decode.size());
  n_tiles_ = int(tiles.size() / 2);
  const int rows = int(out_rows.size());
  if (n_decode_ > 0) {
    const size_t per_split = attention_decode_workspace_floats(n_decode_, c.num_heads, c.head_dim, 1);
    const int cap = int(std::min<size_t>(1024, std::max<size_t>(1, kAttnWorkspaceFloats / per_split)));
    for (int kind = 0; kind < 2; kind++) {
      const int max_keys = kind ? decode_max_keys_sliding_ : decode_max_keys_full_;
      // Up to 128 keys (sliding layers, short contexts): one split that writes the output itself, no combine.
      dec_kps_[kind] = max_keys <= 128 ? 128 : attention_keys_per_split(max_keys, cap);
      dec_splits_[kind] = (max_keys + dec_kps_[kind] - 1) / dec_kps_[kind];
    }
  }

  // ---- one upload of every index array ----
  const size_t bt_n = size_t(S) * b.max_blocks_per_seq;
  const size_t total = 4 * size_t(T) + bt_n + decode.size() + tiles.size() + out_rows.size();
  if (total > idx_cap_) throw std::runtime_error("step: batch index arrays exceed the workspace");
  h_idx_.reserve(total * 4);
  int32_t* h = static_cast<int32_t*>(h_idx_.p);
  size_t at = 0;
  auto put = [&](const int32_t* src, size_t n, int32_t** dev) {
    std::memcpy(h + at, src, n * 4);
    *dev = d_idx_ + at;
    at += n;
  };
  put(b.tokens, T, &d_tokens_);
  put(b.positions, T, &d_pos_);
  put(slot.data(), T, &d_slot_);
  put(tok_seq.data(), T, &d_tok_seq_);
  put(b.block_tables, bt_n, &d_bt_);
  put(decode.data(), decode.size(), &d_decode_);
  put(tiles.data(), tiles.size(), &d_tiles_);
  put(out_rows.data(), out_rows.size(), &d_out_rows_);
  CUDA_CHECK(cudaMemcpyAsync(d_idx_, h, at * 4, cudaMemcpyHostToDevice, stream_));
  // ---- sampling inputs: one upload of the rows (output row r is sequence r) and their entries ----
  sample_stages_ = b.sample_rows ? sample_stages(b.sample_rows, S) : 0;
  if (sample_stages_) {
    const size_t row_bytes = size_t(S) * sizeof(SampleRow), entry_bytes = size_t(b.num_sample_entries) * sizeof(SampleEntry);
    h_sample_.reserve(row_bytes + entry_bytes);
    char* hs = static_cast<char*>(h_sample_.p);
    std::memcpy(hs, b.sample_rows, row_bytes);
    if (entry_bytes) std::memcpy(hs + row_bytes, b.sample_entries, entry_bytes);
    CUDA_CHECK(cudaMemcpyAsync(d_sample_rows_, hs, row_bytes, cudaMemcpyHostToDevice, stream_));
    if (entry_bytes) CUDA_CHECK(cudaMemcpyAsync(d_sample_entries_, hs + row_bytes, entry_bytes, cudaMemcpyHostToDevice, stream_));
  }
  prof_.begin(stream_);

  const int k = b.top_k;
  std::vector<int32_t> full_rows;  // output rows whose full logits go to the host
  for (int r = 0; r < rows; r++)
    if (b.full_logits && b.full_logits[tok_seq[out_rows[r]]]) full_rows.push_back(r);
  h_logits_.reserve(std::max<size_t>(1, full_rows.size()) * size_t(c.vocab) * 4);
  const bool graphable = graphs_ && n_tiles_ == 0 && T <= kMoeDecodeMaxTokens && rows <= kLogitRowsPerChunk;
  if (graphable) {
    const GraphKey key{T, S, b.max_blocks_per_seq, rows, k, dec_kps_[0], dec_splits_[0], dec_kps_[1], dec_splits_[1], sample_stages_};
    if (!have_graph_ || !(key == graph_key_)) {
      drop_graph();
      cudaGraph_t g = nullptr;
      bool captured = false;
      CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        run_forward(T, rows, k);
        captured = true;
      } catch (const std::exception&) {
        // A launch that cannot be captured: end the capture and run eagerly from now on (errors that are not
        // about capturing show up again in the eager run and are thrown there).
      }
      const cudaError_t ee = cudaStreamEndCapture(stream_, &g);
      cudaError_t ie = cudaErrorUnknown;
      if (captured && ee == cudaSuccess && g) ie = cudaGraphInstantiate(&graph_exec_, g, 0);
      if (g) cudaGraphDestroy(g);
      if (ie == cudaSuccess) {
        graph_key_ = key;
        have_graph_ = true;
      } else {
        graph_exec_ = nullptr;
        graphs_ = false;
        cudaGetLastError();
      }
    }
    if (have_graph_)
      CUDA_CHECK(cudaGraphLaunch(graph_exec_, stream_));
    else
      run_forward(T, rows, k);
  } else {
    run_forward(T, rows, k);
  }
  size_t fi = 0;
  for (int r0 = 0; r0 < rows; r0 += kLogitRowsPerChunk) {
    const int n = std::min(kLogitRowsPerChunk, rows - r0);
    if (r0 > 0) logits_rows(r0, n, k);  // later chunks reuse the logits buffer, after the copies of the last one
    for (; fi < full_rows.size() && full_rows[fi] < r0 + n; fi++)
      CUDA_CHECK(cudaMemcpyAsync(static_cast<float*>(h_logits_.p) + fi * size_t(c.vocab),
                                 logits_ + size_t(full_rows[fi] - r0) * c.vocab, size_t(c.vocab) * 4,
                                 cudaMemcpyDeviceToHost, stream_));
  }
  // narrowed results: argmax, max, lse, top ids, top logits
  const size_t out_bytes = size_t(rows) * (12 + 8 * size_t(k));
  h_out_.reserve(out_bytes + size_t(rows) * 8);
  char* ho = static_cast<char*>(h_out_.p);
  CUDA_CHECK(cudaMemcpyAsync(ho, d_argmax_, rows * 4, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaMemcpyAsync(ho + rows * 4, d_maxl_, rows * 4, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaMemcpyAsync(ho + rows * 8, d_lse_, rows * 4, cudaMemcpyDeviceToHost, stream_));
  if (k > 0) {
    CUDA_CHECK(cudaMemcpyAsync(ho + rows * 12, d_top_ids_, size_t(rows) * k * 4, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaMemcpyAsync(ho + rows * 12 + size_t(rows) * k * 4, d_top_logits_, size_t(rows) * k * 4,
                               cudaMemcpyDeviceToHost, stream_));
  }
  if (sample_stages_) {  // the sampled token and its raw logit per row
    CUDA_CHECK(cudaMemcpyAsync(ho + out_bytes, d_sampled_, rows * 4, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaMemcpyAsync(ho + out_bytes + rows * 4, d_sampled_logit_, rows * 4, cudaMemcpyDeviceToHost, stream_));
  }
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  CUDA_CHECK(cudaGetLastError());
  prof_.end(n_tiles_ == 0);

  out.num_rows = rows;
  out.vocab = c.vocab;
  out.top_k = k;
  auto i32 = [&](size_t off, size_t n) {
    const int32_t* p = reinterpret_cast<const int32_t*>(ho + off);
    return std::vector<int32_t>(p, p + n);
  };
  auto f32 = [&](size_t off, size_t n) {
    const float* p = reinterpret_cast<const float*>(ho + off);
    return std::vector<float>(p, p + n);
  };
  out.argmax = i32(0, rows);
  out.max_logit = f32(rows * 4, rows);
  out.logsumexp = f32(rows * 8, rows);
  out.top_ids = k ? i32(rows * 12, size_t(rows) * k) : std::vector<int32_t>{};
  out.top_logits = k ? f32(rows * 12 + size_t(rows) * k * 4, size_t(rows) * k) : std::vector<float>{};
  out.logits_rows = full_rows;
  const float* hl = static_cast<const float*>(h_logits_.p);
  out.logits.assign(hl, hl + full_rows.size() * size_t(c.vocab));
  out.sampled.clear();
  out.sampled_logit.clear();
  if (sample_stages_) {
    out.sampled = i32(out_bytes, rows);
    out.sampled_logit = f32(out_bytes + rows * 4, rows);
  } else if (b.sample_rows) {
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
