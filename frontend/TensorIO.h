//===- TensorIO.h - ONNX TensorProto files <-> host tensors -------*- C++ -*-===//
//
// The .pb tensor files of the ONNX backend test data (and of `fcc run`'s
// --input/--output-dir) converted to and from the evaluator's host tensors.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_FRONTEND_TENSORIO_H
#define FCC_FRONTEND_TENSORIO_H

#include "frontend/HostTensor.h"
#include "runtime/evaluator/Evaluator.h"

#include "llvm/Support/Error.h"

namespace fcc {

/// Reads a serialized onnx::TensorProto.
llvm::Expected<onnx::TensorProto> readTensorFile(const std::string &path);
/// Writes `t` as a serialized onnx::TensorProto named `name`.
llvm::Error writeTensorFile(const std::string &path, const Tensor &t,
                            const std::string &name);

/// float types -> float32 tensor; integer/bool types -> int64 tensor.
Tensor toTensor(const HostTensor &h);
onnx::TensorProto toProto(const Tensor &t, const std::string &name);

} // namespace fcc

#endif // FCC_FRONTEND_TENSORIO_H
