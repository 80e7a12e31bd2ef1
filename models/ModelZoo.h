//===- ModelZoo.h - Built-in training models as ONNX graphs -----*- C++ -*-===//
//
// The models fcc is benchmarked on (ResNet9 from cifar10-fast, its "bag of
// tricks" variant, and the CIFAR-10 AlexNet of compressed-communication
// studies), built in-process as onnx::ModelProto. Used by the `fcc-models`
// tool, which writes them as .onnx files, and by tests that want a model
// without going through a file.
//
// ONNX conventions (every model):
//  - opset 17, ir_version 8, producer "fcc-models"; passes the ONNX checker and
//    full shape inference.
//  - Data input "input" [N, C, H, W] float (N symbolic unless a batch size is
//    given), output "logits" [N, 10].
//  - Parameters are named like PyTorch state_dict entries ("prep.conv.weight",
//    "prep.bn.running_mean", "fc.weight"). Graph-only models list them as graph
//    inputs with static shapes and no values; with weights they are
//    initializers holding fcc_param_init values (fcc/runtime/init.h).
//  - Frozen values (e.g. a BN scale fixed at 1) are Constant nodes.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_MODELS_MODELZOO_H
#define FCC_MODELS_MODELZOO_H

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fcc::models {

/// How to build a zoo model.
struct ZooOptions {
  /// Scales every hidden channel count (and AlexNet's hidden FC width):
  /// c' = max(1, round(c * widthMult)). Input channels and classes never scale.
  double widthMult = 1.0;
  /// Input image shape C x H x W.
  int64_t inChannels = 3, inHeight = 32, inWidth = 32;
  /// Static batch size; std::nullopt makes the batch dimension symbolic "N".
  std::optional<int64_t> batch;
  /// Store parameters as initializers with fcc_param_init values for `seed`
  /// (false: graph-only, parameters are graph inputs without values).
  bool withWeights = false;
  uint64_t seed = 0;
};

struct ZooModelInfo {
  std::string name;
  std::string description; ///< one line
};

/// The models, in a fixed order.
const std::vector<ZooModelInfo> &zooModels();
std::vector<std::string> zooModelNames();

/// A built model, or an error message that says what is wrong with the
/// request (unknown name, bad option, input too small, ...).
struct ZooResult {
  std::unique_ptr<onnx::ModelProto> model;
  std::string error;
  explicit operator bool() const { return model != nullptr; }
};

ZooResult buildZooModel(std::string_view name, const ZooOptions &options);

/// Hidden channel count after width scaling: max(1, round(c * widthMult)).
int64_t scaleWidth(int64_t channels, double widthMult);

/// Parses "CxHxW" (positive integers) into options; returns an error message,
/// or "" on success.
std::string parseInputShape(std::string_view text, ZooOptions &options);

/// Number of trainable parameter elements: initializers and graph inputs fed
/// into parameter slots (Conv/Gemm weight and bias, MatMul weight,
/// BatchNormalization scale and shift), the same rule fcc's importer uses.
/// BN running statistics and Constant-node (frozen) values do not count.
int64_t countTrainableParameters(const onnx::ModelProto &model);

/// Runs the ONNX checker and strict shape inference on a copy of `model` and
/// checks that every value's shape is fully inferred (only the batch dimension
/// may be symbolic). Returns an error message, or "" if the model is valid.
std::string verifyZooModel(const onnx::ModelProto &model);

} // namespace fcc::models

#endif // FCC_MODELS_MODELZOO_H
