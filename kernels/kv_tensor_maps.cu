// kv_tensor_maps.cu: the host side of kv_tensor_maps.cuh (encoding a cache layer's tensor maps).
#include "kv_tensor_maps.cuh"

#include <cudaTypedefs.h>

#include <climits>
#include <utility>

namespace ropepp {
namespace {

// The driver's tensor-map encoder, looked up once; null when the driver lacks it.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();  // not sticky; clear it
      return PFN_cuTensorMapEncodeTiled_v12000(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

bool encode_kv_tensor_maps(const AttentionPagedLaunch& p, KvTensorMaps& tm) {
  constexpr int kHd = 128;
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  const uint64_t rows = uint64_t(p.n_blocks) * uint64_t(p.n_kv_heads) * uint64_t(p.block_size);
  if (!encode || p.head_dim != kHd || p.block_size % kKvBoxRows != 0 || rows + kKvBoxRows > uint64_t(INT_MAX))
    return false;
  const cuuint64_t dims[2] = {cuuint64_t(kHd), rows};
  const cuuint64_t strides[1] = {cuuint64_t(kHd) * sizeof(f16)};
  const cuuint32_t box[2] = {kKvBoxCols, kKvBoxRows}, elem_strides[2] = {1, 1};
  for (auto [map, base] : {std::pair{&tm.k, p.cache_k}, std::pair{&tm.v, p.cache_v}}) {
    if (encode(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, const_cast<f16*>(base), dims, strides, box, elem_strides,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
      return false;
  }
  tm.rows = int(rows);
  return true;
}

}  // namespace ropepp
