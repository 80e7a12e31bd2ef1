// RUN: fcc-opt %s --split-input-file --fcc-plan-memory | FileCheck %s
// RUN: fcc-opt %s --split-input-file --fcc-plan-memory=in-place=false | FileCheck %s --check-prefix=NOINPLACE
// RUN: fcc-opt %s --split-input-file --fcc-plan-memory=layout=nhwc | FileCheck %s --check-prefix=NHWC
// RUN: not fcc-opt %s --split-input-file --fcc-plan-memory=layout=chwn 2>&1 | FileCheck %s --check-prefix=BADLAYOUT
// BADLAYOUT: error: fcc-plan-memory: layout=chwn: expected nchw or nhwc
//
// fcc-plan-memory gives every computed tensor an offset in one scratch arena
// (fcc.offsets, one entry per result, -1 = not in the arena) and records the
// arena size on the function. The expected offsets below are worked out by
// hand from the rules: largest tensors first, each at the lowest 64-byte
// aligned offset free of every tensor alive at the same time; views and
// results written back into an argument (fcc.updates) take no arena space.

// %a (1 KiB) is live until %b reads it. %b (512 B) must not overlap it, so it
// goes at 1024. %b dies at %c, an elementwise op: %c is written over it
// (in place, exactly at %b's offset). Without in-place updates %c takes the
// lowest free offset instead: %a is dead by then, so 0. The reshape is a view
// of %c and the last result goes straight to the argument it updates.
// CHECK-LABEL: func.func @reuse
// CHECK-SAME: fcc.arena_bytes = 1536
// CHECK:      fcc.relu %arg0 {fcc.offsets = array<i64: 0>}
// CHECK-NEXT: fcc.linear {{.*}} {fcc.offsets = array<i64: 1024>}
// CHECK-NEXT: fcc.relu {{.*}} {fcc.offsets = array<i64: 1024>}
// NOINPLACE-LABEL: func.func @reuse
// NOINPLACE:      fcc.linear {{.*}} {fcc.offsets = array<i64: 1024>}
// NOINPLACE-NEXT: fcc.relu {{.*}} {fcc.offsets = array<i64: 0>}
// CHECK-NEXT: fcc.reshape {{.*}} {fcc.offsets = array<i64: -1>}
// CHECK-NEXT: fcc.relu {{.*}} {fcc.offsets = array<i64: -1>}
func.func @reuse(%x: tensor<4x64xf32>, %w: tensor<32x64xf32>, %out: tensor<128xf32>) -> (tensor<128xf32> {fcc.updates = 2 : i64}) {
  %a = fcc.relu %x : tensor<4x64xf32>
  %b = fcc.linear %a, %w : (tensor<4x64xf32>, tensor<32x64xf32>) -> tensor<4x32xf32>
  %c = fcc.relu %b : tensor<4x32xf32>
  %r = fcc.reshape %c : tensor<4x32xf32> -> tensor<128xf32>
  %d = fcc.relu %r : tensor<128xf32>
  return %d : tensor<128xf32>
}

// -----

// An elementwise op whose operand dies at the op writes over it: one 1 KiB
// buffer for the chain; without in-place updates the two live-at-once
// tensors need two.
// CHECK-LABEL: func.func @chain
// CHECK-SAME: fcc.arena_bytes = 1024
// CHECK:      fcc.relu %arg0 {fcc.offsets = array<i64: 0>}
// CHECK-NEXT: fcc.relu {{.*}} {fcc.offsets = array<i64: 0>}
// NOINPLACE-LABEL: func.func @chain
// NOINPLACE-SAME: fcc.arena_bytes = 2048
// NOINPLACE:      fcc.relu %arg0 {fcc.offsets = array<i64: 0>}
// NOINPLACE-NEXT: fcc.relu {{.*}} {fcc.offsets = array<i64: 1024>}
func.func @chain(%x: tensor<4x64xf32>, %out: tensor<4x64xf32>) -> (tensor<4x64xf32> {fcc.updates = 1 : i64}) {
  %a = fcc.relu %x : tensor<4x64xf32>
  %b = fcc.relu %a : tensor<4x64xf32>
  %c = fcc.relu %b : tensor<4x64xf32>
  return %c : tensor<4x64xf32>
}

// -----

// Storage layout. Under layout=nhwc (the CUDA target's --layout nhwc) a
// 2x4x2x2 map is stored NHWC while the flat tensor keeps the IR's NCHW
// order, so the flatten reorders elements: it is a transpose into a buffer
// of its own (128 B at 128: its operand is still alive at the flatten, and a
// transpose cannot work in place), and the function says its layout. A 1x1
// map is stored alike in both layouts: that flatten stays a view. NCHW: both
// flattens are views and %a lives until %b reads its view.
// CHECK-LABEL: func.func @layout
// CHECK-SAME: fcc.arena_bytes = 128
// CHECK-NOT: fcc.layout
// CHECK:      fcc.relu %arg0 {fcc.offsets = array<i64: 0>}
// CHECK-NEXT: fcc.flatten {{.*}} {fcc.offsets = array<i64: -1>}
// CHECK-NEXT: fcc.relu {{.*}} {fcc.offsets = array<i64: -1>}
// CHECK-NEXT: fcc.relu %arg1 {fcc.offsets = array<i64: 0>}
// CHECK-NEXT: fcc.flatten {{.*}} {fcc.offsets = array<i64: -1>}
// NHWC-LABEL: func.func @layout
// NHWC-SAME: fcc.arena_bytes = 256
// NHWC-SAME: fcc.layout = "nhwc"
// NHWC:      fcc.relu %arg0 {fcc.offsets = array<i64: 0>}
// NHWC-NEXT: fcc.flatten {{.*}} {fcc.offsets = array<i64: 128>}
// NHWC-NEXT: fcc.relu {{.*}} {fcc.offsets = array<i64: -1>}
// NHWC-NEXT: fcc.relu %arg1 {fcc.offsets = array<i64: 0>}
// NHWC-NEXT: fcc.flatten {{.*}} {fcc.offsets = array<i64: -1>}
func.func @layout(%x: tensor<2x4x2x2xf32>, %y: tensor<2x4x1x1xf32>, %out: tensor<2x16xf32>, %out2: tensor<2x4xf32>) -> (tensor<2x16xf32> {fcc.updates = 2 : i64}, tensor<2x4xf32> {fcc.updates = 3 : i64}) {
  %a = fcc.relu %x : tensor<2x4x2x2xf32>
  %f = fcc.flatten %a : tensor<2x4x2x2xf32> -> tensor<2x16xf32>
  %b = fcc.relu %f : tensor<2x16xf32>
  %p = fcc.relu %y : tensor<2x4x1x1xf32>
  %q = fcc.flatten %p : tensor<2x4x1x1xf32> -> tensor<2x4xf32>
  %c = fcc.relu %q : tensor<2x4xf32>
  return %b, %c : tensor<2x16xf32>, tensor<2x4xf32>
}
