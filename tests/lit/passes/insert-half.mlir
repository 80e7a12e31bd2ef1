// RUN: fcc-opt %s -split-input-file --fcc-insert-half | FileCheck %s
// RUN: fcc-opt %s -split-input-file --fcc-insert-half=precision=bf16 | FileCheck %s --check-prefix=BF16
// RUN: fcc-opt %s -split-input-file --fcc-insert-half --fcc-build-training=loss-scaling=true | FileCheck %s --check-prefix=TRAIN
// RUN: fcc-opt %s -split-input-file --fcc-insert-half --fcc-build-training --fcc-fold-batchnorm | FileCheck %s --check-prefix=FOLD
// RUN: not fcc-opt %s -split-input-file --fcc-insert-half=precision=fp8 2>&1 | FileCheck %s --check-prefix=BAD
//
// fcc-insert-half: convolutions, linears and elementwise ops compute in half
// precision with explicit casts; BatchNorms (fcc.batch_norm, fcc.bn_act)
// read and write half data with fp32 parameters and statistics, so no cast
// surrounds them; the logits that feed the loss and the fp32 master weights
// stay fp32; every value is cast at most once.

// The weights (fp32 arguments) and the input are cast once each, at the top.
// CHECK-LABEL: func.func @forward
// CHECK-SAME: (%[[X:.*]]: tensor<2x3x4x4xf32> {fcc.input = "input"}, %[[W:.*]]: tensor<4x3x3x3xf32>
// CHECK-SAME: -> (tensor<2x10xf32> {fcc.output = "logits"})
// CHECK-DAG:  %[[FB:.*]] = fcc.cast %arg7 : tensor<10xf32> -> tensor<10xf16>
// CHECK-DAG:  %[[FW:.*]] = fcc.cast %arg6 : tensor<10x16xf32> -> tensor<10x16xf16>
// CHECK-DAG:  %[[WH:.*]] = fcc.cast %[[W]] : tensor<4x3x3x3xf32> -> tensor<4x3x3x3xf16>
// CHECK-DAG:  %[[XH:.*]] = fcc.cast %[[X]] : tensor<2x3x4x4xf32> -> tensor<2x3x4x4xf16>
// CHECK:      %[[C:.*]] = fcc.conv2d %[[XH]], %[[WH]] {{.*}} -> tensor<2x4x4x4xf16>
// BatchNorm on half data, with its fp32 scale, shift and running statistics
// (uncast arguments), and no cast on either side.
// CHECK-NEXT: %[[BN:.*]] = fcc.batch_norm %[[C]], %arg2, %arg3, %arg4, %arg5 : (tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf16>
// CHECK-NEXT: %[[R:.*]] = fcc.relu %[[BN]] : tensor<2x4x4x4xf16>
// The ReLU output feeds two ops but is cast nowhere; the pool and the add
// stay in half.
// CHECK-NEXT: %[[P:.*]] = fcc.max_pool2d %[[R]] {{.*}} -> tensor<2x4x2x2xf16>
// CHECK-NEXT: %[[A:.*]] = fcc.add %[[P]], %[[P]] : (tensor<2x4x2x2xf16>, tensor<2x4x2x2xf16>) -> tensor<2x4x2x2xf16>
// CHECK-NEXT: %[[F:.*]] = fcc.flatten %[[A]] : tensor<2x4x2x2xf16> -> tensor<2x16xf16>
// CHECK-NEXT: %[[L:.*]] = fcc.linear %[[F]], %[[FW]], %[[FB]] : {{.*}} -> tensor<2x10xf16>
// The logits leave in fp32.
// CHECK-NEXT: %[[L32:.*]] = fcc.cast %[[L]] : tensor<2x10xf16> -> tensor<2x10xf32>
// CHECK-NEXT: return %[[L32]]
// CHECK-NOT:  fcc.cast

// BF16-LABEL: func.func @forward
// BF16: fcc.conv2d {{.*}} -> tensor<2x4x4x4xbf16>
// BF16-NEXT: fcc.batch_norm {{.*}} : (tensor<2x4x4x4xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xbf16>
// BF16: fcc.linear {{.*}} -> tensor<2x10xbf16>

// Training with loss scaling: gradients flow back through the casts (half
// gradients of half ops, cast up to fp32 before the fp32 optimizer), every
// update is unscaled by the loss scale and skipped unless all gradients are
// finite, and the skipped step is a metric.
// TRAIN-LABEL: func.func @train_step
// TRAIN-SAME: {fcc.hyper = "loss_scale"}
// TRAIN-SAME: {fcc.metric = "loss"}, tensor<f32> {fcc.metric = "correct"}, tensor<f32> {fcc.metric = "skipped"})
// The training-mode BatchNorm: half output, fp32 statistics.
// TRAIN:      %[[C:.*]] = fcc.conv2d {{.*}} -> tensor<2x4x4x4xf16>
// TRAIN-NEXT: %{{.*}}, %[[STATS:.*]]:4 = fcc.batch_norm %[[C]], %arg1, %arg2, %arg3, %arg4 {training = true} : (tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
// TRAIN-NEXT: fcc.relu {{.*}} : tensor<2x4x4x4xf16>
// TRAIN:      %[[DL:.*]] = fcc.softmax_xent_grad {{.*}} -> tensor<2x10xf32>
// TRAIN-NEXT: fcc.cast %[[DL]] : tensor<2x10xf32> -> tensor<2x10xf16>
// Its backward: half input gradient from the half ReLU gradient, fp32
// scale and shift gradients that go to the optimizer uncast.
// TRAIN:      %[[DR:.*]] = fcc.relu_grad {{.*}} : tensor<2x4x4x4xf16>
// TRAIN-NEXT: %[[DX:.*]], %[[DS:.*]], %[[DB:.*]] = fcc.batch_norm_grad %[[C]], %[[DR]], %arg1, %[[STATS]]#2, %[[STATS]]#3 : (tensor<2x4x4x4xf16>, tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>)
// TRAIN-NEXT: %[[DW:.*]] = fcc.conv2d_grad_weight %{{.*}}, %[[DX]] {{.*}} -> tensor<4x3x3x3xf16>
// TRAIN-NEXT: %[[DW32:.*]] = fcc.cast %[[DW]] : tensor<4x3x3x3xf16> -> tensor<4x3x3x3xf32>
// TRAIN:      %[[OK:.*]], %[[SKIP:.*]] = fcc.grads_finite %[[DW32]], %[[DS]], %[[DB]],
// TRAIN-NEXT: fcc.sgd_update %arg0, %[[DW32]], %{{.*}} scale %arg18 if %[[OK]] : tensor<4x3x3x3xf32>
// TRAIN-NEXT: fcc.sgd_update %arg1, %[[DS]], %{{.*}} scale %arg18 if %[[OK]] : tensor<4xf32>
// TRAIN-NEXT: fcc.sgd_update %arg2, %[[DB]], %{{.*}} scale %arg18 if %[[OK]] : tensor<4xf32>
// TRAIN:      return {{.*}}, %[[SKIP]] :

// An inference BatchNorm after a half convolution folds into its weights
// (fcc-fold-batchnorm): the fp32 master weight is folded, then cast to half
// (one rounding), with fp32 statistics.
// FOLD-LABEL: func.func @eval_step(
// FOLD:      %[[FW:.*]], %[[FB:.*]] = fcc.fold_bn %arg0, %arg1, %arg2, %arg3, %arg4 : (tensor<4x3x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<4x3x3x3xf32>, tensor<4xf32>)
// FOLD-NEXT: %[[HW:.*]] = fcc.cast %[[FW]] : tensor<4x3x3x3xf32> -> tensor<4x3x3x3xf16>
// FOLD-NEXT: %[[HB:.*]] = fcc.cast %[[FB]] : tensor<4xf32> -> tensor<4xf16>
// FOLD-NEXT: fcc.conv2d %{{.*}}, %[[HW]], %[[HB]] {{.*}} -> tensor<2x4x4x4xf16>

// BAD: fcc-insert-half: precision must be fp16 or bf16, got 'fp8'
func.func @forward(%x: tensor<2x3x4x4xf32> {fcc.input = "input"},
                   %w: tensor<4x3x3x3xf32> {fcc.param = #fcc.param<name = "conv.weight", role = weight, trainable = true>},
                   %s: tensor<4xf32> {fcc.param = #fcc.param<name = "bn.weight", role = bn_scale, trainable = true>},
                   %b: tensor<4xf32> {fcc.param = #fcc.param<name = "bn.bias", role = bn_shift, trainable = true>},
                   %m: tensor<4xf32> {fcc.param = #fcc.param<name = "bn.running_mean", role = running_mean, trainable = false>},
                   %v: tensor<4xf32> {fcc.param = #fcc.param<name = "bn.running_var", role = running_var, trainable = false>},
                   %fw: tensor<10x16xf32> {fcc.param = #fcc.param<name = "fc.weight", role = weight, trainable = true>},
                   %fb: tensor<10xf32> {fcc.param = #fcc.param<name = "fc.bias", role = bias, trainable = false>}) -> (tensor<2x10xf32> {fcc.output = "logits"}) {
  %0 = fcc.conv2d %x, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x3x4x4xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x4x4xf32>
  %1 = fcc.batch_norm %0, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %2 = fcc.relu %1 : tensor<2x4x4x4xf32>
  %3 = fcc.max_pool2d %2 {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<2x4x4x4xf32> -> tensor<2x4x2x2xf32>
  %4 = fcc.add %3, %3 : (tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>) -> tensor<2x4x2x2xf32>
  %5 = fcc.flatten %4 : tensor<2x4x2x2xf32> -> tensor<2x16xf32>
  %6 = fcc.linear %5, %fw, %fb : (tensor<2x16xf32>, tensor<10x16xf32>, tensor<10xf32>) -> tensor<2x10xf32>
  return %6 : tensor<2x10xf32>
}

// -----

// The fused BatchNorm (fcc-fuse-batchnorm runs before fcc-insert-half in the
// pipeline): half input, residual and output, so conv2d -> bn_act -> conv2d
// has no cast in between. The residual is the network input, cast once for
// both of its uses.
// CHECK-LABEL: func.func @forward
// CHECK:      %[[WH:.*]] = fcc.cast %arg1 : tensor<4x4x3x3xf32> -> tensor<4x4x3x3xf16>
// CHECK-NEXT: %[[XH:.*]] = fcc.cast %arg0 : tensor<2x4x4x4xf32> -> tensor<2x4x4x4xf16>
// CHECK-NEXT: %[[C:.*]] = fcc.conv2d %[[XH]], %[[WH]] {{.*}} -> tensor<2x4x4x4xf16>
// CHECK-NEXT: %[[Y:.*]] = fcc.bn_act %[[C]], %arg2, %arg3, %arg4, %arg5 residual %[[XH]] : (tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x4x4xf16>) -> tensor<2x4x4x4xf16>
// CHECK-NEXT: fcc.conv2d %[[Y]], %[[WH]] {{.*}} -> tensor<2x4x4x4xf16>
// CHECK-NOT:  fcc.cast {{.*}}x4x4x4
// BF16-LABEL: func.func @forward
// BF16: fcc.bn_act {{.*}} : (tensor<2x4x4x4xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x4x4xbf16>) -> tensor<2x4x4x4xbf16>

// Training: the statistics are fp32, the input gradient of the fused
// backward is half, its scale and shift gradients fp32.
// TRAIN-LABEL: func.func @train_step
// TRAIN:      %[[C:.*]] = fcc.conv2d {{.*}} -> tensor<2x4x4x4xf16>
// TRAIN-NEXT: %[[Y:.*]], %[[STATS:.*]]:4 = fcc.bn_act %[[C]], %arg1, %arg2, %arg3, %arg4 residual %{{.*}} {training = true} : ({{.*}}) -> (tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
// TRAIN-NEXT: fcc.conv2d %[[Y]], {{.*}} -> tensor<2x4x4x4xf16>
// TRAIN:      %[[DY:.*]] = fcc.conv2d_grad_input {{.*}} -> tensor<2x4x4x4xf16>
// TRAIN:      %[[DX:.*]], %[[DS:.*]], %[[DB:.*]] = fcc.bn_act_grad %[[C]], %[[DY]], %arg1, %arg2, %[[STATS]]#2, %[[STATS]]#3 : (tensor<2x4x4x4xf16>, tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>)
// TRAIN-NEXT: fcc.conv2d_grad_weight %{{.*}}, %[[DX]] {{.*}} -> tensor<4x4x3x3xf16>
// TRAIN:      fcc.grads_finite %{{.*}}, %[[DS]], %[[DB]], %{{.*}} : tensor<4x4x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<10x64xf32>

// Evaluation: the inference fused BatchNorm folds too; its activation and
// residual add stay in half.
// FOLD-LABEL: func.func @eval_step(
// FOLD:      %[[FW:.*]], %[[FB:.*]] = fcc.fold_bn %arg0, %arg1, %arg2, %arg3, %arg4 : (tensor<4x4x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<4x4x3x3xf32>, tensor<4xf32>)
// FOLD-NEXT: %[[HW:.*]] = fcc.cast %[[FW]] : tensor<4x4x3x3xf32> -> tensor<4x4x3x3xf16>
// FOLD-NEXT: %[[HB:.*]] = fcc.cast %[[FB]] : tensor<4xf32> -> tensor<4xf16>
// FOLD-NEXT: fcc.conv2d %{{.*}}, %[[HW]], %[[HB]] {{.*}} : (tensor<2x4x4x4xf16>, tensor<4x4x3x3xf16>, tensor<4xf16>) -> tensor<2x4x4x4xf16>
// FOLD-NEXT: fcc.relu {{.*}} : tensor<2x4x4x4xf16>
// FOLD-NEXT: fcc.add {{.*}} -> tensor<2x4x4x4xf16>
func.func @forward(%x: tensor<2x4x4x4xf32> {fcc.input = "input"},
                   %w: tensor<4x4x3x3xf32> {fcc.param = #fcc.param<name = "conv.weight", role = weight, trainable = true>},
                   %s: tensor<4xf32> {fcc.param = #fcc.param<name = "bn.weight", role = bn_scale, trainable = true>},
                   %b: tensor<4xf32> {fcc.param = #fcc.param<name = "bn.bias", role = bn_shift, trainable = true>},
                   %m: tensor<4xf32> {fcc.param = #fcc.param<name = "bn.running_mean", role = running_mean, trainable = false>},
                   %v: tensor<4xf32> {fcc.param = #fcc.param<name = "bn.running_var", role = running_var, trainable = false>},
                   %fw: tensor<10x64xf32> {fcc.param = #fcc.param<name = "fc.weight", role = weight, trainable = true>}) -> (tensor<2x10xf32> {fcc.output = "logits"}) {
  %0 = fcc.conv2d %x, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x4x4xf32>, tensor<4x4x3x3xf32>) -> tensor<2x4x4x4xf32>
  %1 = fcc.bn_act %0, %s, %b, %m, %v residual %x : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
  %2 = fcc.conv2d %1, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x4x4xf32>, tensor<4x4x3x3xf32>) -> tensor<2x4x4x4xf32>
  %3 = fcc.flatten %2 : tensor<2x4x4x4xf32> -> tensor<2x64xf32>
  %4 = fcc.linear %3, %fw {trans_b = true} : (tensor<2x64xf32>, tensor<10x64xf32>) -> tensor<2x10xf32>
  return %4 : tensor<2x10xf32>
}
