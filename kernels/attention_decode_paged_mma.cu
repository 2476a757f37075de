// attention_decode_paged_mma.cu: the flash-decoding split kernel of attention_decode_paged.cu on tensor cores
// (mma.sync m16n8k16, any sm_80+), selected by AttentionDecodePlan::tensor_cores (CudaBackendOptions::decode_mma,
// on by default; ROPEPP_CUDA_DECODE_MMA=0 runs the fp32 kernel). Same grid, splits and partial
// results (the same combine kernel merges them); what differs is how a block streams its split:
// - the R ≤ 16 query rows of the kv head (RoPE++: every q head's real and imaginary row) are the 16 rows of an mma
//   A operand, held in registers for the whole split (rows ≥ R are zero and never written out);
// - each of the 4 warps streams its own 16-key chunks of the split (chunks w, w + 4, ...) through its own two
//   cp.async stages and keeps its own online softmax and output accumulators: no block-wide barrier until the
//   end, where the 4 warps' (max, sum, output) are merged through shared memory;
// - S = Q·Kᵀ and O += P·V run on tensor cores with K and V read through ldmatrix once per warp: the fp32 kernel
//   re-reads q from shared memory for every key (≈ 4× the bytes of the K/V tile per tile), which bounds it well
//   below the copy rate at 64k positions;
// - in a decode step (AttentionPagedLaunch::history_cached) each warp's first two chunks, but for the token's own
//   row, are loaded before the kernel waits for the previous one (PDL): up to 128 positions per block, all the K/V
//   of a short context.
// - TMA shapes (AttentionDecodePlan::mma_shape 3, 4; head_dim 128): lane 0 of each warp fills a stage with 4 boxes
//   of the copy engine (kv_tensor_maps.cuh: K and V halves, 128-byte swizzle) completing on the stage's mbarrier,
//   instead of 16 cp.async per lane and their address math; an early chunk's own row is re-read once it has landed,
//   and V rows past the split's end are zeroed (the boxes bring whole 16-row cache pieces).
#include <algorithm>

#include "attention_decode_paged.cuh"
#include "attention_decode_paged_mma.cuh"
#include "attention_prefill_tile.cuh"
#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "kv_tensor_maps.cuh"
#include "paged_kv_load.cuh"
#include "wgmma.cuh"  // sw128_offset: the copy engine's 128-byte swizzle

namespace ropepp {
namespace {

constexpr int kChunk = 16;  // keys per warp step: the n extent of S (two n-tiles), the k extent of P·V

// W warps per block, each streaming its chunks through S stages (AttentionDecodePlan::mma_shape: 4 × 2 by
// default; 2 × 4: as much shared memory per block in fewer warps, more of it in flight; 4 × 3). TMA: the stages are
// filled by the copy engine (head_dim 128: 4 boxes of kv_tensor_maps.cuh per chunk, K [2][16][64] then V
// [2][16][64] with the 128-byte swizzle, from a 1,024-byte aligned base; one mbarrier per stage) instead of every
// lane's cp.async copies into padded rows.
template <int HD, int W, int S, bool TMA = false>
struct MmaDecodeSmem {
  static constexpr int kLd = HD + 8;                            // f16 row pitch: conflict-free ldmatrix (Q; K/V without TMA)
  static constexpr size_t kStage = size_t(2) * kChunk * (TMA ? HD : kLd);  // f16 elements: K then V of one chunk
  static constexpr size_t kWarpStages = S * kStage;             // S stages per warp
  static constexpr size_t kQ = size_t(16) * kLd;                // f16 elements of the Q rows
  static constexpr size_t kAlign = TMA ? 1024 : 0;              // slack to align the base to a swizzle atom
  // The stages; at the end the same bytes hold the warps' outputs [W][16][HD] fp32 and (max, sum) [W][16][2].
  // With DecodePartials::cluster, the block's merged partial [16][HD] + [16][2] follows them (W + 1 such slots).
  static constexpr size_t kStageBytes =
      std::max(W * kWarpStages * sizeof(f16), size_t(W + 1) * 16 * (HD + 2) * sizeof(float));
  static constexpr size_t kBars = TMA ? size_t(W) * S * sizeof(uint64_t) : 0;  // after Q: [W][S] mbarriers
  static constexpr size_t bytes() { return kAlign + kStageBytes + kQ * sizeof(f16) + kBars; }
};

// cp.async.wait_group n for a run-time n in 0 .. S − 1.
template <int S>
__device__ __forceinline__ void cp_async_wait_upto(int n) {
  if constexpr (S > 1) {
    if (n >= S - 1) return cp_async_wait<S - 1>();
    return cp_async_wait_upto<S - 1>(n);
  } else {
    cp_async_wait<0>();
  }
}

template <int HD, int W, int S, bool TMA>
__global__ __launch_bounds__(W * 32) void attention_decode_split_kv_mma(AttentionPagedLaunch p, int chunk,
                                                                        int n_splits, const DecodePartials partials,
                                                                        const __grid_constant__ KvTensorMaps tm) {
  static_assert(!TMA || HD == 2 * kKvBoxCols, "the copy engine's boxes cover head_dim 128");
  pdl_launch_dependents();  // the next kernel (a matvec) may start its weight loads
  constexpr int kWarps = W, kThreads = W * 32;
  using Smem = MmaDecodeSmem<HD, W, S, TMA>;
  constexpr int kLd = Smem::kLd;
  constexpr int kKSteps = HD / 16;  // k-steps of Q·Kᵀ
  constexpr int kDimTiles = HD / 8;  // n-tiles of the output
  constexpr int kPieces = HD / 8;    // 16-byte pieces of one K/V row

  const DecodeSplit ds(p, chunk);
  const int tok = ds.tok, kh = ds.kh, split = ds.split, group = ds.group, parts = ds.parts, R = ds.R;
  const int n_out_heads = ds.n_out_heads, seq = ds.seq, begin = ds.begin, end = ds.end;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  extern __shared__ uint4 smem_raw[];
  char* base = reinterpret_cast<char*>(smem_raw);
  if constexpr (TMA) base += (1024u - (smem_u32(base) & 1023u)) & 1023u;  // a swizzle atom's alignment
  f16* stages = reinterpret_cast<f16*>(base);  // [kWarps][S stages][K, V][kChunk][kLd] (TMA: [K, V][2][kChunk][64])
  f16* q_s = reinterpret_cast<f16*>(base + Smem::kStageBytes);  // [16][kLd]

  // This warp's chunks: keys begin + 16c .. + 15 for c = warp, warp + kWarps, ...
  const int32_t* table = p.block_table + size_t(seq) * p.max_blocks_per_seq;
  const PagedKvHead<HD> head(p, kh);
  f16* my_stages = stages + warp * Smem::kWarpStages;
  // Chunk t0 .. t0 + 15 into a stage, but for key position `skip` (nothing written there). Lane l copies dims
  // piece_col .. + 7 of keys t_lane, t_lane + kKeyStep, ... (kPieces lanes per key row). When the cache's block size
  // is a multiple of 16, a chunk (t0 is a multiple of 16, as the split length is) lies in one cache block: one lookup
  // per chunk and the rows' addresses a fixed stride apart. Per key, the address math (a division by the block
  // size, a table load, 64-bit offsets) was most of the instructions a warp issued per chunk (Nsight Compute,
  // H100, EH at 65,408 positions: ~1,000 warp instructions per 16-key chunk at ~7 cycles each, DRAM 59% busy).
  constexpr int kKeyStep = 32 / kPieces;  // keys one pass of the warp covers
  const int t_lane = lane / kPieces, piece_col = (lane % kPieces) * 8;
  const bool one_block_chunks = p.block_size % kChunk == 0;
  const int block_shift = prefill::log2_if_pow2(p.block_size);
  auto load_chunk = [&](int stage, int t0, int skip) {
    f16* ks = my_stages + stage * Smem::kStage + t_lane * kLd + piece_col;
    f16* vs = ks + kChunk * kLd;
    if (one_block_chunks) {
      const int bi = block_shift >= 0 ? t0 >> block_shift : t0 / p.block_size;
      const int blk = table[bi];
      const bool mapped = blk >= 0 && blk < p.n_blocks;
      const size_t row0 = mapped ? size_t(blk) * head.block_stride + head.head_off +
                                       size_t(t0 - bi * p.block_size + t_lane) * HD + piece_col
                                 : 0;
#pragma unroll
      for (int i = 0; i < kChunk / kKeyStep; ++i) {
        const int t = t_lane + i * kKeyStep;
        if (t0 + t == skip) continue;
        const bool valid = mapped && t0 + t < end;
        const size_t off = valid ? row0 + size_t(i) * kKeyStep * HD : 0;
        cp_async_16(ks + i * kKeyStep * kLd, p.cache_k + off, valid);  // invalid: zero-filled
        cp_async_16(vs + i * kKeyStep * kLd, p.cache_v + off, valid);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kChunk / kKeyStep; ++i) {
        const int t = t_lane + i * kKeyStep;
        if (t0 + t != skip)
          head.copy_piece(p, table, t0 + t, end, piece_col, ks + i * kKeyStep * kLd, vs + i * kKeyStep * kLd);
      }
    }
    cp_async_commit();
  };
  // TMA: lane 0 copies the chunk at t0 (all 16 rows: the own row and rows past `end` are fixed after they land)
  // as 4 boxes completing on the stage's mbarrier.
  uint64_t* my_bars = reinterpret_cast<uint64_t*>(q_s + Smem::kQ) + warp * S;  // [S] (TMA only)
  auto load_chunk_tma = [&](int stage, int t0) {
    if (lane != 0) return;
    const int bi = block_shift >= 0 ? t0 >> block_shift : t0 / p.block_size;
    const int row = kv_box_row(p, tm, table[bi], kh, t0 - bi * p.block_size);
    f16* st = my_stages + stage * Smem::kStage;  // K [2][16][64], V [2][16][64]
    mbar_expect_tx(my_bars + stage, 4 * kKvBoxBytes);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tma_load_2d(st + h * kChunk * kKvBoxCols, &tm.k, h * kKvBoxCols, row, my_bars + stage);
      tma_load_2d(st + (2 + h) * kChunk * kKvBoxCols, &tm.v, h * kKvBoxCols, row, my_bars + stage);
    }
  };
  if constexpr (TMA) {
    if (lane == 0) {
      for (int st = 0; st < S; ++st) mbar_init(my_bars + st, 1);
      fence_mbarrier_init();  // before the copy engine completes on them
    }
    __syncwarp();
  }
  const int n_chunks = end > begin ? (end - begin + kChunk - 1) / kChunk : 0;
  // Stage 0 gets the warp's first chunk, stage 1 its second, both before Q is set up. In a decode step
  // (history_cached) their rows written by earlier steps are loaded before waiting for the previous kernel,
  // which writes q and the token's own K/V row (loaded after the wait into the slot the first loads skipped).
  const int own = p.positions[tok];  // the token's key position
  const bool early = p.history_cached;
  const int skip = early ? own : -1;
  long long own_row = -1;  // where the own row is in the cache (looked up now: the table is set before the step)
  if (early) {
#pragma unroll
    for (int st = 0; st < S; ++st)
      if (warp + st * kWarps < n_chunks) {
        if constexpr (TMA)
          load_chunk_tma(st, begin + (warp + st * kWarps) * kChunk);
        else
          load_chunk(st, begin + (warp + st * kWarps) * kChunk, skip);
      }
    if (own >= begin && own < end) own_row = head.row_offset(p, table, own, end);
  }
  pdl_wait();  // q and the token's cache slot are written by the previous kernel
  bool own_loaded_last = false;  // the own row's copies are the newest group (the first step waits for all)
  // TMA: the warp whose early chunk holds the own row reads that row into registers now (lanes 0..15: K, 16..31: V;
  // 8 dims each), beside the Q reads below: one L2 round trip after the wait instead of two in a row. The loop puts it
  // into the landed stage.
  const int own_chunk = own_row >= 0 ? (own - begin) / kChunk : -1;  // early only (own_row is set then)
  const bool own_early = TMA && own_chunk >= 0 && own_chunk % kWarps == warp && own_chunk < S * kWarps;
  uint4 own_piece = make_uint4(0, 0, 0, 0);
  if (own_early)
    own_piece = *reinterpret_cast<const uint4*>((lane < 16 ? p.cache_k : p.cache_v) + own_row + (lane & 15) * 8);
  if constexpr (TMA) {  // the own row of an early chunk is re-read when the chunk has landed (in the loop)
    if (!early) {
#pragma unroll
      for (int st = 0; st < S; ++st)
        if (warp + st * kWarps < n_chunks) load_chunk_tma(st, begin + (warp + st * kWarps) * kChunk);
    }
  } else if (early) {
#pragma unroll
    for (int st = 0; st < S; ++st) {
      const int t0 = begin + (warp + st * kWarps) * kChunk;
      if (warp + st * kWarps < n_chunks && own >= t0 && own < t0 + kChunk) {
        f16* ks = my_stages + st * Smem::kStage + (own - t0) * kLd;
        for (int c = lane; c < kPieces; c += 32)
          PagedKvHead<HD>::copy_row_piece(p, own_row, c * 8, ks + c * 8, ks + kChunk * kLd + c * 8);
        cp_async_commit();
        own_loaded_last = true;
      }
    }
  } else {
#pragma unroll
    for (int st = 0; st < S; ++st)
      if (warp + st * kWarps < n_chunks) load_chunk(st, begin + (warp + st * kWarps) * kChunk, -1);
  }

  // Q rows (row = j·parts + part for q head kh·group + j; part 1 is −rot(q) = cat(q[d/2:], −q[:d/2])), pre-scaled
  // by scale·log2(e), in f16; rows R..15 zero. Each q head is read once, 16 bytes per thread, all reads issued at
  // once (this runs after the wait: its latency is the step's).
  const float qscale = p.scale * kLog2e;
  constexpr int kQuads = HD / 4;
  auto put = [&](int row, int d, float a, float b) {
    *reinterpret_cast<uint32_t*>(q_s + row * kLd + d) = pack_f16x2(a, b);
  };
  for (int idx = tid; idx < group * kQuads; idx += kThreads) {
    const int j = idx / kQuads, d = (idx % kQuads) * 4;
    const float4 v =
        *reinterpret_cast<const float4*>(p.q + size_t(tok) * p.q_row_stride + size_t(kh * group + j) * HD + d);
    const float a = v.x * qscale, b = v.y * qscale, c = v.z * qscale, e = v.w * qscale;
    put(j * parts, d, a, b);
    put(j * parts, d + 2, c, e);
    if (parts == 2) {  // element k of q is element k − HD/2 of the imaginary row (k ≥ HD/2), else −(k + HD/2)
      const int di = d < HD / 2 ? d + HD / 2 : d - HD / 2;
      const float sg = d < HD / 2 ? -1.f : 1.f;
      put(j * parts + 1, di, sg * a, sg * b);
      put(j * parts + 1, di + 2, sg * c, sg * e);
    }
  }
  for (int idx = tid; idx < (16 - R) * (HD / 2); idx += kThreads)
    put(R + idx / (HD / 2), (idx % (HD / 2)) * 2, 0.f, 0.f);
  __syncthreads();
  uint32_t qa[kKSteps][4];  // Q's A fragments, all k-steps
  {
    const f16* qrow = q_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * kLd + (lane >> 4) * 8;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) ldmatrix_x4(qa[kk], qrow + kk * 16);
  }

  // Online softmax of this thread's rows g = lane / 4 and g + 8 (log2 domain; the mask is applied here, so the
  // rows' sequence/position fields are unused), output accumulators.
  prefill::OnlineSoftmax<kDimTiles, 2> soft{0, 0, 0, 0};
  float o[kDimTiles][4];
#pragma unroll
  for (int i = 0; i < kDimTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;

  int it = 0;
  for (int c = warp; c < n_chunks; c += kWarps, ++it) {
    const int t0 = begin + c * kChunk, stage = it % S;
    if constexpr (TMA) {
      mbar_wait(my_bars + stage, (it / S) & 1);  // the stage's (it / S)-th fill has landed
      f16* st = my_stages + stage * Smem::kStage;
      bool fixed = false;
      // An early chunk holding the token's own row got the slot before the previous kernel wrote it: re-read it.
      if (own_early && c == own_chunk) {
        const int r = own - t0, piece = lane & 15;  // lanes 0..15: K, 16..31: V (own_piece, read after the wait)
        *reinterpret_cast<uint4*>(st + (lane < 16 ? 0 : 2 * kChunk * kKvBoxCols) + sw128_offset(r, piece * 8, kChunk)) =
            own_piece;
        fixed = true;
      }
      // V rows past the split's end (stale cache rows: their P is 0, but 0 · inf is NaN) to zero: in its last chunk.
      if (t0 + kChunk > end) {
        const int first = max(end - t0, 0);
        for (int idx = lane; idx < (kChunk - first) * (HD / 8); idx += 32) {
          const int r = first + idx / (HD / 8), col = (idx % (HD / 8)) * 8;
          *reinterpret_cast<uint4*>(st + 2 * kChunk * kKvBoxCols + sw128_offset(r, col, kChunk)) = make_uint4(0, 0, 0, 0);
        }
        fixed = true;
      }
      if (fixed) {
        fence_proxy_async_shared();  // before any later fill of this stage by the copy engine
        __syncwarp();
      }
    } else {
      // Chunk c's copies (and the own row's) have landed; the warp's next S − 1 chunks' (those issued) may still be
      // in flight (in the first step with the own row copied last: nothing).
      if (it == 0 && own_loaded_last) {
        cp_async_wait<0>();
      } else {
        const int after = (n_chunks - 1 - c) / kWarps;  // the warp's chunks after c
        cp_async_wait_upto<S>(after < S - 1 ? after : S - 1);
      }
      __syncwarp();  // every lane's copies of this chunk are visible to the warp
    }
    const f16* ks = my_stages + stage * Smem::kStage;
    const f16* vs = ks + kChunk * (TMA ? HD : kLd);

    // S [16 rows x 16 keys]: n-tile 0 = keys 0..7, 1 = keys 8..15.
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      uint32_t b[4];
      const int r = (lane & 7) + (lane >> 4) * 8, col = kk * 16 + ((lane >> 3) & 1) * 8;
      ldmatrix_x4(b, ks + (TMA ? sw128_offset(r, col, kChunk) : r * kLd + col));
      mma_f16_16x8x16(s[0], qa[kk], b[0], b[1]);
      mma_f16_16x8x16(s[1], qa[kk], b[2], b[3]);
    }
    // Keys past the split's end (or the token's position) are masked: only in the split's last chunk.
    if (t0 + kChunk > end) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (t0 + nt * 8 + (lane & 3) * 2 + e >= end) s[nt][e] = s[nt][2 + e] = neg_inf();
        }
    }
    soft.rescale(o, soft.update(s, t0, 0, false));

    // O += P·V: P (f16) is the A fragment of the one k-step (keys 0..15); V through ldmatrix.trans.
    uint32_t pa[4];
    prefill::p_fragment(s, 0, pa);
#pragma unroll
    for (int i2 = 0; i2 < kDimTiles / 2; ++i2) {
      uint32_t b[4];
      const int r = (lane & 7) + ((lane >> 3) & 1) * 8, col = i2 * 16 + (lane >> 4) * 8;
      ldmatrix_x4_trans(b, vs + (TMA ? sw128_offset(r, col, kChunk) : r * kLd + col));
      mma_f16_16x8x16(o[2 * i2], pa, b[0], b[1]);
      mma_f16_16x8x16(o[2 * i2 + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // this stage is read: refill it with the chunk S steps ahead
    if (c + S * kWarps < n_chunks) {
      if constexpr (TMA)
        load_chunk_tma(stage, t0 + S * kWarps * kChunk);
      else
        load_chunk(stage, t0 + S * kWarps * kChunk, -1);
    }
  }
  // The rows' sums over the quad's lanes (each lane summed its own columns).
  float lA = soft.lA, lB = soft.lB;
  const float mA = soft.mA, mB = soft.mB;
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    lA += __shfl_xor_sync(0xffffffffu, lA, off);
    lB += __shfl_xor_sync(0xffffffffu, lB, off);
  }

  // Merge the warps: outputs and (max, sum) through shared memory (the stages are free once every warp is done).
  __syncthreads();
  float* wo = reinterpret_cast<float*>(base);  // [kWarps][16][HD]
  float* wml = wo + kWarps * 16 * HD;              // [kWarps][16][2]
  float* part = wml + kWarps * 16 * 2;             // [16][HD] then [16][2]: the block's partial (cluster merge)
  const int rA = lane >> 2, rB = rA + 8, col = (lane & 3) * 2;
  // only the R real rows (the rest of the 16 are padding)
  if (rA < R) {
#pragma unroll
    for (int i = 0; i < kDimTiles; ++i)
      *reinterpret_cast<float2*>(wo + (warp * 16 + rA) * HD + i * 8 + col) = make_float2(o[i][0], o[i][1]);
    if ((lane & 3) == 0) wml[(warp * 16 + rA) * 2] = mA, wml[(warp * 16 + rA) * 2 + 1] = lA;
  }
  if (rB < R) {
#pragma unroll
    for (int i = 0; i < kDimTiles; ++i)
      *reinterpret_cast<float2*>(wo + (warp * 16 + rB) * HD + i * 8 + col) = make_float2(o[i][2], o[i][3]);
    if ((lane & 3) == 0) wml[(warp * 16 + rB) * 2] = mB, wml[(warp * 16 + rB) * 2 + 1] = lB;
  }
  __syncthreads();
  for (int idx = tid; idx < R * HD; idx += kThreads) {
    const int r = idx / HD, d = idx % HD;
    float m = neg_inf();
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, wml[(w * 16 + r) * 2]);
    const float mu = m == neg_inf() ? 0.f : m;
    float l = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wgt = exp2f(wml[(w * 16 + r) * 2] - mu);  // 0 for a warp that saw no key (max −inf)
      l += wgt * wml[(w * 16 + r) * 2 + 1];
      acc += wgt * wo[(w * 16 + r) * HD + d];
    }
    const int oh = kh * R + r;
    if (n_splits == 1) {
      p.out[(size_t(tok) * n_out_heads + oh) * HD + d] = l > 0.f ? acc / l : 0.f;
    } else if (partials.cluster) {
      part[r * HD + d] = acc;
      if (d == 0) part[16 * HD + r * 2] = m, part[16 * HD + r * 2 + 1] = l;
    } else {
      partials.o[((size_t(tok) * n_splits + split) * n_out_heads + oh) * HD + d] = acc;
      if (d == 0) {
        float* ml = partials.ml + ((size_t(tok) * n_splits + split) * n_out_heads + oh) * 2;
        ml[0] = m;
        ml[1] = l;
      }
    }
  }
  // The splits of a cluster merge through distributed shared memory (no combine kernel, no global round trips).
  if (n_splits > 1 && partials.cluster)
    decode_merge_splits_in_cluster<HD>(p.out, part, tok, n_splits, n_out_heads, kh * R, R);
  // With few splits, the last block of the (token, kv head) merges them (no combine kernel); the shared memory
  // is free again once decode_split_is_last has synchronised the block.
  if (n_splits > 1 && partials.counters &&
      decode_split_is_last(partials.counters + size_t(tok) * p.n_kv_heads + kh, n_splits))
    decode_merge_splits_in_block<HD>(partials, p.out, tok, n_splits, n_out_heads, kh * R, R,
                                     reinterpret_cast<float*>(base));
}

template <int HD, int W, int S, bool TMA = false>
void launch_shape(const AttentionPagedLaunch& p, const AttentionDecodePlan& plan, const DecodePartials& parts,
                  cudaStream_t stream) {
  using Smem = MmaDecodeSmem<HD, W, S, TMA>;
  static_assert(Smem::kStageBytes >= kAttentionMaxRows * kDecodeLastBlockMaxSplits * sizeof(float));
  KvTensorMaps tm{};
  if constexpr (TMA) {  // a cache the copy engine cannot serve (block size not a multiple of 16): cp.async
    if (!encode_kv_tensor_maps(p, tm)) return launch_shape<HD, W, S, false>(p, plan, parts, stream);
  }
  launch_decode_split(attention_decode_split_kv_mma<HD, W, S, TMA>, Smem::bytes(), W * 32, p, plan, parts, stream,
                      TMA ? "launch of attention_decode_split_kv_mma (TMA)" : "launch of attention_decode_split_kv_mma",
                      tm);
}

template <int HD>
void launch_hd(const AttentionPagedLaunch& p, const AttentionDecodePlan& plan, const DecodePartials& parts,
               cudaStream_t stream) {
  if (plan.mma_shape == 1) return launch_shape<HD, 2, 4>(p, plan, parts, stream);
  if (plan.mma_shape == 2) return launch_shape<HD, 4, 3>(p, plan, parts, stream);
  if constexpr (HD == 128) {  // the copy engine's shapes (other head sizes: the cp.async kernel of the same shape)
    if (plan.mma_shape == 3) return launch_shape<HD, 4, 2, true>(p, plan, parts, stream);
    if (plan.mma_shape == 4) return launch_shape<HD, 4, 3, true>(p, plan, parts, stream);
    if (plan.mma_shape == 5) return launch_shape<HD, 8, 3, true>(p, plan, parts, stream);
  } else {
    if (plan.mma_shape == 4 || plan.mma_shape == 5) return launch_shape<HD, 4, 3>(p, plan, parts, stream);
  }
  launch_shape<HD, 4, 2>(p, plan, parts, stream);
}

// Shared memory an SM gives its blocks (H100/H200: 227 KB, plus 1 KB reserved per block).
constexpr size_t kSmemPerSm = 228 * 1024;
template <class Smem>
constexpr bool resident(size_t blocks) {
  return blocks * (Smem::bytes() + 1024) <= kSmemPerSm;
}
static_assert(resident<MmaDecodeSmem<128, 4, 2>>(3) && resident<MmaDecodeSmem<128, 4, 2, true>>(3));
static_assert(resident<MmaDecodeSmem<128, 4, 3>>(2) && !resident<MmaDecodeSmem<128, 4, 3>>(3));
static_assert(resident<MmaDecodeSmem<128, 4, 3, true>>(2) && !resident<MmaDecodeSmem<128, 4, 3, true>>(3));
static_assert(resident<MmaDecodeSmem<128, 8, 3, true>>(1) && !resident<MmaDecodeSmem<128, 8, 3, true>>(2));

}  // namespace

int attention_decode_mma_blocks_per_sm(int mma_shape) {
  return mma_shape == 5 ? 1 : (mma_shape == 2 || mma_shape == 4 ? 2 : 3);
}

void launch_attention_decode_split_mma(const AttentionPagedLaunch& p, const AttentionDecodePlan& plan,
                                       const DecodePartials& parts, cudaStream_t stream) {
  if (attention_rows_per_kv_head(p) > 16)
    cuda_unsupported("attention (decode, tensor cores)", "query rows per kv head", attention_rows_per_kv_head(p),
                     "1..16");
  if (plan.chunk % kChunk != 0)
    cuda_unsupported("attention (decode, tensor cores)", "split length (positions)", plan.chunk, "multiples of 16");
  if (p.q_row_stride % 4 != 0 || reinterpret_cast<uintptr_t>(p.q) % 16 != 0)  // q is read 16 bytes at a time
    cuda_unsupported("attention (decode, tensor cores)", "q row stride (floats; q 16-byte aligned)", p.q_row_stride,
                     "multiples of 4");
  switch (p.head_dim) {  // the closed set checked by check_attention_paged
    case 16: return launch_hd<16>(p, plan, parts, stream);
    case 32: return launch_hd<32>(p, plan, parts, stream);
    case 64: return launch_hd<64>(p, plan, parts, stream);
    default: return launch_hd<128>(p, plan, parts, stream);
  }
}

}  // namespace ropepp
