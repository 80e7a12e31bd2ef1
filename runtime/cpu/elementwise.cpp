//===- elementwise.cpp - Activations, broadcasting and dropout ------------===//
//
// The elementwise kernels: ReLU/CELU forward and backward, numpy-broadcasting
// binary ops, the affine map, the sum-to-shape reduction that is the backward
// of broadcasting, and dropout masks from the counter-based generator.
//
// Broadcasting shapes are first simplified: size-1 output dimensions are
// dropped and neighbouring dimensions that broadcast the same way are merged,
// so that the innermost loop runs over as many contiguous elements as
// possible.
//
//===----------------------------------------------------------------------===//
#include "internal.h"

#include "fcc/runtime/detail/broadcast.h"

#include <algorithm>
#include <cmath>
#include <vector>

using fcc::cpu::format;
using fcc::cpu::setError;

//===----------------------------------------------------------------------===//
// Activations
//===----------------------------------------------------------------------===//

extern "C" void fcc_cpu_relu_forward(const float *x, float *y, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

extern "C" void fcc_cpu_relu_backward(const float *x, const float *dy,
                                      float *dx, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

extern "C" void fcc_cpu_celu_forward(const float *x, float alpha, float *y,
                                     int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    y[i] = x[i] > 0.0f ? x[i] : alpha * std::expm1(x[i] / alpha);
}

extern "C" void fcc_cpu_celu_backward(const float *x, const float *dy,
                                      float alpha, float *dx, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    dx[i] = x[i] > 0.0f ? dy[i] : dy[i] * std::exp(x[i] / alpha);
}

extern "C" void fcc_cpu_affine(const float *x, float alpha, float beta,
                               float *y, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    y[i] = x[i] * alpha + beta;
}

extern "C" void fcc_cpu_mul_elementwise(const float *x, const float *mask,
                                        float *y, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    y[i] = x[i] * mask[i];
}

//===----------------------------------------------------------------------===//
// Dropout
//===----------------------------------------------------------------------===//

// ratio >= 1 drops everything (mask of zeros) rather than dividing by zero;
// ratio <= 0 keeps everything with a mask of ones.
extern "C" void fcc_cpu_dropout_mask(uint64_t seed, uint64_t stream,
                                     float ratio, float *mask, int64_t count) {
  if (ratio >= 1.0f) {
    std::fill(mask, mask + count, 0.0f);
    return;
  }
  const float keep = ratio > 0.0f ? 1.0f / (1.0f - ratio) : 1.0f;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i)
    mask[i] =
        fcc_random_uniform(seed, stream, uint64_t(i)) >= ratio ? keep : 0.0f;
}

//===----------------------------------------------------------------------===//
// Broadcasting
//===----------------------------------------------------------------------===//

namespace {

using fcc::runtime_detail::BroadcastDim;

// The shared simplification (detail/broadcast.h), errors recorded as
// "<what>: ...".
int simplifyBroadcast(const char *what, const int64_t *aShape,
                      const int64_t *bShape, const int64_t *yShape, int rank,
                      std::vector<BroadcastDim> &dims) {
  std::string why =
      fcc::runtime_detail::simplifyBroadcast(aShape, bShape, yShape, rank, dims);
  if (!why.empty())
    return setError(FCC_ERR_INVALID, std::string(what) + ": " + why);
  return FCC_OK;
}

template <typename Op>
void binaryLoop(const float *a, const float *b, float *y,
                const std::vector<BroadcastDim> &dims, Op op) {
  if (dims.empty()) { // Every dimension has size 1.
    y[0] = op(a[0], b[0]);
    return;
  }
  const BroadcastDim inner = dims.back();
  const int outerRank = int(dims.size()) - 1;
  int64_t rows = 1;
  for (int i = 0; i < outerRank; ++i)
    rows *= dims[i].size;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    // Offsets of this row in a and b from its multi-index.
    int64_t offA = 0, offB = 0, rest = row;
    for (int i = outerRank - 1; i >= 0; --i) {
      int64_t idx = rest % dims[i].size;
      rest /= dims[i].size;
      offA += idx * dims[i].strideA;
      offB += idx * dims[i].strideB;
    }
    const float *ra = a + offA, *rb = b + offB;
    float *ry = y + row * inner.size;
    if (inner.strideA && inner.strideB)
      for (int64_t j = 0; j < inner.size; ++j)
        ry[j] = op(ra[j], rb[j]);
    else if (inner.strideA)
      for (int64_t j = 0; j < inner.size; ++j)
        ry[j] = op(ra[j], rb[0]);
    else
      for (int64_t j = 0; j < inner.size; ++j)
        ry[j] = op(ra[0], rb[j]);
  }
}

template <typename Op>
void binaryDispatch(const float *a, const float *b, float *y,
                    const std::vector<BroadcastDim> &dims, int64_t total,
                    Op op) {
  // Fast paths: identical shapes, and a scalar right-hand side.
  if (dims.size() == 1 && dims[0].strideA && dims[0].strideB) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < total; ++i)
      y[i] = op(a[i], b[i]);
    return;
  }
  if (dims.size() == 1 && dims[0].strideA && !dims[0].strideB) {
    const float s = b[0];
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < total; ++i)
      y[i] = op(a[i], s);
    return;
  }
  binaryLoop(a, b, y, dims, op);
}

} // namespace

extern "C" int fcc_cpu_binary(int op, const float *a, const int64_t *a_shape,
                              const float *b, const int64_t *b_shape,
                              const int64_t *y_shape, int rank, float *y) {
  if (op < FCC_BINARY_ADD || op > FCC_BINARY_DIV)
    return setError(FCC_ERR_INVALID, format("binary: unknown op %d", op));
  std::vector<BroadcastDim> dims;
  if (int rc =
          simplifyBroadcast("binary", a_shape, b_shape, y_shape, rank, dims))
    return rc;
  int64_t total = 1;
  for (int i = 0; i < rank; ++i)
    total *= y_shape[i];
  if (total == 0)
    return FCC_OK;
  switch (op) {
  case FCC_BINARY_ADD:
    binaryDispatch(a, b, y, dims, total,
                   [](float u, float v) { return u + v; });
    break;
  case FCC_BINARY_SUB:
    binaryDispatch(a, b, y, dims, total,
                   [](float u, float v) { return u - v; });
    break;
  case FCC_BINARY_MUL:
    binaryDispatch(a, b, y, dims, total,
                   [](float u, float v) { return u * v; });
    break;
  case FCC_BINARY_DIV:
    binaryDispatch(a, b, y, dims, total,
                   [](float u, float v) { return u / v; });
    break;
  }
  return FCC_OK;
}

//===----------------------------------------------------------------------===//
// Sum to shape (backward of broadcasting)
//===----------------------------------------------------------------------===//

// Every y element is owned by one loop iteration and sums its x elements in
// row-major order in double, so the result is independent of the threading.
extern "C" int fcc_cpu_reduce_sum_to(const float *x, const int64_t *x_shape,
                                     const int64_t *y_shape, int rank,
                                     float *y) {
  if (rank < 0 || rank > FCC_MAX_RANK)
    return setError(FCC_ERR_INVALID,
                    format("reduce_sum_to: rank %d is outside [0, %d]", rank,
                           FCC_MAX_RANK));
  for (int i = 0; i < rank; ++i)
    if (y_shape[i] != 1 && y_shape[i] != x_shape[i])
      return setError(FCC_ERR_INVALID,
                      format("reduce_sum_to: dimension %d: target size %lld "
                             "must be 1 or the input size %lld",
                             i, (long long)y_shape[i], (long long)x_shape[i]));
  // Reuse the broadcast simplification with a = x (never broadcast) and
  // b = y: strideB is y's stride (0 on reduced dimensions), strideA x's.
  std::vector<BroadcastDim> dims;
  if (int rc = simplifyBroadcast("reduce_sum_to", x_shape, y_shape, x_shape,
                                 rank, dims))
    return rc;
  int64_t xTotal = 1, yTotal = 1;
  for (int i = 0; i < rank; ++i) {
    xTotal *= x_shape[i];
    yTotal *= y_shape[i];
  }
  if (yTotal == 0)
    return FCC_OK;
  if (xTotal == 0) { // Sums over nothing.
    std::fill(y, y + yTotal, 0.0f);
    return FCC_OK;
  }

  // Split into kept dimensions (y strides advance) and reduced ones. The
  // innermost dimension is the contiguous run handled by the inner loop.
  struct Dim {
    int64_t size, xStride;
  };
  std::vector<Dim> kept, reduced;
  for (const BroadcastDim &d : dims)
    (d.strideB ? kept : reduced).push_back({d.size, d.strideA});
  const bool innerReduced = !dims.empty() && dims.back().strideB == 0;
  const int64_t run = dims.empty() ? 1 : dims.back().size;
  if (!dims.empty())
    (innerReduced ? reduced : kept).pop_back();

  int64_t combos = 1; // Reduced index combinations outside the run.
  for (const Dim &d : reduced)
    combos *= d.size;
  auto reducedOffset = [&](int64_t combo) {
    int64_t off = 0;
    for (int i = int(reduced.size()) - 1; i >= 0; --i) {
      off += (combo % reduced[i].size) * reduced[i].xStride;
      combo /= reduced[i].size;
    }
    return off;
  };
  auto keptOffset = [&](int64_t index) {
    int64_t off = 0;
    for (int i = int(kept.size()) - 1; i >= 0; --i) {
      off += (index % kept[i].size) * kept[i].xStride;
      index /= kept[i].size;
    }
    return off;
  };

  if (innerReduced || dims.empty()) {
    // Each y element sums `combos` contiguous runs of x.
#pragma omp parallel for schedule(static)
    for (int64_t e = 0; e < yTotal; ++e) {
      const float *base = x + keptOffset(e);
      double sum = 0.0;
      for (int64_t r = 0; r < combos; ++r) {
        const float *src = base + reducedOffset(r);
        for (int64_t j = 0; j < run; ++j)
          sum += src[j];
      }
      y[e] = float(sum);
    }
    return FCC_OK;
  }

  // The innermost dimension is kept: y is processed in tiles of consecutive
  // elements so that every reduced step reads a contiguous piece of x.
  constexpr int64_t kTile = 256;
  const int64_t tilesPerRun = (run + kTile - 1) / kTile;
  const int64_t outer = yTotal / run;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < outer * tilesPerRun; ++t) {
    const int64_t o = t / tilesPerRun, start = (t % tilesPerRun) * kTile;
    const int64_t len = std::min(kTile, run - start);
    const float *base = x + keptOffset(o) + start;
    double acc[kTile] = {};
    for (int64_t r = 0; r < combos; ++r) {
      const float *src = base + reducedOffset(r);
      for (int64_t j = 0; j < len; ++j)
        acc[j] += src[j];
    }
    float *dst = y + o * run + start;
    for (int64_t j = 0; j < len; ++j)
      dst[j] = float(acc[j]);
  }
  return FCC_OK;
}
