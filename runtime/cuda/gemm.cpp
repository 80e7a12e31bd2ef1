//===- gemm.cpp - Linear layers: GEMM with a broadcast bias (cuBLASLt) ----===//
//
// y[M,N] = alpha * op(a) * op(b) + beta * c on row-major matrices, as
// fcc_cpu_gemm, with cublasLtMatmul and fp32 accumulation for every storage
// type (CUBLAS_COMPUTE_32F, scale type fp32: true fp32 for fp32 data, no
// TF32; tensor cores with fp32 accumulation for fp16/bf16; split-K partial
// sums only reduced in fp32, never in the half output type).
//
// Row-major without copies: a row-major MxN matrix is the column-major NxM
// matrix of its transpose, so y^T = op(b)^T op(a)^T is computed by handing
// cuBLASLt the operands swapped (b first) with the same transpose flags.
//
// Why cuBLASLt rather than cublasGemmEx:
//  - Bias fusion. The bias of a linear layer is a row vector 1xN added
//    with beta = 1. In the swapped column-major view it holds one value per
//    row of D (N rows), which is exactly what CUBLASLT_EPILOGUE_BIAS
//    broadcasts, so it is added in the GEMM's epilogue (in fp32, before the
//    one rounding to the storage type) instead of being expanded into y by
//    a separate kernel and read back through beta. The bias has the storage
//    type of y, which is the type the epilogue expects for D of type
//    fp32/fp16/bf16 (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE left at its
//    default, "same as D"). Other bias shapes (Mx1, 1x1, MxN) and other
//    betas keep the general path: c expanded into y by a small kernel, then
//    folded in by beta (y is both C and D, which cuBLASLt allows in place).
//  - Algorithm choice once per shape. cublasLtMatmulAlgoGetHeuristic runs
//    once per distinct (dtype, transposes, M, N, K, epilogue, pointer
//    alignments) and its result is kept with the descriptors in a small
//    host-side map until fcc_cuda_shutdown. Creating descriptors and asking
//    the heuristic are host-only (no GPU work, no device allocation), so a
//    first call inside a graph capture is safe (generated trainers run their
//    first train step outside a capture, but a library caller may capture
//    a shape's first call).
//  - The workspace is the context's cuBLAS workspace (allocated once by
//    fcc_cuda_init, never moved, so captured graphs stay valid); it is
//    shared with cuBLAS safely because every call is ordered on the main
//    stream (fcc_cuda_gemm refuses the side stream).
//
// Fallbacks, never a crash: when the bias is not aligned enough for the
// epilogue or cuBLASLt has no algorithm with it, the bias takes the
// general path; when cuBLASLt has no algorithm at all (or rejects the
// call as unsupported), the GEMM is done as before by cublasGemmEx.
//
//===----------------------------------------------------------------------===//
#include "handles.h"

#include <climits>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

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

// The largest power of two up to 256 that divides the address: what the
// heuristic must assume about a buffer (its default is 256, which buffers
// carved out of an arena need not meet).
uint32_t alignmentOf(const void *p) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  uint32_t alignment = 256;
  while (alignment > 1 && (address & (alignment - 1)) != 0)
    alignment >>= 1;
  return alignment;
}

// Bias vectors less aligned than this take the general path: bias
// epilogues are known to reject (or be mis-chosen for) pointers aligned
// to less than 16 bytes on some GPUs.
constexpr uint32_t kMinBiasAlignment = 16;

// (dtype, trans_a, trans_b, m, n, k, fused bias, alignment of a, b, y and
// the bias (0 without)): everything the choice of algorithm depends on.
using PlanKey = std::tuple<int, int, int, int64_t, int64_t, int64_t, bool,
                           uint32_t, uint32_t, uint32_t, uint32_t>;

// The descriptors and the chosen algorithm of one key; usable is false
// when cuBLASLt has none (the call then goes to cublasGemmEx).
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  // In the swapped column-major view: A is b, B is a, C = D is y.
  cublasLtMatrixLayout_t aLayout = nullptr, bLayout = nullptr,
                         yLayout = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool usable = false;
};

// Calls are made from the training thread; the mutex only keeps the map
// and the descriptor's bias pointer consistent should another thread call.
std::mutex plansMutex;
std::map<PlanKey, Plan> plans;

void destroyPlan(Plan &p) {
  if (p.yLayout)
    cublasLtMatrixLayoutDestroy(p.yLayout);
  if (p.bLayout)
    cublasLtMatrixLayoutDestroy(p.bLayout);
  if (p.aLayout)
    cublasLtMatrixLayoutDestroy(p.aLayout);
  if (p.op)
    cublasLtMatmulDescDestroy(p.op);
  p = Plan();
}

// Shape of the call, for messages: "7x5x9 NT f16".
std::string describe(int trans_a, int trans_b, int64_t m, int64_t n,
                     int64_t k, int dtype) {
  return format("%lldx%lldx%lld %c%c %s", (long long)m, (long long)n,
                (long long)k, trans_a ? 'T' : 'N', trans_b ? 'T' : 'N',
                dtypeName(dtype));
}

// Creates the plan of `key` (descriptors, then the heuristic's best
// algorithm). Host-only: safe during graph capture. Returns FCC_OK (the
// plan may still be unusable: no algorithm) or an error, recorded.
int createPlan(const PlanKey &key, const void *bias, Plan &p,
               const char *fn) {
  const auto [dtype, transA, transB, m, n, k, fused, alignA, alignB, alignY,
              alignBias] = key;
  (void)alignBias; // The heuristic reads the bias pointer itself.
  const cudaDataType_t type = blasType(dtype);
  const cublasOperation_t opA = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opB = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasLtEpilogue_t epilogue =
      fused ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  // Column-major operands of the swapped product D[n, m] = op(b') op(a').
  const uint64_t aRows = uint64_t(transB ? k : n),
                 aCols = uint64_t(transB ? n : k);
  const uint64_t bRows = uint64_t(transA ? m : k),
                 bCols = uint64_t(transA ? k : m);

  const char *what = "cublasLtMatmulDescCreate";
  cublasStatus_t s = cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F,
                                              CUDA_R_32F);
  // A failed call: no plan, and an error naming the call and the shape.
  auto failed = [&] {
    destroyPlan(p);
    return setError(FCC_ERR_BACKEND,
                    format("%s: %s (%s): %s", fn, what,
                           describe(transA, transB, m, n, k, dtype).c_str(),
                           cublasGetStatusString(s)));
  };
  if (s == CUBLAS_STATUS_SUCCESS) {
    what = "cublasLtMatmulDescSetAttribute";
    s = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA,
                                       &opA, sizeof opA);
  }
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB,
                                       &opB, sizeof opB);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                       &epilogue, sizeof epilogue);
  // The heuristic reads the bias pointer's alignment (not its data).
  if (s == CUBLAS_STATUS_SUCCESS && fused)
    s = cublasLtMatmulDescSetAttribute(
        p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
  if (s == CUBLAS_STATUS_SUCCESS) {
    what = "cublasLtMatrixLayoutCreate";
    s = cublasLtMatrixLayoutCreate(&p.aLayout, type, aRows, aCols,
                                   int64_t(aRows));
  }
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatrixLayoutCreate(&p.bLayout, type, bRows, bCols,
                                   int64_t(bRows));
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatrixLayoutCreate(&p.yLayout, type, uint64_t(n), uint64_t(m),
                                   int64_t(n));
  if (s != CUBLAS_STATUS_SUCCESS)
    return failed();

  cublasLtMatmulPreference_t pref = nullptr;
  what = "cublasLtMatmulPreferenceCreate";
  s = cublasLtMatmulPreferenceCreate(&pref);
  const uint64_t maxWorkspace = cublasWorkspaceSize();
  // Partial sums of split-K algorithms reduced in fp32 only (as
  // CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION for cuBLAS): not in
  // the output type, not in place in the output buffer.
  const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  auto setPref = [&](cublasLtMatmulPreferenceAttributes_t attr,
                     const void *value, size_t size) {
    if (s == CUBLAS_STATUS_SUCCESS) {
      what = "cublasLtMatmulPreferenceSetAttribute";
      s = cublasLtMatmulPreferenceSetAttribute(pref, attr, value, size);
    }
  };
  setPref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &maxWorkspace,
          sizeof maxWorkspace);
  setPref(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction,
          sizeof reduction);
  setPref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alignB, sizeof alignB);
  setPref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alignA, sizeof alignA);
  setPref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alignY, sizeof alignY);
  setPref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alignY, sizeof alignY);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (s == CUBLAS_STATUS_SUCCESS) {
    what = "cublasLtMatmulAlgoGetHeuristic";
    s = cublasLtMatmulAlgoGetHeuristic(cublasLtHandle(), p.op, p.aLayout,
                                       p.bLayout, p.yLayout, p.yLayout, pref,
                                       1, &result, &found);
  }
  if (pref)
    cublasLtMatmulPreferenceDestroy(pref);
  // The heuristic may touch the CUDA runtime (device properties); nothing
  // it leaves behind is a kernel's failure.
  clearTransientErrors();
  if (s == CUBLAS_STATUS_NOT_SUPPORTED ||
      (s == CUBLAS_STATUS_SUCCESS &&
       (found < 1 || result.state != CUBLAS_STATUS_SUCCESS ||
        result.workspaceSize > maxWorkspace))) {
    // No algorithm: the plan stays, unusable, so that the fallback is
    // taken without asking again.
    destroyPlan(p);
    return FCC_OK;
  }
  if (s != CUBLAS_STATUS_SUCCESS)
    return failed();
  p.algo = result.algo;
  p.usable = true;
  return FCC_OK;
}

// The plan of `key`, created at its first use. Returns FCC_OK with *out
// set (possibly unusable) or an error, recorded. Called with plansMutex
// held.
int findPlan(const PlanKey &key, const void *bias, Plan **out,
             const char *fn) {
  auto it = plans.find(key);
  if (it == plans.end()) {
    Plan p;
    if (int rc = createPlan(key, bias, p, fn))
      return rc;
    it = plans.emplace(key, p).first;
  }
  *out = &it->second;
  return FCC_OK;
}

// The cuBLAS path (before cuBLASLt, and its fallback): c expanded into y,
// then cublasGemmEx with beta.
int gemmEx(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
           float alpha, const void *a, const void *b, float beta,
           const void *c, int64_t c_rows, int64_t c_cols, void *y, int dtype,
           bool useC, const char *fn) {
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

} // namespace

void fcc::cuda::releaseGemmPlans() {
  std::lock_guard<std::mutex> lock(plansMutex);
  for (auto &entry : plans)
    destroyPlan(entry.second);
  plans.clear();
}

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
  if (int rc = refuseSideStream(fn))
    return rc;
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

  // A row-vector bias added with beta 1 (a linear layer) goes into the
  // epilogue; y is then neither expanded nor read.
  bool fused = useC && beta == 1.0f && c_rows == 1 && c_cols == n &&
               alignmentOf(c) >= kMinBiasAlignment;
  std::lock_guard<std::mutex> lock(plansMutex);
  Plan *plan = nullptr;
  auto keyOf = [&](bool withBias) {
    return PlanKey(dtype, trans_a ? 1 : 0, trans_b ? 1 : 0, m, n, k, withBias,
                   alignmentOf(a), alignmentOf(b), alignmentOf(y),
                   withBias ? alignmentOf(c) : 0u);
  };
  if (fused) {
    if (int rc = findPlan(keyOf(true), c, &plan, fn))
      return rc;
    fused = plan->usable;
  }
  if (!fused)
    if (int rc = findPlan(keyOf(false), nullptr, &plan, fn))
      return rc;
  if (!plan->usable)
    return gemmEx(trans_a, trans_b, m, n, k, alpha, a, b, beta, c, c_rows,
                  c_cols, y, dtype, useC, fn);

  if (useC && !fused &&
      !broadcastMatrix(c, c_rows, c_cols, m, n, 1.0f, false, y, dtype, fn))
    return FCC_ERR_BACKEND;
  cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
  if (fused)
    s = cublasLtMatmulDescSetAttribute(
        plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &c, sizeof c);
  const float betaUsed = useC && !fused ? beta : 0.0f;
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmul(cublasLtHandle(), plan->op, &alpha, b, plan->aLayout,
                       a, plan->bLayout, &betaUsed, y, plan->yLayout, y,
                       plan->yLayout, &plan->algo, cublasWorkspace(),
                       cublasWorkspaceSize(), stream());
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) {
    // Rejected before anything was enqueued: cublasGemmEx from now on for
    // this key (expanding c again is harmless: y = c either way).
    destroyPlan(*plan);
    return gemmEx(trans_a, trans_b, m, n, k, alpha, a, b, beta, c, c_rows,
                  c_cols, y, dtype, useC, fn);
  }
  if (s != CUBLAS_STATUS_SUCCESS)
    return setError(FCC_ERR_BACKEND,
                    format("%s: cublasLtMatmul (%s%s): %s", fn,
                           describe(trans_a, trans_b, m, n, k, dtype).c_str(),
                           fused ? ", bias epilogue" : "",
                           cublasGetStatusString(s)));
  return FCC_OK;
}
