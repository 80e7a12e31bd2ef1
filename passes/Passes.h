//===- Passes.h - fcc passes --------------------------------------*- C++ -*-===//
//
// Declarations and registration of every fcc pass (one pass per file in
// passes/, declared in Passes.td).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_PASSES_PASSES_H
#define FCC_PASSES_PASSES_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"
#include "ir/FccDialect.h"
#include <memory>

namespace fcc {

#define GEN_PASS_DECL
#include "passes/Passes.h.inc"

/// Registers every fcc pass with MLIR's global registry (for fcc-opt and
/// textual pipelines).
void registerAllPasses();

/// Checks the options of fcc-inject-compression: `method` (a compressor
/// spec or per-parameter rules) with `scope`, for a program whose gradients
/// are loss-scaled or not (fp16); on failure `error` says what is wrong.
/// `variableSize`, when given, tells whether some gradient gets a method
/// whose payload size depends on the data (the thresholds).
bool validateCompressionMethod(llvm::StringRef method, llvm::StringRef scope,
                               bool lossScaled, std::string &error,
                               bool *variableSize = nullptr);

} // namespace fcc

#endif // FCC_PASSES_PASSES_H
