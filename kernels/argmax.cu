// argmax.cu: one block per row; each thread keeps (best value, lowest index), then a block reduction.
#include "argmax.cuh"
#include "cuda_check.cuh"

namespace ropepp {
namespace {

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__global__ void argmax_rows(const float* __restrict__ logits, int32_t* __restrict__ out, int vocab) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* row = logits + size_t(blockIdx.x) * vocab;
  float bv = -__int_as_float(0x7f800000);  // -inf
  int bi = vocab;                           // "none yet"
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = row[j];
    if (better(v, j, bv, bi)) bv = v, bi = j;  // NaN compares false: ignored
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = bv, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = blockDim.x >> 5;
    bv = lane < n_warps ? sv[lane] : -__int_as_float(0x7f800000);
    bi = lane < n_warps ? si[lane] : vocab;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    if (lane == 0) out[blockIdx.x] = bi < vocab ? bi : 0;  // all NaN/-inf: 0
  }
}

}  // namespace

void launch_argmax(const ArgmaxLaunch& p, cudaStream_t stream) {
  if (p.n <= 0) return;
  argmax_rows<<<p.n, 1024, 0, stream>>>(p.logits, p.out, p.vocab);
  CUDA_CHECK_LAUNCH("argmax_rows");
}

}  // namespace ropepp
