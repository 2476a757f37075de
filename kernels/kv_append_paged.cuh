// kv_append_paged.cuh: write each token's k/v rows (fp32) into its slot of the paged f16 KV cache.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ropepp {

struct KvAppendPagedLaunch {
  const float* k;                 // [n, n_kv_heads, head_dim], row stride `row_stride` floats
  const float* v;                 // [n, n_kv_heads, head_dim], row stride `row_stride` floats
  int row_stride;
  __half* cache_k;                // this layer: [n_blocks, n_kv_heads, block_size, head_dim]
  __half* cache_v;                // this layer: [n_blocks, n_kv_heads, block_size, head_dim]
  int n_blocks;
  int n_kv_heads;
  int block_size;
  int head_dim;
  const int32_t* positions;       // [n]
  const int32_t* seq_of_token;    // [n]
  const int32_t* block_table;     // [n_seqs, max_blocks_per_seq]
  int max_blocks_per_seq;
  int n;
};

void launch_kv_append_paged(const KvAppendPagedLaunch& p, cudaStream_t stream);

}  // namespace ropepp
