// test_backend_ops.cpp: every Backend op on CUDA against the CPU backend (the oracle), in the style of
// llama.cpp's test-backend-ops. Fresh random inputs each run (seed printed; ROPEPP_TEST_SEED reproduces
// one), outputs poisoned with NaN before every run on both backends, results compared by normalised MSE
// (Σ(got − ref)² / Σ ref²) against a per-op tolerance: 16-bit weights (f16 by default, bf16 also tested),
// activations rounded to the matrix's dtype for cuBLAS (f16 ~3e-8, bf16 ~2e-6) and 16-bit tensor-core
// attention land near or below 1e-6, so the tolerances leave room without hiding a wrong index.
// Shapes: tiny (hidden 64, heads 4/2, head_dim 16), 376M (1024, 8/4, 128, FFN 3584, vocab 128256) and
// 776M (1536, 12/6, 128, FFN 5376); attention in the three modes (rope, EH, EC) over the paged cache.
// Without a CUDA device (this machine, CI) every test skips; on the device any mismatch fails.
// ROPEPP_OPS_PERF=1 also prints a few timings (decode attention at 64k, lm_head GEMV/GEMM in F16 and BF16).
// The attention cases (every kernel) are in backend_ops_attention.cpp, the argmax/NLL/lm_head ones in
// backend_ops_logits.cpp, both part of the same executable.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "testing_backend.h"
#ifdef ROPEPP_HAS_CUDA
#include "attention_out_proj_decode.cuh"
#include "matvec_smem_prefetch.cuh"
#endif

namespace ropepp {
namespace {

using namespace test;

// ---- elementwise and row ops ------------------------------------------------------------------------
#ifdef ROPEPP_HAS_CUDA
// The shared-memory prefetch's plan (host code: runs without a GPU): which matrices of the published shapes take
// the prefetching kernel at the budget the " smem prefetch" cases use (116 KB, 132 blocks a wave), so that those
// cases do run it, and which fall back to the streaming kernel.
TEST(MatvecSmemPrefetch, PlanAtTheH100Budget) {
  using In = MatvecInput;
  using Out = MatvecOutput;
  auto plan = [](int rows, int cols, In in, Out out, int n = 1, int kb = 116) {
    MatvecLaunch l{nullptr, nullptr, nullptr, n, rows, cols};
    l.input = in;
    l.output = out;
    l.prefetch_smem_bytes = kb * 1024;
    l.prefetch_blocks = 132;
    return plan_matvec_smem_prefetch(l);
  };
  // 376M gate|up [7168 x 1024] (SwiGLU pairs, 4 KB a unit): 28 units a block would be 116.5 KB; 27 fit, 133 blocks.
  const MatvecSmemPlan gu = plan(7168, 1024, In::RmsNorm, Out::Swiglu);
  EXPECT_EQ(gu.units_per_block, 27);
  EXPECT_EQ(gu.blocks, 133);
  EXPECT_EQ(gu.smem, 512u + 1024 * 4 + 27 * 4096);
  // 376M EC qkv [2048 x 1024] (RoPE pairs): 1,024 units, 8 a block.
  const MatvecSmemPlan qkv = plan(2048, 1024, In::RmsNorm, Out::RopeKv);
  EXPECT_EQ(qkv.units_per_block, 8);
  EXPECT_EQ(qkv.blocks, 128);
  // 376M down [1024 x 3584], plain input: x is read from global memory, not staged.
  const MatvecSmemPlan down = plan(1024, 3584, In::Plain, Out::Store);
  EXPECT_EQ(down.units_per_block, 8);
  EXPECT_EQ(down.smem, 512u + 8 * 7168);  // a plain x is not staged
  // 776M down [1536 x 5376]: 11 rows fit of the 12 a wave would give: 140 blocks (two waves).
  const MatvecSmemPlan down776 = plan(1536, 5376, In::Plain, Out::Store);
  EXPECT_EQ(down776.units_per_block, 11);
  EXPECT_EQ(down776.blocks, 140);
  EXPECT_LE(down776.smem, 116u * 1024);
  // Streams instead: 776M gate|up (299 blocks, over two waves), two rows of x, no budget, a budget below one unit.
  EXPECT_EQ(plan(10752, 1536, In::RmsNorm, Out::Swiglu).blocks, 0);
  EXPECT_EQ(plan(7168, 1024, In::RmsNorm, Out::Swiglu, 2).blocks, 0);
  EXPECT_EQ(plan(7168, 1024, In::RmsNorm, Out::Swiglu, 1, 0).blocks, 0);
  EXPECT_EQ(plan(1024, 3584, In::Plain, Out::Store, 1, 16).blocks, 0);
}

// The L2 prefetch ranges of the later matrices (MatvecLaunch::l2_next, host code: runs without a GPU): the last pct
// percent of the rows, of each half for the gate|up's row pairs, inside the matrix, in 16-byte units.
TEST(MatvecL2Next, TailRowsOfEachHalf) {
  const std::vector<char> gu(size_t(7168) * 2048), qkv(size_t(2048) * 2048);  // 376M gate|up, EC qkv (16-bit rows)
  L2Ranges r;
  ASSERT_TRUE(add_l2_tail_rows(&r, gu.data(), 7168, 2048, /*paired=*/true, 25));
  ASSERT_EQ(r.n, 2);
  EXPECT_EQ(static_cast<const char*>(r.ptr[0]), gu.data() + size_t(3584 - 896) * 2048);  // gate rows [2688, 3584)
  EXPECT_EQ(static_cast<const char*>(r.ptr[1]), gu.data() + size_t(7168 - 896) * 2048);  // up rows [6272, 7168)
  EXPECT_EQ(r.bytes[0], size_t(896) * 2048);
  EXPECT_EQ(r.bytes[1], r.bytes[0]);
  ASSERT_TRUE(add_l2_tail_rows(&r, qkv.data(), 2048, 2048, /*paired=*/false, 100));
  ASSERT_EQ(r.n, 3);
  EXPECT_EQ(r.ptr[2], static_cast<const void*>(qkv.data()));
  EXPECT_EQ(r.bytes[2], qkv.size());
  for (int i = 0; i < r.n; ++i) EXPECT_EQ(r.bytes[i] % 16, 0u) << i;
  EXPECT_FALSE(add_l2_tail_rows(&r, qkv.data(), 2048, 2048, false, 50));  // full: nothing more fits
  EXPECT_EQ(r.n, 3);
  L2Ranges none;
  EXPECT_TRUE(add_l2_tail_rows(&none, gu.data(), 7168, 2048, true, 0));  // 0%: nothing
  EXPECT_TRUE(add_l2_tail_rows(&none, gu.data(), 7, 2048, true, 10));    // under one row of each half: nothing
  EXPECT_EQ(none.n, 0);
  ASSERT_TRUE(add_l2_tail_rows(&none, gu.data(), 7168, 2048, true, 250));  // clamped to 100%: both halves whole
  ASSERT_EQ(none.n, 2);
  EXPECT_EQ(none.ptr[0], static_cast<const void*>(gu.data()));
  EXPECT_EQ(none.bytes[0] + none.bytes[1], gu.size());
}

// The auto amount of the next qkv (CudaBackendOptions::l2_next_qkv_pct = -1) at the H100's 50 MB of L2: all of the
// 376M's (EC 4 MB and EH 2 MB beside a 14.7 MB gate|up), none of the 776M's (9.4 MB beside 33 MB), none without a
// gate|up to size it by.
TEST(MatvecL2Next, AutoQkvByTheL2) {
  const size_t l2 = 50u << 20, gu376 = size_t(7168) * 1024 * 2, gu776 = size_t(10752) * 1536 * 2;
  EXPECT_EQ(l2_next_qkv_auto_pct(size_t(2048) * 1024 * 2, gu376, l2), 100);
  EXPECT_EQ(l2_next_qkv_auto_pct(size_t(1024) * 1024 * 2, gu376, l2), 100);
  EXPECT_EQ(l2_next_qkv_auto_pct(size_t(3072) * 1536 * 2, gu776, l2), 0);
  EXPECT_EQ(l2_next_qkv_auto_pct(size_t(2048) * 1024 * 2, 0, l2), 0);
  EXPECT_EQ(l2_next_qkv_auto_pct(size_t(2048) * 1024 * 2, gu376, 32u << 20), 0);  // 18.7 MB > 16 MB
}

// The decode-step ablation switch (ROPEPP_CUDA_PROBE_SKIP, host code): kinds by name, separated by ',' or '+', and a
// clear error for an unknown one.
// The fused attention + o_proj kernel's plan (host code): the shapes it takes (one token of one sequence, ≤ 256
// positions, head_dim 128, ≤ 8 query rows per kv head, no more kv heads than a cluster's blocks, o_proj rows a
// multiple of 8 × the splits) and its splits and rows per warp for the published shapes on the H100's 132 SMs.
TEST(FusedAttentionOutProj, Plan) {
  alignas(16) static float buf[4];
  AttentionPagedLaunch a{};
  a.q = buf;
  a.out = buf;
  a.q_row_stride = (8 + 2 * 4) * 128;
  a.n_tokens = a.n_seqs = 1;
  a.max_pos = 255;
  a.n_q_heads = 8, a.n_kv_heads = 4, a.head_dim = 128, a.imag = true, a.block_size = 16;
  auto plan = [&](const AttentionPagedLaunch& x, int d, long long cols, int cluster = 16) {
    return attention_out_proj_decode_plan(x, d, cols, 132, cluster);
  };
  FusedOProjPlan p = plan(a, 1024, 2048);  // 376M EC: 4 kv heads × 4 splits of 64 keys, 256 blocks
  EXPECT_EQ(p.misfit, nullptr);
  EXPECT_EQ(p.splits, 4);
  EXPECT_EQ(p.rows_per_warp, 2);
  p = plan(a, 1024, 2048, 8);  // portable clusters: 4 × 2 splits of 128 keys
  EXPECT_EQ(p.splits, 2);
  EXPECT_EQ(p.rows_per_warp, 2);
  EXPECT_NE(plan(a, 1024, 1024).misfit, nullptr);  // Wo columns of the standard-RoPE shape
  EXPECT_NE(plan(a, 1000, 2048).misfit, nullptr);  // rows not a multiple of 8 × 4 splits
  EXPECT_NE(plan(a, 1024, 2048, 2).misfit, nullptr);  // 4 kv heads in clusters of 2
  AttentionPagedLaunch b = a;
  b.max_pos = 256;  // 257 positions
  EXPECT_NE(plan(b, 1024, 2048).misfit, nullptr);
  b = a, b.n_tokens = 2, b.n_seqs = 2;
  EXPECT_NE(plan(b, 1024, 2048).misfit, nullptr);
  b = a, b.head_dim = 64;
  EXPECT_NE(plan(b, 1024, 1024).misfit, nullptr);
  b = a, b.n_q_heads = 16;  // 4 q heads per kv head: 8 rows with the imaginary ones
  EXPECT_EQ(plan(b, 1024, 4096).misfit, nullptr);
  b = a, b.n_q_heads = 32;  // 8 q heads per kv head: 16 rows
  EXPECT_NE(plan(b, 1024, 8192).misfit, nullptr);
  b = a, b.q_row_stride = 2 + 16 * 128;
  EXPECT_NE(plan(b, 1024, 2048).misfit, nullptr);
  b = a, b.n_q_heads = 12, b.n_kv_heads = 6;  // 776M EC: 6 × 2 splits (a cluster of 12), 288 blocks
  p = plan(b, 1536, 3072);
  EXPECT_EQ(p.misfit, nullptr);
  EXPECT_EQ(p.splits, 2);
  EXPECT_EQ(p.rows_per_warp, 4);
  EXPECT_EQ(plan(b, 1536, 3072, 8).splits, 1);  // 6 × 1 (a cluster of 6, 256 keys per block)
  b = a, b.n_q_heads = 4, b.n_kv_heads = 2;  // 376M EH: 2 × 8 splits of 32 keys, 256 blocks
  p = plan(b, 1024, 1024);
  EXPECT_EQ(p.splits, 8);
  EXPECT_EQ(p.rows_per_warp, 1);
  b = a, b.n_q_heads = 6, b.n_kv_heads = 3;  // 776M EH: 3 × 4 splits, 288 blocks
  p = plan(b, 1536, 1536);
  EXPECT_EQ(p.splits, 4);
  EXPECT_EQ(p.rows_per_warp, 2);
}

TEST(CudaProbeSkip, KindsToBits) {
  EXPECT_EQ(cuda_probe_skip_bits(""), 0);
  EXPECT_EQ(cuda_probe_skip_bits("attention"), 2);
  EXPECT_EQ(cuda_probe_skip_bits("attention+o"), 6);
  EXPECT_EQ(cuda_probe_skip_bits("qkv,gu,down"), 1 | 8 | 16);
  try {
    cuda_probe_skip_bits("attention+mlp");
    FAIL() << "an unknown kind was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ROPEPP_CUDA_PROBE_SKIP"), std::string::npos) << what;
    EXPECT_NE(what.find("'mlp'"), std::string::npos) << what;
  }
}
#endif

TEST_F(BackendOps, Embed) {
  for (const Shape& s : kShapes) {
    for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
      const int vocab = (dt == DType::BF16 || s.vocab < 1000) ? s.vocab : 5003;  // f16/f32: a smaller table
      const auto host = weight_bytes(rand_floats(*rng, size_t(vocab) * s.hidden), dt);
      OwnedWeight wc(*cpu, host, dt, vocab, s.hidden);
      std::vector<int32_t> tok(37);
      for (auto& t : tok) t = rng->below(vocab);
      tok[0] = 0, tok[1] = vocab - 1;
      Buf tc = upload(*cpu, tok), tg = upload(*gpu, tok);
      const size_t n = tok.size() * s.hidden;
      Buf oc = poisoned(*cpu, n * 4);
      cpu->embed({wc.w, tc.as<int32_t>(), oc.as<float>(), int(tok.size())});
      const auto ref = download<float>(*cpu, oc.p, n);
      for (DType resident : kMatrixDtypes) {  // bf16 → f16 exact; f32 → f16 ~3e-8, → bf16 ~1e-6
        const auto wg = load_as(*gpu, host, dt, vocab, s.hidden, resident);
        EXPECT_EQ(wg->w.dtype, resident);
        Buf og = poisoned(*gpu, n * 4);
        gpu->embed({wg->w, tg.as<int32_t>(), og.as<float>(), int(tok.size())});
        expect_match(fmt::format("embed {} {} as {}", s.name, dtype_name(dt), dtype_name(resident)),
                     download<float>(*gpu, og.p, n), ref, 1e-5);
      }
    }
  }
}

TEST_F(BackendOps, RmsNorm) {
  for (const Shape& s : kShapes) {
    for (int n : {1, 7, 300}) {
      for (DType dt : {DType::F32, DType::BF16}) {
        for (bool in_place : {false, true}) {
          const auto wh = weight_bytes(rand_floats(*rng, s.hidden, 0.5f, 1.5f), dt);
          OwnedWeight wc(*cpu, wh, dt, 1, s.hidden), wg(*gpu, wh, dt, 1, s.hidden);
          const auto x = rand_floats(*rng, size_t(n) * s.hidden, -3.f, 3.f);
          Buf xc = upload(*cpu, x), xg = upload(*gpu, x);
          Buf oc = poisoned(*cpu, x.size() * 4), og = poisoned(*gpu, x.size() * 4);
          float* outc = in_place ? xc.as<float>() : oc.as<float>();
          float* outg = in_place ? xg.as<float>() : og.as<float>();
          cpu->rms_norm({xc.as<float>(), wc.w, outc, n, s.hidden, 1e-5f});
          gpu->rms_norm({xg.as<float>(), wg.w, outg, n, s.hidden, 1e-5f});
          expect_match(fmt::format("rms_norm {} n={} w={}{}", s.name, n, dtype_name(dt), in_place ? " in-place" : ""),
                       download<float>(*gpu, outg, x.size()), download<float>(*cpu, outc, x.size()), 1e-5);
        }
      }
    }
  }
}

TEST_F(BackendOps, Matmul) {
  for (const Shape& s : kShapes) {
    struct W {
      const char* name;
      int rows, cols;
    };
    const int hd = s.head_dim;
    const W ws[] = {{"qkv", (s.heads + 2 * s.kv_heads) * hd, s.hidden},
                    {"o_proj(EC)", s.hidden, 2 * s.heads * hd},
                    {"gate_up", 2 * s.ffn, s.hidden},
                    {"down", s.hidden, s.ffn},
                    {"lm_head", s.vocab, s.hidden}};
    for (const W& w : ws) {
      const DType dt = s.hidden == 64 ? DType::F32 : DType::BF16;  // tiny: f32 → f16/bf16 conversion on upload
      const auto wh = weight_bytes(rand_floats(*rng, size_t(w.rows) * w.cols), dt);
      OwnedWeight wc(*cpu, wh, dt, w.rows, w.cols);
      const std::unique_ptr<OwnedWeight> wg[] = {load_as(*gpu, wh, dt, w.rows, w.cols, kMatrixDtypes[0]),
                                                 load_as(*gpu, wh, dt, w.rows, w.cols, kMatrixDtypes[1])};
      for (int m = 0; m < 2; ++m) EXPECT_EQ(wg[m]->w.dtype, kMatrixDtypes[m]) << w.name;
      const bool big = std::string(w.name) == "lm_head";
      std::vector<int> ns = big ? std::vector<int>{1, 8, 9} : std::vector<int>{1, 2, 3, 5, 8, 9, 64, 300};
      for (int n : ns) {
        for (int misalign : {0, 1}) {  // x at a 4-byte offset: the cuBLAS path for small n too
          if (misalign && n != 1 && n != 9) continue;
          auto x = rand_floats(*rng, size_t(n) * w.cols + misalign);
          Buf xc = upload(*cpu, x), xg = upload(*gpu, x);
          const size_t out_n = size_t(n) * w.rows;
          Buf oc = poisoned(*cpu, out_n * 4), og = poisoned(*gpu, out_n * 4);
          cpu->matmul({xc.as<float>() + misalign, wc.w, oc.as<float>(), n});
          const auto ref = download<float>(*cpu, oc.p, out_n);
          for (int m = 0; m < 2; ++m) {
            const DType resident = kMatrixDtypes[m];
            for (int cap : matvec_caps(n))
            for (bool precise : {false, true}) {  // precise: x as hi + lo parts into cuBLAS (n > 8)
              if (precise && n <= 8 && !misalign) continue;
#ifdef ROPEPP_HAS_CUDA
              set_cuda_precise_matmul(*gpu, precise);
#endif
              poison(*gpu, og.p, out_n * 4);
              set_matvec_cap(*gpu, cap);
              gpu->matmul({xg.as<float>() + misalign, wg[m]->w, og.as<float>(), n});
              set_matvec_cap(*gpu, 0);
              // cuBLAS rounds x to the matrix's dtype: bf16 ~2e-6, f16 ~3e-8. hi+lo x and the GEMV (fp32 x): only
              // the weights' rounding on upload: none for a bf16 checkpoint (bf16 → f16 is exact), ~3e-8 (f16)
              // or ~1e-6 (bf16) for f32 checkpoints. The f16 GEMM tolerance fails a GEMM fed bf16 x.
              const bool exact_x = precise || (n <= 8 && !misalign);
              const double tol = exact_x ? (dt == DType::BF16 ? 1e-8 : 1e-5) : (resident == DType::F16 ? 1e-6 : 1e-4);
              expect_match(fmt::format("matmul {} {} [{}x{}] {} n={}{}{}{}", s.name, w.name, w.rows, w.cols,
                                       dtype_name(resident), n, misalign ? " misaligned x" : "",
                                       precise ? " precise" : "", cap_label(cap)),
                           download<float>(*gpu, og.p, out_n), ref, tol);
            }
          }
#ifdef ROPEPP_HAS_CUDA
          set_cuda_precise_matmul(*gpu, false);
#endif
        }
      }
    }
  }
}

// The fused ops of the decode path (backend.h): RMSNorm into the next projection, SwiGLU into the down
// projection, the residual add into the projection's output (accumulate). The CPU runs the unfused
// composition (Backend's defaults); CUDA runs its fused GEMV up to 8 rows and cuBLAS above.
TEST_F(BackendOps, FusedMatmuls) {
  for (const Shape& s : kShapes) {
    const int hd = s.head_dim, D = s.hidden, F = s.ffn;
    const int qkv_rows = (s.heads + 2 * s.kv_heads) * hd;
    const DType dt = D == 64 ? DType::F32 : DType::BF16;
    const auto wqkv = weight_bytes(rand_floats(*rng, size_t(qkv_rows) * D), dt);
    const auto wgu = weight_bytes(rand_floats(*rng, size_t(2 * F) * D), dt);
    const auto wdown = weight_bytes(rand_floats(*rng, size_t(D) * F), dt);
    const auto wnorm = weight_bytes(rand_floats(*rng, D, 0.5f, 1.5f), DType::F32);
    OwnedWeight qc(*cpu, wqkv, dt, qkv_rows, D), gc(*cpu, wgu, dt, 2 * F, D), dc(*cpu, wdown, dt, D, F);
    OwnedWeight nc(*cpu, wnorm, DType::F32, 1, D), ng(*gpu, wnorm, DType::F32, 1, D);
    std::unique_ptr<OwnedWeight> qg[2], gg[2], dg[2];  // per resident dtype (kMatrixDtypes)
    for (int m = 0; m < 2; ++m) {
      qg[m] = load_as(*gpu, wqkv, dt, qkv_rows, D, kMatrixDtypes[m]);
      gg[m] = load_as(*gpu, wgu, dt, 2 * F, D, kMatrixDtypes[m]);
      dg[m] = load_as(*gpu, wdown, dt, D, F, kMatrixDtypes[m]);
    }
    for (int n : {1, 2, 5, 8, 9, 64}) {
      if (n > 8 && std::getenv("ROPEPP_OPS_NO_CUBLAS")) continue;  // racecheck: cuBLAS's kernels are not ours
      // GEMV: fp32 x (weights as in Matmul); cuBLAS: x rounded to the matrix's dtype (bf16 ~2e-6, f16 ~3e-8).
      auto tol_for = [&](int m) {
        return n <= 8 ? (dt == DType::BF16 ? 1e-7 : 1e-5) : (kMatrixDtypes[m] == DType::F16 ? 1e-6 : 1e-4);
      };
      const auto x = rand_floats(*rng, size_t(n) * D, -3.f, 3.f);
      const auto y = rand_floats(*rng, size_t(n) * D);              // the residual stream added to
      const auto gu = rand_floats(*rng, size_t(n) * 2 * F, -4.f, 4.f);  // [n, 2F]: gate | up
      Buf xc = upload(*cpu, x), xg = upload(*gpu, x), guc = upload(*cpu, gu), gug = upload(*gpu, gu);
      Buf hc(*cpu, size_t(n) * std::max(D, F) * 4), hg(*gpu, size_t(n) * std::max(D, F) * 4);
      for (int proj = 0; proj < 2; ++proj) {  // rms_norm + projection (qkv, gate_up)
        const OwnedWeight& w = proj == 0 ? qc : gc;
        const size_t out_n = size_t(n) * w.w.rows;
        Buf oc = poisoned(*cpu, out_n * 4), og = poisoned(*gpu, out_n * 4);
        cpu->norm_matmul({xc.as<float>(), nc.w, 1e-5f, hc.as<float>(), w.w, oc.as<float>(), n});
        const auto ref = download<float>(*cpu, oc.p, out_n);
        for (int m = 0; m < 2; ++m)
          for (int cap : matvec_caps(n)) {
            poison(*gpu, og.p, out_n * 4);
            set_matvec_cap(*gpu, cap);
            gpu->norm_matmul({xg.as<float>(), ng.w, 1e-5f, hg.as<float>(), (proj == 0 ? qg : gg)[m]->w, og.as<float>(), n});
            set_matvec_cap(*gpu, 0);
            expect_match(fmt::format("norm_matmul {} [{}x{}] {} n={}{}", s.name, w.w.rows, D, dtype_name(kMatrixDtypes[m]),
                                     n, cap_label(cap)),
                         download<float>(*gpu, og.p, out_n), ref, tol_for(m));
          }
      }
      {  // swiglu + down projection, accumulated into y
        Buf oc = upload(*cpu, y);
        cpu->swiglu_matmul({guc.as<float>(), guc.as<float>() + F, 2 * F, hc.as<float>(), dc.w, oc.as<float>(), n, true});
        const auto ref = download<float>(*cpu, oc.p, y.size());
        for (int m = 0; m < 2; ++m)
          for (int cap : matvec_caps(n)) {
            Buf og = upload(*gpu, y);
            set_matvec_cap(*gpu, cap);
            gpu->swiglu_matmul({gug.as<float>(), gug.as<float>() + F, 2 * F, hg.as<float>(), dg[m]->w, og.as<float>(), n, true});
            set_matvec_cap(*gpu, 0);
            expect_match(fmt::format("swiglu_matmul += {} [{}x{}] {} n={}{}", s.name, D, F, dtype_name(kMatrixDtypes[m]),
                                     n, cap_label(cap)),
                         download<float>(*gpu, og.p, y.size()), ref, tol_for(m));
          }
      }
      {  // plain matmul accumulated into y (o_proj + residual); x: the first n·F floats of gate|up, read as [n, F]
        Buf oc = upload(*cpu, y);
        cpu->matmul({guc.as<float>(), dc.w, oc.as<float>(), n, true});
        const auto ref = download<float>(*cpu, oc.p, y.size());
        for (int m = 0; m < 2; ++m)
          for (int cap : matvec_caps(n)) {
            Buf og = upload(*gpu, y);
            set_matvec_cap(*gpu, cap);
            MatmulParams mp{gug.as<float>(), dg[m]->w, og.as<float>(), n, true};
            mp.next_ffn = &gg[m]->w, mp.next_qkv = &qg[m]->w;  // as the o_proj's: the L2 prefetch of both (a hint)
            gpu->matmul(mp);
            set_matvec_cap(*gpu, 0);
            expect_match(fmt::format("matmul += {} [{}x{}] {} n={}{}", s.name, D, F, dtype_name(kMatrixDtypes[m]), n,
                                     cap_label(cap)),
                         download<float>(*gpu, og.p, y.size()), ref, tol_for(m));
          }
      }
    }
  }
}

// Which dtype a matrix becomes resident in: F16 by default, BF16 when a source value is outside the f16 range
// (then bf16 GEMM inputs, still matching the CPU) or with matrix dtype BF16; vectors always F32.
TEST_F(BackendOps, MatrixDtypeSelection) {
  const int rows = 96, cols = 512;  // 96 rows: an out-of-range value in row 37
  struct Case {
    const char* name;
    DType src;         // checkpoint dtype
    float special;     // written at [37, 100] unless 0 (bf16-exact, so that both backends hold the same value)
    DType setting;     // the backend's matrix dtype
    DType want;        // resident dtype
    bool compare;      // the CPU can compute it (finite)
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const Case cases[] = {
      {"bf16", DType::BF16, 0.f, DType::F16, DType::F16, true},
      {"bf16 with 65280 (in the f16 range)", DType::BF16, 65280.f, DType::F16, DType::F16, true},
      {"bf16 with 1e5", DType::BF16, 99840.f, DType::F16, DType::BF16, true},
      {"bf16 with -1e5", DType::BF16, -99840.f, DType::F16, DType::BF16, true},
      {"bf16 with NaN", DType::BF16, nan, DType::F16, DType::BF16, false},
      {"bf16 with inf", DType::BF16, inf, DType::F16, DType::BF16, false},
      {"f32", DType::F32, 0.f, DType::F16, DType::F16, true},
      {"f32 with 65504", DType::F32, 65504.f, DType::F16, DType::F16, true},
      {"f32 with 69632", DType::F32, 69632.f, DType::F16, DType::BF16, true},
      {"f16", DType::F16, 0.f, DType::F16, DType::F16, true},
      {"bf16 as BF16", DType::BF16, 0.f, DType::BF16, DType::BF16, true},
      {"f32 as BF16", DType::F32, 0.f, DType::BF16, DType::BF16, true},
      {"f16 as BF16", DType::F16, 0.f, DType::BF16, DType::BF16, true},
  };
  for (const Case& c : cases) {
    auto wf = rand_floats(*rng, size_t(rows) * cols);
    if (c.special != 0.f) wf[size_t(37) * cols + 100] = c.special;
    const auto host = weight_bytes(wf, c.src);
    const auto wg = load_as(*gpu, host, c.src, rows, cols, c.setting);
    EXPECT_EQ(wg->w.dtype, c.want) << c.name;
    {  // a vector stays F32 whatever the setting
      const auto vg = load_as(*gpu, weight_bytes(rand_floats(*rng, cols), c.src), c.src, 1, cols, c.setting);
      EXPECT_EQ(vg->w.dtype, DType::F32) << c.name;
    }
    if (!c.compare) continue;
    OwnedWeight wc(*cpu, host, c.src, rows, cols);
    // Rounding on upload: none from bf16 (or f16 to f16); f32/f16 → bf16 ~1e-6; f32 → f16 ~3e-8.
    const bool exact_w = c.src == c.want || (c.src == DType::BF16 && c.want == DType::F16);
    for (int n : {1, 64}) {  // the GEMV (fp32 x) and cuBLAS (x rounded to the matrix's dtype)
      const auto x = rand_floats(*rng, size_t(n) * cols);
      Buf xc = upload(*cpu, x), xg = upload(*gpu, x);
      const size_t out_n = size_t(n) * rows;
      Buf oc = poisoned(*cpu, out_n * 4), og = poisoned(*gpu, out_n * 4);
      cpu->matmul({xc.as<float>(), wc.w, oc.as<float>(), n});
      gpu->matmul({xg.as<float>(), wg->w, og.as<float>(), n});
      const double tol = n > 8 ? (c.want == DType::F16 ? 1e-6 : 1e-4) : (exact_w ? 1e-8 : 1e-5);
      expect_match(fmt::format("matmul [{}x{}] {} → {} n={}", rows, cols, c.name, dtype_name(c.want), n),
                   download<float>(*gpu, og.p, out_n), download<float>(*cpu, oc.p, out_n), tol);
    }
    {  // embed: the rows as stored (row 37 holds the special value)
      std::vector<int32_t> tok = {37, 0, rows - 1, 5};
      Buf tc = upload(*cpu, tok), tg = upload(*gpu, tok);
      const size_t n = tok.size() * cols;
      Buf oc = poisoned(*cpu, n * 4), og = poisoned(*gpu, n * 4);
      cpu->embed({wc.w, tc.as<int32_t>(), oc.as<float>(), int(tok.size())});
      gpu->embed({wg->w, tg.as<int32_t>(), og.as<float>(), int(tok.size())});
      expect_match(fmt::format("embed [{}x{}] {}", rows, cols, c.name), download<float>(*gpu, og.p, n),
                   download<float>(*cpu, oc.p, n), exact_w ? 1e-12 : 1e-5);
    }
  }
#ifdef ROPEPP_HAS_CUDA
  // The environment: ROPEPP_CUDA_MATRIX_DTYPE=bf16 / f16 / (unset), anything else an error naming the variable.
  const char* old = std::getenv("ROPEPP_CUDA_MATRIX_DTYPE");
  const std::string saved = old ? old : "";
  setenv("ROPEPP_CUDA_MATRIX_DTYPE", "f32", 1);
  try {
    const auto be = make_cuda_backend(0);
    ADD_FAILURE() << "ROPEPP_CUDA_MATRIX_DTYPE=f32 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ROPEPP_CUDA_MATRIX_DTYPE"), std::string::npos) << e.what();
  }
  for (const char* v : {"bf16", "f16"}) {
    setenv("ROPEPP_CUDA_MATRIX_DTYPE", v, 1);
    auto be = make_cuda_backend(0);
    const auto host = weight_bytes(rand_floats(*rng, size_t(rows) * cols), DType::BF16);
    OwnedWeight w(*be, host, DType::BF16, rows, cols);
    EXPECT_EQ(w.w.dtype, std::string(v) == "bf16" ? DType::BF16 : DType::F16) << v;
  }
  if (old) {
    setenv("ROPEPP_CUDA_MATRIX_DTYPE", saved.c_str(), 1);
  } else {
    unsetenv("ROPEPP_CUDA_MATRIX_DTYPE");
  }
#endif
}

// A matrix made of several checkpoint tensors (the fused qkv and gate|up projections): load_weight_concat on
// both backends holds what load_weight of the host concatenation holds. 8,701 rows of 1,000 bf16 (17.4 MB):
// the CUDA upload's 16 MiB chunks end inside a row and inside a part.
TEST_F(BackendOps, LoadWeightConcat) {
  const int cols = 1000;
  const int part_rows[] = {5000, 3001, 700};
  std::vector<std::vector<uint8_t>> parts;
  std::vector<HostSpan> spans;
  std::vector<uint8_t> whole;
  int rows = 0;
  for (int r : part_rows) {
    parts.push_back(weight_bytes(rand_floats(*rng, size_t(r) * cols), DType::BF16));
    whole.insert(whole.end(), parts.back().begin(), parts.back().end());
    rows += r;
  }
  for (const auto& p : parts) spans.push_back({p.data(), p.size()});
  OwnedWeight ref(*cpu, whole, DType::BF16, rows, cols);
  std::vector<int32_t> tok(static_cast<size_t>(rows));
  for (int i = 0; i < rows; ++i) tok[size_t(i)] = i;
  const size_t n = size_t(rows) * cols;
  Buf tc = upload(*cpu, tok);
  Buf oref = poisoned(*cpu, n * 4);
  cpu->embed({ref.w, tc.as<int32_t>(), oref.as<float>(), rows});
  const auto want = download<float>(*cpu, oref.p, n);
  for (Backend* b : {cpu.get(), gpu.get()}) {
    const Weight w = b->load_weight_concat(spans, DType::BF16, rows, cols);
    EXPECT_EQ(w.rows, rows);
    Buf t = upload(*b, tok);
    Buf o = poisoned(*b, n * 4);
    b->embed({w, t.as<int32_t>(), o.as<float>(), rows});
    expect_match(fmt::format("load_weight_concat [{}x{}] on {}", rows, cols, b->name()), download<float>(*b, o.p, n),
                 want, 0.0);
    b->release_weight(w);
    EXPECT_THROW(b->load_weight_concat(spans, DType::BF16, rows + 1, cols), Error) << b->name();
  }
}

// upload_async and download_later without waiting (host_transfers.h on CUDA): 3,000 uploads of ~4 KiB from one
// host buffer that changes after each call (12 MiB through the 4 MiB staging: both halves refilled), then 600
// queued downloads (2.4 MiB through the 1 MiB ring: it wraps), some tickets waited for in between, one larger
// than the ring. Every byte lands where it should.
TEST_F(BackendOps, QueuedTransfers) {
  for (Backend* b : {cpu.get(), gpu.get()}) {
    const size_t piece = 4100, n_up = 3000, total = piece * n_up;
    Buf dev(*b, total);
    std::vector<uint8_t> want(total), src(piece);
    for (size_t i = 0; i < n_up; ++i) {
      for (size_t k = 0; k < piece; ++k) src[k] = uint8_t((i * 131 + k * 7) >> 2);
      std::memcpy(want.data() + i * piece, src.data(), piece);
      b->upload_async(static_cast<char*>(dev.p) + i * piece, src.data(), piece);
    }
    std::vector<std::vector<uint8_t>> got(600);
    std::vector<uint64_t> tickets;
    for (size_t i = 0; i < got.size(); ++i) {
      got[i].assign(piece, 0);
      tickets.push_back(b->download_later(got[i].data(), static_cast<char*>(dev.p) + i * piece, piece));
      if (i % 97 == 50) {
        b->wait_download(tickets[i - 10]);
        for (size_t j = 0; j + 10 <= i; ++j)
          ASSERT_EQ(std::memcmp(got[j].data(), want.data() + j * piece, piece), 0) << b->name() << " download " << j;
      }
    }
    std::vector<uint8_t> big(2 << 20);
    const uint64_t last = b->download_later(big.data(), dev.p, big.size());
    b->wait_download(last);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(std::memcmp(got[i].data(), want.data() + i * piece, piece), 0) << b->name() << " download " << i;
    EXPECT_EQ(std::memcmp(big.data(), want.data(), big.size()), 0) << b->name();
    std::vector<uint8_t> all(total);
    b->download(all.data(), dev.p, total);
    EXPECT_EQ(std::memcmp(all.data(), want.data(), total), 0) << b->name() << ": queued uploads";
  }
}

TEST_F(BackendOps, Rope) {
  const int max_pos = 65536;
  for (const Shape& s : kShapes) {
    const int hd = s.head_dim, half = hd / 2;
    std::vector<float> cs(size_t(max_pos + 1) * half), sn(cs.size());
    for (int p = 0; p <= max_pos; ++p)
      for (int j = 0; j < half; ++j) {
        const double a = p * std::pow(500000.0, -2.0 * j / hd);
        cs[size_t(p) * half + j] = float(std::cos(a)), sn[size_t(p) * half + j] = float(std::sin(a));
      }
    Buf csc = upload(*cpu, cs), snc = upload(*cpu, sn), csg = upload(*gpu, cs), sng = upload(*gpu, sn);
    for (int n : {1, 13, 300}) {
      // A fused qkv row: rotate the q part (heads) and the k part (kv heads) in place.
      const int stride = (s.heads + 2 * s.kv_heads) * hd;
      const auto x = rand_floats(*rng, size_t(n) * stride);
      std::vector<int32_t> pos(n);
      for (auto& p : pos) p = rng->below(max_pos + 1);
      pos[0] = max_pos;
      Buf xc = upload(*cpu, x), xg = upload(*gpu, x), pc = upload(*cpu, pos), pg = upload(*gpu, pos);
      for (int part = 0; part < 2; ++part) {
        const int off = part == 0 ? 0 : s.heads * hd, heads = part == 0 ? s.heads : s.kv_heads;
        cpu->rope({xc.as<float>() + off, pc.as<int32_t>(), csc.as<float>(), snc.as<float>(), n, heads, hd, stride});
        gpu->rope({xg.as<float>() + off, pg.as<int32_t>(), csg.as<float>(), sng.as<float>(), n, heads, hd, stride});
      }
      expect_match(fmt::format("rope {} n={}", s.name, n), download<float>(*gpu, xg.p, x.size()),
                   download<float>(*cpu, xc.p, x.size()), 1e-10);
    }
  }
}

TEST_F(BackendOps, SwigluAddGather) {
  for (const Shape& s : kShapes) {
    for (int n : {1, 7, 300}) {
      for (bool fused : {true, false}) {
        const int F = s.ffn, stride = fused ? 2 * F : F;
        const auto g = rand_floats(*rng, size_t(n) * stride, -6.f, 6.f), u = rand_floats(*rng, size_t(n) * F);
        Buf gc = upload(*cpu, g), gg = upload(*gpu, g), uc = upload(*cpu, u), ug = upload(*gpu, u);
        const float* upc = fused ? gc.as<float>() + F : uc.as<float>();
        const float* upg = fused ? gg.as<float>() + F : ug.as<float>();
        Buf oc = poisoned(*cpu, size_t(n) * F * 4), og = poisoned(*gpu, size_t(n) * F * 4);
        cpu->swiglu({gc.as<float>(), upc, stride, oc.as<float>(), n, F});
        gpu->swiglu({gg.as<float>(), upg, stride, og.as<float>(), n, F});
        expect_match(fmt::format("swiglu {} n={}{}", s.name, n, fused ? " fused" : ""),
                     download<float>(*gpu, og.p, size_t(n) * F), download<float>(*cpu, oc.p, size_t(n) * F), 1e-10);
      }
    }
  }
  // Widths or offsets that are not multiples of 8 elements: the CUDA kernel's one-element path (the model
  // shapes above take the 8-wide one).
  for (int F : {45, 64}) {
    for (int off : {0, 3}) {
      const int n = 5, stride = 2 * F + off;
      const auto g = rand_floats(*rng, size_t(n) * stride + off, -6.f, 6.f);
      Buf gc = upload(*cpu, g), gg = upload(*gpu, g);
      Buf oc = poisoned(*cpu, size_t(n) * F * 4), og = poisoned(*gpu, size_t(n) * F * 4);
      cpu->swiglu({gc.as<float>() + off, gc.as<float>() + off + F, stride, oc.as<float>(), n, F});
      gpu->swiglu({gg.as<float>() + off, gg.as<float>() + off + F, stride, og.as<float>(), n, F});
      expect_match(fmt::format("swiglu F={} offset={}", F, off), download<float>(*gpu, og.p, size_t(n) * F),
                   download<float>(*cpu, oc.p, size_t(n) * F), 1e-10);
    }
  }
  for (size_t count : {size_t(1), size_t(3), size_t(1000), size_t(1000003)}) {
    for (int off : {0, 1}) {
      const auto x = rand_floats(*rng, count + 1), y = rand_floats(*rng, count + 1);
      Buf xc = upload(*cpu, x), xg = upload(*gpu, x), yc = upload(*cpu, y), yg = upload(*gpu, y);
      cpu->add({xc.as<float>() + off, yc.as<float>() + off, count});
      gpu->add({xg.as<float>() + off, yg.as<float>() + off, count});
      expect_match(fmt::format("add count={} offset={}", count, off), download<float>(*gpu, xg.p, count + 1),
                   download<float>(*cpu, xc.p, count + 1), 1e-12);
    }
  }
  for (int dim : {64, 1536}) {
    for (int x_stride : {0, dim + 40}) {  // packed rows, or the first dim columns of wider rows (q of qkv rows)
      const int stride = x_stride > 0 ? x_stride : dim;
      const auto x = rand_floats(*rng, size_t(50) * stride);
      std::vector<int32_t> rows = {49, 0, 7, 7, 23};
      Buf xc = upload(*cpu, x), xg = upload(*gpu, x), rc = upload(*cpu, rows), rg = upload(*gpu, rows);
      const size_t n = rows.size() * dim;
      Buf oc = poisoned(*cpu, n * 4), og = poisoned(*gpu, n * 4);
      cpu->gather_rows({xc.as<float>(), rc.as<int32_t>(), oc.as<float>(), int(rows.size()), dim, x_stride});
      gpu->gather_rows({xg.as<float>(), rg.as<int32_t>(), og.as<float>(), int(rows.size()), dim, x_stride});
      const auto got_cpu = download<float>(*cpu, oc.p, n);
      for (size_t i = 0; i < rows.size(); ++i)  // the oracle itself, against the definition
        ASSERT_TRUE(std::equal(got_cpu.begin() + ptrdiff_t(i * dim), got_cpu.begin() + ptrdiff_t((i + 1) * dim),
                               x.begin() + ptrdiff_t(size_t(rows[i]) * stride)))
            << "cpu gather_rows dim=" << dim << " stride=" << stride << " row " << i;
      expect_match(fmt::format("gather_rows dim={} stride={}", dim, stride), download<float>(*gpu, og.p, n), got_cpu,
                   1e-12);
    }
  }
}

TEST_F(BackendOps, KvAppendPaged) {
  for (const Shape& s : kShapes) {
    const AttnHeads h = heads_for(s, "EC");
    const PagedScenario sc(h, attention_cases()[0], *rng);
    const CacheOn cc(*cpu, sc), cg(*gpu, sc);
    // Written slots equal (f16-exact inputs); every other slot still poisoned on both (no stray writes).
    const auto got = cg.contents(*gpu), ref = cc.contents(*cpu);
    ASSERT_EQ(got.size(), ref.size());
    size_t written = 0, mismatched = 0, stray = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      if (std::isnan(ref[i])) {
        stray += !std::isnan(got[i]);
      } else {
        ++written;
        mismatched += got[i] != ref[i];
      }
    }
    EXPECT_EQ(written, 2 * sc.k.size()) << s.name;
    EXPECT_EQ(mismatched, 0u) << "kv_append " << s.name << ": slots that differ from the CPU cache";
    EXPECT_EQ(stray, 0u) << "kv_append " << s.name << ": slots written that should be untouched";
  }
}

// rope + kv_append fused (decode's rope_kv_append) on CUDA against the CPU's two ops (Backend's default).
TEST_F(BackendOps, RopeKvAppendPaged) {
  for (const Shape& s : kShapes) {
    for (const char* mode : {"rope", "EH", "EC"}) {
      const AttnHeads h = heads_for(s, mode);
      const PagedScenario sc(h, attention_cases()[0], *rng);
      std::vector<float> cs, sn;
      rope_tables(sc.fill.max_pos, h.hd, cs, sn);
      const int n = int(sc.fill.tokens.size()), row = (h.nq + 2 * h.nkv) * h.hd;
      const auto qkv = rand_floats(*rng, size_t(n) * row, -2.f, 2.f);
      std::vector<float> rows_out[2], cache_out[2];
      Backend* bes[2] = {cpu.get(), gpu.get()};
      for (int b = 0; b < 2; ++b) {
        Backend& be = *bes[b];
        KVCacheView view = sc.view_shape(be.kv_dtype());
        const size_t bytes = size_t(view.n_layers) * view.layer_stride() * dtype_size(view.dtype);
        Buf k = poisoned(be, bytes), v = poisoned(be, bytes);
        view.k = k.p, view.v = v.p;
        BatchOn batch(be, sc.fill);
        Buf x = upload(be, qkv), c = upload(be, cs), si = upload(be, sn);
        be.rope_kv_append({x.as<float>(), h.nq, batch.view.positions, c.as<float>(), si.as<float>(), view, sc.layer,
                           batch.view});
        rows_out[b] = download<float>(be, x.p, qkv.size());
        const size_t count = size_t(view.n_layers) * view.layer_stride();
        for (const Buf* buf : {&k, &v}) {
          const auto f = cache_to_f32(be, buf->p, count, view.dtype);
          cache_out[b].insert(cache_out[b].end(), f.begin(), f.end());
        }
      }
      // q and k rotated in place (fp32 on both); the cache: f16 on the GPU, f32 on the CPU (f16 rounding of
      // values in [-2, 2]: NMSE ≈ 4e-8; bf16 gave 3e-6). Slots the CPU left poisoned must be poisoned on the GPU
      // too (no stray writes), and the others written.
      expect_match(fmt::format("rope_kv_append rows {} {}", s.name, mode), rows_out[1], rows_out[0], 1e-10);
      expect_cache_match(fmt::format("rope_kv_append cache {} {} (f16 vs f32)", s.name, mode), cache_out[1],
                         cache_out[0], 2 * size_t(n) * h.nkv * h.hd, 1e-6);
    }
  }
}

// The two whole-block fused ops of decode (backend.h) on CUDA against the CPU's defaults (norm_matmul, then
// rope_kv_append / swiglu_matmul): qkv_rope_kv_append (RMSNorm, Wq|Wk|Wv, RoPE, k and v into the paged cache)
// and feed_forward (RMSNorm, Wgate|Wup, SwiGLU, Wdown added into the residual stream, which is also the
// input: down.out == gate_up.x, as in the model). CUDA fuses them up to 8 tokens and falls back above (n = 9).
TEST_F(BackendOps, FusedLayerOps) {
  for (const Shape& s : kShapes) {
    const int D = s.hidden, F = s.ffn;
    const DType dt = D == 64 ? DType::F32 : DType::BF16;
    const auto wnorm = weight_bytes(rand_floats(*rng, D, 0.5f, 1.5f), DType::F32);
    OwnedWeight nc(*cpu, wnorm, DType::F32, 1, D), ng(*gpu, wnorm, DType::F32, 1, D);
    // As FusedMatmuls: the GEMV (n ≤ 8) with fp32 x; cuBLAS (n = 9) with x rounded to the matrix's dtype.
    auto tol_for = [&](int n, DType resident) {
      return n <= 8 ? (dt == DType::BF16 ? 1e-7 : 1e-5) : (resident == DType::F16 ? 1e-6 : 1e-4);
    };
    const int ns[] = {1, 2, 3, 5, 8, 9};

    for (const char* mode : kModes) {  // RMSNorm + Wq|Wk|Wv + RoPE + kv_append
      const AttnHeads h = heads_for(s, mode);
      const int rows = (h.nq + 2 * h.nkv) * h.hd;
      const auto wqkv = weight_bytes(rand_floats(*rng, size_t(rows) * D), dt);
      OwnedWeight qc(*cpu, wqkv, dt, rows, D);
      std::unique_ptr<OwnedWeight> qg[2];
      for (int m = 0; m < 2; ++m) qg[m] = load_as(*gpu, wqkv, dt, rows, D, kMatrixDtypes[m]);
      for (int n : ns) {
        if (n > 8 && std::getenv("ROPEPP_OPS_NO_CUBLAS")) continue;  // racecheck: cuBLAS's kernels are not ours
        for (bool one_seq : {false, true}) {
          const DecodeBatch db = decode_batch(n, one_seq, 16, *rng);
          std::vector<float> cs, sn;
          rope_tables(db.batch.max_pos, h.hd, cs, sn);
          const auto x = rand_floats(*rng, size_t(n) * D, -3.f, 3.f);
          const size_t out_n = size_t(n) * rows;
          // Returns proj.out (q and k rotated, v as projected) and the cache (k then v, both layers) as f32.
          auto run = [&](Backend& be, const Weight& w, std::vector<float>& out, std::vector<float>& cache) {
            KVCacheView view;
            view.dtype = be.kv_dtype();
            view.n_layers = 2, view.n_blocks = db.n_blocks, view.n_kv_heads = h.nkv, view.block_size = 16;
            view.head_dim = h.hd;
            const size_t count = size_t(view.n_layers) * view.layer_stride();
            Buf k = poisoned(be, count * dtype_size(view.dtype)), v = poisoned(be, count * dtype_size(view.dtype));
            view.k = k.p, view.v = v.p;
            BatchOn batch(be, db.batch);
            Buf xb = upload(be, x), c = upload(be, cs), si = upload(be, sn);
            Buf normed = poisoned(be, size_t(n) * D * 4), ob = poisoned(be, out_n * 4);
            be.qkv_rope_kv_append({xb.as<float>(), (&be == cpu.get() ? nc : ng).w, 1e-5f, normed.as<float>(), w,
                                   ob.as<float>(), n},
                                  {ob.as<float>(), h.nq, batch.view.positions, c.as<float>(), si.as<float>(), view, 1,
                                   batch.view});
            out = download<float>(be, ob.p, out_n);
            cache.clear();
            for (const Buf* buf : {&k, &v}) {
              const auto f = cache_to_f32(be, buf->p, count, view.dtype);
              cache.insert(cache.end(), f.begin(), f.end());
            }
          };
          std::vector<float> ref_out, ref_cache;
          run(*cpu, qc.w, ref_out, ref_cache);
          for (int m = 0; m < 2; ++m)
          for (int cap : matvec_caps(n)) {
            const DType resident = kMatrixDtypes[m];
            std::vector<float> got_out, got_cache;
            set_matvec_cap(*gpu, cap);
            run(*gpu, qg[m]->w, got_out, got_cache);
            set_matvec_cap(*gpu, 0);
            const std::string what = fmt::format("qkv_rope_kv_append {} {} [{}x{}] {} n={} ({}){}", s.name, mode, rows,
                                                 D, dtype_name(resident), n, one_seq ? "one sequence" : "n sequences",
                                                 cap_label(cap, true));
            expect_match(what + " rows", got_out, ref_out, tol_for(n, resident));
            // The cache: f16 on the GPU, f32 on the CPU (f16 rounding: NMSE ≈ 5e-8, as in RopeKvAppendPaged).
            expect_cache_match(what + " cache (f16 vs f32)", got_cache, ref_cache, 2 * size_t(n) * h.nkv * h.hd,
                               std::max(tol_for(n, resident), 1e-6));
          }
        }
      }
    }

    {  // RMSNorm + Wgate|Wup + SwiGLU + Wdown, added into x
      const auto wgu = weight_bytes(rand_floats(*rng, size_t(2 * F) * D), dt);
      const auto wdown = weight_bytes(rand_floats(*rng, size_t(D) * F), dt);
      OwnedWeight gc(*cpu, wgu, dt, 2 * F, D), dc(*cpu, wdown, dt, D, F);
      std::unique_ptr<OwnedWeight> gg[2], dg[2];
      for (int m = 0; m < 2; ++m) {
        gg[m] = load_as(*gpu, wgu, dt, 2 * F, D, kMatrixDtypes[m]);
        dg[m] = load_as(*gpu, wdown, dt, D, F, kMatrixDtypes[m]);
      }
      for (int n : {1, 2, 3, 5, 8, 9, 100}) {
        if (n > 8 && std::getenv("ROPEPP_OPS_NO_CUBLAS")) continue;
        const auto x = rand_floats(*rng, size_t(n) * D, -3.f, 3.f);
        // Returns the residual stream x after the block and down.act (silu(gate)·up where written); gate_up.out may
        // stay unwritten.
        auto run = [&](Backend& be, const Weight& norm, const Weight& w_gu, const Weight& w_down,
                       std::vector<float>& x_out, std::vector<float>& act_out) {
          Buf xb = upload(be, x), normed = poisoned(be, size_t(n) * D * 4);
          Buf gu = poisoned(be, size_t(n) * 2 * F * 4), act = poisoned(be, size_t(n) * F * 4);
          float* g = gu.as<float>();
          be.feed_forward({xb.as<float>(), norm, 1e-5f, normed.as<float>(), w_gu, g, n},
                          {g, g + F, 2 * F, act.as<float>(), w_down, xb.as<float>(), n, true});
          x_out = download<float>(be, xb.p, x.size());
          act_out = download<float>(be, act.p, size_t(n) * F);
        };
        std::vector<float> ref_x, ref_act;
        run(*cpu, nc.w, gc.w, dc.w, ref_x, ref_act);
        // GEMM batches run twice: gate|up in fp32 and in 16 bits (ROPEPP_CUDA_HALF_ACTIVATIONS, the default);
        // GEMV batches without and with a grid cap; one row also with the shared-memory prefetch.
        for (int variant = 0; variant < (n == 1 ? 6 : 4); ++variant) {
          const int m = variant % 2;
          const bool half_gu = n > 8 && variant >= 2;
          const int cap = n <= 8 && variant >= 2 ? (variant >= 4 ? kSmemPrefetch : 2) : 0;
#ifdef ROPEPP_HAS_CUDA
          set_cuda_half_activations(*gpu, half_gu);
#endif
          const DType resident = kMatrixDtypes[m];
          std::vector<float> got_x, got_act;
          set_matvec_cap(*gpu, cap);
          run(*gpu, ng.w, gg[m]->w, dg[m]->w, got_x, got_act);
          set_matvec_cap(*gpu, 0);
#ifdef ROPEPP_HAS_CUDA
          set_cuda_half_activations(*gpu, true);
#endif
          // Three projections chained (gate and up into act, act into down): their errors add up. A host
          // simulation of tiny (f32 weights rounded to bf16, fp32 x) over 2000 draws: act median 4.4e-6, max
          // 1.7e-5; x median 6.6e-6, max 2.1e-5 (the single projection's 1e-5 would fail); f16 weights with f16
          // x (cuBLAS): x max 7.5e-7; bf16 weights with bf16 x: max 4.2e-5. So 5× a single projection's tolerance.
          const double tol = 5 * tol_for(n, resident);
          // The 16-bit gate|up adds one rounding of gate and of up before silu(gate)·up (itself rounded to 16
          // bits in any case): act's NMSE grows ~3× (f16: ~8e-8 → ~2.5e-7), far below 5e-6.
          const std::string what = fmt::format("feed_forward {} [{}x{}],[{}x{}] {} n={}{}{}", s.name, 2 * F, D, D, F,
                                               dtype_name(resident), n, half_gu ? " (16-bit gate|up)" : "",
                                               cap_label(cap, true));
          expect_match(what + " x += (residual aliased)", got_x, ref_x, tol);
          // act is scratch: the GEMM path (n > 8) feeds silu(gate)·up to cuBLAS in f16 without writing it.
          if (n <= 8) expect_match(what + " act", got_act, ref_act, tol);
        }
      }
    }
  }
}

// ---- timings (ROPEPP_OPS_PERF=1): not a pass/fail criterion ------------------------------------------
TEST_F(BackendOps, PerfReport) {
#ifdef ROPEPP_HAS_CUDA
  if (!std::getenv("ROPEPP_OPS_PERF")) GTEST_SKIP() << "set ROPEPP_OPS_PERF=1 for timings";
  gpu = make_cuda_backend(0);  // no per-op synchronisation
  auto time_us = [&](auto&& fn) {
    for (int i = 0; i < 3; ++i) fn();
    gpu->synchronize();
    const int reps = 50;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) fn();
    gpu->synchronize();
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  for (const char* mode : {"EC", "EH"}) {
    for (int ctx : {4096, 65536}) {
      const AttnHeads h = heads_for(kShapes[1], mode);
      const PagedScenario sc(h, AttnCase{"perf", {{ctx - 1, 1}}}, *rng);
      const CacheOn cg(*gpu, sc);
      const int q_stride = h.nq * h.hd;
      Buf qg = upload(*gpu, rand_floats(*rng, size_t(q_stride))), og(*gpu, size_t(h.nq) * 2 * h.hd * 4);
      BatchOn bg(*gpu, sc.query);
      const double us = time_us([&] {
        gpu->attention({qg.as<float>(), q_stride, og.as<float>(), cg.view, sc.layer, bg.view, h.nq, h.nkv, h.hd, h.imag,
                        0.08838835f});
      });
      const double bytes = double(ctx) * h.nkv * h.hd * 2 * 2;
      std::printf("[ perf ] decode attention 376M %s ctx %6d: %8.1f us, %7.1f GB/s of K+V\n", mode, ctx, us,
                  bytes / us * 1e-3);
    }
  }
  const Shape& s = kShapes[1];
  const auto wh = weight_bytes(rand_floats(*rng, size_t(s.vocab) * s.hidden), DType::BF16);
  for (DType resident : kMatrixDtypes) {
    const auto w = load_as(*gpu, wh, DType::BF16, s.vocab, s.hidden, resident);
    for (int n : {1, 4, 8, 64}) {
      Buf x = upload(*gpu, rand_floats(*rng, size_t(n) * s.hidden)), o(*gpu, size_t(n) * s.vocab * 4);
      const double us = time_us([&] { gpu->matmul({x.as<float>(), w->w, o.as<float>(), n}); });
      std::printf("[ perf ] matmul lm_head [128256x1024] %-4s n=%-3d: %8.1f us, %7.1f GB/s of weights\n",
                  dtype_name(resident), n, us, double(s.vocab) * s.hidden * 2 / us * 1e-3);
    }
  }
#endif
}

}  // namespace
}  // namespace ropepp
