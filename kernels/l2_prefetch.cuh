// l2_prefetch.cuh: asking the L2 for weights a later kernel reads (a hint nothing waits for), issued by kernels
// before their PDL wait: the decode matvecs (MatvecLaunch::l2_rest / l2_next) and the fused attention + o_proj
// (AttentionOutProjDecodeLaunch::l2_next). Included by kernels/*.cu only.
#pragma once

#include "matvec.cuh"  // L2Ranges

namespace ropepp {

// One bulk prefetch of [ptr, ptr + bytes) into the L2 (sm_90: cp.async.bulk.prefetch.L2; else a prefetch per
// 128-byte line).
__device__ __forceinline__ void l2_prefetch_bytes(const void* ptr, unsigned bytes) {
#if __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(ptr), "r"(bytes) : "memory");
#else
  for (unsigned l = 0; l < bytes; l += 128)
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(static_cast<const char*>(ptr) + l));
#endif
}

// Warp `part` of `parts` asks the L2 for its equal share of the ranges' 16-byte units, one bulk prefetch per piece
// of at most 32 KB within one range.
__device__ __forceinline__ void l2_prefetch_share(const L2Ranges& r, long long part, long long parts) {
  long long total = 0;
  for (int i = 0; i < r.n; ++i) total += (long long)(r.bytes[i] / 16);
  const long long share = (total + parts - 1) / parts;
  const long long begin = part * share, end = min(total, begin + share);
  long long off = 0;  // the first unit of range i
  for (int i = 0; i < r.n && begin < end; ++i) {
    const long long units = (long long)(r.bytes[i] / 16);
    for (long long u = max(begin, off); u < min(end, off + units);) {
      const long long piece = min(min(end, off + units) - u, 2048ll);
      l2_prefetch_bytes(static_cast<const char*>(r.ptr[i]) + (u - off) * 16, unsigned(piece * 16));
      u += piece;
    }
    off += units;
  }
}

}  // namespace ropepp
