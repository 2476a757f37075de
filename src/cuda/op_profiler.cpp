// op_profiler.cpp: see op_profiler.h.
#include "op_profiler.h"

#include "cuda_check.cuh"

namespace ropepp {

CudaOpProfiler::~CudaOpProfiler() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

cudaEvent_t CudaOpProfiler::event(size_t i) {
  while (events_.size() <= i) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
  }
  return events_[i];
}

void CudaOpProfiler::start(cudaStream_t stream) {
  if (!on_) return;
  pending_start_ = used_++;
  CUDA_CHECK(cudaEventRecord(event(pending_start_), stream));
}

void CudaOpProfiler::stop(cudaStream_t stream, std::string op, double bytes) {
  if (!on_) return;
  const size_t e = used_++;
  CUDA_CHECK(cudaEventRecord(event(e), stream));
  recs_.push_back({std::move(op), bytes, pending_start_, e});
}

std::vector<OpTiming> CudaOpProfiler::take(cudaStream_t stream) {
  CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<OpTiming> out;
  for (const Rec& r : recs_) {
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, events_[r.start], events_[r.stop]));
    out.push_back({r.op, double(ms) * 1e3, r.bytes});
  }
  recs_.clear();
  used_ = 0;
  return out;
}

}  // namespace ropepp
