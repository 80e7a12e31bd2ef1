//===- DotEmitter.h - Graphviz picture of a network ----------------*- C++ -*-===//
//
// `fcc compile --emit=dot`: one box per op with its key attributes and
// parameter shapes, edges labelled with tensor shapes. Meant for people
// (`dot -Tsvg`), unlike MLIR's generic -view-op-graph.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_CODEGEN_DOTEMITTER_H
#define FCC_CODEGEN_DOTEMITTER_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"

namespace fcc {
mlir::LogicalResult emitDot(mlir::ModuleOp module, llvm::raw_ostream &os);
} // namespace fcc

#endif // FCC_CODEGEN_DOTEMITTER_H
