//===- Commands.h - fcc subcommands ---------------------------------*- C++ -*-===//
#ifndef FCC_TOOLS_FCC_COMMANDS_H
#define FCC_TOOLS_FCC_COMMANDS_H

#include "frontend/OnnxImporter.h"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fcc {

struct CompileOptions {
  std::string model;
  std::string output = "-";
  std::string emit = "exe";
  std::string target = "";      // "" = cuda when available, else cpu
  std::string gpuArch = "sm_80,sm_90";
  std::string recipe = "page24";
  int64_t batch = 512;
  std::vector<std::string> inputShapes; // NAME=DxDx...
  std::string dumpIrDir;
  std::string keepSource;
  bool printWeights = false;
  bool verbose = false;
  bool quiet = false;
  std::string precision = "fp32";
  std::string layout = "nchw"; // of 4-d activations; nhwc: --target cuda
  bool noFuseBn = false; // --no-fuse-bn
  bool noSideStream = false; // --no-side-stream (CUDA target)
  std::optional<double> biasLrMult;
  std::optional<double> biasWdMult;
  // Data-parallel training (fcc-inject-compression, fcc-insert-collectives).
  std::string compress = "none";
  std::string compressScope = "layerwise";
  bool errorFeedback = false;
  bool randomkUnbiased = false;
  int64_t minCompressBytes = 0;
  int64_t bucketBytes = 262144;
};

struct RunOptions {
  std::string model;
  std::vector<std::string> inputs; // [NAME=]FILE.pb
  bool randomInputs = false;
  int64_t batch = 1;
  uint64_t seed = 0;
  std::string outputDir;
  int64_t printLimit = 16;
  std::string stage = "fcc";
  std::string function;
  double biasLrMult = 1.0, biasWdMult = 1.0;
  bool noFuseBn = false; // --no-fuse-bn
};

CLI::App *addCompileCommand(CLI::App &app, CompileOptions &opts);
CLI::App *addRunCommand(CLI::App &app, RunOptions &opts);
int runCompile(const CompileOptions &opts);
int runRun(const RunOptions &opts);

/// CLI11 check: a whole number >= 1.
inline CLI::Validator positiveInteger() {
  return CLI::Validator(
      [](std::string &s) -> std::string {
        try {
          size_t used = 0;
          long long v = std::stoll(s, &used);
          if (used == s.size() && v >= 1)
            return "";
        } catch (...) {
        }
        return "must be a positive integer, got '" + s + "'";
      },
      "INT>=1");
}

/// Prints "fcc: error: <msg>" to stderr; returns 1 (the exit code).
int reportError(const std::string &msg);

/// Parses "1x3x32x32"; false if malformed.
bool parseShape(const std::string &text, std::vector<int64_t> &shape);

} // namespace fcc

#endif // FCC_TOOLS_FCC_COMMANDS_H
