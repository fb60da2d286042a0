// Playground copy of the prefill GEMM v2 (not used by the launchers): measured on the H100 (NOTES.md, run 3) it
// matched v1 bit for bit and was no faster (2393 vs 2446 us at 2048 tokens, E=32; 1819 vs 1678 us at 64 tokens,
// E=128), so v1 stays in kernels/. Kept as the starting point for the next prefill version.
#pragma once
#include "moe_impl.cuh"

namespace hm::cuda::moe {
namespace {

// v2 of the MXFP4 grouped GEMM (moe_grouped_gemm in moe_impl.cuh is v1): the raw operands stream through a kStages-deep cp.async ring (A: 64 rows x 64 B,
// B: 128 rows x 16 B of MXFP4 per k-tile), so a block keeps (kStages - 1) k-tiles of bytes in flight instead of
// one; the block's E8M0 scales are copied to shared memory once; each k-tile's B is decoded (natural column
// order) into one bf16 tile between two barriers. For few rows per expert the GEMM streams weights, and v1's
// single register-staged k-tile left it latency-bound.
constexpr int kStages = 4;
constexpr int kMaxKb = 128;  // K <= 4096 for v2 (the scale panel is 128 rows x K/32 bytes)
constexpr size_t kGemm2Smem = size_t(kStages) * (kBM * kLDS * 2 + kBN * 16) + size_t(kBN) * kLDS * 2 + size_t(kBN) * kMaxKb;

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// Natural-order decode of one 32-bit word (columns 8i..8i+7): pairs (c0,c1) (c2,c3) (c4,c5) (c6,c7) x factor.
__device__ __forceinline__ void decode_word_natural(uint32_t w, uint32_t f, uint32_t* p) {
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const uint32_t b = w >> (8 * j);
    const uint32_t v = ((b << 6) & 0x1C0u) | ((b << 12) & 0x8000u) | ((b << 18) & 0x01C00000u) | ((b << 24) & 0x80000000u);
    p[j] = bf16x2_mul(v, f);
  }
}

template <bool GATE_UP>
__global__ void __launch_bounds__(256) moe_grouped_gemm_mxfp4_v2(GemmArgs a) {
  extern __shared__ __align__(16) uint8_t smem[];
  auto As = reinterpret_cast<uint16_t(*)[kBM][kLDS]>(smem);                                  // [kStages]
  auto Braw = reinterpret_cast<uint8_t(*)[kBN][16]>(smem + size_t(kStages) * kBM * kLDS * 2);  // [kStages]
  auto Bs = reinterpret_cast<uint16_t(*)[kLDS]>(smem + size_t(kStages) * (kBM * kLDS * 2 + kBN * 16));
  uint8_t* sc = smem + size_t(kStages) * (kBM * kLDS * 2 + kBN * 16) + size_t(kBN) * kLDS * 2;  // [kBN][kb]
  pdl_wait();
  pdl_trigger();
  if (int(blockIdx.y) >= *a.ws.num_tiles) return;
  const int e = a.ws.tile_e[blockIdx.y], m0 = a.ws.tile_r0[blockIdx.y], m_end = a.ws.offsets[e + 1];
  const int N = a.W.rows, K = a.W.K, kb = K >> 5, KT = kb, n0 = blockIdx.x * kBN;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;

  // A copy: row tid/4, 16 bytes (tid%4) of each k-tile. B copy: threads 0..127, one weight row each.
  const int ar = tid >> 2, ac = (tid & 3) * 8;
  const bool a_ok = m0 + ar < m_end;
  const uint16_t* a_src = a.A;
  if (a_ok) a_src += size_t(GATE_UP ? a.ws.perm[m0 + ar] / a.k : m0 + ar) * a.lda;
  const bool b_ok = tid < kBN && n0 + tid < N;
  const uint8_t* b_src = static_cast<const uint8_t*>(a.W.data) + (size_t(e) * N + n0 + (b_ok ? tid : 0)) * kb * 16;
  auto issue = [&](int kt) {
    if (kt < KT) {
      const int st = kt % kStages;
      cp_async16(&As[st][ar][ac], a_ok ? a_src + kt * kBK + ac : a.A, a_ok);
      if (tid < kBN) cp_async16(&Braw[st][tid][0], b_ok ? b_src + kt * 16 : b_src, b_ok);
    }
    cp_async_commit();
  };
  for (int s = 0; s < kStages - 1; s++) issue(s);
  // The block's scales, [kBN][kb], once.
  for (int i = tid; i < kBN * kb; i += 256) {
    const int r = i / kb, c = i - r * kb;
    sc[i] = n0 + r < N ? a.W.scales[(size_t(e) * N + n0 + r) * kb + c] : uint8_t(127);
  }

  float acc[2][4][4] = {};
  const int br = tid >> 1, bh = tid & 1;
  for (int kt = 0; kt < KT; kt++) {
    const int st = kt % kStages;
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt landed for every thread; the previous k-tile's mma are done with Bs
    {
      const uint2 q = *reinterpret_cast<const uint2*>(&Braw[st][br][bh * 8]);
      const uint32_t f = mx_factor(sc[br * kb + kt]);
      uint32_t p[8];
      decode_word_natural(q.x, f, p);
      decode_word_natural(q.y, f, p + 4);
      *reinterpret_cast<uint4*>(&Bs[br][bh * 16]) = make_uint4(p[0], p[1], p[2], p[3]);
      *reinterpret_cast<uint4*>(&Bs[br][bh * 16 + 8]) = make_uint4(p[4], p[5], p[6], p[7]);
    }
    issue(kt + kStages - 1);  // into the slot of k-tile kt - 1, finished before the barrier above
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[2][4], bfr[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; mi++) ldsm_x4(af[mi], &As[st][wm * 32 + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
      for (int nb = 0; nb < 2; nb++)
        ldsm_x4(bfr[nb], &Bs[wn * 32 + nb * 16 + (lane >> 4) * 8 + (lane & 7)][kk + ((lane >> 3) & 1) * 8]);
#pragma unroll
      for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int nj = 0; nj < 4; nj++)
          mma16816(acc[mi][nj], af[mi][0], af[mi][1], af[mi][2], af[mi][3], bfr[nj >> 1][(nj & 1) * 2],
                   bfr[nj >> 1][(nj & 1) * 2 + 1]);
    }
  }
  cp_async_wait<0>();

  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int row = m0 + wm * 32 + mi * 16 + g + 8 * h;
      if (row >= m_end) continue;
      const float wr = a.weights[a.ws.perm[row]];
#pragma unroll
      for (int nj = 0; nj < 4; nj++) {
        const int col = n0 + wn * 32 + nj * 8 + 2 * t;
        if (col >= N) continue;
        const float v0 = acc[mi][nj][2 * h] * kTwoPow63, v1 = acc[mi][nj][2 * h + 1] * kTwoPow63;
        const uint16_t* bias = a.W.bias + size_t(e) * N;
        if constexpr (GATE_UP) {
          const float gate = v0 + bf2f_bits(bias[col]), up = v1 + bf2f_bits(bias[col + 1]);
          a.ws.act[size_t(row) * (N >> 1) + (col >> 1)] = f2bf_bits(swiglu1(gate, up, a.limit) * wr);
        } else {
          const float2 o = make_float2(v0 + wr * bf2f_bits(bias[col]), v1 + wr * bf2f_bits(bias[col + 1]));
          *reinterpret_cast<float2*>(a.ws.out + size_t(row) * N + col) = o;
        }
      }
    }
}

}  // namespace
}  // namespace hm::cuda::moe
