//===- InitTest.cpp - Tests of fcc_param_init (runtime/cpu/init.cpp) ------===//
//
// The initial values shared by the model zoo and generated trainers: PyTorch's
// default distributions, exact BN defaults, and values that depend only on
// (seed, parameter name, element index).
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/init.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace {

std::vector<float> init(int role, const std::string &name, int64_t count,
                        int64_t fanIn, uint64_t seed) {
  std::vector<float> v(count, -123.0f);
  EXPECT_EQ(fcc_param_init(role, name.c_str(), count, fanIn, seed, v.data()),
            0);
  return v;
}

TEST(Fnv1a64, KnownValues) {
  EXPECT_EQ(fcc_fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fcc_fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fcc_fnv1a64("foobar"), 0x85944171f73967e8ull);
}

// Weights and biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)): mean 0 and
// standard deviation bound / sqrt(3).
void checkUniform(int role, const std::string &name, int64_t count,
                  int64_t fanIn) {
  std::vector<float> v = init(role, name, count, fanIn, /*seed=*/7);
  float bound = static_cast<float>(1.0 / std::sqrt(double(fanIn)));
  double sum = 0, sumSq = 0;
  float lo = bound, hi = -bound;
  for (float x : v) {
    ASSERT_LE(std::fabs(x), bound) << name;
    sum += x;
    sumSq += double(x) * x;
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  double mean = sum / count;
  double std = std::sqrt(sumSq / count - mean * mean);
  double expectedStd = bound / std::sqrt(3.0);
  // The sample mean's standard error is expectedStd / sqrt(count): allow 5.
  EXPECT_LT(std::fabs(mean), 5 * expectedStd / std::sqrt(double(count)))
      << name;
  EXPECT_NEAR(std, expectedStd, 0.02 * expectedStd) << name;
  // The sample covers (almost) the whole interval.
  EXPECT_LT(lo, -0.99f * bound) << name;
  EXPECT_GT(hi, 0.99f * bound) << name;
}

TEST(ParamInit, ConvWeightIsKaimingUniform) {
  // ResNet9's layer2.conv: 256 x 128 x 3 x 3, fan_in = 128 * 9.
  checkUniform(FCC_ROLE_WEIGHT, "layer2.conv.weight", 256 * 128 * 9, 128 * 9);
}

TEST(ParamInit, LinearWeightIsKaimingUniform) {
  checkUniform(FCC_ROLE_WEIGHT, "fc1.weight", 4096 * 64, 1024);
}

TEST(ParamInit, BiasUsesTheWeightsFanIn) {
  checkUniform(FCC_ROLE_BIAS, "conv1.bias", 20000, 27);
  // A small bias still respects the bound.
  std::vector<float> b = init(FCC_ROLE_BIAS, "fc3.bias", 10, 4096, 0);
  for (float x : b)
    EXPECT_LE(std::fabs(x), 1.0f / 64.0f);
}

TEST(ParamInit, BatchNormDefaultsAreExact) {
  for (int64_t fanIn : {0, 1, 100}) {
    for (float x : init(FCC_ROLE_BN_SCALE, "bn.weight", 64, fanIn, 3))
      EXPECT_EQ(x, 1.0f);
    for (float x : init(FCC_ROLE_BN_SHIFT, "bn.bias", 64, fanIn, 3))
      EXPECT_EQ(x, 0.0f);
    for (float x : init(FCC_ROLE_RUNNING_MEAN, "bn.running_mean", 64, fanIn, 3))
      EXPECT_EQ(x, 0.0f);
    for (float x : init(FCC_ROLE_RUNNING_VAR, "bn.running_var", 64, fanIn, 3))
      EXPECT_EQ(x, 1.0f);
  }
}

TEST(ParamInit, SameSeedAndNameGiveIdenticalValues) {
  auto a = init(FCC_ROLE_WEIGHT, "layer1.conv.weight", 5000, 576, 42);
  auto b = init(FCC_ROLE_WEIGHT, "layer1.conv.weight", 5000, 576, 42);
  EXPECT_EQ(a, b);
}

TEST(ParamInit, DifferentSeedOrNameGiveDifferentValues) {
  auto a = init(FCC_ROLE_WEIGHT, "layer1.conv.weight", 1000, 576, 42);
  auto otherSeed = init(FCC_ROLE_WEIGHT, "layer1.conv.weight", 1000, 576, 43);
  auto otherName = init(FCC_ROLE_WEIGHT, "layer2.conv.weight", 1000, 576, 42);
  int sameSeed = 0, sameName = 0;
  for (int i = 0; i < 1000; ++i) {
    sameSeed += a[i] == otherSeed[i];
    sameName += a[i] == otherName[i];
  }
  EXPECT_LT(sameSeed, 5);
  EXPECT_LT(sameName, 5);
}

TEST(ParamInit, IndependentOfParameterOrderAndCount) {
  // Initialising A then B or B then A gives the same values: there is no
  // hidden generator state.
  auto a1 = init(FCC_ROLE_WEIGHT, "a.weight", 300, 9, 5);
  auto b1 = init(FCC_ROLE_BIAS, "b.bias", 300, 9, 5);
  auto b2 = init(FCC_ROLE_BIAS, "b.bias", 300, 9, 5);
  auto a2 = init(FCC_ROLE_WEIGHT, "a.weight", 300, 9, 5);
  EXPECT_EQ(a1, a2);
  EXPECT_EQ(b1, b2);
  // Element i depends only on (seed, name, i), not on the tensor's size.
  auto prefix = init(FCC_ROLE_WEIGHT, "a.weight", 17, 9, 5);
  EXPECT_EQ(prefix, std::vector<float>(a1.begin(), a1.begin() + 17));
  // Weight and bias of the same name and fan_in share the distribution.
  auto asBias = init(FCC_ROLE_BIAS, "a.weight", 300, 9, 5);
  EXPECT_EQ(asBias, a1);
}

TEST(ParamInit, RejectsInvalidRequests) {
  float buf[4] = {0, 0, 0, 0};
  EXPECT_EQ(fcc_param_init(FCC_ROLE_WEIGHT, "w", 4, 0, 0, buf), 1);
  EXPECT_EQ(fcc_param_init(FCC_ROLE_BIAS, "b", 4, -3, 0, buf), 1);
  EXPECT_EQ(fcc_param_init(FCC_ROLE_OTHER, "x", 4, 1, 0, buf), 1);
  EXPECT_EQ(fcc_param_init(42, "x", 4, 1, 0, buf), 1);
  EXPECT_EQ(fcc_param_init(-1, "x", 4, 1, 0, buf), 1);
  EXPECT_EQ(fcc_param_init(FCC_ROLE_BN_SCALE, "x", -1, 1, 0, buf), 1);
  // Empty tensors are fine.
  EXPECT_EQ(fcc_param_init(FCC_ROLE_WEIGHT, "w", 0, 9, 0, nullptr), 0);
}

} // namespace
