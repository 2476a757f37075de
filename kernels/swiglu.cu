// swiglu.cu: elementwise silu(g) * u. Rows whose sizes and strides are multiples of 8 (every model here) run
// 8 elements per thread with 16-byte (16-bit input) or 2 × 16-byte (fp32) loads; other shapes one element per
// thread. Grid-stride over the (row, 8-column chunk) pairs, 32-bit index arithmetic.
#include <algorithm>
#include <cstdint>

#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "swiglu.cuh"

namespace ropepp {
namespace {

// 8 consecutive input elements as floats.
__device__ __forceinline__ void load8(const float* p, float* f) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
template <class T>
__device__ __forceinline__ void load8(const T* p, float* f) {
  x8_to_float(*reinterpret_cast<const uint4*>(p), f, T{});
}

__device__ __forceinline__ void store8(float* p, const float* f) {
  reinterpret_cast<float4*>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, f16) { return pack_f16x2(lo, hi); }
__device__ __forceinline__ uint32_t pack2(float lo, float hi, bf16) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (lower address)
  return *reinterpret_cast<uint32_t*>(&v);
}
template <class T>
__device__ __forceinline__ void store8(T* p, const float* f) {
  *reinterpret_cast<uint4*>(p) =
      make_uint4(pack2(f[0], f[1], T{}), pack2(f[2], f[3], T{}), pack2(f[4], f[5], T{}), pack2(f[6], f[7], T{}));
}

// gate row i at gate + i·in_stride, up row i at up + i·in_stride; out row i at out + i·dim.
template <class In, class Out>
__global__ void swiglu_rows8(const In* __restrict__ gate, const In* __restrict__ up, int in_stride,
                             Out* __restrict__ out, int n, int dim) {
  pdl_launch_dependents();  // the next kernel (a matvec) may start its weight loads
  const int chunks = dim / 8;
  const int total = n * chunks;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    const int i = idx / chunks, j = (idx - i * chunks) * 8;
    float g[8], u[8];
    load8(gate + size_t(i) * in_stride + j, g);
    load8(up + size_t(i) * in_stride + j, u);
#pragma unroll
    for (int e = 0; e < 8; ++e) g[e] = silu(g[e]) * u[e];
    store8(out + size_t(i) * dim + j, g);
  }
}

template <class In, class Out>
__global__ void swiglu_rows(const In* __restrict__ gate, const In* __restrict__ up, int in_stride,
                            Out* __restrict__ out, int n, int dim) {
  pdl_launch_dependents();
  const size_t total = size_t(n) * dim;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    const size_t i = idx / dim, j = idx % dim;
    out[idx] = from_float<Out>(silu(to_float(gate[i * in_stride + j])) * to_float(up[i * in_stride + j]));
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class In, class Out>
void launch_t(const In* gate, const In* up, const SwigluLaunch& p, Out* out, cudaStream_t stream) {
  const int threads = 256;
  const bool vec = p.dim % 8 == 0 && p.in_stride % 8 == 0 && aligned16(gate) && aligned16(up) && aligned16(out) &&
                   int64_t(p.n) * (p.dim / 8) <= INT32_MAX;
  const size_t items = vec ? size_t(p.n) * (p.dim / 8) : size_t(p.n) * p.dim;
  const int blocks = int(std::min<size_t>((items + threads - 1) / threads, 65535));
  if (vec) {
    swiglu_rows8<In, Out><<<blocks, threads, 0, stream>>>(gate, up, p.in_stride, out, p.n, p.dim);
  } else {
    swiglu_rows<In, Out><<<blocks, threads, 0, stream>>>(gate, up, p.in_stride, out, p.n, p.dim);
  }
}

template <class T>
void launch_half_in(const SwigluLaunch& p, cudaStream_t stream) {
  const T* g = static_cast<const T*>(p.in_half);
  launch_t(g, g + p.up_offset, p, static_cast<T*>(p.out_half), stream);
}

}  // namespace

void launch_swiglu(const SwigluLaunch& p, cudaStream_t stream) {
  if (size_t(p.n) * p.dim == 0) return;
  if (p.in_half) {
    if (!p.out_half || p.out_type != p.in_type)
      cuda_unsupported("swiglu (16-bit input)", "output (a 16-bit output of the input's type)", 0, "out_half");
    if (p.in_type == HalfType::F16) {
      launch_half_in<f16>(p, stream);
    } else {
      launch_half_in<bf16>(p, stream);
    }
  } else if (!p.out_half) {
    launch_t(p.gate, p.up, p, p.out, stream);
  } else if (p.out_type == HalfType::F16) {
    launch_t(p.gate, p.up, p, static_cast<f16*>(p.out_half), stream);
  } else {
    launch_t(p.gate, p.up, p, static_cast<bf16*>(p.out_half), stream);
  }
  CUDA_CHECK_LAUNCH("swiglu_rows");
}

}  // namespace ropepp
