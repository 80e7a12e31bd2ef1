//===- Autodiff.h - Reverse-mode differentiation of fcc code ------*- C++ -*-===//
//
// Emits the reverse-mode derivative (vector-Jacobian products) of a
// straight-line sequence of fcc ops. Used by fcc-build-training for the
// gradients of the loss, and by the fcc-test-vjp pass that lit and gradient
// checks use to test each rule on its own.
//
// Each forward op has one rule (Autodiff.cpp) that emits gradient ops
// (conv2d_grad_input, batch_norm_grad, ...) or reuses forward ops (the
// gradients of linear are linear ops). Only operands that depend on a value
// in `wrt` get gradients, so e.g. the first convolution computes no input
// gradient; contributions of several uses are summed with fcc.add.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_PASSES_AUTODIFF_H
#define FCC_PASSES_AUTODIFF_H

#include "mlir/IR/Builders.h"
#include "mlir/IR/Operation.h"

namespace fcc {

/// Emits, at the builder's insertion point, ops computing the gradients of
/// `wrt` given the cotangents of `outputs`, through the ops of `forward` (in
/// program order). Returns one value per `wrt` entry, null where `wrt` does not
/// influence the outputs. Fails (with a diagnostic on the op) for ops that have
/// no differentiation rule.
mlir::FailureOr<llvm::SmallVector<mlir::Value>>
buildReverseMode(mlir::OpBuilder &builder, llvm::ArrayRef<mlir::Operation *> forward,
                 llvm::ArrayRef<mlir::Value> outputs,
                 llvm::ArrayRef<mlir::Value> cotangents,
                 llvm::ArrayRef<mlir::Value> wrt);

/// Sums `value` over the dimensions that numpy broadcasting added or expanded
/// to reach its shape from `shape` (the gradient of a broadcast operand).
mlir::Value reduceToShape(mlir::OpBuilder &builder, mlir::Location loc,
                          mlir::Value value, llvm::ArrayRef<int64_t> shape);

} // namespace fcc

#endif // FCC_PASSES_AUTODIFF_H
