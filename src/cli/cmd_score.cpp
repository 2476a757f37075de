// cmd_score.cpp: `ropepp score` — runs a token sequence through the model in one forward and reports the
// mean negative log-likelihood of each next token and the per-position argmax; optionally writes every
// position's logits as a .npy. This is how anyone checks the engine against another implementation.
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "model_args.h"
#include "npy.h"

namespace ropepp::cli {
namespace {

struct ScoreArgs {
  ModelArgs m;
  std::string ids;
  std::string ids_file;
  std::string prompt;
  std::string prompt_file;
  std::string logits_out;
  bool no_bos = false;
  bool json = false;
};

std::string read_file(const std::string& path, const char* flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{} {}: cannot open the file", flag, path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void run_score(const ScoreArgs& a) {
  const int sources = !a.ids.empty() + !a.ids_file.empty() + !a.prompt.empty() + !a.prompt_file.empty();
  if (sources != 1) fail("score: give exactly one of --ids, --ids-file, -p/--prompt, -f/--file (got {})", sources);

  std::vector<int32_t> ids;
  if (!a.ids.empty()) ids = parse_id_list(a.ids, "--ids");
  if (!a.ids_file.empty()) ids = parse_id_list(read_file(a.ids_file, "--ids-file"), "--ids-file " + a.ids_file);
  const bool text_input = ids.empty() && sources == 1 && (!a.prompt.empty() || !a.prompt_file.empty());
  if (ids.empty() && !text_input) fail("score: no token ids given");

  ModelOptions opt;
  Loaded L;
  if (text_input) {
    // Tokenize first (the context size depends on the token count), then load the weights.
    auto tok = Tokenizer::from_dir(resolve_model_dir(a.m.model));
    const std::string text = !a.prompt.empty() ? a.prompt : read_file(a.prompt_file, "-f");
    EncodeOptions eo;
    eo.add_bos = !a.no_bos;
    ids = tok->encode(text, eo);
  }
  if (ids.empty()) fail("score: the input has no tokens");
  opt.n_ctx = std::max<int>(int(ids.size()), a.m.ctx);
  if (a.m.ctx > 0 && a.m.ctx < int(ids.size()))
    fail("score: {} tokens do not fit -c/--ctx-size {}", ids.size(), a.m.ctx);
  L = load_model(a.m, opt, false);
  const int64_t V = L.ckpt->config.vocab_size;
  for (int32_t id : ids)
    if (id >= V) fail("--ids: token id {} is outside the vocabulary [0, {})", id, V);

  const int seq = L.model->cache().add_sequence();
  const SeqChunk chunk{seq, ids, true};
  const std::vector<float> logits = L.model->forward(std::span(&chunk, 1));
  const size_t T = ids.size();

  std::vector<int32_t> argmax(T);
  std::vector<double> nll;
  for (size_t t = 0; t < T; ++t) {
    const float* row = logits.data() + t * size_t(V);
    int32_t best = 0;
    double mx = row[0];
    for (int64_t v = 1; v < V; ++v)
      if (row[v] > mx) mx = row[v], best = int32_t(v);
    argmax[t] = best;
    if (t + 1 < T) {
      double sum = 0.0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
      nll.push_back(mx + std::log(sum) - double(row[ids[t + 1]]));
    }
    if (!std::isfinite(mx)) fail("score: non-finite logits at position {} (broken weights?)", t);
  }
  double mean = 0.0;
  for (double x : nll) mean += x;
  if (!nll.empty()) mean /= double(nll.size());

  if (!a.logits_out.empty()) write_npy_f32(a.logits_out, logits.data(), {int64_t(T), V});

  if (a.json) {
    nlohmann::json j;
    j["tokens"] = ids;
    j["argmax"] = argmax;
    j["nll"] = nll;
    j["mean_nll"] = nll.empty() ? nlohmann::json(nullptr) : nlohmann::json(mean);
    j["ppl"] = nll.empty() ? nlohmann::json(nullptr) : nlohmann::json(std::exp(mean));
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("tokens    {}\n", T);
  if (nll.empty()) {
    fmt::print("mean NLL  n/a (one token has no next token to score)\n");
  } else {
    fmt::print("mean NLL  {:.6f} nats over {} next tokens (ppl {:.4f})\n", mean, nll.size(), std::exp(mean));
  }
  fmt::print("argmax    {}\n", fmt::join(argmax, " "));
  if (!a.logits_out.empty()) fmt::print("logits    {} [{}, {}] float32\n", a.logits_out, T, V);
}

}  // namespace

void register_score_command(CLI::App& app) {
  auto a = std::make_shared<ScoreArgs>();
  CLI::App* sub = app.add_subcommand("score", "run tokens through the model: next-token NLL, argmax, logits");
  add_model_args(sub, a->m);
  sub->add_option("--ids", a->ids, "token ids, comma- or space-separated");
  sub->add_option("--ids-file", a->ids_file, "file of token ids (comma/space/newline separated)");
  sub->add_option("-p,--prompt", a->prompt, "text, tokenized with the checkpoint's tokenizer");
  sub->add_option("-f,--file", a->prompt_file, "text file, tokenized with the checkpoint's tokenizer");
  sub->add_flag("--no-bos", a->no_bos, "do not add BOS when tokenizing text");
  sub->add_option("--logits-out", a->logits_out, "write every position's logits as .npy float32 [T, vocab]");
  sub->add_flag("--json", a->json, "print one JSON object (tokens, argmax, nll, mean_nll, ppl)");
  sub->callback([a] { run_score(*a); });
}

}  // namespace ropepp::cli
