//===- GradCheckTest.cpp - Every differentiation rule vs finite differences ===//
//
// For each reverse-mode rule of passes/Autodiff.cpp: a tiny function @f is
// written as MLIR text, fcc-test-vjp derives @f_vjp(args, dy) -> dargs, the
// evaluator (fp32 CPU kernels) runs both on random inputs, and
//  - the forward result is compared with an independent float64
//    implementation of f (Reference.h), and
//  - the gradient of every float argument is compared with float64 central
//    finite differences of L(args) = <dy, f(args)> computed on that float64
//    implementation (per element, plus one random direction for all
//    arguments at once).
// The pass criterion per argument is max|g - fd| <= kRelTol * max|fd| + kAbsTol.
// A summary table "op | case | max rel error" is printed at the end.
//
//===----------------------------------------------------------------------===//
#include "passes/Passes.h"
#include "runtime/evaluator/Evaluator.h"
#include "tools/Registration.h"

#include "../runtime/test_util.h"
#include "Reference.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iomanip>
#include <optional>
#include <tuple>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace fcc::gradcheck;

// Pass criterion (see the file comment). The analytic gradient is computed in
// fp32, the finite differences in float64 with exact float-rounded inputs, so
// the observed error is fp32 rounding (1e-11 .. 2e-7 relative); 1e-5 leaves
// a wide margin while catching any wrong factor, sign or missing term.
constexpr double kRelTol = 1e-5;
constexpr double kAbsTol = 1e-6;
// Forward results against the float64 implementation.
constexpr double kFwdRelTol = 1e-5;
// Below this max |fd| a gradient counts as exactly zero in the table.
constexpr double kZeroGrad = 1e-7;

std::string tensorType(const Shape &s, const char *elem = "f32") {
  std::string t = "tensor<";
  for (int64_t d : s)
    t += std::to_string(d) + "x";
  return t + elem + ">";
}

std::string i64Array(std::initializer_list<int64_t> v) {
  std::string s = "array<i64: ";
  bool first = true;
  for (int64_t x : v) {
    s += (first ? "" : ", ") + std::to_string(x);
    first = false;
  }
  return s + ">";
}

//===----------------------------------------------------------------------===//
// Arguments
//===----------------------------------------------------------------------===//

struct Arg {
  Shape shape;
  Vec v;                     // float arguments (values exactly representable in fp32)
  bool isInt = false;
  const char *elem = "f32";  // element type in the MLIR signature
  std::vector<int64_t> ints; // integer arguments (labels i32, seed i64)
};

Arg uniformArg(std::mt19937 &rng, Shape s, float lo = -1.0f, float hi = 1.0f) {
  Arg a;
  a.shape = std::move(s);
  a.v = fcc::test::toDouble(fcc::test::randomFloats(rng, numel(a.shape), lo, hi));
  return a;
}

// |x| >= 0.05 and distinct (no ReLU kinks, no max-pooling ties).
Arg distinctArg(std::mt19937 &rng, Shape s, double scale = 1.0) {
  Arg a;
  a.shape = std::move(s);
  for (float x : fcc::test::distinctFloats(rng, numel(a.shape)))
    a.v.push_back(double(float(x * scale)));
  return a;
}

Arg labelsArg(std::mt19937 &rng, int64_t n, int64_t classes) {
  Arg a;
  a.shape = {n};
  a.isInt = true;
  a.elem = "i32";
  std::uniform_int_distribution<int64_t> d(0, classes - 1);
  for (int64_t i = 0; i < n; ++i) {
    a.ints.push_back(d(rng));
    a.v.push_back(double(a.ints.back()));
  }
  return a;
}

Arg seedArg(int64_t seed) {
  Arg a;
  a.shape = {};
  a.isInt = true;
  a.elem = "i64";
  a.ints = {seed};
  a.v = {double(seed)};
  return a;
}

fcc::Tensor toTensor(const Arg &a) {
  fcc::Tensor t;
  t.shape = a.shape;
  t.isInt = a.isInt;
  if (a.isInt)
    t.ints = a.ints;
  else
    for (double x : a.v)
      t.data.push_back(float(x));
  return t;
}


//===----------------------------------------------------------------------===//
// The harness (float64 references: Reference.h)
//===----------------------------------------------------------------------===//

using RefFn = std::function<Vec(const std::vector<Vec> &)>;

struct Case {
  std::string op, name;
  std::function<std::vector<Arg>(std::mt19937 &)> gen; // random arguments
  Shape result;                                        // f32 result shape
  std::string body; // MLIR ops over %a0, %a1, ...; defines %y
  RefFn ref;
  // Optional distance of the inputs to the nearest kink; inputs are redrawn
  // until it is above kMinMargin.
  std::function<double(const std::vector<Vec> &)> margin;
  double h = 1e-5;
  unsigned seed = 1;
};

constexpr double kMinMargin = 1e-3;

struct Row {
  std::string op, name;
  double maxRel;
  std::string detail;
  bool ok;
};
std::vector<Row> &table() {
  static std::vector<Row> rows;
  return rows;
}

struct VjpRun {
  std::vector<fcc::Tensor> forward, grads;
  std::string error;
};

std::string moduleText(const Case &c, const std::vector<Arg> &args) {
  std::ostringstream os;
  os << "func.func @f(";
  for (size_t i = 0; i < args.size(); ++i)
    os << (i ? ", " : "") << "%a" << i << ": " << tensorType(args[i].shape, args[i].elem);
  os << ") -> " << tensorType(c.result) << " {\n"
     << c.body << "\n  return %y : " << tensorType(c.result) << "\n}\n";
  return os.str();
}

// Parses @f, runs fcc-test-vjp, evaluates @f(args) and @f_vjp(args, dy).
VjpRun runFcc(const std::string &text, const std::vector<Arg> &args,
              const Vec &dy, const Shape &dyShape) {
  VjpRun out;
  mlir::DialectRegistry registry;
  fcc::registerAllDialects(registry);
  mlir::MLIRContext ctx(registry);
  ctx.loadAllAvailableDialects();
  std::string diags;
  mlir::ScopedDiagnosticHandler handler(&ctx, [&](mlir::Diagnostic &d) {
    diags += d.str() + "\n";
    return mlir::success();
  });
  auto module = mlir::parseSourceString<mlir::ModuleOp>(text, &ctx);
  if (!module) {
    out.error = "parse failed: " + diags + "\n" + text;
    return out;
  }
  mlir::PassManager pm(&ctx);
  pm.addPass(fcc::createTestVJP());
  if (mlir::failed(pm.run(*module))) {
    out.error = "fcc-test-vjp failed: " + diags;
    return out;
  }
  auto f = module->lookupSymbol<mlir::func::FuncOp>("f");
  auto g = module->lookupSymbol<mlir::func::FuncOp>("f_vjp");
  std::vector<fcc::Tensor> inputs;
  for (const Arg &a : args)
    inputs.push_back(toTensor(a));
  auto fwd = fcc::evaluate(f, inputs);
  if (!fwd) {
    out.error = "evaluating @f: " + llvm::toString(fwd.takeError());
    return out;
  }
  out.forward = std::move(*fwd);
  Arg cot;
  cot.shape = dyShape;
  cot.v = dy;
  inputs.push_back(toTensor(cot));
  auto grads = fcc::evaluate(g, inputs);
  if (!grads) {
    out.error = "evaluating @f_vjp: " + llvm::toString(grads.takeError());
    return out;
  }
  out.grads = std::move(*grads);
  return out;
}

double dot(const Vec &a, const Vec &b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i)
    s += a[i] * b[i];
  return s;
}

struct ArgError {
  double maxAbs = 0, scale = 0;
  double rel() const { return scale > 0 ? maxAbs / scale : maxAbs; }
  bool ok() const { return maxAbs <= kRelTol * scale + kAbsTol; }
};

ArgError compare(const Vec &got, const Vec &fd) {
  ArgError e;
  for (size_t i = 0; i < fd.size(); ++i) {
    double d = std::fabs(got[i] - fd[i]);
    e.maxAbs = std::isnan(d) ? INFINITY : std::max(e.maxAbs, d);
    e.scale = std::max(e.scale, std::fabs(fd[i]));
  }
  return e;
}

// Central differences of L = <dy, ref(args)> with respect to float argument
// `which`, element by element.
Vec finiteDifferences(const RefFn &ref, std::vector<Vec> args, size_t which,
                      const Vec &dy, double h) {
  Vec &x = args[which];
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double saved = x[i];
    x[i] = saved + h;
    double lp = dot(dy, ref(args));
    x[i] = saved - h;
    double lm = dot(dy, ref(args));
    x[i] = saved;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

// Everything one case computes; `mutate` lets the harness self-test inject a
// wrong gradient before the comparison.
struct CaseResult {
  bool ran = false;
  std::vector<ArgError> perArg;
  ArgError directional;
  double forwardRel = 0;
};

// Changes the gradient of argument `i` (given the arguments and dy).
using Mutation =
    std::function<void(size_t i, Vec &g, const std::vector<Vec> &args, const Vec &dy)>;

CaseResult runCase(const Case &c, const Mutation &mutate = nullptr,
                   bool record = true) {
  CaseResult res;
  SCOPED_TRACE(c.op + " / " + c.name);
  std::mt19937 rng(c.seed);
  std::vector<Arg> args;
  std::vector<Vec> vals;
  for (int attempt = 0;; ++attempt) {
    args = c.gen(rng);
    vals.clear();
    for (const Arg &a : args)
      vals.push_back(a.v);
    if (!c.margin || c.margin(vals) > kMinMargin)
      break;
    if (attempt == 100) {
      ADD_FAILURE() << "no inputs away from kinks";
      return res;
    }
  }
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Vec dy(numel(c.result));
  for (double &v : dy)
    v = double(normal(rng));

  std::string text = moduleText(c, args);
  VjpRun run = runFcc(text, args, dy, c.result);
  if (!run.error.empty()) {
    ADD_FAILURE() << run.error;
    if (record)
      table().push_back({c.op, c.name, INFINITY, run.error.substr(0, 60), false});
    return res;
  }
  res.ran = true;

  // Forward against the float64 implementation.
  Vec y = c.ref(vals);
  EXPECT_EQ(run.forward.at(0).data.size(), y.size());
  ArgError fwd = compare(fcc::test::toDouble(run.forward.at(0).data), y);
  res.forwardRel = fwd.rel();
  EXPECT_LE(fwd.maxAbs, kFwdRelTol * fwd.scale + kAbsTol)
      << "forward differs from the float64 reference\n" << text;

  // Gradients, one per float argument in order.
  std::vector<size_t> floatArgs;
  for (size_t i = 0; i < args.size(); ++i)
    if (!args[i].isInt)
      floatArgs.push_back(i);
  if (run.grads.size() != floatArgs.size()) {
    ADD_FAILURE() << "@f_vjp returns " << run.grads.size() << " gradients for "
                  << floatArgs.size() << " float arguments";
    return res;
  }
  double worst = 0;
  std::ostringstream detail;
  bool allOk = true;
  double analyticDir = 0;
  std::vector<Vec> dirs(args.size());
  std::uniform_real_distribution<double> ud(-1.0, 1.0);
  for (size_t k = 0; k < floatArgs.size(); ++k) {
    size_t i = floatArgs[k];
    Vec g = fcc::test::toDouble(run.grads[k].data);
    EXPECT_EQ(run.grads[k].shape, args[i].shape) << "gradient of %a" << i;
    if (mutate)
      mutate(i, g, vals, dy);
    Vec fd = finiteDifferences(c.ref, vals, i, dy, c.h);
    ArgError e = compare(g, fd);
    res.perArg.push_back(e);
    EXPECT_TRUE(e.ok()) << "gradient of %a" << i << ": max |g - fd| = " << e.maxAbs
                        << ", max |fd| = " << e.scale << " (rel " << e.rel() << ")\n"
                        << text;
    allOk &= e.ok();
    detail << (k ? " " : "") << "a" << i << "=" << std::scientific
           << std::setprecision(1);
    if (e.scale > kZeroGrad) {
      worst = std::max(worst, e.rel());
      detail << e.rel();
    } else {
      // The true gradient is 0 (e.g. a bias followed by batch norm): report
      // the absolute error.
      detail << "(abs " << e.maxAbs << ", grad 0)";
    }
    dirs[i].resize(g.size());
    for (double &v : dirs[i])
      v = ud(rng);
    analyticDir += dot(g, dirs[i]);
  }
  // One random direction through every float argument at once:
  // d/de L(args + e v) against <g, v>.
  auto along = [&](double eps) {
    std::vector<Vec> moved = vals;
    for (size_t i : floatArgs)
      for (size_t j = 0; j < moved[i].size(); ++j)
        moved[i][j] += eps * dirs[i][j];
    return dot(dy, c.ref(moved));
  };
  double fdDir = (along(c.h) - along(-c.h)) / (2 * c.h);
  double gsum = 0; // scale: sum of |g_j v_j| (cancellation in the dot product)
  for (size_t k = 0; k < floatArgs.size(); ++k) {
    Vec g = fcc::test::toDouble(run.grads[k].data);
    if (mutate)
      mutate(floatArgs[k], g, vals, dy);
    for (size_t j = 0; j < g.size(); ++j)
      gsum += std::fabs(g[j] * dirs[floatArgs[k]][j]);
  }
  res.directional.maxAbs = std::fabs(analyticDir - fdDir);
  res.directional.scale = gsum;
  EXPECT_TRUE(res.directional.ok())
      << "directional derivative: <g, v> = " << analyticDir << ", fd = " << fdDir;
  allOk &= res.directional.ok();
  if (record) {
    detail << " dir=" << std::scientific << std::setprecision(1)
           << res.directional.rel();
    table().push_back({c.op, c.name, worst, detail.str(), allOk});
    ::testing::Test::RecordProperty(c.op + ":" + c.name, std::to_string(worst));
  }
  return res;
}

//===----------------------------------------------------------------------===//
// Case builders
//===----------------------------------------------------------------------===//

Case convCase(std::string name, Shape xs, Shape ws, bool bias, ConvP p,
              bool distinctInput = false) {
  Case c;
  c.op = "conv2d";
  c.name = std::move(name);
  c.result = convShape(xs, ws, p);
  c.gen = [=](std::mt19937 &rng) {
    std::vector<Arg> a = {distinctInput ? distinctArg(rng, xs) : uniformArg(rng, xs),
                          uniformArg(rng, ws)};
    if (bias)
      a.push_back(uniformArg(rng, {ws[0]}));
    return a;
  };
  std::ostringstream os;
  os << "  %y = fcc.conv2d %a0, %a1" << (bias ? ", %a2" : "") << " {strides = "
     << i64Array({p.sh, p.sw}) << ", pads = " << i64Array({p.pt, p.pl, p.pb, p.pr})
     << ", dilations = " << i64Array({p.dh, p.dw}) << ", groups = " << p.g
     << " : i64} : (" << tensorType(xs) << ", " << tensorType(ws)
     << (bias ? ", " + tensorType({ws[0]}) : "") << ") -> " << tensorType(c.result);
  c.body = os.str();
  c.ref = [=](const std::vector<Vec> &a) {
    return conv2d(a[0], xs, a[1], ws, bias ? &a[2] : nullptr, p);
  };
  return c;
}

Case batchNormCase(std::string name, Shape xs, float eps) {
  Case c;
  c.op = "batch_norm";
  c.name = std::move(name);
  c.result = xs;
  int64_t C = xs[1];
  c.gen = [=](std::mt19937 &rng) {
    // Inputs with a per-channel offset and spread, so that mean and variance
    // are far from 0 and 1.
    Arg x = uniformArg(rng, xs);
    int64_t HW = numel(xs) / (xs[0] * C);
    for (int64_t i = 0; i < numel(xs); ++i) {
      int64_t ch = (i / HW) % C;
      x.v[i] = double(float(x.v[i] * (0.5 + 0.4 * ch) + 0.3 * ch - 0.5));
    }
    return std::vector<Arg>{x, uniformArg(rng, {C}, 0.5f, 1.5f),
                            uniformArg(rng, {C}, -0.5f, 0.5f)};
  };
  std::string t1 = tensorType({C}), tx = tensorType(xs);
  std::ostringstream os;
  os << "  %rm = arith.constant dense<0.25> : " << t1 << "\n"
     << "  %rv = arith.constant dense<2.0> : " << t1 << "\n"
     << "  %bn:5 = fcc.batch_norm %a0, %a1, %a2, %rm, %rv {training = true, "
        "epsilon = "
     << std::scientific << std::setprecision(9) << eps << " : f32} : (" << tx << ", "
     << t1 << ", " << t1 << ", " << t1 << ", " << t1 << ") -> (" << tx << ", "
     << t1 << ", " << t1 << ", " << t1 << ", " << t1 << ")\n"
     << "  %y = fcc.reshape %bn#0 : " << tx << " -> " << tx;
  c.body = os.str();
  c.ref = [=](const std::vector<Vec> &a) {
    return batchNormTrain(a[0], xs, a[1], a[2], double(eps));
  };
  return c;
}

Case poolCase(std::string op, std::string name, Shape xs, PoolP p) {
  Case c;
  c.op = op;
  c.name = std::move(name);
  c.result = poolShape(xs, p);
  bool isMax = op == "max_pool2d";
  c.gen = [=](std::mt19937 &rng) {
    return std::vector<Arg>{isMax ? distinctArg(rng, xs) : uniformArg(rng, xs)};
  };
  std::ostringstream os;
  os << "  %y = fcc." << op << " %a0 {kernel = " << i64Array({p.kh, p.kw})
     << ", strides = " << i64Array({p.sh, p.sw}) << ", pads = "
     << i64Array({p.pt, p.pl, p.pb, p.pr}) << ", ceil_mode = "
     << (p.ceil ? "true" : "false");
  if (isMax)
    os << ", dilations = " << i64Array({p.dh, p.dw});
  else
    os << ", count_include_pad = " << (p.cip ? "true" : "false");
  os << "} : " << tensorType(xs) << " -> " << tensorType(c.result);
  c.body = os.str();
  c.ref = [=](const std::vector<Vec> &a) {
    return isMax ? maxPool(a[0], xs, p) : avgPool(a[0], xs, p);
  };
  if (isMax)
    c.margin = [=](const std::vector<Vec> &a) { return maxPoolMargin(a[0], xs, p); };
  return c;
}

Shape broadcastShape(Shape a, Shape b) {
  size_t r = std::max(a.size(), b.size());
  a.insert(a.begin(), r - a.size(), 1);
  b.insert(b.begin(), r - b.size(), 1);
  Shape o(r);
  for (size_t i = 0; i < r; ++i)
    o[i] = std::max(a[i], b[i]);
  return o;
}

Case binaryCase(std::string op, std::string name, Shape as, Shape bs,
                bool sameOperand = false) {
  Case c;
  c.op = op;
  c.name = std::move(name);
  c.result = broadcastShape(as, bs);
  c.gen = [=](std::mt19937 &rng) {
    std::vector<Arg> a = {uniformArg(rng, as)};
    if (!sameOperand)
      a.push_back(uniformArg(rng, bs));
    return a;
  };
  c.body = "  %y = fcc." + op + " %a0, " + (sameOperand ? "%a0" : "%a1") + " : (" +
           tensorType(as) + ", " + tensorType(bs) + ") -> " + tensorType(c.result);
  bool isAdd = op == "add";
  Shape out = c.result;
  c.ref = [=](const std::vector<Vec> &a) {
    const Vec &rhs = sameOperand ? a[0] : a[1];
    return broadcastBinary(a[0], as, rhs, bs, out, [isAdd](double x, double y) {
      return isAdd ? x + y : x * y;
    });
  };
  return c;
}

Case linearCase(std::string name, int64_t M, int64_t K, int64_t N, bool ta,
                bool tb, float alpha, float beta, std::optional<Shape> bias) {
  Case c;
  c.op = "linear";
  c.name = std::move(name);
  c.result = {M, N};
  Shape as = ta ? Shape{K, M} : Shape{M, K}, bs = tb ? Shape{N, K} : Shape{K, N};
  c.gen = [=](std::mt19937 &rng) {
    std::vector<Arg> a = {uniformArg(rng, as), uniformArg(rng, bs)};
    if (bias)
      a.push_back(uniformArg(rng, *bias));
    return a;
  };
  std::ostringstream os;
  os << "  %y = fcc.linear %a0, %a1" << (bias ? ", %a2" : "") << " {trans_a = "
     << (ta ? "true" : "false") << ", trans_b = " << (tb ? "true" : "false")
     << ", alpha = " << std::scientific << std::setprecision(9) << alpha
     << " : f32, beta = " << beta << " : f32} : (" << tensorType(as) << ", "
     << tensorType(bs) << (bias ? ", " + tensorType(*bias) : "") << ") -> "
     << tensorType(c.result);
  c.body = os.str();
  c.ref = [=](const std::vector<Vec> &a) {
    return linear(a[0], as, a[1], bs, bias ? &a[2] : nullptr, bias ? *bias : Shape{},
                  ta, tb, double(alpha), double(beta));
  };
  return c;
}

Case softmaxXentCase(std::string name, int64_t N, int64_t C, float ls) {
  Case c;
  c.op = "softmax_xent";
  c.name = std::move(name);
  c.result = {};
  c.gen = [=](std::mt19937 &rng) {
    return std::vector<Arg>{uniformArg(rng, {N, C}, -2.0f, 2.0f), labelsArg(rng, N, C)};
  };
  std::ostringstream os;
  os << "  %ls = arith.constant dense<" << std::scientific << std::setprecision(9)
     << ls << "> : tensor<f32>\n"
     << "  %y = fcc.softmax_xent %a0, %a1, %ls : (" << tensorType({N, C}) << ", "
     << tensorType({N}, "i32") << ", tensor<f32>) -> tensor<f32>";
  c.body = os.str();
  c.ref = [=](const std::vector<Vec> &a) {
    return Vec{softmaxXent(a[0], N, C, a[1], double(ls))};
  };
  return c;
}

//===----------------------------------------------------------------------===//
// Tests, one per rule
//===----------------------------------------------------------------------===//

TEST(GradCheck, Conv2D) {
  ConvP pad1;
  pad1.pt = pad1.pl = pad1.pb = pad1.pr = 1;
  runCase(convCase("bias, pad 1", {2, 3, 5, 5}, {4, 3, 3, 3}, true, pad1));
  runCase(convCase("no bias, no pad", {2, 3, 5, 5}, {4, 3, 3, 3}, false, {}));
  ConvP s2;
  s2.sh = s2.sw = 2;
  s2.pt = 1, s2.pl = 0, s2.pb = 2, s2.pr = 1;
  runCase(convCase("stride 2, pads [1,0,2,1]", {2, 3, 6, 7}, {4, 3, 3, 3}, true, s2));
  ConvP s21;
  s21.sh = 2, s21.sw = 1;
  runCase(convCase("strides [2,1], 2x3 kernel", {2, 2, 7, 6}, {3, 2, 2, 3}, false, s21));
  ConvP d2 = pad1;
  d2.dh = d2.dw = 2;
  runCase(convCase("dilation 2, pad 1", {1, 2, 7, 7}, {3, 2, 3, 3}, true, d2));
  ConvP g2 = pad1;
  g2.g = 2;
  runCase(convCase("groups 2", {2, 4, 5, 5}, {6, 2, 3, 3}, true, g2));
  ConvP dw = pad1;
  dw.g = 4, dw.sh = dw.sw = 2;
  runCase(convCase("depthwise, stride 2", {2, 4, 5, 5}, {4, 1, 3, 3}, true, dw));
  ConvP all;
  all.sh = all.sw = 2, all.dh = all.dw = 2, all.g = 2;
  all.pt = 2, all.pl = 1, all.pb = 0, all.pr = 2;
  runCase(convCase("stride 2 + dilation 2 + groups 2 + asym pads", {2, 4, 8, 7},
                   {4, 2, 3, 3}, true, all));
  runCase(convCase("1x1", {3, 4, 3, 3}, {5, 4, 1, 1}, true, {}));
}

TEST(GradCheck, BatchNormTraining) {
  runCase(batchNormCase("NCHW 3x4x3x3", {3, 4, 3, 3}, 1e-5f));
  runCase(batchNormCase("NCHW 2x3x2x5, eps 1e-3", {2, 3, 2, 5}, 1e-3f));
  runCase(batchNormCase("NC 8x5", {8, 5}, 1e-5f));
}

TEST(GradCheck, Activations) {
  Case r;
  r.op = "relu";
  r.name = "|x| >= 0.05";
  r.result = {2, 3, 4, 5};
  r.gen = [](std::mt19937 &rng) { return std::vector<Arg>{distinctArg(rng, {2, 3, 4, 5})}; };
  r.body = "  %y = fcc.relu %a0 : " + tensorType(r.result);
  r.ref = [](const std::vector<Vec> &a) { return relu(a[0]); };
  runCase(r);

  Case c = r;
  c.op = "celu";
  c.name = "alpha 0.3, |x| in [0.05, 2]";
  c.gen = [](std::mt19937 &rng) {
    return std::vector<Arg>{distinctArg(rng, {2, 3, 4, 5}, 2.0)};
  };
  c.body = "  %y = fcc.celu %a0 {alpha = 3.000000119e-01 : f32} : " + tensorType(c.result);
  c.ref = [](const std::vector<Vec> &a) { return celu(a[0], double(0.3f)); };
  runCase(c);
  Case c1 = c;
  c1.name = "alpha 1 (default)";
  c1.body = "  %y = fcc.celu %a0 : " + tensorType(c.result);
  c1.ref = [](const std::vector<Vec> &a) { return celu(a[0], 1.0); };
  runCase(c1);
}

TEST(GradCheck, MaxPool2D) {
  PoolP k2;
  k2.kh = k2.kw = 2, k2.sh = k2.sw = 2;
  runCase(poolCase("max_pool2d", "k2 s2", {2, 3, 6, 6}, k2));
  PoolP k3;
  k3.kh = k3.kw = 3, k3.sh = k3.sw = 2;
  runCase(poolCase("max_pool2d", "k3 s2 (overlapping)", {2, 2, 7, 7}, k3));
  PoolP ceil = k3;
  ceil.pt = ceil.pl = ceil.pb = ceil.pr = 1;
  ceil.ceil = true;
  runCase(poolCase("max_pool2d", "k3 s2 pads 1 ceil_mode", {1, 2, 6, 6}, ceil));
  PoolP asym;
  asym.kh = 2, asym.kw = 3, asym.sh = 3, asym.sw = 2;
  asym.pt = 1, asym.pl = 0, asym.pb = 1, asym.pr = 1;
  asym.ceil = true;
  runCase(poolCase("max_pool2d", "k2x3 s3x2 pads [1,0,1,1] ceil_mode", {1, 2, 7, 6}, asym));
  PoolP dil;
  dil.kh = dil.kw = 2, dil.dh = dil.dw = 2;
  runCase(poolCase("max_pool2d", "k2 dilation 2", {1, 2, 5, 5}, dil));
  PoolP global;
  global.kh = global.kw = 4, global.sh = global.sw = 4;
  runCase(poolCase("max_pool2d", "global 4x4", {2, 3, 4, 4}, global));
}

TEST(GradCheck, AvgPool2D) {
  PoolP p;
  p.kh = p.kw = 3, p.sh = p.sw = 2, p.pt = p.pl = p.pb = p.pr = 1;
  p.cip = true;
  runCase(poolCase("avg_pool2d", "k3 s2 pads 1 count_include_pad", {2, 2, 7, 7}, p));
  p.cip = false;
  runCase(poolCase("avg_pool2d", "k3 s2 pads 1 exclude pad", {2, 2, 7, 7}, p));
  p.ceil = true;
  p.cip = true;
  runCase(poolCase("avg_pool2d", "k3 s2 pads 1 ceil count_include_pad", {1, 2, 6, 6}, p));
  p.cip = false;
  runCase(poolCase("avg_pool2d", "k3 s2 pads 1 ceil exclude pad", {1, 2, 6, 6}, p));
  PoolP c;
  c.kh = c.kw = 2, c.sh = c.sw = 2, c.ceil = true;
  runCase(poolCase("avg_pool2d", "k2 s2 ceil, no pads (5x5)", {1, 2, 5, 5}, c));
  PoolP a;
  a.kh = 2, a.kw = 3, a.sh = 1, a.sw = 2, a.pt = 0, a.pl = 1, a.pb = 1, a.pr = 0;
  a.cip = true;
  runCase(poolCase("avg_pool2d", "k2x3 s1x2 pads [0,1,1,0] count_include_pad", {1, 2, 4, 5}, a));
}

TEST(GradCheck, Add) {
  runCase(binaryCase("add", "same shape [2,3,4]", {2, 3, 4}, {2, 3, 4}));
  runCase(binaryCase("add", "broadcast [2,3,4]+[3,1]", {2, 3, 4}, {3, 1}));
  runCase(binaryCase("add", "broadcast [4]+[2,3,4]", {4}, {2, 3, 4}));
  runCase(binaryCase("add", "broadcast [2,1,4]+[1,3,1]", {2, 1, 4}, {1, 3, 1}));
  runCase(binaryCase("add", "bias [1,3,1,1] on NCHW", {2, 3, 2, 2}, {1, 3, 1, 1}));
  runCase(binaryCase("add", "x + x", {2, 3, 4}, {2, 3, 4}, /*sameOperand=*/true));
}

TEST(GradCheck, Mul) {
  runCase(binaryCase("mul", "same shape [2,3,4]", {2, 3, 4}, {2, 3, 4}));
  runCase(binaryCase("mul", "broadcast [2,3,4]*[3,1]", {2, 3, 4}, {3, 1}));
  runCase(binaryCase("mul", "broadcast [3,1]*[2,3,4]", {3, 1}, {2, 3, 4}));
  runCase(binaryCase("mul", "rank-0 * [2,3]", {}, {2, 3}));
  runCase(binaryCase("mul", "x * x", {2, 3, 4}, {2, 3, 4}, /*sameOperand=*/true));
  Case s;
  s.op = "mul";
  s.name = "by scalar 0.125";
  s.result = {2, 10};
  s.gen = [](std::mt19937 &rng) { return std::vector<Arg>{uniformArg(rng, {2, 10})}; };
  s.body = "  %y = fcc.mul %a0 {scalar = 0.125} : (tensor<2x10xf32>) -> tensor<2x10xf32>";
  s.ref = [](const std::vector<Vec> &a) {
    Vec y = a[0];
    for (double &v : y)
      v *= 0.125;
    return y;
  };
  runCase(s);
  Case n = s;
  n.name = "by scalar -2.5";
  n.body = "  %y = fcc.mul %a0 {scalar = -2.5} : (tensor<2x10xf32>) -> tensor<2x10xf32>";
  n.ref = [](const std::vector<Vec> &a) {
    Vec y = a[0];
    for (double &v : y)
      v *= -2.5;
    return y;
  };
  runCase(n);
}

TEST(GradCheck, Linear) {
  const int64_t M = 3, K = 5, N = 4;
  runCase(linearCase("ta=0 tb=0, alpha 0.7 beta 1.3, bias [N]", M, K, N, false, false, 0.7f, 1.3f, Shape{N}));
  runCase(linearCase("ta=0 tb=1, alpha 0.7 beta 1.3, bias [1,N]", M, K, N, false, true, 0.7f, 1.3f, Shape{1, N}));
  runCase(linearCase("ta=1 tb=0, alpha 0.7 beta 1.3, bias [M,N]", M, K, N, true, false, 0.7f, 1.3f, Shape{M, N}));
  runCase(linearCase("ta=1 tb=1, alpha 0.7 beta 1.3, scalar bias", M, K, N, true, true, 0.7f, 1.3f, Shape{}));
  runCase(linearCase("ta=0 tb=1, alpha 1 beta 1, bias [N]", M, K, N, false, true, 1.0f, 1.0f, Shape{N}));
  runCase(linearCase("ta=1 tb=0, alpha 0.7 beta 1.3, bias [M,1]", M, K, N, true, false, 0.7f, 1.3f, Shape{M, 1}));
  runCase(linearCase("ta=0 tb=1, alpha 2, no bias", M, K, N, false, true, 2.0f, 1.0f, std::nullopt));
  runCase(linearCase("ta=1 tb=1, alpha 0.7, no bias", M, K, N, true, true, 0.7f, 1.0f, std::nullopt));
}

TEST(GradCheck, ShapeOps) {
  auto identity = [](const std::vector<Vec> &a) { return a[0]; };
  Case f;
  f.op = "flatten";
  f.name = "axis 1, 2x3x2x2 -> 2x12";
  f.result = {2, 12};
  f.gen = [](std::mt19937 &rng) { return std::vector<Arg>{uniformArg(rng, {2, 3, 2, 2})}; };
  f.body = "  %y = fcc.flatten %a0 : tensor<2x3x2x2xf32> -> tensor<2x12xf32>";
  f.ref = identity;
  runCase(f);
  Case f2 = f;
  f2.name = "axis 2, 2x3x2x2 -> 6x4";
  f2.result = {6, 4};
  f2.body = "  %y = fcc.flatten %a0 {axis = 2 : i64} : tensor<2x3x2x2xf32> -> tensor<6x4xf32>";
  runCase(f2);
  Case r;
  r.op = "reshape";
  r.name = "2x3x4 -> 4x6";
  r.result = {4, 6};
  r.gen = [](std::mt19937 &rng) { return std::vector<Arg>{uniformArg(rng, {2, 3, 4})}; };
  r.body = "  %y = fcc.reshape %a0 : tensor<2x3x4xf32> -> tensor<4x6xf32>";
  r.ref = identity;
  runCase(r);
  Case fl;
  fl.op = "flip";
  fl.name = "2x3x4x5";
  fl.result = {2, 3, 4, 5};
  fl.gen = [](std::mt19937 &rng) { return std::vector<Arg>{uniformArg(rng, {2, 3, 4, 5})}; };
  fl.body = "  %y = fcc.flip %a0 : tensor<2x3x4x5xf32>";
  fl.ref = [](const std::vector<Vec> &a) { return flipW(a[0], {2, 3, 4, 5}); };
  runCase(fl);
}

TEST(GradCheck, SoftmaxXent) {
  runCase(softmaxXentCase("N=4 C=5, label smoothing 0.2", 4, 5, 0.2f));
  runCase(softmaxXentCase("N=4 C=5, no smoothing", 4, 5, 0.0f));
  runCase(softmaxXentCase("N=7 C=10, label smoothing 0.1", 7, 10, 0.1f));
}

TEST(GradCheck, Philox) {
  // Random123 known-answer test: counter 0, key 0.
  auto w = philox4x32_10({0, 0, 0, 0}, 0, 0);
  EXPECT_EQ(w[0], 0x6627e8d5u);
  EXPECT_EQ(w[1], 0xe169c58du);
  EXPECT_EQ(w[2], 0xbc57ac4cu);
  EXPECT_EQ(w[3], 0x9b00dbd8u);
  // Random123 known-answer test: counter and key all ones.
  auto o = philox4x32_10({~0u, ~0u, ~0u, ~0u}, ~0u, ~0u);
  EXPECT_EQ(o[0], 0x408f276du);
  EXPECT_EQ(o[1], 0x41c83b0eu);
  EXPECT_EQ(o[2], 0xa20bc7c6u);
  EXPECT_EQ(o[3], 0x6d5451fdu);
}

TEST(GradCheck, Dropout) {
  // Training form: mask * x with the mask from fcc.dropout_mask.
  for (auto [ratio, stream, seed] :
       {std::tuple{0.3f, int64_t(2), int64_t(12345)},
        std::tuple{0.5f, int64_t(0), int64_t(7)},
        std::tuple{0.5f, int64_t(1), int64_t(0x100000007LL)}}) {
    Case d;
    d.op = "dropout";
    std::ostringstream name;
    name << "mask*x, ratio " << ratio << " stream " << stream << " seed " << seed;
    d.name = name.str();
    d.result = {2, 3, 8};
    d.gen = [seed = seed](std::mt19937 &rng) {
      return std::vector<Arg>{uniformArg(rng, {2, 3, 8}), seedArg(seed)};
    };
    std::ostringstream os;
    os << "  %m = fcc.dropout_mask %a1 {ratio = " << std::scientific
       << std::setprecision(9) << ratio << " : f32, stream = " << stream
       << " : i64} : tensor<i64> -> tensor<2x3x8xf32>\n"
       << "  %y = fcc.mul %a0, %m : (tensor<2x3x8xf32>, tensor<2x3x8xf32>) -> "
          "tensor<2x3x8xf32>";
    d.body = os.str();
    d.ref = [ratio = ratio, stream = stream](const std::vector<Vec> &a) {
      Vec m = dropoutMask(uint64_t(int64_t(a[1][0])), uint64_t(stream), ratio, 48);
      Vec y(48);
      for (int i = 0; i < 48; ++i)
        y[i] = a[0][i] * m[i];
      return y;
    };
    runCase(d);
  }
  // Inference form: the identity.
  Case inf;
  inf.op = "dropout";
  inf.name = "inference mode (identity)";
  inf.result = {2, 6};
  inf.gen = [](std::mt19937 &rng) { return std::vector<Arg>{uniformArg(rng, {2, 6})}; };
  inf.body = "  %y = fcc.dropout %a0 {ratio = 0.5 : f32} : tensor<2x6xf32>";
  inf.ref = [](const std::vector<Vec> &a) { return a[0]; };
  runCase(inf);
}

// conv -> batch_norm (training) -> relu -> max_pool, then a residual block
// (conv -> batch_norm -> relu) added to its own input, as in ResNet9: the
// pooled value has two uses whose gradients must be summed.
TEST(GradCheck, Composite) {
  const Shape xs = {2, 3, 8, 8}, w1s = {4, 3, 3, 3}, w2s = {4, 4, 3, 3};
  ConvP p;
  p.pt = p.pl = p.pb = p.pr = 1;
  PoolP pool;
  pool.kh = pool.kw = 2, pool.sh = pool.sw = 2;
  const double eps = double(1e-5f);
  // Returns the output, and through `margin` the distance to the nearest
  // ReLU or max-pooling kink.
  auto forward = [=](const std::vector<Vec> &a, double *margin) {
    Vec h = conv2d(a[0], xs, a[1], w1s, nullptr, p);
    Shape hs = convShape(xs, w1s, p);
    h = batchNormTrain(h, hs, a[2], a[3], eps);
    double m = INFINITY;
    if (margin) {
      for (double v : h)
        m = std::min(m, std::fabs(v));
      // Gaps between the two largest pre-activations of each window (ReLU
      // is monotonic, so this bounds the gaps after it, zeros aside).
      m = std::min(m, maxPoolMargin(h, hs, pool));
    }
    h = relu(h);
    Vec q = maxPool(h, hs, pool);
    Shape qs = poolShape(hs, pool);
    Vec r = conv2d(q, qs, a[4], w2s, &a[5], p);
    r = batchNormTrain(r, qs, a[6], a[7], eps);
    if (margin)
      for (double v : r)
        m = std::min(m, std::fabs(v));
    r = relu(r);
    for (size_t i = 0; i < r.size(); ++i)
      r[i] += q[i];
    if (margin)
      *margin = m;
    return r;
  };
  Case c;
  c.op = "composite";
  c.name = "conv-bn-relu-maxpool + residual conv-bn-relu";
  c.result = {2, 4, 4, 4};
  c.h = 1e-6;
  c.gen = [=](std::mt19937 &rng) {
    return std::vector<Arg>{uniformArg(rng, xs),
                            uniformArg(rng, w1s, -0.5f, 0.5f),
                            uniformArg(rng, {4}, 0.5f, 1.5f),
                            uniformArg(rng, {4}, -0.5f, 0.5f),
                            uniformArg(rng, w2s, -0.5f, 0.5f),
                            uniformArg(rng, {4}, -0.2f, 0.2f),
                            uniformArg(rng, {4}, 0.5f, 1.5f),
                            uniformArg(rng, {4}, -0.5f, 0.5f)};
  };
  c.margin = [=](const std::vector<Vec> &a) {
    double m;
    forward(a, &m);
    return m;
  };
  c.ref = [=](const std::vector<Vec> &a) { return forward(a, nullptr); };
  const char *t4 = "tensor<4xf32>";
  std::string bnTypes = std::string("(tensor<2x4x8x8xf32>, ") + t4 + ", " + t4 + ", " +
                        t4 + ", " + t4 + ") -> (tensor<2x4x8x8xf32>, " + t4 + ", " +
                        t4 + ", " + t4 + ", " + t4 + ")";
  std::string bnTypes2 = bnTypes;
  for (size_t at; (at = bnTypes2.find("2x4x8x8")) != std::string::npos;)
    bnTypes2.replace(at, 7, "2x4x4x4");
  c.body =
      "  %rm = arith.constant dense<0.0> : tensor<4xf32>\n"
      "  %rv = arith.constant dense<1.0> : tensor<4xf32>\n"
      "  %c1 = fcc.conv2d %a0, %a1 {pads = array<i64: 1, 1, 1, 1>} : "
      "(tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x8x8xf32>\n"
      "  %b1:5 = fcc.batch_norm %c1, %a2, %a3, %rm, %rv {training = true} : " +
      bnTypes +
      "\n"
      "  %r1 = fcc.relu %b1#0 : tensor<2x4x8x8xf32>\n"
      "  %p1 = fcc.max_pool2d %r1 {kernel = array<i64: 2, 2>, strides = "
      "array<i64: 2, 2>} : tensor<2x4x8x8xf32> -> tensor<2x4x4x4xf32>\n"
      "  %c2 = fcc.conv2d %p1, %a4, %a5 {pads = array<i64: 1, 1, 1, 1>} : "
      "(tensor<2x4x4x4xf32>, tensor<4x4x3x3xf32>, tensor<4xf32>) -> "
      "tensor<2x4x4x4xf32>\n"
      "  %b2:5 = fcc.batch_norm %c2, %a6, %a7, %rm, %rv {training = true} : " +
      bnTypes2 +
      "\n"
      "  %r2 = fcc.relu %b2#0 : tensor<2x4x4x4xf32>\n"
      "  %y = fcc.add %p1, %r2 : (tensor<2x4x4x4xf32>, tensor<2x4x4x4xf32>) -> "
      "tensor<2x4x4x4xf32>";
  runCase(c);
}

// Fused BatchNorm (fcc.bn_act, training mode): normalisation with batch
// statistics, activation, optional max pool and residual, differentiated by
// one fcc.bn_act_grad; against the float64 composition of the unfused
// references.
Case bnActCase(std::string name, Shape xs, const char *activation, double alpha,
               std::optional<PoolP> pool, bool residual) {
  Case c;
  c.op = "bn_act";
  c.name = std::move(name);
  c.result = pool ? poolShape(xs, *pool) : xs;
  const int64_t C = xs[1];
  const double eps = double(1e-5f);
  const std::string act = activation;
  // z (normalised), a (activated), y (the output).
  auto forward = [=](const std::vector<Vec> &a, Vec *z, Vec *act1) {
    Vec zz = batchNormTrain(a[0], xs, a[1], a[2], eps);
    Vec aa = act == "relu" ? relu(zz) : act == "celu" ? celu(zz, alpha) : zz;
    Vec y = pool ? maxPool(aa, xs, *pool) : aa;
    if (residual)
      for (size_t i = 0; i < y.size(); ++i)
        y[i] += a[3][i];
    if (z)
      *z = zz;
    if (act1)
      *act1 = aa;
    return y;
  };
  Shape result = c.result;
  c.gen = [=](std::mt19937 &rng) {
    Arg x = distinctArg(rng, xs, 2.0);
    std::vector<Arg> a = {x, uniformArg(rng, {C}, 0.5f, 1.5f),
                          uniformArg(rng, {C}, -0.5f, 0.5f)};
    a[1].v[0] = -a[1].v[0]; // a negative scale reverses the window order
    if (residual)
      a.push_back(uniformArg(rng, result));
    return a;
  };
  c.ref = [=](const std::vector<Vec> &a) { return forward(a, nullptr, nullptr); };
  // Away from ReLU's kink and from max-pooling ties (measured before ReLU,
  // which is monotonic: windows whose values are all negative have a zero
  // gradient whatever the routing).
  c.margin = [=](const std::vector<Vec> &a) {
    Vec z, aa;
    forward(a, &z, &aa);
    double m = INFINITY;
    if (act == "relu")
      for (double v : z)
        m = std::min(m, std::fabs(v));
    if (pool)
      m = std::min(m, maxPoolMargin(act == "relu" ? z : aa, xs, *pool));
    return m;
  };
  std::string t1 = tensorType({C}), tx = tensorType(xs), ty = tensorType(result);
  std::ostringstream os;
  os << "  %rm = arith.constant dense<0.25> : " << t1 << "\n"
     << "  %rv = arith.constant dense<2.0> : " << t1 << "\n"
     << "  %f:5 = fcc.bn_act %a0, %a1, %a2, %rm, %rv"
     << (residual ? " residual %a3" : "") << " {training = true, activation = \""
     << act << "\", alpha = " << std::scientific << std::setprecision(9)
     << float(alpha) << " : f32";
  if (pool)
    os << ", pool_kernel = " << i64Array({pool->kh, pool->kw})
       << ", pool_strides = " << i64Array({pool->sh, pool->sw});
  os << "} : (" << tx << ", " << t1 << ", " << t1 << ", " << t1 << ", " << t1
     << (residual ? ", " + ty : "") << ") -> (" << ty << ", " << t1 << ", "
     << t1 << ", " << t1 << ", " << t1 << ")\n"
     << "  %y = fcc.reshape %f#0 : " << ty << " -> " << ty;
  c.body = os.str();
  return c;
}

TEST(GradCheck, BnAct) {
  PoolP k2;
  k2.kh = k2.kw = 2, k2.sh = k2.sw = 2;
  PoolP k3s2;
  k3s2.kh = k3s2.kw = 3, k3s2.sh = k3s2.sw = 2;
  runCase(bnActCase("relu", {2, 3, 4, 4}, "relu", 1.0, std::nullopt, false));
  runCase(bnActCase("relu, pool 2 (7x6: last row unpooled)", {2, 3, 7, 6},
                    "relu", 1.0, k2, false));
  runCase(bnActCase("celu 0.3, residual", {2, 3, 4, 4}, "celu", double(0.3f),
                    std::nullopt, true));
  runCase(bnActCase("celu 0.3, pool 3 s2 (overlapping), residual",
                    {2, 3, 7, 7}, "celu", double(0.3f), k3s2, true));
  runCase(bnActCase("none, pool 2, residual", {3, 2, 4, 4}, "none", 1.0, k2,
                    true));
}

//===----------------------------------------------------------------------===//
// The harness must be able to fail: wrong gradients of the kinds a buggy rule
// produces are rejected.
//===----------------------------------------------------------------------===//

bool caseFails(const Case &c, const Mutation &mutate) {
  ::testing::TestPartResultArray results;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD,
        &results);
    runCase(c, mutate, /*record=*/false);
  }
  bool failed = false;
  for (int i = 0; i < results.size(); ++i)
    failed |= results.GetTestPartResult(i).failed();
  return failed;
}

TEST(GradCheckHarness, RejectsWrongGradients) {
  ConvP pad1;
  pad1.pt = pad1.pl = pad1.pb = pad1.pr = 1;
  Case conv = convCase("bias, pad 1", {2, 3, 5, 5}, {4, 3, 3, 3}, true, pad1);
  // The unmodified gradient passes.
  EXPECT_FALSE(caseFails(conv, [](size_t, Vec &, const std::vector<Vec> &, const Vec &) {}));
  // Sign flip of the weight gradient.
  EXPECT_TRUE(caseFails(conv, [](size_t i, Vec &g, const std::vector<Vec> &, const Vec &) {
    if (i == 1)
      for (double &v : g)
        v = -v;
  }));
  // Bias gradient summed over one batch element only.
  EXPECT_TRUE(caseFails(conv, [](size_t i, Vec &g, const std::vector<Vec> &, const Vec &) {
    if (i == 2)
      for (double &v : g)
        v *= 0.5;
  }));
  // Input gradient of a 180-degree-unrotated kernel: swap two elements.
  EXPECT_TRUE(caseFails(conv, [](size_t i, Vec &g, const std::vector<Vec> &, const Vec &) {
    if (i == 0)
      std::swap(g[0], g[6]);
  }));
  // A 0.1% error in a single element.
  EXPECT_TRUE(caseFails(conv, [](size_t i, Vec &g, const std::vector<Vec> &, const Vec &) {
    if (i == 1) {
      size_t big = 0;
      for (size_t j = 0; j < g.size(); ++j)
        if (std::fabs(g[j]) > std::fabs(g[big]))
          big = j;
      g[big] *= 1.001;
    }
  }));

  // Softmax cross-entropy without the 1/N of the mean.
  Case xent = softmaxXentCase("N=4 C=5, label smoothing 0.2", 4, 5, 0.2f);
  EXPECT_FALSE(caseFails(xent, [](size_t, Vec &, const std::vector<Vec> &, const Vec &) {}));
  EXPECT_TRUE(caseFails(xent, [](size_t, Vec &g, const std::vector<Vec> &, const Vec &) {
    for (double &v : g)
      v *= 4;
  }));
  // ... or ignoring label smoothing (q = onehot): subtract the smoothing part.
  EXPECT_TRUE(caseFails(xent, [](size_t, Vec &g, const std::vector<Vec> &a, const Vec &) {
    // d/dz of the smoothing difference: (q_ls - onehot) / N = 0.2 (1/C - onehot) / N.
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 5; ++j)
        g[i * 5 + j] -= 0.2 * (0.2 - (j == int64_t(a[1][i]) ? 1.0 : 0.0)) / 4.0;
  }));

  // Batch norm backward that treats the batch statistics as constants
  // (dx = dy * scale / sqrt(var + eps)), a classic wrong rule.
  Case bn = batchNormCase("NCHW 3x4x3x3", {3, 4, 3, 3}, 1e-5f);
  EXPECT_FALSE(caseFails(bn, [](size_t, Vec &, const std::vector<Vec> &, const Vec &) {}));
  EXPECT_TRUE(caseFails(bn, [](size_t i, Vec &g, const std::vector<Vec> &a,
                                const Vec &dy) {
    if (i != 0)
      return;
    const int64_t N = 3, C = 4, HW = 9;
    for (int64_t c = 0; c < C; ++c) {
      double mean = 0, var = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < HW; ++k)
          mean += a[0][(n * C + c) * HW + k] / double(N * HW);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < HW; ++k)
          var += std::pow(a[0][(n * C + c) * HW + k] - mean, 2) / double(N * HW);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < HW; ++k) {
          int64_t j = (n * C + c) * HW + k;
          g[j] = dy[j] * a[1][c] / std::sqrt(var + double(1e-5f));
        }
    }
  }));
}

// Rules that must refuse: running statistics and training-mode fcc.dropout.
TEST(GradCheckHarness, NonDifferentiableOperandsAreErrors) {
  std::mt19937 rng(3);
  Case bn;
  bn.op = "batch_norm";
  bn.name = "running stats as arguments";
  bn.result = {2, 2, 2, 2};
  bn.gen = [](std::mt19937 &rng) {
    return std::vector<Arg>{uniformArg(rng, {2, 2, 2, 2}), uniformArg(rng, {2}),
                            uniformArg(rng, {2}), uniformArg(rng, {2}),
                            uniformArg(rng, {2}, 0.5f, 1.0f)};
  };
  bn.body = "  %bn:5 = fcc.batch_norm %a0, %a1, %a2, %a3, %a4 {training = true} : "
            "(tensor<2x2x2x2xf32>, tensor<2xf32>, tensor<2xf32>, tensor<2xf32>, "
            "tensor<2xf32>) -> (tensor<2x2x2x2xf32>, tensor<2xf32>, tensor<2xf32>, "
            "tensor<2xf32>, tensor<2xf32>)\n"
            "  %y = fcc.reshape %bn#0 : tensor<2x2x2x2xf32> -> tensor<2x2x2x2xf32>";
  auto args = bn.gen(rng);
  VjpRun r = runFcc(moduleText(bn, args), args, Vec(16, 1.0), bn.result);
  EXPECT_NE(r.error.find("running statistics are not differentiable"), std::string::npos)
      << r.error;

  Case d;
  d.result = {2, 3};
  d.body = "  %y = fcc.dropout %a0 {ratio = 0.5 : f32, training = true} : tensor<2x3xf32>";
  std::vector<Arg> dargs = {uniformArg(rng, {2, 3})};
  r = runFcc(moduleText(d, dargs), dargs, Vec(6, 1.0), d.result);
  EXPECT_NE(r.error.find("must be lowered"), std::string::npos) << r.error;
}

class PrintTable : public ::testing::Environment {
public:
  void TearDown() override {
    if (table().empty())
      return;
    std::printf("\nGradient checks (fp32 fcc VJP vs float64 central differences; "
                "pass: max|g-fd| <= %.0e*max|fd| + %.0e)\n",
                kRelTol, kAbsTol);
    std::printf("| %-12s | %-48s | %-13s | %s\n", "op", "case", "max rel error",
                "per argument, dir = random direction");
    std::printf("|%s|%s|%s|\n", std::string(14, '-').c_str(),
                std::string(50, '-').c_str(), std::string(15, '-').c_str());
    for (const Row &r : table())
      std::printf("| %-12s | %-48s | %13.2e | %s%s\n", r.op.c_str(), r.name.c_str(),
                  r.maxRel, r.detail.c_str(), r.ok ? "" : "  FAILED");
    std::fflush(stdout);
  }
};

const auto *kPrintTable = ::testing::AddGlobalTestEnvironment(new PrintTable);

} // namespace
