// device_utils.cuh: device-side helpers shared by the kernels: warp/block reductions, bf16/f16 packing,
// cp.async and the bf16/f16 tensor-core mma (m16n8k16) wrappers. Included by kernels/*.cu only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ropepp {

using bf16 = __nv_bfloat16;
using f16 = __half;

// The largest finite f16. Values stored as f16 (the KV cache, f16 GEMM inputs) are clamped to ±kF16Max:
// a saturated value instead of an infinity that would turn a whole softmax or row into NaN.
constexpr float kF16Max = 65504.f;

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// silu(g) = g · sigmoid(g), the gate of SwiGLU.
__device__ __forceinline__ float silu(float g) { return g / (1.f + expf(-g)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). `red` holds 32 floats of shared
// memory; every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // `red` may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < n_warps ? red[lane] : 0.f;
  return warp_sum(v);
}

// --- programmatic dependent launch (Hopper): a kernel launched with the PDL attribute may start while the
// previous kernel in the stream still runs; it must call pdl_wait() before it reads anything that kernel
// wrote. Kernels that may precede one call pdl_launch_dependents() to let it start early. Both are no-ops
// when the launch did not ask for PDL, and below sm_90.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// 8 bf16 packed in 16 bytes -> 8 floats.
__device__ __forceinline__ void bf16x8_to_float(const uint4& u, float* f) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// 8 f16 packed in 16 bytes -> 8 floats (exact).
__device__ __forceinline__ void f16x8_to_float(const uint4& u, float* f) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// Saturate to ±kF16Max; NaN stays NaN (fminf/fmaxf alone would turn it into a number).
__device__ __forceinline__ float clamp_f16(float x) { return x != x ? x : fminf(fmaxf(x, -kF16Max), kF16Max); }

// Two floats -> f16x2 (round to nearest, saturated to ±kF16Max; NaN stays NaN).
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  __half2 v = __floats2half2_rn(clamp_f16(lo), clamp_f16(hi));  // .x = lo (lower address), .y = hi
  return *reinterpret_cast<uint32_t*>(&v);
}

// Overloads by element type (bf16 or f16) for kernels templated on it.
__device__ __forceinline__ void x8_to_float(const uint4& u, float* f, bf16) { bf16x8_to_float(u, f); }
__device__ __forceinline__ void x8_to_float(const uint4& u, float* f, f16) { f16x8_to_float(u, f); }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(f16 v) { return __half2float(v); }
__device__ __forceinline__ float to_float(float v) { return v; }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ f16 from_float<f16>(float x) { return __float2half_rn(clamp_f16(x)); }
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }

// --- cp.async (16 bytes, global -> shared, bypassing L1). src_bytes 0 zero-fills the destination. ---
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// --- tensor cores: D[16x8] += A[16x16] (row) * B[16x8] (col), f16 in, fp32 accumulate ----------------
// Fragment layouts (lane = threadIdx.x % 32, g = lane / 4, c = (lane % 4) * 2):
//   A: a0 = (row g, cols c..c+1), a1 = (row g+8, cols c..c+1), a2 = (row g, cols c+8..), a3 = (row g+8, cols c+8..)
//   B: b0 = (k c..c+1, n g), b1 = (k c+8..c+9, n g)
//   C: c0,c1 = (row g, cols c, c+1), c2,c3 = (row g+8, cols c, c+1)
__device__ __forceinline__ void mma_f16_16x8x16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 16-bit matrices from shared memory; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem_row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* smem_row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

}  // namespace ropepp
