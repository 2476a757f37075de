// test_perplexity.cpp: the perplexity window plans (every token from the second on scored exactly once by
// the sliding recipe; the paper's and llama.cpp's windows) and the scorer (src/perplexity.h) against NLLs
// computed by hand from Model::forward logits, on a small random checkpoint.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "checkpoint.h"
#include "common.h"
#include "model.h"
#include "perplexity.h"
#include "testing_checkpoint.h"
#ifdef ROPEPP_HAS_CUDA
#include "cuda/backend_cuda.h"
#endif

namespace ropepp {
namespace {

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = d(rng);
  return ids;
}

// How often each target is scored, and checks every window's shape.
std::vector<int> coverage(const std::vector<PplWindow>& plan, int64_t n) {
  std::vector<int> c(size_t(n), 0);
  for (const PplWindow& w : plan) {
    EXPECT_LE(0, w.begin);
    EXPECT_LT(w.begin, w.first_target);
    EXPECT_LE(w.first_target, w.end);
    EXPECT_LE(w.end, n);
    for (int64_t t = w.first_target; t < w.end; ++t) ++c[size_t(t)];
  }
  return c;
}

TEST(PerplexityPlan, SlidingScoresEveryTokenOnce) {
  struct Case { int64_t n; int window, stride; };
  const Case cases[] = {{100, 32, 8},  {101, 32, 7},   {20, 64, 16}, {64, 64, 16}, {65, 64, 16},
                        {2, 4096, 512}, {1000, 100, 33}, {513, 512, 1}, {4097, 4096, 512}, {9, 5, 4}};
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n {} window {} stride {}", c.n, c.window, c.stride));
    const auto plan = plan_sliding(c.n, c.window, c.stride);
    const auto cov = coverage(plan, c.n);
    EXPECT_EQ(cov[0], 0);
    for (int64_t t = 1; t < c.n; ++t) EXPECT_EQ(cov[size_t(t)], 1) << "token " << t;
    int64_t prev_end = 0;
    for (size_t k = 0; k < plan.size(); ++k) {
      const PplWindow& w = plan[k];
      EXPECT_EQ(w.begin, int64_t(k) * c.stride);                       // starts 0, S, 2S, ...
      EXPECT_EQ(w.end, std::min<int64_t>(w.begin + c.window, c.n));    // full windows except at the end
      EXPECT_EQ(w.first_target, k == 0 ? 1 : prev_end);                // only what the previous did not score
      prev_end = w.end;
      EXPECT_FALSE(w.bos_first);
    }
    EXPECT_EQ(plan.back().end, c.n);
    // Each target sees at least window - stride tokens of context (or everything before it).
    for (const PplWindow& w : plan)
      for (int64_t t = w.first_target; t < w.end; ++t) EXPECT_GE(t - w.begin, std::min<int64_t>(t, c.window - c.stride));
  }
  EXPECT_EQ(plan_sliding(20, 64, 16).size(), 1u);  // shorter than a window: one window
}

TEST(PerplexityPlan, SlidingWindowEqualsStrideSkipsWindowStarts) {
  const auto cov = coverage(plan_sliding(50, 16, 16), 50);
  for (int64_t t = 1; t < 50; ++t) EXPECT_EQ(cov[size_t(t)], t % 16 == 0 ? 0 : 1) << "token " << t;
}

TEST(PerplexityPlan, PaperWindowsAsTestPpl) {
  // for i in range(0, n, S): begin = max(i+S-W, 0); end = i+S (clipped); labels = last S tokens
  const auto p = plan_paper(9, 4, 2);
  ASSERT_EQ(p.size(), 5u);
  const int64_t want[5][3] = {{0, 2, 1}, {0, 4, 2}, {2, 6, 4}, {4, 8, 6}, {6, 9, 7}};
  for (size_t k = 0; k < 5; ++k) {
    EXPECT_EQ(p[k].begin, want[k][0]) << k;
    EXPECT_EQ(p[k].end, want[k][1]) << k;
    EXPECT_EQ(p[k].first_target, want[k][2]) << k;
  }
  // n not a multiple of S: the last window repeats token 7 (scored by the previous window too)
  EXPECT_EQ(coverage(p, 9)[7], 2);
}

TEST(PerplexityPlan, ChunksScoreSecondHalves) {
  const auto p = plan_chunks(1030, 512);
  ASSERT_EQ(p.size(), 2u);  // the 6-token tail is dropped
  for (size_t k = 0; k < 2; ++k) {
    EXPECT_EQ(p[k].begin, int64_t(k) * 512);
    EXPECT_EQ(p[k].end, int64_t(k + 1) * 512);
    EXPECT_EQ(p[k].end - p[k].first_target, 512 - 1 - 256);  // llama.cpp: n_ctx - 1 - n_ctx/2
    EXPECT_TRUE(p[k].bos_first);
  }
  EXPECT_EQ(plan_chunks(7, 7)[0].first_target, 4);  // odd chunk: first = 3, targets 4 .. 6
}

void expect_error(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error, expected one mentioning '" << part << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(PerplexityPlan, BadParameters) {
  expect_error([] { plan_sliding(100, 16, 0); }, "--stride 0");
  expect_error([] { plan_sliding(100, 16, -3); }, "--stride -3");
  expect_error([] { plan_sliding(100, 8, 16); }, "--window 8 is shorter than --stride 16");
  expect_error([] { plan_sliding(100, 70000, 512); }, "--window 70000");
  expect_error([] { plan_sliding(1, 16, 8); }, "at least 2");
  expect_error([] { plan_sliding(0, 16, 8); }, "at least 2");
  expect_error([] { plan_chunks(100, 1); }, "--chunk 1");
  expect_error([] { plan_chunks(100, 128); }, "fewer than one --chunk of 128");
  expect_error([] { plan_paper(100, 4, 8); }, "--window 4 is shorter");
}

// ---- scoring against Model::forward ----------------------------------------------------------------

struct Fixture {
  std::unique_ptr<Checkpoint> ck;
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<Model> model;
  explicit Fixture(ModelOptions opt, const std::string& mode = "ec") {
    testing::TinySpec s;
    s.mode = mode;
    const auto dir = std::filesystem::temp_directory_path() /
                     ("ropepp_test_perplexity_" + mode + "_" + std::to_string(::getpid()));
    ck = load_checkpoint(testing::write_tiny_checkpoint(dir, s));
    model = std::make_unique<Model>(*ck, *be, opt);
  }
  // NLL of targets begin+1 .. end-1 of ids[begin, end) (BOS in place of ids[begin] when bos), from the
  // full logits of one Model::forward, log-softmax in double on the host.
  std::vector<double> by_hand(const std::vector<int32_t>& ids, int64_t begin, int64_t end, std::optional<int32_t> bos = {}) {
    std::vector<int32_t> w(ids.begin() + begin, ids.begin() + end);
    if (bos) w[0] = *bos;
    const int seq = model->cache().add_sequence();
    SeqChunk c{seq, w, true};
    const std::vector<float> logits = model->forward(std::span(&c, 1));
    model->cache().remove_sequence(seq);
    const int64_t V = model->config().vocab_size;
    std::vector<double> out;
    for (size_t r = 0; r + 1 < w.size(); ++r) {
      const float* row = logits.data() + r * size_t(V);
      double m = row[0];
      for (int64_t v = 1; v < V; ++v) m = std::max(m, double(row[v]));
      double s = 0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - m);
      out.push_back(m + std::log(s) - double(row[ids[size_t(begin) + r + 1]]));
    }
    return out;  // out[k]: target begin + 1 + k
  }
};

ModelOptions opts(int n_ctx, int max_seqs, int batch) {
  ModelOptions o;
  o.n_ctx = n_ctx;
  o.max_seqs = max_seqs;
  o.max_batch_tokens = batch;
  return o;
}

TEST(Perplexity, SlidingEqualsMeanOfPerPositionNll) {
  struct Case { int n, window, stride, batch, parallel; };
  // several windows; n not a multiple of S; n < window; batches that split windows; windows run in parallel
  const Case cases[] = {{150, 48, 16, 20, 1}, {150, 48, 16, 64, 3}, {37, 64, 16, 16, 1}, {121, 40, 13, 512, 4},
                        {90, 30, 30, 25, 2}};
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n {} window {} stride {} batch {} parallel {}", c.n, c.window, c.stride, c.batch, c.parallel));
    Fixture f(opts(c.window, c.parallel + 1, c.batch));
    const auto ids = random_ids(c.n, 300, uint32_t(c.n + c.window));
    PplParams p;
    p.window = c.window;
    p.stride = c.stride;
    p.max_parallel = c.parallel;
    int calls = 0;
    int64_t last_done = -1, total = 0;
    p.progress = [&](const ScoreProgress& sp) {
      ++calls;
      EXPECT_GE(sp.tokens_done, last_done);
      last_done = sp.tokens_done;
      total = sp.tokens_total;
    };
    const PplResult r = compute_perplexity(*f.model, ids, p);
    EXPECT_GT(calls, 0);
    EXPECT_EQ(last_done, total);

    const auto plan = plan_sliding(c.n, c.window, c.stride);
    ASSERT_EQ(r.windows.size(), plan.size());
    std::vector<double> all;
    for (size_t k = 0; k < plan.size(); ++k) {
      const auto h = f.by_hand(ids, plan[k].begin, plan[k].end);
      double s = 0;
      for (int64_t t = plan[k].first_target; t < plan[k].end; ++t) {
        s += h[size_t(t - plan[k].begin - 1)];
        all.push_back(h[size_t(t - plan[k].begin - 1)]);
      }
      EXPECT_EQ(r.windows[k].start, plan[k].begin);
      EXPECT_EQ(r.windows[k].scored, plan[k].end - plan[k].first_target);
      EXPECT_NEAR(r.windows[k].nll_sum, s, 1e-4 * std::max(1.0, std::fabs(s)));
    }
    double mean = 0;
    for (double x : all) mean += x;
    mean /= double(all.size());
    double var = 0;
    for (double x : all) var += (x - mean) * (x - mean);
    const double se = std::sqrt(var / double(all.size() - 1) / double(all.size()));
    EXPECT_EQ(r.scored, int64_t(all.size()));
    EXPECT_EQ(r.scored, c.stride < c.window ? c.n - 1 : c.n - 1 - (c.n - 1) / c.stride);
    EXPECT_NEAR(r.nll, mean, 1e-5 * mean);
    EXPECT_NEAR(r.ppl, std::exp(mean), 1e-5 * std::exp(mean));
    EXPECT_NEAR(r.nll_stderr, se, 1e-4 * se);
    EXPECT_NEAR(std::log(r.ppl_hi) - r.nll, 1.96 * se, 1e-4 * se);
    EXPECT_EQ(f.model->cache().free_blocks(), f.model->cache().total_blocks());  // sequences given back
  }
}

TEST(Perplexity, ParallelWindowsEqualSequential) {
  const auto ids = random_ids(200, 300, 7);
  PplParams p;
  p.window = 32;
  p.stride = 8;
  Fixture seq(opts(32, 1, 512));
  const PplResult a = compute_perplexity(*seq.model, ids, p);
  p.max_parallel = 8;
  Fixture par(opts(32, 8, 96));
  const PplResult b = compute_perplexity(*par.model, ids, p);
  ASSERT_EQ(a.windows.size(), b.windows.size());
  EXPECT_GT(a.windows.size(), 8u);
  for (size_t k = 0; k < a.windows.size(); ++k)
    EXPECT_NEAR(a.windows[k].nll_sum, b.windows[k].nll_sum, 1e-4 * std::fabs(a.windows[k].nll_sum));
  EXPECT_NEAR(a.nll, b.nll, 1e-6 * a.nll);
  EXPECT_EQ(a.tokens_fed, b.tokens_fed);
}

// ModelOptions::logit_rows only cuts the scored rows' lm_head matmuls into pieces: 5 rows per matmul (windows of 16
// scored rows in 4 pieces, forward calls of 2 windows in 7) give the one-piece results; logits (forward with every
// row) too. Out of range: a clear error.
TEST(Perplexity, LogitRowsOnlyCutTheLmHeadIntoPieces) {
  const auto ids = random_ids(300, 300, 31);
  PplParams p;
  p.window = 48;
  p.stride = 16;
  p.max_parallel = 2;
  Fixture whole(opts(48, 3, 100));
  ModelOptions o = opts(48, 3, 100);
  o.logit_rows = 5;
  Fixture pieces(o);
  const PplResult a = compute_perplexity(*whole.model, ids, p);
  const PplResult b = compute_perplexity(*pieces.model, ids, p);
  ASSERT_EQ(a.windows.size(), b.windows.size());
  EXPECT_GT(a.windows.size(), 10u);
  for (size_t k = 0; k < a.windows.size(); ++k) {
    EXPECT_EQ(a.windows[k].scored, b.windows[k].scored);
    EXPECT_NEAR(b.windows[k].nll_sum, a.windows[k].nll_sum, 1e-6 * std::fabs(a.windows[k].nll_sum)) << "window " << k;
  }
  const std::vector<int32_t> w(ids.begin(), ids.begin() + 23);
  std::vector<float> logits[2];
  for (int f = 0; f < 2; ++f) {
    Model& m = *(f == 0 ? whole : pieces).model;
    const int seq = m.cache().add_sequence();
    SeqChunk c{seq, w, true};
    logits[f] = m.forward(std::span(&c, 1));
    m.cache().remove_sequence(seq);
  }
  ASSERT_EQ(logits[0].size(), logits[1].size());
  for (size_t i = 0; i < logits[0].size(); ++i) ASSERT_NEAR(logits[1][i], logits[0][i], 1e-5f) << "logit " << i;
  for (int bad : {0, 4097}) {
    ModelOptions ob = opts(48, 1, 64);
    ob.logit_rows = bad;
    try {
      Model m(*whole.ck, *whole.be, ob);
      ADD_FAILURE() << "logit_rows " << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("logits rows per matmul"), std::string::npos) << e.what();
    }
  }
}

#ifdef ROPEPP_HAS_CUDA
// The CUDA perplexity cases: windows of 48 with stride 16 over 700 random ids, one window per forward call
// (batch 64) and four (batch 200, windows cut across calls). check(cpu_fixture, gpu_model, params, ids, batch,
// parallel) runs once per case on a model of the fixture's checkpoint on `gpu`.

template <class Check>
void for_each_cuda_case(Backend& gpu, uint32_t seed, Check&& check) {
  const auto ids = random_ids(700, 300, seed);
  for (const auto& [batch, parallel] : {std::pair{64, 1}, std::pair{200, 4}}) {
    SCOPED_TRACE(fmt::format("batch {} parallel {}", batch, parallel));
    PplParams p;
    p.window = 48;
    p.stride = 16;
    p.max_parallel = parallel;
    Fixture f(opts(48, parallel + 1, batch));
    Model on_gpu(*f.ck, gpu, opts(48, parallel + 1, batch));
    check(f, on_gpu, p, ids, batch, parallel);
    EXPECT_EQ(on_gpu.cache().free_blocks(), on_gpu.cache().total_blocks());
  }
}
#endif

// The CUDA tests: skipped without a CUDA build or device.
class PerplexityCuda : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef ROPEPP_HAS_CUDA
    GTEST_SKIP() << "built without CUDA";
#else
    try {
      gpu = make_cuda_backend(0);
    } catch (const Error& e) {
      GTEST_SKIP() << "no CUDA device: " << e.what();
    }
#endif
  }
  std::unique_ptr<Backend> gpu;
};

// The CUDA backend (where there is one) scores the same windows as the CPU: many forward calls, each queued
// before the previous one's NLLs are read (Model::forward_nll_queued), windows cut across calls and run in
// parallel. Tolerance: the GPU's 16-bit matrices and activations.
TEST_F(PerplexityCuda, EqualsCpu) {
#ifdef ROPEPP_HAS_CUDA
  for_each_cuda_case(*gpu, 21, [](Fixture& f, Model& on_gpu, const PplParams& p, const std::vector<int32_t>& ids,
                                  int batch, int parallel) {
    const PplResult a = compute_perplexity(*f.model, ids, p);
    const PplResult b = compute_perplexity(on_gpu, ids, p);
    ASSERT_EQ(a.windows.size(), b.windows.size());
    EXPECT_GT(a.windows.size(), 40u);
    double worst = 0;
    for (size_t k = 0; k < a.windows.size(); ++k) {
      EXPECT_EQ(a.windows[k].scored, b.windows[k].scored);
      worst = std::max(worst, std::fabs(a.windows[k].nll_sum - b.windows[k].nll_sum) / std::fabs(a.windows[k].nll_sum));
    }
    std::printf("[ info ] batch %d parallel %d: worst window NLL-sum relative difference GPU vs CPU %.2e, "
                "mean NLL %.6f vs %.6f\n", batch, parallel, worst, b.nll, a.nll);
    EXPECT_LT(worst, 1e-2);
    EXPECT_NEAR(b.nll, a.nll, 3e-3 * a.nll);
  });
#endif
}

// Scoring forward calls recorded as CUDA graphs (ROPEPP_CUDA_GRAPH_SCORING) give what the eager calls give: the
// same kernels on the same inputs, only launched from a graph (the windows after the first two of each shape).
TEST_F(PerplexityCuda, GraphScoringEqualsEager) {
#ifdef ROPEPP_HAS_CUDA
  for_each_cuda_case(*gpu, 23, [this](Fixture&, Model& on_gpu, const PplParams& p, const std::vector<int32_t>& ids,
                                   int batch, int parallel) {
    set_cuda_graph_scoring(*gpu, false);
    const PplResult eager = compute_perplexity(on_gpu, ids, p);
    EXPECT_EQ(cuda_graph_count(*gpu), 0u);
    set_cuda_graph_scoring(*gpu, true);
    const PplResult graphed = compute_perplexity(on_gpu, ids, p);
    EXPECT_GT(cuda_graph_count(*gpu), 0u);  // the path ran
    set_cuda_graph_scoring(*gpu, false);
    ASSERT_EQ(eager.windows.size(), graphed.windows.size());
    int bitwise = 0;
    for (size_t k = 0; k < eager.windows.size(); ++k) {
      EXPECT_EQ(eager.windows[k].scored, graphed.windows[k].scored);
      EXPECT_NEAR(graphed.windows[k].nll_sum, eager.windows[k].nll_sum, 1e-6 * std::fabs(eager.windows[k].nll_sum))
          << "window " << k;
      bitwise += graphed.windows[k].nll_sum == eager.windows[k].nll_sum;
    }
    std::printf("[ info ] batch %d parallel %d: %d of %zu windows bitwise equal graphed vs eager, %zu graphs kept\n",
                batch, parallel, bitwise, eager.windows.size(), cuda_graph_count(*gpu));
    gpu->graph_clear();
  });
#endif
}

TEST(Perplexity, ChunkRecipeScoresSecondHalvesWithBos) {
  const int C = 24;
  Fixture f(opts(C, 2, 30));
  auto ids = random_ids(C * 3 + 5, 300, 11);
  ids[0] = 1;
  PplParams p;
  p.recipe = PplParams::Recipe::Chunk;
  p.chunk = C;
  p.bos = 1;
  p.max_parallel = 2;
  const PplResult r = compute_perplexity(*f.model, ids, p);
  ASSERT_EQ(r.windows.size(), 3u);
  EXPECT_EQ(r.scored, 3 * (C - 1 - C / 2));
  std::vector<double> all;
  for (int k = 0; k < 3; ++k) {
    const auto h = f.by_hand(ids, k * C, (k + 1) * C, int32_t(1));  // BOS replaces each chunk's first token
    double s = 0;
    for (int t = C / 2 + 1; t < C; ++t) s += h[size_t(t - 1)], all.push_back(h[size_t(t - 1)]);
    EXPECT_EQ(r.windows[size_t(k)].start, k * C);
    EXPECT_NEAR(r.windows[size_t(k)].nll_sum, s, 1e-4 * s);
  }
  double mean = 0;
  for (double x : all) mean += x;
  mean /= double(all.size());
  EXPECT_NEAR(r.nll, mean, 1e-5 * mean);
  // Without BOS the chunks keep their own first token, and the numbers change.
  p.bos.reset();
  const PplResult nb = compute_perplexity(*f.model, ids, p);
  EXPECT_GT(std::fabs(nb.windows[1].nll_sum - r.windows[1].nll_sum), 1e-6);
  EXPECT_NEAR(nb.windows[0].nll_sum, r.windows[0].nll_sum, 1e-4 * r.windows[0].nll_sum);  // ids[0] is BOS already
}

// test_ppl.py transcribed: loss over the window's labelled targets minus the ignored ids, times stride,
// summed, divided by the last i.
double paper_by_hand(Fixture& f, const std::vector<int32_t>& ids, int W, int S, int32_t ignore) {
  const int64_t n = int64_t(ids.size());
  double sum = 0;
  int64_t i = 0, last_i = 0;
  for (i = 0; i < n; i += S) {
    const int64_t begin = std::max<int64_t>(i + S - W, 0), end = std::min<int64_t>(i + S, n);
    const int64_t L = end - begin;
    const auto h = f.by_hand(ids, begin, end);
    double s = 0;
    int cnt = 0;
    for (int64_t pos = (L > S ? L - S : 1); pos < L; ++pos) {  // label positions after the shift
      if (ids[size_t(begin + pos)] == ignore) continue;
      s += h[size_t(pos - 1)];
      ++cnt;
    }
    sum += s / cnt * S;
    last_i = i;
  }
  return std::exp(sum / double(last_i));
}

TEST(Perplexity, PaperFormulaAsTestPpl) {
  struct Case { int n, window, stride; };
  // W % S == 0 (extra windows only at the end), n not a multiple of S (a repeated tail), W % S != 0
  const Case cases[] = {{160, 32, 8}, {157, 32, 8}, {130, 30, 8}, {20, 64, 8}};
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("n {} window {} stride {}", c.n, c.window, c.stride));
    Fixture f(opts(c.window, 1, 64));
    auto ids = random_ids(c.n, 300, uint32_t(c.n));
    ids[size_t(c.n / 2)] = 2;  // an eos in the text: the script's ignore_index leaves it out
    PplParams p;
    p.window = c.window;
    p.stride = c.stride;
    p.paper_formula = true;
    p.ignore_ids = {2};
    const PplResult r = compute_perplexity(*f.model, ids, p);
    ASSERT_TRUE(r.has_paper);
    const double want = paper_by_hand(f, ids, c.window, c.stride, 2);
    EXPECT_NEAR(r.paper_ppl, want, 1e-5 * want);
    EXPECT_EQ(r.paper_divisor, (c.n - 1) / c.stride * c.stride);
    EXPECT_GT(r.paper_ppl, r.ppl);  // the divisor is smaller than the tokens summed
    if (c.n == 160) {
      EXPECT_EQ(r.paper_extra_windows, 0);
    }
    if (c.n == 157) {
      EXPECT_EQ(r.paper_extra_windows, 1);
    }
  }
}

TEST(Perplexity, RejectsBadInput) {
  Fixture f(opts(16, 1, 16));
  PplParams p;
  p.window = 16;
  p.stride = 4;
  const std::vector<int32_t> one = {5};
  expect_error([&] { compute_perplexity(*f.model, one, p); }, "at least 2");
  const std::vector<int32_t> bad = {5, 300, 7};
  expect_error([&] { compute_perplexity(*f.model, bad, p); }, "token id 300 at position 1");
  p.window = 32;
  const auto ids = random_ids(40, 300, 3);
  expect_error([&] { compute_perplexity(*f.model, ids, p); }, "the model has 16");
  p.window = 16;
  p.recipe = PplParams::Recipe::Chunk;
  p.chunk = 8;
  p.paper_formula = true;
  expect_error([&] { compute_perplexity(*f.model, ids, p); }, "--paper-formula");
}

}  // namespace
}  // namespace ropepp
