// nll.cuh: negative log-likelihood of a target id per row, -log_softmax(logits[i])[targets[i]] (perplexity).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ropepp {

struct NllLaunch {
  const float* logits;     // [n, vocab]
  const int32_t* targets;  // [n]
  float* out;              // [n]; NaN where the target is outside [0, vocab)
  int n;
  int vocab;
};

void launch_nll(const NllLaunch& p, cudaStream_t stream);

}  // namespace ropepp
