// test_cpu_kernels.cpp: every CPU instruction-set path (cpu_kernels_*.cpp) against the portable scalar path,
// through the CPU backend's ops (so the threading and the GEMV / GEMM / split-attention choices are covered
// too), plus the scalar path against a float64 computation. Paths this CPU cannot run are skipped.
// Shapes include tails that are not multiples of the vector width, block sizes that are not multiples of
// 16, several sequences with scattered block tables, and a long decode that splits the keys into ranges.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "cpu_kernels.h"
#include "testing_backend.h"

namespace ropepp {
namespace {

using cpu::Isa;

using test::Rng;
using test::rand_floats;
using test::weight_bytes;

// max over rows of ‖got − ref‖ / ‖ref‖ (rows of `cols` elements); NaN anywhere → infinity
double max_row_rel_err(const std::vector<float>& got, const std::vector<float>& ref, size_t cols) {
  double worst = 0;
  for (size_t r = 0; r * cols < ref.size(); ++r) {
    double num = 0, den = 0;
    for (size_t j = r * cols; j < (r + 1) * cols; ++j) {
      if (!std::isfinite(got[j])) return INFINITY;
      const double d = double(got[j]) - ref[j];
      num += d * d;
      den += double(ref[j]) * ref[j];
    }
    worst = std::max(worst, std::sqrt(num / std::max(den, 1e-300)));
  }
  return worst;
}

std::vector<Isa> vector_isas() {
  std::vector<Isa> v;
  for (Isa isa : {Isa::Avx2, Isa::Avx512})
    if (cpu::isa_supported(isa)) v.push_back(isa);
  return v;
}

// Runs `op` on a fresh backend of the given ISA: op(backend) → output vector.
template <class F>
std::vector<float> run_on(Isa isa, int threads, F&& op) {
  auto be = make_cpu_backend_isa(threads, isa);
  return op(*be);
}

// Host-memory helpers: the CPU backend's memory is host memory.
float* put(Backend& be, const std::vector<float>& v, std::vector<void*>& owned) {
  void* p = be.alloc(v.size() * sizeof(float));
  std::memcpy(p, v.data(), v.size() * sizeof(float));
  owned.push_back(p);
  return static_cast<float*>(p);
}
float* poisoned(Backend& be, size_t n, std::vector<void*>& owned) {
  void* p = be.alloc(n * sizeof(float));
  std::memset(p, 0xFF, n * sizeof(float));
  owned.push_back(p);
  return static_cast<float*>(p);
}
struct Owned {
  Backend& be;
  std::vector<void*> p;
  explicit Owned(Backend& b) : be(b) {}
  ~Owned() {
    for (void* x : p) be.release(x);
  }
};

// ---- ISA selection -------------------------------------------------------------------------------

TEST(CpuIsa, SelectionFromEnvironment) {
  const char* old = std::getenv("ROPEPP_CPU_ISA");
  const std::string saved = old ? old : "";
  setenv("ROPEPP_CPU_ISA", "scalar", 1);
  EXPECT_EQ(cpu::select_isa(), Isa::Scalar);
  setenv("ROPEPP_CPU_ISA", "bogus", 1);
  EXPECT_THROW(cpu::select_isa(), Error);
  if (!cpu::isa_supported(Isa::Avx512)) {
    setenv("ROPEPP_CPU_ISA", "avx512", 1);
    EXPECT_THROW(cpu::select_isa(), Error);
  }
  unsetenv("ROPEPP_CPU_ISA");
  EXPECT_EQ(cpu::select_isa(), cpu::best_isa());
  if (old) setenv("ROPEPP_CPU_ISA", saved.c_str(), 1);
  std::printf("[ info ] best instruction set on this CPU: %s\n", cpu::isa_name(cpu::best_isa()));
}

// ---- matmul ----------------------------------------------------------------------------------------

struct MatmulCase {
  int n;
  int64_t rows, cols;
};

std::vector<float> do_matmul(Backend& be, const std::vector<float>& x, const std::vector<uint8_t>& w, DType dt,
                             const MatmulCase& c) {
  Owned o(be);
  float* X = put(be, x, o.p);
  float* Y = poisoned(be, size_t(c.n) * c.rows, o.p);
  Weight W = be.load_weight(w.data(), dt, c.rows, c.cols);
  be.matmul({X, W, Y, c.n});
  be.release_weight(W);
  return std::vector<float>(Y, Y + size_t(c.n) * c.rows);
}

TEST(CpuKernels, MatmulScalarMatchesFloat64) {
  Rng rng(11);
  for (const MatmulCase c : {MatmulCase{1, 37, 53}, MatmulCase{7, 45, 70}, MatmulCase{20, 33, 300}}) {
    const auto x = rand_floats(rng, size_t(c.n) * c.cols);
    const auto wf = rand_floats(rng, size_t(c.rows) * c.cols);
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      const auto wb = weight_bytes(wf, dt);
      std::vector<float> wq(wf.size());  // the weight as stored
      auto tmp = make_cpu_backend_isa(1, Isa::Scalar);
      std::vector<double> ref(size_t(c.n) * c.rows);
      for (int t = 0; t < c.n; ++t)
        for (int64_t r = 0; r < c.rows; ++r) {
          double s = 0;
          for (int64_t k = 0; k < c.cols; ++k) {
            float w;
            if (dt == DType::F32) {
              std::memcpy(&w, &wb[size_t(r * c.cols + k) * 4], 4);
            } else {
              uint16_t h;
              std::memcpy(&h, &wb[size_t(r * c.cols + k) * 2], 2);
              w = dt == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
            }
            s += double(x[size_t(t) * c.cols + k]) * w;
          }
          ref[size_t(t) * c.rows + r] = s;
        }
      const auto got = run_on(Isa::Scalar, 2, [&](Backend& be) { return do_matmul(be, x, wb, dt, c); });
      const std::vector<float> reff(ref.begin(), ref.end());
      EXPECT_LE(max_row_rel_err(got, reff, size_t(c.rows)), 2e-6) << c.n << "x" << c.rows << "x" << c.cols << " "
                                                                  << dtype_name(dt);
    }
  }
}

TEST(CpuKernels, MatmulEveryPathMatchesScalar) {
  const auto isas = vector_isas();
  if (isas.empty()) GTEST_SKIP() << "no vector instruction set on this CPU";
  Rng rng(12);
  // n ≤ 4: GEMV; larger: packed GEMM (tails in every direction: rows, columns, tokens)
  const MatmulCase cases[] = {{1, 37, 53},    {1, 512, 1024}, {2, 64, 100},  {3, 33, 17},  {4, 96, 128},
                              {5, 33, 17},    {6, 32, 16},    {13, 100, 300}, {64, 96, 64}, {130, 70, 1030},
                              {512, 64, 257}, {12, 1, 5},     {25, 31, 15}};
  for (const MatmulCase& c : cases)
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      const auto x = rand_floats(rng, size_t(c.n) * c.cols);
      const auto wb = weight_bytes(rand_floats(rng, size_t(c.rows) * c.cols), dt);
      const auto ref = run_on(Isa::Scalar, 1, [&](Backend& be) { return do_matmul(be, x, wb, dt, c); });
      for (Isa isa : isas)
        for (int threads : {1, 2, 3}) {
          const auto got = run_on(isa, threads, [&](Backend& be) { return do_matmul(be, x, wb, dt, c); });
          EXPECT_LE(max_row_rel_err(got, ref, size_t(c.rows)), 2e-6)
              << cpu::isa_name(isa) << " threads " << threads << " " << c.n << "x" << c.rows << "x" << c.cols << " "
              << dtype_name(dt);
        }
    }
}

// MatmulParams::accumulate (out += x·Wᵀ, the residual add fused into the projection): GEMV and GEMM paths,
// every ISA including scalar, against out0 + the plain scalar product.
TEST(CpuKernels, MatmulAccumulateAddsToOut) {
  Rng rng(13);
  std::vector<Isa> isas = vector_isas();
  isas.insert(isas.begin(), Isa::Scalar);
  const MatmulCase cases[] = {{1, 37, 53}, {3, 200, 700}, {4, 96, 128}, {13, 100, 1030}, {40, 70, 300}};
  for (const MatmulCase& c : cases)
    for (DType dt : {DType::F32, DType::BF16}) {
      const auto x = rand_floats(rng, size_t(c.n) * c.cols);
      const auto wb = weight_bytes(rand_floats(rng, size_t(c.rows) * c.cols), dt);
      const auto out0 = rand_floats(rng, size_t(c.n) * c.rows, -4.f, 4.f);
      auto ref = run_on(Isa::Scalar, 1, [&](Backend& be) { return do_matmul(be, x, wb, dt, c); });
      for (size_t i = 0; i < ref.size(); ++i) ref[i] += out0[i];
      for (Isa isa : isas)
        for (int threads : {1, 2}) {
          const auto got = run_on(isa, threads, [&](Backend& be) {
            Owned o(be);
            float* X = put(be, x, o.p);
            float* Y = put(be, out0, o.p);
            Weight W = be.load_weight(wb.data(), dt, c.rows, c.cols);
            MatmulParams mp{X, W, Y, c.n};
            mp.accumulate = true;
            be.matmul(mp);
            be.release_weight(W);
            return std::vector<float>(Y, Y + size_t(c.n) * c.rows);
          });
          EXPECT_LE(max_row_rel_err(got, ref, size_t(c.rows)), 2e-6)
              << cpu::isa_name(isa) << " threads " << threads << " " << c.n << "x" << c.rows << "x" << c.cols << " "
              << dtype_name(dt);
        }
    }
}

// ---- attention over a paged cache ------------------------------------------------------------------

struct AttnCase {
  const char* name;
  int n_q, n_kv, hd;
  bool imag;
  int block_size;
  std::vector<int> seq_len;     // keys in the cache per sequence after this batch
  std::vector<int> new_tokens;  // tokens of each sequence in this batch (the last ones)
};

std::vector<float> do_attention(Backend& be, const AttnCase& c, uint64_t seed) {
  Rng rng(seed);
  const int n_seqs = int(c.seq_len.size());
  int max_blocks = 0, total_blocks = 0;
  for (int L : c.seq_len) {
    max_blocks = std::max(max_blocks, (L + c.block_size - 1) / c.block_size);
    total_blocks += (L + c.block_size - 1) / c.block_size;
  }
  // scattered block tables: a random permutation of the pool
  std::vector<int32_t> perm(size_t(total_blocks) + 3);
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = int32_t(i);
  for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[size_t(rng.below(int(i)))]);
  std::vector<int32_t> table(size_t(n_seqs) * max_blocks, -1);
  size_t next = 0;
  for (int s = 0; s < n_seqs; ++s)
    for (int b = 0; b < (c.seq_len[size_t(s)] + c.block_size - 1) / c.block_size; ++b)
      table[size_t(s) * max_blocks + b] = perm[next++];
  const int n_blocks = int(perm.size());
  KVCacheView kv;
  kv.n_layers = 2;
  kv.n_blocks = n_blocks;
  kv.n_kv_heads = c.n_kv;
  kv.block_size = c.block_size;
  kv.head_dim = c.hd;
  const size_t cache_floats = size_t(kv.n_layers) * kv.layer_stride();
  Owned o(be);
  kv.k = put(be, rand_floats(rng, cache_floats, -2.f, 2.f), o.p);
  kv.v = put(be, rand_floats(rng, cache_floats), o.p);
  std::vector<int32_t> positions, seq_of;
  for (int s = 0; s < n_seqs; ++s)
    for (int i = 0; i < c.new_tokens[size_t(s)]; ++i) {
      positions.push_back(c.seq_len[size_t(s)] - c.new_tokens[size_t(s)] + i);
      seq_of.push_back(s);
    }
  const int n = int(positions.size());
  const int parts = c.imag ? 2 : 1;
  BatchView bv;
  bv.n_tokens = n;
  bv.n_seqs = n_seqs;
  bv.max_blocks_per_seq = max_blocks;
  bv.positions = positions.data();
  bv.seq_of_token = seq_of.data();
  bv.block_table = table.data();
  for (int p : positions) bv.max_pos = std::max(bv.max_pos, p);
  AttentionParams ap;
  const int q_stride = c.n_q * c.hd + 8;  // padded rows
  ap.q = put(be, rand_floats(rng, size_t(n) * q_stride, -2.f, 2.f), o.p);
  ap.q_row_stride = q_stride;
  const size_t out_n = size_t(n) * c.n_q * parts * c.hd;
  ap.out = poisoned(be, out_n, o.p);
  ap.cache = kv;
  ap.layer = 1;
  ap.batch = bv;
  ap.n_q_heads = c.n_q;
  ap.n_kv_heads = c.n_kv;
  ap.head_dim = c.hd;
  ap.imag = c.imag;
  ap.scale = float(1.0 / std::sqrt(double(c.hd)));
  be.attention(ap);
  return std::vector<float>(ap.out, ap.out + out_n);
}

const std::vector<AttnCase>& attn_cases() {
  static const std::vector<AttnCase> cases = {
      {"EC 376M-like prefill", 8, 4, 128, true, 16, {77}, {77}},
      {"EH prefill two seqs", 4, 2, 128, true, 16, {40, 23}, {40, 23}},
      {"rope gqa4 hd16", 8, 2, 16, false, 16, {50}, {50}},
      {"EC hd8 block5", 4, 2, 8, true, 5, {33, 9}, {33, 9}},
      {"EH hd24 block7 chunked prefill", 2, 1, 24, true, 7, {61}, {20}},
      {"EC decode short", 8, 4, 128, true, 16, {300}, {1}},
      {"EC decode long (key ranges merged)", 8, 4, 128, true, 16, {3000}, {1}},
      {"EH decode long, 3 seqs", 4, 2, 128, true, 16, {2100, 700, 1500}, {1, 1, 1}},
      {"rope decode long hd40 block6", 4, 4, 40, false, 6, {1800}, {2}},
      {"EC hd200 (head_dim > 128)", 2, 1, 200, true, 16, {70}, {3}},
  };
  return cases;
}

TEST(CpuKernels, AttentionScalarMatchesFloat64) {
  // The scalar path against a direct float64 evaluation of the definition in backend.h.
  for (const AttnCase& c : {attn_cases()[3], attn_cases()[4], attn_cases()[6]}) {
    auto be = make_cpu_backend_isa(2, Isa::Scalar);
    const auto got = do_attention(*be, c, 5);
    // rebuild the same inputs (same seed) and compute in double
    Rng rng(5);
    const int n_seqs = int(c.seq_len.size());
    int max_blocks = 0, total_blocks = 0;
    for (int L : c.seq_len) {
      max_blocks = std::max(max_blocks, (L + c.block_size - 1) / c.block_size);
      total_blocks += (L + c.block_size - 1) / c.block_size;
    }
    std::vector<int32_t> perm(size_t(total_blocks) + 3);
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = int32_t(i);
    for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[size_t(rng.below(int(i)))]);
    std::vector<int32_t> table(size_t(n_seqs) * max_blocks, -1);
    size_t next = 0;
    for (int s = 0; s < n_seqs; ++s)
      for (int b = 0; b < (c.seq_len[size_t(s)] + c.block_size - 1) / c.block_size; ++b)
        table[size_t(s) * max_blocks + b] = perm[next++];
    const size_t layer_stride = perm.size() * size_t(c.n_kv) * c.block_size * c.hd;
    const auto K = rand_floats(rng, 2 * layer_stride, -2.f, 2.f);
    const auto V = rand_floats(rng, 2 * layer_stride);
    std::vector<int> positions, seq_of;
    for (int s = 0; s < n_seqs; ++s)
      for (int i = 0; i < c.new_tokens[size_t(s)]; ++i) {
        positions.push_back(c.seq_len[size_t(s)] - c.new_tokens[size_t(s)] + i);
        seq_of.push_back(s);
      }
    const int n = int(positions.size()), q_stride = c.n_q * c.hd + 8, parts = c.imag ? 2 : 1, half = c.hd / 2;
    const auto Q = rand_floats(rng, size_t(n) * q_stride, -2.f, 2.f);
    std::vector<float> ref(got.size());
    const double scale = 1.0 / std::sqrt(double(c.hd));
    for (int i = 0; i < n; ++i)
      for (int h = 0; h < c.n_q; ++h)
        for (int part = 0; part < parts; ++part) {
          const int g = h / (c.n_q / c.n_kv);
          std::vector<double> q(size_t(c.hd)), s(size_t(positions[size_t(i)]) + 1);
          for (int j = 0; j < c.hd; ++j) q[size_t(j)] = Q[size_t(i) * q_stride + size_t(h) * c.hd + j];
          if (part == 1)  // −rot(q) = cat(q[half:], −q[:half])
            for (int j = 0; j < half; ++j) std::swap(q[size_t(j)], q[size_t(j + half)]), q[size_t(j + half)] *= -1;
          auto off = [&](int t) {
            return layer_stride + size_t(table[size_t(seq_of[size_t(i)]) * max_blocks + t / c.block_size]) * c.n_kv *
                                      c.block_size * c.hd +
                   (size_t(g) * c.block_size + size_t(t % c.block_size)) * c.hd;
          };
          double m = -INFINITY, sum = 0;
          for (size_t t = 0; t < s.size(); ++t) {
            double d = 0;
            for (int j = 0; j < c.hd; ++j) d += q[size_t(j)] * K[off(int(t)) + size_t(j)];
            s[t] = d * scale;
            m = std::max(m, s[t]);
          }
          for (double& x : s) sum += (x = std::exp(x - m));
          for (int j = 0; j < c.hd; ++j) {
            double acc = 0;
            for (size_t t = 0; t < s.size(); ++t) acc += s[t] * V[off(int(t)) + size_t(j)];
            ref[(size_t(i) * c.n_q * parts + size_t(h) * parts + part) * c.hd + j] = float(acc / sum);
          }
        }
    EXPECT_LE(max_row_rel_err(got, ref, size_t(c.hd)), 1e-5) << c.name;
  }
}

TEST(CpuKernels, AttentionEveryPathMatchesScalar) {
  const auto isas = vector_isas();
  if (isas.empty()) GTEST_SKIP() << "no vector instruction set on this CPU";
  for (const AttnCase& c : attn_cases()) {
    const auto ref = run_on(Isa::Scalar, 1, [&](Backend& be) { return do_attention(be, c, 7); });
    for (Isa isa : isas)
      for (int threads : {1, 2, 3}) {
        const auto got = run_on(isa, threads, [&](Backend& be) { return do_attention(be, c, 7); });
        EXPECT_LE(max_row_rel_err(got, ref, size_t(c.hd)), 1e-5) << cpu::isa_name(isa) << " threads " << threads
                                                                 << ": " << c.name;
      }
  }
}

// ---- elementwise ops -------------------------------------------------------------------------------

TEST(CpuKernels, ElementwiseEveryPathMatchesScalar) {
  const auto isas = vector_isas();
  if (isas.empty()) GTEST_SKIP() << "no vector instruction set on this CPU";
  for (int dim : {1, 7, 16, 37, 64, 1024, 1030}) {
    Rng rng(uint64_t(100 + dim));
    const int n = 9;
    const auto x = rand_floats(rng, size_t(n) * dim, -3.f, 3.f);
    const auto y = rand_floats(rng, size_t(n) * dim, -30.f, 30.f);  // wide: exp over/underflow in silu
    const auto wf = rand_floats(rng, size_t(dim));
    std::vector<int32_t> tokens = {3, 0, 8, 8, 1, 5, 2, 7, 4};
    std::vector<int32_t> positions = {0, 5, 17, 3, 9, 1, 12, 40, 2};
    const int half = (dim % 2 == 0) ? dim / 2 : 0;
    const auto cosv = rand_floats(rng, size_t(41) * std::max(half, 1));
    const auto sinv = rand_floats(rng, size_t(41) * std::max(half, 1));
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      const auto wb = weight_bytes(wf, dt);
      const auto table = weight_bytes(rand_floats(rng, size_t(10) * dim), dt);
      auto run = [&](Backend& be) {
        Owned o(be);
        std::vector<float> out;
        float* X = put(be, x, o.p);
        float* Y = put(be, y, o.p);
        float* Z = poisoned(be, size_t(n) * dim, o.p);
        Weight w = be.load_weight(wb.data(), dt, 1, dim);
        be.rms_norm({X, w, Z, n, dim, 1e-5f});
        out.insert(out.end(), Z, Z + size_t(n) * dim);
        be.swiglu({Y, X, dim, Z, n, dim});
        out.insert(out.end(), Z, Z + size_t(n) * dim);
        Weight tw = be.load_weight(table.data(), dt, 10, dim);
        be.embed({tw, tokens.data(), Z, n});
        out.insert(out.end(), Z, Z + size_t(n) * dim);
        be.add({X, Y, size_t(n) * dim});
        out.insert(out.end(), X, X + size_t(n) * dim);
        if (half > 0) {
          be.rope({Y, positions.data(), cosv.data(), sinv.data(), n, 1, dim, dim});
          out.insert(out.end(), Y, Y + size_t(n) * dim);
        }
        return out;
      };
      const auto ref = run_on(Isa::Scalar, 1, run);
      for (Isa isa : isas) {
        const auto got = run_on(isa, 2, run);
        EXPECT_LE(max_row_rel_err(got, ref, size_t(dim)), 1e-6) << cpu::isa_name(isa) << " dim " << dim << " "
                                                               << dtype_name(dt);
      }
    }
  }
}

// The CPU backend owns a concatenated weight (it has no mapping to point into) until release_weight.
TEST(CpuKernels, LoadWeightConcatOwnsTheConcatenation) {
  auto be = make_cpu_backend();
  std::vector<uint8_t> a(3 * 4 * 2), b(2 * 4 * 2);
  for (size_t i = 0; i < a.size(); ++i) a[i] = uint8_t(i);
  for (size_t i = 0; i < b.size(); ++i) b[i] = uint8_t(200 + i);
  const HostSpan parts[] = {{a.data(), a.size()}, {b.data(), b.size()}};
  const Weight w = be->load_weight_concat(parts, DType::BF16, 5, 4);
  ASSERT_EQ(w.rows, 5);
  const auto* d = static_cast<const uint8_t*>(w.data);
  EXPECT_NE(w.data, a.data());
  EXPECT_EQ(std::memcmp(d, a.data(), a.size()), 0);
  EXPECT_EQ(std::memcmp(d + a.size(), b.data(), b.size()), 0);
  be->release_weight(w);
  try {
    be->load_weight_concat(parts, DType::BF16, 6, 4);
    ADD_FAILURE() << "6 rows accepted from 5 rows of parts";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[6, 4]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ropepp
