// RUN: fcc-opt %s --fcc-build-training --fcc-inject-compression="method=qsgd:255 min-compress-bytes=100" | FileCheck %s --check-prefix=LAYER
// RUN: fcc-opt %s --fcc-build-training --fcc-inject-compression="method=fc.*=topk:0.1,*=qsgd:15 error-feedback=true" | FileCheck %s --check-prefix=RULES
// RUN: fcc-opt %s --fcc-build-training --fcc-inject-compression="method=qsgd:255 scope=entire-model error-feedback=true" | FileCheck %s --check-prefix=WHOLE
// RUN: fcc-opt %s --fcc-build-training --fcc-inject-compression="method=none" | FileCheck %s --check-prefix=NONE
// RUN: not fcc-opt %s --fcc-build-training --fcc-inject-compression="method=topk:2" 2>&1 | FileCheck %s --check-prefix=BADK
// RUN: not fcc-opt %s --fcc-build-training --fcc-inject-compression="method=fc.*=topk:0.1 scope=entire-model" 2>&1 | FileCheck %s --check-prefix=BADSCOPE
// RUN: not fcc-opt %s --fcc-build-training --fcc-inject-compression="method=topk:0.1,qsgd" 2>&1 | FileCheck %s --check-prefix=BADRULE
//
// fcc-inject-compression makes the optimizer see decompress(compress(g)) for
// the gradients the rules select; payloads are byte tensors of the method's
// capacity (the bytes a rank sends), so sizes below are hand-derived from the
// packed formats: qsgd:S packs 4 bytes of norm, ceil(log2(S+1)) bits per
// entry and a sign bit per entry; topk:K sends min(8k, ceil(n/8) + 4k) bytes
// for k = ceil(K n).

func.func @forward(%x: tensor<2x3x4x4xf32> {fcc.input = "input"},
                   %w: tensor<4x3x3x3xf32> {fcc.param = #fcc.param<name = "conv.weight", role = weight, trainable = true>},
                   %fw: tensor<10x64xf32> {fcc.param = #fcc.param<name = "fc.weight", role = weight, trainable = true>},
                   %fb: tensor<10xf32> {fcc.param = #fcc.param<name = "fc.bias", role = bias, trainable = true>}) -> (tensor<2x10xf32> {fcc.output = "logits"}) {
    %0 = fcc.conv2d %x, %w {pads = array<i64: 1, 1, 1, 1>} : (tensor<2x3x4x4xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x4x4xf32>
    %1 = fcc.relu %0 : tensor<2x4x4x4xf32>
    %2 = fcc.flatten %1 : tensor<2x4x4x4xf32> -> tensor<2x64xf32>
    %3 = fcc.linear %2, %fw, %fb : (tensor<2x64xf32>, tensor<10x64xf32>, tensor<10xf32>) -> tensor<2x10xf32>
    return %3 : tensor<2x10xf32>
}

// Layerwise qsgd:255: fc.weight (640 entries: 4 + 640 + 80 bytes) and
// conv.weight (108: 4 + 108 + 14); fc.bias (40 bytes) is under
// min-compress-bytes and stays dense.
// LAYER-LABEL: func.func @train_step
// Tensors are numbered in the order of the updates (conv.weight first); the
// compression sits right after the gradient it compresses.
// LAYER:      %[[P1:.*]] = fcc.compress %{{.*}}, %[[SEED:arg[0-9]+]] {method = "qsgd:255", tensor = 1 : i64} : tensor<10x64xf32> -> tensor<724xi8>
// LAYER-NEXT: %[[D1:.*]] = fcc.decompress %[[P1]], %[[SEED]] {method = "qsgd:255", tensor = 1 : i64} : tensor<724xi8> -> tensor<10x64xf32>
// LAYER:      %[[P0:.*]] = fcc.compress %{{.*}}, %[[SEED]] {method = "qsgd:255", tensor = 0 : i64} : tensor<4x3x3x3xf32> -> tensor<126xi8>
// LAYER-NEXT: %[[D0:.*]] = fcc.decompress %[[P0]]
// LAYER-NOT:  fcc.compress
// LAYER:      fcc.sgd_update %arg0, %[[D0]]
// LAYER-NEXT: fcc.sgd_update %arg1, %[[D1]]
// LAYER-NEXT: fcc.sgd_update %arg2, %[[BIAS:[0-9]+]],
// LAYER-NOT:  fcc.decompress

// Per-parameter rules (first match wins) with error feedback: a residual
// state per compressed gradient, added before compression and returned as
// the new value of its argument.
// RULES-LABEL: func.func @train_step
// RULES-SAME: %arg15: tensor<4x3x3x3xf32> {fcc.state = "residual:conv.weight"}, %arg16: tensor<10x64xf32> {fcc.state = "residual:fc.weight"}, %arg17: tensor<10xf32> {fcc.state = "residual:fc.bias"}
// RULES-SAME: tensor<4x3x3x3xf32> {fcc.updates = 15 : i64}, tensor<10x64xf32> {fcc.updates = 16 : i64}, tensor<10xf32> {fcc.updates = 17 : i64})
// fc.weight: k = 64, min(512, 80 + 256) = 336 bytes; fc.bias: k = 1, 6 bytes.
// RULES:      %[[E1:.*]] = fcc.add %{{.*}}, %arg16
// RULES-NEXT: %[[Q1:.*]] = fcc.compress %[[E1]], %{{.*}} {method = "topk:0.1", tensor = 1 : i64} : tensor<10x64xf32> -> tensor<336xi8>
// RULES-NEXT: fcc.decompress %[[Q1]]
// RULES-NEXT: %[[R1:.*]] = fcc.compress_residual %[[E1]], %[[Q1]]
// RULES:      fcc.compress {{.*}} {method = "topk:0.1", tensor = 2 : i64} : tensor<10xf32> -> tensor<6xi8>
// conv.weight by the catch-all rule: 4 + 108 * 4 bits + 14 = 72 bytes.
// RULES:      %[[E0:.*]] = fcc.add %{{.*}}, %arg15
// RULES-NEXT: fcc.compress %[[E0]], %{{.*}} {method = "qsgd:15", tensor = 0 : i64} : tensor<4x3x3x3xf32> -> tensor<72xi8>
// RULES:      return {{.*}}, %[[R1]], %{{.*}} :

// Entire model: all 758 gradient entries flattened, compressed as one
// (4 + 758 + 95 bytes), split back.
// WHOLE-LABEL: func.func @train_step
// WHOLE-SAME: %arg15: tensor<758xf32> {fcc.state = "residual:entire-model"}
// WHOLE:      %[[F:.*]] = fcc.concat_flat %{{.*}}, %{{.*}}, %{{.*}} : tensor<4x3x3x3xf32>, tensor<10x64xf32>, tensor<10xf32> -> tensor<758xf32>
// WHOLE-NEXT: %[[E:.*]] = fcc.add %[[F]], %arg15
// WHOLE-NEXT: %[[P:.*]] = fcc.compress %[[E]], %{{.*}} {method = "qsgd:255", tensor = 0 : i64} : tensor<758xf32> -> tensor<857xi8>
// WHOLE-NEXT: %[[D:.*]] = fcc.decompress %[[P]]
// WHOLE-NEXT: fcc.compress_residual %[[E]], %[[P]]
// WHOLE-NEXT: %[[S:.*]]:3 = fcc.split_flat %[[D]] : tensor<758xf32> -> tensor<4x3x3x3xf32>, tensor<10x64xf32>, tensor<10xf32>
// WHOLE:      fcc.sgd_update %arg0, %[[S]]#0
// WHOLE-NEXT: fcc.sgd_update %arg1, %[[S]]#1
// WHOLE-NEXT: fcc.sgd_update %arg2, %[[S]]#2

// NONE-LABEL: func.func @train_step
// NONE-NOT: fcc.compress

// BADK: error: fcc-inject-compression: --compress: topk:2: K must be in (0, 1]
// BADSCOPE: error: fcc-inject-compression: per-parameter rules need --compress-scope layerwise
// BADRULE: error: fcc-inject-compression: --compress: 'topk:0.1': with several items each must be a rule 'glob=method'
