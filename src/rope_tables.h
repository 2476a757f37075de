// rope_tables.h: rotary inverse frequencies (θ, linear PI, the paper's YaRN) and cos/sin tables.
// Computed in double and rounded once to float, so that long positions (64k) keep full accuracy.
#pragma once

#include <vector>

#include "config.h"

namespace ropepp {

struct RopeTables {
  int head_dim = 0;
  int n_pos = 0;             // rows: positions 0 .. n_pos-1
  std::vector<float> cos;    // [n_pos, head_dim / 2], includes YaRN's magnitude scale
  std::vector<float> sin;    // [n_pos, head_dim / 2], includes YaRN's magnitude scale
};

// inv_freq[i] for i < head_dim/2, after PI/YaRN, and the magnitude scale applied to cos and sin.
std::vector<double> rope_inv_freq(const ModelConfig& cfg, double* magnitude_scale);

RopeTables make_rope_tables(const ModelConfig& cfg, int n_pos);

}  // namespace ropepp
