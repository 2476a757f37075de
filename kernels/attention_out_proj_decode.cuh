// attention_out_proj_decode.cuh: one decode token's attention and o_proj as one kernel, for a short context
// (CudaBackendOptions::decode_fused_oproj): x (+)= attention(q, cache) · Woᵀ.
//
// The separate kernels (attention_decode_paged + the o_proj matvec) cost ~7 µs per layer of the 376M at contexts
// ≤ 256 for ~1.6 µs of DRAM bytes (H100, docs/PERFORMANCE.md, twenty-eighth session): the attention runs on one
// block per kv head and the o_proj's weights load only after it. Here the grid is (8 key splits, row slices, kv
// heads) and the 8 splits of a (row slice, kv head) are one thread-block cluster:
//   1. before its PDL wait a block loads its rows of Wo (8 warps × RW rows; the kv head's R·head_dim columns) into
//      registers, asks the L2 for its share of l2_next, and copies its 32 keys' K/V rows written by earlier steps
//      (BatchView::history_cached) into shared memory;
//   2. after the wait: q, the token's own K/V row, the split's scores and partial softmax output per query row
//      (fp32 math on the f16 cache; a warp per row, a lane per key);
//   3. the cluster's 8 partials merge through distributed shared memory (every block gets the kv head's R output
//      rows; the blocks of row slice 0 also write them to attn.out);
//   4. each warp multiplies its Wo rows by them and writes one partial sum per (kv head, row) to `partial`; the last
//      block of a row block to finish (a counter per row block) adds x + Σ over kv heads in kv-head order
//      (deterministic).
// The attention is recomputed by every row slice (its K/V come from the L2); what is saved is a kernel boundary
// and the o_proj's loads after the attention.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "attention_paged.cuh"
#include "convert.cuh"  // HalfType
#include "matvec.cuh"   // L2Ranges

namespace ropepp {

constexpr int kFusedOProjSplits = 8;                            // key splits = the cluster's blocks
constexpr int kFusedOProjKeys = 32;                             // keys per split (a lane each)
constexpr int kFusedOProjMaxCtx = kFusedOProjSplits * kFusedOProjKeys;  // 256 positions
constexpr int kFusedOProjMaxRows = 8;                           // query rows per kv head (a warp each)
constexpr int kFusedOProjWarps = 8;

struct AttentionOutProjDecodeLaunch {
  AttentionPagedLaunch attn;  // one token of one sequence; attn.out [n_out_heads, head_dim] is written too
  const void* wo = nullptr;   // [d_model, n_out_heads · head_dim] f16 or bf16 (wo_type), 16-byte aligned
  HalfType wo_type = HalfType::F16;
  float* x = nullptr;         // [d_model]: x = (accumulate ? x : 0) + attention · Woᵀ
  int d_model = 0;
  bool accumulate = true;
  float* partial = nullptr;   // scratch [n_kv_heads, d_model]
  unsigned* counters = nullptr;  // [attention_out_proj_decode_counters(...)] zero; the kernel leaves them zero
  int rows_per_warp = 1;      // Wo rows per warp: 1, 2 or 4 (attention_out_proj_decode_rows_per_warp)
  L2Ranges l2_next{};         // weights of later kernels asked for before the PDL wait (a hint)
  // Let the next kernel launch only after the attention's merge instead of at the start (its weight loads then do
  // not compete with this kernel's loads after the wait).
  bool late_trigger = false;
  // [kFusedOProjTraceSlots] or null: block (0, 0, 0) adds the ns of its phases (kFusedOProjTracePhases) and a count
  // (CudaBackendOptions::decode_fused_oproj_trace; a diagnostic).
  unsigned long long* trace = nullptr;
};

// The phases a trace times: start → issued the loads before the wait, → wait returned, → K/V and q landed, → partial
// attention, → cluster barrier, → merged, → Wo product written, → counted (fence + atomic), → end.
constexpr int kFusedOProjTracePhases = 9;
constexpr int kFusedOProjTraceSlots = kFusedOProjTracePhases + 1;  // + the number of launches traced

// nullptr when one token's attention `a` (n_tokens == n_seqs == 1) and an o_proj of `d_model` rows and `wo_cols`
// columns fit the kernel; else what does not (for a log line). Clusters need sm_90: the caller checks the device.
const char* attention_out_proj_decode_misfit(const AttentionPagedLaunch& a, int d_model, long long wo_cols);

// Wo rows per warp for the shape: the fewest (1, 2, 4) whose grid (d_model / (8·RW) row blocks × n_kv_heads) stays
// within 3 blocks per SM (the 376M EC: 2 → 256 blocks; the 776M EC: 4 → 288; the 376M EH: 1 → 256).
int attention_out_proj_decode_rows_per_warp(int d_model, int n_kv_heads, int num_sms);

// Counters (one per row block of 8 warps × rows_per_warp rows) a launch uses.
inline int attention_out_proj_decode_counters(int d_model, int rows_per_warp) {
  return d_model / (kFusedOProjWarps * rows_per_warp);
}

void launch_attention_out_proj_decode(const AttentionOutProjDecodeLaunch& l, cudaStream_t stream);

}  // namespace ropepp
