// matvec_bf16.cuh: out[n, rows] = x[n, cols] · wᵀ for a few rows of x (decode), bf16 weights, fp32 math.
// Bandwidth-bound: every weight byte is read once, 16 bytes per load, by all SMs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ropepp {

constexpr int kMatvecMaxRows = 8;  // n above this goes through cuBLAS

struct MatvecBf16Launch {
  const float* x;              // [n, cols], 16-byte aligned
  const __nv_bfloat16* w;      // [rows, cols], cols % 8 == 0, 16-byte aligned
  float* out;                  // [n, rows]
  int n;                       // 1 .. kMatvecMaxRows
  int rows;
  int cols;
};

void launch_matvec_bf16(const MatvecBf16Launch& p, cudaStream_t stream);

}  // namespace ropepp
