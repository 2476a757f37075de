// cuda_check.cuh: error checks for CUDA calls and kernel launches (host side; safe to include from .cpp).
// A failing call throws ropepp::Error naming the call, the file:line and the CUDA error name.
#pragma once

#include <cuda_runtime.h>

namespace ropepp {

// Defined in src/cuda/cuda_errors.cpp (kept out of .cu files so that nvcc never compiles fmt).
[[noreturn]] void cuda_fail(cudaError_t err, const char* expr, const char* file, int line);
// A launcher asked for a configuration its kernels do not cover, e.g. head_dim 96:
// "<op>: unsupported <what> = <value> (supported: <supported>)".
[[noreturn]] void cuda_unsupported(const char* op, const char* what, long long value, const char* supported);

}  // namespace ropepp

#define CUDA_CHECK(expr)                                                              \
  do {                                                                                \
    cudaError_t ropepp_err_ = (expr);                                                 \
    if (ropepp_err_ != cudaSuccess) ::ropepp::cuda_fail(ropepp_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After every <<<...>>>, naming the kernel: catches bad launch configurations at once (faults inside a
// kernel surface at the next synchronising call, or right after the op with ROPEPP_CUDA_SYNC=1).
#define CUDA_CHECK_LAUNCH(kernel_name)                                                          \
  do {                                                                                          \
    cudaError_t ropepp_err_ = cudaGetLastError();                                               \
    if (ropepp_err_ != cudaSuccess)                                                             \
      ::ropepp::cuda_fail(ropepp_err_, "launch of " kernel_name, __FILE__, __LINE__);           \
  } while (0)
