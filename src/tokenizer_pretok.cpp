// tokenizer_pretok.cpp: the pre-tokenizer split regexes of byte-level BPE tokenizers, written by hand as
// matchers over code-point classes, and the byte-level alphabet.
//
// Hugging Face tokenizers runs these regexes with Oniguruma: find_iter over the text, every match a
// piece. Every code point is matched by some alternative, so pieces tile the text and "the next piece"
// is the match of the alternation at the current position, alternatives tried in order (with the
// regex's backtracking worked out below). Classes, as Oniguruma defines them for UTF-8:
//   \p{L} = General_Category L (Lu Ll Lt Lm Lo), \p{N} = N (Nd Nl No),
//   \s    = White_Space (U+0009-000D, U+0020, U+0085, Zs, U+2028, U+2029), i.e. ICU's u_isUWhiteSpace.
#include <unicode/uchar.h>

#include <array>

#include "tokenizer_internal.h"

namespace ropepp::tok {

namespace {

enum : uint8_t { kL = 1, kN = 2, kWS = 4, kNL = 8 /* \r or \n */ };

struct Cls {
  uint8_t cls;  // bits above; 0 = "other" (punctuation, symbols, marks, controls, ...)
  uint8_t len;  // bytes of the code point
};

constexpr std::array<uint8_t, 128> make_ascii_table() {
  std::array<uint8_t, 128> t{};
  for (int c = 'a'; c <= 'z'; ++c) t[size_t(c)] = kL;
  for (int c = 'A'; c <= 'Z'; ++c) t[size_t(c)] = kL;
  for (int c = '0'; c <= '9'; ++c) t[size_t(c)] = kN;
  for (int c = 0x09; c <= 0x0D; ++c) t[size_t(c)] = kWS;
  t[' '] = kWS;
  t['\r'] = kWS | kNL;
  t['\n'] = kWS | kNL;
  return t;
}
constexpr std::array<uint8_t, 128> kAscii = make_ascii_table();

// Class of the code point at byte i (< s.size()) of valid UTF-8.
inline Cls cls_at(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const unsigned char b0 = p[0];
  if (b0 < 0x80) return {kAscii[b0], 1};
  UChar32 c;
  uint8_t len;
  if (b0 < 0xE0) {
    c = UChar32(b0 & 0x1F) << 6 | (p[1] & 0x3F);
    len = 2;
  } else if (b0 < 0xF0) {
    c = UChar32(b0 & 0x0F) << 12 | UChar32(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
    len = 3;
  } else {
    c = UChar32(b0 & 0x07) << 18 | UChar32(p[1] & 0x3F) << 12 | UChar32(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
    len = 4;
  }
  const uint32_t mask = U_MASK(u_charType(c));
  uint8_t cls = 0;
  if (mask & U_GC_L_MASK) cls = kL;
  else if (mask & U_GC_N_MASK) cls = kN;
  else if (u_isUWhiteSpace(c)) cls = kWS;
  return {cls, len};
}

inline char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c + 32) : c; }

// (?i:'s|'t|'re|'ve|'m|'ll|'d) at i (s[i] == '\''): end or 0. Under Oniguruma's Unicode case folding
// U+017F LATIN SMALL LETTER LONG S matches 's' too; no other code point folds to these letters.
size_t contraction_ci(std::string_view s, size_t i) {
  const size_t n = s.size();
  if (i + 1 >= n) return 0;
  const char a = ascii_lower(s[i + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (s[i + 1] == '\xC5' && i + 2 < n && s[i + 2] == '\xBF') return i + 3;  // ſ
  if (i + 2 >= n) return 0;
  const char b = ascii_lower(s[i + 2]);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// 's|'t|'re|'ve|'m|'ll|'d (case-sensitive) at i (s[i] == '\''): end or 0.
size_t contraction_cs(std::string_view s, size_t i) {
  const size_t n = s.size();
  if (i + 1 >= n) return 0;
  const char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 >= n) return 0;
  const char b = s[i + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// End of the run of code points starting at i whose class has any bit of `bits` (at most `max` of them).
inline size_t run_of(std::string_view s, size_t i, uint8_t bits, size_t max = SIZE_MAX) {
  size_t count = 0;
  while (i < s.size() && count < max) {
    const Cls c = cls_at(s, i);
    if (!(c.cls & bits)) break;
    i += c.len;
    ++count;
  }
  return i;
}

// End of the run of "other" code points (not \s, \p{L}, \p{N}) starting at i.
inline size_t run_other(std::string_view s, size_t i) {
  while (i < s.size()) {
    const Cls c = cls_at(s, i);
    if (c.cls != 0) break;
    i += c.len;
  }
  return i;
}

// Whitespace at i: \s+(?!\S)|\s+ — the whole run when it ends the text, else the run less its last
// code point (which then starts the next piece, e.g. " word") when that leaves at least one; else the run.
// With newlines (Llama-3 family): \s*[\r\n]+ first — up to and including the run's last \r or \n.
size_t whitespace_piece(std::string_view s, size_t i, bool newline_alt) {
  const size_t n = s.size();
  size_t j = i, last_start = i, nl_end = 0;
  while (j < n) {
    const Cls c = cls_at(s, j);
    if (!(c.cls & kWS)) break;
    last_start = j;
    j += c.len;
    if (c.cls & kNL) nl_end = j;
  }
  if (newline_alt && nl_end) return nl_end;
  if (j == n) return j;
  if (last_start > i) return last_start;
  return j;
}

size_t next_llama3(std::string_view s, size_t i, size_t max_digits) {
  const size_t n = s.size();
  if (s[i] == '\'') {
    if (size_t e = contraction_ci(s, i)) return e;
  }
  const Cls c0 = cls_at(s, i);
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c0.cls & kL) return run_of(s, i, kL);
  if (!(c0.cls & (kNL | kN)) && i + c0.len < n && (cls_at(s, i + c0.len).cls & kL))
    return run_of(s, i + c0.len, kL);
  // \p{N}{1,3}
  if (c0.cls & kN) return run_of(s, i, kN, max_digits);
  // ' '?[^\s\p{L}\p{N}]+[\r\n]*
  size_t k = i;
  if (s[i] == ' ' && i + 1 < n && cls_at(s, i + 1).cls == 0) k = i + 1;
  if (cls_at(s, k).cls == 0) {
    size_t e = run_other(s, k);
    while (e < n && (s[e] == '\r' || s[e] == '\n')) ++e;
    return e;
  }
  // c0 is whitespace: \s*[\r\n]+|\s+(?!\S)|\s+
  return whitespace_piece(s, i, true);
}

size_t next_gpt2(std::string_view s, size_t i) {
  const size_t n = s.size();
  if (s[i] == '\'') {
    if (size_t e = contraction_cs(s, i)) return e;
  }
  // ' '?\p{L}+ | ' '?\p{N}+ | ' '?[^\s\p{L}\p{N}]+
  size_t k = i;
  Cls c = cls_at(s, i);
  if (s[i] == ' ' && i + 1 < n) {
    const Cls c1 = cls_at(s, i + 1);
    if (!(c1.cls & kWS)) {
      k = i + 1;
      c = c1;
    }
  }
  if (c.cls & kL) return run_of(s, k, kL);
  if (c.cls & kN) return run_of(s, k, kN);
  if (c.cls == 0) return run_other(s, k);
  return whitespace_piece(s, i, false);
}

}  // namespace

std::optional<SplitPattern> split_pattern_from_regex(std::string_view regex) {
  static constexpr std::string_view kLlama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static constexpr std::string_view kQwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static constexpr std::string_view kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  if (regex == kLlama3) return SplitPattern::Llama3;
  if (regex == kQwen2) return SplitPattern::Qwen2;
  if (regex == kGpt2) return SplitPattern::Gpt2;
  return std::nullopt;
}

size_t split_next(SplitPattern p, std::string_view s, size_t i) {
  switch (p) {
    case SplitPattern::Llama3: return next_llama3(s, i, 3);
    case SplitPattern::Qwen2: return next_llama3(s, i, 1);
    case SplitPattern::Gpt2: return next_gpt2(s, i);
  }
  return s.size();
}

// bytes_to_unicode(): printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ' stand for themselves, the other 68
// bytes for U+0100, U+0101, ... in byte order.
namespace {
struct ByteMap {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> from_cp{};
  ByteMap() {
    from_cp.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? b : next++;
      from_cp[to_cp[b]] = int16_t(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}
}  // namespace

uint32_t byte_to_codepoint(uint8_t b) { return byte_map().to_cp[b]; }

int byte_from_codepoint(uint32_t cp) { return cp < 324 ? byte_map().from_cp[cp] : -1; }

}  // namespace ropepp::tok
