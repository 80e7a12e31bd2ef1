//===- ModelZoo.cpp - Built-in training models as ONNX graphs -------------===//
//
// A small graph builder (parameters, Constant nodes, layers that track the
// static C x H x W of their activations) and one function per model that reads
// like the architecture's description. See ModelZoo.h for the conventions.
//
//===----------------------------------------------------------------------===//
#include "models/ModelZoo.h"

#include "fcc/runtime/init.h"

#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <set>

using namespace fcc::models;

namespace {

constexpr int64_t kOpsetVersion = 17;
constexpr int64_t kIrVersion = 8;
constexpr int64_t kNumClasses = 10;
constexpr float kBnEpsilon = 1e-5f;
constexpr float kBnMomentum = 0.9f; // ONNX convention: PyTorch's 0.1
constexpr const char *kBatchSymbol = "N";

static_assert(std::endian::native == std::endian::little,
              "raw_data of ONNX tensors is little-endian");

std::string formatDouble(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

std::string joinDims(const std::vector<int64_t> &dims) {
  std::string s;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i)
      s += 'x';
    s += std::to_string(dims[i]);
  }
  return s;
}

/// A request the model cannot satisfy (e.g. an input too small to survive the
/// pools); caught in buildZooModel and turned into ZooResult::error.
struct BuildError {
  std::string message;
};

/// An activation flowing through the builder: its value name and its static
/// shape without the batch dimension ({C, H, W} or {features}).
struct T {
  std::string name;
  std::vector<int64_t> dims;
  int64_t c() const { return dims[0]; }
  int64_t h() const { return dims[1]; }
  int64_t w() const { return dims[2]; }
};

//===----------------------------------------------------------------------===//
// Graph builder
//===----------------------------------------------------------------------===//

class Builder {
public:
  Builder(std::string modelName, const ZooOptions &options)
      : modelName(std::move(modelName)), opts(options),
        model(std::make_unique<onnx::ModelProto>()),
        graph(model->mutable_graph()) {}

  const ZooOptions &options() const { return opts; }
  const std::string &name() const { return modelName; }

  /// Hidden width after --width-mult.
  int64_t width(int64_t c) const { return scaleWidth(c, opts.widthMult); }

  /// The data input "input" [N, C, H, W].
  T input() {
    std::vector<int64_t> dims = {opts.inChannels, opts.inHeight, opts.inWidth};
    addValueInfo(graph->add_input(), "input", dims, /*batched=*/true);
    return {"input", dims};
  }

  /// A parameter: a graph input without a value (graph-only), or an
  /// initializer holding its fcc_param_init value (with weights).
  std::string param(const std::string &name, const std::vector<int64_t> &dims,
                    fcc_param_role role, int64_t fanIn = 1) {
    if (!opts.withWeights) {
      addValueInfo(graph->add_input(), name, dims, /*batched=*/false);
      return name;
    }
    int64_t count = numel(dims);
    std::vector<float> values(count);
    if (fcc_param_init(role, name.c_str(), count, fanIn, opts.seed,
                       values.data()) != 0)
      throw BuildError{"cannot initialise parameter '" + name + "'"};
    onnx::TensorProto *t = graph->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims)
      t->add_dims(d);
    t->set_raw_data(values.data(), values.size() * sizeof(float));
    return name;
  }

  /// A Constant node `name` (output `name`) of the given shape filled with
  /// `value`: how fcc marks frozen values.
  std::string constant(const std::string &name,
                       const std::vector<int64_t> &dims, float value) {
    onnx::NodeProto *n = addNode("Constant", name, {});
    onnx::AttributeProto *a = n->add_attribute();
    a->set_name("value");
    a->set_type(onnx::AttributeProto::TENSOR);
    onnx::TensorProto *t = a->mutable_t();
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims)
      t->add_dims(d);
    for (int64_t i = 0, e = numel(dims); i < e; ++i)
      t->add_float_data(value);
    return name;
  }

  /// A node named `name` whose single output is also called `name`.
  onnx::NodeProto *addNode(const std::string &opType, const std::string &name,
                           const std::vector<std::string> &inputs) {
    onnx::NodeProto *n = graph->add_node();
    n->set_op_type(opType);
    n->set_name(name);
    for (const std::string &in : inputs)
      n->add_input(in);
    n->add_output(name);
    return n;
  }

  /// Renames the output of the last node to the graph output "logits".
  void output(const T &x) {
    onnx::NodeProto *last = graph->mutable_node(graph->node_size() - 1);
    if (last->output(0) != x.name || x.dims.size() != 1)
      throw BuildError{"internal error: the logits must be the last node's "
                       "rank-2 output"};
    last->set_output(0, "logits");
    addValueInfo(graph->add_output(), "logits", x.dims, /*batched=*/true);
  }

  std::unique_ptr<onnx::ModelProto> finish(const std::string &docString) {
    model->set_ir_version(kIrVersion);
    model->set_producer_name("fcc-models");
    onnx::OperatorSetIdProto *opset = model->add_opset_import();
    opset->set_domain("");
    opset->set_version(kOpsetVersion);
    graph->set_name(modelName);
    graph->set_doc_string(docString);
    return std::move(model);
  }

  static int64_t numel(const std::vector<int64_t> &dims) {
    int64_t n = 1;
    for (int64_t d : dims)
      n *= d;
    return n;
  }

private:
  void addValueInfo(onnx::ValueInfoProto *v, const std::string &name,
                    const std::vector<int64_t> &dims, bool batched) {
    v->set_name(name);
    auto *tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    auto *shape = tt->mutable_shape();
    if (batched) {
      auto *d = shape->add_dim();
      if (opts.batch)
        d->set_dim_value(*opts.batch);
      else
        d->set_dim_param(kBatchSymbol);
    }
    for (int64_t d : dims)
      shape->add_dim()->set_dim_value(d);
  }

  std::string modelName;
  ZooOptions opts;
  std::unique_ptr<onnx::ModelProto> model;
  onnx::GraphProto *graph;
};

void setInts(onnx::NodeProto *n, const std::string &name,
             const std::vector<int64_t> &values) {
  onnx::AttributeProto *a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t v : values)
    a->add_ints(v);
}

void setInt(onnx::NodeProto *n, const std::string &name, int64_t value) {
  onnx::AttributeProto *a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(value);
}

void setFloat(onnx::NodeProto *n, const std::string &name, float value) {
  onnx::AttributeProto *a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(value);
}

//===----------------------------------------------------------------------===//
// Layers
//===----------------------------------------------------------------------===//

/// floor((in + 2 * pad - kernel) / stride) + 1, or a BuildError naming the
/// layer when the input is too small for it.
int64_t windowOutput(const Builder &b, const std::string &layer, int64_t in,
                     int64_t kernel, int64_t stride, int64_t pad) {
  int64_t span = in + 2 * pad - kernel;
  int64_t out = span < 0 ? 0 : span / stride + 1;
  if (out <= 0) {
    const ZooOptions &o = b.options();
    throw BuildError{
        "input " + joinDims({o.inChannels, o.inHeight, o.inWidth}) +
        " is too small for " + b.name() + ": the spatial size reaches 0 at '" +
        layer + "' (" + std::to_string(in) + " in, kernel " +
        std::to_string(kernel) + ", stride " + std::to_string(stride) + ")"};
  }
  return out;
}

/// Conv 3x3, pads 1: node `name`, parameters name.weight [K, C, 3, 3] and, if
/// `bias`, name.bias [K].
T conv3x3(Builder &b, const std::string &name, const T &x, int64_t out,
          int64_t stride, bool bias) {
  int64_t fanIn = x.c() * 3 * 3;
  std::vector<std::string> inputs = {
      x.name,
      b.param(name + ".weight", {out, x.c(), 3, 3}, FCC_ROLE_WEIGHT, fanIn)};
  if (bias)
    inputs.push_back(b.param(name + ".bias", {out}, FCC_ROLE_BIAS, fanIn));
  onnx::NodeProto *n = b.addNode("Conv", name, inputs);
  setInts(n, "kernel_shape", {3, 3});
  setInts(n, "pads", {1, 1, 1, 1});
  setInts(n, "strides", {stride, stride});
  return {name,
          {out, windowOutput(b, name, x.h(), 3, stride, 1),
           windowOutput(b, name, x.w(), 3, stride, 1)}};
}

/// BatchNormalization (inference form, as exported): parameters name.weight
/// (scale), name.bias (shift), name.running_mean, name.running_var. With
/// `frozenScale` the scale is a Constant node of ones, name.weight_frozen.
T batchNorm(Builder &b, const std::string &name, const T &x,
            bool frozenScale = false) {
  int64_t c = x.c();
  std::string scale = frozenScale
                          ? b.constant(name + ".weight_frozen", {c}, 1.0f)
                          : b.param(name + ".weight", {c}, FCC_ROLE_BN_SCALE);
  onnx::NodeProto *n =
      b.addNode("BatchNormalization", name,
                {x.name, scale, b.param(name + ".bias", {c}, FCC_ROLE_BN_SHIFT),
                 b.param(name + ".running_mean", {c}, FCC_ROLE_RUNNING_MEAN),
                 b.param(name + ".running_var", {c}, FCC_ROLE_RUNNING_VAR)});
  setFloat(n, "epsilon", kBnEpsilon);
  setFloat(n, "momentum", kBnMomentum);
  return {name, x.dims};
}

T relu(Builder &b, const std::string &name, const T &x) {
  b.addNode("Relu", name, {x.name});
  return {name, x.dims};
}

T celu(Builder &b, const std::string &name, const T &x, float alpha) {
  setFloat(b.addNode("Celu", name, {x.name}), "alpha", alpha);
  return {name, x.dims};
}

/// MaxPool with kernel == stride (kh x kw), no padding.
T maxPool(Builder &b, const std::string &name, const T &x, int64_t kh,
          int64_t kw) {
  onnx::NodeProto *n = b.addNode("MaxPool", name, {x.name});
  setInts(n, "kernel_shape", {kh, kw});
  setInts(n, "strides", {kh, kw});
  return {name,
          {x.c(), windowOutput(b, name, x.h(), kh, kh, 0),
           windowOutput(b, name, x.w(), kw, kw, 0)}};
}

T maxPool(Builder &b, const std::string &name, const T &x, int64_t k) {
  return maxPool(b, name, x, k, k);
}

/// A global max pool written as MaxPool over the whole remaining image
/// (cifar10-fast's MaxPool2d(4) at 32x32).
T globalMaxPool(Builder &b, const std::string &name, const T &x) {
  return maxPool(b, name, x, x.h(), x.w());
}

T add(Builder &b, const std::string &name, const T &x, const T &y) {
  b.addNode("Add", name, {x.name, y.name});
  return {name, x.dims};
}

T flatten(Builder &b, const std::string &name, const T &x) {
  setInt(b.addNode("Flatten", name, {x.name}), "axis", 1);
  return {name, {Builder::numel(x.dims)}};
}

/// Gemm with transB = 1: name.weight [out, in] (and name.bias [out]).
T linear(Builder &b, const std::string &name, const T &x, int64_t out,
         bool bias) {
  int64_t in = x.dims[0];
  std::vector<std::string> inputs = {
      x.name, b.param(name + ".weight", {out, in}, FCC_ROLE_WEIGHT, in)};
  if (bias)
    inputs.push_back(b.param(name + ".bias", {out}, FCC_ROLE_BIAS, in));
  setInt(b.addNode("Gemm", name, inputs), "transB", 1);
  return {name, {out}};
}

/// Dropout whose ratio is a scalar Constant node name.ratio (no training_mode
/// input: the trainer decides when dropout is active).
T dropout(Builder &b, const std::string &name, const T &x, float ratio) {
  b.addNode("Dropout", name, {x.name, b.constant(name + ".ratio", {}, ratio)});
  return {name, x.dims};
}

/// x * s for a scalar Constant node `constName`.
T scale(Builder &b, const std::string &name, const T &x, float s,
        const std::string &constName) {
  b.addNode("Mul", name, {x.name, b.constant(constName, {}, s)});
  return {name, x.dims};
}

//===----------------------------------------------------------------------===//
// Models
//===----------------------------------------------------------------------===//

/// cifar10-fast's conv_bn: conv3x3 -> BN -> ReLU (-> MaxPool 2 when the block
/// downsamples). The bag-of-tricks variant pools right after the conv, uses
/// CELU(alpha = 0.3) and freezes the BN scale at 1.
T convBn(Builder &b, const std::string &prefix, T x, int64_t out, bool pool,
         bool bot) {
  x = conv3x3(b, prefix + ".conv", x, out, /*stride=*/1, /*bias=*/false);
  if (pool && bot)
    x = maxPool(b, prefix + ".pool", x, 2);
  x = batchNorm(b, prefix + ".bn", x, /*frozenScale=*/bot);
  x = bot ? celu(b, prefix + ".celu", x, 0.3f) : relu(b, prefix + ".relu", x);
  if (pool && !bot)
    x = maxPool(b, prefix + ".pool", x, 2);
  return x;
}

/// x + res2(res1(x)) with two conv_bn blocks at x's width.
T residual(Builder &b, const std::string &prefix, const T &x, bool bot) {
  T y = convBn(b, prefix + ".res1", x, x.c(), /*pool=*/false, bot);
  y = convBn(b, prefix + ".res2", y, x.c(), /*pool=*/false, bot);
  return add(b, prefix + ".add", x, y);
}

void resnet9(Builder &b, bool bot) {
  T x = b.input();
  x = convBn(b, "prep", x, b.width(64), /*pool=*/false, bot);
  x = convBn(b, "layer1", x, b.width(128), /*pool=*/true, bot);
  x = residual(b, "layer1", x, bot);
  x = convBn(b, "layer2", x, b.width(256), /*pool=*/true, bot);
  x = convBn(b, "layer3", x, b.width(512), /*pool=*/true, bot);
  x = residual(b, "layer3", x, bot);
  x = globalMaxPool(b, "pool", x);
  x = flatten(b, "flatten", x);
  x = linear(b, "fc", x, kNumClasses, /*bias=*/false);
  b.output(scale(b, "logits", x, 0.125f, "logit_scale"));
}

void alexnet(Builder &b) {
  T x = b.input();
  x = relu(b, "conv1.relu", conv3x3(b, "conv1", x, b.width(64), 2, true));
  x = maxPool(b, "conv1.pool", x, 2);
  x = relu(b, "conv2.relu", conv3x3(b, "conv2", x, b.width(192), 1, true));
  x = maxPool(b, "conv2.pool", x, 2);
  x = relu(b, "conv3.relu", conv3x3(b, "conv3", x, b.width(384), 1, true));
  x = relu(b, "conv4.relu", conv3x3(b, "conv4", x, b.width(256), 1, true));
  x = relu(b, "conv5.relu", conv3x3(b, "conv5", x, b.width(256), 1, true));
  x = maxPool(b, "conv5.pool", x, 2);
  x = flatten(b, "flatten", x);
  x = dropout(b, "fc1.dropout", x, 0.5f);
  x = relu(b, "fc1.relu", linear(b, "fc1", x, b.width(4096), true));
  x = dropout(b, "fc2.dropout", x, 0.5f);
  x = relu(b, "fc2.relu", linear(b, "fc2", x, b.width(4096), true));
  b.output(linear(b, "fc3", x, kNumClasses, true));
}

struct ZooEntry {
  ZooModelInfo info;
  std::function<void(Builder &)> build;
};

const std::vector<ZooEntry> &entries() {
  static const std::vector<ZooEntry> list = {
      {{"resnet9", "ResNet9 from cifar10-fast (8 conv+BN+ReLU, 2 residual "
                   "blocks, logits scaled by 0.125)"},
       [](Builder &b) { resnet9(b, /*bot=*/false); }},
      {{"resnet9-bot", "ResNet9 'bag of tricks': pool before BN, CELU(0.3), "
                       "BN scale frozen at 1"},
       [](Builder &b) { resnet9(b, /*bot=*/true); }},
      {{"alexnet", "CIFAR-10 AlexNet (5 conv 3x3, 3 linear with dropout), as "
                   "in compressed-communication studies"},
       [](Builder &b) { alexnet(b); }},
  };
  return list;
}

} // namespace

//===----------------------------------------------------------------------===//
// Public API
//===----------------------------------------------------------------------===//

const std::vector<ZooModelInfo> &fcc::models::zooModels() {
  static const std::vector<ZooModelInfo> infos = [] {
    std::vector<ZooModelInfo> v;
    for (const ZooEntry &e : entries())
      v.push_back(e.info);
    return v;
  }();
  return infos;
}

std::vector<std::string> fcc::models::zooModelNames() {
  std::vector<std::string> names;
  for (const ZooModelInfo &m : zooModels())
    names.push_back(m.name);
  return names;
}

int64_t fcc::models::scaleWidth(int64_t channels, double widthMult) {
  return std::max<int64_t>(1, std::llround(channels * widthMult));
}

std::string fcc::models::parseInputShape(std::string_view text,
                                         ZooOptions &options) {
  std::string bad = "bad input shape '" + std::string(text) +
                    "': expected CxHxW with positive integers, e.g. 3x32x32";
  int64_t dims[3];
  size_t pos = 0;
  for (int k = 0; k < 3; ++k) {
    if (k > 0) {
      if (pos >= text.size() || text[pos] != 'x')
        return bad;
      ++pos;
    }
    size_t start = pos;
    int64_t v = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      v = v * 10 + (text[pos++] - '0');
      if (v > (int64_t(1) << 31))
        return bad + " (dimension too large)";
    }
    if (pos == start || v <= 0)
      return bad;
    dims[k] = v;
  }
  if (pos != text.size())
    return bad;
  options.inChannels = dims[0];
  options.inHeight = dims[1];
  options.inWidth = dims[2];
  return "";
}

ZooResult fcc::models::buildZooModel(std::string_view name,
                                     const ZooOptions &options) {
  ZooResult result;
  const ZooEntry *entry = nullptr;
  for (const ZooEntry &e : entries())
    if (e.info.name == name)
      entry = &e;
  if (!entry) {
    result.error = "unknown model '" + std::string(name) + "' (known:";
    for (const std::string &n : zooModelNames())
      result.error += " " + n;
    result.error += ")";
    return result;
  }
  if (!(options.widthMult > 0) || !std::isfinite(options.widthMult)) {
    result.error = "the width multiplier must be a positive number, not " +
                   formatDouble(options.widthMult);
    return result;
  }
  if (options.inChannels <= 0 || options.inHeight <= 0 ||
      options.inWidth <= 0) {
    result.error =
        "the input shape " +
        joinDims({options.inChannels, options.inHeight, options.inWidth}) +
        " must be positive";
    return result;
  }
  if (options.batch && *options.batch <= 0) {
    result.error = "the batch size must be positive, not " +
                   std::to_string(*options.batch);
    return result;
  }

  Builder b(entry->info.name, options);
  try {
    entry->build(b);
  } catch (const BuildError &e) {
    result.error = e.message;
    return result;
  }
  std::string doc =
      entry->info.name + ": " + entry->info.description + ". width-mult " +
      formatDouble(options.widthMult) + ", input " +
      joinDims({options.inChannels, options.inHeight, options.inWidth}) +
      (options.withWeights ? ", weights from fcc_param_init seed " +
                                 std::to_string(options.seed)
                           : ", graph-only (parameters are inputs)");
  result.model = b.finish(doc);
  return result;
}

namespace {
// Parameter slots, as in fcc's ONNX importer: which input positions of a node
// hold parameters, and whether the parameter there trains.
enum class Slot { None, Trainable, Statistic };

Slot paramSlot(const onnx::NodeProto &n, int index) {
  const std::string &op = n.op_type();
  if (op == "Conv" || op == "Gemm")
    return index == 1 || index == 2 ? Slot::Trainable : Slot::None;
  if (op == "MatMul")
    return index == 1 ? Slot::Trainable : Slot::None;
  if (op == "BatchNormalization")
    return index == 1 || index == 2   ? Slot::Trainable
           : index == 3 || index == 4 ? Slot::Statistic
                                      : Slot::None;
  return Slot::None;
}
} // namespace

int64_t fcc::models::countTrainableParameters(const onnx::ModelProto &model) {
  const onnx::GraphProto &g = model.graph();
  std::map<std::string, int64_t> sizes; // values with no producing node
  for (const onnx::ValueInfoProto &in : g.input()) {
    int64_t n = 1;
    for (const auto &d : in.type().tensor_type().shape().dim())
      n *= d.has_dim_value() ? d.dim_value() : 0;
    sizes[in.name()] = n;
  }
  for (const onnx::TensorProto &t : g.initializer()) {
    int64_t n = 1;
    for (int64_t d : t.dims())
      n *= d;
    sizes[t.name()] = n;
  }
  for (const onnx::NodeProto &n : g.node())
    for (const std::string &out : n.output())
      sizes.erase(out); // Constant nodes: frozen

  std::set<std::string> trainable;
  for (const onnx::NodeProto &n : g.node())
    for (int k = 0; k < n.input_size(); ++k)
      if (paramSlot(n, k) == Slot::Trainable && sizes.count(n.input(k)))
        trainable.insert(n.input(k));
  int64_t total = 0;
  for (const std::string &name : trainable)
    total += sizes[name];
  return total;
}

std::string fcc::models::verifyZooModel(const onnx::ModelProto &model) {
  onnx::ModelProto m = model;
  try {
    onnx::checker::check_model(m);
    onnx::shape_inference::InferShapes(
        m, onnx::OpSchemaRegistry::Instance(),
        onnx::ShapeInferenceOptions(/*check_type=*/true, /*strict_mode=*/1));
  } catch (const std::exception &e) {
    return e.what();
  }

  const onnx::GraphProto &g = m.graph();
  std::map<std::string, const onnx::TypeProto *> types;
  for (const auto &v : g.value_info())
    types[v.name()] = &v.type();
  for (const auto &v : g.output())
    types[v.name()] = &v.type();
  std::string batchSymbol;
  if (g.input_size() > 0) {
    const auto &shape = g.input(0).type().tensor_type().shape();
    if (shape.dim_size() > 0 && shape.dim(0).has_dim_param())
      batchSymbol = shape.dim(0).dim_param();
  }
  for (const onnx::NodeProto &n : g.node()) {
    for (const std::string &out : n.output()) {
      auto it = types.find(out);
      if (it == types.end() || !it->second->tensor_type().has_shape())
        return "no shape inferred for '" + out + "' (node '" + n.name() + "')";
      const auto &shape = it->second->tensor_type().shape();
      for (int k = 0; k < shape.dim_size(); ++k) {
        const auto &d = shape.dim(k);
        bool ok = d.has_dim_value() ? d.dim_value() > 0
                                    : k == 0 && !batchSymbol.empty() &&
                                          d.dim_param() == batchSymbol;
        if (!ok)
          return "dimension " + std::to_string(k) + " of '" + out +
                 "' (node '" + n.name() + "') is not fully inferred";
      }
    }
  }
  return "";
}
