// backend_cuda_ops.cpp: the CUDA backend's ops (backend.h's params onto the kernels/ launchers and cuBLAS, on the
// backend's one stream). The class: backend_cuda_impl.h.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "add.cuh"
#include "argmax.cuh"
#include "attention_decode_paged.cuh"
#include "attention_out_proj_decode.cuh"
#include "attention_prefill_paged.cuh"
#include "backend_cuda_impl.h"
#include "cuda_check.cuh"
#include "embed.cuh"
#include "gather_rows.cuh"
#include "nll.cuh"
#include "rms_norm.cuh"
#include "rope.cuh"
#include "swiglu.cuh"

namespace ropepp::cuda_impl {

void CudaBackend::embed(const EmbedParams& p) {
  require_matrix(p.table, "embed", "table");
  prof_.start(stream_);
  launch_embed({p.table.data, p.tokens, p.out, p.n, int(p.table.cols), p.table.rows, half_type(p.table)}, stream_);
  after_op("embed", double(p.n) * double(p.table.cols) * 6);
}

void CudaBackend::rms_norm(const RmsNormParams& p) {
  if (p.w.rows * p.w.cols != p.dim)
    fail("cuda rms_norm: weight has {} elements, dim is {}", p.w.rows * p.w.cols, p.dim);
  if (p.w.dtype != DType::F32)
    fail("cuda rms_norm: weight dtype {} (expected F32: load_weight keeps vectors in fp32)", dtype_name(p.w.dtype));
  RmsNormLaunch l{p.x, static_cast<const float*>(p.w.data), p.out, p.n, p.dim, p.eps};
  l.pdl = pdl_;
  prof_.start(stream_);
  launch_rms_norm(l, stream_);
  after_op("rms_norm", double(p.n) * p.dim * 8);
}

void CudaBackend::matmul(const MatmulParams& p) {
  require_matrix(p.w, "matmul", "w");
  if (p.n <= 0) return;
  if (p.next_ffn && probe_skips(kSkipOProj, p.n)) return;  // (the o_proj: the matmul told what comes next)
  const int rows = int(p.w.rows), cols = int(p.w.cols);
  prof_.start(stream_);
  if (use_matvec(p.n, p.w, p.x)) {
    MatvecLaunch l = plain_matvec(p.x, p.w, p.out, p.n);
    l.accumulate = p.accumulate;
    l.l2_next = l2_next_ranges(p);
    launch_matvec_over(l, p.w);
    return after_op(fmt::format("matvec [{}x{}]{}", rows, cols, p.accumulate ? " +=" : ""), matmul_bytes(p.w, p.n));
  }
  const size_t count = size_t(p.n) * cols;
  const int parts = precise_matmul_ ? 2 : 1;
  void* xh = scratch(count * 2 * size_t(parts));  // x in the matrix's 16-bit type
  if (precise_matmul_) {
    launch_split_f32_to_half_hi_lo({p.x, xh, count}, half_type(p.w), stream_);
  } else {
    launch_convert_f32_to_half({p.x, xh, count}, half_type(p.w), stream_);
  }
  gemm(xh, p.w, p.out, p.n, p.accumulate, parts);
  after_op(fmt::format("gemm [{}x{}] n={}", rows, cols, p.n), matmul_bytes(p.w, p.n));
}

void CudaBackend::norm_matmul(const NormMatmulParams& p) {
  require_matrix(p.w, "norm_matmul", "w");
  const int cols = int(p.w.cols);
  const bool norm_ok = norm_fits(p);
  if (norm_ok && !precise_matmul_ && !use_matvec(p.n, p.w, p.x)) {
    prof_.start(stream_);
    void* xh = scratch(size_t(p.n) * cols * 2);
    RmsNormLaunch l{p.x, static_cast<const float*>(p.norm.data), nullptr, p.n, cols, p.eps};
    l.out_half = xh;
    l.out_type = half_type(p.w);
    launch_rms_norm(l, stream_);
    gemm(xh, p.w, p.out, p.n, p.accumulate, 1);
    return after_op(fmt::format("rms_norm+gemm [{}x{}] n={}", p.w.rows, cols, p.n), matmul_bytes(p.w, p.n));
  }
  if (!norm_ok || !normed_matvec_fits(p)) return Backend::norm_matmul(p);
  prof_.start(stream_);
  MatvecLaunch l = normed_matvec(p, p.out);
  l.accumulate = p.accumulate;
  launch_matvec_over(l, p.w);
  after_op(fmt::format("rms_norm+matvec [{}x{}]", p.w.rows, cols), matmul_bytes(p.w, p.n));
}

void CudaBackend::swiglu_matmul(const SwigluMatmulParams& p) {
  require_matrix(p.w, "swiglu_matmul", "w");
  const int cols = int(p.w.cols);
  if (!precise_matmul_ && !use_matvec(p.n, p.w, p.gate)) {  // GEMM: silu(gate)·up written as its 16-bit input
    prof_.start(stream_);
    void* xh = scratch(size_t(p.n) * cols * 2);
    SwigluLaunch l{p.gate, p.up, p.in_stride, nullptr, p.n, cols};
    l.out_half = xh;
    l.out_type = half_type(p.w);
    launch_swiglu(l, stream_);
    gemm(xh, p.w, p.out, p.n, p.accumulate, 1);
    return after_op(fmt::format("swiglu+gemm [{}x{}] n={}", p.w.rows, cols, p.n),
                    matmul_bytes(p.w, p.n) + double(p.n) * cols * 8);
  }
  Backend::swiglu_matmul(p);
}

void CudaBackend::rope(const RopeParams& p) {
  if (p.head_dim % 2 != 0) fail("cuda rope: head_dim {} is odd", p.head_dim);
  prof_.start(stream_);
  launch_rope({p.x, p.positions, p.cos, p.sin, p.n, p.n_heads, p.head_dim, p.row_stride}, stream_);
  after_op("rope", double(p.n) * p.n_heads * p.head_dim * 8);
}

void CudaBackend::kv_append(const KvAppendParams& p) {
  KvAppendPagedLaunch l = paged_slots(p.cache, p.layer, p.batch, "kv_append");
  l.k = p.k;
  l.v = p.v;
  l.row_stride = p.row_stride;
  prof_.start(stream_);
  launch_kv_append_paged(l, stream_);
  after_op("kv_append", double(l.n) * l.n_kv_heads * l.head_dim * 12);
}

void CudaBackend::rope_kv_append(const RopeKvAppendParams& p) {
  const RopeKvAppendLaunch l = rope_kv_launch(p, "rope_kv_append");
  prof_.start(stream_);
  launch_rope_kv_append_paged(l, stream_);
  after_op("rope+kv_append", double(l.n) * (l.n_q_heads + 2 * l.n_kv_heads) * l.head_dim * 8);
}

void CudaBackend::qkv_rope_kv_append(const NormMatmulParams& proj, const RopeKvAppendParams& r) {
  const KVCacheView& c = r.cache;
  const bool fused = fused_decode_ && r.qkv == proj.out && !proj.accumulate && norm_fits(proj) &&
                     normed_matvec_fits(proj) && proj.n == r.batch.n_tokens && c.head_dim % 2 == 0 &&
                     proj.w.rows == int64_t(r.n_q_heads + 2 * c.n_kv_heads) * c.head_dim;
  if (!fused) return Backend::qkv_rope_kv_append(proj, r);
  require_matrix(proj.w, "qkv_rope_kv_append", "w");
  if (probe_skips(kSkipQkv, proj.n)) return;
  MatvecLaunch l = normed_matvec(proj, proj.out);
  l.output = MatvecOutput::RopeKv;
  l.wide_pairs = (matvec_wide_pairs_ & 2) != 0;
  l.rope = rope_kv_launch(r, "qkv_rope_kv_append");
  prof_.start(stream_);
  launch_matvec_over(l, proj.w);
  after_op(fmt::format("rms_norm+matvec+rope+kv_append [{}x{}]", proj.w.rows, proj.w.cols),
           matmul_bytes(proj.w, proj.n));
}

void CudaBackend::feed_forward(const NormMatmulParams& gu, const SwigluMatmulParams& down) {
  const int64_t F = gu.w.rows / 2;
  const bool fused = fused_decode_ && gu.w.rows % 2 == 0 && down.w.cols == F && !gu.accumulate &&
                     down.gate == gu.out && down.up == gu.out + F && down.in_stride == 2 * F && down.n == gu.n &&
                     norm_fits(gu) && normed_matvec_fits(gu) && use_matvec(down.n, down.w, down.act);
  if (!fused) {
    if (half_act_ && feed_forward_half(gu, down)) return;
    return Backend::feed_forward(gu, down);
  }
  require_matrix(gu.w, "feed_forward", "gate_up");
  require_matrix(down.w, "feed_forward", "down");
  MatvecLaunch l = normed_matvec(gu, down.act);
  l.output = MatvecOutput::Swiglu;
  l.wide_pairs = (matvec_wide_pairs_ & 1) != 0;
  if (!probe_skips(kSkipGateUp, gu.n)) {
    prof_.start(stream_);
    launch_matvec_over(l, gu.w);
    after_op(fmt::format("rms_norm+matvec+swiglu [{}x{}]", gu.w.rows, gu.w.cols),
             matmul_bytes(gu.w, gu.n) - double(gu.n) * double(F) * 4);
  }
  if (!probe_skips(kSkipDown, down.n)) matmul({down.act, down.w, down.out, down.n, down.accumulate});
}

bool CudaBackend::feed_forward_half(const NormMatmulParams& gu, const SwigluMatmulParams& down) {
  const int64_t F = gu.w.rows / 2;
  const bool fits = !precise_matmul_ && gu.w.rows % 2 == 0 && down.w.cols == F && !gu.accumulate &&
                    down.gate == gu.out && down.up == gu.out + F && down.in_stride == 2 * F && down.n == gu.n &&
                    norm_fits(gu) && !use_matvec(gu.n, gu.w, gu.x) && !use_matvec(down.n, down.w, down.act) &&
                    gu.w.dtype == down.w.dtype;
  if (!fits) return false;
  require_matrix(gu.w, "feed_forward", "gate_up");
  require_matrix(down.w, "feed_forward", "down");
  const int n = gu.n, D = int(gu.w.cols);
  prof_.start(stream_);
  // scratch: the normed x [n, D], then silu(gate)·up [n, F], both 16-bit (the GEMM inputs).
  char* ws = static_cast<char*>(scratch(size_t(n) * (size_t(D) + size_t(F)) * 2));
  void* xh = ws;
  void* act = ws + size_t(n) * D * 2;
  RmsNormLaunch l{gu.x, static_cast<const float*>(gu.norm.data), nullptr, n, D, gu.eps};
  l.out_half = xh;
  l.out_type = half_type(gu.w);
  launch_rms_norm(l, stream_);
  gemm_half_out(xh, gu.w, gu.out, n);  // [n, 2F] 16-bit rows over gu.out's [n, 2F] floats
  SwigluLaunch sw{nullptr, nullptr, int(2 * F), nullptr, n, int(F)};
  sw.in_half = gu.out;
  sw.in_type = half_type(gu.w);
  sw.up_offset = int(F);
  sw.out_half = act;
  sw.out_type = half_type(down.w);
  launch_swiglu(sw, stream_);
  gemm(act, down.w, down.out, n, down.accumulate, 1);
  after_op(fmt::format("rms_norm+gemm [{}x{}]+swiglu+gemm [{}x{}] (16-bit gate|up) n={}", gu.w.rows, D,
                       down.w.rows, F, n),
           matmul_bytes(gu.w, n) + matmul_bytes(down.w, n) + double(n) * double(F) * 8);
  return true;
}

void CudaBackend::decoder_layers(const DecoderLayersParams& p) {
  DecodeLayersLaunch l;
  DecodeLayersPlan plan;
  std::string why;
  if (!persistent_on_ || !persistent_decode_launch(p, persistent_, &l, &plan, &why)) {
    if (persistent_on_ && p.batch.n_tokens == 1 && why != persistent_why_) {
      spdlog::debug("cuda: decode step as separate kernels: {}", why);
      persistent_why_ = why;
    }
    return Backend::decoder_layers(p);
  }
  check_cache(p.cache, p.n_layers - 1, "decoder_layers");
  const size_t part_bytes = (plan.part_floats * sizeof(float) + 255) / 256 * 256;
  char* ws = static_cast<char*>(scratch(part_bytes + plan.sync_words * sizeof(unsigned)));
  l.part = reinterpret_cast<float*>(ws);
  l.sync = reinterpret_cast<unsigned*>(ws + part_bytes);
  l.trace = persistent_trace_;
  prof_.start(stream_);
  launch_decode_layers(l, plan, stream_);
  after_op(fmt::format("decoder layers (persistent, {} layers)", p.n_layers), persistent_decode_bytes(p));
}

void CudaBackend::attention_out_proj(const AttentionParams& a, const MatmulParams& o) {
  if (attention_out_proj_fused(a, o)) return;
  const bool fits = half_act_ && !precise_matmul_ && o.x == a.out && o.n == a.batch.n_tokens &&
                    !use_matvec(o.n, o.w, o.x) && !decode_kernel_for(a.batch.n_tokens, a.batch.n_seqs) &&
                    o.w.cols == int64_t(a.n_q_heads) * (a.imag ? 2 : 1) * a.head_dim;
  if (!fits) return Backend::attention_out_proj(a, o);
  require_matrix(o.w, "attention_out_proj", "wo");
  void* xh = scratch(size_t(o.n) * size_t(o.w.cols) * 2);
  run_attention(a, xh, o.w.dtype == DType::BF16);
  prof_.start(stream_);
  gemm(xh, o.w, o.out, o.n, o.accumulate, 1);
  after_op(fmt::format("gemm [{}x{}] n={} (16-bit input from the attention)", o.w.rows, o.w.cols, o.n),
           matmul_bytes(o.w, o.n));
}

AttentionPagedLaunch CudaBackend::paged_attention_launch(const AttentionParams& p) const {
  check_cache(p.cache, p.layer, "attention");
  if (p.n_kv_heads != p.cache.n_kv_heads || p.head_dim != p.cache.head_dim)
    fail("cuda attention: n_kv_heads/head_dim {}/{} differ from the cache's {}/{}", p.n_kv_heads, p.head_dim,
         p.cache.n_kv_heads, p.cache.head_dim);
  const size_t layer_off = size_t(p.layer) * p.cache.layer_stride();
  AttentionPagedLaunch l{};
  l.q = p.q;
  l.q_row_stride = p.q_row_stride;
  l.out = p.out;
  l.cache_k = static_cast<const __half*>(p.cache.k) + layer_off;
  l.cache_v = static_cast<const __half*>(p.cache.v) + layer_off;
  l.n_blocks = p.cache.n_blocks;
  l.block_size = p.cache.block_size;
  l.positions = p.batch.positions;
  l.seq_of_token = p.batch.seq_of_token;
  l.block_table = p.batch.block_table;
  l.max_blocks_per_seq = p.batch.max_blocks_per_seq;
  l.n_tokens = p.batch.n_tokens;
  l.n_seqs = p.batch.n_seqs;
  l.max_pos = p.batch.max_pos;
  l.n_q_heads = p.n_q_heads;
  l.n_kv_heads = p.n_kv_heads;
  l.head_dim = p.head_dim;
  l.imag = p.imag;
  l.scale = p.scale;
  return l;
}

bool CudaBackend::attention_out_proj_fused(const AttentionParams& a, const MatmulParams& o) {
  if (!fused_oproj_ || !is_sm90_ || a.batch.n_tokens != 1 || o.n != 1 || o.x != a.out || !decode_kernel_for(1, 1) ||
      probe_skips(kSkipAttention | kSkipOProj, 1))
    return false;
  require_matrix(o.w, "attention_out_proj", "wo");
  AttentionOutProjDecodeLaunch l;
  l.attn = paged_attention_launch(a);
  const int d = int(o.w.rows);
  const FusedOProjPlan plan = attention_out_proj_decode_plan(l.attn, d, o.w.cols, num_sms_, fused_oproj_cluster_);
  if (plan.misfit) {
    if (plan.misfit != fused_oproj_why_) spdlog::debug("cuda: attention and o_proj as two kernels: {}", plan.misfit);
    fused_oproj_why_ = plan.misfit;
    return false;
  }
  l.attn.pdl = pdl_;
  l.attn.history_cached = a.batch.history_cached && prefetch_history_;
  l.wo = o.w.data;
  l.wo_type = half_type(o.w);
  l.x = o.out;
  l.d_model = d;
  l.accumulate = o.accumulate;
  l.splits = plan.splits;
  l.rows_per_warp = plan.rows_per_warp;
  if ((fused_oproj_rw_ == 1 || fused_oproj_rw_ == 2 || fused_oproj_rw_ == 4) &&
      d % (plan.splits * 8 * fused_oproj_rw_) == 0)
    l.rows_per_warp = fused_oproj_rw_;
  l.l2_next = l2_next_ranges(o);
  l.late_trigger = fused_oproj_late_;
  l.trace = fused_oproj_trace_;
  prof_.start(stream_);
  launch_attention_out_proj_decode(l, stream_);
  ++fused_oproj_launches_;
  after_op(fmt::format("attention+matvec [{}x{}]{} (decode, fused)", o.w.rows, o.w.cols, o.accumulate ? " +=" : ""),
           double(l.attn.max_pos + 1) * a.n_kv_heads * a.head_dim * 4 + matmul_bytes(o.w, 1));
  return true;
}

void CudaBackend::run_attention(const AttentionParams& p, void* out_half, bool out_bf16) {
  AttentionPagedLaunch l = paged_attention_launch(p);
  if (l.n_tokens <= 0) return;
  if (decode_kernel_for(l.n_tokens, l.n_seqs) && probe_skips(kSkipAttention, l.n_tokens)) return;
  // K and V bytes (f16) up to the furthest position, per token for decode (an upper bound per token)
  const double kv_bytes = double(l.max_pos + 1) * l.n_kv_heads * l.head_dim * 4;
  prof_.start(stream_);
  l.out_half = out_half;
  l.out_half_bf16 = out_bf16;
  if (decode_kernel_for(l.n_tokens, l.n_seqs)) {
    l.pdl = pdl_;
    l.history_cached = p.batch.history_cached && prefetch_history_;
    const long long ctx = (long long)l.max_pos + 1;
    // a short context unsplit on the 8-warp shape (options.decode_short_unsplit), else the planned splits
    const bool short_unsplit = decode_mma_ && ctx <= decode_short_unsplit_;
    // else up to 8 splits merged in a thread-block cluster (options.decode_cluster_merge; clusters need sm_90)
    const bool cluster = decode_mma_ && is_sm90_ && !short_unsplit && ctx <= decode_cluster_merge_;
    const int shape = short_unsplit ? 5 : decode_mma_shape_;
    // split blocks aimed at per SM: as many as are resident, unless set
    const int blocks_per_sm = decode_split_blocks_per_sm_ > 0 ? decode_split_blocks_per_sm_
                              : decode_mma_                   ? attention_decode_mma_blocks_per_sm(shape)
                                                              : 3;
    AttentionDecodePlan plan = plan_attention_decode_paged(l, num_sms_, short_unsplit ? (1 << 20) : decode_min_chunk_,
                                                           decode_split_align_, blocks_per_sm, cluster);
    plan.tensor_cores = decode_mma_;
    plan.mma_shape = shape;
    if (merge_last_block_ && size_t(l.n_tokens) * size_t(l.n_kv_heads) <= kSplitCounters)
      plan.split_counters = split_counters_;
    void* ws = plan.scratch_bytes > 0 ? scratch(plan.scratch_bytes) : nullptr;
    launch_attention_decode_paged(l, plan, ws, stream_);
    after_op(fmt::format("attention (decode, {} splits{})", plan.n_splits, plan.cluster_merge ? ", cluster" : ""),
             kv_bytes * l.n_tokens);
  } else {
    launch_attention_prefill_paged(l, {num_sms_, prefill_sm90_ && is_sm90_, prefill_ws_, prefill_tma_, prefill_ws_qreg_},
                                   stream_);
    after_op("attention (prefill)", kv_bytes * l.n_seqs);
  }
}

void CudaBackend::swiglu(const SwigluParams& p) {
  prof_.start(stream_);
  launch_swiglu({p.gate, p.up, p.in_stride, p.out, p.n, p.dim}, stream_);
  after_op("swiglu", double(p.n) * p.dim * 12);
}

void CudaBackend::add(const AddParams& p) {
  prof_.start(stream_);
  launch_add({p.x, p.y, p.count}, stream_);
  after_op("add", double(p.count) * 12);
}

void CudaBackend::gather_rows(const GatherRowsParams& p) {
  prof_.start(stream_);
  launch_gather_rows({p.x, p.rows, p.out, p.n, p.dim, p.stride()}, stream_);
  after_op("gather_rows", double(p.n) * p.dim * 8);
}

void CudaBackend::argmax(const ArgmaxParams& p) {
  void* ws = scratch(argmax_scratch_bytes(p.n));
  prof_.start(stream_);
  launch_argmax({p.logits, p.out, p.n, p.vocab, pdl_}, ws, stream_);
  after_op("argmax", double(p.n) * p.vocab * 4);
}

NextEmbedding CudaBackend::next_embedding(const EmbedParams& e) const {
  require_matrix(e.table, "norm_matmul_argmax", "embedding table");
  return {e.table.data, e.out, int(e.table.cols), e.table.rows, half_type(e.table)};
}

void CudaBackend::norm_matmul_argmax(const NormMatmulParams& head, const ArgmaxParams& pick, const EmbedParams* next) {
  const bool fused = lm_head_argmax_ && head.n == 1 && pick.n == 1 && pick.logits == head.out && !head.accumulate &&
                     pick.vocab >= 1 && pick.vocab <= head.w.rows && norm_fits(head) &&
                     use_matvec(1, head.w, head.normed) && use_matvec(1, head.w, head.x) &&
                     (!next || (next->n == 1 && next->tokens == pick.out));
  if (!fused) {
    const bool merge_embeds = argmax_embed_ && next && next->n == 1 && next->tokens == pick.out && pick.n == 1;
    if (!merge_embeds) return Backend::norm_matmul_argmax(head, pick, next);
    ArgmaxLaunch l{pick.logits, pick.out, pick.n, pick.vocab, pdl_};
    l.next = next_embedding(*next);
    norm_matmul(head);
    void* ws = scratch(argmax_scratch_bytes(pick.n));
    prof_.start(stream_);
    launch_argmax(l, ws, stream_);
    after_op("argmax+embed", double(pick.vocab) * 4 + double(next->table.cols) * 6);
    return;
  }
  require_matrix(head.w, "norm_matmul_argmax", "w");
  const NextEmbedding next_row = next ? next_embedding(*next) : NextEmbedding{};
  const bool normed = normed_matvec_fits(head);  // a small vocabulary: the RMSNorm inside the matvec too
  if (!normed) rms_norm({head.x, head.norm, head.normed, 1, int(head.w.cols), head.eps});
  MatvecLaunch l = normed ? normed_matvec(head, head.out) : plain_matvec(head.normed, head.w, head.out, 1);
  l.argmax_keys = static_cast<unsigned long long*>(scratch(size_t(head.w.rows) * sizeof(unsigned long long)));
  l.argmax_rows = pick.vocab;
  l.argmax_next.out = pick.out;
  l.argmax_next.next = next_row;
  prof_.start(stream_);
  launch_matvec_over(l, head.w);
  after_op(fmt::format("matvec+argmax [{}x{}]", head.w.rows, head.w.cols), matmul_bytes(head.w, 1));
}

void CudaBackend::nll(const NllParams& p) {
  prof_.start(stream_);
  launch_nll({p.logits, p.targets, p.out, p.n, p.vocab}, stream_);
  after_op("nll", double(p.n) * p.vocab * 4);
}

void CudaBackend::gemm(const void* xh, const Weight& w, float* out, int n, bool accumulate, int parts) {
  const int rows = int(w.rows), cols = int(w.cols);
  const size_t count = size_t(n) * cols;
  const cudaDataType_t type = w.dtype == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
  const float one = 1.f, zero = 0.f;
  for (int part = 0; part < parts; ++part)
    CUBLAS_CHECK(cb_->gemm_ex(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &one, w.data, type, cols,
                              static_cast<const char*>(xh) + part * count * 2, type, cols,
                              part == 0 && !accumulate ? &zero : &one, out, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

void CudaBackend::gemm_half_out(const void* xh, const Weight& w, void* out, int n) {
  const int rows = int(w.rows), cols = int(w.cols);
  const cudaDataType_t type = w.dtype == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
  const float one = 1.f, zero = 0.f;
  CUBLAS_CHECK(cb_->gemm_ex(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &one, w.data, type, cols, xh, type,
                            cols, &zero, out, type, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

KvAppendPagedLaunch CudaBackend::paged_slots(const KVCacheView& c, int layer, const BatchView& b, const char* op) const {
  check_cache(c, layer, op);
  const size_t layer_off = size_t(layer) * c.layer_stride();
  KvAppendPagedLaunch l{};
  l.cache_k = static_cast<__half*>(c.k) + layer_off;
  l.cache_v = static_cast<__half*>(c.v) + layer_off;
  l.n_blocks = c.n_blocks;
  l.n_kv_heads = c.n_kv_heads;
  l.block_size = c.block_size;
  l.head_dim = c.head_dim;
  l.positions = b.positions;
  l.seq_of_token = b.seq_of_token;
  l.block_table = b.block_table;
  l.max_blocks_per_seq = b.max_blocks_per_seq;
  l.n = b.n_tokens;
  return l;
}

RopeKvAppendLaunch CudaBackend::rope_kv_launch(const RopeKvAppendParams& p, const char* op) const {
  RopeKvAppendLaunch l;
  static_cast<KvAppendPagedLaunch&>(l) = paged_slots(p.cache, p.layer, p.batch, op);
  l.qkv = p.qkv;
  l.n_q_heads = p.n_q_heads;
  l.cos = p.cos;
  l.sin = p.sin;
  l.positions = p.positions;
  return l;
}

MatvecLaunch CudaBackend::plain_matvec(const float* x, const Weight& w, float* out, int n) const {
  MatvecLaunch l{x, w.data, out, n, int(w.rows), int(w.cols)};
  l.pdl = pdl_;
  l.max_blocks = matvec_grid_cap(w);
  l.max_warps = matvec_max_warps_;
  l.w_type = half_type(w);
  return l;
}

MatvecLaunch CudaBackend::normed_matvec(const NormMatmulParams& p, float* out) const {
  MatvecLaunch l = plain_matvec(p.x, p.w, out, p.n);
  l.input = MatvecInput::RmsNorm;
  l.norm_w = static_cast<const float*>(p.norm.data);
  l.eps = p.eps;
  return l;
}

}  // namespace ropepp::cuda_impl
