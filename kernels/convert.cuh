// convert.cuh: element-type conversions on the device (weights on upload, activations before cuBLAS), and
// HalfType, the 16-bit element type of a resident matrix and of a GEMM input (used by the other launchers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace ropepp {

enum class HalfType { BF16, F16 };

struct ConvertLaunch {
  const void* src;  // [count] of the source type named by the launcher
  void* dst;        // [count] of the destination type named by the launcher
  size_t count;
  // f16 destinations only, optional: a device int set to 1 when a source value is outside the f16 range
  // (|v| > 65504, ±inf or NaN); never cleared here. load_weight keeps such a matrix in bf16.
  int* overflow = nullptr;
};

// Rounding is to nearest even. An f16 destination saturates at ±65504 (never ±inf); NaN stays NaN.
void launch_convert_f32_to_bf16(const ConvertLaunch& p, cudaStream_t stream);
void launch_convert_f16_to_bf16(const ConvertLaunch& p, cudaStream_t stream);
void launch_convert_f32_to_f16(const ConvertLaunch& p, cudaStream_t stream);
void launch_convert_bf16_to_f16(const ConvertLaunch& p, cudaStream_t stream);
void launch_convert_f16_to_f32(const ConvertLaunch& p, cudaStream_t stream);
void launch_convert_bf16_to_f32(const ConvertLaunch& p, cudaStream_t stream);
// fp32 activations -> the GEMM input type `t` (launch_convert_f32_to_bf16 / _f16).
void launch_convert_f32_to_half(const ConvertLaunch& p, HalfType t, cudaStream_t stream);
// x = hi + lo with hi = T(x), lo = T(x − hi), T = bf16 or f16 (`t`): dst holds [2, count] of T (hi row, then
// lo row), so two GEMMs give ~16 (bf16) or ~22 (f16) mantissa bits of x (the backend's precise-matmul option).
void launch_split_f32_to_half_hi_lo(const ConvertLaunch& p, HalfType t, cudaStream_t stream);

}  // namespace ropepp
