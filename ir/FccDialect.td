//===- FccDialect.td - The fcc dialect ---------------------------*- tablegen -*-===//
//
// fcc's own dialect: value-semantics tensor ops for the forward (and, later,
// backward and optimizer) computations of convolutional networks. Tensors are
// builtin ranked tensors of f32/f16/bf16, images in NCHW.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_DIALECT_TD
#define FCC_DIALECT_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"

def Fcc_Dialect : Dialect {
  let name = "fcc";
  let cppNamespace = "::fcc";
  let summary = "Training-compiler ops for convolutional networks";
  let description = [{
    A model is a `func.func` whose arguments are the data inputs and the
    parameters. Parameter arguments carry a `fcc.param` attribute
    (`#fcc.param<name = "...", role = weight, trainable = true>`) and, when the
    model provides initial values, an `fcc.init` elements attribute; data
    inputs carry `fcc.input = "name"` and results `fcc.output = "name"`.

    Training programs (see passes/BuildTraining.cpp) add argument attributes
    `fcc.labels` (with `fcc.input = "labels"`), `fcc.state = "momentum:<param>"`
    or `"ema:<param>"` for optimizer/EMA state, `fcc.hyper = "<name>"` for
    run-time hyper-parameters (rank-0 tensors), and result attributes
    `fcc.updates = <argument index>` (the result is the new value of that
    argument, updated in place by generated code), `fcc.metric = "loss" |
    "correct"` and `fcc.grad_of = "<param>"`.
  }];
  let useDefaultAttributePrinterParser = 1;
  let extraClassDeclaration = [{
    // Argument/result attribute names used on model functions.
    static constexpr llvm::StringLiteral kParamAttrName = "fcc.param";
    static constexpr llvm::StringLiteral kInitAttrName = "fcc.init";
    static constexpr llvm::StringLiteral kInputAttrName = "fcc.input";
    static constexpr llvm::StringLiteral kOutputAttrName = "fcc.output";
    // Training programs (fcc-build-training).
    static constexpr llvm::StringLiteral kLabelsAttrName = "fcc.labels";
    static constexpr llvm::StringLiteral kStateAttrName = "fcc.state";
    static constexpr llvm::StringLiteral kHyperAttrName = "fcc.hyper";
    static constexpr llvm::StringLiteral kUpdatesAttrName = "fcc.updates";
    static constexpr llvm::StringLiteral kMetricAttrName = "fcc.metric";
    static constexpr llvm::StringLiteral kGradOfAttrName = "fcc.grad_of";
    // Scheduling (fcc-overlap-weight-grads): the op runs on the side stream.
    static constexpr llvm::StringLiteral kSideStreamAttrName =
        "fcc.side_stream";
  private:
    void registerAttributes();
  public:
  }];
}

class Fcc_Op<string mnemonic, list<Trait> traits = []>
    : Op<Fcc_Dialect, mnemonic, traits>;

// Floating-point ranked tensors the ops compute on.
def Fcc_FloatTensor : RankedTensorOf<[F32, F16, BF16]>;
def Fcc_Tensor4D : 4DTensorOf<[F32, F16, BF16]>;
def Fcc_Tensor2D : 2DTensorOf<[F32, F16, BF16]>;
def Fcc_Tensor1D : 1DTensorOf<[F32, F16, BF16]>;

#endif // FCC_DIALECT_TD
