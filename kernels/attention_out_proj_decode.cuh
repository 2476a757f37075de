// attention_out_proj_decode.cuh: one decode token's attention and o_proj as one kernel, for a short context
// (CudaBackendOptions::decode_fused_oproj): x (+)= attention(q, cache) · Woᵀ.
//
// The separate kernels (attention_decode_paged + the o_proj matvec) cost ~7 µs per layer of the 376M at contexts
// ≤ 256 for ~1.6 µs of DRAM bytes (H100, docs/PERFORMANCE.md, twenty-eighth session): the attention runs on one
// block per kv head and the o_proj's weights load only after it. Here the grid is (kv heads × S key splits, row
// slices) and each row slice is one thread-block cluster of n_kv_heads · S blocks (block rank kh · S + split):
//   1. before its PDL wait a block loads its rows of Wo (8 warps × RW rows; kv head kh's R·head_dim columns) into
//      registers, asks the L2 for its share of l2_next, and copies its 256 / S keys' K/V rows written by earlier
//      steps (BatchView::history_cached) into shared memory;
//   2. after the wait: q, the token's own K/V row, the split's scores and partial softmax output per query row
//      (fp32 math on the f16 cache; a warp per row, a lane per 1–8 keys);
//   3. the S partials of each kv head merge through distributed shared memory (the blocks of row slice 0 also write
//      the output rows to attn.out);
//   4. each warp multiplies its Wo rows by them: one product per (kv head, row) in shared memory;
//   5. after a second cluster barrier each row of x gets x + Σ over kv heads in kv-head order (deterministic), read
//      through distributed shared memory: no global partial sums, no atomics.
// The attention is recomputed by every row slice (its K/V come from the L2); what is saved is a kernel boundary
// and the o_proj's loads after the attention. (The first version, clusters of the 8 splits of one kv head and a
// last-block sum over kv heads through global memory, was 8–14% slower than the separate kernels: session 29.)
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "attention_paged.cuh"
#include "convert.cuh"  // HalfType
#include "matvec.cuh"   // L2Ranges

namespace ropepp {

constexpr int kFusedOProjMaxSplits = 8;                          // key splits per kv head (32 keys each at most 8)
constexpr int kFusedOProjMaxCtx = 256;                           // positions
constexpr int kFusedOProjMaxRows = 8;                            // query rows per kv head (a warp each)
constexpr int kFusedOProjWarps = 8;

struct AttentionOutProjDecodeLaunch {
  AttentionPagedLaunch attn;  // one token of one sequence; attn.out [n_out_heads, head_dim] is written too
  const void* wo = nullptr;   // [d_model, n_out_heads · head_dim] f16 or bf16 (wo_type), 16-byte aligned
  HalfType wo_type = HalfType::F16;
  float* x = nullptr;         // [d_model]: x = (accumulate ? x : 0) + attention · Woᵀ
  int d_model = 0;
  bool accumulate = true;
  int splits = 1;             // key splits per kv head (FusedOProjPlan)
  int rows_per_warp = 1;      // Wo rows per warp: 1, 2 or 4 (FusedOProjPlan)
  L2Ranges l2_next{};         // weights of later kernels asked for before the PDL wait (a hint)
  // Let the next kernel launch only after the attention's merge instead of at the start (its weight loads then do
  // not compete with this kernel's loads after the wait).
  bool late_trigger = false;
  // [kFusedOProjTraceSlots] or null: block (0, 0) adds the ns of its phases (kFusedOProjTracePhases) and a count
  // (CudaBackendOptions::decode_fused_oproj_trace; a diagnostic).
  unsigned long long* trace = nullptr;
};

// The phases a trace times: start → issued the loads before the wait, → wait returned, → K/V and q landed, → partial
// attention, → cluster barrier, → merged, → Wo products, → second cluster barrier, → x written and end.
constexpr int kFusedOProjTracePhases = 9;
constexpr int kFusedOProjTraceSlots = kFusedOProjTracePhases + 1;  // + the number of launches traced

struct FusedOProjPlan {
  const char* misfit = nullptr;  // why the kernel does not apply (then the rest is unset)
  int splits = 0;                // key splits per kv head: the most (≤ 8) with splits × kv heads ≤ max_cluster
  int rows_per_warp = 0;         // the fewest (1, 2, 4) whose grid of kv heads × d_model / (8·RW) blocks stays
                                 // within 3 per SM (376M EC: 2 → 256 blocks; 776M EC: 4 → 288; 376M EH: 1 → 256)
};

// The plan for one token's attention `a` (n_tokens == n_seqs == 1) and an o_proj of `d_model` rows and `wo_cols`
// columns on `num_sms` SMs with clusters of at most `max_cluster` blocks (8 portable, 16 on the H100 with the
// non-portable attribute); misfit says what does not fit. Clusters need sm_90: the caller checks the device.
FusedOProjPlan attention_out_proj_decode_plan(const AttentionPagedLaunch& a, int d_model, long long wo_cols,
                                             int num_sms, int max_cluster);

void launch_attention_out_proj_decode(const AttentionOutProjDecodeLaunch& l, cudaStream_t stream);

}  // namespace ropepp
