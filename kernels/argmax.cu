// argmax.cu: pass 1, kArgmaxParts blocks per row, each thread keeps (best value, lowest index) over its
// elements of the block's slice, then a block reduction; pass 2, one block per row merges the slices in one warp
// (and may write the picked token's embedding row). Both launched with PDL when asked (ArgmaxLaunch::pdl).
#include "argmax.cuh"
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "embed.cuh"

namespace ropepp {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void warp_best(float& bv, int& bi) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
}

__global__ __launch_bounds__(kThreads) void argmax_slices(const float* __restrict__ logits, int vocab,
                                                          float* __restrict__ part_v, int* __restrict__ part_i) {
  pdl_launch_dependents();  // the merge may launch
  pdl_wait();               // the logits are written by the previous kernel
  __shared__ float sv[kThreads / 32];
  __shared__ int si[kThreads / 32];
  const int row = blockIdx.x, part = blockIdx.y;
  const int per = (vocab + kArgmaxParts - 1) / kArgmaxParts;
  const int begin = part * per, end = min(vocab, begin + per);
  const float* r = logits + size_t(row) * vocab;
  float bv = neg_inf();
  int bi = vocab;                           // "none yet"
  for (int j = begin + threadIdx.x; j < end; j += kThreads) {
    const float v = __ldg(r + j);
    if (better(v, j, bv, bi)) bv = v, bi = j;  // NaN compares false: ignored
  }
  warp_best(bv, bi);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = bv, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    bv = lane < kThreads / 32 ? sv[lane] : neg_inf();
    bi = lane < kThreads / 32 ? si[lane] : vocab;
    warp_best(bv, bi);
    if (lane == 0) part_v[row * kArgmaxParts + part] = bv, part_i[row * kArgmaxParts + part] = bi;
  }
}

constexpr int kMergeThreads = 256;

// The block writes e's row for token `picked` (set by one thread before a barrier all the block passes).
__device__ __forceinline__ void write_next_embedding(const NextEmbedding& e, const int& picked) {
  __syncthreads();
  if (e.type == HalfType::F16) return embed_row(static_cast<const f16*>(e.table), picked, e.vocab, e.dim, e.out);
  embed_row(static_cast<const bf16*>(e.table), picked, e.vocab, e.dim, e.out);
}

// Host check of a NextEmbedding the launch `what` was given.
void check_next_embedding(const NextEmbedding& e, const char* what) {
  if (e.out && (!e.table || e.dim < 1)) cuda_unsupported(what, "next embedding dim (with a table)", e.dim, "≥ 1");
}

// One block per row: warp 0 merges the row's slices; with p.next.out (one row) the block then writes the picked
// token's embedding row.
__global__ __launch_bounds__(kMergeThreads) void argmax_merge(const float* __restrict__ part_v,
                                                              const int* __restrict__ part_i, const ArgmaxLaunch p) {
  pdl_launch_dependents();  // the next kernel (the next step's first matvec) may start its weight loads
  pdl_wait();               // the slices are written by argmax_slices
  __shared__ int picked;
  const int row = blockIdx.x, lane = threadIdx.x;
  if (threadIdx.x < 32) {
    float bv = neg_inf();
    int bi = p.vocab;
    for (int k = lane; k < kArgmaxParts; k += 32) {
      const float v = part_v[row * kArgmaxParts + k];
      const int i = part_i[row * kArgmaxParts + k];
      if (better(v, i, bv, bi)) bv = v, bi = i;
    }
    warp_best(bv, bi);
    if (lane == 0) p.out[row] = picked = bi < p.vocab ? bi : 0;  // all NaN: 0
  }
  if (p.next.out) write_next_embedding(p.next, picked);
}

constexpr int kKeyThreads = 1024;

__global__ __launch_bounds__(kKeyThreads) void argmax_merge_keys(const ArgmaxKeysLaunch p) {
  pdl_launch_dependents();
  pdl_wait();  // the keys are written by the matvec
  __shared__ unsigned long long warp_best[kKeyThreads / 32];
  __shared__ int picked;
  unsigned long long best = 0ull;
  for (int i = threadIdx.x; i < p.n_keys; i += kKeyThreads) best = max(best, p.keys[i]);
  best = warp_max_key(best);
  if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x >> 5] = best;
  __syncthreads();
  if (threadIdx.x < 32) {
    best = warp_max_key(warp_best[threadIdx.x]);
    if (threadIdx.x == 0) *p.out = picked = argmax_key_index(best);
  }
  if (p.next.out) write_next_embedding(p.next, picked);
}

}  // namespace

void launch_argmax_keys(const ArgmaxKeysLaunch& p, cudaStream_t stream) {
  if (p.n_keys < 1) cuda_unsupported("argmax (keys)", "n_keys", p.n_keys, "≥ 1");
  check_next_embedding(p.next, "argmax (keys)");
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = launch_config(dim3(1), dim3(kKeyThreads), 0, stream, p.pdl, attr);
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, argmax_merge_keys, p));
}

void launch_argmax(const ArgmaxLaunch& p, void* scratch, cudaStream_t stream) {
  if (p.n <= 0) return;
  if (p.next.out && p.n != 1) cuda_unsupported("argmax (with the next embedding)", "rows", p.n, "1");
  check_next_embedding(p.next, "argmax");
  float* part_v = static_cast<float*>(scratch);
  int* part_i = reinterpret_cast<int*>(part_v + size_t(p.n) * kArgmaxParts);
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t slices =
      launch_config(dim3(p.n, kArgmaxParts), dim3(kThreads), 0, stream, p.pdl, attr);
  CUDA_CHECK(cudaLaunchKernelEx(&slices, argmax_slices, p.logits, p.vocab, part_v, part_i));
  cudaLaunchAttribute attr2;
  const cudaLaunchConfig_t merge = launch_config(dim3(p.n), dim3(kMergeThreads), 0, stream, p.pdl, attr2);
  CUDA_CHECK(cudaLaunchKernelEx(&merge, argmax_merge, static_cast<const float*>(part_v),
                                static_cast<const int*>(part_i), p));
}

}  // namespace ropepp
