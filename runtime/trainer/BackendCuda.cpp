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
//    (once per epoch, or per step under loss scaling).
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
          std::to_string(devices) + " ranks per node)");
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
                         config.cutout, images_, FCC_DTYPE_F32);
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
                         FCC_DTYPE_F32);
  }

  const float *batchImages() const override { return images_; }
  const int32_t *batchLabels() const override { return labels_; }

  float *metrics() override { return metrics_; }
  void takeMetrics(double out[FCC_NUM_METRICS]) override {
    float host[FCC_NUM_METRICS];
    download(host, metrics_, FCC_NUM_METRICS);
    fillZero(metrics_, FCC_NUM_METRICS);
    for (int i = 0; i < FCC_NUM_METRICS; ++i)
      out[i] = host[i];
  }
  bool cheapMetrics() const override { return false; }
  void synchronize() override {
    check(fcc_cuda_synchronize(), "the GPU step");
  }
  const fcc_hyper *stageHyper(const fcc_hyper &h) override {
    check(fcc_cuda_copy_to_device(hyper_, &h, sizeof(fcc_hyper)),
          "hyper-parameters");
    return hyper_;
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
  uint8_t *trainImages_ = nullptr, *testImages_ = nullptr;
  float *mean_ = nullptr, *invStd_ = nullptr, *images_ = nullptr;
  int32_t *labels_ = nullptr, *draws_ = nullptr;
  int64_t *index_ = nullptr;
  float *metrics_ = nullptr;
  fcc_hyper *hyper_ = nullptr;
  std::vector<int32_t> hostDraws_, hostLabels_;
};

} // namespace

std::unique_ptr<Backend> makeCudaBackend() {
  return std::make_unique<CudaBackend>();
}

} // namespace fcc::trainer
