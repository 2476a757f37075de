// rope_kv_append_paged.cu: one thread per (token, head of q|k|v, j < head_dim/2). q heads: the pair
// (x[j], x[j + half]) rotated in place; k heads: rotated in place and written to the cache as f16 (saturated
// to ±65504); v heads: the pair written to the cache. A token whose block-table entry is missing is not
// written to the cache (as in kv_append_paged.cu).
#include <algorithm>
#include <cstdint>

#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "rope_kv_append_paged.cuh"

namespace ropepp {
namespace {

__global__ void rope_kv_append_paged_f16(RopeKvAppendLaunch p) {
  pdl_launch_dependents();
  const int half = p.head_dim / 2;
  const int heads = p.n_q_heads + 2 * p.n_kv_heads;
  const size_t total = size_t(p.n) * heads * half;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    const int j = int(idx % half);
    const int h = int((idx / half) % heads);
    const int i = int(idx / (size_t(half) * heads));
    float* row = p.qkv + size_t(i) * heads * p.head_dim;
    const float* xh = row + size_t(h) * p.head_dim;
    rope_kv_store_pair(p, i, h, j, xh[j], xh[j + half], row);
  }
}

// 4 f16 of (a, b, c, d), saturated, as 8 bytes.
__device__ __forceinline__ uint2 f16x4(float a, float b, float c, float d) {
  return make_uint2(pack_f16x2(a, b), pack_f16x2(c, d));
}

// One block per token, each thread four consecutive pairs (j .. j + 3 of a head) with 16-byte loads and stores,
// 32-bit index math, the token's position and cache slot looked up once per thread: the prefill's version (the
// one-pair kernel above spent most of its time in 64-bit index divisions and 4-byte accesses). v heads are not
// stored back to the row (unchanged). Needs head_dim % 8 == 0 (the launcher checks).
__global__ void rope_kv_append_paged_f16_x4(RopeKvAppendLaunch p) {
  pdl_launch_dependents();
  const int i = blockIdx.x;
  const int half = p.head_dim / 2, quads = half / 4;
  const int heads = p.n_q_heads + 2 * p.n_kv_heads;
  float* row = p.qkv + size_t(i) * heads * p.head_dim;
  const int pos = p.positions[i];
  const float* cs = p.cos + size_t(pos) * half;
  const float* sn = p.sin + size_t(pos) * half;
  const long long slot = rope_kv_slot(p, i);
  for (int u = threadIdx.x; u < heads * quads; u += blockDim.x) {
    const int h = u / quads, j = (u - h * quads) * 4;
    float* x = row + size_t(h) * p.head_dim + j;
    float4 a = *reinterpret_cast<const float4*>(x), b = *reinterpret_cast<const float4*>(x + half);
    const bool is_v = h >= p.n_q_heads + p.n_kv_heads;
    if (!is_v) {  // q or k: rotate and store back
      const float4 c = *reinterpret_cast<const float4*>(cs + j), s = *reinterpret_cast<const float4*>(sn + j);
      const float4 ra = make_float4(a.x * c.x - b.x * s.x, a.y * c.y - b.y * s.y, a.z * c.z - b.z * s.z,
                                    a.w * c.w - b.w * s.w);
      const float4 rb = make_float4(b.x * c.x + a.x * s.x, b.y * c.y + a.y * s.y, b.z * c.z + a.z * s.z,
                                    b.w * c.w + a.w * s.w);
      a = ra, b = rb;
      *reinterpret_cast<float4*>(x) = a;
      *reinterpret_cast<float4*>(x + half) = b;
    }
    if (h < p.n_q_heads || slot < 0) continue;
    const int kvh = h - p.n_q_heads - (is_v ? p.n_kv_heads : 0);
    f16* cache = (is_v ? p.cache_v : p.cache_k) + size_t(slot) + size_t(kvh) * p.block_size * p.head_dim + j;
    *reinterpret_cast<uint2*>(cache) = f16x4(a.x, a.y, a.z, a.w);
    *reinterpret_cast<uint2*>(cache + half) = f16x4(b.x, b.y, b.z, b.w);
  }
}

}  // namespace

void launch_rope_kv_append_paged(const RopeKvAppendLaunch& p, cudaStream_t stream) {
  if (p.head_dim % 2 != 0) cuda_unsupported("rope_kv_append", "head_dim (must be even)", p.head_dim, "even sizes");
  const int heads = p.n_q_heads + 2 * p.n_kv_heads;
  const size_t total = size_t(p.n) * heads * (p.head_dim / 2);
  if (total == 0) return;
  // 16-byte accesses: rows, cos/sin rows and cache slots stay 16-byte (8-byte for f16) aligned when head_dim % 8 == 0.
  const bool aligned = (reinterpret_cast<uintptr_t>(p.qkv) & 15u) == 0 && (reinterpret_cast<uintptr_t>(p.cos) & 15u) == 0 &&
                       (reinterpret_cast<uintptr_t>(p.sin) & 15u) == 0;
  if (p.head_dim % 8 == 0 && aligned) {
    const int threads = std::min(256, (heads * p.head_dim / 8 + 31) / 32 * 32);
    rope_kv_append_paged_f16_x4<<<p.n, threads, 0, stream>>>(p);
    CUDA_CHECK_LAUNCH("rope_kv_append_paged_f16_x4");
    return;
  }
  const int blocks = int(std::min<size_t>((total + 255) / 256, 65535 * 4));
  rope_kv_append_paged_f16<<<blocks, 256, 0, stream>>>(p);
  CUDA_CHECK_LAUNCH("rope_kv_append_paged_f16");
}

}  // namespace ropepp
