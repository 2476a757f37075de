// sampling_args.cpp: see sampling_args.h.
#include "sampling_args.h"

#include <random>

namespace ropepp::cli {

void add_sampling_args(CLI::App* sub, SamplingArgs& s) {
  sub->add_option("--temp", s.p.temp, "temperature (0: greedy, deterministic)")->capture_default_str();
  sub->add_option("--top-k", s.p.top_k, "keep the k most likely tokens (0: off)")->capture_default_str();
  sub->add_option("--top-p", s.p.top_p, "nucleus sampling: keep the smallest set with this mass, in (0, 1]")->capture_default_str();
  sub->add_option("--min-p", s.p.min_p, "keep tokens with p ≥ min-p · p(best) (0: off)")->capture_default_str();
  sub->add_option("--repeat-penalty", s.p.repeat_penalty, "penalise the last --repeat-last-n tokens (1: off)")->capture_default_str();
  sub->add_option("--repeat-last-n", s.p.repeat_last_n, "tokens the repeat penalty looks back over")->capture_default_str();
  sub->add_option("-s,--seed", s.seed, "random seed (-1: random)")->capture_default_str();
}

SamplerParams SamplingArgs::resolve() const {
  SamplerParams r = p;
  r.seed = seed >= 0 ? uint64_t(seed) : uint64_t(std::random_device{}()) << 32 ^ std::random_device{}();
  r.validate();
  return r;
}

}  // namespace ropepp::cli
