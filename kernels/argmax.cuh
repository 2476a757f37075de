// argmax.cuh: index of the largest logit of each row (greedy sampling on the device).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ropepp {

struct ArgmaxLaunch {
  const float* logits;  // [n, vocab]
  int32_t* out;         // [n]; lowest index among equal maxima; NaN logits are ignored
  int n;
  int vocab;
};

void launch_argmax(const ArgmaxLaunch& p, cudaStream_t stream);

}  // namespace ropepp
