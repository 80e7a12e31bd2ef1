//===- FccDialect.h - The fcc dialect ---------------------------*- C++ -*-===//
//
// Umbrella header: the dialect, its attributes and its ops.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_IR_FCCDIALECT_H
#define FCC_IR_FCCDIALECT_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/DialectImplementation.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/FunctionInterfaces.h"

#include "ir/FccDialect.h.inc"
#include "ir/FccEnums.h.inc"

namespace fcc {
/// Parses `true` or `false` (used by #fcc.param's `trainable` field).
mlir::FailureOr<bool> parseBoolParameter(mlir::AsmParser &parser);
} // namespace fcc

#define GET_ATTRDEF_CLASSES
#include "ir/FccAttrs.h.inc"

#define GET_OP_CLASSES
#include "ir/FccOps.h.inc"

namespace fcc {
/// The #fcc.param attribute of argument `index` of a model function, or null
/// for data inputs.
ParamAttr getParamAttr(mlir::FunctionOpInterface func, unsigned index);
} // namespace fcc

#endif // FCC_IR_FCCDIALECT_H
