// rms_norm.cu: one block per row; sum of squares by block reduction in fp32, then scale.
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "rms_norm.cuh"

namespace ropepp {
namespace {

// x and out may alias: every thread reads and then writes only its own elements.
template <class Out>
__global__ void rms_norm_rows(const float* x, const float* __restrict__ w, Out* out, int dim, float eps) {
  pdl_launch_dependents();  // the next kernel (a matvec) may start its weight loads
  __shared__ float red[32];
  pdl_wait();  // x is written by the previous kernel (a no-op unless launched with PDL)
  const float* xr = x + size_t(blockIdx.x) * dim;
  Out* orow = out + size_t(blockIdx.x) * dim;
  float ss = 0.f;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) ss += xr[d] * xr[d];
  ss = block_sum(ss, red);
  const float r = rsqrtf(ss / float(dim) + eps);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    orow[d] = from_float<Out>(xr[d] * r * w[d]);
  }
}

}  // namespace

void launch_rms_norm(const RmsNormLaunch& p, cudaStream_t stream) {
  if (p.n <= 0) return;
  const int threads = p.dim >= 1024 ? 512 : (p.dim >= 256 ? 256 : 64);
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = launch_config(dim3(p.n), dim3(threads), 0, stream, p.pdl, attr);
  if (!p.out_half) {
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, rms_norm_rows<float>, p.x, p.w, p.out, p.dim, p.eps));
  } else if (p.out_type == HalfType::F16) {
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, rms_norm_rows<f16>, p.x, p.w, static_cast<f16*>(p.out_half), p.dim, p.eps));
  } else {
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, rms_norm_rows<bf16>, p.x, p.w, static_cast<bf16*>(p.out_half), p.dim, p.eps));
  }
  CUDA_CHECK_LAUNCH("rms_norm_rows");
}

}  // namespace ropepp
