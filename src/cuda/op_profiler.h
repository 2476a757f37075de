// op_profiler.h: per-op GPU times for `ropepp bench`'s decode breakdown (Backend::set_profiling). Each op
// records a CUDA event before and after its kernels; take() waits and returns (op, µs, bytes) in order.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "backend.h"

namespace ropepp {

class CudaOpProfiler {
 public:
  ~CudaOpProfiler();
  bool on() const { return on_; }
  void set(bool on) { on_ = on; }
  void start(cudaStream_t stream);                                  // before an op's launches
  void stop(cudaStream_t stream, std::string op, double bytes);    // after them
  std::vector<OpTiming> take(cudaStream_t stream);

 private:
  cudaEvent_t event(size_t i);
  struct Rec {
    std::string op;
    double bytes;
    size_t start, stop;  // indices into events_
  };
  bool on_ = false;
  std::vector<cudaEvent_t> events_;  // reused across take()s
  size_t used_ = 0;
  size_t pending_start_ = 0;
  std::vector<Rec> recs_;
};

}  // namespace ropepp
