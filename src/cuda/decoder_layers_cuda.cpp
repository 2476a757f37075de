// decoder_layers_cuda.cpp: see decoder_layers_cuda.h.
#include "decoder_layers_cuda.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common.h"

namespace ropepp {
namespace {

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

bool persistent_decode_launch(const DecoderLayersParams& p, const PersistentDecodeLimits& lim, DecodeLayersLaunch* l,
                              DecodeLayersPlan* plan, std::string* why) {
  auto no = [&](std::string reason) {
    *why = std::move(reason);
    return false;
  };
  const BatchView& b = p.batch;
  if (b.n_tokens != 1 || b.n_seqs != 1) return no("more than one token");
  if (p.prunes_output()) return no("logits for only some rows (the last layer runs for those alone)");
  for (int i = 0; i < p.n_layers; ++i)
    if (!p.layers[i].concatenated()) return no("separate projections (the kernel takes Wq|Wk|Wv and Wgate|Wup)");
  if (b.max_pos + 1 > lim.max_ctx) return no(fmt::format("context {} above the limit {}", b.max_pos + 1, lim.max_ctx));
  if (p.n_layers < 1 || p.n_layers > kDecodeLayersMaxLayers) return no(fmt::format("{} layers", p.n_layers));
  if (p.cache.dtype != DType::F16) return no("KV cache not f16");
  const DType wt = p.layers[0].wqkv.dtype;
  if (wt != DType::F16 && wt != DType::BF16) return no("weights not f16/bf16");
  for (int i = 0; i < p.n_layers; ++i) {
    const DecoderLayerWeights& w = p.layers[i];
    for (const Weight* m : {&w.wqkv, &w.wo, &w.w_gate_up, &w.w_down})
      if (m->dtype != wt || !aligned16(m->data)) return no("matrices of mixed dtypes or unaligned");
    for (const Weight* v : {&w.attn_norm, &w.ffn_norm})
      if (v->dtype != DType::F32) return no("norm weights not f32");
  }
  const DecoderLayerWeights& w0 = p.layers[0];
  DecodeLayersLaunch& L = *l;
  L = DecodeLayersLaunch{};
  for (int i = 0; i < p.n_layers; ++i) {
    const DecoderLayerWeights& w = p.layers[i];
    L.layers[i] = {w.wqkv.data, w.wo.data, w.w_gate_up.data, w.w_down.data, static_cast<const float*>(w.attn_norm.data),
                   static_cast<const float*>(w.ffn_norm.data)};
  }
  L.n_layers = p.n_layers;
  L.w_type = wt == DType::F16 ? HalfType::F16 : HalfType::BF16;
  L.hidden = int(w0.wqkv.cols);
  L.ffn = int(w0.w_gate_up.rows / 2);
  L.n_q_heads = p.n_q_heads;
  L.n_kv_heads = p.cache.n_kv_heads;
  L.head_dim = p.cache.head_dim;
  L.imag = p.imag;
  L.eps = p.eps;
  L.scale = float(1.0 / std::sqrt(double(L.head_dim)));
  const int64_t attn_cols = int64_t(L.n_q_heads) * (L.imag ? 2 : 1) * L.head_dim;
  if (w0.wqkv.rows != int64_t(L.n_q_heads + 2 * L.n_kv_heads) * L.head_dim || w0.wo.cols != attn_cols ||
      w0.wo.rows != L.hidden || w0.w_down.cols != L.ffn || w0.w_down.rows != L.hidden || w0.w_gate_up.cols != L.hidden)
    return no("projection shapes do not match the heads");
  L.x = p.x;
  L.qkv = p.q;
  L.att = p.att;
  L.act = p.act;
  L.cache_k = static_cast<__half*>(p.cache.k);
  L.cache_v = static_cast<__half*>(p.cache.v);
  L.layer_stride = p.cache.layer_stride();
  L.n_blocks = p.cache.n_blocks;
  L.block_size = p.cache.block_size;
  L.positions = b.positions;
  L.block_table = b.block_table;
  L.cos = p.cos;
  L.sin = p.sin;
  const char* reason = nullptr;
  if (!plan_decode_layers(L, lim.num_sms, lim.max_smem, lim.max_stages, b.max_pos, plan, &reason)) return no(reason);
  L.chunk = plan->chunk;
  L.n_chunks = plan->n_chunks;
  return true;
}

double persistent_decode_bytes(const DecoderLayersParams& p) {
  double bytes = 0;
  for (int i = 0; i < p.n_layers; ++i) {
    const DecoderLayerWeights& w = p.layers[i];
    for (const Weight* m : {&w.wqkv, &w.wo, &w.w_gate_up, &w.w_down})
      bytes += double(m->rows) * double(m->cols) * double(dtype_size(m->dtype));
  }
  const double kv = double(p.batch.max_pos + 1) * p.cache.n_kv_heads * p.cache.head_dim * 2 * 2;
  return bytes + kv * p.n_layers;
}

}  // namespace ropepp
