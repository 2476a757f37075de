// gather_rows.cuh: out[i, :] = x[rows[i], :dim] (e.g. the last layer's rows that need logits).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ropepp {

struct GatherRowsLaunch {
  const float* x;         // [*, dim], row stride x_stride floats
  const int32_t* rows;    // [n]
  float* out;             // [n, dim] packed
  int n;
  int dim;
  int x_stride;           // ≥ dim
};

void launch_gather_rows(const GatherRowsLaunch& p, cudaStream_t stream);

}  // namespace ropepp
