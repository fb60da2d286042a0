// RMSNorm and RoPE + KV-cache write.
//   rmsnorm:        one block per token row; fp32 sum of squares, out = bf16(w * x * rsqrt(mean + eps)) and,
//                   when asked, the bf16 rounding residual out_lo.
//   rope_kv_write:  one block per token; a thread per (head, frequency) pair rotates q and k (half-split / NeoX
//                   layout), then the k and v heads go to the cache slot as bf16.
#include "common.cuh"
#include "norm_rope.h"

namespace hm::cuda {
namespace {

__global__ void rmsnorm_rows(const float* __restrict__ x, const int32_t* __restrict__ rows,
                             const uint16_t* __restrict__ w, uint16_t* __restrict__ out,
                             uint16_t* __restrict__ out_lo, int H, float eps) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  const float* row = x + size_t(rows ? rows[t] : t) * H;
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) ss += row[i] * row[i];
  __shared__ float red[32];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  const float r = rsqrtf(red[0] / H + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    const float y = bf2f_bits(w[i]) * (row[i] * r);
    const __nv_bfloat16 hi = __float2bfloat16(y);
    out[size_t(t) * H + i] = __bfloat16_as_ushort(hi);
    if (out_lo) out_lo[size_t(t) * H + i] = __bfloat16_as_ushort(__float2bfloat16(y - __bfloat162float(hi)));
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
  launch(rmsnorm_rows, dim3(p.T), dim3(256), 0, stream, p.pdl, p.x, p.rows, p.w, p.out, p.out_lo, p.H, p.eps);
}

void rope_kv_write(const RopeKvParams& p, cudaStream_t stream) {
  HM_REQUIRE(p.qkv && p.pos && p.slot && p.inv_freq && p.k_cache && p.v_cache, "rope_kv_write");
  HM_REQUIRE(p.T >= 0 && p.nq > 0 && p.nkv > 0 && p.nq % p.nkv == 0 && p.D > 0 && p.D % 2 == 0, "rope_kv_write");
  if (p.T == 0) return;
  launch(rope_kv, dim3(p.T), dim3(256), 0, stream, p.pdl, p.qkv, p.pos, p.slot, p.inv_freq, p.attn_factor,
         p.k_cache, p.v_cache, p.nq, p.nkv, p.D);
}

}  // namespace hm::cuda
