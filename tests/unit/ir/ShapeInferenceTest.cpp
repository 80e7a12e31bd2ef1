//===- ShapeInferenceTest.cpp - Shape rules of the fcc ops ----------------===//
//
// Expected shapes are worked out by hand from the formulas in the comments
// (PyTorch/ONNX conventions), not by calling the code under test.
//
//===----------------------------------------------------------------------===//
#include "ir/ShapeInference.h"

#include <gtest/gtest.h>

using namespace fcc;

namespace {
Shape ok(mlir::FailureOr<Shape> s, const std::string &error) {
  EXPECT_TRUE(succeeded(s)) << error;
  return succeeded(s) ? *s : Shape{};
}
} // namespace

TEST(ShapeInference, Conv2D) {
  std::string e;
  // (32 + 1 + 1 - 3) / 1 + 1 = 32
  EXPECT_EQ(ok(inferConv2DShape({512, 3, 32, 32}, {64, 3, 3, 3}, std::nullopt,
                                {1, 1}, {1, 1, 1, 1}, {1, 1}, 1, e), e),
            Shape({512, 64, 32, 32}));
  // Stride 2, pad 1 on 32: floor((32 + 2 - 3) / 2) + 1 = 16 (AlexNet conv1).
  EXPECT_EQ(ok(inferConv2DShape({8, 3, 32, 32}, {64, 3, 3, 3}, std::nullopt,
                                {2, 2}, {1, 1, 1, 1}, {1, 1}, 1, e), e),
            Shape({8, 64, 16, 16}));
  // Dilation 2, kernel 3: effective 5; (9 - 5) / 1 + 1 = 5. Groups 2: C/G = 2.
  EXPECT_EQ(ok(inferConv2DShape({1, 4, 9, 9}, {8, 2, 3, 3}, std::nullopt,
                                {1, 1}, {0, 0, 0, 0}, {2, 2}, 2, e), e),
            Shape({1, 8, 5, 5}));
  // Asymmetric pads [top 1, left 0, bottom 0, right 2] on 5x5, kernel 3:
  // H: 5 + 1 - 3 + 1 = 4; W: 5 + 2 - 3 + 1 = 5.
  EXPECT_EQ(ok(inferConv2DShape({1, 1, 5, 5}, {1, 1, 3, 3}, std::nullopt,
                                {1, 1}, {1, 0, 0, 2}, {1, 1}, 1, e), e),
            Shape({1, 1, 4, 5}));
}

TEST(ShapeInference, Conv2DErrors) {
  std::string e;
  llvm::SmallVector<int64_t> bias = {5};
  EXPECT_TRUE(failed(inferConv2DShape({1, 3, 8, 8}, {4, 3, 3, 3},
                                      llvm::ArrayRef<int64_t>(bias), {1, 1},
                                      {0, 0, 0, 0}, {1, 1}, 1, e)));
  EXPECT_NE(e.find("bias has shape 5"), std::string::npos) << e;
  EXPECT_TRUE(failed(inferConv2DShape({1, 3, 2, 2}, {4, 3, 3, 3}, std::nullopt,
                                      {1, 1}, {0, 0, 0, 0}, {1, 1}, 1, e)));
  EXPECT_NE(e.find("does not fit"), std::string::npos) << e;
  EXPECT_TRUE(failed(inferConv2DShape({1, 3, 8, 8}, {4, 3, 3, 3}, std::nullopt,
                                      {0, 1}, {0, 0, 0, 0}, {1, 1}, 1, e)));
  EXPECT_NE(e.find("strides must be positive"), std::string::npos) << e;
}

TEST(ShapeInference, Pool2DCeilMode) {
  std::string e;
  // Floor: (7 - 2) / 2 + 1 = 3; ceil: ceil(5 / 2) + 1 = 4, and the last window
  // starts at 6 < 7 + 0, so it is kept.
  EXPECT_EQ(ok(inferPool2DShape({1, 3, 7, 7}, {2, 2}, {2, 2}, {0, 0, 0, 0},
                                {1, 1}, false, e), e),
            Shape({1, 3, 3, 3}));
  EXPECT_EQ(ok(inferPool2DShape({1, 3, 7, 7}, {2, 2}, {2, 2}, {0, 0, 0, 0},
                                {1, 1}, true, e), e),
            Shape({1, 3, 4, 4}));
  // Ceil with padding: in 4, pad 1+1, kernel 2, stride 3: ceil((6-2)/3)+1 = 3,
  // but the third window would start at 6 >= 4 + 1 (inside the end padding
  // only) and is dropped: 2.
  EXPECT_EQ(ok(inferPool2DShape({1, 1, 4, 4}, {2, 2}, {3, 3}, {1, 1, 1, 1},
                                {1, 1}, true, e), e),
            Shape({1, 1, 2, 2}));
}

TEST(ShapeInference, Broadcast) {
  std::string e;
  EXPECT_EQ(ok(inferBroadcastShape({2, 3, 4}, {3, 1}, e), e), Shape({2, 3, 4}));
  EXPECT_EQ(ok(inferBroadcastShape({1}, {5, 1, 2}, e), e), Shape({5, 1, 2}));
  EXPECT_EQ(ok(inferBroadcastShape({}, {2}, e), e), Shape({2}));
  EXPECT_TRUE(failed(inferBroadcastShape({2, 3}, {4}, e)));
  EXPECT_EQ(e, "shapes 2x3 and 4 do not broadcast");
}

TEST(ShapeInference, LinearAndFlatten) {
  std::string e;
  // PyTorch layout: x [N, in] . W[out, in]^T
  EXPECT_EQ(ok(inferLinearShape({4, 6}, {5, 6}, std::nullopt, false, true, e), e),
            Shape({4, 5}));
  // Gemm with transA: A stored [K, M] = [6, 4].
  EXPECT_EQ(ok(inferLinearShape({6, 4}, {6, 5}, std::nullopt, true, false, e), e),
            Shape({4, 5}));
  llvm::SmallVector<int64_t> badBias = {4};
  EXPECT_TRUE(failed(inferLinearShape({4, 6}, {5, 6},
                                      llvm::ArrayRef<int64_t>(badBias), false,
                                      true, e)));
  EXPECT_EQ(ok(inferFlattenShape({2, 3, 4, 5}, 1, e), e), Shape({2, 60}));
  EXPECT_EQ(ok(inferFlattenShape({2, 3, 4, 5}, 0, e), e), Shape({1, 120}));
  EXPECT_EQ(ok(inferFlattenShape({2, 3, 4, 5}, -1, e), e), Shape({24, 5}));
  EXPECT_EQ(ok(inferFlattenShape({2, 3, 4, 5}, 4, e), e), Shape({120, 1}));
  EXPECT_TRUE(failed(inferFlattenShape({2, 3}, 3, e)));
}
