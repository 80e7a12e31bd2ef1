//===- Compile.cpp - `fcc compile` ----------------------------------------===//
//
// Imports an ONNX model and runs the compilation pipeline up to the stage
// --emit asks for. Stages so far: `fcc` (the imported dialect IR after
// clean-up) and `dot` (a Graphviz picture of the network).
//
//===----------------------------------------------------------------------===//
#include "tools/fcc/Commands.h"

#include "codegen/DotEmitter.h"
#include "passes/Passes.h"
#include "tools/Registration.h"

#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassInstrumentation.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Support/Timing.h"
#include "mlir/Transforms/Passes.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/ToolOutputFile.h"

#include <iostream>

using namespace mlir;
using namespace fcc;

int fcc::reportError(const std::string &msg) {
  std::cerr << "fcc: error: " << msg << "\n";
  return 1;
}

bool fcc::parseShape(const std::string &text, std::vector<int64_t> &shape) {
  shape.clear();
  llvm::SmallVector<llvm::StringRef> parts;
  llvm::StringRef(text).split(parts, 'x');
  for (llvm::StringRef p : parts) {
    int64_t v;
    if (p.getAsInteger(10, v) || v <= 0)
      return false;
    shape.push_back(v);
  }
  return !shape.empty();
}

CLI::App *fcc::addCompileCommand(CLI::App &app, CompileOptions &o) {
  CLI::App *c = app.add_subcommand("compile", "Compile an ONNX model");
  c->add_option("model", o.model, "ONNX model (.onnx, or .onnxtxt text syntax)")
      ->required();
  c->add_option("-o,--output", o.output, "Output file ('-' = stdout)");
  c->add_option("--emit", o.emit,
                "What to produce: fcc (imported dialect IR), dot (Graphviz "
                "picture of the network)")
      ->check(CLI::IsMember({"fcc", "dot"}));
  c->add_option("--batch", o.batch,
                "Batch size for a symbolic batch dimension of the data inputs")
      ->check(positiveInteger());
  c->add_option("--input-shape", o.inputShapes,
                "Static shape of a data input, NAME=DxDx... (repeatable)");
  c->add_option("--dump-ir-dir", o.dumpIrDir,
                "Write the IR after import and after every pass to "
                "DIR/NN-<stage>.mlir");
  c->add_flag("--print-weights", o.printWeights,
              "Print initial weights in full when writing IR to stdout "
              "(otherwise large values are elided there)");
  return c;
}

namespace {
/// Writes the module to DIR/NN-<name>.mlir after import and after each pass.
class DumpIrInstrumentation : public PassInstrumentation {
public:
  DumpIrInstrumentation(std::string dir, int &counter)
      : dir(std::move(dir)), counter(counter) {}
  void runAfterPass(Pass *pass, Operation *op) override {
    dump(*op, pass->getArgument().empty() ? pass->getName()
                                          : pass->getArgument());
  }
  void dump(Operation &op, llvm::StringRef stage) {
    std::string path =
        llvm::formatv("{0}/{1:2}-{2}.mlir", dir, counter++, stage).str();
    std::error_code ec;
    llvm::raw_fd_ostream os(path, ec);
    if (ec) {
      std::cerr << "fcc: warning: cannot write " << path << ": "
                << ec.message() << "\n";
      return;
    }
    op.print(os, OpPrintingFlags());
  }

private:
  std::string dir;
  int &counter;
};
} // namespace

int fcc::runCompile(const CompileOptions &o) {
  ImportOptions importOpts;
  importOpts.batchSize = o.batch;
  for (const std::string &spec : o.inputShapes) {
    auto eq = spec.find('=');
    std::vector<int64_t> shape;
    if (eq == std::string::npos || !parseShape(spec.substr(eq + 1), shape))
      return reportError("--input-shape '" + spec +
                         "' is not NAME=DxDx... (e.g. input=1x3x32x32)");
    importOpts.inputShapes[spec.substr(0, eq)] = shape;
  }

  DialectRegistry registry;
  registerAllDialects(registry);
  MLIRContext context(registry);
  context.disableMultithreading(); // small graphs; keeps diagnostics ordered

  auto module = importOnnxFile(context, o.model, importOpts);
  if (!module)
    return reportError(llvm::toString(module.takeError()));

  int dumpCounter = 0;
  std::unique_ptr<DumpIrInstrumentation> dumper;
  if (!o.dumpIrDir.empty()) {
    if (auto ec = llvm::sys::fs::create_directories(o.dumpIrDir))
      return reportError("--dump-ir-dir: cannot create '" + o.dumpIrDir +
                         "': " + ec.message());
    dumper = std::make_unique<DumpIrInstrumentation>(o.dumpIrDir, dumpCounter);
    dumper->dump(*(**module).getOperation(), "import");
  }

  PassManager pm(&context);
  if (failed(applyPassManagerCLOptions(pm)))
    return reportError("invalid MLIR pass-manager options");
  applyDefaultTimingPassManagerCLOptions(pm);
  if (dumper)
    pm.addInstrumentation(std::make_unique<DumpIrInstrumentation>(
        o.dumpIrDir, dumpCounter));
  // Import clean-up: folds MatMul + Add into biased linear layers, removes
  // dead shape glue.
  pm.addPass(createCanonicalizerPass());
  if (failed(pm.run(**module)))
    return reportError(o.model + ": the compilation pipeline failed");

  std::string errorMessage;
  auto out = openOutputFile(o.output, &errorMessage);
  if (!out)
    return reportError("cannot write '" + o.output + "': " + errorMessage);
  if (o.emit == "dot") {
    if (failed(emitDot(**module, out->os())))
      return reportError("cannot draw the network");
  } else {
    OpPrintingFlags flags;
    if (o.output == "-" && !o.printWeights)
      flags.elideLargeResourceString(256);
    (*module)->print(out->os(), flags);
  }
  out->keep();
  return 0;
}
