// tokenizer_bpe.cpp: Hugging Face tokenizer.json with a byte-level BPE model, exact to HF `tokenizers`.
//
// encode: added tokens are cut out of the raw text (leftmost-longest, as HF's aho-corasick does), every
// other segment is normalized, pre-tokenized (split regex, see tokenizer_pretok.cpp) and BPE-merged;
// the post-processor (or tokenizer_config.json) adds BOS/EOS. BPE works on raw bytes: vocabulary strings
// are turned from the byte-level alphabet back into bytes once at load, merges become a hash table over
// (left id, right id) -> (rank, merged id), and merged pre-tokens are cached.
//
// Loading (Llama-3's 9 MB tokenizer.json in ~0.15 s on 16 cores instead of ~0.5 s): the file is mapped, not
// copied, and read by a SAX handler that keeps model.vocab and model.merges out of the DOM (TokenizerJsonReader);
// the vocabulary tables are built on two threads while it reads the merges, and the merges' ids are looked up
// on up to 16. Anything unusual goes through the whole DOM as before, so errors and results do not change.
#include <spdlog/spdlog.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <mutex>

#include "common.h"
#include "hardening.h"
#include "safetensors.h"
#include "tokenizer_bpe_parts.h"

namespace ropepp::tok {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Decodes one code point of valid UTF-8 at s[i]; advances i.
uint32_t next_cp(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  if (p[0] < 0x80) {
    i += 1;
    return p[0];
  }
  if (p[0] < 0xE0) {
    i += 2;
    return uint32_t(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
  }
  if (p[0] < 0xF0) {
    i += 3;
    return uint32_t(p[0] & 0x0F) << 12 | uint32_t(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
  }
  i += 4;
  return uint32_t(p[0] & 0x07) << 18 | uint32_t(p[1] & 0x3F) << 12 | uint32_t(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
}

// A byte-level vocabulary string -> the bytes it stands for; nullopt when a character is not in the
// byte-level alphabet (HF's decoder then uses the string's own UTF-8 bytes).
std::optional<std::string> byte_level_to_bytes(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const int b = byte_from_codepoint(next_cp(s, i));
    if (b < 0) return std::nullopt;
    out.push_back(char(b));
  }
  return out;
}

const json& field(const json& j, const char* key, const fs::path& file, const char* where) {
  auto it = j.find(key);
  if (it == j.end()) fail("{}: {} has no field '{}'", file.string(), where, key);
  return *it;
}

bool is_word_char(uint32_t c) {
  return c == '_' || u_hasBinaryProperty(UChar32(c), UCHAR_ALPHABETIC) ||
         (U_MASK(u_charType(UChar32(c))) & U_GC_N_MASK) != 0;
}

// Rust's char::is_whitespace = White_Space.
bool is_ws(uint32_t c) { return u_isUWhiteSpace(UChar32(c)); }

uint32_t last_cp(std::string_view s) {  // s non-empty, valid UTF-8
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  size_t k = i;
  return next_cp(s, k);
}

// A merge written "a b": the offset of its one space, or npos when it has none or more than one.
size_t merge_space(std::string_view s) {
  const size_t sp = s.find(' ');
  return sp != std::string_view::npos && s.find(' ', sp + 1) == std::string_view::npos ? sp : std::string_view::npos;
}

// Ids of a merge's left, right and merged tokens; nullopt when one is not in the vocabulary.
std::optional<std::array<int32_t, 3>> merge_ids(const StringMap& by_piece, std::string_view left,
                                                std::string_view right, std::string& both) {
  const StringMap::Value* l = by_piece.find(left);
  const StringMap::Value* r = by_piece.find(right);
  both.assign(left).append(right);
  const StringMap::Value* m = by_piece.find(both);
  if (!l || !r || !m) return std::nullopt;
  return std::array<int32_t, 3>{int32_t(l->a), int32_t(r->a), int32_t(m->a)};
}

// by_piece: token string -> id of the entries; false when a string repeats.
bool build_by_piece(std::span<const std::pair<std::string_view, int32_t>> entries, StringMap& by_piece) {
  by_piece = StringMap(entries.size());
  for (const auto& [k, id] : entries) by_piece.insert(k, StringMap::Value{uint32_t(id), 0});
  return by_piece.size() == entries.size();
}

[[noreturn]] void merge_missing(const StringMap& by_piece, size_t r, std::string_view left, std::string_view right,
                                const fs::path& file) {
  const std::string both = std::string(left).append(right);
  for (std::string_view tok : {left, right, std::string_view(both)})
    if (!by_piece.find(tok)) fail("{}: model.merges[{}]: token '{}' is not in model.vocab", file.string(), r, tok);
  fail("{}: model.merges[{}]: a token is not in model.vocab", file.string(), r);
}

// tokenizer.json -> its DOM, less the values of model.vocab and model.merges (an empty object / array stands
// in their place): their entries go to BpeLists instead, since 128k vocabulary strings and 280k merges as
// JSON values (and freeing them) would be most of the load time. on_vocab runs when model.vocab is complete.
// parse() returns false on a syntax error and on anything the lists do not take: a vocab id outside
// [0, kMaxTokenId], a merge other than "a b" or ["a", "b"], a second "model" key or a second "vocab" /
// "merges" key in it. The caller then reads the whole DOM, which gives the errors of the DOM path.
class TokenizerJsonReader final : public nlohmann::json_sax<json> {
 public:
  TokenizerJsonReader(BpeLists& lists, std::function<void()> on_vocab)
      : lists_(lists), on_vocab_(std::move(on_vocab)) {}

  bool parse(std::string_view text, json& root) {
    if (text.size() > UINT32_MAX) return false;  // string offsets are 32-bit
    // Room for the most the text can hold (an entry takes at least 6 bytes: "a":0, or "a b",), so that they
    // never grow by copying; address space only, the pages are touched as they fill.
    lists_.vocab_text.reserve(text.size());
    lists_.merge_text.reserve(text.size());
    lists_.vocab.reserve(text.size() / 6);
    lists_.merges.reserve(text.size() / 6);
    if (!json::sax_parse(text.data(), text.data() + text.size(), this)) return false;
    root = std::move(root_);
    return true;
  }

  bool null() override { return value(json(nullptr)); }
  bool boolean(bool v) override { return value(json(v)); }
  bool number_integer(number_integer_t v) override { return mode_ == Mode::Vocab ? vocab_id(v) : value(json(v)); }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode_ == Mode::Vocab) return v <= uint64_t(kMaxTokenId) && vocab_id(int64_t(v));
    return value(json(v));
  }
  bool number_float(number_float_t v, const string_t&) override { return value(json(v)); }
  bool string(string_t& s) override {
    if (mode_ == Mode::Merges) {  // "a b"
      const size_t sp = merge_space(s);
      if (sp == std::string::npos) return false;
      const BpeLists::Str m = add(lists_.merge_text, s);
      lists_.merges.emplace_back(BpeLists::Str{m.off, uint32_t(sp)},
                                 BpeLists::Str{uint32_t(m.off + sp + 1), uint32_t(m.len - sp - 1)});
      return true;
    }
    if (mode_ == Mode::Pair) {  // ["a", "b"]
      if (pair_n_ == 2) return false;
      pair_[pair_n_++] = add(lists_.merge_text, s);
      return true;
    }
    return value(json(std::move(s)));
  }
  bool binary(binary_t&) override { return false; }  // not in JSON text
  bool start_object(size_t) override {
    if (mode_ != Mode::Dom) return false;
    if (in_model() && key_ == "vocab") {
      mode_ = Mode::Vocab;
      lists_.has_vocab = true;
      return put(json::object()) != nullptr;
    }
    json* v = put(json::object());
    stack_.push_back(v);
    if (stack_.size() == 2 && stack_[0]->is_object() && key_ == "model") model_ = v;
    return true;
  }
  bool key(string_t& k) override {
    if (mode_ == Mode::Vocab) {
      pending_ = add(lists_.vocab_text, k);
      return true;
    }
    if (stack_.size() == 1 && k == "model" && ++model_keys_ > 1) return false;
    if (in_model() && ((k == "vocab" && ++vocab_keys_ > 1) || (k == "merges" && ++merges_keys_ > 1))) return false;
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    if (mode_ != Mode::Vocab) {
      stack_.pop_back();
      return true;
    }
    mode_ = Mode::Dom;
    on_vocab_();
    return true;
  }
  bool start_array(size_t) override {
    if (mode_ == Mode::Merges) {
      mode_ = Mode::Pair;
      pair_n_ = 0;
      return true;
    }
    if (mode_ != Mode::Dom) return false;
    if (in_model() && key_ == "merges") {
      mode_ = Mode::Merges;
      lists_.has_merges = true;
      return put(json::array()) != nullptr;
    }
    stack_.push_back(put(json::array()));
    return true;
  }
  bool end_array() override {
    if (mode_ == Mode::Pair) {
      if (pair_n_ != 2) return false;
      lists_.merges.emplace_back(pair_[0], pair_[1]);
      mode_ = Mode::Merges;
    } else if (mode_ == Mode::Merges) {
      mode_ = Mode::Dom;
    } else {
      stack_.pop_back();
    }
    return true;
  }
  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  enum class Mode : uint8_t { Dom, Vocab, Merges, Pair };

  // The current value is a member of the model object (key_ is its key).
  bool in_model() const { return model_ && stack_.size() == 2 && stack_.back() == model_; }
  static BpeLists::Str add(std::string& text, std::string_view s) {
    const BpeLists::Str r{uint32_t(text.size()), uint32_t(s.size())};
    text.append(s);
    return r;
  }
  bool vocab_id(int64_t id) {
    if (id < 0 || id > kMaxTokenId) return false;
    lists_.vocab.emplace_back(pending_, int32_t(id));
    return true;
  }
  // Places v where the DOM parser would (the root, the end of an array, the member key_ of an object,
  // a later duplicate key replacing the earlier value); returns it. Only values in Dom mode.
  json* put(json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    json& top = *stack_.back();
    if (top.is_array()) {
      top.push_back(std::move(v));
      return &top.back();
    }
    json& slot = top[key_];
    slot = std::move(v);
    return &slot;
  }
  bool value(json&& v) {
    if (mode_ != Mode::Dom) return false;
    put(std::move(v));
    return true;
  }

  BpeLists& lists_;
  std::function<void()> on_vocab_;
  json root_;
  std::vector<json*> stack_;  // the open objects / arrays, root first
  std::string key_;           // the last key read in Dom mode
  json* model_ = nullptr;     // the root's "model" object
  int model_keys_ = 0, vocab_keys_ = 0, merges_keys_ = 0;
  Mode mode_ = Mode::Dom;
  BpeLists::Str pending_{};  // Vocab: the key whose id comes next
  BpeLists::Str pair_[2]{};  // Pair: the strings so far
  int pair_n_ = 0;
};

}  // namespace

// ---- merge table -------------------------------------------------------------------------------------

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  slots_.assign(cap, Slot{kEmpty, 0, 0});
  mask_ = cap - 1;
}

void MergeTable::insert(int32_t a, int32_t b, uint32_t rank, int32_t merged) {
  const uint64_t key = pack(a, b);
  for (size_t h = hash(key);; h = (h + 1) & mask_) {
    Slot& s = slots_[h];
    if (s.key == kEmpty || s.key == key) {  // a later duplicate overwrites, as HF's HashMap collect does
      s = Slot{key, rank, merged};
      return;
    }
  }
}

// ---- added tokens ------------------------------------------------------------------------------------

void AddedMatcher::build(const std::vector<AddedToken>& all, bool normalized) {
  for (auto& v : by_first_) v.clear();
  any_ = false;
  for (size_t k = 0; k < all.size(); ++k) {
    if (all[k].normalized != normalized || all[k].content.empty()) continue;
    by_first_[static_cast<unsigned char>(all[k].content[0])].push_back(uint32_t(k));
    any_ = true;
  }
  for (auto& v : by_first_)
    std::stable_sort(v.begin(), v.end(),
                     [&](uint32_t x, uint32_t y) { return all[x].content.size() > all[y].content.size(); });
}

void AddedMatcher::split(std::string_view s, const std::vector<AddedToken>& all, bool parse_special,
                         std::vector<Segment>& out) const {
  if (!any_) {
    if (!s.empty()) out.push_back({s, -1});
    return;
  }
  size_t start_offset = 0, i = 0;
  while (i < s.size()) {
    const auto& cands = by_first_[static_cast<unsigned char>(s[i])];
    const AddedToken* hit = nullptr;
    for (uint32_t k : cands) {  // longest first
      const std::string& c = all[k].content;
      if (s.size() - i >= c.size() && std::memcmp(s.data() + i, c.data(), c.size()) == 0) {
        hit = &all[k];
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + hit->content.size();
    i = stop;  // matches never overlap, skipped or not
    if (hit->special && !parse_special) continue;
    if (hit->single_word) {
      const bool start_space = start == 0 || !is_word_char(last_cp(s.substr(0, start)));
      size_t k = stop;
      const bool stop_space = stop == s.size() || !is_word_char(next_cp(s, k));
      if (!start_space || !stop_space) continue;
    }
    if (hit->lstrip) {
      size_t ns = start;
      while (ns > start_offset) {
        size_t b = ns - 1;
        while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
        size_t k = b;
        if (!is_ws(next_cp(s, k))) break;
        ns = b;
      }
      start = ns;
    }
    if (hit->rstrip) {
      while (stop < s.size()) {
        size_t k = stop;
        if (!is_ws(next_cp(s, k))) break;
        stop = k;
      }
      i = stop;
    }
    if (start_offset < start) out.push_back({s.substr(start_offset, start - start_offset), -1});
    out.push_back({s.substr(start, stop - start), hit->id});
    start_offset = stop;
  }
  if (start_offset < s.size()) out.push_back({s.substr(start_offset), -1});
}

// ---- normalizer ----------------------------------------------------------------------------------------

void Normalizer::load(const json& j, const fs::path& file) {
  if (j.is_null()) return;
  const std::string type = field(j, "type", file, "normalizer").get<std::string>();
  if (type == "Sequence") {
    for (const auto& n : field(j, "normalizers", file, "Sequence normalizer")) load(n, file);
    return;
  }
  Step st;
  UErrorCode err = U_ZERO_ERROR;
  if (type == "NFC") st.icu = icu::Normalizer2::getNFCInstance(err);
  else if (type == "NFD") st.icu = icu::Normalizer2::getNFDInstance(err);
  else if (type == "NFKC") st.icu = icu::Normalizer2::getNFKCInstance(err);
  else if (type == "NFKD") st.icu = icu::Normalizer2::getNFKDInstance(err);
  else if (type == "Prepend") st.prepend = field(j, "prepend", file, "Prepend normalizer").get<std::string>();
  else if (type == "Replace") {
    const json& pat = field(j, "pattern", file, "Replace normalizer");
    if (!pat.contains("String"))
      fail("{}: Replace normalizer with pattern {} is not supported (expected {{\"String\": ...}})", file.string(), pat.dump());
    st.replace_from = pat["String"].get<std::string>();
    st.replace_to = field(j, "content", file, "Replace normalizer").get<std::string>();
    if (st.replace_from.empty()) fail("{}: Replace normalizer has an empty pattern", file.string());
  } else {
    fail("{}: normalizer type '{}' is not supported (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, Sequence)",
         file.string(), type);
  }
  if (U_FAILURE(err)) fail("ICU: cannot create the {} normalizer: {}", type, u_errorName(err));
  steps_.push_back(std::move(st));
}

std::string Normalizer::apply(std::string_view s) const {
  std::string cur(s);
  for (const Step& st : steps_) {
    if (st.icu) {
      UErrorCode err = U_ZERO_ERROR;
      icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(cur.data(), int32_t(cur.size())));
      icu::UnicodeString r = st.icu->normalize(u, err);
      if (U_FAILURE(err)) fail("ICU normalization failed: {}", u_errorName(err));
      cur.clear();
      r.toUTF8String(cur);
    } else if (!st.replace_from.empty()) {
      std::string out;
      size_t pos = 0;
      for (size_t f; (f = cur.find(st.replace_from, pos)) != std::string::npos; pos = f + st.replace_from.size())
        out.append(cur, pos, f - pos).append(st.replace_to);
      out.append(cur, pos);
      cur = std::move(out);
    } else if (!cur.empty()) {
      cur.insert(0, st.prepend);
    }
  }
  return cur;
}

// ---- the tokenizer -------------------------------------------------------------------------------------

HfBpeTokenizer::HfBpeTokenizer(const fs::path& file, const TokenizerConfig& cfg) : Tokenizer("hf-bpe") {
  // Mapped, not read: a 9 MB copy costs more than the parse of its first third (an empty file fails as JSON).
  std::error_code ec;
  const auto map = fs::file_size(file, ec) == 0 && !ec ? nullptr : std::make_unique<MappedFile>(file);
  const std::string_view text = map ? std::string_view(reinterpret_cast<const char*>(map->data()), map->size()) : "";
  // The nesting check runs beside the reader (which builds its DOM without recursion); its error comes first.
  auto depth = std::async(std::launch::async | std::launch::deferred,
                          [&] { check_json_depth(text, "'" + file.string() + "'"); });
  BpeLists lists;
  VocabBuild vb;  // after lists: destroyed (waiting for its threads) first
  json j;
  // model.vocab comes before model.merges in tokenizer.json: it is built while the reader goes on.
  TokenizerJsonReader reader(lists, [&] {
    vb.entries.reserve(lists.vocab.size());
    for (const auto& [k, id] : lists.vocab) vb.entries.emplace_back(lists.vocab_str(k), id);
    start_vocab(vb);
  });
  const bool read = reader.parse(text, j);
  depth.get();
  if (!read) {  // unusual or invalid: the DOM path, with its errors
    vb.wait();
    vb.entries.clear();
    lists = BpeLists{};
    j = parse_json(text, file);
  }
  if (!j.is_object()) fail("{}: expected a JSON object, got {}", file.string(), j.type_name());
  load_model(field(j, "model", file, "the file"), lists, vb, file);
  if (auto it = j.find("added_tokens"); it != j.end() && !it->is_null()) load_added(*it, file);
  if (auto it = j.find("normalizer"); it != j.end()) normalizer_.load(*it, file);
  load_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), file);
  load_decoder(j.contains("decoder") ? j["decoder"] : json(), file);
  if (auto it = j.find("post_processor"); it != j.end()) load_post_processor(*it, file);
  raw_added_.build(added_, false);
  norm_added_.build(added_, true);
  finish_specials(cfg, file);
  cache_ = std::make_unique<WordCache>();
}

HfBpeTokenizer::~HfBpeTokenizer() = default;

void HfBpeTokenizer::load_model(const json& m, const BpeLists& lists, VocabBuild& vb, const fs::path& file) {
  const std::string type = m.value("type", "BPE");
  if (type != "BPE") fail("{}: model type '{}' is not supported (expected BPE)", file.string(), type);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(k) && !m[k].is_null() && m[k] != "")
      fail("{}: BPE model field '{}' = {} is not supported (expected null)", file.string(), k, m[k].dump());
  if (m.contains("dropout") && m["dropout"].is_number() && m["dropout"].get<double>() > 0)
    fail("{}: BPE dropout {} is not supported (expected null)", file.string(), m["dropout"].dump());
  ignore_merges_ = m.value("ignore_merges", false);

  if (!lists.has_vocab) {
    const json& vocab = field(m, "vocab", file, "model");
    if (!vocab.is_object()) fail("{}: model.vocab must be an object, got {}", file.string(), vocab.type_name());
    for (const auto& [k, v] : vocab.items()) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
        fail("{}: model.vocab['{}'] must be a non-negative id, got {}", file.string(), k, v.dump());
      if (v.get<int64_t>() > kMaxTokenId)
        fail("{}: model.vocab['{}'] has id {}, above the limit of {}", file.string(), k, v.get<int64_t>(), kMaxTokenId);
      vb.entries.emplace_back(k, v.get<int32_t>());
    }
    start_vocab(vb);
  }
  finish_vocab(vb);
  for (int b = 0; b < 256; ++b) {
    const char c = char(b);
    const StringMap::Value* v = vocab_.find(std::string_view(&c, 1));
    if (!v)
      fail("{}: model.vocab has no token for byte 0x{:02X} (expected all 256 byte-level characters)", file.string(), b);
    byte_id_[size_t(b)] = int32_t(v->a);
  }

  if (lists.has_merges) return load_merges(lists, vb.by_piece, file);
  const json& merges = field(m, "merges", file, "model");
  if (!merges.is_array()) fail("{}: model.merges must be an array, got {}", file.string(), merges.type_name());
  merges_.reserve(merges.size());
  std::string both;
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& e = merges[r];
    std::string_view left, right;
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = merge_space(s);
      if (sp == std::string::npos)
        fail("{}: model.merges[{}] = \"{}\": expected two tokens separated by one space", file.string(), r, s);
      left = std::string_view(s).substr(0, sp);
      right = std::string_view(s).substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      left = e[0].get_ref<const std::string&>();
      right = e[1].get_ref<const std::string&>();
    } else {
      fail("{}: model.merges[{}] = {}: expected \"a b\" or [\"a\", \"b\"]", file.string(), r, e.dump());
    }
    const auto ids = merge_ids(vb.by_piece, left, right, both);
    if (!ids) merge_missing(vb.by_piece, r, left, right, file);
    merges_.insert((*ids)[0], (*ids)[1], uint32_t(r), (*ids)[2]);
  }
}

void HfBpeTokenizer::start_vocab(VocabBuild& vb) {
  constexpr auto policy = std::launch::async | std::launch::deferred;  // deferred: when no thread can start
  vb.keys = std::async(policy, [&vb] { return build_by_piece(vb.entries, vb.by_piece); });
  vb.ids = std::async(policy, [this, &vb] { return build_pieces(vb.entries); });
}

void HfBpeTokenizer::finish_vocab(VocabBuild& vb) {
  const bool keys_unique = vb.keys.get(), ids_unique = vb.ids.get();
  if (keys_unique && ids_unique) return;
  // Repeated strings or ids: as the DOM's std::map has them, one entry per string (its last value) in byte
  // order, so that of two strings with one id the later wins.
  auto& e = vb.entries;
  std::stable_sort(e.begin(), e.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  size_t n = 0;
  for (size_t i = 0; i < e.size(); ++i) {
    if (n > 0 && e[n - 1].first == e[i].first) e[n - 1] = e[i];
    else e[n++] = e[i];
  }
  e.resize(n);
  build_by_piece(e, vb.by_piece);
  build_pieces(e);
}

bool HfBpeTokenizer::build_pieces(std::span<const std::pair<std::string_view, int32_t>> entries) {
  int32_t max_id = -1;
  for (const auto& e : entries) max_id = std::max(max_id, e.second);
  const size_t room = size_t(max_id + 1) + size_t(max_id + 1) / 32;  // the added tokens usually follow
  pieces_.reserve(room);
  bytes_.reserve(room);
  pieces_.assign(size_t(max_id + 1), std::string());
  bytes_.assign(size_t(max_id + 1), std::string());
  vocab_ = StringMap(entries.size());
  std::vector<uint8_t> seen(size_t(max_id + 1), 0);
  bool unique = true;
  for (const auto& [k, id] : entries) {
    unique = unique && !seen[size_t(id)];
    seen[size_t(id)] = 1;
    pieces_[size_t(id)] = k;
    std::optional<std::string> b = byte_level_to_bytes(k);
    bytes_[size_t(id)] = b ? *b : std::string(k);
    if (b) vocab_.insert(*b, StringMap::Value{uint32_t(id), 0});
  }
  return unique;
}

// The merges read by TokenizerJsonReader: ids looked up on bpe_threads() threads (one more clears the table),
// then the table filled in order.
void HfBpeTokenizer::load_merges(const BpeLists& lists, const StringMap& by_piece, const fs::path& file) {
  const size_t n = lists.merges.size(), parts = std::clamp<size_t>(n / 16384, 1, bpe_threads());
  const std::unique_ptr<std::array<int32_t, 3>[]> ids(new std::array<int32_t, 3>[n]);  // [n] (left, right, merged)
  std::vector<size_t> missing(parts, n);  // [parts] the first merge of the part with an unknown token
  run_parallel(parts + 1, [&](size_t t) {
    if (t == parts) return merges_.reserve(n);
    std::string both;
    for (size_t r = n * t / parts; r < n * (t + 1) / parts; ++r) {
      const auto& [left, right] = lists.merges[r];
      const auto m = merge_ids(by_piece, lists.merge_str(left), lists.merge_str(right), both);
      if (!m) {
        missing[t] = r;
        return;
      }
      ids[r] = *m;
    }
  });
  if (const size_t r = *std::min_element(missing.begin(), missing.end()); r < n)
    merge_missing(by_piece, r, lists.merge_str(lists.merges[r].first), lists.merge_str(lists.merges[r].second), file);
  for (size_t r = 0; r < n; ++r) merges_.insert(ids[r][0], ids[r][1], uint32_t(r), ids[r][2]);
}

void HfBpeTokenizer::load_added(const json& arr, const fs::path& file) {
  if (!arr.is_array()) fail("{}: added_tokens must be an array, got {}", file.string(), arr.type_name());
  for (const auto& t : arr) {
    AddedToken a;
    a.content = field(t, "content", file, "an added token").get<std::string>();
    const json& idj = field(t, "id", file, "an added token");
    if (!idj.is_number_integer() || idj.get<int64_t>() < 0 || idj.get<int64_t>() > INT32_MAX)
      fail("{}: added token '{}' has id {}, expected a non-negative integer", file.string(), a.content, idj.dump());
    if (idj.get<int64_t>() > kMaxTokenId)
      fail("{}: added token '{}' has id {}, above the limit of {}", file.string(), a.content, idj.get<int64_t>(),
           kMaxTokenId);
    a.id = idj.get<int32_t>();
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    a.normalized = t.value("normalized", !a.special);
    if (size_t(a.id) >= pieces_.size()) {
      pieces_.resize(size_t(a.id) + 1);
      bytes_.resize(size_t(a.id) + 1);
    }
    pieces_[size_t(a.id)] = a.content;
    bytes_[size_t(a.id)] = a.content;
    added_.push_back(std::move(a));
  }
}

void HfBpeTokenizer::load_pre_tokenizer(const json& j, const fs::path& file) {
  if (j.is_null())
    fail("{}: pre_tokenizer is null; only byte-level BPE (a ByteLevel pre-tokenizer) is supported", file.string());
  std::vector<const json*> steps;
  if (j.value("type", "") == "Sequence") {
    for (const auto& s : field(j, "pretokenizers", file, "Sequence pre_tokenizer")) steps.push_back(&s);
  } else {
    steps.push_back(&j);
  }
  bool byte_level = false;
  for (const json* s : steps) {
    const std::string type = field(*s, "type", file, "pre_tokenizer").get<std::string>();
    if (byte_level) fail("{}: pre_tokenizer step '{}' after ByteLevel is not supported", file.string(), type);
    if (type == "Split") {
      const json& pat = field(*s, "pattern", file, "Split pre_tokenizer");
      const std::string behavior = s->value("behavior", "");
      if (!pat.contains("Regex") || behavior != "Isolated" || s->value("invert", false))
        fail("{}: Split pre_tokenizer {} is not supported (expected a Regex pattern, behavior Isolated, invert false)",
             file.string(), s->dump().substr(0, 200));
      if (split_) fail("{}: more than one split regex in pre_tokenizer is not supported", file.string());
      split_ = split_pattern_from_regex(pat["Regex"].get<std::string>());
      if (!split_)
        fail("{}: Split regex {} is not implemented (implemented: the Llama-3, Qwen2 and GPT-2 patterns)",
             file.string(), pat["Regex"].dump());
      split_before_byte_level_ = true;
    } else if (type == "ByteLevel") {
      byte_level = true;
      add_prefix_space_ = s->value("add_prefix_space", false);
      if (s->value("use_regex", true)) {
        if (split_) fail("{}: ByteLevel use_regex after a Split step is not supported", file.string());
        split_ = SplitPattern::Gpt2;
      }
    } else {
      fail("{}: pre_tokenizer type '{}' is not supported (supported: Split, ByteLevel, Sequence of them)",
           file.string(), type);
    }
  }
  if (!byte_level) fail("{}: pre_tokenizer has no ByteLevel step; only byte-level BPE is supported", file.string());
}

void HfBpeTokenizer::load_decoder(const json& j, const fs::path& file) {
  const std::string type = j.is_object() ? j.value("type", "") : std::string("null");
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    for (const auto& d : field(j, "decoders", file, "Sequence decoder")) load_decoder(d, file);
    return;
  }
  fail("{}: decoder type '{}' is not supported (expected ByteLevel)", file.string(), type);
}

void HfBpeTokenizer::load_post_processor(const json& j, const fs::path& file) {
  if (j.is_null()) return;
  const std::string type = field(j, "type", file, "post_processor").get<std::string>();
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    for (const auto& p : field(j, "processors", file, "Sequence post_processor")) load_post_processor(p, file);
    return;
  }
  has_template_ = true;
  if (type == "TemplateProcessing") {
    const json& specials = field(j, "special_tokens", file, "TemplateProcessing");
    bool after = false;
    for (const auto& piece : field(j, "single", file, "TemplateProcessing")) {
      if (piece.contains("Sequence")) {
        after = true;
      } else if (piece.contains("SpecialToken")) {
        const std::string name = piece["SpecialToken"].value("id", "");
        auto it = specials.find(name);
        if (it == specials.end())
          fail("{}: TemplateProcessing uses special token '{}' missing from special_tokens", file.string(), name);
        for (const auto& id : field(*it, "ids", file, "a TemplateProcessing special token"))
          (after ? post_suffix_ : post_prefix_).push_back(id.get<int32_t>());
      } else {
        fail("{}: TemplateProcessing piece {} is not understood", file.string(), piece.dump());
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    post_prefix_.push_back(field(j, "cls", file, type.c_str()).at(1).get<int32_t>());
    post_suffix_.push_back(field(j, "sep", file, type.c_str()).at(1).get<int32_t>());
  } else {
    fail("{}: post_processor type '{}' is not supported (supported: TemplateProcessing, ByteLevel, Bert/"
         "RobertaProcessing, Sequence)", file.string(), type);
  }
}

std::optional<int32_t> HfBpeTokenizer::lookup_token(const std::string& content) const {
  for (const AddedToken& a : added_)
    if (a.content == content) return a.id;
  for (size_t id = 0; id < pieces_.size(); ++id)
    if (pieces_[id] == content) return int32_t(id);
  return std::nullopt;
}

void HfBpeTokenizer::finish_specials(const TokenizerConfig& cfg, const fs::path& file) {
  const int32_t n = vocab_size();
  special_.assign(size_t(n), 0);
  for (const AddedToken& a : added_)
    if (a.special) special_[size_t(a.id)] = 1;
  auto checked = [&](int64_t id, const char* what) -> int32_t {
    if (id < 0 || id >= n) fail("{}: {} {} is out of range: expected 0 <= id < {}", file.string(), what, id, n);
    return int32_t(id);
  };
  if (cfg.bos_token) {
    bos_id_ = lookup_token(*cfg.bos_token);
    if (!bos_id_) fail("tokenizer_config.json: bos_token '{}' is not a token of {}", *cfg.bos_token, file.string());
  } else if (cfg.gen_bos_id) {
    bos_id_ = checked(*cfg.gen_bos_id, "generation_config.json bos_token_id");
  } else if (!post_prefix_.empty()) {
    bos_id_ = post_prefix_.front();
  }
  if (cfg.eos_token) {
    auto id = lookup_token(*cfg.eos_token);
    if (!id) fail("tokenizer_config.json: eos_token '{}' is not a token of {}", *cfg.eos_token, file.string());
    eos_ids_.push_back(*id);
  }
  for (int64_t id : cfg.gen_eos_ids) {
    const int32_t e = checked(id, "generation_config.json eos_token_id");
    if (!is_eos(e)) eos_ids_.push_back(e);
  }
  for (int32_t id : post_prefix_) checked(id, "post_processor token id");
  for (int32_t id : post_suffix_) checked(id, "post_processor token id");
  // BOS/EOS on encode (EncodeOptions::add_bos): the post-processor's template when there is one, less
  // BOS when tokenizer_config.json says add_bos_token: false; otherwise BOS unless add_bos_token is false.
  prefix_ = post_prefix_;
  suffix_ = post_suffix_;
  if (cfg.add_bos_token == false && bos_id_) std::erase(prefix_, *bos_id_);
  if (!has_template_ && bos_id_ && cfg.add_bos_token != false) prefix_.push_back(*bos_id_);
  if (cfg.add_eos_token == true && cfg.eos_token && (suffix_.empty() || suffix_.back() != eos_ids_.front()))
    suffix_.push_back(eos_ids_.front());
  chat_template_ = cfg.chat_template;
}

int32_t HfBpeTokenizer::vocab_size() const { return int32_t(pieces_.size()); }

std::string HfBpeTokenizer::token_bytes(int32_t id) const {
  check_id(id);
  return bytes_[size_t(id)];
}

std::string HfBpeTokenizer::piece(int32_t id) const {
  check_id(id);
  return pieces_[size_t(id)];
}

std::string HfBpeTokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    check_id(id);
    if (skip_special && special_[size_t(id)]) continue;
    out += bytes_[size_t(id)];
  }
  return utf8_first_invalid(out) == std::string::npos ? out : utf8_lossy(out);
}

}  // namespace ropepp::tok
