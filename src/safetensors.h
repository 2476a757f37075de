// safetensors.h: memory-mapped safetensors files (single file or sharded with an index), validated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common.h"

namespace ropepp {

// One tensor inside a mapped file. `data` points into the mapping (zero-copy) and stays valid while
// the SafetensorsSet that produced it is alive.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;        // as written in the header, outermost first
  const std::byte* data = nullptr;   // first byte of the tensor in the mapping
  size_t nbytes = 0;                 // product(shape) * dtype_size(dtype), checked against the offsets
  std::filesystem::path file;        // the shard it lives in (for messages)

  int64_t numel() const;
};

// A read-only memory mapping of one file.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);  // throws Error
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// All tensors of a checkpoint directory: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json` (weight_map). Every header is validated when opened: JSON well formed
// and within 100 MB, dtypes known (BF16/F16/F32; others rejected by name), shapes non-negative,
// data_offsets [begin, end) ordered, inside the file's data section and not overlapping,
// dtype size × numel == end − begin, no duplicate names across shards, every index entry present in
// the shard it names.
class SafetensorsSet {
 public:
  static std::unique_ptr<SafetensorsSet> open_dir(const std::filesystem::path& dir);
  static std::unique_ptr<SafetensorsSet> open_file(const std::filesystem::path& file);

  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  size_t total_bytes() const;

 private:
  void add_file(const std::filesystem::path& file);
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace ropepp
