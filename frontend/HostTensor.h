//===- HostTensor.h - Compile-time tensors for the ONNX importer -*- C++ -*-===//
//
// Values the importer knows at compile time: ONNX initializers and Constant
// nodes, and the results of the shape glue real exporters emit around Reshape
// (Shape -> Gather -> Unsqueeze -> Concat). Floating-point values are kept as
// double, integer and boolean values as int64; `dtype` remembers the ONNX type.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_FRONTEND_HOSTTENSOR_H
#define FCC_FRONTEND_HOSTTENSOR_H

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fcc {

/// An error in the user's model; the importer turns it into a diagnostic that
/// names the file and node.
struct ImportError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct HostTensor {
  int32_t dtype = onnx::TensorProto::FLOAT;
  std::vector<int64_t> shape;
  std::vector<double> f;   // floating-point types
  std::vector<int64_t> i;  // integer and bool types

  bool isFloat() const;
  int64_t numel() const;
  int64_t rank() const { return int64_t(shape.size()); }
  /// Element k as a double / int64 whatever the storage.
  double asDouble(int64_t k) const { return isFloat() ? f[k] : double(i[k]); }
  int64_t asInt(int64_t k) const { return isFloat() ? int64_t(f[k]) : i[k]; }
  /// All elements as int64 (for shapes, axes, indices).
  std::vector<int64_t> toInts() const;
  std::vector<float> toFloat32() const;

  static HostTensor ints(std::vector<int64_t> values, std::vector<int64_t> shape);
  static HostTensor floats(std::vector<double> values, std::vector<int64_t> shape,
                           int32_t dtype = onnx::TensorProto::FLOAT);

  /// Decodes an ONNX TensorProto (typed fields or raw_data). Throws
  /// ImportError for unsupported element types, external data or a size that
  /// does not match the dims.
  static HostTensor fromProto(const onnx::TensorProto &proto);
};

/// Name of an ONNX element type ("float", "int64", ...).
std::string onnxTypeName(int32_t dtype);

/// Evaluates a shape-glue node whose inputs are all known. Supports Identity,
/// Shape (given the input's static shape), Size, Gather, Unsqueeze, Squeeze,
/// Concat, Cast, Slice, Reshape, Flatten, Transpose, Add, Sub, Mul, Div, Neg,
/// ConstantOfShape, Range. Returns false if the op is not one of these.
/// Throws ImportError for invalid arguments.
bool foldConstantNode(const onnx::NodeProto &node, int64_t opset,
                      const std::vector<const HostTensor *> &inputs,
                      std::vector<HostTensor> &outputs);

/// Normalises a possibly negative axis against `rank`; throws if out of range.
int64_t normalizeAxis(int64_t axis, int64_t rank, const std::string &what);

} // namespace fcc

#endif // FCC_FRONTEND_HOSTTENSOR_H
