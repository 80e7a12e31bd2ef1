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
#include <limits>
#include <cmath>
#include <stdexcept>
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
  void skip(size_t n) {
    need(n);
    at_ += n;
  }

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
// Steps in a file name PREFIX NNNNNN ".fcc", or -1.
int64_t stepIn(const std::string &name, const std::string &prefix) {
  size_t p = prefix.size(), s = sizeof(kSuffix) - 1;
  if (name.size() <= p + s || name.compare(0, p, prefix) != 0 ||
      name.compare(name.size() - s, s, kSuffix) != 0)
    return -1;
  std::string digits = name.substr(p, name.size() - p - s);
  if (digits.empty() || digits.size() > 18 ||
      digits.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  return std::stoll(digits);
}
int64_t stepOf(const std::string &name) { return stepIn(name, kPrefix); }

// DIR/PREFIX NNNNNN .fcc
std::string stepPath(const std::string &dir, const char *prefix,
                     int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "%s%06lld%s", prefix, (long long)step,
                kSuffix);
  return (std::filesystem::path(dir) / name).string();
}

// The PREFIX files of DIR, most steps first.
std::vector<std::string> listStepFiles(const std::string &dir,
                                       const char *prefix) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto &entry : std::filesystem::directory_iterator(dir, ec)) {
    int64_t step = stepIn(entry.path().filename().string(), prefix);
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

// The position fields of a checkpoint, from `target` to `settings`.
void putPosition(Writer &w, const Checkpoint &c) {
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
}

void getPosition(Reader &r, Checkpoint &c) {
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
}

// Writes `bytes` to `path` (in `dir`) atomically: a temporary file in DIR,
// fsync, rename, fsync of DIR.
void writeAtomically(const std::string &dir, const std::string &path,
                     const std::vector<uint8_t> &bytes) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    throw CheckpointError("cannot create the checkpoint directory '" + dir +
                          "': " + ec.message());
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
}

std::vector<uint8_t> readFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw CheckpointError(path + ": cannot read: " + errnoText());
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  if (in.bad())
    throw CheckpointError(path + ": cannot read: " + errnoText());
  return bytes;
}

// The framing shared by full and delta checkpoints: 8 magic bytes (whose
// tag is the first 7), a u32 format version, ..., and an FNV-1a 64 of every
// byte before the last 8. Checks it and returns the size without the
// checksum; `kind` is "checkpoint" or "delta checkpoint" for messages.
size_t checkFraming(const std::vector<uint8_t> &bytes, const std::string &what,
                    const char *magic, const std::string &kind,
                    uint32_t wantVersion, size_t minSize) {
  if (bytes.size() < 16 || std::memcmp(bytes.data(), magic, 8) != 0)
    throw CheckpointError(what + ": not an fcc " + kind + " (no " +
                          std::string(magic, 7) + " header)");
  uint32_t version;
  std::memcpy(&version, bytes.data() + 8, 4);
  if (version != wantVersion)
    throw CheckpointError(what + ": " + kind.substr(0, kind.find(' ')) +
                          " format version " + std::to_string(version) +
                          ", but this trainer reads version " +
                          std::to_string(wantVersion));
  if (bytes.size() < minSize)
    throw CheckpointError(what + ": checksum mismatch: the file is torn or "
                                 "corrupt (only " +
                          std::to_string(bytes.size()) + " bytes)");
  size_t body = bytes.size() - 8;
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + body, 8);
  if (fnv1a64(bytes.data(), body) != stored)
    throw CheckpointError(what + ": checksum mismatch: the file is torn or "
                                 "corrupt");
  return body;
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
  putPosition(w, c);
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
  size_t body = checkFraming(bytes, what, kMagic, "checkpoint",
                             kCheckpointVersion, 40);

  Reader r(bytes.data(), body, what);
  r.get<uint64_t>(); // magic
  r.get<uint32_t>(); // version
  r.get<uint32_t>();
  uint64_t payloadOffset = r.get<uint64_t>();
  uint64_t payloadBytes = r.get<uint64_t>();
  Checkpoint c;
  std::memcpy(&c.checksum, bytes.data() + body, 8);
  c.planHash = r.get<uint64_t>();
  getPosition(r, c);
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

// Writes `bytes` atomically and records its size and checksum (the last 8
// bytes) in `written` when given.
static void writeRecorded(const std::string &dir, const std::string &path,
                          const std::vector<uint8_t> &bytes,
                          WrittenFile *written) {
  writeAtomically(dir, path, bytes);
  if (written) {
    std::memcpy(&written->checksum, bytes.data() + bytes.size() - 8, 8);
    written->bytes = bytes.size();
  }
}

std::string checkpointPath(const std::string &dir, int64_t step) {
  return stepPath(dir, kPrefix, step);
}

std::vector<std::string> listCheckpoints(const std::string &dir) {
  return listStepFiles(dir, kPrefix);
}

std::string writeCheckpoint(const std::string &dir, const Checkpoint &c,
                            int keep, WrittenFile *written) {
  std::string path = checkpointPath(dir, c.step);
  writeRecorded(dir, path, serialiseCheckpoint(c), written);
  if (keep > 0) {
    std::error_code ec;
    std::vector<std::string> all = listCheckpoints(dir);
    bool removed = false;
    for (size_t i = size_t(keep); i < all.size(); ++i)
      if (stepOf(std::filesystem::path(all[i]).filename().string()) <
          c.step) {
        std::filesystem::remove(all[i], ec);
        removed = true;
      }
    // Deltas of a removed base can no longer be restored.
    if (removed)
      for (const std::string &delta : listDeltas(dir)) {
        std::string base;
        try {
          base = readDelta(delta).baseName;
        } catch (const CheckpointError &) {
          continue; // torn: left for the user to see
        }
        if (!std::filesystem::exists(std::filesystem::path(dir) / base, ec))
          std::filesystem::remove(delta, ec);
      }
  }
  return path;
}

Checkpoint readCheckpoint(const std::string &path) {
  return parseCheckpoint(readFile(path), path);
}

//===- Delta checkpoints ---------------------------------------------------===//

namespace {

const char kDeltaMagic[8] = {'F', 'C', 'C', 'D', 'E', 'L', 'T', '\0'};
const char kDeltaPrefix[] = "delta-";

std::string shortest(double v) {
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v)
      break;
  }
  return buf;
}

int64_t stepOfDelta(const std::string &name) {
  return stepIn(name, kDeltaPrefix);
}

void putVarint(std::vector<uint8_t> &out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(uint8_t(v) | 0x80);
    v >>= 7;
  }
  out.push_back(uint8_t(v));
}

uint64_t varintBytes(uint64_t v) {
  uint64_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// |change| for the ordering (NaN sorts first, as the largest).
double magnitude(float cur, float base) {
  double d = std::fabs(double(cur) - double(base));
  return std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
}

bool sameBits(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

// The index coding of a tensor of n entries with `indices` selected, and
// its index bytes.
DeltaTensor::Coding chooseCoding(const std::vector<uint32_t> &indices,
                                 int64_t n, size_t valueBytes,
                                 uint64_t &indexBytes) {
  uint64_t gaps = 0;
  int64_t prev = -1;
  for (uint32_t i : indices) {
    gaps += varintBytes(uint64_t(int64_t(i) - prev - 1));
    prev = i;
  }
  uint64_t bitmap = uint64_t((n + 7) / 8);
  uint64_t k = indices.size();
  // Every entry: n values and no indices (the unselected entries repeat the
  // base: q = 0, or the unchanged value).
  uint64_t every = uint64_t(n) * valueBytes;
  uint64_t sparse = std::min(gaps, bitmap) + k * valueBytes;
  if (every <= sparse) {
    indexBytes = 0;
    return DeltaTensor::kEvery;
  }
  indexBytes = std::min(gaps, bitmap);
  return gaps <= bitmap ? DeltaTensor::kGaps : DeltaTensor::kBitmap;
}

} // namespace

DeltaSpec DeltaSpec::parse(const std::string &text) {
  DeltaSpec s;
  if (text == "full")
    return s;
  std::vector<std::string> parts;
  std::string rest = text;
  for (size_t at; (at = rest.find(':')) != std::string::npos;
       rest = rest.substr(at + 1))
    parts.push_back(rest.substr(0, at));
  parts.push_back(rest);
  const std::string usage =
      "'" + text + "' is not full, delta:topk:K (0 < K <= 1) or "
      "delta:threshold:V (V >= 0), optionally followed by :q8";
  if (parts.size() < 3 || parts.size() > 4 || parts[0] != "delta" ||
      (parts[1] != "topk" && parts[1] != "threshold") ||
      (parts.size() == 4 && parts[3] != "q8"))
    throw std::invalid_argument(usage);
  s.mode = parts[1] == "topk" ? kTopK : kThreshold;
  s.q8 = parts.size() == 4;
  const std::string &number = parts[2];
  char *end = nullptr;
  double v = std::strtod(number.c_str(), &end);
  if (number.empty() || *end != '\0' || !std::isfinite(v))
    throw std::invalid_argument("'" + number + "' in '" + text +
                                "' is not a finite number; " + usage);
  if (s.mode == kTopK && !(v > 0 && v <= 1))
    throw std::invalid_argument("the top-K fraction K of '" + text +
                                "' must be in (0, 1] (got " + number +
                                "): 0.01 keeps the 1% largest changes");
  if (s.mode == kThreshold && !(v >= 0))
    throw std::invalid_argument("the threshold V of '" + text +
                                "' must be >= 0 (got " + number +
                                "): entries that changed by at least V are "
                                "kept");
  s.value = v;
  return s;
}

std::string DeltaSpec::toString() const {
  if (mode == kFull)
    return "full";
  return std::string("delta:") + (mode == kTopK ? "topk:" : "threshold:") +
         shortest(value) + (q8 ? ":q8" : "");
}

int64_t DeltaSpec::topK(int64_t n) const {
  if (n <= 0)
    return 0;
  if (value >= 1)
    return n;
  double t = value * double(n);
  double nearest = std::nearbyint(t);
  double k = std::fabs(t - nearest) <= 1e-9 * nearest ? nearest : std::ceil(t);
  return std::clamp(int64_t(k), int64_t(1), n);
}

Delta makeDelta(const Checkpoint &base, const std::string &baseName,
                const Checkpoint &current, const DeltaSpec &spec,
                const std::vector<bool> &whole) {
  if (!spec.delta())
    throw CheckpointError("makeDelta: not a delta mode");
  Delta d;
  d.position = current;
  d.position.tensors.clear();
  d.position.checksum = 0;
  d.baseName = baseName;
  d.baseChecksum = base.checksum;
  d.baseStep = base.step;
  d.spec = spec;
  std::vector<uint32_t> changed;
  std::vector<double> mag;
  for (size_t t = 0; t < current.tensors.size(); ++t) {
    const CheckpointTensor &cur = current.tensors[t];
    if (cur.kind != CheckpointTensor::kParam &&
        cur.kind != CheckpointTensor::kEma)
      continue;
    const CheckpointTensor *b = nullptr;
    for (const CheckpointTensor &candidate : base.tensors)
      if (candidate.kind == cur.kind && candidate.index == cur.index &&
          candidate.name == cur.name) {
        b = &candidate;
        break;
      }
    if (!b || b->values.size() != cur.values.size())
      throw CheckpointError(baseName + ": has no tensor '" + cur.name +
                            "' of " + std::to_string(cur.values.size()) +
                            " values to take a delta against");
    const int64_t n = int64_t(cur.values.size());
    if (n > int64_t(std::numeric_limits<uint32_t>::max()))
      throw CheckpointError("tensor '" + cur.name +
                            "' is too large for a delta");
    DeltaTensor dt;
    dt.name = cur.name;
    dt.kind = cur.kind;
    dt.index = cur.index;
    dt.numel = n;
    changed.clear();
    mag.assign(size_t(n), 0.0);
    for (int64_t i = 0; i < n; ++i)
      if (!sameBits(cur.values[size_t(i)], b->values[size_t(i)])) {
        changed.push_back(uint32_t(i));
        mag[size_t(i)] = magnitude(cur.values[size_t(i)], b->values[size_t(i)]);
      }
    bool all = t < whole.size() && whole[t];
    if (all) {
      dt.indices = changed;
    } else if (spec.mode == DeltaSpec::kTopK) {
      size_t k = std::min(size_t(spec.topK(n)), changed.size());
      auto before = [&](uint32_t x, uint32_t y) {
        return mag[x] != mag[y] ? mag[x] > mag[y] : x < y;
      };
      std::nth_element(changed.begin(), changed.begin() + long(k),
                       changed.end(), before);
      dt.indices.assign(changed.begin(), changed.begin() + long(k));
      std::sort(dt.indices.begin(), dt.indices.end());
    } else {
      for (uint32_t i : changed)
        if (mag[i] >= spec.value)
          dt.indices.push_back(i);
    }
    // Storing every entry (no indices) when that is no larger than the
    // sparse coding stores the other entries for free.
    uint64_t indexBytes = 0;
    dt.coding = chooseCoding(dt.indices, n, spec.q8 ? 1 : 4, indexBytes);
    if (dt.coding == DeltaTensor::kEvery) {
      dt.indices.resize(size_t(n));
      for (int64_t i = 0; i < n; ++i)
        dt.indices[size_t(i)] = uint32_t(i);
    }
    if (spec.q8) {
      double most = 0;
      for (uint32_t i : dt.indices)
        most = std::max(most, std::fabs(double(cur.values[i]) -
                                        double(b->values[i])));
      dt.scale = float(most / 127.0);
      dt.q.reserve(dt.indices.size());
      for (uint32_t i : dt.indices) {
        double change = double(cur.values[i]) - double(b->values[i]);
        double level =
            dt.scale > 0 ? std::nearbyint(change / double(dt.scale)) : 0.0;
        dt.q.push_back(int8_t(std::clamp(level, -127.0, 127.0)));
      }
    } else {
      dt.values.reserve(dt.indices.size());
      for (uint32_t i : dt.indices)
        dt.values.push_back(cur.values[i]);
    }
    d.tensors.push_back(std::move(dt));
  }
  return d;
}

void applyDelta(Checkpoint &base, const Delta &d, const std::string &what) {
  auto hex = [](uint64_t v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "0x%016llx", (unsigned long long)v);
    return std::string(buf);
  };
  if (base.planHash != d.position.planHash)
    throw CheckpointError(what + ": the delta is of another compiled model "
                          "(plan " + hex(d.position.planHash) +
                          ") than its base (plan " + hex(base.planHash) + ")");
  if (base.checksum != d.baseChecksum || base.step != d.baseStep)
    throw CheckpointError(what + ": taken against another base checkpoint: "
                          "it needs " + d.baseName + " of step " +
                          std::to_string(d.baseStep) + " with checksum " +
                          hex(d.baseChecksum) + ", this one is of step " +
                          std::to_string(base.step) + " with checksum " +
                          hex(base.checksum));
  // Check everything before changing anything.
  std::vector<CheckpointTensor *> targets;
  for (const DeltaTensor &dt : d.tensors) {
    CheckpointTensor *b = nullptr;
    for (CheckpointTensor &candidate : base.tensors)
      if (candidate.kind == dt.kind && candidate.index == dt.index &&
          candidate.name == dt.name) {
        b = &candidate;
        break;
      }
    if (!b || int64_t(b->values.size()) != dt.numel)
      throw CheckpointError(what + ": the base has no tensor '" + dt.name +
                            "' of " + std::to_string(dt.numel) + " values");
    targets.push_back(b);
  }
  for (size_t t = 0; t < d.tensors.size(); ++t) {
    const DeltaTensor &dt = d.tensors[t];
    std::vector<float> &v = targets[t]->values;
    for (size_t j = 0; j < dt.indices.size(); ++j) {
      float &x = v[dt.indices[j]];
      x = d.spec.q8 ? x + float(dt.q[j]) * dt.scale : dt.values[j];
    }
  }
  uint64_t planHash = base.planHash;
  std::vector<CheckpointTensor> tensors = std::move(base.tensors);
  base = d.position;
  base.planHash = planHash;
  base.tensors = std::move(tensors);
  base.checksum = 0; // no longer the file's
}

std::vector<uint8_t> serialiseDelta(const Delta &d) {
  Writer w;
  w.bytes.insert(w.bytes.end(), kDeltaMagic, kDeltaMagic + 8);
  w.put(kDeltaVersion);
  w.put(uint32_t(d.spec.q8 ? 1 : 0));
  w.put(d.position.planHash);
  w.putString(d.baseName);
  w.put(d.baseChecksum);
  w.put(int64_t(d.baseStep));
  w.put(uint8_t(d.spec.mode));
  w.put(double(d.spec.value));
  putPosition(w, d.position);
  w.put(uint32_t(d.tensors.size()));
  const size_t valueBytes = d.spec.q8 ? 1 : 4;
  for (const DeltaTensor &t : d.tensors) {
    w.putString(t.name);
    w.put(uint8_t(t.kind));
    w.put(uint32_t(t.index));
    w.put(int64_t(t.numel));
    DeltaTensor::Coding coding = t.coding;
    if (coding == DeltaTensor::kEvery &&
        int64_t(t.indices.size()) != t.numel)
      throw CheckpointError("serialiseDelta: tensor '" + t.name +
                            "' is coded whole but holds " +
                            std::to_string(t.indices.size()) + " of " +
                            std::to_string(t.numel) + " entries");
    std::vector<uint8_t> index;
    if (coding == DeltaTensor::kGaps) {
      int64_t prev = -1;
      for (uint32_t i : t.indices) {
        putVarint(index, uint64_t(int64_t(i) - prev - 1));
        prev = i;
      }
    } else if (coding == DeltaTensor::kBitmap) {
      index.assign(size_t((t.numel + 7) / 8), 0);
      for (uint32_t i : t.indices)
        index[i / 8] |= uint8_t(1u << (i % 8));
    }
    w.put(uint8_t(coding));
    w.put(int64_t(t.indices.size()));
    w.put(uint64_t(index.size()));
    w.bytes.insert(w.bytes.end(), index.begin(), index.end());
    if (d.spec.q8 ? t.q.size() != t.indices.size()
                  : t.values.size() != t.indices.size())
      throw CheckpointError("serialiseDelta: tensor '" + t.name +
                            "' has as many values as indices");
    if (d.spec.q8) {
      w.put(t.scale);
      const uint8_t *p = reinterpret_cast<const uint8_t *>(t.q.data());
      w.bytes.insert(w.bytes.end(), p, p + t.q.size());
    } else {
      const uint8_t *p = reinterpret_cast<const uint8_t *>(t.values.data());
      w.bytes.insert(w.bytes.end(), p, p + t.values.size() * sizeof(float));
    }
  }
  w.put(fnv1a64(w.bytes.data(), w.bytes.size()));
  return std::move(w.bytes);
}

Delta parseDelta(const std::vector<uint8_t> &bytes, const std::string &what) {
  size_t body = checkFraming(bytes, what, kDeltaMagic, "delta checkpoint",
                             kDeltaVersion, 32);
  auto malformed = [&](const std::string &why) {
    return CheckpointError(what + ": malformed delta checkpoint (" + why +
                           ")");
  };
  Reader r(bytes.data(), body, what);
  r.get<uint64_t>(); // magic
  r.get<uint32_t>(); // version
  uint32_t flags = r.get<uint32_t>();
  if (flags > 1)
    throw malformed("flags " + std::to_string(flags));
  Delta d;
  d.spec.q8 = flags & 1;
  d.position.planHash = r.get<uint64_t>();
  d.baseName = r.getString();
  d.baseChecksum = r.get<uint64_t>();
  d.baseStep = r.get<int64_t>();
  uint8_t mode = r.get<uint8_t>();
  if (mode != DeltaSpec::kTopK && mode != DeltaSpec::kThreshold)
    throw malformed("selection " + std::to_string(mode));
  d.spec.mode = DeltaSpec::Mode(mode);
  d.spec.value = r.get<double>();
  if (d.baseName.empty() || d.baseName.find('/') != std::string::npos)
    throw malformed("base name '" + d.baseName + "'");
  getPosition(r, d.position);
  uint32_t count = r.get<uint32_t>();
  for (uint32_t c = 0; c < count; ++c) {
    DeltaTensor t;
    t.name = r.getString();
    uint8_t kind = r.get<uint8_t>();
    if (kind != CheckpointTensor::kParam && kind != CheckpointTensor::kEma)
      throw malformed("tensor kind " + std::to_string(kind));
    t.kind = CheckpointTensor::Kind(kind);
    t.index = r.get<uint32_t>();
    t.numel = r.get<int64_t>();
    uint8_t coding = r.get<uint8_t>();
    int64_t k = r.get<int64_t>();
    uint64_t indexBytes = r.get<uint64_t>();
    if (t.numel < 0 || t.numel > int64_t(std::numeric_limits<uint32_t>::max()) ||
        coding > DeltaTensor::kBitmap || k < 0 || k > t.numel ||
        indexBytes > body - r.offset() ||
        uint64_t(k) * (d.spec.q8 ? 1 : 4) > body - r.offset())
      throw malformed("tensor '" + t.name + "' has an impossible table "
                      "entry");
    t.coding = DeltaTensor::Coding(coding);
    t.indices.reserve(size_t(k));
    const uint8_t *p = bytes.data() + r.offset();
    if (coding == DeltaTensor::kEvery) {
      if (k != t.numel || indexBytes != 0)
        throw malformed("tensor '" + t.name + "' is coded whole with " +
                        std::to_string(k) + " of " +
                        std::to_string(t.numel) + " entries");
      for (int64_t i = 0; i < k; ++i)
        t.indices.push_back(uint32_t(i));
    } else if (coding == DeltaTensor::kGaps) {
      uint64_t at = 0;
      int64_t prev = -1;
      for (int64_t j = 0; j < k; ++j) {
        uint64_t gap = 0;
        int shift = 0;
        for (;;) {
          if (at >= indexBytes || shift > 35)
            throw malformed("tensor '" + t.name + "': bad index gaps");
          uint8_t byte = p[at++];
          gap |= uint64_t(byte & 0x7f) << shift;
          shift += 7;
          if (!(byte & 0x80))
            break;
        }
        int64_t i = prev + 1 + int64_t(gap);
        if (i >= t.numel)
          throw malformed("tensor '" + t.name + "': index " +
                          std::to_string(i) + " out of " +
                          std::to_string(t.numel));
        t.indices.push_back(uint32_t(i));
        prev = i;
      }
      if (at != indexBytes)
        throw malformed("tensor '" + t.name + "': bad index gaps");
    } else {
      if (indexBytes != uint64_t((t.numel + 7) / 8))
        throw malformed("tensor '" + t.name + "': the bitmap has " +
                        std::to_string(indexBytes) + " bytes");
      for (int64_t i = 0; i < t.numel; ++i)
        if (p[i / 8] & (1u << (i % 8)))
          t.indices.push_back(uint32_t(i));
      for (int64_t i = t.numel; i < int64_t(indexBytes) * 8; ++i)
        if (p[i / 8] & (1u << (i % 8)))
          t.indices.push_back(uint32_t(i)); // counted as an error below
      if (int64_t(t.indices.size()) != k)
        throw malformed("tensor '" + t.name + "': the bitmap holds " +
                        std::to_string(t.indices.size()) + " entries, not " +
                        std::to_string(k));
    }
    r.skip(size_t(indexBytes));
    if (d.spec.q8) {
      t.scale = r.get<float>();
      if (!std::isfinite(t.scale) || t.scale < 0)
        throw malformed("tensor '" + t.name + "': scale " +
                        shortest(t.scale));
      t.q.resize(size_t(k));
      size_t at = r.offset();
      r.skip(size_t(k));
      if (k > 0)
        std::memcpy(t.q.data(), bytes.data() + at, size_t(k));
    } else {
      t.values.resize(size_t(k));
      if (k > 0) {
        size_t at = r.offset();
        r.skip(size_t(k) * 4);
        std::memcpy(t.values.data(), bytes.data() + at, size_t(k) * 4);
      }
    }
    d.tensors.push_back(std::move(t));
  }
  if (r.offset() != body)
    throw malformed("bytes left after the tensors");
  return d;
}

std::string deltaPath(const std::string &dir, int64_t step) {
  return stepPath(dir, kDeltaPrefix, step);
}

std::vector<std::string> listDeltas(const std::string &dir) {
  return listStepFiles(dir, kDeltaPrefix);
}

std::string writeDelta(const std::string &dir, const Delta &d,
                       WrittenFile *written) {
  std::string path = deltaPath(dir, d.position.step);
  writeRecorded(dir, path, serialiseDelta(d), written);
  return path;
}

Delta readDelta(const std::string &path) {
  return parseDelta(readFile(path), path);
}

Checkpoint restoreDelta(const std::string &path, std::string *basePath) {
  Delta d = readDelta(path);
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::string base = (dir / d.baseName).string();
  std::error_code ec;
  if (!std::filesystem::exists(base, ec))
    throw CheckpointError(path + ": its base checkpoint " + base +
                          " is missing (a base is removed with its deltas "
                          "when newer full checkpoints replace it)");
  Checkpoint c = readCheckpoint(base);
  applyDelta(c, d, path);
  if (basePath)
    *basePath = base;
  return c;
}

} // namespace fcc::trainer
