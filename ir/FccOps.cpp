//===- FccOps.cpp - fcc op verifiers ----------------------------------------===//
//
// Verifiers check operand/result shapes and attributes against the rules in
// ShapeInference.h and report the mismatch in terms of the op's own operands.
//
//===----------------------------------------------------------------------===//
#include "ir/FccDialect.h"
#include "ir/FccFusedOps.h"
#include "ir/ShapeInference.h"

#include "mlir/IR/OpImplementation.h"
#include "mlir/IR/PatternMatch.h"
#include "llvm/ADT/STLExtras.h"

using namespace mlir;
using namespace fcc;

#define GET_OP_CLASSES
#include "ir/FccOps.cpp.inc"

static ArrayRef<int64_t> shapeOf(Value v) {
  return cast<ShapedType>(v.getType()).getShape();
}
static Type elementTypeOf(Value v) {
  return cast<ShapedType>(v.getType()).getElementType();
}

/// All `values` have the element type of the first one.
static LogicalResult verifySameElementType(Operation *op, ValueRange values) {
  if (values.empty())
    return success();
  Type expected = elementTypeOf(values.front());
  for (Value v : values.drop_front())
    if (elementTypeOf(v) != expected)
      return op->emitOpError("mixes element types ")
             << expected << " and " << elementTypeOf(v)
             << " (insert fcc.cast to convert)";
  return success();
}

/// Reports a failed shape rule, or a result type that disagrees with it.
static LogicalResult verifyResultShape(Operation *op,
                                       FailureOr<Shape> expected,
                                       const std::string &error,
                                       Value result) {
  if (failed(expected))
    return op->emitOpError() << error;
  if (shapeOf(result) != ArrayRef<int64_t>(*expected))
    return op->emitOpError("result shape ")
           << formatShape(shapeOf(result)) << " does not match the expected "
           << formatShape(*expected);
  return success();
}

static std::optional<ArrayRef<int64_t>> optionalShape(Value v) {
  if (!v)
    return std::nullopt;
  return shapeOf(v);
}

LogicalResult Conv2DOp::verify() {
  if (failed(verifySameElementType(*this, getOperation()->getOperands())) ||
      failed(verifySameElementType(*this, {getInput(), getOutput()})))
    return failure();
  std::string error;
  auto expected = inferConv2DShape(shapeOf(getInput()), shapeOf(getWeight()),
                                   optionalShape(getBias()), getStrides(),
                                   getPads(), getDilations(), getGroups(), error);
  return verifyResultShape(*this, expected, error, getOutput());
}

LogicalResult BatchNormOp::verify() {
  // Half data (input, output) with fp32 parameters and statistics.
  if (failed(verifyBatchNormElementTypes(
          *this, {{"input", getInput()}, {"result", getOutput()}},
          batchNormPerChannel(*this))))
    return failure();
  auto in = shapeOf(getInput());
  if (in.size() < 2)
    return emitOpError("expects an input of rank >= 2 (N, C, ...), got ")
           << formatShape(in);
  if (shapeOf(getOutput()) != in)
    return emitOpError("result shape ")
           << formatShape(shapeOf(getOutput())) << " differs from the input "
           << formatShape(in);
  int64_t channels = in[1];
  const char *names[] = {"scale", "shift", "running_mean", "running_var"};
  Value params[] = {getScale(), getShift(), getRunningMean(), getRunningVar()};
  for (auto [name, v] : llvm::zip(names, params))
    if (shapeOf(v) != ArrayRef<int64_t>{channels})
      return emitOpError() << name << " has shape " << formatShape(shapeOf(v))
                           << " but the input has " << channels << " channels";
  if (getEpsilon().convertToFloat() <= 0.0f)
    return emitOpError("epsilon must be positive, got ")
           << getEpsilon().convertToFloat();
  float m = getMomentum().convertToFloat();
  if (!(m >= 0.0f && m <= 1.0f))
    return emitOpError("momentum must be in [0, 1], got ") << m;
  size_t expectedStats = getTraining() ? 4 : 0;
  if (getTrainingStats().size() != expectedStats)
    return emitOpError() << (getTraining() ? "in training mode" : "in inference mode")
                         << " expects " << expectedStats
                         << " statistics results, got "
                         << getTrainingStats().size();
  for (Value v : getTrainingStats())
    if (shapeOf(v) != ArrayRef<int64_t>{channels})
      return emitOpError("statistics result has shape ")
             << formatShape(shapeOf(v)) << ", expected " << channels;
  return success();
}

LogicalResult CeluOp::verify() {
  if (getAlpha().convertToFloat() == 0.0f)
    return emitOpError("alpha must be non-zero");
  return success();
}

LogicalResult MaxPool2DOp::verify() {
  if (failed(verifySameElementType(*this, {getInput(), getOutput()})))
    return failure();
  std::string error;
  auto expected = inferPool2DShape(shapeOf(getInput()), getKernel(),
                                   getStrides(), getPads(), getDilations(),
                                   getCeilMode(), error);
  return verifyResultShape(*this, expected, error, getOutput());
}

LogicalResult AvgPool2DOp::verify() {
  if (failed(verifySameElementType(*this, {getInput(), getOutput()})))
    return failure();
  std::string error;
  SmallVector<int64_t> dense = {1, 1};
  auto expected = inferPool2DShape(shapeOf(getInput()), getKernel(),
                                   getStrides(), getPads(), dense,
                                   getCeilMode(), error);
  return verifyResultShape(*this, expected, error, getOutput());
}

LogicalResult AddOp::verify() {
  if (failed(verifySameElementType(*this, {getLhs(), getRhs(), getOutput()})))
    return failure();
  std::string error;
  auto expected = inferBroadcastShape(shapeOf(getLhs()), shapeOf(getRhs()), error);
  return verifyResultShape(*this, expected, error, getOutput());
}

namespace {
/// add(linear(a, w), b) -> linear(a, w, b): a bias-free linear layer followed
/// by the addition of a tensor that broadcasts to its result (ONNX MatMul +
/// Add) is one linear layer with a bias.
struct FoldAddIntoLinearBias : public OpRewritePattern<AddOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(AddOp add,
                                PatternRewriter &rewriter) const override {
    for (int side = 0; side < 2; ++side) {
      Value lin = side ? add.getRhs() : add.getLhs();
      Value bias = side ? add.getLhs() : add.getRhs();
      auto linear = lin.getDefiningOp<LinearOp>();
      if (!linear || linear.getBias() || !linear->hasOneUse() ||
          linear.getBeta().convertToFloat() != 1.0f)
        continue;
      auto biasShape = shapeOf(bias);
      if (biasShape.size() > 2 || shapeOf(add.getOutput()) != shapeOf(lin))
        continue;
      rewriter.replaceOpWithNewOp<LinearOp>(
          add, add.getType(), linear.getInput(), linear.getWeight(), bias,
          linear.getTransAAttr(), linear.getTransBAttr(), linear.getAlphaAttr(),
          linear.getBetaAttr());
      rewriter.eraseOp(linear);
      return success();
    }
    return failure();
  }
};
} // namespace

void AddOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                        MLIRContext *context) {
  results.add<FoldAddIntoLinearBias>(context);
}

LogicalResult MulOp::verify() {
  if (bool(getRhs()) == getScalar().has_value())
    return emitOpError("expects either a second operand or a 'scalar' "
                       "attribute, not ")
           << (getRhs() ? "both" : "neither");
  if (!getRhs()) {
    if (getLhs().getType() != getOutput().getType())
      return emitOpError("result type ")
             << getOutput().getType() << " differs from the operand type "
             << getLhs().getType();
    return success();
  }
  if (failed(verifySameElementType(*this, {getLhs(), getRhs(), getOutput()})))
    return failure();
  std::string error;
  auto expected = inferBroadcastShape(shapeOf(getLhs()), shapeOf(getRhs()), error);
  return verifyResultShape(*this, expected, error, getOutput());
}

LogicalResult LinearOp::verify() {
  if (failed(verifySameElementType(*this, getOperation()->getOperands())) ||
      failed(verifySameElementType(*this, {getInput(), getOutput()})))
    return failure();
  std::string error;
  auto expected = inferLinearShape(shapeOf(getInput()), shapeOf(getWeight()),
                                   optionalShape(getBias()), getTransA(),
                                   getTransB(), error);
  return verifyResultShape(*this, expected, error, getOutput());
}

LogicalResult FlattenOp::verify() {
  if (failed(verifySameElementType(*this, {getInput(), getOutput()})))
    return failure();
  std::string error;
  auto expected = inferFlattenShape(shapeOf(getInput()), getAxis(), error);
  return verifyResultShape(*this, expected, error, getOutput());
}

LogicalResult ReshapeOp::verify() {
  if (failed(verifySameElementType(*this, {getInput(), getOutput()})))
    return failure();
  int64_t in = numElements(shapeOf(getInput()));
  int64_t out = numElements(shapeOf(getOutput()));
  if (in != out)
    return emitOpError("cannot reshape ")
           << formatShape(shapeOf(getInput())) << " (" << in << " elements) to "
           << formatShape(shapeOf(getOutput())) << " (" << out << " elements)";
  return success();
}

LogicalResult DropoutOp::verify() {
  float r = getRatio().convertToFloat();
  if (!(r >= 0.0f && r < 1.0f))
    return emitOpError("ratio must be in [0, 1), got ") << r;
  return success();
}

LogicalResult SoftmaxOp::verify() {
  int64_t rank = shapeOf(getInput()).size();
  int64_t axis = getAxis();
  if (axis < -rank || axis >= rank)
    return emitOpError("axis ") << axis << " is out of range for a rank-"
                                << rank << " input";
  return success();
}

LogicalResult CastOp::verify() {
  if (shapeOf(getInput()) != shapeOf(getOutput()))
    return emitOpError("changes the shape from ")
           << formatShape(shapeOf(getInput())) << " to "
           << formatShape(shapeOf(getOutput()))
           << "; a cast only changes the element type";
  return success();
}

/// cast(x : T -> T) = x; cast(cast(x : A -> B) : B -> A) = x when B is at
/// least as wide as A in range and precision (f16 -> f32 -> f16,
/// bf16 -> f32 -> bf16): the round trip is exact. Narrowing first is a
/// rounding and never folds.
OpFoldResult CastOp::fold(FoldAdaptor) {
  Type in = elementTypeOf(getInput()), out = elementTypeOf(getOutput());
  if (in == out)
    return getInput();
  if (auto inner = getInput().getDefiningOp<CastOp>()) {
    Type original = elementTypeOf(inner.getInput());
    if (original == out && in.isF32())
      return inner.getInput();
  }
  return {};
}
