//===- BuildTraining.cpp - Forward model -> training program --------------===//
//
// fcc-build-training turns the imported forward function `@forward(input,
// params...) -> logits` into the functions a trainer calls:
//
//   @train_step(params..., momentum buffers..., input, labels, hypers...)
//       -> (updated params and running statistics..., updated buffers...,
//           loss, correct)
//     forward in training mode (batch-statistics BatchNorm, random dropout
//     masks), mean softmax cross-entropy with label smoothing, reverse-mode
//     gradients of every trainable parameter (Autodiff.h), SGD with momentum /
//     Nesterov and L2 weight decay with per-group multipliers.
//   @eval_step(params..., input, labels, label_smoothing) -> (loss, correct)
//   @eval_step_tta(...): the same on logits averaged with the mirrored batch.
//   @ema_update(ema..., params..., decay) -> ema...
//   @loss_and_grads (with grad-function=true): loss and the raw gradients,
//     for gradient checks.
//
// Why a pass: the training program is derived, not written, so every later
// pass (BatchNorm fusion, half precision, compression, memory planning) sees
// one explicit program with the backward ops as ordinary IR.
//
//===----------------------------------------------------------------------===//
#include "passes/Autodiff.h"
#include "passes/FusedBatchNorm.h"
#include "passes/Passes.h"

#include "ir/FccDialect.h"
#include "ir/ModelUtils.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/IRMapping.h"

namespace fcc {
#define GEN_PASS_DEF_BUILDTRAINING
#include "passes/Passes.h.inc"
} // namespace fcc

using namespace mlir;
using namespace fcc;

namespace {

bool isBiasGroup(ParamRole role) {
  return role == ParamRole::bias || role == ParamRole::bn_scale ||
         role == ParamRole::bn_shift;
}

RankedTensorType scalarF32(OpBuilder &b) {
  return RankedTensorType::get({}, b.getF32Type());
}

/// How the forward ops are cloned into a step function.
struct CloneMode {
  bool training = false;
  Value seed; // dropout masks in training mode
};

/// The pieces of the forward model the pass works from.
struct Model {
  func::FuncOp forward;
  unsigned inputIndex = 0;         // the data-input argument
  SmallVector<unsigned> params;    // argument indices with #fcc.param
  Value logits;                    // value in `forward` used as logits
  int64_t batch = 0, classes = 0;
};

class TrainingBuilder {
public:
  TrainingBuilder(ModuleOp module, Model &model, bool lossScaling,
                  double biasLrMult,
                  double biasWdMult)
      : module(module), m(model), b(module.getContext()),
        lossScaling(lossScaling), biasLrMult(biasLrMult),
        biasWdMult(biasWdMult) {}

  LogicalResult buildTrainStep();
  LogicalResult buildEvalStep(bool tta);
  LogicalResult buildEmaUpdate();
  LogicalResult buildLossAndGrads();

private:
  /// Clones the forward body into the current block, mapping forward
  /// arguments through `map`; returns the logits, or null on failure.
  Value cloneForward(IRMapping &map, const CloneMode &mode,
                     SmallVectorImpl<Operation *> *cloned);
  func::FuncOp createFunc(StringRef name, ArrayRef<Type> args,
                          ArrayRef<DictionaryAttr> argAttrs);
  DictionaryAttr paramAttrs(unsigned forwardArg) {
    return m.forward.getArgAttrDict(forwardArg);
  }
  DictionaryAttr named(StringRef attr, StringRef value) {
    return b.getDictionaryAttr({b.getNamedAttr(attr, b.getStringAttr(value))});
  }
  Type labelsType() {
    return RankedTensorType::get({m.batch}, b.getI32Type());
  }
  DictionaryAttr updates(unsigned argIndex) {
    return b.getDictionaryAttr({b.getNamedAttr(
        FccDialect::kUpdatesAttrName, b.getI64IntegerAttr(argIndex))});
  }

  /// The arguments of a step function, built in order.
  struct Signature {
    SmallVector<Type> types;
    SmallVector<DictionaryAttr> attrs;
    unsigned add(Type type, DictionaryAttr attr) {
      types.push_back(type);
      attrs.push_back(attr);
      return types.size() - 1;
    }
  };
  /// Every forward parameter with its #fcc.param attributes.
  void addParams(Signature &sig) {
    for (unsigned p : m.params)
      sig.add(m.forward.getArgument(p).getType(), paramAttrs(p));
  }
  /// The image batch, then its labels; returns the batch's index.
  unsigned addBatch(Signature &sig) {
    unsigned input = sig.add(m.forward.getArgument(m.inputIndex).getType(),
                             m.forward.getArgAttrDict(m.inputIndex));
    sig.add(labelsType(),
            b.getDictionaryAttr(
                {b.getNamedAttr(FccDialect::kInputAttrName,
                                b.getStringAttr("labels")),
                 b.getNamedAttr(FccDialect::kLabelsAttrName, b.getUnitAttr())}));
    return input;
  }
  /// A run-time hyper-parameter (an f32 scalar unless `type` says else).
  unsigned addHyper(Signature &sig, StringRef name, Type type = {}) {
    return sig.add(type ? type : scalarF32(b),
                   named(FccDialect::kHyperAttrName, name));
  }

  ModuleOp module;
  Model &m;
  OpBuilder b;
  bool lossScaling;
  double biasLrMult, biasWdMult;
};

func::FuncOp TrainingBuilder::createFunc(StringRef name, ArrayRef<Type> args,
                                         ArrayRef<DictionaryAttr> argAttrs) {
  b.setInsertionPointToEnd(module.getBody());
  auto f = b.create<func::FuncOp>(m.forward.getLoc(), name,
                                  b.getFunctionType(args, {}));
  f.setAllArgAttrs(argAttrs);
  Block *entry = f.addEntryBlock();
  b.setInsertionPointToStart(entry);
  return f;
}

Value TrainingBuilder::cloneForward(IRMapping &map, const CloneMode &mode,
                                    SmallVectorImpl<Operation *> *cloned) {
  int64_t dropoutStream = 0;
  auto record = [&](Operation *op) {
    if (cloned)
      cloned->push_back(op);
  };
  for (Operation &op : m.forward.getBody().front().without_terminator()) {
    if (auto bn = dyn_cast<BatchNormOp>(op)) {
      // Training programs follow PyTorch: batch statistics and the unbiased
      // variance in the running update; evaluation uses the running stats.
      Type t1 = bn.getRunningMean().getType();
      SmallVector<Type> types = {bn.getOutput().getType()};
      if (mode.training)
        types.append(4, t1);
      auto nbn = b.create<BatchNormOp>(
          bn.getLoc(), types,
          ValueRange{map.lookup(bn.getInput()), map.lookup(bn.getScale()),
                     map.lookup(bn.getShift()), map.lookup(bn.getRunningMean()),
                     map.lookup(bn.getRunningVar())},
          ArrayRef<NamedAttribute>{
              b.getNamedAttr("epsilon", bn.getEpsilonAttr()),
              b.getNamedAttr("momentum", bn.getMomentumAttr()),
              b.getNamedAttr("training", b.getBoolAttr(mode.training)),
              b.getNamedAttr("running_var_unbiased", b.getBoolAttr(true))});
      record(nbn);
      map.map(bn.getOutput(), nbn.getOutput());
      for (Value stat : bn.getTrainingStats())
        if (!stat.use_empty())
          return bn.emitOpError("statistics results are used inside the "
                                "model; fcc cannot train such a graph"),
                 Value();
      continue;
    }
    if (auto fused = dyn_cast<BnActOp>(op)) {
      // Fused BatchNorm (fcc-fuse-batchnorm): cloned like fcc.batch_norm.
      BnActOp clone = cloneBnActInMode(b, fused, map, mode.training);
      if (!clone)
        return Value();
      record(clone);
      continue;
    }
    if (auto d = dyn_cast<DropoutOp>(op)) {
      Value x = map.lookup(d.getInput());
      if (!mode.training || d.getRatio().convertToFloat() == 0.0f) {
        map.map(d.getOutput(), x);
        continue;
      }
      auto mask = b.create<DropoutMaskOp>(d.getLoc(), x.getType(), mode.seed,
                                          d.getRatioAttr(),
                                          b.getI64IntegerAttr(dropoutStream++));
      auto y = b.create<MulOp>(d.getLoc(), x.getType(), x, mask, FloatAttr());
      record(mask);
      record(y);
      map.map(d.getOutput(), y);
      continue;
    }
    Operation *c = b.clone(op, map);
    record(c);
  }
  return map.lookup(m.logits);
}

LogicalResult TrainingBuilder::buildTrainStep() {
  Type scalar = scalarF32(b);
  func::FuncOp fwd = m.forward;

  // Which parameters train: trainable ones the loss depends on.
  Signature sig;
  addParams(sig);
  // Momentum buffers come next, one per trainable parameter; the ones whose
  // parameter turns out to get no gradient are removed at the end.
  SmallVector<unsigned> trainable;
  for (unsigned p : m.params)
    if (getParamAttr(fwd, p).getTrainable()) {
      trainable.push_back(p);
      sig.add(fwd.getArgument(p).getType(),
              named(FccDialect::kStateAttrName,
                    ("momentum:" + getParamAttr(fwd, p).getName()).str()));
    }
  unsigned inputArg = addBatch(sig);
  for (StringRef h : {"lr", "momentum", "weight_decay", "nesterov",
                      "label_smoothing", "loss_scale"})
    addHyper(sig, h);
  addHyper(sig, "seed", RankedTensorType::get({}, b.getI64Type()));

  func::FuncOp f = createFunc("train_step", sig.types, sig.attrs);
  Block &body = f.getBody().front();
  auto arg = [&](unsigned i) { return body.getArgument(i); };
  auto hyper = [&](unsigned k) { return arg(inputArg + 2 + k); };
  Value seed = arg(inputArg + 2 + 6);

  IRMapping map;
  for (auto [k, p] : llvm::enumerate(m.params))
    map.map(fwd.getArgument(p), arg(k));
  map.map(fwd.getArgument(m.inputIndex), arg(inputArg));
  SmallVector<Operation *> forwardOps;
  Value logits = cloneForward(map, {true, seed}, &forwardOps);
  if (!logits)
    return failure();
  Location loc = fwd.getLoc();
  Value labels = arg(inputArg + 1);
  Value lossScale = hyper(5);
  auto loss = b.create<SoftmaxXentOp>(loc, scalar, logits, labels, hyper(4));
  forwardOps.push_back(loss);
  Value correct = b.create<CountCorrectOp>(loc, scalar, logits, labels);

  SmallVector<Value> wrt;
  for (unsigned p : trainable)
    wrt.push_back(map.lookup(fwd.getArgument(p)));
  auto grads = buildReverseMode(b, forwardOps, {loss.getLoss()}, {lossScale},
                                wrt);
  if (failed(grads))
    return failure();

  // Dynamic loss scaling: the gradients carry the loss scale; a step whose
  // gradients overflowed is skipped (the trainer then lowers the scale).
  Value finite, skipped;
  if (lossScaling) {
    SmallVector<Value> present;
    for (Value g : *grads)
      if (g)
        present.push_back(g);
    auto check = b.create<GradsFiniteOp>(loc, scalar, scalar, present);
    finite = check.getFinite();
    skipped = check.getSkipped();
  }

  // Optimizer updates, after every use of the old values.
  SmallVector<Value> results;
  SmallVector<DictionaryAttr> resultAttrs;
  llvm::BitVector unusedBuffers(sig.types.size());
  for (auto [k, p] : llvm::enumerate(trainable)) {
    unsigned paramArg = llvm::find(m.params, p) - m.params.begin();
    unsigned bufferArg = m.params.size() + k;
    Value g = (*grads)[k];
    if (!g) {
      unusedBuffers.set(bufferArg);
      continue;
    }
    ParamAttr pa = getParamAttr(fwd, p);
    bool bias = isBiasGroup(pa.getRole());
    auto upd = b.create<SgdUpdateOp>(
        loc, arg(paramArg), g, arg(bufferArg), hyper(0), hyper(1), hyper(2),
        hyper(3), lossScaling ? lossScale : Value(), finite,
        b.getF32FloatAttr(bias ? biasLrMult : 1.0),
        b.getF32FloatAttr(bias ? biasWdMult : 1.0));
    results.push_back(upd.getNewParam());
    resultAttrs.push_back(updates(paramArg));
    results.push_back(upd.getNewMomentumBuffer());
    resultAttrs.push_back(updates(bufferArg));
  }
  // Running statistics: the new values from the training-mode BatchNorms.
  for (Operation *op : forwardOps)
    if (auto bn = dyn_cast<BatchNormOp>(op))
      for (auto [stat, next] : {std::pair{bn.getRunningMean(), bn.getNewRunningMean()},
                                std::pair{bn.getRunningVar(), bn.getNewRunningVar()}})
        if (auto a = dyn_cast<BlockArgument>(stat)) {
          results.push_back(next);
          resultAttrs.push_back(updates(a.getArgNumber()));
        }
  // ... and from the fused ones (fcc-fuse-batchnorm).
  for (Operation *op : forwardOps)
    if (auto fused = dyn_cast<BnActOp>(op))
      for (auto [stat, next] :
           {std::pair{fused.getRunningMean(), fused.getNewRunningMean()},
            std::pair{fused.getRunningVar(), fused.getNewRunningVar()}})
        if (auto a = dyn_cast<BlockArgument>(stat)) {
          results.push_back(next);
          resultAttrs.push_back(updates(a.getArgNumber()));
        }
  results.push_back(loss.getLoss());
  resultAttrs.push_back(named(FccDialect::kMetricAttrName, "loss"));
  results.push_back(correct);
  resultAttrs.push_back(named(FccDialect::kMetricAttrName, "correct"));
  if (skipped) {
    results.push_back(skipped);
    resultAttrs.push_back(named(FccDialect::kMetricAttrName, "skipped"));
  }
  b.create<func::ReturnOp>(loc, results);

  // Drop the buffers of parameters that get no gradient, then fix indices.
  SmallVector<unsigned> oldToNew(sig.types.size());
  for (unsigned i = 0, n = 0; i < sig.types.size(); ++i)
    oldToNew[i] = unusedBuffers.test(i) ? ~0u : n++;
  for (auto &d : resultAttrs)
    if (auto u = d.getAs<IntegerAttr>(FccDialect::kUpdatesAttrName))
      d = updates(oldToNew[u.getInt()]);
  f.eraseArguments(unusedBuffers);
  SmallVector<Type> resultTypes;
  for (Value v : results)
    resultTypes.push_back(v.getType());
  f.setFunctionType(b.getFunctionType(body.getArgumentTypes(), resultTypes));
  f.setAllResultAttrs(resultAttrs);
  return success();
}

LogicalResult TrainingBuilder::buildEvalStep(bool tta) {
  Type scalar = scalarF32(b);
  func::FuncOp fwd = m.forward;
  Signature sig;
  addParams(sig);
  unsigned inputArg = addBatch(sig);
  addHyper(sig, "label_smoothing");

  func::FuncOp f =
      createFunc(tta ? "eval_step_tta" : "eval_step", sig.types, sig.attrs);
  Block &body = f.getBody().front();
  Location loc = fwd.getLoc();
  auto runForward = [&](Value input) -> Value {
    IRMapping map;
    for (auto [k, p] : llvm::enumerate(m.params))
      map.map(fwd.getArgument(p), body.getArgument(k));
    map.map(fwd.getArgument(m.inputIndex), input);
    return cloneForward(map, {false, Value()}, nullptr);
  };
  Value image = body.getArgument(inputArg);
  Value logits = runForward(image);
  if (!logits)
    return failure();
  if (tta) {
    Value flipped = runForward(b.create<FlipOp>(loc, image));
    if (!flipped)
      return failure();
    Value sum = b.create<AddOp>(loc, logits.getType(), logits, flipped);
    logits = b.create<MulOp>(loc, logits.getType(), sum, Value(),
                             b.getF64FloatAttr(0.5));
  }
  Value labels = body.getArgument(inputArg + 1);
  Value loss = b.create<SoftmaxXentOp>(loc, scalar, logits, labels,
                                       body.getArgument(inputArg + 2));
  Value correct = b.create<CountCorrectOp>(loc, scalar, logits, labels);
  b.create<func::ReturnOp>(loc, ValueRange{loss, correct});
  f.setFunctionType(b.getFunctionType(body.getArgumentTypes(),
                                      {scalar, scalar}));
  SmallVector<DictionaryAttr> resultAttrs = {
      named(FccDialect::kMetricAttrName, "loss"),
      named(FccDialect::kMetricAttrName, "correct")};
  f.setAllResultAttrs(resultAttrs);
  return success();
}

LogicalResult TrainingBuilder::buildEmaUpdate() {
  func::FuncOp fwd = m.forward;
  Signature sig;
  for (unsigned p : m.params)
    sig.add(fwd.getArgument(p).getType(),
            named(FccDialect::kStateAttrName,
                  ("ema:" + getParamAttr(fwd, p).getName()).str()));
  addParams(sig);
  addHyper(sig, "decay");
  func::FuncOp f = createFunc("ema_update", sig.types, sig.attrs);
  Block &body = f.getBody().front();
  unsigned n = m.params.size();
  SmallVector<Value> results;
  SmallVector<DictionaryAttr> resultAttrs;
  for (unsigned k = 0; k < n; ++k) {
    results.push_back(b.create<EmaUpdateOp>(fwd.getLoc(), body.getArgument(k),
                                            body.getArgument(n + k),
                                            body.getArgument(2 * n)));
    resultAttrs.push_back(updates(k));
  }
  b.create<func::ReturnOp>(fwd.getLoc(), results);
  f.setFunctionType(b.getFunctionType(body.getArgumentTypes(),
                                      TypeRange(ValueRange(results))));
  f.setAllResultAttrs(resultAttrs);
  return success();
}

LogicalResult TrainingBuilder::buildLossAndGrads() {
  Type scalar = scalarF32(b);
  func::FuncOp fwd = m.forward;
  Signature sig;
  addParams(sig);
  unsigned inputArg = addBatch(sig);
  addHyper(sig, "label_smoothing");
  addHyper(sig, "seed", RankedTensorType::get({}, b.getI64Type()));
  func::FuncOp f = createFunc("loss_and_grads", sig.types, sig.attrs);
  Block &body = f.getBody().front();
  Location loc = fwd.getLoc();
  IRMapping map;
  for (auto [k, p] : llvm::enumerate(m.params))
    map.map(fwd.getArgument(p), body.getArgument(k));
  map.map(fwd.getArgument(m.inputIndex), body.getArgument(inputArg));
  SmallVector<Operation *> forwardOps;
  Value logits =
      cloneForward(map, {true, body.getArgument(inputArg + 3)}, &forwardOps);
  if (!logits)
    return failure();
  auto loss = b.create<SoftmaxXentOp>(loc, scalar, logits,
                                      body.getArgument(inputArg + 1),
                                      body.getArgument(inputArg + 2));
  forwardOps.push_back(loss);
  SmallVector<Value> wrt;
  SmallVector<unsigned> trainable;
  for (auto [k, p] : llvm::enumerate(m.params))
    if (getParamAttr(fwd, p).getTrainable()) {
      wrt.push_back(body.getArgument(k));
      trainable.push_back(p);
    }
  auto one = b.create<arith::ConstantOp>(
      loc, DenseElementsAttr::get(cast<ShapedType>(scalar), 1.0f));
  auto grads = buildReverseMode(b, forwardOps, {loss.getLoss()}, {one}, wrt);
  if (failed(grads))
    return failure();
  SmallVector<Value> results = {loss.getLoss()};
  SmallVector<DictionaryAttr> resultAttrs = {
      named(FccDialect::kMetricAttrName, "loss")};
  for (auto [g, p] : llvm::zip(*grads, trainable)) {
    if (!g)
      continue;
    results.push_back(g);
    resultAttrs.push_back(named(FccDialect::kGradOfAttrName,
                                getParamAttr(fwd, p).getName()));
  }
  b.create<func::ReturnOp>(loc, results);
  f.setFunctionType(b.getFunctionType(body.getArgumentTypes(),
                                      TypeRange(ValueRange(results))));
  f.setAllResultAttrs(resultAttrs);
  return success();
}

/// Checks the forward function is a classifier fcc can train.
FailureOr<Model> analyzeModel(ModuleOp module) {
  Model m;
  m.forward = findModelFunction(module, "forward");
  if (!m.forward)
    return module.emitError("fcc-build-training: no @forward function"),
           failure();
  func::FuncOp f = m.forward;
  SmallVector<unsigned> inputs;
  for (unsigned i = 0; i < f.getNumArguments(); ++i)
    (getParamAttr(f, i) ? m.params : inputs).push_back(i);
  if (inputs.size() != 1)
    return f.emitError("fcc trains models with exactly one data input, this "
                       "one has ")
               << inputs.size(),
           failure();
  m.inputIndex = inputs[0];
  auto inType = cast<ShapedType>(f.getArgument(m.inputIndex).getType());
  if (inType.getRank() != 4 || !inType.getElementType().isF32())
    return f.emitError("the data input must be a float32 NCHW image batch, "
                       "got ")
               << inType,
           failure();
  if (f.getNumResults() < 1)
    return f.emitError("the model has no output"), failure();
  auto ret = cast<func::ReturnOp>(f.getBody().front().getTerminator());
  m.logits = ret.getOperand(0);
  // A final softmax belongs to inference; the loss works on its input.
  if (auto sm = m.logits.getDefiningOp<SoftmaxOp>())
    m.logits = sm.getInput();
  auto lt = cast<ShapedType>(m.logits.getType());
  if (lt.getRank() != 2 || lt.getDimSize(0) != inType.getDimSize(0))
    return f.emitError("the first output must be logits of shape [batch, "
                       "classes], got ")
               << lt,
           failure();
  m.batch = lt.getDimSize(0);
  m.classes = lt.getDimSize(1);
  return m;
}

struct BuildTrainingPass
    : public fcc::impl::BuildTrainingBase<BuildTrainingPass> {
  using BuildTrainingBase::BuildTrainingBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto model = analyzeModel(module);
    if (failed(model))
      return signalPassFailure();
    TrainingBuilder builder(module, *model, lossScaling, biasLrMult,
                            biasWdMult);
    if (failed(builder.buildTrainStep()) || failed(builder.buildEvalStep(false)) ||
        failed(builder.buildEvalStep(true)) || failed(builder.buildEmaUpdate()) ||
        (gradFunction && failed(builder.buildLossAndGrads())))
      return signalPassFailure();
    if (!keepForward)
      model->forward.erase();
  }
};

} // namespace
