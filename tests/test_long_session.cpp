// test_long_session.cpp: a scripted 1,000-turn conversation through Session + generate() with a small context
// that overflows again and again (docs/RELIABILITY.md). The context is managed the way a chat front end does:
// when the next turn does not fit, everything after the system prompt is forgotten (Session::truncate); every
// 7th turn also sends a prompt that cannot fit (an Error that must leave the session unchanged). Checked after
// every turn: the session never exceeds the context, the KV cache holds exactly the blocks its tokens need;
// at the end, and after a reset, the block pool is back to its starting level and the live heap (and RSS) is
// where it was after warm-up: nothing accumulates over a long session.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>

#include "generate.h"
#include "testing_checkpoint.h"
#include "testing_tokenizer.h"

#if defined(__SANITIZE_ADDRESS__)
#define ROPEPP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ROPEPP_ASAN 1
#endif
#endif
#ifdef ROPEPP_ASAN
extern "C" size_t __sanitizer_get_current_allocated_bytes();  // sanitizer/allocator_interface.h (not with every gcc)
#else
#include <malloc.h>
#endif

namespace ropepp {
namespace {

// Bytes of live heap allocations (ASan's count under ASan, glibc's otherwise).
size_t live_heap_bytes() {
#ifdef ROPEPP_ASAN
  return __sanitizer_get_current_allocated_bytes();
#else
  return mallinfo2().uordblks + mallinfo2().hblkhd;
#endif
}

size_t rss_bytes() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return size_t(resident) * size_t(sysconf(_SC_PAGESIZE));
}

TEST(LongSession, ThousandTurnsWithRepeatedOverflowReturnToBaseline) {
  const auto dir = std::filesystem::temp_directory_path() / ("ropepp_test_long_session_" + std::to_string(getpid()));
  testing::TinySpec spec;
  spec.mode = "ec";
  testing::write_tiny_checkpoint(dir, spec);
  testing::write_tiny_tokenizer(dir);
  auto ck = load_checkpoint(dir);
  auto be = make_cpu_backend(1);
  ModelOptions opt;
  opt.n_ctx = 96;
  Model model(*ck, *be, opt);
  auto tok = Tokenizer::from_dir(dir);
  KVCache& cache = model.cache();
  const int free0 = cache.free_blocks();
  const int bs = cache.block_size();

  SamplerParams sp;
  sp.seed = 11;
  Sampler sampler(sp);
  GenerateParams gp;
  gp.n_predict = 12;
  gp.stop_at_eos = false;
  gp.stop = {"\n\n"};

  const char* words[] = {"hello", "world", "the", "whale", "sea", "ship", "night", "storm", "captain", "harbour"};
  std::mt19937 rng(5);
  size_t rss_warm = 0, heap_warm = 0;
  int overflows = 0, rejected = 0, context_stops = 0;
  {
    Session s(model);
    const std::vector<int32_t> system = tok->encode("You are a test.");
    s.feed(system);
    const size_t keep = s.tokens().size();
    for (int turn = 0; turn < 1000; ++turn) {
      std::string user = "turn " + std::to_string(turn) + ":";
      for (int w = 0, n = 2 + int(rng() % 10); w < n; ++w) user += std::string(" ") + words[rng() % 10];
      EncodeOptions eo;
      eo.add_bos = false;
      std::vector<int32_t> ids = tok->encode(user, eo);

      if (turn % 7 == 3) {  // a prompt that cannot fit: an Error, and the session is as it was
        std::vector<int32_t> huge(size_t(opt.n_ctx) + 1, ids[0]);
        const std::vector<int32_t> before = s.tokens();
        const int free_before = cache.free_blocks();
        EXPECT_THROW(generate(s, *tok, huge, sampler, gp, nullptr), Error) << "turn " << turn;
        EXPECT_EQ(s.tokens(), before) << "turn " << turn;
        EXPECT_EQ(cache.free_blocks(), free_before) << "turn " << turn;
        ++rejected;
      }
      // Make room the way a chat front end does: forget everything after the system prompt. Every 5th turn
      // leaves no room for the whole reply, so generation runs into the end of the context.
      const size_t reserve = turn % 5 == 0 ? 2 : size_t(gp.n_predict);
      if (s.tokens().size() + ids.size() + reserve > s.n_ctx()) {
        s.truncate(keep);
        ++overflows;
      }
      const GenerateResult r = generate(s, *tok, ids, sampler, gp, nullptr);
      context_stops += r.stop_reason == "context";
      ASSERT_LE(r.tokens.size(), size_t(gp.n_predict)) << "turn " << turn;
      ASSERT_LE(s.tokens().size(), s.n_ctx()) << "turn " << turn;
      // The cache holds exactly the blocks the session's tokens need.
      const int used = cache.total_blocks() - cache.free_blocks();
      ASSERT_EQ(used, int((s.tokens().size() + size_t(bs) - 1) / size_t(bs))) << "turn " << turn;
      if (turn == 99) {
        rss_warm = rss_bytes();
        heap_warm = live_heap_bytes();
      }
    }
    const size_t heap_end = live_heap_bytes(), rss_end = rss_bytes();
    EXPECT_GT(overflows, 100);
    EXPECT_GT(context_stops, 0);
    EXPECT_EQ(rejected, 143);
    // Nothing accumulates: the live heap after 900 more turns is within 1 MiB of its level after 100 turns
    // (the tokenizer's word cache and the sampler's scratch are sized by then), RSS within 32 MiB (under ASan,
    // freed memory sits in its quarantine, up to 256 MiB, so RSS says little there: the heap count is exact).
#ifdef ROPEPP_ASAN
    const size_t rss_slack = size_t(320) << 20;
#else
    const size_t rss_slack = size_t(32) << 20;
#endif
    EXPECT_LT(heap_end, heap_warm + (1u << 20)) << "live heap grew from " << heap_warm << " to " << heap_end;
    EXPECT_LT(rss_end, rss_warm + rss_slack) << "RSS grew from " << rss_warm << " to " << rss_end;
    std::printf("long session: %d context overflows, %d rejected prompts, %d replies cut by the context; live heap "
                "%zu -> %zu bytes, RSS %zu -> %zu KiB (turn 100 -> 1000)\n",
                overflows, rejected, context_stops, heap_warm, heap_end, rss_warm >> 10, rss_end >> 10);

    // A reset returns every block to the pool, and the session is usable again.
    s.truncate(0);
    EXPECT_EQ(cache.free_blocks(), free0);
    EXPECT_TRUE(s.tokens().empty());
    const GenerateResult r = generate(s, *tok, system, sampler, gp, nullptr);
    EXPECT_FALSE(r.tokens.empty());
  }
  EXPECT_EQ(cache.free_blocks(), free0);  // the session's slot and blocks are released with it
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace
}  // namespace ropepp
