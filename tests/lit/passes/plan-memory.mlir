// RUN: fcc-opt %s --split-input-file --fcc-plan-memory | FileCheck %s
// RUN: fcc-opt %s --split-input-file --fcc-plan-memory=in-place=false | FileCheck %s --check-prefix=NOINPLACE
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
