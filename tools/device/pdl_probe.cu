// pdl_probe.cu: what one dependent kernel boundary costs on this GPU, by the mechanism that orders the two kernels.
// A 376M decode layer runs five dependent kernels in ~20 µs for ~10 µs of weight bytes (docs/PERFORMANCE.md); this
// measures the boundary alone: a CUDA graph of N kernels (or one kernel of N phases) in which every block of step
// i reads a value written by another block of step i − 1, adds one and writes it, so that nothing but the ordering
// costs time. Modes:
//   graph       kernels in a graph, no PDL: each starts once the previous one ended
//   pdl         programmatic dependent launch: each kernel is resident early (launch_dependents at its start) and
//               waits in griddepcontrol.wait for the previous grid's completion and memory flush (ropepp's decode)
//   flag        PDL launch, but no griddepcontrol.wait: each block spins (ld.acquire.gpu) on the previous kernel's
//               counter until all its blocks have released their writes (red.release.gpu), i.e. the consumer waits
//               for the producer's blocks' writes, not for the grid to end
//   persistent  one kernel of `blocks` resident blocks and N phases separated by the same counters (a grid barrier)
// Every mode checks the chain's result (each value = N): a block that read too early would leave a smaller one.
// Prints one line per (mode, blocks): µs per step. Build: nvcc -O2 -arch=sm_90 -Ikernels pdl_probe.cu (pdl_probe.sh).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "device_utils.cuh"  // pdl_launch_dependents, pdl_wait: the decode kernels' own

#define CHECK(x)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release_add(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// vals: [2][blocks] (step i reads half (i − 1) % 2, writes half i % 2); counters: [N + 1] (counters[0] = blocks).
struct Step {
  int* vals;
  unsigned* counters;
  int blocks;
  int step;  // 1 .. N
};

// Block b of step i reads the value block (b · 7 + 3) mod blocks wrote in step i − 1.
__device__ __forceinline__ void step_body(const Step& s, int step) {
  __shared__ int v;
  if (threadIdx.x == 0) {
    const int src = (blockIdx.x * 7 + 3) % s.blocks;
    v = __ldcg(s.vals + ((step - 1) & 1) * s.blocks + src) + 1;
    s.vals[(step & 1) * s.blocks + blockIdx.x] = v;
  }
  __syncthreads();
}

__global__ __launch_bounds__(kThreads) void step_graph(Step s) { step_body(s, s.step); }

__global__ __launch_bounds__(kThreads) void step_pdl(Step s) {
  ropepp::pdl_launch_dependents();
  ropepp::pdl_wait();
  step_body(s, s.step);
}

__global__ __launch_bounds__(kThreads) void step_flag(Step s) {
  ropepp::pdl_launch_dependents();
  if (threadIdx.x == 0)
    while (ld_acquire(s.counters + s.step - 1) < unsigned(s.blocks)) {
    }
  __syncthreads();
  step_body(s, s.step);
  if (threadIdx.x == 0) red_release_add(s.counters + s.step, 1u);
}

__global__ __launch_bounds__(kThreads) void steps_persistent(Step s, int n) {
  for (int i = 1; i <= n; ++i) {
    if (threadIdx.x == 0)
      while (ld_acquire(s.counters + i - 1) < unsigned(s.blocks)) {
      }
    __syncthreads();
    step_body(s, i);
    if (threadIdx.x == 0) red_release_add(s.counters + i, 1u);
  }
}

__global__ void seed(Step s) {  // step 0: every value 0, counters[0] = blocks, the rest 0
  for (int i = threadIdx.x; i < 2 * s.blocks; i += blockDim.x) s.vals[i] = 0;
  for (int i = threadIdx.x; i <= s.step; i += blockDim.x) s.counters[i] = i == 0 ? unsigned(s.blocks) : 0u;
}

double run(const char* mode, int blocks, int n, int reps, int* vals, unsigned* counters, cudaStream_t st, bool* ok) {
  Step s{vals, counters, blocks, n};
  cudaGraph_t graph;
  CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  seed<<<1, 1024, 0, st>>>(s);
  const bool persistent = !std::strcmp(mode, "persistent");
  if (persistent) {
    steps_persistent<<<blocks, kThreads, 0, st>>>(s, n);
  } else {
    void (*k)(Step) = !std::strcmp(mode, "graph") ? step_graph : !std::strcmp(mode, "pdl") ? step_pdl : step_flag;
    const bool pdl = k != step_graph;
    for (int i = 1; i <= n; ++i) {
      Step si = s;
      si.step = i;
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(blocks);
      cfg.blockDim = dim3(kThreads);
      cfg.stream = st;
      cudaLaunchAttribute attr{};
      attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr.val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = &attr;
      cfg.numAttrs = pdl && i > 1 ? 1 : 0;  // the first step follows the seed kernel
      CHECK(cudaLaunchKernelEx(&cfg, k, si));
    }
  }
  CHECK(cudaStreamEndCapture(st, &graph));
  cudaGraphExec_t exec;
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CHECK(cudaGraphLaunch(exec, st));  // warm-up
  CHECK(cudaStreamSynchronize(st));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  CHECK(cudaEventRecord(e0, st));
  for (int r = 0; r < reps; ++r) CHECK(cudaGraphLaunch(exec, st));
  CHECK(cudaEventRecord(e1, st));
  CHECK(cudaStreamSynchronize(st));
  float ms = 0.f;
  CHECK(cudaEventElapsedTime(&ms, e0, e1));
  std::vector<int> h(blocks);
  CHECK(cudaMemcpy(h.data(), vals + (n & 1) * blocks, blocks * sizeof(int), cudaMemcpyDeviceToHost));
  *ok = true;
  for (int v : h) *ok = *ok && v == n;
  CHECK(cudaEventDestroy(e0));
  CHECK(cudaEventDestroy(e1));
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  return 1000.0 * ms / (double(reps) * n);
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 200;  // steps per graph
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("pdl_probe: %s, %d SMs; %d steps per graph, %d replays; blocks of %d threads\n", prop.name, sms, n, reps,
              kThreads);
  int* vals;
  unsigned* counters;
  CHECK(cudaMalloc(&vals, 2 * 8 * sms * sizeof(int)));
  CHECK(cudaMalloc(&counters, (n + 1) * sizeof(unsigned)));
  cudaStream_t st;
  CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  int failures = 0;
  for (int mult : {1, 2, 4}) {
    const int blocks = mult * sms;
    for (const char* mode : {"graph", "pdl", "flag", "persistent"}) {
      if (!std::strcmp(mode, "persistent") && mult > 4) continue;  // must all be resident (4 × 256 threads fit)
      bool ok = false;
      const double us = run(mode, blocks, n, reps, vals, counters, st, &ok);
      std::printf("  %-10s blocks %4d: %6.2f us per step%s\n", mode, blocks, us, ok ? "" : "  (WRONG RESULT)");
      failures += !ok;
    }
  }
  return failures ? 1 : 0;
}
