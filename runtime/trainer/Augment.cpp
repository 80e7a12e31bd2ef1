//===- Augment.cpp - Shuffling, augmentation and normalisation of images --===//
//
// Implements Augment.h. Philox streams are separated by a tag in the high
// bits of the stream number so that shuffles, augmentation draws and step
// seeds never share random numbers.
//
//===----------------------------------------------------------------------===//
#include "Augment.h"

#include "fcc/runtime/cpu_kernels.h"

#include <algorithm>

namespace fcc::trainer {

namespace {

enum : uint64_t {
  kShuffleTag = 1,
  kAugmentTag = 2,
  kStepTag = 3,
};

uint64_t streamOf(uint64_t tag, uint64_t value) {
  return tag << 56 | (value & ((uint64_t(1) << 56) - 1));
}

// Uniform integer in [0, bound) from 32 random bits (multiply-shift; the bias
// is below 2^-32 * bound, irrelevant here, and the result is deterministic).
int64_t below(uint32_t bits, int64_t bound) {
  return int64_t((uint64_t(bits) * uint64_t(bound)) >> 32);
}

} // namespace

void shuffle(std::vector<int64_t> &v, uint64_t seed, uint64_t stream) {
  for (int64_t i = int64_t(v.size()) - 1; i > 0; --i) {
    int64_t j = below(fcc_random_u32(seed, stream, uint64_t(i)), i + 1);
    std::swap(v[size_t(i)], v[size_t(j)]);
  }
}

std::vector<int64_t> epochOrder(int64_t count, Shard shard, uint64_t seed,
                                int64_t epoch) {
  int64_t begin = count * shard.rank / shard.size;
  int64_t end = count * (shard.rank + 1) / shard.size;
  std::vector<int64_t> order(size_t(end - begin));
  for (int64_t i = begin; i < end; ++i)
    order[size_t(i - begin)] = i;
  shuffle(order, seed, streamOf(kShuffleTag, uint64_t(epoch)));
  return order;
}

ExampleAugment drawAugmentation(const AugmentConfig &config, int64_t height,
                                int64_t width, uint64_t seed, int64_t epoch,
                                int64_t example) {
  uint64_t stream = streamOf(kAugmentTag, uint64_t(epoch));
  uint64_t base = uint64_t(example) * 8;
  auto bits = [&](int k) { return fcc_random_u32(seed, stream, base + k); };
  ExampleAugment a;
  if (config.pad > 0) {
    a.dy = int32_t(below(bits(0), 2 * config.pad + 1));
    a.dx = int32_t(below(bits(1), 2 * config.pad + 1));
  } else {
    a.dy = a.dx = 0;
  }
  a.flip = config.flip ? int32_t(bits(2) >> 31) : 0;
  if (config.cutout > 0) {
    a.cy = int32_t(below(bits(3), height));
    a.cx = int32_t(below(bits(4), width));
  }
  return a;
}

uint64_t stepSeed(uint64_t seed, int64_t step) {
  uint64_t stream = streamOf(kStepTag, 0);
  return uint64_t(fcc_random_u32(seed, stream, 2 * uint64_t(step))) << 32 |
         fcc_random_u32(seed, stream, 2 * uint64_t(step) + 1);
}

int64_t reflectIndex(int64_t i, int64_t n) {
  if (n <= 1)
    return 0;
  int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0)
    i += period;
  return i < n ? i : period - i;
}

void reflectPad(const float *src, int64_t channels, int64_t height,
                int64_t width, int pad, float *dst) {
  int64_t ph = height + 2 * pad, pw = width + 2 * pad;
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t y = 0; y < ph; ++y)
      for (int64_t x = 0; x < pw; ++x)
        dst[(c * ph + y) * pw + x] =
            src[(c * height + reflectIndex(y - pad, height)) * width +
                reflectIndex(x - pad, width)];
}

void normaliseImage(const uint8_t *src, int64_t channels, int64_t height,
                    int64_t width, const float *mean, const float *invStd,
                    float *dst) {
  int64_t plane = height * width;
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t k = 0; k < plane; ++k)
      dst[c * plane + k] = (float(src[c * plane + k]) - mean[c]) * invStd[c];
}

void applyCutout(float *image, int64_t channels, int64_t height,
                 int64_t width, int size, int64_t cy, int64_t cx) {
  if (size <= 0 || cy < 0 || cx < 0)
    return;
  int64_t y0 = std::max<int64_t>(0, cy - size / 2);
  int64_t y1 = std::min<int64_t>(height, cy - size / 2 + size);
  int64_t x0 = std::max<int64_t>(0, cx - size / 2);
  int64_t x1 = std::min<int64_t>(width, cx - size / 2 + size);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = x0; x < x1; ++x)
        image[(c * height + y) * width + x] = 0.0f;
}

void augmentImage(const float *src, int64_t channels, int64_t height,
                  int64_t width, const AugmentConfig &config,
                  const ExampleAugment &draw, float *dst) {
  // Output (y, x) after the flip reads crop column x' = flip ? W-1-x : x,
  // i.e. padded (y + dy, x' + dx), i.e. source (y + dy - pad, x' + dx - pad)
  // reflected into the image.
  int pad = config.pad;
  for (int64_t c = 0; c < channels; ++c) {
    const float *plane = src + c * height * width;
    float *out = dst + c * height * width;
    for (int64_t y = 0; y < height; ++y) {
      const float *row = plane + reflectIndex(y + draw.dy - pad, height) * width;
      for (int64_t x = 0; x < width; ++x) {
        int64_t xc = draw.flip ? width - 1 - x : x;
        out[y * width + x] = row[reflectIndex(xc + draw.dx - pad, width)];
      }
    }
  }
  applyCutout(dst, channels, height, width, config.cutout, draw.cy, draw.cx);
}

} // namespace fcc::trainer
