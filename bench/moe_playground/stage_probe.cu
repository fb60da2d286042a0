// The one-token experts' next design taken apart before it is written (NOTES.md, session 11, "a plan for the
// one-token experts"): can down's 4 experts (16.6 MB of MXFP4 blocks) be staged into the SMs' shared memory while
// gate_up's 4 experts (33.2 MB) stream through registers, and what does the grid barrier between them cost?
// One persistent block an SM; 32 rotating expert sets of E = 128 so no set is in L2 when it is read. Modes:
//   stream      every thread reads 16-byte pieces of gate_up's 4 experts, grid-stride (the register stream alone)
//   stage       each block bulk-copies its share of down's 4 experts into shared memory and waits (staging alone)
//   both        stage issued first, then stream, then the wait: does either slow the other?
//   barrier     16 grid barriers (an atomic counter and a spin by one thread a block), per barrier
//   skeleton    both + one grid barrier + every block reading its staged bytes from shared memory: the layer's
//               memory and synchronisation with no decode or MMA (the plan's floor, against 32.6 us today)
// Build: cmake --build build-gpu --target hm_stage_probe. H200, session 12 (plain launches, 132 blocks of 1024
// threads, 122.7 KB staged a block): stream 11.33 us (33.2 MB, 2.93 TB/s), stage 6.94 us (16.6 MB), both 15.65 us
// (49.8 MB, 3.18 TB/s), skeleton 17.46 us, a grid barrier 1.13 us. The kernel built on it (NOTES.md, session 12)
// took 41-42 us a layer against the split kernels' 30.7: gate_up's decode-and-MMA stream, not the bytes, took 24 us
// of it with the staging beside it, and down from shared memory 6 us after the barrier (its decode has nothing left
// to overlap with).
#include <cuda_runtime.h>

#include <cstdio>

#include "lab_common.h"
#include "moe_impl.cuh"  // ld_stream16, the bulk-copy and mbarrier helpers (moe_bulk_ops.cuh)

using namespace hm::cuda;
using namespace hm::cuda::moe;

constexpr int kE = 128, kH = 2880, kI = 2880, kNu = 4;
constexpr size_t kGuBytes = size_t(2 * kI) * kH / 2, kDnBytes = size_t(kH) * kI / 2;  // one expert's blocks
constexpr int kThreads = 1024, kChunk = 16384;  // bulk copies of at most 16 KB

enum Mode { kStream, kStage, kBoth, kSkeleton };

struct Args {
  const uint8_t* gu;     // [E, 2I, H/32, 16]
  const uint8_t* dn;     // [E, H, I/32, 16]
  int e0;                // the set: experts e0 .. e0 + 3
  unsigned* bar;         // the grid barrier's counter (never reset: `base` is this launch's first target)
  unsigned base;
  uint32_t* sink;
  size_t share;          // down bytes a block stages (a multiple of 16)
};

// One thread a block arrives and spins until every block has; target = base + gridDim.x * (k + 1) for barrier k.
__device__ __forceinline__ void grid_barrier(unsigned* bar, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(bar, 1u);
    while (static_cast<int>(*reinterpret_cast<volatile unsigned*>(bar) - target) < 0) {
    }
    __threadfence();
  }
  __syncthreads();
}

template <int MODE>
__global__ void __launch_bounds__(kThreads, 1) stage_probe(Args a) {
  extern __shared__ __align__(128) unsigned char st_smem[];
  __shared__ __align__(8) uint64_t full;
  const int tid = threadIdx.x;
  uint32_t f = 0;
  const size_t lo = size_t(blockIdx.x) * a.share, total = size_t(kNu) * kDnBytes;
  const size_t mine = lo < total ? (total - lo < a.share ? total - lo : a.share) : 0;
  const uint8_t* dn = a.dn + size_t(a.e0) * kDnBytes + lo;
  if (MODE != kStream) {
    if (tid == 0) {
      mbar_init(&full, 1);
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (tid == 0) {
      mbar_expect_tx(&full, uint32_t(mine));
      for (size_t off = 0; off < mine; off += kChunk)
        bulk_g2s(st_smem + off, dn + off, uint32_t(mine - off < kChunk ? mine - off : kChunk), &full);
    }
  }
  if (MODE != kStage)
    f ^= xor_stream(reinterpret_cast<const uint4*>(a.gu + size_t(a.e0) * kGuBytes), size_t(kNu) * kGuBytes / 16);
  if (MODE != kStream) mbar_wait(&full, 0);
  if (MODE == kSkeleton) {
    grid_barrier(a.bar, a.base + gridDim.x);
    for (size_t off = size_t(tid) * 16; off < mine; off += size_t(kThreads) * 16) {
      const uint4 v = *reinterpret_cast<const uint4*>(st_smem + off);
      f ^= v.x ^ v.y ^ v.z ^ v.w;
    }
  }
  if (f == 0x12345678u) a.sink[0] = f;
}

__global__ void barriers_only(unsigned* bar, unsigned base, int n) {
  for (int k = 0; k < n; k++) grid_barrier(bar, base + gridDim.x * (k + 1));
}

template <int MODE>
void run(const char* name, Args a, int sms, size_t smem, double bytes) {
  auto k = stage_probe<MODE>;
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  unsigned launches = 0;
  const float us = time_us([&](int i) {
    Args b = a;
    b.e0 = (i % 32) * kNu;
    b.base = launches++ * unsigned(sms);
    k<<<sms, kThreads, smem>>>(b);
  }, 64);
  std::printf("| %-9s | %7.2f us | %6.1f MB | %5.0f GB/s |\n", name, us, bytes * 1e-6, bytes / us * 1e-3);
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  const size_t total_dn = size_t(kNu) * kDnBytes, share = ((total_dn + sms - 1) / sms + 15) / 16 * 16;
  const size_t smem = share + 1024;
  std::printf("device: %s, %d SMs; gate_up %d x %.1f MB, down %d x %.1f MB staged %.1f KB a block\n", prop.name, sms,
              kNu, kGuBytes * 1e-6, kNu, kDnBytes * 1e-6, share / 1024.0);
  if (smem > size_t(prop.sharedMemPerBlockOptin)) {
    std::printf("down's share (%zu bytes) does not fit a block's shared memory (%zu)\n", share,
                size_t(prop.sharedMemPerBlockOptin));
    return 1;
  }
  uint8_t* gu = dalloc<uint8_t>(size_t(kE) * kGuBytes);
  uint8_t* dn = dalloc<uint8_t>(size_t(kE) * kDnBytes);
  unsigned* bar = dalloc<unsigned>(1);
  uint32_t* sink = dalloc<uint32_t>(1);
  fill_bytes<<<1024, 256>>>(gu, size_t(kE) * kGuBytes, 1, 0, 0);
  fill_bytes<<<1024, 256>>>(dn, size_t(kE) * kDnBytes, 2, 0, 0);
  CK(cudaMemset(bar, 0, 4));
  CK(cudaDeviceSynchronize());
  Args a{gu, dn, 0, bar, 0, sink, share};
  std::printf("| mode | time | bytes | rate |\n|---|---|---|---|\n");
  run<kStream>("stream", a, sms, smem, double(kNu) * kGuBytes);
  run<kStage>("stage", a, sms, smem, double(total_dn));
  run<kBoth>("both", a, sms, smem, double(kNu) * (kGuBytes + kDnBytes));
  CK(cudaMemset(bar, 0, 4));
  CK(cudaDeviceSynchronize());
  run<kSkeleton>("skeleton", a, sms, smem, double(kNu) * (kGuBytes + kDnBytes));
  CK(cudaMemset(bar, 0, 4));
  CK(cudaDeviceSynchronize());
  constexpr int kBarriers = 16;
  unsigned launches = 0;
  const float us = time_us(
      [&](int) { barriers_only<<<sms, kThreads>>>(bar, launches++ * unsigned(sms) * kBarriers, kBarriers); }, 32);
  std::printf("| barrier | %7.2f us a barrier (%d a launch, %d blocks) |\n", us / kBarriers, kBarriers, sms);
  return 0;
}
