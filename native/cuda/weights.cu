// Loading the CUDA backend's weights (see weights.h). One table of pieces (tensor -> arena range -> how to get
// there) is built from the config, validated against the checkpoint before anything is allocated, then walked
// once: raw bytes stream through two pinned staging buffers (the disk read of one chunk overlaps the copy of the
// previous one), conversions (MXFP4 -> bf16, [E, in, out] -> [E, out, in]) run on the GPU from a scratch buffer.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "common.cuh"
#include "weights.h"

namespace hm::cuda {

std::string oom_message(uint64_t needed, const std::string& what) {
  size_t free_b = 0, total_b = 0;
  cudaGetLastError();
  cudaMemGetInfo(&free_b, &total_b);
  char buf[256];
  std::snprintf(buf, sizeof buf, "out of GPU memory: needed %.2f GiB for %s, %.2f GiB free (of %.2f GiB)",
                double(needed) / (1ull << 30), what.c_str(), double(free_b) / (1ull << 30),
                double(total_b) / (1ull << 30));
  return buf;
}

GpuWeights::~GpuWeights() {
  if (arena) cudaFree(arena);
}

namespace {

enum class Src { kCopy, kSinks, kMxfp4ToBf16, kTranspose };
enum class Init { kNorm, kLinear, kBias, kEmbed, kSinks, kFp4Blocks, kE8m0Scales };

struct Piece {
  std::string name, scales_name;  // scales_name: kMxfp4ToBf16 only
  uint64_t offset = 0, bytes = 0;
  Src src = Src::kCopy;
  Init init = Init::kLinear;
  int fan_in = 1;
  DType dtype = DType::BF16;       // arena dtype (kSinks: F32)
  int64_t batch = 1, rows = 0, cols = 0;  // kMxfp4ToBf16: rows x cols decoded; kTranspose: file [batch, rows, cols]
};

// ---- GPU fill and conversion kernels ----
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ float uniform_pm1(uint64_t seed, uint64_t i) {
  return float(mix64(seed + 0x9e3779b97f4a7c15ull * (i + 1)) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_bf16(uint16_t* p, uint64_t n, uint64_t seed, float scale, float offset) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x)
    p[i] = __bfloat16_as_ushort(__float2bfloat16(offset + scale * uniform_pm1(seed, i)));
}
__global__ void fill_f32(float* p, uint64_t n, uint64_t seed, float scale, float offset) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x)
    p[i] = __bfloat162float(__float2bfloat16(offset + scale * uniform_pm1(seed, i)));
}
__global__ void fill_bytes(uint8_t* p, uint64_t n, uint64_t seed, int scale_base) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x) {
    const uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull * (i + 1));
    p[i] = scale_base < 0 ? uint8_t(h) : uint8_t(scale_base - int(h & 1));
  }
}
// [batch, R, C] -> [batch, C, R], 32 x 32 tiles through shared memory.
__global__ void transpose_bf16(const uint16_t* in, uint16_t* out, int64_t R, int64_t C) {
  __shared__ uint16_t tile[32][33];
  const int64_t b = blockIdx.z;
  const int64_t r0 = int64_t(blockIdx.y) * 32, c0 = int64_t(blockIdx.x) * 32;
  const uint16_t* src = in + b * R * C;
  uint16_t* dst = out + b * R * C;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t r = r0 + i, c = c0 + threadIdx.x;
    if (r < R && c < C) tile[i][threadIdx.x] = src[r * C + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t c = c0 + i, r = r0 + threadIdx.x;
    if (r < R && c < C) dst[c * R + r] = tile[threadIdx.x][i];
  }
}

constexpr uint64_t kAlign = 256;
uint64_t align_up(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

std::vector<Piece> plan(const ModelConfig& c, bool ckpt_mxfp4, bool want_mxfp4, uint64_t* arena_bytes) {
  const int64_t H = c.hidden, I = c.intermediate, E = c.num_experts, V = c.vocab;
  const int64_t q = int64_t(c.num_heads) * c.head_dim, kv = int64_t(c.num_kv_heads) * c.head_dim;
  std::vector<Piece> v;
  uint64_t off = 0;
  // Pieces that share one arena range (q/k/v fused) pass `contiguous` so no alignment gap opens between them.
  auto add = [&](Piece p, bool contiguous = false) {
    if (!contiguous) off = align_up(off);
    p.offset = off;
    off += p.bytes;
    v.push_back(std::move(p));
  };
  auto bf16 = [&](const std::string& name, int64_t elems, Init init, int fan_in, bool contiguous = false) {
    Piece p;
    p.name = name;
    p.bytes = uint64_t(elems) * 2;
    p.init = init;
    p.fan_in = fan_in;
    add(std::move(p), contiguous);
  };
  auto u8 = [&](const std::string& name, int64_t elems, Init init, int fan_in) {
    Piece p;
    p.name = name;
    p.bytes = uint64_t(elems);
    p.dtype = DType::U8;
    p.init = init;
    p.fan_in = fan_in;
    add(std::move(p));
  };
  auto experts = [&](const std::string& base, int64_t out, int64_t in) {
    if (want_mxfp4) {
      u8(base + "_blocks", E * out * (in / 32) * 16, Init::kFp4Blocks, int(in));
      u8(base + "_scales", E * out * (in / 32), Init::kE8m0Scales, int(in));
      return;
    }
    Piece p;
    p.bytes = uint64_t(E * out * in) * 2;
    p.init = Init::kLinear;
    p.fan_in = int(in);
    if (ckpt_mxfp4) {
      p.name = base + "_blocks";
      p.scales_name = base + "_scales";
      p.src = Src::kMxfp4ToBf16;
      p.rows = E * out;
      p.cols = in;
    } else {
      p.name = base;
      p.src = Src::kTranspose;
      p.batch = E;
      p.rows = in;
      p.cols = out;
    }
    add(std::move(p));
  };
  bf16("model.embed_tokens.weight", V * H, Init::kEmbed, 1);
  for (int l = 0; l < c.num_layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    bf16(p + "input_layernorm.weight", H, Init::kNorm, 1);
    bf16(p + "self_attn.q_proj.weight", q * H, Init::kLinear, int(H));
    bf16(p + "self_attn.k_proj.weight", kv * H, Init::kLinear, int(H), true);
    bf16(p + "self_attn.v_proj.weight", kv * H, Init::kLinear, int(H), true);
    bf16(p + "self_attn.q_proj.bias", q, Init::kBias, 1);
    bf16(p + "self_attn.k_proj.bias", kv, Init::kBias, 1, true);
    bf16(p + "self_attn.v_proj.bias", kv, Init::kBias, 1, true);
    bf16(p + "self_attn.o_proj.weight", H * q, Init::kLinear, int(q));
    bf16(p + "self_attn.o_proj.bias", H, Init::kBias, 1);
    {
      Piece s;
      s.name = p + "self_attn.sinks";
      s.bytes = uint64_t(c.num_heads) * 4;
      s.src = Src::kSinks;
      s.init = Init::kSinks;
      s.dtype = DType::F32;
      add(std::move(s));
    }
    bf16(p + "post_attention_layernorm.weight", H, Init::kNorm, 1);
    bf16(p + "mlp.router.weight", E * H, Init::kLinear, int(H));
    bf16(p + "mlp.router.bias", E, Init::kBias, 1);
    experts(p + "mlp.experts.gate_up_proj", 2 * I, H);
    bf16(p + "mlp.experts.gate_up_proj_bias", E * 2 * I, Init::kBias, 1);
    experts(p + "mlp.experts.down_proj", H, I);
    bf16(p + "mlp.experts.down_proj_bias", E * H, Init::kBias, 1);
  }
  bf16("model.norm.weight", H, Init::kNorm, 1);
  bf16("lm_head.weight", V * H, Init::kLinear, int(H));
  *arena_bytes = align_up(off);
  return v;
}

// Checks each piece's source tensors against the plan; returns the bytes that will be read from disk.
uint64_t validate(const std::vector<Piece>& pieces, const TensorMap& tensors) {
  uint64_t total = 0;
  auto expect = [&](const std::string& name, DType dt, uint64_t bytes) {
    const TensorSource& t = find_tensor(tensors, name);
    if (t.dtype != dt)
      throw std::runtime_error(t.file + ": tensor " + name + ": dtype " + dtype_name(t.dtype) + ", expected " +
                               dtype_name(dt));
    if (t.nbytes != bytes)
      throw std::runtime_error(t.file + ": tensor " + name + ": holds " + std::to_string(t.nbytes) +
                               " bytes, the config implies " + std::to_string(bytes));
    total += bytes;
  };
  for (const Piece& p : pieces) {
    switch (p.src) {
      case Src::kCopy: expect(p.name, p.dtype, p.bytes); break;
      case Src::kSinks: {
        const TensorSource& t = find_tensor(tensors, p.name);
        expect(p.name, t.dtype == DType::F32 ? DType::F32 : DType::BF16,
               p.bytes / 4 * (t.dtype == DType::F32 ? 4 : 2));
        break;
      }
      case Src::kMxfp4ToBf16:
        expect(p.name, DType::U8, uint64_t(p.rows * p.cols / 2));
        expect(p.scales_name, DType::U8, uint64_t(p.rows * p.cols / 32));
        break;
      case Src::kTranspose: expect(p.name, DType::BF16, p.bytes); break;
    }
  }
  return total;
}

// Two pinned staging buffers on a copy stream: disk read of chunk n+1 overlaps the H2D copy of chunk n.
class Streamer {
 public:
  static constexpr uint64_t kChunk = 64ull << 20;
  Streamer() {
    for (int i = 0; i < 2; i++) {
      CUDA_CHECK(cudaMallocHost(&buf_[i], kChunk));
      CUDA_CHECK(cudaEventCreateWithFlags(&ev_[i], cudaEventDisableTiming));
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~Streamer() {
    if (stream_) cudaStreamSynchronize(stream_);
    for (int i = 0; i < 2; i++) {
      if (buf_[i]) cudaFreeHost(buf_[i]);
      if (ev_[i]) cudaEventDestroy(ev_[i]);
    }
    if (stream_) cudaStreamDestroy(stream_);
  }
  cudaStream_t stream() const { return stream_; }
  template <typename F>
  void upload(const TensorSource& t, void* dst, F&& on_bytes) {
    for (uint64_t off = 0; off < t.nbytes; off += kChunk) {
      const uint64_t len = std::min(kChunk, t.nbytes - off);
      CUDA_CHECK(cudaEventSynchronize(ev_[cur_]));
      read_tensor_range(t, off, len, buf_[cur_]);
      CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + off, buf_[cur_], len, cudaMemcpyHostToDevice, stream_));
      CUDA_CHECK(cudaEventRecord(ev_[cur_], stream_));
      cur_ ^= 1;
      on_bytes(len);
    }
  }
  void sync() { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  void* buf_[2] = {nullptr, nullptr};
  cudaEvent_t ev_[2] = {nullptr, nullptr};
  cudaStream_t stream_ = nullptr;
  int cur_ = 0;
};

void dummy_fill(const Piece& p, char* dst, uint64_t seed, cudaStream_t s) {
  const dim3 grid(1024), block(256);
  switch (p.init) {
    case Init::kFp4Blocks: fill_bytes<<<grid, block, 0, s>>>(reinterpret_cast<uint8_t*>(dst), p.bytes, seed, -1); break;
    case Init::kE8m0Scales: {
      // E2M1 values average ~2.6 in magnitude: 2^e with 2.6 * 2^e ~ 1/sqrt(fan_in), jittered by one step.
      const int e = int(std::lround(-std::log2(2.6 * std::sqrt(double(p.fan_in)))));
      fill_bytes<<<grid, block, 0, s>>>(reinterpret_cast<uint8_t*>(dst), p.bytes, seed, 127 + e);
      break;
    }
    default: {
      float scale = 1.f, offset = 0.f;
      switch (p.init) {
        case Init::kNorm: scale = 0.1f, offset = 1.f; break;
        case Init::kLinear: scale = std::sqrt(3.0f / float(p.fan_in)); break;
        case Init::kBias: scale = 0.1f; break;
        default: break;  // embed, sinks: uniform [-1, 1)
      }
      if (p.dtype == DType::F32)
        fill_f32<<<grid, block, 0, s>>>(reinterpret_cast<float*>(dst), p.bytes / 4, seed, scale, offset);
      else
        fill_bf16<<<grid, block, 0, s>>>(reinterpret_cast<uint16_t*>(dst), p.bytes / 2, seed, scale, offset);
    }
  }
  CUDA_CHECK(cudaGetLastError());
}

// Scratch device memory for conversions, freed when loading ends.
struct Scratch {
  void* p = nullptr;
  ~Scratch() {
    if (p) cudaFree(p);
  }
};

void bind_views(const ModelConfig& c, const std::vector<Piece>& pieces, char* arena, bool mxfp4, GpuWeights& w) {
  size_t i = 0;
  auto next = [&]() { return arena + pieces[i++].offset; };
  auto u16 = [&]() { return reinterpret_cast<const uint16_t*>(next()); };
  auto u8 = [&]() { return reinterpret_cast<const uint8_t*>(next()); };
  w.embed = u16();
  w.layers.resize(c.num_layers);
  for (auto& L : w.layers) {
    L.input_norm = u16();
    L.qkv_w = u16();
    i += 2;  // k, v weights follow q in the same range
    L.qkv_b = u16();
    i += 2;
    L.o_w = u16();
    L.o_b = u16();
    L.sinks = reinterpret_cast<const float*>(next());
    L.post_norm = u16();
    L.router_w = u16();
    L.router_b = u16();
    if (mxfp4) {
      L.mxfp4.gu_blocks = u8();
      L.mxfp4.gu_scales = u8();
      L.mxfp4.gu_bias = u16();
      L.mxfp4.dn_blocks = u8();
      L.mxfp4.dn_scales = u8();
      L.mxfp4.dn_bias = u16();
    } else {
      L.bf16.gu_weight = u16();
      L.bf16.gu_bias = u16();
      L.bf16.dn_weight = u16();
      L.bf16.dn_bias = u16();
    }
  }
  w.final_norm = u16();
  w.lm_head = u16();
}

}  // namespace

void load_gpu_weights(const ModelConfig& cfg, const TensorMap& tensors, const LoadOptions& opt, bool expert_mxfp4,
                      const ProgressFn& progress, GpuWeights& w) {
  const bool ckpt_mxfp4 = opt.dummy || cfg.num_layers == 0 ||
                          tensors.count("model.layers.0.mlp.experts.gate_up_proj_blocks") > 0;
  if (!ckpt_mxfp4 && expert_mxfp4)
    throw std::runtime_error("cuda backend: this checkpoint stores its experts in bf16, not MXFP4; load it with "
                             "expertFormat 'bf16'");
  uint64_t arena_bytes = 0;
  std::vector<Piece> pieces = plan(cfg, ckpt_mxfp4, expert_mxfp4, &arena_bytes);
  const uint64_t disk_bytes = opt.dummy ? 0 : validate(pieces, tensors);

  if (cudaMalloc(&w.arena, arena_bytes) != cudaSuccess) {
    w.arena = nullptr;
    throw std::runtime_error(oom_message(arena_bytes, "the model weights"));
  }
  w.bytes = arena_bytes;
  w.mxfp4 = expert_mxfp4;
  char* arena = static_cast<char*>(w.arena);
  bind_views(cfg, pieces, arena, expert_mxfp4, w);

  if (opt.dummy) {
    cudaStream_t s = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    uint64_t done = 0;
    try {
      for (size_t i = 0; i < pieces.size(); i++) {
        dummy_fill(pieces[i], arena + pieces[i].offset, opt.seed * 0x100000001b3ull + i, s);
        done += pieces[i].bytes;
        if (progress && (i % 16 == 15 || i + 1 == pieces.size())) {
          CUDA_CHECK(cudaStreamSynchronize(s));
          progress(done, arena_bytes);
        }
      }
      CUDA_CHECK(cudaStreamSynchronize(s));
    } catch (...) {
      cudaStreamDestroy(s);
      throw;
    }
    cudaStreamDestroy(s);
    return;
  }

  // Scratch for conversions: the largest converted tensor's source bytes (+ scales), and its output for transposes.
  uint64_t scratch_bytes = 0;
  for (const Piece& p : pieces) {
    if (p.src == Src::kMxfp4ToBf16) scratch_bytes = std::max(scratch_bytes, align_up(p.rows * p.cols / 2) + p.rows * p.cols / 32);
    if (p.src == Src::kTranspose) scratch_bytes = std::max(scratch_bytes, p.bytes);
  }
  Scratch scratch;
  if (scratch_bytes && cudaMalloc(&scratch.p, scratch_bytes) != cudaSuccess) {
    scratch.p = nullptr;
    throw std::runtime_error(oom_message(arena_bytes + scratch_bytes, "the model weights and a conversion buffer"));
  }
  Streamer st;
  uint64_t done = 0, last_report = 0;
  auto on_bytes = [&](uint64_t n) {
    done += n;
    if (progress && (done - last_report >= (256ull << 20) || done == disk_bytes)) {
      last_report = done;
      progress(done, disk_bytes);
    }
  };
  for (const Piece& p : pieces) {
    char* dst = arena + p.offset;
    switch (p.src) {
      case Src::kCopy: st.upload(find_tensor(tensors, p.name), dst, on_bytes); break;
      case Src::kSinks: {
        const TensorSource& t = find_tensor(tensors, p.name);
        std::vector<float> f(p.bytes / 4);
        if (t.dtype == DType::F32) {
          read_tensor(t, f.data());
        } else {
          std::vector<uint16_t> raw(f.size());
          read_tensor(t, raw.data());
          for (size_t i = 0; i < f.size(); i++) {
            const uint32_t u = uint32_t(raw[i]) << 16;
            std::memcpy(&f[i], &u, 4);
          }
        }
        CUDA_CHECK(cudaMemcpyAsync(dst, f.data(), p.bytes, cudaMemcpyHostToDevice, st.stream()));
        st.sync();
        on_bytes(t.nbytes);
        break;
      }
      case Src::kMxfp4ToBf16: {
        char* blocks = static_cast<char*>(scratch.p);
        char* scales = blocks + align_up(p.rows * p.cols / 2);
        st.upload(find_tensor(tensors, p.name), blocks, on_bytes);
        st.upload(find_tensor(tensors, p.scales_name), scales, on_bytes);
        Mxfp4ToBf16Params mp;
        mp.blocks = reinterpret_cast<const uint8_t*>(blocks);
        mp.scales = reinterpret_cast<const uint8_t*>(scales);
        mp.out = reinterpret_cast<uint16_t*>(dst);
        mp.rows = p.rows;
        mp.cols = int(p.cols);
        mxfp4_to_bf16(mp, st.stream());
        st.sync();
        break;
      }
      case Src::kTranspose: {
        st.upload(find_tensor(tensors, p.name), scratch.p, on_bytes);
        const dim3 grid(unsigned((p.cols + 31) / 32), unsigned((p.rows + 31) / 32), unsigned(p.batch));
        transpose_bf16<<<grid, dim3(32, 8), 0, st.stream()>>>(static_cast<const uint16_t*>(scratch.p),
                                                              reinterpret_cast<uint16_t*>(dst), p.rows, p.cols);
        CUDA_CHECK(cudaGetLastError());
        st.sync();
        break;
      }
    }
  }
  st.sync();
}

}  // namespace hm::cuda
