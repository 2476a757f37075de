// tokenizer_bpe_encode.cpp: encoding with the HF byte-level BPE tokenizer (the hot path).
#include <algorithm>

#include "common.h"
#include "tokenizer_bpe_parts.h"

namespace ropepp::tok {

namespace {

constexpr size_t kCacheMaxWords = 1u << 17;  // the word cache is cleared when it grows past this
constexpr size_t kCacheMaxIds = 1u << 22;    // ... or holds more ids than this

struct Sym {
  int32_t id;
  int32_t prev, next;  // neighbours in the current segmentation, -1 at the ends
  uint32_t len;        // bytes covered; 0 once merged into its left neighbour
};

struct HeapEntry {
  uint32_t rank;
  uint32_t pos;
  int32_t merged;
  bool operator>(const HeapEntry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

// " " + s, kept in storage.
std::string_view with_space(std::string_view s, std::string& storage) {
  storage.resize(s.size() + 1);
  storage[0] = ' ';
  if (!s.empty()) std::memcpy(storage.data() + 1, s.data(), s.size());
  return storage;
}

}  // namespace

std::unique_ptr<Tokenizer> make_hf_bpe(const std::filesystem::path& tokenizer_json, const TokenizerConfig& cfg) {
  try {
    return std::make_unique<HfBpeTokenizer>(tokenizer_json, cfg);
  } catch (const nlohmann::json::exception& e) {
    // A field of an unexpected type (or a missing array element) where the loader reads with get<>() / at().
    fail("{}: unexpected JSON structure: {}", tokenizer_json.string(), e.what());
  }
}

// BPE over the bytes of one pre-token, as HF's Word::merge_all: repeatedly merge the pair of lowest rank,
// leftmost first (a min-heap over (rank, position) with stale entries skipped).
void HfBpeTokenizer::bpe(std::string_view word, std::vector<int32_t>& out) const {
  thread_local std::vector<Sym> syms;
  thread_local std::vector<HeapEntry> heap;
  const size_t n = word.size();
  syms.resize(n);
  heap.clear();
  for (size_t i = 0; i < n; ++i)
    syms[i] = Sym{byte_id_[static_cast<unsigned char>(word[i])], int32_t(i) - 1, i + 1 < n ? int32_t(i + 1) : -1, 1};
  for (size_t i = 0; i + 1 < n; ++i)
    if (const MergeTable::Slot* m = merges_.find(syms[i].id, syms[i + 1].id))
      heap.push_back(HeapEntry{m->rank, uint32_t(i), m->merged});
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const HeapEntry e = heap.back();
    heap.pop_back();
    Sym& l = syms[e.pos];
    if (l.len == 0 || l.next < 0) continue;
    Sym& r = syms[size_t(l.next)];
    const MergeTable::Slot* m = merges_.find(l.id, r.id);
    if (!m || m->merged != e.merged) continue;  // stale: a neighbour changed since this was queued
    l.id = e.merged;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (l.next >= 0) syms[size_t(l.next)].prev = int32_t(e.pos);
    if (l.prev >= 0) {
      if (const MergeTable::Slot* p = merges_.find(syms[size_t(l.prev)].id, l.id)) {
        heap.push_back(HeapEntry{p->rank, uint32_t(l.prev), p->merged});
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
      }
    }
    if (l.next >= 0) {
      if (const MergeTable::Slot* q = merges_.find(l.id, syms[size_t(l.next)].id)) {
        heap.push_back(HeapEntry{q->rank, e.pos, q->merged});
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
      }
    }
  }
  for (int32_t i = 0; i >= 0; i = syms[size_t(i)].next) out.push_back(syms[size_t(i)].id);
}

void HfBpeTokenizer::encode_word(std::string_view word, WordCache* cache, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    out.push_back(byte_id_[static_cast<unsigned char>(word[0])]);
    return;
  }
  if (ignore_merges_) {  // HF: a pre-token that is a vocabulary token is that token, whatever the merges say
    if (const StringMap::Value* v = vocab_.find(word)) {
      out.push_back(int32_t(v->a));
      return;
    }
  }
  if (!cache) {
    bpe(word, out);
    return;
  }
  if (const StringMap::Value* v = cache->map.find(word)) {
    out.insert(out.end(), cache->pool.begin() + v->a, cache->pool.begin() + v->a + v->b);
    return;
  }
  const size_t before = out.size();
  bpe(word, out);
  if (cache->map.size() >= kCacheMaxWords || cache->pool.size() >= kCacheMaxIds) {
    cache->map.clear();
    cache->pool.clear();
  }
  const uint32_t off = uint32_t(cache->pool.size()), cnt = uint32_t(out.size() - before);
  cache->pool.insert(cache->pool.end(), out.begin() + ptrdiff_t(before), out.end());
  cache->map.insert(word, StringMap::Value{off, cnt});
}

void HfBpeTokenizer::encode_text(std::string_view text, WordCache* cache, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::string prefixed;
  if (!split_) {  // ByteLevel without a regex: the whole segment is one word
    if (add_prefix_space_ && text[0] != ' ') text = with_space(text, prefixed);
    encode_word(text, cache, out);
    return;
  }
  if (add_prefix_space_ && !split_before_byte_level_ && text[0] != ' ')  // ByteLevel(add_prefix_space, use_regex)
    text = with_space(text, prefixed);
  const bool prefix_each = add_prefix_space_ && split_before_byte_level_;  // Split, then ByteLevel(add_prefix_space)
  std::string tmp;
  for (size_t i = 0; i < text.size();) {
    const size_t e = split_next(*split_, text, i);
    std::string_view w = text.substr(i, e - i);
    if (prefix_each && w[0] != ' ') w = with_space(w, tmp);
    encode_word(w, cache, out);
    i = e;
  }
}

std::vector<int32_t> HfBpeTokenizer::encode(std::string_view text, const EncodeOptions& opt) const {
  std::string repaired;
  const std::string_view s = checked_utf8(text, opt.lossy, repaired);
  std::vector<int32_t> out;
  out.reserve(s.size() / 3 + prefix_.size() + suffix_.size() + 4);
  if (opt.add_bos) out.insert(out.end(), prefix_.begin(), prefix_.end());

  std::unique_lock<std::mutex> lock(cache_->mu, std::try_to_lock);
  WordCache* cache = lock.owns_lock() ? cache_.get() : nullptr;

  std::vector<Segment> segs, inner;
  raw_added_.split(s, added_, opt.parse_special, segs);
  std::string normalized;
  for (const Segment& seg : segs) {
    if (seg.id >= 0) {
      out.push_back(seg.id);
      continue;
    }
    std::string_view t = seg.text;
    if (!normalizer_.empty()) {
      normalized = normalizer_.apply(t);
      t = normalized;
    }
    if (norm_added_.empty()) {
      encode_text(t, cache, out);
      continue;
    }
    inner.clear();
    norm_added_.split(t, added_, opt.parse_special, inner);
    for (const Segment& in : inner) {
      if (in.id >= 0) out.push_back(in.id);
      else encode_text(in.text, cache, out);
    }
  }
  if (opt.add_bos) out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

}  // namespace ropepp::tok
