//===- DotEmitter.cpp - Graphviz picture of a network ---------------------===//
#include "codegen/DotEmitter.h"

#include "ir/FccDialect.h"
#include "ir/ShapeInference.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/DenseMap.h"

using namespace mlir;
using namespace fcc;

namespace {
std::string shapeOf(Value v) {
  return formatShape(cast<ShapedType>(v.getType()).getShape());
}

std::string escape(const std::string &s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\')
      out += '\\';
    out += c;
  }
  return out;
}

std::string pair(ArrayRef<int64_t> v) {
  return v.size() == 2 && v[0] == v[1] ? std::to_string(v[0])
                                        : formatShape(v);
}

// A short human description of the op's configuration.
std::string describe(Operation *op) {
  std::string s;
  llvm::raw_string_ostream os(s);
  if (auto c = dyn_cast<Conv2DOp>(op)) {
    auto w = cast<ShapedType>(c.getWeight().getType()).getShape();
    os << w[2] << "x" << w[3] << " conv, " << w[1] * c.getGroups() << "→"
       << w[0];
    if (llvm::any_of(c.getStrides(), [](int64_t v) { return v != 1; }))
      os << ", stride " << pair(c.getStrides());
    if (llvm::any_of(c.getPads(), [](int64_t v) { return v != 0; }))
      os << ", pad " << (llvm::all_equal(c.getPads())
                             ? std::to_string(c.getPads()[0])
                             : formatShape(c.getPads()));
    if (c.getGroups() != 1)
      os << ", groups " << c.getGroups();
    if (c.getBias())
      os << ", bias";
  } else if (auto bn = dyn_cast<BatchNormOp>(op)) {
    os << "batch norm" << (bn.getTraining() ? " (train)" : "");
  } else if (isa<MaxPool2DOp, AvgPool2DOp>(op)) {
    bool isMax = isa<MaxPool2DOp>(op);
    auto kernel = isMax ? cast<MaxPool2DOp>(op).getKernel()
                        : cast<AvgPool2DOp>(op).getKernel();
    auto strides = isMax ? cast<MaxPool2DOp>(op).getStrides()
                         : cast<AvgPool2DOp>(op).getStrides();
    auto in = cast<ShapedType>(op->getOperand(0).getType()).getShape();
    if (kernel == in.drop_front(2))
      os << (isMax ? "global max pool" : "global avg pool");
    else
      os << (isMax ? "max pool " : "avg pool ") << pair(kernel) << ", stride "
         << pair(strides);
  } else if (auto l = dyn_cast<LinearOp>(op)) {
    auto w = cast<ShapedType>(l.getWeight().getType()).getShape();
    int64_t in = l.getTransB() ? w[1] : w[0], out = l.getTransB() ? w[0] : w[1];
    os << "linear " << in << "→" << out << (l.getBias() ? ", bias" : "");
  } else if (auto m = dyn_cast<MulOp>(op)) {
    if (m.getScalar())
      os << "× " << m.getScalar()->convertToDouble();
    else
      os << "mul";
  } else if (auto c = dyn_cast<CeluOp>(op)) {
    os << "celu α=" << c.getAlpha().convertToFloat();
  } else if (auto d = dyn_cast<DropoutOp>(op)) {
    os << "dropout " << d.getRatio().convertToFloat();
  } else {
    os << op->getName().stripDialect();
  }
  return s;
}
} // namespace

LogicalResult fcc::emitDot(ModuleOp module, llvm::raw_ostream &os) {
  os << "digraph fcc {\n  rankdir=TB;\n  node [shape=box, style=rounded, "
        "fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", "
        "fontsize=10];\n";
  for (auto func : module.getOps<func::FuncOp>()) {
    llvm::DenseMap<Value, std::string> producer;
    int counter = 0;
    for (BlockArgument arg : func.getArguments()) {
      if (getParamAttr(func, arg.getArgNumber()))
        continue;
      auto name = func.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                    FccDialect::kInputAttrName);
      std::string id = "n" + std::to_string(counter++);
      os << "  " << id << " [label=\""
         << escape(name ? name.str() : "input") << "\\n" << shapeOf(arg)
         << "\", shape=ellipse];\n";
      producer[arg] = id;
    }
    for (Operation &op : func.getBody().front()) {
      if (isa<func::ReturnOp>(op)) {
        for (auto [k, v] : llvm::enumerate(op.getOperands())) {
          std::string id = "n" + std::to_string(counter++);
          auto name = func.getResultAttrOfType<StringAttr>(
              k, FccDialect::kOutputAttrName);
          os << "  " << id << " [label=\""
             << escape(name ? name.str() : "output") << "\", shape=ellipse];\n";
          if (producer.count(v))
            os << "  " << producer[v] << " -> " << id << " [label=\""
               << shapeOf(v) << "\"];\n";
        }
        continue;
      }
      if (op.getNumResults() == 0)
        continue;
      std::string id = "n" + std::to_string(counter++);
      std::string label = escape(describe(&op));
      // Parameters appear inside the box of the op that uses them.
      for (Value operand : op.getOperands())
        if (auto arg = dyn_cast<BlockArgument>(operand))
          if (auto p = getParamAttr(func, arg.getArgNumber()))
            label += "\\n" + escape(p.getName().str()) + " " + shapeOf(arg) +
                     (p.getTrainable() ? "" : " (frozen)");
      std::string loc;
      if (auto nl = dyn_cast<NameLoc>(op.getLoc()))
        loc = nl.getName().str();
      os << "  " << id << " [label=\""
         << (loc.empty() ? "" : escape(loc) + "\\n") << label << "\"];\n";
      for (Value operand : op.getOperands())
        if (producer.count(operand))
          os << "  " << producer[operand] << " -> " << id << " [label=\""
             << shapeOf(operand) << "\"];\n";
      for (Value r : op.getResults())
        producer[r] = id;
    }
  }
  os << "}\n";
  return success();
}
