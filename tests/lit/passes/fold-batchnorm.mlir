// RUN: fcc-opt %s --split-input-file --fcc-fold-batchnorm | FileCheck %s
//
// fcc-fold-batchnorm folds inference-mode BatchNorms (fcc.batch_norm and
// fcc.bn_act) into the weights and bias of the convolution before them;
// what the fused op did after normalising becomes ordinary ops.

// CHECK-LABEL: func.func @conv_bn
// CHECK-SAME:    (%[[X:.*]]: tensor<2x3x8x8xf32>, %[[W:.*]]: tensor<4x3x3x3xf32>, %[[S:.*]]: tensor<4xf32>, %[[B:.*]]: tensor<4xf32>, %[[M:.*]]: tensor<4xf32>, %[[V:.*]]: tensor<4xf32>)
// CHECK-NEXT:  %[[FW:.*]], %[[FB:.*]] = fcc.fold_bn %[[W]], %[[S]], %[[B]], %[[M]], %[[V]] {epsilon = 1.000000e-03 : f32} : (tensor<4x3x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<4x3x3x3xf32>, tensor<4xf32>)
// CHECK-NEXT:  %[[Y:.*]] = fcc.conv2d %[[X]], %[[FW]], %[[FB]] {pads = array<i64: 1, 1, 1, 1>, strides = array<i64: 2, 2>}
// CHECK-NEXT:  return %[[Y]]
func.func @conv_bn(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %s: tensor<4xf32>,
                   %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>) -> tensor<2x4x4x4xf32> {
  %c = fcc.conv2d %x, %w {pads = array<i64: 1, 1, 1, 1>, strides = array<i64: 2, 2>} : (tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x4x4xf32>
  %y = fcc.batch_norm %c, %s, %b, %m, %v {epsilon = 1.0e-3 : f32} : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  return %y : tensor<2x4x4x4xf32>
}

// -----

// A convolution bias is folded too.
// CHECK-LABEL: func.func @conv_bias_bn
// CHECK-NEXT:  %[[FW:.*]], %[[FB:.*]] = fcc.fold_bn %arg1, %arg3, %arg4, %arg5, %arg6 bias %arg2 :
// CHECK-NEXT:  fcc.conv2d %arg0, %[[FW]], %[[FB]] {groups = 2 : i64}
func.func @conv_bias_bn(%x: tensor<2x4x8x8xf32>, %w: tensor<4x2x1x1xf32>, %cb: tensor<4xf32>, %s: tensor<4xf32>,
                        %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>) -> tensor<2x4x8x8xf32> {
  %c = fcc.conv2d %x, %w, %cb {groups = 2 : i64} : (tensor<2x4x8x8xf32>, tensor<4x2x1x1xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32>
  %y = fcc.batch_norm %c, %s, %b, %m, %v : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32>
  return %y : tensor<2x4x8x8xf32>
}

// -----

// conv -> bn_act (ReLU, pool): the convolution with folded weights, then the
// ReLU and the pool.
// CHECK-LABEL: func.func @conv_bn_act_pool
// CHECK-NEXT:  %[[FW:.*]], %[[FB:.*]] = fcc.fold_bn %arg1, %arg2, %arg3, %arg4, %arg5 :
// CHECK-NEXT:  %[[C:.*]] = fcc.conv2d %arg0, %[[FW]], %[[FB]] {pads = array<i64: 1, 1, 1, 1>}
// CHECK-NEXT:  %[[R:.*]] = fcc.relu %[[C]] : tensor<2x4x8x8xf32>
// CHECK-NEXT:  %[[P:.*]] = fcc.max_pool2d %[[R]] {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<2x4x8x8xf32> -> tensor<2x4x4x4xf32>
// CHECK-NEXT:  return %[[P]]
func.func @conv_bn_act_pool(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %s: tensor<4xf32>,
                            %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>) -> tensor<2x4x4x4xf32> {
  %c = fcc.conv2d %x, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x8x8xf32>
  %y = fcc.bn_act %c, %s, %b, %m, %v {pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  return %y : tensor<2x4x4x4xf32>
}

// -----

// conv -> bn_act (CELU, residual): CELU with its alpha, then the residual
// add. Without an activation, only the add follows.
// CHECK-LABEL: func.func @conv_bn_act_residual
// CHECK-NEXT:  %[[FW:.*]], %[[FB:.*]] = fcc.fold_bn %arg1, %arg2, %arg3, %arg4, %arg5 {epsilon = 1.000000e-03 : f32}
// CHECK-NEXT:  %[[C:.*]] = fcc.conv2d %arg0, %[[FW]], %[[FB]]
// CHECK-NEXT:  %[[A:.*]] = fcc.celu %[[C]] {alpha = 3.000000e-01 : f32}
// CHECK-NEXT:  %[[Y:.*]] = fcc.add %[[A]], %arg0
// CHECK-NEXT:  %[[FW2:.*]], %[[FB2:.*]] = fcc.fold_bn %arg1,
// CHECK-NEXT:  %[[C2:.*]] = fcc.conv2d %[[Y]], %[[FW2]], %[[FB2]]
// CHECK-NEXT:  %[[Y2:.*]] = fcc.add %[[C2]], %[[Y]]
// CHECK-NEXT:  return %[[Y2]]
func.func @conv_bn_act_residual(%x: tensor<2x4x4x4xf32>, %w: tensor<4x4x3x3xf32>, %s: tensor<4xf32>,
                                %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>) -> tensor<2x4x4x4xf32> {
  %c = fcc.conv2d %x, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x4x4xf32>, tensor<4x4x3x3xf32>) -> tensor<2x4x4x4xf32>
  %y = fcc.bn_act %c, %s, %b, %m, %v residual %x {activation = "celu", alpha = 0.3 : f32, epsilon = 1.0e-3 : f32} : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
  %c2 = fcc.conv2d %y, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x4x4xf32>, tensor<4x4x3x3xf32>) -> tensor<2x4x4x4xf32>
  %y2 = fcc.bn_act %c2, %s, %b, %m, %v residual %y {activation = "none"} : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x4x4xf32>) -> tensor<2x4x4x4xf32>
  return %y2 : tensor<2x4x4x4xf32>
}

//===----------------------------------------------------------------------===//
// What must not fold
//===----------------------------------------------------------------------===//

// -----

// The convolution's output has another user: it must stay unnormalised.
// CHECK-LABEL: func.func @conv_used_twice
// CHECK-NOT:   fcc.fold_bn
// CHECK:       fcc.batch_norm
// CHECK:       fcc.bn_act
func.func @conv_used_twice(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %s: tensor<4xf32>,
                           %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>) -> (tensor<2x4x6x6xf32>, tensor<2x4x6x6xf32>, tensor<2x4x6x6xf32>) {
  %c = fcc.conv2d %x, %w : (tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x6x6xf32>
  %y = fcc.batch_norm %c, %s, %b, %m, %v : (tensor<2x4x6x6xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x6x6xf32>
  %z = fcc.bn_act %c, %s, %b, %m, %v : (tensor<2x4x6x6xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x6x6xf32>
  return %y, %z, %c : tensor<2x4x6x6xf32>, tensor<2x4x6x6xf32>, tensor<2x4x6x6xf32>
}

// -----

// Training mode normalises with batch statistics: nothing to fold.
// CHECK-LABEL: func.func @training
// CHECK-NOT:   fcc.fold_bn
func.func @training(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %s: tensor<4xf32>,
                    %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>) -> (tensor<2x4x6x6xf32>, tensor<2x4x6x6xf32>) {
  %c = fcc.conv2d %x, %w : (tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x6x6xf32>
  %y:5 = fcc.batch_norm %c, %s, %b, %m, %v {training = true} : (tensor<2x4x6x6xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x6x6xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  %c2 = fcc.conv2d %x, %w : (tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x6x6xf32>
  %z:5 = fcc.bn_act %c2, %s, %b, %m, %v {training = true} : (tensor<2x4x6x6xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x6x6xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  return %y#0, %z#0 : tensor<2x4x6x6xf32>, tensor<2x4x6x6xf32>
}

// -----

// ResNet9-bot pools between the convolution and the BatchNorm: no fold.
// CHECK-LABEL: func.func @pool_between
// CHECK-NOT:   fcc.fold_bn
func.func @pool_between(%x: tensor<2x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %s: tensor<4xf32>,
                        %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>) -> tensor<2x4x4x4xf32> {
  %c = fcc.conv2d %x, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x8x8xf32>
  %p = fcc.max_pool2d %c {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<2x4x8x8xf32> -> tensor<2x4x4x4xf32>
  %y = fcc.bn_act %p, %s, %b, %m, %v {activation = "celu", alpha = 0.3 : f32} : (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  return %y : tensor<2x4x4x4xf32>
}

// -----

// Half precision: the convolution reads half casts of the fp32 master
// weight and bias; the fold works on the fp32 values and casts its results
// (one rounding to half), the statistics stay fp32.
// CHECK-LABEL: func.func @half_conv_bias_bn
// CHECK-SAME:    (%[[X:[a-z0-9]+]]: tensor<2x3x8x8xf16>, %[[W:[a-z0-9]+]]: tensor<4x3x3x3xf32>, %[[CB:[a-z0-9]+]]: tensor<4xf32>,
// CHECK:       %[[FW:.*]], %[[FB:.*]] = fcc.fold_bn %[[W]], {{.*}} bias %[[CB]] : ({{.*}}) -> (tensor<4x3x3x3xf32>, tensor<4xf32>)
// CHECK-NEXT:  %[[HW:.*]] = fcc.cast %[[FW]] : tensor<4x3x3x3xf32> -> tensor<4x3x3x3xf16>
// CHECK-NEXT:  %[[HB:.*]] = fcc.cast %[[FB]] : tensor<4xf32> -> tensor<4xf16>
// CHECK-NEXT:  %[[Y:.*]] = fcc.conv2d %[[X]], %[[HW]], %[[HB]] : (tensor<2x3x8x8xf16>, tensor<4x3x3x3xf16>, tensor<4xf16>) -> tensor<2x4x6x6xf16>
// CHECK-NEXT:  return %[[Y]]
func.func @half_conv_bias_bn(%x: tensor<2x3x8x8xf16>, %w: tensor<4x3x3x3xf32>, %cb: tensor<4xf32>, %s: tensor<4xf32>,
                             %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>) -> tensor<2x4x6x6xf16> {
  %hw = fcc.cast %w : tensor<4x3x3x3xf32> -> tensor<4x3x3x3xf16>
  %hb = fcc.cast %cb : tensor<4xf32> -> tensor<4xf16>
  %c = fcc.conv2d %x, %hw, %hb : (tensor<2x3x8x8xf16>, tensor<4x3x3x3xf16>, tensor<4xf16>) -> tensor<2x4x6x6xf16>
  %y = fcc.batch_norm %c, %s, %b, %m, %v : (tensor<2x4x6x6xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x6x6xf16>
  return %y : tensor<2x4x6x6xf16>
}

// -----

// A half weight that is no cast of an fp32 one is folded in half.
// CHECK-LABEL: func.func @half_weight_bn
// CHECK:       fcc.fold_bn %arg1, {{.*}} -> (tensor<4x3x3x3xf16>, tensor<4xf16>)
// CHECK-NOT:   fcc.cast
func.func @half_weight_bn(%x: tensor<2x3x8x8xf16>, %w: tensor<4x3x3x3xf16>, %s: tensor<4xf32>,
                          %b: tensor<4xf32>, %m: tensor<4xf32>, %v: tensor<4xf32>) -> tensor<2x4x6x6xf16> {
  %c = fcc.conv2d %x, %w : (tensor<2x3x8x8xf16>, tensor<4x3x3x3xf16>) -> tensor<2x4x6x6xf16>
  %y = fcc.batch_norm %c, %s, %b, %m, %v : (tensor<2x4x6x6xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x6x6xf16>
  return %y : tensor<2x4x6x6xf16>
}
