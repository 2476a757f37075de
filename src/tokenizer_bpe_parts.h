// tokenizer_bpe_parts.h: the HF byte-level BPE tokenizer's class and its parts (internal; see
// tokenizer_bpe.cpp for loading and tokenizer_bpe_encode.cpp for encoding).
#pragma once

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <future>
#include <list>
#include <mutex>

#include <unicode/normalizer2.h>

#include "tokenizer_internal.h"

namespace ropepp::tok {

// (left id, right id) -> (rank, merged id), open addressing.
class MergeTable {
 public:
  struct Slot {
    uint64_t key;
    uint32_t rank;
    int32_t merged;
  };
  void reserve(size_t n);
  void insert(int32_t a, int32_t b, uint32_t rank, int32_t merged);
  const Slot* find(int32_t a, int32_t b) const {
    const uint64_t key = pack(a, b);
    for (size_t h = hash(key);; h = (h + 1) & mask_) {
      const Slot& s = slots_[h];
      if (s.key == key) return &s;
      if (s.key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t pack(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }
  size_t hash(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> 29) & mask_; }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

struct Segment {
  std::string_view text;
  int32_t id;  // an added token's id, or -1 for text to tokenize
};

// Finds added tokens in text: leftmost-longest, non-overlapping (HF's aho-corasick MatchKind::LeftmostLongest),
// then HF's single_word / lstrip / rstrip rules; special tokens are skipped unless parse_special.
class AddedMatcher {
 public:
  void build(const std::vector<AddedToken>& all, bool normalized);
  void split(std::string_view s, const std::vector<AddedToken>& all, bool parse_special,
             std::vector<Segment>& out) const;
  bool empty() const { return !any_; }

 private:
  std::array<std::vector<uint32_t>, 256> by_first_;  // first byte -> token indices, longest first
  bool any_ = false;
};

class Normalizer {
 public:
  void load(const nlohmann::json& j, const std::filesystem::path& file);
  bool empty() const { return steps_.empty(); }
  std::string apply(std::string_view s) const;

 private:
  struct Step {
    const icu::Normalizer2* icu = nullptr;  // NFC / NFD / NFKC / NFKD
    std::string replace_from, replace_to;   // Replace (String pattern)
    std::string prepend;                    // Prepend
  };
  std::vector<Step> steps_;
};

inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xff51afd7ed558ccdull);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
  }
  if (i < s.size()) {
    uint64_t w = 0;
    std::memcpy(&w, s.data() + i, s.size() - i);
    h = (h ^ w) * 0x94d049bb133111ebull;
  }
  return h ^ (h >> 29);
}

// Byte string -> two uint32 values; keys live in one arena; open addressing with the full hash stored,
// so a lookup touches one slot and compares bytes only on a hash match.
class StringMap {
 public:
  struct Value {
    uint32_t a, b;
  };
  explicit StringMap(size_t expected = 1024) { rehash(expected * 2); }
  size_t size() const { return count_; }
  const Value* find(std::string_view key) const {
    const uint64_t h = hash_bytes(key) | 1;  // 0 marks an empty slot
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return nullptr;
      if (s.hash == h && s.len == key.size() && std::memcmp(arena_.data() + s.off, key.data(), key.size()) == 0)
        return &s.value;
    }
  }
  void insert(std::string_view key, Value v) {  // overwrites an existing key
    if ((count_ + 1) * 4 > slots_.size() * 3) rehash(slots_.size() * 2);
    const uint64_t h = hash_bytes(key) | 1;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.hash == 0) {
        s = Slot{h, uint32_t(arena_.size()), uint32_t(key.size()), v};
        arena_.append(key);
        ++count_;
        return;
      }
      if (s.hash == h && s.len == key.size() && std::memcmp(arena_.data() + s.off, key.data(), key.size()) == 0) {
        s.value = v;
        return;
      }
    }
  }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    arena_.clear();
    count_ = 0;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t off = 0, len = 0;
    Value value{};
  };
  void rehash(size_t cap) {
    size_t c = 16;
    while (c < cap) c <<= 1;
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(c, Slot{});
    mask_ = c - 1;
    for (const Slot& s : old) {
      if (s.hash == 0) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].hash != 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0, count_ = 0;
  std::string arena_;
};

// Largest token id: ids size two tables of strings, 4M ids (16x the largest real vocabularies) are 256 MB of them.
constexpr int64_t kMaxTokenId = (int64_t(1) << 22) - 1;

// model.vocab and model.merges as the reader of tokenizer.json takes them (TokenizerJsonReader in
// tokenizer_bpe.cpp), without a JSON value per entry; entries in file order.
struct BpeLists {
  struct Str {
    uint32_t off, len;  // bytes [off, off + len) of vocab_text or merge_text
  };
  std::string vocab_text, merge_text;           // the strings, back to back
  std::vector<std::pair<Str, int32_t>> vocab;   // (token string, id), id in [0, kMaxTokenId]
  std::vector<std::pair<Str, Str>> merges;      // (left, right), from "a b" or ["a", "b"]
  bool has_vocab = false, has_merges = false;  // false: that member is read from the DOM
  std::string_view vocab_str(Str s) const { return {vocab_text.data() + s.off, s.len}; }
  std::string_view merge_str(Str s) const { return {merge_text.data() + s.off, s.len}; }
};

// Threads for the parallel parts of loading and encoding: std::thread::hardware_concurrency(), 1 to 16.
size_t bpe_threads();
// Runs fn(0), ..., fn(n - 1) at the same time, fn(0) on the calling thread (and any a thread could not be
// started for); rethrows the exception of the lowest index that threw.
void run_parallel(size_t n, const std::function<void(size_t)>& fn);

// Pre-token bytes -> its BPE ids (value: offset and count in pool), shared across encode() calls
// (guarded; a call that cannot take the lock works without it).
struct WordCache {
  explicit WordCache(size_t words = 1u << 16) : map(words) {}
  std::mutex mu;
  StringMap map;
  std::vector<int32_t> pool;
};

// The vocabulary being built on two threads (started while the reader is still in model.merges): by_piece on
// one, pieces_ / bytes_ / vocab_ on the other. HfBpeTokenizer::finish_vocab waits for both.
struct VocabBuild {
  std::vector<std::pair<std::string_view, int32_t>> entries;  // (token string, id)
  StringMap by_piece;                                        // token string -> id, for the merges
  std::future<bool> keys, ids;  // the two builds: true when no string / no id repeats. Last: they wait first.
  void wait() {
    if (keys.valid()) keys.wait();
    if (ids.valid()) ids.wait();
  }
};

class HfBpeTokenizer final : public Tokenizer {
 public:
  HfBpeTokenizer(const std::filesystem::path& file, const TokenizerConfig& cfg);
  ~HfBpeTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override;
  std::string token_bytes(int32_t id) const override;
  std::string piece(int32_t id) const override;
  int32_t vocab_size() const override;

 private:
  void load_model(const nlohmann::json& m, const BpeLists& lists, VocabBuild& vb, const std::filesystem::path& file);
  void start_vocab(VocabBuild& vb);   // builds from vb.entries on two threads
  void finish_vocab(VocabBuild& vb);  // waits for them; repeated strings or ids: builds again in the DOM's order
  bool build_pieces(std::span<const std::pair<std::string_view, int32_t>> entries);  // false: an id repeats
  void load_merges(const BpeLists& lists, const StringMap& by_piece, const std::filesystem::path& file);
  void load_added(const nlohmann::json& arr, const std::filesystem::path& file);
  void load_pre_tokenizer(const nlohmann::json& j, const std::filesystem::path& file);
  void load_decoder(const nlohmann::json& j, const std::filesystem::path& file);
  void load_post_processor(const nlohmann::json& j, const std::filesystem::path& file);
  void finish_specials(const TokenizerConfig& cfg, const std::filesystem::path& file);
  std::optional<int32_t> lookup_token(const std::string& content) const;

  // text -> its added tokens (id >= 0) and the text between them, normalized and with the segment's prefix
  // space, ready for encode_text (copies made for that are kept in `storage`)
  void segments(std::string_view text, bool parse_special, std::list<std::string>& storage,
                std::vector<Segment>& out) const;
  // a text segment -> ids appended to out: pre-tokens (split regex, add_prefix_space per pre-token) merged
  void encode_text(std::string_view text, WordCache* cache, std::vector<int32_t>& out) const;
  // segments -> ids: long text segments cut (where the split regex is known to cut, see next_cut in
  // tokenizer_bpe_encode.cpp) into pieces of about `chunk` bytes, encoded on up to `threads` threads (at
  // most 16), each with its own word cache
  void encode_parallel(std::span<const Segment> segs, size_t threads, size_t chunk, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, WordCache* cache, std::vector<int32_t>& out) const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;

  // model
  std::vector<std::string> pieces_;  // [vocab_size] as tokenizer.json spells the token
  std::vector<std::string> bytes_;   // [vocab_size] the bytes it stands for
  StringMap vocab_;  // bytes -> id (value.a) of the model vocabulary
  std::array<int32_t, 256> byte_id_{};
  MergeTable merges_;
  bool ignore_merges_ = false;
  // pipeline
  std::vector<AddedToken> added_;
  AddedMatcher raw_added_, norm_added_;
  Normalizer normalizer_;
  std::optional<SplitPattern> split_;
  bool split_before_byte_level_ = false;
  bool add_prefix_space_ = false;
  bool has_template_ = false;
  std::vector<int32_t> post_prefix_, post_suffix_;  // from the post-processor
  std::vector<int32_t> prefix_, suffix_;            // what add_bos adds
  std::unique_ptr<WordCache> cache_;
};

}  // namespace ropepp::tok
