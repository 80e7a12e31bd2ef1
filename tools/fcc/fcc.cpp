//===- fcc.cpp - The fcc command-line driver ------------------------------===//
//
//   fcc compile MODEL.onnx [--emit=fcc|dot] [-o FILE] [--batch N] ...
//   fcc run MODEL.onnx --input NAME=FILE.pb ... [--output-dir DIR]
//
// fcc's own flags are parsed with CLI11; the standard MLIR flags
// (--mlir-print-ir-after-all, --mlir-timing, --mlir-print-debuginfo, ...) are
// passed through to MLIR's command-line registry, as in fcc-opt.
//
//===----------------------------------------------------------------------===//
#include "tools/fcc/Commands.h"

#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/Timing.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"

#include <CLI/CLI.hpp>

#include <iostream>

using namespace fcc;

static const char *kMlirFlagsHelp =
    "MLIR flags (passed through): --mlir-print-ir-after-all, "
    "--mlir-print-ir-after-change, --mlir-print-ir-before-all, --mlir-timing, "
    "--mlir-print-debuginfo, --mlir-elide-elementsattrs-if-larger=N, ...";

/// Hands the leftover `--mlir-*` arguments to MLIR's llvm::cl registry;
/// anything else is an unknown option.
static bool parseMlirFlags(const std::vector<std::string> &extras) {
  std::vector<const char *> argv = {"fcc"};
  for (const std::string &a : extras) {
    llvm::StringRef s(a);
    if (!s.starts_with("--mlir-") && !s.starts_with("-mlir-")) {
      std::cerr << "fcc: error: unknown option or extra argument '" << a
                << "' (see fcc --help)\n";
      return false;
    }
    argv.push_back(a.c_str());
  }
  std::string errors;
  llvm::raw_string_ostream os(errors);
  if (!llvm::cl::ParseCommandLineOptions(int(argv.size()), argv.data(), "fcc",
                                         &os)) {
    std::cerr << "fcc: error: " << errors;
    return false;
  }
  return true;
}

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  mlir::registerAsmPrinterCLOptions();
  mlir::registerMLIRContextCLOptions();
  mlir::registerPassManagerCLOptions();
  mlir::registerDefaultTimingManagerCLOptions();

  CLI::App app{"fcc: a training compiler from ONNX to standalone trainers.\n" +
               std::string(kMlirFlagsHelp)};
  app.require_subcommand(1);
  app.set_version_flag("--version", "fcc 0.1 (MLIR 19, ONNX 1.12)");

  CompileOptions compile;
  CLI::App *compileCmd = addCompileCommand(app, compile);
  compileCmd->allow_extras();
  RunOptions run;
  CLI::App *runCmd = addRunCommand(app, run);
  runCmd->allow_extras();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    if (e.get_exit_code() == 0)
      return app.exit(e);
    std::cerr << "fcc: error: " << e.what() << "\n";
    return 1;
  }

  CLI::App *cmd = compileCmd->parsed() ? compileCmd : runCmd;
  if (!parseMlirFlags(cmd->remaining()))
    return 1;
  if (compileCmd->parsed())
    return runCompile(compile);
  return runRun(run);
}
