// perplexity.cpp: see perplexity.h.
#include "perplexity.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "common.h"
#include "model.h"

namespace ropepp {

namespace {

constexpr int kMaxWindow = 65536;

void check_tokens(int64_t n_tokens, int64_t need) {
  if (n_tokens < need)
    fail("the input has {} token{}; perplexity needs at least {}", n_tokens, n_tokens == 1 ? "" : "s", need);
}

void check_window_stride(int window, int stride) {
  if (stride <= 0) fail("--stride {}: expected > 0", stride);
  if (window < 2 || window > kMaxWindow) fail("--window {}: expected 2 .. {}", window, kMaxWindow);
  if (window < stride) fail("--window {} is shorter than --stride {} (expected window >= stride)", window, stride);
}

}  // namespace

std::vector<PplWindow> plan_sliding(int64_t n_tokens, int window, int stride) {
  check_window_stride(window, stride);
  check_tokens(n_tokens, 2);
  std::vector<PplWindow> plan;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n_tokens; begin += stride) {
    const int64_t end = std::min<int64_t>(begin + window, n_tokens);
    const int64_t first = std::max(prev_end, begin + 1);
    if (first < end) plan.push_back({begin, end, first, false});  // (W == S: a 1-token last window has none)
    prev_end = end;
    if (end == n_tokens) break;
  }
  return plan;
}

std::vector<PplWindow> plan_paper(int64_t n_tokens, int window, int stride) {
  check_window_stride(window, stride);
  check_tokens(n_tokens, 2);
  std::vector<PplWindow> plan;
  for (int64_t i = 0; i < n_tokens; i += stride) {
    const int64_t begin = std::max<int64_t>(i + stride - window, 0);
    const int64_t end = std::min<int64_t>(i + stride, n_tokens);
    // labels[:, :-stride] = ignore: the last `stride` labels stay (all when the window is that short);
    // after the shift the window's first token is never a target.
    plan.push_back({begin, end, std::max(begin + 1, end - stride), false});
  }
  return plan;
}

std::vector<PplWindow> plan_chunks(int64_t n_tokens, int chunk) {
  if (chunk < 2 || chunk > kMaxWindow) fail("--chunk {}: expected 2 .. {}", chunk, kMaxWindow);
  if (n_tokens < chunk)
    fail("the input has {} tokens, fewer than one --chunk of {} (the chunk recipe drops the tail)", n_tokens, chunk);
  std::vector<PplWindow> plan;
  for (int64_t b = 0; b + chunk <= n_tokens; b += chunk) plan.push_back({b, b + chunk, b + chunk / 2 + 1, true});
  return plan;
}

// ---- the scorer ----------------------------------------------------------------------------------------

namespace {

// One forward call under construction: chunks of distinct sequences, ≤ max_batch_tokens tokens.
struct Call {
  std::vector<SeqChunk> chunks;
  std::vector<int32_t> targets;            // one per logits row
  std::vector<std::pair<int, int64_t>> dest;  // per row: (window, index in its result) or (-1, 0)
  int tokens = 0;
  void clear() {
    chunks.clear();
    targets.clear();
    dest.clear();
    tokens = 0;
  }
};

// Removes the sequences it added, also when scoring throws.
struct SeqGuard {
  KVCache& kv;
  std::vector<int> seqs;
  ~SeqGuard() {
    for (int s : seqs) kv.remove_sequence(s);
  }
};

}  // namespace

std::vector<std::vector<float>> score_windows(Model& model, std::span<const int32_t> ids,
                                              std::span<const PplWindow> windows, const ScoreOptions& opt) {
  const int64_t n = int64_t(ids.size());
  const int n_ctx = model.options().n_ctx;
  const int B = model.options().max_batch_tokens;
  ScoreProgress prog;
  prog.windows_total = int(windows.size());
  for (const PplWindow& w : windows) {
    if (!(0 <= w.begin && w.begin < w.first_target && w.first_target <= w.end && w.end <= n))
      fail("perplexity: bad window [{}, {}) first target {} for {} tokens", w.begin, w.end, w.first_target, n);
    if (w.end - w.begin > n_ctx)
      fail("perplexity: a window of {} tokens does not fit the context of {} (-c/--ctx-size)", w.end - w.begin, n_ctx);
    if (w.bos_first && !opt.bos) fail("perplexity: a window starts with BOS but the model has no BOS id");
    if (w.first_target < w.end) prog.tokens_total += w.end - 1 - w.begin;
  }
  std::vector<std::vector<float>> out(windows.size());
  for (size_t i = 0; i < windows.size(); ++i) out[i].assign(size_t(windows[i].end - windows[i].first_target), 0.f);

  // The windows that have targets, in order.
  std::vector<int> todo;
  for (size_t i = 0; i < windows.size(); ++i)
    if (windows[i].first_target < windows[i].end) todo.push_back(int(i));
    else ++prog.windows_done;

  KVCache& kv = model.cache();
  const int par = std::max(1, std::min<int>({opt.max_parallel, kv.max_seqs(), std::max<int>(1, int(todo.size()))}));
  SeqGuard guard{kv, {}};
  for (int i = 0; i < par && i < int(todo.size()); ++i) guard.seqs.push_back(kv.add_sequence());

  // Each call is queued before the previous one's NLLs are read, so the host builds call k + 1 while the
  // backend runs call k (Model::forward_nll_queued).
  Call call;
  struct Queued {
    Model& model;
    std::vector<std::pair<int, int64_t>> dest;  // as Call::dest
    std::vector<float> nll;                      // written by the queued download
    uint64_t ticket = 0;
    int tokens = 0;
    bool active = false;
    ~Queued() {  // unwinding: the download must not land in freed memory
      if (!active) return;
      try {
        model.wait(ticket);
      } catch (...) {
      }
    }
  } queued{model, {}, {}};
  // -v: whether the host or the backend bounds the scoring (time in queuing calls vs waiting for their results).
  using clock = std::chrono::steady_clock;
  clock::duration t_queue{}, t_wait{};
  const auto t_start = clock::now();
  auto deliver = [&] {
    if (!queued.active) return;
    const auto t0 = clock::now();
    model.wait(queued.ticket);
    t_wait += clock::now() - t0;
    queued.active = false;
    for (size_t r = 0; r < queued.nll.size(); ++r) {
      const auto [w, idx] = queued.dest[r];
      if (w < 0) continue;
      if (!std::isfinite(queued.nll[r]))
        fail("perplexity: non-finite NLL for token {} (broken weights?)", windows[size_t(w)].first_target + idx);
      out[size_t(w)][size_t(idx)] = queued.nll[r];
    }
    prog.tokens_done += queued.tokens;
    if (opt.progress) opt.progress(prog);
  };
  auto flush = [&] {
    if (call.chunks.empty()) return;
    std::vector<float> nll(call.targets.size());
    const auto t0 = clock::now();
    const uint64_t ticket = model.forward_nll_queued(call.chunks, call.targets, nll.data());
    t_queue += clock::now() - t0;
    try {
      deliver();  // the previous call's results while this one runs
    } catch (...) {
      model.wait(ticket);  // this call's download must not land in `nll` once it is gone
      throw;
    }
    queued.dest = std::move(call.dest);
    queued.nll = std::move(nll);  // the buffer moves with it: the queued download's destination stays valid
    queued.ticket = ticket;
    queued.tokens = call.tokens;
    queued.active = true;
    call.clear();
  };

  for (size_t g = 0; g < todo.size(); g += size_t(par)) {
    const size_t g_end = std::min(todo.size(), g + size_t(par));
    // Window tokens [begin, end-1) (BOS-substituted where asked); the spans below point into these.
    std::vector<std::vector<int32_t>> toks(g_end - g);
    for (size_t j = g; j < g_end; ++j) {
      const PplWindow& w = windows[size_t(todo[j])];
      auto& t = toks[j - g];
      t.assign(ids.begin() + w.begin, ids.begin() + (w.end - 1));
      if (w.bos_first) t[0] = *opt.bos;
      kv.truncate(guard.seqs[j - g], 0);
    }
    // One piece per window: tokens [begin, end-1) with logits from the row that predicts first_target on (a
    // window longer than a call is cut; each cut's last row has logits too, predicting a context token: dropped).
    // The whole window in one call rather than its context prefix and its scored rest in two: the rest alone
    // (e.g. 512 queries over 4k keys) is too small a launch to fill a GPU.
    for (size_t j = g; j < g_end; ++j) {
      const int wi = todo[j];
      const PplWindow& w = windows[size_t(wi)];
      const int seq = guard.seqs[j - g];
      const int64_t n_win = w.end - 1 - w.begin, first_logit = w.first_target - w.begin - 1;
      for (int64_t off = 0; off < n_win;) {
        if (call.tokens == B) flush();  // a window's pieces follow each other: a cut means a full call
        const int64_t take = std::min<int64_t>(B - call.tokens, n_win - off);
        SeqChunk chunk{seq, std::span<const int32_t>(toks[j - g]).subspan(size_t(off), size_t(take)), false};
        if (first_logit < off + take) chunk.logits_from = int(std::max<int64_t>(0, first_logit - off));
        call.chunks.push_back(chunk);
        for (int64_t p = std::min(std::max(off, first_logit), off + take - 1); p < off + take; ++p) {
          const int64_t t = w.begin + p + 1;  // the target this row predicts
          call.targets.push_back(ids[size_t(t)]);
          call.dest.emplace_back(t >= w.first_target ? wi : -1, t - w.first_target);
        }
        call.tokens += int(take);
        off += take;
      }
    }
    flush();
    prog.windows_done += int(g_end - g);
  }
  deliver();
  const auto secs = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
  spdlog::debug("perplexity: {:.3f} s scoring: {:.3f} s queuing forward calls (host), {:.3f} s waiting for results",
                secs(clock::now() - t_start), secs(t_queue), secs(t_wait));
  return out;
}

// ---- the recipes ---------------------------------------------------------------------------------------

int64_t ppl_context_needed(const PplParams& p, int64_t n_tokens) {
  const int64_t len = p.recipe == PplParams::Recipe::Chunk ? p.chunk : p.window;
  return std::max<int64_t>(1, std::min(len, n_tokens));
}

PplResult compute_perplexity(Model& model, std::span<const int32_t> ids, const PplParams& p) {
  const int64_t n = int64_t(ids.size());
  const int64_t V = model.config().vocab_size;
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= V) fail("token id {} at position {} is outside the vocabulary [0, {})", ids[i], i, V);
  const bool chunk = p.recipe == PplParams::Recipe::Chunk;
  if (chunk && p.paper_formula) fail("--paper-formula applies to the sliding-window recipe, not --chunk");
  const std::vector<PplWindow> plan = chunk ? plan_chunks(n, p.chunk) : plan_sliding(n, p.window, p.stride);
  std::vector<PplWindow> plan_c = plan;
  if (chunk && !p.bos)
    for (PplWindow& w : plan_c) w.bos_first = false;
  if (const int64_t need = ppl_context_needed(p, n); need > model.options().n_ctx)
    fail("perplexity: windows of {} tokens need a context of {}, the model has {} (-c/--ctx-size)", need, need,
         model.options().n_ctx);

  // The paper's windows: most (begin, target) pairs are the sliding plan's (identical when W % S == 0,
  // except near the end); only the others are run, as extra windows.
  std::vector<PplWindow> paper, extra;
  std::vector<int> extra_of;    // paper window -> index in `extra` (-1: none)
  std::vector<int64_t> ctx_of;  // sliding plan: the window begin each target was scored with (-1: none)
  if (p.paper_formula) {
    paper = plan_paper(n, p.window, p.stride);
    ctx_of.assign(size_t(n), -1);
    for (const PplWindow& w : plan)
      for (int64_t t = w.first_target; t < w.end; ++t) ctx_of[size_t(t)] = w.begin;
    for (const PplWindow& w : paper) {
      int64_t lo = -1, hi = -1;
      for (int64_t t = w.first_target; t < w.end; ++t)
        if (ctx_of[size_t(t)] != w.begin) {
          if (lo < 0) lo = t;
          hi = t;
        }
      extra_of.push_back(lo >= 0 ? int(extra.size()) : -1);
      if (lo >= 0) extra.push_back({w.begin, hi + 1, lo, false});
    }
  }
  std::vector<PplWindow> all = plan_c;
  all.insert(all.end(), extra.begin(), extra.end());

  ScoreOptions so;
  so.max_parallel = p.max_parallel;
  so.bos = p.bos;
  so.progress = p.progress;
  const std::vector<std::vector<float>> nll = score_windows(model, ids, all, so);

  PplResult r;
  r.recipe = chunk ? "chunk" : "sliding";
  r.n_tokens = n;
  for (const PplWindow& w : all)
    if (w.first_target < w.end) r.tokens_fed += w.end - 1 - w.begin;
  std::vector<double> x;
  for (size_t i = 0; i < plan.size(); ++i) {
    PplWindowResult wr{plan[i].begin, int64_t(nll[i].size()), 0.0};
    for (float v : nll[i]) {
      wr.nll_sum += v;
      x.push_back(v);
    }
    r.windows.push_back(wr);
  }
  r.scored = int64_t(x.size());
  double sum = 0;
  for (double v : x) sum += v;
  r.nll = sum / double(x.size());
  double ss = 0;
  for (double v : x) ss += (v - r.nll) * (v - r.nll);
  r.nll_stderr = x.size() >= 2 ? std::sqrt(ss / double(x.size() - 1) / double(x.size()))
                               : std::numeric_limits<double>::quiet_NaN();
  r.ppl = std::exp(r.nll);
  const double half = std::isfinite(r.nll_stderr) ? 1.96 * r.nll_stderr : 0.0;
  r.ppl_lo = std::exp(r.nll - half);
  r.ppl_hi = std::exp(r.nll + half);

  if (p.paper_formula) {
    // NLL of target t with context begin b: the sliding plan's where it has that context, else the extra's.
    std::vector<float> by_t(size_t(n), 0.f);
    for (size_t i = 0; i < plan.size(); ++i)
      for (size_t k = 0; k < nll[i].size(); ++k) by_t[size_t(plan[i].first_target) + k] = nll[i][k];
    for (size_t k = 0; k < paper.size(); ++k) {
      const PplWindow& w = paper[k];
      const size_t e = extra_of[k] < 0 ? 0 : plan.size() + size_t(extra_of[k]);
      const std::vector<float>* ex = extra_of[k] < 0 ? nullptr : &nll[e];
      const int64_t ex_first = ex ? all[e].first_target : 0, ex_end = ex ? all[e].end : 0;
      double s = 0;
      int64_t cnt = 0;
      for (int64_t t = w.first_target; t < w.end; ++t) {
        if (std::find(p.ignore_ids.begin(), p.ignore_ids.end(), ids[size_t(t)]) != p.ignore_ids.end()) continue;
        const bool from_extra = ctx_of[size_t(t)] != w.begin;
        if (from_extra && !(ex && t >= ex_first && t < ex_end)) fail("perplexity: internal error (paper target {})", t);
        s += from_extra ? (*ex)[size_t(t - ex_first)] : by_t[size_t(t)];
        ++cnt;
      }
      const double loss = cnt ? s / double(cnt) : std::numeric_limits<double>::quiet_NaN();  // torch: 0/0
      r.paper_sum += loss * double(p.stride);
    }
    r.has_paper = true;
    r.paper_windows = int(paper.size());
    r.paper_extra_windows = int(extra.size());
    r.paper_divisor = (int64_t(paper.size()) - 1) * p.stride;
    r.paper_ppl = std::exp(r.paper_sum / double(r.paper_divisor));  // divisor 0: inf (or NaN), as in torch
  }
  return r;
}

}  // namespace ropepp
