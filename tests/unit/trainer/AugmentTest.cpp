//===- AugmentTest.cpp - Shuffling, augmentation and normalisation --------===//
//
// Reflection follows numpy's np.pad(mode="reflect") (the tables below are
// that function's output, worked out by hand); crops, flips and cutout are
// checked on tiny hand-computed images and against a naive reference
// (pad -> crop -> flip -> cutout, written separately here).
//
//===----------------------------------------------------------------------===//
#include "Augment.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <vector>

using namespace fcc::trainer;

namespace {

// Reflection by repeated mirroring (a different formulation from the
// periodic one of the library).
int64_t referenceReflect(int64_t i, int64_t n) {
  if (n == 1)
    return 0;
  while (i < 0 || i >= n) {
    if (i < 0)
      i = -i;
    if (i >= n)
      i = 2 * (n - 1) - i;
  }
  return i;
}

TEST(Augment, ReflectIndexMatchesNumpyReflect) {
  // np.pad(np.arange(4), 5, mode="reflect") = [1 2 3 2 1 0 1 2 3 2 1 0 1 2]
  const int64_t n4[] = {1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2};
  for (int64_t i = -5; i < 4 + 5; ++i)
    EXPECT_EQ(reflectIndex(i, 4), n4[i + 5]) << "i=" << i;
  // np.pad(np.arange(2), 5, mode="reflect") = [1 0 1 0 1 0 1 0 1 0 1 0]
  for (int64_t i = -5; i < 2 + 5; ++i)
    EXPECT_EQ(reflectIndex(i, 2), (i + 5) % 2 == 0 ? 1 : 0) << "i=" << i;
  // The edge is not repeated: -1 -> 1, n -> n - 2.
  EXPECT_EQ(reflectIndex(-1, 32), 1);
  EXPECT_EQ(reflectIndex(-4, 32), 4);
  EXPECT_EQ(reflectIndex(32, 32), 30);
  EXPECT_EQ(reflectIndex(35, 32), 27);
  // A single pixel reflects onto itself.
  for (int64_t i = -3; i <= 3; ++i)
    EXPECT_EQ(reflectIndex(i, 1), 0);
}

TEST(Augment, ReflectIndexAgreesWithMirroring) {
  for (int64_t n = 1; n <= 9; ++n)
    for (int64_t i = -40; i <= 40; ++i)
      ASSERT_EQ(reflectIndex(i, n), referenceReflect(i, n))
          << "i=" << i << " n=" << n;
}

TEST(Augment, ReflectPadTinyImage) {
  // np.pad([[1,2,3],[4,5,6]], 1, mode="reflect")
  const float src[] = {1, 2, 3, 4, 5, 6};
  const float expected[] = {5, 4, 5, 6, 5, //
                            2, 1, 2, 3, 2, //
                            5, 4, 5, 6, 5, //
                            2, 1, 2, 3, 2};
  float dst[20] = {};
  reflectPad(src, 1, 2, 3, 1, dst);
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(dst[i], expected[i]) << "at " << i;
}

TEST(Augment, ReflectPadKeepsChannelsApart) {
  const float src[] = {1, 2, 3, 4, 10, 20, 30, 40}; // 2 channels of 2x2
  float dst[2 * 4 * 4] = {};
  reflectPad(src, 2, 2, 2, 1, dst);
  // Padded 2x2 by 1: every row is [b a b a] for the image row [a b].
  const float c0[] = {4, 3, 4, 3, 2, 1, 2, 1, 4, 3, 4, 3, 2, 1, 2, 1};
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(dst[i], c0[i]) << "channel 0 at " << i;
    EXPECT_EQ(dst[16 + i], 10 * c0[i]) << "channel 1 at " << i;
  }
}

TEST(Augment, NormaliseImage) {
  const uint8_t src[] = {0, 10, 255, 128, // channel 0 (2x2)
                         50, 60, 70, 80}; // channel 1
  const float mean[] = {10.0f, 60.0f}, invStd[] = {0.5f, 0.25f};
  float dst[8];
  normaliseImage(src, 2, 2, 2, mean, invStd, dst);
  const float expected[] = {-5.0f, 0.0f, 122.5f, 59.0f,
                            -2.5f, 0.0f, 2.5f,   5.0f};
  for (int i = 0; i < 8; ++i)
    EXPECT_FLOAT_EQ(dst[i], expected[i]) << "at " << i;
}

// A 2x4 image [[1 2 3 4] [5 6 7 8]] reflect-padded by 1 is
//   6 5 6 7 8 7
//   2 1 2 3 4 3
//   6 5 6 7 8 7
//   2 1 2 3 4 3
const float kImage2x4[] = {1, 2, 3, 4, 5, 6, 7, 8};

std::vector<float> augment2x4(const AugmentConfig &config,
                              const ExampleAugment &draw) {
  std::vector<float> out(8, -1.0f);
  augmentImage(kImage2x4, 1, 2, 4, config, draw, out.data());
  return out;
}

TEST(Augment, CropTinyImage) {
  AugmentConfig config;
  config.pad = 1;
  ExampleAugment draw;
  draw.dy = 0;
  draw.dx = 2;
  EXPECT_EQ(augment2x4(config, draw),
            (std::vector<float>{6, 7, 8, 7, 2, 3, 4, 3}));
  draw.dy = 2;
  draw.dx = 0;
  EXPECT_EQ(augment2x4(config, draw),
            (std::vector<float>{6, 5, 6, 7, 2, 1, 2, 3}));
  // The centre crop (dy = dx = pad) is the image itself.
  draw.dy = draw.dx = 1;
  EXPECT_EQ(augment2x4(config, draw),
            (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Augment, FlipTinyImage) {
  AugmentConfig config; // no crop
  config.flip = true;
  ExampleAugment draw;
  draw.flip = 1;
  EXPECT_EQ(augment2x4(config, draw),
            (std::vector<float>{4, 3, 2, 1, 8, 7, 6, 5}));
  draw.flip = 0;
  EXPECT_EQ(augment2x4(config, draw),
            (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Augment, CropThenFlip) {
  AugmentConfig config;
  config.pad = 1;
  config.flip = true;
  ExampleAugment draw;
  draw.flip = 1;
  draw.dy = 0;
  draw.dx = 2; // crop [[6 7 8 7] [2 3 4 3]], then mirrored
  EXPECT_EQ(augment2x4(config, draw),
            (std::vector<float>{7, 8, 7, 6, 3, 4, 3, 2}));
  draw.dy = 2;
  draw.dx = 0; // crop [[6 5 6 7] [2 1 2 3]], then mirrored
  EXPECT_EQ(augment2x4(config, draw),
            (std::vector<float>{7, 6, 5, 6, 3, 2, 1, 2}));
}

TEST(Augment, CropFlipCutout) {
  AugmentConfig config;
  config.pad = 1;
  config.flip = true;
  config.cutout = 2;
  ExampleAugment draw;
  draw.flip = 1;
  draw.dy = 0;
  draw.dx = 2;
  // Cutout after the flip: size 2 centred at (0, 3) covers rows -1..0 and
  // columns 2..3, clipped to row 0, columns 2..3.
  draw.cy = 0;
  draw.cx = 3;
  EXPECT_EQ(augment2x4(config, draw),
            (std::vector<float>{7, 8, 0, 0, 3, 4, 3, 2}));
  // cy = cx = -1: no cutout even though it is configured.
  draw.cy = draw.cx = -1;
  EXPECT_EQ(augment2x4(config, draw),
            (std::vector<float>{7, 8, 7, 6, 3, 4, 3, 2}));
}

std::vector<float> cutout3x3(int size, int64_t cy, int64_t cx) {
  std::vector<float> image(2 * 9, 1.0f); // two channels of ones
  applyCutout(image.data(), 2, 3, 3, size, cy, cx);
  return image;
}

TEST(Augment, CutoutTinyImage) {
  using V = std::vector<float>;
  // size 2 at (0, 0): rows/columns -1..0, clipped to the corner.
  V a = {0, 1, 1, 1, 1, 1, 1, 1, 1};
  // size 3 at (1, 1): rows/columns 0..2, everything.
  V b(9, 0.0f);
  // size 2 at (2, 2): rows/columns 1..2.
  V c = {1, 1, 1, 1, 0, 0, 1, 0, 0};
  // size 1 at (1, 2): that pixel.
  V d = {1, 1, 1, 1, 1, 0, 1, 1, 1};
  // size 4 at (0, 2): rows -2..1, columns 0..3 -> rows 0..1, all columns.
  V e = {0, 0, 0, 0, 0, 0, 1, 1, 1};
  struct Case {
    int size;
    int64_t cy, cx;
    V plane;
  } cases[] = {{2, 0, 0, a}, {3, 1, 1, b}, {2, 2, 2, c}, {1, 1, 2, d},
               {4, 0, 2, e}};
  for (const Case &k : cases) {
    V both = k.plane;
    both.insert(both.end(), k.plane.begin(), k.plane.end());
    EXPECT_EQ(cutout3x3(k.size, k.cy, k.cx), both)
        << "size " << k.size << " at (" << k.cy << ", " << k.cx << ")";
  }
  // Off: size 0 or a negative centre.
  EXPECT_EQ(cutout3x3(0, 1, 1), V(18, 1.0f));
  EXPECT_EQ(cutout3x3(2, -1, 1), V(18, 1.0f));
}

// pad -> crop -> flip -> cutout, one step at a time.
std::vector<float> referenceAugment(const std::vector<float> &src, int64_t c,
                                    int64_t h, int64_t w,
                                    const AugmentConfig &config,
                                    const ExampleAugment &d) {
  const int64_t p = config.pad, ph = h + 2 * p, pw = w + 2 * p;
  std::vector<float> padded(size_t(c * ph * pw));
  for (int64_t k = 0; k < c; ++k)
    for (int64_t y = 0; y < ph; ++y)
      for (int64_t x = 0; x < pw; ++x)
        padded[size_t((k * ph + y) * pw + x)] =
            src[size_t((k * h + referenceReflect(y - p, h)) * w +
                       referenceReflect(x - p, w))];
  std::vector<float> crop(size_t(c * h * w));
  for (int64_t k = 0; k < c; ++k)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        crop[size_t((k * h + y) * w + x)] =
            padded[size_t((k * ph + y + d.dy) * pw + x + d.dx)];
  std::vector<float> out = crop;
  if (d.flip)
    for (int64_t k = 0; k < c; ++k)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
          out[size_t((k * h + y) * w + x)] =
              crop[size_t((k * h + y) * w + (w - 1 - x))];
  if (config.cutout > 0 && d.cy >= 0)
    for (int64_t k = 0; k < c; ++k)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          int64_t top = d.cy - config.cutout / 2, left = d.cx - config.cutout / 2;
          if (y >= top && y < top + config.cutout && x >= left &&
              x < left + config.cutout)
            out[size_t((k * h + y) * w + x)] = 0.0f;
        }
  return out;
}

TEST(Augment, AugmentImageMatchesReference) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> value(-3.0f, 3.0f);
  struct Shape {
    int64_t c, h, w;
    int pad, cutout;
  } shapes[] = {{3, 8, 8, 2, 3}, {1, 5, 7, 3, 2}, {2, 6, 4, 4, 5},
                {3, 32, 32, 4, 8}};
  for (const Shape &s : shapes) {
    std::vector<float> src(size_t(s.c * s.h * s.w));
    for (float &v : src)
      v = value(rng);
    AugmentConfig config;
    config.pad = s.pad;
    config.flip = true;
    config.cutout = s.cutout;
    for (int64_t example = 0; example < 40; ++example) {
      ExampleAugment d = drawAugmentation(config, s.h, s.w, 11, 3, example);
      std::vector<float> out(src.size());
      augmentImage(src.data(), s.c, s.h, s.w, config, d, out.data());
      ASSERT_EQ(out, referenceAugment(src, s.c, s.h, s.w, config, d))
          << s.c << "x" << s.h << "x" << s.w << " pad " << s.pad
          << " example " << example << " draw dy=" << d.dy << " dx=" << d.dx
          << " flip=" << d.flip << " cy=" << d.cy << " cx=" << d.cx;
    }
  }
}

bool isPermutation(std::vector<int64_t> v, int64_t begin, int64_t end) {
  std::sort(v.begin(), v.end());
  std::vector<int64_t> want(size_t(end - begin));
  std::iota(want.begin(), want.end(), begin);
  return v == want;
}

TEST(Augment, EpochOrderIsADeterministicPermutation) {
  for (int64_t count : {1, 2, 7, 1000}) {
    std::vector<int64_t> a = epochOrder(count, Shard{}, 5, 0);
    EXPECT_TRUE(isPermutation(a, 0, count)) << "count " << count;
    EXPECT_EQ(a, epochOrder(count, Shard{}, 5, 0)) << "count " << count;
  }
}

TEST(Augment, EpochOrderDependsOnEpochAndSeed) {
  const int64_t n = 1000;
  std::vector<int64_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  std::vector<int64_t> e0 = epochOrder(n, Shard{}, 5, 0);
  std::vector<int64_t> e1 = epochOrder(n, Shard{}, 5, 1);
  std::vector<int64_t> s6 = epochOrder(n, Shard{}, 6, 0);
  EXPECT_NE(e0, identity);
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, s6);
  EXPECT_TRUE(isPermutation(e1, 0, n));
  EXPECT_TRUE(isPermutation(s6, 0, n));
  // A shuffle moves almost everything: few fixed points (about 1 expected).
  int64_t fixed = 0;
  for (int64_t i = 0; i < n; ++i)
    fixed += e0[size_t(i)] == i;
  EXPECT_LT(fixed, 10);
  // Every example is roughly equally likely in the first position over
  // epochs (a broken shuffle tends to favour the first or last ones).
  std::vector<int> first(4, 0);
  for (int64_t e = 0; e < 4000; ++e)
    ++first[size_t(epochOrder(4, Shard{}, 1, e)[0])];
  for (int k = 0; k < 4; ++k)
    EXPECT_NEAR(first[size_t(k)], 1000, 150) << "example " << k;
}

TEST(Augment, EpochOrderShards) {
  // 10 examples over 3 ranks: [0, 3), [3, 6), [6, 10).
  std::vector<int64_t> all;
  const int64_t bounds[4] = {0, 3, 6, 10};
  for (int r = 0; r < 3; ++r) {
    std::vector<int64_t> part = epochOrder(10, Shard{r, 3}, 9, 2);
    EXPECT_TRUE(isPermutation(part, bounds[r], bounds[r + 1])) << "rank " << r;
    all.insert(all.end(), part.begin(), part.end());
  }
  EXPECT_TRUE(isPermutation(all, 0, 10));
}

TEST(Augment, ShuffleIsAPermutation) {
  std::vector<int64_t> v = {10, 11, 12, 13, 14, 15, 16, 17};
  std::vector<int64_t> w = v;
  shuffle(w, 3, 42);
  EXPECT_TRUE(isPermutation(w, 10, 18));
  std::vector<int64_t> again = v;
  shuffle(again, 3, 42);
  EXPECT_EQ(w, again);
  std::vector<int64_t> empty;
  shuffle(empty, 3, 42);
  EXPECT_TRUE(empty.empty());
}

TEST(Augment, DrawAugmentationRanges) {
  AugmentConfig config;
  config.pad = 4;
  config.flip = true;
  config.cutout = 8;
  const int64_t h = 12, w = 20;
  std::set<int> dys, dxs, flips, cys, cxs;
  for (int64_t example = 0; example < 2000; ++example) {
    ExampleAugment a = drawAugmentation(config, h, w, 1, 0, example);
    ASSERT_GE(a.dy, 0);
    ASSERT_LE(a.dy, 2 * config.pad);
    ASSERT_GE(a.dx, 0);
    ASSERT_LE(a.dx, 2 * config.pad);
    ASSERT_TRUE(a.flip == 0 || a.flip == 1);
    ASSERT_GE(a.cy, 0);
    ASSERT_LT(a.cy, h);
    ASSERT_GE(a.cx, 0);
    ASSERT_LT(a.cx, w);
    dys.insert(a.dy);
    dxs.insert(a.dx);
    flips.insert(a.flip);
    cys.insert(a.cy);
    cxs.insert(a.cx);
  }
  // Every value of each range occurs.
  EXPECT_EQ(dys.size(), size_t(2 * config.pad + 1));
  EXPECT_EQ(dxs.size(), size_t(2 * config.pad + 1));
  EXPECT_EQ(flips.size(), 2u);
  EXPECT_EQ(cys.size(), size_t(h));
  EXPECT_EQ(cxs.size(), size_t(w));
}

TEST(Augment, DrawAugmentationOff) {
  AugmentConfig off;
  for (int64_t example = 0; example < 100; ++example) {
    ExampleAugment a = drawAugmentation(off, 32, 32, 1, 0, example);
    EXPECT_EQ(a.dy, 0);
    EXPECT_EQ(a.dx, 0);
    EXPECT_EQ(a.flip, 0);
    EXPECT_EQ(a.cy, -1);
    EXPECT_EQ(a.cx, -1);
  }
}

bool sameDraw(const ExampleAugment &a, const ExampleAugment &b) {
  return a.dy == b.dy && a.dx == b.dx && a.flip == b.flip && a.cy == b.cy &&
         a.cx == b.cx;
}

TEST(Augment, DrawAugmentationIsKeyedBySeedEpochAndExample) {
  AugmentConfig config;
  config.pad = 4;
  config.flip = true;
  config.cutout = 8;
  int sameEpoch = 0, sameSeed = 0, sameExample = 0;
  for (int64_t example = 0; example < 200; ++example) {
    ExampleAugment a = drawAugmentation(config, 32, 32, 1, 0, example);
    EXPECT_TRUE(sameDraw(a, drawAugmentation(config, 32, 32, 1, 0, example)));
    sameEpoch += sameDraw(a, drawAugmentation(config, 32, 32, 1, 1, example));
    sameSeed += sameDraw(a, drawAugmentation(config, 32, 32, 2, 0, example));
    sameExample +=
        sameDraw(a, drawAugmentation(config, 32, 32, 1, 0, example + 1));
  }
  // Coincidences need 5 equal draws (about 1/(9*9*2*32*32) each).
  EXPECT_LT(sameEpoch, 3);
  EXPECT_LT(sameSeed, 3);
  EXPECT_LT(sameExample, 3);
}

TEST(Augment, StepSeeds) {
  std::set<uint64_t> seen;
  for (int64_t step = 0; step < 1000; ++step) {
    uint64_t s = stepSeed(7, step);
    EXPECT_EQ(s, stepSeed(7, step));
    seen.insert(s);
  }
  EXPECT_EQ(seen.size(), 1000u);
  EXPECT_NE(stepSeed(7, 0), stepSeed(8, 0));
}

} // namespace
