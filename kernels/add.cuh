// add.cuh: x[i] += y[i] (residual add).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace ropepp {

struct AddLaunch {
  float* x;        // [count]
  const float* y;  // [count]
  size_t count;
};

void launch_add(const AddLaunch& p, cudaStream_t stream);

}  // namespace ropepp
