//===- FccFusedOps.h - Helpers for the fused BatchNorm ops -------*- C++ -*-===//
//
// The activation attribute of fcc.bn_act / fcc.bn_act_grad is a string
// ("relu", "celu", "none"); these helpers turn it into the runtime's
// FCC_ACT_* codes (fcc/runtime/cpu_kernels.h) and give the fused op's output
// shape, shared by the verifiers, the passes, the evaluator and codegen; and
// the element-type rule of every BatchNorm op (fused or not).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_IR_FCCFUSEDOPS_H
#define FCC_IR_FCCFUSEDOPS_H

#include "fcc/runtime/cpu_kernels.h"
#include "ir/FccDialect.h"
#include "ir/ShapeInference.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/StringRef.h"
#include <optional>

namespace fcc {

/// FCC_ACT_NONE / FCC_ACT_RELU / FCC_ACT_CELU for "none" / "relu" / "celu",
/// std::nullopt for anything else.
std::optional<int> fusedActivationCode(llvm::StringRef activation);

/// The output shape of fcc.bn_act for an NCHW input: the input shape, or the
/// max-pooled shape when `kernel` is given (no padding, dilation 1, floor).
mlir::FailureOr<Shape>
inferBnActShape(llvm::ArrayRef<int64_t> input,
                std::optional<llvm::ArrayRef<int64_t>> kernel,
                std::optional<llvm::ArrayRef<int64_t>> strides,
                std::string &error);

/// The element types of a BatchNorm op (fcc.batch_norm, fcc.batch_norm_grad,
/// fcc.bn_act, fcc.bn_act_grad). The data tensors `data` (input, output,
/// residual, output and input gradients; the first one is the input) share
/// one element type, f32, f16 or bf16: the kernels read and write half data
/// directly and compute in fp32. The per-channel tensors `perChannel`
/// (scale, shift, statistics and their gradients) are f32. Each entry names
/// its tensor for the diagnostic.
mlir::LogicalResult verifyBatchNormElementTypes(
    mlir::Operation *op,
    llvm::ArrayRef<std::pair<llvm::StringRef, mlir::Value>> data,
    llvm::ArrayRef<std::pair<llvm::StringRef, mlir::Value>> perChannel);

/// The per-channel tensors of a forward BatchNorm op (fcc.batch_norm,
/// fcc.bn_act): scale, shift, running statistics and, in training mode, the
/// statistics results, named for verifyBatchNormElementTypes.
template <typename ForwardBatchNormOp>
llvm::SmallVector<std::pair<llvm::StringRef, mlir::Value>>
batchNormPerChannel(ForwardBatchNormOp op) {
  llvm::SmallVector<std::pair<llvm::StringRef, mlir::Value>> perChannel = {
      {"scale", op.getScale()},
      {"shift", op.getShift()},
      {"running_mean", op.getRunningMean()},
      {"running_var", op.getRunningVar()}};
  for (mlir::Value v : op.getTrainingStats())
    perChannel.push_back({"statistics result", v});
  return perChannel;
}

/// The runtime descriptor (fcc_bn_act_desc) of a verified fcc.bn_act or
/// fcc.bn_act_grad, with the output size filled in.
fcc_bn_act_desc bnActDescriptor(BnActOp op);
fcc_bn_act_desc bnActDescriptor(BnActGradOp op);

} // namespace fcc

#endif // FCC_IR_FCCFUSEDOPS_H
