//===- Pipeline.h - fcc's pass pipelines -----------------------------*- C++ -*-===//
//
// The pass order of `fcc compile`, by stage. Kept in one place so that the
// driver, the tests and docs/ARCHITECTURE.md agree.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_PASSES_PIPELINE_H
#define FCC_PASSES_PIPELINE_H

#include "mlir/Pass/PassManager.h"

#include <string>

namespace fcc {

enum class Stage {
  Import,   // the imported forward model, cleaned up
  Training, // train/eval/EMA step functions
  Planned   // plus the memory plan (input of code generation)
};

struct PipelineOptions {
  Stage stage = Stage::Training;
  double biasLrMult = 1.0;
  double biasWdMult = 1.0;
  bool gradFunction = false; // also emit @loss_and_grads
  bool inPlace = true;       // memory planning may overwrite dying operands
  std::string precision = "fp32"; // fp32, fp16 (loss scaling) or bf16
  int64_t halfBytes = 4;     // storage of a half element (4: CPU emulation)
  std::string layout = "nchw"; // storage of 4-d activations (nhwc: CUDA)
  bool fuseBatchNorm = true; // fcc-fuse-batchnorm and fcc-fold-batchnorm
  // Data parallelism: gradient compression (fcc-inject-compression) and the
  // collectives that average gradients over ranks (fcc-insert-collectives).
  std::string compress = "none";
  std::string compressScope = "layerwise";
  bool errorFeedback = false;
  bool randomkUnbiased = false;
  int64_t minCompressBytes = 0;
  bool collectives = false;
  int64_t bucketBytes = 262144;
  // CUDA target: weight gradients on a second stream
  // (fcc-overlap-weight-grads).
  bool sideStream = false;
};

void buildPipeline(mlir::OpPassManager &pm, const PipelineOptions &options);

} // namespace fcc

#endif // FCC_PASSES_PIPELINE_H
