// gather_rows.cu: one block per output row.
#include "cuda_check.cuh"
#include "gather_rows.cuh"

namespace ropepp {
namespace {

__global__ void gather_rows_copy(const float* __restrict__ x, const int32_t* __restrict__ rows,
                                 float* __restrict__ out, int dim, int x_stride) {
  const float* src = x + size_t(rows[blockIdx.x]) * x_stride;
  float* dst = out + size_t(blockIdx.x) * dim;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) dst[d] = src[d];
}

}  // namespace

void launch_gather_rows(const GatherRowsLaunch& p, cudaStream_t stream) {
  if (p.n <= 0) return;
  gather_rows_copy<<<p.n, 256, 0, stream>>>(p.x, p.rows, p.out, p.dim, p.x_stride);
  CUDA_CHECK_LAUNCH("gather_rows_copy");
}

}  // namespace ropepp
