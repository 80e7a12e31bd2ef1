//===- OverlapWeightGrads.cpp - Weight gradients on a second CUDA stream --===//
//
// fcc-overlap-weight-grads lets the weight gradient of each convolution run
// on a second CUDA stream, concurrently with the rest of the backward pass.
//
// In the backward pass of a training step, a convolution's weight gradient
//
//   dw = fcc.conv2d_grad_weight(x, dy)
//
// is needed by nothing but the optimizer at the end of the step, while the
// data gradient fcc.conv2d_grad_input(dy, w) and the backward pass of every
// earlier layer form one chain of dependent kernels. On one stream the GPU
// runs them one after the other, and each kernel's last wave (a weight
// gradient of a 3x3 convolution is a GEMM with only K x C*R*S outputs:
// 64 x 576 up to 512 x 4608 in ResNet9) leaves most SMs idle. The pass
//
//  1. moves each fcc.conv2d_grad_weight up to right after the op that
//     defines its last operand (in practice dy's producer, the BatchNorm
//     backward), so it is queued before the data gradient, together with
//     the cast of dw to fp32 when that is dw's only user (fp16 programs);
//  2. marks them `fcc.side_stream`: code generation queues them on the side
//     stream, which first waits for everything the main stream queued
//     before them;
//  3. inserts `fcc.stream_join x, dy, dw[, dw32]` right before the first
//     of: the next side-stream group, the first other user of their
//     results, the function's terminator (when that is the very next op,
//     nothing could overlap: the ops stay on the main stream, unmarked).
//     There the main stream waits for the side stream. The join's operands
//     keep x, dy and dw alive until then in the memory plan
//     (fcc-plan-memory, which runs next), so no op of the main stream
//     reuses their bytes while the side stream may still read or write them.
//
// A weight gradient thus overlaps the data gradient of its own layer and
// the BatchNorm backward of the layer below, at the cost of keeping x and
// dy a few ops longer. The arithmetic is unchanged (the same kernels on the
// same data), so results are bit-identical; the CUDA runtime runs side work
// on the main stream when FCC_CUDA_SERIAL=1 is set, for A/B measurements.
// The CPU target does not run the pass.
//
//===----------------------------------------------------------------------===//
#include "passes/Passes.h"

#include "ir/FccDialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace fcc {
#define GEN_PASS_DEF_OVERLAPWEIGHTGRADS
#include "passes/Passes.h.inc"
} // namespace fcc

using namespace mlir;
using namespace fcc;

namespace {

/// Moves `op` up to right after the op that defines its last operand (or to
/// the start of the block when every operand is a block argument).
void hoistToOperands(Operation *op) {
  Block *block = op->getBlock();
  Operation *last = nullptr;
  for (Value v : op->getOperands()) {
    Operation *def = v.getDefiningOp();
    if (!def || def->getBlock() != block)
      continue;
    if (!last || last->isBeforeInBlock(def))
      last = def;
  }
  if (last)
    op->moveAfter(last);
  else
    op->moveBefore(&block->front());
}

/// The op before which the main stream must wait for a group of side ops:
/// the first user of their results outside the group, the next side-stream
/// op and the terminator.
Operation *joinPoint(ArrayRef<Operation *> group, Operation *nextSide) {
  Block *block = group.front()->getBlock();
  Operation *at = nextSide ? nextSide : block->getTerminator();
  for (Operation *side : group)
    for (Value r : side->getResults())
      for (Operation *user : r.getUsers()) {
        Operation *inBlock = block->findAncestorOpInBlock(*user);
        if (inBlock && !llvm::is_contained(group, inBlock) &&
            inBlock->isBeforeInBlock(at))
          at = inBlock;
      }
  return at;
}

/// The weight gradient and, when its only user is a cast (fp16 programs
/// cast it to fp32 for the optimizer), that cast, moved right after it: the
/// ops that run on the side stream together.
SmallVector<Operation *> sideGroup(Operation *grad) {
  SmallVector<Operation *> group{grad};
  Value dw = grad->getResult(0);
  if (!dw.hasOneUse())
    return group;
  Operation *user = *dw.getUsers().begin();
  if (isa<CastOp>(user) && user->getBlock() == grad->getBlock()) {
    user->moveAfter(grad);
    group.push_back(user);
  }
  return group;
}

void overlap(func::FuncOp func) {
  SmallVector<Operation *> sides;
  func.walk([&](Conv2DGradWeightOp op) {
    if (op->getBlock() == &func.getBody().front())
      sides.push_back(op);
  });
  if (sides.empty())
    return;
  for (Operation *op : sides)
    hoistToOperands(op);
  // Program order after hoisting.
  llvm::sort(sides, [](Operation *a, Operation *b) {
    return a->isBeforeInBlock(b);
  });
  SmallVector<SmallVector<Operation *>> groups;
  for (Operation *op : sides)
    groups.push_back(sideGroup(op));
  OpBuilder b(func.getContext());
  for (size_t i = 0; i < groups.size(); ++i) {
    ArrayRef<Operation *> group = groups[i];
    Operation *join =
        joinPoint(group, i + 1 < groups.size() ? groups[i + 1].front() : nullptr);
    // Nothing to overlap with (e.g. the first layer's weight gradient, whose
    // result the next op reads): stays on the main stream.
    if (join == group.back()->getNextNode())
      continue;
    for (Operation *op : group)
      op->setAttr(FccDialect::kSideStreamAttrName,
                  UnitAttr::get(func.getContext()));
    b.setInsertionPoint(join);
    SmallVector<Value> alive(group.front()->getOperands());
    for (Operation *op : group)
      alive.append(op->result_begin(), op->result_end());
    b.create<StreamJoinOp>(group.front()->getLoc(), alive);
  }
}

struct OverlapWeightGradsPass
    : public fcc::impl::OverlapWeightGradsBase<OverlapWeightGradsPass> {
  void runOnOperation() override {
    for (auto func : getOperation().getOps<func::FuncOp>())
      overlap(func);
  }
};

} // namespace
