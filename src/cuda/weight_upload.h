// weight_upload.h: host → device copies of checkpoint data through two pinned host buffers. OpenMP threads copy
// chunk k + 1 out of the (memory-mapped) checkpoint into one buffer while the DMA of chunk k reads the other, so
// the copy runs at the DMA rate instead of a pageable cudaMemcpy's (one thread, page faults, bounce buffers).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <span>

#include "backend.h"  // HostSpan

namespace ropepp {

class PinnedUploader {
 public:
  explicit PinnedUploader(size_t chunk_bytes) : chunk_bytes_(chunk_bytes) {}
  ~PinnedUploader();
  PinnedUploader(const PinnedUploader&) = delete;
  PinnedUploader& operator=(const PinnedUploader&) = delete;

  size_t chunk_bytes() const { return chunk_bytes_; }

  // Copies the concatenation of `host` (pieces of host memory, in order; `bytes` in all) in chunks of
  // chunk_bytes(): chunk k (offset `off` in the concatenation, `n` bytes) is DMA'd on
  // `stream` to target(k % 2, off), then consume(k % 2, off, n) enqueues its consumer (e.g. a conversion kernel)
  // on the stream. The buffers (allocated on first use) are reused once the chunk two back has been DMA'd.
  // Returns without waiting for the stream.
  void copy(std::span<const HostSpan> host, size_t bytes, cudaStream_t stream, const std::function<void*(int, size_t)>& target,
            const std::function<void(int, size_t, size_t)>& consume);

 private:
  size_t chunk_bytes_;
  void* pinned_[2] = {nullptr, nullptr};        // [chunk_bytes] each, pinned host memory
  cudaEvent_t dma_done_[2] = {nullptr, nullptr};  // recorded after each buffer's last DMA
};

}  // namespace ropepp
