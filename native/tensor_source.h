// Where one checkpoint tensor lives on disk. The TypeScript loader has already validated the safetensors
// header (ranges, dtypes, shapes against the config); native code only reads the bytes it is pointed at.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace hm {

enum class DType { BF16, F32, U8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);

struct TensorSource {
  std::string name;
  std::string file;
  uint64_t offset = 0;  // absolute byte offset in the file (8 + header length + data_offsets[0])
  uint64_t nbytes = 0;
  DType dtype = DType::BF16;
  std::vector<int64_t> shape;
};

using TensorMap = std::unordered_map<std::string, TensorSource>;

// Called from the loading thread with bytes done / bytes total.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

// Reads a tensor's bytes into dst (which holds nbytes) with pread in chunks; never maps or slurps a whole file.
// Throws std::runtime_error naming the file and the tensor on any short read.
void read_tensor(const TensorSource& t, void* dst);

// Reads [start, start+len) of a tensor's bytes. Used to stream large tensors through a small staging buffer.
void read_tensor_range(const TensorSource& t, uint64_t start, uint64_t len, void* dst);

// Looks a tensor up by name; throws a clear error if the loader did not hand it over.
const TensorSource& find_tensor(const TensorMap& m, const std::string& name);

}  // namespace hm
