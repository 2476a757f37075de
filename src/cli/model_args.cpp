// model_args.cpp: see model_args.h.
#include "model_args.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdlib>

namespace ropepp::cli {

void add_model_args(CLI::App* sub, ModelArgs& a, bool with_runtime) {
  sub->add_option("-m,--model", a.model, "checkpoint directory (HF layout); default: the embedded model")
      ->envname("ROPEPP_MODEL");
  sub->add_option("--device", a.device, "cpu, cuda or cuda:N")->capture_default_str()->envname("ROPEPP_DEVICE");
  sub->add_option("--rope-mode", a.rope_mode, "auto (rope_config, else tensor shapes), rope, eh or ec")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "rope", "eh", "ec"}));
  if (!with_runtime) return;
  sub->add_option("-c,--ctx-size", a.ctx, "context size in tokens (0: what the job needs)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65536));
  sub->add_option("-t,--threads", a.threads, "CPU threads (0: all cores)")->capture_default_str()->check(CLI::Range(0, 1024));
  sub->add_option("-b,--batch-size", a.batch, "tokens per forward chunk")->capture_default_str()->check(CLI::Range(1, 65536));
  sub->add_option("--kv-block", a.kv_block, "tokens per block of the paged KV cache")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
}

static std::filesystem::path exe_dir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path(".") : p.parent_path();
}

namespace {
std::atomic<bool> g_device_backend{false};
}

bool device_backend_created() { return g_device_backend.load(); }

std::filesystem::path resolve_model_dir(const std::string& arg) {
  if (!arg.empty()) return arg;
  std::vector<std::filesystem::path> candidates = {exe_dir() / ".." / "models" / "default",
                                                   exe_dir() / "models" / "default"};
#ifdef ROPEPP_SOURCE_DIR
  candidates.emplace_back(std::filesystem::path(ROPEPP_SOURCE_DIR) / "models" / "default");
#endif
  std::string looked;
  for (const auto& c : candidates) {
    if (std::filesystem::exists(c / "config.json")) return std::filesystem::weakly_canonical(c);
    looked += "\n  " + c.lexically_normal().string();
  }
  fail("no model given (-m DIR) and no default model found; looked in:{}", looked);
}

Loaded load_model(const ModelArgs& a, ModelOptions opt, TokenizerUse tok) {
  const auto t0 = std::chrono::steady_clock::now();
  Loaded L;
  const auto dir = resolve_model_dir(a.model);
  L.ckpt = load_checkpoint(dir, parse_rope_mode_flag(a.rope_mode));
  const auto t_ckpt = std::chrono::steady_clock::now();
  if (a.device == "cpu") {
    L.backend = make_cpu_backend(a.threads);
  } else {
    L.backend = make_backend(a.device);
    g_device_backend = true;
  }
  const auto t_backend = std::chrono::steady_clock::now();
  opt.max_batch_tokens = a.batch;
  opt.block_size = a.kv_block;
  L.model = std::make_unique<Model>(*L.ckpt, *L.backend, opt);
  const auto t_model = std::chrono::steady_clock::now();
  using secs = std::chrono::duration<double>;
  spdlog::debug("load: checkpoint {:.3f} s, backend {:.3f} s, model (weights, cache, scratch) {:.3f} s",
                secs(t_ckpt - t0).count(), secs(t_backend - t_ckpt).count(), secs(t_model - t_backend).count());
  if (tok != TokenizerUse::None) try {
    L.tokenizer = Tokenizer::from_dir(dir);
    if (L.tokenizer->vocab_size() > L.ckpt->config.vocab_size)
      fail("{}: tokenizer has {} ids but the model's vocab_size is {}", dir.string(), L.tokenizer->vocab_size(),
           L.ckpt->config.vocab_size);
  } catch (const Error& e) {
    if (tok == TokenizerUse::Required) throw;
    spdlog::debug("no tokenizer: {}", e.what());
  }
  L.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return L;
}

std::vector<int32_t> parse_id_list(const std::string& text, const std::string& what) {
  std::vector<int32_t> ids;
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    while (p < end && (*p == ',' || *p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) ++p;
    if (p == end) break;
    const char* q = p;
    while (q < end && !(*q == ',' || *q == ' ' || *q == '\n' || *q == '\t' || *q == '\r')) ++q;
    int64_t v = 0;
    auto [ptr, ec] = std::from_chars(p, q, v);
    if (ec != std::errc() || ptr != q || v < 0 || v > INT32_MAX)
      fail("{}: '{}' is not a token id (expected a non-negative integer)", what, std::string(p, q));
    ids.push_back(int32_t(v));
    p = q;
  }
  return ids;
}

}  // namespace ropepp::cli
