//===- test_util.h - Helpers shared by the CPU kernel tests --------------===//
//
// Random inputs, tolerance-aware comparisons of fp32 kernel outputs against
// double-precision references, and central finite differences used to check
// the references' gradients.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TESTS_UNIT_RUNTIME_TEST_UTIL_H
#define FCC_TESTS_UNIT_RUNTIME_TEST_UTIL_H

#include "fcc/runtime/cpu_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace fcc::test {

using Vec = std::vector<double>;

// Uniform values in [lo, hi), rounded to float (so that the double reference
// sees exactly what the fp32 kernel sees).
inline std::vector<float> randomFloats(std::mt19937 &rng, size_t n,
                                       float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

// Like randomFloats, but every value has |x| >= 0.05 and all values are at
// least ~1e-3 apart: no ReLU kinks and no max-pooling ties, so central finite
// differences with a small step are exact up to rounding.
inline std::vector<float> distinctFloats(std::mt19937 &rng, size_t n) {
  std::vector<size_t> perm(n);
  for (size_t i = 0; i < n; ++i)
    perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::uniform_real_distribution<double> jitter(0.2, 0.8);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    double u = (double(perm[i]) + jitter(rng)) / double(n); // (0, 1)
    double x = 0.05 + 0.95 * u;
    v[i] = float(perm[i] % 2 ? x : -x);
  }
  return v;
}

inline Vec toDouble(const std::vector<float> &v) {
  return Vec(v.begin(), v.end());
}

inline Vec absolute(const Vec &v) {
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    r[i] = std::fabs(v[i]);
  return r;
}

// Checks |got[i] - ref[i]| <= atol + rtol * (|ref[i]| + mag[i]) for all i,
// where mag (optional) is the sum of the absolute values of the terms that
// make up ref[i] (the scale of fp32 rounding in a long sum).
inline ::testing::AssertionResult allClose(const float *got, const Vec &ref,
                                           double rtol = 1e-5,
                                           double atol = 1e-6,
                                           const Vec *mag = nullptr) {
  size_t bad = 0, first = 0;
  double worst = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double scale = std::fabs(ref[i]) + (mag ? (*mag)[i] : 0.0);
    double err = std::fabs(double(got[i]) - ref[i]);
    bool ok = err <= atol + rtol * scale; // false for NaN
    if (!ok) {
      if (bad++ == 0)
        first = i;
      worst = std::max(worst, std::isnan(err) ? INFINITY : err);
    }
  }
  if (bad == 0)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << ref.size() << " elements differ; first at "
         << first << ": got " << got[first] << ", expected " << ref[first]
         << "; worst abs error " << worst;
}

inline ::testing::AssertionResult allClose(const std::vector<float> &got,
                                           const Vec &ref, double rtol = 1e-5,
                                           double atol = 1e-6,
                                           const Vec *mag = nullptr) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != " << ref.size();
  return allClose(got.data(), ref, rtol, atol, mag);
}

// Same for two double vectors (reference gradient vs finite differences).
inline ::testing::AssertionResult allCloseD(const Vec &got, const Vec &ref,
                                            double rtol, double atol) {
  for (size_t i = 0; i < ref.size(); ++i) {
    double err = std::fabs(got[i] - ref[i]);
    if (!(err <= atol + rtol * std::fabs(ref[i])))
      return ::testing::AssertionFailure()
             << "element " << i << ": " << got[i] << " vs " << ref[i];
  }
  return ::testing::AssertionSuccess();
}

// Gradient of L(x) = sum_i dy[i] * f(x)[i] by central differences.
inline Vec numericGrad(const std::function<Vec(const Vec &)> &f, Vec x,
                       const Vec &dy, double h = 1e-5) {
  Vec grad(x.size());
  auto loss = [&](const Vec &v) {
    Vec y = f(v);
    double l = 0.0;
    for (size_t i = 0; i < y.size(); ++i)
      l += dy[i] * y[i];
    return l;
  };
  for (size_t i = 0; i < x.size(); ++i) {
    double saved = x[i];
    x[i] = saved + h;
    double lp = loss(x);
    x[i] = saved - h;
    double lm = loss(x);
    x[i] = saved;
    grad[i] = (lp - lm) / (2 * h);
  }
  return grad;
}

inline bool contains(const char *haystack, const char *needle) {
  return std::string(haystack).find(needle) != std::string::npos;
}

} // namespace fcc::test

#endif // FCC_TESTS_UNIT_RUNTIME_TEST_UTIL_H
