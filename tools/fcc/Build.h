//===- Build.h - Compile generated trainer source into an executable -*- C++ -*-===//
#ifndef FCC_TOOLS_FCC_BUILD_H
#define FCC_TOOLS_FCC_BUILD_H

#include "codegen/TrainerEmitter.h"

#include "llvm/Support/Error.h"

#include <string>

namespace fcc {

struct BuildOptions {
  std::string output;     // executable path
  std::string keepSource; // directory to keep trainer.cpp/weights.bin in ("" = temp)
  std::string target = "cpu";
  bool verbose = false;
};

/// Writes the generated source (and weights blob) and builds the trainer with
/// the system C++ compiler against fcc's runtime libraries.
llvm::Error buildTrainer(const GeneratedProgram &program,
                         const BuildOptions &options);

} // namespace fcc

#endif // FCC_TOOLS_FCC_BUILD_H
