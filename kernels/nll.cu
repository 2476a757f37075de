// nll.cu: one block per row: logsumexp in one pass (running max and sum of exp(x - max), fp32), minus x[target].
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "nll.cuh"

namespace ropepp {
namespace {

// One pass over the row: each thread keeps a running (max, sum of exp(x - max)) over its elements (4 at a time
// when the rows are 16-byte aligned), then the block merges the threads' pairs.
__device__ __forceinline__ void online_add(float& m, float& s, float x) {
  if (x > m) {
    s = s * expf(m - x) + 1.f;
    m = x;
  } else {
    s += expf(x - m);
  }
}

// The warp's running pairs merged (every lane gets the warp's pair).
__device__ __forceinline__ void warp_merge(float& m, float& s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off), s2 = __shfl_xor_sync(0xffffffffu, s, off);
    const float mm = fmaxf(m, m2);
    s = (m == neg_inf() ? 0.f : s * expf(m - mm)) + (m2 == neg_inf() ? 0.f : s2 * expf(m2 - mm));
    m = mm;
  }
}

__global__ void nll_rows(const float* __restrict__ logits, const int32_t* __restrict__ targets,
                         float* __restrict__ out, int vocab) {
  __shared__ float red_m[32], red_s[32];
  const float* row = logits + size_t(blockIdx.x) * vocab;
  float m = neg_inf(), s = 0.f;
  int tail = 0;
  if (vocab % 4 == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    for (int j = threadIdx.x; j < vocab / 4; j += blockDim.x) {
      const float4 v = __ldcs(row4 + j);  // read once: do not keep the logits in L2
      const float mx = fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w));
      if (mx > m) {
        s *= expf(m - mx);
        m = mx;
      }
      s += expf(v.x - m) + expf(v.y - m) + expf(v.z - m) + expf(v.w - m);
    }
    tail = vocab;  // nothing left
  }
  for (int j = tail + threadIdx.x; j < vocab; j += blockDim.x) online_add(m, s, row[j]);
  // merge: warps, then the block
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  warp_merge(m, s);
  if (lane == 0) red_m[warp] = m, red_s[warp] = s;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = blockDim.x >> 5;
    m = lane < n_warps ? red_m[lane] : neg_inf();
    s = lane < n_warps ? red_s[lane] : 0.f;
    warp_merge(m, s);
    if (lane == 0) {
      const int32_t t = targets[blockIdx.x];
      out[blockIdx.x] = (t < 0 || t >= vocab) ? __int_as_float(0x7fc00000) : logf(s) + m - row[t];
    }
  }
}

}  // namespace

void launch_nll(const NllLaunch& p, cudaStream_t stream) {
  if (p.n <= 0) return;
  nll_rows<<<p.n, 1024, 0, stream>>>(p.logits, p.targets, p.out, p.vocab);
  CUDA_CHECK_LAUNCH("nll_rows");
}

}  // namespace ropepp
