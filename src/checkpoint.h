// checkpoint.h: a HF-layout checkpoint directory opened, its config resolved against its tensors, and
// every weight tensor bound by role and validated (name present, dtype, shape for the config and mode).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "config.h"
#include "safetensors.h"

namespace ropepp {

// Host-side (memory-mapped) weights of one decoder layer. Shapes with D = hidden, F = intermediate,
// hd = head_dim, Hq/Hkv/Ha = q/kv/attention heads of the resolved mode; PyTorch Linear layout [out, in].
struct LayerTensors {
  const TensorInfo* attn_norm = nullptr;  // input_layernorm.weight          [D]
  const TensorInfo* wq = nullptr;         // self_attn.q_proj.weight         [Hq*hd, D]
  const TensorInfo* wk = nullptr;         // self_attn.k_proj.weight         [Hkv*hd, D]
  const TensorInfo* wv = nullptr;         // self_attn.v_proj.weight         [Hkv*hd, D]
  const TensorInfo* wo = nullptr;         // self_attn.o_proj.weight         [D, Ha*hd]
  const TensorInfo* ffn_norm = nullptr;   // post_attention_layernorm.weight [D]
  const TensorInfo* w_gate = nullptr;     // mlp.gate_proj.weight            [F, D]
  const TensorInfo* w_up = nullptr;       // mlp.up_proj.weight              [F, D]
  const TensorInfo* w_down = nullptr;     // mlp.down_proj.weight            [D, F]
};

struct Checkpoint {
  std::filesystem::path dir;
  ModelConfig config;                      // config.mode is resolved
  std::unique_ptr<SafetensorsSet> st;      // owns the mappings the TensorInfo pointers point into
  const TensorInfo* embed = nullptr;       // model.embed_tokens.weight [V, D]
  const TensorInfo* final_norm = nullptr;  // model.norm.weight         [D]
  const TensorInfo* lm_head = nullptr;     // lm_head.weight [V, D]; == embed when tied
  std::vector<LayerTensors> layers;        // [n_layers]

  int64_t n_params() const;                // unique parameters (tied lm_head counted once)
  DType weight_dtype() const;              // dtype of the embedding (checkpoints are uniform in practice)
};

// Opens `dir` (config.json + safetensors). `mode_override` (the --rope-mode flag) replaces the mode from
// rope_config/shape inference; a mode that contradicts the tensor shapes is an Error naming the tensor,
// its shape, and the shape the mode needs. Likewise when rope_config disagrees with the shapes.
std::unique_ptr<Checkpoint> load_checkpoint(const std::filesystem::path& dir,
                                            std::optional<RopeMode> mode_override = std::nullopt);

}  // namespace ropepp
