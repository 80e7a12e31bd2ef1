//===- OptionsTest.cpp - The command line of a generated trainer ----------===//
//
// Defaults come from the recipe compiled into the program; every flag
// overrides its default; every bad value is exit code 1 with a message
// "NAME: error: --flag: ..." naming the flag.
//
//===----------------------------------------------------------------------===//
#include "Options.h"

#include "FakeProgram.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

using namespace fcc::trainer;
using fcc::test::FakeConfig;
using fcc::test::TempDir;

namespace {

struct Parsed {
  int rc = -2;
  Options o;
  std::string out, err;
};

Parsed parse(const fcc_program *p, std::vector<std::string> args) {
  std::vector<std::string> all = {"/path/to/trainer"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char *> argv;
  for (std::string &s : all)
    argv.push_back(s.data());
  argv.push_back(nullptr);
  std::ostringstream out, err;
  Parsed r;
  r.rc = parseOptions(*p, "trainer", int(all.size()), argv.data(), r.o, out,
                      err);
  r.out = out.str();
  r.err = err.str();
  return r;
}

// A recipe unlike the parser's built-in defaults, so that taking a value
// from the program is visible.
FakeConfig page24() {
  FakeConfig c;
  c.defaults.name = "page24";
  c.defaults.epochs = 24;
  c.defaults.lr_knots = "0:0,5:0.4,24:0";
  c.defaults.momentum = 0.875f;
  c.defaults.nesterov = 1;
  c.defaults.weight_decay = 0.256f;
  c.defaults.label_smoothing = 0.2f;
  c.defaults.ema_decay = 0.99f;
  c.defaults.ema_every = 5;
  c.defaults.tta = 1;
  c.defaults.cutout = 8;
  c.defaults.flip = 1;
  c.defaults.crop_pad = 4;
  return c;
}

// A recipe with everything off.
FakeConfig plain() {
  FakeConfig c;
  c.defaults.name = "custom";
  c.defaults.epochs = 3;
  c.defaults.lr_knots = "0:0.1";
  c.defaults.momentum = 0.0f;
  c.defaults.nesterov = 0;
  c.defaults.weight_decay = 0.0f;
  c.defaults.label_smoothing = 0.0f;
  c.defaults.ema_decay = 0.0f;
  c.defaults.ema_every = 0; // unset: 1
  c.defaults.tta = 0;
  c.defaults.cutout = 0;
  c.defaults.flip = 0;
  c.defaults.crop_pad = 0;
  return c;
}

TEST(Options, DefaultsComeFromTheProgram) {
  const fcc_program *p = fcc::test::fakeProgram(page24());
  Parsed r = parse(p, {"--data", "/some/dir"});
  ASSERT_EQ(r.rc, -1) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out, "");
  const Options &o = r.o;
  EXPECT_EQ(o.data, "/some/dir");
  EXPECT_EQ(o.epochs, 24);
  EXPECT_EQ(o.lrKnots, "0:0,5:0.4,24:0");
  EXPECT_EQ(o.lr.toString(), "0:0,5:0.4,24:0");
  EXPECT_DOUBLE_EQ(o.lr.at(2.5), 0.2);
  EXPECT_EQ(o.momentum, 0.875f);
  EXPECT_TRUE(o.nesterov);
  EXPECT_EQ(o.weightDecay, 0.256f);
  EXPECT_EQ(o.labelSmoothing, 0.2f);
  EXPECT_EQ(o.ema, 0.99f);
  EXPECT_EQ(o.emaEvery, 5);
  EXPECT_TRUE(o.tta);
  EXPECT_EQ(o.cutout, 8);
  EXPECT_TRUE(o.flip);
  EXPECT_EQ(o.cropPad, 4);
  // Not in the recipe.
  EXPECT_EQ(o.seed, 0u);
  EXPECT_EQ(o.trainLimit, -1);
  EXPECT_EQ(o.testLimit, -1);
  EXPECT_EQ(o.runs, 1);
  EXPECT_FALSE(o.targetAcc.has_value());
  EXPECT_EQ(o.metricsPath, "");
  EXPECT_EQ(o.tsvPath, "");
  EXPECT_EQ(o.threads, 0);
  EXPECT_FALSE(o.quiet);
}

TEST(Options, DefaultsOfAPlainRecipe) {
  const fcc_program *p = fcc::test::fakeProgram(plain());
  Parsed r = parse(p, {"--data=/d"});
  ASSERT_EQ(r.rc, -1) << r.err;
  EXPECT_EQ(r.o.data, "/d");
  EXPECT_EQ(r.o.epochs, 3);
  EXPECT_EQ(r.o.lr.toString(), "0:0.1");
  EXPECT_EQ(r.o.momentum, 0.0f);
  EXPECT_FALSE(r.o.nesterov);
  EXPECT_EQ(r.o.ema, 0.0f);
  EXPECT_EQ(r.o.emaEvery, 1); // ema_every 0 means every step
  EXPECT_FALSE(r.o.tta);
  EXPECT_EQ(r.o.cutout, 0);
  EXPECT_FALSE(r.o.flip);
  EXPECT_EQ(r.o.cropPad, 0);
}

TEST(Options, EveryFlagOverridesItsDefault) {
  TempDir dir;
  const fcc_program *p = fcc::test::fakeProgram(page24());
  Parsed r = parse(
      p, {"--data", "/d", "--epochs", "7", "--lr-knots", "0:0.1,2:0.05",
          "--momentum", "0.5", "--no-nesterov", "--wd", "0.001",
          "--label-smoothing", "0.1", "--ema", "0.5", "--ema-every", "3",
          "--no-tta", "--cutout", "12", "--no-flip", "--no-crop", "--seed",
          "42", "--train-limit", "100", "--test-limit", "50", "--runs", "4",
          "--target-acc", "0.93", "--metrics", dir.file("m.jsonl"), "--tsv",
          dir.file("t.tsv"), "--threads", "2", "--quiet"});
  ASSERT_EQ(r.rc, -1) << r.err;
  const Options &o = r.o;
  EXPECT_EQ(o.epochs, 7);
  EXPECT_EQ(o.lr.toString(), "0:0.1,2:0.05");
  EXPECT_EQ(o.momentum, 0.5f);
  EXPECT_FALSE(o.nesterov);
  EXPECT_EQ(o.weightDecay, 0.001f);
  EXPECT_EQ(o.labelSmoothing, 0.1f);
  EXPECT_EQ(o.ema, 0.5f);
  EXPECT_EQ(o.emaEvery, 3);
  EXPECT_FALSE(o.tta);
  EXPECT_EQ(o.cutout, 12);
  EXPECT_FALSE(o.flip);
  EXPECT_EQ(o.cropPad, 0);
  EXPECT_EQ(o.seed, 42u);
  EXPECT_EQ(o.trainLimit, 100);
  EXPECT_EQ(o.testLimit, 50);
  EXPECT_EQ(o.runs, 4);
  ASSERT_TRUE(o.targetAcc.has_value());
  EXPECT_DOUBLE_EQ(*o.targetAcc, 0.93);
  EXPECT_EQ(o.metricsPath, dir.file("m.jsonl"));
  EXPECT_EQ(o.tsvPath, dir.file("t.tsv"));
  EXPECT_EQ(o.threads, 2);
  EXPECT_TRUE(o.quiet);
}

TEST(Options, OnFlagsTurnOffDefaultsOn) {
  const fcc_program *p = fcc::test::fakeProgram(plain());
  Parsed r = parse(p, {"--data", "/d", "--nesterov", "--tta"});
  ASSERT_EQ(r.rc, -1) << r.err;
  EXPECT_TRUE(r.o.nesterov);
  EXPECT_TRUE(r.o.tta);
  r = parse(p, {"--data", "/d", "--ema", "0", "--cutout", "0", "--wd", "0"});
  ASSERT_EQ(r.rc, -1) << r.err;
  EXPECT_EQ(r.o.ema, 0.0f);
  EXPECT_EQ(r.o.cutout, 0);
}

TEST(Options, BoundaryValuesAreAccepted) {
  const fcc_program *p = fcc::test::fakeProgram(plain());
  Parsed r = parse(p, {"--data", "/d", "--epochs", "1", "--momentum", "0.999",
                       "--ema", "0.9999", "--cutout", "32", "--seed",
                       "18446744073709551615", "--target-acc", "1",
                       "--train-limit", "1", "--threads", "0"});
  ASSERT_EQ(r.rc, -1) << r.err;
  EXPECT_EQ(r.o.epochs, 1);
  EXPECT_EQ(r.o.cutout, 32);
  EXPECT_EQ(r.o.seed, 18446744073709551615ull);
  EXPECT_DOUBLE_EQ(*r.o.targetAcc, 1.0);
  EXPECT_EQ(r.o.trainLimit, 1);
}

TEST(Options, HelpShowsTheCompiledDefaults) {
  const fcc_program *p = fcc::test::fakeProgram(page24());
  Parsed r = parse(p, {"--help"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_EQ(r.err, "");
  for (const char *text :
       {"fake-linear.onnx", "recipe page24", "batch 32", "3x32x32",
        "--data", "--epochs", "24", "--lr-knots", "0:0,5:0.4,24:0",
        "--momentum", "0.875", "--wd", "0.256", "--label-smoothing", "0.2",
        "--ema", "0.99", "--ema-every", "--no-flip", "--no-crop", "--seed",
        "--runs", "--metrics", "--tsv", "--threads", "--quiet",
        "Exit codes"})
    EXPECT_NE(r.out.find(text), std::string::npos) << "missing: " << text;
  // -h too, even with other (bad) flags around.
  r = parse(p, {"-h"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("--lr-knots"), std::string::npos);
}

struct BadCase {
  std::vector<std::string> args;
  std::string prefix; // what the message after "trainer: error: " starts with
};

TEST(Options, BadValuesNameTheFlag) {
  TempDir dir;
  const fcc_program *p = fcc::test::fakeProgram(page24());
  const BadCase cases[] = {
      {{"--ema", "1.5"}, "--ema: must be in [0, 1) (got 1.5)"},
      {{"--ema", "1"}, "--ema: must be in [0, 1) (got 1)"},
      {{"--ema", "-0.5"}, "--ema: must be in [0, 1)"},
      {{"--ema", "abc"}, "--ema: 'abc' is not a number"},
      {{"--epochs", "0"}, "--epochs: must be between 1 and 1000000 (got 0)"},
      {{"--epochs", "-3"}, "--epochs: must be between 1 and 1000000"},
      {{"--epochs", "2.5"}, "--epochs: '2.5' is not an integer"},
      {{"--epochs", "ten"}, "--epochs: 'ten' is not an integer"},
      {{"--epochs", "99999999999999999999"}, "--epochs: "},
      {{"--lr-knots", "garbage"},
       "--lr-knots: knot 'garbage' is not EPOCH:LR"},
      {{"--lr-knots", "0:0.1,x:1"}, "--lr-knots: knot 'x:1': epoch 'x'"},
      {{"--lr-knots", "5:0,1:0.1"}, "--lr-knots: knot '1:0.1' comes after"},
      {{"--seed", "-1"}, "--seed: '-1' is not a non-negative integer"},
      {{"--seed=-1"}, "--seed: '-1' is not a non-negative integer"},
      {{"--seed", "x"}, "--seed: 'x' is not a non-negative integer"},
      {{"--seed", "18446744073709551616"}, "--seed: "},
      {{"--momentum", "1"}, "--momentum: must be in [0, 1) (got 1)"},
      {{"--momentum=-0.1"}, "--momentum: must be in [0, 1)"},
      {{"--wd=-1"}, "--wd: must not be negative (got -1)"},
      {{"--wd", "inf"}, "--wd: 'inf' is not finite"},
      {{"--wd", "nan"}, "--wd: 'nan' is not finite"},
      {{"--label-smoothing", "1"}, "--label-smoothing: must be in [0, 1)"},
      {{"--ema-every", "0"}, "--ema-every: must be between 1 and 1000000 (got 0)"},
      {{"--cutout", "33"}, "--cutout: must be between 0 (off) and the image "
                           "size 32 (got 33)"},
      {{"--cutout=-1"}, "--cutout: must be between 0"},
      {{"--train-limit", "0"}, "--train-limit: must be at least 1 (got 0)"},
      {{"--test-limit", "0"}, "--test-limit: must be at least 1 (got 0)"},
      {{"--test-limit", "1x"}, "--test-limit: '1x' is not an integer"},
      {{"--runs", "0"}, "--runs: must be between 1 and 100000 (got 0)"},
      {{"--target-acc", "1.5"}, "--target-acc: must be a fraction in [0, 1]"},
      {{"--target-acc", "94"}, "--target-acc: must be a fraction"},
      {{"--threads=-1"}, "--threads: must be 0 (all cores) or a positive"},
      {{"--metrics", dir.file("no/such/dir/m.jsonl")},
       "--metrics: cannot open '" + dir.file("no/such/dir/m.jsonl") + "'"},
      {{"--tsv", dir.path()}, "--tsv: cannot open '" + dir.path() + "'"},
      {{"--metrics", ""}, "--metrics: empty file name"},
  };
  for (const BadCase &c : cases) {
    std::vector<std::string> args = {"--data", "/d"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    Parsed r = parse(p, args);
    std::string shown;
    for (const std::string &a : c.args)
      shown += a + " ";
    EXPECT_EQ(r.rc, 1) << shown;
    EXPECT_EQ(r.out, "") << shown;
    const std::string head = "trainer: error: ";
    EXPECT_EQ(r.err.compare(0, head.size() + c.prefix.size(),
                            head + c.prefix),
              0)
        << shown << "gave: " << r.err;
  }
}

TEST(Options, MissingData) {
  const fcc_program *p = fcc::test::fakeProgram(page24());
  Parsed r = parse(p, {"--epochs", "2"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_EQ(r.err.rfind("trainer: error: --data: required", 0), 0u) << r.err;
  r = parse(p, {});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--data"), std::string::npos) << r.err;
}

TEST(Options, CommandLineErrorsNameTheArgument) {
  const fcc_program *p = fcc::test::fakeProgram(page24());
  struct Case {
    std::vector<std::string> args;
    const char *named;
  } cases[] = {
      {{"--data", "/d", "--bogus"}, "--bogus"},
      {{"--data", "/d", "--bogus=3"}, "--bogus"},
      {{"--data", "/d", "stray"}, "stray"},
      {{"--data", "/d", "--epochs"}, "--epochs"},
      {{"--data"}, "--data"},
      {{"--data", "/d", "--quiet=maybe"}, "--quiet"},
  };
  for (const Case &c : cases) {
    Parsed r = parse(p, c.args);
    EXPECT_EQ(r.rc, 1) << c.named;
    EXPECT_EQ(r.err.rfind("trainer: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(c.named), std::string::npos)
        << "'" << c.named << "' not named in: " << r.err;
  }
}

TEST(Options, BadCompiledDefaultSchedule) {
  FakeConfig c = page24();
  c.defaults.lr_knots = "oops";
  const fcc_program *p = fcc::test::fakeProgram(c);
  Parsed r = parse(p, {"--data", "/d"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_EQ(r.err.rfind("trainer: error: --lr-knots: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("(the compiled default)"), std::string::npos) << r.err;
  // Overriding it on the command line fixes it.
  r = parse(p, {"--data", "/d", "--lr-knots", "0:0.1"});
  EXPECT_EQ(r.rc, -1) << r.err;
}

} // namespace
