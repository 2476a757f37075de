// embed.cuh: token embedding lookup from a bf16 or f16 table.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "convert.cuh"
#ifdef __CUDACC__
#include "device_utils.cuh"
#endif

namespace ropepp {

struct EmbedLaunch {
  const void* table;           // [vocab, dim] of table_type
  const int32_t* tokens;       // [n]
  float* out;                  // [n, dim]; a token outside [0, vocab) gives a row of NaN
  int n;
  int dim;
  int64_t vocab;
  HalfType table_type = HalfType::BF16;
};

void launch_embed(const EmbedLaunch& p, cudaStream_t stream);

#ifdef __CUDACC__
// out[0, dim) = float(table[tok, :]) by the block's threads; a row of NaN for a token outside [0, vocab).
template <class T>
__device__ __forceinline__ void embed_row(const T* __restrict__ table, int64_t tok, int64_t vocab, int dim,
                                          float* __restrict__ out) {
  if (tok < 0 || tok >= vocab) {
    for (int d = threadIdx.x; d < dim; d += blockDim.x) out[d] = __int_as_float(0x7fc00000);
    return;
  }
  const T* row = table + size_t(tok) * dim;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) out[d] = to_float(row[d]);
}
#endif

}  // namespace ropepp
