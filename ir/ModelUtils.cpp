//===- ModelUtils.cpp - Queries on fcc model functions --------------------===//
#include "ir/ModelUtils.h"
#include "ir/ShapeInference.h"

#include "llvm/ADT/SmallPtrSet.h"

using namespace mlir;
using namespace fcc;

/// Follows reshapes (1-D convolutions are lifted to 2-D through one) to the
/// op that consumes a parameter.
static void collectUses(Value v, llvm::SmallVectorImpl<OpOperand *> &uses) {
  for (OpOperand &use : v.getUses()) {
    // Through reshapes and precision casts (a half-precision weight is a
    // cast of its fp32 master copy).
    if (auto r = dyn_cast<ReshapeOp>(use.getOwner()))
      collectUses(r.getOutput(), uses);
    else if (auto c = dyn_cast<CastOp>(use.getOwner()))
      collectUses(c.getOutput(), uses);
    else
      uses.push_back(&use);
  }
}

static std::optional<int64_t> weightFanIn(Operation *op) {
  if (auto conv = dyn_cast<Conv2DOp>(op)) {
    auto w = cast<ShapedType>(conv.getWeight().getType()).getShape();
    return w[1] * w[2] * w[3];
  }
  if (auto lin = dyn_cast<LinearOp>(op)) {
    auto w = cast<ShapedType>(lin.getWeight().getType()).getShape();
    return lin.getTransB() ? w[1] : w[0];
  }
  return std::nullopt;
}

std::optional<int64_t> fcc::computeFanIn(func::FuncOp func, unsigned argIndex) {
  llvm::SmallVector<OpOperand *> uses;
  collectUses(func.getArgument(argIndex), uses);
  // The first use in program order is the forward layer that owns the
  // parameter. In a training step the same weight also feeds the backward
  // pass (e.g. dx = dy W, a linear with trans_b = false), whose shape
  // convention would give the fan-out instead.
  Operation *layer = nullptr;
  for (OpOperand *use : uses) {
    Operation *op = use->getOwner();
    bool slot = false;
    if (auto conv = dyn_cast<Conv2DOp>(op))
      slot = use->get() == conv.getWeight() || use->get() == conv.getBias();
    else if (auto lin = dyn_cast<LinearOp>(op))
      slot = use->get() == lin.getWeight() || use->get() == lin.getBias();
    if (slot && (!layer || (op->getBlock() == layer->getBlock() &&
                            op->isBeforeInBlock(layer))))
      layer = op;
  }
  if (!layer)
    return std::nullopt;
  return weightFanIn(layer);
}

unsigned fcc::numDataInputs(func::FuncOp func) {
  unsigned n = 0;
  for (unsigned i = 0; i < func.getNumArguments(); ++i)
    if (!getParamAttr(func, i))
      ++n;
  return n;
}

std::string fcc::argumentName(func::FuncOp func, unsigned i) {
  if (ParamAttr p = getParamAttr(func, i))
    return p.getName().str();
  for (StringRef attr : {FccDialect::kInputAttrName, FccDialect::kStateAttrName,
                         FccDialect::kHyperAttrName})
    if (auto s = func.getArgAttrOfType<StringAttr>(i, attr))
      return s.str();
  return "arg" + std::to_string(i);
}

std::string fcc::resultName(func::FuncOp func, unsigned i) {
  for (StringRef attr : {FccDialect::kOutputAttrName, FccDialect::kMetricAttrName})
    if (auto s = func.getResultAttrOfType<StringAttr>(i, attr))
      return s.str();
  if (auto s = func.getResultAttrOfType<StringAttr>(i, FccDialect::kGradOfAttrName))
    return "grad:" + s.str();
  if (auto a = func.getResultAttrOfType<IntegerAttr>(i, FccDialect::kUpdatesAttrName))
    return "new:" + argumentName(func, a.getInt());
  return "result" + std::to_string(i);
}

int64_t fcc::countTrainableParameters(func::FuncOp func) {
  int64_t total = 0;
  for (unsigned i = 0; i < func.getNumArguments(); ++i)
    if (auto p = getParamAttr(func, i); p && p.getTrainable())
      total += numElements(
          cast<ShapedType>(func.getArgument(i).getType()).getShape());
  return total;
}

func::FuncOp fcc::findModelFunction(ModuleOp module, llvm::StringRef name) {
  if (auto f = module.lookupSymbol<func::FuncOp>(name))
    return f;
  auto funcs = module.getOps<func::FuncOp>();
  if (std::distance(funcs.begin(), funcs.end()) == 1)
    return *funcs.begin();
  return nullptr;
}

Operation *fcc::lastDefiningOp(Block &block, ArrayRef<Value> values) {
  llvm::SmallPtrSet<Operation *, 16> defs;
  for (Value v : values)
    defs.insert(v.getDefiningOp());
  Operation *last = nullptr;
  for (Operation &op : block)
    if (defs.contains(&op))
      last = &op;
  return last;
}
