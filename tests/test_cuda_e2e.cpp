// test_cuda_e2e.cpp: the whole model on the GPU against the CPU backend (the CPU backend is checked against the
// fp64 PyTorch reference elsewhere). For each checkpoint: logits of a prompt agree (top-1 ≥ 99% over all rows,
// relative error below what bf16 GEMM inputs or a bf16 KV cache would give), logits of some rows only equal those
// rows of all, and decoding through the paged cache on the GPU equals the GPU's full forward.
// Checkpoints: $ROPEPP_E2E_MODELS/{rope,eh,ec}-376m when set (the device script generates them with
// tools/gen_checkpoint.py), else small ones written here. Skipped when no CUDA device is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>

#include "checkpoint.h"
#ifdef ROPEPP_HAS_CUDA
#include "cuda/backend_cuda.h"
#endif
#include "model.h"
#include "testing_checkpoint.h"

namespace ropepp {
namespace {

std::unique_ptr<Backend> cuda_or_skip() {
#ifdef ROPEPP_HAS_CUDA
  try {
    return make_backend("cuda");
  } catch (const Error& e) {
    std::fprintf(stderr, "no usable CUDA device: %s\n", e.what());
    return nullptr;
  }
#else
  return nullptr;
#endif
}

std::filesystem::path checkpoint_for(const std::string& mode) {
  if (const char* env = std::getenv("ROPEPP_E2E_MODELS")) {
    const auto p = std::filesystem::path(env) / (mode + "-376m");
    if (std::filesystem::exists(p / "config.json")) return p;
  }
  testing::TinySpec s;
  s.mode = mode;
  s.hidden = 256, s.heads = 4, s.kv_heads = 2, s.head_dim = 64, s.ffn = 512, s.vocab = 1000, s.layers = 3;
  s.bf16 = true;
  return testing::write_tiny_checkpoint(
      std::filesystem::temp_directory_path() / ("ropepp_cuda_e2e_" + mode + "_" + std::to_string(::getpid())), s);
}

struct RowStats {
  double max_rel = 0;     // max over rows of ||a - b|| / ||b||
  double top1 = 0;        // fraction of rows with the same argmax
  double top1_clear = 0;  // the same over rows whose reference top-1/top-2 margin is ≥ kMargin
};

// Random-weight logits over 128k ids have near-ties between their two largest values (median top-1/top-2
// margin ≈ 0.16 at logit std ≈ 1): a GPU path with bf16 GEMM inputs and a bf16 KV cache (~8e-3 relative error
// on the logits) ordered 1.5–2.5% of such rows the other way; the f16 path (f16 matrices, GEMM inputs and KV
// cache: ~1e-3) must agree on ≥ 99% of all rows. Agreement over rows whose reference margin is at least this
// is reported too.
constexpr double kMargin = 0.05;

RowStats compare(const std::vector<float>& a, const std::vector<float>& b, size_t V) {
  RowStats s;
  const size_t rows = b.size() / V;
  size_t agree = 0, clear = 0, clear_agree = 0;
  for (size_t r = 0; r < rows; ++r) {
    const float* x = a.data() + r * V;
    const float* y = b.data() + r * V;
    double num = 0, den = 0;
    size_t ax = 0, ay = 0;
    for (size_t v = 0; v < V; ++v) {
      num += (double(x[v]) - y[v]) * (double(x[v]) - y[v]);
      den += double(y[v]) * y[v];
      if (x[v] > x[ax]) ax = v;
      if (y[v] > y[ay]) ay = v;
    }
    double second = -1e30;
    for (size_t v = 0; v < V; ++v)
      if (v != ay) second = std::max(second, double(y[v]));
    s.max_rel = std::max(s.max_rel, std::sqrt(num / den));
    agree += ax == ay;
    if (double(y[ay]) - second >= kMargin) {
      ++clear;
      clear_agree += ax == ay;
    }
  }
  s.top1 = double(agree) / double(rows);
  s.top1_clear = clear ? double(clear_agree) / double(clear) : 1.0;
  return s;
}

std::vector<float> full_logits(Model& m, std::span<const int32_t> ids) {
  const int seq = m.cache().add_sequence();
  SeqChunk c{seq, ids, true};
  auto out = m.forward(std::span(&c, 1));
  m.cache().remove_sequence(seq);
  return out;
}

class CudaE2E : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaE2E, GpuMatchesCpuAndDecodeMatchesFullForward) {
  auto gpu = cuda_or_skip();
  if (!gpu) GTEST_SKIP() << "no CUDA device (this machine has none; the device script runs this test)";
  const auto dir = checkpoint_for(GetParam());
  const auto ck = load_checkpoint(dir);
  const size_t V = size_t(ck->config.vocab_size);
  const int T = 400;  // crosses many 16-token blocks; 1 row = 0.25%
  std::mt19937 rng(17);
  std::uniform_int_distribution<int32_t> d(0, int32_t(V - 1));
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (auto& x : ids) x = d(rng);

  ModelOptions opt;
  opt.n_ctx = T;
  auto cpu = make_cpu_backend();
  std::vector<float> ref;
  {
    Model mc(*ck, *cpu, opt);
    ref = full_logits(mc, ids);
  }
  Model mg(*ck, *gpu, opt);
  if (!std::getenv("ROPEPP_GREEDY_STEPS")) {
    EXPECT_EQ(mg.greedy_steps(), 4);  // the CUDA backend's default
  }
  const auto got = full_logits(mg, ids);
  ASSERT_EQ(got.size(), ref.size());
  for (float x : got) ASSERT_TRUE(std::isfinite(x));
  const RowStats s = compare(got, ref, V);
  std::printf("[%s] GPU vs CPU over %d positions: top-1 agreement %.4f (%.4f where the margin is clear), "
              "max row rel. error %.3e\n", GetParam().c_str(), T, s.top1, s.top1_clear, s.max_rel);
  EXPECT_GE(s.top1_clear, 0.995);
  EXPECT_GE(s.top1, 0.99);
  EXPECT_LT(s.max_rel, 5e-3);  // f16 GEMM inputs and KV cache (~1e-3); bf16 ones gave 8e-3

  // Logits for some rows only: the last layer runs its attention (here the prefill kernel over 100 query rows at
  // positions 300..399) and feed-forward for those rows alone (DecoderLayersParams' output rows).
  {
    const int sq = mg.cache().add_sequence();
    SeqChunk part{sq, ids, false, 300};
    const auto rows = mg.forward(std::span(&part, 1));
    mg.cache().remove_sequence(sq);
    ASSERT_EQ(rows.size(), size_t(T - 300) * V);
    const RowStats sp = compare(rows, std::vector<float>(got.begin() + 300 * ptrdiff_t(V), got.end()), V);
    std::printf("[%s] rows 300..399 only vs all rows (GPU): top-1 %.4f, max row rel. error %.3e\n",
                GetParam().c_str(), sp.top1, sp.max_rel);
    EXPECT_GE(sp.top1, 0.99);
    EXPECT_LT(sp.max_rel, 5e-3);
  }

  // Decode through the paged cache on the GPU: prefill 37 tokens (logits of the last only: the last layer's
  // attention of one row runs the decode kernel), then one at a time, attending to the K/V that the last layer
  // appended for the 36 rows it ran no further.
  const int seq = mg.cache().add_sequence();
  SeqChunk pre{seq, std::span(ids).first(37), false};
  const auto pre_row = mg.forward(std::span(&pre, 1));
  {
    const RowStats sr = compare(pre_row, std::vector<float>(got.begin() + 36 * ptrdiff_t(V), got.begin() + 37 * ptrdiff_t(V)), V);
    EXPECT_LT(sr.max_rel, 5e-3) << "the prompt's last row";
  }
  std::vector<float> dec;
  for (int t = 37; t < T; ++t) {
    SeqChunk one{seq, std::span(ids).subspan(size_t(t), 1), false};
    const auto row = mg.forward(std::span(&one, 1));
    dec.insert(dec.end(), row.begin(), row.end());
  }
  const std::vector<float> tail(got.begin() + 37 * ptrdiff_t(V), got.end());
  const RowStats sd = compare(dec, tail, V);
  std::printf("[%s] GPU decode vs GPU full forward: top-1 %.4f (%.4f clear margin), max row rel. error %.3e\n",
              GetParam().c_str(), sd.top1, sd.top1_clear, sd.max_rel);
  // Decode (one-row matvecs, fp32 sums in their own order) and the full forward (GEMMs) round differently; over
  // random-weight near-ties that reorders a few rows: 363 rows, 3–4 flips measured (H100, "rope": 0.9917 / 0.9890
  // as the matvecs' K split changed, max row error 9.98e-4 / 9.95e-4). The error bound and the clear-margin rows
  // are the checks; the raw agreement only catches gross breakage.
  EXPECT_GE(sd.top1_clear, 0.995);
  EXPECT_GE(sd.top1, 0.98);
  EXPECT_LT(sd.max_rel, 5e-3);
  mg.cache().remove_sequence(seq);
#ifdef ROPEPP_HAS_CUDA
  // The decode steps above ran as recorded CUDA graphs (one per context bucket). The same steps run eagerly
  // (graphs off) must give the same logits: the graph holds the same kernels with the same parameters.
  EXPECT_GT(cuda_graph_count(*gpu), 0u) << "decode steps were not recorded as graphs";
  set_cuda_graphs(*gpu, false);
  const int seq2 = mg.cache().add_sequence();
  pre.seq = seq2;
  mg.forward(std::span(&pre, 1));
  std::vector<float> eager;
  for (int t = 37; t < T; ++t) {
    SeqChunk one{seq2, std::span(ids).subspan(size_t(t), 1), false};
    const auto row = mg.forward(std::span(&one, 1));
    eager.insert(eager.end(), row.begin(), row.end());
  }
  set_cuda_graphs(*gpu, true);
  mg.cache().remove_sequence(seq2);
  double worst = 0;
  for (size_t i = 0; i < dec.size(); ++i) worst = std::max(worst, double(std::fabs(dec[i] - eager[i])));
  std::printf("[%s] graph-replayed vs eager decode: max |difference| %.3g over %zu logits\n", GetParam().c_str(),
              worst, dec.size());
  EXPECT_LT(worst, 1e-5);
  // Greedy decoding with the argmax on the GPU (forward_argmax, graphed) picks each row's argmax.
  const int seq3 = mg.cache().add_sequence();
  SeqChunk pre3{seq3, std::span(ids).first(37), false};
  mg.forward(std::span(&pre3, 1));
  size_t agree = 0;
  for (int t = 37; t < T; ++t) {
    SeqChunk one{seq3, std::span(ids).subspan(size_t(t), 1), false};
    const int32_t id = mg.forward_argmax(std::span(&one, 1)).at(0);
    const float* row = dec.data() + size_t(t - 37) * V;
    agree += id == int32_t(std::max_element(row, row + V) - row);
  }
  mg.cache().remove_sequence(seq3);
  EXPECT_EQ(agree, size_t(T - 37)) << "forward_argmax differs from the argmax of forward's logits";
  // Greedy decoding queued one step ahead (forward_argmax_queued: each step's input is the previous argmax, read
  // on the GPU; graphed) decodes the same tokens as feeding each argmax back from the host.
  {
    constexpr int kSteps = 40;
    std::vector<int32_t> host_fed, queued(kSteps, -1);
    const int sa = mg.cache().add_sequence();
    SeqChunk pa{sa, std::span(ids).first(37), false};
    int32_t next = mg.forward_argmax(std::span(&pa, 1)).at(0);
    for (int i = 0; i < kSteps; ++i) {
      SeqChunk one{sa, std::span(&next, 1), false};
      next = mg.forward_argmax(std::span(&one, 1)).at(0);
      host_fed.push_back(next);
    }
    mg.cache().remove_sequence(sa);
    const int sb = mg.cache().add_sequence();
    SeqChunk pb{sb, std::span(ids).first(37), false};
    const int32_t first = mg.forward_argmax(std::span(&pb, 1)).at(0);
    uint64_t ticket = mg.forward_argmax_queued(sb, first, &queued[0]);
    for (int i = 0; i < kSteps; ++i) {
      const uint64_t t = i + 1 < kSteps ? mg.forward_argmax_queued(sb, -1, &queued[size_t(i) + 1]) : 0;
      mg.wait(ticket);
      ticket = t;
    }
    EXPECT_EQ(queued, host_fed) << "the queued argmax chain differs from the host-fed one";
    mg.cache().remove_sequence(sb);
    // Chained steps (several per queued call: one graph of 4, then its replays; a last call of 4 and of 1 mixed
    // in, and twice over so that every shape is replayed) decode the same tokens.
    for (int round = 0; round < 2; ++round) {
      std::vector<int32_t> chained(kSteps, -1);
      const int sc = mg.cache().add_sequence();
      SeqChunk pc{sc, std::span(ids).first(37), false};
      const int32_t first_c = mg.forward_argmax(std::span(&pc, 1)).at(0);
      int done = 0;
      uint64_t prev = 0;
      while (done < kSteps) {
        const int k = std::min(done % 9 == 8 ? 1 : 4, kSteps - done);
        const uint64_t t = mg.forward_argmax_queued(sc, done == 0 ? first_c : -1, &chained[size_t(done)], 0, k);
        if (done > 0) mg.wait(prev);
        prev = t;
        done += k;
      }
      mg.wait(prev);
      EXPECT_EQ(chained, host_fed) << "chained steps (round " << round << ") differ from the host-fed chain";
      EXPECT_EQ(mg.cache().length(sc), 37 + kSteps);
      mg.cache().remove_sequence(sc);
    }
  }
#endif
}

INSTANTIATE_TEST_SUITE_P(Modes, CudaE2E, ::testing::Values("rope", "eh", "ec"));

}  // namespace
}  // namespace ropepp
