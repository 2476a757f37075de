// backend_ops_attention.cpp: part of test_backend_ops (tests/CMakeLists.txt adds it to that executable): the
// attention op on CUDA against the CPU backend, every kernel (decode fp32 / tensor cores, history cached, last-block
// merge, split align 16; prefill wgmma / warp-specialized / mma.sync; auto) over the paged-cache cases of
// testing_backend.h (attention_cases) for the three shapes and modes, then attention_out_proj. See
// test_backend_ops.cpp for the conventions (NMSE against a per-op tolerance, fresh seeds, NaN-poisoned outputs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "testing_backend.h"

namespace ropepp {
namespace {

using namespace test;

class BackendOpsAttention : public BackendOps, public ::testing::WithParamInterface<std::tuple<int, int>> {};

TEST_P(BackendOpsAttention, AllCases) {
#ifdef ROPEPP_HAS_CUDA
  const Shape& s = kShapes[std::get<0>(GetParam())];
  const std::string mode = kModes[std::get<1>(GetParam())];
  const AttnHeads h = heads_for(s, mode);
  // ROPEPP_OPS_MAX_CTX=N skips the cases that reach past N positions (compute-sanitizer runs: racecheck
  // over a 65,536-token attention takes many minutes).
  const char* cap_env = std::getenv("ROPEPP_OPS_MAX_CTX");
  const int max_ctx = cap_env ? std::atoi(cap_env) : 0;
  for (const AttnCase& c : attention_cases()) {
    if (c.block_size != 16 && s.hidden != 64 && !c.all_shapes) continue;  // other block sizes: tiny shape mostly
    int reach = 0;
    for (const SeqSpec& q : c.seqs) reach = std::max(reach, q.cached + q.chunk);
    if (max_ctx > 0 && reach > max_ctx) continue;
    const PagedScenario sc(h, c, *rng);
    const CacheOn cc(*cpu, sc), cg(*gpu, sc);
    const int n = int(sc.query.tokens.size());
    const int q_stride = (h.nq + 2 * h.nkv) * h.hd;  // q inside a fused qkv row
    const auto q = rand_floats(*rng, size_t(n) * q_stride, -2.f, 2.f);
    Buf qc = upload(*cpu, q), qg = upload(*gpu, q);
    BatchOn bc(*cpu, sc.query), bg(*gpu, sc.query);
    const size_t out_n = size_t(n) * h.nq * (h.imag ? 2 : 1) * h.hd;
    Buf oc = poisoned(*cpu, out_n * 4), og(*gpu, out_n * 4);
    const float scale = 1.f / std::sqrt(float(h.hd));
    cpu->attention({qc.as<float>(), q_stride, oc.as<float>(), cc.view, sc.layer, bc.view, h.nq, h.nkv, h.hd, h.imag, scale});
    const auto ref = download<float>(*cpu, oc.p, out_n);
    // "prefill" on an H100/H200 runs the two-blocks-per-SM wgmma kernel for head_dim 128 (K/V tiles by the copy
    // engine when the block size is a multiple of 16), "prefill cp.async" the same with every thread's copies,
    // "prefill mma.sync" the other. "prefill warp-specialized" (the default): the producer/consumer wgmma kernel
    // (head_dim 128 on sm_90 with cache blocks of a multiple of 16; else the cp.async wgmma kernel), Q as the register
    // operand of Q·Kᵀ; "..., Q in smem" its variant with Q read from shared memory;
    // "decode tensor cores": the decode split kernel on mma.sync (f16 Q and P, as the prefill kernels);
    // "... history cached": the same with BatchView::history_cached (a batch of one token per sequence: the
    // rows before each token's own are loaded before the kernel waits, its own row after); "..., last-block merge":
    // up to 32 context splits merged by the last split block instead of the combine kernel (more never are).
    // "..., split align 16": the decode splits rounded to 16 positions instead of 64 (more, shorter splits at long
    // contexts; a split's last tile partial).
    // "..., 2 warps x 4 stages" / "4 warps x 3 stages": the tensor-core decode kernel's other shapes
    // (CudaBackendOptions::decode_mma_shape; the others without a shape run 4 warps × 2 stages of cp.async copies);
    // "..., TMA": its stages filled by the copy engine (head_dim 128 with cache blocks of a multiple of 16; else the
    // cp.async kernel runs); "TMA 4 warps x 3 stages" is the default shape; "TMA 8 warps x 3 stages" (one block per SM)
    // the shape of "short context unsplit" (CudaBackendOptions::decode_short_unsplit: every context here).
    // "..., cluster merge": at most 8 splits per (token, kv head), merged by their thread-block cluster through
    // distributed shared memory instead of the combine kernel (CudaBackendOptions::decode_cluster_merge: every
    // context here; sm_90).
    struct KernelChoice {
      CudaAttentionKernel kernel;
      bool sm90, ws, mma, history, merge_last;
      int align;
      const char* name;
      int shape = 0;
      bool tma = true;  // CudaBackendOptions::prefill_tma
      bool ws_qreg = false;  // CudaBackendOptions::prefill_ws_q_registers (true by default)
      int short_unsplit = 0;  // CudaBackendOptions::decode_short_unsplit (positions)
      int cluster = 0;        // CudaBackendOptions::decode_cluster_merge (positions)
    };
    const KernelChoice kernels[] = {
        {CudaAttentionKernel::Decode, true, false, false, false, false, 64, "decode"},
        {CudaAttentionKernel::Decode, true, false, false, false, true, 64, "decode, last-block merge"},
        {CudaAttentionKernel::Decode, true, false, true, false, false, 64, "decode tensor cores"},
        {CudaAttentionKernel::Decode, true, false, true, false, true, 64, "decode tensor cores, last-block merge"},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 64, "decode tensor cores, history cached"},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 16, "decode tensor cores, history cached, split align 16"},
        {CudaAttentionKernel::Decode, true, false, true, false, false, 16, "decode tensor cores, split align 16"},
        {CudaAttentionKernel::Decode, true, false, false, false, false, 16, "decode, split align 16"},
        {CudaAttentionKernel::Decode, true, false, true, true, true, 64, "decode tensor cores, history cached, last-block merge"},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 64, "decode tensor cores, history cached, 2 warps x 4 stages", 1},
        {CudaAttentionKernel::Decode, true, false, true, false, true, 16, "decode tensor cores, split align 16, last-block merge, 2 warps x 4 stages", 1},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 64, "decode tensor cores, history cached, 4 warps x 3 stages", 2},
        {CudaAttentionKernel::Decode, true, false, true, false, false, 16, "decode tensor cores, split align 16, 4 warps x 3 stages", 2},
        {CudaAttentionKernel::Decode, true, false, true, false, false, 64, "decode tensor cores, TMA", 3},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 64, "decode tensor cores, history cached, TMA", 3},
        {CudaAttentionKernel::Decode, true, false, true, true, true, 16, "decode tensor cores, history cached, split align 16, last-block merge, TMA", 3},
        {CudaAttentionKernel::Decode, true, false, true, false, false, 16, "decode tensor cores, split align 16, TMA 4 warps x 3 stages", 4},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 64, "decode tensor cores, history cached, TMA 4 warps x 3 stages", 4},
        {CudaAttentionKernel::Decode, true, false, true, false, false, 16, "decode tensor cores, split align 16, TMA 8 warps x 3 stages", 5},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 64, "decode tensor cores, history cached, TMA 8 warps x 3 stages", 5},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 64, "decode tensor cores, history cached, short context unsplit", 4,
         true, false, 1 << 20},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 64, "decode tensor cores, history cached, TMA 4 warps x 3 stages, cluster merge", 4,
         true, false, 0, 1 << 20},
        {CudaAttentionKernel::Decode, true, false, true, false, false, 16, "decode tensor cores, split align 16, cluster merge", 0,
         true, false, 0, 1 << 20},
        {CudaAttentionKernel::Decode, true, false, true, true, false, 16, "decode tensor cores, history cached, split align 16, TMA, cluster merge", 3,
         true, false, 0, 1 << 20},
        {CudaAttentionKernel::Prefill, true, false, false, false, false, 64, "prefill"},
        {CudaAttentionKernel::Prefill, true, false, false, false, false, 64, "prefill cp.async", 0, false},
        {CudaAttentionKernel::Prefill, true, true, false, false, false, 64, "prefill warp-specialized, Q in smem"},
        {CudaAttentionKernel::Prefill, true, true, false, false, false, 64, "prefill warp-specialized", 0, true, true},
        {CudaAttentionKernel::Prefill, false, false, false, false, false, 64, "prefill mma.sync"},
        {CudaAttentionKernel::Auto, true, false, false, false, false, 64, "auto"}};
    // ROPEPP_OPS_ATTN_KERNEL=NAME[|NAME...] runs only the kernels of those names (a device smoke test of variants).
    const char* only_env = std::getenv("ROPEPP_OPS_ATTN_KERNEL");
    const std::string only = only_env ? fmt::format("|{}|", only_env) : "";
    for (const auto& [kernel, sm90, ws, mma, history, merge_last, align, kname, shape, tma, ws_qreg, short_unsplit, cluster] :
         kernels) {
      if (only.size() > 2 && only.find(fmt::format("|{}|", kname)) == std::string::npos) continue;
      BatchView bv = bg.view;
      if (history) {
        if (bv.n_tokens != bv.n_seqs) continue;  // the flag's promise holds for one token per sequence only
        bv.history_cached = true;
      }
      set_cuda_attention_kernel(*gpu, kernel);
      set_cuda_prefill_sm90(*gpu, sm90);
      set_cuda_prefill_warp_specialized(*gpu, ws, ws_qreg);
      set_cuda_decode_mma(*gpu, mma);
      set_cuda_decode_merge_in_last_block(*gpu, merge_last);
      set_cuda_decode_split_align(*gpu, align);
      set_cuda_decode_mma_shape(*gpu, shape);
      set_cuda_decode_short_unsplit(*gpu, short_unsplit);
      set_cuda_decode_cluster_merge(*gpu, cluster);
      set_cuda_prefill_tma(*gpu, tma);
      poison(*gpu, og.p, out_n * 4);
      gpu->attention({qg.as<float>(), q_stride, og.as<float>(), cg.view, sc.layer, bv, h.nq, h.nkv, h.hd, h.imag, scale});
      set_cuda_decode_split_align(*gpu, 64);
      set_cuda_decode_mma_shape(*gpu, CudaBackendOptions{}.decode_mma_shape);
      set_cuda_decode_short_unsplit(*gpu, CudaBackendOptions{}.decode_short_unsplit);
      set_cuda_decode_cluster_merge(*gpu, CudaBackendOptions{}.decode_cluster_merge);
      set_cuda_prefill_tma(*gpu, true);
      // decode: fp32 math on the same f16 K/V; prefill: f16 Q and P on tensor cores (a host simulation of
      // their rounding: NMSE ≈ 5e-8, worst of 3000 draws 2.6e-7; bf16 Q and P gave ≈ 4e-6).
      const double tol = kernel == CudaAttentionKernel::Decode && !mma ? 1e-6 : 5e-6;
      expect_match(fmt::format("attention {} {} [{}]: {} kernel", s.name, mode, c.name, kname),
                   download<float>(*gpu, og.p, out_n), ref, tol);
    }
    set_cuda_attention_kernel(*gpu, CudaAttentionKernel::Auto);
    set_cuda_prefill_warp_specialized(*gpu, CudaBackendOptions{}.prefill_warp_specialized,
                                      CudaBackendOptions{}.prefill_ws_q_registers);
    set_cuda_decode_mma(*gpu, true);
    set_cuda_decode_merge_in_last_block(*gpu, false);
    set_cuda_prefill_sm90(*gpu, true);

    // attention_out_proj: x += attention·Woᵀ. A batch of GEMM size runs the CUDA backend's 16-bit path (the
    // attention writes Wo's type straight into the GEMM input) when half_activations is on, else the default.
    if (n > 8 && !std::getenv("ROPEPP_OPS_NO_CUBLAS")) {
      const int64_t att_cols = int64_t(out_n / size_t(n));
      const DType dt = DType::BF16;
      const auto wo = weight_bytes(rand_floats(*rng, size_t(s.hidden) * size_t(att_cols)), dt);
      const auto x = rand_floats(*rng, size_t(n) * s.hidden, -2.f, 2.f);
      OwnedWeight woc(*cpu, wo, dt, s.hidden, att_cols);
      Buf xc = upload(*cpu, x);
      cpu->attention_out_proj({qc.as<float>(), q_stride, oc.as<float>(), cc.view, sc.layer, bc.view, h.nq, h.nkv, h.hd,
                               h.imag, scale},
                              {oc.as<float>(), woc.w, xc.as<float>(), n, true});
      const auto ref_x = download<float>(*cpu, xc.p, x.size());
      for (int variant = 0; variant < 4; ++variant) {
        const DType resident = kMatrixDtypes[variant % 2];
        const bool half = variant >= 2;
        const auto wog = load_as(*gpu, wo, dt, s.hidden, att_cols, resident);
        Buf xg = upload(*gpu, x);
        set_cuda_half_activations(*gpu, half);
        gpu->attention_out_proj({qg.as<float>(), q_stride, og.as<float>(), cg.view, sc.layer, bg.view, h.nq, h.nkv,
                                 h.hd, h.imag, scale},
                                {og.as<float>(), wog->w, xg.as<float>(), n, true});
        set_cuda_half_activations(*gpu, true);
        // The attention's tolerance plus the GEMM's (its input rounded to 16 bits in both paths).
        const double tol = 5e-6 + (resident == DType::F16 ? 1e-6 : 1e-4);
        expect_match(fmt::format("attention_out_proj {} {} [{}] {}{}", s.name, mode, c.name, dtype_name(resident),
                                 half ? " (16-bit attention output)" : ""),
                     download<float>(*gpu, xg.p, x.size()), ref_x, tol);
      }
    }
    // One decode token of one sequence: attention_out_proj through the fused attention + o_proj kernel
    // (decode_fused_oproj, with and without the history flag) and through the separate kernels, against the CPU;
    // the launch counter says whether the fused kernel ran where it applies (head_dim 128, ≤ 8 rows per kv head,
    // ≤ 256 positions, sm_90) and only there. The attention output is written by both paths.
    if (n == 1 && sc.query.n_seqs == 1) {
      const int64_t att_cols = int64_t(out_n);
      const DType dt = DType::BF16;
      const auto wo = weight_bytes(rand_floats(*rng, size_t(s.hidden) * size_t(att_cols)), dt);
      const auto x = rand_floats(*rng, size_t(s.hidden), -2.f, 2.f);
      OwnedWeight woc(*cpu, wo, dt, s.hidden, att_cols);
      Buf xc = upload(*cpu, x);
      cpu->attention_out_proj({qc.as<float>(), q_stride, oc.as<float>(), cc.view, sc.layer, bc.view, h.nq, h.nkv, h.hd,
                               h.imag, scale},
                              {oc.as<float>(), woc.w, xc.as<float>(), 1, true});
      const auto ref_x = download<float>(*cpu, xc.p, x.size());
      const auto ref_att = download<float>(*cpu, oc.p, out_n);
      const int rows = h.nq / h.nkv * (h.imag ? 2 : 1);
      const bool fits = h.hd == 128 && rows <= 8 && s.hidden % 64 == 0 && reach <= 256;
      for (const DType resident : kMatrixDtypes) {
        const auto wog = load_as(*gpu, wo, dt, s.hidden, att_cols, resident);
        for (const bool fused : {false, true})
          for (const bool history : {false, true}) {
            Buf xg = upload(*gpu, x);
            poison(*gpu, og.p, out_n * 4);
            BatchView bv = bg.view;
            bv.history_cached = history;
            const bool can = set_cuda_decode_fused_oproj(*gpu, fused);
            const size_t before = cuda_fused_oproj_launches(*gpu);
            gpu->attention_out_proj({qg.as<float>(), q_stride, og.as<float>(), cg.view, sc.layer, bv, h.nq, h.nkv,
                                     h.hd, h.imag, scale},
                                    {og.as<float>(), wog->w, xg.as<float>(), 1, true});
            set_cuda_decode_fused_oproj(*gpu, CudaBackendOptions{}.decode_fused_oproj);
            const std::string label = fmt::format("attention_out_proj one token {} {} [{}] {}{}{}", s.name, mode, c.name,
                                                  dtype_name(resident), fused ? ", fused" : "",
                                                  history ? ", history cached" : "");
            EXPECT_EQ(cuda_fused_oproj_launches(*gpu) - before, fused && can && fits ? 1u : 0u) << label;
            // fp32 attention on the f16 cache (decode tolerance) and an fp32 product with the same 16-bit weights
            expect_match(label, download<float>(*gpu, xg.p, x.size()), ref_x, 1e-5);
            expect_match(label + ": attention output", download<float>(*gpu, og.p, out_n), ref_att, 5e-6);
          }
      }
    }
  }
#endif
}

INSTANTIATE_TEST_SUITE_P(Shapes, BackendOpsAttention,
                         ::testing::Combine(::testing::Values(0, 1, 2), ::testing::Values(0, 1, 2)),
                         [](const ::testing::TestParamInfo<std::tuple<int, int>>& i) {
                           return std::string(kShapes[std::get<0>(i.param)].name) + "_" + kModes[std::get<1>(i.param)];
                         });

}  // namespace
}  // namespace ropepp
