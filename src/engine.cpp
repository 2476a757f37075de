// engine.cpp: the public Engine (include/ropepp/ropepp.h) over the internal pieces.
#include <ropepp/ropepp.h>

#include "checkpoint.h"
#include "generate.h"
#include "kv_cache.h"
#include "model.h"
#include "tokenizer.h"

namespace ropepp {
namespace {

class EngineImpl final : public Engine {
 public:
  EngineImpl(const std::string& dir, const EngineOptions& o) {
    ckpt_ = load_checkpoint(dir, parse_rope_mode_flag(o.rope_mode));
    backend_ = o.device == "cpu" ? make_cpu_backend(o.threads) : make_backend(o.device);
    ModelOptions mo;
    mo.n_ctx = o.n_ctx;
    model_ = std::make_unique<Model>(*ckpt_, *backend_, mo);
    tok_ = Tokenizer::from_dir(dir);
  }

  ModelInfo info() const override {
    const ModelConfig& c = ckpt_->config;
    ModelInfo i;
    i.mode = rope_mode_name(c.mode);
    i.n_params = ckpt_->n_params();
    i.vocab_size = c.vocab_size;
    i.q_heads = c.n_q_heads();
    i.kv_heads = c.n_kv();
    i.attention_heads = c.n_attn_heads();
    i.head_dim = c.head_dim;
    i.layers = c.n_layers;
    i.hidden = c.hidden_size;
    i.kv_bytes_per_token = KVCache::bytes_per_token(int(c.n_layers), int(c.n_kv()), int(c.head_dim), backend_->kv_dtype());
    return i;
  }

  std::vector<int32_t> tokenize(std::string_view text, bool add_bos) const override {
    EncodeOptions eo;
    eo.add_bos = add_bos;
    return tok_->encode(text, eo);
  }

  std::string detokenize(std::span<const int32_t> ids) const override { return tok_->decode(ids); }

  std::vector<float> logits(std::span<const int32_t> ids) override {
    const int seq = model_->cache().add_sequence();
    SeqChunk c{seq, ids, true};
    try {
      auto out = model_->forward(std::span(&c, 1));
      model_->cache().remove_sequence(seq);
      return out;
    } catch (...) {
      model_->cache().remove_sequence(seq);
      throw;
    }
  }

  std::string generate(std::string_view prompt, const GenerationOptions& g,
                       const std::function<void(std::string_view)>& on_text) override {
    SamplerParams sp;
    sp.temp = g.temp;
    sp.top_k = g.top_k;
    sp.top_p = g.top_p;
    sp.min_p = g.min_p;
    sp.repeat_penalty = g.repeat_penalty;
    sp.seed = g.seed;
    Sampler sampler(sp);
    GenerateParams gp;
    gp.n_predict = g.n_predict;
    gp.stop = g.stop;
    gp.sampling = sp;
    Session s(*model_);
    const auto ids = tokenize(prompt, true);
    auto cb = [&](const std::string& t) {
      if (on_text) on_text(t);
    };
    return ropepp::generate(s, *tok_, ids, sampler, gp, cb).text;
  }

 private:
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tok_;
};

}  // namespace

std::unique_ptr<Engine> Engine::load(const std::string& model_dir, const EngineOptions& opt) {
  return std::make_unique<EngineImpl>(model_dir, opt);
}

}  // namespace ropepp
