// decode_layers_persistent.cuh: every decoder layer of a one-token decode step in ONE persistent kernel
// (one thread block per SM, cooperative launch), instead of ~5 kernels per layer.
//
// Why: a batch-1 decode step streams ~240 MB of layer weights (376M) in ~40 small GEMVs. As separate kernels
// each pays launch, ramp-up, tail and a full drain before the next may read its output (~4 µs each on an
// H100, more than the streaming itself). Here each block owns fixed rows of every matrix; a producer warp
// streams the block's rows of ALL layers, in order, into a ring of shared-memory stages with the bulk copy
// engine (cp.async.bulk + mbarrier), bounded only by the ring, while eight consumer warps compute. The weights
// do not depend on the activations, so the stream runs ahead across the grid barriers that separate the
// phases; only the consumers wait for them.
//
// Per layer, consumer phases separated by grid barriers (the residual stream x is fp32 in global memory):
//   QKV   xs = rms_norm(x)·attn_norm; the block's row pairs (j, j + hd/2) of Wq|Wk|Wv; RoPE on q and k;
//         q, k, v into `qkv`, k and v (f16) into the token's paged cache slot      (= qkv_rope_kv_append)
//   ATTN  work items (kv head, chunk of positions) over all blocks; each serves the kv head's R query rows
//         (RoPE++: each q head's real row and imaginary row −rot(q)); the last block to finish a kv head's
//         chunks merges their partial softmaxes into `att`                           (= attention)
//   O     x += Wo · att, rows owned by the block                                     (= matmul, accumulate)
//   GU    xs = rms_norm(x)·ffn_norm; act = silu(Wgate·xs) · (Wup·xs), row pairs (i, F + i)
//   DOWN  x += Wdown · act                                                            (= feed_forward)
// The numerics are those of the separate decode kernels: f16/bf16 weights widened to fp32, fp32 dot products
// and activations, f16 KV cache, scores in the log2 domain.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "convert.cuh"

namespace ropepp {

constexpr int kDecodeLayersMaxLayers = 64;
constexpr int kDecodeLayersStageBytes = 32 * 1024;  // one ring stage: whole weight rows (or row pairs)

struct DecodeLayerWeights {
  const void* wqkv;        // [(n_q_heads + 2·n_kv_heads)·head_dim, hidden] of w_type: q heads, k heads, v heads
  const void* wo;          // [hidden, n_attn_heads·head_dim]
  const void* w_gate_up;   // [2·ffn, hidden]: gate rows, then up rows
  const void* w_down;      // [hidden, ffn]
  const float* attn_norm;  // [hidden]
  const float* ffn_norm;   // [hidden]
};

struct DecodeLayersLaunch {
  DecodeLayerWeights layers[kDecodeLayersMaxLayers];
  int n_layers = 0;
  HalfType w_type = HalfType::F16;
  int hidden = 0, ffn = 0;
  int n_q_heads = 0, n_kv_heads = 0;
  int head_dim = 0;               // 128
  bool imag = false;              // RoPE++: two attention heads (real, imaginary) per q head
  float eps = 0.f;                // RMSNorm epsilon
  float scale = 0.f;              // softmax scale, 1 / sqrt(head_dim)
  float* x = nullptr;             // [hidden] residual stream, in and out
  float* qkv = nullptr;           // [(n_q_heads + 2·n_kv_heads)·head_dim] scratch: q, k rotated; v
  float* att = nullptr;           // [n_attn_heads·head_dim] attention output (heads interleaved re, im)
  float* act = nullptr;           // [ffn] silu(gate)·up
  float* part = nullptr;          // [n_kv_heads, n_chunks, rows per kv head, kDecodePartStride] partials
  unsigned* sync = nullptr;       // [1 + n_kv_heads], zeroed by the launcher: grid barrier, combine counts
  __half* cache_k = nullptr;      // [n_layers, n_blocks, n_kv_heads, block_size, head_dim]
  __half* cache_v = nullptr;      // [n_layers, n_blocks, n_kv_heads, block_size, head_dim]
  size_t layer_stride = 0;        // cache elements between layers
  int n_blocks = 0, block_size = 0;
  const int32_t* positions = nullptr;     // [1] the token's position
  const int32_t* block_table = nullptr;   // [max blocks] the one sequence's blocks
  const float* cos = nullptr;     // [max_pos + 1, head_dim / 2]
  const float* sin = nullptr;     // [max_pos + 1, head_dim / 2]
  int chunk = 0;                  // attention positions per work item (a multiple of 32), from the plan
  int n_chunks = 0;               // work items per kv head: chunk · n_chunks > positions[0]
  // Diagnostics (null: off): block 0 adds the ns it spends in each phase to [phase] (QKV, O, GU, DOWN, ATTN)
  // and waiting at the grid barrier before it to [5 + phase], and counts launches in [10].
  unsigned long long* trace = nullptr;
};
constexpr int kDecodeTraceSlots = 11;

constexpr int kDecodePartStride = 132;  // floats per partial: o[128], m, l, (pad)

struct DecodeLayersPlan {
  int grid = 0;             // thread blocks: one per SM
  int stages = 0;           // ring stages of kDecodeLayersStageBytes
  size_t smem = 0;          // dynamic shared memory per block
  int chunk = 0, n_chunks = 0;
  size_t part_floats = 0;   // size of DecodeLayersLaunch::part
  size_t sync_words = 0;    // size of DecodeLayersLaunch::sync
};

// The plan for contexts up to max_pos + 1 positions on `num_sms` SMs with `max_smem` bytes of opt-in shared
// memory per block, with at most `max_stages` ring stages (0: as many as fit). Returns false with `why` set when the shapes are outside what the kernel serves (the caller
// runs the separate kernels then).
bool plan_decode_layers(const DecodeLayersLaunch& p, int num_sms, int max_smem, int max_stages, int max_pos,
                        DecodeLayersPlan* plan,
                        const char** why);

// Whether this build holds the kernel for the current device (sm_90 code: Hopper, built for arch 90).
bool decode_layers_available();

// Zeroes p.sync and launches (p.chunk / p.n_chunks must be the plan's). Throws Error on a launch failure.
void launch_decode_layers(const DecodeLayersLaunch& p, const DecodeLayersPlan& plan, cudaStream_t stream);

}  // namespace ropepp
