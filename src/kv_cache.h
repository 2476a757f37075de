// kv_cache.h: the paged KV cache. One pool of fixed-size blocks (in backend memory) shared by several
// sequences; each sequence owns an ordered block table; blocks return to the pool when a sequence is
// freed or truncated. Sized from the mode's KV geometry: EH holds half the kv heads of EC per token.
#pragma once

#include <cstddef>
#include <vector>

#include "backend.h"

namespace ropepp {

struct KVCacheConfig {
  int n_layers = 0;
  int n_kv_heads = 0;      // kv heads of the resolved mode (EH: config KV / 2)
  int head_dim = 0;
  int block_size = 16;     // tokens per block
  int n_blocks = 0;        // blocks in the pool
  int max_seqs = 1;        // sequence slots
};

class KVCache {
 public:
  KVCache(Backend& backend, const KVCacheConfig& cfg);  // allocates the pool; Error with sizes on failure
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  // Bytes one token occupies over all layers (K and V) with the given element type.
  static size_t bytes_per_token(int n_layers, int n_kv_heads, int head_dim, DType dtype);

  int add_sequence();                      // a new empty sequence; Error when all slots are in use
  void remove_sequence(int seq);           // frees its blocks and its slot
  void truncate(int seq, int n_tokens);    // keep the first n_tokens, free the blocks past them
  void reserve(int seq, int n_tokens);     // blocks for positions < n_tokens; Error when the pool is full
  int length(int seq) const;               // tokens written (set by the forward pass via set_length)
  void set_length(int seq, int n_tokens);
  const std::vector<int32_t>& block_table(int seq) const;

  int free_blocks() const { return int(free_.size()); }
  int total_blocks() const { return cfg_.n_blocks; }
  int block_size() const { return cfg_.block_size; }
  int max_seqs() const { return cfg_.max_seqs; }
  size_t pool_bytes() const { return pool_bytes_; }
  KVCacheView view() const { return view_; }

 private:
  struct Seq {
    bool live = false;
    int length = 0;
    std::vector<int32_t> blocks;
  };
  const Seq& seq_ref(int seq) const;
  Seq& seq_ref(int seq);

  Backend& backend_;
  KVCacheConfig cfg_;
  KVCacheView view_;
  size_t pool_bytes_ = 0;
  std::vector<int32_t> free_;  // free block ids (a stack)
  std::vector<Seq> seqs_;      // [max_seqs]
};

}  // namespace ropepp
