// decoder_layers.cpp: Backend::decoder_layers' default, the decoder layers of the forward pass as a sequence of
// ops (a file of its own: Backend's vtable is emitted here, and the fuzz targets, which leave out backend.cpp's
// make_backend and the CPU kernels, link it).
//
//   for each layer:
//     h = rms_norm(x) ; q = h·Wqᵀ ; k = h·Wkᵀ ; v = h·Wvᵀ ; rope(q), rope(k) ; append k, v to the paged cache
//     [last layer with output rows: x, q = the output rows of x, q; the rest runs for those rows only]
//     a = attention(q, cache)        (RoPE++: real and imaginary heads interleaved, from one K/V read)
//     x += a·Woᵀ
//     h = rms_norm(x) ; x += (silu(h·Wgᵀ) * h·Wuᵀ)·Wdᵀ
#include "backend.h"

namespace ropepp {

namespace {

// The front of a layer's attention block, for every row of the batch: RMSNorm, the q/k/v projections, RoPE on
// q and k, k and v into the cache.
void attention_front(Backend& be, const DecoderLayersParams& p, int l) {
  const DecoderLayerWeights& w = p.layers[l];
  const int n = p.batch.n_tokens, hq = p.n_q_heads, hkv = p.cache.n_kv_heads, hd = p.cache.head_dim;
  if (w.concatenated()) {  // q, k, v are one row: the fused op
    be.qkv_rope_kv_append({p.x, w.attn_norm, p.eps, p.h, w.wqkv, p.q, n},
                          {p.q, hq, p.batch.positions, p.cos, p.sin, p.cache, l, p.batch});
    return;
  }
  be.rms_norm({p.x, w.attn_norm, p.h, n, int(w.wq.cols), p.eps});
  be.matmul({p.h, w.wq, p.q, n});
  be.matmul({p.h, w.wk, p.k, n});
  be.matmul({p.h, w.wv, p.v, n});
  be.rope({p.q, p.batch.positions, p.cos, p.sin, n, hq, hd, p.q_stride});
  be.rope({p.k, p.batch.positions, p.cos, p.sin, n, hkv, hd, p.kv_stride});
  be.kv_append({p.k, p.v, p.kv_stride, p.cache, l, p.batch});
}

// The rest of a layer for `m` rows: residual stream x, RoPE'd queries q (row stride q_stride) and their batch.
struct LayerRows {
  float* x;                     // [m, D]
  const float* q;               // [m, Hq·hd], row stride q_stride
  int q_stride;
  const BatchView* batch;       // n_tokens = m
  int m;
};

void attention_back_and_ffn(Backend& be, const DecoderLayersParams& p, int l, const LayerRows& r) {
  const DecoderLayerWeights& w = p.layers[l];
  // x += attention(q, cache)·Woᵀ (telling the backend which matrices come next: MatmulParams::next_ffn/next_qkv)
  MatmulParams o_proj{p.att, w.wo, r.x, r.m, /*accumulate=*/true};
  if (w.concatenated()) o_proj.next_ffn = &w.w_gate_up;
  if (l + 1 < p.n_layers && p.layers[l + 1].concatenated()) o_proj.next_qkv = &p.layers[l + 1].wqkv;
  be.attention_out_proj(attention_params(r.q, r.q_stride, p.att, p.cache, l, *r.batch, p.n_q_heads, p.imag), o_proj);
  // x += (silu(norm(x)·Wg) * norm(x)·Wu)·Wd
  const SwigluMatmulParams down{p.gate, p.up, p.gu_stride, p.act, w.w_down, r.x, r.m, /*accumulate=*/true};
  if (w.concatenated()) {
    be.feed_forward({r.x, w.ffn_norm, p.eps, p.h, w.w_gate_up, p.gate, r.m}, down);
    return;
  }
  be.rms_norm({r.x, w.ffn_norm, p.h, r.m, int(w.w_gate.cols), p.eps});
  be.matmul({p.h, w.w_gate, p.gate, r.m});
  be.matmul({p.h, w.w_up, p.up, r.m});
  be.swiglu_matmul(down);
}

}  // namespace

void Backend::decoder_layers(const DecoderLayersParams& p) {  // p.n_layers ≥ 1 (the config requires it)
  const int n = p.batch.n_tokens;
  const bool prune = p.prunes_output();
  for (int l = 0; l < p.n_layers; ++l) {
    attention_front(*this, p, l);
    if (!prune || l + 1 < p.n_layers) {
      attention_back_and_ffn(*this, p, l, {p.x, p.q, p.q_stride, &p.batch, n});
      continue;
    }
    // The last layer, output rows only: their queries and residual stream, then the rest of the layer on them.
    if (p.n_out == 0) return;
    const int D = int(p.layers[l].wo.rows), q_cols = p.n_q_heads * p.cache.head_dim;
    gather_rows({p.q, p.out_rows, p.q_out, p.n_out, q_cols, p.q_stride});
    gather_rows({p.x, p.out_rows, p.x_out, p.n_out, D});
    attention_back_and_ffn(*this, p, l, {p.x_out, p.q_out, q_cols, &p.out_batch, p.n_out});
  }
}

}  // namespace ropepp
