// cpu_kernels.h: the CPU backend's inner kernels, one table per instruction set.
//
// Three implementations of the same table, picked at RUN TIME (the binary is built for baseline x86-64):
//   scalar  cpu_kernels_scalar.cpp   portable C++, the reference the others are tested against
//   avx2    cpu_kernels_avx2.cpp     AVX2 + FMA + F16C intrinsics (per-function target attributes)
//   avx512  cpu_kernels_avx512.cpp   AVX-512 F/BW/VL intrinsics
// select_isa() takes the best the CPU supports; ROPEPP_CPU_ISA=scalar|avx2|avx512 forces one (an unknown
// or unsupported value is an Error). Every kernel computes in fp32 with fp32 accumulation from weights
// converted exactly (bf16/f16 → fp32), so all paths agree to rounding (tests/test_cpu_kernels.cpp).
//
// The kernels are single-threaded pieces; backend_cpu.cpp splits the work over threads.
//
// GEMM (prefill): out[m, n] = x[m, k] · W[n, k]ᵀ, Goto style with a register-blocked micro-kernel:
//   pack_a  : x rows [MR of them] → apack [K][MR] (rows past m zero)            (once per op, shared)
//   pack_b  : W rows [NR of them], cols [k0, k0+kc) → bpack [kc][NR] fp32 (bf16/f16 converted here)
//   gemm_tile: out[MR × NR tile] (+)= apack[k0 .. k0+kc) · bpack                 (MR×NR accumulators)
// GEMV (decode, ≤ kGemvMaxTokens rows of x): streams W once, converting in registers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common.h"

namespace ropepp::cpu {

enum class Isa { Scalar, Avx2, Avx512 };

const char* isa_name(Isa isa);
bool isa_supported(Isa isa);   // the CPU (and OS) can run it
Isa best_isa();                // the best supported
// ROPEPP_CPU_ISA (scalar|avx2|avx512) if set, else best_isa(). Error on an unknown or unsupported value.
Isa select_isa();

constexpr int kGemvMaxTokens = 4;

struct PackBArgs {
  const void* w;      // [rows, ld] of dtype
  DType dtype;
  int64_t ld;         // elements per W row (= K)
  int64_t rows;       // rows of W (rows past it are packed as zeros)
  int64_t j0;         // first row of the panel
  int64_t k0;         // first column
  int kc;             // columns
  float* dst;         // [kc][NR]
};

struct GemmTileArgs {
  const float* a;     // apack of the tile at column k0: [kc][MR] (row stride MR)
  const float* b;     // bpack: [kc][NR]
  int kc;
  float* c;           // out tile origin: [m_valid, n_valid] with row stride ldc
  int64_t ldc;
  int m_valid;        // ≤ MR
  int n_valid;        // ≤ NR
  bool accumulate;    // c += … (else c = …)
};

struct GemvArgs {
  const float* x;     // [n, ldx]
  int64_t ldx;
  int n;              // 1 .. kGemvMaxTokens
  const void* w;      // [rows, k] of dtype
  DType dtype;
  int64_t k;
  int64_t r0, r1;     // rows of W (output columns) to compute
  float* out;         // [n, ldo]; columns r0 .. r1 written
  int64_t ldo;
  bool accumulate = false;  // out += x · Wᵀ (else out = …)
};

// Attention of one token over keys [key_begin, key_end) of its sequence in the paged cache, for kv heads
// [g0, g1): each kv head's q heads (and with imag their imaginary twins, = −rot(q)) are scored against
// each key as it is read. The loops run key block by key block with the kv heads inside, so the cache
// is read in address order (layout [block][kv head][slot][dim]). Output rows, per kv head g and its
// q head h (local) and part: r = ((g − g0)·group + h)·parts + part — the o_proj input order.
// With ml == nullptr the keys are the whole causal range and out is the softmax-weighted sum of V;
// otherwise (split over key ranges) out = Σ e^(s − m) · v unnormalised, and ml[r] = {m, Σ e^(s − m)}
// for the caller to merge the ranges.
struct AttnTaskArgs {
  const float* q;         // [(g1 − g0)·group, head_dim]: the token's q heads g0·group ..
  float* out;             // [(g1 − g0)·group·parts, head_dim] packed
  float* ml;              // nullptr, or [(g1 − g0)·group·parts][2]
  const float* k;         // layer base of the K cache: [n_blocks, n_kv_heads, block_size, head_dim]
  const float* v;         // layer base of the V cache (same layout)
  const int32_t* table;   // the sequence's block table: physical block of each logical block
  size_t block_stride;    // floats per block (n_kv_heads · block_size · head_dim)
  int block_size;
  int g0, g1;             // kv heads
  int key_begin, key_end; // keys (positions) of this task, key_begin < key_end
  int group;              // q heads per kv head
  bool imag;
  int head_dim;
  float scale;
  float* scratch;         // ≥ attn_scratch_floats(...)
};
inline size_t attn_scratch_floats(int n_kv, int group, bool imag, int head_dim, int n_keys) {
  const size_t rows = size_t(n_kv) * group * (imag ? 2 : 1);
  return rows * size_t(head_dim) + rows * (size_t(n_keys) + 16) + 64;
}

struct Kernels {
  Isa isa;
  int mr;   // GEMM micro-tile rows (tokens)
  int nr;   // GEMM micro-tile columns (output features)

  void (*pack_a)(const float* x, int64_t ldx, int m, int64_t k, float* dst);  // dst [k][mr]
  void (*pack_b)(const PackBArgs& a);
  void (*gemm_tile)(const GemmTileArgs& a);
  void (*gemv)(const GemvArgs& a);

  void (*to_f32)(const void* src, DType dt, int64_t n, float* dst);            // n elements
  // out = x * rsqrt(mean(x²) + eps) * w   (x and out may alias)
  void (*rms_norm_row)(const float* x, const float* w, float* out, int dim, float eps);
  void (*swiglu_row)(const float* gate, const float* up, float* out, int n);  // silu(gate) * up
  void (*add)(float* x, const float* y, int64_t n);                            // x += y
  // rotate_half RoPE of n_heads heads in place, one token: cos/sin [head_dim/2] of its position
  void (*rope_row)(float* x, const float* cos, const float* sin, int n_heads, int head_dim);
  void (*attention)(const AttnTaskArgs& a);
};

const Kernels& kernels(Isa isa);  // Error if isa is not supported by this CPU

// The per-ISA tables (each defined in its own file; only call the ones isa_supported() allows).
const Kernels& kernels_scalar();
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();

}  // namespace ropepp::cpu

namespace ropepp {
class Backend;
// The CPU backend on a given instruction set (make_cpu_backend uses select_isa()).
std::unique_ptr<Backend> make_cpu_backend_isa(int n_threads, cpu::Isa isa);
}  // namespace ropepp
