//===- conformance.cpp - ONNX backend test data through fcc ---------------===//
//
// Runs the ONNX backend tests (libonnx-testdata: node/, pytorch-converted/)
// through fcc's importer and evaluator and compares with the expected outputs
// (|got - want| <= atol + rtol * |want|, rtol 1e-4, atol 1e-5).
//
// The tests listed in supported.txt must pass; every other test is counted as
// skipped (and reported if it happens to pass, so the list can be grown
// deliberately with --write-supported). Exit code 0 iff every listed test
// passes. Prints: "onnx-conformance: N passed, M failed, K skipped".
//
//===----------------------------------------------------------------------===//
#include "frontend/OnnxImporter.h"
#include "frontend/TensorIO.h"
#include "ir/ModelUtils.h"
#include "ir/ShapeInference.h"
#include "runtime/evaluator/Evaluator.h"
#include "tools/Registration.h"

#include "mlir/IR/MLIRContext.h"

#include <CLI/CLI.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>

namespace fs = std::filesystem;
using namespace fcc;

namespace {
constexpr double kRtol = 1e-4, kAtol = 1e-5;

struct Outcome {
  enum Kind { Pass, Fail, Unsupported } kind;
  std::string detail;
  /// The imported function computes with fcc ops (not only folded constants).
  bool usesKernels = false;
};

std::string compare(const Tensor &got, const HostTensor &want) {
  if (got.shape != want.shape)
    return "shape " + formatShape(got.shape) + " != expected " +
           formatShape(want.shape);
  for (int64_t k = 0; k < want.numel(); ++k) {
    double g = got.isInt ? double(got.ints[k]) : double(got.data[k]);
    double w = want.asDouble(k);
    if (std::isnan(w) && std::isnan(g))
      continue;
    if (!(std::fabs(g - w) <= kAtol + kRtol * std::fabs(w)))
      return "element " + std::to_string(k) + ": got " + std::to_string(g) +
             ", expected " + std::to_string(w);
  }
  return "";
}

Outcome runTest(const fs::path &dir) {
  bool usesKernels = false;
  onnx::ModelProto model;
  try {
    model = readOnnxFile((dir / "model.onnx").string());
  } catch (const ImportError &e) {
    return {Outcome::Unsupported, e.what()};
  }
  std::vector<std::string> graphInputs;
  std::set<std::string> inits;
  for (const auto &t : model.graph().initializer())
    inits.insert(t.name());
  for (const auto &in : model.graph().input())
    if (!inits.count(in.name()))
      graphInputs.push_back(in.name());

  std::vector<fs::path> sets;
  for (const auto &e : fs::directory_iterator(dir))
    if (e.is_directory() &&
        e.path().filename().string().rfind("test_data_set_", 0) == 0)
      sets.push_back(e.path());
  std::sort(sets.begin(), sets.end());
  if (sets.empty())
    return {Outcome::Unsupported, "no test_data_set_* folders"};

  for (const fs::path &set : sets) {
    ImportOptions opts;
    std::map<std::string, Tensor> data;
    for (size_t k = 0; k < graphInputs.size(); ++k) {
      fs::path file = set / ("input_" + std::to_string(k) + ".pb");
      if (!fs::exists(file))
        continue; // optional input left out
      auto proto = readTensorFile(file.string());
      if (!proto)
        return {Outcome::Unsupported, llvm::toString(proto.takeError())};
      HostTensor h;
      try {
        h = HostTensor::fromProto(*proto);
      } catch (const ImportError &e) {
        return {Outcome::Unsupported, e.what()};
      }
      // Integer, boolean and scalar inputs (shapes, ratios, flags) are bound
      // at compile time; float32 tensors are runtime inputs.
      if (h.isFloat() && h.dtype != onnx::TensorProto::FLOAT)
        return {Outcome::Unsupported, "non-float32 input"};
      if (!h.isFloat() || h.rank() == 0) {
        opts.boundInputs[graphInputs[k]] = h;
      } else {
        opts.inputShapes[graphInputs[k]] = h.shape;
        data[graphInputs[k]] = toTensor(h);
      }
    }
    mlir::DialectRegistry registry;
    registerAllDialects(registry);
    mlir::MLIRContext context(registry);
    auto module = importOnnxModel(context, model, opts, dir.filename().string());
    if (!module)
      return {Outcome::Unsupported, llvm::toString(module.takeError())};
    auto func = findModelFunction(**module);
    func.walk([&](mlir::Operation *op) {
      usesKernels |= llvm::isa<FccDialect>(op->getDialect());
    });
    auto outputs = evaluateNamed(func, data);
    if (!outputs)
      return {Outcome::Fail, llvm::toString(outputs.takeError())};
    for (size_t k = 0; k < outputs->size(); ++k) {
      fs::path file = set / ("output_" + std::to_string(k) + ".pb");
      auto proto = readTensorFile(file.string());
      if (!proto)
        return {Outcome::Fail, llvm::toString(proto.takeError())};
      HostTensor want;
      try {
        want = HostTensor::fromProto(*proto);
      } catch (const ImportError &e) {
        return {Outcome::Unsupported, e.what()};
      }
      std::string diff = compare((*outputs)[k], want);
      if (!diff.empty())
        return {Outcome::Fail, set.filename().string() + " output " +
                                   std::to_string(k) + ": " + diff};
    }
  }
  return {Outcome::Pass, "", usesKernels};
}
} // namespace

int main(int argc, char **argv) {
  CLI::App app{"Runs the ONNX backend test data through fcc"};
  std::string root = "/usr/share/libonnx-testdata/data";
  std::vector<std::string> suites = {"node", "pytorch-converted"};
  std::string supportedPath, writeSupported, only;
  bool verbose = false;
  app.add_option("--data-root", root, "libonnx-testdata data folder");
  app.add_option("--suites", suites, "Suites (sub-folders) to run")->delimiter(',');
  app.add_option("--supported", supportedPath,
                 "List of tests (suite/name) that must pass")->required();
  app.add_option("--write-supported", writeSupported,
                 "Write the list of all passing tests to FILE");
  app.add_option("--only", only, "Run only tests whose name contains this");
  app.add_flag("-v,--verbose", verbose, "One line per test");
  CLI11_PARSE(app, argc, argv);

  std::set<std::string> supported;
  {
    std::ifstream in(supportedPath);
    if (!in) {
      std::cerr << "conformance: error: cannot read " << supportedPath << "\n";
      return 1;
    }
    for (std::string line; std::getline(in, line);)
      if (!line.empty() && line[0] != '#')
        supported.insert(line);
  }

  int passed = 0, failed = 0, skipped = 0, passedFolded = 0;
  std::vector<std::string> passing, unlistedPassing;
  std::set<std::string> seen;
  for (const std::string &suite : suites) {
    fs::path dir = fs::path(root) / suite;
    if (!fs::is_directory(dir)) {
      std::cerr << "conformance: error: no test folder " << dir << "\n";
      return 1;
    }
    std::vector<fs::path> tests;
    for (const auto &e : fs::directory_iterator(dir))
      if (e.is_directory() && fs::exists(e.path() / "model.onnx"))
        tests.push_back(e.path());
    std::sort(tests.begin(), tests.end());
    for (const fs::path &t : tests) {
      std::string id = suite + "/" + t.filename().string();
      if (!only.empty() && id.find(only) == std::string::npos)
        continue;
      seen.insert(id);
      bool listed = supported.count(id);
      Outcome r = runTest(t);
      if (r.kind == Outcome::Pass)
        passing.push_back(id);
      if (listed && r.kind == Outcome::Pass) {
        ++passed;
        passedFolded += !r.usesKernels;
        if (verbose)
          std::cout << "PASS " << id << "\n";
      } else if (listed) {
        ++failed;
        std::cout << "FAIL " << id << ": " << r.detail << "\n";
      } else {
        ++skipped;
        if (r.kind == Outcome::Pass)
          unlistedPassing.push_back(id);
        if (verbose)
          std::cout << "SKIP " << id << ": "
                    << (r.kind == Outcome::Pass ? "passes, not listed"
                                                : r.detail.substr(0, 200))
                    << "\n";
      }
    }
  }
  if (only.empty())
    for (const std::string &id : supported)
      if (!seen.count(id)) {
        ++failed;
        std::cout << "FAIL " << id << ": listed but not found in the test data\n";
      }
  if (!unlistedPassing.empty())
    std::cout << "note: " << unlistedPassing.size()
              << " unlisted tests pass (add them with --write-supported)\n";
  if (!writeSupported.empty()) {
    std::ofstream out(writeSupported);
    out << "# ONNX backend tests fcc must pass (suite/test). Regenerate with\n"
           "# fcc-conformance --write-supported; review the diff.\n";
    for (const std::string &id : passing)
      out << id << "\n";
  }
  std::cout << "of the passing tests, " << passed - passedFolded
            << " run fcc ops on the CPU kernels and " << passedFolded
            << " are computed entirely by the importer's compile-time folding "
               "(integer/shape tests)\n";
  std::cout << "onnx-conformance: " << passed << " passed, " << failed
            << " failed, " << skipped << " skipped\n";
  return failed ? 1 : 0;
}
