// rms_norm.cuh: out[i, :] = x[i, :] * rsqrt(mean(x[i, :]^2) + eps) * w (x and out may alias).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ropepp {

struct RmsNormLaunch {
  const float* x;                // [n, dim]
  const float* w_f32;            // [dim]; exactly one of w_f32 / w_bf16 is set
  const __nv_bfloat16* w_bf16;   // [dim]
  float* out;                    // [n, dim] (unless out_bf16)
  int n;
  int dim;
  float eps;
  __nv_bfloat16* out_bf16 = nullptr;  // [n, dim], when set (the input of a bf16 GEMM: no fp32 round trip)
};

void launch_rms_norm(const RmsNormLaunch& p, cudaStream_t stream);

}  // namespace ropepp
