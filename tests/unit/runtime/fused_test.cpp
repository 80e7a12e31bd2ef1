//===- fused_test.cpp - Tests of the fused BatchNorm kernels --------------===//
//
// fcc_cpu_bn_act_* (BatchNorm + activation + max pool + residual) against the
// unfused kernel chain they replace (batch_norm -> relu/celu -> max_pool2d ->
// add, and the chain of their backward kernels), which batch_norm_test.cpp,
// elementwise_test.cpp and pool_test.cpp check against double references:
// every activation, with and without (overlapping, partial, global) pooling
// and a residual, on ties (ReLU zeros in pooling windows) and on inputs with
// a large mean. Also: fcc_cpu_fold_bn (convolution with folded weights ==
// BatchNorm of the convolution), descriptor errors, and determinism across
// thread counts.
//
//===----------------------------------------------------------------------===//
#include "test_util.h"

#include <cstring>

using namespace fcc::test;

namespace {

struct Config {
  const char *name;
  int activation;
  float alpha;
  int64_t kh, kw, sh, sw; // 0: no pooling
  bool residual;
};

// Inputs of one test case, outputs of one implementation.
struct Case {
  fcc_bn_act_desc d{};
  std::vector<float> x, scale, shift, residual, mean, var, dy;
};

struct Forward {
  std::vector<float> y, mean, var;
};

struct Backward {
  std::vector<float> dx, dscale, dshift;
};

Case makeCase(const Config &cfg, int64_t n, int64_t c, int64_t h, int64_t w,
              unsigned seed, float offset = 0.0f) {
  std::mt19937 rng(seed);
  Case k;
  k.d.n = n, k.d.c = c, k.d.h = h, k.d.w = w;
  k.d.activation = cfg.activation;
  k.d.alpha = cfg.alpha;
  k.d.eps = 1e-5f;
  k.d.pool_kh = cfg.kh, k.d.pool_kw = cfg.kw;
  k.d.pool_sh = cfg.sh, k.d.pool_sw = cfg.sw;
  EXPECT_EQ(fcc_bn_act_desc_finalize(&k.d), FCC_OK) << fcc_cpu_last_error();
  k.x = randomFloats(rng, n * c * h * w, -2.0f, 2.0f);
  for (float &v : k.x)
    v += offset;
  k.scale = randomFloats(rng, c, 0.5f, 1.5f);
  k.scale[0] = -k.scale[0]; // a negative scale flips the order in windows
  k.shift = randomFloats(rng, c, -0.5f, 0.5f);
  k.mean = randomFloats(rng, c, -0.3f, 0.3f);
  k.var = randomFloats(rng, c, 0.5f, 2.0f);
  for (size_t i = 0; i < k.mean.size(); ++i)
    k.mean[i] += offset;
  int64_t outCount = n * c * k.d.oh * k.d.ow;
  if (cfg.residual)
    k.residual = randomFloats(rng, outCount);
  k.dy = randomFloats(rng, outCount);
  return k;
}

fcc_pool2d_desc poolDesc(const fcc_bn_act_desc &d) {
  fcc_pool2d_desc p{};
  p.n = d.n, p.c = d.c, p.h = d.h, p.w = d.w;
  p.kh = d.pool_kh, p.kw = d.pool_kw;
  p.stride_h = d.pool_sh, p.stride_w = d.pool_sw;
  p.dil_h = p.dil_w = 1;
  EXPECT_EQ(fcc_pool2d_desc_finalize(&p), FCC_OK) << fcc_cpu_last_error();
  return p;
}

// The unfused chain from the normalised values z: activation, pool, residual.
std::vector<float> unfusedTail(const Case &k, const std::vector<float> &z,
                               std::vector<float> *activated = nullptr) {
  const fcc_bn_act_desc &d = k.d;
  int64_t count = int64_t(z.size());
  std::vector<float> a(count);
  if (d.activation == FCC_ACT_RELU)
    fcc_cpu_relu_forward(z.data(), a.data(), count);
  else if (d.activation == FCC_ACT_CELU)
    fcc_cpu_celu_forward(z.data(), d.alpha, a.data(), count);
  else
    a = z;
  if (activated)
    *activated = a;
  std::vector<float> p = a;
  if (d.pool_kh) {
    fcc_pool2d_desc pd = poolDesc(d);
    p.assign(d.n * d.c * pd.oh * pd.ow, 0.0f);
    fcc_cpu_max_pool2d_forward(&pd, a.data(), p.data());
  }
  if (k.residual.empty())
    return p;
  std::vector<float> y(p.size());
  int64_t shape[4] = {d.n, d.c, d.oh, d.ow};
  EXPECT_EQ(fcc_cpu_binary(FCC_BINARY_ADD, p.data(), shape,
                           k.residual.data(), shape, shape, 4, y.data()),
            FCC_OK);
  return y;
}

Forward unfusedTrainForward(const Case &k, std::vector<float> *z = nullptr,
                            std::vector<float> *a = nullptr) {
  const fcc_bn_act_desc &d = k.d;
  Forward f;
  std::vector<float> zz(k.x.size());
  f.mean.resize(d.c);
  f.var.resize(d.c);
  fcc_cpu_batch_norm_train_forward(k.x.data(), k.scale.data(), k.shift.data(),
                                   d.eps, d.n, d.c, d.h * d.w, zz.data(),
                                   f.mean.data(), f.var.data());
  f.y = unfusedTail(k, zz, a);
  if (z)
    *z = zz;
  return f;
}

Forward fusedTrainForward(const Case &k) {
  Forward f;
  f.y.assign(k.d.n * k.d.c * k.d.oh * k.d.ow, NAN);
  f.mean.assign(k.d.c, NAN);
  f.var.assign(k.d.c, NAN);
  fcc_cpu_bn_act_train_forward(
      &k.d, k.x.data(), k.scale.data(), k.shift.data(),
      k.residual.empty() ? nullptr : k.residual.data(), f.y.data(),
      f.mean.data(), f.var.data());
  return f;
}

Backward unfusedBackward(const Case &k) {
  const fcc_bn_act_desc &d = k.d;
  std::vector<float> z, a;
  Forward f = unfusedTrainForward(k, &z, &a);
  int64_t count = int64_t(k.x.size());
  std::vector<float> da = k.dy;
  if (d.pool_kh) {
    fcc_pool2d_desc pd = poolDesc(d);
    da.assign(count, NAN);
    fcc_cpu_max_pool2d_backward(&pd, a.data(), k.dy.data(), da.data());
  }
  std::vector<float> dz(count);
  if (d.activation == FCC_ACT_RELU)
    fcc_cpu_relu_backward(z.data(), da.data(), dz.data(), count);
  else if (d.activation == FCC_ACT_CELU)
    fcc_cpu_celu_backward(z.data(), da.data(), d.alpha, dz.data(), count);
  else
    dz = da;
  Backward b;
  b.dx.resize(count);
  b.dscale.resize(d.c);
  b.dshift.resize(d.c);
  fcc_cpu_batch_norm_backward(k.x.data(), dz.data(), k.scale.data(),
                              f.mean.data(), f.var.data(), d.eps, d.n, d.c,
                              d.h * d.w, b.dx.data(), b.dscale.data(),
                              b.dshift.data());
  return b;
}

Backward fusedBackward(const Case &k) {
  Forward f = fusedTrainForward(k);
  Backward b;
  b.dx.assign(k.x.size(), NAN);
  b.dscale.assign(k.d.c, NAN);
  b.dshift.assign(k.d.c, NAN);
  fcc_cpu_bn_act_backward(&k.d, k.x.data(), k.dy.data(), k.scale.data(),
                          k.shift.data(), f.mean.data(), f.var.data(),
                          b.dx.data(), b.dscale.data(), b.dshift.data());
  return b;
}

// |got - ref| <= rtol * max|ref| + atol elementwise, i.e. relative to the
// tensor's scale (near-zero elements of a normalised tensor carry the
// absolute error of their large neighbours).
::testing::AssertionResult closeToScale(const std::vector<float> &got,
                                        const std::vector<float> &ref,
                                        double rtol = 1e-5) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != " << ref.size();
  double scale = 0.0;
  for (float r : ref)
    scale = std::max(scale, std::fabs(double(r)));
  Vec mag(ref.size(), scale);
  return allClose(got, toDouble(ref), rtol, 1e-30, &mag);
}

const Config kConfigs[] = {
    {"relu", FCC_ACT_RELU, 1.0f, 0, 0, 0, 0, false},
    {"celu", FCC_ACT_CELU, 0.3f, 0, 0, 0, 0, false},
    {"none_residual", FCC_ACT_NONE, 1.0f, 0, 0, 0, 0, true},
    {"relu_residual", FCC_ACT_RELU, 1.0f, 0, 0, 0, 0, true},
    {"celu_residual", FCC_ACT_CELU, 0.3f, 0, 0, 0, 0, true},
    {"relu_pool2", FCC_ACT_RELU, 1.0f, 2, 2, 2, 2, false},
    {"celu_pool2", FCC_ACT_CELU, 0.3f, 2, 2, 2, 2, false},
    {"relu_pool3s2_overlap", FCC_ACT_RELU, 1.0f, 3, 3, 2, 2, false},
    {"relu_pool2x3_residual", FCC_ACT_RELU, 1.0f, 2, 3, 2, 1, true},
    {"none_pool_global", FCC_ACT_NONE, 1.0f, 7, 6, 7, 6, false},
};

class BnAct : public ::testing::TestWithParam<Config> {};

TEST_P(BnAct, TrainForwardMatchesUnfused) {
  // 7x6 planes: a 2x2 pool leaves the last row out.
  Case k = makeCase(GetParam(), 3, 5, 7, 6, 1);
  Forward ref = unfusedTrainForward(k), got = fusedTrainForward(k);
  EXPECT_TRUE(closeToScale(got.y, ref.y));
  EXPECT_TRUE(closeToScale(got.mean, ref.mean));
  EXPECT_TRUE(allClose(got.var, toDouble(ref.var), 1e-6, 0.0));
}

TEST_P(BnAct, InferenceMatchesUnfused) {
  Case k = makeCase(GetParam(), 2, 4, 7, 6, 2);
  std::vector<float> z(k.x.size());
  fcc_cpu_batch_norm_inference(k.x.data(), k.scale.data(), k.shift.data(),
                               k.mean.data(), k.var.data(), k.d.eps, k.d.n,
                               k.d.c, k.d.h * k.d.w, z.data());
  std::vector<float> ref = unfusedTail(k, z);
  std::vector<float> got(ref.size(), NAN);
  fcc_cpu_bn_act_inference(&k.d, k.x.data(), k.scale.data(), k.shift.data(),
                           k.mean.data(), k.var.data(),
                           k.residual.empty() ? nullptr : k.residual.data(),
                           got.data());
  // The unfused kernels normalise in double, the fused ones in float with
  // float coefficients (fused.cpp): a few float roundings apart.
  EXPECT_TRUE(closeToScale(got, ref, 1e-6));
}

TEST_P(BnAct, BackwardMatchesUnfused) {
  Case k = makeCase(GetParam(), 3, 5, 7, 6, 3);
  Backward ref = unfusedBackward(k), got = fusedBackward(k);
  EXPECT_TRUE(closeToScale(got.dx, ref.dx));
  EXPECT_TRUE(closeToScale(got.dscale, ref.dscale));
  EXPECT_TRUE(closeToScale(got.dshift, ref.dshift));
}

TEST_P(BnAct, LargeMeanMatchesUnfused) {
  // Statistics of values far from zero (x ~ 100 +- 2): the one-pass sums
  // must not cancel.
  Case k = makeCase(GetParam(), 4, 3, 7, 6, 4, /*offset=*/100.0f);
  Forward ref = unfusedTrainForward(k), got = fusedTrainForward(k);
  EXPECT_TRUE(closeToScale(got.y, ref.y));
  EXPECT_TRUE(allClose(got.var, toDouble(ref.var), 1e-5, 0.0));
  Backward bref = unfusedBackward(k), bgot = fusedBackward(k);
  EXPECT_TRUE(closeToScale(bgot.dx, bref.dx, 1e-4));
  EXPECT_TRUE(closeToScale(bgot.dscale, bref.dscale, 1e-4));
}

TEST_P(BnAct, DeterministicAcrossThreadCounts) {
  Case k = makeCase(GetParam(), 3, 7, 7, 6, 5);
  fcc_cpu_set_num_threads(1);
  Forward f1 = fusedTrainForward(k);
  Backward b1 = fusedBackward(k);
  fcc_cpu_set_num_threads(3);
  Forward f3 = fusedTrainForward(k);
  Backward b3 = fusedBackward(k);
  fcc_cpu_set_num_threads(0);
  EXPECT_EQ(f1.y, f3.y);
  EXPECT_EQ(f1.mean, f3.mean);
  EXPECT_EQ(f1.var, f3.var);
  EXPECT_EQ(b1.dx, b3.dx);
  EXPECT_EQ(b1.dscale, b3.dscale);
  EXPECT_EQ(b1.dshift, b3.dshift);
}

INSTANTIATE_TEST_SUITE_P(Configs, BnAct, ::testing::ValuesIn(kConfigs),
                         [](const auto &info) { return info.param.name; });

// Inputs drawn from five values: pooling windows hold equal maxima (equal
// inputs normalise to equal values), whose gradient must go to the first tap
// in row-major order, as the unfused kernels route it.
TEST(BnActTies, EqualMaximaRouteToFirstTap) {
  const float levels[] = {-1.0f, -0.5f, 0.25f, 1.0f, 2.0f};
  for (Config cfg : {Config{"relu", FCC_ACT_RELU, 1.0f, 2, 2, 2, 2, false},
                     Config{"celu", FCC_ACT_CELU, 0.3f, 3, 3, 2, 2, false},
                     Config{"none", FCC_ACT_NONE, 1.0f, 2, 2, 1, 1, true}}) {
    SCOPED_TRACE(cfg.name);
    Case k = makeCase(cfg, 2, 3, 8, 8, 6);
    std::mt19937 rng(8);
    std::uniform_int_distribution<int> pick(0, 4);
    for (float &v : k.x)
      v = levels[pick(rng)];
    Backward ref = unfusedBackward(k), got = fusedBackward(k);
    EXPECT_TRUE(closeToScale(got.dx, ref.dx));
    EXPECT_TRUE(closeToScale(got.dscale, ref.dscale));
  }
}

// The output may overwrite the residual (fcc-plan-memory places it there
// when the residual dies at the fused op).
TEST(BnActResidual, OutputMayAliasResidual) {
  for (Config cfg : {Config{"relu", FCC_ACT_RELU, 1.0f, 0, 0, 0, 0, true},
                     Config{"pool", FCC_ACT_RELU, 1.0f, 2, 2, 2, 2, true}}) {
    SCOPED_TRACE(cfg.name);
    Case k = makeCase(cfg, 2, 3, 6, 6, 9);
    Forward ref = fusedTrainForward(k);
    std::vector<float> y = k.residual, mean(k.d.c), var(k.d.c);
    fcc_cpu_bn_act_train_forward(&k.d, k.x.data(), k.scale.data(),
                                 k.shift.data(), y.data(), y.data(),
                                 mean.data(), var.data());
    EXPECT_EQ(y, ref.y);
    y = k.residual;
    std::vector<float> inf(ref.y.size());
    fcc_cpu_bn_act_inference(&k.d, k.x.data(), k.scale.data(), k.shift.data(),
                             k.mean.data(), k.var.data(), k.residual.data(),
                             inf.data());
    fcc_cpu_bn_act_inference(&k.d, k.x.data(), k.scale.data(), k.shift.data(),
                             k.mean.data(), k.var.data(), y.data(), y.data());
    EXPECT_EQ(y, inf);
  }
}

// The statistics outputs are optional in the backward.
TEST(BnActBackward, NullScaleAndShiftGradients) {
  Config cfg = {"relu", FCC_ACT_RELU, 1.0f, 2, 2, 2, 2, false};
  Case k = makeCase(cfg, 2, 3, 4, 4, 7);
  Backward full = fusedBackward(k);
  Forward f = fusedTrainForward(k);
  std::vector<float> dx(k.x.size());
  fcc_cpu_bn_act_backward(&k.d, k.x.data(), k.dy.data(), k.scale.data(),
                          k.shift.data(), f.mean.data(), f.var.data(),
                          dx.data(), nullptr, nullptr);
  EXPECT_EQ(dx, full.dx);
}

// Hand-computed: one channel, values {1, 2, 3, 4} (mean 2.5, variance 1.25),
// scale 2, shift 1, ReLU, 2x2 pool: the maximum is the last element,
// 2 * 1.5 / sqrt(1.25 + eps) + 1.
TEST(BnActValues, HandComputed) {
  fcc_bn_act_desc d{};
  d.n = 1, d.c = 1, d.h = 2, d.w = 2;
  d.activation = FCC_ACT_RELU;
  d.eps = 1e-5f;
  d.pool_kh = d.pool_kw = d.pool_sh = d.pool_sw = 2;
  ASSERT_EQ(fcc_bn_act_desc_finalize(&d), FCC_OK);
  EXPECT_EQ(d.oh, 1);
  EXPECT_EQ(d.ow, 1);
  float x[4] = {1, 2, 3, 4}, scale = 2, shift = 1, y = 0, mean = 0, var = 0;
  fcc_cpu_bn_act_train_forward(&d, x, &scale, &shift, nullptr, &y, &mean, &var);
  EXPECT_FLOAT_EQ(mean, 2.5f);
  EXPECT_FLOAT_EQ(var, 1.25f);
  EXPECT_NEAR(y, 2.0 * 1.5 / std::sqrt(1.25 + 1e-5) + 1.0, 1e-6);
  // The gradient reaches only the maximum's pre-activation.
  float dy = 1, dx[4], dscale, dshift;
  fcc_cpu_bn_act_backward(&d, x, &dy, &scale, &shift, &mean, &var, dx,
                          &dscale, &dshift);
  EXPECT_FLOAT_EQ(dshift, 1.0f);
  EXPECT_NEAR(dscale, 1.5 / std::sqrt(1.25 + 1e-5), 1e-6);
}

TEST(BnActDesc, Errors) {
  auto base = [] {
    fcc_bn_act_desc d{};
    d.n = 1, d.c = 2, d.h = 4, d.w = 4;
    d.activation = FCC_ACT_RELU;
    d.alpha = 1.0f;
    d.eps = 1e-5f;
    return d;
  };
  fcc_bn_act_desc d = base();
  EXPECT_EQ(fcc_bn_act_desc_finalize(&d), FCC_OK);
  EXPECT_EQ(d.oh, 4);
  d = base();
  d.activation = 7;
  EXPECT_EQ(fcc_bn_act_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "unknown activation"));
  d = base();
  d.activation = FCC_ACT_CELU;
  d.alpha = 0.0f;
  EXPECT_EQ(fcc_bn_act_desc_finalize(&d), FCC_ERR_INVALID);
  d = base();
  d.pool_kh = d.pool_kw = 5;
  d.pool_sh = d.pool_sw = 1;
  EXPECT_EQ(fcc_bn_act_desc_finalize(&d), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "does not fit"));
  d = base();
  d.pool_kh = d.pool_kw = 2; // strides missing
  EXPECT_EQ(fcc_bn_act_desc_finalize(&d), FCC_ERR_INVALID);
  d = base();
  d.eps = 0.0f;
  EXPECT_EQ(fcc_bn_act_desc_finalize(&d), FCC_ERR_INVALID);
}

//===----------------------------------------------------------------------===//
// fold_bn
//===----------------------------------------------------------------------===//

void foldCheck(bool withBias, int64_t groups) {
  std::mt19937 rng(11);
  fcc_conv2d_desc cd{};
  cd.n = 2, cd.c = 4, cd.h = 6, cd.w = 5, cd.k = 6, cd.r = 3, cd.s = 3;
  cd.stride_h = cd.stride_w = 1;
  cd.pad_t = cd.pad_l = cd.pad_b = cd.pad_r = 1;
  cd.dil_h = cd.dil_w = 1;
  cd.groups = groups;
  ASSERT_EQ(fcc_conv2d_desc_finalize(&cd), FCC_OK);
  fcc_conv2d_plan *plan = fcc_cpu_conv2d_create(&cd);
  ASSERT_NE(plan, nullptr) << fcc_cpu_last_error();
  int64_t perK = cd.c / groups * cd.r * cd.s;
  auto x = randomFloats(rng, cd.n * cd.c * cd.h * cd.w);
  auto w = randomFloats(rng, cd.k * perK);
  auto b = randomFloats(rng, cd.k);
  auto scale = randomFloats(rng, cd.k, 0.5f, 1.5f);
  auto shift = randomFloats(rng, cd.k, -0.5f, 0.5f);
  auto mean = randomFloats(rng, cd.k, -0.5f, 0.5f);
  auto var = randomFloats(rng, cd.k, 0.5f, 2.0f);
  int64_t outCount = cd.n * cd.k * cd.oh * cd.ow;
  std::vector<float> conv(outCount), ref(outCount), got(outCount);
  const float *bias = withBias ? b.data() : nullptr;
  ASSERT_EQ(fcc_cpu_conv2d_forward(plan, x.data(), w.data(), bias, conv.data()),
            FCC_OK);
  fcc_cpu_batch_norm_inference(conv.data(), scale.data(), shift.data(),
                               mean.data(), var.data(), 1e-5f, cd.n, cd.k,
                               cd.oh * cd.ow, ref.data());
  // In place on copies of w and b (the documented aliasing).
  std::vector<float> w2 = w, b2 = b;
  fcc_cpu_fold_bn(w2.data(), withBias ? b2.data() : nullptr, scale.data(),
                  shift.data(), mean.data(), var.data(), 1e-5f, cd.k, perK,
                  w2.data(), b2.data());
  ASSERT_EQ(fcc_cpu_conv2d_forward(plan, x.data(), w2.data(), b2.data(),
                                   got.data()),
            FCC_OK);
  fcc_cpu_conv2d_destroy(plan);
  EXPECT_TRUE(closeToScale(got, ref, 2e-6));
  // And the folded values themselves, against a double formula.
  for (int64_t k = 0; k < cd.k; ++k) {
    double m = double(scale[k]) / std::sqrt(double(var[k]) + 1e-5);
    EXPECT_NEAR(w2[k * perK], double(w[k * perK]) * m, 1e-6);
    EXPECT_NEAR(b2[k],
                ((withBias ? double(b[k]) : 0.0) - mean[k]) * m + shift[k],
                1e-6);
  }
}

TEST(FoldBn, WithBias) { foldCheck(true, 1); }
TEST(FoldBn, WithoutBias) { foldCheck(false, 1); }
TEST(FoldBn, Grouped) { foldCheck(true, 2); }

} // namespace
