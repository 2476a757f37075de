// cuda_errors.cpp: the throwing side of kernels/cuda_check.cuh, compiled by the host compiler (fmt).
#include "common.h"
#include "cuda_check.cuh"

namespace ropepp {

void cuda_fail(cudaError_t err, const char* expr, const char* file, int line) {
  fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(err), cudaGetErrorString(err), expr, file, line);
}

void cuda_unsupported(const char* op, const char* what, long long value, const char* supported) {
  fail("cuda {}: unsupported {} = {} (supported: {})", op, what, value, supported);
}

}  // namespace ropepp
