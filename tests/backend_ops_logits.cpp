// backend_ops_logits.cpp: part of test_backend_ops (tests/CMakeLists.txt adds it to that executable): the ops on a
// decode step's logits on CUDA against the CPU backend — argmax and NLL over logit rows, and the final RMSNorm +
// lm_head + greedy argmax (+ the next chained step's embedding) of norm_matmul_argmax, with the separate argmax
// kernels and with the matvec's argmax epilogue. See test_backend_ops.cpp for the conventions (NMSE against a
// per-op tolerance, fresh seeds, NaN-poisoned outputs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "testing_backend.h"

namespace ropepp {
namespace {

using namespace test;

TEST_F(BackendOps, ArgmaxNll) {
  for (int vocab : {300, 301, 128256}) {  // 301: rows not 16-byte aligned (the scalar path)
    const int n = 6;
    auto logits = rand_floats(*rng, size_t(n) * vocab, -20.f, 20.f);
    logits[size_t(1) * vocab + 5] = logits[size_t(1) * vocab + 77] = 100.f;  // tie: lowest index wins
    logits[size_t(2) * vocab + vocab - 1] = 50.f;                              // last index
    logits[size_t(3) * vocab + 3] = std::nanf("");                             // NaN ignored
    std::vector<int32_t> targets(n);
    for (auto& t : targets) t = rng->below(vocab);
    targets[4] = vocab;  // out of range: NaN on both
    Buf lc = upload(*cpu, logits), lg = upload(*gpu, logits), tc = upload(*cpu, targets), tg = upload(*gpu, targets);
    Buf ac = poisoned(*cpu, n * 4), ag = poisoned(*gpu, n * 4), nc = poisoned(*cpu, n * 4), ng = poisoned(*gpu, n * 4);
    cpu->argmax({lc.as<float>(), ac.as<int32_t>(), n, vocab});
    gpu->argmax({lg.as<float>(), ag.as<int32_t>(), n, vocab});
    EXPECT_EQ(download<int32_t>(*gpu, ag.p, n), download<int32_t>(*cpu, ac.p, n)) << "argmax vocab=" << vocab;
    EXPECT_EQ(download<int32_t>(*gpu, ag.p, n)[1], 5);
    cpu->nll({lc.as<float>(), tc.as<int32_t>(), nc.as<float>(), n, vocab});
    gpu->nll({lg.as<float>(), tg.as<int32_t>(), ng.as<float>(), n, vocab});
    auto got = download<float>(*gpu, ng.p, n), ref = download<float>(*cpu, nc.p, n);
    EXPECT_TRUE(std::isnan(got[4]) && std::isnan(ref[4])) << "nll of an out-of-range target is NaN";
    got[4] = ref[4] = 0.f;
    got.erase(got.begin() + 3), ref.erase(ref.begin() + 3);  // a NaN logit makes the row NaN
    expect_match(fmt::format("nll vocab={}", vocab), got, ref, 1e-10);
  }
}

// The final RMSNorm, the lm_head and a greedy step's argmax in one op (norm_matmul_argmax; CUDA: the matvec's
// blocks write their best logits' keys, one block merges them). Planted: rows 7 and V − 5 the same row of ±1
// aligned with x (the largest logit by far; a tie: 7 wins) and a NaN row 3 (ignored). Checked: the logits it writes against the CPU's, its index against the argmax
// of those logits taken here (exact: same values) and the planted winner on both backends; each vocabulary limit
// runs with the separate argmax kernels and with the matvec's argmax epilogue (CUDA: set_cuda_lm_head_argmax),
// each twice, the second time also with the picked token's embedding (`next`: a chained step's x) against the
// CPU's embedding of that token.
TEST_F(BackendOps, NormMatmulArgmax) {
  for (const Shape& s : kShapes) {
    if (s.hidden > 1024) continue;  // the 376M's lm_head is the large case
    const int D = s.hidden, V = s.vocab;
    const DType dt = D == 64 ? DType::F32 : DType::BF16;
    const auto x = rand_floats(*rng, D, -3.f, 3.f);
    const auto nw = rand_floats(*rng, D, 0.5f, 1.5f);
    auto w = rand_floats(*rng, size_t(V) * D);
    for (int c = 0; c < D; ++c) {
      w[size_t(7) * D + c] = w[size_t(V - 5) * D + c] = x[size_t(c)] * nw[size_t(c)] >= 0.f ? 1.f : -1.f;
      w[size_t(3) * D + c] = std::nanf("");
    }
    const auto wb = weight_bytes(w, dt), nb = weight_bytes(nw, DType::F32);
    OwnedWeight wc(*cpu, wb, dt, V, D), nc(*cpu, nb, DType::F32, 1, D), ng(*gpu, nb, DType::F32, 1, D);
    Buf xc = upload(*cpu, x), xg = upload(*gpu, x), hc(*cpu, size_t(D) * 4), hg(*gpu, size_t(D) * 4);
    Buf lc = poisoned(*cpu, size_t(V) * 4), lg = poisoned(*gpu, size_t(V) * 4);
    Buf ic = poisoned(*cpu, 4), ig = poisoned(*gpu, 4), ec = poisoned(*cpu, size_t(D) * 4),
        eg = poisoned(*gpu, size_t(D) * 4);
    const auto tb = weight_bytes(rand_floats(*rng, size_t(V) * D), DType::BF16);  // the embedding table
    OwnedWeight tc(*cpu, tb, DType::BF16, V, D);
    for (int m = 0; m < 2; ++m) {
      const auto wg = load_as(*gpu, wb, dt, V, D, kMatrixDtypes[m]), tg = load_as(*gpu, tb, DType::BF16, V, D, kMatrixDtypes[m]);
      for (int limit : {V, V - 5, 7, 1}) {
        cpu->norm_matmul_argmax({xc.as<float>(), nc.w, 1e-5f, hc.as<float>(), wc.w, lc.as<float>(), 1},
                                {lc.as<float>(), ic.as<int32_t>(), 1, limit}, nullptr);
        const auto ref_logits = download<float>(*cpu, lc.p, size_t(V));
        const int32_t ref = download<int32_t>(*cpu, ic.p, 1)[0];
        for (int cap : {0, 2})
          // 0, 1: the separate argmax kernels (1: the merge writes the next embedding); 2, 3: the matvec's
          // epilogue; 4, 5: the separate argmax kernels and the embedding kernel (argmax_embed off)
          for (int rep = 0; rep < 6; ++rep) {
#ifdef ROPEPP_HAS_CUDA
            set_cuda_lm_head_argmax(*gpu, rep == 2 || rep == 3);
            set_cuda_argmax_embed(*gpu, rep < 4);
#endif
            const std::string what = fmt::format("norm_matmul_argmax {} [{}x{}] {} limit {}{} call {}", s.name, V, D,
                                                 dtype_name(kMatrixDtypes[m]), limit, cap_label(cap), rep);
            poison(*gpu, lg.p, size_t(V) * 4);
            poison(*gpu, ig.p, 4);
            poison(*gpu, eg.p, size_t(D) * 4);
            set_matvec_cap(*gpu, cap);
            const EmbedParams next{tg->w, ig.as<int32_t>(), eg.as<float>(), 1};
            gpu->norm_matmul_argmax({xg.as<float>(), ng.w, 1e-5f, hg.as<float>(), wg->w, lg.as<float>(), 1},
                                    {lg.as<float>(), ig.as<int32_t>(), 1, limit}, rep % 2 ? &next : nullptr);
            set_matvec_cap(*gpu, 0);
#ifdef ROPEPP_HAS_CUDA
            set_cuda_lm_head_argmax(*gpu, false);
            set_cuda_argmax_embed(*gpu, true);
#endif
            auto logits = download<float>(*gpu, lg.p, size_t(V));
            const int32_t got = download<int32_t>(*gpu, ig.p, 1)[0];
            int best = -1;  // the argmax of the GPU's own logits: lowest index among equals, NaN ignored
            for (int j = 0; j < limit; ++j)
              if (!std::isnan(logits[size_t(j)]) && (best < 0 || logits[size_t(j)] > logits[size_t(best)])) best = j;
            EXPECT_EQ(got, std::max(best, 0)) << what;
            if (limit > 7) {
              EXPECT_EQ(got, 7) << what;
              EXPECT_EQ(ref, 7) << what << " (CPU)";
            }
            EXPECT_TRUE(std::isnan(logits[3]) && std::isnan(ref_logits[3])) << what << ": the NaN row";
            std::vector<float> a = logits, b = ref_logits;
            a[3] = b[3] = 0.f;
            expect_match(what, a, b, dt == DType::BF16 ? 1e-7 : 1e-5);  // as FusedMatmuls' GEMV cases
            if (rep % 2) {  // the picked token's embedding row (bf16 → f16 on upload: ~1e-7)
              Buf id_c = upload(*cpu, std::vector<int32_t>{got});
              cpu->embed({tc.w, id_c.as<int32_t>(), ec.as<float>(), 1});
              expect_match(what + " next embedding", download<float>(*gpu, eg.p, size_t(D)),
                           download<float>(*cpu, ec.p, size_t(D)), 1e-6);
            }
          }
      }
    }
  }
}

}  // namespace
}  // namespace ropepp
