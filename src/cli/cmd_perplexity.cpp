// cmd_perplexity.cpp: `ropepp perplexity` — perplexity of a text file (or of token ids) under the model,
// with the sliding-window recipe of Hugging Face's guide (default), llama.cpp's chunks (--chunk), and
// optionally the number exactly as the RoPE++ paper's test_ppl.py computes it (--paper-formula).
// The window planning and scoring live in src/perplexity.{h,cpp}.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "commands.h"
#include "model_args.h"
#include "op_breakdown.h"
#include "perplexity.h"

namespace ropepp::cli {
namespace {

struct PerplexityArgs {
  ModelArgs m;
  std::string file;
  std::string ids_file;
  int window = 4096;
  int stride = 512;
  int chunk = 0;
  int parallel = 0;
  bool paper = false;
  bool json = false;
  bool no_bos = false;
  bool profile = false;
  CLI::Option* window_opt = nullptr;
  CLI::Option* stride_opt = nullptr;
  CLI::Option* chunk_opt = nullptr;
};

constexpr const char* kHelp = R"(Perplexity of a text (or of token ids) under the model: exp(mean NLL per scored token).

The whole input is tokenized once, with BOS at its start as the tokenizer's own call adds it (Hugging Face's
tokenizer(text) and the paper's test_ppl.py do the same; --no-bos leaves it out). --ids-file scores ids as given.

Recipes:
  sliding (default)  Hugging Face's perplexity guide: windows of --window tokens starting at 0, S, 2S, ...
                     (S = --stride) until one reaches the end; each window scores only the tokens the previous
                     window did not score, so every token from the second on is scored exactly once, with the
                     tokens of its window before it as context (the first --window tokens see everything
                     before them). With --window == --stride the first token of each window is not scored.
  --chunk N          llama.cpp's `perplexity`: floor(tokens / N) non-overlapping chunks of N tokens, BOS in
                     place of each chunk's first token (when the input starts with BOS), only the second half
                     scored (tokens N/2+1 .. N-1 of each chunk); the tail shorter than N is dropped.

--paper-formula (sliding only) also prints the number exactly as the RoPE++ paper's test_ppl.py computes it:
  its windows end at S, 2S, 3S, ... (window i = [max(i+S-W, 0), min(i+S, n)) for i = 0, S, 2S, ... < n),
  each labelled on its last S tokens; loss_i is the mean NLL of those targets, leaving out targets equal to
  the config's eos_token_id (the script's ignore_index); ppl = exp(sum_i(loss_i * S) / i_last), with i_last
  the last window's i. That divisor is not the number of scored tokens (the first window scores S-1, the last
  window repeats tokens when n is not a multiple of S), so the paper number is larger than the guide's.
  Targets whose context equals the guide's are taken from the sliding run; only the others are run again.

Output: the result on stdout (--json: one JSON object); progress on stderr (a bar on a terminal, else a line
every 15 s). Several windows run as separate sequences of one forward batch when they fit in -b tokens
(--parallel overrides); -b caps the tokens of every forward call.)";

std::string read_all(const std::string& path, const char* flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{} {}: cannot open the file", flag, path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  if (s.empty()) fail("{} {}: the file is empty", flag, path);
  return s;
}

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m{:02}s", t / 3600, t / 60 % 60, t % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

// Progress on stderr: a redrawn bar on a terminal, otherwise a plain line every 15 s.
class ProgressBar {
 public:
  ProgressBar() : tty_(isatty(STDERR_FILENO) == 1), t0_(clock::now()), last_(t0_) {}
  void update(const ScoreProgress& p) {
    const auto now = clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    const bool done = p.tokens_done >= p.tokens_total;
    if (tty_ ? (since < 0.1 && !done) : (since < 15.0)) return;
    last_ = now;
    const double el = std::chrono::duration<double>(now - t0_).count();
    const double frac = p.tokens_total > 0 ? double(p.tokens_done) / double(p.tokens_total) : 1.0;
    const double rate = el > 0 ? double(p.tokens_done) / el : 0.0;
    const double eta = rate > 0 ? double(p.tokens_total - p.tokens_done) / rate : NAN;
    if (tty_) {
      constexpr int kW = 30;
      const int fill = int(frac * kW);
      fmt::print(stderr, "\r[{:=<{}}{:<{}}] {:5.1f}% window {}/{} | {:.0f} tok/s | ETA {}\x1b[K", "", fill, "",
                 kW - fill, 100 * frac, p.windows_done, p.windows_total, rate, fmt_duration(eta));
      drawn_ = true;
    } else {
      fmt::print(stderr, "perplexity: {:.1f}% ({}/{} windows, {} of {} tokens), {:.0f} tok/s, ETA {}\n", 100 * frac,
                 p.windows_done, p.windows_total, p.tokens_done, p.tokens_total, rate, fmt_duration(eta));
    }
    std::fflush(stderr);
  }
  void finish() {
    if (drawn_) fmt::print(stderr, "\n");
  }

 private:
  using clock = std::chrono::steady_clock;
  bool tty_;
  bool drawn_ = false;
  clock::time_point t0_, last_;
};

// What the model is built for: the context and the sequences (windows per forward batch) of a plan of
// n_tokens tokens in n_windows windows.
struct PplSizing {
  int64_t need = 0;  // ppl_context_needed: the longest window
  int n_ctx = 0;
  int par = 0;  // ModelOptions::max_seqs and PplParams::max_parallel
  int logit_rows = 0;  // ModelOptions::logit_rows
};

PplSizing ppl_sizing(const PerplexityArgs& a, const PplParams& p, int64_t n_tokens, int64_t n_windows) {
  PplSizing s;
  s.need = ppl_context_needed(p, n_tokens);
  s.n_ctx = int(std::max<int64_t>(s.need, a.m.ctx));
  int par = a.parallel > 0 ? a.parallel : std::max(1, a.m.batch / s.n_ctx);
  s.par = std::max(1, int(std::min<int64_t>({par, n_windows, 256})));
  // Logits rows per lm_head matmul: a window's scored rows (the stride; a chunk's second half) in one matmul, so
  // that the 263 MB lm_head of a Llama-3 vocabulary is read once per window (256 .. 1024 rows; the scratch is
  // rows x vocab fp32). ROPEPP_PPL_LOGIT_ROWS=N overrides it (1 .. 4096; device A/B).
  const int scored = p.recipe == PplParams::Recipe::Chunk ? p.chunk - p.chunk / 2 : p.stride;
  s.logit_rows = std::clamp(scored, 256, 1024);
  if (const char* e = std::getenv("ROPEPP_PPL_LOGIT_ROWS"); e && *e) {
    s.logit_rows = std::atoi(e);
    if (s.logit_rows < 1 || s.logit_rows > 4096) fail("ROPEPP_PPL_LOGIT_ROWS={}: expected 1 .. 4096", e);
  }
  return s;
}

ModelOptions model_options(const PplSizing& s) {
  ModelOptions opt;
  opt.n_ctx = s.n_ctx;
  opt.max_seqs = s.par;
  opt.logit_rows = s.logit_rows;
  return opt;
}

// -f: the model is loaded while another thread tokenizes the text, when the sizing can be known without the
// token count. It is built only with the sizing of an input "long enough": n_ctx = max(window or chunk, -c)
// and par = min(requested, 256) (PplSizing at n = infinity). Both parts of ppl_sizing are non-decreasing
// in n and bounded by that sizing (n_ctx = max(min(len, n), -c); the plans' window counts grow with n, and
// par_req depends on n only through n_ctx), so once some n_lo gets it, every n >= n_lo does. n_lo is a
// guess, text bytes / kBytesPerTokenGuess (WikiText-2 test: 3.2 bytes per token with the default model's
// sentencepiece, 4.5 with Llama-3's); it is not a bound: a text whose tokens average more bytes, fewer than
// n_lo of them, may end up with a smaller sizing, and then the model is loaded again with it (see
// run_perplexity). The model that scores is thus always built with exactly the options the sequential order
// (tokenize, plan, load) gives it: n_ctx reaches the backend (rope tables, block-table stride), so a larger
// one is not obviously harmless to bit-identical results.
// (An upper bound such as bytes + BOS would not do either: normalizers (NFKC, Prepend, Replace) and the
// post-processor's template can give more tokens than bytes, and sizing from an upper bound over-allocates
// for short texts.) Below n_lo of about one window (plus par-1 strides, or par chunks) the input is
// tokenized first, as before: that is well under 100 ms of tokenization.
constexpr int64_t kBytesPerTokenGuess = 16;

std::optional<PplSizing> overlap_sizing(const PerplexityArgs& a, const PplParams& p, int64_t text_bytes) {
  const bool chunked = p.recipe == PplParams::Recipe::Chunk;
  const int64_t len = chunked ? p.chunk : p.window;
  // -c shorter than a window fails for every input of >= len tokens: check it after tokenizing, before loading.
  if (a.m.ctx > 0 && a.m.ctx < len) return std::nullopt;
  const PplSizing full = ppl_sizing(a, p, len, 256);  // n >= len: need = len; >= 256 windows: the cap
  const int64_t n_lo = text_bytes / kBytesPerTokenGuess;
  if (n_lo < std::max<int64_t>(len, 2)) return std::nullopt;
  // The window count at n_lo, or at a length where it already exceeds the cap of 256 (a small plan).
  const int64_t step = chunked ? p.chunk : p.stride;
  const int64_t n_probe = std::min<int64_t>(n_lo, len + 256 * step);
  const int64_t windows = int64_t(chunked ? plan_chunks(n_probe, p.chunk).size()
                                          : plan_sliding(n_probe, p.window, p.stride).size());
  const PplSizing lo = ppl_sizing(a, p, n_lo, windows);
  if (lo.n_ctx != full.n_ctx || lo.par != full.par) return std::nullopt;
  return full;
}

struct Tokenized {
  std::vector<int32_t> ids;
  std::optional<int32_t> bos;
  std::chrono::steady_clock::time_point done;
};

Tokenized tokenize_text(const std::filesystem::path& dir, const std::string& text, bool no_bos) {
  Tokenized t;
  auto tok = Tokenizer::from_dir(dir);
  EncodeOptions eo;
  eo.add_bos = !no_bos;
  t.ids = tok->encode(text, eo);
  t.bos = tok->bos_id();
  t.done = std::chrono::steady_clock::now();
  return t;
}

void run_perplexity(const PerplexityArgs& a) {
  if (a.file.empty() == a.ids_file.empty()) fail("perplexity: give exactly one of -f/--file or --ids-file");
  const bool chunked = a.chunk_opt->count() > 0;
  if (chunked && (a.window_opt->count() > 0 || a.stride_opt->count() > 0))
    fail("--chunk {} is a recipe of its own; it does not take --window/--stride", a.chunk);
  if (a.parallel < 0) fail("--parallel {}: expected >= 0 (0: automatic)", a.parallel);

  PplParams p;
  p.recipe = chunked ? PplParams::Recipe::Chunk : PplParams::Recipe::Sliding;
  p.window = a.window;
  p.stride = a.stride;
  p.chunk = a.chunk;
  p.paper_formula = a.paper;
  if (chunked && a.paper) fail("--paper-formula applies to the sliding-window recipe, not --chunk");
  // Check the flags before the (slow) tokenization and load; the plans throw on bad values.
  if (chunked) {
    (void)plan_chunks(std::max(a.chunk, 2), a.chunk);
  } else {
    (void)plan_sliding(2, a.window, a.stride);
  }

  // ---- tokens (and, for a long enough text, the model at the same time) --------------------------------
  const auto dir = resolve_model_dir(a.m.model);
  const auto t_tok = std::chrono::steady_clock::now();
  std::vector<int32_t> ids;
  std::optional<int32_t> bos;
  double tok_seconds = 0;
  std::optional<Loaded> early;   // loaded while the text was tokenized
  std::optional<PplSizing> early_sizing;
  std::exception_ptr load_error;  // of that load: reported after the errors of the tokens, as before
  int64_t text_bytes = 0;
  if (!a.file.empty()) {
    const std::string text = read_all(a.file, "-f");
    text_bytes = int64_t(text.size());
    early_sizing = overlap_sizing(a, p, text_bytes);
    Tokenized t;
    if (early_sizing) {
      spdlog::debug("perplexity: tokenizing {} bytes while loading the model (context {} x {} sequence(s))",
                    text_bytes, early_sizing->n_ctx, early_sizing->par);
      std::future<Tokenized> fut = std::async(std::launch::async, tokenize_text, std::cref(dir), std::cref(text), a.no_bos);
      try {
        early = load_model(a.m, model_options(*early_sizing), TokenizerUse::None);
      } catch (...) {
        load_error = std::current_exception();
      }
      t = fut.get();  // waits for the tokenizer; rethrows its error (which comes first, as in the sequential order)
    } else {
      t = tokenize_text(dir, text, a.no_bos);
    }
    ids = std::move(t.ids);
    bos = t.bos;
    tok_seconds = std::chrono::duration<double>(t.done - t_tok).count();
  } else {
    ids = parse_id_list(read_all(a.ids_file, "--ids-file"), "--ids-file " + a.ids_file);
    bos = parse_config(dir / "config.json").bos_token_id;
    tok_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_tok).count();
  }
  const int64_t n = int64_t(ids.size());
  if (n < 2)
    fail("{} {}: {} token{}; perplexity needs at least 2", a.file.empty() ? "--ids-file" : "-f",
         a.file.empty() ? a.ids_file : a.file, n, n == 1 ? "" : "s");
  // llama.cpp puts BOS at every chunk start when its tokenizer adds BOS; here: when the input starts with it.
  if (chunked && bos && !a.no_bos && ids[0] == *bos) p.bos = bos;
  const std::vector<PplWindow> plan = chunked ? plan_chunks(n, a.chunk) : plan_sliding(n, a.window, a.stride);

  // ---- model -----------------------------------------------------------------------------------------
  const PplSizing sz = ppl_sizing(a, p, n, int64_t(plan.size()));
  if (a.m.ctx > 0 && a.m.ctx < sz.need)
    fail("-c/--ctx-size {} is shorter than a window of {} tokens ({}); expected >= {}", a.m.ctx, sz.need,
         chunked ? "--chunk" : "--window", sz.need);
  if (load_error) std::rethrow_exception(load_error);
  if (early && (early_sizing->n_ctx != sz.n_ctx || early_sizing->par != sz.par)) {
    // Fewer tokens than guessed (see overlap_sizing): load again with the sizing of the sequential order.
    spdlog::info("{} tokens from {} bytes of text: loading the model again for a context of {} x {} sequence(s)", n,
                 text_bytes, sz.n_ctx, sz.par);
    early.reset();  // frees its backend memory first
  }
  Loaded L = early ? std::move(*early) : load_model(a.m, model_options(sz), TokenizerUse::None);
  const int par = sz.par;
  p.ignore_ids = L.ckpt->config.eos_token_ids;
  p.max_parallel = par;

  const std::string recipe_desc =
      chunked ? fmt::format("chunks of {} (llama.cpp), second halves scored", a.chunk)
              : fmt::format("sliding window {}, stride {} (Hugging Face's guide)", a.window, a.stride);
  spdlog::info("{} tokens ({:.2f} s to tokenize) | {} | {} windows, {} per batch, -b {} | {}", n, tok_seconds,
               recipe_desc, plan.size(), par, a.m.batch, L.backend->name());

  ProgressBar bar;
  // --profile: the backend times every op of the second forward call (the first also sizes buffers).
  int64_t fed_before = 0;
  int calls_seen = 0;
  std::vector<OpTiming> profile;
  p.progress = [&](const ScoreProgress& sp) {
    if (a.profile && sp.tokens_done != fed_before) {  // a forward call ended
      fed_before = sp.tokens_done;
      if (++calls_seen == 1) {
        L.backend->set_profiling(true);
      } else if (calls_seen == 2) {
        L.backend->set_profiling(false);
        profile = L.backend->take_profile();
      }
    }
    bar.update(sp);
  };
  const auto t0 = std::chrono::steady_clock::now();
  const PplResult r = compute_perplexity(*L.model, ids, p);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  bar.finish();
  if (a.profile) {
    L.backend->set_profiling(false);
    double total_us = 0;
    const nlohmann::json rows = aggregate_ops(profile, 1, &total_us);
    if (rows.empty())
      spdlog::warn("--profile: no op timings ({} forward call(s); the second is profiled, on a GPU backend)",
                   calls_seen);
    else
      fmt::print(stderr, "{}", format_breakdown("one forward call (the second), op by op (each op timed alone)", rows,
                                                total_us));
  }
  const double tps = secs > 0 ? double(r.tokens_fed) / secs : 0.0;

  if (a.json) {
    nlohmann::json j;
    j["ppl"] = r.ppl;
    j["nll"] = r.nll;
    j["nll_stderr"] = r.nll_stderr;  // NaN -> null
    j["ppl_ci95"] = {r.ppl_lo, r.ppl_hi};
    j["scored"] = r.scored;
    j["tokens"] = r.n_tokens;
    j["windows"] = r.windows.size();
    j["recipe"] = r.recipe;
    if (chunked) {
      j["chunk"] = a.chunk;
      j["window"] = a.chunk;
      j["stride"] = a.chunk;
    } else {
      j["window"] = a.window;
      j["stride"] = a.stride;
    }
    j["seconds"] = secs;
    j["tokens_fed"] = r.tokens_fed;
    j["tokens_per_second"] = tps;
    j["load_seconds"] = L.load_seconds;
    j["tokenize_seconds"] = tok_seconds;
    j["device"] = L.backend->name();
    j["parallel"] = par;
    j["batch"] = a.m.batch;
    if (r.has_paper) {
      j["paper"] = {{"ppl", r.paper_ppl},
                    {"sum", r.paper_sum},
                    {"divisor", r.paper_divisor},
                    {"windows", r.paper_windows},
                    {"extra_windows", r.paper_extra_windows}};
    }
    nlohmann::json pw = nlohmann::json::array();
    for (const PplWindowResult& w : r.windows) pw.push_back({{"start", w.start}, {"scored", w.scored}, {"nll_sum", w.nll_sum}});
    j["per_window"] = std::move(pw);
    fmt::print("{}\n", j.dump());
    spdlog::debug("perplexity: results written (the model and backend are freed next)");
    return;
  }
  fmt::print("perplexity  {:.4f}  (95% interval {:.4f} .. {:.4f}; +/- {:.4f} as llama.cpp prints it)\n", r.ppl,
             r.ppl_lo, r.ppl_hi, std::isfinite(r.nll_stderr) ? r.ppl * r.nll_stderr : 0.0);
  fmt::print("nll         {:.6f} +/- {:.6f} nats per token over {} scored tokens\n", r.nll, r.nll_stderr, r.scored);
  fmt::print("recipe      {}: {} windows\n", recipe_desc, r.windows.size());
  if (r.has_paper)
    fmt::print("paper       {:.4f}  (test_ppl.py: exp(sum(loss_i * {}) / {}) over {} windows; {} extra windows run)\n",
               r.paper_ppl, a.stride, r.paper_divisor, r.paper_windows, r.paper_extra_windows);
  fmt::print("tokens      {} in the input, {} run through the model in {:.2f} s ({:.1f} tok/s) [{}]\n", r.n_tokens,
             r.tokens_fed, secs, tps, L.backend->name());
  spdlog::debug("perplexity: results written (the model and backend are freed next)");
}

}  // namespace

void register_perplexity_command(CLI::App& app) {
  auto a = std::make_shared<PerplexityArgs>();
  CLI::App* sub = app.add_subcommand("perplexity", "perplexity of a text file (sliding window, chunks, paper formula)");
  sub->footer(kHelp);
  // -b defaults to a whole default window per forward call (the other commands: 512). With 512, each 4,096-token
  // window ran as 8 chunks: WikiText-2 on the H100 took 10.3 s instead of 4.7 s (CPU, the 2-layer test model: 0.62 s
  // either way, same result).
  a->m.batch = 4096;
  add_model_args(sub, a->m);
  sub->add_option("-f,--file", a->file, "text file, tokenized once with the checkpoint's tokenizer");
  sub->add_option("--ids-file", a->ids_file, "file of token ids to score as given (comma/space/newline separated)");
  a->window_opt = sub->add_option("--window", a->window, "sliding recipe: tokens per window")->capture_default_str();
  a->stride_opt = sub->add_option("--stride", a->stride, "sliding recipe: tokens between window starts")->capture_default_str();
  a->chunk_opt = sub->add_option("--chunk", a->chunk, "llama.cpp's recipe: non-overlapping chunks of N tokens");
  sub->add_flag("--paper-formula", a->paper, "also print the number as the RoPE++ paper's test_ppl.py computes it");
  sub->add_option("--parallel", a->parallel, "windows per forward batch (0: as many as fit in -b tokens)")
      ->capture_default_str();
  sub->add_flag("--profile", a->profile,
                "print the GPU time of every op of one forward call (the second) on stderr, as bench's breakdown");
  sub->add_flag("--no-bos", a->no_bos, "do not add BOS when tokenizing (and no BOS at chunk starts)");
  sub->add_flag("--json", a->json,
                "print one JSON object: ppl, nll, nll_stderr, scored, windows, recipe, window, stride, seconds, "
                "tokens_per_second, per_window [{start, scored, nll_sum}], paper");
  sub->callback([a] { run_perplexity(*a); });
}

}  // namespace ropepp::cli
