// kv_cache.cpp: see kv_cache.h.
#include "kv_cache.h"

#include <utility>

namespace ropepp {

size_t KVCache::bytes_per_token(int n_layers, int n_kv_heads, int head_dim, DType dtype) {
  return 2ull * size_t(n_layers) * size_t(n_kv_heads) * size_t(head_dim) * dtype_size(dtype);
}

KVCache::KVCache(Backend& backend, const KVCacheConfig& cfg) : backend_(backend), cfg_(cfg) {
  if (cfg.n_blocks <= 0 || cfg.block_size <= 0 || cfg.max_seqs <= 0)
    fail("KV cache: invalid geometry ({} blocks of {} tokens, {} sequences)", cfg.n_blocks, cfg.block_size,
         cfg.max_seqs);
  const DType dt = backend.kv_dtype();
  const size_t per_block = size_t(cfg.n_layers) * cfg.n_kv_heads * cfg.block_size * cfg.head_dim * dtype_size(dt);
  uint64_t half = 0;
  if (mul_overflows(per_block, uint64_t(cfg.n_blocks), &half))
    fail("KV cache: {} blocks of {} bytes overflow", cfg.n_blocks, per_block);
  pool_bytes_ = 2 * half;
  view_.dtype = dt;
  view_.n_layers = cfg.n_layers;
  view_.n_blocks = cfg.n_blocks;
  view_.n_kv_heads = cfg.n_kv_heads;
  view_.block_size = cfg.block_size;
  view_.head_dim = cfg.head_dim;
  view_.k = backend.alloc(half);
  try {
    view_.v = backend.alloc(half);
  } catch (...) {
    backend.release(view_.k);
    throw;
  }
  free_.reserve(size_t(cfg.n_blocks));
  for (int b = cfg.n_blocks - 1; b >= 0; --b) free_.push_back(b);
  seqs_.resize(size_t(cfg.max_seqs));
}

KVCache::~KVCache() {
  backend_.release(view_.k);
  backend_.release(view_.v);
}

const KVCache::Seq& KVCache::seq_ref(int seq) const {
  if (seq < 0 || seq >= int(seqs_.size()) || !seqs_[size_t(seq)].live) fail("KV cache: no sequence {}", seq);
  return seqs_[size_t(seq)];
}
KVCache::Seq& KVCache::seq_ref(int seq) { return const_cast<Seq&>(std::as_const(*this).seq_ref(seq)); }

int KVCache::add_sequence() {
  for (size_t i = 0; i < seqs_.size(); ++i) {
    if (!seqs_[i].live) {
      seqs_[i] = Seq{true, 0, {}};
      return int(i);
    }
  }
  fail("KV cache: all {} sequence slots are in use", seqs_.size());
}

void KVCache::remove_sequence(int seq) {
  truncate(seq, 0);
  seqs_[size_t(seq)].live = false;
}

void KVCache::truncate(int seq, int n_tokens) {
  Seq& s = seq_ref(seq);
  if (n_tokens < 0) n_tokens = 0;
  const size_t keep = size_t((n_tokens + cfg_.block_size - 1) / cfg_.block_size);
  while (s.blocks.size() > keep) {
    free_.push_back(s.blocks.back());
    s.blocks.pop_back();
  }
  if (s.length > n_tokens) s.length = n_tokens;
}

void KVCache::reserve(int seq, int n_tokens) {
  Seq& s = seq_ref(seq);
  const size_t need = size_t((n_tokens + cfg_.block_size - 1) / cfg_.block_size);
  if (need > s.blocks.size() && need - s.blocks.size() > free_.size())
    fail("KV cache full: sequence {} needs {} tokens ({} blocks of {}), {} blocks free of {}; raise -c/--ctx-size",
         seq, n_tokens, need - s.blocks.size(), cfg_.block_size, free_.size(), cfg_.n_blocks);
  while (s.blocks.size() < need) {
    s.blocks.push_back(free_.back());
    free_.pop_back();
  }
}

int KVCache::length(int seq) const { return seq_ref(seq).length; }
void KVCache::set_length(int seq, int n_tokens) { seq_ref(seq).length = n_tokens; }
const std::vector<int32_t>& KVCache::block_table(int seq) const { return seq_ref(seq).blocks; }

}  // namespace ropepp
