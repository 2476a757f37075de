// cublas_library.cpp: see cublas_library.h.
#include "cublas_library.h"

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <filesystem>
#include <future>
#include <string>

#include "common.h"

namespace ropepp {
namespace {

const std::string kSoname = fmt::format("libcublas.so.{}", CUBLAS_VER_MAJOR);

// The library by its soname (library path, the executable's run path, ld.so.cache), else from the directory
// of the CUDA runtime this process loaded (where the toolkit keeps cuBLAS too).
void* open_library() {
  if (void* h = dlopen(kSoname.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
  std::string err = dlerror() ? dlerror() : "";
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) && info.dli_fname) {
    const std::string path = (std::filesystem::path(info.dli_fname).parent_path() / kSoname).string();
    if (void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    const char* e = dlerror();
    err += fmt::format("; {}", e ? e : path);
  }
  fail("cuda: cannot load cuBLAS ({}): {}; install the CUDA toolkit's cuBLAS {} or use --device cpu", kSoname, err,
       CUBLAS_VER_MAJOR);
}

template <class F>
void bind(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) fail("cuda: {} has no entry point {} (expected cuBLAS {})", kSoname, name, CUBLAS_VER_MAJOR);
}

CublasApi load() {
  void* lib = open_library();  // kept loaded for the life of the process
  CublasApi a{};
  bind(lib, "cublasCreate_v2", a.create);
  bind(lib, "cublasDestroy_v2", a.destroy);
  bind(lib, "cublasSetStream_v2", a.set_stream);
  bind(lib, "cublasSetWorkspace_v2", a.set_workspace);
  bind(lib, "cublasGemmEx", a.gemm_ex);
  bind(lib, "cublasGetStatusName", a.status_name);
  bind(lib, "cublasGetStatusString", a.status_string);
  return a;
}

std::shared_future<CublasApi>& loading() {
  static std::shared_future<CublasApi> f = std::async(std::launch::async, load).share();
  return f;
}

}  // namespace

void cublas_load_async() { (void)loading(); }

const CublasApi& cublas_api() { return loading().get(); }

}  // namespace ropepp
