//===- FccFusedOps.h - Helpers for the fused BatchNorm ops -------*- C++ -*-===//
//
// The activation attribute of fcc.bn_act / fcc.bn_act_grad is a string
// ("relu", "celu", "none"); these helpers turn it into the runtime's
// FCC_ACT_* codes (fcc/runtime/cpu_kernels.h) and give the fused op's output
// shape, shared by the verifiers, the passes, the evaluator and codegen.
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

/// The runtime descriptor (fcc_bn_act_desc) of a verified fcc.bn_act or
/// fcc.bn_act_grad, with the output size filled in.
fcc_bn_act_desc bnActDescriptor(BnActOp op);
fcc_bn_act_desc bnActDescriptor(BnActGradOp op);

} // namespace fcc

#endif // FCC_IR_FCCFUSEDOPS_H
