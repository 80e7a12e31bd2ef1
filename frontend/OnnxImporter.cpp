//===- OnnxImporter.cpp - ONNX model -> fcc dialect -----------------------===//
//
// One pass over the (topologically sorted) ONNX nodes. Every ONNX tensor name
// maps to either a runtime SSA value or a compile-time HostTensor; nodes whose
// inputs are all known at compile time are folded, the others become fcc ops.
// Parameters become function arguments on first use.
//
//===----------------------------------------------------------------------===//
#include "frontend/OnnxImporter.h"

#include "ir/FccDialect.h"
#include "ir/ShapeInference.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "mlir/IR/Verifier.h"

#include <onnx/checker.h>
#include <onnx/defs/parser.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <sstream>

using namespace mlir;
using namespace fcc;

namespace {

[[noreturn]] void fail(const std::string &msg) { throw ImportError(msg); }

/// ONNX's own messages span several lines; fcc reports one line per error.
std::string oneLine(const std::string &text) {
  std::string out;
  bool space = false;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space)
      out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::string joinInts(llvm::ArrayRef<int64_t> v) {
  std::string s = "[";
  for (size_t k = 0; k < v.size(); ++k)
    s += (k ? ", " : "") + std::to_string(v[k]);
  return s + "]";
}

/// The most elements fcc accepts in one tensor (as HostTensor::fromProto
/// does): products of dimensions then never overflow int64.
constexpr int64_t kMaxElements = int64_t(1) << 40;
/// The largest window attribute value (kernel, stride, dilation, pad):
/// window arithmetic on dimensions up to kMaxElements stays in int64.
constexpr int64_t kMaxWindowValue = std::numeric_limits<int32_t>::max();

/// The element count of `shape` in floating point (no overflow); negative
/// dimensions count as 0.
double elementCount(llvm::ArrayRef<int64_t> shape) {
  double n = 1;
  for (int64_t d : shape)
    n *= double(std::max<int64_t>(d, 0));
  return n;
}

/// The largest |value| of an integer tensor, in floating point.
double maxMagnitude(const HostTensor &t) {
  double m = 0;
  for (int64_t v : t.i)
    m = std::max(m, std::abs(double(v)));
  return m;
}

/// A double as "9e+18" (shortest form, for messages).
std::string formatDouble(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

/// Fails unless a runtime tensor of this shape is one fcc can handle: static,
/// non-negative dimensions that multiply to at most kMaxElements (zeros
/// counted as ones, so that no partial product overflows either).
void checkTensorShape(llvm::ArrayRef<int64_t> shape, const std::string &what) {
  double product = 1;
  for (int64_t d : shape) {
    if (d < 0)
      fail(what + " has a negative dimension (shape " + joinInts(shape) + ")");
    product *= double(std::max<int64_t>(d, 1));
  }
  if (product > double(kMaxElements))
    fail(what + " is implausibly large (shape " + joinInts(shape) +
         ", more than 2^40 elements)");
}

// Attribute accessors with ONNX defaults.
const onnx::AttributeProto *findAttr(const onnx::NodeProto &n,
                                     llvm::StringRef name) {
  for (const auto &a : n.attribute())
    if (a.name() == name)
      return &a;
  return nullptr;
}
int64_t attrInt(const onnx::NodeProto &n, llvm::StringRef name, int64_t def) {
  auto *a = findAttr(n, name);
  return a ? a->i() : def;
}
float attrFloat(const onnx::NodeProto &n, llvm::StringRef name, float def) {
  auto *a = findAttr(n, name);
  return a ? a->f() : def;
}
std::string attrString(const onnx::NodeProto &n, llvm::StringRef name,
                       const std::string &def) {
  auto *a = findAttr(n, name);
  return a ? a->s() : def;
}
std::vector<int64_t> attrInts(const onnx::NodeProto &n, llvm::StringRef name,
                              std::vector<int64_t> def = {}) {
  auto *a = findAttr(n, name);
  if (!a)
    return def;
  return {a->ints().begin(), a->ints().end()};
}

// Which parameter role an input position of a node has, if any.
std::optional<ParamRole> paramSlotRole(const onnx::NodeProto &n, int index) {
  const std::string &op = n.op_type();
  if (op == "Conv")
    return index == 1 ? std::optional(ParamRole::weight)
           : index == 2 ? std::optional(ParamRole::bias) : std::nullopt;
  if (op == "Gemm")
    return index == 1 ? std::optional(ParamRole::weight)
           : index == 2 ? std::optional(ParamRole::bias) : std::nullopt;
  if (op == "MatMul")
    return index == 1 ? std::optional(ParamRole::weight) : std::nullopt;
  if (op == "BatchNormalization") {
    switch (index) {
    case 1: return ParamRole::bn_scale;
    case 2: return ParamRole::bn_shift;
    case 3: return ParamRole::running_mean;
    case 4: return ParamRole::running_var;
    default: return std::nullopt;
    }
  }
  return std::nullopt;
}

bool isRunningStat(ParamRole r) {
  return r == ParamRole::running_mean || r == ParamRole::running_var;
}

// Ops folded when all inputs are known at compile time (HostTensor.cpp).
const std::set<std::string> &foldableOps() {
  static const std::set<std::string> ops = {
      "Shape",  "Size",    "Gather", "Unsqueeze",
      "Squeeze",  "Concat", "Cast",    "Slice",  "Reshape",
      "Flatten",  "Add",    "Sub",     "Mul",    "Div",
      "Neg",      "ConstantOfShape",   "Range", "Transpose"};
  return ops;
}

class Importer {
public:
  Importer(MLIRContext &ctx, const ImportOptions &opts)
      : ctx(ctx), opts(opts), b(&ctx) {}

  OwningOpRef<ModuleOp> run(onnx::ModelProto model);

private:
  // A name in the ONNX graph: a runtime value, or a compile-time tensor.
  struct Entry {
    Value value;
    std::optional<HostTensor> constant;
    /// The value derives from a Constant node or a bound input (not only
    /// from initializers): as a parameter it is frozen.
    bool frozen = false;
  };

  // --- set-up --------------------------------------------------------------
  void checkOpsets(const onnx::ModelProto &model);
  void prepareInputs(onnx::ModelProto &model);
  void inferShapes(onnx::ModelProto &model);

  // --- values ---------------------------------------------------------------
  bool has(const std::string &name) const { return env.count(name); }
  bool isKnown(const std::string &name);
  const HostTensor &known(const std::string &name);
  Value runtime(const std::string &name);
  Value param(const std::string &name, ParamRole role);
  Value materialize(const HostTensor &t);
  void define(const std::string &name, Value v);
  RankedTensorType f32(llvm::ArrayRef<int64_t> shape) {
    checkTensorShape(shape, "a tensor");
    return RankedTensorType::get(shape, b.getF32Type());
  }
  static llvm::ArrayRef<int64_t> shapeOf(Value v) {
    return cast<RankedTensorType>(v.getType()).getShape();
  }

  // --- nodes ---------------------------------------------------------------
  void importNode(const onnx::NodeProto &n);
  bool tryFold(const onnx::NodeProto &n);
  void chargeFold(const onnx::NodeProto &n,
                  const std::vector<const HostTensor *> &ins);
  void importConv(const onnx::NodeProto &n);
  void importPool(const onnx::NodeProto &n, bool isMax, bool global);
  void importBatchNorm(const onnx::NodeProto &n);
  void importBinary(const onnx::NodeProto &n);
  void importGemm(const onnx::NodeProto &n);
  void importMatMul(const onnx::NodeProto &n);
  void importReshapeLike(const onnx::NodeProto &n);
  void importDropout(const onnx::NodeProto &n);
  void importSoftmax(const onnx::NodeProto &n);
  void importConstant(const onnx::NodeProto &n);

  // Helpers.
  Value reshape(Value v, llvm::ArrayRef<int64_t> shape);
  void checkNoExtraOutputs(const onnx::NodeProto &n, int used,
                           const std::string &what);
  void checkAgainstOnnx(const std::string &name, Value v);
  std::string input(const onnx::NodeProto &n, int k) const {
    return k < n.input_size() ? n.input(k) : std::string();
  }

  MLIRContext &ctx;
  const ImportOptions &opts;
  OpBuilder b;
  Location loc = UnknownLoc::get(&ctx);
  func::FuncOp func;
  int64_t opset = 0;

  std::map<std::string, Entry> env;
  std::map<std::string, const onnx::TensorProto *> initializers;
  std::map<std::string, HostTensor> decodedInitializers;
  std::set<std::string> paramSlotNames; // names used in a parameter slot
  std::map<std::string, ParamRole> slotRoles; // their role at first use
  std::map<std::string, std::vector<int64_t>> onnxShapes; // static only
  std::map<std::string, std::vector<int64_t>> graphInputShapes;
  std::vector<DictionaryAttr> argAttrs;
  std::map<std::string, std::string> aliases; // Identity outputs -> inputs
  std::string diagnostics; // verifier messages of the op being built
  int64_t foldedElements = 0; // values produced by compile-time folding

  /// Follows Identity nodes back to the name they forward.
  const std::string &resolve(const std::string &name) const {
    auto it = aliases.find(name);
    return it == aliases.end() ? name : it->second;
  }
  /// Verifies a freshly built op; its verifier's message becomes the error.
  template <typename OpT, typename... Args> OpT create(Args &&...args) {
    return checked(b.create<OpT>(loc, std::forward<Args>(args)...));
  }
  template <typename OpT> OpT checked(OpT op) {
    diagnostics.clear();
    if (failed(mlir::verify(op.getOperation())))
      fail(diagnostics);
    return op;
  }
};

//===----------------------------------------------------------------------===//
// Set-up: opsets, input shapes, checker, shape inference
//===----------------------------------------------------------------------===//

void Importer::checkOpsets(const onnx::ModelProto &model) {
  for (const auto &o : model.opset_import()) {
    if (o.domain().empty() || o.domain() == "ai.onnx")
      opset = o.version();
  }
  if (opset == 0)
    fail("the model imports no version of the default ONNX opset");
  if (opset < kMinOpset || opset > kMaxOpset)
    fail("opset " + std::to_string(opset) + " is not supported (fcc imports "
         "opsets " + std::to_string(kMinOpset) + " to " +
         std::to_string(kMaxOpset) + ")");
}

void Importer::prepareInputs(onnx::ModelProto &model) {
  auto *graph = model.mutable_graph();
  for (const auto &t : graph->initializer())
    initializers[t.name()] = &t;
  for (const auto &n : graph->node())
    if (n.op_type() == "Identity" && n.input_size() == 1 && n.output_size() == 1)
      aliases[n.output(0)] = std::string(resolve(n.input(0)));
  // Parameter slots, including the addend of a MatMul result (its bias).
  std::map<std::string, std::string> producerOp;
  for (const auto &n : graph->node())
    for (const auto &out : n.output())
      producerOp[out] = n.op_type();
  for (const auto &n : graph->node()) {
    for (int k = 0; k < n.input_size(); ++k)
      if (!n.input(k).empty())
        if (auto role = paramSlotRole(n, k))
          slotRoles.emplace(resolve(n.input(k)), *role);
    if (n.op_type() == "Add" && n.input_size() == 2)
      for (int k = 0; k < 2; ++k)
        if (producerOp[resolve(n.input(1 - k))] == "MatMul")
          slotRoles.emplace(resolve(n.input(k)), ParamRole::bias);
  }
  for (const auto &[name, role] : slotRoles)
    paramSlotNames.insert(name);

  for (auto &in : *graph->mutable_input()) {
    if (initializers.count(in.name()))
      continue;
    if (!in.type().has_tensor_type())
      fail("input '" + in.name() + "' is not a tensor");
    auto *tt = in.mutable_type()->mutable_tensor_type();
    if (!tt->has_shape())
      fail("input '" + in.name() + "' has no shape; fcc needs static shapes");
    auto *shape = tt->mutable_shape();
    auto given = opts.inputShapes.find(in.name());
    if (given != opts.inputShapes.end()) {
      if (int64_t(given->second.size()) != shape->dim_size())
        fail("the shape given for input '" + in.name() + "' " +
             joinInts(given->second) + " has rank " +
             std::to_string(given->second.size()) + " but the model says " +
             std::to_string(shape->dim_size()));
      for (int k = 0; k < shape->dim_size(); ++k) {
        auto *d = shape->mutable_dim(k);
        if (d->has_dim_value() && d->dim_value() != given->second[k])
          fail("the shape given for input '" + in.name() + "' " +
               joinInts(given->second) + " conflicts with the model's static "
               "dimension " + std::to_string(k) + " = " +
               std::to_string(d->dim_value()));
        d->set_dim_value(given->second[k]);
      }
    }
    bool isParam = paramSlotNames.count(in.name());
    std::vector<int64_t> dims;
    for (int k = 0; k < shape->dim_size(); ++k) {
      auto *d = shape->mutable_dim(k);
      if (!d->has_dim_value()) {
        std::string sym = d->has_dim_param() ? "'" + d->dim_param() + "'"
                                             : "unknown";
        if (k == 0 && !isParam && opts.batchSize) {
          d->set_dim_value(*opts.batchSize);
        } else if (k == 0 && !isParam) {
          fail("input '" + in.name() + "' has a symbolic batch dimension (" +
               sym + "); give a batch size");
        } else {
          fail((isParam ? "parameter '" : "input '") + in.name() +
               "' has a symbolic dimension " + std::to_string(k) + " (" + sym +
               "); fcc needs static shapes");
        }
      }
      if (d->dim_value() < 0)
        fail("input '" + in.name() + "' has a negative dimension");
      dims.push_back(d->dim_value());
    }
    checkTensorShape(dims, "input '" + in.name() + "'");
    graphInputShapes[in.name()] = dims;
  }
}

/// Window attributes that ONNX's own shape inference divides by: libonnx
/// 1.12 crashes (SIGFPE) on a zero stride or dilation instead of reporting
/// it, so they are checked before it runs. Found by the importer's mutation
/// test (tests/unit/frontend/MutationTest.cpp).
static void checkWindowAttributes(const onnx::GraphProto &graph, int opset) {
  static const std::set<std::string> windowed = {
      "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"};
  int index = 0;
  for (const auto &n : graph.node()) {
    std::string nodeName =
        n.name().empty() ? n.op_type() + "_" + std::to_string(index) : n.name();
    ++index;
    if ((!n.domain().empty() && n.domain() != "ai.onnx") ||
        !windowed.count(n.op_type()))
      continue;
    for (const auto &a : n.attribute()) {
      bool positive = a.name() == "strides" || a.name() == "dilations" ||
                      a.name() == "kernel_shape";
      bool nonNegative = a.name() == "pads";
      if (a.name() == "group" && a.i() < 1)
        fail("node '" + nodeName + "' (" + n.op_type() + ", opset " +
             std::to_string(opset) + "): attribute group = " +
             std::to_string(a.i()) + " must be at least 1");
      if (!positive && !nonNegative)
        continue;
      for (int64_t v : a.ints()) {
        if (positive ? v < 1 : v < 0)
          fail("node '" + nodeName + "' (" + n.op_type() + ", opset " +
               std::to_string(opset) + "): attribute " + a.name() +
               " has value " + std::to_string(v) + "; it must be " +
               (positive ? "positive" : "non-negative"));
        // Huge values overflow int64 window arithmetic, in libonnx's shape
        // inference and in fcc's (found by tests/fuzz/).
        if (v > kMaxWindowValue)
          fail("node '" + nodeName + "' (" + n.op_type() + ", opset " +
               std::to_string(opset) + "): attribute " + a.name() +
               " has value " + std::to_string(v) + "; fcc accepts at most " +
               std::to_string(kMaxWindowValue));
      }
    }
  }
}

/// Ops fcc cannot import are rejected before libonnx's checker and shape
/// inference see them: fcc would reject them anyway, and libonnx 1.12's
/// inference functions for ops fcc never uses need not be trusted with
/// hostile input. Same messages as importNode.
static void checkSupportedOps(const onnx::GraphProto &graph, int opset) {
  int index = 0;
  for (const auto &n : graph.node()) {
    std::string where =
        "node '" +
        (n.name().empty() ? n.op_type() + "_" + std::to_string(index)
                          : n.name()) +
        "' (" + n.op_type() + ", opset " + std::to_string(opset) + "): ";
    ++index;
    if (!n.domain().empty() && n.domain() != "ai.onnx")
      fail(where + "ops of domain '" + n.domain() + "' are not supported");
    if (!std::binary_search(supportedOnnxOps().begin(),
                            supportedOnnxOps().end(), n.op_type())) {
      std::string list;
      for (const auto &s : supportedOnnxOps())
        list += (list.empty() ? "" : ", ") + s;
      fail(where + "unsupported op (fcc supports: " + list + ")");
    }
  }
}

/// The largest Slice step fcc accepts: libonnx 1.12's Slice data propagation
/// steps an `int` index by the int64 step, and HostTensor's Slice adds the
/// step to dimensions.
constexpr int64_t kMaxSliceStep = int64_t(1) << 30;

/// The schema registry given to libonnx's shape inference: ONNX's own, with
/// checks in front of two of its inference functions that crash on hostile
/// input (found by tests/fuzz/):
///  - Conv: libonnx 1.12 takes the kernel's rank from the weight and the
///    window's from the input, and reads past the end of its arrays when the
///    weight has more dimensions. The ranks must be equal.
///  - Slice: its data propagation truncates `index + step` to int and reads
///    the dimension at the wrapped index. |step| must be at most 2^30.
class GuardedSchemaRegistry : public onnx::ISchemaRegistry {
public:
  const onnx::OpSchema *GetSchema(const std::string &key, const int maxVersion,
                                  const std::string &domain) const override {
    const onnx::OpSchema *schema =
        onnx::OpSchemaRegistry::Schema(key, maxVersion, domain);
    if (!schema || (key != "Conv" && key != "Slice"))
      return schema;
    auto &guarded = guardedSchemas[schema];
    if (guarded)
      return guarded.get();
    guarded = std::make_unique<onnx::OpSchema>(*schema);
    if (key == "Conv")
      guarded->TypeAndShapeInferenceFunction(
          [inner = schema->GetTypeAndShapeInferenceFunction()](
              onnx::InferenceContext &ctx) {
            if (ctx.getNumInputs() >= 2 && onnx::hasInputShape(ctx, 0) &&
                onnx::hasInputShape(ctx, 1)) {
              int inputRank = onnx::getInputShape(ctx, 0).dim_size();
              int weightRank = onnx::getInputShape(ctx, 1).dim_size();
              if (inputRank != weightRank)
                fail_shape_inference("the weight has rank ", weightRank,
                                     " but the input has rank ", inputRank,
                                     "; they must be equal");
            }
            inner(ctx);
          });
    else
      guarded->PartialDataPropagationFunction(
          [inner = schema->GetDataPropagationFunction()](
              onnx::DataPropagationContext &ctx) {
            if (ctx.getNumInputs() >= 5)
              if (const auto *steps = ctx.getInputData(4))
                for (const auto &d : steps->dim())
                  if (d.has_dim_value() && (d.dim_value() > kMaxSliceStep ||
                                            d.dim_value() < -kMaxSliceStep))
                    fail_shape_inference("step ", d.dim_value(),
                                         " is out of range (fcc accepts "
                                         "|step| <= 2^30)");
            inner(ctx);
          });
    return guarded.get();
  }

private:
  mutable std::map<const onnx::OpSchema *, std::unique_ptr<onnx::OpSchema>>
      guardedSchemas;
};

void Importer::inferShapes(onnx::ModelProto &model) {
  checkSupportedOps(model.graph(), opset);
  checkWindowAttributes(model.graph(), opset);
  // libonnx 1.12's checker accepts IR versions up to 8. Newer exporters write
  // IR 9/10 for models that use nothing newer than opset 17: check those as 8.
  onnx::ModelProto checked = model;
  if (checked.ir_version() > 8)
    checked.set_ir_version(8);
  try {
    onnx::checker::check_model(checked);
  } catch (const std::exception &e) {
    fail("the ONNX checker rejects the model: " + oneLine(e.what()));
  }
  try {
    onnx::ShapeInferenceOptions options(/*check_type=*/true, /*error_mode=*/1,
                                        /*enable_data_propagation=*/true);
    GuardedSchemaRegistry registry;
    onnx::shape_inference::InferShapes(checked, &registry, options);
  } catch (const std::exception &e) {
    fail("ONNX shape inference fails: " + oneLine(e.what()));
  }
  auto record = [&](const onnx::ValueInfoProto &vi) {
    if (!vi.type().has_tensor_type() || !vi.type().tensor_type().has_shape())
      return;
    std::vector<int64_t> dims;
    for (const auto &d : vi.type().tensor_type().shape().dim()) {
      if (!d.has_dim_value())
        return;
      dims.push_back(d.dim_value());
    }
    onnxShapes[vi.name()] = dims;
  };
  for (const auto &vi : checked.graph().value_info())
    record(vi);
  for (const auto &vi : checked.graph().output())
    record(vi);
}

//===----------------------------------------------------------------------===//
// Values
//===----------------------------------------------------------------------===//

bool Importer::isKnown(const std::string &alias) {
  const std::string &name = resolve(alias);
  auto it = env.find(name);
  if (it != env.end())
    return it->second.constant.has_value();
  // Initializers used only outside parameter slots (e.g. Reshape shapes) are
  // compile-time constants.
  return initializers.count(name) && !paramSlotNames.count(name);
}

const HostTensor &Importer::known(const std::string &alias) {
  const std::string &name = resolve(alias);
  auto it = env.find(name);
  if (it != env.end() && it->second.constant)
    return *it->second.constant;
  auto init = initializers.find(name);
  if (init == initializers.end())
    fail("'" + name + "' is not known at compile time");
  auto dec = decodedInitializers.find(name);
  if (dec == decodedInitializers.end())
    dec = decodedInitializers.emplace(name, HostTensor::fromProto(*init->second))
              .first;
  return dec->second;
}

void Importer::define(const std::string &name, Value v) {
  if (name.empty())
    return;
  checkAgainstOnnx(name, v);
  env[name] = Entry{v, std::nullopt, false};
}

void Importer::checkAgainstOnnx(const std::string &name, Value v) {
  auto it = onnxShapes.find(name);
  if (it == onnxShapes.end())
    return;
  if (llvm::ArrayRef<int64_t>(it->second) != shapeOf(v))
    fail("fcc computes the shape " + formatShape(shapeOf(v)) + " for '" + name +
         "' but ONNX shape inference gives " + formatShape(it->second));
}

Value Importer::materialize(const HostTensor &t) {
  if (!t.isFloat())
    fail("a " + onnxTypeName(t.dtype) +
         " constant is used as a float tensor; fcc computes in float32");
  auto type = f32(t.shape);
  auto values = t.toFloat32();
  auto attr = DenseElementsAttr::get(type, llvm::ArrayRef<float>(values));
  return b.create<arith::ConstantOp>(loc, attr);
}

// Creates (once) the function argument for a parameter.
Value Importer::param(const std::string &alias, ParamRole role) {
  const std::string &name = resolve(alias);
  auto it = env.find(name);
  if (it != env.end() && it->second.value)
    return it->second.value;

  std::vector<int64_t> shape;
  std::optional<HostTensor> init;
  bool trainable = !isRunningStat(role);
  if (it != env.end() && it->second.constant) {
    // A folded value in a parameter slot: frozen if it comes from a Constant
    // node, trainable if it only rearranges initializers (e.g. a Transpose).
    init = *it->second.constant;
    shape = init->shape;
    trainable = trainable && !it->second.frozen;
  } else if (initializers.count(name)) {
    const HostTensor &t = known(name);
    shape = t.shape;
    if (opts.keepInitialValues)
      init = t;
  } else if (graphInputShapes.count(name)) {
    shape = graphInputShapes[name];
  } else {
    fail("'" + name + "' is used before it is defined");
  }
  if (init && !init->isFloat())
    fail("parameter '" + name + "' has element type " +
         onnxTypeName(init->dtype) + "; fcc parameters are float32");

  Block &entry = func.getBody().front();
  Value arg = entry.addArgument(f32(shape), NameLoc::get(b.getStringAttr(name)));
  llvm::SmallVector<NamedAttribute> attrs;
  attrs.push_back(b.getNamedAttr(
      FccDialect::kParamAttrName,
      ParamAttr::get(&ctx, name, role, trainable)));
  if (init) {
    auto values = init->toFloat32();
    auto blob = HeapAsmResourceBlob::allocateAndCopyInferAlign(
        llvm::ArrayRef<float>(values));
    auto attr = DenseResourceElementsAttr::get(f32(shape), name, std::move(blob));
    attrs.push_back(b.getNamedAttr(FccDialect::kInitAttrName, attr));
  }
  argAttrs.push_back(b.getDictionaryAttr(attrs));
  // A parameter that is also folded somewhere keeps its constant view.
  env[name].value = arg;
  return arg;
}

// The runtime value of `name`: a defined SSA value, a parameter, or a
// compile-time constant materialised as arith.constant.
Value Importer::runtime(const std::string &alias) {
  const std::string &name = resolve(alias);
  auto it = env.find(name);
  if (it != env.end() && it->second.value)
    return it->second.value;
  if (it != env.end() && it->second.constant && !paramSlotNames.count(name)) {
    Value v = materialize(*it->second.constant);
    it->second.value = v;
    return v;
  }
  if (initializers.count(name) || graphInputShapes.count(name)) {
    auto role = slotRoles.find(name);
    return param(name, role == slotRoles.end() ? ParamRole::other
                                               : role->second);
  }
  if (it != env.end() && it->second.constant) {
    Value v = materialize(*it->second.constant);
    it->second.value = v;
    return v;
  }
  fail("'" + name + "' is used before it is defined");
}

Value Importer::reshape(Value v, llvm::ArrayRef<int64_t> shape) {
  if (shapeOf(v) == shape)
    return v;
  if (numElements(shapeOf(v)) != numElements(shape))
    fail("cannot reshape " + formatShape(shapeOf(v)) + " to " +
         formatShape(shape));
  return create<ReshapeOp>(f32(shape), v);
}

void Importer::checkNoExtraOutputs(const onnx::NodeProto &n, int used,
                                   const std::string &what) {
  for (int k = used; k < n.output_size(); ++k)
    if (!n.output(k).empty())
      fail("output " + std::to_string(k) + " (" + what + ") is not supported");
}

//===----------------------------------------------------------------------===//
// Nodes
//===----------------------------------------------------------------------===//

bool Importer::tryFold(const onnx::NodeProto &n) {
  const std::string &op = n.op_type();
  if (!foldableOps().count(op))
    return false;
  std::vector<const HostTensor *> ins;
  std::optional<HostTensor> shapeOfRuntime;
  bool frozen = false;
  for (int k = 0; k < n.input_size(); ++k) {
    const std::string &name = n.input(k);
    if (name.empty()) {
      ins.push_back(nullptr);
      continue;
    }
    if (isKnown(name)) {
      ins.push_back(&known(name));
      auto it = env.find(resolve(name));
      frozen |= it != env.end() && it->second.frozen;
      continue;
    }
    // Shape/Size only need the static shape of a runtime value.
    if ((op == "Shape" || op == "Size") && k == 0) {
      Value v = runtime(name);
      shapeOfRuntime = HostTensor::floats({}, std::vector<int64_t>(shapeOf(v)));
      ins.push_back(&*shapeOfRuntime);
      continue;
    }
    return false;
  }
  if (op == "Size" && shapeOfRuntime) {
    env[n.output(0)].constant = HostTensor::ints({shapeOfRuntime->numel()}, {});
    return true;
  }
  chargeFold(n, ins);
  std::vector<HostTensor> outs;
  if (!foldConstantNode(n, opset, ins, outs))
    return false;
  for (const HostTensor &t : outs) // e.g. an empty Gather of huge dimensions
    checkTensorShape(t.shape, "the folded result");
  for (size_t k = 0; k < outs.size() && int(k) < n.output_size(); ++k) {
    Entry e;
    e.constant = std::move(outs[k]);
    e.frozen = frozen;
    env[n.output(k)] = std::move(e);
  }
  return true;
}

/// Reshape's target shape, checked before HostTensor's fold multiplies it out
/// (int64 overflow on hostile values, found by tests/fuzz/).
static void checkReshapeTarget(const onnx::NodeProto &n,
                               const std::vector<const HostTensor *> &ins) {
  if (n.op_type() != "Reshape" || ins.size() < 2 || !ins[0] || !ins[1])
    return;
  const HostTensor &shape = *ins[1];
  if (shape.isFloat())
    fail("the shape input has element type " + onnxTypeName(shape.dtype) +
         "; it must be int64");
  std::vector<int64_t> target = shape.toInts();
  double count = 1;
  for (size_t k = 0; k < target.size(); ++k) {
    int64_t d = target[k];
    if (d < -1)
      fail("the target shape " + joinInts(target) + " has the dimension " +
           std::to_string(d));
    if (d == 0 && k < ins[0]->shape.size() && !attrInt(n, "allowzero", 0))
      d = ins[0]->shape[k];
    count *= double(std::max<int64_t>(d, 1)); // no partial product overflows
  }
  if (count > double(kMaxElements))
    fail("the target shape " + joinInts(target) +
         " is implausibly large (more than 2^40 elements)");
}

/// Compile-time folding allocates its results: bound what one model may make
/// it produce (a Range over 2^60 values, a ConstantOfShape of a huge shape,
/// broadcasts, a chain of copies of a large initializer), and reject inputs
/// HostTensor's folds would read out of bounds or overflow on. Found by
/// tests/fuzz/.
void Importer::chargeFold(const onnx::NodeProto &n,
                          const std::vector<const HostTensor *> &ins) {
  const std::string &op = n.op_type();
  auto in = [&](size_t k) { return k < ins.size() ? ins[k] : nullptr; };
  auto count = [&](size_t k) { return in(k) ? elementCount(in(k)->shape) : 0.0; };
  double size = count(0); // ops that move values: their input's size
  if (op == "Shape" || op == "Size") {
    size = 0; // a few integers
  } else if (op == "Neg" && in(0) && !in(0)->isFloat()) {
    if (maxMagnitude(*in(0)) >= 0x1p62)
      fail("int64 negation of " + formatDouble(maxMagnitude(*in(0))) +
           " would overflow");
  } else if (op == "Reshape") {
    checkReshapeTarget(n, ins);
  } else if (op == "Concat") {
    size = 0;
    for (size_t k = 0; k < ins.size(); ++k)
      size += count(k);
  } else if (op == "Gather" && in(0) && in(1)) {
    const HostTensor &data = *in(0);
    int64_t rank = data.rank(), axis = attrInt(n, "axis", 0);
    if (axis < 0)
      axis += rank;
    size = 0; // an invalid axis or an empty dimension: the fold rejects it
    if (axis >= 0 && axis < rank && data.shape[axis] > 0)
      size = count(0) / double(data.shape[axis]) * count(1);
  } else if ((op == "Add" || op == "Sub" || op == "Mul" || op == "Div") &&
             in(0) && in(1)) {
    // Integer folds compute in int64: keep them clear of overflow.
    if (!in(0)->isFloat() && !in(1)->isFloat()) {
      double a = maxMagnitude(*in(0)), c = maxMagnitude(*in(1));
      if ((op == "Mul" ? a * c : std::max(a, c)) >= 0x1p62)
        fail("int64 arithmetic on constants up to " + formatDouble(a) +
             " and " + formatDouble(c) + " would overflow");
    }
    const auto &a = in(0)->shape, &c = in(1)->shape;
    size = 1;
    for (size_t k = 0; k < std::max(a.size(), c.size()); ++k) {
      int64_t da = k < a.size() ? a[a.size() - 1 - k] : 1;
      int64_t dc = k < c.size() ? c[c.size() - 1 - k] : 1;
      size *= double(std::max<int64_t>({da, dc, 0}));
    }
  } else if (op == "ConstantOfShape" && in(0)) {
    const HostTensor &shape = *in(0);
    if (shape.isFloat())
      fail("the shape input has element type " + onnxTypeName(shape.dtype) +
           "; it must be int64");
    checkTensorShape(shape.toInts(), "the result");
    size = elementCount(shape.toInts());
    if (auto *value = findAttr(n, "value"))
      if (elementCount(std::vector<int64_t>(value->t().dims().begin(),
                                            value->t().dims().end())) != 1)
        fail("the value attribute must hold exactly one element");
  } else if (op == "Slice" && opset >= 10 && in(4)) {
    for (int64_t step : in(4)->toInts())
      if (step > kMaxSliceStep || step < -kMaxSliceStep)
        fail("step " + std::to_string(step) +
             " is out of range (fcc accepts |step| <= 2^30)");
  } else if (op == "Cast" && in(0) && in(0)->isFloat()) {
    // Float to integer conversion is undefined outside the int64 range.
    int64_t to = attrInt(n, "to", onnx::TensorProto::FLOAT);
    HostTensor probe;
    probe.dtype = int32_t(to);
    if (!probe.isFloat() && to != onnx::TensorProto::BOOL)
      for (double v : in(0)->f)
        if (!(v >= -0x1p63 && v < 0x1p63))
          fail("the value " + formatDouble(v) + " does not fit in " +
               onnxTypeName(int32_t(to)));
  } else if (op == "Range" && in(0) && in(1) && in(2)) {
    for (size_t k = 0; k < 3; ++k)
      if (in(k)->numel() != 1)
        fail("start, limit and delta must be scalars");
    double start = in(0)->asDouble(0), limit = in(1)->asDouble(0),
           delta = in(2)->asDouble(0);
    size = 0;
    if (delta != 0) { // delta 0: the fold rejects it
      double steps = std::ceil((limit - start) / delta);
      if (!std::isfinite(steps))
        fail("the number of elements is not finite (start " +
             formatDouble(start) + ", limit " + formatDouble(limit) +
             ", delta " + formatDouble(delta) + ")");
      size = std::max(0.0, steps);
      if (!in(0)->isFloat() &&
          std::abs(start) + size * std::abs(delta) >= 0x1p62)
        fail("int64 values up to " +
             formatDouble(std::abs(start) + size * std::abs(delta)) +
             " would overflow");
    }
  }
  double left = double(opts.maxFoldedElements) - double(foldedElements);
  if (size > left) {
    fail("folding it at compile time would produce " + formatDouble(size) +
         " values; fcc folds at most " + std::to_string(opts.maxFoldedElements) +
         " per model (shape computations and constants)");
  }
  foldedElements += int64_t(size);
}

void Importer::importConstant(const onnx::NodeProto &n) {
  if (n.attribute_size() != 1)
    fail("expects exactly one value attribute");
  const auto &a = n.attribute(0);
  HostTensor t;
  if (a.name() == "value") {
    t = HostTensor::fromProto(a.t());
  } else if (a.name() == "value_float") {
    t = HostTensor::floats({a.f()}, {});
  } else if (a.name() == "value_floats") {
    std::vector<double> v(a.floats().begin(), a.floats().end());
    int64_t size = v.size();
    t = HostTensor::floats(std::move(v), {size});
  } else if (a.name() == "value_int") {
    t = HostTensor::ints({a.i()}, {});
  } else if (a.name() == "value_ints") {
    std::vector<int64_t> v(a.ints().begin(), a.ints().end());
    int64_t size = v.size();
    t = HostTensor::ints(std::move(v), {size});
  } else {
    fail("unsupported attribute '" + a.name() + "' (fcc reads value, "
         "value_float(s) and value_int(s))");
  }
  Entry e;
  e.constant = std::move(t);
  e.frozen = true;
  env[n.output(0)] = std::move(e);
}

// Pads for auto_pad SAME_UPPER/SAME_LOWER/VALID along one dimension.
void autoPad(const std::string &mode, int64_t in, int64_t kernel,
             int64_t stride, int64_t dilation, int64_t &begin, int64_t &end) {
  if (mode == "VALID") {
    begin = end = 0;
    return;
  }
  int64_t out = (in + stride - 1) / stride;
  int64_t total = std::max<int64_t>(
      0, (out - 1) * stride + (kernel - 1) * dilation + 1 - in);
  begin = mode == "SAME_LOWER" ? (total + 1) / 2 : total / 2;
  end = total - begin;
}

// Spatial attributes of Conv and pooling nodes for a 1-D or 2-D window.
struct Window {
  std::vector<int64_t> kernel, strides, pads, dilations; // 2-D (pads: t,l,b,r)
};

Window readWindow(const onnx::NodeProto &n, llvm::ArrayRef<int64_t> inShape,
                  std::vector<int64_t> kernel, bool hasDilations) {
  size_t sp = inShape.size() - 2; // 1 or 2 spatial dims
  if (kernel.size() != sp)
    fail("kernel_shape " + joinInts(kernel) + " does not match the " +
         std::to_string(sp) + "-D input");
  auto strides = attrInts(n, "strides", std::vector<int64_t>(sp, 1));
  auto dil = hasDilations ? attrInts(n, "dilations", std::vector<int64_t>(sp, 1))
                          : std::vector<int64_t>(sp, 1);
  auto pads = attrInts(n, "pads", std::vector<int64_t>(2 * sp, 0));
  if (strides.size() != sp || dil.size() != sp || pads.size() != 2 * sp)
    fail("strides/dilations/pads do not match the " + std::to_string(sp) +
         "-D input");
  std::string mode = attrString(n, "auto_pad", "NOTSET");
  if (mode != "NOTSET") {
    if (mode != "SAME_UPPER" && mode != "SAME_LOWER" && mode != "VALID")
      fail("unsupported attribute value auto_pad = " + mode);
    for (size_t k = 0; k < sp; ++k)
      autoPad(mode, inShape[2 + k], kernel[k], strides[k], dil[k], pads[k],
              pads[k + sp]);
  }
  Window w;
  if (sp == 1) { // lift 1-D windows to 2-D with a unit height
    w.kernel = {1, kernel[0]};
    w.strides = {1, strides[0]};
    w.dilations = {1, dil[0]};
    w.pads = {0, pads[0], 0, pads[1]};
  } else {
    w.kernel = kernel;
    w.strides = strides;
    w.dilations = dil;
    w.pads = pads;
  }
  return w;
}

// Lifts [N, C, L] to [N, C, 1, L]; 4-D values pass through.
std::vector<int64_t> liftTo2D(llvm::ArrayRef<int64_t> s) {
  if (s.size() == 3)
    return {s[0], s[1], 1, s[2]};
  return std::vector<int64_t>(s.begin(), s.end());
}

void Importer::importConv(const onnx::NodeProto &n) {
  Value x = runtime(n.input(0));
  auto xs = shapeOf(x);
  if (xs.size() != 3 && xs.size() != 4)
    fail("only 1-D and 2-D convolutions are supported (input " +
         formatShape(xs) + ")");
  Value w = param(n.input(1), ParamRole::weight);
  Value bias;
  if (!input(n, 2).empty())
    bias = param(n.input(2), ParamRole::bias);
  auto ws = shapeOf(w);
  if (ws.size() != xs.size())
    fail("weight " + formatShape(ws) + " does not match the input " +
         formatShape(xs));
  auto kernel = attrInts(n, "kernel_shape",
                         std::vector<int64_t>(ws.begin() + 2, ws.end()));
  if (llvm::ArrayRef<int64_t>(kernel) != ws.drop_front(2))
    fail("kernel_shape " + joinInts(kernel) + " disagrees with the weight " +
         formatShape(ws));
  Window win = readWindow(n, xs, kernel, /*hasDilations=*/true);
  int64_t groups = attrInt(n, "group", 1);

  Value x2 = reshape(x, liftTo2D(xs));
  Value w2 = reshape(w, liftTo2D(ws));
  std::string error;
  std::optional<llvm::ArrayRef<int64_t>> biasShape;
  if (bias)
    biasShape = shapeOf(bias);
  auto out = inferConv2DShape(shapeOf(x2), shapeOf(w2), biasShape, win.strides,
                              win.pads, win.dilations, groups, error);
  if (failed(out))
    fail(error);
  Value y = create<Conv2DOp>(f32(*out), x2, w2, bias,
                               b.getDenseI64ArrayAttr(win.strides),
                               b.getDenseI64ArrayAttr(win.pads),
                               b.getDenseI64ArrayAttr(win.dilations),
                               b.getI64IntegerAttr(groups));
  if (xs.size() == 3)
    y = reshape(y, {(*out)[0], (*out)[1], (*out)[3]});
  define(n.output(0), y);
}

void Importer::importPool(const onnx::NodeProto &n, bool isMax, bool global) {
  Value x = runtime(n.input(0));
  auto xs = shapeOf(x);
  if (xs.size() != 3 && xs.size() != 4)
    fail("only 1-D and 2-D pooling is supported (input " + formatShape(xs) +
         ")");
  if (isMax)
    checkNoExtraOutputs(n, 1, "Indices");
  Window win;
  bool ceil = false, includePad = false;
  if (global) {
    std::vector<int64_t> kernel(xs.begin() + 2, xs.end());
    onnx::NodeProto plain;
    win = readWindow(plain, xs, kernel, false);
  } else {
    if (attrInt(n, "storage_order", 0) != 0)
      fail("unsupported attribute value storage_order = 1");
    auto kernel = attrInts(n, "kernel_shape");
    if (kernel.empty())
      fail("missing attribute kernel_shape");
    win = readWindow(n, xs, kernel, /*hasDilations=*/isMax);
    if (!isMax && findAttr(n, "dilations")) {
      auto d = attrInts(n, "dilations");
      if (llvm::any_of(d, [](int64_t v) { return v != 1; }))
        fail("unsupported attribute value dilations = " + joinInts(d));
    }
    ceil = attrInt(n, "ceil_mode", 0) != 0;
    includePad = attrInt(n, "count_include_pad", 0) != 0;
  }
  Value x2 = reshape(x, liftTo2D(xs));
  std::string error;
  auto out = inferPool2DShape(shapeOf(x2), win.kernel, win.strides, win.pads,
                              win.dilations, ceil, error);
  if (failed(out))
    fail(error);
  Value y;
  if (isMax)
    y = create<MaxPool2DOp>(f32(*out), x2,
                              b.getDenseI64ArrayAttr(win.kernel),
                              b.getDenseI64ArrayAttr(win.strides),
                              b.getDenseI64ArrayAttr(win.pads),
                              b.getDenseI64ArrayAttr(win.dilations),
                              b.getBoolAttr(ceil));
  else
    y = create<AvgPool2DOp>(f32(*out), x2,
                              b.getDenseI64ArrayAttr(win.kernel),
                              b.getDenseI64ArrayAttr(win.strides),
                              b.getDenseI64ArrayAttr(win.pads),
                              b.getBoolAttr(ceil), b.getBoolAttr(includePad));
  if (xs.size() == 3)
    y = reshape(y, {(*out)[0], (*out)[1], (*out)[3]});
  define(n.output(0), y);
}

void Importer::importBatchNorm(const onnx::NodeProto &n) {
  Value x = runtime(n.input(0));
  if (n.input_size() != 5)
    fail("expects 5 inputs (X, scale, B, input_mean, input_var)");
  Value scale = param(n.input(1), ParamRole::bn_scale);
  Value shift = param(n.input(2), ParamRole::bn_shift);
  Value mean = param(n.input(3), ParamRole::running_mean);
  Value var = param(n.input(4), ParamRole::running_var);
  float eps = attrFloat(n, "epsilon", 1e-5f);
  float onnxMomentum = attrFloat(n, "momentum", 0.9f);
  // ONNX keeps `momentum` of the old statistics, PyTorch of the new batch.
  // The attribute is a float (0.9f), so round 1 - m to 7 decimals: 0.1, not
  // 0.100000024.
  float pytorchMomentum =
      float(std::round((1.0 - double(onnxMomentum)) * 1e7) / 1e7);
  bool training = opset >= 14 && attrInt(n, "training_mode", 0) != 0;
  if (opset < 14 && findAttr(n, "spatial") && attrInt(n, "spatial", 1) != 1)
    fail("unsupported attribute value spatial = 0");
  if (opset < 7 && attrInt(n, "is_test", 0) == 0)
    fail("unsupported attribute value is_test = 0 (training-mode "
         "BatchNormalization before opset 7)");
  checkNoExtraOutputs(n, training ? 3 : 1,
                      training ? "" : "training statistics");
  auto xs = shapeOf(x);
  llvm::SmallVector<Type> types = {f32(xs)};
  if (training) {
    if (xs.size() < 2)
      fail("input must have rank >= 2");
    // New running mean/variance, then the batch mean/variance.
    types.append(4, f32({xs[1]}));
  }
  auto op = b.create<BatchNormOp>(
      loc, types, ValueRange{x, scale, shift, mean, var},
      llvm::ArrayRef<NamedAttribute>{
          b.getNamedAttr("epsilon", b.getF32FloatAttr(eps)),
          b.getNamedAttr("momentum", b.getF32FloatAttr(pytorchMomentum)),
          b.getNamedAttr("training", b.getBoolAttr(training)),
          // ONNX folds the biased batch variance into the running variance.
          b.getNamedAttr("running_var_unbiased", b.getBoolAttr(!training))});
  checked(op);
  define(n.output(0), op.getOutput());
  if (training) {
    if (n.output_size() > 1)
      define(n.output(1), op.getNewRunningMean());
    if (n.output_size() > 2)
      define(n.output(2), op.getNewRunningVar());
  }
}

void Importer::importBinary(const onnx::NodeProto &n) {
  const std::string &op = n.op_type();
  const std::string &a = n.input(0), &c = n.input(1);
  // Before opset 7, broadcasting was opt-in (`broadcast`) and aligned the
  // second operand at `axis` of the first instead of at the end.
  if (opset < 7 && attrInt(n, "broadcast", 0) && findAttr(n, "axis")) {
    Value x = runtime(a);
    std::vector<int64_t> bs(shapeOf(runtime(c)));
    int64_t rank = shapeOf(x).size();
    int64_t axis = normalizeAxis(attrInt(n, "axis", 0), rank, "axis");
    if (axis + int64_t(bs.size()) > rank)
      fail("the second operand does not fit at axis " + std::to_string(axis));
    std::vector<int64_t> aligned(rank, 1);
    std::copy(bs.begin(), bs.end(), aligned.begin() + axis);
    std::string alignedName = c + "/aligned";
    env[alignedName] = Entry{reshape(runtime(c), aligned)};
    onnx::NodeProto modern = n;
    modern.clear_attribute();
    modern.set_input(1, alignedName);
    int64_t saved = opset;
    opset = 7;
    importBinary(modern);
    opset = saved;
    return;
  }
  bool aKnown = isKnown(a), cKnown = isKnown(c);
  std::string error;

  // x * s, x / s with a single-element constant s: fcc.mul {scalar}.
  if ((op == "Mul" || op == "Div") && cKnown && !aKnown &&
      known(c).numel() == 1) {
    Value x = runtime(a);
    auto ys = inferBroadcastShape(shapeOf(x), known(c).shape, error);
    if (succeeded(ys) && llvm::ArrayRef<int64_t>(*ys) == shapeOf(x)) {
      double s = known(c).asDouble(0);
      if (op == "Div") {
        if (s == 0.0)
          fail("division by the constant 0");
        s = 1.0 / s;
      }
      define(n.output(0), create<MulOp>(x.getType(), x, Value(),
                                          b.getF64FloatAttr(s)));
      return;
    }
  }
  if (op == "Mul" && aKnown && !cKnown && known(a).numel() == 1) {
    Value x = runtime(c);
    auto ys = inferBroadcastShape(shapeOf(x), known(a).shape, error);
    if (succeeded(ys) && llvm::ArrayRef<int64_t>(*ys) == shapeOf(x)) {
      define(n.output(0), create<MulOp>(x.getType(), x, Value(),
                                          b.getF64FloatAttr(known(a).asDouble(0))));
      return;
    }
  }
  if (op == "Div") {
    if (!cKnown)
      fail("division by a runtime tensor is not supported (only by constants)");
    // x / C == x * (1/C) elementwise.
    HostTensor inv = known(c);
    for (double &v : inv.f) {
      if (v == 0.0)
        fail("division by a constant that contains 0");
      v = 1.0 / v;
    }
    if (!inv.isFloat())
      fail("division of a float tensor by an integer constant");
    Value x = runtime(a), r = materialize(inv);
    auto ys = inferBroadcastShape(shapeOf(x), shapeOf(r), error);
    if (failed(ys))
      fail(error);
    define(n.output(0), create<MulOp>(f32(*ys), x, r, FloatAttr()));
    return;
  }
  Value x = runtime(a), y = runtime(c);
  if (op == "Sub") // a - c == a + (-1) * c, exact in floating point.
    y = create<MulOp>(y.getType(), y, Value(), b.getF64FloatAttr(-1.0));
  auto ys = inferBroadcastShape(shapeOf(x), shapeOf(y), error);
  if (failed(ys))
    fail(error);
  Value r;
  if (op == "Mul")
    r = create<MulOp>(f32(*ys), x, y, FloatAttr());
  else
    r = create<AddOp>(f32(*ys), x, y);
  define(n.output(0), r);
}

void Importer::importGemm(const onnx::NodeProto &n) {
  Value a = runtime(n.input(0));
  Value w = param(n.input(1), ParamRole::weight);
  Value c;
  if (!input(n, 2).empty())
    c = param(n.input(2), ParamRole::bias);
  bool transA = attrInt(n, "transA", 0), transB = attrInt(n, "transB", 0);
  float alpha = attrFloat(n, "alpha", 1.0f), beta = attrFloat(n, "beta", 1.0f);
  std::string error;
  std::optional<llvm::ArrayRef<int64_t>> cs;
  if (c)
    cs = shapeOf(c);
  auto out = inferLinearShape(shapeOf(a), shapeOf(w), cs, transA, transB, error);
  if (failed(out))
    fail(error);
  define(n.output(0),
         create<LinearOp>(f32(*out), a, w, c, b.getBoolAttr(transA),
                            b.getBoolAttr(transB), b.getF32FloatAttr(alpha),
                            b.getF32FloatAttr(beta)));
}

void Importer::importMatMul(const onnx::NodeProto &n) {
  Value a = runtime(n.input(0));
  Value w = param(n.input(1), ParamRole::weight);
  auto as = shapeOf(a), ws = shapeOf(w);
  if (as.size() < 2 || ws.size() != 2)
    fail("only MatMul of a rank >= 2 tensor by a matrix is supported (got " +
         formatShape(as) + " x " + formatShape(ws) + ")");
  // [..., M, K] x [K, N]: fold the leading dimensions into M (not as
  // numElements / K: K may be 0, found by tests/fuzz/).
  int64_t k = as.back();
  Value a2 = reshape(a, {numElements(as.drop_back()), k});
  std::string error;
  auto out = inferLinearShape(shapeOf(a2), ws, std::nullopt, false, false, error);
  if (failed(out))
    fail(error);
  Value y = create<LinearOp>(f32(*out), a2, w, Value(),
                               b.getBoolAttr(false), b.getBoolAttr(false),
                               b.getF32FloatAttr(1.0f), b.getF32FloatAttr(1.0f));
  std::vector<int64_t> ys(as.begin(), as.end());
  ys.back() = ws[1];
  define(n.output(0), reshape(y, ys));
}

void Importer::importReshapeLike(const onnx::NodeProto &n) {
  const std::string &op = n.op_type();
  Value x = runtime(n.input(0));
  auto xs = shapeOf(x);
  std::vector<int64_t> target;
  if (op == "Flatten") {
    int64_t axis = attrInt(n, "axis", 1);
    std::string error;
    auto out = inferFlattenShape(xs, axis, error);
    if (failed(out))
      fail(error);
    if (axis < 0)
      axis += xs.size();
    define(n.output(0), create<FlattenOp>(f32(*out), x,
                                            b.getI64IntegerAttr(axis)));
    return;
  }
  // Reshape/Unsqueeze/Squeeze of a runtime value: fold the shape computation
  // on a stand-in for x that has x's shape, then reshape. These folds only
  // move values, so the stand-in holds none (it used to hold numElements(xs)
  // zeros: gigabytes for a large declared shape, found by tests/fuzz/).
  HostTensor standIn = HostTensor::floats({}, std::vector<int64_t>(xs));
  std::vector<const HostTensor *> ins = {&standIn};
  for (int k = 1; k < n.input_size(); ++k) {
    if (n.input(k).empty()) {
      ins.push_back(nullptr);
      continue;
    }
    if (!isKnown(n.input(k)))
      fail("input " + std::to_string(k) + " ('" + n.input(k) +
           "') must be known at compile time; fcc needs static shapes");
    ins.push_back(&known(n.input(k)));
  }
  checkReshapeTarget(n, ins);
  std::vector<HostTensor> outs;
  foldConstantNode(n, opset, ins, outs);
  define(n.output(0), reshape(x, outs.at(0).shape));
}

void Importer::importDropout(const onnx::NodeProto &n) {
  Value x = runtime(n.input(0));
  checkNoExtraOutputs(n, 1, "mask");
  float ratio = 0.5f;
  bool training = false;
  if (opset < 12) {
    ratio = attrFloat(n, "ratio", 0.5f);
    training = opset < 7 && attrInt(n, "is_test", 0) == 0;
  } else {
    if (!input(n, 1).empty()) {
      if (!isKnown(n.input(1)))
        fail("the ratio input must be a constant");
      ratio = float(known(n.input(1)).asDouble(0));
    }
    if (!input(n, 2).empty()) {
      if (!isKnown(n.input(2)))
        fail("the training_mode input must be a constant");
      training = known(n.input(2)).asInt(0) != 0;
    }
  }
  if (!(ratio >= 0.0f && ratio < 1.0f))
    fail("ratio must be in [0, 1), got " + std::to_string(ratio));
  define(n.output(0),
         create<DropoutOp>(x.getType(), x, b.getF32FloatAttr(ratio),
                             b.getBoolAttr(training)));
}

void Importer::importSoftmax(const onnx::NodeProto &n) {
  Value x = runtime(n.input(0));
  auto xs = shapeOf(x);
  int64_t rank = xs.size();
  int64_t axis = normalizeAxis(attrInt(n, "axis", opset >= 13 ? -1 : 1), rank,
                               "axis");
  if (opset >= 13 || axis == rank - 1) {
    define(n.output(0), create<SoftmaxOp>(x.getType(), x,
                                            b.getI64IntegerAttr(axis)));
    return;
  }
  // Before opset 13 Softmax normalises over all dimensions from `axis` on.
  std::vector<int64_t> shape2 = {numElements(xs.take_front(axis)),
                                 numElements(xs.drop_front(axis))};
  Value x2 = reshape(x, shape2);
  Value y = create<SoftmaxOp>(x2.getType(), x2, b.getI64IntegerAttr(1));
  define(n.output(0), reshape(y, xs));
}

void Importer::importNode(const onnx::NodeProto &n) {
  const std::string &op = n.op_type();
  if (!n.domain().empty() && n.domain() != "ai.onnx")
    fail("ops of domain '" + n.domain() + "' are not supported");
  if (op == "Constant") {
    importConstant(n);
    return;
  }
  if (tryFold(n))
    return;
  if (op == "Identity")
    return; // forwarded by `aliases`
  if (op == "Neg") {
    Value x = runtime(n.input(0));
    define(n.output(0), create<MulOp>(x.getType(), x, Value(),
                                      b.getF64FloatAttr(-1.0)));
    return;
  }
  for (int k = 0; k < n.input_size(); ++k) {
    const std::string &name = resolve(n.input(k));
    if (!name.empty() && !has(name) && !initializers.count(name) &&
        !graphInputShapes.count(name))
      fail("input '" + name + "' is not defined by any earlier node, "
           "initializer or graph input");
  }
  if (op == "Conv")
    importConv(n);
  else if (op == "MaxPool" || op == "AveragePool")
    importPool(n, op == "MaxPool", false);
  else if (op == "GlobalMaxPool" || op == "GlobalAveragePool")
    importPool(n, op == "GlobalMaxPool", true);
  else if (op == "BatchNormalization")
    importBatchNorm(n);
  else if (op == "Relu")
    define(n.output(0), create<ReluOp>(runtime(n.input(0))));
  else if (op == "Celu")
    define(n.output(0),
           create<CeluOp>(runtime(n.input(0)),
                            b.getF32FloatAttr(attrFloat(n, "alpha", 1.0f))));
  else if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div")
    importBinary(n);
  else if (op == "Gemm")
    importGemm(n);
  else if (op == "MatMul")
    importMatMul(n);
  else if (op == "Flatten" || op == "Reshape" || op == "Unsqueeze" ||
           op == "Squeeze")
    importReshapeLike(n);
  else if (op == "Dropout")
    importDropout(n);
  else if (op == "Softmax")
    importSoftmax(n);
  else if (op == "Cast" && attrInt(n, "to", 0) == onnx::TensorProto::FLOAT)
    define(n.output(0), runtime(n.input(0)));
  else if (std::binary_search(supportedOnnxOps().begin(),
                              supportedOnnxOps().end(), op))
    fail("is supported only on compile-time constants (shape computations); "
         "here it computes on a runtime tensor");
  else {
    std::string list;
    for (const auto &s : supportedOnnxOps())
      list += (list.empty() ? "" : ", ") + s;
    fail("unsupported op (fcc supports: " + list + ")");
  }
}

OwningOpRef<ModuleOp> Importer::run(onnx::ModelProto model) {
  checkOpsets(model);
  prepareInputs(model);
  inferShapes(model);

  // Owned from the start: a node that fails throws, and the partly built
  // module must not leak (found by tests/fuzz/, LeakSanitizer).
  OwningOpRef<ModuleOp> module = ModuleOp::create(loc);
  b.setInsertionPointToEnd(module->getBody());
  const auto &graph = model.graph();

  // Data inputs first (graph order), then parameters as they are used.
  llvm::SmallVector<Type> inputTypes;
  std::vector<std::string> dataInputs;
  for (const auto &in : graph.input()) {
    const std::string &name = in.name();
    if (initializers.count(name))
      continue;
    int32_t et = in.type().tensor_type().elem_type();
    if (opts.boundInputs.count(name)) {
      const HostTensor &bound = opts.boundInputs.at(name);
      if (bound.dtype != et)
        fail("the value bound to input '" + name + "' has element type " +
             onnxTypeName(bound.dtype) + " but the model declares " +
             onnxTypeName(et));
      Entry e;
      e.constant = bound;
      e.frozen = true;
      env[name] = std::move(e);
      continue;
    }
    if (paramSlotNames.count(name))
      continue;
    if (et != onnx::TensorProto::FLOAT)
      fail("input '" + name + "' has element type " + onnxTypeName(et) +
           "; fcc's data inputs are float32 (integer inputs such as shapes "
           "must be bound to constants)");
    dataInputs.push_back(name);
    inputTypes.push_back(f32(graphInputShapes[name]));
  }
  std::string fname = opts.functionName;
  func = b.create<func::FuncOp>(loc, fname, b.getFunctionType(inputTypes, {}));
  Block *entry = func.addEntryBlock();
  for (auto [k, name] : llvm::enumerate(dataInputs)) {
    env[name] = Entry{entry->getArgument(k)};
    argAttrs.push_back(b.getDictionaryAttr(
        {b.getNamedAttr(FccDialect::kInputAttrName, b.getStringAttr(name))}));
  }
  b.setInsertionPointToStart(entry);

  ScopedDiagnosticHandler handler(&ctx, [&](Diagnostic &d) {
    llvm::raw_string_ostream os(diagnostics);
    os << d;
    return success();
  });
  int index = 0;
  for (const auto &n : graph.node()) {
    std::string nodeName =
        n.name().empty() ? n.op_type() + "_" + std::to_string(index) : n.name();
    loc = NameLoc::get(b.getStringAttr(nodeName));
    try {
      importNode(n);
    } catch (const ImportError &e) {
      fail("node '" + nodeName + "' (" + n.op_type() + ", opset " +
           std::to_string(opset) + "): " + e.what());
    }
    ++index;
  }
  loc = UnknownLoc::get(&ctx);

  // Results (graph outputs forwarded by Identity resolve to their source).
  llvm::SmallVector<Value> results;
  llvm::SmallVector<DictionaryAttr> resultAttrs;
  for (const auto &out : graph.output()) {
    const std::string &name = resolve(out.name());
    auto it = env.find(name);
    if (it == env.end() && !initializers.count(name) &&
        !graphInputShapes.count(name))
      fail("graph output '" + out.name() + "' is never computed");
    Value v;
    if (it != env.end() && it->second.value)
      v = it->second.value;
    else if (it != env.end() && it->second.constant && !it->second.constant->isFloat()) {
      // An integer constant output (e.g. a Shape): return it as i64.
      const HostTensor &t = *it->second.constant;
      auto type = RankedTensorType::get(t.shape, b.getI64Type());
      v = b.create<arith::ConstantOp>(
          loc, DenseElementsAttr::get(type, llvm::ArrayRef<int64_t>(t.i)));
    } else
      v = runtime(name);
    results.push_back(v);
    resultAttrs.push_back(b.getDictionaryAttr(
        {b.getNamedAttr(FccDialect::kOutputAttrName, b.getStringAttr(out.name()))}));
  }
  b.create<func::ReturnOp>(loc, results);

  llvm::SmallVector<Type> argTypes(entry->getArgumentTypes());
  llvm::SmallVector<Type> resultTypes;
  for (Value v : results)
    resultTypes.push_back(v.getType());
  func.setFunctionType(b.getFunctionType(argTypes, resultTypes));
  func.setAllArgAttrs(argAttrs);
  func.setAllResultAttrs(resultAttrs);
  return module;
}

} // namespace

//===----------------------------------------------------------------------===//
// Public entry points
//===----------------------------------------------------------------------===//

onnx::ModelProto fcc::readOnnxFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail("cannot open the file (" + std::string(std::strerror(errno)) + ")");
  std::stringstream ss;
  ss << in.rdbuf();
  return parseOnnxBytes(ss.str(), llvm::StringRef(path).ends_with(".onnxtxt"));
}

onnx::ModelProto fcc::parseOnnxBytes(llvm::StringRef data, bool text) {
  std::string bytes = data.str();
  if (bytes.empty())
    fail("the file is empty");
  onnx::ModelProto model;
  if (text) {
    onnx::OnnxParser parser(bytes.c_str());
    onnx::Common::Status status;
    // libonnx 1.12's parser converts numbers with std::stol/stof/stod and
    // lets their exceptions escape (`strides = [2, -]` aborted fcc; found by
    // tests/fuzz/): report them like its own parse errors.
    auto numberError = [&](const std::string &what) {
      fail("not valid ONNX text syntax: [ParseError at position " +
           parser.GetCurrentPos() + "] Error context: " +
           oneLine(parser.GetErrorContext()) + " " + what);
    };
    try {
      status = parser.Parse(model);
    } catch (const std::invalid_argument &e) {
      numberError("malformed number (" + std::string(e.what()) + ")");
    } catch (const std::out_of_range &e) {
      numberError("number out of range (" + std::string(e.what()) + ")");
    } catch (const std::exception &e) {
      numberError(oneLine(e.what()));
    }
    if (!status.IsOK())
      fail("not valid ONNX text syntax: " + oneLine(status.ErrorMessage()));
    return model;
  }
  if (!model.ParseFromString(bytes))
    fail("not an ONNX model (the protobuf does not parse: truncated or not an "
         "ONNX file?)");
  if (!model.has_graph() || model.ir_version() <= 0)
    fail("not an ONNX model (no graph or IR version)");
  return model;
}

llvm::Expected<OwningOpRef<ModuleOp>>
fcc::importOnnxModel(MLIRContext &context, const onnx::ModelProto &model,
                     const ImportOptions &options, const std::string &source) {
  context.loadDialect<FccDialect, func::FuncDialect, arith::ArithDialect>();
  std::string diagnostics;
  try {
    Importer importer(context, options);
    OwningOpRef<ModuleOp> module = importer.run(model);
    ScopedDiagnosticHandler handler(&context, [&](Diagnostic &d) {
      llvm::raw_string_ostream os(diagnostics);
      os << "\n  " << d.getLocation() << ": " << d;
      return success();
    });
    if (failed(verify(*module)))
      return llvm::createStringError(
          llvm::inconvertibleErrorCode(),
          source + ": internal error: the imported IR does not verify:" +
              diagnostics);
    return module;
  } catch (const ImportError &e) {
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   source + ": " + e.what());
  } catch (const std::exception &e) {
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   source + ": " + e.what());
  }
}

llvm::Expected<OwningOpRef<ModuleOp>>
fcc::importOnnxFile(MLIRContext &context, const std::string &path,
                    const ImportOptions &options) {
  onnx::ModelProto model;
  try {
    model = readOnnxFile(path);
  } catch (const ImportError &e) {
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   path + ": " + e.what());
  }
  return importOnnxModel(context, model, options, path);
}

llvm::Expected<OwningOpRef<ModuleOp>>
fcc::importOnnxBytes(MLIRContext &context, llvm::StringRef bytes, bool text,
                     const ImportOptions &options, const std::string &source) {
  onnx::ModelProto model;
  try {
    model = parseOnnxBytes(bytes, text);
  } catch (const ImportError &e) {
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   source + ": " + e.what());
  }
  return importOnnxModel(context, model, options, source);
}

const std::vector<std::string> &fcc::supportedOnnxOps() {
  static const std::vector<std::string> ops = [] {
    std::vector<std::string> v = {
        "Add",       "AveragePool", "BatchNormalization", "Cast",
        "Celu",      "Concat",      "Constant",           "ConstantOfShape",
        "Conv",      "Div",         "Dropout",            "Flatten",
        "Gather",    "Gemm",        "GlobalAveragePool",  "GlobalMaxPool",
        "Identity",  "MatMul",      "MaxPool",            "Mul",
        "Neg",       "Range",       "Relu",               "Reshape",
        "Shape",     "Size",        "Slice",              "Softmax",
        "Squeeze",   "Sub",         "Transpose",          "Unsqueeze"};
    std::sort(v.begin(), v.end());
    return v;
  }();
  return ops;
}
