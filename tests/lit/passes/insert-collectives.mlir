// RUN: fcc-opt %s --fcc-build-training --fcc-insert-collectives | FileCheck %s --check-prefix=DENSE
// RUN: fcc-opt %s --fcc-build-training="loss-scaling=true" --fcc-inject-compression="method=fc.weight=fp16,conv.*=terngrad" --fcc-insert-collectives="bucket-bytes=64" | FileCheck %s --check-prefix=MIXED
// RUN: fcc-opt %s --fcc-build-training --fcc-inject-compression="method=randomk:0.5" --fcc-insert-collectives --fcc-insert-collectives | FileCheck %s --check-prefix=TWICE
//
// fcc-insert-collectives averages every gradient over the ranks: dense ones
// by an averaging all_reduce (small ones bucketed into one), summable
// payloads (fp16, bf16, RandomK) by an all_reduce of the payload, the others
// (TopK, thresholds, TernGrad, QSGD) by an all_gather whose rows the
// decompression averages. Later uses, the loss-scaling check included, read
// the averaged gradient.

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

// With the default bucket (256 KiB) all three dense gradients share one
// all_reduce.
// DENSE-LABEL: func.func @train_step
// DENSE-SAME: attributes {fcc.collectives}
// DENSE:      %[[F:.*]] = fcc.concat_flat %[[GW:.*]], %[[GFW:.*]], %[[GFB:.*]] : tensor<4x3x3x3xf32>, tensor<10x64xf32>, tensor<10xf32> -> tensor<758xf32>
// DENSE-NEXT: %[[R:.*]] = fcc.all_reduce %[[F]] {average} : tensor<758xf32>
// DENSE-NEXT: %[[S:.*]]:3 = fcc.split_flat %[[R]]
// DENSE:      fcc.sgd_update %arg0, %[[S]]#0
// DENSE-NEXT: fcc.sgd_update %arg1, %[[S]]#1
// DENSE-NEXT: fcc.sgd_update %arg2, %[[S]]#2
// DENSE-NOT:  fcc.all_

// MIXED-LABEL: func.func @train_step
// fp16 payload of fc.weight: summed (and averaged) by all_reduce.
// MIXED:      %[[P1:.*]] = fcc.compress %{{.*}} {method = "fp16", tensor = 1 : i64} : tensor<10x64xf32> -> tensor<1280xi8>
// MIXED-NEXT: %[[A1:.*]] = fcc.all_reduce %[[P1]] {average, method = "fp16"} : tensor<1280xi8>
// MIXED-NEXT: %[[D1:.*]] = fcc.decompress %[[A1]]
// fc.bias stays dense; under bucket-bytes but alone, so no bucket.
// MIXED-NEXT: %[[GB:.*]] = fcc.reduce_sum
// MIXED-NEXT: %[[AB:.*]] = fcc.all_reduce %[[GB]] {average} : tensor<10xf32>
// TernGrad carries a per-rank scale: gathered, then averaged by decompress.
// MIXED:      %[[P0:.*]] = fcc.compress %{{.*}} {method = "terngrad", tensor = 0 : i64} : tensor<4x3x3x3xf32> -> tensor<31xi8>
// MIXED-NEXT: %[[G0:.*]] = fcc.all_gather %[[P0]] {method = "terngrad"} : tensor<31xi8> -> tensor<?x31xi8>
// MIXED-NEXT: %[[D0:.*]] = fcc.decompress %[[G0]], %{{.*}} : tensor<?x31xi8> -> tensor<4x3x3x3xf32>
// MIXED-NEXT: %[[FIN:.*]], %{{.*}} = fcc.grads_finite %[[D0]], %[[D1]], %[[AB]]
// MIXED:      fcc.sgd_update %arg0, %[[D0]], {{.*}} if %[[FIN]]
// MIXED-NEXT: fcc.sgd_update %arg1, %[[D1]], {{.*}} if %[[FIN]]
// MIXED-NEXT: fcc.sgd_update %arg2, %[[AB]], {{.*}} if %[[FIN]]

// A second run leaves a data-parallel program alone.
// TWICE-COUNT-3: fcc.all_reduce
// TWICE-NOT:     fcc.all_reduce
