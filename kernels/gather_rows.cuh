// gather_rows.cuh: out[i, :] = x[rows[i], :] (e.g. the last token of each sequence before lm_head).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ropepp {

struct GatherRowsLaunch {
  const float* x;         // [*, dim]
  const int32_t* rows;    // [n]
  float* out;             // [n, dim]
  int n;
  int dim;
};

void launch_gather_rows(const GatherRowsLaunch& p, cudaStream_t stream);

}  // namespace ropepp
