// attention_decode_combine.cuh: where the decode attention's context splits meet. Each split block of a
// (token, kv head) writes a partial (unnormalised out, running max, sum) per query row; the partials are merged
// either by the combine kernel (attention_decode_paged.cu) or, with few splits, by the last split block of the
// (token, kv head) to finish (the "last block" of a split-K reduction: a counter per (token, kv head), counted
// after the block's partial is visible device-wide). The second saves a kernel and its PDL hand-over per layer.
#pragma once

#include <cstdint>

#include "device_utils.cuh"

#ifdef __CUDACC__
#include <cooperative_groups.h>
#endif

namespace ropepp {

// Splits a last block merges at most (a warp per row, a lane per split); more go to the combine kernel.
constexpr int kDecodeLastBlockMaxSplits = 32;
// Splits a thread-block cluster merges at most (AttentionDecodePlan::cluster_merge): the portable cluster size.
constexpr int kDecodeClusterMaxSplits = 8;

struct DecodePartials {
  float* o = nullptr;           // [n_tokens, n_splits, n_out_heads, head_dim] unnormalised outputs
  float* ml = nullptr;          // [n_tokens, n_splits, n_out_heads, 2] (running max in the log2 domain, sum)
  unsigned* counters = nullptr;  // [n_tokens, n_kv_heads] zero between launches; null: the combine kernel merges
  // The splits of a (token, kv head) are one thread-block cluster (dims (1, 1, n_splits)) and merge through
  // distributed shared memory (decode_merge_splits_in_cluster): o, ml and counters unused.
  bool cluster = false;
};

#ifdef __CUDACC__
// Called by every thread of a split block after it wrote its partial: true in the last block of its (token, kv
// head) to get here, which then sees every split's partial (read them with __ldcg: not through L1). The last
// block resets the counter for the next launch (every other block of its (token, kv head) has counted).
__device__ __forceinline__ bool decode_split_is_last(unsigned* counter, int n_splits) {
  __shared__ bool last;
  __threadfence();  // this block's partial is visible device-wide before it is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1u) == unsigned(n_splits - 1);
    if (last) *counter = 0u;
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The last block's merge of the n_splits ≤ kDecodeLastBlockMaxSplits partials of out heads oh0 .. oh0 + R - 1 of
// token tok: a warp per row reads the splits' (max, sum) one per lane and leaves the normalised weights in w_s
// ([R][n_splits] floats of shared memory, free for this use); then a thread per (row, 4 dims) sums the weighted
// partial rows. out: [n_tokens, n_out_heads, HD].
template <int HD>
__device__ __forceinline__ void decode_merge_splits_in_block(const DecodePartials& parts, float* __restrict__ out,
                                                              int tok, int n_splits, int n_out_heads, int oh0, int R,
                                                              float* w_s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const size_t tok_base = size_t(tok) * n_splits * n_out_heads;  // + split · n_out_heads + head
  for (int r = warp; r < R; r += n_warps) {
    float m = neg_inf(), l = 0.f;
    if (lane < n_splits) {
      const float2 v = __ldcg(reinterpret_cast<const float2*>(parts.ml + (tok_base + size_t(lane) * n_out_heads + oh0 + r) * 2));
      if (v.y > 0.f) m = v.x, l = v.y;  // a split that saw no key: weight 0
    }
    const float mx = warp_max(m);
    const float w = l > 0.f ? exp2f(m - mx) : 0.f;
    const float total = warp_sum(w * l);
    if (lane < n_splits) w_s[r * n_splits + lane] = total > 0.f ? w / total : 0.f;
  }
  __syncthreads();
  constexpr int kVecs = HD / 4;  // float4s per row
  for (int i = threadIdx.x; i < R * kVecs; i += blockDim.x) {
    const int r = i / kVecs, c = i % kVecs;
    const float* ws = w_s + r * n_splits;
    const float4* po = reinterpret_cast<const float4*>(parts.o + (tok_base + oh0 + r) * HD) + c;
    const size_t split_stride = size_t(n_out_heads) * kVecs;  // float4s from one split's row to the next's
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int s = 0; s < n_splits; ++s) {
      const float w = ws[s];
      const float4 v = __ldcg(po + s * split_stride);
      acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
    }
    reinterpret_cast<float4*>(out + (size_t(tok) * n_out_heads + oh0 + r) * HD)[c] = acc;
  }
}

// Splits' partials of one row (ml: (max in the log2 domain, sum); v: 4 unnormalised output dims) merged and
// normalised; the first n of N are used, a split that saw no key (sum 0) weighs 0.
template <int N>
__device__ __forceinline__ float4 merge_split_partials(const float2 (&ml)[N], const float4 (&v)[N], int n) {
  float mx = neg_inf();
#pragma unroll
  for (int s = 0; s < N; ++s)
    if (s < n && ml[s].y > 0.f) mx = fmaxf(mx, ml[s].x);
  float total = 0.f;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int s = 0; s < N; ++s) {
    if (s < n && ml[s].y > 0.f) {
      const float w = exp2f(ml[s].x - mx);
      total += w * ml[s].y;
      acc.x += w * v[s].x, acc.y += w * v[s].y, acc.z += w * v[s].z, acc.w += w * v[s].w;
    }
  }
  const float inv = total > 0.f ? 1.f / total : 0.f;
  return make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
}

// The merge of a cluster's splits (DecodePartials::cluster: dims (1, 1, n_splits), block rank = split). Each block left its
// partial of out heads oh0 .. oh0 + R − 1 in its own shared memory at the same offset: `part` = unnormalised rows
// [16][HD], then (max in the log2 domain, sum) [16][2]. After the cluster's barrier, block s normalises the float4s
// s, s + n_splits, ... of the R × HD outputs, reading every split's partial through distributed shared memory (one
// round trip of independent loads per thread); a second barrier keeps each block's shared memory alive until every
// block has read it. Every thread of every block of the cluster must call it. out: [n_tokens, n_out_heads, HD].
template <int HD>
__device__ __forceinline__ void decode_merge_splits_in_cluster(float* __restrict__ out, float* part, int tok,
                                                               int n_splits, int n_out_heads, int oh0, int R) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every split's partial is in its block's shared memory (release / acquire)
  const int rank = int(cluster.block_rank());
  constexpr int kVecs = HD / 4;  // float4s per row
  for (int i = rank + n_splits * int(threadIdx.x); i < R * kVecs; i += n_splits * int(blockDim.x)) {
    const int r = i / kVecs, c = i % kVecs;
    float2 ml[kDecodeClusterMaxSplits];
    float4 v[kDecodeClusterMaxSplits];
#pragma unroll
    for (int s = 0; s < kDecodeClusterMaxSplits; ++s) {
      if (s < n_splits) {
        const float* remote = cluster.map_shared_rank(part, s);
        ml[s] = *reinterpret_cast<const float2*>(remote + 16 * HD + r * 2);
        v[s] = reinterpret_cast<const float4*>(remote + r * HD)[c];
      }
    }
    reinterpret_cast<float4*>(out + (size_t(tok) * n_out_heads + oh0 + r) * HD)[c] =
        merge_split_partials(ml, v, n_splits);
  }
  cluster.sync();  // no block leaves (freeing its shared memory) while another may still read it
#else
  __trap();  // clusters need sm_90; the host plans them only there
#endif
}
#endif

}  // namespace ropepp
