// embed.cu: out[i, :] = float(table[tokens[i], :]), one block per token.
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "embed.cuh"

namespace ropepp {
namespace {

__global__ void embed_rows_bf16(const bf16* __restrict__ table, const int32_t* __restrict__ tokens,
                                float* __restrict__ out, int dim, int64_t vocab) {
  pdl_launch_dependents();  // the next kernel (a matvec) may start its weight loads
  const int i = blockIdx.x;
  const int32_t tok = tokens[i];
  float* o = out + size_t(i) * dim;
  if (tok < 0 || tok >= vocab) {
    for (int d = threadIdx.x; d < dim; d += blockDim.x) o[d] = __int_as_float(0x7fc00000);
    return;
  }
  const bf16* row = table + size_t(tok) * dim;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) o[d] = __bfloat162float(row[d]);
}

}  // namespace

void launch_embed(const EmbedLaunch& p, cudaStream_t stream) {
  if (p.n <= 0) return;
  embed_rows_bf16<<<p.n, 256, 0, stream>>>(p.table, p.tokens, p.out, p.dim, p.vocab);
  CUDA_CHECK_LAUNCH("embed_rows_bf16");
}

}  // namespace ropepp
