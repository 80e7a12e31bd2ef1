// RUN: fcc-opt %s --split-input-file --verify-diagnostics | FileCheck %s
//
// The compression and collective ops round-trip, and their verifiers check
// payload sizes against the runtime's packed formats (compress.h).

// CHECK-LABEL: func.func @roundtrip
// CHECK: fcc.compress %arg0, %arg1 {method = "qsgd:255", tensor = 0 : i64} : tensor<10x64xf32> -> tensor<724xi8>
// CHECK: fcc.all_gather %{{.*}} {method = "qsgd:255"} : tensor<724xi8> -> tensor<?x724xi8>
// CHECK: fcc.decompress %{{.*}}, %arg1 {method = "qsgd:255", tensor = 0 : i64} : tensor<?x724xi8> -> tensor<10x64xf32>
// CHECK: fcc.compress_residual %arg0, %{{.*}}, %arg1
// CHECK: fcc.all_reduce %{{.*}} {average, method = "bf16"} : tensor<1280xi8>
// CHECK: fcc.concat_flat
// CHECK: fcc.split_flat
func.func @roundtrip(%g: tensor<10x64xf32>, %seed: tensor<i64>) -> (tensor<10x64xf32>, tensor<10x64xf32>, tensor<1280xi8>, tensor<10x64xf32>) {
  %p = fcc.compress %g, %seed {method = "qsgd:255", tensor = 0} : tensor<10x64xf32> -> tensor<724xi8>
  %rows = fcc.all_gather %p {method = "qsgd:255"} : tensor<724xi8> -> tensor<?x724xi8>
  %d = fcc.decompress %rows, %seed {method = "qsgd:255", tensor = 0} : tensor<?x724xi8> -> tensor<10x64xf32>
  %r = fcc.compress_residual %g, %p, %seed {method = "qsgd:255", tensor = 0} : tensor<10x64xf32>, tensor<724xi8>
  %h = fcc.compress %g, %seed {method = "bf16", tensor = 1} : tensor<10x64xf32> -> tensor<1280xi8>
  %s = fcc.all_reduce %h {average, method = "bf16"} : tensor<1280xi8>
  %f = fcc.concat_flat %d, %r : tensor<10x64xf32>, tensor<10x64xf32> -> tensor<1280xf32>
  %back:2 = fcc.split_flat %f : tensor<1280xf32> -> tensor<10x64xf32>, tensor<10x64xf32>
  return %back#0, %back#1, %s, %d : tensor<10x64xf32>, tensor<10x64xf32>, tensor<1280xi8>, tensor<10x64xf32>
}

// -----

func.func @wrong_size(%g: tensor<10x64xf32>, %seed: tensor<i64>) -> tensor<700xi8> {
  // expected-error @+1 {{payload of 700 bytes, but topk:0.1 packs 640 elements into 336}}
  %p = fcc.compress %g, %seed {method = "topk:0.1", tensor = 0} : tensor<10x64xf32> -> tensor<700xi8>
  return %p : tensor<700xi8>
}

// -----

func.func @bad_method(%g: tensor<10xf32>, %seed: tensor<i64>) -> tensor<8xi8> {
  // expected-error @+1 {{bad method: qsgd:0: S must be}}
  %p = fcc.compress %g, %seed {method = "qsgd:0", tensor = 0} : tensor<10xf32> -> tensor<8xi8>
  return %p : tensor<8xi8>
}

// -----

func.func @sum_topk(%p: tensor<336xi8>) -> tensor<336xi8> {
  // expected-error @+1 {{topk:0.1 payloads cannot be summed; they travel by fcc.all_gather}}
  %s = fcc.all_reduce %p {method = "topk:0.1"} : tensor<336xi8>
  return %s : tensor<336xi8>
}

// -----

func.func @static_rows(%p2: tensor<2x724xi8>, %seed: tensor<i64>) -> tensor<10x64xf32> {
  // expected-error @+1 {{first dimension must be dynamic}}
  %d = fcc.decompress %p2, %seed {method = "qsgd:255", tensor = 0} : tensor<2x724xi8> -> tensor<10x64xf32>
  return %d : tensor<10x64xf32>
}
