//===- ShapeInference.cpp - Result shapes of fcc ops ----------------------===//
#include "ir/ShapeInference.h"

#include "fcc/runtime/window.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/ADT/STLExtras.h"

using namespace mlir;
using namespace fcc;
using llvm::ArrayRef;

std::string fcc::formatShape(ArrayRef<int64_t> shape) {
  if (shape.empty())
    return "scalar";
  std::string s;
  for (auto [i, d] : llvm::enumerate(shape)) {
    if (i)
      s += 'x';
    s += d < 0 ? std::string("?") : std::to_string(d);
  }
  return s;
}

static std::string formatList(ArrayRef<int64_t> v) {
  std::string s = "[";
  for (auto [i, d] : llvm::enumerate(v))
    s += (i ? ", " : "") + std::to_string(d);
  return s + "]";
}

int64_t fcc::numElements(ArrayRef<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

// Checks the window attributes shared by convolution and pooling.
static LogicalResult checkWindowAttrs(ArrayRef<int64_t> kernel,
                                      ArrayRef<int64_t> strides,
                                      ArrayRef<int64_t> pads,
                                      ArrayRef<int64_t> dilations,
                                      std::string &error) {
  if (kernel.size() != 2)
    return error = "kernel must have 2 entries, got " + formatList(kernel),
           failure();
  if (strides.size() != 2)
    return error = "strides must have 2 entries, got " + formatList(strides),
           failure();
  if (pads.size() != 4)
    return error = "pads must have 4 entries [top, left, bottom, right], got " +
                   formatList(pads),
           failure();
  if (dilations.size() != 2)
    return error = "dilations must have 2 entries, got " + formatList(dilations),
           failure();
  if (llvm::any_of(kernel, [](int64_t v) { return v <= 0; }))
    return error = "kernel sizes must be positive, got " + formatList(kernel),
           failure();
  if (llvm::any_of(strides, [](int64_t v) { return v <= 0; }))
    return error = "strides must be positive, got " + formatList(strides),
           failure();
  if (llvm::any_of(dilations, [](int64_t v) { return v <= 0; }))
    return error = "dilations must be positive, got " + formatList(dilations),
           failure();
  if (llvm::any_of(pads, [](int64_t v) { return v < 0; }))
    return error = "pads must be non-negative, got " + formatList(pads),
           failure();
  return success();
}

static FailureOr<Shape> windowOutput(ArrayRef<int64_t> input,
                                     int64_t channels,
                                     ArrayRef<int64_t> kernel,
                                     ArrayRef<int64_t> strides,
                                     ArrayRef<int64_t> pads,
                                     ArrayRef<int64_t> dilations, bool ceilMode,
                                     std::string &error) {
  Shape out = {input[0], channels, 0, 0};
  for (int i = 0; i < 2; ++i) {
    out[2 + i] = fcc_window_output_size_rule(input[2 + i], kernel[i], strides[i],
                                             pads[i], pads[i + 2], dilations[i],
                                             ceilMode);
    if (out[2 + i] <= 0) {
      error = llvm::formatv("the {0}x{1} window (dilations {2}, pads {3}) does "
                            "not fit the {4}x{5} input",
                            kernel[0], kernel[1], formatList(dilations),
                            formatList(pads), input[2], input[3]);
      return failure();
    }
  }
  return out;
}

FailureOr<Shape> fcc::inferConv2DShape(ArrayRef<int64_t> input,
                                       ArrayRef<int64_t> weight,
                                       std::optional<ArrayRef<int64_t>> bias,
                                       ArrayRef<int64_t> strides,
                                       ArrayRef<int64_t> pads,
                                       ArrayRef<int64_t> dilations,
                                       int64_t groups, std::string &error) {
  if (input.size() != 4 || weight.size() != 4) {
    error = "expects a 4-D input (NCHW) and a 4-D weight (KCRS), got " +
            formatShape(input) + " and " + formatShape(weight);
    return failure();
  }
  if (groups <= 0) {
    error = "groups must be positive, got " + std::to_string(groups);
    return failure();
  }
  if (failed(checkWindowAttrs(weight.drop_front(2), strides, pads, dilations,
                              error)))
    return failure();
  if (input[1] != weight[1] * groups) {
    error = llvm::formatv("input has {0} channels but the weight {1} with "
                          "groups = {2} expects {3}",
                          input[1], formatShape(weight), groups,
                          weight[1] * groups);
    return failure();
  }
  if (weight[0] % groups != 0) {
    error = llvm::formatv("{0} output channels are not divisible by groups = {1}",
                          weight[0], groups);
    return failure();
  }
  if (bias && (bias->size() != 1 || (*bias)[0] != weight[0])) {
    error = llvm::formatv("bias has shape {0} but the convolution has {1} "
                          "output channels",
                          formatShape(*bias), weight[0]);
    return failure();
  }
  return windowOutput(input, weight[0], weight.drop_front(2), strides, pads,
                      dilations, /*ceilMode=*/false, error);
}

FailureOr<Shape> fcc::inferPool2DShape(ArrayRef<int64_t> input,
                                       ArrayRef<int64_t> kernel,
                                       ArrayRef<int64_t> strides,
                                       ArrayRef<int64_t> pads,
                                       ArrayRef<int64_t> dilations,
                                       bool ceilMode, std::string &error) {
  if (input.size() != 4) {
    error = "expects a 4-D input (NCHW), got " + formatShape(input);
    return failure();
  }
  if (failed(checkWindowAttrs(kernel, strides, pads, dilations, error)))
    return failure();
  for (int i = 0; i < 2; ++i)
    if (pads[i] >= kernel[i] || pads[i + 2] >= kernel[i]) {
      error = "pads " + formatList(pads) + " must be smaller than the kernel " +
              formatList(kernel);
      return failure();
    }
  return windowOutput(input, input[1], kernel, strides, pads, dilations,
                      ceilMode, error);
}

FailureOr<Shape> fcc::inferBroadcastShape(ArrayRef<int64_t> lhs,
                                          ArrayRef<int64_t> rhs,
                                          std::string &error) {
  size_t rank = std::max(lhs.size(), rhs.size());
  Shape out(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    int64_t a = i < rank - lhs.size() ? 1 : lhs[i - (rank - lhs.size())];
    int64_t b = i < rank - rhs.size() ? 1 : rhs[i - (rank - rhs.size())];
    if (a != b && a != 1 && b != 1) {
      error = "shapes " + formatShape(lhs) + " and " + formatShape(rhs) +
              " do not broadcast";
      return failure();
    }
    out[i] = a == 1 ? b : a;
  }
  return out;
}

FailureOr<Shape> fcc::inferLinearShape(ArrayRef<int64_t> input,
                                       ArrayRef<int64_t> weight,
                                       std::optional<ArrayRef<int64_t>> bias,
                                       bool transA, bool transB,
                                       std::string &error) {
  if (input.size() != 2 || weight.size() != 2) {
    error = "expects 2-D operands, got " + formatShape(input) + " and " +
            formatShape(weight);
    return failure();
  }
  int64_t m = transA ? input[1] : input[0];
  int64_t k = transA ? input[0] : input[1];
  int64_t kw = transB ? weight[1] : weight[0];
  int64_t n = transB ? weight[0] : weight[1];
  if (k != kw) {
    error = llvm::formatv("input {0}{1} has {2} features but the weight "
                          "{3}{4} expects {5}",
                          formatShape(input), transA ? " (transposed)" : "", k,
                          formatShape(weight), transB ? " (transposed)" : "",
                          kw);
    return failure();
  }
  Shape out = {m, n};
  if (bias) {
    std::string bError;
    auto b = inferBroadcastShape(out, *bias, bError);
    if (failed(b) || ArrayRef<int64_t>(*b) != ArrayRef<int64_t>(out)) {
      error = "bias of shape " + formatShape(*bias) +
              " does not broadcast to the " + formatShape(out) + " result";
      return failure();
    }
  }
  return out;
}

FailureOr<Shape> fcc::inferFlattenShape(ArrayRef<int64_t> input, int64_t axis,
                                        std::string &error) {
  int64_t rank = input.size();
  if (axis < -rank || axis > rank) {
    error = llvm::formatv("axis {0} is out of range for a rank-{1} input", axis,
                          rank);
    return failure();
  }
  if (axis < 0)
    axis += rank;
  return Shape{numElements(input.take_front(axis)),
               numElements(input.drop_front(axis))};
}
