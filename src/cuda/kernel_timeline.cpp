// kernel_timeline.cpp: see kernel_timeline.h. CUPTI hands activity records over in buffers through two C
// callbacks without a user pointer, so the collector is this file's one static object (a mutex-guarded list).
#include "kernel_timeline.h"

#include <cuda_runtime.h>
#include <cupti.h>
#include <cxxabi.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "common.h"

namespace ropepp {
namespace {

struct CuptiApi {
  CUptiResult (*enable)(CUpti_ActivityKind);
  CUptiResult (*disable)(CUpti_ActivityKind);
  CUptiResult (*register_callbacks)(CUpti_BuffersCallbackRequestFunc, CUpti_BuffersCallbackCompleteFunc);
  CUptiResult (*flush_all)(uint32_t);
  CUptiResult (*next_record)(uint8_t*, size_t, CUpti_Activity**);
  CUptiResult (*result_string)(CUptiResult, const char**);
  CUptiResult (*timestamp)(uint64_t*);
};

const std::string kSoname = fmt::format("libcupti.so.{}", CUDART_VERSION / 1000);

// By soname, else beside the CUDA runtime this process loaded, else in the toolkit's usual folders.
void* open_cupti() {
  std::vector<std::string> tried = {kSoname, "libcupti.so"};
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) && info.dli_fname)
    tried.push_back((std::filesystem::path(info.dli_fname).parent_path() / kSoname).string());
  for (const char* dir : {"/usr/local/cuda/lib64", "/usr/local/cuda/extras/CUPTI/lib64", "/usr/local/cuda/lib"})
    tried.push_back(fmt::format("{}/{}", dir, kSoname));
  std::string errs;
  for (const auto& name : tried) {
    if (void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    const char* e = dlerror();
    errs += fmt::format("\n  {}: {}", name, e ? e : "not found");
  }
  fail("timeline: cannot load CUPTI ({}), tried:{}", kSoname, errs);
}

template <class F>
void bind(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) fail("timeline: {} has no entry point {}", kSoname, name);
}

const CuptiApi& cupti() {
  static const CuptiApi api = [] {
    void* lib = open_cupti();  // kept loaded: CUPTI stays attached to the process
    CuptiApi a{};
    bind(lib, "cuptiActivityEnable", a.enable);
    bind(lib, "cuptiActivityDisable", a.disable);
    bind(lib, "cuptiActivityRegisterCallbacks", a.register_callbacks);
    bind(lib, "cuptiActivityFlushAll", a.flush_all);
    bind(lib, "cuptiActivityGetNextRecord", a.next_record);
    bind(lib, "cuptiGetResultString", a.result_string);
    bind(lib, "cuptiGetTimestamp", a.timestamp);
    return a;
  }();
  return api;
}

void check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* s = nullptr;
  cupti().result_string(r, &s);
  fail("timeline: {} failed: {} ({})", what, s ? s : "unknown CUPTI error", int(r));
}

// "void ropepp::(anonymous namespace)::matvec_warp_rows<...>(ropepp::MatvecLaunch)" -> "matvec_warp_rows<...>":
// the demangled name without its namespaces, return type and parameter list.
std::string short_name(const char* mangled) {
  if (!mangled) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = (status == 0 && d) ? d : mangled;
  std::free(d);
  for (const std::string drop : {"(anonymous namespace)::", "ropepp::"})
    for (size_t at; (at = s.find(drop)) != std::string::npos;) s.erase(at, drop.size());
  // the parameter list starts at the first '(' outside template arguments; the name after the last space or
  // "::" outside them (the return type, the namespaces)
  int depth = 0;
  size_t start = 0, cut = s.size();
  for (size_t i = 0; i < s.size() && cut == s.size(); ++i) {
    const char ch = s[i];
    if (ch == '<') ++depth;
    if (ch == '>') --depth;
    if (depth != 0) continue;
    if (ch == '(') cut = i;
    if (ch == ' ') start = i + 1;
    if (ch == ':' && i + 1 < s.size() && s[i + 1] == ':') start = i + 2, ++i;
  }
  return s.substr(start, cut - start);
}

struct Collector {
  std::mutex mu;
  std::vector<GpuSpan> spans;
  bool registered = false;
};
Collector& collector() {
  static Collector c;
  return c;
}

constexpr size_t kBufferBytes = size_t(8) << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<GpuSpan> got;
  CUpti_Activity* rec = nullptr;
  while (cupti().next_record(buffer, valid, &rec) == CUPTI_SUCCESS) {
    GpuSpan s;
    if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
      s.name = short_name(k->name);
      s.start_ns = k->start, s.end_ns = k->end;
      s.blocks = int64_t(k->gridX) * k->gridY * k->gridZ;
      s.is_kernel = true;
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
      const char* kind = m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_HTOD   ? "HtoD"
                         : m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOH ? "DtoH"
                         : m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOD ? "DtoD"
                                                                          : "other";
      s.name = fmt::format("memcpy {}", kind);
      s.start_ns = m->start, s.end_ns = m->end;
      s.blocks = int64_t(m->bytes);
    } else {
      continue;
    }
    got.push_back(std::move(s));
  }
  std::free(buffer);
  Collector& c = collector();
  std::lock_guard<std::mutex> lock(c.mu);
  c.spans.insert(c.spans.end(), got.begin(), got.end());
}

constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY};

}  // namespace

void timeline_start() {
  Collector& c = collector();
  if (!c.registered) {
    check(cupti().register_callbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
    c.registered = true;
  }
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.spans.clear();
  }
  for (CUpti_ActivityKind k : kKinds) check(cupti().enable(k), "cuptiActivityEnable");
}

uint64_t timeline_now() {
  uint64_t t = 0;
  check(cupti().timestamp(&t), "cuptiGetTimestamp");
  return t;
}

std::vector<GpuSpan> timeline_stop() {
  cudaDeviceSynchronize();
  for (CUpti_ActivityKind k : kKinds) check(cupti().disable(k), "cuptiActivityDisable");
  check(cupti().flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll");
  Collector& c = collector();
  std::vector<GpuSpan> out;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    out.swap(c.spans);
  }
  std::sort(out.begin(), out.end(), [](const GpuSpan& a, const GpuSpan& b) { return a.start_ns < b.start_ns; });
  return out;
}

}  // namespace ropepp
