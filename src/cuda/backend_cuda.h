// backend_cuda.h: options of the CUDA backend beyond make_cuda_backend(int) (declared in backend.h).
// Include only where ROPEPP_HAS_CUDA is defined.
#pragma once

#include <memory>
#include <string>

#include "backend.h"

namespace ropepp {

// Which attention kernel serves a batch. Auto picks decode (flash-decoding, split over the context) when
// a batch has few tokens per sequence and prefill (tiled flash attention on tensor cores) otherwise.
enum class CudaAttentionKernel { Auto, Decode, Prefill };

struct CudaBackendOptions {
  int device = 0;
  CudaAttentionKernel attention = CudaAttentionKernel::Auto;  // env ROPEPP_CUDA_ATTENTION=auto|decode|prefill
  bool sync_after_each_op = false;  // env ROPEPP_CUDA_SYNC=1: a fault is reported at the op that caused it
  // env ROPEPP_CUDA_PRECISE_MATMUL=1: above kMatvecMaxRows rows, x goes into cuBLAS as hi + lo parts in the
  // matrix's dtype (two GEMMs, ~fp32-exact activations) instead of one rounding. Off: the usual GEMM.
  bool precise_matmul = false;
  // env ROPEPP_CUDA_MATRIX_DTYPE=f16|bf16: the dtype weight matrices (rows > 1) are resident in, and so the
  // dtype x is rounded to for a cuBLAS GEMM. F16 (the default): 3 more mantissa bits; a matrix with a value
  // outside the f16 range (|v| > 65504, inf, NaN) stays BF16 (with a warning). Vectors are always F32.
  DType matrix_dtype = DType::F16;
  bool graphs = true;               // env ROPEPP_CUDA_GRAPHS=0: never record/replay CUDA graphs
  bool pdl = true;                  // env ROPEPP_CUDA_PDL=0: plain launches (PDL needs sm_90 anyway)
  // env ROPEPP_CUDA_FUSED_DECODE=0: qkv_rope_kv_append and feed_forward run their unfused defaults (the
  // decode step's RoPE + KV append in the qkv matvec's epilogue, SwiGLU in the gate|up matvec's epilogue).
  bool fused_decode = true;
  // env ROPEPP_CUDA_DECODE_MIN_CHUNK=N: the decode attention splits a context of more than 256 positions into
  // pieces of at least N (more thread blocks, at the cost of a combine kernel); default 64 (one tile).
  int decode_min_chunk = 64;
  // env ROPEPP_CUDA_DECODE_SPLIT_ALIGN=N (a multiple of 16, ≤ 1024): the decode attention's split length is rounded
  // up to a multiple of N (plan_attention_decode_paged). 64 (the default) drops splits at long contexts: 376M EH at
  // 65,536 positions runs 342 blocks on 396 resident slots, 16 gives 392 — and is slower on the H100 (EH at 65,408:
  // 1,789 → 1,733 tok/s; EC 1,328 → 1,323; docs/PERFORMANCE.md, fourteenth session), so 64 stays.
  int decode_split_align = 64;
  // env ROPEPP_CUDA_DECODE_SPLIT_BLOCKS_PER_SM=N (1..64): the decode attention aims at N split blocks per SM
  // (plan_attention_decode_paged); 0 (the default): as many as are resident, 2 for the tensor-core kernel's 4 × 3
  // shapes (decode_mma_shape 2, 4), else 3. H100, seventeenth session, 376M EH / EC at 65,408 with the 4 × 2 cp.async
  // kernel: 3 → 2,095 / 1,511, 2 → 2,020 / 1,439, 4 → 1,980 / 1,467 tok/s (docs/PERFORMANCE.md).
  int decode_split_blocks_per_sm = 0;
  // env ROPEPP_CUDA_DECODE_MMA_SHAPE=0..5: the tensor-core decode split kernel's warps per block × cp.async stages
  // per warp: 4 × 2 (0), 2 × 4 (1), 4 × 3 (2; only 2 blocks fit an SM) (AttentionDecodePlan::mma_shape). H100, seventeenth session (docs/PERFORMANCE.md),
  // 376M EH / EC at 65,408: 0 → 2,061 / 1,466, 1 → 1,964 / 1,409, 2 at 2 blocks per SM → 2,103 / 1,470 tok/s; 4 × 3
  // for split contexts only (tried, removed): EH at 65,408 2,095 vs 2,060 but EC at 16,384 2,477 vs 2,561 — so 0.
  // 3 / 4: 4 × 2 / 4 × 3 with the stages filled by the copy engine (TMA: one lane issues 4 swizzled 2 KB boxes per
  // 16-key chunk, completing on the stage's mbarrier, instead of 16 cp.async per lane; head_dim 128 and cache blocks
  // of a multiple of 16 positions, else the cp.async kernel of that shape). 4 is the default: H100, twenty-third
  // session, against 0 in the same calls: 376M EH at 65,408 2,320 vs 2,140 tok/s, EC at 65,408 1,598 vs 1,493, EC at
  // 16,384 2,723 vs 2,612, EC tg128 3,791 vs 3,732, 776M EC 1,774 vs 1,761 (3: 2,217 / 1,562; docs/PERFORMANCE.md).
  // 5: 8 × 3 TMA, one ~200 KB block per SM (the shape of decode_short_unsplit; not measured for split contexts).
  int decode_mma_shape = 4;
  // env ROPEPP_CUDA_DECODE_SHORT_UNSPLIT=N (positions, 0: off): a decode step whose context is at most N positions
  // runs the tensor-core attention unsplit (one block per (token, kv head): no combine kernel) with 8 warps × 3 TMA
  // stages (decode_mma_shape 5; head_dim 128, else that kernel's 4 × 3) instead of the planned splits. H100,
  // twenty-sixth session, 376M EC at depth 512: step 289.5 → 295.8 µs (timeline), tg128 ±0 (docs/PERFORMANCE.md): off.
  int decode_short_unsplit = 0;
  // env ROPEPP_CUDA_DECODE_CLUSTER=N (positions, 0: off): a decode step whose context is at most N positions runs
  // at most 8 splits per (token, kv head) as one thread-block cluster that merges them through distributed shared
  // memory (AttentionDecodePlan::cluster_merge; tensor-core kernel on sm_90) instead of the combine kernel. H100,
  // twenty-sixth session (docs/PERFORMANCE.md), N = 1,024 against 0: the attention + combine of a 376M EC step at
  // depth 512 58.0 → 50.7 µs, of a 776M step 89.6 → 75.8 µs (timelines), but the step as long (the next matvec
  // waits for its weights instead); tok/s at contexts ≤ 768 ±0.5% (376M and 776M), at 641–896 376M +2.2%, 776M
  // −2.3%; at ≥ 2,048 (N = 8,192) −7 to −11% (8 splits too few): off.
  int decode_cluster_merge = 0;
  // env ROPEPP_CUDA_DECODE_FUSED_OPROJ=1: a one-token decode step of one sequence with a context of at most 256
  // positions (head_dim 128, at most 8 query rows per kv head; sm_90) runs its attention and o_proj as one kernel
  // (kernels/attention_out_proj_decode.cuh): the attention in 8 key splits of a thread-block cluster per (row slice,
  // kv head), Wo's rows loaded before the PDL wait.
  bool decode_fused_oproj = false;
  // env ROPEPP_CUDA_DECODE_FUSED_OPROJ_RW=1|2|4: that kernel's Wo rows per warp (its grid: kv heads × d_model /
  // (8 · RW) blocks); 0 (the default): the fewest within 3 blocks per SM (FusedOProjPlan::rows_per_warp).
  int decode_fused_oproj_rows_per_warp = 0;
  // env ROPEPP_CUDA_DECODE_FUSED_OPROJ_CLUSTER=N (1..16): its clusters' blocks at most (kv heads × key splits); above
  // 8 the H100's non-portable cluster sizes.
  int decode_fused_oproj_cluster = 16;
  // env ROPEPP_CUDA_DECODE_FUSED_OPROJ_LATE=1: that kernel lets the next one launch after its attention is merged
  // rather than at its start (AttentionOutProjDecodeLaunch::late_trigger).
  bool decode_fused_oproj_late_trigger = false;
  // env ROPEPP_CUDA_DECODE_FUSED_OPROJ_TRACE=1: one of its blocks times its phases; the means are logged at exit.
  bool decode_fused_oproj_trace = false;
  // env ROPEPP_CUDA_DECODE_MMA=0: the decode attention's split kernel in fp32 instead of on tensor cores (each warp
  // streaming its own 16-key chunks, attention_decode_paged_mma.cu; H200: 376M EC at 65,408 positions 1,093 →
  // 1,456 tok/s, docs/PERFORMANCE.md).
  bool decode_mma = true;
  // env ROPEPP_CUDA_MATVEC_BLOCKS_PER_SM=N: a decode matvec over a per-layer matrix (≤ 64 MiB, so not the
  // lm_head) runs on at most N blocks (of 256 threads) per SM, each looping over its row groups. 0: one block per
  // row group (a 376M gate|up: 896 blocks, ~2.3 waves). H200, tg128 376M EC: 0 → 3,409, 1 → 2,344, 2 → 3,148,
  // 4 → 3,571 tok/s (docs/PERFORMANCE.md): 4.
  int matvec_blocks_per_sm = 4;
  // env ROPEPP_CUDA_MATVEC_BLOCKS_PER_SM_LARGE=N: the same cap for a per-layer matrix of ≥ 16 MB (the 776M's
  // feed-forward: gate|up 33 MB, down 16.5 MB; the 376M's are 14.7 and 7.3 MB). H100, sixteenth session: 6 per SM
  // for every matrix gave the 776M EC tg128 1,563 → 1,620 tok/s and the 376M ±1% (docs/PERFORMANCE.md): 6.
  int matvec_blocks_per_sm_large = 6;
  // env ROPEPP_CUDA_MATVEC_WIDE_PAIRS=bits: one-row matvecs with a paired epilogue take two row pairs per warp
  // (MatvecLaunch::wide_pairs): bit 0 the gate|up + SwiGLU matvec, bit 1 the qkv + RoPE one.
  int matvec_wide_pairs = 0;
  // env ROPEPP_CUDA_MATVEC_KS_FIT=N: a decode matvec's K split stops widening before its grid would have more warps
  // than N blocks per SM hold (MatvecLaunch::max_warps); 0: no bound. At 4 (the default before) the 776M's o_proj
  // and down (1,536 rows) run 384 blocks instead of 768 (of which 240 waited for a second turn). H100, seventeenth
  // session: 776M EC tg128 1,634 → 1,728 tok/s, 376M EH 3,902 → 3,997, EC 3,668 → 3,651 (±25). At 3
  // (the default since the twenty-second session) the 376M's o_proj and down take 256 blocks (half an SM's
  // registers), so that the gate|up's blocks fit beside the o_proj's and load their weights during the attention
  // (with matvec_deep: H100, 376M EC tg128 +2.6–3.0%, EH at 65,408 +1.1–1.5%, 776M ±0.3%); at 2 the 776M's o_proj
  // and down fall to 192 blocks (−6%).
  int matvec_ks_fit_blocks = 3;
  // env ROPEPP_CUDA_MATVEC_DEEP=0|1: one-row Store matvecs keep 8 chunks per lane in flight where a lane's K slice
  // needs more than one pass of 4 (MatvecLaunch::deep): a narrow K split (above) still loads all its weights
  // first (the 376M's down: 3,584 columns over 2 warps). On by default (with matvec_ks_fit_blocks = 3).
  bool matvec_deep = true;
  // env ROPEPP_CUDA_MATVEC_L2_REST=1: a block of a capped decode matvec grid asks the L2 for its later row groups
  // before its PDL wait (MatvecLaunch::l2_rest).
  bool matvec_l2_rest = false;
  // env ROPEPP_CUDA_MATVEC_L2_TAIL=0: each warp of a decode matvec asks the L2 for the part of its row slices past
  // its first pass of loads before its PDL wait (MatvecLaunch::l2_tail; the 776M's gate|up loads 64 of its 192
  // chunks per row after the wait without it). H100, twenty-sixth session: 776M EC step 575 → 559 µs (timeline),
  // tg128 1,784 → 1,804 tok/s; 376M ±1% (docs/PERFORMANCE.md): on.
  bool matvec_l2_tail = true;
  // env ROPEPP_CUDA_L2_NEXT_FFN=pct / ROPEPP_CUDA_L2_NEXT_QKV=pct (0 .. 100, the qkv also -1): the o_proj asks the L2,
  // before its PDL wait, for the last pct percent of its layer's Wgate|Wup rows (of each half) / of the next
  // layer's Wq|Wk|Wv rows (MatmulParams::next_ffn / next_qkv, MatvecLaunch::l2_next). H100, twenty-seventh session
  // (docs/PERFORMANCE.md), tg256 at depth 0: the gate|up's (100 / 50%) 376M EC −4.7 / −0.5%, 776M −5.8 / −4.6% (the
  // gate|up got shorter, the attention and the down longer): 0. The next qkv's (100%): 376M EC +1.3 to +2.3% in seven
  // interleaved pairs (its 4 MB stay in the L2 through the 22 MB of the feed-forward; 50% +1.3%), EH +0.5%, at
  // 64,768 positions −0.9%; 776M −2.5% (50 MB of feed-forward between: evicted, read twice). Hence -1 (auto, the
  // default for the qkv): 100 where the next qkv and the gate|up together take at most half the GPU's L2, else 0.
  int l2_next_ffn_pct = 0;
  int l2_next_qkv_pct = -1;
  // env ROPEPP_CUDA_PROBE_SKIP=kinds (separated by ',' or '+': qkv, attention, o, gu, down): a one-token decode step
  // leaves out those kernels — its outputs are WRONG. For timing ablations only (ropepp bench): how much of the step
  // each kernel's presence costs, which a timeline of overlapping kernels does not show. Logged as a warning.
  std::string probe_skip;
  // env ROPEPP_CUDA_MATVEC_LATE_TRIGGER=mask: which per-layer decode matvecs let their successor launch only after
  // their own PDL wait (MatvecLaunch::late_trigger), by epilogue: 1 store / += (o_proj, down), 2 SwiGLU (gate|up),
  // 4 RoPE + K/V (qkv). 0 (the default): at their start. Not measured yet.
  int matvec_late_trigger = 0;
  // env ROPEPP_CUDA_MATVEC_SMEM_KB=N: a decode matvec over a per-layer matrix copies its weight rows into shared
  // memory before its PDL wait, at most N KB per block on one block per SM (kernels/matvec_smem_prefetch.cuh);
  // 0: off (the streaming kernel). Measured slower on the H100 for every epilogue mask below (376M EC tg128 3,664 →
  // 3,311–3,570 tok/s, 776M 1,723 → 1,388–1,728; twenty-first session, docs/PERFORMANCE.md), hence off.
  int matvec_smem_kb = 0;
  // env ROPEPP_CUDA_MATVEC_SMEM_OPS=mask: which matvecs take that kernel, by epilogue: 1 store / += (o_proj, down),
  // 2 SwiGLU (gate|up), 4 RoPE + K/V append (qkv).
  int matvec_smem_ops = 7;
  // env ROPEPP_CUDA_DECODE_PREFETCH=0: the tensor-core decode attention waits for the previous kernel before it
  // loads any K/V; on (the default), in a decode step it first loads the rows written by earlier steps.
  bool decode_prefetch_history = true;
  // env ROPEPP_CUDA_DECODE_LAST_BLOCK_MERGE=1: with at most 32 splits (a context of up to ~2k positions) the last
  // split block of each (token, kv head) merges them (attention_decode_combine.cuh), one kernel less per layer.
  // Off (the default): a combine kernel merges them. H100, 376M EC tg128: on 2,833±172, off 3,058±63; at depth
  // 2,048: 2,641 vs 2,714 tok/s (docs/PERFORMANCE.md, session 12): the counter atomics and the last block's
  // serial merge cost more than the launch they save.
  bool decode_merge_in_last_block = false;
  // env ROPEPP_CUDA_LM_HEAD_ARGMAX=1: each lm_head matvec block of a greedy step writes its best logit's (value,
  // index) key and one block merges them and writes the next chained step's embedding row
  // (MatvecLaunch::argmax_keys): one kernel fewer per token, two per chained step. Off (the default): the argmax
  // runs as its own two kernels after the lm_head (kernels/argmax.cu), the second of which writes a chained
  // step's embedding (argmax_embed). With the key epilogue the lm_head took 93 µs against 83 + 4 for the matvec and
  // the two argmax kernels (H100, twenty-third session, docs/PERFORMANCE.md).
  bool lm_head_argmax = false;
  // env ROPEPP_CUDA_ARGMAX_EMBED=0: without lm_head_argmax, a chained greedy step's embedding of the picked token
  // runs as its own kernel after the argmax; else (the default) the argmax's merge kernel writes it (kernels/argmax.cu):
  // one kernel and one dependent hand-over fewer per chained step (H100, twenty-fifth session: 376M EC tg128 +1.6%).
  bool argmax_embed = true;
  // env ROPEPP_CUDA_PREFILL_SM90=0: the prefill attention runs the mma.sync kernel on an H100/H200 too (else head_dim
  // 128 runs the wgmma kernel there, attention_prefill_paged_sm90.cu).
  bool prefill_sm90 = true;
  // env ROPEPP_CUDA_PREFILL_WS=0: with prefill_sm90 and cache blocks of a multiple of 16 positions, the Hopper
  // kernel whose warps specialise into a loading warpgroup and two computing ones on 128-key tiles
  // (attention_prefill_warp_specialized_sm90.cu) — on by default since the twenty-fourth session (H100, 376M EC
  // pp65536 222,996 → 266,098 tok/s, 0.294 → 0.246 s; pp4096 1,082,501 → 1,143,199; EH pp4096 +18%, pp65536 +21%;
  // docs/PERFORMANCE.md); 0: the two-blocks-per-SM wgmma kernel (attention_prefill_paged_sm90.cu).
  bool prefill_warp_specialized = true;
  // env ROPEPP_CUDA_PREFILL_WS_QREG=0: that kernel reads Q from shared memory for S = Q·Kᵀ; on (the default), Q is
  // the register operand and the tensor cores read only K from shared memory for S (H100: pp65536 +1%, pp4096 +1%).
  bool prefill_ws_q_registers = true;
  // env ROPEPP_CUDA_PREFILL_TMA=0: the wgmma prefill attention fills its K/V stages with every thread's cp.async
  // copies (else the Tensor Memory Accelerator copies them when the cache block size is a multiple of 16).
  bool prefill_tma = true;
  // env ROPEPP_CUDA_HALF_ACTIVATIONS=0: prefill (GEMMs) keeps the gate|up GEMM output and the attention output in
  // fp32. On (the default), the gate|up GEMM writes the matrices' 16-bit type and SwiGLU reads it from there, and
  // the attention writes its rows in 16 bits as the o_proj GEMM's input: fewer bytes through memory per layer (an
  // f16 gate or up value beyond ±65504 would become ±inf; H200: 376M EC pp4096 930k → 998k tok/s).
  bool half_activations = true;
  // env ROPEPP_CUDA_GRAPH_SCORING (on): forward calls that score targets (perplexity, score) are recorded as CUDA
  // graphs and replayed like decode steps (Backend::graphs_for_scoring). On the H100: WikiText-2 scoring 2.63 →
  // 2.59 s, the same NLLs bit for bit (docs/PERFORMANCE.md, fourteenth session). =0 launches them one by one.
  bool graph_scoring = true;
  // env ROPEPP_CUDA_PERSISTENT_DECODE=1: a one-token decode step runs all its layers as one persistent kernel
  // (decode_layers_persistent.cuh) instead of ~5 kernels per layer; ROPEPP_CUDA_PERSISTENT_DECODE_MAX_CTX=N:
  // only up to a context of N positions. Off by default: measured slower so far (docs/PERFORMANCE.md).
  bool persistent_decode = false;
  int persistent_decode_max_ctx = 65536;
  int persistent_decode_stages = 0;      // env ROPEPP_CUDA_PERSISTENT_STAGES=N: ring stages (weight run-ahead) at most
  bool persistent_decode_trace = false;  // env ROPEPP_CUDA_PERSISTENT_TRACE=1: per-phase times, logged at exit
};

// CudaBackendOptions::probe_skip as bits (1 qkv, 2 attention, 4 o, 8 gu, 16 down; "" → 0); throws Error naming
// ROPEPP_CUDA_PROBE_SKIP and the kinds it takes for an unknown one; logs a warning (wrong outputs) when any is set.
int cuda_probe_skip_bits(const std::string& kinds);

// Throws Error when no GPU/driver is usable or the device index is out of range.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);

// Switches the attention kernel of a CUDA backend (tests, debugging). Throws Error if `backend` is not CUDA.
void set_cuda_attention_kernel(Backend& backend, CudaAttentionKernel kernel);
void set_cuda_precise_matmul(Backend& backend, bool precise);
// Whether the prefill attention may use the Hopper (wgmma) kernel (tests: both kernels against the CPU).
void set_cuda_prefill_sm90(Backend& backend, bool on);
void set_cuda_prefill_warp_specialized(Backend& backend, bool on, bool q_in_registers = true);
void set_cuda_prefill_tma(Backend& backend, bool on);
void set_cuda_decode_mma(Backend& backend, bool on);
// Whether the decode attention's last split block merges few splits (else the combine kernel; tests: both).
void set_cuda_decode_merge_in_last_block(Backend& backend, bool on);
// The decode matvecs' grid cap in blocks (MatvecLaunch::max_blocks; 0: none), overriding the options (tests).
void set_cuda_matvec_max_blocks(Backend& backend, int blocks);
// CudaBackendOptions::matvec_wide_pairs (bits), overriding the options (tests).
void set_cuda_matvec_wide_pairs(Backend& backend, int bits);
// CudaBackendOptions::lm_head_argmax, overriding the options (tests).
void set_cuda_lm_head_argmax(Backend& backend, bool on);
// CudaBackendOptions::decode_short_unsplit (positions), overriding the options (tests).
void set_cuda_decode_short_unsplit(Backend& backend, int positions);
// CudaBackendOptions::decode_cluster_merge (positions), overriding the options (tests).
void set_cuda_decode_cluster_merge(Backend& backend, int positions);
// CudaBackendOptions::decode_fused_oproj, overriding the options (tests); returns whether this GPU can run the
// fused kernel at all (sm_90: clusters).
bool set_cuda_decode_fused_oproj(Backend& backend, bool on);
// Launches of the fused attention + o_proj kernel so far (tests: that the path they mean to test ran).
size_t cuda_fused_oproj_launches(const Backend& backend);
// CudaBackendOptions::argmax_embed, overriding the options (tests).
void set_cuda_argmax_embed(Backend& backend, bool on);
// CudaBackendOptions::matvec_deep, matvec_l2_rest and matvec_late_trigger (epilogue bits), overriding the options
// (tests).
void set_cuda_matvec_streaming(Backend& backend, bool deep, bool l2_rest, int late_trigger);
// CudaBackendOptions::matvec_l2_tail, overriding the options (tests).
void set_cuda_matvec_l2_tail(Backend& backend, bool on);
// CudaBackendOptions::l2_next_ffn_pct / l2_next_qkv_pct (-1: auto), overriding the options (tests).
void set_cuda_l2_next(Backend& backend, int ffn_pct, int qkv_pct);
// MatvecLaunch::max_warps of the decode matvecs (0: none; -1: the options' choice, options.matvec_ks_fit_blocks),
// overriding the options (tests).
void set_cuda_matvec_max_warps(Backend& backend, int warps);
// The decode matvecs' shared-memory prefetch (MatvecLaunch::prefetch_smem_bytes = kb KB, 0: off) on a grid of
// `blocks` per wave (0: the SMs), overriding the options (tests).
void set_cuda_matvec_smem(Backend& backend, int kb, int blocks);
// Whether prefill writes gate|up and the attention output in 16 bits (half_activations; tests: both paths).
void set_cuda_half_activations(Backend& backend, bool on);
// The dtype (F16 or BF16) of matrices loaded from now on (tests); weights already loaded keep theirs.
void set_cuda_matrix_dtype(Backend& backend, DType dtype);
void set_cuda_graphs(Backend& backend, bool on);
size_t cuda_graph_count(const Backend& backend);  // graphs recorded and kept now
// Turns the persistent decode kernel on/off (tests); returns whether this GPU and build can run it at all.
bool set_cuda_persistent_decode(Backend& backend, bool on);
void set_cuda_graph_scoring(Backend& backend, bool on);  // options.graph_scoring (tests)
void set_cuda_decode_split_align(Backend& backend, int align);  // options.decode_split_align (tests)
void set_cuda_decode_mma_shape(Backend& backend, int shape);    // options.decode_mma_shape (tests)

}  // namespace ropepp
