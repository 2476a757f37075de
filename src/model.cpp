// model.cpp: the forward pass, written once against the Backend interface (see backend.h).
//
//   x = embed(tokens)
//   x = decoder_layers(x)            (one backend op; its default, decoder_layers.cpp, runs each layer as ops:
//                                     attention block, then feed-forward block; the last layer runs its
//                                     attention and feed-forward only for the rows that need logits)
//   logits = rms_norm(x[rows that need logits])·W_lmᵀ
#include "model.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>

#include "hardening.h"

namespace ropepp {

namespace {

constexpr int kGraphMaxTokens = 8;  // chunks of up to this many tokens (decode steps) run as replayed graphs

// Graph keys: a decode step's ops differ only in the shapes below and in the attention plan, which depends on
// the context length; the length is rounded up (8 steps per doubling, at least 256) so that a long
// generation records a new graph only now and then. The attention kernels read the real positions.
int graph_ctx_bucket(int ctx, int n_ctx) {
  int step = 256;
  while (step * 16 <= ctx) step *= 2;
  return std::min((ctx + step - 1) / step * step, n_ctx);
}

// The KV pool is sized by -c (and the sequence count); on the host it is touched only as it fills, so an
// oversized one would be accepted here and end in the OOM killer mid-generation. Refuse it up front.
void check_kv_pool_fits(const ModelConfig& cfg, const ModelOptions& opt, Backend& be) {
  const uint64_t per_token = KVCache::bytes_per_token(int(cfg.n_layers), int(cfg.n_kv()), int(cfg.head_dim), be.kv_dtype());
  const uint64_t blocks = uint64_t(opt.max_seqs) * uint64_t((opt.n_ctx + opt.block_size - 1) / opt.block_size);
  uint64_t tokens = 0, bytes = 0;
  const bool overflow = mul_overflows(blocks, uint64_t(opt.block_size), &tokens) || mul_overflows(tokens, per_token, &bytes);
  if (be.name() != "cpu") return;  // device allocations fail cleanly with their sizes (Backend::alloc)
  const uint64_t avail = host_memory_available();
  if (!overflow && (avail == 0 || bytes <= avail)) return;
  constexpr double GiB = 1024.0 * 1024.0 * 1024.0;
  fail("-c/--ctx-size {}: the KV cache needs {:.1f} GiB ({} sequence(s) × {} tokens × {} bytes per token: {} layers × "
       "{} kv heads × head_dim {} × K,V × {}), but only {:.1f} GiB of memory is available (MemAvailable in "
       "/proc/meminfo); use a smaller -c/--ctx-size (about {} tokens would fit)",
       opt.n_ctx, overflow ? INFINITY : double(bytes) / GiB, opt.max_seqs, opt.n_ctx, per_token, cfg.n_layers,
       cfg.n_kv(), cfg.head_dim, dtype_name(be.kv_dtype()), double(avail) / GiB,
       per_token ? avail / per_token / uint64_t(opt.max_seqs) * 9 / 10 : 0);
}

}  // namespace

// Activations and per-batch metadata in backend memory, sized for opt.max_batch_tokens tokens.
struct Model::Scratch {
  Backend& be;
  std::vector<void*> bufs;
  explicit Scratch(Backend& b) : be(b) {}
  ~Scratch() {
    for (void* p : bufs) be.release(p);
  }
  template <class T>
  T* get(size_t count, size_t* total) {
    const size_t bytes = std::max<size_t>(count, 1) * sizeof(T);
    bufs.push_back(be.alloc(bytes));
    *total += bytes;
    return static_cast<T*>(bufs.back());
  }
  int32_t* tokens;       // [T]
  int32_t* positions;    // [T]
  int32_t* seq_of_tok;   // [T]
  int32_t* block_table;  // [max_seqs, max_blocks]
  int32_t* out_rows;     // [T] batch rows that need logits
  int32_t* out_pos;      // [T] their positions
  int32_t* out_seq;      // [T] their batch-local sequence indices
  float* x;              // [T, D] residual stream
  float* h;              // [T, D] normed (scratch of norm_matmul)
  float* q;              // [T, Hq*hd] (fused projections: [T, (Hq+2Hkv)*hd] with k and v inside)
  float* k;              // [T, Hkv*hd]
  float* v;              // [T, Hkv*hd]
  int qkv_stride;        // floats between tokens in q (and k, v)
  int kv_stride;         // ... in k and v
  float* q_out;          // [T, Hq*hd] q of the rows that need logits (shares gate's memory when it fits)
  float* att;            // [T, Ha*hd]
  float* gate;           // [T, F], row stride gu_stride
  float* up;             // [T, F], row stride gu_stride
  int gu_stride;
  float* act;            // [T, F]
  float* xo;             // [T, D] rows that need logits
  float* logits;         // [min(T, logit_rows), V]
  int32_t* targets;      // [T] target ids of the logits rows (forward_nll)
  float* nll;            // [T]
  int32_t* ids;          // [T] argmax ids (forward_argmax)
};

Weight Model::upload(const TensorInfo* t) {
  const int64_t rows = t->shape.size() == 2 ? t->shape[0] : 1;
  const int64_t cols = t->shape.back();
  Weight w = backend_.load_weight(t->data, t->dtype, rows, cols);
  owned_.push_back(w);
  weight_bytes_ += size_t(rows * cols) * dtype_size(w.dtype);
  return w;
}

Weight Model::upload_concat(std::initializer_list<const TensorInfo*> parts) {
  const TensorInfo* first = *parts.begin();
  const int64_t cols = first->shape.back();
  int64_t rows = 0;
  std::vector<HostSpan> spans;
  for (const TensorInfo* t : parts) {
    rows += t->shape[0];
    spans.push_back({t->data, t->nbytes});
  }
  Weight w = backend_.load_weight_concat(spans, first->dtype, rows, cols);
  owned_.push_back(w);
  weight_bytes_ += size_t(rows * cols) * dtype_size(w.dtype);
  return w;
}

Model::Model(const Checkpoint& ck, Backend& backend, const ModelOptions& opt)
    : backend_(backend), cfg_(ck.config), opt_(opt) {
  static std::atomic<uint64_t> next_id{1};
  instance_id_ = next_id++ * 0xD1B54A32D192ED03ull;
  if (opt.n_ctx < 1 || opt.n_ctx > 65536)
    fail("-c/--ctx-size {}: expected 1 .. 65536", opt.n_ctx);
  if (opt.max_batch_tokens < 1) fail("batch size {}: expected ≥ 1", opt.max_batch_tokens);
  if (opt.logit_rows < 1 || opt.logit_rows > 4096) fail("logits rows per matmul {}: expected 1 .. 4096", opt.logit_rows);
  if (opt_.greedy_steps == 0) {
    opt_.greedy_steps = backend_.default_greedy_steps();
    if (const char* e = std::getenv("ROPEPP_GREEDY_STEPS"); e && *e) {
      char* end = nullptr;
      const long v = std::strtol(e, &end, 10);
      if (*end != '\0' || v < 1 || v > kMaxChainedSteps)
        fail("ROPEPP_GREEDY_STEPS={}: expected 1 .. {}", e, kMaxChainedSteps);
      opt_.greedy_steps = int(v);
    }
  }
  if (opt_.greedy_steps < 1 || opt_.greedy_steps > kMaxChainedSteps)
    fail("greedy steps per call {}: expected 1 .. {}", opt_.greedy_steps, kMaxChainedSteps);
  opt_.greedy_steps = std::min(opt_.greedy_steps, opt.max_batch_tokens);
  if (opt.max_seqs < 1 || opt.block_size < 1)
    fail("KV cache: {} sequences of blocks of {} tokens: expected ≥ 1 of each", opt.max_seqs, opt.block_size);
  check_kv_pool_fits(cfg_, opt, backend_);
  if (cfg_.head_dim % 2 != 0) fail("{}: head_dim {} must be even for RoPE", cfg_.path.string(), cfg_.head_dim);
  if (cfg_.max_position_embeddings > 0 && opt.n_ctx > cfg_.max_position_embeddings)
    spdlog::warn("context {} is longer than the model's max_position_embeddings {}", opt.n_ctx,
                 cfg_.max_position_embeddings);

  const auto t_weights = std::chrono::steady_clock::now();
  embed_ = upload(ck.embed);
  final_norm_ = upload(ck.final_norm);
  lm_head_ = ck.lm_head == ck.embed ? embed_ : upload(ck.lm_head);
  // Fused projections need one dtype per concatenated group (checkpoints have one dtype throughout).
  fused_ = backend_.wants_fused_projections();
  for (const LayerTensors& lt : ck.layers)
    fused_ = fused_ && lt.wq->dtype == lt.wk->dtype && lt.wq->dtype == lt.wv->dtype && lt.w_gate->dtype == lt.w_up->dtype;
  for (const LayerTensors& lt : ck.layers) {
    DecoderLayerWeights lw;
    lw.attn_norm = upload(lt.attn_norm);
    if (fused_) {
      lw.wqkv = upload_concat({lt.wq, lt.wk, lt.wv});
      lw.w_gate_up = upload_concat({lt.w_gate, lt.w_up});
    } else {
      lw.wq = upload(lt.wq);
      lw.wk = upload(lt.wk);
      lw.wv = upload(lt.wv);
      lw.w_gate = upload(lt.w_gate);
      lw.w_up = upload(lt.w_up);
    }
    lw.wo = upload(lt.wo);
    lw.ffn_norm = upload(lt.ffn_norm);
    lw.w_down = upload(lt.w_down);
    layers_.push_back(lw);
  }
  spdlog::debug("model: weights uploaded in {:.3f} s",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t_weights).count());

  const RopeTables rt = make_rope_tables(cfg_, opt.n_ctx);
  const size_t table_bytes = rt.cos.size() * sizeof(float);
  rope_cos_ = static_cast<float*>(backend_.alloc(table_bytes));
  rope_sin_ = static_cast<float*>(backend_.alloc(table_bytes));
  backend_.upload(rope_cos_, rt.cos.data(), table_bytes);
  backend_.upload(rope_sin_, rt.sin.data(), table_bytes);
  scratch_bytes_ += 2 * table_bytes;

  KVCacheConfig kc;
  kc.n_layers = int(cfg_.n_layers);
  kc.n_kv_heads = int(cfg_.n_kv());
  kc.head_dim = int(cfg_.head_dim);
  kc.block_size = opt.block_size;
  kc.max_seqs = opt.max_seqs;
  kc.n_blocks = opt.max_seqs * ((opt.n_ctx + opt.block_size - 1) / opt.block_size);
  cache_ = std::make_unique<KVCache>(backend_, kc);

  const size_t T = size_t(opt.max_batch_tokens);
  const size_t D = size_t(cfg_.hidden_size), F = size_t(cfg_.intermediate_size), hd = size_t(cfg_.head_dim);
  const size_t max_blocks = size_t((opt.n_ctx + opt.block_size - 1) / opt.block_size);
  auto& s = *(scratch_ = std::make_unique<Scratch>(backend_));
  size_t* tot = &scratch_bytes_;
  s.tokens = s.get<int32_t>(T, tot);
  s.positions = s.get<int32_t>(T, tot);
  s.seq_of_tok = s.get<int32_t>(T, tot);
  s.block_table = s.get<int32_t>(size_t(opt.max_seqs) * max_blocks, tot);
  s.out_rows = s.get<int32_t>(T, tot);
  s.out_pos = s.get<int32_t>(T, tot);
  s.out_seq = s.get<int32_t>(T, tot);
  s.x = s.get<float>(T * D, tot);
  s.h = s.get<float>(T * D, tot);
  const size_t q_cols = size_t(cfg_.n_q_heads()) * hd, kv_cols = size_t(cfg_.n_kv()) * hd;
  if (fused_) {
    s.q = s.get<float>(T * (q_cols + 2 * kv_cols), tot);
    s.k = s.q + q_cols;
    s.v = s.k + kv_cols;
    s.qkv_stride = s.kv_stride = int(q_cols + 2 * kv_cols);
    s.gate = s.get<float>(T * 2 * F, tot);
    s.up = s.gate + F;
    s.gu_stride = int(2 * F);
  } else {
    s.q = s.get<float>(T * q_cols, tot);
    s.k = s.get<float>(T * kv_cols, tot);
    s.v = s.get<float>(T * kv_cols, tot);
    s.qkv_stride = int(q_cols);
    s.kv_stride = int(kv_cols);
    s.gate = s.get<float>(T * F, tot);
    s.up = s.get<float>(T * F, tot);
    s.gu_stride = int(F);
  }
  // q_out is read by the last layer's attention; gate is written after it (DecoderLayersParams::q_out)
  s.q_out = q_cols <= size_t(s.gu_stride) ? s.gate : s.get<float>(T * q_cols, tot);
  s.att = s.get<float>(T * size_t(cfg_.n_attn_heads()) * hd, tot);
  s.act = s.get<float>(T * F, tot);
  s.xo = s.get<float>(T * D, tot);
  // Logits rows are computed in pieces of at most logit_rows: [T, vocab] fp32 would be 2 GiB at T = 4096.
  s.logits = s.get<float>(std::min(T, size_t(opt_.logit_rows)) * size_t(cfg_.vocab_size), tot);
  s.targets = s.get<int32_t>(T, tot);
  s.ids = s.get<int32_t>(T, tot);
  s.nll = s.get<float>(T, tot);
}

size_t Model::planned_scratch_bytes(const ModelConfig& cfg, const ModelOptions& opt, bool fused) {
  const size_t T = size_t(opt.max_batch_tokens), D = size_t(cfg.hidden_size), F = size_t(cfg.intermediate_size);
  const size_t hd = size_t(cfg.head_dim), V = size_t(cfg.vocab_size);
  const size_t max_blocks = size_t((opt.n_ctx + opt.block_size - 1) / opt.block_size);
  auto b = [](size_t count) { return std::max<size_t>(count, 1) * 4; };  // every buffer holds 4-byte elements
  const size_t qkv = size_t(cfg.n_q_heads()) * hd + 2 * size_t(cfg.n_kv()) * hd;
  size_t total = 2 * size_t(opt.n_ctx) * (hd / 2) * 4;  // rope cos/sin tables
  total += 6 * b(T) + b(size_t(opt.max_seqs) * max_blocks);  // tokens, positions, seq_of_tok, out_*; block table
  total += 3 * b(T * D);                                     // x, h, xo
  total += fused ? b(T * qkv) : b(T * size_t(cfg.n_q_heads()) * hd) + 2 * b(T * size_t(cfg.n_kv()) * hd);
  total += b(T * size_t(cfg.n_attn_heads()) * hd);           // att
  total += fused ? b(T * 2 * F) : 2 * b(T * F);              // gate, up
  const size_t q_cols = size_t(cfg.n_q_heads()) * hd;
  if (q_cols > (fused ? 2 * F : F)) total += b(T * q_cols);  // q_out (else inside gate)
  total += b(T * F);                                         // act
  total += b(std::min(T, size_t(opt.logit_rows)) * V);      // logits
  total += 3 * b(T);                                         // targets, nll, ids
  return total;
}

size_t Model::decode_weight_bytes() const {
  auto bytes = [](const Weight& w) { return size_t(w.rows * w.cols) * dtype_size(w.dtype); };
  size_t total = bytes(final_norm_) + bytes(lm_head_) + size_t(embed_.cols) * dtype_size(embed_.dtype);
  for (const DecoderLayerWeights& l : layers_)
    for (const Weight* w : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down,
                            &l.wqkv, &l.w_gate_up})
      total += bytes(*w);
  return total;
}

Model::~Model() {
  backend_.graph_clear();
  scratch_.reset();
  cache_.reset();
  backend_.release(rope_cos_);
  backend_.release(rope_sin_);
  for (const Weight& w : owned_) backend_.release_weight(w);
}

std::vector<Model::PlannedToken> Model::plan(std::span<const SeqChunk> batch, size_t* n_rows) const {
  std::set<int> seen;
  std::vector<PlannedToken> plan;
  for (const SeqChunk& c : batch) {
    if (!seen.insert(c.seq).second) fail("forward: sequence {} appears twice in one batch", c.seq);
    if (c.tokens.empty()) fail("forward: empty token list for sequence {}", c.seq);
    const int end = cache_->length(c.seq) + int(c.tokens.size());
    if (end > opt_.n_ctx)
      fail("context full: the sequence needs {} positions, the context holds {} (raise -c/--ctx-size)", end,
           opt_.n_ctx);
    for (size_t i = 0; i < c.tokens.size(); ++i) {
      const int32_t t = c.tokens[i];
      if (t < 0 || t >= cfg_.vocab_size) fail("token id {} is outside the vocabulary [0, {})", t, cfg_.vocab_size);
      const bool logits = c.all_logits || i + 1 == c.tokens.size() || (c.logits_from >= 0 && int(i) >= c.logits_from);
      plan.push_back({c.seq, t, logits});
    }
  }
  *n_rows = 0;
  for (const PlannedToken& p : plan) *n_rows += p.logits;
  return plan;
}

void Model::forward_rows(std::span<const PlannedToken> pl, RowsOut out) {
  const size_t V = size_t(cfg_.vocab_size);
  for (size_t off = 0; off < pl.size(); off += size_t(opt_.max_batch_tokens)) {
    const auto part = std::span(pl).subspan(off, std::min(pl.size() - off, size_t(opt_.max_batch_tokens)));
    forward_chunk(part, out);
    size_t rows = 0;
    for (const PlannedToken& p : part) rows += p.logits;
    if (out.logits) out.logits += rows * V;
    if (out.targets) out.targets += rows, out.nll += rows;
    if (out.ids) out.ids += rows;
  }
}

std::vector<float> Model::forward(std::span<const SeqChunk> batch) {
  size_t n_rows = 0;
  const std::vector<PlannedToken> pl = plan(batch, &n_rows);
  std::vector<float> logits(n_rows * size_t(cfg_.vocab_size));
  RowsOut out;
  out.logits = logits.data();
  forward_rows(pl, out);
  return logits;
}

std::vector<float> Model::forward_nll(std::span<const SeqChunk> batch, std::span<const int32_t> targets) {
  std::vector<float> nll(targets.size());
  wait(forward_nll_queued(batch, targets, nll.data()));
  return nll;
}

uint64_t Model::forward_nll_queued(std::span<const SeqChunk> batch, std::span<const int32_t> targets, float* nll) {
  size_t n_rows = 0;
  const std::vector<PlannedToken> pl = plan(batch, &n_rows);
  if (targets.size() != n_rows) fail("forward_nll: {} targets for {} logits rows", targets.size(), n_rows);
  for (int32_t t : targets)
    if (t < 0 || t >= cfg_.vocab_size) fail("target id {} is outside the vocabulary [0, {})", t, cfg_.vocab_size);
  uint64_t ticket = 0;
  RowsOut out;
  out.targets = targets.data();
  out.nll = nll;
  out.ticket = &ticket;
  forward_rows(pl, out);
  return ticket;
}

Model::RowsOut Model::argmax_out(int32_t* ids, int vocab_limit) const {
  if (vocab_limit < 0 || vocab_limit > cfg_.vocab_size)
    fail("forward_argmax: vocabulary limit {} outside [0, {}]", vocab_limit, cfg_.vocab_size);
  RowsOut out;
  out.ids = ids;
  out.vocab_limit = vocab_limit == 0 ? int(cfg_.vocab_size) : vocab_limit;
  return out;
}

std::vector<int32_t> Model::forward_argmax(std::span<const SeqChunk> batch, int vocab_limit) {
  size_t n_rows = 0;
  const std::vector<PlannedToken> pl = plan(batch, &n_rows);
  std::vector<int32_t> ids(n_rows);
  forward_rows(pl, argmax_out(ids.data(), vocab_limit));
  return ids;
}

uint64_t Model::forward_argmax_queued(int seq, int32_t token, int32_t* id, int vocab_limit, int steps) {
  RowsOut out = argmax_out(id, vocab_limit);
  if (token < 0 && !last_call_one_id_)
    fail("forward_argmax_queued: no argmax id of a previous call to take as the input (the last forward call was "
         "not an argmax of one row)");
  if (steps < 1 || steps > std::min(kMaxChainedSteps, opt_.max_batch_tokens))
    fail("forward_argmax_queued: {} chained steps: expected 1 .. {}", steps,
         std::min(kMaxChainedSteps, opt_.max_batch_tokens));
  // plan() checks the id and that the context holds every step's position (a chunk of `steps` tokens stands for
  // them); the call itself is one token with logits, whose chunk forward_chunk extends to the steps.
  const std::vector<int32_t> t(size_t(steps), token < 0 ? 0 : token);
  size_t n_rows = 0;
  const SeqChunk all{seq, t, false};
  plan(std::span(&all, 1), &n_rows);
  const PlannedToken first{seq, t[0], true};
  uint64_t ticket = 0;
  out.ticket = &ticket;
  out.ids_input = token < 0;
  out.steps = steps;
  forward_chunk(std::span(&first, 1), out);
  return ticket;
}

void Model::forward_chunk(std::span<const PlannedToken> part, const RowsOut& out) {
  Scratch& s = *scratch_;
  const int n = int(part.size());
  last_call_one_id_ = false;  // set again below by an argmax call of one row that gets through
  const int max_blocks = (opt_.n_ctx + opt_.block_size - 1) / opt_.block_size;

  // ---- batch metadata: positions continue each sequence; sequences get batch-local indices ----------
  std::vector<int32_t> tokens(static_cast<size_t>(n)), positions(static_cast<size_t>(n)),
      seq_of(static_cast<size_t>(n)), out_rows, out_pos, out_seq;
  std::vector<int> seqs;  // batch-local index -> cache sequence id
  std::vector<int> next_pos;
  for (int i = 0; i < n; ++i) {
    const PlannedToken& p = part[size_t(i)];
    auto it = std::find(seqs.begin(), seqs.end(), p.seq);
    if (it == seqs.end()) {
      seqs.push_back(p.seq);
      next_pos.push_back(cache_->length(p.seq));
      it = seqs.end() - 1;
    }
    const size_t b = size_t(it - seqs.begin());
    tokens[size_t(i)] = p.token;
    positions[size_t(i)] = next_pos[b]++;
    seq_of[size_t(i)] = int32_t(b);
    if (p.logits) {
      out_rows.push_back(i);
      out_pos.push_back(positions[size_t(i)]);
      out_seq.push_back(seq_of[size_t(i)]);
    }
  }
  const int steps = out.steps;  // > 1: chained greedy steps of one token at positions p0 .. p0 + steps − 1
  for (int j = 1; j < steps; ++j) positions.push_back(positions[0] + j);
  if (steps > 1) next_pos[0] += steps - 1;
  std::vector<int32_t> table(seqs.size() * size_t(max_blocks), -1);
  int max_pos = 0;
  for (size_t b = 0; b < seqs.size(); ++b) {
    cache_->reserve(seqs[b], next_pos[b]);
    const auto& bt = cache_->block_table(seqs[b]);
    std::copy(bt.begin(), bt.end(), table.begin() + ptrdiff_t(b * size_t(max_blocks)));
    max_pos = std::max(max_pos, next_pos[b] - 1);
  }
  const int n_out = int(out_rows.size());
  // The rows that need logits are all rows, in order (a decode step): no gather.
  const bool gather = n_out != n;
  // Small chunks (decode steps) run as a recorded graph of ops; the key holds everything their ops' params
  // depend on. The first run of a key is eager (it sizes the backend's scratch), later ones record/replay.
  // Scoring calls (targets: perplexity windows, mostly of one shape) too when the backend asks for it; their
  // key has the exact context (a decode step's is bucketed so that a generation reuses a few graphs).
  const bool decode_graph = n <= kGraphMaxTokens && n_out <= opt_.logit_rows && !out.targets;
  const bool scoring_graph = out.targets != nullptr && backend_.graphs_for_scoring();
  const bool graphable = decode_graph || scoring_graph;
  uint64_t key = 0;
  if (graphable) {
    if (decode_graph) max_pos = graph_ctx_bucket(max_pos + 1, opt_.n_ctx) - 1;
    key = instance_id_;  // graphs hold this model's buffers: never replay another model's
    for (uint64_t v : {uint64_t(n), uint64_t(seqs.size()), uint64_t(n_out), uint64_t(gather),
                       uint64_t(out.ids != nullptr), uint64_t(max_pos), uint64_t(out.vocab_limit),
                       uint64_t(out.targets != nullptr), uint64_t(out.ids_input), uint64_t(steps),
                       uint64_t(out.ids_input ? last_id_slot_ : 0)})
      key = (key ^ v) * 0x100000001B3ull + 0x9E3779B97F4A7C15ull;
  }
  if (!out.ids_input) backend_.upload_async(s.tokens, tokens.data(), tokens.size() * 4);
  backend_.upload_async(s.positions, positions.data(), positions.size() * 4);
  // The sequence map and block table of a decode step change only now and then (a new cache block every
  // block_size tokens): skip their uploads when they equal what was last queued to those buffers.
  auto upload_if_changed = [&](int32_t* dst, const std::vector<int32_t>& v, std::vector<int32_t>& last) {
    if (v == last) return;
    backend_.upload_async(dst, v.data(), v.size() * 4);
    last = v;
  };
  upload_if_changed(s.seq_of_tok, seq_of, last_seq_of_);
  upload_if_changed(s.block_table, table, last_table_);
  if (gather) {
    backend_.upload_async(s.out_rows, out_rows.data(), out_rows.size() * 4);
    backend_.upload_async(s.out_pos, out_pos.data(), out_pos.size() * 4);
    backend_.upload_async(s.out_seq, out_seq.data(), out_seq.size() * 4);
  }
  if (out.targets) backend_.upload_async(s.targets, out.targets, size_t(n_out) * sizeof(int32_t));

  BatchView bv;
  bv.n_tokens = n;
  bv.n_seqs = int(seqs.size());
  bv.max_blocks_per_seq = max_blocks;
  bv.max_pos = max_pos;
  bv.tokens = out.ids_input ? s.ids + last_id_slot_ : s.tokens;  // ids_input: the last argmax, where it lies (n == 1)
  bv.positions = s.positions;
  bv.seq_of_token = s.seq_of_tok;
  bv.block_table = s.block_table;
  bv.history_cached = bv.n_tokens == bv.n_seqs;
  BatchView out_bv = bv;  // the rows that need logits, as a batch (used when gather)
  out_bv.history_cached = false;  // their sequences' earlier rows may be written by this call
  out_bv.n_tokens = n_out;
  out_bv.positions = s.out_pos;
  out_bv.seq_of_token = s.out_seq;

  if (!graphable || !backend_.graph_replay(key)) {
    const bool seen = std::find(graph_keys_seen_.begin(), graph_keys_seen_.end(), key) != graph_keys_seen_.end();
    const bool recording = graphable && seen && backend_.graph_begin(key);
    if (graphable && !seen) graph_keys_seen_.push_back(key);
    try {
      for (int j = 0; j < steps; ++j) {  // step j > 0 reads step j − 1's id and the next position
        BatchView bj = bv;
        if (j > 0) bj.positions = s.positions + j, bj.tokens = s.ids + (j - 1);
        run_decoder(bj, out_bv, n_out, gather, out, j);
      }
    } catch (...) {
      if (recording) backend_.graph_end(/*launch=*/false);
      throw;
    }
    if (recording) backend_.graph_end(/*launch=*/true);
  }
  for (size_t b = 0; b < seqs.size(); ++b) cache_->set_length(seqs[b], next_pos[b]);

  // ---- results to the host ----------------------------------------------------------------------------
  const size_t V = size_t(cfg_.vocab_size);
  if (out.ids && out.ticket) {
    *out.ticket = backend_.download_later(out.ids, s.ids, size_t(n_out) * size_t(steps) * sizeof(int32_t));
  } else if (out.ids) {
    backend_.download(out.ids, s.ids, size_t(n_out) * size_t(steps) * sizeof(int32_t));
  }
  last_call_one_id_ = out.ids && n_out == 1;
  last_id_slot_ = steps - 1;
  if (out.nll) *out.ticket = backend_.download_later(out.nll, s.nll, size_t(n_out) * sizeof(float));
  if (out.logits && n_out <= opt_.logit_rows) backend_.download(out.logits, s.logits, size_t(n_out) * V * sizeof(float));
}

void Model::run_decoder(const BatchView& bv, const BatchView& out_bv, int n_out, bool gather, const RowsOut& out,
                        int id_slot) {
  Scratch& s = *scratch_;
  const int D = int(cfg_.hidden_size);
  const float eps = float(cfg_.rms_norm_eps);

  // A chained step after the first finds its x written by the step before (norm_matmul_argmax's `next`).
  if (id_slot == 0) backend_.embed({embed_, bv.tokens, s.x, bv.n_tokens});
  DecoderLayersParams p{layers_.data(), int(layers_.size()), s.x, s.h, s.q, s.k, s.v, s.qkv_stride, s.kv_stride,
                        s.att, s.gate, s.up, s.gu_stride, s.act, rope_cos_, rope_sin_, cache_->view(), bv,
                        int(cfg_.n_q_heads()), cfg_.imag(), eps};
  if (gather) {
    p.n_out = n_out;
    p.out_rows = s.out_rows;
    p.out_batch = out_bv;
    p.x_out = s.xo;
    p.q_out = s.q_out;
  }
  backend_.decoder_layers(p);

  // ---- logits of the rows that need them -----------------------------------------------------------
  if (n_out == 0) return;
  const float* xo = gather ? s.xo : s.x;  // decoder_layers left the output rows there
  const size_t V = size_t(cfg_.vocab_size);
  for (int r0 = 0; r0 < n_out; r0 += opt_.logit_rows) {
    const int rows = std::min(n_out - r0, opt_.logit_rows);
    const NormMatmulParams head{xo + size_t(r0) * size_t(D), final_norm_, eps, s.h, lm_head_, s.logits, rows};
    if (out.ids && rows == 1) {  // a decode step's greedy token: the lm_head and its argmax in one op
      const EmbedParams next{embed_, s.ids + id_slot, s.x, 1};  // a chained step's input, but the last's
      backend_.norm_matmul_argmax(head, {s.logits, s.ids + id_slot + r0, 1, out.vocab_limit},
                                  id_slot + 1 < out.steps ? &next : nullptr);
      continue;
    }
    backend_.norm_matmul(head);
    if (out.targets) {
      backend_.nll({s.logits, s.targets + r0, s.nll + r0, rows, int(V)});
    } else if (out.ids) {
      if (out.vocab_limit == int(V)) {
        backend_.argmax({s.logits, s.ids + id_slot + r0, rows, int(V)});
      } else {  // rows are V apart: one row at a time over the first vocab_limit logits
        for (int r = 0; r < rows; ++r)
          backend_.argmax({s.logits + size_t(r) * V, s.ids + id_slot + r0 + r, 1, out.vocab_limit});
      }
    } else if (n_out > opt_.logit_rows) {  // more rows than the buffer: download piece by piece (not graphed)
      backend_.download(out.logits + size_t(r0) * V, s.logits, size_t(rows) * V * sizeof(float));
    }
  }
}

}  // namespace ropepp
