// Loading the CUDA backend's weights (see weights.h). The one weight layout (weight_layout.h) is planned into
// pieces (tensor -> arena range -> how to get there, bound to its pointer by TensorId), validated against the
// checkpoint before anything is allocated, then walked once: raw bytes stream through two pinned staging buffers
// (the disk read of one chunk overlaps the copy of the previous one), or for a dummy model are generated on the
// GPU by the generator the CPU backend uses (dummy_init.h); conversions (MXFP4 -> bf16, [E, in, out] ->
// [E, out, in]) run on the GPU from a scratch buffer either way.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "common.cuh"
#include "dummy_init.h"
#include "weight_layout.h"
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

// How a tensor's bytes reach its arena range.
enum class Src { kCopy, kSinks, kMxfp4ToBf16, kTranspose };

struct Piece {
  const TensorSpec* spec = nullptr;
  const TensorSpec* scales = nullptr;  // kMxfp4ToBf16: the scales decoded with spec's blocks
  uint64_t offset = 0, bytes = 0;      // the arena range
  Src src = Src::kCopy;
};

// ---- GPU fill and conversion kernels ----
enum class FillOut { kU8, kBf16, kF32 };
// Element i of a dummy tensor, exactly as the CPU backend generates it; kF32 (sinks) is rounded through bf16
// like a bf16 checkpoint's sinks.
__global__ void dummy_fill(void* p, uint64_t n, uint64_t seed, uint64_t key, dummy::Fill f, FillOut out) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x) {
    const uint64_t h = dummy::bits(seed, key, i);
    if (out == FillOut::kU8) {
      static_cast<uint8_t*>(p)[i] = dummy::byte(f, h);
    } else {
      const uint16_t b = dummy::to_bf16(dummy::value(f, h));
      if (out == FillOut::kBf16) static_cast<uint16_t*>(p)[i] = b;
      else static_cast<float*>(p)[i] = __uint_as_float(uint32_t(b) << 16);
    }
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

const TensorSpec& spec_of(const std::vector<TensorSpec>& layout, TensorId id, int layer) {
  for (const TensorSpec& t : layout)
    if (t.id == id && t.layer == layer) return t;
  throw std::logic_error("weight layout: tensor missing from layer " + std::to_string(layer));
}

// Places every tensor of the layout in the arena. q, k and v (weights, and biases) share one range each, back to
// back, which the fused qkv projection reads as one [nq*D + 2*nkv*D, H] matrix.
std::vector<Piece> plan(const ModelConfig& c, const std::vector<TensorSpec>& layout, bool want_mxfp4,
                        uint64_t* arena_bytes) {
  const uint64_t H = c.hidden, q = uint64_t(c.num_heads) * c.head_dim, kv = uint64_t(c.num_kv_heads) * c.head_dim;
  std::vector<Piece> v;
  uint64_t off = 0, qkv_w = 0, qkv_b = 0;
  auto take = [&](uint64_t bytes) {
    off = align_up(off);
    const uint64_t at = off;
    off += bytes;
    return at;
  };
  for (const TensorSpec& t : layout) {
    Piece p;
    p.spec = &t;
    p.bytes = t.elems * dtype_size(t.dtype);
    switch (t.id) {
      case TensorId::kQWeight: p.offset = qkv_w = take((q + 2 * kv) * H * 2); break;
      case TensorId::kKWeight: p.offset = qkv_w + q * H * 2; break;
      case TensorId::kVWeight: p.offset = qkv_w + (q + kv) * H * 2; break;
      case TensorId::kQBias: p.offset = qkv_b = take((q + 2 * kv) * 2); break;
      case TensorId::kKBias: p.offset = qkv_b + q * 2; break;
      case TensorId::kVBias: p.offset = qkv_b + (q + kv) * 2; break;
      case TensorId::kSinks:
        p.src = Src::kSinks;
        p.bytes = t.elems * 4;
        p.offset = take(p.bytes);
        break;
      case TensorId::kGateUpScales:
      case TensorId::kDownScales:
        if (!want_mxfp4) continue;  // decoded together with its blocks
        p.offset = take(p.bytes);
        break;
      case TensorId::kGateUpBlocks:
      case TensorId::kDownBlocks:
        if (!want_mxfp4) {
          p.src = Src::kMxfp4ToBf16;
          p.scales = &spec_of(layout, t.id == TensorId::kGateUpBlocks ? TensorId::kGateUpScales : TensorId::kDownScales,
                              t.layer);
          p.bytes = t.elems * 2 * 2;  // two E2M1 values per byte, bf16 each
        }
        p.offset = take(p.bytes);
        break;
      case TensorId::kGateUp:
      case TensorId::kDown:
        p.src = Src::kTranspose;
        p.offset = take(p.bytes);
        break;
      default: p.offset = take(p.bytes);
    }
    v.push_back(p);
  }
  *arena_bytes = align_up(off);
  return v;
}

// Points every view of w at its piece's range, by TensorId.
void bind(const Piece& p, char* arena, GpuWeights& w) {
  const void* at = arena + p.offset;
  auto u16 = static_cast<const uint16_t*>(at);
  auto u8 = static_cast<const uint8_t*>(at);
  const TensorSpec& t = *p.spec;
  switch (t.id) {
    case TensorId::kEmbed: w.embed = u16; return;
    case TensorId::kFinalNorm: w.final_norm = u16; return;
    case TensorId::kLmHead: w.lm_head = u16; return;
    default: break;
  }
  LayerWeights& L = w.layers.at(t.layer);
  switch (t.id) {
    case TensorId::kInputNorm: L.input_norm = u16; break;
    case TensorId::kQWeight: L.qkv_w = u16; break;
    case TensorId::kQBias: L.qkv_b = u16; break;
    case TensorId::kKWeight:
    case TensorId::kKBias:
    case TensorId::kVWeight:
    case TensorId::kVBias: break;  // inside the fused qkv range
    case TensorId::kOWeight: L.o_w = u16; break;
    case TensorId::kOBias: L.o_b = u16; break;
    case TensorId::kSinks: L.sinks = static_cast<const float*>(at); break;
    case TensorId::kPostNorm: L.post_norm = u16; break;
    case TensorId::kRouterWeight: L.router_w = u16; break;
    case TensorId::kRouterBias: L.router_b = u16; break;
    case TensorId::kGateUpBlocks:
      if (p.src == Src::kMxfp4ToBf16) L.bf16.gu_weight = u16;
      else L.mxfp4.gu_blocks = u8;
      break;
    case TensorId::kGateUpScales: L.mxfp4.gu_scales = u8; break;
    case TensorId::kGateUp: L.bf16.gu_weight = u16; break;
    case TensorId::kGateUpBias: L.mxfp4.gu_bias = L.bf16.gu_bias = u16; break;
    case TensorId::kDownBlocks:
      if (p.src == Src::kMxfp4ToBf16) L.bf16.dn_weight = u16;
      else L.mxfp4.dn_blocks = u8;
      break;
    case TensorId::kDownScales: L.mxfp4.dn_scales = u8; break;
    case TensorId::kDown: L.bf16.dn_weight = u16; break;
    case TensorId::kDownBias: L.mxfp4.dn_bias = L.bf16.dn_bias = u16; break;
    default: throw std::logic_error("cuda backend: tensor " + t.name + " has no view");
  }
}

// Checks each tensor of the layout against the checkpoint; returns the bytes that will be read from disk.
uint64_t validate(const std::vector<TensorSpec>& layout, const TensorMap& tensors) {
  uint64_t total = 0;
  for (const TensorSpec& s : layout) {
    const TensorSource& t = find_tensor(tensors, s.name);
    if (t.dtype != s.dtype && !(s.accepts_f32 && t.dtype == DType::F32))
      throw std::runtime_error(t.file + ": tensor " + s.name + ": dtype " + dtype_name(t.dtype) + ", expected " +
                               dtype_name(s.dtype));
    const uint64_t bytes = s.elems * dtype_size(t.dtype);
    if (t.nbytes != bytes)
      throw std::runtime_error(t.file + ": tensor " + s.name + ": holds " + std::to_string(t.nbytes) +
                               " bytes, the config implies " + std::to_string(bytes));
    total += bytes;
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


// Scratch device memory for conversions, freed when loading ends.
struct Scratch {
  void* p = nullptr;
  ~Scratch() {
    if (p) cudaFree(p);
  }
};

// The source of every tensor's checkpoint bytes: the files (through the staging buffers) or the dummy generator.
class Source {
 public:
  Source(const TensorMap& tensors, const LoadOptions& opt, uint64_t total, const ProgressFn& progress)
      : tensors_(tensors), opt_(opt), total_(total), progress_(progress) {}
  cudaStream_t stream() const { return st_.stream(); }
  void sync() { st_.sync(); }

  // The tensor's bytes as the checkpoint holds them (t.dtype, or F32 sinks) into device memory at dst.
  void fetch(const TensorSpec& t, void* dst) {
    if (opt_.dummy) {
      const FillOut out = t.dtype == DType::U8 ? FillOut::kU8 : FillOut::kBf16;
      generate(t, dst, out);
      return;
    }
    st_.upload(find_tensor(tensors_, t.name), dst, [this](uint64_t n) { count(n); });
  }
  // Sinks widened to fp32 at dst.
  void fetch_sinks(const TensorSpec& t, float* dst) {
    if (opt_.dummy) {
      generate(t, dst, FillOut::kF32);
      return;
    }
    const TensorSource& src = find_tensor(tensors_, t.name);
    std::vector<float> f(t.elems);
    if (src.dtype == DType::F32) {
      read_tensor(src, f.data());
    } else {
      std::vector<uint16_t> raw(f.size());
      read_tensor(src, raw.data());
      for (size_t i = 0; i < f.size(); i++) {
        const uint32_t u = uint32_t(raw[i]) << 16;
        std::memcpy(&f[i], &u, 4);
      }
    }
    CUDA_CHECK(cudaMemcpyAsync(dst, f.data(), f.size() * 4, cudaMemcpyHostToDevice, st_.stream()));
    st_.sync();
    count(src.nbytes);
  }

 private:
  void generate(const TensorSpec& t, void* dst, FillOut out) {
    dummy_fill<<<1024, 256, 0, st_.stream()>>>(dst, t.elems, opt_.seed, t.key, dummy::fill_for(t.init, t.fan_in), out);
    CUDA_CHECK(cudaGetLastError());
    st_.sync();
    count(t.elems * dtype_size(t.dtype));
  }
  void count(uint64_t n) {
    done_ += n;
    if (progress_ && (done_ - last_report_ >= (256ull << 20) || done_ == total_)) {
      last_report_ = done_;
      progress_(done_, total_);
    }
  }
  const TensorMap& tensors_;
  const LoadOptions& opt_;
  uint64_t total_, done_ = 0, last_report_ = 0;
  const ProgressFn& progress_;
  Streamer st_;
};

}  // namespace

void load_gpu_weights(const ModelConfig& cfg, const TensorMap& tensors, const LoadOptions& opt, bool expert_mxfp4,
                      const ProgressFn& progress, GpuWeights& w) {
  if (cfg.expert_format == ExpertFormat::kBf16 && expert_mxfp4)
    throw std::runtime_error("cuda backend: this checkpoint stores its experts in bf16, not MXFP4; load it with "
                             "expertFormat 'bf16'");
  const std::vector<TensorSpec> layout = weight_layout(cfg);
  uint64_t arena_bytes = 0;
  const std::vector<Piece> pieces = plan(cfg, layout, expert_mxfp4, &arena_bytes);
  uint64_t source_bytes = 0;
  if (opt.dummy)
    for (const TensorSpec& t : layout) source_bytes += t.elems * dtype_size(t.dtype);
  else
    source_bytes = validate(layout, tensors);

  if (cudaMalloc(&w.arena, arena_bytes) != cudaSuccess) {
    w.arena = nullptr;
    throw std::runtime_error(oom_message(arena_bytes, "the model weights"));
  }
  w.bytes = arena_bytes;
  w.mxfp4 = expert_mxfp4;
  char* arena = static_cast<char*>(w.arena);
  w.layers.resize(cfg.num_layers);
  for (const Piece& p : pieces) bind(p, arena, w);

  // Scratch for conversions: the largest converted tensor's source bytes (+ scales), and its output for transposes.
  uint64_t scratch_bytes = 0;
  for (const Piece& p : pieces) {
    if (p.src == Src::kMxfp4ToBf16) scratch_bytes = std::max(scratch_bytes, align_up(p.spec->elems) + p.scales->elems);
    if (p.src == Src::kTranspose) scratch_bytes = std::max(scratch_bytes, p.bytes);
  }
  Scratch scratch;
  if (scratch_bytes && cudaMalloc(&scratch.p, scratch_bytes) != cudaSuccess) {
    scratch.p = nullptr;
    throw std::runtime_error(oom_message(arena_bytes + scratch_bytes, "the model weights and a conversion buffer"));
  }
  Source src(tensors, opt, source_bytes, progress);
  for (const Piece& p : pieces) {
    char* dst = arena + p.offset;
    const TensorSpec& t = *p.spec;
    switch (p.src) {
      case Src::kCopy: src.fetch(t, dst); break;
      case Src::kSinks: src.fetch_sinks(t, reinterpret_cast<float*>(dst)); break;
      case Src::kMxfp4ToBf16: {
        char* blocks = static_cast<char*>(scratch.p);
        char* scales = blocks + align_up(t.elems);
        src.fetch(t, blocks);
        src.fetch(*p.scales, scales);
        Mxfp4ToBf16Params mp;
        mp.blocks = reinterpret_cast<const uint8_t*>(blocks);
        mp.scales = reinterpret_cast<const uint8_t*>(scales);
        mp.out = reinterpret_cast<uint16_t*>(dst);
        mp.rows = t.shape[0] * t.shape[1];
        mp.cols = int(t.shape[2] * 32);
        mxfp4_to_bf16(mp, src.stream());
        src.sync();
        break;
      }
      case Src::kTranspose: {  // file [E, in, out] -> arena [E, out, in]
        src.fetch(t, scratch.p);
        const int64_t batch = t.shape[0], rows = t.shape[1], cols = t.shape[2];
        const dim3 grid(unsigned((cols + 31) / 32), unsigned((rows + 31) / 32), unsigned(batch));
        transpose_bf16<<<grid, dim3(32, 8), 0, src.stream()>>>(static_cast<const uint16_t*>(scratch.p),
                                                               reinterpret_cast<uint16_t*>(dst), rows, cols);
        CUDA_CHECK(cudaGetLastError());
        src.sync();
        break;
      }
    }
  }
  // The MXFP4 experts into the layout their kernels read (mxfp4_prepare: each block's nibbles reordered in place,
  // the scales clamped to the kernels' range), once every byte is on the GPU.
  if (expert_mxfp4) {
    const int64_t E = cfg.num_experts, H = cfg.hidden, I = cfg.intermediate;
    auto prepare = [&](const uint8_t* blocks, const uint8_t* scales, int64_t nblocks) {
      mxfp4_prepare({const_cast<uint8_t*>(blocks), const_cast<uint8_t*>(scales), nblocks}, src.stream());
    };
    for (const LayerWeights& L : w.layers) {
      prepare(L.mxfp4.gu_blocks, L.mxfp4.gu_scales, E * 2 * I * (H / 32));
      prepare(L.mxfp4.dn_blocks, L.mxfp4.dn_scales, E * H * (I / 32));
    }
  }
  src.sync();
}

}  // namespace hm::cuda
