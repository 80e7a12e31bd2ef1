//===- optim.cpp - Optimizer and EMA updates, accuracy, flips -------------===//
//
// Elementwise training-loop kernels: the SGD/momentum update (PyTorch's
// formulation), the weight EMA, the correct-prediction count and the
// horizontal flip used by test-time augmentation.
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/cpu_kernels.h"

extern "C" void fcc_cpu_sgd_update(float *param, const float *grad, float *buf,
                                   int64_t count, float lr, float momentum,
                                   float wd, int nesterov) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    float g = grad[i] + wd * param[i];
    float b = momentum * buf[i] + g;
    buf[i] = b;
    param[i] -= lr * (nesterov ? g + momentum * b : b);
  }
}

extern "C" void fcc_cpu_ema_update(float *ema, const float *value, float decay,
                                   int64_t count) {
  const float keep = decay, take = 1.0f - decay;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    ema[i] = keep * ema[i] + take * value[i];
}

extern "C" int64_t fcc_cpu_count_correct(const float *logits,
                                         const int32_t *labels, int64_t n,
                                         int64_t classes) {
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (labels[i] == FCC_IGNORE_LABEL)
      continue;
    const float *row = logits + i * classes;
    int64_t best = 0;
    for (int64_t j = 1; j < classes; ++j)
      if (row[j] > row[best])
        best = j;
    correct += best == labels[i];
  }
  return correct;
}

extern "C" void fcc_cpu_flip_w(const float *x, int64_t n, int64_t c, int64_t h,
                               int64_t w, float *y) {
  const int64_t rows = n * c * h;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < w; ++j)
      y[r * w + j] = x[r * w + (w - 1 - j)];
}
