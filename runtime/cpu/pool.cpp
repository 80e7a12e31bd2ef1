//===- pool.cpp - 2-D max and average pooling (NCHW) ----------------------===//
//
// Direct loops over each window. For every output row/column the range of
// kernel taps that fall inside the real input is precomputed once (the
// `Taps` tables), so the inner loops never test for padding; the columns
// whose windows lie entirely inside the input are processed tap by tap across
// the whole output row, which keeps max pooling branch-free and vectorisable.
// Backward kernels scatter into dx one (n, c) plane per OpenMP iteration:
// overlapping windows add up in a fixed order without atomics.
//
// Conventions (ONNX/PyTorch): padded positions never win a max; ties go to
// the first maximum in row-major window order; NaN propagates. The max
// backward recomputes each window's maximum and routes dy to the first tap
// holding it (no index tensor to keep between forward and backward). The
// average divisor counts the taps inside the padded input
// [-pad_begin, in + pad_end) when count_include_pad, else the taps inside the
// real input. Dilation is honoured by both kinds of pooling.
//
//===----------------------------------------------------------------------===//
#include "internal.h"

#include "fcc/runtime/window.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

using fcc::cpu::format;
using fcc::cpu::setError;

namespace {

// The kernel taps of one output position along one dimension: taps
// [first, last) land inside the real input, at input index start + tap*dil;
// `padded` taps land inside the padded input.
struct Taps {
  int64_t start, first, last, padded;
};

std::vector<Taps> computeTaps(int64_t out, int64_t in, int64_t kernel,
                              int64_t stride, int64_t padBegin, int64_t padEnd,
                              int64_t dil) {
  std::vector<Taps> taps(out);
  for (int64_t o = 0; o < out; ++o) {
    Taps &t = taps[o];
    t.start = o * stride - padBegin;
    t.first = kernel;
    t.last = 0;
    t.padded = 0;
    for (int64_t j = 0; j < kernel; ++j) {
      int64_t pos = t.start + j * dil;
      if (pos >= 0 && pos < in) {
        t.first = std::min(t.first, j);
        t.last = j + 1;
      }
      if (pos >= -padBegin && pos < in + padEnd)
        ++t.padded;
    }
    if (t.first > t.last) // No real tap (rejected by finalize).
      t.first = t.last = 0;
  }
  return taps;
}

struct PoolTables {
  std::vector<Taps> rows, cols;
  // Output columns [fullBegin, fullEnd) have all kw taps inside the input.
  int64_t fullBegin = 0, fullEnd = 0;
  explicit PoolTables(const fcc_pool2d_desc *d)
      : rows(computeTaps(d->oh, d->h, d->kh, d->stride_h, d->pad_t, d->pad_b,
                         d->dil_h)),
        cols(computeTaps(d->ow, d->w, d->kw, d->stride_w, d->pad_l, d->pad_r,
                         d->dil_w)) {
    auto full = [&](int64_t o) {
      return cols[o].first == 0 && cols[o].last == d->kw;
    };
    while (fullBegin < d->ow && !full(fullBegin))
      ++fullBegin;
    fullEnd = fullBegin;
    while (fullEnd < d->ow && full(fullEnd))
      ++fullEnd;
  }
};

// Maximum of window (tr, tc) over its taps inside the input; NaN if any of
// them is NaN (NaN propagates, as in PyTorch). Branch-free: `v > m ? v : m`
// compiles to maxss, and a data-dependent branch would mispredict.
inline float windowMax(const fcc_pool2d_desc *d, const float *plane,
                       const Taps &tr, const Taps &tc) {
  float m = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (int64_t i = tr.first; i < tr.last; ++i) {
    const float *row = plane + (tr.start + i * d->dil_h) * d->w + tc.start;
    for (int64_t j = tc.first; j < tc.last; ++j) {
      const float v = row[j * d->dil_w];
      m = v > m ? v : m;
      nan |= std::isnan(v);
    }
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : m;
}

// Maxima of all windows of output row oh into out[0, ow). Columns whose
// windows lie entirely inside the input are processed tap by tap across the
// row, so that the per-window chains are independent (and vectorisable).
void rowMax(const fcc_pool2d_desc *d, const PoolTables &t,
            const float *__restrict plane, int64_t oh, float *__restrict out) {
  const Taps &tr = t.rows[oh];
  for (int64_t ow = 0; ow < t.fullBegin; ++ow)
    out[ow] = windowMax(d, plane, tr, t.cols[ow]);
  for (int64_t ow = t.fullEnd; ow < d->ow; ++ow)
    out[ow] = windowMax(d, plane, tr, t.cols[ow]);
  const int64_t kw = d->kw, stride = d->stride_w, dil = d->dil_w;
  constexpr int64_t kChunk = 256;
  for (int64_t c0 = t.fullBegin; c0 < t.fullEnd; c0 += kChunk) {
    const int64_t len = std::min(kChunk, t.fullEnd - c0);
    float m[kChunk];
    bool nan[kChunk];
    std::fill(m, m + len, -std::numeric_limits<float>::infinity());
    std::fill(nan, nan + len, false);
    for (int64_t i = tr.first; i < tr.last; ++i) {
      const float *row =
          plane + (tr.start + i * d->dil_h) * d->w - d->pad_l + c0 * stride;
      for (int64_t j = 0; j < kw; ++j) {
        const float *tap = row + j * dil;
        for (int64_t o = 0; o < len; ++o) {
          const float v = tap[o * stride];
          m[o] = v > m[o] ? v : m[o];
          nan[o] |= std::isnan(v);
        }
      }
    }
    for (int64_t o = 0; o < len; ++o)
      out[c0 + o] = nan[o] ? std::numeric_limits<float>::quiet_NaN() : m[o];
  }
}

// Index (within the plane) of the first tap of window (tr, tc), in row-major
// window order, that holds `max` (the window's maximum, possibly NaN).
inline int64_t firstMaxIndex(const fcc_pool2d_desc *d, const float *plane,
                             const Taps &tr, const Taps &tc, float max) {
  const bool nan = std::isnan(max);
  for (int64_t i = tr.first; i < tr.last; ++i) {
    const int64_t row = (tr.start + i * d->dil_h) * d->w + tc.start;
    for (int64_t j = tc.first; j < tc.last; ++j) {
      const float v = plane[row + j * d->dil_w];
      if (nan ? std::isnan(v) : v == max)
        return row + j * d->dil_w;
    }
  }
  return (tr.start + tr.first * d->dil_h) * d->w + tc.start +
         tc.first * d->dil_w; // Not reached: max is one of the taps.
}

// firstMaxIndex for all windows of output row oh, given their maxima. The
// interior columns scan the taps backwards with branch-free selects, so the
// last match seen is the first one in row-major window order.
void rowFirstMaxIndex(const fcc_pool2d_desc *d, const PoolTables &t,
                      const float *__restrict plane, int64_t oh,
                      const float *__restrict max, int64_t *__restrict index) {
  const Taps &tr = t.rows[oh];
  for (int64_t ow = 0; ow < t.fullBegin; ++ow)
    index[ow] = firstMaxIndex(d, plane, tr, t.cols[ow], max[ow]);
  for (int64_t ow = t.fullEnd; ow < d->ow; ++ow)
    index[ow] = firstMaxIndex(d, plane, tr, t.cols[ow], max[ow]);
  const int64_t begin = t.fullBegin, end = t.fullEnd;
  const int64_t kw = d->kw, stride = d->stride_w, dil = d->dil_w;
  for (int64_t i = tr.last - 1; i >= tr.first; --i) {
    const int64_t row = (tr.start + i * d->dil_h) * d->w - d->pad_l;
    for (int64_t j = kw - 1; j >= 0; --j) {
      const int64_t tap = row + j * dil;
      for (int64_t o = begin; o < end; ++o) {
        const int64_t idx = tap + o * stride;
        const float v = plane[idx], m = max[o];
        const bool match = (v == m) | (std::isnan(v) & std::isnan(m));
        // index = match ? idx : index, as a mask (GCC emits a branch for
        // the conditional here, which mispredicts on random data).
        index[o] += (idx - index[o]) & -int64_t(match);
      }
    }
  }
}

double avgDivisor(const fcc_pool2d_desc *d, const Taps &tr, const Taps &tc) {
  if (d->count_include_pad)
    return double(tr.padded) * double(tc.padded);
  // Positions grow with the tap index, so the real taps are exactly
  // [first, last).
  return double(tr.last - tr.first) * double(tc.last - tc.first);
}

// The CPU pooling kernels take NCHW activations only.
bool nchwOnly(const fcc_pool2d_desc *d) {
  if (d && d->layout != FCC_LAYOUT_NCHW) {
    setError(FCC_ERR_UNSUPPORTED,
             "pool2d: the CPU kernels take NCHW activations only");
    return false;
  }
  return true;
}
} // namespace

extern "C" int fcc_pool2d_desc_finalize(fcc_pool2d_desc *d) {
  if (!d)
    return setError(FCC_ERR_INVALID, "pool2d: null descriptor");
  if (d->n <= 0 || d->c <= 0 || d->h <= 0 || d->w <= 0)
    return setError(FCC_ERR_INVALID,
                    format("pool2d: input shape must be positive, got "
                           "n=%lld c=%lld h=%lld w=%lld",
                           (long long)d->n, (long long)d->c, (long long)d->h,
                           (long long)d->w));
  if (d->kh <= 0 || d->kw <= 0)
    return setError(FCC_ERR_INVALID,
                    format("pool2d: kernel size must be positive, got "
                           "%lldx%lld",
                           (long long)d->kh, (long long)d->kw));
  if (d->stride_h <= 0 || d->stride_w <= 0)
    return setError(FCC_ERR_INVALID,
                    format("pool2d: strides must be positive, got %lldx%lld",
                           (long long)d->stride_h, (long long)d->stride_w));
  // The header documents dilation for max pooling, so an average pooling
  // caller may leave it zero-initialised: 0 means "unset", i.e. dense.
  if (d->dil_h == 0)
    d->dil_h = 1;
  if (d->dil_w == 0)
    d->dil_w = 1;
  if (d->dil_h < 0 || d->dil_w < 0)
    return setError(FCC_ERR_INVALID,
                    format("pool2d: dilations must be positive (1 = dense), "
                           "got %lldx%lld",
                           (long long)d->dil_h, (long long)d->dil_w));
  if (d->pad_t < 0 || d->pad_l < 0 || d->pad_b < 0 || d->pad_r < 0)
    return setError(FCC_ERR_INVALID, "pool2d: pads must be non-negative");
  if (d->layout != FCC_LAYOUT_NCHW && d->layout != FCC_LAYOUT_NHWC)
    return setError(FCC_ERR_INVALID,
                    format("pool2d: unknown layout %d", d->layout));
  int64_t oh = fcc_window_output_size_rule(d->h, d->kh, d->stride_h, d->pad_t,
                                           d->pad_b, d->dil_h, d->ceil_mode);
  int64_t ow = fcc_window_output_size_rule(d->w, d->kw, d->stride_w, d->pad_l,
                                           d->pad_r, d->dil_w, d->ceil_mode);
  if (oh <= 0 || ow <= 0)
    return setError(FCC_ERR_INVALID,
                    format("pool2d: empty output: the %lldx%lld window does "
                           "not fit the padded %lldx%lld input",
                           (long long)d->kh, (long long)d->kw,
                           (long long)(d->h + d->pad_t + d->pad_b),
                           (long long)(d->w + d->pad_l + d->pad_r)));
  // Every window must see at least one real element (PyTorch requires
  // pad <= kernel/2 for the same reason): otherwise a max has no candidate
  // and an average without padding has no divisor.
  d->oh = oh;
  d->ow = ow;
  PoolTables tables(d);
  for (int64_t o = 0; o < oh; ++o)
    if (tables.rows[o].first == tables.rows[o].last)
      return setError(FCC_ERR_INVALID,
                      format("pool2d: output row %lld's window lies entirely "
                             "in the padding (pads too large for the kernel)",
                             (long long)o));
  for (int64_t o = 0; o < ow; ++o)
    if (tables.cols[o].first == tables.cols[o].last)
      return setError(FCC_ERR_INVALID,
                      format("pool2d: output column %lld's window lies "
                             "entirely in the padding (pads too large for the "
                             "kernel)",
                             (long long)o));
  return FCC_OK;
}

extern "C" void fcc_cpu_max_pool2d_forward(const fcc_pool2d_desc *d,
                                           const float *x, float *y) {
  if (!nchwOnly(d))
    return;
  PoolTables t(d);
  const int64_t inPlane = d->h * d->w, outPlane = d->oh * d->ow;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < d->n * d->c; ++p)
    for (int64_t oh = 0; oh < d->oh; ++oh)
      rowMax(d, t, x + p * inPlane, oh, y + p * outPlane + oh * d->ow);
}

extern "C" void fcc_cpu_max_pool2d_backward(const fcc_pool2d_desc *d,
                                            const float *x, const float *dy,
                                            float *dx) {
  if (!nchwOnly(d))
    return;
  PoolTables t(d);
  const int64_t inPlane = d->h * d->w, outPlane = d->oh * d->ow;
#pragma omp parallel
  {
    std::vector<float> max(d->ow);
    std::vector<int64_t> index(d->ow);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < d->n * d->c; ++p) {
      const float *src = x + p * inPlane;
      float *dst = dx + p * inPlane;
      std::fill(dst, dst + inPlane, 0.0f);
      for (int64_t oh = 0; oh < d->oh; ++oh) {
        rowMax(d, t, src, oh, max.data());
        rowFirstMaxIndex(d, t, src, oh, max.data(), index.data());
        const float *grad = dy + p * outPlane + oh * d->ow;
        for (int64_t ow = 0; ow < d->ow; ++ow)
          dst[index[ow]] += grad[ow];
      }
    }
  }
}

extern "C" void fcc_cpu_avg_pool2d_forward(const fcc_pool2d_desc *d,
                                           const float *x, float *y) {
  if (!nchwOnly(d))
    return;
  PoolTables t(d);
  const int64_t inPlane = d->h * d->w, outPlane = d->oh * d->ow;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < d->n * d->c; ++p) {
    const float *src = x + p * inPlane;
    float *dst = y + p * outPlane;
    for (int64_t oh = 0; oh < d->oh; ++oh) {
      const Taps &tr = t.rows[oh];
      for (int64_t ow = 0; ow < d->ow; ++ow) {
        const Taps &tc = t.cols[ow];
        double sum = 0.0;
        for (int64_t i = tr.first; i < tr.last; ++i) {
          const float *row = src + (tr.start + i * d->dil_h) * d->w + tc.start;
          for (int64_t j = tc.first; j < tc.last; ++j)
            sum += row[j * d->dil_w];
        }
        dst[oh * d->ow + ow] = float(sum / avgDivisor(d, tr, tc));
      }
    }
  }
}

extern "C" void fcc_cpu_avg_pool2d_backward(const fcc_pool2d_desc *d,
                                            const float *dy, float *dx) {
  if (!nchwOnly(d))
    return;
  PoolTables t(d);
  const int64_t inPlane = d->h * d->w, outPlane = d->oh * d->ow;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < d->n * d->c; ++p) {
    const float *grad = dy + p * outPlane;
    float *dst = dx + p * inPlane;
    std::fill(dst, dst + inPlane, 0.0f);
    for (int64_t oh = 0; oh < d->oh; ++oh) {
      const Taps &tr = t.rows[oh];
      for (int64_t ow = 0; ow < d->ow; ++ow) {
        const Taps &tc = t.cols[ow];
        const float g = float(grad[oh * d->ow + ow] / avgDivisor(d, tr, tc));
        for (int64_t i = tr.first; i < tr.last; ++i) {
          float *row = dst + (tr.start + i * d->dil_h) * d->w + tc.start;
          for (int64_t j = tc.first; j < tc.last; ++j)
            row[j * d->dil_w] += g;
        }
      }
    }
  }
}
