//===- common.cpp - Error state and threading of the CPU kernels ---------===//
//
// The pieces of the C API that belong to no kernel family: the thread-local
// last-error message and the thread count shared by all kernels: OpenMP (our
// loops and oneDNN, which is built on the same OpenMP runtime) and OpenBLAS
// (its own pthread pool, used by the GEMM).
//
//===----------------------------------------------------------------------===//
#include "internal.h"

#include <cblas.h>
#include <omp.h>

#include <cstdarg>
#include <cstdio>

namespace {
thread_local std::string lastError;

// The thread counts before the first fcc_cpu_set_num_threads call: they
// honour OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, which a later "restore the
// default" should too.
struct DefaultThreads {
  int omp = omp_get_max_threads();
  int blas = openblas_get_num_threads();
};
const DefaultThreads &defaultThreads() {
  static const DefaultThreads initial;
  return initial;
}
} // namespace

namespace fcc::cpu {

int setError(int code, std::string message) {
  lastError = std::move(message);
  return code;
}

std::string format(const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  char buffer[512];
  std::vsnprintf(buffer, sizeof(buffer), fmt, args);
  va_end(args);
  return buffer;
}

} // namespace fcc::cpu

extern "C" const char *fcc_cpu_last_error(void) { return lastError.c_str(); }

extern "C" void fcc_cpu_set_num_threads(int n) {
  const DefaultThreads &initial = defaultThreads(); // Capture them first.
  omp_set_num_threads(n > 0 ? n : initial.omp);
  openblas_set_num_threads(n > 0 ? n : initial.blas);
}

extern "C" int fcc_cpu_get_num_threads(void) { return omp_get_max_threads(); }
