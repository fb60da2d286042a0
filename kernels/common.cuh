// Device helpers shared by every kernel file: bf16 packing, warp reductions, checked CUDA calls that throw
// (never abort: a CUDA error must reach JavaScript as an Error), and programmatic dependent launch (PDL).
//
// PDL contract of every harmonium kernel: it may read WEIGHTS before pdl_wait(), never activations, and it
// writes nothing before pdl_wait(). It calls pdl_trigger() once its own weight stream is under way so the next
// kernel can start streaming its weights while this one drains. Without the launch attribute both are no-ops.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace hm::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(e) + " (" + what + " at " + file + ":" +
                           std::to_string(line) + ")");
}

#define CUDA_CHECK(expr)                                                        \
  do {                                                                          \
    cudaError_t hm_err_ = (expr);                                               \
    if (hm_err_ != cudaSuccess) ::hm::cuda::throw_cuda(hm_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// A launcher's shape check: throws std::invalid_argument naming the launcher and the broken condition.
#define HM_REQUIRE(cond, who)                                                                   \
  do {                                                                                          \
    if (!(cond)) throw std::invalid_argument(std::string(who) + ": requires " #cond);         \
  } while (0)

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Lets `Kernel` take `bytes` of dynamic shared memory (above the 48 KB default): once per kernel and device (the
// attribute is a device's, so a process on two GPUs sets it on each). `carveout` >= 0 also sets the kernel's
// preferred shared-memory carveout (percent of the unified L1 / shared memory).
template <auto Kernel>
void allow_dynamic_smem(size_t bytes, int carveout = -1) {
  static std::atomic<uint64_t> done{0};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = 1ull << (dev & 63);
  if (done.load(std::memory_order_acquire) & bit) return;
  CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  if (carveout >= 0)
    CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributePreferredSharedMemoryCarveout, carveout));
  done.fetch_or(bit, std::memory_order_release);
}

// Launches with the PDL attribute when `pdl` (sm_90+ only; the backend decides once per device).
template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                   Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
}

// launch() with the blocks grouped along z in thread block clusters of cluster_z (sm_90+; 1: no cluster).
template <typename... KArgs, typename... Args>
inline void launch_clustered(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             bool pdl, unsigned cluster_z, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = 1;
    attr[n].val.clusterDim.y = 1;
    attr[n++].val.clusterDim.z = cluster_z;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
}

__device__ __forceinline__ float bf2f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float bf2f_bits(uint16_t v) { return __uint_as_float(uint32_t(v) << 16); }

// 8 bf16 packed in a uint4 -> 8 floats.
__device__ __forceinline__ void unpack8(const uint4& u, float* f) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// Streaming 16-byte load for weights read once per step: skip L1 so activations keep it.
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// cp.async (sm_80+): 16 bytes global -> shared through L2 only; with !pred the 16 bytes are zero-filled and gmem
// is not read. Completion per thread by groups (commit, then wait until at most N groups are pending); other
// threads see the bytes after a barrier.
__device__ __forceinline__ void cp_async16_zfill(void* smem, const void* gmem, bool pred) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0));
}
// By shared-memory address with the bytes to read (16, or 0 for zeros) as a register the caller keeps.
__device__ __forceinline__ void cp_async16_sz_s(uint32_t s, const void* gmem, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
// The same by shared-memory address (a kernel that keeps its ring's address in a register).
__device__ __forceinline__ void cp_async16_zfill_s(uint32_t s, const void* gmem, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0));
}
// A value kept in a register as computed: the compiler can neither fold it into its uses nor rebuild it from its
// parts (ptxas rebuilt a ring's aligned base from the shared window, six uniform instructions, at every use in a
// k loop). For the addresses a loop reuses.
__device__ __forceinline__ uint32_t opaque_u32(uint32_t v) {
  asm volatile("" : "+r"(v));
  return v;
}
// Shared-memory loads by 32-bit shared address (with opaque_u32's bases: one add an address).
__device__ __forceinline__ uint32_t lds_u32(uint32_t a) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(a) : "memory");
  return v;
}
__device__ __forceinline__ uint32_t lds_u16(uint32_t a) {
  unsigned short v;
  asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(a) : "memory");
  return v;
}
// 4 bytes through L1 (cp.async.ca; .cg takes 16 only), for small tables a block copies once.
__device__ __forceinline__ void cp_async4_s(uint32_t s, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Carves a workspace into consecutive parts, each 256-byte aligned (whole cache sectors, vector loads of any
// width). Over a null base it only sizes: the launcher's `*_workspace_bytes` is the same carve's bytes().
class WorkspaceCarve {
 public:
  explicit WorkspaceCarve(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(size_t bytes) {
    char* q = base_ ? base_ + at_ : nullptr;
    at_ += (bytes + 255) & ~size_t(255);
    return reinterpret_cast<T*>(q);
  }
  size_t bytes() const { return at_; }

 private:
  char* base_;
  size_t at_ = 0;
};

}  // namespace hm::cuda
