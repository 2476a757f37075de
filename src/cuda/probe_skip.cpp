// probe_skip.cpp: the decode-step ablation switch of the CUDA backend (CudaBackendOptions::probe_skip,
// ROPEPP_CUDA_PROBE_SKIP). A timeline of a graphed decode step shows each kernel's share of the step, but the kernels
// overlap (PDL: a kernel loads its weights while the one before it runs), so a share is not what the kernel costs.
// Leaving a kind of kernel out of every one-token decode step and timing the step (`ropepp bench`) measures what its
// presence costs; the outputs are wrong then, so the switch is for those measurements only and says so when set.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <sstream>
#include <string>

#include "backend_cuda.h"
#include "common.h"

namespace ropepp {

int cuda_probe_skip_bits(const std::string& kinds) {
  if (kinds.empty()) return 0;
  static constexpr const char* kNames[] = {"qkv", "attention", "o", "gu", "down"};  // bits 0 .. 4, in order
  std::string list = kinds;
  std::replace(list.begin(), list.end(), '+', ',');
  std::stringstream ss(list);
  int bits = 0;
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    const auto* it = std::find_if(std::begin(kNames), std::end(kNames), [&](const char* n) { return item == n; });
    if (it == std::end(kNames))
      fail("cuda: ROPEPP_CUDA_PROBE_SKIP={}: unknown kernel kind '{}' (expected qkv, attention, o, gu, down separated "
           "by commas or '+')", kinds, item);
    bits |= 1 << (it - std::begin(kNames));
  }
  if (bits != 0)
    spdlog::warn("cuda: ROPEPP_CUDA_PROBE_SKIP={}: one-token decode steps leave those kernels out; their outputs are "
                 "WRONG (timing ablations only)", kinds);
  return bits;
}

}  // namespace ropepp
