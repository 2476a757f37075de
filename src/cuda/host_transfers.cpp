// host_transfers.cpp: see host_transfers.h.
#include "host_transfers.h"

#include <cstring>

#include "cuda_check.cuh"

namespace ropepp {

HostTransfers::~HostTransfers() {  // never throws
  for (const Pending& p : pending_) {
    cudaEventSynchronize(p.done);
    cudaEventDestroy(p.done);
  }
  for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
  for (cudaEvent_t e : half_done_)
    if (e) cudaEventDestroy(e);
  if (upload_) cudaFreeHost(upload_);
  if (ring_) cudaFreeHost(ring_);
}

void HostTransfers::init() {
  CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&upload_), 2 * upload_half_));
  CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&ring_), download_bytes_));
  for (cudaEvent_t& e : half_done_) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
}

bool HostTransfers::upload(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  if (bytes > upload_half_) return false;
  if (used_ + bytes > upload_half_) {  // move to the other half once the copies queued from it have run
    CUDA_CHECK(cudaEventRecord(half_done_[half_], stream));
    half_busy_[half_] = true;
    half_ ^= 1;
    if (half_busy_[half_]) CUDA_CHECK(cudaEventSynchronize(half_done_[half_]));
    half_busy_[half_] = false;
    used_ = 0;
  }
  char* st = upload_ + size_t(half_) * upload_half_ + used_;
  std::memcpy(st, src, bytes);
  used_ += (bytes + 15) / 16 * 16;
  CUDA_CHECK(cudaMemcpyAsync(dst, st, bytes, cudaMemcpyHostToDevice, stream));
  return true;
}

cudaEvent_t HostTransfers::take_event() {
  if (free_events_.empty()) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }
  const cudaEvent_t e = free_events_.back();
  free_events_.pop_back();
  return e;
}

uint64_t HostTransfers::download(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  const uint64_t ticket = next_ticket_++;
  if (bytes > download_bytes_) {  // too large for the ring: at once, after everything queued before it
    wait(ticket - 1);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return ticket;
  }
  const size_t need = (bytes + 15) / 16 * 16;
  if (head_ + need > download_bytes_) head_ = 0;
  const auto overlaps = [&](const Pending& p) { return p.off < head_ + need && head_ < p.off + p.bytes; };
  while (!pending_.empty()) {  // the oldest downloads are the ones in the way (the ring fills in order)
    bool in_way = false;
    for (const Pending& p : pending_) in_way = in_way || overlaps(p);
    if (!in_way) break;
    finish_front();
  }
  Pending p{ticket, take_event(), head_, bytes, dst};
  CUDA_CHECK(cudaMemcpyAsync(ring_ + p.off, src, bytes, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaEventRecord(p.done, stream));
  pending_.push_back(p);
  head_ += need;
  return ticket;
}

void HostTransfers::finish_front() {
  const Pending p = pending_.front();
  CUDA_CHECK(cudaEventSynchronize(p.done));
  std::memcpy(p.dst, ring_ + p.off, p.bytes);
  pending_.pop_front();
  free_events_.push_back(p.done);
}

void HostTransfers::wait(uint64_t ticket) {
  while (!pending_.empty() && pending_.front().ticket <= ticket) finish_front();
}

void HostTransfers::drained() {
  while (!pending_.empty()) finish_front();
  half_busy_[0] = half_busy_[1] = false;
  used_ = 0;
}

}  // namespace ropepp
