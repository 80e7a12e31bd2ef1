//===- FakeProgram.h - A hand-written fcc_program for the trainer tests ---===//
//
// A linear softmax classifier over C x H x W images that implements the
// program ABI (fcc/runtime/program.h) by hand, so that the trainer library
// can be tested without the compiler:
//   logits[b, k] = sum_i weight[k, i] * x[b, i] + bias[k]
//   loss = softmax cross-entropy with label smoothing (fcc_cpu_softmax_xent)
//   update = PyTorch SGD with momentum / Nesterov / weight decay
//            (fcc_cpu_sgd_update) with the parameters' lr_mult and wd_mult.
// With lossScaling it poses as an fp16 program with dynamic loss scaling:
// a step whose hyper->loss_scale is not below overflowAt (or not finite) is
// an overflow, skipped as a generated program skips it (metrics[SKIPPED]
// += 1, no update); the scale does not otherwise enter the arithmetic.
// Parameters: "fc.weight" [classes, C*H*W] (FCC_ROLE_WEIGHT) and "fc.bias"
// [classes] (FCC_ROLE_BIAS), both with fan_in C*H*W and init = NULL, so the
// trainer initialises them with fcc_param_init.
//
// The program is a process-wide singleton: fakeProgram() (re)configures it
// and clears the log of what its entry points saw.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TESTS_TRAINER_FAKEPROGRAM_H
#define FCC_TESTS_TRAINER_FAKEPROGRAM_H

#include "fcc/runtime/program.h"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace fcc::test {

// The compiled-in recipe of the fake unless a test sets another: 2 epochs,
// lr "0:0.01,2:0", momentum 0.9 (Nesterov), wd 5e-4, no label smoothing, no
// EMA, no TTA, no augmentation.
fcc_recipe fakeRecipe();

struct FakeConfig {
  int64_t batch = 32;
  int64_t channels = 3, height = 32, width = 32;
  int64_t classes = 4;
  std::string target = "cpu";
  std::string model = "fake-linear.onnx";
  int abiVersion = FCC_PROGRAM_ABI_VERSION;
  fcc_recipe defaults = fakeRecipe();
  float weightLrMult = 1.0f, weightWdMult = 1.0f;
  float biasLrMult = 1.0f, biasWdMult = 0.0f;
  bool failSetup = false;      // setup() returns 1 ("fake setup failure")
  bool nanLoss = false;        // train_step reports a NaN loss sum
  bool recordBatches = false;  // keep every training batch (images, labels)
  bool recordParams = false;   // keep the parameters at entry of every step
  bool lossScaling = false;    // precision "fp16", loss_scaling = 1
  float overflowAt = 65536.0f; // with lossScaling: the smallest scale that
                               // overflows
};

// What the entry points saw since the last fakeProgram() call.
struct FakeLog {
  int setupCalls = 0, teardownCalls = 0;
  std::vector<fcc_hyper> hypers;                  // one per train_step
  std::vector<bool> skipped;                      // one per train_step
  std::vector<double> momentumAbsSumAtEntry;      // one per train_step
  std::vector<std::vector<int32_t>> trainLabels;  // if recordBatches
  std::vector<std::vector<float>> trainImages;    // if recordBatches
  // Parameters (weight then bias, concatenated) at entry of every step, and
  // after the last step (if recordParams).
  std::vector<std::vector<float>> paramsAtEntry;
  std::vector<float> paramsAfterLastStep;
  std::vector<float> emaDecays;                   // one per ema_update
  std::vector<int64_t> emaAfterStep;              // train_steps before it
  int64_t evalCalls = 0;
  std::vector<int> evalTta;
  std::vector<float> evalLabelSmoothing;
  std::vector<int64_t> evalPaddingRows;           // rows labelled -1
  std::vector<int64_t> evalValidLabelsSum;        // sum of the real labels
  std::vector<float> lastEvalParams;              // weight then bias
};

// Configures the singleton fake program and clears its log.
const fcc_program *fakeProgram(const FakeConfig &config = FakeConfig());
FakeLog &fakeLog();

//===- Small file helpers shared by the tests -----------------------------===//

// A fresh directory under the system's temporary directory, removed with
// everything in it when the object goes away.
class TempDir {
public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "fcc-trainer-test-XXXXXX")
            .string();
    if (char *made = mkdtemp(pattern.data()))
      path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty())
      std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;

  const std::string &path() const { return path_; }
  std::string file(const std::string &name) const {
    return (std::filesystem::path(path_) / name).string();
  }

private:
  std::string path_;
};

inline void writeBytes(const std::string &path,
                       const std::vector<uint8_t> &bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char *>(bytes.data()),
            std::streamsize(bytes.size()));
}

inline std::string readText(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in),
                     std::istreambuf_iterator<char>());
}

} // namespace fcc::test

#endif // FCC_TESTS_TRAINER_FAKEPROGRAM_H
