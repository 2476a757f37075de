// ropepp.h: the small public API. One Engine = one loaded checkpoint on one device, with its tokenizer and
// a KV cache. Everything else (backends, kernels, the forward pass) is internal.
//
//   auto eng = ropepp::Engine::load("models/default", {.device = "cpu", .n_ctx = 2048});
//   std::string text = eng->generate("The whale", {.n_predict = 32, .temp = 0});
//
// Every failure throws ropepp::Error (a std::runtime_error) with a message naming what was wrong.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace ropepp {

struct Error;  // derives from std::runtime_error (src/common.h)

struct EngineOptions {
  std::string device = "cpu";     // "cpu", "cuda", "cuda:N"
  int n_ctx = 4096;               // longest sequence in tokens (≤ 65,536)
  std::string rope_mode = "auto"; // "auto", "rope", "eh", "ec"
  int threads = 0;                // CPU threads, 0 = all cores
};

struct GenerationOptions {
  int n_predict = 128;
  float temp = 0.8f;              // 0: greedy
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  uint64_t seed = 1;
  std::vector<std::string> stop;
};

struct ModelInfo {
  std::string mode;               // "rope" | "eh" | "ec"
  int64_t n_params = 0;
  int64_t vocab_size = 0;
  int64_t q_heads = 0, kv_heads = 0, attention_heads = 0, head_dim = 0, layers = 0, hidden = 0;
  size_t kv_bytes_per_token = 0;  // in this engine's cache dtype
};

class Engine {
 public:
  static std::unique_ptr<Engine> load(const std::string& model_dir, const EngineOptions& opt = {});
  virtual ~Engine() = default;

  virtual ModelInfo info() const = 0;
  virtual std::vector<int32_t> tokenize(std::string_view text, bool add_bos = true) const = 0;
  virtual std::string detokenize(std::span<const int32_t> ids) const = 0;
  // Logits of every position of `ids` run as one fresh sequence: [ids.size() * vocab_size].
  virtual std::vector<float> logits(std::span<const int32_t> ids) = 0;
  // Generates a continuation of `prompt` (a fresh sequence); on_text receives text as it is produced.
  virtual std::string generate(std::string_view prompt, const GenerationOptions& g = {},
                               const std::function<void(std::string_view)>& on_text = {}) = 0;
};

}  // namespace ropepp
