//===- Trainer.cpp - The training driver of generated trainers ------------===//
//
// Implements Trainer.h: the loop around a compiled fcc_program.
//
//  settings -> data (validated, limited, statistics of the training images)
//  -> backend + program setup -> for each run: initialise the parameters
//  (compiled initial values, or PyTorch's defaults seeded by the run's seed),
//  zero the momentum, copy the EMA; for each epoch: Philox shuffle, full
//  batches only (drop_last, like cifar10-fast), lr from --lr-knots at the
//  fractional epoch of the step, EMA every k steps; then evaluate on the whole
//  test set (the last batch padded with ignored rows) with the EMA weights
//  when --ema is on, print a table row and write --metrics / --tsv.
//  With --checkpoint-dir the state and the position are saved (Checkpoint.h)
//  every --checkpoint-every, at the end and on SIGINT/SIGTERM (which only set
//  a flag; the loop stops after the current step); --resume restores them,
//  partial metric sums of the epoch included, so that the run continues
//  exactly. With a delta --checkpoint-mode the trainer also keeps the
//  parameters and EMA copies of the newest full checkpoint (the base) on the
//  host and writes a small delta against it every --delta-every;
//  --restore-delta starts from base + delta, --eval-only evaluates (and
//  exports) without training.
//
//===----------------------------------------------------------------------===//
#include "Trainer.h"

#include "Augment.h"
#include "Backend.h"
#include "Checkpoint.h"
#include "Data.h"
#include "Metrics.h"
#include "OnnxExport.h"
#include "Options.h"

#include "fcc/runtime/comm.h"
#include "fcc/runtime/cpu_kernels.h"
#include "fcc/runtime/init.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <cmath>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace fcc::trainer {

namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string baseName(const char *path) {
  std::string s = path ? path : "trainer";
  size_t slash = s.find_last_of('/');
  return slash == std::string::npos ? s : s.substr(slash + 1);
}

std::string fmt(const char *format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

// The signal that asked the loop to stop (SIGINT, SIGTERM), or 0. The
// handlers only set it; SA_RESETHAND makes a second signal act as usual.
volatile std::sig_atomic_t gStopSignal = 0;

extern "C" void onStopSignal(int sig) { gStopSignal = sig; }

// Installs the handlers for the lifetime of the object.
class StopSignals {
public:
  StopSignals() {
    gStopSignal = 0;
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_handler = onStopSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &sa, &oldInt_);
    sigaction(SIGTERM, &sa, &oldTerm_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &oldInt_, nullptr);
    sigaction(SIGTERM, &oldTerm_, nullptr);
    gStopSignal = 0;
  }
  StopSignals(const StopSignals &) = delete;
  StopSignals &operator=(const StopSignals &) = delete;

private:
  struct sigaction oldInt_, oldTerm_;
};

// The persistent state of one training run, in target memory.
struct State {
  std::vector<float *> params, momentum, ema;
  std::vector<float *> comm; // fcc_program.comm_state (residuals)
};

class Driver {
public:
  Driver(const fcc_program &p, std::string name, std::ostream &out,
         std::ostream &err, bool progress)
      : p_(p), name_(std::move(name)), out_(out), err_(err),
        progress_(progress) {}

  int main(int argc, char **argv);

private:
  int fail(int code, const std::string &message) {
    // One write, so that the lines of several ranks do not interleave.
    err_ << (name_ + ": error: " + message + "\n") << std::flush;
    return code;
  }
  void say(const std::string &line) {
    if (!o_.quiet)
      out_ << line << "\n" << std::flush;
  }
  int checkProgram();
  int loadData();
  void printSettings();
  void allocateState();
  int initialiseRun(uint64_t seed);
  // Takes the backend's accumulated metrics into `taken` and adds them to
  // `sums`.
  void drainMetrics(double taken[FCC_NUM_METRICS],
                    double sums[FCC_NUM_METRICS]) {
    backend_->takeMetrics(taken);
    for (int k = 0; k < FCC_NUM_METRICS; ++k)
      sums[k] += taken[k];
  }
  // --export-onnx: the source model with the trained weights.
  int exportModel();
  // --dump-step: one step on the first batch, parameters before and after.
  int dumpStep(uint64_t seed);
  // Returns kExitOk, kExitDiverged, kExitInterrupted or kExitTerminated (or
  // kExitUsage when a checkpoint cannot be written); fills `summary`.
  // Continues from `from` when given.
  int trainRun(int run, uint64_t seed, RunSummary &summary,
               const Checkpoint *from);
  // The flags that shape training, as text (checkpoints).
  std::string settings() const;
  // The checkpoint header of this program and run (no position).
  Checkpoint checkpointHeader(int run, uint64_t seed) const;
  // Downloads the state into c and writes it; "" and a message on failure.
  std::string saveCheckpoint(Checkpoint &c);
  // Delta checkpoints: downloads the parameters and EMA copies into c and
  // writes their delta against the base; "" and a message on failure.
  std::string saveDelta(Checkpoint &c);
  bool deltaMode() const { return o_.checkpointMode.delta(); }
  // Keeps the param and EMA tensors of c (written to or read from `path`)
  // as the base of the next deltas.
  void keepBase(Checkpoint &c, const std::string &path, uint64_t checksum,
                uint64_t bytes);
  // Checks a checkpoint (read from `path` for `flag`) against the program
  // and the options and uploads its state.
  int adopt(Checkpoint &c, const std::string &path, const std::string &flag);
  // --restore-delta: base + delta as the starting point.
  int restoreFromDelta(std::unique_ptr<Checkpoint> &from);
  // --eval-only: evaluates the current state; `what` names it.
  int evalOnly(const std::string &what);
  // --resume: reads the newest valid checkpoint of --checkpoint-dir, checks
  // it against the program and the options, uploads its state.
  int resume(std::unique_ptr<Checkpoint> &from);
  // The tensor table of this program's state (names, kinds, sizes).
  std::vector<CheckpointTensor> stateTable() const;
  // After a stop signal (or --debug-stop-after-steps): checkpoint, message.
  int stopped(int sig, Checkpoint &c);
  void evaluate(float *const *params, double &loss, double &acc);
  // Data parallelism: each rank trains on a fixed shard of the training set
  // (Augment.h epochOrder); every shard yields the same number of steps.
  int64_t stepsPerEpoch() const {
    return data_.train.count / world_ / p_.batch;
  }
  // Starts the ranks (runtime/comm) and checks that they agree.
  int startRanks(int &argc, char **&argv);
  // Averages the BatchNorm running statistics (of the weights and of their
  // EMA) over the ranks, whose batches differed, before each evaluation, so
  // that every rank holds the same model (and rank 0 exports it).
  // Checkpoints are per rank and keep each rank's own statistics.
  void syncRunningStatistics();
  // The buffer of a checkpoint tensor.
  float *stateBuffer(const CheckpointTensor &t) const {
    switch (t.kind) {
    case CheckpointTensor::kParam: return state_.params[t.index];
    case CheckpointTensor::kMomentum: return state_.momentum[t.index];
    case CheckpointTensor::kEma: return state_.ema[t.index];
    case CheckpointTensor::kCommState: return state_.comm[t.index];
    }
    return nullptr;
  }

  const fcc_program &p_;
  std::string name_;
  std::ostream &out_, &err_;
  bool progress_;
  Options o_;
  Dataset data_;
  Normalisation norm_;
  std::unique_ptr<Backend> backend_;
  State state_;
  AugmentConfig augment_;
  JsonLinesWriter json_;
  TsvWriter tsv_;
  std::string lastCheckpoint_; // the newest written or resumed from
  // The base of delta checkpoints: the newest full checkpoint (its param and
  // EMA tensors, step and checksum), its file name and size.
  Checkpoint base_;
  std::string baseName_;
  uint64_t baseBytes_ = 0;
  int rank_ = 0, world_ = 1;   // data-parallel ranks (runtime/comm)
};

int Driver::checkProgram() {
  if (p_.abi_version != FCC_PROGRAM_ABI_VERSION)
    return fail(kExitUsage,
                "the compiled program has ABI version " +
                    std::to_string(p_.abi_version) +
                    " but this trainer library expects " +
                    std::to_string(FCC_PROGRAM_ABI_VERSION) +
                    "; recompile with a matching fcc");
  if (p_.batch < 1 || p_.classes < 1 || p_.channels < 1 || p_.height < 1 ||
      p_.width < 1 || !p_.train_step || !p_.eval_step || !p_.ema_update ||
      !p_.setup)
    return fail(kExitUsage, "the compiled program is incomplete (batch, "
                            "shape or entry points missing)");
  return kExitOk;
}

int Driver::loadData() {
  try {
    data_ = loadDataset(o_.data);
    checkImageShape(data_, p_.channels, p_.height, p_.width);
  } catch (const DataError &e) {
    return fail(kExitUsage, e.what());
  }
  if (o_.trainLimit > 0)
    data_.train.truncate(o_.trainLimit);
  if (o_.testLimit > 0)
    data_.test.truncate(o_.testLimit);
  for (const ImageSet *set : {&data_.train, &data_.test})
    for (int32_t label : set->labels)
      if (label >= p_.classes)
        return fail(kExitUsage,
                    o_.data + ": label " + std::to_string(label) +
                        " does not fit the model's " +
                        std::to_string(p_.classes) + " classes");
  if (data_.train.count / world_ < p_.batch)
    return fail(kExitUsage,
                o_.data + ": " + std::to_string(data_.train.count) +
                    " training images" +
                    (o_.trainLimit > 0 ? " (after --train-limit)" : "") +
                    (world_ > 1 ? " shared by " + std::to_string(world_) +
                                      " ranks"
                                : std::string()) +
                    " do not fill one batch of " + std::to_string(p_.batch) +
                    " (the batch size is fixed at compile time: fcc compile "
                    "--batch)");
  if (data_.test.count < 1)
    return fail(kExitUsage, o_.data + ": no test images");
  norm_ = channelStatistics(data_.train);
  return kExitOk;
}

void Driver::printSettings() {
  int64_t stepsPerEpoch = this->stepsPerEpoch();
  say("model     " + std::string(p_.model ? p_.model : "?") + "  (" +
      std::to_string(p_.num_params) + " parameter tensors, " +
      std::to_string(p_.classes) + " classes)");
  std::string precision = p_.precision ? p_.precision : "fp32";
  if (p_.loss_scaling)
    precision += " (dynamic loss scaling from " +
                 formatShortest(o_.lossScale) + ", window " +
                 std::to_string(o_.lossScaleWindow) + ")";
  say("target    " + std::string(p_.target ? p_.target : "?") + " on " +
      backend_->describe() + ", " + precision + ", batch " +
      std::to_string(p_.batch) +
      ", scratch arena " + fmt("%.1f MB", double(p_.arena_bytes) / 1e6));
  say("recipe    " + std::string(p_.defaults.name ? p_.defaults.name : "?") +
      ": epochs " + std::to_string(o_.epochs) + ", lr-knots " +
      o_.lr.toString() + ", momentum " + formatShortestFloat(o_.momentum) +
      (o_.nesterov ? " (nesterov)" : "") + ", wd " +
      formatShortestFloat(o_.weightDecay) + ", label-smoothing " +
      formatShortestFloat(o_.labelSmoothing) + ", ema " +
      (o_.ema > 0 ? formatShortestFloat(o_.ema) + " every " +
                        std::to_string(o_.emaEvery)
                  : std::string("off")) +
      ", tta " + (o_.tta ? "on" : "off"));
  say("augment   " +
      (augment_.pad ? "reflect-pad " + std::to_string(augment_.pad) +
                          " + random crop"
                    : std::string("no crop")) +
      (augment_.flip ? ", random flip" : ", no flip") +
      (augment_.cutout ? ", cutout " + std::to_string(augment_.cutout)
                       : std::string(", no cutout")));
  say("data      " + data_.dir + " (" + data_.format + "): " +
      std::to_string(data_.train.count) + " train images (" +
      std::to_string(stepsPerEpoch) + " steps/epoch, " +
      std::to_string(data_.train.count -
                     stepsPerEpoch * p_.batch * world_) +
      " left over per epoch), " + std::to_string(data_.test.count) +
      " test images");
  std::string method = p_.compression ? p_.compression : "none";
  if (p_.collectives && (world_ > 1 || method != "none")) {
    say("parallel  " + std::to_string(world_) + " rank" +
        (world_ > 1 ? "s" : "") + " (" + fcc_comm_describe() +
        "), batch " + std::to_string(p_.batch) + " per rank, " +
        std::to_string(p_.batch * world_) + " per step; each rank keeps a "
        "shard of " + std::to_string(data_.train.count / world_) +
        " images; gradients " +
        (method == "none" ? std::string("averaged dense")
                          : "compressed with " + method + " (" +
                                (p_.compression_scope ? p_.compression_scope
                                                      : "layerwise") +
                                ")") +
        ", " + fmt("%.4g", double(p_.payload_bytes) / 1e6) +
        (p_.payload_fixed ? "" : " (at most)") + " MB/step per rank vs " +
        fmt("%.4g", 4.0 * double(p_.grad_numel) / 1e6) + " MB dense fp32");
  }
  std::string seeds = std::to_string(o_.seed);
  if (o_.runs > 1)
    seeds += ".." + std::to_string(o_.seed + uint64_t(o_.runs) - 1) + " (" +
             std::to_string(o_.runs) + " runs)";
  say("seed      " + seeds);
}

void Driver::allocateState() {
  int n = p_.num_params;
  state_.params.assign(size_t(n), nullptr);
  state_.momentum.assign(size_t(n), nullptr);
  state_.ema.assign(size_t(n), nullptr);
  for (int i = 0; i < n; ++i) {
    const fcc_param_info &info = p_.params[i];
    state_.params[size_t(i)] = backend_->allocate(info.numel);
    if (info.trainable)
      state_.momentum[size_t(i)] = backend_->allocate(info.numel);
    if (o_.ema > 0)
      state_.ema[size_t(i)] = backend_->allocate(info.numel);
  }
  state_.comm.assign(size_t(p_.num_comm_state), nullptr);
  for (int k = 0; k < p_.num_comm_state; ++k)
    state_.comm[size_t(k)] = backend_->allocate(p_.comm_state[k].numel);
}

int Driver::initialiseRun(uint64_t seed) {
  std::vector<float> host;
  for (int i = 0; i < p_.num_params; ++i) {
    const fcc_param_info &info = p_.params[i];
    float *dst = state_.params[size_t(i)];
    if (info.init) {
      backend_->upload(dst, info.init, info.numel);
    } else {
      host.assign(size_t(info.numel), 0.0f);
      if (fcc_param_init(info.role, info.name, info.numel, info.fan_in, seed,
                         host.data()) != 0)
        return fail(kExitUsage, std::string("cannot initialise parameter '") +
                                    info.name + "' (role " +
                                    std::to_string(info.role) + ", fan-in " +
                                    std::to_string(info.fan_in) + ")");
      backend_->upload(dst, host.data(), info.numel);
    }
    if (state_.momentum[size_t(i)])
      backend_->fillZero(state_.momentum[size_t(i)], info.numel);
    if (state_.ema[size_t(i)])
      backend_->copy(state_.ema[size_t(i)], dst, info.numel);
  }
  for (int k = 0; k < p_.num_comm_state; ++k)
    backend_->fillZero(state_.comm[size_t(k)], p_.comm_state[k].numel);
  return kExitOk;
}

void Driver::syncRunningStatistics() {
  if (world_ == 1)
    return;
  std::vector<float> host;
  std::vector<double> sum;
  for (int i = 0; i < p_.num_params; ++i) {
    const fcc_param_info &info = p_.params[i];
    if (info.role != FCC_ROLE_RUNNING_MEAN && info.role != FCC_ROLE_RUNNING_VAR)
      continue;
    for (float *buf : {state_.params[size_t(i)], state_.ema[size_t(i)]}) {
      if (!buf)
        continue;
      host.resize(size_t(info.numel));
      backend_->download(host.data(), buf, info.numel);
      sum.assign(host.begin(), host.end());
      fcc_comm_allreduce_f64(sum.data(), info.numel, 0);
      for (size_t k = 0; k < host.size(); ++k)
        host[k] = float(sum[k] / world_);
      backend_->upload(buf, host.data(), info.numel);
    }
  }
}

void Driver::evaluate(float *const *params, double &loss, double &acc) {
  const int64_t batch = p_.batch, count = data_.test.count;
  std::vector<int64_t> indices(static_cast<size_t>(batch));
  double metrics[FCC_NUM_METRICS] = {}, sums[FCC_NUM_METRICS] = {};
  backend_->takeMetrics(metrics); // start from zero
  // Rank r evaluates batches r, r + ranks, ...; the sums meet at the end.
  for (int64_t first = rank_ * batch; first < count; first += batch * world_) {
    int64_t valid = std::min(batch, count - first);
    for (int64_t i = 0; i < batch; ++i)
      indices[size_t(i)] = first + std::min(i, valid - 1);
    backend_->loadTestBatch(indices.data(), batch, valid);
    p_.eval_step(params, backend_->batchImages(), backend_->batchLabels(),
                 o_.labelSmoothing, o_.tta ? 1 : 0, backend_->metrics());
    if (backend_->cheapMetrics()) {
      drainMetrics(metrics, sums);
    }
  }
  if (!backend_->cheapMetrics()) {
    drainMetrics(metrics, sums);
  }
  fcc_comm_allreduce_f64(sums, FCC_NUM_METRICS, 0);
  loss = sums[FCC_METRIC_LOSS_SUM] / double(count);
  acc = sums[FCC_METRIC_CORRECT] / double(count);
}

int Driver::dumpStep(uint64_t seed) {
  const std::string &dir = o_.dumpStep;
  if (::mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST)
    return fail(kExitUsage, "--dump-step: cannot create '" + dir +
                                "': " + std::strerror(errno));
  auto saveAll = [&](const char *suffix) -> bool {
    for (int i = 0; i < p_.num_params; ++i) {
      const fcc_param_info &info = p_.params[i];
      std::vector<float> host(size_t(info.numel));
      backend_->download(host.data(), state_.params[size_t(i)], info.numel);
      std::string path =
          dir + "/p" + std::to_string(i) + "." + suffix + ".f32";
      std::ofstream f(path, std::ios::binary);
      f.write(reinterpret_cast<const char *>(host.data()),
              std::streamsize(host.size() * sizeof(float)));
      if (!f)
        return false;
    }
    return true;
  };
  if (!saveAll("before"))
    return fail(kExitUsage, "--dump-step: cannot write into '" + dir + "'");
  std::vector<int64_t> indices(static_cast<size_t>(p_.batch));
  for (int64_t i = 0; i < p_.batch; ++i)
    indices[size_t(i)] = i;
  std::vector<ExampleAugment> draws(static_cast<size_t>(p_.batch));
  backend_->loadTrainBatch(indices.data(), draws.data(), AugmentConfig{},
                           p_.batch);
  fcc_hyper hyper{};
  hyper.lr = float(o_.lr.atStep(0, 1));
  hyper.momentum = o_.momentum;
  hyper.weight_decay = o_.weightDecay;
  hyper.nesterov = o_.nesterov ? 1.0f : 0.0f;
  hyper.label_smoothing = o_.labelSmoothing;
  hyper.loss_scale = p_.loss_scaling ? o_.lossScale : 1.0f;
  hyper.seed = stepSeed(seed, 0);
  double metrics[FCC_NUM_METRICS] = {};
  backend_->takeMetrics(metrics);
  p_.train_step(state_.params.data(), state_.momentum.data(),
                backend_->batchImages(), backend_->batchLabels(),
                backend_->stageHyper(hyper), backend_->metrics(),
                state_.comm.data());
  backend_->synchronize();
  backend_->takeMetrics(metrics);
  if (!saveAll("after"))
    return fail(kExitUsage, "--dump-step: cannot write into '" + dir + "'");
  std::ofstream m(dir + "/manifest.json");
  m << "{\"target\": \"" << (p_.target ? p_.target : "") << "\", "
    << "\"precision\": \"" << (p_.precision ? p_.precision : "fp32")
    << "\", \"batch\": " << p_.batch << ", \"seed\": " << seed
    << ", \"lr\": " << formatShortest(hyper.lr)
    << ", \"loss\": " << formatShortest(metrics[FCC_METRIC_LOSS_SUM] /
                                          double(p_.batch))
    << ", \"correct\": " << formatShortest(metrics[FCC_METRIC_CORRECT])
    << ", \"skipped\": " << formatShortest(metrics[FCC_METRIC_SKIPPED])
    << ", \"params\": [";
  for (int i = 0; i < p_.num_params; ++i) {
    const fcc_param_info &info = p_.params[i];
    m << (i ? ", " : "") << "{\"name\": \"" << info.name
      << "\", \"trainable\": " << info.trainable << ", \"shape\": [";
    for (int d = 0; d < info.rank; ++d)
      m << (d ? ", " : "") << info.shape[d];
    m << "], \"before\": \"p" << i << ".before.f32\", \"after\": \"p" << i
      << ".after.f32\"}";
  }
  m << "]}\n";
  if (!m)
    return fail(kExitUsage, "--dump-step: cannot write '" + dir +
                                "/manifest.json'");
  out_ << "dumped one step (loss "
       << formatShortest(metrics[FCC_METRIC_LOSS_SUM] / double(p_.batch))
       << ") to " << dir << "\n";
  return kExitOk;
}

std::string Driver::settings() const {
  return "seed " + std::to_string(o_.seed) + ", epochs " +
         std::to_string(o_.epochs) + ", lr-knots " + o_.lr.toString() +
         ", momentum " + formatShortestFloat(o_.momentum) +
         (o_.nesterov ? " (nesterov)" : "") + ", wd " +
         formatShortestFloat(o_.weightDecay) + ", label-smoothing " +
         formatShortestFloat(o_.labelSmoothing) + ", ema " + formatShortestFloat(o_.ema) +
         " every " + std::to_string(o_.emaEvery) + ", crop-pad " +
         std::to_string(augment_.pad) + ", flip " +
         (augment_.flip ? "on" : "off") + ", cutout " +
         std::to_string(augment_.cutout) + ", train images " +
         std::to_string(data_.train.count) + ", test images " +
         std::to_string(data_.test.count) +
         (p_.loss_scaling
              ? ", loss-scale-window " + std::to_string(o_.lossScaleWindow)
              : std::string());
}

Checkpoint Driver::checkpointHeader(int run, uint64_t seed) const {
  Checkpoint c;
  c.planHash = p_.plan_hash;
  c.target = p_.target ? p_.target : "";
  c.precision = p_.precision ? p_.precision : "fp32";
  c.batch = p_.batch;
  c.seed = seed;
  c.run = run;
  c.trainImages = data_.train.count;
  c.settings = settings();
  return c;
}

std::vector<CheckpointTensor> Driver::stateTable() const {
  std::vector<CheckpointTensor> table;
  for (int i = 0; i < p_.num_params; ++i) {
    const fcc_param_info &info = p_.params[i];
    for (auto kind : {CheckpointTensor::kParam, CheckpointTensor::kMomentum,
                      CheckpointTensor::kEma}) {
      const std::vector<float *> &bufs =
          kind == CheckpointTensor::kParam      ? state_.params
          : kind == CheckpointTensor::kMomentum ? state_.momentum
                                                : state_.ema;
      if (!bufs[size_t(i)])
        continue;
      CheckpointTensor t;
      t.name = info.name ? info.name : "";
      t.kind = kind;
      t.index = uint32_t(i);
      t.values.resize(size_t(info.numel)); // sized; filled by the caller
      table.push_back(std::move(t));
    }
  }
  for (int k = 0; k < p_.num_comm_state; ++k) {
    CheckpointTensor t;
    t.name = p_.comm_state[k].name;
    t.kind = CheckpointTensor::kCommState;
    t.index = uint32_t(k);
    t.values.resize(size_t(p_.comm_state[k].numel));
    table.push_back(std::move(t));
  }
  return table;
}

std::string Driver::saveCheckpoint(Checkpoint &c) {
  backend_->synchronize();
  c.tensors = stateTable();
  for (CheckpointTensor &t : c.tensors)
    backend_->download(t.values.data(), stateBuffer(t),
                       int64_t(t.values.size()));
  WrittenFile written;
  try {
    lastCheckpoint_ = writeCheckpoint(o_.checkpointDir, c, 2, &written);
  } catch (const CheckpointError &e) {
    fail(kExitUsage, std::string("--checkpoint-dir: ") + e.what());
    return "";
  }
  if (deltaMode())
    keepBase(c, lastCheckpoint_, written.checksum, written.bytes);
  c.tensors.clear();
  return lastCheckpoint_;
}

void Driver::keepBase(Checkpoint &c, const std::string &path,
                      uint64_t checksum, uint64_t bytes) {
  base_ = Checkpoint();
  base_.planHash = c.planHash;
  base_.step = c.step;
  base_.checksum = checksum;
  for (CheckpointTensor &t : c.tensors)
    if (t.kind == CheckpointTensor::kParam || t.kind == CheckpointTensor::kEma)
      base_.tensors.push_back(std::move(t));
  baseName_ = std::filesystem::path(path).filename().string();
  baseBytes_ = bytes;
}

std::string Driver::saveDelta(Checkpoint &c) {
  backend_->synchronize();
  c.tensors.clear();
  std::vector<bool> whole;
  for (CheckpointTensor &t : stateTable()) {
    if (t.kind != CheckpointTensor::kParam && t.kind != CheckpointTensor::kEma)
      continue;
    backend_->download(t.values.data(), stateBuffer(t),
                       int64_t(t.values.size()));
    // Biases and BatchNorm vectors (scale, shift, running statistics) are
    // stored whole: they are a small part of the entries and the model
    // depends on every one of them.
    whole.push_back(p_.params[t.index].rank <= 1);
    c.tensors.push_back(std::move(t));
  }
  std::string path;
  WrittenFile written;
  int64_t stored = 0, total = 0;
  try {
    Delta d = makeDelta(base_, baseName_, c, o_.checkpointMode, whole);
    for (const DeltaTensor &t : d.tensors) {
      stored += int64_t(t.indices.size());
      total += t.numel;
    }
    path = writeDelta(o_.checkpointDir, d, &written);
  } catch (const CheckpointError &e) {
    c.tensors.clear();
    fail(kExitUsage, std::string("--checkpoint-mode: ") + e.what());
    return "";
  }
  c.tensors.clear();
  say("delta     " + path + ": " + std::to_string(written.bytes) +
      " bytes = " +
      fmt("%.2f%%", 100.0 * double(written.bytes) /
                        double(std::max<uint64_t>(baseBytes_, 1))) +
      " of the full checkpoint " + baseName_ + " (" +
      std::to_string(baseBytes_) + " bytes); " + std::to_string(stored) +
      " of " + std::to_string(total) + " values (" +
      o_.checkpointMode.toString() + ")");
  return path;
}

int Driver::stopped(int sig, Checkpoint &c) {
  const char *what = sig == SIGTERM ? "SIGTERM"
                     : sig == SIGINT ? "SIGINT"
                                     : "--debug-stop-after-steps";
  std::string where = "after step " + std::to_string(c.step) + " (epoch " +
                      std::to_string(c.epoch) + ", step " +
                      std::to_string(c.stepInEpoch) + " of the epoch)";
  if (o_.checkpointDir.empty()) {
    err_ << name_ << ": stopped by " << what << " " << where
         << "; nothing was saved (no --checkpoint-dir)\n";
  } else {
    std::string path = saveCheckpoint(c);
    if (path.empty())
      return kExitUsage;
    err_ << name_ << ": stopped by " << what << " " << where
         << "; checkpoint written to " << path
         << "; continue with --resume --checkpoint-dir " << o_.checkpointDir
         << "\n";
  }
  err_ << std::flush;
  return sig == SIGTERM ? kExitTerminated : kExitInterrupted;
}

int Driver::resume(std::unique_ptr<Checkpoint> &from) {
  const std::string &dir = o_.checkpointDir;
  std::vector<std::string> files = listCheckpoints(dir);
  if (files.empty())
    return fail(kExitUsage, "--resume: no checkpoint (checkpoint-NNNNNN.fcc) "
                            "in '" + dir + "'");
  if (world_ > 1) {
    // Every rank resumes from the same step: the newest that all of them
    // wrote validly (a rank may have died before writing its last one).
    int64_t mine = -1;
    for (const std::string &path : files) {
      try {
        mine = readCheckpoint(path).step;
        break;
      } catch (const CheckpointError &) {
      }
    }
    double newest = -double(mine); // the minimum, as a maximum
    fcc_comm_allreduce_f64(&newest, 1, 1);
    int64_t agreed = int64_t(-newest);
    if (agreed < 0)
      return fail(kExitUsage, "--resume: some rank has no valid checkpoint "
                              "(this one: " + dir + ")");
    char name[64];
    std::snprintf(name, sizeof name, "checkpoint-%06lld.fcc",
                  (long long)agreed);
    std::vector<std::string> kept;
    for (const std::string &path : files)
      if (path.size() >= std::strlen(name) &&
          path.compare(path.size() - std::strlen(name), std::string::npos,
                       name) == 0)
        kept.push_back(path);
    if (kept.empty())
      return fail(kExitUsage, "--resume: the ranks' newest common checkpoint "
                              "is step " + std::to_string(agreed) +
                              ", which " + dir + " does not hold");
    files = kept;
  }
  std::string firstError;
  for (const std::string &path : files) {
    try {
      from = std::make_unique<Checkpoint>(readCheckpoint(path));
    } catch (const CheckpointError &e) {
      if (firstError.empty())
        firstError = e.what();
      err_ << name_ << ": warning: " << e.what()
           << "; trying an older checkpoint\n";
      continue;
    }
    int rc = adopt(*from, path, "--resume");
    if (rc != kExitOk) {
      from.reset();
      return rc;
    }
    if (deltaMode()) {
      std::error_code ec;
      uint64_t bytes = std::filesystem::file_size(path, ec);
      keepBase(*from, path, from->checksum, ec ? 0 : bytes);
    }
    from->tensors.clear();
    say("resume    " + path + ": epoch " + std::to_string(from->epoch) +
        ", step " + std::to_string(from->step) + " of the run (" +
        std::to_string(from->stepInEpoch) + " into the epoch)");
    return kExitOk;
  }
  from.reset();
  return fail(kExitUsage, "--resume: no valid checkpoint in '" + dir +
                              "': " + firstError);
}

int Driver::adopt(Checkpoint &c, const std::string &path,
                  const std::string &flag) {
  auto hex = [](uint64_t v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "0x%016llx", (unsigned long long)v);
    return std::string(buf);
  };
  std::string target = p_.target ? p_.target : "";
  if (c.planHash != p_.plan_hash || c.target != target ||
      c.batch != p_.batch)
    return fail(kExitUsage,
                flag + ": checkpoint " + path +
                    " was written by a different compiled model (plan " +
                    hex(c.planHash) + ", " + c.target + ", batch " +
                    std::to_string(c.batch) + " vs plan " +
                    hex(p_.plan_hash) + ", " + target + ", batch " +
                    std::to_string(p_.batch) + " here)");
  if (c.trainImages != data_.train.count)
    return fail(kExitUsage,
                flag + ": checkpoint " + path + " was trained on " +
                    std::to_string(c.trainImages) +
                    " training images per epoch, this run has " +
                    std::to_string(data_.train.count) +
                    " (--data, --train-limit)");
  if (c.run != 1 || c.epoch < 1 || c.stepInEpoch < 0 ||
      c.stepInEpoch > stepsPerEpoch() || c.step < 0)
    return fail(kExitUsage, flag + ": checkpoint " + path +
                                " has an impossible position (run " +
                                std::to_string(c.run) + ", epoch " +
                                std::to_string(c.epoch) + ", step " +
                                std::to_string(c.stepInEpoch) + ")");
  std::vector<CheckpointTensor> want = stateTable();
  bool hasEma = false;
  for (const CheckpointTensor &t : c.tensors)
    hasEma |= t.kind == CheckpointTensor::kEma;
  if (hasEma != (o_.ema > 0))
    return fail(kExitUsage,
                flag + ": checkpoint " + path +
                    (hasEma ? " has EMA weights but --ema is off here"
                            : " has no EMA weights but --ema is on here"));
  bool same = want.size() == c.tensors.size();
  for (size_t i = 0; same && i < want.size(); ++i)
    same = want[i].name == c.tensors[i].name &&
           want[i].kind == c.tensors[i].kind &&
           want[i].index == c.tensors[i].index &&
           want[i].values.size() == c.tensors[i].values.size();
  if (!same)
    return fail(kExitUsage, flag + ": checkpoint " + path +
                                " holds other tensors than this model's "
                                "state (names, sizes)");
  // The run's seed is the checkpoint's; the other flags are this run's.
  o_.seed = c.seed;
  if (c.settings != settings() && !o_.evalOnly)
    err_ << name_ << ": warning: resuming with other settings than the "
         << "checkpoint's, so the result will differ from an "
            "uninterrupted run\n  checkpoint: "
         << c.settings << "\n  now:        " << settings() << "\n";
  for (const CheckpointTensor &t : c.tensors)
    backend_->upload(stateBuffer(t), t.values.data(),
                     int64_t(t.values.size()));
  lastCheckpoint_ = path;
  return kExitOk;
}

int Driver::restoreFromDelta(std::unique_ptr<Checkpoint> &from) {
  if (world_ > 1)
    return fail(kExitUsage, "--restore-delta: runs on one rank only (each "
                            "rank writes its own deltas)");
  std::string basePath;
  try {
    from = std::make_unique<Checkpoint>(
        restoreDelta(o_.restoreDelta, &basePath));
  } catch (const CheckpointError &e) {
    from.reset();
    return fail(kExitUsage, std::string("--restore-delta: ") + e.what());
  }
  int rc = adopt(*from, o_.restoreDelta, "--restore-delta");
  if (rc != kExitOk) {
    from.reset();
    return rc;
  }
  from->tensors.clear();
  say("restore   " + o_.restoreDelta + " on its base " + basePath +
      ": epoch " + std::to_string(from->epoch) + ", step " +
      std::to_string(from->step) + " of the run (" +
      std::to_string(from->stepInEpoch) + " into the epoch)");
  if (!o_.evalOnly)
    err_ << name_ << ": warning: training on from a delta checkpoint is "
         << "approximate: the weights are those of step " << from->step
         << " as far as the delta holds them, but the momentum"
         << (p_.num_comm_state > 0 ? " and the error-feedback residuals are"
                                   : " is")
         << " that of the base " << basePath << "\n";
  return kExitOk;
}

int Driver::evalOnly(const std::string &what) {
  float *const *evalParams =
      o_.ema > 0 ? state_.ema.data() : state_.params.data();
  syncRunningStatistics();
  double loss = 0, acc = 0;
  evaluate(evalParams, loss, acc);
  if (rank_ == 0) {
    long long correct = std::llround(acc * double(data_.test.count));
    out_ << "eval      " << what << (o_.ema > 0 ? " (EMA weights)" : "")
         << ": test loss " << fmt("%.4f", loss) << ", test acc "
         << fmt("%.4f", acc) << " (" << correct << " of "
         << data_.test.count << " images)\n"
         << std::flush;
  }
  return kExitOk;
}

int Driver::trainRun(int run, uint64_t seed, RunSummary &summary,
                     const Checkpoint *from) {
  const int64_t batch = p_.batch;
  const int64_t stepsPerEpoch = this->stepsPerEpoch();
  // Dynamic loss scaling (fp16 programs): a step whose gradients overflowed
  // was skipped by the program (SKIPPED metric): halve the scale; double it
  // after lossScaleWindow clean steps in a row. A backend with
  // deviceLossScale() (a GPU) applies this rule in target memory after each
  // step; otherwise the trainer owns the scale and needs the metrics of
  // every step.
  const bool scaling = p_.loss_scaling != 0;
  const bool deviceScale = scaling && backend_->deviceLossScale();
  // Metrics are read after every step on the CPU (running loss, divergence
  // check) and when the host keeps the loss scale; a GPU reads them once
  // per epoch (and at step checkpoints and stops).
  const bool cheap = backend_->cheapMetrics() || (scaling && !deviceScale);
  std::vector<ExampleAugment> draws(static_cast<size_t>(batch));
  float *const *params = state_.params.data();
  float *const *momentum = state_.momentum.data();
  float *const *evalParams =
      o_.ema > 0 ? state_.ema.data() : state_.params.data();
  const float emaDecay =
      o_.ema > 0 ? float(std::pow(double(o_.ema), double(o_.emaEvery))) : 0;
  const bool checkpoints = !o_.checkpointDir.empty();

  summary = RunSummary();
  summary.run = run;
  summary.seed = seed;
  if (o_.runs > 1)
    say("run " + std::to_string(run) + " of " + std::to_string(o_.runs) +
        " (seed " + std::to_string(seed) + ")");
  say(tableHeader());
  ProgressBar bar(out_, progress_ && !o_.quiet);

  fcc_hyper hyper{};
  hyper.momentum = o_.momentum;
  hyper.weight_decay = o_.weightDecay;
  hyper.nesterov = o_.nesterov ? 1.0f : 0.0f;
  hyper.label_smoothing = o_.labelSmoothing;
  hyper.loss_scale = 1.0f;

  // The loss scale and clean-step count; with deviceScale the host copy is
  // refreshed from the backend (syncLossScale) where it is needed.
  double lossScale = scaling ? o_.lossScale : 1.0;
  int64_t cleanSteps = 0;

  double totalTime = 0;
  int64_t step = 0;
  int firstEpoch = 1;
  if (from) {
    lossScale = from->lossScale;
    cleanSteps = from->cleanSteps;
    totalTime = from->totalTime;
    step = from->step;
    firstEpoch = from->epoch;
    summary.epochs = from->summaryEpochs;
    summary.testAcc = from->testAcc;
    summary.testLoss = from->testLoss;
    summary.trainTime = from->trainTime;
    summary.trainImages = from->summaryTrainImages;
    summary.targetEpoch = from->targetEpoch;
    summary.targetTime = from->targetTime;
  }
  if (deviceScale)
    backend_->setLossScale(lossScale, cleanSteps);
  auto syncLossScale = [&] {
    if (deviceScale)
      backend_->readLossScale(lossScale, cleanSteps);
  };
  // The checkpoint of the current position (state tensors added on save).
  auto position = [&](int epoch, int64_t stepInEpoch, const double *sums,
                      double epochTime) {
    syncLossScale();
    Checkpoint c = checkpointHeader(run, seed);
    c.epoch = epoch;
    c.stepInEpoch = stepInEpoch;
    c.step = step;
    c.lossScale = lossScale;
    c.cleanSteps = cleanSteps;
    for (int k = 0; k < FCC_NUM_METRICS; ++k)
      c.sums[k] = sums ? sums[k] : 0.0;
    c.epochTime = epochTime;
    c.totalTime = totalTime;
    c.summaryEpochs = summary.epochs;
    c.testAcc = summary.testAcc;
    c.testLoss = summary.testLoss;
    c.trainTime = summary.trainTime;
    c.summaryTrainImages = summary.trainImages;
    c.targetEpoch = summary.targetEpoch;
    c.targetTime = summary.targetTime;
    return c;
  };
  // Deltas need a base: a fresh run (or one restored from a delta) starts
  // with a full checkpoint of its starting point.
  if (checkpoints && deltaMode() && baseName_.empty()) {
    Checkpoint c = from ? position(firstEpoch, from->stepInEpoch, from->sums,
                                   from->epochTime)
                        : position(1, 0, nullptr, 0);
    std::string path = saveCheckpoint(c);
    if (path.empty())
      return kExitUsage;
    say("checkpoint " + path + " (the base of the first deltas)");
  }
  auto diverged = [&](const std::string &message) {
    std::string kept;
    if (checkpoints)
      kept = lastCheckpoint_.empty()
                 ? "; no checkpoint was written before"
                 : "; the last good checkpoint is " + lastCheckpoint_;
    return fail(kExitDiverged, message + kept);
  };
  for (int epoch = firstEpoch; epoch <= o_.epochs; ++epoch) {
    Clock::time_point start = Clock::now();
    std::vector<int64_t> order =
        epochOrder(data_.train.count, Shard{rank_, world_}, seed, epoch - 1);
    double sums[FCC_NUM_METRICS] = {}, metrics[FCC_NUM_METRICS] = {};
    double priorTime = 0; // of this epoch, before a resume
    int64_t firstStep = 0;
    if (from && epoch == firstEpoch) {
      for (int k = 0; k < FCC_NUM_METRICS; ++k)
        sums[k] = from->sums[k];
      priorTime = from->epochTime;
      firstStep = from->stepInEpoch;
    }
    backend_->takeMetrics(metrics); // start from zero
    fcc_comm_stats commStats;
    fcc_comm_take_stats(&commStats); // start from zero
    for (int64_t s = firstStep; s < stepsPerEpoch; ++s) {
      const int64_t *indices = order.data() + s * batch;
      for (int64_t i = 0; i < batch; ++i)
        draws[size_t(i)] =
            drawAugmentation(augment_, p_.height, p_.width, seed, epoch - 1,
                             indices[i]);
      backend_->loadTrainBatch(indices, draws.data(), augment_, batch);
      hyper.lr = float(o_.lr.atStep(step, stepsPerEpoch));
      hyper.seed = stepSeed(seed, step);
      // With deviceScale stageHyper ignores a finite staged scale (the
      // backend's own is used); the injected +inf still reaches the step.
      hyper.loss_scale = float(lossScale);
      if (step == o_.injectOverflow)
        hyper.loss_scale = std::numeric_limits<float>::infinity();
      p_.train_step(params, momentum, backend_->batchImages(),
                    backend_->batchLabels(), backend_->stageHyper(hyper),
                    backend_->metrics(), state_.comm.data());
      if (deviceScale)
        backend_->updateLossScale(o_.lossScaleWindow);
      if (o_.ema > 0 && (step + 1) % o_.emaEvery == 0)
        p_.ema_update(state_.ema.data(), params, emaDecay);
      // Several ranks stop together: on a signal any of them got, or when
      // any of them saw a non-finite loss.
      int agreedSignal = gStopSignal;
      bool lossNonFinite = false;
      if (cheap) {
        drainMetrics(metrics, sums);
        lossNonFinite = !std::isfinite(metrics[FCC_METRIC_LOSS_SUM]);
      }
      if (world_ > 1) {
        double flags[2] = {double(agreedSignal), lossNonFinite ? 1.0 : 0.0};
        fcc_comm_allreduce_f64(flags, 2, 1);
        agreedSignal = int(flags[0]);
        lossNonFinite = flags[1] > 0;
      }
      if (cheap) {
        if (scaling && !deviceScale) {
          if (metrics[FCC_METRIC_SKIPPED] > 0) {
            lossScale = std::max(1.0, lossScale / 2);
            cleanSteps = 0;
          } else if (++cleanSteps >= o_.lossScaleWindow) {
            lossScale = std::min(1e30, lossScale * 2);
            cleanSteps = 0;
          }
        }
        if (lossNonFinite) {
          bar.clear();
          return diverged("training diverged: the loss of step " +
                          std::to_string(step) + " (epoch " +
                          std::to_string(epoch) + ", lr " +
                          formatShortest(hyper.lr) +
                          ") is not finite; lower the learning rate "
                          "(--lr-knots)");
        }
        double seen = double((s + 1) * batch);
        bar.update(epoch, o_.epochs, s + 1, stepsPerEpoch,
                   sums[FCC_METRIC_LOSS_SUM] / seen,
                   seen / std::max(secondsSince(start), 1e-9));
      }
      ++step;
      if (!o_.fault.kind.empty() && step == o_.fault.step &&
          rank_ == o_.fault.rank) {
        err_ << name_ << ": --debug-fault: rank " << rank_ << " "
             << (o_.fault.kind == "kill" ? "kills itself" : "stops answering")
             << " after step " << step << "\n" << std::flush;
        std::raise(o_.fault.kind == "kill" ? SIGKILL : SIGSTOP);
      }
      // Stop requests and step checkpoints, between steps.
      int sig = agreedSignal;
      if (sig == 0 && o_.stopAfterSteps > 0 && step == o_.stopAfterSteps)
        sig = -1;
      bool periodic = checkpoints && o_.checkpointEverySteps > 0 &&
                      step % o_.checkpointEverySteps == 0;
      // No delta where a full checkpoint is written (now or at the end of
      // this epoch).
      bool fullAtEpochEnd =
          checkpoints && s + 1 == stepsPerEpoch &&
          (epoch == o_.epochs || (o_.checkpointEveryEpochs > 0 &&
                                  epoch % o_.checkpointEveryEpochs == 0));
      bool deltaNow = checkpoints && deltaMode() &&
                      o_.deltaEverySteps > 0 &&
                      step % o_.deltaEverySteps == 0 && !periodic &&
                      !fullAtEpochEnd && step != base_.step;
      if (sig != 0 || periodic || deltaNow) {
        if (!cheap) {
          drainMetrics(metrics, sums);
          if (!std::isfinite(sums[FCC_METRIC_LOSS_SUM])) {
            bar.clear();
            return diverged("training diverged in epoch " +
                            std::to_string(epoch) +
                            ": the training loss is not finite; lower the "
                            "learning rate (--lr-knots)");
          }
        }
        backend_->synchronize();
        Checkpoint c =
            position(epoch, s + 1, sums, priorTime + secondsSince(start));
        bar.clear();
        if (sig != 0)
          return stopped(sig, c);
        if ((periodic ? saveCheckpoint(c) : saveDelta(c)).empty())
          return kExitUsage;
      }
    }
    if (!cheap) {
      drainMetrics(metrics, sums);
    }
    backend_->synchronize();
    double epochTime = priorTime + secondsSince(start);
    fcc_comm_take_stats(&commStats);
    // The epoch's metrics over all ranks' shards.
    fcc_comm_allreduce_f64(sums, FCC_NUM_METRICS, 0);
    totalTime += epochTime;
    bar.clear();

    EpochRecord r;
    r.run = run;
    r.seed = seed;
    r.epoch = epoch;
    r.lr = o_.lr.atStep(step, stepsPerEpoch);
    double trained = double(stepsPerEpoch * batch * world_);
    r.trainLoss = sums[FCC_METRIC_LOSS_SUM] / trained;
    r.trainAcc = sums[FCC_METRIC_CORRECT] / trained;
    r.skippedSteps = int64_t(sums[FCC_METRIC_SKIPPED]) / world_;
    syncLossScale();
    r.lossScale = lossScale;
    r.steps = stepsPerEpoch;
    r.trainImages = stepsPerEpoch * batch * world_;
    r.ranks = world_;
    // Steps this process ran in the epoch (fewer after a resume).
    const int64_t stepsRun =
        stepsPerEpoch - (from && epoch == firstEpoch ? from->stepInEpoch : 0);
    if (p_.collectives && world_ > 1 && stepsRun > 0) {
      const double steps = double(stepsRun);
      std::vector<uint64_t> bytes(static_cast<size_t>(world_));
      fcc_comm_allgather_u64(commStats.bytes_sent, bytes.data());
      for (uint64_t b : bytes) {
        r.commBytesPerStep.push_back(double(b) / steps);
        r.commBytesEpoch.push_back(double(b));
      }
      r.denseBytesPerStep = 4.0 * double(p_.grad_numel);
      r.compressSeconds = commStats.compress_seconds;
      r.commSeconds = commStats.comm_seconds;
    }
    r.testImages = data_.test.count;
    r.epochTime = epochTime;
    r.totalTime = totalTime;
    if (!std::isfinite(r.trainLoss))
      return diverged("training diverged in epoch " + std::to_string(epoch) +
                      ": the training loss is not finite; lower the "
                      "learning rate (--lr-knots)");
    Clock::time_point evalStart = Clock::now();
    syncRunningStatistics();
    evaluate(evalParams, r.testLoss, r.testAcc);
    r.evalTime = secondsSince(evalStart);

    say(tableRow(r));
    if (!commLine(r).empty())
      say(commLine(r));
    if (r.skippedSteps > 0)
      say("          " + std::to_string(r.skippedSteps) + " step" +
          (r.skippedSteps == 1 ? "" : "s") +
          " skipped (gradients overflowed); loss scale now " +
          formatShortest(lossScale));
    json_.add(r);
    tsv_.add(r);
    summary.epochs = epoch;
    summary.testAcc = r.testAcc;
    summary.testLoss = r.testLoss;
    summary.trainTime = totalTime;
    summary.trainImages += r.trainImages;
    if (o_.targetAcc && summary.targetEpoch == 0 &&
        r.testAcc >= *o_.targetAcc) {
      summary.targetEpoch = epoch;
      summary.targetTime = totalTime;
    }
    // Epoch checkpoints (and the final one) hold the next epoch's start.
    int sig = gStopSignal;
    if (world_ > 1) {
      double agreed = double(sig);
      fcc_comm_allreduce_f64(&agreed, 1, 1);
      sig = int(agreed);
    }
    bool last = epoch == o_.epochs;
    if (checkpoints &&
        (last || sig != 0 ||
         (o_.checkpointEveryEpochs > 0 &&
          epoch % o_.checkpointEveryEpochs == 0))) {
      Checkpoint c = position(epoch + 1, 0, nullptr, 0);
      if (sig != 0 && !last)
        return stopped(sig, c);
      std::string path = saveCheckpoint(c);
      if (path.empty())
        return kExitUsage;
      if (last)
        say("checkpoint " + path);
    } else if (sig != 0 && !last) {
      Checkpoint c = position(epoch + 1, 0, nullptr, 0);
      return stopped(sig, c);
    } else if (checkpoints && deltaMode() && o_.deltaEveryEpochs > 0 &&
               epoch % o_.deltaEveryEpochs == 0 && step != base_.step) {
      Checkpoint c = position(epoch + 1, 0, nullptr, 0);
      if (saveDelta(c).empty())
        return kExitUsage;
    }
  }
  if (rank_ == 0)
    out_ << runSummaryLine(summary, o_.targetAcc) << "\n" << std::flush;
  return kExitOk;
}

int Driver::main(int argc, char **argv) {
  int rc = parseOptions(p_, name_, argc, argv, o_, out_, err_);
  if (rc >= 0)
    return rc;
  if ((rc = checkProgram()) != kExitOk)
    return rc;
  if ((rc = startRanks(argc, argv)) != kExitOk)
    return rc;
  if (o_.threads > 0)
    fcc_cpu_set_num_threads(o_.threads);
  std::string target = p_.target ? p_.target : "";
  try {
    backend_ = makeBackend(target);
  } catch (const NoDeviceError &e) {
    return fail(kExitNoDevice, e.what());
  }
  if (!backend_)
    return fail(kExitNoDevice, "this trainer has no backend for target '" +
                                   target + "' (built without it)");
  if ((rc = loadData()) != kExitOk)
    return rc;
  augment_.pad = o_.cropPad;
  augment_.flip = o_.flip;
  augment_.cutout = o_.cutout;
  printSettings();
  {
    // Every rank must run the same program on the same data and settings.
    std::vector<uint64_t> hashes(static_cast<size_t>(world_));
    fcc_comm_allgather_u64(p_.plan_hash ^ fcc_fnv1a64(settings().c_str()),
                           hashes.data());
    for (int r = 1; r < world_; ++r)
      if (hashes[size_t(r)] != hashes[0])
        return fail(kExitUsage,
                    "rank " + std::to_string(r) + " runs another program or "
                    "other settings than rank 0 (same trainer, flags and "
                    "data on every rank, please)");
  }
  // Output, metrics and exports come from rank 0; checkpoints are per rank
  // (each keeps its own error-feedback residuals).
  if (rank_ != 0) {
    o_.metricsPath.clear();
    o_.tsvPath.clear();
  }
  if (world_ > 1 && !o_.checkpointDir.empty()) {
    ::mkdir(o_.checkpointDir.c_str(), 0777);
    o_.checkpointDir += "/rank-" + std::to_string(rank_);
  }
  if (!o_.metricsPath.empty() && !json_.open(o_.metricsPath, o_.resume))
    return fail(kExitUsage, "--metrics: cannot write '" + o_.metricsPath + "'");
  if (!o_.tsvPath.empty() && !tsv_.open(o_.tsvPath, o_.runs > 1, o_.resume))
    return fail(kExitUsage, "--tsv: cannot write '" + o_.tsvPath + "'");

  backend_->setTimingCache(o_.timingCache);
  if (p_.setup() != 0) {
    std::string why = p_.last_error ? p_.last_error() : "unknown error";
    return fail(target == "cpu" ? kExitUsage : kExitNoDevice,
                "setting up the program failed: " + why);
  }
  struct Teardown {
    const fcc_program &p;
    ~Teardown() {
      if (p.teardown)
        p.teardown();
    }
  } teardown{p_};

  backend_->setImageLayout(p_.image_layout);
  backend_->setData(data_.train, data_.test, norm_, p_.batch);
  allocateState();
  std::string memory = backend_->memoryReport();
  if (!memory.empty())
    say("memory    " + memory);
  if (!o_.dumpStep.empty()) {
    if (world_ > 1)
      return fail(kExitUsage, "--dump-step runs on one rank only");
    if ((rc = initialiseRun(o_.seed)) != kExitOk)
      return rc;
    return dumpStep(o_.seed);
  }
  StopSignals signals;
  std::unique_ptr<Checkpoint> from;
  if (o_.resume && (rc = resume(from)) != kExitOk)
    return rc;
  if (!o_.restoreDelta.empty() && (rc = restoreFromDelta(from)) != kExitOk)
    return rc;
  if (o_.evalOnly) {
    std::string what;
    if (!from) {
      if ((rc = initialiseRun(o_.seed)) != kExitOk)
        return rc;
      what = "the initial weights (seed " + std::to_string(o_.seed) + ")";
    } else {
      what = lastCheckpoint_ + " (step " + std::to_string(from->step) + ")";
    }
    if ((rc = evalOnly(what)) != kExitOk)
      return rc;
    if (!o_.exportOnnx.empty() && rank_ == 0)
      return exportModel();
    return kExitOk;
  }
  std::vector<RunSummary> summaries;
  for (int run = 1; run <= o_.runs; ++run) {
    uint64_t seed = o_.seed + uint64_t(run - 1);
    if (!from && (rc = initialiseRun(seed)) != kExitOk)
      return rc;
    RunSummary summary;
    rc = trainRun(run, seed, summary, from.get());
    from.reset();
    if (rc != kExitOk)
      return rc;
    summaries.push_back(summary);
  }
  if (o_.runs > 1 && rank_ == 0)
    out_ << distributionSummary(summaries, o_.targetAcc) << "\n";
  if (!o_.exportOnnx.empty() && rank_ == 0)
    return exportModel();
  return kExitOk;
}

int Driver::startRanks(int &argc, char **&argv) {
  char why[256] = "";
  if (fcc_comm_init(&argc, &argv, o_.commTimeout, why, sizeof why) != 0)
    return fail(kExitUsage, std::string("starting the ranks: ") + why);
  rank_ = fcc_comm_rank();
  world_ = fcc_comm_size();
  if (rank_ != 0) {
    o_.quiet = true;
    name_ += " (rank " + std::to_string(rank_) + ")";
  }
  // Under mpirun rank 0's stdout is a pseudo-terminal even when the job's
  // output goes to a file: no in-place progress bar on several ranks.
  if (world_ > 1)
    progress_ = false;
  if (world_ > 1 && !p_.collectives)
    return fail(kExitUsage,
                "this trainer was compiled without collectives (target " +
                    std::string(p_.target ? p_.target : "?") +
                    ") and runs on one rank only; it was started on " +
                    std::to_string(world_));
  if (world_ > 1 && o_.runs > 1)
    return fail(kExitUsage, "--runs > 1 is not supported on several ranks");
  return kExitOk;
}

int Driver::exportModel() {
  // The weights evaluation uses: the EMA copies when --ema is on.
  const std::vector<float *> &source =
      o_.ema > 0 ? state_.ema : state_.params;
  std::vector<ExportTensor> tensors;
  for (int i = 0; i < p_.num_params; ++i) {
    const fcc_param_info &info = p_.params[i];
    ExportTensor t;
    t.name = info.name;
    t.shape.assign(info.shape, info.shape + info.rank);
    t.values.resize(size_t(info.numel));
    backend_->download(t.values.data(), source[size_t(i)], info.numel);
    tensors.push_back(std::move(t));
  }
  std::string bytes;
  ExportOptions options;
  options.foldBatchNorm = o_.exportFoldBn;
  ExportReport report;
  try {
    bytes = withInitializers(
        std::string(p_.onnx_model, size_t(p_.onnx_model_size)), tensors,
        options, &report);
  } catch (const ExportError &e) {
    return fail(kExitUsage, std::string("--export-onnx: ") + e.what());
  }
  std::string temp = o_.exportOnnx + ".tmp";
  {
    std::ofstream f(temp, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), std::streamsize(bytes.size()));
    if (!f)
      return fail(kExitUsage, "--export-onnx: cannot write '" + temp + "'");
  }
  if (std::rename(temp.c_str(), o_.exportOnnx.c_str()) != 0)
    return fail(kExitUsage, "--export-onnx: cannot write '" + o_.exportOnnx +
                                "': " + std::strerror(errno));
  std::string notes;
  if (o_.ema > 0)
    notes = "EMA weights";
  if (o_.exportFoldBn)
    notes += std::string(notes.empty() ? "" : "; ") +
             std::to_string(report.folded) + " BatchNormalization" +
             (report.folded == 1 ? "" : "s") + " folded into Convs, " +
             std::to_string(report.keptBatchNorms) + " kept";
  out_ << "exported the trained model"
       << (notes.empty() ? "" : " (" + notes + ")") << " to " << o_.exportOnnx
       << "\n";
  for (const std::string &why : report.whyKept)
    out_ << "  kept " << why << "\n";
  return kExitOk;
}

} // namespace

int run(const fcc_program *program, int argc, char **argv, std::ostream &out,
        std::ostream &err, bool progress) {
  std::string name = baseName(argc > 0 ? argv[0] : nullptr);
  if (!program) {
    err << name << ": error: no compiled program\n";
    return kExitUsage;
  }
  int rc;
  try {
    Driver driver(*program, name, out, err, progress);
    rc = driver.main(argc, argv);
  } catch (const std::bad_alloc &) {
    err << name << ": error: out of memory\n";
    rc = kExitUsage;
  } catch (const std::exception &e) {
    err << name << ": error: " << e.what() << "\n";
    rc = kExitUsage;
  }
  // Several ranks end together when they agreed to stop (a signal, a
  // diverged loss, the end); an error of one rank ends all of them rather
  // than leaving the others waiting in a collective.
  if (fcc_comm_size() > 1 && rc != kExitOk && rc != kExitDiverged &&
      rc != kExitInterrupted && rc != kExitTerminated)
    fcc_comm_abort(rc);
  fcc_comm_finalize();
  return rc;
}

int run(const fcc_program *program, int argc, char **argv) {
  return run(program, argc, argv, std::cout, std::cerr,
             isatty(STDOUT_FILENO) != 0);
}

} // namespace fcc::trainer
