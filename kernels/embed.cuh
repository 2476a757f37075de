// embed.cuh: token embedding lookup from a bf16 table.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ropepp {

struct EmbedLaunch {
  const __nv_bfloat16* table;  // [vocab, dim]
  const int32_t* tokens;       // [n]
  float* out;                  // [n, dim]; a token outside [0, vocab) gives a row of NaN
  int n;
  int dim;
  int64_t vocab;
};

void launch_embed(const EmbedLaunch& p, cudaStream_t stream);

}  // namespace ropepp
