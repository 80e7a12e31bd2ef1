//===- Checkpoint.h - Saving and resuming a training run ------------------===//
//
// A checkpoint is everything a trainer needs to continue a run exactly where
// it stopped: the state buffers (parameters with the BatchNorm running
// statistics, momentum, EMA copies), the position (run, epoch, step), the
// seed (all randomness is counter-based Philox keyed by seed, epoch, example
// and step, so the seed and the position are the whole RNG state), the
// dynamic loss scale with its clean-step counter, the partial metric sums of
// the current epoch and the run summary so far.
//
// File format (version 1), little-endian, no padding:
//   offset 0   char[8]  magic "FCCCKPT\0"
//          8   u32      format version (kCheckpointVersion)
//         12   u32      reserved (0)
//         16   u64      payload offset (bytes from the start of the file)
//         24   u64      payload bytes (4 * total numel)
//         32   u64      plan_hash of the compiled program
//              str      target ("cpu"), str precision ("fp32"), i64 batch
//              u64 seed, i32 run, i32 epoch (1-based, the epoch in progress;
//              epochs + 1 when the run is complete), i64 step in epoch
//              (steps of `epoch` already done), i64 step (of the run),
//              i64 training images per epoch
//              f64 loss scale, i64 clean steps
//              f64 metric sums[FCC_NUM_METRICS] of the epoch so far,
//              f64 epoch time so far, f64 total time
//              summary: i32 epochs, f64 test acc, f64 test loss,
//              f64 train time, i64 train images, i32 target epoch,
//              f64 target time
//              str settings (the flags that shape training, for a warning
//              when a resumed run uses others)
//              u32 tensor count; per tensor: str name, u8 kind (0 param,
//              1 momentum, 2 EMA, 3 comm state: an error-feedback
//              residual), u32 index of the program parameter (of
//              fcc_program.comm_state for kind 3),
//              i64 numel
//   payload    f32 values of every tensor, in table order
//   last 8     u64 FNV-1a 64 of every byte before it
// where str = u32 length + bytes. The payload can be compared on its own
// (e.g. to check that two runs ended with bit-identical weights) by reading
// the two u64 at offset 16.
//
// Files are DIR/checkpoint-NNNNNN.fcc (NNNNNN = steps of the run so far),
// written atomically: a temporary file in DIR, fsync, rename, fsync of DIR.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINER_CHECKPOINT_H
#define FCC_TRAINER_CHECKPOINT_H

#include "fcc/runtime/program.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fcc::trainer {

constexpr uint32_t kCheckpointVersion = 1;

// A checkpoint that cannot be used; what() is the whole message.
class CheckpointError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

struct CheckpointTensor {
  enum Kind : uint8_t { kParam = 0, kMomentum = 1, kEma = 2, kCommState = 3 };
  std::string name;
  Kind kind = kParam;
  uint32_t index = 0; // the program parameter it belongs to
  std::vector<float> values;
};

struct Checkpoint {
  // Which compiled model wrote it.
  uint64_t planHash = 0;
  std::string target, precision;
  int64_t batch = 0;
  // Where the run stands.
  uint64_t seed = 0;
  int32_t run = 1;
  int32_t epoch = 1;
  int64_t stepInEpoch = 0;
  int64_t step = 0;
  int64_t trainImages = 0; // training images per epoch (after --train-limit)
  double lossScale = 1;
  int64_t cleanSteps = 0;
  double sums[FCC_NUM_METRICS] = {};
  double epochTime = 0, totalTime = 0;
  // The run summary so far.
  int32_t summaryEpochs = 0;
  double testAcc = 0, testLoss = 0, trainTime = 0;
  int64_t summaryTrainImages = 0;
  int32_t targetEpoch = 0;
  double targetTime = 0;
  std::string settings;
  std::vector<CheckpointTensor> tensors;
};

// The serialised bytes (checksum included) and back. parse() throws
// CheckpointError naming `what` (the file) on a bad magic, another version,
// a truncated or corrupt file.
std::vector<uint8_t> serialiseCheckpoint(const Checkpoint &c);
Checkpoint parseCheckpoint(const std::vector<uint8_t> &bytes,
                           const std::string &what);

// Writes DIR/checkpoint-NNNNNN.fcc atomically and returns its path; throws
// CheckpointError when it cannot. Then removes older checkpoint files of DIR
// but the newest `keep` (the new one included).
std::string writeCheckpoint(const std::string &dir, const Checkpoint &c,
                            int keep = 2);

// Reads and checks one file (magic, version, checksum); throws
// CheckpointError.
Checkpoint readCheckpoint(const std::string &path);

// The checkpoint files of DIR, newest (most steps) first.
std::vector<std::string> listCheckpoints(const std::string &dir);

// "DIR/checkpoint-000042.fcc".
std::string checkpointPath(const std::string &dir, int64_t step);

// FNV-1a 64 of bytes.
uint64_t fnv1a64(const uint8_t *data, size_t size);

} // namespace fcc::trainer

#endif // FCC_TRAINER_CHECKPOINT_H
