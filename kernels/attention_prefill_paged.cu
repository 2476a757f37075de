// attention_prefill_paged.cu: causal flash attention (FlashAttention-2 style) over the paged f16 KV cache,
// on f16 tensor cores (mma.sync m16n8k16, fp32 accumulation), O(n) memory.
//
// attention_prefill_flash: one block of 8 warps per (tile, or pair of tiles, of query tokens; kv head). The block's 128
// "virtual rows" are (token, r) pairs: r < R runs over the kv head's q heads and, with RoPE++, their
// imaginary rows −rot(q), so one K/V tile in shared memory serves all of them. Each warp owns 16 rows.
// Per key tile (kKeys positions, two cp.async stages): S = Q·Kᵀ (mma), causal/sequence mask, online
// softmax on the accumulator fragments, P (f16) · V (mma, V via ldmatrix.trans).
// A tile of batch tokens may span several sequences; the block runs one pass over the keys of each
// sequence present (in increasing sequence index), masking the rows of the others.
#include <climits>

#include "attention_prefill_paged.cuh"
#include "cuda_check.cuh"
#include "device_utils.cuh"

namespace ropepp {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kWarps * 16;  // virtual query rows per block
constexpr int kKeys = 64;           // keys per tile

// Probabilities P = exp2(s − m) lie in [0, 1]: f16 without the saturating clamp of pack_f16x2.
__device__ __forceinline__ uint32_t pack_p_f16x2(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);  // .x = lo (lower address), .y = hi
  return *reinterpret_cast<uint32_t*>(&v);
}

template <int HD>
struct PrefillSmem {
  static constexpr int kLd = HD + 8;  // f16 row pitch; +16 bytes: conflict-free ldmatrix
  static constexpr size_t kQ = size_t(kRows) * kLd;
  static constexpr size_t kKv = size_t(2) * kKeys * kLd;  // two stages
  static constexpr size_t bytes() { return (kQ + 2 * kKv) * sizeof(f16) + 2 * kRows * sizeof(int) + 4 * sizeof(int); }
};

template <int HD, bool PAIRED>
// Two blocks per SM: ≤ 128 registers per thread (2 × 256 threads; 2 × 105.5 KB of shared memory fit too). With all
// Q fragments held in registers the kernel took 182 and ran one block per SM: 12.5% occupancy, latency-bound
// (Nsight Compute, docs/PERFORMANCE.md); two blocks made 65,536-token prompts 19% faster on the H100.
__global__ __launch_bounds__(kThreads, 2) void attention_prefill_flash(AttentionPagedLaunch p) {
  using Smem = PrefillSmem<HD>;
  constexpr int kLd = Smem::kLd;
  constexpr int kChunksPerRow = HD / 8;
  constexpr int kDimTiles = HD / 8;    // n-tiles of the output
  constexpr int kKSteps = HD / 16;     // k-steps of Q·Kᵀ
  constexpr int kKeyTiles = kKeys / 8; // n-tiles of S

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kh = blockIdx.y;
  const int group = p.n_q_heads / p.n_kv_heads;
  const int parts = p.imag ? 2 : 1;
  const int R = group * parts;
  const int tokens_per_block = kRows / R;
  const int n_out_heads = p.n_q_heads * parts;

  extern __shared__ uint4 smem_raw[];
  f16* q_s = reinterpret_cast<f16*>(smem_raw);    // [kRows][kLd]
  f16* k_s = q_s + Smem::kQ;                       // [2][kKeys][kLd]
  f16* v_s = k_s + Smem::kKv;                      // [2][kKeys][kLd]
  int* row_seq = reinterpret_cast<int*>(v_s + Smem::kKv);  // [kRows], -1: padding row
  int* row_pos = row_seq + kRows;                          // [kRows]
  int* pass = row_pos + kRows;                             // [0]: sequence of this pass, [1]: its max position

  // PAIRED: block b runs token tile n − 1 − b (in a prompt: the most keys) and then tile b (the fewest), so that
  // every block of a causal prompt has the same work and no SM idles in a tail of long tiles. Otherwise one tile
  // per block, the last tiles first (in a prompt they have the most keys; the short ones then fill the tail).
  const int n_tok_tiles = (p.n_tokens + tokens_per_block - 1) / tokens_per_block;
  for (int half = 0; half < (PAIRED ? 2 : 1); ++half) {
  const int tile = half == 0 ? n_tok_tiles - 1 - int(blockIdx.x) : int(blockIdx.x);
  if (half == 1 && tile >= n_tok_tiles - 1 - int(blockIdx.x)) break;  // odd count: the middle tile ran alone
  const int tok0 = tile * tokens_per_block;
  __syncthreads();  // the previous tile's rows and Q are no longer read

  // Rows, and Q pre-scaled by scale·log2(e) in f16. Row v = (token tok0 + v / R, r = v % R), r = j·parts + part.
  const float qscale = p.scale * kLog2e;
  for (int v = tid; v < kRows; v += kThreads) {
    const int tl = v / R, tok = tok0 + tl;
    const bool valid = tl < tokens_per_block && tok < p.n_tokens;
    row_seq[v] = valid ? p.seq_of_token[tok] : -1;
    row_pos[v] = valid ? p.positions[tok] : -1;
  }
  for (int idx = tid; idx < kRows * (HD / 2); idx += kThreads) {
    const int v = idx / (HD / 2), d = (idx % (HD / 2)) * 2;
    const int tl = v / R, r = v % R, tok = tok0 + tl;
    float a = 0.f, b = 0.f;
    if (tl < tokens_per_block && tok < p.n_tokens) {
      const float* qh = p.q + size_t(tok) * p.q_row_stride + size_t(kh * group + r / parts) * HD;
      if (r % parts == 0) {
        a = qh[d], b = qh[d + 1];
      } else if (d < HD / 2) {  // −rot(q) = cat(q[d/2:], −q[:d/2])
        a = qh[d + HD / 2], b = qh[d + 1 + HD / 2];
      } else {
        a = -qh[d - HD / 2], b = -qh[d + 1 - HD / 2];
      }
    }
    *reinterpret_cast<uint32_t*>(q_s + v * kLd + d) = pack_f16x2(a * qscale, b * qscale);
  }
  __syncthreads();

  // This thread's two rows (fragment rows g and g + 8 of its warp).
  const int rowA = warp * 16 + (lane >> 2), rowB = rowA + 8;
  const int seqA = row_seq[rowA], posA = row_pos[rowA];
  const int seqB = row_seq[rowB], posB = row_pos[rowB];

  // This warp's Q fragments stay in shared memory and are re-read per key tile, one k-step at a time (registers:
  // see __launch_bounds__ above).
  const f16* q_warp = q_s + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLd + (lane >> 4) * 8;

  float o[kDimTiles][4];
#pragma unroll
  for (int i = 0; i < kDimTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mA = neg_inf(), mB = neg_inf(), lA = 0.f, lB = 0.f;  // running max (log2 domain), partial sums

  const size_t head_off = size_t(kh) * p.block_size * HD;
  const size_t block_stride = size_t(p.n_kv_heads) * p.block_size * HD;

  int prev_seq = -1;
  while (true) {
    if (tid == 0) {  // next sequence present in this tile, in increasing index order
      int s = INT_MAX, mp = -1;
      for (int v = 0; v < kRows; ++v)
        if (row_seq[v] > prev_seq && row_seq[v] < s) s = row_seq[v];
      for (int v = 0; v < kRows; ++v)
        if (row_seq[v] == s && row_pos[v] > mp) mp = row_pos[v];
      pass[0] = s;
      pass[1] = mp;
    }
    __syncthreads();
    const int seq = pass[0], max_pos = pass[1];
    if (seq == INT_MAX) break;
    const int32_t* table = p.block_table + size_t(seq) * p.max_blocks_per_seq;
    const int n_tiles = max_pos / kKeys + 1;

    auto load_tile = [&](int stage, int t0) {
      f16* ks = k_s + stage * kKeys * kLd;
      f16* vs = v_s + stage * kKeys * kLd;
      for (int c = tid; c < kKeys * kChunksPerRow; c += kThreads) {
        const int t = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
        const int pos = t0 + t;
        size_t off = 0;
        bool valid = pos <= max_pos;
        if (valid) {
          const int blk = table[pos / p.block_size];
          valid = blk >= 0 && blk < p.n_blocks;
          off = size_t(blk) * block_stride + head_off + size_t(pos % p.block_size) * HD + col;
        }
        cp_async_16(ks + t * kLd + col, p.cache_k + (valid ? off : 0), valid);  // invalid: zero-filled
        cp_async_16(vs + t * kLd + col, p.cache_v + (valid ? off : 0), valid);
      }
      cp_async_commit();
    };

    load_tile(0, 0);
    for (int it = 0; it < n_tiles; ++it) {
      const int t0 = it * kKeys, stage = it & 1;
      if (it + 1 < n_tiles) {
        load_tile(stage ^ 1, t0 + kKeys);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const f16* ks = k_s + stage * kKeys * kLd;
      const f16* vs = v_s + stage * kKeys * kLd;

      // S = Q · Kᵀ for this warp's 16 rows × kKeys keys; k-step outer: kKeyTiles independent accumulators.
      float s[kKeyTiles][4];
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

      // Mask (other sequence, or key after the row's position) and online softmax.
      float tmA = neg_inf(), tmB = neg_inf();
#pragma unroll
      for (int nt = 0; nt < kKeyTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = t0 + nt * 8 + (lane & 3) * 2 + e;
          if (seqA != seq || key > posA) s[nt][e] = neg_inf();
          if (seqB != seq || key > posB) s[nt][2 + e] = neg_inf();
          tmA = fmaxf(tmA, s[nt][e]);
          tmB = fmaxf(tmB, s[nt][2 + e]);
        }
      }
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, off));
        tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, off));
      }
      const float mA_new = fmaxf(mA, tmA), mB_new = fmaxf(mB, tmB);
      const float uA = mA_new == neg_inf() ? 0.f : mA_new, uB = mB_new == neg_inf() ? 0.f : mB_new;
      const float alphaA = exp2f(mA - uA), alphaB = exp2f(mB - uB);
      mA = mA_new, mB = mB_new;
      float sumA = 0.f, sumB = 0.f;
#pragma unroll
      for (int nt = 0; nt < kKeyTiles; ++nt) {
        s[nt][0] = exp2f(s[nt][0] - uA), s[nt][1] = exp2f(s[nt][1] - uA);
        s[nt][2] = exp2f(s[nt][2] - uB), s[nt][3] = exp2f(s[nt][3] - uB);
        sumA += s[nt][0] + s[nt][1];
        sumB += s[nt][2] + s[nt][3];
      }
      lA = lA * alphaA + sumA;
      lB = lB * alphaB + sumB;
#pragma unroll
      for (int i = 0; i < kDimTiles; ++i) o[i][0] *= alphaA, o[i][1] *= alphaA, o[i][2] *= alphaB, o[i][3] *= alphaB;

      // O += P · V: the S accumulators of key tiles 2j, 2j+1 are the A fragment of k-step j.
#pragma unroll
      for (int j = 0; j < kKeys / 16; ++j) {
        uint32_t a[4];
        a[0] = pack_p_f16x2(s[2 * j][0], s[2 * j][1]);
        a[1] = pack_p_f16x2(s[2 * j][2], s[2 * j][3]);
        a[2] = pack_p_f16x2(s[2 * j + 1][0], s[2 * j + 1][1]);
        a[3] = pack_p_f16x2(s[2 * j + 1][2], s[2 * j + 1][3]);
#pragma unroll
        for (int i2 = 0; i2 < kDimTiles / 2; ++i2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, vs + (j * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLd + i2 * 16 + (lane >> 4) * 8);
          mma_f16_16x8x16(o[2 * i2], a, b[0], b[1]);
          mma_f16_16x8x16(o[2 * i2 + 1], a, b[2], b[3]);
        }
      }
      __syncthreads();  // the next iteration refills the other stage
    }
    prev_seq = seq;
  }

  // Normalise and write: row sums are spread over the 4 lanes of a quad.
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    lA += __shfl_xor_sync(0xffffffffu, lA, off);
    lB += __shfl_xor_sync(0xffffffffu, lB, off);
  }
  const float invA = lA > 0.f ? 1.f / lA : 0.f, invB = lB > 0.f ? 1.f / lB : 0.f;
  const int col = (lane & 3) * 2;
  if (seqA >= 0) {
    const int tok = tok0 + rowA / R, oh = kh * R + rowA % R;
    float* dst = p.out + (size_t(tok) * n_out_heads + oh) * HD + col;
#pragma unroll
    for (int i = 0; i < kDimTiles; ++i)
      *reinterpret_cast<float2*>(dst + i * 8) = make_float2(o[i][0] * invA, o[i][1] * invA);
  }
  if (seqB >= 0) {
    const int tok = tok0 + rowB / R, oh = kh * R + rowB % R;
    float* dst = p.out + (size_t(tok) * n_out_heads + oh) * HD + col;
#pragma unroll
    for (int i = 0; i < kDimTiles; ++i)
      *reinterpret_cast<float2*>(dst + i * 8) = make_float2(o[i][2] * invB, o[i][3] * invB);
  }
  }  // tile (pair)
}

template <int HD>
void launch_flash(const AttentionPagedLaunch& p, int num_sms, cudaStream_t stream) {
  constexpr size_t smem = PrefillSmem<HD>::bytes();
  const int tokens_per_block = kRows / attention_rows_per_kv_head(p);
  const int n_tok_tiles = (p.n_tokens + tokens_per_block - 1) / tokens_per_block;
  // Pairs only for one prompt from position 0 (the tiles' work grows linearly: pairing evens it out) in a grid of a
  // few waves. Measured on the H100 (376M pp4096 attention): EC 3.79 → 2.83 ms, EH 2.48 → 2.08 ms. A chunk that
  // continues a sequence has tiles of nearly equal work, and halving its grid left SMs idle (64k prompt in
  // 2,048-token chunks: 92k → 69k tok/s); a grid of many waves fills the tail with short tiles anyway.
  const bool paired = p.n_seqs == 1 && p.max_pos + 1 == p.n_tokens &&
                      int64_t(n_tok_tiles) * p.n_kv_heads <= int64_t(16) * num_sms;
  auto kernel = paired ? attention_prefill_flash<HD, true> : attention_prefill_flash<HD, false>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(paired ? (n_tok_tiles + 1) / 2 : n_tok_tiles, p.n_kv_heads);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  CUDA_CHECK_LAUNCH("attention_prefill_flash");
}

}  // namespace

void launch_attention_prefill_paged(const AttentionPagedLaunch& p, int num_sms, cudaStream_t stream) {
  check_attention_paged(p, "attention (prefill)");
  if (p.n_tokens <= 0) return;
  switch (p.head_dim) {  // the closed set checked by check_attention_paged
    case 16: launch_flash<16>(p, num_sms, stream); break;
    case 32: launch_flash<32>(p, num_sms, stream); break;
    case 64: launch_flash<64>(p, num_sms, stream); break;
    default: launch_flash<128>(p, num_sms, stream); break;
  }
}

}  // namespace ropepp
