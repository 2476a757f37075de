// backend_cuda_impl.h: the CudaBackend class (backend_cuda.cpp: construction, memory, weights, graphs, the options
// and the public functions of backend_cuda.h; backend_cuda_ops.cpp: the ops). Included by those two files only.
//
// The CUDA backend. A CudaBackend object owns everything it uses (stream, cuBLAS
// handle and workspace, a growing scratch buffer); no globals. Ops map the backend.h params onto the
// kernels/ launchers, all on one stream.
//
// Memory: matrices (rows > 1) are resident in f16 (load_weight converts bf16/f32 on the device; a matrix with
// a value outside the f16 range stays bf16, as do all with ROPEPP_CUDA_MATRIX_DTYPE=bf16), vectors (norm
// weights, rows == 1) in fp32; activations fp32; the KV cache f16. Matmul: a GEMV kernel (bf16 or f16
// weights, fp32 x) for up to kMatvecMaxRows input rows (decode), cuBLAS above: A and B in the matrix's
// dtype (x converted in scratch; f16 saturates at ±65504), fp32 C and compute.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend.h"
#include "backend_cuda.h"
#include "common.h"
#include "convert.cuh"
#include "cublas_library.h"
#include "cuda_check.cuh"
#include "decoder_layers_cuda.h"
#include "graph_cache.h"
#include "host_transfers.h"
#include "attention_out_proj_decode.cuh"
#include "attention_paged.cuh"
#include "kv_append_paged.cuh"
#include "matvec.cuh"
#include "op_profiler.h"
#include "rope_kv_append_paged.cuh"
#include "weight_upload.h"

#define CUBLAS_CHECK(expr)                                                                                \
  do {                                                                                                    \
    cublasStatus_t st_ = (expr);                                                                          \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                                     \
      ::ropepp::fail("cuBLAS error {} ({}) in {} at {}:{}", cublas_api().status_name(st_),                  \
                     cublas_api().status_string(st_),                                                     \
                     #expr, __FILE__, __LINE__);                                                          \
  } while (0)

namespace ropepp::cuda_impl {

constexpr size_t kMiB = size_t(1) << 20;
constexpr size_t kCublasWorkspace = 32 * kMiB;  // recommended for Hopper
constexpr size_t kUploadChunk = 16 * kMiB;      // weight upload chunk: two pinned buffers, two staging areas
constexpr int kDecodeMaxTokensPerSeq = 8;       // Auto: decode kernel up to this many tokens per sequence
constexpr size_t kStagingBytes = 4 * kMiB;      // pinned host buffer behind upload_async (two halves)
constexpr size_t kDownloadRing = 1 * kMiB;      // pinned host ring behind download_later
constexpr size_t kGraphCapacity = 32;           // recorded graphs kept (decode shapes × context buckets)
constexpr int64_t kFusedNormMaxRows = 32768;    // RMSNorm fused into matvecs up to this many rows (not lm_head:
                                                // every block would re-read x, ~65 MB of L2 traffic for 128k rows)

inline double mib(size_t b) { return double(b) / double(kMiB); }

// The element type of a matrix from load_weight (F16 or BF16, checked by require_matrix).
inline HalfType half_type(const Weight& w) { return w.dtype == DType::F16 ? HalfType::F16 : HalfType::BF16; }

// The dtype matrices are loaded in: F16 or BF16 (CudaBackendOptions::matrix_dtype).
inline DType checked_matrix_dtype(DType d) {
  if (d != DType::F16 && d != DType::BF16)
    fail("cuda: matrix dtype {} is not supported (expected F16 or BF16)", dtype_name(d));
  return d;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& o);

  ~CudaBackend() override;

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return fmt::format("cuda:{}", device_); }
  void set_attention_kernel(CudaAttentionKernel k) { attention_ = k; }
  void set_prefill_sm90(bool on) { prefill_sm90_ = on; }
  void set_prefill_warp_specialized(bool on, bool q_in_registers) {
    prefill_ws_ = on;
    prefill_ws_qreg_ = q_in_registers;
  }
  void set_prefill_tma(bool on) { prefill_tma_ = on; }
  void set_decode_mma(bool on) { decode_mma_ = on; }
  void set_decode_merge_in_last_block(bool on) { merge_last_block_ = on; }
  void set_decode_split_align(int align) { decode_split_align_ = std::max(1, align); }
  void set_decode_mma_shape(int shape) { decode_mma_shape_ = std::clamp(shape, 0, 5); }
  void set_decode_short_unsplit(int positions) { decode_short_unsplit_ = std::max(0, positions); }
  void set_decode_cluster_merge(int positions) { decode_cluster_merge_ = std::max(0, positions); }
  void set_matvec_max_blocks(int blocks) { matvec_max_blocks_ = matvec_max_blocks_large_ = std::max(0, blocks); }
  void set_matvec_wide_pairs(int bits) { matvec_wide_pairs_ = bits; }
  void set_matvec_l2_tail(bool on) { matvec_l2_tail_ = on; }
  void set_l2_next(int ffn_pct, int qkv_pct) {
    l2_next_ffn_pct_ = std::clamp(ffn_pct, 0, 100), l2_next_qkv_pct_ = std::clamp(qkv_pct, -1, 100);
  }
  void set_matvec_streaming(bool deep, bool l2_rest, int late_trigger) {
    matvec_deep_ = deep, matvec_l2_rest_ = l2_rest, matvec_late_trigger_ = late_trigger;
  }
  void set_lm_head_argmax(bool on) { lm_head_argmax_ = on; }
  void set_argmax_embed(bool on) { argmax_embed_ = on; }
  void set_matvec_max_warps(int warps) { matvec_max_warps_ = warps < 0 ? matvec_max_warps_default_ : warps; }
  void set_matvec_smem(int kb, int blocks) {
    matvec_smem_bytes_ = bulk_copies_ ? std::max(0, kb) * 1024 : 0;  // the kernel needs sm_90's bulk copies
    matvec_smem_blocks_ = blocks > 0 ? blocks : num_sms_;
  }
  void set_graph_scoring(bool on) { graph_scoring_ = on; }
  void set_half_activations(bool on) { half_act_ = on; }
  void set_precise_matmul(bool precise) { precise_matmul_ = precise; }
  void set_matrix_dtype(DType d) { matrix_dtype_ = checked_matrix_dtype(d); }

  // --- memory ---------------------------------------------------------------------------------------
  void* alloc(size_t bytes) override;
  // Called from destructors (KV cache, model, test buffers): never throws. A failure here is almost always
  // an earlier kernel fault, which the next synchronising call reports with its own message.
  void release(void* p) override;
  size_t allocated_bytes() const override { return allocated_; }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    prof_.start(stream_);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    after_op("copy", double(bytes) * 2);
  }
  // Pageable host memory: the copy is synchronised so that the caller may reuse `src` at once.
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    synchronize();
  }
  // Small copies go through pinned staging (host_transfers.h), so the host does not wait.
  void upload_async(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    if (!transfers_.upload(dst, src, bytes, stream_)) upload(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    synchronize();
  }
  uint64_t download_later(void* dst, const void* src, size_t bytes) override {
    return transfers_.download(dst, src, bytes, stream_);
  }
  void wait_download(uint64_t ticket) override { transfers_.wait(ticket); }
  void synchronize() override {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    transfers_.drained();
  }

  // --- graphs and profiling (backend.h) -----------------------------------------------------------------
  bool graph_replay(uint64_t key) override { return graphs_enabled() && graphs_.replay(key, stream_); }
  bool graph_begin(uint64_t key) override {
    if (!graphs_enabled()) return false;
    graphs_.begin(key, stream_);
    return true;
  }
  void graph_end(bool launch) override { graphs_.end(stream_, launch); }
  void graph_clear() override { graphs_.clear(); }
  bool graphs_for_scoring() const override { return graph_scoring_ && graphs_enabled(); }
  // 4 chained steps per graph: H100, twenty-first session, +1.3–2.1% tg128 (376M EC/EH, 776M EC); ~1 ms a group.
  int default_greedy_steps() const override { return 4; }
  void set_profiling(bool on) override { prof_.set(on); }
  std::vector<OpTiming> take_profile() override { return prof_.take(stream_); }
  bool wants_fused_projections() const override { return true; }
  size_t graph_count() const { return graphs_.size(); }
  void set_graphs(bool on) { graphs_on_ = on; }
  bool set_persistent_decode(bool on) {  // returns whether the kernel runs on this GPU at all
    persistent_on_ = on && persistent_available_;
    return persistent_available_;
  }

  // Vectors (norm weights, rows == 1) become fp32; matrices matrix_dtype_ (F16 by default: bf16 → f16 is exact in
  // the f16 range), except that a matrix with a value outside the f16 range (|v| > 65504, inf or NaN: found on
  // the device while converting) is loaded again as BF16.
  Weight load_weight(const void* host, DType dtype, int64_t rows, int64_t cols) override;
  // Each chunk of the concatenation is gathered from the parts straight into pinned memory (no host copy of
  // the whole matrix first).
  Weight load_weight_concat(std::span<const HostSpan> parts, DType dtype, int64_t rows, int64_t cols) override;
  void release_weight(const Weight& w) override { release(const_cast<void*>(w.data)); }  // never throws

  DType kv_dtype() const override { return DType::F16; }

  // --- ops ------------------------------------------------------------------------------------------
  void embed(const EmbedParams& p) override;

  void rms_norm(const RmsNormParams& p) override;

  void matmul(const MatmulParams& p) override;

  // RMSNorm computed inside the matvec's blocks (decode); for a GEMM, written in the matrix's 16-bit type
  // straight into the GEMM's input (no fp32 round trip); otherwise the unfused pair.
  void norm_matmul(const NormMatmulParams& p) override;

  // A GEMM takes silu(gate)·up as its 16-bit input; otherwise (decode) the unfused pair: the decode step's
  // SwiGLU is the epilogue of the gate|up matvec (feed_forward).
  void swiglu_matmul(const SwigluMatmulParams& p) override;

  void rope(const RopeParams& p) override;

  void kv_append(const KvAppendParams& p) override;

  void rope_kv_append(const RopeKvAppendParams& p) override;

  // Decode (a matvec): RMSNorm in the blocks, RoPE and the K/V cache writes in the epilogue, one kernel.
  void qkv_rope_kv_append(const NormMatmulParams& proj, const RopeKvAppendParams& r) override;

  // Decode: the gate|up matvec (RMSNorm in the blocks) writes silu(gate)·up from its paired rows, then the
  // down matvec adds into the residual: two kernels instead of norm + matvec + swiglu + matvec.
  void feed_forward(const NormMatmulParams& gu, const SwigluMatmulParams& down) override;

  // Prefill (GEMMs): RMSNorm into the 16-bit GEMM input, Wgate|Wup with a 16-bit output written over gu.out's
  // memory (half its bytes: gate|up is dead after the SwiGLU, as in the fused decode), SwiGLU from 16 to 16 bits
  // into the down GEMM's input, the down GEMM added into the residual. Against the unfused op sequence: the
  // gate|up rows are written and read in 16 bits instead of 32 (at 4,096 tokens of the 376M shape 117 MB less
  // per layer each way). false (nothing done) when the batch or the shapes do not fit this path.
  bool feed_forward_half(const NormMatmulParams& gu, const SwigluMatmulParams& down);

  // A one-token decode step: all layers in one persistent kernel when it applies, else the op sequence.
  void decoder_layers(const DecoderLayersParams& p) override;

  void attention(const AttentionParams& p) override { run_attention(p, nullptr, false); }

  // Prefill with GEMMs: the attention writes its rows in Wo's 16-bit type straight into the o_proj GEMM's input
  // (half_activations), instead of fp32 rows that the GEMM then converts: at 4,096 tokens of the 376M EC shape
  // 34 MB written + 34 MB read + 17 MB written become 17 MB written, per layer.
  void attention_out_proj(const AttentionParams& a, const MatmulParams& o) override;

  // Whether a batch runs the decode attention kernel (flash-decoding) rather than the prefill one.
  bool decode_kernel_for(int n_tokens, int n_seqs) const {
    if (attention_ != CudaAttentionKernel::Auto) return attention_ == CudaAttentionKernel::Decode;
    return n_tokens <= kDecodeMaxTokensPerSeq * std::max(n_seqs, 1);
  }

  // The attention of p; out_half (prefill kernel only): its rows in 16 bits there instead of p.out.
  void run_attention(const AttentionParams& p, void* out_half, bool out_bf16);
  // p as the paged attention kernels' launch (checks the cache; no PDL, no 16-bit output).
  AttentionPagedLaunch paged_attention_launch(const AttentionParams& p) const;
  // One decode token's attention and o_proj as one kernel (options.decode_fused_oproj; sm_90; a context of at most
  // 256 positions: kernels/attention_out_proj_decode.cuh); false (nothing done) when it does not apply.
  bool attention_out_proj_fused(const AttentionParams& a, const MatmulParams& o);
  void set_decode_fused_oproj(bool on) { fused_oproj_ = on; }
  bool decode_fused_oproj_available() const { return is_sm90_; }
  size_t fused_oproj_launches() const { return fused_oproj_launches_; }

  void swiglu(const SwigluParams& p) override;

  void add(const AddParams& p) override;

  void gather_rows(const GatherRowsParams& p) override;

  void argmax(const ArgmaxParams& p) override;
  void norm_matmul_argmax(const NormMatmulParams& head, const ArgmaxParams& pick, const EmbedParams* next) override;
  // The argmax kernels' description of embedding `e` (one row: the next chained step's x); checks its table.
  NextEmbedding next_embedding(const EmbedParams& e) const;

  void nll(const NllParams& p) override;

 private:
  // A device buffer of at least `bytes`, valid until the next call; grows (after draining the stream,
  // since queued kernels may still use the old one).
  void* scratch(size_t bytes);

  // Copies `count` elements of dtype `src` (the concatenation of `host`) into dst (device) as `to` through the
  // pinned uploader, converting each chunk on the device from one of two staging areas in scratch, and waits. For an f16 target from bf16/f32
  // returns whether a value was outside the f16 range (dst then holds saturated values); false otherwise.
  bool upload_as(std::span<const HostSpan> host, DType src, DType to, size_t count, void* dst);

  // out[n, rows] (+)= Σ_parts x_part[n, cols] · Wᵀ through cuBLAS, x (xh) in the matrix's dtype, bf16 or f16
  // (parts: 1, or 2 = hi + lo halves [n·cols] apart); fp32 C and compute. Column-major view: W row-major
  // [rows, cols] is [cols, rows] (lda = cols); x row-major [n, cols] is [cols, n] (ldb = cols); out [rows, n]
  // (ldc = rows).
  void gemm(const void* xh, const Weight& w, float* out, int n, bool accumulate, int parts);

  // out[n, rows] = x[n, cols] · Wᵀ in W's 16-bit type (fp32 compute, one rounding at the end; in f16 a value
  // beyond ±65504 becomes ±inf), x (xh) in W's type; same column-major view as gemm.
  void gemm_half_out(const void* xh, const Weight& w, void* out, int n);

  // After every op: its profile record (when profiling) and, with ROPEPP_CUDA_SYNC=1, a synchronisation
  // so that a fault is reported at the op that caused it.
  void after_op(const std::string& op, double bytes) {
    if (prof_.on()) prof_.stop(stream_, op, bytes);
    if (!sync_) return;
    const cudaError_t e = cudaStreamSynchronize(stream_);
    if (e != cudaSuccess) cuda_fail(e, op.c_str(), __FILE__, __LINE__);
  }

  // The cache slots of a batch's tokens in one layer (kv_append and rope_kv_append).
  KvAppendPagedLaunch paged_slots(const KVCacheView& c, int layer, const BatchView& b, const char* op) const;

  // rope_kv_append's launch: the batch's cache slots, the qkv rows, the rope tables.
  RopeKvAppendLaunch rope_kv_launch(const RopeKvAppendParams& p, const char* op) const;

  bool graphs_enabled() const { return graphs_on_ && !sync_ && !prof_.on(); }

  // The GEMV (bf16 or f16 weights) serves up to kMatvecMaxRows rows of x when the shapes/alignment allow
  // 16-byte loads.
  static bool use_matvec(int n, const Weight& w, const float* x) {
    return n <= kMatvecMaxRows && w.cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
           reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
  }
  static bool norm_fits(const NormMatmulParams& p) {
    return p.norm.dtype == DType::F32 && p.norm.rows * p.norm.cols == p.w.cols;
  }
  // RMSNorm inside a matvec: every block re-reads x, so not for the lm_head's 128k rows. (Tried: the lm_head on a
  // capped grid, each block normalizing once for all its rows, saves the rms_norm kernel but streams at 3.9
  // instead of 4.3 TB/s: tg128 376M EC 3,470 → 3,124 tok/s on the H200.)
  static bool normed_matvec_fits(const NormMatmulParams& p) {
    return p.w.rows <= kFusedNormMaxRows && use_matvec(p.n, p.w, p.x) && matvec_fused_fits(p.n, int(p.w.cols));
  }
  // The matvec of norm(x)·wᵀ into `out` (Store; the caller sets accumulate or another epilogue).
  MatvecLaunch normed_matvec(const NormMatmulParams& p, float* out) const;
  // The matvec of x·wᵀ into `out` (Store, n rows of x; the caller sets accumulate or an epilogue).
  MatvecLaunch plain_matvec(const float* x, const Weight& w, float* out, int n) const;
  // MatvecLaunch::max_blocks for w: options.matvec_blocks_per_sm(_large) · SMs for a per-layer matrix, else no cap.
  int matvec_grid_cap(const Weight& w) const {
    if (!per_layer_matrix(w)) return 0;
    return size_t(w.rows * w.cols) * 2 >= kMatvecLargeBytes ? matvec_max_blocks_large_ : matvec_max_blocks_;
  }
  // A per-layer matrix (≤ kMatvecCapMaxBytes of 16-bit weights), not the lm_head.
  static bool per_layer_matrix(const Weight& w) { return size_t(w.rows * w.cols) * 2 <= kMatvecCapMaxBytes; }
  // Launches the matvec l over w, with MatvecLaunch::prefetch_smem_bytes / prefetch_blocks set from the options:
  // their budget for a per-layer matrix whose epilogue (l.output) is in options.matvec_smem_ops, none for the
  // lm_head (it streams at the copy rate; a grid of thousands of prefetching blocks would not).
  void launch_matvec_over(MatvecLaunch& l, const Weight& w) {
    const int bit = l.output == MatvecOutput::Store ? 1 : l.output == MatvecOutput::Swiglu ? 2 : 4;
    l.prefetch_smem_bytes = per_layer_matrix(w) && (matvec_smem_ops_ & bit) ? matvec_smem_bytes_ : 0;
    l.prefetch_blocks = matvec_smem_blocks_;
    l.deep = matvec_deep_ && per_layer_matrix(w);
    l.l2_rest = matvec_l2_rest_ && per_layer_matrix(w);
    l.l2_tail = matvec_l2_tail_ && per_layer_matrix(w);
    l.late_trigger = (matvec_late_trigger_ & bit) && per_layer_matrix(w);
    launch_matvec(l, stream_);
  }
  // options.probe_skip: bits of the kinds a one-token decode step leaves out (timing ablations; wrong outputs), in
  // the order of cuda_probe_skip_bits' names.
  enum ProbeSkip { kSkipQkv = 1, kSkipAttention = 2, kSkipOProj = 4, kSkipGateUp = 8, kSkipDown = 16 };
  bool probe_skips(int bit, int n_tokens) const { return (probe_skip_ & bit) && n_tokens == 1; }
  // MatvecLaunch::l2_next of a decode matvec: the tails of MatmulParams::next_ffn (paired) and next_qkv that the
  // options ask for, where they are per-layer 16-bit matrices with rows of a multiple of 16 bytes.
  L2Ranges l2_next_ranges(const MatmulParams& p) const {
    L2Ranges r;
    auto add = [&](const Weight* w, bool paired, int pct) {
      if (!w || pct <= 0 || !per_layer_matrix(*w) || (w->dtype != DType::F16 && w->dtype != DType::BF16) ||
          w->cols % 8 != 0 || reinterpret_cast<uintptr_t>(w->data) % 16 != 0)
        return;
      add_l2_tail_rows(&r, w->data, w->rows, size_t(w->cols) * 2, paired, pct);
    };
    add(p.next_ffn, true, l2_next_ffn_pct_);
    auto bytes = [](const Weight* w) { return w ? size_t(w->rows * w->cols) * 2 : 0; };
    const int qkv_pct = l2_next_qkv_pct_ >= 0 ? l2_next_qkv_pct_
                                              : l2_next_qkv_auto_pct(bytes(p.next_qkv), bytes(p.next_ffn), l2_bytes_);
    add(p.next_qkv, false, qkv_pct);
    return r;
  }
  static double matmul_bytes(const Weight& w, int n) {
    return double(w.rows) * double(w.cols) * 2 + double(n) * double(w.rows + w.cols) * 4;
  }

  // ROPEPP_CUDA_PERSISTENT_TRACE=1: where block 0 of the persistent decode kernel spent its time, per step.
  void report_persistent_trace();
  // ROPEPP_CUDA_DECODE_FUSED_OPROJ_TRACE=1: where block 0 of the fused attention + o_proj kernel spent its time.
  void report_fused_oproj_trace();

  void require_matrix(const Weight& w, const char* op, const char* what) const {
    if (w.dtype != DType::F16 && w.dtype != DType::BF16)
      fail("cuda {}: {} has dtype {} [{}, {}]; expected an F16 or BF16 matrix (weights come from CUDA load_weight)",
           op, what, dtype_name(w.dtype), w.rows, w.cols);
  }

  void check_cache(const KVCacheView& c, int layer, const char* op) const {
    if (c.dtype != kv_dtype())
      fail("cuda {}: KV cache dtype {} (the CUDA backend keeps {})", op, dtype_name(c.dtype), dtype_name(kv_dtype()));
    if (layer < 0 || layer >= c.n_layers) fail("cuda {}: layer {} out of range (cache has {} layers)", op, layer, c.n_layers);
    if (c.head_dim % 8 != 0) fail("cuda {}: cache head_dim {} is not a multiple of 8", op, c.head_dim);
  }

  int device_ = 0;
  CudaAttentionKernel attention_ = CudaAttentionKernel::Auto;
  bool sync_ = false;
  bool precise_matmul_ = false;
  DType matrix_dtype_ = DType::F16;  // of matrices from load_weight (a matrix beyond the f16 range: BF16)
  int num_sms_ = 0;
  std::string gpu_name_;
  cudaStream_t stream_ = nullptr;
  const CublasApi* cb_ = nullptr;  // cuBLAS entry points (cublas_library.h)
  cublasHandle_t cublas_ = nullptr;
  void* cublas_ws_ = nullptr;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  PinnedUploader uploader_{kUploadChunk};  // load_weight's host → device copies
  HostTransfers transfers_{kStagingBytes, kDownloadRing};  // upload_async / download_later
  CudaGraphCache graphs_{kGraphCapacity};
  bool graphs_on_ = true;       // env ROPEPP_CUDA_GRAPHS=0 turns recording off
  bool pdl_ = false;            // matvecs use programmatic dependent launch (options.pdl and sm_90+)
  bool is_sm90_ = false;        // compute capability 9.0 (the sm_90a kernels can run)
  bool prefill_sm90_ = true;    // options.prefill_sm90
  bool prefill_ws_ = true;        // options.prefill_warp_specialized
  bool prefill_ws_qreg_ = true;   // options.prefill_ws_q_registers
  bool prefill_tma_ = true;     // options.prefill_tma
  bool decode_mma_ = true;      // options.decode_mma
  bool fused_decode_ = true;    // qkv_rope_kv_append / feed_forward as fused matvecs (options.fused_decode)
  bool half_act_ = true;        // 16-bit gate|up and attention output in prefill (options.half_activations)
  int decode_min_chunk_;        // options.decode_min_chunk
  int decode_split_blocks_per_sm_ = 0;  // options.decode_split_blocks_per_sm
  int decode_short_unsplit_ = 0;         // options.decode_short_unsplit
  int decode_cluster_merge_ = 0;         // options.decode_cluster_merge
  int decode_mma_shape_ = 4;            // options.decode_mma_shape
  int decode_split_align_;      // options.decode_split_align
  bool prefetch_history_ = true;  // options.decode_prefetch_history
  bool merge_last_block_ = false;  // options.decode_merge_in_last_block
  bool fused_oproj_ = false;       // options.decode_fused_oproj
  int fused_oproj_rw_ = 0;         // options.decode_fused_oproj_rows_per_warp (0: the plan's)
  int fused_oproj_cluster_ = 16;   // options.decode_fused_oproj_cluster
  bool fused_oproj_late_ = false;  // options.decode_fused_oproj_late_trigger
  unsigned long long* fused_oproj_trace_ = nullptr;  // [kFusedOProjTraceSlots] (options.decode_fused_oproj_trace)
  size_t fused_oproj_launches_ = 0;  // launches of the fused attention + o_proj kernel (tests)
  std::string fused_oproj_why_;    // the last reason a decode step's attention + o_proj was not fused (logged once)
  bool graph_scoring_ = true;  // options.graph_scoring
  static constexpr size_t kSplitCounters = 4096;  // (token, kv head) pairs the last-block merge serves
  unsigned* split_counters_ = nullptr;  // [kSplitCounters] zero between decode attention launches
  bool lm_head_argmax_ = false;  // options.lm_head_argmax
  bool argmax_embed_ = true;      // options.argmax_embed
  int matvec_max_warps_ = 0;  // options.matvec_ks_fit_blocks: the warps of that many blocks per SM (max_warps)
  bool matvec_deep_ = false;     // options.matvec_deep (MatvecLaunch::deep, per-layer matrices)
  bool matvec_l2_rest_ = false;  // options.matvec_l2_rest (MatvecLaunch::l2_rest, per-layer matrices)
  bool matvec_l2_tail_ = true;  // options.matvec_l2_tail (MatvecLaunch::l2_tail, per-layer matrices)
  int l2_next_ffn_pct_ = 0;     // options.l2_next_ffn_pct (MatvecLaunch::l2_next from MatmulParams::next_ffn)
  int l2_next_qkv_pct_ = -1;    // options.l2_next_qkv_pct (... from MatmulParams::next_qkv; -1: auto)
  size_t l2_bytes_ = 0;         // the GPU's L2 cache
  int probe_skip_ = 0;           // options.probe_skip (ProbeSkip bits)
  int matvec_late_trigger_ = 0;  // options.matvec_late_trigger: epilogue bits (MatvecLaunch::late_trigger)
  int matvec_max_warps_default_ = 0;  // the options' value of matvec_max_warps_
  int matvec_max_blocks_ = 0;   // options.matvec_blocks_per_sm · SMs (0: no grid cap)
  int matvec_max_blocks_large_ = 0;  // options.matvec_blocks_per_sm_large · SMs, for matrices of ≥ kMatvecLargeBytes
  bool bulk_copies_ = false;    // sm_90+: cp.async.bulk (the matvec's shared-memory prefetch)
  int matvec_smem_bytes_ = 0;   // options.matvec_smem_kb · 1024 (MatvecLaunch::prefetch_smem_bytes; 0: off)
  int matvec_smem_ops_ = 7;     // options.matvec_smem_ops: epilogues that take it (1 store, 2 SwiGLU, 4 RoPE)
  int matvec_smem_blocks_ = 0;  // MatvecLaunch::prefetch_blocks: the SMs (tests may set fewer)
  int matvec_wide_pairs_ = 0;   // options.matvec_wide_pairs: bit 0 gate|up + SwiGLU, bit 1 qkv + RoPE
  static constexpr size_t kMatvecCapMaxBytes = size_t(64) << 20;  // the cap is for per-layer matrices
  static constexpr size_t kMatvecLargeBytes = 16'000'000;
  bool persistent_available_ = false;  // the persistent decode kernel is built for this GPU
  bool persistent_on_ = false;  // options.persistent_decode (and available)
  PersistentDecodeLimits persistent_;
  unsigned long long* persistent_trace_ = nullptr;  // [kDecodeTraceSlots] (options.persistent_decode_trace)
  std::string persistent_why_;  // the last reason a decode step did not fit the persistent kernel (logged once)
  CudaOpProfiler prof_;
  std::unordered_map<void*, size_t> sizes_;  // every live allocation, for allocated_bytes()
  size_t allocated_ = 0;
};

}  // namespace ropepp::cuda_impl
