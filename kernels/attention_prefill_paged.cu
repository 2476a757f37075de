// attention_prefill_paged.cu: causal flash attention (FlashAttention-2 style) over the paged f16 KV cache,
// on f16 tensor cores (mma.sync m16n8k16, fp32 accumulation), O(n) memory; and the dispatch between it and the
// Hopper kernel (attention_prefill_paged_sm90.cu, wgmma).
//
// attention_prefill_flash: one block of 8 warps per (tile, or pair of tiles, of query tokens; kv head), driven by
// prefill_block (attention_prefill_tile.cuh: rows, passes, loads, softmax). Each warp owns 16 rows. Per key tile
// (kKeys positions, two cp.async stages): S = Q·Kᵀ (mma), causal/sequence mask, online softmax on the accumulator
// fragments, P (f16) · V (mma, V via ldmatrix.trans). A tile of batch tokens may span several sequences; the block
// runs one pass over the keys of each sequence present (in increasing sequence index), masking the rows of the others.
#include "attention_prefill_paged.cuh"
#include "attention_prefill_tile.cuh"
#include "cuda_check.cuh"

namespace ropepp {
namespace {

using namespace prefill;

// mma.sync operands: Q, K and V in padded f16 rows (kLd = HD + 8: conflict-free ldmatrix); each warp reads the
// K / V tile through ldmatrix for its own 16 rows. Q fragments stay in shared memory and are re-read per key tile,
// one k-step at a time (registers: see the kernel's __launch_bounds__).
template <int HD>
struct MmaSyncMath {
  static constexpr int kLd = HD + 8;
  static constexpr int kTile = kKeys * kLd;  // elements of one K or V stage
  static constexpr size_t kBytes =
      (size_t(kRows) * kLd + 4 * size_t(kTile)) * sizeof(f16) + (2 * kRows + 4) * sizeof(int);
  static constexpr int kDimTiles = HD / 8;   // n-tiles of the output
  static constexpr int kKSteps = HD / 16;    // k-steps of Q·Kᵀ

  f16* q_s;   // [kRows][kLd]
  f16* k_s;   // [2][kKeys][kLd]
  f16* v_s;   // [2][kKeys][kLd]
  int* ints;  // [2 kRows + 4]
  int lane;
  const f16* q_warp;  // this lane's ldmatrix row of this warp's Q rows

  __device__ explicit MmaSyncMath(uint8_t* smem)
      : q_s(reinterpret_cast<f16*>(smem)), k_s(q_s + kRows * kLd), v_s(k_s + 2 * kTile),
        ints(reinterpret_cast<int*>(v_s + 2 * kTile)), lane(threadIdx.x & 31),
        q_warp(q_s + ((threadIdx.x >> 5) * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLd + (lane >> 4) * 8) {}
  __device__ static int q_offset(int v, int d) { return v * kLd + d; }
  __device__ static int kv_offset(int t, int col) { return t * kLd + col; }
  __device__ static void publish() {}

  // k-step outer: kKeyTiles independent accumulators.
  __device__ __forceinline__ void scores(float (&s)[kKeyTiles][4], int stage) const {
    const f16* ks = k_s + stage * kTile;
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      uint32_t qa[4];
      ldmatrix_x4(qa, q_warp + kk * 16);
#pragma unroll
      for (int nt2 = 0; nt2 < kKeyTiles / 2; ++nt2) {
        uint32_t b[4];
        ldmatrix_x4(b, ks + (nt2 * 16 + (lane & 7) + (lane >> 4) * 8) * kLd + kk * 16 + ((lane >> 3) & 1) * 8);
        mma_f16_16x8x16(s[2 * nt2], qa, b[0], b[1]);
        mma_f16_16x8x16(s[2 * nt2 + 1], qa, b[2], b[3]);
      }
    }
  }

  // The S accumulators of key tiles 2j, 2j+1 are the A fragment of k-step j; V via ldmatrix.trans.
  __device__ __forceinline__ void accumulate(const float (&s)[kKeyTiles][4], float (&o)[kDimTiles][4],
                                             int stage) const {
    const f16* vs = v_s + stage * kTile;
#pragma unroll
    for (int j = 0; j < kKeys / 16; ++j) {
      uint32_t a[4];
      p_fragment(s, j, a);
#pragma unroll
      for (int i2 = 0; i2 < kDimTiles / 2; ++i2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, vs + (j * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLd + i2 * 16 + (lane >> 4) * 8);
        mma_f16_16x8x16(o[2 * i2], a, b[0], b[1]);
        mma_f16_16x8x16(o[2 * i2 + 1], a, b[2], b[3]);
      }
    }
  }
};

template <int HD, bool PAIRED>
// Two blocks per SM: ≤ 128 registers per thread (2 × 256 threads; 2 × 105.5 KB of shared memory fit too). With all
// Q fragments held in registers the kernel took 182 and ran one block per SM: 12.5% occupancy, latency-bound
// (Nsight Compute, docs/PERFORMANCE.md); two blocks made 65,536-token prompts 19% faster on the H100.
__global__ __launch_bounds__(kThreads, 2) void attention_prefill_flash(AttentionPagedLaunch p) {
  extern __shared__ uint4 smem_raw[];
  MmaSyncMath<HD> mm(reinterpret_cast<uint8_t*>(smem_raw));
  prefill_block<HD, PAIRED>(p, mm);
}

template <int HD>
void launch_flash(const AttentionPagedLaunch& p, int num_sms, cudaStream_t stream) {
  launch_prefill(attention_prefill_flash<HD, true>, attention_prefill_flash<HD, false>, MmaSyncMath<HD>::kBytes, p,
                 num_sms, stream, "launch of attention_prefill_flash");
}

}  // namespace

void launch_attention_prefill_paged(const AttentionPagedLaunch& p, const AttentionPrefillConfig& cfg,
                                    cudaStream_t stream) {
  check_attention_paged(p, "attention (prefill)");
  if (p.n_tokens <= 0) return;
  if (cfg.sm90 && p.head_dim == 128 && attention_prefill_sm90_built()) {
    if (cfg.warp_specialized) {
      launch_attention_prefill_warp_specialized_sm90(p, cfg.num_sms, cfg.ws_q_in_registers, stream);
    } else {
      launch_attention_prefill_paged_sm90(p, cfg.num_sms, cfg.tma, stream);
    }
    return;
  }
  switch (p.head_dim) {  // the closed set checked by check_attention_paged
    case 16: launch_flash<16>(p, cfg.num_sms, stream); break;
    case 32: launch_flash<32>(p, cfg.num_sms, stream); break;
    case 64: launch_flash<64>(p, cfg.num_sms, stream); break;
    default: launch_flash<128>(p, cfg.num_sms, stream); break;
  }
}

}  // namespace ropepp
