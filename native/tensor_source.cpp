#include "tensor_source.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace hm {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::BF16: return 2;
    case DType::F32: return 4;
    case DType::U8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "BF16";
    case DType::F32: return "F32";
    case DType::U8: return "U8";
  }
  return "?";
}

void read_tensor_range(const TensorSource& t, uint64_t start, uint64_t len, void* dst) {
  if (start + len > t.nbytes)
    throw std::runtime_error(t.file + ": tensor " + t.name + ": read past its byte range");
  int fd = ::open(t.file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(t.file + ": cannot open (" + std::strerror(errno) + ")");
  char* out = static_cast<char*>(dst);
  uint64_t done = 0;
  while (done < len) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(len - done, 64ull << 20));
    ssize_t got = ::pread(fd, out + done, chunk, static_cast<off_t>(t.offset + start + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      int err = errno;
      ::close(fd);
      throw std::runtime_error(t.file + ": tensor " + t.name + ": short read" +
                               (got < 0 ? std::string(" (") + std::strerror(err) + ")" : std::string(" (file truncated?)")));
    }
    done += static_cast<uint64_t>(got);
  }
  ::close(fd);
}

void read_tensor(const TensorSource& t, void* dst) { read_tensor_range(t, 0, t.nbytes, dst); }

const TensorSource& find_tensor(const TensorMap& m, const std::string& name) {
  auto it = m.find(name);
  if (it == m.end()) throw std::runtime_error("checkpoint: missing tensor " + name);
  return it->second;
}

}  // namespace hm
