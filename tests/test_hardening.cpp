// test_hardening.cpp: regression tests for hostile inputs found by fuzzing and by the limits audit
// (docs/RELIABILITY.md). Each must fail with a ropepp::Error that names the file / flag, quickly and
// without allocating memory the input merely asks for. The loader's ordinary bad-input matrix is in
// test_loader.cpp; this file holds what is beyond it: nesting depth, counts and sizes that would have
// exhausted the stack or memory, non-Error exceptions from unexpected JSON types, the KV pool vs memory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "backend.h"
#include "chat.h"
#include "checkpoint.h"
#include "config.h"
#include "generate.h"
#include "hardening.h"
#include "model.h"
#include "safetensors.h"
#include "testing_checkpoint.h"
#include "testing_tokenizer.h"
#include "tokenizer.h"

namespace ropepp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class HardeningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    dir_ = fs::temp_directory_path() /
           ("ropepp_test_hardening_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void write(const std::string& name, const std::string& bytes) {
    std::ofstream(dir_ / name, std::ios::binary | std::ios::trunc) << bytes;
  }
  // The tiny checkpoint and tokenizer of testing_*.h in dir_, loaded on the CPU backend.
  struct TinyModel {
    std::unique_ptr<Checkpoint> ck;
    std::unique_ptr<Backend> be;
    std::unique_ptr<Model> model;
    std::unique_ptr<Tokenizer> tok;
  };
  TinyModel tiny_model(int n_ctx, const testing::TinySpec& s = {}) {
    testing::write_tiny_checkpoint(dir_, s);
    testing::write_tiny_tokenizer(dir_);
    TinyModel t;
    t.ck = load_checkpoint(dir_);
    t.be = make_cpu_backend(1);
    ModelOptions opt;
    opt.n_ctx = n_ctx;
    t.model = std::make_unique<Model>(*t.ck, *t.be, opt);
    t.tok = Tokenizer::from_dir(dir_);
    return t;
  }
  fs::path dir_;
};

// The message of the ropepp::Error that f throws; a test failure when it throws nothing or another type.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ropepp::Error, got " << typeid(e).name() << ": " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected ropepp::Error, nothing was thrown";
  return "";
}

#define EXPECT_MSG(msg, ...)                                                         \
  for (const std::string& needle_ : std::initializer_list<std::string>{__VA_ARGS__}) \
  EXPECT_NE((msg).find(needle_), std::string::npos) << "message \"" << (msg) << "\" lacks \"" << needle_ << "\""

std::string raw_safetensors(std::string header, const std::string& data = "") {
  while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return out + header + data;
}

// CPU seconds of this process (wall time says little on a loaded CI machine).
double cpu_seconds() { return double(std::clock()) / CLOCKS_PER_SEC; }

std::string deep(size_t n, char open = '[', char close = ']') { return std::string(n, open) + std::string(n, close); }

json tiny_tokenizer_json() { return testing::tiny_tokenizer_json(); }

// ---- JSON nesting: dump()/copies recurse, so deep nesting used to overflow the stack (SIGSEGV) ----------

TEST_F(HardeningTest, DeeplyNestedSafetensorsHeaderIsAnError) {
  // Found by audit: {"w": [[[[...]]]]} (200 KB) crashed in the "entry must be an object, got ..." message.
  write("model.safetensors", raw_safetensors("{\"w\":" + deep(100000) + "}"));
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "model.safetensors", "nested deeper than");
  write("model.safetensors", raw_safetensors("{\"w\":{\"dtype\":\"F32\",\"shape\":" + deep(100000) +
                                             ",\"data_offsets\":[0,0]}}"));
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "nested deeper than");
  // Depth within the limit is fine.
  write("model.safetensors",
        raw_safetensors("{\"__metadata__\":{\"a\":" + deep(100) + "},\"e\":{\"dtype\":\"F32\",\"shape\":[0],"
                        "\"data_offsets\":[0,0]}}"));
  EXPECT_NO_THROW(SafetensorsSet::open_dir(dir_));
}

TEST_F(HardeningTest, DeeplyNestedIndexIsAnError) {
  write("model.safetensors.index.json", "{\"weight_map\":{\"a\":" + deep(100000) + "}}");
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "model.safetensors.index.json", "nested deeper than");
}

TEST_F(HardeningTest, DeeplyNestedConfigIsAnError) {
  write("config.json", "{\"hidden_size\":" + deep(100000) + "}");
  EXPECT_MSG(error_of([&] { parse_config(dir_ / "config.json"); }), "config.json", "nested deeper than");
  write("config.json", "{\"rope_config\":" + deep(100000, '{', '}') + "}");  // malformed, but deep first
  EXPECT_MSG(error_of([&] { parse_config(dir_ / "config.json"); }), "config.json");
  // Brackets inside strings do not count.
  write("config.json", "{\"x\":\"" + deep(1000) + "\",\"hidden_size\":0}");
  EXPECT_MSG(error_of([&] { parse_config(dir_ / "config.json"); }), "hidden_size");
}

TEST_F(HardeningTest, DeeplyNestedTokenizerFilesAreErrors) {
  json t = tiny_tokenizer_json();
  std::string text = t.dump();
  text.insert(1, "\"extra\":" + deep(100000) + ",");
  write("tokenizer.json", text);
  EXPECT_MSG(error_of([&] { Tokenizer::from_dir(dir_); }), "tokenizer.json", "nested deeper than");
  // Where it crashed: the messages that print the offending value (merges[0] = [[[...]]], Split pattern).
  json m = t;
  m["model"]["merges"] = json::array({"@@DEEP@@"});
  text = m.dump();
  text.replace(text.find("\"@@DEEP@@\""), 10, deep(100000));
  write("tokenizer.json", text);
  EXPECT_MSG(error_of([&] { Tokenizer::from_dir(dir_); }), "tokenizer.json", "nested deeper than");
  m = t;
  m["pre_tokenizer"] = {{"type", "Split"}, {"pattern", "@@DEEP@@"}};
  text = m.dump();
  text.replace(text.find("\"@@DEEP@@\""), 10, deep(100000));
  write("tokenizer.json", text);
  EXPECT_MSG(error_of([&] { Tokenizer::from_dir(dir_); }), "tokenizer.json", "nested deeper than");
  write("tokenizer.json", t.dump());
  write("tokenizer_config.json", "{\"chat_template\":" + deep(100000) + "}");
  EXPECT_MSG(error_of([&] { Tokenizer::from_dir(dir_); }), "tokenizer_config.json", "nested deeper than");
  fs::remove(dir_ / "tokenizer_config.json");
  ASSERT_NO_THROW(Tokenizer::from_dir(dir_));
}

// ---- counts and sizes taken from a file: checked before allocating ---------------------------------

TEST_F(HardeningTest, HugeLayerCountFailsFastWithoutAllocating) {
  // Found by audit: num_hidden_layers = 2^31-1 made load_checkpoint resize the layer table to 154 GB before
  // looking for layer 2's tensors (bad_alloc / ASan out-of-memory abort instead of an Error).
  testing::TinySpec s;
  testing::write_tiny_checkpoint(dir_, s);
  json c = json::parse(std::ifstream(dir_ / "config.json"));
  c["num_hidden_layers"] = 2147483647;
  std::ofstream(dir_ / "config.json", std::ios::trunc) << c.dump();
  const double t0 = cpu_seconds();
  EXPECT_MSG(error_of([&] { load_checkpoint(dir_); }), "missing tensor", "model.layers.2.");
  EXPECT_LT(cpu_seconds() - t0, 10.0);
}

TEST_F(HardeningTest, TokenizerIdsBeyondTheLimitAreErrors) {
  // Found by fuzzing (fuzz_tokenizer_json): a vocab or added-token id near 2^31 sized two id tables to
  // 2^31 strings (64 GB each): bad_alloc, or the OOM killer.
  json t = tiny_tokenizer_json();
  t["model"]["vocab"]["zz"] = 2147483647;
  write("tokenizer.json", t.dump());
  EXPECT_MSG(error_of([&] { Tokenizer::from_dir(dir_); }), "tokenizer.json", "2147483647", "zz");
  t = tiny_tokenizer_json();
  t["added_tokens"].push_back({{"id", 2000000000}, {"content", "<big>"}, {"special", true}});
  write("tokenizer.json", t.dump());
  EXPECT_MSG(error_of([&] { Tokenizer::from_dir(dir_); }), "tokenizer.json", "2000000000", "<big>");
}

TEST_F(HardeningTest, UnexpectedJsonTypesInTokenizerFilesAreErrorsNamingTheFile) {
  // Found by fuzzing (fuzz_tokenizer_json): nlohmann type_error / out_of_range escaped from the loader
  // (not a ropepp::Error, message without the file name, and Tokenizer::from_dir's fallback to
  // tokenizer.model did not happen).
  auto with = [&](const std::function<void(json&)>& patch) {
    json t = tiny_tokenizer_json();
    patch(t);
    write("tokenizer.json", t.dump());
    return error_of([&] { Tokenizer::from_dir(dir_); });
  };
  EXPECT_MSG(with([](json& t) { t["added_tokens"][0]["content"] = 5; }), "tokenizer.json");
  EXPECT_MSG(with([](json& t) { t["added_tokens"][0]["special"] = "yes"; }), "tokenizer.json");
  EXPECT_MSG(with([](json& t) { t["model"]["type"] = 7; }), "tokenizer.json");
  EXPECT_MSG(with([](json& t) { t["model"]["ignore_merges"] = "no"; }), "tokenizer.json");
  EXPECT_MSG(with([](json& t) { t["pre_tokenizer"]["type"] = json::array(); }), "tokenizer.json");
  EXPECT_MSG(with([](json& t) { t["pre_tokenizer"] = 3; }), "tokenizer.json");
  EXPECT_MSG(with([](json& t) { t["normalizer"] = {{"type", "Prepend"}, {"prepend", 1}}; }), "tokenizer.json");
  EXPECT_MSG(with([](json& t) { t["post_processor"] = {{"type", "BertProcessing"}, {"cls", json::array()}}; }),
             "tokenizer.json");
  EXPECT_MSG(with([](json& t) {
               t["post_processor"] = {{"type", "TemplateProcessing"},
                                      {"single", {{{"SpecialToken", "x"}}}},
                                      {"special_tokens", json::object()}};
             }),
             "tokenizer.json");
  write("tokenizer.json", tiny_tokenizer_json().dump());
  write("tokenizer_config.json", R"({"chat_template": [{"name": "default", "template": 3}]})");
  EXPECT_MSG(error_of([&] { Tokenizer::from_dir(dir_); }), "tokenizer_config.json");
  write("tokenizer_config.json", R"({"chat_template": [{"name": 5, "template": "x"}]})");
  EXPECT_MSG(error_of([&] { Tokenizer::from_dir(dir_); }), "tokenizer_config.json");
}

TEST_F(HardeningTest, ManyTensorsParseInLinearTime) {
  // Found by the bad-input matrix (tests/e2e/bad_inputs.py): duplicate-key detection through nlohmann's
  // parser callback rescanned the whole header object after each tensor entry, quadratic in the tensor
  // count: 1M tensors (a 55 MB header, under the 100 MB cap) ran for hours.
  std::string h = "{";
  for (int i = 0; i < 300000; ++i) h += "\"" + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},";
  h.back() = '}';
  write("model.safetensors", raw_safetensors(h));
  const double t0 = cpu_seconds();
  EXPECT_EQ(SafetensorsSet::open_dir(dir_)->tensors().size(), 300000u);
  EXPECT_LT(cpu_seconds() - t0, 60.0);
  // Duplicates are still found, at any depth.
  write("model.safetensors", raw_safetensors(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                                             R"("b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                                             R"("a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})"));
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "duplicate tensor name", "\"a\"");
  write("model.safetensors", raw_safetensors(R"({"__metadata__":{"k":"1","k":"2"}})"));
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "duplicate key", "\"k\"");
}

TEST_F(HardeningTest, NumbersBeyondDoubleAreErrorsNamingTheFile) {
  // Found by the bad-input matrix: 1e400 made nlohmann throw out_of_range.406, which config.json and the
  // safetensors header did not catch (a std::exception without the file name).
  write("config.json", R"({"hidden_size": 64, "rope_theta": 1e400})");
  EXPECT_MSG(error_of([&] { parse_config(dir_ / "config.json"); }), "config.json", "1e400");
  write("model.safetensors", raw_safetensors(R"({"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,0]}})"));
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "model.safetensors", "1e400");
}

TEST_F(HardeningTest, GenerationOnlySamplesIdsTheTokenizerHas) {
  // Found by the bad-input matrix's baseline: a model whose vocab_size exceeds the tokenizer's (padded
  // embedding rows, common in real checkpoints) could sample an id the tokenizer cannot render, and
  // generation ended with "token id N is out of range".
  testing::TinySpec s;  // vocab 300; the tiny tokenizer has 271 ids
  TinyModel t = tiny_model(256, s);
  const Tokenizer* tok = t.tok.get();
  ASSERT_LT(tok->vocab_size(), s.vocab);
  SamplerParams sp;
  sp.temp = 1.5f;
  sp.top_k = 0;
  sp.top_p = 1.0f;
  sp.min_p = 0;
  Sampler sampler(sp);
  GenerateParams gp;
  gp.n_predict = 200;
  gp.stop_at_eos = false;
  Session session(*t.model);
  GenerateResult r;
  ASSERT_NO_THROW(r = generate(session, *tok, tok->encode("hello world"), sampler, gp, nullptr));
  EXPECT_EQ(r.tokens.size(), 200u);
  for (int32_t id : r.tokens) EXPECT_LT(id, tok->vocab_size());
}

TEST_F(HardeningTest, StreamedSentencepieceBytesAddUpToDecode) {
  // Found by fuzzing (fuzz_tokenize, tests/fuzz/regressions/fuzz_tokenize/spm_stream_window_split_utf8): more
  // than 32 byte tokens of invalid UTF-8 forced the streaming detokenizer to emit its window, and a lead byte
  // at its end was emitted as U+FFFD although the next byte token completed the character (decode() had
  // U+034D where the stream had U+FFFD U+FFFD).
  ASSERT_TRUE(testing::write_spm_tokenizer(dir_)) << "spm_train (Debian package sentencepiece) failed or is missing";
  auto tok = Tokenizer::from_dir(dir_);
  auto byte_id = [&](int b) {
    for (int32_t id = 0; id < tok->vocab_size(); ++id)
      if (tok->piece(id) == fmt::format("<0x{:02X}>", b)) return id;
    ADD_FAILURE() << "no byte piece for " << b;
    return 0;
  };
  auto check = [&](const std::vector<int32_t>& ids) {
    for (bool skip : {false, true}) {
      StreamingDetokenizer sd(*tok, skip);
      std::string streamed;
      for (int32_t id : ids) streamed += sd.push(id);
      streamed += sd.flush();
      EXPECT_EQ(streamed, tok->decode(ids, skip));
    }
  };
  std::vector<int32_t> ids(59, byte_id(0xCD));
  ids.push_back(byte_id(0x8D));
  for (int k = 0; k < 40; ++k) ids.push_back(byte_id(k % 9 == 0 ? 0xF2 : 0xCD));
  ids.push_back(byte_id(0x8D));
  check(ids);
  // Random byte tokens, mostly lead bytes, mixed with ordinary pieces.
  std::mt19937 rng(3);
  const int leads[] = {0xC3, 0xCD, 0xE2, 0xF0, 0xF2, 0x82, 0x8D, 0x9F, 0x41};
  for (int iter = 0; iter < 50; ++iter) {
    std::vector<int32_t> r;
    for (int k = 0; k < 120; ++k)
      r.push_back(rng() % 5 ? byte_id(leads[rng() % 9]) : int32_t(rng() % uint32_t(tok->vocab_size())));
    check(r);
  }
}

TEST_F(HardeningTest, DeeplyNestedChatFileIsAnError) {
  // Found by the bad-input matrix: `ropepp chat --load` (and /load) of {"format": [[[...]]]} overflowed the
  // stack (AddressSanitizer: stack-overflow in nlohmann's serializer, printing the bad "format" value).
  TinyModel t = tiny_model(64);
  Session session(*t.model);
  Chat chat(session, *t.tok, ChatTemplateKind::Llama3, ChatSettings{});
  write("deep.json", "{\"format\":" + deep(100000) + "}");
  EXPECT_MSG(error_of([&] { chat.load(dir_ / "deep.json"); }), "deep.json", "nested deeper than");
  write("ok.json", R"({"format": "ropepp-chat", "version": 1, "messages": [{"role": "user", "content": "hi"}]})");
  EXPECT_NO_THROW(chat.load(dir_ / "ok.json"));
  EXPECT_EQ(chat.messages().size(), 1u);
}

TEST_F(HardeningTest, TensorCountIsCapped) {
  std::string h = "{";
  for (int i = 0; i < 1000001; ++i) h += "\"" + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},";
  h.back() = '}';
  write("model.safetensors", raw_safetensors(h));
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "model.safetensors", "more than 1000000 tensor names");
}

// ---- the KV pool against host memory ---------------------------------------------------------------

TEST_F(HardeningTest, KvPoolLargerThanMemoryIsAnErrorNamingTheContextFlag) {
  const uint64_t avail = host_memory_available();
  if (avail == 0) GTEST_SKIP() << "no MemAvailable in /proc/meminfo";
  testing::TinySpec s;
  s.mode = "rope";
  s.layers = 8;
  s.heads = 8;
  s.kv_heads = 8;
  s.head_dim = 64;
  s.hidden = 8;
  s.ffn = 8;
  s.vocab = 16;
  testing::write_tiny_checkpoint(dir_, s);
  auto ck = load_checkpoint(dir_);
  auto be = make_cpu_backend(1);
  // 32 KiB per token (8 layers × 8 kv heads × 64 × K,V × f32): enough sequences of 65,536 tokens to need
  // twice the memory available.
  const uint64_t per_seq = 65536ull * 32768ull;
  ModelOptions opt;
  opt.n_ctx = 65536;
  opt.max_seqs = int(std::min<uint64_t>(2 * avail / per_seq + 1, 1u << 20));
  const double t0 = cpu_seconds();
  const std::string m = error_of([&] { Model model(*ck, *be, opt); });
  EXPECT_MSG(m, "-c/--ctx-size", "65536", "KV cache", "MemAvailable");
  EXPECT_LT(cpu_seconds() - t0, 10.0);
  // A pool that fits is allocated as before.
  opt.n_ctx = 64;
  opt.max_seqs = 1;
  EXPECT_NO_THROW({ Model model(*ck, *be, opt); });
}

TEST(HardeningLimits, JsonDepthScanner) {
  EXPECT_NO_THROW(check_json_depth(deep(kMaxJsonDepth), "x"));
  EXPECT_THROW(check_json_depth(deep(kMaxJsonDepth + 1), "x"), Error);
  EXPECT_NO_THROW(check_json_depth("[\"" + deep(1000) + "\"]", "x"));
  EXPECT_NO_THROW(check_json_depth("[\"\\\"" + deep(1000) + "\"]", "x"));  // escaped quote inside a string
  EXPECT_THROW(check_json_depth("[\"\\\\\"" + std::string(300, '[') + "]", "x"), Error);  // \\ ends the escape
  EXPECT_GT(host_memory_available(), 0u);
}

}  // namespace
}  // namespace ropepp
