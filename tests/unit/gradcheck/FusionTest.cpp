//===- FusionTest.cpp - Fused/folded BatchNorm programs == unfused ones ---===//
//
// fcc-fuse-batchnorm and fcc-fold-batchnorm must not change what a training
// program computes. For a tiny ResNet9 and a tiny ResNet9-bot from the model
// zoo (models/ModelZoo.h), imported as in NetworkGradCheckTest.cpp and
// compiled with fcc's pipeline (passes/Pipeline.h, Stage::Training, with
// @loss_and_grads) once with and once without BatchNorm fusion, the
// evaluator (fp32 CPU kernels) runs both programs on the same random
// parameters (BatchNorm scales, shifts and running statistics away from
// their identity initialisation), batch, labels and hyper-parameters, and
// every result is compared:
//
//  - @train_step: the updated parameters, momentum buffers and running
//    statistics, the loss and the number of correct predictions;
//  - @loss_and_grads: the loss and the raw gradients (the sharpest check of
//    the fused backward: no parameter value dominates the difference);
//  - @eval_step, @eval_step_tta (BatchNorm folded into the convolution
//    weights): loss and correct;
//  - @forward in inference mode, unfused vs fused (fcc.bn_act inference) vs
//    fused and folded: the logits.
//
// The measure is the difference relative to the tensor's scale,
// max|fused - unfused| / max|unfused| (fp32 rounding of a normalised tensor
// is relative to its large elements, not to its near-zero ones); the
// tolerance is 1e-5. Counts of correct predictions must be equal. Every
// compared pair is printed in a table at the end. The fused programs are
// also checked to contain the fused ops (and no unfused BatchNorm) and the
// comparison to reject a program run on slightly different parameters.
//
//===----------------------------------------------------------------------===//
#include "frontend/OnnxImporter.h"
#include "ir/FccDialect.h"
#include "ir/ModelUtils.h"
#include "models/ModelZoo.h"
#include "passes/Passes.h"
#include "passes/Pipeline.h"
#include "runtime/evaluator/Evaluator.h"
#include "tools/Registration.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/DebugStringHelper.h"
#include "mlir/Transforms/Passes.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr double kRelTol = 1e-5;

struct Row {
  std::string model, function, result;
  double rel;
};
std::vector<Row> &table() {
  static std::vector<Row> rows;
  return rows;
}

struct Program {
  std::unique_ptr<mlir::MLIRContext> ctx;
  mlir::OwningOpRef<mlir::ModuleOp> module;
  std::string error;

  mlir::func::FuncOp func(llvm::StringRef name) const {
    return module.get().lookupSymbol<mlir::func::FuncOp>(name);
  }
};

struct Spec {
  std::string model;
  fcc::models::ZooOptions zoo;
};

Spec spec(const std::string &model, int64_t batch, uint64_t seed) {
  Spec s;
  s.model = model;
  s.zoo.widthMult = 0.0625;
  s.zoo.inHeight = s.zoo.inWidth = 16;
  s.zoo.batch = batch;
  s.zoo.withWeights = true;
  s.zoo.seed = seed;
  return s;
}

enum class Passes {
  Training,          // fcc's pipeline at Stage::Training, with @loss_and_grads
  InferenceForward,  // @forward only: canonicalize [+ fuse] [+ fold]
};

// Imports the zoo model and runs `passes` on it (`precision` applies to
// Passes::Training).
Program compile(const Spec &s, Passes passes, bool fuse, bool fold = false,
                const std::string &precision = "fp32") {
  Program p;
  auto zoo = fcc::models::buildZooModel(s.model, s.zoo);
  if (!zoo) {
    p.error = "model zoo: " + zoo.error;
    return p;
  }
  mlir::DialectRegistry registry;
  fcc::registerAllDialects(registry);
  p.ctx = std::make_unique<mlir::MLIRContext>(registry);
  p.ctx->loadAllAvailableDialects();
  std::string diags;
  mlir::ScopedDiagnosticHandler handler(p.ctx.get(), [&](mlir::Diagnostic &d) {
    diags += d.str() + "\n";
    return mlir::success();
  });
  auto module =
      fcc::importOnnxModel(*p.ctx, *zoo.model, fcc::ImportOptions{}, s.model);
  if (!module) {
    p.error = "import: " + llvm::toString(module.takeError());
    return p;
  }
  p.module = std::move(*module);
  mlir::PassManager pm(p.ctx.get());
  if (passes == Passes::Training) {
    fcc::PipelineOptions o;
    o.stage = fcc::Stage::Training;
    o.gradFunction = true;
    o.fuseBatchNorm = fuse;
    o.precision = precision;
    fcc::buildPipeline(pm, o);
  } else {
    pm.addPass(mlir::createCanonicalizerPass());
    if (fuse)
      pm.addPass(fcc::createFuseBatchNorm());
    if (fold)
      pm.addPass(fcc::createFoldBatchNorm());
  }
  if (mlir::failed(pm.run(*p.module)))
    p.error = "pipeline failed: " + diags;
  return p;
}

//===----------------------------------------------------------------------===//
// Inputs
//===----------------------------------------------------------------------===//

fcc::Tensor randomTensor(std::mt19937 &rng, std::vector<int64_t> shape,
                         float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  fcc::Tensor t = fcc::Tensor::zeros(std::move(shape));
  for (float &v : t.data)
    v = u(rng);
  return t;
}

fcc::Tensor scalar(float v) {
  fcc::Tensor t = fcc::Tensor::zeros({});
  t.data = {v};
  return t;
}

std::vector<int64_t> shapeOf(mlir::Value v) {
  auto s = mlir::cast<mlir::ShapedType>(v.getType()).getShape();
  return {s.begin(), s.end()};
}

// Values for every argument of `f` by name (fcc::evaluateNamed): parameters
// (their initial values, BatchNorm ones randomised), the batch, labels,
// momentum buffers and hyper-parameters. Deterministic in `seed` and in the
// argument names, so that two programs get the same values.
std::map<std::string, fcc::Tensor> inputsFor(mlir::func::FuncOp f,
                                             unsigned seed) {
  std::map<std::string, fcc::Tensor> values;
  const std::map<std::string, float> hypers = {
      {"lr", 0.1f},          {"momentum", 0.9f},       {"weight_decay", 5e-4f},
      {"nesterov", 1.0f},    {"label_smoothing", 0.2f}, {"loss_scale", 1.0f}};
  for (unsigned i = 0; i < f.getNumArguments(); ++i) {
    std::string name = fcc::argumentName(f, i);
    std::mt19937 rng(seed + unsigned(std::hash<std::string>()(name) % 100003));
    std::vector<int64_t> shape = shapeOf(f.getArgument(i));
    if (fcc::ParamAttr p = fcc::getParamAttr(f, i)) {
      auto init = fcc::initialParameterValue(f, i, /*seed=*/0);
      if (!init) {
        ADD_FAILURE() << llvm::toString(init.takeError());
        continue;
      }
      fcc::Tensor t = std::move(*init);
      using fcc::ParamRole;
      if (p.getTrainable() && p.getRole() == ParamRole::bn_scale)
        t = randomTensor(rng, shape, 0.5f, 1.5f);
      else if (p.getRole() == ParamRole::bn_shift)
        t = randomTensor(rng, shape, -0.5f, 0.5f);
      else if (p.getRole() == ParamRole::running_mean)
        t = randomTensor(rng, shape, -0.3f, 0.3f);
      else if (p.getRole() == ParamRole::running_var)
        t = randomTensor(rng, shape, 0.5f, 2.0f);
      values[name] = std::move(t);
    } else if (f.getArgAttr(i, fcc::FccDialect::kLabelsAttrName)) {
      fcc::Tensor t;
      t.shape = shape;
      t.isInt = true;
      std::uniform_int_distribution<int64_t> label(0, 9);
      for (int64_t k = 0; k < shape[0]; ++k)
        t.ints.push_back(label(rng));
      values[name] = std::move(t);
    } else if (name == "seed") {
      fcc::Tensor t;
      t.isInt = true;
      t.ints = {12345};
      values[name] = std::move(t);
    } else if (hypers.count(name)) {
      values[name] = scalar(hypers.at(name));
    } else {
      // The batch, momentum buffers (or anything else).
      values[name] = randomTensor(rng, shape, -1.0f, 1.0f);
    }
  }
  return values;
}

//===----------------------------------------------------------------------===//
// Comparison
//===----------------------------------------------------------------------===//

double scaleRelative(const fcc::Tensor &got, const fcc::Tensor &ref) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < ref.data.size(); ++i) {
    double d = std::fabs(double(got.data[i]) - double(ref.data[i]));
    diff = std::isnan(d) ? INFINITY : std::max(diff, d);
    scale = std::max(scale, std::fabs(double(ref.data[i])));
  }
  return scale > 0.0 ? diff / scale : diff;
}

struct Outcome {
  double worst = 0.0;
  std::string worstName;
};

// Runs `name` of both programs on the same inputs and compares every result
// (by result name). Records the rows when `record`.
Outcome compareFunction(const std::string &model, const Program &fused,
                        const Program &unfused, const std::string &name,
                        unsigned seed, bool record = true,
                        double perturbShift = 0.0) {
  Outcome out;
  SCOPED_TRACE(model + " @" + name);
  mlir::func::FuncOp f = fused.func(name), g = unfused.func(name);
  if (!f || !g) {
    ADD_FAILURE() << "no @" << name;
    return out;
  }
  auto text = [](mlir::Type t) {
    std::string s;
    llvm::raw_string_ostream os(s);
    t.print(os);
    return s;
  };
  EXPECT_EQ(text(f.getFunctionType()), text(g.getFunctionType()));
  auto inputs = inputsFor(g, seed);
  auto fusedInputs = inputs;
  if (perturbShift != 0.0)
    for (auto &[key, t] : fusedInputs)
      if (key.find(".bn.bias") != std::string::npos)
        for (float &v : t.data)
          v += float(perturbShift);
  auto a = fcc::evaluateNamed(f, fusedInputs);
  auto b = fcc::evaluateNamed(g, inputs);
  if (!a || !b) {
    ADD_FAILURE() << (a ? "" : llvm::toString(a.takeError())) << " "
                  << (b ? "" : llvm::toString(b.takeError()));
    return out;
  }
  for (size_t k = 0; k < b->size(); ++k) {
    std::string result = fcc::resultName(g, k);
    EXPECT_EQ(fcc::resultName(f, k), result);
    const fcc::Tensor &x = (*a)[k], &y = (*b)[k];
    if (x.shape != y.shape || x.isInt || y.isInt) {
      ADD_FAILURE() << result << ": shapes or kinds differ";
      continue;
    }
    if (result == "correct") {
      if (record)
        EXPECT_EQ(x.data, y.data) << result;
      continue;
    }
    double rel = scaleRelative(x, y);
    if (record) {
      EXPECT_LE(rel, kRelTol) << result;
      table().push_back({model, name, result, rel});
    }
    if (rel >= out.worst) {
      out.worst = rel;
      out.worstName = result;
    }
  }
  return out;
}

int64_t count(mlir::func::FuncOp f, llvm::StringRef opName) {
  int64_t n = 0;
  f.walk([&](mlir::Operation *op) { n += op->getName().getStringRef() == opName; });
  return n;
}

//===----------------------------------------------------------------------===//
// Tests
//===----------------------------------------------------------------------===//

struct ModelCase {
  const char *model;
  int64_t batch;
  uint64_t seed;
  int64_t batchNorms;   // BatchNorm layers of the model
  int64_t folded;       // of which follow a convolution directly
};

const ModelCase kModels[] = {
    {"resnet9", 3, 7, 8, 8},
    // Pools between the convolution and the BatchNorm in the three
    // downsampling blocks: those stay fcc.bn_act at inference.
    {"resnet9-bot", 2, 9, 8, 5},
};

class Fusion : public ::testing::TestWithParam<ModelCase> {};

TEST_P(Fusion, ProgramsHaveTheFusedOps) {
  const ModelCase &m = GetParam();
  Spec s = spec(m.model, m.batch, m.seed);
  Program fused = compile(s, Passes::Training, true);
  ASSERT_EQ(fused.error, "");
  Program unfused = compile(s, Passes::Training, false);
  ASSERT_EQ(unfused.error, "");
  mlir::func::FuncOp train = fused.func("train_step");
  EXPECT_EQ(count(train, "fcc.bn_act"), m.batchNorms);
  EXPECT_EQ(count(train, "fcc.bn_act_grad"), m.batchNorms);
  EXPECT_EQ(count(train, "fcc.batch_norm"), 0);
  EXPECT_EQ(count(train, "fcc.batch_norm_grad"), 0);
  EXPECT_EQ(count(train, "fcc.relu_grad") + count(train, "fcc.celu_grad"), 0);
  for (const char *eval : {"eval_step", "eval_step_tta"}) {
    int64_t passes = std::string(eval) == "eval_step" ? 1 : 2;
    mlir::func::FuncOp f = fused.func(eval);
    // CSE shares the folded weights between the two passes of TTA.
    EXPECT_EQ(count(f, "fcc.fold_bn"), m.folded) << eval;
    EXPECT_EQ(count(f, "fcc.bn_act"), passes * (m.batchNorms - m.folded))
        << eval;
    EXPECT_EQ(count(f, "fcc.batch_norm"), 0) << eval;
  }
  // --no-fuse-bn: nothing fused.
  for (llvm::StringRef op : {"fcc.bn_act", "fcc.bn_act_grad", "fcc.fold_bn"})
    EXPECT_EQ(count(unfused.func("train_step"), op) +
                  count(unfused.func("eval_step"), op),
              0);
  EXPECT_EQ(count(unfused.func("train_step"), "fcc.batch_norm"), m.batchNorms);
}

// fp16 programs, fused or not: every BatchNorm (forward, backward and the
// folds of the evaluation steps) reads and writes half data directly -- no
// fcc.cast defines its data operands or uses its data results -- while its
// parameters, statistics and parameter gradients stay fp32.
TEST_P(Fusion, HalfProgramsKeepBatchNormDataInHalf) {
  const ModelCase &m = GetParam();
  Spec s = spec(m.model, m.batch, m.seed);
  for (bool fuse : {true, false}) {
    SCOPED_TRACE(fuse ? "fused" : "unfused");
    Program p = compile(s, Passes::Training, fuse, false, "fp16");
    ASSERT_EQ(p.error, "");
    auto elementOf = [](mlir::Value v) {
      return mlir::cast<mlir::ShapedType>(v.getType()).getElementType();
    };
    // Data tensors are NCHW (rank 4); per-channel ones have rank 1.
    auto check = [&](mlir::Value v, llvm::StringRef what) {
      bool data = mlir::cast<mlir::ShapedType>(v.getType()).getRank() > 1;
      EXPECT_TRUE(data ? elementOf(v).isF16() : elementOf(v).isF32())
          << what << ": " << mlir::debugString(v.getType());
    };
    int64_t inTrainStep = 0, total = 0;
    p.module->walk([&](mlir::Operation *op) {
      if (!mlir::isa<fcc::BatchNormOp, fcc::BnActOp, fcc::BatchNormGradOp,
                     fcc::BnActGradOp>(op))
        return;
      ++total;
      if (op->getParentOfType<mlir::func::FuncOp>().getSymName() ==
          "train_step")
        ++inTrainStep;
      std::string name = op->getName().getStringRef().str();
      for (mlir::Value v : op->getOperands()) {
        check(v, name + " operand");
        if (elementOf(v).isF16())
          EXPECT_FALSE(v.getDefiningOp<fcc::CastOp>())
              << name << " reads a cast";
      }
      for (mlir::Value r : op->getResults()) {
        check(r, name + " result");
        for (mlir::Operation *user : r.getUsers())
          EXPECT_FALSE(mlir::isa<fcc::CastOp>(user))
              << name << " result is cast";
      }
    });
    EXPECT_EQ(inTrainStep, 2 * m.batchNorms); // forward and backward
    EXPECT_GT(total, inTrainStep);
  }
}

TEST_P(Fusion, TrainingProgramsAgree) {
  const ModelCase &m = GetParam();
  Spec s = spec(m.model, m.batch, m.seed);
  Program fused = compile(s, Passes::Training, true);
  Program unfused = compile(s, Passes::Training, false);
  ASSERT_EQ(fused.error, "");
  ASSERT_EQ(unfused.error, "");
  for (const char *f :
       {"train_step", "loss_and_grads", "eval_step", "eval_step_tta"})
    compareFunction(m.model, fused, unfused, f, 100 + unsigned(m.seed));
}

TEST_P(Fusion, FoldedInferenceAgrees) {
  const ModelCase &m = GetParam();
  Spec s = spec(m.model, m.batch, m.seed);
  Program plain = compile(s, Passes::InferenceForward, false);
  Program fused = compile(s, Passes::InferenceForward, true);
  Program folded = compile(s, Passes::InferenceForward, true, true);
  ASSERT_EQ(plain.error, "");
  ASSERT_EQ(fused.error, "");
  ASSERT_EQ(folded.error, "");
  EXPECT_EQ(count(folded.func("forward"), "fcc.fold_bn"), m.folded);
  EXPECT_EQ(count(fused.func("forward"), "fcc.bn_act"), m.batchNorms);
  compareFunction(m.model + std::string(" (fused)"), fused, plain, "forward",
                  200 + unsigned(m.seed));
  compareFunction(m.model + std::string(" (fused+folded)"), folded, plain,
                  "forward", 200 + unsigned(m.seed));
}

// The comparison must be able to fail: the same programs on BatchNorm shifts
// moved by 1e-3 differ far beyond the tolerance.
TEST_P(Fusion, ComparisonRejectsDifferentParameters) {
  const ModelCase &m = GetParam();
  Spec s = spec(m.model, m.batch, m.seed);
  Program fused = compile(s, Passes::Training, true);
  Program unfused = compile(s, Passes::Training, false);
  ASSERT_EQ(fused.error, "");
  Outcome o = compareFunction(m.model, fused, unfused, "loss_and_grads",
                              100 + unsigned(m.seed), /*record=*/false, 1e-3);
  EXPECT_GT(o.worst, 100 * kRelTol) << o.worstName;
}

INSTANTIATE_TEST_SUITE_P(Zoo, Fusion, ::testing::ValuesIn(kModels),
                         [](const auto &info) {
                           std::string n = info.param.model;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// The table of every comparison, for the record.
class TablePrinter : public ::testing::Environment {
public:
  void TearDown() override {
    if (table().empty())
      return;
    std::printf("\n%-26s %-16s %-40s %s\n", "model", "function", "result",
                "max |fused - unfused| / max |unfused|");
    double worst = 0.0;
    for (const Row &r : table()) {
      std::printf("%-26s %-16s %-40s %.2e\n", r.model.c_str(),
                  r.function.c_str(), r.result.c_str(), r.rel);
      worst = std::max(worst, r.rel);
    }
    std::printf("worst: %.2e (tolerance %.0e)\n", worst, kRelTol);
  }
};
const auto *kTable =
    ::testing::AddGlobalTestEnvironment(new TablePrinter);

} // namespace
