// test_loader.cpp: config.json parsing, safetensors validation and checkpoint binding, on tiny checkpoints
// written from C++ into a temporary directory (valid ones for every mode/dtype/layout, and a matrix of
// malformed ones, each of which must fail with an Error naming the culprit; none may crash or hang).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "config.h"
#include "safetensors.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace ropepp;

// ---- a tiny checkpoint writer ----------------------------------------------------------------------

struct Spec {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
};

size_t test_dtype_size(const std::string& dt) {
  if (dt == "F32" || dt == "I32") return 4;
  if (dt == "F16" || dt == "BF16") return 2;
  if (dt == "I64" || dt == "F64") return 8;
  return 1;
}

// The byte a writer puts at offset k of the data section, so tests can check zero-copy pointers.
char pattern_byte(size_t k) { return char((k * 7 + 13) & 0xff); }

// [u64 LE header length][header padded with spaces to 8 bytes][data]
std::string raw_safetensors(std::string header, const std::string& data) {
  while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string safetensors_bytes(const std::vector<Spec>& specs) {
  json h = json::object();
  h["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const Spec& s : specs) {
    size_t n = test_dtype_size(s.dtype);
    for (int64_t d : s.shape) n *= size_t(d);
    h[s.name] = {{"dtype", s.dtype}, {"shape", s.shape}, {"data_offsets", {data.size(), data.size() + n}}};
    for (size_t i = 0; i < n; ++i) data.push_back(pattern_byte(data.size()));
  }
  return raw_safetensors(h.dump(), data);
}

struct Tiny {
  RopeMode mode = RopeMode::Rope;
  std::string dtype = "F32";
  int64_t D = 8, F = 12, V = 16, L = 2, H = 4, KV = 2, hd = 2;
  bool tied = false;
  bool lm_head = true;      // write lm_head.weight
  bool rope_config = true;  // write rope_config with the mode
};

std::vector<Spec> tiny_tensors(const Tiny& t) {
  const int64_t Hq = t.mode == RopeMode::EH ? t.H / 2 : t.H;
  const int64_t Hkv = t.mode == RopeMode::EH ? t.KV / 2 : t.KV;
  const int64_t Ha = t.mode == RopeMode::EC ? 2 * t.H : t.H;
  std::vector<Spec> s = {{"model.embed_tokens.weight", t.dtype, {t.V, t.D}}, {"model.norm.weight", t.dtype, {t.D}}};
  if (t.lm_head) s.push_back({"lm_head.weight", t.dtype, {t.V, t.D}});
  for (int64_t i = 0; i < t.L; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    s.push_back({p + "input_layernorm.weight", t.dtype, {t.D}});
    s.push_back({p + "self_attn.q_proj.weight", t.dtype, {Hq * t.hd, t.D}});
    s.push_back({p + "self_attn.k_proj.weight", t.dtype, {Hkv * t.hd, t.D}});
    s.push_back({p + "self_attn.v_proj.weight", t.dtype, {Hkv * t.hd, t.D}});
    s.push_back({p + "self_attn.o_proj.weight", t.dtype, {t.D, Ha * t.hd}});
    s.push_back({p + "post_attention_layernorm.weight", t.dtype, {t.D}});
    s.push_back({p + "mlp.gate_proj.weight", t.dtype, {t.F, t.D}});
    s.push_back({p + "mlp.up_proj.weight", t.dtype, {t.F, t.D}});
    s.push_back({p + "mlp.down_proj.weight", t.dtype, {t.D, t.F}});
  }
  return s;
}

json tiny_config(const Tiny& t) {
  json c = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_size", t.D},
            {"intermediate_size", t.F},
            {"num_hidden_layers", t.L},
            {"num_attention_heads", t.H},
            {"num_key_value_heads", t.KV},
            {"vocab_size", t.V},
            {"max_position_embeddings", 64},
            {"rms_norm_eps", 1e-5},
            {"rope_theta", 500000.0},
            {"tie_word_embeddings", t.tied},
            {"hidden_act", "silu"},
            {"bos_token_id", 1},
            {"eos_token_id", 2},
            {"rope_scaling", nullptr}};
  if (t.rope_config)
    c["rope_config"] = {{"imag", t.mode != RopeMode::Rope}, {"imag_mode", t.mode == RopeMode::EC ? "imag2" : "imag1"}};
  return c;
}

// A fresh temporary directory per test.
class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    dir_ = fs::temp_directory_path() /
           ("ropepp_test_loader_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void write(const std::string& name, const std::string& bytes) {
    std::ofstream(dir_ / name, std::ios::binary) << bytes;
  }
  void write_config(const json& c) { write("config.json", c.dump(2)); }
  // Writes config.json + model.safetensors; the hooks may patch either before writing.
  void write_tiny(const Tiny& t, const std::function<void(json&)>& patch_config = {},
                  const std::function<void(std::vector<Spec>&)>& patch_tensors = {}) {
    json c = tiny_config(t);
    if (patch_config) patch_config(c);
    write_config(c);
    std::vector<Spec> s = tiny_tensors(t);
    if (patch_tensors) patch_tensors(s);
    write("model.safetensors", safetensors_bytes(s));
  }
  ModelConfig config_with(const std::function<void(json&)>& patch) {
    json c = tiny_config(Tiny{});
    patch(c);
    write_config(c);
    return parse_config(dir_ / "config.json");
  }
  fs::path dir_;
};

// The message of the Error that f throws ("" and a test failure when it throws none or another type).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ropepp::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected ropepp::Error, nothing was thrown";
  return "";
}

#define EXPECT_MSG(msg, ...)                                                         \
  for (const std::string& needle_ : std::initializer_list<std::string>{__VA_ARGS__}) \
  EXPECT_NE((msg).find(needle_), std::string::npos) << "message \"" << (msg) << "\" lacks \"" << needle_ << "\""

void erase_tensor(std::vector<Spec>& s, const std::string& name) {
  auto it = std::find_if(s.begin(), s.end(), [&](const Spec& x) { return x.name == name; });
  ASSERT_NE(it, s.end()) << name;
  s.erase(it);
}
Spec& tensor(std::vector<Spec>& s, const std::string& name) {
  for (Spec& x : s)
    if (x.name == name) return x;
  throw std::runtime_error("test bug: no tensor " + name);
}

// ---- valid checkpoints ------------------------------------------------------------------------------

struct ValidCase {
  RopeMode mode;
  std::string dtype;
  bool tied;
  bool rope_config;
};

void PrintTo(const ValidCase& c, std::ostream* os) {
  *os << rope_mode_name(c.mode) << "/" << c.dtype << (c.tied ? "/tied" : "/untied")
      << (c.rope_config ? "/rope_config" : "/inferred");
}

class ValidCheckpoint : public LoaderTest, public ::testing::WithParamInterface<ValidCase> {};

TEST_P(ValidCheckpoint, LoadsWithResolvedModeAndShapes) {
  const ValidCase& p = GetParam();
  Tiny t;
  t.mode = p.mode;
  t.dtype = p.dtype;
  t.tied = p.tied;
  t.lm_head = !p.tied;
  t.rope_config = p.rope_config;
  write_tiny(t);
  auto ck = load_checkpoint(dir_);
  const ModelConfig& c = ck->config;
  EXPECT_EQ(c.mode, p.mode);
  EXPECT_EQ(c.has_rope_config, p.rope_config);
  EXPECT_EQ(c.config_mode.has_value(), p.rope_config);
  EXPECT_EQ(c.n_q_heads(), p.mode == RopeMode::EH ? 2 : 4);
  EXPECT_EQ(c.n_kv(), p.mode == RopeMode::EH ? 1 : 2);
  EXPECT_EQ(c.n_attn_heads(), p.mode == RopeMode::EC ? 8 : 4);
  EXPECT_EQ(c.head_dim, 2);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  ASSERT_EQ(ck->layers.size(), 2u);
  EXPECT_EQ(ck->weight_dtype(), p.dtype == "F32" ? DType::F32 : p.dtype == "F16" ? DType::F16 : DType::BF16);
  EXPECT_EQ(ck->lm_head == ck->embed, p.tied);
  EXPECT_EQ(ck->layers[1].wo->shape, (std::vector<int64_t>{8, c.n_attn_heads() * 2}));
  EXPECT_EQ(ck->layers[0].wk->shape, (std::vector<int64_t>{c.n_kv() * 2, 8}));
  // Parameter count from the tensor list itself.
  int64_t expect = 0;
  for (const Spec& s : tiny_tensors(t)) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    expect += n;
  }
  EXPECT_EQ(ck->n_params(), expect);
  // Zero-copy pointers land on the right bytes of the data section.
  const TensorInfo* down = ck->layers[1].w_down;
  const std::byte* base = ck->embed->data;  // the first tensor starts at data offset 0
  for (size_t i = 0; i < down->nbytes; ++i) {
    size_t k = size_t(down->data - base) + i;
    ASSERT_EQ(char(down->data[i]), pattern_byte(k)) << "byte " << i;
  }
}

std::vector<ValidCase> valid_cases() {
  std::vector<ValidCase> v;
  for (RopeMode m : {RopeMode::Rope, RopeMode::EH, RopeMode::EC})
    for (const char* dt : {"F32", "F16", "BF16"})
      for (bool tied : {false, true})
        for (bool rc : {false, true}) v.push_back({m, dt, tied, rc});
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllModes, ValidCheckpoint, ::testing::ValuesIn(valid_cases()),
                         [](const ::testing::TestParamInfo<ValidCase>& i) {
                           return std::string(rope_mode_name(i.param.mode)) + "_" + i.param.dtype +
                                  (i.param.tied ? "_tied" : "_untied") + (i.param.rope_config ? "_rc" : "_inferred");
                         });

TEST_F(LoaderTest, TiedWithLmHeadPresentUsesLmHead) {
  Tiny t;
  t.tied = true;
  write_tiny(t);
  auto ck = load_checkpoint(dir_);
  EXPECT_NE(ck->lm_head, ck->embed);
  EXPECT_EQ(ck->lm_head->name, "lm_head.weight");
}

TEST_F(LoaderTest, ExtraTensorsAreIgnored) {
  write_tiny(Tiny{}, {}, [](std::vector<Spec>& s) {
    s.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {1}});
  });
  auto ck = load_checkpoint(dir_);
  EXPECT_EQ(ck->st->tensors().size(), tiny_tensors(Tiny{}).size() + 1);
}

TEST_F(LoaderTest, ShardedIndexWithTwoShards) {
  Tiny t;
  t.mode = RopeMode::EC;
  write_config(tiny_config(t));
  std::vector<Spec> all = tiny_tensors(t), a, b;
  json wm = json::object();
  for (const Spec& s : all) {
    bool second = s.name.rfind("model.layers.1.", 0) == 0;
    (second ? b : a).push_back(s);
    wm[s.name] = second ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  write("model-00001-of-00002.safetensors", safetensors_bytes(a));
  write("model-00002-of-00002.safetensors", safetensors_bytes(b));
  write("model.safetensors.index.json", json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}}.dump());
  auto ck = load_checkpoint(dir_);
  EXPECT_EQ(ck->config.mode, RopeMode::EC);
  EXPECT_EQ(ck->layers[1].wq->file.filename(), "model-00002-of-00002.safetensors");
  EXPECT_EQ(ck->layers[0].wq->file.filename(), "model-00001-of-00002.safetensors");
  EXPECT_EQ(ck->st->tensors().size(), all.size());

  // A tensor absent from the shard the index names.
  wm["model.extra.weight"] = "model-00002-of-00002.safetensors";
  write("model.safetensors.index.json", json{{"weight_map", wm}}.dump());
  std::string m = error_of([&] { load_checkpoint(dir_); });
  EXPECT_MSG(m, "model.extra.weight", "model-00002-of-00002.safetensors", "index.json");

  // A tensor the index places in the wrong shard.
  wm.erase("model.extra.weight");
  wm["model.norm.weight"] = "model-00002-of-00002.safetensors";
  write("model.safetensors.index.json", json{{"weight_map", wm}}.dump());
  m = error_of([&] { load_checkpoint(dir_); });
  EXPECT_MSG(m, "model.norm.weight", "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors");

  // A tensor in both shards.
  wm["model.norm.weight"] = "model-00001-of-00002.safetensors";
  b.push_back(tensor(a, "model.norm.weight"));
  write("model-00002-of-00002.safetensors", safetensors_bytes(b));
  write("model.safetensors.index.json", json{{"weight_map", wm}}.dump());
  m = error_of([&] { load_checkpoint(dir_); });
  EXPECT_MSG(m, "duplicate tensor", "model.norm.weight", "model-00001-of-00002", "model-00002-of-00002");
}

TEST_F(LoaderTest, IndexErrors) {
  write_config(tiny_config(Tiny{}));
  write("a.safetensors", safetensors_bytes(tiny_tensors(Tiny{})));
  auto index = [&](const json& wm) { write("model.safetensors.index.json", json{{"weight_map", wm}}.dump()); };
  index({{"model.norm.weight", "missing.safetensors"}});
  std::string m = error_of([&] { SafetensorsSet::open_dir(dir_); });
  EXPECT_MSG(m, "missing.safetensors", "does not exist");
  for (const char* bad : {"../a.safetensors", "sub/a.safetensors", "..", "/etc/passwd"}) {
    index({{"model.norm.weight", bad}});
    m = error_of([&] { SafetensorsSet::open_dir(dir_); });
    EXPECT_MSG(m, bad, "model.norm.weight", "plain file name");
  }
  index({{"model.norm.weight", 3}});
  m = error_of([&] { SafetensorsSet::open_dir(dir_); });
  EXPECT_MSG(m, "model.norm.weight", "shard file name");
  write("model.safetensors.index.json", R"({"weight_map": {"a": "a.safetensors", "a": "b.safetensors"}})");
  m = error_of([&] { SafetensorsSet::open_dir(dir_); });
  EXPECT_MSG(m, "duplicate", "\"a\"");
  write("model.safetensors.index.json", R"({"weight_map": [1, 2]})");
  m = error_of([&] { SafetensorsSet::open_dir(dir_); });
  EXPECT_MSG(m, "weight_map");
  write("model.safetensors.index.json", R"({"weight_map": {"a": )");
  m = error_of([&] { SafetensorsSet::open_dir(dir_); });
  EXPECT_MSG(m, "model.safetensors.index.json", "malformed JSON");
}

TEST_F(LoaderTest, ModeOverride) {
  Tiny t;
  t.mode = RopeMode::EH;
  t.rope_config = false;
  write_tiny(t);
  EXPECT_EQ(load_checkpoint(dir_, RopeMode::EH)->config.mode, RopeMode::EH);
  std::string m = error_of([&] { load_checkpoint(dir_, RopeMode::EC); });
  EXPECT_MSG(m, "--rope-mode ec", "model.layers.0.self_attn.q_proj.weight", "[4, 8]", "o_proj", "[8, 16]");
  m = error_of([&] { load_checkpoint(dir_, RopeMode::Rope); });
  EXPECT_MSG(m, "--rope-mode rope", "q_proj.weight is [4, 8]", "[8, 8]");
}

TEST_F(LoaderTest, OverrideWinsOverRopeConfigWhenShapesAgree) {
  Tiny t;
  t.mode = RopeMode::EC;
  write_tiny(t, [](json& c) { c["rope_config"]["imag_mode"] = "imag1"; });  // says EH, shapes say EC
  std::string m = error_of([&] { load_checkpoint(dir_); });
  EXPECT_MSG(m, "rope_config", "mode eh", "q_proj.weight is [8, 8]", "o_proj.weight is [8, 16]", "[4, 8]",
             "fit mode ec");
  EXPECT_EQ(load_checkpoint(dir_, RopeMode::EC)->config.mode, RopeMode::EC);
}

TEST_F(LoaderTest, ShapesFittingNoMode) {
  Tiny t;
  t.rope_config = false;
  write_tiny(t, {}, [](std::vector<Spec>& s) { tensor(s, "model.layers.0.self_attn.q_proj.weight").shape = {6, 8}; });
  std::string m = error_of([&] { load_checkpoint(dir_); });
  EXPECT_MSG(m, "cannot infer", "q_proj.weight is [6, 8]", "o_proj.weight is [8, 8]");
}

TEST_F(LoaderTest, EhNeedsEvenHeads) {
  Tiny t;
  t.H = 4;
  t.KV = 1;  // odd kv heads: EH impossible
  t.rope_config = false;
  write_tiny(t);
  std::string m = error_of([&] { load_checkpoint(dir_, RopeMode::EH); });
  EXPECT_MSG(m, "even", "num_key_value_heads");
  m = error_of([&] {
    config_with([](json& c) {
      c["num_key_value_heads"] = 1;
      c["rope_config"] = {{"imag", true}, {"imag_mode", "imag1"}};
    });
  });
  EXPECT_MSG(m, "imag1", "even", "1");
}

// ---- checkpoint-level errors ------------------------------------------------------------------------

TEST_F(LoaderTest, MissingThings) {
  std::string m = error_of([&] { load_checkpoint(dir_ / "nope"); });
  EXPECT_MSG(m, (dir_ / "nope").string(), "does not exist");
  m = error_of([&] { load_checkpoint(dir_); });  // empty dir
  EXPECT_MSG(m, "config.json", "does not exist");
  write_config(tiny_config(Tiny{}));
  m = error_of([&] { load_checkpoint(dir_); });
  EXPECT_MSG(m, "model.safetensors", "model.safetensors.index.json", dir_.string());
  write("model.safetensors", "");
  m = error_of([&] { load_checkpoint(dir_); });
  EXPECT_MSG(m, "model.safetensors", "empty");
  write("x", "");
  m = error_of([&] { load_checkpoint(dir_ / "x"); });
  EXPECT_MSG(m, "not a directory");
}

TEST_F(LoaderTest, MissingTensor) {
  write_tiny(Tiny{}, {}, [](std::vector<Spec>& s) { erase_tensor(s, "model.layers.1.mlp.up_proj.weight"); });
  std::string m = error_of([&] { load_checkpoint(dir_); });
  EXPECT_MSG(m, "missing tensor model.layers.1.mlp.up_proj.weight in " + dir_.string());
}

TEST_F(LoaderTest, MissingLmHeadWhenUntied) {
  Tiny t;
  t.lm_head = false;
  write_tiny(t);
  std::string m = error_of([&] { load_checkpoint(dir_); });
  EXPECT_MSG(m, "missing tensor lm_head.weight", "tie_word_embeddings");
}

TEST_F(LoaderTest, WrongShapes) {
  struct Case {
    const char* name;
    std::vector<int64_t> shape;
    const char* got;
  };
  for (const Case& c : std::vector<Case>{{"model.layers.1.self_attn.k_proj.weight", {6, 8}, "[6, 8]"},
                                         {"model.layers.0.self_attn.v_proj.weight", {4, 9}, "[4, 9]"},
                                         {"model.layers.1.mlp.down_proj.weight", {12, 8}, "[12, 8]"},
                                         {"model.norm.weight", {8, 1}, "[8, 1]"},
                                         {"model.layers.0.input_layernorm.weight", {7}, "[7]"},
                                         {"lm_head.weight", {15, 8}, "[15, 8]"},
                                         {"model.embed_tokens.weight", {16}, "[16]"}}) {
    write_tiny(Tiny{}, {}, [&](std::vector<Spec>& s) { tensor(s, c.name).shape = c.shape; });
    std::string m = error_of([&] { load_checkpoint(dir_); });
    EXPECT_MSG(m, c.name, "got " + std::string(c.got), "expected shape");
  }
  write_tiny(Tiny{}, {}, [](std::vector<Spec>& s) {
    tensor(s, "model.layers.1.self_attn.k_proj.weight").shape = {2, 8};
  });
  EXPECT_MSG(error_of([&] { load_checkpoint(dir_); }), "k_proj.weight", "expected shape [4, 8], got [2, 8]");
}

TEST_F(LoaderTest, BiasTensorsAreRejected) {
  write_tiny(Tiny{}, {}, [](std::vector<Spec>& s) {
    s.push_back({"model.layers.0.self_attn.q_proj.bias", "F32", {8}});
  });
  EXPECT_MSG(error_of([&] { load_checkpoint(dir_); }), "model.layers.0.self_attn.q_proj.bias", "bias");
}

// ---- safetensors-level errors -----------------------------------------------------------------------

TEST_F(LoaderTest, TruncatedFiles) {
  const std::string good = safetensors_bytes(tiny_tensors(Tiny{}));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(good[size_t(i)]);
  struct Case {
    size_t cut;
    std::vector<std::string> needles;
  };
  for (const Case& c : std::vector<Case>{{0, {"empty"}},
                                         {3, {"3 bytes", "too small"}},
                                         {8, {"header length", std::to_string(n), "past the end"}},
                                         {8 + n / 2, {"header length", "past the end"}},
                                         {8 + n, {"past the end of the data section"}},
                                         {good.size() - 1, {"model.layers.1.mlp.down_proj.weight", "past the end"}}}) {
    write("model.safetensors", good.substr(0, c.cut));
    std::string m = error_of([&] { SafetensorsSet::open_dir(dir_); });
    for (const std::string& s : c.needles) EXPECT_NE(m.find(s), std::string::npos) << "cut " << c.cut << ": " << m;
    EXPECT_NE(m.find("model.safetensors"), std::string::npos) << m;
  }
}

TEST_F(LoaderTest, EveryTruncationFailsCleanly) {
  const std::string good = safetensors_bytes({{"a", "F32", {2, 3}}, {"b", "BF16", {5}}, {"c", "F16", {0, 4}}});
  const fs::path f = dir_ / "x.safetensors";
  for (size_t cut = 0; cut < good.size(); ++cut) {
    std::ofstream(f, std::ios::binary | std::ios::trunc) << good.substr(0, cut);
    try {
      SafetensorsSet::open_file(f);
      ADD_FAILURE() << "truncation at " << cut << " of " << good.size() << " was accepted";
    } catch (const Error&) {
    }
  }
  std::ofstream(f, std::ios::binary | std::ios::trunc) << good;
  auto st = SafetensorsSet::open_file(f);
  EXPECT_EQ(st->total_bytes(), 24u + 10u);
  EXPECT_EQ(st->find("c")->numel(), 0);
  EXPECT_EQ(st->find("a")->numel(), 6);
  EXPECT_EQ(st->find("missing"), nullptr);
}

TEST_F(LoaderTest, RandomHeaderCorruptionNeverCrashes) {
  const std::string good = safetensors_bytes(tiny_tensors(Tiny{}));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(good[size_t(i)]);
  const fs::path f = dir_ / "x.safetensors";
  std::mt19937 rng(1234);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 400; ++iter) {
    std::string bad = good;
    int flips = 1 + int(rng() % 3);
    for (int k = 0; k < flips; ++k)
      bad[rng() % (8 + n)] = char(rng() % 8 == 0 ? rng() : "0123456789[]{},\":-."[rng() % 19]);
    std::ofstream(f, std::ios::binary | std::ios::trunc) << bad;
    try {
      auto st = SafetensorsSet::open_file(f);
      EXPECT_LE(st->total_bytes(), bad.size());
      ++accepted;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST_F(LoaderTest, HeaderErrors) {
  auto hdr = [&](const std::string& header, size_t data_bytes = 16) {
    write("model.safetensors", raw_safetensors(header, std::string(data_bytes, '\x01')));
    return error_of([&] { SafetensorsSet::open_dir(dir_); });
  };
  std::string m = hdr(R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},)");
  EXPECT_MSG(m, "model.safetensors", "malformed JSON", "byte");
  m = hdr(R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 20]}})");
  EXPECT_MSG(m, "\"w\"", "[0, 20]", "16 bytes");
  m = hdr(
      R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})");
  EXPECT_MSG(m, "overlaps", "\"w\"", "\"v\"", "[0, 8)", "[4, 12)");
  m = hdr(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [16, 8]}})");
  EXPECT_MSG(m, "\"w\"", "reversed", "[16, 8]");
  m = hdr(R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}})");
  EXPECT_MSG(m, "\"w\"", "16 bytes", "span 8 bytes");
  for (const char* dt : {"I64", "F64", "F8_E4M3", "BOOL"}) {
    m = hdr(std::string(R"({"w": {"dtype": ")") + dt + R"(", "shape": [2], "data_offsets": [0, 16]}})");
    EXPECT_MSG(m, "\"w\"", dt, "not supported");
  }
  m = hdr(
      R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})");
  EXPECT_MSG(m, "duplicate tensor name", "\"w\"");
  m = hdr(R"({"w": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 16]}})");
  EXPECT_MSG(m, "\"w\"", "non-negative", "-2");
  m = hdr(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 16]}})");
  EXPECT_MSG(m, "\"w\"", "2.5");
  m = hdr(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 16]}})");
  EXPECT_MSG(m, "\"w\"", "64 bits");
  m = hdr(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}})");
  EXPECT_MSG(m, "\"w\"", "data_offsets");
  m = hdr(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})");
  EXPECT_MSG(m, "\"w\"", "non-negative");
  m = hdr(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})");
  EXPECT_MSG(m, "\"w\"", "dtype");
  m = hdr(R"({"w": [1, 2]})");
  EXPECT_MSG(m, "\"w\"", "object");
  m = hdr(R"([1, 2])");
  EXPECT_MSG(m, "must be a JSON object");

  // Header length prefix past the end of the file / above 100 MB.
  std::string f = raw_safetensors("{}", "");
  f[0] = char(0xff);
  write("model.safetensors", f);
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "header length 255", "past the end");
  std::string big(8, '\0');
  uint64_t len = 200'000'000;
  for (int i = 0; i < 8; ++i) big[size_t(i)] = char((len >> (8 * i)) & 0xff);
  write("model.safetensors", big + "{}");
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "200000000", "100000000");
  for (int i = 0; i < 8; ++i) big[size_t(i)] = char(0xff);
  write("model.safetensors", big + "{}");
  EXPECT_MSG(error_of([&] { SafetensorsSet::open_dir(dir_); }), "header length", "exceeds");

  // Zero-length tensors and an empty header are fine.
  write("model.safetensors", raw_safetensors(R"({"e": {"dtype": "BF16", "shape": [0], "data_offsets": [0, 0]}})", ""));
  EXPECT_EQ(SafetensorsSet::open_dir(dir_)->find("e")->nbytes, 0u);
}

// ---- config.json ------------------------------------------------------------------------------------

TEST_F(LoaderTest, ConfigDefaultsAndOptionalKeys) {
  ModelConfig c = config_with([](json& c) {
    c.erase("num_key_value_heads");
    c.erase("rope_theta");
    c.erase("tie_word_embeddings");
    c.erase("rope_config");
    c["head_dim"] = nullptr;
    c["bos_token_id"] = nullptr;
    c["eos_token_id"] = {2, 5};
  });
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 2);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2, 5}));
  EXPECT_FALSE(c.has_rope_config);
  EXPECT_EQ(c.scaling.kind, RopeScaling::Kind::None);
  EXPECT_EQ(c.path, dir_ / "config.json");

  c = config_with([](json& c) {
    c["head_dim"] = 6;  // explicit head_dim need not equal hidden / heads
    c["eos_token_id"] = nullptr;
  });
  EXPECT_EQ(c.head_dim, 6);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.bos_token_id, 1);
}

TEST_F(LoaderTest, ConfigScaling) {
  ModelConfig c = config_with([](json& c) {
    c.erase("rope_config");
    c["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  });
  EXPECT_EQ(c.scaling.kind, RopeScaling::Kind::Linear);
  EXPECT_DOUBLE_EQ(c.scaling.factor, 4.0);
  c = config_with([](json& c) {
    c.erase("rope_config");
    c["rope_scaling"] = {{"rope_type", "default"}};
  });
  EXPECT_EQ(c.scaling.kind, RopeScaling::Kind::None);
  c = config_with([](json& c) { c["rope_config"] = {{"imag", true}, {"imag_mode", "imag2"}, {"factor", 8}}; });
  EXPECT_EQ(c.scaling.kind, RopeScaling::Kind::Linear);
  EXPECT_DOUBLE_EQ(c.scaling.factor, 8.0);
  EXPECT_EQ(c.config_mode, RopeMode::EC);
  c = config_with([](json& c) {
    c["rope_config"] = {{"imag", true}, {"imag_mode", "imag1"}, {"factor", 16.0}, {"yarn", true}};
    c["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};  // ignored next to rope_config
  });
  EXPECT_EQ(c.scaling.kind, RopeScaling::Kind::Yarn);
  EXPECT_DOUBLE_EQ(c.scaling.factor, 16.0);
  EXPECT_EQ(c.config_mode, RopeMode::EH);
  c = config_with([](json& c) { c["rope_config"] = {{"imag", false}, {"imag_mode", "imagh"}}; });
  EXPECT_EQ(c.config_mode, RopeMode::Rope);  // imag_mode is unused when imag is false

  for (const char* t : {"dynamic", "yarn", "llama3", "longrope"}) {
    std::string m = error_of([&] {
      config_with([&](json& c) {
        c.erase("rope_config");
        c["rope_scaling"] = {{"type", t}, {"factor", 2.0}};
      });
    });
    EXPECT_MSG(m, "config.json", "rope_scaling", t, "not supported");
  }
  for (const char* mode : {"imagh", "imago", "imagx", "imag3"}) {
    std::string m = error_of([&] {
      config_with([&](json& c) { c["rope_config"] = {{"imag", true}, {"imag_mode", mode}}; });
    });
    EXPECT_MSG(m, "imag_mode", mode, "not supported");
  }
  EXPECT_MSG(error_of([&] { config_with([](json& c) {
                              c["rope_config"] = {{"imag", false}, {"yarn", true}};
                            }); }),
             "yarn", "factor");
  EXPECT_MSG(error_of([&] { config_with([](json& c) { c["rope_config"]["factor"] = 0; }); }), "rope_config.factor",
             "0");
  EXPECT_MSG(error_of([&] { config_with([](json& c) { c["rope_config"]["imag"] = "yes"; }); }), "rope_config.imag",
             "yes");
  EXPECT_MSG(error_of([&] { config_with([](json& c) {
                              c["rope_config"] = {{"imag", true}};
                            }); }), "imag_mode",
             "missing");
  EXPECT_MSG(error_of([&] {
               config_with([](json& c) {
                 c.erase("rope_config");
                 c["rope_scaling"] = {{"type", "linear"}, {"factor", -2}};
               });
             }),
             "rope_scaling.factor", "-2");
}

TEST_F(LoaderTest, ConfigBadIntegers) {
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim"}) {
    for (const json& v : {json(0), json(-4), json(2.5), json(4.0), json("8"), json(true), json::array({8})}) {
      std::string m = error_of([&] { config_with([&](json& c) { c[key] = v; }); });
      EXPECT_MSG(m, "config.json", key, v.dump(), "positive integer");
    }
  }
  EXPECT_MSG(error_of([&] { config_with([](json& c) { c["vocab_size"] = 2147483648LL; }); }), "vocab_size",
             "2147483648", "2^31");
  EXPECT_MSG(error_of([&] { config_with([](json& c) { c.erase("hidden_size"); }); }), "missing", "hidden_size");
  for (const char* key : {"rms_norm_eps", "rope_theta"})
    for (const json& v : {json(0), json(-1e-5), json("1e-5"), json(nullptr)}) {
      if (v.is_null()) continue;  // null means default
      std::string m = error_of([&] { config_with([&](json& c) { c[key] = v; }); });
      EXPECT_MSG(m, key, "number > 0");
    }
  EXPECT_MSG(error_of([&] { config_with([](json& c) { c["tie_word_embeddings"] = 1; }); }), "tie_word_embeddings");
  EXPECT_MSG(error_of([&] { config_with([](json& c) { c["eos_token_id"] = {2, -1}; }); }), "eos_token_id[1]", "-1");
  EXPECT_MSG(error_of([&] { config_with([](json& c) { c["bos_token_id"] = "1"; }); }), "bos_token_id");
  EXPECT_MSG(error_of([&] { config_with([](json& c) { c["hidden_act"] = "gelu"; }); }), "hidden_act", "gelu");
  EXPECT_MSG(error_of([&] { config_with([](json& c) { c["attention_bias"] = true; }); }), "attention_bias");
}

TEST_F(LoaderTest, ConfigDivisibility) {
  std::string m = error_of([&] {
    config_with([](json& c) {
      c["num_attention_heads"] = 3;
      c["num_key_value_heads"] = 3;
    });
  });
  EXPECT_MSG(m, "hidden_size 8", "num_attention_heads 3", "not divisible");
  m = error_of([&] { config_with([](json& c) { c["num_key_value_heads"] = 3; }); });
  EXPECT_MSG(m, "num_attention_heads 4", "num_key_value_heads 3", "not divisible");
  m = error_of([&] { config_with([](json& c) { c["num_key_value_heads"] = 8; }); });
  EXPECT_MSG(m, "num_attention_heads 4", "num_key_value_heads 8");
  m = error_of([&] { config_with([](json& c) { c["head_dim"] = 3; }); });
  EXPECT_MSG(m, "head_dim", "even", "3");
}

TEST_F(LoaderTest, ConfigFileErrors) {
  std::string m = error_of([&] { parse_config(dir_ / "config.json"); });
  EXPECT_MSG(m, (dir_ / "config.json").string(), "does not exist");
  write("config.json", "{\"hidden_size\": 8,\n \"vocab_size\": }");
  m = error_of([&] { parse_config(dir_ / "config.json"); });
  EXPECT_MSG(m, (dir_ / "config.json").string(), "malformed JSON", "byte", "line 2");
  write("config.json", "[1]");
  EXPECT_MSG(error_of([&] { parse_config(dir_ / "config.json"); }), "object");
  write("config.json", "");
  EXPECT_MSG(error_of([&] { parse_config(dir_ / "config.json"); }), "malformed JSON");
}

TEST(RopeModeFlag, Parses) {
  EXPECT_FALSE(parse_rope_mode_flag("auto").has_value());
  EXPECT_EQ(parse_rope_mode_flag("rope"), RopeMode::Rope);
  EXPECT_EQ(parse_rope_mode_flag("eh"), RopeMode::EH);
  EXPECT_EQ(parse_rope_mode_flag("ec"), RopeMode::EC);
  EXPECT_STREQ(rope_mode_name(RopeMode::EH), "eh");
  std::string m = error_of([] { parse_rope_mode_flag("EH2"); });
  EXPECT_MSG(m, "--rope-mode", "EH2", "auto, rope, eh, ec");
}

}  // namespace
