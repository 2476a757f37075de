// decode_layers_persistent.cu: the persistent decode kernel (see decode_layers_persistent.cuh).
//
// Block layout: warps 0..7 consume (compute), warp 8 lane 0 produces (bulk copies of weight rows into the
// ring). The block's share of a matrix is a contiguous range of output units (a unit: one row, or the row pair
// of a fused epilogue), cut into stages of whole units; the producer and the consumers walk the same sequence
// of (layer, phase, stage), so a stage's slot and mbarrier phase follow from its index alone.
//
// Within a stage, warp w computes the dot products of rows r ≡ w (mod 8/ws) over its fixed column part
// (w mod ws of ws parts: ws > 1 when a stage holds fewer than 8 rows), with its part of the input vector
// held in registers for the whole phase; the partial sums meet in a shared-memory accumulator per output.
#include <algorithm>

#include "cuda_check.cuh"
#include "decode_layers_persistent.cuh"
#include "device_utils.cuh"
#include "mbarrier.cuh"
#include "rope_kv_append_paged.cuh"

namespace ropepp {
namespace {

constexpr int kConsumerWarps = 8;
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kThreads = kConsumers + 32;  // + the producer warp
constexpr int kStage = kDecodeLayersStageBytes;
constexpr int kHD = 128;                   // head_dim served
constexpr int kAccMax = 1024;              // outputs (units × rows per unit) of one block in one phase
constexpr int kMaxSegs = 8;                // 256-column segments of the input vector per lane (registers)
constexpr int kMaxStages = 8;
constexpr int kTile = 16;                  // attention: positions per warp and step (lanes l, l + 16 share one)

enum Phase { kQkv = 0, kO = 1, kGateUp = 2, kDown = 3, kAttn = 4 };  // matrix phases, then the attention

// One matrix phase: the block's rows of `w` [*, cols]. A unit is one row (pair == 0) or the rows
// (a, a + pair) with a = (u / pair)·2·pair + u % pair (RoPE: pair = head_dim/2 within each head; gate|up:
// pair = F, so a = u). A stage never crosses a pair group (`pair` units), so its rows are two contiguous runs.
struct Geom {
  const char* w;
  int cols;
  int units;
  int pair;  // 0: one row per unit
  __host__ __device__ int rows_per_unit() const { return pair ? 2 : 1; }
  __host__ __device__ size_t row_bytes() const { return size_t(cols) * 2; }
  __host__ __device__ int units_per_stage() const { return int(kStage / (rows_per_unit() * row_bytes())); }
  __host__ __device__ int first_row(int u) const { return pair ? (u / pair) * 2 * pair + u % pair : u; }
  // Column parts per row: enough that a full stage gives every consumer warp a (row, part).
  __host__ __device__ int col_parts() const {
    const int spr = cols / 256, rows = units_per_stage() * rows_per_unit();
    int ws = 1;
    while (ws < kConsumerWarps && rows * ws < kConsumerWarps && 2 * ws <= spr) ws *= 2;
    return ws;
  }
  __host__ __device__ int segs_per_part() const {
    const int spr = cols / 256, ws = col_parts();
    return (spr + ws - 1) / ws;
  }
};

__host__ __device__ inline int attn_heads(const DecodeLayersLaunch& p) { return p.n_q_heads * (p.imag ? 2 : 1); }
__host__ __device__ inline int rows_per_kv(const DecodeLayersLaunch& p) { return attn_heads(p) / p.n_kv_heads; }

__host__ __device__ inline Geom geom(const DecodeLayersLaunch& p, int layer, int phase) {
  const DecodeLayerWeights& L = p.layers[layer];
  switch (phase) {
    case kQkv:
      return {static_cast<const char*>(L.wqkv), p.hidden, (p.n_q_heads + 2 * p.n_kv_heads) * p.head_dim / 2,
              p.head_dim / 2};
    case kO: return {static_cast<const char*>(L.wo), attn_heads(p) * p.head_dim, p.hidden, 0};
    case kGateUp: return {static_cast<const char*>(L.w_gate_up), p.hidden, p.ffn, p.ffn};
    default: return {static_cast<const char*>(L.w_down), p.ffn, p.hidden, 0};
  }
}

__host__ __device__ inline void block_units(int units, int block, int n_blocks, int* ua, int* ub) {
  *ua = int(int64_t(block) * units / n_blocks);
  *ub = int(int64_t(block + 1) * units / n_blocks);
}

// Calls f(u, k) for each stage (k units from u) of the unit range [ua, ub).
template <class F>
__device__ __forceinline__ void for_each_stage(const Geom& g, int ua, int ub, F&& f) {
  const int per = g.units_per_stage();
  for (int u = ua; u < ub;) {
    int k = min(per, ub - u);
    if (g.pair) k = min(k, g.pair - u % g.pair);
    f(u, k);
    u += k;
  }
}

// Shared memory: [ring: stages × kStage][vec: vec_floats][q rows: 16 × 128][acc: kAccMax][own x rows: kAccMax]
// [rope: cos, sin of the token's position: 2 × 64][red: 32][bars]
struct Smem {
  int stages;
  size_t vec_floats;
  __host__ __device__ size_t vec_off() const { return size_t(stages) * kStage; }
  __host__ __device__ size_t q_off() const { return vec_off() + vec_floats * 4; }
  __host__ __device__ size_t acc_off() const { return q_off() + 16 * kHD * 4; }
  __host__ __device__ size_t xown_off() const { return acc_off() + kAccMax * 4; }
  __host__ __device__ size_t rope_off() const { return xown_off() + kAccMax * 4; }
  __host__ __device__ size_t red_off() const { return rope_off() + kHD * 4; }
  __host__ __device__ size_t bar_off() const { return red_off() + 32 * 4; }
  __host__ __device__ size_t bytes() const { return bar_off() + 2 * size_t(stages) * 8; }
};

__host__ __device__ inline size_t vec_floats_for(const DecodeLayersLaunch& p) {
  const size_t comb = size_t(kConsumerWarps) * rows_per_kv(p) * kDecodePartStride;  // per-warp partials
  size_t n = comb > size_t(p.hidden) ? comb : size_t(p.hidden);
  n = n > size_t(p.ffn) ? n : size_t(p.ffn);
  n = n > size_t(attn_heads(p)) * p.head_dim ? n : size_t(attn_heads(p)) * p.head_dim;
  return (n + 3) / 4 * 4;
}

// ---- named barrier, grid barrier (mbarrier and bulk copy: mbarrier.cuh) ------------------------------
// The consumer warps only (the producer never joins).
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers) : "memory"); }

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// All consumer threads of all blocks: their global writes before it are visible to all after it. `count` is
// the number of barriers this block has passed (the counter is zeroed before the launch). Release/acquire at
// gpu scope (as CUTLASS's grid barriers), no fence.sc: a full fence would also wait for this SM's bulk copies in
// flight, i.e. stall the weight stream at every barrier.
__device__ __forceinline__ void grid_sync(unsigned* counter, unsigned& count) {
  consumers_sync();
  ++count;
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(counter) : "memory");
    const unsigned target = count * gridDim.x;
    while (ld_acquire(counter) < target) {
    }
  }
  consumers_sync();
}

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

__device__ __forceinline__ unsigned atomic_add_acq_rel(unsigned* p, unsigned v) {
  unsigned old;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;\n" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

__device__ __forceinline__ float consumers_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  consumers_sync();
  if (lane == 0) red[warp] = v;
  consumers_sync();
  v = lane < kConsumerWarps ? red[lane] : 0.f;
  return warp_sum(v);
}

// ---- consumer side of a matrix phase -------------------------------------------------------------------
// The stage counter `it` is shared with the producer's walk (same sequence of stages).
template <class T>
__device__ __forceinline__ void consume_phase(const Geom& g, int ua, int ub, const float* vec, float* acc,
                                              char* ring, uint64_t* full, uint64_t* empty, int stages,
                                              unsigned& it) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ws = g.col_parts(), spr = g.cols / 256;
  const int part = warp % ws;
  const int s0 = part * spr / ws, s1 = (part + 1) * spr / ws;
  float xr[kMaxSegs][8];  // this lane's input elements of the warp's segments
#pragma unroll
  for (int i = 0; i < kMaxSegs; ++i) {
    const int s = s0 + i;
    if (s < s1) {
      const float4* xp = reinterpret_cast<const float4*>(vec + s * 256 + lane * 8);
      const float4 a = xp[0], b = xp[1];
      xr[i][0] = a.x, xr[i][1] = a.y, xr[i][2] = a.z, xr[i][3] = a.w;
      xr[i][4] = b.x, xr[i][5] = b.y, xr[i][6] = b.z, xr[i][7] = b.w;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) xr[i][e] = 0.f;
    }
  }
  const size_t rb = g.row_bytes();
  const int rpu = g.rows_per_unit();
  for_each_stage(g, ua, ub, [&](int u, int k) {
    const unsigned slot = it % unsigned(stages), round = it / unsigned(stages);
    mbar_wait(&full[slot], round & 1u);
    const char* st = ring + size_t(slot) * kStage;
    const int rows = k * rpu;
    for (int r = warp / ws; r < rows; r += kConsumerWarps / ws) {
      const uint4* wrow = reinterpret_cast<const uint4*>(st + size_t(r) * rb);
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < kMaxSegs; ++i) {
        if (s0 + i < s1) {
          float wf[8];
          x8_to_float(wrow[(s0 + i) * 32 + lane], wf, T{});
#pragma unroll
          for (int e = 0; e < 8; ++e) sum += wf[e] * xr[i][e];
        }
      }
      sum = warp_sum(sum);
      if (lane == 0) atomicAdd(&acc[(u - ua + r % k) * rpu + r / k], sum);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[slot]);
    ++it;
  });
  consumers_sync();  // acc complete
}

// vec = rms_norm(x) · w (all consumer threads). x (written by other blocks) and w are read in one pass, so
// the phase waits for one round trip to memory, not two.
__device__ __forceinline__ void load_normed(const float* x, const float* w, int n, float eps, float* vec, float* red) {
  float ss = 0.f;
#pragma unroll 4
  for (int i = threadIdx.x; i < n; i += kConsumers) {
    const float v = __ldcg(x + i);
    vec[i] = v * __ldg(w + i);
    ss += v * v;
  }
  const float r = rsqrtf(consumers_sum(ss, red) / float(n) + eps);
  for (int i = threadIdx.x; i < n; i += kConsumers) vec[i] *= r;
  consumers_sync();
}
__device__ __forceinline__ void load_vec(const float* src, int n, float* vec) {
#pragma unroll 4
  for (int i = threadIdx.x; i < n; i += kConsumers) vec[i] = __ldcg(src + i);
  consumers_sync();
}

// ---- attention phase -----------------------------------------------------------------------------------
// One halving step of reduce_scatter16: lanes with bit O set keep the upper O sums, the others the lower O.
// O is a template parameter so that every index is a compile-time constant (a loop `o >>= 1` was not unrolled
// and put the array in local memory: 377 ld/st.local per kernel).
template <int O>
__device__ __forceinline__ void halve(float (&v)[kTile], bool upper) {
#pragma unroll
  for (int i = 0; i < O; ++i) {
    const float send = upper ? v[i] : v[i + O];
    const float keep = upper ? v[i + O] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
  }
}
// Sums v[0..15] over the warp's lanes so that lanes l and l + 16 end with the total of v[l % 16] (recursive
// halving within each half-warp, then the two halves: 16 shuffles for 16 sums instead of 5 per sum).
__device__ __forceinline__ float reduce_scatter16(float (&v)[kTile]) {
  const int lane = threadIdx.x & 31;
  halve<8>(v, lane & 8);
  halve<4>(v, lane & 4);
  halve<2>(v, lane & 2);
  halve<1>(v, lane & 1);
  return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 16);
}

// Row (of head_dim elements) of (position, kv head kh) in one layer of the paged cache.
__device__ __forceinline__ int kv_row(const DecodeLayersLaunch& p, int pos, int kh) {
  const int blk = __ldg(p.block_table + pos / p.block_size);
  return (blk * p.n_kv_heads + kh) * p.block_size + pos % p.block_size;
}
__device__ __forceinline__ void f16x4(const uint2 u, float* f) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
}

// Each block takes work items (kv head, chunk); each warp 16-position tiles of the chunk, lanes l and l + 16
// owning the position t0 + l % 16 for the scores, lane l the dims 4l..4l+3 for K/V reads and the output.
// R = rows per kv head.
template <int R>
__device__ void attention_phase(const DecodeLayersLaunch& p, int layer, float* q_s, float* comb, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int len = __ldg(p.positions) + 1;
  const int parts = p.imag ? 2 : 1, group = p.n_q_heads / p.n_kv_heads;
  const __half* ck = p.cache_k + size_t(layer) * p.layer_stride;
  const __half* cv = p.cache_v + size_t(layer) * p.layer_stride;
  const float qscale = p.scale * kLog2e;
  const int items = p.n_kv_heads * p.n_chunks;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const int kh = item / p.n_chunks, c = item % p.n_chunks;
    const int begin = c * p.chunk, end = min(len, begin + p.chunk);
    // The cache rows of the warp's first tile, looked up while q loads (lane l: position t0 + l).
    const int t_first = begin + warp * kTile;
    unsigned next_row = t_first < end ? unsigned(kv_row(p, min(t_first + lane % kTile, end - 1), kh)) : 0u;
    // Query rows: row = j·parts + part for q head kh·group + j; part 1 is −rot(q) = cat(q[d/2:], −q[:d/2]).
    for (int idx = threadIdx.x; idx < R * kHD; idx += kConsumers) {
      const int row = idx / kHD, d = idx % kHD;
      const float* qh = p.qkv + size_t(kh * group + row / parts) * kHD;
      const float v = row % parts == 0 ? __ldcg(qh + d) : (d < kHD / 2 ? __ldcg(qh + d + kHD / 2) : -__ldcg(qh + d - kHD / 2));
      q_s[idx] = v * qscale;
    }
    consumers_sync();
    float o[R][4], m[R], l[R];  // q stays in shared memory (registers are short: 168 a thread)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      m[r] = neg_inf(), l[r] = 0.f;
#pragma unroll
      for (int e = 0; e < 4; ++e) o[r][e] = 0.f;
    }
#pragma unroll 1
    for (int t0 = t_first; t0 < end; t0 += kTile * kConsumerWarps) {
      const int n = min(kTile, end - t0);
      // Lanes l and l + 16 looked up the cache row of position t0 + l % 16; every lane reads its 4 dims of each
      // row. The next tile's rows are looked up now, while this tile's loads are in flight.
      const unsigned my_row = next_row;
      const int t_next = t0 + kTile * kConsumerWarps;
      next_row = t_next < end ? unsigned(kv_row(p, min(t_next + lane % kTile, end - 1), kh)) : 0u;
      uint2 kv[kTile];  // K of the tile's positions, then V
#pragma unroll
      for (int i = 0; i < kTile; ++i) {
        const unsigned row = __shfl_sync(0xffffffffu, my_row, i);
        kv[i] = i < n ? __ldcg(reinterpret_cast<const uint2*>(ck + size_t(row) * kHD) + lane) : make_uint2(0, 0);
      }
      const bool mine = lane % kTile < n;  // this lane's position (t0 + lane % 16) is in the tile
      float pr[R];  // this lane's position: score, then probability (lanes l, l + 16: the same position)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4 q = *reinterpret_cast<const float4*>(q_s + r * kHD + 4 * lane);
        float s[kTile];
#pragma unroll
        for (int i = 0; i < kTile; ++i) {
          float kf[4];
          f16x4(kv[i], kf);
          s[i] = q.x * kf[0] + q.y * kf[1] + q.z * kf[2] + q.w * kf[3];
        }
        const float score = reduce_scatter16(s);  // all lanes shuffle
        pr[r] = mine ? score : neg_inf();
      }
      asm volatile("" ::: "memory");  // V's loads after the scores: K and V live at once would spill
#pragma unroll
      for (int i = 0; i < kTile; ++i) {
        const unsigned row = __shfl_sync(0xffffffffu, my_row, i);
        kv[i] = i < n ? __ldcg(reinterpret_cast<const uint2*>(cv + size_t(row) * kHD) + lane) : make_uint2(0, 0);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float mn = fmaxf(m[r], warp_max(pr[r]));
        const float alpha = exp2f(m[r] - mn);
        pr[r] = exp2f(pr[r] - mn);
        l[r] = l[r] * alpha + warp_sum(lane < kTile ? pr[r] : 0.f);  // each position once
        m[r] = mn;
#pragma unroll
        for (int e = 0; e < 4; ++e) o[r][e] *= alpha;
      }
#pragma unroll
      for (int i = 0; i < kTile; ++i) {
        if (i < n) {
          float vf[4];
          f16x4(kv[i], vf);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const float pi = __shfl_sync(0xffffffffu, pr[r], i);
#pragma unroll
            for (int e = 0; e < 4; ++e) o[r][e] += pi * vf[e];
          }
        }
      }
    }
    // The 8 warps' partials -> one (m, l, o) per row for this item.
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float* dst = comb + (size_t(warp) * R + r) * kDecodePartStride;
#pragma unroll
      for (int e = 0; e < 4; ++e) dst[4 * lane + e] = o[r][e];
      if (lane == 0) dst[kHD] = m[r], dst[kHD + 1] = l[r];
    }
    consumers_sync();
    const bool direct = p.n_chunks == 1;
    for (int idx = threadIdx.x; idx < R * kHD; idx += kConsumers) {
      const int r = idx / kHD, d = idx % kHD;
      float M = neg_inf();
      for (int w = 0; w < kConsumerWarps; ++w) M = fmaxf(M, comb[(size_t(w) * R + r) * kDecodePartStride + kHD]);
      float L = 0.f, O = 0.f;
      if (M != neg_inf()) {
        for (int w = 0; w < kConsumerWarps; ++w) {
          const float* src = comb + (size_t(w) * R + r) * kDecodePartStride;
          const float f = exp2f(src[kHD] - M);
          L += src[kHD + 1] * f, O += src[d] * f;
        }
      }
      if (direct) {
        __stcg(p.att + size_t(kh * R + r) * kHD + d, O / L);
      } else {
        float* dst = p.part + ((size_t(kh) * p.n_chunks + c) * R + r) * kDecodePartStride;
        __stcg(dst + d, O);
        if (d == 0) __stcg(dst + kHD, M), __stcg(dst + kHD + 1, L);
      }
    }
    if (direct) {
      consumers_sync();  // comb is reused by the next item
      continue;
    }
    // The last block to finish a chunk of this kv head merges all its chunks.
    consumers_sync();
    if (threadIdx.x == 0) {
      const unsigned done = atomic_add_acq_rel(p.sync + 1 + kh, 1u);
      red[0] = done == unsigned(p.n_chunks - 1) ? 1.f : 0.f;
      if (done == unsigned(p.n_chunks - 1)) p.sync[1 + kh] = 0;  // ready for the next layer (two grid barriers away)
    }
    consumers_sync();
    if (red[0] != 0.f) {  // merge: per (chunk, row) weights 2^(m_c − M) first, then the outputs, loads batched
      float* wgt = comb;                          // [n_chunks, R]: m, then the weight (comb is free again)
      float* lw = comb + p.n_chunks * R;          // [n_chunks, R]: l
      float* lsum = comb + 2 * p.n_chunks * R;    // [R]
      const size_t cstride = size_t(R) * kDecodePartStride;
      const float* base = p.part + size_t(kh) * p.n_chunks * cstride;
      for (int t = threadIdx.x; t < p.n_chunks * R; t += kConsumers) {
        const float* src = base + t / R * cstride + (t % R) * kDecodePartStride + kHD;
        wgt[t] = __ldcg(src), lw[t] = __ldcg(src + 1);
      }
      consumers_sync();
      if (threadIdx.x < R) {
        const int r = threadIdx.x;
        float M = neg_inf();
        for (int cc = 0; cc < p.n_chunks; ++cc) M = fmaxf(M, wgt[cc * R + r]);
        float L = 0.f;
        for (int cc = 0; cc < p.n_chunks; ++cc) {
          const float m = wgt[cc * R + r];
          const float f = m == neg_inf() ? 0.f : exp2f(m - M);
          L += f * lw[cc * R + r];
          wgt[cc * R + r] = f;
        }
        lsum[r] = L;
      }
      consumers_sync();
      for (int idx = threadIdx.x; idx < R * kHD; idx += kConsumers) {
        const int r = idx / kHD, d = idx % kHD;
        const float* o = base + r * kDecodePartStride + d;
        float O = 0.f;
#pragma unroll 8
        for (int cc = 0; cc < p.n_chunks; ++cc) O += wgt[cc * R + r] * __ldcg(o + cc * cstride);
        __stcg(p.att + size_t(kh * R + r) * kHD + d, O / lsum[r]);
      }
    }
    consumers_sync();
  }
}

// ---- the kernel ----------------------------------------------------------------------------------------
template <class T, int R>
__global__ __launch_bounds__(kThreads, 1) void decode_layers_persistent(const __grid_constant__ DecodeLayersLaunch p,
                                                                        int stages) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) char smem[];
  const Smem sm{stages, vec_floats_for(p)};
  char* ring = smem;
  float* vec = reinterpret_cast<float*>(smem + sm.vec_off());
  float* q_s = reinterpret_cast<float*>(smem + sm.q_off());
  float* acc = reinterpret_cast<float*>(smem + sm.acc_off());
  float* red = reinterpret_cast<float*>(smem + sm.red_off());
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + sm.bar_off());
  uint64_t* empty = full + stages;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) mbar_init(&full[s], 1), mbar_init(&empty[s], kConsumerWarps);
    fence_mbarrier_init();
  }
  for (int i = threadIdx.x; i < kAccMax; i += kThreads) acc[i] = 0.f;
  __syncthreads();

  if (warp == kConsumerWarps) {  // producer: the block's weight rows of every layer, in consumption order
    if (lane != 0) return;
    unsigned it = 0;
    for (int layer = 0; layer < p.n_layers; ++layer)
      for (int ph = 0; ph < 4; ++ph) {
        const Geom g = geom(p, layer, ph);
        int ua, ub;
        block_units(g.units, blockIdx.x, gridDim.x, &ua, &ub);
        const size_t rb = g.row_bytes();
        for_each_stage(g, ua, ub, [&](int u, int k) {
          const unsigned slot = it % unsigned(stages), round = it / unsigned(stages);
          if (round > 0) mbar_wait(&empty[slot], (round - 1) & 1u);
          const unsigned run = unsigned(k * rb);
          mbar_expect_tx(&full[slot], run * g.rows_per_unit());
          char* dst = ring + size_t(slot) * kStage;
          const char* src = g.w + size_t(g.first_row(u)) * rb;
          bulk_copy(dst, src, run, &full[slot]);
          if (g.pair) bulk_copy(dst + run, src + size_t(g.pair) * rb, run, &full[slot]);
          ++it;
        });
      }
    return;
  }

  // consumers
  unsigned it = 0, barriers = 0;
  float* xown = reinterpret_cast<float*>(smem + sm.xown_off());  // the block's rows of x (it alone writes them)
  float* rope_cs = reinterpret_cast<float*>(smem + sm.rope_off());  // [64] cos, [64] sin of the token's position
  const int half = p.head_dim / 2;
  int own_a, own_b;  // x rows owned in the O and DOWN phases (both have `hidden` units)
  block_units(p.hidden, blockIdx.x, gridDim.x, &own_a, &own_b);
  // Per-step constants, read once: the token's position, its RoPE factors and cache slot, the block's x rows.
  const int pos = __ldg(p.positions);
  long long slot = -1;
  {
    const int blk = __ldg(p.block_table + pos / p.block_size);
    if (blk >= 0 && blk < p.n_blocks)
      slot = (static_cast<long long>(blk) * p.n_kv_heads * p.block_size + pos % p.block_size) * p.head_dim;
  }
  for (int i = threadIdx.x; i < half; i += kConsumers) {
    rope_cs[i] = __ldg(p.cos + size_t(pos) * half + i);
    rope_cs[half + i] = __ldg(p.sin + size_t(pos) * half + i);
  }
  for (int i = threadIdx.x; i < own_b - own_a; i += kConsumers) xown[i] = __ldcg(p.x + own_a + i);
  consumers_sync();
  const bool tracing = p.trace && blockIdx.x == 0 && threadIdx.x == 0;
  unsigned long long t_last = tracing ? global_ns() : 0;
  auto mark = [&](int k) {
    if (!tracing) return;
    const unsigned long long now = global_ns();
    atomicAdd(p.trace + k, now - t_last);
    t_last = now;
  };
  if (tracing) atomicAdd(p.trace + 10, 1ull);
  auto sync_before = [&](int phase) {
    grid_sync(p.sync, barriers);
    mark(5 + phase);
  };
  // x += acc on the owned rows (O and DOWN): no read of x from memory.
  auto add_to_x = [&]() {
    for (int i = threadIdx.x; i < own_b - own_a; i += kConsumers) {
      xown[i] += acc[i];
      __stcg(p.x + own_a + i, xown[i]);
      acc[i] = 0.f;
    }
  };
  for (int layer = 0; layer < p.n_layers; ++layer) {
    const DecodeLayerWeights& L = p.layers[layer];
    // One matrix phase: the input vector into `vec`, the block's rows streamed through the ring, the epilogue.
    auto matrix_phase = [&](int ph, auto&& load, auto&& epilogue) {
      const Geom g = geom(p, layer, ph);
      int ua, ub;
      block_units(g.units, blockIdx.x, gridDim.x, &ua, &ub);
      load(g);
      consume_phase<T>(g, ua, ub, vec, acc, ring, full, empty, stages, it);
      epilogue(ua, ub);
      mark(ph);
    };
    auto normed = [&](const float* w) { return [&, w](const Geom&) { load_normed(p.x, w, p.hidden, p.eps, vec, red); }; };
    auto plain = [&](const float* src) { return [&, src](const Geom& g) { load_vec(src, g.cols, vec); }; };
    auto to_x = [&](int, int) { add_to_x(); };
    // QKV: RMSNorm, Wq|Wk|Wv row pairs, RoPE, k and v into the cache
    if (layer > 0) sync_before(kQkv);
    matrix_phase(kQkv, normed(L.attn_norm), [&](int ua, int ub) {
      __half* ck = p.cache_k + size_t(layer) * p.layer_stride;
      __half* cv = p.cache_v + size_t(layer) * p.layer_stride;
      for (int i = threadIdx.x; i < ub - ua; i += kConsumers) {
        const int u = ua + i, j = u % half;
        store_rotated_pair(p.n_q_heads, p.n_kv_heads, p.block_size, p.head_dim, u / half, j, acc[2 * i],
                           acc[2 * i + 1], rope_cs[j], rope_cs[half + j], p.qkv, ck, cv, slot);
        acc[2 * i] = 0.f, acc[2 * i + 1] = 0.f;
      }
    });
    sync_before(kAttn);
    attention_phase<R>(p, layer, q_s, vec, red);
    mark(kAttn);
    sync_before(kO);
    matrix_phase(kO, plain(p.att), to_x);  // x += Wo · att
    sync_before(kGateUp);
    matrix_phase(kGateUp, normed(L.ffn_norm), [&](int ua, int ub) {  // act = silu(gate) · up
      for (int i = threadIdx.x; i < ub - ua; i += kConsumers) {
        __stcg(p.act + ua + i, silu(acc[2 * i]) * acc[2 * i + 1]);
        acc[2 * i] = 0.f, acc[2 * i + 1] = 0.f;
      }
    });
    sync_before(kDown);
    matrix_phase(kDown, plain(p.act), to_x);  // x += Wdown · act
  }
#endif
}

// The kernel instance for p's weight type and rows per kv head, with its shared-memory limit raised to the
// opt-in maximum once (kernel attributes are per instance; the first run of a step is eager, before any capture).
template <class T, int R>
const void* prepared_kernel() {
  static const bool raised = [] {
    int dev = 0, max_smem = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CUDA_CHECK(cudaFuncSetAttribute(decode_layers_persistent<T, R>, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem));
    CUDA_CHECK(cudaFuncSetAttribute(decode_layers_persistent<T, R>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                    int(cudaSharedmemCarveoutMaxShared)));
    return true;
  }();
  (void)raised;
  return reinterpret_cast<const void*>(decode_layers_persistent<T, R>);
}

template <class T>
const void* kernel_for_type(int r) {
  switch (r) {
    case 1: return prepared_kernel<T, 1>();
    case 2: return prepared_kernel<T, 2>();
    case 4: return prepared_kernel<T, 4>();
    default: return prepared_kernel<T, 8>();
  }
}
const void* kernel_for(const DecodeLayersLaunch& p) {
  return p.w_type == HalfType::F16 ? kernel_for_type<f16>(rows_per_kv(p)) : kernel_for_type<bf16>(rows_per_kv(p));
}

}  // namespace

bool plan_decode_layers(const DecodeLayersLaunch& p, int num_sms, int max_smem, int max_stages, int max_pos,
                        DecodeLayersPlan* plan, const char** why) {
  auto no = [&](const char* reason) {
    *why = reason;
    return false;
  };
  if (p.head_dim != kHD) return no("head_dim is not 128");
  if (p.n_layers < 1 || p.n_layers > kDecodeLayersMaxLayers) return no("more than 64 layers");
  if (p.n_kv_heads < 1 || p.n_q_heads % p.n_kv_heads != 0) return no("n_q_heads is not a multiple of n_kv_heads");
  const int R = rows_per_kv(p);
  if (R != 1 && R != 2 && R != 4 && R != 8) return no("attention rows per kv head not 1, 2, 4 or 8");
  for (int ph = 0; ph < 4; ++ph) {
    const Geom g = geom(p, 0, ph);
    if (g.cols % 256 != 0) return no("a matrix's columns are not a multiple of 256");
    if (g.units_per_stage() < 1) return no("a weight row (pair) is larger than a ring stage");
    if (g.segs_per_part() > kMaxSegs) return no("too many columns per warp");
    if (size_t(g.units + num_sms - 1) / num_sms * g.rows_per_unit() > kAccMax)
      return no("too many output rows per block");
  }
  Smem sm{0, vec_floats_for(p)};
  const size_t fixed = sm.bytes();
  int stages = int(std::min<size_t>(kMaxStages, (size_t(max_smem) - std::min(fixed + 16 * kMaxStages, size_t(max_smem))) / kStage));
  if (max_stages > 0) stages = std::min(stages, max_stages);
  if (stages < 2) return no("fewer than two ring stages (shared memory, or ROPEPP_CUDA_PERSISTENT_STAGES)");
  sm.stages = stages;
  int per_sm = 0;  // every block must be resident at once (grid barriers)
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel_for(p), kThreads, sm.bytes()) != cudaSuccess) {
    cudaGetLastError();
    return no("occupancy query failed");
  }
  if (per_sm < 1) return no("a block does not fit on an SM");
  // Attention work items: chunks of at least 32 positions per consumer warp (two tiles; a shorter context is one
  // chunk per kv head: no merge across blocks), at most one item per SM.
  const int len = max_pos + 1;
  constexpr int kMinChunk = 2 * kTile * kConsumerWarps;
  int n_chunks = std::max(1, std::min(num_sms / p.n_kv_heads, (len + kMinChunk - 1) / kMinChunk));
  const int chunk = ((len + n_chunks - 1) / n_chunks + 31) / 32 * 32;
  n_chunks = (len + chunk - 1) / chunk;
  plan->grid = num_sms;
  plan->stages = stages;
  plan->smem = sm.bytes();
  plan->chunk = chunk;
  plan->n_chunks = n_chunks;
  plan->part_floats = size_t(p.n_kv_heads) * n_chunks * R * kDecodePartStride;
  plan->sync_words = size_t(1 + p.n_kv_heads);
  *why = nullptr;
  return true;
}

bool decode_layers_available() {
  int dev = 0;
  cudaDeviceProp prop{};
  cudaFuncAttributes attr{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess ||
      cudaFuncGetAttributes(&attr, decode_layers_persistent<f16, 2>) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return prop.major >= 9 && attr.binaryVersion >= 90;  // the kernel body is compiled for sm_90 and up only
}

void launch_decode_layers(const DecodeLayersLaunch& p, const DecodeLayersPlan& plan, cudaStream_t stream) {
  CUDA_CHECK(cudaMemsetAsync(p.sync, 0, plan.sync_words * sizeof(unsigned), stream));
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeCooperative;  // all blocks resident at once (grid barriers), or the launch fails
  attr.val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(plan.grid);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = plan.smem;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  void* args[] = {const_cast<DecodeLayersLaunch*>(&p), const_cast<int*>(&plan.stages)};
  CUDA_CHECK(cudaLaunchKernelExC(&cfg, kernel_for(p), args));
}

}  // namespace ropepp
