// argmax.cuh: index of the largest logit of each row (greedy sampling on the device).
// Two passes so that a 128k-entry row is read by many SMs: kArgmaxParts blocks per row each reduce a slice to
// (value, index) in `scratch`, then one warp per row merges the slices in order (deterministic).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "convert.cuh"

namespace ropepp {

constexpr int kArgmaxParts = 64;

// The picked token's embedding row, written by the argmax's last kernel: the next chained decode step's x (no
// embedding kernel there). out == nullptr: none. A row of NaN for an index ≥ vocab.
struct NextEmbedding {
  const void* table = nullptr;  // [vocab, dim] of type
  float* out = nullptr;         // [dim]
  int dim = 0;
  long long vocab = 0;
  HalfType type = HalfType::BF16;
};

struct ArgmaxLaunch {
  const float* logits;  // [n, vocab]
  int32_t* out;         // [n]; lowest index among equal maxima; NaN logits are ignored
  int n;
  int vocab;
  // Programmatic dependent launch (sm_90+): both passes start while the previous kernel (the lm_head matvec)
  // finishes and wait for it (griddepcontrol.wait) before they read its output.
  bool pdl = false;
  NextEmbedding next{};  // with next.out (n == 1 only): the merge also writes the picked index's embedding row
};

inline size_t argmax_scratch_bytes(int n) { return size_t(n) * kArgmaxParts * (sizeof(float) + sizeof(int32_t)); }

// scratch: argmax_scratch_bytes(n) bytes of device memory.
void launch_argmax(const ArgmaxLaunch& p, void* scratch, cudaStream_t stream);

// One row's argmax from per-block (value, index) keys (argmax_key: the lm_head matvec's argmax epilogue writes
// one per block): *out = the index of the largest key (0 if every key is 0: no value but NaN), and with next.out
// the embedding row of that index.
struct ArgmaxKeysLaunch {
  const unsigned long long* keys;  // [n_keys]
  int n_keys;
  int32_t* out;                    // [1]
  NextEmbedding next{};
  bool pdl = false;  // waits for the matvec that writes the keys (griddepcontrol.wait)
};

void launch_argmax_keys(const ArgmaxKeysLaunch& p, cudaStream_t stream);

#if defined(__CUDACC__)
// The argmax's order of (value, index): a larger key is a larger value, then a lower index; 0 for NaN (never
// picked). -0 counts as +0 (they compare equal: the lower index wins, as in the CPU's argmax).
__device__ __forceinline__ unsigned long long argmax_key(float v, int i) {
  if (isnan(v)) return 0ull;
  unsigned b = __float_as_uint(v == 0.f ? 0.f : v);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<unsigned long long>(b) << 32) | (0xFFFFFFFFu - unsigned(i));
}
// The index a key stands for (0 for the key 0: nothing but NaN).
__device__ __forceinline__ int argmax_key_index(unsigned long long k) {
  return k != 0ull ? int(0xFFFFFFFFu - unsigned(k & 0xFFFFFFFFull)) : 0;
}
__device__ __forceinline__ unsigned long long warp_max_key(unsigned long long k) {
  for (int o = 16; o > 0; o >>= 1) k = max(k, __shfl_xor_sync(0xffffffffu, k, o));
  return k;
}
#endif

}  // namespace ropepp
