/*===- window.h - Output size of convolution/pooling windows ----------------===*
 *
 * The one definition of how many windows fit along a dimension, shared by the
 * dialect's verifiers (ir/), the importer and the kernels. Header-only and
 * dependency-free so that every layer can include it.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_WINDOW_H
#define FCC_RUNTIME_WINDOW_H

#include <stdint.h>

/* floor((in + pad_begin + pad_end - dilation*(kernel-1) - 1) / stride) + 1, or
 * the ceiling with ceil_mode; in ceil mode a last window that would start in
 * the end padding (at or beyond in + pad_begin) is dropped, as in ONNX and
 * PyTorch. Returns a value <= 0 when no window fits or arguments are invalid. */
static inline int64_t fcc_window_output_size_rule(int64_t in, int64_t kernel,
                                                  int64_t stride,
                                                  int64_t pad_begin,
                                                  int64_t pad_end,
                                                  int64_t dilation,
                                                  int ceil_mode) {
  if (in <= 0 || kernel <= 0 || stride <= 0 || dilation <= 0 || pad_begin < 0 ||
      pad_end < 0)
    return 0;
  int64_t span = in + pad_begin + pad_end - dilation * (kernel - 1) - 1;
  if (span < 0)
    return 0;
  int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad_begin)
    --out;
  return out;
}

#endif /* FCC_RUNTIME_WINDOW_H */
