// attention_prefill_paged_sm90.cu: the prefill flash attention of attention_prefill_paged.cu on Hopper's warpgroup
// MMA (wgmma, compiled for sm_90a only; head_dim 128). Same blocks, rows, passes, masks and online softmax
// (attention_prefill_tile.cuh); what differs is how the tensor cores get their operands:
// - Q, K and V live in shared memory with the 128-byte swizzle (wgmma.cuh) instead of padded rows;
// - each warpgroup (4 warps, 64 of the block's 128 rows) computes S = Q·Kᵀ [64 x 64 keys] with wgmma reading Q
//   and K straight from shared memory, and O += P·V with P from registers and V (MN-major) from shared memory.
// The mma.sync kernel has every warp read the whole K and V tile from shared memory for its 16 rows (ldmatrix); here
// one read serves 64 rows, and one instruction does a warpgroup's 64 x 64 x 16 (or x 128 x 16) product.
#include "attention_prefill_paged.cuh"
#include "attention_prefill_tile.cuh"
#include "cuda_check.cuh"
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

}  // namespace

bool attention_prefill_sm90_built() {
#ifdef ROPEPP_SM90A_BUILT
  return true;
#else
  return false;
#endif
}

void launch_attention_prefill_paged_sm90(const AttentionPagedLaunch& p, int num_sms, cudaStream_t stream) {
  check_attention_paged(p, "attention (prefill, sm90)");
  if (!attention_prefill_sm90_built())
    cuda_unsupported("attention (prefill, sm90)", "build without sm_90a (CMAKE_CUDA_ARCHITECTURES lacks 90)", 0, "");
  if (p.n_tokens <= 0) return;
  if (p.head_dim != 128) cuda_unsupported("attention (prefill, sm90)", "head_dim", p.head_dim, "128");
  launch_prefill(attention_prefill_wgmma<true>, attention_prefill_wgmma<false>, WgmmaMath::kBytes, p, num_sms, stream,
                 "launch of attention_prefill_wgmma");
}

}  // namespace ropepp
