// convert.cuh: element-type conversions on the device (weights on upload, activations before cuBLAS).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace ropepp {

struct ConvertLaunch {
  const void* src;  // [count] of the source type named by the launcher
  void* dst;        // [count] of the destination type named by the launcher
  size_t count;
};

void launch_convert_f32_to_bf16(const ConvertLaunch& p, cudaStream_t stream);  // round to nearest even
void launch_convert_f16_to_bf16(const ConvertLaunch& p, cudaStream_t stream);
void launch_convert_f16_to_f32(const ConvertLaunch& p, cudaStream_t stream);
void launch_convert_bf16_to_f32(const ConvertLaunch& p, cudaStream_t stream);
// x = hi + lo with hi = bf16(x), lo = bf16(x − hi): dst holds [2, count] bf16 (hi row, then lo row), so
// two bf16 GEMMs give ~16 mantissa bits of x (the backend's precise-matmul option).
void launch_split_f32_to_bf16_hi_lo(const ConvertLaunch& p, cudaStream_t stream);

}  // namespace ropepp
