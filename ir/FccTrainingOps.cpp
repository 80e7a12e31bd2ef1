//===- FccTrainingOps.cpp - Verifiers of the gradient and training ops ----===//
#include "ir/FccDialect.h"
#include "ir/FccFusedOps.h"
#include "ir/ShapeInference.h"

using namespace mlir;
using namespace fcc;

static ArrayRef<int64_t> shapeOf(Value v) {
  return cast<ShapedType>(v.getType()).getShape();
}

static LogicalResult expectShape(Operation *op, Value v, ArrayRef<int64_t> want,
                                 StringRef what) {
  if (shapeOf(v) != want)
    return op->emitOpError() << what << " has shape "
                             << formatShape(shapeOf(v)) << ", expected "
                             << formatShape(want);
  return success();
}

/// The gradient must have the shape the forward op produced.
static LogicalResult checkForwardShape(Operation *op, FailureOr<Shape> forward,
                                       const std::string &error,
                                       Value outputGrad) {
  if (failed(forward))
    return op->emitOpError() << error;
  return expectShape(op, outputGrad, *forward, "output gradient");
}

LogicalResult Conv2DGradInputOp::verify() {
  std::string error;
  auto fwd = inferConv2DShape(shapeOf(getInputGrad()), shapeOf(getWeight()),
                              std::nullopt, getStrides(), getPads(),
                              getDilations(), getGroups(), error);
  return checkForwardShape(*this, fwd, error, getOutputGrad());
}

LogicalResult Conv2DGradWeightOp::verify() {
  std::string error;
  auto fwd = inferConv2DShape(shapeOf(getInput()), shapeOf(getWeightGrad()),
                              std::nullopt, getStrides(), getPads(),
                              getDilations(), getGroups(), error);
  return checkForwardShape(*this, fwd, error, getOutputGrad());
}

LogicalResult BatchNormGradOp::verify() {
  // Half data (input and gradients) with fp32 scale, statistics and
  // parameter gradients, as the forward fcc.batch_norm.
  if (failed(verifyBatchNormElementTypes(*this,
                                         {{"input", getInput()},
                                          {"output gradient", getOutputGrad()},
                                          {"input gradient", getInputGrad()}},
                                         {{"scale", getScale()},
                                          {"batch_mean", getBatchMean()},
                                          {"batch_var", getBatchVar()},
                                          {"scale gradient", getScaleGrad()},
                                          {"shift gradient", getShiftGrad()}})))
    return failure();
  auto in = shapeOf(getInput());
  if (in.size() < 2)
    return emitOpError("expects an input of rank >= 2, got ") << formatShape(in);
  if (failed(expectShape(*this, getOutputGrad(), in, "output gradient")) ||
      failed(expectShape(*this, getInputGrad(), in, "input gradient")))
    return failure();
  for (Value v : {getScale(), getBatchMean(), getBatchVar(), getScaleGrad(),
                  getShiftGrad()})
    if (failed(expectShape(*this, v, {in[1]}, "per-channel operand")))
      return failure();
  return success();
}

LogicalResult MaxPool2DGradOp::verify() {
  std::string error;
  auto fwd = inferPool2DShape(shapeOf(getInput()), getKernel(), getStrides(),
                              getPads(), getDilations(), getCeilMode(), error);
  if (failed(checkForwardShape(*this, fwd, error, getOutputGrad())))
    return failure();
  return expectShape(*this, getInputGrad(), shapeOf(getInput()),
                     "input gradient");
}

LogicalResult AvgPool2DGradOp::verify() {
  std::string error;
  SmallVector<int64_t> dense = {1, 1};
  auto fwd = inferPool2DShape(shapeOf(getInputGrad()), getKernel(),
                              getStrides(), getPads(), dense, getCeilMode(),
                              error);
  return checkForwardShape(*this, fwd, error, getOutputGrad());
}

LogicalResult ReduceSumOp::verify() {
  auto in = shapeOf(getInput());
  Shape expected;
  int64_t rank = in.size(), last = -1;
  for (int64_t a : getAxes()) {
    if (a < 0 || a >= rank || a <= last)
      return emitOpError("axes must be increasing and within [0, ")
             << rank << "), got " << formatShape(getAxes());
    last = a;
  }
  for (int64_t k = 0; k < rank; ++k)
    if (!llvm::is_contained(getAxes(), k))
      expected.push_back(in[k]);
  return expectShape(*this, getOutput(), expected, "result");
}

LogicalResult DropoutMaskOp::verify() {
  float r = getRatio().convertToFloat();
  if (!(r >= 0.0f && r < 1.0f))
    return emitOpError("ratio must be in [0, 1), got ") << r;
  return success();
}

static LogicalResult verifyLogitsAndLabels(Operation *op, Value logits,
                                           Value labels) {
  auto l = shapeOf(logits);
  if (shapeOf(labels) != ArrayRef<int64_t>{l[0]})
    return op->emitOpError("labels have shape ")
           << formatShape(shapeOf(labels)) << " but the logits have " << l[0]
           << " rows";
  return success();
}

LogicalResult SoftmaxXentOp::verify() {
  return verifyLogitsAndLabels(*this, getLogits(), getLabels());
}

LogicalResult SoftmaxXentGradOp::verify() {
  if (failed(verifyLogitsAndLabels(*this, getLogits(), getLabels())))
    return failure();
  return expectShape(*this, getLogitsGrad(), shapeOf(getLogits()),
                     "logits gradient");
}

LogicalResult CountCorrectOp::verify() {
  return verifyLogitsAndLabels(*this, getLogits(), getLabels());
}
