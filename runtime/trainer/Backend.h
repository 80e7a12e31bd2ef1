//===- Backend.h - Where the trainer's state and batches live -------------===//
//
// The device-specific part of the trainer, behind a small interface so that
// the CUDA target can reuse everything else (options, data loading, the
// schedule, the loop, metrics output):
//  - state buffers (parameters, momentum, EMA copies) in the program's target
//    memory, with upload/download/copy;
//  - the datasets, handed over once as bytes; a batch is built where the
//    steps run (gather, normalise, augment with host-drawn ExampleAugment);
//  - the metrics accumulator the entry points add to, and reading it back
//    (a GPU backend reads it rarely; the CPU backend after every step);
//  - optionally, the dynamic loss scale of fp16 programs in target memory
//    (deviceLossScale()), adjusted there after every step so that a GPU
//    need not read the metrics per step; otherwise the trainer keeps the
//    scale on the host and reads the metrics after every step.
// The internal header of runtime/trainer; not part of the program ABI.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINER_BACKEND_H
#define FCC_TRAINER_BACKEND_H

#include "Augment.h"
#include "Data.h"

#include "fcc/runtime/program.h"

#include <memory>
#include <stdexcept>
#include <string>

namespace fcc::trainer {

class Backend {
public:
  virtual ~Backend() = default;

  // "cpu (2 threads)".
  virtual std::string describe() const = 0;

  // A zero-filled buffer of `count` floats in target memory, owned by the
  // backend until it is destroyed.
  virtual float *allocate(int64_t count) = 0;
  virtual void upload(float *dst, const float *host, int64_t count) = 0;
  virtual void download(float *host, const float *src, int64_t count) = 0;
  virtual void copy(float *dst, const float *src, int64_t count) = 0;
  virtual void fillZero(float *dst, int64_t count) = 0;

  // Called once before any batch. The backend keeps its own copy of (or
  // reference to) the images; `train`/`test` outlive the backend.
  virtual void setData(const ImageSet &train, const ImageSet &test,
                       const Normalisation &norm, int64_t batch) = 0;

  // Builds a training batch: slot i = augment(normalise(train[indices[i]]),
  // draws[i]). count == the program's batch.
  virtual void loadTrainBatch(const int64_t *indices,
                              const ExampleAugment *draws,
                              const AugmentConfig &config, int64_t count) = 0;
  // Builds a test batch: slot i = normalise(test[indices[i]]); slots from
  // `valid` on are padding (the last, partial batch) and get the label
  // FCC_IGNORE_LABEL so that the metrics skip them.
  virtual void loadTestBatch(const int64_t *indices, int64_t count,
                             int64_t valid) = 0;
  // The batch buffers (target memory) the steps read.
  virtual const float *batchImages() const = 0;
  virtual const int32_t *batchLabels() const = 0;

  // FCC_NUM_METRICS floats in target memory that the entry points add to.
  virtual float *metrics() = 0;
  // Copies the accumulated metrics to the host and zeroes the accumulator
  // (a device loss scale then counts skipped steps from zero).
  virtual void takeMetrics(double out[FCC_NUM_METRICS]) = 0;
  // True when takeMetrics() is cheap enough to call after every step
  // (per-step divergence checks and a running loss in the progress bar).
  virtual bool cheapMetrics() const = 0;
  // Waits for queued work (timing); a no-op on the CPU.
  virtual void synchronize() {}
  // The step's hyper-parameters where train_step reads them (target
  // memory): the CPU passes `h` itself, a GPU copies it to the device
  // (with a device loss scale, all but a finite loss_scale; see below).
  virtual const fcc_hyper *stageHyper(const fcc_hyper &h) { return &h; }

  // Dynamic loss scaling (fp16 programs) in target memory. When
  // deviceLossScale() is true the trainer calls setLossScale() once before
  // a run's first step, updateLossScale() after every train_step, and
  // readLossScale() where the host needs the values (checkpoints, the epoch
  // record); it no longer reads the metrics after every step for the scale.
  // The rule is the trainer's host rule: a step that added to
  // metrics[FCC_METRIC_SKIPPED] halves the scale (at least 1), `window`
  // clean steps in a row double it (at most 1e30). The other functions are
  // only called when deviceLossScale() is true (the defaults throw).
  virtual bool deviceLossScale() const { return false; }
  // Starts device loss scaling at `scale` after `cleanSteps` clean steps;
  // writes the scale where stageHyper's fcc_hyper is. From now on
  // stageHyper keeps the device's hyper.loss_scale instead of the staged
  // one, unless the staged one is not finite (--debug-inject-overflow: that
  // step uses it, and the update after it halves the device scale).
  virtual void setLossScale(double scale, int64_t cleanSteps);
  // Enqueued after a train step: applies the rule to the step's skipped
  // metric and writes the next step's scale into the staged fcc_hyper.
  virtual void updateLossScale(int64_t window);
  // The current scale and clean-step count (waits for queued steps).
  virtual void readLossScale(double &scale, int64_t &cleanSteps);

  // The layout (FCC_LAYOUT_*) the program reads its batches in
  // (fcc_program.image_layout); called once, before setData. The default
  // builds NCHW batches only and refuses anything else.
  virtual void setImageLayout(int layout);

  // Where kernel-selection measurements persist between runs (GPU).
  virtual void setTimingCache(const std::string &) {}
  // Bytes of target memory in use, for the report ("" when not tracked).
  virtual std::string memoryReport() const { return ""; }
};

inline void Backend::setImageLayout(int layout) {
  if (layout != 0) // FCC_LAYOUT_NCHW
    throw std::runtime_error("the program reads NHWC batches (compiled with "
                             "--layout nhwc), which the " + describe() +
                             " backend does not build");
}
inline void Backend::setLossScale(double, int64_t) {
  throw std::logic_error("this backend keeps no device loss scale");
}
inline void Backend::updateLossScale(int64_t) {
  throw std::logic_error("this backend keeps no device loss scale");
}
inline void Backend::readLossScale(double &, int64_t &) {
  throw std::logic_error("this backend keeps no device loss scale");
}

// Thrown by a backend factory when its device is missing ("no CUDA device
// found"); the trainer exits with kExitNoDevice and the message.
class NoDeviceError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// Backends register themselves by target name (the CUDA trainer's main()
// registers "cuda"); "cpu" is always available.
using BackendFactory = std::unique_ptr<Backend> (*)();
void registerBackend(const std::string &target, BackendFactory factory);

// The backend for a program's target; nullptr when this build has none for
// it. May throw NoDeviceError.
std::unique_ptr<Backend> makeBackend(const std::string &target);
std::unique_ptr<Backend> makeCpuBackend();

} // namespace fcc::trainer

#endif // FCC_TRAINER_BACKEND_H
