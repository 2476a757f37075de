// generate.h: one conversation/sequence kept in the model's paged KV cache (Session) and the token
// generation loop shared by `ropepp generate` and `ropepp chat`: sampling, streaming detokenization,
// stop strings, EOS, context limits, interruption.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

namespace ropepp {

// A sequence in the model's KV cache together with the tokens it holds.
class Session {
 public:
  explicit Session(Model& m);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Appends ids to the cache; returns the logits of the last one [vocab]. On an Error the cache is
  // rolled back to what it held before the call.
  std::vector<float> feed(std::span<const int32_t> ids);
  // Like feed(), but returns the greedy next token (argmax over ids [0, vocab_limit), 0 = all) computed on
  // the backend: the logits never leave it.
  int32_t feed_argmax(std::span<const int32_t> ids, int vocab_limit = 0);
  // Greedy steps queued ahead (Model::forward_argmax_queued), so that the host's work per token overlaps the
  // backend's: queue_argmax feeds `token`, or with token < 0 the id that the previous queued step computes;
  // take_argmax waits for the oldest queued step and returns its id. tokens() holds a queued step's input as soon
  // as it is known (at once, or when the step before it is taken). settle(keep) waits for the queued steps,
  // forgets them, and keeps the first `keep` tokens (cache included). On an error queue_argmax settles at the
  // tokens held before it, take_argmax at the tokens known. steps > 1: one queued call of that many chained steps
  // (Model::forward_argmax_queued), whose ids take_argmax returns one by one.
  void queue_argmax(int32_t token, int vocab_limit = 0, int steps = 1);
  int32_t take_argmax();
  size_t queued() const { return queued_.size(); }  // queued calls (each of one or more steps)
  void settle(size_t keep);
  void truncate(size_t n_tokens);                 // forget everything after the first n_tokens
  const std::vector<int32_t>& tokens() const { return tokens_; }
  size_t n_ctx() const { return size_t(model_.options().n_ctx); }
  Model& model() { return model_; }

 private:
  Model& model_;
  int seq_;
  std::vector<int32_t> tokens_;  // [n] what the cache holds (queued steps: the inputs known so far)
  struct Queued {
    uint64_t ticket;
    std::unique_ptr<int32_t[]> ids;  // [steps] the steps' argmax ids once the ticket is waited for
    int steps = 1;
    int taken = 0;                   // ids returned by take_argmax so far
    bool input_known;                // its first step's input token is in tokens_
  };
  std::deque<Queued> queued_;  // oldest first
};

struct GenerateParams {
  int n_predict = 128;                 // maximum new tokens (-n); < 0: until EOS or the context is full
  std::vector<std::string> stop;       // stop strings: generation ends before the first occurrence
  bool stop_at_eos = true;
  SamplerParams sampling;
};

struct GenerateResult {
  std::vector<int32_t> tokens;         // generated ids (a stop string's tokens included)
  std::string text;                    // generated text, cut before a stop string
  std::string stop_reason;             // "eos" | "length" | "stop" | "context" | "interrupted"
  int prompt_tokens = 0;               // tokens fed before generating
  double prompt_seconds = 0;
  double gen_seconds = 0;
};

// Feeds `prompt` (may be empty when the session already ends with the last token) and generates.
// `on_text` receives text as soon as it is complete UTF-8 and cannot be the start of a stop string.
// `interrupt` (may be null) is polled between tokens.
GenerateResult generate(Session& s, const Tokenizer& tok, std::span<const int32_t> prompt, Sampler& sampler,
                        const GenerateParams& gp, const std::function<void(const std::string&)>& on_text,
                        const std::atomic<bool>* interrupt = nullptr);

}  // namespace ropepp
