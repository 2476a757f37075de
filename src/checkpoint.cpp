// checkpoint.cpp: binds a HF Llama checkpoint's tensors by role, resolves the RoPE++ mode against the
// tensor shapes (rope_config / shape inference / --rope-mode) and validates every weight's shape and dtype.
#include "checkpoint.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <array>
#include <charconv>
#include <set>
#include <string>
#include <utility>

#include "common.h"

namespace ropepp {

namespace fs = std::filesystem;

namespace {

std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::string layer_name(int64_t i, const char* suffix) { return fmt::format("model.layers.{}.{}", i, suffix); }

// q_proj rows and o_proj cols that mode `m` needs (head_dim hd, H attention heads as in config.json).
struct AttnDims {
  int64_t q_rows;
  int64_t o_cols;
};
AttnDims attn_dims(const ModelConfig& c, RopeMode m) {
  const int64_t H = c.n_heads, hd = c.head_dim;
  switch (m) {
    case RopeMode::Rope:
      return {H * hd, H * hd};
    case RopeMode::EH:
      return {H / 2 * hd, H * hd};
    case RopeMode::EC:
      return {H * hd, 2 * H * hd};
  }
  return {0, 0};
}

bool eh_possible(const ModelConfig& c) { return c.n_heads % 2 == 0 && c.n_kv_heads % 2 == 0; }

class Binder {
 public:
  Binder(const SafetensorsSet& st, const fs::path& dir) : st_(st), dir_(dir.string()) {}

  const TensorInfo* require(const std::string& name) {
    const TensorInfo* t = st_.find(name);
    if (!t) fail("missing tensor {} in {}", name, dir_);
    bound_.insert(name);
    return t;
  }

  // Present, of the expected shape; `why` says where the expected shape comes from.
  const TensorInfo* expect(const std::string& name, std::vector<int64_t> shape, const std::string& why) {
    const TensorInfo* t = require(name);
    if (t->shape != shape)
      fail("tensor {} in {}: expected shape {}, got {} ({})", name, t->file.string(), shape_str(shape),
           shape_str(t->shape), why);
    if (t->dtype != DType::BF16 && t->dtype != DType::F16 && t->dtype != DType::F32)
      fail("tensor {} in {}: dtype {} is not supported (BF16, F16, F32)", name, t->file.string(), dtype_name(t->dtype));
    return t;
  }

  const std::set<std::string>& bound() const { return bound_; }

 private:
  const SafetensorsSet& st_;
  std::string dir_;
  std::set<std::string> bound_;
};

// Resolves config.mode: --rope-mode, else rope_config, else inference from layer 0's q_proj/o_proj shapes.
// The chosen mode must match the shapes.
void resolve_mode(ModelConfig& cfg, Binder& b, std::optional<RopeMode> mode_override) {
  const std::string qn = layer_name(0, "self_attn.q_proj.weight");
  const std::string on = layer_name(0, "self_attn.o_proj.weight");
  const TensorInfo* q = b.require(qn);
  const TensorInfo* o = b.require(on);
  if (q->shape.size() != 2)
    fail("tensor {} in {}: expected a 2-D shape [q_heads*head_dim, {}], got {}", qn, q->file.string(), cfg.hidden_size,
         shape_str(q->shape));
  if (o->shape.size() != 2)
    fail("tensor {} in {}: expected a 2-D shape [{}, attn_heads*head_dim], got {}", on, o->file.string(),
         cfg.hidden_size, shape_str(o->shape));
  const int64_t rq = q->shape[0], co = o->shape[1];
  const int64_t D = cfg.hidden_size;

  auto matches = [&](RopeMode m) {
    if (m == RopeMode::EH && !eh_possible(cfg)) return false;
    AttnDims d = attn_dims(cfg, m);
    return d.q_rows == rq && d.o_cols == co;
  };
  auto needs = [&](RopeMode m) {
    if (m == RopeMode::EH && !eh_possible(cfg))
      return fmt::format("eh needs even num_attention_heads and num_key_value_heads (config has {} and {})",
                         cfg.n_heads, cfg.n_kv_heads);
    AttnDims d = attn_dims(cfg, m);
    return fmt::format("{} needs {} [{}, {}] and {} [{}, {}]", rope_mode_name(m), qn, d.q_rows, D, on, D, d.o_cols);
  };
  const std::string actual = fmt::format("{} is {} and {} is {}", qn, shape_str(q->shape), on, shape_str(o->shape));
  const std::string dims = fmt::format("num_attention_heads {}, head_dim {}", cfg.n_heads, cfg.head_dim);

  std::optional<RopeMode> inferred;
  for (RopeMode m : {RopeMode::Rope, RopeMode::EH, RopeMode::EC})
    if (matches(m)) inferred = m;

  if (mode_override) {
    if (!matches(*mode_override))
      fail("--rope-mode {} contradicts the tensor shapes in {}: {}; {} ({})", rope_mode_name(*mode_override),
           q->file.string(), actual, needs(*mode_override), dims);
    if (cfg.config_mode && *cfg.config_mode != *mode_override)
      spdlog::warn("--rope-mode {} overrides rope_config's mode {} in {}", rope_mode_name(*mode_override),
                   rope_mode_name(*cfg.config_mode), cfg.path.string());
    cfg.mode = *mode_override;
  } else if (cfg.config_mode) {
    if (!matches(*cfg.config_mode))
      fail("rope_config in {} says mode {} but the tensor shapes disagree: {}; {} ({}){}", cfg.path.string(),
           rope_mode_name(*cfg.config_mode), actual, needs(*cfg.config_mode), dims,
           inferred ? fmt::format("; the shapes fit mode {}", rope_mode_name(*inferred)) : std::string());
    cfg.mode = *cfg.config_mode;
  } else if (inferred) {
    cfg.mode = *inferred;
    spdlog::debug("{}: no rope_config; mode {} inferred from {}", cfg.path.string(), rope_mode_name(cfg.mode), actual);
  } else {
    fail("cannot infer the RoPE mode of {}: {}; {}; {}; {} ({})", q->file.parent_path().string(), actual,
         needs(RopeMode::Rope), needs(RopeMode::EH), needs(RopeMode::EC), dims);
  }
}

// "model.layers.<i>.<rest>" → i, or -1 when the name does not have that form.
int64_t layer_index(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  const char* b = name.data() + prefix.size();
  const char* e = name.data() + name.size();
  int64_t i = -1;
  auto [p, ec] = std::from_chars(b, e, i);
  if (ec != std::errc() || p == b || p == e || *p != '.') return -1;
  return i;
}

void check_unbound(const Checkpoint& ck, const std::set<std::string>& bound) {
  for (const auto& [name, t] : ck.st->tensors()) {
    if (bound.count(name)) continue;
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (bias && (layer_index(name) >= 0 || name.rfind("lm_head.", 0) == 0 || name.rfind("model.", 0) == 0))
      fail("tensor {} in {}: bias tensors are not supported (ropepp's Llama has no biases)", name, t.file.string());
    const int64_t li = layer_index(name);
    if (li >= ck.config.n_layers)
      spdlog::warn("tensor {} in {} belongs to layer {}, but config.json has num_hidden_layers {}; ignored", name,
                   t.file.string(), li, ck.config.n_layers);
    else
      spdlog::debug("ignoring tensor {} in {}", name, t.file.string());
  }
}

}  // namespace

int64_t Checkpoint::n_params() const {
  int64_t n = 0;
  auto add = [&](const TensorInfo* t) {
    if (t) n += t->numel();
  };
  add(embed);
  add(final_norm);
  if (lm_head != embed) add(lm_head);
  for (const LayerTensors& l : layers)
    for (const TensorInfo* t : {l.attn_norm, l.wq, l.wk, l.wv, l.wo, l.ffn_norm, l.w_gate, l.w_up, l.w_down}) add(t);
  return n;
}

DType Checkpoint::weight_dtype() const { return embed ? embed->dtype : DType::F32; }

std::unique_ptr<Checkpoint> load_checkpoint(const fs::path& dir, std::optional<RopeMode> mode_override) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail("checkpoint directory {} does not exist", dir.string());
  if (!fs::is_directory(dir, ec)) fail("checkpoint path {} is not a directory", dir.string());

  auto ck = std::make_unique<Checkpoint>();
  ck->dir = dir;
  ck->config = parse_config(dir / "config.json");
  ck->st = SafetensorsSet::open_dir(dir);
  ModelConfig& cfg = ck->config;
  Binder b(*ck->st, dir);

  resolve_mode(cfg, b, mode_override);

  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, V = cfg.vocab_size, hd = cfg.head_dim;
  const int64_t Hq = cfg.n_q_heads(), Hkv = cfg.n_kv(), Ha = cfg.n_attn_heads();
  const std::string why_top = fmt::format("vocab_size {}, hidden_size {}", V, D);
  const std::string why_attn =
      fmt::format("mode {}: q heads {}, kv heads {}, attention heads {}, head_dim {}, hidden_size {}",
                  rope_mode_name(cfg.mode), Hq, Hkv, Ha, hd, D);
  const std::string why_mlp = fmt::format("hidden_size {}, intermediate_size {}", D, F);
  const std::string why_norm = fmt::format("hidden_size {}", D);

  ck->embed = b.expect("model.embed_tokens.weight", {V, D}, why_top);
  ck->final_norm = b.expect("model.norm.weight", {D}, why_norm);
  if (ck->st->find("lm_head.weight")) {
    ck->lm_head = b.expect("lm_head.weight", {V, D}, why_top);
    if (cfg.tie_word_embeddings)
      spdlog::debug("{}: tie_word_embeddings is true but lm_head.weight is present; using lm_head.weight",
                    dir.string());
  } else if (cfg.tie_word_embeddings) {
    ck->lm_head = ck->embed;
  } else {
    fail("missing tensor lm_head.weight in {} (tie_word_embeddings is false in {})", dir.string(), cfg.path.string());
  }

  // Layer by layer: num_hidden_layers (up to 2^31 - 1) is only trusted as far as its tensors exist.
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    LayerTensors& l = ck->layers.emplace_back();
    l.attn_norm = b.expect(layer_name(i, "input_layernorm.weight"), {D}, why_norm);
    l.wq = b.expect(layer_name(i, "self_attn.q_proj.weight"), {Hq * hd, D}, why_attn);
    l.wk = b.expect(layer_name(i, "self_attn.k_proj.weight"), {Hkv * hd, D}, why_attn);
    l.wv = b.expect(layer_name(i, "self_attn.v_proj.weight"), {Hkv * hd, D}, why_attn);
    l.wo = b.expect(layer_name(i, "self_attn.o_proj.weight"), {D, Ha * hd}, why_attn);
    l.ffn_norm = b.expect(layer_name(i, "post_attention_layernorm.weight"), {D}, why_norm);
    l.w_gate = b.expect(layer_name(i, "mlp.gate_proj.weight"), {F, D}, why_mlp);
    l.w_up = b.expect(layer_name(i, "mlp.up_proj.weight"), {F, D}, why_mlp);
    l.w_down = b.expect(layer_name(i, "mlp.down_proj.weight"), {D, F}, why_mlp);
  }
  check_unbound(*ck, b.bound());

  std::set<DType> dtypes;
  for (const std::string& name : b.bound()) dtypes.insert(ck->st->find(name)->dtype);
  if (dtypes.size() > 1)
    spdlog::warn("{}: weights mix dtypes; the embedding is {}", dir.string(), dtype_name(ck->weight_dtype()));
  spdlog::debug("loaded {}: mode {}, {} layers, {} parameters ({})", dir.string(), rope_mode_name(cfg.mode),
                cfg.n_layers, ck->n_params(), dtype_name(ck->weight_dtype()));
  return ck;
}

}  // namespace ropepp
