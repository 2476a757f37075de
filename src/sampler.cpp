// sampler.cpp: see sampler.h.
#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "common.h"

namespace ropepp {

void SamplerParams::validate() const {
  if (!std::isfinite(temp) || temp < 0) fail("--temp {}: expected ≥ 0 (0 = greedy)", temp);
  if (top_k < 0) fail("--top-k {}: expected ≥ 0 (0 = off)", top_k);
  if (!(top_p > 0 && top_p <= 1)) fail("--top-p {}: expected a value in (0, 1]", top_p);
  if (!(min_p >= 0 && min_p <= 1)) fail("--min-p {}: expected a value in [0, 1]", min_p);
  if (!(repeat_penalty > 0) || !std::isfinite(repeat_penalty))
    fail("--repeat-penalty {}: expected > 0 (1 = off)", repeat_penalty);
  if (repeat_last_n < 0) fail("--repeat-last-n {}: expected ≥ 0", repeat_last_n);
}

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) { p_.validate(); }

void Sampler::set_params(const SamplerParams& p) {
  p.validate();
  if (p.seed != p_.seed) rng_.seed(p.seed);
  p_ = p;
}

int32_t argmax(std::span<const float> logits) {
  return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const int32_t V = int32_t(logits.size());
  cand_.resize(size_t(V));
  for (int32_t i = 0; i < V; ++i) cand_[size_t(i)] = {logits[size_t(i)], i};

  if (p_.repeat_penalty != 1.0f && p_.repeat_last_n > 0) {
    const size_t n = std::min(history.size(), size_t(p_.repeat_last_n));
    std::unordered_set<int32_t> seen(history.end() - ptrdiff_t(n), history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= V) continue;
      float& l = cand_[size_t(id)].first;
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    }
  }
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  if (p_.temp <= 0) return std::min_element(cand_.begin(), cand_.end(), by_logit)->second;

  size_t k = cand_.size();
  if (p_.top_k > 0 && size_t(p_.top_k) < k) k = size_t(p_.top_k);
  std::partial_sort(cand_.begin(), cand_.begin() + ptrdiff_t(k), cand_.end(), by_logit);
  cand_.resize(k);

  // softmax with temperature, in double for a stable cumulative sum
  const double mx = cand_[0].first;
  std::vector<double> prob(k);
  double sum = 0;
  for (size_t i = 0; i < k; ++i) sum += prob[i] = std::exp((double(cand_[i].first) - mx) / p_.temp);
  for (double& x : prob) x /= sum;

  size_t keep = k;
  if (p_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < k; ++i) {
      cum += prob[i];
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (p_.min_p > 0) {
    size_t m = 1;
    while (m < keep && prob[m] >= double(p_.min_p) * prob[0]) ++m;
    keep = m;
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += prob[i];
  const double u = double(rng_() >> 11) * 0x1.0p-53 * total;
  double cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += prob[i];
    if (u < cum) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace ropepp
