//===- fused.cpp - Fused BatchNorm + activation (+ pool) (+ residual) -----===//
//
// The kernels of fcc.bn_act, fcc.bn_act_grad and fcc.fold_bn
// (passes/FuseBatchNorm.cpp, passes/FoldBatchNorm.cpp). They compute what the
// unfused chain batch_norm -> relu|celu -> max_pool2d -> add computes, with
// the same per-element arithmetic, but touch memory far less:
//
//  - training forward: per channel (one OpenMP iteration each), one read of
//    x for the batch statistics, then one sweep over the same planes (still
//    in cache for small batches) that normalises, activates, max-pools and
//    adds the residual, writing only the final output. The unfused chain
//    reads x three times and writes and re-reads the normalised, activated
//    and pooled tensors;
//  - backward: per channel, a first sweep recomputes the normalised and
//    activated values from x and the batch statistics, routes dy to the first
//    maximum of each pooling window (in plane-sized scratch buffers), applies
//    the activation's derivative, accumulates the two BatchNorm reductions
//    and writes the pre-activation gradient into dx; a second sweep turns it
//    into the input gradient in place. Nothing but x from the forward is kept
//    alive (no normalised, activated or arg-max tensors).
//
// Numerics follow the unfused kernels (batch_norm.cpp, elementwise.cpp,
// pool.cpp): per-channel coefficients in double, activations in float,
// first-maximum routing with NaN propagation, reductions in double, one
// channel per OpenMP iteration (so results do not depend on the thread
// count). Deliberate differences: the per-element normalisation and input
// gradient are computed in float, with the coefficients rounded to float
// (z = (x - mean) * mul + shift, xhat = (x - mean) * invStd, dx = k *
// ((dz - mean(dz)) - xhat * mean(dz * xhat)), as cuDNN and PyTorch; twice
// the SIMD width on the CPU, no fp64 conversions on the GPU, whose fused
// kernels (runtime/cuda/batchnorm.cu) use the same formulas, so the two
// targets agree bit for bit); the batch statistics are one pass of sums
// shifted by the channel's first element (exact in double for any realistic
// data, instead of two passes); reductions run in four interleaved double
// accumulators (vectorisable; a different but fixed order); and the forward
// normalises with the statistics rounded to float, which are exactly what
// the backward gets, so that the backward's recomputed activations and
// arg-maxes are bit-identical to the forward's.
//
// The loops are instantiated per activation, pooling and residual (no
// per-element dispatch), which keeps them branch-free and vectorisable.
//
//===----------------------------------------------------------------------===//
#include "internal.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

using fcc::cpu::format;
using fcc::cpu::setError;

namespace {

template <int Act> inline float activate(float z, float alpha) {
  if constexpr (Act == FCC_ACT_RELU)
    return z > 0.0f ? z : 0.0f;
  else if constexpr (Act == FCC_ACT_CELU)
    return z > 0.0f ? z : alpha * std::expm1(z / alpha);
  else
    return z;
}

// d act(z) / dz * g, as fcc_cpu_relu_backward / fcc_cpu_celu_backward.
template <int Act> inline float activationGrad(float z, float g, float alpha) {
  if constexpr (Act == FCC_ACT_RELU)
    return z > 0.0f ? g : 0.0f;
  else if constexpr (Act == FCC_ACT_CELU)
    return z > 0.0f ? g : g * std::exp(z / alpha);
  else
    return g;
}

// z = (x - mean) * mul + shift in float (see the file comment); mul is
// computed in double and rounded.
struct Affine {
  float mean, mul, shift;
  float operator()(float x) const { return (x - mean) * mul + shift; }
};

// The descriptor's fields as locals (the loops below store floats, which
// could alias the descriptor's float fields as far as the compiler knows).
struct Geometry {
  int64_t h, w, hw, oh, ow, kh, kw, sh, sw;
  float alpha;
  explicit Geometry(const fcc_bn_act_desc *d)
      : h(d->h), w(d->w), hw(d->h * d->w), oh(d->oh), ow(d->ow),
        kh(d->pool_kh), kw(d->pool_kw), sh(d->pool_sh), sw(d->pool_sw),
        alpha(d->alpha) {}
};

// z[j] = normalised x[j]; a[j] = act(z[j]) (either may be null).
template <int Act>
void normalizePlane(const Geometry &g, const Affine &bn,
                    const float *__restrict x, float *__restrict z,
                    float *__restrict a) {
  const Affine f = bn; // a local copy: the stores cannot alias it
  const float alpha = g.alpha;
  for (int64_t j = 0; j < g.hw; ++j) {
    const float v = f(x[j]);
    if (z)
      z[j] = v;
    if (a)
      a[j] = activate<Act>(v, alpha);
  }
}

// Maxima of the windows of output row oh of an activated plane, as pool.cpp
// (taps in row-major order, NaN propagates), into max[0, ow).
void rowMax(const Geometry &g, const float *__restrict plane, int64_t oh,
            float *__restrict max, bool *__restrict nan) {
  std::fill(max, max + g.ow, -std::numeric_limits<float>::infinity());
  std::fill(nan, nan + g.ow, false);
  for (int64_t i = 0; i < g.kh; ++i) {
    const float *row = plane + (oh * g.sh + i) * g.w;
    for (int64_t j = 0; j < g.kw; ++j)
      for (int64_t o = 0; o < g.ow; ++o) {
        const float v = row[o * g.sw + j];
        max[o] = v > max[o] ? v : max[o];
        nan[o] |= std::isnan(v);
      }
  }
  for (int64_t o = 0; o < g.ow; ++o)
    if (nan[o])
      max[o] = std::numeric_limits<float>::quiet_NaN();
}

// Plane index of the first tap of each window of row oh holding its maximum:
// the taps are scanned backwards with branch-free selects, so the last
// match seen is the first in row-major window order.
void rowFirstMaxIndex(const Geometry &g, const float *__restrict plane,
                      int64_t oh, const float *__restrict max,
                      int64_t *__restrict index) {
  for (int64_t i = g.kh - 1; i >= 0; --i) {
    const int64_t row = (oh * g.sh + i) * g.w;
    for (int64_t j = g.kw - 1; j >= 0; --j)
      for (int64_t o = 0; o < g.ow; ++o) {
        const int64_t idx = row + o * g.sw + j;
        const float v = plane[idx], m = max[o];
        const bool match = (v == m) | (std::isnan(v) & std::isnan(m));
        index[o] += (idx - index[o]) & -int64_t(match);
      }
  }
}

// Per-thread buffers of one plane.
struct Scratch {
  std::vector<float> z, a, routed, max;
  std::vector<int64_t> index;
  std::vector<char> nan;
  Scratch(const Geometry &g, bool pool)
      : z(pool ? g.hw : 0), a(g.hw), routed(pool ? g.hw : 0),
        max(g.ow), index(g.ow), nan(g.ow) {}
  bool *nanFlags() { return reinterpret_cast<bool *>(nan.data()); }
};

// CELU is increasing (and maps NaN to NaN), so max(celu(z)) = celu(max(z)):
// pooling first computes the exponentials on the pooled values only, and the
// backward finds the arg-maxes on z without recomputing them. (Where CELU
// saturates, distinct z can round to equal activations; the unfused kernels
// then route to the first of them, the fused ones to the largest z. Both
// get a derivative below 1e-30.) ReLU is not injective and maps NaN to 0, so
// it pools after the activation exactly as the unfused kernels do.
template <int Act> constexpr bool poolsBeforeActivation() {
  return Act != FCC_ACT_RELU;
}

// One output plane of the forward: normalise, activate, pool, add.
template <int Act, bool Pool, bool Res>
void forwardPlane(const Geometry &g, const Affine &bn, const float *x,
                  const float *residual, float *y, Scratch &s) {
  if constexpr (!Pool && Act == FCC_ACT_CELU) {
    // The exponential is a library call: keep it out of the vectorised
    // normalisation.
    normalizePlane<FCC_ACT_NONE>(g, bn, x, nullptr, s.a.data());
    for (int64_t j = 0; j < g.hw; ++j) {
      const float v = activate<Act>(s.a[j], g.alpha);
      if constexpr (Res)
        y[j] = v + residual[j]; // y may alias residual: same element
      else
        y[j] = v;
    }
  } else if constexpr (!Pool) {
    const Affine f = bn;
    const float alpha = g.alpha;
    for (int64_t j = 0; j < g.hw; ++j) {
      const float v = activate<Act>(f(x[j]), alpha);
      if constexpr (Res)
        y[j] = v + residual[j]; // y may alias residual: same element
      else
        y[j] = v;
    }
  } else {
    // ReLU before the pool (as the unfused kernels: ties among zeros go to
    // the first tap); other activations after it (see poolsBeforeActivation).
    constexpr int Before = poolsBeforeActivation<Act>() ? FCC_ACT_NONE : Act;
    normalizePlane<Before>(g, bn, x, nullptr, s.a.data());
    for (int64_t oh = 0; oh < g.oh; ++oh) {
      float *out = y + oh * g.ow;
      rowMax(g, s.a.data(), oh, s.max.data(), s.nanFlags());
      for (int64_t o = 0; o < g.ow; ++o) {
        float v = s.max[o];
        if constexpr (Before != Act)
          v = activate<Act>(v, g.alpha);
        if constexpr (Res)
          out[o] = v + residual[oh * g.ow + o];
        else
          out[o] = v;
      }
    }
  }
}

// Sums of a plane in four interleaved accumulators.
struct Sums4 {
  double a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
  double sumA() const { return (a[0] + a[1]) + (a[2] + a[3]); }
  double sumB() const { return (b[0] + b[1]) + (b[2] + b[3]); }
};

template <int Act, bool Pool, bool Res>
void trainForward(const fcc_bn_act_desc *d, const float *x, const float *scale,
                  const float *shift, const float *residual, float *y,
                  float *batchMean, float *batchVar) {
  const Geometry g(d);
  const int64_t n = d->n, c = d->c, hw = g.hw, outPlane = g.oh * g.ow;
  const double count = double(n * hw);
#pragma omp parallel
  {
    Scratch s(g, Pool);
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < c; ++ch) {
      // Statistics in one pass: sums of x - K for K the channel's first
      // element, which keeps the variance free of cancellation unless the
      // mean lies many standard deviations away from K.
      const double k = x[ch * hw];
      Sums4 sums;
      for (int64_t i = 0; i < n; ++i) {
        const float *src = x + (i * c + ch) * hw;
        int64_t j = 0;
        for (; j + 4 <= hw; j += 4)
          for (int l = 0; l < 4; ++l) {
            const double t = double(src[j + l]) - k;
            sums.a[l] += t;
            sums.b[l] += t * t;
          }
        for (; j < hw; ++j) {
          const double t = double(src[j]) - k;
          sums.a[0] += t;
          sums.b[0] += t * t;
        }
      }
      const double shifted = sums.sumA() / count;
      const float mean = float(k + shifted);
      const float var =
          float(std::max(sums.sumB() / count - shifted * shifted, 0.0));
      batchMean[ch] = mean;
      batchVar[ch] = var;
      const double invStd = 1.0 / std::sqrt(double(var) + double(d->eps));
      const Affine bn = {mean, float(double(scale[ch]) * invStd), shift[ch]};
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = i * c + ch;
        forwardPlane<Act, Pool, Res>(
            g, bn, x + p * hw, Res ? residual + p * outPlane : nullptr,
            y + p * outPlane, s);
      }
    }
  }
}

template <int Act, bool Pool, bool Res>
void inference(const fcc_bn_act_desc *d, const float *x, const float *scale,
               const float *shift, const float *mean, const float *var,
               const float *residual, float *y) {
  const Geometry g(d);
  const int64_t c = d->c, hw = g.hw, outPlane = g.oh * g.ow;
#pragma omp parallel
  {
    Scratch s(g, Pool);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < d->n * c; ++p) {
      const int64_t ch = p % c;
      // As fcc_cpu_batch_norm_inference.
      const Affine bn = {
          mean[ch],
          float(double(scale[ch]) / std::sqrt(double(var[ch]) + double(d->eps))),
          shift[ch]};
      forwardPlane<Act, Pool, Res>(g, bn, x + p * hw,
                                   Res ? residual + p * outPlane : nullptr,
                                   y + p * outPlane, s);
    }
  }
}

template <int Act, bool Pool>
void backward(const fcc_bn_act_desc *d, const float *x, const float *dy,
              const float *scale, const float *shift, const float *batchMean,
              const float *batchVar, float *dx, float *dscale, float *dshift) {
  // As fcc_cpu_batch_norm_backward, on dz = act'(z) * (pool routing of dy):
  //   dshift = sum dz,  dscale = sum dz * xhat,
  //   dx = scale * invStd * (dz - dshift / M - xhat * dscale / M).
  const Geometry g(d);
  const int64_t n = d->n, c = d->c, hw = g.hw, outPlane = g.oh * g.ow;
  const float alpha = g.alpha;
  const double count = double(n * hw);
#pragma omp parallel
  {
    Scratch s(g, Pool);
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < c; ++ch) {
      const float mean = batchMean[ch];
      const double invStd =
          1.0 / std::sqrt(double(batchVar[ch]) + double(d->eps));
      const float invStdF = float(invStd);
      const Affine bn = {mean, float(double(scale[ch]) * invStd), shift[ch]};
      Sums4 sums; // dz, dz * xhat
      // Sweep 1: dz into dx, and the reductions.
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = i * c + ch;
        const float *__restrict src = x + p * hw;
        const float *__restrict grad = dy + p * outPlane;
        float *__restrict dz = dx + p * hw;
        if constexpr (Pool) {
          // Route dy to the first maximum of each window, in the order of
          // fcc_cpu_max_pool2d_backward (overlapping windows add up).
          constexpr bool onZ = poolsBeforeActivation<Act>();
          normalizePlane<Act>(g, bn, src, s.z.data(),
                              onZ ? nullptr : s.a.data());
          const float *pooled = onZ ? s.z.data() : s.a.data();
          std::fill(s.routed.begin(), s.routed.end(), 0.0f);
          for (int64_t oh = 0; oh < g.oh; ++oh) {
            rowMax(g, pooled, oh, s.max.data(), s.nanFlags());
            rowFirstMaxIndex(g, pooled, oh, s.max.data(), s.index.data());
            for (int64_t o = 0; o < g.ow; ++o)
              s.routed[s.index[o]] += grad[oh * g.ow + o];
          }
          if constexpr (Act == FCC_ACT_CELU) {
            // Most taps get no gradient: no exponential for them (g * e^t
            // would be +-0 too).
            for (int64_t j = 0; j < hw; ++j) {
              const float r = s.routed[j];
              dz[j] = r == 0.0f ? r : activationGrad<Act>(s.z[j], r, alpha);
            }
          } else {
            for (int64_t j = 0; j < hw; ++j)
              dz[j] = activationGrad<Act>(s.z[j], s.routed[j], alpha);
          }
        } else if constexpr (Act == FCC_ACT_CELU) {
          // z first (vectorised), then the derivative (library calls).
          normalizePlane<FCC_ACT_NONE>(g, bn, src, dz, nullptr);
          for (int64_t j = 0; j < hw; ++j)
            dz[j] = activationGrad<Act>(dz[j], grad[j], alpha);
        } else {
          const Affine f = bn;
          for (int64_t j = 0; j < hw; ++j)
            dz[j] = activationGrad<Act>(f(src[j]), grad[j], alpha);
        }
        int64_t j = 0;
        // xhat in float; its product with dz is exact in double.
        for (; j + 4 <= hw; j += 4)
          for (int l = 0; l < 4; ++l) {
            const double v = dz[j + l];
            sums.a[l] += v;
            sums.b[l] += v * double((src[j + l] - mean) * invStdF);
          }
        for (; j < hw; ++j) {
          const double v = dz[j];
          sums.a[0] += v;
          sums.b[0] += v * double((src[j] - mean) * invStdF);
        }
      }
      const double sumDz = sums.sumA(), sumDzXhat = sums.sumB();
      if (dshift)
        dshift[ch] = float(sumDz);
      if (dscale)
        dscale[ch] = float(sumDzXhat);
      // Sweep 2: dz -> dx in place, in float.
      const float k = float(double(scale[ch]) * invStd);
      const float meanDz = float(sumDz / count),
                  meanDzXhat = float(sumDzXhat / count);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = i * c + ch;
        const float *__restrict src = x + p * hw;
        float *__restrict dst = dx + p * hw;
        for (int64_t j = 0; j < hw; ++j) {
          const float xhat = (src[j] - mean) * invStdF;
          dst[j] = k * ((dst[j] - meanDz) - xhat * meanDzXhat);
        }
      }
    }
  }
}

// Calls F<Act, Pool, Res>::run(args...) for the descriptor's configuration.
template <template <int, bool, bool> class F, typename... Args>
void dispatch(const fcc_bn_act_desc *d, bool res, Args... args) {
  if (!d) {
    setError(FCC_ERR_INVALID, "bn_act: null descriptor");
    return;
  }
  if (d->layout != FCC_LAYOUT_NCHW) {
    setError(FCC_ERR_UNSUPPORTED,
             "bn_act: the CPU kernels take NCHW activations only");
    return;
  }
  auto withPool = [&](auto act) {
    constexpr int A = decltype(act)::value;
    if (d->pool_kh > 0)
      res ? F<A, true, true>::run(d, args...) : F<A, true, false>::run(d, args...);
    else
      res ? F<A, false, true>::run(d, args...)
          : F<A, false, false>::run(d, args...);
  };
  switch (d->activation) {
  case FCC_ACT_RELU:
    return withPool(std::integral_constant<int, FCC_ACT_RELU>());
  case FCC_ACT_CELU:
    return withPool(std::integral_constant<int, FCC_ACT_CELU>());
  default:
    return withPool(std::integral_constant<int, FCC_ACT_NONE>());
  }
}

template <int A, bool P, bool R> struct TrainForward {
  template <typename... Args> static void run(const fcc_bn_act_desc *d, Args... a) {
    trainForward<A, P, R>(d, a...);
  }
};
template <int A, bool P, bool R> struct Inference {
  template <typename... Args> static void run(const fcc_bn_act_desc *d, Args... a) {
    inference<A, P, R>(d, a...);
  }
};
// The backward does not depend on the residual.
template <int A, bool P, bool R> struct Backward {
  template <typename... Args> static void run(const fcc_bn_act_desc *d, Args... a) {
    if constexpr (!R)
      backward<A, P>(d, a...);
  }
};

} // namespace

extern "C" int fcc_bn_act_desc_finalize(fcc_bn_act_desc *d) {
  if (!d)
    return setError(FCC_ERR_INVALID, "bn_act: null descriptor");
  if (d->n <= 0 || d->c <= 0 || d->h <= 0 || d->w <= 0)
    return setError(FCC_ERR_INVALID,
                    format("bn_act: input shape must be positive, got n=%lld "
                           "c=%lld h=%lld w=%lld",
                           (long long)d->n, (long long)d->c, (long long)d->h,
                           (long long)d->w));
  if (d->activation < FCC_ACT_NONE || d->activation > FCC_ACT_CELU)
    return setError(FCC_ERR_INVALID,
                    format("bn_act: unknown activation %d", d->activation));
  if (d->activation == FCC_ACT_CELU && d->alpha == 0.0f)
    return setError(FCC_ERR_INVALID, "bn_act: CELU alpha must be non-zero");
  if (!(d->eps > 0.0f))
    return setError(FCC_ERR_INVALID, "bn_act: epsilon must be positive");
  if (d->layout != FCC_LAYOUT_NCHW && d->layout != FCC_LAYOUT_NHWC)
    return setError(FCC_ERR_INVALID,
                    format("bn_act: unknown layout %d", d->layout));
  d->oh = d->h;
  d->ow = d->w;
  if (d->pool_kh == 0 && d->pool_kw == 0)
    return FCC_OK;
  if (d->pool_kh <= 0 || d->pool_kw <= 0 || d->pool_sh <= 0 ||
      d->pool_sw <= 0)
    return setError(FCC_ERR_INVALID,
                    format("bn_act: pool kernel %lldx%lld and strides "
                           "%lldx%lld must be positive",
                           (long long)d->pool_kh, (long long)d->pool_kw,
                           (long long)d->pool_sh, (long long)d->pool_sw));
  if (d->pool_kh > d->h || d->pool_kw > d->w)
    return setError(FCC_ERR_INVALID,
                    format("bn_act: the %lldx%lld pool window does not fit "
                           "the %lldx%lld input",
                           (long long)d->pool_kh, (long long)d->pool_kw,
                           (long long)d->h, (long long)d->w));
  d->oh = (d->h - d->pool_kh) / d->pool_sh + 1;
  d->ow = (d->w - d->pool_kw) / d->pool_sw + 1;
  return FCC_OK;
}

extern "C" void fcc_cpu_bn_act_train_forward(const fcc_bn_act_desc *d,
                                             const float *x, const float *scale,
                                             const float *shift,
                                             const float *residual, float *y,
                                             float *batch_mean,
                                             float *batch_var) {
  dispatch<TrainForward>(d, residual != nullptr, x, scale, shift, residual, y,
                         batch_mean, batch_var);
}

extern "C" void fcc_cpu_bn_act_inference(const fcc_bn_act_desc *d,
                                         const float *x, const float *scale,
                                         const float *shift, const float *mean,
                                         const float *var,
                                         const float *residual, float *y) {
  dispatch<Inference>(d, residual != nullptr, x, scale, shift, mean, var,
                      residual, y);
}

extern "C" void fcc_cpu_bn_act_backward(const fcc_bn_act_desc *d,
                                        const float *x, const float *dy,
                                        const float *scale, const float *shift,
                                        const float *batch_mean,
                                        const float *batch_var, float *dx,
                                        float *dscale, float *dshift) {
  dispatch<Backward>(d, /*res=*/false, x, dy, scale, shift, batch_mean,
                     batch_var, dx, dscale, dshift);
}

extern "C" void fcc_cpu_fold_bn(const float *w, const float *b,
                                const float *scale, const float *shift,
                                const float *mean, const float *var, float eps,
                                int64_t k, int64_t per_k, float *w_out,
                                float *b_out) {
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < k; ++o) {
    const double m = double(scale[o]) / std::sqrt(double(var[o]) + double(eps));
    for (int64_t j = 0; j < per_k; ++j)
      w_out[o * per_k + j] = float(double(w[o * per_k + j]) * m);
    const double bias = b ? double(b[o]) : 0.0;
    b_out[o] = float((bias - double(mean[o])) * m + double(shift[o]));
  }
}
