// backend.cpp: picks a backend from a --device string; the default decoder_layers (the per-layer op sequence).
#include <charconv>

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

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (device.size() > 4) {
      const char* b = device.data() + 5;
      const char* e = device.data() + device.size();
      auto [ptr, ec] = std::from_chars(b, e, index);
      if (ec != std::errc() || ptr != e || index < 0)
        fail("--device '{}': expected cuda:N with N a GPU index (0, 1, ...)", device);
    }
#ifdef ROPEPP_HAS_CUDA
    return make_cuda_backend(index);
#else
    fail("--device '{}': this ropepp was built without CUDA (configure with -DROPEPP_CUDA=ON)", device);
#endif
  }
  fail("--device '{}': expected cpu, cuda or cuda:N", device);
}

}  // namespace ropepp
