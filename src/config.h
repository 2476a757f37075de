// config.h: the model hyper-parameters read from a checkpoint's config.json, and the RoPE++ head layout.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ropepp {

// How attention uses the complex RoPE score.
//   Rope: standard RoPE.                     q heads H,   kv heads KV,   attention heads H.
//   EH  (rope_config.imag_mode "imag1"):     q heads H/2, kv heads KV/2, attention heads H.
//   EC  (rope_config.imag_mode "imag2"):     q heads H,   kv heads KV,   attention heads 2H.
// With EH/EC every q head h yields two attention heads, 2h (real: RoPE'd q) and 2h+1 (imaginary:
// -rot(RoPE'd q)), interleaved into o_proj. Attention head j reads kv head j / (n_attn / n_kv), i.e.
// q head h reads kv head h / (n_q / n_kv) in every mode.
enum class RopeMode { Rope, EH, EC };
const char* rope_mode_name(RopeMode m);  // "rope", "eh", "ec"

// Frequency scaling of the rotary embedding.
//   None:   inv_freq = 1 / theta^(2i/d)
//   Linear: inv_freq / factor (position interpolation; rope_config.factor or HF rope_scaling linear)
//   Yarn:   the paper's YaRN: r = 4096/(2π)·inv_freq, γ = clip((r-1)/31, 0, 1),
//           inv_freq = (1-γ)·inv_freq/factor + γ·inv_freq, cos and sin scaled by 0.1·ln(factor)+1.
struct RopeScaling {
  enum class Kind { None, Linear, Yarn } kind = Kind::None;
  double factor = 1.0;
};

struct ModelConfig {
  std::filesystem::path path;          // config.json this was read from (for messages)
  int64_t hidden_size = 0;             // model width D
  int64_t intermediate_size = 0;       // FFN width F
  int64_t n_layers = 0;                // num_hidden_layers
  int64_t n_heads = 0;                 // num_attention_heads as written in config.json (H)
  int64_t n_kv_heads = 0;              // num_key_value_heads as written (KV); defaults to H
  int64_t head_dim = 0;                // head_dim, or hidden_size / H
  int64_t vocab_size = 0;              // V
  int64_t max_position_embeddings = 0; // trained context
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;  // eos_token_id may be an int or a list

  // rope_config (absent in plain Llama checkpoints: then the mode is inferred from tensor shapes).
  bool has_rope_config = false;
  std::optional<RopeMode> config_mode; // from rope_config.imag / imag_mode, when present
  RopeScaling scaling;                 // from rope_config (factor / yarn) or HF rope_scaling (linear)

  // The resolved mode (set by the checkpoint loader once tensor shapes are known).
  RopeMode mode = RopeMode::Rope;

  int64_t n_q_heads() const { return mode == RopeMode::EH ? n_heads / 2 : n_heads; }
  int64_t n_kv() const { return mode == RopeMode::EH ? n_kv_heads / 2 : n_kv_heads; }
  int64_t n_attn_heads() const { return mode == RopeMode::EC ? 2 * n_heads : n_heads; }
  bool imag() const { return mode != RopeMode::Rope; }
};

// Parses and validates config.json (types, ranges, divisibility). Throws Error naming the file, the key,
// and the expected vs actual value.
ModelConfig parse_config(const std::filesystem::path& config_json);

// Parses "auto" | "rope" | "eh" | "ec" (the --rope-mode flag). nullopt means auto.
std::optional<RopeMode> parse_rope_mode_flag(const std::string& s);

}  // namespace ropepp
