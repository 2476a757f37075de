// host_transfers.h: the CUDA backend's small host <-> device copies that the host does not wait for.
//   uploads:   through a pinned staging buffer in two halves; a half is refilled once the copies queued from it
//              have run (an event recorded when the other half was taken), so a run of forward calls never
//              waits for the GPU just to reuse the buffer.
//   downloads: into a pinned ring; each lands in the caller's memory when its ticket is waited for, so the next
//              forward call can be queued before the previous one's results are read (perplexity windows).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

namespace ropepp {

class HostTransfers {
 public:
  HostTransfers(size_t upload_bytes, size_t download_bytes)
      : upload_half_(upload_bytes / 2 / 16 * 16), download_bytes_(download_bytes / 16 * 16) {}
  ~HostTransfers();
  HostTransfers(const HostTransfers&) = delete;
  HostTransfers& operator=(const HostTransfers&) = delete;

  void init();  // allocates the pinned buffers and events (after cudaSetDevice)

  // Queues dst (device) = src (host) on `stream`; `src` may be reused on return. False when `bytes` exceeds a
  // staging half (the caller copies another way).
  bool upload(void* dst, const void* src, size_t bytes, cudaStream_t stream);

  // Queues dst (host, kept valid by the caller until wait) = src (device) on `stream`; returns its ticket.
  // A copy larger than the ring is done at once (the stream is synchronised).
  uint64_t download(void* dst, const void* src, size_t bytes, cudaStream_t stream);
  // Returns once the download of `ticket`, and every one queued before it, is in its destination.
  void wait(uint64_t ticket);

  // The stream has been synchronised: every queued copy has run (downloads are delivered, staging is free).
  void drained();

 private:
  struct Pending {
    uint64_t ticket;
    cudaEvent_t done;  // recorded after the copy into the ring
    size_t off;        // in the ring
    size_t bytes;
    void* dst;
  };
  void finish_front();           // waits for the oldest pending download and delivers it
  cudaEvent_t take_event();

  size_t upload_half_;           // bytes per staging half
  char* upload_ = nullptr;       // [2 * upload_half_] pinned
  int half_ = 0;                 // the half being filled
  size_t used_ = 0;              // bytes of it taken
  cudaEvent_t half_done_[2] = {nullptr, nullptr};  // recorded when the filling moved off the half
  bool half_busy_[2] = {false, false};             // its event may not have completed yet

  size_t download_bytes_;
  char* ring_ = nullptr;         // [download_bytes_] pinned
  size_t head_ = 0;              // next free offset in the ring
  std::deque<Pending> pending_;  // oldest first
  std::vector<cudaEvent_t> free_events_;
  uint64_t next_ticket_ = 1;
};

}  // namespace ropepp
