//===- ModelZooTest.cpp - Tests of the model zoo (models/ModelZoo) --------===//
//
// Every model at two widths, graph-only and with weights, must pass the ONNX
// checker and full shape inference, have the architecture's exact node counts
// and the hand-derived trainable parameter counts, and follow the naming and
// attribute conventions fcc's importer relies on.
//
//===----------------------------------------------------------------------===//
#include "models/ModelZoo.h"

#include "fcc/runtime/init.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>

using namespace fcc::models;

namespace {

using Counts = std::map<std::string, int>;

Counts opCounts(const onnx::ModelProto &m) {
  Counts c;
  for (const auto &n : m.graph().node())
    ++c[n.op_type()];
  return c;
}

const onnx::NodeProto *findNode(const onnx::ModelProto &m,
                                const std::string &name) {
  for (const auto &n : m.graph().node())
    if (n.name() == name)
      return &n;
  return nullptr;
}

const onnx::AttributeProto *findAttr(const onnx::NodeProto &n,
                                     const std::string &name) {
  for (const auto &a : n.attribute())
    if (a.name() == name)
      return &a;
  return nullptr;
}

std::vector<int64_t> ints(const onnx::AttributeProto *a) {
  return a ? std::vector<int64_t>(a->ints().begin(), a->ints().end())
           : std::vector<int64_t>{};
}

/// Shape of a parameter (graph input or initializer), or {} if absent.
std::vector<int64_t> paramShape(const onnx::ModelProto &m,
                                const std::string &name) {
  for (const auto &t : m.graph().initializer())
    if (t.name() == name)
      return {t.dims().begin(), t.dims().end()};
  for (const auto &in : m.graph().input())
    if (in.name() == name) {
      std::vector<int64_t> dims;
      for (const auto &d : in.type().tensor_type().shape().dim())
        dims.push_back(d.has_dim_value() ? d.dim_value() : -1);
      return dims;
    }
  return {};
}

bool hasParam(const onnx::ModelProto &m, const std::string &name) {
  return !paramShape(m, name).empty();
}

std::unique_ptr<onnx::ModelProto> build(const std::string &name,
                                        ZooOptions o = {}) {
  ZooResult r = buildZooModel(name, o);
  EXPECT_TRUE(r) << r.error;
  return std::move(r.model);
}

//===----------------------------------------------------------------------===//
// Every model x width x graph-only/with weights
//===----------------------------------------------------------------------===//

// Hand-derived trainable parameter counts.
//
// ResNet9, width 1 (channels 64, 128, 256, 512; convs have no bias):
//   convs 3*64*9 + 64*128*9 + 2*128*128*9 + 128*256*9 + 256*512*9
//         + 2*512*512*9 = 1728 + 73728 + 294912 + 294912 + 1179648 + 4718592
//         = 6,563,520
//   fc 512*10 = 5,120; BN scale+shift 2*(64+3*128+256+3*512) = 4,480
//   total 6,573,120
// ResNet9, width 0.125 (channels 8, 16, 32, 64):
//   convs 216 + 1152 + 4608 + 4608 + 18432 + 73728 = 102,744
//   fc 64*10 = 640; BN 2*(8+3*16+32+3*64) = 560; total 103,944
// resnet9-bot freezes the 8 BN scales: 6,573,120 - 2,240 = 6,570,880 and
//   103,944 - 280 = 103,664.
// AlexNet, width 1 (3x3 convs with bias; 32 -> 16 (stride 2) -> 8 -> 4 -> 2):
//   conv1 3*64*9+64 = 1,792; conv2 64*192*9+192 = 110,784;
//   conv3 192*384*9+384 = 663,936; conv4 384*256*9+256 = 884,992;
//   conv5 256*256*9+256 = 590,080; fc1 1024*4096+4096 = 4,198,400;
//   fc2 4096*4096+4096 = 16,781,312; fc3 4096*10+10 = 40,970
//   total 23,272,266
// AlexNet, width 0.125 (channels 8, 24, 48, 32, 32; hidden 512; flatten 128):
//   conv1 216+8 = 224; conv2 1728+24 = 1,752; conv3 10368+48 = 10,416;
//   conv4 13824+32 = 13,856; conv5 9216+32 = 9,248; fc1 128*512+512 = 66,048;
//   fc2 512*512+512 = 262,656; fc3 512*10+10 = 5,130; total 369,330
struct Expected {
  std::string model;
  double width;
  int64_t params;
};

const Expected kExpected[] = {
    {"resnet9", 1.0, 6573120},     {"resnet9", 0.125, 103944},
    {"resnet9-bot", 1.0, 6570880}, {"resnet9-bot", 0.125, 103664},
    {"alexnet", 1.0, 23272266},    {"alexnet", 0.125, 369330},
};

Counts expectedOps(const std::string &model) {
  if (model == "resnet9")
    return {{"Conv", 8},    {"BatchNormalization", 8},
            {"Relu", 8},    {"MaxPool", 4},
            {"Add", 2},     {"Flatten", 1},
            {"Gemm", 1},    {"Mul", 1},
            {"Constant", 1}};
  if (model == "resnet9-bot")
    // 8 frozen BN scales + the logit scale.
    return {{"Conv", 8},    {"BatchNormalization", 8},
            {"Celu", 8},    {"MaxPool", 4},
            {"Add", 2},     {"Flatten", 1},
            {"Gemm", 1},    {"Mul", 1},
            {"Constant", 9}};
  return {{"Conv", 5},    {"Relu", 7},     {"MaxPool", 3}, {"Flatten", 1},
          {"Dropout", 2}, {"Constant", 2}, {"Gemm", 3}};
}

class ZooModelTest : public testing::TestWithParam<std::tuple<Expected, bool>> {
};

TEST_P(ZooModelTest, ValidWithExactCounts) {
  const auto &[expected, withWeights] = GetParam();
  ZooOptions o;
  o.widthMult = expected.width;
  o.withWeights = withWeights;
  auto m = build(expected.model, o);
  ASSERT_TRUE(m);

  EXPECT_EQ(verifyZooModel(*m), "");
  EXPECT_EQ(m->ir_version(), 8);
  EXPECT_EQ(m->producer_name(), "fcc-models");
  ASSERT_EQ(m->opset_import_size(), 1);
  EXPECT_EQ(m->opset_import(0).domain(), "");
  EXPECT_EQ(m->opset_import(0).version(), 17);

  // input [N, 3, 32, 32] -> logits [N, 10]
  const onnx::GraphProto &g = m->graph();
  ASSERT_GE(g.input_size(), 1);
  EXPECT_EQ(g.input(0).name(), "input");
  const auto &in = g.input(0).type().tensor_type().shape();
  ASSERT_EQ(in.dim_size(), 4);
  EXPECT_EQ(in.dim(0).dim_param(), "N");
  ASSERT_EQ(g.output_size(), 1);
  EXPECT_EQ(g.output(0).name(), "logits");
  const auto &out = g.output(0).type().tensor_type().shape();
  ASSERT_EQ(out.dim_size(), 2);
  EXPECT_EQ(out.dim(0).dim_param(), "N");
  EXPECT_EQ(out.dim(1).dim_value(), 10);

  EXPECT_EQ(opCounts(*m), expectedOps(expected.model));
  EXPECT_EQ(countTrainableParameters(*m), expected.params);

  // Parameters: graph inputs with static shapes, or initializers only.
  if (withWeights) {
    EXPECT_EQ(g.input_size(), 1);
    EXPECT_GT(g.initializer_size(), 0);
  } else {
    EXPECT_EQ(g.initializer_size(), 0);
    for (int i = 1; i < g.input_size(); ++i)
      for (const auto &d : g.input(i).type().tensor_type().shape().dim())
        EXPECT_GT(d.dim_value(), 0) << g.input(i).name();
  }
  // Node names are unique and non-empty.
  std::set<std::string> names;
  for (const auto &n : g.node()) {
    EXPECT_FALSE(n.name().empty());
    EXPECT_TRUE(names.insert(n.name()).second) << n.name();
  }
}

std::string
testName(const testing::TestParamInfo<std::tuple<Expected, bool>> &info) {
  const auto &[e, w] = info.param;
  std::string s = e.model + (e.width == 1.0 ? "_w1" : "_w0125") +
                  (w ? "_weights" : "_graph");
  for (char &c : s)
    if (c == '-')
      c = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(AllModels, ZooModelTest,
                         testing::Combine(testing::ValuesIn(kExpected),
                                          testing::Bool()),
                         testName);

//===----------------------------------------------------------------------===//
// Architecture details
//===----------------------------------------------------------------------===//

TEST(ResNet9, NamesAttributesAndTopology) {
  auto m = build("resnet9");
  ASSERT_TRUE(m);
  for (const char *p :
       {"prep.conv.weight", "prep.bn.weight", "prep.bn.bias",
        "prep.bn.running_mean", "prep.bn.running_var", "layer1.conv.weight",
        "layer1.res1.conv.weight", "layer1.res2.bn.weight",
        "layer2.conv.weight", "layer3.conv.weight", "layer3.res1.conv.weight",
        "layer3.res2.bn.running_var"})
    EXPECT_TRUE(hasParam(*m, p)) << p;
  EXPECT_FALSE(hasParam(*m, "prep.conv.bias"));
  EXPECT_EQ(paramShape(*m, "layer2.conv.weight"),
            (std::vector<int64_t>{256, 128, 3, 3}));
  EXPECT_EQ(paramShape(*m, "fc.weight"), (std::vector<int64_t>{10, 512}));

  for (const auto &n : m->graph().node()) {
    if (n.op_type() == "Conv") {
      EXPECT_EQ(ints(findAttr(n, "kernel_shape")),
                (std::vector<int64_t>{3, 3}));
      EXPECT_EQ(ints(findAttr(n, "pads")), (std::vector<int64_t>{1, 1, 1, 1}));
      EXPECT_EQ(ints(findAttr(n, "strides")), (std::vector<int64_t>{1, 1}));
      EXPECT_EQ(n.input_size(), 2) << n.name();
    }
    if (n.op_type() == "BatchNormalization") {
      ASSERT_TRUE(findAttr(n, "epsilon"));
      EXPECT_FLOAT_EQ(findAttr(n, "epsilon")->f(), 1e-5f);
      ASSERT_TRUE(findAttr(n, "momentum"));
      EXPECT_FLOAT_EQ(findAttr(n, "momentum")->f(), 0.9f);
      EXPECT_FALSE(findAttr(n, "training_mode"));
      EXPECT_EQ(n.output_size(), 1);
    }
  }

  // conv -> BN -> ReLU -> pool, and the residual adds.
  const onnx::NodeProto *pool = findNode(*m, "layer1.pool");
  ASSERT_TRUE(pool);
  EXPECT_EQ(pool->input(0), "layer1.relu");
  EXPECT_EQ(ints(findAttr(*pool, "kernel_shape")),
            (std::vector<int64_t>{2, 2}));
  const onnx::NodeProto *add = findNode(*m, "layer1.add");
  ASSERT_TRUE(add);
  EXPECT_EQ(add->input(0), "layer1.pool");
  EXPECT_EQ(add->input(1), "layer1.res2.relu");
  ASSERT_TRUE(findNode(*m, "layer3.add"));

  const onnx::NodeProto *final = findNode(*m, "pool");
  ASSERT_TRUE(final);
  EXPECT_EQ(ints(findAttr(*final, "kernel_shape")),
            (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(ints(findAttr(*final, "strides")), (std::vector<int64_t>{4, 4}));

  const onnx::NodeProto *fc = findNode(*m, "fc");
  ASSERT_TRUE(fc);
  EXPECT_EQ(fc->op_type(), "Gemm");
  EXPECT_EQ(fc->input_size(), 2); // no bias
  ASSERT_TRUE(findAttr(*fc, "transB"));
  EXPECT_EQ(findAttr(*fc, "transB")->i(), 1);

  const onnx::NodeProto *scale = findNode(*m, "logit_scale");
  ASSERT_TRUE(scale);
  EXPECT_EQ(scale->op_type(), "Constant");
  const onnx::TensorProto &t = findAttr(*scale, "value")->t();
  EXPECT_EQ(t.dims_size(), 0);
  ASSERT_EQ(t.float_data_size(), 1);
  EXPECT_EQ(t.float_data(0), 0.125f);
  const onnx::NodeProto &last = m->graph().node(m->graph().node_size() - 1);
  EXPECT_EQ(last.op_type(), "Mul");
  EXPECT_EQ(last.output(0), "logits");
}

TEST(ResNet9Bot, PoolBeforeBnCeluAndFrozenScale) {
  auto m = build("resnet9-bot");
  ASSERT_TRUE(m);
  // No trainable BN scale anywhere.
  for (const auto &in : m->graph().input())
    EXPECT_EQ(in.name().find(".bn.weight"), std::string::npos) << in.name();
  EXPECT_TRUE(hasParam(*m, "prep.bn.bias"));
  EXPECT_TRUE(hasParam(*m, "layer1.res1.bn.running_mean"));

  for (const auto &n : m->graph().node()) {
    if (n.op_type() == "BatchNormalization") {
      const onnx::NodeProto *scale = findNode(*m, n.input(1));
      ASSERT_TRUE(scale) << n.name();
      EXPECT_EQ(scale->op_type(), "Constant");
      EXPECT_EQ(n.input(1), n.name() + ".weight_frozen");
      for (float v : findAttr(*scale, "value")->t().float_data())
        EXPECT_EQ(v, 1.0f);
    }
    if (n.op_type() == "Celu") {
      ASSERT_TRUE(findAttr(n, "alpha"));
      EXPECT_FLOAT_EQ(findAttr(n, "alpha")->f(), 0.3f);
    }
  }
  // conv -> pool -> BN -> CELU in the downsampling blocks.
  for (const std::string l : {"layer1", "layer2", "layer3"}) {
    const onnx::NodeProto *pool = findNode(*m, l + ".pool");
    const onnx::NodeProto *bn = findNode(*m, l + ".bn");
    ASSERT_TRUE(pool && bn) << l;
    EXPECT_EQ(pool->input(0), l + ".conv");
    EXPECT_EQ(bn->input(0), l + ".pool");
  }
  EXPECT_EQ(findNode(*m, "prep.bn")->input(0), "prep.conv");
  ASSERT_TRUE(findNode(*m, "logit_scale"));
}

TEST(AlexNet, NamesAttributesAndTopology) {
  auto m = build("alexnet");
  ASSERT_TRUE(m);
  for (int i = 1; i <= 5; ++i) {
    std::string c = "conv" + std::to_string(i);
    EXPECT_TRUE(hasParam(*m, c + ".weight")) << c;
    EXPECT_TRUE(hasParam(*m, c + ".bias")) << c;
  }
  for (int i = 1; i <= 3; ++i) {
    std::string f = "fc" + std::to_string(i);
    EXPECT_TRUE(hasParam(*m, f + ".weight")) << f;
    EXPECT_TRUE(hasParam(*m, f + ".bias")) << f;
    const onnx::NodeProto *fc = findNode(*m, f);
    ASSERT_TRUE(fc);
    EXPECT_EQ(fc->op_type(), "Gemm");
    EXPECT_EQ(fc->input_size(), 3);
    EXPECT_EQ(findAttr(*fc, "transB")->i(), 1);
  }
  EXPECT_EQ(paramShape(*m, "fc1.weight"), (std::vector<int64_t>{4096, 1024}));
  EXPECT_EQ(paramShape(*m, "fc3.weight"), (std::vector<int64_t>{10, 4096}));

  const onnx::NodeProto *conv1 = findNode(*m, "conv1");
  ASSERT_TRUE(conv1);
  EXPECT_EQ(ints(findAttr(*conv1, "strides")), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(ints(findAttr(*conv1, "pads")), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(ints(findAttr(*findNode(*m, "conv2"), "strides")),
            (std::vector<int64_t>{1, 1}));

  for (const auto &n : m->graph().node()) {
    if (n.op_type() != "Dropout")
      continue;
    ASSERT_EQ(n.input_size(), 2) << n.name(); // no training_mode input
    EXPECT_EQ(n.output_size(), 1);
    const onnx::NodeProto *ratio = findNode(*m, n.input(1));
    ASSERT_TRUE(ratio);
    EXPECT_EQ(ratio->op_type(), "Constant");
    const onnx::TensorProto &t = findAttr(*ratio, "value")->t();
    EXPECT_EQ(t.dims_size(), 0);
    EXPECT_EQ(t.data_type(), onnx::TensorProto::FLOAT);
    EXPECT_EQ(t.float_data(0), 0.5f);
  }
  // Flatten -> Dropout -> fc1 -> ReLU -> Dropout -> fc2 -> ReLU -> fc3.
  EXPECT_EQ(findNode(*m, "fc1.dropout")->input(0), "flatten");
  EXPECT_EQ(findNode(*m, "fc1")->input(0), "fc1.dropout");
  EXPECT_EQ(findNode(*m, "fc2.dropout")->input(0), "fc1.relu");
  EXPECT_EQ(findNode(*m, "fc3")->input(0), "fc2.relu");
  EXPECT_EQ(findNode(*m, "fc3")->output(0), "logits");
}

//===----------------------------------------------------------------------===//
// Options
//===----------------------------------------------------------------------===//

TEST(ZooOptions, ScaleWidth) {
  EXPECT_EQ(scaleWidth(64, 1.0), 64);
  EXPECT_EQ(scaleWidth(64, 0.125), 8);
  EXPECT_EQ(scaleWidth(192, 0.125), 24);
  EXPECT_EQ(scaleWidth(4096, 0.125), 512);
  EXPECT_EQ(scaleWidth(64, 0.001), 1);
  EXPECT_EQ(scaleWidth(10, 0.25), 3); // 2.5 rounds away from zero
  EXPECT_EQ(scaleWidth(64, 2.0), 128);
}

TEST(ZooOptions, WidthNeverScalesInputsOrClasses) {
  ZooOptions o;
  o.widthMult = 0.01;
  auto m = build("resnet9", o);
  ASSERT_TRUE(m);
  EXPECT_EQ(verifyZooModel(*m), "");
  EXPECT_EQ(paramShape(*m, "prep.conv.weight"),
            (std::vector<int64_t>{1, 3, 3, 3}));
  EXPECT_EQ(paramShape(*m, "fc.weight"), (std::vector<int64_t>{10, 5}));
}

TEST(ZooOptions, FashionMnistInput) {
  ZooOptions o;
  ASSERT_EQ(parseInputShape("1x28x28", o), "");
  EXPECT_EQ(o.inChannels, 1);
  EXPECT_EQ(o.inHeight, 28);
  EXPECT_EQ(o.inWidth, 28);

  // AlexNet: 28 -> 14 (stride 2) -> 7 -> 3 -> 1: flatten 256.
  auto a = build("alexnet", o);
  ASSERT_TRUE(a);
  EXPECT_EQ(verifyZooModel(*a), "");
  EXPECT_EQ(paramShape(*a, "conv1.weight"),
            (std::vector<int64_t>{64, 1, 3, 3}));
  EXPECT_EQ(paramShape(*a, "fc1.weight"), (std::vector<int64_t>{4096, 256}));
  EXPECT_EQ(countTrainableParameters(*a), 23272266 - 2 * 64 * 9 - 768 * 4096);

  // ResNet9: 28 -> 14 -> 7 -> 3, then a 3x3 global max pool.
  for (const char *name : {"resnet9", "resnet9-bot"}) {
    auto r = build(name, o);
    ASSERT_TRUE(r);
    EXPECT_EQ(verifyZooModel(*r), "") << name;
    EXPECT_EQ(ints(findAttr(*findNode(*r, "pool"), "kernel_shape")),
              (std::vector<int64_t>{3, 3}));
    EXPECT_EQ(paramShape(*r, "fc.weight"), (std::vector<int64_t>{10, 512}));
  }
}

TEST(ZooOptions, NonSquareInput) {
  ZooOptions o;
  ASSERT_EQ(parseInputShape("3x32x64", o), "");
  auto r = build("resnet9", o);
  ASSERT_TRUE(r);
  EXPECT_EQ(verifyZooModel(*r), "");
  EXPECT_EQ(ints(findAttr(*findNode(*r, "pool"), "kernel_shape")),
            (std::vector<int64_t>{4, 8}));
}

TEST(ZooOptions, InputTooSmall) {
  ZooOptions o;
  ASSERT_EQ(parseInputShape("3x4x4", o), "");
  ZooResult r = buildZooModel("resnet9", o); // 4 -> 2 -> 1 -> 0
  EXPECT_FALSE(r);
  EXPECT_NE(r.error.find("input 3x4x4 is too small for resnet9"),
            std::string::npos)
      << r.error;
  EXPECT_NE(r.error.find("layer3.pool"), std::string::npos) << r.error;

  ASSERT_EQ(parseInputShape("3x2x2", o), "");
  r = buildZooModel("alexnet", o); // 2 -> 1 (stride 2) -> 0
  EXPECT_FALSE(r);
  EXPECT_NE(r.error.find("too small for alexnet"), std::string::npos)
      << r.error;
  EXPECT_NE(r.error.find("conv1.pool"), std::string::npos) << r.error;

  // The smallest inputs that survive.
  ASSERT_EQ(parseInputShape("3x8x8", o), "");
  EXPECT_TRUE(buildZooModel("resnet9", o));
  ASSERT_EQ(parseInputShape("3x15x15", o), ""); // 8 -> 4 -> 2 -> 1
  EXPECT_TRUE(buildZooModel("alexnet", o));
}

TEST(ZooOptions, BadInputShapes) {
  for (const char *bad :
       {"", "3x32", "3x32x32x1", "ax32x32", "0x32x32", "3x-1x32", "3X32X32",
        "3x32x32 ", " 3x32x32", "3xx32", "3x32x", "99999999999x1x1"}) {
    ZooOptions o;
    std::string err = parseInputShape(bad, o);
    EXPECT_NE(err, "") << "'" << bad << "'";
    EXPECT_NE(err.find("expected CxHxW"), std::string::npos) << err;
    EXPECT_EQ(o.inChannels, 3); // untouched
  }
}

TEST(ZooOptions, StaticBatch) {
  ZooOptions o;
  o.batch = 32;
  for (const std::string &name : zooModelNames()) {
    auto m = build(name, o);
    ASSERT_TRUE(m);
    EXPECT_EQ(verifyZooModel(*m), "") << name;
    EXPECT_EQ(
        m->graph().input(0).type().tensor_type().shape().dim(0).dim_value(),
        32);
    EXPECT_EQ(
        m->graph().output(0).type().tensor_type().shape().dim(0).dim_value(),
        32);
  }
}

TEST(ZooOptions, Errors) {
  ZooResult r = buildZooModel("resnet18", {});
  EXPECT_FALSE(r);
  EXPECT_EQ(r.error, "unknown model 'resnet18' (known: resnet9 resnet9-bot "
                     "alexnet)");
  for (double w : {0.0, -1.0, std::nan("")}) {
    ZooOptions o;
    o.widthMult = w;
    r = buildZooModel("alexnet", o);
    EXPECT_FALSE(r);
    EXPECT_NE(r.error.find("width multiplier"), std::string::npos) << r.error;
  }
  ZooOptions o;
  o.batch = 0;
  EXPECT_FALSE(buildZooModel("alexnet", o));
}

TEST(Zoo, ListsModels) {
  EXPECT_EQ(zooModelNames(),
            (std::vector<std::string>{"resnet9", "resnet9-bot", "alexnet"}));
  for (const ZooModelInfo &m : zooModels())
    EXPECT_FALSE(m.description.empty());
}

//===----------------------------------------------------------------------===//
// Weights
//===----------------------------------------------------------------------===//

std::vector<float> initializerValues(const onnx::ModelProto &m,
                                     const std::string &name) {
  for (const auto &t : m.graph().initializer())
    if (t.name() == name) {
      std::vector<float> v(t.raw_data().size() / sizeof(float));
      std::memcpy(v.data(), t.raw_data().data(), t.raw_data().size());
      return v;
    }
  ADD_FAILURE() << "no initializer " << name;
  return {};
}

TEST(ZooWeights, ValuesComeFromParamInit) {
  ZooOptions o;
  o.withWeights = true;
  o.seed = 1234;
  o.widthMult = 0.25;
  auto m = build("alexnet", o);
  ASSERT_TRUE(m);
  auto expect = [&](const std::string &name, int role, int64_t fanIn) {
    std::vector<float> got = initializerValues(*m, name);
    std::vector<float> want(got.size());
    ASSERT_EQ(fcc_param_init(role, name.c_str(), int64_t(want.size()), fanIn,
                             1234, want.data()),
              0);
    EXPECT_EQ(got, want) << name;
  };
  expect("conv1.weight", FCC_ROLE_WEIGHT, 3 * 9);
  expect("conv1.bias", FCC_ROLE_BIAS, 3 * 9);
  expect("conv2.weight", FCC_ROLE_WEIGHT, 16 * 9);
  expect("fc1.weight", FCC_ROLE_WEIGHT, 64 * 2 * 2);
  expect("fc3.bias", FCC_ROLE_BIAS, 1024);

  auto r = build("resnet9", o);
  ASSERT_TRUE(r);
  for (float v : initializerValues(*r, "layer1.bn.weight"))
    EXPECT_EQ(v, 1.0f);
  for (float v : initializerValues(*r, "layer1.bn.bias"))
    EXPECT_EQ(v, 0.0f);
  for (float v : initializerValues(*r, "layer1.bn.running_mean"))
    EXPECT_EQ(v, 0.0f);
  for (float v : initializerValues(*r, "layer1.bn.running_var"))
    EXPECT_EQ(v, 1.0f);
  std::vector<float> fc = initializerValues(*r, "fc.weight");
  ASSERT_EQ(fc.size(), 10u * 128);
  for (float v : fc)
    EXPECT_LE(std::fabs(v), 1.0f / std::sqrt(128.0f));
}

TEST(ZooWeights, SeedsAndWidths) {
  ZooOptions o;
  o.withWeights = true;
  o.seed = 1;
  auto a = build("resnet9", o);
  auto b = build("resnet9", o);
  o.seed = 2;
  auto c = build("resnet9", o);
  ASSERT_TRUE(a && b && c);
  auto wa = initializerValues(*a, "layer2.conv.weight");
  EXPECT_EQ(wa, initializerValues(*b, "layer2.conv.weight"));
  EXPECT_NE(wa, initializerValues(*c, "layer2.conv.weight"));
  // The bag-of-tricks variant orders parameters differently (pool before BN)
  // but the same parameter gets the same values.
  o.seed = 1;
  auto bot = build("resnet9-bot", o);
  ASSERT_TRUE(bot);
  EXPECT_EQ(wa, initializerValues(*bot, "layer2.conv.weight"));
}

TEST(ZooFiles, GraphOnlyModelsAreSmall) {
  for (const std::string &name : zooModelNames()) {
    auto m = build(name);
    ASSERT_TRUE(m);
    std::string bytes;
    ASSERT_TRUE(m->SerializeToString(&bytes));
    EXPECT_LT(bytes.size(), 16u * 1024) << name;
    onnx::ModelProto back;
    ASSERT_TRUE(back.ParseFromString(bytes));
    EXPECT_EQ(countTrainableParameters(back), countTrainableParameters(*m));
  }
}

} // namespace
