//===- Passes.td - fcc pass definitions ----------------------*- tablegen -*-===//
#ifndef FCC_PASSES_TD
#define FCC_PASSES_TD

include "mlir/Pass/PassBase.td"

def BuildTraining : Pass<"fcc-build-training", "mlir::ModuleOp"> {
  let summary = "Derive train/eval/EMA step functions from the forward model";
  let description = [{
    Replaces `@forward` with `@train_step` (training-mode forward, softmax
    cross-entropy with label smoothing, reverse-mode gradients, SGD with
    momentum/Nesterov and weight decay, BatchNorm running statistics),
    `@eval_step`, `@eval_step_tta` and `@ema_update`. See
    passes/BuildTraining.cpp.
  }];
  let options = [
    Option<"biasLrMult", "bias-lr-mult", "double", "1.0",
           "Learning-rate multiplier of biases and BatchNorm parameters">,
    Option<"biasWdMult", "bias-wd-mult", "double", "1.0",
           "Weight-decay multiplier of biases and BatchNorm parameters">,
    Option<"gradFunction", "grad-function", "bool", "false",
           "Also emit @loss_and_grads (loss and raw gradients)">,
    Option<"keepForward", "keep-forward", "bool", "false",
           "Keep the @forward function">,
    Option<"lossScaling", "loss-scaling", "bool", "false",
           "Dynamic loss scaling: unscale the gradients in the update, skip "
           "the step when one is not finite, report skipped steps">,
  ];
  let dependentDialects = ["::fcc::FccDialect", "::mlir::arith::ArithDialect"];
}

def InsertHalf : Pass<"fcc-insert-half", "mlir::ModuleOp"> {
  let summary = "Compute convolutions, linears and elementwise ops in half precision";
  let description = [{
    Rewrites @forward (before fcc-build-training) so that conv2d, linear,
    relu/celu, pooling, add, mul, dropout and reshapes compute in fp16 or
    bf16, with every change of precision an explicit fcc.cast: master weights
    stay fp32 arguments and are cast where they are used; BatchNorm (its
    statistics and running statistics), softmax, the logits that feed the
    loss, and everything else stay fp32. Each value is cast at most once.
  }];
  let options = [
    Option<"precision", "precision", "std::string", "\"fp16\"",
           "Half type: fp16 or bf16">,
  ];
  let dependentDialects = ["::fcc::FccDialect"];
}

def PlanMemory : Pass<"fcc-plan-memory", "mlir::ModuleOp"> {
  let summary = "Assign every temporary of each step function an arena offset";
  let description = [{
    Liveness-based (MLIR's Liveness analysis) greedy-by-size placement of
    every tensor a step computes into one scratch arena, with in-place reuse
    for elementwise ops. Annotates ops with `fcc.offsets` and functions with
    `fcc.arena_bytes`, then verifies that no two live tensors overlap. See
    passes/PlanMemory.cpp.
  }];
  let options = [
    Option<"inPlace", "in-place", "bool", "true",
           "Let elementwise ops overwrite an operand that dies at the op">,
    Option<"halfBytes", "half-bytes", "int64_t", "4",
           "Storage bytes of an fp16/bf16 element: 4 for the CPU target "
           "(emulated half precision in float buffers), 2 for GPUs">,
    Option<"layout", "layout", "std::string", "\"nchw\"",
           "Storage of 4-d activations: nchw, or nhwc (the CUDA target's "
           "--layout nhwc: reshapes that reorder a map's elements become "
           "transposes into buffers of their own instead of views)">,
  ];
}

def TestVJP : Pass<"fcc-test-vjp", "mlir::ModuleOp"> {
  let summary = "Test the differentiation rules: add @f_vjp for every @f";
  let description = [{
    For every function `@f(args) -> results`, adds
    `@f_vjp(args, cotangents of the float results) -> gradients of the float
    arguments` (a zero-free null gradient is returned as a zero constant).
    Used by lit tests and gradient checks of each rule.
  }];
  let dependentDialects = ["::fcc::FccDialect", "::mlir::arith::ArithDialect"];
}

def FuseBatchNorm : Pass<"fcc-fuse-batchnorm", "mlir::ModuleOp"> {
  let summary = "Fuse batch_norm -> relu|celu [-> max_pool2d] [-> add] into fcc.bn_act";
  let description = [{
    Runs on the forward model before fcc-build-training, which clones each
    fcc.bn_act in training mode and differentiates it with one
    fcc.bn_act_grad. Only chains whose intermediate values have no other
    user are fused. See passes/FuseBatchNorm.cpp.
  }];
  let dependentDialects = ["::fcc::FccDialect"];
}

def FoldBatchNorm : Pass<"fcc-fold-batchnorm", "mlir::ModuleOp"> {
  let summary = "Fold inference BatchNorms into the preceding convolution";
  let description = [{
    conv2d -> batch_norm / bn_act in inference mode (the evaluation steps)
    becomes fcc.fold_bn (new weights and bias) -> conv2d, followed by the
    fused op's activation, pooling and residual add as plain ops. See
    passes/FoldBatchNorm.cpp.
  }];
  let dependentDialects = ["::fcc::FccDialect"];
}

def InjectCompression : Pass<"fcc-inject-compression", "mlir::ModuleOp"> {
  let summary = "Compress gradients before the optimizer update";
  let description = [{
    In @train_step, each gradient that the compression rules select becomes
    `decompress(compress(g))` (fcc.compress / fcc.decompress with a packed
    byte payload), layer by layer or, with scope=entire-model, for all
    gradients flattened into one vector (fcc.concat_flat / fcc.split_flat).
    With error feedback the residual `g - decompress(compress(g))` is kept in
    a new `fcc.state = "residual:<name>"` argument and added to the next
    step's gradient. On one rank the program is then exactly what the
    compression does to SGD; fcc-insert-collectives adds the communication.
    See passes/InjectCompression.cpp.
  }];
  let options = [
    Option<"method", "method", "std::string", "\"none\"",
           "A compressor spec (topk:0.01, qsgd:255, ...) or per-parameter "
           "rules 'glob=spec,glob=spec' (first match wins, unmatched: none)">,
    Option<"scope", "scope", "std::string", "\"layerwise\"",
           "layerwise (each gradient on its own) or entire-model">,
    Option<"errorFeedback", "error-feedback", "bool", "false",
           "Keep the compression residual and add it to the next gradient">,
    Option<"minCompressBytes", "min-compress-bytes", "int64_t", "0",
           "Send gradients smaller than this many fp32 bytes dense">,
    Option<"randomkUnbiased", "randomk-unbiased", "bool", "false",
           "Scale RandomK's kept values by n/k (unbiased)">,
  ];
  let dependentDialects = ["::fcc::FccDialect"];
}

def InsertCollectives : Pass<"fcc-insert-collectives", "mlir::ModuleOp"> {
  let summary = "Average gradients over the ranks of data-parallel training";
  let description = [{
    In @train_step: summable payloads (fp16, bf16, RandomK values) and dense
    gradients get an averaging fcc.all_reduce; payloads with per-rank scales
    or indices (TopK, thresholds, TernGrad, QSGD) an fcc.all_gather whose
    rows fcc.decompress averages. Dense gradients smaller than bucket-bytes
    share one collective (fcc.concat_flat / fcc.split_flat). The loss-scaling
    check then looks at the averaged gradients, so all ranks skip together.
    See passes/InsertCollectives.cpp.
  }];
  let options = [
    Option<"bucketBytes", "bucket-bytes", "int64_t", "262144",
           "Dense gradients below this size are bucketed into one all_reduce">,
  ];
  let dependentDialects = ["::fcc::FccDialect"];
}

def OverlapWeightGrads : Pass<"fcc-overlap-weight-grads", "mlir::ModuleOp"> {
  let summary = "Run convolution weight gradients on a second CUDA stream";
  let description = [{
    Moves each fcc.conv2d_grad_weight (with its cast to fp32 when that is
    its only user) right after the producer of its last operand, marks them
    `fcc.side_stream` (generated CUDA code queues them on a second stream)
    and inserts an fcc.stream_join (the main stream waits for the side
    stream) before the next weight gradient, the first other user of their
    results or the terminator, whichever comes first. The join's operands
    keep the side ops' tensors alive in the memory plan until then. CUDA
    target only (`fcc compile --no-side-stream` leaves it out); runs before
    fcc-plan-memory. See passes/OverlapWeightGrads.cpp.
  }];
  let dependentDialects = ["::fcc::FccDialect"];
}

#endif // FCC_PASSES_TD
