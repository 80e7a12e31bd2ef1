// RUN: fcc-opt %s --split-input-file --fcc-fuse-batchnorm | FileCheck %s
// RUN: fcc-opt %s --split-input-file --fcc-fuse-batchnorm --mlir-print-debuginfo | FileCheck %s --check-prefix=LOC
//
// fcc-fuse-batchnorm turns batch_norm -> relu|celu [-> max_pool2d]
// [-> add(residual)] into one fcc.bn_act when every intermediate value has
// exactly one user; anything else stays as it is.

// ResNet9's conv_bn with pooling: BN -> ReLU -> MaxPool 2. The pooled value
// has two users (a residual block and its add), which is fine: it is the
// fused op's output. The block's second conv_bn ends in the residual add.
// CHECK-LABEL: func.func @resnet9_layer
// CHECK-SAME:    (%[[X:.*]]: tensor<2x3x8x8xf32>, %[[W1:.*]]: tensor<4x3x3x3xf32>, %[[S:.*]]: tensor<4xf32>, %[[B:.*]]: tensor<4xf32>, %[[M:.*]]: tensor<4xf32>, %[[V:.*]]: tensor<4xf32>, %[[W2:.*]]: tensor<4x4x3x3xf32>)
// CHECK:       %[[C1:.*]] = fcc.conv2d %[[X]], %[[W1]]
// CHECK-NEXT:  %[[P:.*]] = fcc.bn_act %[[C1]], %[[S]], %[[B]], %[[M]], %[[V]] {momentum = 2.000000e-01 : f32, pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
// CHECK-NEXT:  %[[C2:.*]] = fcc.conv2d %[[P]], %[[W2]]
// CHECK-NEXT:  %[[Y:.*]] = fcc.bn_act %[[C2]], %[[S]], %[[B]], %[[M]], %[[V]] residual %[[P]] {epsilon = 1.000000e-03 : f32} : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
// CHECK-NEXT:  return %[[Y]]
// CHECK-NOT:   fcc.batch_norm
// The ONNX node names survive in the location (for code comments and plans).
// LOC:         loc("layer1.bn+layer1.relu+layer1.pool"
// LOC:         loc("res.bn+res.relu+res.add"
func.func @resnet9_layer(%x: tensor<2x3x8x8xf32>, %w1: tensor<4x3x3x3xf32>,
                         %s: tensor<4xf32>, %b: tensor<4xf32>, %m: tensor<4xf32>,
                         %v: tensor<4xf32>, %w2: tensor<4x4x3x3xf32>) -> tensor<2x4x4x4xf32> {
  %c1 = fcc.conv2d %x, %w1 {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x8x8xf32>
  %n1 = fcc.batch_norm %c1, %s, %b, %m, %v {momentum = 0.2 : f32} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32> loc("layer1.bn")
  %r1 = fcc.relu %n1 : tensor<2x4x8x8xf32> loc("layer1.relu")
  %p = fcc.max_pool2d %r1 {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<2x4x8x8xf32> -> tensor<2x4x4x4xf32> loc("layer1.pool")
  %c2 = fcc.conv2d %p, %w2 {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x4x4xf32>, tensor<4x4x3x3xf32>) -> tensor<2x4x4x4xf32>
  %n2 = fcc.batch_norm %c2, %s, %b, %m, %v {epsilon = 1.0e-3 : f32} : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32> loc("res.bn")
  %r2 = fcc.relu %n2 : tensor<2x4x4x4xf32> loc("res.relu")
  %y = fcc.add %p, %r2 : (tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32> loc("res.add")
  return %y : tensor<2x4x4x4xf32>
}

// -----

// ResNet9-bot: the pool comes before the BN (so it is not fused), CELU with
// its alpha, the residual on the left of the add.
// CHECK-LABEL: func.func @bot_layer
// CHECK:       %[[P:.*]] = fcc.max_pool2d
// CHECK-NEXT:  %[[A:.*]] = fcc.bn_act %[[P]], {{.*}} {activation = "celu", alpha = 3.000000e-01 : f32}
// CHECK-NEXT:  %[[Y:.*]] = fcc.bn_act %{{.*}} residual %[[A]] {activation = "celu", alpha = 3.000000e-01 : f32}
// CHECK-NEXT:  return %[[Y]]
func.func @bot_layer(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                     %m: tensor<4xf32>, %v: tensor<4xf32>, %r: tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32> {
  %p = fcc.max_pool2d %x {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<2x4x8x8xf32> -> tensor<2x4x4x4xf32>
  %n = fcc.batch_norm %p, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %a = fcc.celu %n {alpha = 0.3 : f32} : tensor<2x4x4x4xf32>
  %n2 = fcc.batch_norm %r, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %a2 = fcc.celu %n2 {alpha = 0.3 : f32} : tensor<2x4x4x4xf32>
  %y = fcc.add %a, %a2 : (tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
  return %y : tensor<2x4x4x4xf32>
}

// -----

// An ONNX training-mode BatchNorm whose statistics nobody uses fuses into a
// training-mode bn_act with the same four statistics results.
// CHECK-LABEL: func.func @training_mode
// CHECK:       %{{.*}}, %{{.*}}:4 = fcc.bn_act %arg0, %arg1, %arg2, %arg3, %arg4 {running_var_unbiased = false, training = true} : ({{.*}}) -> (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
// CHECK-NOT:   fcc.relu
func.func @training_mode(%x: tensor<2x4x4x4xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                         %m: tensor<4xf32>, %v: tensor<4xf32>) -> tensor<2x4x4x4xf32> {
  %n:5 = fcc.batch_norm %x, %s, %b, %m, %v {training = true, running_var_unbiased = false} : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  %r = fcc.relu %n#0 : tensor<2x4x4x4xf32>
  return %r : tensor<2x4x4x4xf32>
}

//===----------------------------------------------------------------------===//
// What must not fuse
//===----------------------------------------------------------------------===//

// -----

// The BN output has another user (it would have to be materialised anyway):
// nothing fuses.
// CHECK-LABEL: func.func @bn_output_used_twice
// CHECK-NOT:   fcc.bn_act
// CHECK:       fcc.batch_norm
// CHECK-NEXT:  fcc.relu
func.func @bn_output_used_twice(%x: tensor<2x4x4x4xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                                %m: tensor<4xf32>, %v: tensor<4xf32>) -> (tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>) {
  %n = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %r = fcc.relu %n : tensor<2x4x4x4xf32>
  return %r, %n : tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>
}

// -----

// The activation's output has another user: BN + ReLU fuse, the pool and the
// other user read the fused output.
// CHECK-LABEL: func.func @activation_used_twice
// CHECK:       %[[A:.*]] = fcc.bn_act %arg0, %arg1, %arg2, %arg3, %arg4 :
// CHECK-NOT:   pool_kernel
// CHECK-NEXT:  %[[P:.*]] = fcc.max_pool2d %[[A]]
// CHECK-NEXT:  return %[[P]], %[[A]]
func.func @activation_used_twice(%x: tensor<2x4x4x4xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                                 %m: tensor<4xf32>, %v: tensor<4xf32>) -> (tensor<2x4x2x2xf32>, tensor<2x4x4x4xf32>) {
  %n = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %r = fcc.relu %n : tensor<2x4x4x4xf32>
  %p = fcc.max_pool2d %r {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<2x4x4x4xf32> -> tensor<2x4x2x2xf32>
  return %p, %r : tensor<2x4x2x2xf32>, tensor<2x4x4x4xf32>
}

// -----

// The pooled value feeds two users: the pool joins, the add does not.
// CHECK-LABEL: func.func @pool_used_twice
// CHECK:       %[[P:.*]] = fcc.bn_act {{.*}} {pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>}
// CHECK-NEXT:  %[[Y:.*]] = fcc.add %[[P]], %arg5
// CHECK-NEXT:  return %[[Y]], %[[P]]
func.func @pool_used_twice(%x: tensor<2x4x4x4xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                           %m: tensor<4xf32>, %v: tensor<4xf32>, %r: tensor<2x4x2x2xf32>) -> (tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>) {
  %n = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %a = fcc.relu %n : tensor<2x4x4x4xf32>
  %p = fcc.max_pool2d %a {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<2x4x4x4xf32> -> tensor<2x4x2x2xf32>
  %y = fcc.add %p, %r : (tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>) -> tensor<2x4x2x2xf32>
  return %y, %p : tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>
}

// -----

// Pools with padding, dilation or ceil mode stay separate ops.
// CHECK-LABEL: func.func @padded_pool
// CHECK:       %[[A:.*]] = fcc.bn_act %arg0, %arg1, %arg2, %arg3, %arg4 :
// CHECK-NEXT:  fcc.max_pool2d %[[A]] {kernel = array<i64: 3, 3>, pads = array<i64: 1, 1, 1, 1>, strides = array<i64: 2, 2>}
// CHECK:       %[[A2:.*]] = fcc.bn_act %arg0, %arg1, %arg2, %arg3, %arg4 :
// CHECK-NEXT:  fcc.max_pool2d %[[A2]] {ceil_mode = true, kernel = array<i64: 3, 3>, strides = array<i64: 2, 2>}
func.func @padded_pool(%x: tensor<2x4x4x4xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                       %m: tensor<4xf32>, %v: tensor<4xf32>) -> (tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>) {
  %n = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %a = fcc.relu %n : tensor<2x4x4x4xf32>
  %p = fcc.max_pool2d %a {kernel = array<i64: 3, 3>, strides = array<i64: 2, 2>, pads = array<i64: 1, 1, 1, 1>} : tensor<2x4x4x4xf32> -> tensor<2x4x2x2xf32>
  %n2 = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %a2 = fcc.relu %n2 : tensor<2x4x4x4xf32>
  %p2 = fcc.max_pool2d %a2 {kernel = array<i64: 3, 3>, strides = array<i64: 2, 2>, ceil_mode = true} : tensor<2x4x4x4xf32> -> tensor<2x4x2x2xf32>
  return %p, %p2 : tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>
}

// -----

// A broadcasting add (a per-channel bias) is not a residual.
// CHECK-LABEL: func.func @broadcast_add
// CHECK:       %[[A:.*]] = fcc.bn_act %arg0, %arg1, %arg2, %arg3, %arg4 :
// CHECK-NEXT:  fcc.add %[[A]], %arg5 : (tensor<2x4x4x4xf32>, tensor<1x4x1x1xf32>)
func.func @broadcast_add(%x: tensor<2x4x4x4xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                         %m: tensor<4xf32>, %v: tensor<4xf32>, %c: tensor<1x4x1x1xf32>) -> tensor<2x4x4x4xf32> {
  %n = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %a = fcc.relu %n : tensor<2x4x4x4xf32>
  %y = fcc.add %a, %c : (tensor<2x4x4x4xf32>, tensor<1x4x1x1xf32>) -> tensor<2x4x4x4xf32>
  return %y : tensor<2x4x4x4xf32>
}

// -----

// x + x is not a residual add of the activation (its output has two uses).
// CHECK-LABEL: func.func @add_to_itself
// CHECK:       %[[A:.*]] = fcc.bn_act
// CHECK-NEXT:  fcc.add %[[A]], %[[A]]
func.func @add_to_itself(%x: tensor<2x4x4x4xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                         %m: tensor<4xf32>, %v: tensor<4xf32>) -> tensor<2x4x4x4xf32> {
  %n = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %a = fcc.relu %n : tensor<2x4x4x4xf32>
  %y = fcc.add %a, %a : (tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
  return %y : tensor<2x4x4x4xf32>
}

// -----

// No activation right after the BN (BN -> pool -> ReLU, BN -> add -> ReLU,
// or nothing): no fusion.
// CHECK-LABEL: func.func @no_activation
// CHECK-NOT:   fcc.bn_act
func.func @no_activation(%x: tensor<2x4x4x4xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                         %m: tensor<4xf32>, %v: tensor<4xf32>) -> (tensor<2x4x2x2xf32>, tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>) {
  %n = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %p = fcc.max_pool2d %n {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<2x4x4x4xf32> -> tensor<2x4x2x2xf32>
  %r = fcc.relu %p : tensor<2x4x2x2xf32>
  %n2 = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  %y = fcc.add %n2, %x : (tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
  %r2 = fcc.relu %y : tensor<2x4x4x4xf32>
  %n3 = fcc.batch_norm %x, %s, %b, %m, %v : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  return %r, %r2, %n3 : tensor<2x4x2x2xf32>, tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>
}

// -----

// Training-mode statistics in use (a training program's batch_norm_grad
// needs them): no fusion. Neither for a BN over a 2-D (NC) input.
// CHECK-LABEL: func.func @stats_used
// CHECK-NOT:   fcc.bn_act
func.func @stats_used(%x: tensor<2x4x4x4xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>,
                      %m: tensor<4xf32>, %v: tensor<4xf32>, %f: tensor<8x4xf32>) -> (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<8x4xf32>) {
  %n:5 = fcc.batch_norm %x, %s, %b, %m, %v {training = true} : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  %r = fcc.relu %n#0 : tensor<2x4x4x4xf32>
  %n2 = fcc.batch_norm %f, %s, %b, %m, %v : (tensor<8x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<8x4xf32>
  %r2 = fcc.relu %n2 : tensor<8x4xf32>
  return %r, %n#3, %r2 : tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<8x4xf32>
}
