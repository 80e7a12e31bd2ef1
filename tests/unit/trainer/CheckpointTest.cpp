//===- CheckpointTest.cpp - Checkpoints: the format, resume, signals ------===//
//
// The file format (round trip; torn, corrupt, foreign and other-version
// files are refused with clear messages; atomic writes keep the newest two)
// and, in process with the fake program (FakeProgram.h), that a run stopped
// after K steps (--debug-stop-after-steps, or a real SIGTERM raised from
// inside a step) and resumed ends with exactly the parameters, momentum, EMA
// and metrics (times aside) of an uninterrupted run with the same seed, both
// mid-epoch and at epoch boundaries.
//
//===----------------------------------------------------------------------===//
#include "Checkpoint.h"
#include "Trainer.h"

#include "FakeProgram.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <tuple>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace fcc::trainer;
using fcc::test::FakeConfig;
using fcc::test::fakeProgram;
using fcc::test::TempDir;

namespace {

//===- The format ----------------------------------------------------------===//

Checkpoint sample() {
  Checkpoint c;
  c.planHash = 0xfeedbeef12345678ull;
  c.target = "cpu";
  c.precision = "fp16";
  c.batch = 64;
  c.seed = 7;
  c.run = 1;
  c.epoch = 3;
  c.stepInEpoch = 5;
  c.step = 35;
  c.trainImages = 1000;
  c.lossScale = 32768;
  c.cleanSteps = 17;
  c.sums[0] = 123.25;
  c.sums[1] = 40;
  c.sums[2] = 1;
  c.epochTime = 0.5;
  c.totalTime = 2.5;
  c.summaryEpochs = 2;
  c.testAcc = 0.375;
  c.testLoss = 1.5;
  c.trainTime = 2.0;
  c.summaryTrainImages = 1920;
  c.targetEpoch = 2;
  c.targetTime = 1.75;
  c.settings = "seed 7, epochs 4";
  for (int i = 0; i < 3; ++i) {
    CheckpointTensor t;
    t.name = "layer" + std::to_string(i) + ".weight";
    t.kind = CheckpointTensor::Kind(i);
    t.index = uint32_t(i / 2);
    for (int k = 0; k < 10 + i; ++k)
      t.values.push_back(float(k) * 0.25f - float(i));
    c.tensors.push_back(t);
  }
  return c;
}

std::string messageOf(const std::vector<uint8_t> &bytes) {
  try {
    parseCheckpoint(bytes, "F");
  } catch (const CheckpointError &e) {
    return e.what();
  }
  return "(accepted)";
}

bool contains(const std::string &s, const std::string &part) {
  return s.find(part) != std::string::npos;
}

TEST(CheckpointFormat, RoundTrip) {
  Checkpoint c = sample();
  std::vector<uint8_t> bytes = serialiseCheckpoint(c);
  ASSERT_EQ(std::string(reinterpret_cast<const char *>(bytes.data())),
            "FCCCKPT");
  Checkpoint d = parseCheckpoint(bytes, "F");
  EXPECT_EQ(d.planHash, c.planHash);
  EXPECT_EQ(d.target, "cpu");
  EXPECT_EQ(d.precision, "fp16");
  EXPECT_EQ(d.batch, 64);
  EXPECT_EQ(d.seed, 7u);
  EXPECT_EQ(d.run, 1);
  EXPECT_EQ(d.epoch, 3);
  EXPECT_EQ(d.stepInEpoch, 5);
  EXPECT_EQ(d.step, 35);
  EXPECT_EQ(d.trainImages, 1000);
  EXPECT_EQ(d.lossScale, 32768);
  EXPECT_EQ(d.cleanSteps, 17);
  for (int k = 0; k < FCC_NUM_METRICS; ++k)
    EXPECT_EQ(d.sums[k], c.sums[k]);
  EXPECT_EQ(d.epochTime, 0.5);
  EXPECT_EQ(d.totalTime, 2.5);
  EXPECT_EQ(d.summaryEpochs, 2);
  EXPECT_EQ(d.testAcc, 0.375);
  EXPECT_EQ(d.testLoss, 1.5);
  EXPECT_EQ(d.trainTime, 2.0);
  EXPECT_EQ(d.summaryTrainImages, 1920);
  EXPECT_EQ(d.targetEpoch, 2);
  EXPECT_EQ(d.targetTime, 1.75);
  EXPECT_EQ(d.settings, c.settings);
  ASSERT_EQ(d.tensors.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(d.tensors[i].name, c.tensors[i].name);
    EXPECT_EQ(d.tensors[i].kind, c.tensors[i].kind);
    EXPECT_EQ(d.tensors[i].index, c.tensors[i].index);
    EXPECT_EQ(d.tensors[i].values, c.tensors[i].values);
  }
  // The payload offset and size at byte 16 point at the raw tensors, and the
  // last 8 bytes are the FNV-1a 64 of the rest.
  uint64_t offset, size, sum;
  std::memcpy(&offset, bytes.data() + 16, 8);
  std::memcpy(&size, bytes.data() + 24, 8);
  std::memcpy(&sum, bytes.data() + bytes.size() - 8, 8);
  EXPECT_EQ(size, (10 + 11 + 12) * sizeof(float));
  EXPECT_EQ(offset + size + 8, bytes.size());
  float first;
  std::memcpy(&first, bytes.data() + offset + 4, 4);
  EXPECT_EQ(first, 0.25f);
  EXPECT_EQ(sum, fnv1a64(bytes.data(), bytes.size() - 8));
  EXPECT_EQ(fnv1a64(reinterpret_cast<const uint8_t *>("a"), 1),
            0xaf63dc4c8601ec8cull); // the published FNV-1a 64 of "a"
}

TEST(CheckpointFormat, TornFilesAreRefused) {
  std::vector<uint8_t> bytes = serialiseCheckpoint(sample());
  for (size_t keep : {bytes.size() - 1, bytes.size() - 8, bytes.size() / 2,
                      size_t(41), size_t(20)}) {
    std::vector<uint8_t> torn(bytes.begin(), bytes.begin() + long(keep));
    EXPECT_TRUE(contains(messageOf(torn),
                         "F: checksum mismatch: the file is torn or corrupt"))
        << keep << ": " << messageOf(torn);
  }
  EXPECT_TRUE(contains(messageOf({}), "not an fcc checkpoint"));
}

TEST(CheckpointFormat, FlippedBytesAreRefused) {
  std::vector<uint8_t> bytes = serialiseCheckpoint(sample());
  ASSERT_EQ(messageOf(bytes), "(accepted)");
  for (size_t at = 12; at < bytes.size(); ++at) {
    std::vector<uint8_t> bad = bytes;
    bad[at] ^= 0x10;
    EXPECT_EQ(messageOf(bad), "F: checksum mismatch: the file is torn or "
                              "corrupt")
        << "byte " << at;
  }
}

TEST(CheckpointFormat, OtherVersionsAndFilesAreRefused) {
  std::vector<uint8_t> bytes = serialiseCheckpoint(sample());
  std::vector<uint8_t> v2 = bytes;
  v2[8] = 2;
  EXPECT_EQ(messageOf(v2), "F: checkpoint format version 2, but this trainer "
                           "reads version 1");
  std::vector<uint8_t> other = bytes;
  other[0] = 'X';
  EXPECT_EQ(messageOf(other), "F: not an fcc checkpoint (no FCCCKPT header)");
}

TEST(CheckpointFiles, AtomicWritesKeepTheNewestTwo) {
  TempDir dir;
  Checkpoint c = sample();
  for (int64_t step : {5, 100, 10}) { // out of order: 5 goes, 10 stays
    c.step = step;
    std::string path = writeCheckpoint(dir.path(), c);
    EXPECT_EQ(path, checkpointPath(dir.path(), step));
  }
  std::vector<std::string> names;
  for (const auto &e : std::filesystem::directory_iterator(dir.path()))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"checkpoint-000010.fcc",
                                             "checkpoint-000100.fcc"}));
  EXPECT_EQ(listCheckpoints(dir.path()),
            (std::vector<std::string>{checkpointPath(dir.path(), 100),
                                      checkpointPath(dir.path(), 10)}));
  Checkpoint d = readCheckpoint(checkpointPath(dir.path(), 100));
  EXPECT_EQ(d.step, 100);
  EXPECT_EQ(d.tensors[2].values, c.tensors[2].values);
}

//===- Resume, in process with the fake program ---------------------------===//

constexpr int64_t kImage = 3 * 32 * 32, kPlane = 32 * 32;
constexpr int kTrain = 512, kTest = 100; // 16 steps of 32 per epoch

std::vector<uint8_t> cifarSplit(int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> noise(-30, 30), label(0, 3);
  std::vector<uint8_t> bytes;
  for (int i = 0; i < count; ++i) {
    int l = label(rng);
    bytes.push_back(uint8_t(l));
    for (int c = 0; c < 3; ++c) {
      int level = l == 3 ? 125 : l == c ? 190 : 60;
      for (int64_t k = 0; k < kPlane; ++k)
        bytes.push_back(uint8_t(std::clamp(level + noise(rng), 0, 255)));
    }
  }
  return bytes;
}

const std::string &dataDir() {
  static TempDir dir;
  static bool written = false;
  if (!written) {
    fcc::test::writeBytes(dir.file("data_batch_1.bin"), cifarSplit(kTrain, 1));
    fcc::test::writeBytes(dir.file("test_batch.bin"), cifarSplit(kTest, 2));
    written = true;
  }
  static_assert(kImage == 3072);
  return dir.path();
}

struct Result {
  int rc = -1;
  std::string out, err;
};

Result runTrainer(const fcc_program *p, std::vector<std::string> args) {
  std::vector<std::string> all = {"/opt/bin/fake-trainer", "--data",
                                  dataDir(), "--threads", "1"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char *> argv;
  for (std::string &s : all)
    argv.push_back(s.data());
  argv.push_back(nullptr);
  std::ostringstream out, err;
  Result r;
  r.rc = run(p, int(all.size()), argv.data(), out, err, false);
  r.out = out.str();
  r.err = err.str();
  return r;
}

// The fake with augmentation on (so that the RNG matters) and EMA every 3
// steps (so that the EMA phase matters): 3 epochs of 16 steps.
const fcc_program *program() {
  FakeConfig c;
  c.defaults.flip = 1;
  c.defaults.crop_pad = 4;
  c.defaults.cutout = 8;
  c.defaults.epochs = 3;
  c.defaults.lr_knots = "0:0.0002,3:0";
  c.defaults.ema_decay = 0.9f;
  c.defaults.ema_every = 3;
  return fakeProgram(c);
}

// The metrics lines without the wall-clock fields.
std::vector<std::string> metricsLines(const std::string &path) {
  std::vector<std::string> out;
  std::istringstream in(fcc::test::readText(path));
  for (std::string line; std::getline(in, line);) {
    std::string kept;
    std::istringstream fields(line);
    for (std::string f; std::getline(fields, f, ',');)
      if (!contains(f, "time_s") && !contains(f, "images_per_s"))
        kept += f + ",";
    out.push_back(kept);
  }
  return out;
}

// The final checkpoint of a finished run in dir.
Checkpoint finalCheckpoint(const std::string &dir) {
  std::vector<std::string> files = listCheckpoints(dir);
  EXPECT_FALSE(files.empty()) << dir;
  return files.empty() ? Checkpoint() : readCheckpoint(files.front());
}

void expectSameState(const Checkpoint &a, const Checkpoint &b) {
  EXPECT_EQ(a.epoch, 4);
  EXPECT_EQ(b.epoch, 4);
  EXPECT_EQ(a.step, 48);
  EXPECT_EQ(b.step, 48);
  ASSERT_EQ(a.tensors.size(), 6u); // weight, bias x param, momentum, EMA
  ASSERT_EQ(b.tensors.size(), 6u);
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].name, b.tensors[i].name);
    EXPECT_EQ(a.tensors[i].kind, b.tensors[i].kind);
    EXPECT_TRUE(a.tensors[i].values == b.tensors[i].values)
        << "tensor " << i << " (" << a.tensors[i].name << ", kind "
        << int(a.tensors[i].kind) << ") differs";
  }
  EXPECT_EQ(a.testAcc, b.testAcc);
  EXPECT_EQ(a.testLoss, b.testLoss);
  EXPECT_EQ(a.summaryTrainImages, b.summaryTrainImages);
}

struct Reference {
  TempDir dir;
  Checkpoint last;
  std::vector<std::string> metrics;
  std::string summary;
};

// The uninterrupted run, once.
const Reference &reference() {
  static Reference *ref = nullptr;
  if (!ref) {
    ref = new Reference;
    Result r = runTrainer(program(),
                          {"--seed", "5", "--checkpoint-dir",
                           ref->dir.file("ckpt"), "--metrics",
                           ref->dir.file("m.jsonl")});
    EXPECT_EQ(r.rc, kExitOk) << r.err;
    ref->last = finalCheckpoint(ref->dir.file("ckpt"));
    ref->metrics = metricsLines(ref->dir.file("m.jsonl"));
    EXPECT_EQ(ref->metrics.size(), 3u);
    EXPECT_TRUE(contains(r.out, "checkpoint " + ref->dir.file("ckpt") +
                                    "/checkpoint-000048.fcc"))
        << r.out;
    ref->summary = r.out.substr(r.out.rfind("run 1 (seed 5): "));
    ref->summary = ref->summary.substr(0, ref->summary.find(';'));
  }
  return *ref;
}

// Stops after `steps`, resumes, compares with the uninterrupted run.
void interruptAndResume(int64_t steps, std::vector<std::string> more,
                        const std::string &expectStopped) {
  TempDir dir;
  std::string ckpt = dir.file("ckpt"), m = dir.file("m.jsonl");
  std::vector<std::string> args = {"--seed", "5", "--checkpoint-dir", ckpt,
                                   "--metrics", m};
  args.insert(args.end(), more.begin(), more.end());
  std::vector<std::string> first = args;
  first.push_back("--debug-stop-after-steps");
  first.push_back(std::to_string(steps));
  Result a = runTrainer(program(), first);
  ASSERT_EQ(a.rc, kExitInterrupted) << a.err;
  EXPECT_TRUE(contains(a.err, expectStopped)) << a.err;
  EXPECT_TRUE(contains(a.err, "checkpoint written to " +
                                  checkpointPath(ckpt, steps) +
                                  "; continue with --resume"))
      << a.err;
  // The seed of the checkpoint wins over --seed.
  std::vector<std::string> second = args;
  second[1] = "0";
  second.push_back("--resume");
  Result b = runTrainer(program(), second);
  ASSERT_EQ(b.rc, kExitOk) << b.err;
  EXPECT_EQ(b.err, "");
  EXPECT_TRUE(contains(b.out, "resume    " + checkpointPath(ckpt, steps)))
      << b.out;
  EXPECT_TRUE(contains(b.out, reference().summary)) << b.out;
  expectSameState(reference().last, finalCheckpoint(ckpt));
  EXPECT_EQ(metricsLines(m), reference().metrics);
}

TEST(CheckpointResume, MidEpochIsBitIdentical) {
  interruptAndResume(21, {}, "stopped by --debug-stop-after-steps after "
                             "step 21 (epoch 2, step 5 of the epoch)");
}

TEST(CheckpointResume, AfterTheLastStepOfAnEpochIsBitIdentical) {
  // Stopped before the epoch's evaluation: the resumed run evaluates it.
  interruptAndResume(32, {"--checkpoint-every", "7"},
                     "after step 32 (epoch 2, step 16 of the epoch)");
}

TEST(CheckpointResume, FromAnEpochCheckpointIsBitIdentical) {
  TempDir dir;
  std::string ckpt = dir.file("ckpt"), m = dir.file("m.jsonl");
  std::vector<std::string> args = {"--seed",   "5",  "--checkpoint-dir",
                                   ckpt,       "--metrics", m,
                                   "--checkpoint-every", "1ep"};
  std::vector<std::string> first = args;
  first.insert(first.end(), {"--debug-stop-after-steps", "40"});
  Result a = runTrainer(program(), first);
  ASSERT_EQ(a.rc, kExitInterrupted) << a.err;
  // Epoch checkpoints at 16 and 32 steps and the stop at 40; two kept.
  EXPECT_EQ(listCheckpoints(ckpt),
            (std::vector<std::string>{checkpointPath(ckpt, 40),
                                      checkpointPath(ckpt, 32)}));
  Checkpoint epoch = readCheckpoint(checkpointPath(ckpt, 32));
  EXPECT_EQ(epoch.epoch, 3);
  EXPECT_EQ(epoch.stepInEpoch, 0);
  // A torn newest checkpoint: warned about, the older one is used.
  std::filesystem::resize_file(checkpointPath(ckpt, 40), 100);
  std::vector<std::string> second = args;
  second.push_back("--resume");
  Result b = runTrainer(program(), second);
  ASSERT_EQ(b.rc, kExitOk) << b.err;
  EXPECT_TRUE(contains(b.err, "warning: " + checkpointPath(ckpt, 40) +
                                  ": checksum mismatch: the file is torn or "
                                  "corrupt; trying an older checkpoint"))
      << b.err;
  EXPECT_TRUE(contains(b.out, "resume    " + checkpointPath(ckpt, 32)))
      << b.out;
  expectSameState(reference().last, finalCheckpoint(ckpt));
  // Epochs 1 and 2 from the first process, 3 appended by the second.
  EXPECT_EQ(metricsLines(m), reference().metrics);
}

// A real SIGTERM, raised from inside step 10 (the handler only sets a flag;
// the step finishes, then the trainer checkpoints and exits 143).
fcc_program gRaising;
void (*gTrainStep)(float *const *, float *const *, const float *,
                   const int32_t *, const fcc_hyper *, float *,
                   float *const *);
int gSteps = 0;
void raisingTrainStep(float *const *params, float *const *momentum,
                      const float *images, const int32_t *labels,
                      const fcc_hyper *hyper, float *metrics,
                      float *const *comm) {
  if (++gSteps == 10)
    std::raise(SIGTERM);
  gTrainStep(params, momentum, images, labels, hyper, metrics, comm);
}

TEST(CheckpointResume, SigtermCheckpointsAndResumesBitIdentical) {
  TempDir dir;
  std::string ckpt = dir.file("ckpt");
  gRaising = *program();
  gTrainStep = gRaising.train_step;
  gRaising.train_step = raisingTrainStep;
  gSteps = 0;
  Result a = runTrainer(&gRaising, {"--seed", "5", "--checkpoint-dir", ckpt});
  ASSERT_EQ(a.rc, kExitTerminated) << a.err;
  EXPECT_TRUE(contains(a.err, "stopped by SIGTERM after step 10 (epoch 1, "
                              "step 10 of the epoch); checkpoint written to " +
                                  checkpointPath(ckpt, 10)))
      << a.err;
  EXPECT_EQ(gSteps, 10);
  // The handler is gone after run(): the default action is back.
  struct sigaction now;
  sigaction(SIGTERM, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_DFL);
  Result b = runTrainer(program(),
                        {"--seed", "5", "--checkpoint-dir", ckpt, "--resume"});
  ASSERT_EQ(b.rc, kExitOk) << b.err;
  expectSameState(reference().last, finalCheckpoint(ckpt));
}

TEST(CheckpointResume, StopWithoutADirectorySaysNothingWasSaved) {
  Result a = runTrainer(program(), {"--debug-stop-after-steps", "3"});
  EXPECT_EQ(a.rc, kExitInterrupted);
  EXPECT_TRUE(contains(a.err, "stopped by --debug-stop-after-steps after "
                              "step 3 (epoch 1, step 3 of the epoch); "
                              "nothing was saved (no --checkpoint-dir)"))
      << a.err;
}

TEST(CheckpointResume, ForeignCheckpointsAreRefused) {
  TempDir dir;
  std::string ckpt = dir.file("ckpt");
  Result a = runTrainer(program(), {"--checkpoint-dir", ckpt,
                                    "--debug-stop-after-steps", "2"});
  ASSERT_EQ(a.rc, kExitInterrupted) << a.err;
  fcc_program other = *program();
  other.plan_hash = 0xabcdef;
  Result b = runTrainer(&other, {"--checkpoint-dir", ckpt, "--resume"});
  EXPECT_EQ(b.rc, kExitUsage);
  EXPECT_TRUE(contains(b.err, "--resume: checkpoint " +
                                  checkpointPath(ckpt, 2) +
                                  " was written by a different compiled "
                                  "model (plan 0x0000000000001234"))
      << b.err;
  EXPECT_TRUE(contains(b.err, "vs plan 0x0000000000abcdef")) << b.err;
  // EMA off now, on in the checkpoint.
  Result c = runTrainer(program(),
                        {"--checkpoint-dir", ckpt, "--resume", "--ema", "0"});
  EXPECT_EQ(c.rc, kExitUsage);
  EXPECT_TRUE(contains(c.err, "has EMA weights but --ema is off here"))
      << c.err;
  // A corrupt only checkpoint.
  std::filesystem::resize_file(checkpointPath(ckpt, 2), 64);
  Result d = runTrainer(program(), {"--checkpoint-dir", ckpt, "--resume"});
  EXPECT_EQ(d.rc, kExitUsage);
  EXPECT_TRUE(contains(d.err, "--resume: no valid checkpoint in '" + ckpt +
                                  "': " + checkpointPath(ckpt, 2) +
                                  ": checksum mismatch"))
      << d.err;
  // None at all.
  TempDir empty;
  Result e =
      runTrainer(program(), {"--checkpoint-dir", empty.path(), "--resume"});
  EXPECT_EQ(e.rc, kExitUsage);
  EXPECT_TRUE(contains(e.err, "--resume: no checkpoint")) << e.err;
}

TEST(CheckpointResume, DivergenceWritesNoCheckpoint) {
  FakeConfig c;
  c.nanLoss = true;
  TempDir dir;
  Result r = runTrainer(fakeProgram(c),
                        {"--checkpoint-dir", dir.file("ckpt"),
                         "--checkpoint-every", "1"});
  EXPECT_EQ(r.rc, kExitDiverged);
  EXPECT_TRUE(contains(r.err, "is not finite; lower the learning rate "
                              "(--lr-knots); no checkpoint was written "
                              "before"))
      << r.err;
  EXPECT_TRUE(listCheckpoints(dir.file("ckpt")).empty());
}

TEST(CheckpointOptions, BadValuesNameTheFlag) {
  const fcc_program *p = program();
  TempDir dir;
  for (const char *bad : {"0", "-3", "abc", "2x", "e", "1.5e"}) {
    Result r = runTrainer(
        p, {"--checkpoint-dir", dir.path(), "--checkpoint-every", bad});
    EXPECT_EQ(r.rc, kExitUsage) << bad;
    EXPECT_TRUE(contains(r.err, "error: --checkpoint-every: must be a "
                                "positive number of steps"))
        << bad << ": " << r.err;
  }
  Result r = runTrainer(p, {"--checkpoint-every", "5"});
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, "--checkpoint-every: needs --checkpoint-dir"));
  r = runTrainer(p, {"--resume"});
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, "--resume: needs --checkpoint-dir"));
  r = runTrainer(p, {"--checkpoint-dir", dir.path(), "--runs", "2"});
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, "--checkpoint-dir: not supported with --runs"));
  r = runTrainer(p, {"--debug-stop-after-steps", "0"});
  EXPECT_EQ(r.rc, kExitUsage);
  EXPECT_TRUE(contains(r.err, "--debug-stop-after-steps: must be"));
}

//===- Delta checkpoints: the format ---------------------------------------===//

// A base and a trained-on state of two tensors (a 2-D weight and a 1-D
// vector; momentum too, which deltas leave out): entries change by random
// amounts, with ties, some do not change at all, and +0 becomes -0.
struct DeltaPair {
  Checkpoint base, current;
};

DeltaPair deltaPair(int64_t n = 5000, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> value(0.0f, 1.0f);
  std::uniform_int_distribution<int> what(0, 9), level(-40, 40);
  DeltaPair p;
  p.base = sample();
  p.base.tensors.clear();
  p.base.step = 100;
  p.base.epoch = 2;
  p.base.stepInEpoch = 0;
  for (auto [name, kind, index, numel] :
       {std::tuple<const char *, CheckpointTensor::Kind, uint32_t, int64_t>{
            "conv.weight", CheckpointTensor::kParam, 0, n},
        {"conv.weight", CheckpointTensor::kMomentum, 0, n},
        {"bn.running_var", CheckpointTensor::kParam, 1, 16},
        {"conv.weight", CheckpointTensor::kEma, 0, n}}) {
    CheckpointTensor t;
    t.name = name;
    t.kind = kind;
    t.index = index;
    for (int64_t i = 0; i < numel; ++i)
      t.values.push_back(value(rng));
    p.base.tensors.push_back(t);
  }
  p.base.tensors[0].values[7] = 0.0f;
  p.current = p.base;
  p.current.step = 130;
  p.current.epoch = 2;
  p.current.stepInEpoch = 30;
  p.current.sums[0] = 77.5;
  for (CheckpointTensor &t : p.current.tensors)
    for (float &v : t.values) {
      int w = what(rng);
      if (w < 2)
        continue;                   // unchanged
      if (w < 5)
        v += float(level(rng)) / 64; // coarse steps: many ties
      else
        v += value(rng) * 0.01f;
    }
  p.current.tensors[0].values[7] = -0.0f; // changed bits, |change| 0
  // The file a base was read from carries its checksum.
  p.base = parseCheckpoint(serialiseCheckpoint(p.base), "base");
  return p;
}

Delta roundTrip(const Delta &d) {
  return parseDelta(serialiseDelta(d), "D");
}

const CheckpointTensor &tensorOf(const Checkpoint &c, CheckpointTensor::Kind k,
                                 uint32_t index) {
  for (const CheckpointTensor &t : c.tensors)
    if (t.kind == k && t.index == index)
      return t;
  throw std::runtime_error("no such tensor");
}

bool bitEqual(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(DeltaFormat, SpecsParseAndPrint) {
  EXPECT_FALSE(DeltaSpec::parse("full").delta());
  DeltaSpec t = DeltaSpec::parse("delta:topk:0.01");
  EXPECT_EQ(t.mode, DeltaSpec::kTopK);
  EXPECT_EQ(t.value, 0.01);
  EXPECT_FALSE(t.q8);
  EXPECT_EQ(t.toString(), "delta:topk:0.01");
  DeltaSpec v = DeltaSpec::parse("delta:threshold:1e-3:q8");
  EXPECT_EQ(v.mode, DeltaSpec::kThreshold);
  EXPECT_EQ(v.value, 1e-3);
  EXPECT_TRUE(v.q8);
  EXPECT_EQ(DeltaSpec::parse(v.toString()).toString(), v.toString());
  EXPECT_EQ(DeltaSpec::parse("delta:topk:1").topK(10), 10);
  EXPECT_EQ(DeltaSpec::parse("delta:topk:0.07").topK(100), 7);
  EXPECT_EQ(DeltaSpec::parse("delta:topk:0.0001").topK(100), 1);
  auto why = [](const std::string &text) {
    try {
      DeltaSpec::parse(text);
    } catch (const std::invalid_argument &e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_TRUE(contains(why("delta:topk:0"), "must be in (0, 1] (got 0)"));
  EXPECT_TRUE(contains(why("delta:topk:2"), "must be in (0, 1] (got 2)"));
  EXPECT_TRUE(contains(why("delta:topk:-0.5"), "must be in (0, 1]"));
  EXPECT_TRUE(contains(why("delta:threshold:-1"), "must be >= 0 (got -1)"));
  EXPECT_TRUE(contains(why("delta:topk:abc"), "'abc' in 'delta:topk:abc' is "
                                              "not a finite number"));
  EXPECT_TRUE(contains(why("delta:topk:inf"), "not a finite number"));
  for (const char *bad : {"sparse", "delta", "delta:topk", "delta:randomk:0.1",
                          "delta:topk:0.1:q4", "full:q8", "topk:0.1",
                          "delta:topk:0.1:q8:x", ""})
    EXPECT_TRUE(contains(why(bad), "is not full, delta:topk:K (0 < K <= 1) "
                                   "or delta:threshold:V (V >= 0), "
                                   "optionally followed by :q8"))
        << bad << ": " << why(bad);
}

TEST(DeltaFormat, KOfOneAndThresholdZeroRestoreExactly) {
  DeltaPair p = deltaPair();
  for (const char *spec : {"delta:topk:1", "delta:threshold:0"}) {
    Delta d = roundTrip(makeDelta(p.base, "checkpoint-000100.fcc", p.current,
                                  DeltaSpec::parse(spec)));
    EXPECT_EQ(d.baseName, "checkpoint-000100.fcc");
    EXPECT_EQ(d.baseStep, 100);
    EXPECT_EQ(d.baseChecksum, p.base.checksum);
    ASSERT_EQ(d.tensors.size(), 3u) << "param, param, EMA; no momentum";
    Checkpoint restored = p.base;
    applyDelta(restored, d, "D");
    for (auto [kind, index] :
         {std::pair{CheckpointTensor::kParam, 0u},
          std::pair{CheckpointTensor::kParam, 1u},
          std::pair{CheckpointTensor::kEma, 0u}})
      EXPECT_TRUE(bitEqual(tensorOf(restored, kind, index).values,
                           tensorOf(p.current, kind, index).values))
          << spec << " kind " << int(kind) << " index " << index;
    EXPECT_TRUE(std::signbit(restored.tensors[0].values[7])) << spec;
    // The momentum is the base's; the position the delta's.
    EXPECT_TRUE(bitEqual(tensorOf(restored, CheckpointTensor::kMomentum, 0)
                             .values,
                         tensorOf(p.base, CheckpointTensor::kMomentum, 0)
                             .values));
    EXPECT_EQ(restored.step, 130);
    EXPECT_EQ(restored.stepInEpoch, 30);
    EXPECT_EQ(restored.sums[0], 77.5);
    EXPECT_EQ(restored.settings, p.current.settings);
  }
}

TEST(DeltaFormat, TopKSelectsExactlyTheLargestChanges) {
  DeltaPair p = deltaPair(20000, 3);
  int tiesAtTheCut = 0;
  for (double K : {0.001, 0.01, 0.1, 0.3}) {
    DeltaSpec spec = DeltaSpec::parse("delta:topk:" + std::to_string(K));
    Delta d = roundTrip(makeDelta(p.base, "b", p.current, spec));
    const std::vector<float> &cur = p.current.tensors[0].values;
    const std::vector<float> &old = p.base.tensors[0].values;
    // The reference: changed entries by |change| (in double) descending,
    // ties to the lower index.
    std::vector<uint32_t> order;
    for (uint32_t i = 0; i < cur.size(); ++i) {
      uint32_t a, b;
      std::memcpy(&a, &cur[i], 4);
      std::memcpy(&b, &old[i], 4);
      if (a != b)
        order.push_back(i);
    }
    auto mag = [&](uint32_t i) {
      return std::fabs(double(cur[i]) - double(old[i]));
    };
    std::stable_sort(order.begin(), order.end(), [&](uint32_t x, uint32_t y) {
      return mag(x) > mag(y);
    });
    size_t k = std::min(size_t(spec.topK(int64_t(cur.size()))), order.size());
    std::vector<uint32_t> want(order.begin(), order.begin() + long(k));
    std::sort(want.begin(), want.end());
    ASSERT_EQ(d.tensors[0].name, "conv.weight");
    EXPECT_NE(d.tensors[0].coding, DeltaTensor::kEvery) << K;
    EXPECT_EQ(d.tensors[0].indices, want) << K;
    tiesAtTheCut += mag(order[k - 1]) == mag(order[k]);
    // Restored: the selected entries are the current values, the others
    // the base's.
    Checkpoint restored = p.base;
    applyDelta(restored, d, "D");
    const std::vector<float> &got = restored.tensors[0].values;
    size_t j = 0;
    for (uint32_t i = 0; i < cur.size(); ++i) {
      bool selected = j < want.size() && want[j] == i;
      j += selected;
      ASSERT_EQ(got[i], selected ? cur[i] : old[i]) << K << " entry " << i;
    }
  }
  // Some cuts fall among equal changes (the coarse 1/64 steps), where the
  // lower index wins.
  EXPECT_GT(tiesAtTheCut, 0);
  // Thresholds select exactly the changes of at least V.
  DeltaSpec spec = DeltaSpec::parse("delta:threshold:0.25");
  Delta d = roundTrip(makeDelta(p.base, "b", p.current, spec));
  std::vector<uint32_t> want;
  for (uint32_t i = 0; i < p.current.tensors[0].values.size(); ++i)
    if (std::fabs(double(p.current.tensors[0].values[i]) -
                  double(p.base.tensors[0].values[i])) >= 0.25)
      want.push_back(i);
  EXPECT_FALSE(want.empty());
  EXPECT_EQ(d.tensors[0].indices, want);
}

TEST(DeltaFormat, Q8ErrorIsAtMostHalfAStep) {
  DeltaPair p = deltaPair(20000, 4);
  for (const char *text : {"delta:topk:0.05:q8", "delta:topk:1:q8",
                           "delta:threshold:0.1:q8"}) {
    DeltaSpec spec = DeltaSpec::parse(text);
    Delta d = roundTrip(makeDelta(p.base, "b", p.current, spec));
    Delta plain = makeDelta(p.base, "b", p.current,
                            DeltaSpec::parse(std::string(text).substr(
                                0, std::strlen(text) - 3)));
    Checkpoint restored = p.base;
    applyDelta(restored, d, "D");
    double worst = 0;
    for (size_t t = 0; t < d.tensors.size(); ++t) {
      const DeltaTensor &dt = d.tensors[t];
      const CheckpointTensor &cur = tensorOf(p.current, dt.kind, dt.index);
      const CheckpointTensor &old = tensorOf(p.base, dt.kind, dt.index);
      const CheckpointTensor &got = tensorOf(restored, dt.kind, dt.index);
      // The same entries as without q8 (or every entry, when that is the
      // smaller coding in 8 bits).
      if (dt.coding != DeltaTensor::kEvery)
        EXPECT_EQ(dt.indices, plain.tensors[t].indices) << text;
      double most = 0;
      for (uint32_t i : dt.indices)
        most = std::max(most, std::fabs(double(cur.values[i]) -
                                        double(old.values[i])));
      EXPECT_EQ(dt.scale, float(most / 127)) << text;
      size_t j = 0;
      for (uint32_t i = 0; i < cur.values.size(); ++i) {
        bool selected = j < dt.indices.size() && dt.indices[j] == i;
        j += selected;
        if (!selected) {
          ASSERT_EQ(got.values[i], old.values[i]);
          continue;
        }
        double err = std::fabs(double(got.values[i]) - double(cur.values[i]));
        // Half a quantisation step, plus the rounding of base + q * s.
        double bound = dt.scale * 0.5 * (1 + 1e-6) +
                       2 * std::numeric_limits<float>::epsilon() *
                           std::fabs(double(cur.values[i]));
        ASSERT_LE(err, bound) << text << " entry " << i;
        worst = std::max(worst, err);
      }
    }
    EXPECT_GT(worst, 0) << text << ": q8 should not be exact";
    // 8-bit values: the delta is smaller than the fp32 one.
    EXPECT_LT(serialiseDelta(d).size(), serialiseDelta(plain).size()) << text;
  }
}

TEST(DeltaFormat, WholeTensorsAndSizes) {
  DeltaPair p = deltaPair(20000, 5);
  Checkpoint onlyParams = p.base; // the size a full file of params would have
  DeltaSpec spec = DeltaSpec::parse("delta:topk:0.01");
  // Tensor 2 (the 16-entry vector) is stored whole.
  Delta d = makeDelta(p.base, "b", p.current, spec, {false, false, true,
                                                    false});
  size_t changed = 0;
  for (size_t i = 0; i < 16; ++i)
    changed += p.current.tensors[2].values[i] != p.base.tensors[2].values[i];
  EXPECT_GE(d.tensors[1].indices.size(), changed);
  EXPECT_EQ(d.tensors[0].indices.size(), 200u);
  size_t full = serialiseCheckpoint(p.current).size();
  size_t delta = serialiseDelta(d).size();
  // 1% of the entries at about 4 + 1-2 bytes each, against 3 x 4 bytes per
  // entry (param, momentum, EMA).
  EXPECT_LT(delta * 50, full) << delta << " vs " << full;
  DeltaSpec q8 = DeltaSpec::parse("delta:topk:0.01:q8");
  size_t small = serialiseDelta(makeDelta(p.base, "b", p.current, q8)).size();
  EXPECT_LT(double(small), 0.6 * double(delta)) << small << " vs " << delta;
}

std::string deltaMessage(const std::vector<uint8_t> &bytes) {
  try {
    parseDelta(bytes, "D");
  } catch (const CheckpointError &e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(DeltaFormat, TornAndCorruptDeltasAreRefused) {
  DeltaPair p = deltaPair(3000, 6);
  for (const char *spec : {"delta:topk:0.01", "delta:topk:0.5:q8"}) {
    std::vector<uint8_t> bytes = serialiseDelta(
        makeDelta(p.base, "b", p.current, DeltaSpec::parse(spec)));
    ASSERT_EQ(deltaMessage(bytes), "(accepted)");
    for (size_t keep : {bytes.size() - 1, bytes.size() - 8, bytes.size() / 2,
                        size_t(40), size_t(20)}) {
      std::vector<uint8_t> torn(bytes.begin(), bytes.begin() + long(keep));
      EXPECT_TRUE(contains(deltaMessage(torn),
                           "D: checksum mismatch: the file is torn or "
                           "corrupt"))
          << keep << ": " << deltaMessage(torn);
    }
    for (size_t at = 12; at < bytes.size(); at += 7) {
      std::vector<uint8_t> bad = bytes;
      bad[at] ^= 0x04;
      EXPECT_EQ(deltaMessage(bad), "D: checksum mismatch: the file is torn "
                                   "or corrupt")
          << "byte " << at;
    }
    std::vector<uint8_t> v2 = bytes;
    v2[8] = 2;
    EXPECT_EQ(deltaMessage(v2), "D: delta format version 2, but this trainer "
                                "reads version 1");
    // A full checkpoint is not a delta, and the other way round.
    EXPECT_EQ(deltaMessage(serialiseCheckpoint(p.base)),
              "D: not an fcc delta checkpoint (no FCCDELT header)");
    EXPECT_EQ(messageOf(bytes), "F: not an fcc checkpoint (no FCCCKPT "
                                "header)");
    // A well-sealed but malformed one (an index past the end).
    std::vector<uint8_t> evil = bytes;
    evil.resize(evil.size() - 8);
    evil.push_back(0);
    uint64_t sum = fnv1a64(evil.data(), evil.size());
    const uint8_t *s = reinterpret_cast<const uint8_t *>(&sum);
    evil.insert(evil.end(), s, s + 8);
    EXPECT_TRUE(contains(deltaMessage(evil), "D: malformed delta checkpoint"))
        << deltaMessage(evil);
  }
}

TEST(DeltaFormat, ADeltaAgainstTheWrongBaseIsRefused) {
  DeltaPair p = deltaPair(3000, 7);
  Delta d = makeDelta(p.base, "checkpoint-000100.fcc", p.current,
                      DeltaSpec::parse("delta:topk:0.1"));
  // Another checkpoint of the same step (another run) ...
  Checkpoint other = p.base;
  other.tensors[0].values[0] += 1;
  other = parseCheckpoint(serialiseCheckpoint(other), "other");
  try {
    applyDelta(other, d, "D");
    ADD_FAILURE() << "accepted";
  } catch (const CheckpointError &e) {
    EXPECT_TRUE(contains(e.what(), "D: taken against another base "
                                   "checkpoint: it needs "
                                   "checkpoint-000100.fcc of step 100 with "
                                   "checksum 0x"))
        << e.what();
  }
  // ... another model ...
  Checkpoint foreign = p.base;
  foreign.planHash = 1;
  try {
    applyDelta(foreign, d, "D");
    ADD_FAILURE() << "accepted";
  } catch (const CheckpointError &e) {
    EXPECT_TRUE(contains(e.what(), "D: the delta is of another compiled "
                                   "model"))
        << e.what();
  }
  // ... and through the files: the base replaced, then gone.
  TempDir dir;
  p.base.step = 100;
  WrittenFile written;
  std::string basePath = writeCheckpoint(dir.path(), p.base, 2, &written);
  EXPECT_EQ(written.checksum, p.base.checksum);
  std::string path = writeDelta(dir.path(), d);
  EXPECT_EQ(path, deltaPath(dir.path(), 130));
  std::string from;
  Checkpoint restored = restoreDelta(path, &from);
  EXPECT_EQ(from, basePath);
  EXPECT_EQ(restored.step, 130);
  other.step = 100;
  writeCheckpoint(dir.path(), other);
  try {
    restoreDelta(path);
    ADD_FAILURE() << "accepted";
  } catch (const CheckpointError &e) {
    EXPECT_TRUE(contains(e.what(), path + ": taken against another base"))
        << e.what();
  }
  std::filesystem::remove(basePath);
  try {
    restoreDelta(path);
    ADD_FAILURE() << "accepted";
  } catch (const CheckpointError &e) {
    EXPECT_TRUE(contains(e.what(), path + ": its base checkpoint " +
                                       basePath + " is missing"))
        << e.what();
  }
}

TEST(DeltaFiles, DeltasGoWithTheirBase) {
  TempDir dir;
  DeltaPair p = deltaPair(100, 8);
  DeltaSpec spec = DeltaSpec::parse("delta:topk:0.1");
  auto full = [&](int64_t step) {
    Checkpoint c = p.base;
    c.step = step;
    WrittenFile w;
    writeCheckpoint(dir.path(), c, 2, &w);
    c.checksum = w.checksum;
    return c;
  };
  auto delta = [&](const Checkpoint &base, int64_t step) {
    Checkpoint c = p.current;
    c.step = step;
    writeDelta(dir.path(), makeDelta(base, std::filesystem::path(
                                               checkpointPath("", base.step))
                                               .filename()
                                               .string(),
                                     c, spec));
  };
  Checkpoint b0 = full(0);
  delta(b0, 5);
  delta(b0, 10);
  Checkpoint b16 = full(16);
  delta(b16, 20);
  EXPECT_EQ(listDeltas(dir.path()).size(), 3u);
  full(32); // checkpoint 0 goes, and with it deltas 5 and 10
  EXPECT_EQ(listDeltas(dir.path()),
            (std::vector<std::string>{deltaPath(dir.path(), 20)}));
  EXPECT_EQ(restoreDelta(deltaPath(dir.path(), 20)).step, 20);
}

//===- Delta checkpoints in the trainer -----------------------------------===//

std::vector<float> paramsAndEma(const Checkpoint &c) {
  std::vector<float> all;
  for (const CheckpointTensor &t : c.tensors)
    if (t.kind == CheckpointTensor::kParam ||
        t.kind == CheckpointTensor::kEma)
      all.insert(all.end(), t.values.begin(), t.values.end());
  return all;
}

TEST(DeltaTrainer, DeltasRestoreTheStateTheyWereTakenOf) {
  TempDir dir;
  std::string ckpt = dir.file("ckpt");
  // K = 1: the restored weights are exactly the live ones.
  Result a = runTrainer(program(), {"--seed", "5", "--checkpoint-dir", ckpt,
                                    "--checkpoint-mode", "delta:topk:1",
                                    "--delta-every", "5"});
  ASSERT_EQ(a.rc, kExitOk) << a.err;
  EXPECT_TRUE(contains(a.out, "checkpoint " + checkpointPath(ckpt, 0) +
                                  " (the base of the first deltas)"))
      << a.out;
  EXPECT_TRUE(contains(a.out, "delta     " + deltaPath(ckpt, 5) + ": "))
      << a.out;
  EXPECT_TRUE(contains(a.out, " of the full checkpoint checkpoint-000000.fcc ("))
      << a.out;
  EXPECT_TRUE(contains(a.out, "delta     " + deltaPath(ckpt, 45) + ": "))
      << a.out;
  // The full checkpoints (16, 32, 48: every epoch) and their deltas; the
  // deltas of removed bases are gone. No delta where a full one is written.
  EXPECT_FALSE(contains(a.out, "delta-000048")) << a.out;
  EXPECT_EQ(listCheckpoints(ckpt),
            (std::vector<std::string>{checkpointPath(ckpt, 48),
                                      checkpointPath(ckpt, 32)}));
  EXPECT_EQ(listDeltas(ckpt),
            (std::vector<std::string>{deltaPath(ckpt, 45), deltaPath(ckpt, 40),
                                      deltaPath(ckpt, 35)}));
  // The reference: the same run stopped after step 45.
  std::string stop = dir.file("stop");
  Result b = runTrainer(program(), {"--seed", "5", "--checkpoint-dir", stop,
                                    "--debug-stop-after-steps", "45"});
  ASSERT_EQ(b.rc, kExitInterrupted) << b.err;
  Checkpoint live = readCheckpoint(checkpointPath(stop, 45));
  Checkpoint restored = restoreDelta(deltaPath(ckpt, 45));
  EXPECT_TRUE(bitEqual(paramsAndEma(restored), paramsAndEma(live)));
  EXPECT_EQ(restored.epoch, live.epoch);
  EXPECT_EQ(restored.stepInEpoch, live.stepInEpoch);
  EXPECT_EQ(restored.step, 45);
  for (int k = 0; k < FCC_NUM_METRICS; ++k)
    EXPECT_EQ(restored.sums[k], live.sums[k]);
  // --eval-only on both gives the same accuracy.
  Result c = runTrainer(program(), {"--restore-delta", deltaPath(ckpt, 45),
                                    "--eval-only"});
  ASSERT_EQ(c.rc, kExitOk) << c.err;
  EXPECT_EQ(c.err, "");
  EXPECT_TRUE(contains(c.out, "restore   " + deltaPath(ckpt, 45) +
                                  " on its base " + checkpointPath(ckpt, 32) +
                                  ": epoch 3, step 45 of the run (13 into "
                                  "the epoch)"))
      << c.out;
  Result d = runTrainer(program(), {"--checkpoint-dir", stop, "--resume",
                                    "--eval-only"});
  ASSERT_EQ(d.rc, kExitOk) << d.err;
  auto accuracy = [](const std::string &out) {
    size_t at = out.find("(EMA weights): test loss ");
    return at == std::string::npos ? std::string("none") : out.substr(at);
  };
  EXPECT_NE(accuracy(c.out), "none") << c.out;
  EXPECT_EQ(accuracy(c.out), accuracy(d.out)) << c.out << d.out;
  EXPECT_TRUE(fcc::test::fakeLog().hypers.empty()); // no training step
  // Training on from a delta works, with a warning.
  Result e = runTrainer(program(), {"--restore-delta", deltaPath(ckpt, 40)});
  EXPECT_EQ(e.rc, kExitOk) << e.err;
  EXPECT_TRUE(contains(e.err, "warning: training on from a delta checkpoint "
                              "is approximate: the weights are those of step "
                              "40 as far as the delta holds them, but the "
                              "momentum is that of the base " +
                                  checkpointPath(ckpt, 32)))
      << e.err;
  EXPECT_TRUE(contains(e.out, "run 1 (seed 5): test acc")) << e.out;
}

TEST(DeltaTrainer, SmallDeltasAreSmall) {
  TempDir dir;
  std::string ckpt = dir.file("ckpt");
  Result a = runTrainer(program(), {"--checkpoint-dir", ckpt,
                                    "--checkpoint-every", "3e",
                                    "--checkpoint-mode",
                                    "delta:topk:0.01:q8", "--delta-every",
                                    "1e"});
  ASSERT_EQ(a.rc, kExitOk) << a.err;
  // Epoch deltas after epochs 1 and 2 (steps 16, 32) against step 0.
  EXPECT_EQ(listDeltas(ckpt),
            (std::vector<std::string>{deltaPath(ckpt, 32),
                                      deltaPath(ckpt, 16)}));
  uint64_t full = std::filesystem::file_size(checkpointPath(ckpt, 48));
  uint64_t delta = std::filesystem::file_size(deltaPath(ckpt, 32));
  EXPECT_LT(delta * 20, full) << delta << " vs " << full;
  Delta d = readDelta(deltaPath(ckpt, 32));
  EXPECT_EQ(d.baseName, "checkpoint-000000.fcc");
  EXPECT_EQ(d.position.epoch, 3);
  EXPECT_EQ(d.position.stepInEpoch, 0);
  EXPECT_TRUE(d.spec.q8);
  // The bias (rank 1) is whole; the weight has 1% of its entries.
  ASSERT_EQ(d.tensors.size(), 4u); // weight and its EMA, bias and its EMA
  for (const DeltaTensor &t : d.tensors) {
    EXPECT_EQ(t.name, t.index == 0 ? "fc.weight" : "fc.bias");
    EXPECT_EQ(int64_t(t.indices.size()),
              t.index == 0 ? DeltaSpec::parse("delta:topk:0.01").topK(t.numel)
                           : t.numel)
        << t.name << " kind " << int(t.kind);
  }
  Result e = runTrainer(program(), {"--restore-delta", deltaPath(ckpt, 32),
                                    "--eval-only"});
  EXPECT_EQ(e.rc, kExitOk) << e.err;
  EXPECT_TRUE(contains(e.out, "eval      " + deltaPath(ckpt, 32) +
                                  " (step 32) (EMA weights): test loss "))
      << e.out;
}

TEST(DeltaTrainer, BadFlagsAreRefused) {
  const fcc_program *p = program();
  TempDir dir;
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  std::string d = dir.path();
  std::vector<Case> cases = {
      {{"--checkpoint-dir", d, "--checkpoint-mode", "delta:topk:0",
        "--delta-every", "5"},
       "error: --checkpoint-mode: the top-K fraction K of 'delta:topk:0' "
       "must be in (0, 1] (got 0)"},
      {{"--checkpoint-dir", d, "--checkpoint-mode", "delta:topk:2",
        "--delta-every", "5"},
       "must be in (0, 1] (got 2)"},
      {{"--checkpoint-dir", d, "--checkpoint-mode", "delta:threshold:-1",
        "--delta-every", "5"},
       "error: --checkpoint-mode: the threshold V of 'delta:threshold:-1' "
       "must be >= 0 (got -1)"},
      {{"--checkpoint-dir", d, "--checkpoint-mode", "sparse"},
       "error: --checkpoint-mode: 'sparse' is not full, delta:topk:K"},
      {{"--checkpoint-dir", d, "--checkpoint-mode", "delta:topk:0.1"},
       "error: --checkpoint-mode: delta:topk:0.1 needs --delta-every N|Ne"},
      {{"--checkpoint-mode", "delta:topk:0.1", "--delta-every", "5"},
       "error: --checkpoint-mode: needs --checkpoint-dir DIR"},
      {{"--checkpoint-dir", d, "--delta-every", "5"},
       "error: --delta-every: needs --checkpoint-mode delta:topk:K"},
      {{"--checkpoint-dir", d, "--checkpoint-mode", "delta:topk:0.1",
        "--delta-every", "0"},
       "error: --delta-every: must be a positive number of steps"},
      {{"--checkpoint-dir", d, "--checkpoint-mode", "delta:topk:0.1",
        "--delta-every", "2e"},
       "error: --delta-every: every delta (2e) would fall on a full "
       "checkpoint (--checkpoint-every 1e)"},
      {{"--checkpoint-dir", d, "--resume", "--restore-delta", "x"},
       "error: --restore-delta: not with --resume"},
      {{"--eval-only", "--metrics", dir.file("m")},
       "error: --eval-only: not with --metrics"},
      {{"--eval-only", "--checkpoint-dir", d},
       "error: --eval-only: writes no checkpoints"},
      {{"--export-bn", "fold"},
       "error: --export-bn: needs --export-onnx FILE"},
      {{"--export-bn", "squash"},
       "error: --export-bn: must be fold or keep (got 'squash')"},
      {{"--restore-delta", dir.file("nothing.fcc"), "--eval-only"},
       "error: --restore-delta: " + dir.file("nothing.fcc") +
           ": cannot read"},
  };
  for (const Case &c : cases) {
    Result r = runTrainer(p, c.args);
    EXPECT_EQ(r.rc, kExitUsage) << c.message;
    EXPECT_TRUE(contains(r.err, c.message)) << r.err;
  }
}

} // namespace
