// rope_kv_append_paged.cuh: RoPE (rotate_half) on the q and k heads of fused qkv rows, in place, and each
// token's rotated k and its v written into its slot of the paged f16 KV cache: rope + kv_append of a decode
// step in one kernel. The cache and batch fields are kv_append's (its k, v and row_stride are unused here).
#pragma once

#include "kv_append_paged.cuh"

namespace ropepp {

struct RopeKvAppendLaunch : KvAppendPagedLaunch {
  float* qkv = nullptr;           // [n, (n_q_heads + 2·n_kv_heads)·head_dim]: q heads, k heads, v heads
  int n_q_heads = 0;
  const float* cos = nullptr;     // [max_pos + 1, head_dim / 2]
  const float* sin = nullptr;     // [max_pos + 1, head_dim / 2]
};

void launch_rope_kv_append_paged(const RopeKvAppendLaunch& p, cudaStream_t stream);

}  // namespace ropepp
