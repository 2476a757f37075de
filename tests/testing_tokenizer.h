// testing_tokenizer.h: a tiny byte-level BPE tokenizer.json (256 byte tokens, a few merges, Llama-3-style
// special tokens; ids < 300, so it fits testing_checkpoint.h's tiny models) for tests that need a tokenizer
// without the npm reference data or spm_train.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace ropepp::testing {

inline nlohmann::json tiny_tokenizer_json() {
  using nlohmann::json;
  auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  auto utf8 = [](uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
      s += char(cp);
    } else {
      s += char(0xC0 | (cp >> 6));
      s += char(0x80 | (cp & 0x3F));
    }
    return s;
  };
  json vocab = json::object();
  int extra = 0;
  for (int b = 0; b < 256; ++b) vocab[utf8(printable(b) ? uint32_t(b) : uint32_t(256 + extra++))] = b;
  json merges = json::array();
  int next = 256;
  for (auto [l, r] : {std::pair{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"o", "r"}, {"Ġ", "w"}, {"Ġw", "or"}, {"l", "d"},
                      {"Ġwor", "ld"}, {"Ġ", "t"}, {"Ġt", "he"}}) {
    vocab[std::string(l) + r] = next++;
    merges.push_back(std::string(l) + " " + r);
  }
  json added = json::array();
  for (const char* c : {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"})
    added.push_back({{"id", next++}, {"content", c}, {"special", true}, {"normalized", false}});
  return {{"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
}

// Writes dir/tokenizer.json and dir/tokenizer_config.json (BOS <|begin_of_text|>, EOS <|eot_id|>).
inline void write_tiny_tokenizer(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << tiny_tokenizer_json().dump();
  std::ofstream(dir / "tokenizer_config.json")
      << nlohmann::json{{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}, {"add_bos_token", true}}.dump();
}

}  // namespace ropepp::testing
