// swiglu.cuh: out = silu(gate) * up, gate/up possibly the two halves of one fused row.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace ropepp {

struct SwigluLaunch {
  const float* gate;  // [n, dim], row stride `in_stride`
  const float* up;    // [n, dim], row stride `in_stride`
  int in_stride;
  float* out;         // [n, dim] packed (unless out_bf16)
  int n;
  int dim;
  __nv_bfloat16* out_bf16 = nullptr;  // [n, dim] packed, when set (the input of a bf16 GEMM: no fp32 round trip)
};

void launch_swiglu(const SwigluLaunch& p, cudaStream_t stream);

}  // namespace ropepp
