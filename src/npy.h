// npy.h: write float32 arrays as NumPy .npy files (format 1.0), for `ropepp score --logits-out`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace ropepp {

// Writes data (row-major, shape dims) as '<f4'. Throws Error naming the file on I/O failure.
void write_npy_f32(const std::filesystem::path& file, const float* data, const std::vector<int64_t>& shape);

}  // namespace ropepp
