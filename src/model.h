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
  // Logits rows per lm_head matmul: scratch [min(max_batch_tokens, logit_rows), vocab] fp32 (131 MB at 256 rows
  // of a 128,256 vocabulary). perplexity sets its scored rows per window (the stride), so that one matmul reads
  // the lm_head once per window; 1 .. 4096.
  int logit_rows = 256;
  // Chained greedy steps per queued call (forward_argmax_queued's `steps` as Session and `bench` use it; on CUDA
  // one graph runs them all, so the steps between two graphs cost nothing): 1 .. kMaxChainedSteps; 0: the
  // environment's ROPEPP_GREEDY_STEPS, else Backend::default_greedy_steps() (CUDA 4, CPU 1).
  int greedy_steps = 0;
};

constexpr int kMaxChainedSteps = 8;

// One sequence's share of a forward batch: `tokens` are appended at the sequence's current length.
struct SeqChunk {
  int seq = 0;                        // KV cache sequence id
  std::span<const int32_t> tokens;    // [n] token ids
  bool all_logits = false;            // logits for every token, or only for the last one
  int logits_from = -1;               // ≥ 0 (with all_logits false): logits for the tokens at index ≥ this, and the last
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
  // [n_rows, vocab] on the host, rows in batch order (all tokens of a chunk with all_logits, those from
  // logits_from on, and always its last).
  std::vector<float> forward(std::span<const SeqChunk> batch);

  // Like forward(), but returns for each logits row r the NLL of token targets[r] under the row's
  // log-softmax, computed on the backend (the logits never leave it). targets: [n_rows].
  std::vector<float> forward_nll(std::span<const SeqChunk> batch, std::span<const int32_t> targets);
  // forward_nll without waiting for the backend: queues the call and returns a ticket; `nll` ([n_rows], kept
  // valid by the caller) holds the result once wait(ticket) returns. The next call may be queued before that,
  // so the host prepares it while the backend runs this one (perplexity windows).
  uint64_t forward_nll_queued(std::span<const SeqChunk> batch, std::span<const int32_t> targets, float* nll);
  void wait(uint64_t ticket) { backend_.wait_download(ticket); }

  // Like forward(), but returns for each logits row the id of its largest logit among ids [0, vocab_limit)
  // (0: the whole vocabulary): greedy sampling on the backend, only the ids leave it.
  std::vector<int32_t> forward_argmax(std::span<const SeqChunk> batch, int vocab_limit = 0);
  // Greedy decoding with the host off the device's critical path: queues the decode step of one token of
  // sequence `seq` and its argmax over ids [0, vocab_limit) (0: all) without waiting; `id` (kept valid by the
  // caller) holds the result once wait(ticket) returns. The step's input is `token`, or with token < 0 the id
  // that the previous forward call of this model computed (an argmax of one row, for the same sequence: its
  // next token), read where it lies in backend memory. So a caller queues step t + 1 before it reads step t's
  // id, and its work per token (detokenizing, stop strings, the next step's inputs and launch) overlaps the
  // device's. On an error the sequence keeps the length it had before the call.
  // steps > 1 (≤ kMaxChainedSteps and max_batch_tokens): that many steps chained in one call, step j + 1's input
  // being step j's id; id[0 .. steps) get their ids, and the next call's token < 0 means the last of them.
  uint64_t forward_argmax_queued(int seq, int32_t token, int32_t* id, int vocab_limit = 0, int steps = 1);
  int greedy_steps() const { return opt_.greedy_steps; }  // ModelOptions::greedy_steps, resolved

  // Bytes of weights resident in backend memory, and of activations/scratch.
  size_t weight_bytes() const { return weight_bytes_; }
  size_t scratch_bytes() const { return scratch_bytes_; }
  // Activation/metadata scratch (and rope tables) that a Model with these options allocates in backend memory,
  // for the memory plan of `ropepp info`. fused: the backend wants fused projections.
  static size_t planned_scratch_bytes(const ModelConfig& cfg, const ModelOptions& opt, bool fused);
  // Weight bytes one decoded token reads: every layer, the final norm, lm_head and one embedding row.
  size_t decode_weight_bytes() const;

 private:
  struct Scratch;
  struct PlannedToken {
    int seq;        // cache sequence id
    int32_t token;  // token id
    bool logits;    // this token's logits are returned
  };
  // Where a chunk's logits rows go: exactly one of logits / nll (with targets) / ids is set.
  struct RowsOut {
    float* logits = nullptr;           // [rows, vocab] host
    const int32_t* targets = nullptr;  // [rows] host: NLL mode
    float* nll = nullptr;              // [rows] host
    int32_t* ids = nullptr;            // [rows] host: argmax mode
    int vocab_limit = 0;               // argmax over ids [0, vocab_limit)
    uint64_t* ticket = nullptr;        // with nll or ids: the ticket of its queued download (Backend::download_later)
    bool ids_input = false;            // the chunk's one token is the last argmax id in backend memory
    int steps = 1;                     // ids with one token: chained greedy steps (forward_argmax_queued)
  };
  RowsOut argmax_out(int32_t* ids, int vocab_limit) const;  // checks vocab_limit (0: all ids)
  std::vector<PlannedToken> plan(std::span<const SeqChunk> batch, size_t* n_rows) const;
  void forward_rows(std::span<const PlannedToken> pl, RowsOut out);  // pl: plan(batch)
  void forward_chunk(std::span<const PlannedToken> part, const RowsOut& out);
  // The ops of one chunk from the embedding to the logits (or argmax ids) in backend memory: the part that
  // a graph may record and replay (no host reads, same pointers every time). gather: only the rows of
  // out_bv (n_out of them) need logits, so the last layer runs for them alone (DecoderLayersParams).
  // id_slot: a chained step's place among Scratch::ids (argmax mode, one row); a step after the first runs no
  // embedding (the step before wrote its x: Backend::norm_matmul_argmax's `next`).
  void run_decoder(const BatchView& bv, const BatchView& out_bv, int n_out, bool gather, const RowsOut& out,
                   int id_slot = 0);
  Weight upload(const TensorInfo* t);
  Weight upload_concat(std::initializer_list<const TensorInfo*> parts);  // rows stacked, one weight

  Backend& backend_;
  ModelConfig cfg_;
  ModelOptions opt_;
  Weight embed_, final_norm_, lm_head_;
  std::vector<DecoderLayerWeights> layers_;  // concatenated or separate projections (fused_), backend.h
  std::vector<Weight> owned_;  // every distinct uploaded weight (for release)
  float* rope_cos_ = nullptr;  // [n_ctx, hd/2] backend memory
  float* rope_sin_ = nullptr;  // [n_ctx, hd/2] backend memory
  std::unique_ptr<KVCache> cache_;
  std::unique_ptr<Scratch> scratch_;
  bool fused_ = false;            // layers use wqkv / w_gate_up
  uint64_t instance_id_ = 0;      // part of every graph key
  std::vector<uint64_t> graph_keys_seen_;  // shapes run once eagerly: the next run of one is recorded
  bool last_call_one_id_ = false;  // the last forward call was an argmax of one row (its id: Scratch::ids[last_id_slot_])
  int last_id_slot_ = 0;           // where that id lies: the last of its chained steps
  std::vector<int32_t> last_seq_of_, last_table_;  // what was last queued to Scratch::seq_of_tok / block_table
  size_t weight_bytes_ = 0;
  size_t scratch_bytes_ = 0;
};

}  // namespace ropepp
