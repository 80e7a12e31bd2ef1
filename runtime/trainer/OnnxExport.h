//===- OnnxExport.h - The trained model as an ONNX file -------------------===//
//
// `TRAINER --export-onnx FILE` writes the ONNX model the trainer was compiled
// from (embedded in the program) with the trained values as initializers:
// every parameter, BatchNorm running statistics included (the EMA copies
// when --ema is on). The graph itself is kept as it was — BatchNorm nodes
// stay, in inference mode with the trained statistics — so the file is the
// user's own model, checkable by the ONNX checker and runnable by any ONNX
// runtime.
//
// Trainers do not link protobuf: this is a small, strict reader and writer of
// the protobuf wire format that copies every field of ModelProto and
// GraphProto byte for byte, drops the initializers that the trained values
// replace and the graph inputs of the same names (parameters of a graph-only
// model), and appends new TensorProto initializers (float32, raw_data).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINER_ONNXEXPORT_H
#define FCC_TRAINER_ONNXEXPORT_H

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fcc::trainer {

struct ExportTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

class ExportError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// The serialized ModelProto `model` with `tensors` as its initializers
// (replacing initializers of the same names). Throws ExportError when
// `model` is not a well-formed ModelProto with a graph.
std::string withInitializers(const std::string &model,
                             const std::vector<ExportTensor> &tensors);

} // namespace fcc::trainer

#endif // FCC_TRAINER_ONNXEXPORT_H
