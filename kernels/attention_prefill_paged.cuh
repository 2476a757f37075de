// attention_prefill_paged.cuh: flash attention (tiled, online softmax, causal, f16 tensor cores,
// O(n) memory) for many query tokens per sequence, reading K/V from the paged cache.
#pragma once

#include <cuda_runtime.h>

#include "attention_paged.cuh"

namespace ropepp {

void launch_attention_prefill_paged(const AttentionPagedLaunch& p, cudaStream_t stream);

}  // namespace ropepp
