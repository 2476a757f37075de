// l2_prefetch.cuh: a kernel that runs before a later one warms the L2 cache with that kernel's weights.
//
// In a decode step every layer is a chain of short dependent kernels (qkv matvec, attention, o_proj, gate|up,
// down). Each one starts streaming its own weights only once it is launched, and between kernels (the drain of
// one, the launch and the PDL wait of the next) the memory system idles: in the ninth session's breakdown a
// layer took ~25 µs against a 7–10 µs bandwidth floor. With a prefetch range, a kernel's blocks share out that
// range (the weights of a kernel one or two places later in the stream; 4–15 MB, well inside the 50 MB L2) and
// issue L2 prefetches for it before their own PDL wait, so the DRAM keeps streaming across the kernel
// boundaries and the later kernel finds its weights in L2.
//
// Host-safe: the struct is included by the backend (.cpp); the device function only under nvcc.
#pragma once

#include <cstddef>

namespace ropepp {

struct L2Prefetch {
  const void* ptr = nullptr;  // 16-byte aligned; nullptr: nothing to prefetch
  size_t bytes = 0;
};

#if defined(__CUDACC__)
// An L2 prefetch of [ptr, ptr + bytes): ptr 16-byte aligned, bytes a multiple of 16 (one instruction on sm_90:
// cp.async.bulk.prefetch.L2; 128-byte lines with prefetch.global.L2 below it). Only a hint: nothing waits for it.
__device__ __forceinline__ void l2_prefetch_range(const void* ptr, unsigned bytes) {
#if __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(ptr), "r"(bytes) : "memory");
#else
  for (unsigned l = 0; l < bytes; l += 128) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(static_cast<const char*>(ptr) + l));
#endif
}

// Block b of the grid (all dimensions, linearized) prefetches its share of [ptr, ptr + bytes) into L2, in pieces of
// 4 KB spread over the block's threads. Nothing reads the range here.
__device__ __forceinline__ void l2_prefetch_share(const L2Prefetch& pf) {
  if (pf.ptr == nullptr || pf.bytes < 16) return;
  constexpr size_t kPiece = 4096;
  const size_t units = pf.bytes / 16;  // a tail under 16 bytes is left out
  const size_t blocks = size_t(gridDim.x) * gridDim.y * gridDim.z;
  const size_t block = blockIdx.x + size_t(gridDim.x) * (blockIdx.y + size_t(gridDim.y) * blockIdx.z);
  const size_t per_block = (units + blocks - 1) / blocks * 16;
  const size_t begin = block * per_block;
  const size_t end = begin + per_block < units * 16 ? begin + per_block : units * 16;
  const char* base = static_cast<const char*>(pf.ptr);
  for (size_t off = begin + size_t(threadIdx.x) * kPiece; off < end; off += size_t(blockDim.x) * kPiece)
    l2_prefetch_range(base + off, unsigned(end - off < kPiece ? end - off : kPiece));  // a multiple of 16
}
#endif

}  // namespace ropepp
