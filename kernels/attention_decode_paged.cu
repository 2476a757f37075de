// attention_decode_paged.cu: flash-decoding over the paged f16 KV cache.
//
// attention_decode_split_kv: one block of 128 threads per (token, kv head, context split). The block
// streams its split in tiles of kTile positions (K and V, two cp.async stages), and serves all R query
// rows of the kv head (the group's q heads, and with RoPE++ each one's imaginary row −rot(q)) from that one
// read. Per tile: scores S[R, kTile] in fp32 (one thread per position), an online-softmax update per row
// (one warp per row), then O[R, head_dim] += P · V (each thread owns two columns for every row, over a
// strided subset of positions). K and V are widened from f16 to fp32; all math is fp32. Scores are kept in
// the log2 domain (q pre-scaled by scale·log2(e)).
// attention_decode_combine: merges the splits' partial (max, sum, unnormalised out) per out head, unless the last
// split block of each (token, kv head) did (few splits and plan.split_counters: attention_decode_combine.cuh).
#include <algorithm>

#include "attention_decode_combine.cuh"
#include "attention_decode_paged.cuh"
#include "attention_decode_paged_mma.cuh"
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "paged_kv_load.cuh"

namespace ropepp {
namespace {

constexpr int kThreads = 128;
constexpr int kTile = 64;         // positions per tile (kThreads / 2: two threads per position for scores)

template <int HD, int MAX_R>
struct DecodeSmem {
  static constexpr int kLd = HD + 8;  // f16 row pitch: +16 bytes keeps 16-byte row reads conflict-free
  static constexpr size_t kKv = size_t(2) * kTile * kLd;  // f16 elements of K (or V), both stages
  static constexpr int kGroups = kThreads / (HD / 2);     // position groups in P·V (each thread: 2 columns)
  // K and V stages; after the last tile the same bytes hold the per-group partial outputs.
  static constexpr size_t kKvBytes = std::max(2 * kKv * sizeof(f16), size_t(kGroups) * MAX_R * HD * sizeof(float));
  static constexpr size_t bytes() {
    return kKvBytes + (size_t(MAX_R) * HD + size_t(MAX_R) * kTile + 3 * MAX_R) * sizeof(float);
  }
};

template <int HD, int MAX_R>
__global__ __launch_bounds__(kThreads) void attention_decode_split_kv(AttentionPagedLaunch p, int chunk,
                                                                      int n_splits, const DecodePartials partials) {
  pdl_launch_dependents();  // the next kernel (a matvec) may start its weight loads
  pdl_wait();               // q and the cache slots are written by the previous kernel
  using Smem = DecodeSmem<HD, MAX_R>;
  constexpr int kLd = Smem::kLd;
  constexpr int kChunksPerRow = HD / 8;    // 16-byte pieces of one K/V row
  constexpr int kGroups = Smem::kGroups;

  const DecodeSplit ds(p, chunk);
  const int tok = ds.tok, kh = ds.kh, split = ds.split, group = ds.group, parts = ds.parts, R = ds.R;
  const int n_out_heads = ds.n_out_heads, seq = ds.seq, begin = ds.begin, end = ds.end;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  extern __shared__ uint4 smem_raw[];
  f16* k_s = reinterpret_cast<f16*>(smem_raw);         // [2][kTile][kLd]
  f16* v_s = k_s + Smem::kKv;                           // [2][kTile][kLd]
  float* q_s = reinterpret_cast<float*>(reinterpret_cast<char*>(smem_raw) + Smem::kKvBytes);  // [MAX_R][HD]
  float* s_s = q_s + MAX_R * HD;                         // [MAX_R][kTile] scores, then probabilities
  float* alpha_s = s_s + MAX_R * kTile;                  // [MAX_R] rescale of the running output
  float* m_s = alpha_s + MAX_R;                          // [MAX_R] running max (log2 domain)
  float* l_s = m_s + MAX_R;                              // [MAX_R] running sum

  // Query rows: row = j * parts + part, for q head kh * group + j; part 1 is −rot(q) = cat(q[d/2:], −q[:d/2]).
  const float qscale = p.scale * kLog2e;
  for (int idx = tid; idx < R * HD; idx += kThreads) {
    const int row = idx / HD, d = idx % HD;
    const float* qh = p.q + size_t(tok) * p.q_row_stride + size_t(kh * group + row / parts) * HD;
    const float v = (row % parts == 0) ? qh[d] : (d < HD / 2 ? qh[d + HD / 2] : -qh[d - HD / 2]);
    q_s[idx] = v * qscale;
  }
  if (tid < MAX_R) m_s[tid] = neg_inf(), l_s[tid] = 0.f;

  const int32_t* table = p.block_table + size_t(seq) * p.max_blocks_per_seq;
  const PagedKvHead<HD> head(p, kh);
  auto load_tile = [&](int stage, int t0) {
    f16* ks = k_s + stage * kTile * kLd;
    f16* vs = v_s + stage * kTile * kLd;
    for (int c = tid; c < kTile * kChunksPerRow; c += kThreads) {
      const int t = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
      head.copy_piece(p, table, t0 + t, end, col, ks + t * kLd + col, vs + t * kLd + col);
    }
    cp_async_commit();
  };

  const int n_tiles = end > begin ? (end - begin + kTile - 1) / kTile : 0;
  if (n_tiles > 0) load_tile(0, begin);

  // P·V accumulators: columns 2·c2, 2·c2+1 of every row, over positions t ≡ pg (mod kGroups).
  const int c2 = tid % (HD / 2), pg = tid / (HD / 2);
  float acc[MAX_R][2];
#pragma unroll
  for (int r = 0; r < MAX_R; ++r) acc[r][0] = acc[r][1] = 0.f;
  __syncthreads();  // q_s, m_s, l_s

  for (int it = 0; it < n_tiles; ++it) {
    const int t0 = begin + it * kTile;
    const int stage = it & 1;
    if (it + 1 < n_tiles) {
      load_tile(stage ^ 1, t0 + kTile);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const f16* ks = k_s + stage * kTile * kLd;
    const f16* vs = v_s + stage * kTile * kLd;

    // Scores: thread (t, r0) computes rows r0, r0 + 2, ... for position t0 + t.
    {
      const int t = tid % kTile, r0 = tid / kTile;
      float sc[MAX_R / 2];
#pragma unroll
      for (int i = 0; i < MAX_R / 2; ++i) sc[i] = 0.f;
      const f16* kr = ks + t * kLd;
#pragma unroll 4
      for (int c = 0; c < kChunksPerRow; ++c) {
        float kf[8];
        f16x8_to_float(*reinterpret_cast<const uint4*>(kr + c * 8), kf);
#pragma unroll
        for (int i = 0; i < MAX_R / 2; ++i) {
          const int r = r0 + 2 * i;
          if (r < R) {
            const float4 a = *reinterpret_cast<const float4*>(q_s + r * HD + c * 8);
            const float4 b = *reinterpret_cast<const float4*>(q_s + r * HD + c * 8 + 4);
            sc[i] += a.x * kf[0] + a.y * kf[1] + a.z * kf[2] + a.w * kf[3] + b.x * kf[4] + b.y * kf[5] +
                     b.z * kf[6] + b.w * kf[7];
          }
        }
      }
      const bool valid = t0 + t < end;
#pragma unroll
      for (int i = 0; i < MAX_R / 2; ++i) {
        const int r = r0 + 2 * i;
        if (r < R) s_s[r * kTile + t] = valid ? sc[i] : neg_inf();
      }
    }
    __syncthreads();

    // Online softmax, one warp per row.
    for (int r = warp; r < R; r += kThreads / 32) {
      const float a = s_s[r * kTile + lane], b = s_s[r * kTile + lane + 32];
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, warp_max(fmaxf(a, b)));
      const float m_use = m_new == neg_inf() ? 0.f : m_new;  // a row with nothing seen yet stays at 0
      const float pa = exp2f(a - m_use), pb = exp2f(b - m_use);
      s_s[r * kTile + lane] = pa;
      s_s[r * kTile + lane + 32] = pb;
      const float sum = warp_sum(pa + pb);
      __syncwarp();  // every lane has read m_s[r] / l_s[r] before lane 0 overwrites them
      if (lane == 0) {
        const float alpha = exp2f(m_old - m_use);
        alpha_s[r] = alpha;
        l_s[r] = l_s[r] * alpha + sum;
        m_s[r] = m_new;
      }
    }
    __syncthreads();

    // O += P · V
#pragma unroll
    for (int r = 0; r < MAX_R; ++r) {
      if (r < R) {
        const float alpha = alpha_s[r];
        acc[r][0] *= alpha;
        acc[r][1] *= alpha;
      }
    }
    for (int t = pg; t < kTile; t += kGroups) {
      const float2 vf = __half22float2(*reinterpret_cast<const __half2*>(vs + t * kLd + 2 * c2));
#pragma unroll
      for (int r = 0; r < MAX_R; ++r) {
        if (r < R) {
          const float pr = s_s[r * kTile + t];
          acc[r][0] += pr * vf.x;
          acc[r][1] += pr * vf.y;
        }
      }
    }
    __syncthreads();  // the next iteration refills the other stage and rewrites s_s
  }

  // Reduce the position groups through shared memory (the K/V stages are free now).
  float* red = reinterpret_cast<float*>(smem_raw);  // [kGroups][MAX_R][HD]
#pragma unroll
  for (int r = 0; r < MAX_R; ++r) {
    if (r < R) {
      red[(pg * MAX_R + r) * HD + 2 * c2] = acc[r][0];
      red[(pg * MAX_R + r) * HD + 2 * c2 + 1] = acc[r][1];
    }
  }
  __syncthreads();
  for (int idx = tid; idx < R * HD; idx += kThreads) {
    const int r = idx / HD, d = idx % HD;
    float o = 0.f;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) o += red[(g * MAX_R + r) * HD + d];
    const int oh = kh * R + r;
    if (n_splits == 1) {
      const float l = l_s[r];
      p.out[(size_t(tok) * n_out_heads + oh) * HD + d] = l > 0.f ? o / l : 0.f;
    } else {
      partials.o[((size_t(tok) * n_splits + split) * n_out_heads + oh) * HD + d] = o;
    }
  }
  if (n_splits > 1 && tid < R) {
    float* ml = partials.ml + ((size_t(tok) * n_splits + split) * n_out_heads + kh * R + tid) * 2;
    ml[0] = m_s[tid];
    ml[1] = l_s[tid];
  }
  // With few splits, the last block of the (token, kv head) merges them (no combine kernel).
  if (n_splits > 1 && partials.counters &&
      decode_split_is_last(partials.counters + size_t(tok) * p.n_kv_heads + kh, n_splits))
    decode_merge_splits_in_block<HD>(partials, p.out, tok, n_splits, n_out_heads, kh * R, R,
                                     reinterpret_cast<float*>(smem_raw));
}

// The combine: one block of kCombineThreads per (token, out head, column slice of kCombineSliceVecs float4s).
// Every load it needs is issued at once after its wait (one L2 round trip for up to kCombineItems float4s per
// thread: 256 splits of a 128-dim head): each thread owns one float4 column c of the slice and the splits
// s0, s0 + kCombineThreads / sv, ..., and reads their (max, sum) beside their rows; the block's max and total
// weight come from the (max, sum) of splits tid, tid + kCombineThreads, ... (two block reductions), then each
// thread weights its rows, the lanes of one column add up by shuffles and the warps through shared memory.
// Launched with PDL after the split kernel: it waits (griddepcontrol) before reading the partials.
constexpr int kCombineThreads = 256;
constexpr int kCombineWarps = kCombineThreads / 32;
constexpr int kCombineSliceVecs = 8;  // float4 columns per block (32 dims): HD 128 → 4 blocks per out head
constexpr int kCombineItems = 8;      // (split, column) float4s per thread in flight

__host__ __device__ constexpr int combine_slice_vecs(int head_dim) {
  return head_dim / 4 < kCombineSliceVecs ? head_dim / 4 : kCombineSliceVecs;
}

__global__ __launch_bounds__(kCombineThreads) void attention_decode_combine(const float* __restrict__ part_o,
                                                                            const float* __restrict__ part_ml,
                                                                            float* __restrict__ out, int n_splits,
                                                                            int n_out_heads, int head_dim) {
  pdl_launch_dependents();  // the next kernel (a matvec) may start its weight loads
  pdl_wait();               // the partials are written by the split kernel
  __shared__ float red[32];
  __shared__ float4 acc_s[kCombineWarps][kCombineSliceVecs];
  const int sv = combine_slice_vecs(head_dim), slices = head_dim / 4 / sv;
  const int slice = blockIdx.x % slices, oh = (blockIdx.x / slices) % n_out_heads;
  const int tok = blockIdx.x / (slices * n_out_heads), tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const size_t base = size_t(tok) * n_splits * n_out_heads + oh;  // + split * n_out_heads
  const int c = tid % sv, s_first = tid / sv, s_step = kCombineThreads / sv;  // sv divides 32
  const size_t vec_stride = size_t(n_out_heads) * (head_dim / 4);  // float4s from one split's row to the next's
  const float4* po = reinterpret_cast<const float4*>(part_o) + base * (head_dim / 4) + slice * sv + c;
  const float2* pml = reinterpret_cast<const float2*>(part_ml) + base;
  float4 v[kCombineItems];
  float2 vm[kCombineItems];
  auto load_items = [&](int s_begin) {
#pragma unroll
    for (int k = 0; k < kCombineItems; ++k) {
      const int s = s_begin + s_first + k * s_step;
      v[k] = s < n_splits ? __ldcg(po + size_t(s) * vec_stride) : make_float4(0.f, 0.f, 0.f, 0.f);
      vm[k] = s < n_splits ? __ldcg(pml + size_t(s) * n_out_heads) : make_float2(0.f, 0.f);
    }
  };
  load_items(0);
  // The block's max M over the splits that saw a key, then its total weight Σ 2^(m_s − M) · l_s: each thread
  // keeps a running (max, sum) over splits tid, tid + kCombineThreads, ... (one round trip for ≤ 256 splits).
  float m = neg_inf(), l = 0.f;
  for (int s = tid; s < n_splits; s += kCombineThreads) {
    const float2 ml = __ldcg(pml + size_t(s) * n_out_heads);
    if (ml.y > 0.f) {
      if (ml.x > m) l = l * exp2f(m - ml.x) + ml.y, m = ml.x;
      else l += ml.y * exp2f(ml.x - m);
    }
  }
  const float m_own = m;
  m = warp_max(m);
  if (lane == 0) red[warp] = m;
  __syncthreads();
  m = warp_max(lane < kCombineWarps ? red[lane] : neg_inf());
  l = block_sum(l > 0.f ? l * exp2f(m_own - m) : 0.f, red);  // block_sum waits until red was read
  const float inv = l > 0.f ? 1.f / l : 0.f;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int s_begin = 0;;) {
#pragma unroll
    for (int k = 0; k < kCombineItems; ++k) {
      const float w = vm[k].y > 0.f ? exp2f(vm[k].x - m) : 0.f;  // empty splits (and padding): weight 0
      acc.x += w * v[k].x, acc.y += w * v[k].y, acc.z += w * v[k].z, acc.w += w * v[k].w;
    }
    s_begin += kCombineItems * s_step;
    if (s_begin >= n_splits) break;
    load_items(s_begin);
  }
  // Lanes with the same column (lane % sv) add up, then the warps.
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) {
    if (o < sv) break;
    acc.x += __shfl_xor_sync(0xffffffffu, acc.x, o);
    acc.y += __shfl_xor_sync(0xffffffffu, acc.y, o);
    acc.z += __shfl_xor_sync(0xffffffffu, acc.z, o);
    acc.w += __shfl_xor_sync(0xffffffffu, acc.w, o);
  }
  if (lane < sv) acc_s[warp][lane] = acc;
  __syncthreads();
  if (tid < sv) {
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < kCombineWarps; ++w) {
      const float4 a = acc_s[w][tid];
      o.x += a.x, o.y += a.y, o.z += a.z, o.w += a.w;
    }
    o.x *= inv, o.y *= inv, o.z *= inv, o.w *= inv;
    reinterpret_cast<float4*>(out + (size_t(tok) * n_out_heads + oh) * head_dim)[slice * sv + tid] = o;
  }
}

template <int HD, int MAX_R>
void launch_split_kv(const AttentionPagedLaunch& p, const AttentionDecodePlan& plan, const DecodePartials& parts,
                     cudaStream_t stream) {
  static_assert(DecodeSmem<HD, MAX_R>::kKvBytes >= kAttentionMaxRows * kDecodeLastBlockMaxSplits * sizeof(float));
  launch_decode_split(attention_decode_split_kv<HD, MAX_R>, DecodeSmem<HD, MAX_R>::bytes(), kThreads, p, plan, parts,
                      stream, "launch of attention_decode_split_kv");
}

template <int HD>
void dispatch_rows(const AttentionPagedLaunch& p, const AttentionDecodePlan& plan, const DecodePartials& parts,
                   cudaStream_t stream) {
  const int rows = attention_rows_per_kv_head(p);
  if (rows <= 2) return launch_split_kv<HD, 2>(p, plan, parts, stream);
  if (rows <= 4) return launch_split_kv<HD, 4>(p, plan, parts, stream);
  if (rows <= 8) return launch_split_kv<HD, 8>(p, plan, parts, stream);
  return launch_split_kv<HD, 16>(p, plan, parts, stream);
}

}  // namespace

AttentionDecodePlan plan_attention_decode_paged(const AttentionPagedLaunch& p, int num_sms, int min_chunk, int align,
                                                int blocks_per_sm, bool cluster_merge) {
  align = std::max(align, 1);
  const long long min_len = (std::max(min_chunk, 1) + kTile - 1) / kTile * kTile;
  AttentionDecodePlan plan;
  const long long ctx = (long long)p.max_pos + 1;
  const long long base = (long long)p.n_tokens * p.n_kv_heads;
  // blocks_per_sm (3: as many as are resident, the K/V stages taking ~70 KB of shared memory per block); measured
  // on the H100 at 16k and 64k positions: 2, 4, 6 or 12 per SM were slower.
  const long long target = (long long)std::max(blocks_per_sm, 1) * std::max(num_sms, 1);
  long long splits = base > 0 ? (target + base - 1) / base : 1;
  splits = std::clamp<long long>(splits, 1, std::max<long long>(1, (ctx + min_len - 1) / min_len));
  if (ctx <= kAttentionDecodeNoSplit) splits = 1;
  if (cluster_merge) splits = std::min<long long>(splits, kDecodeClusterMaxSplits);
  long long chunk = (ctx + splits - 1) / splits;
  chunk = (chunk + align - 1) / align * align;
  plan.chunk = int(chunk);
  plan.n_splits = int((ctx + chunk - 1) / chunk);
  plan.cluster_merge = cluster_merge && plan.n_splits > 1;
  if (plan.n_splits > 1 && !plan.cluster_merge) {
    const size_t rows = size_t(p.n_tokens) * plan.n_splits * p.n_q_heads * (p.imag ? 2 : 1);
    plan.scratch_bytes = rows * p.head_dim * sizeof(float) + rows * 2 * sizeof(float);
  }
  return plan;
}

void launch_attention_decode_paged(const AttentionPagedLaunch& p, const AttentionDecodePlan& plan, void* scratch,
                                   cudaStream_t stream) {
  check_attention_paged(p, "attention (decode)");
  if (p.out_half) cuda_unsupported("attention (decode)", "16-bit output (out_half; prefill kernels only)", 1, "none");
  if (p.n_tokens <= 0) return;
  const int n_out_heads = p.n_q_heads * (p.imag ? 2 : 1);
  DecodePartials parts;
  if (plan.cluster_merge) {
    if (!plan.tensor_cores)
      cuda_unsupported("attention (decode, cluster merge)", "tensor_cores", plan.tensor_cores, "1 (the mma kernel)");
    if (plan.n_splits > kDecodeClusterMaxSplits)
      cuda_unsupported("attention (decode)", "splits merged in a cluster", plan.n_splits, "2..8");
    parts.cluster = true;
  } else if (plan.n_splits > 1) {
    parts.o = static_cast<float*>(scratch);
    parts.ml = parts.o + size_t(p.n_tokens) * plan.n_splits * n_out_heads * p.head_dim;
    if (plan.n_splits <= kDecodeLastBlockMaxSplits) parts.counters = plan.split_counters;
  }
  if (plan.tensor_cores) {
    launch_attention_decode_split_mma(p, plan, parts, stream);
  } else {
    switch (p.head_dim) {  // the closed set checked by check_attention_paged
      case 16: dispatch_rows<16>(p, plan, parts, stream); break;
      case 32: dispatch_rows<32>(p, plan, parts, stream); break;
      case 64: dispatch_rows<64>(p, plan, parts, stream); break;
      default: dispatch_rows<128>(p, plan, parts, stream); break;
    }
  }
  if (plan.n_splits > 1 && !parts.counters && !parts.cluster) {
    const int slices = p.head_dim / 4 / combine_slice_vecs(p.head_dim);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg =
        launch_config(dim3(p.n_tokens * n_out_heads * slices), dim3(kCombineThreads), 0, stream, p.pdl, attr);
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, attention_decode_combine, static_cast<const float*>(parts.o),
                                  static_cast<const float*>(parts.ml), p.out, plan.n_splits, n_out_heads, p.head_dim));
  }
}

}  // namespace ropepp
