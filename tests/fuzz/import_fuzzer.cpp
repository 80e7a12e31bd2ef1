//===- import_fuzzer.cpp - libFuzzer target for the ONNX importer --------===//
//
// Feeds arbitrary bytes to the importer the way `fcc compile --batch 2` reads
// a model file: input that starts with '<' (after blanks) as ONNX text syntax
// (what .onnxtxt files hold), anything else as a binary ModelProto. It must
// either return a module that verifies or an error with a message; a crash,
// a sanitizer report, an escaping exception (std::terminate -> abort), a hang
// or runaway memory is a finding. See tests/fuzz/README.md.
//
//===----------------------------------------------------------------------===//
#include "frontend/OnnxImporter.h"
#include "ir/FccDialect.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "llvm/ADT/StringRef.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>

// Sanitizer defaults baked into the binary, so that a crash reproduces with a
// plain `fcc-import-fuzzer INPUT`:
//  - allow_user_poisoning=0: LLVM's BumpPtrAllocator (an inline template in
//    the LLVM headers) poisons the unused rest of its slabs when compiled with
//    ASan, as fcc's code is, but the uninstrumented libMLIR.so shares those
//    allocators (MLIRContext's attribute storage) and hands out memory from
//    them without unpoisoning it: every such use would be a false
//    use-after-poison report.
extern "C" const char *__asan_default_options() {
  return "allow_user_poisoning=0";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  llvm::StringRef bytes(reinterpret_cast<const char *>(data), size);
  bool text = bytes.ltrim(" \t\r\n").starts_with("<");

  // A fresh context per input: nothing (uniqued attributes, resource blobs)
  // accumulates across inputs, and every input reproduces on its own.
  mlir::DialectRegistry registry;
  registry.insert<fcc::FccDialect, mlir::func::FuncDialect,
                  mlir::arith::ArithDialect>();
  mlir::MLIRContext context(registry, mlir::MLIRContext::Threading::DISABLED);
  // Rejected models are expected; keep the log quiet.
  context.getDiagEngine().registerHandler(
      [](mlir::Diagnostic &) { return mlir::success(); });

  fcc::ImportOptions options;
  options.batchSize = 2; // the zoo seeds have a symbolic batch dimension
  // Compile-time folding's memory bound, small enough for -rss_limit_mb
  // (the default, 2^28 values, is meant for real models).
  options.maxFoldedElements = int64_t(1) << 22;
  auto module = fcc::importOnnxBytes(context, bytes, text, options, "fuzz");
  if (!module) {
    std::string message = llvm::toString(module.takeError());
    static const bool verbose = std::getenv("FCC_FUZZ_VERBOSE") != nullptr;
    if (verbose) // triage: what the importer says about a given input
      std::fprintf(stderr, "fcc-import-fuzzer: %s\n", message.c_str());
    if (message.empty()) {
      std::fprintf(stderr, "fcc-import-fuzzer: error without a message\n");
      std::abort();
    }
    return 0;
  }
  if (mlir::failed(mlir::verify(**module))) {
    std::fprintf(stderr, "fcc-import-fuzzer: imported module does not verify\n");
    std::abort();
  }
  return 0;
}
