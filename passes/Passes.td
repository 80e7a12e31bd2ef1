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
  ];
  let dependentDialects = ["::fcc::FccDialect", "::mlir::arith::ArithDialect"];
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

#endif // FCC_PASSES_TD
