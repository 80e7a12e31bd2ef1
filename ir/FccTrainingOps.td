//===- FccTrainingOps.td - fcc gradient, loss and optimizer ops -*- tablegen -*-===//
//
// Ops that only appear in training programs (after fcc-build-training):
// gradients of the forward ops, the loss, the optimizer and EMA updates, and
// the random dropout mask. Scalars (learning rate, label smoothing, ...) are
// rank-0 tensors so that every value is a tensor.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINING_OPS_TD
#define FCC_TRAINING_OPS_TD

def Fcc_Scalar : 0DTensorOf<[F32]>,
    BuildableType<"::mlir::RankedTensorType::get({}, $_builder.getF32Type())">;
def Fcc_SeedTensor : 0DTensorOf<[I64]>,
    BuildableType<"::mlir::RankedTensorType::get({}, $_builder.getI64Type())">;
def Fcc_LabelTensor : 1DTensorOf<[I32]>;

//===----------------------------------------------------------------------===//
// Gradients of forward ops
//===----------------------------------------------------------------------===//

def Fcc_Conv2DGradInputOp : Fcc_Op<"conv2d_grad_input", [Pure]> {
  let summary = "Gradient of fcc.conv2d with respect to its input";
  let description = [{
    `dx = conv2d_grad_input(dy, w)` for the convolution with the same
    attributes whose input has the type of `dx` (the result).
  }];
  let arguments = (ins Fcc_Tensor4D:$output_grad, Fcc_Tensor4D:$weight,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$strides,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{0, 0, 0, 0}">:$pads,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$dilations,
                       DefaultValuedAttr<I64Attr, "1">:$groups);
  let results = (outs Fcc_Tensor4D:$input_grad);
  let assemblyFormat = [{
    $output_grad `,` $weight attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_Conv2DGradWeightOp : Fcc_Op<"conv2d_grad_weight", [Pure]> {
  let summary = "Gradient of fcc.conv2d with respect to its weight";
  let arguments = (ins Fcc_Tensor4D:$input, Fcc_Tensor4D:$output_grad,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$strides,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{0, 0, 0, 0}">:$pads,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$dilations,
                       DefaultValuedAttr<I64Attr, "1">:$groups);
  let results = (outs Fcc_Tensor4D:$weight_grad);
  let assemblyFormat = [{
    $input `,` $output_grad attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_BatchNormGradOp : Fcc_Op<"batch_norm_grad", [Pure]> {
  let summary = "Training-mode batch normalisation backward";
  let description = [{
    Given the forward input, the output gradient, the scale and the batch
    statistics of the training-mode fcc.batch_norm (its batch mean and biased
    batch variance results): input, scale and shift gradients.
  }];
  let arguments = (ins Fcc_FloatTensor:$input, Fcc_FloatTensor:$output_grad,
                       Fcc_Tensor1D:$scale, Fcc_Tensor1D:$batch_mean,
                       Fcc_Tensor1D:$batch_var,
                       DefaultValuedAttr<F32Attr, "1e-5f">:$epsilon);
  let results = (outs Fcc_FloatTensor:$input_grad, Fcc_Tensor1D:$scale_grad,
                      Fcc_Tensor1D:$shift_grad);
  let assemblyFormat = [{
    $input `,` $output_grad `,` $scale `,` $batch_mean `,` $batch_var attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_ReluGradOp : Fcc_Op<"relu_grad", [Pure, SameOperandsAndResultType]> {
  let summary = "dx = dy where x > 0, else 0";
  let arguments = (ins Fcc_FloatTensor:$input, Fcc_FloatTensor:$output_grad);
  let results = (outs Fcc_FloatTensor:$input_grad);
  let assemblyFormat = "$input `,` $output_grad attr-dict `:` type($input)";
}

def Fcc_CeluGradOp : Fcc_Op<"celu_grad", [Pure, SameOperandsAndResultType]> {
  let summary = "dx = dy * (x > 0 ? 1 : exp(x / alpha))";
  let arguments = (ins Fcc_FloatTensor:$input, Fcc_FloatTensor:$output_grad,
                       DefaultValuedAttr<F32Attr, "1.0f">:$alpha);
  let results = (outs Fcc_FloatTensor:$input_grad);
  let assemblyFormat = "$input `,` $output_grad attr-dict `:` type($input)";
}

def Fcc_MaxPool2DGradOp : Fcc_Op<"max_pool2d_grad", [Pure]> {
  let summary = "Routes each output gradient to the first maximum of its window";
  let arguments = (ins Fcc_Tensor4D:$input, Fcc_Tensor4D:$output_grad,
                       DenseI64ArrayAttr:$kernel,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$strides,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{0, 0, 0, 0}">:$pads,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$dilations,
                       DefaultValuedAttr<BoolAttr, "false">:$ceil_mode);
  let results = (outs Fcc_Tensor4D:$input_grad);
  let assemblyFormat = [{
    $input `,` $output_grad attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_AvgPool2DGradOp : Fcc_Op<"avg_pool2d_grad", [Pure]> {
  let summary = "Spreads each output gradient evenly over its window";
  let arguments = (ins Fcc_Tensor4D:$output_grad, DenseI64ArrayAttr:$kernel,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{1, 1}">:$strides,
                       DefaultValuedAttr<DenseI64ArrayAttr, "{0, 0, 0, 0}">:$pads,
                       DefaultValuedAttr<BoolAttr, "false">:$ceil_mode,
                       DefaultValuedAttr<BoolAttr, "false">:$count_include_pad);
  let results = (outs Fcc_Tensor4D:$input_grad);
  let assemblyFormat = [{
    $output_grad attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_ReduceSumOp : Fcc_Op<"reduce_sum", [Pure]> {
  let summary = "Sum over the given axes, which are removed from the shape";
  let description = [{
    Used for bias gradients (sum of the output gradient over every axis but
    the channel) and for the gradients of broadcasting operands.
  }];
  let arguments = (ins Fcc_FloatTensor:$input, DenseI64ArrayAttr:$axes);
  let results = (outs Fcc_FloatTensor:$output);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($output)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Randomness, loss, metrics
//===----------------------------------------------------------------------===//

def Fcc_DropoutMaskOp : Fcc_Op<"dropout_mask", [Pure]> {
  let summary = "Inverted-dropout mask: 0 or 1 / (1 - ratio) per element";
  let description = [{
    Element i is kept iff the Philox uniform number i of stream
    (`seed`, `stream`) is >= ratio (runtime/include/fcc/runtime/cpu_kernels.h,
    fcc_cpu_dropout_mask). A pure function of the seed operand and the stream
    attribute, so every dropout in a step gets its own stream.
  }];
  let arguments = (ins Fcc_SeedTensor:$seed, F32Attr:$ratio, I64Attr:$stream);
  let results = (outs Fcc_FloatTensor:$mask);
  let assemblyFormat = "$seed attr-dict `:` type($seed) `->` type($mask)";
  let hasVerifier = 1;
}

def Fcc_SoftmaxXentOp : Fcc_Op<"softmax_xent", [Pure]> {
  let summary = "Mean softmax cross-entropy with label smoothing";
  let description = [{
    `loss = mean_i -sum_j q_ij log softmax(logits_i)_j` with the target
    `q_i = (1 - ls) * onehot(label_i) + ls / classes`.
  }];
  let arguments = (ins Fcc_Tensor2D:$logits, Fcc_LabelTensor:$labels,
                       Fcc_Scalar:$label_smoothing);
  let results = (outs Fcc_Scalar:$loss);
  let assemblyFormat = [{
    $logits `,` $labels `,` $label_smoothing attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_SoftmaxXentGradOp : Fcc_Op<"softmax_xent_grad", [Pure]> {
  let summary = "d loss / d logits = loss_grad * (softmax(logits) - q) / batch";
  let arguments = (ins Fcc_Tensor2D:$logits, Fcc_LabelTensor:$labels,
                       Fcc_Scalar:$label_smoothing, Fcc_Scalar:$loss_grad);
  let results = (outs Fcc_Tensor2D:$logits_grad);
  let assemblyFormat = [{
    $logits `,` $labels `,` $label_smoothing `,` $loss_grad attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_CountCorrectOp : Fcc_Op<"count_correct", [Pure]> {
  let summary = "Number of rows whose first maximal logit is the label";
  let arguments = (ins Fcc_Tensor2D:$logits, Fcc_LabelTensor:$labels);
  let results = (outs Fcc_Scalar:$count);
  let assemblyFormat = [{
    $logits `,` $labels attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Fcc_FlipOp : Fcc_Op<"flip", [Pure, SameOperandsAndResultType]> {
  let summary = "Mirrors an NCHW batch horizontally (test-time augmentation)";
  let arguments = (ins Fcc_Tensor4D:$input);
  let results = (outs Fcc_Tensor4D:$output);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

//===----------------------------------------------------------------------===//
// Optimizer
//===----------------------------------------------------------------------===//

def Fcc_SgdUpdateOp : Fcc_Op<"sgd_update", [Pure, AttrSizedOperandSegments,
    AllTypesMatch<["param", "grad", "momentum_buffer", "new_param",
                   "new_momentum_buffer"]>]> {
  let summary = "SGD with momentum (optionally Nesterov) and L2 weight decay";
  let description = [{
    PyTorch's SGD (dampening 0), with per-group multipliers:
    ```
    g'   = grad / grad_scale + (weight_decay * wd_mult) * param
    buf' = momentum * buf + g'
    d    = nesterov != 0 ? g' + momentum * buf' : buf'
    p'   = param - (lr * lr_mult) * d
    ```
    With dynamic loss scaling (fp16) the optional `grad_scale` operand is the
    loss scale the gradient carries and the optional `apply` operand (from
    fcc.grads_finite) is 0 when any gradient of the step overflowed: then
    the parameter and the buffer stay as they are (the step is skipped).
    Results are the new parameter and the new momentum buffer; code
    generation updates both in place.
  }];
  let arguments = (ins Fcc_FloatTensor:$param, Fcc_FloatTensor:$grad,
                       Fcc_FloatTensor:$momentum_buffer, Fcc_Scalar:$lr,
                       Fcc_Scalar:$momentum, Fcc_Scalar:$weight_decay,
                       Fcc_Scalar:$nesterov,
                       Optional<Fcc_Scalar>:$grad_scale,
                       Optional<Fcc_Scalar>:$apply,
                       DefaultValuedAttr<F32Attr, "1.0f">:$lr_mult,
                       DefaultValuedAttr<F32Attr, "1.0f">:$wd_mult);
  let results = (outs Fcc_FloatTensor:$new_param,
                      Fcc_FloatTensor:$new_momentum_buffer);
  let assemblyFormat = [{
    $param `,` $grad `,` $momentum_buffer `,` $lr `,` $momentum `,`
    $weight_decay `,` $nesterov (`scale` $grad_scale^)? (`if` $apply^)?
    attr-dict `:` type($param)
  }];
}

def Fcc_GradsFiniteOp : Fcc_Op<"grads_finite", [Pure]> {
  let summary = "Whether every gradient of a step is finite (loss scaling)";
  let description = [{
    `finite` is 1 when no element of any operand is inf or NaN, else 0;
    `skipped` is 1 - finite (the step's contribution to the skipped-steps
    metric). Dynamic loss scaling skips the update of a step whose scaled
    gradients overflowed and lowers the scale.
  }];
  let arguments = (ins Variadic<Fcc_FloatTensor>:$grads);
  let results = (outs Fcc_Scalar:$finite, Fcc_Scalar:$skipped);
  let assemblyFormat = "$grads attr-dict `:` type($grads)";
}

def Fcc_EmaUpdateOp : Fcc_Op<"ema_update", [Pure,
    AllTypesMatch<["ema", "value", "new_ema"]>]> {
  let summary = "ema' = decay * ema + (1 - decay) * value";
  let arguments = (ins Fcc_FloatTensor:$ema, Fcc_FloatTensor:$value,
                       Fcc_Scalar:$decay);
  let results = (outs Fcc_FloatTensor:$new_ema);
  let assemblyFormat = "$ema `,` $value `,` $decay attr-dict `:` type($ema)";
}

//===----------------------------------------------------------------------===//
// Scheduling (CUDA target)
//===----------------------------------------------------------------------===//

def Fcc_StreamJoinOp : Fcc_Op<"stream_join"> {
  let summary = "Waits for the work queued on the side stream";
  let description = [{
    Inserted by fcc-overlap-weight-grads. Ops marked `fcc.side_stream` run
    on a second CUDA stream, concurrently with the ops that follow them,
    until the next fcc.stream_join: there the main stream waits for
    everything queued on the side stream. The operands are the tensors the
    side ops read and write; listing them keeps them alive (in the memory
    plan) until the wait, so that no op of the main stream reuses their
    bytes while the side stream may still be using them. No results; not
    pure (it orders the program), so it is never removed or moved.
  }];
  let arguments = (ins Variadic<AnyRankedTensor>:$keep_alive);
  let assemblyFormat = "($keep_alive^ `:` type($keep_alive))? attr-dict";
}

#endif // FCC_TRAINING_OPS_TD
