// test_sampler.cpp: the sampler's rules: greedy is argmax; the same seed draws the same tokens; top-k,
// top-p and min-p keep exactly the tokens they should; draws follow softmax(logits / temp); the
// repetition penalty moves mass away from recent tokens; bad settings are errors naming the flag.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>

#include "common.h"
#include "sampler.h"

namespace ropepp {
namespace {

std::vector<float> random_logits(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

TEST(Sampler, GreedyIsArgmax) {
  SamplerParams p;
  p.temp = 0;
  Sampler s(p);
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto l = random_logits(1000, seed);
    EXPECT_EQ(s.sample(l, {}), argmax(l));
  }
}

TEST(Sampler, SameSeedSameDraws) {
  SamplerParams p;
  p.temp = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0;
  p.seed = 1234;
  Sampler a(p), b(p);
  p.seed = 4321;
  Sampler c(p);
  const auto l = random_logits(500, 3);
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    const int32_t x = a.sample(l, {}), y = b.sample(l, {}), z = c.sample(l, {});
    EXPECT_EQ(x, y);
    differ += x != z;
  }
  EXPECT_GT(differ, 50);  // another seed gives another stream
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplerParams p;
  p.temp = 2.0f;
  p.top_k = 1;
  Sampler s(p);
  const auto l = random_logits(300, 5);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(l, {}), argmax(l));
}

TEST(Sampler, FiltersKeepTheRightSet) {
  // probabilities ∝ exp(logits): 0.5, 0.25, 0.125, 0.0625, 0.0625
  const std::vector<float> l = {std::log(8.f), std::log(4.f), std::log(2.f), 0.f, 0.f};
  auto drawn = [&](SamplerParams p) {
    p.temp = 1.0f;
    Sampler s(p);
    std::set<int32_t> seen;
    for (int i = 0; i < 4000; ++i) seen.insert(s.sample(l, {}));
    return seen;
  };
  SamplerParams p;
  p.top_k = 0;
  p.min_p = 0;
  p.top_p = 0.74f;  // 0.5 + 0.25 = 0.75 ≥ 0.74: two tokens
  EXPECT_EQ(drawn(p), (std::set<int32_t>{0, 1}));
  p.top_p = 1.0f;
  p.top_k = 3;
  EXPECT_EQ(drawn(p), (std::set<int32_t>{0, 1, 2}));
  p.top_k = 0;
  p.min_p = 0.2f;  // keep p ≥ 0.1: tokens 0, 1, 2
  EXPECT_EQ(drawn(p), (std::set<int32_t>{0, 1, 2}));
  p.min_p = 0;
  EXPECT_EQ(drawn(p), (std::set<int32_t>{0, 1, 2, 3, 4}));
}

TEST(Sampler, DrawsFollowTheTemperedSoftmax) {
  const std::vector<float> l = {1.0f, 0.0f, -1.0f, 0.5f};
  SamplerParams p;
  p.temp = 0.7f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0;
  Sampler s(p);
  const int N = 40000;
  std::map<int32_t, int> count;
  for (int i = 0; i < N; ++i) ++count[s.sample(l, {})];
  double z = 0;
  for (float x : l) z += std::exp(x / 0.7);
  for (int i = 0; i < 4; ++i) {
    const double expect = std::exp(l[size_t(i)] / 0.7) / z;
    const double sd = std::sqrt(expect * (1 - expect) / N);
    EXPECT_NEAR(double(count[i]) / N, expect, 5 * sd) << "token " << i;
  }
}

TEST(Sampler, RepeatPenaltyAvoidsRecentTokens) {
  std::vector<float> l = {2.0f, 1.9f, -1.0f};
  SamplerParams p;
  p.temp = 0;
  p.repeat_penalty = 1.5f;
  Sampler s(p);
  const std::vector<int32_t> history = {0};
  EXPECT_EQ(s.sample(l, {}), 0);
  EXPECT_EQ(s.sample(l, history), 1);  // 2.0 / 1.5 < 1.9
}

TEST(Sampler, BadSettingsNameTheFlag) {
  auto msg = [](SamplerParams p) {
    try {
      p.validate();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  SamplerParams p;
  p.temp = -1;
  EXPECT_NE(msg(p).find("--temp"), std::string::npos);
  p = {};
  p.top_p = 0;
  EXPECT_NE(msg(p).find("--top-p"), std::string::npos);
  p.top_p = 1.5f;
  EXPECT_NE(msg(p).find("--top-p"), std::string::npos);
  p = {};
  p.min_p = -0.1f;
  EXPECT_NE(msg(p).find("--min-p"), std::string::npos);
  p = {};
  p.repeat_penalty = 0;
  EXPECT_NE(msg(p).find("--repeat-penalty"), std::string::npos);
  EXPECT_EQ(msg(SamplerParams{}), "");
}

}  // namespace
}  // namespace ropepp
