// cpu_kernels_scalar.cpp: the portable reference implementation of cpu_kernels.h. Plain loops, written to be
// obviously right; the vector paths are tested against it. Also the ISA detection and selection.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "cpu_kernels.h"

namespace ropepp::cpu {
namespace {

constexpr int kMr = 4;
constexpr int kNr = 16;

inline float load_w(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
  }
  return 0.f;
}

void pack_a(const float* x, int64_t ldx, int m, int64_t k, float* dst) {
  for (int64_t kk = 0; kk < k; ++kk)
    for (int i = 0; i < kMr; ++i) dst[kk * kMr + i] = i < m ? x[i * ldx + kk] : 0.f;
}

void pack_b(const PackBArgs& a) {
  for (int kk = 0; kk < a.kc; ++kk)
    for (int j = 0; j < kNr; ++j) {
      const int64_t row = a.j0 + j;
      a.dst[kk * kNr + j] = row < a.rows ? load_w(a.w, a.dtype, row * a.ld + a.k0 + kk) : 0.f;
    }
}

void gemm_tile(const GemmTileArgs& a) {
  float acc[kMr][kNr] = {};
  for (int kk = 0; kk < a.kc; ++kk)
    for (int i = 0; i < kMr; ++i)
      for (int j = 0; j < kNr; ++j) acc[i][j] += a.a[kk * kMr + i] * a.b[kk * kNr + j];
  for (int i = 0; i < a.m_valid; ++i)
    for (int j = 0; j < a.n_valid; ++j) {
      float* c = a.c + i * a.ldc + j;
      *c = a.accumulate ? *c + acc[i][j] : acc[i][j];
    }
}

void gemv(const GemvArgs& a) {
  for (int64_t r = a.r0; r < a.r1; ++r)
    for (int t = 0; t < a.n; ++t) {
      const float* x = a.x + t * a.ldx;
      float acc = 0.f;
      for (int64_t kk = 0; kk < a.k; ++kk) acc += x[kk] * load_w(a.w, a.dtype, r * a.k + kk);
      float& o = a.out[t * a.ldo + r];
      o = a.accumulate ? o + acc : acc;
    }
}

void to_f32(const void* src, DType dt, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = load_w(src, dt, i);
}

void rms_norm_row(const float* x, const float* w, float* out, int dim, float eps) {
  double ss = 0.0;
  for (int j = 0; j < dim; ++j) ss += double(x[j]) * x[j];
  const float r = float(1.0 / std::sqrt(ss / dim + double(eps)));
  for (int j = 0; j < dim; ++j) out[j] = x[j] * r * w[j];
}

void swiglu_row(const float* g, const float* u, float* out, int n) {
  for (int j = 0; j < n; ++j) out[j] = g[j] / (1.f + std::exp(-g[j])) * u[j];
}

void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void rope_row(float* x, const float* c, const float* s, int n_heads, int head_dim) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h, x += head_dim)
    for (int j = 0; j < half; ++j) {
      const float a = x[j], b = x[j + half];
      x[j] = a * c[j] - b * s[j];
      x[j + half] = b * c[j] + a * s[j];
    }
}

void attention(const AttnTaskArgs& a) {
  const int hd = a.head_dim, half = hd / 2, parts = a.imag ? 2 : 1;
  const int rows_g = a.group * parts, n_g = a.g1 - a.g0, rows = n_g * rows_g;
  const int nk = a.key_end - a.key_begin;
  float* qrows = a.scratch;                      // [rows, hd]
  float* scores = a.scratch + size_t(rows) * hd;  // [rows, nk]
  // rows: part 0 = q (real), part 1 = -rot(q) (imaginary)
  for (int r = 0; r < rows; ++r) {
    const float* q = a.q + size_t(r / parts) * hd;
    float* dst = qrows + size_t(r) * hd;
    if (r % parts == 0) {
      std::copy_n(q, hd, dst);
    } else {
      for (int j = 0; j < half; ++j) dst[j] = q[j + half], dst[j + half] = -q[j];
    }
  }
  auto key_off = [&](int t, int g) {
    return size_t(a.table[t / a.block_size]) * a.block_stride +
           (size_t(g) * a.block_size + size_t(t % a.block_size)) * hd;
  };
  for (int t = a.key_begin; t < a.key_end; ++t)
    for (int g = a.g0; g < a.g1; ++g) {
      const float* kr = a.k + key_off(t, g);
      for (int r = (g - a.g0) * rows_g; r < (g - a.g0 + 1) * rows_g; ++r) {
        const float* q = qrows + size_t(r) * hd;
        float acc = 0.f;
        for (int j = 0; j < hd; ++j) acc += q[j] * kr[j];
        scores[size_t(r) * nk + (t - a.key_begin)] = acc * a.scale;
      }
    }
  for (int r = 0; r < rows; ++r) {
    float* s = scores + size_t(r) * nk;
    const float m = *std::max_element(s, s + nk);
    double sum = 0.0;
    for (int t = 0; t < nk; ++t) s[t] = std::exp(s[t] - m), sum += s[t];
    if (a.ml) {
      a.ml[2 * r] = m, a.ml[2 * r + 1] = float(sum);
    } else {
      const float inv = float(1.0 / sum);
      for (int t = 0; t < nk; ++t) s[t] *= inv;
    }
  }
  std::fill_n(a.out, size_t(rows) * hd, 0.f);
  for (int t = a.key_begin; t < a.key_end; ++t)
    for (int g = a.g0; g < a.g1; ++g) {
      const float* vr = a.v + key_off(t, g);
      for (int r = (g - a.g0) * rows_g; r < (g - a.g0 + 1) * rows_g; ++r) {
        const float p = scores[size_t(r) * nk + (t - a.key_begin)];
        float* o = a.out + size_t(r) * hd;
        for (int j = 0; j < hd; ++j) o[j] += p * vr[j];
      }
    }
}

}  // namespace

const Kernels& kernels_scalar() {
  static const Kernels k{Isa::Scalar, kMr, kNr, pack_a, pack_b, gemm_tile, gemv, to_f32,
                         rms_norm_row, swiglu_row, add, rope_row, attention};
  return k;
}

// ---- ISA detection and selection -------------------------------------------------------------------

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

bool isa_supported(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
  }
  return false;
#else
  return isa == Isa::Scalar;
#endif
}

Isa best_isa() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

Isa select_isa() {
  const char* e = std::getenv("ROPEPP_CPU_ISA");
  if (!e || !*e) return best_isa();
  const std::string v = e;
  Isa isa;
  if (v == "scalar") {
    isa = Isa::Scalar;
  } else if (v == "avx2") {
    isa = Isa::Avx2;
  } else if (v == "avx512") {
    isa = Isa::Avx512;
  } else {
    fail("ROPEPP_CPU_ISA={}: expected scalar, avx2 or avx512", v);
  }
  if (!isa_supported(isa)) fail("ROPEPP_CPU_ISA={}: this CPU does not support it (best: {})", v, isa_name(best_isa()));
  return isa;
}

const Kernels& kernels(Isa isa) {
  if (!isa_supported(isa)) fail("cpu kernels: instruction set {} is not supported by this CPU", isa_name(isa));
  switch (isa) {
    case Isa::Avx512: return kernels_avx512();
    case Isa::Avx2: return kernels_avx2();
    case Isa::Scalar: break;
  }
  return kernels_scalar();
}

}  // namespace ropepp::cpu
