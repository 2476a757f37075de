// sampling_args.h: the sampling flags shared by `generate` and `chat`.
#pragma once

#include <CLI/CLI.hpp>

#include "sampler.h"

namespace ropepp::cli {

struct SamplingArgs {
  SamplerParams p;
  int64_t seed = -1;  // -1: a random seed (printed in the stats)
  SamplerParams resolve() const;  // validated; seed drawn when -1
};

void add_sampling_args(CLI::App* sub, SamplingArgs& s);

}  // namespace ropepp::cli
