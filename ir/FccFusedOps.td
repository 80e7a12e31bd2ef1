//===- FccFusedOps.td - fcc fused BatchNorm ops -------------------*- tablegen -*-===//
//
// Ops created by the BatchNorm passes (passes/FuseBatchNorm.cpp,
// passes/FoldBatchNorm.cpp):
//
//  - `fcc.bn_act`: BatchNorm + activation (+ 2-D max pool) (+ residual add)
//    in one op, whose kernels compute the batch statistics and then normalise,
//    activate, pool and add in one sweep over memory, writing only the final
//    output;
//  - `fcc.bn_act_grad`: its backward, also one op (pool-gradient routing,
//    activation mask, BatchNorm reductions and input gradient);
//  - `fcc.fold_bn`: an inference BatchNorm folded into the weights and bias
//    of the convolution before it.
//
// The convolution stays its own op (a library call on every target): the
// fused op starts at the convolution's output. A CUDA target may later match
// `fcc.conv2d -> fcc.bn_act` as a whole into a cuDNN fused graph.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_FUSED_OPS_TD
#define FCC_FUSED_OPS_TD

def Fcc_BnActOp : Fcc_Op<"bn_act", [Pure]> {
  let summary = "Fused batch normalisation, activation, max pool and residual add";
  let description = [{
    Computes, on an NCHW input `x` (typically a convolution's output),
    ```
    z = batch_norm(x, scale, shift, running_mean, running_var)
    a = activation(z)                       // relu | celu(alpha) | none
    p = pool_kernel ? max_pool2d(a) : a     // no padding, dilation 1
    y = residual ? p + residual : p
    ```
    with exactly the semantics of the unfused `fcc.batch_norm`, `fcc.relu` /
    `fcc.celu`, `fcc.max_pool2d` and `fcc.add` ops (same epsilon, momentum
    and running-variance conventions). The max pool has window `pool_kernel`
    and `pool_strides` (both or neither), no padding, floor rounding. The
    residual has the type of the output.

    In training mode (`training = true`) it has the four statistics results of
    a training-mode `fcc.batch_norm`: the new running mean and variance, then
    the batch mean and biased batch variance that `fcc.bn_act_grad` needs.
    Only the final output is materialised: the backward recomputes the
    normalised and activated values (and the pool's arg-max) from `x` and the
    batch statistics instead of keeping them alive.
  }];
  let arguments = (ins Fcc_Tensor4D:$input, Fcc_Tensor1D:$scale,
                       Fcc_Tensor1D:$shift, Fcc_Tensor1D:$running_mean,
                       Fcc_Tensor1D:$running_var,
                       Optional<Fcc_Tensor4D>:$residual,
                       DefaultValuedAttr<F32Attr, "1e-5f">:$epsilon,
                       DefaultValuedAttr<F32Attr, "0.1f">:$momentum,
                       DefaultValuedAttr<BoolAttr, "false">:$training,
                       DefaultValuedAttr<BoolAttr, "true">:$running_var_unbiased,
                       DefaultValuedStrAttr<StrAttr, "relu">:$activation,
                       DefaultValuedAttr<F32Attr, "1.0f">:$alpha,
                       OptionalAttr<DenseI64ArrayAttr>:$pool_kernel,
                       OptionalAttr<DenseI64ArrayAttr>:$pool_strides);
  let results = (outs Fcc_Tensor4D:$output,
                      Variadic<Fcc_Tensor1D>:$training_stats);
  let assemblyFormat = [{
    $input `,` $scale `,` $shift `,` $running_mean `,` $running_var
    (`residual` $residual^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    // The training-mode results (null in inference mode), as on
    // fcc.batch_norm.
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

def Fcc_BnActGradOp : Fcc_Op<"bn_act_grad", [Pure]> {
  let summary = "Backward of a training-mode fcc.bn_act";
  let description = [{
    Given the forward input `x`, the gradient of the fused op's output, the
    scale and shift, and the batch statistics of the training-mode
    `fcc.bn_act` (its batch mean and biased batch variance results): the
    gradients of the input, the scale and the shift. The normalised and
    activated values are recomputed from `x`; the output gradient is routed
    to the first maximum of each pooling window (as `fcc.max_pool2d_grad`),
    masked by the activation's derivative and taken through the BatchNorm
    backward. The residual's gradient is the output gradient itself and is
    not a result. Attributes are those of the forward op.
  }];
  let arguments = (ins Fcc_Tensor4D:$input, Fcc_Tensor4D:$output_grad,
                       Fcc_Tensor1D:$scale, Fcc_Tensor1D:$shift,
                       Fcc_Tensor1D:$batch_mean, Fcc_Tensor1D:$batch_var,
                       DefaultValuedAttr<F32Attr, "1e-5f">:$epsilon,
                       DefaultValuedStrAttr<StrAttr, "relu">:$activation,
                       DefaultValuedAttr<F32Attr, "1.0f">:$alpha,
                       OptionalAttr<DenseI64ArrayAttr>:$pool_kernel,
                       OptionalAttr<DenseI64ArrayAttr>:$pool_strides);
  let results = (outs Fcc_Tensor4D:$input_grad, Fcc_Tensor1D:$scale_grad,
                      Fcc_Tensor1D:$shift_grad);
  let assemblyFormat = [{
    $input `,` $output_grad `,` $scale `,` $shift `,` $batch_mean `,`
    $batch_var attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_FoldBnOp : Fcc_Op<"fold_bn", [Pure]> {
  let summary = "Folds an inference BatchNorm into convolution weights and bias";
  let description = [{
    For a convolution with weight `w` [K, C/G, R, S] and optional bias `b`
    [K] followed by an inference-mode BatchNorm over its K channels:
    ```
    m[k]  = scale[k] / sqrt(var[k] + epsilon)
    w'[k] = w[k] * m[k]
    b'[k] = (b[k] - mean[k]) * m[k] + shift[k]     (b = 0 without a bias)
    ```
    so that `conv2d(x, w', b') == batch_norm(conv2d(x, w, b))` up to rounding.
  }];
  let arguments = (ins Fcc_Tensor4D:$weight, Fcc_Tensor1D:$scale,
                       Fcc_Tensor1D:$shift, Fcc_Tensor1D:$mean,
                       Fcc_Tensor1D:$var, Optional<Fcc_Tensor1D>:$bias,
                       DefaultValuedAttr<F32Attr, "1e-5f">:$epsilon);
  let results = (outs Fcc_Tensor4D:$folded_weight, Fcc_Tensor1D:$folded_bias);
  let assemblyFormat = [{
    $weight `,` $scale `,` $shift `,` $mean `,` $var (`bias` $bias^)? attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

#endif // FCC_FUSED_OPS_TD
