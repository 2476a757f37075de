// test_decoder_layers.cpp: Backend::decoder_layers (all layers of a decode step as one op) on CUDA against the
// CPU backend, which runs the per-layer op sequence (the default, as the forward pass did before the op):
// one token of one sequence, so that CUDA runs the persistent kernel (kernels/decode_layers_persistent.cu),
// over contexts from 1 to thousands of positions (one chunk per kv head, then chunks merged across blocks),
// in the three modes. Also against the same GPU's separate kernels (ROPEPP_CUDA_PERSISTENT_DECODE=0's path),
// and the profile must show the persistent kernel ran. Skips without a CUDA device; on a GPU before Hopper only
// the fallback is compared.
#include "testing_backend.h"

namespace ropepp {
namespace {
using namespace test;

struct LayersShape {
  const char* name;
  int hidden, heads, kv_heads, ffn, layers;
};
const LayersShape kLayerShapes[] = {
    {"small", 512, 4, 2, 768, 3},
    {"376M", 1024, 8, 4, 3584, 2},
    {"776M", 1536, 12, 6, 5376, 1},
};
constexpr int kHd = 128;

// Host weights of one layer (bf16 checkpoint bytes; the GPU keeps them as f16, exactly), scaled so that the
// residual stream stays O(1) through the layers.
struct HostLayer {
  std::vector<uint8_t> attn_norm, wqkv, wo, ffn_norm, w_gate_up, w_down;
};

struct LayersOn {  // one backend's weights
  std::vector<std::unique_ptr<OwnedWeight>> owned;
  std::vector<DecoderLayerWeights> layers;
};

class DecoderLayers : public BackendOps {};

TEST_F(DecoderLayers, PersistentDecodeMatchesCpu) {
#ifdef ROPEPP_HAS_CUDA
  const bool hopper = set_cuda_persistent_decode(*gpu, true);
  if (!hopper) std::printf("[ info ] this GPU/build cannot run the persistent kernel: comparing the fallback only\n");
  for (const LayersShape& s : kLayerShapes) {
    for (const char* mode : kModes) {
      const Shape sh{s.name, s.hidden, s.heads, s.kv_heads, kHd, s.ffn, 0};
      const AttnHeads h = heads_for(sh, mode);
      const int D = s.hidden, F = s.ffn, rows_qkv = (h.nq + 2 * h.nkv) * kHd, att_cols = h.nq * (h.imag ? 2 : 1) * kHd;
      std::vector<HostLayer> host(s.layers);
      auto mat = [&](int rows, int cols) {
        return weight_bytes(rand_floats(*rng, size_t(rows) * cols, -1.f / std::sqrt(float(cols)), 1.f / std::sqrt(float(cols))),
                            DType::BF16);
      };
      for (HostLayer& hl : host) {
        hl.attn_norm = weight_bytes(rand_floats(*rng, D, 0.5f, 1.5f), DType::F32);
        hl.ffn_norm = weight_bytes(rand_floats(*rng, D, 0.5f, 1.5f), DType::F32);
        hl.wqkv = mat(rows_qkv, D), hl.wo = mat(D, att_cols), hl.w_gate_up = mat(2 * F, D), hl.w_down = mat(D, F);
      }
      auto load = [&](Backend& be) {
        LayersOn on;
        auto w = [&](const std::vector<uint8_t>& b, DType dt, int rows, int cols) {
          on.owned.push_back(std::make_unique<OwnedWeight>(be, b, dt, rows, cols));
          return on.owned.back()->w;
        };
        for (const HostLayer& hl : host) {
          DecoderLayerWeights dw;
          dw.attn_norm = w(hl.attn_norm, DType::F32, 1, D), dw.wqkv = w(hl.wqkv, DType::BF16, rows_qkv, D);
          dw.wo = w(hl.wo, DType::BF16, D, att_cols), dw.ffn_norm = w(hl.ffn_norm, DType::F32, 1, D);
          dw.w_gate_up = w(hl.w_gate_up, DType::BF16, 2 * F, D), dw.w_down = w(hl.w_down, DType::BF16, D, F);
          on.layers.push_back(dw);
        }
        return on;
      };
      const LayersOn wc = load(*cpu), wg = load(*gpu);

      for (int pos : {0, 17, 300, 1500, 5000}) {
        // The history: positions 0..pos−1 of every layer (f16-exact values), on shuffled blocks of 16.
        AttnCase c{"", {{pos, 1}}};
        PagedScenario sc(h, c, *rng);
        sc.n_layers = s.layers;
        std::vector<float> cs, sn;
        rope_tables(pos, kHd, cs, sn);
        const auto x0 = rand_floats(*rng, D, -1.f, 1.f);
        // Returns x after the layers and the cache (k, v of all layers) as f32.
        auto run = [&](Backend& be, const LayersOn& w, bool profile, std::vector<float>& x_out,
                       std::vector<float>& cache_out, std::vector<OpTiming>* ops) {
          KVCacheView view = sc.view_shape(be.kv_dtype());
          const size_t count = size_t(view.n_layers) * view.layer_stride();
          Buf k = poisoned(be, count * dtype_size(view.dtype)), v = poisoned(be, count * dtype_size(view.dtype));
          view.k = k.p, view.v = v.p;
          if (pos > 0) {  // the history, layer by layer, through the backend's own kv_append
            HostBatch hist = sc.fill;
            for (auto* a : {&hist.tokens, &hist.positions, &hist.seq_of_token}) a->resize(size_t(pos));
            hist.max_pos = pos - 1;
            BatchOn fb(be, hist);
            for (int l = 0; l < s.layers; ++l) {
              const auto kh = rand_floats(*rng, size_t(pos) * h.nkv * kHd), vh = rand_floats(*rng, size_t(pos) * h.nkv * kHd);
              std::vector<float> k16(kh.size()), v16(vh.size());
              for (size_t i = 0; i < kh.size(); ++i) k16[i] = f16_to_f32(f32_to_f16(kh[i])), v16[i] = f16_to_f32(f32_to_f16(vh[i]));
              Buf kb = upload(be, k16), vb = upload(be, v16);
              be.kv_append({kb.as<float>(), vb.as<float>(), h.nkv * kHd, view, l, fb.view});
            }
          }
          BatchOn qb(be, sc.query);
          Buf x = upload(be, x0), c_t = upload(be, cs), s_t = upload(be, sn);
          Buf hbuf = poisoned(be, size_t(D) * 4), qkv = poisoned(be, size_t(rows_qkv) * 4);
          Buf att = poisoned(be, size_t(att_cols) * 4), gu = poisoned(be, size_t(2 * F) * 4), act = poisoned(be, size_t(F) * 4);
          be.set_profiling(profile);
          float* q = qkv.as<float>();
          be.decoder_layers({w.layers.data(), s.layers, x.as<float>(), hbuf.as<float>(), q, q + h.nq * kHd,
                             q + (h.nq + h.nkv) * kHd, rows_qkv, rows_qkv, att.as<float>(), gu.as<float>(),
                             gu.as<float>() + F, 2 * F, act.as<float>(), c_t.as<float>(), s_t.as<float>(), view, qb.view,
                             h.nq, h.imag, 1e-5f});
          be.synchronize();
          if (ops) *ops = be.take_profile();
          be.set_profiling(false);
          x_out = download<float>(be, x.p, size_t(D));
          cache_out.clear();
          for (const Buf* b : {&k, &v}) {
            const auto f = cache_to_f32(be, b->p, count, view.dtype);
            cache_out.insert(cache_out.end(), f.begin(), f.end());
          }
        };
        // The same random history on every backend: reseed the RNG per run.
        const uint64_t seed = rng->next();
        std::vector<float> ref_x, ref_cache, got_x, got_cache, sep_x, sep_cache;
        std::vector<OpTiming> ops;
        *rng = Rng(seed);
        run(*cpu, wc, false, ref_x, ref_cache, nullptr);
        *rng = Rng(seed);
        run(*gpu, wg, true, got_x, got_cache, &ops);
        set_cuda_persistent_decode(*gpu, false);
        *rng = Rng(seed);
        run(*gpu, wg, false, sep_x, sep_cache, nullptr);
        set_cuda_persistent_decode(*gpu, true);

        const std::string what = fmt::format("decoder_layers {} {} x{} layers, position {}", s.name, mode, s.layers, pos);
        bool persistent = false;
        for (const OpTiming& t : ops) persistent = persistent || t.op.rfind("decoder layers (persistent", 0) == 0;
        EXPECT_EQ(persistent, hopper) << what << ": the persistent kernel ran (or not) as this GPU allows";
        // fp32 math over f16 weights on both (bf16 checkpoint values are f16-exact); the GPU's K/V of the new
        // token rounded to f16 (the CPU keeps f32), which the next layers attend to: NMSE ~1e-7 after 3 layers.
        expect_match(what + ": x vs CPU", got_x, ref_x, 2e-6);
        expect_cache_match(what + ": cache vs CPU (f16 vs f32)", got_cache, ref_cache,
                           2 * size_t(pos + 1) * h.nkv * kHd * s.layers, 1e-6);
        // Against the separate kernels of the same GPU: the same roundings, other summation orders (a K/V value may
        // round to the neighbouring f16: NMSE 1.4e-9 seen on the H200).
        expect_match(what + ": x vs separate kernels", got_x, sep_x, 1e-8);
        expect_cache_match(what + ": cache vs separate kernels", got_cache, sep_cache,
                           2 * size_t(pos + 1) * h.nkv * kHd * s.layers, 1e-8);
      }
    }
  }
#endif
}

}  // namespace
}  // namespace ropepp
