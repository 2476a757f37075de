// graph_cache.h: recorded CUDA graphs of op sequences, keyed by the caller (Backend::graph_* in backend.h).
// The forward pass records a decode step once per shape and replays it per token: one launch instead of
// ~70, and no host work between the kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <unordered_map>

namespace ropepp {

class CudaGraphCache {
 public:
  explicit CudaGraphCache(size_t capacity) : capacity_(capacity) {}
  ~CudaGraphCache();
  CudaGraphCache(const CudaGraphCache&) = delete;
  CudaGraphCache& operator=(const CudaGraphCache&) = delete;

  bool replay(uint64_t key, cudaStream_t stream);  // false when nothing is recorded under key
  void begin(uint64_t key, cudaStream_t stream);    // ops on `stream` are recorded from here
  // Ends the recording; with launch, instantiates it, keeps it under the key and launches it once.
  void end(cudaStream_t stream, bool launch);
  bool recording() const { return recording_; }
  // Forget every graph (they hold pointers, e.g. into a scratch buffer that is about to be reallocated).
  void clear();
  size_t size() const { return graphs_.size(); }

 private:
  size_t capacity_;
  std::unordered_map<uint64_t, cudaGraphExec_t> graphs_;
  bool recording_ = false;
  uint64_t key_ = 0;
};

}  // namespace ropepp
