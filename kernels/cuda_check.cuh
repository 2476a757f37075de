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

// A configuration for cudaLaunchKernelEx; with `pdl`, programmatic dependent launch (sm_90+): the kernel may
// start while the previous kernel in the stream finishes, and must call pdl_wait() (device_utils.cuh) before
// it reads that kernel's outputs. `attr` backs the attribute and must outlive the launch call.
inline cudaLaunchConfig_t launch_config(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                                        cudaLaunchAttribute& attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cfg;
}

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
