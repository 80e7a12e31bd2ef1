//===- InsertCollectives.cpp - Average gradients over data-parallel ranks -===//
//
// fcc-insert-collectives makes @train_step data-parallel. Every rank computes
// the gradient of its own batch; before the update, all ranks must hold the
// same averaged gradient:
//
//  - a payload of a summable method (fp16, bf16, RandomK's values at shared
//    positions) is averaged in place:
//      %p = fcc.compress ...   ->   %s = fcc.all_reduce %p {average, method}
//      fcc.decompress %p       ->   fcc.decompress %s
//  - other payloads carry per-rank scales or indices (TopK, thresholds,
//    TernGrad, QSGD): they are gathered, and fcc.decompress of the gathered
//    rows averages the ranks' decompressed gradients;
//  - dense gradients get an averaging fcc.all_reduce; those smaller than
//    `bucket-bytes` share one (fcc.concat_flat -> all_reduce -> split_flat),
//    since a collective costs a latency however small it is.
//
// The collectives sit right after the value they carry, and every later use
// (the optimizer update, the loss-scaling finiteness check) reads the
// averaged gradient, so a step skipped for an overflow is skipped on every
// rank. On one rank the collectives are copies. The function is marked
// `fcc.collectives` for code generation.
//
//===----------------------------------------------------------------------===//
#include "passes/Passes.h"

#include "ir/FccDialect.h"
#include "ir/ModelUtils.h"

#include "fcc/runtime/compress.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/SmallPtrSet.h"

namespace fcc {
#define GEN_PASS_DEF_INSERTCOLLECTIVES
#include "passes/Passes.h.inc"
} // namespace fcc

using namespace mlir;
using namespace fcc;

namespace {

constexpr llvm::StringLiteral kCollectivesAttrName = "fcc.collectives";

int64_t numel(Value v) { return cast<ShapedType>(v.getType()).getNumElements(); }

/// Whether `g` already reaches the update through a decompression (it is
/// averaged by the collective of its payload).
bool isDecompressed(Value g) {
  Operation *def = g.getDefiningOp();
  if (auto split = dyn_cast_or_null<SplitFlatOp>(def))
    def = split.getInput().getDefiningOp();
  return isa_and_nonnull<DecompressOp>(def);
}

/// Replaces the uses of `old` by `now`, except in `except`.
void replaceOutside(Value old, Value now,
                    const llvm::SmallPtrSetImpl<Operation *> &except) {
  old.replaceUsesWithIf(now, [&](OpOperand &use) {
    return !except.contains(use.getOwner());
  });
}

struct InsertCollectivesPass
    : public fcc::impl::InsertCollectivesBase<InsertCollectivesPass> {
  using InsertCollectivesBase::InsertCollectivesBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto f = module.lookupSymbol<func::FuncOp>("train_step");
    if (!f) {
      module.emitError("fcc-insert-collectives: no @train_step (run "
                       "fcc-build-training first)");
      return signalPassFailure();
    }
    if (f->hasAttr(kCollectivesAttrName))
      return; // already data-parallel
    OpBuilder b(f.getContext());

    // Payloads: the collective goes between compress and decompress.
    for (auto d : llvm::to_vector(f.getOps<DecompressOp>())) {
      auto c = d.getPayload().getDefiningOp<CompressOp>();
      if (!c)
        continue;
      fcc_compressor comp;
      char err[256];
      if (fcc_compressor_parse(c.getMethod().str().c_str(), &comp, err,
                               sizeof err) != 0) {
        c.emitOpError("bad method: ") << err;
        return signalPassFailure();
      }
      b.setInsertionPointAfter(c);
      Value payload = c.getPayload();
      Value moved;
      if (fcc_compress_summable(&comp)) {
        moved = b.create<AllReduceOp>(c.getLoc(), payload.getType(), payload,
                                      b.getUnitAttr(), c.getMethodAttr());
      } else {
        auto t = cast<ShapedType>(payload.getType());
        auto rows = RankedTensorType::get(
            {ShapedType::kDynamic, t.getDimSize(0)}, t.getElementType());
        moved = b.create<AllGatherOp>(c.getLoc(), rows, payload,
                                      c.getMethodAttr());
      }
      d.getPayloadMutable().assign(moved);
    }

    // Dense gradients: averaged, the small ones in one bucket.
    SmallVector<Value> bucket, single;
    for (auto upd : f.getOps<SgdUpdateOp>()) {
      Value g = upd.getGrad();
      if (isDecompressed(g) || llvm::is_contained(bucket, g) ||
          llvm::is_contained(single, g))
        continue;
      (4 * numel(g) < bucketBytes ? bucket : single).push_back(g);
    }
    if (bucket.size() == 1)
      single.push_back(bucket.pop_back_val());
    for (Value g : single) {
      b.setInsertionPointAfterValue(g);
      auto r = b.create<AllReduceOp>(g.getLoc(), g.getType(), g,
                                     b.getUnitAttr(), StringAttr());
      llvm::SmallPtrSet<Operation *, 1> except = {r};
      replaceOutside(g, r, except);
    }
    if (!bucket.empty()) {
      Operation *last = lastDefiningOp(f.getBody().front(), bucket);
      b.setInsertionPointAfter(last);
      int64_t total = 0;
      SmallVector<Type> types;
      for (Value g : bucket) {
        total += numel(g);
        types.push_back(g.getType());
      }
      Location loc = last->getLoc();
      auto flatType = RankedTensorType::get({total}, b.getF32Type());
      auto flat = b.create<ConcatFlatOp>(loc, flatType, bucket);
      auto r = b.create<AllReduceOp>(loc, flatType, flat, b.getUnitAttr(),
                                     StringAttr());
      auto split = b.create<SplitFlatOp>(loc, types, r);
      llvm::SmallPtrSet<Operation *, 1> except = {flat};
      for (auto [g, now] : llvm::zip(bucket, split.getResults()))
        replaceOutside(g, now, except);
    }
    f->setAttr(kCollectivesAttrName, b.getUnitAttr());
  }
};

} // namespace
