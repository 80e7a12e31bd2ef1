//===- TensorIO.cpp - ONNX TensorProto files <-> host tensors -------------===//
#include "frontend/TensorIO.h"

#include <fstream>
#include <sstream>

using namespace fcc;

static llvm::Error ioError(const std::string &msg) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), msg);
}

llvm::Expected<onnx::TensorProto> fcc::readTensorFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return ioError(path + ": cannot open the file (" +
                   std::string(std::strerror(errno)) + ")");
  std::stringstream ss;
  ss << in.rdbuf();
  onnx::TensorProto proto;
  if (ss.str().empty() || !proto.ParseFromString(ss.str()))
    return ioError(path + ": not a serialized ONNX TensorProto");
  return proto;
}

Tensor fcc::toTensor(const HostTensor &h) {
  Tensor t;
  t.shape = h.shape;
  if (h.isFloat()) {
    t.data = h.toFloat32();
  } else {
    t.isInt = true;
    t.ints = h.i;
  }
  return t;
}

onnx::TensorProto fcc::toProto(const Tensor &t, const std::string &name) {
  onnx::TensorProto p;
  p.set_name(name);
  for (int64_t d : t.shape)
    p.add_dims(d);
  if (t.isInt) {
    p.set_data_type(onnx::TensorProto::INT64);
    p.set_raw_data(std::string(reinterpret_cast<const char *>(t.ints.data()),
                               t.ints.size() * sizeof(int64_t)));
  } else {
    p.set_data_type(onnx::TensorProto::FLOAT);
    p.set_raw_data(std::string(reinterpret_cast<const char *>(t.data.data()),
                               t.data.size() * sizeof(float)));
  }
  return p;
}

llvm::Error fcc::writeTensorFile(const std::string &path, const Tensor &t,
                                 const std::string &name) {
  std::ofstream out(path, std::ios::binary);
  if (!out || !toProto(t, name).SerializeToOstream(&out))
    return ioError(path + ": cannot write the file (" +
                   std::string(std::strerror(errno)) + ")");
  return llvm::Error::success();
}
