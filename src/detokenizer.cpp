// detokenizer.cpp: StreamingDetokenizer — generated ids to text, one token at a time.
//
// hf-bpe: a token is a run of bytes, so bytes are appended and every complete UTF-8 character is
// emitted (an impossible byte sequence as U+FFFD, exactly as decode()'s lossy conversion does).
// sentencepiece: a piece's text depends on its position (the leading space of the first piece is
// dropped) and byte pieces combine, so ids are decoded with decode() itself: the ids not yet emitted,
// after an "anchor" token once text has started (so they are decoded as mid-text pieces), emitted
// when the result does not end in an incomplete character.
#include <algorithm>
#include <cctype>

#include "common.h"
#include "tokenizer_internal.h"

namespace ropepp {

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
constexpr size_t kMaxWindow = 32;  // emit even a U+FFFD-terminated window past this many ids

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && std::string_view(s).substr(s.size() - 3) == kReplacement;
}

// Number of ids (0-3) at the end of `ids` whose bytes are a valid but incomplete UTF-8 character.
size_t incomplete_utf8_tail(const Tokenizer& tok, std::span<const int32_t> ids) {
  std::string bytes;
  size_t hold = 0;
  for (size_t h = 1; h <= std::min<size_t>(3, ids.size()); ++h) {
    bytes.insert(0, tok.token_bytes(ids[ids.size() - h]));
    if (bytes.empty() || bytes.size() > 3) break;
    const auto st = tok::utf8_step(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
    if (st.status == tok::Utf8::Truncated && st.len == bytes.size()) hold = h;
  }
  return hold;
}
}  // namespace

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tok, bool skip_special)
    : tok_(tok), skip_special_(skip_special), byte_mode_(tok.kind() == "hf-bpe") {
  if (byte_mode_) return;
  // The anchor: a token whose text is one ASCII letter or digit, so text after it is mid-text.
  const int32_t n = std::min<int32_t>(tok.vocab_size(), 4096);
  for (int32_t id = 0; id < n && anchor_ < 0; ++id) {
    if (tok.is_special(id) || tok.piece(id).rfind("<0x", 0) == 0) continue;  // not control or byte pieces
    const int32_t one[1] = {id};
    const std::string t = tok.decode(one);
    if (t.size() == 1 && std::isalnum(static_cast<unsigned char>(t[0]))) {
      anchor_ = id;
      anchor_text_ = t;
    }
  }
}

std::string StreamingDetokenizer::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) {
    (void)tok_.piece(id);  // still reject ids out of range
    return {};
  }
  return byte_mode_ ? push_bytes(id) : push_window(id);
}

std::string StreamingDetokenizer::push_bytes(int32_t id) {
  pending_ += tok_.token_bytes(id);
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(pending_.data());
  size_t i = 0;
  while (i < pending_.size()) {
    const auto st = tok::utf8_step(p + i, pending_.size() - i);
    if (st.status == tok::Utf8::Truncated) break;
    if (st.status == tok::Utf8::Ok) out.append(pending_, i, st.len);
    else out += kReplacement;
    i += st.len;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamingDetokenizer::push_window(int32_t id) {
  window_.push_back(id);
  // The text window_[0, n) adds to what was emitted so far.
  auto text_of = [&](size_t n) {
    const std::span<const int32_t> part(window_.data(), n);
    std::string text;
    if (!started_ || anchor_ < 0) {
      text = tok_.decode(part);
      if (started_ && anchor_ < 0) {  // no anchor (tiny vocabulary): decode from the start, emit the difference
        const std::string prev = tok_.decode(std::span<const int32_t>(window_.data(), read_));
        text = text.compare(0, prev.size(), prev) == 0 ? text.substr(prev.size()) : text;
      }
    } else {
      std::vector<int32_t> w;
      w.reserve(n + 1);
      w.push_back(anchor_);
      w.insert(w.end(), part.begin(), part.end());
      text = tok_.decode(w);
      text = text.compare(0, anchor_text_.size(), anchor_text_) == 0 ? text.substr(anchor_text_.size()) : text;
    }
    return text;
  };
  size_t n = window_.size();
  std::string text = text_of(n);
  if (text.empty() || (ends_with_replacement(text) && window_.size() < kMaxWindow)) return {};
  if (ends_with_replacement(text)) {
    // Forced out by kMaxWindow: keep back the byte tokens of an incomplete character at the end, which the
    // next ids may complete, so that the pieces still add up to decode().
    const size_t hold = incomplete_utf8_tail(tok_, std::span<const int32_t>(window_).subspan(anchor_ >= 0 ? 0 : read_));
    if (hold) {
      n -= hold;
      text = text_of(n);
      if (text.empty()) return {};
    }
  }
  started_ = true;
  if (anchor_ >= 0) window_.erase(window_.begin(), window_.begin() + ptrdiff_t(n));
  else read_ = n;
  return text;
}

std::string StreamingDetokenizer::flush() {
  if (byte_mode_) {
    std::string out = utf8_lossy(pending_);
    pending_.clear();
    return out;
  }
  if (window_.empty() || (anchor_ < 0 && read_ == window_.size())) return {};
  std::string text;
  if (!started_) {
    text = tok_.decode(window_);
  } else if (anchor_ >= 0) {
    std::vector<int32_t> w{anchor_};
    w.insert(w.end(), window_.begin(), window_.end());
    text = tok_.decode(w);
    if (text.compare(0, anchor_text_.size(), anchor_text_) == 0) text.erase(0, anchor_text_.size());
  } else {
    const std::string prev = tok_.decode(std::span<const int32_t>(window_.data(), read_));
    text = tok_.decode(window_);
    if (text.compare(0, prev.size(), prev) == 0) text.erase(0, prev.size());
  }
  window_.clear();
  read_ = 0;
  started_ = true;
  return text;
}

}  // namespace ropepp
