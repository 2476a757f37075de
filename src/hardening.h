// hardening.h: limits applied to untrusted input before anything is built from it (see docs/RELIABILITY.md).
//   - JSON nesting depth, checked on the raw text of every JSON file ropepp reads (config.json, safetensors
//     headers and index, tokenizer.json and the configs beside it): nlohmann parses any depth iteratively,
//     but dump(), copies and comparisons recurse, so a 200 KB file of '[' would overflow the stack.
//   - the host memory actually available (MemAvailable), for allocations sized by a flag (the KV pool).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "common.h"

namespace ropepp {

// Real files nest 4–8 levels deep.
inline constexpr size_t kMaxJsonDepth = 256;

// Throws an Error naming `what` when objects/arrays in `text` nest deeper than kMaxJsonDepth (brackets inside
// strings do not count). Malformed JSON is left to the parser.
inline void check_json_depth(std::string_view text, const std::string& what) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        fail("{}: JSON nested deeper than {} levels (at byte {}); refusing to read it", what, kMaxJsonDepth, i);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

// MemAvailable from /proc/meminfo in bytes; 0 when it cannot be read (not Linux, no /proc).
inline uint64_t host_memory_available() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  uint64_t kb = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long long v = 0;
    if (std::sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
      kb = v;
      break;
    }
  }
  std::fclose(f);
  uint64_t bytes = 0;
  return mul_overflows(kb, 1024, &bytes) ? UINT64_MAX : bytes;
}

}  // namespace ropepp
