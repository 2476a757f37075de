// kv_tensor_maps.cuh: the Tensor Memory Accelerator's view of a paged K/V cache layer, for the attention kernels
// that fill their K/V stages with the copy engine (attention_prefill_paged_sm90.cu's wgmma kernel, the decode split
// kernel's TMA shapes in attention_decode_paged_mma.cu).
//
// K and V of one layer as 2-D tensors [n_blocks · n_kv_heads · block_size rows, 128] f16, copied in boxes of
// 16 rows x 64 columns with the 128-byte swizzle (wgmma.cuh's sw128_offset layout: a box is 2,048 bytes, two
// swizzle atoms): one box is a 16-key piece of one 64-column half of a head's K or V rows. The 16 rows of a box lie
// in one cache block when the block size is a multiple of 16 (the encoder refuses other sizes).
#pragma once

#include <cuda.h>  // CUtensorMap (the encoder comes from the runtime's driver entry point: no libcuda link)
#include <cuda_runtime.h>

#include <cstdint>

#include "attention_paged.cuh"
#include "device_utils.cuh"
#include "mbarrier.cuh"

namespace ropepp {

struct KvTensorMaps {
  CUtensorMap k, v;
  int rows;  // rows of both tensors; a box at row `rows` lies out of bounds and is zero-filled
};
constexpr int kKvBoxRows = 16;                                        // key rows per box
constexpr int kKvBoxCols = 64;                                        // f16 columns per box (128 bytes)
constexpr unsigned kKvBoxBytes = kKvBoxRows * kKvBoxCols * sizeof(f16);  // 2,048

// The tensor maps of p's cache layer (head_dim 128), or false when the copy engine cannot serve it (block size not
// a multiple of 16 positions, more rows than an int coordinate, no encoder in the driver): the caller runs a
// cp.async kernel then.
bool encode_kv_tensor_maps(const AttentionPagedLaunch& p, KvTensorMaps& tm);

// The row of the box holding positions pos .. pos + 15 of kv head kh (pos a multiple of 16) in cache block `blk`
// (the block table's entry), or tm.rows (zeros) for an unmapped block.
__device__ __forceinline__ int kv_box_row(const AttentionPagedLaunch& p, const KvTensorMaps& tm, int blk, int kh,
                                          int pos_in_block) {
  return blk >= 0 && blk < p.n_blocks ? (blk * p.n_kv_heads + kh) * p.block_size + pos_in_block : tm.rows;
}

// One box (columns col .. col + 63 of rows row .. row + 15) into dst (1,024-byte aligned), completing on bar.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int col, int row, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
      ::"r"(smem_u32(dst)), "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(row), "r"(smem_u32(bar))
      : "memory");
#else
  (void)dst, (void)map, (void)col, (void)row, (void)bar;
  __trap();
#endif
}

}  // namespace ropepp
