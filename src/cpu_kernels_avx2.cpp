// cpu_kernels_avx2.cpp: the AVX2 + FMA + F16C implementation of cpu_kernels.h (CPUs without AVX-512).
//
// Same rules as cpu_kernels_avx512.cpp: every intrinsic function carries the T256 target attribute and
// has internal linkage; only kernels_avx2() is visible, and the backend calls it only when
// isa_supported(Isa::Avx2). GEMM micro-kernel: 6 tokens × 16 features = 12 ymm accumulators.
// GCC 12 warns about the _mm*_undefined_* placeholders inside its own intrinsic headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>

#include "cpu_kernels.h"

#define T256 __attribute__((target("avx2,fma,f16c")))

namespace ropepp::cpu {
namespace {

constexpr int kMr = 6;
constexpr int kNr = 16;

T256 inline __m256i lane_mask(int n) {  // lanes < n set (n clamped to 0..8)
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <DType DT>
T256 inline __m256 load8(const void* base, int64_t i) {
  if constexpr (DT == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    if constexpr (DT == DType::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
  }
}
// n < 8 elements (the rest zero), without reading past them.
template <DType DT>
T256 inline __m256 load8_part(const void* base, int64_t i, int n) {
  if constexpr (DT == DType::F32) {
    return _mm256_maskload_ps(static_cast<const float*>(base) + i, lane_mask(n));
  } else {
    alignas(16) uint16_t tmp[8] = {};
    const uint16_t* p = static_cast<const uint16_t*>(base) + i;
    for (int j = 0; j < n; ++j) tmp[j] = p[j];
    return load8<DT>(tmp, 0);
  }
}

// exp(x): as exp16 in the AVX-512 file; 2^n by exponent bits (x clamped to [−87.3, 88], below → 0).
T256 inline __m256 exp8(__m256 x) {
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.f)), _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
  __m256 p = _mm256_set1_ps(1.f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

T256 inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Lane i = horizontal sum of a[i].
T256 inline __m256 reduce8(const __m256 a[8]) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

T256 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---- GEMM ------------------------------------------------------------------------------------------

T256 void pack_a(const float* x, int64_t ldx, int m, int64_t k, float* dst) {
  for (int64_t kk = 0; kk < k; ++kk)
    for (int i = 0; i < kMr; ++i) dst[kk * kMr + i] = i < m ? x[i * ldx + kk] : 0.f;
}

template <DType DT>
T256 void pack_b_t(const PackBArgs& a) {
  const int64_t valid = a.rows - a.j0;
  for (int half = 0; half < 2; ++half) {
    const void* rowp[8];
    bool ok[8];
    for (int i = 0; i < 8; ++i) {
      const int64_t j = half * 8 + i;
      ok[i] = j < valid;
      rowp[i] = static_cast<const char*>(a.w) + ((ok[i] ? a.j0 + j : 0) * a.ld + a.k0) * int64_t(dtype_size(DT));
    }
    for (int kk = 0; kk < a.kc; kk += 8) {
      const int n = a.kc - kk < 8 ? a.kc - kk : 8;
      __m256 r[8];
      for (int i = 0; i < 8; ++i)
        r[i] = ok[i] ? (n == 8 ? load8<DT>(rowp[i], kk) : load8_part<DT>(rowp[i], kk, n)) : _mm256_setzero_ps();
      transpose8(r);
      for (int c = 0; c < n; ++c) _mm256_store_ps(a.dst + (kk + c) * kNr + half * 8, r[c]);
    }
  }
}

T256 void pack_b(const PackBArgs& a) {
  switch (a.dtype) {
    case DType::BF16: pack_b_t<DType::BF16>(a); break;
    case DType::F16: pack_b_t<DType::F16>(a); break;
    case DType::F32: pack_b_t<DType::F32>(a); break;
  }
}

T256 void gemm_tile(const GemmTileArgs& g) {
  __m256 c0[kMr], c1[kMr];
#pragma GCC unroll 6
  for (int i = 0; i < kMr; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  const float* a = g.a;
  const float* b = g.b;
#pragma GCC unroll 2
  for (int k = 0; k < g.kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMr; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
    }
    a += kMr;
    b += kNr;
  }
  const __m256i m0 = lane_mask(g.n_valid), m1 = lane_mask(g.n_valid - 8);
  const bool full = g.n_valid == kNr;
#pragma GCC unroll 6
  for (int i = 0; i < kMr; ++i) {
    if (i >= g.m_valid) break;
    float* c = g.c + i * g.ldc;
    if (full) {
      if (g.accumulate) {
        c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(c));
        c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(c + 8));
      }
      _mm256_storeu_ps(c, c0[i]);
      _mm256_storeu_ps(c + 8, c1[i]);
    } else {
      if (g.accumulate) {
        c0[i] = _mm256_add_ps(c0[i], _mm256_maskload_ps(c, m0));
        c1[i] = _mm256_add_ps(c1[i], _mm256_maskload_ps(c + 8, m1));
      }
      _mm256_maskstore_ps(c, m0, c0[i]);
      _mm256_maskstore_ps(c + 8, m1, c1[i]);
    }
  }
}

// ---- GEMV ------------------------------------------------------------------------------------------

template <DType DT>
T256 inline float load_scalar(const void* base, int64_t i) {
  if constexpr (DT == DType::F32) return static_cast<const float*>(base)[i];
  if constexpr (DT == DType::BF16) return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
  return _cvtsh_ss(static_cast<const uint16_t*>(base)[i]);
}

// One weight row at a time (one sequential stream), two accumulators per token.
template <DType DT, int NT>
T256 void gemv_t(const GemvArgs& g) {
  const int64_t K = g.k, esz = int64_t(dtype_size(DT));
  const int64_t k16 = K / 16 * 16;
  for (int64_t r = g.r0; r < g.r1; ++r) {
    const char* wp = static_cast<const char*>(g.w) + r * K * esz;
    __m256 acc[NT][2];
    for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < k16; k += 16) {
      const __m256 w0 = load8<DT>(wp, k), w1 = load8<DT>(wp, k + 8);
      for (int t = 0; t < NT; ++t) {
        acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(g.x + t * g.ldx + k), acc[t][0]);
        acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(g.x + t * g.ldx + k + 8), acc[t][1]);
      }
    }
    for (int t = 0; t < NT; ++t) {
      float s = hsum8(_mm256_add_ps(acc[t][0], acc[t][1]));
      for (int64_t k = k16; k < K; ++k) s += g.x[t * g.ldx + k] * load_scalar<DT>(wp, k);
      float& o = g.out[t * g.ldo + r];
      o = g.accumulate ? o + s : s;
    }
  }
}

template <DType DT>
T256 void gemv_d(const GemvArgs& g) {
  switch (g.n) {
    case 1: gemv_t<DT, 1>(g); break;
    case 2: gemv_t<DT, 2>(g); break;
    case 3: gemv_t<DT, 3>(g); break;
    default: gemv_t<DT, 4>(g); break;
  }
}

T256 void gemv(const GemvArgs& g) {
  switch (g.dtype) {
    case DType::BF16: gemv_d<DType::BF16>(g); break;
    case DType::F16: gemv_d<DType::F16>(g); break;
    case DType::F32: gemv_d<DType::F32>(g); break;
  }
}

// ---- elementwise -----------------------------------------------------------------------------------

template <DType DT>
T256 void to_f32_t(const void* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<DT>(src, i));
  for (; i < n; ++i) dst[i] = load_scalar<DT>(src, i);
}

T256 void to_f32(const void* src, DType dt, int64_t n, float* dst) {
  switch (dt) {
    case DType::BF16: to_f32_t<DType::BF16>(src, n, dst); break;
    case DType::F16: to_f32_t<DType::F16>(src, n, dst); break;
    case DType::F32: to_f32_t<DType::F32>(src, n, dst); break;
  }
}

T256 void rms_norm_row(const float* x, const float* w, float* out, int dim, float eps) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int j = 0;
  for (; j + 16 <= dim; j += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);
    a0 = _mm256_fmadd_ps(x0, x0, a0);
    a1 = _mm256_fmadd_ps(x1, x1, a1);
  }
  double ss = double(hsum8(_mm256_add_ps(a0, a1)));
  for (; j < dim; ++j) ss += double(x[j]) * x[j];
  const float rs = float(1.0 / std::sqrt(ss / dim + double(eps)));
  const __m256 r = _mm256_set1_ps(rs);
  for (j = 0; j + 8 <= dim; j += 8)
    _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), r), _mm256_loadu_ps(w + j)));
  for (; j < dim; ++j) out[j] = x[j] * rs * w[j];
}

T256 void swiglu_row(const float* g, const float* u, float* out, int n) {
  const __m256 one = _mm256_set1_ps(1.f);
  for (int j = 0; j < n; j += 8) {
    const __m256i m = lane_mask(n - j);
    const __m256 gv = _mm256_maskload_ps(g + j, m);
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    const __m256 v = _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_maskload_ps(u + j, m));
    _mm256_maskstore_ps(out + j, m, v);
  }
}

T256 void add(float* x, const float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) x[i] += y[i];
}

T256 void rope_row(float* x, const float* c, const float* s, int n_heads, int head_dim) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h, x += head_dim)
    for (int j = 0; j < half; j += 8) {
      const __m256i m = lane_mask(half - j);
      const __m256 a = _mm256_maskload_ps(x + j, m), b = _mm256_maskload_ps(x + j + half, m);
      const __m256 cv = _mm256_maskload_ps(c + j, m), sv = _mm256_maskload_ps(s + j, m);
      _mm256_maskstore_ps(x + j, m, _mm256_sub_ps(_mm256_mul_ps(a, cv), _mm256_mul_ps(b, sv)));
      _mm256_maskstore_ps(x + j + half, m, _mm256_add_ps(_mm256_mul_ps(b, cv), _mm256_mul_ps(a, sv)));
    }
}

// ---- attention (see cpu_kernels_avx512.cpp; 8 keys per score vector) ---------------------------------

template <int RG, int DG>
T256 void pv_tile(const float* const* vrow, size_t off, int nt, const float* p, int ps, float* out, int hd, int d0,
                  __m256i mlast, bool first) {
  const __m256i all = _mm256_set1_epi32(-1);
  __m256 acc[RG][DG];
  for (int r = 0; r < RG; ++r)
    for (int c = 0; c < DG; ++c)
      acc[r][c] = first ? _mm256_setzero_ps() : _mm256_maskload_ps(out + r * hd + d0 + 8 * c, c == DG - 1 ? mlast : all);
  for (int t = 0; t < nt; ++t) {
    const float* vr = vrow[t] + off + d0;
    __m256 v[DG];
    for (int c = 0; c < DG; ++c) v[c] = _mm256_maskload_ps(vr + 8 * c, c == DG - 1 ? mlast : all);
    for (int r = 0; r < RG; ++r) {
      const __m256 pr = _mm256_broadcast_ss(p + r * ps + t);
      for (int c = 0; c < DG; ++c) acc[r][c] = _mm256_fmadd_ps(pr, v[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RG; ++r)
    for (int c = 0; c < DG; ++c) _mm256_maskstore_ps(out + r * hd + d0 + 8 * c, c == DG - 1 ? mlast : all, acc[r][c]);
}

template <int RG>
T256 void pv_rows(const float* const* vrow, size_t off, int nt, const float* p, int ps, float* out, int hd,
                  bool first) {
  for (int d0 = 0; d0 < hd; d0 += 16) {
    const int rem = hd - d0;
    if (rem > 8) {
      pv_tile<RG, 2>(vrow, off, nt, p, ps, out, hd, d0, lane_mask(rem - 8), first);
    } else {
      pv_tile<RG, 1>(vrow, off, nt, p, ps, out, hd, d0, lane_mask(rem), first);
    }
  }
}

T256 inline __m256 qk8(const float* q, const float* const* kp, size_t off, int hd) {
  __m256 acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
  int d = 0;
  for (; d + 8 <= hd; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kp[i] + off + d), acc[i]);
  }
  if (d < hd) {
    const __m256i m = lane_mask(hd - d);
    const __m256 qv = _mm256_maskload_ps(q + d, m);
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(qv, _mm256_maskload_ps(kp[i] + off + d, m), acc[i]);
  }
  return reduce8(acc);
}

T256 void attention(const AttnTaskArgs& a) {
  const int hd = a.head_dim, half = hd / 2, parts = a.imag ? 2 : 1;
  const int rows_g = a.group * parts, n_g = a.g1 - a.g0, rows = n_g * rows_g;
  const int kb = a.key_begin, ke = a.key_end, nk = ke - kb;
  const int ns = (nk + 7) / 8 * 8;
  float* qrows = a.scratch;
  float* scores = a.scratch + ((size_t(rows) * hd + 15) / 16 * 16);
  for (int r = 0; r < rows; ++r) {
    const float* q = a.q + size_t(r / parts) * hd;
    float* dst = qrows + size_t(r) * hd;
    if (r % parts == 0) {
      for (int j = 0; j < hd; ++j) dst[j] = q[j];
    } else {
      for (int j = 0; j < half; ++j) dst[j] = q[j + half], dst[j + half] = -q[j];
    }
  }
  const size_t g_stride = size_t(a.block_size) * hd;
  const size_t g0_off = size_t(a.g0) * g_stride;
  const __m256 scale = _mm256_set1_ps(a.scale);
  for (int t0 = kb; t0 < ke; t0 += 8) {
    const float* kp[8];
    for (int i = 0; i < 8; ++i) {
      const int t = t0 + i < ke ? t0 + i : t0;
      kp[i] = a.k + size_t(a.table[t / a.block_size]) * a.block_stride + g0_off + size_t(t % a.block_size) * hd;
    }
    const __m256 valid = _mm256_castsi256_ps(lane_mask(ke - t0));
    for (int r = 0; r < rows; ++r) {
      const __m256 s = _mm256_mul_ps(qk8(qrows + size_t(r) * hd, kp, size_t(r / rows_g) * g_stride, hd), scale);
      _mm256_storeu_ps(scores + size_t(r) * ns + (t0 - kb), _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), s, valid));
    }
  }
  for (int r = 0; r < rows; ++r) {
    float* s = scores + size_t(r) * ns;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int t = 0; t < ns; t += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + t));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float mf = _mm_cvtss_f32(m4);
    const __m256 m = _mm256_set1_ps(mf);
    __m256 sum = _mm256_setzero_ps();
    for (int t = 0; t < ns; t += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), m));
      _mm256_storeu_ps(s + t, e);
      sum = _mm256_add_ps(sum, e);
    }
    const float l = hsum8(sum);
    if (a.ml) {
      a.ml[2 * r] = mf, a.ml[2 * r + 1] = l;
    } else {
      const __m256 inv = _mm256_set1_ps(float(1.0 / double(l)));
      for (int t = 0; t < ns; t += 8) _mm256_storeu_ps(s + t, _mm256_mul_ps(_mm256_loadu_ps(s + t), inv));
    }
  }
  constexpr int kTb = 32;
  for (int t0 = kb; t0 < ke; t0 += kTb) {
    const int nt = ke - t0 < kTb ? ke - t0 : kTb;
    const float* vrow[kTb];
    for (int i = 0; i < nt; ++i) {
      const int t = t0 + i;
      vrow[i] = a.v + size_t(a.table[t / a.block_size]) * a.block_stride + g0_off + size_t(t % a.block_size) * hd;
    }
    for (int g = 0; g < n_g; ++g)
      for (int r0 = g * rows_g; r0 < (g + 1) * rows_g; r0 += 4) {
        const int rg = (g + 1) * rows_g - r0 < 4 ? (g + 1) * rows_g - r0 : 4;
        const float* p = scores + size_t(r0) * ns + (t0 - kb);
        float* o = a.out + size_t(r0) * hd;
        const size_t off = size_t(g) * g_stride;
        switch (rg) {
          case 4: pv_rows<4>(vrow, off, nt, p, ns, o, hd, t0 == kb); break;
          case 3: pv_rows<3>(vrow, off, nt, p, ns, o, hd, t0 == kb); break;
          case 2: pv_rows<2>(vrow, off, nt, p, ns, o, hd, t0 == kb); break;
          default: pv_rows<1>(vrow, off, nt, p, ns, o, hd, t0 == kb); break;
        }
      }
  }
}

}  // namespace

const Kernels& kernels_avx2() {
  static const Kernels k{Isa::Avx2, kMr, kNr, pack_a, pack_b, gemm_tile, gemv, to_f32,
                         rms_norm_row, swiglu_row, add, rope_row, attention};
  return k;
}

}  // namespace ropepp::cpu
