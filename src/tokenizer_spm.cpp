// tokenizer_spm.cpp: sentencepiece tokenizer.model through libsentencepiece.
#include <sentencepiece_processor.h>

#include "common.h"
#include "tokenizer_internal.h"

namespace ropepp::tok {

namespace fs = std::filesystem;

namespace {

class SpmTokenizer final : public Tokenizer {
 public:
  SpmTokenizer(const fs::path& file, const TokenizerConfig& cfg) : Tokenizer("sentencepiece"), file_(file) {
    const auto st = sp_.Load(file.string());
    if (!st.ok()) fail("{}: cannot load the sentencepiece model: {}", file.string(), st.ToString());
    n_ = sp_.GetPieceSize();
    if (n_ <= 0) fail("{}: sentencepiece model has {} pieces, expected at least 1", file.string(), n_);
    special_.assign(size_t(n_), 0);
    for (int id = 0; id < n_; ++id)
      if (sp_.IsControl(id) || sp_.IsUnknown(id)) special_[size_t(id)] = 1;

    auto id_of = [&](const std::string& piece, const char* what) {
      const int id = sp_.PieceToId(piece);
      if (id < 0 || id >= n_ || (sp_.IsUnknown(id) && piece != sp_.IdToPiece(id)))
        fail("tokenizer_config.json: {} '{}' is not a piece of {}", what, piece, file.string());
      return int32_t(id);
    };
    auto checked = [&](int64_t id, const char* what) {
      if (id < 0 || id >= n_) fail("generation_config.json: {} {} is out of range: expected 0 <= id < {}", what, id, n_);
      return int32_t(id);
    };
    if (cfg.bos_token) bos_id_ = id_of(*cfg.bos_token, "bos_token");
    else if (cfg.gen_bos_id) bos_id_ = checked(*cfg.gen_bos_id, "bos_token_id");
    else if (sp_.bos_id() >= 0) bos_id_ = sp_.bos_id();
    if (cfg.eos_token) eos_ids_.push_back(id_of(*cfg.eos_token, "eos_token"));
    else if (sp_.eos_id() >= 0 && cfg.gen_eos_ids.empty()) eos_ids_.push_back(sp_.eos_id());
    for (int64_t id : cfg.gen_eos_ids) {
      const int32_t e = checked(id, "eos_token_id");
      if (!is_eos(e)) eos_ids_.push_back(e);
    }
    add_bos_ = cfg.add_bos_token.value_or(true);
    add_eos_ = cfg.add_eos_token.value_or(false);
    chat_template_ = cfg.chat_template;
  }

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt) const override {
    std::string repaired;
    const std::string_view s = checked_utf8(text, opt.lossy, repaired);
    std::vector<int> ids;
    const auto st = sp_.Encode(s, &ids);
    if (!st.ok()) fail("{}: sentencepiece encode failed: {}", file_.string(), st.ToString());
    std::vector<int32_t> out;
    out.reserve(ids.size() + 2);
    if (opt.add_bos && add_bos_ && bos_id_) out.push_back(*bos_id_);
    out.insert(out.end(), ids.begin(), ids.end());
    if (opt.add_bos && add_eos_ && !eos_ids_.empty()) out.push_back(eos_ids_.front());
    return out;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::vector<int> v;
    v.reserve(ids.size());
    for (int32_t id : ids) {
      check_id(id);
      if (skip_special && special_[size_t(id)]) continue;
      v.push_back(id);
    }
    std::string text;
    const auto st = sp_.Decode(v, &text);
    if (!st.ok()) fail("{}: sentencepiece decode failed: {}", file_.string(), st.ToString());
    return text;
  }

  std::string token_bytes(int32_t id) const override {
    check_id(id);
    if (sp_.IsControl(id)) return {};
    if (sp_.IsUnknown(id)) return " \xE2\x81\x87 ";  // sentencepiece's surface of <unk>
    const std::string& p = sp_.IdToPiece(id);
    if (sp_.IsByte(id) && p.size() == 6 && p.compare(0, 3, "<0x") == 0)
      return std::string(1, char(std::stoi(p.substr(3, 2), nullptr, 16)));
    std::string out;
    out.reserve(p.size());
    for (size_t i = 0; i < p.size();) {
      if (p.compare(i, 3, "\xE2\x96\x81") == 0) {  // U+2581 stands for a space
        out.push_back(' ');
        i += 3;
      } else {
        out.push_back(p[i++]);
      }
    }
    return out;
  }

  std::string piece(int32_t id) const override {
    check_id(id);
    return sp_.IdToPiece(id);
  }

  int32_t vocab_size() const override { return n_; }

 private:
  fs::path file_;
  sentencepiece::SentencePieceProcessor sp_;
  int32_t n_ = 0;
  bool add_bos_ = true, add_eos_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece(const fs::path& model_file, const TokenizerConfig& cfg) {
  return std::make_unique<SpmTokenizer>(model_file, cfg);
}

}  // namespace ropepp::tok
