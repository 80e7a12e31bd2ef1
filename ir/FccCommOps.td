//===- FccCommOps.td - Gradient compression and collectives -*- tablegen -*-===//
//
// Ops of data-parallel training (fcc-inject-compression,
// fcc-insert-collectives): a gradient is compressed into a byte payload, the
// payloads of all ranks meet in a collective, and every rank decompresses the
// result into the same averaged gradient. Payloads are `tensor<Bxi8>` in the
// packed formats of runtime/include/fcc/runtime/compress.h, so the bytes in
// the IR are the bytes on the wire. `method` is a compressor spec
// ("topk:0.01", "qsgd:255:bucket=512", ...); `tensor` numbers the compressed
// entity so that random draws differ between tensors.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_COMM_OPS_TD
#define FCC_COMM_OPS_TD

def Fcc_PayloadTensor : 1DTensorOf<[I8]>;
def Fcc_GatheredTensor : 2DTensorOf<[I8]>;
def Fcc_FlatTensor : 1DTensorOf<[F32]>;

def Fcc_CompressOp : Fcc_Op<"compress", [Pure]> {
  let summary = "Packs a gradient into a compressed payload";
  let description = [{
    `payload = compress(grad)` with the compressor `method`. The payload's
    static size is the method's capacity for `grad`'s element count (the
    exact size for all methods but the thresholds, whose payload carries its
    own length). Random draws come from the step seed: RandomK's positions
    from (seed, tensor) alone, so every rank keeps the same ones; TernGrad's
    and QSGD's stochastic rounding also from the rank.
  }];
  let arguments = (ins F32Tensor:$grad, Fcc_SeedTensor:$seed,
                       StrAttr:$method, I64Attr:$tensor);
  let results = (outs Fcc_PayloadTensor:$payload);
  let assemblyFormat = [{
    $grad `,` $seed attr-dict `:` type($grad) `->` type($payload)
  }];
  let hasVerifier = 1;
}

def Fcc_DecompressOp : Fcc_Op<"decompress", [Pure]> {
  let summary = "Unpacks a payload (or the mean of gathered payloads)";
  let description = [{
    With a `tensor<Bxi8>` payload: the dense gradient it encodes. With a
    gathered `tensor<?xBxi8>` (one row per rank, from fcc.all_gather): the
    mean over the ranks of their decompressed gradients, which every rank
    computes identically.
  }];
  let arguments = (ins AnyTypeOf<[Fcc_PayloadTensor, Fcc_GatheredTensor]>:$payload,
                       Fcc_SeedTensor:$seed, StrAttr:$method, I64Attr:$tensor);
  let results = (outs F32Tensor:$grad);
  let assemblyFormat = [{
    $payload `,` $seed attr-dict `:` type($payload) `->` type($grad)
  }];
  let hasVerifier = 1;
}

def Fcc_CompressResidualOp : Fcc_Op<"compress_residual", [Pure,
    AllTypesMatch<["grad", "residual"]>]> {
  let summary = "Error feedback: what compression left out";
  let description = [{
    `residual = grad - decompress(payload)` where `payload` is this rank's
    compression of `grad` (before any collective). Error feedback adds it to
    the next step's gradient.
  }];
  let arguments = (ins F32Tensor:$grad, Fcc_PayloadTensor:$payload,
                       Fcc_SeedTensor:$seed, StrAttr:$method, I64Attr:$tensor);
  let results = (outs F32Tensor:$residual);
  let assemblyFormat = [{
    $grad `,` $payload `,` $seed attr-dict `:` type($grad) `,` type($payload)
  }];
  let hasVerifier = 1;
}

// The collectives have no memory-effect interface on purpose: every rank must
// execute each of them, so they are never erased or merged.
def Fcc_AllReduceOp : Fcc_Op<"all_reduce", [SameOperandsAndResultType]> {
  let summary = "Sum (or mean, with `average`) over all ranks";
  let description = [{
    On a float tensor: the elementwise sum over the ranks, divided by the
    number of ranks with `average`. On a `tensor<Bxi8>` payload of a summable
    method (`method` = none, fp16, bf16 or randomk): the payloads are summed
    in their own element type (half payloads add in half precision, as NCCL
    and MPI do), then averaged.
  }];
  let arguments = (ins AnyTypeOf<[F32Tensor, Fcc_PayloadTensor]>:$input,
                       UnitAttr:$average, OptionalAttr<StrAttr>:$method);
  let results = (outs AnyTypeOf<[F32Tensor, Fcc_PayloadTensor]>:$output);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let hasVerifier = 1;
}

def Fcc_AllGatherOp : Fcc_Op<"all_gather"> {
  let summary = "Every rank's payload, one row per rank";
  let description = [{
    Row r of the result is rank r's payload. The number of ranks is known at
    run time only, hence the dynamic first dimension; the runtime owns the
    buffer. Threshold payloads (variable size) first exchange their lengths
    and then move only the bytes in use.
  }];
  let arguments = (ins Fcc_PayloadTensor:$payload, StrAttr:$method);
  let results = (outs Fcc_GatheredTensor:$gathered);
  let assemblyFormat = "$payload attr-dict `:` type($payload) `->` type($gathered)";
  let hasVerifier = 1;
}

def Fcc_ConcatFlatOp : Fcc_Op<"concat_flat", [Pure]> {
  let summary = "Flattens and concatenates float tensors into one vector";
  let description = [{
    Used to compress the whole model as one entity and to bucket small
    gradients into one collective.
  }];
  let arguments = (ins Variadic<F32Tensor>:$inputs);
  let results = (outs Fcc_FlatTensor:$output);
  let assemblyFormat = "$inputs attr-dict `:` type($inputs) `->` type($output)";
  let hasVerifier = 1;
}

def Fcc_SplitFlatOp : Fcc_Op<"split_flat", [Pure]> {
  let summary = "The inverse of fcc.concat_flat";
  let arguments = (ins Fcc_FlatTensor:$input);
  let results = (outs Variadic<F32Tensor>:$outputs);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($outputs)";
  let hasVerifier = 1;
}

#endif // FCC_COMM_OPS_TD
