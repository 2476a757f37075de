// safetensors.cpp: read-only memory mappings and validated safetensors headers (single file or sharded).
//
// File layout: [u64 little-endian N][N bytes of JSON header][data section]. The header maps each tensor
// name to {dtype, shape, data_offsets: [begin, end)} with offsets relative to the data section, plus an
// optional "__metadata__" object of strings. Nothing in a file is trusted: every size is overflow-checked.
#include "safetensors.h"

#include "hardening.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_set>

namespace ropepp {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kMaxTensors = 1'000'000;  // per checkpoint (the largest real ones hold ~100k)

std::string show(const json& v) {
  std::string s = v.dump();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// Finds the first duplicate key of any object, as a SAX pass (nlohmann's DOM would keep the last one silently),
// and counts the top-level keys other than "__metadata__" (stopping past `max_keys`, before any DOM is built).
// Not a parser_callback: nlohmann's callback parser scans the parent object after every nested object ends, which
// is quadratic in the tensor count (a 55 MB header of 1M tensors took hours).
struct DuplicateKeyFinder {
  std::vector<std::unordered_set<std::string>> open_objects;
  std::string dup;
  size_t dup_depth = 0;
  size_t top_level_keys = 0;
  size_t max_keys = SIZE_MAX;
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const std::string&) { return true; }
  bool string(std::string&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) {
    open_objects.emplace_back();
    return true;
  }
  bool key(std::string& k) {
    if (open_objects.size() == 1 && k != "__metadata__" && ++top_level_keys > max_keys) return false;
    if (!open_objects.empty() && !open_objects.back().insert(k).second && dup.empty()) {
      dup = k;
      dup_depth = open_objects.size();
    }
    return true;
  }
  bool end_object() {
    if (!open_objects.empty()) open_objects.pop_back();
    return true;
  }
  bool start_array(std::size_t) { return true; }
  bool end_array() { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }
};

// Parses JSON from [begin, end) and rejects duplicate keys in any object, and more than `max_keys` top-level
// keys (besides "__metadata__"). `what` names the file for messages; `top_level_what` names a top-level key.
json parse_json_no_duplicates(const char* begin, const char* end, const std::string& what, const char* top_level_what,
                              size_t max_keys = SIZE_MAX) {
  check_json_depth(std::string_view(begin, size_t(end - begin)), what);
  DuplicateKeyFinder dups;
  dups.max_keys = max_keys;
  const bool well_formed = json::sax_parse(begin, end, &dups);  // malformed: the DOM parse below says where
  if (dups.top_level_keys > max_keys)
    fail("{}: more than {} {}s (the limit); refusing to read the rest", what, max_keys, top_level_what);
  if (well_formed && !dups.dup.empty()) {
    if (dups.dup_depth == 1) fail("{}: duplicate {} \"{}\"", what, top_level_what, dups.dup);
    fail("{}: duplicate key \"{}\" in a nested object", what, dups.dup);
  }
  try {
    return json::parse(begin, end);
  } catch (const json::parse_error& e) {
    fail("{}: malformed JSON at byte {}: {}", what, e.byte, e.what());
  } catch (const json::exception& e) {  // out_of_range.406: a number too large for a double (1e400)
    fail("{}: malformed JSON: {}", what, e.what());
  }
}

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32")
    *out = DType::F32;
  else if (s == "F16")
    *out = DType::F16;
  else if (s == "BF16")
    *out = DType::BF16;
  else
    return false;
  return true;
}

std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// A JSON value that must be a non-negative integer fitting int64.
bool as_nonneg_int(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;  // negative ints are number_integer, 1.5 is number_float
  *out = v.get<uint64_t>();
  return *out <= uint64_t(std::numeric_limits<int64_t>::max());
}

// A shard file name from an index: a plain file name inside the checkpoint directory.
void check_shard_name(const std::string& shard, const std::string& tensor, const std::string& index) {
  if (shard.empty() || shard == "." || shard == ".." || shard.find("..") != std::string::npos ||
      shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos ||
      shard.find('\0') != std::string::npos)
    fail(
        "{}: weight_map entry \"{}\" names shard \"{}\", which is not a plain file name in the checkpoint "
        "directory (no '/', '\\' or '..' allowed)",
        index, tensor, shard);
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // checked against overflow when the header was read
  return n;
}

// ---- MappedFile ------------------------------------------------------------------------------------

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open {}: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("cannot stat {}: {}", path.string(), std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{} is not a regular file", path.string());
  }
  if (st.st_size == 0) {
    ::close(fd);
    fail("{} is empty (0 bytes)", path.string());
  }
  size_ = size_t(st.st_size);
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) fail("cannot memory-map {} ({} bytes): {}", path.string(), size_, std::strerror(err));
  data_ = static_cast<const std::byte*>(p);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

// ---- SafetensorsSet --------------------------------------------------------------------------------

const TensorInfo* SafetensorsSet::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

size_t SafetensorsSet::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, t] : tensors_) n += t.nbytes;
  return n;
}

void SafetensorsSet::add_file(const fs::path& file) {
  files_.push_back(std::make_unique<MappedFile>(file));
  const MappedFile& mf = *files_.back();
  const std::string fname = file.string();

  if (mf.size() < 8)
    fail("{}: file is {} bytes, too small for the 8-byte header length of a safetensors file", fname, mf.size());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint64_t(std::to_integer<uint8_t>(mf.data()[i]));
  if (n > kMaxHeaderBytes) fail("{}: header length {} bytes exceeds the limit of {} bytes", fname, n, kMaxHeaderBytes);
  if (n > mf.size() - 8)
    fail(
        "{}: header length {} bytes runs past the end of the file ({} bytes after the length prefix; "
        "truncated file?)",
        fname, n, mf.size() - 8);
  const char* hbegin = reinterpret_cast<const char*>(mf.data() + 8);
  json header = parse_json_no_duplicates(hbegin, hbegin + n, fname + " (safetensors header)", "tensor name", kMaxTensors);
  if (!header.is_object()) fail("{}: safetensors header must be a JSON object, got {}", fname, header.type_name());
  const size_t n_tensors = header.size() - (header.contains("__metadata__") ? 1 : 0);
  if (n_tensors > kMaxTensors || tensors_.size() + n_tensors > kMaxTensors)
    fail("{}: header lists {} tensors ({} in the checkpoint so far), more than the limit of {}", fname, n_tensors,
         tensors_.size() + n_tensors, kMaxTensors);

  const std::byte* data = mf.data() + 8 + n;
  const uint64_t data_size = mf.size() - 8 - n;

  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  std::vector<TensorInfo> infos;
  infos.reserve(header.size());

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("{}: \"__metadata__\" must be an object, got {}", fname, show(entry));
      continue;
    }
    const std::string where = fmt::format("{}: tensor \"{}\"", fname, name);
    if (!entry.is_object()) fail("{}: entry must be an object, got {}", where, show(entry));
    if (!entry.contains("dtype") || !entry["dtype"].is_string())
      fail("{}: \"dtype\" must be a string, got {}", where, entry.contains("dtype") ? show(entry["dtype"]) : "nothing");
    if (!entry.contains("shape") || !entry["shape"].is_array())
      fail("{}: \"shape\" must be an array, got {}", where, entry.contains("shape") ? show(entry["shape"]) : "nothing");
    if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
      fail("{}: \"data_offsets\" must be an array [begin, end], got {}", where,
           entry.contains("data_offsets") ? show(entry["data_offsets"]) : "nothing");

    TensorInfo t;
    t.name = name;
    t.file = file;
    const std::string dtype = entry["dtype"].get<std::string>();
    if (!parse_dtype(dtype, &t.dtype))
      fail("{}: dtype \"{}\" is not supported (supported: BF16, F16, F32)", where, dtype);

    uint64_t numel = 1;
    for (const json& d : entry["shape"]) {
      uint64_t v = 0;
      if (!as_nonneg_int(d, &v))
        fail("{}: shape {} must hold non-negative integers, got {}", where, show(entry["shape"]), show(d));
      if (mul_overflows(numel, v, &numel))
        fail("{}: shape {} has more elements than fit in 64 bits", where, show(entry["shape"]));
      t.shape.push_back(int64_t(v));
    }
    uint64_t nbytes = 0;
    if (mul_overflows(numel, dtype_size(t.dtype), &nbytes) || nbytes > uint64_t(std::numeric_limits<int64_t>::max()))
      fail("{}: shape {} × {} bytes overflows", where, shape_str(t.shape), dtype_size(t.dtype));

    uint64_t b = 0, e = 0;
    const json& offs = entry["data_offsets"];
    if (!as_nonneg_int(offs[0], &b) || !as_nonneg_int(offs[1], &e))
      fail("{}: data_offsets {} must be two non-negative integers", where, show(offs));
    if (b > e) fail("{}: data_offsets [{}, {}] are reversed (begin > end)", where, b, e);
    if (e > data_size)
      fail("{}: data_offsets [{}, {}] run past the end of the data section ({} bytes; truncated file?)", where, b, e,
           data_size);
    if (e - b != nbytes)
      fail("{}: dtype {} × shape {} = {} bytes, but data_offsets [{}, {}] span {} bytes", where, dtype,
           shape_str(t.shape), nbytes, b, e, e - b);
    t.nbytes = size_t(nbytes);
    t.data = data + b;
    infos.push_back(std::move(t));
  }

  for (const TensorInfo& t : infos) {
    uint64_t b = uint64_t(t.data - data);
    ranges.push_back({b, b + t.nbytes, &t.name});
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const Range* prev = nullptr;  // the non-empty range reaching furthest so far
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;  // an empty tensor occupies no bytes
    if (prev && r.begin < prev->end)
      fail("{}: data of tensor \"{}\" [{}, {}) overlaps tensor \"{}\" [{}, {})", fname, *r.name, r.begin, r.end,
           *prev->name, prev->begin, prev->end);
    if (!prev || r.end > prev->end) prev = &r;
  }

  for (TensorInfo& t : infos) {
    auto it = tensors_.find(t.name);
    if (it != tensors_.end()) fail("duplicate tensor \"{}\": in {} and in {}", t.name, it->second.file.string(), fname);
    std::string key = t.name;
    tensors_.emplace(std::move(key), std::move(t));
  }
  spdlog::debug("{}: {} tensors, header {} bytes, data {} bytes", fname, infos.size(), n, data_size);
}

std::unique_ptr<SafetensorsSet> SafetensorsSet::open_file(const fs::path& file) {
  std::unique_ptr<SafetensorsSet> set(new SafetensorsSet());
  set->add_file(file);
  return set;
}

std::unique_ptr<SafetensorsSet> SafetensorsSet::open_dir(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail("checkpoint directory {} does not exist", dir.string());
  if (!fs::is_directory(dir, ec)) fail("checkpoint path {} is not a directory", dir.string());

  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(single, ec)) {
    if (fs::exists(index, ec)) spdlog::debug("{}: using model.safetensors, ignoring the index", dir.string());
    return open_file(single);
  }
  if (!fs::exists(index, ec)) {
    std::vector<std::string> others;
    for (const auto& de : fs::directory_iterator(dir, ec))
      if (de.path().extension() == ".safetensors") others.push_back(de.path().filename().string());
    std::sort(others.begin(), others.end());
    fail("no safetensors weights in {}: looked for model.safetensors and model.safetensors.index.json{}", dir.string(),
         others.empty() ? std::string() : fmt::format(" (found {})", fmt::join(others, ", ")));
  }

  // Sharded: {"metadata": {...}, "weight_map": {tensor: shard_file}}.
  const std::string iname = index.string();
  std::string text;
  {
    std::ifstream in(index, std::ios::binary);
    if (!in) fail("cannot open {}: {}", iname, std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  json j = parse_json_no_duplicates(text.data(), text.data() + text.size(), iname, "key");
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    fail("{}: expected an object with a \"weight_map\" object", iname);
  const json& wm = j["weight_map"];
  if (wm.empty()) fail("{}: weight_map is empty", iname);
  std::set<std::string> shards;
  for (const auto& [tensor, shard] : wm.items()) {
    if (!shard.is_string())
      fail("{}: weight_map entry \"{}\" must be a shard file name, got {}", iname, tensor, show(shard));
    check_shard_name(shard.get<std::string>(), tensor, iname);
    shards.insert(shard.get<std::string>());
  }

  std::unique_ptr<SafetensorsSet> set(new SafetensorsSet());
  for (const std::string& s : shards) {
    const fs::path p = dir / s;
    if (!fs::exists(p, ec)) fail("{}: shard {} does not exist ({} is missing)", iname, s, p.string());
    set->add_file(p);
  }
  for (const auto& [tensor, shard] : wm.items()) {
    const std::string s = shard.get<std::string>();
    const TensorInfo* t = set->find(tensor);
    if (!t) fail("{}: tensor \"{}\" is mapped to shard {}, but {} has no such tensor", iname, tensor, s, s);
    if (t->file.filename() != s)
      fail("{}: tensor \"{}\" is mapped to shard {}, but it is in {}", iname, tensor, s, t->file.filename().string());
  }
  for (const auto& [name, t] : set->tensors())
    if (!wm.contains(name))
      spdlog::debug("{}: tensor {} in {} is not listed in the index", iname, name, t.file.string());
  return set;
}

}  // namespace ropepp
