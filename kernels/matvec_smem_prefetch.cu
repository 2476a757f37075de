// matvec_smem_prefetch.cu: the one-row matvec with its weight rows bulk-copied into shared memory before its PDL
// wait (see matvec_smem_prefetch.cuh).
//
// Block b serves output units [b·upb, b·upb + upb) (a unit: one row, or the row pair a, a + half of a paired
// epilogue). Its rows lie in shared memory in unit order (unit u's rows at local rows 2u, 2u + 1 when paired),
// in groups of eight units, one mbarrier per group; warp w computes unit w of every group.
// Shared memory: [mbarriers: kMaxGroups × 8 B, Σ x² per warp, padded to kHeader][rows: upb · rows per unit · cols · 2 B][x ⊙ norm
// weight: cols floats, RmsNorm input only]. A plain input is read from global memory (L1) by every warp instead:
// the down projection's x (14 KB for the 376M) would otherwise push its footprint past what lets three of these
// kernels (o_proj, gate|up, down: 42 + 114 + 57 KB) be resident on an SM at once.
#include <algorithm>
#include <atomic>

#include "cuda_check.cuh"
#include "device_utils.cuh"
#include "matvec_smem_prefetch.cuh"
#include "mbarrier.cuh"

namespace ropepp {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxGroups = 32;  // ≤ 256 units per block; a group's RoPE factors live in lane g of its warp
constexpr int kSumsqOffset = kMaxGroups * 8;  // after the mbarriers: kWarps floats
constexpr int kHeader = 512;    // mbarriers and Σ x², padded: the rows start 128-byte aligned (no static smem)
constexpr int kMaxWaves = 2;    // grids beyond 2 · prefetch_blocks go to the streaming kernel
constexpr int kMaxDevices = 64;  // devices whose function attributes are remembered as set (others: every launch)

template <class T, MatvecInput IN, MatvecOutput OUT>
__global__ __launch_bounds__(kWarps * 32, 4) void matvec_smem_prefetch(const MatvecLaunch p, const int upb) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int RPU = matvec_rows_per_unit(OUT);
  constexpr bool kNorm = IN == MatvecInput::RmsNorm;
  extern __shared__ __align__(128) unsigned char smem[];
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem);
  float* sumsq = reinterpret_cast<float*>(smem + kSumsqOffset);  // [kWarps] RmsNorm: each warp's Σ x²
  const int cols = p.cols, units = p.rows / RPU;
  const size_t row_bytes = size_t(cols) * sizeof(T);
  unsigned char* wsm = smem + kHeader;  // [upb · RPU, cols] of T
  float* xs = reinterpret_cast<float*>(smem + kHeader + size_t(upb) * RPU * row_bytes);  // [cols] RmsNorm only
  const int half = OUT == MatvecOutput::Swiglu ? units : (OUT == MatvecOutput::RopeKv ? p.rope.head_dim / 2 : 1);
  const int ua = blockIdx.x * upb, nu = min(units - ua, upb);
  const int n_groups = (nu + kWarps - 1) / kWarps;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  pdl_launch_dependents();  // the next kernel may become resident and start its own copies
  if (threadIdx.x == 0) {
    for (int g = 0; g < n_groups; ++g) mbar_init(&bar[g], 1);
    fence_mbarrier_init();  // before the copy engine uses them
  }
  __syncthreads();
  // The weights do not depend on the previous kernel: warp 0 issues all of the block's row copies now.
  if (warp == 0) {
    if (lane == 0)
      for (int g = 0; g < n_groups; ++g)
        mbar_expect_tx(&bar[g], unsigned(min(kWarps, nu - g * kWarps) * RPU * row_bytes));
    __syncwarp();
    const unsigned char* w = static_cast<const unsigned char*>(p.w);
    for (int i = lane; i < nu * RPU; i += 32) {
      const int lu = i / RPU, u = ua + lu;
      const int row = RPU == 1 ? u : (u / half) * 2 * half + u % half + (i % RPU) * half;
      bulk_copy(wsm + size_t(i) * row_bytes, w + size_t(row) * row_bytes,
                unsigned(row_bytes), &bar[lu / kWarps]);
    }
  }
  // RopeKv: the token's position and cache slot (uploaded before the step) and, in lane g, the RoPE factors of
  // the warp's unit in group g — read before the wait, like the streaming kernel's.
  float2 cs = make_float2(1.f, 0.f);
  long long slot = -1;
  if constexpr (OUT == MatvecOutput::RopeKv) {
    const int pos = p.rope.positions[0];
    slot = rope_kv_slot(p.rope, 0);
    const int lu = lane * kWarps + warp;
    if (lane < n_groups && lu < nu) cs = rope_pair_factors(p.rope, pos, (ua + lu) / half, (ua + lu) % half);
  }
  pdl_wait();

  // x ⊙ the norm weight into shared memory, with Σ x² for the norm's factor.
  float rnorm = 1.f;
  if constexpr (kNorm) {
    float ss = 0.f;
    const float4* xr = reinterpret_cast<const float4*>(p.x);
    const float4* nw = reinterpret_cast<const float4*>(p.norm_w);
    float4* dst = reinterpret_cast<float4*>(xs);
    for (int i = threadIdx.x; i < cols / 4; i += blockDim.x) {
      const float4 v = __ldcg(xr + i), g = __ldg(nw + i);
      ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      dst[i] = make_float4(v.x * g.x, v.y * g.y, v.z * g.z, v.w * g.w);
    }
    ss = warp_sum(ss);
    if (lane == 0) sumsq[warp] = ss;
    __syncthreads();
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += sumsq[w];
    rnorm = rsqrtf(t / float(cols) + p.eps);
  }

  const int chunks = cols / 8;
  const float4* x4 = reinterpret_cast<const float4*>(kNorm ? xs : p.x);  // shared (x ⊙ w) or global (x)
  for (int g = 0; g < n_groups; ++g) {
    const int lu = g * kWarps + warp;
    // The group's RoPE factors from lane g (every lane takes part in the shuffle).
    const float c = __shfl_sync(0xffffffffu, cs.x, g), s = __shfl_sync(0xffffffffu, cs.y, g);
    if (lu >= nu) break;
    mbar_wait(&bar[g], 0);
    const uint4* wr = reinterpret_cast<const uint4*>(wsm + size_t(lu) * RPU * row_bytes);
    float acc[RPU];
#pragma unroll
    for (int r = 0; r < RPU; ++r) acc[r] = 0.f;
#pragma unroll 4
    for (int k = lane; k < chunks; k += 32) {
      float4 xa, xb;
      if constexpr (kNorm) {
        xa = x4[2 * k], xb = x4[2 * k + 1];
      } else {
        xa = __ldg(x4 + 2 * k), xb = __ldg(x4 + 2 * k + 1);
      }
#pragma unroll
      for (int r = 0; r < RPU; ++r) {
        float wf[8];
        x8_to_float(wr[size_t(r) * chunks + k], wf, T{});
        acc[r] += xa.x * wf[0] + xa.y * wf[1] + xa.z * wf[2] + xa.w * wf[3] + xb.x * wf[4] + xb.y * wf[5] +
                  xb.z * wf[6] + xb.w * wf[7];
      }
    }
#pragma unroll
    for (int r = 0; r < RPU; ++r) acc[r] = warp_sum(acc[r]) * rnorm;
    if (lane != 0) continue;
    const int u = ua + lu;
    if constexpr (OUT == MatvecOutput::Store) {
      float* o = p.out + u;
      *o = p.accumulate ? *o + acc[0] : acc[0];
    } else if constexpr (OUT == MatvecOutput::Swiglu) {
      p.out[u] = silu(acc[0]) * acc[1];
    } else {
      rope_kv_store_pair_cs(p.rope, make_float2(c, s), slot, u / half, u % half, acc[0], acc[1], p.out);
    }
  }
#endif
}

template <class T, MatvecInput IN, MatvecOutput OUT>
void launch_kernel(const MatvecLaunch& p, const MatvecSmemPlan& plan, cudaStream_t stream) {
  auto* k = matvec_smem_prefetch<T, IN, OUT>;
  // Once per instance and device (function attributes belong to the device's context): the dynamic shared
  // memory above 48 KB, and the carveout that lets two or three of these blocks share an SM.
  static std::atomic<bool> attributes_set[kMaxDevices];
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= kMaxDevices || !attributes_set[dev].load(std::memory_order_acquire)) {
    int max_smem = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem));
    CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout,
                                    int(cudaSharedmemCarveoutMaxShared)));
    if (dev < kMaxDevices) attributes_set[dev].store(true, std::memory_order_release);
  }
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = launch_config(dim3(plan.blocks), dim3(kWarps * 32), plan.smem, stream, p.pdl, attr);
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, k, p, plan.units_per_block));
}

template <class T>
void launch_type(const MatvecLaunch& p, const MatvecSmemPlan& plan, cudaStream_t stream) {
  using In = MatvecInput;
  using Out = MatvecOutput;
  if (p.input == In::Plain) return launch_kernel<T, In::Plain, Out::Store>(p, plan, stream);
  switch (p.output) {
    case Out::Store: return launch_kernel<T, In::RmsNorm, Out::Store>(p, plan, stream);
    case Out::Swiglu: return launch_kernel<T, In::RmsNorm, Out::Swiglu>(p, plan, stream);
    case Out::RopeKv: return launch_kernel<T, In::RmsNorm, Out::RopeKv>(p, plan, stream);
  }
}

}  // namespace

MatvecSmemPlan plan_matvec_smem_prefetch(const MatvecLaunch& p) {
  MatvecSmemPlan plan;
  if (p.n != 1 || p.prefetch_smem_bytes <= 0 || p.prefetch_blocks <= 0 || p.rows <= 0 || p.cols % 8 != 0) return plan;
  if (p.input == MatvecInput::Plain && p.output != MatvecOutput::Store) return plan;
  const int rpu = matvec_rows_per_unit(p.output);
  const int units = p.rows / rpu;
  const size_t unit_bytes = size_t(rpu) * size_t(p.cols) * 2;
  const size_t fixed = kHeader + (p.input == MatvecInput::RmsNorm ? size_t(p.cols) * sizeof(float) : 0);
  if (size_t(p.prefetch_smem_bytes) < fixed + unit_bytes) return plan;
  const int fit = int((size_t(p.prefetch_smem_bytes) - fixed) / unit_bytes);
  const int upb = std::min({(units + p.prefetch_blocks - 1) / p.prefetch_blocks, fit, kMaxGroups * kWarps});
  const int blocks = (units + upb - 1) / upb;
  if (blocks > kMaxWaves * p.prefetch_blocks) return plan;
  plan.blocks = blocks;
  plan.units_per_block = upb;
  plan.smem = fixed + size_t(upb) * unit_bytes;
  return plan;
}

bool launch_matvec_smem_prefetch(const MatvecLaunch& p, cudaStream_t stream) {
  const MatvecSmemPlan plan = plan_matvec_smem_prefetch(p);
  if (plan.blocks == 0) return false;
  if (p.w_type == HalfType::F16) {
    launch_type<f16>(p, plan, stream);
  } else {
    launch_type<bf16>(p, plan, stream);
  }
  return true;
}

}  // namespace ropepp
