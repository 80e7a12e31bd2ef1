//===- Data.h - Image classification datasets of the trainer --------------===//
//
// Loading and validation of the two on-disk layouts a trainer accepts with
// --data DIR: the CIFAR-10 binary release (data_batch_N.bin, test_batch.bin)
// and the MNIST/Fashion-MNIST IDX files (optionally gzipped). Images stay as
// bytes in CHW order; normalisation happens when a batch is built (on the
// target of the program), with per-channel statistics computed here.
//
// Every problem with the files is a DataError whose message names the file
// and what is wrong with it, so that the trainer can print it as is.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINER_DATA_H
#define FCC_TRAINER_DATA_H

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fcc::trainer {

class DataError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// A set of labelled images, count x channels x height x width bytes (CHW per
// image) and one label in [0, 10) per image.
struct ImageSet {
  int64_t count = 0;
  int64_t channels = 0, height = 0, width = 0;
  std::vector<uint8_t> pixels;
  std::vector<int32_t> labels;

  int64_t imageSize() const { return channels * height * width; }
  const uint8_t *image(int64_t i) const {
    return pixels.data() + i * imageSize();
  }
  // Keeps only the first n images (no-op when n >= count).
  void truncate(int64_t n);
};

struct Dataset {
  std::string dir;
  std::string format; // "CIFAR-10 binary" or "MNIST IDX"
  std::vector<std::string> trainFiles, testFiles; // as found (base names)
  ImageSet train, test;
};

// Loads DIR (or DIR/cifar-10-batches-bin), detecting the layout. Throws
// DataError.
Dataset loadDataset(const std::string &dir);

// The two layouts on their own (files named as in the official releases).
Dataset loadCifar10(const std::string &dir);
Dataset loadIdx(const std::string &dir);

// Parses one CIFAR-10 binary file's contents (label byte + 3072 bytes per
// record) and appends them to `set`. `name` is used in error messages.
void parseCifar10(const std::string &name, const std::vector<uint8_t> &bytes,
                  ImageSet &set);
// Parses an IDX image file (magic 2051) / label file (magic 2049).
ImageSet parseIdxImages(const std::string &name,
                        const std::vector<uint8_t> &bytes);
std::vector<int32_t> parseIdxLabels(const std::string &name,
                                    const std::vector<uint8_t> &bytes);

// Reads a whole file; names ending in ".gz" are decompressed with zlib.
std::vector<uint8_t> readFile(const std::string &path);

// Per-channel mean and standard deviation (population, in 0-255 pixel units)
// over all pixels of `set`. A constant channel gets std 1.
struct Normalisation {
  std::vector<float> mean, std;
};
Normalisation channelStatistics(const ImageSet &set);

// Throws DataError("the model expects CxHxW images but DIR has cxhxw") when
// the dataset's image shape differs from the program's.
void checkImageShape(const Dataset &data, int64_t channels, int64_t height,
                     int64_t width);

} // namespace fcc::trainer

#endif // FCC_TRAINER_DATA_H
