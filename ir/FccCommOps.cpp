//===- FccCommOps.cpp - Verifiers of compression and collective ops -------===//
//
// fcc.compress, fcc.decompress, fcc.compress_residual, fcc.all_reduce,
// fcc.all_gather, fcc.concat_flat and fcc.split_flat (ir/FccCommOps.td). The
// payload sizes are checked against the runtime's own capacity formula
// (fcc/runtime/compress.h), so that the IR and the wire agree byte for byte.
//
//===----------------------------------------------------------------------===//
#include "ir/FccDialect.h"
#include "ir/ShapeInference.h"

#include "fcc/runtime/compress.h"

using namespace mlir;
using namespace fcc;

static int64_t numel(Value v) {
  return cast<ShapedType>(v.getType()).getNumElements();
}

/// Parses `method`; reports an error naming the op on failure.
static FailureOr<fcc_compressor> parseMethod(Operation *op, StringRef method) {
  fcc_compressor c;
  char err[256];
  if (fcc_compressor_parse(method.str().c_str(), &c, err, sizeof err) != 0)
    return op->emitOpError() << "bad method: " << err, failure();
  return c;
}

/// The payload's byte count must be the method's capacity for `count`
/// gradient elements.
static LogicalResult checkPayload(Operation *op, StringRef method,
                                  int64_t payloadBytes, int64_t count) {
  auto c = parseMethod(op, method);
  if (failed(c))
    return failure();
  int64_t want = fcc_compress_capacity(&*c, count);
  if (payloadBytes != want)
    return op->emitOpError() << "payload of " << payloadBytes
                             << " bytes, but " << method << " packs "
                             << count << " elements into " << want;
  return success();
}

LogicalResult CompressOp::verify() {
  return checkPayload(*this, getMethod(), numel(getPayload()), numel(getGrad()));
}

LogicalResult DecompressOp::verify() {
  auto t = cast<ShapedType>(getPayload().getType());
  if (t.getRank() == 2 && !t.isDynamicDim(0))
    return emitOpError("a gathered payload has one row per rank: its first "
                       "dimension must be dynamic (?)");
  if (t.isDynamicDim(t.getRank() - 1))
    return emitOpError("the payload size must be static");
  return checkPayload(*this, getMethod(), t.getDimSize(t.getRank() - 1),
                      numel(getGrad()));
}

LogicalResult CompressResidualOp::verify() {
  return checkPayload(*this, getMethod(), numel(getPayload()), numel(getGrad()));
}

LogicalResult AllReduceOp::verify() {
  auto et = cast<ShapedType>(getInput().getType()).getElementType();
  if (et.isInteger(8)) {
    if (!getMethod())
      return emitOpError("a byte payload needs the `method` that packed it");
    auto c = parseMethod(*this, *getMethod());
    if (failed(c))
      return failure();
    if (!fcc_compress_summable(&*c))
      return emitOpError() << *getMethod()
                           << " payloads cannot be summed; they travel by "
                              "fcc.all_gather";
    return success();
  }
  if (getMethod())
    return emitOpError("`method` is only for byte payloads");
  return success();
}

LogicalResult AllGatherOp::verify() {
  auto in = cast<ShapedType>(getPayload().getType());
  auto out = cast<ShapedType>(getGathered().getType());
  if (!out.isDynamicDim(0) || out.getDimSize(1) != in.getDimSize(0))
    return emitOpError() << "result must be tensor<?x" << in.getDimSize(0)
                         << "xi8> (one row per rank)";
  return success(succeeded(parseMethod(*this, getMethod())));
}

LogicalResult ConcatFlatOp::verify() {
  int64_t total = 0;
  for (Value v : getInputs())
    total += numel(v);
  if (getInputs().empty() || total != numel(getOutput()))
    return emitOpError() << "output has " << numel(getOutput())
                         << " elements, the inputs " << total;
  return success();
}

LogicalResult SplitFlatOp::verify() {
  int64_t total = 0;
  for (Value v : getOutputs())
    total += numel(v);
  if (getOutputs().empty() || total != numel(getInput()))
    return emitOpError() << "input has " << numel(getInput())
                         << " elements, the outputs " << total;
  return success();
}
