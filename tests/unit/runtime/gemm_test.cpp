//===- gemm_test.cpp - Tests of the GEMM (linear layer) kernel -----------===//
//
// All transpose combinations and bias broadcast patterns against a double
// reference, hand-computed values, the empty inner dimension and a bad bias
// shape.
//
//===----------------------------------------------------------------------===//
#include "test_util.h"

#include <tuple>

using namespace fcc::test;

namespace {

// y = alpha * op(a) op(b) + beta * broadcast(c).
Vec gemmRef(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
            const Vec &a, const Vec &b, double beta, const Vec *c,
            int64_t cRows, int64_t cCols) {
  Vec y(m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t l = 0; l < k; ++l)
        sum += (ta ? a[l * m + i] : a[i * k + l]) *
               (tb ? b[j * k + l] : b[l * n + j]);
      double bias = 0.0;
      if (c)
        bias = (*c)[(cRows == 1 ? 0 : i) * cCols + (cCols == 1 ? 0 : j)];
      y[i * n + j] = alpha * sum + beta * bias;
    }
  return y;
}

// (trans_a, trans_b, bias pattern): the pattern indexes {none, 1xN, Mx1, 1x1,
// MxN}.
class GemmKernel
    : public ::testing::TestWithParam<std::tuple<bool, bool, int>> {};

TEST_P(GemmKernel, MatchesReference) {
  auto [ta, tb, biasKind] = GetParam();
  const int64_t m = 37, n = 29, k = 53;
  const int64_t rows[] = {0, 1, m, 1, m}, cols[] = {0, n, 1, 1, n};
  const int64_t cRows = rows[biasKind], cCols = cols[biasKind];
  std::mt19937 rng(21 + biasKind);
  std::vector<float> a = randomFloats(rng, m * k), b = randomFloats(rng, k * n);
  std::vector<float> c = randomFloats(rng, std::max<int64_t>(1, cRows * cCols));
  const float alpha = 0.75f, beta = biasKind ? -1.5f : 0.0f;
  const float *cPtr = biasKind ? c.data() : nullptr;

  std::vector<float> y(m * n, NAN);
  fcc_cpu_gemm(ta, tb, m, n, k, alpha, a.data(), b.data(), beta, cPtr, cRows,
               cCols, y.data());
  Vec cd = toDouble(c), ca = absolute(cd);
  Vec ref = gemmRef(ta, tb, m, n, k, alpha, toDouble(a), toDouble(b), beta,
                    biasKind ? &cd : nullptr, cRows, cCols);
  Vec mag = gemmRef(ta, tb, m, n, k, std::fabs(alpha), absolute(toDouble(a)),
                    absolute(toDouble(b)), std::fabs(beta),
                    biasKind ? &ca : nullptr, cRows, cCols);
  EXPECT_TRUE(allClose(y, ref, 1e-5, 1e-6, &mag));
}

INSTANTIATE_TEST_SUITE_P(TransposesAndBias, GemmKernel,
                         ::testing::Combine(::testing::Bool(),
                                            ::testing::Bool(),
                                            ::testing::Range(0, 5)));

TEST(Gemm, HandComputed) {
  // a = [[1, 2], [3, 4]], b = [[5, 6], [7, 8]]: a b = [[19, 22], [43, 50]].
  // With bias c = [10, 20] (1x2), alpha 1, beta 0.5: [[24, 32], [48, 60]].
  // With trans_b (b^T = [[5, 7], [6, 8]]): a b^T = [[17, 23], [39, 53]].
  const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8}, c[2] = {10, 20};
  float y[4];
  fcc_cpu_gemm(0, 0, 2, 2, 2, 1.0f, a, b, 0.5f, c, 1, 2, y);
  EXPECT_TRUE(allClose(y, {24, 32, 48, 60}, 0, 0));
  fcc_cpu_gemm(0, 1, 2, 2, 2, 1.0f, a, b, 0.0f, nullptr, 0, 0, y);
  EXPECT_TRUE(allClose(y, {17, 23, 39, 53}, 0, 0));
}

TEST(Gemm, EmptyInnerDimension) {
  // k = 0: the product is zero, so y = beta * c.
  const float c[2] = {1, -2};
  float y[4] = {NAN, NAN, NAN, NAN};
  fcc_cpu_gemm(0, 0, 2, 2, 0, 1.0f, nullptr, nullptr, 2.0f, c, 2, 1, y);
  EXPECT_TRUE(allClose(y, {2, 2, -4, -4}, 0, 0));
  fcc_cpu_gemm(0, 0, 2, 2, 0, 1.0f, nullptr, nullptr, 0.0f, nullptr, 0, 0, y);
  EXPECT_TRUE(allClose(y, {0, 0, 0, 0}, 0, 0));
}

TEST(Gemm, BadBiasShapeIsReported) {
  const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8}, c[3] = {1, 2, 3};
  float y[4] = {0, 0, 0, 0};
  fcc_cpu_gemm(0, 0, 2, 2, 2, 1.0f, a, b, 1.0f, c, 1, 3, y);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "does not broadcast"))
      << fcc_cpu_last_error();
  EXPECT_TRUE(std::isnan(y[0]));
}

} // namespace
