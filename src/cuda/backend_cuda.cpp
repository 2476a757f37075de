// backend_cuda.cpp: the CUDA backend's construction, memory, weight loading and graphs (the class:
// backend_cuda_impl.h; its ops: backend_cuda_ops.cpp), the options read from the environment and the public
// functions of backend_cuda.h.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <strings.h>

#include "backend_cuda_impl.h"
#include "convert.cuh"
#include "cuda_check.cuh"

namespace ropepp {
namespace cuda_impl {

CudaBackend::CudaBackend(const CudaBackendOptions& o)
    : device_(o.device), attention_(o.attention), sync_(o.sync_after_each_op), precise_matmul_(o.precise_matmul),
      matrix_dtype_(checked_matrix_dtype(o.matrix_dtype)), graphs_on_(o.graphs), fused_decode_(o.fused_decode),
      half_act_(o.half_activations),
      decode_min_chunk_(o.decode_min_chunk), decode_split_align_(o.decode_split_align) {
  if (decode_min_chunk_ < 1 || decode_min_chunk_ > (1 << 20))
    fail("cuda: decode attention min chunk {} (ROPEPP_CUDA_DECODE_MIN_CHUNK): expected 1..1048576 positions",
         decode_min_chunk_);
  if (decode_split_align_ < 16 || decode_split_align_ > 1024 || decode_split_align_ % 16 != 0)
    fail("cuda: decode attention split alignment {} (ROPEPP_CUDA_DECODE_SPLIT_ALIGN): expected a multiple of 16 in "
         "16..1024", decode_split_align_);
  cublas_load_async();  // cuBLAS loads on its own thread while the CUDA context is created
  // Where the backend's start-up goes (-v: the largest part of a short run's load): driver, context, cuBLAS.
  using clock = std::chrono::steady_clock;
  auto t = clock::now();
  auto lap = [&t] {
    const auto now = clock::now();
    const double s = std::chrono::duration<double>(now - t).count();
    t = now;
    return s;
  };
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    fail("cuda: no usable CUDA device ({}: {}); use --device cpu", cudaGetErrorName(e),
         e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
  }
  if (device_ < 0 || device_ >= count) fail("cuda: device index {} out of range (found {} devices)", device_, count);
  const double t_driver = lap();
  CUDA_CHECK(cudaSetDevice(device_));  // creates the primary context (CUDA 12+)
  const double t_context = lap();
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
  num_sms_ = prop.multiProcessorCount;
  gpu_name_ = prop.name;
  pdl_ = o.pdl && prop.major >= 9;
  is_sm90_ = prop.major == 9 && prop.minor == 0;
  bulk_copies_ = prop.major >= 9;
  prefill_sm90_ = o.prefill_sm90;
  prefill_ws_ = o.prefill_warp_specialized;
  prefill_ws_qreg_ = o.prefill_ws_q_registers;
  prefill_tma_ = o.prefill_tma;
  decode_mma_ = o.decode_mma;
  matvec_max_blocks_ = std::max(0, o.matvec_blocks_per_sm) * num_sms_;
  matvec_max_blocks_large_ = std::max(0, o.matvec_blocks_per_sm_large) * num_sms_;
  matvec_wide_pairs_ = o.matvec_wide_pairs;
  if (o.matvec_smem_kb < 0 || size_t(o.matvec_smem_kb) * 1024 > prop.sharedMemPerBlockOptin)
    fail("cuda: matvec shared-memory budget {} KB (ROPEPP_CUDA_MATVEC_SMEM_KB): expected 0..{} on {} (its shared "
         "memory per block)", o.matvec_smem_kb, prop.sharedMemPerBlockOptin / 1024, gpu_name_);
  set_matvec_smem(o.matvec_smem_kb, 0);
  matvec_smem_ops_ = o.matvec_smem_ops;
  matvec_max_warps_ = matvec_max_warps_default_ = std::max(0, o.matvec_ks_fit_blocks) * 8 * num_sms_;
  matvec_deep_ = o.matvec_deep;
  matvec_l2_rest_ = o.matvec_l2_rest;
  matvec_l2_tail_ = o.matvec_l2_tail;
  if (o.l2_next_ffn_pct < 0 || o.l2_next_ffn_pct > 100)
    fail("cuda: ROPEPP_CUDA_L2_NEXT_FFN={}: expected a percentage 0 .. 100 (of the rows prefetched)", o.l2_next_ffn_pct);
  if (o.l2_next_qkv_pct < -1 || o.l2_next_qkv_pct > 100)
    fail("cuda: ROPEPP_CUDA_L2_NEXT_QKV={}: expected -1 (auto) or a percentage 0 .. 100 (of the rows prefetched)",
         o.l2_next_qkv_pct);
  l2_bytes_ = size_t(std::max(0, prop.l2CacheSize));
  set_l2_next(o.l2_next_ffn_pct, o.l2_next_qkv_pct);
  probe_skip_ = cuda_probe_skip_bits(o.probe_skip);  // (warns when set)
  matvec_late_trigger_ = o.matvec_late_trigger;
  decode_split_blocks_per_sm_ = std::clamp(o.decode_split_blocks_per_sm, 0, 64);
  decode_mma_shape_ = std::clamp(o.decode_mma_shape, 0, 5);
  decode_short_unsplit_ = std::max(0, o.decode_short_unsplit);
  decode_cluster_merge_ = std::max(0, o.decode_cluster_merge);
  fused_oproj_ = o.decode_fused_oproj;
  fused_oproj_rw_ = o.decode_fused_oproj_rows_per_warp;
  fused_oproj_late_ = o.decode_fused_oproj_late_trigger;
  fused_oproj_cluster_ = std::clamp(o.decode_fused_oproj_cluster, 1, 16);
  prefetch_history_ = o.decode_prefetch_history;
  merge_last_block_ = o.decode_merge_in_last_block;
  lm_head_argmax_ = o.lm_head_argmax;
  argmax_embed_ = o.argmax_embed;
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
  if (o.decode_fused_oproj_trace) {
    fused_oproj_trace_ = static_cast<unsigned long long*>(alloc(kFusedOProjTraceSlots * 8));
    CUDA_CHECK(cudaMemset(fused_oproj_trace_, 0, kFusedOProjTraceSlots * 8));
  }
  if (prop.major < 8)
    fail("cuda:{}: {} has compute capability {}.{}; the kernels need 8.0 or newer (bf16 tensor cores, cp.async)",
         device_, gpu_name_, prop.major, prop.minor);
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  const double t_stream = lap();
  cb_ = &cublas_api();  // loaded beside the context creation above
  const double t_cublas_load = lap();
  CUBLAS_CHECK(cb_->create(&cublas_));
  CUBLAS_CHECK(cb_->set_stream(cublas_, stream_));
  cublas_ws_ = alloc(kCublasWorkspace);
  CUBLAS_CHECK(cb_->set_workspace(cublas_, cublas_ws_, kCublasWorkspace));
  transfers_.init();
  split_counters_ = static_cast<unsigned*>(alloc(kSplitCounters * sizeof(unsigned)));
  CUDA_CHECK(cudaMemset(split_counters_, 0, kSplitCounters * sizeof(unsigned)));  // the kernels keep them 0
  const double t_buffers = lap();
  spdlog::debug("cuda: driver init {:.3f} s, context {:.3f} s, properties + stream {:.3f} s, waiting for the cuBLAS "
                "library {:.3f} s, cuBLAS handle + buffers {:.3f} s",
                t_driver, t_context, t_stream, t_cublas_load, t_buffers);
}

CudaBackend::~CudaBackend() {
  if (stream_) cudaStreamSynchronize(stream_);
  if (persistent_trace_) report_persistent_trace();
  if (fused_oproj_trace_) report_fused_oproj_trace();
  graphs_.clear();
  if (cublas_) cb_->destroy(cublas_);
  if (cublas_ws_) cudaFree(cublas_ws_);
  if (scratch_) cudaFree(scratch_);
  if (split_counters_) cudaFree(split_counters_);
  if (stream_) cudaStreamDestroy(stream_);
}

void* CudaBackend::alloc(size_t bytes) {
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

void CudaBackend::release(void* p) {
  if (!p) return;
  if (const cudaError_t e = cudaFree(p); e != cudaSuccess)
    spdlog::error("cuda:{}: cudaFree failed: {} ({})", device_, cudaGetErrorName(e), cudaGetErrorString(e));
  if (auto it = sizes_.find(p); it != sizes_.end()) {
    allocated_ -= it->second;
    sizes_.erase(it);
  }
}

Weight CudaBackend::load_weight(const void* host, DType dtype, int64_t rows, int64_t cols) {
  uint64_t count = 0;
  if (rows <= 0 || cols <= 0 || mul_overflows(uint64_t(rows), uint64_t(cols), &count))
    fail("cuda load_weight: bad shape [{}, {}]", rows, cols);
  const HostSpan part{host, size_t(count) * dtype_size(dtype)};
  return load_weight_concat({&part, 1}, dtype, rows, cols);
}

Weight CudaBackend::load_weight_concat(std::span<const HostSpan> parts, DType dtype, int64_t rows, int64_t cols) {
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

void* CudaBackend::scratch(size_t bytes) {
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

bool CudaBackend::upload_as(std::span<const HostSpan> host, DType src, DType to, size_t count, void* dst) {
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

void CudaBackend::report_persistent_trace() {
  unsigned long long t[kDecodeTraceSlots] = {};
  if (cudaMemcpy(t, persistent_trace_, sizeof t, cudaMemcpyDeviceToHost) != cudaSuccess || t[10] == 0) return;
  const double steps = double(t[10]);
  const char* names[] = {"qkv", "o_proj", "gate_up", "down", "attention"};
  std::string line;
  for (int i = 0; i < 5; ++i)
    line += fmt::format(" | {} {:.1f} + barrier {:.1f}", names[i], double(t[i]) / steps / 1e3, double(t[5 + i]) / steps / 1e3);
  spdlog::info("persistent decode trace, us per step over {} steps (block 0; work + wait before){}", t[10], line);
}

void CudaBackend::report_fused_oproj_trace() {
  unsigned long long t[kFusedOProjTraceSlots] = {};
  if (cudaMemcpy(t, fused_oproj_trace_, sizeof t, cudaMemcpyDeviceToHost) != cudaSuccess) return;
  const unsigned long long n = t[kFusedOProjTracePhases];
  if (n == 0) return;
  const char* names[kFusedOProjTracePhases] = {"loads issued", "PDL wait", "K/V+q landed", "partial attention",
                                               "cluster barrier", "merged", "Wo products", "cluster barrier 2",
                                               "x written, end"};
  std::string line;
  for (int i = 0; i < kFusedOProjTracePhases; ++i) line += fmt::format(" | {} {:.2f}", names[i], double(t[i]) / n / 1e3);
  spdlog::info("fused attention + o_proj trace, us per launch over {} launches (block 0, phase ends){}", n, line);
}

}  // namespace cuda_impl

using cuda_impl::CudaBackend;

namespace {

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
  o.prefill_warp_specialized = env_flag("ROPEPP_CUDA_PREFILL_WS", o.prefill_warp_specialized);
  o.prefill_ws_q_registers = env_flag("ROPEPP_CUDA_PREFILL_WS_QREG", o.prefill_ws_q_registers);
  o.prefill_tma = env_flag("ROPEPP_CUDA_PREFILL_TMA", true);
  o.decode_mma = env_flag("ROPEPP_CUDA_DECODE_MMA", true);
  o.decode_prefetch_history = env_flag("ROPEPP_CUDA_DECODE_PREFETCH", true);
  o.decode_merge_in_last_block = env_flag("ROPEPP_CUDA_DECODE_LAST_BLOCK_MERGE", false);
  o.lm_head_argmax = env_flag("ROPEPP_CUDA_LM_HEAD_ARGMAX", o.lm_head_argmax);
  o.argmax_embed = env_flag("ROPEPP_CUDA_ARGMAX_EMBED", o.argmax_embed);
  o.persistent_decode = env_flag("ROPEPP_CUDA_PERSISTENT_DECODE", false);
  if (const char* e = std::getenv("ROPEPP_CUDA_PERSISTENT_DECODE_MAX_CTX"); e && *e)
    o.persistent_decode_max_ctx = std::atoi(e);
  o.persistent_decode_trace = env_flag("ROPEPP_CUDA_PERSISTENT_TRACE", false);
  if (const char* e = std::getenv("ROPEPP_CUDA_PERSISTENT_STAGES"); e && *e) o.persistent_decode_stages = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_DECODE_MIN_CHUNK"); e && *e) o.decode_min_chunk = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_DECODE_SPLIT_ALIGN"); e && *e) o.decode_split_align = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_DECODE_MMA_SHAPE"); e && *e) o.decode_mma_shape = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_DECODE_SHORT_UNSPLIT"); e && *e) o.decode_short_unsplit = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_DECODE_CLUSTER"); e && *e) o.decode_cluster_merge = std::atoi(e);
  o.decode_fused_oproj = env_flag("ROPEPP_CUDA_DECODE_FUSED_OPROJ", o.decode_fused_oproj);
  o.decode_fused_oproj_late_trigger = env_flag("ROPEPP_CUDA_DECODE_FUSED_OPROJ_LATE", false);
  if (const char* e = std::getenv("ROPEPP_CUDA_DECODE_FUSED_OPROJ_CLUSTER"); e && *e)
    o.decode_fused_oproj_cluster = std::atoi(e);
  o.decode_fused_oproj_trace = env_flag("ROPEPP_CUDA_DECODE_FUSED_OPROJ_TRACE", false);
  if (const char* e = std::getenv("ROPEPP_CUDA_DECODE_FUSED_OPROJ_RW"); e && *e)
    o.decode_fused_oproj_rows_per_warp = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_DECODE_SPLIT_BLOCKS_PER_SM"); e && *e)
    o.decode_split_blocks_per_sm = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_MATVEC_BLOCKS_PER_SM"); e && *e) o.matvec_blocks_per_sm = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_MATVEC_BLOCKS_PER_SM_LARGE"); e && *e)
    o.matvec_blocks_per_sm_large = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_MATVEC_WIDE_PAIRS"); e && *e) o.matvec_wide_pairs = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_MATVEC_KS_FIT"); e && *e) o.matvec_ks_fit_blocks = std::atoi(e);
  o.matvec_deep = env_flag("ROPEPP_CUDA_MATVEC_DEEP", o.matvec_deep);
  o.matvec_l2_rest = env_flag("ROPEPP_CUDA_MATVEC_L2_REST", false);
  o.matvec_l2_tail = env_flag("ROPEPP_CUDA_MATVEC_L2_TAIL", o.matvec_l2_tail);
  if (const char* e = std::getenv("ROPEPP_CUDA_L2_NEXT_FFN"); e && *e) o.l2_next_ffn_pct = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_L2_NEXT_QKV"); e && *e) o.l2_next_qkv_pct = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_PROBE_SKIP"); e && *e) o.probe_skip = e;
  if (const char* e = std::getenv("ROPEPP_CUDA_MATVEC_LATE_TRIGGER"); e && *e) o.matvec_late_trigger = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_MATVEC_SMEM_KB"); e && *e) o.matvec_smem_kb = std::atoi(e);
  if (const char* e = std::getenv("ROPEPP_CUDA_MATVEC_SMEM_OPS"); e && *e) o.matvec_smem_ops = std::atoi(e);
  o.graph_scoring = env_flag("ROPEPP_CUDA_GRAPH_SCORING", true);
  o.matrix_dtype = matrix_dtype_from_env();
  return make_cuda_backend(o);
}

void set_cuda_attention_kernel(Backend& backend, CudaAttentionKernel kernel) {
  as_cuda(backend, "set_cuda_attention_kernel").set_attention_kernel(kernel);
}

void set_cuda_prefill_sm90(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_prefill_sm90").set_prefill_sm90(on);
}

void set_cuda_prefill_warp_specialized(Backend& backend, bool on, bool q_in_registers) {
  as_cuda(backend, "set_cuda_prefill_warp_specialized").set_prefill_warp_specialized(on, q_in_registers);
}

void set_cuda_prefill_tma(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_prefill_tma").set_prefill_tma(on);
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

void set_cuda_matvec_max_warps(Backend& backend, int warps) {
  as_cuda(backend, "set_cuda_matvec_max_warps").set_matvec_max_warps(warps);
}

void set_cuda_matvec_smem(Backend& backend, int kb, int blocks) {
  as_cuda(backend, "set_cuda_matvec_smem").set_matvec_smem(kb, blocks);
}

void set_cuda_matvec_wide_pairs(Backend& backend, int bits) {
  as_cuda(backend, "set_cuda_matvec_wide_pairs").set_matvec_wide_pairs(bits);
}

void set_cuda_lm_head_argmax(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_lm_head_argmax").set_lm_head_argmax(on);
}

void set_cuda_decode_short_unsplit(Backend& backend, int positions) {
  as_cuda(backend, "set_cuda_decode_short_unsplit").set_decode_short_unsplit(positions);
}

bool set_cuda_decode_fused_oproj(Backend& backend, bool on) {
  CudaBackend& b = as_cuda(backend, "set_cuda_decode_fused_oproj");
  b.set_decode_fused_oproj(on);
  return b.decode_fused_oproj_available();
}

size_t cuda_fused_oproj_launches(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda ? cuda->fused_oproj_launches() : 0;
}

void set_cuda_decode_cluster_merge(Backend& backend, int positions) {
  as_cuda(backend, "set_cuda_decode_cluster_merge").set_decode_cluster_merge(positions);
}

void set_cuda_argmax_embed(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_argmax_embed").set_argmax_embed(on);
}

void set_cuda_matvec_l2_tail(Backend& backend, bool on) {
  as_cuda(backend, "set_cuda_matvec_l2_tail").set_matvec_l2_tail(on);
}

void set_cuda_l2_next(Backend& backend, int ffn_pct, int qkv_pct) {
  as_cuda(backend, "set_cuda_l2_next").set_l2_next(ffn_pct, qkv_pct);
}

void set_cuda_matvec_streaming(Backend& backend, bool deep, bool l2_rest, int late_trigger) {
  as_cuda(backend, "set_cuda_matvec_streaming").set_matvec_streaming(deep, l2_rest, late_trigger);
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

void set_cuda_decode_mma_shape(Backend& backend, int shape) {
  as_cuda(backend, "set_cuda_decode_mma_shape").set_decode_mma_shape(shape);
}

void set_cuda_decode_split_align(Backend& backend, int align) {
  as_cuda(backend, "set_cuda_decode_split_align").set_decode_split_align(align);
}

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
