//===- FuseBatchNorm.cpp - batch_norm + activation (+ pool/add) fusion ----===//
//
// fcc-fuse-batchnorm rewrites
//
//   batch_norm -> relu | celu [-> max_pool2d] [-> add(residual)]
//
// into one fcc.bn_act (ir/FccFusedOps.td). It runs on the forward model
// before fcc-build-training, which clones each fcc.bn_act in training mode
// (cloneBnActInMode below) and differentiates it with one fcc.bn_act_grad
// (passes/Autodiff.cpp), so that fusion covers the forward and the backward.
//
// Why: BatchNorm layers are memory-bound. Unfused, a training step reads and
// writes the normalised, activated and pooled tensors in separate kernels
// and keeps them alive for the backward; fused, the forward reads the
// convolution output twice (statistics, then one normalise-activate-pool-add
// sweep) and writes only the final output, and the backward recomputes the
// intermediate values from the convolution output (runtime/cpu/fused.cpp).
// The CUDA target will map fcc.bn_act (and conv2d -> bn_act) to single
// kernels or cuDNN fused graphs.
//
// When: every intermediate value of the chain must have exactly one user
// (the next op of the chain): a BatchNorm output or an activation output
// that is used elsewhere would have to be materialised anyway, and then the
// fusion saves nothing (and would need the op to return it). Concretely:
//  - the BatchNorm's statistics results are unused and its input is 4-D;
//  - its output's only user is fcc.relu or fcc.celu (else nothing fuses);
//  - the activation's only user is a fcc.max_pool2d without padding,
//    dilation or ceil mode: it joins the fused op;
//  - the last output so far has one user, a fcc.add whose other operand has
//    the same type (no broadcasting): the other operand becomes the residual.
// The convolution before the BatchNorm is not part of the fused op: it stays
// a library call on every target.
//
//===----------------------------------------------------------------------===//
#include "passes/FusedBatchNorm.h"
#include "passes/Passes.h"

#include "ir/FccDialect.h"

#include "mlir/IR/IRMapping.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace fcc {
#define GEN_PASS_DEF_FUSEBATCHNORM
#include "passes/Passes.h.inc"
} // namespace fcc

using namespace mlir;
using namespace fcc;

Location fcc::fusedLocation(ArrayRef<Operation *> ops) {
  // "a+b+c" when every op has a name (the ONNX node names), so that code
  // comments and memory plans still say where the fused op came from.
  std::string name;
  SmallVector<Location> locs;
  bool allNamed = true;
  for (Operation *op : ops) {
    locs.push_back(op->getLoc());
    if (auto nl = dyn_cast<NameLoc>(op->getLoc()))
      name += (name.empty() ? "" : "+") + nl.getName().str();
    else
      allNamed = false;
  }
  MLIRContext *ctx = ops.front()->getContext();
  Location fused = FusedLoc::get(ctx, locs);
  if (!allNamed)
    return fused;
  return NameLoc::get(StringAttr::get(ctx, name), fused);
}

BnActOp fcc::cloneBnActInMode(OpBuilder &b, BnActOp op, IRMapping &map,
                              bool training) {
  for (Value stat : op.getTrainingStats())
    if (!stat.use_empty()) {
      op.emitOpError("statistics results are used inside the model; fcc "
                     "cannot train such a graph");
      return nullptr;
    }
  SmallVector<Type> types = {op.getOutput().getType()};
  if (training)
    types.append(4, op.getRunningMean().getType());
  SmallVector<Value> operands;
  for (Value v : op->getOperands())
    operands.push_back(map.lookup(v));
  // As fcc.batch_norm in fcc-build-training: PyTorch's convention (the
  // unbiased batch variance goes into the running variance).
  NamedAttrList list(op->getAttrs());
  list.set(op.getTrainingAttrName(), b.getBoolAttr(training));
  list.set(op.getRunningVarUnbiasedAttrName(), b.getBoolAttr(true));
  auto clone = b.create<BnActOp>(op.getLoc(), types, operands,
                                 list.getAttrs());
  map.map(op.getOutput(), clone.getOutput());
  return clone;
}

namespace {

/// The single user of `v`, or null when it has none or several.
Operation *soleUser(Value v) {
  return v.hasOneUse() ? *v.getUsers().begin() : nullptr;
}

/// batch_norm -> relu|celu [-> max_pool2d] [-> add(residual)]  ==>  bn_act.
struct FuseBatchNormChain : public OpRewritePattern<BatchNormOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(BatchNormOp bn,
                                PatternRewriter &rewriter) const override {
    if (llvm::any_of(bn.getTrainingStats(),
                     [](Value v) { return !v.use_empty(); }))
      return rewriter.notifyMatchFailure(bn, "statistics results are used");
    if (cast<ShapedType>(bn.getInput().getType()).getRank() != 4)
      return rewriter.notifyMatchFailure(bn, "input is not NCHW");

    // The activation (required).
    SmallVector<Operation *> chain = {bn};
    Operation *act = soleUser(bn.getOutput());
    StringRef activation;
    FloatAttr alpha = rewriter.getF32FloatAttr(1.0f);
    if (isa_and_nonnull<ReluOp>(act)) {
      activation = "relu";
    } else if (auto celu = dyn_cast_or_null<CeluOp>(act)) {
      activation = "celu";
      alpha = celu.getAlphaAttr();
    } else {
      return rewriter.notifyMatchFailure(
          bn, "output is not used by exactly one relu or celu");
    }
    chain.push_back(act);
    Value out = act->getResult(0);

    // An unpadded max pool after it (optional).
    DenseI64ArrayAttr poolKernel, poolStrides;
    if (auto pool = dyn_cast_or_null<MaxPool2DOp>(soleUser(out))) {
      bool plain = llvm::all_of(pool.getPads(), [](int64_t p) { return p == 0; }) &&
                   llvm::all_of(pool.getDilations(),
                                [](int64_t d) { return d == 1; }) &&
                   !pool.getCeilMode();
      if (plain) {
        poolKernel = pool.getKernelAttr();
        poolStrides = pool.getStridesAttr();
        chain.push_back(pool);
        out = pool.getOutput();
      }
    }

    // A residual add of a same-typed value (optional).
    Value residual;
    if (auto add = dyn_cast_or_null<AddOp>(soleUser(out))) {
      Value other = add.getLhs() == out ? add.getRhs() : add.getLhs();
      if (other.getType() == out.getType() &&
          add.getType() == out.getType()) {
        residual = other;
        chain.push_back(add);
        out = add.getOutput();
      }
    }

    // The fused op replaces the last op of the chain, where every operand
    // (the residual included) is defined.
    Operation *last = chain.back();
    rewriter.setInsertionPoint(last);
    SmallVector<Type> types = {out.getType()};
    for (Value stat : bn.getTrainingStats())
      types.push_back(stat.getType());
    auto fused = rewriter.create<BnActOp>(
        fusedLocation(chain), types, bn.getInput(), bn.getScale(),
        bn.getShift(), bn.getRunningMean(), bn.getRunningVar(), residual,
        bn.getEpsilonAttr(), bn.getMomentumAttr(), bn.getTrainingAttr(),
        bn.getRunningVarUnbiasedAttr(), rewriter.getStringAttr(activation),
        alpha, poolKernel, poolStrides);
    rewriter.replaceAllUsesWith(out, fused.getOutput());
    for (Operation *op : llvm::reverse(chain))
      rewriter.eraseOp(op);
    return success();
  }
};

struct FuseBatchNormPass
    : public fcc::impl::FuseBatchNormBase<FuseBatchNormPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    patterns.add<FuseBatchNormChain>(&getContext());
    GreedyRewriteConfig config;
    config.enableRegionSimplification = GreedySimplifyRegionLevel::Disabled;
    if (failed(applyPatternsAndFoldGreedily(getOperation(), std::move(patterns),
                                            config)))
      return signalPassFailure();
  }
};

} // namespace
