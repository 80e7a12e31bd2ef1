//===- batch_norm.cpp - Batch normalisation over (N, H, W) per channel ---===//
//
// Inference, training forward (batch statistics), running-statistics update
// and training backward. Per-channel sums are accumulated in double in a fixed
// order (n, then hw), one channel per OpenMP iteration, so the results do not
// depend on the thread count and no atomics are needed.
//
//===----------------------------------------------------------------------===//
#include "internal.h"

#include <cmath>
#include <vector>

namespace {

// y = (x - mean[ch]) * mul[ch] + shift[ch] for every (n, ch) plane, in
// double: subtracting the mean first avoids the cancellation of the folded
// form x * mul + (shift - mean * mul) when |mean| is large against the std.
void normalizePlanes(const float *x, const double *mean, const double *mul,
                     const float *shift, int64_t n, int64_t c, int64_t hw,
                     float *y) {
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < n * c; ++plane) {
    const int64_t ch = plane % c;
    const double m = mean[ch], a = mul[ch], b = shift[ch];
    const float *src = x + plane * hw;
    float *dst = y + plane * hw;
    for (int64_t i = 0; i < hw; ++i)
      dst[i] = float((double(src[i]) - m) * a + b);
  }
}

} // namespace

extern "C" void fcc_cpu_batch_norm_inference(
    const float *x, const float *scale, const float *shift, const float *mean,
    const float *var, float eps, int64_t n, int64_t c, int64_t hw, float *y) {
  std::vector<double> m(c), mul(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    m[ch] = mean[ch];
    mul[ch] = double(scale[ch]) / std::sqrt(double(var[ch]) + double(eps));
  }
  normalizePlanes(x, m.data(), mul.data(), shift, n, c, hw, y);
}

extern "C" void
fcc_cpu_batch_norm_train_forward(const float *x, const float *scale,
                                 const float *shift, float eps, int64_t n,
                                 int64_t c, int64_t hw, float *y,
                                 float *batch_mean, float *batch_var) {
  const double count = double(n * hw);
  std::vector<double> means(c), mul(c);
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    // Two passes (mean, then centred squares) for an accurate variance.
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const float *src = x + (i * c + ch) * hw;
      for (int64_t j = 0; j < hw; ++j)
        sum += src[j];
    }
    const double mean = sum / count;
    double sq = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const float *src = x + (i * c + ch) * hw;
      for (int64_t j = 0; j < hw; ++j) {
        double centred = double(src[j]) - mean;
        sq += centred * centred;
      }
    }
    const double var = sq / count;
    const double invStd = 1.0 / std::sqrt(var + double(eps));
    batch_mean[ch] = float(mean);
    batch_var[ch] = float(var);
    means[ch] = mean;
    mul[ch] = double(scale[ch]) * invStd;
  }
  normalizePlanes(x, means.data(), mul.data(), shift, n, c, hw, y);
}

extern "C" void fcc_cpu_batch_norm_update_running(float *running_mean,
                                                  float *running_var,
                                                  const float *batch_mean,
                                                  const float *batch_var,
                                                  float momentum, int unbiased,
                                                  int64_t count, int64_t c) {
  // Bessel's correction; a single sample has no unbiased estimate, so it
  // falls back to the biased variance instead of dividing by zero.
  const double correction =
      unbiased && count > 1 ? double(count) / double(count - 1) : 1.0;
  const double m = momentum;
  for (int64_t ch = 0; ch < c; ++ch) {
    running_mean[ch] =
        float((1.0 - m) * running_mean[ch] + m * double(batch_mean[ch]));
    running_var[ch] = float((1.0 - m) * running_var[ch] +
                            m * double(batch_var[ch]) * correction);
  }
}

extern "C" void
fcc_cpu_batch_norm_backward(const float *x, const float *dy, const float *scale,
                            const float *batch_mean, const float *batch_var,
                            float eps, int64_t n, int64_t c, int64_t hw,
                            float *dx, float *dscale, float *dshift) {
  // With xhat = (x - mean) * invStd over M = n*hw values per channel:
  //   dshift = sum dy,  dscale = sum dy * xhat,
  //   dx = scale * invStd * (dy - dshift / M - xhat * dscale / M).
  const double count = double(n * hw);
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    const double mean = batch_mean[ch];
    const double invStd = 1.0 / std::sqrt(double(batch_var[ch]) + double(eps));
    double sumDy = 0.0, sumDyXhat = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t offset = (i * c + ch) * hw;
      for (int64_t j = 0; j < hw; ++j) {
        double g = dy[offset + j];
        sumDy += g;
        sumDyXhat += g * (double(x[offset + j]) - mean) * invStd;
      }
    }
    if (dshift)
      dshift[ch] = float(sumDy);
    if (dscale)
      dscale[ch] = float(sumDyXhat);
    if (!dx)
      continue;
    const double k = double(scale[ch]) * invStd;
    const double meanDy = sumDy / count;
    const double meanDyXhat = sumDyXhat / count;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t offset = (i * c + ch) * hw;
      for (int64_t j = 0; j < hw; ++j) {
        double xhat = (double(x[offset + j]) - mean) * invStd;
        dx[offset + j] =
            float(k * (double(dy[offset + j]) - meanDy - xhat * meanDyXhat));
      }
    }
  }
}
