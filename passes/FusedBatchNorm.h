//===- FusedBatchNorm.h - Helpers around fcc.bn_act ------------------*- C++ -*-===//
//
// Shared by fcc-fuse-batchnorm, fcc-fold-batchnorm and fcc-build-training
// (which clones the forward model's fcc.bn_act ops in training or inference
// mode, as it does fcc.batch_norm).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_PASSES_FUSEDBATCHNORM_H
#define FCC_PASSES_FUSEDBATCHNORM_H

#include "ir/FccDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"

namespace fcc {

/// Clones `op` at the builder's insertion point with operands looked up in
/// `map`, in training mode (batch statistics, PyTorch's unbiased running
/// variance, the four statistics results) or inference mode (running
/// statistics), and maps its output. Returns null, with a diagnostic, when
/// the statistics results of `op` are used.
BnActOp cloneBnActInMode(mlir::OpBuilder &b, BnActOp op, mlir::IRMapping &map,
                         bool training);

/// The location of an op that replaces `ops`: NameLoc "a+b+c" of their
/// names when all of them have one, else a FusedLoc.
mlir::Location fusedLocation(llvm::ArrayRef<mlir::Operation *> ops);

} // namespace fcc

#endif // FCC_PASSES_FUSEDBATCHNORM_H
