// cmd_tokenize.cpp: `ropepp tokenize` (text -> ids) and `ropepp detokenize` (ids -> text) with a model
// directory's tokenizer (tokenizer.json or tokenizer.model).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "commands.h"
#include "common.h"
#include "model_args.h"
#include "tokenizer.h"

namespace ropepp::cli {
namespace {

struct TokenizeArgs {
  std::string model, prompt, file;
  bool ids_only = false, no_bos = false, no_special = false, lossy = false, json = false;
};

struct DetokenizeArgs {
  std::string model, ids;
  bool skip_special = false, no_newline = false;
};

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--file: cannot open '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("--file: cannot read '{}'", path);
  return ss.str();
}

void write_out(std::string_view s) { std::fwrite(s.data(), 1, s.size(), stdout); }

void run_tokenize(const TokenizeArgs& a) {
  const auto tok = Tokenizer::from_dir(resolve_model_dir(a.model));
  const std::string text = a.file.empty() ? a.prompt : read_text_file(a.file);
  EncodeOptions opt;
  opt.add_bos = !a.no_bos;
  opt.parse_special = !a.no_special;
  opt.lossy = a.lossy;
  const std::vector<int32_t> ids = tok->encode(text, opt);
  std::string out;
  if (a.json) {
    nlohmann::json j;
    j["ids"] = ids;
    auto& pieces = j["pieces"] = nlohmann::json::array();
    for (int32_t id : ids) pieces.push_back(tok->piece(id));
    out = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  } else if (a.ids_only) {
    for (size_t i = 0; i < ids.size(); ++i) fmt::format_to(std::back_inserter(out), "{}{}", i ? " " : "", ids[i]);
    out += "\n";
  } else {
    for (int32_t id : ids) fmt::format_to(std::back_inserter(out), "{}\t{}\n", id, tok->piece(id));
  }
  write_out(out);
}

void run_detokenize(const DetokenizeArgs& a) {
  const auto tok = Tokenizer::from_dir(resolve_model_dir(a.model));
  const std::vector<int32_t> ids = parse_id_list(a.ids, "--ids");
  for (int32_t id : ids)
    if (id >= tok->vocab_size())
      fail("--ids: token id {} is out of range: expected 0 <= id < vocab_size {}", id, tok->vocab_size());
  std::string text = tok->decode(ids, a.skip_special);
  if (!a.no_newline) text += "\n";
  write_out(text);
}

}  // namespace

void register_tokenize_commands(CLI::App& app) {
  auto ta = std::make_shared<TokenizeArgs>();
  CLI::App* t = app.add_subcommand("tokenize", "text -> token ids with the model's tokenizer");
  t->add_option("-m,--model", ta->model, "model directory (tokenizer.json or tokenizer.model); default: the default model");
  auto* p = t->add_option("-p,--prompt", ta->prompt, "text to tokenize");
  auto* f = t->add_option("-f,--file", ta->file, "file whose contents to tokenize");
  p->excludes(f);
  f->excludes(p);
  t->add_flag("--ids", ta->ids_only, "print only the ids, space-separated");
  t->add_flag("--no-bos", ta->no_bos, "do not add BOS / the post-processor's special tokens");
  t->add_flag("--no-special", ta->no_special, "treat special tokens written in the text as plain text");
  t->add_flag("--lossy", ta->lossy, "replace invalid UTF-8 by U+FFFD instead of failing");
  t->add_flag("--json", ta->json, "print {\"ids\": [...], \"pieces\": [...]}");
  t->callback([ta, t] {
    if (t->count("--prompt") == 0 && t->count("--file") == 0) fail("tokenize: give the text with -p TEXT or -f FILE");
    run_tokenize(*ta);
  });

  auto da = std::make_shared<DetokenizeArgs>();
  CLI::App* d = app.add_subcommand("detokenize", "token ids -> text with the model's tokenizer");
  d->add_option("-m,--model", da->model, "model directory (tokenizer.json or tokenizer.model); default: the default model");
  d->add_option("--ids", da->ids, "ids, comma- or space-separated (1,2,3)")->required();
  d->add_flag("--skip-special", da->skip_special, "leave special tokens out of the text");
  d->add_flag("-n,--no-newline", da->no_newline, "do not end the text with a newline");
  d->callback([da] { run_detokenize(*da); });
}

}  // namespace ropepp::cli
