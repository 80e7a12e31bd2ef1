//===- Autodiff.cpp - Reverse-mode differentiation of fcc code ------------===//
//
// One vector-Jacobian-product rule per forward op; see Autodiff.h.
//
//===----------------------------------------------------------------------===//
#include "passes/Autodiff.h"

#include "ir/FccDialect.h"
#include "ir/ShapeInference.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace fcc;

namespace {

ArrayRef<int64_t> shapeOf(Value v) {
  return cast<ShapedType>(v.getType()).getShape();
}

RankedTensorType typeLike(Value v, ArrayRef<int64_t> shape) {
  return RankedTensorType::get(shape, cast<ShapedType>(v.getType()).getElementType());
}

/// Emits the VJP of one op. `dres[i]` is the cotangent of result i (null if
/// none); on success `dops[i]` holds the cotangent of operand i for every i
/// with `need[i]` (null if the operand gets none).
class VjpBuilder {
public:
  VjpBuilder(OpBuilder &b) : b(b) {}

  LogicalResult emit(Operation *op, ArrayRef<Value> dres, ArrayRef<bool> need,
                     SmallVectorImpl<Value> &dops);

private:
  LogicalResult conv(Conv2DOp op, Value dy, ArrayRef<bool> need,
                     SmallVectorImpl<Value> &d);
  LogicalResult batchNorm(BatchNormOp op, Value dy, ArrayRef<bool> need,
                          SmallVectorImpl<Value> &d);
  LogicalResult linear(LinearOp op, Value dy, ArrayRef<bool> need,
                       SmallVectorImpl<Value> &d);
  LogicalResult mul(MulOp op, Value dy, ArrayRef<bool> need,
                    SmallVectorImpl<Value> &d);

  OpBuilder &b;
};

LogicalResult VjpBuilder::conv(Conv2DOp op, Value dy, ArrayRef<bool> need,
                               SmallVectorImpl<Value> &d) {
  Location loc = op.getLoc();
  if (need[0])
    d[0] = b.create<Conv2DGradInputOp>(
        loc, op.getInput().getType(), dy, op.getWeight(), op.getStridesAttr(),
        op.getPadsAttr(), op.getDilationsAttr(), op.getGroupsAttr());
  if (need[1])
    d[1] = b.create<Conv2DGradWeightOp>(
        loc, op.getWeight().getType(), op.getInput(), dy, op.getStridesAttr(),
        op.getPadsAttr(), op.getDilationsAttr(), op.getGroupsAttr());
  if (op.getBias() && need[2])
    d[2] = b.create<ReduceSumOp>(loc, op.getBias().getType(), dy,
                                 b.getDenseI64ArrayAttr({0, 2, 3}));
  return success();
}

LogicalResult VjpBuilder::batchNorm(BatchNormOp op, Value dy,
                                    ArrayRef<bool> need,
                                    SmallVectorImpl<Value> &d) {
  if (!op.getTraining())
    return op.emitOpError(
        "in inference mode is not differentiable; training programs use "
        "training-mode batch normalisation");
  if (need[3] || need[4])
    return op.emitOpError("running statistics are not differentiable");
  // The input gradient has the input's type (half in a half-precision
  // program), the scale and shift gradients the parameters' (fp32).
  auto grad = b.create<BatchNormGradOp>(
      op.getLoc(),
      TypeRange{op.getInput().getType(), op.getScale().getType(),
                op.getShift().getType()},
      op.getInput(), dy, op.getScale(), op.getBatchMean(), op.getBatchVar(),
      op.getEpsilonAttr());
  d[0] = need[0] ? grad.getInputGrad() : Value();
  d[1] = need[1] ? grad.getScaleGrad() : Value();
  d[2] = need[2] ? grad.getShiftGrad() : Value();
  return success();
}

// y = alpha * op(A) op(B) + beta * C with op(A) = A' (M x K), op(B) = B'
// (K x N): dA' = alpha dY B'^T, dB' = alpha A'^T dY, transposed back when the
// operand is stored transposed. Every case is one fcc.linear.
LogicalResult VjpBuilder::linear(LinearOp op, Value dy, ArrayRef<bool> need,
                                 SmallVectorImpl<Value> &d) {
  Location loc = op.getLoc();
  bool ta = op.getTransA(), tb = op.getTransB();
  FloatAttr alpha = op.getAlphaAttr(), one = b.getF32FloatAttr(1.0f);
  Value a = op.getInput(), w = op.getWeight();
  auto lin = [&](Type type, Value x, Value y, bool tx, bool ty) -> Value {
    return b.create<LinearOp>(loc, type, x, y, Value(), b.getBoolAttr(tx),
                              b.getBoolAttr(ty), alpha, one);
  };
  if (need[0])
    d[0] = !ta ? lin(a.getType(), dy, w, false, !tb)  // dY B'^T
               : lin(a.getType(), w, dy, tb, true);   // (dY B'^T)^T = B' dY^T
  if (need[1])
    d[1] = !tb ? lin(w.getType(), a, dy, !ta, false)  // A'^T dY
               : lin(w.getType(), dy, a, true, ta);   // (A'^T dY)^T = dY^T A'
  if (op.getBias() && need[2]) {
    Value db = reduceToShape(b, loc, dy, shapeOf(op.getBias()));
    float beta = op.getBeta().convertToFloat();
    if (beta != 1.0f)
      db = b.create<MulOp>(loc, db.getType(), db, Value(),
                           b.getF64FloatAttr(beta));
    d[2] = db;
  }
  return success();
}

LogicalResult VjpBuilder::mul(MulOp op, Value dy, ArrayRef<bool> need,
                              SmallVectorImpl<Value> &d) {
  Location loc = op.getLoc();
  if (!op.getRhs()) {
    if (need[0])
      d[0] = b.create<MulOp>(loc, dy.getType(), dy, Value(), op.getScalarAttr());
    return success();
  }
  auto times = [&](Value other, Value operand) -> Value {
    Value prod = b.create<MulOp>(loc, dy.getType(), dy, other, FloatAttr());
    return reduceToShape(b, loc, prod, shapeOf(operand));
  };
  if (need[0])
    d[0] = times(op.getRhs(), op.getLhs());
  if (need[1])
    d[1] = times(op.getLhs(), op.getRhs());
  return success();
}

LogicalResult VjpBuilder::emit(Operation *op, ArrayRef<Value> dres,
                               ArrayRef<bool> need,
                               SmallVectorImpl<Value> &d) {
  d.assign(op->getNumOperands(), Value());
  Value dy = dres.empty() ? Value() : dres[0];
  Location loc = op->getLoc();
  return llvm::TypeSwitch<Operation *, LogicalResult>(op)
      .Case<Conv2DOp>([&](auto o) { return conv(o, dy, need, d); })
      .Case<BatchNormOp>([&](auto o) { return batchNorm(o, dy, need, d); })
      .Case<BnActOp>([&](BnActOp o) -> LogicalResult {
        // One fused backward op (it recomputes the normalised and activated
        // values from the input); the residual's gradient is dy itself. As
        // for fcc.batch_norm, the input gradient has the input's (possibly
        // half) type and the scale and shift gradients are fp32.
        if (!o.getTraining())
          return o.emitOpError("in inference mode is not differentiable; "
                               "training programs use training-mode fused "
                               "batch normalisation");
        if (need[3] || need[4])
          return o.emitOpError("running statistics are not differentiable");
        if (o.getResidual() && need[5])
          d[5] = dy;
        if (!need[0] && !need[1] && !need[2])
          return success();
        auto g = b.create<BnActGradOp>(
            loc, o.getInput().getType(), o.getScale().getType(),
            o.getShift().getType(), o.getInput(), dy, o.getScale(),
            o.getShift(), o.getBatchMean(), o.getBatchVar(),
            o.getEpsilonAttr(), o.getActivationAttr(), o.getAlphaAttr(),
            o.getPoolKernelAttr(), o.getPoolStridesAttr());
        d[0] = need[0] ? g.getInputGrad() : Value();
        d[1] = need[1] ? g.getScaleGrad() : Value();
        d[2] = need[2] ? g.getShiftGrad() : Value();
        return success();
      })
      .Case<LinearOp>([&](auto o) { return linear(o, dy, need, d); })
      .Case<MulOp>([&](auto o) { return mul(o, dy, need, d); })
      .Case<ReluOp>([&](ReluOp o) {
        d[0] = b.create<ReluGradOp>(loc, o.getInput(), dy);
        return success();
      })
      .Case<CeluOp>([&](CeluOp o) {
        d[0] = b.create<CeluGradOp>(loc, o.getInput(), dy, o.getAlphaAttr());
        return success();
      })
      .Case<MaxPool2DOp>([&](MaxPool2DOp o) {
        d[0] = b.create<MaxPool2DGradOp>(
            loc, o.getInput().getType(), o.getInput(), dy, o.getKernelAttr(),
            o.getStridesAttr(), o.getPadsAttr(), o.getDilationsAttr(),
            o.getCeilModeAttr());
        return success();
      })
      .Case<AvgPool2DOp>([&](AvgPool2DOp o) {
        d[0] = b.create<AvgPool2DGradOp>(
            loc, o.getInput().getType(), dy, o.getKernelAttr(),
            o.getStridesAttr(), o.getPadsAttr(), o.getCeilModeAttr(),
            o.getCountIncludePadAttr());
        return success();
      })
      .Case<AddOp>([&](AddOp o) {
        if (need[0])
          d[0] = reduceToShape(b, loc, dy, shapeOf(o.getLhs()));
        if (need[1])
          d[1] = reduceToShape(b, loc, dy, shapeOf(o.getRhs()));
        return success();
      })
      .Case<FlattenOp, ReshapeOp>([&](auto o) {
        d[0] = b.create<ReshapeOp>(loc, o.getInput().getType(), dy);
        return success();
      })
      .Case<FlipOp>([&](FlipOp o) {
        d[0] = b.create<FlipOp>(loc, dy);
        return success();
      })
      .Case<CastOp>([&](CastOp o) {
        // The gradient flows back in the operand's precision.
        d[0] = b.create<CastOp>(loc, o.getInput().getType(), dy);
        return success();
      })
      .Case<DropoutOp>([&](DropoutOp o) -> LogicalResult {
        if (o.getTraining())
          return o.emitOpError("in training mode must be lowered to "
                               "fcc.dropout_mask and fcc.mul before "
                               "differentiation");
        d[0] = dy; // inference-mode dropout is the identity
        return success();
      })
      .Case<SoftmaxXentOp>([&](SoftmaxXentOp o) -> LogicalResult {
        if (need[1] || need[2])
          return o.emitOpError("is differentiable only in the logits");
        d[0] = b.create<SoftmaxXentGradOp>(loc, o.getLogits().getType(),
                                           o.getLogits(), o.getLabels(),
                                           o.getLabelSmoothing(), dy);
        return success();
      })
      .Default([&](Operation *o) {
        return o->emitOpError("has no differentiation rule (fcc "
                              "differentiates the forward ops of "
                              "convolutional networks)");
      });
}

} // namespace

Value fcc::reduceToShape(OpBuilder &b, Location loc, Value value,
                         ArrayRef<int64_t> shape) {
  auto in = shapeOf(value);
  if (in == shape)
    return value;
  size_t offset = in.size() - shape.size();
  SmallVector<int64_t> axes, kept;
  for (size_t k = 0; k < in.size(); ++k) {
    bool broadcast = k < offset || (shape[k - offset] == 1 && in[k] != 1);
    if (broadcast)
      axes.push_back(k);
    else
      kept.push_back(in[k]);
  }
  Value sum = value;
  if (!axes.empty())
    sum = b.create<ReduceSumOp>(loc, typeLike(value, kept), value,
                                b.getDenseI64ArrayAttr(axes));
  if (shapeOf(sum) != shape)
    sum = b.create<ReshapeOp>(loc, typeLike(value, shape), sum);
  return sum;
}

FailureOr<SmallVector<Value>>
fcc::buildReverseMode(OpBuilder &b, ArrayRef<Operation *> forward,
                      ArrayRef<Value> outputs, ArrayRef<Value> cotangents,
                      ArrayRef<Value> wrt) {
  // Activity: which values depend on something we differentiate against.
  llvm::DenseSet<Value> active(wrt.begin(), wrt.end());
  for (Operation *op : forward)
    if (llvm::any_of(op->getOperands(), [&](Value v) { return active.count(v); }))
      for (Value r : op->getResults())
        if (isa<FloatType>(cast<ShapedType>(r.getType()).getElementType()))
          active.insert(r);

  llvm::DenseMap<Value, Value> cot;
  auto accumulate = [&](Value v, Value g, Location loc) {
    auto it = cot.find(v);
    if (it == cot.end())
      cot[v] = g;
    else
      it->second = b.create<AddOp>(loc, g.getType(), it->second, g);
  };
  for (auto [v, g] : llvm::zip(outputs, cotangents))
    accumulate(v, g, v.getLoc());

  VjpBuilder vjp(b);
  for (Operation *op : llvm::reverse(forward)) {
    SmallVector<Value> dres;
    bool any = false;
    for (Value r : op->getResults()) {
      auto it = cot.find(r);
      dres.push_back(it == cot.end() ? Value() : it->second);
      any |= it != cot.end();
    }
    if (!any)
      continue;
    SmallVector<bool> need;
    bool anyNeeded = false;
    for (Value v : op->getOperands()) {
      need.push_back(active.count(v) > 0);
      anyNeeded |= need.back();
    }
    if (!anyNeeded)
      continue;
    if (!dres[0])
      continue; // only non-differentiable results (e.g. statistics) are used
    SmallVector<Value> dops;
    if (failed(vjp.emit(op, dres, need, dops)))
      return failure();
    for (auto [k, v] : llvm::enumerate(op->getOperands()))
      if (need[k] && dops[k])
        accumulate(v, dops[k], op->getLoc());
  }
  SmallVector<Value> grads;
  for (Value v : wrt) {
    auto it = cot.find(v);
    grads.push_back(it == cot.end() ? Value() : it->second);
  }
  return grads;
}
