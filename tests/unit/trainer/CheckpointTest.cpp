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

} // namespace
