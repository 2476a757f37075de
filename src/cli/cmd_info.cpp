// cmd_info.cpp: `ropepp info` — what a checkpoint is (architecture, RoPE++ mode, heads, parameters, dtype,
// rope settings, KV bytes per token, context) and the memory plan for a context on a device.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "kv_cache.h"
#include "model.h"
#include "model_args.h"

namespace ropepp::cli {
namespace {

struct InfoArgs {
  ModelArgs m;
  bool json = false;
};

const char* scaling_name(RopeScaling::Kind k) {
  switch (k) {
    case RopeScaling::Kind::None: return "none";
    case RopeScaling::Kind::Linear: return "linear (PI)";
    case RopeScaling::Kind::Yarn: return "yarn (paper)";
  }
  return "?";
}

void run_info(const InfoArgs& a) {
  const auto dir = resolve_model_dir(a.m.model);
  const auto ck = load_checkpoint(dir, parse_rope_mode_flag(a.m.rope_mode));
  const ModelConfig& c = ck->config;
  const int ctx = a.m.ctx > 0 ? a.m.ctx : int(std::min<int64_t>(c.max_position_embeddings > 0 ? c.max_position_embeddings : 4096, 65536));
  const bool gpu = a.m.device != "cpu";
  // The CPU backend keeps an f32 cache and reads weights from the mapping; CUDA keeps an f16 cache and 16-bit
  // weights.
  const size_t kv_f16 = KVCache::bytes_per_token(int(c.n_layers), int(c.n_kv()), int(c.head_dim), DType::F16);
  const size_t kv_f32 = KVCache::bytes_per_token(int(c.n_layers), int(c.n_kv()), int(c.head_dim), DType::F32);
  const size_t kv_dev = gpu ? kv_f16 : kv_f32;
  const int64_t params = ck->n_params();
  const size_t weight_bytes = gpu ? size_t(params) * 2 : ck->st->total_bytes();
  const size_t kv_pool = kv_dev * size_t((ctx + 15) / 16 * 16);
  ModelOptions opt;
  opt.n_ctx = ctx;
  opt.max_batch_tokens = a.m.batch;
  // Activations, metadata and rope tables of the forward pass; on the GPU also the backend's own scratch:
  // the cuBLAS workspace (32 MiB) and the 16-bit copy of a GEMM's input (batch × the widest input, FFN).
  size_t scratch = Model::planned_scratch_bytes(c, opt, gpu);
  if (gpu) scratch += (size_t(32) << 20) + size_t(a.m.batch) * size_t(std::max(c.intermediate_size, c.hidden_size)) * 2;

  nlohmann::json j;
  j["model"] = dir.string();
  j["architecture"] = "llama";
  j["mode"] = rope_mode_name(c.mode);
  j["mode_source"] = a.m.rope_mode != "auto" ? "--rope-mode" : (c.config_mode ? "rope_config" : "tensor shapes");
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["layers"] = c.n_layers;
  j["head_dim"] = c.head_dim;
  j["q_heads"] = c.n_q_heads();
  j["kv_heads"] = c.n_kv();
  j["attention_heads"] = c.n_attn_heads();
  j["vocab_size"] = c.vocab_size;
  j["parameters"] = params;
  j["dtype"] = dtype_name(ck->weight_dtype());
  j["tied_embeddings"] = c.tie_word_embeddings;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = scaling_name(c.scaling.kind);
  j["rope_factor"] = c.scaling.factor;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["kv_bytes_per_token"] = kv_dev;
  j["kv_bytes_per_token_f16"] = kv_f16;
  j["kv_bytes_per_token_f32"] = kv_f32;
  j["device"] = a.m.device;
  j["plan"] = {{"ctx", ctx},
               {"batch", a.m.batch},
               {"weights_bytes", weight_bytes},
               {"kv_pool_bytes", kv_pool},
               {"scratch_bytes", scratch},
               {"total_bytes", weight_bytes + kv_pool + scratch}};

  if (a.json) {
    fmt::print("{}\n", j.dump(2));
    return;
  }
  const double MiB = 1024.0 * 1024.0;
  fmt::print("model            {}\n", dir.string());
  fmt::print("architecture     llama decoder, RoPE mode {} (from {})\n", rope_mode_name(c.mode),
             j["mode_source"].get<std::string>());
  fmt::print("shape            hidden {}, ffn {}, layers {}, head_dim {}, vocab {}\n", c.hidden_size,
             c.intermediate_size, c.n_layers, c.head_dim, c.vocab_size);
  fmt::print("heads            q {}, kv {}, attention {} (config: {} heads, {} kv heads)\n", c.n_q_heads(), c.n_kv(),
             c.n_attn_heads(), c.n_heads, c.n_kv_heads);
  fmt::print("parameters       {} ({:.1f} M), {} weights{}\n", params, double(params) / 1e6,
             dtype_name(ck->weight_dtype()), c.tie_word_embeddings ? ", tied embeddings" : "");
  fmt::print("rope             theta {}, scaling {}{}\n", c.rope_theta, scaling_name(c.scaling.kind),
             c.scaling.kind == RopeScaling::Kind::None ? "" : fmt::format(" x{}", c.scaling.factor));
  fmt::print("context          max_position_embeddings {}\n", c.max_position_embeddings);
  fmt::print("KV per token     {} bytes (f16, GPU) / {} bytes (f32, CPU)\n", kv_f16, kv_f32);
  fmt::print("memory plan      {} at ctx {}, batch {}: weights {:.1f} MiB{}, KV pool {:.1f} MiB, scratch {:.1f} MiB; "
             "total {:.1f} MiB\n", a.m.device, ctx, a.m.batch, double(weight_bytes) / MiB,
             gpu ? "" : " (memory-mapped)", double(kv_pool) / MiB, double(scratch) / MiB,
             double(weight_bytes + kv_pool + scratch) / MiB);
}

}  // namespace

void register_info_command(CLI::App& app) {
  auto a = std::make_shared<InfoArgs>();
  CLI::App* sub = app.add_subcommand("info", "show a checkpoint's architecture, RoPE++ mode, sizes and memory plan");
  add_model_args(sub, a->m);
  sub->add_flag("--json", a->json, "print one JSON object");
  sub->callback([a] { run_info(*a); });
}

}  // namespace ropepp::cli
