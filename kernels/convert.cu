// convert.cu: grid-stride elementwise conversions; bf16 rounding is round-to-nearest-even (NaN stays NaN),
// the same as ropepp::f32_to_bf16 on the host.
#include <algorithm>

#include "convert.cuh"
#include "cuda_check.cuh"

namespace ropepp {
namespace {

template <class S, class D>
__device__ __forceinline__ D convert_one(S s);
template <>
__device__ __forceinline__ __nv_bfloat16 convert_one(float s) { return __float2bfloat16_rn(s); }
template <>
__device__ __forceinline__ __nv_bfloat16 convert_one(__half s) { return __float2bfloat16_rn(__half2float(s)); }
template <>
__device__ __forceinline__ float convert_one(__half s) { return __half2float(s); }
template <>
__device__ __forceinline__ float convert_one(__nv_bfloat16 s) { return __bfloat162float(s); }

template <class S, class D>
__global__ void convert_elements(const S* __restrict__ src, D* __restrict__ dst, size_t count) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = convert_one<S, D>(src[i]);
}

__global__ void split_hi_lo(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst, size_t count) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
    const float x = src[i];
    const __nv_bfloat16 hi = __float2bfloat16_rn(x);
    dst[i] = hi;
    dst[count + i] = __float2bfloat16_rn(x - __bfloat162float(hi));
  }
}

template <class S, class D>
void launch(const ConvertLaunch& p, cudaStream_t stream) {
  if (p.count == 0) return;
  const int blocks = int(std::min<size_t>((p.count + 255) / 256, 65535 * 8));
  convert_elements<S, D><<<blocks, 256, 0, stream>>>(static_cast<const S*>(p.src), static_cast<D*>(p.dst), p.count);
  CUDA_CHECK_LAUNCH("convert_elements");
}

}  // namespace

void launch_convert_f32_to_bf16(const ConvertLaunch& p, cudaStream_t s) { launch<float, __nv_bfloat16>(p, s); }
void launch_convert_f16_to_bf16(const ConvertLaunch& p, cudaStream_t s) { launch<__half, __nv_bfloat16>(p, s); }
void launch_convert_f16_to_f32(const ConvertLaunch& p, cudaStream_t s) { launch<__half, float>(p, s); }
void launch_convert_bf16_to_f32(const ConvertLaunch& p, cudaStream_t s) { launch<__nv_bfloat16, float>(p, s); }

void launch_split_f32_to_bf16_hi_lo(const ConvertLaunch& p, cudaStream_t stream) {
  if (p.count == 0) return;
  const int blocks = int(std::min<size_t>((p.count + 255) / 256, 65535 * 8));
  split_hi_lo<<<blocks, 256, 0, stream>>>(static_cast<const float*>(p.src), static_cast<__nv_bfloat16*>(p.dst), p.count);
  CUDA_CHECK_LAUNCH("split_hi_lo");
}

}  // namespace ropepp
