// attention_prefill_warp_specialized_sm90.cu: the Hopper prefill attention with the warps split into a producer and
// two consumers, on 128-key tiles (FlashAttention-3's schedule and tile shape for head_dim 128; sm_90a). Same rows,
// token tiles, passes, masks, online softmax and output as the other kernels (attention_prefill_tile.cuh); what
// differs is who waits for whom and how much work one wait buys:
// - warpgroup 0 only loads: per 128-key tile, lane 0 of each of its warps issues two 16-key pieces of K and V to
//   the copy engine (kv_tensor_maps.cuh: two 64-column boxes each, swizzled into the layout wgmma reads) into a ring
//   of three stages, completing on the stage's "full" mbarrier; it waits only for free stages ("empty" mbarriers);
// - warpgroups 1 and 2 (64 rows each) only compute, each at its own pace: wait for a full stage, S = Q·Kᵀ [64 x 128]
//   (Q from registers — loaded once per token tile — or, QREG false, from shared memory; K from shared memory),
//   softmax, O += P·V [64 x 128] (P from registers), mark the stage empty — no block-wide barrier inside a pass;
// - within a warpgroup, the softmax of tile j runs while the tensor cores still add tile j − 1's P·V (issued
//   together with tile j's S), so its output rescale is deferred until just before that P·V is issued;
// - across the two consumer warpgroups, named barriers let them issue their products in turn ("ping-pong"): one
//   warpgroup's softmax overlaps the other's products.
// 128-key tiles halve the per-tile costs of the 64-key kernels (the barrier waits, the row max / sum shuffles, the
// deferred rescale) per product, at 64 + 64 + 32 accumulator / probability registers per consumer thread: the
// warpgroups rebalance the register file (setmaxnreg: producer 24, consumers 240), one block of 384 threads per SM
// (≈ 226 KB of shared memory: Q 32 KB + 3 stages of K and V, 192 KB). The grid is not paired: one token tile per
// block, the longest first (at one block per SM a paired causal grid ran in two uneven waves).
// Cache blocks of a multiple of 16 positions (the copy engine's boxes); other caches run the wgmma kernel of
// attention_prefill_paged_sm90.cu. The default on Hopper (CudaBackendOptions::prefill_warp_specialized; H100 at 64k
// positions ~20% faster than that kernel: docs/PERFORMANCE.md, twenty-fourth session).
#include "attention_prefill_paged.cuh"
#include "attention_prefill_tile.cuh"
#include "cuda_check.cuh"
#include "kv_tensor_maps.cuh"
#include "mbarrier.cuh"
#include "wgmma.cuh"

namespace ropepp {
namespace {

using namespace prefill;

constexpr int kHD = 128;
constexpr int kN = 128;               // keys per tile
constexpr int kNTiles = kN / 8;       // n-tiles of S
constexpr int kStages = 3;            // K/V ring stages
constexpr int kWgThreads = 128;       // a warpgroup
constexpr int kConsumerThreads = 2 * kWgThreads;
constexpr int kWsThreads = kWgThreads + kConsumerThreads;
constexpr int kTile = kN * kHD;       // elements of one K or V stage
constexpr int kDimTiles = kHD / 8;    // n-tiles of the output
constexpr int kKSteps = kHD / 16;     // k-steps of Q·Kᵀ
constexpr int kPieces = kN / kKvBoxRows;  // 16-key pieces per tile
constexpr unsigned kStageBytes = 2u * kTile * sizeof(f16);  // K and V of one tile
constexpr int kSchedBarrier = 1;      // named barriers kSchedBarrier + c: consumer warpgroup c's turn (c = 0, 1)
constexpr int kWgBarrier = 3;         // named barriers kWgBarrier + c: consumer warpgroup c alone
constexpr int kProducerRegs = 24;     // per thread; 128 · 24 + 256 · 240 = 384 · 168, the launch's allocation
constexpr int kConsumerRegs = 240;
static_assert(kRows == 2 * 64, "two consumer warpgroups of 64 rows");
static_assert(kWgThreads * kProducerRegs + kConsumerThreads * kConsumerRegs == kWsThreads * 168,
              "setmaxnreg moves registers within the block's allocation at launch (168 per thread)");

// Shared memory (the base aligned to the 1,024-byte swizzle atom): Q [2][kRows][64], K and V [kStages][2][kN][64]
// each (128-byte swizzle, wgmma.cuh), row_seq / row_pos [kRows], pass [4], full / empty mbarriers [kStages].
struct WsSmem {
  static constexpr size_t kQ = size_t(kRows) * kHD * sizeof(f16);
  static constexpr size_t kKV = size_t(kStages) * kTile * sizeof(f16);
  static constexpr size_t kInts = (2 * size_t(kRows) + 4) * sizeof(int);
  static constexpr size_t kBytes = 1024 + kQ + 2 * kKV + kInts + 2 * kStages * sizeof(uint64_t);

  f16* q_s;
  f16* k_s;
  f16* v_s;
  int* row_seq;
  int* row_pos;
  int* pass;
  uint64_t* full;   // [kStages]: count 1 (the producer's expect_tx) + the stage's bytes
  uint64_t* empty;  // [kStages]: count kConsumerThreads / 32 (lane 0 of every consumer warp, its reads done)

  __device__ explicit WsSmem(uint8_t* smem) {
    uint8_t* base = smem + ((1024u - (uint32_t(__cvta_generic_to_shared(smem)) & 1023u)) & 1023u);
    q_s = reinterpret_cast<f16*>(base);
    k_s = reinterpret_cast<f16*>(base + kQ);
    v_s = reinterpret_cast<f16*>(base + kQ + kKV);
    row_seq = reinterpret_cast<int*>(base + kQ + 2 * kKV);
    row_pos = row_seq + kRows;
    pass = row_pos + kRows;
    full = reinterpret_cast<uint64_t*>(base + kQ + 2 * kKV + kInts);  // kInts is a multiple of 8
    empty = full + kStages;
  }
};
static_assert(WsSmem::kInts % 8 == 0, "the mbarriers must be 8-byte aligned");
static_assert(WsSmem::kBytes <= 227 * 1024, "one block per SM");

__device__ __forceinline__ uint64_t desc_at(uint64_t desc, int elems) {
  return desc + uint64_t(elems * int(sizeof(f16)) >> 4);
}

// Keeps P's registers (the A operand of an in-flight wgmma) live until after the wait, so that the compiler does not
// reuse them for the softmax that runs meanwhile.
__device__ __forceinline__ void fence_p_registers(uint32_t (&a)[kN / 16][4]) {
#pragma unroll
  for (int j = 0; j < kN / 16; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[j][e])::"memory");
}

// The producer warpgroup's part of one pass: tiles g .. g + n_tiles − 1 of the block's running tile count, key
// positions 0 .. n_tiles·kN − 1 of kv head kh of the sequence whose block table is `table`, into stage (tile %
// kStages). Lane 0 of warp w copies the tile's 16-key pieces w·kPiecesPerWarp .. + kPiecesPerWarp − 1 (one cache
// block's rows each; a piece past max_pos or in an unmapped block is out of bounds: zeros), and lane 0 of warp 0 arms
// the stage's full barrier with the tile's bytes (before or after the other warps' copies land: the barrier's one
// pending arrival keeps its phase open until then). One warp issuing all 32 copies of a tile was the kernel's
// bottleneck (Nsight Compute, H100, a 64k prompt's late chunk: the producer warp busy all the time, lane by lane
// through its copies, and the consumers 13% of their time waiting for full stages).
constexpr int kProducerWarps = kWgThreads / 32;
constexpr int kPiecesPerWarp = kPieces / kProducerWarps;
static_assert(kPieces % kProducerWarps == 0, "whole pieces per producer warp");
__device__ __forceinline__ void produce_pass(const AttentionPagedLaunch& p, const KvTensorMaps& tm, const WsSmem& sm,
                                             const int32_t* table, int kh, int max_pos, int block_shift, int g,
                                             int n_tiles) {
  const int lane = threadIdx.x & 31, warp = int(threadIdx.x) >> 5;
  for (int it = 0; it < n_tiles; ++it) {
    const int gi = g + it, stage = gi % kStages;
    int row[kPiecesPerWarp];
#pragma unroll
    for (int q = 0; q < kPiecesPerWarp; ++q) {  // the lookups before the wait: their latency hides behind it
      row[q] = tm.rows;
      const int pos = it * kN + (warp * kPiecesPerWarp + q) * kKvBoxRows;
      if (lane == 0 && pos <= max_pos) {
        const int bi = block_shift >= 0 ? pos >> block_shift : pos / p.block_size;
        row[q] = kv_box_row(p, tm, table[bi], kh, pos - bi * p.block_size);
      }
    }
    mbar_wait(&sm.empty[stage], ((gi / kStages) & 1) ^ 1);  // the consumers read this stage's last tile
    if (lane != 0) continue;
    if (warp == 0) mbar_expect_tx(&sm.full[stage], kStageBytes);
#pragma unroll
    for (int q = 0; q < kPiecesPerWarp; ++q) {
      const int piece = warp * kPiecesPerWarp + q;
      f16* ks = sm.k_s + stage * kTile + piece * kKvBoxRows * 64;
      f16* vs = sm.v_s + stage * kTile + piece * kKvBoxRows * 64;
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // 64-column halves, kN · 64 elements apart
        tma_load_2d(ks + h * kN * 64, &tm.k, h * 64, row[q], &sm.full[stage]);
        tma_load_2d(vs + h * kN * 64, &tm.v, h * 64, row[q], &sm.full[stage]);
      }
    }
  }
}

// V rows from `first` of a stage to zero (the pass's last tile: past its last position the copies brought stale cache
// rows, whose P is 0 but whose values may not be finite, and 0 · inf is NaN), by this consumer warpgroup, visible to
// its wgmma when it returns. Both consumer warpgroups write the same zeros into the same rows; the other reads them
// only after its own writes.
__device__ __forceinline__ void zero_v_rows(const WsSmem& sm, int stage, int first, int consumer) {
  f16* vs = sm.v_s + stage * kTile;
  const int wtid = int(threadIdx.x) % kWgThreads;
  for (int idx = wtid; idx < (kN - first) * (kHD / 8); idx += kWgThreads) {
    const int t = first + idx / (kHD / 8), col = (idx % (kHD / 8)) * 8;
    *reinterpret_cast<uint4*>(vs + sw128_offset(t, col, kN)) = make_uint4(0u, 0u, 0u, 0u);
  }
  fence_proxy_async_shared();
  named_barrier_sync(kWgBarrier + consumer, kWgThreads);
}

// Q's A fragments (the Q-in-registers variant): k-step kk of this warp's 16 rows of the consumer warpgroup's 64,
// read from the swizzled Q tile once per token tile (each lane names one 16-byte row piece: rows 0..15 of the warp,
// columns 16kk + 0 or 8). 32 registers per thread; the tensor cores then read only K from shared memory for S.
using QFragments = uint32_t[kKSteps][4];
__device__ __forceinline__ void load_q_fragments(const WsSmem& sm, int consumer, QFragments& qf) {
  const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3;
  const int row = 64 * consumer + 16 * w + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) ldmatrix_x4(qf[kk], sm.q_s + sw128_offset(row, kk * 16 + (lane >> 4) * 8, kRows));
}
// Keeps Q's registers live until after the wait for the S that reads them (as fence_p_registers for P).
__device__ __forceinline__ void fence_q_registers(QFragments& qf) {
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(qf[kk][e])::"memory");
}

// S [64 rows x kN] of this consumer warpgroup for the tile in `stage`, issued (not waited for): K from shared memory,
// Q from registers (QREG) or from shared memory (dq: this warpgroup's rows). k-step kk reads columns 16kk .. 16kk + 15
// (32 bytes into the 128-byte rows of 64-column block kk / 4).
template <bool QREG>
__device__ __forceinline__ void issue_scores(float (&s)[kNTiles][4], const QFragments& qf, uint64_t dq, uint64_t dk,
                                             int stage) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    const int col = (kk & 3) * 16;  // within the 64-column block kk / 4
    const uint64_t b = desc_at(dk, stage * kTile + (kk >> 2) * kN * 64 + col);
    if constexpr (QREG) {
      wgmma_m64n128k16_rs(s, qf[kk], b, kk > 0);
    } else {
      wgmma_m64n128k16_ss(s, desc_at(dq, (kk >> 2) * kRows * 64 + col), b, kk > 0);
    }
  }
  wgmma_commit();
}

// O += P·V for the tile in `stage` (P in registers, V MN-major: k-step j takes keys 16j .. 16j + 15), issued (not
// waited for).
__device__ __forceinline__ void issue_pv(float (&o)[kDimTiles][4], const uint32_t (&a)[kN / 16][4], uint64_t dv,
                                         int stage) {
  wgmma_fence_operands(o);
  wgmma_fence();
#pragma unroll
  for (int j = 0; j < kN / 16; ++j) wgmma_m64n128k16_rs_tn(o, a[j], desc_at(dv, stage * kTile + j * 16 * 64));
  wgmma_commit();
}

using Softmax = OnlineSoftmax<kDimTiles, kNTiles>;

// A consumer warpgroup's part of one pass (see the file comment for the schedule). o and the softmax state carry
// across passes; every product of the pass has completed when it returns. The first tile is peeled off the loop
// so that every P·V the loop issues is waited for on the same path (ptxas otherwise cannot tell that o is no
// longer in flight where it is rescaled, and serialises the products with an injected wait).
template <bool QREG>
__device__ __forceinline__ void consume_pass(const WsSmem& sm, Softmax& soft, float (&o)[kDimTiles][4], QFragments& qf,
                                             uint64_t dq, uint64_t dk, uint64_t dv, int consumer, int seq, int max_pos,
                                             bool mixed, int min_pos, int g, int n_tiles) {
  const int lane = threadIdx.x & 31;
  float s[kNTiles][4];
  uint32_t a[kN / 16][4];  // P of the previous tile (f16 pairs)
  // Waits for tile it's stage (and zeroes its V rows past the pass's end) and this warpgroup's turn, issues its S
  // (and, before the turn passes, `more`).
  auto start_tile = [&](int it, auto&& more) {
    const int gi = g + it, stage = gi % kStages;
    mbar_wait(&sm.full[stage], (gi / kStages) & 1);
    if (it * kN + kN - 1 > max_pos) zero_v_rows(sm, stage, max_pos - it * kN + 1, consumer);
    named_barrier_sync(kSchedBarrier + consumer, kConsumerThreads);  // this warpgroup's turn on the tensor cores
    issue_scores<QREG>(s, qf, dq, dk, stage);
    more();
    named_barrier_arrive(kSchedBarrier + (consumer ^ 1), kConsumerThreads);  // the other warpgroup's turn
    return stage;
  };
  auto scores_done = [&] {  // after the wait for S
    if constexpr (QREG) fence_q_registers(qf);
    wgmma_fence_operands(s);
  };
  auto finish_pv = [&](int stage) {  // waits for the P·V of the tile in `stage` and frees the stage
    wgmma_wait<0>();
    fence_p_registers(a);
    wgmma_fence_operands(o);
    if (lane == 0) mbar_arrive(&sm.empty[stage]);  // this warp no longer reads that stage
  };

  int prev_stage = start_tile(0, [] {});
  wgmma_wait<0>();
  scores_done();
  float2 alpha = soft.update(s, 0, seq, tile_needs_mask(mixed, min_pos, 0, kN));
#pragma unroll
  for (int j = 0; j < kN / 16; ++j) p_fragment(s, j, a[j]);

  for (int it = 1; it < n_tiles; ++it) {
    const int t0 = it * kN;
    const int stage = start_tile(it, [&] {
      wgmma_fence_operands(o);
      Softmax::rescale(o, alpha);  // the previous tile's max, before its P·V is added
      issue_pv(o, a, dv, prev_stage);
    });
    wgmma_wait<1>();  // S done; the previous tile's P·V may still run
    scores_done();
    alpha = soft.update(s, t0, seq, tile_needs_mask(mixed, min_pos, t0, kN));
    finish_pv(prev_stage);
#pragma unroll
    for (int j = 0; j < kN / 16; ++j) p_fragment(s, j, a[j]);
    prev_stage = stage;
  }
  // The last tile's P·V.
  wgmma_fence_operands(o);
  Softmax::rescale(o, alpha);
  issue_pv(o, a, dv, prev_stage);
  finish_pv(prev_stage);
}

template <bool QREG>
__global__ __launch_bounds__(kWsThreads, 1) void attention_prefill_warp_specialized(
    const __grid_constant__ AttentionPagedLaunch p, const __grid_constant__ KvTensorMaps tm) {
  extern __shared__ uint8_t smem_raw[];
  const WsSmem sm(smem_raw);
  const int wg = int(threadIdx.x) / kWgThreads;  // 0: producer, 1 and 2: consumers
  const int consumer = wg - 1;
  const int ctid = int(threadIdx.x) - kWgThreads;  // index among the consumer threads
  const int lane = threadIdx.x & 31;
  const int kh = blockIdx.y;
  const RowMap m(p);
  if (threadIdx.x == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar_init(&sm.full[st], 1);
      mbar_init(&sm.empty[st], kConsumerThreads / 32);
    }
    fence_mbarrier_init();  // before the copy engine completes on them
  }
  // Consumer warpgroup 0 takes the first turn: its first sync finds this arrival (the other warpgroup arrives after
  // each of its turns, and warpgroup 0 consumes the one left over at the end).
  if (consumer == 0) named_barrier_arrive(kSchedBarrier, kConsumerThreads);
  __syncthreads();
  // The roles part here for good: each runs its own copy of the tile/pass frame (the same block-wide barriers, in
  // the same order), so that ptxas can give each path its own register budget (setmaxnreg).
  if (wg == 0) {
    setmaxnreg_dec<kProducerRegs>();  // its registers go to the consumers
    const int block_shift = log2_if_pow2(p.block_size);
    int g = 0;  // tiles this block has run through the ring (the consumers count alike)
    for_each_tile_pass<false, true>(
        p, m, sm.row_seq, sm.row_pos, sm.pass, [](int) {}, [] {},
        [&](int seq, int max_pos, int, bool) {
          const int n_tiles = max_pos / kN + 1;
          produce_pass(p, tm, sm, p.block_table + size_t(seq) * p.max_blocks_per_seq, kh, max_pos, block_shift, g,
                       n_tiles);
          g += n_tiles;
        },
        [](int) {});
    return;  // every copy it issued has landed: the consumers waited for each before the frame's last barrier
  }
  setmaxnreg_inc<kConsumerRegs>();
  // Descriptors: this warpgroup's Q rows (K-major), stage 0 of K (K-major) and of V (MN-major).
  const uint64_t dq = smem_desc_sw128(sm.q_s + consumer * 64 * 64, 16, 1024);
  const uint64_t dk = smem_desc_sw128(sm.k_s, 16, 1024);
  const uint64_t dv = smem_desc_sw128(sm.v_s, kN * 128, 1024);
  // This thread's two rows (fragment rows g and g + 8 of its warp among the consumer warps), their softmax state
  // and output accumulators.
  const int rowA = (ctid >> 5) * 16 + (lane >> 2), rowB = rowA + 8;
  Softmax soft;
  float o[kDimTiles][4];
  QFragments qf;
  int g = 0;
  for_each_tile_pass<false, true>(
      p, m, sm.row_seq, sm.row_pos, sm.pass,
      [&](int tok0) {
        load_rows_and_q<kHD>(
            p, m, kh, tok0, sm.row_seq, sm.row_pos,
            [&](int v, int d, uint32_t x) { *reinterpret_cast<uint32_t*>(sm.q_s + sw128_offset(v, d, kRows)) = x; },
            ctid, kConsumerThreads);
        fence_proxy_async_shared();
      },
      [&] {
        if constexpr (QREG) load_q_fragments(sm, consumer, qf);
        soft = Softmax{sm.row_seq[rowA], sm.row_pos[rowA], sm.row_seq[rowB], sm.row_pos[rowB]};
#pragma unroll
        for (int i = 0; i < kDimTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
      },
      [&](int seq, int max_pos, int min_pos, bool mixed) {
        const int n_tiles = max_pos / kN + 1;
        consume_pass<QREG>(sm, soft, o, qf, dq, dk, dv, consumer, seq, max_pos, mixed, min_pos, g, n_tiles);
        g += n_tiles;
      },
      [&](int tok0) { soft.write(p, m, kh, tok0, rowA, o); });
  // Consume the turn arrival left over by consumer warpgroup 1's last turn (the barrier ends balanced).
  if (consumer == 0) named_barrier_sync(kSchedBarrier, kConsumerThreads);
}

}  // namespace

void launch_attention_prefill_warp_specialized_sm90(const AttentionPagedLaunch& p, int num_sms, bool q_in_registers,
                                                    cudaStream_t stream) {
  check_attention_paged(p, "attention (prefill, warp-specialized sm90)");
  if (!attention_prefill_sm90_built())
    cuda_unsupported("attention (prefill, warp-specialized sm90)",
                     "build without sm_90a (CMAKE_CUDA_ARCHITECTURES lacks 90)", 0, "");
  if (p.n_tokens <= 0) return;
  if (p.head_dim != kHD) cuda_unsupported("attention (prefill, warp-specialized sm90)", "head_dim", p.head_dim, "128");
  KvTensorMaps tm{};
  if (!encode_kv_tensor_maps(p, tm)) return launch_attention_prefill_paged_sm90(p, num_sms, false, stream);
  auto* k = q_in_registers ? attention_prefill_warp_specialized<true> : attention_prefill_warp_specialized<false>;
  CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(WsSmem::kBytes)));
  k<<<prefill_grid(p, false), kWsThreads, WsSmem::kBytes, stream>>>(p, tm);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess)
    cuda_fail(e, "launch of attention_prefill_warp_specialized", __FILE__, __LINE__);
}

}  // namespace ropepp
