// backend_cpu.cpp: the CPU backend. fp32 math with fp32 accumulation; bf16/f16/f32 weights read from the
// memory-mapped checkpoint in their own dtype and converted exactly to fp32 inside the kernels; work split
// over cores with OpenMP (its thread pool persists between ops). The inner loops live in cpu_kernels_*.cpp,
// one file per instruction set (scalar reference, AVX2, AVX-512), picked at run time (cpu_kernels.h).
//
// matmul: ≤ kGemvMaxTokens rows (decode) → GEMV that streams W once; more → packed GEMM: x packed once
// into MR-row strips, W packed panel by panel (NR rows × kc columns, converted to fp32) by the thread that
// owns the panel, and a register-blocked MR×NR micro-kernel runs over every strip against that panel.
//
// Ops keep grow-only scratch buffers in the backend object: like every Backend, one caller issues ops in
// order (backend.h); two threads must not drive the same CpuBackend at once.
#include <omp.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "backend.h"
#include "cpu_kernels.h"

namespace ropepp {
namespace {

// Grow-only 64-byte-aligned float buffer.
class AlignedBuf {
 public:
  AlignedBuf() = default;
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  AlignedBuf(AlignedBuf&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  ~AlignedBuf() { std::free(p_); }
  float* get(size_t n) {
    if (n > n_) {
      std::free(p_);
      const size_t bytes = (std::max<size_t>(n, 16) * sizeof(float) + 63) / 64 * 64;
      p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p_) fail("cpu: out of memory allocating {} bytes of scratch", bytes);
      n_ = n;
    }
    return p_;
  }

 private:
  float* p_ = nullptr;
  size_t n_ = 0;
};

struct AttnTask {
  int tok, g0, g1, kb, ke, slot;  // token, kv heads [g0, g1), keys [kb, ke); slot of the partial result or -1
};

int env_int(const char* name, int def) {
  const char* e = std::getenv(name);
  return e && *e ? std::atoi(e) : def;
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(int n_threads, cpu::Isa isa)
      : k_(cpu::kernels(isa)),
        n_threads_(n_threads > 0 ? n_threads : omp_get_num_procs()),
        kc_(std::max(16, env_int("ROPEPP_CPU_KC", 512) / 16 * 16)),
        thread_buf_(size_t(n_threads_)) {
    spdlog::debug("cpu backend: {} threads, {} kernels (GEMM tile {}×{}, kc {})", n_threads_, cpu::isa_name(isa),
                  k_.mr, k_.nr, kc_);
  }

  std::string name() const override { return "cpu"; }

  // Large buffers (the KV cache, activations) are 2 MiB-aligned and advised onto transparent huge pages
  // (where THP is in "madvise" mode, as on Debian): decode attention streams the cache, and with 4 KiB pages
  // every 4 KiB of it costs a TLB miss (measured, 376M EC shape, one thread: the attention of one token at
  // 8k context took 24 → 21.5 ms of CPU).
  void* alloc(size_t bytes) override {
    constexpr size_t kHuge = size_t(2) << 20;
    const bool huge = bytes >= kHuge;
    const size_t align = huge ? kHuge : 64;
    const size_t rounded = (std::max<size_t>(bytes, 1) + align - 1) / align * align;
    void* p = std::aligned_alloc(align, rounded);
    if (!p) fail("cpu: out of memory allocating {} bytes ({:.1f} MiB)", bytes, double(bytes) / (1 << 20));
    if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure (no THP) changes nothing
    return p;
  }
  void release(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void synchronize() override {}
  void copy(void* dst, const void* src, size_t bytes) override {
    // Split over threads: one core cannot saturate memory bandwidth.
    const auto* s = static_cast<const char*>(src);
    auto* d = static_cast<char*>(dst);
    const size_t parts = size_t(n_threads_) * 4;
#pragma omp parallel for num_threads(n_threads_) schedule(static)
    for (size_t i = 0; i < parts; ++i) {
      const size_t b = bytes * i / parts, e = bytes * (i + 1) / parts;
      std::memcpy(d + b, s + b, e - b);
    }
  }

  Weight load_weight(const void* host, DType dtype, int64_t rows, int64_t cols) override {
    return Weight{host, dtype, rows, cols};  // zero-copy: the mapping outlives the model
  }
  // A concatenation has no mapping to point into: the backend keeps it until release_weight.
  Weight load_weight_concat(std::span<const HostSpan> parts, DType dtype, int64_t rows, int64_t cols) override {
    size_t bytes = 0;
    for (const HostSpan& p : parts) bytes += p.bytes;
    if (rows <= 0 || cols <= 0 || bytes != size_t(rows) * size_t(cols) * dtype_size(dtype))
      fail("cpu load_weight_concat: {} bytes in {} parts for [{}, {}] {}", bytes, parts.size(), rows, cols,
           dtype_name(dtype));
    std::vector<char> host(bytes);
    size_t off = 0;
    for (const HostSpan& p : parts) {
      std::memcpy(host.data() + off, p.data, p.bytes);
      off += p.bytes;
    }
    const Weight w{host.data(), dtype, rows, cols};
    concats_.push_back(std::move(host));
    return w;
  }
  void release_weight(const Weight& w) override {
    std::erase_if(concats_, [&](const std::vector<char>& c) { return c.data() == w.data; });
  }

  DType kv_dtype() const override { return DType::F32; }

  void embed(const EmbedParams& p) override {
    const int64_t dim = p.table.cols;
    const size_t esz = dtype_size(p.table.dtype);
#pragma omp parallel for num_threads(n_threads_) schedule(static) if (p.n >= 16)
    for (int i = 0; i < p.n; ++i)
      k_.to_f32(static_cast<const char*>(p.table.data) + size_t(p.tokens[i]) * size_t(dim) * esz, p.table.dtype, dim,
                p.out + i * dim);
  }

  void rms_norm(const RmsNormParams& p) override {
    float* w = norm_w_.get(size_t(p.dim));
    k_.to_f32(p.w.data, p.w.dtype, p.dim, w);
#pragma omp parallel for num_threads(n_threads_) schedule(static) if (p.n >= 8)
    for (int i = 0; i < p.n; ++i) k_.rms_norm_row(p.x + int64_t(i) * p.dim, w, p.out + int64_t(i) * p.dim, p.dim, p.eps);
  }

  void matmul(const MatmulParams& p) override {
    if (p.n <= 0) return;
    if (p.n <= cpu::kGemvMaxTokens) {
      gemv(p);
    } else {
      gemm(p);
    }
  }

  void rope(const RopeParams& p) override {
    const int half = p.head_dim / 2;
#pragma omp parallel for num_threads(n_threads_) schedule(static) if (p.n >= 16)
    for (int i = 0; i < p.n; ++i) {
      const int64_t pos = p.positions[i];
      k_.rope_row(p.x + int64_t(i) * p.row_stride, p.cos + pos * half, p.sin + pos * half, p.n_heads, p.head_dim);
    }
  }

  void kv_append(const KvAppendParams& p) override {
    const KVCacheView& c = p.cache;
    float* kc = static_cast<float*>(c.k) + size_t(p.layer) * c.layer_stride();
    float* vc = static_cast<float*>(c.v) + size_t(p.layer) * c.layer_stride();
    for (int i = 0; i < p.batch.n_tokens; ++i) {
      const int pos = p.batch.positions[i];
      const int seq = p.batch.seq_of_token[i];
      const int block = p.batch.block_table[int64_t(seq) * p.batch.max_blocks_per_seq + pos / c.block_size];
      const int slot = pos % c.block_size;
      for (int h = 0; h < c.n_kv_heads; ++h) {
        const size_t off = size_t(block) * c.block_stride() + (size_t(h) * c.block_size + slot) * c.head_dim;
        std::memcpy(kc + off, p.k + int64_t(i) * p.row_stride + h * c.head_dim, size_t(c.head_dim) * sizeof(float));
        std::memcpy(vc + off, p.v + int64_t(i) * p.row_stride + h * c.head_dim, size_t(c.head_dim) * sizeof(float));
      }
    }
  }

  // Tasks: (token, kv heads, key range). Many tokens (prefill): one task per token over all its kv heads
  // and keys, longest first. Few tokens (decode): at short context one task per (token, kv head); at long
  // context the keys are split into ranges over all kv heads (the cache read in address order, every
  // thread busy), and the ranges' partial softmax sums are merged here.
  void attention(const AttentionParams& p) override {
    const KVCacheView& c = p.cache;
    const int group = p.n_q_heads / p.n_kv_heads;
    const int parts = p.imag ? 2 : 1;
    const int hd = p.head_dim;
    const int rows_g = group * parts, rows = p.n_kv_heads * rows_g;  // output rows per token
    const int n_tok = p.batch.n_tokens;
    int max_keys = 1;
    for (int i = 0; i < n_tok; ++i) max_keys = std::max(max_keys, p.batch.positions[i] + 1);

    std::vector<AttnTask>& tasks = attn_tasks_;
    tasks.clear();
    int slots = 0, max_range = 0;
    if (n_tok >= 2 * n_threads_) {
      for (int i = n_tok - 1; i >= 0; --i) tasks.push_back({i, 0, p.n_kv_heads, 0, p.batch.positions[i] + 1, -1});
      max_range = max_keys;
    } else {
      const int want = (max_keys + 4 * n_threads_ - 1) / (4 * n_threads_);
      const int chunk = std::max(256, (want + 15) / 16 * 16);
      for (int i = 0; i < n_tok; ++i) {
        const int nk = p.batch.positions[i] + 1;
        if (nk <= chunk) {
          for (int g = 0; g < p.n_kv_heads; ++g) tasks.push_back({i, g, g + 1, 0, nk, -1});
        } else {
          for (int kb = 0; kb < nk; kb += chunk) tasks.push_back({i, 0, p.n_kv_heads, kb, std::min(nk, kb + chunk), slots++});
        }
      }
      max_range = std::min(max_keys, chunk);
    }
    float* part_out = slots ? attn_part_.get(size_t(slots) * rows * hd) : nullptr;
    float* part_ml = slots ? attn_ml_.get(size_t(slots) * rows * 2) : nullptr;
    const size_t scratch = cpu::attn_scratch_floats(p.n_kv_heads, group, p.imag, hd, max_range);
    for (auto& b : thread_buf_) b.get(scratch);  // sized here, outside the parallel region
    const float* kc = static_cast<const float*>(c.k) + size_t(p.layer) * c.layer_stride();
    const float* vc = static_cast<const float*>(c.v) + size_t(p.layer) * c.layer_stride();
    const int n_tasks = int(tasks.size());
#pragma omp parallel num_threads(std::min(n_threads_, n_tasks))
    {
      float* buf = thread_buf_[size_t(omp_get_thread_num())].get(scratch);
#pragma omp for schedule(dynamic, 1)
      for (int ti = 0; ti < n_tasks; ++ti) {
        const AttnTask& t = tasks[size_t(ti)];
        cpu::AttnTaskArgs a;
        a.q = p.q + int64_t(t.tok) * p.q_row_stride + int64_t(t.g0) * group * hd;
        if (t.slot < 0) {
          a.out = p.out + (int64_t(t.tok) * rows + int64_t(t.g0) * rows_g) * hd;
          a.ml = nullptr;
        } else {
          a.out = part_out + size_t(t.slot) * rows * hd;
          a.ml = part_ml + size_t(t.slot) * rows * 2;
        }
        a.k = kc;
        a.v = vc;
        a.table = p.batch.block_table + int64_t(p.batch.seq_of_token[t.tok]) * p.batch.max_blocks_per_seq;
        a.block_stride = c.block_stride();
        a.block_size = c.block_size;
        a.g0 = t.g0;
        a.g1 = t.g1;
        a.key_begin = t.kb;
        a.key_end = t.ke;
        a.group = group;
        a.imag = p.imag;
        a.head_dim = hd;
        a.scale = p.scale;
        a.scratch = buf;
        k_.attention(a);
      }
    }
    if (!slots) return;
    // Merge the key ranges of each split token: out = Σ_c e^(m_c − M) acc_c / Σ_c e^(m_c − M) l_c.
    for (size_t b = 0; b < tasks.size();) {
      size_t e = b;
      while (e < tasks.size() && tasks[e].tok == tasks[b].tok && tasks[e].slot >= 0) ++e;
      if (e == b) {
        ++b;
        continue;
      }
      float* out = p.out + int64_t(tasks[b].tok) * rows * hd;
      for (int r = 0; r < rows; ++r) {
        float M = -std::numeric_limits<float>::infinity();
        for (size_t t = b; t < e; ++t) M = std::max(M, part_ml[(size_t(tasks[t].slot) * rows + r) * 2]);
        double L = 0.0;
        float* o = out + size_t(r) * hd;
        std::fill_n(o, hd, 0.f);
        for (size_t t = b; t < e; ++t) {
          const float* ml = part_ml + (size_t(tasks[t].slot) * rows + r) * 2;
          const float w = std::exp(ml[0] - M);
          L += double(w) * ml[1];
          const float* acc = part_out + (size_t(tasks[t].slot) * rows + r) * hd;
          for (int j = 0; j < hd; ++j) o[j] += w * acc[j];
        }
        const float inv = float(1.0 / L);
        for (int j = 0; j < hd; ++j) o[j] *= inv;
      }
      b = e;
    }
  }

  void swiglu(const SwigluParams& p) override {
#pragma omp parallel for num_threads(n_threads_) schedule(static) if (p.n >= 4)
    for (int i = 0; i < p.n; ++i)
      k_.swiglu_row(p.gate + int64_t(i) * p.in_stride, p.up + int64_t(i) * p.in_stride, p.out + int64_t(i) * p.dim,
                    p.dim);
  }

  void add(const AddParams& p) override {
    constexpr size_t kChunk = 16384;
    const size_t chunks = (p.count + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(n_threads_) schedule(static) if (chunks >= 4)
    for (size_t i = 0; i < chunks; ++i) {
      const size_t b = i * kChunk, e = std::min(p.count, b + kChunk);
      k_.add(p.x + b, p.y + b, int64_t(e - b));
    }
  }

  void gather_rows(const GatherRowsParams& p) override {
    for (int i = 0; i < p.n; ++i)
      std::memcpy(p.out + int64_t(i) * p.dim, p.x + int64_t(p.rows[i]) * p.stride(), size_t(p.dim) * sizeof(float));
  }

  // Host memory: the logits are read in place (the defaults would copy them first).
  void argmax(const ArgmaxParams& p) override {
    for (int i = 0; i < p.n; ++i) {
      const float* row = p.logits + size_t(i) * p.vocab;
      int best = -1;
      for (int j = 0; j < p.vocab; ++j)
        if (!std::isnan(row[j]) && (best < 0 || row[j] > row[best])) best = j;
      p.out[i] = best < 0 ? 0 : best;
    }
  }
  void nll(const NllParams& p) override {
#pragma omp parallel for num_threads(n_threads_) schedule(dynamic, 1) if (p.n >= 2)
    for (int i = 0; i < p.n; ++i) {
      const float* row = p.logits + size_t(i) * p.vocab;
      double m = -std::numeric_limits<double>::infinity(), sum = 0.0;
      for (int j = 0; j < p.vocab; ++j) m = std::max(m, double(row[j]));
      for (int j = 0; j < p.vocab; ++j) sum += std::exp(double(row[j]) - m);
      const int32_t t = p.targets[i];
      p.out[i] = (t < 0 || t >= p.vocab) ? std::numeric_limits<float>::quiet_NaN()
                                          : float(std::log(sum) + m - double(row[t]));
    }
  }

 private:
  // Decode: W streamed once; rows split in chunks (multiples of 4) handed out dynamically, so a thread that
  // the OS preempts does not hold the whole op back.
  void gemv(const MatmulParams& p) {
    const int64_t R = p.w.rows, C = p.w.cols;
    const int64_t want = std::max<int64_t>(64, R / (int64_t(n_threads_) * 8));
    const int64_t chunk = (want + 3) / 4 * 4;
    const int64_t n_chunks = (R + chunk - 1) / chunk;
    const int threads = int(std::min<int64_t>(n_threads_, n_chunks));
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t ci = 0; ci < n_chunks; ++ci) {
      cpu::GemvArgs a;
      a.x = p.x;
      a.ldx = C;
      a.n = p.n;
      a.w = p.w.data;
      a.dtype = p.w.dtype;
      a.k = C;
      a.r0 = ci * chunk;
      a.r1 = std::min(R, a.r0 + chunk);
      a.out = p.out;
      a.ldo = R;
      a.accumulate = p.accumulate;
      k_.gemv(a);
    }
  }

  // Prefill: packed GEMM. One parallel region: pack x into MR-row strips, then the NR-row panels of W are
  // handed out dynamically; the owner packs kc columns at a time (L1-sized) and sweeps every strip.
  void gemm(const MatmulParams& p) {
    const int64_t R = p.w.rows, C = p.w.cols;
    const int n = p.n, mr = k_.mr, nr = k_.nr;
    const int strips = (n + mr - 1) / mr;
    const int64_t panels = (R + nr - 1) / nr;
    const int kc = kc_;
    float* apack = apack_.get(size_t(strips) * size_t(C) * size_t(mr));
    for (auto& b : thread_buf_) b.get(size_t(kc) * size_t(nr));
#pragma omp parallel num_threads(n_threads_)
    {
#pragma omp for schedule(static)
      for (int s = 0; s < strips; ++s)
        k_.pack_a(p.x + int64_t(s) * mr * C, C, std::min(mr, n - s * mr), C, apack + size_t(s) * size_t(C) * mr);
      float* bpack = thread_buf_[size_t(omp_get_thread_num())].get(size_t(kc) * size_t(nr));
#pragma omp for schedule(dynamic, 1)
      for (int64_t pj = 0; pj < panels; ++pj) {
        const int64_t j0 = pj * nr;
        const int n_valid = int(std::min<int64_t>(nr, R - j0));
        for (int64_t k0 = 0; k0 < C; k0 += kc) {
          const int kcc = int(std::min<int64_t>(kc, C - k0));
          k_.pack_b({p.w.data, p.w.dtype, C, R, j0, k0, kcc, bpack});
          for (int s = 0; s < strips; ++s) {
            cpu::GemmTileArgs g;
            g.a = apack + size_t(s) * size_t(C) * mr + size_t(k0) * mr;
            g.b = bpack;
            g.kc = kcc;
            g.c = p.out + int64_t(s) * mr * R + j0;
            g.ldc = R;
            g.m_valid = std::min(mr, n - s * mr);
            g.n_valid = n_valid;
            g.accumulate = k0 > 0 || p.accumulate;
            k_.gemm_tile(g);
          }
        }
      }
    }
  }

  const cpu::Kernels& k_;
  int n_threads_;
  int kc_;                                // GEMM K block (columns of a packed W panel)
  AlignedBuf apack_;                      // packed activations of the current GEMM
  AlignedBuf norm_w_;                     // the current norm weight in fp32
  std::vector<AlignedBuf> thread_buf_;    // per thread: packed W panel / attention scratch
  AlignedBuf attn_part_, attn_ml_;        // attention split over key ranges: partial outputs, (max, sum)
  std::vector<AttnTask> attn_tasks_;
  std::vector<std::vector<char>> concats_;  // weights from load_weight_concat, until released
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend_isa(int n_threads, cpu::Isa isa) {
  return std::make_unique<CpuBackend>(n_threads, isa);
}

std::unique_ptr<Backend> make_cpu_backend(int n_threads) { return make_cpu_backend_isa(n_threads, cpu::select_isa()); }

}  // namespace ropepp
