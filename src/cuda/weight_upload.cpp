// weight_upload.cpp: see weight_upload.h.
#include "weight_upload.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cuda_check.cuh"

namespace ropepp {
namespace {

constexpr size_t kPiece = size_t(1) << 20;  // bytes per OpenMP work item
constexpr int kMaxCopyThreads = 8;          // the page-cache copy stops scaling around here

// dst = bytes [off, off + bytes) of the concatenation of `src`, by up to kMaxCopyThreads threads in 1 MiB pieces.
void parallel_copy(void* dst, std::span<const HostSpan> src, size_t off, size_t bytes) {
  const int64_t pieces = int64_t((bytes + kPiece - 1) / kPiece);
  const int threads = int(std::min<int64_t>({kMaxCopyThreads, omp_get_num_procs(), std::max<int64_t>(pieces, 1)}));
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < pieces; ++i) {
    const size_t b = off + size_t(i) * kPiece, e = off + std::min(size_t(i + 1) * kPiece, bytes);  // concatenation
    size_t base = 0;  // offset of s in the concatenation
    for (const HostSpan& s : src) {
      const size_t lo = std::max(b, base), hi = std::min(e, base + s.bytes);
      if (lo < hi)
        std::memcpy(static_cast<char*>(dst) + (lo - off), static_cast<const char*>(s.data) + (lo - base), hi - lo);
      base += s.bytes;
    }
  }
}

}  // namespace

PinnedUploader::~PinnedUploader() {
  for (int b = 0; b < 2; ++b) {
    if (dma_done_[b]) {
      cudaEventSynchronize(dma_done_[b]);
      cudaEventDestroy(dma_done_[b]);
    }
    if (pinned_[b]) cudaFreeHost(pinned_[b]);
  }
}

void PinnedUploader::copy(std::span<const HostSpan> host, size_t bytes, cudaStream_t stream,
                          const std::function<void*(int, size_t)>& target,
                          const std::function<void(int, size_t, size_t)>& consume) {
  for (int b = 0; b < 2; ++b) {
    if (!pinned_[b]) CUDA_CHECK(cudaMallocHost(&pinned_[b], chunk_bytes_));
    if (!dma_done_[b]) CUDA_CHECK(cudaEventCreateWithFlags(&dma_done_[b], cudaEventDisableTiming));
  }
  int k = 0;
  for (size_t off = 0; off < bytes; off += chunk_bytes_, ++k) {
    const int b = k % 2;
    const size_t n = std::min(chunk_bytes_, bytes - off);
    CUDA_CHECK(cudaEventSynchronize(dma_done_[b]));  // the DMA of chunk k - 2 has read this buffer
    parallel_copy(pinned_[b], host, off, n);
    CUDA_CHECK(cudaMemcpyAsync(target(b, off), pinned_[b], n, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(dma_done_[b], stream));
    consume(b, off, n);
  }
}

}  // namespace ropepp
