//===- Data.cpp - CIFAR-10 binary and MNIST IDX loading and validation ----===//
//
// Implements Data.h. The readers check everything a damaged or mismatched
// download can get wrong (sizes, magic numbers, counts, labels, shapes) and
// say which file is at fault, because a trainer that silently trains on
// garbage wastes hours.
//
//===----------------------------------------------------------------------===//
#include "Data.h"

#include <zlib.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace fcc::trainer {

namespace {

constexpr int64_t kCifarImageBytes = 3 * 32 * 32;
constexpr int64_t kCifarRecordBytes = 1 + kCifarImageBytes;
constexpr int kNumClasses = 10;
constexpr uint32_t kIdxImagesMagic = 2051, kIdxLabelsMagic = 2049;

const char *const kIdxNames[4] = {
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};

std::string join(const std::string &dir, const std::string &name) {
  return (fs::path(dir) / name).string();
}

bool isFile(const std::string &path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

uint32_t bigEndian32(const std::vector<uint8_t> &b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 |
         uint32_t(b[at + 2]) << 8 | uint32_t(b[at + 3]);
}

bool hasCifarFiles(const std::string &dir) {
  if (isFile(join(dir, "test_batch.bin")))
    return true;
  for (int n = 1; n <= 5; ++n)
    if (isFile(join(dir, "data_batch_" + std::to_string(n) + ".bin")))
      return true;
  return false;
}

// The path of an IDX file: NAME, else NAME.gz, else "".
std::string findIdx(const std::string &dir, const char *name) {
  std::string plain = join(dir, name);
  if (isFile(plain))
    return plain;
  if (isFile(plain + ".gz"))
    return plain + ".gz";
  return "";
}

bool hasIdxFiles(const std::string &dir) {
  for (const char *name : kIdxNames)
    if (!findIdx(dir, name).empty())
      return true;
  return false;
}

// Images and labels of one IDX split, checked against each other.
ImageSet loadIdxSplit(const std::string &imagesPath,
                      const std::string &labelsPath) {
  ImageSet set = parseIdxImages(imagesPath, readFile(imagesPath));
  std::vector<int32_t> labels = parseIdxLabels(labelsPath, readFile(labelsPath));
  if (int64_t(labels.size()) != set.count)
    throw DataError(labelsPath + " has " + std::to_string(labels.size()) +
                    " labels but " + imagesPath + " has " +
                    std::to_string(set.count) + " images");
  set.labels = std::move(labels);
  return set;
}

std::string shapeString(int64_t c, int64_t h, int64_t w) {
  return std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w);
}

} // namespace

void ImageSet::truncate(int64_t n) {
  if (n < 0 || n >= count)
    return;
  count = n;
  pixels.resize(size_t(n * imageSize()));
  labels.resize(size_t(n));
}

std::vector<uint8_t> readFile(const std::string &path) {
  std::vector<uint8_t> bytes;
  bool gz = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
  if (!gz) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
      throw DataError(path + ": cannot open: " + std::strerror(errno));
    in.seekg(0, std::ios::end);
    std::streamoff size = in.tellg();
    in.seekg(0, std::ios::beg);
    bytes.resize(size_t(size));
    if (size > 0 && !in.read(reinterpret_cast<char *>(bytes.data()), size))
      throw DataError(path + ": read error");
    return bytes;
  }
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f)
    throw DataError(path + ": cannot open: " + std::strerror(errno));
  gzbuffer(f, 1 << 20);
  constexpr size_t kChunk = 1 << 22;
  for (;;) {
    size_t old = bytes.size();
    bytes.resize(old + kChunk);
    int got = gzread(f, bytes.data() + old, unsigned(kChunk));
    if (got < 0) {
      int code = 0;
      std::string message = gzerror(f, &code);
      gzclose(f);
      throw DataError(path + ": cannot decompress: " + message);
    }
    bytes.resize(old + size_t(got));
    if (got == 0)
      break;
  }
  int code = 0;
  const char *message = gzerror(f, &code);
  if (code != Z_OK && code != Z_BUF_ERROR) {
    std::string text = message;
    gzclose(f);
    throw DataError(path + ": cannot decompress: " + text);
  }
  if (gzclose(f) != Z_OK)
    throw DataError(path + ": truncated or corrupt gzip data");
  return bytes;
}

void parseCifar10(const std::string &name, const std::vector<uint8_t> &bytes,
                  ImageSet &set) {
  if (bytes.empty())
    throw DataError(name + ": file is empty");
  if (bytes.size() % kCifarRecordBytes != 0)
    throw DataError(name + ": " + std::to_string(bytes.size()) +
                    " bytes is not a whole number of " +
                    std::to_string(kCifarRecordBytes) + "-byte records");
  int64_t records = int64_t(bytes.size()) / kCifarRecordBytes;
  set.channels = 3;
  set.height = set.width = 32;
  set.pixels.reserve(set.pixels.size() + size_t(records * kCifarImageBytes));
  for (int64_t r = 0; r < records; ++r) {
    const uint8_t *record = bytes.data() + r * kCifarRecordBytes;
    if (record[0] >= kNumClasses)
      throw DataError(name + ": record " + std::to_string(r) + " has label " +
                      std::to_string(record[0]) +
                      " (CIFAR-10 labels are 0-9)");
    set.labels.push_back(record[0]);
    set.pixels.insert(set.pixels.end(), record + 1,
                      record + kCifarRecordBytes);
  }
  set.count += records;
}

ImageSet parseIdxImages(const std::string &name,
                        const std::vector<uint8_t> &bytes) {
  if (bytes.size() < 4)
    throw DataError(name + ": " + std::to_string(bytes.size()) +
                    " bytes is too short for an IDX header");
  uint32_t magic = bigEndian32(bytes, 0);
  if (magic != kIdxImagesMagic)
    throw DataError(name + ": magic number " + std::to_string(magic) +
                    " is not 2051 (IDX file of unsigned-byte images)" +
                    (magic == kIdxLabelsMagic ? "; this is a label file"
                                              : ""));
  if (bytes.size() < 16)
    throw DataError(name + ": " + std::to_string(bytes.size()) +
                    " bytes is too short for an IDX image header (16 bytes)");
  int64_t n = bigEndian32(bytes, 4), rows = bigEndian32(bytes, 8),
          cols = bigEndian32(bytes, 12);
  if (n == 0 || rows == 0 || cols == 0)
    throw DataError(name + ": header says " + std::to_string(n) +
                    " images of " + std::to_string(rows) + "x" +
                    std::to_string(cols) + " pixels; expected no empty "
                    "dimension");
  if (rows > 4096 || cols > 4096)
    throw DataError(name + ": header says images of " + std::to_string(rows) +
                    "x" + std::to_string(cols) +
                    " pixels; more than 4096 per side is not an image set "
                    "fcc trains on");
  int64_t expected = 16 + n * rows * cols; // < 2^32 * 2^24: no overflow
  if (int64_t(bytes.size()) != expected)
    throw DataError(name + ": header says " + std::to_string(n) +
                    " images of " + std::to_string(rows) + "x" +
                    std::to_string(cols) + " pixels (" +
                    std::to_string(expected) + " bytes with the header) but "
                    "the file has " + std::to_string(bytes.size()) + " bytes");
  ImageSet set;
  set.count = n;
  set.channels = 1;
  set.height = rows;
  set.width = cols;
  set.pixels.assign(bytes.begin() + 16, bytes.end());
  return set;
}

std::vector<int32_t> parseIdxLabels(const std::string &name,
                                    const std::vector<uint8_t> &bytes) {
  if (bytes.size() < 4)
    throw DataError(name + ": " + std::to_string(bytes.size()) +
                    " bytes is too short for an IDX header");
  uint32_t magic = bigEndian32(bytes, 0);
  if (magic != kIdxLabelsMagic)
    throw DataError(name + ": magic number " + std::to_string(magic) +
                    " is not 2049 (IDX file of unsigned-byte labels)" +
                    (magic == kIdxImagesMagic ? "; this is an image file"
                                              : ""));
  if (bytes.size() < 8)
    throw DataError(name + ": " + std::to_string(bytes.size()) +
                    " bytes is too short for an IDX label header (8 bytes)");
  int64_t n = bigEndian32(bytes, 4);
  if (n == 0)
    throw DataError(name + ": header says 0 labels");
  if (int64_t(bytes.size()) != 8 + n)
    throw DataError(name + ": header says " + std::to_string(n) +
                    " labels (" + std::to_string(8 + n) +
                    " bytes with the header) but the file has " +
                    std::to_string(bytes.size()) + " bytes");
  std::vector<int32_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    uint8_t label = bytes[size_t(8 + i)];
    if (label >= kNumClasses)
      throw DataError(name + ": item " + std::to_string(i) + " has label " +
                      std::to_string(label) + " (MNIST labels are 0-9)");
    labels[size_t(i)] = label;
  }
  return labels;
}

Dataset loadCifar10(const std::string &dir) {
  Dataset data;
  data.dir = dir;
  data.format = "CIFAR-10 binary";
  for (int n = 1; n <= 5; ++n) {
    std::string name = "data_batch_" + std::to_string(n) + ".bin";
    std::string path = join(dir, name);
    if (!isFile(path))
      continue;
    parseCifar10(path, readFile(path), data.train);
    data.trainFiles.push_back(name);
  }
  if (data.trainFiles.empty())
    throw DataError(dir + ": no CIFAR-10 training file found (looked for "
                    "data_batch_1.bin .. data_batch_5.bin)");
  std::string testPath = join(dir, "test_batch.bin");
  if (!isFile(testPath))
    throw DataError(dir + ": test_batch.bin not found (the CIFAR-10 test "
                    "set, next to " + data.trainFiles.front() + ")");
  parseCifar10(testPath, readFile(testPath), data.test);
  data.testFiles.push_back("test_batch.bin");
  return data;
}

Dataset loadIdx(const std::string &dir) {
  std::string paths[4];
  for (int i = 0; i < 4; ++i) {
    paths[i] = findIdx(dir, kIdxNames[i]);
    if (paths[i].empty())
      throw DataError(dir + ": incomplete MNIST IDX dataset: " +
                      kIdxNames[i] + " (or " + kIdxNames[i] +
                      ".gz) not found");
  }
  Dataset data;
  data.dir = dir;
  data.format = "MNIST IDX";
  data.train = loadIdxSplit(paths[0], paths[1]);
  data.test = loadIdxSplit(paths[2], paths[3]);
  for (int i = 0; i < 4; ++i)
    (i < 2 ? data.trainFiles : data.testFiles)
        .push_back(fs::path(paths[i]).filename().string());
  if (data.test.height != data.train.height ||
      data.test.width != data.train.width)
    throw DataError(paths[2] + ": " + std::to_string(data.test.height) + "x" +
                    std::to_string(data.test.width) + " images but " +
                    paths[0] + " has " + std::to_string(data.train.height) +
                    "x" + std::to_string(data.train.width));
  return data;
}

Dataset loadDataset(const std::string &dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec))
    throw DataError(dir + ": no such directory");
  if (!fs::is_directory(dir, ec))
    throw DataError(dir + ": not a directory");
  if (hasCifarFiles(dir))
    return loadCifar10(dir);
  std::string nested = join(dir, "cifar-10-batches-bin");
  if (fs::is_directory(nested, ec) && hasCifarFiles(nested))
    return loadCifar10(nested);
  if (hasIdxFiles(dir))
    return loadIdx(dir);
  throw DataError(
      dir + ": no dataset found; looked for CIFAR-10 binary files "
            "(data_batch_1.bin .. data_batch_5.bin and test_batch.bin, also "
            "in cifar-10-batches-bin/) and MNIST IDX files "
            "(train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally "
            ".gz)");
}

Normalisation channelStatistics(const ImageSet &set) {
  // Exact integer sums, so the statistics do not depend on summation order.
  Normalisation norm;
  int64_t plane = set.height * set.width;
  __int128 n = __int128(set.count) * plane;
  for (int64_t c = 0; c < set.channels; ++c) {
    uint64_t sum = 0, sumSq = 0;
    for (int64_t i = 0; i < set.count; ++i) {
      const uint8_t *p = set.image(i) + c * plane;
      uint64_t s = 0, ss = 0;
      for (int64_t k = 0; k < plane; ++k) {
        s += p[k];
        ss += uint64_t(p[k]) * p[k];
      }
      sum += s;
      sumSq += ss;
    }
    double mean = n ? double(sum) / double(n) : 0.0;
    double var = n ? double(__int128(sumSq) * n - __int128(sum) * sum) /
                         (double(n) * double(n))
                   : 0.0;
    double sd = std::sqrt(var);
    norm.mean.push_back(float(mean));
    norm.std.push_back(sd > 0 ? float(sd) : 1.0f);
  }
  return norm;
}

void checkImageShape(const Dataset &data, int64_t channels, int64_t height,
                     int64_t width) {
  const ImageSet &t = data.train;
  if (t.channels == channels && t.height == height && t.width == width)
    return;
  throw DataError("the model expects " + shapeString(channels, height, width) +
                  " images but " + data.dir + " has " +
                  shapeString(t.channels, t.height, t.width));
}

} // namespace fcc::trainer
