// rope.cuh: rotary position embedding in place (HF rotate_half convention), tables precomputed.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ropepp {

struct RopeLaunch {
  float* x;                   // [n, n_heads, head_dim], row stride `row_stride` floats
  const int32_t* positions;   // [n]
  const float* cos;           // [max_pos + 1, head_dim / 2]
  const float* sin;           // [max_pos + 1, head_dim / 2]
  int n;
  int n_heads;
  int head_dim;
  int row_stride;
};

void launch_rope(const RopeLaunch& p, cudaStream_t stream);

}  // namespace ropepp
