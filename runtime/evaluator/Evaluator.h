//===- Evaluator.h - Runs fcc model functions on the CPU kernels -*- C++ -*-===//
//
// An in-process interpreter for fcc IR: walks a func.func op by op and calls
// the fp32 CPU kernels (runtime/include/fcc/runtime/cpu_kernels.h). It is the
// reference the compiled trainers and the ONNX conformance tests are checked
// against, and what `fcc run` uses.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_RUNTIME_EVALUATOR_H
#define FCC_RUNTIME_EVALUATOR_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fcc {

/// A host tensor: float32 data, or int64 data for integer results.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
  std::vector<int64_t> ints; // used instead of `data` when isInt
  bool isInt = false;

  int64_t numel() const;
  static Tensor zeros(std::vector<int64_t> shape);
};

struct EvalOptions {
  /// Seed for parameters without an `fcc.init` value (PyTorch default init,
  /// runtime/include/fcc/runtime/init.h) and for training-mode dropout.
  uint64_t seed = 0;
  /// Parameter values by name; override `fcc.init` and the seeded init.
  std::map<std::string, Tensor> params;
};

/// Evaluates `func` given one value per argument without #fcc.param (data
/// inputs, labels, optimizer state, hyper-parameters), in order; integer
/// tensors (labels, seeds) use Tensor::ints. Returns the function's results.
llvm::Expected<std::vector<Tensor>> evaluate(mlir::func::FuncOp func,
                                             const std::vector<Tensor> &inputs,
                                             const EvalOptions &options = {});

/// Like `evaluate`, with the values given by name (ir/ModelUtils.h,
/// argumentName): non-parameter arguments by their fcc.input, fcc.state or
/// fcc.hyper name, parameters (graph inputs that the importer classified as
/// parameters, e.g. weights fed as inputs) by their parameter name. Data
/// inputs without a value are an error; parameters fall back to
/// `options.params`, then their initial value.
llvm::Expected<std::vector<Tensor>>
evaluateNamed(mlir::func::FuncOp func, const std::map<std::string, Tensor> &values,
              EvalOptions options = {});

/// The initial value of parameter argument `argIndex`: its `fcc.init`, else
/// PyTorch's default initialisation with `seed`.
llvm::Expected<Tensor> initialParameterValue(mlir::func::FuncOp func,
                                             unsigned argIndex, uint64_t seed);

} // namespace fcc

#endif // FCC_RUNTIME_EVALUATOR_H
