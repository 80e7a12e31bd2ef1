//===- BackendCuda.cpp - The trainer backend for the "cuda" target --------===//
//
// Everything a training step touches lives on the GPU:
//  - the datasets are uploaded once as uint8 (with the per-channel mean and
//    1/std); a batch is one fcc_cuda_build_batch launch that gathers,
//    normalises and augments (crop offsets, flips and cutout centres are
//    drawn on the host by Augment.h, so every target trains on the same
//    examples, and copied with the indices: 48 bytes per image);
//  - labels are gathered on the host and copied (4 bytes per image);
//  - the step's hyper-parameters are copied to a device fcc_hyper, so that
//    a captured graph reads the current values;
//  - metrics accumulate on the device and are read when the trainer asks
//    (once per epoch);
//  - the dynamic loss scale of fp16 programs lives on the device too
//    (fcc_cuda_loss_scale_state): fcc_cuda_loss_scale_update, enqueued
//    after each step, compares the skipped-step metric with the value it
//    saw last (reset with the accumulator by takeMetrics), halves or
//    doubles the scale and writes it into the device fcc_hyper, whose
//    loss_scale stageHyper then leaves alone (unless the staged value is
//    not finite: --debug-inject-overflow). No per-step read-back.
// Host-to-device copies come from pageable memory, which cudaMemcpyAsync
// stages before returning, so the host buffers can be reused at once.
// Linked only into CUDA trainers (fcc_trainer_cuda), whose main() registers
// it as the "cuda" backend.
//
//===----------------------------------------------------------------------===//
#include "Backend.h"

#include "fcc/runtime/comm.h"
#include "fcc/runtime/cuda_kernels.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

namespace fcc::trainer {

namespace {

void check(int rc, const char *what) {
  if (rc != 0)
    throw std::runtime_error(std::string(what) + ": " +
                             fcc_cuda_last_error());
}

class CudaBackend final : public Backend {
public:
  CudaBackend() {
    if (fcc_cuda_device_count() == 0)
      throw NoDeviceError("no CUDA device found (this trainer was compiled "
                          "for --target cuda; compile with --target cpu to "
                          "train on the CPU)");
    // One GPU per rank: the rank's index among the ranks of its node.
    const int devices = fcc_cuda_device_count();
    const int local = fcc_comm_local_rank(), onNode = fcc_comm_local_size();
    if (onNode > devices)
      throw std::runtime_error(
          std::to_string(onNode) + " ranks run on this node but it has " +
          std::to_string(devices) + " GPU" + (devices == 1 ? "" : "s") +
          ": NCCL needs one GPU per rank (start at most " +
          std::to_string(devices) + (devices == 1 ? " rank" : " ranks") +
          " per node)");
    check(fcc_cuda_init(local % devices), "initialising the GPU");
  }
  ~CudaBackend() override {
    fcc_cuda_synchronize();
    for (void *p : buffers_)
      fcc_cuda_free(p);
    fcc_cuda_shutdown();
  }

  std::string describe() const override {
    return fcc_cuda_device_description();
  }

  float *allocate(int64_t count) override {
    void *p = fcc_cuda_malloc(std::max<int64_t>(count, 1) * 4);
    if (!p)
      throw std::runtime_error("cannot allocate " + std::to_string(count * 4) +
                               " bytes on the GPU: " + fcc_cuda_last_error());
    buffers_.push_back(p);
    return static_cast<float *>(p);
  }
  void upload(float *dst, const float *host, int64_t count) override {
    check(fcc_cuda_copy_to_device(dst, host, count * 4), "upload");
  }
  void download(float *host, const float *src, int64_t count) override {
    check(fcc_cuda_copy_to_host(host, src, count * 4), "download");
  }
  void copy(float *dst, const float *src, int64_t count) override {
    check(fcc_cuda_copy(dst, src, count * 4), "copy");
  }
  void fillZero(float *dst, int64_t count) override {
    check(fcc_cuda_zero(dst, count * 4), "zero");
  }

  void setImageLayout(int layout) override {
    if (layout != FCC_LAYOUT_NCHW && layout != FCC_LAYOUT_NHWC)
      throw std::runtime_error("the program's image layout " +
                               std::to_string(layout) + " is unknown");
    layout_ = layout;
  }

  void setData(const ImageSet &train, const ImageSet &test,
               const Normalisation &norm, int64_t batch) override {
    train_ = &train;
    test_ = &test;
    channels_ = train.channels;
    height_ = train.height;
    width_ = train.width;
    trainImages_ = uploadBytes(train.pixels);
    testImages_ = uploadBytes(test.pixels);
    std::vector<float> invStd;
    for (float s : norm.std)
      invStd.push_back(1.0f / s);
    mean_ = allocate(int64_t(norm.mean.size()));
    invStd_ = allocate(int64_t(invStd.size()));
    upload(mean_, norm.mean.data(), int64_t(norm.mean.size()));
    upload(invStd_, invStd.data(), int64_t(invStd.size()));
    images_ = allocate(batch * train.imageSize());
    labels_ = reinterpret_cast<int32_t *>(allocate(batch));
    index_ = reinterpret_cast<int64_t *>(allocate(2 * batch));
    draws_ = reinterpret_cast<int32_t *>(allocate(5 * batch));
    metrics_ = allocate(FCC_NUM_METRICS);
    hyper_ = reinterpret_cast<fcc_hyper *>(
        allocate((sizeof(fcc_hyper) + 3) / 4));
    scale_ = reinterpret_cast<fcc_cuda_loss_scale_state *>(
        allocate((sizeof(fcc_cuda_loss_scale_state) + 3) / 4));
    hostDraws_.resize(size_t(5 * batch));
    hostLabels_.resize(size_t(batch));
  }

  void loadTrainBatch(const int64_t *indices, const ExampleAugment *draws,
                      const AugmentConfig &config, int64_t count) override {
    for (int64_t i = 0; i < count; ++i) {
      hostLabels_[size_t(i)] = train_->labels[size_t(indices[i])];
      int32_t *d = &hostDraws_[size_t(5 * i)];
      d[0] = draws[i].dy;
      d[1] = draws[i].dx;
      d[2] = draws[i].flip;
      d[3] = draws[i].cy;
      d[4] = draws[i].cx;
    }
    check(fcc_cuda_copy_to_device(index_, indices, count * 8), "indices");
    check(fcc_cuda_copy_to_device(draws_, hostDraws_.data(), count * 20),
          "augmentation draws");
    check(fcc_cuda_copy_to_device(labels_, hostLabels_.data(), count * 4),
          "labels");
    fcc_cuda_build_batch(trainImages_, index_, draws_, count, channels_,
                         height_, width_, mean_, invStd_, config.pad,
                         config.cutout, images_, FCC_DTYPE_F32, layout_);
  }

  void loadTestBatch(const int64_t *indices, int64_t count,
                     int64_t valid) override {
    for (int64_t i = 0; i < count; ++i)
      hostLabels_[size_t(i)] =
          i < valid ? test_->labels[size_t(indices[i])] : FCC_IGNORE_LABEL;
    check(fcc_cuda_copy_to_device(index_, indices, count * 8), "indices");
    check(fcc_cuda_copy_to_device(labels_, hostLabels_.data(), count * 4),
          "labels");
    fcc_cuda_build_batch(testImages_, index_, nullptr, count, channels_,
                         height_, width_, mean_, invStd_, 0, 0, images_,
                         FCC_DTYPE_F32, layout_);
  }

  const float *batchImages() const override { return images_; }
  const int32_t *batchLabels() const override { return labels_; }

  float *metrics() override { return metrics_; }
  void takeMetrics(double out[FCC_NUM_METRICS]) override {
    float host[FCC_NUM_METRICS];
    download(host, metrics_, FCC_NUM_METRICS);
    fillZero(metrics_, FCC_NUM_METRICS);
    // The loss scale update counts skipped steps from the zeroed value on.
    check(fcc_cuda_zero(&scale_->last_skipped, sizeof(float)),
          "loss scale state");
    for (int i = 0; i < FCC_NUM_METRICS; ++i)
      out[i] = host[i];
  }
  bool cheapMetrics() const override { return false; }
  void synchronize() override {
    check(fcc_cuda_synchronize(), "the GPU step");
  }
  const fcc_hyper *stageHyper(const fcc_hyper &h) override {
    if (!deviceScale_ || !std::isfinite(h.loss_scale)) {
      check(fcc_cuda_copy_to_device(hyper_, &h, sizeof(fcc_hyper)),
            "hyper-parameters");
      return hyper_;
    }
    // Everything but loss_scale, which the last update wrote.
    constexpr size_t at = offsetof(fcc_hyper, loss_scale);
    constexpr size_t after = at + sizeof(h.loss_scale);
    const char *bytes = reinterpret_cast<const char *>(&h);
    char *dst = reinterpret_cast<char *>(hyper_);
    check(fcc_cuda_copy_to_device(dst, bytes, int64_t(at)),
          "hyper-parameters");
    if (after < sizeof(fcc_hyper))
      check(fcc_cuda_copy_to_device(dst + after, bytes + after,
                                    int64_t(sizeof(fcc_hyper) - after)),
            "hyper-parameters");
    return hyper_;
  }

  bool deviceLossScale() const override { return true; }
  void setLossScale(double scale, int64_t cleanSteps) override {
    fcc_cuda_loss_scale_state s{};
    s.scale = scale;
    s.clean_steps = cleanSteps;
    check(fcc_cuda_copy_to_device(scale_, &s, sizeof s), "loss scale state");
    // Skipped steps count from the accumulator's current value.
    check(fcc_cuda_copy(&scale_->last_skipped, metrics_ + FCC_METRIC_SKIPPED,
                        sizeof(float)),
          "loss scale state");
    const float first = float(scale);
    check(fcc_cuda_copy_to_device(&hyper_->loss_scale, &first, sizeof first),
          "loss scale");
    deviceScale_ = true;
  }
  void updateLossScale(int64_t window) override {
    fcc_cuda_loss_scale_update(scale_, hyper_, metrics_, window);
  }
  void readLossScale(double &scale, int64_t &cleanSteps) override {
    fcc_cuda_loss_scale_state s{};
    check(fcc_cuda_copy_to_host(&s, scale_, sizeof s), "loss scale state");
    scale = s.scale;
    cleanSteps = s.clean_steps;
  }
  void setTimingCache(const std::string &path) override {
    if (!path.empty()) {
      // Create the cache's folder (best effort; without it nothing is kept).
      for (size_t at = path.find('/', 1); at != std::string::npos;
           at = path.find('/', at + 1))
        ::mkdir(path.substr(0, at).c_str(), 0755);
    }
    fcc_cuda_set_timing_cache(path.c_str());
  }
  std::string memoryReport() const override {
    int64_t used = 0, total = 0;
    fcc_cuda_memory(&used, &total);
    char buf[128];
    std::snprintf(buf, sizeof buf, "%.1f of %.1f GiB of GPU memory in use",
                  double(used) / (1 << 30), double(total) / (1 << 30));
    return buf;
  }

private:
  uint8_t *uploadBytes(const std::vector<uint8_t> &bytes) {
    auto *p = reinterpret_cast<uint8_t *>(
        allocate((int64_t(bytes.size()) + 3) / 4));
    check(fcc_cuda_copy_to_device(p, bytes.data(), int64_t(bytes.size())),
          "dataset upload");
    return p;
  }

  std::vector<void *> buffers_;
  const ImageSet *train_ = nullptr, *test_ = nullptr;
  int64_t channels_ = 0, height_ = 0, width_ = 0;
  int layout_ = FCC_LAYOUT_NCHW; // of the batches (the program's)
  uint8_t *trainImages_ = nullptr, *testImages_ = nullptr;
  float *mean_ = nullptr, *invStd_ = nullptr, *images_ = nullptr;
  int32_t *labels_ = nullptr, *draws_ = nullptr;
  int64_t *index_ = nullptr;
  float *metrics_ = nullptr;
  fcc_hyper *hyper_ = nullptr;
  fcc_cuda_loss_scale_state *scale_ = nullptr;
  bool deviceScale_ = false; // setLossScale was called
  std::vector<int32_t> hostDraws_, hostLabels_;
};

} // namespace

std::unique_ptr<Backend> makeCudaBackend() {
  return std::make_unique<CudaBackend>();
}

} // namespace fcc::trainer
