// rope_kv_append_paged.cu: one thread per (token, head of q|k|v, j < head_dim/2). q heads: the pair
// (x[j], x[j + half]) rotated in place; k heads: rotated in place and written to the cache as f16 (saturated
// to ±65504); v heads: the pair written to the cache. A token whose block-table entry is missing is not
// written to the cache (as in kv_append_paged.cu).
#include <algorithm>

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
    const int pos = p.positions[i];
    float* xh = p.qkv + size_t(i) * heads * p.head_dim + size_t(h) * p.head_dim;
    float a = xh[j], b = xh[j + half];
    if (h < p.n_q_heads + p.n_kv_heads) {  // q or k: rotate
      const size_t t = size_t(pos) * half + j;
      const float c = p.cos[t], s = p.sin[t];
      const float ra = a * c - b * s, rb = b * c + a * s;
      xh[j] = a = ra;
      xh[j + half] = b = rb;
      if (h < p.n_q_heads) continue;
    }
    const int blk = p.block_table[size_t(p.seq_of_token[i]) * p.max_blocks_per_seq + pos / p.block_size];
    if (blk < 0 || blk >= p.n_blocks) continue;
    const bool is_k = h < p.n_q_heads + p.n_kv_heads;
    const int kvh = h - p.n_q_heads - (is_k ? 0 : p.n_kv_heads);
    const size_t dst = ((size_t(blk) * p.n_kv_heads + kvh) * p.block_size + pos % p.block_size) * p.head_dim + j;
    f16* cache = is_k ? p.cache_k : p.cache_v;
    cache[dst] = from_float<f16>(a);
    cache[dst + half] = from_float<f16>(b);
  }
}

}  // namespace

void launch_rope_kv_append_paged(const RopeKvAppendLaunch& p, cudaStream_t stream) {
  if (p.head_dim % 2 != 0) cuda_unsupported("rope_kv_append", "head_dim (must be even)", p.head_dim, "even sizes");
  const size_t total = size_t(p.n) * (p.n_q_heads + 2 * p.n_kv_heads) * (p.head_dim / 2);
  if (total == 0) return;
  const int blocks = int(std::min<size_t>((total + 255) / 256, 65535 * 4));
  rope_kv_append_paged_f16<<<blocks, 256, 0, stream>>>(p);
  CUDA_CHECK_LAUNCH("rope_kv_append_paged_f16");
}

}  // namespace ropepp
