// fuzz_config.cpp: config.json parsing (parse_config) over arbitrary bytes, plus the --rope-mode flag
// parser. Accepted configs are checked against what parse_config promises (positive sizes below 2^31,
// even head_dim, heads divisible by kv heads, EH only with even heads, finite positive eps/theta/factor)
// and, when small enough, their rope tables are built and must be finite.
#include <fmt/format.h>

#include <cmath>

#include "config.h"
#include "fuzz_common.h"
#include "rope_tables.h"

namespace fs = std::filesystem;
using namespace ropepp;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (size < 16) fuzz::expect_only_error([&] { (void)parse_rope_mode_flag(std::string(text)); });
  static const fs::path file = fuzz::scratch_dir() / "config.json";
  fuzz::write_file(file, text);
  fuzz::expect_only_error([&] {
    const ModelConfig c = parse_config(file);
    for (int64_t v : {c.hidden_size, c.intermediate_size, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
                      c.vocab_size, c.max_position_embeddings})
      ROPEPP_FUZZ_CHECK(v > 0 && v <= INT32_MAX, "size {} out of range", v);
    ROPEPP_FUZZ_CHECK(c.head_dim % 2 == 0, "odd head_dim {}", c.head_dim);
    ROPEPP_FUZZ_CHECK(c.n_heads % c.n_kv_heads == 0, "heads {} kv {}", c.n_heads, c.n_kv_heads);
    ROPEPP_FUZZ_CHECK(std::isfinite(c.rms_norm_eps) && c.rms_norm_eps > 0, "eps {}", c.rms_norm_eps);
    ROPEPP_FUZZ_CHECK(std::isfinite(c.rope_theta) && c.rope_theta > 0, "theta {}", c.rope_theta);
    ROPEPP_FUZZ_CHECK(std::isfinite(c.scaling.factor) && c.scaling.factor > 0, "factor {}", c.scaling.factor);
    if (c.mode == RopeMode::EH) ROPEPP_FUZZ_CHECK(c.n_heads % 2 == 0 && c.n_kv_heads % 2 == 0, "EH with odd heads");
    ROPEPP_FUZZ_CHECK(c.n_q_heads() > 0 && c.n_kv() > 0 && c.n_attn_heads() > 0, "head counts");
    for (int32_t id : c.eos_token_ids) ROPEPP_FUZZ_CHECK(id >= 0, "eos {}", id);
    if (c.head_dim <= 1024) {
      const RopeTables t = make_rope_tables(c, 4);
      for (size_t i = 0; i < t.cos.size(); ++i)
        ROPEPP_FUZZ_CHECK(std::isfinite(t.cos[i]) && std::isfinite(t.sin[i]), "rope table entry {} not finite", i);
    }
  });
  return 0;
}
