//===- MemoryPlan.h - Where every tensor of a step function lives -*- C++ -*-===//
//
// The vocabulary shared by fcc-plan-memory (PlanMemory.cpp) and code
// generation: how a value is stored, its arena offset, and the verifier of a
// plan.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_PASSES_MEMORYPLAN_H
#define FCC_PASSES_MEMORYPLAN_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Value.h"
#include "llvm/Support/raw_ostream.h"

namespace fcc {

constexpr llvm::StringLiteral kOffsetsAttrName = "fcc.offsets";
constexpr llvm::StringLiteral kArenaBytesAttrName = "fcc.arena_bytes";
/// Bytes per fp16/bf16 element in the plan of a function: 2 on targets with
/// half-precision storage, 4 on the CPU target, which emulates half
/// precision in float buffers holding only half-representable values.
constexpr llvm::StringLiteral kHalfBytesAttrName = "fcc.half_bytes";
/// Physical layout of the 4-d activations of a planned function, "nhwc"
/// (absent: NCHW, the layout of the IR's types). Under NHWC a reshape that
/// takes a 4-d map with more than one channel and more than one pixel to
/// another shape reorders its elements (the IR's order is NCHW's): it is no
/// view but a transpose into a buffer of its own (see reordersLayout).
constexpr llvm::StringLiteral kLayoutAttrName = "fcc.layout";

enum class ValueKind {
  Argument, // a function argument: a buffer the trainer owns
  View,     // fcc.reshape / fcc.flatten: the operand's memory (unless
            // reordersLayout: then Arena)
  InPlace,  // returned with fcc.updates: written into that argument's buffer
  Metric,   // returned with fcc.metric: accumulated into the metrics array
  Constant, // arith.constant: static data in the generated code
  Arena,    // a temporary at a planned arena offset
  Runtime   // fcc.all_gather rows: sized by the rank count, owned by the
            // communication runtime
};

ValueKind classifyValue(mlir::Value v);

/// What a fcc.reshape / fcc.flatten does to element order when its function
/// stores 4-d activations NHWC (kLayoutAttrName).
enum class LayoutReorder {
  None,    // a view: both sides store the same order (or the function is NCHW)
  ToNchw,  // a 4-d map flattened: its NHWC input reordered to the IR's NCHW
           // order by a transpose into a buffer of its own
  ToNhwc,  // a flat tensor reshaped to a map: the inverse transpose
  MapToMap // both sides are 4-d maps that differ in the two layouts: no single
           // transpose (code generation refuses it)
};

/// How `op` reorders elements under its function's layout (None for ops
/// other than fcc.reshape / fcc.flatten).
LayoutReorder reordersLayout(mlir::Operation *op);

/// The value whose memory a chain of views refers to.
mlir::Value viewRoot(mlir::Value v);

/// Bytes of a tensor value.
int64_t tensorBytes(mlir::Value v);

/// Arena offset of an op result planned by fcc-plan-memory (-1 if none).
int64_t arenaOffset(mlir::Value v);

/// Whether `op` may write its result over operand `operand` (same bytes).
bool canWriteInPlace(mlir::Operation *op, unsigned operand);

/// Checks a planned function: every arena tensor lies inside the arena, and
/// no two tensors that are alive at the same op share bytes (except an
/// operand that dies at an in-place-capable op and that op's result).
mlir::LogicalResult verifyMemoryPlan(mlir::func::FuncOp func);

/// Prints the plan of every planned function: each arena tensor with its
/// size, offset and live range (op indices), the persistent buffers, and the
/// arena size against the sum of all tensor sizes.
void printMemoryPlan(mlir::ModuleOp module, llvm::raw_ostream &os);

} // namespace fcc

#endif // FCC_PASSES_MEMORYPLAN_H
