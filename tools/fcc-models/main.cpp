//===- main.cpp - fcc-models: write the model zoo as ONNX files -----------===//
//
// Command-line front end of models/ModelZoo: builds one of fcc's benchmark
// models with the requested width, input shape, batch size and (optionally)
// initial weights, verifies it with the ONNX checker and shape inference, and
// writes it. Graph-only files are what the repository ships in models/.
//
//===----------------------------------------------------------------------===//
#include "models/ModelZoo.h"

#include <CLI/CLI.hpp>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>

using namespace fcc::models;

namespace {

std::string formatDouble(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

int fail(const std::string &message) {
  std::cerr << "fcc-models: error: " << message << "\n";
  return 1;
}

std::string joinNames() {
  std::string s;
  for (const std::string &n : zooModelNames())
    s += (s.empty() ? "" : ", ") + n;
  return s;
}

int run(int argc, char **argv) {
  CLI::App app{"Writes fcc's built-in training models (ResNet9, AlexNet) as "
               "ONNX files.\nGraph-only by default: parameters are graph "
               "inputs without values.",
               "fcc-models"};
  std::string name, output, input = "3x32x32";
  double widthMult = 1.0;
  bool list = false, withWeights = false;
  uint64_t seed = 0;
  int64_t batch = 0;

  app.add_option("name", name, "Model to build: " + joinNames());
  app.add_flag("--list", list, "Print the models with a description and exit");
  app.add_option("-o,--output", output, "Output .onnx file");
  app.add_option("--width-mult", widthMult,
                 "Scale hidden widths: c' = max(1, round(c * X))")
      ->capture_default_str();
  app.add_option("--input", input,
                 "Input image shape CxHxW (1x28x28 for Fashion-MNIST)")
      ->capture_default_str();
  CLI::Option *weightsOpt =
      app.add_flag("--with-weights", withWeights,
                   "Store parameters as initializers (PyTorch default init)");
  app.add_option("--seed", seed, "Seed of the initial weights (default 0)")
      ->needs(weightsOpt);
  CLI::Option *batchOpt = app.add_option(
      "--batch", batch, "Static batch size (default: symbolic \"N\")");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    if (e.get_exit_code() == 0)
      return app.exit(e); // --help
    return fail(e.what());
  }

  if (list) {
    for (const ZooModelInfo &m : zooModels()) {
      std::string padded = m.name;
      padded.resize(std::max<size_t>(padded.size() + 2, 14), ' ');
      std::cout << padded << m.description << "\n";
    }
    return 0;
  }
  if (name.empty())
    return fail("no model given (one of: " + joinNames() + "; see --list)");
  if (output.empty())
    return fail("no output file given (-o FILE)");

  ZooOptions options;
  if (!(widthMult > 0) || !std::isfinite(widthMult))
    return fail("--width-mult must be > 0, not " + formatDouble(widthMult));
  options.widthMult = widthMult;
  if (std::string err = parseInputShape(input, options); !err.empty())
    return fail("--input: " + err);
  if (batchOpt->count()) {
    if (batch < 1)
      return fail("--batch must be >= 1, not " + std::to_string(batch));
    options.batch = batch;
  }
  options.withWeights = withWeights;
  options.seed = seed;

  ZooResult result = buildZooModel(name, options);
  if (!result)
    return fail(result.error);
  if (std::string err = verifyZooModel(*result.model); !err.empty())
    return fail("internal error: the generated " + name +
                " model is invalid: " + err);

  std::ofstream out(output, std::ios::binary | std::ios::trunc);
  if (!out)
    return fail("cannot write '" + output + "': " + std::strerror(errno));
  if (!result.model->SerializeToOstream(&out) || !(out.flush()))
    return fail("cannot write '" + output + "': " + std::strerror(errno));
  out.close();

  std::cerr << "fcc-models: " << name << ": "
            << countTrainableParameters(*result.model)
            << " trainable parameters, "
            << (withWeights ? "weights (seed " + std::to_string(seed) + ")"
                            : std::string("graph-only"))
            << " -> " << output << "\n";
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception &e) {
    return fail(e.what());
  } catch (...) {
    return fail("unexpected internal error");
  }
}
