//===- PlanMemory.cpp - Arena offsets for every temporary of a step -------===//
//
// fcc-plan-memory assigns each tensor that a step function computes a byte
// offset in one scratch arena, reusing memory between tensors whose live
// ranges (MLIR's Liveness analysis) do not overlap. Code generation then turns
// every value into a pointer: block arguments are the trainer's persistent
// buffers (parameters, optimizer state, the batch), results returned with
// fcc.updates are written in place into their argument's buffer, reshapes are
// views of their operand (except, under `layout=nhwc`, those that reorder a
// map's elements: reordersLayout), metrics go straight to the metrics array,
// and the rest live in the arena at the planned offset.
//
// Placement is "greedy by size" (largest tensors first, each at the lowest
// offset that does not collide with an already placed tensor alive at the
// same time), which packs training programs well because activations saved
// for the backward pass dominate. An elementwise op whose operand dies at the
// op may write its result over that operand (in place), when the kernel
// allows it.
//
// Annotations: `fcc.offsets = array<i64: ...>` on each op (one entry per
// result, -1 when the result is not in the arena) and `fcc.arena_bytes` on the
// function. The pass verifies its own plan (no two live tensors overlap).
//
//===----------------------------------------------------------------------===//
#include "passes/MemoryPlan.h"
#include "passes/Passes.h"

#include "ir/FccDialect.h"
#include "ir/ShapeInference.h"

#include "mlir/Analysis/Liveness.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/Support/FormatVariadic.h"

namespace fcc {
#define GEN_PASS_DEF_PLANMEMORY
#include "passes/Passes.h.inc"
} // namespace fcc

using namespace mlir;
using namespace fcc;

namespace {
constexpr int64_t kAlignment = 64;

int64_t alignUp(int64_t v) { return (v + kAlignment - 1) / kAlignment * kAlignment; }
} // namespace

int64_t fcc::tensorBytes(Value v) {
  auto t = cast<ShapedType>(v.getType());
  int64_t bits = t.getElementTypeBitWidth();
  if (bits == 16 && isa<FloatType>(t.getElementType())) {
    Operation *scope = isa<BlockArgument>(v)
                           ? cast<BlockArgument>(v).getOwner()->getParentOp()
                           : v.getDefiningOp()->getParentOp();
    if (auto f = dyn_cast_or_null<func::FuncOp>(scope))
      if (auto a = f->getAttrOfType<IntegerAttr>(kHalfBytesAttrName))
        return t.getNumElements() * a.getInt();
  }
  return t.getNumElements() * std::max<int64_t>(bits / 8, 1);
}

ValueKind fcc::classifyValue(Value v) {
  if (isa<BlockArgument>(v))
    return ValueKind::Argument;
  Operation *def = v.getDefiningOp();
  if (isa<ReshapeOp, FlattenOp>(def))
    return reordersLayout(def) == LayoutReorder::None ? ValueKind::View
                                                        : ValueKind::Arena;
  if (isa<arith::ConstantOp>(def))
    return ValueKind::Constant;
  if (isa<AllGatherOp>(def))
    return ValueKind::Runtime;
  for (OpOperand &use : v.getUses()) {
    auto ret = dyn_cast<func::ReturnOp>(use.getOwner());
    if (!ret)
      continue;
    auto f = ret->getParentOfType<func::FuncOp>();
    unsigned i = use.getOperandNumber();
    if (f.getResultAttr(i, FccDialect::kUpdatesAttrName))
      return ValueKind::InPlace;
    if (f.getResultAttr(i, FccDialect::kMetricAttrName))
      return ValueKind::Metric;
  }
  return ValueKind::Arena;
}

LayoutReorder fcc::reordersLayout(Operation *op) {
  if (!isa<ReshapeOp, FlattenOp>(op))
    return LayoutReorder::None;
  auto f = op->getParentOfType<func::FuncOp>();
  auto layout = f ? f->getAttrOfType<StringAttr>(kLayoutAttrName) : nullptr;
  if (!layout || layout.getValue() != "nhwc")
    return LayoutReorder::None;
  // Whether NHWC storage of a tensor differs from NCHW storage: a 4-d map
  // with more than one channel and more than one pixel.
  auto differs = [](Value v) {
    auto t = dyn_cast<ShapedType>(v.getType());
    if (!t || !t.hasStaticShape() || t.getRank() != 4)
      return false;
    ArrayRef<int64_t> s = t.getShape();
    return s[1] > 1 && s[2] * s[3] > 1;
  };
  Value in = op->getOperand(0), out = op->getResult(0);
  if (in.getType() == out.getType() || (!differs(in) && !differs(out)))
    return LayoutReorder::None;
  if (differs(in) && differs(out))
    return LayoutReorder::MapToMap;
  return differs(in) ? LayoutReorder::ToNchw : LayoutReorder::ToNhwc;
}

Value fcc::viewRoot(Value v) {
  while (classifyValue(v) == ValueKind::View)
    v = v.getDefiningOp()->getOperand(0);
  return v;
}

bool fcc::canWriteInPlace(Operation *op, unsigned operand) {
  // Elementwise kernels that read element i before writing element i only.
  if (isa<ReluOp, CeluOp>(op))
    return operand == 0;
  if (isa<ReluGradOp, CeluGradOp>(op))
    return operand == 1; // over the output gradient
  if (auto add = dyn_cast<AddOp>(op))
    return add.getOperand(operand).getType() == add.getType();
  if (auto mul = dyn_cast<MulOp>(op))
    return !mul.getRhs() && operand == 0; // by a scalar
  if (isa<AllReduceOp>(op)) // MPI_IN_PLACE
    return true;
  if (auto fused = dyn_cast<BnActOp>(op)) // y[i] = ... + residual[i]
    return fused.getResidual() && operand == 5;
  return false;
}

namespace {
struct Interval {
  Value value;
  int64_t bytes, start, end; // op indices, inclusive
  int64_t offset = -1;
};

LogicalResult planFunction(func::FuncOp func, bool inPlace, int64_t halfBytes,
                           StringRef layout) {
  func->setAttr(kHalfBytesAttrName,
                IntegerAttr::get(IntegerType::get(func.getContext(), 64),
                                 halfBytes));
  if (layout == "nhwc")
    func->setAttr(kLayoutAttrName, StringAttr::get(func.getContext(), layout));
  else
    func->removeAttr(kLayoutAttrName);
  Block &block = func.getBody().front();
  llvm::DenseMap<Operation *, int64_t> index;
  int64_t n = 0;
  for (Operation &op : block)
    index[&op] = n++;

  // Live ranges: from the defining op to the last op where the value (or any
  // view of it) is live, per MLIR's Liveness analysis.
  Liveness liveness(func);
  const LivenessBlockInfo *info = liveness.getLiveness(&block);
  llvm::DenseMap<Value, Interval *> byValue;
  std::vector<Interval> intervals;
  intervals.reserve(n * 2);
  for (Operation &op : block)
    for (Value r : op.getResults())
      if (classifyValue(r) == ValueKind::Arena) {
        Operation *end = info->getEndOperation(r, &op);
        intervals.push_back({r, alignUp(tensorBytes(r)), index[&op],
                             index[end]});
      }
  for (Interval &iv : intervals)
    byValue[iv.value] = &iv;
  for (Operation &op : block)
    for (Value r : op.getResults())
      if (classifyValue(r) == ValueKind::View) {
        auto it = byValue.find(viewRoot(r));
        if (it != byValue.end())
          it->second->end = std::max(
              it->second->end, index[info->getEndOperation(r, &op)]);
      }

  // Two tensors may share bytes unless both are alive at some op. A tensor
  // that dies as the operand of an in-place-capable op may hand its bytes to
  // that op's result, but only all of them: the result must then sit at
  // exactly the operand's offset (an elementwise kernel that writes element
  // i over a shifted copy of its input would clobber inputs not yet read).
  enum class Relation { Disjoint, InPlace, Conflict };
  auto relation = [&](const Interval &a, const Interval &b) {
    if (a.end < b.start || b.end < a.start)
      return Relation::Disjoint;
    for (auto [x, y] : {std::pair{&a, &b}, std::pair{&b, &a}})
      if (inPlace && x->end == y->start) {
        Operation *op = y->value.getDefiningOp();
        for (OpOperand &use : op->getOpOperands())
          if (viewRoot(use.get()) == x->value &&
              canWriteInPlace(op, use.getOperandNumber()) &&
              x->value.getType() == y->value.getType())
            return Relation::InPlace;
      }
    return Relation::Conflict;
  };
  auto overlaps = [](int64_t offset, int64_t bytes, const Interval *p) {
    return offset < p->offset + p->bytes && p->offset < offset + bytes;
  };

  std::vector<Interval *> order;
  for (Interval &iv : intervals)
    order.push_back(&iv);
  std::stable_sort(order.begin(), order.end(), [](Interval *a, Interval *b) {
    return a->bytes != b->bytes ? a->bytes > b->bytes : a->start < b->start;
  });
  std::vector<Interval *> placed;
  int64_t arena = 0;
  for (Interval *iv : order) {
    std::vector<Interval *> clash, partners;
    for (Interval *p : placed) {
      Relation r = relation(*iv, *p);
      if (r == Relation::Conflict)
        clash.push_back(p);
      else if (r == Relation::InPlace)
        partners.push_back(p);
    }
    // First choice: exactly over an in-place partner.
    int64_t offset = -1;
    for (Interval *partner : partners) {
      int64_t at = partner->offset;
      bool fits = llvm::none_of(clash, [&](Interval *c) {
        return overlaps(at, iv->bytes, c);
      }) && llvm::all_of(partners, [&](Interval *q) {
        return q->offset == at || !overlaps(at, iv->bytes, q);
      });
      if (fits) {
        offset = at;
        break;
      }
    }
    if (offset < 0) {
      // Lowest offset free of every tensor alive at the same time.
      clash.insert(clash.end(), partners.begin(), partners.end());
      std::sort(clash.begin(), clash.end(),
                [](Interval *a, Interval *b) { return a->offset < b->offset; });
      offset = 0;
      for (Interval *c : clash) {
        if (offset + iv->bytes <= c->offset)
          break;
        offset = std::max(offset, c->offset + c->bytes);
      }
    }
    iv->offset = offset;
    arena = std::max(arena, offset + iv->bytes);
    placed.push_back(iv);
  }

  OpBuilder b(func.getContext());
  for (Operation &op : block) {
    if (op.getNumResults() == 0)
      continue;
    SmallVector<int64_t> offsets;
    for (Value r : op.getResults()) {
      auto it = byValue.find(r);
      offsets.push_back(it == byValue.end() ? -1 : it->second->offset);
    }
    op.setAttr(kOffsetsAttrName, b.getDenseI64ArrayAttr(offsets));
  }
  func->setAttr(kArenaBytesAttrName, b.getI64IntegerAttr(arena));
  return verifyMemoryPlan(func);
}

struct PlanMemoryPass : public fcc::impl::PlanMemoryBase<PlanMemoryPass> {
  using PlanMemoryBase::PlanMemoryBase;
  void runOnOperation() override {
    if (layout != "nchw" && layout != "nhwc") {
      getOperation().emitError() << "fcc-plan-memory: layout=" << layout
                                 << ": expected nchw or nhwc";
      return signalPassFailure();
    }
    for (auto func : getOperation().getOps<func::FuncOp>())
      if (failed(planFunction(func, inPlace, halfBytes, layout)))
        return signalPassFailure();
  }
};
} // namespace

int64_t fcc::arenaOffset(Value v) {
  Operation *def = v.getDefiningOp();
  if (!def)
    return -1;
  auto offsets = def->getAttrOfType<DenseI64ArrayAttr>(kOffsetsAttrName);
  if (!offsets)
    return -1;
  return offsets[cast<OpResult>(v).getResultNumber()];
}

LogicalResult fcc::verifyMemoryPlan(func::FuncOp func) {
  // Independent of the planner: live ranges by a plain scan of uses.
  Block &block = func.getBody().front();
  llvm::DenseMap<Operation *, int64_t> index;
  int64_t n = 0;
  for (Operation &op : block)
    index[&op] = n++;
  auto arenaAttr = func->getAttrOfType<IntegerAttr>(kArenaBytesAttrName);
  if (!arenaAttr)
    return func.emitError("has no memory plan (run fcc-plan-memory)");
  int64_t arena = arenaAttr.getInt();
  struct Range {
    Value v;
    int64_t offset, bytes, start, end;
  };
  std::vector<Range> ranges;
  llvm::DenseMap<Value, size_t> rangeOf;
  for (Operation &op : block)
    for (Value r : op.getResults()) {
      if (classifyValue(r) != ValueKind::Arena)
        continue;
      int64_t off = arenaOffset(r);
      if (off < 0 || off % kAlignment || off + tensorBytes(r) > arena)
        return op.emitError("memory plan: result placed outside the arena ")
               << "(offset " << off << ", " << tensorBytes(r) << " bytes, arena "
               << arena << ")";
      rangeOf[r] = ranges.size();
      ranges.push_back({r, off, tensorBytes(r), index[&op], index[&op]});
    }
  for (Operation &op : block)
    for (Value operand : op.getOperands()) {
      auto it = rangeOf.find(viewRoot(operand));
      if (it != rangeOf.end())
        ranges[it->second].end = std::max(ranges[it->second].end, index[&op]);
    }
  for (size_t i = 0; i < ranges.size(); ++i)
    for (size_t j = i + 1; j < ranges.size(); ++j) {
      const Range &a = ranges[i], &b = ranges[j];
      bool bytes = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
      bool time = a.start <= b.end && b.start <= a.end;
      if (!bytes || !time)
        continue;
      // Allowed only when one dies as the in-place operand of the other.
      const Range &first = a.start <= b.start ? a : b;
      const Range &second = a.start <= b.start ? b : a;
      Operation *op = second.v.getDefiningOp();
      bool inPlace = first.end == second.start && first.offset == second.offset;
      if (inPlace) {
        inPlace = false;
        for (OpOperand &use : op->getOpOperands())
          inPlace |= viewRoot(use.get()) == first.v &&
                     canWriteInPlace(op, use.getOperandNumber());
      }
      if (!inPlace)
        return op->emitError("memory plan: overlaps a tensor that is still "
                             "live (bytes [")
               << first.offset << ", " << first.offset + first.bytes
               << ") and [" << second.offset << ", "
               << second.offset + second.bytes << ")";
    }
  return success();
}

void fcc::printMemoryPlan(ModuleOp module, llvm::raw_ostream &os) {
  auto mib = [](int64_t bytes) { return double(bytes) / (1 << 20); };
  for (auto func : module.getOps<func::FuncOp>()) {
    auto arena = func->getAttrOfType<IntegerAttr>(kArenaBytesAttrName);
    if (!arena)
      continue;
    Block &block = func.getBody().front();
    llvm::DenseMap<Operation *, int64_t> index;
    int64_t n = 0;
    for (Operation &op : block)
      index[&op] = n++;
    int64_t total = 0, persistent = 0;
    std::string rows;
    llvm::raw_string_ostream table(rows);
    for (Operation &op : block)
      for (Value r : op.getResults()) {
        if (classifyValue(r) != ValueKind::Arena)
          continue;
        int64_t end = index[&op];
        for (Operation &user : block)
          for (Value operand : user.getOperands())
            if (viewRoot(operand) == r)
              end = std::max(end, index[&user]);
        std::string name = op.getName().getStringRef().str();
        if (op.getNumResults() > 1)
          name += "#" + std::to_string(cast<OpResult>(r).getResultNumber());
        if (auto nl = dyn_cast<NameLoc>(op.getLoc()))
          name += " (" + nl.getName().str() + ")";
        table << llvm::formatv("  {0,12} {1,12} {2,5}-{3,-5} {4,-18} {5}\n",
                               arenaOffset(r), tensorBytes(r), index[&op], end,
                               formatShape(cast<ShapedType>(r.getType()).getShape()),
                               name);
        total += tensorBytes(r);
      }
    for (BlockArgument a : func.getArguments())
      if (isa<ShapedType>(a.getType()))
        persistent += tensorBytes(a);
    os << "@" << func.getName() << ": arena " << arena.getInt() << " bytes ("
       << llvm::formatv("{0:f2}", mib(arena.getInt())) << " MiB) for " << total
       << " bytes of temporaries ("
       << llvm::formatv("{0:f2}", mib(total)) << " MiB): "
       << llvm::formatv("{0:f1}",
                        total ? 100.0 * arena.getInt() / total : 0.0)
       << "% of the sum; persistent buffers (arguments) "
       << llvm::formatv("{0:f2}", mib(persistent)) << " MiB\n";
    os << llvm::formatv("  {0,12} {1,12} {2,11} {3,-18} {4}\n", "offset",
                        "bytes", "live ops", "shape", "value");
    os << rows;
  }
}
