// argmax.cuh: index of the largest logit of each row (greedy sampling on the device).
// Two passes so that a 128k-entry row is read by many SMs: kArgmaxParts blocks per row each reduce a slice to
// (value, index) in `scratch`, then one warp per row merges the slices in order (deterministic).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace ropepp {

constexpr int kArgmaxParts = 64;

struct ArgmaxLaunch {
  const float* logits;  // [n, vocab]
  int32_t* out;         // [n]; lowest index among equal maxima; NaN logits are ignored
  int n;
  int vocab;
  // Programmatic dependent launch (sm_90+): both passes start while the previous kernel (the lm_head matvec)
  // finishes and wait for it (griddepcontrol.wait) before they read its output.
  bool pdl = false;
};

inline size_t argmax_scratch_bytes(int n) { return size_t(n) * kArgmaxParts * (sizeof(float) + sizeof(int32_t)); }

// scratch: argmax_scratch_bytes(n) bytes of device memory.
void launch_argmax(const ArgmaxLaunch& p, void* scratch, cudaStream_t stream);

}  // namespace ropepp
