// rms_norm.cuh: out[i, :] = x[i, :] * rsqrt(mean(x[i, :]^2) + eps) * w (x and out may alias).
#pragma once

#include <cuda_runtime.h>

#include "convert.cuh"

namespace ropepp {

struct RmsNormLaunch {
  const float* x;                // [n, dim]
  const float* w;                // [dim] (norm weights are fp32 on the GPU: load_weight of a vector)
  float* out;                    // [n, dim] (unless out_half)
  int n;
  int dim;
  float eps;
  // [n, dim] of out_type, when set: the input of a GEMM in that type, written without an fp32 round trip
  // (f16 saturates at ±65504).
  void* out_half = nullptr;
  HalfType out_type = HalfType::BF16;
  // Programmatic dependent launch (sm_90+): the one-block-per-row kernel is resident before the previous kernel
  // (a decode step's last matvec) ends and waits for it (griddepcontrol.wait) before it reads x; launched plainly
  // it starts only after that kernel's end (its launch latency, ~2-3 µs, in the step).
  bool pdl = false;
};

void launch_rms_norm(const RmsNormLaunch& p, cudaStream_t stream);

}  // namespace ropepp
