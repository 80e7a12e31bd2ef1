//===- Compile.cpp - `fcc compile` ----------------------------------------===//
//
// Imports an ONNX model and runs the compilation pipeline up to the stage
// --emit asks for. Stages so far: `fcc` (the imported dialect IR after
// clean-up) and `dot` (a Graphviz picture of the network).
//
//===----------------------------------------------------------------------===//
#include "tools/fcc/Commands.h"

#include "codegen/DotEmitter.h"
#include "codegen/Recipe.h"
#include "codegen/TrainerEmitter.h"
#include "passes/MemoryPlan.h"
#include "tools/fcc/Build.h"
#include "passes/Passes.h"
#include "passes/Pipeline.h"
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
#include "llvm/Support/MemoryBuffer.h"
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
  CLI::App *c = app.add_subcommand(
      "compile", "Compile an ONNX model into a trainer (or an intermediate "
                 "form with --emit)");
  c->add_option("model", o.model, "ONNX model (.onnx, or .onnxtxt text syntax)")
      ->required();
  c->add_option("-o,--output", o.output,
                "Output file: the trainer executable (default: MODEL-trainer), "
                "or the --emit output ('-' = stdout, the default for text)");
  c->add_option("--emit", o.emit,
                "What to produce: exe (the trainer, default), cpp (its C++ "
                "source), fcc (imported dialect IR), training (the training "
                "program), memory-plan (each buffer with size, offset and "
                "live range), dot (Graphviz picture of the network)")
      ->check(CLI::IsMember({"exe", "cpp", "fcc", "training", "memory-plan", "dot"}));
  c->add_option("--target", o.target,
                 "Code generation target: cuda (the default when fcc was "
                 "built with the CUDA runtime and nvcc is found) or cpu")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  c->add_option("--gpu-arch", o.gpuArch,
                "--target cuda: GPU architectures of the fat binary")
      ->default_str("sm_80,sm_90");
  c->add_option("--batch", o.batch,
                "Batch size (static): fixes a symbolic batch dimension")
      ->check(positiveInteger());
  std::string recipeHelp = "Training recipe giving the trainer's defaults:";
  for (const Recipe &r : recipes())
    recipeHelp += " " + r.name + " (" + r.summary + ");";
  c->add_option("--recipe", o.recipe, recipeHelp)
      ->check(CLI::IsMember([] {
        std::vector<std::string> names;
        for (const Recipe &r : recipes())
          names.push_back(r.name);
        return names;
      }()));
  c->add_option("--precision", o.precision,
                "Compute precision: fp32, fp16 (convs, linears and "
                "elementwise ops in half, fp32 master weights, BatchNorm, "
                "loss and optimizer; dynamic loss scaling) or bf16 (the "
                "same without loss scaling). The CPU target emulates half "
                "precision exactly (every half value rounded to nearest "
                "even)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  c->add_option("--layout", o.layout,
                "Memory layout of 4-d activations: nchw (default) or nhwc "
                "(--target cuda only; channels-last activations for cuDNN's "
                "tensor-core convolutions, no layout transposes around them; "
                "the model's ops must all take it: convolutions, fused "
                "BatchNorm + activation, tiling max pools, elementwise ops, "
                "reshapes between maps and flat tensors (a transpose where "
                "the layouts differ))")
      ->check(CLI::IsMember({"nchw", "nhwc"}));
  c->add_option("--input-shape", o.inputShapes,
                "Static shape of a data input, NAME=DxDx... (repeatable)");
  c->add_option("--bias-lr-mult", o.biasLrMult,
                "Learning-rate multiplier of biases and BatchNorm parameters "
                "(default: from --recipe)");
  c->add_option("--bias-wd-mult", o.biasWdMult,
                "Weight-decay multiplier of biases and BatchNorm parameters "
                "(default: from --recipe)");
  c->add_option("--keep-source", o.keepSource,
                "Keep the generated trainer.cpp (and weights.bin) in DIR");
  c->add_option("--dump-ir-dir", o.dumpIrDir,
                "Write the IR after import and after every pass to "
                "DIR/NN-<stage>.mlir");
  c->add_flag("--print-weights", o.printWeights,
              "Print initial weights in full when writing IR to stdout "
              "(otherwise large values are elided there)");
  c->add_flag("-v,--verbose", o.verbose, "Show the C++ compiler command");
  c->add_flag("-q,--quiet", o.quiet, "No progress line while building");
  c->add_flag("--no-fuse-bn", o.noFuseBn,
              "Keep BatchNorms unfused: no fcc-fuse-batchnorm (BatchNorm + "
              "activation + pool + residual as one op, forward and "
              "backward) and no fcc-fold-batchnorm (evaluation BatchNorms "
              "folded into the convolution weights)");
  c->add_flag("--no-side-stream", o.noSideStream,
              "--target cuda: run the convolutions' weight gradients on the "
              "main stream (no fcc-overlap-weight-grads; a smaller memory "
              "plan, no overlap; FCC_CUDA_SERIAL=1 does the same at run time "
              "without changing the plan)");
  c->add_option("--compress", o.compress,
                "Gradient compression of data-parallel training: none, fp16, "
                "bf16, randomk:K, topk:K, thresholdv:V, adaptive-threshold, "
                "terngrad, qsgd[:S[:bucket=B]]; or per-parameter rules "
                "'GLOB=METHOD,...' (first match wins, unmatched: none)")
      ->default_str("none");
  c->add_option("--compress-scope", o.compressScope,
                "layerwise (each gradient on its own) or entire-model (all "
                "gradients flattened and compressed as one)")
      ->check(CLI::IsMember({"layerwise", "entire-model"}));
  c->add_flag("--error-feedback", o.errorFeedback,
              "Keep each rank's compression residual and add it to the next "
              "step's gradient");
  c->add_flag("--randomk-unbiased", o.randomkUnbiased,
              "RandomK scales the kept values by n/k");
  c->add_option("--min-compress-bytes", o.minCompressBytes,
                "Send gradients of fewer fp32 bytes dense (layerwise)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--bucket-bytes", o.bucketBytes,
                "Dense gradients smaller than this share one all-reduce")
      ->check(CLI::NonNegativeNumber);
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

int fcc::runCompile(const CompileOptions &options) {
  CompileOptions o = options;
  if (o.target.empty())
    o.target = cudaTargetAvailable() ? "cuda" : "cpu";
  if (o.target == "cuda") {
    std::string why;
    std::vector<std::string> flags;
    if (!cudaTargetAvailable(&why) && (o.emit == "exe"))
      return reportError("--target cuda: " + why);
    if (!gpuArchFlags(o.gpuArch, flags))
      return reportError("--gpu-arch: '" + o.gpuArch +
                         "' is not a list like sm_80,sm_90 (sm_75 or newer)");
  } else if (o.layout != "nchw") {
    return reportError("--layout " + o.layout +
                       ": the CPU target takes nchw only (use --target cuda)");
  } else if (o.noSideStream) {
    return reportError("--no-side-stream: only with --target cuda (the CPU "
                       "target has no streams)");
  }
  bool variableSize = false;
  {
    std::string why;
    if (!validateCompressionMethod(o.compress, o.compressScope,
                                   o.precision == "fp16", why, &variableSize))
      return reportError("--compress '" + o.compress + "': " + why);
  }
  const bool generatesCode = o.emit == "exe" || o.emit == "cpp";
  // Threshold payloads have a data-dependent size that only the GPU knows:
  // CUDA trainers send them padded to their capacity (see README).
  if (o.target == "cuda" && generatesCode && !o.quiet && variableSize)
    std::cerr << "fcc: warning: --compress '" << o.compress
              << "': on --target cuda threshold payloads travel padded to "
                 "their capacity (more bytes than dense fp32); use topk:K "
                 "for a fixed budget\n";
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

  // Fail before the work when the output cannot be written.
  if (o.output != "-") {
    llvm::StringRef parent = llvm::sys::path::parent_path(o.output);
    if (!parent.empty() && !llvm::sys::fs::is_directory(parent))
      return reportError("cannot write '" + o.output + "': no directory '" +
                         parent.str() + "'");
  }

  auto module = importOnnxFile(context, o.model, importOpts);
  if (!module)
    return reportError(llvm::toString(module.takeError()));
  // Model-level diagnostics of later passes name the model file.
  for (auto fn : (**module).getOps<func::FuncOp>())
    if (isa<UnknownLoc>(fn.getLoc()))
      fn->setLoc(FileLineColLoc::get(&context, o.model, 0, 0));

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
  std::optional<Recipe> recipe = findRecipe(o.recipe);
  PipelineOptions pipeline;
  bool codegen = generatesCode;
  pipeline.stage = o.emit == "fcc" || o.emit == "dot" ? Stage::Import
                   : o.emit == "training"             ? Stage::Training
                                                      : Stage::Planned;
  pipeline.precision = o.precision;
  // Half tensors take 2 bytes on a GPU; the CPU emulates them in floats.
  pipeline.halfBytes = o.target == "cuda" ? 2 : 4;
  pipeline.layout = o.layout;
  pipeline.fuseBatchNorm = !o.noFuseBn;
  pipeline.biasLrMult = o.biasLrMult ? *o.biasLrMult : recipe->biasLrMult;
  pipeline.biasWdMult = o.biasWdMult ? *o.biasWdMult : recipe->biasWdMult;
  pipeline.compress = o.compress;
  pipeline.compressScope = o.compressScope;
  pipeline.errorFeedback = o.errorFeedback;
  pipeline.randomkUnbiased = o.randomkUnbiased;
  pipeline.minCompressBytes = o.minCompressBytes;
  pipeline.bucketBytes = o.bucketBytes;
  // Trainers average gradients over their ranks: MPI on the CPU, NCCL on
  // GPUs (one rank: plain copies).
  pipeline.collectives = true;
  // GPUs: convolution weight gradients on a second stream.
  pipeline.sideStream = o.target == "cuda" && !o.noSideStream;
  buildPipeline(pm, pipeline);
  if (failed(pm.run(**module)))
    return reportError(o.model + ": the compilation pipeline failed");

  std::string modelName = llvm::sys::path::filename(o.model).str();
  if (codegen) {
    CodegenOptions cg;
    cg.target = o.target;
    cg.modelName = modelName;
    cg.recipe = *recipe;
    cg.precision = o.precision;
    cg.layout = o.layout;
    cg.compression = o.compress;
    cg.compressionScope = o.compressScope;
    // The binary model rides along for the trainer's --export-onnx.
    if (!llvm::StringRef(o.model).ends_with(".onnxtxt"))
      if (auto buf = llvm::MemoryBuffer::getFile(o.model))
        cg.onnxModel.assign((*buf)->getBufferStart(), (*buf)->getBufferEnd());
    auto program = generateTrainerSource(**module, cg);
    if (failed(program))
      return reportError(o.model + ": code generation failed");
    if (o.emit == "cpp") {
      std::string errorMessage;
      auto out = openOutputFile(o.output, &errorMessage);
      if (!out)
        return reportError("cannot write '" + o.output + "': " + errorMessage);
      out->os() << program->source;
      out->keep();
      return 0;
    }
    BuildOptions build;
    build.output = o.output == "-" ? llvm::sys::path::stem(o.model).str() +
                                         "-trainer"
                                   : o.output;
    build.keepSource = o.keepSource;
    build.target = o.target;
    build.gpuArch = o.gpuArch;
    build.verbose = o.verbose;
    if (!o.quiet)
      std::cerr << "fcc: building " << build.output << " (" << modelName
                << ", target " << o.target << ", " << o.precision
                << (o.layout == "nhwc" ? ", NHWC" : "") << ", batch " << o.batch
                << ", recipe " << recipe->name << ", arena "
                << program->arenaBytes / (1 << 20) << " MiB)\n";
    if (auto err = buildTrainer(*program, build))
      return reportError(llvm::toString(std::move(err)));
    return 0;
  }

  std::string errorMessage;
  auto out = openOutputFile(o.output, &errorMessage);
  if (!out)
    return reportError("cannot write '" + o.output + "': " + errorMessage);
  if (o.emit == "dot") {
    if (failed(emitDot(**module, out->os())))
      return reportError("cannot draw the network");
  } else if (o.emit == "memory-plan") {
    printMemoryPlan(**module, out->os());
  } else {
    OpPrintingFlags flags;
    if (o.output == "-" && !o.printWeights)
      flags.elideLargeResourceString(256);
    (*module)->print(out->os(), flags);
  }
  out->keep();
  return 0;
}
