//===- OnnxExport.cpp - The trained model as an ONNX file -----------------===//
//
// Implements OnnxExport.h. Protobuf wire format: each field is a varint key
// (field number << 3 | wire type) followed by a varint (type 0), 8 bytes
// (type 1), a varint length and that many bytes (type 2) or 4 bytes (type 5).
// ONNX field numbers used: ModelProto.graph = 7; GraphProto.initializer = 5;
// TensorProto.dims = 1, data_type = 2 (FLOAT = 1), name = 8, raw_data = 9.
//
//===----------------------------------------------------------------------===//
#include "OnnxExport.h"

#include <cstring>
#include <set>

namespace fcc::trainer {

namespace {

constexpr uint32_t kModelGraph = 7;
constexpr uint32_t kGraphInitializer = 5, kGraphInput = 11;
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

} // namespace

std::string withInitializers(const std::string &model,
                             const std::vector<ExportTensor> &tensors) {
  std::set<std::string> replaced;
  for (const ExportTensor &t : tensors)
    replaced.insert(t.name);

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
    std::string graph;
    Reader g(model, f.payload, f.payload + f.size, "GraphProto");
    while (!g.done()) {
      Field gf = g.next();
      if (gf.number == kGraphInitializer && gf.type == 2 &&
          replaced.count(nameOf(model, gf, kTensorName, "initializer")))
        continue; // superseded by the trained value
      // A graph-only model lists its parameters as inputs; with values they
      // are initializers only (ONNX IR >= 4), so runtimes treat them as
      // constants.
      if (gf.number == kGraphInput && gf.type == 2 &&
          replaced.count(nameOf(model, gf, kValueInfoName, "input")))
        continue;
      graph.append(model, gf.begin, gf.end - gf.begin);
    }
    for (const ExportTensor &t : tensors)
      putBytes(graph, kGraphInitializer, tensorProto(t));
    putBytes(out, kModelGraph, graph);
  }
  if (!sawGraph)
    throw ExportError("the embedded ONNX model has no graph");
  return out;
}

} // namespace fcc::trainer
