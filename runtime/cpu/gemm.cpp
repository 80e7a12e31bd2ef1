//===- gemm.cpp - Linear layers: GEMM with a broadcast bias (OpenBLAS) ---===//
//
// y = alpha * op(a) * op(b) + beta * c on row-major matrices. The bias c may
// broadcast (1xN, Mx1, 1x1 or MxN); it is expanded into y first and then folded
// in by sgemm's beta, so no temporary is needed.
//
//===----------------------------------------------------------------------===//
#include "internal.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

using fcc::cpu::format;
using fcc::cpu::setError;

extern "C" void fcc_cpu_gemm(int trans_a, int trans_b, int64_t m, int64_t n,
                             int64_t k, float alpha, const float *a,
                             const float *b, float beta, const float *c,
                             int64_t c_rows, int64_t c_cols, float *y) {
  if (m <= 0 || n <= 0)
    return;
  const bool useC = c != nullptr && beta != 0.0f;
  if (useC && !((c_rows == 1 || c_rows == m) && (c_cols == 1 || c_cols == n))) {
    // The API has no return code: report and poison the output.
    setError(
        FCC_ERR_INVALID,
        format("gemm: bias shape %lldx%lld does not broadcast to %lldx%lld",
               (long long)c_rows, (long long)c_cols, (long long)m,
               (long long)n));
    std::fill(y, y + m * n, std::numeric_limits<float>::quiet_NaN());
    return;
  }

  // y = c broadcast to MxN (or 0 when there is no bias).
  if (useC) {
    const int64_t rowStride = c_rows == 1 ? 0 : c_cols;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      const float *src = c + i * rowStride;
      float *dst = y + i * n;
      if (c_cols == 1)
        std::fill(dst, dst + n, src[0]);
      else
        std::copy(src, src + n, dst);
    }
  }

  if (k <= 0) {
    // Empty inner dimension: the product is zero (sgemm rejects lda = 0).
    if (useC)
      for (int64_t i = 0; i < m * n; ++i)
        y[i] *= beta;
    else
      std::fill(y, y + m * n, 0.0f);
    return;
  }

  const blasint lda = trans_a ? blasint(m) : blasint(k);
  const blasint ldb = trans_b ? blasint(k) : blasint(n);
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, blasint(m), blasint(n),
              blasint(k), alpha, a, lda, b, ldb, useC ? beta : 0.0f, y,
              blasint(n));
}
