// backend.cpp: picks a backend from a --device string.
#include <charconv>
#include <cstring>

#include "backend.h"

namespace ropepp {

Weight Backend::load_weight_concat(std::span<const HostSpan> parts, DType dtype, int64_t rows, int64_t cols) {
  size_t bytes = 0;
  for (const HostSpan& p : parts) bytes += p.bytes;
  if (rows <= 0 || cols <= 0 || bytes != size_t(rows) * size_t(cols) * dtype_size(dtype))
    fail("load_weight_concat: {} bytes in {} parts for [{}, {}] {}", bytes, parts.size(), rows, cols, dtype_name(dtype));
  std::vector<char> host(bytes);
  size_t off = 0;
  for (const HostSpan& p : parts) {
    std::memcpy(host.data() + off, p.data, p.bytes);
    off += p.bytes;
  }
  return load_weight(host.data(), dtype, rows, cols);
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (device.size() > 4) {
      const char* b = device.data() + 5;
      const char* e = device.data() + device.size();
      auto [ptr, ec] = std::from_chars(b, e, index);
      if (ec != std::errc() || ptr != e || index < 0)
        fail("--device '{}': expected cuda:N with N a GPU index (0, 1, ...)", device);
    }
#ifdef ROPEPP_HAS_CUDA
    return make_cuda_backend(index);
#else
    fail("--device '{}': this ropepp was built without CUDA (configure with -DROPEPP_CUDA=ON)", device);
#endif
  }
  fail("--device '{}': expected cpu, cuda or cuda:N", device);
}

}  // namespace ropepp
