// testing_backend.h: what the backend tests share (test_backend_ops.cpp, test_decoder_layers.cpp): the
// published shapes, a seeded RNG (ROPEPP_TEST_SEED), backend buffers, NaN poisoning, NMSE comparison against
// the CPU oracle, the CUDA-vs-CPU fixture, and paged-KV-cache scenarios.
#pragma once

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

#include "backend.h"
#include "common.h"
#ifdef ROPEPP_HAS_CUDA
#include "cuda/backend_cuda.h"
#endif

namespace ropepp::test {

// ---- shapes ----------------------------------------------------------------------------------------
struct Shape {
  const char* name;
  int hidden, heads, kv_heads, head_dim, ffn, vocab;
};
const Shape kShapes[] = {
    {"tiny", 64, 4, 2, 16, 96, 300},
    {"376M", 1024, 8, 4, 128, 3584, 128256},
    {"776M", 1536, 12, 6, 128, 5376, 128256},
};
const char* const kModes[] = {"rope", "EH", "EC"};

struct AttnHeads {
  int nq, nkv, hd;
  bool imag;
};
inline AttnHeads heads_for(const Shape& s, const std::string& mode) {
  if (mode == "EH") return {s.heads / 2, s.kv_heads / 2, s.head_dim, true};
  return {s.heads, s.kv_heads, s.head_dim, mode == "EC"};
}

// ---- random data (splitmix64: fast enough for 200M-element tables) ------------------------------------
inline uint32_t test_seed() {
  static const uint32_t seed = [] {
    const char* e = std::getenv("ROPEPP_TEST_SEED");
    const uint32_t s = e ? uint32_t(std::strtoul(e, nullptr, 10))
                         : uint32_t(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("[ seed ] ROPEPP_TEST_SEED=%u\n", s);
    return s;
  }();
  return seed;
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * float(next() >> 40) * (1.0f / 16777216.0f); }
  int below(int n) { return int(next() % uint64_t(n)); }
};

inline std::vector<float> rand_floats(Rng& r, size_t n, float lo = -1.f, float hi = 1.f) {
  std::vector<float> v(n);
  for (auto& x : v) x = r.uniform(lo, hi);
  return v;
}

template <class T>
inline void shuffle(std::vector<T>& v, Rng& r) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[size_t(r.below(int(i)))]);
}

// Host bytes of a weight in the given checkpoint dtype.
inline std::vector<uint8_t> weight_bytes(const std::vector<float>& f, DType dt) {
  std::vector<uint8_t> b(f.size() * dtype_size(dt));
  for (size_t i = 0; i < f.size(); ++i) {
    if (dt == DType::F32) {
      std::memcpy(&b[i * 4], &f[i], 4);
    } else {
      const uint16_t h = dt == DType::BF16 ? f32_to_bf16(f[i]) : f32_to_f16(f[i]);
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  return b;
}

// ---- backend memory ---------------------------------------------------------------------------------
struct Buf {
  Backend* be = nullptr;
  void* p = nullptr;
  Buf() = default;
  Buf(Backend& b, size_t bytes) : be(&b), p(b.alloc(bytes)) {}
  Buf(Buf&& o) noexcept : be(o.be), p(o.p) { o.p = nullptr; }
  Buf& operator=(Buf&& o) noexcept {
    std::swap(be, o.be);
    std::swap(p, o.p);
    return *this;
  }
  ~Buf() {
    if (p) be->release(p);
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <class T>
inline Buf upload(Backend& b, const std::vector<T>& v) {
  Buf buf(b, v.size() * sizeof(T));
  b.upload(buf.p, v.data(), v.size() * sizeof(T));
  return buf;
}

inline Buf poisoned(Backend& b, size_t bytes) {  // 0xFF bytes: NaN as f32, bf16 and f16
  Buf buf(b, bytes);
  std::vector<uint8_t> nan(bytes, 0xFF);
  b.upload(buf.p, nan.data(), bytes);
  return buf;
}

inline void poison(Backend& b, void* p, size_t bytes) {
  std::vector<uint8_t> nan(bytes, 0xFF);
  b.upload(p, nan.data(), bytes);
}

template <class T>
inline std::vector<T> download(Backend& b, const void* p, size_t count) {
  std::vector<T> v(count);
  b.download(v.data(), p, count * sizeof(T));
  return v;
}

struct OwnedWeight {
  Backend* be;
  Weight w;
  OwnedWeight(Backend& b, const std::vector<uint8_t>& host, DType dt, int64_t rows, int64_t cols)
      : be(&b), w(b.load_weight(host.data(), dt, rows, cols)) {}
  ~OwnedWeight() { be->release_weight(w); }
  OwnedWeight(const OwnedWeight&) = delete;
  OwnedWeight& operator=(const OwnedWeight&) = delete;
};

// The dtypes a CUDA matrix (rows > 1) can be resident in: F16 (the default) and BF16 (matrix dtype BF16, or a
// matrix with a value outside the f16 range). The matmul tests load each matrix both ways; a cuBLAS GEMM
// rounds x to the matrix's dtype.
constexpr DType kMatrixDtypes[] = {DType::F16, DType::BF16};

// A GPU weight loaded with the backend's matrix dtype set to `resident` (then back to the default, F16).
inline std::unique_ptr<OwnedWeight> load_as(Backend& gpu, const std::vector<uint8_t>& host, DType dt, int64_t rows,
                                     int64_t cols, DType resident) {
#ifdef ROPEPP_HAS_CUDA
  set_cuda_matrix_dtype(gpu, resident);
  auto w = std::make_unique<OwnedWeight>(gpu, host, dt, rows, cols);
  set_cuda_matrix_dtype(gpu, DType::F16);
  return w;
#else
  (void)resident;
  return std::make_unique<OwnedWeight>(gpu, host, dt, rows, cols);
#endif
}

// ---- comparison -------------------------------------------------------------------------------------
inline double g_worst_ratio = 0;  // worst NMSE / tolerance of this process, printed at the end of each test

inline void expect_match(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref,
                  double tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  size_t unwritten = 0, ref_bad = 0, first = 0;
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(ref[i])) {
      ++ref_bad;
      continue;
    }
    if (!std::isfinite(got[i])) {
      if (unwritten++ == 0) first = i;
      continue;
    }
    const double d = double(got[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  const double nmse = den > 0 ? num / den : num;
  g_worst_ratio = std::max(g_worst_ratio, nmse / tol);
  EXPECT_EQ(ref_bad, 0u) << what << ": the CPU oracle left " << ref_bad << " elements unwritten/non-finite";
  EXPECT_EQ(unwritten, 0u) << what << ": " << unwritten << " of " << got.size()
                           << " CUDA elements unwritten or non-finite (first at " << first << ")";
  EXPECT_LE(nmse, tol) << what << ": NMSE " << nmse << " above tolerance " << tol;
  if (std::getenv("ROPEPP_OPS_VERBOSE")) std::printf("  %-70s nmse %.2e (tol %.0e)\n", what.c_str(), nmse, tol);
}

// ---- fixture ----------------------------------------------------------------------------------------
class BackendOps : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef ROPEPP_HAS_CUDA
    GTEST_SKIP() << "built without CUDA (configure with -DROPEPP_CUDA=ON): nothing to compare";
#else
    try {
      CudaBackendOptions o;
      o.sync_after_each_op = true;  // a fault names the op that caused it
      gpu = make_cuda_backend(o);
    } catch (const Error& e) {
      GTEST_SKIP() << "no CUDA device: " << e.what();
    }
    cpu = make_cpu_backend();
    rng = std::make_unique<Rng>(test_seed() ^ std::hash<std::string>{}(
                                                  ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    g_worst_ratio = 0;
#endif
  }
  void TearDown() override {
    if (gpu) std::printf("[ nmse ] worst NMSE / tolerance in this test: %.3g\n", g_worst_ratio);
  }
  std::unique_ptr<Backend> cpu, gpu;
  std::unique_ptr<Rng> rng;
};

// ---- paged KV cache: kv_append and attention -------------------------------------------------------
struct SeqSpec {
  int cached;  // positions already in the cache before this batch
  int chunk;   // query tokens of this batch (positions cached .. cached + chunk − 1)
};
struct AttnCase {
  std::string name;
  std::vector<SeqSpec> seqs;
  bool shuffle_tokens = false;  // interleave the sequences' tokens in the batch
  int block_size = 16;
  bool all_shapes = false;  // with block_size != 16: run for the 376M/776M shapes too (head_dim 128), not only tiny
};

inline std::vector<AttnCase> attention_cases() {
  return {
      {"decode lengths 1,15,16,17,1000,4097", {{0, 1}, {14, 1}, {15, 1}, {16, 1}, {999, 1}, {4096, 1}}},
      {"decode lengths 65536,17", {{65535, 1}, {16, 1}}},
      {"decode length 65536 alone (the most context splits)", {{65535, 1}}},
      {"prefill 1 after 37", {{37, 1}}},
      // one decode token of one sequence: the fused attention + o_proj kernel's range (contexts ≤ 256)
      {"decode one sequence of 1", {{0, 1}}},
      {"decode one sequence of 77", {{76, 1}}},
      {"decode one sequence of 256", {{255, 1}}},
      {"decode one sequence of 200, block_size 24", {{199, 1}}, false, 24, true},
      {"prompt of 300 (paired token tiles)", {{0, 300}}},
      {"prefill 7 after 100", {{100, 7}}},
      {"prefill 512 after 1000", {{1000, 512}}},
      {"prefill 4096 after 300", {{300, 4096}}},
      {"prefill 100 up to 65536", {{65536 - 100, 100}}},
      {"mixed batch, shuffled tokens", {{20, 7}, {0, 33}, {3, 1}, {500, 64}, {15, 2}}, true},
      {"decode block_size 32", {{0, 1}, {31, 1}, {32, 1}, {33, 1}, {1000, 1}}, false, 32},
      {"decode block_size 24 (chunks across cache blocks)", {{0, 1}, {23, 1}, {24, 1}, {47, 1}, {1000, 1}}, false, 24},
      // the wgmma prefill's copy-engine path: 16-key pieces inside 64- and 48-position blocks, partial last tiles
      {"prefill 200 after 70, block_size 64", {{70, 200}, {0, 45}}, false, 64, true},
      {"prompt of 300, block_size 48", {{0, 300}}, false, 48, true},
  };
}

struct HostBatch {
  std::vector<int32_t> tokens, positions, seq_of_token, block_table;
  int n_seqs = 0, max_blocks = 0, max_pos = 0;
};

struct BatchOn {
  Buf tokens, positions, seq_of_token, block_table;
  BatchView view;
  BatchOn(Backend& b, const HostBatch& h)
      : tokens(upload(b, h.tokens)),
        positions(upload(b, h.positions)),
        seq_of_token(upload(b, h.seq_of_token)),
        block_table(upload(b, h.block_table)) {
    view.n_tokens = int(h.tokens.size());
    view.n_seqs = h.n_seqs;
    view.max_blocks_per_seq = h.max_blocks;
    view.max_pos = h.max_pos;
    view.tokens = tokens.as<int32_t>();
    view.positions = positions.as<int32_t>();
    view.seq_of_token = seq_of_token.as<int32_t>();
    view.block_table = block_table.as<int32_t>();
  }
};

// A pool with the sequences' blocks scattered at random; the cache poisoned, then filled with every
// position of every sequence (f16-exact values, so both backends hold the same numbers: the CUDA cache is f16).
struct PagedScenario {
  AttnHeads h;
  int block_size, n_layers, layer, n_blocks;
  HostBatch fill, query;
  std::vector<float> k, v;  // [fill tokens, nkv * hd]

  PagedScenario(const AttnHeads& heads, const AttnCase& c, Rng& rng) : h(heads), block_size(c.block_size) {
    const int n_seqs = int(c.seqs.size());
    std::vector<int> len(n_seqs);
    int total_blocks = 0, max_needed = 0;
    for (int s = 0; s < n_seqs; ++s) {
      len[s] = c.seqs[s].cached + c.seqs[s].chunk;
      const int need = (len[s] + block_size - 1) / block_size;
      total_blocks += need;
      max_needed = std::max(max_needed, need);
    }
    n_blocks = total_blocks + 3;
    std::vector<int32_t> perm(n_blocks);
    for (int i = 0; i < n_blocks; ++i) perm[i] = i;
    shuffle(perm, rng);
    std::vector<int32_t> table(size_t(n_seqs) * (max_needed + 1), -1);
    for (int s = 0, next = 0; s < n_seqs; ++s)
      for (int b = 0; b < (len[s] + block_size - 1) / block_size; ++b) table[size_t(s) * (max_needed + 1) + b] = perm[next++];
    for (HostBatch* hb : {&fill, &query}) hb->n_seqs = n_seqs, hb->max_blocks = max_needed + 1, hb->block_table = table;
    for (int s = 0; s < n_seqs; ++s)
      for (int p = 0; p < len[s]; ++p) {
        fill.tokens.push_back(0), fill.positions.push_back(p), fill.seq_of_token.push_back(s);
        fill.max_pos = std::max(fill.max_pos, p);
        if (p >= c.seqs[s].cached) {
          query.tokens.push_back(0), query.positions.push_back(p), query.seq_of_token.push_back(s);
          query.max_pos = std::max(query.max_pos, p);
        }
      }
    if (c.shuffle_tokens) {
      std::vector<int> order(query.tokens.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = int(i);
      shuffle(order, rng);
      HostBatch q = query;
      for (size_t i = 0; i < order.size(); ++i)
        q.positions[i] = query.positions[order[i]], q.seq_of_token[i] = query.seq_of_token[order[i]];
      query = q;
    }
    n_layers = fill.tokens.size() > 20000 ? 1 : 2;
    layer = n_layers - 1;
    k = rand_floats(rng, fill.tokens.size() * h.nkv * h.hd, -1.f, 1.f);
    v = rand_floats(rng, fill.tokens.size() * h.nkv * h.hd, -1.f, 1.f);
    for (auto* kv : {&k, &v})
      for (float& x : *kv) x = f16_to_f32(f32_to_f16(x));
  }

  KVCacheView view_shape(DType dt) const {
    KVCacheView c;
    c.dtype = dt;
    c.n_layers = n_layers, c.n_blocks = n_blocks, c.n_kv_heads = h.nkv, c.block_size = block_size, c.head_dim = h.hd;
    return c;
  }
};

// A downloaded cache (the layout of KVCacheView) as f32: F32, or the 16-bit F16 / BF16 widened exactly.
inline std::vector<float> cache_to_f32(Backend& b, const void* p, size_t count, DType dt) {
  if (dt == DType::F32) return download<float>(b, p, count);
  std::vector<float> out;
  out.reserve(count);
  for (uint16_t x : download<uint16_t>(b, p, count)) out.push_back(dt == DType::F16 ? f16_to_f32(x) : bf16_to_f32(x));
  return out;
}

// A decode batch of n tokens on a pool of shuffled blocks (plus spare ones nothing points to): n sequences
// of one token each at spread positions (block starts, ends and middles), or one sequence holding n
// consecutive tokens from position 29 (across the block boundary at 32).
struct DecodeBatch {
  HostBatch batch;
  int n_blocks = 0;
};
inline DecodeBatch decode_batch(int n, bool one_seq, int block_size, Rng& rng) {
  static const int kPositions[] = {0, 17, 63, 64, 200, 15, 1000, 31, 129, 16, 47, 500};
  std::vector<std::vector<int>> seq_pos;  // the positions of each sequence's tokens in this batch
  if (one_seq) {
    seq_pos.emplace_back();
    for (int i = 0; i < n; ++i) seq_pos[0].push_back(29 + i);
  } else {
    if (n > int(std::size(kPositions))) fail("decode_batch: at most {} sequences", std::size(kPositions));
    for (int i = 0; i < n; ++i) seq_pos.push_back({kPositions[i]});
  }
  DecodeBatch d;
  HostBatch& hb = d.batch;
  hb.n_seqs = int(seq_pos.size());
  int total = 0, max_needed = 0;
  for (const auto& ps : seq_pos) {
    const int need = ps.back() / block_size + 1;
    total += need, max_needed = std::max(max_needed, need);
  }
  d.n_blocks = total + 3;
  std::vector<int32_t> perm(d.n_blocks);
  for (int i = 0; i < d.n_blocks; ++i) perm[i] = i;
  shuffle(perm, rng);
  hb.max_blocks = max_needed + 1;
  hb.block_table.assign(size_t(hb.n_seqs) * hb.max_blocks, -1);
  for (int s = 0, next = 0; s < hb.n_seqs; ++s) {
    for (int b = 0; b <= seq_pos[s].back() / block_size; ++b)
      hb.block_table[size_t(s) * hb.max_blocks + b] = perm[next++];
    for (int p : seq_pos[s]) {
      hb.tokens.push_back(0), hb.positions.push_back(p), hb.seq_of_token.push_back(s);
      hb.max_pos = std::max(hb.max_pos, p);
    }
  }
  return d;
}

// RoPE tables [max_pos + 1, hd / 2] (theta 500000).
inline void rope_tables(int max_pos, int hd, std::vector<float>& cs, std::vector<float>& sn) {
  const int half = hd / 2;
  cs.assign(size_t(max_pos + 1) * half, 0.f), sn.assign(cs.size(), 0.f);
  for (int p = 0; p <= max_pos; ++p)
    for (int j = 0; j < half; ++j) {
      const double a = p * std::pow(500000.0, -2.0 * j / hd);
      cs[size_t(p) * half + j] = float(std::cos(a)), sn[size_t(p) * half + j] = float(std::sin(a));
    }
}

// Two caches as f32 (the CPU's: ref, the GPU's: got): slots the CPU left poisoned must be poisoned on the GPU
// too (no stray writes), the others written (`expected_written` of them) and within `tol` (NMSE).
inline void expect_cache_match(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref,
                        size_t expected_written, double tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  std::vector<float> g, r;
  size_t stray = 0, unwritten = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const bool ref_nan = std::isnan(ref[i]), got_nan = std::isnan(got[i]);
    if (ref_nan) {
      stray += !got_nan;
    } else if (got_nan) {
      ++unwritten;
    } else {
      g.push_back(got[i]), r.push_back(ref[i]);
    }
  }
  EXPECT_EQ(stray, 0u) << what << ": slots written that should be untouched";
  EXPECT_EQ(unwritten, 0u) << what << ": slots the GPU did not write";
  EXPECT_EQ(r.size() + unwritten, expected_written) << what << ": slots the CPU wrote";
  expect_match(what, g, r, tol);
}

// The cache of one backend, filled through its own kv_append.
struct CacheOn {
  Buf k, v;
  KVCacheView view;
  CacheOn(Backend& b, const PagedScenario& sc) : view(sc.view_shape(b.kv_dtype())) {
    const size_t bytes = size_t(view.n_layers) * view.layer_stride() * dtype_size(view.dtype);
    k = poisoned(b, bytes), v = poisoned(b, bytes);
    view.k = k.p, view.v = v.p;
    BatchOn fb(b, sc.fill);
    Buf kb = upload(b, sc.k), vb = upload(b, sc.v);
    b.kv_append({kb.as<float>(), vb.as<float>(), sc.h.nkv * sc.h.hd, view, sc.layer, fb.view});
  }
  std::vector<float> contents(Backend& b) const {  // as f32, both layers
    const size_t n = size_t(view.n_layers) * view.layer_stride() * 2;
    std::vector<float> out;
    for (const Buf* buf : {&k, &v}) {
      const auto f = cache_to_f32(b, buf->p, n / 2, view.dtype);
      out.insert(out.end(), f.begin(), f.end());
    }
    return out;
  }
};

// ---- the decode GEMV's launch shapes (test_backend_ops.cpp, backend_ops_logits.cpp) ------------------
// The GEMV's grid cap (MatvecLaunch::max_blocks) for the CUDA runs: 0 = none; 2 makes each block loop over
// many row groups. GEMV sizes (n ≤ 8) run with both.
// kSmemPrefetch (one row of x): the weights copied into shared memory first (matvec_smem_prefetch.cuh) with an
// H100's budget (116 KB per block, 132 blocks a wave): one to four groups of units per block, grids of one and
// two waves; the 776M's gate|up (over two waves) still streams.
constexpr int kSmemPrefetch = -1;
inline std::vector<int> matvec_caps(int n) {
  if (n == 1) return {0, 2, kSmemPrefetch};
  return n <= 8 ? std::vector<int>{0, 2} : std::vector<int>{0};
}
// A grid cap (blocks > 0) also turns on the paired one-row kernels' two pairs per warp (MatvecLaunch::wide_pairs),
// a K split cap of 256 warps (MatvecLaunch::max_warps: narrower splits for the larger matrices, so that the one-row
// Store kernels' 8 chunks per lane, MatvecLaunch::deep, on by default, take the down projection's long slices)
// the L2 prefetch of each block's later row groups (MatvecLaunch::l2_rest) and the PDL trigger after the wait
// (MatvecLaunch::late_trigger), so that all of those shapes run: the cases labelled "grid cap 2". The L2 prefetch
// of each warp's slices past its first pass (MatvecLaunch::l2_tail, on by default) runs in every case (a hint: the
// results are those without it), and so does the L2 prefetch of the later matrices an op names (MatmulParams::
// next_ffn / next_qkv, all of their rows).
inline void set_matvec_cap([[maybe_unused]] Backend& gpu, [[maybe_unused]] int blocks) {
#ifdef ROPEPP_HAS_CUDA
  set_cuda_matvec_max_blocks(gpu, std::max(blocks, 0));
  set_cuda_matvec_wide_pairs(gpu, blocks > 0 ? 3 : 0);
  set_cuda_matvec_max_warps(gpu, blocks > 0 ? 256 : -1);
  set_cuda_matvec_streaming(gpu, /*deep (the default)*/ true, blocks > 0, blocks > 0 ? 7 : 0);
  set_cuda_matvec_l2_tail(gpu, true);
  set_cuda_l2_next(gpu, 100, 100);  // where the op names later matrices (MatmulParams::next_ffn / next_qkv)
  set_cuda_matvec_smem(gpu, blocks == kSmemPrefetch ? 116 : 0, 132);
#endif
}
inline std::string cap_label(int cap, bool paired = false) {
  if (cap == kSmemPrefetch) return " smem prefetch";
  return cap ? (paired ? " grid cap 2, wide pairs" : " grid cap 2") : "";
}

}  // namespace ropepp::test
