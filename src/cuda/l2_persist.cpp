// l2_persist.cpp: the CUDA backend's L2 persistence (CudaBackendOptions::l2_persist_mb), and the decode-step
// ablation switch (CudaBackendOptions::probe_skip) that parses the same kind of list. A batch-1 decode step
// streams every weight once, ~500 MB for the 376M against the H100's 50 MB of L2, so nothing stays in the L2 from
// one step to the next. With a part of the L2 set aside for persisting lines (cudaLimitPersistingL2CacheSize),
// the matvecs over the chosen matrices mark a share of their lines persisting (an access policy window per launch:
// MatvecLaunch::persist_*): those lines then survive the rest of the step's streaming, and the next step reads them
// from the L2 instead of the DRAM. The plan (plan_l2_persist, kernels/matvec.cuh) splits the set-aside between the
// kinds of matrices in the order the options name them.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <sstream>
#include <string>

#include "backend_cuda_impl.h"

namespace ropepp::cuda_impl {

namespace {

constexpr const char* kKindNames[kL2PersistKinds] = {"qkv", "o", "gu", "down", "head"};

// options.l2_persist_what: kind names separated by commas or '+'.
std::vector<L2PersistKind> parse_l2_persist_kinds(const std::string& what) {
  std::vector<L2PersistKind> kinds;
  std::string list = what;
  std::replace(list.begin(), list.end(), '+', ',');
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    const auto* it =
        std::find_if(std::begin(kKindNames), std::end(kKindNames), [&](const char* n) { return item == n; });
    if (it == std::end(kKindNames))
      fail("cuda: ROPEPP_CUDA_L2_PERSIST_WHAT={}: unknown matrix kind '{}' (expected a list of qkv, o, gu, down, "
           "head separated by commas or '+')", what, item);
    kinds.push_back(L2PersistKind(it - std::begin(kKindNames)));
  }
  if (kinds.empty()) fail("cuda: ROPEPP_CUDA_L2_PERSIST_WHAT='{}': no matrix kind (expected e.g. qkv,head)", what);
  return kinds;
}

}  // namespace

int CudaBackend::parse_probe_skip(const std::string& kinds) {
  if (kinds.empty()) return 0;
  static constexpr const char* kNames[] = {"qkv", "attention", "o", "gu", "down"};
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
  spdlog::warn("cuda: ROPEPP_CUDA_PROBE_SKIP={}: one-token decode steps leave those kernels out; their outputs are "
               "WRONG (timing ablations only)", kinds);
  return bits;
}

void CudaBackend::init_l2_persist(const CudaBackendOptions& o, const cudaDeviceProp& prop) {
  if (o.l2_persist_mb == 0) return;
  if (o.l2_persist_mb < -1)
    fail("cuda: ROPEPP_CUDA_L2_PERSIST={}: expected MB of L2 to set aside (0: off, -1: the most the GPU allows)",
         o.l2_persist_mb);
  l2_persist_order_ = parse_l2_persist_kinds(o.l2_persist_what);
  l2_persist_cached_ = o.l2_persist_cached;
  const size_t most = size_t(std::max(0, prop.persistingL2CacheMaxSize));
  if (most == 0 || prop.accessPolicyMaxWindowSize <= 0) {
    spdlog::warn("cuda: ROPEPP_CUDA_L2_PERSIST: {} sets no L2 aside for persisting lines; off", gpu_name_);
    return;
  }
  const size_t want = o.l2_persist_mb < 0 ? most : std::min(most, size_t(o.l2_persist_mb) << 20);
  if (const cudaError_t e = cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, want); e != cudaSuccess) {
    cudaGetLastError();  // e.g. under MIG or MPS: the set-aside is not this process's to change
    spdlog::warn("cuda: ROPEPP_CUDA_L2_PERSIST: setting {} MiB aside failed ({}); off", want >> 20,
                 cudaGetErrorName(e));
    return;
  }
  size_t got = 0;
  CUDA_CHECK(cudaDeviceGetLimit(&got, cudaLimitPersistingL2CacheSize));
  l2_persist_bytes_ = got;
  l2_window_max_ = size_t(prop.accessPolicyMaxWindowSize);
  spdlog::info("cuda: L2 persistence: {:.1f} MiB of {:.1f} MiB set aside (at most {:.1f}), for {}", got / 1048576.0,
               l2_bytes_ / 1048576.0, most / 1048576.0, o.l2_persist_what);
}

void CudaBackend::plan_l2_persist_for(const DecoderLayersParams& p) {
  if (p.n_layers < 1 || !p.layers[0].concatenated()) return;  // separate projections: no fused decode matvecs
  if (l2_persist_key_ == p.layers[0].wqkv.data) return;
  size_t bytes[kL2PersistKinds] = {};
  l2_persist_kind_.clear();
  auto add = [&](const Weight& w, L2PersistKind k) {
    if (!w.data || !per_layer_matrix(w)) return;
    bytes[int(k)] += size_t(w.rows * w.cols) * dtype_size(w.dtype);
    l2_persist_kind_[w.data] = k;
  };
  for (int l = 0; l < p.n_layers; ++l) {
    const DecoderLayerWeights& w = p.layers[l];
    if (!w.concatenated()) continue;
    add(w.wqkv, L2PersistKind::Qkv);
    add(w.wo, L2PersistKind::OProj);
    add(w.w_gate_up, L2PersistKind::GateUp);
    add(w.w_down, L2PersistKind::Down);
  }
  l2_persist_plan_ = plan_l2_persist(l2_persist_bytes_, l2_persist_order_.data(), int(l2_persist_order_.size()), bytes);
  l2_persist_key_ = p.layers[0].wqkv.data;
  std::string shares;
  for (int k = 0; k < kL2PersistKinds - 1; ++k)
    if (bytes[k] > 0)
      shares += fmt::format(" {} {:.0f}% of {:.1f} MB,", kKindNames[k], 100.0 * l2_persist_plan_.ratio[k],
                            bytes[k] / 1e6);
  spdlog::info("cuda: L2 persistence plan:{} the lm_head {:.1f} MB", shares, l2_persist_plan_.head_bytes / 1e6);
}

void CudaBackend::l2_persist_window(MatvecLaunch& l, const Weight& w) const {
  const size_t bytes = size_t(w.rows * w.cols) * dtype_size(w.dtype);
  float ratio = 0.f;
  size_t window = bytes;
  if (per_layer_matrix(w)) {
    const auto it = l2_persist_kind_.find(w.data);
    if (it != l2_persist_kind_.end()) ratio = l2_persist_plan_.ratio[int(it->second)];
  } else {  // the lm_head: a window of its first bytes (at most the largest window) holding the plan's head bytes
    window = std::min(bytes, l2_window_max_);
    ratio = l2_persist_window_ratio(l2_persist_plan_.head_bytes, window);
  }
  if (ratio <= 0.f) return;
  l.persist_ptr = w.data;
  l.persist_bytes = window;
  l.persist_ratio = ratio;
  l.persist_cached = l2_persist_cached_;
}

}  // namespace ropepp::cuda_impl
