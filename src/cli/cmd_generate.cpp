// cmd_generate.cpp: `ropepp generate` — streams text from a prompt; stops at EOS, -n or a stop string;
// stats on stderr; --json prints one object for scripts.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "generate.h"
#include "model_args.h"
#include "sampling_args.h"

namespace ropepp::cli {
namespace {

struct GenerateArgs {
  ModelArgs m;
  SamplingArgs s;
  std::string prompt;
  std::string file;
  int n_predict = 128;
  std::vector<std::string> stop;
  bool json = false;
  bool no_bos = false;
  bool keep_end = false;
  bool ignore_eos = false;
};

void run_generate(const GenerateArgs& a) {
  if (a.prompt.empty() == a.file.empty()) fail("generate: give exactly one of -p/--prompt or -f/--file");
  std::string text = a.prompt;
  if (!a.file.empty()) {
    std::ifstream f(a.file, std::ios::binary);
    if (!f) fail("-f {}: cannot open the file", a.file);
    std::stringstream ss;
    ss << f.rdbuf();
    text = ss.str();
    if (text.empty()) fail("-f {}: the file is empty", a.file);
  }
  const SamplerParams sp = a.s.resolve();
  if (a.n_predict < -1) fail("-n {}: expected ≥ 0, or -1 for no limit", a.n_predict);

  const auto dir = resolve_model_dir(a.m.model);
  auto tok = Tokenizer::from_dir(dir);
  EncodeOptions eo;
  eo.add_bos = !a.no_bos;
  std::vector<int32_t> prompt = tok->encode(text, eo);
  if (prompt.empty()) fail("generate: the prompt has no tokens");

  // Context: -c, else what the job needs (prompt + n), within the model's trained length.
  const ModelConfig cfg = parse_config(dir / "config.json");
  const int model_max = int(std::min<int64_t>(cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 4096, 65536));
  int ctx = a.m.ctx;
  if (ctx == 0) ctx = a.n_predict < 0 ? model_max : std::min<int>(model_max, int(prompt.size()) + a.n_predict);
  ctx = std::max(ctx, 1);
  if (int(prompt.size()) >= ctx + (a.n_predict == 0)) {
    if (!a.keep_end)
      fail("the prompt has {} tokens but the context holds {} (-c/--ctx-size); pass --keep-end to keep only its end",
           prompt.size(), ctx);
    const size_t keep = size_t(std::max(1, ctx - std::max(1, std::min(a.n_predict, ctx / 2))));
    spdlog::warn("prompt of {} tokens cut to its last {} (--keep-end)", prompt.size(), keep);
    prompt.erase(prompt.begin(), prompt.end() - ptrdiff_t(keep));
  }
  ModelOptions opt;
  opt.n_ctx = ctx;
  Loaded L = load_model(a.m, opt, TokenizerUse::Optional);
  Session session(*L.model);
  Sampler sampler(sp);
  GenerateParams gp;
  gp.n_predict = a.n_predict;
  gp.stop = a.stop;
  gp.stop_at_eos = !a.ignore_eos;
  gp.sampling = sp;

  auto on_text = [&](const std::string& t) {
    if (a.json) return;
    std::fwrite(t.data(), 1, t.size(), stdout);
    std::fflush(stdout);
  };
  if (!a.json) {
    const std::string shown = tok->decode(prompt, true);
    std::fwrite(shown.data(), 1, shown.size(), stdout);
    std::fflush(stdout);
  }
  const GenerateResult r = generate(session, *tok, prompt, sampler, gp, on_text);
  if (!a.json) std::fputc('\n', stdout);

  const double pp = r.prompt_seconds > 0 ? r.prompt_tokens / r.prompt_seconds : 0;
  const double tg = r.gen_seconds > 0 ? double(r.tokens.size()) / r.gen_seconds : 0;
  if (a.json) {
    nlohmann::json j;
    j["prompt_tokens"] = prompt;
    j["tokens"] = r.tokens;
    j["text"] = r.text;
    j["stop_reason"] = r.stop_reason;
    j["seed"] = sp.seed;
    j["timings"] = {{"load_s", L.load_seconds},
                    {"prompt_s", r.prompt_seconds},
                    {"gen_s", r.gen_seconds},
                    {"prompt_tok_per_s", pp},
                    {"gen_tok_per_s", tg}};
    fmt::print("{}\n", j.dump());
  }
  fmt::print(stderr, "\n[{}] load {:.2f} s | prompt {} tokens, {:.1f} tok/s | generated {} tokens, {:.1f} tok/s | stop: {} | seed {}\n",
             L.backend->name(), L.load_seconds, r.prompt_tokens, pp, r.tokens.size(), tg, r.stop_reason, sp.seed);
}

}  // namespace

void register_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* sub = app.add_subcommand("generate", "generate text from a prompt, streamed to stdout");
  add_model_args(sub, a->m);
  add_sampling_args(sub, a->s);
  sub->add_option("-p,--prompt", a->prompt, "prompt text");
  sub->add_option("-f,--file", a->file, "read the prompt from a file");
  sub->add_option("-n,--n-predict", a->n_predict, "tokens to generate (-1: until EOS or the context is full)")->capture_default_str();
  sub->add_option("--stop", a->stop, "stop before this string (repeatable)");
  sub->add_flag("--json", a->json, "print one JSON object (prompt_tokens, tokens, text, stop_reason, timings)");
  sub->add_flag("--no-bos", a->no_bos, "do not add BOS to the prompt");
  sub->add_flag("--keep-end", a->keep_end, "a prompt longer than the context keeps its end instead of failing");
  sub->add_flag("--ignore-eos", a->ignore_eos, "do not stop at end-of-sequence tokens");
  sub->callback([a] { run_generate(*a); });
}

}  // namespace ropepp::cli
