// kv_append_paged.cu: one thread per (token, kv head, element pair); rounds fp32 to f16 (nearest even,
// saturated to ±65504: a value beyond the f16 range is stored as ±65504, never inf).
// A token whose block-table entry is missing (-1 or >= n_blocks) is skipped: the host-side KV cache
// guarantees that every appended position has a block.
#include <algorithm>

#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "kv_append_paged.cuh"

namespace ropepp {
namespace {

__global__ void kv_append_paged_f16(KvAppendPagedLaunch p) {
  const int half = p.head_dim / 2;
  const size_t total = size_t(p.n) * p.n_kv_heads * half;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    const int j = int(idx % half) * 2;
    const int h = int((idx / half) % p.n_kv_heads);
    const int i = int(idx / (size_t(half) * p.n_kv_heads));
    const int pos = p.positions[i];
    const int blk = p.block_table[size_t(p.seq_of_token[i]) * p.max_blocks_per_seq + pos / p.block_size];
    if (blk < 0 || blk >= p.n_blocks) continue;
    const size_t dst =
        ((size_t(blk) * p.n_kv_heads + h) * p.block_size + pos % p.block_size) * p.head_dim + j;
    const size_t src = size_t(i) * p.row_stride + size_t(h) * p.head_dim + j;
    *reinterpret_cast<uint32_t*>(p.cache_k + dst) = pack_f16x2(p.k[src], p.k[src + 1]);
    *reinterpret_cast<uint32_t*>(p.cache_v + dst) = pack_f16x2(p.v[src], p.v[src + 1]);
  }
}

}  // namespace

void launch_kv_append_paged(const KvAppendPagedLaunch& p, cudaStream_t stream) {
  if (p.head_dim % 2 != 0) cuda_unsupported("kv_append", "head_dim (must be even)", p.head_dim, "even sizes");
  const size_t total = size_t(p.n) * p.n_kv_heads * (p.head_dim / 2);
  if (total == 0) return;
  const int blocks = int(std::min<size_t>((total + 255) / 256, 65535 * 4));
  kv_append_paged_f16<<<blocks, 256, 0, stream>>>(p);
  CUDA_CHECK_LAUNCH("kv_append_paged_f16");
}

}  // namespace ropepp
