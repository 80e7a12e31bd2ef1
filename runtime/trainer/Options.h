//===- Options.h - Command line of a generated trainer --------------------===//
//
// The flags of a trainer (CLI11). Their defaults come from the recipe that
// was compiled into the program (fcc_program::defaults) and are printed by
// --help. Every value is validated here; a bad one is a UsageError whose
// message starts with the flag ("--ema: must be in [0, 1) (got 1.5)").
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINER_OPTIONS_H
#define FCC_TRAINER_OPTIONS_H

#include "Checkpoint.h"
#include "Schedule.h"

#include "fcc/runtime/program.h"

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <stdexcept>
#include <string>

namespace fcc::trainer {

class UsageError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string data;
  int epochs = 1;
  std::string lrKnots;
  LrSchedule lr;
  float momentum = 0, weightDecay = 0, labelSmoothing = 0;
  bool nesterov = false;
  float ema = 0;  // per-step decay; 0 = off
  int emaEvery = 1;
  bool tta = false;
  int cutout = 0;
  bool flip = false;
  int cropPad = 0;
  uint64_t seed = 0;
  int64_t trainLimit = -1, testLimit = -1; // -1 = all images
  int runs = 1;
  std::optional<double> targetAcc;
  std::string metricsPath, tsvPath;
  int threads = 0; // 0 = the default (all cores / OMP_NUM_THREADS)
  bool quiet = false;
  // Dynamic loss scaling (programs compiled with --precision fp16).
  float lossScale = 65536.0f; // initial scale
  int lossScaleWindow = 2000; // clean steps before the scale doubles
  int64_t injectOverflow = -1; // test aid: make this step's gradients inf
  std::string dumpStep; // debug: one step on the first batch, dump params
  std::string exportOnnx; // write the trained model as ONNX at the end
  bool exportFoldBn = false; // --export-bn fold: BatchNorm into the Convs
  // GPU: cuDNN algorithm choices measured once per shape are kept here
  // ("" = measure every run). Default: $XDG_CACHE_HOME or ~/.cache.
  std::string timingCache;
  // Checkpoints (Checkpoint.h): written to checkpointDir every
  // checkpointEverySteps steps or checkpointEveryEpochs epochs (0 = not by
  // that measure) and at the end; --resume continues from the newest one.
  std::string checkpointDir;
  int64_t checkpointEverySteps = 0;
  int checkpointEveryEpochs = 0;
  bool resume = false;
  // --checkpoint-mode: full checkpoints only, or also delta checkpoints
  // every deltaEverySteps steps / deltaEveryEpochs epochs (Checkpoint.h).
  DeltaSpec checkpointMode;
  int64_t deltaEverySteps = 0;
  int deltaEveryEpochs = 0;
  // --restore-delta FILE: start from base + delta (approximate: the base's
  // momentum); --eval-only: evaluate (and export) without training.
  std::string restoreDelta;
  bool evalOnly = false;
  int64_t stopAfterSteps = -1; // test aid: act as if SIGINT came after step N
  // Data parallelism: how long a collective may wait for the other ranks
  // before the job is ended (a rank died); <= 0 waits forever.
  double commTimeout = 300;
  // Test aid (--debug-fault kill|hang:R:S): rank R dies or hangs after
  // step S, to test how the other ranks notice.
  struct Fault {
    std::string kind; // "" = none
    int64_t rank = -1, step = -1;
  } fault;
};

// Parses argv. Returns -1 when training should go on, otherwise the exit
// code to return (0 after --help, 1 after an error, which has been printed
// to `err` as "NAME: error: ..."). `name` is the trainer's name for messages.
int parseOptions(const fcc_program &program, const std::string &name,
                 int argc, char **argv, Options &options, std::ostream &out,
                 std::ostream &err);

} // namespace fcc::trainer

#endif // FCC_TRAINER_OPTIONS_H
