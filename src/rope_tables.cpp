// rope_tables.cpp: see rope_tables.h. Follows the paper's LlamaRotaryEmbedding (rope_pp), in double.
#include "rope_tables.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace ropepp {

std::vector<double> rope_inv_freq(const ModelConfig& cfg, double* magnitude_scale) {
  const int64_t dim = cfg.head_dim;
  std::vector<double> inv(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) inv[size_t(i)] = 1.0 / std::pow(cfg.rope_theta, double(2 * i) / double(dim));
  double scale = 1.0;
  switch (cfg.scaling.kind) {
    case RopeScaling::Kind::None:
      break;
    case RopeScaling::Kind::Linear:
      for (double& f : inv) f /= cfg.scaling.factor;
      break;
    case RopeScaling::Kind::Yarn: {
      // The paper's constants: a 4096-token original context and a 32-rotation ramp.
      for (double& f : inv) {
        const double r = 4096.0 / 2.0 / std::numbers::pi * f;
        const double gamma = std::clamp((r - 1.0) / (32.0 - 1.0), 0.0, 1.0);
        f = (1.0 - gamma) * f / cfg.scaling.factor + gamma * f;
      }
      scale = 0.1 * std::log(cfg.scaling.factor) + 1.0;
      break;
    }
  }
  if (magnitude_scale) *magnitude_scale = scale;
  return inv;
}

RopeTables make_rope_tables(const ModelConfig& cfg, int n_pos) {
  double scale = 1.0;
  const std::vector<double> inv = rope_inv_freq(cfg, &scale);
  RopeTables t;
  t.head_dim = int(cfg.head_dim);
  t.n_pos = n_pos;
  const size_t half = inv.size();
  t.cos.resize(size_t(n_pos) * half);
  t.sin.resize(size_t(n_pos) * half);
  for (int p = 0; p < n_pos; ++p) {
    for (size_t i = 0; i < half; ++i) {
      const double a = double(p) * inv[i];
      t.cos[size_t(p) * half + i] = float(std::cos(a) * scale);
      t.sin[size_t(p) * half + i] = float(std::sin(a) * scale);
    }
  }
  return t;
}

}  // namespace ropepp
