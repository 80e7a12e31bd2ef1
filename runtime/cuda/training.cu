//===- training.cu - Loss, metrics, optimizer, EMA, loss scaling, batches -===//
//
// The kernels of the training loop around the network:
//  - the loss and accuracy metrics (accumulated on the device, read by the
//    trainer once per epoch) and the gradient of the label-smoothed softmax
//    cross-entropy, as fcc_cpu_softmax_xent / fcc_cpu_count_correct and the
//    CPU codegen helpers of cpu_codegen.h (same formulas in double, same
//    treatment of rows labelled FCC_IGNORE_LABEL);
//  - SGD with momentum (fcc_cpu_sgd_update[_scaled]) and the weight EMA
//    (fcc_cpu_ema_update) for many tensors in one launch each: blockIdx.y
//    selects the tensor, a grid-stride loop covers its elements;
//  - the finite check of dynamic loss scaling, and the scale's update rule
//    (the trainer's, runtime/trainer/Trainer.cpp) on the device, so that the
//    trainer need not read the skipped-step metric after every step;
//  - the batch builder: gather, normalise, reflect-pad + crop, flip and
//    cutout, as runtime/trainer/Augment.cpp.
// Step-varying scalars (label smoothing, loss-gradient scale, learning
// rate, EMA decay, the finite flag, the loss scale) are read from device
// memory inside the
// kernels, so a captured CUDA graph sees each step's values.
//
// Metric reductions run in one block with a fixed-order tree (no atomics),
// so they are deterministic; a batch has at most a few thousand rows.
//
//===----------------------------------------------------------------------===//
#include "common.cuh"

#include "fcc/runtime/program.h"

using namespace fcc::cuda;

namespace {

//===----------------------------------------------------------------------===//
// Loss and metrics
//===----------------------------------------------------------------------===//

// Index of the first maximum of a row (std::max_element's choice).
__device__ int64_t argmaxOf(const float *x, int64_t classes) {
  int64_t best = 0;
  for (int64_t j = 1; j < classes; ++j)
    if (x[j] > x[best])
      best = j;
  return best;
}

// lse = max + log(sum exp(x - max)) of a row, in double.
__device__ double logSumExp(const float *x, int64_t classes) {
  const double max = double(x[argmaxOf(x, classes)]);
  double sumExp = 0.0;
  for (int64_t j = 0; j < classes; ++j)
    sumExp += exp(double(x[j]) - max);
  return max + log(sumExp);
}

// The per-row loss of fcc_cpu_softmax_xent:
//   lse - (1 - ls) x_label - ls/C sum_j x_j,
// 0 for an ignored row, NaN for a label outside [0, classes).
__device__ double rowLoss(const float *x, int32_t label, int64_t classes,
                          double ls) {
  if (label == FCC_IGNORE_LABEL)
    return 0.0;
  if (label < 0 || label >= classes)
    return __longlong_as_double(0x7ff8000000000000LL); // quiet NaN
  const int64_t best = argmaxOf(x, classes);
  const double max = double(x[best]);
  double sumExp = 0.0, sumX = 0.0;
  for (int64_t j = 0; j < classes; ++j) {
    sumExp += exp(double(x[j]) - max);
    sumX += double(x[j]);
  }
  const double lse = max + log(sumExp);
  return lse - (1.0 - ls) * double(x[label]) - ls / double(classes) * sumX;
}

__global__ void __launch_bounds__(kThreads)
    metricLossKernel(float *metrics, const float *logits,
                     const int32_t *labels, int64_t n, int64_t classes,
                     const float *labelSmoothing) {
  const double ls = labelSmoothing ? double(*labelSmoothing) : 0.0;
  double sum = 0.0, unused = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads)
    sum += rowLoss(logits + i * classes, labels[i], classes, ls);
  blockSum2(sum, unused);
  // fcc_metric_loss: += (float)(mean * n) with mean = total / n.
  if (threadIdx.x == 0)
    metrics[FCC_METRIC_LOSS_SUM] += float((sum / double(n)) * double(n));
}

__global__ void __launch_bounds__(kThreads)
    metricCorrectKernel(float *metrics, const float *logits,
                        const int32_t *labels, int64_t n, int64_t classes) {
  double count = 0.0, unused = 0.0; // exact: counts stay far below 2^53
  for (int64_t i = threadIdx.x; i < n; i += kThreads)
    if (labels[i] != FCC_IGNORE_LABEL &&
        argmaxOf(logits + i * classes, classes) == labels[i])
      count += 1.0;
  blockSum2(count, unused);
  if (threadIdx.x == 0)
    metrics[FCC_METRIC_CORRECT] += float(int64_t(count));
}

// One thread per row: dlogits = (softmax - q) / n, then scaled by the loss
// gradient as fcc_softmax_xent_grad does (x * loss_grad + 0 when it is not
// 1). Ignored rows get 0 (scaled the same way); a row with a label outside
// [0, classes) gets NaN (the CPU reports the error and leaves dlogits
// unwritten; a kernel cannot report, so it poisons the row).
__global__ void xentGradKernel(const float *logits, const int32_t *labels,
                               int64_t n, int64_t classes,
                               const float *labelSmoothing,
                               const float *lossGrad, float *dlogits) {
  const double ls = labelSmoothing ? double(*labelSmoothing) : 0.0;
  const float scale = lossGrad ? *lossGrad : 1.0f;
  const double offTarget = ls / double(classes);
  const double onTarget = 1.0 - ls + offTarget;
  const double invN = 1.0 / double(n);
  FCC_GRID_LOOP(i, n) {
    const float *x = logits + i * classes;
    float *g = dlogits + i * classes;
    const int32_t label = labels[i];
    const bool valid = label >= 0 && label < classes;
    const double lse = valid ? logSumExp(x, classes) : 0.0;
    for (int64_t j = 0; j < classes; ++j) {
      float v;
      if (label == FCC_IGNORE_LABEL)
        v = 0.0f;
      else if (!valid)
        v = __int_as_float(0x7fc00000);
      else
        v = float((exp(double(x[j]) - lse) -
                   (j == label ? onTarget : offTarget)) *
                  invN);
      g[j] = scale != 1.0f ? v * scale + 0.0f : v;
    }
  }
}

//===----------------------------------------------------------------------===//
// Optimizer, EMA, loss scaling
//===----------------------------------------------------------------------===//

// PyTorch SGD with the CPU's float arithmetic, per item:
//   g' = grad [/ grad_scale] + wd * param;  buf = momentum * buf + g';
//   param -= lr * (nesterov ? g' + momentum * buf : buf).
__global__ void sgdMultiKernel(const fcc_cuda_sgd_item *items,
                               const fcc_hyper *hyper, const float *gradScale,
                               const float *apply) {
  if (apply && *apply == 0.0f)
    return; // A skipped step (a gradient overflowed).
  const fcc_cuda_sgd_item it = items[blockIdx.y];
  // The generated CPU code multiplies by lr_mult/wd_mult only when they
  // are not 1; x * 1.0f == x, so multiplying always is the same.
  const float lr = hyper->lr * it.lr_mult;
  const float wd = hyper->weight_decay * it.wd_mult;
  const float momentum = hyper->momentum;
  const bool nesterov = hyper->nesterov != 0.0f;
  const float inv = gradScale ? 1.0f / *gradScale : 1.0f;
  FCC_GRID_LOOP(i, it.count) {
    const float p = it.param[i];
    const float g = gradScale ? it.grad[i] * inv + wd * p : it.grad[i] + wd * p;
    const float b = momentum * it.buf[i] + g;
    it.buf[i] = b;
    it.param[i] = p - lr * (nesterov ? g + momentum * b : b);
  }
}

__global__ void emaMultiKernel(float *const *emas, const float *const *values,
                               const int64_t *counts, const float *decay) {
  const float keep = *decay, take = 1.0f - keep;
  float *ema = emas[blockIdx.y];
  const float *value = values[blockIdx.y];
  const int64_t count = counts[blockIdx.y];
  FCC_GRID_LOOP(i, count) { ema[i] = keep * ema[i] + take * value[i]; }
}

__global__ void finiteBeginKernel(float *finite) { *finite = 1.0f; }

// Every thread that sees a non-finite value writes the same 0: a benign
// race that needs no atomics.
__device__ __forceinline__ void finiteAnd(float *finite, const float *grad,
                                          int64_t count) {
  if (*finite == 0.0f)
    return; // An earlier gradient already overflowed.
  FCC_GRID_LOOP(i, count) {
    if (!isfinite(grad[i]))
      *finite = 0.0f;
  }
}

__global__ void finiteAndKernel(float *finite, const float *grad,
                                int64_t count) {
  finiteAnd(finite, grad, count);
}

// One tensor per blockIdx.y (fcc_cuda_finite_and_multi).
__global__ void finiteAndMultiKernel(float *finite, const float *const *grads,
                                     const int64_t *counts) {
  finiteAnd(finite, grads[blockIdx.y], counts[blockIdx.y]);
}

__global__ void metricSkippedKernel(float *metrics, const float *finite) {
  metrics[FCC_METRIC_SKIPPED] += 1.0f - *finite;
}

// One thread. The host rule of the trainer, in the same double arithmetic:
// std::max(1.0, scale / 2) on a skipped step, std::min(1e30, scale * 2)
// after `window` clean steps in a row.
__global__ void lossScaleUpdateKernel(fcc_cuda_loss_scale_state *state,
                                      fcc_hyper *hyper, const float *metrics,
                                      int64_t window) {
  const float skipped = metrics[FCC_METRIC_SKIPPED];
  double scale = state->scale;
  int64_t clean = state->clean_steps;
  if (skipped > state->last_skipped) {
    const double half = scale / 2;
    scale = 1.0 < half ? half : 1.0;
    clean = 0;
  } else if (++clean >= window) {
    const double twice = scale * 2;
    scale = twice < 1e30 ? twice : 1e30;
    clean = 0;
  }
  state->scale = scale;
  state->clean_steps = clean;
  state->last_skipped = skipped;
  hyper->loss_scale = float(scale);
}

//===----------------------------------------------------------------------===//
// Batches
//===----------------------------------------------------------------------===//

// Augment.cpp's reflectIndex: reflection without repeating the edge.
__device__ __forceinline__ int64_t reflectIndex(int64_t i, int64_t n) {
  if (n <= 1)
    return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0)
    i += period;
  return i < n ? i : period - i;
}

// One thread per output pixel. Output (y, x) of a training image reads crop
// column x' = flip ? W-1-x : x, i.e. padded (y + dy, x' + dx), i.e. source
// (y + dy - pad, x' + dx - pad) reflected into the image; the cutout square
// (rows cy - size/2 .. cy - size/2 + size - 1, clipped) is zero.
template <class T>
__global__ void buildBatchKernel(const uint8_t *images, const int64_t *index,
                                 const int32_t *draws, int64_t count,
                                 int64_t channels, int64_t height,
                                 int64_t width, const float *mean,
                                 const float *invStd, int pad, int cutout,
                                 bool nhwc, T *out) {
  const int64_t plane = height * width, image = channels * plane;
  FCC_GRID_LOOP(e, count * image) {
    // Output element e is (image i, channel c, pixel pix): in NCHW or NHWC
    // order (the source images are CHW either way).
    const int64_t i = divIndex(e, image), rest = e - i * image;
    int64_t c, pix;
    if (nhwc) {
      pix = divIndex(rest, channels);
      c = rest - pix * channels;
    } else {
      c = divIndex(rest, plane);
      pix = rest - c * plane;
    }
    const int64_t y = divIndex(pix, width), x = pix - y * width;
    const uint8_t *src = images + index[i] * image + c * plane;
    int64_t sy = y, sx = x;
    bool zero = false;
    if (draws) {
      const int32_t *d = draws + 5 * i; // dy, dx, flip, cy, cx
      const int64_t xc = d[2] ? width - 1 - x : x;
      sy = reflectIndex(y + d[0] - pad, height);
      sx = reflectIndex(xc + d[1] - pad, width);
      if (cutout > 0 && d[3] >= 0 && d[4] >= 0) {
        const int64_t y0 = d[3] - cutout / 2, x0 = d[4] - cutout / 2;
        // Clipping to the image changes nothing for a pixel inside it.
        zero = y >= y0 && y < y0 + cutout && x >= x0 && x < x0 + cutout;
      }
    }
    const float v =
        zero ? 0.0f : (float(src[sy * width + sx]) - mean[c]) * invStd[c];
    out[e] = fromFloat<T>(v);
  }
}

} // namespace

//===----------------------------------------------------------------------===//
// C API
//===----------------------------------------------------------------------===//

extern "C" void fcc_cuda_metric_loss(float *metrics, const float *logits,
                                     const int32_t *labels, int64_t n,
                                     int64_t classes,
                                     const float *label_smoothing) {
  const char *fn = "fcc_cuda_metric_loss";
  if (!ready(fn))
    return;
  if (n <= 0 || classes <= 0) {
    setAsyncError(format("%s: need n > 0 and classes > 0, got n=%lld "
                         "classes=%lld",
                         fn, (long long)n, (long long)classes));
    return;
  }
  metricLossKernel<<<1, kThreads, 0, stream()>>>(metrics, logits, labels, n,
                                                 classes, label_smoothing);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_metric_correct(float *metrics, const float *logits,
                                        const int32_t *labels, int64_t n,
                                        int64_t classes) {
  const char *fn = "fcc_cuda_metric_correct";
  if (n <= 0 || classes <= 0 || !ready(fn))
    return;
  metricCorrectKernel<<<1, kThreads, 0, stream()>>>(metrics, logits, labels, n,
                                                    classes);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_softmax_xent_grad(const float *logits,
                                           const int32_t *labels, int64_t n,
                                           int64_t classes,
                                           const float *label_smoothing,
                                           const float *loss_grad,
                                           float *dlogits) {
  const char *fn = "fcc_cuda_softmax_xent_grad";
  if (!ready(fn))
    return;
  if (n <= 0 || classes <= 0) {
    setAsyncError(format("%s: need n > 0 and classes > 0, got n=%lld "
                         "classes=%lld",
                         fn, (long long)n, (long long)classes));
    return;
  }
  xentGradKernel<<<blocksFor(n), kThreads, 0, stream()>>>(
      logits, labels, n, classes, label_smoothing, loss_grad, dlogits);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_sgd_update_multi(const fcc_cuda_sgd_item *items,
                                          int num_items, int64_t max_count,
                                          const void *hyper,
                                          const float *grad_scale,
                                          const float *apply) {
  const char *fn = "fcc_cuda_sgd_update_multi";
  dim3 grid;
  if (!multiTensorGrid(fn, num_items, max_count, grid))
    return;
  sgdMultiKernel<<<grid, kThreads, 0, stream()>>>(
      items, static_cast<const fcc_hyper *>(hyper), grad_scale, apply);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_ema_update_multi(float *const *emas,
                                          const float *const *values,
                                          const int64_t *counts, int num,
                                          int64_t max_count,
                                          const float *decay) {
  const char *fn = "fcc_cuda_ema_update_multi";
  dim3 grid;
  if (!multiTensorGrid(fn, num, max_count, grid))
    return;
  emaMultiKernel<<<grid, kThreads, 0, stream()>>>(emas, values, counts, decay);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_finite_begin(float *finite) {
  const char *fn = "fcc_cuda_finite_begin";
  if (!ready(fn))
    return;
  finiteBeginKernel<<<1, 1, 0, stream()>>>(finite);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_finite_and(float *finite, const float *grad,
                                    int64_t count) {
  const char *fn = "fcc_cuda_finite_and";
  if (count <= 0 || !ready(fn))
    return;
  finiteAndKernel<<<blocksFor(count), kThreads, 0, stream()>>>(finite, grad,
                                                               count);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_finite_and_multi(float *finite,
                                          const float *const *grads,
                                          const int64_t *counts, int num,
                                          int64_t max_count) {
  const char *fn = "fcc_cuda_finite_and_multi";
  dim3 grid;
  if (!multiTensorGrid(fn, num, max_count, grid))
    return;
  finiteAndMultiKernel<<<grid, kThreads, 0, stream()>>>(finite, grads, counts);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_metric_skipped(float *metrics, const float *finite) {
  const char *fn = "fcc_cuda_metric_skipped";
  if (!ready(fn))
    return;
  metricSkippedKernel<<<1, 1, 0, stream()>>>(metrics, finite);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_loss_scale_update(fcc_cuda_loss_scale_state *state,
                                           void *hyper, const float *metrics,
                                           int64_t window) {
  const char *fn = "fcc_cuda_loss_scale_update";
  if (!ready(fn))
    return;
  if (!state || !hyper || !metrics || window < 1) {
    setAsyncError(format("%s: need state, hyper and metrics and window >= 1, "
                         "got window=%lld",
                         fn, (long long)window));
    return;
  }
  lossScaleUpdateKernel<<<1, 1, 0, stream()>>>(
      state, static_cast<fcc_hyper *>(hyper), metrics, window);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_build_batch(const uint8_t *images,
                                     const int64_t *index,
                                     const int32_t *draws, int64_t count,
                                     int64_t channels, int64_t height,
                                     int64_t width, const float *mean,
                                     const float *inv_std, int pad,
                                     int cutout, void *out, int dtype,
                                     int layout) {
  const char *fn = "fcc_cuda_build_batch";
  const int64_t total = count * channels * height * width;
  if (total <= 0 || !ready(fn))
    return;
  if (pad < 0 || cutout < 0) {
    setAsyncError(format("%s: pad (%d) and cutout (%d) must not be negative",
                         fn, pad, cutout));
    return;
  }
  if (layout != FCC_LAYOUT_NCHW && layout != FCC_LAYOUT_NHWC) {
    setAsyncError(format("%s: unknown layout %d", fn, layout));
    return;
  }
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    buildBatchKernel<T><<<blocksFor(total), kThreads, 0, stream()>>>(
        images, index, draws, count, channels, height, width, mean, inv_std,
        pad, cutout, layout == FCC_LAYOUT_NHWC, static_cast<T *>(out));
  });
  checkLaunch(fn);
}
