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
    float* row = p.qkv + size_t(i) * heads * p.head_dim;
    const float* xh = row + size_t(h) * p.head_dim;
    rope_kv_store_pair(p, i, h, j, xh[j], xh[j + half], row);
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
