//===- BackendCpu.cpp - The trainer backend for the "cpu" target ----------===//
//
// State buffers are host allocations; batches are gathered, normalised and
// augmented by OpenMP threads (one image per iteration: the result does not
// depend on the thread count); metrics are a host array read after every
// step, so the trainer keeps the dynamic loss scale on the host (no
// deviceLossScale()).
//
//===----------------------------------------------------------------------===//
#include "Backend.h"

#include "fcc/runtime/cpu_kernels.h"

#include <cstring>
#include <map>
#include <vector>

namespace fcc::trainer {

namespace {

class CpuBackend final : public Backend {
public:
  std::string describe() const override {
    int n = fcc_cpu_get_num_threads();
    return "cpu (" + std::to_string(n) + (n == 1 ? " thread)" : " threads)");
  }

  float *allocate(int64_t count) override {
    buffers_.push_back(std::vector<float>(size_t(count > 0 ? count : 1)));
    return buffers_.back().data();
  }
  void upload(float *dst, const float *host, int64_t count) override {
    std::memcpy(dst, host, size_t(count) * sizeof(float));
  }
  void download(float *host, const float *src, int64_t count) override {
    std::memcpy(host, src, size_t(count) * sizeof(float));
  }
  void copy(float *dst, const float *src, int64_t count) override {
    std::memcpy(dst, src, size_t(count) * sizeof(float));
  }
  void fillZero(float *dst, int64_t count) override {
    std::memset(dst, 0, size_t(count) * sizeof(float));
  }

  void setData(const ImageSet &train, const ImageSet &test,
               const Normalisation &norm, int64_t batch) override {
    train_ = &train;
    test_ = &test;
    mean_ = norm.mean;
    invStd_.clear();
    for (float s : norm.std)
      invStd_.push_back(1.0f / s);
    imageSize_ = train.imageSize();
    images_.assign(size_t(batch * imageSize_), 0.0f);
    labels_.assign(size_t(batch), 0);
    scratch_.assign(size_t(batch * imageSize_), 0.0f);
  }

  void loadTrainBatch(const int64_t *indices, const ExampleAugment *draws,
                      const AugmentConfig &config, int64_t count) override {
    const ImageSet &set = *train_;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
      float *norm = scratch_.data() + i * imageSize_;
      normaliseImage(set.image(indices[i]), set.channels, set.height,
                     set.width, mean_.data(), invStd_.data(), norm);
      augmentImage(norm, set.channels, set.height, set.width, config,
                   draws[i], images_.data() + i * imageSize_);
      labels_[size_t(i)] = set.labels[size_t(indices[i])];
    }
  }

  void loadTestBatch(const int64_t *indices, int64_t count,
                     int64_t valid) override {
    const ImageSet &set = *test_;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
      normaliseImage(set.image(indices[i]), set.channels, set.height,
                     set.width, mean_.data(), invStd_.data(),
                     images_.data() + i * imageSize_);
      labels_[size_t(i)] =
          i < valid ? set.labels[size_t(indices[i])] : FCC_IGNORE_LABEL;
    }
  }

  const float *batchImages() const override { return images_.data(); }
  const int32_t *batchLabels() const override { return labels_.data(); }

  float *metrics() override { return metrics_; }
  void takeMetrics(double out[FCC_NUM_METRICS]) override {
    for (int i = 0; i < FCC_NUM_METRICS; ++i) {
      out[i] = metrics_[i];
      metrics_[i] = 0.0f;
    }
  }
  bool cheapMetrics() const override { return true; }

private:
  std::vector<std::vector<float>> buffers_;
  const ImageSet *train_ = nullptr, *test_ = nullptr;
  std::vector<float> mean_, invStd_;
  int64_t imageSize_ = 0;
  std::vector<float> images_, scratch_;
  std::vector<int32_t> labels_;
  float metrics_[FCC_NUM_METRICS] = {};
};

} // namespace

std::unique_ptr<Backend> makeCpuBackend() {
  return std::make_unique<CpuBackend>();
}

namespace {
std::map<std::string, BackendFactory> &registry() {
  static std::map<std::string, BackendFactory> factories;
  return factories;
}
} // namespace

void registerBackend(const std::string &target, BackendFactory factory) {
  registry()[target] = factory;
}

std::unique_ptr<Backend> makeBackend(const std::string &target) {
  if (target == "cpu")
    return makeCpuBackend();
  auto it = registry().find(target);
  return it == registry().end() ? nullptr : it->second();
}

} // namespace fcc::trainer
