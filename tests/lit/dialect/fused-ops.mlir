// RUN: fcc-opt %s -split-input-file -verify-diagnostics | FileCheck %s
// The fused BatchNorm ops (ir/FccFusedOps.td): round trip and verifier
// diagnostics.

// CHECK-LABEL: func.func @roundtrip
// CHECK:  fcc.bn_act %arg0, %arg1, %arg2, %arg3, %arg4 : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32>
// CHECK:  fcc.bn_act %arg0, %arg1, %arg2, %arg3, %arg4 residual %arg5 {activation = "celu", alpha = 3.000000e-01 : f32, pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>, training = true}
// CHECK-SAME: -> (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
// CHECK:  fcc.bn_act_grad %arg0, %arg5, %arg1, %arg2, %arg3, %arg4 {activation = "none", pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>}
// CHECK:  fcc.fold_bn %arg6, %arg1, %arg2, %arg3, %arg4 bias %arg1 {epsilon = 1.000000e-03 : f32}
func.func @roundtrip(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>, %b: tensor<4xf32>, %m: tensor<4xf32>,
                     %v: tensor<4xf32>, %r: tensor<2x4x4x4xf32>, %w: tensor<4x3x3x3xf32>) {
  %0 = fcc.bn_act %x, %s, %b, %m, %v : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32>
  %1:5 = fcc.bn_act %x, %s, %b, %m, %v residual %r {activation = "celu", alpha = 0.3 : f32, training = true, pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x4x4xf32>) -> (tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  %2:3 = fcc.bn_act_grad %x, %r, %s, %b, %m, %v {activation = "none", pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>} : (tensor<2x4x8x8xf32>, tensor<2x4x4x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>)
  %3:2 = fcc.fold_bn %w, %s, %b, %m, %v bias %s {epsilon = 1.0e-3 : f32} : (tensor<4x3x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<4x3x3x3xf32>, tensor<4xf32>)
  return
}

// -----

// Half data (fcc-insert-half): f16/bf16 input, residual, output and input
// gradient; f32 parameters, statistics and parameter gradients. fold_bn
// keeps the convolution's type for the weights and biases.
// CHECK-LABEL: func.func @roundtrip_half
// CHECK:  fcc.bn_act %arg0, %arg1, %arg2, %arg3, %arg4 residual %arg5 {pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>, training = true} : (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x4x4xf16>) -> (tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
// CHECK:  fcc.bn_act_grad {{.*}} : (tensor<2x4x8x8xf16>, tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>)
// CHECK:  fcc.bn_act {{.*}} : (tensor<2x4x8x8xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xbf16>
// CHECK:  fcc.fold_bn {{.*}} : (tensor<4x3x3x3xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf16>) -> (tensor<4x3x3x3xf16>, tensor<4xf16>)
func.func @roundtrip_half(%x: tensor<2x4x8x8xf16>, %s: tensor<4xf32>, %b: tensor<4xf32>, %m: tensor<4xf32>,
                          %v: tensor<4xf32>, %r: tensor<2x4x4x4xf16>, %xb: tensor<2x4x8x8xbf16>,
                          %w: tensor<4x3x3x3xf16>, %wb: tensor<4xf16>) {
  %0:5 = fcc.bn_act %x, %s, %b, %m, %v residual %r {training = true, pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>} : (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x4x4xf16>) -> (tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  %1:3 = fcc.bn_act_grad %x, %0#0, %s, %b, %0#3, %0#4 {pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>} : (tensor<2x4x8x8xf16>, tensor<2x4x4x4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>)
  %2 = fcc.bn_act %xb, %s, %b, %m, %v : (tensor<2x4x8x8xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xbf16>
  %3:2 = fcc.fold_bn %w, %s, %b, %m, %v bias %wb : (tensor<4x3x3x3xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf16>) -> (tensor<4x3x3x3xf16>, tensor<4xf16>)
  return
}

// -----

func.func @result_element_type(%x: tensor<2x4x8x8xf16>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op result has element type 'f32' but the input has 'f16' (the data tensors of this op share one element type; insert fcc.cast to convert)}}
  %0 = fcc.bn_act %x, %s, %s, %s, %s : (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32>
  return
}

// -----

func.func @residual_element_type(%x: tensor<2x4x8x8xf16>, %s: tensor<4xf32>, %r: tensor<2x4x8x8xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op residual has element type 'f32' but the input has 'f16'}}
  %0 = fcc.bn_act %x, %s, %s, %s, %s residual %r : (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<2x4x8x8xf32>) -> tensor<2x4x8x8xf16>
  return
}

// -----

func.func @half_running_var(%x: tensor<2x4x8x8xf16>, %s: tensor<4xf32>, %v: tensor<4xf16>) {
  // expected-error @+1 {{'fcc.bn_act' op running_var has element type 'f16', expected 'f32' (BatchNorm parameters and statistics stay fp32 for every data type)}}
  %0 = fcc.bn_act %x, %s, %s, %s, %v : (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf16>) -> tensor<2x4x8x8xf16>
  return
}

// -----

func.func @half_statistics(%x: tensor<2x4x8x8xbf16>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op statistics result has element type 'bf16', expected 'f32'}}
  %0:5 = fcc.bn_act %x, %s, %s, %s, %s {training = true} : (tensor<2x4x8x8xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xbf16>, tensor<4xbf16>, tensor<4xbf16>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @grad_input_grad_type(%x: tensor<2x4x8x8xf16>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act_grad' op input gradient has element type 'f32' but the input has 'f16'}}
  %0:3 = fcc.bn_act_grad %x, %x, %s, %s, %s, %s : (tensor<2x4x8x8xf16>, tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @grad_output_grad_type(%x: tensor<2x4x8x8xf16>, %dy: tensor<2x4x8x8xbf16>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act_grad' op output gradient has element type 'bf16' but the input has 'f16'}}
  %0:3 = fcc.bn_act_grad %x, %dy, %s, %s, %s, %s : (tensor<2x4x8x8xf16>, tensor<2x4x8x8xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @grad_half_scale_grad(%x: tensor<2x4x8x8xf16>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act_grad' op scale gradient has element type 'f16', expected 'f32'}}
  %0:3 = fcc.bn_act_grad %x, %x, %s, %s, %s, %s : (tensor<2x4x8x8xf16>, tensor<2x4x8x8xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf16>, tensor<4xf16>, tensor<4xf32>)
  return
}

// -----

func.func @fold_bias_type(%w: tensor<4x3x3x3xf16>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.fold_bn' op folded bias has element type 'f32' but the weight has 'f16'}}
  %0:2 = fcc.fold_bn %w, %s, %s, %s, %s : (tensor<4x3x3x3xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<4x3x3x3xf16>, tensor<4xf32>)
  return
}

// -----

func.func @fold_half_mean(%w: tensor<4x3x3x3xf16>, %s: tensor<4xf32>, %m: tensor<4xf16>) {
  // expected-error @+1 {{'fcc.fold_bn' op mean has element type 'f16', expected 'f32'}}
  %0:2 = fcc.fold_bn %w, %s, %s, %m, %s : (tensor<4x3x3x3xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf16>, tensor<4xf32>) -> (tensor<4x3x3x3xf16>, tensor<4xf16>)
  return
}

// -----

func.func @unknown_activation(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op activation must be "relu", "celu" or "none", got "tanh"}}
  %0 = fcc.bn_act %x, %s, %s, %s, %s {activation = "tanh"} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32>
  return
}

// -----

func.func @pool_result_shape(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op result shape 2x4x8x8 does not match the expected 2x4x4x4}}
  %0 = fcc.bn_act %x, %s, %s, %s, %s {pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32>
  return
}

// -----

func.func @pool_strides_missing(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op expects both 'pool_kernel' and 'pool_strides' or neither}}
  %0 = fcc.bn_act %x, %s, %s, %s, %s {pool_kernel = array<i64: 2, 2>} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x4x4xf32>
  return
}

// -----

func.func @residual_type(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>, %r: tensor<1x4x8x8xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op residual has type 'tensor<1x4x8x8xf32>' but the result has type 'tensor<2x4x8x8xf32>'}}
  %0 = fcc.bn_act %x, %s, %s, %s, %s residual %r : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<1x4x8x8xf32>) -> tensor<2x4x8x8xf32>
  return
}

// -----

func.func @channels(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>, %v: tensor<5xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op running_var has shape 5 but the input has 4 channels}}
  %0 = fcc.bn_act %x, %s, %s, %s, %v : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<5xf32>) -> tensor<2x4x8x8xf32>
  return
}

// -----

func.func @training_stats(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op in training mode expects 4 statistics results, got 0}}
  %0 = fcc.bn_act %x, %s, %s, %s, %s {training = true} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32>
  return
}

// -----

func.func @celu_alpha(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op alpha must be non-zero}}
  %0 = fcc.bn_act %x, %s, %s, %s, %s {activation = "celu", alpha = 0.0 : f32} : (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x8x8xf32>
  return
}

// -----

func.func @pool_too_large(%x: tensor<2x4x2x2xf32>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act' op pooling: the 3x3 window (dilations [1, 1], pads [0, 0, 0, 0]) does not fit the 2x2 input}}
  %0 = fcc.bn_act %x, %s, %s, %s, %s {pool_kernel = array<i64: 3, 3>, pool_strides = array<i64: 1, 1>} : (tensor<2x4x2x2xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x1x1xf32>
  return
}

// -----

func.func @grad_output_shape(%x: tensor<2x4x8x8xf32>, %dy: tensor<2x4x8x8xf32>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act_grad' op output gradient has shape 2x4x8x8, expected 2x4x4x4}}
  %0:3 = fcc.bn_act_grad %x, %dy, %s, %s, %s, %s {pool_kernel = array<i64: 2, 2>, pool_strides = array<i64: 2, 2>} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @grad_scale_grad(%x: tensor<2x4x8x8xf32>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.bn_act_grad' op scale gradient has shape 3 but the input has 4 channels}}
  %0:3 = fcc.bn_act_grad %x, %x, %s, %s, %s, %s : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x8x8xf32>, tensor<3xf32>, tensor<4xf32>)
  return
}

// -----

func.func @fold_channels(%w: tensor<4x3x3x3xf32>, %s: tensor<4xf32>, %b: tensor<8xf32>) {
  // expected-error @+1 {{'fcc.fold_bn' op bias has shape 8 but the weight has 4 output channels}}
  %0:2 = fcc.fold_bn %w, %s, %s, %s, %s bias %b : (tensor<4x3x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<8xf32>) -> (tensor<4x3x3x3xf32>, tensor<4xf32>)
  return
}

// -----

func.func @fold_epsilon(%w: tensor<4x3x3x3xf32>, %s: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.fold_bn' op epsilon must be positive, got 0}}
  %0:2 = fcc.fold_bn %w, %s, %s, %s, %s {epsilon = 0.0 : f32} : (tensor<4x3x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<4x3x3x3xf32>, tensor<4xf32>)
  return
}
