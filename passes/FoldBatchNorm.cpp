//===- FoldBatchNorm.cpp - Inference BatchNorm into convolution weights ---===//
//
// fcc-fold-batchnorm rewrites an inference-mode BatchNorm that directly
// follows a convolution,
//
//   conv2d(x, w, [b]) -> batch_norm | bn_act   (training = false)
//
// into
//
//   w', b' = fold_bn(w, scale, shift, running_mean, running_var, [b])
//   conv2d(x, w', b') [-> relu | celu] [-> max_pool2d] [-> add(residual)]
//
// where the tail is what the fcc.bn_act did after its normalisation, as
// ordinary ops. It runs after fcc-build-training, whose evaluation steps
// (@eval_step, @eval_step_tta) are the functions with inference-mode
// BatchNorms; the training step normalises with batch statistics and is left
// alone.
//
// Why: at inference a BatchNorm is a per-channel affine map with constant
// coefficients, so it can be applied to the (much smaller) weights instead of
// the activations: the normalisation sweep disappears and the convolution
// library adds the bias for free. fcc.fold_bn runs once per evaluation step
// (the weights change between steps); common-subexpression elimination
// shares it between the two forward passes of @eval_step_tta.
//
// When: only if the convolution's output has no other user (it would
// otherwise still be needed unnormalised).
//
// Half precision: a half convolution reads a cast of the fp32 master
// weights; the fold takes the fp32 weights and casts its results, so the
// folded weights are rounded to half once, not twice.
//
//===----------------------------------------------------------------------===//
#include "passes/FusedBatchNorm.h"
#include "passes/Passes.h"

#include "ir/FccDialect.h"

#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace fcc {
#define GEN_PASS_DEF_FOLDBATCHNORM
#include "passes/Passes.h.inc"
} // namespace fcc

using namespace mlir;
using namespace fcc;

namespace {

/// The convolution that defines `v` if `v` is its only use, else null.
Conv2DOp foldableConv(Value v) {
  auto conv = v.getDefiningOp<Conv2DOp>();
  return conv && conv.getOutput().hasOneUse() ? conv : Conv2DOp();
}

/// The fp32 value `v` was cast from (a master weight cast to half), or null.
Value fp32Source(Value v) {
  auto c = v ? v.getDefiningOp<CastOp>() : CastOp();
  if (!c || !cast<ShapedType>(c.getInput().getType()).getElementType().isF32())
    return Value();
  return c.getInput();
}

/// Emits fold_bn + the convolution with the folded weights and bias, before
/// the BatchNorm `bnOp`; returns the new convolution's output. In a
/// half-precision program the convolution reads a half cast of the fp32
/// master weight (and bias): the fold then works on the fp32 values and its
/// results are cast to half, so the folded weights are rounded once.
Value emitFoldedConv(PatternRewriter &rewriter, Operation *bnOp, Conv2DOp conv,
                     Value scale, Value shift, Value mean, Value var,
                     FloatAttr epsilon) {
  rewriter.setInsertionPoint(bnOp);
  Location loc = fusedLocation({conv, bnOp});
  Value weight = conv.getWeight(), bias = conv.getBias();
  auto weightType = cast<RankedTensorType>(weight.getType());
  Value weight32 = fp32Source(weight), bias32 = fp32Source(bias);
  const bool fromMaster = weight32 && (!bias || bias32);
  if (fromMaster) {
    weight = weight32;
    bias = bias32;
  }
  // The folded bias has the element type of the weights folded; the
  // BatchNorm's statistics stay fp32.
  Type foldedType = cast<ShapedType>(weight.getType()).getElementType();
  auto biasType = cast<RankedTensorType>(scale.getType()).clone(foldedType);
  auto fold = rewriter.create<FoldBnOp>(loc, weight.getType(), biasType,
                                        weight, scale, shift, mean, var, bias,
                                        epsilon);
  Value foldedWeight = fold.getFoldedWeight(), foldedBias = fold.getFoldedBias();
  if (fromMaster && foldedType != weightType.getElementType()) {
    foldedWeight = rewriter.create<CastOp>(loc, weightType, foldedWeight);
    foldedBias = rewriter.create<CastOp>(
        loc, biasType.clone(weightType.getElementType()), foldedBias);
  }
  auto folded = rewriter.create<Conv2DOp>(
      loc, conv.getOutput().getType(), conv.getInput(), foldedWeight,
      foldedBias, conv.getStridesAttr(), conv.getPadsAttr(),
      conv.getDilationsAttr(), conv.getGroupsAttr());
  return folded.getOutput();
}

/// conv2d -> batch_norm (inference)  ==>  fold_bn -> conv2d.
struct FoldBatchNormIntoConv : public OpRewritePattern<BatchNormOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(BatchNormOp bn,
                                PatternRewriter &rewriter) const override {
    if (bn.getTraining())
      return rewriter.notifyMatchFailure(bn, "training mode");
    Conv2DOp conv = foldableConv(bn.getInput());
    if (!conv)
      return rewriter.notifyMatchFailure(
          bn, "input is not a convolution used only here");
    Value y = emitFoldedConv(rewriter, bn, conv, bn.getScale(), bn.getShift(),
                             bn.getRunningMean(), bn.getRunningVar(),
                             bn.getEpsilonAttr());
    rewriter.replaceOp(bn, y);
    rewriter.eraseOp(conv);
    return success();
  }
};

/// conv2d -> bn_act (inference)  ==>  fold_bn -> conv2d -> activation
/// [-> max_pool2d] [-> add(residual)].
struct FoldBnActIntoConv : public OpRewritePattern<BnActOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(BnActOp op,
                                PatternRewriter &rewriter) const override {
    if (op.getTraining())
      return rewriter.notifyMatchFailure(op, "training mode");
    Conv2DOp conv = foldableConv(op.getInput());
    if (!conv)
      return rewriter.notifyMatchFailure(
          op, "input is not a convolution used only here");
    Value y = emitFoldedConv(rewriter, op, conv, op.getScale(), op.getShift(),
                             op.getRunningMean(), op.getRunningVar(),
                             op.getEpsilonAttr());
    Location loc = op.getLoc();
    if (op.getActivation() == "relu")
      y = rewriter.create<ReluOp>(loc, y);
    else if (op.getActivation() == "celu")
      y = rewriter.create<CeluOp>(loc, y, op.getAlphaAttr());
    if (op.getPoolKernel()) {
      y = rewriter.create<MaxPool2DOp>(
          loc, op.getOutput().getType(), y, op.getPoolKernelAttr(),
          op.getPoolStridesAttr(), rewriter.getDenseI64ArrayAttr({0, 0, 0, 0}),
          rewriter.getDenseI64ArrayAttr({1, 1}), rewriter.getBoolAttr(false));
    }
    if (op.getResidual())
      y = rewriter.create<AddOp>(loc, op.getOutput().getType(), y,
                                 op.getResidual());
    rewriter.replaceOp(op, y);
    rewriter.eraseOp(conv);
    return success();
  }
};

struct FoldBatchNormPass
    : public fcc::impl::FoldBatchNormBase<FoldBatchNormPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    patterns.add<FoldBatchNormIntoConv, FoldBnActIntoConv>(&getContext());
    GreedyRewriteConfig config;
    config.enableRegionSimplification = GreedySimplifyRegionLevel::Disabled;
    if (failed(applyPatternsAndFoldGreedily(getOperation(), std::move(patterns),
                                            config)))
      return signalPassFailure();
  }
};

} // namespace
