// convert.cu: grid-stride elementwise conversions; rounding is round-to-nearest-even (NaN stays NaN), the
// same as ropepp::f32_to_bf16 on the host; f16 results saturate at ±kF16Max (from_float<f16>).
#include <algorithm>
#include <type_traits>

#include "convert.cuh"
#include "cuda_check.cuh"
#include "device_utils.cuh"

namespace ropepp {
namespace {

// An f16 destination also checks the range: `overflow` (when set) becomes 1 if any value is outside ±kF16Max.
template <class S, class D>
__global__ void convert_elements(const S* __restrict__ src, D* __restrict__ dst, size_t count, int* overflow) {
  constexpr bool kCheck = std::is_same_v<D, f16>;
  bool out_of_range = false;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
    const S s = src[i];
    if constexpr (kCheck) out_of_range |= !(fabsf(to_float(s)) <= kF16Max);  // NaN too
    dst[i] = from_float<D>(to_float(s));  // bf16/f16 ↔ fp32, bf16 ↔ f16 through fp32 (exact)
  }
  if constexpr (kCheck) {
    if (out_of_range && overflow) *overflow = 1;  // every writer stores the same value: no atomic needed
  }
}

template <class T>
__global__ void split_hi_lo(const float* __restrict__ src, T* __restrict__ dst, size_t count) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
    const float x = src[i];
    const T hi = from_float<T>(x);
    dst[i] = hi;
    dst[count + i] = from_float<T>(x - to_float(hi));
  }
}

int grid_for(size_t count) { return int(std::min<size_t>((count + 255) / 256, 65535 * 8)); }

template <class S, class D>
void launch(const ConvertLaunch& p, cudaStream_t stream) {
  if (p.count == 0) return;
  convert_elements<S, D><<<grid_for(p.count), 256, 0, stream>>>(static_cast<const S*>(p.src), static_cast<D*>(p.dst),
                                                                p.count, p.overflow);
  CUDA_CHECK_LAUNCH("convert_elements");
}

template <class T>
void launch_split(const ConvertLaunch& p, cudaStream_t stream) {
  if (p.count == 0) return;
  split_hi_lo<T><<<grid_for(p.count), 256, 0, stream>>>(static_cast<const float*>(p.src), static_cast<T*>(p.dst), p.count);
  CUDA_CHECK_LAUNCH("split_hi_lo");
}

}  // namespace

void launch_convert_f32_to_bf16(const ConvertLaunch& p, cudaStream_t s) { launch<float, bf16>(p, s); }
void launch_convert_f16_to_bf16(const ConvertLaunch& p, cudaStream_t s) { launch<f16, bf16>(p, s); }
void launch_convert_f32_to_f16(const ConvertLaunch& p, cudaStream_t s) { launch<float, f16>(p, s); }
void launch_convert_bf16_to_f16(const ConvertLaunch& p, cudaStream_t s) { launch<bf16, f16>(p, s); }
void launch_convert_f16_to_f32(const ConvertLaunch& p, cudaStream_t s) { launch<f16, float>(p, s); }
void launch_convert_bf16_to_f32(const ConvertLaunch& p, cudaStream_t s) { launch<bf16, float>(p, s); }

void launch_convert_f32_to_half(const ConvertLaunch& p, HalfType t, cudaStream_t s) {
  if (t == HalfType::F16) return launch<float, f16>(p, s);
  launch<float, bf16>(p, s);
}

void launch_split_f32_to_half_hi_lo(const ConvertLaunch& p, HalfType t, cudaStream_t s) {
  if (t == HalfType::F16) return launch_split<f16>(p, s);
  launch_split<bf16>(p, s);
}

}  // namespace ropepp
