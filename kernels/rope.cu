// rope.cu: one thread per (token, head, j < head_dim/2) rotates the pair (x[j], x[j + half]).
#include <algorithm>

#include "cuda_check.cuh"
#include "rope.cuh"

namespace ropepp {
namespace {

__global__ void rope_rotate_half(float* __restrict__ x, const int32_t* __restrict__ positions,
                                 const float* __restrict__ cos_t, const float* __restrict__ sin_t, int n,
                                 int n_heads, int head_dim, int row_stride) {
  const int half = head_dim / 2;
  const size_t total = size_t(n) * n_heads * half;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    const int j = int(idx % half);
    const int h = int((idx / half) % n_heads);
    const int i = int(idx / (size_t(half) * n_heads));
    const size_t t = size_t(positions[i]) * half + j;
    const float c = cos_t[t], s = sin_t[t];
    float* xh = x + size_t(i) * row_stride + size_t(h) * head_dim;
    const float a = xh[j], b = xh[j + half];
    xh[j] = a * c - b * s;
    xh[j + half] = b * c + a * s;
  }
}

}  // namespace

void launch_rope(const RopeLaunch& p, cudaStream_t stream) {
  const size_t total = size_t(p.n) * p.n_heads * (p.head_dim / 2);
  if (total == 0) return;
  const int threads = 256;
  const int blocks = int(std::min<size_t>((total + threads - 1) / threads, 65535));
  rope_rotate_half<<<blocks, threads, 0, stream>>>(p.x, p.positions, p.cos, p.sin, p.n, p.n_heads, p.head_dim,
                                                   p.row_stride);
  CUDA_CHECK_LAUNCH("rope_rotate_half");
}

}  // namespace ropepp
