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
// Delta checkpoints (--checkpoint-mode delta:...) are small files
// DIR/delta-NNNNNN.fcc written between full checkpoints. A delta holds, for
// every parameter tensor (BatchNorm running statistics included) and every
// EMA copy, the entries whose change since a base full checkpoint was
// selected (top-K fraction by |change|, or |change| >= V; tensors of rank
// <= 1, i.e. biases and BatchNorm vectors, are stored whole), plus the whole
// position header of a checkpoint. Momentum and error-feedback residuals are
// not in deltas: restored = base with the selected entries replaced, and the
// base's momentum. Format (version 1), little-endian:
//   offset 0   char[8]  magic "FCCDELT\0"
//          8   u32      format version (kDeltaVersion)
//         12   u32      flags: bit 0 = q8 values
//         16   u64      plan_hash of the compiled program
//              str      base: the file name of the base checkpoint (in the
//                       delta's directory), u64 its checksum (the FNV-1a 64
//                       at its end), i64 its step
//              u8 selection (1 top-K, 2 threshold), f64 K or V
//              the position fields of a checkpoint from `target` to
//              `settings` (the same layout as above)
//              u32 tensor count; per tensor: str name, u8 kind (0 param,
//              2 EMA), u32 index, i64 numel, u8 index coding (0 every entry,
//              no indices; 1 LEB128 varints of the gaps idx[j] - idx[j-1] - 1
//              (idx[-1] = -1); 2 a ceil(numel/8)-byte bitmap, least
//              significant bit first), i64 count k, u64 index bytes, the
//              index bytes, then the values: f32 new values (k x 4 bytes),
//              or with q8 an f32 scale s and k int8 q (the entry becomes
//              base + q * s)
//   last 8     u64 FNV-1a 64 of every byte before it
// The coding of each tensor is whichever of 1/2 is smaller, or 0 when
// storing every entry is no larger than that; then every entry is stored
// (the unselected ones too: their new values, or their quantised changes),
// which costs nothing and restores more. With q8 the scale is
// max |change| / 127 over the stored entries and q = round(change / s), so
// a stored entry is restored to within s / 2 (plus the rounding of the
// addition). Selection, coding and restore are exact in fp32: with
// delta:topk:1 or delta:threshold:0 base + delta is bit-identical to the
// state the delta was taken of.
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
  // Filled by parseCheckpoint (not a field of the format): the FNV-1a 64 at
  // the end of the file, which deltas name their base by.
  uint64_t checksum = 0;
};

// The serialised bytes (checksum included) and back. parse() throws
// CheckpointError naming `what` (the file) on a bad magic, another version,
// a truncated or corrupt file.
std::vector<uint8_t> serialiseCheckpoint(const Checkpoint &c);
Checkpoint parseCheckpoint(const std::vector<uint8_t> &bytes,
                           const std::string &what);

// What writeCheckpoint wrote.
struct WrittenFile {
  uint64_t checksum = 0; // the FNV-1a 64 at its end
  uint64_t bytes = 0;    // the file size
};

// Writes DIR/checkpoint-NNNNNN.fcc atomically and returns its path; throws
// CheckpointError when it cannot. Then removes older checkpoint files of DIR
// but the newest `keep` (the new one included), and the delta files whose
// base checkpoint is gone.
std::string writeCheckpoint(const std::string &dir, const Checkpoint &c,
                            int keep = 2, WrittenFile *written = nullptr);

// Reads and checks one file (magic, version, checksum); throws
// CheckpointError.
Checkpoint readCheckpoint(const std::string &path);

// The checkpoint files of DIR, newest (most steps) first.
std::vector<std::string> listCheckpoints(const std::string &dir);

// "DIR/checkpoint-000042.fcc".
std::string checkpointPath(const std::string &dir, int64_t step);

// FNV-1a 64 of bytes.
uint64_t fnv1a64(const uint8_t *data, size_t size);

//===- Delta checkpoints ---------------------------------------------------===//

constexpr uint32_t kDeltaVersion = 1;

// --checkpoint-mode: full | delta:topk:K | delta:threshold:V, optionally
// with ":q8" after a delta mode.
struct DeltaSpec {
  enum Mode : uint8_t { kFull = 0, kTopK = 1, kThreshold = 2 };
  Mode mode = kFull;
  double value = 0; // K in (0, 1] or V >= 0
  bool q8 = false;
  bool delta() const { return mode != kFull; }
  // Throws std::invalid_argument with the reason (no flag name).
  static DeltaSpec parse(const std::string &text);
  // The canonical text ("delta:topk:0.01:q8"), which parses back.
  std::string toString() const;
  // Top-K: the entries kept of n: ceil(K n) (forgiving a relative error of
  // 1e-9, as the gradient compressors do) clamped to [1, n].
  int64_t topK(int64_t n) const;
};

struct DeltaTensor {
  enum Coding : uint8_t { kEvery = 0, kGaps = 1, kBitmap = 2 };
  std::string name;
  CheckpointTensor::Kind kind = CheckpointTensor::kParam;
  uint32_t index = 0;
  int64_t numel = 0;
  Coding coding = kGaps;
  // The selected entries, ascending (all of them for kEvery) ...
  std::vector<uint32_t> indices;
  // ... and their new values, or (q8) q with the entry = base + q * scale.
  std::vector<float> values;
  std::vector<int8_t> q;
  float scale = 0;
};

struct Delta {
  Checkpoint position;  // every field but the tensors (and checksum)
  std::string baseName; // "checkpoint-000040.fcc", in the delta's directory
  uint64_t baseChecksum = 0;
  int64_t baseStep = 0;
  DeltaSpec spec;
  std::vector<DeltaTensor> tensors;
};

// The delta of `current` against `base` under `spec` (a delta mode). Only
// the param and EMA tensors of `current` are used; each must be in `base`
// with the same name, kind, index and size (else CheckpointError). An entry
// has changed when its bits differ; |change| is |double(cur) - double(base)|.
// Top-K keeps the min(k, changed) changed entries of largest |change| (ties:
// the lower index); threshold keeps the changed entries with |change| >= V.
// Tensors t with whole[t] (indexed like current.tensors) keep every
// changed entry. The position is `current`'s. `baseName` is the base's file
// name.
Delta makeDelta(const Checkpoint &base, const std::string &baseName,
                const Checkpoint &current, const DeltaSpec &spec,
                const std::vector<bool> &whole = {});

// Replaces the selected entries of `base`'s tensors (and its position by the
// delta's). Throws CheckpointError naming `what` when `base` is not the
// delta's base (plan, checksum, tensors).
void applyDelta(Checkpoint &base, const Delta &delta, const std::string &what);

std::vector<uint8_t> serialiseDelta(const Delta &d);
Delta parseDelta(const std::vector<uint8_t> &bytes, const std::string &what);

// "DIR/delta-000042.fcc".
std::string deltaPath(const std::string &dir, int64_t step);
// Writes DIR/delta-NNNNNN.fcc (NNNNNN = the delta's step) atomically;
// returns its path.
std::string writeDelta(const std::string &dir, const Delta &d,
                       WrittenFile *written = nullptr);
Delta readDelta(const std::string &path);
// The delta files of DIR, newest first.
std::vector<std::string> listDeltas(const std::string &dir);

// Reads the delta at `path`, its base from the same directory (the file it
// names, checked by checksum), and returns base + delta. `basePath` gets the
// base's path. Throws CheckpointError.
Checkpoint restoreDelta(const std::string &path,
                        std::string *basePath = nullptr);

} // namespace fcc::trainer

#endif // FCC_TRAINER_CHECKPOINT_H
