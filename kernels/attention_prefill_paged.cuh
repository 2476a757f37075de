// attention_prefill_paged.cuh: flash attention (tiled, online softmax, causal, f16 tensor cores,
// O(n) memory) for many query tokens per sequence, reading K/V from the paged cache.
#pragma once

#include <cuda_runtime.h>

#include "attention_paged.cuh"

namespace ropepp {

// num_sms: the device's multiprocessor count (whether token tiles are paired depends on the grid's waves).
void launch_attention_prefill_paged(const AttentionPagedLaunch& p, int num_sms, cudaStream_t stream);

}  // namespace ropepp
