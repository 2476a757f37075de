// test_model.cpp: invariants of the forward pass and the paged KV cache on the CPU backend:
// prefill + one-token decoding through the cache equals one full forward (across block boundaries);
// two sequences interleaved in one pool equal each run alone; chunked batches equal one batch; rows without
// logits skipping the last layer's attention and feed-forward change nothing (both projection forms);
// blocks return to the pool; EH keeps half the KV bytes of EC. (Equality with the fp64 PyTorch
// reference is tested by tests/e2e/compare_logits.py.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <list>
#include <random>

#include "checkpoint.h"
#include "kv_cache.h"
#include "model.h"
#include "testing_checkpoint.h"

namespace ropepp {
namespace {

std::filesystem::path tmp_dir(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("ropepp_test_model_" + name + "_" + std::to_string(::getpid()));
}

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = d(rng);
  return ids;
}

// max |a-b| / max |b|
double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, double(std::fabs(a[i] - b[i])));
    den = std::max(den, double(std::fabs(b[i])));
  }
  return num / den;
}

// The CPU backend, but asking for concatenated projections (Wq|Wk|Wv, Wgate|Wup) as the CUDA backend does, so that
// the forward pass takes that form's path (the fused ops' defaults) here too. Weights are copied: the model
// builds a concatenated one in a temporary buffer.
class ConcatenatingBackend final : public Backend {
 public:
  ConcatenatingBackend() : b_(make_cpu_backend()) {}
  std::string name() const override { return b_->name(); }
  void* alloc(size_t bytes) override { return b_->alloc(bytes); }
  void release(void* p) override { b_->release(p); }
  void upload(void* d, const void* s, size_t n) override { b_->upload(d, s, n); }
  void download(void* d, const void* s, size_t n) override { b_->download(d, s, n); }
  void synchronize() override { b_->synchronize(); }
  Weight load_weight(const void* host, DType dt, int64_t rows, int64_t cols) override {
    const size_t bytes = size_t(rows * cols) * dtype_size(dt);
    copies_.emplace_back(static_cast<const char*>(host), static_cast<const char*>(host) + bytes);
    return b_->load_weight(copies_.back().data(), dt, rows, cols);
  }
  void release_weight(const Weight& w) override { b_->release_weight(w); }
  DType kv_dtype() const override { return b_->kv_dtype(); }
  void embed(const EmbedParams& p) override { b_->embed(p); }
  void rms_norm(const RmsNormParams& p) override { b_->rms_norm(p); }
  void matmul(const MatmulParams& p) override { b_->matmul(p); }
  void rope(const RopeParams& p) override { b_->rope(p); }
  void kv_append(const KvAppendParams& p) override { b_->kv_append(p); }
  void attention(const AttentionParams& p) override { b_->attention(p); }
  void swiglu(const SwigluParams& p) override { b_->swiglu(p); }
  void add(const AddParams& p) override { b_->add(p); }
  void gather_rows(const GatherRowsParams& p) override { b_->gather_rows(p); }
  bool wants_fused_projections() const override { return true; }

 private:
  std::unique_ptr<Backend> b_;
  std::list<std::vector<char>> copies_;
};

struct Fixture {
  std::unique_ptr<Checkpoint> ck;
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> model;
  Fixture(const std::string& mode, ModelOptions opt, bool bf16 = false, bool concatenated = false)
      : Fixture(spec(mode, bf16), opt, concatenated) {}
  Fixture(const testing::TinySpec& s, ModelOptions opt, bool concatenated) {
    ck = load_checkpoint(testing::write_tiny_checkpoint(
        tmp_dir(s.mode + (s.bf16 ? "_bf16" : "") + "_f" + std::to_string(s.ffn)), s));
    if (concatenated) be = std::make_unique<ConcatenatingBackend>();
    else be = make_cpu_backend();
    model = std::make_unique<Model>(*ck, *be, opt);
  }
  static testing::TinySpec spec(const std::string& mode, bool bf16) {
    testing::TinySpec s;
    s.mode = mode;
    s.bf16 = bf16;
    return s;
  }
  std::vector<float> full(std::span<const int32_t> ids) {
    const int seq = model->cache().add_sequence();
    SeqChunk c{seq, ids, true};
    auto out = model->forward(std::span(&c, 1));
    model->cache().remove_sequence(seq);
    return out;
  }
};

class ModesTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ModesTest, DecodeThroughCacheEqualsFullForward) {
  ModelOptions opt;
  opt.n_ctx = 80;
  Fixture f(GetParam(), opt);
  const int V = int(f.ck->config.vocab_size);
  const auto ids = random_ids(70, V, 7);  // crosses 4 block boundaries (block size 16)
  const auto ref = f.full(ids);

  const int seq = f.model->cache().add_sequence();
  const int prefill = 13;
  SeqChunk c{seq, std::span(ids).first(prefill), true};
  auto got = f.model->forward(std::span(&c, 1));
  ASSERT_EQ(got.size(), size_t(prefill) * V);
  EXPECT_LT(rel_err(got.data(), ref.data(), got.size()), 1e-5);
  for (size_t t = prefill; t < ids.size(); ++t) {
    SeqChunk one{seq, std::span(ids).subspan(t, 1), false};
    auto row = f.model->forward(std::span(&one, 1));
    ASSERT_EQ(row.size(), size_t(V));
    EXPECT_LT(rel_err(row.data(), ref.data() + t * V, size_t(V)), 1e-5) << "position " << t;
  }
  EXPECT_EQ(f.model->cache().length(seq), int(ids.size()));
}

TEST_P(ModesTest, InterleavedSequencesEqualEachAlone) {
  ModelOptions opt;
  opt.n_ctx = 64;
  opt.max_seqs = 2;
  Fixture f(GetParam(), opt);
  const int V = int(f.ck->config.vocab_size);
  const auto a = random_ids(40, V, 11), b = random_ids(35, V, 12);
  const auto ref_a = f.full(a), ref_b = f.full(b);

  const int sa = f.model->cache().add_sequence(), sb = f.model->cache().add_sequence();
  // Prefill both in one batch (different lengths), then decode alternately, sometimes in one batch.
  SeqChunk both[2] = {{sa, std::span(a).first(5), true}, {sb, std::span(b).first(9), true}};
  auto got = f.model->forward(both);
  EXPECT_LT(rel_err(got.data(), ref_a.data(), 5 * size_t(V)), 1e-5);
  EXPECT_LT(rel_err(got.data() + 5 * size_t(V), ref_b.data(), 9 * size_t(V)), 1e-5);
  size_t ta = 5, tb = 9;
  int step = 0;
  while (ta < a.size() || tb < b.size()) {
    std::vector<SeqChunk> batch;
    std::vector<std::pair<const std::vector<float>*, size_t>> expect;
    if (ta < a.size() && step % 3 != 1) {
      batch.push_back({sa, std::span(a).subspan(ta, 1), false});
      expect.push_back({&ref_a, ta++});
    }
    if (tb < b.size() && step % 3 != 0) {
      batch.push_back({sb, std::span(b).subspan(tb, 1), false});
      expect.push_back({&ref_b, tb++});
    }
    ++step;
    if (batch.empty()) continue;
    auto rows = f.model->forward(batch);
    ASSERT_EQ(rows.size(), batch.size() * V);
    for (size_t i = 0; i < batch.size(); ++i)
      EXPECT_LT(rel_err(rows.data() + i * V, expect[i].first->data() + expect[i].second * V, size_t(V)), 1e-5);
  }
}

TEST_P(ModesTest, ChunkedBatchEqualsOneBatch) {
  ModelOptions big, small;
  big.n_ctx = small.n_ctx = 50;
  small.max_batch_tokens = 7;
  Fixture fb(GetParam(), big), fs(GetParam(), small);
  const auto ids = random_ids(50, int(fb.ck->config.vocab_size), 3);
  const auto a = fb.full(ids), b = fs.full(ids);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_LT(rel_err(b.data(), a.data(), a.size()), 1e-6);
}

// --kv-block: a cache of other block sizes (1, 7: not a power of two; 64: more than the prompt) gives the same
// logits, prompt and decode steps, as blocks of 16.
TEST_P(ModesTest, KvBlockSizeDoesNotChangeLogits) {
  ModelOptions base;
  base.n_ctx = 40;
  Fixture f16(GetParam(), base);
  const int V = int(f16.ck->config.vocab_size);
  const auto ids = random_ids(40, V, 11);
  auto run = [&](Fixture& f) {
    const int seq = f.model->cache().add_sequence();
    SeqChunk c{seq, std::span(ids).first(21), true};
    auto out = f.model->forward(std::span(&c, 1));
    for (size_t t = 21; t < ids.size(); ++t) {
      SeqChunk one{seq, std::span(ids).subspan(t, 1), false};
      const auto row = f.model->forward(std::span(&one, 1));
      out.insert(out.end(), row.begin(), row.end());
    }
    f.model->cache().remove_sequence(seq);
    return out;
  };
  const auto ref = run(f16);
  for (int bs : {1, 7, 64}) {
    ModelOptions opt = base;
    opt.block_size = bs;
    Fixture f(GetParam(), opt);
    const auto got = run(f);
    ASSERT_EQ(got.size(), ref.size()) << "block size " << bs;
    EXPECT_LT(rel_err(got.data(), ref.data(), got.size()), 1e-6) << "block size " << bs;
  }
}

TEST_P(ModesTest, ArgmaxOnTheBackendEqualsArgmaxOfTheLogits) {
  ModelOptions opt;
  opt.n_ctx = 40;
  opt.max_seqs = 3;
  Fixture f(GetParam(), opt);
  const int V = int(f.ck->config.vocab_size);
  const auto ids = random_ids(30, V, 5);
  const int sa = f.model->cache().add_sequence(), sb = f.model->cache().add_sequence(),
            sc = f.model->cache().add_sequence();
  SeqChunk a{sa, ids, true};
  const auto logits = f.model->forward(std::span(&a, 1));
  SeqChunk b{sb, ids, true};
  const auto got = f.model->forward_argmax(std::span(&b, 1));
  ASSERT_EQ(got.size(), ids.size());
  SeqChunk c{sc, ids, true};
  const auto got_lim = f.model->forward_argmax(std::span(&c, 1), V / 2);
  ASSERT_EQ(got_lim.size(), ids.size());
  for (size_t r = 0; r < ids.size(); ++r) {
    const float* row = logits.data() + r * size_t(V);
    EXPECT_EQ(got[r], int32_t(std::max_element(row, row + V) - row)) << "row " << r;
    EXPECT_EQ(got_lim[r], int32_t(std::max_element(row, row + V / 2) - row)) << "row " << r;
  }
}

// Greedy decoding queued one step ahead (forward_argmax_queued, each step's input the previous argmax where it
// lies in backend memory) decodes the same tokens as feeding each argmax back from the host, and leaves the same
// cache length; a chain needs an argmax of one row before it. So do chained steps (steps > 1: step j + 1 fed step
// j's id in one call; one graph on CUDA) in calls of 3, 4 and 1 steps mixed (the next call's input is the last of
// the previous call's ids); 0 steps, more than kMaxChainedSteps or steps past the context are refused with the
// length unchanged.
TEST_P(ModesTest, QueuedArgmaxChainEqualsHostFedGreedy) {
  ModelOptions opt;
  opt.n_ctx = 48;
  opt.max_seqs = 3;
  Fixture f(GetParam(), opt);
  const int V = int(f.ck->config.vocab_size);
  const auto prompt = random_ids(9, V, 21);
  const int sa = f.model->cache().add_sequence(), sb = f.model->cache().add_sequence();
  constexpr int kSteps = 20;  // crosses a cache block boundary (block size 16)
  std::vector<int32_t> host_fed;
  SeqChunk pa{sa, prompt, false};
  int32_t next = f.model->forward_argmax(std::span(&pa, 1)).at(0);
  for (int i = 0; i < kSteps; ++i) {
    SeqChunk one{sa, std::span(&next, 1), false};
    next = f.model->forward_argmax(std::span(&one, 1)).at(0);
    host_fed.push_back(next);
  }
  SeqChunk pb{sb, prompt, false};
  const int32_t first = f.model->forward_argmax(std::span(&pb, 1)).at(0);
  std::vector<int32_t> queued(kSteps, -1);
  uint64_t ticket = f.model->forward_argmax_queued(sb, first, &queued[0]);
  for (int i = 0; i < kSteps; ++i) {
    const uint64_t t = i + 1 < kSteps ? f.model->forward_argmax_queued(sb, -1, &queued[size_t(i) + 1]) : 0;
    f.model->wait(ticket);
    ticket = t;
  }
  EXPECT_EQ(queued, host_fed);
  EXPECT_EQ(f.model->cache().length(sb), f.model->cache().length(sa));
  const int sc = f.model->cache().add_sequence();
  SeqChunk pc{sc, prompt, false};
  EXPECT_EQ(f.model->forward_argmax(std::span(&pc, 1)).at(0), first);
  std::vector<int32_t> chained(kSteps, -1);
  int done = 0;
  for (int k : {3, 4, 1, 4, 4, 3, 1}) {  // 20 steps
    const uint64_t t = f.model->forward_argmax_queued(sc, done == 0 ? first : -1, &chained[size_t(done)], 0, k);
    if (done > 0) f.model->wait(ticket);
    ticket = t;
    done += k;
  }
  f.model->wait(ticket);
  ASSERT_EQ(done, kSteps);
  EXPECT_EQ(chained, host_fed);
  EXPECT_EQ(f.model->cache().length(sc), f.model->cache().length(sa));
  std::vector<int32_t> sink(16, 0);
  EXPECT_THROW(f.model->forward_argmax_queued(sc, -1, sink.data(), 0, kMaxChainedSteps + 1), Error);
  EXPECT_THROW(f.model->forward_argmax_queued(sc, -1, sink.data(), 0, 0), Error);
  EXPECT_EQ(f.model->cache().length(sc), int(prompt.size()) + kSteps);
  for (int i = 0; i < 2; ++i) f.model->wait(f.model->forward_argmax_queued(sc, -1, &sink[size_t(8 * i)], 0, 8));
  EXPECT_THROW(f.model->forward_argmax_queued(sc, -1, sink.data(), 0, 4), Error);  // 45 + 4 > 48
  EXPECT_EQ(f.model->cache().length(sc), 45);
  f.model->wait(f.model->forward_argmax_queued(sc, -1, sink.data(), 0, 3));
  EXPECT_EQ(f.model->cache().length(sc), 48);
  // Not after a forward call that returned logits: there is no argmax id to take.
  SeqChunk more{sa, std::span(&next, 1), false};
  f.model->forward(std::span(&more, 1));
  int32_t id = 0;
  EXPECT_THROW(f.model->forward_argmax_queued(sa, -1, &id), Error);
  EXPECT_EQ(f.model->cache().length(sa), int(prompt.size()) + kSteps + 1);
}

// Rows without logits skip the last layer's attention and feed-forward (DecoderLayersParams' output rows): the
// logits of the rows that have them are those of a forward with every row, and the next token, which attends to
// the K/V that the last layer appended for the skipped rows, too. Both projection forms (separate: the CPU
// backend; concatenated: the CUDA backend's), and the two forms give the same logits.
TEST_P(ModesTest, OutputRowsOnlyEqualAllRows) {
  ModelOptions opt;
  opt.n_ctx = 64;
  opt.max_seqs = 2;
  std::vector<float> separate_ref;
  for (bool concatenated : {false, true}) {
    Fixture f(GetParam(), opt, /*bf16=*/false, concatenated);
    const int V = int(f.ck->config.vocab_size);
    const auto a = random_ids(41, V, 21), b = random_ids(37, V, 22);
    const auto ref_a = f.full(a), ref_b = f.full(b);
    if (!concatenated) separate_ref = ref_a;
    else EXPECT_LT(rel_err(ref_a.data(), separate_ref.data(), ref_a.size()), 1e-5) << "concatenated vs separate";

    const int sa = f.model->cache().add_sequence(), sb = f.model->cache().add_sequence();
    SeqChunk prompt[2] = {{sa, std::span(a).first(40), false, 30}, {sb, std::span(b).first(36), false}};
    const auto got = f.model->forward(prompt);  // rows: a's 30..39, b's 35
    ASSERT_EQ(got.size(), 11 * size_t(V));
    EXPECT_LT(rel_err(got.data(), ref_a.data() + 30 * size_t(V), 10 * size_t(V)), 1e-5) << concatenated;
    EXPECT_LT(rel_err(got.data() + 10 * size_t(V), ref_b.data() + 35 * size_t(V), size_t(V)), 1e-5) << concatenated;
    SeqChunk next[2] = {{sa, std::span(a).subspan(40, 1), false}, {sb, std::span(b).subspan(36, 1), false}};
    const auto rows = f.model->forward(next);
    ASSERT_EQ(rows.size(), 2 * size_t(V));
    EXPECT_LT(rel_err(rows.data(), ref_a.data() + 40 * size_t(V), size_t(V)), 1e-5) << concatenated;
    EXPECT_LT(rel_err(rows.data() + V, ref_b.data() + 36 * size_t(V), size_t(V)), 1e-5) << concatenated;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, ModesTest, ::testing::Values("rope", "eh", "ec"));

TEST(Model, PlannedScratchEqualsWhatIsAllocated) {
  for (bool concatenated : {false, true}) {
    for (int batch : {1, 7, 512}) {
      ModelOptions opt;
      opt.n_ctx = 100;
      opt.max_seqs = 3;
      opt.max_batch_tokens = batch;
      Fixture f("ec", opt, /*bf16=*/false, concatenated);
      EXPECT_EQ(f.model->scratch_bytes(), Model::planned_scratch_bytes(f.ck->config, opt, concatenated))
          << batch << (concatenated ? " concatenated" : " separate");
    }
  }
}

// The gathered q of the output rows shares the gate buffer's memory when it fits there (Hq·hd ≤ F, or 2F for
// concatenated projections) and has its own otherwise: both cases plan what they allocate and give the logits of
// a forward with every row.
TEST(Model, OutputRowsWithANarrowFeedForward) {
  for (int ffn : {24, 40}) {  // q columns 64: > F and > 2F; > F but ≤ 2F
    for (bool concatenated : {false, true}) {
      testing::TinySpec s;
      s.ffn = ffn;
      ModelOptions opt;
      opt.n_ctx = 40;
      Fixture f(s, opt, concatenated);
      const std::string what = "ffn " + std::to_string(ffn) + (concatenated ? " concatenated" : " separate");
      EXPECT_EQ(f.model->scratch_bytes(), Model::planned_scratch_bytes(f.ck->config, opt, concatenated)) << what;
      const int V = int(f.ck->config.vocab_size);
      const auto ids = random_ids(30, V, 4);
      const auto ref = f.full(ids);
      const int seq = f.model->cache().add_sequence();
      SeqChunk c{seq, ids, false, 20};
      const auto got = f.model->forward(std::span(&c, 1));
      ASSERT_EQ(got.size(), 10 * size_t(V)) << what;
      EXPECT_LT(rel_err(got.data(), ref.data() + 20 * size_t(V), got.size()), 1e-5) << what;
    }
  }
}

TEST(KVCache, BlocksReturnToThePool) {
  ModelOptions opt;
  opt.n_ctx = 40;
  opt.max_seqs = 2;
  Fixture f("ec", opt);
  KVCache& kv = f.model->cache();
  const int total = kv.total_blocks();
  EXPECT_EQ(total, 2 * 3);  // ceil(40 / 16) blocks per sequence
  const int s = kv.add_sequence();
  const auto ids = random_ids(33, int(f.ck->config.vocab_size), 5);
  SeqChunk c{s, ids, false};
  f.model->forward(std::span(&c, 1));
  EXPECT_EQ(kv.free_blocks(), total - 3);
  kv.truncate(s, 16);
  EXPECT_EQ(kv.free_blocks(), total - 1);
  EXPECT_EQ(kv.length(s), 16);
  kv.remove_sequence(s);
  EXPECT_EQ(kv.free_blocks(), total);
}

TEST(KVCache, FullPoolAndContextAreClearErrors) {
  ModelOptions opt;
  opt.n_ctx = 20;
  Fixture f("ec", opt);
  const int s = f.model->cache().add_sequence();
  const auto ids = random_ids(21, int(f.ck->config.vocab_size), 5);
  SeqChunk c{s, ids, false};
  try {
    f.model->forward(std::span(&c, 1));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ctx-size"), std::string::npos) << e.what();
  }
  EXPECT_THROW(f.model->cache().add_sequence(), Error);  // one slot only
  const int32_t bad = int32_t(f.ck->config.vocab_size);
  SeqChunk d{s, std::span(&bad, 1), false};
  EXPECT_THROW(f.model->forward(std::span(&d, 1)), Error);
}

TEST(KVCache, EHHoldsHalfTheBytesOfEC) {
  ModelOptions opt;
  opt.n_ctx = 32;
  Fixture eh("eh", opt), ec("ec", opt);
  EXPECT_EQ(eh.model->cache().pool_bytes() * 2, ec.model->cache().pool_bytes());
  const auto& a = eh.ck->config;
  const auto& b = ec.ck->config;
  EXPECT_EQ(2 * KVCache::bytes_per_token(int(a.n_layers), int(a.n_kv()), int(a.head_dim), DType::BF16),
            KVCache::bytes_per_token(int(b.n_layers), int(b.n_kv()), int(b.head_dim), DType::BF16));
}

TEST(Model, Bf16WeightsDecodeEqualsFullForward) {
  ModelOptions opt;
  opt.n_ctx = 40;
  Fixture f("ec", opt, /*bf16=*/true);
  const int V = int(f.ck->config.vocab_size);
  const auto ids = random_ids(34, V, 9);
  const auto ref = f.full(ids);
  const int seq = f.model->cache().add_sequence();
  SeqChunk c{seq, std::span(ids).first(33), false};
  f.model->forward(std::span(&c, 1));
  SeqChunk last{seq, std::span(ids).subspan(33, 1), false};
  auto row = f.model->forward(std::span(&last, 1));
  EXPECT_LT(rel_err(row.data(), ref.data() + 33 * size_t(V), size_t(V)), 1e-5);
}

}  // namespace
}  // namespace ropepp
