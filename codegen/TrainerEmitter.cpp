//===- TrainerEmitter.cpp - Training program -> C++ source ----------------===//
//
// Lowering of a planned training module to EmitC, printed as C++.
//
// Values become C expressions (see `pointer`): parameters `P[i]`, momentum
// buffers `M[i]`, EMA copies `E[i]`, the batch `IMG`/`LBL`, hyper-parameters
// `H->lr`, ..., arena temporaries `A + <float offset>`, constants
// `kConstK`. Each fcc op becomes one call (rarely two) of a kernel from
// runtime/include/fcc/runtime/cpu_kernels.h or cpu_codegen.h, preceded by a
// comment naming the op and its source location. The ABI entry points of
// program.h store their pointer arguments in those globals and run the body.
//
//===----------------------------------------------------------------------===//
#include "codegen/TrainerEmitter.h"

#include "ir/FccDialect.h"
#include "ir/FccFusedOps.h"
#include "ir/ModelUtils.h"
#include "ir/ShapeInference.h"
#include "passes/MemoryPlan.h"

#include "fcc/runtime/compress.h"
#include "fcc/runtime/init.h"
#include "fcc/runtime/program.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/EmitC/IR/EmitC.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "mlir/Target/Cpp/CppEmitter.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

#include <cstdio>
#include <array>
#include <map>

using namespace mlir;
using namespace fcc;

namespace {

std::string fmtFloat(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos)
    s += ".0";
  return s + "f";
}

std::string typeName(Type t) {
  std::string text;
  llvm::raw_string_ostream os(text);
  t.print(os);
  return text;
}

std::string cString(StringRef s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\')
      out += '\\';
    out += c;
  }
  return out + "\"";
}

ArrayRef<int64_t> shapeOf(Value v) {
  return cast<ShapedType>(v.getType()).getShape();
}

/// The input shape of a reduce_sum with its summed axes set to 1: the
/// broadcast shape of the result that fcc_*_reduce_sum_to takes.
SmallVector<int64_t> keptShape(ReduceSumOp r) {
  SmallVector<int64_t> kept(shapeOf(r.getInput()));
  for (int64_t a : r.getAxes())
    kept[a] = 1;
  return kept;
}

/// The initializer of a `const fcc_bn_act_desc NAME[1]` global.
std::string bnActDescInit(const fcc_bn_act_desc &d, StringRef layout) {
  return llvm::formatv("{{{{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, "
                       "{10}, {11}, {12}, {13}}}",
                       d.n, d.c, d.h, d.w, d.activation, fmtFloat(d.alpha),
                       fmtFloat(d.eps), d.pool_kh, d.pool_kw, d.pool_sh,
                       d.pool_sw, d.oh, d.ow, layout)
      .str();
}

int64_t countOf(Value v) { return numElements(shapeOf(v)); }

/// Per-parameter facts of the program table.
struct ParamEntry {
  std::string name;
  ParamRole role;
  bool trainable;
  SmallVector<int64_t> shape;
  int64_t fanIn = 0;
  int64_t blobOffset = -1; // into the weights blob (bytes)
  float lrMult = 1.0f, wdMult = 1.0f;
};

class Emitter {
public:
  Emitter(ModuleOp planned, const CodegenOptions &opts)
      : planned(planned), opts(opts), ctx(planned.getContext()), b(ctx),
        cuda(opts.target == "cuda") {}

  FailureOr<GeneratedProgram> run();

private:
  bool nhwc() const { return opts.layout == "nhwc"; }
  // The FCC_LAYOUT_* constant of the activations, for descriptors.
  const char *layoutConst() const {
    return nhwc() ? "FCC_LAYOUT_NHWC" : "FCC_LAYOUT_NCHW";
  }
  // --layout nhwc: every op that touches a 4-d activation must take NHWC.
  LogicalResult checkNhwc(func::FuncOp f);

  // Values as C expressions.
  std::string pointer(Value v);
  std::string scalar(Value v);
  std::string paramPtr(StringRef name) {
    return "P[" + std::to_string(paramIndex.at(name.str())) + "]";
  }

  // Emission helpers.
  Attribute op(const std::string &text) {
    return emitc::OpaqueAttr::get(ctx, text);
  }
  Attribute num(int64_t v) { return op(std::to_string(v)); }
  /// GPU kernels take the storage type of their tensors last, except those
  /// whose tensors are always fp32 or whose plan knows it.
  bool takesDtype(StringRef callee) const {
    if (!cuda || !callee.starts_with("fcc_cuda_"))
      return false;
    for (StringRef fixed :
         {"fcc_cuda_conv2d_", "fcc_cuda_batch_norm_update_running",
          "fcc_cuda_sgd_", "fcc_cuda_ema_", "fcc_cuda_cast",
          "fcc_cuda_finite", "fcc_cuda_metric", "fcc_cuda_side_"})
      if (callee.starts_with(fixed))
        return false;
    return true;
  }
  SmallVector<Attribute> withDtype(StringRef callee,
                                   ArrayRef<Attribute> args) {
    SmallVector<Attribute> all(args.begin(), args.end());
    if (takesDtype(callee))
      all.push_back(op(dtype));
    return all;
  }
  void call(StringRef callee, ArrayRef<Attribute> args) {
    b.create<emitc::CallOpaqueOp>(loc, TypeRange{}, callee, ValueRange{},
                                  b.getArrayAttr(withDtype(callee, args)),
                                  ArrayAttr());
  }
  void checked(StringRef callee, ArrayRef<Attribute> args) {
    std::string text = callee.str() + "(";
    for (auto [k, a] : llvm::enumerate(withDtype(callee, args)))
      text += (k ? ", " : "") + cast<emitc::OpaqueAttr>(a).getValue().str();
    text += ")";
    b.create<emitc::CallOpaqueOp>(
        loc, TypeRange{}, "fcc_check", ValueRange{},
        b.getArrayAttr({op(text), op(cString(callee))}), ArrayAttr());
  }
  void comment(const std::string &text) {
    b.create<emitc::VerbatimOp>(loc, "// " + text);
  }
  /// Declares `static CTYPE NAME[count] = INIT;` among the globals.
  std::string global(const std::string &prefix, StringRef ctype, int64_t count,
                     const std::string &init);

  LogicalResult collectParams(func::FuncOp train);
  LogicalResult emitFunction(func::FuncOp f, StringRef bodyName);
  LogicalResult emitOp(Operation *op);
  LogicalResult emitCommOp(Operation *op, const std::string &where);
  /// float copies {dst, src, count}: fcc_copy_f32 calls on the CPU, one
  /// fcc_comm_cuda_copy_many launch on the GPU.
  void emitCopies(ArrayRef<std::array<std::string, 3>> copies);
  void roundHalfResults(Operation *op);
  /// The running-statistics update of a training BatchNorm (fcc.batch_norm
  /// or fcc.bn_act): the new statistics are normally the old buffers,
  /// updated in place; otherwise they start from a copy of the old values.
  template <class BatchNormLike>
  void emitRunningStatsUpdate(BatchNormLike bn, int64_t count, int64_t c) {
    std::string rm = pointer(bn.getNewRunningMean());
    std::string rv = pointer(bn.getNewRunningVar());
    // GPU train step: the updates go into one launch after the last
    // training BatchNorm of the forward pass, if they are in place and the
    // batch statistics are still alive there (their backward pass reads
    // them) and nothing else reads the new running statistics.
    Operation *self = bn.getOperation();
    auto usedAfterLast = [&](Value v) {
      return llvm::any_of(v.getUsers(), [&](Operation *u) {
        return u->getBlock() == lastRunningUpdate->getBlock() &&
               lastRunningUpdate->isBeforeInBlock(u);
      });
    };
    auto onlyReturned = [](Value v) {
      return llvm::all_of(v.getUsers(),
                          [](Operation *u) { return isa<func::ReturnOp>(u); });
    };
    if (lastRunningUpdate && rm == pointer(bn.getRunningMean()) &&
        rv == pointer(bn.getRunningVar()) &&
        usedAfterLast(bn.getBatchMean()) && usedAfterLast(bn.getBatchVar()) &&
        onlyReturned(bn.getNewRunningMean()) &&
        onlyReturned(bn.getNewRunningVar())) {
      runningTable.rows.push_back(
          "(fcc_cuda_running_item){" + rm + ", " + rv + ", " +
          pointer(bn.getBatchMean()) + ", " + pointer(bn.getBatchVar()) +
          ", " + fmtFloat(bn.getMomentum().convertToFloat()) + ", " +
          std::to_string(int(bn.getRunningVarUnbiased())) + ", " +
          std::to_string(count) + ", " + std::to_string(c) + "}");
      runningMost = std::max(runningMost, c);
      if (self == lastRunningUpdate)
        emitRunningMulti();
      return;
    }
    emitRunningUpdate(bn, rm, rv, count, c);
    if (self == lastRunningUpdate && runningEmitted < runningTable.rows.size())
      emitRunningMulti();
  }
  template <class BatchNormLike>
  void emitRunningUpdate(BatchNormLike bn, const std::string &rm,
                         const std::string &rv, int64_t count, int64_t c) {
    if (rm != pointer(bn.getRunningMean()))
      call("fcc_copy_f32", {op(rm), op(pointer(bn.getRunningMean())), num(c)});
    if (rv != pointer(bn.getRunningVar()))
      call("fcc_copy_f32", {op(rv), op(pointer(bn.getRunningVar())), num(c)});
    call(rt("batch_norm_update_running"),
         {op(rm), op(rv), op(pointer(bn.getBatchMean())),
          op(pointer(bn.getBatchVar())),
          op(fmtFloat(bn.getMomentum().convertToFloat())),
          num(bn.getRunningVarUnbiased()), num(count), num(c)});
  }
  size_t runningEmitted = 0; // rows of runningTable already in a launch
  int64_t runningMost = 0;   // the most channels of those not yet
  /// The train step's last training BatchNorm (GPU), where the batched
  /// running-statistics update goes; null elsewhere.
  Operation *lastRunningUpdate = nullptr;
  void emitRunningMulti() {
    const size_t n = runningTable.rows.size() - runningEmitted;
    comment(std::to_string(n) +
            " BatchNorm running-statistics updates in one launch");
    call("fcc_cuda_batch_norm_update_running_multi",
         {op("RUNNING_ITEMS + " + std::to_string(runningEmitted)),
          num(int64_t(n)), num(runningMost)});
    runningEmitted = runningTable.rows.size();
    runningMost = 0;
  }
  std::string convPlan(ArrayRef<int64_t> x, ArrayRef<int64_t> w,
                       ArrayRef<int64_t> strides, ArrayRef<int64_t> pads,
                       ArrayRef<int64_t> dilations, int64_t groups);
  std::string poolDesc(ArrayRef<int64_t> x, ArrayRef<int64_t> kernel,
                       ArrayRef<int64_t> strides, ArrayRef<int64_t> pads,
                       ArrayRef<int64_t> dilations, bool ceil, bool includePad,
                       ArrayRef<int64_t> y);
  std::string shapeArray(ArrayRef<int64_t> shape);
  std::string abiWrappers();
  void cpuEntryPoints(llvm::raw_ostream &os);
  void finalizePools(llvm::raw_ostream &os);
  void cudaEntryPoints(llvm::raw_ostream &os);

  ModuleOp planned;
  const CodegenOptions &opts;
  MLIRContext *ctx;
  OpBuilder b;
  Location loc = UnknownLoc::get(ctx);
  OwningOpRef<ModuleOp> out;
  Operation *anchor = nullptr; // globals are inserted before it

  std::vector<ParamEntry> params;
  std::map<std::string, size_t> paramIndex;
  std::vector<char> weights;
  std::map<std::string, std::string> convPlans; // descriptor -> global name
  std::map<std::string, std::string> pools, shapes;
  llvm::DenseMap<Value, std::string> constants;
  llvm::DenseMap<Value, std::string> scalarExprs; // computed scalars
  bool lossScaling = false;
  // The CUDA target: the same plan against cuda_kernels.h (device pointers,
  // a trailing storage type per tensor kernel, device scalars, multi-tensor
  // optimizer and EMA updates, the train step captured as a CUDA graph).
  bool cuda = false;
  std::string dtype = "FCC_DTYPE_F32"; // storage type of the current op
  struct SgdItem {
    std::string param, grad, buf;
    int64_t count;
    float lrMult, wdMult;
  };
  std::vector<SgdItem> sgdItems;
  std::string sgdScale = "NULL", sgdApply = "NULL";
  struct EmaItem {
    std::string ema, value;
    int64_t count;
  };
  std::vector<EmaItem> emaItems;
  /// A device table of multi-tensor launches of the train step (GPU): rows
  /// (C expressions) collected while the step is emitted, each launch
  /// taking a slice; allocated by setup, filled by fill_sgd_items (before
  /// every capture: rows may name parameters) into the host array `local`,
  /// freed by teardown.
  struct DeviceTable {
    const char *name, *type, *local, *what;
    std::vector<std::string> rows;
  };
  /// The loss-scaling finite checks' tensors and counts, the batched casts
  /// ({x, y, count}) and the batched running-statistics updates.
  DeviceTable finitePtrs{"FINITE_PTRS", "const float *", "ptrs",
                         "finite-check table", {}},
      finiteCounts{"FINITE_COUNTS", "int64_t", "counts", "finite-check table",
                   {}},
      castTable{"CAST_ITEMS", "fcc_cuda_cast_item", "casts", "cast table", {}},
      runningTable{"RUNNING_ITEMS", "fcc_cuda_running_item", "running",
                   "running-statistics table", {}};
  std::array<DeviceTable *, 4> deviceTables() {
    return {&runningTable, &castTable, &finitePtrs, &finiteCounts};
  }
  /// "TYPE *", without a space before a pointer type's '*'.
  static std::string pointerTo(const DeviceTable &t) {
    std::string type = t.type;
    return type + (type.back() == '*' ? "*" : " *");
  }
  /// The tables' globals, one line each.
  std::string tableDeclarations() {
    std::string text;
    for (DeviceTable *t : deviceTables())
      text += "\n[[maybe_unused]] static " + pointerTo(*t) + t->name + ";";
    return text;
  }
  /// The consecutive casts from `first` on that one launch can do.
  SmallVector<CastOp> castBatch(Operation *first);
  /// The target's runtime entry point: fcc_cpu_NAME or fcc_cuda_NAME.
  std::string rt(StringRef name) const {
    return (cuda ? "fcc_cuda_" : "fcc_cpu_") + name.str();
  }
  std::vector<std::string> planNames;
  std::vector<std::string> planTypes; // storage type of each conv plan
  // Data parallelism: compressors by spec, gather buffers, comm state.
  std::map<std::string, std::string> compressors; // spec -> global name
  llvm::DenseMap<Value, std::string> gatherBuffers;
  std::vector<std::pair<std::string, int64_t>> gatherSetup; // name, capacity
  std::vector<std::pair<std::string, int64_t>> commState;   // name, numel
  bool collectives = false;
  int64_t gradNumel = 0, payloadBytes = 0;
  bool payloadFixed = true;
  int64_t collectiveOps = 0; // collectives per train step
  // GPU compression workspace: the largest tensor of each spec (workspace
  // sizes grow with the element count).
  std::map<std::string, int64_t> commReserve;
  size_t commStateIndex(StringRef name, Value v) {
    for (size_t k = 0; k < commState.size(); ++k)
      if (commState[k].first == name)
        return k;
    commState.push_back({name.str(), countOf(v)});
    return commState.size() - 1;
  }
  /// The global fcc_compressor of a spec (parsed by setup()).
  std::string compressor(StringRef spec) {
    auto it = compressors.find(spec.str());
    if (it != compressors.end())
      return "&" + it->second + "[0]";
    std::string name = global("kCompressor", "fcc_compressor", 1, "{}");
    compressors[spec.str()] = name;
    return "&" + name + "[0]";
  }
  int counter = 0;
  func::FuncOp current;
  int64_t arenaBytes = 0;
  int64_t batch = 0, classes = 0;
  uint64_t planHash = 0;
  SmallVector<int64_t> imageShape;
};

std::string Emitter::global(const std::string &prefix, StringRef ctype,
                            int64_t count, const std::string &init) {
  std::string name = prefix + std::to_string(counter++);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPoint(anchor);
  b.create<emitc::VerbatimOp>(loc, "static " + ctype.str() + " " + name + "[" +
                                       std::to_string(count) + "] = " + init +
                                       ";");
  return name;
}

std::string Emitter::pointer(Value v) {
  switch (classifyValue(v)) {
  case ValueKind::View:
    return pointer(viewRoot(v));
  case ValueKind::InPlace: {
    for (OpOperand &use : v.getUses())
      if (isa<func::ReturnOp>(use.getOwner())) {
        auto idx = current.getResultAttrOfType<IntegerAttr>(
            use.getOperandNumber(), FccDialect::kUpdatesAttrName);
        return pointer(current.getArgument(idx.getInt()));
      }
    llvm_unreachable("in-place value without return");
  }
  case ValueKind::Argument: {
    unsigned i = cast<BlockArgument>(v).getArgNumber();
    if (ParamAttr p = getParamAttr(current, i))
      return paramPtr(p.getName());
    if (auto s = current.getArgAttrOfType<StringAttr>(i, FccDialect::kStateAttrName)) {
      auto [kind, name] = s.getValue().split(':');
      if (kind == "residual")
        return "R[" + std::to_string(commStateIndex(s.getValue(), v)) + "]";
      return (kind == "momentum" ? "M[" : "E[") +
             std::to_string(paramIndex.at(name.str())) + "]";
    }
    if (current.getArgAttr(i, FccDialect::kLabelsAttrName))
      return "LBL";
    if (current.getArgAttr(i, FccDialect::kInputAttrName))
      return "IMG";
    return "<bad-argument>";
  }
  case ValueKind::Constant: {
    auto it = constants.find(v);
    if (it != constants.end())
      return it->second;
    auto c = cast<arith::ConstantOp>(v.getDefiningOp());
    auto dense = cast<DenseElementsAttr>(c.getValue());
    std::string init = "{";
    for (auto [k, f] : llvm::enumerate(dense.getValues<float>()))
      init += (k ? ", " : "") + fmtFloat(f);
    init += "}";
    return constants[v] = global("kConst", "const float", countOf(v), init);
  }
  case ValueKind::Arena:
    // The GPU arena is planned in bytes (half tensors take 2); the CPU one
    // holds only floats.
    if (cuda)
      return "((float *)(A + " + std::to_string(arenaOffset(v)) + "))";
    return "(A + " + std::to_string(arenaOffset(v) / 4) + ")";
  case ValueKind::Metric:
    return "<metric>";
  case ValueKind::Runtime: {
    // Gathered payloads: a buffer of the communication runtime per op.
    auto it = gatherBuffers.find(v);
    if (it != gatherBuffers.end())
      return it->second;
    int64_t capacity = cast<ShapedType>(v.getType()).getDimSize(1);
    std::string name = global("kGather", "void *", 1, "{NULL}");
    gatherSetup.push_back({name, capacity});
    return gatherBuffers[v] = name + "[0]";
  }
  }
  return "<bad>";
}

std::string Emitter::scalar(Value v) {
  auto computed = scalarExprs.find(v);
  if (computed != scalarExprs.end())
    return computed->second;
  if (auto a = dyn_cast<BlockArgument>(v)) {
    auto h = current.getArgAttrOfType<StringAttr>(a.getArgNumber(),
                                                  FccDialect::kHyperAttrName);
    if (!h)
      return "<bad-scalar>";
    StringRef n = h.getValue();
    if (current.getName() == "ema_update" && n == "decay")
      return cuda ? "DDECAY" : "DECAY";
    if (current.getName().starts_with("eval_step") && n == "label_smoothing")
      return cuda ? "DLS" : "LS";
    return (cuda ? "&H->" : "H->") + n.str();
  }
  if (cuda)
    return "<no-device-scalar>"; // constants have no device copy
  if (auto c = v.getDefiningOp<arith::ConstantOp>())
    if (auto d = dyn_cast<DenseElementsAttr>(c.getValue()))
      return fmtFloat(d.getSplatValue<float>());
  return "<bad-scalar>";
}

std::string Emitter::shapeArray(ArrayRef<int64_t> shape) {
  std::string init = "{";
  for (auto [k, d] : llvm::enumerate(shape))
    init += (k ? ", " : "") + std::to_string(d);
  init += "}";
  auto it = shapes.find(init);
  if (it != shapes.end())
    return it->second;
  std::string name =
      global("kShape", "const int64_t", std::max<int64_t>(shape.size(), 1),
             shape.empty() ? "{1}" : init);
  return shapes[init] = name;
}

std::string Emitter::convPlan(ArrayRef<int64_t> x, ArrayRef<int64_t> w,
                              ArrayRef<int64_t> s, ArrayRef<int64_t> p,
                              ArrayRef<int64_t> d, int64_t groups) {
  std::string desc = llvm::formatv(
      "{{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, "
      "{13}, {14}, {15}, 0, 0, {16}}",
      x[0], x[1], x[2], x[3], w[0], w[2], w[3], s[0], s[1], p[0], p[1], p[2],
      p[3], d[0], d[1], groups, layoutConst());
  std::string key = desc + (cuda ? " " + dtype : "");
  auto it = convPlans.find(key);
  if (it != convPlans.end())
    return it->second;
  std::string name = "conv" + std::to_string(planNames.size());
  planNames.push_back(name);
  planTypes.push_back(dtype);
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPoint(anchor);
  b.create<emitc::VerbatimOp>(loc, "static fcc_conv2d_desc " + name +
                                       "_desc = " + desc + ";");
  b.create<emitc::VerbatimOp>(loc, std::string("static ") +
                                       (cuda ? "fcc_cuda_conv2d_plan *"
                                             : "fcc_conv2d_plan *") +
                                       name + ";");
  return convPlans[key] = name;
}

std::string Emitter::poolDesc(ArrayRef<int64_t> x, ArrayRef<int64_t> k,
                              ArrayRef<int64_t> s, ArrayRef<int64_t> p,
                              ArrayRef<int64_t> d, bool ceil, bool includePad,
                              ArrayRef<int64_t> y) {
  std::string desc = llvm::formatv(
      "{{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, "
      "{13}, {14}, {15}, {16}, {17}, {18}}",
      x[0], x[1], x[2], x[3], k[0], k[1], s[0], s[1], p[0], p[1], p[2], p[3],
      d[0], d[1], int(ceil), int(includePad), y[2], y[3], layoutConst());
  auto it = pools.find(desc);
  if (it != pools.end())
    return it->second;
  std::string name = "pool" + std::to_string(pools.size());
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPoint(anchor);
  b.create<emitc::VerbatimOp>(loc, "static fcc_pool2d_desc " + name + " = " +
                                       desc + ";");
  return pools[desc] = name;
}

LogicalResult Emitter::collectParams(func::FuncOp train) {
  for (unsigned i = 0; i < train.getNumArguments(); ++i) {
    ParamAttr p = getParamAttr(train, i);
    if (!p)
      continue;
    ParamEntry e;
    e.name = p.getName().str();
    e.role = p.getRole();
    e.trainable = p.getTrainable();
    auto shape = shapeOf(train.getArgument(i));
    if (shape.size() > FCC_MAX_PARAM_RANK)
      return train.emitError("parameter '") << e.name << "' has rank "
                                            << shape.size()
                                            << "; trainers support up to 4";
    e.shape.assign(shape.begin(), shape.end());
    if (auto f = computeFanIn(train, i))
      e.fanIn = *f;
    for (Operation *user : train.getArgument(i).getUsers())
      if (auto u = dyn_cast<SgdUpdateOp>(user))
        if (u.getParam() == train.getArgument(i)) {
          e.lrMult = u.getLrMult().convertToFloat();
          e.wdMult = u.getWdMult().convertToFloat();
        }
    if (auto init = train.getArgAttrOfType<DenseResourceElementsAttr>(
            i, FccDialect::kInitAttrName)) {
      AsmResourceBlob *blob = init.getRawHandle().getBlob();
      if (!blob)
        return train.emitError("initial value of '") << e.name << "' is elided";
      while (weights.size() % 64)
        weights.push_back(0);
      e.blobOffset = weights.size();
      ArrayRef<char> data = blob->getData();
      weights.insert(weights.end(), data.begin(), data.end());
    }
    paramIndex[e.name] = params.size();
    params.push_back(std::move(e));
  }
  return success();
}

/// Half precision on the CPU is emulated: half tensors live in float buffers
/// and every op that produces one rounds its result to the half type (round
/// to nearest even), as 16-bit storage would. Ops that only select or move
/// existing half values (casts round themselves, views, ReLU, max pooling)
/// need no rounding.
void Emitter::roundHalfResults(Operation *o) {
  if (cuda) // real 16-bit storage
    return;
  if (isa<CastOp, ReshapeOp, FlattenOp, ReluOp, MaxPool2DOp, FlipOp>(o))
    return;
  for (Value r : o->getResults()) {
    Type et = cast<ShapedType>(r.getType()).getElementType();
    if (!et.isF16() && !et.isBF16())
      continue;
    ValueKind kind = classifyValue(r);
    if (kind == ValueKind::View || kind == ValueKind::Metric ||
        kind == ValueKind::Constant)
      continue;
    call(et.isF16() ? "fcc_cpu_round_f16" : "fcc_cpu_round_bf16",
         {op(pointer(r)), num(countOf(r))});
  }
}

/// FCC_DTYPE_* of a float tensor type.
static std::string dtypeOf(Type t) {
  Type et = cast<ShapedType>(t).getElementType();
  return et.isF16() ? "FCC_DTYPE_F16" : et.isBF16() ? "FCC_DTYPE_BF16"
                                                    : "FCC_DTYPE_F32";
}

LogicalResult Emitter::emitOp(Operation *o) {
  loc = o->getLoc();
  // The storage type GPU kernels are told: that of the first float result
  // (or operand).
  dtype = "FCC_DTYPE_F32";
  for (ValueRange vs : {ValueRange(o->getResults()), ValueRange(o->getOperands())}) {
    auto it = llvm::find_if(vs, [](Value v) {
      auto t = dyn_cast<ShapedType>(v.getType());
      return t && isa<FloatType>(t.getElementType());
    });
    if (it != vs.end()) {
      dtype = dtypeOf((*it).getType());
      break;
    }
  }
  std::string where;
  if (auto nl = dyn_cast<NameLoc>(o->getLoc()))
    where = " (" + nl.getName().str() + ")";
  return llvm::TypeSwitch<Operation *, LogicalResult>(o)
      .Case<ReshapeOp, FlattenOp>([&](Operation *r) {
        // A view, or under --layout nhwc a reordering: a transpose between
        // the map's NHWC storage and the IR's NCHW element order.
        LayoutReorder reorder = reordersLayout(r);
        if (reorder == LayoutReorder::None)
          return success();
        bool toNchw = reorder == LayoutReorder::ToNchw;
        auto map = shapeOf(toNchw ? r->getOperand(0) : r->getResult(0));
        comment("reshape " + std::string(toNchw ? "NHWC -> NCHW"
                                                : "NCHW -> NHWC") +
                where);
        call(rt("transpose_layout"),
             {op(pointer(r->getOperand(0))), num(map[0]), num(map[1]),
              num(map[2] * map[3]),
              op(toNchw ? "FCC_LAYOUT_NCHW" : "FCC_LAYOUT_NHWC"),
              op(pointer(r->getResult(0)))});
        return success();
      })
      .Case<arith::ConstantOp>([](auto) { return success(); }) // static data
      .Case<Conv2DOp>([&](Conv2DOp c) {
        comment("conv2d" + where);
        std::string plan =
            convPlan(shapeOf(c.getInput()), shapeOf(c.getWeight()),
                     c.getStrides(), c.getPads(), c.getDilations(), c.getGroups());
        checked(rt("conv2d_forward"),
                {op(plan), op(pointer(c.getInput())), op(pointer(c.getWeight())),
                 op(c.getBias() ? pointer(c.getBias()) : "NULL"),
                 op(pointer(c.getOutput()))});
        return success();
      })
      .Case<Conv2DGradInputOp>([&](Conv2DGradInputOp c) {
        comment("conv2d input gradient" + where);
        std::string plan =
            convPlan(shapeOf(c.getInputGrad()), shapeOf(c.getWeight()),
                     c.getStrides(), c.getPads(), c.getDilations(), c.getGroups());
        checked(rt("conv2d_backward_data"),
                {op(plan), op(pointer(c.getOutputGrad())),
                 op(pointer(c.getWeight())), op(pointer(c.getInputGrad()))});
        return success();
      })
      .Case<Conv2DGradWeightOp>([&](Conv2DGradWeightOp c) {
        comment("conv2d weight gradient" + where);
        std::string plan =
            convPlan(shapeOf(c.getInput()), shapeOf(c.getWeightGrad()),
                     c.getStrides(), c.getPads(), c.getDilations(), c.getGroups());
        checked(rt("conv2d_backward_filter"),
                {op(plan), op(pointer(c.getInput())),
                 op(pointer(c.getOutputGrad())), op(pointer(c.getWeightGrad())),
                 op("NULL")});
        return success();
      })
      .Case<BatchNormOp>([&](BatchNormOp bn) -> LogicalResult {
        auto xs = shapeOf(bn.getInput());
        int64_t n = xs[0], c = xs[1], hw = numElements(xs) / (n * c);
        std::string eps = fmtFloat(bn.getEpsilon().convertToFloat());
        if (!bn.getTraining()) {
          comment("batch_norm (inference)" + where);
          call(rt("batch_norm_inference"),
               {op(pointer(bn.getInput())), op(pointer(bn.getScale())),
                op(pointer(bn.getShift())), op(pointer(bn.getRunningMean())),
                op(pointer(bn.getRunningVar())), op(eps), num(n), num(c),
                num(hw), op(pointer(bn.getOutput()))});
          return success();
        }
        comment("batch_norm (training)" + where);
        call(rt("batch_norm_train_forward"),
             {op(pointer(bn.getInput())), op(pointer(bn.getScale())),
              op(pointer(bn.getShift())), op(eps), num(n), num(c), num(hw),
              op(pointer(bn.getOutput())), op(pointer(bn.getBatchMean())),
              op(pointer(bn.getBatchVar()))});
        emitRunningStatsUpdate(bn, n * hw, c);
        return success();
      })
      .Case<BatchNormGradOp>([&](BatchNormGradOp g) {
        auto xs = shapeOf(g.getInput());
        int64_t n = xs[0], c = xs[1], hw = numElements(xs) / (n * c);
        comment("batch_norm backward" + where);
        call(rt("batch_norm_backward"),
             {op(pointer(g.getInput())), op(pointer(g.getOutputGrad())),
              op(pointer(g.getScale())), op(pointer(g.getBatchMean())),
              op(pointer(g.getBatchVar())),
              op(fmtFloat(g.getEpsilon().convertToFloat())), num(n), num(c),
              num(hw), op(pointer(g.getInputGrad())),
              op(pointer(g.getScaleGrad())), op(pointer(g.getShiftGrad()))});
        return success();
      })
      .Case<BnActOp>([&](BnActOp f) {
        // Fused BatchNorm + activation (+ pool) (+ residual), fused.cpp.
        fcc_bn_act_desc d = bnActDescriptor(f);
        std::string desc = global("kBnAct", "const fcc_bn_act_desc", 1,
                                  bnActDescInit(d, layoutConst()));
        std::string residual =
            f.getResidual() ? pointer(f.getResidual()) : "NULL";
        if (!f.getTraining()) {
          comment("bn_act (inference)" + where);
          call(rt("bn_act_inference"),
               {op(desc), op(pointer(f.getInput())), op(pointer(f.getScale())),
                op(pointer(f.getShift())), op(pointer(f.getRunningMean())),
                op(pointer(f.getRunningVar())), op(residual),
                op(pointer(f.getOutput()))});
          return success();
        }
        comment("bn_act (training)" + where);
        call(rt("bn_act_train_forward"),
             {op(desc), op(pointer(f.getInput())), op(pointer(f.getScale())),
              op(pointer(f.getShift())), op(residual),
              op(pointer(f.getOutput())), op(pointer(f.getBatchMean())),
              op(pointer(f.getBatchVar()))});
        emitRunningStatsUpdate(f, d.n * d.h * d.w, d.c);
        return success();
      })
      .Case<BnActGradOp>([&](BnActGradOp g) {
        fcc_bn_act_desc d = bnActDescriptor(g);
        std::string desc = global("kBnAct", "const fcc_bn_act_desc", 1,
                                  bnActDescInit(d, layoutConst()));
        comment("bn_act backward" + where);
        call(rt("bn_act_backward"),
             {op(desc), op(pointer(g.getInput())),
              op(pointer(g.getOutputGrad())), op(pointer(g.getScale())),
              op(pointer(g.getShift())), op(pointer(g.getBatchMean())),
              op(pointer(g.getBatchVar())), op(pointer(g.getInputGrad())),
              op(pointer(g.getScaleGrad())), op(pointer(g.getShiftGrad()))});
        return success();
      })
      .Case<FoldBnOp>([&](FoldBnOp f) {
        auto ws = shapeOf(f.getWeight());
        comment("fold_bn (BatchNorm into convolution weights)" + where);
        call(rt("fold_bn"),
             {op(pointer(f.getWeight())),
              op(f.getBias() ? pointer(f.getBias()) : "NULL"),
              op(pointer(f.getScale())), op(pointer(f.getShift())),
              op(pointer(f.getMean())), op(pointer(f.getVar())),
              op(fmtFloat(f.getEpsilon().convertToFloat())), num(ws[0]),
              num(numElements(ws) / ws[0]), op(pointer(f.getFoldedWeight())),
              op(pointer(f.getFoldedBias()))});
        return success();
      })
      .Case<ReluOp>([&](ReluOp r) {
        comment("relu" + where);
        call(rt("relu_forward"), {op(pointer(r.getInput())),
                                      op(pointer(r.getOutput())),
                                      num(countOf(r.getInput()))});
        return success();
      })
      .Case<ReluGradOp>([&](ReluGradOp r) {
        comment("relu backward" + where);
        call(rt("relu_backward"),
             {op(pointer(r.getInput())), op(pointer(r.getOutputGrad())),
              op(pointer(r.getInputGrad())), num(countOf(r.getInput()))});
        return success();
      })
      .Case<CeluOp>([&](CeluOp r) {
        comment("celu" + where);
        call(rt("celu_forward"),
             {op(pointer(r.getInput())), op(fmtFloat(r.getAlpha().convertToFloat())),
              op(pointer(r.getOutput())), num(countOf(r.getInput()))});
        return success();
      })
      .Case<CeluGradOp>([&](CeluGradOp r) {
        comment("celu backward" + where);
        call(rt("celu_backward"),
             {op(pointer(r.getInput())), op(pointer(r.getOutputGrad())),
              op(fmtFloat(r.getAlpha().convertToFloat())),
              op(pointer(r.getInputGrad())), num(countOf(r.getInput()))});
        return success();
      })
      .Case<MaxPool2DOp>([&](MaxPool2DOp p) {
        comment("max_pool2d" + where);
        std::string d = poolDesc(shapeOf(p.getInput()), p.getKernel(),
                                 p.getStrides(), p.getPads(), p.getDilations(),
                                 p.getCeilMode(), false, shapeOf(p.getOutput()));
        call(rt("max_pool2d_forward"),
             {op("&" + d), op(pointer(p.getInput())), op(pointer(p.getOutput()))});
        return success();
      })
      .Case<MaxPool2DGradOp>([&](MaxPool2DGradOp p) {
        comment("max_pool2d backward" + where);
        std::string d = poolDesc(shapeOf(p.getInput()), p.getKernel(),
                                 p.getStrides(), p.getPads(), p.getDilations(),
                                 p.getCeilMode(), false,
                                 shapeOf(p.getOutputGrad()));
        call(rt("max_pool2d_backward"),
             {op("&" + d), op(pointer(p.getInput())),
              op(pointer(p.getOutputGrad())), op(pointer(p.getInputGrad()))});
        return success();
      })
      .Case<AvgPool2DOp>([&](AvgPool2DOp p) {
        comment("avg_pool2d" + where);
        SmallVector<int64_t> dense = {1, 1};
        std::string d = poolDesc(shapeOf(p.getInput()), p.getKernel(),
                                 p.getStrides(), p.getPads(), dense,
                                 p.getCeilMode(), p.getCountIncludePad(),
                                 shapeOf(p.getOutput()));
        call(rt("avg_pool2d_forward"),
             {op("&" + d), op(pointer(p.getInput())), op(pointer(p.getOutput()))});
        return success();
      })
      .Case<AvgPool2DGradOp>([&](AvgPool2DGradOp p) {
        comment("avg_pool2d backward" + where);
        SmallVector<int64_t> dense = {1, 1};
        std::string d = poolDesc(shapeOf(p.getInputGrad()), p.getKernel(),
                                 p.getStrides(), p.getPads(), dense,
                                 p.getCeilMode(), p.getCountIncludePad(),
                                 shapeOf(p.getOutputGrad()));
        call(rt("avg_pool2d_backward"),
             {op("&" + d), op(pointer(p.getOutputGrad())),
              op(pointer(p.getInputGrad()))});
        return success();
      })
      .Case<AddOp>([&](AddOp a) {
        comment("add" + where);
        auto ys = shapeOf(a.getOutput());
        auto align = [&](Value v) {
          SmallVector<int64_t> s(ys.size() - shapeOf(v).size(), 1);
          s.append(shapeOf(v).begin(), shapeOf(v).end());
          return shapeArray(s);
        };
        checked(rt("binary"),
                {op("FCC_BINARY_ADD"), op(pointer(a.getLhs())), op(align(a.getLhs())),
                 op(pointer(a.getRhs())), op(align(a.getRhs())),
                 op(shapeArray(ys)), num(ys.size()), op(pointer(a.getOutput()))});
        return success();
      })
      .Case<MulOp>([&](MulOp m) {
        comment("mul" + where);
        if (!m.getRhs()) {
          call(rt("affine"),
               {op(pointer(m.getLhs())),
                op(fmtFloat(m.getScalar()->convertToDouble())), op("0.0f"),
                op(pointer(m.getOutput())), num(countOf(m.getLhs()))});
          return success();
        }
        auto ys = shapeOf(m.getOutput());
        auto align = [&](Value v) {
          SmallVector<int64_t> s(ys.size() - shapeOf(v).size(), 1);
          s.append(shapeOf(v).begin(), shapeOf(v).end());
          return shapeArray(s);
        };
        checked(rt("binary"),
                {op("FCC_BINARY_MUL"), op(pointer(m.getLhs())), op(align(m.getLhs())),
                 op(pointer(m.getRhs())), op(align(m.getRhs())),
                 op(shapeArray(ys)), num(ys.size()), op(pointer(m.getOutput()))});
        return success();
      })
      .Case<LinearOp>([&](LinearOp l) {
        comment("linear" + where);
        auto a = shapeOf(l.getInput()), w = shapeOf(l.getWeight());
        int64_t m = l.getTransA() ? a[1] : a[0], k = l.getTransA() ? a[0] : a[1];
        int64_t n = l.getTransB() ? w[0] : w[1];
        int64_t cRows = 0, cCols = 0;
        if (l.getBias()) {
          auto bs = shapeOf(l.getBias());
          cRows = bs.size() == 2 ? bs[0] : 1;
          cCols = bs.empty() ? 1 : bs.back();
        }
        call(rt("gemm"),
             {num(l.getTransA()), num(l.getTransB()), num(m), num(n), num(k),
              op(fmtFloat(l.getAlpha().convertToFloat())),
              op(pointer(l.getInput())), op(pointer(l.getWeight())),
              op(fmtFloat(l.getBeta().convertToFloat())),
              op(l.getBias() ? pointer(l.getBias()) : "NULL"), num(cRows),
              num(cCols), op(pointer(l.getOutput()))});
        return success();
      })
      .Case<ReduceSumOp>([&](ReduceSumOp r) {
        comment("reduce_sum" + where);
        SmallVector<int64_t> xs(shapeOf(r.getInput())), kept = keptShape(r);
        // NHWC: the same sum over the stored order (n, h, w, c); the kept
        // axes come out in the order the result expects (checkNhwc).
        if (nhwc() && xs.size() == 4) {
          xs = {xs[0], xs[2], xs[3], xs[1]};
          kept = {kept[0], kept[2], kept[3], kept[1]};
        }
        checked(rt("reduce_sum_to"),
                {op(pointer(r.getInput())), op(shapeArray(xs)),
                 op(shapeArray(kept)), num(xs.size()), op(pointer(r.getOutput()))});
        return success();
      })
      .Case<DropoutOp>([&](DropoutOp d) -> LogicalResult {
        if (d.getTraining())
          return d.emitOpError("training-mode dropout must be lowered by "
                               "fcc-build-training");
        if (cuda)
          call("fcc_copy_bytes",
               {op(pointer(d.getOutput())), op(pointer(d.getInput())),
                num(tensorBytes(d.getInput()))});
        else
          call("fcc_copy_f32", {op(pointer(d.getOutput())),
                                op(pointer(d.getInput())),
                                num(countOf(d.getInput()))});
        return success();
      })
      .Case<DropoutMaskOp>([&](DropoutMaskOp d) {
        comment("dropout mask" + where);
        call(rt("dropout_mask"),
             {op(scalar(d.getSeed())), num(d.getStream()),
              op(fmtFloat(d.getRatio().convertToFloat())),
              op(pointer(d.getMask())), num(countOf(d.getMask()))});
        return success();
      })
      .Case<SoftmaxXentOp>([&](SoftmaxXentOp x) -> LogicalResult {
        if (classifyValue(x.getLoss()) != ValueKind::Metric)
          return x.emitOpError("code generation needs the loss to be a metric "
                               "result");
        comment("loss (accumulated into metrics)" + where);
        auto ls = shapeOf(x.getLogits());
        call("fcc_metric_loss",
             {op("METRICS"), op(pointer(x.getLogits())),
              op(pointer(x.getLabels())), num(ls[0]), num(ls[1]),
              op(scalar(x.getLabelSmoothing()))});
        return success();
      })
      .Case<CountCorrectOp>([&](CountCorrectOp x) -> LogicalResult {
        if (classifyValue(x.getCount()) != ValueKind::Metric)
          return x.emitOpError("code generation needs the count to be a "
                               "metric result");
        auto ls = shapeOf(x.getLogits());
        call("fcc_metric_correct",
             {op("METRICS"), op(pointer(x.getLogits())),
              op(pointer(x.getLabels())), num(ls[0]), num(ls[1])});
        return success();
      })
      .Case<SoftmaxXentGradOp>([&](SoftmaxXentGradOp x) {
        comment("loss gradient" + where);
        auto ls = shapeOf(x.getLogits());
        call("fcc_softmax_xent_grad",
             {op(pointer(x.getLogits())), op(pointer(x.getLabels())),
              num(ls[0]), num(ls[1]), op(scalar(x.getLabelSmoothing())),
              op(scalar(x.getLossGrad())), op(pointer(x.getLogitsGrad()))});
        return success();
      })
      .Case<SoftmaxOp>([&](SoftmaxOp s) {
        comment("softmax" + where);
        auto xs = shapeOf(s.getInput());
        int64_t axis = s.getAxis() < 0 ? s.getAxis() + xs.size() : s.getAxis();
        call(rt("softmax"),
             {op(pointer(s.getInput())), num(numElements(xs.take_front(axis))),
              num(xs[axis]), num(numElements(xs.drop_front(axis + 1))),
              op(pointer(s.getOutput()))});
        return success();
      })
      .Case<FlipOp>([&](FlipOp f) {
        comment("horizontal flip" + where);
        auto xs = shapeOf(f.getInput());
        call(rt(nhwc() ? "flip_w_nhwc" : "flip_w"),
             {op(pointer(f.getInput())), num(xs[0]),
                                num(xs[1]), num(xs[2]), num(xs[3]),
                                op(pointer(f.getOutput()))});
        return success();
      })
      .Case<SgdUpdateOp>([&](SgdUpdateOp u) -> LogicalResult {
        std::string p = pointer(u.getParam()), m = pointer(u.getMomentumBuffer());
        if (pointer(u.getNewParam()) != p ||
            pointer(u.getNewMomentumBuffer()) != m)
          return u.emitOpError("code generation updates parameters in place; "
                               "the results must be returned as updates of "
                               "the operands");
        if (cuda) {
          // One launch for every parameter: the items are collected here and
          // filled in by the train_step wrapper; the call goes where the
          // first update is (all updates follow all gradients).
          bool first = sgdItems.empty();
          sgdItems.push_back({p, pointer(u.getGrad()), m,
                              countOf(u.getParam()),
                              u.getLrMult().convertToFloat(),
                              u.getWdMult().convertToFloat()});
          if (first) {
            sgdScale = u.getGradScale() ? scalar(u.getGradScale()) : "NULL";
            sgdApply = u.getApply() ? scalar(u.getApply()) : "NULL";
            comment("SGD: every parameter in one launch");
            call("fcc_cuda_sgd_update_multi",
                 {op("SGD_ITEMS"), op("SGD_COUNT"), op("SGD_MAX"), op("H"),
                  op(sgdScale), op(sgdApply)});
          }
          return success();
        }
        std::string lrMult = u.getLrMult().convertToFloat() == 1.0f
                                 ? ""
                                 : " * " + fmtFloat(u.getLrMult().convertToFloat());
        std::string wdMult = u.getWdMult().convertToFloat() == 1.0f
                                 ? ""
                                 : " * " + fmtFloat(u.getWdMult().convertToFloat());
        SmallVector<Attribute> args = {
            op(p), op(pointer(u.getGrad())), op(m), num(countOf(u.getParam())),
            op(scalar(u.getLr()) + lrMult), op(scalar(u.getMomentum())),
            op(scalar(u.getWeightDecay()) + wdMult),
            op(scalar(u.getNesterov()) + " != 0.0f")};
        if (u.getGradScale() || u.getApply()) {
          // Loss-scaled: unscale, and skip when a gradient overflowed.
          args.push_back(op(u.getGradScale() ? scalar(u.getGradScale())
                                             : std::string("1.0f")));
          args.push_back(op(u.getApply() ? scalar(u.getApply()) + " != 0.0f"
                                         : std::string("1")));
          call(rt("sgd_update_scaled"), args);
        } else {
          call(rt("sgd_update"), args);
        }
        return success();
      })
      .Case<CastOp>([&](CastOp c) {
        Type et = cast<ShapedType>(c.getOutput().getType()).getElementType();
        comment("cast to " + typeName(et) + where);
        if (cuda)
          call(rt("cast"), {op(pointer(c.getInput())),
                            op(dtypeOf(c.getInput().getType())),
                            op(pointer(c.getOutput())),
                            op(dtypeOf(c.getOutput().getType())),
                            num(countOf(c.getOutput()))});
        else
          call(rt("cast"),
               {op(pointer(c.getInput())), op(pointer(c.getOutput())),
                num(countOf(c.getOutput())),
                op(dtypeOf(c.getOutput().getType()))});
        return success();
      })
      .Case<GradsFiniteOp>([&](GradsFiniteOp g) -> LogicalResult {
        if (classifyValue(g.getSkipped()) != ValueKind::Metric &&
            !g.getSkipped().use_empty())
          return g.emitOpError("code generation needs `skipped` to be a "
                               "metric result");
        comment("loss scaling: are all gradients finite?" + where);
        // The flag: a host float on the CPU, a device float (FINITE,
        // allocated by setup) on the GPU.
        std::string flag =
            cuda ? "FINITE" : global("kFinite", "float", 1, "{1.0f}");
        std::string value = cuda ? flag : flag + "[0]";
        scalarExprs[g.getFinite()] = value;
        call("fcc_finite_begin", {op(flag)});
        if (cuda && !g.getGrads().empty()) {
          // Every gradient in one launch, from a table that
          // fill_sgd_items fills.
          const size_t first = finitePtrs.rows.size();
          int64_t most = 0;
          for (Value v : g.getGrads()) {
            finitePtrs.rows.push_back(pointer(v));
            finiteCounts.rows.push_back(std::to_string(countOf(v)));
            most = std::max(most, countOf(v));
          }
          std::string at = " + " + std::to_string(first);
          call("fcc_cuda_finite_and_multi",
               {op(flag), op("FINITE_PTRS" + at), op("FINITE_COUNTS" + at),
                num(int64_t(g.getGrads().size())), num(most)});
        } else {
          for (Value v : g.getGrads())
            call("fcc_finite_and",
                 {op(flag), op(pointer(v)), num(countOf(v))});
        }
        if (!g.getSkipped().use_empty())
          call("fcc_metric_skipped", {op("METRICS"), op(value)});
        lossScaling = true;
        return success();
      })
      .Case<EmaUpdateOp>([&](EmaUpdateOp e) -> LogicalResult {
        std::string ema = pointer(e.getEma());
        if (pointer(e.getNewEma()) != ema)
          return e.emitOpError("code generation updates the EMA in place");
        if (cuda) {
          bool first = emaItems.empty();
          emaItems.push_back({ema, pointer(e.getValue()), countOf(e.getEma())});
          if (first)
            call("fcc_cuda_ema_update_multi",
                 {op("EMA_DST"), op("EMA_SRC"), op("EMA_COUNTS"),
                  op("EMA_NUM"), op("EMA_MAX"), op("DDECAY")});
          return success();
        }
        call(rt("ema_update"), {op(ema), op(pointer(e.getValue())),
                                op(scalar(e.getDecay())),
                                num(countOf(e.getEma()))});
        return success();
      })
      .Case<CompressOp, DecompressOp, CompressResidualOp, AllReduceOp,
            AllGatherOp, ConcatFlatOp, SplitFlatOp>(
          [&](Operation *c) { return emitCommOp(c, where); })
      .Case<StreamJoinOp>([&](StreamJoinOp) {
        // In program order on the CPU: nothing to wait for.
        if (cuda) {
          comment("wait for the side stream");
          call("fcc_cuda_side_join", {});
        }
        return success();
      })
      .Default([&](Operation *other) {
        return other->emitOpError("has no code generation for target ")
               << (cuda ? "cuda" : "cpu");
      });
}

void Emitter::emitCopies(ArrayRef<std::array<std::string, 3>> copies) {
  if (!cuda) {
    for (const auto &[dst, src, count] : copies)
      call("fcc_copy_f32", {op(dst), op(src), op(count)});
    return;
  }
  std::string text = "{\n  const fcc_copy_item items[" +
                     std::to_string(copies.size()) + "] = {\n";
  for (const auto &[dst, src, count] : copies)
    text += "    {" + dst + ", " + src + ", " + count + "},\n";
  text += "  };\n  fcc_comm_cuda_copy_many(items, " +
          std::to_string(copies.size()) + ");\n}";
  b.create<emitc::VerbatimOp>(loc, text);
}

/// Compression, collectives and flattening (runtime/include/fcc/runtime/
/// comm.h). Seeds come from the step's seed; the tensor id separates the
/// random streams of different tensors.
LogicalResult Emitter::emitCommOp(Operation *o, const std::string &where) {
  // The GPU runtime (comm_cuda.h) has the same entry points on device
  // memory; its seeds are a device pointer (the step's fcc_hyper.seed).
  auto fn = [&](StringRef name) {
    return (cuda ? "fcc_comm_cuda_" : "fcc_comm_") + name.str();
  };
  // The GPU compression workspace is sized in setup, before any capture.
  auto reserve = [&](StringRef spec, Value grad) {
    if (cuda) {
      int64_t &largest = commReserve[spec.str()];
      largest = std::max(largest, countOf(grad));
    }
  };
  auto n = [&](Value v) { return num(countOf(v)); };
  auto bytesOf = [](Value v) {
    auto t = cast<ShapedType>(v.getType());
    return t.getDimSize(t.getRank() - 1);
  };
  return llvm::TypeSwitch<Operation *, LogicalResult>(o)
      .Case<CompressOp>([&](CompressOp c) {
        comment("compress " + c.getMethod().str() + where);
        reserve(c.getMethod(), c.getGrad());
        call(fn("compress"),
             {op(compressor(c.getMethod())), num(c.getTensor()),
              op(pointer(c.getGrad())), n(c.getGrad()), op(scalar(c.getSeed())),
              op(pointer(c.getPayload()))});
        return success();
      })
      .Case<DecompressOp>([&](DecompressOp d) {
        bool gathered = cast<ShapedType>(d.getPayload().getType()).getRank() == 2;
        comment(std::string(gathered ? "mean of the ranks' " : "") +
                "decompressed " + d.getMethod().str() + where);
        reserve(d.getMethod(), d.getGrad());
        if (gathered)
          call(fn("decompress_mean"),
               {op(compressor(d.getMethod())), num(d.getTensor()),
                op(pointer(d.getPayload())), num(bytesOf(d.getPayload())),
                n(d.getGrad()), op(scalar(d.getSeed())),
                op(pointer(d.getGrad()))});
        else
          call(fn("decompress"),
               {op(compressor(d.getMethod())), num(d.getTensor()),
                op(pointer(d.getPayload())), n(d.getGrad()),
                op(scalar(d.getSeed())), op(pointer(d.getGrad()))});
        return success();
      })
      .Case<CompressResidualOp>([&](CompressResidualOp r) {
        comment("error feedback: residual of " + r.getMethod().str() + where);
        reserve(r.getMethod(), r.getGrad());
        call(fn("residual"),
             {op(compressor(r.getMethod())), num(r.getTensor()),
              op(pointer(r.getGrad())), op(pointer(r.getPayload())),
              n(r.getGrad()), op(scalar(r.getSeed())),
              op(pointer(r.getResidual()))});
        return success();
      })
      .Case<AllReduceOp>([&](AllReduceOp a) {
        if (auto m = a.getMethod()) {
          comment("all-reduce of " + m->str() + " payloads" + where);
          // The gradient's element count, from the decompression that reads
          // the sum.
          int64_t count = 0;
          for (Operation *user : a->getUsers())
            if (auto d = dyn_cast<DecompressOp>(user))
              count = countOf(d.getGrad());
          call(fn("allreduce_payload"),
               {op(compressor(*m)), op(pointer(a.getInput())),
                op(pointer(a.getOutput())), num(bytesOf(a.getInput())),
                num(count), num(a.getAverage())});
          payloadBytes += bytesOf(a.getInput());
          ++collectiveOps;
        } else {
          comment("all-reduce of dense gradients" + where);
          call(fn("allreduce_f32"),
               {op(pointer(a.getInput())), op(pointer(a.getOutput())),
                n(a.getInput()), num(a.getAverage())});
          payloadBytes += 4 * countOf(a.getInput());
          ++collectiveOps;
        }
        return success();
      })
      .Case<AllGatherOp>([&](AllGatherOp g) {
        comment("all-gather of " + g.getMethod().str() + " payloads" + where);
        int64_t count = 0;
        for (Operation *user : g->getUsers())
          if (auto d = dyn_cast<DecompressOp>(user))
            count = countOf(d.getGrad());
        call(fn("allgather"),
             {op(compressor(g.getMethod())), op(pointer(g.getPayload())),
              num(count), num(bytesOf(g.getPayload())),
              op(pointer(g.getGathered()))});
        payloadBytes += bytesOf(g.getPayload());
        ++collectiveOps;
        // GPU payloads travel padded to their capacity (fixed size).
        fcc_compressor parsed;
        char err[256];
        if (!cuda &&
            fcc_compressor_parse(g.getMethod().str().c_str(), &parsed, err,
                                 sizeof err) == 0 &&
            !fcc_compress_fixed_size(&parsed))
          payloadFixed = false;
        return success();
      })
      .Case<ConcatFlatOp>([&](ConcatFlatOp c) {
        comment("flatten " + std::to_string(c.getInputs().size()) +
                " gradients" + where);
        std::string out = pointer(c.getOutput());
        std::vector<std::array<std::string, 3>> copies; // dst, src, n
        int64_t offset = 0;
        for (Value v : c.getInputs()) {
          copies.push_back({"(" + out + " + " + std::to_string(offset) + ")",
                            pointer(v), std::to_string(countOf(v))});
          offset += countOf(v);
        }
        emitCopies(copies);
        return success();
      })
      .Case<SplitFlatOp>([&](SplitFlatOp s) {
        comment("unflatten " + std::to_string(s.getOutputs().size()) +
                " gradients" + where);
        std::string in = pointer(s.getInput());
        std::vector<std::array<std::string, 3>> copies;
        int64_t offset = 0;
        for (Value v : s.getOutputs()) {
          copies.push_back({pointer(v),
                            "(" + in + " + " + std::to_string(offset) + ")",
                            std::to_string(countOf(v))});
          offset += countOf(v);
        }
        emitCopies(copies);
        return success();
      })
      .Default([](Operation *) { return failure(); });
}

LogicalResult Emitter::emitFunction(func::FuncOp f, StringRef bodyName) {
  current = f;
  auto arena = f->getAttrOfType<IntegerAttr>(kArenaBytesAttrName);
  if (!arena)
    return f.emitError("has no memory plan; run fcc-plan-memory first");
  arenaBytes = std::max(arenaBytes, arena.getInt());
  b.setInsertionPointToEnd(out->getBody());
  auto fn = b.create<emitc::FuncOp>(f.getLoc(), bodyName,
                                    b.getFunctionType({}, {}));
  fn.setSpecifiersAttr(b.getStrArrayAttr({"static"}));
  Block *entry = fn.addEntryBlock();
  b.setInsertionPointToStart(entry);
  // Constants first so their globals exist before use.
  int batched = 0;     // ops already emitted as part of a batch
  bool onSide = false; // between fcc_cuda_side_begin and _end
  lastRunningUpdate = nullptr;
  if (cuda && bodyName == "train_step_body")
    for (Operation &o : f.getBody().front())
      if (auto bn = dyn_cast<BatchNormOp>(o); bn && bn.getTraining())
        lastRunningUpdate = &o;
      else if (auto bn = dyn_cast<BnActOp>(o); bn && bn.getTraining())
        lastRunningUpdate = &o;
  for (Operation &o : f.getBody().front().without_terminator()) {
    if (batched > 0) {
      --batched;
      continue;
    }
    loc = o.getLoc();
    // fcc-overlap-weight-grads: queued on the side stream (GPU), one
    // begin/end around each run of side ops; the CPU runs everything in
    // program order.
    const bool side = cuda && o.hasAttr(FccDialect::kSideStreamAttrName);
    if (side != onSide)
      call(side ? "fcc_cuda_side_begin" : "fcc_cuda_side_end", {});
    onSide = side;
    // GPU train step: consecutive casts (the master weights to half at the
    // start of the step) in one launch, from a table that fill_sgd_items
    // fills (the pointers may be parameters, which it refreshes).
    if (cuda && bodyName == "train_step_body") {
      SmallVector<CastOp> batch = castBatch(&o);
      if (batch.size() > 1) {
        const size_t first = castTable.rows.size();
        int64_t most = 0;
        std::string names;
        for (CastOp c : batch) {
          castTable.rows.push_back("(fcc_cuda_cast_item){" +
                                   pointer(c.getInput()) + ", " +
                                   pointer(c.getOutput()) + ", " +
                                   std::to_string(countOf(c.getOutput())) +
                                   "}");
          most = std::max(most, countOf(c.getOutput()));
          if (auto nl = dyn_cast<NameLoc>(c.getLoc()))
            names += (names.empty() ? "" : ", ") + nl.getName().str();
        }
        Type et = cast<ShapedType>(batch[0].getOutput().getType())
                      .getElementType();
        comment(std::to_string(batch.size()) + " casts to " + typeName(et) +
                " in one launch" + (names.empty() ? "" : " (" + names + ")"));
        call("fcc_cuda_cast_multi",
             {op("CAST_ITEMS + " + std::to_string(first)),
              num(int64_t(batch.size())),
              op(dtypeOf(batch[0].getInput().getType())),
              op(dtypeOf(batch[0].getOutput().getType())), num(most)});
        batched = int(batch.size()) - 1;
        continue;
      }
    }
    if (failed(emitOp(&o)))
      return failure();
    roundHalfResults(&o);
  }
  if (onSide)
    call("fcc_cuda_side_end", {});
  lastRunningUpdate = nullptr;
  b.create<emitc::ReturnOp>(f.getLoc(), Value());
  return success();
}

/// Arena bytes [begin, end) of a value (of its view root), if it is in the
/// arena.
static std::optional<std::pair<int64_t, int64_t>> arenaRange(Value v) {
  Value root = viewRoot(v);
  if (classifyValue(root) != ValueKind::Arena)
    return std::nullopt;
  const int64_t at = arenaOffset(root);
  return std::pair{at, at + tensorBytes(root)};
}

SmallVector<CastOp> Emitter::castBatch(Operation *first) {
  SmallVector<CastOp> batch;
  auto head = dyn_cast<CastOp>(first);
  if (!head || head.getInput().getType() == head.getOutput().getType() ||
      first->hasAttr(FccDialect::kSideStreamAttrName))
    return batch;
  auto types = [](CastOp c) {
    return std::pair{cast<ShapedType>(c.getInput().getType()).getElementType(),
                     cast<ShapedType>(c.getOutput().getType()).getElementType()};
  };
  for (Operation *o = first; o; o = o->getNextNode()) {
    auto c = dyn_cast<CastOp>(o);
    if (!c || types(c) != types(head) ||
        o->hasAttr(FccDialect::kSideStreamAttrName))
      break;
    // In one launch every cast reads while others write: a result may not
    // lie over the input of an earlier cast of the batch (whose bytes the
    // plan may hand on once that cast has read them), nor be its input.
    auto out = arenaRange(c.getOutput());
    bool clash = false;
    for (CastOp earlier : batch) {
      if (earlier.getOutput() == c.getInput())
        clash = true;
      auto in = arenaRange(earlier.getInput());
      if (out && in && out->first < in->second && in->first < out->second)
        clash = true;
    }
    if (clash)
      break;
    batch.push_back(c);
  }
  return batch;
}

/// Whether a pooling window tiles an NCHW input: stride = window, no
/// padding or dilation, the input exactly covered.
static bool poolTiles(ArrayRef<int64_t> input, ArrayRef<int64_t> kernel,
                      ArrayRef<int64_t> strides, ArrayRef<int64_t> pads = {},
                      ArrayRef<int64_t> dilations = {}) {
  return kernel.size() == 2 && ArrayRef<int64_t>(strides) == kernel &&
         llvm::all_of(pads, [](int64_t p) { return p == 0; }) &&
         llvm::all_of(dilations, [](int64_t d) { return d == 1; }) &&
         input[2] % kernel[0] == 0 && input[3] % kernel[1] == 0;
}

LogicalResult Emitter::checkNhwc(func::FuncOp f) {
  auto rank4 = [](Value v) {
    auto t = dyn_cast<ShapedType>(v.getType());
    return t && t.hasRank() && t.getRank() == 4;
  };
  auto refuse = [&](Operation *o, const Twine &why) {
    o->emitError() << "--layout nhwc: '" << o->getName() << "' " << why
                   << "; compile with --layout nchw";
    return WalkResult::interrupt();
  };
  WalkResult r = f.walk([&](Operation *o) -> WalkResult {
    if (!llvm::any_of(o->getOperands(), rank4) &&
        !llvm::any_of(o->getResults(), rank4))
      return WalkResult::advance();
    // Kernels that take NHWC activations.
    auto conv = [&](auto c) {
      return c.getGroups() == 1 ? WalkResult::advance()
                                : refuse(o, "is a grouped convolution");
    };
    if (auto c = dyn_cast<Conv2DOp>(o))
      return conv(c);
    if (auto c = dyn_cast<Conv2DGradInputOp>(o))
      return conv(c);
    if (auto c = dyn_cast<Conv2DGradWeightOp>(o))
      return conv(c);
    auto bnPool = [&](Value in, std::optional<ArrayRef<int64_t>> k,
                      std::optional<ArrayRef<int64_t>> st) {
      return !k || poolTiles(shapeOf(in), *k, st ? *st : *k)
                 ? WalkResult::advance()
                 : refuse(o, "pools with windows that do not tile the input "
                             "(NHWC takes stride = window, input covered)");
    };
    if (auto bn = dyn_cast<BnActOp>(o))
      return bnPool(bn.getInput(), bn.getPoolKernel(), bn.getPoolStrides());
    if (auto bn = dyn_cast<BnActGradOp>(o))
      return bnPool(bn.getInput(), bn.getPoolKernel(), bn.getPoolStrides());
    auto maxPool = [&](auto p) {
      return !p.getCeilMode() &&
                     poolTiles(shapeOf(p.getInput()), p.getKernel(),
                               p.getStrides(), p.getPads(), p.getDilations())
                 ? WalkResult::advance()
                 : refuse(o, "pools with windows that do not tile the input "
                             "(NHWC takes stride = window, no padding, input "
                             "covered)");
    };
    if (auto p = dyn_cast<MaxPool2DOp>(o))
      return maxPool(p);
    if (auto p = dyn_cast<MaxPool2DGradOp>(o))
      return maxPool(p);
    if (isa<FlipOp>(o))
      return WalkResult::advance();
    // Sums over the stored (n, h, w, c) order; the kept axes must come out
    // in the result's order, i.e. not channels and pixels both (a bias
    // gradient keeps the channels alone).
    auto r = dyn_cast<ReduceSumOp>(o);
    if (r && shapeOf(r.getInput()).size() == 4) {
      SmallVector<int64_t> kept = keptShape(r);
      return kept[1] == 1 || kept[2] * kept[3] == 1
                 ? WalkResult::advance()
                 : refuse(o, "keeps channels and pixels of a map");
    }
    // Elementwise ops, and ops on parameters and their gradients (filters
    // stay KCRS): the layout does not matter.
    if (isa<ReluOp, CeluOp, ReluGradOp, CeluGradOp, CastOp, DropoutOp,
            DropoutMaskOp, FoldBnOp, SgdUpdateOp, EmaUpdateOp, GradsFiniteOp,
            CompressOp, DecompressOp, CompressResidualOp, AllReduceOp,
            AllGatherOp, ConcatFlatOp, SplitFlatOp, StreamJoinOp,
            func::ReturnOp>(o))
      return WalkResult::advance();
    if (isa<AddOp, MulOp>(o)) {
      for (Value v : o->getOperands())
        if (v.getType() != o->getResult(0).getType())
          return refuse(o, "broadcasts a 4-d operand");
      return WalkResult::advance();
    }
    // A view where both layouts store the same order (1x1 maps, one
    // channel); a transpose between a map and a flat tensor otherwise
    // (fcc-plan-memory gave the result a buffer of its own: reordersLayout).
    if (isa<FlattenOp, ReshapeOp>(o))
      return reordersLayout(o) != LayoutReorder::MapToMap
                 ? WalkResult::advance()
                 : refuse(o, "reshapes a feature map into another feature "
                             "map (not one transpose in NHWC)");
    return refuse(o, "has 4-d activations and no NHWC kernel (NHWC takes "
                     "convolutions, fused BatchNorm + activation, max pooling "
                     "whose windows tile the input, elementwise ops and "
                     "reshapes between maps and flat tensors)");
  });
  return failure(r.wasInterrupted());
}

FailureOr<GeneratedProgram> Emitter::run() {
  auto train = planned.lookupSymbol<func::FuncOp>("train_step");
  auto eval = planned.lookupSymbol<func::FuncOp>("eval_step");
  auto evalTta = planned.lookupSymbol<func::FuncOp>("eval_step_tta");
  auto ema = planned.lookupSymbol<func::FuncOp>("ema_update");
  if (!train || !eval || !evalTta || !ema)
    return planned.emitError("code generation needs @train_step, @eval_step, "
                             "@eval_step_tta and @ema_update "
                             "(run fcc-build-training)"),
           failure();
  if (failed(collectParams(train)))
    return failure();
  if (nhwc()) {
    if (!cuda)
      return planned.emitError("--layout nhwc: the CPU target takes NCHW "
                               "only"),
             failure();
    for (func::FuncOp f : {train, eval, evalTta, ema})
      if (failed(checkNhwc(f)))
        return failure();
  }
  collectives = train->hasAttr("fcc.collectives");
  for (unsigned i = 0; i < train.getNumArguments(); ++i)
    if (auto st = train.getArgAttrOfType<StringAttr>(i, FccDialect::kStateAttrName))
      if (st.getValue().starts_with("residual:"))
        commStateIndex(st.getValue(), train.getArgument(i));
  for (auto u : train.getOps<SgdUpdateOp>())
    gradNumel += countOf(u.getGrad());
  for (unsigned i = 0; i < train.getNumArguments(); ++i) {
    if (train.getArgAttr(i, FccDialect::kLabelsAttrName))
      batch = shapeOf(train.getArgument(i))[0];
    else if (!getParamAttr(train, i) &&
             train.getArgAttr(i, FccDialect::kInputAttrName))
      imageShape.assign(shapeOf(train.getArgument(i)).begin(),
                        shapeOf(train.getArgument(i)).end());
  }
  for (Operation &o : eval.getBody().front())
    if (auto x = dyn_cast<SoftmaxXentOp>(o))
      classes = shapeOf(x.getLogits())[1];

  // The plan's identity (checkpoints refuse other plans): a hash of the
  // planned program without its initial values.
  {
    std::string text;
    llvm::raw_string_ostream os(text);
    planned->print(os, OpPrintingFlags().elideLargeResourceString(0));
    planHash = fcc_fnv1a64(text.c_str());
  }
  out = ModuleOp::create(loc);
  b.setInsertionPointToStart(out->getBody());
  b.create<emitc::VerbatimOp>(
      loc, llvm::formatv("// Generated by fcc from {0} (target {1}, batch {2}). "
                         "Do not edit.\n// Each call below is one fcc op of "
                         "the training program; A is the planned arena.",
                         opts.modelName, opts.target, batch)
               .str());
  b.create<emitc::IncludeOp>(
      loc, cuda ? "fcc/runtime/cuda_codegen.h" : "fcc/runtime/cpu_codegen.h",
      false);
  b.create<emitc::IncludeOp>(loc, "fcc/runtime/init.h", false);
  b.create<emitc::VerbatimOp>(
      loc, std::string(cuda ? "static char *A; // arena (device, bytes)\n"
                            : "static float *A; // arena\n") +
               "static float *const *P; // parameters (and running statistics)\n"
               "static float *const *M; // momentum buffers\n"
               "static float *const *E; // EMA copies\n"
               "static const float *IMG; // batch, NCHW\n"
               "static const int32_t *LBL; // labels\n"
               "static const fcc_hyper *H;\n"
               "[[maybe_unused]] static float *const *R; // comm state (residuals)\n"
               "static float *METRICS;\n" +
               (cuda ? "// Device scalars: label smoothing, EMA decay, the "
                       "finite flag of loss scaling.\n"
                       "static float *DLS, *DDECAY;\n"
                       "[[maybe_unused]] static float *FINITE;\n"
                       "// Multi-tensor SGD and EMA (filled by the wrappers).\n"
                       "static fcc_cuda_sgd_item *SGD_ITEMS;\n"
                       "static float **EMA_DST;\n"
                       "static const float **EMA_SRC;\n"
                       "static int64_t *EMA_COUNTS;\n"
                       "// Tables of the finite checks, batched casts and "
                       "running-statistics updates\n// (filled by the "
                       "wrapper)." +
                       tableDeclarations()
                     : "static float LS, DECAY;"));
  // Anchor: globals (descriptors, shapes, constants) are inserted before it.
  anchor = b.create<emitc::VerbatimOp>(loc, "// -- step functions --");

  if (failed(emitFunction(train, "train_step_body")) ||
      failed(emitFunction(eval, "eval_step_body")) ||
      failed(emitFunction(evalTta, "eval_step_tta_body")) ||
      failed(emitFunction(ema, "ema_update_body")))
    return failure();

  if (cuda) {
    // Sizes of the multi-tensor update tables, known once every step
    // function has been emitted.
    int64_t sgdMax = 0, emaMax = 0;
    for (const SgdItem &it : sgdItems)
      sgdMax = std::max(sgdMax, it.count);
    for (const EmaItem &it : emaItems)
      emaMax = std::max(emaMax, it.count);
    b.setInsertionPoint(anchor);
    b.create<emitc::VerbatimOp>(
        loc, llvm::formatv("#define SGD_COUNT {0}\n#define SGD_MAX {1}\n"
                           "#define EMA_NUM {2}\n#define EMA_MAX {3}",
                           sgdItems.size(), sgdMax, emaItems.size(), emaMax)
                 .str());
  }
  b.setInsertionPointToEnd(out->getBody());
  b.create<emitc::VerbatimOp>(loc, abiWrappers());

  GeneratedProgram result;
  llvm::raw_string_ostream os(result.source);
  if (failed(emitc::translateToCpp(*out, os)))
    return failure();
  result.weights = std::move(weights);
  result.model = opts.onnxModel;
  result.arenaBytes = arenaBytes;
  result.planHash = planHash;
  return result;
}

/// setup(): the pooling descriptors are completed by the (host) CPU runtime
/// on both targets.
void Emitter::finalizePools(llvm::raw_ostream &os) {
  for (const auto &[desc, name] : pools)
    os << "  if (fcc_pool2d_desc_finalize(&" << name << ") != FCC_OK) {\n"
       << "    snprintf(last_error_text, sizeof last_error_text, \"" << name
       << ": %s\", fcc_cpu_last_error());\n    return 1;\n  }\n";
}

void Emitter::cpuEntryPoints(llvm::raw_ostream &os) {
  os << "static int setup(void) {\n"
     << "  A = fcc_arena_alloc(" << arenaBytes << ");\n"
     << "  if (!A) {\n    snprintf(last_error_text, sizeof last_error_text, "
        "\"cannot allocate the %lld-byte arena\", (long long)"
     << arenaBytes << ");\n    return 1;\n  }\n";
  for (const std::string &name : planNames)
    os << "  " << name << " = fcc_cpu_conv2d_create(&" << name << "_desc);\n"
       << "  if (!" << name << ") {\n    snprintf(last_error_text, sizeof "
          "last_error_text, \"" << name << ": %s\", fcc_cpu_last_error());\n"
          "    return 1;\n  }\n";
  finalizePools(os);
  // Compressors from their specs (checked at compile time), and the gather
  // buffers, whose size depends on the number of ranks.
  for (const auto &[spec, name] : compressors)
    os << "  if (fcc_compressor_parse(" << cString(spec) << ", &" << name
       << "[0], last_error_text, sizeof last_error_text) != 0)\n"
       << "    return 1;\n";
  for (const auto &[name, capacity] : gatherSetup)
    os << "  " << name << "[0] = fcc_comm_gather_buffer(" << capacity
       << ");\n";
  os << "  return 0;\n}\n\n"
        "static void teardown(void) {\n";
  for (const std::string &name : planNames)
    os << "  fcc_cpu_conv2d_destroy(" << name << ");\n  " << name
       << " = NULL;\n";
  os << "  free(A);\n  A = NULL;\n}\n\n";
  os << "static void train_step(float *const *params, float *const *momentum,\n"
        "                       const float *images, const int32_t *labels,\n"
        "                       const fcc_hyper *hyper, float *metrics,\n"
        "                       float *const *comm_state) {\n"
        "  P = params; M = momentum; IMG = images; LBL = labels; H = hyper;\n"
        "  METRICS = metrics; R = comm_state;\n  train_step_body();\n}\n\n"
        "static void eval_step(float *const *params, const float *images,\n"
        "                      const int32_t *labels, float label_smoothing,\n"
        "                      int tta, float *metrics) {\n"
        "  P = params; IMG = images; LBL = labels; LS = label_smoothing;\n"
        "  METRICS = metrics;\n"
        "  if (tta) eval_step_tta_body(); else eval_step_body();\n}\n\n"
        "static void ema_update(float *const *ema, float *const *params,\n"
        "                       float decay) {\n"
        "  E = ema; P = params; DECAY = decay;\n  ema_update_body();\n}\n\n";
}

void Emitter::cudaEntryPoints(llvm::raw_ostream &os) {
  auto fail = [&](const std::string &what) {
    return "    snprintf(last_error_text, sizeof last_error_text, \"" + what +
           ": %s\", fcc_cuda_last_error());\n    return 1;\n";
  };
  os << "static int setup(void) {\n"
     << "  A = (char *)fcc_cuda_malloc(" << arenaBytes << ");\n"
     << "  DLS = (float *)fcc_cuda_malloc(3 * sizeof(float));\n"
     << "  if (!A || !DLS) {\n" << fail("allocating the GPU arena") << "  }\n"
     << "  DDECAY = DLS + 1;\n  FINITE = DLS + 2;\n"
     << "  SGD_ITEMS = (fcc_cuda_sgd_item *)fcc_cuda_malloc("
     << std::max<size_t>(sgdItems.size(), 1) << " * sizeof(fcc_cuda_sgd_item));\n"
     << "  EMA_DST = (float **)fcc_cuda_malloc("
     << std::max<size_t>(emaItems.size(), 1) << " * sizeof(float *));\n"
     << "  EMA_SRC = (const float **)fcc_cuda_malloc("
     << std::max<size_t>(emaItems.size(), 1) << " * sizeof(float *));\n"
     << "  EMA_COUNTS = (int64_t *)fcc_cuda_malloc("
     << std::max<size_t>(emaItems.size(), 1) << " * sizeof(int64_t));\n"
     << "  if (!SGD_ITEMS || !EMA_DST || !EMA_SRC || !EMA_COUNTS) {\n"
     << fail("allocating the update tables") << "  }\n";
  for (DeviceTable *t : deviceTables())
    os << "  " << t->name << " = (" << pointerTo(*t) << ")fcc_cuda_malloc("
       << std::max<size_t>(t->rows.size(), 1) << " * sizeof(" << t->type
       << "));\n  if (!" << t->name << ") {\n"
       << fail(std::string("allocating the ") + t->what) << "  }\n";
  for (auto [k, name] : llvm::enumerate(planNames))
    os << "  " << name << " = fcc_cuda_conv2d_create(&" << name << "_desc, "
       << planTypes[k] << ");\n  if (!" << name << ") {\n"
       << fail(name) << "  }\n";
  finalizePools(os);
  if (collectives) {
    // The ranks' NCCL communicator, the compressors (checked at compile
    // time), the compression workspace and the gather buffers, whose size
    // depends on the number of ranks: all before the step is captured.
    os << "  if (fcc_comm_cuda_init(last_error_text, sizeof last_error_text) "
          "!= 0)\n    return 1;\n";
    for (const auto &[spec, name] : compressors)
      os << "  if (fcc_compressor_parse(" << cString(spec) << ", &" << name
         << "[0], last_error_text, sizeof last_error_text) != 0)\n"
         << "    return 1;\n";
    for (const auto &[spec, numel] : commReserve)
      os << "  if (fcc_comm_cuda_reserve(" << compressor(spec) << ", "
         << numel << ") != 0) {\n"
         << fail("the compression workspace") << "  }\n";
    for (const auto &[name, capacity] : gatherSetup)
      os << "  " << name << "[0] = fcc_comm_cuda_gather_buffer(" << capacity
         << ");\n  if (!" << name << "[0]) {\n"
         << fail("the all-gather buffer") << "  }\n";
  }
  os << "  return 0;\n}\n\n";
  // The first step runs directly, before any capture: cuDNN and cuBLAS set
  // up state on a handle's first call of a kind (and CUDA loads kernels
  // lazily at their first launch); done inside a capture, that is at best
  // captured work and at worst an error. Same kernels, same results.
  os << "static void *GRAPH; // the captured train step\n"
        "static float *const *GRAPH_P, *const *GRAPH_M;\n"
        "static const void *GRAPH_KEY[5];\n"
        "static int WARMED_UP; // the first step ran outside a capture\n\n"
        "static void teardown(void) {\n"
        "  fcc_cuda_synchronize();\n"
        "  if (GRAPH) fcc_cuda_graph_destroy(GRAPH);\n  GRAPH = NULL;\n"
        "  WARMED_UP = 0; // a later setup warms its fresh handles up again\n";
  if (collectives)
    os << "  fcc_comm_cuda_finalize();\n";
  for (const std::string &name : planNames)
    os << "  fcc_cuda_conv2d_destroy(" << name << ");\n  " << name
       << " = NULL;\n";
  os << "  fcc_cuda_free(A); fcc_cuda_free(DLS); fcc_cuda_free(SGD_ITEMS);\n"
        "  fcc_cuda_free(EMA_DST); fcc_cuda_free((void *)EMA_SRC);\n"
        "  fcc_cuda_free(EMA_COUNTS);\n";
  for (DeviceTable *t : deviceTables())
    os << "  fcc_cuda_free(" << t->name << ");\n";
  os << "  A = NULL;\n}\n\n";
  // The SGD table refers to the parameter, gradient and buffer pointers of
  // the current call; it is rebuilt (and the graph recaptured) when they
  // change.
  os << "static void fill_sgd_items(void) {\n";
  if (!sgdItems.empty()) {
    os << "  static fcc_cuda_sgd_item items[SGD_COUNT];\n";
    for (auto [k, it] : llvm::enumerate(sgdItems))
      os << "  items[" << k << "] = (fcc_cuda_sgd_item){" << it.param
         << ", " << it.grad << ", " << it.buf << ", " << it.count << ", "
         << fmtFloat(it.lrMult) << ", " << fmtFloat(it.wdMult) << "};\n";
    os << "  fcc_check(fcc_cuda_copy_to_device(SGD_ITEMS, items, "
          "sizeof items), \"SGD table\");\n";
  }
  for (DeviceTable *t : deviceTables()) {
    if (t->rows.empty())
      continue;
    os << "  static " << t->type << (std::string(t->type).back() == '*' ? "" : " ")
       << t->local << "[" << t->rows.size() << "];\n";
    for (auto [k, row] : llvm::enumerate(t->rows))
      os << "  " << t->local << "[" << k << "] = " << row << ";\n";
    os << "  fcc_check(fcc_cuda_copy_to_device(" << t->name << ", " << t->local
       << ", sizeof " << t->local << "), \"" << t->what << "\");\n";
  }
  os << "}\n\n";
  os << "static void train_step(float *const *params, float *const *momentum,\n"
        "                       const float *images, const int32_t *labels,\n"
        "                       const fcc_hyper *hyper, float *metrics,\n"
        "                       float *const *comm_state) {\n"
        "  P = params; M = momentum; IMG = images; LBL = labels; H = hyper;\n"
        "  METRICS = metrics; R = comm_state;\n"
        "  const void *key[5] = {images, labels, hyper, metrics, "
        "comm_state};\n";
  // What one step hands to the collectives is known here (GPU payloads have
  // a fixed size); the runtime counts it per step, captured or not.
  std::string account =
      collectives ? "fcc_comm_cuda_account(" + std::to_string(payloadBytes) +
                        ", " + std::to_string(collectiveOps) + ");\n"
                  : "";
  os << "  if (!fcc_cuda_graphs_enabled() || !WARMED_UP) {\n"
        "    WARMED_UP = 1;\n"
        "    fill_sgd_items();\n    train_step_body();\n"
     << (account.empty() ? "" : "    " + account) << "    return;\n  }\n"
        "  if (!GRAPH || params != GRAPH_P || momentum != GRAPH_M ||\n"
        "      memcmp(key, GRAPH_KEY, sizeof key) != 0) {\n"
        "    if (GRAPH) fcc_cuda_graph_destroy(GRAPH);\n"
        "    fill_sgd_items();\n"
        "    fcc_check(fcc_cuda_graph_begin(), \"capturing the train step\");\n"
        "    train_step_body();\n"
        "    fcc_check(fcc_cuda_graph_end(&GRAPH), \"capturing the train step\");\n"
        "    GRAPH_P = params; GRAPH_M = momentum;\n"
        "    memcpy(GRAPH_KEY, key, sizeof key);\n  }\n"
        "  fcc_check(fcc_cuda_graph_launch(GRAPH), \"the train step\");\n"
     << (account.empty() ? "" : "  " + account) << "}\n\n"
        "static void eval_step(float *const *params, const float *images,\n"
        "                      const int32_t *labels, float label_smoothing,\n"
        "                      int tta, float *metrics) {\n"
        "  P = params; IMG = images; LBL = labels; METRICS = metrics;\n"
        "  fcc_check(fcc_cuda_copy_to_device(DLS, &label_smoothing, "
        "sizeof(float)), \"label smoothing\");\n"
        "  if (tta) eval_step_tta_body(); else eval_step_body();\n}\n\n"
        "static void ema_update(float *const *ema, float *const *params,\n"
        "                       float decay) {\n"
        "  E = ema; P = params;\n";
  if (!emaItems.empty()) {
    os << "  float *dst[EMA_NUM]; const float *src[EMA_NUM];\n"
          "  int64_t counts[EMA_NUM];\n";
    for (auto [k, it] : llvm::enumerate(emaItems))
      os << "  dst[" << k << "] = " << it.ema << "; src[" << k
         << "] = " << it.value << "; counts[" << k << "] = " << it.count
         << ";\n";
    os << "  fcc_check(fcc_cuda_copy_to_device(EMA_DST, dst, sizeof dst), "
          "\"EMA table\");\n"
          "  fcc_check(fcc_cuda_copy_to_device((void *)EMA_SRC, src, "
          "sizeof src), \"EMA table\");\n"
          "  fcc_check(fcc_cuda_copy_to_device(EMA_COUNTS, counts, "
          "sizeof counts), \"EMA table\");\n";
  }
  os << "  fcc_check(fcc_cuda_copy_to_device(DDECAY, &decay, sizeof(float)), "
        "\"EMA decay\");\n  ema_update_body();\n}\n\n";
}

std::string Emitter::abiWrappers() {
  std::string s;
  llvm::raw_string_ostream os(s);
  if (!weights.empty())
    os << "// Initial weights, embedded from " << opts.weightsFile << ".\n"
       << "__asm__(\".section .rodata\\n.balign 64\\n"
          ".global fcc_initial_weights\\nfcc_initial_weights:\\n.incbin \\\""
       << opts.weightsFile << "\\\"\\n.previous\\n\");\n"
       << "extern \"C\" const char fcc_initial_weights[];\n";
  if (!opts.onnxModel.empty())
    os << "// The source ONNX model, for --export-onnx.\n"
       << "__asm__(\".section .rodata\\n.balign 64\\n"
          ".global fcc_source_model\\nfcc_source_model:\\n.incbin "
          "\\\"model.onnx\\\"\\n.previous\\n\");\n"
       << "extern \"C\" const char fcc_source_model[];\n";
  os << "static const fcc_param_info kParams[" << params.size() << "] = {\n";
  for (const ParamEntry &p : params) {
    os << "  {" << cString(p.name) << ", " << int(p.role) << ", "
       << int(p.trainable) << ", " << p.shape.size() << ", {";
    for (size_t k = 0; k < 4; ++k)
      os << (k ? ", " : "") << (k < p.shape.size() ? p.shape[k] : 0);
    os << "}, " << numElements(p.shape) << ", " << p.fanIn << ", ";
    if (p.blobOffset >= 0)
      os << "(const float *)(fcc_initial_weights + " << p.blobOffset << ")";
    else
      os << "NULL";
    os << ", " << fmtFloat(p.lrMult) << ", " << fmtFloat(p.wdMult) << "},\n";
  }
  os << "};\n\n";
  if (!commState.empty()) {
    os << "static const fcc_state_info kCommState[" << commState.size()
       << "] = {\n";
    for (const auto &[name, numel] : commState)
      os << "  {" << cString(name) << ", " << numel << "},\n";
    os << "};\n\n";
  }
  os << "static char last_error_text[256];\n"
        "static const char *last_error(void) { return last_error_text; }\n\n";
  if (cuda)
    cudaEntryPoints(os);
  else
    cpuEntryPoints(os);
  const Recipe &r = opts.recipe;
  os << "extern \"C\" const fcc_program *fcc_generated_program(void) {\n"
     << "  static const fcc_program program = {\n"
     << "    FCC_PROGRAM_ABI_VERSION, " << cString(opts.modelName) << ", "
     << cString(opts.target) << ", 0x" << llvm::utohexstr(planHash)
     << "ULL,\n"
     << "    " << batch << ", " << imageShape[1] << ", " << imageShape[2]
     << ", " << imageShape[3] << ", " << classes << ",\n"
     << "    " << params.size() << ", kParams, " << arenaBytes << ",\n"
     << "    {" << cString(r.name) << ", " << r.epochs << ", "
     << cString(r.lrKnots) << ", " << fmtFloat(r.momentum) << ", "
     << int(r.nesterov) << ", " << fmtFloat(r.weightDecay) << ", "
     << fmtFloat(r.labelSmoothing) << ", " << fmtFloat(r.emaDecay) << ", "
     << r.emaEvery << ", " << int(r.tta) << ", " << r.cutout << ", "
     << int(r.flip) << ", " << r.cropPad << "},\n"
     << "    setup, teardown, last_error, train_step, eval_step, ema_update,\n"
     << "    " << cString(opts.precision) << ", " << int(lossScaling) << ",\n"
     << "    " << (opts.onnxModel.empty() ? "NULL" : "fcc_source_model") << ", "
     << opts.onnxModel.size() << ",\n"
     << "    " << int(collectives) << ", " << cString(opts.compression) << ", "
     << cString(opts.compressionScope) << ", " << commState.size() << ", "
     << (commState.empty() ? "NULL" : "kCommState") << ", " << gradNumel
     << ", " << payloadBytes << ", " << int(payloadFixed) << ",\n"
     << "    " << layoutConst() << "};\n"
     << "  return &program;\n}";
  return s;
}

} // namespace

FailureOr<GeneratedProgram>
fcc::generateTrainerSource(ModuleOp planned, const CodegenOptions &options) {
  planned.getContext()->loadDialect<emitc::EmitCDialect>();
  return Emitter(planned, options).run();
}
