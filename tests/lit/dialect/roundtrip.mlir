// RUN: fcc-opt %s | fcc-opt | FileCheck %s
// Every op and attribute prints and parses back to the same IR.

// CHECK-LABEL: func.func @forward
// CHECK-SAME: {fcc.input = "input"}
// CHECK-SAME: {fcc.param = #fcc.param<name = "conv.weight", role = weight, trainable = true>}
// CHECK-SAME: {fcc.param = #fcc.param<name = "bn.weight", role = bn_scale, trainable = false>}
// CHECK-SAME: -> (tensor<2x10xf32> {fcc.output = "logits"})
func.func @forward(%x: tensor<2x3x8x8xf32> {fcc.input = "input"},
                   %w: tensor<4x3x3x3xf32> {fcc.param = #fcc.param<name = "conv.weight", role = weight, trainable = true>},
                   %s: tensor<4xf32> {fcc.param = #fcc.param<name = "bn.weight", role = bn_scale, trainable = false>},
                   %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>,
                   %fw: tensor<10x64xf32>, %fb: tensor<10xf32>) -> (tensor<2x10xf32> {fcc.output = "logits"}) {
  // CHECK: fcc.conv2d %{{.*}}, %{{.*}} {pads = array<i64: 1, 1, 1, 1>}
  %0 = fcc.conv2d %x, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x8x8xf32>
  // CHECK: fcc.batch_norm {{.*}} {training = true}
  %1:5 = fcc.batch_norm %0, %s, %b, %m, %v {training = true} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  // CHECK: fcc.celu %{{.*}} {alpha = 3.000000e-01 : f32}
  %2 = fcc.celu %1#0 {alpha = 0.3 : f32} : tensor<2x4x8x8xf32>
  // CHECK: fcc.relu
  %3 = fcc.relu %2 : tensor<2x4x8x8xf32>
  // CHECK: fcc.max_pool2d %{{.*}} {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>}
  %4 = fcc.max_pool2d %3 {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<2x4x8x8xf32> -> tensor<2x4x4x4xf32>
  // CHECK: fcc.avg_pool2d %{{.*}} {count_include_pad = true, kernel = array<i64: 3, 3>, pads = array<i64: 1, 1, 1, 1>}
  %5 = fcc.avg_pool2d %4 {kernel = array<i64: 3, 3>, pads = array<i64: 1, 1, 1, 1>, count_include_pad = true} : tensor<2x4x4x4xf32> -> tensor<2x4x4x4xf32>
  // CHECK: fcc.add
  %6 = fcc.add %4, %5 : (tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
  // CHECK: fcc.mul %{{.*}}, %{{.*}} :
  %7 = fcc.mul %6, %6 : (tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
  // CHECK: fcc.dropout %{{.*}} {ratio = 1.000000e-01 : f32, training = true}
  %8 = fcc.dropout %7 {ratio = 0.1 : f32, training = true} : tensor<2x4x4x4xf32>
  // CHECK: fcc.flatten
  %9 = fcc.flatten %8 : tensor<2x4x4x4xf32> -> tensor<2x64xf32>
  // CHECK: fcc.linear %{{.*}}, %{{.*}}, %{{.*}} :
  %10 = fcc.linear %9, %fw, %fb : (tensor<2x64xf32>, tensor<10x64xf32>, tensor<10xf32>) -> tensor<2x10xf32>
  // CHECK: fcc.reshape
  %11 = fcc.reshape %10 : tensor<2x10xf32> -> tensor<20xf32>
  %12 = fcc.reshape %11 : tensor<20xf32> -> tensor<2x10xf32>
  // CHECK: fcc.softmax %{{.*}} {axis = 1 : i64}
  %13 = fcc.softmax %12 {axis = 1} : tensor<2x10xf32>
  // CHECK: fcc.mul %{{.*}} {scalar = 1.250000e-01 : f64}
  %14 = fcc.mul %13 {scalar = 0.125} : (tensor<2x10xf32>) -> tensor<2x10xf32>
  return %14 : tensor<2x10xf32>
}

// BatchNorm on half data (fcc-insert-half): f16/bf16 input, output and input
// gradient; f32 parameters, statistics and parameter gradients.
// CHECK-LABEL: func.func @half_batch_norm
// CHECK: fcc.batch_norm {{.*}} {training = true} : (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
// CHECK: fcc.batch_norm_grad {{.*}} : (tensor<2x4x8x8xf16>, tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>)
// CHECK: fcc.batch_norm {{.*}} : (tensor<2x4x8x8xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xbf16>
func.func @half_batch_norm(%x: tensor<2x4x8x8xf16>, %y: tensor<2x4x8x8xbf16>, %s: tensor<4xf32>) {
  %0:5 = fcc.batch_norm %x, %s, %s, %s, %s {training = true} : (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  %1:3 = fcc.batch_norm_grad %x, %0#0, %s, %0#3, %0#4 : (tensor<2x4x8x8xf16>, tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>)
  %2 = fcc.batch_norm %y, %s, %s, %s, %s : (tensor<2x4x8x8xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xbf16>
  return
}
