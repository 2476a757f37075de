// matvec.cuh: out[n, ·] = g(f(x)[n, cols] · wᵀ) for a few rows of x (decode), bf16 or f16 weights
// (the kernels are templated on the element type), fp32 math.
// Bandwidth-bound: every weight byte is read once, 16 bytes per load, by all SMs.
// f is the input transform fused into the product (so that it costs no kernel of its own):
//   Plain   f(x) = x
//   RmsNorm f(x) = x · rsqrt(mean(x²) + eps) · norm_w        (the RMSNorm before a projection)
// as rsqrt(mean(x²) + eps) · ((x ⊙ norm_w)·Wᵀ): each thread block writes x ⊙ norm_w into shared memory (n · cols
// floats, at most kMatvecFusedSmemBytes: matvec_fused_fits) in the same pass that adds up x², and the factor
// scales the dot products at the end (one barrier between the PDL wait and the first use of the weights).
// g is the output epilogue. Store writes (or adds) the rows' dot products. The paired epilogues let one warp
// compute two weight rows a and b = a + half that the next step combines, so the step costs no kernel:
//   Swiglu  rows [0, F) are gate, [F, 2F) up (half = F): out[n, F] = silu(gate) · up
//   RopeKv  rows are q|k|v heads of head_dim (half = head_dim / 2): the pair (j, j + half) of every q and k
//           head rotated by RoPE, written to out [n, rows] like Store (q and k rotated, v as is), and the k
//           and v heads also written to the token's slot of the paged f16 KV cache (rope_kv_append's work).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "argmax.cuh"
#include "convert.cuh"
#include "rope_kv_append_paged.cuh"

namespace ropepp {

constexpr int kMatvecMaxRows = 8;  // n above this goes through cuBLAS
constexpr size_t kMatvecFusedSmemBytes = 32 * 1024;

enum class MatvecInput { Plain, RmsNorm };
enum class MatvecOutput { Store, Swiglu, RopeKv };

// Byte ranges of a later kernel's weights that a matvec asks the L2 for before its PDL wait
// (MatvecLaunch::l2_next): ptr[i] 16-byte aligned, bytes[i] a multiple of 16.
struct L2Ranges {
  static constexpr int kMax = 3;
  const void* ptr[kMax] = {};
  size_t bytes[kMax] = {};
  int n = 0;
};

// The auto choice (CudaBackendOptions::l2_next_qkv_pct = -1) of how much of the next layer's qkv the o_proj asks
// the L2 for: all of it where it and the feed-forward's gate|up streamed between (ffn_bytes; 0: unknown) take at most
// half the L2 (they are 18.7 MB for the 376M, 42.4 MB for the 776M against the H100's 50 MB), else none: the rows
// would be evicted before the qkv reads them and cost their DRAM bytes twice.
inline int l2_next_qkv_auto_pct(size_t qkv_bytes, size_t ffn_bytes, size_t l2_bytes) {
  return ffn_bytes > 0 && qkv_bytes + ffn_bytes <= l2_bytes / 2 ? 100 : 0;
}

// Appends the last `pct` percent of the rows of a [rows, row_bytes] matrix at `base` to r: of each half when
// `paired` (Wgate|Wup: the rows a and a + rows / 2 are read together), i.e. the rows of the blocks that a grid in
// row order starts last. row_bytes must be a multiple of 16; pct 0 .. 100; returns false when r is full.
inline bool add_l2_tail_rows(L2Ranges* r, const void* base, long long rows, size_t row_bytes, bool paired, int pct) {
  const int parts = paired ? 2 : 1;
  const long long part_rows = rows / parts;
  const long long take = part_rows * (pct < 0 ? 0 : pct > 100 ? 100 : pct) / 100;
  if (take <= 0 || !base) return true;
  for (int i = 0; i < parts; ++i) {
    if (r->n >= L2Ranges::kMax) return false;
    r->ptr[r->n] = static_cast<const char*>(base) + size_t((i + 1) * part_rows - take) * row_bytes;
    r->bytes[r->n] = size_t(take) * row_bytes;
    ++r->n;
  }
  return true;
}

struct MatvecLaunch {
  const float* x;              // [n, cols], 16-byte aligned
  const void* w;               // [rows, cols] of w_type, cols % 8 == 0, 16-byte aligned
  float* out;                  // Store, RopeKv: [n, rows]; Swiglu: [n, rows / 2]
  int n;                       // 1 .. kMatvecMaxRows
  int rows;
  int cols;
  bool accumulate = false;     // Store only: out += instead of out =
  MatvecInput input = MatvecInput::Plain;
  const float* norm_w = nullptr;  // [cols] RmsNorm weight
  float eps = 0.f;
  MatvecOutput output = MatvecOutput::Store;
  // RopeKv: positions, cos/sin tables, head counts and the cache slots (its qkv field is unused: out).
  RopeKvAppendLaunch rope{};
  // Programmatic dependent launch (sm_90+): the kernel starts streaming its weights while the previous kernel
  // in the stream finishes, and waits for it (griddepcontrol.wait) before it reads x or out.
  bool pdl = false;
  // Grid cap (0: none): at most this many blocks, each looping over its share of the rows. A capped grid leaves
  // room on every SM for the next kernel's blocks, which then load their first weights while this one runs
  // (PDL); uncapped, a matrix of a few thousand rows takes every SM over more than one wave.
  int max_blocks = 0;
  // One row of x with a paired epilogue (Swiglu, RopeKv): each warp takes two pairs of rows (with half the chunks
  // in flight per row), so that a capped grid covers the matrix in one pass and prefetches all of it.
  bool wide_pairs = false;
  // One row of x, Store: a lane keeps 8 chunks in flight instead of 4 where its K slice has more than 128 chunks
  // (same registers as a paired row), so that a grid of half the blocks still loads its first pass whole before the
  // PDL wait (a narrower K split under max_warps: the down projection's 3,584 columns at 2 warps a row).
  bool deep = false;
  // A capped grid (max_blocks): before its PDL wait each block also asks the L2 for the rows of the unit groups
  // it serves after its first (cp.async.bulk.prefetch.L2; only a hint), so that they stream while the previous
  // kernel runs instead of one round trip per group after it.
  bool l2_rest = false;
  // Before its PDL wait each warp also asks the L2 for the rest of its first group's row slices where they take
  // more than one pass of loads (cp.async.bulk.prefetch.L2; only a hint): the later passes' loads, issued after the
  // wait, then find the L2 instead of the DRAM (the 776M's gate|up: 192 chunks per row, 128 in the first pass).
  bool l2_tail = false;
  // Store only. Before its PDL wait the grid also asks the L2 for these ranges (a later kernel's weights: the
  // o_proj's for the gate|up and the next layer's qkv, MatmulParams::next_ffn / next_qkv), each warp an equal share,
  // one bulk prefetch per ≤ 32 KB (cp.async.bulk.prefetch.L2; only a hint), so that the DRAM streams them during the
  // attention.
  L2Ranges l2_next{};
  // PDL: let the next kernel launch only once this one's wait for the previous kernel returned (instead of at its
  // start), so that the next kernel's early weight loads overlap this kernel's work, not the kernel before it (the
  // o_proj's successor, the gate|up, otherwise loads during the attention and slows it).
  bool late_trigger = false;
  // Argmax epilogue (one row of x, Store without accumulate: a greedy step's lm_head): besides the rows, each
  // block writes argmax_keys[block] = the argmax_key of its largest output among the first argmax_rows (the
  // (value, index) order of argmax.cuh), and launch_matvec then launches the one-block merge of those keys
  // (launch_argmax_keys with argmax_next: the index into *out, and optionally the next step's embedding row).
  unsigned long long* argmax_keys = nullptr;  // [≥ the grid's blocks: rows always suffices]; nullptr: no argmax
  int argmax_rows = 0;
  ArgmaxKeysLaunch argmax_next{};  // its keys, n_keys and pdl are set by launch_matvec
  // K split cap (0: none): the K split (warps per unit group) stops widening before the grid would have more
  // warps than this (the warps the GPU holds at once), so that a matrix with few rows is not served in two waves.
  int max_warps = 0;
  // Shared-memory prefetch (one row of x: matvec_smem_prefetch.cuh): the bytes of shared memory one block may
  // take for its weight rows and x (0: off, the streaming kernel), and the grid of one block per SM (the SMs).
  int prefetch_smem_bytes = 0;
  int prefetch_blocks = 0;
  HalfType w_type = HalfType::BF16;
};

// Weight rows per output unit: one for Store, the pair (a, a + half) for the paired epilogues.
constexpr int matvec_rows_per_unit(MatvecOutput out) { return out == MatvecOutput::Store ? 1 : 2; }

inline bool matvec_fused_fits(int n, int cols) {
  return n >= 1 && n <= kMatvecMaxRows && size_t(n) * size_t(cols) * sizeof(float) <= kMatvecFusedSmemBytes;
}

void launch_matvec(const MatvecLaunch& p, cudaStream_t stream);

}  // namespace ropepp
