// RUN: fcc-opt %s --split-input-file --verify-diagnostics --fcc-build-training="bias-lr-mult=64 bias-wd-mult=0.015625" | FileCheck %s
//
// fcc-build-training derives the training program from @forward: the train
// step (forward in training mode, loss, backward, SGD), the evaluation steps
// (inference-mode BatchNorm, optionally with the flipped batch) and the EMA
// update. Frozen parameters get no gradient; gradients nobody needs (the
// first convolution's input gradient) are never built.

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
    %4 = fcc.flatten %3 : tensor<2x4x2x2xf32> -> tensor<2x16xf32>
    %5 = fcc.linear %4, %fw, %fb : (tensor<2x16xf32>, tensor<10x16xf32>, tensor<10xf32>) -> tensor<2x10xf32>
    return %5 : tensor<2x10xf32>
}

// CHECK-LABEL: func.func @train_step
// The parameters, then one momentum buffer per trainable parameter, the
// batch, the labels and the step's hyper-parameters.
// CHECK-SAME: {fcc.state = "momentum:conv.weight"}
// CHECK-SAME: {fcc.state = "momentum:fc.weight"}
// CHECK-NOT: momentum:fc.bias
// CHECK-SAME: {fcc.input = "labels", fcc.labels}
// CHECK-SAME: {fcc.hyper = "lr"}
// CHECK-SAME: {fcc.hyper = "seed"}
// Updated parameters and buffers name the argument they replace; the new
// running statistics update the running mean/variance arguments (3 and 4).
// CHECK-SAME: {fcc.updates = 0 : i64}
// CHECK-SAME: {fcc.updates = 3 : i64}, tensor<4xf32> {fcc.updates = 4 : i64}, tensor<f32> {fcc.metric = "loss"}, tensor<f32> {fcc.metric = "correct"})
// CHECK:      %[[CONV:.*]] = fcc.conv2d %[[X:arg11]], %arg0
// CHECK:      %[[BN:.*]], %[[STATS:.*]]:4 = fcc.batch_norm %[[CONV]], {{.*}} {training = true}
// CHECK:      %[[RELU:.*]] = fcc.relu %[[BN]]
// CHECK:      %[[LOGITS:.*]] = fcc.linear
// CHECK:      %[[LOSS:.*]] = fcc.softmax_xent %[[LOGITS]], %arg12, %arg17
// CHECK:      %[[CORRECT:.*]] = fcc.count_correct %[[LOGITS]], %arg12
// CHECK:      %[[DLOGITS:.*]] = fcc.softmax_xent_grad %[[LOGITS]], %arg12, %arg17, %arg18
// The linear layer's input and weight gradients (no bias gradient: frozen).
// CHECK:      fcc.linear %[[DLOGITS]], %arg5 {trans_b = false}
// CHECK:      %[[DFC:.*]] = fcc.linear %[[DLOGITS]], %{{.*}} {trans_a = true, trans_b = false}
// CHECK:      fcc.max_pool2d_grad %[[RELU]]
// CHECK:      fcc.relu_grad %[[BN]]
// CHECK:      %[[DX:.*]], %[[DSCALE:.*]], %[[DSHIFT:.*]] = fcc.batch_norm_grad %[[CONV]], {{.*}}, %arg1, %[[STATS]]#2, %[[STATS]]#3
// CHECK:      %[[DW:.*]] = fcc.conv2d_grad_weight %[[X]], %[[DX]]
// CHECK-NOT:  fcc.conv2d_grad_input
// Weights keep lr and wd; BatchNorm scale and shift get the bias group's
// multipliers.
// CHECK:      fcc.sgd_update %arg0, %[[DW]], %arg7, %arg13, %arg14, %arg15, %arg16 : tensor<4x3x3x3xf32>
// CHECK:      fcc.sgd_update %arg1, %[[DSCALE]], %arg8, {{.*}} {lr_mult = 6.400000e+01 : f32, wd_mult = 1.562500e-02 : f32}
// CHECK:      fcc.sgd_update %arg2, %[[DSHIFT]], %arg9, {{.*}} {lr_mult = 6.400000e+01 : f32, wd_mult = 1.562500e-02 : f32}
// CHECK:      fcc.sgd_update %arg5, %[[DFC]], %arg10,
// CHECK-NOT:  fcc.sgd_update
// CHECK:      return {{.*}}, %[[STATS]]#0, %[[STATS]]#1, %[[LOSS]], %[[CORRECT]]

// CHECK-LABEL: func.func @eval_step
// CHECK-SAME: {fcc.hyper = "label_smoothing"}) -> (tensor<f32> {fcc.metric = "loss"}, tensor<f32> {fcc.metric = "correct"})
// CHECK-NOT:  training = true
// CHECK:      fcc.softmax_xent
// CHECK:      fcc.count_correct

// Test-time augmentation: the mean of the logits of the batch and of its
// mirror image.
// CHECK-LABEL: func.func @eval_step_tta
// CHECK:      %[[L1:.*]] = fcc.linear
// CHECK:      %[[FLIP:.*]] = fcc.flip %arg7
// CHECK:      fcc.conv2d %[[FLIP]], %arg0
// CHECK:      %[[L2:.*]] = fcc.linear
// CHECK:      %[[SUM:.*]] = fcc.add %[[L1]], %[[L2]]
// CHECK:      %[[MEAN:.*]] = fcc.mul %[[SUM]] {scalar = 5.000000e-01 : f64}
// CHECK:      fcc.softmax_xent %[[MEAN]]

// The EMA covers every parameter, running statistics and frozen ones too.
// CHECK-LABEL: func.func @ema_update
// CHECK-SAME: {fcc.state = "ema:bn.running_var"}
// CHECK-SAME: {fcc.hyper = "decay"}
// CHECK-COUNT-7: fcc.ema_update
// CHECK:      return

// -----

// expected-error @+1 {{fcc trains models with exactly one data input, this one has 2}}
func.func @forward(%x: tensor<2x3x4x4xf32> {fcc.input = "a"}, %y: tensor<2x3x4x4xf32> {fcc.input = "b"}) -> (tensor<2x3x4x4xf32> {fcc.output = "logits"}) {
  %0 = fcc.add %x, %y : (tensor<2x3x4x4xf32>, tensor<2x3x4x4xf32>) -> tensor<2x3x4x4xf32>
  return %0 : tensor<2x3x4x4xf32>
}

// -----

// expected-error @+1 {{the data input must be a float32 NCHW image batch, got 'tensor<4x6xf32>'}}
func.func @forward(%x: tensor<4x6xf32> {fcc.input = "x"}, %w: tensor<3x6xf32> {fcc.param = #fcc.param<name = "w", role = weight, trainable = true>}) -> (tensor<4x3xf32> {fcc.output = "logits"}) {
  %0 = fcc.linear %x, %w : (tensor<4x6xf32>, tensor<3x6xf32>) -> tensor<4x3xf32>
  return %0 : tensor<4x3xf32>
}

// -----

// expected-error @+1 {{no @forward function}}
module {
  func.func @a() {
    return
  }
  func.func @b() {
    return
  }
}
