// backend_cuda.cpp: the CUDA backend. A CudaBackend object owns everything it uses (stream, cuBLAS
// handle and workspace, a growing scratch buffer); no globals. Ops map the backend.h params onto the
// kernels/ launchers, all on one stream.
//
// Memory: matrices (rows > 1) are resident in f16 (load_weight converts bf16/f32 on the device; a matrix with
// a value outside the f16 range stays bf16, as do all with ROPEPP_CUDA_MATRIX_DTYPE=bf16), vectors (norm
// weights, rows == 1) in fp32; activations fp32; the KV cache f16. Matmul: a GEMV kernel (bf16 or f16
// weights, fp32 x) for up to kMatvecMaxRows input rows (decode), cuBLAS above: A and B in the matrix's
// dtype (x converted in scratch; f16 saturates at ±65504), fp32 C and compute.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <strings.h>
#include <unordered_map>

#include "add.cuh"
#include "argmax.cuh"
#include "attention_decode_paged.cuh"
#include "attention_prefill_paged.cuh"
#include "backend.h"
#include "backend_cuda.h"
#include "common.h"
#include "convert.cuh"
#include "cublas_library.h"
#include "cuda_check.cuh"
#include "decoder_layers_cuda.h"
#include "embed.cuh"
#include "gather_rows.cuh"
#include "graph_cache.h"
#include "host_transfers.h"
#include "kv_append_paged.cuh"
#include "matvec.cuh"
#include "nll.cuh"
#include "op_profiler.h"
#include "rms_norm.cuh"
#include "rope.cuh"
#include "rope_kv_append_paged.cuh"
#include "swiglu.cuh"
#include "weight_upload.h"

#define CUBLAS_CHECK(expr)                                                                                \
  do {                                                                                                    \
    cublasStatus_t st_ = (expr);                                                                          \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                                     \
      ::ropepp::fail("cuBLAS error {} ({}) in {} at {}:{}", cublas_api().status_name(st_),                  \
                     cublas_api().status_string(st_),                                                     \
                     #expr, __FILE__, __LINE__);                                                          \
  } while (0)

namespace ropepp {
namespace {

constexpr size_t kMiB = size_t(1) << 20;
constexpr size_t kCublasWorkspace = 32 * kMiB;  // recommended for Hopper
constexpr size_t kUploadChunk = 16 * kMiB;      // weight upload chunk: two pinned buffers, two staging areas
constexpr int kDecodeMaxTokensPerSeq = 8;       // Auto: decode kernel up to this many tokens per sequence
constexpr size_t kStagingBytes = 4 * kMiB;      // pinned host buffer behind upload_async (two halves)
constexpr size_t kDownloadRing = 1 * kMiB;      // pinned host ring behind download_later
constexpr size_t kGraphCapacity = 32;           // recorded graphs kept (decode shapes × context buckets)
constexpr int64_t kFusedNormMaxRows = 32768;    // RMSNorm fused into matvecs up to this many rows (not lm_head:
                                                // every block would re-read x, ~65 MB of L2 traffic for 128k rows)

double mib(size_t b) { return double(b) / double(kMiB); }

// The element type of a matrix from load_weight (F16 or BF16, checked by require_matrix).
HalfType half_type(const Weight& w) { return w.dtype == DType::F16 ? HalfType::F16 : HalfType::BF16; }

// The dtype matrices are loaded in: F16 or BF16 (CudaBackendOptions::matrix_dtype).
DType checked_matrix_dtype(DType d) {
  if (d != DType::F16 && d != DType::BF16)
    fail("cuda: matrix dtype {} is not supported (expected F16 or BF16)", dtype_name(d));
  return d;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& o)
      : device_(o.device), attention_(o.attention), sync_(o.sync_after_each_op), precise_matmul_(o.precise_matmul),
        matrix_dtype_(checked_matrix_dtype(o.matrix_dtype)), graphs_on_(o.graphs), fused_decode_(o.fused_decode),
        half_act_(o.half_activations),
        decode_min_chunk_(o.decode_min_chunk) {
    if (decode_min_chunk_ < 1 || decode_min_chunk_ > (1 << 20))
      fail("cuda: decode attention min chunk {} (ROPEPP_CUDA_DECODE_MIN_CHUNK): expected 1..1048576 positions",
           decode_min_chunk_);
    cublas_load_async();  // cuBLAS loads on its own thread while the CUDA context is created
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
      cudaGetLastError();
      fail("cuda: no usable CUDA device ({}: {}); use --device cpu", cudaGetErrorName(e),
           e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
    }
    if (device_ < 0 || device_ >= count) fail("cuda: device index {} out of range (found {} devices)", device_, count);
    CUDA_CHECK(cudaSetDevice(device_));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    num_sms_ = prop.multiProcessorCount;
    gpu_name_ = prop.name;
    pdl_ = o.pdl && prop.major >= 9;
    is_sm90_ = prop.major == 9 && prop.minor == 0;
    prefill_sm90_ = o.prefill_sm90;
    prefill_ws_ = o.prefill_warp_specialized;
    decode_mma_ = o.decode_mma;
    matvec_max_blocks_ = std::max(0, o.matvec_blocks_per_sm) * num_sms_;
    prefetch_history_ = o.decode_prefetch_history;
    merge_last_block_ = o.decode_merge_in_last_block;
    l2_prefetch_ = o.l2_prefetch;
    graph_scoring_ = o.graph_scoring;
    persistent_.num_sms = num_sms_;
    persistent_.max_ctx = o.persistent_decode_max_ctx;
    persistent_.max_stages = o.persistent_decode_stages;
    CUDA_CHECK(cudaDeviceGetAttribute(&persistent_.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_));
    persistent_available_ = decode_layers_available();
    persistent_on_ = o.persistent_decode && persistent_available_;
    if (persistent_on_ && o.persistent_decode_trace) {
      persistent_trace_ = static_cast<unsigned long long*>(alloc(kDecodeTraceSlots * 8));
      CUDA_CHECK(cudaMemset(persistent_trace_, 0, kDecodeTraceSlots * 8));
    }
    if (prop.major < 8)
      fail("cuda:{}: {} has compute capability {}.{}; the kernels need 8.0 or newer (bf16 tensor cores, cp.async)",
           device_, gpu_name_, prop.major, prop.minor);
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    cb_ = &cublas_api();  // loaded beside the context creation above
    CUBLAS_CHECK(cb_->create(&cublas_));
    CUBLAS_CHECK(cb_->set_stream(cublas_, stream_));
    cublas_ws_ = alloc(kCublasWorkspace);
    CUBLAS_CHECK(cb_->set_workspace(cublas_, cublas_ws_, kCublasWorkspace));
    transfers_.init();
    split_counters_ = static_cast<unsigned*>(alloc(kSplitCounters * sizeof(unsigned)));
    CUDA_CHECK(cudaMemset(split_counters_, 0, kSplitCounters * sizeof(unsigned)));  // the kernels keep them 0
  }

  ~CudaBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    if (persistent_trace_) report_persistent_trace();
    graphs_.clear();
    if (cublas_) cb_->destroy(cublas_);
    if (cublas_ws_) cudaFree(cublas_ws_);
    if (scratch_) cudaFree(scratch_);
    if (split_counters_) cudaFree(split_counters_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return fmt::format("cuda:{}", device_); }
  void set_attention_kernel(CudaAttentionKernel k) { attention_ = k; }
  void set_prefill_sm90(bool on) { prefill_sm90_ = on; }
  void set_prefill_warp_specialized(bool on) { prefill_ws_ = on; }
  void set_decode_mma(bool on) { decode_mma_ = on; }
  void set_decode_merge_in_last_block(bool on) { merge_last_block_ = on; }
  void set_matvec_max_blocks(int blocks) { matvec_max_blocks_ = std::max(0, blocks); }
  void set_l2_prefetch(int bits) { l2_prefetch_ = bits; }
  void set_graph_scoring(bool on) { graph_scoring_ = on; }
  void set_half_activations(bool on) { half_act_ = on; }
  void set_precise_matmul(bool precise) { precise_matmul_ = precise; }
  void set_matrix_dtype(DType d) { matrix_dtype_ = checked_matrix_dtype(d); }

  // --- memory ---------------------------------------------------------------------------------------
  void* alloc(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("cuda:{}: out of device memory: requested {:.1f} MiB, {:.1f} MiB free of {:.1f} MiB on {} ({}); "
           "lower the context size (-c/--ctx-size) or the batch size",
           device_, mib(bytes), mib(free_b), mib(total_b), gpu_name_, cudaGetErrorName(e));
    }
    sizes_[p] = bytes;
    allocated_ += bytes;
    return p;
  }
  // Called from destructors (KV cache, model, test buffers): never throws. A failure here is almost always
  // an earlier kernel fault, which the next synchronising call reports with its own message.
  void release(void* p) override {
    if (!p) return;
    if (const cudaError_t e = cudaFree(p); e != cudaSuccess)
      spdlog::error("cuda:{}: cudaFree failed: {} ({})", device_, cudaGetErrorName(e), cudaGetErrorString(e));
    if (auto it = sizes_.find(p); it != sizes_.end()) {
      allocated_ -= it->second;
      sizes_.erase(it);
    }
  }
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
  Weight load_weight(const void* host, DType dtype, int64_t rows, int64_t cols) override {
    uint64_t count = 0;
    if (rows <= 0 || cols <= 0 || mul_overflows(uint64_t(rows), uint64_t(cols), &count))
      fail("cuda load_weight: bad shape [{}, {}]", rows, cols);
    const HostSpan part{host, size_t(count) * dtype_size(dtype)};
    return load_weight_concat({&part, 1}, dtype, rows, cols);
  }
  // Each chunk of the concatenation is gathered from the parts straight into pinned memory (no host copy of
  // the whole matrix first).
  Weight load_weight_concat(std::span<const HostSpan> parts, DType dtype, int64_t rows, int64_t cols) override {
    uint64_t count = 0;
    if (rows <= 0 || cols <= 0 || mul_overflows(uint64_t(rows), uint64_t(cols), &count))
      fail("cuda load_weight: bad shape [{}, {}]", rows, cols);
    if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
      fail("cuda load_weight: source dtype {} of [{}, {}] (expected F32, F16 or BF16)", dtype_name(dtype), rows, cols);
    size_t bytes = 0;
    for (const HostSpan& p : parts) bytes += p.bytes;
    if (bytes != size_t(count) * dtype_size(dtype))
      fail("cuda load_weight: {} bytes in {} parts for [{}, {}] {}", bytes, parts.size(), rows, cols, dtype_name(dtype));
    Weight w;
    w.rows = rows;
    w.cols = cols;
    w.dtype = rows == 1 ? DType::F32 : matrix_dtype_;
    void* dst = alloc(count * dtype_size(w.dtype));
    w.data = dst;
    try {
      if (upload_as(parts, dtype, w.dtype, count, dst)) {  // outside the f16 range: the same bytes hold it as bf16
        spdlog::warn("cuda load_weight: a {} matrix [{} x {}] has values outside the f16 range (|v| > 65504, inf "
                     "or NaN); it is kept as BF16 (its GEMMs take bf16 inputs)",
                     dtype_name(dtype), rows, cols);
        w.dtype = DType::BF16;
        upload_as(parts, dtype, w.dtype, count, dst);
      }
    } catch (...) {
      release(dst);
      throw;
    }
    return w;
  }
  void release_weight(const Weight& w) override { release(const_cast<void*>(w.data)); }  // never throws

  DType kv_dtype() const override { return DType::F16; }

  // --- ops ------------------------------------------------------------------------------------------
  void embed(const EmbedParams& p) override {
    require_matrix(p.table, "embed", "table");
    prof_.start(stream_);
    launch_embed({p.table.data, p.tokens, p.out, p.n, int(p.table.cols), p.table.rows, half_type(p.table)}, stream_);
    after_op("embed", double(p.n) * double(p.table.cols) * 6);
  }

  void rms_norm(const RmsNormParams& p) override {
    if (p.w.rows * p.w.cols != p.dim)
      fail("cuda rms_norm: weight has {} elements, dim is {}", p.w.rows * p.w.cols, p.dim);
    if (p.w.dtype != DType::F32)
      fail("cuda rms_norm: weight dtype {} (expected F32: load_weight keeps vectors in fp32)", dtype_name(p.w.dtype));
    const RmsNormLaunch l{p.x, static_cast<const float*>(p.w.data), p.out, p.n, p.dim, p.eps};
    prof_.start(stream_);
    launch_rms_norm(l, stream_);
    after_op("rms_norm", double(p.n) * p.dim * 8);
  }

  void matmul(const MatmulParams& p) override {
    require_matrix(p.w, "matmul", "w");
    if (p.n <= 0) return;
    const int rows = int(p.w.rows), cols = int(p.w.cols);
    prof_.start(stream_);
    if (use_matvec(p.n, p.w, p.x)) {
      MatvecLaunch l{p.x, p.w.data, p.out, p.n, rows, cols};
      l.accumulate = p.accumulate;
      l.pdl = pdl_;
      l.max_blocks = matvec_grid_cap(p.w);
      l.w_type = half_type(p.w);
      l.prefetch = l2_prefetch_of(p.prefetch, 1);
      launch_matvec(l, stream_);
      return after_op(fmt::format("matvec [{}x{}]{}", rows, cols, p.accumulate ? " +=" : ""), matmul_bytes(p.w, p.n));
    }
    const size_t count = size_t(p.n) * cols;
    const int parts = precise_matmul_ ? 2 : 1;
    void* xh = scratch(count * 2 * size_t(parts));  // x in the matrix's 16-bit type
    if (precise_matmul_) {
      launch_split_f32_to_half_hi_lo({p.x, xh, count}, half_type(p.w), stream_);
    } else {
      launch_convert_f32_to_half({p.x, xh, count}, half_type(p.w), stream_);
    }
    gemm(xh, p.w, p.out, p.n, p.accumulate, parts);
    after_op(fmt::format("gemm [{}x{}] n={}", rows, cols, p.n), matmul_bytes(p.w, p.n));
  }

  // RMSNorm computed inside the matvec's blocks (decode); for a GEMM, written in the matrix's 16-bit type
  // straight into the GEMM's input (no fp32 round trip); otherwise the unfused pair.
  void norm_matmul(const NormMatmulParams& p) override {
    require_matrix(p.w, "norm_matmul", "w");
    const int cols = int(p.w.cols);
    const bool norm_ok = norm_fits(p);
    if (norm_ok && !precise_matmul_ && !use_matvec(p.n, p.w, p.x)) {
      prof_.start(stream_);
      void* xh = scratch(size_t(p.n) * cols * 2);
      RmsNormLaunch l{p.x, static_cast<const float*>(p.norm.data), nullptr, p.n, cols, p.eps};
      l.out_half = xh;
      l.out_type = half_type(p.w);
      launch_rms_norm(l, stream_);
      gemm(xh, p.w, p.out, p.n, p.accumulate, 1);
      return after_op(fmt::format("rms_norm+gemm [{}x{}] n={}", p.w.rows, cols, p.n), matmul_bytes(p.w, p.n));
    }
    if (!norm_ok || !normed_matvec_fits(p)) return Backend::norm_matmul(p);
    prof_.start(stream_);
    MatvecLaunch l = normed_matvec(p, p.out);
    l.accumulate = p.accumulate;
    launch_matvec(l, stream_);
    after_op(fmt::format("rms_norm+matvec [{}x{}]", p.w.rows, cols), matmul_bytes(p.w, p.n));
  }

  // A GEMM takes silu(gate)·up as its 16-bit input; otherwise (decode) the unfused pair: the decode step's
  // SwiGLU is the epilogue of the gate|up matvec (feed_forward).
  void swiglu_matmul(const SwigluMatmulParams& p) override {
    require_matrix(p.w, "swiglu_matmul", "w");
    const int cols = int(p.w.cols);
    if (!precise_matmul_ && !use_matvec(p.n, p.w, p.gate)) {  // GEMM: silu(gate)·up written as its 16-bit input
      prof_.start(stream_);
      void* xh = scratch(size_t(p.n) * cols * 2);
      SwigluLaunch l{p.gate, p.up, p.in_stride, nullptr, p.n, cols};
      l.out_half = xh;
      l.out_type = half_type(p.w);
      launch_swiglu(l, stream_);
      gemm(xh, p.w, p.out, p.n, p.accumulate, 1);
      return after_op(fmt::format("swiglu+gemm [{}x{}] n={}", p.w.rows, cols, p.n),
                      matmul_bytes(p.w, p.n) + double(p.n) * cols * 8);
    }
    Backend::swiglu_matmul(p);
  }

  void rope(const RopeParams& p) override {
    if (p.head_dim % 2 != 0) fail("cuda rope: head_dim {} is odd", p.head_dim);
    prof_.start(stream_);
    launch_rope({p.x, p.positions, p.cos, p.sin, p.n, p.n_heads, p.head_dim, p.row_stride}, stream_);
    after_op("rope", double(p.n) * p.n_heads * p.head_dim * 8);
  }

  void kv_append(const KvAppendParams& p) override {
    KvAppendPagedLaunch l = paged_slots(p.cache, p.layer, p.batch, "kv_append");
    l.k = p.k;
    l.v = p.v;
    l.row_stride = p.row_stride;
    prof_.start(stream_);
    launch_kv_append_paged(l, stream_);
    after_op("kv_append", double(l.n) * l.n_kv_heads * l.head_dim * 12);
  }

  void rope_kv_append(const RopeKvAppendParams& p) override {
    const RopeKvAppendLaunch l = rope_kv_launch(p, "rope_kv_append");
    prof_.start(stream_);
    launch_rope_kv_append_paged(l, stream_);
    after_op("rope+kv_append", double(l.n) * (l.n_q_heads + 2 * l.n_kv_heads) * l.head_dim * 8);
  }

  // Decode (a matvec): RMSNorm in the blocks, RoPE and the K/V cache writes in the epilogue, one kernel.
  void qkv_rope_kv_append(const NormMatmulParams& proj, const RopeKvAppendParams& r) override {
    const KVCacheView& c = r.cache;
    const bool fused = fused_decode_ && r.qkv == proj.out && !proj.accumulate && norm_fits(proj) &&
                       normed_matvec_fits(proj) && proj.n == r.batch.n_tokens && c.head_dim % 2 == 0 &&
                       proj.w.rows == int64_t(r.n_q_heads + 2 * c.n_kv_heads) * c.head_dim;
    if (!fused) return Backend::qkv_rope_kv_append(proj, r);
    require_matrix(proj.w, "qkv_rope_kv_append", "w");
    MatvecLaunch l = normed_matvec(proj, proj.out);
    l.output = MatvecOutput::RopeKv;
    l.rope = rope_kv_launch(r, "qkv_rope_kv_append");
    prof_.start(stream_);
    launch_matvec(l, stream_);
    after_op(fmt::format("rms_norm+matvec+rope+kv_append [{}x{}]", proj.w.rows, proj.w.cols),
             matmul_bytes(proj.w, proj.n));
  }

  // Decode: the gate|up matvec (RMSNorm in the blocks) writes silu(gate)·up from its paired rows, then the
  // down matvec adds into the residual: two kernels instead of norm + matvec + swiglu + matvec.
  void feed_forward(const NormMatmulParams& gu, const SwigluMatmulParams& down) override {
    const int64_t F = gu.w.rows / 2;
    const bool fused = fused_decode_ && gu.w.rows % 2 == 0 && down.w.cols == F && !gu.accumulate &&
                       down.gate == gu.out && down.up == gu.out + F && down.in_stride == 2 * F && down.n == gu.n &&
                       norm_fits(gu) && normed_matvec_fits(gu) && use_matvec(down.n, down.w, down.act);
    if (!fused) {
      if (half_act_ && feed_forward_half(gu, down)) return;
      return Backend::feed_forward(gu, down);
    }
    require_matrix(gu.w, "feed_forward", "gate_up");
    require_matrix(down.w, "feed_forward", "down");
    MatvecLaunch l = normed_matvec(gu, down.act);
    l.output = MatvecOutput::Swiglu;
    prof_.start(stream_);
    launch_matvec(l, stream_);
    after_op(fmt::format("rms_norm+matvec+swiglu [{}x{}]", gu.w.rows, gu.w.cols),
             matmul_bytes(gu.w, gu.n) - double(gu.n) * double(F) * 4);
    matmul({down.act, down.w, down.out, down.n, down.accumulate, down.prefetch});
  }

  // Prefill (GEMMs): RMSNorm into the 16-bit GEMM input, Wgate|Wup with a 16-bit output written over gu.out's
  // memory (half its bytes: gate|up is dead after the SwiGLU, as in the fused decode), SwiGLU from 16 to 16 bits
  // into the down GEMM's input, the down GEMM added into the residual. Against the unfused op sequence: the
  // gate|up rows are written and read in 16 bits instead of 32 (at 4,096 tokens of the 376M shape 117 MB less
  // per layer each way). false (nothing done) when the batch or the shapes do not fit this path.
  bool feed_forward_half(const NormMatmulParams& gu, const SwigluMatmulParams& down) {
    const int64_t F = gu.w.rows / 2;
    const bool fits = !precise_matmul_ && gu.w.rows % 2 == 0 && down.w.cols == F && !gu.accumulate &&
                      down.gate == gu.out && down.up == gu.out + F && down.in_stride == 2 * F && down.n == gu.n &&
                      norm_fits(gu) && !use_matvec(gu.n, gu.w, gu.x) && !use_matvec(down.n, down.w, down.act) &&
                      gu.w.dtype == down.w.dtype;
    if (!fits) return false;
    require_matrix(gu.w, "feed_forward", "gate_up");
    require_matrix(down.w, "feed_forward", "down");
    const int n = gu.n, D = int(gu.w.cols);
    prof_.start(stream_);
    // scratch: the normed x [n, D], then silu(gate)·up [n, F], both 16-bit (the GEMM inputs).
    char* ws = static_cast<char*>(scratch(size_t(n) * (size_t(D) + size_t(F)) * 2));
    void* xh = ws;
    void* act = ws + size_t(n) * D * 2;
    RmsNormLaunch l{gu.x, static_cast<const float*>(gu.norm.data), nullptr, n, D, gu.eps};
    l.out_half = xh;
    l.out_type = half_type(gu.w);
    launch_rms_norm(l, stream_);
    gemm_half_out(xh, gu.w, gu.out, n);  // [n, 2F] 16-bit rows over gu.out's [n, 2F] floats
    SwigluLaunch sw{nullptr, nullptr, int(2 * F), nullptr, n, int(F)};
    sw.in_half = gu.out;
    sw.in_type = half_type(gu.w);
    sw.up_offset = int(F);
    sw.out_half = act;
    sw.out_type = half_type(down.w);
    launch_swiglu(sw, stream_);
    gemm(act, down.w, down.out, n, down.accumulate, 1);
    after_op(fmt::format("rms_norm+gemm [{}x{}]+swiglu+gemm [{}x{}] (16-bit gate|up) n={}", gu.w.rows, D,
                         down.w.rows, F, n),
             matmul_bytes(gu.w, n) + matmul_bytes(down.w, n) + double(n) * double(F) * 8);
    return true;
  }

  // A one-token decode step: all layers in one persistent kernel when it applies, else the op sequence.
  void decoder_layers(const DecoderLayersParams& p) override {
    DecodeLayersLaunch l;
    DecodeLayersPlan plan;
    std::string why;
    if (!persistent_on_ || !persistent_decode_launch(p, persistent_, &l, &plan, &why)) {
      if (persistent_on_ && p.batch.n_tokens == 1 && why != persistent_why_) {
        spdlog::debug("cuda: decode step as separate kernels: {}", why);
        persistent_why_ = why;
      }
      return Backend::decoder_layers(p);
    }
    check_cache(p.cache, p.n_layers - 1, "decoder_layers");
    const size_t part_bytes = (plan.part_floats * sizeof(float) + 255) / 256 * 256;
    char* ws = static_cast<char*>(scratch(part_bytes + plan.sync_words * sizeof(unsigned)));
    l.part = reinterpret_cast<float*>(ws);
    l.sync = reinterpret_cast<unsigned*>(ws + part_bytes);
    l.trace = persistent_trace_;
    prof_.start(stream_);
    launch_decode_layers(l, plan, stream_);
    after_op(fmt::format("decoder layers (persistent, {} layers)", p.n_layers), persistent_decode_bytes(p));
  }

  void attention(const AttentionParams& p) override { run_attention(p, nullptr, false); }

  // Prefill with GEMMs: the attention writes its rows in Wo's 16-bit type straight into the o_proj GEMM's input
  // (half_activations), instead of fp32 rows that the GEMM then converts: at 4,096 tokens of the 376M EC shape
  // 34 MB written + 34 MB read + 17 MB written become 17 MB written, per layer.
  void attention_out_proj(const AttentionParams& a, const MatmulParams& o) override {
    const bool fits = half_act_ && !precise_matmul_ && o.x == a.out && o.n == a.batch.n_tokens &&
                      !use_matvec(o.n, o.w, o.x) && !decode_kernel_for(a.batch.n_tokens, a.batch.n_seqs) &&
                      o.w.cols == int64_t(a.n_q_heads) * (a.imag ? 2 : 1) * a.head_dim;
    if (!fits) return Backend::attention_out_proj(a, o);
    require_matrix(o.w, "attention_out_proj", "wo");
    void* xh = scratch(size_t(o.n) * size_t(o.w.cols) * 2);
    run_attention(a, xh, o.w.dtype == DType::BF16);
    prof_.start(stream_);
    gemm(xh, o.w, o.out, o.n, o.accumulate, 1);
    after_op(fmt::format("gemm [{}x{}] n={} (16-bit input from the attention)", o.w.rows, o.w.cols, o.n),
             matmul_bytes(o.w, o.n));
  }

  // Whether a batch runs the decode attention kernel (flash-decoding) rather than the prefill one.
  bool decode_kernel_for(int n_tokens, int n_seqs) const {
    if (attention_ != CudaAttentionKernel::Auto) return attention_ == CudaAttentionKernel::Decode;
    return n_tokens <= kDecodeMaxTokensPerSeq * std::max(n_seqs, 1);
  }

  // The attention of p; out_half (prefill kernel only): its rows in 16 bits there instead of p.out.
  void run_attention(const AttentionParams& p, void* out_half, bool out_bf16) {
    check_cache(p.cache, p.layer, "attention");
    if (p.n_kv_heads != p.cache.n_kv_heads || p.head_dim != p.cache.head_dim)
      fail("cuda attention: n_kv_heads/head_dim {}/{} differ from the cache's {}/{}", p.n_kv_heads, p.head_dim,
           p.cache.n_kv_heads, p.cache.head_dim);
    const size_t layer_off = size_t(p.layer) * p.cache.layer_stride();
    AttentionPagedLaunch l{};
    l.q = p.q;
    l.q_row_stride = p.q_row_stride;
    l.out = p.out;
    l.cache_k = static_cast<const __half*>(p.cache.k) + layer_off;
    l.cache_v = static_cast<const __half*>(p.cache.v) + layer_off;
    l.n_blocks = p.cache.n_blocks;
    l.block_size = p.cache.block_size;
    l.positions = p.batch.positions;
    l.seq_of_token = p.batch.seq_of_token;
    l.block_table = p.batch.block_table;
    l.max_blocks_per_seq = p.batch.max_blocks_per_seq;
    l.n_tokens = p.batch.n_tokens;
    l.n_seqs = p.batch.n_seqs;
    l.max_pos = p.batch.max_pos;
    l.n_q_heads = p.n_q_heads;
    l.n_kv_heads = p.n_kv_heads;
    l.head_dim = p.head_dim;
    l.imag = p.imag;
    l.scale = p.scale;
    if (l.n_tokens <= 0) return;
    // K and V bytes (f16) up to the furthest position, per token for decode (an upper bound per token)
    const double kv_bytes = double(l.max_pos + 1) * l.n_kv_heads * l.head_dim * 4;
    prof_.start(stream_);
    l.out_half = out_half;
    l.out_half_bf16 = out_bf16;
    if (decode_kernel_for(l.n_tokens, l.n_seqs)) {
      l.pdl = pdl_;
      l.history_cached = p.batch.history_cached && prefetch_history_;
      l.prefetch = l2_prefetch_of(p.prefetch, 2);
      // its own cache rows too, for a context whose K/V (all tokens and kv heads) fits well inside the L2
      l.prefetch_history_l2 = (l2_prefetch_ & 4) != 0 && l.history_cached && kv_bytes * l.n_tokens <= kHistoryPrefetchMaxBytes;
      AttentionDecodePlan plan = plan_attention_decode_paged(l, num_sms_, decode_min_chunk_);
      plan.tensor_cores = decode_mma_;
      if (merge_last_block_ && size_t(l.n_tokens) * size_t(l.n_kv_heads) <= kSplitCounters)
        plan.split_counters = split_counters_;
      void* ws = plan.scratch_bytes > 0 ? scratch(plan.scratch_bytes) : nullptr;
      launch_attention_decode_paged(l, plan, ws, stream_);
      after_op(fmt::format("attention (decode, {} splits)", plan.n_splits), kv_bytes * l.n_tokens);
    } else {
      launch_attention_prefill_paged(l, {num_sms_, prefill_sm90_ && is_sm90_, prefill_ws_}, stream_);
      after_op("attention (prefill)", kv_bytes * l.n_seqs);
    }
  }

  void swiglu(const SwigluParams& p) override {
    prof_.start(stream_);
    launch_swiglu({p.gate, p.up, p.in_stride, p.out, p.n, p.dim}, stream_);
    after_op("swiglu", double(p.n) * p.dim * 12);
  }

  void add(const AddParams& p) override {
    prof_.start(stream_);
    launch_add({p.x, p.y, p.count}, stream_);
    after_op("add", double(p.count) * 12);
  }

  void gather_rows(const GatherRowsParams& p) override {
    prof_.start(stream_);
    launch_gather_rows({p.x, p.rows, p.out, p.n, p.dim, p.stride()}, stream_);
    after_op("gather_rows", double(p.n) * p.dim * 8);
  }

  void argmax(const ArgmaxParams& p) override {
    void* ws = scratch(argmax_scratch_bytes(p.n));
    prof_.start(stream_);
    launch_argmax({p.logits, p.out, p.n, p.vocab}, ws, stream_);
    after_op("argmax", double(p.n) * p.vocab * 4);
  }

  void nll(const NllParams& p) override {
    prof_.start(stream_);
    launch_nll({p.logits, p.targets, p.out, p.n, p.vocab}, stream_);
    after_op("nll", double(p.n) * p.vocab * 4);
  }

 private:
  // A device buffer of at least `bytes`, valid until the next call; grows (after draining the stream,
  // since queued kernels may still use the old one).
  void* scratch(size_t bytes) {
    if (bytes > scratch_bytes_) {
      if (graphs_.recording())  // a recorded step must find its scratch sized by the eager run before it
        fail("cuda: scratch must grow from {} to {} bytes while recording a graph (internal error)", scratch_bytes_, bytes);
      graphs_.clear();  // recorded graphs point into the old buffer
      const size_t want = (std::max(bytes, scratch_bytes_ * 3 / 2) + kMiB - 1) / kMiB * kMiB;
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      release(scratch_);
      scratch_ = nullptr;
      scratch_bytes_ = 0;
      scratch_ = alloc(want);
      scratch_bytes_ = want;
    }
    return scratch_;
  }

  // Copies `count` elements of dtype `src` (the concatenation of `host`) into dst (device) as `to` through the
  // pinned uploader, converting each chunk on the device from one of two staging areas in scratch, and waits. For an f16 target from bf16/f32
  // returns whether a value was outside the f16 range (dst then holds saturated values); false otherwise.
  bool upload_as(std::span<const HostSpan> host, DType src, DType to, size_t count, void* dst) {
    const size_t src_size = dtype_size(src), dst_size = dtype_size(to);
    char* const out = static_cast<char*>(dst);
    if (src == to) {
      uploader_.copy(host, count * src_size, stream_, [&](int, size_t off) { return out + off; },
                     [](int, size_t, size_t) {});
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      return false;
    }
    const size_t stage_bytes = std::min(count * src_size, uploader_.chunk_bytes());
    const size_t stage_pitch = (stage_bytes + 255) / 256 * 256;
    char* staging = static_cast<char*>(scratch(2 * stage_pitch + sizeof(int)));  // [2][stage_pitch], flag
    int* overflow = to == DType::F16 ? reinterpret_cast<int*>(staging + 2 * stage_pitch) : nullptr;
    if (overflow) CUDA_CHECK(cudaMemsetAsync(overflow, 0, sizeof(int), stream_));
    uploader_.copy(
        host, count * src_size, stream_, [&](int b, size_t) { return staging + b * stage_pitch; },
        [&](int b, size_t off, size_t n) {
          ConvertLaunch c{staging + b * stage_pitch, out + off / src_size * dst_size, n / src_size};
          c.overflow = overflow;
          if (to == DType::F16) {
            (src == DType::F32 ? launch_convert_f32_to_f16 : launch_convert_bf16_to_f16)(c, stream_);
          } else if (to == DType::BF16) {
            (src == DType::F32 ? launch_convert_f32_to_bf16 : launch_convert_f16_to_bf16)(c, stream_);
          } else {
            (src == DType::F16 ? launch_convert_f16_to_f32 : launch_convert_bf16_to_f32)(c, stream_);
          }
        });
    int flag = 0;
    if (overflow) CUDA_CHECK(cudaMemcpyAsync(&flag, overflow, sizeof(int), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return flag != 0;
  }

  // out[n, rows] (+)= Σ_parts x_part[n, cols] · Wᵀ through cuBLAS, x (xh) in the matrix's dtype, bf16 or f16
  // (parts: 1, or 2 = hi + lo halves [n·cols] apart); fp32 C and compute. Column-major view: W row-major
  // [rows, cols] is [cols, rows] (lda = cols); x row-major [n, cols] is [cols, n] (ldb = cols); out [rows, n]
  // (ldc = rows).
  void gemm(const void* xh, const Weight& w, float* out, int n, bool accumulate, int parts) {
    const int rows = int(w.rows), cols = int(w.cols);
    const size_t count = size_t(n) * cols;
    const cudaDataType_t type = w.dtype == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
    const float one = 1.f, zero = 0.f;
    for (int part = 0; part < parts; ++part)
      CUBLAS_CHECK(cb_->gemm_ex(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &one, w.data, type, cols,
                                static_cast<const char*>(xh) + part * count * 2, type, cols,
                                part == 0 && !accumulate ? &zero : &one, out, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
  }

  // out[n, rows] = x[n, cols] · Wᵀ in W's 16-bit type (fp32 compute, one rounding at the end; in f16 a value
  // beyond ±65504 becomes ±inf), x (xh) in W's type; same column-major view as gemm.
  void gemm_half_out(const void* xh, const Weight& w, void* out, int n) {
    const int rows = int(w.rows), cols = int(w.cols);
    const cudaDataType_t type = w.dtype == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
    const float one = 1.f, zero = 0.f;
    CUBLAS_CHECK(cb_->gemm_ex(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &one, w.data, type, cols, xh, type,
                              cols, &zero, out, type, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // After every op: its profile record (when profiling) and, with ROPEPP_CUDA_SYNC=1, a synchronisation
  // so that a fault is reported at the op that caused it.
  void after_op(const std::string& op, double bytes) {
    if (prof_.on()) prof_.stop(stream_, op, bytes);
    if (!sync_) return;
    const cudaError_t e = cudaStreamSynchronize(stream_);
    if (e != cudaSuccess) cuda_fail(e, op.c_str(), __FILE__, __LINE__);
  }

  // The cache slots of a batch's tokens in one layer (kv_append and rope_kv_append).
  KvAppendPagedLaunch paged_slots(const KVCacheView& c, int layer, const BatchView& b, const char* op) const {
    check_cache(c, layer, op);
    const size_t layer_off = size_t(layer) * c.layer_stride();
    KvAppendPagedLaunch l{};
    l.cache_k = static_cast<__half*>(c.k) + layer_off;
    l.cache_v = static_cast<__half*>(c.v) + layer_off;
    l.n_blocks = c.n_blocks;
    l.n_kv_heads = c.n_kv_heads;
    l.block_size = c.block_size;
    l.head_dim = c.head_dim;
    l.positions = b.positions;
    l.seq_of_token = b.seq_of_token;
    l.block_table = b.block_table;
    l.max_blocks_per_seq = b.max_blocks_per_seq;
    l.n = b.n_tokens;
    return l;
  }

  // rope_kv_append's launch: the batch's cache slots, the qkv rows, the rope tables.
  RopeKvAppendLaunch rope_kv_launch(const RopeKvAppendParams& p, const char* op) const {
    RopeKvAppendLaunch l;
    static_cast<KvAppendPagedLaunch&>(l) = paged_slots(p.cache, p.layer, p.batch, op);
    l.qkv = p.qkv;
    l.n_q_heads = p.n_q_heads;
    l.cos = p.cos;
    l.sin = p.sin;
    l.positions = p.positions;
    return l;
  }

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
  MatvecLaunch normed_matvec(const NormMatmulParams& p, float* out) {
    MatvecLaunch l{p.x, p.w.data, out, p.n, int(p.w.rows), int(p.w.cols)};
    l.input = MatvecInput::RmsNorm;
    l.norm_w = static_cast<const float*>(p.norm.data);
    l.eps = p.eps;
    l.pdl = pdl_;
    l.max_blocks = matvec_grid_cap(p.w);
    l.w_type = half_type(p.w);
    l.prefetch = l2_prefetch_of(p.prefetch, 1);
    return l;
  }
  // The L2 prefetch range of a hinted weight for a kernel whose bit of options.l2_prefetch is `bit`: none when the
  // bit is off, for no hint, or for a matrix above the per-layer size (the lm_head would only evict the layers').
  L2Prefetch l2_prefetch_of(const Weight& w, int bit) const {
    if ((l2_prefetch_ & bit) == 0 || w.data == nullptr || w.rows <= 1) return {};
    const size_t bytes = size_t(w.rows) * size_t(w.cols) * dtype_size(w.dtype);
    return bytes <= kMatvecCapMaxBytes ? L2Prefetch{w.data, bytes} : L2Prefetch{};
  }
  // MatvecLaunch::max_blocks for w: options.matvec_blocks_per_sm · SMs for a per-layer matrix, else no cap.
  int matvec_grid_cap(const Weight& w) const {
    return size_t(w.rows * w.cols) * 2 <= kMatvecCapMaxBytes ? matvec_max_blocks_ : 0;
  }
  static double matmul_bytes(const Weight& w, int n) {
    return double(w.rows) * double(w.cols) * 2 + double(n) * double(w.rows + w.cols) * 4;
  }

  // ROPEPP_CUDA_PERSISTENT_TRACE=1: where block 0 of the persistent decode kernel spent its time, per step.
  void report_persistent_trace() {
    unsigned long long t[kDecodeTraceSlots] = {};
    if (cudaMemcpy(t, persistent_trace_, sizeof t, cudaMemcpyDeviceToHost) != cudaSuccess || t[10] == 0) return;
    const double steps = double(t[10]);
    const char* names[] = {"qkv", "o_proj", "gate_up", "down", "attention"};
    std::string line;
    for (int i = 0; i < 5; ++i)
      line += fmt::format(" | {} {:.1f} + barrier {:.1f}", names[i], double(t[i]) / steps / 1e3, double(t[5 + i]) / steps / 1e3);
    spdlog::info("persistent decode trace, us per step over {} steps (block 0; work + wait before){}", t[10], line);
  }

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
  bool prefill_ws_ = false;     // options.prefill_warp_specialized
  bool decode_mma_ = true;      // options.decode_mma
  bool fused_decode_ = true;    // qkv_rope_kv_append / feed_forward as fused matvecs (options.fused_decode)
  bool half_act_ = true;        // 16-bit gate|up and attention output in prefill (options.half_activations)
  int decode_min_chunk_;        // options.decode_min_chunk
  bool prefetch_history_ = true;  // options.decode_prefetch_history
  bool merge_last_block_ = false;  // options.decode_merge_in_last_block
  int l2_prefetch_ = 0;         // options.l2_prefetch: bits 1 matvecs, 2 decode attention (weights), 4 (its K/V)
  static constexpr double kHistoryPrefetchMaxBytes = 8.0 * kMiB;
  bool graph_scoring_ = false;  // options.graph_scoring
  static constexpr size_t kSplitCounters = 4096;  // (token, kv head) pairs the last-block merge serves
  unsigned* split_counters_ = nullptr;  // [kSplitCounters] zero between decode attention launches
  int matvec_max_blocks_ = 0;   // options.matvec_blocks_per_sm · SMs (0: no grid cap)
  static constexpr size_t kMatvecCapMaxBytes = size_t(64) << 20;  // the cap is for per-layer matrices
  bool persistent_available_ = false;  // the persistent decode kernel is built for this GPU
  bool persistent_on_ = false;  // options.persistent_decode (and available)
  PersistentDecodeLimits persistent_;
  unsigned long long* persistent_trace_ = nullptr;  // [kDecodeTraceSlots] (options.persistent_decode_trace)
  std::string persistent_why_;  // the last reason a decode step did not fit the persistent kernel (logged once)
  CudaOpProfiler prof_;
  std::unordered_map<void*, size_t> sizes_;  // every live allocation, for allocated_bytes()
  size_t allocated_ = 0;
};

CudaAttentionKernel attention_from_env() {
  const char* e = std::getenv("ROPEPP_CUDA_ATTENTION");
  if (!e || !*e || std::strcmp(e, "auto") == 0) return CudaAttentionKernel::Auto;
  if (std::strcmp(e, "decode") == 0) return CudaAttentionKernel::Decode;
  if (std::strcmp(e, "prefill") == 0) return CudaAttentionKernel::Prefill;
  fail("ROPEPP_CUDA_ATTENTION={}: expected auto, decode or prefill", e);
}

DType matrix_dtype_from_env() {
  const char* e = std::getenv("ROPEPP_CUDA_MATRIX_DTYPE");
  if (!e || !*e || strcasecmp(e, "f16") == 0) return DType::F16;
  if (strcasecmp(e, "bf16") == 0) return DType::BF16;
  fail("ROPEPP_CUDA_MATRIX_DTYPE={}: expected f16 (the default) or bf16 (the dtype of the resident weight matrices)", e);
}

}  // namespace

// The CUDA backend behind `backend` for the setter `fn`; throws Error naming fn when it is another backend.
static CudaBackend& as_cuda(Backend& backend, const char* fn) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  if (!cuda) fail("{}: backend {} is not a CUDA backend", fn, backend.name());
  return *cuda;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

std::unique_ptr<Backend> make_cuda_backend(int device_index) {
  CudaBackendOptions o;
  o.device = device_index;
  o.attention = attention_from_env();
  o.sync_after_each_op = env_flag("ROPEPP_CUDA_SYNC", false);
  o.precise_matmul = env_flag("ROPEPP_CUDA_PRECISE_MATMUL", false);
  o.graphs = env_flag("ROPEPP_CUDA_GRAPHS", true);
  o.pdl = env_flag("ROPEPP_CUDA_PDL", true);
  o.fused_decode = env_flag("ROPEPP_CUDA_FUSED_DECODE", true);
  o.prefill_sm90 = env_flag("ROPEPP_CUDA_PREFILL_SM90", true);
  o.half_activations = env_flag("ROPEPP_CUDA_HALF_ACTIVATIONS", true);
  o.prefill_warp_specialized = env_flag("ROPEPP_CUDA_PREFILL_WS", false);
  o.decode_mma = env_flag("ROPEPP_CUDA_DECODE_MMA", true);
  o.decode_prefetch_history = env_flag("ROPEPP_CUDA_DECODE_PREFETCH", true);
  o.decode_merge_in_last_block = env_flag("ROPEPP_CUDA_DECODE_LAST_BLOCK_MERGE", false);
  o.persistent_decode = env_flag("ROPEPP_CUDA_PERSISTENT_DECODE", false);
  if (const char* e = std::getenv("ROPEPP_CUDA_PERSISTENT_DECODE_MAX_CTX"); e && *e)
    o.persistent_decode_max_ctx = std::atoi(e);
  o.persistent_decode_trace = env_flag("ROPEPP_CUDA_PERSISTENT_TRACE", false);
  if (const char* e = std::getenv("ROPEPP_CUDA_PERSISTENT_STAGES"); e && *e) o.persistent_decode_stages = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_DECODE_MIN_CHUNK"); e && *e) o.decode_min_chunk = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_MATVEC_BLOCKS_PER_SM"); e && *e) o.matvec_blocks_per_sm = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_L2_PREFETCH"); e && *e) o.l2_prefetch = std::atoi(e);
  o.graph_scoring = env_flag("ROPEPP_CUDA_GRAPH_SCORING", false);
  o.matrix_dtype = matrix_dtype_from_env();
  return make_cuda_backend(o);
}

void set_cuda_attention_kernel(Backend& backend, CudaAttentionKernel kernel) {
  as_cuda(backend, "set_cuda_attention_kernel").set_attention_kernel(kernel);
}

void set_cuda_prefill_sm90(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_prefill_sm90").set_prefill_sm90(on);
}

void set_cuda_prefill_warp_specialized(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_prefill_warp_specialized").set_prefill_warp_specialized(on);
}

void set_cuda_decode_mma(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_decode_mma").set_decode_mma(on);
}

void set_cuda_decode_merge_in_last_block(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_decode_merge_in_last_block").set_decode_merge_in_last_block(on);
}

void set_cuda_matvec_max_blocks(Backend& backend, int blocks) {
  as_cuda(backend, "set_cuda_matvec_max_blocks").set_matvec_max_blocks(blocks);
}

void set_cuda_half_activations(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_half_activations").set_half_activations(on);
}

void set_cuda_graphs(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_graphs").set_graphs(on);
}

bool set_cuda_persistent_decode(Backend& backend, bool on) {
  return as_cuda(backend, "set_cuda_persistent_decode").set_persistent_decode(on);
}

void set_cuda_l2_prefetch(Backend& backend, int bits) { as_cuda(backend, "set_cuda_l2_prefetch").set_l2_prefetch(bits); }

void set_cuda_graph_scoring(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_graph_scoring").set_graph_scoring(on);
}

size_t cuda_graph_count(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda ? cuda->graph_count() : 0;
}

void set_cuda_precise_matmul(Backend& backend, bool precise) {
  as_cuda(backend, "set_cuda_precise_matmul").set_precise_matmul(precise);
}

void set_cuda_matrix_dtype(Backend& backend, DType dtype) {
  as_cuda(backend, "set_cuda_matrix_dtype").set_matrix_dtype(dtype);
}

}  // namespace ropepp
