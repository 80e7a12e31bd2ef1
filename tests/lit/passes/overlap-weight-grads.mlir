// RUN: fcc-opt %s --split-input-file --fcc-overlap-weight-grads | FileCheck %s
// RUN: fcc-opt %s --split-input-file --fcc-overlap-weight-grads --fcc-plan-memory | FileCheck %s --check-prefix=PLAN
// RUN: fcc-opt %s --split-input-file --fcc-plan-memory | FileCheck %s --check-prefix=SERIAL
//
// fcc-overlap-weight-grads moves each conv2d_grad_weight up to right after
// the producer of its operands, marks it fcc.side_stream, and joins the side
// stream (fcc.stream_join, whose operands are the side op's tensors) before
// the next side op, the gradient's first user or the terminator, whichever
// comes first.

// Two layers: the weight gradient of layer 2 is queued before layer 2's
// data gradient and joined before layer 1's weight gradient; layer 1's is
// followed by its first user (the return), so it stays on the main stream.
// CHECK-LABEL: func.func @two_layers
// CHECK:      %[[B:.*]] = fcc.relu %{{.*}} : tensor<2x4x8x8xf32>
// CHECK:      %[[G2:.*]] = fcc.relu %arg3
// CHECK-NEXT: %[[DW2:.*]] = fcc.conv2d_grad_weight %[[B]], %[[G2]] {fcc.side_stream, pads = array<i64: 1, 1, 1, 1>}
// CHECK-NEXT: %[[DX2:.*]] = fcc.conv2d_grad_input %[[G2]], %arg2
// CHECK-NEXT: %[[G1:.*]] = fcc.relu_grad %[[B]], %[[DX2]]
// CHECK-NEXT: fcc.stream_join %[[B]], %[[G2]], %[[DW2]] : tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>, tensor<4x4x3x3xf32>
// CHECK-NEXT: %[[DW1:.*]] = fcc.conv2d_grad_weight %arg0, %[[G1]] {pads = array<i64: 1, 1, 1, 1>}
// CHECK-NEXT: return %[[DW1]], %[[DW2]]
func.func @two_layers(%x: tensor<2x4x8x8xf32>, %w1: tensor<4x4x3x3xf32>, %w2: tensor<4x4x3x3xf32>, %dy: tensor<2x4x8x8xf32>) -> (tensor<4x4x3x3xf32>, tensor<4x4x3x3xf32>) {
  %a = fcc.conv2d %x, %w1 {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<4x4x3x3xf32>) -> tensor<2x4x8x8xf32>
  %b = fcc.relu %a : tensor<2x4x8x8xf32>
  %g2 = fcc.relu %dy : tensor<2x4x8x8xf32>
  %dx2 = fcc.conv2d_grad_input %g2, %w2 {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<4x4x3x3xf32>) -> tensor<2x4x8x8xf32>
  %dw2 = fcc.conv2d_grad_weight %b, %g2 {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>) -> tensor<4x4x3x3xf32>
  %g1 = fcc.relu_grad %b, %dx2 : tensor<2x4x8x8xf32>
  %dw1 = fcc.conv2d_grad_weight %x, %g1 {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>) -> tensor<4x4x3x3xf32>
  return %dw1, %dw2 : tensor<4x4x3x3xf32>, tensor<4x4x3x3xf32>
}

// -----

// The gradient's first user comes before the next side op: the join goes
// right before that user.
// CHECK-LABEL: func.func @first_user
// CHECK:      %[[DW:.*]] = fcc.conv2d_grad_weight {{.*}} {fcc.side_stream
// CHECK-NEXT: fcc.conv2d_grad_input
// CHECK-NEXT: fcc.stream_join %arg0, %{{.*}}, %[[DW]]
// CHECK-NEXT: fcc.relu %[[DW]]
// CHECK-NEXT: fcc.relu
// CHECK-NEXT: fcc.conv2d_grad_weight {{.*}} {pads
// CHECK-NEXT: return
func.func @first_user(%x: tensor<2x4x8x8xf32>, %w: tensor<4x4x3x3xf32>, %dy: tensor<2x4x8x8xf32>) -> (tensor<4x4x3x3xf32>, tensor<4x4x3x3xf32>) {
  %g = fcc.relu %dy : tensor<2x4x8x8xf32>
  %dx = fcc.conv2d_grad_input %g, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<4x4x3x3xf32>) -> tensor<2x4x8x8xf32>
  %dw = fcc.conv2d_grad_weight %x, %g {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>) -> tensor<4x4x3x3xf32>
  %r = fcc.relu %dw : tensor<4x4x3x3xf32>
  %g0 = fcc.relu %dx : tensor<2x4x8x8xf32>
  %dw0 = fcc.conv2d_grad_weight %x, %g0 {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>) -> tensor<4x4x3x3xf32>
  return %r, %dw0 : tensor<4x4x3x3xf32>, tensor<4x4x3x3xf32>
}

// -----

// The memory plan keeps a side op's operands until its join. Serially, %g
// (2 KiB, at 0) dies at the relu_grad, which writes its result over it (at
// 0 too; %dx at 2048, %dw (576 B) at 4096). With the side stream, %g stays
// alive until the join at the end, so the relu_grad result needs bytes of
// its own: %g at 0, %dx at 2048, the relu_grad result at 4096, %dw at 6144
// (largest first, each at the lowest offset free of what is alive with it).
// PLAN-LABEL: func.func @keep_alive
// PLAN-SAME:  fcc.arena_bytes = 6720
// PLAN:       fcc.relu %arg2 {fcc.offsets = array<i64: 0>}
// PLAN-NEXT:  fcc.conv2d_grad_weight {{.*}}fcc.offsets = array<i64: 6144>
// PLAN-NEXT:  fcc.conv2d_grad_input {{.*}}fcc.offsets = array<i64: 2048>
// PLAN-NEXT:  fcc.relu_grad {{.*}}fcc.offsets = array<i64: 4096>
// PLAN-NEXT:  fcc.stream_join
// SERIAL-LABEL: func.func @keep_alive
// SERIAL-SAME:  fcc.arena_bytes = 4672
// SERIAL:       fcc.relu %arg2 {fcc.offsets = array<i64: 0>}
// SERIAL-NEXT:  fcc.conv2d_grad_input {{.*}}fcc.offsets = array<i64: 2048>
// SERIAL-NEXT:  fcc.conv2d_grad_weight {{.*}}fcc.offsets = array<i64: 4096>
// SERIAL-NEXT:  fcc.relu_grad {{.*}}fcc.offsets = array<i64: 0>
func.func @keep_alive(%x: tensor<2x4x8x8xf32>, %w: tensor<4x4x3x3xf32>, %dy: tensor<2x4x8x8xf32>) -> (tensor<2x4x8x8xf32>, tensor<4x4x3x3xf32>) {
  %g = fcc.relu %dy : tensor<2x4x8x8xf32>
  %dx = fcc.conv2d_grad_input %g, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<4x4x3x3xf32>) -> tensor<2x4x8x8xf32>
  %dw = fcc.conv2d_grad_weight %x, %g {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>) -> tensor<4x4x3x3xf32>
  %h = fcc.relu_grad %dx, %g : tensor<2x4x8x8xf32>
  return %h, %dw : tensor<2x4x8x8xf32>, tensor<4x4x3x3xf32>
}

// -----

// A weight gradient whose result the very next op reads has nothing to
// overlap with: it stays on the main stream, without a join.
// CHECK-LABEL: func.func @nothing_to_overlap
// CHECK:      fcc.relu %arg2
// CHECK-NEXT: %[[DW:.*]] = fcc.conv2d_grad_weight %arg0, %{{.*}} {pads = array<i64: 1, 1, 1, 1>}
// CHECK-NEXT: fcc.relu %[[DW]]
// CHECK-NOT:  fcc.stream_join
func.func @nothing_to_overlap(%x: tensor<2x4x8x8xf32>, %w: tensor<4x4x3x3xf32>, %dy: tensor<2x4x8x8xf32>) -> tensor<4x4x3x3xf32> {
  %g = fcc.relu %dy : tensor<2x4x8x8xf32>
  %dw = fcc.conv2d_grad_weight %x, %g {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf32>, tensor<2x4x8x8xf32>) -> tensor<4x4x3x3xf32>
  %r = fcc.relu %dw : tensor<4x4x3x3xf32>
  return %r : tensor<4x4x3x3xf32>
}

// -----

// fp16 programs cast each weight gradient to fp32 for the optimizer: when
// the cast is the gradient's only user it moves up with it and runs on the
// side stream too; the join keeps the half and the float gradient alive and
// comes before the float gradient's first user.
// CHECK-LABEL: func.func @with_cast
// CHECK:      %[[G:.*]] = fcc.relu %arg2
// CHECK-NEXT: %[[DW:.*]] = fcc.conv2d_grad_weight %arg0, %[[G]] {fcc.side_stream
// CHECK-NEXT: %[[DW32:.*]] = fcc.cast %[[DW]] {fcc.side_stream} : tensor<4x4x3x3xf16> -> tensor<4x4x3x3xf32>
// CHECK-NEXT: fcc.conv2d_grad_input
// CHECK-NEXT: fcc.relu
// CHECK-NEXT: fcc.stream_join %arg0, %[[G]], %[[DW]], %[[DW32]] : tensor<2x4x8x8xf16>, tensor<2x4x8x8xf16>, tensor<4x4x3x3xf16>, tensor<4x4x3x3xf32>
// CHECK-NEXT: fcc.relu %[[DW32]]
func.func @with_cast(%x: tensor<2x4x8x8xf16>, %w: tensor<4x4x3x3xf16>, %dy: tensor<2x4x8x8xf16>) -> (tensor<2x4x8x8xf16>, tensor<4x4x3x3xf32>) {
  %g = fcc.relu %dy : tensor<2x4x8x8xf16>
  %dx = fcc.conv2d_grad_input %g, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf16>, tensor<4x4x3x3xf16>) -> tensor<2x4x8x8xf16>
  %h = fcc.relu %dx : tensor<2x4x8x8xf16>
  %dw = fcc.conv2d_grad_weight %x, %g {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x4x8x8xf16>, tensor<2x4x8x8xf16>) -> tensor<4x4x3x3xf16>
  %dw32 = fcc.cast %dw : tensor<4x4x3x3xf16> -> tensor<4x4x3x3xf32>
  %r = fcc.relu %dw32 : tensor<4x4x3x3xf32>
  return %h, %r : tensor<2x4x8x8xf16>, tensor<4x4x3x3xf32>
}
