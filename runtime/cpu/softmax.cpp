//===- softmax.cpp - Softmax and softmax cross-entropy --------------------===//
//
// Softmax over the middle axis of an (outer, dim, inner) view, and the fused
// softmax + label-smoothed cross-entropy loss used as the training objective
// (loss, gradient w.r.t. the logits and the count of correct predictions in
// one pass). Both subtract the maximum before exponentiating and accumulate
// the normaliser in double; the mean loss is summed over rows sequentially so
// that it does not depend on the thread count.
//
//===----------------------------------------------------------------------===//
#include "internal.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

using fcc::cpu::format;
using fcc::cpu::setError;

extern "C" void fcc_cpu_softmax(const float *x, int64_t outer, int64_t dim,
                                int64_t inner, float *y) {
  if (outer <= 0 || dim <= 0 || inner <= 0)
    return;
  if (inner == 1) {
    // Contiguous rows.
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; ++o) {
      const float *src = x + o * dim;
      float *dst = y + o * dim;
      const float max = *std::max_element(src, src + dim);
      double sum = 0.0;
      for (int64_t j = 0; j < dim; ++j) {
        float e = std::exp(src[j] - max);
        dst[j] = e;
        sum += e;
      }
      const float inv = float(1.0 / sum);
      for (int64_t j = 0; j < dim; ++j)
        dst[j] *= inv;
    }
    return;
  }

  // Strided softmax: each iteration handles a tile of consecutive inner
  // positions, sweeping the softmax axis with contiguous reads.
  constexpr int64_t kTile = 64;
  const int64_t tiles = (inner + kTile - 1) / kTile;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < outer * tiles; ++t) {
    const int64_t o = t / tiles, start = (t % tiles) * kTile;
    const int64_t len = std::min(kTile, inner - start);
    const float *src = x + o * dim * inner + start;
    float *dst = y + o * dim * inner + start;
    float max[kTile];
    double sum[kTile] = {};
    std::fill(max, max + len, -std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < dim; ++j)
      for (int64_t i = 0; i < len; ++i)
        max[i] = std::max(max[i], src[j * inner + i]);
    for (int64_t j = 0; j < dim; ++j)
      for (int64_t i = 0; i < len; ++i) {
        float e = std::exp(src[j * inner + i] - max[i]);
        dst[j * inner + i] = e;
        sum[i] += e;
      }
    float inv[kTile];
    for (int64_t i = 0; i < len; ++i)
      inv[i] = float(1.0 / sum[i]);
    for (int64_t j = 0; j < dim; ++j)
      for (int64_t i = 0; i < len; ++i)
        dst[j * inner + i] *= inv[i];
  }
}

extern "C" double fcc_cpu_softmax_xent(const float *logits,
                                       const int32_t *labels, int64_t n,
                                       int64_t classes, float label_smoothing,
                                       float *loss_per_row, float *dlogits,
                                       int64_t *correct) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (n <= 0 || classes <= 0) {
    setError(FCC_ERR_INVALID,
             format("softmax_xent: need n > 0 and classes > 0, got n=%lld "
                    "classes=%lld",
                    (long long)n, (long long)classes));
    return nan;
  }
  for (int64_t i = 0; i < n; ++i)
    if (labels[i] != FCC_IGNORE_LABEL && (labels[i] < 0 || labels[i] >= classes)) {
      setError(FCC_ERR_INVALID,
               format("softmax_xent: label %d of row %lld is outside [0, %lld)",
                      int(labels[i]), (long long)i, (long long)classes));
      return nan;
    }

  // q = (1 - ls) * onehot(label) + ls / classes, so with lse = log sum exp x:
  //   loss = -sum_j q_j (x_j - lse) = lse - (1 - ls) x_label - ls/C sum_j x_j
  //   dloss/dx_j = softmax_j - q_j.
  const double ls = label_smoothing;
  const double offTarget = ls / double(classes);
  const double onTarget = 1.0 - ls + offTarget;
  std::vector<double> rowLoss(n);
  std::vector<unsigned char> rowCorrect(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float *x = logits + i * classes;
    const int64_t label = labels[i];
    if (label == FCC_IGNORE_LABEL) { // a padding row: no loss, no gradient
      rowLoss[i] = 0.0;
      rowCorrect[i] = 0;
      if (dlogits)
        std::fill(dlogits + i * classes, dlogits + (i + 1) * classes, 0.0f);
      continue;
    }
    const int64_t argmax = std::max_element(x, x + classes) - x;
    const double max = x[argmax];
    double sumExp = 0.0, sumX = 0.0;
    for (int64_t j = 0; j < classes; ++j) {
      sumExp += std::exp(double(x[j]) - max);
      sumX += x[j];
    }
    const double lse = max + std::log(sumExp);
    rowLoss[i] = lse - (1.0 - ls) * double(x[label]) - offTarget * sumX;
    rowCorrect[i] = argmax == label;
    if (dlogits) {
      float *g = dlogits + i * classes;
      const double invN = 1.0 / double(n);
      for (int64_t j = 0; j < classes; ++j) {
        double p = std::exp(double(x[j]) - lse);
        double q = j == label ? onTarget : offTarget;
        g[j] = float((p - q) * invN);
      }
    }
  }

  double total = 0.0;
  int64_t numCorrect = 0;
  for (int64_t i = 0; i < n; ++i) {
    total += rowLoss[i];
    numCorrect += rowCorrect[i];
    if (loss_per_row)
      loss_per_row[i] = float(rowLoss[i]);
  }
  if (correct)
    *correct = numCorrect;
  return total / double(n);
}
