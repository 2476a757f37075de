// backend.cpp: picks a backend from a --device string.
#include <charconv>

#include "backend.h"

namespace ropepp {

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
