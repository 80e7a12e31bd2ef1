//===- OnnxExport.h - The trained model as an ONNX file -------------------===//
//
// `TRAINER --export-onnx FILE` writes the ONNX model the trainer was compiled
// from (embedded in the program) with the trained values as initializers:
// every parameter, BatchNorm running statistics included (the EMA copies
// when --ema is on). By default (--export-bn keep) the graph itself is kept
// as it was — BatchNorm nodes stay, in inference mode with the trained
// statistics — so the file is the user's own model, checkable by the ONNX
// checker and runnable by any ONNX runtime. The IR version and opsets are
// the source model's.
//
// With --export-bn fold, each BatchNormalization (inference form: five
// inputs, one output, no training_mode) that directly follows a Conv whose
// output has no other user is folded into the Conv: with
// s = scale / sqrt(var + epsilon) per output channel, W' = W s and
// b' = (b - mean) s + shift (computed in double, rounded once; a bias input
// is added when the Conv has none), the Conv takes over the BatchNorm's
// output name and the BatchNorm node, its statistics and its scale/shift
// (when nothing else uses them) leave the model. Others are kept (and
// counted in the report).
//
// Trainers do not link protobuf: this is a small, strict reader and writer of
// the protobuf wire format that copies every field of ModelProto and
// GraphProto byte for byte (folding rewrites the input and output fields of
// the Convs it changes and leaves out the folded BatchNorm nodes and the
// value_info of the values they consumed), drops the initializers that the
// trained values replace and the graph inputs of the same names (parameters
// of a graph-only model), and appends new TensorProto initializers
// (float32, raw_data).
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

struct ExportOptions {
  bool foldBatchNorm = false; // --export-bn fold
};

struct ExportReport {
  int folded = 0;     // BatchNormalization nodes folded into a Conv
  int keptBatchNorms = 0; // BatchNormalization nodes left in the graph
  std::vector<std::string> whyKept; // one line per kept node (fold only)
};

// The serialized ModelProto `model` with `tensors` as its initializers
// (replacing initializers of the same names). Throws ExportError when
// `model` is not a well-formed ModelProto with a graph.
std::string withInitializers(const std::string &model,
                             const std::vector<ExportTensor> &tensors,
                             const ExportOptions &options = {},
                             ExportReport *report = nullptr);

} // namespace fcc::trainer

#endif // FCC_TRAINER_ONNXEXPORT_H
