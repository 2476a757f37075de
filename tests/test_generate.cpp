// test_generate.cpp: the generation loop on a tiny random model with a small sentencepiece tokenizer:
// greedy is deterministic and starts with the model's argmax; a seed fixes the sampled text; stop strings
// cut the text exactly before their first occurrence; streamed pieces add up to the result; the prompt and
// context limits are clear errors / stop reasons; a failed feed leaves the session as it was.
#include <cstdlib>

#include <gtest/gtest.h>

#include "generate.h"
#include "testing_checkpoint.h"

namespace ropepp {
namespace {

class GenerateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() / ("ropepp_test_generate_" + std::to_string(::getpid()));
    testing::TinySpec s;
    s.mode = "ec";
    testing::write_tiny_checkpoint(dir_, s);
    spm_ok_ = testing::write_spm_tokenizer(dir_);
  }
  void SetUp() override {
    ASSERT_TRUE(spm_ok_) << "spm_train (Debian package sentencepiece) failed or is missing";
    ck_ = load_checkpoint(dir_);
    be_ = make_cpu_backend();
    ModelOptions opt;
    opt.n_ctx = 96;
    model_ = std::make_unique<Model>(*ck_, *be_, opt);
    tok_ = Tokenizer::from_dir(dir_);
  }
  GenerateResult run(const std::string& prompt, SamplerParams sp, GenerateParams gp, std::string* streamed = nullptr) {
    Session s(*model_);
    Sampler sampler(sp);
    const auto ids = tok_->encode(prompt);
    std::string acc;
    auto r = generate(s, *tok_, ids, sampler, gp, [&](const std::string& t) { acc += t; });
    if (streamed) *streamed = acc;
    return r;
  }
  static inline std::filesystem::path dir_;
  static inline bool spm_ok_ = false;
  std::unique_ptr<Checkpoint> ck_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(GenerateTest, GreedyIsDeterministicAndStartsWithArgmax) {
  SamplerParams sp;
  sp.temp = 0;
  GenerateParams gp;
  gp.n_predict = 20;
  gp.stop_at_eos = false;
  const auto a = run("the whale sailed", sp, gp);
  const auto b = run("the whale sailed", sp, gp);
  ASSERT_EQ(a.tokens.size(), 20u);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.text, b.text);
  EXPECT_EQ(a.stop_reason, "length");
  // The first token is the argmax of the prompt's last logits row.
  const auto ids = tok_->encode("the whale sailed");
  const int seq = model_->cache().add_sequence();
  SeqChunk c{seq, ids, false};
  const auto logits = model_->forward(std::span(&c, 1));
  model_->cache().remove_sequence(seq);
  EXPECT_EQ(a.tokens[0], argmax(logits));
}

TEST_F(GenerateTest, SeedFixesSampledText) {
  SamplerParams sp;
  sp.temp = 1.2f;
  sp.top_k = 0;
  sp.top_p = 1.0f;
  sp.min_p = 0;
  GenerateParams gp;
  gp.n_predict = 24;
  gp.stop_at_eos = false;
  sp.seed = 5;
  const auto a = run("call me", sp, gp), b = run("call me", sp, gp);
  EXPECT_EQ(a.tokens, b.tokens);
  bool any_differs = false;
  for (uint64_t seed = 6; seed < 10 && !any_differs; ++seed) {
    sp.seed = seed;
    any_differs = run("call me", sp, gp).tokens != a.tokens;
  }
  EXPECT_TRUE(any_differs);
}

TEST_F(GenerateTest, StreamedTextEqualsResultAndDecode) {
  SamplerParams sp;
  sp.temp = 0.9f;
  sp.seed = 3;
  GenerateParams gp;
  gp.n_predict = 40;
  gp.stop_at_eos = false;
  std::string streamed;
  const auto r = run("ship", sp, gp, &streamed);
  EXPECT_EQ(streamed, r.text);
  EXPECT_EQ(r.text, tok_->decode(r.tokens, true));
}

TEST_F(GenerateTest, StopStringCutsBeforeFirstOccurrence) {
  SamplerParams sp;
  sp.temp = 0;
  GenerateParams gp;
  gp.n_predict = 40;
  gp.stop_at_eos = false;
  const auto full = run("the sea", sp, gp);
  ASSERT_GE(full.text.size(), 8u) << "the tiny model produced too little text: '" << full.text << "'";
  // Pick a stop string from the middle of the greedy text; generation must end just before it.
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  gp.stop = {"never-appears-in-this-text", stop};
  std::string streamed;
  const auto cut = run("the sea", sp, gp, &streamed);
  EXPECT_EQ(cut.stop_reason, "stop");
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(streamed, cut.text);
  EXPECT_LE(cut.tokens.size(), full.tokens.size());
}

TEST_F(GenerateTest, LimitsAreErrorsOrStopReasons) {
  SamplerParams sp;
  sp.temp = 0;
  GenerateParams gp;
  gp.n_predict = 1000;
  gp.stop_at_eos = false;
  const auto r = run("the whale", sp, gp);
  EXPECT_EQ(r.stop_reason, "context");
  // Every position of the context is used; the last sampled token needs no cache slot of its own.
  EXPECT_EQ(r.prompt_tokens + int(r.tokens.size()), 96 + 1);

  std::string longp;
  for (int i = 0; i < 200; ++i) longp += "the whale ";
  EXPECT_THROW(run(longp, sp, gp), Error);

  // A failed feed (token outside the vocabulary) leaves the session's cache as it was.
  Session s(*model_);
  const auto ids = tok_->encode("the ship");
  s.feed(ids);
  const int32_t bad = 100000;
  EXPECT_THROW(s.feed(std::span(&bad, 1)), Error);
  EXPECT_EQ(s.tokens().size(), ids.size());
  EXPECT_EQ(model_->cache().length(0), int(ids.size()));
}

// Greedy decoding on the backend runs one step ahead (the step that feeds the next token is queued before a token
// is handled): whatever ends the generation, the session and its cache hold exactly the prompt and the tokens the
// loop fed (all generated ones at the length limit, the stop string's last token too, the context's worth), not
// the steps queued beyond them.
TEST_F(GenerateTest, GreedyStepsAheadLeaveTheSessionAsFed) {
  SamplerParams sp;
  sp.temp = 0;
  auto check = [&](GenerateParams gp, const std::string& want_reason, int extra_fed) {
    Session s(*model_);
    Sampler sampler(sp);
    const auto ids = tok_->encode("the whale");
    const auto r = generate(s, *tok_, ids, sampler, gp, nullptr);
    EXPECT_EQ(r.stop_reason, want_reason);
    const size_t fed = ids.size() + r.tokens.size() + size_t(extra_fed);
    EXPECT_EQ(s.tokens().size(), fed) << want_reason;
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(model_->cache().length(0), int(fed)) << want_reason;
    const size_t kept = std::min(r.tokens.size(), s.tokens().size() - std::min(s.tokens().size(), ids.size()));
    EXPECT_TRUE(std::equal(r.tokens.begin(), r.tokens.begin() + ptrdiff_t(kept), s.tokens().begin() + ptrdiff_t(ids.size())));
    return r;
  };
  GenerateParams gp;
  gp.stop_at_eos = false;
  gp.n_predict = 12;
  const auto full = check(gp, "length", 0);
  gp.stop = {tok_->decode(std::vector<int32_t>(full.tokens.begin() + 5, full.tokens.begin() + 6), true)};
  if (!gp.stop[0].empty() && full.text.find(gp.stop[0]) != std::string::npos) check(gp, "stop", 0);
  gp.stop.clear();
  gp.n_predict = 1000;
  check(gp, "context", -1);  // the last generated token needs no slot of its own
  // The next generation in the same session continues from what it holds.
  Session s(*model_);
  Sampler sampler(sp);
  gp.n_predict = 6;
  const auto a = generate(s, *tok_, tok_->encode("the whale"), sampler, gp, nullptr);
  const auto b = generate(s, *tok_, tok_->encode(" and"), sampler, gp, nullptr);
  EXPECT_EQ(a.stop_reason, "length");
  EXPECT_EQ(b.stop_reason, "length");
  EXPECT_EQ(s.tokens().size(), tok_->encode("the whale").size() + 6 + tok_->encode(" and").size() + 6);
  EXPECT_EQ(model_->cache().length(0), int(s.tokens().size()));
}

// Chained greedy steps (ModelOptions::greedy_steps: several steps per queued call, one graph on CUDA) generate
// what one step per call does — text, tokens, stop reason — at a length that is not a multiple of the steps, at
// a stop string, at the full context and in a second generation of the same session; the session and cache then
// hold exactly what was fed, not the extra steps of the last call.
TEST_F(GenerateTest, ChainedGreedyStepsGenerateTheSame) {
  SamplerParams sp;
  sp.temp = 0;
  auto gen = [&](Model& m, const GenerateParams& gp, size_t* fed, bool twice = true) {
    Session s(m);
    Sampler sampler(sp);
    const auto ids = tok_->encode("the whale");
    auto r = generate(s, *tok_, ids, sampler, gp, nullptr);
    if (twice) {  // the same session goes on from what it holds
      auto r2 = generate(s, *tok_, tok_->encode(" and"), sampler, gp, nullptr);
      r.tokens.insert(r.tokens.end(), r2.tokens.begin(), r2.tokens.end());
      r.text += "|" + r2.text;
      r.stop_reason += "|" + r2.stop_reason;
    }
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(m.cache().length(0), int(s.tokens().size()));
    *fed = s.tokens().size();
    return r;
  };
  for (int steps : {3, 8}) {
    ModelOptions opt;
    opt.n_ctx = 96;
    opt.greedy_steps = steps;
    Model chained(*ck_, *be_, opt);
    EXPECT_EQ(chained.greedy_steps(), steps);
    GenerateParams gp;
    gp.stop_at_eos = false;
    for (int n : {1, 7, 13}) {
      gp.n_predict = n;
      size_t fed1 = 0, fedk = 0;
      const auto a = gen(*model_, gp, &fed1), b = gen(chained, gp, &fedk);
      EXPECT_EQ(b.tokens, a.tokens) << steps << " steps, n " << n;
      EXPECT_EQ(b.text, a.text);
      EXPECT_EQ(b.stop_reason, a.stop_reason);
      EXPECT_EQ(fedk, fed1);
    }
    gp.n_predict = 13;
    size_t fed1 = 0, fedk = 0;
    const auto full = gen(*model_, gp, &fed1);
    gp.stop = {tok_->decode(std::vector<int32_t>(full.tokens.begin() + 4, full.tokens.begin() + 5), true)};
    if (!gp.stop[0].empty()) {
      const auto a = gen(*model_, gp, &fed1), b = gen(chained, gp, &fedk);
      EXPECT_EQ(b.tokens, a.tokens) << steps << " steps, stop";
      EXPECT_EQ(b.stop_reason, a.stop_reason);
      EXPECT_EQ(fedk, fed1);
    }
    gp.stop.clear();
    gp.n_predict = 1000;
    const auto a = gen(*model_, gp, &fed1, false), b = gen(chained, gp, &fedk, false);
    EXPECT_EQ(a.stop_reason, "context");
    EXPECT_EQ(b.tokens, a.tokens) << steps << " steps, context";
    EXPECT_EQ(b.stop_reason, a.stop_reason);
    EXPECT_EQ(fedk, fed1);
  }
  // Unset, the CPU backend's default: one step per call (a group of steps would reach the user at once).
  if (!std::getenv("ROPEPP_GREEDY_STEPS")) {
    EXPECT_EQ(model_->greedy_steps(), 1);
  }
  ModelOptions bad;
  bad.greedy_steps = kMaxChainedSteps + 1;
  EXPECT_THROW(Model(*ck_, *be_, bad), Error);
}

}  // namespace
}  // namespace ropepp
