// attention_paged.cuh: the parameters shared by the paged-KV attention kernels (decode and prefill).
//
// RoPE++: with `imag`, every q head h yields out head 2h (real: q·k) and 2h+1 (imaginary:
// (−rot(q))·k = q·rot(k), rot(x) = cat(−x[d/2:], x[:d/2])), each with its own softmax over the same keys
// and values. One thread block serves all R = (n_q_heads / n_kv_heads) · (imag ? 2 : 1) query rows of
// one kv head from a single read of that head's K and V; the out heads of kv head kh are kh·R .. kh·R+R−1.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_check.cuh"

namespace ropepp {

constexpr int kAttentionMaxRows = 16;  // R = group size × (imag ? 2 : 1) per kv head
constexpr int kAttentionMaxHeadDim = 128;  // head_dim is 16, 32, 64 or 128 (check_attention_paged)

struct AttentionPagedLaunch {
  const float* q;                   // [n_tokens, n_q_heads, head_dim] (RoPE applied), row stride q_row_stride
  int q_row_stride;
  float* out;                       // [n_tokens, n_q_heads * (imag ? 2 : 1), head_dim], packed
  const __half* cache_k;            // this layer (f16): [n_blocks, n_kv_heads, block_size, head_dim]
  const __half* cache_v;            // this layer (f16): [n_blocks, n_kv_heads, block_size, head_dim]
  int n_blocks;
  int block_size;
  const int32_t* positions;         // [n_tokens]; token i attends to positions 0..positions[i] of its sequence
  const int32_t* seq_of_token;      // [n_tokens]
  const int32_t* block_table;       // [n_seqs, max_blocks_per_seq] physical block ids (-1 = unused)
  int max_blocks_per_seq;
  int n_tokens;
  int n_seqs;
  int max_pos;                      // host hint: max over tokens of positions[i] (sizes the context split)
  int n_q_heads;
  int n_kv_heads;
  int head_dim;                     // 16, 32, 64 or 128
  bool imag;
  float scale;                      // softmax scale, usually 1 / sqrt(head_dim)
  bool pdl = false;                 // decode kernel: programmatic dependent launch (prologue overlaps the
                                    // previous kernel's tail; it waits before reading q and the cache)
  bool history_cached = false;      // decode: the cache rows before each token's position were written before
                                    // the previous kernel started (BatchView::history_cached): the tensor-core
                                    // kernel loads them before it waits
  // Prefill kernels only: when set, the output goes here in 16 bits (f16, or bf16 with out_half_bf16) instead of
  // `out` (same layout, packed): the input of the o_proj GEMM, written without an fp32 round trip.
  void* out_half = nullptr;
  bool out_half_bf16 = false;
};

inline int attention_rows_per_kv_head(const AttentionPagedLaunch& p) {
  return p.n_q_heads / p.n_kv_heads * (p.imag ? 2 : 1);
}

// Checks the configuration the kernels support; throws Error naming the field otherwise.
inline void check_attention_paged(const AttentionPagedLaunch& p, const char* op) {
  if (p.head_dim != 16 && p.head_dim != 32 && p.head_dim != 64 && p.head_dim != 128)
    cuda_unsupported(op, "head_dim", p.head_dim, "16, 32, 64, 128");
  if (p.n_kv_heads <= 0 || p.n_q_heads <= 0 || p.n_q_heads % p.n_kv_heads != 0)
    cuda_unsupported(op, "n_q_heads (must be a positive multiple of n_kv_heads)", p.n_q_heads,
                     "multiples of n_kv_heads");
  const int rows = attention_rows_per_kv_head(p);
  if (rows > kAttentionMaxRows)
    cuda_unsupported(op, "query rows per kv head (n_q_heads / n_kv_heads * (imag ? 2 : 1))", rows, "1..16");
  if (p.block_size <= 0) cuda_unsupported(op, "block_size", p.block_size, "positive sizes");
}

}  // namespace ropepp
