// model.h: a RoPE++ (or standard RoPE) Llama decoder with its weights in backend memory, its paged KV cache,
// and the forward pass, written once against the Backend interface.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "backend.h"
#include "checkpoint.h"
#include "kv_cache.h"
#include "rope_tables.h"

namespace ropepp {

struct ModelOptions {
  int n_ctx = 4096;             // longest sequence (positions 0 .. n_ctx-1); ≤ 65,536 and the pool's size
  int max_seqs = 1;             // sequences the KV pool holds at full length
  int block_size = 16;          // KV cache tokens per block
  int max_batch_tokens = 512;   // tokens per forward chunk (larger batches are split)
};

// Weights of one layer in backend memory; shapes as in checkpoint.h's LayerTensors.
struct LayerWeights {
  Weight attn_norm;  // [D]
  Weight wq;         // [Hq*hd, D]
  Weight wk;         // [Hkv*hd, D]
  Weight wv;         // [Hkv*hd, D]
  Weight wo;         // [D, Ha*hd]
  Weight ffn_norm;   // [D]
  Weight w_gate;     // [F, D]
  Weight w_up;       // [F, D]
  Weight w_down;     // [D, F]
};

// One sequence's share of a forward batch: `tokens` are appended at the sequence's current length.
struct SeqChunk {
  int seq = 0;                        // KV cache sequence id
  std::span<const int32_t> tokens;    // [n] token ids
  bool all_logits = false;            // logits for every token, or only for the last one
};

class Model {
 public:
  Model(const Checkpoint& ckpt, Backend& backend, const ModelOptions& opt);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ModelOptions& options() const { return opt_; }
  Backend& backend() { return backend_; }
  KVCache& cache() { return *cache_; }

  // Runs the batch through the decoder, appending every token to its sequence's cache. Returns logits
  // [n_rows, vocab] on the host, rows in batch order (all tokens of a chunk with all_logits, else its last).
  std::vector<float> forward(std::span<const SeqChunk> batch);

  // Like forward(), but returns for each logits row r the NLL of token targets[r] under the row's
  // log-softmax, computed on the backend (the logits never leave it). targets: [n_rows].
  std::vector<float> forward_nll(std::span<const SeqChunk> batch, std::span<const int32_t> targets);

  // Bytes of weights resident in backend memory, and of activations/scratch.
  size_t weight_bytes() const { return weight_bytes_; }
  size_t scratch_bytes() const { return scratch_bytes_; }
  // Weight bytes one decoded token reads: every layer, the final norm, lm_head and one embedding row.
  size_t decode_weight_bytes() const;

 private:
  struct Scratch;
  struct PlannedToken {
    int seq;        // cache sequence id
    int32_t token;  // token id
    bool logits;    // this token's logits are returned
  };
  std::vector<PlannedToken> plan(std::span<const SeqChunk> batch, size_t* n_rows) const;
  // Runs part; writes its logits rows to logits_out, or (targets != null) their NLLs to nll_out.
  void forward_chunk(std::span<const PlannedToken> part, float* logits_out, const int32_t* targets, float* nll_out);
  Weight upload(const TensorInfo* t);

  Backend& backend_;
  ModelConfig cfg_;
  ModelOptions opt_;
  Weight embed_, final_norm_, lm_head_;
  std::vector<LayerWeights> layers_;
  std::vector<Weight> owned_;  // every distinct uploaded weight (for release)
  float* rope_cos_ = nullptr;  // [n_ctx, hd/2] backend memory
  float* rope_sin_ = nullptr;  // [n_ctx, hd/2] backend memory
  std::unique_ptr<KVCache> cache_;
  std::unique_ptr<Scratch> scratch_;
  size_t weight_bytes_ = 0;
  size_t scratch_bytes_ = 0;
};

}  // namespace ropepp
