/*===- program.h - The interface between generated code and the trainer ---===*
 *
 * `fcc compile` emits a translation unit that defines fcc_generated_program():
 * a description of the compiled model (its parameters, the compile-time
 * defaults of the recipe) and entry points for one training step, one
 * evaluation step and the EMA update. The trainer main (runtime/trainer/)
 * owns the data pipeline, the training loop, all persistent state buffers
 * (parameters, optimizer state, EMA copies) and the command line; generated
 * code owns its scratch arena and kernel plans.
 *
 * All pointers passed to the entry points point to memory of the program's
 * target (host memory for "cpu", device memory for "cuda"). Entry points are
 * not reentrant: one step at a time.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_PROGRAM_H
#define FCC_RUNTIME_PROGRAM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FCC_PROGRAM_ABI_VERSION 5
#define FCC_MAX_PARAM_RANK 4

/* One parameter of the model (a function argument with #fcc.param). */
typedef struct fcc_param_info {
  const char *name;         /* e.g. "layer1.conv.weight" */
  int role;                 /* enum fcc_param_role (init.h) */
  int trainable;            /* gets a gradient and an optimizer update */
  int rank;
  int64_t shape[FCC_MAX_PARAM_RANK];
  int64_t numel;
  int64_t fan_in;           /* for PyTorch default init of weights/biases; 0 otherwise */
  const float *init;        /* initial values (numel floats, host memory) or NULL:
                               then fcc_param_init(role, name, numel, fan_in, seed) */
  float lr_mult, wd_mult;   /* per-group multipliers baked into the update */
} fcc_param_info;

/* A buffer of per-rank state that train_step reads and updates besides the
 * parameters and momentum: the error-feedback residual of a compressed
 * gradient ("residual:<parameter>" or "residual:entire-model"). Zero at the
 * start of a run; checkpointed with the rest of the state. */
typedef struct fcc_state_info {
  const char *name;
  int64_t numel;
} fcc_state_info;

/* Run-time hyper-parameters of one training step. */
typedef struct fcc_hyper {
  float lr;                 /* learning rate of this step (before lr_mult) */
  float momentum;
  float weight_decay;       /* L2, added to the gradient (before wd_mult) */
  float nesterov;           /* 1 = Nesterov momentum, 0 = classical */
  float label_smoothing;
  float loss_scale;         /* 1 unless the program does loss scaling */
  uint64_t seed;            /* per-step seed (dropout masks) */
} fcc_hyper;

/* Compile-time defaults of the run-time flags (from --recipe and fcc flags). */
typedef struct fcc_recipe {
  const char *name;         /* "page24", "bot10", "custom" */
  int epochs;
  const char *lr_knots;     /* "E0:LR0,E1:LR1,..." piecewise linear in epochs */
  float momentum;
  int nesterov;
  float weight_decay;
  float label_smoothing;
  float ema_decay;          /* per-step EMA decay; 0 = no EMA */
  int ema_every;            /* apply EMA every k steps (decay^k at once) */
  int tta;                  /* evaluate with horizontal-flip test-time augmentation */
  int cutout;               /* cutout square size in pixels; 0 = off */
  int flip;                 /* random horizontal flips */
  int crop_pad;             /* reflect-pad then random crop; 0 = off */
} fcc_recipe;

/* Metrics accumulate: every step adds to metrics[0] the sum of its per-example
 * losses, to metrics[1] its number of correct predictions, and to metrics[2]
 * one if it skipped its update (non-finite gradients under loss scaling). */
enum {
  FCC_METRIC_LOSS_SUM = 0,
  FCC_METRIC_CORRECT = 1,
  FCC_METRIC_SKIPPED = 2,
  FCC_NUM_METRICS = 3
};

typedef struct fcc_program {
  int abi_version;          /* FCC_PROGRAM_ABI_VERSION */
  const char *model;        /* source model file name */
  const char *target;       /* "cpu" or "cuda" */
  uint64_t plan_hash;       /* identifies the compiled plan (checkpoints) */
  int64_t batch;            /* examples per step (static) */
  int64_t channels, height, width; /* one input image, NCHW */
  int64_t classes;
  int num_params;
  const fcc_param_info *params;
  int64_t arena_bytes;      /* scratch memory of the steps */
  fcc_recipe defaults;

  /* Creates kernel plans and the arena; 0 on success, else a message is
   * available from last_error(). */
  int (*setup)(void);
  void (*teardown)(void);
  const char *(*last_error)(void);

  /* One SGD step: params[i] and momentum[i] (NULL for frozen parameters;
   * running statistics are updated in params[i]) are read and updated in
   * place. images: batch x C x H x W floats, normalised; labels: batch int32. */
  void (*train_step)(float *const *params, float *const *momentum,
                     const float *images, const int32_t *labels,
                     const fcc_hyper *hyper, float *metrics,
                     float *const *comm_state);
  /* Inference-mode forward on one batch; adds to metrics. With tta != 0 the
   * logits are averaged with those of the horizontally flipped batch. The
   * last test batch may be partial: its padding rows are labelled -1
   * (FCC_IGNORE_LABEL) and add nothing to the metrics. */
  void (*eval_step)(float *const *params, const float *images,
                    const int32_t *labels, float label_smoothing, int tta,
                    float *metrics);
  /* ema[i] = decay * ema[i] + (1 - decay) * params[i] for every parameter,
   * running statistics included. */
  void (*ema_update)(float *const *ema, float *const *params, float decay);

  const char *precision;    /* "fp32", "fp16" or "bf16" (compute precision) */
  /* Dynamic loss scaling (fp16): train_step multiplies the loss gradient by
   * hyper->loss_scale, divides it back out in the update, and skips the
   * update (adding 1 to metrics[FCC_METRIC_SKIPPED]) when any gradient is
   * not finite; the trainer then lowers the scale. */
  int loss_scaling;

  /* The ONNX model the program was compiled from (binary protobuf), so that
   * the trainer can export the trained weights into it; NULL when compiled
   * from ONNX text syntax. */
  const char *onnx_model;
  int64_t onnx_model_size;

  /* Data parallelism (fcc-inject-compression, fcc-insert-collectives). With
   * `collectives`, train_step averages the gradients over the ranks of
   * fcc/runtime/comm.h (one rank: no communication); without, the program
   * runs on one rank only. */
  int collectives;
  const char *compression;       /* the --compress method or rules */
  const char *compression_scope; /* "layerwise" or "entire-model" */
  int num_comm_state;            /* comm_state buffers of train_step */
  const fcc_state_info *comm_state;
  int64_t grad_numel;            /* gradient elements per step (all params) */
  int64_t payload_bytes;         /* bytes one rank sends per step (capacity
                                    for threshold payloads: an upper bound) */
  int payload_fixed;             /* 1: payload_bytes is exact */

  /* FCC_LAYOUT_* (cpu_kernels.h) of train_step's and eval_step's images and
   * of every 4-d activation inside: NHWC for CUDA programs compiled with
   * --layout nhwc, else NCHW. */
  int image_layout;
} fcc_program;

/* Defined by the generated translation unit. */
const fcc_program *fcc_generated_program(void);

#ifdef __cplusplus
}
#endif

#endif /* FCC_RUNTIME_PROGRAM_H */
