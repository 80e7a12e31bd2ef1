//===- HostTensorTest.cpp - Compile-time folding of ONNX shape glue -------===//
//
// The folder evaluates the shape computations exporters emit; expected values
// follow the ONNX operator definitions by hand.
//
//===----------------------------------------------------------------------===//
#include "frontend/HostTensor.h"

#include <gtest/gtest.h>

using namespace fcc;

namespace {
onnx::NodeProto node(const std::string &op) {
  onnx::NodeProto n;
  n.set_op_type(op);
  return n;
}
void addInts(onnx::NodeProto &n, const std::string &name,
             std::vector<int64_t> v) {
  auto *a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v)
    a->add_ints(x);
}
void addInt(onnx::NodeProto &n, const std::string &name, int64_t v) {
  auto *a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}
HostTensor fold(const onnx::NodeProto &n, int64_t opset,
                std::vector<const HostTensor *> in) {
  std::vector<HostTensor> out;
  EXPECT_TRUE(foldConstantNode(n, opset, in, out));
  return out.empty() ? HostTensor{} : out[0];
}
} // namespace

TEST(HostTensor, ViewPatternFoldsToReshapeTarget) {
  // x.view(x.size(0), -1) for x of shape [8, 4, 2, 2].
  HostTensor x = HostTensor::floats(std::vector<double>(64, 0.0), {8, 4, 2, 2});
  HostTensor shape = fold(node("Shape"), 13, {&x});
  EXPECT_EQ(shape.toInts(), (std::vector<int64_t>{8, 4, 2, 2}));
  HostTensor zero = HostTensor::ints({0}, {});
  auto g = node("Gather");
  addInt(g, "axis", 0);
  HostTensor n = fold(g, 13, {&shape, &zero});
  EXPECT_EQ(n.shape, std::vector<int64_t>{});
  EXPECT_EQ(n.toInts(), std::vector<int64_t>{8});
  HostTensor axes = HostTensor::ints({0}, {1});
  HostTensor n1 = fold(node("Unsqueeze"), 13, {&n, &axes});
  EXPECT_EQ(n1.shape, std::vector<int64_t>{1});
  HostTensor minus1 = HostTensor::ints({-1}, {1});
  auto c = node("Concat");
  addInt(c, "axis", 0);
  HostTensor target = fold(c, 13, {&n1, &minus1});
  EXPECT_EQ(target.toInts(), (std::vector<int64_t>{8, -1}));
  HostTensor r = fold(node("Reshape"), 13, {&x, &target});
  EXPECT_EQ(r.shape, (std::vector<int64_t>{8, 16}));
}

TEST(HostTensor, UnsqueezeAxesBeforeOpset13AreAnAttribute) {
  HostTensor t = HostTensor::ints({7}, {});
  auto u0 = node("Unsqueeze");
  addInts(u0, "axes", {0});
  EXPECT_EQ(fold(u0, 11, {&t}).shape, (std::vector<int64_t>{1}));
  // Axes index the output: [3] with axes {0, 2} -> [1, 3, 1].
  auto u = node("Unsqueeze");
  addInts(u, "axes", {0, 2});
  HostTensor v = HostTensor::ints({1, 2, 3}, {3});
  EXPECT_EQ(fold(u, 11, {&v}).shape, (std::vector<int64_t>{1, 3, 1}));
}

TEST(HostTensor, SliceAndTranspose) {
  // [0..9] sliced 1:8:3 -> 1, 4, 7; negative step 8:1:-3 -> 8, 5, 2.
  std::vector<int64_t> ten = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  HostTensor x = HostTensor::ints(ten, {10});
  HostTensor s = HostTensor::ints({1}, {1}), e = HostTensor::ints({8}, {1});
  HostTensor ax = HostTensor::ints({0}, {1}), st = HostTensor::ints({3}, {1});
  EXPECT_EQ(fold(node("Slice"), 13, {&x, &s, &e, &ax, &st}).toInts(),
            (std::vector<int64_t>{1, 4, 7}));
  HostTensor s2 = HostTensor::ints({8}, {1}), e2 = HostTensor::ints({1}, {1});
  HostTensor st2 = HostTensor::ints({-3}, {1});
  EXPECT_EQ(fold(node("Slice"), 13, {&x, &s2, &e2, &ax, &st2}).toInts(),
            (std::vector<int64_t>{8, 5, 2}));
  // [[1, 2, 3], [4, 5, 6]]^T = [[1, 4], [2, 5], [3, 6]]
  HostTensor m = HostTensor::floats({1, 2, 3, 4, 5, 6}, {2, 3});
  HostTensor t = fold(node("Transpose"), 13, {&m});
  EXPECT_EQ(t.shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(t.f, (std::vector<double>{1, 4, 2, 5, 3, 6}));
}

TEST(HostTensor, IntegerArithmeticTruncates) {
  HostTensor a = HostTensor::ints({7, -7}, {2}), b = HostTensor::ints({2}, {1});
  EXPECT_EQ(fold(node("Div"), 13, {&a, &b}).toInts(),
            (std::vector<int64_t>{3, -3}));
  HostTensor z = HostTensor::ints({0}, {1});
  std::vector<HostTensor> out;
  EXPECT_THROW(foldConstantNode(node("Div"), 13, {&a, &z}, out), ImportError);
}

TEST(HostTensor, FromProtoValidates) {
  onnx::TensorProto p;
  p.set_name("w");
  p.set_data_type(onnx::TensorProto::FLOAT);
  p.add_dims(2);
  p.add_dims(2);
  p.add_float_data(1.0f);
  p.add_float_data(2.0f);
  p.add_float_data(3.0f);
  EXPECT_THROW(HostTensor::fromProto(p), ImportError); // 3 values for 2x2
  p.add_float_data(4.0f);
  EXPECT_EQ(HostTensor::fromProto(p).toFloat32(),
            (std::vector<float>{1, 2, 3, 4}));
  // float16 raw data: 0x3C00 = 1.0, 0xC000 = -2.0.
  onnx::TensorProto h;
  h.set_data_type(onnx::TensorProto::FLOAT16);
  h.add_dims(2);
  const char raw[] = {0x00, 0x3C, 0x00, static_cast<char>(0xC0)};
  h.set_raw_data(std::string(raw, 4));
  EXPECT_EQ(HostTensor::fromProto(h).toFloat32(), (std::vector<float>{1, -2}));
  onnx::TensorProto huge;
  huge.set_data_type(onnx::TensorProto::FLOAT);
  for (int k = 0; k < 6; ++k)
    huge.add_dims(100000);
  EXPECT_THROW(HostTensor::fromProto(huge), ImportError);
}
