// RMSNorm and RoPE + KV-cache write.
//   rmsnorm:        one block per token row; fp32 sum of squares, out = bf16(w * x * rsqrt(mean + eps)) and,
//                   when asked, the bf16 rounding residual out_lo. Rows of a multiple of 4 up to 4096 wide: each
//                   thread's float4s loaded at once and held for the second pass (the scalar loop re-read x
//                   and had one 4-byte load a thread in flight: 24 us a norm at 2048 x 2880 on the H200, half the
//                   byte rate); other widths the scalar loop.
//   rope_kv_write:  one block per token; a thread per (head, frequency) pair rotates q and k (half-split / NeoX
//                   layout), then the k and v heads go to the cache slot as bf16.
#include "common.cuh"
#include "norm_rope.h"

namespace hm::cuda {
namespace {

// The block's sum of every thread's v: the warp's butterfly, then the warps in order (one fixed order: the same
// bits for the same blockDim). Two barriers; every thread gets the sum.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float red[32];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float s = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    s = warp_sum(s);
    if (threadIdx.x == 0) red[0] = s;
  }
  __syncthreads();
  return red[0];
}

__global__ void rmsnorm_rows(const float* __restrict__ x, const int32_t* __restrict__ rows,
                             const uint16_t* __restrict__ w, uint16_t* __restrict__ out,
                             uint16_t* __restrict__ out_lo, int H, float eps) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  const float* row = x + size_t(rows ? rows[t] : t) * H;
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) ss += row[i] * row[i];
  const float r = rsqrtf(block_sum(ss) / H + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    const float y = bf2f_bits(w[i]) * (row[i] * r);
    const __nv_bfloat16 hi = __float2bfloat16(y);
    out[size_t(t) * H + i] = __bfloat16_as_ushort(hi);
    if (out_lo) out_lo[size_t(t) * H + i] = __bfloat16_as_ushort(__float2bfloat16(y - __bfloat162float(hi)));
  }
}

// Rows of H = 4 n4 floats (n4 <= V blockDim.x): thread i holds float4s i, i + blockDim.x, ... The sum of squares
// runs over a thread's float4s in order, then the warp's butterfly, then the warps in order (its own fixed order,
// as the fused GEMV norm's; not the scalar loop's bits).
template <int V>
__global__ void rmsnorm_rows4(const float* __restrict__ x, const int32_t* __restrict__ rows,
                              const uint16_t* __restrict__ w, uint16_t* __restrict__ out,
                              uint16_t* __restrict__ out_lo, int H, float eps) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x, n4 = H >> 2;
  const float4* row = reinterpret_cast<const float4*>(x + size_t(rows ? rows[t] : t) * H);
  float4 v[V];
#pragma unroll
  for (int j = 0; j < V; j++) {
    const int c = threadIdx.x + j * blockDim.x;
    v[j] = c < n4 ? __ldg(row + c) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < V; j++) ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  const float r = rsqrtf(block_sum(ss) / H + eps);
  const uint2* w2 = reinterpret_cast<const uint2*>(w);
  uint2* o2 = reinterpret_cast<uint2*>(out + size_t(t) * H);
  uint2* l2 = out_lo ? reinterpret_cast<uint2*>(out_lo + size_t(t) * H) : nullptr;
#pragma unroll
  for (int j = 0; j < V; j++) {
    const int c = threadIdx.x + j * blockDim.x;
    if (c >= n4) break;
    const uint2 wv = __ldg(w2 + c);
    const float xs[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
    const uint32_t ws[4] = {wv.x & 0xFFFFu, wv.x >> 16, wv.y & 0xFFFFu, wv.y >> 16};
    uint32_t hi[4], lo[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const float y = bf2f_bits(uint16_t(ws[e])) * (xs[e] * r);
      const __nv_bfloat16 h = __float2bfloat16(y);
      hi[e] = __bfloat16_as_ushort(h);
      lo[e] = __bfloat16_as_ushort(__float2bfloat16(y - __bfloat162float(h)));
    }
    o2[c] = make_uint2(hi[0] | (hi[1] << 16), hi[2] | (hi[3] << 16));
    if (l2) l2[c] = make_uint2(lo[0] | (lo[1] << 16), lo[2] | (lo[3] << 16));
  }
}

__global__ void rope_kv(float* __restrict__ qkv, const int32_t* __restrict__ pos, const int32_t* __restrict__ slot,
                        const float* __restrict__ inv_freq, float attn_factor, uint16_t* __restrict__ k_cache,
                        uint16_t* __restrict__ v_cache, int nq, int nkv, int D) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  const int half = D / 2;
  const int width = (nq + 2 * nkv) * D;
  float* row = qkv + size_t(t) * width;
  const float p = float(pos[t]);
  // q and k heads are contiguous: rotate nq + nkv heads.
  for (int i = threadIdx.x; i < (nq + nkv) * half; i += blockDim.x) {
    const int h = i / half, f = i % half;
    float s, c;
    sincosf(p * inv_freq[f], &s, &c);
    c *= attn_factor;
    s *= attn_factor;
    float* hx = row + h * D;
    const float x1 = hx[f], x2 = hx[f + half];
    hx[f] = x1 * c - x2 * s;
    hx[f + half] = x2 * c + x1 * s;
  }
  __syncthreads();
  const int sl = slot[t];
  if (sl < 0) return;
  const float* k = row + nq * D;
  const float* v = k + nkv * D;
  uint16_t* kc = k_cache + size_t(sl) * nkv * D;
  uint16_t* vc = v_cache + size_t(sl) * nkv * D;
  for (int i = threadIdx.x; i < nkv * D; i += blockDim.x) {
    kc[i] = __bfloat16_as_ushort(__float2bfloat16(k[i]));
    vc[i] = __bfloat16_as_ushort(__float2bfloat16(v[i]));
  }
}

}  // namespace

void rmsnorm(const RmsNormParams& p, cudaStream_t stream) {
  HM_REQUIRE(p.x && p.w && p.out, "rmsnorm");
  HM_REQUIRE(p.T >= 0 && p.H > 0, "rmsnorm");
  if (p.T == 0) return;
  const int n4 = p.H / 4;
  const bool vec = p.H % 4 == 0 && n4 <= 4 * 256 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.w) % 8 == 0 && reinterpret_cast<uintptr_t>(p.out) % 8 == 0 &&
                   reinterpret_cast<uintptr_t>(p.out_lo) % 8 == 0;
  if (!vec) {
    launch(rmsnorm_rows, dim3(p.T), dim3(256), 0, stream, p.pdl, p.x, p.rows, p.w, p.out, p.out_lo, p.H, p.eps);
    return;
  }
  // The fewest float4s a thread (at most 4) with up to 256 threads, the threads a multiple of 32 (2880: 3 x 240).
  const int V = ceil_div(n4, 256);
  const int threads = ceil_div(ceil_div(n4, V), 32) * 32;
  switch (V) {
    case 1: return launch(rmsnorm_rows4<1>, dim3(p.T), dim3(threads), 0, stream, p.pdl, p.x, p.rows, p.w, p.out, p.out_lo, p.H, p.eps);
    case 2: return launch(rmsnorm_rows4<2>, dim3(p.T), dim3(threads), 0, stream, p.pdl, p.x, p.rows, p.w, p.out, p.out_lo, p.H, p.eps);
    case 3: return launch(rmsnorm_rows4<3>, dim3(p.T), dim3(threads), 0, stream, p.pdl, p.x, p.rows, p.w, p.out, p.out_lo, p.H, p.eps);
    default: return launch(rmsnorm_rows4<4>, dim3(p.T), dim3(threads), 0, stream, p.pdl, p.x, p.rows, p.w, p.out, p.out_lo, p.H, p.eps);
  }
}

void rope_kv_write(const RopeKvParams& p, cudaStream_t stream) {
  HM_REQUIRE(p.qkv && p.pos && p.slot && p.inv_freq && p.k_cache && p.v_cache, "rope_kv_write");
  HM_REQUIRE(p.T >= 0 && p.nq > 0 && p.nkv > 0 && p.nq % p.nkv == 0 && p.D > 0 && p.D % 2 == 0, "rope_kv_write");
  if (p.T == 0) return;
  launch(rope_kv, dim3(p.T), dim3(256), 0, stream, p.pdl, p.qkv, p.pos, p.slot, p.inv_freq, p.attn_factor,
         p.k_cache, p.v_cache, p.nq, p.nkv, p.D);
}

}  // namespace hm::cuda
