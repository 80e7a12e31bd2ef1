//===- OnnxExport.cpp - The trained model as an ONNX file -----------------===//
//
// Implements OnnxExport.h. Protobuf wire format: each field is a varint key
// (field number << 3 | wire type) followed by a varint (type 0), 8 bytes
// (type 1), a varint length and that many bytes (type 2) or 4 bytes (type 5).
// ONNX field numbers used: ModelProto.graph = 7; GraphProto.node = 1,
// initializer = 5, input = 11, output = 12, value_info = 13;
// NodeProto.input = 1, output = 2, op_type = 4, attribute = 5, domain = 7;
// AttributeProto.name = 1, f = 2, i = 3; ValueInfoProto.name = 1;
// TensorProto.dims = 1, data_type = 2 (FLOAT = 1), name = 8, raw_data = 9.
//
//===----------------------------------------------------------------------===//
#include "OnnxExport.h"

#include <cmath>
#include <cstring>
#include <map>
#include <set>

namespace fcc::trainer {

namespace {

constexpr uint32_t kModelGraph = 7;
constexpr uint32_t kGraphNode = 1, kGraphInitializer = 5, kGraphInput = 11,
                   kGraphOutput = 12, kGraphValueInfo = 13;
constexpr uint32_t kNodeInput = 1, kNodeOutput = 2, kNodeOpType = 4,
                   kNodeAttribute = 5, kNodeDomain = 7;
constexpr uint32_t kAttrName = 1, kAttrFloat = 2, kAttrInt = 3;
constexpr uint32_t kValueInfoName = 1;
constexpr uint32_t kTensorDims = 1, kTensorDataType = 2, kTensorName = 8,
                   kTensorRawData = 9;
constexpr uint64_t kOnnxFloat = 1;

struct Field {
  uint32_t number = 0;
  int type = 0;
  size_t begin = 0, end = 0;      // the whole field, key included
  size_t payload = 0, size = 0;   // type 2: the bytes; type 0: the varint
  uint64_t value = 0;             // type 0
};

class Reader {
public:
  Reader(const std::string &bytes, size_t begin, size_t end, const char *what)
      : b_(bytes), at_(begin), end_(end), what_(what) {}

  bool done() const { return at_ >= end_; }

  Field next() {
    Field f;
    f.begin = at_;
    uint64_t key = varint();
    f.number = uint32_t(key >> 3);
    f.type = int(key & 7);
    switch (f.type) {
    case 0:
      f.value = varint();
      break;
    case 1:
      f.payload = at_;
      f.size = 8;
      skip(8);
      break;
    case 2: {
      uint64_t n = varint();
      if (n > end_ - at_)
        fail("a length-delimited field runs past the end");
      f.payload = at_;
      f.size = size_t(n);
      skip(size_t(n));
      break;
    }
    case 5:
      f.payload = at_;
      f.size = 4;
      skip(4);
      break;
    default:
      fail("unknown wire type " + std::to_string(f.type));
    }
    f.end = at_;
    return f;
  }

private:
  [[noreturn]] void fail(const std::string &why) const {
    throw ExportError(std::string("the embedded ONNX model is malformed (") +
                      what_ + ": " + why + ")");
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at_ >= end_)
        fail("a varint runs past the end");
      uint8_t byte = uint8_t(b_[at_++]);
      v |= uint64_t(byte & 0x7f) << shift;
      if (!(byte & 0x80))
        return v;
    }
    fail("a varint is too long");
  }
  void skip(size_t n) {
    if (n > end_ - at_)
      fail("a field runs past the end");
    at_ += n;
  }

  const std::string &b_;
  size_t at_, end_;
  const char *what_;
};

void putVarint(std::string &out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}

void putKey(std::string &out, uint32_t number, int type) {
  putVarint(out, (uint64_t(number) << 3) | uint64_t(type));
}

void putBytes(std::string &out, uint32_t number, const std::string &bytes) {
  putKey(out, number, 2);
  putVarint(out, bytes.size());
  out += bytes;
}

std::string tensorProto(const ExportTensor &t) {
  std::string out;
  for (int64_t d : t.shape) {
    putKey(out, kTensorDims, 0);
    putVarint(out, uint64_t(d));
  }
  putKey(out, kTensorDataType, 0);
  putVarint(out, kOnnxFloat);
  putBytes(out, kTensorName, t.name);
  // raw_data is little-endian, as x86-64 and every target fcc has.
  std::string raw(t.values.size() * sizeof(float), '\0');
  std::memcpy(raw.data(), t.values.data(), raw.size());
  putBytes(out, kTensorRawData, raw);
  return out;
}

// The name (string field `number`) of a serialized message (empty if none).
std::string nameOf(const std::string &bytes, const Field &message,
                   uint32_t number, const char *what) {
  Reader r(bytes, message.payload, message.payload + message.size, what);
  while (!r.done()) {
    Field f = r.next();
    if (f.number == number && f.type == 2)
      return bytes.substr(f.payload, f.size);
  }
  return "";
}

// What folding needs of a NodeProto.
struct Node {
  Field field;
  std::vector<std::string> inputs, outputs;
  std::string opType, domain;
  float epsilon = 1e-5f;      // BatchNormalization
  bool inferenceForm = true;  // no training_mode = 1, no spatial = 0
};

Node parseNode(const std::string &bytes, const Field &field) {
  Node n;
  n.field = field;
  Reader r(bytes, field.payload, field.payload + field.size, "NodeProto");
  while (!r.done()) {
    Field f = r.next();
    std::string text =
        f.type == 2 ? bytes.substr(f.payload, f.size) : std::string();
    if (f.number == kNodeInput && f.type == 2)
      n.inputs.push_back(text);
    else if (f.number == kNodeOutput && f.type == 2)
      n.outputs.push_back(text);
    else if (f.number == kNodeOpType && f.type == 2)
      n.opType = text;
    else if (f.number == kNodeDomain && f.type == 2)
      n.domain = text;
    else if (f.number == kNodeAttribute && f.type == 2) {
      std::string name;
      float real = 0;
      bool hasReal = false;
      int64_t integer = 0;
      Reader a(bytes, f.payload, f.payload + f.size, "AttributeProto");
      while (!a.done()) {
        Field af = a.next();
        if (af.number == kAttrName && af.type == 2)
          name = bytes.substr(af.payload, af.size);
        else if (af.number == kAttrFloat && af.type == 5) {
          std::memcpy(&real, bytes.data() + af.payload, 4);
          hasReal = true;
        } else if (af.number == kAttrInt && af.type == 0)
          integer = int64_t(af.value);
      }
      if (name == "epsilon" && hasReal)
        n.epsilon = real;
      else if ((name == "training_mode" && integer != 0) ||
               (name == "spatial" && integer != 1))
        n.inferenceForm = false;
    }
  }
  return n;
}

// The node with new inputs and outputs (every other field as it was).
std::string rewriteNode(const std::string &bytes, const Node &n,
                        const std::vector<std::string> &inputs,
                        const std::vector<std::string> &outputs) {
  std::string out;
  for (const std::string &in : inputs)
    putBytes(out, kNodeInput, in);
  for (const std::string &o : outputs)
    putBytes(out, kNodeOutput, o);
  Reader r(bytes, n.field.payload, n.field.payload + n.field.size,
           "NodeProto");
  while (!r.done()) {
    Field f = r.next();
    if ((f.number == kNodeInput || f.number == kNodeOutput) && f.type == 2)
      continue;
    out.append(bytes, f.begin, f.end - f.begin);
  }
  return out;
}

// Folds the BatchNormalizations of `nodes` that can be folded: updates
// `tensors` (Conv weights and biases; new biases appended), fills `rewritten`
// (node index -> new NodeProto bytes; an empty string drops the node) and
// `dropped` (names that leave the model).
void foldBatchNorms(const std::string &bytes, const std::vector<Node> &nodes,
                    const std::set<std::string> &graphOutputs,
                    const std::set<std::string> &taken,
                    std::vector<ExportTensor> &tensors,
                    std::map<size_t, std::string> &rewritten,
                    std::set<std::string> &dropped, ExportReport &report) {
  std::map<std::string, size_t> producer, uses;
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (const std::string &o : nodes[i].outputs)
      producer[o] = i;
    for (const std::string &in : nodes[i].inputs)
      if (!in.empty())
        ++uses[in];
  }
  std::map<std::string, size_t> tensorOf;
  for (size_t t = 0; t < tensors.size(); ++t)
    tensorOf[tensors[t].name] = t;
  std::set<std::string> names = taken;
  for (const ExportTensor &t : tensors)
    names.insert(t.name);

  for (size_t b = 0; b < nodes.size(); ++b) {
    const Node &bn = nodes[b];
    if (bn.opType != "BatchNormalization" ||
        (!bn.domain.empty() && bn.domain != "ai.onnx"))
      continue;
    auto keep = [&](const std::string &why) {
      ++report.keptBatchNorms;
      report.whyKept.push_back("BatchNormalization -> " +
                               (bn.outputs.empty() ? std::string("?")
                                                   : bn.outputs[0]) +
                               ": " + why);
    };
    if (bn.inputs.size() != 5 || bn.outputs.size() != 1 ||
        bn.outputs[0].empty() || !bn.inferenceForm) {
      keep("not in inference form (5 inputs, 1 output)");
      continue;
    }
    auto from = producer.find(bn.inputs[0]);
    if (from == producer.end() || nodes[from->second].opType != "Conv" ||
        !(nodes[from->second].domain.empty() ||
          nodes[from->second].domain == "ai.onnx")) {
      keep("its input does not come from a Conv");
      continue;
    }
    size_t c = from->second;
    const Node &conv = nodes[c];
    if (rewritten.count(c) || conv.outputs.size() != 1 ||
        uses[conv.outputs[0]] != 1 || graphOutputs.count(conv.outputs[0])) {
      keep("the Conv's output has other users");
      continue;
    }
    if (conv.inputs.size() < 2 || conv.inputs.size() > 3) {
      keep("the Conv has " + std::to_string(conv.inputs.size()) + " inputs");
      continue;
    }
    bool hasBias = conv.inputs.size() == 3 && !conv.inputs[2].empty();
    std::vector<std::string> needed = {conv.inputs[1]};
    if (hasBias)
      needed.push_back(conv.inputs[2]);
    for (size_t k = 1; k < 5; ++k)
      needed.push_back(bn.inputs[k]);
    bool known = true;
    for (const std::string &name : needed)
      known = known && tensorOf.count(name);
    if (!known) {
      keep("a Conv or BatchNorm input is not a trained tensor");
      continue;
    }
    if (producer.count(conv.inputs[1]) ||
        (hasBias && producer.count(conv.inputs[2]))) {
      keep("the Conv's weights are computed by a node");
      continue;
    }
    if (uses[conv.inputs[1]] != 1 || (hasBias && uses[conv.inputs[2]] != 1)) {
      keep("the Conv's weights are shared with other nodes");
      continue;
    }
    ExportTensor &w = tensors[tensorOf[conv.inputs[1]]];
    const int64_t channels = w.shape.empty() ? 0 : w.shape[0];
    bool sized = channels > 0 && int64_t(w.values.size()) % channels == 0;
    for (size_t k = 1; k < needed.size(); ++k)
      sized = sized &&
              int64_t(tensors[tensorOf[needed[k]]].values.size()) == channels;
    if (!sized) {
      keep("the channel counts of the Conv and the BatchNorm differ");
      continue;
    }
    const std::vector<float> &scale = tensors[tensorOf[bn.inputs[1]]].values;
    const std::vector<float> &shift = tensors[tensorOf[bn.inputs[2]]].values;
    const std::vector<float> &mean = tensors[tensorOf[bn.inputs[3]]].values;
    const std::vector<float> &var = tensors[tensorOf[bn.inputs[4]]].values;
    std::vector<float> bias(size_t(channels), 0.0f);
    if (hasBias)
      bias = tensors[tensorOf[conv.inputs[2]]].values;
    const size_t per = w.values.size() / size_t(channels);
    std::vector<float> newBias(static_cast<size_t>(channels));
    for (size_t ch = 0; ch < size_t(channels); ++ch) {
      double s = double(scale[ch]) /
                 std::sqrt(double(var[ch]) + double(bn.epsilon));
      for (size_t k = 0; k < per; ++k) {
        float &x = w.values[ch * per + k];
        x = float(double(x) * s);
      }
      newBias[ch] = float((double(bias[ch]) - double(mean[ch])) * s +
                          double(shift[ch]));
    }
    std::string biasName;
    if (hasBias) {
      biasName = conv.inputs[2];
      tensors[tensorOf[biasName]].values = newBias;
    } else {
      std::string stem = conv.inputs[1];
      const std::string suffix = ".weight";
      if (stem.size() > suffix.size() &&
          stem.compare(stem.size() - suffix.size(), suffix.size(), suffix) ==
              0)
        biasName = stem.substr(0, stem.size() - suffix.size()) + ".bias";
      else
        biasName = stem + ".bias";
      for (int k = 2; names.count(biasName); ++k)
        biasName = stem + ".folded_bias" + std::to_string(k);
      names.insert(biasName);
      ExportTensor t;
      t.name = biasName;
      t.shape = {channels};
      t.values = newBias;
      tensorOf[biasName] = tensors.size();
      tensors.push_back(std::move(t));
    }
    // The statistics and the affine parameters leave the model unless some
    // other node still reads them.
    for (size_t k = 1; k < 5; ++k)
      if (uses[bn.inputs[k]] == 1) {
        dropped.insert(bn.inputs[k]);
        // A Constant node that made it (a frozen scale) goes too.
        auto made = producer.find(bn.inputs[k]);
        if (made != producer.end() &&
            nodes[made->second].opType == "Constant" &&
            nodes[made->second].outputs.size() == 1)
          rewritten[made->second] = "";
      }
    dropped.insert(conv.outputs[0]); // the intermediate value (value_info)
    rewritten[c] = rewriteNode(bytes, conv,
                               {conv.inputs[0], conv.inputs[1], biasName},
                               {bn.outputs[0]});
    rewritten[b] = "";
    ++report.folded;
  }
}

} // namespace

std::string withInitializers(const std::string &model,
                             const std::vector<ExportTensor> &given,
                             const ExportOptions &options,
                             ExportReport *reportOut) {
  ExportReport report;
  std::vector<ExportTensor> folded;
  const std::vector<ExportTensor> *tensors = &given;
  std::map<size_t, std::string> rewritten; // node index -> new bytes
  std::set<std::string> dropped;

  std::string out;
  bool sawGraph = false;
  Reader m(model, 0, model.size(), "ModelProto");
  while (!m.done()) {
    Field f = m.next();
    if (f.number != kModelGraph || f.type != 2) {
      out.append(model, f.begin, f.end - f.begin);
      continue;
    }
    if (sawGraph)
      throw ExportError("the embedded ONNX model has two graphs");
    sawGraph = true;

    std::vector<Node> nodes;
    std::set<std::string> graphOutputs, taken;
    {
      Reader g(model, f.payload, f.payload + f.size, "GraphProto");
      while (!g.done()) {
        Field gf = g.next();
        if (gf.type != 2)
          continue;
        if (gf.number == kGraphNode) {
          nodes.push_back(parseNode(model, gf));
          for (const std::string &s : nodes.back().inputs)
            taken.insert(s);
          for (const std::string &s : nodes.back().outputs)
            taken.insert(s);
        } else if (gf.number == kGraphOutput) {
          graphOutputs.insert(nameOf(model, gf, kValueInfoName, "output"));
        } else if (gf.number == kGraphInput || gf.number == kGraphValueInfo) {
          taken.insert(nameOf(model, gf, kValueInfoName, "value_info"));
        } else if (gf.number == kGraphInitializer) {
          taken.insert(nameOf(model, gf, kTensorName, "initializer"));
        }
      }
    }
    for (const std::string &o : graphOutputs)
      taken.insert(o);
    for (const Node &n : nodes)
      if (n.opType == "BatchNormalization" &&
          (n.domain.empty() || n.domain == "ai.onnx"))
        ++report.keptBatchNorms;
    if (options.foldBatchNorm) {
      report.keptBatchNorms = 0;
      folded = given;
      tensors = &folded;
      foldBatchNorms(model, nodes, graphOutputs, taken, folded, rewritten,
                     dropped, report);
      std::vector<ExportTensor> remaining;
      for (ExportTensor &t : folded)
        if (!dropped.count(t.name))
          remaining.push_back(std::move(t));
      folded = std::move(remaining);
    }

    // A parameter that a node of the graph computes (a Constant the
    // compiler made a frozen parameter) keeps its node and gets no
    // initializer: a value has one producer (SSA).
    std::set<std::string> produced;
    for (const Node &n : nodes)
      for (const std::string &o : n.outputs)
        produced.insert(o);
    std::set<std::string> replaced = dropped;
    for (const ExportTensor &t : *tensors)
      if (!produced.count(t.name))
        replaced.insert(t.name);

    std::string graph;
    size_t nodeIndex = 0;
    Reader g(model, f.payload, f.payload + f.size, "GraphProto");
    while (!g.done()) {
      Field gf = g.next();
      if (gf.number == kGraphNode && gf.type == 2) {
        auto it = rewritten.find(nodeIndex++);
        if (it == rewritten.end())
          graph.append(model, gf.begin, gf.end - gf.begin);
        else if (!it->second.empty())
          putBytes(graph, kGraphNode, it->second);
        continue;
      }
      if (gf.number == kGraphInitializer && gf.type == 2 &&
          replaced.count(nameOf(model, gf, kTensorName, "initializer")))
        continue; // superseded by the trained value (or folded away)
      // A graph-only model lists its parameters as inputs; with values they
      // are initializers only (ONNX IR >= 4), so runtimes treat them as
      // constants.
      if (gf.number == kGraphInput && gf.type == 2 &&
          replaced.count(nameOf(model, gf, kValueInfoName, "input")))
        continue;
      // Shapes of values that folding removed.
      if (gf.number == kGraphValueInfo && gf.type == 2 &&
          dropped.count(nameOf(model, gf, kValueInfoName, "value_info")))
        continue;
      graph.append(model, gf.begin, gf.end - gf.begin);
    }
    for (const ExportTensor &t : *tensors)
      if (!produced.count(t.name))
        putBytes(graph, kGraphInitializer, tensorProto(t));
    putBytes(out, kModelGraph, graph);
  }
  if (!sawGraph)
    throw ExportError("the embedded ONNX model has no graph");
  if (reportOut)
    *reportOut = report;
  return out;
}

} // namespace fcc::trainer
