// RUN: fcc-opt %s --fcc-test-vjp | FileCheck %s
//
// fcc-test-vjp adds @f_vjp(args, cotangent) -> gradients of the arguments for
// every @f, exposing each differentiation rule of passes/Autodiff.cpp as IR.
// These checks pin the structure of the rules (which gradient op, which saved
// values, how broadcasting is undone); their numerics are checked against
// finite differences in tests/unit/gradcheck.

// Linear: dx = dy W (no transpose of the weight), dW = dy^T x; the ReLU rule
// reads the ReLU's input.
// CHECK-LABEL: func.func @linear_vjp
// CHECK-SAME: (%[[X:.*]]: tensor<2x3xf32>, %[[W:.*]]: tensor<4x3xf32>, %[[DY:.*]]: tensor<2x4xf32>) -> (tensor<2x3xf32>, tensor<4x3xf32>)
// CHECK:      %[[H:.*]] = fcc.relu %[[X]]
// CHECK:      %[[DH:.*]] = fcc.linear %[[DY]], %[[W]] {trans_b = false}
// CHECK:      %[[DW:.*]] = fcc.linear %[[DY]], %[[H]] {trans_a = true, trans_b = false}
// CHECK:      %[[DX:.*]] = fcc.relu_grad %[[X]], %[[DH]]
// CHECK:      return %[[DX]], %[[DW]]
func.func @linear(%x: tensor<2x3xf32>, %w: tensor<4x3xf32>) -> tensor<2x4xf32> {
  %0 = fcc.relu %x : tensor<2x3xf32>
  %1 = fcc.linear %0, %w : (tensor<2x3xf32>, tensor<4x3xf32>) -> tensor<2x4xf32>
  return %1 : tensor<2x4xf32>
}

// Convolution: data and filter gradients; the bias gradient sums dy over
// batch and space.
// CHECK-LABEL: func.func @conv_vjp
// CHECK-SAME: (%[[X:.*]]: tensor<2x3x5x5xf32>, %[[W:.*]]: tensor<4x3x3x3xf32>, %{{.*}}: tensor<4xf32>, %[[DY:.*]]: tensor<2x4x3x3xf32>)
// CHECK:      %[[DX:.*]] = fcc.conv2d_grad_input %[[DY]], %[[W]] : (tensor<2x4x3x3xf32>, tensor<4x3x3x3xf32>) -> tensor<2x3x5x5xf32>
// CHECK:      %[[DW:.*]] = fcc.conv2d_grad_weight %[[X]], %[[DY]] : (tensor<2x3x5x5xf32>, tensor<2x4x3x3xf32>) -> tensor<4x3x3x3xf32>
// CHECK:      %[[DB:.*]] = fcc.reduce_sum %[[DY]] {axes = array<i64: 0, 2, 3>} : tensor<2x4x3x3xf32> -> tensor<4xf32>
// CHECK:      return %[[DX]], %[[DW]], %[[DB]]
func.func @conv(%x: tensor<2x3x5x5xf32>, %w: tensor<4x3x3x3xf32>, %b: tensor<4xf32>) -> tensor<2x4x3x3xf32> {
  %0 = fcc.conv2d %x, %w, %b : (tensor<2x3x5x5xf32>, tensor<4x3x3x3xf32>, tensor<4xf32>) -> tensor<2x4x3x3xf32>
  return %0 : tensor<2x4x3x3xf32>
}

// Broadcasting: the gradient of the broadcast operand is summed over the
// broadcast axes and reshaped back; x's two uses (add and mul) accumulate.
// CHECK-LABEL: func.func @bcast_vjp
// CHECK-SAME: (%[[X:.*]]: tensor<2x3x4xf32>, %{{.*}}: tensor<3x1xf32>, %[[DY:.*]]: tensor<2x3x4xf32>)
// CHECK:      %[[S:.*]] = fcc.add %[[X]]
// CHECK:      %[[DS:.*]] = fcc.mul %[[DY]], %[[X]]
// CHECK:      %[[DXM:.*]] = fcc.mul %[[DY]], %[[S]]
// CHECK:      %[[R:.*]] = fcc.reduce_sum %[[DS]] {axes = array<i64: 0, 2>} : tensor<2x3x4xf32> -> tensor<3xf32>
// CHECK:      %[[DYB:.*]] = fcc.reshape %[[R]] : tensor<3xf32> -> tensor<3x1xf32>
// CHECK:      %[[DX:.*]] = fcc.add %[[DXM]], %[[DS]]
// CHECK:      return %[[DX]], %[[DYB]]
func.func @bcast(%x: tensor<2x3x4xf32>, %y: tensor<3x1xf32>) -> tensor<2x3x4xf32> {
  %0 = fcc.add %x, %y : (tensor<2x3x4xf32>, tensor<3x1xf32>) -> tensor<2x3x4xf32>
  %1 = fcc.mul %0, %x : (tensor<2x3x4xf32>, tensor<2x3x4xf32>) -> tensor<2x3x4xf32>
  return %1 : tensor<2x3x4xf32>
}

// Pooling: gradients flow back through the average, then to the max
// positions of the max pooling's input.
// CHECK-LABEL: func.func @pool_vjp
// CHECK-SAME: (%[[X:.*]]: tensor<1x2x4x4xf32>, %[[DY:.*]]: tensor<1x2x1x1xf32>)
// CHECK:      %[[DA:.*]] = fcc.avg_pool2d_grad %[[DY]] {kernel = array<i64: 2, 2>} : (tensor<1x2x1x1xf32>) -> tensor<1x2x2x2xf32>
// CHECK:      %[[DX:.*]] = fcc.max_pool2d_grad %[[X]], %[[DA]] {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>}
// CHECK:      return %[[DX]]
func.func @pool(%x: tensor<1x2x4x4xf32>) -> tensor<1x2x1x1xf32> {
  %0 = fcc.max_pool2d %x {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<1x2x4x4xf32> -> tensor<1x2x2x2xf32>
  %1 = fcc.avg_pool2d %0 {kernel = array<i64: 2, 2>} : tensor<1x2x2x2xf32> -> tensor<1x2x1x1xf32>
  return %1 : tensor<1x2x1x1xf32>
}

// An argument the result does not depend on gets a zero gradient.
// CHECK-LABEL: func.func @unused_vjp
// CHECK:      %[[DX:.*]] = fcc.celu_grad %arg0, %arg2 {alpha = 3.000000e-01 : f32}
// CHECK:      %[[ZERO:.*]] = arith.constant dense<0.000000e+00> : tensor<3xf32>
// CHECK:      return %[[DX]], %[[ZERO]]
func.func @unused(%x: tensor<3xf32>, %y: tensor<3xf32>) -> tensor<3xf32> {
  %0 = fcc.celu %x {alpha = 0.3 : f32} : tensor<3xf32>
  return %0 : tensor<3xf32>
}

// Fused BatchNorm: one fcc.bn_act_grad from the input, the output gradient,
// scale, shift and the batch statistics (the normalised and activated values
// are recomputed, not saved); the residual's gradient is dy itself.
// CHECK-LABEL: func.func @bn_act_vjp
// CHECK-SAME: (%[[X:.*]]: tensor<2x3x4x4xf32>, %[[S:.*]]: tensor<3xf32>, %[[B:.*]]: tensor<3xf32>, %[[R:.*]]: tensor<2x3x2x2xf32>, %[[DY:.*]]: tensor<2x3x2x2xf32>)
// CHECK:      %{{.*}}, %[[STATS:.*]]:4 = fcc.bn_act %[[X]], %[[S]], %[[B]], %{{.*}}, %{{.*}} residual %[[R]]
// CHECK:      %[[DX:.*]], %[[DS:.*]], %[[DB:.*]] = fcc.bn_act_grad %[[X]], %[[DY]], %[[S]], %[[B]], %[[STATS]]#2, %[[STATS]]#3 {activation = "celu", alpha = 3.000000e-01 : f32, pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>}
// CHECK-NOT:  fcc.bn_act_grad
// CHECK:      return %[[DX]], %[[DS]], %[[DB]], %[[DY]]
func.func @bn_act(%x: tensor<2x3x4x4xf32>, %s: tensor<3xf32>, %b: tensor<3xf32>, %r: tensor<2x3x2x2xf32>) -> tensor<2x3x2x2xf32> {
  %m = arith.constant dense<0.0> : tensor<3xf32>
  %v = arith.constant dense<1.0> : tensor<3xf32>
  %0:5 = fcc.bn_act %x, %s, %b, %m, %v residual %r {training = true, activation = "celu", alpha = 0.3 : f32, pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>} : (tensor<2x3x4x4xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>, tensor<2x3x2x2xf32>) -> (tensor<2x3x2x2xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>)
  return %0#0 : tensor<2x3x2x2xf32>
}
