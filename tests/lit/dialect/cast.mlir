// RUN: fcc-opt %s --split-input-file --verify-diagnostics --pass-pipeline='builtin.module(func.func(canonicalize))' | FileCheck %s
//
// fcc.cast folds away only when it changes nothing: a cast to the same type,
// or a widening followed by the narrowing back (exact). A narrowing followed
// by a widening rounds and must stay.

// CHECK-LABEL: func.func @same_type
// CHECK-NEXT: return %arg0
func.func @same_type(%x: tensor<4xf16>) -> tensor<4xf16> {
  %0 = fcc.cast %x : tensor<4xf16> -> tensor<4xf16>
  return %0 : tensor<4xf16>
}

// CHECK-LABEL: func.func @widen_then_narrow
// CHECK-NEXT: return %arg0
func.func @widen_then_narrow(%x: tensor<4xf16>) -> tensor<4xf16> {
  %0 = fcc.cast %x : tensor<4xf16> -> tensor<4xf32>
  %1 = fcc.cast %0 : tensor<4xf32> -> tensor<4xf16>
  return %1 : tensor<4xf16>
}

// CHECK-LABEL: func.func @narrow_then_widen
// CHECK-NEXT: %[[H:.*]] = fcc.cast %arg0 : tensor<4xf32> -> tensor<4xf16>
// CHECK-NEXT: %[[F:.*]] = fcc.cast %[[H]] : tensor<4xf16> -> tensor<4xf32>
// CHECK-NEXT: return %[[F]]
func.func @narrow_then_widen(%x: tensor<4xf32>) -> tensor<4xf32> {
  %0 = fcc.cast %x : tensor<4xf32> -> tensor<4xf16>
  %1 = fcc.cast %0 : tensor<4xf16> -> tensor<4xf32>
  return %1 : tensor<4xf32>
}

// fp16 -> bf16 -> fp16 is not exact either way (different exponent and
// mantissa widths).
// CHECK-LABEL: func.func @half_to_bfloat_and_back
// CHECK-COUNT-2: fcc.cast
func.func @half_to_bfloat_and_back(%x: tensor<4xf16>) -> tensor<4xf16> {
  %0 = fcc.cast %x : tensor<4xf16> -> tensor<4xbf16>
  %1 = fcc.cast %0 : tensor<4xbf16> -> tensor<4xf16>
  return %1 : tensor<4xf16>
}

// -----

func.func @shape_change(%x: tensor<4xf32>) -> tensor<2x2xf16> {
  // expected-error @+1 {{'fcc.cast' op changes the shape from 4 to 2x2; a cast only changes the element type}}
  %0 = fcc.cast %x : tensor<4xf32> -> tensor<2x2xf16>
  return %0 : tensor<2x2xf16>
}
