//===- half.cpp - Half-precision emulation and loss-scaling kernels -------===//
//
// The CPU target stores half-precision tensors in float buffers and rounds
// every value a half-precision op produces (and every cast) to the nearest
// representable fp16 / bf16 value, ties to even — exactly what storing it in
// 16 bits and reading it back would give. So `--precision fp16` can be tested
// on any machine: the CPU computes in fp32 on half-rounded inputs and rounds
// the results, like tensor cores accumulating in fp32.
//
// Also here: the finite check of dynamic loss scaling and the loss-scaled
// SGD update that skips the step when a gradient overflowed.
//
//===----------------------------------------------------------------------===//
#include "internal.h"
#include "fcc/runtime/cpu_kernels.h"

#include <cmath>
#include <cstring>

namespace {

using fcc::cpu::bitsOf;
using fcc::cpu::floatOf;

// Rounds to the nearest fp16 value (ties to even), with fp16's overflow to
// infinity, gradual underflow (subnormals 2^-24 apart) and NaN kept NaN.
float roundF16(float x) {
  uint32_t u = bitsOf(x);
  uint32_t sign = u & 0x80000000u;
  uint32_t mag = u & 0x7fffffffu;
  if (mag >= 0x7f800000u) // inf or NaN
    return x;
  // The largest float that rounds to 65504 (max fp16) is just below
  // 65520 = 65504 + half an ulp; 65520 itself ties to even = infinity.
  if (mag >= 0x477ff000u)
    return floatOf(sign | 0x7f800000u);
  if (mag >= 0x38800000u) {
    // Normal fp16 range (>= 2^-14): keep 10 of the 23 mantissa bits,
    // rounding the 13 dropped ones to nearest, ties to even (a carry into
    // the exponent is the correct result).
    uint32_t r = mag + 0xfffu + ((mag >> 13) & 1u);
    return floatOf(sign | (r & ~0x1fffu));
  }
  // Subnormal fp16 range: multiples of 2^-24. Adding 0.5 (whose float ulp
  // is 2^-24) rounds to nearest even in hardware; subtracting it is exact.
  float a = floatOf(mag);
  float r = (a + 0.5f) - 0.5f;
  return floatOf(sign | bitsOf(r));
}

// Rounds to the nearest bf16 value (the top 16 bits of a float), ties to
// even; NaN stays NaN, overflow goes to infinity.
float roundBf16(float x) {
  uint32_t u = bitsOf(x);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return floatOf(u | 0x00400000u); // quiet NaN
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return floatOf(u & 0xffff0000u);
}

} // namespace

extern "C" float fcc_round_f16(float x) { return roundF16(x); }
extern "C" float fcc_round_bf16(float x) { return roundBf16(x); }

extern "C" void fcc_cpu_round_f16(float *x, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    x[i] = roundF16(x[i]);
}

extern "C" void fcc_cpu_round_bf16(float *x, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    x[i] = roundBf16(x[i]);
}

extern "C" void fcc_cpu_cast(const float *x, float *y, int64_t count,
                             int to) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    y[i] = to == FCC_DTYPE_F16    ? roundF16(x[i])
           : to == FCC_DTYPE_BF16 ? roundBf16(x[i])
                                  : x[i];
}

extern "C" int fcc_cpu_all_finite(const float *x, int64_t count) {
  int finite = 1;
#pragma omp parallel for schedule(static) reduction(&& : finite)
  for (int64_t i = 0; i < count; ++i)
    finite = finite && std::isfinite(x[i]);
  return finite;
}

extern "C" void fcc_cpu_sgd_update_scaled(float *param, const float *grad,
                                          float *buf, int64_t count, float lr,
                                          float momentum, float wd,
                                          int nesterov, float grad_scale,
                                          int apply) {
  if (!apply)
    return;
  const float inv = 1.0f / grad_scale;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    float g = grad[i] * inv + wd * param[i];
    float b = momentum * buf[i] + g;
    buf[i] = b;
    param[i] -= lr * (nesterov ? g + momentum * b : b);
  }
}
