//===- OnnxImporter.h - ONNX model -> fcc dialect ------------------*- C++ -*-===//
//
// Reads an ONNX model (binary protobuf, or ONNX's text syntax for .onnxtxt
// files), runs the ONNX checker and shape inference, and imports the graph as
// a `func.func` of fcc ops whose arguments are the data inputs followed by the
// parameters (see ir/FccDialect.td for the argument attributes).
//
// Import decisions:
//  - A graph input without initializer is a *parameter* if some node uses it
//    in a parameter slot (Conv/Gemm weight and bias, BatchNormalization scale,
//    shift and statistics, MatMul's second operand), otherwise a data input.
//  - Initializers and parameter inputs are trainable (BatchNorm running
//    statistics never are); values of Constant nodes that land in parameter
//    slots become frozen parameters (trainable = false) with their value.
//  - Shape computations (Shape/Gather/Unsqueeze/Concat/... feeding Reshape)
//    are folded at compile time; every tensor shape is static.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_FRONTEND_ONNXIMPORTER_H
#define FCC_FRONTEND_ONNXIMPORTER_H

#include "frontend/HostTensor.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "llvm/Support/Error.h"

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace fcc {

struct ImportOptions {
  /// Static size for a symbolic leading (batch) dimension of data inputs.
  std::optional<int64_t> batchSize;
  /// Static shapes for data inputs, by input name (overrides the model).
  std::map<std::string, std::vector<int64_t>> inputShapes;
  /// Graph inputs whose values are known at compile time (e.g. the shape
  /// operand of a Reshape given as an input): they are folded like constants.
  std::map<std::string, HostTensor> boundInputs;
  /// The most values compile-time folding (shape computations, rearranged
  /// constants) may produce for one model; beyond it the model is rejected
  /// instead of exhausting memory.
  int64_t maxFoldedElements = int64_t(1) << 28;
  /// Keep initializer values as `fcc.init` (false: parameters only).
  bool keepInitialValues = true;
  std::string functionName = "forward";
};

/// Reads a model file; `.onnxtxt` files use ONNX's textual syntax, anything
/// else is parsed as a binary ModelProto. Throws ImportError with a message
/// that says what is wrong with the file.
onnx::ModelProto readOnnxFile(const std::string &path);

/// readOnnxFile on bytes already in memory: ONNX text syntax when `text`,
/// otherwise a binary ModelProto. Throws ImportError like readOnnxFile.
onnx::ModelProto parseOnnxBytes(llvm::StringRef bytes, bool text);

/// Checks and imports a model. Errors name the node, op type and opset.
llvm::Expected<mlir::OwningOpRef<mlir::ModuleOp>>
importOnnxModel(mlir::MLIRContext &context, const onnx::ModelProto &model,
                const ImportOptions &options,
                const std::string &sourceName = "<model>");

/// readOnnxFile + importOnnxModel; messages start with the file name.
llvm::Expected<mlir::OwningOpRef<mlir::ModuleOp>>
importOnnxFile(mlir::MLIRContext &context, const std::string &path,
               const ImportOptions &options);

/// parseOnnxBytes + importOnnxModel; messages start with `sourceName`. The
/// entry point of the importer's fuzz target (tests/fuzz/).
llvm::Expected<mlir::OwningOpRef<mlir::ModuleOp>>
importOnnxBytes(mlir::MLIRContext &context, llvm::StringRef bytes, bool text,
                const ImportOptions &options,
                const std::string &sourceName = "<model>");

/// The ONNX op types the importer understands (sorted), for messages and docs.
const std::vector<std::string> &supportedOnnxOps();

/// Lowest and highest default-domain opset the importer accepts. Opsets 9-17
/// are the target; 6-8 are accepted too (older PyTorch exports), with their
/// legacy attributes (is_test, broadcast/axis) handled or rejected clearly.
constexpr int64_t kMinOpset = 6;
constexpr int64_t kMaxOpset = 17;

} // namespace fcc

#endif // FCC_FRONTEND_ONNXIMPORTER_H
