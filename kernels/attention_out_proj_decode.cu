// attention_out_proj_decode.cu: one decode token's attention and o_proj in one kernel for contexts of at most 256
// positions (the plan and its reasons: attention_out_proj_decode.cuh).
#include <cooperative_groups.h>

#include <algorithm>

#include "attention_decode_combine.cuh"
#include "attention_out_proj_decode.cuh"
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "l2_prefetch.cuh"
#include "paged_kv_load.cuh"

namespace ropepp {
namespace {

constexpr int kHD = 128;                   // head_dim (attention_out_proj_decode_misfit)
constexpr int kMaxR = kFusedOProjMaxRows;
constexpr int kWarps = kFusedOProjWarps;
constexpr int kThreads = kWarps * 32;
constexpr int kKPitch = kHD + 8;           // f16 K row pitch: a lane per key reads 16 bytes conflict-free
constexpr int kPieces = kHD / 8;           // 16-byte pieces of a K/V row

// Shared memory: this fixed part, then K [keys][kKPitch] and V [keys][kHD] f16 (keys = 32 · KPL).
struct __align__(16) FusedSmem {
  float q[kMaxR][kHD];        // the kv head's query rows (row j·parts + part), scaled by scale·log2(e)
  float part_o[kMaxR][kHD];   // this split's unnormalised output per row (read by the cluster's blocks)
  float2 part_ml[kMaxR];      // (max in the log2 domain, sum) per row
  float att[kMaxR][kHD];      // the merged, normalised attention output of the kv head
  float dot[kWarps * 4];      // this block's Wo products (kv head kh, its rows; read by the cluster's blocks)
};
template <int KPL>
constexpr size_t fused_smem_bytes() {
  return sizeof(FusedSmem) + size_t(32 * KPL) * (kKPitch + kHD) * sizeof(f16);
}

// 4 16-bit values (8 bytes) → 4 floats.
__device__ __forceinline__ float4 x4_to_float4(uint2 u, f16) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 x4_to_float4(uint2 u, bf16) {
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}

// Weights are read once per step: no L1 allocation.
__device__ __forceinline__ uint2 ld_stream_u2(const void* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

// The cluster's barrier in two halves: arrive (release) once this block's reads of the others' shared memory are
// done, wait (acquire) before it exits, so that no block frees shared memory another may still read.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
#endif
}

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// RW: Wo rows per warp; MAXR: query rows per kv head at most (registers for RW × MAXR 8-byte pieces of Wo); KPL:
// keys per lane (a block's split is 32 · KPL keys). Block rank in the cluster = kh · splits + split.
template <class T, int RW, int MAXR, int KPL>
__global__ __launch_bounds__(kThreads) void attention_out_proj_decode(const __grid_constant__ AttentionOutProjDecodeLaunch l) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  constexpr int kKeys = 32 * KPL;
  if (!l.late_trigger) pdl_launch_dependents();  // the next kernel (the gate|up matvec) may start its weight loads
  const bool tracing = l.trace && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0;
  unsigned long long prev = tracing ? global_ns() : 0;
  int phase = 0;
  auto mark = [&] {  // the phase's ns added to its slot (fire-and-forget atomics of one thread)
    if (tracing) {
      const unsigned long long now = global_ns();
      atomicAdd(l.trace + phase, now - prev);
      prev = now;
    }
    ++phase;
  };
  extern __shared__ uint4 smem_raw[];
  FusedSmem& s = *reinterpret_cast<FusedSmem*>(smem_raw);
  f16 (*sk)[kKPitch] = reinterpret_cast<f16 (*)[kKPitch]>(reinterpret_cast<char*>(smem_raw) + sizeof(FusedSmem));
  f16 (*sv)[kHD] = reinterpret_cast<f16 (*)[kHD]>(&sk[kKeys][0]);
  const AttentionPagedLaunch& p = l.attn;
  const int S = l.splits, kh = blockIdx.x / S, split = blockIdx.x % S;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int group = p.n_q_heads / p.n_kv_heads, parts = p.imag ? 2 : 1, R = group * parts;
  const size_t wo_cols = size_t(p.n_q_heads) * parts * kHD;
  const int rb = blockIdx.y * S + split;       // this block's row block: rows rb·8·RW .. + 8·RW − 1
  const int row0 = (rb * kWarps + warp) * RW;  // this warp's first row

  // 1. Before the wait: this warp's Wo rows (lane: columns (kh·R + r)·128 + 4·lane .. + 3 of each row), the L2
  // share, and the K/V rows earlier steps wrote.
  uint2 w[RW][MAXR];
  const T* wo = static_cast<const T*>(l.wo) + size_t(kh) * R * kHD + 4 * lane;
#pragma unroll
  for (int i = 0; i < RW; ++i)
#pragma unroll
    for (int r = 0; r < MAXR; ++r)
      w[i][r] = r < R ? ld_stream_u2(wo + size_t(row0 + i) * wo_cols + r * kHD) : make_uint2(0, 0);
  if (l.l2_next.n > 0 && lane == 0) {
    const long long block = (long long)blockIdx.y * gridDim.x + blockIdx.x;
    l2_prefetch_share(l.l2_next, block * kWarps + warp, (long long)gridDim.x * gridDim.y * kWarps);
  }
  const int pos = p.positions[0];  // the token's key position (set before the step)
  const int begin = split * kKeys, end = min(pos + 1, begin + kKeys);
  const int32_t* table = p.block_table + size_t(p.seq_of_token[0]) * p.max_blocks_per_seq;
  const PagedKvHead<kHD> head(p, kh);
  const int piece = tid % kPieces;  // thread t copies piece t % 16 of keys t / 16, t / 16 + 16, ... (zero past end)
  auto copy_key = [&](int key) {
    PagedKvHead<kHD>::copy_row_piece(p, head.row_offset(p, table, begin + key, end), piece * 8, &sk[key][piece * 8],
                                     &sv[key][piece * 8]);
  };
  constexpr int kKeysPerPass = kThreads / kPieces;  // 16
  if (p.history_cached) {
#pragma unroll
    for (int key = tid / kPieces; key < kKeys; key += kKeysPerPass)
      if (begin + key != pos) copy_key(key);
    cp_async_commit();
  }
  mark();
  pdl_wait();  // q, the token's own K/V row and x are written by earlier kernels
  mark();
#pragma unroll
  for (int key = tid / kPieces; key < kKeys; key += kKeysPerPass)
    if (!p.history_cached || begin + key == pos) copy_key(key);
  cp_async_commit();
  // the x rows this block may finish (row t of its row block where t % n_kv_heads == kh)
  const int fin_row = rb * kWarps * RW + tid;
  const bool finishes = tid < kWarps * RW && tid % p.n_kv_heads == kh;
  const float x_old = finishes && l.accumulate ? l.x[fin_row] : 0.f;

  // 2. q rows: row j·parts is q head kh·group + j, row j·parts + 1 its imaginary row −rot(q) = cat(q[d/2:], −q[:d/2]).
  const float qscale = p.scale * kLog2e;
  for (int idx = tid; idx < group * (kHD / 4); idx += kThreads) {
    const int j = idx / (kHD / 4), d = (idx % (kHD / 4)) * 4;
    float4 v = *reinterpret_cast<const float4*>(p.q + size_t(kh * group + j) * kHD + d);
    v = make_float4(v.x * qscale, v.y * qscale, v.z * qscale, v.w * qscale);
    *reinterpret_cast<float4*>(&s.q[j * parts][d]) = v;
    if (parts == 2) {
      const bool low = d < kHD / 2;
      const float sg = low ? -1.f : 1.f;
      *reinterpret_cast<float4*>(&s.q[j * parts + 1][low ? d + kHD / 2 : d - kHD / 2]) =
          make_float4(sg * v.x, sg * v.y, sg * v.z, sg * v.w);
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  mark();

  // The split's partial attention: warp r serves query row r, lane t keys begin + t + 32·j.
  if (warp < R) {
    float sc[KPL];
    float m = neg_inf();
#pragma unroll
    for (int j = 0; j < KPL; ++j) {
      const int key = lane + 32 * j;
      float acc = 0.f;
#pragma unroll
      for (int c = 0; c < kPieces; ++c) {
        float kf[8];
        f16x8_to_float(*reinterpret_cast<const uint4*>(&sk[key][c * 8]), kf);
        const float4 qa = *reinterpret_cast<const float4*>(&s.q[warp][c * 8]);
        const float4 qb = *reinterpret_cast<const float4*>(&s.q[warp][c * 8 + 4]);
        acc += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] +
               qb.z * kf[6] + qb.w * kf[7];
      }
      sc[j] = begin + key < end ? acc : neg_inf();
      m = fmaxf(m, sc[j]);
    }
    m = warp_max(m);
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < KPL; ++j) {
      sc[j] = sc[j] == neg_inf() ? 0.f : exp2f(sc[j] - m);  // m is finite when any key is valid
      sum += sc[j];
    }
    sum = warp_sum(sum);
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    const int n_keys = max(end - begin, 0);
#pragma unroll
    for (int j = 0; j < KPL; ++j) {
      for (int t = 0; t < min(32, n_keys - 32 * j); ++t) {
        const float pt = __shfl_sync(0xffffffffu, sc[j], t);
        const float4 vf = x4_to_float4(*reinterpret_cast<const uint2*>(&sv[32 * j + t][4 * lane]), f16{});
        o.x += pt * vf.x, o.y += pt * vf.y, o.z += pt * vf.z, o.w += pt * vf.w;
      }
    }
    *reinterpret_cast<float4*>(&s.part_o[warp][4 * lane]) = o;
    if (lane == 0) s.part_ml[warp] = make_float2(m, sum);
  }

  mark();
  // 3. Merge the S splits of kv head kh (cluster ranks kh·S ..) through distributed shared memory.
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every split's partial is in its block's shared memory
  mark();
  if (warp < R) {
    float2 ml[kFusedOProjMaxSplits];
    float4 po[kFusedOProjMaxSplits];
#pragma unroll
    for (int sp = 0; sp < kFusedOProjMaxSplits; ++sp) {
      if (sp < S) {
        ml[sp] = *cluster.map_shared_rank(&s.part_ml[warp], kh * S + sp);
        po[sp] = *reinterpret_cast<const float4*>(cluster.map_shared_rank(&s.part_o[warp][4 * lane], kh * S + sp));
      }
    }
    const float4 acc = merge_split_partials(ml, po, S);
    *reinterpret_cast<float4*>(&s.att[warp][4 * lane]) = acc;
    if (blockIdx.y == 0 && split == 0)  // out heads kh·R + r, packed
      *reinterpret_cast<float4*>(p.out + size_t(kh * R + warp) * kHD + 4 * lane) = acc;
  }
  if (l.late_trigger) pdl_launch_dependents();
  __syncthreads();
  mark();

  // 4. This warp's rows of Wo times the kv head's output rows: one product per (kv head, row), in shared memory.
  float dot[RW];
#pragma unroll
  for (int i = 0; i < RW; ++i) dot[i] = 0.f;
#pragma unroll
  for (int r = 0; r < MAXR; ++r) {
    if (r < R) {
      const float4 a = *reinterpret_cast<const float4*>(&s.att[r][4 * lane]);
#pragma unroll
      for (int i = 0; i < RW; ++i) {
        const float4 wf = x4_to_float4(w[i][r], T{});
        dot[i] += wf.x * a.x + wf.y * a.y + wf.z * a.z + wf.w * a.w;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < RW; ++i) {
    const float d = warp_sum(dot[i]);
    if (lane == 0) s.dot[warp * RW + i] = d;
  }
  mark();
  // 5. x = x_old + Σ over kv heads (cluster ranks kv·S + split) in kv-head order: each row by one block.
  cluster.sync();  // every kv head's products are in its block's shared memory
  mark();
  if (finishes) {
    float acc = x_old;
    for (int z = 0; z < p.n_kv_heads; ++z) acc += *cluster.map_shared_rank(&s.dot[tid], z * S + split);
    l.x[fin_row] = acc;
  }
  cluster_arrive();  // this block's reads of the others' shared memory are done
  cluster_wait();    // and no block leaves while another may still read its shared memory
  mark();
  if (tracing) atomicAdd(l.trace + kFusedOProjTracePhases, 1ull);
#else
  __trap();  // clusters need sm_90; the host launches this kernel only there
#endif
}

template <class T, int RW, int MAXR, int KPL>
void launch_shape(const AttentionOutProjDecodeLaunch& l, cudaStream_t stream) {
  auto kernel = attention_out_proj_decode<T, RW, MAXR, KPL>;
  constexpr size_t smem = fused_smem_bytes<KPL>();
  const int cluster = l.splits * l.attn.n_kv_heads;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  if (cluster > 8) CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  const int rows_per_slice = l.splits * kWarps * RW;
  cudaLaunchAttribute attrs[2];
  cudaLaunchConfig_t cfg = launch_config(dim3(cluster, l.d_model / rows_per_slice), dim3(kThreads), smem, stream,
                                         l.attn.pdl, attrs[0]);
  cfg.attrs = attrs;
  cudaLaunchAttribute& a = attrs[cfg.numAttrs++];
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = unsigned(cluster);
  a.val.clusterDim.y = 1;
  a.val.clusterDim.z = 1;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, l));
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess)
    cuda_fail(e, "launch of attention_out_proj_decode", __FILE__, __LINE__);
}

template <class T, int RW, int MAXR>
void launch_keys(const AttentionOutProjDecodeLaunch& l, cudaStream_t stream) {
  const int kpl = kFusedOProjMaxCtx / (32 * l.splits);
  if (kpl == 1) return launch_shape<T, RW, MAXR, 1>(l, stream);
  if (kpl == 2) return launch_shape<T, RW, MAXR, 2>(l, stream);
  if (kpl == 4) return launch_shape<T, RW, MAXR, 4>(l, stream);
  launch_shape<T, RW, MAXR, 8>(l, stream);
}

template <class T, int RW>
void launch_rows(const AttentionOutProjDecodeLaunch& l, cudaStream_t stream) {
  if (attention_rows_per_kv_head(l.attn) <= 4) return launch_keys<T, RW, 4>(l, stream);
  launch_keys<T, RW, 8>(l, stream);
}

template <class T>
void launch_type(const AttentionOutProjDecodeLaunch& l, cudaStream_t stream) {
  if (l.rows_per_warp == 1) return launch_rows<T, 1>(l, stream);
  if (l.rows_per_warp == 2) return launch_rows<T, 2>(l, stream);
  launch_rows<T, 4>(l, stream);
}

}  // namespace

FusedOProjPlan attention_out_proj_decode_plan(const AttentionPagedLaunch& a, int d_model, long long wo_cols,
                                             int num_sms, int max_cluster) {
  FusedOProjPlan plan;
  auto misfit = [&](const char* why) {
    plan.misfit = why;
    return plan;
  };
  if (a.n_tokens != 1 || a.n_seqs != 1) return misfit("not one token of one sequence");
  if (a.max_pos + 1 > kFusedOProjMaxCtx) return misfit("context above 256 positions");
  if (a.head_dim != kHD) return misfit("head_dim is not 128");
  if (a.n_kv_heads <= 0 || a.n_q_heads % a.n_kv_heads != 0) return misfit("q heads not a multiple of kv heads");
  if (attention_rows_per_kv_head(a) > kMaxR) return misfit("more than 8 query rows per kv head");
  if (a.block_size <= 0) return misfit("cache block size");
  if (wo_cols != (long long)a.n_q_heads * (a.imag ? 2 : 1) * kHD) return misfit("Wo columns differ from the attention's");
  if (a.q_row_stride % 4 != 0 || reinterpret_cast<uintptr_t>(a.q) % 16 != 0) return misfit("q not 16-byte aligned");
  if (reinterpret_cast<uintptr_t>(a.out) % 16 != 0) return misfit("attention output not 16-byte aligned");
  if (a.n_kv_heads > max_cluster) return misfit("more kv heads than a cluster's blocks");
  plan.splits = 1;
  while (plan.splits < kFusedOProjMaxSplits && 2 * plan.splits * a.n_kv_heads <= max_cluster) plan.splits *= 2;
  for (int rw : {1, 2, 4}) {
    if (d_model <= 0 || d_model % (plan.splits * kWarps * rw) != 0) continue;
    plan.rows_per_warp = rw;
    if ((long long)a.n_kv_heads * d_model / (kWarps * rw) <= 3LL * std::max(num_sms, 1)) break;
  }
  if (plan.rows_per_warp == 0) return misfit("o_proj rows not a multiple of 8 x the splits");
  return plan;
}

void launch_attention_out_proj_decode(const AttentionOutProjDecodeLaunch& l, cudaStream_t stream) {
  const int S = l.splits, RW = l.rows_per_warp;
  if (S != 1 && S != 2 && S != 4 && S != 8)
    cuda_unsupported("attention + o_proj (decode)", "splits per kv head", S, "1, 2, 4, 8");
  if (S * l.attn.n_kv_heads > 16)
    cuda_unsupported("attention + o_proj (decode)", "cluster size (splits x kv heads)", S * l.attn.n_kv_heads, "1..16");
  if (RW != 1 && RW != 2 && RW != 4)
    cuda_unsupported("attention + o_proj (decode)", "rows per warp", RW, "1, 2, 4");
  if (l.d_model <= 0 || l.d_model % (S * kWarps * RW) != 0)
    cuda_unsupported("attention + o_proj (decode)", "o_proj rows (d_model) for the splits and rows per warp", l.d_model,
                     "multiples of 8 x splits x rows per warp");
  if (attention_rows_per_kv_head(l.attn) > kMaxR || l.attn.head_dim != kHD)
    cuda_unsupported("attention + o_proj (decode)", "query rows per kv head (head_dim 128)",
                     attention_rows_per_kv_head(l.attn), "1..8");
  if (reinterpret_cast<uintptr_t>(l.wo) % 16 != 0)
    cuda_unsupported("attention + o_proj (decode)", "Wo alignment (bytes)", reinterpret_cast<uintptr_t>(l.wo) % 16, "0");
  if (l.wo_type == HalfType::F16) return launch_type<f16>(l, stream);
  launch_type<bf16>(l, stream);
}

}  // namespace ropepp
