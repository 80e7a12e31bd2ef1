//===- FccFusedOps.cpp - Verifiers of the fused BatchNorm ops -------------===//
//
// fcc.bn_act, fcc.bn_act_grad and fcc.fold_bn (ir/FccFusedOps.td): element
// types, shapes, attributes and the activation/pooling configuration, with
// messages that name the offending operand or attribute; and the helpers of
// FccFusedOps.h (the element-type rule is shared with fcc.batch_norm and
// fcc.batch_norm_grad).
//
//===----------------------------------------------------------------------===//
#include "ir/FccFusedOps.h"

using namespace mlir;
using namespace fcc;

std::optional<int> fcc::fusedActivationCode(StringRef activation) {
  if (activation == "none")
    return FCC_ACT_NONE;
  if (activation == "relu")
    return FCC_ACT_RELU;
  if (activation == "celu")
    return FCC_ACT_CELU;
  return std::nullopt;
}

FailureOr<Shape> fcc::inferBnActShape(ArrayRef<int64_t> input,
                                      std::optional<ArrayRef<int64_t>> kernel,
                                      std::optional<ArrayRef<int64_t>> strides,
                                      std::string &error) {
  if (input.size() != 4) {
    error = "expects a 4-D input (NCHW), got " + formatShape(input);
    return failure();
  }
  if (kernel.has_value() != strides.has_value()) {
    error = "expects both 'pool_kernel' and 'pool_strides' or neither";
    return failure();
  }
  if (!kernel)
    return Shape(input.begin(), input.end());
  SmallVector<int64_t> pads = {0, 0, 0, 0}, dilations = {1, 1};
  auto pooled = inferPool2DShape(input, *kernel, *strides, pads, dilations,
                                 /*ceilMode=*/false, error);
  if (failed(pooled))
    error = "pooling: " + error;
  return pooled;
}

namespace {

template <typename OpT>
fcc_bn_act_desc descriptorOf(OpT op, Value input, Value output) {
  auto x = cast<ShapedType>(input.getType()).getShape();
  auto y = cast<ShapedType>(output.getType()).getShape();
  fcc_bn_act_desc d{};
  d.n = x[0], d.c = x[1], d.h = x[2], d.w = x[3];
  d.activation = *fusedActivationCode(op.getActivation());
  d.alpha = op.getAlpha().convertToFloat();
  d.eps = op.getEpsilon().convertToFloat();
  if (auto k = op.getPoolKernel()) {
    d.pool_kh = (*k)[0], d.pool_kw = (*k)[1];
    d.pool_sh = (*op.getPoolStrides())[0], d.pool_sw = (*op.getPoolStrides())[1];
  }
  d.oh = y[2], d.ow = y[3];
  return d;
}

} // namespace

LogicalResult fcc::verifyBatchNormElementTypes(
    Operation *op, ArrayRef<std::pair<StringRef, Value>> data,
    ArrayRef<std::pair<StringRef, Value>> perChannel) {
  auto elementOf = [](Value v) {
    return cast<ShapedType>(v.getType()).getElementType();
  };
  if (!data.empty()) {
    auto [inputName, input] = data.front();
    Type want = elementOf(input); // f32, f16 or bf16 by the op's ODS types
    for (auto [name, v] : data.drop_front())
      if (elementOf(v) != want)
        return op->emitOpError()
               << name << " has element type " << elementOf(v) << " but the "
               << inputName << " has " << want
               << " (the data tensors of this op share one element type; "
                  "insert fcc.cast to convert)";
  }
  for (auto [name, v] : perChannel)
    if (!elementOf(v).isF32())
      return op->emitOpError()
             << name << " has element type " << elementOf(v)
             << ", expected 'f32' (BatchNorm parameters and statistics stay "
                "fp32 for every data type)";
  return success();
}

fcc_bn_act_desc fcc::bnActDescriptor(BnActOp op) {
  return descriptorOf(op, op.getInput(), op.getOutput());
}

fcc_bn_act_desc fcc::bnActDescriptor(BnActGradOp op) {
  return descriptorOf(op, op.getInput(), op.getOutputGrad());
}

namespace {

ArrayRef<int64_t> shapeOf(Value v) {
  return cast<ShapedType>(v.getType()).getShape();
}

/// Every value in `values` has shape [channels]; `names` names them.
LogicalResult verifyPerChannel(Operation *op, ArrayRef<StringRef> names,
                               ValueRange values, int64_t channels) {
  for (auto [name, v] : llvm::zip(names, values))
    if (shapeOf(v) != ArrayRef<int64_t>{channels})
      return op->emitOpError() << name << " has shape "
                               << formatShape(shapeOf(v)) << " but the input has "
                               << channels << " channels";
  return success();
}

/// The activation name and CELU's alpha.
LogicalResult verifyActivation(Operation *op, StringRef activation,
                               float alpha) {
  auto code = fusedActivationCode(activation);
  if (!code)
    return op->emitOpError("activation must be \"relu\", \"celu\" or "
                           "\"none\", got \"")
           << activation << "\"";
  if (*code == FCC_ACT_CELU && alpha == 0.0f)
    return op->emitOpError("alpha must be non-zero");
  return success();
}

LogicalResult verifyEpsilon(Operation *op, float epsilon) {
  if (!(epsilon > 0.0f))
    return op->emitOpError("epsilon must be positive, got ") << epsilon;
  return success();
}

} // namespace

LogicalResult BnActOp::verify() {
  auto in = shapeOf(getInput());
  SmallVector<std::pair<StringRef, Value>> data = {{"input", getInput()},
                                                   {"result", getOutput()}};
  if (getResidual())
    data.push_back({"residual", getResidual()});
  if (failed(verifyBatchNormElementTypes(*this, data,
                                         batchNormPerChannel(*this))))
    return failure();
  std::string error;
  auto expected =
      inferBnActShape(in, getPoolKernel(), getPoolStrides(), error);
  if (failed(expected))
    return emitOpError() << error;
  if (shapeOf(getOutput()) != ArrayRef<int64_t>(*expected))
    return emitOpError("result shape ")
           << formatShape(shapeOf(getOutput())) << " does not match the expected "
           << formatShape(*expected);
  if (getResidual() && getResidual().getType() != getOutput().getType())
    return emitOpError("residual has type ")
           << getResidual().getType() << " but the result has type "
           << getOutput().getType();
  int64_t channels = in[1];
  if (failed(verifyPerChannel(
          *this, {"scale", "shift", "running_mean", "running_var"},
          {getScale(), getShift(), getRunningMean(), getRunningVar()},
          channels)) ||
      failed(verifyEpsilon(*this, getEpsilon().convertToFloat())) ||
      failed(verifyActivation(*this, getActivation(),
                              getAlpha().convertToFloat())))
    return failure();
  float m = getMomentum().convertToFloat();
  if (!(m >= 0.0f && m <= 1.0f))
    return emitOpError("momentum must be in [0, 1], got ") << m;
  size_t expectedStats = getTraining() ? 4 : 0;
  if (getTrainingStats().size() != expectedStats)
    return emitOpError() << (getTraining() ? "in training mode"
                                           : "in inference mode")
                         << " expects " << expectedStats
                         << " statistics results, got "
                         << getTrainingStats().size();
  for (Value v : getTrainingStats())
    if (shapeOf(v) != ArrayRef<int64_t>{channels})
      return emitOpError("statistics result has shape ")
             << formatShape(shapeOf(v)) << ", expected " << channels;
  return success();
}

LogicalResult BnActGradOp::verify() {
  auto in = shapeOf(getInput());
  if (failed(verifyBatchNormElementTypes(*this,
                                         {{"input", getInput()},
                                          {"output gradient", getOutputGrad()},
                                          {"input gradient", getInputGrad()}},
                                         {{"scale", getScale()},
                                          {"shift", getShift()},
                                          {"batch_mean", getBatchMean()},
                                          {"batch_var", getBatchVar()},
                                          {"scale gradient", getScaleGrad()},
                                          {"shift gradient", getShiftGrad()}})))
    return failure();
  std::string error;
  auto expected =
      inferBnActShape(in, getPoolKernel(), getPoolStrides(), error);
  if (failed(expected))
    return emitOpError() << error;
  if (shapeOf(getOutputGrad()) != ArrayRef<int64_t>(*expected))
    return emitOpError("output gradient has shape ")
           << formatShape(shapeOf(getOutputGrad())) << ", expected "
           << formatShape(*expected);
  if (shapeOf(getInputGrad()) != in)
    return emitOpError("input gradient has shape ")
           << formatShape(shapeOf(getInputGrad())) << ", expected "
           << formatShape(in);
  if (failed(verifyPerChannel(
          *this,
          {"scale", "shift", "batch_mean", "batch_var", "scale gradient",
           "shift gradient"},
          {getScale(), getShift(), getBatchMean(), getBatchVar(),
           getScaleGrad(), getShiftGrad()},
          in[1])))
    return failure();
  return failure(failed(verifyEpsilon(*this, getEpsilon().convertToFloat())) ||
                 failed(verifyActivation(*this, getActivation(),
                                         getAlpha().convertToFloat())));
}

LogicalResult FoldBnOp::verify() {
  auto w = shapeOf(getWeight());
  if (getFoldedWeight().getType() != getWeight().getType())
    return emitOpError("folded weight has type ")
           << getFoldedWeight().getType() << ", expected the weight's "
           << getWeight().getType();
  // As the runtime's fold_bn: the weights and biases in the convolution's
  // type, the BatchNorm's parameters and statistics in f32.
  SmallVector<std::pair<StringRef, Value>> convTensors = {
      {"weight", getWeight()}, {"folded bias", getFoldedBias()}};
  if (getBias())
    convTensors.push_back({"bias", getBias()});
  if (failed(verifyBatchNormElementTypes(*this, convTensors,
                                         {{"scale", getScale()},
                                          {"shift", getShift()},
                                          {"mean", getMean()},
                                          {"var", getVar()}})))
    return failure();
  SmallVector<StringRef> names = {"scale", "shift", "mean", "var",
                                  "folded bias"};
  SmallVector<Value> values = {getScale(), getShift(), getMean(), getVar(),
                               getFoldedBias()};
  if (getBias()) {
    names.push_back("bias");
    values.push_back(getBias());
  }
  for (auto [name, v] : llvm::zip(names, values))
    if (shapeOf(v) != ArrayRef<int64_t>{w[0]})
      return emitOpError() << name << " has shape " << formatShape(shapeOf(v))
                           << " but the weight has " << w[0]
                           << " output channels";
  return verifyEpsilon(*this, getEpsilon().convertToFloat());
}
