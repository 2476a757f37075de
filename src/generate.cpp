// generate.cpp: see generate.h.
#include "generate.h"

#include <algorithm>
#include <chrono>

namespace ropepp {

Session::Session(Model& m) : model_(m), seq_(m.cache().add_sequence()) {}
Session::~Session() {
  settle(tokens_.size());  // the queued steps' downloads write into queued_'s ids
  model_.cache().remove_sequence(seq_);
}

std::vector<float> Session::feed(std::span<const int32_t> ids) {
  if (!queued_.empty()) settle(tokens_.size());
  const size_t before = tokens_.size();
  SeqChunk c{seq_, ids, false};
  try {
    auto logits = model_.forward(std::span(&c, 1));
    tokens_.insert(tokens_.end(), ids.begin(), ids.end());
    return logits;
  } catch (...) {
    model_.cache().truncate(seq_, int(before));
    throw;
  }
}

int32_t Session::feed_argmax(std::span<const int32_t> ids, int vocab_limit) {
  if (!queued_.empty()) settle(tokens_.size());
  const size_t before = tokens_.size();
  SeqChunk c{seq_, ids, false};
  try {
    const int32_t next = model_.forward_argmax(std::span(&c, 1), vocab_limit).at(0);
    tokens_.insert(tokens_.end(), ids.begin(), ids.end());
    return next;
  } catch (...) {
    model_.cache().truncate(seq_, int(before));
    throw;
  }
}

void Session::queue_argmax(int32_t token, int vocab_limit, int steps) {
  const size_t before = tokens_.size();
  auto ids = std::make_unique<int32_t[]>(size_t(std::max(steps, 1)));
  try {
    const uint64_t ticket = model_.forward_argmax_queued(seq_, token, ids.get(), vocab_limit, steps);
    Queued q;
    q.ticket = ticket;
    q.ids = std::move(ids);
    q.steps = steps;
    q.input_known = token >= 0;
    queued_.push_back(std::move(q));
    if (token >= 0) tokens_.push_back(token);
  } catch (...) {
    settle(before);
    throw;
  }
}

int32_t Session::take_argmax() {
  if (queued_.empty()) fail("take_argmax: no queued step");
  Queued& q = queued_.front();
  try {
    model_.wait(q.ticket);  // returns at once for a call whose ids were already read
  } catch (...) {
    settle(tokens_.size());
    throw;
  }
  const int32_t id = q.ids[size_t(q.taken++)];
  if (q.taken < q.steps) {  // the input of the call's next step
    tokens_.push_back(id);
    return id;
  }
  queued_.pop_front();
  if (!queued_.empty() && !queued_.front().input_known) {  // the next call's first input was this id
    tokens_.push_back(id);
    queued_.front().input_known = true;
  }
  return id;
}

void Session::settle(size_t keep) {
  for (Queued& q : queued_) {
    try {
      model_.wait(q.ticket);
    } catch (...) {  // the step's error was reported where it ran; its input is dropped below
    }
  }
  queued_.clear();
  // The cache may hold rows of steps whose inputs were never read back: keep only the known ones.
  model_.cache().truncate(seq_, int(std::min(keep, tokens_.size())));
  if (keep < tokens_.size()) tokens_.resize(keep);
}

void Session::truncate(size_t n) {
  if (!queued_.empty()) settle(tokens_.size());
  if (n >= tokens_.size()) return;
  model_.cache().truncate(seq_, int(n));
  tokens_.resize(n);
}

namespace {

// Length of the longest suffix of `text` that is a proper prefix of some stop string (held back).
size_t held_back(const std::string& text, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const std::string& s : stops) {
    for (size_t len = std::min(s.size() - 1, text.size()); len > best; --len) {
      if (text.compare(text.size() - len, len, s, 0, len) == 0) {
        best = len;
        break;
      }
    }
  }
  return best;
}

}  // namespace

GenerateResult generate(Session& s, const Tokenizer& tok, std::span<const int32_t> prompt, Sampler& sampler,
                        const GenerateParams& gp, const std::function<void(const std::string&)>& on_text,
                        const std::atomic<bool>* interrupt) {
  using clock = std::chrono::steady_clock;
  GenerateResult r;
  r.prompt_tokens = int(prompt.size());
  if (prompt.empty() && s.tokens().empty()) fail("generate: the prompt has no tokens");
  if (s.tokens().size() + prompt.size() > s.n_ctx())
    fail("the prompt ({} tokens, {} already in context) does not fit the context of {} tokens (-c/--ctx-size)",
         prompt.size(), s.tokens().size(), s.n_ctx());
  const auto t0 = clock::now();
  // Greedy sampling without a repetition penalty needs only the argmax: computed on the backend, so the
  // logits never leave it (on a GPU the host does not wait for a 0.5 MB copy per token).
  const SamplerParams& sp = sampler.params();
  const bool backend_greedy = sp.temp <= 0 && (sp.repeat_penalty == 1.0f || sp.repeat_last_n <= 0);
  // Only ids the tokenizer can render: a model's vocab_size may exceed the tokenizer's (padded embedding rows).
  const int n_ids = int(std::min<int64_t>(s.model().config().vocab_size, tok.vocab_size()));
  auto next_after = [&](std::span<const int32_t> ids) -> int32_t {
    if (backend_greedy) return s.feed_argmax(ids, n_ids);
    const std::vector<float> logits = s.feed(ids);
    return sampler.sample(std::span<const float>(logits).first(size_t(n_ids)), s.tokens());
  };
  int32_t next = 0;
  if (!prompt.empty()) {
    next = next_after(prompt);
  } else {
    // Re-feed the last token to get its logits.
    const int32_t last = s.tokens().back();
    s.truncate(s.tokens().size() - 1);
    next = next_after(std::span(&last, 1));
  }
  const auto t1 = clock::now();
  r.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();

  // Token i of the loop is fed (its K/V appended) before token i + 1 is produced. With the backend's argmax
  // that step runs one ahead: the step whose input is token i + 1 (read on the backend) is queued before token i
  // is handled, so the device never waits for the host between tokens. A queued step that turns out not to be
  // needed (EOS, a stop string, the length) is dropped when the loop ends: settle() keeps `fed` tokens.
  const size_t base = s.tokens().size();  // the prompt (and what came before it)
  size_t fed = base;                      // tokens the session keeps: base + the generated ones fed
  const bool ahead = backend_greedy;
  auto may_feed = [&](int i) { return base + size_t(i) + 1 <= s.n_ctx() && (gp.n_predict < 0 || i < gp.n_predict); };
  struct Settle {  // also on an exception: no queued step outlives the loop
    Session& s;
    const size_t& fed;
    bool on;
    ~Settle() {
      if (!on || s.queued() == 0) return;
      try {
        s.settle(fed);
      } catch (...) {
      }
    }
  } settle{s, fed, ahead};
  // Steps are queued ModelOptions::greedy_steps at a time (chained in one call), never past what may be fed;
  // fed_hi: the last token index the queued steps feed.
  const int max_steps = s.model().greedy_steps();
  int fed_hi = -1;
  auto queue_from = [&](int first, int32_t token) {
    int k = 1;
    while (k < max_steps && may_feed(first + k)) ++k;
    s.queue_argmax(token, n_ids, k);
    fed_hi = first + k - 1;
  };
  if (ahead && may_feed(0)) queue_from(0, next);  // the steps that feed token 0 (and on)

  StreamingDetokenizer detok(tok, /*skip_special=*/true);
  std::string pending;  // decoded text not yet handed to on_text
  auto emit = [&](size_t n) {
    if (n == 0) return;
    const std::string out = pending.substr(0, n);
    r.text += out;
    pending.erase(0, n);
    if (on_text) on_text(out);
  };
  r.stop_reason = "length";
  for (int i = 0; gp.n_predict < 0 || i < gp.n_predict; ++i) {
    // Queued now: the steps that feed tokens i .. fed_hi. When they are one call, queue the next.
    if (ahead && s.queued() == 1 && may_feed(fed_hi + 1)) queue_from(fed_hi + 1, -1);
    if (interrupt && interrupt->load()) {
      r.stop_reason = "interrupted";
      break;
    }
    r.tokens.push_back(next);
    if (gp.stop_at_eos && tok.is_eos(next)) {
      r.stop_reason = "eos";
      break;
    }
    pending += detok.push(next);
    bool stopped = false;
    for (const std::string& st : gp.stop) {
      const size_t at = st.empty() ? std::string::npos : pending.find(st);
      if (at != std::string::npos) {
        emit(at);
        pending.clear();
        stopped = true;
      }
    }
    if (stopped) {
      r.stop_reason = "stop";
      // Keep the cache consistent with the tokens we report: feed the last one unless its step is queued.
      if (!ahead || s.queued() == 0) s.feed(std::span(&next, 1));
      fed = base + size_t(i) + 1;
      break;
    }
    emit(pending.size() - held_back(pending, gp.stop));
    if (base + size_t(i) + 1 > s.n_ctx()) {
      r.stop_reason = "context";
      break;
    }
    next = ahead ? s.take_argmax() : next_after(std::span(&next, 1));
    fed = base + size_t(i) + 1;
  }
  if (ahead) {
    s.settle(fed);
    settle.on = false;
  }
  if (r.stop_reason != "stop") {
    pending += detok.flush();
    emit(pending.size());
  }
  r.gen_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return r;
}

}  // namespace ropepp
