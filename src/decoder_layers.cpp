// decoder_layers.cpp: Backend::decoder_layers' default, the per-layer op sequence of the forward pass for backends
// that take concatenated projections (a file of its own: Backend's vtable is emitted here, and the fuzz targets,
// which leave out backend.cpp's make_backend and the CPU kernels, link it).
#include "backend.h"

namespace ropepp {

void Backend::decoder_layers(const DecoderLayersParams& p) {
  const int n = p.batch.n_tokens, hq = p.n_q_heads;
  for (int l = 0; l < p.n_layers; ++l) {
    const DecoderLayerWeights& w = p.layers[l];
    // attention block: x += attention(rope(norm(x)·Wq), rope(norm(x)·Wk), norm(x)·Wv)·Wo
    qkv_rope_kv_append({p.x, w.attn_norm, p.eps, p.h, w.wqkv, p.qkv, n},
                       {p.qkv, hq, p.batch.positions, p.cos, p.sin, p.cache, l, p.batch});
    attention(attention_params(p.qkv, int(w.wqkv.rows), p.att, p.cache, l, p.batch, hq, p.imag));
    matmul({p.att, w.wo, p.x, n, /*accumulate=*/true});
    // feed-forward block: x += (silu(norm(x)·Wg) * norm(x)·Wu)·Wd
    const int F = int(w.w_gate_up.rows / 2);
    feed_forward({p.x, w.ffn_norm, p.eps, p.h, w.w_gate_up, p.gate_up, n},
                 {p.gate_up, p.gate_up + F, 2 * F, p.act, w.w_down, p.x, n, /*accumulate=*/true});
  }
}

}  // namespace ropepp
