//===- InsertHalf.cpp - Half-precision compute with explicit casts --------===//
//
// fcc-insert-half rewrites @forward, before fcc-build-training, into a
// strongly typed mixed-precision model:
//
//  - "half ops" — conv2d, linear, relu, celu, max/avg_pool2d, add, mul,
//    dropout, flatten, reshape — take fp16 (or bf16) operands and produce
//    fp16 results; float operands that are not yet half get an fcc.cast;
//  - every other op (batch_norm, softmax, the fused BatchNorm ops, ...) and
//    the function's results see fp32: half operands are cast back up.
//
// Parameters stay fp32 function arguments (master weights): the cast of a
// weight is an op of the step, so its gradient is cast back to fp32 by the
// cast's differentiation rule before the fp32 optimizer update. BatchNorm
// statistics, reductions in the loss, the loss itself and the optimizer state
// stay fp32. Each value is cast to a given type at most once (casts are
// cached per value), and fcc.cast's folder removes widen-then-narrow round
// trips.
//
// Why before fcc-build-training: the backward pass then inherits the same
// precision from the autodiff rules (the gradient of a half op is half) with
// no second pass over the backward ops.
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
      Type want = computesInHalf(&op) ? half : f32;
      b.setInsertionPoint(&op);
      for (OpOperand &use : op.getOpOperands())
        if (isFloatTensor(use.get()))
          use.set(castTo(use.get(), want));
      if (computesInHalf(&op))
        for (Value r : op.getResults())
          if (isFloatTensor(r))
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
