/*===- cuda_codegen.h - Helpers for generated CUDA trainers ---------------===*
 *
 * The CUDA counterpart of cpu_codegen.h: the same helper names, so that the
 * code generator emits the same calls for both targets, with the GPU's
 * conventions (cuda_kernels.h): tensors are device pointers and scalars that
 * change per step are device pointers too (`ls`, `loss_grad`, the finite
 * flag), so a captured CUDA graph reads the values of the current step.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_CUDA_CODEGEN_H
#define FCC_RUNTIME_CUDA_CODEGEN_H

#include "fcc/runtime/comm_cuda.h"
#include "fcc/runtime/cuda_kernels.h"
#include "fcc/runtime/program.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A failing library call inside a step is a bug in fcc or a broken device:
 * report it and stop rather than train on garbage. */
static inline void fcc_check(int rc, const char *what) {
  if (rc != 0) {
    fprintf(stderr, "fcc trainer: GPU error in %s: %s\n", what,
            fcc_cuda_last_error());
    abort();
  }
}

static inline void fcc_metric_loss(float *metrics, const float *logits,
                                   const int32_t *labels, int64_t n,
                                   int64_t classes,
                                   const float *label_smoothing) {
  fcc_cuda_metric_loss(metrics, logits, labels, n, classes, label_smoothing);
}

static inline void fcc_metric_correct(float *metrics, const float *logits,
                                      const int32_t *labels, int64_t n,
                                      int64_t classes) {
  fcc_cuda_metric_correct(metrics, logits, labels, n, classes);
}

static inline void fcc_softmax_xent_grad(const float *logits,
                                         const int32_t *labels, int64_t n,
                                         int64_t classes,
                                         const float *label_smoothing,
                                         const float *loss_grad,
                                         float *dlogits) {
  fcc_cuda_softmax_xent_grad(logits, labels, n, classes, label_smoothing,
                             loss_grad, dlogits);
}

static inline void fcc_finite_begin(float *finite) {
  fcc_cuda_finite_begin(finite);
}
static inline void fcc_finite_and(float *finite, const float *grad,
                                  int64_t count) {
  fcc_cuda_finite_and(finite, grad, count);
}
static inline void fcc_metric_skipped(float *metrics, const float *finite) {
  fcc_cuda_metric_skipped(metrics, finite);
}

static inline void fcc_copy_f32(float *dst, const float *src, int64_t count) {
  if (dst != src)
    fcc_check(fcc_cuda_copy(dst, src, count * (int64_t)sizeof(float)),
              "copy");
}

static inline void fcc_copy_bytes(void *dst, const void *src, int64_t bytes) {
  if (dst != src)
    fcc_check(fcc_cuda_copy(dst, src, bytes), "copy");
}

/* Whether train_step is captured once as a CUDA graph and replayed (the
 * default); FCC_CUDA_GRAPHS=0 runs the kernels directly (debugging). */
static inline int fcc_cuda_graphs_enabled(void) {
  const char *v = getenv("FCC_CUDA_GRAPHS");
  return !(v && v[0] == '0');
}

#endif /* FCC_RUNTIME_CUDA_CODEGEN_H */
