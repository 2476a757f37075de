// wgmma.cuh: Hopper warpgroup MMA (wgmma.mma_async, sm_90a) wrappers for the kernels that use it, and the
// shared-memory matrix descriptors they take. Included by kernels/*_sm90.cu only.
//
// A warpgroup is 4 consecutive warps (128 threads) that issue each wgmma together. The accumulator D [64 x N] f32 is
// spread like 4 stacked mma.sync m16n8 C fragments per n-tile: warp w of the group holds rows 16w + lane / 4 and
// 16w + lane / 4 + 8, d[i][0..1] / d[i][2..3] = columns 8i + (lane % 4) · 2 + {0, 1} of those rows.
//
// Operands in shared memory use the 128-byte swizzle: a row holds 64 f16 (128 bytes), rows of an 8-row atom
// (1,024 bytes, 1,024-byte aligned) have their 16-byte chunks permuted, chunk c of row r stored at c ^ (r % 8).
// Wider matrices are blocks of 64 columns (see sw128_offset). The asm exists only in the sm_90a compile
// (ROPEPP_WGMMA); elsewhere the wrappers trap (the launcher never runs them there).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "mbarrier.cuh"  // fence_proxy_async_shared

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ROPEPP_WGMMA 1
#else
#define ROPEPP_WGMMA 0
#endif

namespace ropepp {

// Element offset of (row, col) in a [cols / 64][rows][64] f16 tile with the 128-byte swizzle.
__host__ __device__ constexpr int sw128_offset(int row, int col, int rows) {
  return (col >> 6) * rows * 64 + row * 64 + ((((col >> 3) & 7) ^ (row & 7)) << 3) + (col & 7);
}

// A shared-memory matrix descriptor with the 128-byte swizzle. lbo: bytes between 64-column blocks along the
// non-K ("leading", MN-major operands only; K-major ignores it); sbo: bytes between 8-row atoms along the other.
__device__ __forceinline__ uint64_t smem_desc_sw128(const void* smem, uint32_t lbo, uint32_t sbo) {
  const uint64_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return ((a & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) | (uint64_t((sbo & 0x3FFFF) >> 4) << 32) |
         (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() {
#if ROPEPP_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if ROPEPP_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if ROPEPP_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// (fence_proxy_async_shared, mbarrier.cuh: ordinary stores and cp.async writes become visible to wgmma after it and
// a barrier.)
// Keeps the compiler from moving reads or writes of accumulator registers across an asynchronous wgmma: the
// registers belong to the hardware between the issue and the wait.
template <int N>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}

// The "+f" asm operands of accumulator n-tiles d[i0] .. d[i0 + 7] (32 registers).
#define ROPEPP_WGMMA_ACC8(d, i0)                                                                   \
  "+f"(d[(i0) + 0][0]), "+f"(d[(i0) + 0][1]), "+f"(d[(i0) + 0][2]), "+f"(d[(i0) + 0][3]), \
  "+f"(d[(i0) + 1][0]), "+f"(d[(i0) + 1][1]), "+f"(d[(i0) + 1][2]), "+f"(d[(i0) + 1][3]), \
  "+f"(d[(i0) + 2][0]), "+f"(d[(i0) + 2][1]), "+f"(d[(i0) + 2][2]), "+f"(d[(i0) + 2][3]), \
  "+f"(d[(i0) + 3][0]), "+f"(d[(i0) + 3][1]), "+f"(d[(i0) + 3][2]), "+f"(d[(i0) + 3][3]), \
  "+f"(d[(i0) + 4][0]), "+f"(d[(i0) + 4][1]), "+f"(d[(i0) + 4][2]), "+f"(d[(i0) + 4][3]), \
  "+f"(d[(i0) + 5][0]), "+f"(d[(i0) + 5][1]), "+f"(d[(i0) + 5][2]), "+f"(d[(i0) + 5][3]), \
  "+f"(d[(i0) + 6][0]), "+f"(d[(i0) + 6][1]), "+f"(d[(i0) + 6][2]), "+f"(d[(i0) + 6][3]), \
  "+f"(d[(i0) + 7][0]), "+f"(d[(i0) + 7][1]), "+f"(d[(i0) + 7][2]), "+f"(d[(i0) + 7][3])

// D[64 x 64] (+)= A · B, A [64 x 16] and B [16 x 64] both K-major in shared memory (descriptors); scale_d 0: D = A·B.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {
#if ROPEPP_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : ROPEPP_WGMMA_ACC8(d, 0)
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
#else
  (void)d, (void)desc_a, (void)desc_b, (void)scale_d;
  __trap();
#endif
}

// D[64 x 64] (+)= A · B, A [64 x 16] f16 in registers (the mma.sync m16k16 A layout per warp), B [16 x 64] K-major
// in shared memory; scale_d 0: D = A·B.
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b,
                                                   int scale_d) {
#if ROPEPP_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : ROPEPP_WGMMA_ACC8(d, 0)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
#else
  (void)d, (void)a, (void)desc_b, (void)scale_d;
  __trap();
#endif
}

// D[64 x 128] (+)= A · B, A [64 x 16] and B [16 x 128] both K-major in shared memory (descriptors); scale_d 0: D = A·B.
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {
#if ROPEPP_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : ROPEPP_WGMMA_ACC8(d, 0), ROPEPP_WGMMA_ACC8(d, 8)
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
#else
  (void)d, (void)desc_a, (void)desc_b, (void)scale_d;
  __trap();
#endif
}

// Moves this warp's per-thread register budget to N (a multiple of 8 in 24..256) for a warpgroup that specialises:
// dec releases registers to the block's pool, inc waits until the pool can supply them. All threads of the
// warpgroup execute it.
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
#if ROPEPP_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
#if ROPEPP_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// D[64 x 128] (+)= A · B, A [64 x 16] f16 in registers (the mma.sync m16k16 A layout per warp), B [16 x 128] in
// shared memory, K-major (TRANS_B 0) or MN-major (TRANS_B 1, "tn": V's rows are keys); scale_d 0: D = A·B.
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n128k16_rs_b(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b,
                                                      int scale_d) {
#if ROPEPP_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
      : ROPEPP_WGMMA_ACC8(d, 0), ROPEPP_WGMMA_ACC8(d, 8)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(TRANS_B));
#else
  (void)d, (void)a, (void)desc_b, (void)scale_d;
  __trap();
#endif
}
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b,
                                                    int scale_d) {
  wgmma_m64n128k16_rs_b<0>(d, a, desc_b, scale_d);
}
// D += A · B with B MN-major (P·V).
__device__ __forceinline__ void wgmma_m64n128k16_rs_tn(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b) {
  wgmma_m64n128k16_rs_b<1>(d, a, desc_b, 1);
}

#undef ROPEPP_WGMMA_ACC8

}  // namespace ropepp
