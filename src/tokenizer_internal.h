// tokenizer_internal.h: pieces shared by the tokenizer implementation files (not part of the API).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer.h"

namespace ropepp::tok {

// ---- UTF-8 -------------------------------------------------------------------------------------------
enum class Utf8 : uint8_t { Ok, Invalid, Truncated };
struct Utf8Step {
  Utf8 status;
  uint8_t len;  // Ok: length of the character; Invalid/Truncated: length of the maximal invalid subpart
};
// One step of UTF-8 decoding at p[0..n) (n >= 1), following the "maximal subpart" practice of
// Unicode / WHATWG / Rust: Truncated means p is a valid prefix cut by the end of the input.
Utf8Step utf8_step(const unsigned char* p, size_t n);

// The text to encode: `text` itself when valid, else (lossy) a repaired copy kept in `storage`;
// throws Error naming the byte offset when invalid and not lossy. `what` names the input in messages.
std::string_view checked_utf8(std::string_view text, bool lossy, std::string& storage);

// ---- configuration files beside the tokenizer ------------------------------------------------------
struct TokenizerConfig {
  std::optional<std::string> bos_token, eos_token;  // tokenizer_config.json
  std::optional<bool> add_bos_token, add_eos_token;
  std::optional<std::string> chat_template;  // tokenizer_config.json or chat_template.jinja
  std::optional<int64_t> gen_bos_id;         // generation_config.json
  std::vector<int64_t> gen_eos_ids;
};
// Reads tokenizer_config.json, generation_config.json and chat_template.jinja in dir (each optional).
TokenizerConfig read_tokenizer_config(const std::filesystem::path& dir);

// text (the contents of `file`) -> its DOM; Error naming the file when it nests too deep or is not JSON.
nlohmann::json parse_json(std::string_view text, const std::filesystem::path& file);
nlohmann::json read_json_file(const std::filesystem::path& file);  // parse_json of the file's contents

std::unique_ptr<Tokenizer> make_hf_bpe(const std::filesystem::path& tokenizer_json, const TokenizerConfig& cfg);
std::unique_ptr<Tokenizer> make_sentencepiece(const std::filesystem::path& model_file, const TokenizerConfig& cfg);

// ---- pre-tokenization (the split regexes, hand-written) --------------------------------------------
enum class SplitPattern : uint8_t {
  Llama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Qwen2,   // the same with \p{N} (one digit per piece)
  Gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
};
// Which pattern a tokenizer.json regex is; nullopt for one this matcher does not implement.
std::optional<SplitPattern> split_pattern_from_regex(std::string_view regex);
// End offset of the piece that starts at byte i of the valid UTF-8 text s (i < s.size()).
size_t split_next(SplitPattern p, std::string_view s, size_t i);

// ---- byte-level alphabet (GPT-2 bytes_to_unicode) ----------------------------------------------------
// Code point that stands for byte b in byte-level vocabularies.
uint32_t byte_to_codepoint(uint8_t b);
// Byte a code point stands for, or -1 when it is not in the byte-level alphabet.
int byte_from_codepoint(uint32_t cp);

}  // namespace ropepp::tok
