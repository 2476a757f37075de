// backend_cpu.cpp: the CPU backend. fp32 math; bf16/f16/f32 weights read from the memory-mapped checkpoint
// and converted on the fly; work split over cores with OpenMP; inner loops vectorised by the compiler for
// AVX-512 / AVX2 / baseline, picked at run time (target_clones). This backend is the oracle for CUDA,
// so every op is written to be obviously right first.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "backend.h"

namespace ropepp {
namespace {

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define ROPEPP_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ROPEPP_MULTIVERSION
#endif

inline float bf16_bits_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

// Four dot products of one fp32 activation row with four weight rows (bf16), sharing the x loads.
ROPEPP_MULTIVERSION
void dot4_bf16(const float* __restrict x, const uint16_t* __restrict w0, const uint16_t* __restrict w1,
               const uint16_t* __restrict w2, const uint16_t* __restrict w3, int64_t n, float* out) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t i = 0; i < n; ++i) {
    const float xv = x[i];
    a0 += xv * bf16_bits_to_f32(w0[i]);
    a1 += xv * bf16_bits_to_f32(w1[i]);
    a2 += xv * bf16_bits_to_f32(w2[i]);
    a3 += xv * bf16_bits_to_f32(w3[i]);
  }
  out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;
}

ROPEPP_MULTIVERSION
void dot4_f32(const float* __restrict x, const float* __restrict w0, const float* __restrict w1,
              const float* __restrict w2, const float* __restrict w3, int64_t n, float* out) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t i = 0; i < n; ++i) {
    const float xv = x[i];
    a0 += xv * w0[i];
    a1 += xv * w1[i];
    a2 += xv * w2[i];
    a3 += xv * w3[i];
  }
  out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;
}

ROPEPP_MULTIVERSION
float dot_f32(const float* __restrict a, const float* __restrict b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// y += a * x
ROPEPP_MULTIVERSION
void axpy_f32(float a, const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void row_to_f32(const void* base, DType dt, int64_t row, int64_t cols, float* out) {
  switch (dt) {
    case DType::F32: {
      const float* p = static_cast<const float*>(base) + row * cols;
      std::copy(p, p + cols, out);
      break;
    }
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + row * cols;
      for (int64_t i = 0; i < cols; ++i) out[i] = bf16_bits_to_f32(p[i]);
      break;
    }
    case DType::F16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + row * cols;
      for (int64_t i = 0; i < cols; ++i) out[i] = f16_to_f32(p[i]);
      break;
    }
  }
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int n_threads) : n_threads_(n_threads > 0 ? n_threads : omp_get_num_procs()) {}

  std::string name() const override { return "cpu"; }

  void* alloc(size_t bytes) override {
    const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) fail("cpu: out of memory allocating {} bytes ({:.1f} MiB)", bytes, double(bytes) / (1 << 20));
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
  void release_weight(const Weight&) override {}

  DType kv_dtype() const override { return DType::F32; }

  void embed(const EmbedParams& p) override {
    const int64_t dim = p.table.cols;
#pragma omp parallel for num_threads(n_threads_) schedule(static)
    for (int i = 0; i < p.n; ++i) row_to_f32(p.table.data, p.table.dtype, p.tokens[i], dim, p.out + i * dim);
  }

  void rms_norm(const RmsNormParams& p) override {
#pragma omp parallel num_threads(n_threads_)
    {
      std::vector<float> w(size_t(p.dim));
      row_to_f32(p.w.data, p.w.dtype, 0, p.dim, w.data());
#pragma omp for schedule(static)
      for (int i = 0; i < p.n; ++i) {
        const float* x = p.x + int64_t(i) * p.dim;
        float* o = p.out + int64_t(i) * p.dim;
        double ss = 0.0;
        for (int j = 0; j < p.dim; ++j) ss += double(x[j]) * x[j];
        const float r = float(1.0 / std::sqrt(ss / p.dim + double(p.eps)));
        for (int j = 0; j < p.dim; ++j) o[j] = x[j] * r * w[size_t(j)];
      }
    }
  }

  // out[n, R] = x[n, C] · Wᵀ. Rows of W are taken four at a time so each x load feeds four dot products;
  // tokens are processed in blocks that stay in cache while the block's W rows stream past.
  void matmul(const MatmulParams& p) override {
    const int64_t R = p.w.rows, C = p.w.cols, n = p.n;
    const int64_t quads = (R + 3) / 4;
    constexpr int64_t kTokBlock = 64;
    const bool direct = p.w.dtype != DType::F16 && n <= 4;  // decode: stream W once, convert in registers
    for (int64_t t0 = 0; t0 < n; t0 += kTokBlock) {
      const int64_t t1 = std::min(n, t0 + kTokBlock);
#pragma omp parallel num_threads(n_threads_)
      {
        std::vector<float> wbuf(direct ? 0 : size_t(4 * C));
#pragma omp for schedule(static)
        for (int64_t q = 0; q < quads; ++q) {
          int64_t r[4];
          for (int k = 0; k < 4; ++k) r[k] = std::min(4 * q + k, R - 1);  // tail rows repeat the last row
          float acc[4];
          if (direct && p.w.dtype == DType::BF16) {
            const uint16_t* w = static_cast<const uint16_t*>(p.w.data);
            for (int64_t t = t0; t < t1; ++t) {
              dot4_bf16(p.x + t * C, w + r[0] * C, w + r[1] * C, w + r[2] * C, w + r[3] * C, C, acc);
              for (int k = 0; k < 4 && 4 * q + k < R; ++k) p.out[t * R + 4 * q + k] = acc[k];
            }
            continue;
          }
          const float* w0;
          const float* w1;
          const float* w2;
          const float* w3;
          if (direct) {  // f32 weights, few tokens
            const float* w = static_cast<const float*>(p.w.data);
            w0 = w + r[0] * C, w1 = w + r[1] * C, w2 = w + r[2] * C, w3 = w + r[3] * C;
          } else {
            for (int k = 0; k < 4; ++k) row_to_f32(p.w.data, p.w.dtype, r[k], C, wbuf.data() + k * C);
            w0 = wbuf.data(), w1 = w0 + C, w2 = w1 + C, w3 = w2 + C;
          }
          for (int64_t t = t0; t < t1; ++t) {
            dot4_f32(p.x + t * C, w0, w1, w2, w3, C, acc);
            for (int k = 0; k < 4 && 4 * q + k < R; ++k) p.out[t * R + 4 * q + k] = acc[k];
          }
        }
      }
    }
  }

  void rope(const RopeParams& p) override {
    const int half = p.head_dim / 2;
#pragma omp parallel for num_threads(n_threads_) schedule(static)
    for (int i = 0; i < p.n; ++i) {
      const float* c = p.cos + int64_t(p.positions[i]) * half;
      const float* s = p.sin + int64_t(p.positions[i]) * half;
      for (int h = 0; h < p.n_heads; ++h) {
        float* x = p.x + int64_t(i) * p.row_stride + int64_t(h) * p.head_dim;
        for (int j = 0; j < half; ++j) {
          const float a = x[j], b = x[j + half];
          x[j] = a * c[j] - b * s[j];
          x[j + half] = b * c[j] + a * s[j];
        }
      }
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
        std::copy_n(p.k + int64_t(i) * p.row_stride + h * c.head_dim, c.head_dim, kc + off);
        std::copy_n(p.v + int64_t(i) * p.row_stride + h * c.head_dim, c.head_dim, vc + off);
      }
    }
  }

  // One task per (token, kv head): the q heads of the group (and with RoPE++ their imaginary twins) are
  // scored against each key as it is read, so K and V are read once per group.
  void attention(const AttentionParams& p) override {
    const KVCacheView& c = p.cache;
    const float* kc = static_cast<const float*>(c.k) + size_t(p.layer) * c.layer_stride();
    const float* vc = static_cast<const float*>(c.v) + size_t(p.layer) * c.layer_stride();
    const int hd = p.head_dim, half = hd / 2;
    const int group = p.n_q_heads / p.n_kv_heads;
    const int parts = p.imag ? 2 : 1;
    const int rows = group * parts;
    const int n_out_heads = p.n_q_heads * parts;
    const int tasks = p.batch.n_tokens * p.n_kv_heads;
#pragma omp parallel num_threads(n_threads_)
    {
      std::vector<float> qrows(size_t(rows) * hd);
      std::vector<float> scores;
#pragma omp for schedule(dynamic, 1)
      for (int task = 0; task < tasks; ++task) {
        const int i = task / p.n_kv_heads, g = task % p.n_kv_heads;
        const int pos = p.batch.positions[i];
        const int seq = p.batch.seq_of_token[i];
        const int32_t* table = p.batch.block_table + int64_t(seq) * p.batch.max_blocks_per_seq;
        const int n_keys = pos + 1;
        // rows: for q head h = g*group + r/parts: part 0 = q (real), part 1 = -rot(q) (imaginary)
        for (int r = 0; r < rows; ++r) {
          const float* q = p.q + int64_t(i) * p.q_row_stride + int64_t(g * group + r / parts) * hd;
          float* dst = qrows.data() + size_t(r) * hd;
          if (r % parts == 0) {
            std::copy_n(q, hd, dst);
          } else {
            for (int j = 0; j < half; ++j) dst[j] = q[j + half], dst[j + half] = -q[j];
          }
        }
        scores.assign(size_t(rows) * n_keys, 0.f);
        for (int t = 0; t < n_keys; ++t) {
          const size_t off = size_t(table[t / c.block_size]) * c.block_stride() +
                             (size_t(g) * c.block_size + t % c.block_size) * hd;
          for (int r = 0; r < rows; ++r)
            scores[size_t(r) * n_keys + t] = dot_f32(qrows.data() + size_t(r) * hd, kc + off, hd) * p.scale;
        }
        for (int r = 0; r < rows; ++r) {
          float* s = scores.data() + size_t(r) * n_keys;
          const float m = *std::max_element(s, s + n_keys);
          double sum = 0.0;
          for (int t = 0; t < n_keys; ++t) s[t] = std::exp(s[t] - m), sum += s[t];
          const float inv = float(1.0 / sum);
          for (int t = 0; t < n_keys; ++t) s[t] *= inv;
        }
        for (int r = 0; r < rows; ++r) {
          const int out_head = (g * group + r / parts) * parts + r % parts;
          std::fill_n(p.out + (int64_t(i) * n_out_heads + out_head) * hd, hd, 0.f);
        }
        for (int t = 0; t < n_keys; ++t) {
          const size_t off = size_t(table[t / c.block_size]) * c.block_stride() +
                             (size_t(g) * c.block_size + t % c.block_size) * hd;
          for (int r = 0; r < rows; ++r) {
            const int out_head = (g * group + r / parts) * parts + r % parts;
            axpy_f32(scores[size_t(r) * n_keys + t], vc + off, p.out + (int64_t(i) * n_out_heads + out_head) * hd, hd);
          }
        }
      }
    }
  }

  void swiglu(const SwigluParams& p) override {
#pragma omp parallel for num_threads(n_threads_) schedule(static)
    for (int i = 0; i < p.n; ++i) {
      const float* g = p.gate + int64_t(i) * p.in_stride;
      const float* u = p.up + int64_t(i) * p.in_stride;
      float* o = p.out + int64_t(i) * p.dim;
      for (int j = 0; j < p.dim; ++j) o[j] = g[j] / (1.f + std::exp(-g[j])) * u[j];
    }
  }

  void add(const AddParams& p) override {
#pragma omp parallel for num_threads(n_threads_) schedule(static)
    for (size_t i = 0; i < p.count; ++i) p.x[i] += p.y[i];
  }

  void gather_rows(const GatherRowsParams& p) override {
    for (int i = 0; i < p.n; ++i) std::copy_n(p.x + int64_t(p.rows[i]) * p.dim, p.dim, p.out + int64_t(i) * p.dim);
  }

 private:
  int n_threads_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int n_threads) { return std::make_unique<CpuBackend>(n_threads); }

}  // namespace ropepp
