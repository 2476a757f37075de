// npy.cpp: see npy.h. Format: magic "\x93NUMPY", version 1.0, uint16 header length, a Python dict literal
// padded with spaces and a newline so that the data starts at a multiple of 64 bytes.
#include "npy.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common.h"

namespace ropepp {

void write_npy_f32(const std::filesystem::path& file, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t count = 1;
  for (int64_t d : shape) {
    dims += fmt::format("{}, ", d);
    count *= d;
  }
  // "(3, 4)"; a 1-d shape keeps its comma: "(3,)"
  if (!dims.empty()) dims.resize(dims.size() - (shape.size() > 1 ? 2 : 1));
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims);
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');

  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(file.c_str(), "wb"), std::fclose);
  if (!f) fail("cannot write {}: {}", file.string(), std::strerror(errno));
  const uint16_t hlen = uint16_t(header.size());
  const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  bool ok = std::fwrite(magic, 1, 8, f.get()) == 8;
  const unsigned char hl[2] = {uint8_t(hlen & 0xff), uint8_t(hlen >> 8)};
  ok = ok && std::fwrite(hl, 1, 2, f.get()) == 2;
  ok = ok && std::fwrite(header.data(), 1, header.size(), f.get()) == header.size();
  ok = ok && std::fwrite(data, sizeof(float), size_t(count), f.get()) == size_t(count);
  if (!ok || std::fflush(f.get()) != 0) fail("cannot write {}: {}", file.string(), std::strerror(errno));
}

}  // namespace ropepp
