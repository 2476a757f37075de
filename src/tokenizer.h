// tokenizer.h: text <-> token ids. Two kinds behind one interface:
//   "hf-bpe"        Hugging Face tokenizer.json with a byte-level BPE model (Llama-3, GPT-2 style), exact to HF
//   "sentencepiece" a sentencepiece tokenizer.model (Llama-2 style), through libsentencepiece
// plus StreamingDetokenizer, which turns generated ids into text one token at a time, emitting only
// complete UTF-8.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ropepp {

struct EncodeOptions {
  // Add the model's special tokens around the text: the post-processor's template (Llama-3's
  // TemplateProcessing adds <|begin_of_text|>), otherwise the BOS token, as tokenizer_config.json's
  // add_bos_token / add_eos_token say (absent add_bos_token: BOS is added when the model has one).
  bool add_bos = true;
  // Recognise special tokens (<|eot_id|>, ...) written in the text. false: they are ordinary text.
  // (sentencepiece never parses control tokens from text; the flag does nothing there.)
  bool parse_special = true;
  // Invalid UTF-8 in the input: false throws an Error naming the byte offset; true replaces each
  // maximal invalid subsequence by U+FFFD and logs a warning.
  bool lossy = false;
  // Threads for encoding (hf-bpe; the ids do not depend on it): 0 = automatic (a text of 64 KB or more gets
  // up to hardware_concurrency() threads, at most 16, with at least 16 KB each), 1 = the calling thread only,
  // n > 1 = the text in up to n pieces, whatever its size, on up to n threads (at most 16).
  int threads = 0;
};

class Tokenizer {
 public:
  // Loads <dir>/tokenizer.json (+ tokenizer_config.json, generation_config.json when present), or
  // else <dir>/tokenizer.model. Throws an Error listing what was looked for when none is usable.
  static std::unique_ptr<Tokenizer> from_dir(const std::filesystem::path& dir);
  // Load one file directly: a tokenizer.json (configs beside it are read too) or a tokenizer.model.
  static std::unique_ptr<Tokenizer> from_file(const std::filesystem::path& file);

  virtual ~Tokenizer();

  virtual std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt = {}) const = 0;
  // Text of the ids (invalid UTF-8 from partial byte tokens becomes U+FFFD, as HF does).
  // skip_special: leave special/control tokens out. Throws on an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;
  // Raw bytes this token contributes to the text (may be part of a UTF-8 character).
  virtual std::string token_bytes(int32_t id) const = 0;
  // The token as the vocabulary spells it ("Ġworld", "▁world", "<0x0A>", "<|eot_id|>").
  virtual std::string piece(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;

  std::optional<int32_t> bos_id() const { return bos_id_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  bool is_eos(int32_t id) const;
  bool is_special(int32_t id) const;
  std::optional<std::string> chat_template() const { return chat_template_; }
  std::string kind() const { return kind_; }

 protected:
  explicit Tokenizer(std::string kind) : kind_(std::move(kind)) {}
  void check_id(int32_t id) const;  // throws unless 0 <= id < vocab_size()

  std::string kind_;
  std::optional<int32_t> bos_id_;
  std::vector<int32_t> eos_ids_;
  std::vector<uint8_t> special_;  // [vocab_size] 1 = special / control token
  std::optional<std::string> chat_template_;
};

// Feeds generated ids one at a time and returns the text that became complete: only whole UTF-8
// characters are emitted; flush() returns the rest (an incomplete tail becomes U+FFFD). The
// concatenation of everything returned equals tok.decode(all ids, skip_special).
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tok, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  std::string push_bytes(int32_t id);   // hf-bpe: token bytes + UTF-8 assembly
  std::string push_window(int32_t id);  // sentencepiece: decode a sliding window of ids

  const Tokenizer& tok_;
  bool skip_special_;
  bool byte_mode_;
  std::string pending_;  // byte mode: bytes of an incomplete UTF-8 character
  // window mode: ids since the last emitted boundary, decoded after an anchor token once text started
  std::vector<int32_t> window_;
  size_t read_ = 0;       // window_[0, read_) is already emitted
  bool started_ = false;  // some text was emitted (decoding is no longer at the start of the text)
  int32_t anchor_ = -1;
  std::string anchor_text_;
};

// UTF-8 helpers shared by the tokenizers and tests.
// Length of the valid UTF-8 character at s[i], or 0 when it is invalid or truncated.
size_t utf8_char_len(std::string_view s, size_t i);
// Offset of the first invalid byte, or npos when s is valid UTF-8.
size_t utf8_first_invalid(std::string_view s);
// s with every maximal invalid subsequence replaced by U+FFFD (Rust's String::from_utf8_lossy).
std::string utf8_lossy(std::string_view s);

}  // namespace ropepp
