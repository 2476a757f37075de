// exit_probe.cu: how long a CUDA process takes to end after its last statement (the WikiText wall of issue #6
// ends ~0.15 s after ropepp's main is done). One mode per run; prints the seconds main ran; exit_probe.sh times the
// whole process. Modes: bare (context only), alloc (2.5 GB allocated, written and freed), keep (allocated, not
// freed), pinned (512 MB of pinned host memory allocated, touched, freed), reset (bare + cudaDeviceReset before
// the exit), return (bare, but main returns: the runtime's own teardown). All but `return` end with _Exit.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  const auto t0 = std::chrono::steady_clock::now();
  const char* mode = argc > 1 ? argv[1] : "bare";
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  if (cudaFree(nullptr) != cudaSuccess) return 2;
  const double ctx = since();
  void* p = nullptr;
  const size_t big = size_t(2560) << 20;
  if (!std::strcmp(mode, "alloc") || !std::strcmp(mode, "keep")) {
    if (cudaMalloc(&p, big) != cudaSuccess) return 3;
    cudaMemset(p, 1, big);
    cudaDeviceSynchronize();
    if (!std::strcmp(mode, "alloc")) cudaFree(p);
  }
  if (!std::strcmp(mode, "pinned")) {
    const size_t n = size_t(512) << 20;
    if (cudaMallocHost(&p, n) != cudaSuccess) return 4;
    std::memset(p, 1, n);
    cudaFreeHost(p);
  }
  double reset = 0;
  if (!std::strcmp(mode, "reset")) {
    const double r0 = since();
    cudaDeviceReset();
    reset = since() - r0;
  }
  std::printf("%s: context %.3f s, main %.3f s, reset %.3f s\n", mode, ctx, since(), reset);
  std::fflush(stdout);
  if (!std::strcmp(mode, "return")) return 0;
  std::_Exit(0);
}
