// add.cu: x += y with 16-byte accesses where both pointers allow, scalar otherwise.
#include <algorithm>
#include <cstdint>

#include "add.cuh"
#include "cuda_check.cuh"

namespace ropepp {
namespace {

__global__ void add_in_place_vec4(float4* __restrict__ x, const float4* __restrict__ y, size_t n4) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n4; i += size_t(gridDim.x) * blockDim.x) {
    float4 a = x[i];
    const float4 b = y[i];
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
    x[i] = a;
  }
}

__global__ void add_in_place(float* __restrict__ x, const float* __restrict__ y, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

int blocks_for(size_t n, int threads) { return int(std::min<size_t>((n + threads - 1) / threads, 65535 * 4)); }

}  // namespace

void launch_add(const AddLaunch& p, cudaStream_t stream) {
  if (p.count == 0) return;
  const bool aligned = (reinterpret_cast<uintptr_t>(p.x) | reinterpret_cast<uintptr_t>(p.y)) % 16 == 0;
  size_t done = 0;
  if (aligned && p.count >= 4) {
    const size_t n4 = p.count / 4;
    add_in_place_vec4<<<blocks_for(n4, 256), 256, 0, stream>>>(reinterpret_cast<float4*>(p.x),
                                                               reinterpret_cast<const float4*>(p.y), n4);
    CUDA_CHECK_LAUNCH("add_in_place_vec4");
    done = n4 * 4;
  }
  if (done < p.count) {
    const size_t rest = p.count - done;
    add_in_place<<<blocks_for(rest, 256), 256, 0, stream>>>(p.x + done, p.y + done, rest);
    CUDA_CHECK_LAUNCH("add_in_place");
  }
}

}  // namespace ropepp
