// attention_prefill_warp_specialized_sm90.cu: the Hopper prefill attention with the warps split into a producer and
// two consumers (FlashAttention-3's schedule; head_dim 128, sm_90a). Same rows, token tiles, passes, masks, online
// softmax and output as the other two kernels (attention_prefill_tile.cuh), and the same wgmma products as
// attention_prefill_paged_sm90.cu; what differs is who waits for whom:
// - warpgroup 0 (128 threads) only loads: it copies the K/V tiles of the pass into a ring of kStages shared-memory
//   stages (cp.async), each copy arriving on the stage's "full" mbarrier when it lands;
// - warpgroups 1 and 2 (64 rows each) only compute, each at its own pace: wait for a full stage, S = Q·Kᵀ,
//   softmax, O += P·V, and mark the stage empty for the producer — no __syncthreads inside a pass;
// - within a warpgroup, the softmax of tile j runs while the tensor cores still add tile j − 1's P·V (issued
//   together with tile j's S), so its output rescale is deferred until just before that P·V is issued;
// - across the two consumer warpgroups, named barriers let them issue their products in turn ("ping-pong"): one
//   warpgroup's softmax overlaps the other's products.
// One block of 384 threads per SM (≈ 166 KB of shared memory: Q 32 KB + 4 stages of K and V 128 KB); Q also in
// the consumers' registers (kQInRegisters, with the register file rebalanced towards them).
// Selected by ROPEPP_CUDA_PREFILL_WS=1 (CudaBackendOptions::prefill_warp_specialized); off by default until
// measured on the device.
#include "attention_prefill_paged.cuh"
#include "attention_prefill_tile.cuh"
#include "cuda_check.cuh"
#include "mbarrier.cuh"
#include "wgmma.cuh"

namespace ropepp {
namespace {

using namespace prefill;

constexpr int kHD = 128;
constexpr int kStages = 4;            // K/V ring stages
constexpr int kWgThreads = 128;       // a warpgroup
constexpr int kConsumerThreads = 2 * kWgThreads;
constexpr int kWsThreads = kWgThreads + kConsumerThreads;
constexpr int kTile = kKeys * kHD;    // elements of one K or V stage
constexpr int kDimTiles = kHD / 8;    // n-tiles of the output
constexpr int kKSteps = kHD / 16;     // k-steps of Q·Kᵀ
constexpr int kSchedBarrier = 1;      // named barriers kSchedBarrier + c: consumer warpgroup c's turn (c = 0, 1)
// Q as the register operand of S = Q·Kᵀ (loaded once per token tile with ldmatrix, 32 registers per thread): the
// tensor cores then read only K from shared memory for S, half the operand bytes of Q and K both from shared memory
// (at 64 keys per tile those alone would take all of an SM's 128 bytes per clock of shared-memory bandwidth at the
// tensor cores' rate). Needs more than 168 registers per consumer thread: the warpgroups rebalance the register
// file (setmaxnreg: the producer gives up registers, the consumers take them). false: Q and K both from shared
// memory, no rebalancing (compile-time switch, to tell the two apart on the device).
constexpr bool kQInRegisters = true;
constexpr int kProducerRegs = 40;     // per thread; 128 · 40 + 256 · 232 ≤ 65,536
constexpr int kConsumerRegs = 232;

// Shared memory (the base aligned to the 1,024-byte swizzle atom): Q [2][kRows][64], K and V [kStages][2][kKeys][64]
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
  uint64_t* full;   // [kStages]: count kWgThreads (every producer thread's copies, as they land)
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

__device__ __forceinline__ uint64_t desc_at(uint64_t desc, int elems) {
  return desc + uint64_t(elems * int(sizeof(f16)) >> 4);
}

// Keeps P's registers (the A operand of an in-flight wgmma) live until after the wait, so that the compiler does not
// reuse them for the softmax that runs meanwhile.
__device__ __forceinline__ void fence_p_registers(uint32_t (&a)[kKeys / 16][4]) {
#pragma unroll
  for (int j = 0; j < kKeys / 16; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[j][e])::"memory");
}

// The producer warpgroup's part of one pass: tiles g .. g + n_tiles − 1 of the block's running tile count, key
// positions 0 .. n_tiles·kKeys − 1 of sequence `seq`'s table, into stage (tile % kStages). Each thread's copies of
// a tile arrive on the stage's full barrier by themselves once they land (cp.async.mbarrier.arrive): the
// producer never waits for a copy, only for free stages. (A first version waited for its own copies of tile
// j − 2 before marking tile j − 2 full, and so marked tile j only after it could issue tile j + 2, i.e. after the
// consumers freed tile j − 2's stage: the consumers waited behind the producer's next loads. Measured on the H200:
// slower than the wgmma kernel.)
__device__ __forceinline__ void produce_pass(const AttentionPagedLaunch& p, const WsSmem& sm,
                                             const KvTileLoader<kHD, kWgThreads>& kv, const int32_t* table,
                                             int max_pos, int g, int n_tiles) {
  for (int it = 0; it < n_tiles; ++it) {
    const int gi = g + it, stage = gi % kStages;
    mbar_wait(&sm.empty[stage], ((gi / kStages) & 1) ^ 1);  // the consumers read this stage's last tile
    kv.load(p, table, max_pos, it * kKeys, sm.k_s + stage * kTile, sm.v_s + stage * kTile,
            [](int t, int col) { return sw128_offset(t, col, kKeys); });
    cp_async_mbar_arrive_noinc(&sm.full[stage]);
  }
}

// Q's A fragments (kQInRegisters): k-step kk of this warp's 16 rows of the consumer warpgroup's 64, read from the
// swizzled Q tile (each lane names one 16-byte row piece: rows 0..15 of the warp, columns 16kk + 0 or 8).
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

// S [64 rows x kKeys] of this consumer warpgroup for the tile in `stage`, issued (not waited for): Q from registers
// (kQInRegisters) or from shared memory (dq), K from shared memory.
__device__ __forceinline__ void issue_scores(float (&s)[kKeyTiles][4], const QFragments& qf, uint64_t dq, uint64_t dk,
                                             int stage) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    const int col = (kk & 3) * 16;  // within the 64-column block kk / 4
    const uint64_t b = desc_at(dk, stage * kTile + (kk >> 2) * kKeys * 64 + col);
    if constexpr (kQInRegisters) {
      wgmma_m64n64k16_rs(s, qf[kk], b, kk > 0);
    } else {
      wgmma_m64n64k16_ss(s, desc_at(dq, (kk >> 2) * kRows * 64 + col), b, kk > 0);
    }
  }
  wgmma_commit();
}

// O += P·V for the tile in `stage` (P in registers, V MN-major), issued (not waited for).
__device__ __forceinline__ void issue_pv(float (&o)[kDimTiles][4], const uint32_t (&a)[kKeys / 16][4], uint64_t dv,
                                         int stage) {
  wgmma_fence_operands(o);
  wgmma_fence();
#pragma unroll
  for (int j = 0; j < kKeys / 16; ++j) wgmma_m64n128k16_rs_tn(o, a[j], desc_at(dv, stage * kTile + j * 16 * 64));
  wgmma_commit();
}

// A consumer warpgroup's part of one pass (see the file comment for the schedule). o and the softmax state carry
// across passes; every product of the pass has completed when it returns. The first tile is peeled off the loop
// so that every P·V the loop issues is waited for on the same path (ptxas otherwise cannot tell that o is no
// longer in flight where it is rescaled, and serialises the products with an injected wait).
__device__ __forceinline__ void consume_pass(const WsSmem& sm, OnlineSoftmax<kDimTiles>& soft,
                                             float (&o)[kDimTiles][4], QFragments& qf, uint64_t dq, uint64_t dk,
                                             uint64_t dv, int consumer, int seq, bool mixed, int min_pos, int g,
                                             int n_tiles) {
  const int lane = threadIdx.x & 31;
  float s[kKeyTiles][4];
  uint32_t a[kKeys / 16][4];  // P of the previous tile (f16 pairs)
  // Waits for tile it's stage and this warpgroup's turn, issues its S (and, before the turn passes, `more`).
  auto start_tile = [&](int it, auto&& more) {
    const int gi = g + it, stage = gi % kStages;
    mbar_wait(&sm.full[stage], (gi / kStages) & 1);
    fence_proxy_async_shared();  // the producer's cp.async writes (generic proxy), now seen here, to wgmma
    named_barrier_sync(kSchedBarrier + consumer, kConsumerThreads);  // this warpgroup's turn on the tensor cores
    issue_scores(s, qf, dq, dk, stage);
    more();
    named_barrier_arrive(kSchedBarrier + (consumer ^ 1), kConsumerThreads);  // the other warpgroup's turn
    return stage;
  };
  auto finish_pv = [&](int stage) {  // waits for the P·V of the tile in `stage` and frees the stage
    wgmma_wait<0>();
    fence_p_registers(a);
    wgmma_fence_operands(o);
    if (lane == 0) mbar_arrive(&sm.empty[stage]);  // this warp no longer reads that stage
  };

  int prev_stage = start_tile(0, [] {});
  wgmma_wait<0>();
  fence_q_registers(qf);
  wgmma_fence_operands(s);
  float2 alpha = soft.update(s, 0, seq, tile_needs_mask(mixed, min_pos, 0));
#pragma unroll
  for (int j = 0; j < kKeys / 16; ++j) p_fragment(s, j, a[j]);

  for (int it = 1; it < n_tiles; ++it) {
    const int t0 = it * kKeys;
    const int stage = start_tile(it, [&] {
      wgmma_fence_operands(o);
      OnlineSoftmax<kDimTiles>::rescale(o, alpha);  // the previous tile's max, before its P·V is added
      issue_pv(o, a, dv, prev_stage);
    });
    wgmma_wait<1>();  // S done; the previous tile's P·V may still run
    fence_q_registers(qf);
    wgmma_fence_operands(s);
    alpha = soft.update(s, t0, seq, tile_needs_mask(mixed, min_pos, t0));
    finish_pv(prev_stage);
#pragma unroll
    for (int j = 0; j < kKeys / 16; ++j) p_fragment(s, j, a[j]);
    prev_stage = stage;
  }
  // The last tile's P·V.
  wgmma_fence_operands(o);
  OnlineSoftmax<kDimTiles>::rescale(o, alpha);
  issue_pv(o, a, dv, prev_stage);
  finish_pv(prev_stage);
}

template <bool PAIRED>
__global__ __launch_bounds__(kWsThreads, 1) void attention_prefill_warp_specialized(AttentionPagedLaunch p) {
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
      mbar_init(&sm.full[st], kWgThreads);
      mbar_init(&sm.empty[st], kConsumerThreads / 32);
    }
  }
  // Consumer warpgroup 0 takes the first turn: its first sync finds this arrival (the other warpgroup arrives after
  // each of its turns, and warpgroup 0 consumes the one left over at the end).
  if (consumer == 0) named_barrier_arrive(kSchedBarrier, kConsumerThreads);
  __syncthreads();
  // The roles part here for good: each runs its own copy of the tile/pass frame (the same block-wide barriers, in
  // the same order), so that ptxas can give each path its own register budget (setmaxnreg).
  if (wg == 0) {
    if constexpr (kQInRegisters) setmaxnreg_dec<kProducerRegs>();  // its registers go to the consumers
    const KvTileLoader<kHD, kWgThreads> kv(p, kh, int(threadIdx.x));
    int g = 0;  // tiles this block has run through the ring (the consumers count alike)
    for_each_tile_pass<PAIRED, true>(
        p, m, sm.row_seq, sm.row_pos, sm.pass, [](int) {}, [] {},
        [&](int seq, int max_pos, int, bool) {
          const int n_tiles = max_pos / kKeys + 1;
          produce_pass(p, sm, kv, p.block_table + size_t(seq) * p.max_blocks_per_seq, max_pos, g, n_tiles);
          g += n_tiles;
        },
        [](int) {});
    cp_async_wait<0>();  // no copy of this thread outlives it
    return;
  }
  if constexpr (kQInRegisters) setmaxnreg_inc<kConsumerRegs>();
  // Descriptors: this warpgroup's Q rows (K-major), stage 0 of K (K-major) and of V (MN-major).
  const uint64_t dq = smem_desc_sw128(sm.q_s + consumer * 64 * 64, 16, 1024);
  const uint64_t dk = smem_desc_sw128(sm.k_s, 16, 1024);
  const uint64_t dv = smem_desc_sw128(sm.v_s, kKeys * 128, 1024);
  // This thread's two rows (fragment rows g and g + 8 of its warp among the consumer warps), their softmax state
  // and output accumulators.
  const int rowA = (ctid >> 5) * 16 + (lane >> 2), rowB = rowA + 8;
  OnlineSoftmax<kDimTiles> soft;
  float o[kDimTiles][4];
  QFragments qf;
  int g = 0;
  for_each_tile_pass<PAIRED, true>(
      p, m, sm.row_seq, sm.row_pos, sm.pass,
      [&](int tok0) {
        load_rows_and_q<kHD>(
            p, m, kh, tok0, sm.row_seq, sm.row_pos,
            [&](int v, int d, uint32_t x) { *reinterpret_cast<uint32_t*>(sm.q_s + sw128_offset(v, d, kRows)) = x; },
            ctid, kConsumerThreads);
        fence_proxy_async_shared();
      },
      [&] {
        if constexpr (kQInRegisters) load_q_fragments(sm, consumer, qf);
        soft = OnlineSoftmax<kDimTiles>{sm.row_seq[rowA], sm.row_pos[rowA], sm.row_seq[rowB], sm.row_pos[rowB]};
#pragma unroll
        for (int i = 0; i < kDimTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
      },
      [&](int seq, int max_pos, int min_pos, bool mixed) {
        const int n_tiles = max_pos / kKeys + 1;
        consume_pass(sm, soft, o, qf, dq, dk, dv, consumer, seq, mixed, min_pos, g, n_tiles);
        g += n_tiles;
      },
      [&](int tok0) { soft.write(p, m, kh, tok0, rowA, o); });
  // Consume the turn arrival left over by consumer warpgroup 1's last turn (the barrier ends balanced).
  if (consumer == 0) named_barrier_sync(kSchedBarrier, kConsumerThreads);
}

}  // namespace

void launch_attention_prefill_warp_specialized_sm90(const AttentionPagedLaunch& p, int num_sms, cudaStream_t stream) {
  check_attention_paged(p, "attention (prefill, warp-specialized sm90)");
  if (!attention_prefill_sm90_built())
    cuda_unsupported("attention (prefill, warp-specialized sm90)",
                     "build without sm_90a (CMAKE_CUDA_ARCHITECTURES lacks 90)", 0, "");
  if (p.n_tokens <= 0) return;
  if (p.head_dim != kHD) cuda_unsupported("attention (prefill, warp-specialized sm90)", "head_dim", p.head_dim, "128");
  launch_prefill(attention_prefill_warp_specialized<true>, attention_prefill_warp_specialized<false>, WsSmem::kBytes,
                 p, num_sms, stream, "launch of attention_prefill_warp_specialized", kWsThreads);
}

}  // namespace ropepp
