// sampler.h: picks the next token from logits on the host, the same way whichever backend made them.
// Order (as llama.cpp): repetition penalty → (temp ≤ 0: argmax) → top-k → softmax(logits / temp) → top-p →
// min-p → draw. Deterministic for a given seed.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace ropepp {

struct SamplerParams {
  float temp = 0.8f;            // ≤ 0: greedy (argmax)
  int top_k = 40;               // 0: off
  float top_p = 0.95f;          // 1: off; in (0, 1]
  float min_p = 0.05f;          // 0: off; keep tokens with p ≥ min_p · p_max
  float repeat_penalty = 1.0f;  // 1: off; > 1 discourages tokens among the last repeat_last_n
  int repeat_last_n = 64;
  uint64_t seed = 0xC0FFEE;

  void validate() const;        // Error naming the flag (--temp, --top-p, ...) and the bad value
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);
  const SamplerParams& params() const { return p_; }
  void set_params(const SamplerParams& p);  // keeps the random stream
  // logits: [vocab]; history: tokens so far (for the repetition penalty).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;  // scratch: (logit or prob, id)
};

int32_t argmax(std::span<const float> logits);

}  // namespace ropepp
