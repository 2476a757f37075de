// swiglu.cuh: out = silu(gate) * up, gate/up possibly the two halves of one fused row.
#pragma once

#include <cuda_runtime.h>

namespace ropepp {

struct SwigluLaunch {
  const float* gate;  // [n, dim], row stride `in_stride`
  const float* up;    // [n, dim], row stride `in_stride`
  int in_stride;
  float* out;         // [n, dim] packed
  int n;
  int dim;
};

void launch_swiglu(const SwigluLaunch& p, cudaStream_t stream);

}  // namespace ropepp
