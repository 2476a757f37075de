// matvec_smem_prefetch.cuh: the one-row (decode) matvec of matvec.cuh with its weights copied into shared memory
// before the kernel waits for the one before it (PDL), so that the DRAM streams a layer's next matrices while
// the current one runs. Same inputs, epilogues and results as launch_matvec (n = 1).
//
// Why: a decode layer is a chain of dependent kernels (qkv, attention, o_proj, gate|up, down). The streaming
// matvec holds its prefetched weights in registers, four blocks per SM fill the register file, so the next
// kernel becomes resident only when this one's blocks leave: the DRAM idles at every boundary (the sixteenth
// session's timeline: ~24 µs per layer for ~10 µs of bytes). Shared memory sits unused by those kernels, and a
// per-layer matrix spread over the SMs is ~30–112 KB per SM for the 376M: each block of this kernel (one per SM,
// 256 threads, ≤ 64 registers) bulk-copies all its rows (cp.async.bulk, completing on mbarriers, one per group of
// eight units) at its start, and two or three such kernels fit on an SM at once, so that a kernel's weights
// arrive while its predecessors compute. After the wait it stages x ⊙ the norm weight (with Σ x²) in shared
// memory (a plain x is read from global memory / L1) and each warp takes one unit per group: no global load on
// its critical path but x.
#pragma once

#include <cuda_runtime.h>

#include "matvec.cuh"

namespace ropepp {

// The grid and shared memory of the prefetching kernel for p (one block per `units_per_block` output units), or
// blocks == 0 when it does not apply: n ≠ 1, MatvecLaunch::prefetch_smem_bytes == 0, a unit larger than the
// budget, or more than two waves of prefetch_blocks blocks (a matrix that large streams better: launch_matvec).
struct MatvecSmemPlan {
  int blocks = 0;
  int units_per_block = 0;
  size_t smem = 0;  // bytes: mbarriers, the block's weight rows, x ⊙ norm weight (RmsNorm input)
};
MatvecSmemPlan plan_matvec_smem_prefetch(const MatvecLaunch& p);

// Launches the prefetching kernel if plan_matvec_smem_prefetch(p) applies; false (nothing launched) otherwise.
bool launch_matvec_smem_prefetch(const MatvecLaunch& p, cudaStream_t stream);

}  // namespace ropepp
