//===- InjectCompression.cpp - Compress gradients before the update -------===//
//
// fcc-inject-compression rewrites @train_step so that the optimizer sees
// compressed gradients:
//
//   %g  = <gradient>                       %g2 = fcc.add %g, %residual   (EF)
//   ...                            ==>     %p  = fcc.compress %g2, %seed
//   fcc.sgd_update %w, %g, ...             %d  = fcc.decompress %p, %seed
//                                          %r' = fcc.compress_residual %g2, %p (EF)
//                                          fcc.sgd_update %w, %d, ...
//
// Which gradients, and how, is decided by the `method` option: one compressor
// spec for every gradient, or per-parameter rules `glob=spec,...` matched
// against parameter names (first match wins, unmatched gradients stay dense).
// Gradients smaller than `min-compress-bytes` stay dense. With
// scope=entire-model all gradients are flattened into one vector
// (fcc.concat_flat) and compressed as one entity, then split back.
//
// Why a pass of its own: on one rank the result is exactly SGD on compressed
// gradients, testable without any communication; fcc-insert-collectives then
// only has to put a collective between each compress and decompress. Packed
// payloads are byte tensors whose size is the method's capacity
// (fcc/runtime/compress.h), so the IR shows what travels.
//
//===----------------------------------------------------------------------===//
#include "passes/Passes.h"

#include "ir/FccDialect.h"
#include "ir/ModelUtils.h"

#include "fcc/runtime/compress.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/Support/GlobPattern.h"

namespace fcc {
#define GEN_PASS_DEF_INJECTCOMPRESSION
#include "passes/Passes.h.inc"
} // namespace fcc

using namespace mlir;
using namespace fcc;

namespace {

/// One `glob=spec` rule (a plain spec is the rule `*=spec`).
struct Rule {
  std::string glob;
  llvm::GlobPattern pattern;
  std::string spec; // canonical
  fcc_compressor compressor;
};

/// Canonical spec of a valid compressor spec, or an error message.
FailureOr<std::string> canonical(StringRef spec, fcc_compressor &c,
                                 std::string &error) {
  char err[256];
  if (fcc_compressor_parse(spec.str().c_str(), &c, err, sizeof err) != 0) {
    error = err;
    return failure();
  }
  char buf[128];
  fcc_compressor_format(&c, buf, sizeof buf);
  return std::string(buf);
}

/// Parses the `method` option. A comma-separated item with '=' before any
/// ':' is a rule (specs such as qsgd:255:bucket=64 have ':' first).
LogicalResult parseRules(StringRef text, bool randomkUnbiased,
                         std::vector<Rule> &rules, std::string &error) {
  SmallVector<StringRef> items;
  text.split(items, ',', -1, false);
  for (StringRef item : items) {
    item = item.trim();
    size_t eq = item.find('='), colon = item.find(':');
    Rule r;
    StringRef glob = "*", spec = item;
    if (eq != StringRef::npos && (colon == StringRef::npos || eq < colon)) {
      glob = item.take_front(eq).trim();
      spec = item.drop_front(eq + 1).trim();
    } else if (items.size() > 1) {
      error = "'" + item.str() + "': with several items each must be a "
              "rule 'glob=method'";
      return failure();
    }
    auto pattern = llvm::GlobPattern::create(glob);
    if (!pattern) {
      error = "bad parameter-name pattern '" + glob.str() + "': " +
              llvm::toString(pattern.takeError());
      return failure();
    }
    auto canon = canonical(spec, r.compressor, error);
    if (failed(canon))
      return failure();
    if (randomkUnbiased && r.compressor.method == FCC_COMPRESS_RANDOMK &&
        !r.compressor.unbiased) {
      r.compressor.unbiased = 1;
      char buf[128];
      fcc_compressor_format(&r.compressor, buf, sizeof buf);
      canon = std::string(buf);
    }
    r.glob = glob.str();
    r.pattern = std::move(*pattern);
    r.spec = *canon;
    rules.push_back(std::move(r));
  }
  if (rules.empty()) {
    error = "empty method";
    return failure();
  }
  return success();
}

/// What the rules may not be combined with: rules need the layerwise scope,
/// and a fixed threshold cannot compare loss-scaled (fp16) gradients.
LogicalResult checkCombination(const std::vector<Rule> &rules, StringRef scope,
                               bool lossScaled, std::string &error) {
  if (scope != "layerwise" && scope != "entire-model")
    error = "--compress-scope: '" + scope.str() +
            "' is not layerwise or entire-model";
  else if (scope == "entire-model" &&
           (rules.size() > 1 || rules[0].glob != "*"))
    error = "per-parameter rules need --compress-scope layerwise";
  else if (lossScaled && llvm::any_of(rules, [](const Rule &r) {
             return r.compressor.method == FCC_COMPRESS_THRESHOLDV;
           }))
    error = "thresholdv compares loss-scaled gradients with a fixed "
            "threshold under --precision fp16; use bf16 or fp32, or "
            "adaptive-threshold";
  else
    return success();
  return failure();
}

int64_t numel(Value v) { return cast<ShapedType>(v.getType()).getNumElements(); }

class Injector {
public:
  Injector(func::FuncOp f, bool errorFeedback)
      : f(f), b(f.getContext()), errorFeedback(errorFeedback) {}

  LogicalResult findSeed() {
    for (unsigned i = 0; i < f.getNumArguments(); ++i)
      if (auto h = f.getArgAttrOfType<StringAttr>(i, FccDialect::kHyperAttrName))
        if (h.getValue() == "seed")
          seed = f.getArgument(i);
    if (!seed)
      return f.emitError("fcc-inject-compression: @train_step has no seed "
                         "argument"),
             failure();
    return success();
  }

  /// Compresses `grads` as one entity (flattened when there are several)
  /// inserted after `after`; every use of a gradient outside the new ops
  /// then reads its decompressed value.
  void compress(ArrayRef<Value> grads, const std::string &spec,
                const fcc_compressor &c, StringRef stateName,
                Operation *after) {
    Location loc = after->getLoc();
    b.setInsertionPointAfter(after);
    llvm::SmallPtrSet<Operation *, 8> chain;
    auto record = [&](Operation *op) {
      chain.insert(op);
      return op;
    };
    Value g = grads.front();
    if (grads.size() > 1) {
      int64_t total = 0;
      for (Value v : grads)
        total += numel(v);
      auto flat = RankedTensorType::get({total}, b.getF32Type());
      g = record(b.create<ConcatFlatOp>(loc, flat, grads))->getResult(0);
    }
    Value residual;
    if (errorFeedback) {
      residual = addArgument(g.getType(), ("residual:" + stateName).str());
      g = record(b.create<AddOp>(loc, g.getType(), g, residual))->getResult(0);
    }
    auto payloadType = RankedTensorType::get(
        {fcc_compress_capacity(&c, numel(g))}, b.getI8Type());
    auto method = b.getStringAttr(spec);
    auto id = b.getI64IntegerAttr(nextTensor++);
    auto payload = b.create<CompressOp>(loc, payloadType, g, seed, method, id);
    record(payload);
    Value d = record(b.create<DecompressOp>(loc, g.getType(), payload, seed,
                                            method, id))
                  ->getResult(0);
    if (errorFeedback) {
      auto next = b.create<CompressResidualOp>(loc, g.getType(), g, payload,
                                               seed, method, id);
      record(next);
      newResults.push_back({next, cast<BlockArgument>(residual).getArgNumber()});
    }
    SmallVector<Value> outs = {d};
    if (grads.size() > 1) {
      SmallVector<Type> types;
      for (Value v : grads)
        types.push_back(v.getType());
      Operation *split = record(b.create<SplitFlatOp>(loc, types, d));
      outs.assign(split->result_begin(), split->result_end());
    }
    for (auto [oldValue, now] : llvm::zip(grads, outs))
      Value(oldValue).replaceUsesWithIf(now, [&](OpOperand &use) {
        return !chain.contains(use.getOwner());
      });
  }

  /// Returns the residual states as results updating their arguments.
  void finish() {
    if (newResults.empty())
      return;
    auto ret = cast<func::ReturnOp>(f.getBody().front().getTerminator());
    SmallVector<DictionaryAttr> attrs;
    f.getAllResultAttrs(attrs);
    for (auto [value, arg] : newResults) {
      ret->insertOperands(ret->getNumOperands(), ValueRange{value->getResult(0)});
      attrs.push_back(b.getDictionaryAttr({b.getNamedAttr(
          FccDialect::kUpdatesAttrName, b.getI64IntegerAttr(arg))}));
    }
    f.setFunctionType(b.getFunctionType(
        f.getBody().front().getArgumentTypes(), ret.getOperandTypes()));
    f.setAllResultAttrs(attrs);
  }

private:
  Value addArgument(Type type, const std::string &state) {
    unsigned i = f.getNumArguments();
    (void)f.insertArgument(
        i, type,
        b.getDictionaryAttr({b.getNamedAttr(FccDialect::kStateAttrName,
                                            b.getStringAttr(state))}),
        f.getLoc());
    return f.getArgument(i);
  }

  func::FuncOp f;
  OpBuilder b;
  bool errorFeedback;
  Value seed;
  int64_t nextTensor = 0;
  SmallVector<std::pair<Operation *, unsigned>> newResults;
};

struct InjectCompressionPass
    : public fcc::impl::InjectCompressionBase<InjectCompressionPass> {
  using InjectCompressionBase::InjectCompressionBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto fail = [&](const Twine &message) {
      module.emitError("fcc-inject-compression: ") << message;
      signalPassFailure();
    };
    std::vector<Rule> rules;
    std::string error;
    if (failed(parseRules(method, randomkUnbiased, rules, error)))
      return fail("--compress: " + error);
    if (failed(checkCombination(rules, scope, false, error)))
      return fail(error);
    bool allNone = llvm::all_of(rules, [](const Rule &r) {
      return r.compressor.method == FCC_COMPRESS_NONE;
    });
    if (allNone)
      return; // dense gradients: nothing to inject
    auto f = module.lookupSymbol<func::FuncOp>("train_step");
    if (!f)
      return fail("no @train_step (run fcc-build-training first)");
    Injector injector(f, errorFeedback);
    if (failed(injector.findSeed()))
      return signalPassFailure();

    // The gradients and the names of the parameters they update.
    SmallVector<std::pair<Value, StringRef>> grads;
    bool lossScaled = false;
    for (auto upd : f.getOps<SgdUpdateOp>()) {
      auto arg = dyn_cast<BlockArgument>(upd.getParam());
      ParamAttr p = arg ? getParamAttr(f, arg.getArgNumber()) : ParamAttr();
      if (!p || !upd.getGrad().getDefiningOp())
        return (void)(upd.emitOpError("fcc-inject-compression: expected the "
                                      "update of a parameter argument by a "
                                      "computed gradient"),
                      signalPassFailure());
      grads.push_back({upd.getGrad(), p.getName()});
      lossScaled |= bool(upd.getGradScale());
    }
    if (failed(checkCombination(rules, scope, lossScaled, error)))
      return fail(error);
    Block &block = f.getBody().front();

    if (scope == "entire-model") {
      SmallVector<Value> all;
      for (auto &[g, name] : grads)
        all.push_back(g);
      if (all.empty())
        return;
      injector.compress(all, rules[0].spec, rules[0].compressor,
                        "entire-model", lastDefiningOp(block, all));
    } else {
      for (auto &[g, name] : grads) {
        const Rule *rule = nullptr;
        for (const Rule &r : rules)
          if (r.pattern.match(name)) {
            rule = &r;
            break;
          }
        if (!rule || rule->compressor.method == FCC_COMPRESS_NONE ||
            4 * numel(g) < minCompressBytes)
          continue;
        injector.compress({g}, rule->spec, rule->compressor, name,
                          g.getDefiningOp());
      }
    }
    injector.finish();
  }
};

} // namespace

bool fcc::validateCompressionMethod(StringRef method, StringRef scope,
                                    bool lossScaled, std::string &error,
                                    bool *variableSize) {
  std::vector<Rule> rules;
  if (failed(parseRules(method, false, rules, error)) ||
      failed(checkCombination(rules, scope, lossScaled, error)))
    return false;
  if (variableSize)
    *variableSize = llvm::any_of(rules, [](const Rule &r) {
      return !fcc_compress_fixed_size(&r.compressor);
    });
  return true;
}
