//===- Options.cpp - Command line of a generated trainer ------------------===//
//
// Implements Options.h. Numeric flags are read as strings and converted here
// so that every message has the form "--flag: what is wrong (got VALUE)"
// instead of CLI11's generic conversion errors.
//
//===----------------------------------------------------------------------===//
#include "Options.h"

#include "Metrics.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <ostream>

namespace fcc::trainer {

namespace {

int64_t toInteger(const std::string &flag, const std::string &text) {
  errno = 0;
  char *end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE)
    throw UsageError(flag + ": '" + text + "' is not an integer");
  return v;
}

double toNumber(const std::string &flag, const std::string &text) {
  char *end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0')
    throw UsageError(flag + ": '" + text + "' is not a number");
  if (!std::isfinite(v))
    throw UsageError(flag + ": '" + text + "' is not finite");
  return v;
}

// Checks that `path` can be written (creating it, without truncating it).
void checkWritable(const std::string &flag, const std::string &path) {
  if (path.empty())
    throw UsageError(flag + ": empty file name");
  std::ofstream probe(path, std::ios::app);
  if (!probe)
    throw UsageError(flag + ": cannot open '" + path +
                     "' for writing: " + std::strerror(errno));
}

// The raw text of the flags whose defaults come from the recipe.
struct RawFlags {
  std::string epochs, lrKnots, momentum, wd, labelSmoothing, ema, emaEvery,
      cutout, seed, trainLimit, testLimit, runs, targetAcc, threads, lossScale,
      lossScaleWindow, injectOverflow, checkpointEvery, stopAfterSteps,
      fault, checkpointMode, deltaEvery, exportBn;
};

// "N" steps or "Ne" epochs (--checkpoint-every, --delta-every).
void parseEvery(const std::string &flag, const std::string &raw,
                int64_t &steps, int &epochs) {
  std::string text = raw;
  bool inEpochs = false;
  for (const char *suffix : {"ep", "e"}) {
    size_t n = std::strlen(suffix);
    if (text.size() > n && text.compare(text.size() - n, n, suffix) == 0) {
      text.resize(text.size() - n);
      inEpochs = true;
      break;
    }
  }
  char *end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < 1 ||
      v > 1000000000)
    throw UsageError(flag + ": must be a positive number of steps (e.g. 500) "
                     "or of epochs with the suffix 'e' (e.g. 2e) (got '" +
                     raw + "')");
  steps = 0;
  epochs = 0;
  if (inEpochs)
    epochs = int(std::min(v, 1000000ll));
  else
    steps = v;
}

void validate(const fcc_program &p, const CLI::App &app, const RawFlags &raw,
              Options &o) {
  auto given = [&](const char *flag) {
    const CLI::Option *opt = app.get_option_no_throw(flag);
    return opt && opt->count() > 0;
  };

  if (given("--epochs")) {
    int64_t v = toInteger("--epochs", raw.epochs);
    if (v < 1 || v > 1000000)
      throw UsageError("--epochs: must be between 1 and 1000000 (got " + raw.epochs +
                       ")");
    o.epochs = int(v);
  }
  try {
    o.lr = LrSchedule::parse(o.lrKnots);
  } catch (const std::invalid_argument &e) {
    throw UsageError(std::string("--lr-knots: ") + e.what() +
                     (given("--lr-knots") ? "" : " (the compiled default)"));
  }
  auto fraction = [&](const char *flag, const std::string &text, float &out,
                      bool includeOne, const char *hint) {
    if (!given(flag))
      return;
    double v = toNumber(flag, text);
    if (v < 0 || v > 1 || (v == 1 && !includeOne))
      throw UsageError(std::string(flag) + ": must be in [0, " +
                       (includeOne ? "1]" : "1)") + " (got " + text + ")" +
                       hint);
    out = float(v);
  };
  fraction("--momentum", raw.momentum, o.momentum, false, "");
  fraction("--label-smoothing", raw.labelSmoothing, o.labelSmoothing, false,
           "");
  fraction("--ema", raw.ema, o.ema, false, "; 0 turns EMA off");
  if (given("--wd")) {
    double v = toNumber("--wd", raw.wd);
    if (v < 0)
      throw UsageError("--wd: must not be negative (got " + raw.wd + ")");
    o.weightDecay = float(v);
  }
  if (given("--ema-every")) {
    int64_t v = toInteger("--ema-every", raw.emaEvery);
    if (v < 1 || v > 1000000)
      throw UsageError("--ema-every: must be between 1 and 1000000 (got " +
                       raw.emaEvery + ")");
    o.emaEvery = int(v);
  }
  if (given("--cutout")) {
    int64_t v = toInteger("--cutout", raw.cutout);
    int64_t most = std::max(p.height, p.width);
    if (v < 0 || v > most)
      throw UsageError("--cutout: must be between 0 (off) and the image "
                       "size " + std::to_string(most) + " (got " +
                       raw.cutout + ")");
    o.cutout = int(v);
  }
  if (given("--seed")) {
    errno = 0;
    char *end = nullptr;
    unsigned long long v = std::strtoull(raw.seed.c_str(), &end, 10);
    if (raw.seed.empty() || raw.seed[0] == '-' || *end != '\0' ||
        errno == ERANGE)
      throw UsageError("--seed: '" + raw.seed +
                       "' is not a non-negative integer");
    o.seed = v;
  }
  auto limit = [&](const char *flag, const std::string &text, int64_t &out) {
    if (!given(flag))
      return;
    int64_t v = toInteger(flag, text);
    if (v < 1)
      throw UsageError(std::string(flag) + ": must be at least 1 (got " +
                       text + ")");
    out = v;
  };
  limit("--train-limit", raw.trainLimit, o.trainLimit);
  limit("--test-limit", raw.testLimit, o.testLimit);
  if (given("--runs")) {
    int64_t v = toInteger("--runs", raw.runs);
    if (v < 1 || v > 100000)
      throw UsageError("--runs: must be between 1 and 100000 (got " + raw.runs + ")");
    o.runs = int(v);
  }
  if (given("--target-acc")) {
    double v = toNumber("--target-acc", raw.targetAcc);
    if (v < 0 || v > 1)
      throw UsageError("--target-acc: must be a fraction in [0, 1], e.g. "
                       "0.94 (got " + raw.targetAcc + ")");
    o.targetAcc = v;
  }
  if (given("--threads")) {
    int64_t v = toInteger("--threads", raw.threads);
    if (v < 0 || v > 4096)
      throw UsageError("--threads: must be 0 (all cores) or a positive "
                       "count (got " + raw.threads + ")");
    o.threads = int(v);
  }
  for (const char *flag :
       {"--loss-scale", "--loss-scale-window", "--debug-inject-overflow"})
    if (given(flag) && !p.loss_scaling)
      throw UsageError(std::string(flag) + ": this trainer does no loss "
                       "scaling (compiled with --precision " +
                       (p.precision ? p.precision : "fp32") +
                       "; loss scaling comes with --precision fp16)");
  if (given("--loss-scale")) {
    double v = toNumber("--loss-scale", raw.lossScale);
    if (!(v >= 1 && v <= 1e30))
      throw UsageError("--loss-scale: must be between 1 and 1e30 (got " +
                       raw.lossScale + ")");
    o.lossScale = float(v);
  }
  if (given("--loss-scale-window")) {
    int64_t v = toInteger("--loss-scale-window", raw.lossScaleWindow);
    if (v < 1 || v > 100000000)
      throw UsageError("--loss-scale-window: must be between 1 and 100000000 "
                       "(got " + raw.lossScaleWindow + ")");
    o.lossScaleWindow = int(v);
  }
  if (given("--debug-inject-overflow")) {
    int64_t v = toInteger("--debug-inject-overflow", raw.injectOverflow);
    if (v < 0)
      throw UsageError("--debug-inject-overflow: must be a step number >= 0 "
                       "(got " + raw.injectOverflow + ")");
    o.injectOverflow = v;
  }
  if (given("--checkpoint-every")) {
    if (o.checkpointDir.empty())
      throw UsageError("--checkpoint-every: needs --checkpoint-dir DIR");
    parseEvery("--checkpoint-every", raw.checkpointEvery,
               o.checkpointEverySteps, o.checkpointEveryEpochs);
  } else if (!o.checkpointDir.empty()) {
    o.checkpointEveryEpochs = 1;
  }
  if (given("--checkpoint-mode")) {
    try {
      o.checkpointMode = DeltaSpec::parse(raw.checkpointMode);
    } catch (const std::invalid_argument &e) {
      throw UsageError(std::string("--checkpoint-mode: ") + e.what());
    }
    if (o.checkpointMode.delta() && o.checkpointDir.empty())
      throw UsageError("--checkpoint-mode: needs --checkpoint-dir DIR (where "
                       "the full and delta checkpoints go)");
    if (o.checkpointMode.delta() && !given("--delta-every"))
      throw UsageError("--checkpoint-mode: " + o.checkpointMode.toString() +
                       " needs --delta-every N|Ne (how often a delta is "
                       "written between the full checkpoints of "
                       "--checkpoint-every)");
  }
  if (given("--delta-every")) {
    if (!o.checkpointMode.delta())
      throw UsageError("--delta-every: needs --checkpoint-mode "
                       "delta:topk:K or delta:threshold:V");
    parseEvery("--delta-every", raw.deltaEvery, o.deltaEverySteps,
               o.deltaEveryEpochs);
    bool coincide =
        (o.deltaEverySteps > 0 && o.checkpointEverySteps > 0 &&
         o.deltaEverySteps % o.checkpointEverySteps == 0) ||
        (o.deltaEveryEpochs > 0 && o.checkpointEveryEpochs > 0 &&
         o.deltaEveryEpochs % o.checkpointEveryEpochs == 0);
    if (coincide)
      throw UsageError("--delta-every: every delta (" + raw.deltaEvery +
                       ") would fall on a full checkpoint (--checkpoint-every "
                       + (given("--checkpoint-every") ? raw.checkpointEvery
                                                      : std::string("1e")) +
                       "), where no delta is written; write full checkpoints "
                       "less often, e.g. --checkpoint-every 5e "
                       "--delta-every 1e");
  }
  if (given("--checkpoint-dir") && o.checkpointDir.empty())
    throw UsageError("--checkpoint-dir: empty directory name");
  if (o.resume && o.checkpointDir.empty())
    throw UsageError("--resume: needs --checkpoint-dir DIR (where the "
                     "checkpoints are)");
  if (!o.checkpointDir.empty() && o.runs > 1)
    throw UsageError(std::string(o.resume ? "--resume" : "--checkpoint-dir") +
                     ": not supported with --runs > 1; checkpoint one run at "
                     "a time (--seed S picks the run)");
  if (!o.checkpointDir.empty() && !o.dumpStep.empty())
    throw UsageError("--checkpoint-dir: not with --dump-step (which trains "
                     "one step and writes no checkpoint)");
  if (given("--restore-delta")) {
    if (o.restoreDelta.empty())
      throw UsageError("--restore-delta: empty file name");
    if (o.resume)
      throw UsageError("--restore-delta: not with --resume (which continues "
                       "from the newest full checkpoint)");
    if (o.runs > 1)
      throw UsageError("--restore-delta: not with --runs > 1");
  }
  if (o.evalOnly) {
    if (o.runs > 1)
      throw UsageError("--eval-only: not with --runs > 1");
    if (!o.dumpStep.empty())
      throw UsageError("--eval-only: not with --dump-step");
    for (const char *flag : {"--metrics", "--tsv"})
      if (given(flag))
        throw UsageError(std::string("--eval-only: not with ") + flag +
                         " (the accuracy is printed)");
    if (!o.checkpointDir.empty() && !o.resume)
      throw UsageError("--eval-only: writes no checkpoints; --checkpoint-dir "
                       "only goes with --resume (to evaluate the newest "
                       "checkpoint)");
  }
  if (given("--debug-stop-after-steps")) {
    int64_t v = toInteger("--debug-stop-after-steps", raw.stopAfterSteps);
    if (v < 1)
      throw UsageError("--debug-stop-after-steps: must be a step count >= 1 "
                       "(got " + raw.stopAfterSteps + ")");
    o.stopAfterSteps = v;
  }
  if (given("--debug-fault")) {
    std::vector<std::string> parts;
    std::string rest = raw.fault;
    for (size_t at; (at = rest.find(':')) != std::string::npos;
         rest = rest.substr(at + 1))
      parts.push_back(rest.substr(0, at));
    parts.push_back(rest);
    if (parts.size() != 3 || (parts[0] != "kill" && parts[0] != "hang"))
      throw UsageError("--debug-fault: '" + raw.fault +
                       "' is not kill:RANK:STEP or hang:RANK:STEP");
    o.fault.kind = parts[0];
    o.fault.rank = toInteger("--debug-fault", parts[1]);
    o.fault.step = toInteger("--debug-fault", parts[2]);
    if (o.fault.rank < 0 || o.fault.step < 1)
      throw UsageError("--debug-fault: rank must be >= 0 and step >= 1 (got '" +
                       raw.fault + "')");
  }
  if (given("--metrics"))
    checkWritable("--metrics", o.metricsPath);
  if (given("--export-onnx")) {
    if (!p.onnx_model || p.onnx_model_size <= 0)
      throw UsageError("--export-onnx: this trainer was compiled from ONNX "
                       "text syntax (or an older fcc) and carries no binary "
                       "model to export into");
    checkWritable("--export-onnx", o.exportOnnx);
  }
  if (given("--export-bn")) {
    if (raw.exportBn != "fold" && raw.exportBn != "keep")
      throw UsageError("--export-bn: must be fold or keep (got '" +
                       raw.exportBn + "')");
    if (!given("--export-onnx"))
      throw UsageError("--export-bn: needs --export-onnx FILE");
    o.exportFoldBn = raw.exportBn == "fold";
  }
  if (given("--tsv"))
    checkWritable("--tsv", o.tsvPath);
  if (o.data.empty())
    throw UsageError("--data: required: a CIFAR-10 binary or MNIST IDX "
                     "directory (see --help)");
}

const char *orEmpty(const char *s) { return s ? s : ""; }

} // namespace

int parseOptions(const fcc_program &p, const std::string &name, int argc,
                 char **argv, Options &o, std::ostream &out,
                 std::ostream &err) {
  const fcc_recipe &d = p.defaults;
  o = Options();
  o.epochs = d.epochs;
  o.lrKnots = orEmpty(d.lr_knots);
  o.momentum = d.momentum;
  o.nesterov = d.nesterov != 0;
  o.weightDecay = d.weight_decay;
  o.labelSmoothing = d.label_smoothing;
  o.ema = d.ema_decay;
  o.emaEvery = d.ema_every > 0 ? d.ema_every : 1;
  o.tta = d.tta != 0;
  o.cutout = d.cutout;
  o.flip = d.flip != 0;
  o.cropPad = d.crop_pad;

  std::string shape = std::to_string(p.channels) + "x" +
                      std::to_string(p.height) + "x" + std::to_string(p.width);
  CLI::App app("Trains " + std::string(orEmpty(p.model)) +
                   " (compiled by fcc for target " + orEmpty(p.target) +
                   ", batch " + std::to_string(p.batch) + ", " + shape +
                   " images, " + std::to_string(p.classes) +
                   " classes, recipe " + orEmpty(d.name) +
                   "). Defaults come from the compiled recipe.",
               name);
  app.set_help_flag("-h,--help", "Print this help and exit");
  app.get_formatter()->column_width(30);
  app.footer(
      "Data: DIR holds the CIFAR-10 binary release (data_batch_1.bin .. "
      "data_batch_5.bin, whichever are present, and test_batch.bin; also "
      "found in DIR/cifar-10-batches-bin) or MNIST/Fashion-MNIST IDX files "
      "(train-images-idx3-ubyte, train-labels-idx1-ubyte, "
      "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally "
      ".gz). Images are normalised with the per-channel mean and std of the "
      "training images used.\n"
      "--metrics writes one JSON object per epoch and run; --tsv writes "
      "DAWNBench lines 'epoch<TAB>hours<TAB>top1Accuracy' (hours of "
      "training so far, accuracy in percent; a leading 'run' column when "
      "--runs > 1).\n"
      "Exit codes: 0 success, 1 bad usage or data, 2 no device, 3 training "
      "diverged, 130/143 stopped by SIGINT/SIGTERM (after a checkpoint when "
      "--checkpoint-dir is given).");

  RawFlags raw;
  bool flagFlip = o.flip, noCrop = false;
  app.add_option("--data", o.data,
                 "Dataset directory (CIFAR-10 binary or MNIST IDX)")
      ->type_name("DIR");
  app.add_option("--epochs", raw.epochs, "Number of training epochs")
      ->type_name("N")
      ->default_str(std::to_string(d.epochs));
  app.add_option("--lr-knots", o.lrKnots,
                 "Learning rate, piecewise linear in (fractional) epochs")
      ->type_name("E:LR,...")
      ->default_str(orEmpty(d.lr_knots));
  app.add_option("--momentum", raw.momentum, "SGD momentum")
      ->type_name("M")
      ->default_str(formatShortestFloat(d.momentum));
  app.add_flag("--nesterov,!--no-nesterov", o.nesterov,
               std::string("Nesterov momentum (default: ") +
                   (d.nesterov ? "on" : "off") + ")");
  app.add_option("--wd", raw.wd, "Weight decay (L2)")
      ->type_name("WD")
      ->default_str(formatShortestFloat(d.weight_decay));
  app.add_option("--label-smoothing", raw.labelSmoothing,
                 "Label smoothing of the cross-entropy loss")
      ->type_name("LS")
      ->default_str(formatShortestFloat(d.label_smoothing));
  app.add_option("--ema", raw.ema,
                 "EMA of the weights, per-step decay in [0, 1); 0 = off; "
                 "evaluation uses the EMA weights")
      ->type_name("DECAY")
      ->default_str(formatShortestFloat(d.ema_decay));
  app.add_option("--ema-every", raw.emaEvery,
                 "Update the EMA every K steps (with decay^K)")
      ->type_name("K")
      ->default_str(std::to_string(o.emaEvery));
  app.add_flag("--tta,!--no-tta", o.tta,
               std::string("Test-time augmentation: average the logits with "
                           "those of the flipped images (default: ") +
                   (d.tta ? "on" : "off") + ")");
  app.add_option("--cutout", raw.cutout,
                 "Cutout square size in pixels; 0 = off")
      ->type_name("N")
      ->default_str(std::to_string(d.cutout));
  app.add_flag("!--no-flip", flagFlip,
               std::string("No random horizontal flips (default: flips ") +
                   (d.flip ? "on" : "off") + ")");
  app.add_flag("--no-crop", noCrop,
               "No random crops (default: reflect-pad by " +
                   std::to_string(d.crop_pad) + " and crop" +
                   (d.crop_pad ? "" : ", i.e. off") + ")");
  app.add_option("--seed", raw.seed,
                 "Random seed (initialisation, shuffling, augmentation, "
                 "dropout); run i of --runs uses seed S+i")
      ->type_name("S")
      ->default_str("0");
  app.add_option("--train-limit", raw.trainLimit,
                 "Use only the first N training images")
      ->type_name("N")
      ->default_str("all");
  app.add_option("--test-limit", raw.testLimit,
                 "Use only the first N test images")
      ->type_name("N")
      ->default_str("all");
  app.add_option("--runs", raw.runs,
                 "Train N times (seeds S .. S+N-1) and report the "
                 "distribution of the final test accuracy")
      ->type_name("N")
      ->default_str("1");
  app.add_option("--target-acc", raw.targetAcc,
                 "Report which runs reach this test accuracy (a fraction, "
                 "e.g. 0.94) and when")
      ->type_name("A");
  app.add_option("--metrics", o.metricsPath,
                 "Write one JSON object per epoch (JSON lines) to FILE")
      ->type_name("FILE");
  app.add_option("--tsv", o.tsvPath,
                 "Write DAWNBench-style TSV (epoch, hours, top1Accuracy) to "
                 "FILE")
      ->type_name("FILE");
  app.add_option("--threads", raw.threads,
                 "CPU threads; 0 = all cores (or OMP_NUM_THREADS)")
      ->type_name("N")
      ->default_str("0");
  // Loss-scaling flags exist for every trainer (so that a wrong one gets a
  // clear message) but are listed only where they apply.
  std::string scalingGroup = p.loss_scaling ? "Options" : "";
  app.add_option("--loss-scale", raw.lossScale,
                 "Initial dynamic loss scale (fp16): halves when a step's "
                 "gradients overflow (the step is skipped), doubles after "
                 "--loss-scale-window clean steps")
      ->type_name("S")
      ->default_str("65536")
      ->group(scalingGroup);
  app.add_option("--loss-scale-window", raw.lossScaleWindow,
                 "Clean steps before the loss scale doubles")
      ->type_name("N")
      ->default_str("2000")
      ->group(scalingGroup);
  app.add_option("--debug-inject-overflow", raw.injectOverflow,
                 "Testing aid: make the gradients of (0-based) step N "
                 "infinite, to watch the step being skipped")
      ->type_name("N")
      ->group(scalingGroup);
  {
    const char *xdg = std::getenv("XDG_CACHE_HOME");
    const char *home = std::getenv("HOME");
    if (xdg && *xdg)
      o.timingCache = std::string(xdg) + "/fcc/cudnn-timing-cache.tsv";
    else if (home && *home)
      o.timingCache = std::string(home) + "/.cache/fcc/cudnn-timing-cache.tsv";
  }
  app.add_option("--timing-cache", o.timingCache,
                 "GPU trainers: file keeping the cuDNN algorithm measured "
                 "for each convolution shape on this GPU, so later runs "
                 "start at once; '' measures every run")
      ->type_name("FILE")
      ->default_str(o.timingCache.empty() ? "''" : o.timingCache)
      ->group(std::string(p.target ? p.target : "") == "cuda" ? "Options"
                                                               : "");
  app.add_option("--comm-timeout", o.commTimeout,
                 "Several ranks (mpirun): seconds a collective may wait for "
                 "the other ranks before the job is ended with a message "
                 "(a rank died or hangs); 0 waits forever")
      ->check(CLI::NonNegativeNumber)
      ->default_str("300");
  app.add_option("--export-onnx", o.exportOnnx,
                 "At the end, write the ONNX model this trainer was compiled "
                 "from with the trained weights (the EMA weights with --ema) "
                 "and BatchNorm statistics as initializers")
      ->type_name("FILE");
  app.add_option("--export-bn", raw.exportBn,
                 "With --export-onnx: 'keep' the BatchNormalization nodes "
                 "(inference mode, trained statistics) or 'fold' each one "
                 "that directly follows a Conv into the Conv's weights and "
                 "bias")
      ->type_name("fold|keep")
      ->default_str("keep");
  app.add_option("--dump-step", o.dumpStep,
                 "Debugging/cross-target checks: initialise (--seed), run ONE "
                 "training step on the first batch in file order without "
                 "augmentation at the learning rate of step 0, write "
                 "DIR/manifest.json and every parameter before and after the "
                 "step as raw float32 files, and exit")
      ->type_name("DIR");
  app.add_option("--checkpoint-dir", o.checkpointDir,
                 "Write checkpoints (state, position, RNG, loss scale) to "
                 "DIR: every --checkpoint-every, at the end, and on "
                 "SIGINT/SIGTERM (after the current step); the 2 newest "
                 "are kept")
      ->type_name("DIR");
  app.add_option("--checkpoint-every", raw.checkpointEvery,
                 "Checkpoint every N steps, or every N epochs with the "
                 "suffix 'e' (e.g. 500 or 2e)")
      ->type_name("N|Ne")
      ->default_str("1e");
  app.add_flag("--resume", o.resume,
               "Continue from the newest valid (full) checkpoint in "
               "--checkpoint-dir (exactly: same result as an uninterrupted "
               "run); --metrics and --tsv are appended to");
  app.add_option("--checkpoint-mode", raw.checkpointMode,
                 "full: full checkpoints only. delta:topk:K or "
                 "delta:threshold:V: also small delta checkpoints "
                 "DIR/delta-NNNNNN.fcc every --delta-every, holding the "
                 "fraction K of the weights that changed most since the "
                 "last full checkpoint (or those that changed by >= V); "
                 "':q8' stores the changes in 8 bits")
      ->type_name("MODE")
      ->default_str("full");
  app.add_option("--delta-every", raw.deltaEvery,
                 "With a delta --checkpoint-mode: write a delta every N "
                 "steps, or every N epochs with the suffix 'e', between the "
                 "full checkpoints")
      ->type_name("N|Ne");
  app.add_option("--restore-delta", o.restoreDelta,
                 "Start from a delta checkpoint applied to its base full "
                 "checkpoint (found next to it): with --eval-only to "
                 "evaluate or export that model; training on from it is "
                 "approximate (the momentum is the base's)")
      ->type_name("FILE");
  app.add_flag("--eval-only", o.evalOnly,
               "Do not train: evaluate the model (initial, --resume'd or "
               "--restore-delta'd) on the test set, print its accuracy and "
               "--export-onnx it");
  app.add_option("--debug-stop-after-steps", raw.stopAfterSteps,
                 "Testing aid: behave as if SIGINT arrived during step N "
                 "of the run (checkpoint, exit 130)")
      ->type_name("N")
      ->group("");
  app.add_option("--debug-fault", raw.fault,
                 "Testing aid for several ranks: rank R kills itself "
                 "(kill, like kill -9) or stops answering (hang, SIGSTOP) "
                 "after step S of the run")
      ->type_name("kill|hang:R:S")
      ->group("");
  app.add_flag("--quiet", o.quiet,
               "Print only the final summary (and errors)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp &) {
    out << app.help();
    return 0;
  } catch (const CLI::ParseError &e) {
    err << name << ": error: " << e.what() << "\n"
        << "Run '" << name << " --help' for the flags.\n";
    return 1;
  }
  o.flip = flagFlip;
  if (noCrop)
    o.cropPad = 0;
  try {
    validate(p, app, raw, o);
  } catch (const UsageError &e) {
    err << name << ": error: " << e.what() << "\n";
    return 1;
  }
  return -1;
}

} // namespace fcc::trainer
