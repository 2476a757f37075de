// attention_prefill_paged.cuh: flash attention (tiled, online softmax, causal, f16 tensor cores,
// O(n) memory) for many query tokens per sequence, reading K/V from the paged cache.
#pragma once

#include <cuda_runtime.h>

#include "attention_paged.cuh"

namespace ropepp {

struct AttentionPrefillConfig {
  int num_sms = 0;    // the device's multiprocessor count (whether token tiles are paired depends on the grid's waves)
  bool sm90 = false;  // the device is sm_90 (H100/H200): head_dim 128 run the wgmma kernel when it was built
  // With sm90: the warp-specialized wgmma kernel (attention_prefill_warp_specialized_sm90.cu) instead.
  bool warp_specialized = false;
  // With sm90 (not warp-specialized): the K/V tiles copied by the Tensor Memory Accelerator when the cache's block
  // size is a multiple of 16 (attention_prefill_paged_sm90.cu); false: every thread's cp.async copies.
  bool tma = true;
  // With warp_specialized: Q as the register operand of S = Q·Kᵀ (the tensor cores read only K from shared memory).
  bool ws_q_in_registers = true;
};

void launch_attention_prefill_paged(const AttentionPagedLaunch& p, const AttentionPrefillConfig& cfg,
                                    cudaStream_t stream);

// The Hopper kernel (attention_prefill_paged_sm90.cu, wgmma; head_dim 128). Built only when the CUDA
// architectures include 90 (it is compiled for sm_90a); built() says whether it was.
bool attention_prefill_sm90_built();
void launch_attention_prefill_paged_sm90(const AttentionPagedLaunch& p, int num_sms, bool tma, cudaStream_t stream);
// The same on the producer/consumer warpgroup schedule (attention_prefill_warp_specialized_sm90.cu).
void launch_attention_prefill_warp_specialized_sm90(const AttentionPagedLaunch& p, int num_sms, bool q_in_registers,
                                                    cudaStream_t stream);

}  // namespace ropepp
