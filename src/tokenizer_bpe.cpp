// tokenizer_bpe.cpp: Hugging Face tokenizer.json with a byte-level BPE model, exact to HF `tokenizers`.
//
// encode: added tokens are cut out of the raw text (leftmost-longest, as HF's aho-corasick does), every
// other segment is normalized, pre-tokenized (split regex, see tokenizer_pretok.cpp) and BPE-merged;
// the post-processor (or tokenizer_config.json) adds BOS/EOS. BPE works on raw bytes: vocabulary strings
// are turned from the byte-level alphabet back into bytes once at load, merges become a hash table over
// (left id, right id) -> (rank, merged id), and merged pre-tokens are cached.
#include <spdlog/spdlog.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <mutex>

#include "common.h"
#include "tokenizer_bpe_parts.h"

namespace ropepp::tok {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Ids size two tables of strings: 4M ids (16x the largest real vocabularies) are 256 MB of them.
constexpr int64_t kMaxTokenId = (int64_t(1) << 22) - 1;

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
  const json j = read_json_file(file);
  if (!j.is_object()) fail("{}: expected a JSON object, got {}", file.string(), j.type_name());
  load_model(field(j, "model", file, "the file"), file);
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

void HfBpeTokenizer::load_model(const json& m, const fs::path& file) {
  const std::string type = m.value("type", "BPE");
  if (type != "BPE") fail("{}: model type '{}' is not supported (expected BPE)", file.string(), type);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(k) && !m[k].is_null() && m[k] != "")
      fail("{}: BPE model field '{}' = {} is not supported (expected null)", file.string(), k, m[k].dump());
  if (m.contains("dropout") && m["dropout"].is_number() && m["dropout"].get<double>() > 0)
    fail("{}: BPE dropout {} is not supported (expected null)", file.string(), m["dropout"].dump());
  ignore_merges_ = m.value("ignore_merges", false);

  const json& vocab = field(m, "vocab", file, "model");
  if (!vocab.is_object()) fail("{}: model.vocab must be an object, got {}", file.string(), vocab.type_name());
  int64_t max_id = -1;
  for (const auto& [k, v] : vocab.items()) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
      fail("{}: model.vocab['{}'] must be a non-negative id, got {}", file.string(), k, v.dump());
    if (v.get<int64_t>() > kMaxTokenId)
      fail("{}: model.vocab['{}'] has id {}, above the limit of {}", file.string(), k, v.get<int64_t>(), kMaxTokenId);
    max_id = std::max(max_id, v.get<int64_t>());
  }
  pieces_.assign(size_t(max_id + 1), std::string());
  bytes_.assign(size_t(max_id + 1), std::string());
  vocab_ = StringMap(vocab.size());
  StringMap by_piece(vocab.size());  // vocabulary string -> id, for the merges
  for (const auto& [k, v] : vocab.items()) {
    const int32_t id = v.get<int32_t>();
    pieces_[size_t(id)] = k;
    by_piece.insert(k, StringMap::Value{uint32_t(id), 0});
    std::optional<std::string> b = byte_level_to_bytes(k);
    bytes_[size_t(id)] = b ? *b : k;
    if (b) vocab_.insert(*b, StringMap::Value{uint32_t(id), 0});
  }
  for (int b = 0; b < 256; ++b) {
    const char c = char(b);
    const StringMap::Value* v = vocab_.find(std::string_view(&c, 1));
    if (!v)
      fail("{}: model.vocab has no token for byte 0x{:02X} (expected all 256 byte-level characters)", file.string(), b);
    byte_id_[size_t(b)] = int32_t(v->a);
  }

  const json& merges = field(m, "merges", file, "model");
  if (!merges.is_array()) fail("{}: model.merges must be an array, got {}", file.string(), merges.type_name());
  merges_.reserve(merges.size());
  std::string left, right;
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& e = merges[r];
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        fail("{}: model.merges[{}] = \"{}\": expected two tokens separated by one space", file.string(), r, s);
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      left = e[0].get<std::string>();
      right = e[1].get<std::string>();
    } else {
      fail("{}: model.merges[{}] = {}: expected \"a b\" or [\"a\", \"b\"]", file.string(), r, e.dump());
    }
    auto id_of = [&](const std::string& tok) -> int32_t {
      const StringMap::Value* v = by_piece.find(tok);
      if (!v) fail("{}: model.merges[{}]: token '{}' is not in model.vocab", file.string(), r, tok);
      return int32_t(v->a);
    };
    merges_.insert(id_of(left), id_of(right), uint32_t(r), id_of(left + right));
  }
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
