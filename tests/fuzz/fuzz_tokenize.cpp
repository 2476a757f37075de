// fuzz_tokenize.cpp: encode/decode of arbitrary bytes with real tokenizers: the Llama-3 tokenizer.json
// (hf-bpe) and the Llama-2 tokenizer.model (sentencepiece), both fetched by tools/fetch_test_data.sh into
// .cache/npm ($ROPEPP_FUZZ_DATA overrides that directory).
//
// Byte 0 of the input holds flags: bit0 add_bos, bit1 parse_special, bit2 lossy, bit3 sentencepiece
// (else Llama-3), bit4 decode mode. The rest is the text (encode mode) or little-endian u16 ids (decode
// mode; ids at or past the vocabulary are out of range on purpose).
// Checked: invalid UTF-8 is an Error exactly when not lossy; lossy encoding = encoding the repaired text;
// ids are in range; Llama-3 round-trips exactly (decode(encode(s)) == s, byte-level BPE is lossless) and
// never emits a special token from text when parse_special is off; decode() is valid UTF-8; out-of-range
// ids are an Error; the streaming detokenizer's pieces add up to decode() (its documented contract).
#include <fmt/format.h>

#include <memory>

#include "fuzz_common.h"
#include "tokenizer.h"

namespace fs = std::filesystem;
using namespace ropepp;

namespace {

fuzz::RealTokenizers g_tok;  // Llama-3 tokenizer.json, Llama-2 tokenizer.model

std::string streamed(const Tokenizer& tok, std::span<const int32_t> ids, bool skip) {
  StreamingDetokenizer sd(tok, skip);
  std::string s;
  for (int32_t id : ids) s += sd.push(id);
  return s + sd.flush();
}

void check_decode(const Tokenizer& tok, std::span<const int32_t> ids) {
  for (bool skip : {false, true}) {
    const std::string d = tok.decode(ids, skip);
    ROPEPP_FUZZ_CHECK(utf8_first_invalid(d) == std::string::npos, "{}: decode returned invalid UTF-8", tok.kind());
    const std::string s = streamed(tok, ids, skip);
    ROPEPP_FUZZ_CHECK(s == d, "{}: streamed {:?} != decode {:?} (skip_special {})", tok.kind(), s, d, skip);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_tok = fuzz::load_real_tokenizers("fuzz_tokenize");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const Tokenizer& tok = (flags & 8) ? *g_tok.spm : *g_tok.llama3;
  const bool llama3 = !(flags & 8);
  const int32_t n = tok.vocab_size();

  if (flags & 16) {  // decode mode
    std::vector<int32_t> ids;
    bool out_of_range = false;
    for (size_t i = 1; i + 1 < size; i += 2) {
      const int32_t id = int32_t(uint32_t(data[i]) | uint32_t(data[i + 1]) << 8) * (llama3 ? 2 : 1) +
                         (llama3 ? (data[i] & 1) : 0);  // llama3: reach ids up to 131071 > 128255
      out_of_range |= id >= n;
      ids.push_back(id);
    }
    if (!out_of_range) {
      check_decode(tok, ids);
    } else {
      bool threw = false;
      try {
        (void)tok.decode(ids);
      } catch (const Error&) {
        threw = true;
      }
      ROPEPP_FUZZ_CHECK(threw, "{}: decode accepted an id >= {}", tok.kind(), n);
      fuzz::expect_only_error([&] { (void)streamed(tok, ids, flags & 1); });
    }
    return 0;
  }

  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  EncodeOptions o;
  o.add_bos = flags & 1;
  o.parse_special = flags & 2;
  o.lossy = flags & 4;
  const bool valid = utf8_first_invalid(text) == std::string::npos;
  std::vector<int32_t> ids;
  bool threw = false;
  try {
    ids = tok.encode(text, o);
  } catch (const Error&) {
    threw = true;
  } catch (const std::exception& e) {
    fuzz::finding("non-ropepp::Error exception from encode", e.what());
  }
  ROPEPP_FUZZ_CHECK(threw == (!valid && !o.lossy), "{}: encode threw={} on valid={} lossy={}", tok.kind(), threw,
                    valid, o.lossy);
  if (threw) return 0;
  for (int32_t id : ids) ROPEPP_FUZZ_CHECK(id >= 0 && id < n, "{}: id {} out of range", tok.kind(), id);
  if (!valid) {
    EncodeOptions o2 = o;
    o2.lossy = false;
    ROPEPP_FUZZ_CHECK(ids == tok.encode(utf8_lossy(text), o2), "{}: lossy encode differs from encoding the repaired text",
                      tok.kind());
  }
  if (llama3) {
    const std::string repaired = valid ? std::string(text) : utf8_lossy(text);
    std::span<const int32_t> body(ids);
    if (o.add_bos) {
      ROPEPP_FUZZ_CHECK(!ids.empty() && ids[0] == 128000, "llama3: no <|begin_of_text|> with add_bos");
      body = body.subspan(1);
    }
    ROPEPP_FUZZ_CHECK(tok.decode(body) == repaired, "llama3: round trip failed: {:?}", repaired);
    if (!o.parse_special)
      for (int32_t id : body) ROPEPP_FUZZ_CHECK(!tok.is_special(id), "llama3: special id {} from text", id);
  }
  check_decode(tok, ids);
  return 0;
}
