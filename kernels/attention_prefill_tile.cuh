// attention_prefill_tile.cuh: the parts of the prefill flash-attention kernels that do not depend on how the tensor
// cores are driven (attention_prefill_paged.cu: mma.sync, any sm_80+; attention_prefill_paged_sm90.cu: wgmma,
// Hopper): the block's virtual query rows, the pass over each sequence present in a tile, the paged K/V tile loads,
// the online softmax on accumulator fragments and the output rows. Included by those two kernels only.
//
// A block has kWarps warps and kRows "virtual rows" (token, r): r < R runs over the kv head's q heads and, with
// RoPE++, their imaginary rows −rot(q), so one K/V tile in shared memory serves all of them. Warp w owns rows
// 16w .. 16w + 15; in both the mma.sync C fragment and the wgmma accumulator a thread holds rows
// 16w + lane / 4 ("A") and 16w + lane / 4 + 8 ("B"), columns 8i + (lane % 4) · 2 + {0, 1} of n-tile i.
#pragma once

#include <climits>

#include "attention_paged.cuh"
#include "cuda_check.cuh"
#include "device_utils.cuh"

namespace ropepp::prefill {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kWarps * 16;  // virtual query rows per block
constexpr int kKeys = 64;           // keys per tile
constexpr int kKeyTiles = kKeys / 8; // n-tiles of S = Q·Kᵀ

// Probabilities P = exp2(s − m) lie in [0, 1]: f16 without the saturating clamp of pack_f16x2.
__device__ __forceinline__ uint32_t pack_p_f16x2(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);  // .x = lo (lower address), .y = hi
  return *reinterpret_cast<uint32_t*>(&v);
}

// How a block's rows map to tokens and heads for kv head kh.
struct RowMap {
  int group;             // q heads per kv head
  int parts;             // 2 with RoPE++ (real and imaginary row per q head), else 1
  int R;                 // virtual rows per token
  int tokens_per_block;  // kRows / R
  int n_out_heads;       // heads of `out` per token
  __device__ explicit RowMap(const AttentionPagedLaunch& p)
      : group(p.n_q_heads / p.n_kv_heads), parts(p.imag ? 2 : 1), R(group * parts), tokens_per_block(kRows / R),
        n_out_heads(p.n_q_heads * parts) {}
  __device__ int n_token_tiles(int n_tokens) const { return (n_tokens + tokens_per_block - 1) / tokens_per_block; }
};

// The token tile a block runs in round `half`, or -1 when it has no more. PAIRED: block b runs tile n − 1 − b (in a
// prompt: the most keys) and then tile b (the fewest), so that every block of a causal prompt has the same work and
// no SM idles in a tail of long tiles. Otherwise one tile per block, the last tiles first (in a prompt they have the
// most keys; the short ones then fill the tail).
template <bool PAIRED>
__device__ __forceinline__ int token_tile(int half, int n_tok_tiles) {
  if (half == 0) return n_tok_tiles - 1 - int(blockIdx.x);
  if (!PAIRED || int(blockIdx.x) >= n_tok_tiles - 1 - int(blockIdx.x)) return -1;  // odd count: the middle ran alone
  return int(blockIdx.x);
}

// log2(v) when v is a power of two, else -1.
__host__ __device__ inline int log2_if_pow2(int v) {
  if (v <= 0 || (v & (v - 1)) != 0) return -1;
  int s = 0;
  while ((1 << s) < v) ++s;
  return s;
}

// Fills row_seq / row_pos ([kRows]; -1: padding row) and Q pre-scaled by scale·log2(e) in f16, row v = (token
// tok0 + v / R, r = v % R), r = j·parts + part. store(v, d, packed f16x2) writes elements d, d + 1 of row v.
// Thread tid of nthreads (all of them call it; by default the whole block).
// Q is read 16 bytes (4 dims) at a time when q and its row stride allow it, kBatch reads issued before any is
// used: a thread's 16 reads of a 128-row tile then cost two memory round trips, where one 8-byte read per loop
// iteration cost 32 (Nsight Compute, H100, pp4096: 15% of the kernel's stall samples, 17% of its instructions).
template <int HD, class QStore>
__device__ __forceinline__ void load_rows_and_q(const AttentionPagedLaunch& p, const RowMap& m, int kh, int tok0,
                                                int* row_seq, int* row_pos, QStore store, int tid = -1,
                                                int nthreads = kThreads) {
  if (tid < 0) tid = threadIdx.x;
  const float qscale = p.scale * kLog2e;
  const int r_shift = log2_if_pow2(m.R);  // R is a power of two for every shape served so far
  auto token_of = [&](int v) { return r_shift >= 0 ? v >> r_shift : v / m.R; };
  for (int v = tid; v < kRows; v += nthreads) {
    const int tl = token_of(v), tok = tok0 + tl;
    const bool valid = tl < m.tokens_per_block && tok < p.n_tokens;
    row_seq[v] = valid ? p.seq_of_token[tok] : -1;
    row_pos[v] = valid ? p.positions[tok] : -1;
  }
  // Unit idx: row v = idx / (HD / 4), dims d .. d + 3. The imaginary row (part 1) is −rot(q) = cat(q[d/2:],
  // −q[:d/2]): its dims d .. d + 3 are q's d + HD/2 .. (d < HD/2) or −q's d − HD/2 .. (a unit never straddles HD/2).
  constexpr int kUnitsPerRow = HD / 4;
  constexpr int kUnits = kRows * kUnitsPerRow;
  constexpr int kBatch = 8;
  const bool vec4 = ((reinterpret_cast<uintptr_t>(p.q) | uintptr_t(p.q_row_stride) * sizeof(float)) & 15u) == 0;
  for (int base = tid; base < kUnits; base += kBatch * nthreads) {
    float4 val[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int idx = base + b * nthreads;
      val[b] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (idx >= kUnits) continue;
      const int v = idx / kUnitsPerRow, d = (idx % kUnitsPerRow) * 4;
      const int tl = token_of(v), r = v - tl * m.R, tok = tok0 + tl;
      if (tl >= m.tokens_per_block || tok >= p.n_tokens) continue;
      const bool imag = m.parts == 2 && (r & 1);
      const float* qh = p.q + size_t(tok) * p.q_row_stride + size_t(kh * m.group + (m.parts == 2 ? r >> 1 : r)) * HD;
      const float* src = qh + (imag ? (d < HD / 2 ? d + HD / 2 : d - HD / 2) : d);
      if (vec4) {
        val[b] = *reinterpret_cast<const float4*>(src);
      } else {
        val[b] = make_float4(src[0], src[1], src[2], src[3]);
      }
      if (imag && d >= HD / 2) val[b] = make_float4(-val[b].x, -val[b].y, -val[b].z, -val[b].w);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int idx = base + b * nthreads;
      if (idx >= kUnits) break;
      const int v = idx / kUnitsPerRow, d = (idx % kUnitsPerRow) * 4;
      store(v, d, pack_f16x2(val[b].x * qscale, val[b].y * qscale));
      store(v, d + 2, pack_f16x2(val[b].z * qscale, val[b].w * qscale));
    }
  }
}

// Warp 0 picks the next sequence present in the tile (in increasing index order): pass[0] (INT_MAX: none left),
// its largest and smallest position pass[1], pass[2], and pass[3] = 1 when rows of other sequences share the tile.
// The caller synchronises before reading them. (Lane l scans rows l, l + 32, ...; one thread scanning all rows
// twice kept the block waiting at the barrier after it: 4.6% of the pp4096 kernel's stall samples, H100.)
__device__ __forceinline__ void next_pass(const int* row_seq, const int* row_pos, int prev_seq, int* pass) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  int s = INT_MAX;
  for (int v = lane; v < kRows; v += 32) {
    const int q = row_seq[v];
    if (q > prev_seq && q < s) s = q;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s = min(s, __shfl_xor_sync(0xffffffffu, s, off));
  int mp = -1, lo = INT_MAX, mixed = 0;
  for (int v = lane; v < kRows; v += 32) {
    const int q = row_seq[v];
    if (q == s) {
      mp = max(mp, row_pos[v]);
      lo = min(lo, row_pos[v]);
    } else if (q >= 0) {
      mixed = 1;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    mp = max(mp, __shfl_xor_sync(0xffffffffu, mp, off));
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, off));
    mixed |= __shfl_xor_sync(0xffffffffu, mixed, off);
  }
  if (lane == 0) {
    pass[0] = s;
    pass[1] = mp;
    pass[2] = lo;
    pass[3] = mixed;
  }
}

// Whether the key tile from t0 needs the mask: some row of the tile belongs to another sequence, or some key lies
// after some row's position. Below the diagonal of a one-sequence tile (most tiles of a long prompt) it does not.
// mixed, min_pos: pass[3] != 0 and pass[2] of next_pass; keys: the tile's length.
__device__ __forceinline__ bool tile_needs_mask(bool mixed, int min_pos, int t0, int keys = kKeys) {
  return mixed || t0 + keys - 1 > min_pos;
}

// 2^x on the special-function unit, subnormal results flushed to 0 (they round to 0 in f16 P anyway and are
// negligible in the fp32 row sums): one instruction where exp2f takes three.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Where this thread's K/V chunks of a tile are: rows tr, tr + kRowsPerPass, ... of the tile, columns col .. col + 7.
// block_shift: log2(block_size) when it is a power of two (shift and mask instead of a division), else -1.
// NT threads load a tile (tid: this thread's index among them; by default the whole block).
template <int HD, int NT = kThreads>
struct KvTileLoader {
  static constexpr int kChunksPerRow = HD / 8;
  static constexpr int kRowsPerPass = NT / kChunksPerRow;  // rows of the tile one pass of the NT threads covers
  static_assert(NT % kChunksPerRow == 0, "the threads must cover whole tile rows");
  int tr, col, block_shift;
  size_t head_off, block_stride;
  __device__ KvTileLoader(const AttentionPagedLaunch& p, int kh, int tid = -1)
      : tr((tid < 0 ? int(threadIdx.x) : tid) / kChunksPerRow),
        col(((tid < 0 ? int(threadIdx.x) : tid) % kChunksPerRow) * 8),
        block_shift(log2_if_pow2(p.block_size)),
        head_off(size_t(kh) * p.block_size * HD), block_stride(size_t(p.n_kv_heads) * p.block_size * HD) {}

  // Issues the cp.async copies of key positions t0 .. t0 + kKeys − 1 (of the sequence whose block table is `table`)
  // into ks / vs and commits them as one group. offset(t, col) is the element offset of (key t, dims col .. col + 7)
  // in a tile. Positions past max_pos or in an unmapped block are zero-filled.
  // The rows' cache blocks are all looked up before the first copy is issued (one round trip to the block table
  // per tile, not one per row: each lookup's latency stalled the copies behind it).
  template <class Offset>
  __device__ __forceinline__ void load(const AttentionPagedLaunch& p, const int32_t* table, int max_pos, int t0,
                                       f16* ks, f16* vs, Offset offset) const {
    constexpr int kIter = (kKeys + kRowsPerPass - 1) / kRowsPerPass;
    int blk[kIter];
#pragma unroll
    for (int i = 0; i < kIter; ++i) {
      const int t = tr + i * kRowsPerPass, pos = t0 + t;
      const int bi = block_shift >= 0 ? pos >> block_shift : pos / p.block_size;
      blk[i] = t < kKeys && pos <= max_pos ? table[bi] : -1;
    }
#pragma unroll
    for (int i = 0; i < kIter; ++i) {
      const int t = tr + i * kRowsPerPass, pos = t0 + t;
      if (t >= kKeys) break;
      const int bo = block_shift >= 0 ? pos & (p.block_size - 1) : pos % p.block_size;
      const bool valid = blk[i] >= 0 && blk[i] < p.n_blocks;
      const size_t off = valid ? size_t(blk[i]) * block_stride + head_off + size_t(bo) * HD + col : 0;
      const int dst = offset(t, col);
      cp_async_16(ks + dst, p.cache_k + off, valid);  // invalid: zero-filled
      cp_async_16(vs + dst, p.cache_v + off, valid);
    }
    cp_async_commit();
  }
};

// The running max (log2 domain) and partial sums of this thread's rows A and B, and their sequence and position.
// KT: n-tiles (8 keys each) of S per step (the prefill kernels: kKeyTiles; the decode tensor-core kernel: 2).
template <int kDimTiles, int KT = kKeyTiles>
struct OnlineSoftmax {
  int seqA, posA, seqB, posB;
  float mA = neg_inf(), mB = neg_inf(), lA = 0.f, lB = 0.f;

  // One key tile from position t0 in the pass over sequence `seq`: masks S when `masked` (other sequence, or key
  // after the row's position; tile_needs_mask), turns it into P = exp2(S − m) in place and rescales the output
  // accumulators o (skipped by a warp whose rows all kept their max: most tiles of a long row).
  __device__ __forceinline__ void tile(float (&s)[KT][4], float (&o)[kDimTiles][4], int t0, int seq,
                                       bool masked) {
    const float2 alpha = update(s, t0, seq, masked);
    rescale(o, alpha);
  }

  // Multiplies o by the factors update() returned (rows A, B), unless no row of the warp changed its max.
  __device__ __forceinline__ static void rescale(float (&o)[kDimTiles][4], float2 alpha) {
    if (__any_sync(0xffffffffu, alpha.x != 1.f || alpha.y != 1.f)) {
#pragma unroll
      for (int i = 0; i < kDimTiles; ++i) o[i][0] *= alpha.x, o[i][1] *= alpha.x, o[i][2] *= alpha.y, o[i][3] *= alpha.y;
    }
  }

  // tile() without the rescale: the factors by which the output accumulated so far must be multiplied before
  // this tile's P·V is added (rows A, B). A kernel that adds the previous tile's P·V while this one's softmax
  // runs rescales later.
  __device__ __forceinline__ float2 update(float (&s)[KT][4], int t0, int seq, bool masked) {
    const int lane = threadIdx.x & 31;
    float tmA = neg_inf(), tmB = neg_inf();
    if (masked) {
#pragma unroll
      for (int nt = 0; nt < KT; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = t0 + nt * 8 + (lane & 3) * 2 + e;
          if (seqA != seq || key > posA) s[nt][e] = neg_inf();
          if (seqB != seq || key > posB) s[nt][2 + e] = neg_inf();
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < KT; ++nt) {
      tmA = fmaxf(tmA, fmaxf(s[nt][0], s[nt][1]));
      tmB = fmaxf(tmB, fmaxf(s[nt][2], s[nt][3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, off));
      tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, off));
    }
    const float mA_new = fmaxf(mA, tmA), mB_new = fmaxf(mB, tmB);
    const float uA = mA_new == neg_inf() ? 0.f : mA_new, uB = mB_new == neg_inf() ? 0.f : mB_new;
    const float alphaA = exp2_ftz(mA - uA), alphaB = exp2_ftz(mB - uB);  // 1 exactly where the max stayed
    mA = mA_new, mB = mB_new;
    float sumA = 0.f, sumB = 0.f;
#pragma unroll
    for (int nt = 0; nt < KT; ++nt) {
      s[nt][0] = exp2_ftz(s[nt][0] - uA), s[nt][1] = exp2_ftz(s[nt][1] - uA);
      s[nt][2] = exp2_ftz(s[nt][2] - uB), s[nt][3] = exp2_ftz(s[nt][3] - uB);
      sumA += s[nt][0] + s[nt][1];
      sumB += s[nt][2] + s[nt][3];
    }
    lA = lA * alphaA + sumA;
    lB = lB * alphaB + sumB;
    return make_float2(alphaA, alphaB);
  }

  // Normalises o and writes this thread's two rows of `out` (row sums are spread over the 4 lanes of a quad).
  __device__ __forceinline__ void write(const AttentionPagedLaunch& p, const RowMap& m, int kh, int tok0, int rowA,
                                        float (&o)[kDimTiles][4]) {
    constexpr int HD = kDimTiles * 8;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      lA += __shfl_xor_sync(0xffffffffu, lA, off);
      lB += __shfl_xor_sync(0xffffffffu, lB, off);
    }
    const float invA = lA > 0.f ? 1.f / lA : 0.f, invB = lB > 0.f ? 1.f / lB : 0.f;
    const int col = (lane & 3) * 2;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = rowA + 8 * half;
      if ((half == 0 ? seqA : seqB) < 0) continue;
      const float inv = half == 0 ? invA : invB;
      const int tok = tok0 + row / m.R, oh = kh * m.R + row % m.R;
      const size_t off = (size_t(tok) * m.n_out_heads + oh) * HD + col;
      if (p.out_half) {  // 16-bit output (the o_proj GEMM's input)
        uint32_t* dst = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(p.out_half) + off);
#pragma unroll
        for (int i = 0; i < kDimTiles; ++i) {
          const float lo = o[i][2 * half] * inv, hi = o[i][2 * half + 1] * inv;
          if (p.out_half_bf16) {
            __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
            dst[i * 4] = *reinterpret_cast<uint32_t*>(&v);
          } else {
            dst[i * 4] = pack_f16x2(lo, hi);
          }
        }
        continue;
      }
      float* dst = p.out + off;
#pragma unroll
      for (int i = 0; i < kDimTiles; ++i)
        *reinterpret_cast<float2*>(dst + i * 8) = make_float2(o[i][2 * half] * inv, o[i][2 * half + 1] * inv);
    }
  }
};

// The A fragment (m16k16, as mma.sync and register-A wgmma take it) of P for keys 16j .. 16j + 15 of the tile: the
// S accumulators of key n-tiles 2j and 2j + 1.
template <int KT>
__device__ __forceinline__ void p_fragment(const float (&s)[KT][4], int j, uint32_t (&a)[4]) {
  a[0] = pack_p_f16x2(s[2 * j][0], s[2 * j][1]);
  a[1] = pack_p_f16x2(s[2 * j][2], s[2 * j][3]);
  a[2] = pack_p_f16x2(s[2 * j + 1][0], s[2 * j + 1][1]);
  a[3] = pack_p_f16x2(s[2 * j + 1][2], s[2 * j + 1][3]);
}

// The frame of a block's work, shared by the kernels: its token tiles (PAIRED: up to two) and in each one pass per
// sequence present in the tile, in increasing sequence index. All threads of the block call it, and it calls:
//   load_q(tok0)                           the tile's rows and Q into shared memory (load_rows_and_q)
//   begin_tile()                           the per-thread state of the tile's rows (rows and Q are visible)
//   run_pass(seq, max_pos, min_pos, mixed) the key tiles of sequence seq (next_pass's values)
//   end_tile(tok0)                         the tile's output rows
// row_seq / row_pos / pass: the shared-memory arrays of load_rows_and_q and next_pass. GUARD: one more barrier
// after pass[] is read, for kernels whose threads run a pass without a block-wide barrier (thread 0 could
// otherwise write the next pass's values before a slower thread read these).
template <bool PAIRED, bool GUARD, class LoadQ, class Begin, class Pass, class End>
__device__ __forceinline__ void for_each_tile_pass(const AttentionPagedLaunch& p, const RowMap& m, const int* row_seq,
                                                   const int* row_pos, int* pass, LoadQ&& load_q, Begin&& begin_tile,
                                                   Pass&& run_pass, End&& end_tile) {
  const int n_tok_tiles = m.n_token_tiles(p.n_tokens);
  for (int half = 0; half < (PAIRED ? 2 : 1); ++half) {
    const int tile = token_tile<PAIRED>(half, n_tok_tiles);
    if (tile < 0) break;
    const int tok0 = tile * m.tokens_per_block;
    __syncthreads();  // the previous tile's rows and Q are no longer read
    load_q(tok0);
    __syncthreads();
    begin_tile();
    int prev_seq = -1;
    while (true) {
      next_pass(row_seq, row_pos, prev_seq, pass);
      __syncthreads();
      const int seq = pass[0], max_pos = pass[1], min_pos = pass[2];
      const bool mixed = pass[3] != 0;
      if constexpr (GUARD) __syncthreads();
      if (seq == INT_MAX) break;
      run_pass(seq, max_pos, min_pos, mixed);
      prev_seq = seq;
    }
    end_tile(tok0);
  }
}

// The token tile's rows and Q (load_rows_and_q) in Math's layout (Math::q_offset), published to the tensor cores:
// the load_q step of for_each_tile_pass in the kernels whose whole block loads Q.
template <int HD, class Math>
__device__ __forceinline__ void load_q_tile(const AttentionPagedLaunch& p, const RowMap& m, int kh, int tok0,
                                            int* row_seq, int* row_pos, Math& mm) {
  load_rows_and_q<HD>(p, m, kh, tok0, row_seq, row_pos, [&](int v, int d, uint32_t x) {
    *reinterpret_cast<uint32_t*>(mm.q_s + Math::q_offset(v, d)) = x;
  });
  Math::publish();
}

// The begin_tile step: this thread's rows A and B (their sequences and positions), a fresh softmax, zero output.
template <int kDimTiles>
__device__ __forceinline__ void begin_rows(OnlineSoftmax<kDimTiles>& sm, float (&o)[kDimTiles][4], const int* row_seq,
                                           const int* row_pos, int rowA, int rowB) {
  sm = OnlineSoftmax<kDimTiles>{row_seq[rowA], row_pos[rowA], row_seq[rowB], row_pos[rowB]};
#pragma unroll
  for (int i = 0; i < kDimTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
}

// One block's work, shared by both kernels. Math (one per kernel) owns the shared-memory layout and the two products:
//   Math(smem)                      carves q_s [kRows x HD], k_s / v_s [2 stages][kTile], ints [2 kRows + 4]
//   static q_offset(v, d), kv_offset(t, col)   element offsets in Q and in a K/V stage
//   static kTile                    elements per K or V stage
//   static publish()                makes this thread's shared-memory writes visible to the MMA unit
//   scores(s, stage)                S = Q·Kᵀ for this warp's 16 rows × kKeys keys of the stage
//   accumulate(s, o, stage)         O += P·V with P = s (the softmax has run)
// Per token tile (or pair, PAIRED): rows and Q into shared memory; then one pass per sequence present over its key
// tiles, two cp.async stages, online softmax between the two products; last the normalised rows.
template <int HD, bool PAIRED, class Math>
__device__ __forceinline__ void prefill_block(const AttentionPagedLaunch& p, Math& mm) {
  constexpr int kDimTiles = HD / 8;  // n-tiles of the output
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kh = blockIdx.y;
  const RowMap m(p);
  const KvTileLoader<HD> kv(p, kh);
  int* row_seq = mm.ints;           // [kRows], -1: padding row
  int* row_pos = row_seq + kRows;   // [kRows]
  int* pass = row_pos + kRows;      // [4]: next_pass
  // This thread's two rows (fragment rows g and g + 8 of its warp), their softmax state and output accumulators.
  const int rowA = warp * 16 + (lane >> 2), rowB = rowA + 8;
  OnlineSoftmax<kDimTiles> sm;
  float o[kDimTiles][4];

  for_each_tile_pass<PAIRED, false>(
      p, m, row_seq, row_pos, pass,
      [&](int tok0) { load_q_tile<HD>(p, m, kh, tok0, row_seq, row_pos, mm); },
      [&] { begin_rows(sm, o, row_seq, row_pos, rowA, rowB); },
      [&](int seq, int max_pos, int min_pos, bool mixed) {
        const int32_t* table = p.block_table + size_t(seq) * p.max_blocks_per_seq;
        const int n_tiles = max_pos / kKeys + 1;
        auto load_tile = [&](int stage, int t0) {
          kv.load(p, table, max_pos, t0, mm.k_s + stage * Math::kTile, mm.v_s + stage * Math::kTile,
                  [](int t, int col) { return Math::kv_offset(t, col); });
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
          Math::publish();
          __syncthreads();
          float s[kKeyTiles][4];
          mm.scores(s, stage);
          sm.tile(s, o, t0, seq, tile_needs_mask(mixed, min_pos, t0));
          mm.accumulate(s, o, stage);
          __syncthreads();  // the next iteration refills the other stage
        }
      },
      [&](int tok0) { sm.write(p, m, kh, tok0, rowA, o); });
}

// Pairs only for one prompt from position 0 (the tiles' work grows linearly: pairing evens it out) in a grid of a
// few waves. Measured on the H100 (376M pp4096 attention, mma.sync kernel): EC 3.79 → 2.83 ms, EH 2.48 → 2.08 ms. A
// chunk that continues a sequence has tiles of nearly equal work, and halving its grid left SMs idle (64k prompt in
// 2,048-token chunks: 92k → 69k tok/s); a grid of many waves fills the tail with short tiles anyway.
inline bool pair_token_tiles(const AttentionPagedLaunch& p, int num_sms) {
  const int tokens_per_block = kRows / attention_rows_per_kv_head(p);
  const int n_tok_tiles = (p.n_tokens + tokens_per_block - 1) / tokens_per_block;
  return p.n_seqs == 1 && p.max_pos + 1 == p.n_tokens && int64_t(n_tok_tiles) * p.n_kv_heads <= int64_t(16) * num_sms;
}

inline dim3 prefill_grid(const AttentionPagedLaunch& p, bool paired) {
  const int tokens_per_block = kRows / attention_rows_per_kv_head(p);
  const int n_tok_tiles = (p.n_tokens + tokens_per_block - 1) / tokens_per_block;
  return dim3(paired ? (n_tok_tiles + 1) / 2 : n_tok_tiles, p.n_kv_heads);
}

// Launches paired_kernel (paired token tiles: pair_token_tiles) or kernel with `smem` bytes of shared memory; a
// launch error names `name`.
template <class Kernel>
void launch_prefill(Kernel paired_kernel, Kernel kernel, size_t smem, const AttentionPagedLaunch& p, int num_sms,
                    cudaStream_t stream, const char* name, int threads = kThreads) {
  const bool paired = pair_token_tiles(p, num_sms);
  Kernel k = paired ? paired_kernel : kernel;
  CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  k<<<prefill_grid(p, paired), threads, smem, stream>>>(p);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) cuda_fail(e, name, __FILE__, __LINE__);
}

}  // namespace ropepp::prefill
