//===- TrainerTest.cpp - The training driver end to end, in process -------===//
//
// run() with the fake linear program (FakeProgram.h) on a synthetic,
// learnable dataset written in the CIFAR-10 binary layout: the class of an
// image is given by the mean brightness of its channels (class c < 3: channel
// c bright, the others dark; class 3: every channel at a middle level), with
// per-pixel noise. A linear classifier separates these classes, so training
// must take the accuracy far above chance (25 % for 4 classes).
//
// With the fake posing as an fp16 program, the loop with the loss scale
// kept by a (fake) device backend is checked against the trainer's host
// loss scale and against the rule worked out step by step.
//
// Expected values come from the definitions (the schedule's knots, the
// per-step EMA recurrence, PyTorch's initialisation, the per-example loss
// computed here in double precision from the final parameters), never from
// an earlier run of the trainer.
//
//===----------------------------------------------------------------------===//
#include "Augment.h"
#include "Backend.h"
#include "Checkpoint.h"
#include "Trainer.h"

#include "FakeProgram.h"

#include "fcc/runtime/cpu_kernels.h"
#include "fcc/runtime/init.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace fcc::trainer;
using fcc::test::FakeConfig;
using fcc::test::FakeLog;
using fcc::test::fakeLog;
using fcc::test::fakeProgram;
using fcc::test::TempDir;

namespace {

constexpr int64_t kImage = 3 * 32 * 32, kPlane = 32 * 32;
constexpr int kClasses = 4;
constexpr int64_t kTrain = 512, kTest = 100, kBatch = 32;

//===- The synthetic dataset ----------------------------------------------===//

struct Split {
  std::vector<uint8_t> pixels; // count x 3 x 32 x 32
  std::vector<int32_t> labels;
  int64_t count() const { return int64_t(labels.size()); }
  const uint8_t *image(int64_t i) const { return pixels.data() + i * kImage; }
};

Split makeSplit(int64_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> noise(-30, 30), label(0, kClasses - 1);
  Split s;
  for (int64_t i = 0; i < count; ++i) {
    int l = label(rng);
    s.labels.push_back(l);
    for (int c = 0; c < 3; ++c) {
      int level = l == 3 ? 125 : l == c ? 190 : 60;
      for (int64_t k = 0; k < kPlane; ++k)
        s.pixels.push_back(uint8_t(std::clamp(level + noise(rng), 0, 255)));
    }
  }
  return s;
}

std::vector<uint8_t> cifarBytes(const Split &s) {
  std::vector<uint8_t> bytes;
  for (int64_t i = 0; i < s.count(); ++i) {
    bytes.push_back(uint8_t(s.labels[size_t(i)]));
    bytes.insert(bytes.end(), s.image(i), s.image(i) + kImage);
  }
  return bytes;
}

struct Data {
  TempDir dir;
  Split train, test;
};

Data &data() {
  static std::unique_ptr<Data> d;
  if (!d) {
    d = std::make_unique<Data>();
    d->train = makeSplit(kTrain, 1);
    d->test = makeSplit(kTest, 2);
    fcc::test::writeBytes(d->dir.file("data_batch_1.bin"),
                          cifarBytes(d->train));
    fcc::test::writeBytes(d->dir.file("test_batch.bin"), cifarBytes(d->test));
  }
  return *d;
}

// Per-channel mean and population std of the first `count` training images
// (two passes, double precision).
void statistics(int64_t count, double mean[3], double sd[3]) {
  const Split &t = data().train;
  for (int c = 0; c < 3; ++c) {
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < count; ++i)
      for (int64_t k = 0; k < kPlane; ++k)
        sum += t.image(i)[c * kPlane + k];
    mean[c] = sum / double(count * kPlane);
    for (int64_t i = 0; i < count; ++i)
      for (int64_t k = 0; k < kPlane; ++k) {
        double d = t.image(i)[c * kPlane + k] - mean[c];
        sq += d * d;
      }
    sd[c] = std::sqrt(sq / double(count * kPlane));
  }
}

std::vector<double> normalised(const uint8_t *image, const double mean[3],
                               const double sd[3]) {
  std::vector<double> x(kImage);
  for (int c = 0; c < 3; ++c)
    for (int64_t k = 0; k < kPlane; ++k)
      x[size_t(c * kPlane + k)] = (image[c * kPlane + k] - mean[c]) / sd[c];
  return x;
}

//===- Running the trainer -------------------------------------------------===//

struct Result {
  int rc = -1;
  std::string out, err;
};

Result runTrainer(const fcc_program *p, std::vector<std::string> args,
                  bool progress = false) {
  std::vector<std::string> all = {"/opt/bin/fake-trainer"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char *> argv;
  for (std::string &s : all)
    argv.push_back(s.data());
  argv.push_back(nullptr);
  std::ostringstream out, err;
  Result r;
  r.rc = run(p, int(all.size()), argv.data(), out, err, progress);
  r.out = out.str();
  r.err = err.str();
  return r;
}

// The common flags: the dataset and one thread. Results do not depend on
// the thread count (checked once below), and OpenMP threads that spin while
// the machine is busy with other work would make every run many times slower.
std::vector<std::string> baseArgs(std::vector<std::string> more) {
  std::vector<std::string> args = {"--data", data().dir.path(), "--threads",
                                   "1"};
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

std::vector<std::string> lines(const std::string &text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    out.push_back(line);
  return out;
}

bool contains(const std::string &s, const std::string &part) {
  return s.find(part) != std::string::npos;
}

// One JSON object with number/null values, keys in order.
struct JsonObject {
  std::vector<std::string> keys;
  std::map<std::string, double> values; // null -> NaN
  double operator[](const std::string &k) const {
    auto it = values.find(k);
    return it == values.end() ? std::nan("") : it->second;
  }
};

// Strict enough for the trainer's lines: {"key":number|null,...}.
bool parseJsonObject(const std::string &line, JsonObject &obj) {
  size_t i = 0;
  auto expect = [&](char c) {
    if (i < line.size() && line[i] == c) {
      ++i;
      return true;
    }
    return false;
  };
  if (!expect('{'))
    return false;
  for (;;) {
    if (!expect('"'))
      return false;
    size_t end = line.find('"', i);
    if (end == std::string::npos)
      return false;
    std::string key = line.substr(i, end - i);
    i = end + 1;
    if (!expect(':'))
      return false;
    double v;
    if (line.compare(i, 4, "null") == 0) {
      v = std::nan("");
      i += 4;
    } else {
      const char *start = line.c_str() + i;
      char *stop = nullptr;
      v = std::strtod(start, &stop);
      if (stop == start)
        return false;
      i += size_t(stop - start);
    }
    if (obj.values.count(key))
      return false;
    obj.keys.push_back(key);
    obj.values[key] = v;
    if (expect('}'))
      return i == line.size();
    if (!expect(','))
      return false;
  }
}

std::vector<JsonObject> readJsonLines(const std::string &path) {
  std::vector<JsonObject> out;
  for (const std::string &line : lines(fcc::test::readText(path))) {
    JsonObject obj;
    EXPECT_TRUE(parseJsonObject(line, obj)) << "not a JSON object: " << line;
    out.push_back(obj);
  }
  return out;
}

// The default program of these tests: batch 32, 4 classes, 3x32x32, the
// fake recipe (see FakeProgram.h).
FakeConfig config() { return FakeConfig(); }

// A schedule the linear model learns the synthetic data with in 3 epochs.
const char *kKnots = "0:0.0002,3:0";

//===- The fake itself ----------------------------------------------------===//

// One step of the fake worked out by hand, so that the end-to-end tests below
// rest on a program that does what it claims.
TEST(FakeProgram, OneStepByHand) {
  FakeConfig c;
  c.batch = 2;
  c.channels = 1;
  c.height = 1;
  c.width = 2;
  c.classes = 2;
  c.weightLrMult = 2.0f; // the bias keeps lr_mult 1, wd_mult 0
  const fcc_program *p = fakeProgram(c);
  ASSERT_EQ(p->num_params, 2);
  EXPECT_EQ(std::string(p->params[0].name), "fc.weight");
  EXPECT_EQ(p->params[0].role, FCC_ROLE_WEIGHT);
  EXPECT_EQ(p->params[0].numel, 4);
  EXPECT_EQ(p->params[0].fan_in, 2);
  EXPECT_EQ(p->params[0].init, nullptr);
  EXPECT_EQ(p->params[1].role, FCC_ROLE_BIAS);
  EXPECT_EQ(p->params[1].fan_in, 2);
  ASSERT_EQ(p->setup(), 0);

  // Both classes get the same logit (row 0: 0.2*1 + 0.1*2 + 0.3 = 0.7, row
  // 1: 0.2*3 + 0.1*-1 + 0.3 = 0.8), so softmax = (1/2, 1/2) in both rows.
  float w[4] = {0.2f, 0.1f, 0.2f, 0.1f}, b[2] = {0.3f, 0.3f};
  float mw[4] = {}, mb[2] = {};
  float *params[2] = {w, b}, *momentum[2] = {mw, mb};
  const float images[4] = {1, 2, 3, -1};
  const int32_t labels[2] = {0, 1};
  fcc_hyper h{};
  h.lr = 0.1f;
  h.momentum = 0.9f;
  h.weight_decay = 0.01f;
  h.nesterov = 1.0f;
  h.loss_scale = 1.0f;
  float metrics[FCC_NUM_METRICS] = {};
  p->train_step(params, momentum, images, labels, &h, metrics, nullptr);
  // Loss log 2 per row; argmax of a tie is class 0: row 0 right, row 1 not.
  EXPECT_NEAR(metrics[FCC_METRIC_LOSS_SUM], 2 * std::log(2.0), 1e-6);
  EXPECT_EQ(metrics[FCC_METRIC_CORRECT], 1.0f);
  // d(mean loss)/dlogits = (p - q)/2: row 0 (-1/4, 1/4), row 1 (1/4, -1/4),
  // so dW = [[0.5, -0.75], [-0.5, 0.75]] and db = 0. With wd 0.01 the
  // gradient is g' = dW + 0.01 w, the buffer g', and the Nesterov step
  // lr * lr_mult * (g' + 0.9 g') = 0.38 g'.
  const double g[4] = {0.5 + 0.002, -0.75 + 0.001, -0.5 + 0.002,
                       0.75 + 0.001};
  const double w0[4] = {0.2, 0.1, 0.2, 0.1};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(mw[i], g[i], 1e-6) << i;
    EXPECT_NEAR(w[i], w0[i] - 0.38 * g[i], 1e-6) << i;
  }
  EXPECT_EQ(b[0], 0.3f); // zero gradient, no weight decay on the bias
  EXPECT_EQ(b[1], 0.3f);
  EXPECT_EQ(mb[0], 0.0f);

  // Evaluation: identity weights, row 1 is padding.
  float ew[4] = {1, 0, 0, 1}, eb[2] = {0, 0};
  float *eparams[2] = {ew, eb};
  const float eimages[4] = {2, 1, 5, 5};
  const int32_t elabels[2] = {0, FCC_IGNORE_LABEL};
  float em[FCC_NUM_METRICS] = {};
  p->eval_step(eparams, eimages, elabels, 0.0f, 0, em);
  EXPECT_NEAR(em[FCC_METRIC_LOSS_SUM], std::log(1 + std::exp(-1.0)), 1e-6);
  EXPECT_EQ(em[FCC_METRIC_CORRECT], 1.0f);
  // With TTA the flipped image (1, 2) averages the logits to (1.5, 1.5).
  float et[FCC_NUM_METRICS] = {};
  p->eval_step(eparams, eimages, elabels, 0.0f, 1, et);
  EXPECT_NEAR(et[FCC_METRIC_LOSS_SUM], std::log(2.0), 1e-6);
  // Label smoothing 0.2 on logits (2, 1): q = (0.9, 0.1).
  float es[FCC_NUM_METRICS] = {};
  p->eval_step(eparams, eimages, elabels, 0.2f, 0, es);
  double lse = 2 + std::log(1 + std::exp(-1.0));
  EXPECT_NEAR(es[FCC_METRIC_LOSS_SUM], lse - 0.9 * 2 - 0.1 * 1, 1e-6);

  // EMA with decay 0.75.
  float aw[4] = {1, 1, 1, 1}, ab[2] = {0, 4};
  float *ema[2] = {aw, ab};
  p->ema_update(ema, eparams, 0.75f);
  const float want[4] = {1, 0.75f, 0.75f, 1};
  for (int i = 0; i < 4; ++i)
    EXPECT_FLOAT_EQ(aw[i], want[i]) << i;
  EXPECT_FLOAT_EQ(ab[1], 3.0f);
  p->teardown();
  EXPECT_EQ(fakeLog().setupCalls, 1);
  EXPECT_EQ(fakeLog().teardownCalls, 1);
}

//===- Learning ------------------------------------------------------------===//

TEST(Trainer, LearnsTheSyntheticData) {
  TempDir out;
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(p, baseArgs({"--epochs", "3", "--lr-knots", kKnots,
                                     "--metrics", out.file("m.jsonl")}));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err, "");
  std::vector<JsonObject> m = readJsonLines(out.file("m.jsonl"));
  ASSERT_EQ(m.size(), 3u);
  const double chanceLoss = std::log(double(kClasses)); // uniform prediction
  // The loss falls: the last epoch's training loss is well below the first,
  // and the model ends far better than guessing.
  EXPECT_LT(m[2]["train_loss"], m[0]["train_loss"]);
  EXPECT_LT(m[2]["train_loss"], 0.5 * chanceLoss);
  EXPECT_LT(m[2]["test_loss"], 0.5 * chanceLoss);
  EXPECT_GT(m[2]["train_acc"], 0.8);
  EXPECT_GT(m[2]["test_acc"], 0.8);
  // The console: settings, the table, the run summary.
  EXPECT_TRUE(contains(r.out, "model     fake-linear.onnx  (2 parameter "
                              "tensors, 4 classes)"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "512 train images (16 steps/epoch, 0 left over "
                              "per epoch), 100 test images"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "epoch  lr      train loss")) << r.out;
  EXPECT_TRUE(contains(r.out, "run 1 (seed 0): test acc ")) << r.out;
  EXPECT_TRUE(contains(r.out, "3 epochs")) << r.out;
}

TEST(Trainer, MetricsJsonLines) {
  TempDir out;
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(p, baseArgs({"--epochs", "3", "--lr-knots", kKnots,
                                     "--seed", "9", "--metrics",
                                     out.file("m.jsonl"), "--quiet"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  std::vector<JsonObject> m = readJsonLines(out.file("m.jsonl"));
  ASSERT_EQ(m.size(), 3u);
  const std::vector<std::string> keys = {
      "run",          "seed",        "epoch",         "lr",
      "train_loss",   "train_acc",   "test_loss",     "test_acc",
      "epoch_time_s", "eval_time_s", "total_time_s",  "train_images",
      "test_images",  "steps",       "skipped_steps", "loss_scale",
      "images_per_s", "ranks"};
  double total = 0;
  for (int e = 0; e < 3; ++e) {
    const JsonObject &j = m[size_t(e)];
    EXPECT_EQ(j.keys, keys);
    EXPECT_EQ(j["run"], 1);
    EXPECT_EQ(j["seed"], 9);
    EXPECT_EQ(j["epoch"], e + 1);
    // The schedule at the end of the epoch: 0.0002 * (1 - epoch/3).
    EXPECT_NEAR(j["lr"], 0.0002 * (1.0 - (e + 1) / 3.0), 1e-12);
    EXPECT_EQ(j["train_images"], 512);
    EXPECT_EQ(j["test_images"], 100);
    EXPECT_EQ(j["steps"], 16);
    EXPECT_EQ(j["skipped_steps"], 0);
    // Accuracies are counts over 512 and 100 images.
    EXPECT_NEAR(j["train_acc"] * 512, std::round(j["train_acc"] * 512), 1e-6);
    EXPECT_NEAR(j["test_acc"] * 100, std::round(j["test_acc"] * 100), 1e-6);
    for (const char *k : {"train_acc", "test_acc"}) {
      EXPECT_GE(j[k], 0.0) << k;
      EXPECT_LE(j[k], 1.0) << k;
    }
    for (const char *k : {"train_loss", "test_loss"})
      EXPECT_TRUE(std::isfinite(j[k]) && j[k] > 0) << k;
    EXPECT_GT(j["epoch_time_s"], 0.0);
    EXPECT_GE(j["eval_time_s"], 0.0);
    total += j["epoch_time_s"];
    // total_time_s is the training time so far (printed with 6 decimals).
    EXPECT_NEAR(j["total_time_s"], total, 1e-5 * (e + 1));
    EXPECT_NEAR(j["images_per_s"], 512 / j["epoch_time_s"],
                0.051 + 1e-3 * j["images_per_s"]);
  }
  // --quiet: only the run summary on stdout.
  std::vector<std::string> outLines = lines(r.out);
  ASSERT_EQ(outLines.size(), 1u) << r.out;
  EXPECT_EQ(outLines[0].rfind("run 1 (seed 9): test acc ", 0), 0u) << r.out;
}

// Splits "a\tb\tc".
std::vector<std::string> fields(const std::string &line) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t tab = line.find('\t', start);
    out.push_back(line.substr(start, tab - start));
    if (tab == std::string::npos)
      return out;
    start = tab + 1;
  }
}

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

TEST(Trainer, TsvHeaderAndRows) {
  TempDir out;
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(
      p, baseArgs({"--epochs", "3", "--lr-knots", kKnots, "--quiet",
                   "--metrics", out.file("m.jsonl"), "--tsv",
                   out.file("t.tsv")}));
  ASSERT_EQ(r.rc, 0) << r.err;
  std::vector<JsonObject> m = readJsonLines(out.file("m.jsonl"));
  std::vector<std::string> t = lines(fcc::test::readText(out.file("t.tsv")));
  ASSERT_EQ(m.size(), 3u);
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t[0], "epoch\thours\ttop1Accuracy");
  for (int e = 0; e < 3; ++e) {
    std::vector<std::string> f = fields(t[size_t(e + 1)]);
    ASSERT_EQ(f.size(), 3u) << t[size_t(e + 1)];
    EXPECT_EQ(f[0], std::to_string(e + 1));
    // hours: training time so far / 3600 with 8 decimals.
    EXPECT_EQ(f[1].size(), f[1].find('.') + 9) << f[1];
    EXPECT_NEAR(std::stod(f[1]), m[size_t(e)]["total_time_s"] / 3600.0, 1e-8);
    // top1Accuracy: percent with 2 decimals.
    EXPECT_EQ(f[2], fixed(m[size_t(e)]["test_acc"] * 100.0, 2));
  }
}

TEST(Trainer, SeveralRuns) {
  TempDir out;
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(
      p, baseArgs({"--epochs", "1", "--lr-knots", "0:0.0002", "--runs", "3",
                   "--seed", "5", "--target-acc", "0.5", "--metrics",
                   out.file("m.jsonl"), "--tsv", out.file("t.tsv")}));
  ASSERT_EQ(r.rc, 0) << r.err;
  std::vector<JsonObject> m = readJsonLines(out.file("m.jsonl"));
  ASSERT_EQ(m.size(), 3u);
  std::vector<double> acc;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(m[size_t(i)]["run"], i + 1);
    EXPECT_EQ(m[size_t(i)]["seed"], 5 + i);
    EXPECT_EQ(m[size_t(i)]["epoch"], 1);
    acc.push_back(m[size_t(i)]["test_acc"]);
  }
  // Each run starts from its own initialisation.
  EXPECT_NE(m[0]["train_loss"], m[1]["train_loss"]);
  EXPECT_NE(m[1]["train_loss"], m[2]["train_loss"]);
  EXPECT_TRUE(contains(r.out, "run 2 of 3 (seed 6)")) << r.out;
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(contains(r.out, "run " + std::to_string(i + 1) + " (seed " +
                                    std::to_string(5 + i) + "): test acc " +
                                    fixed(acc[size_t(i)], 4)))
        << r.out;
  // The distribution, computed here from the per-run JSON.
  std::vector<double> sorted = acc;
  std::sort(sorted.begin(), sorted.end());
  double mean = (acc[0] + acc[1] + acc[2]) / 3;
  std::string expected = "3 runs (seeds 5..7): final test acc min " +
                         fixed(sorted[0], 4) + "  median " +
                         fixed(sorted[1], 4) + "  mean " + fixed(mean, 4) +
                         "  max " + fixed(sorted[2], 4);
  EXPECT_TRUE(contains(r.out, expected)) << "want: " << expected << "\n"
                                         << r.out;
  int reached = 0;
  for (double a : acc)
    reached += a >= 0.5;
  EXPECT_TRUE(contains(r.out, "target 0.5: final test acc reached it in " +
                                  std::to_string(reached) + "/3 runs"))
      << r.out;
  // The TSV has a run column when runs share the file.
  std::vector<std::string> t = lines(fcc::test::readText(out.file("t.tsv")));
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t[0], "run\tepoch\thours\ttop1Accuracy");
  for (int i = 0; i < 3; ++i) {
    std::vector<std::string> f = fields(t[size_t(i + 1)]);
    ASSERT_EQ(f.size(), 4u);
    EXPECT_EQ(f[0], std::to_string(i + 1));
    EXPECT_EQ(f[1], "1");
    EXPECT_EQ(f[3], fixed(acc[size_t(i)] * 100.0, 2));
  }
}

//===- Determinism ---------------------------------------------------------===//

// The metrics without the wall-clock fields.
std::vector<std::map<std::string, double>>
withoutTimes(const std::vector<JsonObject> &m) {
  std::vector<std::map<std::string, double>> out;
  for (const JsonObject &j : m) {
    std::map<std::string, double> v = j.values;
    for (const char *k :
         {"epoch_time_s", "eval_time_s", "total_time_s", "images_per_s"})
      v.erase(k);
    out.push_back(v);
  }
  return out;
}

TEST(Trainer, SameSeedSameMetrics) {
  // Augmentation on (crops, flips, cutout) and EMA, so that every random
  // part of the loop is exercised.
  FakeConfig c = config();
  c.defaults.flip = 1;
  c.defaults.crop_pad = 4;
  c.defaults.cutout = 8;
  TempDir out;
  auto once = [&](const char *seed, const char *file) {
    const fcc_program *p = fakeProgram(c);
    Result r = runTrainer(
        p, baseArgs({"--epochs", "2", "--lr-knots", kKnots, "--seed", seed,
                     "--ema", "0.9", "--quiet", "--metrics",
                     out.file(file)}));
    EXPECT_EQ(r.rc, 0) << r.err;
    return withoutTimes(readJsonLines(out.file(file)));
  };
  auto a = once("3", "a.jsonl"), b = once("3", "b.jsonl"),
       other = once("4", "c.jsonl");
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a, b);
  ASSERT_EQ(other.size(), 2u);
  EXPECT_NE(a[0]["train_loss"], other[0]["train_loss"]);
}

TEST(Trainer, ThreadCountDoesNotChangeResults) {
  TempDir out;
  FakeConfig c = config();
  c.defaults.flip = 1;
  c.defaults.crop_pad = 4;
  auto once = [&](const char *threads, const char *file) {
    const fcc_program *p = fakeProgram(c);
    Result r = runTrainer(
        p, {"--data", data().dir.path(), "--threads", threads, "--epochs", "1",
            "--lr-knots", kKnots, "--quiet", "--metrics", out.file(file)});
    EXPECT_EQ(r.rc, 0) << r.err;
    return withoutTimes(readJsonLines(out.file(file)));
  };
  auto one = once("1", "1.jsonl"), two = once("2", "2.jsonl");
  fcc_cpu_set_num_threads(1); // back to what the other tests use
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one, two);
}

//===- Evaluation ----------------------------------------------------------===//

// Loss sum and correct count of the linear model `params` (weight then bias)
// on the first `count` test images, in double precision.
void referenceEval(const std::vector<float> &params, int64_t count,
                   int64_t trainCount, double labelSmoothing, double &lossSum,
                   int64_t &correct) {
  double mean[3], sd[3];
  statistics(trainCount, mean, sd);
  const Split &t = data().test;
  lossSum = 0;
  correct = 0;
  for (int64_t i = 0; i < count; ++i) {
    std::vector<double> x = normalised(t.image(i), mean, sd);
    double logits[kClasses];
    for (int k = 0; k < kClasses; ++k) {
      double s = params[size_t(kClasses * kImage + k)];
      for (int64_t j = 0; j < kImage; ++j)
        s += double(params[size_t(k * kImage + j)]) * x[size_t(j)];
      logits[k] = s;
    }
    int label = t.labels[size_t(i)], best = 0;
    double mx = logits[0];
    for (int k = 1; k < kClasses; ++k)
      if (logits[k] > mx) {
        mx = logits[k];
        best = k;
      }
    double z = 0;
    for (int k = 0; k < kClasses; ++k)
      z += std::exp(logits[k] - mx);
    double lse = mx + std::log(z);
    // -sum_k q_k log p_k with q = (1 - ls) onehot + ls / K.
    for (int k = 0; k < kClasses; ++k) {
      double q = (k == label ? 1.0 - labelSmoothing : 0.0) +
                 labelSmoothing / kClasses;
      lossSum -= q * (logits[k] - lse);
    }
    correct += best == label;
  }
}

TEST(Trainer, PartialTestBatchIsEvaluatedExactly) {
  // 33 test images = one full batch + one image and 31 padding rows; 100 =
  // three full batches + 4 images.
  for (int64_t count : {33, 100}) {
    SCOPED_TRACE("test images: " + std::to_string(count));
    TempDir out;
    const fcc_program *p = fakeProgram(config());
    Result r = runTrainer(
        p, baseArgs({"--epochs", "2", "--lr-knots", kKnots, "--quiet",
                     "--label-smoothing", "0.1", "--test-limit",
                     std::to_string(count), "--metrics",
                     out.file("m.jsonl")}));
    ASSERT_EQ(r.rc, 0) << r.err;
    std::vector<JsonObject> m = readJsonLines(out.file("m.jsonl"));
    ASSERT_EQ(m.size(), 2u);
    EXPECT_EQ(m[1]["test_images"], count);

    const FakeLog &log = fakeLog();
    const int64_t batches = (count + kBatch - 1) / kBatch;
    ASSERT_EQ(log.evalCalls, 2 * batches); // after each of the 2 epochs
    // Only the last batch of each evaluation has padding rows.
    int64_t labelSum = 0;
    for (int64_t b = 0; b < batches; ++b) {
      int64_t valid = std::min(kBatch, count - b * kBatch);
      EXPECT_EQ(log.evalPaddingRows[size_t(batches + b)], kBatch - valid);
      labelSum += log.evalValidLabelsSum[size_t(batches + b)];
    }
    int64_t wantLabelSum = 0;
    for (int64_t i = 0; i < count; ++i)
      wantLabelSum += data().test.labels[size_t(i)];
    EXPECT_EQ(labelSum, wantLabelSum); // every image once, padding ignored
    for (float ls : log.evalLabelSmoothing)
      EXPECT_EQ(ls, 0.1f);

    // The metrics of the final parameters, computed here.
    double lossSum;
    int64_t correct;
    referenceEval(log.lastEvalParams, count, kTrain, 0.1, lossSum, correct);
    EXPECT_NEAR(m[1]["test_loss"], lossSum / double(count), 1e-4);
    EXPECT_NEAR(m[1]["test_acc"], double(correct) / double(count), 1e-12);
  }
}

TEST(Trainer, TestTimeAugmentationReachesEvalStep) {
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(p, baseArgs({"--epochs", "1", "--quiet", "--tta"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_EQ(fakeLog().evalTta.size(), 4u); // ceil(100 / 32) batches
  for (int t : fakeLog().evalTta)
    EXPECT_EQ(t, 1);
  FakeConfig c = config();
  c.defaults.tta = 1;
  p = fakeProgram(c);
  r = runTrainer(p, baseArgs({"--epochs", "1", "--quiet", "--no-tta"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  for (int t : fakeLog().evalTta)
    EXPECT_EQ(t, 0);
}

//===- What the steps get --------------------------------------------------===//

TEST(Trainer, HyperParametersFollowTheFlags) {
  const fcc_program *p = fakeProgram(config());
  // 16 steps per epoch; up to 0.4 at epoch 1, down to 0 at epoch 2.
  Result r = runTrainer(
      p, baseArgs({"--epochs", "2", "--lr-knots", "0:0,1:0.4,2:0",
                   "--momentum", "0.8", "--no-nesterov", "--wd", "0.002",
                   "--label-smoothing", "0.15", "--seed", "7", "--quiet"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  const FakeLog &log = fakeLog();
  ASSERT_EQ(log.hypers.size(), 32u);
  std::set<uint64_t> seeds;
  for (int s = 0; s < 32; ++s) {
    const fcc_hyper &h = log.hypers[size_t(s)];
    double e = s / 16.0; // the fractional epoch of step s
    double lr = e <= 1 ? 0.4 * e : 0.4 * (2 - e);
    EXPECT_NEAR(h.lr, lr, 1e-7) << "step " << s;
    EXPECT_EQ(h.momentum, 0.8f);
    EXPECT_EQ(h.weight_decay, 0.002f);
    EXPECT_EQ(h.nesterov, 0.0f);
    EXPECT_EQ(h.label_smoothing, 0.15f);
    EXPECT_EQ(h.loss_scale, 1.0f);
    seeds.insert(h.seed);
  }
  EXPECT_EQ(seeds.size(), 32u); // a fresh seed every step
  // The recipe's values when no flag is given (fakeRecipe: momentum 0.9,
  // Nesterov, wd 5e-4, lr 0.01 -> 0 over 2 epochs).
  p = fakeProgram(config()); // clears the log
  r = runTrainer(p, baseArgs({"--epochs", "1", "--quiet"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_EQ(fakeLog().hypers.size(), 16u);
  const fcc_hyper &h = fakeLog().hypers[8];
  EXPECT_NEAR(h.lr, 0.01 * (1 - 0.5 / 2), 1e-9);
  EXPECT_EQ(h.momentum, 0.9f);
  EXPECT_EQ(h.nesterov, 1.0f);
  EXPECT_EQ(h.weight_decay, 5e-4f);
  EXPECT_EQ(h.label_smoothing, 0.0f);
}

std::vector<float> expectedInit(uint64_t seed) {
  std::vector<float> w(size_t(kClasses * kImage)), b(kClasses);
  EXPECT_EQ(fcc_param_init(FCC_ROLE_WEIGHT, "fc.weight", int64_t(w.size()),
                           kImage, seed, w.data()),
            0);
  EXPECT_EQ(fcc_param_init(FCC_ROLE_BIAS, "fc.bias", int64_t(b.size()), kImage,
                           seed, b.data()),
            0);
  w.insert(w.end(), b.begin(), b.end());
  return w;
}

TEST(Trainer, EachRunStartsFromItsSeedsInitialisation) {
  FakeConfig c = config();
  c.recordParams = true;
  const fcc_program *p = fakeProgram(c);
  Result r = runTrainer(p, baseArgs({"--epochs", "1", "--runs", "2", "--seed",
                                     "4", "--quiet"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  const FakeLog &log = fakeLog();
  ASSERT_EQ(log.paramsAtEntry.size(), 32u);
  for (int run = 0; run < 2; ++run) {
    const std::vector<float> &first = log.paramsAtEntry[size_t(16 * run)];
    EXPECT_EQ(first, expectedInit(4 + uint64_t(run))) << "run " << run;
    // PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not constant.
    const double bound = 1.0 / std::sqrt(double(kImage));
    for (float v : first)
      ASSERT_LE(std::fabs(v), bound);
    EXPECT_NE(*std::min_element(first.begin(), first.end()),
              *std::max_element(first.begin(), first.end()));
    // The momentum starts at zero in every run and moves after a step.
    EXPECT_EQ(log.momentumAbsSumAtEntry[size_t(16 * run)], 0.0);
    EXPECT_GT(log.momentumAbsSumAtEntry[size_t(16 * run + 1)], 0.0);
  }
  EXPECT_NE(log.paramsAtEntry[0], log.paramsAtEntry[16]);
  // Without EMA the evaluation uses the trained parameters.
  EXPECT_EQ(log.lastEvalParams, log.paramsAfterLastStep);
}

TEST(Trainer, EmaEveryKSteps) {
  FakeConfig c = config();
  c.recordParams = true;
  const fcc_program *p = fakeProgram(c);
  Result r = runTrainer(p, baseArgs({"--epochs", "1", "--lr-knots", kKnots,
                                     "--ema", "0.9", "--ema-every", "3",
                                     "--quiet"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  const FakeLog &log = fakeLog();
  ASSERT_EQ(log.paramsAtEntry.size(), 16u);
  // Updates after steps 3, 6, ..., 15 with decay 0.9^3.
  EXPECT_EQ(log.emaAfterStep, (std::vector<int64_t>{3, 6, 9, 12, 15}));
  for (float d : log.emaDecays)
    EXPECT_NEAR(d, 0.729, 1e-7);
  // The EMA recurrence from the initial parameters.
  std::vector<double> ema(log.paramsAtEntry[0].begin(),
                          log.paramsAtEntry[0].end());
  for (int s = 1; s <= 16; ++s) {
    const std::vector<float> &after =
        s < 16 ? log.paramsAtEntry[size_t(s)] : log.paramsAfterLastStep;
    if (s % 3 == 0)
      for (size_t i = 0; i < ema.size(); ++i)
        ema[i] = 0.729 * ema[i] + 0.271 * after[i];
  }
  // Evaluation uses the EMA, which differs from the trained parameters.
  ASSERT_EQ(log.lastEvalParams.size(), ema.size());
  double worst = 0;
  for (size_t i = 0; i < ema.size(); ++i)
    worst = std::max(worst, std::fabs(log.lastEvalParams[i] - ema[i]));
  EXPECT_LT(worst, 1e-6);
  EXPECT_NE(log.lastEvalParams, log.paramsAfterLastStep);
}

TEST(Trainer, BatchesFollowTheEpochOrder) {
  // --train-limit 500: 15 full batches per epoch, 20 images left over.
  FakeConfig c = config();
  c.recordBatches = true;
  const fcc_program *p = fakeProgram(c);
  TempDir out;
  Result r = runTrainer(p, baseArgs({"--epochs", "2", "--train-limit", "500",
                                     "--seed", "11", "--quiet", "--metrics",
                                     out.file("m.jsonl")}));
  ASSERT_EQ(r.rc, 0) << r.err;
  const FakeLog &log = fakeLog();
  ASSERT_EQ(log.trainImages.size(), 30u);
  std::vector<JsonObject> m = readJsonLines(out.file("m.jsonl"));
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0]["steps"], 15);
  EXPECT_EQ(m[0]["train_images"], 480);

  double mean[3], sd[3];
  statistics(500, mean, sd); // of the images used
  const Split &t = data().train;
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<int64_t> order = epochOrder(500, Shard{}, 11, epoch);
    std::set<int64_t> seen;
    for (int s = 0; s < 15; ++s) {
      const size_t step = size_t(15 * epoch + s);
      for (int64_t i = 0; i < kBatch; ++i) {
        int64_t example = order[size_t(s * kBatch + i)];
        ASSERT_LT(example, 500);
        seen.insert(example);
        ASSERT_EQ(log.trainLabels[step][size_t(i)],
                  t.labels[size_t(example)]);
        std::vector<double> x = normalised(t.image(example), mean, sd);
        const float *got = log.trainImages[step].data() + i * kImage;
        for (int64_t j = 0; j < kImage; ++j)
          ASSERT_NEAR(got[j], x[size_t(j)], 1e-4)
              << "epoch " << epoch << " step " << s << " slot " << i
              << " pixel " << j;
      }
    }
    EXPECT_EQ(seen.size(), 480u); // no example twice in an epoch
  }
  // The two epochs are shuffled differently.
  EXPECT_NE(log.trainLabels[0], log.trainLabels[15]);
}

TEST(Trainer, AugmentedBatchesUseTheDrawsOfEachExample) {
  FakeConfig c = config();
  c.recordBatches = true;
  c.defaults.flip = 1;
  c.defaults.crop_pad = 4;
  const fcc_program *p = fakeProgram(c);
  Result r = runTrainer(p, baseArgs({"--epochs", "2", "--cutout", "8",
                                     "--seed", "2", "--quiet"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  const FakeLog &log = fakeLog();
  ASSERT_EQ(log.trainImages.size(), 32u);
  AugmentConfig augment;
  augment.pad = 4;
  augment.flip = true;
  augment.cutout = 8;
  double mean[3], sd[3];
  statistics(kTrain, mean, sd);
  const Split &t = data().train;
  int flipped = 0;
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<int64_t> order = epochOrder(kTrain, Shard{}, 2, epoch);
    for (int s : {0, 15}) {
      for (int64_t i = 0; i < kBatch; ++i) {
        int64_t example = order[size_t(s * kBatch + i)];
        ExampleAugment d = drawAugmentation(augment, 32, 32, 2, epoch, example);
        flipped += d.flip;
        std::vector<double> xd = normalised(t.image(example), mean, sd);
        std::vector<float> x(xd.begin(), xd.end()), want(kImage);
        augmentImage(x.data(), 3, 32, 32, augment, d, want.data());
        const float *got =
            log.trainImages[size_t(16 * epoch + s)].data() + i * kImage;
        for (int64_t j = 0; j < kImage; ++j)
          ASSERT_NEAR(got[j], want[size_t(j)], 1e-4)
              << "epoch " << epoch << " step " << s << " slot " << i
              << " pixel " << j;
      }
    }
  }
  EXPECT_GT(flipped, 0);
}

void bigEndian(std::vector<uint8_t> &out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(uint8_t(v >> shift));
}

TEST(Trainer, TrainsOnIdxData) {
  // 1x8x8 images in the MNIST layout, 10 classes: the image's brightness.
  TempDir dir, out;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> noise(-5, 5);
  auto write = [&](const std::string &images, const std::string &labels,
                   uint32_t count) {
    std::vector<uint8_t> img, lbl;
    bigEndian(img, 2051);
    bigEndian(img, count);
    bigEndian(img, 8);
    bigEndian(img, 8);
    bigEndian(lbl, 2049);
    bigEndian(lbl, count);
    for (uint32_t i = 0; i < count; ++i) {
      int l = int(i % 10);
      lbl.push_back(uint8_t(l));
      for (int k = 0; k < 64; ++k)
        img.push_back(uint8_t(20 + 22 * l + noise(rng)));
    }
    fcc::test::writeBytes(dir.file(images), img);
    fcc::test::writeBytes(dir.file(labels), lbl);
  };
  write("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 70);
  write("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10);
  FakeConfig c = config();
  c.channels = 1;
  c.height = c.width = 8;
  c.classes = 10;
  c.batch = 16;
  const fcc_program *p = fakeProgram(c);
  Result r = runTrainer(p, {"--data", dir.path(), "--threads", "1",
                            "--epochs", "2", "--metrics", out.file("m.jsonl")});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "(MNIST IDX): 70 train images (4 steps/epoch, "
                              "6 left over per epoch), 10 test images"))
      << r.out;
  std::vector<JsonObject> m = readJsonLines(out.file("m.jsonl"));
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1]["train_images"], 64);
  EXPECT_EQ(m[1]["test_images"], 10);
  EXPECT_TRUE(std::isfinite(m[1]["test_loss"]));
  EXPECT_EQ(fakeLog().evalPaddingRows.back(), 6); // 10 of a batch of 16
}

//===- Exit codes ----------------------------------------------------------===//

TEST(Trainer, MissingDataDirectory) {
  TempDir dir;
  const std::string missing = dir.file("no-such-data");
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(p, {"--data", missing});
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_EQ(r.err, "fake-trainer: error: " + missing + ": no such directory\n");
  EXPECT_EQ(fakeLog().setupCalls, 0);
  // A directory without a dataset.
  r = runTrainer(p, {"--data", dir.path()});
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, dir.path() + ": no dataset found")) << r.err;
}

TEST(Trainer, TrainLimitBelowOneBatch) {
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(p, baseArgs({"--train-limit", "31"}));
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, ": 31 training images (after --train-limit) do "
                              "not fill one batch of 32"))
      << r.err;
  // Exactly one batch is enough.
  r = runTrainer(p, baseArgs({"--train-limit", "32", "--epochs", "1",
                              "--quiet"}));
  EXPECT_EQ(r.rc, kExitOk) << r.err;
  EXPECT_EQ(fakeLog().hypers.size(), 1u);
}

TEST(Trainer, UnknownTargetIsNoDevice) {
  FakeConfig c = config();
  c.target = "nope";
  const fcc_program *p = fakeProgram(c);
  Result r = runTrainer(p, baseArgs({}));
  EXPECT_EQ(r.rc, kExitNoDevice);
  EXPECT_TRUE(contains(r.err, "fake-trainer: error: ")) << r.err;
  EXPECT_TRUE(contains(r.err, "'nope'")) << r.err;
  EXPECT_EQ(fakeLog().setupCalls, 0);
}

TEST(Trainer, DivergingLearningRate) {
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(p, baseArgs({"--lr-knots", "0:1e38", "--quiet"}));
  EXPECT_EQ(r.rc, kExitDiverged);
  EXPECT_TRUE(contains(r.err, "training diverged")) << r.err;
  EXPECT_TRUE(contains(r.err, "lower the learning rate")) << r.err;
  // Stopped in the first epoch, at the first non-finite loss, and the
  // program was torn down.
  EXPECT_LT(fakeLog().hypers.size(), 16u);
  EXPECT_EQ(fakeLog().evalCalls, 0);
  EXPECT_EQ(fakeLog().setupCalls, 1);
  EXPECT_EQ(fakeLog().teardownCalls, 1);
}

TEST(Trainer, NanLossStopsAtOnce) {
  FakeConfig c = config();
  c.nanLoss = true;
  const fcc_program *p = fakeProgram(c);
  TempDir out;
  Result r = runTrainer(
      p, baseArgs({"--quiet", "--metrics", out.file("m.jsonl")}));
  EXPECT_EQ(r.rc, kExitDiverged);
  EXPECT_TRUE(contains(r.err, "the loss of step 0 (epoch 1")) << r.err;
  EXPECT_EQ(fakeLog().hypers.size(), 1u);
  EXPECT_EQ(fcc::test::readText(out.file("m.jsonl")), ""); // no epoch done
}

TEST(Trainer, LabelsOutsideTheModelsClasses) {
  FakeConfig c = config();
  c.classes = 3; // the data has labels 0..3
  const fcc_program *p = fakeProgram(c);
  Result r = runTrainer(p, baseArgs({}));
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, data().dir.path() +
                                  ": label 3 does not fit the model's 3 "
                                  "classes"))
      << r.err;
}

TEST(Trainer, ImageShapeMismatch) {
  FakeConfig c = config();
  c.channels = 1;
  c.height = c.width = 28;
  const fcc_program *p = fakeProgram(c);
  Result r = runTrainer(p, baseArgs({}));
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, "the model expects 1x28x28 images but " +
                                  data().dir.path() + " has 3x32x32"))
      << r.err;
}

TEST(Trainer, ProgramProblems) {
  FakeConfig c = config();
  c.abiVersion = FCC_PROGRAM_ABI_VERSION + 1;
  Result r = runTrainer(fakeProgram(c), baseArgs({}));
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, "ABI version " +
                                  std::to_string(FCC_PROGRAM_ABI_VERSION + 1)))
      << r.err;

  c = config();
  c.failSetup = true;
  r = runTrainer(fakeProgram(c), baseArgs({}));
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, "setting up the program failed: fake setup "
                              "failure"))
      << r.err;
  EXPECT_EQ(fakeLog().teardownCalls, 0); // only after a successful setup

  r = runTrainer(nullptr, baseArgs({}));
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, "no compiled program")) << r.err;
}

TEST(Trainer, UsageErrorsAndHelp) {
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(p, {"--help"});
  EXPECT_EQ(r.rc, kExitOk);
  EXPECT_TRUE(contains(r.out, "--lr-knots")) << r.out;
  EXPECT_EQ(fakeLog().setupCalls, 0);
  r = runTrainer(p, baseArgs({"--ema", "1.5"}));
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_EQ(r.err.rfind("fake-trainer: error: --ema: ", 0), 0u) << r.err;
  r = runTrainer(p, {});
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, "--data")) << r.err;
}

TEST(Trainer, SetupAndTeardownOnce) {
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(p, baseArgs({"--epochs", "1", "--runs", "2",
                                     "--quiet"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(fakeLog().setupCalls, 1);
  EXPECT_EQ(fakeLog().teardownCalls, 1);
}

TEST(Trainer, ProgressBarOnlyWhenAsked) {
  const fcc_program *p = fakeProgram(config());
  Result r = runTrainer(p, baseArgs({"--epochs", "1"}), /*progress=*/true);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "\r  epoch 1/1 [")) << r.out;
  r = runTrainer(p, baseArgs({"--epochs", "1"}), /*progress=*/false);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_FALSE(contains(r.out, "\r")) << r.out;
}

//===- Dynamic loss scaling kept by the backend ---------------------------===//

// A backend that poses as a GPU: the CPU backend for the data, with metrics
// that are "expensive" (cheapMetrics() false) and the loss scale kept "in
// target memory" as BackendCuda keeps it (a host rendering of
// fcc_cuda_loss_scale_update and of its stageHyper/takeMetrics), counting
// how often the trainer reads back.
struct DeviceScaleCounts {
  int takeMetrics = 0, setLossScale = 0, updates = 0, reads = 0;
};
DeviceScaleCounts gDeviceScale;

class FakeDeviceBackend final : public Backend {
public:
  std::string describe() const override { return "fake device"; }
  float *allocate(int64_t count) override { return cpu_->allocate(count); }
  void upload(float *dst, const float *host, int64_t count) override {
    cpu_->upload(dst, host, count);
  }
  void download(float *host, const float *src, int64_t count) override {
    cpu_->download(host, src, count);
  }
  void copy(float *dst, const float *src, int64_t count) override {
    cpu_->copy(dst, src, count);
  }
  void fillZero(float *dst, int64_t count) override {
    cpu_->fillZero(dst, count);
  }
  void setData(const ImageSet &train, const ImageSet &test,
               const Normalisation &norm, int64_t batch) override {
    cpu_->setData(train, test, norm, batch);
  }
  void loadTrainBatch(const int64_t *indices, const ExampleAugment *draws,
                      const AugmentConfig &config, int64_t count) override {
    cpu_->loadTrainBatch(indices, draws, config, count);
  }
  void loadTestBatch(const int64_t *indices, int64_t count,
                     int64_t valid) override {
    cpu_->loadTestBatch(indices, count, valid);
  }
  const float *batchImages() const override { return cpu_->batchImages(); }
  const int32_t *batchLabels() const override { return cpu_->batchLabels(); }
  float *metrics() override { return cpu_->metrics(); }
  void takeMetrics(double out[FCC_NUM_METRICS]) override {
    ++gDeviceScale.takeMetrics;
    cpu_->takeMetrics(out);
    lastSkipped_ = 0.0f;
  }
  bool cheapMetrics() const override { return false; }
  const fcc_hyper *stageHyper(const fcc_hyper &h) override {
    const float kept = staged_.loss_scale;
    staged_ = h;
    if (deviceScale_ && std::isfinite(h.loss_scale))
      staged_.loss_scale = kept;
    return &staged_;
  }
  bool deviceLossScale() const override { return true; }
  void setLossScale(double scale, int64_t cleanSteps) override {
    ++gDeviceScale.setLossScale;
    scale_ = scale;
    clean_ = cleanSteps;
    lastSkipped_ = cpu_->metrics()[FCC_METRIC_SKIPPED];
    staged_.loss_scale = float(scale);
    deviceScale_ = true;
  }
  void updateLossScale(int64_t window) override {
    ++gDeviceScale.updates;
    const float skipped = cpu_->metrics()[FCC_METRIC_SKIPPED];
    if (skipped > lastSkipped_) {
      scale_ = std::max(1.0, scale_ / 2);
      clean_ = 0;
    } else if (++clean_ >= window) {
      scale_ = std::min(1e30, scale_ * 2);
      clean_ = 0;
    }
    lastSkipped_ = skipped;
    staged_.loss_scale = float(scale_);
  }
  void readLossScale(double &scale, int64_t &cleanSteps) override {
    ++gDeviceScale.reads;
    scale = scale_;
    cleanSteps = clean_;
  }

private:
  std::unique_ptr<Backend> cpu_ = makeCpuBackend();
  fcc_hyper staged_{};
  bool deviceScale_ = false;
  double scale_ = 1.0;
  int64_t clean_ = 0;
  float lastSkipped_ = 0.0f;
};

// The fake as an fp16 program on `target` ("cpu": the trainer keeps the
// scale; "fakedevice": FakeDeviceBackend does) whose steps overflow from a
// loss scale of 4096 on.
const fcc_program *scalingProgram(const std::string &target) {
  static const bool registered = [] {
    registerBackend("fakedevice", []() -> std::unique_ptr<Backend> {
      return std::make_unique<FakeDeviceBackend>();
    });
    return true;
  }();
  (void)registered;
  FakeConfig c = config();
  c.target = target;
  c.lossScaling = true;
  c.overflowAt = 4096.0f;
  c.recordParams = true;
  gDeviceScale = DeviceScaleCounts();
  return fakeProgram(c);
}

// What the fp16 fake sees step by step, worked out from the rule (a skip
// halves the scale, at least 1; `window` clean steps in a row double it):
// the staged scale of each step (+inf at the injected step) and whether it
// was skipped.
void expectedScales(int64_t steps, double scale, int64_t window,
                    int64_t inject, std::vector<float> &staged,
                    std::vector<bool> &skipped) {
  int64_t clean = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const float used =
        s == inject ? std::numeric_limits<float>::infinity() : float(scale);
    const bool skip = !(used < 4096.0f);
    staged.push_back(used);
    skipped.push_back(skip);
    if (skip) {
      scale = std::max(1.0, scale / 2);
      clean = 0;
    } else if (++clean >= window) {
      scale = std::min(1e30, scale * 2);
      clean = 0;
    }
  }
}

// The JSON line without its times and losses (a backend whose metrics are
// not cheap sums the losses in float over the epoch, the CPU in double per
// step).
std::map<std::string, double> untimed(const JsonObject &j) {
  std::map<std::string, double> out = j.values;
  for (const char *k : {"epoch_time_s", "eval_time_s", "total_time_s",
                        "images_per_s", "train_loss", "test_loss"})
    out.erase(k);
  return out;
}

// The loop with the loss scale in the backend gives the same scales,
// skipped steps, metrics and messages as the trainer's host loss scale,
// without reading the metrics after every step.
TEST(Trainer, DeviceLossScaleMatchesTheHostLossScale) {
  const std::vector<std::string> flags = {
      "--epochs", "2", "--runs", "2", "--lr-knots", kKnots,
      "--loss-scale", "1024", "--loss-scale-window", "2",
      "--debug-inject-overflow", "5"};
  struct Seen {
    Result r;
    std::vector<fcc_hyper> hypers;
    std::vector<bool> skipped;
    std::vector<std::vector<float>> params; // at entry of every step
    std::vector<float> last;                // after the last step
    std::vector<JsonObject> metrics;
  };
  std::map<std::string, Seen> seen;
  for (const std::string target : {"cpu", "fakedevice"}) {
    SCOPED_TRACE(target);
    TempDir out;
    std::vector<std::string> args = flags;
    args.insert(args.end(), {"--metrics", out.file("m.jsonl")});
    Seen &s = seen[target];
    s.r = runTrainer(scalingProgram(target), baseArgs(args));
    ASSERT_EQ(s.r.rc, kExitOk) << s.r.err;
    s.hypers = fakeLog().hypers;
    s.skipped = fakeLog().skipped;
    s.params = fakeLog().paramsAtEntry;
    s.last = fakeLog().paramsAfterLastStep;
    s.metrics = readJsonLines(out.file("m.jsonl"));
    EXPECT_TRUE(contains(s.r.out, "fp16 (dynamic loss scaling from 1024, "
                                  "window 2)"))
        << s.r.out;
    // Two runs of 32 steps, each from the initial scale.
    std::vector<float> staged;
    std::vector<bool> skipped;
    expectedScales(32, 1024, 2, 5, staged, skipped);
    expectedScales(32, 1024, 2, 5, staged, skipped);
    ASSERT_EQ(s.hypers.size(), 64u);
    for (size_t i = 0; i < 64; ++i) {
      EXPECT_EQ(s.hypers[i].loss_scale, staged[i]) << "step " << i;
      EXPECT_EQ(s.skipped[i], skipped[i]) << "step " << i;
    }
    ASSERT_EQ(s.metrics.size(), 4u);
  }
  const Seen &host = seen["cpu"], &device = seen["fakedevice"];
  // The same steps (every hyper-parameter, bit for bit) and results.
  for (size_t i = 0; i < 64; ++i)
    EXPECT_EQ(std::memcmp(&host.hypers[i], &device.hypers[i],
                          sizeof(fcc_hyper)),
              0)
        << "step " << i;
  EXPECT_TRUE(host.params == device.params);
  EXPECT_TRUE(host.last == device.last);
  for (size_t e = 0; e < 4; ++e) {
    EXPECT_EQ(untimed(host.metrics[e]), untimed(device.metrics[e]))
        << "line " << e;
    for (const char *k : {"train_loss", "test_loss"})
      EXPECT_NEAR(host.metrics[e][k], device.metrics[e][k],
                  1e-5 * host.metrics[e][k])
          << k << " of line " << e;
  }
  // Epoch 1: steps 4 (scale 4096), 5 (injected), 10 and 13 skipped; the
  // scale after step 15 is 4096 (doubled at 15).
  EXPECT_EQ(host.metrics[0]["skipped_steps"], 4);
  EXPECT_EQ(host.metrics[0]["loss_scale"], 4096);
  auto skippedLines = [](const std::string &text) {
    std::vector<std::string> out;
    for (const std::string &l : lines(text))
      if (contains(l, "skipped"))
        out.push_back(l);
    return out;
  };
  EXPECT_EQ(skippedLines(host.r.out), skippedLines(device.r.out));
  EXPECT_TRUE(contains(device.r.out, "4 steps skipped (gradients "
                                     "overflowed); loss scale now 4096"))
      << device.r.out;
  // The device loop: one setLossScale per run, one update per step, and
  // the metrics taken a few times per epoch rather than after every step.
  EXPECT_EQ(gDeviceScale.setLossScale, 2);
  EXPECT_EQ(gDeviceScale.updates, 64);
  EXPECT_LE(gDeviceScale.takeMetrics, 4 * 4); // start, end, evaluation
  EXPECT_GE(gDeviceScale.reads, 4);            // each epoch's record
  EXPECT_LE(gDeviceScale.reads, 4 * 2);
}

// A run with the loss scale in the backend, stopped mid-epoch and resumed,
// takes the scale and the clean-step count from the checkpoint: the same
// steps as without the stop.
TEST(Trainer, DeviceLossScaleSurvivesAResume) {
  const std::vector<std::string> flags = {
      "--epochs", "2", "--seed", "3", "--lr-knots", kKnots,
      "--loss-scale", "1024", "--loss-scale-window", "2",
      "--debug-inject-overflow", "5"};
  for (const std::string target : {"cpu", "fakedevice"}) {
    SCOPED_TRACE(target);
    TempDir dir;
    std::vector<std::string> args = flags;
    args.insert(args.end(), {"--checkpoint-dir", dir.file("ckpt")});
    std::vector<std::string> first = args;
    first.insert(first.end(), {"--debug-stop-after-steps", "21"});
    Result a = runTrainer(scalingProgram(target), baseArgs(first));
    ASSERT_EQ(a.rc, kExitInterrupted) << a.err;
    std::vector<fcc_hyper> hypers = fakeLog().hypers;
    ASSERT_EQ(hypers.size(), 21u);
    // After step 20: scale 2048 (halved by the skip at step 19), one clean
    // step counted.
    Checkpoint c = readCheckpoint(checkpointPath(dir.file("ckpt"), 21));
    EXPECT_EQ(c.lossScale, 2048);
    EXPECT_EQ(c.cleanSteps, 1);
    std::vector<std::string> second = args;
    second.push_back("--resume");
    Result b = runTrainer(scalingProgram(target), baseArgs(second));
    ASSERT_EQ(b.rc, kExitOk) << b.err;
    hypers.insert(hypers.end(), fakeLog().hypers.begin(),
                  fakeLog().hypers.end());
    std::vector<float> staged;
    std::vector<bool> skipped;
    expectedScales(32, 1024, 2, 5, staged, skipped);
    ASSERT_EQ(hypers.size(), 32u);
    for (size_t i = 0; i < 32; ++i)
      EXPECT_EQ(hypers[i].loss_scale, staged[i]) << "step " << i;
  }
}

} // namespace
