// embed.cuh: token embedding lookup from a bf16 or f16 table.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "convert.cuh"

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

}  // namespace ropepp
