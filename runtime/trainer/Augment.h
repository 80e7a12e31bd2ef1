//===- Augment.h - Shuffling, augmentation and normalisation of images ----===//
//
// The random parts of the data pipeline are drawn here, on the host, from
// Philox (fcc_random_u32) keyed by the run's seed and the epoch, so every
// backend (the CPU now, the GPU later) trains on exactly the same examples in
// the same order with the same crops, flips and cutout squares:
//  - epochOrder(): which examples this process trains on in an epoch, and in
//    which order (Fisher-Yates shuffle). The one place that will decide the
//    shard of each data-parallel rank.
//  - drawAugmentation(): the crop offset, flip and cutout centre of one
//    example in one epoch (keyed by the example's index, not its position,
//    so sharding does not change an example's augmentation).
// Applying them (normaliseImage, augmentImage) is a pure function of the
// image and those draws; the CPU backend calls these, a GPU backend will run
// the same arithmetic in a kernel.
//
// Order of operations for a training image: normalise (per-channel mean/std)
// -> reflect-pad by `pad` and crop back to HxW at offset (dy, dx) -> flip
// horizontally -> cutout (a size x size square of zeros, clipped at the
// borders, rows cy - size/2 .. cy - size/2 + size - 1, likewise columns).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINER_AUGMENT_H
#define FCC_TRAINER_AUGMENT_H

#include <cstdint>
#include <vector>

namespace fcc::trainer {

struct AugmentConfig {
  int pad = 0;    // reflect-pad then random crop; 0 = off
  bool flip = false;
  int cutout = 0; // square size in pixels; 0 = off
};

// One example's draws for one epoch.
struct ExampleAugment {
  int32_t dy = 0, dx = 0; // crop offset in the padded image, 0 .. 2*pad
  int32_t flip = 0;       // 1 = mirror horizontally
  int32_t cy = -1, cx = -1; // cutout centre, or -1 when cutout is off
};

// The part of the data set one process trains on (data parallelism later:
// rank r of size trains on a fixed contiguous shard).
struct Shard {
  int rank = 0, size = 1;
};

// The training examples of `shard` for `epoch`, shuffled with Philox keyed
// by (seed, epoch). seed is the run's seed.
std::vector<int64_t> epochOrder(int64_t count, Shard shard, uint64_t seed,
                                int64_t epoch);

// Fisher-Yates shuffle of v with Philox stream (seed, stream).
void shuffle(std::vector<int64_t> &v, uint64_t seed, uint64_t stream);

ExampleAugment drawAugmentation(const AugmentConfig &config, int64_t height,
                                int64_t width, uint64_t seed, int64_t epoch,
                                int64_t example);

// The Philox-derived seed of training step `step` (dropout masks).
uint64_t stepSeed(uint64_t seed, int64_t step);

// Index of padded coordinate i (may be < 0 or >= n) in 0 .. n-1 under
// reflection without repeating the edge (numpy "reflect", PyTorch
// ReflectionPad2d): -1 -> 1, n -> n-2.
int64_t reflectIndex(int64_t i, int64_t n);

// dst[c][y][x] (C x (H+2p) x (W+2p)) = src[c][reflect(y-p)][reflect(x-p)].
void reflectPad(const float *src, int64_t channels, int64_t height,
                int64_t width, int pad, float *dst);

// dst = (src - mean[c]) / std[c], CHW.
void normaliseImage(const uint8_t *src, int64_t channels, int64_t height,
                    int64_t width, const float *mean, const float *invStd,
                    float *dst);

// dst = cutout(flip(crop(reflectPad(src)))) for one normalised CHW image;
// dst must not alias src.
void augmentImage(const float *src, int64_t channels, int64_t height,
                  int64_t width, const AugmentConfig &config,
                  const ExampleAugment &draw, float *dst);

// Zeroes the size x size square centred at (cy, cx), clipped, in all
// channels.
void applyCutout(float *image, int64_t channels, int64_t height,
                 int64_t width, int size, int64_t cy, int64_t cx);

} // namespace fcc::trainer

#endif // FCC_TRAINER_AUGMENT_H
