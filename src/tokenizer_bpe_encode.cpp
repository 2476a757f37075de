// tokenizer_bpe_encode.cpp: encoding with the HF byte-level BPE tokenizer (the hot path).
#include <algorithm>
#include <atomic>
#include <thread>

#include "common.h"
#include "tokenizer_bpe_parts.h"

namespace ropepp::tok {

namespace {

constexpr size_t kCacheMaxWords = 1u << 17;  // the word cache is cleared when it grows past this
constexpr size_t kCacheMaxIds = 1u << 22;    // ... or holds more ids than this
constexpr size_t kParallelMinBytes = 64u << 10;  // EncodeOptions::threads = 0: more threads from this much text
constexpr size_t kMinChunkBytes = 16u << 10;     // ... with at least this much text each
constexpr size_t kWorkerCacheWords = 1u << 12;   // a worker's word cache starts this small
constexpr size_t kMaxThreads = 16;

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

bool ascii_graphic(char c) { return c > ' ' && c < 0x7F; }

// The first offset p >= from (0 < p < s.size()) after a '\n' followed by an ASCII graphic character, or by a
// space and then one; npos when there is none. For the Llama-3 and Qwen2 split regexes (next_llama3), the
// pre-tokens of s are those of s[0, p) followed by those of s[p, end), so the two can be encoded apart:
//  1. A pre-token ends at p. The one holding the '\n' at p - 1 is ' '?[^\s\p{L}\p{N}]+[\r\n]*, whose [\r\n]*
//     run stops at p (s[p] is no \r or \n), or whitespace, where \s*[\r\n]+ comes first and takes the run up
//     to its last \r or \n, the one at p - 1 (the run stops at p, or at p + 1 after the space). No other
//     alternative takes a '\n': [^\r\n\p{L}\p{N}]?\p{L}+ leaves \r and \n out of its first character.
//  2. A pre-token that starts at i < p is the same when the text ends at p. Matching it reads past p - 1
//     only where the text is assumed to go on: a contraction at i = p - 2 reads s[p - 1] = '\n' first, which
//     rules them all out (and s[p - 1] is no quote); the first character before letters cannot be the '\n';
//     ' '? before other characters at i = p - 1 needs s[p - 1] = ' '; runs of letters, digits and others
//     stop at the '\n'; the [\r\n]* run and a whitespace run through p - 1 end at p either way (above);
//     \s+(?!\S) only decides runs without \r or \n, which end before p - 1.
//  3. The pre-tokens from p on depend on s[p, end) alone (matching reads forward only).
// Other patterns are not cut (GPT-2's would need its own proof).
size_t next_cut(std::string_view s, size_t from) {
  for (size_t i = from == 0 ? 0 : from - 1; (i = s.find('\n', i)) != std::string_view::npos; ++i) {
    const size_t p = i + 1;
    if (p < s.size() && ascii_graphic(s[p])) return p;
    if (p + 1 < s.size() && s[p] == ' ' && ascii_graphic(s[p + 1])) return p;
  }
  return std::string_view::npos;
}

}  // namespace

size_t bpe_threads() { return std::clamp<size_t>(std::thread::hardware_concurrency(), 1, kMaxThreads); }

void run_parallel(size_t n, const std::function<void(size_t)>& fn) {
  std::vector<std::exception_ptr> errors(n);
  auto run = [&](size_t t) {
    try {
      fn(t);
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(n > 0 ? n - 1 : 0);
  for (size_t t = 1; t < n; ++t) {
    try {
      threads.emplace_back(run, t);
    } catch (const std::system_error&) {  // no more threads: the rest run here
      break;
    }
  }
  run(0);
  for (size_t t = threads.size() + 1; t < n; ++t) run(t);
  for (std::thread& th : threads) th.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

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
  if (!split_) {  // ByteLevel without a regex: the whole segment is one word
    encode_word(text, cache, out);
    return;
  }
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

void HfBpeTokenizer::segments(std::string_view text, bool parse_special, std::list<std::string>& storage,
                              std::vector<Segment>& out) const {
  // ByteLevel(add_prefix_space) without a Split step before it: one space before each segment
  const bool prefix = add_prefix_space_ && (!split_ || !split_before_byte_level_);
  auto add_text = [&](std::string_view t) {
    if (t.empty()) return;
    if (prefix && t[0] != ' ') t = with_space(t, storage.emplace_back());
    out.push_back({t, -1});
  };
  std::vector<Segment> raw, inner;
  raw_added_.split(text, added_, parse_special, raw);
  for (const Segment& seg : raw) {
    if (seg.id >= 0) {
      out.push_back(seg);
      continue;
    }
    std::string_view t = seg.text;
    if (!normalizer_.empty()) t = storage.emplace_back(normalizer_.apply(t));
    if (norm_added_.empty()) {
      add_text(t);
      continue;
    }
    inner.clear();
    norm_added_.split(t, added_, parse_special, inner);
    for (const Segment& in : inner) {
      if (in.id >= 0) out.push_back(in);
      else add_text(in.text);
    }
  }
}

void HfBpeTokenizer::encode_parallel(std::span<const Segment> segs, size_t threads, size_t chunk,
                                     std::vector<int32_t>& out) const {
  // jobs: the segments, long text ones cut (Llama-3 / Qwen2 split regexes) into pieces of about `chunk` bytes;
  // groups: runs of jobs of about `chunk` bytes, one word cache each
  const bool cut = split_ == SplitPattern::Llama3 || split_ == SplitPattern::Qwen2;
  std::vector<Segment> jobs;
  for (const Segment& seg : segs) {
    size_t b = 0;
    while (seg.id < 0 && cut && seg.text.size() - b > chunk) {
      const size_t e = next_cut(seg.text, b + chunk);
      if (e == std::string_view::npos) break;
      jobs.push_back({seg.text.substr(b, e - b), -1});
      b = e;
    }
    jobs.push_back(b == 0 ? seg : Segment{seg.text.substr(b), -1});
  }
  std::vector<size_t> group{0};  // [groups + 1] first job of each group
  size_t bytes = 0;
  for (size_t k = 0; k < jobs.size(); ++k) {
    bytes += jobs[k].text.size();
    if (bytes >= chunk && k + 1 < jobs.size()) {
      group.push_back(k + 1);
      bytes = 0;
    }
  }
  group.push_back(jobs.size());
  const size_t n = group.size() - 1;
  std::vector<std::vector<int32_t>> ids(n);  // [groups] the ids of each group
  std::atomic<size_t> next{0};
  run_parallel(std::min({threads, n, kMaxThreads}), [&](size_t) {
    WordCache cache(kWorkerCacheWords);
    for (size_t g; (g = next.fetch_add(1)) < n;) {
      for (size_t k = group[g]; k < group[g + 1]; ++k) {
        if (jobs[k].id >= 0) ids[g].push_back(jobs[k].id);
        else encode_text(jobs[k].text, &cache, ids[g]);
      }
    }
  });
  for (const auto& v : ids) out.insert(out.end(), v.begin(), v.end());
}

std::vector<int32_t> HfBpeTokenizer::encode(std::string_view text, const EncodeOptions& opt) const {
  std::string repaired;
  const std::string_view s = checked_utf8(text, opt.lossy, repaired);
  std::vector<int32_t> out;
  out.reserve(s.size() / 3 + prefix_.size() + suffix_.size() + 4);
  if (opt.add_bos) out.insert(out.end(), prefix_.begin(), prefix_.end());
  std::list<std::string> storage;
  std::vector<Segment> segs;
  segments(s, opt.parse_special, storage, segs);
  size_t threads = opt.threads > 0 ? size_t(opt.threads) : s.size() >= kParallelMinBytes ? bpe_threads() : 1;
  const size_t chunk = std::max<size_t>((s.size() + threads - 1) / threads, opt.threads > 0 ? 1 : kMinChunkBytes);
  threads = std::min(threads, (s.size() + chunk - 1) / chunk);
  if (threads > 1) {
    encode_parallel(segs, threads, chunk, out);
  } else {
    std::unique_lock<std::mutex> lock(cache_->mu, std::try_to_lock);
    WordCache* cache = lock.owns_lock() ? cache_.get() : nullptr;
    for (const Segment& seg : segs) {
      if (seg.id >= 0) out.push_back(seg.id);
      else encode_text(seg.text, cache, out);
    }
  }
  if (opt.add_bos) out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

}  // namespace ropepp::tok
