//===- fcc-opt.cpp - MLIR optimizer driver with fcc registered ------------===//
//
// mlir-opt for fcc: parses IR, runs passes given on the command line, prints
// the result. Used by the lit tests of every pass and of the verifiers.
//
//===----------------------------------------------------------------------===//
#include "passes/Passes.h"
#include "tools/Registration.h"

#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  fcc::registerAllDialects(registry);
  fcc::registerAllPasses();
  // The generic clean-ups fcc's pipelines use (canonicalize, cse).
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "fcc optimizer driver\n", registry));
}
