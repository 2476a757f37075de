// rms_norm.cu: one block per row; sum of squares by block reduction in fp32, then scale.
#include <type_traits>

#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "rms_norm.cuh"

namespace ropepp {
namespace {

__device__ __forceinline__ float load_w(const float* w, int d) { return w[d]; }
__device__ __forceinline__ float load_w(const bf16* w, int d) { return __bfloat162float(w[d]); }
__device__ __forceinline__ float load_w(const f16* w, int d) { return __half2float(w[d]); }

// x and out may alias: every thread reads and then writes only its own elements.
template <class W, class Out>
__global__ void rms_norm_rows(const float* x, const W* __restrict__ w, Out* out, int dim, float eps) {
  pdl_launch_dependents();  // the next kernel (a matvec) may start its weight loads
  __shared__ float red[32];
  const float* xr = x + size_t(blockIdx.x) * dim;
  Out* orow = out + size_t(blockIdx.x) * dim;
  float ss = 0.f;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) ss += xr[d] * xr[d];
  ss = block_sum(ss, red);
  const float r = rsqrtf(ss / float(dim) + eps);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    const float v = xr[d] * r * load_w(w, d);
    if constexpr (std::is_same_v<Out, float>) {
      orow[d] = v;
    } else {
      orow[d] = round_to(v, Out{});
    }
  }
}

template <class W>
void launch_rows(const RmsNormLaunch& p, const W* w, int threads, cudaStream_t stream) {
  if (!p.out_half) {
    rms_norm_rows<W, float><<<p.n, threads, 0, stream>>>(p.x, w, p.out, p.dim, p.eps);
  } else if (p.out_type == HalfType::F16) {
    rms_norm_rows<W, f16><<<p.n, threads, 0, stream>>>(p.x, w, static_cast<f16*>(p.out_half), p.dim, p.eps);
  } else {
    rms_norm_rows<W, bf16><<<p.n, threads, 0, stream>>>(p.x, w, static_cast<bf16*>(p.out_half), p.dim, p.eps);
  }
}

}  // namespace

void launch_rms_norm(const RmsNormLaunch& p, cudaStream_t stream) {
  if (p.n <= 0) return;
  const int threads = p.dim >= 1024 ? 512 : (p.dim >= 256 ? 256 : 64);
  if (p.w_f32) {
    launch_rows(p, p.w_f32, threads, stream);
  } else if (p.w_type == HalfType::F16) {
    launch_rows(p, static_cast<const f16*>(p.w_half), threads, stream);
  } else {
    launch_rows(p, static_cast<const bf16*>(p.w_half), threads, stream);
  }
  CUDA_CHECK_LAUNCH("rms_norm_rows");
}

}  // namespace ropepp
