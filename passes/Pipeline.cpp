//===- Pipeline.cpp - fcc's pass pipelines --------------------------------===//
#include "passes/Pipeline.h"
#include "passes/Passes.h"

#include "mlir/Transforms/Passes.h"

using namespace mlir;

void fcc::buildPipeline(OpPassManager &pm, const PipelineOptions &o) {
  // Import clean-up: MatMul + Add into biased linear layers, dead glue.
  pm.addPass(createCanonicalizerPass());
  if (o.stage == Stage::Import)
    return;
  // BatchNorm + activation (+ pool, + residual) into fcc.bn_act, before the
  // training program is derived, so that its backward is fused too.
  if (o.fuseBatchNorm)
    pm.addPass(createFuseBatchNorm());
  // Mixed precision on the forward model; the backward pass inherits it.
  // After fusion: fcc.bn_act, like batch_norm, reads and writes half data
  // with fp32 parameters and statistics.
  if (o.precision != "fp32") {
    InsertHalfOptions half;
    half.precision = o.precision;
    pm.addPass(createInsertHalf(half));
  }
  BuildTrainingOptions training;
  training.biasLrMult = o.biasLrMult;
  training.biasWdMult = o.biasWdMult;
  training.gradFunction = o.gradFunction;
  training.lossScaling = o.precision == "fp16";
  pm.addPass(createBuildTraining(training));
  // Inference BatchNorms (evaluation steps) into the convolution weights.
  if (o.fuseBatchNorm)
    pm.addPass(createFoldBatchNorm());
  // Compressed gradients, then the collectives of data-parallel training.
  InjectCompressionOptions compression;
  compression.method = o.compress;
  compression.scope = o.compressScope;
  compression.errorFeedback = o.errorFeedback;
  compression.randomkUnbiased = o.randomkUnbiased;
  compression.minCompressBytes = o.minCompressBytes;
  pm.addPass(createInjectCompression(compression));
  if (o.collectives) {
    InsertCollectivesOptions collectives;
    collectives.bucketBytes = o.bucketBytes;
    pm.addPass(createInsertCollectives(collectives));
  }
  // Removes gradients nobody uses (e.g. of frozen parameters) and duplicates.
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  if (o.stage == Stage::Training)
    return;
  // Stream scheduling changes live ranges: before the memory plan.
  if (o.sideStream)
    pm.addPass(createOverlapWeightGrads());
  PlanMemoryOptions plan;
  plan.inPlace = o.inPlace;
  plan.halfBytes = o.halfBytes;
  plan.layout = o.layout;
  pm.addPass(createPlanMemory(plan));
}
