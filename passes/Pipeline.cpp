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
  BuildTrainingOptions training;
  training.biasLrMult = o.biasLrMult;
  training.biasWdMult = o.biasWdMult;
  training.gradFunction = o.gradFunction;
  pm.addPass(createBuildTraining(training));
  // Removes gradients nobody uses (e.g. of frozen parameters) and duplicates.
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  if (o.stage == Stage::Training)
    return;
  PlanMemoryOptions plan;
  plan.inPlace = o.inPlace;
  pm.addPass(createPlanMemory(plan));
}
