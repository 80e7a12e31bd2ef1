//===- internal.h - Shared host-side helpers of the CUDA runtime ----------===//
//
// Private to runtime/cuda: the error model behind fcc_cuda_last_error and
// fcc_cuda_synchronize, access to the one stream and to the buffers the
// context owns (kernel scratch, the cuDNN workspace), the timing cache of
// cuDNN algorithm choices, and launch-size helpers. Plain C++ (no device
// code), so that the host-only sources are compiled by the C++ compiler,
// which is much faster than nvcc.
//
// Error model (see cuda_kernels.h):
//  - setError(code, msg): a function that returns an error code records the
//    message (fcc_cuda_last_error) and returns the code; the caller already
//    knows it failed, so nothing else is affected.
//  - setAsyncError(msg): a failure the caller cannot see at once (a void
//    kernel function with a bad argument, a failed launch, a failed
//    synchronisation) is recorded *and* makes every later
//    fcc_cuda_synchronize fail ("sticky") until fcc_cuda_init runs again.
//    CUDA itself keeps device faults sticky in the context as well.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_RUNTIME_CUDA_INTERNAL_H
#define FCC_RUNTIME_CUDA_INTERNAL_H

#include "fcc/runtime/cuda_kernels.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace fcc::cuda {

//===--- Errors -------------------------------------------------------------===//

// printf-style formatting into a std::string (for error messages).
std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Records `message` as the last error and returns `code`.
int setError(int code, const std::string &message);
// Records `message` as the last error and makes it sticky.
void setAsyncError(const std::string &message);
// For functions returning int: if `e` is an error, records
// "<fn>: <what>: <CUDA error string>" and returns FCC_ERR_BACKEND.
int cudaCheck(cudaError_t e, const char *fn, const char *what);
// The same for asynchronous failures (sticky); returns false on error.
bool cudaCheckAsync(cudaError_t e, const char *fn, const char *what);
// Discards the CUDA runtime's non-sticky per-thread error (left behind by
// library calls that handled their own failures, e.g. cuDNN's algorithm
// search trying allocations), so that checkLaunch does not report it.
void clearTransientErrors();
// After a kernel launch: records a launch failure (bad configuration, no
// kernel image for this GPU, ...) as a sticky error naming `fn`. Returns
// false on error.
bool checkLaunch(const char *fn);

//===--- Context ------------------------------------------------------------===//

// True once fcc_cuda_init succeeded (and until fcc_cuda_shutdown).
bool initialised();
// For kernel functions, before their launches: true if the runtime is
// initialised (and transient errors cleared, see clearTransientErrors),
// else a sticky error naming `fn`.
bool ready(const char *fn);
// The stream everything is enqueued on: the main stream, or between
// fcc_cuda_side_begin and fcc_cuda_side_end the side stream.
cudaStream_t stream();
// Whether stream() is the side stream (per-stream buffers of a plan pick
// theirs by it).
bool onSideStream();
// FCC_OK on the main stream; on the side stream an FCC_ERR_INVALID error
// naming `fn`. For the calls that must run on the main stream: forward and
// data-gradient convolutions (the side cuDNN workspace is sized for filter
// gradients; a plan has one KRSC copy of its filter) and GEMMs (one cuBLAS
// workspace, the cuBLAS handle bound to the main stream).
inline int refuseSideStream(const char *fn) {
  if (!onSideStream())
    return FCC_OK;
  return setError(FCC_ERR_INVALID,
                  format("%s: not on the side stream (convolution forward and "
                         "data-gradient calls and GEMMs run on the main "
                         "stream)",
                         fn));
}
// Number of multiprocessors of the current device (launch sizing).
int multiprocessors();

// Fixed-size device scratch owned by the context (allocated by
// fcc_cuda_init and never moved, so captured graphs stay valid), one per
// stream. Kernels of one API call use it between their launches; calls are
// ordered on their stream, so consecutive calls never overlap. Returns
// nullptr and records a sticky error naming `fn` if `bytes` exceeds the
// capacity.
void *scratch(size_t bytes, const char *fn);
size_t scratchCapacity();

// Zeroed completion counters of the per-channel reductions that finish in
// their last block (batchnorm.cu), kReduceCounters per stream, owned by the
// context next to the scratch. A reduction counts its blocks done on one
// counter per channel (group) and its last block sets it back to zero, so
// every counter is zero between calls.
constexpr int64_t kReduceCounters = 65536;
unsigned *reduceCounters();

// The cuDNN workspace shared by all convolution plans, one per stream.
// reserveWorkspace grows the main stream's to at least `bytes` and the side
// stream's to at least `sideBytes` (called when a plan is created, never
// during capture); a buffer it replaces stays allocated until shutdown,
// because a graph captured earlier may still refer to it. workspace() is
// that of stream().
int reserveWorkspace(size_t bytes, size_t sideBytes, const char *fn);
void *workspace();
size_t workspaceSize();

// Whether the stream is being captured into a graph right now.
bool capturing();

//===--- Timing cache of cuDNN algorithm choices -----------------------------===//

// One measured choice: the algorithm, the math type it was measured with,
// its workspace and time (informational).
struct CachedAlgo {
  int algo = -1;
  int mathType = 0;
  size_t workspace = 0;
  float milliseconds = 0.0f;
};

// "GPU name|sm_XY|cudnnNNNNN": the part of every key that names the
// hardware and library the measurement is valid for.
std::string deviceKey();
// Looks `key` up (reading the cache file at the first lookup).
bool cacheLookup(const std::string &key, CachedAlgo &out);
void cacheStore(const std::string &key, const CachedAlgo &value);
// Writes the cache file if anything new was measured (called by shutdown).
void cacheFlush();

//===--- Launch sizing --------------------------------------------------------===//

// Threads per block of the elementwise and reduction kernels: a multiple of
// the warp size that keeps enough blocks resident per SM on every target
// architecture.
constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `count` items: enough to fill the GPU
// several times over, capped because every kernel loops over the rest.
inline unsigned blocksFor(int64_t count, int threads = kThreads) {
  // 2^20 blocks x 256 threads cover 2^28 items per sweep; beyond that the
  // grid-stride loop takes over (launch cost is irrelevant at that size).
  constexpr int64_t kMaxBlocks = int64_t(1) << 20;
  int64_t blocks = (count + threads - 1) / threads;
  if (blocks < 1)
    blocks = 1;
  return unsigned(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Internal helpers shared between sources (defined in the .cu files).

// y[m, n] = c broadcast from c_rows x c_cols (1 or m rows, 1 or n columns),
// multiplied by `scale` if `apply_scale`; y and c of type dtype. Returns
// false (sticky error) on a launch failure.
bool broadcastMatrix(const void *c, int64_t c_rows, int64_t c_cols, int64_t m,
                     int64_t n, float scale, bool apply_scale, void *y,
                     int dtype, const char *fn);
// y[n, ch, hw] += bias[ch] in fp32, rounded to the storage type dtype of y
// and bias: the bias of a convolution. Returns false on error.
bool addChannelBias(void *y, const void *bias, int64_t n, int64_t c,
                    int64_t hw, int dtype, const char *fn);
// out[ch] = sum over (n, hw) of x[n, ch, hw] in double (fixed order),
// rounded to the storage type dtype (x and out both of type dtype): the
// bias gradient of a convolution. Returns false on error.
bool channelSum(const void *x, int64_t n, int64_t c, int64_t hw, void *out,
                int dtype, const char *fn);

// Bytes per element of a storage type, 0 if unknown.
inline int64_t dtypeSize(int dtype) {
  switch (dtype) {
  case FCC_DTYPE_F32:
    return 4;
  case FCC_DTYPE_F16:
  case FCC_DTYPE_BF16:
    return 2;
  default:
    return 0;
  }
}

inline const char *dtypeName(int dtype) {
  switch (dtype) {
  case FCC_DTYPE_F32:
    return "f32";
  case FCC_DTYPE_F16:
    return "f16";
  case FCC_DTYPE_BF16:
    return "bf16";
  default:
    return "?";
  }
}

} // namespace fcc::cuda

#endif // FCC_RUNTIME_CUDA_INTERNAL_H
