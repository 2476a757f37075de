// matvec_bf16.cu: one warp per ROWS weight rows; each lane streams 16-byte chunks (8 bf16) of those rows,
// U chunks in flight, and multiplies them with the matching fp32 x elements of all N input rows (L1-cached).
// ROWS grows with N so that the x traffic per weight byte stays bounded.
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "matvec_bf16.cuh"

namespace ropepp {
namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 4;

template <int N>
constexpr int rows_per_warp() {
  return N <= 1 ? 1 : (N <= 4 ? 2 : 4);
}

template <int N>
__global__ __launch_bounds__(kWarps * 32) void matvec_bf16_warp_rows(const float* __restrict__ x,
                                                                     const bf16* __restrict__ w,
                                                                     float* __restrict__ out, int rows, int cols) {
  constexpr int ROWS = rows_per_warp<N>();
  const int lane = threadIdx.x & 31;
  const int row0 = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * ROWS;
  if (row0 >= rows) return;
  const int chunks = cols / 8;
  const uint4* wr[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
    wr[r] = reinterpret_cast<const uint4*>(w + size_t(min(row0 + r, rows - 1)) * cols);
  float acc[ROWS][N];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int t = 0; t < N; ++t) acc[r][t] = 0.f;

  for (int c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    uint4 wv[kUnroll][ROWS];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * 32;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) wv[u][r] = c < chunks ? __ldcs(wr[r] + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * 32;
      if (c >= chunks) break;
#pragma unroll
      for (int t = 0; t < N; ++t) {
        const float4* xp = reinterpret_cast<const float4*>(x + size_t(t) * cols) + 2 * c;
        const float4 xa = __ldg(xp), xb = __ldg(xp + 1);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          float wf[8];
          bf16x8_to_float(wv[u][r], wf);
          acc[r][t] += xa.x * wf[0] + xa.y * wf[1] + xa.z * wf[2] + xa.w * wf[3] + xb.x * wf[4] + xb.y * wf[5] +
                       xb.z * wf[6] + xb.w * wf[7];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int t = 0; t < N; ++t) {
      const float s = warp_sum(acc[r][t]);
      if (lane == 0 && row0 + r < rows) out[size_t(t) * rows + row0 + r] = s;
    }
}

template <int N>
void launch_n(const MatvecBf16Launch& p, cudaStream_t stream) {
  const int rows_per_block = kWarps * rows_per_warp<N>();
  const int blocks = (p.rows + rows_per_block - 1) / rows_per_block;
  matvec_bf16_warp_rows<N><<<blocks, kWarps * 32, 0, stream>>>(p.x, p.w, p.out, p.rows, p.cols);
  CUDA_CHECK_LAUNCH("matvec_bf16_warp_rows");
}

}  // namespace

void launch_matvec_bf16(const MatvecBf16Launch& p, cudaStream_t stream) {
  if (p.cols % 8 != 0) cuda_unsupported("matvec_bf16", "cols (must be a multiple of 8)", p.cols, "multiples of 8");
  if (p.rows <= 0) return;
  switch (p.n) {
    case 0: return;
    case 1: return launch_n<1>(p, stream);
    case 2: return launch_n<2>(p, stream);
    case 3: return launch_n<3>(p, stream);
    case 4: return launch_n<4>(p, stream);
    case 5: return launch_n<5>(p, stream);
    case 6: return launch_n<6>(p, stream);
    case 7: return launch_n<7>(p, stream);
    case 8: return launch_n<8>(p, stream);
    default: cuda_unsupported("matvec_bf16", "n (rows of x)", p.n, "1..8");
  }
}

}  // namespace ropepp
