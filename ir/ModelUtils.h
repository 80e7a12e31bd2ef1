//===- ModelUtils.h - Queries on fcc model functions -------------*- C++ -*-===//
//
// Helpers over a model `func.func` (data inputs + parameter arguments) shared
// by the evaluator, the training passes and code generation.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_IR_MODELUTILS_H
#define FCC_IR_MODELUTILS_H

#include "ir/FccDialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"

#include <optional>

namespace fcc {

/// Fan-in used by PyTorch's default initialisation of a weight or bias
/// argument, derived from the op that uses it: conv weight KCRS -> C*R*S,
/// linear weight -> its in_features; a bias takes the fan-in of the weight of
/// the same op. std::nullopt if the argument is not used as a weight/bias.
std::optional<int64_t> computeFanIn(mlir::func::FuncOp func, unsigned argIndex);

/// Number of data inputs (arguments without #fcc.param).
unsigned numDataInputs(mlir::func::FuncOp func);

/// A name for argument `i`: the parameter name, or the value of fcc.input,
/// fcc.state or fcc.hyper ("arg<i>" if none).
std::string argumentName(mlir::func::FuncOp func, unsigned i);

/// A name for result `i`: fcc.output, fcc.metric, "grad:<param>" for
/// fcc.grad_of, "new:<argument name>" for fcc.updates ("result<i>" if none).
std::string resultName(mlir::func::FuncOp func, unsigned i);

/// Total number of elements of trainable parameters.
int64_t countTrainableParameters(mlir::func::FuncOp func);

/// The function called `name`, or the only function of the module.
mlir::func::FuncOp findModelFunction(mlir::ModuleOp module,
                                     llvm::StringRef name = "forward");

/// The op of `block` that defines the last (in block order) of `values`,
/// all of which are op results in `block`: where an op reading all of them
/// can go.
mlir::Operation *lastDefiningOp(mlir::Block &block,
                                llvm::ArrayRef<mlir::Value> values);

} // namespace fcc

#endif // FCC_IR_MODELUTILS_H
