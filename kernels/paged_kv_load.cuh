// paged_kv_load.cuh: what the two decode attention split kernels (attention_decode_paged.cu,
// attention_decode_paged_mma.cu) share: the block's split, 16-byte pieces of one kv head's K and V rows from the
// paged f16 cache into shared memory (cp.async), and the launch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attention_decode_combine.cuh"
#include "attention_decode_paged.cuh"
#include "attention_paged.cuh"
#include "cuda_check.cuh"
#include "device_utils.cuh"

namespace ropepp {

// What a decode block (blockIdx = token, kv head, context split) serves: its query rows (R per kv head: the group's
// q heads and, with RoPE++, each one's imaginary row) and its key positions [begin, end) of the token's sequence.
struct DecodeSplit {
  int tok, kh, split;
  int group;        // q heads per kv head
  int parts;        // 2 with RoPE++, else 1
  int R;            // query rows of the kv head
  int n_out_heads;  // heads of `out` per token
  int seq;          // the token's sequence
  int begin, end;   // key positions of this split (end ≤ the token's position + 1)
  __device__ DecodeSplit(const AttentionPagedLaunch& p, int chunk)
      : tok(blockIdx.x), kh(blockIdx.y), split(blockIdx.z), group(p.n_q_heads / p.n_kv_heads), parts(p.imag ? 2 : 1),
        R(group * parts), n_out_heads(p.n_q_heads * parts), seq(p.seq_of_token[tok]), begin(split * chunk),
        end(min(p.positions[tok] + 1, begin + chunk)) {}
};

// kv head kh of a [n_blocks, n_kv_heads, block_size, HD] cache layer.
template <int HD>
struct PagedKvHead {
  size_t head_off;      // elements from a block's start to this head's rows
  size_t block_stride;  // elements per block
  __device__ PagedKvHead(const AttentionPagedLaunch& p, int kh)
      : head_off(size_t(kh) * p.block_size * HD), block_stride(size_t(p.n_kv_heads) * p.block_size * HD) {}

  // Issues the copies of dims col .. col + 7 of K and V at position pos of the sequence whose block table is
  // `table` into kdst / vdst; zero-filled when pos ≥ end or its block is unmapped.
  __device__ __forceinline__ void copy_piece(const AttentionPagedLaunch& p, const int32_t* table, int pos, int end,
                                             int col, f16* kdst, f16* vdst) const {
    copy_row_piece(p, row_offset(p, table, pos, end), col, kdst, vdst);
  }

  // The elements from the cache's start to this head's row at position pos (its block looked up in `table`);
  // -1 when pos ≥ end or the block is unmapped.
  __device__ __forceinline__ long long row_offset(const AttentionPagedLaunch& p, const int32_t* table, int pos,
                                                  int end) const {
    if (pos >= end) return -1;
    const int blk = table[pos / p.block_size];
    if (blk < 0 || blk >= p.n_blocks) return -1;
    return static_cast<long long>(size_t(blk) * block_stride + head_off + size_t(pos % p.block_size) * HD);
  }

  // copy_piece with the row's offset known (row_offset; -1: zero-filled).
  __device__ __forceinline__ static void copy_row_piece(const AttentionPagedLaunch& p, long long row, int col,
                                                        f16* kdst, f16* vdst) {
    const bool valid = row >= 0;
    const size_t off = valid ? size_t(row) + col : 0;
    cp_async_16(kdst, p.cache_k + off, valid);  // invalid: zero-filled
    cp_async_16(vdst, p.cache_v + off, valid);
  }
};

// Launches a split kernel, kernel(p, chunk, n_splits, partials, extra...), on the grid (tokens, kv heads, splits)
// with `smem` bytes of dynamic shared memory, with programmatic dependent launch when p.pdl; with parts.cluster, the
// splits of each (token, kv head) as one thread-block cluster.
template <class Kernel, class... Extra>
void launch_decode_split(Kernel kernel, size_t smem, int threads, const AttentionPagedLaunch& p,
                         const AttentionDecodePlan& plan, const DecodePartials& parts, cudaStream_t stream,
                         const char* name, const Extra&... extra) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cudaLaunchAttribute attrs[2];
  cudaLaunchConfig_t cfg =
      launch_config(dim3(p.n_tokens, p.n_kv_heads, plan.n_splits), dim3(threads), smem, stream, p.pdl, attrs[0]);
  if (parts.cluster) {
    cudaLaunchAttribute& a = attrs[cfg.numAttrs++];
    a.id = cudaLaunchAttributeClusterDimension;
    a.val.clusterDim.x = 1;
    a.val.clusterDim.y = 1;
    a.val.clusterDim.z = unsigned(plan.n_splits);
  }
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p, plan.chunk, plan.n_splits, parts, extra...));
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) cuda_fail(e, name, __FILE__, __LINE__);
}

}  // namespace ropepp
