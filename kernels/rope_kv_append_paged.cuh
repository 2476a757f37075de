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
// The pair (a, b) = (x[j], x[j + half]) of head `head` (of q|k|v) of one token, given its RoPE factors (c, s) and
// its cache slot `slot` (element offset of (block, kv head 0, position in block, dim 0); negative: the token is
// not cached): q and k rotated, stored to the token's qkv `row`; k and v also to the cache as f16 (saturated).
__device__ __forceinline__ void store_rotated_pair(int n_q_heads, int n_kv_heads, int block_size, int head_dim,
                                                   int head, int j, float a, float b, float c, float s, float* row,
                                                   f16* cache_k, f16* cache_v, long long slot) {
  const int half = head_dim / 2;
  if (head < n_q_heads + n_kv_heads) {  // q or k: rotate
    const float ra = a * c - b * s, rb = b * c + a * s;
    a = ra, b = rb;
  }
  float* x = row + size_t(head) * head_dim + j;
  x[0] = a;
  x[half] = b;
  if (head < n_q_heads || slot < 0) return;
  const bool is_k = head < n_q_heads + n_kv_heads;
  const int kvh = head - n_q_heads - (is_k ? 0 : n_kv_heads);
  const size_t dst = size_t(slot) + size_t(kvh) * block_size * head_dim + j;
  f16* cache = is_k ? cache_k : cache_v;
  cache[dst] = from_float<f16>(a);
  cache[dst + half] = from_float<f16>(b);
}

// The cache slot of token i (see store_rotated_pair); -1 when its block-table entry is missing (such a token is
// not written to the cache, as in kv_append_paged.cu).
__device__ __forceinline__ long long rope_kv_slot(const RopeKvAppendLaunch& p, int i) {
  const int pos = p.positions[i];
  const int blk = p.block_table[size_t(p.seq_of_token[i]) * p.max_blocks_per_seq + pos / p.block_size];
  if (blk < 0 || blk >= p.n_blocks) return -1;
  return (static_cast<long long>(blk) * p.n_kv_heads * p.block_size + pos % p.block_size) * p.head_dim;
}

// The RoPE factors (cos, sin) of pair j of head `head` at position `pos`: (1, 0) for v heads (not rotated).
__device__ __forceinline__ float2 rope_pair_factors(const RopeKvAppendLaunch& p, int pos, int head, int j) {
  const size_t t = size_t(pos) * (p.head_dim / 2) + j;
  return head < p.n_q_heads + p.n_kv_heads ? make_float2(p.cos[t], p.sin[t]) : make_float2(1.f, 0.f);
}

// The pair (a, b) of head `head` with the factors cs (rope_pair_factors) and cache slot `slot` (rope_kv_slot; read
// only for k and v heads): store_rotated_pair.
__device__ __forceinline__ void rope_kv_store_pair_cs(const RopeKvAppendLaunch& p, float2 cs, long long slot, int head,
                                                      int j, float a, float b, float* row) {
  store_rotated_pair(p.n_q_heads, p.n_kv_heads, p.block_size, p.head_dim, head, j, a, b, cs.x, cs.y, row, p.cache_k,
                     p.cache_v, head < p.n_q_heads ? -1 : slot);
}

// The same at position `pos`, the factors looked up.
__device__ __forceinline__ void rope_kv_store_pair_at(const RopeKvAppendLaunch& p, int pos, long long slot, int head,
                                                      int j, float a, float b, float* row) {
  rope_kv_store_pair_cs(p, rope_pair_factors(p, pos, head, j), slot, head, j, a, b, row);
}

// The pair (a, b) of head `head` of token i, its position and slot looked up (rope_kv_append_paged.cu; the matvec's
// RopeKv epilogue reads them before its PDL wait and calls rope_kv_store_pair_at).
__device__ __forceinline__ void rope_kv_store_pair(const RopeKvAppendLaunch& p, int i, int head, int j, float a,
                                                   float b, float* row) {
  rope_kv_store_pair_at(p, p.positions[i], head < p.n_q_heads ? -1 : rope_kv_slot(p, i), head, j, a, b, row);
}
#endif

}  // namespace ropepp
