//===- Registration.h - Dialects and passes every fcc tool loads -*- C++ -*-===//
#ifndef FCC_TOOLS_REGISTRATION_H
#define FCC_TOOLS_REGISTRATION_H

#include "ir/FccDialect.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/DialectRegistry.h"

namespace fcc {
inline void registerAllDialects(mlir::DialectRegistry &registry) {
  registry.insert<FccDialect, mlir::func::FuncDialect, mlir::arith::ArithDialect>();
}
} // namespace fcc

#endif // FCC_TOOLS_REGISTRATION_H
