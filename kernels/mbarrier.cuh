// mbarrier.cuh: Hopper shared-memory barriers (mbarrier) and bulk copies that complete on them, and named
// barriers (a subset of a block's warps), for the kernels whose warps specialise into producers and consumers
// (decode_layers_persistent.cu, attention_prefill_warp_specialized_sm90.cu).
//
// An mbarrier counts arrivals (and, with expect_tx, bytes) per phase; its phase completes when all expected
// arrivals (and bytes) came, and the next phase begins. A waiter names the parity of the phase it waits for:
// a fresh barrier is in phase 0, and waiting for parity 1 (the phase "before" it) returns at once — the start
// state of a producer waiting for free slots.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ropepp {

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
// Makes mbarriers initialised by this thread visible to the copy engine (before the first copy that completes on
// them).
__device__ __forceinline__ void fence_mbarrier_init() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// Orders this thread's shared-memory writes by ordinary stores and cp.async (the generic proxy) before what the
// async proxy does next with the same bytes: wgmma reading them, or the copy engine overwriting them (after a
// barrier, or __syncwarp for the one warp that issues the copies).
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred P1;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONE;\n"
      "bra WAIT;\n"
      "DONE:\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
// global -> shared, `bytes` (multiple of 16, both addresses 16-byte aligned), completing on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}

// Arrives on `bar` once all cp.async copies this thread issued so far have landed (without waiting for them
// here); .noinc: the arrival counts against the barrier's expected count (which must include it).
__device__ __forceinline__ void cp_async_mbar_arrive_noinc(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// Named barrier `id` (1..15; 0 is __syncthreads) over `count` threads (a multiple of 32): sync waits until
// `count` threads arrived (sync or arrive), arrive counts this thread without waiting.
__device__ __forceinline__ void named_barrier_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

}  // namespace ropepp
