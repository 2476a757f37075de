// graph_cache.cpp: see graph_cache.h.
#include "graph_cache.h"

#include "cuda_check.cuh"

namespace ropepp {

CudaGraphCache::~CudaGraphCache() { clear(); }

void CudaGraphCache::clear() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);  // never throws (destructors call it)
  graphs_.clear();
}

bool CudaGraphCache::replay(uint64_t key, cudaStream_t stream) {
  const auto it = graphs_.find(key);
  if (it == graphs_.end()) return false;
  CUDA_CHECK(cudaGraphLaunch(it->second, stream));
  return true;
}

void CudaGraphCache::begin(uint64_t key, cudaStream_t stream) {
  if (recording_) cuda_unsupported("graph capture", "nested recordings", 2, "1");
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  recording_ = true;
  key_ = key;
}

void CudaGraphCache::end(cudaStream_t stream, bool launch) {
  if (!recording_) return;
  recording_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t e = cudaStreamEndCapture(stream, &graph);
  if (e != cudaSuccess || !graph || !launch) {
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // a failed capture leaves an error behind; the failing op reported its own
    if (launch) CUDA_CHECK(e);
    return;
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ie = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  CUDA_CHECK(ie);
  if (graphs_.size() >= capacity_) clear();  // a long generation moves through context buckets: start over
  graphs_[key_] = exec;
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
}

}  // namespace ropepp
