// backend_cuda.h: options of the CUDA backend beyond make_cuda_backend(int) (declared in backend.h).
// Include only where ROPEPP_HAS_CUDA is defined.
#pragma once

#include <memory>

#include "backend.h"

namespace ropepp {

// Which attention kernel serves a batch. Auto picks decode (flash-decoding, split over the context) when
// a batch has few tokens per sequence and prefill (tiled flash attention on tensor cores) otherwise.
enum class CudaAttentionKernel { Auto, Decode, Prefill };

struct CudaBackendOptions {
  int device = 0;
  CudaAttentionKernel attention = CudaAttentionKernel::Auto;  // env ROPEPP_CUDA_ATTENTION=auto|decode|prefill
  bool sync_after_each_op = false;  // env ROPEPP_CUDA_SYNC=1: a fault is reported at the op that caused it
  // env ROPEPP_CUDA_PRECISE_MATMUL=1: above kMatvecMaxRows rows, x goes into cuBLAS as bf16 hi + lo parts
  // (two GEMMs, ~fp32-exact activations) instead of one bf16 rounding. Off: the usual bf16 GEMM.
  bool precise_matmul = false;
  bool graphs = true;               // env ROPEPP_CUDA_GRAPHS=0: never record/replay CUDA graphs
};

// Throws Error when no GPU/driver is usable or the device index is out of range.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);

// Switches the attention kernel of a CUDA backend (tests, debugging). Throws Error if `backend` is not CUDA.
void set_cuda_attention_kernel(Backend& backend, CudaAttentionKernel kernel);
void set_cuda_precise_matmul(Backend& backend, bool precise);
void set_cuda_graphs(Backend& backend, bool on);
size_t cuda_graph_count(const Backend& backend);  // graphs recorded and kept now

}  // namespace ropepp
