// nll.cu: one block per row: max, then sum of exp(x - max) in fp32, then logsumexp - x[target].
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "nll.cuh"

namespace ropepp {
namespace {

__global__ void nll_rows(const float* __restrict__ logits, const int32_t* __restrict__ targets,
                         float* __restrict__ out, int vocab) {
  __shared__ float red[32];
  const float* row = logits + size_t(blockIdx.x) * vocab;
  float m = neg_inf();
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, row[j]);
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = (threadIdx.x & 31) < (blockDim.x >> 5) ? red[threadIdx.x & 31] : neg_inf();
  m = warp_max(m);
  float s = 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(row[j] - m);
  s = block_sum(s, red);
  if (threadIdx.x == 0) {
    const int32_t t = targets[blockIdx.x];
    out[blockIdx.x] = (t < 0 || t >= vocab) ? __int_as_float(0x7fc00000) : logf(s) + m - row[t];
  }
}

}  // namespace

void launch_nll(const NllLaunch& p, cudaStream_t stream) {
  if (p.n <= 0) return;
  nll_rows<<<p.n, 1024, 0, stream>>>(p.logits, p.targets, p.out, p.vocab);
  CUDA_CHECK_LAUNCH("nll_rows");
}

}  // namespace ropepp
