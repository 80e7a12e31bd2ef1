//===- Build.h - Compile generated trainer source into an executable -*- C++ -*-===//
#ifndef FCC_TOOLS_FCC_BUILD_H
#define FCC_TOOLS_FCC_BUILD_H

#include "codegen/TrainerEmitter.h"

#include "llvm/Support/Error.h"

#include <string>
#include <vector>

namespace fcc {

struct BuildOptions {
  std::string output;     // executable path
  std::string keepSource; // directory to keep trainer.cpp/weights.bin in ("" = temp)
  std::string target = "cpu";
  std::string gpuArch = "sm_80,sm_90"; // --target cuda: nvcc -gencode list
  bool verbose = false;
};

/// Writes the generated source (and weights blob) and builds the trainer with
/// the system C++ compiler against fcc's runtime libraries.
llvm::Error buildTrainer(const GeneratedProgram &program,
                         const BuildOptions &options);

/// Whether this fcc can build CUDA trainers (built with the CUDA runtime and
/// nvcc is found); `why` says what is missing otherwise.
bool cudaTargetAvailable(std::string *why = nullptr);

/// Parses "sm_80,sm_90" into nvcc -gencode arguments; false if malformed.
bool gpuArchFlags(const std::string &archs, std::vector<std::string> &flags);

} // namespace fcc

#endif // FCC_TOOLS_FCC_BUILD_H
