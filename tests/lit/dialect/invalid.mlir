// RUN: fcc-opt %s -split-input-file -verify-diagnostics
// The verifiers name the op and the mismatch.

func.func @conv_channels(%x: tensor<1x3x8x8xf32>, %w: tensor<4x2x3x3xf32>) {
  // expected-error @+1 {{'fcc.conv2d' op input has 3 channels but the weight 4x2x3x3 with groups = 1 expects 2}}
  %0 = fcc.conv2d %x, %w : (tensor<1x3x8x8xf32>, tensor<4x2x3x3xf32>) -> tensor<1x4x6x6xf32>
  return
}

// -----

func.func @conv_result(%x: tensor<1x3x8x8xf32>, %w: tensor<4x3x3x3xf32>) {
  // expected-error @+1 {{'fcc.conv2d' op result shape 1x4x8x8 does not match the expected 1x4x6x6}}
  %0 = fcc.conv2d %x, %w : (tensor<1x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<1x4x8x8xf32>
  return
}

// -----

func.func @conv_groups(%x: tensor<1x4x8x8xf32>, %w: tensor<3x2x3x3xf32>) {
  // expected-error @+1 {{'fcc.conv2d' op 3 output channels are not divisible by groups = 2}}
  %0 = fcc.conv2d %x, %w {groups = 2 : i64} : (tensor<1x4x8x8xf32>, tensor<3x2x3x3xf32>) -> tensor<1x3x6x6xf32>
  return
}

// -----

func.func @conv_bias(%x: tensor<1x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %b: tensor<5xf32>) {
  // expected-error @+1 {{'fcc.conv2d' op bias has shape 5 but the convolution has 4 output channels}}
  %0 = fcc.conv2d %x, %w, %b : (tensor<1x3x8x8xf32>, tensor<4x3x3x3xf32>, tensor<5xf32>) -> tensor<1x4x6x6xf32>
  return
}

// -----

func.func @conv_pads(%x: tensor<1x3x8x8xf32>, %w: tensor<4x3x3x3xf32>) {
  // expected-error @+1 {{'fcc.conv2d' op pads must have 4 entries [top, left, bottom, right], got [1, 1]}}
  %0 = fcc.conv2d %x, %w {pads = array<i64: 1, 1>} : (tensor<1x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<1x4x8x8xf32>
  return
}

// -----

func.func @conv_types(%x: tensor<1x3x8x8xf16>, %w: tensor<4x3x3x3xf32>) {
  // expected-error @+1 {{'fcc.conv2d' op mixes element types 'f16' and 'f32'}}
  %0 = fcc.conv2d %x, %w : (tensor<1x3x8x8xf16>, tensor<4x3x3x3xf32>) -> tensor<1x4x6x6xf16>
  return
}

// -----

func.func @conv_window(%x: tensor<1x3x2x2xf32>, %w: tensor<4x3x3x3xf32>) {
  // expected-error @+1 {{'fcc.conv2d' op the 3x3 window (dilations [1, 1], pads [0, 0, 0, 0]) does not fit the 2x2 input}}
  %0 = fcc.conv2d %x, %w : (tensor<1x3x2x2xf32>, tensor<4x3x3x3xf32>) -> tensor<1x4x1x1xf32>
  return
}

// -----

func.func @bn_channels(%x: tensor<2x4x3x3xf32>, %s: tensor<3xf32>, %p: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.batch_norm' op scale has shape 3 but the input has 4 channels}}
  %0 = fcc.batch_norm %x, %s, %p, %p, %p : (tensor<2x4x3x3xf32>, tensor<3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x3x3xf32>
  return
}

// -----

func.func @bn_training_results(%x: tensor<2x4x3x3xf32>, %p: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.batch_norm' op in training mode expects 4 statistics results, got 0}}
  %0 = fcc.batch_norm %x, %p, %p, %p, %p {training = true} : (tensor<2x4x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x3x3xf32>
  return
}

// -----

func.func @bn_momentum(%x: tensor<2x4x3x3xf32>, %p: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.batch_norm' op momentum must be in [0, 1], got 1.5}}
  %0 = fcc.batch_norm %x, %p, %p, %p, %p {momentum = 1.5 : f32} : (tensor<2x4x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x3x3xf32>
  return
}

// -----

// BatchNorm data (input, output) share one element type; half data is
// allowed, with f32 parameters and statistics.
func.func @bn_result_type(%x: tensor<2x4x3x3xf16>, %p: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.batch_norm' op result has element type 'f32' but the input has 'f16' (the data tensors of this op share one element type; insert fcc.cast to convert)}}
  %0 = fcc.batch_norm %x, %p, %p, %p, %p : (tensor<2x4x3x3xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x3x3xf32>
  return
}

// -----

func.func @bn_half_scale(%x: tensor<2x4x3x3xf16>, %s: tensor<4xf16>, %p: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.batch_norm' op scale has element type 'f16', expected 'f32' (BatchNorm parameters and statistics stay fp32 for every data type)}}
  %0 = fcc.batch_norm %x, %s, %p, %p, %p : (tensor<2x4x3x3xf16>, tensor<4xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4x3x3xf16>
  return
}

// -----

func.func @bn_half_statistics(%x: tensor<2x4x3x3xbf16>, %p: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.batch_norm' op statistics result has element type 'bf16', expected 'f32'}}
  %0:5 = fcc.batch_norm %x, %p, %p, %p, %p {training = true} : (tensor<2x4x3x3xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x3x3xbf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xbf16>, tensor<4xbf16>)
  return
}

// -----

func.func @bn_grad_output_grad_type(%x: tensor<2x4x3x3xf16>, %dy: tensor<2x4x3x3xf32>, %p: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.batch_norm_grad' op output gradient has element type 'f32' but the input has 'f16'}}
  %0:3 = fcc.batch_norm_grad %x, %dy, %p, %p, %p : (tensor<2x4x3x3xf16>, tensor<2x4x3x3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x3x3xf16>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @bn_grad_input_grad_type(%x: tensor<2x4x3x3xf16>, %p: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.batch_norm_grad' op input gradient has element type 'bf16' but the input has 'f16'}}
  %0:3 = fcc.batch_norm_grad %x, %x, %p, %p, %p : (tensor<2x4x3x3xf16>, tensor<2x4x3x3xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x3x3xbf16>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @bn_grad_half_shift_grad(%x: tensor<2x4x3x3xf16>, %p: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.batch_norm_grad' op shift gradient has element type 'f16', expected 'f32'}}
  %0:3 = fcc.batch_norm_grad %x, %x, %p, %p, %p : (tensor<2x4x3x3xf16>, tensor<2x4x3x3xf16>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> (tensor<2x4x3x3xf16>, tensor<4xf32>, tensor<4xf16>)
  return
}

// -----

func.func @pool_result(%x: tensor<1x3x8x8xf32>) {
  // expected-error @+1 {{'fcc.max_pool2d' op result shape 1x3x3x3 does not match the expected 1x3x4x4}}
  %0 = fcc.max_pool2d %x {kernel = array<i64: 2, 2>, strides = array<i64: 2, 2>} : tensor<1x3x8x8xf32> -> tensor<1x3x3x3xf32>
  return
}

// -----

func.func @pool_pads(%x: tensor<1x3x8x8xf32>) {
  // expected-error @+1 {{'fcc.avg_pool2d' op pads [2, 2, 2, 2] must be smaller than the kernel [2, 2]}}
  %0 = fcc.avg_pool2d %x {kernel = array<i64: 2, 2>, pads = array<i64: 2, 2, 2, 2>} : tensor<1x3x8x8xf32> -> tensor<1x3x11x11xf32>
  return
}

// -----

func.func @add_broadcast(%a: tensor<2x3xf32>, %b: tensor<4xf32>) {
  // expected-error @+1 {{'fcc.add' op shapes 2x3 and 4 do not broadcast}}
  %0 = fcc.add %a, %b : (tensor<2x3xf32>, tensor<4xf32>) -> tensor<2x3xf32>
  return
}

// -----

func.func @mul_both(%a: tensor<2x3xf32>) {
  // expected-error @+1 {{'fcc.mul' op expects either a second operand or a 'scalar' attribute, not both}}
  %0 = fcc.mul %a, %a {scalar = 2.0} : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  return
}

// -----

func.func @mul_neither(%a: tensor<2x3xf32>) {
  // expected-error @+1 {{'fcc.mul' op expects either a second operand or a 'scalar' attribute, not neither}}
  %0 = fcc.mul %a : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return
}

// -----

func.func @linear_features(%x: tensor<2x6xf32>, %w: tensor<5x7xf32>) {
  // expected-error @+1 {{'fcc.linear' op input 2x6 has 6 features but the weight 5x7 (transposed) expects 7}}
  %0 = fcc.linear %x, %w : (tensor<2x6xf32>, tensor<5x7xf32>) -> tensor<2x5xf32>
  return
}

// -----

func.func @linear_bias(%x: tensor<2x6xf32>, %w: tensor<5x6xf32>, %b: tensor<6xf32>) {
  // expected-error @+1 {{'fcc.linear' op bias of shape 6 does not broadcast to the 2x5 result}}
  %0 = fcc.linear %x, %w, %b : (tensor<2x6xf32>, tensor<5x6xf32>, tensor<6xf32>) -> tensor<2x5xf32>
  return
}

// -----

func.func @flatten_axis(%x: tensor<2x3x4xf32>) {
  // expected-error @+1 {{'fcc.flatten' op axis 4 is out of range for a rank-3 input}}
  %0 = fcc.flatten %x {axis = 4} : tensor<2x3x4xf32> -> tensor<24x1xf32>
  return
}

// -----

func.func @reshape_count(%x: tensor<2x3xf32>) {
  // expected-error @+1 {{'fcc.reshape' op cannot reshape 2x3 (6 elements) to 7 (7 elements)}}
  %0 = fcc.reshape %x : tensor<2x3xf32> -> tensor<7xf32>
  return
}

// -----

func.func @dropout_ratio(%x: tensor<2x3xf32>) {
  // expected-error @+1 {{'fcc.dropout' op ratio must be in [0, 1), got 1}}
  %0 = fcc.dropout %x {ratio = 1.0 : f32} : tensor<2x3xf32>
  return
}

// -----

func.func @softmax_axis(%x: tensor<2x3xf32>) {
  // expected-error @+1 {{'fcc.softmax' op axis 2 is out of range for a rank-2 input}}
  %0 = fcc.softmax %x {axis = 2} : tensor<2x3xf32>
  return
}

// -----

func.func @celu_alpha(%x: tensor<2x3xf32>) {
  // expected-error @+1 {{'fcc.celu' op alpha must be non-zero}}
  %0 = fcc.celu %x {alpha = 0.0 : f32} : tensor<2x3xf32>
  return
}

// -----

// expected-error @+2 {{expected 'true' or 'false'}}
// expected-error @+1 {{failed to parse Fcc_ParamAttr parameter 'trainable'}}
func.func private @bad_param(tensor<4xf32> {fcc.param = #fcc.param<name = "w", role = weight, trainable = maybe>})
