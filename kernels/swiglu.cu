// swiglu.cu: elementwise silu(g) * u, grid-stride over n * dim.
#include <algorithm>

#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "swiglu.cuh"

namespace ropepp {
namespace {

template <class Out>
__global__ void swiglu_rows(const float* __restrict__ gate, const float* __restrict__ up, int in_stride,
                            Out* __restrict__ out, int n, int dim) {
  pdl_launch_dependents();  // the next kernel (a matvec) may start its weight loads
  const size_t total = size_t(n) * dim;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    const size_t i = idx / dim, j = idx % dim;
    const float g = gate[i * in_stride + j];
    out[idx] = from_float<Out>(silu(g) * up[i * in_stride + j]);
  }
}

template <class Out>
void launch_t(const SwigluLaunch& p, Out* out, cudaStream_t stream) {
  const size_t total = size_t(p.n) * p.dim;
  const int threads = 256;
  const int blocks = int(std::min<size_t>((total + threads - 1) / threads, 65535));
  swiglu_rows<Out><<<blocks, threads, 0, stream>>>(p.gate, p.up, p.in_stride, out, p.n, p.dim);
}

}  // namespace

void launch_swiglu(const SwigluLaunch& p, cudaStream_t stream) {
  if (size_t(p.n) * p.dim == 0) return;
  if (!p.out_half) {
    launch_t(p, p.out, stream);
  } else if (p.out_type == HalfType::F16) {
    launch_t(p, static_cast<f16*>(p.out_half), stream);
  } else {
    launch_t(p, static_cast<bf16*>(p.out_half), stream);
  }
  CUDA_CHECK_LAUNCH("swiglu_rows");
}

}  // namespace ropepp
