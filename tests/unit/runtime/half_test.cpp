// Half-precision emulation and loss-scaling kernels (runtime/cpu/half.cpp):
// rounding against hand-derived values and against the CPU's own IEEE
// conversion instructions (F16C: vcvtps2ph with round-to-nearest-even), the
// finite check, and the skipped/unscaled SGD step.
#include "fcc/runtime/cpu_kernels.h"

#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

float fromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(RoundF16, HandDerivedValues) {
  // 1 + 2^-11 is half-way between 1 and 1 + 2^-10: ties to even -> 1.
  EXPECT_EQ(fcc_round_f16(1.0f + std::ldexp(1.0f, -11)), 1.0f);
  // 1 + 3 * 2^-11 is half-way between 1 + 2^-10 and 1 + 2^-9: -> 1 + 2^-9.
  EXPECT_EQ(fcc_round_f16(1.0f + 3 * std::ldexp(1.0f, -11)),
            1.0f + std::ldexp(1.0f, -9));
  // Just above the tie rounds up.
  EXPECT_EQ(fcc_round_f16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)),
            1.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(fcc_round_f16(0.1f), 0.0999755859375f); // 1638 * 2^-14
  EXPECT_EQ(fcc_round_f16(65504.0f), 65504.0f);     // the largest half
  EXPECT_EQ(fcc_round_f16(65519.0f), 65504.0f);
  EXPECT_TRUE(std::isinf(fcc_round_f16(65520.0f))); // ties to even: overflow
  EXPECT_EQ(fcc_round_f16(-70000.0f), -std::numeric_limits<float>::infinity());
  // Subnormals are 2^-24 apart; 2^-25 ties to 0, 3 * 2^-25 to 2 * 2^-24.
  EXPECT_EQ(fcc_round_f16(std::ldexp(1.0f, -24)), std::ldexp(1.0f, -24));
  EXPECT_EQ(fcc_round_f16(std::ldexp(1.0f, -25)), 0.0f);
  EXPECT_EQ(fcc_round_f16(3 * std::ldexp(1.0f, -25)), std::ldexp(1.0f, -23));
  EXPECT_EQ(fcc_round_f16(1e-10f), 0.0f);
  EXPECT_TRUE(std::signbit(fcc_round_f16(-1e-10f)));
  EXPECT_TRUE(std::isnan(fcc_round_f16(std::nanf(""))));
}

TEST(RoundBf16, HandDerivedValues) {
  // bf16 keeps 8 significant bits: 1 + 2^-8 ties to even -> 1.
  EXPECT_EQ(fcc_round_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);
  EXPECT_EQ(fcc_round_bf16(1.0f + 3 * std::ldexp(1.0f, -8)),
            1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(bits(fcc_round_bf16(0.1f)), 0x3dcd0000u); // 0x3dcccccd rounds up
  EXPECT_TRUE(std::isinf(fcc_round_bf16(fromBits(0x7f7fffffu))));
  EXPECT_EQ(fcc_round_bf16(1e30f), fromBits(bits(1e30f) + 0x8000u & 0xffff0000u));
  EXPECT_TRUE(std::isnan(fcc_round_bf16(std::nanf(""))));
}

// The hardware conversion is an independent implementation of IEEE 754
// round-to-nearest-even to binary16.
float hardwareF16(float x) {
  __m128 v = _mm_set_ss(x);
  __m128i h = _mm_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  return _mm_cvtss_f32(_mm_cvtph_ps(h));
}

TEST(RoundF16, MatchesHardwareConversion) {
  if (!__builtin_cpu_supports("f16c"))
    GTEST_SKIP() << "this CPU has no F16C instructions";
  std::mt19937 rng(42);
  std::uniform_int_distribution<uint32_t> any;
  int64_t checked = 0;
  auto check = [&](float x) {
    float want = hardwareF16(x), got = fcc_round_f16(x);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << x;
    } else {
      ASSERT_EQ(bits(got), bits(want)) << "x = " << x << " (bits 0x" << std::hex
                                       << bits(x) << ")";
    }
    ++checked;
  };
  // Random bit patterns (all exponents), random values in the half range,
  // and every fp16 value with its neighbours and midpoints.
  for (int i = 0; i < 200000; ++i)
    check(fromBits(any(rng)));
  std::uniform_real_distribution<float> range(-70000.0f, 70000.0f);
  for (int i = 0; i < 200000; ++i)
    check(range(rng) * std::ldexp(1.0f, int(any(rng) % 40) - 30));
  for (uint32_t h = 0; h < 0x7c00u; ++h) {
    float v = _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(short(h))));
    float next = _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(short(h + 1))));
    float mid = v + (next - v) / 2; // exact: one more bit than fp16
    for (float x : {v, mid, std::nextafter(mid, 0.0f),
                    std::nextafter(mid, 1e9f)}) {
      check(x);
      check(-x);
    }
  }
  EXPECT_GT(checked, 500000);
}

TEST(Cast, RoundsToTheTargetType) {
  std::vector<float> x = {1.0f + std::ldexp(1.0f, -11) * 3, 0.1f, 1e6f};
  std::vector<float> y(3);
  fcc_cpu_cast(x.data(), y.data(), 3, FCC_DTYPE_F16);
  EXPECT_EQ(y[0], fcc_round_f16(x[0]));
  EXPECT_EQ(y[1], 0.0999755859375f);
  EXPECT_TRUE(std::isinf(y[2]));
  fcc_cpu_cast(x.data(), y.data(), 3, FCC_DTYPE_BF16);
  EXPECT_EQ(y[1], fromBits(0x3dcd0000u));
  fcc_cpu_cast(x.data(), y.data(), 3, FCC_DTYPE_F32);
  EXPECT_EQ(y, x);
  fcc_cpu_round_f16(x.data(), 3);
  EXPECT_EQ(x[1], 0.0999755859375f);
}

TEST(LossScaling, AllFinite) {
  std::vector<float> g(1000, 0.5f);
  EXPECT_EQ(fcc_cpu_all_finite(g.data(), 1000), 1);
  g[777] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(fcc_cpu_all_finite(g.data(), 1000), 0);
  g[777] = std::nanf("");
  EXPECT_EQ(fcc_cpu_all_finite(g.data(), 1000), 0);
}

TEST(LossScaling, ScaledUpdateAndSkip) {
  // One element by hand: grad 8 at scale 4 is 2; wd 0.5 * param 1 adds 0.5;
  // buf = 0.9 * 1 + 2.5 = 3.4; nesterov step 2.5 + 0.9 * 3.4 = 5.56;
  // param = 1 - 0.1 * 5.56 = 0.444.
  float p = 1.0f, g = 8.0f, b = 1.0f;
  fcc_cpu_sgd_update_scaled(&p, &g, &b, 1, 0.1f, 0.9f, 0.5f, 1, 4.0f, 1);
  EXPECT_NEAR(b, 3.4f, 1e-6f);
  EXPECT_NEAR(p, 0.444f, 1e-6f);
  // A skipped step changes nothing, even with a non-finite gradient.
  float inf = std::numeric_limits<float>::infinity();
  fcc_cpu_sgd_update_scaled(&p, &inf, &b, 1, 0.1f, 0.9f, 0.5f, 1, 4.0f, 0);
  EXPECT_NEAR(b, 3.4f, 1e-6f);
  EXPECT_NEAR(p, 0.444f, 1e-6f);
}

} // namespace
