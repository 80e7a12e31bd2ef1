//===- Checkpoint.cpp - Saving and resuming a training run ----------------===//
//
// Implements Checkpoint.h.
//
//===----------------------------------------------------------------------===//
#include "Checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <utility>

namespace fcc::trainer {

static_assert(std::endian::native == std::endian::little,
              "the checkpoint format is little-endian; add byte swapping");

namespace {

const char kMagic[8] = {'F', 'C', 'C', 'C', 'K', 'P', 'T', '\0'};
const char kPrefix[] = "checkpoint-";
const char kSuffix[] = ".fcc";

class Writer {
public:
  std::vector<uint8_t> bytes;
  template <typename T> void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const uint8_t *p = reinterpret_cast<const uint8_t *>(&v);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  void putString(const std::string &s) {
    put(uint32_t(s.size()));
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  template <typename T> void patch(size_t at, T v) {
    std::memcpy(bytes.data() + at, &v, sizeof(T));
  }
};

class Reader {
public:
  Reader(const uint8_t *data, size_t size, const std::string &what)
      : data_(data), size_(size), what_(what) {}
  template <typename T> T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, data_ + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  std::string getString() {
    uint32_t n = get<uint32_t>();
    need(n);
    std::string s(reinterpret_cast<const char *>(data_ + at_), n);
    at_ += n;
    return s;
  }
  size_t offset() const { return at_; }

private:
  void need(size_t n) {
    if (n > size_ - at_)
      throw CheckpointError(what_ + ": malformed checkpoint (a field runs "
                                    "past the end of the data)");
  }
  const uint8_t *data_;
  size_t size_, at_ = 0;
  const std::string &what_;
};

std::string errnoText() { return std::strerror(errno); }

// Steps in a file name "checkpoint-NNNNNN.fcc", or -1.
int64_t stepOf(const std::string &name) {
  size_t p = sizeof(kPrefix) - 1, s = sizeof(kSuffix) - 1;
  if (name.size() <= p + s || name.compare(0, p, kPrefix) != 0 ||
      name.compare(name.size() - s, s, kSuffix) != 0)
    return -1;
  std::string digits = name.substr(p, name.size() - p - s);
  if (digits.empty() || digits.size() > 18 ||
      digits.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  return std::stoll(digits);
}

} // namespace

uint64_t fnv1a64(const uint8_t *data, size_t size) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) {
    h ^= data[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

std::vector<uint8_t> serialiseCheckpoint(const Checkpoint &c) {
  Writer w;
  w.bytes.insert(w.bytes.end(), kMagic, kMagic + 8);
  w.put(kCheckpointVersion);
  w.put(uint32_t(0));
  size_t offsets = w.bytes.size();
  w.put(uint64_t(0)); // payload offset, patched below
  w.put(uint64_t(0)); // payload bytes
  w.put(c.planHash);
  w.putString(c.target);
  w.putString(c.precision);
  w.put(int64_t(c.batch));
  w.put(uint64_t(c.seed));
  w.put(int32_t(c.run));
  w.put(int32_t(c.epoch));
  w.put(int64_t(c.stepInEpoch));
  w.put(int64_t(c.step));
  w.put(int64_t(c.trainImages));
  w.put(double(c.lossScale));
  w.put(int64_t(c.cleanSteps));
  for (double s : c.sums)
    w.put(s);
  w.put(c.epochTime);
  w.put(c.totalTime);
  w.put(int32_t(c.summaryEpochs));
  w.put(c.testAcc);
  w.put(c.testLoss);
  w.put(c.trainTime);
  w.put(int64_t(c.summaryTrainImages));
  w.put(int32_t(c.targetEpoch));
  w.put(c.targetTime);
  w.putString(c.settings);
  w.put(uint32_t(c.tensors.size()));
  uint64_t payload = 0;
  for (const CheckpointTensor &t : c.tensors) {
    w.putString(t.name);
    w.put(uint8_t(t.kind));
    w.put(uint32_t(t.index));
    w.put(int64_t(t.values.size()));
    payload += uint64_t(t.values.size()) * sizeof(float);
  }
  w.patch(offsets, uint64_t(w.bytes.size()));
  w.patch(offsets + 8, payload);
  w.bytes.reserve(w.bytes.size() + payload + 8);
  for (const CheckpointTensor &t : c.tensors) {
    const uint8_t *p = reinterpret_cast<const uint8_t *>(t.values.data());
    w.bytes.insert(w.bytes.end(), p, p + t.values.size() * sizeof(float));
  }
  w.put(fnv1a64(w.bytes.data(), w.bytes.size()));
  return std::move(w.bytes);
}

Checkpoint parseCheckpoint(const std::vector<uint8_t> &bytes,
                           const std::string &what) {
  if (bytes.size() < 16 || std::memcmp(bytes.data(), kMagic, 8) != 0)
    throw CheckpointError(what + ": not an fcc checkpoint (no FCCCKPT "
                                 "header)");
  uint32_t version;
  std::memcpy(&version, bytes.data() + 8, 4);
  if (version != kCheckpointVersion)
    throw CheckpointError(what + ": checkpoint format version " +
                          std::to_string(version) + ", but this trainer "
                          "reads version " +
                          std::to_string(kCheckpointVersion));
  if (bytes.size() < 40)
    throw CheckpointError(what + ": checksum mismatch: the file is torn or "
                                 "corrupt (only " +
                          std::to_string(bytes.size()) + " bytes)");
  size_t body = bytes.size() - 8;
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + body, 8);
  if (fnv1a64(bytes.data(), body) != stored)
    throw CheckpointError(what + ": checksum mismatch: the file is torn or "
                                 "corrupt");

  Reader r(bytes.data(), body, what);
  r.get<uint64_t>(); // magic
  r.get<uint32_t>(); // version
  r.get<uint32_t>();
  uint64_t payloadOffset = r.get<uint64_t>();
  uint64_t payloadBytes = r.get<uint64_t>();
  Checkpoint c;
  c.planHash = r.get<uint64_t>();
  c.target = r.getString();
  c.precision = r.getString();
  c.batch = r.get<int64_t>();
  c.seed = r.get<uint64_t>();
  c.run = r.get<int32_t>();
  c.epoch = r.get<int32_t>();
  c.stepInEpoch = r.get<int64_t>();
  c.step = r.get<int64_t>();
  c.trainImages = r.get<int64_t>();
  c.lossScale = r.get<double>();
  c.cleanSteps = r.get<int64_t>();
  for (double &s : c.sums)
    s = r.get<double>();
  c.epochTime = r.get<double>();
  c.totalTime = r.get<double>();
  c.summaryEpochs = r.get<int32_t>();
  c.testAcc = r.get<double>();
  c.testLoss = r.get<double>();
  c.trainTime = r.get<double>();
  c.summaryTrainImages = r.get<int64_t>();
  c.targetEpoch = r.get<int32_t>();
  c.targetTime = r.get<double>();
  c.settings = r.getString();
  uint32_t count = r.get<uint32_t>();
  uint64_t total = 0;
  std::vector<int64_t> numels;
  for (uint32_t i = 0; i < count; ++i) {
    CheckpointTensor t;
    t.name = r.getString();
    uint8_t kind = r.get<uint8_t>();
    if (kind > CheckpointTensor::kCommState)
      throw CheckpointError(what + ": malformed checkpoint (tensor kind " +
                            std::to_string(kind) + ")");
    t.kind = CheckpointTensor::Kind(kind);
    t.index = r.get<uint32_t>();
    int64_t numel = r.get<int64_t>();
    if (numel < 0 || uint64_t(numel) > body / sizeof(float))
      throw CheckpointError(what + ": malformed checkpoint (tensor '" +
                            t.name + "' has " + std::to_string(numel) +
                            " values)");
    total += uint64_t(numel) * sizeof(float);
    numels.push_back(numel);
    c.tensors.push_back(std::move(t));
  }
  if (payloadOffset != r.offset() || payloadBytes != total ||
      payloadOffset + payloadBytes != body)
    throw CheckpointError(what + ": malformed checkpoint (the tensor table "
                                 "does not match the payload)");
  const uint8_t *p = bytes.data() + payloadOffset;
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    std::vector<float> &v = c.tensors[i].values;
    v.resize(size_t(numels[i]));
    std::memcpy(v.data(), p, v.size() * sizeof(float));
    p += v.size() * sizeof(float);
  }
  return c;
}

std::string checkpointPath(const std::string &dir, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "%s%06lld%s", kPrefix, (long long)step,
                kSuffix);
  return (std::filesystem::path(dir) / name).string();
}

std::vector<std::string> listCheckpoints(const std::string &dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto &entry : std::filesystem::directory_iterator(dir, ec)) {
    int64_t step = stepOf(entry.path().filename().string());
    if (step >= 0 && entry.is_regular_file(ec))
      found.emplace_back(step, entry.path().string());
  }
  std::sort(found.begin(), found.end(),
            [](const auto &a, const auto &b) { return a.first > b.first; });
  std::vector<std::string> paths;
  for (auto &f : found)
    paths.push_back(std::move(f.second));
  return paths;
}

std::string writeCheckpoint(const std::string &dir, const Checkpoint &c,
                            int keep) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    throw CheckpointError("cannot create the checkpoint directory '" + dir +
                          "': " + ec.message());
  std::vector<uint8_t> bytes = serialiseCheckpoint(c);
  std::string path = checkpointPath(dir, c.step);
  std::string tmp = (std::filesystem::path(dir) /
                     (".checkpoint.tmp." + std::to_string(::getpid())))
                        .string();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0)
    throw CheckpointError("cannot create '" + tmp + "': " + errnoText());
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      std::string why = errnoText();
      ::close(fd);
      ::unlink(tmp.c_str());
      throw CheckpointError("cannot write '" + tmp + "': " + why);
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    std::string why = errnoText();
    ::unlink(tmp.c_str());
    throw CheckpointError("cannot write '" + tmp + "': " + why);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = errnoText();
    ::unlink(tmp.c_str());
    throw CheckpointError("cannot rename '" + tmp + "' to '" + path +
                          "': " + why);
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  if (keep > 0) {
    std::vector<std::string> all = listCheckpoints(dir);
    for (size_t i = size_t(keep); i < all.size(); ++i)
      if (stepOf(std::filesystem::path(all[i]).filename().string()) < c.step)
        std::filesystem::remove(all[i], ec);
  }
  return path;
}

Checkpoint readCheckpoint(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw CheckpointError(path + ": cannot read: " + errnoText());
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  if (in.bad())
    throw CheckpointError(path + ": cannot read: " + errnoText());
  return parseCheckpoint(bytes, path);
}

} // namespace fcc::trainer
