// matvec.cuh: out[n, rows] (+)= f(x)[n, cols] · wᵀ for a few rows of x (decode), bf16 or f16 weights
// (the kernels are templated on the element type), fp32 math.
// Bandwidth-bound: every weight byte is read once, 16 bytes per load, by all SMs.
// f is the input transform fused into the product (so that it costs no kernel of its own):
//   Plain   f(x) = x
//   RmsNorm f(x) = x · rsqrt(mean(x²) + eps) · norm_w        (the RMSNorm before a projection)
//   Swiglu  f(x) = silu(gate) · up, gate/up rows `in_stride` apart  (the activation before W_down)
// The fused transforms are computed once per thread block into shared memory: n · cols floats, at most
// kMatvecFusedSmemBytes (matvec_fused_fits).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "convert.cuh"

namespace ropepp {

constexpr int kMatvecMaxRows = 8;  // n above this goes through cuBLAS
constexpr size_t kMatvecFusedSmemBytes = 32 * 1024;

enum class MatvecInput { Plain, RmsNorm, Swiglu };

struct MatvecLaunch {
  const float* x;              // [n, cols] (Plain, RmsNorm), 16-byte aligned
  const void* w;               // [rows, cols] of w_type, cols % 8 == 0, 16-byte aligned
  float* out;                  // [n, rows]
  int n;                       // 1 .. kMatvecMaxRows
  int rows;
  int cols;
  bool accumulate = false;     // out += instead of out =
  MatvecInput input = MatvecInput::Plain;
  const float* norm_w = nullptr;  // [cols] RmsNorm weight
  float eps = 0.f;
  const float* gate = nullptr;    // [n, cols] Swiglu, row stride in_stride
  const float* up = nullptr;      // [n, cols] Swiglu, row stride in_stride
  int in_stride = 0;
  // Programmatic dependent launch (sm_90+): the kernel starts streaming its weights while the previous kernel
  // in the stream finishes, and waits for it (griddepcontrol.wait) before it reads x or out.
  bool pdl = false;
  HalfType w_type = HalfType::BF16;
};

inline bool matvec_fused_fits(int n, int cols) {
  return n >= 1 && n <= kMatvecMaxRows && size_t(n) * size_t(cols) * sizeof(float) <= kMatvecFusedSmemBytes;
}

void launch_matvec(const MatvecLaunch& p, cudaStream_t stream);

}  // namespace ropepp
