// swiglu.cuh: out = silu(gate) * up, gate/up possibly the two halves of one fused row.
#pragma once

#include <cuda_runtime.h>

#include "convert.cuh"

namespace ropepp {

struct SwigluLaunch {
  const float* gate;  // [n, dim], row stride `in_stride` (unless in_half)
  const float* up;    // [n, dim], row stride `in_stride` (unless in_half)
  int in_stride;
  float* out;         // [n, dim] packed (unless out_half)
  int n;
  int dim;
  // [n, dim] packed of out_type, when set: the input of a GEMM in that type, written without an fp32 round
  // trip (f16 saturates at ±65504).
  void* out_half = nullptr;
  HalfType out_type = HalfType::BF16;
  // When set, gate and up are 16-bit rows of in_type instead: gate [n, dim] and up = gate + up_offset
  // elements, row stride `in_stride` elements (a GEMM's gate|up output written in 16 bits). Needs out_half of
  // the same type.
  const void* in_half = nullptr;
  HalfType in_type = HalfType::F16;
  int up_offset = 0;
};

void launch_swiglu(const SwigluLaunch& p, cudaStream_t stream);

}  // namespace ropepp
