// attention_decode_paged.cuh: attention for a few query tokens per sequence over a long paged context
// (flash-decoding). Blocks = (token, kv head, context split); each split writes a partial (max, sum, out)
// that a combine kernel merges, so that 2–6 kv heads at batch 1 still fill every SM at 64k context.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "attention_paged.cuh"

namespace ropepp {

struct AttentionDecodePlan {
  int n_splits = 1;          // context splits per (token, kv head)
  int chunk = 0;             // positions per split (a multiple of the planner's `align`)
  size_t scratch_bytes = 0;  // partial results, 0 when n_splits == 1
  // The split kernel on tensor cores (attention_decode_paged_mma.cu) instead of the fp32 one; set by the caller.
  bool tensor_cores = false;
  // [n_tokens, n_kv_heads] counters, all zero (the kernel leaves them so): with 2 .. kDecodeLastBlockMaxSplits
  // splits the last split block of each (token, kv head) merges them instead of a combine kernel. Null: the
  // combine kernel always. Set by the caller (CudaBackendOptions::decode_merge_in_last_block).
  unsigned* split_counters = nullptr;
  // The tensor-core split kernel's warps × stages per warp: 0 → 4 × 2, 1 → 2 × 4, 2 → 4 × 3 (cp.async), 3 → 4 × 2,
  // 4 → 4 × 3 filled by the copy engine (TMA; head_dim 128), 5 → 8 × 3 TMA (one block per SM: a short context
  // unsplit, CudaBackendOptions::decode_short_unsplit; other head sizes: 4 × 3 cp.async) (set by the caller:
  // CudaBackendOptions::decode_mma_shape).
  int mma_shape = 0;
  // The splits of each (token, kv head) run as one thread-block cluster and merge through distributed shared
  // memory (2 .. kDecodeClusterMaxSplits splits; tensor-core kernel, sm_90): no partials in global memory, no
  // combine kernel. Set by the planner when asked (CudaBackendOptions::decode_cluster_merge).
  bool cluster_merge = false;
};

// Host-side planning from the batch shape and the device's multiprocessor count: enough (token, kv head,
// split) blocks for ~3 per SM, each split at least `min_chunk` positions (rounded up to the fp32 kernel's tile); a
// context of at most kAttentionDecodeNoSplit positions is not split (a combine kernel would cost more than the
// 1–4 tiles a block streams). Measured on the H100 (376M EC, tg128): min chunk 64 vs 256 at 512–2,048
// positions +24%, below 256 positions splitting cost 3% (CudaBackendOptions::decode_min_chunk: 64).
// `align`: the split length is rounded up to a multiple of it (the fp32 kernel's tile, 64, by default; the kernels
// take any split, a partial last tile included). The rounding drops splits: at 65,536 positions 198 wanted splits
// of 331 become 171 of 384, 342 blocks for 396 resident slots (376M EH); with 16, 196 of 336 (392 blocks).
constexpr int kAttentionDecodeNoSplit = 256;
// `blocks_per_sm`: the split blocks aimed at per SM (3 by default: as many as are resident). `cluster_merge`: at
// most kDecodeClusterMaxSplits splits (longer ones), merged in a cluster (AttentionDecodePlan::cluster_merge).
AttentionDecodePlan plan_attention_decode_paged(const AttentionPagedLaunch& p, int num_sms, int min_chunk,
                                                int align = 64, int blocks_per_sm = 3, bool cluster_merge = false);

// The split blocks of shape `mma_shape` (AttentionDecodePlan::mma_shape) that one SM holds at once: 2 for the
// 4 warps × 3 stages shapes (2 and 4: ~100 KB of shared memory each), 1 for 8 × 3 (5: ~200 KB), else 3 (~70 KB;
// registers allow no more) —
// what plan_attention_decode_paged aims at by default (attention_decode_paged_mma.cu).
int attention_decode_mma_blocks_per_sm(int mma_shape);

// `scratch`: device memory of at least plan.scratch_bytes (16-byte aligned).
void launch_attention_decode_paged(const AttentionPagedLaunch& p, const AttentionDecodePlan& plan, void* scratch,
                                   cudaStream_t stream);

}  // namespace ropepp
