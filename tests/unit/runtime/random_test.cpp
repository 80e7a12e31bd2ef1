//===- random_test.cpp - Tests of Philox and the threading/error API -----===//
//
// Philox-4x32-10 against the published known-answer vector, basic properties
// of the uniform floats, and the small process-wide API (thread count, last
// error).
//
//===----------------------------------------------------------------------===//
#include "test_util.h"

#include <omp.h>

#include <thread>

using namespace fcc::test;

namespace {

TEST(Philox, KnownAnswer) {
  // Random123 kat_vectors: philox4x32 10, counter {0,0,0,0}, key {0,0} ->
  // 6627e8d5 e169c58d bc57ac4c 9b00dbd8. fcc maps (seed, stream, index) to
  // key = seed, counter = (index / 4, stream), word = index % 4.
  EXPECT_EQ(fcc_random_u32(0, 0, 0), 0x6627e8d5u);
  EXPECT_EQ(fcc_random_u32(0, 0, 1), 0xe169c58du);
  EXPECT_EQ(fcc_random_u32(0, 0, 2), 0xbc57ac4cu);
  EXPECT_EQ(fcc_random_u32(0, 0, 3), 0x9b00dbd8u);
}

TEST(Philox, UniformProperties) {
  const int count = 10000;
  double sum = 0.0;
  int sameAcrossStreams = 0, sameAcrossSeeds = 0;
  for (int i = 0; i < count; ++i) {
    float u = fcc_random_uniform(123, 4, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ASSERT_EQ(u, fcc_random_uniform(123, 4, i)); // pure function
    sum += u;
    sameAcrossStreams += u == fcc_random_uniform(123, 5, i);
    sameAcrossSeeds += u == fcc_random_uniform(124, 4, i);
  }
  // Mean 0.5 with std 0.29 / sqrt(10000) = 0.0029: 5 sigma.
  EXPECT_NEAR(sum / count, 0.5, 0.015);
  // Independent 24-bit values coincide with probability 2^-24.
  EXPECT_LE(sameAcrossStreams, 2);
  EXPECT_LE(sameAcrossSeeds, 2);
  // The largest 24-bit value maps below 1.
  EXPECT_LT(float(0xffffffu) * (1.0f / 16777216.0f), 1.0f);
}

TEST(CpuApi, ThreadCount) {
  const int initial = fcc_cpu_get_num_threads();
  fcc_cpu_set_num_threads(1);
  EXPECT_EQ(fcc_cpu_get_num_threads(), 1);
  EXPECT_EQ(omp_get_max_threads(), 1);
  fcc_cpu_set_num_threads(3);
  EXPECT_EQ(fcc_cpu_get_num_threads(), 3);
  fcc_cpu_set_num_threads(0);
  EXPECT_EQ(fcc_cpu_get_num_threads(), initial);
}

TEST(CpuApi, LastErrorIsThreadLocal) {
  fcc_pool2d_desc d{};
  EXPECT_EQ(fcc_pool2d_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_STRNE(fcc_cpu_last_error(), "");
  std::string other = "unset";
  std::thread([&] { other = fcc_cpu_last_error(); }).join();
  EXPECT_EQ(other, "");
}

} // namespace
