// backend.h: the op-level interface that the forward pass (model.cpp) is written against once, and that
// the CPU backend (backend_cpu.cpp) and the CUDA backend (cuda/backend_cuda*.cpp over kernels/) implement.
//
// Conventions
// - All pointers in the *Params structs point to backend memory (host memory for the CPU backend,
//   device memory for CUDA), allocated with Backend::alloc. Activations are fp32, row-major.
// - Ops are eager and ordered: an op may start after the previous one was issued (CUDA: one stream).
//   download() and synchronize() wait for everything issued before.
// - A "token" is one row of a batch; a batch may hold tokens of several sequences (BatchView).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common.h"

namespace ropepp {

// A weight in backend memory, PyTorch Linear layout: row-major [rows, cols] (out_features, in_features).
// A norm weight is a vector: rows == 1.
// A piece of host memory (e.g. one memory-mapped checkpoint tensor).
struct HostSpan {
  const void* data = nullptr;
  size_t bytes = 0;
};

struct Weight {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Paged KV cache storage. Sequence tokens are kept in fixed-size blocks; a sequence's block table lists
// its blocks in order, so token at position p lives in block table[p / block_size], slot p % block_size.
struct KVCacheView {
  void* k = nullptr;  // [n_layers, n_blocks, n_kv_heads, block_size, head_dim] of dtype
  void* v = nullptr;  // [n_layers, n_blocks, n_kv_heads, block_size, head_dim] of dtype
  DType dtype = DType::F32;
  int n_layers = 0;
  int n_blocks = 0;
  int n_kv_heads = 0;
  int block_size = 0;
  int head_dim = 0;

  size_t layer_stride() const { return size_t(n_blocks) * n_kv_heads * block_size * head_dim; }  // elements
  size_t block_stride() const { return size_t(n_kv_heads) * block_size * head_dim; }             // elements
};

// Describes one forward batch; arrays are in backend memory (uploaded once per forward). A token at
// position p of its sequence attends to positions 0..p of the same sequence (causal), all of which are
// in the cache once kv_append of this batch has run.
struct BatchView {
  int n_tokens = 0;
  int n_seqs = 0;
  int max_blocks_per_seq = 0;      // row stride of block_table
  int max_pos = 0;                 // max over tokens of positions[i] (host-side planning hint)
  const int32_t* tokens = nullptr;        // [n_tokens] token ids
  const int32_t* positions = nullptr;     // [n_tokens] position of each token within its sequence
  const int32_t* seq_of_token = nullptr;  // [n_tokens] index of the token's sequence in this batch
  const int32_t* block_table = nullptr;   // [n_seqs, max_blocks_per_seq] physical block ids (-1 = unused)
  // Every token is the only one of its sequence in this forward call (a decode step), so the cache rows before
  // its position were written by earlier calls: kernels may read them before the previous kernel finishes.
  bool history_cached = false;
};

// out[i, :] = table[tokens[i], :]
struct EmbedParams {
  Weight table;                 // [V, D]
  const int32_t* tokens;        // [n]
  float* out;                   // [n, D]
  int n;
};

// out[i, :] = x[i, :] * rsqrt(mean(x[i, :]^2) + eps) * w   (x and out may alias)
struct RmsNormParams {
  const float* x;               // [n, dim]
  Weight w;                     // [dim]
  float* out;                   // [n, dim]
  int n;
  int dim;
  float eps;
};

// out[n, w.rows] = x[n, w.cols] · wᵀ   (fp32 accumulation; w may be bf16/f16/f32)
struct MatmulParams {
  const float* x;               // [n, w.cols]
  Weight w;                     // [rows, cols]
  float* out;                   // [n, w.rows]; must not alias x
  int n;
  bool accumulate = false;      // out += x · wᵀ (a residual add fused into the matmul)
  // Matrices later ops of the step read (a hint; the results do not depend on it, and backends may ignore it): the
  // CUDA decode matvec asks the L2 for a share of them before it waits for its input (CudaBackendOptions::
  // l2_next_ffn_pct / l2_next_qkv_pct). The o_proj carries its layer's Wgate|Wup (read as row pairs: rows
  // [0, R/2) gate, [R/2, R) up) and the next layer's Wq|Wk|Wv.
  const Weight* next_ffn = nullptr;
  const Weight* next_qkv = nullptr;
};

// In place on x[i, h, :] for every token i and head h, with p = positions[i], half = head_dim/2, j < half:
//   x'[j]      = x[j]·cos[p, j] − x[j+half]·sin[p, j]
//   x'[j+half] = x[j+half]·cos[p, j] + x[j]·sin[p, j]
// (HF rotate_half convention; the tables already include PI/YaRN frequencies and YaRN's magnitude scale.)
struct RopeParams {
  float* x;                     // [n, n_heads, head_dim], row stride `row_stride` floats
  const int32_t* positions;     // [n]
  const float* cos;             // [max_pos + 1, head_dim / 2]
  const float* sin;             // [max_pos + 1, head_dim / 2]
  int n;
  int n_heads;
  int head_dim;
  int row_stride;               // floats between consecutive tokens (n_heads * head_dim when packed)
};

// Writes each token's k and v rows into the cache slot of its (sequence, position).
struct KvAppendParams {
  const float* k;               // [n, n_kv_heads, head_dim], row stride `row_stride`
  const float* v;               // [n, n_kv_heads, head_dim], row stride `row_stride`
  int row_stride;
  KVCacheView cache;
  int layer;
  BatchView batch;
};

// Causal attention of each token over its own sequence in the paged cache.
// Without imag: out head h = softmax(q_h · Kᵀ · scale) · V, with K/V of kv head h / (n_q_heads / n_kv_heads).
// With imag (RoPE++): two output heads per q head, from the same K/V read:
//   out head 2h   = softmax(scale · q_h · kᵀ) · V                (real part)
//   out head 2h+1 = softmax(scale · (−rot(q_h)) · kᵀ) · V         (imaginary part; = q_h · rot(k))
// with rot(x) = cat(−x[d/2:], x[:d/2]).
struct AttentionParams {
  const float* q;               // [n_tokens, n_q_heads, head_dim] (RoPE applied), row stride `q_row_stride`
  int q_row_stride;
  float* out;                   // [n_tokens, n_q_heads * (imag ? 2 : 1), head_dim], packed
  KVCacheView cache;
  int layer;
  BatchView batch;
  int n_q_heads;
  int n_kv_heads;
  int head_dim;
  bool imag;
  float scale;                  // 1 / sqrt(head_dim)
};

// The attention of a layer with the model's usual fields: K/V heads and head_dim from the cache, scale 1/sqrt(hd).
inline AttentionParams attention_params(const float* q, int q_row_stride, float* out, const KVCacheView& cache,
                                        int layer, const BatchView& batch, int n_q_heads, bool imag) {
  AttentionParams ap;
  ap.q = q;
  ap.q_row_stride = q_row_stride;
  ap.out = out;
  ap.cache = cache;
  ap.layer = layer;
  ap.batch = batch;
  ap.n_q_heads = n_q_heads;
  ap.n_kv_heads = cache.n_kv_heads;
  ap.head_dim = cache.head_dim;
  ap.imag = imag;
  ap.scale = float(1.0 / std::sqrt(double(cache.head_dim)));
  return ap;
}

// out[i] = silu(gate[i]) * up[i]; gate and up are the two halves of a fused [n, 2F] row when
// gate_up_stride = 2F, or separate buffers.
struct SwigluParams {
  const float* gate;            // [n, F], row stride `in_stride`
  const float* up;              // [n, F], row stride `in_stride`
  int in_stride;
  float* out;                   // [n, F] packed
  int n;
  int dim;                      // F
};

// x[i] += y[i]
struct AddParams {
  float* x;                     // [count]
  const float* y;               // [count]
  size_t count;
};

// out[i, :] = x[rows[i], :dim]
struct GatherRowsParams {
  const float* x;               // [*, dim], row stride `x_stride` floats
  const int32_t* rows;          // [n]
  float* out;                   // [n, dim] packed
  int n;
  int dim;
  int x_stride = 0;             // floats between rows of x (0: dim); ≥ dim
  int stride() const { return x_stride > 0 ? x_stride : dim; }
};

// out[i] = argmax_j logits[i, j]: the lowest index among equal maxima; NaN logits are ignored (a row of
// NaN gives 0). Greedy sampling without downloading the logits.
struct ArgmaxParams {
  const float* logits;          // [n, vocab]
  int32_t* out;                 // [n]
  int n;
  int vocab;
};

// out[i] = -log_softmax(logits[i, :])[targets[i]] (natural log), for perplexity; NaN where targets[i] is
// outside [0, vocab).
struct NllParams {
  const float* logits;          // [n, vocab]
  const int32_t* targets;       // [n]
  float* out;                   // [n]
  int n;
  int vocab;
};

// out = rms_norm(x, norm)·wᵀ (+ out with accumulate): RMSNorm fused into the projection that follows it.
// `normed` is scratch [n, w.cols] that the unfused default writes; a fused kernel may leave it untouched.
struct NormMatmulParams {
  const float* x;               // [n, w.cols]
  Weight norm;                  // [w.cols]
  float eps;
  float* normed;                // [n, w.cols] scratch
  Weight w;                     // [rows, cols]
  float* out;                   // [n, w.rows]; must not alias x or normed
  int n;
  bool accumulate = false;
};

// out (+)= (silu(gate) * up)·wᵀ: SwiGLU fused into the down projection. gate/up as in SwigluParams;
// `act` is scratch [n, F] that the unfused default writes.
struct SwigluMatmulParams {
  const float* gate;            // [n, F], row stride `in_stride`
  const float* up;              // [n, F], row stride `in_stride`
  int in_stride;
  float* act;                   // [n, F] scratch
  Weight w;                     // [rows, F]
  float* out;                   // [n, w.rows]
  int n;
  bool accumulate = false;
};

// RoPE on the q and k heads of fused qkv rows (in place), then each token's k and v appended to the cache:
// rope + kv_append in one pass (the default runs the two ops).
struct RopeKvAppendParams {
  float* qkv;                   // [n, (n_q_heads + 2·cache.n_kv_heads)·head_dim]: q heads, k heads, v heads
  int n_q_heads;
  const int32_t* positions;     // [n]
  const float* cos;             // [max_pos + 1, head_dim / 2]
  const float* sin;             // [max_pos + 1, head_dim / 2]
  KVCacheView cache;
  int layer;
  BatchView batch;              // n = batch.n_tokens
};

// One decoder layer's weights. The projections come in one of two forms: concatenated (wqkv, w_gate_up set;
// Backend::wants_fused_projections) or separate (wq, wk, wv, w_gate, w_up set; the CPU backend maps checkpoint
// tensors in place). The other form's weights stay empty (data == nullptr).
struct DecoderLayerWeights {
  Weight attn_norm;             // [D]
  Weight wqkv;                  // [(Hq + 2·Hkv)·hd, D]: Wq rows, then Wk, then Wv
  Weight wq;                    // [Hq·hd, D]
  Weight wk;                    // [Hkv·hd, D]
  Weight wv;                    // [Hkv·hd, D]
  Weight wo;                    // [D, Ha·hd]
  Weight ffn_norm;              // [D]
  Weight w_gate_up;             // [2F, D]: Wgate rows, then Wup
  Weight w_gate;                // [F, D]
  Weight w_up;                  // [F, D]
  Weight w_down;                // [D, F]
  bool concatenated() const { return wqkv.data != nullptr; }
};

// All decoder layers of a batch: for each layer, x += attention block, x += feed-forward block (the default in
// decoder_layers.cpp runs them as ops). The scratch buffers hold what those ops leave there; a fused
// implementation may leave them in any state.
//
// Output rows: with 0 ≤ n_out < batch.n_tokens, only the rows out_rows are wanted after the last layer (the rows
// whose logits are needed: a prompt's last token, the scored rows of a perplexity window). The last layer then
// projects and appends the K and V of every row but runs its attention, Wo and feed-forward for those rows
// only, whose residual stream it leaves in x_out; x keeps the other rows' input to the last layer.
struct DecoderLayersParams {
  const DecoderLayerWeights* layers;  // [n_layers], all of one form
  int n_layers;
  float* x;                     // [n, D] residual stream, in and out
  float* h;                     // [n, D] scratch (normed x)
  // Projections. Concatenated form: one [n, (Hq + 2·Hkv)·hd] buffer, q = its start, k = q + Hq·hd,
  // v = k + Hkv·hd, q_stride = kv_stride = (Hq + 2·Hkv)·hd. Separate form: packed buffers.
  float* q;                     // [n, Hq·hd] (RoPE applied by the layer), row stride q_stride
  float* k;                     // [n, Hkv·hd], row stride kv_stride
  float* v;                     // [n, Hkv·hd], row stride kv_stride
  int q_stride;
  int kv_stride;
  float* att;                   // [n, Ha·hd] scratch
  // Feed-forward. Concatenated form: up = gate + F, gu_stride = 2F. Separate form: packed (gu_stride = F).
  float* gate;                  // [n, F], row stride gu_stride
  float* up;                    // [n, F], row stride gu_stride
  int gu_stride;
  float* act;                   // [n, F] scratch
  const float* cos;             // [max_pos + 1, hd / 2]
  const float* sin;             // [max_pos + 1, hd / 2]
  KVCacheView cache;
  BatchView batch;              // n = batch.n_tokens
  int n_q_heads;
  bool imag;
  float eps;
  // Output rows (see above); n_out < 0 or n_out == batch.n_tokens: every row, and the rest is unused.
  int n_out = -1;
  const int32_t* out_rows = nullptr;  // [n_out] batch rows, increasing
  BatchView out_batch = {};     // those rows as a batch: n_tokens = n_out, their positions and seq_of_token
  float* x_out = nullptr;       // [n_out, D] their residual stream after the last layer
  float* q_out = nullptr;       // [n_out, Hq·hd] scratch (may share memory with gate: it is dead before gate is written)
  bool prunes_output() const { return n_out >= 0 && n_out < batch.n_tokens; }
};

// One op's time in a profiled run (Backend::set_profiling): what ran, for how long, how many bytes it
// had to move at least (weights, KV cache, activations), so that GB/s shows how close to bandwidth it is.
struct OpTiming {
  std::string op;               // "matmul [2048x1024]", "attention (decode)", ...
  double us = 0;                // microseconds
  double bytes = 0;             // minimum bytes read + written
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda:0"

  // --- memory -------------------------------------------------------------------------------------
  virtual void* alloc(size_t bytes) = 0;  // zero-filled not guaranteed; throws Error (with sizes) on failure
  virtual void release(void* p) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;    // host -> backend
  virtual void download(void* dst, const void* src, size_t bytes) = 0;  // backend -> host, waits
  virtual void synchronize() = 0;
  // Downloads the host does not wait for: download_later queues dst (host memory the caller keeps valid) = src
  // and returns a ticket; dst holds the data once wait_download(ticket) returns (or after any synchronize or
  // download; waiting on a ticket again returns at once). Lets a caller queue its next forward call before reading
  // the last one's results. Default: at once.
  virtual uint64_t download_later(void* dst, const void* src, size_t bytes) {
    download(dst, src, bytes);
    return 0;
  }
  virtual void wait_download(uint64_t /*ticket*/) {}
  // dst = src within backend memory (the copy-bandwidth ceiling of `ropepp bench` uses it).
  // The default bounces through the host; backends override it with a device-side copy.
  virtual void copy(void* dst, const void* src, size_t bytes) {
    std::vector<char> tmp(bytes);
    download(tmp.data(), src, bytes);
    upload(dst, tmp.data(), bytes);
  }
  // Bytes currently allocated through alloc() and load_weight() (0 when the backend cannot tell).
  virtual size_t allocated_bytes() const { return 0; }

  // Makes a checkpoint tensor available as a Weight. `host` is the memory-mapped tensor [rows, cols].
  // The CPU backend keeps the mapping (zero-copy); CUDA converts to bf16 and copies to the device.
  virtual Weight load_weight(const void* host, DType dtype, int64_t rows, int64_t cols) = 0;
  // The row-wise concatenation of `parts` (each a memory-mapped tensor of `dtype`, `cols` columns; `rows` in all)
  // as one Weight: fused projections (qkv, gate|up). The default concatenates on the host and calls
  // load_weight, so it only suits backends that copy (the concatenation is freed on return); CUDA uploads the
  // parts straight from the mapping.
  // (Inline: the fuzz targets link no backend.cpp, and an out-of-line virtual would carry Backend's typeinfo.)
  virtual Weight load_weight_concat(std::span<const HostSpan> parts, DType dtype, int64_t rows, int64_t cols) {
    size_t bytes = 0;
    for (const HostSpan& p : parts) bytes += p.bytes;
    if (rows <= 0 || cols <= 0 || bytes != size_t(rows) * size_t(cols) * dtype_size(dtype))
      fail("load_weight_concat: {} bytes in {} parts for [{}, {}] {}", bytes, parts.size(), rows, cols, dtype_name(dtype));
    std::vector<char> host(bytes);
    size_t off = 0;
    for (const HostSpan& p : parts) {
      std::memcpy(host.data() + off, p.data, p.bytes);
      off += p.bytes;
    }
    return load_weight(host.data(), dtype, rows, cols);
  }
  virtual void release_weight(const Weight& w) = 0;

  virtual DType kv_dtype() const = 0;     // element type of the KV cache this backend keeps

  // --- ops ----------------------------------------------------------------------------------------
  virtual void embed(const EmbedParams& p) = 0;
  virtual void rms_norm(const RmsNormParams& p) = 0;
  virtual void matmul(const MatmulParams& p) = 0;
  virtual void rope(const RopeParams& p) = 0;
  virtual void kv_append(const KvAppendParams& p) = 0;
  virtual void attention(const AttentionParams& p) = 0;
  virtual void swiglu(const SwigluParams& p) = 0;
  virtual void add(const AddParams& p) = 0;
  virtual void gather_rows(const GatherRowsParams& p) = 0;

  // --- fused ops (defaults: the unfused sequence; backends override where a fused kernel exists) ------
  virtual void norm_matmul(const NormMatmulParams& p) {
    const int dim = int(p.w.cols);
    rms_norm({p.x, p.norm, p.normed, p.n, dim, p.eps});
    matmul({p.normed, p.w, p.out, p.n, p.accumulate});
  }
  virtual void swiglu_matmul(const SwigluMatmulParams& p) {
    const int dim = int(p.w.cols);
    swiglu({p.gate, p.up, p.in_stride, p.act, p.n, dim});
    matmul({p.act, p.w, p.out, p.n, p.accumulate});
  }
  virtual void rope_kv_append(const RopeKvAppendParams& p) {
    const int hd = p.cache.head_dim, hkv = p.cache.n_kv_heads, n = p.batch.n_tokens;
    const int stride = (p.n_q_heads + 2 * hkv) * hd;
    rope({p.qkv, p.positions, p.cos, p.sin, n, p.n_q_heads + hkv, hd, stride});
    kv_append({p.qkv + p.n_q_heads * hd, p.qkv + (p.n_q_heads + hkv) * hd, stride, p.cache, p.layer, p.batch});
  }
  // The front of an attention block: RMSNorm, the concatenated Wq|Wk|Wv projection, RoPE on q and k, k and
  // v into the cache (default: norm_matmul(proj), then rope_kv_append(rope)). `rope.qkv` must be
  // `proj.out`; afterwards it holds what the default leaves there (q and k rotated, v as projected).
  virtual void qkv_rope_kv_append(const NormMatmulParams& proj, const RopeKvAppendParams& rope) {
    norm_matmul(proj);
    rope_kv_append(rope);
  }
  // The feed-forward block: x += (silu(norm(x)·Wgateᵀ) * norm(x)·Wupᵀ)·Wdownᵀ with the concatenated
  // Wgate|Wup (default: norm_matmul(gate_up), then swiglu_matmul(down)). `gate_up.out` is [n, 2F]: gate
  // columns, then up columns (down.gate == gate_up.out, down.up == gate_up.out + F, down.in_stride == 2F).
  // down.act and gate_up.out are scratch: the default writes both, a decode kernel writes act only (the
  // SwiGLU epilogue of the gate|up matvec), a GEMM path may write neither.
  virtual void feed_forward(const NormMatmulParams& gate_up, const SwigluMatmulParams& down) {
    norm_matmul(gate_up);
    swiglu_matmul(down);
  }
  // The end of an attention block: x += attention(q, cache)·Woᵀ (default: attention(attn), then matmul(out_proj)).
  // `out_proj.x` must be `attn.out`, which is scratch: a GEMM path may hand the attention output to the
  // projection in 16 bits without writing attn.out.
  virtual void attention_out_proj(const AttentionParams& attn, const MatmulParams& out_proj) {
    attention(attn);
    matmul(out_proj);
  }
  // Greedy logits of one row: the final RMSNorm, the lm_head and the argmax of the first `pick.vocab` logits,
  // then (next, optional: next->tokens == pick.out, next->n == 1) the picked token's embedding, the next chained
  // step's x (default: norm_matmul(head), argmax(pick), embed(*next)). `pick.logits` must be `head.out` and
  // head.n == pick.n == 1; `head.out` is scratch: the fused CUDA path writes it too (its lm_head blocks each pick
  // their best logit, one merge block picks among those and writes the embedding row).
  virtual void norm_matmul_argmax(const NormMatmulParams& head, const ArgmaxParams& pick, const EmbedParams* next) {
    norm_matmul(head);
    argmax(pick);
    if (next) embed(*next);
  }
  // All decoder layers (DecoderLayersParams). Default (decoder_layers.cpp): per layer, the op sequence above
  // (or the separate projections' ops); CUDA may run a one-token decode step as one persistent kernel.
  virtual void decoder_layers(const DecoderLayersParams& p);
  // Whether the forward pass should hand this backend concatenated projections (Wq|Wk|Wv, Wgate|Wup) as
  // one weight. The CPU backend maps checkpoint tensors in place and so says no.
  virtual bool wants_fused_projections() const { return false; }

  // --- replayable op sequences (CUDA graphs; other backends: none) ------------------------------------
  // A sequence of ops whose params (pointers, sizes) are identical each time may be recorded once under a
  // key and replayed: graph_replay(key) launches the recording and returns true, or returns false when
  // there is none (or graphs are off); graph_begin(key) records the ops issued until graph_end(), which
  // then launches them (launch = false: an op failed; the recording is dropped). Inputs that change between
  // replays must live in backend memory (upload_async).
  virtual bool graph_replay(uint64_t key) { (void)key; return false; }
  virtual bool graph_begin(uint64_t key) { (void)key; return false; }  // false: not recording, run eagerly
  virtual void graph_end(bool launch) { (void)launch; }
  // Whether forward calls that score targets (perplexity windows, whatever their size) should be recorded
  // and replayed too; decode steps always are (where graphs exist).
  virtual bool graphs_for_scoring() const { return false; }
  // Greedy decode steps chained per queued call when neither ModelOptions::greedy_steps nor ROPEPP_GREEDY_STEPS
  // says (tokens then arrive in groups of that many: 1 where a step takes milliseconds, as on the CPU).
  virtual int default_greedy_steps() const { return 1; }
  virtual void graph_clear() {}  // drop every recording (their buffers are about to be freed)
  // Host -> backend copy ordered with the ops, without waiting for it: the backend copies `src` before
  // returning, so the caller may reuse it at once.
  virtual void upload_async(void* dst, const void* src, size_t bytes) { upload(dst, src, bytes); }

  // --- profiling: every op timed on its own (slow; graphs off) -----------------------------------------
  virtual void set_profiling(bool on) { (void)on; }
  virtual std::vector<OpTiming> take_profile() { return {}; }

  // --- device-side helpers of the forward pass (defaults: download the logits, compute on the host) --
  virtual void argmax(const ArgmaxParams& p) {
    std::vector<float> logits(size_t(p.n) * p.vocab);
    std::vector<int32_t> out(p.n);
    download(logits.data(), p.logits, logits.size() * sizeof(float));
    for (int i = 0; i < p.n; ++i) {
      const float* row = logits.data() + size_t(i) * p.vocab;
      int best = -1;
      for (int j = 0; j < p.vocab; ++j)
        if (!std::isnan(row[j]) && (best < 0 || row[j] > row[best])) best = j;
      out[i] = best < 0 ? 0 : best;
    }
    upload(p.out, out.data(), out.size() * sizeof(int32_t));
  }
  virtual void nll(const NllParams& p) {
    std::vector<float> logits(size_t(p.n) * p.vocab);
    std::vector<int32_t> targets(p.n);
    std::vector<float> out(p.n);
    download(logits.data(), p.logits, logits.size() * sizeof(float));
    download(targets.data(), p.targets, targets.size() * sizeof(int32_t));
    for (int i = 0; i < p.n; ++i) {
      const float* row = logits.data() + size_t(i) * p.vocab;
      double m = -std::numeric_limits<double>::infinity(), sum = 0.0;
      for (int j = 0; j < p.vocab; ++j) m = std::max(m, double(row[j]));
      for (int j = 0; j < p.vocab; ++j) sum += std::exp(double(row[j]) - m);
      const int32_t t = targets[i];
      out[i] = (t < 0 || t >= p.vocab) ? std::numeric_limits<float>::quiet_NaN()
                                        : float(std::log(sum) + m - double(row[t]));
    }
    upload(p.out, out.data(), out.size() * sizeof(float));
  }
};

std::unique_ptr<Backend> make_cpu_backend(int n_threads = 0);  // 0: all cores

#ifdef ROPEPP_HAS_CUDA
// Implemented in src/cuda/backend_cuda.cpp. Throws Error when no GPU/driver is usable.
std::unique_ptr<Backend> make_cuda_backend(int device_index);
#endif

// "cpu", "cuda", "cuda:N". Throws Error when the device is unknown or not built in / not present.
std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace ropepp
