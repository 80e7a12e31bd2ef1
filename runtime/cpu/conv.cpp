//===- conv.cpp - 2-D convolution through oneDNN -------------------------===//
//
// Forward, backward-data and backward-filter convolution on plain layouts
// (src/dst nchw, weights oihw or goihw, bias x), so that tensors are used in
// place without reorders. A plan holds the oneDNN engine, stream and the
// primitives of one shape; the backward primitives are created on first use
// since inference never needs them. The bias gradient is a per-channel double
// precision reduction done here (fixed order, like the batch-norm sums).
//
// Also home of fcc_window_output_size, the output-size rule shared with
// pooling (window.h).
//
//===----------------------------------------------------------------------===//
#include "internal.h"

#include "fcc/runtime/window.h"

#include <oneapi/dnnl/dnnl.hpp>

#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

using fcc::cpu::format;
using fcc::cpu::setError;

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

struct fcc_conv2d_plan {
  fcc_conv2d_desc desc;
  dnnl::engine engine;
  dnnl::stream stream;
  dnnl::memory::desc srcMd, weightsMd, biasMd, dstMd;
  dims strides, dilates, padL, padR;
  // The forward descriptor is also the hint of the backward primitives.
  dnnl::convolution_forward::primitive_desc forwardPd;
  dnnl::convolution_forward forwardBias;
  std::optional<dnnl::convolution_forward> forwardNoBias;
  std::optional<dnnl::convolution_backward_data> backwardData;
  std::optional<dnnl::convolution_backward_weights> backwardWeights;
};

namespace {

// oneDNN memory objects wrap user pointers; inputs are never written.
dnnl::memory wrap(const dnnl::memory::desc &md, const dnnl::engine &engine,
                  const float *data) {
  return dnnl::memory(md, engine, const_cast<float *>(data));
}

// Runs `body`, converting oneDNN (and allocation) failures to error codes.
template <typename Body> int guarded(const char *what, Body &&body) {
  try {
    body();
    return FCC_OK;
  } catch (const dnnl::error &e) {
    return setError(FCC_ERR_BACKEND,
                    format("%s: oneDNN error: %s", what, e.what()));
  } catch (const std::exception &e) {
    return setError(FCC_ERR_BACKEND, format("%s: %s", what, e.what()));
  }
}

dnnl::convolution_forward::desc forwardDesc(const fcc_conv2d_plan &p,
                                            bool withBias) {
  return dnnl::convolution_forward::desc(
      dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      p.srcMd, p.weightsMd, withBias ? p.biasMd : dnnl::memory::desc(), p.dstMd,
      p.strides, p.dilates, p.padL, p.padR);
}

} // namespace

extern "C" int64_t fcc_window_output_size(int64_t in, int64_t kernel,
                                          int64_t stride, int64_t pad_begin,
                                          int64_t pad_end, int64_t dilation,
                                          int ceil_mode) {
  return fcc_window_output_size_rule(in, kernel, stride, pad_begin, pad_end,
                                     dilation, ceil_mode);
}

extern "C" int fcc_conv2d_desc_finalize(fcc_conv2d_desc *d) {
  if (!d)
    return setError(FCC_ERR_INVALID, "conv2d: null descriptor");
  if (d->n <= 0 || d->c <= 0 || d->h <= 0 || d->w <= 0)
    return setError(FCC_ERR_INVALID,
                    format("conv2d: input shape must be positive, got "
                           "n=%lld c=%lld h=%lld w=%lld",
                           (long long)d->n, (long long)d->c, (long long)d->h,
                           (long long)d->w));
  if (d->k <= 0 || d->r <= 0 || d->s <= 0)
    return setError(FCC_ERR_INVALID,
                    format("conv2d: output channels and kernel size must be "
                           "positive, got k=%lld r=%lld s=%lld",
                           (long long)d->k, (long long)d->r, (long long)d->s));
  if (d->stride_h <= 0 || d->stride_w <= 0)
    return setError(FCC_ERR_INVALID,
                    format("conv2d: strides must be positive, got %lldx%lld",
                           (long long)d->stride_h, (long long)d->stride_w));
  if (d->dil_h <= 0 || d->dil_w <= 0)
    return setError(FCC_ERR_INVALID,
                    format("conv2d: dilations must be positive (1 = dense), "
                           "got %lldx%lld",
                           (long long)d->dil_h, (long long)d->dil_w));
  if (d->pad_t < 0 || d->pad_l < 0 || d->pad_b < 0 || d->pad_r < 0)
    return setError(FCC_ERR_INVALID, "conv2d: pads must be non-negative");
  if (d->layout != FCC_LAYOUT_NCHW && d->layout != FCC_LAYOUT_NHWC)
    return setError(FCC_ERR_INVALID,
                    format("conv2d: unknown layout %d", d->layout));
  if (d->groups <= 0)
    return setError(FCC_ERR_INVALID,
                    format("conv2d: groups must be positive, got %lld",
                           (long long)d->groups));
  if (d->c % d->groups != 0 || d->k % d->groups != 0)
    return setError(FCC_ERR_INVALID,
                    format("conv2d: input channels (%lld) and output channels "
                           "(%lld) must be divisible by groups (%lld)",
                           (long long)d->c, (long long)d->k,
                           (long long)d->groups));
  int64_t oh = fcc_window_output_size_rule(d->h, d->r, d->stride_h, d->pad_t,
                                           d->pad_b, d->dil_h, 0);
  int64_t ow = fcc_window_output_size_rule(d->w, d->s, d->stride_w, d->pad_l,
                                           d->pad_r, d->dil_w, 0);
  if (oh <= 0 || ow <= 0)
    return setError(FCC_ERR_INVALID,
                    format("conv2d: empty output: the dilated kernel "
                           "(%lldx%lld) does not fit the padded input "
                           "(%lldx%lld)",
                           (long long)(d->dil_h * (d->r - 1) + 1),
                           (long long)(d->dil_w * (d->s - 1) + 1),
                           (long long)(d->h + d->pad_t + d->pad_b),
                           (long long)(d->w + d->pad_l + d->pad_r)));
  d->oh = oh;
  d->ow = ow;
  return FCC_OK;
}

extern "C" fcc_conv2d_plan *fcc_cpu_conv2d_create(const fcc_conv2d_desc *d) {
  if (!d) {
    setError(FCC_ERR_INVALID, "conv2d: null descriptor");
    return nullptr;
  }
  fcc_conv2d_desc desc = *d;
  if (fcc_conv2d_desc_finalize(&desc) != FCC_OK)
    return nullptr;
  if (desc.layout != FCC_LAYOUT_NCHW) {
    setError(FCC_ERR_UNSUPPORTED,
             "conv2d: the CPU kernels take NCHW activations only");
    return nullptr;
  }
  // A caller-provided output size must agree with the rule (0 = not set).
  if ((d->oh != 0 || d->ow != 0) && (d->oh != desc.oh || d->ow != desc.ow)) {
    setError(FCC_ERR_INVALID,
             format("conv2d: descriptor output size %lldx%lld does not match "
                    "the computed %lldx%lld",
                    (long long)d->oh, (long long)d->ow, (long long)desc.oh,
                    (long long)desc.ow));
    return nullptr;
  }

  auto plan = std::make_unique<fcc_conv2d_plan>();
  plan->desc = desc;
  int rc = guarded("conv2d create", [&] {
    fcc_conv2d_plan &p = *plan;
    p.engine = dnnl::engine(dnnl::engine::kind::cpu, 0);
    p.stream = dnnl::stream(p.engine);
    const int64_t g = desc.groups;
    p.srcMd = dnnl::memory::desc({desc.n, desc.c, desc.h, desc.w}, dt::f32,
                                 tag::nchw);
    p.dstMd = dnnl::memory::desc({desc.n, desc.k, desc.oh, desc.ow}, dt::f32,
                                 tag::nchw);
    if (g == 1)
      p.weightsMd = dnnl::memory::desc({desc.k, desc.c, desc.r, desc.s},
                                       dt::f32, tag::oihw);
    else
      p.weightsMd = dnnl::memory::desc(
          {g, desc.k / g, desc.c / g, desc.r, desc.s}, dt::f32, tag::goihw);
    p.biasMd = dnnl::memory::desc({desc.k}, dt::f32, tag::x);
    p.strides = {desc.stride_h, desc.stride_w};
    p.dilates = {desc.dil_h - 1, desc.dil_w - 1}; // oneDNN: 0 = dense.
    p.padL = {desc.pad_t, desc.pad_l};
    p.padR = {desc.pad_b, desc.pad_r};
    p.forwardPd = dnnl::convolution_forward::primitive_desc(
        forwardDesc(p, /*withBias=*/true), p.engine);
    p.forwardBias = dnnl::convolution_forward(p.forwardPd);
  });
  if (rc != FCC_OK)
    return nullptr;
  return plan.release();
}

extern "C" void fcc_cpu_conv2d_destroy(fcc_conv2d_plan *p) { delete p; }

extern "C" int fcc_cpu_conv2d_forward(fcc_conv2d_plan *p, const float *x,
                                      const float *w, const float *bias,
                                      float *y) {
  if (!p || !x || !w || !y)
    return setError(FCC_ERR_INVALID, "conv2d forward: null argument");
  return guarded("conv2d forward", [&] {
    std::unordered_map<int, dnnl::memory> args = {
        {DNNL_ARG_SRC, wrap(p->srcMd, p->engine, x)},
        {DNNL_ARG_WEIGHTS, wrap(p->weightsMd, p->engine, w)},
        {DNNL_ARG_DST, wrap(p->dstMd, p->engine, y)}};
    if (bias) {
      args[DNNL_ARG_BIAS] = wrap(p->biasMd, p->engine, bias);
      p->forwardBias.execute(p->stream, args);
    } else {
      if (!p->forwardNoBias)
        p->forwardNoBias.emplace(dnnl::convolution_forward::primitive_desc(
            forwardDesc(*p, /*withBias=*/false), p->engine));
      p->forwardNoBias->execute(p->stream, args);
    }
    p->stream.wait();
  });
}

extern "C" int fcc_cpu_conv2d_backward_data(fcc_conv2d_plan *p, const float *dy,
                                            const float *w, float *dx) {
  if (!p || !dy || !w || !dx)
    return setError(FCC_ERR_INVALID, "conv2d backward data: null argument");
  return guarded("conv2d backward data", [&] {
    if (!p->backwardData) {
      dnnl::convolution_backward_data::desc bd(
          dnnl::algorithm::convolution_direct, p->srcMd, p->weightsMd, p->dstMd,
          p->strides, p->dilates, p->padL, p->padR);
      p->backwardData.emplace(dnnl::convolution_backward_data::primitive_desc(
          bd, p->engine, p->forwardPd));
    }
    p->backwardData->execute(
        p->stream, {{DNNL_ARG_DIFF_DST, wrap(p->dstMd, p->engine, dy)},
                    {DNNL_ARG_WEIGHTS, wrap(p->weightsMd, p->engine, w)},
                    {DNNL_ARG_DIFF_SRC, wrap(p->srcMd, p->engine, dx)}});
    p->stream.wait();
  });
}

extern "C" int fcc_cpu_conv2d_backward_filter(fcc_conv2d_plan *p,
                                              const float *x, const float *dy,
                                              float *dw, float *dbias) {
  if (!p || !x || !dy || !dw)
    return setError(FCC_ERR_INVALID, "conv2d backward filter: null argument");
  int rc = guarded("conv2d backward filter", [&] {
    if (!p->backwardWeights) {
      dnnl::convolution_backward_weights::desc bd(
          dnnl::algorithm::convolution_direct, p->srcMd, p->weightsMd, p->dstMd,
          p->strides, p->dilates, p->padL, p->padR);
      p->backwardWeights.emplace(
          dnnl::convolution_backward_weights::primitive_desc(bd, p->engine,
                                                             p->forwardPd));
    }
    p->backwardWeights->execute(
        p->stream,
        {{DNNL_ARG_SRC, wrap(p->srcMd, p->engine, x)},
         {DNNL_ARG_DIFF_DST, wrap(p->dstMd, p->engine, dy)},
         {DNNL_ARG_DIFF_WEIGHTS, wrap(p->weightsMd, p->engine, dw)}});
    p->stream.wait();
  });
  if (rc != FCC_OK || !dbias)
    return rc;

  // dbias[k] = sum over (n, oh, ow) of dy, in double and in a fixed order.
  const fcc_conv2d_desc &d = p->desc;
  const int64_t plane = d.oh * d.ow;
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < d.k; ++k) {
    double sum = 0.0;
    for (int64_t n = 0; n < d.n; ++n) {
      const float *src = dy + (n * d.k + k) * plane;
      for (int64_t i = 0; i < plane; ++i)
        sum += src[i];
    }
    dbias[k] = float(sum);
  }
  return FCC_OK;
}
