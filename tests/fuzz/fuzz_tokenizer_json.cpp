// fuzz_tokenizer_json.cpp: loading a Hugging Face tokenizer.json (with tokenizer_config.json and
// generation_config.json beside it) from arbitrary bytes.
//
// Input: tokenizer.json | tokenizer_config.json | generation_config.json [| tokenizer.model], split at
// fuzz_common.h's kSplit marker (missing parts: the file is absent). A fourth part is also loaded as a
// sentencepiece model (libsentencepiece is not instrumented, but its crashes and aborts still count). A tokenizer that loads is exercised: every id it emits is in
// [0, vocab_size), decode() returns valid UTF-8, invalid UTF-8 input is an Error unless lossy, ids out of
// range are an Error, and the streaming detokenizer's pieces add up to decode() (its documented contract).
#include <fmt/format.h>

#include <memory>

#include "fuzz_common.h"
#include "tokenizer.h"

namespace fs = std::filesystem;
using namespace ropepp;

namespace {

void exercise(const Tokenizer& tok, std::string_view extra) {
  const int32_t n = tok.vocab_size();
  ROPEPP_FUZZ_CHECK(n > 0, "vocab_size {}", n);
  if (tok.bos_id()) ROPEPP_FUZZ_CHECK(*tok.bos_id() >= 0 && *tok.bos_id() < n, "bos {}", *tok.bos_id());
  for (int32_t e : tok.eos_ids()) ROPEPP_FUZZ_CHECK(e >= 0 && e < n, "eos {}", e);

  std::vector<std::string> texts = {"", "Hello world", " a  b\n\n\tc ", "héllo wörld 日本語 🙂", "x<|eot_id|>y",
                                    "12345 don't", std::string(extra.substr(0, 256))};
  if (utf8_first_invalid(texts.back()) != std::string::npos) texts.back() = utf8_lossy(texts.back());
  for (int32_t id = 0; id < std::min(n, 64); ++id) texts.back() += tok.piece(id);  // added tokens, specials
  if (utf8_first_invalid(texts.back()) != std::string::npos) texts.back() = utf8_lossy(texts.back());

  for (const std::string& t : texts) {
    for (int flags = 0; flags < 4; ++flags) {
      EncodeOptions o;
      o.add_bos = flags & 1;
      o.parse_special = flags & 2;
      const std::vector<int32_t> ids = tok.encode(t, o);
      for (int32_t id : ids) ROPEPP_FUZZ_CHECK(id >= 0 && id < n, "encode emitted id {} (vocab {})", id, n);
      for (bool skip : {false, true}) {
        const std::string d = tok.decode(ids, skip);
        ROPEPP_FUZZ_CHECK(utf8_first_invalid(d) == std::string::npos, "decode returned invalid UTF-8");
        StreamingDetokenizer sd(tok, skip);
        std::string streamed;
        for (int32_t id : ids) streamed += sd.push(id);
        streamed += sd.flush();
        ROPEPP_FUZZ_CHECK(streamed == d, "streamed {:?} != decode {:?}", streamed, d);
      }
    }
  }
  // Invalid UTF-8: an Error unless lossy.
  const std::string bad = "ab\xff\xc3(";
  bool threw = false;
  try {
    (void)tok.encode(bad);
  } catch (const Error&) {
    threw = true;
  }
  ROPEPP_FUZZ_CHECK(threw, "invalid UTF-8 accepted without lossy");
  EncodeOptions lossy;
  lossy.lossy = true;
  for (int32_t id : tok.encode(bad, lossy)) ROPEPP_FUZZ_CHECK(id >= 0 && id < n, "lossy id {}", id);
  // Ids out of range.
  for (int32_t id : {-1, n, INT32_MAX}) {
    threw = false;
    try {
      const int32_t one[1] = {id};
      (void)tok.decode(one);
    } catch (const Error&) {
      threw = true;
    }
    ROPEPP_FUZZ_CHECK(threw, "decode accepted id {} (vocab {})", id, n);
  }
  // Every id of a small vocabulary, alone.
  if (n <= 4096) {
    for (int32_t id = 0; id < n; ++id) {
      (void)tok.piece(id);
      (void)tok.token_bytes(id);
      const int32_t one[1] = {id};
      ROPEPP_FUZZ_CHECK(utf8_first_invalid(tok.decode(one)) == std::string::npos, "decode({}) invalid UTF-8", id);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fs::path dir = [] {
    fs::path d = fuzz::scratch_dir() / "tok";
    fs::create_directories(d);
    return d;
  }();
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto parts = fuzz::split_parts(in, 4);
  const char* names[3] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
  for (size_t k = 0; k < 3; ++k) {
    if (k < parts.size()) fuzz::write_file(dir / names[k], parts[k]);
    else fuzz::remove_file(dir / names[k]);
  }
  fuzz::expect_only_error([&] {
    std::unique_ptr<Tokenizer> tok = Tokenizer::from_file(dir / "tokenizer.json");
    exercise(*tok, parts.size() > 1 ? parts[1] : parts[0]);
  });
  if (parts.size() > 3) {
    fuzz::write_file(dir / "tokenizer.model", parts[3]);
    fuzz::expect_only_error([&] {
      std::unique_ptr<Tokenizer> tok = Tokenizer::from_file(dir / "tokenizer.model");
      exercise(*tok, parts[0]);
    });
  }
  return 0;
}
