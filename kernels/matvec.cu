// matvec.cu: each warp streams ROWS weight rows (over one K slice of them when the matrix has few rows);
// each lane loads 16-byte chunks (8 elements of T = bf16 or f16, a template parameter: no branch in the inner
// loop), U chunks in flight, and multiplies them with the matching fp32 x elements of all N input rows
// (L1-cached, or shared memory when a fused input transform computed them). ROWS grows with N so that the x
// traffic per weight byte stays bounded. Instances: 2 types × 3 inputs × 8 N × 4 K splits.
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "matvec.cuh"

namespace ropepp {
namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 4;

template <int N>
constexpr int rows_per_warp() {
  return N <= 1 ? 1 : (N <= 4 ? 2 : 4);
}

// Fills xs[N][cols] with the transformed input (RmsNorm or Swiglu). All threads of the block take part.
template <int N, MatvecInput IN>
__device__ __forceinline__ void fill_input(const MatvecLaunch& p, float* xs) {
  const int cols = p.cols;
  if constexpr (IN == MatvecInput::RmsNorm) {
    __shared__ float red[32];
#pragma unroll 1
    for (int t = 0; t < N; ++t) {
      const float* xr = p.x + size_t(t) * cols;
      float ss = 0.f;
      for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += xr[c] * xr[c];
      const float r = rsqrtf(block_sum(ss, red) / float(cols) + p.eps);
      for (int c = threadIdx.x; c < cols; c += blockDim.x) xs[t * cols + c] = xr[c] * r * p.norm_w[c];
    }
  } else {
    for (int idx = threadIdx.x; idx < N * cols; idx += blockDim.x) {
      const int t = idx / cols, c = idx % cols;
      const float g = p.gate[size_t(t) * p.in_stride + c];
      xs[idx] = silu(g) * p.up[size_t(t) * p.in_stride + c];
    }
  }
  __syncthreads();
}

// KS warps of a block share each row group's rows, each over its own slice of the columns (K split), so that
// a matrix with few rows (1,024) still has thousands of warps streaming it; their partial sums meet in
// shared memory. A block: kWarps / KS row groups of ROWS rows each.
template <class T, int N, MatvecInput IN, int KS>
__global__ __launch_bounds__(kWarps * 32) void matvec_warp_rows(const MatvecLaunch p) {
  constexpr int ROWS = rows_per_warp<N>();
  constexpr int GROUPS = kWarps / KS;
  extern __shared__ float4 xs_raw[];
  __shared__ float red[KS > 1 ? kWarps : 1][ROWS][N];
  const int rows = p.rows, cols = p.cols;
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slice = warp % KS;
  const int row0 = (blockIdx.x * GROUPS + warp / KS) * ROWS;
  const int chunks = cols / 8;
  const int per_slice = (chunks + KS - 1) / KS;
  const int c_begin = slice * per_slice, c_end = min(chunks, c_begin + per_slice);
  const bool active = row0 < rows;
  const uint4* wr[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
    wr[r] = reinterpret_cast<const uint4*>(static_cast<const T*>(p.w) + size_t(min(row0 + r, rows - 1)) * cols);
  uint4 wv[kUnroll][ROWS];
  auto load = [&](int c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * 32;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) wv[u][r] = active && c < c_end ? __ldcs(wr[r] + c) : make_uint4(0, 0, 0, 0);
    }
  };
  // The first weights do not depend on the previous kernel: load them before waiting for it (PDL).
  load(c_begin + lane);
  pdl_wait();

  const float* x = p.x;
  if constexpr (IN != MatvecInput::Plain) {
    fill_input<N, IN>(p, reinterpret_cast<float*>(xs_raw));
    x = reinterpret_cast<const float*>(xs_raw);
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
          if constexpr (IN == MatvecInput::Plain) {
            xa = __ldg(xp), xb = __ldg(xp + 1);
          } else {
            xa = xp[0], xb = xp[1];
          }
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
            float wf[8];
            x8_to_float(wv[u][r], wf, T{});
            acc[r][t] += xa.x * wf[0] + xa.y * wf[1] + xa.z * wf[2] + xa.w * wf[3] + xb.x * wf[4] + xb.y * wf[5] +
                         xb.z * wf[6] + xb.w * wf[7];
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int t = 0; t < N; ++t) {
      const float s = warp_sum(acc[r][t]);
      if constexpr (KS > 1) {
        if (lane == 0) red[warp][r][t] = s;
      } else if (lane == 0 && row0 + r < rows) {
        float* o = p.out + size_t(t) * rows + row0 + r;
        *o = p.accumulate ? *o + s : s;
      }
    }
  if constexpr (KS > 1) {
    __syncthreads();
    if (slice == 0 && lane < ROWS * N) {  // the group's first warp adds up its KS slices, one (row, t) per lane
      const int r = lane / N, t = lane % N;
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < KS; ++k) s += red[warp + k][r][t];
      if (row0 + r < rows) {
        float* o = p.out + size_t(t) * rows + row0 + r;
        *o = p.accumulate ? *o + s : s;
      }
    }
  }
}

// K split: enough warps to keep every SM's memory pipeline full (~4k), while each lane still streams at
// least two 16-byte chunks of its slice.
int k_split(int rows, int rows_per_warp, int cols) {
  constexpr int kTargetWarps = 4096;
  const int row_warps = (rows + rows_per_warp - 1) / rows_per_warp, chunks = cols / 8;
  int ks = 1;
  while (ks < kWarps && row_warps * ks < kTargetWarps && chunks / (2 * ks) >= 64) ks *= 2;
  return ks;
}

template <class T, int N, MatvecInput IN, int KS>
void launch_ks(const MatvecLaunch& p, cudaStream_t stream) {
  const int rows_per_block = (kWarps / KS) * rows_per_warp<N>();
  const int blocks = (p.rows + rows_per_block - 1) / rows_per_block;
  const size_t smem = IN == MatvecInput::Plain ? 0 : size_t(N) * size_t(p.cols) * sizeof(float);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(kWarps * 32);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = p.pdl ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, matvec_warp_rows<T, N, IN, KS>, p));
}

template <class T, int N, MatvecInput IN>
void launch_n(const MatvecLaunch& p, cudaStream_t stream) {
  switch (k_split(p.rows, rows_per_warp<N>(), p.cols)) {
    case 1: return launch_ks<T, N, IN, 1>(p, stream);
    case 2: return launch_ks<T, N, IN, 2>(p, stream);
    case 4: return launch_ks<T, N, IN, 4>(p, stream);
    default: return launch_ks<T, N, IN, 8>(p, stream);
  }
}

template <class T, MatvecInput IN>
void launch_input(const MatvecLaunch& p, cudaStream_t stream) {
  switch (p.n) {
    case 1: return launch_n<T, 1, IN>(p, stream);
    case 2: return launch_n<T, 2, IN>(p, stream);
    case 3: return launch_n<T, 3, IN>(p, stream);
    case 4: return launch_n<T, 4, IN>(p, stream);
    case 5: return launch_n<T, 5, IN>(p, stream);
    case 6: return launch_n<T, 6, IN>(p, stream);
    case 7: return launch_n<T, 7, IN>(p, stream);
    case 8: return launch_n<T, 8, IN>(p, stream);
    default: cuda_unsupported("matvec", "n (rows of x)", p.n, "1..8");
  }
}

template <class T>
void launch_type(const MatvecLaunch& p, cudaStream_t stream) {
  switch (p.input) {
    case MatvecInput::Plain: return launch_input<T, MatvecInput::Plain>(p, stream);
    case MatvecInput::RmsNorm: return launch_input<T, MatvecInput::RmsNorm>(p, stream);
    case MatvecInput::Swiglu: return launch_input<T, MatvecInput::Swiglu>(p, stream);
  }
}

}  // namespace

void launch_matvec(const MatvecLaunch& p, cudaStream_t stream) {
  if (p.cols % 8 != 0) cuda_unsupported("matvec", "cols (must be a multiple of 8)", p.cols, "multiples of 8");
  if (p.rows <= 0 || p.n == 0) return;
  if (p.input != MatvecInput::Plain && !matvec_fused_fits(p.n, p.cols))
    cuda_unsupported("matvec (fused input)", "n · cols (shared memory)", p.n * p.cols, "≤ 8192 floats");
  if (p.w_type == HalfType::F16) return launch_type<f16>(p, stream);
  launch_type<bf16>(p, stream);
}

}  // namespace ropepp
