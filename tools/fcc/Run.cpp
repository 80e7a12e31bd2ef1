//===- Run.cpp - `fcc run` --------------------------------------------------===//
//
// Imports a model and evaluates it on the CPU kernels: inputs from ONNX
// TensorProto files (as in the ONNX backend test data) or random; prints the
// outputs and optionally writes them as TensorProto files. Parameters without
// initial values get PyTorch's default initialisation with --seed.
//
//===----------------------------------------------------------------------===//
#include "tools/fcc/Commands.h"

#include "frontend/TensorIO.h"
#include "ir/ModelUtils.h"
#include "ir/ShapeInference.h"
#include "runtime/evaluator/Evaluator.h"
#include "passes/Pipeline.h"
#include "tools/Registration.h"

#include "fcc/runtime/cpu_kernels.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/FileSystem.h"

#include <cstdio>
#include <iostream>

using namespace mlir;
using namespace fcc;

CLI::App *fcc::addRunCommand(CLI::App &app, RunOptions &o) {
  CLI::App *c = app.add_subcommand(
      "run", "Evaluate an ONNX model on the CPU kernels and print its outputs");
  c->add_option("model", o.model, "ONNX model (.onnx or .onnxtxt)")->required();
  c->add_option("--input", o.inputs,
                "[NAME=]FILE.pb: a serialized ONNX TensorProto for an input "
                "(repeatable; without NAME, inputs are taken in order)");
  c->add_flag("--random-inputs", o.randomInputs,
              "Fill the data inputs not given with --input with U(-1, 1)");
  c->add_option("--batch", o.batch,
                "Batch size for a symbolic batch dimension (with "
                "--random-inputs)")
      ->check(positiveInteger());
  c->add_option("--seed", o.seed,
                "Seed for random inputs and for parameters without initial "
                "values (PyTorch default initialisation)");
  c->add_option("--stage", o.stage,
                "fcc: evaluate the imported model; training: build the "
                "training program and evaluate one of its functions")
      ->check(CLI::IsMember({"fcc", "training"}));
  c->add_option("--function", o.function,
                "Function to evaluate (default: forward, or train_step at "
                "--stage training; also eval_step, eval_step_tta, "
                "ema_update, loss_and_grads)");
  c->add_option("--bias-lr-mult", o.biasLrMult,
                "At --stage training: learning-rate multiplier of biases and "
                "BatchNorm parameters")
      ->check(CLI::PositiveNumber);
  c->add_option("--bias-wd-mult", o.biasWdMult,
                "At --stage training: weight-decay multiplier of biases and "
                "BatchNorm parameters")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--output-dir", o.outputDir,
                "Write each output as DIR/output_K.pb");
  c->add_option("--print-limit", o.printLimit,
                "Values printed per output (0 = all)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("--no-fuse-bn", o.noFuseBn,
              "Keep BatchNorms unfused: no fcc-fuse-batchnorm (BatchNorm + "
              "activation + pool + residual as one op, forward and "
              "backward) and no fcc-fold-batchnorm (evaluation BatchNorms "
              "folded into the convolution weights)");
  return c;
}

static void printTensor(const std::string &name, const Tensor &t,
                        int64_t limit) {
  std::printf("%s: %s %s\n", name.c_str(), formatShape(t.shape).c_str(),
              t.isInt ? "int64" : "float32");
  int64_t n = t.numel(), shown = limit ? std::min(n, limit) : n;
  std::printf("  [");
  for (int64_t k = 0; k < shown; ++k) {
    if (k)
      std::printf(", ");
    if (t.isInt)
      std::printf("%lld", static_cast<long long>(t.ints[k]));
    else
      std::printf("%.8g", t.data[k]);
  }
  std::printf("%s]\n", shown < n ? ", ..." : "");
}

int fcc::runRun(const RunOptions &o) {
  onnx::ModelProto model;
  try {
    model = readOnnxFile(o.model);
  } catch (const ImportError &e) {
    return reportError(o.model + ": " + e.what());
  }
  // Graph inputs that are not initializers, in order.
  std::vector<std::string> graphInputs;
  {
    std::set<std::string> inits;
    for (const auto &t : model.graph().initializer())
      inits.insert(t.name());
    for (const auto &in : model.graph().input())
      if (!inits.count(in.name()))
        graphInputs.push_back(in.name());
  }

  // Read --input files. Inputs of the ONNX graph: float tensors are runtime
  // inputs (their shapes fix the model's), integer tensors are bound as
  // compile-time constants. Other names are arguments of the evaluated
  // function (labels, optimizer state, hyper-parameters of --stage training).
  ImportOptions importOpts;
  importOpts.batchSize = o.batch;
  std::map<std::string, Tensor> given;
  size_t positional = 0;
  for (const std::string &spec : o.inputs) {
    std::string name, path = spec;
    auto eq = spec.find('=');
    if (eq != std::string::npos) {
      name = spec.substr(0, eq);
      path = spec.substr(eq + 1);
    } else {
      if (positional >= graphInputs.size())
        return reportError("--input " + spec + ": the model has only " +
                           std::to_string(graphInputs.size()) + " inputs");
      name = graphInputs[positional++];
    }
    bool graphInput = std::find(graphInputs.begin(), graphInputs.end(),
                                name) != graphInputs.end();
    if (!graphInput && o.stage == "fcc")
      return reportError("--input " + spec + ": the model has no input '" +
                         name + "'");
    auto proto = readTensorFile(path);
    if (!proto)
      return reportError(llvm::toString(proto.takeError()));
    HostTensor host;
    try {
      host = HostTensor::fromProto(*proto);
    } catch (const ImportError &e) {
      return reportError(path + ": " + e.what());
    }
    if (graphInput && !host.isFloat()) {
      importOpts.boundInputs[name] = host;
      continue;
    }
    if (graphInput)
      importOpts.inputShapes[name] = host.shape;
    given[name] = toTensor(host);
  }

  DialectRegistry registry;
  registerAllDialects(registry);
  MLIRContext context(registry);
  auto module = importOnnxModel(context, model, importOpts, o.model);
  if (!module)
    return reportError(llvm::toString(module.takeError()));
  PassManager pm(&context);
  PipelineOptions pipeline;
  pipeline.stage = o.stage == "training" ? Stage::Training : Stage::Import;
  pipeline.gradFunction = true;
  pipeline.biasLrMult = o.biasLrMult;
  pipeline.biasWdMult = o.biasWdMult;
  pipeline.fuseBatchNorm = !o.noFuseBn;
  buildPipeline(pm, pipeline);
  if (failed(pm.run(**module)))
    return reportError(o.model + ": the compilation pipeline failed");
  std::string fname = !o.function.empty() ? o.function
                      : o.stage == "training" ? "train_step" : "forward";
  func::FuncOp func = (*module)->lookupSymbol<func::FuncOp>(fname);
  if (!func)
    return reportError("--function: no function '" + fname + "' at stage " +
                       o.stage);

  // Random values for the data inputs not given.
  for (unsigned i = 0; i < func.getNumArguments(); ++i) {
    if (getParamAttr(func, i))
      continue;
    std::string name = argumentName(func, i);
    if (given.count(name))
      continue;
    if (!o.randomInputs ||
        !func.getArgAttr(i, FccDialect::kInputAttrName) ||
        func.getArgAttr(i, FccDialect::kLabelsAttrName))
      return reportError("no value for input '" + name + "' (give --input " + name +
                         "=FILE.pb" +
                         (func.getArgAttr(i, FccDialect::kInputAttrName) &&
                                  !func.getArgAttr(i, FccDialect::kLabelsAttrName)
                              ? " or --random-inputs)"
                              : ")"));
    auto s = cast<ShapedType>(func.getArgument(i).getType()).getShape();
    Tensor t = Tensor::zeros({s.begin(), s.end()});
    for (int64_t k = 0; k < t.numel(); ++k)
      t.data[k] = 2.0f * fcc_random_uniform(o.seed, 0x1a7u + i, k) - 1.0f;
    given[name] = std::move(t);
  }

  // Inputs that are parameters (weights fed as graph inputs) override the
  // initial values.
  EvalOptions evalOpts;
  evalOpts.seed = o.seed;
  auto outputs = evaluateNamed(func, given, evalOpts);
  if (!outputs)
    return reportError(o.model + ": " + llvm::toString(outputs.takeError()));

  if (!o.outputDir.empty())
    if (auto ec = llvm::sys::fs::create_directories(o.outputDir))
      return reportError("--output-dir: cannot create '" + o.outputDir +
                         "': " + ec.message());
  for (auto [k, t] : llvm::enumerate(*outputs)) {
    std::string name = resultName(func, k);
    printTensor(name, t, o.printLimit);
    if (!o.outputDir.empty())
      if (auto err = writeTensorFile(o.outputDir + "/output_" +
                                         std::to_string(k) + ".pb",
                                     t, name))
        return reportError(llvm::toString(std::move(err)));
  }
  return 0;
}
