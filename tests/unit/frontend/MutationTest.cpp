//===- MutationTest.cpp - Hostile ONNX input never crashes the importer ---===//
//
// Deterministic mutation testing of the ONNX frontend: tiny zoo models
// (ResNet9, ResNet9-bot, AlexNet, with initializers) are damaged thousands of
// times — at the byte level (flips, truncation, splices, random runs) and at
// the structural level (nodes removed or retyped, attributes and dimensions
// set to hostile values, inputs rewired, initializers dropped or reshaped,
// opsets changed) — and each result is imported. The importer must either
// produce a module that verifies or return an error with a message; a crash,
// a hang or an escaping exception fails the test. Every seed is fixed, so a
// failure reproduces with its iteration number.
//
//===----------------------------------------------------------------------===//
#include "frontend/OnnxImporter.h"
#include "models/ModelZoo.h"
#include "tools/Registration.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace {

struct Outcome {
  int parsed = 0, imported = 0, rejected = 0;
};

std::vector<onnx::ModelProto> seedModels() {
  std::vector<onnx::ModelProto> models;
  for (const char *name : {"resnet9", "resnet9-bot", "alexnet"}) {
    fcc::models::ZooOptions o;
    o.widthMult = 0.0625;
    o.batch = 2;
    o.withWeights = true;
    o.seed = 1;
    auto r = fcc::models::buildZooModel(name, o);
    EXPECT_TRUE(r) << r.error;
    if (r)
      models.push_back(*r.model);
  }
  return models;
}

class Importer {
public:
  Importer() {
    fcc::registerAllDialects(registry_);
    context_ = std::make_unique<mlir::MLIRContext>(registry_);
    context_->loadAllAvailableDialects();
    // Diagnostics of rejected models are expected; keep the log quiet.
    context_->getDiagEngine().registerHandler(
        [](mlir::Diagnostic &) { return mlir::success(); });
  }

  // Imports `model`; records the outcome; fails the test on an escaping
  // exception, an empty error message or a module that does not verify.
  void import(const onnx::ModelProto &model, const std::string &what,
              Outcome &out) {
    try {
      fcc::ImportOptions options;
      auto module = fcc::importOnnxModel(*context_, model, options, what);
      if (!module) {
        std::string message = llvm::toString(module.takeError());
        EXPECT_FALSE(message.empty()) << what << ": empty error message";
        ++out.rejected;
        return;
      }
      EXPECT_TRUE(mlir::succeeded(mlir::verify(**module)))
          << what << ": imported module does not verify";
      ++out.imported;
    } catch (const std::exception &e) {
      ADD_FAILURE() << what << ": exception escaped the importer: "
                    << e.what();
    } catch (...) {
      ADD_FAILURE() << what << ": unknown exception escaped the importer";
    }
  }

private:
  mlir::DialectRegistry registry_;
  std::unique_ptr<mlir::MLIRContext> context_;
};

// Byte-level damage of the serialized model.
std::string mutateBytes(std::string bytes, std::mt19937 &rng) {
  auto pick = [&](size_t n) {
    return n ? std::uniform_int_distribution<size_t>(0, n - 1)(rng) : 0;
  };
  switch (rng() % 5) {
  case 0: // flip a few bits
    for (int k = 1 + int(rng() % 8); k > 0 && !bytes.empty(); --k)
      bytes[pick(bytes.size())] ^= char(1u << (rng() % 8));
    break;
  case 1: // truncate
    bytes.resize(pick(bytes.size()));
    break;
  case 2: { // splice a chunk elsewhere
    size_t from = pick(bytes.size()), len = pick(64) + 1;
    std::string chunk = bytes.substr(from, len);
    bytes.insert(pick(bytes.size()), chunk);
    break;
  }
  case 3: // a run of random bytes
    for (size_t at = pick(bytes.size()), k = 0; k < 16 && at + k < bytes.size();
         ++k)
      bytes[at + k] = char(rng());
    break;
  default: // small varints blown up: set a byte to 0xff
    if (!bytes.empty())
      bytes[pick(bytes.size())] = char(0xff);
  }
  return bytes;
}

// Structural damage that keeps the protobuf well-formed, to reach the
// checker, shape inference and the importer's own rules.
void mutateStructure(onnx::ModelProto &m, std::mt19937 &rng) {
  onnx::GraphProto &g = *m.mutable_graph();
  auto pick = [&](int n) {
    return n > 0 ? std::uniform_int_distribution<int>(0, n - 1)(rng) : 0;
  };
  const int64_t hostile[] = {-7, -1, 0, 1, 2, 3, 1 << 20, int64_t(1) << 40};
  switch (rng() % 9) {
  case 0: // remove a node
    if (g.node_size())
      g.mutable_node()->DeleteSubrange(pick(g.node_size()), 1);
    break;
  case 1: { // retype a node
    static const char *ops[] = {"Conv", "Relu", "MaxPool", "Add", "Gemm",
                                "Flatten", "BatchNormalization", "Mul",
                                "Reshape", "GlobalAveragePool", "Dropout",
                                "Softmax", "Identity", "Celu", "Tanh"};
    if (g.node_size())
      g.mutable_node(pick(g.node_size()))->set_op_type(ops[pick(15)]);
    break;
  }
  case 2: { // hostile attribute value
    if (!g.node_size())
      break;
    onnx::NodeProto &n = *g.mutable_node(pick(g.node_size()));
    if (!n.attribute_size())
      break;
    onnx::AttributeProto &a = *n.mutable_attribute(pick(n.attribute_size()));
    if (a.ints_size())
      a.set_ints(pick(a.ints_size()), hostile[pick(8)]);
    else if (a.has_i())
      a.set_i(hostile[pick(8)]);
    else if (a.has_f())
      a.set_f(float(hostile[pick(8)]) / 3.0f);
    break;
  }
  case 3: { // reshape an initializer's dims without its data
    if (!g.initializer_size())
      break;
    onnx::TensorProto &t = *g.mutable_initializer(pick(g.initializer_size()));
    if (t.dims_size())
      t.set_dims(pick(t.dims_size()), hostile[pick(8)]);
    break;
  }
  case 4: { // rewire an input
    if (!g.node_size())
      break;
    onnx::NodeProto &n = *g.mutable_node(pick(g.node_size()));
    if (!n.input_size())
      break;
    const onnx::NodeProto &other = g.node(pick(g.node_size()));
    std::string to = other.output_size() && rng() % 2 ? other.output(0)
                                                      : "no_such_value";
    n.set_input(pick(n.input_size()), to);
    break;
  }
  case 5: { // hostile input dimension
    if (!g.input_size())
      break;
    auto *shape = g.mutable_input(0)->mutable_type()->mutable_tensor_type()
                      ->mutable_shape();
    if (shape->dim_size())
      shape->mutable_dim(pick(shape->dim_size()))
          ->set_dim_value(hostile[pick(8)]);
    break;
  }
  case 6: // another opset
    if (m.opset_import_size())
      m.mutable_opset_import(0)->set_version(pick(26));
    break;
  case 7: // drop an initializer
    if (g.initializer_size())
      g.mutable_initializer()->DeleteSubrange(pick(g.initializer_size()), 1);
    break;
  default: // truncate an initializer's data
    if (g.initializer_size()) {
      onnx::TensorProto &t =
          *g.mutable_initializer(pick(g.initializer_size()));
      if (t.has_raw_data())
        t.set_raw_data(t.raw_data().substr(0, t.raw_data().size() / 2));
      else if (t.float_data_size())
        t.mutable_float_data()->Truncate(t.float_data_size() / 2);
    }
  }
}

TEST(ImporterMutation, DamagedBytesNeverCrash) {
  std::vector<onnx::ModelProto> seeds = seedModels();
  ASSERT_EQ(seeds.size(), 3u);
  Importer importer;
  Outcome out;
  std::mt19937 rng(20261130);
  const int kIterations = 900;
  for (int i = 0; i < kIterations; ++i) {
    std::string bytes = seeds[size_t(i) % seeds.size()].SerializeAsString();
    bytes = mutateBytes(std::move(bytes), rng);
    onnx::ModelProto m;
    if (!m.ParseFromString(bytes))
      continue; // the reader reports this; nothing reaches the importer
    ++out.parsed;
    importer.import(m, "bytes#" + std::to_string(i), out);
  }
  std::printf("byte mutations: %d, parsed %d, imported %d, rejected %d\n",
              kIterations, out.parsed, out.imported, out.rejected);
  EXPECT_GT(out.parsed, 0);
}

TEST(ImporterMutation, DamagedStructureNeverCrashes) {
  std::vector<onnx::ModelProto> seeds = seedModels();
  ASSERT_EQ(seeds.size(), 3u);
  Importer importer;
  Outcome out;
  std::mt19937 rng(7);
  const int kIterations = 6000;
  for (int i = 0; i < kIterations; ++i) {
    onnx::ModelProto m = seeds[size_t(i) % seeds.size()];
    for (int k = 1 + int(rng() % 3); k > 0; --k)
      mutateStructure(m, rng);
    ++out.parsed;
    importer.import(m, "structure#" + std::to_string(i), out);
  }
  std::printf("structural mutations: %d, imported %d, rejected %d\n",
              kIterations, out.imported, out.rejected);
  // Both outcomes occur: the mutations reach past the first check.
  EXPECT_GT(out.rejected, 0);
  EXPECT_GT(out.imported, 0);
}

} // namespace
