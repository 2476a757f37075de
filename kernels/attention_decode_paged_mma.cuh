// attention_decode_paged_mma.cuh: the tensor-core split kernel of the decode attention
// (attention_decode_paged_mma.cu). Called by launch_attention_decode_paged when plan.tensor_cores is set; writes
// the same outputs (n_splits == 1) or partials (part_o [n_tokens, n_splits, out heads, head_dim], part_ml
// [..., 2] = running max, sum) as the fp32 split kernel, for the same combine kernel.
#pragma once

#include <cuda_runtime.h>

#include "attention_decode_combine.cuh"
#include "attention_decode_paged.cuh"

namespace ropepp {

void launch_attention_decode_split_mma(const AttentionPagedLaunch& p, const AttentionDecodePlan& plan,
                                       const DecodePartials& parts, cudaStream_t stream);

}  // namespace ropepp
