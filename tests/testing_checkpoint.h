// testing_checkpoint.h: writes small random HF-layout checkpoints (config.json + model.safetensors) for
// C++ tests that need a model but not the Python reference (cache/batching invariants, CPU vs CUDA).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common.h"

namespace ropepp::testing {

struct TinySpec {
  std::string mode = "ec";  // rope | eh | ec
  int hidden = 64, layers = 2, heads = 4, kv_heads = 2, ffn = 96, head_dim = 16, vocab = 300;
  bool bf16 = false;
  bool tied = false;
  double theta = 10000.0;
  uint32_t seed = 1;
};

inline std::filesystem::path write_tiny_checkpoint(const std::filesystem::path& dir, const TinySpec& s) {
  std::filesystem::create_directories(dir);
  const int hq = s.mode == "eh" ? s.heads / 2 : s.heads;
  const int hkv = s.mode == "eh" ? s.kv_heads / 2 : s.kv_heads;
  const int ha = s.mode == "ec" ? 2 * s.heads : s.heads;
  std::map<std::string, std::vector<int64_t>> shapes;
  shapes["model.embed_tokens.weight"] = {s.vocab, s.hidden};
  shapes["model.norm.weight"] = {s.hidden};
  if (!s.tied) shapes["lm_head.weight"] = {s.vocab, s.hidden};
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    shapes[p + "input_layernorm.weight"] = {s.hidden};
    shapes[p + "post_attention_layernorm.weight"] = {s.hidden};
    shapes[p + "self_attn.q_proj.weight"] = {hq * s.head_dim, s.hidden};
    shapes[p + "self_attn.k_proj.weight"] = {hkv * s.head_dim, s.hidden};
    shapes[p + "self_attn.v_proj.weight"] = {hkv * s.head_dim, s.hidden};
    shapes[p + "self_attn.o_proj.weight"] = {s.hidden, ha * s.head_dim};
    shapes[p + "mlp.gate_proj.weight"] = {s.ffn, s.hidden};
    shapes[p + "mlp.up_proj.weight"] = {s.ffn, s.hidden};
    shapes[p + "mlp.down_proj.weight"] = {s.hidden, s.ffn};
  }
  std::mt19937 rng(s.seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  const size_t esz = s.bf16 ? 2 : 4;
  for (const auto& [name, shape] : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const bool norm = shape.size() == 1;
    const float std = norm ? 0.1f : 1.f / std::sqrt(float(shape.back()));
    const size_t begin = data.size();
    for (int64_t i = 0; i < n; ++i) {
      const float v = (norm ? 1.f : 0.f) + std * nd(rng);
      if (s.bf16) {
        const uint16_t h = f32_to_bf16(v);
        data.append(reinterpret_cast<const char*>(&h), 2);
      } else {
        data.append(reinterpret_cast<const char*>(&v), 4);
      }
    }
    header[name] = {{"dtype", s.bf16 ? "BF16" : "F32"}, {"shape", shape}, {"data_offsets", {begin, begin + size_t(n) * esz}}};
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::ofstream f(dir / "model.safetensors", std::ios::binary);
  const uint64_t len = h.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f << h << data;
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                        {"model_type", "llama"},
                        {"hidden_size", s.hidden},
                        {"intermediate_size", s.ffn},
                        {"num_hidden_layers", s.layers},
                        {"num_attention_heads", s.heads},
                        {"num_key_value_heads", s.kv_heads},
                        {"head_dim", s.head_dim},
                        {"vocab_size", s.vocab},
                        {"rms_norm_eps", 1e-5},
                        {"rope_theta", s.theta},
                        {"max_position_embeddings", 4096},
                        {"tie_word_embeddings", s.tied},
                        {"bos_token_id", 1},
                        {"eos_token_id", 2}};
  if (s.mode == "rope") cfg["rope_config"] = {{"imag", false}};
  if (s.mode == "eh") cfg["rope_config"] = {{"imag", true}, {"imag_mode", "imag1"}};
  if (s.mode == "ec") cfg["rope_config"] = {{"imag", true}, {"imag_mode", "imag2"}};
  std::ofstream(dir / "config.json") << cfg.dump(2);
  return dir;
}

// Trains a small sentencepiece BPE model (300 pieces, byte fallback) with Debian's spm_train on a
// generated English-like corpus and writes it as dir/tokenizer.model. Returns false when spm_train fails.
inline bool write_spm_tokenizer(const std::filesystem::path& dir, int vocab = 300) {
  const char* words[] = {"the", "whale", "ship", "sea", "captain", "ahab", "white", "sailed", "across", "ocean",
                         "storm", "night", "day", "men", "boat", "harpoon", "call", "me", "ishmael", "years",
                         "ago", "never", "mind", "how", "long", "having", "little", "or", "no", "money"};
  std::mt19937 rng(7);
  const auto corpus = dir / "spm_corpus.txt";
  {
    std::ofstream f(corpus);
    for (int l = 0; l < 400; ++l) {
      for (int w = 0; w < 12; ++w) f << (w ? " " : "") << words[rng() % (sizeof(words) / sizeof(words[0]))];
      f << ".\n";
    }
  }
  const std::string cmd = "spm_train --input=" + corpus.string() + " --model_prefix=" + (dir / "tokenizer").string() +
                          " --vocab_size=" + std::to_string(vocab) +
                          " --model_type=bpe --byte_fallback=true --character_coverage=1.0 --bos_id=1 --eos_id=2"
                          " --unk_id=0 --minloglevel=2 > /dev/null 2>&1";
  const bool ok = std::system(cmd.c_str()) == 0;
  std::filesystem::remove(dir / "tokenizer.vocab");
  std::filesystem::remove(corpus);
  return ok && std::filesystem::exists(dir / "tokenizer.model");
}

}  // namespace ropepp::testing
