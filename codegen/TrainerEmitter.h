//===- TrainerEmitter.h - Training program -> C++ source ----------*- C++ -*-===//
//
// Lowers a planned training module (fcc-build-training + fcc-plan-memory) to
// MLIR's EmitC dialect and prints it with the EmitC C++ emitter: one
// translation unit that defines fcc_generated_program()
// (runtime/include/fcc/runtime/program.h). Every fcc op becomes a call of a
// runtime kernel on pointers into the trainer's state buffers or the planned
// arena; initial weights travel in a binary blob embedded with `.incbin`.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_CODEGEN_TRAINEREMITTER_H
#define FCC_CODEGEN_TRAINEREMITTER_H

#include "codegen/Recipe.h"

#include "mlir/IR/BuiltinOps.h"

#include <string>
#include <vector>

namespace fcc {

struct CodegenOptions {
  std::string target = "cpu";
  std::string modelName;  // for messages and the program struct
  Recipe recipe;          // run-time defaults
  std::string weightsFile = "weights.bin"; // blob name next to the source
  std::string precision = "fp32"; // recorded in the program (fp32/fp16/bf16)
  std::vector<char> onnxModel; // the source model, embedded for export
  std::string compression = "none";        // recorded for reports
  std::string compressionScope = "layerwise";
  // Memory layout of 4-d activations: "nchw", or "nhwc" (CUDA target only;
  // every op touching a 4-d activation must support it, else run() fails
  // naming the op).
  std::string layout = "nchw";
};

struct GeneratedProgram {
  std::string source;        // the C++ translation unit
  std::vector<char> weights; // initial parameter values (may be empty)
  std::vector<char> model;   // the source ONNX model (may be empty)
  int64_t arenaBytes = 0;
  uint64_t planHash = 0;
};

/// Generates the trainer source for a module that holds @train_step,
/// @eval_step, @eval_step_tta and @ema_update with memory plans.
mlir::FailureOr<GeneratedProgram>
generateTrainerSource(mlir::ModuleOp planned, const CodegenOptions &options);

} // namespace fcc

#endif // FCC_CODEGEN_TRAINEREMITTER_H
