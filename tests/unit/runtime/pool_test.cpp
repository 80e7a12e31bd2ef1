//===- pool_test.cpp - Tests of max and average pooling ------------------===//
//
// Kernels against direct double references (padding, strides, dilation,
// ceil_mode, count_include_pad), the references' gradients against finite
// differences, ONNX test-data values, tie-breaking and descriptor errors.
//
//===----------------------------------------------------------------------===//
#include "test_util.h"

using namespace fcc::test;

namespace {

fcc_pool2d_desc makePool(int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                         int64_t kw, int64_t sh, int64_t sw, int64_t pt = 0,
                         int64_t pl = 0, int64_t pb = 0, int64_t pr = 0,
                         int ceil = 0, int includePad = 0, int64_t dh = 1,
                         int64_t dw = 1) {
  fcc_pool2d_desc d{};
  d.n = n, d.c = c, d.h = h, d.w = w, d.kh = kh, d.kw = kw;
  d.stride_h = sh, d.stride_w = sw;
  d.pad_t = pt, d.pad_l = pl, d.pad_b = pb, d.pad_r = pr;
  d.dil_h = dh, d.dil_w = dw;
  d.ceil_mode = ceil, d.count_include_pad = includePad;
  return d;
}

int64_t inSize(const fcc_pool2d_desc &d) { return d.n * d.c * d.h * d.w; }
int64_t outSize(const fcc_pool2d_desc &d) { return d.n * d.c * d.oh * d.ow; }

// For output element `o` of plane p: the flat input indices of the window's
// taps inside the real input (row-major window order), and the number of taps
// inside the padded input [-pad_begin, in + pad_end) in each dimension.
struct Window {
  std::vector<int64_t> real;
  int64_t paddedTaps;
};

Window window(const fcc_pool2d_desc &d, int64_t p, int64_t oh, int64_t ow) {
  Window win{{}, 0};
  int64_t padRows = 0, padCols = 0;
  for (int64_t i = 0; i < d.kh; ++i) {
    int64_t ih = oh * d.stride_h - d.pad_t + i * d.dil_h;
    padRows += ih >= -d.pad_t && ih < d.h + d.pad_b;
  }
  for (int64_t j = 0; j < d.kw; ++j) {
    int64_t iw = ow * d.stride_w - d.pad_l + j * d.dil_w;
    padCols += iw >= -d.pad_l && iw < d.w + d.pad_r;
  }
  for (int64_t i = 0; i < d.kh; ++i)
    for (int64_t j = 0; j < d.kw; ++j) {
      int64_t ih = oh * d.stride_h - d.pad_t + i * d.dil_h;
      int64_t iw = ow * d.stride_w - d.pad_l + j * d.dil_w;
      if (ih >= 0 && ih < d.h && iw >= 0 && iw < d.w)
        win.real.push_back((p * d.h + ih) * d.w + iw);
    }
  win.paddedTaps = padRows * padCols;
  return win;
}

template <typename F> void forEachWindow(const fcc_pool2d_desc &d, F f) {
  for (int64_t p = 0; p < d.n * d.c; ++p)
    for (int64_t oh = 0; oh < d.oh; ++oh)
      for (int64_t ow = 0; ow < d.ow; ++ow)
        f((p * d.oh + oh) * d.ow + ow, window(d, p, oh, ow));
}

int64_t firstMax(const Vec &x, const std::vector<int64_t> &taps) {
  int64_t best = taps.at(0);
  for (int64_t t : taps)
    if (x[t] > x[best])
      best = t;
  return best;
}

Vec maxRef(const fcc_pool2d_desc &d, const Vec &x) {
  Vec y(outSize(d));
  forEachWindow(
      d, [&](int64_t o, const Window &w) { y[o] = x[firstMax(x, w.real)]; });
  return y;
}

Vec maxBackwardRef(const fcc_pool2d_desc &d, const Vec &x, const Vec &dy) {
  Vec dx(inSize(d), 0.0);
  forEachWindow(
      d, [&](int64_t o, const Window &w) { dx[firstMax(x, w.real)] += dy[o]; });
  return dx;
}

double divisor(const fcc_pool2d_desc &d, const Window &w) {
  return d.count_include_pad ? double(w.paddedTaps) : double(w.real.size());
}

Vec avgRef(const fcc_pool2d_desc &d, const Vec &x) {
  Vec y(outSize(d));
  forEachWindow(d, [&](int64_t o, const Window &w) {
    double sum = 0.0;
    for (int64_t t : w.real)
      sum += x[t];
    y[o] = sum / divisor(d, w);
  });
  return y;
}

Vec avgBackwardRef(const fcc_pool2d_desc &d, const Vec &dy) {
  Vec dx(inSize(d), 0.0);
  forEachWindow(d, [&](int64_t o, const Window &w) {
    for (int64_t t : w.real)
      dx[t] += dy[o] / divisor(d, w);
  });
  return dx;
}

struct PoolCase {
  const char *name;
  fcc_pool2d_desc desc;
};

void PrintTo(const PoolCase &c, std::ostream *os) { *os << c.name; }

constexpr int64_t kMaxFiniteDifferenceInputs = 400;

class PoolKernel : public ::testing::TestWithParam<PoolCase> {};

TEST_P(PoolKernel, MaxMatchesReference) {
  fcc_pool2d_desc d = GetParam().desc;
  ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
  std::mt19937 rng(7);
  std::vector<float> x = distinctFloats(rng, inSize(d));
  std::vector<float> dy = randomFloats(rng, outSize(d));
  Vec xd = toDouble(x), dyd = toDouble(dy);

  std::vector<float> y(outSize(d), NAN), dx(inSize(d), NAN);
  fcc_cpu_max_pool2d_forward(&d, x.data(), y.data());
  EXPECT_TRUE(allClose(y, maxRef(d, xd), 0.0, 0.0)); // a max is exact
  fcc_cpu_max_pool2d_backward(&d, x.data(), dy.data(), dx.data());
  Vec dxRef = maxBackwardRef(d, xd, dyd);
  EXPECT_TRUE(allClose(dx, dxRef, 1e-6, 1e-7));
  // The reference gradient is the true one (no ties: max is locally linear).
  // Finite differences cost a forward per input: small cases only.
  if (inSize(d) <= kMaxFiniteDifferenceInputs) {
    Vec dxNum =
        numericGrad([&](const Vec &v) { return maxRef(d, v); }, xd, dyd, 1e-6);
    EXPECT_TRUE(allCloseD(dxRef, dxNum, 1e-7, 1e-8));
  }
}

TEST_P(PoolKernel, AvgMatchesReference) {
  for (int includePad : {0, 1}) {
    fcc_pool2d_desc d = GetParam().desc;
    d.count_include_pad = includePad;
    ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
    std::mt19937 rng(8);
    std::vector<float> x = randomFloats(rng, inSize(d));
    std::vector<float> dy = randomFloats(rng, outSize(d));
    Vec xd = toDouble(x), dyd = toDouble(dy);

    std::vector<float> y(outSize(d), NAN), dx(inSize(d), NAN);
    fcc_cpu_avg_pool2d_forward(&d, x.data(), y.data());
    Vec mag = avgRef(d, absolute(xd));
    EXPECT_TRUE(allClose(y, avgRef(d, xd), 1e-5, 1e-6, &mag))
        << "count_include_pad=" << includePad;
    fcc_cpu_avg_pool2d_backward(&d, dy.data(), dx.data());
    Vec dxRef = avgBackwardRef(d, dyd);
    mag = avgBackwardRef(d, absolute(dyd));
    EXPECT_TRUE(allClose(dx, dxRef, 1e-5, 1e-6, &mag))
        << "count_include_pad=" << includePad;
    if (inSize(d) <= kMaxFiniteDifferenceInputs) {
      Vec dxNum =
          numericGrad([&](const Vec &v) { return avgRef(d, v); }, xd, dyd);
      EXPECT_TRUE(allCloseD(dxRef, dxNum, 1e-7, 1e-8));
    }
  }
}

// clang-format off
INSTANTIATE_TEST_SUITE_P(
    Shapes, PoolKernel,
    ::testing::Values(
        PoolCase{"k2s2", makePool(2, 3, 8, 6, 2, 2, 2, 2)},
        PoolCase{"k3s2_pad1", makePool(2, 2, 7, 8, 3, 3, 2, 2, 1, 1, 1, 1)},
        PoolCase{"k3s2_pad1_ceil", makePool(1, 3, 8, 6, 3, 3, 2, 2, 1, 1, 1,
                                            1, 1)},
        PoolCase{"ceil_overhang", makePool(1, 2, 7, 5, 3, 2, 2, 2, 0, 0, 0,
                                           0, 1)},
        PoolCase{"asym_pads", makePool(2, 2, 6, 7, 3, 2, 1, 2, 0, 1, 2, 0)},
        PoolCase{"rect_stride_ceil", makePool(1, 2, 9, 7, 2, 3, 3, 2, 1, 0, 0,
                                              1, 1)},
        PoolCase{"dilated", makePool(1, 2, 9, 9, 2, 3, 1, 2, 1, 1, 1, 1, 0, 0,
                                     2, 2)},
        PoolCase{"dilated_ceil", makePool(1, 1, 10, 8, 3, 2, 2, 3, 1, 1, 1, 1,
                                          1, 0, 2, 1)},
        PoolCase{"global", makePool(2, 3, 5, 4, 5, 4, 1, 1)},
        PoolCase{"wide_row", makePool(1, 1, 2, 530, 2, 3, 1, 1, 0, 1, 0, 1)}),
    [](const ::testing::TestParamInfo<PoolCase> &info) {
      return std::string(info.param.name);
    });
// clang-format on

std::vector<float> iota(int n) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i)
    v[i] = float(i + 1);
  return v;
}

TEST(Pool, OnnxAveragePoolPrecomputedPadsCountIncludePad) {
  // ONNX averagepool_2d_precomputed_pads_count_include_pad: x = 1..25 (5x5),
  // kernel 5x5, stride 1, pads 2, count_include_pad: every divisor is 25.
  //   y[0][0] = (1+2+3 + 6+7+8 + 11+12+13) / 25 = 63/25 = 2.52
  //   y[0][4] = (3+4+5 + 8+9+10 + 13+14+15) / 25 = 81/25 = 3.24
  //   y[2][2] = (1 + ... + 25) / 25 = 325/25 = 13
  //   y[4][0] = (11+12+13 + 16+17+18 + 21+22+23) / 25 = 153/25 = 6.12
  // (the full table is the one in the ONNX operator documentation).
  fcc_pool2d_desc d = makePool(1, 1, 5, 5, 5, 5, 1, 1, 2, 2, 2, 2, 0, 1);
  ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK);
  std::vector<float> x = iota(25), y(25);
  fcc_cpu_avg_pool2d_forward(&d, x.data(), y.data());
  Vec expected = {2.52, 3.6,  4.8,  4.08,  3.24, //
                  4.56, 6.4,  8.4,  7.04,  5.52, //
                  7.2,  10.0, 13.0, 10.8,  8.4,  //
                  6.96, 9.6,  12.4, 10.24, 7.92, //
                  6.12, 8.4,  10.8, 8.88,  6.84};
  EXPECT_TRUE(allClose(y, expected, 1e-6, 1e-6));
}

TEST(Pool, OnnxCeilMode) {
  // ONNX maxpool_2d_ceil / averagepool_2d_ceil: x = 1..16 (4x4), kernel 3,
  // stride 2, ceil_mode: windows start at 0 and 2; the second is clipped to
  // two columns/rows. Max: [[11, 12], [15, 16]]. Average (no padding, so the
  // divisor is the clipped size): y[0][1] = (3+4+7+8+11+12)/6 = 7.5,
  // y[0][0] = (1+2+3+5+6+7+9+10+11)/9 = 6, y[1][0] = (9+10+11+13+14+15)/6 = 12,
  // y[1][1] = (11+12+15+16)/4 = 13.5.
  for (int includePad : {0, 1}) {
    fcc_pool2d_desc d =
        makePool(1, 1, 4, 4, 3, 3, 2, 2, 0, 0, 0, 0, 1, includePad);
    ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK);
    ASSERT_EQ(d.oh, 2);
    ASSERT_EQ(d.ow, 2);
    std::vector<float> x = iota(16), y(4);
    fcc_cpu_max_pool2d_forward(&d, x.data(), y.data());
    EXPECT_TRUE(allClose(y, {11, 12, 15, 16}, 0, 0));
    fcc_cpu_avg_pool2d_forward(&d, x.data(), y.data());
    EXPECT_TRUE(allClose(y, {6, 7.5, 12, 13.5}, 1e-6, 1e-6));
  }
}

TEST(Pool, CountIncludePadClipsToPaddedInput) {
  // 1x1x3x3 ones, kernel 2, stride 2, pad_t = pad_l = 1, ceil_mode: windows
  // start at -1 and 1. Window (0,0) covers one real element and three pad
  // taps: divisor 4 with count_include_pad (1/4), 1 without (1). Window (1,1)
  // covers rows/cols 1..2, all real: 1 either way. Window (0,1): 2 real of 4.
  fcc_pool2d_desc d = makePool(1, 1, 3, 3, 2, 2, 2, 2, 1, 1, 0, 0, 1, 1);
  ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK);
  ASSERT_EQ(d.oh, 2);
  std::vector<float> x(9, 1.0f), y(4);
  fcc_cpu_avg_pool2d_forward(&d, x.data(), y.data());
  EXPECT_TRUE(allClose(y, {0.25, 0.5, 0.5, 1.0}));
  d.count_include_pad = 0;
  fcc_cpu_avg_pool2d_forward(&d, x.data(), y.data());
  EXPECT_TRUE(allClose(y, {1, 1, 1, 1}));
  // Ceil-mode overhang beyond the end padding is not counted either: 1x1x3x3,
  // kernel 2, stride 2, no pads, ceil: window (1,1) holds only x[2][2] and
  // the padded input is the real input, so the divisor is 1 in both modes.
  d = makePool(1, 1, 3, 3, 2, 2, 2, 2, 0, 0, 0, 0, 1, 1);
  ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK);
  fcc_cpu_avg_pool2d_forward(&d, x.data(), y.data());
  EXPECT_TRUE(allClose(y, {1, 1, 1, 1}));
}

TEST(Pool, MaxTiesGoToFirstAndPaddingNeverWins) {
  // All-equal window: the gradient goes to the first element (row-major).
  fcc_pool2d_desc d = makePool(1, 1, 2, 2, 2, 2, 1, 1);
  ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK);
  std::vector<float> x = {5, 5, 5, 5}, y(1), dy = {3}, dx(4, NAN);
  fcc_cpu_max_pool2d_forward(&d, x.data(), y.data());
  EXPECT_EQ(y[0], 5.0f);
  fcc_cpu_max_pool2d_backward(&d, x.data(), dy.data(), dx.data());
  EXPECT_TRUE(allClose(dx, {3, 0, 0, 0}, 0, 0));
  // Negative inputs with padding: the zero padding must not win.
  d = makePool(1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0);
  ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK);
  x = {-4, -3, -2, -1};
  y.assign(4, NAN);
  fcc_cpu_max_pool2d_forward(&d, x.data(), y.data());
  // Windows: (0,0) {-4}; (0,1) {-4,-3}; (1,0) {-4,-2}; (1,1) all four.
  EXPECT_TRUE(allClose(y, {-4, -3, -2, -1}, 0, 0));
  // Each element wins exactly one window: -4 wins (0,0), -3 (0,1), -2 (1,0)
  // and -1 (1,1).
  dy = {1, 1, 1, 1};
  fcc_cpu_max_pool2d_backward(&d, x.data(), dy.data(), dx.data());
  EXPECT_TRUE(allClose(dx, {1, 1, 1, 1}, 0, 0));
  // x = [[9, 1], [1, 1]]: 9 wins all four windows, so it collects 4.
  x = {9, 1, 1, 1};
  fcc_cpu_max_pool2d_backward(&d, x.data(), dy.data(), dx.data());
  EXPECT_TRUE(allClose(dx, {4, 0, 0, 0}, 0, 0));
  // NaN propagates (PyTorch): [[1, NaN], [3, 2]] -> windows holding the NaN
  // ((0,1) and (1,1)) give NaN.
  x = {1, NAN, 3, 2};
  fcc_cpu_max_pool2d_forward(&d, x.data(), y.data());
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_TRUE(std::isnan(y[1]));
  EXPECT_EQ(y[2], 3.0f);
  EXPECT_TRUE(std::isnan(y[3]));
  // ... and gets the gradient: x = [[1, 2], [NaN, 4]]: windows (0,0) {1},
  // (0,1) {1, 2}, (1,0) {1, NaN}, (1,1) {1, 2, NaN, 4} -> y = [1, 2, NaN, NaN]
  // and dy = [1, 2, 4, 8] routes to x00 += 1, x01 += 2, x10 += 4 + 8.
  x = {1, 2, NAN, 4};
  dy = {1, 2, 4, 8};
  fcc_cpu_max_pool2d_forward(&d, x.data(), y.data());
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], 2.0f);
  EXPECT_TRUE(std::isnan(y[2]));
  EXPECT_TRUE(std::isnan(y[3]));
  fcc_cpu_max_pool2d_backward(&d, x.data(), dy.data(), dx.data());
  EXPECT_TRUE(allClose(dx, {1, 2, 12, 0}, 0, 0));
}

TEST(Pool, ZeroDilationMeansDense) {
  // Average pooling callers may leave the (max-pooling) dilation at 0.
  fcc_pool2d_desc d = makePool(1, 1, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
  ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
  EXPECT_EQ(d.dil_h, 1);
  EXPECT_EQ(d.dil_w, 1);
  EXPECT_EQ(d.oh, 2);
  EXPECT_EQ(d.ow, 2);
}

TEST(Pool, InvalidDescriptors) {
  fcc_pool2d_desc d = makePool(1, 1, 4, 4, 0, 2, 1, 1);
  EXPECT_EQ(fcc_pool2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "kernel size"));
  d = makePool(1, 1, 2, 2, 3, 3, 1, 1);
  EXPECT_EQ(fcc_pool2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "empty output"));
  d = makePool(1, 1, 4, 4, 2, 2, 1, 1, 2, 0, 0, 0);
  EXPECT_EQ(fcc_pool2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "entirely in the padding"))
      << fcc_cpu_last_error();
  d = makePool(1, 1, 4, 4, 2, 2, 1, 0);
  EXPECT_EQ(fcc_pool2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "strides"));
  d = makePool(1, 1, 4, 4, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, -1, 1);
  EXPECT_EQ(fcc_pool2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "dilations"));
  d = makePool(0, 1, 4, 4, 2, 2, 1, 1);
  EXPECT_EQ(fcc_pool2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "input shape"));
}

} // namespace
