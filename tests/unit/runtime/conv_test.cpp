//===- conv_test.cpp - Tests of the oneDNN convolution kernels -----------===//
//
// Forward, backward-data and backward-filter convolution against direct-loop
// double references (whose gradients are in turn checked with finite
// differences), on shapes covering groups, depthwise, dilation, strides and
// asymmetric padding; plus hand-computed values, descriptor validation,
// determinism and the shared output-size rule.
//
//===----------------------------------------------------------------------===//
#include "test_util.h"

#include <cstring>
#include <memory>

using namespace fcc::test;

namespace {

struct PlanDeleter {
  void operator()(fcc_conv2d_plan *p) const { fcc_cpu_conv2d_destroy(p); }
};
using PlanPtr = std::unique_ptr<fcc_conv2d_plan, PlanDeleter>;

fcc_conv2d_desc makeDesc(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                         int64_t r, int64_t s, int64_t strideH = 1,
                         int64_t strideW = 1, int64_t padT = 0,
                         int64_t padL = 0, int64_t padB = 0, int64_t padR = 0,
                         int64_t dilH = 1, int64_t dilW = 1,
                         int64_t groups = 1) {
  fcc_conv2d_desc d{};
  d.n = n, d.c = c, d.h = h, d.w = w, d.k = k, d.r = r, d.s = s;
  d.stride_h = strideH, d.stride_w = strideW;
  d.pad_t = padT, d.pad_l = padL, d.pad_b = padB, d.pad_r = padR;
  d.dil_h = dilH, d.dil_w = dilW, d.groups = groups;
  return d;
}

int64_t inputSize(const fcc_conv2d_desc &d) { return d.n * d.c * d.h * d.w; }
int64_t weightSize(const fcc_conv2d_desc &d) {
  return d.k * (d.c / d.groups) * d.r * d.s;
}
int64_t outputSize(const fcc_conv2d_desc &d) { return d.n * d.k * d.oh * d.ow; }

// Visits every (output element, weight tap, input element) triple of the
// convolution that lies inside the real input: the one place that spells out
// the indexing; the three references below differ only in what they
// accumulate.
template <typename F> void forEachTap(const fcc_conv2d_desc &d, F f) {
  const int64_t cpg = d.c / d.groups, kpg = d.k / d.groups;
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t k = 0; k < d.k; ++k)
      for (int64_t oh = 0; oh < d.oh; ++oh)
        for (int64_t ow = 0; ow < d.ow; ++ow) {
          int64_t yi = ((n * d.k + k) * d.oh + oh) * d.ow + ow;
          for (int64_t cc = 0; cc < cpg; ++cc)
            for (int64_t r = 0; r < d.r; ++r)
              for (int64_t s = 0; s < d.s; ++s) {
                int64_t ih = oh * d.stride_h - d.pad_t + r * d.dil_h;
                int64_t iw = ow * d.stride_w - d.pad_l + s * d.dil_w;
                if (ih < 0 || ih >= d.h || iw < 0 || iw >= d.w)
                  continue;
                int64_t c = (k / kpg) * cpg + cc;
                int64_t xi = ((n * d.c + c) * d.h + ih) * d.w + iw;
                int64_t wi = ((k * cpg + cc) * d.r + r) * d.s + s;
                f(yi, xi, wi);
              }
        }
}

Vec forwardRef(const fcc_conv2d_desc &d, const Vec &x, const Vec &w,
               const Vec *bias) {
  Vec y(outputSize(d), 0.0);
  if (bias)
    for (size_t i = 0; i < y.size(); ++i)
      y[i] = (*bias)[(i / (d.oh * d.ow)) % d.k];
  forEachTap(
      d, [&](int64_t yi, int64_t xi, int64_t wi) { y[yi] += x[xi] * w[wi]; });
  return y;
}

Vec backwardDataRef(const fcc_conv2d_desc &d, const Vec &dy, const Vec &w) {
  Vec dx(inputSize(d), 0.0);
  forEachTap(
      d, [&](int64_t yi, int64_t xi, int64_t wi) { dx[xi] += dy[yi] * w[wi]; });
  return dx;
}

Vec backwardFilterRef(const fcc_conv2d_desc &d, const Vec &x, const Vec &dy) {
  Vec dw(weightSize(d), 0.0);
  forEachTap(
      d, [&](int64_t yi, int64_t xi, int64_t wi) { dw[wi] += dy[yi] * x[xi]; });
  return dw;
}

Vec backwardBiasRef(const fcc_conv2d_desc &d, const Vec &dy) {
  Vec db(d.k, 0.0);
  for (size_t i = 0; i < dy.size(); ++i)
    db[(i / (d.oh * d.ow)) % d.k] += dy[i];
  return db;
}

// The references' gradients agree with finite differences of the reference
// forward, so comparing the kernels to them tests real derivatives.
TEST(ConvReference, GradientsMatchFiniteDifferences) {
  std::mt19937 rng(11);
  fcc_conv2d_desc d = makeDesc(2, 4, 5, 6, 4, 3, 2, /*stride*/ 2, 1,
                               /*pads tlbr*/ 1, 0, 2, 1, /*dil*/ 1, 2,
                               /*groups*/ 2);
  ASSERT_EQ(fcc_conv2d_desc_finalize(&d), FCC_OK);
  Vec x = toDouble(randomFloats(rng, inputSize(d)));
  Vec w = toDouble(randomFloats(rng, weightSize(d)));
  Vec b = toDouble(randomFloats(rng, d.k));
  Vec dy = toDouble(randomFloats(rng, outputSize(d)));

  Vec dxNum =
      numericGrad([&](const Vec &v) { return forwardRef(d, v, w, &b); }, x, dy);
  EXPECT_TRUE(allCloseD(backwardDataRef(d, dy, w), dxNum, 1e-7, 1e-8));
  Vec dwNum =
      numericGrad([&](const Vec &v) { return forwardRef(d, x, v, &b); }, w, dy);
  EXPECT_TRUE(allCloseD(backwardFilterRef(d, x, dy), dwNum, 1e-7, 1e-8));
  Vec dbNum =
      numericGrad([&](const Vec &v) { return forwardRef(d, x, w, &v); }, b, dy);
  EXPECT_TRUE(allCloseD(backwardBiasRef(d, dy), dbNum, 1e-7, 1e-8));
}

struct ConvCase {
  const char *name;
  fcc_conv2d_desc desc;
};

void PrintTo(const ConvCase &c, std::ostream *os) { *os << c.name; }

class ConvKernel : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvKernel, MatchesReference) {
  fcc_conv2d_desc d = GetParam().desc;
  ASSERT_EQ(fcc_conv2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
  PlanPtr plan(fcc_cpu_conv2d_create(&d));
  ASSERT_NE(plan, nullptr) << fcc_cpu_last_error();

  std::mt19937 rng(1234);
  std::vector<float> x = randomFloats(rng, inputSize(d));
  std::vector<float> w = randomFloats(rng, weightSize(d));
  std::vector<float> b = randomFloats(rng, d.k);
  std::vector<float> dy = randomFloats(rng, outputSize(d));
  Vec xd = toDouble(x), wd = toDouble(w), bd = toDouble(b), dyd = toDouble(dy);
  Vec xa = absolute(xd), wa = absolute(wd), ba = absolute(bd),
      dya = absolute(dyd);

  // Forward, with and without bias. Rounding is relative to sum |x * w|.
  std::vector<float> y(outputSize(d), NAN);
  ASSERT_EQ(fcc_cpu_conv2d_forward(plan.get(), x.data(), w.data(), b.data(),
                                   y.data()),
            FCC_OK)
      << fcc_cpu_last_error();
  Vec mag = forwardRef(d, xa, wa, &ba);
  EXPECT_TRUE(allClose(y, forwardRef(d, xd, wd, &bd), 1e-5, 1e-6, &mag));
  std::fill(y.begin(), y.end(), NAN);
  ASSERT_EQ(
      fcc_cpu_conv2d_forward(plan.get(), x.data(), w.data(), nullptr, y.data()),
      FCC_OK)
      << fcc_cpu_last_error();
  mag = forwardRef(d, xa, wa, nullptr);
  EXPECT_TRUE(allClose(y, forwardRef(d, xd, wd, nullptr), 1e-5, 1e-6, &mag));

  // Backward data.
  std::vector<float> dx(inputSize(d), NAN);
  ASSERT_EQ(
      fcc_cpu_conv2d_backward_data(plan.get(), dy.data(), w.data(), dx.data()),
      FCC_OK)
      << fcc_cpu_last_error();
  mag = backwardDataRef(d, dya, wa);
  EXPECT_TRUE(allClose(dx, backwardDataRef(d, dyd, wd), 1e-5, 1e-6, &mag));

  // Backward filter, with and without the bias gradient.
  std::vector<float> dw(weightSize(d), NAN), db(d.k, NAN);
  ASSERT_EQ(fcc_cpu_conv2d_backward_filter(plan.get(), x.data(), dy.data(),
                                           dw.data(), db.data()),
            FCC_OK)
      << fcc_cpu_last_error();
  mag = backwardFilterRef(d, xa, dya);
  Vec dwRef = backwardFilterRef(d, xd, dyd);
  EXPECT_TRUE(allClose(dw, dwRef, 1e-5, 1e-6, &mag));
  mag = backwardBiasRef(d, dya);
  EXPECT_TRUE(allClose(db, backwardBiasRef(d, dyd), 1e-5, 1e-6, &mag));
  std::fill(dw.begin(), dw.end(), NAN);
  ASSERT_EQ(fcc_cpu_conv2d_backward_filter(plan.get(), x.data(), dy.data(),
                                           dw.data(), nullptr),
            FCC_OK);
  mag = backwardFilterRef(d, xa, dya);
  EXPECT_TRUE(allClose(dw, dwRef, 1e-5, 1e-6, &mag));
}

// clang-format off
INSTANTIATE_TEST_SUITE_P(
    Shapes, ConvKernel,
    ::testing::Values(
        ConvCase{"same3x3", makeDesc(2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1)},
        ConvCase{"stride2_asym_pads",
                 makeDesc(2, 3, 9, 8, 5, 3, 3, 2, 2, 0, 1, 2, 1)},
        ConvCase{"groups2", makeDesc(2, 4, 6, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1,
                                     1, 1, 2)},
        ConvCase{"depthwise", makeDesc(2, 5, 8, 7, 5, 3, 3, 2, 2, 1, 1, 1, 1,
                                       1, 1, 5)},
        ConvCase{"depthwise_multiplier", makeDesc(1, 3, 6, 6, 6, 3, 3, 1, 1,
                                                  1, 1, 1, 1, 1, 1, 3)},
        ConvCase{"dilated", makeDesc(2, 3, 10, 9, 4, 3, 3, 1, 1, 2, 3, 2, 3,
                                     2, 3)},
        ConvCase{"pointwise_stride2", makeDesc(3, 8, 7, 7, 6, 1, 1, 2, 2)},
        ConvCase{"mixed", makeDesc(2, 6, 11, 9, 4, 2, 3, 2, 1, 1, 0, 0, 2,
                                   1, 2, 2)},
        ConvCase{"window_in_padding", makeDesc(1, 2, 4, 4, 3, 2, 2, 1, 1, 2,
                                               2, 2, 2)},
        ConvCase{"stem7x7", makeDesc(1, 3, 16, 16, 8, 7, 7, 2, 2, 3, 3, 3,
                                     3)}),
    [](const ::testing::TestParamInfo<ConvCase> &info) {
      return std::string(info.param.name);
    });
// clang-format on

TEST(Conv, HandComputed) {
  // x = [[1,2,3],[4,5,6],[7,8,9]], w = [[1,2],[3,4]], bias 0.5, no padding:
  //   y00 = 1*1 + 2*2 + 4*3 + 5*4 + .5 = 37.5   y01 = 2+6+15+24 + .5 = 47.5
  //   y10 = 4+10+21+32 + .5 = 67.5              y11 = 5+12+24+36 + .5 = 77.5
  // With dy = ones: dx[i][j] sums the taps covering (i, j):
  //   [[1, 1+2, 2], [1+3, 1+2+3+4, 2+4], [3, 3+4, 4]] =
  //   [[1,3,2],[4,10,6],[3,7,4]]
  // dw[r][s] sums x over the 2x2 block at (r, s):
  //   dw = [[1+2+4+5, 2+3+5+6], [4+5+7+8, 5+6+8+9]] = [[12,16],[24,28]]
  // dbias = 4 (four outputs).
  fcc_conv2d_desc d = makeDesc(1, 1, 3, 3, 1, 2, 2);
  ASSERT_EQ(fcc_conv2d_desc_finalize(&d), FCC_OK);
  EXPECT_EQ(d.oh, 2);
  EXPECT_EQ(d.ow, 2);
  PlanPtr plan(fcc_cpu_conv2d_create(&d));
  ASSERT_NE(plan, nullptr) << fcc_cpu_last_error();
  const float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w[4] = {1, 2, 3, 4};
  const float bias = 0.5f, dy[4] = {1, 1, 1, 1};
  float y[4], dx[9], dw[4], db;
  ASSERT_EQ(fcc_cpu_conv2d_forward(plan.get(), x, w, &bias, y), FCC_OK);
  EXPECT_TRUE(allClose(y, {37.5, 47.5, 67.5, 77.5}));
  ASSERT_EQ(fcc_cpu_conv2d_backward_data(plan.get(), dy, w, dx), FCC_OK);
  EXPECT_TRUE(allClose(dx, {1, 3, 2, 4, 10, 6, 3, 7, 4}));
  ASSERT_EQ(fcc_cpu_conv2d_backward_filter(plan.get(), x, dy, dw, &db), FCC_OK);
  EXPECT_TRUE(allClose(dw, {12, 16, 24, 28}));
  EXPECT_FLOAT_EQ(db, 4.0f);
}

TEST(Conv, InvalidDescriptors) {
  fcc_conv2d_desc d = makeDesc(1, 3, 8, 8, 4, 3, 3, 1, 1, 0, 0, 0, 0, 1, 1, 2);
  EXPECT_EQ(fcc_conv2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "divisible by groups"))
      << fcc_cpu_last_error();
  EXPECT_EQ(fcc_cpu_conv2d_create(&d), nullptr);

  d = makeDesc(1, 2, 3, 3, 2, 5, 5); // 5x5 kernel on an unpadded 3x3 input
  EXPECT_EQ(fcc_conv2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "empty output"))
      << fcc_cpu_last_error();

  d = makeDesc(1, 2, 3, 3, 2, 1, 1, 0, 1);
  EXPECT_EQ(fcc_conv2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "strides"));

  d = makeDesc(1, 0, 3, 3, 2, 1, 1);
  EXPECT_EQ(fcc_conv2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "input shape"));

  d = makeDesc(1, 2, 3, 3, 2, 1, 1, 1, 1, -1, 0, 0, 0);
  EXPECT_EQ(fcc_conv2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "pads"));

  d = makeDesc(1, 2, 3, 3, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1);
  EXPECT_EQ(fcc_conv2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "dilations"));

  // A stale output size is rejected by create.
  d = makeDesc(1, 2, 6, 6, 2, 3, 3);
  d.oh = d.ow = 6;
  EXPECT_EQ(fcc_cpu_conv2d_create(&d), nullptr);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "does not match"))
      << fcc_cpu_last_error();

  EXPECT_EQ(fcc_cpu_conv2d_forward(nullptr, nullptr, nullptr, nullptr, nullptr),
            FCC_ERR_INVALID);
}

TEST(Conv, BackwardIsDeterministic) {
  fcc_conv2d_desc d = makeDesc(4, 16, 14, 14, 16, 3, 3, 1, 1, 1, 1, 1, 1);
  ASSERT_EQ(fcc_conv2d_desc_finalize(&d), FCC_OK);
  PlanPtr plan(fcc_cpu_conv2d_create(&d));
  ASSERT_NE(plan, nullptr) << fcc_cpu_last_error();
  std::mt19937 rng(5);
  std::vector<float> x = randomFloats(rng, inputSize(d));
  std::vector<float> w = randomFloats(rng, weightSize(d));
  std::vector<float> dy = randomFloats(rng, outputSize(d));
  auto run = [&](std::vector<float> &dx, std::vector<float> &dw,
                 std::vector<float> &db) {
    dx.assign(inputSize(d), 0), dw.assign(weightSize(d), 0), db.assign(d.k, 0);
    ASSERT_EQ(fcc_cpu_conv2d_backward_data(plan.get(), dy.data(), w.data(),
                                           dx.data()),
              FCC_OK);
    ASSERT_EQ(fcc_cpu_conv2d_backward_filter(plan.get(), x.data(), dy.data(),
                                             dw.data(), db.data()),
              FCC_OK);
  };
  std::vector<float> dx1, dw1, db1, dx2, dw2, db2;
  run(dx1, dw1, db1);
  run(dx2, dw2, db2);
  EXPECT_EQ(std::memcmp(dx1.data(), dx2.data(), dx1.size() * 4), 0);
  EXPECT_EQ(std::memcmp(dw1.data(), dw2.data(), dw1.size() * 4), 0);
  EXPECT_EQ(std::memcmp(db1.data(), db2.data(), db1.size() * 4), 0);
}

TEST(WindowOutputSize, FloorCeilAndDroppedLastWindow) {
  // floor((5 - 2) / 2) + 1 = 2; ceil((5 - 2) / 2) + 1 = 3 (last window at 4
  // starts inside the input).
  EXPECT_EQ(fcc_window_output_size(5, 2, 2, 0, 0, 1, 0), 2);
  EXPECT_EQ(fcc_window_output_size(5, 2, 2, 0, 0, 1, 1), 3);
  // Padded 3x3, stride 1: same size.
  EXPECT_EQ(fcc_window_output_size(7, 3, 1, 1, 1, 1, 0), 7);
  // Dilation 2 makes a 3-tap kernel span 5: (10 - 5) / 1 + 1 = 6.
  EXPECT_EQ(fcc_window_output_size(10, 3, 1, 0, 0, 2, 0), 6);
  // in 3, kernel 1, stride 2, pad_end 1, ceil: ceil(3 / 2) + 1 = 3, but the
  // third window starts at 4 >= in + pad_begin = 3 (all padding): dropped.
  EXPECT_EQ(fcc_window_output_size(3, 1, 2, 0, 1, 1, 1), 2);
  // PyTorch's MaxPool2d(3, 2, padding=1, ceil_mode=True) on 6: ceil(5/2)+1 = 4
  // and the last window starts at 6 - 1 = 5 < 6 + 1: kept.
  EXPECT_EQ(fcc_window_output_size(6, 3, 2, 1, 1, 1, 1), 4);
  // Empty and invalid.
  EXPECT_LE(fcc_window_output_size(2, 3, 1, 0, 0, 1, 0), 0);
  EXPECT_LE(fcc_window_output_size(4, 3, 0, 0, 0, 1, 0), 0);
}

} // namespace
