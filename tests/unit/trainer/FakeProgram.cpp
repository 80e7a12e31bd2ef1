//===- FakeProgram.cpp - A hand-written fcc_program for the trainer tests -===//
//
// Implements FakeProgram.h: what `fcc compile` would generate for a single
// linear layer followed by softmax cross-entropy, written by hand with the
// CPU kernels of the runtime (plain loops for the matrix products).
//
//===----------------------------------------------------------------------===//
#include "FakeProgram.h"

#include "fcc/runtime/cpu_kernels.h"
#include "fcc/runtime/init.h"

#include <cmath>
#include <limits>

namespace fcc::test {

namespace {

struct Fake {
  FakeConfig config;
  std::string recipeName, lrKnots;
  fcc_param_info params[2];
  fcc_program program;
  FakeLog log;
  int64_t dim = 0; // C*H*W
  std::vector<float> logits, logits2, flipped, lossRow, dlogits, gradW, gradB;
};

Fake &fake() {
  static Fake f;
  return f;
}

// logits[b, k] = sum_i w[k, i] x[b, i] + bias[k] (double accumulators).
void forward(const float *w, const float *bias, const float *x, int64_t batch,
             int64_t classes, int64_t dim, float *logits) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t k = 0; k < classes; ++k) {
      const float *xr = x + b * dim, *wr = w + k * dim;
      double s = bias[k];
      for (int64_t i = 0; i < dim; ++i)
        s += double(wr[i]) * double(xr[i]);
      logits[b * classes + k] = float(s);
    }
}

std::vector<float> concatParams(const float *const *params) {
  Fake &f = fake();
  std::vector<float> out(params[0], params[0] + f.params[0].numel);
  out.insert(out.end(), params[1], params[1] + f.params[1].numel);
  return out;
}

int fakeSetup() {
  Fake &f = fake();
  ++f.log.setupCalls;
  return f.config.failSetup ? 1 : 0;
}

void fakeTeardown() { ++fake().log.teardownCalls; }

const char *fakeLastError() {
  return fake().config.failSetup ? "fake setup failure" : "";
}

void fakeTrainStep(float *const *params, float *const *momentum,
                   const float *images, const int32_t *labels,
                   const fcc_hyper *hyper, float *metrics,
                   float *const * /*comm_state*/) {
  Fake &f = fake();
  const int64_t n = f.config.batch, k = f.config.classes, d = f.dim;
  f.log.hypers.push_back(*hyper);
  double msum = 0;
  for (int p = 0; p < 2; ++p)
    if (momentum[p])
      for (int64_t i = 0; i < f.params[p].numel; ++i)
        msum += std::fabs(momentum[p][i]);
  f.log.momentumAbsSumAtEntry.push_back(msum);
  if (f.config.recordBatches) {
    f.log.trainImages.emplace_back(images, images + n * d);
    f.log.trainLabels.emplace_back(labels, labels + n);
  }
  if (f.config.recordParams)
    f.log.paramsAtEntry.push_back(concatParams(params));

  forward(params[0], params[1], images, n, k, d, f.logits.data());
  int64_t correct = 0;
  double mean = fcc_cpu_softmax_xent(f.logits.data(), labels, n, k,
                                     hyper->label_smoothing, f.lossRow.data(),
                                     f.dlogits.data(), &correct);
  double sum = 0;
  for (int64_t b = 0; b < n; ++b)
    sum += f.lossRow[size_t(b)];
  if (std::isnan(mean) || f.config.nanLoss)
    sum = std::numeric_limits<double>::quiet_NaN();
  metrics[FCC_METRIC_LOSS_SUM] += float(sum);
  metrics[FCC_METRIC_CORRECT] += float(correct);
  const bool overflow =
      f.config.lossScaling && !(hyper->loss_scale < f.config.overflowAt);
  f.log.skipped.push_back(overflow);
  if (overflow) {
    metrics[FCC_METRIC_SKIPPED] += 1.0f;
    if (f.config.recordParams)
      f.log.paramsAfterLastStep = concatParams(params);
    return;
  }

  // Gradients of the mean loss (dlogits is already divided by n).
  for (int64_t c = 0; c < k; ++c) {
    double gb = 0;
    for (int64_t b = 0; b < n; ++b)
      gb += f.dlogits[size_t(b * k + c)];
    f.gradB[size_t(c)] = float(gb);
    for (int64_t i = 0; i < d; ++i) {
      double g = 0;
      for (int64_t b = 0; b < n; ++b)
        g += double(f.dlogits[size_t(b * k + c)]) * double(images[b * d + i]);
      f.gradW[size_t(c * d + i)] = float(g);
    }
  }
  const float *grads[2] = {f.gradW.data(), f.gradB.data()};
  for (int p = 0; p < 2; ++p) {
    const fcc_param_info &info = f.params[p];
    if (!info.trainable || !momentum[p])
      continue;
    fcc_cpu_sgd_update(params[p], grads[p], momentum[p], info.numel,
                       hyper->lr * info.lr_mult, hyper->momentum,
                       hyper->weight_decay * info.wd_mult,
                       hyper->nesterov != 0.0f ? 1 : 0);
  }
  if (f.config.recordParams)
    f.log.paramsAfterLastStep = concatParams(params);
}

void fakeEvalStep(float *const *params, const float *images,
                  const int32_t *labels, float labelSmoothing, int tta,
                  float *metrics) {
  Fake &f = fake();
  const FakeConfig &c = f.config;
  const int64_t n = c.batch, k = c.classes, d = f.dim;
  ++f.log.evalCalls;
  f.log.evalTta.push_back(tta);
  f.log.evalLabelSmoothing.push_back(labelSmoothing);
  int64_t padding = 0, labelSum = 0;
  for (int64_t b = 0; b < n; ++b) {
    if (labels[b] == FCC_IGNORE_LABEL)
      ++padding;
    else
      labelSum += labels[b];
  }
  f.log.evalPaddingRows.push_back(padding);
  f.log.evalValidLabelsSum.push_back(labelSum);
  f.log.lastEvalParams = concatParams(params);

  forward(params[0], params[1], images, n, k, d, f.logits.data());
  if (tta) {
    fcc_cpu_flip_w(images, n, c.channels, c.height, c.width,
                   f.flipped.data());
    forward(params[0], params[1], f.flipped.data(), n, k, d,
            f.logits2.data());
    for (int64_t i = 0; i < n * k; ++i)
      f.logits[size_t(i)] = 0.5f * (f.logits[size_t(i)] + f.logits2[size_t(i)]);
  }
  int64_t correct = 0;
  double mean =
      fcc_cpu_softmax_xent(f.logits.data(), labels, n, k, labelSmoothing,
                           f.lossRow.data(), nullptr, &correct);
  double sum = 0;
  for (int64_t b = 0; b < n; ++b)
    sum += f.lossRow[size_t(b)];
  if (std::isnan(mean))
    sum = std::numeric_limits<double>::quiet_NaN();
  metrics[FCC_METRIC_LOSS_SUM] += float(sum);
  metrics[FCC_METRIC_CORRECT] += float(correct);
}

void fakeEmaUpdate(float *const *ema, float *const *params, float decay) {
  Fake &f = fake();
  f.log.emaDecays.push_back(decay);
  f.log.emaAfterStep.push_back(int64_t(f.log.hypers.size()));
  for (int p = 0; p < 2; ++p)
    fcc_cpu_ema_update(ema[p], params[p], decay, f.params[p].numel);
}

} // namespace

fcc_recipe fakeRecipe() {
  fcc_recipe r{};
  r.name = "fake";
  r.epochs = 2;
  r.lr_knots = "0:0.01,2:0";
  r.momentum = 0.9f;
  r.nesterov = 1;
  r.weight_decay = 5e-4f;
  r.label_smoothing = 0.0f;
  r.ema_decay = 0.0f;
  r.ema_every = 1;
  r.tta = 0;
  r.cutout = 0;
  r.flip = 0;
  r.crop_pad = 0;
  return r;
}

const fcc_program *fakeProgram(const FakeConfig &config) {
  Fake &f = fake();
  f.config = config;
  f.log = FakeLog();
  // Own the recipe's strings: the caller's may be temporaries.
  f.recipeName = config.defaults.name ? config.defaults.name : "";
  f.lrKnots = config.defaults.lr_knots ? config.defaults.lr_knots : "";
  f.dim = config.channels * config.height * config.width;
  const int64_t n = config.batch, k = config.classes, d = f.dim;
  f.logits.assign(size_t(n * k), 0.0f);
  f.logits2.assign(size_t(n * k), 0.0f);
  f.flipped.assign(size_t(n * d), 0.0f);
  f.lossRow.assign(size_t(n), 0.0f);
  f.dlogits.assign(size_t(n * k), 0.0f);
  f.gradW.assign(size_t(k * d), 0.0f);
  f.gradB.assign(size_t(k), 0.0f);

  fcc_param_info &w = f.params[0];
  w = fcc_param_info{};
  w.name = "fc.weight";
  w.role = FCC_ROLE_WEIGHT;
  w.trainable = 1;
  w.rank = 2;
  w.shape[0] = k;
  w.shape[1] = d;
  w.numel = k * d;
  w.fan_in = d;
  w.init = nullptr;
  w.lr_mult = config.weightLrMult;
  w.wd_mult = config.weightWdMult;

  fcc_param_info &b = f.params[1];
  b = fcc_param_info{};
  b.name = "fc.bias";
  b.role = FCC_ROLE_BIAS;
  b.trainable = 1;
  b.rank = 1;
  b.shape[0] = k;
  b.numel = k;
  b.fan_in = d;
  b.init = nullptr;
  b.lr_mult = config.biasLrMult;
  b.wd_mult = config.biasWdMult;

  fcc_program &p = f.program;
  p = fcc_program{};
  p.abi_version = config.abiVersion;
  p.model = f.config.model.c_str();
  p.target = f.config.target.c_str();
  p.plan_hash = 0x1234;
  p.batch = n;
  p.channels = config.channels;
  p.height = config.height;
  p.width = config.width;
  p.classes = k;
  p.num_params = 2;
  p.params = f.params;
  p.arena_bytes = 0;
  p.defaults = config.defaults;
  p.defaults.name = config.defaults.name ? f.recipeName.c_str() : nullptr;
  p.defaults.lr_knots = config.defaults.lr_knots ? f.lrKnots.c_str() : nullptr;
  p.setup = fakeSetup;
  p.teardown = fakeTeardown;
  p.last_error = fakeLastError;
  p.train_step = fakeTrainStep;
  p.eval_step = fakeEvalStep;
  p.ema_update = fakeEmaUpdate;
  if (config.lossScaling) {
    p.precision = "fp16";
    p.loss_scaling = 1;
  }
  return &p;
}

FakeLog &fakeLog() { return fake().log; }

} // namespace fcc::test
