// rope_kv_append_paged.cuh: RoPE (rotate_half) on the q and k heads of fused qkv rows, in place, and each
// token's rotated k and its v written into its slot of the paged f16 KV cache: rope + kv_append of a prefill
// chunk in one kernel (a decode step does it in the qkv matvec's epilogue, matvec.cuh). The cache and batch fields are kv_append's (its k, v and row_stride are unused here).
#pragma once

#include "kv_append_paged.cuh"
#ifdef __CUDACC__
#include "device_utils.cuh"
#endif

namespace ropepp {

struct RopeKvAppendLaunch : KvAppendPagedLaunch {
  float* qkv = nullptr;           // [n, (n_q_heads + 2·n_kv_heads)·head_dim]: q heads, k heads, v heads
  int n_q_heads = 0;
  const float* cos = nullptr;     // [max_pos + 1, head_dim / 2]
  const float* sin = nullptr;     // [max_pos + 1, head_dim / 2]
};

void launch_rope_kv_append_paged(const RopeKvAppendLaunch& p, cudaStream_t stream);

#ifdef __CUDACC__
// The pair (a, b) = (x[j], x[j + half]) of head `head` (of q|k|v) of token i: q and k heads rotated by RoPE
// and stored to `row` (the token's qkv row), v stored as is; k and v also written to the token's cache slot
// as f16 (saturated to ±65504); a token whose block-table entry is missing is not written to the cache (as in
// kv_append_paged.cu). Shared by rope_kv_append_paged.cu and the matvec's RopeKv epilogue.
__device__ __forceinline__ void rope_kv_store_pair(const RopeKvAppendLaunch& p, int i, int head, int j, float a,
                                                   float b, float* row) {
  const int half = p.head_dim / 2;
  const int pos = p.positions[i];
  if (head < p.n_q_heads + p.n_kv_heads) {  // q or k: rotate
    const size_t t = size_t(pos) * half + j;
    const float c = p.cos[t], s = p.sin[t];
    const float ra = a * c - b * s, rb = b * c + a * s;
    a = ra, b = rb;
  }
  float* x = row + size_t(head) * p.head_dim + j;
  x[0] = a;
  x[half] = b;
  if (head < p.n_q_heads) return;
  const int blk = p.block_table[size_t(p.seq_of_token[i]) * p.max_blocks_per_seq + pos / p.block_size];
  if (blk < 0 || blk >= p.n_blocks) return;
  const bool is_k = head < p.n_q_heads + p.n_kv_heads;
  const int kvh = head - p.n_q_heads - (is_k ? 0 : p.n_kv_heads);
  const size_t dst = ((size_t(blk) * p.n_kv_heads + kvh) * p.block_size + pos % p.block_size) * p.head_dim + j;
  f16* cache = is_k ? p.cache_k : p.cache_v;
  cache[dst] = from_float<f16>(a);
  cache[dst + half] = from_float<f16>(b);
}
#endif

}  // namespace ropepp
