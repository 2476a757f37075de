// config.cpp: config.json → ModelConfig, validated (types, ranges, divisibility, rope_config / rope_scaling).
#include "config.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common.h"
#include "hardening.h"

namespace ropepp {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* rope_mode_name(RopeMode m) {
  switch (m) {
    case RopeMode::Rope:
      return "rope";
    case RopeMode::EH:
      return "eh";
    case RopeMode::EC:
      return "ec";
  }
  return "?";
}

std::optional<RopeMode> parse_rope_mode_flag(const std::string& s) {
  if (s == "auto") return std::nullopt;
  if (s == "rope") return RopeMode::Rope;
  if (s == "eh") return RopeMode::EH;
  if (s == "ec") return RopeMode::EC;
  fail("--rope-mode: expected one of auto, rope, eh, ec; got \"{}\"", s);
}

namespace {

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();  // every size must fit an int32

// A JSON value for messages, shortened so a huge array cannot flood the terminal.
std::string show(const json& v) {
  std::string s = v.dump();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

class ConfigReader {
 public:
  ConfigReader(const json& j, const fs::path& path) : j_(j), file_(path.string()) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  // A strictly positive integer < 2^31 (JSON integer: 2.5, 4.0, "4", true, -1 and 0 are rejected).
  int64_t positive_int(const char* key, std::optional<int64_t> def = std::nullopt) const {
    if (!has(key)) {
      if (def) return *def;
      fail("{}: missing required key \"{}\" (expected a positive integer)", file_, key);
    }
    return positive_int_value(j_.at(key), key);
  }

  int64_t positive_int_value(const json& v, const std::string& what) const {
    if (!v.is_number_integer())
      fail("{}: \"{}\" must be a positive integer, got {} ({})", file_, what, show(v), v.type_name());
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u == 0 || u > uint64_t(kMaxDim))
        fail("{}: \"{}\" must be a positive integer below 2^31, got {}", file_, what, u);
      return int64_t(u);
    }
    int64_t i = v.get<int64_t>();
    if (i <= 0 || i > kMaxDim) fail("{}: \"{}\" must be a positive integer below 2^31, got {}", file_, what, i);
    return i;
  }

  // A finite number > 0 (integer or float).
  double positive_number(const json& v, const std::string& what) const {
    if (!v.is_number() || v.is_boolean())
      fail("{}: \"{}\" must be a number > 0, got {} ({})", file_, what, show(v), v.type_name());
    double d = v.get<double>();
    if (!std::isfinite(d) || d <= 0) fail("{}: \"{}\" must be a number > 0, got {}", file_, what, show(v));
    return d;
  }

  double positive_number(const char* key, double def) const {
    return has(key) ? positive_number(j_.at(key), key) : def;
  }

  bool boolean(const json& v, const std::string& what) const {
    if (!v.is_boolean()) fail("{}: \"{}\" must be true or false, got {} ({})", file_, what, show(v), v.type_name());
    return v.get<bool>();
  }

  bool boolean(const char* key, bool def) const { return has(key) ? boolean(j_.at(key), key) : def; }

  // A token id: an integer in [0, 2^31).
  int32_t token_id(const json& v, const std::string& what) const {
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0) ||
        v.get<uint64_t>() > uint64_t(kMaxDim))
      fail("{}: \"{}\" must be a non-negative integer token id, got {} ({})", file_, what, show(v), v.type_name());
    return int32_t(v.get<int64_t>());
  }

  const std::string& file() const { return file_; }

 private:
  const json& j_;
  std::string file_;
};

json read_json_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("config file {} does not exist", path.string());
  if (!fs::is_regular_file(path, ec)) fail("config file {} is not a regular file", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open config file {}: {}", path.string(), std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  check_json_depth(text, path.string());
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail("{}: malformed JSON at byte {}: {}", path.string(), e.byte, e.what());
  } catch (const json::exception& e) {  // out_of_range.406: a number too large for a double (1e400)
    fail("{}: malformed JSON: {}", path.string(), e.what());
  }
}

// rope_config (the paper's key): imag / imag_mode give the mode, factor / yarn the frequency scaling.
void parse_rope_config(const ConfigReader& r, const json& rc, ModelConfig& cfg) {
  const std::string& file = r.file();
  if (!rc.is_object()) fail("{}: \"rope_config\" must be an object, got {} ({})", file, show(rc), rc.type_name());
  cfg.has_rope_config = true;

  bool imag = rc.contains("imag") && !rc["imag"].is_null() ? r.boolean(rc["imag"], "rope_config.imag") : false;
  if (imag) {
    if (!rc.contains("imag_mode") || rc["imag_mode"].is_null())
      fail("{}: rope_config.imag is true but rope_config.imag_mode is missing (expected \"imag1\" or \"imag2\")", file);
    const json& m = rc["imag_mode"];
    if (!m.is_string())
      fail("{}: rope_config.imag_mode must be a string (\"imag1\" or \"imag2\"), got {}", file, show(m));
    std::string mode = m.get<std::string>();
    if (mode == "imag1") {
      cfg.config_mode = RopeMode::EH;
    } else if (mode == "imag2") {
      cfg.config_mode = RopeMode::EC;
    } else {
      fail("{}: rope_config.imag_mode \"{}\" is not supported (supported: \"imag1\" = EH, \"imag2\" = EC)", file, mode);
    }
  } else {
    // The paper's training scripts write imag_mode even when imag is false; it is then unused.
    cfg.config_mode = RopeMode::Rope;
  }

  bool yarn = rc.contains("yarn") && !rc["yarn"].is_null() ? r.boolean(rc["yarn"], "rope_config.yarn") : false;
  bool has_factor = rc.contains("factor") && !rc["factor"].is_null();
  if (yarn && !has_factor) fail("{}: rope_config.yarn is true but rope_config.factor is missing", file);
  if (has_factor) {
    cfg.scaling.factor = r.positive_number(rc["factor"], "rope_config.factor");
    cfg.scaling.kind = yarn ? RopeScaling::Kind::Yarn : RopeScaling::Kind::Linear;
  }
}

// HF rope_scaling: null, {"type"|"rope_type": "default"} or {"type"|"rope_type": "linear", "factor": f}.
void parse_rope_scaling(const ConfigReader& r, const json& rs, ModelConfig& cfg) {
  const std::string& file = r.file();
  if (!rs.is_object()) fail("{}: \"rope_scaling\" must be an object or null, got {}", file, show(rs));
  const json* type = nullptr;
  if (rs.contains("rope_type") && !rs["rope_type"].is_null())
    type = &rs["rope_type"];
  else if (rs.contains("type") && !rs["type"].is_null())
    type = &rs["type"];
  if (!type) fail("{}: rope_scaling has no \"type\"/\"rope_type\" (supported: \"linear\", \"default\")", file);
  if (!type->is_string()) fail("{}: rope_scaling type must be a string, got {}", file, show(*type));
  std::string t = type->get<std::string>();
  if (t == "default") return;
  if (t != "linear")
    fail("{}: rope_scaling type \"{}\" is not supported (supported: \"linear\", \"default\")", file, t);
  if (!rs.contains("factor") || rs["factor"].is_null()) fail("{}: rope_scaling type \"linear\" needs a factor", file);
  cfg.scaling.kind = RopeScaling::Kind::Linear;
  cfg.scaling.factor = r.positive_number(rs["factor"], "rope_scaling.factor");
}

}  // namespace

ModelConfig parse_config(const fs::path& config_json) {
  json j = read_json_file(config_json);
  const std::string file = config_json.string();
  if (!j.is_object()) fail("{}: expected a JSON object at the top level, got {}", file, j.type_name());
  ConfigReader r(j, config_json);

  ModelConfig cfg;
  cfg.path = config_json;
  cfg.hidden_size = r.positive_int("hidden_size");
  cfg.intermediate_size = r.positive_int("intermediate_size");
  cfg.n_layers = r.positive_int("num_hidden_layers");
  cfg.n_heads = r.positive_int("num_attention_heads");
  cfg.n_kv_heads = r.positive_int("num_key_value_heads", cfg.n_heads);
  cfg.vocab_size = r.positive_int("vocab_size");
  cfg.max_position_embeddings = r.positive_int("max_position_embeddings", 2048);  // HF LlamaConfig default
  if (r.has("head_dim")) {
    cfg.head_dim = r.positive_int("head_dim");
  } else {
    if (cfg.hidden_size % cfg.n_heads != 0)
      fail("{}: hidden_size {} is not divisible by num_attention_heads {} (and head_dim is not given)", file,
           cfg.hidden_size, cfg.n_heads);
    cfg.head_dim = cfg.hidden_size / cfg.n_heads;
  }
  if (cfg.head_dim % 2 != 0) fail("{}: head_dim must be even for rotary embeddings, got {}", file, cfg.head_dim);
  if (cfg.n_heads % cfg.n_kv_heads != 0)
    fail("{}: num_attention_heads {} is not divisible by num_key_value_heads {}", file, cfg.n_heads, cfg.n_kv_heads);
  uint64_t qdim = 0;
  if (mul_overflows(uint64_t(2 * cfg.n_heads), uint64_t(cfg.head_dim), &qdim) || qdim > uint64_t(kMaxDim))
    fail("{}: num_attention_heads {} × head_dim {} is too large", file, cfg.n_heads, cfg.head_dim);

  cfg.rms_norm_eps = r.positive_number("rms_norm_eps", 1e-6);  // HF LlamaConfig default
  cfg.rope_theta = r.positive_number("rope_theta", 10000.0);
  cfg.tie_word_embeddings = r.boolean("tie_word_embeddings", false);

  if (r.has("bos_token_id")) cfg.bos_token_id = r.token_id(j["bos_token_id"], "bos_token_id");
  if (r.has("eos_token_id")) {
    const json& e = j["eos_token_id"];
    if (e.is_array()) {
      for (size_t i = 0; i < e.size(); ++i)
        cfg.eos_token_ids.push_back(r.token_id(e[i], fmt::format("eos_token_id[{}]", i)));
    } else {
      cfg.eos_token_ids.push_back(r.token_id(e, "eos_token_id"));
    }
  }
  auto check_vocab = [&](int32_t id, const char* what) {
    if (id >= cfg.vocab_size) spdlog::warn("{}: {} {} is outside vocab_size {}", file, what, id, cfg.vocab_size);
  };
  if (cfg.bos_token_id) check_vocab(*cfg.bos_token_id, "bos_token_id");
  for (int32_t id : cfg.eos_token_ids) check_vocab(id, "eos_token_id");

  // Features the forward pass does not implement: refuse rather than compute something else.
  if (r.has("hidden_act")) {
    const json& a = j["hidden_act"];
    if (!a.is_string() || (a.get<std::string>() != "silu" && a.get<std::string>() != "swish"))
      fail("{}: hidden_act {} is not supported (expected \"silu\")", file, show(a));
  }
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (r.boolean(key, false)) fail("{}: {} = true is not supported (ropepp's Llama has no biases)", file, key);
  if (r.has("partial_rotary_factor") && r.positive_number(j["partial_rotary_factor"], "partial_rotary_factor") != 1.0)
    fail("{}: partial_rotary_factor {} is not supported (expected 1.0)", file, show(j["partial_rotary_factor"]));

  if (r.has("rope_config")) {
    parse_rope_config(r, j["rope_config"], cfg);
    if (r.has("rope_scaling"))
      spdlog::warn("{}: both rope_config and rope_scaling are set; rope_scaling {} is ignored (as in the paper's code)",
                   file, show(j["rope_scaling"]));
  } else if (r.has("rope_scaling")) {
    parse_rope_scaling(r, j["rope_scaling"], cfg);
  }

  if (cfg.config_mode == RopeMode::EH && (cfg.n_heads % 2 != 0 || cfg.n_kv_heads % 2 != 0))
    fail(
        "{}: rope_config imag_mode \"imag1\" (EH) needs even num_attention_heads and num_key_value_heads, got {} "
        "and {}",
        file, cfg.n_heads, cfg.n_kv_heads);
  if (cfg.config_mode) cfg.mode = *cfg.config_mode;
  return cfg;
}

}  // namespace ropepp
