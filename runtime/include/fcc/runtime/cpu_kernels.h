/*===- cpu_kernels.h - fcc's fp32 CPU kernels (C API) -----------------------===*
 *
 * The CPU kernels behind fcc's in-process evaluator (`fcc run`, conformance
 * tests) and the CPU target of generated trainers. The API is plain C so that
 * generated code and other languages can call it without C++ or MLIR.
 *
 * Conventions
 *  - Tensors are dense, row-major float32. Images are NCHW; convolution weights
 *    are KCRS (out-channels, in-channels/groups, kernel-h, kernel-w) as in ONNX
 *    and PyTorch; linear weights follow fcc.linear's trans_a/trans_b flags.
 *  - Kernels never allocate the tensors they are given. Output buffers never
 *    alias input buffers unless a function says so.
 *  - Functions that can fail return FCC_OK (0) or an error code; the message is
 *    then available from fcc_cpu_last_error() (thread-local).
 *  - Results are deterministic for a fixed number of threads: reductions use a
 *    fixed order (no atomics, static OpenMP schedules).
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_CPU_KERNELS_H
#define FCC_RUNTIME_CPU_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { FCC_OK = 0, FCC_ERR_INVALID = 1, FCC_ERR_UNSUPPORTED = 2, FCC_ERR_BACKEND = 3 };

/* Message of the last failing call on this thread ("" if none). */
const char *fcc_cpu_last_error(void);

/* Number of threads the kernels use (OpenMP). n <= 0 restores the default. */
void fcc_cpu_set_num_threads(int n);
int fcc_cpu_get_num_threads(void);

/*--- Convolution (oneDNN) ---------------------------------------------------*/

/* Memory layouts of 4-d activations. The CPU kernels take NCHW only; the
 * CUDA kernels of convolutions, fused BatchNorm + activation and max pooling
 * (whose windows tile the input) also take NHWC: channels innermost, element
 * (n, c, h, w) at ((n * H + h) * W + w) * C + c. Filters stay KCRS. */
enum { FCC_LAYOUT_NCHW = 0, FCC_LAYOUT_NHWC = 1 };

typedef struct fcc_conv2d_desc {
  int64_t n, c, h, w;             /* input dimensions (whatever the layout) */
  int64_t k, r, s;                /* output channels, kernel height, kernel width */
  int64_t stride_h, stride_w;
  int64_t pad_t, pad_l, pad_b, pad_r;
  int64_t dil_h, dil_w;           /* 1 = dense (ONNX convention) */
  int64_t groups;
  int64_t oh, ow;                 /* output spatial size; see fcc_conv2d_output_size */
  int layout;                     /* FCC_LAYOUT_* of x and y (filters are
                                     always KCRS); NHWC: CUDA plans only */
} fcc_conv2d_desc;

/* Output size of one spatial dimension of a convolution or pooling window:
 * floor((in + pad_begin + pad_end - dil*(kernel-1) - 1) / stride) + 1,
 * or ceil(...) when ceil_mode != 0 (pooling). Returns <= 0 when empty. */
int64_t fcc_window_output_size(int64_t in, int64_t kernel, int64_t stride,
                               int64_t pad_begin, int64_t pad_end,
                               int64_t dilation, int ceil_mode);

/* Fills d->oh/d->ow from the other fields. Returns FCC_ERR_INVALID for
 * inconsistent descriptors (channels not divisible by groups, empty output). */
int fcc_conv2d_desc_finalize(fcc_conv2d_desc *d);

typedef struct fcc_conv2d_plan fcc_conv2d_plan;

/* Creates the primitives for one convolution shape (expensive; create once,
 * run many times). Returns NULL on error (see fcc_cpu_last_error). */
fcc_conv2d_plan *fcc_cpu_conv2d_create(const fcc_conv2d_desc *d);
void fcc_cpu_conv2d_destroy(fcc_conv2d_plan *p);

/* y[n,k,oh,ow] = sum x * w (+ bias[k]); bias may be NULL. */
int fcc_cpu_conv2d_forward(fcc_conv2d_plan *p, const float *x, const float *w,
                           const float *bias, float *y);
/* dx = gradient of the forward w.r.t. x given dy (overwrites dx). */
int fcc_cpu_conv2d_backward_data(fcc_conv2d_plan *p, const float *dy,
                                 const float *w, float *dx);
/* dw (and dbias[k] = sum dy over n,oh,ow if dbias != NULL), overwriting. */
int fcc_cpu_conv2d_backward_filter(fcc_conv2d_plan *p, const float *x,
                                   const float *dy, float *dw, float *dbias);

/*--- Linear / GEMM (OpenBLAS) -------------------------------------------------*/

/* y[M,N] = alpha * op(a) * op(b) + beta * c, where op(a) is a (MxK) or its
 * transpose (trans_a, a stored KxM) and op(b) is b (KxN) or its transpose
 * (trans_b, b stored NxK). c may be NULL (then beta is ignored) or have shape
 * c_rows x c_cols that broadcasts to MxN (1 or M rows, 1 or N columns). */
void fcc_cpu_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const float *a, const float *b, float beta,
                  const float *c, int64_t c_rows, int64_t c_cols, float *y);

/*--- Batch normalisation (per channel over N,H,W) ---------------------------*/

/* y = scale * (x - mean) / sqrt(var + eps) + shift, with the given statistics. */
void fcc_cpu_batch_norm_inference(const float *x, const float *scale,
                                  const float *shift, const float *mean,
                                  const float *var, float eps, int64_t n,
                                  int64_t c, int64_t hw, float *y);

/* Training-mode forward: computes the batch mean and biased variance per
 * channel (in double precision accumulators), normalises with them, and writes
 * batch_mean[c], batch_var[c] (biased) and y. */
void fcc_cpu_batch_norm_train_forward(const float *x, const float *scale,
                                      const float *shift, float eps, int64_t n,
                                      int64_t c, int64_t hw, float *y,
                                      float *batch_mean, float *batch_var);

/* running = (1 - momentum) * running + momentum * batch (PyTorch convention),
 * where the variance folded in is batch_var * count/(count-1) if unbiased != 0
 * (PyTorch) or batch_var itself (ONNX). count = n*h*w. In place on running_*. */
void fcc_cpu_batch_norm_update_running(float *running_mean, float *running_var,
                                       const float *batch_mean,
                                       const float *batch_var, float momentum,
                                       int unbiased, int64_t count, int64_t c);

/* Training-mode backward given the forward's batch statistics:
 * dx, dscale[c] = sum dy * xhat, dshift[c] = sum dy. Any output may be NULL. */
void fcc_cpu_batch_norm_backward(const float *x, const float *dy,
                                 const float *scale, const float *batch_mean,
                                 const float *batch_var, float eps, int64_t n,
                                 int64_t c, int64_t hw, float *dx,
                                 float *dscale, float *dshift);

/*--- Fused BatchNorm + activation (+ max pool) (+ residual) -- fused.cpp ----*/

/* Activations of the fused kernels (fcc.bn_act's `activation`). */
enum { FCC_ACT_NONE = 0, FCC_ACT_RELU = 1, FCC_ACT_CELU = 2 };


/* y = [max_pool(] act(batch_norm(x)) [)] [+ residual], with the numerics of
 * the unfused kernels (fcc_cpu_batch_norm_*, fcc_cpu_relu/celu_forward,
 * fcc_cpu_max_pool2d_forward, fcc_cpu_binary). The pool, if any, has no
 * padding, dilation 1 and floor rounding. */
typedef struct fcc_bn_act_desc {
  int64_t n, c, h, w;           /* input x (dimensions, whatever the layout) */
  int activation;               /* FCC_ACT_* */
  float alpha;                  /* CELU */
  float eps;
  int64_t pool_kh, pool_kw;     /* 0, 0: no pooling */
  int64_t pool_sh, pool_sw;
  int64_t oh, ow;               /* output spatial size (filled by finalize) */
  int layout;                   /* FCC_LAYOUT_* of x, residual and y */
} fcc_bn_act_desc;

/* Checks the descriptor and fills oh/ow. */
int fcc_bn_act_desc_finalize(fcc_bn_act_desc *d);

/* Training forward: one read of x for the batch statistics (shifted sums in
 * double), one sweep that normalises, activates, pools and adds the residual
 * (may be NULL; y may alias it), writing only y [n, c, oh, ow], batch_mean[c]
 * and the biased batch_var[c]. Running statistics:
 * fcc_cpu_batch_norm_update_running. */
void fcc_cpu_bn_act_train_forward(const fcc_bn_act_desc *d, const float *x,
                                  const float *scale, const float *shift,
                                  const float *residual, float *y,
                                  float *batch_mean, float *batch_var);

/* Inference forward with the running statistics (residual may be NULL; y may
 * alias it). */
void fcc_cpu_bn_act_inference(const fcc_bn_act_desc *d, const float *x,
                              const float *scale, const float *shift,
                              const float *mean, const float *var,
                              const float *residual, float *y);

/* Backward of the training forward given dy [n, c, oh, ow] and its batch
 * statistics: recomputes the normalised and activated values from x, routes
 * dy to the first maximum of each pooling window, applies the activation's
 * derivative and the BatchNorm backward. dx [n, c, h, w] is overwritten (it
 * also serves as scratch); dscale/dshift may be NULL. The residual's
 * gradient is dy itself. */
void fcc_cpu_bn_act_backward(const fcc_bn_act_desc *d, const float *x,
                             const float *dy, const float *scale,
                             const float *shift, const float *batch_mean,
                             const float *batch_var, float *dx, float *dscale,
                             float *dshift);

/* Folds an inference BatchNorm over k channels into the convolution before
 * it: m = scale / sqrt(var + eps); w_out[k, :] = w[k, :] * m[k] (per_k =
 * C/G*R*S elements each); b_out[k] = (b[k] - mean[k]) * m[k] + shift[k], with
 * b = NULL meaning zeros. w_out may alias w, b_out may alias b. */
void fcc_cpu_fold_bn(const float *w, const float *b, const float *scale,
                     const float *shift, const float *mean, const float *var,
                     float eps, int64_t k, int64_t per_k, float *w_out,
                     float *b_out);

/*--- Activations (elementwise, count elements) -------------------------------*/

void fcc_cpu_relu_forward(const float *x, float *y, int64_t count);
/* dx = dy where x > 0 else 0 (x is the forward input; may alias dy/dx). */
void fcc_cpu_relu_backward(const float *x, const float *dy, float *dx,
                           int64_t count);
/* CELU: max(0,x) + min(0, alpha*(exp(x/alpha)-1)). */
void fcc_cpu_celu_forward(const float *x, float alpha, float *y, int64_t count);
/* dx = dy * (x > 0 ? 1 : exp(x/alpha)). */
void fcc_cpu_celu_backward(const float *x, const float *dy, float alpha,
                           float *dx, int64_t count);

/*--- Pooling (NCHW) ----------------------------------------------------------*/

typedef struct fcc_pool2d_desc {
  int64_t n, c, h, w;
  int64_t kh, kw;
  int64_t stride_h, stride_w;
  int64_t pad_t, pad_l, pad_b, pad_r;
  int64_t dil_h, dil_w;           /* max pooling only; 1 = dense */
  int ceil_mode;
  int count_include_pad;          /* average pooling only */
  int64_t oh, ow;                 /* filled by fcc_pool2d_desc_finalize */
  int layout;                     /* FCC_LAYOUT_*; NHWC: CUDA max pooling
                                     whose windows tile the input only */
} fcc_pool2d_desc;

int fcc_pool2d_desc_finalize(fcc_pool2d_desc *d);

/* Max over each window; padded positions never win. With ceil_mode, windows
 * that start inside the padded input are kept (ONNX/PyTorch rule). */
void fcc_cpu_max_pool2d_forward(const fcc_pool2d_desc *d, const float *x,
                                float *y);
/* dx (overwritten) gets dy routed to the first maximum of each window. */
void fcc_cpu_max_pool2d_backward(const fcc_pool2d_desc *d, const float *x,
                                 const float *dy, float *dx);
/* Average over each window. The divisor is the window size clipped to the
 * padded input if count_include_pad, else the number of real input elements. */
void fcc_cpu_avg_pool2d_forward(const fcc_pool2d_desc *d, const float *x,
                                float *y);
void fcc_cpu_avg_pool2d_backward(const fcc_pool2d_desc *d, const float *dy,
                                 float *dx);

/*--- Broadcasting binary ops and reductions ----------------------------------*/

enum { FCC_BINARY_ADD = 0, FCC_BINARY_SUB = 1, FCC_BINARY_MUL = 2, FCC_BINARY_DIV = 3 };
#define FCC_MAX_RANK 8

/* y = a OP b with numpy broadcasting. Shapes are given right-aligned to y's
 * rank: a_shape/b_shape have `rank` entries each (size-1 where broadcast). */
int fcc_cpu_binary(int op, const float *a, const int64_t *a_shape,
                   const float *b, const int64_t *b_shape,
                   const int64_t *y_shape, int rank, float *y);

/* y = x * alpha + beta (elementwise, may alias). */
void fcc_cpu_affine(const float *x, float alpha, float beta, float *y,
                    int64_t count);

/* Sums x (shape x_shape, rank entries) over the broadcast dimensions down to
 * y_shape (same rank, entries 1 or equal to x's): the backward of broadcasting. */
int fcc_cpu_reduce_sum_to(const float *x, const int64_t *x_shape,
                          const int64_t *y_shape, int rank, float *y);

/*--- Softmax / loss -----------------------------------------------------------*/

/* Softmax over the middle dimension of an (outer, dim, inner) view. */
void fcc_cpu_softmax(const float *x, int64_t outer, int64_t dim, int64_t inner,
                     float *y);

/* Softmax cross-entropy with label smoothing over logits[n, classes]:
 * target distribution q = (1-ls) * onehot(label) + ls / classes.
 * loss_per_row[i] = -sum_j q_j log softmax(x_i)_j; returns the mean loss.
 * If dlogits != NULL it receives d(mean loss)/d logits = (softmax - q) / n.
 * If correct != NULL it receives the number of rows whose argmax (first max)
 * equals the label. A row labelled FCC_IGNORE_LABEL (-1) is padding (the last,
 * partial test batch): it adds 0 to the loss sum, gets a zero gradient and is
 * never correct; the mean still divides by n. Other labels outside
 * [0, classes) are an error (returns NaN). */
#define FCC_IGNORE_LABEL (-1)
double fcc_cpu_softmax_xent(const float *logits, const int32_t *labels,
                            int64_t n, int64_t classes, float label_smoothing,
                            float *loss_per_row, float *dlogits,
                            int64_t *correct);

/*--- Dropout -----------------------------------------------------------------*/

/* Fills mask[i] with 0 or 1/(1-ratio) from a counter-based generator keyed by
 * (seed, stream): element i is kept iff uniform(seed, stream, i) >= ratio.
 * The same (seed, stream) gives the same mask on every machine and thread count. */
void fcc_cpu_dropout_mask(uint64_t seed, uint64_t stream, float ratio,
                          float *mask, int64_t count);
/* y = x * mask (elementwise; also the backward: dx = dy * mask). */
void fcc_cpu_mul_elementwise(const float *x, const float *mask, float *y,
                             int64_t count);

/*--- Half precision (emulated) and loss scaling ---------------------------*/

/* Element types of fcc_cpu_cast. */
#define FCC_DTYPE_F32 0
#define FCC_DTYPE_F16 1
#define FCC_DTYPE_BF16 2

/* The nearest fp16 / bf16 value of x (round to nearest, ties to even;
 * overflow to infinity; fp16 subnormals; NaN stays NaN), as a float. The CPU
 * target keeps half-precision tensors in float buffers holding only such
 * values: that is exactly 16-bit storage. */
float fcc_round_f16(float x);
float fcc_round_bf16(float x);
/* In place over count floats. */
void fcc_cpu_round_f16(float *x, int64_t count);
void fcc_cpu_round_bf16(float *x, int64_t count);
/* y = x converted to `to` (FCC_DTYPE_*), i.e. rounded for a narrower type. */
void fcc_cpu_cast(const float *x, float *y, int64_t count, int to);
/* 1 if every element is finite, else 0. */
int fcc_cpu_all_finite(const float *x, int64_t count);

/*--- Optimizer, EMA, metrics, test-time augmentation -----------------------*/

/* PyTorch SGD (dampening 0) on `count` elements, in place on param and buf:
 *   g' = grad + wd * param;  buf = momentum * buf + g';
 *   param -= lr * (nesterov ? g' + momentum * buf : buf)
 * (lr and wd already include the per-group multipliers). */
void fcc_cpu_sgd_update(float *param, const float *grad, float *buf,
                        int64_t count, float lr, float momentum, float wd,
                        int nesterov);
/* The same with dynamic loss scaling: the gradient is divided by grad_scale
 * first, and nothing changes when apply == 0 (a step whose gradients
 * overflowed is skipped). */
void fcc_cpu_sgd_update_scaled(float *param, const float *grad, float *buf,
                               int64_t count, float lr, float momentum,
                               float wd, int nesterov, float grad_scale,
                               int apply);
/* ema = decay * ema + (1 - decay) * value, in place. */
void fcc_cpu_ema_update(float *ema, const float *value, float decay,
                        int64_t count);
/* Number of rows of logits[n, classes] whose first maximum is at the label
 * (rows labelled FCC_IGNORE_LABEL never count). */
int64_t fcc_cpu_count_correct(const float *logits, const int32_t *labels,
                              int64_t n, int64_t classes);
/* y[n, c, h, w] = x[n, c, h, W - 1 - w] (y must not alias x). */
void fcc_cpu_flip_w(const float *x, int64_t n, int64_t c, int64_t h, int64_t w,
                    float *y);

/*--- Counter-based random numbers (shared by init, dropout, augmentation) ---*/

/* Philox-4x32-10 keyed by (seed, stream); returns the 32 random bits number
 * `index` of that stream. Pure function: no state, reproducible anywhere. */
uint32_t fcc_random_u32(uint64_t seed, uint64_t stream, uint64_t index);
/* Uniform float in [0, 1) from fcc_random_u32 (24 high bits). */
float fcc_random_uniform(uint64_t seed, uint64_t stream, uint64_t index);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FCC_RUNTIME_CPU_KERNELS_H */
