// cpu_kernels_avx512.cpp: the AVX-512 (F/BW/VL) implementation of cpu_kernels.h.
//
// Every function that uses AVX-512 carries the T512 target attribute and lives in an anonymous namespace,
// so nothing here is compiled for AVX-512 unless it is only reachable through kernels_avx512(), which the
// backend calls only after isa_supported(Isa::Avx512). No std:: templates are instantiated inside them
// (a template instantiated with AVX-512 code could be picked by the linker for baseline callers).
//
// GEMM micro-kernel: 12 tokens × 32 output features = 24 zmm accumulators; per k one 32-wide row of the
// packed fp32 weight panel (2 loads) and 12 broadcasts of the packed activations (embedded broadcasts).
// GCC 12 warns about the _mm*_undefined_* placeholders inside its own intrinsic headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>

#include "cpu_kernels.h"

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

namespace ropepp::cpu {
namespace {

constexpr int kMr = 12;
constexpr int kNr = 32;

T512 inline __mmask16 tail_mask(int n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }

// 16 weights from element i of a row, converted to fp32 (masked lanes are zero and not read).
template <DType DT>
T512 inline __m512 load16(const void* base, int64_t i) {
  if constexpr (DT == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i));
    if constexpr (DT == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
  }
}
template <DType DT>
T512 inline __m512 load16_mask(const void* base, int64_t i, __mmask16 m) {
  if constexpr (DT == DType::F32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + i);
    if constexpr (DT == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
  }
}

// exp(x) for fp32 lanes: n = round(x·log2 e), r = x − n·ln 2 (two-step), e^r by a degree-7 Taylor polynomial
// (|r| ≤ ln2/2: truncation < 6e-9 relative), then · 2^n with scalef (which also underflows to 0 cleanly).
T512 inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// In-register 16×16 transpose of fp32 rows r[0..15].
T512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

// Lane i of the result = horizontal sum of a[i] (16 vectors → one vector of 16 sums). reduce16_from8 takes
// the first level done: v[p] = [a[2p] lanes 0–7 + 8–15 | a[2p+1] likewise].
T512 inline __attribute__((always_inline)) __m512 reduce16_from8(const __m512 v[8]) {
  __m512 w[4], u[2];
  for (int p = 0; p < 4; ++p)
    w[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int p = 0; p < 2; ++p)
    u[p] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // lane 4c + j holds key c + 4j
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(idx, z);
}

T512 inline __m512 reduce16(const __m512 a[16]) {
  __m512 v[8];
  for (int p = 0; p < 8; ++p)
    v[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return reduce16_from8(v);
}

// ---- GEMM ------------------------------------------------------------------------------------------

T512 void pack_a(const float* x, int64_t ldx, int m, int64_t k, float* dst) {
  int64_t kk = 0;
  if (m == kMr) {
    // 16 columns at a time: 12 row loads, transposed through a 16×16 block (rows 12..15 unused).
    for (; kk + 16 <= k; kk += 16) {
      __m512 r[16];
      for (int i = 0; i < kMr; ++i) r[i] = _mm512_loadu_ps(x + i * ldx + kk);
      for (int i = kMr; i < 16; ++i) r[i] = _mm512_setzero_ps();
      transpose16(r);
      for (int c = 0; c < 16; ++c)
        _mm512_mask_storeu_ps(dst + (kk + c) * kMr, __mmask16((1u << kMr) - 1u), r[c]);
    }
  }
  for (; kk < k; ++kk)
    for (int i = 0; i < kMr; ++i) dst[kk * kMr + i] = i < m ? x[i * ldx + kk] : 0.f;
}

template <DType DT>
T512 void pack_b_t(const PackBArgs& a) {
  const int64_t valid = a.rows - a.j0;  // rows of the panel that exist (may exceed kNr)
  for (int half = 0; half < 2; ++half) {
    const void* rowp[16];
    bool ok[16];
    for (int i = 0; i < 16; ++i) {
      const int64_t j = half * 16 + i;
      ok[i] = j < valid;
      rowp[i] = static_cast<const char*>(a.w) + ((ok[i] ? a.j0 + j : 0) * a.ld + a.k0) * int64_t(dtype_size(DT));
    }
    for (int kk = 0; kk < a.kc; kk += 16) {
      const int n = a.kc - kk < 16 ? a.kc - kk : 16;
      const __mmask16 m = tail_mask(n);
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = ok[i] ? (n == 16 ? load16<DT>(rowp[i], kk) : load16_mask<DT>(rowp[i], kk, m)) : _mm512_setzero_ps();
      transpose16(r);
      for (int c = 0; c < n; ++c) _mm512_store_ps(a.dst + (kk + c) * kNr + half * 16, r[c]);
    }
  }
}

T512 void pack_b(const PackBArgs& a) {
  switch (a.dtype) {
    case DType::BF16: pack_b_t<DType::BF16>(a); break;
    case DType::F16: pack_b_t<DType::F16>(a); break;
    case DType::F32: pack_b_t<DType::F32>(a); break;
  }
}

T512 void gemm_tile(const GemmTileArgs& g) {
  __m512 c0[kMr], c1[kMr];
#pragma GCC unroll 12
  for (int i = 0; i < kMr; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  const float* a = g.a;
  const float* b = g.b;
#pragma GCC unroll 2
  for (int k = 0; k < g.kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMr; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
    }
    a += kMr;
    b += kNr;
  }
  const __mmask16 m0 = tail_mask(g.n_valid), m1 = tail_mask(g.n_valid - 16 > 0 ? g.n_valid - 16 : 0);
  if (g.n_valid == kNr) {
#pragma GCC unroll 12
    for (int i = 0; i < kMr; ++i) {
      if (i >= g.m_valid) break;
      float* c = g.c + i * g.ldc;
      if (g.accumulate) {
        c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(c));
        c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(c + 16));
      }
      _mm512_storeu_ps(c, c0[i]);
      _mm512_storeu_ps(c + 16, c1[i]);
    }
  } else {
#pragma GCC unroll 12
    for (int i = 0; i < kMr; ++i) {
      if (i >= g.m_valid) break;
      float* c = g.c + i * g.ldc;
      if (g.accumulate) {
        c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, c));
        c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, c + 16));
      }
      _mm512_mask_storeu_ps(c, m0, c0[i]);
      _mm512_mask_storeu_ps(c + 16, m1, c1[i]);
    }
  }
}

// ---- GEMV: one weight row at a time (one sequential stream: measurably faster than interleaving rows),
// two accumulators per token; W is read once for all NT tokens ------------------------------------------

template <DType DT, int NT>
T512 void gemv_t(const GemvArgs& g) {
  const int64_t K = g.k, esz = int64_t(dtype_size(DT));
  const int64_t k32 = K / 32 * 32;
  for (int64_t r = g.r0; r < g.r1; ++r) {
    const char* wp = static_cast<const char*>(g.w) + r * K * esz;
    __m512 acc[NT][2];
    for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k < k32; k += 32) {
      const __m512 w0 = load16<DT>(wp, k), w1 = load16<DT>(wp, k + 16);
      for (int t = 0; t < NT; ++t) {
        acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(g.x + t * g.ldx + k), acc[t][0]);
        acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(g.x + t * g.ldx + k + 16), acc[t][1]);
      }
    }
    for (; k < K; k += 16) {
      const __mmask16 m = tail_mask(int(K - k));
      const __m512 w0 = load16_mask<DT>(wp, k, m);
      for (int t = 0; t < NT; ++t)
        acc[t][0] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, g.x + t * g.ldx + k), acc[t][0]);
    }
    for (int t = 0; t < NT; ++t) {
      const float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
      float& o = g.out[t * g.ldo + r];
      o = g.accumulate ? o + s : s;
    }
  }
}

template <DType DT>
T512 void gemv_d(const GemvArgs& g) {
  switch (g.n) {
    case 1: gemv_t<DT, 1>(g); break;
    case 2: gemv_t<DT, 2>(g); break;
    case 3: gemv_t<DT, 3>(g); break;
    default: gemv_t<DT, 4>(g); break;
  }
}

T512 void gemv(const GemvArgs& g) {
  switch (g.dtype) {
    case DType::BF16: gemv_d<DType::BF16>(g); break;
    case DType::F16: gemv_d<DType::F16>(g); break;
    case DType::F32: gemv_d<DType::F32>(g); break;
  }
}

// ---- elementwise -----------------------------------------------------------------------------------

template <DType DT>
T512 void to_f32_t(const void* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16<DT>(src, i));
  if (i < n) {
    const __mmask16 m = tail_mask(int(n - i));
    _mm512_mask_storeu_ps(dst + i, m, load16_mask<DT>(src, i, m));
  }
}

T512 void to_f32(const void* src, DType dt, int64_t n, float* dst) {
  switch (dt) {
    case DType::BF16: to_f32_t<DType::BF16>(src, n, dst); break;
    case DType::F16: to_f32_t<DType::F16>(src, n, dst); break;
    case DType::F32: to_f32_t<DType::F32>(src, n, dst); break;
  }
}

T512 void rms_norm_row(const float* x, const float* w, float* out, int dim, float eps) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int j = 0;
  for (; j + 32 <= dim; j += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + j), x1 = _mm512_loadu_ps(x + j + 16);
    a0 = _mm512_fmadd_ps(x0, x0, a0);
    a1 = _mm512_fmadd_ps(x1, x1, a1);
  }
  for (; j < dim; j += 16) {
    const __m512 x0 = _mm512_maskz_loadu_ps(tail_mask(dim - j), x + j);
    a0 = _mm512_fmadd_ps(x0, x0, a0);
  }
  const double ss = double(_mm512_reduce_add_ps(_mm512_add_ps(a0, a1)));
  const __m512 r = _mm512_set1_ps(float(1.0 / std::sqrt(ss / dim + double(eps))));
  for (j = 0; j < dim; j += 16) {
    const __mmask16 m = tail_mask(dim - j);
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), r), _mm512_maskz_loadu_ps(m, w + j));
    _mm512_mask_storeu_ps(out + j, m, v);
  }
}

T512 void swiglu_row(const float* g, const float* u, float* out, int n) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int j = 0; j < n; j += 16) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + j);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    const __m512 v = _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(m, u + j));
    _mm512_mask_storeu_ps(out + j, m, v);
  }
}

T512 void add(float* x, const float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 m = tail_mask(int(n - i));
    _mm512_mask_storeu_ps(x + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

T512 void rope_row(float* x, const float* c, const float* s, int n_heads, int head_dim) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h, x += head_dim)
    for (int j = 0; j < half; j += 16) {
      const __mmask16 m = tail_mask(half - j);
      const __m512 a = _mm512_maskz_loadu_ps(m, x + j), b = _mm512_maskz_loadu_ps(m, x + j + half);
      const __m512 cv = _mm512_maskz_loadu_ps(m, c + j), sv = _mm512_maskz_loadu_ps(m, s + j);
      _mm512_mask_storeu_ps(x + j, m, _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv)));
      _mm512_mask_storeu_ps(x + j + half, m, _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv)));
    }
}

// ---- attention -------------------------------------------------------------------------------------

// out[RG rows][d0 .. d0 + 16·DG) (+)= Σ_t p[r][t] · V[t] over nt keys (row t at vrow[t] + off); the last
// chunk masked by mlast.
template <int RG, int DG>
T512 void pv_tile(const float* const* vrow, size_t off, int nt, const float* p, int ps, float* out, int hd, int d0,
                  __mmask16 mlast, bool first) {
  __m512 acc[RG][DG];
  for (int r = 0; r < RG; ++r)
    for (int c = 0; c < DG; ++c) {
      const __mmask16 m = c == DG - 1 ? mlast : __mmask16(0xffff);
      acc[r][c] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, out + r * hd + d0 + 16 * c);
    }
  for (int t = 0; t < nt; ++t) {
    const float* vr = vrow[t] + off + d0;
    __m512 v[DG];
    for (int c = 0; c < DG; ++c)
      v[c] = c == DG - 1 ? _mm512_maskz_loadu_ps(mlast, vr + 16 * c) : _mm512_loadu_ps(vr + 16 * c);
    for (int r = 0; r < RG; ++r) {
      const __m512 pr = _mm512_set1_ps(p[r * ps + t]);
      for (int c = 0; c < DG; ++c) acc[r][c] = _mm512_fmadd_ps(pr, v[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RG; ++r)
    for (int c = 0; c < DG; ++c) {
      const __mmask16 m = c == DG - 1 ? mlast : __mmask16(0xffff);
      _mm512_mask_storeu_ps(out + r * hd + d0 + 16 * c, m, acc[r][c]);
    }
}

// All of head_dim in one pass for RG ≤ 2 rows (each V row read front to back: 2·8 accumulators),
// 64 columns at a time for more rows.
template <int RG>
T512 void pv_rows(const float* const* vrow, size_t off, int nt, const float* p, int ps, float* out, int hd,
                  bool first) {
  constexpr int kMaxDg = RG <= 2 ? 8 : 4;
  for (int d0 = 0; d0 < hd; d0 += 16 * kMaxDg) {
    const int rem = hd - d0;
    const int dg = rem >= 16 * kMaxDg ? kMaxDg : (rem + 15) / 16;
    const __mmask16 ml = tail_mask(rem - 16 * (dg - 1));
    switch (dg) {
      case 8: pv_tile<RG, (kMaxDg >= 8 ? 8 : 1)>(vrow, off, nt, p, ps, out, hd, d0, ml, first); break;
      case 7: pv_tile<RG, (kMaxDg >= 7 ? 7 : 1)>(vrow, off, nt, p, ps, out, hd, d0, ml, first); break;
      case 6: pv_tile<RG, (kMaxDg >= 6 ? 6 : 1)>(vrow, off, nt, p, ps, out, hd, d0, ml, first); break;
      case 5: pv_tile<RG, (kMaxDg >= 5 ? 5 : 1)>(vrow, off, nt, p, ps, out, hd, d0, ml, first); break;
      case 4: pv_tile<RG, 4>(vrow, off, nt, p, ps, out, hd, d0, ml, first); break;
      case 3: pv_tile<RG, 3>(vrow, off, nt, p, ps, out, hd, d0, ml, first); break;
      case 2: pv_tile<RG, 2>(vrow, off, nt, p, ps, out, hd, d0, ml, first); break;
      default: pv_tile<RG, 1>(vrow, off, nt, p, ps, out, hd, d0, ml, first); break;
    }
  }
}

// Scores of one row against 16 keys (rows at kp[i] + off): lane i = q · k_i. With head_dim ≤ 128 the q row
// stays in registers and each key row is read front to back (the cache is read in address order).
template <int NC>
T512 inline __m512 qk16_t(const float* q, const float* const* kp, size_t off, __mmask16 mhd) {
  __m512 qv[NC];
  for (int c = 0; c < NC; ++c) qv[c] = _mm512_maskz_loadu_ps(c == NC - 1 ? mhd : __mmask16(0xffff), q + 16 * c);
  // Keys two at a time, folded at once into the first level of reduce16 (fewer live registers).
  __m512 v[8];
  for (int p = 0; p < 8; ++p) {
    __m512 acc[2];
    for (int h = 0; h < 2; ++h) {
      const float* k = kp[2 * p + h] + off;
      acc[h] = _mm512_mul_ps(qv[0], NC == 1 ? _mm512_maskz_loadu_ps(mhd, k) : _mm512_loadu_ps(k));
      for (int c = 1; c < NC; ++c)
        acc[h] = _mm512_fmadd_ps(qv[c], c == NC - 1 ? _mm512_maskz_loadu_ps(mhd, k + 16 * c) : _mm512_loadu_ps(k + 16 * c),
                                 acc[h]);
    }
    v[p] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[0], acc[1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(acc[0], acc[1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return reduce16_from8(v);
}

T512 inline __m512 qk16(const float* q, const float* const* kp, size_t off, int nchunk, __mmask16 mhd) {
  switch (nchunk) {
    case 8: return qk16_t<8>(q, kp, off, mhd);
    case 7: return qk16_t<7>(q, kp, off, mhd);
    case 6: return qk16_t<6>(q, kp, off, mhd);
    case 5: return qk16_t<5>(q, kp, off, mhd);
    case 4: return qk16_t<4>(q, kp, off, mhd);
    case 3: return qk16_t<3>(q, kp, off, mhd);
    case 2: return qk16_t<2>(q, kp, off, mhd);
    case 1: return qk16_t<1>(q, kp, off, mhd);
    default: break;
  }
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < nchunk; ++c) {
    const __mmask16 m = c == nchunk - 1 ? mhd : __mmask16(0xffff);
    const __m512 qv = _mm512_maskz_loadu_ps(m, q + 16 * c);
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kp[i] + off + 16 * c), acc[i]);
  }
  return reduce16(acc);
}

T512 void attention(const AttnTaskArgs& a) {
  const int hd = a.head_dim, half = hd / 2, parts = a.imag ? 2 : 1;
  const int rows_g = a.group * parts, n_g = a.g1 - a.g0, rows = n_g * rows_g;
  const int kb = a.key_begin, ke = a.key_end, nk = ke - kb;
  const int ns = (nk + 15) / 16 * 16;  // score row stride
  float* qrows = a.scratch;                                          // [rows, hd]
  float* scores = a.scratch + ((size_t(rows) * hd + 15) / 16 * 16);  // [rows, ns]
  for (int r = 0; r < rows; ++r) {
    const float* q = a.q + size_t(r / parts) * hd;
    float* dst = qrows + size_t(r) * hd;
    if (r % parts == 0) {
      for (int j = 0; j < hd; ++j) dst[j] = q[j];
    } else {
      for (int j = 0; j < half; ++j) dst[j] = q[j + half], dst[j + half] = -q[j];
    }
  }
  const size_t g_stride = size_t(a.block_size) * hd;  // floats between kv heads within a block
  const size_t g0_off = size_t(a.g0) * g_stride;
  const int nchunk = (hd + 15) / 16;
  const __mmask16 mhd = tail_mask(hd - 16 * (nchunk - 1));
  const __m512 scale = _mm512_set1_ps(a.scale);

  // scores = scale · qrows · Kᵀ, 16 keys at a time, kv heads inside; padded lanes get −inf.
  for (int t0 = kb; t0 < ke; t0 += 16) {
    const float* kp[16];
    for (int i = 0; i < 16; ++i) {
      const int t = t0 + i < ke ? t0 + i : t0;
      kp[i] = a.k + size_t(a.table[t / a.block_size]) * a.block_stride + g0_off + size_t(t % a.block_size) * hd;
    }
    const __mmask16 valid = tail_mask(ke - t0);
    for (int r = 0; r < rows; ++r) {
      const __m512 s = _mm512_mul_ps(qk16(qrows + size_t(r) * hd, kp, size_t(r / rows_g) * g_stride, nchunk, mhd), scale);
      _mm512_storeu_ps(scores + size_t(r) * ns + (t0 - kb), _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY), s));
    }
  }
  // softmax per row (padded lanes: exp(−inf) = 0)
  for (int r = 0; r < rows; ++r) {
    float* s = scores + size_t(r) * ns;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int t = 0; t < ns; t += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + t));
    const float mf = _mm512_reduce_max_ps(mx);
    const __m512 m = _mm512_set1_ps(mf);
    __m512 sum = _mm512_setzero_ps();
    for (int t = 0; t < ns; t += 16) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), m));
      _mm512_storeu_ps(s + t, e);
      sum = _mm512_add_ps(sum, e);
    }
    const float l = _mm512_reduce_add_ps(sum);
    if (a.ml) {
      a.ml[2 * r] = mf, a.ml[2 * r + 1] = l;
    } else {
      const __m512 inv = _mm512_set1_ps(float(1.0 / double(l)));
      for (int t = 0; t < ns; t += 16) _mm512_storeu_ps(s + t, _mm512_mul_ps(_mm512_loadu_ps(s + t), inv));
    }
  }
  // out = P · V, kTb keys at a time, kv heads inside (the block's V rows stay in L1 across row groups)
  constexpr int kTb = 32;
  const int row_step = hd >= 128 ? 2 : 4;  // see pv_rows
  for (int t0 = kb; t0 < ke; t0 += kTb) {
    const int nt = ke - t0 < kTb ? ke - t0 : kTb;
    const float* vrow[kTb];
    for (int i = 0; i < nt; ++i) {
      const int t = t0 + i;
      vrow[i] = a.v + size_t(a.table[t / a.block_size]) * a.block_stride + g0_off + size_t(t % a.block_size) * hd;
    }
    for (int g = 0; g < n_g; ++g)
      for (int r0 = g * rows_g; r0 < (g + 1) * rows_g; r0 += row_step) {
        const int rg = (g + 1) * rows_g - r0 < row_step ? (g + 1) * rows_g - r0 : row_step;
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

const Kernels& kernels_avx512() {
  static const Kernels k{Isa::Avx512, kMr, kNr, pack_a, pack_b, gemm_tile, gemv, to_f32,
                         rms_norm_row, swiglu_row, add, rope_row, attention};
  return k;
}

}  // namespace ropepp::cpu
