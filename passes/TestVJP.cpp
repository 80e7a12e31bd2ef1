//===- TestVJP.cpp - Exposes the differentiation rules for testing --------===//
//
// fcc-test-vjp adds, for each function @f(args) -> results, a function
// @f_vjp(args, dresults) -> dargs built with buildReverseMode. The gradient
// checks evaluate it against finite differences; lit tests show the rules.
//
//===----------------------------------------------------------------------===//
#include "passes/Autodiff.h"
#include "passes/Passes.h"

#include "ir/FccDialect.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/IRMapping.h"

namespace fcc {
#define GEN_PASS_DEF_TESTVJP
#include "passes/Passes.h.inc"
} // namespace fcc

using namespace mlir;
using namespace fcc;

namespace {
bool isFloatTensor(Type t) {
  auto s = dyn_cast<ShapedType>(t);
  return s && isa<FloatType>(s.getElementType());
}

struct TestVJPPass : public fcc::impl::TestVJPBase<TestVJPPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<func::FuncOp> funcs(module.getOps<func::FuncOp>());
    for (func::FuncOp f : funcs) {
      if (f.isExternal() || f.getName().ends_with("_vjp"))
        continue;
      OpBuilder b(module.getContext());
      b.setInsertionPointAfter(f);
      auto ret = cast<func::ReturnOp>(f.getBody().front().getTerminator());
      SmallVector<Type> args(f.getArgumentTypes());
      SmallVector<Value> outputs;
      for (Value r : ret.getOperands())
        if (isFloatTensor(r.getType())) {
          args.push_back(r.getType());
          outputs.push_back(r);
        }
      auto g = b.create<func::FuncOp>(f.getLoc(), (f.getName() + "_vjp").str(),
                                      b.getFunctionType(args, {}));
      Block *entry = g.addEntryBlock();
      b.setInsertionPointToStart(entry);
      IRMapping map;
      for (auto [a, n] : llvm::zip(f.getArguments(), entry->getArguments()))
        map.map(a, n);
      SmallVector<Operation *> forward;
      for (Operation &op : f.getBody().front().without_terminator())
        forward.push_back(b.clone(op, map));
      SmallVector<Value> mappedOutputs, cotangents, wrt;
      for (auto [k, o] : llvm::enumerate(outputs)) {
        mappedOutputs.push_back(map.lookup(o));
        cotangents.push_back(entry->getArgument(f.getNumArguments() + k));
      }
      for (BlockArgument a : entry->getArguments().take_front(f.getNumArguments()))
        if (isFloatTensor(a.getType()))
          wrt.push_back(a);
      auto grads = buildReverseMode(b, forward, mappedOutputs, cotangents, wrt);
      if (failed(grads))
        return signalPassFailure();
      SmallVector<Value> results;
      for (auto [gv, a] : llvm::zip(*grads, wrt)) {
        if (!gv)
          gv = b.create<arith::ConstantOp>(
              f.getLoc(), DenseElementsAttr::get(cast<ShapedType>(a.getType()),
                                                 0.0f));
        results.push_back(gv);
      }
      b.create<func::ReturnOp>(f.getLoc(), results);
      g.setFunctionType(b.getFunctionType(args, TypeRange(ValueRange(results))));
    }
  }
};
} // namespace
