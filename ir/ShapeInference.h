//===- ShapeInference.h - Result shapes of fcc ops ---------------*- C++ -*-===//
//
// Shape rules of the fcc ops, shared by the verifiers (which check a result
// type against them) and the ONNX importer (which builds result types with
// them). Each function returns the result shape, or failure with a message in
// `error` that names the mismatch (the caller adds which op it is).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_IR_SHAPEINFERENCE_H
#define FCC_IR_SHAPEINFERENCE_H

#include "mlir/Support/LogicalResult.h"
#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/SmallVector.h"
#include <optional>
#include <string>

namespace fcc {

using Shape = llvm::SmallVector<int64_t, 4>;

/// "1x3x32x32" ("scalar" for rank 0).
std::string formatShape(llvm::ArrayRef<int64_t> shape);

mlir::FailureOr<Shape> inferConv2DShape(llvm::ArrayRef<int64_t> input,
                                        llvm::ArrayRef<int64_t> weight,
                                        std::optional<llvm::ArrayRef<int64_t>> bias,
                                        llvm::ArrayRef<int64_t> strides,
                                        llvm::ArrayRef<int64_t> pads,
                                        llvm::ArrayRef<int64_t> dilations,
                                        int64_t groups, std::string &error);

mlir::FailureOr<Shape> inferPool2DShape(llvm::ArrayRef<int64_t> input,
                                        llvm::ArrayRef<int64_t> kernel,
                                        llvm::ArrayRef<int64_t> strides,
                                        llvm::ArrayRef<int64_t> pads,
                                        llvm::ArrayRef<int64_t> dilations,
                                        bool ceilMode, std::string &error);

/// Numpy (ONNX multidirectional) broadcasting of two shapes.
mlir::FailureOr<Shape> inferBroadcastShape(llvm::ArrayRef<int64_t> lhs,
                                           llvm::ArrayRef<int64_t> rhs,
                                           std::string &error);

mlir::FailureOr<Shape> inferLinearShape(llvm::ArrayRef<int64_t> input,
                                        llvm::ArrayRef<int64_t> weight,
                                        std::optional<llvm::ArrayRef<int64_t>> bias,
                                        bool transA, bool transB,
                                        std::string &error);

mlir::FailureOr<Shape> inferFlattenShape(llvm::ArrayRef<int64_t> input,
                                         int64_t axis, std::string &error);

/// Number of elements (1 for rank 0).
int64_t numElements(llvm::ArrayRef<int64_t> shape);

} // namespace fcc

#endif // FCC_IR_SHAPEINFERENCE_H
