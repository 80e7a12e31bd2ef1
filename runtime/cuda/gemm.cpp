//===- gemm.cpp - Linear layers: GEMM with a broadcast bias (cuBLAS) ------===//
//
// y[M,N] = alpha * op(a) * op(b) + beta * c on row-major matrices, as
// fcc_cpu_gemm, with cublasGemmEx and fp32 accumulation for every storage
// type (CUBLAS_COMPUTE_32F: true fp32 for fp32 data, tensor cores with fp32
// accumulation for fp16/bf16).
//
// Row-major without copies: a row-major MxN matrix is the column-major NxM
// matrix of its transpose, so y^T = op(b)^T op(a)^T is computed by handing
// cuBLAS the operands swapped (b first) with the same transpose flags.
//
// The bias c broadcasts (1xN, Mx1, 1x1 or MxN): it is expanded into y first
// by a small kernel and then folded in by the GEMM's beta, as on the CPU.
//
//===----------------------------------------------------------------------===//
#include "handles.h"

#include <climits>

using namespace fcc::cuda;

namespace {

cudaDataType_t blasType(int dtype) {
  switch (dtype) {
  case FCC_DTYPE_F16:
    return CUDA_R_16F;
  case FCC_DTYPE_BF16:
    return CUDA_R_16BF;
  default:
    return CUDA_R_32F;
  }
}

} // namespace

extern "C" int fcc_cuda_gemm(int trans_a, int trans_b, int64_t m, int64_t n,
                             int64_t k, float alpha, const void *a,
                             const void *b, float beta, const void *c,
                             int64_t c_rows, int64_t c_cols, void *y,
                             int dtype) {
  const char *fn = "fcc_cuda_gemm";
  if (!initialised())
    return setError(FCC_ERR_INVALID,
                    format("%s: the CUDA runtime is not initialised", fn));
  if (dtypeSize(dtype) == 0)
    return setError(FCC_ERR_INVALID, format("%s: unknown dtype %d", fn, dtype));
  if (m <= 0 || n <= 0)
    return FCC_OK;
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
    return setError(FCC_ERR_UNSUPPORTED,
                    format("%s: %lldx%lldx%lld exceeds cuBLAS's int range", fn,
                           (long long)m, (long long)n, (long long)k));
  const bool useC = c != nullptr && beta != 0.0f;
  if (useC && !((c_rows == 1 || c_rows == m) && (c_cols == 1 || c_cols == n)))
    return setError(FCC_ERR_INVALID,
                    format("%s: bias shape %lldx%lld does not broadcast to "
                           "%lldx%lld",
                           fn, (long long)c_rows, (long long)c_cols,
                           (long long)m, (long long)n));

  if (k <= 0) {
    // Empty inner dimension: the product is zero (cuBLAS rejects lda = 0):
    // y = beta * c (c broadcast, then scaled, as the CPU does) or zeros.
    if (useC)
      return broadcastMatrix(c, c_rows, c_cols, m, n, beta, true, y, dtype, fn)
                 ? FCC_OK
                 : FCC_ERR_BACKEND;
    return cudaCheck(cudaMemsetAsync(y, 0, size_t(m * n * dtypeSize(dtype)),
                                     stream()),
                     fn, "cudaMemsetAsync");
  }
  if (useC &&
      !broadcastMatrix(c, c_rows, c_cols, m, n, 1.0f, false, y, dtype, fn))
    return FCC_ERR_BACKEND;

  const cudaDataType_t type = blasType(dtype);
  const int lda = int(trans_a ? m : k);
  const int ldb = int(trans_b ? k : n);
  const float betaUsed = useC ? beta : 0.0f;
  cublasStatus_t s = cublasGemmEx(
      cublasHandle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m), int(k), &alpha, b,
      type, ldb, a, type, lda, &betaUsed, y, type, int(n), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS)
    return setError(FCC_ERR_BACKEND,
                    format("%s: cublasGemmEx (%lldx%lldx%lld, %s): %s", fn,
                           (long long)m, (long long)n, (long long)k,
                           dtypeName(dtype), cublasGetStatusString(s)));
  return FCC_OK;
}
