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
  int logits_last = 0;  // 0: all positions
  int decode_last = 0;  // feed the last N tokens one at a time (the decode path)
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
  L = load_model(a.m, opt, TokenizerUse::Optional);
  const int64_t V = L.ckpt->config.vocab_size;
  for (int32_t id : ids)
    if (id >= V) fail("--ids: token id {} is outside the vocabulary [0, {})", id, V);

  const size_t T = ids.size();
  const size_t keep = a.logits_last > 0 ? std::min(T, size_t(a.logits_last)) : T;  // rows whose logits reach the host
  const size_t dec = std::min(T, size_t(a.decode_last));                          // fed one token at a time
  if (keep * size_t(V) > (size_t(4) << 30) / sizeof(float))
    fail("score: {} positions x {} logits do not fit in host memory; use --logits-last N", keep, V);

  // Rows outside the kept window only need their NLL: it is computed on the backend (forward_nll), so
  // long inputs (64k tokens) never bring [T, vocab] logits to the host.
  const int seq = L.model->cache().add_sequence();
  std::vector<double> nll(T - 1);
  std::vector<int32_t> argmax;
  std::vector<float> logits;  // [keep, V]
  const size_t P = size_t(a.m.batch);
  size_t b = 0;
  while (b < T) {
    size_t e = std::min(T, b + (b >= T - dec ? 1 : P));
    if (b < T - keep) e = std::min(e, T - keep);
    if (b < T - dec) e = std::min(e, T - dec);
    const SeqChunk c{seq, std::span(ids).subspan(b, e - b), true};
    if (b >= T - keep) {
      const std::vector<float> rows = L.model->forward(std::span(&c, 1));
      for (size_t t = b; t < e; ++t) {
        const float* row = rows.data() + (t - b) * size_t(V);
        int32_t best = 0;
        double mx = row[0];
        for (int64_t v = 1; v < V; ++v)
          if (row[v] > mx) mx = row[v], best = int32_t(v);
        if (!std::isfinite(mx)) fail("score: non-finite logits at position {} (broken weights?)", t);
        argmax.push_back(best);
        if (t + 1 < T) {
          double sum = 0.0;
          for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
          nll[t] = mx + std::log(sum) - double(row[ids[t + 1]]);
        }
      }
      logits.insert(logits.end(), rows.begin(), rows.end());
    } else {
      std::vector<int32_t> targets(ids.begin() + ptrdiff_t(b) + 1, ids.begin() + ptrdiff_t(e) + (e < T));
      if (e == T) targets.push_back(0);  // the last position has no next token; its value is dropped
      const std::vector<float> rows = L.model->forward_nll(std::span(&c, 1), targets);
      for (size_t t = b; t < e && t + 1 < T; ++t) nll[t] = rows[t - b];
    }
    b = e;
  }
  double mean = 0.0;
  for (double x : nll) mean += x;
  if (!nll.empty()) mean /= double(nll.size());

  for (double x : nll)
    if (!std::isfinite(x)) fail("score: non-finite NLL (broken weights?)");
  if (!a.logits_out.empty()) write_npy_f32(a.logits_out, logits.data(), {int64_t(keep), V});

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
  fmt::print("argmax    {}{}\n", keep < T ? fmt::format("(last {} positions) ", keep) : "", fmt::join(argmax, " "));
  if (!a.logits_out.empty()) fmt::print("logits    {} [{}, {}] float32\n", a.logits_out, keep, V);
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
  sub->add_option("--logits-last", a->logits_last, "keep (print argmax / write) only the last N positions' logits; "
                 "the NLL still covers every position (0: all)")->capture_default_str()->check(CLI::NonNegativeNumber);
  sub->add_option("--decode-last", a->decode_last, "feed the last N tokens one at a time through the KV cache "
                 "(decode path) instead of in the prefill batch")->capture_default_str()->check(CLI::NonNegativeNumber);
  sub->add_flag("--json", a->json, "print one JSON object (tokens, argmax, nll, mean_nll, ppl)");
  sub->callback([a] { run_score(*a); });
}

}  // namespace ropepp::cli
