// embed.cu: out[i, :] = float(table[tokens[i], :]), one block per token; the table in bf16 or f16.
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "embed.cuh"

namespace ropepp {
namespace {

template <class T>
__global__ void embed_rows(const T* __restrict__ table, const int32_t* __restrict__ tokens, float* __restrict__ out,
                           int dim, int64_t vocab) {
  pdl_launch_dependents();  // the next kernel (a matvec) may start its weight loads
  const int i = blockIdx.x;
  embed_row(table, tokens[i], vocab, dim, out + size_t(i) * dim);
}

template <class T>
void launch_t(const EmbedLaunch& p, cudaStream_t stream) {
  embed_rows<T><<<p.n, 256, 0, stream>>>(static_cast<const T*>(p.table), p.tokens, p.out, p.dim, p.vocab);
  CUDA_CHECK_LAUNCH("embed_rows");
}

}  // namespace

void launch_embed(const EmbedLaunch& p, cudaStream_t stream) {
  if (p.n <= 0) return;
  if (p.table_type == HalfType::F16) return launch_t<f16>(p, stream);
  launch_t<bf16>(p, stream);
}

}  // namespace ropepp
