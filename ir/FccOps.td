//===- FccOps.td - fcc forward ops -------------------------------*- tablegen -*-===//
//
// Value-semantics tensor ops for the forward pass of convolutional networks.
// Every op has a verifier that checks shapes and attributes and names the
// mismatch; result shapes are always static.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_OPS_TD
#define FCC_OPS_TD

include "ir/FccDialect.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "mlir/IR/CommonAttrConstraints.td"

//===----------------------------------------------------------------------===//
// Convolution and normalisation
//===----------------------------------------------------------------------===//

def Fcc_Conv2DOp : Fcc_Op<"conv2d", [Pure]> {
  let summary = "2-D convolution (cross-correlation), NCHW x KCRS";
  let description = [{
    `y[n, k, oh, ow] = bias[k] + sum_{c, r, s} x[n, g*C/G + c, oh*sh + r*dh - pt,
    ow*sw + s*dw - pl] * w[k, c, r, s]` where g is the group of output channel k.
    `pads` are [top, left, bottom, right] (ONNX order), `dilations` 1 = dense.
    The weight has C/groups input channels; K must be divisible by groups.
  }];
  let arguments = (ins Fcc_Tensor4D:$input, Fcc_Tensor4D:$weight,
                       Optional<Fcc_Tensor1D>:$bias,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$strides,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{0, 0, 0, 0}">:$pads,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$dilations,
                       DefaultValuedAttr<I64Attr, "1">:$groups);
  let results = (outs Fcc_Tensor4D:$output);
  let assemblyFormat = [{
    $input `,` $weight (`,` $bias^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_BatchNormOp : Fcc_Op<"batch_norm", [Pure]> {
  let summary = "Batch normalisation over channel dimension 1";
  let description = [{
    Inference semantics (`training = false`): normalises with the given
    running statistics, `y = scale * (x - mean) / sqrt(var + epsilon) + shift`.

    Training semantics (`training = true`): normalises with the batch mean and
    biased batch variance (over every dimension but 1) and has four more
    results: the updated running statistics
    `new = (1 - momentum) * running + momentum * batch`, then the batch mean
    and biased batch variance themselves (which the backward needs).
    `momentum` follows PyTorch's convention (0.1 by default; ONNX's attribute
    of 0.9 means the same). The variance folded into the running variance is
    unbiased (n/(n-1), PyTorch) when `running_var_unbiased`, else biased (ONNX).
  }];
  let arguments = (ins Fcc_FloatTensor:$input, Fcc_Tensor1D:$scale,
                       Fcc_Tensor1D:$shift, Fcc_Tensor1D:$running_mean,
                       Fcc_Tensor1D:$running_var,
                       DefaultValuedAttr<F32Attr, "1e-5f">:$epsilon,
                       DefaultValuedAttr<F32Attr, "0.1f">:$momentum,
                       DefaultValuedAttr<BoolAttr, "false">:$training,
                       DefaultValuedAttr<BoolAttr, "true">:$running_var_unbiased);
  let results = (outs Fcc_FloatTensor:$output,
                      Variadic<Fcc_Tensor1D>:$training_stats);
  let assemblyFormat = [{
    $input `,` $scale `,` $shift `,` $running_mean `,` $running_var attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    // The training-mode results (null in inference mode).
    mlir::Value getNewRunningMean() { return trainingStat(0); }
    mlir::Value getNewRunningVar() { return trainingStat(1); }
    mlir::Value getBatchMean() { return trainingStat(2); }
    mlir::Value getBatchVar() { return trainingStat(3); }
  private:
    mlir::Value trainingStat(unsigned i) {
      auto stats = getTrainingStats();
      return i < stats.size() ? stats[i] : mlir::Value();
    }
  public:
  }];
}

//===----------------------------------------------------------------------===//
// Activations
//===----------------------------------------------------------------------===//

def Fcc_ReluOp : Fcc_Op<"relu", [Pure, SameOperandsAndResultType]> {
  let summary = "max(x, 0)";
  let arguments = (ins Fcc_FloatTensor:$input);
  let results = (outs Fcc_FloatTensor:$output);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

def Fcc_CeluOp : Fcc_Op<"celu", [Pure, SameOperandsAndResultType]> {
  let summary = "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))";
  let arguments = (ins Fcc_FloatTensor:$input,
                       DefaultValuedAttr<F32Attr, "1.0f">:$alpha);
  let results = (outs Fcc_FloatTensor:$output);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Pooling
//===----------------------------------------------------------------------===//

def Fcc_MaxPool2DOp : Fcc_Op<"max_pool2d", [Pure]> {
  let summary = "2-D max pooling, NCHW";
  let description = [{
    Maximum over each `kernel` window; padded positions never win. With
    `ceil_mode` the output size rounds up (windows that would start in the end
    padding are dropped). Global max pooling is a window over the whole image.
  }];
  let arguments = (ins Fcc_Tensor4D:$input, DenseI64ArrayAttr:$kernel,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$strides,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{0, 0, 0, 0}">:$pads,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$dilations,
                       DefaultValuedAttr<BoolAttr, "false">:$ceil_mode);
  let results = (outs Fcc_Tensor4D:$output);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($output)";
  let hasVerifier = 1;
}

def Fcc_AvgPool2DOp : Fcc_Op<"avg_pool2d", [Pure]> {
  let summary = "2-D average pooling, NCHW";
  let description = [{
    Mean over each `kernel` window. With `count_include_pad` the divisor counts
    padded positions (the window clipped to the padded image), otherwise only
    real input positions. Global average pooling is a window over the whole
    image.
  }];
  let arguments = (ins Fcc_Tensor4D:$input, DenseI64ArrayAttr:$kernel,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$strides,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{0, 0, 0, 0}">:$pads,
                       DefaultValuedAttr<BoolAttr, "false">:$ceil_mode,
                       DefaultValuedAttr<BoolAttr, "false">:$count_include_pad);
  let results = (outs Fcc_Tensor4D:$output);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($output)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Elementwise arithmetic
//===----------------------------------------------------------------------===//

def Fcc_AddOp : Fcc_Op<"add", [Pure, Commutative]> {
  let summary = "Elementwise addition with numpy broadcasting";
  let description = [{
    Canonicalization folds `add(linear(a, w), b)` into `linear(a, w, b)` when
    the linear has no bias and no other user (MatMul + Add from exporters).
  }];
  let arguments = (ins Fcc_FloatTensor:$lhs, Fcc_FloatTensor:$rhs);
  let results = (outs Fcc_FloatTensor:$output);
  let assemblyFormat = [{
    $lhs `,` $rhs attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

def Fcc_MulOp : Fcc_Op<"mul", [Pure]> {
  let summary = "Elementwise multiplication (broadcasting) or by a scalar";
  let description = [{
    Either `fcc.mul %a, %b` (numpy broadcasting) or `fcc.mul %a {scalar = c}`
    (multiplication by the constant c, e.g. a logit scale).
  }];
  let arguments = (ins Fcc_FloatTensor:$lhs, Optional<Fcc_FloatTensor>:$rhs,
                       OptionalAttr<F64Attr>:$scalar);
  let results = (outs Fcc_FloatTensor:$output);
  let assemblyFormat = [{
    $lhs (`,` $rhs^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Linear algebra and shapes
//===----------------------------------------------------------------------===//

def Fcc_LinearOp : Fcc_Op<"linear", [Pure]> {
  let summary = "alpha * op(a) op(b) + beta * bias (Gemm / fully connected)";
  let description = [{
    op(a) is a (M x K) or, with `trans_a`, the transpose of a (K x M); op(b) is
    b (K x N) or, with `trans_b` (the default: PyTorch's [out, in] weight
    layout), the transpose of b (N x K). The optional bias broadcasts to
    M x N (a scalar, [N], [1, N], [M, 1] or [M, N]).
  }];
  let arguments = (ins Fcc_Tensor2D:$input, Fcc_Tensor2D:$weight,
                       Optional<Fcc_FloatTensor>:$bias,
                       DefaultValuedAttr<BoolAttr, "false">:$trans_a,
                       DefaultValuedAttr<BoolAttr, "true">:$trans_b,
                       DefaultValuedAttr<F32Attr, "1.0f">:$alpha,
                       DefaultValuedAttr<F32Attr, "1.0f">:$beta);
  let results = (outs Fcc_Tensor2D:$output);
  let assemblyFormat = [{
    $input `,` $weight (`,` $bias^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_FlattenOp : Fcc_Op<"flatten", [Pure]> {
  let summary = "Collapses dimensions [0, axis) and [axis, rank) into a matrix";
  let arguments = (ins Fcc_FloatTensor:$input,
                       DefaultValuedAttr<I64Attr, "1">:$axis);
  let results = (outs Fcc_Tensor2D:$output);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($output)";
  let hasVerifier = 1;
}

def Fcc_ReshapeOp : Fcc_Op<"reshape", [Pure]> {
  let summary = "Reinterprets a tensor with a new static shape (same elements)";
  let arguments = (ins Fcc_FloatTensor:$input);
  let results = (outs Fcc_FloatTensor:$output);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($output)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Regularisation and output
//===----------------------------------------------------------------------===//

def Fcc_DropoutOp : Fcc_Op<"dropout", [SameOperandsAndResultType]> {
  let summary = "Inverted dropout";
  let description = [{
    With `training = false` (inference) this is the identity. With
    `training = true` each element is zeroed with probability `ratio` and the
    survivors are scaled by 1 / (1 - ratio); the training pass makes the
    random mask explicit. Not `Pure`: two training-mode dropouts of the same
    value must not be merged.
  }];
  let arguments = (ins Fcc_FloatTensor:$input,
                       DefaultValuedAttr<F32Attr, "0.5f">:$ratio,
                       DefaultValuedAttr<BoolAttr, "false">:$training);
  let results = (outs Fcc_FloatTensor:$output);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let hasVerifier = 1;
}

def Fcc_SoftmaxOp : Fcc_Op<"softmax", [Pure, SameOperandsAndResultType]> {
  let summary = "Softmax along one axis";
  let arguments = (ins Fcc_FloatTensor:$input,
                       DefaultValuedAttr<I64Attr, "-1">:$axis);
  let results = (outs Fcc_FloatTensor:$output);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Precision
//===----------------------------------------------------------------------===//

def Fcc_CastOp : Fcc_Op<"cast", [Pure]> {
  let summary = "Converts a tensor to another float type (same shape)";
  let description = [{
    Round to nearest, ties to even, when the result type is narrower (f32 ->
    f16/bf16, f16 <-> bf16); exact when it is wider. fcc-insert-half makes
    every change of precision an explicit cast. Folds away when the types
    are equal and when a value is widened and narrowed back
    (`cast(cast(x : f16 -> f32) : f32 -> f16) == x`); a narrowing followed by
    a widening is a real rounding and stays.
  }];
  let arguments = (ins Fcc_FloatTensor:$input);
  let results = (outs Fcc_FloatTensor:$output);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($output)";
  let hasVerifier = 1;
  let hasFolder = 1;
}

include "ir/FccTrainingOps.td"
include "ir/FccFusedOps.td"
include "ir/FccCommOps.td"

#endif // FCC_OPS_TD
