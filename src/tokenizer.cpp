// tokenizer.cpp: the Tokenizer factory, the configuration files beside a tokenizer, UTF-8 helpers.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "common.h"
#include "hardening.h"
#include "tokenizer_internal.h"

namespace ropepp {

namespace fs = std::filesystem;

Tokenizer::~Tokenizer() = default;

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    fail("token id {} is out of range: expected 0 <= id < vocab_size {} ({} tokenizer)", id, vocab_size(), kind_);
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < special_.size() && special_[size_t(id)] != 0;
}

bool Tokenizer::is_eos(int32_t id) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end();
}

std::unique_ptr<Tokenizer> Tokenizer::from_dir(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail("tokenizer: model directory '{}' does not exist or is not a directory", dir.string());
  const fs::path json = dir / "tokenizer.json", model = dir / "tokenizer.model";
  const bool has_json = fs::is_regular_file(json, ec), has_model = fs::is_regular_file(model, ec);
  if (!has_json && !has_model)
    fail("tokenizer: no tokenizer in '{}': looked for tokenizer.json (Hugging Face byte-level BPE, with "
         "tokenizer_config.json) and tokenizer.model (sentencepiece); found neither",
         dir.string());
  const tok::TokenizerConfig cfg = tok::read_tokenizer_config(dir);
  if (has_json) {
    try {
      return tok::make_hf_bpe(json, cfg);
    } catch (const Error& e) {
      if (!has_model) throw;
      spdlog::warn("{}; using {} instead", e.what(), model.string());
    }
  }
  return tok::make_sentencepiece(model, cfg);
}

std::unique_ptr<Tokenizer> Tokenizer::from_file(const fs::path& file) {
  std::error_code ec;
  if (fs::is_directory(file, ec)) return from_dir(file);
  if (!fs::is_regular_file(file, ec)) fail("tokenizer: file '{}' does not exist", file.string());
  const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
  const tok::TokenizerConfig cfg = tok::read_tokenizer_config(dir);
  if (file.extension() == ".json") return tok::make_hf_bpe(file, cfg);
  return tok::make_sentencepiece(file, cfg);
}

// ---- UTF-8 -------------------------------------------------------------------------------------------

namespace tok {

Utf8Step utf8_step(const unsigned char* p, size_t n) {
  const unsigned char b0 = p[0];
  if (b0 < 0x80) return {Utf8::Ok, 1};
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return {Utf8::Invalid, 1};
  }
  for (size_t k = 1; k < need; ++k) {
    if (k >= n) return {Utf8::Truncated, uint8_t(k)};
    const unsigned char b = p[k];
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return {Utf8::Invalid, uint8_t(k)};
  }
  return {Utf8::Ok, uint8_t(need)};
}

std::string_view checked_utf8(std::string_view text, bool lossy, std::string& storage) {
  const size_t bad = utf8_first_invalid(text);
  if (bad == std::string_view::npos) return text;
  if (!lossy)
    fail("invalid UTF-8 in the text to tokenize at byte offset {} (byte 0x{:02X}); expected valid UTF-8 "
         "(use lossy mode to replace invalid bytes by U+FFFD)",
         bad, unsigned(static_cast<unsigned char>(text[bad])));
  storage = utf8_lossy(text);
  spdlog::warn("tokenizer: invalid UTF-8 in the input (first at byte offset {}) replaced by U+FFFD", bad);
  return storage;
}

// ---- configuration files -----------------------------------------------------------------------------

nlohmann::json parse_json(std::string_view text, const fs::path& file) {
  check_json_depth(text, "'" + file.string() + "'");
  try {
    return nlohmann::json::parse(text.data(), text.data() + text.size());
  } catch (const nlohmann::json::exception& e) {
    fail("'{}' is not valid JSON: {}", file.string(), e.what());
  }
}

nlohmann::json read_json_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("cannot open '{}'", file.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_json(ss.str(), file);
}

namespace {

// bos_token / eos_token: a string or an AddedToken object {"content": ...}.
std::optional<std::string> token_string(const nlohmann::json& j, const char* key, const fs::path& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  fail("{}: field '{}' must be a string or an object with a string 'content', got {}", file.string(), key,
       it->type_name());
}

std::optional<bool> opt_bool(const nlohmann::json& j, const char* key, const fs::path& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) fail("{}: field '{}' must be true or false, got {}", file.string(), key, it->dump());
  return it->get<bool>();
}

}  // namespace

TokenizerConfig read_tokenizer_config(const fs::path& dir) {
  TokenizerConfig cfg;
  std::error_code ec;
  const fs::path tc = dir / "tokenizer_config.json";
  if (fs::is_regular_file(tc, ec)) {
    const nlohmann::json j = read_json_file(tc);
    if (!j.is_object()) fail("{}: expected a JSON object, got {}", tc.string(), j.type_name());
    cfg.bos_token = token_string(j, "bos_token", tc);
    cfg.eos_token = token_string(j, "eos_token", tc);
    cfg.add_bos_token = opt_bool(j, "add_bos_token", tc);
    cfg.add_eos_token = opt_bool(j, "add_eos_token", tc);
    if (auto it = j.find("chat_template"); it != j.end() && !it->is_null()) {
      if (it->is_string()) {
        cfg.chat_template = it->get<std::string>();
      } else if (it->is_array()) {  // [{"name": "default", "template": "..."}, ...]
        for (const auto& t : *it)
          if (!t.is_object() || !t.contains("template") || !t["template"].is_string() ||
              (t.contains("name") && !t["name"].is_string()))
            fail("{}: each entry of 'chat_template' must be an object {{\"name\": string, \"template\": string}}",
                 tc.string());
        for (const auto& t : *it)
          if (t.is_object() && t.value("name", "") == "default" && t.contains("template"))
            cfg.chat_template = t["template"].get<std::string>();
        if (!cfg.chat_template && !it->empty() && (*it)[0].contains("template"))
          cfg.chat_template = (*it)[0]["template"].get<std::string>();
      } else {
        fail("{}: field 'chat_template' must be a string or a list of named templates, got {}", tc.string(),
             it->type_name());
      }
    }
  }
  const fs::path jinja = dir / "chat_template.jinja";
  if (!cfg.chat_template && fs::is_regular_file(jinja, ec)) {
    std::ifstream in(jinja, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    cfg.chat_template = ss.str();
  }
  const fs::path gc = dir / "generation_config.json";
  if (fs::is_regular_file(gc, ec)) {
    const nlohmann::json j = read_json_file(gc);
    auto id_of = [&](const nlohmann::json& v, const char* key) -> int64_t {
      if (!v.is_number_integer()) fail("{}: '{}' must be an integer or a list of integers, got {}", gc.string(), key, v.dump());
      return v.get<int64_t>();
    };
    if (auto it = j.find("bos_token_id"); it != j.end() && !it->is_null()) cfg.gen_bos_id = id_of(*it, "bos_token_id");
    if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
      if (it->is_array()) {
        for (const auto& v : *it) cfg.gen_eos_ids.push_back(id_of(v, "eos_token_id"));
      } else {
        cfg.gen_eos_ids.push_back(id_of(*it, "eos_token_id"));
      }
    }
  }
  return cfg;
}

}  // namespace tok

// ---- public UTF-8 helpers ------------------------------------------------------------------------

size_t utf8_char_len(std::string_view s, size_t i) {
  if (i >= s.size()) return 0;
  const auto st = tok::utf8_step(reinterpret_cast<const unsigned char*>(s.data()) + i, s.size() - i);
  return st.status == tok::Utf8::Ok ? st.len : 0;
}

size_t utf8_first_invalid(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const auto st = tok::utf8_step(p + i, n - i);
    if (st.status != tok::Utf8::Ok) return i;
    i += st.len;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    const auto st = tok::utf8_step(p + i, s.size() - i);
    if (st.status == tok::Utf8::Ok) {
      out.append(s.data() + i, st.len);
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += st.len;
  }
  return out;
}

}  // namespace ropepp
