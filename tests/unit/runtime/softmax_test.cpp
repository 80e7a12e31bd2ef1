//===- softmax_test.cpp - Tests of softmax and softmax cross-entropy -----===//
//
// Softmax over contiguous and strided axes, and the fused cross-entropy loss
// (per-row loss, mean, gradient, correct count) against double references,
// the gradient against finite differences, hand-computed label smoothing and
// invalid labels.
//
//===----------------------------------------------------------------------===//
#include "test_util.h"

using namespace fcc::test;

namespace {

Vec softmaxRef(const Vec &x, int64_t outer, int64_t dim, int64_t inner) {
  Vec y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t j) { return (o * dim + j) * inner + i; };
      double max = -INFINITY, sum = 0.0;
      for (int64_t j = 0; j < dim; ++j)
        max = std::max(max, x[at(j)]);
      for (int64_t j = 0; j < dim; ++j)
        sum += std::exp(x[at(j)] - max);
      for (int64_t j = 0; j < dim; ++j)
        y[at(j)] = std::exp(x[at(j)] - max) / sum;
    }
  return y;
}

struct SoftmaxCase {
  int64_t outer, dim, inner;
};

void PrintTo(const SoftmaxCase &c, std::ostream *os) {
  *os << "outer=" << c.outer << " dim=" << c.dim << " inner=" << c.inner;
}

class Softmax : public ::testing::TestWithParam<SoftmaxCase> {};

TEST_P(Softmax, MatchesReference) {
  auto [outer, dim, inner] = GetParam();
  std::mt19937 rng(41);
  std::vector<float> x = randomFloats(rng, outer * dim * inner, -8.0f, 8.0f);
  std::vector<float> y(x.size(), NAN);
  fcc_cpu_softmax(x.data(), outer, dim, inner, y.data());
  EXPECT_TRUE(
      allClose(y, softmaxRef(toDouble(x), outer, dim, inner), 1e-5, 1e-7));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Softmax,
    ::testing::Values(SoftmaxCase{7, 10, 1}, SoftmaxCase{1, 1000, 1},
                      SoftmaxCase{3, 5, 70}, SoftmaxCase{2, 4, 64},
                      SoftmaxCase{1, 3, 1}, SoftmaxCase{4, 1, 3}));

TEST(Softmax, LargeLogitsDoNotOverflow) {
  // softmax([1000, 1000 + ln 3]) = [1/4, 3/4].
  const float x[2] = {1000.0f, 1000.0f + float(std::log(3.0))};
  float y[2];
  fcc_cpu_softmax(x, 1, 2, 1, y);
  EXPECT_TRUE(allClose(y, {0.25, 0.75}, 1e-4)); // x rounded to float spacing
}

// Per-row losses of softmax cross-entropy with label smoothing.
Vec xentRef(const Vec &x, const std::vector<int32_t> &labels, int64_t classes,
            double ls) {
  const int64_t n = int64_t(labels.size());
  Vec loss(n);
  for (int64_t i = 0; i < n; ++i) {
    double max = -INFINITY, sum = 0.0;
    for (int64_t j = 0; j < classes; ++j)
      max = std::max(max, x[i * classes + j]);
    for (int64_t j = 0; j < classes; ++j)
      sum += std::exp(x[i * classes + j] - max);
    for (int64_t j = 0; j < classes; ++j) {
      double q = (j == labels[i] ? 1.0 - ls : 0.0) + ls / double(classes);
      double logp = x[i * classes + j] - max - std::log(sum);
      loss[i] -= q * logp;
    }
  }
  return loss;
}

double mean(const Vec &v) {
  double s = 0.0;
  for (double x : v)
    s += x;
  return s / double(v.size());
}

TEST(SoftmaxXent, MatchesReferenceAndFiniteDifferences) {
  for (float ls : {0.0f, 0.1f}) {
    const int64_t n = 9, classes = 13;
    std::mt19937 rng(43);
    std::vector<float> x = randomFloats(rng, n * classes, -4.0f, 4.0f);
    std::vector<int32_t> labels(n);
    for (int32_t &l : labels)
      l = int32_t(rng() % classes);
    std::vector<float> loss(n, NAN), grad(n * classes, NAN);
    int64_t correct = -1;
    double meanLoss =
        fcc_cpu_softmax_xent(x.data(), labels.data(), n, classes, ls,
                             loss.data(), grad.data(), &correct);
    Vec xd = toDouble(x);
    Vec lossRef = xentRef(xd, labels, classes, ls);
    EXPECT_TRUE(allClose(loss, lossRef, 1e-6, 1e-6));
    EXPECT_NEAR(meanLoss, mean(lossRef), 1e-6 * mean(lossRef));
    // d(mean loss)/dx by central differences of the double reference.
    Vec gradNum = numericGrad(
        [&](const Vec &v) {
          return Vec{mean(xentRef(v, labels, classes, ls))};
        },
        xd, Vec{1.0});
    EXPECT_TRUE(allClose(grad, gradNum, 1e-5, 1e-7)) << "ls " << ls;
    int64_t correctRef = 0;
    for (int64_t i = 0; i < n; ++i)
      correctRef += std::max_element(x.begin() + i * classes,
                                     x.begin() + (i + 1) * classes) -
                        (x.begin() + i * classes) ==
                    labels[i];
    EXPECT_EQ(correct, correctRef);
  }
}

TEST(SoftmaxXent, HandComputedLabelSmoothing) {
  // Two classes, label smoothing 0.2: q = 0.8 onehot + 0.1 = [0.9, 0.1] for
  // label 0. Row 0: logits [ln 3, 0] -> p = [0.75, 0.25],
  //   loss = -(0.9 ln 0.75 + 0.1 ln 0.25) = 0.258914 + 0.138629 = 0.397543.
  // Row 1: logits [0, ln 3] -> p = [0.25, 0.75],
  //   loss = -(0.9 ln 0.25 + 0.1 ln 0.75) = 1.247665 + 0.028768 = 1.276433.
  // Mean 0.836988. dlogits = (p - q) / 2 = [-0.075, 0.075], [-0.325, 0.325].
  // Correct: row 0 (argmax 0 = label), not row 1 (argmax 1).
  const float ln3 = float(std::log(3.0));
  const float x[4] = {ln3, 0, 0, ln3};
  const int32_t labels[2] = {0, 0};
  float loss[2], grad[4];
  int64_t correct = -1;
  double m = fcc_cpu_softmax_xent(x, labels, 2, 2, 0.2f, loss, grad, &correct);
  EXPECT_NEAR(m, 0.836988, 1e-6);
  EXPECT_TRUE(allClose(loss, {0.397543, 1.276433}, 1e-6));
  EXPECT_TRUE(allClose(grad, {-0.075, 0.075, -0.325, 0.325}, 1e-6));
  EXPECT_EQ(correct, 1);
  // Ties: the first maximum is the prediction.
  const float tie[2] = {1, 1};
  const int32_t one = 1;
  fcc_cpu_softmax_xent(tie, &one, 1, 2, 0.0f, nullptr, nullptr, &correct);
  EXPECT_EQ(correct, 0);
}

TEST(SoftmaxXent, LabelOutOfRange) {
  const float x[4] = {0, 1, 2, 3};
  const int32_t labels[2] = {1, 2};
  double m =
      fcc_cpu_softmax_xent(x, labels, 2, 2, 0.0f, nullptr, nullptr, nullptr);
  EXPECT_TRUE(std::isnan(m));
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "label 2 of row 1"))
      << fcc_cpu_last_error();
  const int32_t negative[2] = {-2, 0};
  EXPECT_TRUE(std::isnan(fcc_cpu_softmax_xent(x, negative, 2, 2, 0.0f, nullptr,
                                              nullptr, nullptr)));
}

// Rows labelled FCC_IGNORE_LABEL (padding of a partial batch) add nothing:
// loss 0, gradient 0, never correct; the mean still divides by n.
TEST(SoftmaxXent, IgnoredRows) {
  const float x[6] = {0, 1, 2, 3, 5, -1}; // 3 rows, 2 classes
  const int32_t labels[3] = {1, FCC_IGNORE_LABEL, 0};
  float rows[3], grad[6];
  int64_t correct = -1;
  double mean =
      fcc_cpu_softmax_xent(x, labels, 3, 2, 0.0f, rows, grad, &correct);
  // Row 0: lse(0,1) - 1 = log(1 + e^-1); row 2: lse(5,-1) - 5 = log(1+e^-6).
  const double r0 = std::log1p(std::exp(-1.0)), r2 = std::log1p(std::exp(-6.0));
  EXPECT_NEAR(rows[0], r0, 1e-6);
  EXPECT_EQ(rows[1], 0.0f);
  EXPECT_NEAR(rows[2], r2, 1e-6);
  EXPECT_NEAR(mean, (r0 + r2) / 3.0, 1e-6);
  EXPECT_EQ(correct, 2);
  EXPECT_EQ(grad[2], 0.0f);
  EXPECT_EQ(grad[3], 0.0f);
  EXPECT_EQ(fcc_cpu_count_correct(x, labels, 3, 2), 2);
}

} // namespace
