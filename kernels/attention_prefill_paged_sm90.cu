// attention_prefill_paged_sm90.cu: the prefill flash attention of attention_prefill_paged.cu on Hopper's warpgroup
// MMA (wgmma, compiled for sm_90a only; head_dim 128). Same blocks, rows, passes, masks and online softmax
// (attention_prefill_tile.cuh); what differs is how the tensor cores get their operands:
// - Q, K and V live in shared memory with the 128-byte swizzle (wgmma.cuh) instead of padded rows;
// - each warpgroup (4 warps, 64 of the block's 128 rows) computes S = Q·Kᵀ [64 x 64 keys] with wgmma reading Q
//   and K straight from shared memory, and O += P·V with P from registers and V (MN-major) from shared memory.
// The mma.sync kernel has every warp read the whole K and V tile from shared memory for its 16 rows (ldmatrix); here
// one read serves 64 rows, and one instruction does a warpgroup's 64 x 64 x 16 (or x 128 x 16) product.
//
// Two ways to fill the K/V stages: every thread's cp.async copies of its rows (prefill_block, any block size), or
// the Tensor Memory Accelerator (attention_prefill_wgmma_tma, cache blocks of a multiple of 16 positions): lanes
// 0..3 of warp 0 each copy one 16-key piece of K and V (two 64-column boxes each, swizzled by the copy engine into
// the layout wgmma reads), completing on the stage's mbarrier. The other threads issue no copies and compute no
// addresses (~180 of the ~720 instructions per warp and tile in a profile of the cp.async kernel at pp4096), and a
// tile needs one block-wide barrier instead of two (H100: pp4096 +2.3%, pp65536 +4% over the cp.async kernel).
#include "attention_prefill_paged.cuh"
#include "attention_prefill_tile.cuh"
#include "cuda_check.cuh"
#include "kv_tensor_maps.cuh"
#include "mbarrier.cuh"
#include "wgmma.cuh"

namespace ropepp {
namespace {

using namespace prefill;

// wgmma operands (head_dim 128): Q, K and V with the 128-byte swizzle, [2][rows][64] each (wgmma.cuh); the base is
// aligned to a 1,024-byte swizzle atom (+1 KB of shared memory). Warpgroup wg (warps 4wg .. 4wg + 3) owns rows 64wg ..
// 64wg + 63. Descriptors of its Q rows (K-major) and of stage 0 of K (K-major) and V (MN-major) are made once;
// other operands in these tiles are the same descriptors plus a byte offset / 16 (at).
struct WgmmaMath {
  static constexpr int HD = 128;
  static constexpr int kTile = kKeys * HD;  // elements of one K or V stage
  static constexpr size_t kBytes =
      1024 + (size_t(kRows) * HD + 4 * size_t(kTile)) * sizeof(f16) + (2 * kRows + 4) * sizeof(int);
  static constexpr int kDimTiles = HD / 8;  // n-tiles of the output
  static constexpr int kKSteps = HD / 16;   // k-steps of Q·Kᵀ

  f16* q_s;   // [HD / 64][kRows][64]
  f16* k_s;   // [2][HD / 64][kKeys][64]
  f16* v_s;   // [2][HD / 64][kKeys][64]
  int* ints;  // [2 kRows + 4]
  uint64_t dq, dk, dv;

  __device__ explicit WgmmaMath(uint8_t* smem)
      : q_s(reinterpret_cast<f16*>(smem + ((1024u - (uint32_t(__cvta_generic_to_shared(smem)) & 1023u)) & 1023u))),
        k_s(q_s + kRows * HD), v_s(k_s + 2 * kTile), ints(reinterpret_cast<int*>(v_s + 2 * kTile)),
        dq(smem_desc_sw128(q_s + (threadIdx.x >> 7) * 64 * 64, 16, 1024)), dk(smem_desc_sw128(k_s, 16, 1024)),
        dv(smem_desc_sw128(v_s, kKeys * 128, 1024)) {}
  __device__ static int q_offset(int v, int d) { return sw128_offset(v, d, kRows); }
  __device__ static int kv_offset(int t, int col) { return sw128_offset(t, col, kKeys); }
  __device__ static void publish() { fence_proxy_async_shared(); }  // st.shared and cp.async writes, for wgmma
  __device__ static uint64_t at(uint64_t desc, int elems) { return desc + uint64_t(elems * int(sizeof(f16)) >> 4); }

  // S [64 rows x kKeys] of this warpgroup: k-step kk reads columns 16kk .. 16kk + 15 of Q and K (32 bytes into the
  // 128-byte rows of 64-column block kk / 4). s needs no initial value: the first k-step overwrites (scale_d 0).
  __device__ __forceinline__ void scores(float (&s)[kKeyTiles][4], int stage) const {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      const int col = (kk & 3) * 16;  // within the 64-column block
      wgmma_m64n64k16_ss(s, at(dq, (kk >> 2) * kRows * 64 + col),
                         at(dk, stage * kTile + (kk >> 2) * kKeys * 64 + col), kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(s);
  }

  // k-step j takes keys 16j .. 16j + 15 (two 8-row atoms of V, 2,048 bytes), all HD columns (64-column blocks
  // kKeys · 128 bytes apart); P from registers.
  __device__ __forceinline__ void accumulate(const float (&s)[kKeyTiles][4], float (&o)[kDimTiles][4],
                                             int stage) const {
    uint32_t a[kKeys / 16][4];
#pragma unroll
    for (int j = 0; j < kKeys / 16; ++j) p_fragment(s, j, a[j]);
    wgmma_fence_operands(o);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < kKeys / 16; ++j) {
      const uint64_t db = at(dv, stage * kTile + j * 16 * 64);
      wgmma_m64n128k16_rs_tn(o, a[j], db);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(o);
  }
};

template <bool PAIRED>
// Two blocks per SM (2 × 98 KB of shared memory, ≤ 128 registers per thread): one block's softmax can overlap the
// other's MMAs.
__global__ __launch_bounds__(kThreads, 2) void attention_prefill_wgmma(AttentionPagedLaunch p) {
  extern __shared__ uint8_t smem_raw[];
  WgmmaMath mm(smem_raw);
  prefill_block<WgmmaMath::HD, PAIRED>(p, mm);
}

constexpr int kPiece = kKvBoxRows;       // key rows per box (a cache block holds whole pieces)
constexpr int kPieces = kKeys / kPiece;  // pieces per tile
constexpr unsigned kTileBytes = 2u * kKeys * WgmmaMath::HD * sizeof(f16);  // K and V of one tile

// prefill_block with the stages filled by the copy engine (see the file comment); rows, passes, masks, softmax
// and output as there. g counts the tiles the block has run through the two stages (the same in every thread):
// tile g uses stage g % 2, whose mbarrier completes for the (g / 2)-th time when its 32 KB have landed.
template <bool PAIRED>
__global__ __launch_bounds__(kThreads, 2) void attention_prefill_wgmma_tma(const __grid_constant__ AttentionPagedLaunch p,
                                                                           const __grid_constant__ KvTensorMaps tm) {
  extern __shared__ uint8_t smem_raw[];
  WgmmaMath mm(smem_raw);
  constexpr int kDimTiles = WgmmaMath::HD / 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kh = blockIdx.y;
  const RowMap m(p);
  int* row_seq = mm.ints;           // [kRows], -1: padding row
  int* row_pos = row_seq + kRows;   // [kRows]
  int* pass = row_pos + kRows;      // [4]: next_pass
  uint64_t* full = reinterpret_cast<uint64_t*>(pass + 4);  // [2]: a stage's K and V have landed
  if (threadIdx.x == 0) {
    mbar_init(&full[0], 1);
    mbar_init(&full[1], 1);
    fence_mbarrier_init();  // before the copy engine uses them
  }  // (for_each_tile_pass begins with a block-wide barrier)
  const int block_shift = log2_if_pow2(p.block_size);
  // Warp 0: the copies of the tile at key position t0 of the sequence with block table `table` into `stage`; lane i
  // < kPieces copies positions t0 + 16i .. + 15 (one cache block's rows), out of bounds (zeros) past max_pos or in
  // an unmapped block.
  auto issue = [&](int stage, const int32_t* table, int max_pos, int t0) {
    if (warp != 0) return;
    int row = tm.rows;
    if (lane < kPieces) {
      const int pos = t0 + lane * kPiece;
      if (pos <= max_pos) {
        const int bi = block_shift >= 0 ? pos >> block_shift : pos / p.block_size;
        row = kv_box_row(p, tm, table[bi], kh, pos - bi * p.block_size);
      }
    }
    if (lane == 0) mbar_expect_tx(&full[stage], kTileBytes);  // the stage's one arrival, with its bytes
    __syncwarp();
    if (lane < kPieces) {
      f16* ks = mm.k_s + stage * WgmmaMath::kTile + lane * kPiece * 64;
      f16* vs = mm.v_s + stage * WgmmaMath::kTile + lane * kPiece * 64;
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // 64-column halves, kKeys · 64 elements apart
        tma_load_2d(ks + h * kKeys * 64, &tm.k, h * 64, row, &full[stage]);
        tma_load_2d(vs + h * kKeys * 64, &tm.v, h * 64, row, &full[stage]);
      }
    }
  };
  // V rows from `first` of a stage to zero: past the pass's last position the copies brought stale cache rows,
  // whose P is 0 but whose values may not be finite (0 · inf is NaN).
  auto zero_v_rows = [&](int stage, int first) {
    f16* vs = mm.v_s + stage * WgmmaMath::kTile;
    for (int idx = threadIdx.x; idx < (kKeys - first) * (WgmmaMath::HD / 8); idx += kThreads) {
      const int t = first + idx / (WgmmaMath::HD / 8), col = (idx % (WgmmaMath::HD / 8)) * 8;
      *reinterpret_cast<uint4*>(vs + WgmmaMath::kv_offset(t, col)) = make_uint4(0u, 0u, 0u, 0u);
    }
  };
  const int rowA = warp * 16 + (lane >> 2), rowB = rowA + 8;
  OnlineSoftmax<kDimTiles> sm;
  float o[kDimTiles][4];
  int g = 0;

  for_each_tile_pass<PAIRED, false>(
      p, m, row_seq, row_pos, pass,
      [&](int tok0) { load_q_tile<WgmmaMath::HD>(p, m, kh, tok0, row_seq, row_pos, mm); },
      [&] { begin_rows(sm, o, row_seq, row_pos, rowA, rowB); },
      [&](int seq, int max_pos, int min_pos, bool mixed) {
        const int32_t* table = p.block_table + size_t(seq) * p.max_blocks_per_seq;
        const int n_tiles = max_pos / kKeys + 1;
        issue(g & 1, table, max_pos, 0);
        for (int it = 0; it < n_tiles; ++it, ++g) {
          const int t0 = it * kKeys, stage = g & 1;
          // the other stage was freed by the barrier that ended the previous tile
          if (it + 1 < n_tiles) issue(stage ^ 1, table, max_pos, t0 + kKeys);
          mbar_wait(&full[stage], (g >> 1) & 1);
          if (t0 + kKeys - 1 > max_pos) {  // the pass's last tile, partly past its positions
            zero_v_rows(stage, max_pos - t0 + 1);
            WgmmaMath::publish();
            __syncthreads();
          }
          float s[kKeyTiles][4];
          mm.scores(s, stage);
          sm.tile(s, o, t0, seq, tile_needs_mask(mixed, min_pos, t0));
          mm.accumulate(s, o, stage);
          __syncthreads();  // every warp's products read this stage: the tile after next may refill it
        }
      },
      [&](int tok0) { sm.write(p, m, kh, tok0, rowA, o); });
}

}  // namespace

bool attention_prefill_sm90_built() {
#ifdef ROPEPP_SM90A_BUILT
  return true;
#else
  return false;
#endif
}

void launch_attention_prefill_paged_sm90(const AttentionPagedLaunch& p, int num_sms, bool tma, cudaStream_t stream) {
  check_attention_paged(p, "attention (prefill, sm90)");
  if (!attention_prefill_sm90_built())
    cuda_unsupported("attention (prefill, sm90)", "build without sm_90a (CMAKE_CUDA_ARCHITECTURES lacks 90)", 0, "");
  if (p.n_tokens <= 0) return;
  if (p.head_dim != 128) cuda_unsupported("attention (prefill, sm90)", "head_dim", p.head_dim, "128");
  KvTensorMaps tm{};
  if (tma && encode_kv_tensor_maps(p, tm)) {
    const bool paired = pair_token_tiles(p, num_sms);
    auto* k = paired ? attention_prefill_wgmma_tma<true> : attention_prefill_wgmma_tma<false>;
    const size_t smem = WgmmaMath::kBytes + 2 * sizeof(uint64_t);
    CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    k<<<prefill_grid(p, paired), kThreads, smem, stream>>>(p, tm);
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess)
      cuda_fail(e, "launch of attention_prefill_wgmma_tma", __FILE__, __LINE__);
    return;
  }
  launch_prefill(attention_prefill_wgmma<true>, attention_prefill_wgmma<false>, WgmmaMath::kBytes, p, num_sms, stream,
                 "launch of attention_prefill_wgmma");
}

}  // namespace ropepp
