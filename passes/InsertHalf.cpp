//===- InsertHalf.cpp - Half-precision compute with explicit casts --------===//
//
// fcc-insert-half rewrites @forward, before fcc-build-training, into a
// strongly typed mixed-precision model:
//
//  - "half ops" — conv2d, linear, relu, celu, max/avg_pool2d, add, mul,
//    dropout, flatten, reshape — take fp16 (or bf16) operands and produce
//    fp16 results; float operands that are not yet half get an fcc.cast;
//  - BatchNorm ops (fcc.batch_norm and the fused fcc.bn_act) read and write
//    half data — the input, the residual and the output — while their
//    per-channel operands and results (scale, shift, running and batch
//    statistics) stay fp32: the kernels compute in fp32 from half storage,
//    so conv2d -> bn_act -> conv2d has no cast in between;
//  - every other op (softmax, the loss, ...) and the function's results see
//    fp32: half operands are cast back up.
//
// Parameters stay fp32 function arguments (master weights): the cast of a
// weight is an op of the step, so its gradient is cast back to fp32 by the
// cast's differentiation rule before the fp32 optimizer update. BatchNorm
// scales and shifts are not cast at all (their gradients are fp32 results of
// the BatchNorm backward); BatchNorm statistics, reductions in the loss, the
// loss itself and the optimizer state stay fp32. Each value is cast to a
// given type at most once (casts are cached per value), and fcc.cast's
// folder removes widen-then-narrow round trips.
//
// Why before fcc-build-training: the backward pass then inherits the same
// precision from the autodiff rules (the gradient of a half op is half, the
// input gradient of a BatchNorm has its input's type) with no second pass
// over the backward ops.
//
//===----------------------------------------------------------------------===//
#include "passes/Passes.h"

#include "ir/FccDialect.h"
#include "ir/ModelUtils.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/DenseMap.h"

namespace fcc {
#define GEN_PASS_DEF_INSERTHALF
#include "passes/Passes.h.inc"
} // namespace fcc

using namespace mlir;
using namespace fcc;

namespace {

/// Ops that compute in half precision.
bool computesInHalf(Operation *op) {
  return isa<Conv2DOp, LinearOp, ReluOp, CeluOp, MaxPool2DOp, AvgPool2DOp,
             AddOp, MulOp, DropoutOp, FlattenOp, ReshapeOp>(op);
}

/// Whether `use` is a data operand of a BatchNorm op (its input or
/// residual), as opposed to a per-channel parameter or statistic.
bool isBatchNormData(OpOperand &use) {
  if (auto bn = dyn_cast<BatchNormOp>(use.getOwner()))
    return &use == &bn.getInputMutable();
  if (auto fused = dyn_cast<BnActOp>(use.getOwner()))
    return &use == &fused.getInputMutable() ||
           llvm::any_of(fused.getResidualMutable(),
                        [&](OpOperand &r) { return &r == &use; });
  return false;
}

/// Whether result `r` is half: every float result of a half op, and the data
/// output (result 0) of a BatchNorm op, whose statistics stay fp32.
bool hasHalfResult(OpResult r) {
  Operation *op = r.getOwner();
  if (computesInHalf(op))
    return true;
  return isa<BatchNormOp, BnActOp>(op) && r.getResultNumber() == 0;
}

bool isFloatTensor(Value v) {
  auto t = dyn_cast<RankedTensorType>(v.getType());
  return t && isa<FloatType>(t.getElementType());
}

RankedTensorType withElementType(Value v, Type element) {
  return cast<RankedTensorType>(v.getType()).clone(element);
}

class HalfRewriter {
public:
  HalfRewriter(func::FuncOp f, Type half)
      : f(f), half(half), f32(Float32Type::get(f.getContext())),
        b(f.getContext()) {}

  void run() {
    Block &body = f.getBody().front();
    for (Operation &op : llvm::make_early_inc_range(body)) {
      b.setInsertionPoint(&op);
      for (OpOperand &use : op.getOpOperands())
        if (isFloatTensor(use.get()))
          use.set(castTo(use.get(), computesInHalf(&op) || isBatchNormData(use)
                                        ? half
                                        : f32));
      for (OpResult r : op.getResults())
        if (isFloatTensor(r) && hasHalfResult(r))
          r.setType(withElementType(r, half));
    }
  }

private:
  /// `v` as `element`, through one cached fcc.cast.
  Value castTo(Value v, Type element) {
    if (cast<ShapedType>(v.getType()).getElementType() == element)
      return v;
    auto key = std::make_pair(v, element);
    auto it = casts.find(key);
    if (it != casts.end())
      return it->second;
    OpBuilder::InsertionGuard guard(b);
    if (Operation *def = v.getDefiningOp())
      b.setInsertionPointAfter(def);
    else
      b.setInsertionPointToStart(v.getParentBlock());
    Value c = b.create<CastOp>(v.getLoc(), withElementType(v, element), v);
    casts[key] = c;
    return c;
  }

  func::FuncOp f;
  Type half, f32;
  OpBuilder b;
  llvm::DenseMap<std::pair<Value, Type>, Value> casts;
};

struct InsertHalfPass : public fcc::impl::InsertHalfBase<InsertHalfPass> {
  using InsertHalfBase::InsertHalfBase;
  void runOnOperation() override {
    ModuleOp module = getOperation();
    Type half;
    if (precision == "fp16")
      half = Float16Type::get(&getContext());
    else if (precision == "bf16")
      half = BFloat16Type::get(&getContext());
    else {
      module.emitError("fcc-insert-half: precision must be fp16 or bf16, got '")
          << precision << "'";
      return signalPassFailure();
    }
    func::FuncOp forward = findModelFunction(module, "forward");
    if (!forward) {
      module.emitError("fcc-insert-half: no @forward function");
      return signalPassFailure();
    }
    HalfRewriter(forward, half).run();
  }
};

} // namespace
