//===- DataTest.cpp - CIFAR-10 binary and MNIST IDX loading ---------------===//
//
// Synthetic files are built byte by byte here (the layouts of the official
// releases), so every expected value is known by construction; the shipped
// cifar10-mini sample is checked against the label counts documented in its
// README and the well-known first labels of CIFAR-10.
//
//===----------------------------------------------------------------------===//
#include "Data.h"

#include "FakeProgram.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

using namespace fcc::trainer;
using fcc::test::TempDir;
using fcc::test::writeBytes;

namespace {

constexpr int64_t kRecord = 3073, kPlane = 32 * 32;

// The byte at offset j of image r's 3072 pixel bytes.
uint8_t cifarPixel(int64_t r, int64_t j) {
  return uint8_t((j * 7 + r * 13) % 251);
}

// CIFAR-10 binary records with the given labels.
std::vector<uint8_t> cifarBytes(const std::vector<int> &labels,
                                int64_t firstImage = 0) {
  std::vector<uint8_t> bytes;
  for (size_t r = 0; r < labels.size(); ++r) {
    bytes.push_back(uint8_t(labels[r]));
    for (int64_t j = 0; j < 3 * kPlane; ++j)
      bytes.push_back(cifarPixel(firstImage + int64_t(r), j));
  }
  return bytes;
}

void bigEndian(std::vector<uint8_t> &out, uint32_t v) {
  out.push_back(uint8_t(v >> 24));
  out.push_back(uint8_t(v >> 16));
  out.push_back(uint8_t(v >> 8));
  out.push_back(uint8_t(v));
}

std::vector<uint8_t> idxImages(uint32_t n, uint32_t rows, uint32_t cols,
                               uint8_t first = 0) {
  std::vector<uint8_t> b;
  bigEndian(b, 2051);
  bigEndian(b, n);
  bigEndian(b, rows);
  bigEndian(b, cols);
  for (uint32_t i = 0; i < n * rows * cols; ++i)
    b.push_back(uint8_t(first + i));
  return b;
}

std::vector<uint8_t> idxLabels(const std::vector<int> &labels) {
  std::vector<uint8_t> b;
  bigEndian(b, 2049);
  bigEndian(b, uint32_t(labels.size()));
  for (int l : labels)
    b.push_back(uint8_t(l));
  return b;
}

void writeGzip(const std::string &path, const std::vector<uint8_t> &bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())),
            int(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

// The message of the DataError `f` throws ("" when it does not throw).
template <typename F> std::string dataError(F &&f) {
  try {
    f();
  } catch (const DataError &e) {
    return e.what();
  }
  return "";
}

bool startsWith(const std::string &s, const std::string &prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

bool contains(const std::string &s, const std::string &part) {
  return s.find(part) != std::string::npos;
}

//===- CIFAR-10 binary -----------------------------------------------------===//

TEST(Data, ParseCifar10Records) {
  ImageSet set;
  parseCifar10("x.bin", cifarBytes({3, 9}), set);
  EXPECT_EQ(set.count, 2);
  EXPECT_EQ(set.channels, 3);
  EXPECT_EQ(set.height, 32);
  EXPECT_EQ(set.width, 32);
  EXPECT_EQ(set.imageSize(), 3072);
  EXPECT_EQ(set.labels, (std::vector<int32_t>{3, 9}));
  ASSERT_EQ(set.pixels.size(), 2u * 3072u);
  // The file stores the red, green and blue 32x32 planes in this order,
  // rows top to bottom: image r's pixel (c, y, x) is byte 1 + c*1024 + y*32
  // + x of record r, and in CHW order that is the same offset in the image.
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t y = 0; y < 32; ++y)
        for (int64_t x = 0; x < 32; ++x) {
          int64_t j = c * kPlane + y * 32 + x;
          ASSERT_EQ(set.image(r)[j], cifarPixel(r, j))
              << "image " << r << " c=" << c << " y=" << y << " x=" << x;
        }
}

TEST(Data, ParseCifar10Appends) {
  ImageSet set;
  parseCifar10("a.bin", cifarBytes({1, 2}), set);
  parseCifar10("b.bin", cifarBytes({7}, 2), set);
  EXPECT_EQ(set.count, 3);
  EXPECT_EQ(set.labels, (std::vector<int32_t>{1, 2, 7}));
  ASSERT_EQ(set.pixels.size(), 3u * 3072u);
  EXPECT_EQ(set.image(2)[100], cifarPixel(2, 100));
  EXPECT_EQ(set.image(1)[3071], cifarPixel(1, 3071));
}

TEST(Data, ParseCifar10Errors) {
  const std::string name = "/data/cifar/data_batch_2.bin";
  ImageSet set;
  // Truncated: one record and 100 bytes of the next.
  std::vector<uint8_t> bytes = cifarBytes({1, 2});
  bytes.resize(kRecord + 100);
  std::string m = dataError([&] { parseCifar10(name, bytes, set); });
  EXPECT_TRUE(startsWith(m, name + ": ")) << m;
  EXPECT_TRUE(contains(m, "3173 bytes is not a whole number of 3073-byte "
                          "records"))
      << m;
  // Label 10 in the second record.
  m = dataError([&] { parseCifar10(name, cifarBytes({0, 10, 1}), set); });
  EXPECT_TRUE(startsWith(m, name + ": ")) << m;
  EXPECT_TRUE(contains(m, "record 1 has label 10")) << m;
  // Label 255.
  m = dataError([&] { parseCifar10(name, cifarBytes({255}), set); });
  EXPECT_TRUE(contains(m, "record 0 has label 255")) << m;
  // Empty.
  m = dataError([&] { parseCifar10(name, {}, set); });
  EXPECT_EQ(m, name + ": file is empty");
  // A single byte.
  m = dataError([&] { parseCifar10(name, {3}, set); });
  EXPECT_TRUE(contains(m, "1 bytes is not a whole number")) << m;
}

//===- MNIST IDX -----------------------------------------------------------===//

TEST(Data, ParseIdxImagesAndLabels) {
  ImageSet set = parseIdxImages("img", idxImages(3, 2, 4));
  EXPECT_EQ(set.count, 3);
  EXPECT_EQ(set.channels, 1);
  EXPECT_EQ(set.height, 2);
  EXPECT_EQ(set.width, 4);
  ASSERT_EQ(set.pixels.size(), 24u);
  for (int i = 0; i < 24; ++i)
    EXPECT_EQ(set.pixels[size_t(i)], i);
  EXPECT_EQ(set.image(2)[0], 16);
  EXPECT_EQ(parseIdxLabels("lbl", idxLabels({0, 9, 4})),
            (std::vector<int32_t>{0, 9, 4}));
}

TEST(Data, ParseIdxErrors) {
  // Swapped files.
  std::string m = dataError([] { parseIdxImages("f", idxLabels({1})); });
  EXPECT_TRUE(startsWith(m, "f: magic number 2049 is not 2051")) << m;
  EXPECT_TRUE(contains(m, "this is a label file")) << m;
  m = dataError([] { parseIdxLabels("g", idxImages(1, 2, 2)); });
  EXPECT_TRUE(startsWith(m, "g: magic number 2051 is not 2049")) << m;
  EXPECT_TRUE(contains(m, "this is an image file")) << m;
  // Some other file (0x1f8b0800: the start of a gzip stream).
  std::vector<uint8_t> gz = {0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0,
                             0,    0,    0,    0,    0, 0, 0, 0};
  m = dataError([&] { parseIdxImages("h", gz); });
  EXPECT_TRUE(startsWith(m, "h: magic number 529205248 is not 2051")) << m;
  // Too short for a header.
  m = dataError([] { parseIdxImages("s", {0, 0, 8}); });
  EXPECT_TRUE(startsWith(m, "s: 3 bytes is too short")) << m;
  m = dataError([] { parseIdxLabels("s", {0, 0, 8, 1, 0}); });
  EXPECT_TRUE(startsWith(m, "s: 5 bytes is too short")) << m;
  std::vector<uint8_t> header = idxImages(1, 1, 1);
  header.resize(12);
  m = dataError([&] { parseIdxImages("t", header); });
  EXPECT_TRUE(contains(m, "too short for an IDX image header")) << m;
  // Size disagreeing with the header: 16 + 3*2*4 = 40 bytes expected.
  std::vector<uint8_t> images = idxImages(3, 2, 4);
  images.pop_back();
  m = dataError([&] { parseIdxImages("u", images); });
  EXPECT_TRUE(startsWith(m, "u: header says 3 images of 2x4 pixels (40 bytes "
                            "with the header) but the file has 39 bytes"))
      << m;
  std::vector<uint8_t> labels = idxLabels({1, 2, 3});
  labels.push_back(4);
  m = dataError([&] { parseIdxLabels("v", labels); });
  EXPECT_TRUE(startsWith(m, "v: header says 3 labels")) << m;
  // Empty dimensions and bad labels.
  m = dataError([] { parseIdxImages("w", idxImages(0, 2, 2)); });
  EXPECT_TRUE(contains(m, "header says 0 images")) << m;
  m = dataError([] { parseIdxLabels("x", idxLabels({})); });
  EXPECT_TRUE(contains(m, "header says 0 labels")) << m;
  m = dataError([] { parseIdxLabels("y", idxLabels({3, 10})); });
  EXPECT_TRUE(startsWith(m, "y: item 1 has label 10")) << m;
}

TEST(Data, ReadFilePlainAndGzip) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::vector<uint8_t> bytes = idxImages(5, 7, 3, 11);
  writeBytes(dir.file("plain"), bytes);
  writeGzip(dir.file("packed.gz"), bytes);
  EXPECT_EQ(readFile(dir.file("plain")), bytes);
  EXPECT_EQ(readFile(dir.file("packed.gz")), bytes);
  // The file on disk really is gzip (magic 1f 8b), not the bytes themselves.
  std::string raw = fcc::test::readText(dir.file("packed.gz"));
  ASSERT_GE(raw.size(), 2u);
  EXPECT_EQ(uint8_t(raw[0]), 0x1f);
  EXPECT_EQ(uint8_t(raw[1]), 0x8b);
  // An empty file.
  writeBytes(dir.file("empty"), {});
  EXPECT_TRUE(readFile(dir.file("empty")).empty());
  // A missing file names itself.
  std::string m = dataError([&] { readFile(dir.file("missing")); });
  EXPECT_TRUE(startsWith(m, dir.file("missing") + ": cannot open")) << m;
  m = dataError([&] { readFile(dir.file("missing.gz")); });
  EXPECT_TRUE(startsWith(m, dir.file("missing.gz") + ": cannot open")) << m;
}

TEST(Data, ReadFileTruncatedGzip) {
  TempDir dir;
  std::vector<uint8_t> bytes(100000);
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = uint8_t((i * i) >> 3); // not too compressible
  writeGzip(dir.file("whole.gz"), bytes);
  std::string raw = fcc::test::readText(dir.file("whole.gz"));
  ASSERT_GT(raw.size(), 100u);
  writeBytes(dir.file("cut.gz"),
             std::vector<uint8_t>(raw.begin(), raw.begin() + raw.size() / 2));
  std::string m = dataError([&] { readFile(dir.file("cut.gz")); });
  EXPECT_TRUE(startsWith(m, dir.file("cut.gz") + ": ")) << m;
  EXPECT_TRUE(contains(m, "truncated") || contains(m, "decompress")) << m;
}

//===- Whole directories ---------------------------------------------------===//

TEST(Data, LoadCifar10Directory) {
  TempDir dir;
  writeBytes(dir.file("data_batch_1.bin"), cifarBytes({0, 1}, 0));
  writeBytes(dir.file("data_batch_3.bin"), cifarBytes({2}, 2));
  writeBytes(dir.file("test_batch.bin"), cifarBytes({5, 6, 7}, 3));
  writeBytes(dir.file("batches.meta.txt"), {'x', '\n'});
  Dataset d = loadDataset(dir.path());
  EXPECT_EQ(d.dir, dir.path());
  EXPECT_EQ(d.format, "CIFAR-10 binary");
  EXPECT_EQ(d.trainFiles,
            (std::vector<std::string>{"data_batch_1.bin", "data_batch_3.bin"}));
  EXPECT_EQ(d.testFiles, (std::vector<std::string>{"test_batch.bin"}));
  EXPECT_EQ(d.train.count, 3);
  EXPECT_EQ(d.train.labels, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(d.test.count, 3);
  EXPECT_EQ(d.test.labels, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(d.train.image(2)[5], cifarPixel(2, 5));
  EXPECT_EQ(d.test.image(1)[3000], cifarPixel(4, 3000));
}

TEST(Data, LoadNestedCifar10Directory) {
  TempDir dir;
  std::string nested = dir.file("cifar-10-batches-bin");
  std::filesystem::create_directory(nested);
  writeBytes(nested + "/data_batch_2.bin", cifarBytes({4}));
  writeBytes(nested + "/test_batch.bin", cifarBytes({8}));
  Dataset d = loadDataset(dir.path());
  EXPECT_EQ(d.dir, nested);
  EXPECT_EQ(d.train.labels, (std::vector<int32_t>{4}));
  EXPECT_EQ(d.test.labels, (std::vector<int32_t>{8}));
}

TEST(Data, LoadCifar10Errors) {
  {
    TempDir dir; // no test set
    writeBytes(dir.file("data_batch_1.bin"), cifarBytes({0}));
    std::string m = dataError([&] { loadDataset(dir.path()); });
    EXPECT_TRUE(startsWith(m, dir.path() + ": test_batch.bin not found")) << m;
  }
  {
    TempDir dir; // no training set
    writeBytes(dir.file("test_batch.bin"), cifarBytes({0}));
    std::string m = dataError([&] { loadDataset(dir.path()); });
    EXPECT_TRUE(
        startsWith(m, dir.path() + ": no CIFAR-10 training file found"))
        << m;
  }
  {
    TempDir dir; // a truncated training file is named with its path
    std::vector<uint8_t> bytes = cifarBytes({0, 1});
    bytes.pop_back();
    writeBytes(dir.file("data_batch_4.bin"), bytes);
    writeBytes(dir.file("test_batch.bin"), cifarBytes({0}));
    std::string m = dataError([&] { loadDataset(dir.path()); });
    EXPECT_TRUE(startsWith(m, dir.file("data_batch_4.bin") + ": 6145 bytes"))
        << m;
  }
  {
    TempDir dir; // label 10 in the test file
    writeBytes(dir.file("data_batch_1.bin"), cifarBytes({0}));
    writeBytes(dir.file("test_batch.bin"), cifarBytes({1, 2, 10}));
    std::string m = dataError([&] { loadDataset(dir.path()); });
    EXPECT_TRUE(startsWith(m, dir.file("test_batch.bin") +
                                  ": record 2 has label 10"))
        << m;
  }
}

TEST(Data, LoadIdxDirectoryWithGzip) {
  TempDir dir;
  std::vector<uint8_t> trainImages = idxImages(4, 3, 5, 1),
                       testImages = idxImages(2, 3, 5, 100);
  std::vector<int> trainLabels = {9, 0, 3, 3}, testLabels = {1, 2};
  // The training files gzipped, the test files plain.
  writeGzip(dir.file("train-images-idx3-ubyte.gz"), trainImages);
  writeGzip(dir.file("train-labels-idx1-ubyte.gz"), idxLabels(trainLabels));
  writeBytes(dir.file("t10k-images-idx3-ubyte"), testImages);
  writeBytes(dir.file("t10k-labels-idx1-ubyte"), idxLabels(testLabels));
  Dataset d = loadDataset(dir.path());
  EXPECT_EQ(d.format, "MNIST IDX");
  EXPECT_EQ(d.trainFiles,
            (std::vector<std::string>{"train-images-idx3-ubyte.gz",
                                      "train-labels-idx1-ubyte.gz"}));
  EXPECT_EQ(d.testFiles, (std::vector<std::string>{"t10k-images-idx3-ubyte",
                                                   "t10k-labels-idx1-ubyte"}));
  EXPECT_EQ(d.train.count, 4);
  EXPECT_EQ(d.train.channels, 1);
  EXPECT_EQ(d.train.height, 3);
  EXPECT_EQ(d.train.width, 5);
  EXPECT_EQ(d.train.labels, (std::vector<int32_t>{9, 0, 3, 3}));
  EXPECT_EQ(d.train.pixels,
            std::vector<uint8_t>(trainImages.begin() + 16, trainImages.end()));
  EXPECT_EQ(d.test.count, 2);
  EXPECT_EQ(d.test.labels, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(d.test.image(1)[0], uint8_t(100 + 15));
}

TEST(Data, LoadIdxErrors) {
  {
    TempDir dir; // the training labels are missing
    writeBytes(dir.file("train-images-idx3-ubyte"), idxImages(1, 2, 2));
    writeBytes(dir.file("t10k-images-idx3-ubyte"), idxImages(1, 2, 2));
    writeBytes(dir.file("t10k-labels-idx1-ubyte"), idxLabels({1}));
    std::string m = dataError([&] { loadDataset(dir.path()); });
    EXPECT_TRUE(startsWith(m, dir.path() + ": incomplete MNIST IDX dataset: "
                                           "train-labels-idx1-ubyte"))
        << m;
  }
  {
    TempDir dir; // 2 training images, 3 labels
    writeBytes(dir.file("train-images-idx3-ubyte"), idxImages(2, 2, 2));
    writeBytes(dir.file("train-labels-idx1-ubyte"), idxLabels({1, 2, 3}));
    writeBytes(dir.file("t10k-images-idx3-ubyte"), idxImages(1, 2, 2));
    writeBytes(dir.file("t10k-labels-idx1-ubyte"), idxLabels({1}));
    std::string m = dataError([&] { loadDataset(dir.path()); });
    EXPECT_TRUE(startsWith(m, dir.file("train-labels-idx1-ubyte") +
                                  " has 3 labels but " +
                                  dir.file("train-images-idx3-ubyte") +
                                  " has 2 images"))
        << m;
  }
  {
    TempDir dir; // test images of another size
    writeBytes(dir.file("train-images-idx3-ubyte"), idxImages(1, 2, 2));
    writeBytes(dir.file("train-labels-idx1-ubyte"), idxLabels({1}));
    writeBytes(dir.file("t10k-images-idx3-ubyte"), idxImages(1, 3, 2));
    writeBytes(dir.file("t10k-labels-idx1-ubyte"), idxLabels({1}));
    std::string m = dataError([&] { loadDataset(dir.path()); });
    EXPECT_TRUE(startsWith(m, dir.file("t10k-images-idx3-ubyte") +
                                  ": 3x2 images but"))
        << m;
  }
  {
    TempDir dir; // labels where images belong
    writeBytes(dir.file("train-images-idx3-ubyte"), idxLabels({1}));
    writeBytes(dir.file("train-labels-idx1-ubyte"), idxLabels({1}));
    writeBytes(dir.file("t10k-images-idx3-ubyte"), idxImages(1, 2, 2));
    writeBytes(dir.file("t10k-labels-idx1-ubyte"), idxLabels({1}));
    std::string m = dataError([&] { loadDataset(dir.path()); });
    EXPECT_TRUE(startsWith(m, dir.file("train-images-idx3-ubyte") +
                                  ": magic number 2049"))
        << m;
  }
}

TEST(Data, LoadDatasetErrors) {
  TempDir dir;
  std::string m = dataError([&] { loadDataset(dir.path()); });
  EXPECT_TRUE(startsWith(m, dir.path() + ": no dataset found")) << m;
  m = dataError([&] { loadDataset(dir.file("nope")); });
  EXPECT_EQ(m, dir.file("nope") + ": no such directory");
  writeBytes(dir.file("file"), {1});
  m = dataError([&] { loadDataset(dir.file("file")); });
  EXPECT_EQ(m, dir.file("file") + ": not a directory");
}

//===- Statistics, shapes, limits -----------------------------------------===//

ImageSet makeSet(int64_t channels, int64_t height, int64_t width,
                 std::vector<uint8_t> pixels) {
  ImageSet s;
  s.channels = channels;
  s.height = height;
  s.width = width;
  s.count = int64_t(pixels.size()) / s.imageSize();
  s.pixels = std::move(pixels);
  s.labels.assign(size_t(s.count), 0);
  return s;
}

TEST(Data, ChannelStatisticsByHand) {
  // Two images of 2 channels x 1x2 pixels:
  //   channel 0: 0 10 | 20 30 -> mean 15, variance (225+25+25+225)/4 = 125
  //   channel 1: 7 7  | 7 7   -> mean 7, variance 0 -> std 1
  ImageSet s = makeSet(2, 1, 2, {0, 10, 7, 7, 20, 30, 7, 7});
  Normalisation n = channelStatistics(s);
  ASSERT_EQ(n.mean.size(), 2u);
  ASSERT_EQ(n.std.size(), 2u);
  EXPECT_FLOAT_EQ(n.mean[0], 15.0f);
  EXPECT_FLOAT_EQ(n.std[0], std::sqrt(125.0f));
  EXPECT_FLOAT_EQ(n.mean[1], 7.0f);
  EXPECT_FLOAT_EQ(n.std[1], 1.0f);
  // One channel 0 .. 255 once each: mean 127.5, variance (256^2 - 1)/12.
  std::vector<uint8_t> ramp(256);
  for (int i = 0; i < 256; ++i)
    ramp[size_t(i)] = uint8_t(i);
  Normalisation r = channelStatistics(makeSet(1, 16, 16, ramp));
  EXPECT_FLOAT_EQ(r.mean[0], 127.5f);
  EXPECT_FLOAT_EQ(r.std[0], float(std::sqrt((256.0 * 256.0 - 1) / 12.0)));
}

// Two-pass double-precision statistics.
Normalisation referenceStatistics(const ImageSet &s) {
  Normalisation n;
  int64_t plane = s.height * s.width;
  for (int64_t c = 0; c < s.channels; ++c) {
    double sum = 0;
    for (int64_t i = 0; i < s.count; ++i)
      for (int64_t k = 0; k < plane; ++k)
        sum += s.image(i)[c * plane + k];
    double mean = sum / double(s.count * plane), sq = 0;
    for (int64_t i = 0; i < s.count; ++i)
      for (int64_t k = 0; k < plane; ++k) {
        double d = s.image(i)[c * plane + k] - mean;
        sq += d * d;
      }
    n.mean.push_back(float(mean));
    n.std.push_back(float(std::sqrt(sq / double(s.count * plane))));
  }
  return n;
}

TEST(Data, CheckImageShape) {
  Dataset d;
  d.dir = "/some/dir";
  d.train = makeSet(3, 32, 32, std::vector<uint8_t>(3072));
  EXPECT_NO_THROW(checkImageShape(d, 3, 32, 32));
  std::string m = dataError([&] { checkImageShape(d, 1, 28, 28); });
  EXPECT_EQ(m, "the model expects 1x28x28 images but /some/dir has 3x32x32");
  m = dataError([&] { checkImageShape(d, 3, 32, 31); });
  EXPECT_EQ(m, "the model expects 3x32x31 images but /some/dir has 3x32x32");
}

TEST(Data, Truncate) {
  ImageSet s = makeSet(1, 1, 2, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  s.labels = {0, 1, 2, 3, 4};
  s.truncate(7); // more than there are: no-op
  EXPECT_EQ(s.count, 5);
  s.truncate(-1); // "all"
  EXPECT_EQ(s.count, 5);
  s.truncate(2);
  EXPECT_EQ(s.count, 2);
  EXPECT_EQ(s.pixels, (std::vector<uint8_t>{1, 2, 3, 4}));
  EXPECT_EQ(s.labels, (std::vector<int32_t>{0, 1}));
}

//===- Real data -----------------------------------------------------------===//

TEST(Data, ShippedCifar10Mini) {
  const std::string dir = FCC_SOURCE_DIR "/tests/data/cifar10-mini";
  Dataset d = loadDataset(dir);
  EXPECT_EQ(d.format, "CIFAR-10 binary");
  EXPECT_EQ(d.train.count, 1000);
  EXPECT_EQ(d.test.count, 250);
  for (const ImageSet *s : {&d.train, &d.test}) {
    EXPECT_EQ(s->channels, 3);
    EXPECT_EQ(s->height, 32);
    EXPECT_EQ(s->width, 32);
    EXPECT_EQ(s->pixels.size(), size_t(s->count * 3072));
  }
  // Label counts from the sample's README.
  std::vector<int> train(10, 0), test(10, 0);
  for (int32_t l : d.train.labels)
    ++train[size_t(l)];
  for (int32_t l : d.test.labels)
    ++test[size_t(l)];
  EXPECT_EQ(train,
            (std::vector<int>{102, 112, 99, 92, 99, 85, 107, 102, 99, 103}));
  EXPECT_EQ(test, (std::vector<int>{25, 20, 24, 22, 19, 25, 29, 24, 34, 28}));
  // The first records of the official release: frog, truck, truck, deer, ...
  EXPECT_EQ(std::vector<int32_t>(d.train.labels.begin(),
                                 d.train.labels.begin() + 10),
            (std::vector<int32_t>{6, 9, 9, 4, 1, 1, 2, 7, 8, 3}));
  EXPECT_EQ(std::vector<int32_t>(d.test.labels.begin(),
                                 d.test.labels.begin() + 10),
            (std::vector<int32_t>{3, 8, 8, 0, 6, 6, 1, 6, 3, 1}));
  // Statistics of real images: plausible and equal to a two-pass reference.
  Normalisation n = channelStatistics(d.train);
  Normalisation ref = referenceStatistics(d.train);
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(n.mean[size_t(c)], ref.mean[size_t(c)], 1e-3) << "channel " << c;
    EXPECT_NEAR(n.std[size_t(c)], ref.std[size_t(c)], 1e-3) << "channel " << c;
    EXPECT_GT(n.mean[size_t(c)], 90.0f);
    EXPECT_LT(n.mean[size_t(c)], 150.0f);
    EXPECT_GT(n.std[size_t(c)], 40.0f);
    EXPECT_LT(n.std[size_t(c)], 90.0f);
  }
}

TEST(Data, FashionMnistIfPresent) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::is_directory(dir))
    GTEST_SKIP() << dir << " is not installed";
  Dataset d = loadDataset(dir);
  EXPECT_EQ(d.format, "MNIST IDX");
  EXPECT_EQ(d.train.count, 60000);
  EXPECT_EQ(d.test.count, 10000);
  for (const ImageSet *s : {&d.train, &d.test}) {
    EXPECT_EQ(s->channels, 1);
    EXPECT_EQ(s->height, 28);
    EXPECT_EQ(s->width, 28);
  }
  // Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
  std::vector<int> train(10, 0), test(10, 0);
  for (int32_t l : d.train.labels)
    ++train[size_t(l)];
  for (int32_t l : d.test.labels)
    ++test[size_t(l)];
  EXPECT_EQ(train, std::vector<int>(10, 6000));
  EXPECT_EQ(test, std::vector<int>(10, 1000));
}

} // namespace
