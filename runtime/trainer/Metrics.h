//===- Metrics.h - What a trainer reports: console, JSON lines, TSV -------===//
//
// The formats of everything a trainer prints or writes about training:
//  - the per-epoch console table (cifar10-fast style) and the in-place
//    progress bar (terminals only);
//  - --metrics FILE: one JSON object per line per (run, epoch) with the keys
//    run, seed, epoch, lr, train_loss, train_acc, test_loss, test_acc,
//    epoch_time_s, eval_time_s, total_time_s, train_images, test_images,
//    steps, skipped_steps, loss_scale, images_per_s;
//  - --tsv FILE: DAWNBench lines "epoch<TAB>hours<TAB>top1Accuracy" after a
//    header line of those names (hours = training time so far / 3600, 8
//    decimals; top1Accuracy = test accuracy in percent, 2 decimals), with a
//    leading "run" column when several runs share the file;
//  - the one-line run summary and the distribution over --runs.
// Times count training steps only (batch preparation included), not setup
// or evaluation, as cifar10-fast's "total time".
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINER_METRICS_H
#define FCC_TRAINER_METRICS_H

#include <chrono>
#include <cstdint>
#include <fstream>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

namespace fcc::trainer {

struct EpochRecord {
  int run = 1;             // 1-based
  uint64_t seed = 0;       // the run's seed
  int epoch = 1;           // 1-based
  double lr = 0;           // the schedule at the end of the epoch
  double trainLoss = 0, trainAcc = 0, testLoss = 0, testAcc = 0;
  double epochTime = 0;    // seconds of training in this epoch
  double evalTime = 0;     // seconds of test evaluation after it
  double totalTime = 0;    // seconds of training so far in this run
  int64_t trainImages = 0, testImages = 0, steps = 0, skippedSteps = 0;
  double lossScale = 1; // at the end of the epoch (1 without loss scaling)
  // Data parallelism (runtime/comm): ranks, and per training step the
  // payload bytes each rank handed to collectives, against the dense fp32
  // gradients; seconds compressing and communicating (rank 0's).
  int ranks = 1;
  std::vector<double> commBytesPerStep; // one entry per rank (ranks > 1)
  std::vector<double> commBytesEpoch;   // the epoch's total, per rank
  double denseBytesPerStep = 0;         // 4 x gradient elements
  double compressSeconds = 0, commSeconds = 0;
};

// "comm      rank 0: 1.23 MB/step ..." or "" on one rank.
std::string commLine(const EpochRecord &r);

// The table: header line and one row per epoch (no trailing newline).
std::string tableHeader();
std::string tableRow(const EpochRecord &r);

// One JSON object (no trailing newline); non-finite numbers are null.
std::string jsonLine(const EpochRecord &r);

// Shortest decimal text that reads back as the same double.
std::string formatShortest(double v);
// Shortest decimal text that reads back as the same float (0.9f -> "0.9").
std::string formatShortestFloat(float v);

// A one-line progress bar redrawn in place with '\r'; does nothing when
// disabled (output is not a terminal, or --quiet).
class ProgressBar {
public:
  ProgressBar(std::ostream &out, bool enabled) : out_(out), on_(enabled) {}
  // Redraws at most ~10 times a second (and always for the last step).
  void update(int epoch, int epochs, int64_t step, int64_t steps,
              double runningLoss, double imagesPerSecond);
  void clear();

private:
  std::ostream &out_;
  bool on_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
  size_t width_ = 0;
};

// --tsv: header written on open; rows appended and flushed per epoch.
// With `append` (a resumed run) the file is kept and the header is written
// only when it is empty.
class TsvWriter {
public:
  bool open(const std::string &path, bool withRunColumn, bool append = false);
  void add(const EpochRecord &r);

private:
  std::ofstream file_;
  bool withRun_ = false;
};

// --metrics: truncates the file on open (appends with `append`, for a
// resumed run); one line per epoch, flushed.
class JsonLinesWriter {
public:
  bool open(const std::string &path, bool append = false);
  void add(const EpochRecord &r);

private:
  std::ofstream file_;
};

struct RunSummary {
  int run = 1;
  uint64_t seed = 0;
  int epochs = 0;
  double testAcc = 0, testLoss = 0;
  double trainTime = 0;
  int64_t trainImages = 0;       // images trained on, all epochs
  int targetEpoch = 0;           // first epoch reaching --target-acc, or 0
  double targetTime = 0;         // training time when it did
};

// "run 1 (seed 0): test acc 0.4120, test loss 1.7234; 3 epochs, 1.23 s of
// training (setup and evaluation excluded), 2417 images/s[; first reached
// 0.40 at epoch 2 after 0.82 s | ; did not reach 0.94]".
std::string runSummaryLine(const RunSummary &s,
                           std::optional<double> targetAcc);

// Lines for --runs N > 1: min/median/mean/max final test accuracy and the
// fraction of runs whose final test accuracy is at least --target-acc.
std::string distributionSummary(const std::vector<RunSummary> &runs,
                                std::optional<double> targetAcc);

// Median of v (mean of the two middle values for an even count).
double median(std::vector<double> v);

} // namespace fcc::trainer

#endif // FCC_TRAINER_METRICS_H
