//===- batch_norm_test.cpp - Tests of the batch-normalisation kernels ----===//
//
// Training forward/backward and inference against double references (the
// backward reference checked with finite differences), hand-computed values,
// the running-statistics update, and determinism across runs and thread
// counts.
//
//===----------------------------------------------------------------------===//
#include "test_util.h"

#include <cstring>

using namespace fcc::test;

namespace {

struct Shape {
  int64_t n, c, hw;
};

double at(const Vec &v, const Shape &s, int64_t n, int64_t c, int64_t i) {
  return v[(n * s.c + c) * s.hw + i];
}

// Batch statistics (biased variance) per channel.
void statsRef(const Shape &s, const Vec &x, Vec &mean, Vec &var) {
  const double m = double(s.n * s.hw);
  mean.assign(s.c, 0.0);
  var.assign(s.c, 0.0);
  for (int64_t c = 0; c < s.c; ++c) {
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t i = 0; i < s.hw; ++i)
        mean[c] += at(x, s, n, c, i) / m;
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t i = 0; i < s.hw; ++i) {
        double d = at(x, s, n, c, i) - mean[c];
        var[c] += d * d / m;
      }
  }
}

Vec normalizeRef(const Shape &s, const Vec &x, const Vec &scale,
                 const Vec &shift, const Vec &mean, const Vec &var,
                 double eps) {
  Vec y(x.size());
  for (size_t e = 0; e < x.size(); ++e) {
    int64_t c = (int64_t(e) / s.hw) % s.c;
    y[e] = scale[c] * (x[e] - mean[c]) / std::sqrt(var[c] + eps) + shift[c];
  }
  return y;
}

Vec trainForwardRef(const Shape &s, const Vec &x, const Vec &scale,
                    const Vec &shift, double eps) {
  Vec mean, var;
  statsRef(s, x, mean, var);
  return normalizeRef(s, x, scale, shift, mean, var, eps);
}

// Textbook backward of the training forward.
void backwardRef(const Shape &s, const Vec &x, const Vec &dy, const Vec &scale,
                 double eps, Vec &dx, Vec &dscale, Vec &dshift) {
  Vec mean, var;
  statsRef(s, x, mean, var);
  const double m = double(s.n * s.hw);
  dx.assign(x.size(), 0.0);
  dscale.assign(s.c, 0.0);
  dshift.assign(s.c, 0.0);
  for (size_t e = 0; e < x.size(); ++e) {
    int64_t c = (int64_t(e) / s.hw) % s.c;
    double xhat = (x[e] - mean[c]) / std::sqrt(var[c] + eps);
    dshift[c] += dy[e];
    dscale[c] += dy[e] * xhat;
  }
  for (size_t e = 0; e < x.size(); ++e) {
    int64_t c = (int64_t(e) / s.hw) % s.c;
    double invStd = 1.0 / std::sqrt(var[c] + eps);
    double xhat = (x[e] - mean[c]) * invStd;
    dx[e] = scale[c] * invStd * (dy[e] - dshift[c] / m - xhat * dscale[c] / m);
  }
}

TEST(BatchNormReference, BackwardMatchesFiniteDifferences) {
  Shape s{3, 2, 5};
  std::mt19937 rng(3);
  Vec x = toDouble(randomFloats(rng, s.n * s.c * s.hw));
  Vec scale = toDouble(randomFloats(rng, s.c, 0.5f, 1.5f));
  Vec shift = toDouble(randomFloats(rng, s.c));
  Vec dy = toDouble(randomFloats(rng, x.size()));
  const double eps = 1e-3;
  Vec dx, dscale, dshift;
  backwardRef(s, x, dy, scale, eps, dx, dscale, dshift);
  EXPECT_TRUE(allCloseD(dx,
                        numericGrad(
                            [&](const Vec &v) {
                              return trainForwardRef(s, v, scale, shift, eps);
                            },
                            x, dy),
                        1e-6, 1e-8));
  EXPECT_TRUE(allCloseD(
      dscale,
      numericGrad(
          [&](const Vec &v) { return trainForwardRef(s, x, v, shift, eps); },
          scale, dy),
      1e-6, 1e-8));
  EXPECT_TRUE(allCloseD(
      dshift,
      numericGrad(
          [&](const Vec &v) { return trainForwardRef(s, x, scale, v, eps); },
          shift, dy),
      1e-6, 1e-8));
}

void PrintTo(const Shape &s, std::ostream *os) {
  *os << "n=" << s.n << " c=" << s.c << " hw=" << s.hw;
}

class BatchNormKernel : public ::testing::TestWithParam<Shape> {};

TEST_P(BatchNormKernel, TrainForwardBackwardAndInference) {
  const Shape s = GetParam();
  const int64_t count = s.n * s.c * s.hw;
  const float eps = 1e-5f;
  std::mt19937 rng(17);
  // A per-channel offset: large means must not cost accuracy.
  std::vector<float> x = randomFloats(rng, count, -2.0f, 2.0f);
  for (int64_t e = 0; e < count; ++e)
    x[e] += float(((e / s.hw) % s.c) * 25 - 30);
  std::vector<float> scale = randomFloats(rng, s.c, 0.5f, 1.5f);
  std::vector<float> shift = randomFloats(rng, s.c);
  std::vector<float> dy = randomFloats(rng, count);
  Vec xd = toDouble(x), scaled = toDouble(scale), shiftd = toDouble(shift),
      dyd = toDouble(dy);

  std::vector<float> y(count, NAN), mean(s.c, NAN), var(s.c, NAN);
  fcc_cpu_batch_norm_train_forward(x.data(), scale.data(), shift.data(), eps,
                                   s.n, s.c, s.hw, y.data(), mean.data(),
                                   var.data());
  Vec meanRef, varRef;
  statsRef(s, xd, meanRef, varRef);
  EXPECT_TRUE(allClose(mean, meanRef, 1e-6, 1e-6));
  EXPECT_TRUE(allClose(var, varRef, 1e-5, 1e-7));
  EXPECT_TRUE(
      allClose(y, trainForwardRef(s, xd, scaled, shiftd, eps), 1e-5, 2e-6));

  std::vector<float> dx(count, NAN), dscale(s.c, NAN), dshift(s.c, NAN);
  fcc_cpu_batch_norm_backward(x.data(), dy.data(), scale.data(), mean.data(),
                              var.data(), eps, s.n, s.c, s.hw, dx.data(),
                              dscale.data(), dshift.data());
  Vec dxRef, dscaleRef, dshiftRef;
  backwardRef(s, xd, dyd, scaled, eps, dxRef, dscaleRef, dshiftRef);
  // Sums of dy are relative to sum |dy| per channel (fp32 inputs rounded).
  Vec mag(s.c, double(s.n * s.hw));
  EXPECT_TRUE(allClose(dshift, dshiftRef, 1e-5, 1e-6, &mag));
  EXPECT_TRUE(allClose(dscale, dscaleRef, 1e-5, 1e-6, &mag));
  EXPECT_TRUE(allClose(dx, dxRef, 1e-4, 1e-5));

  // Optional outputs.
  std::vector<float> dscale2(s.c, NAN);
  fcc_cpu_batch_norm_backward(x.data(), dy.data(), scale.data(), mean.data(),
                              var.data(), eps, s.n, s.c, s.hw, nullptr,
                              dscale2.data(), nullptr);
  EXPECT_EQ(std::memcmp(dscale.data(), dscale2.data(), s.c * 4), 0);

  // Inference with given statistics.
  std::vector<float> rmean = randomFloats(rng, s.c);
  std::vector<float> rvar = randomFloats(rng, s.c, 0.5f, 2.0f);
  fcc_cpu_batch_norm_inference(x.data(), scale.data(), shift.data(),
                               rmean.data(), rvar.data(), eps, s.n, s.c, s.hw,
                               y.data());
  EXPECT_TRUE(allClose(
      y,
      normalizeRef(s, xd, scaled, shiftd, toDouble(rmean), toDouble(rvar), eps),
      1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Shapes, BatchNormKernel,
                         ::testing::Values(Shape{2, 3, 5}, Shape{4, 16, 49},
                                           Shape{32, 10, 1}, Shape{1, 2, 300},
                                           Shape{3, 1, 64}));

TEST(BatchNorm, HandComputed) {
  // One channel, x = [1, 2, 3, 4], eps = 0, scale 1, shift 0:
  //   mean = 2.5, var = (2.25 + .25 + .25 + 2.25)/4 = 1.25,
  //   invStd = 1/sqrt(1.25) = 0.894427, xhat = [-1.341641, -0.447214,
  //   0.447214, 1.341641].
  // Backward with dy = [1, 0, 0, 0]: dshift = 1, dscale = xhat0 = -1.341641,
  //   dx = invStd * (dy - 1/4 - xhat * dscale / 4):
  //   dx0 = 0.894427 * (1 - .25 - 1.8/4) = 0.894427 * 0.3 = 0.268328
  //   dx1 = 0.894427 * (0 - .25 - 0.6/4) = 0.894427 * -0.4 = -0.357771
  //   dx2 = 0.894427 * (0 - .25 + 0.6/4) = 0.894427 * -0.1 = -0.0894427
  //   dx3 = 0.894427 * (0 - .25 + 1.8/4) = 0.894427 * 0.2 = 0.178885
  const float x[4] = {1, 2, 3, 4}, scale = 1, shift = 0, dy[4] = {1, 0, 0, 0};
  float y[4], mean, var, dx[4], dscale, dshift;
  fcc_cpu_batch_norm_train_forward(x, &scale, &shift, 0.0f, 1, 1, 4, y, &mean,
                                   &var);
  EXPECT_FLOAT_EQ(mean, 2.5f);
  EXPECT_FLOAT_EQ(var, 1.25f);
  EXPECT_TRUE(allClose(y, {-1.341641, -0.447214, 0.447214, 1.341641}, 1e-6));
  fcc_cpu_batch_norm_backward(x, dy, &scale, &mean, &var, 0.0f, 1, 1, 4, dx,
                              &dscale, &dshift);
  EXPECT_FLOAT_EQ(dshift, 1.0f);
  EXPECT_NEAR(dscale, -1.341641, 1e-6);
  EXPECT_TRUE(allClose(dx, {0.268328, -0.357771, -0.0894427, 0.178885}, 1e-5));
}

TEST(BatchNorm, UpdateRunning) {
  // momentum 0.1, count 4: mean 0.9 * 0.5 + 0.1 * 1.5 = 0.6;
  // unbiased var 0.9 * 1 + 0.1 * 2 * 4/3 = 1.1666667; biased 0.9 + 0.2 = 1.1.
  float rmean = 0.5f, rvar = 1.0f;
  const float bmean = 1.5f, bvar = 2.0f;
  fcc_cpu_batch_norm_update_running(&rmean, &rvar, &bmean, &bvar, 0.1f, 1, 4,
                                    1);
  EXPECT_FLOAT_EQ(rmean, 0.6f);
  EXPECT_FLOAT_EQ(rvar, 1.1666667f);
  rmean = 0.5f, rvar = 1.0f;
  fcc_cpu_batch_norm_update_running(&rmean, &rvar, &bmean, &bvar, 0.1f, 0, 4,
                                    1);
  EXPECT_FLOAT_EQ(rmean, 0.6f);
  EXPECT_FLOAT_EQ(rvar, 1.1f);
}

TEST(BatchNorm, DeterministicAcrossRunsAndThreadCounts) {
  const Shape s{8, 16, 196};
  const int64_t count = s.n * s.c * s.hw;
  std::mt19937 rng(99);
  std::vector<float> x = randomFloats(rng, count),
                     dy = randomFloats(rng, count);
  std::vector<float> scale(s.c, 1.0f), shift(s.c, 0.0f);
  auto run = [&](int threads) {
    fcc_cpu_set_num_threads(threads);
    std::vector<float> out(count * 2 + s.c * 4);
    float *y = out.data(), *dx = y + count, *mean = dx + count,
          *var = mean + s.c, *dscale = var + s.c, *dshift = dscale + s.c;
    fcc_cpu_batch_norm_train_forward(x.data(), scale.data(), shift.data(),
                                     1e-5f, s.n, s.c, s.hw, y, mean, var);
    fcc_cpu_batch_norm_backward(x.data(), dy.data(), scale.data(), mean, var,
                                1e-5f, s.n, s.c, s.hw, dx, dscale, dshift);
    return out;
  };
  std::vector<float> a = run(2), b = run(2), c = run(1);
  fcc_cpu_set_num_threads(0);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size() * 4), 0);
}

} // namespace
