// matvec.cu: each warp streams the weight rows of UNITS output units (a unit: one row for Store, the pair of
// rows a, a + half for the paired epilogues) over one K slice of them when the matrix has few rows; each lane
// loads 16-byte chunks (8 elements of T = bf16 or f16, a template parameter: no branch in the inner loop),
// U chunks in flight, and multiplies them with the matching fp32 x elements of all N input rows (L1-cached; with
// the fused RMSNorm, x ⊙ norm_w in shared memory, the rows' norm factors applied to the sums). The rows per warp
// grow with N so that the x traffic per weight byte stays bounded. Instances: 2 types × 4 (input, output) pairs
// × 8 N × 4 K splits (+ the wide one-row paired kernels). With a grid cap (MatvecLaunch::max_blocks) a block
// serves several unit groups in turn.
#include <algorithm>

#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "l2_prefetch.cuh"
#include "matvec.cuh"
#include "matvec_smem_prefetch.cuh"

namespace ropepp {
namespace {

constexpr int kWarps = 8;

template <int N>
constexpr int rows_per_warp() {
  return N <= 1 ? 1 : (N <= 4 ? 2 : 4);
}
// Output units per warp: as many rows as rows_per_warp for Store, half as many pairs (at least one) otherwise;
// WIDE (one row of x, a paired epilogue: MatvecLaunch::wide_pairs): two pairs.
template <int N, MatvecOutput OUT, bool WIDE = false>
constexpr int units_per_warp() {
  constexpr int r = rows_per_warp<N>();
  if constexpr (WIDE) return 2;
  return OUT == MatvecOutput::Store ? r : (r >= 2 ? r / 2 : 1);
}

// TokenRope: the RopeKv epilogue's per-token inputs (position, cache slot), read before the kernel waits; with one
// row of x also the RoPE factors of the warp's first two units (u0, u0 + 1: all a warp has unless the grid was
// capped below the matrix), so that no table read follows the wait.
template <int N>
struct TokenRope {
  int pos[N];
  long long slot[N];
  int u0 = -2;
  float2 cs[2];
};

// Store with accumulate (a residual add) and one row of x: the finishing lane reads the value it adds to right after
// the wait, beside the x reads, instead of after its sums (one L2 round trip fewer on the kernel's critical path).
template <MatvecOutput OUT, int N>
constexpr bool kEarlyResidual = OUT == MatvecOutput::Store && N == 1;

// The epilogue of unit u of token t: s0 is the dot product of its (first) row, s1 of its second (paired). `prev`:
// the value a residual add adds to, when read early (kEarlyResidual).
template <MatvecOutput OUT, int N>
__device__ __forceinline__ void finish_unit(const MatvecLaunch& p, int u, int t, float s0, float s1, int half,
                                            const TokenRope<N>& tr, float prev = 0.f) {
  if constexpr (OUT == MatvecOutput::Store) {
    float* o = p.out + size_t(t) * p.rows + u;
    if constexpr (kEarlyResidual<OUT, N>)
      *o = p.accumulate ? prev + s0 : s0;
    else
      *o = p.accumulate ? *o + s0 : s0;
  } else if constexpr (OUT == MatvecOutput::Swiglu) {
    p.out[size_t(t) * half + u] = silu(s0) * s1;
  } else {  // RopeKv: unit u = (head, j), rows head·head_dim + j and + half, the token's qkv row of `out`
    const int k = u - tr.u0;
    if (N == 1 && (k == 0 || k == 1))  // factors read before the wait
      rope_kv_store_pair_cs(p.rope, tr.cs[k], tr.slot[t], u / half, u % half, s0, s1, p.out + size_t(t) * p.rows);
    else
      rope_kv_store_pair_at(p.rope, tr.pos[t], tr.slot[t], u / half, u % half, s0, s1, p.out + size_t(t) * p.rows);
  }
}

// KS warps of a block share each unit group's rows, each over its own slice of the columns (K split), so that
// a matrix with few rows (1,024) still has thousands of warps streaming it; their partial sums meet in
// shared memory. A block: kWarps / KS unit groups of UNITS units each.
// One-row (decode) kernels without the RoPE epilogue keep to 64 registers: 4 blocks per SM, the grid cap's
// assumption (MatvecLaunch::max_blocks), so that a capped grid is resident at once and all of it prefetches. The
// one-row RoPE epilogue kernel keeps to 80 (3 blocks per SM: the 776M's qkv, 384 blocks, in one wave; at 83
// registers only 2 fit and 120 blocks waited for a second).
template <int N, MatvecOutput OUT>
constexpr int min_blocks_per_sm() {
  if constexpr (N != 1) return 1;
  return OUT == MatvecOutput::RopeKv ? 3 : 4;
}

// 16-byte chunks in flight per row and lane: 4, or 2 for WIDE (twice the rows: the same registers), or 8 for DEEP
// (MatvecLaunch::deep: one row of x, Store, a K slice of more than 128 chunks covered in one pass).
template <bool WIDE, bool DEEP>
constexpr int unroll() {
  return WIDE ? 2 : (DEEP ? 8 : 4);
}

// The argmax epilogue: the block's best key (argmax_key) into argmax_keys[block].
__device__ void argmax_block_key(const MatvecLaunch& p, unsigned long long best) {
  __shared__ unsigned long long warp_best[kWarps];
  best = warp_max_key(best);
  if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x >> 5] = best;
  __syncthreads();
  if (threadIdx.x != 0) return;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) best = max(best, warp_best[w]);
  p.argmax_keys[blockIdx.x] = best;
}

template <class T, int N, MatvecInput IN, MatvecOutput OUT, int KS, bool WIDE, bool DEEP, bool ARGMAX = false>
__global__ __launch_bounds__(kWarps * 32, min_blocks_per_sm<N, OUT>()) void matvec_warp_rows(const MatvecLaunch p) {
  constexpr int kUnroll = unroll<WIDE, DEEP>();
  constexpr int UNITS = units_per_warp<N, OUT, WIDE>();
  constexpr int RPU = matvec_rows_per_unit(OUT);
  constexpr int ROWS = UNITS * RPU;
  constexpr int GROUPS = kWarps / KS;
  constexpr bool kNorm = IN == MatvecInput::RmsNorm;
  __shared__ float red[KS > 1 ? kWarps : 1][ROWS][N];
  __shared__ float sumsq[kNorm ? kWarps : 1][N];  // RmsNorm: Σ x² of each warp's share of the columns
  const int cols = p.cols;
  const int units = p.rows / RPU;
  const int half = OUT == MatvecOutput::Swiglu ? units : (OUT == MatvecOutput::RopeKv ? p.rope.head_dim / 2 : 1);
  if (!p.late_trigger) pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slice = warp % KS;
  const int chunks = cols / 8;
  const int per_slice = (chunks + KS - 1) / KS;
  const int c_begin = slice * per_slice, c_end = min(chunks, c_begin + per_slice);
  // Unit groups of GROUPS · UNITS units; a block serves groups blockIdx.x, + gridDim.x, ... (one each unless the
  // grid was capped: p.max_blocks).
  const int n_block_groups = (units + GROUPS * UNITS - 1) / (GROUPS * UNITS);
  int u0 = 0;
  bool active = false;
  const uint4* wr[ROWS];
  // Weight row r (of ROWS) of the warp's units from u0: unit u's row, or its pair's rows a and a + half.
  auto row_ptr = [&](int u0_, int r) {
    const int u = min(u0_ + r / RPU, units - 1);
    const int row = RPU == 1 ? u : (u / half) * 2 * half + u % half + (r % RPU) * half;
    return reinterpret_cast<const uint4*>(static_cast<const T*>(p.w) + size_t(row) * cols);
  };
  auto rows_of = [&](int bg) {
    u0 = (bg * GROUPS + warp / KS) * UNITS;
    active = u0 < units;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) wr[r] = row_ptr(u0, r);
  };
  uint4 wv[kUnroll][ROWS];
  auto load = [&](int c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * 32;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) wv[u][r] = active && c < c_end ? __ldcs(wr[r] + c) : make_uint4(0, 0, 0, 0);
    }
  };
  // The first weights do not depend on the previous kernel: load them before waiting for it (PDL), and so do
  // the RopeKv epilogue's positions and cache slots (uploaded before the step).
  if (p.l2_rest && c_end > c_begin) {  // lane k: row k % ROWS of the block's later group k / ROWS
    const int later = (n_block_groups - 1 - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);
    for (int k = lane; k < later * ROWS; k += 32) {
      const int ug = ((int(blockIdx.x) + (k / ROWS + 1) * int(gridDim.x)) * GROUPS + warp / KS) * UNITS;
      if (ug + (k % ROWS) / RPU < units)
        l2_prefetch_bytes(row_ptr(ug, k % ROWS) + c_begin, unsigned(c_end - c_begin) * 16u);
    }
  }
  rows_of(blockIdx.x);
  load(c_begin + lane);
  if (p.l2_tail && active && c_begin + 32 * kUnroll < c_end) {  // lane r: row r's slice past the first pass
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
      if (lane == r) l2_prefetch_bytes(wr[r] + c_begin + 32 * kUnroll, unsigned(c_end - c_begin - 32 * kUnroll) * 16u);
  }
  if constexpr (OUT == MatvecOutput::Store) {  // (the paired kernels are at their register bound: not there)
    if (p.l2_next.n > 0 && lane == 0)
      l2_prefetch_share(p.l2_next, (long long)blockIdx.x * kWarps + warp, (long long)gridDim.x * kWarps);
  }
  TokenRope<N> tr;
  if constexpr (OUT == MatvecOutput::RopeKv) {
#pragma unroll
    for (int t = 0; t < N; ++t) tr.pos[t] = p.rope.positions[t], tr.slot[t] = rope_kv_slot(p.rope, t);
    if constexpr (N == 1) {
      tr.u0 = u0;
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int u = min(u0 + k, units - 1);
        tr.cs[k] = rope_pair_factors(p.rope, tr.pos[0], u / half, u % half);
      }
    }
  }
  // RmsNorm: rms_norm(x)·w·Wᵀ = rsqrt(mean(x²) + eps) · ((x ⊙ w)·Wᵀ). The norm weight goes to shared memory now
  // (it does not depend on the previous kernel); after the wait one pass over x turns it into x ⊙ w in place and
  // adds up each warp's x² (one barrier; the factors scale the sums at the end). A thread's float4s of x are all
  // requested before any is used: one L2 round trip after the wait for up to kVecs · 1,024 columns (the 776M's 1,536
  // took two in a row, the loads of the weight beside them).
  extern __shared__ float4 xs_raw[];
  const int c4 = cols / 4;
  if constexpr (kNorm) {
    const float4* w4 = reinterpret_cast<const float4*>(p.norm_w);
    for (int t = 0; t < N; ++t)  // each element by the thread that turns it into x ⊙ w below (no barrier)
      for (int i = threadIdx.x; i < c4; i += blockDim.x) xs_raw[size_t(t) * c4 + i] = __ldg(w4 + i);
  }
  pdl_wait();
  if (p.late_trigger) pdl_launch_dependents();

  const float* x = p.x;
  float rnorm[N];
  if constexpr (kNorm) {
    constexpr int kVecs = 2;
#pragma unroll 1
    for (int t = 0; t < N; ++t) {
      const float4* xr = reinterpret_cast<const float4*>(x + size_t(t) * cols);
      float4* dst = xs_raw + size_t(t) * c4;  // holds the norm weight until this thread's pass
      float ss = 0.f;
      for (int i0 = threadIdx.x; i0 < c4; i0 += kVecs * blockDim.x) {
        float4 v[kVecs];
#pragma unroll
        for (int k = 0; k < kVecs; ++k) {
          const int i = i0 + k * int(blockDim.x);
          if (i < c4) v[k] = __ldg(xr + i);
        }
#pragma unroll
        for (int k = 0; k < kVecs; ++k) {
          const int i = i0 + k * int(blockDim.x);
          if (i >= c4) break;
          const float4 w = dst[i];
          ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
          dst[i] = make_float4(v[k].x * w.x, v[k].y * w.y, v[k].z * w.z, v[k].w * w.w);
        }
      }
      ss = warp_sum(ss);
      if (lane == 0) sumsq[warp][t] = ss;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < N; ++t) {
      float ss = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) ss += sumsq[w][t];
      rnorm[t] = rsqrtf(ss / float(cols) + p.eps);
    }
    x = reinterpret_cast<const float*>(xs_raw);
  }
  unsigned long long best = 0ull;  // ARGMAX: this thread's best key among the units it finished
#pragma unroll 1
  for (int bg = blockIdx.x; bg < n_block_groups; bg += gridDim.x) {
    if (bg != int(blockIdx.x)) {
      rows_of(bg);
      load(c_begin + lane);
    }
    // kEarlyResidual: the finishing lane's residual values (KS == 1: lane 0, every unit of the warp; else the lane
    // of the slice-0 warp that adds up unit lane / N), read now (after the wait) beside the x reads below.
    float prev[kEarlyResidual<OUT, N> ? UNITS : 1] = {};
    if constexpr (kEarlyResidual<OUT, N>) {
      if (p.accumulate) {
        if constexpr (KS == 1) {
          if (lane == 0) {
#pragma unroll
            for (int u = 0; u < UNITS; ++u)
              if (u0 + u < units) prev[u] = p.out[u0 + u];
          }
        } else if (slice == 0 && lane < UNITS && u0 + lane < units) {
          prev[0] = p.out[u0 + lane];
        }
      }
    }
    float acc[ROWS][N];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int t = 0; t < N; ++t) acc[r][t] = 0.f;

    if (active) {
      for (int c0 = c_begin + lane; c0 < c_end; c0 += 32 * kUnroll) {
        if (c0 != c_begin + lane) load(c0);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int c = c0 + u * 32;
          if (c >= c_end) break;
#pragma unroll
          for (int t = 0; t < N; ++t) {
            const float4* xp = reinterpret_cast<const float4*>(x + size_t(t) * cols) + 2 * c;
            float4 xa, xb;
            if constexpr (kNorm) {
              xa = xp[0], xb = xp[1];  // x ⊙ w in shared memory
            } else {
              xa = __ldg(xp), xb = __ldg(xp + 1);
            }
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
              float wf[8];
              x8_to_float(wv[u][r], wf, T{});
              acc[r][t] += xa.x * wf[0] + xa.y * wf[1] + xa.z * wf[2] + xa.w * wf[3] + xb.x * wf[4] +
                           xb.y * wf[5] + xb.z * wf[6] + xb.w * wf[7];
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int t = 0; t < N; ++t) {
        acc[r][t] = warp_sum(acc[r][t]);
        if constexpr (kNorm) acc[r][t] *= rnorm[t];
        if constexpr (KS > 1) {
          if (lane == 0) red[warp][r][t] = acc[r][t];
        }
      }
    if constexpr (KS == 1) {
      if (lane == 0) {
#pragma unroll
        for (int u = 0; u < UNITS; ++u)
#pragma unroll
          for (int t = 0; t < N; ++t)
            if (u0 + u < units) {
              finish_unit<OUT, N>(p, u0 + u, t, acc[u * RPU][t], acc[u * RPU + RPU - 1][t], half, tr,
                                  prev[kEarlyResidual<OUT, N> ? u : 0]);
              if constexpr (ARGMAX)
                if (u0 + u < p.argmax_rows) best = max(best, argmax_key(acc[u * RPU][t], u0 + u));
            }
      }
    } else {
      __syncthreads();
      if (slice == 0 && lane < UNITS * N) {  // the group's first warp adds up its KS slices, one (unit, t) per lane
        const int u = lane / N, t = lane % N;
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int k = 0; k < KS; ++k) {
          s0 += red[warp + k][u * RPU][t];
          s1 += red[warp + k][u * RPU + RPU - 1][t];
        }
        if (u0 + u < units) {
          finish_unit<OUT, N>(p, u0 + u, t, s0, s1, half, tr, prev[0]);
          if constexpr (ARGMAX)
            if (u0 + u < p.argmax_rows) best = max(best, argmax_key(s0, u0 + u));
        }
      }
      __syncthreads();  // `red` is read before the next group writes it
    }
  }
  if constexpr (ARGMAX) argmax_block_key(p, best);
}

// K split: enough warps to keep every SM's memory pipeline full (~4k), while each lane still streams at
// least two 16-byte chunks of its slice.
// max_warps (MatvecLaunch::max_warps, 0: none): no wider than a grid of that many warps.
int k_split(int units, int units_per_warp, int cols, int max_warps) {
  constexpr int kTargetWarps = 4096;
  const int unit_warps = (units + units_per_warp - 1) / units_per_warp, chunks = cols / 8;
  int ks = 1;
  while (ks < kWarps && unit_warps * ks < kTargetWarps && chunks / (2 * ks) >= 64 &&
         (max_warps <= 0 || unit_warps * 2 * ks <= max_warps))
    ks *= 2;
  return ks;
}

template <class T, int N, MatvecInput IN, MatvecOutput OUT, int KS, bool WIDE, bool DEEP, bool ARGMAX = false>
void launch_grid(const MatvecLaunch& p, cudaStream_t stream) {
  const int units_per_block = (kWarps / KS) * units_per_warp<N, OUT, WIDE>();
  const int units = p.rows / matvec_rows_per_unit(OUT);
  int blocks = (units + units_per_block - 1) / units_per_block;
  if (p.max_blocks > 0) blocks = std::min(blocks, p.max_blocks);
  const size_t smem = IN == MatvecInput::Plain ? 0 : size_t(N) * size_t(p.cols) * sizeof(float);
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = launch_config(dim3(blocks), dim3(kWarps * 32), smem, stream, p.pdl, attr);
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, matvec_warp_rows<T, N, IN, OUT, KS, WIDE, DEEP, ARGMAX>, p));
  if constexpr (ARGMAX) {
    ArgmaxKeysLaunch m = p.argmax_next;
    m.keys = p.argmax_keys;
    m.n_keys = blocks;
    m.pdl = p.pdl;
    launch_argmax_keys(m, stream);
  }
}

template <class T, int N, MatvecInput IN, MatvecOutput OUT, int KS, bool WIDE>
void launch_ks(const MatvecLaunch& p, cudaStream_t stream) {
  if constexpr (N == 1 && OUT == MatvecOutput::Store && !WIDE) {
    if (p.argmax_keys) return launch_grid<T, N, IN, OUT, KS, false, false, true>(p, stream);
  }
  if constexpr (N == 1 && OUT == MatvecOutput::Store && !WIDE) {  // DEEP only where a lane's slice needs 2+ passes
    if (p.deep && (p.cols / 8 + KS - 1) / KS > 32 * unroll<false, false>())
      return launch_grid<T, N, IN, OUT, KS, false, true>(p, stream);
  }
  launch_grid<T, N, IN, OUT, KS, WIDE, false>(p, stream);
}

template <class T, int N, MatvecInput IN, MatvecOutput OUT, bool WIDE = false>
void launch_n(const MatvecLaunch& p, cudaStream_t stream) {
  if constexpr (N == 1 && OUT != MatvecOutput::Store && !WIDE) {
    if (p.wide_pairs) return launch_n<T, N, IN, OUT, true>(p, stream);
  }
  switch (k_split(p.rows / matvec_rows_per_unit(OUT), units_per_warp<N, OUT, WIDE>(), p.cols, p.max_warps)) {
    case 1: return launch_ks<T, N, IN, OUT, 1, WIDE>(p, stream);
    case 2: return launch_ks<T, N, IN, OUT, 2, WIDE>(p, stream);
    case 4: return launch_ks<T, N, IN, OUT, 4, WIDE>(p, stream);
    default: return launch_ks<T, N, IN, OUT, 8, WIDE>(p, stream);
  }
}

template <class T, MatvecInput IN, MatvecOutput OUT>
void launch_mode(const MatvecLaunch& p, cudaStream_t stream) {
  switch (p.n) {
    case 1: return launch_n<T, 1, IN, OUT>(p, stream);
    case 2: return launch_n<T, 2, IN, OUT>(p, stream);
    case 3: return launch_n<T, 3, IN, OUT>(p, stream);
    case 4: return launch_n<T, 4, IN, OUT>(p, stream);
    case 5: return launch_n<T, 5, IN, OUT>(p, stream);
    case 6: return launch_n<T, 6, IN, OUT>(p, stream);
    case 7: return launch_n<T, 7, IN, OUT>(p, stream);
    case 8: return launch_n<T, 8, IN, OUT>(p, stream);
    default: cuda_unsupported("matvec", "n (rows of x)", p.n, "1..8");
  }
}

template <class T>
void launch_type(const MatvecLaunch& p, cudaStream_t stream) {
  if (p.input == MatvecInput::Plain) {
    if (p.output != MatvecOutput::Store)
      cuda_unsupported("matvec", "output epilogue with a plain input (paired epilogues take RmsNorm)",
                       int(p.output), "Store");
    return launch_mode<T, MatvecInput::Plain, MatvecOutput::Store>(p, stream);
  }
  switch (p.output) {
    case MatvecOutput::Store: return launch_mode<T, MatvecInput::RmsNorm, MatvecOutput::Store>(p, stream);
    case MatvecOutput::Swiglu: return launch_mode<T, MatvecInput::RmsNorm, MatvecOutput::Swiglu>(p, stream);
    case MatvecOutput::RopeKv: return launch_mode<T, MatvecInput::RmsNorm, MatvecOutput::RopeKv>(p, stream);
  }
}

}  // namespace

void launch_matvec(const MatvecLaunch& p, cudaStream_t stream) {
  if (p.cols % 8 != 0) cuda_unsupported("matvec", "cols (must be a multiple of 8)", p.cols, "multiples of 8");
  if (p.rows <= 0 || p.n == 0) return;
  if (p.input != MatvecInput::Plain && !matvec_fused_fits(p.n, p.cols))
    cuda_unsupported("matvec (fused input)", "n · cols (shared memory)", p.n * p.cols, "≤ 8192 floats");
  if (p.output != MatvecOutput::Store) {
    if (p.l2_next.n > 0) cuda_unsupported("matvec (paired epilogue)", "l2_next ranges", p.l2_next.n, "0 (Store only)");
    if (p.accumulate) cuda_unsupported("matvec (paired epilogue)", "accumulate", 1, "0 (Store only)");
    if (p.rows % 2 != 0) cuda_unsupported("matvec (paired epilogue)", "rows (must be even)", p.rows, "even");
  }
  if (p.output == MatvecOutput::RopeKv) {
    const RopeKvAppendLaunch& r = p.rope;
    if (r.head_dim <= 0 || r.head_dim % 2 != 0)
      cuda_unsupported("matvec (rope+kv epilogue)", "head_dim (must be even)", r.head_dim, "even sizes");
    if (p.rows != (r.n_q_heads + 2 * r.n_kv_heads) * r.head_dim)
      cuda_unsupported("matvec (rope+kv epilogue)", "rows", p.rows, "(n_q_heads + 2·n_kv_heads)·head_dim");
  }
  if (p.argmax_keys) {
    if (p.n != 1 || p.output != MatvecOutput::Store || p.accumulate)
      cuda_unsupported("matvec (argmax epilogue)", "n (with Store, no accumulate)", p.n, "one row of x, Store");
    if (p.argmax_rows < 1 || p.argmax_rows > p.rows || !p.argmax_next.out)
      cuda_unsupported("matvec (argmax epilogue)", "argmax_rows (and an output)", p.argmax_rows, "1 .. rows");
  } else if (launch_matvec_smem_prefetch(p, stream)) {  // when p asks for it and its rows fit (n = 1)
    return;
  }
  if (p.w_type == HalfType::F16) return launch_type<f16>(p, stream);
  launch_type<bf16>(p, stream);
}

}  // namespace ropepp
