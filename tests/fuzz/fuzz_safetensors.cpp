// fuzz_safetensors.cpp: the safetensors header/index parser and the checkpoint binder over arbitrary bytes.
//
// The first byte picks what the rest is (parts separated by fuzz_common.h's kSplit marker):
//   0: one .safetensors file                                   -> SafetensorsSet::open_file
//   1: model.safetensors.index.json | shard 1 | shard 2 | shard 3 -> SafetensorsSet::open_dir
//      (shards are written as model-0000K-of-00003.safetensors)
//   2: config.json | model.safetensors                          -> load_checkpoint (mode: auto/rope/eh/ec)
// Files go to a per-process tmpfs directory. Accepted inputs are checked: every tensor lies inside its
// file (all of its bytes are read), nbytes = numel × dtype size, tensors of one file do not overlap, the
// bound checkpoint's shapes agree with its config.
#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "checkpoint.h"
#include "fuzz_common.h"
#include "safetensors.h"

namespace fs = std::filesystem;
using namespace ropepp;

namespace {

const fs::path& subdir(const char* name) {
  static std::map<std::string, fs::path> dirs;
  auto it = dirs.find(name);
  if (it == dirs.end()) {
    fs::path d = fuzz::scratch_dir() / name;
    fs::create_directories(d);
    it = dirs.emplace(name, d).first;
  }
  return it->second;
}

volatile uint8_t g_sink;

void check_set(const SafetensorsSet& st) {
  std::map<std::string, std::vector<std::pair<const std::byte*, const std::byte*>>> by_file;
  uint64_t sum_sizes = 0;
  std::map<std::string, uint64_t> file_sizes;
  for (const auto& [name, t] : st.tensors()) {
    ROPEPP_FUZZ_CHECK(name == t.name, "map key {} vs name {}", name, t.name);
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      ROPEPP_FUZZ_CHECK(d >= 0, "negative dim in {}", name);
      numel *= d;
    }
    ROPEPP_FUZZ_CHECK(t.numel() == numel, "numel of {}", name);
    ROPEPP_FUZZ_CHECK(t.nbytes == uint64_t(numel) * dtype_size(t.dtype), "nbytes of {}", name);
    uint8_t acc = 0;
    for (size_t i = 0; i < t.nbytes; ++i) acc ^= std::to_integer<uint8_t>(t.data[i]);  // must be mapped
    g_sink = acc;
    const std::string f = t.file.string();
    if (!file_sizes.count(f)) {
      file_sizes[f] = fs::file_size(t.file);
      sum_sizes += file_sizes[f];
    }
    ROPEPP_FUZZ_CHECK(t.nbytes <= file_sizes[f], "tensor {} ({} bytes) larger than its file", name, t.nbytes);
    if (t.nbytes) by_file[f].push_back({t.data, t.data + t.nbytes});
  }
  ROPEPP_FUZZ_CHECK(st.total_bytes() <= sum_sizes, "total {} > file bytes {}", st.total_bytes(), sum_sizes);
  for (auto& [f, ranges] : by_file) {
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      ROPEPP_FUZZ_CHECK(ranges[i].first >= ranges[i - 1].second, "overlapping tensors accepted in {}", f);
  }
}

void check_checkpoint(const Checkpoint& ck) {
  const ModelConfig& c = ck.config;
  ROPEPP_FUZZ_CHECK(ck.embed && ck.final_norm && ck.lm_head, "unbound top-level tensor");
  ROPEPP_FUZZ_CHECK((ck.embed->shape == std::vector<int64_t>{c.vocab_size, c.hidden_size}), "embed shape");
  ROPEPP_FUZZ_CHECK(ck.layers.size() == size_t(c.n_layers), "{} layers bound, config has {}", ck.layers.size(),
                    c.n_layers);
  for (const LayerTensors& l : ck.layers) {
    ROPEPP_FUZZ_CHECK(l.wq && l.wq->shape.size() == 2 && l.wq->shape[0] == c.n_q_heads() * c.head_dim, "wq shape");
    ROPEPP_FUZZ_CHECK(l.wo && l.wo->shape.size() == 2 && l.wo->shape[1] == c.n_attn_heads() * c.head_dim, "wo shape");
    ROPEPP_FUZZ_CHECK(l.wk && l.wk->shape[0] == c.n_kv() * c.head_dim, "wk shape");
  }
  ROPEPP_FUZZ_CHECK(c.n_q_heads() % c.n_kv() == 0, "q heads {} vs kv heads {}", c.n_q_heads(), c.n_kv());
  (void)ck.n_params();
  check_set(*ck.st);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t sel = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (sel % 3) {
    case 0: {
      const fs::path f = subdir("single") / "x.safetensors";
      fuzz::write_file(f, rest);
      fuzz::expect_only_error([&] { check_set(*SafetensorsSet::open_file(f)); });
      break;
    }
    case 1: {
      const fs::path& d = subdir("sharded");
      const auto parts = fuzz::split_parts(rest, 4);
      fuzz::write_file(d / "model.safetensors.index.json", parts[0]);
      for (size_t k = 1; k <= 3; ++k) {
        const fs::path shard = d / fmt::format("model-0000{}-of-00003.safetensors", k);
        if (k < parts.size()) fuzz::write_file(shard, parts[k]);
        else fuzz::remove_file(shard);
      }
      fuzz::expect_only_error([&] { check_set(*SafetensorsSet::open_dir(d)); });
      break;
    }
    case 2: {
      const fs::path& d = subdir("checkpoint");
      const auto parts = fuzz::split_parts(rest, 2);
      fuzz::write_file(d / "config.json", parts[0]);
      if (parts.size() > 1) fuzz::write_file(d / "model.safetensors", parts[1]);
      else fuzz::remove_file(d / "model.safetensors");
      std::optional<RopeMode> mode;
      switch ((sel / 3) % 4) {
        case 1: mode = RopeMode::Rope; break;
        case 2: mode = RopeMode::EH; break;
        case 3: mode = RopeMode::EC; break;
        default: break;
      }
      fuzz::expect_only_error([&] { check_checkpoint(*load_checkpoint(d, mode)); });
      break;
    }
  }
  return 0;
}
