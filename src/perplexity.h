// perplexity.h: perplexity of a token sequence under the model — the window plans of the three recipes
// and the scorer that runs them through Model::forward_nll (the logits never leave the backend).
//
// Recipes (n = number of tokens, W = window, S = stride, C = chunk):
//   sliding  Hugging Face's perplexity guide: windows [k·S, min(k·S+W, n)) for k = 0, 1, … until a window
//            reaches the end; each window scores only the targets the previous window did not score
//            ([prev_end, end); the first window scores all its tokens from the second on), so every token
//            from the second on is scored exactly once, with the tokens of its window before it as context.
//            (With W == S a window's first token has no context inside its window and is not scored,
//            exactly as in the guide.) ppl = exp(mean NLL over the scored tokens).
//   paper    the windows of the RoPE++ paper's test_ppl.py: for i = 0, S, 2S, … < n the window
//            [max(i+S-W, 0), min(i+S, n)) is labelled on its last S tokens (all of them when it is shorter
//            than S+1); its loss is the mean NLL over the labelled targets whose id is not the ignore
//            index (the script sets ignore_index = eos_token_id); the number is
//            exp(Σ_windows loss·S / i_last), i_last the last i (not the number of scored tokens).
//   chunk    llama.cpp's `perplexity`: floor(n / C) non-overlapping chunks [k·C, (k+1)·C), the first token
//            of each replaced by BOS when the sequence starts with BOS; targets C/2+1 .. C-1 of each chunk
//            are scored (C - 1 - C/2 per chunk); the tail shorter than a chunk is dropped.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ropepp {

class Model;

// One window: ids[begin, end) are fed from an empty cache sequence (position 0 = ids[begin]); every target
// t in [first_target, end) is scored from the row of token t-1, i.e. with the context ids[begin, t).
// Only ids[begin, end-1) are actually fed (the last token has no target). first_target == end: no targets.
struct PplWindow {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t first_target = 0;  // begin < first_target <= end
  bool bos_first = false;    // feed the BOS id in place of ids[begin] (llama.cpp's chunks)
};

// The plans of the recipes above. Throw Error (naming --window/--stride/--chunk) on bad parameters or
// when the sequence is too short to score anything.
std::vector<PplWindow> plan_sliding(int64_t n_tokens, int window, int stride);
std::vector<PplWindow> plan_paper(int64_t n_tokens, int window, int stride);  // may hold windows without targets
std::vector<PplWindow> plan_chunks(int64_t n_tokens, int chunk);

struct ScoreProgress {
  int64_t tokens_done = 0;   // tokens fed so far
  int64_t tokens_total = 0;  // tokens the plan feeds
  int windows_done = 0;
  int windows_total = 0;
};

struct ScoreOptions {
  // Windows run concurrently as separate cache sequences of one forward batch (capped by the model's
  // ModelOptions.max_seqs). Every forward call holds at most the model's max_batch_tokens tokens.
  int max_parallel = 1;
  std::optional<int32_t> bos;                             // the id fed for bos_first windows
  std::function<void(const ScoreProgress&)> progress;     // after every forward call
};

// NLL (natural log) of every target of every window: result[w][t - windows[w].first_target].
// Uses cache sequences of its own (added and removed here); the model's cache must have them free.
std::vector<std::vector<float>> score_windows(Model& model, std::span<const int32_t> ids,
                                              std::span<const PplWindow> windows, const ScoreOptions& opt = {});

struct PplParams {
  enum class Recipe { Sliding, Chunk } recipe = Recipe::Sliding;
  int window = 4096;
  int stride = 512;
  int chunk = 512;
  bool paper_formula = false;          // also compute the paper's number (sliding only)
  std::vector<int32_t> ignore_ids;     // the paper formula's ignore_index (the config's eos ids)
  std::optional<int32_t> bos;          // chunk recipe: BOS fed at every chunk start (nullopt: none)
  int max_parallel = 1;
  std::function<void(const ScoreProgress&)> progress;
};

struct PplWindowResult {
  int64_t start = 0;    // first token of the window
  int64_t scored = 0;   // targets scored
  double nll_sum = 0;   // their NLL sum (nats)
};

struct PplResult {
  std::string recipe;            // "sliding" | "chunk"
  int64_t n_tokens = 0;          // tokens of the input
  int64_t scored = 0;            // targets scored
  double nll = 0;                // mean NLL per scored token (nats)
  double nll_stderr = 0;         // standard error of that mean (NaN when scored < 2)
  double ppl = 0;                // exp(nll)
  double ppl_lo = 0, ppl_hi = 0; // exp(nll ∓ 1.96·stderr): the 95% interval
  std::vector<PplWindowResult> windows;
  int64_t tokens_fed = 0;        // tokens run through the model (incl. the paper formula's extra windows)
  // --paper-formula
  bool has_paper = false;
  double paper_ppl = 0;          // exp(paper_sum / paper_divisor); inf/NaN exactly where the script's are
  double paper_sum = 0;          // Σ loss_k · stride
  int64_t paper_divisor = 0;     // the last window's i
  int paper_windows = 0;
  int paper_extra_windows = 0;   // windows run only for the paper formula (contexts the sliding plan lacks)
};

// The context (KV positions per sequence) the plan needs: its longest window.
int64_t ppl_context_needed(const PplParams& p, int64_t n_tokens);

// Runs the recipe over ids. Throws Error on bad parameters, ids outside the vocabulary, or a model whose
// context is shorter than ppl_context_needed().
PplResult compute_perplexity(Model& model, std::span<const int32_t> ids, const PplParams& p);

}  // namespace ropepp
