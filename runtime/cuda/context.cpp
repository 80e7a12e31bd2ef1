//===- context.cpp - Device, stream, handles, memory, graphs, errors ------===//
//
// The process-wide state of the CUDA runtime: the selected device, the
// non-blocking main stream every call enqueues on, the cuDNN, cuBLAS and
// cuBLASLt handles (the first two bound to it; cuBLASLt takes the stream per
// call), the device buffers the context owns (kernel scratch, cuBLAS(Lt) and
// cuDNN workspaces), graph capture, the error model of internal.h and
// the timing cache of cuDNN algorithm choices.
//
// The side stream (fcc_cuda_side_begin/end/join, cuda_kernels.h): a second
// non-blocking stream with a cuDNN handle, a cuDNN workspace and a kernel
// scratch of its own, so that the convolutions queued on it (the weight
// gradients that fcc-overlap-weight-grads schedules there) share no buffer
// with the main stream's work. A fork is an event recorded on the main
// stream that the side stream waits for; a join an event recorded on the
// side stream that the main stream waits for. Inside a graph capture the
// fork makes the side stream join the capture (it stays in it until the
// capture ends) and the join merges its branch back, so the captured graph
// has the two branches.
//
// Stream priorities: the main stream is created with the device's highest
// priority and the side stream with its lowest, and captured graphs are
// instantiated with cudaGraphInstantiateFlagUseNodePriority (a kernel node
// keeps the priority of the stream it was captured from). The main stream
// carries the critical path of the backward pass (data gradients and the
// BatchNorm backward chain); the weight gradients have slack until their
// join. With equal priorities a weight gradient queued just before a data
// gradient can take every SM and delay it; with these the block scheduler
// hands SMs that free up to main-stream blocks first and the side stream
// fills the rest (the last waves of main-stream kernels).
//
// Everything that a captured CUDA graph may refer to (scratch, workspaces)
// is allocated once and never moved while the context lives, so a graph
// captured at setup stays valid for the whole run.
//
// Timing cache file: one line per measured choice,
//   <key> TAB <algo> TAB <math type> TAB <workspace bytes> TAB <milliseconds>
// where key = "GPU name|sm_XY|cudnnVERSION|<direction>|<dtype>|<shape>".
// Lines for other GPUs or cuDNN versions are kept (one file can serve a
// cluster of mixed machines); malformed lines are ignored. The file is read
// at the first lookup and rewritten (atomically: a temporary file renamed
// over it) by fcc_cuda_shutdown when new choices were measured.
//
//===----------------------------------------------------------------------===//
#include "handles.h"

#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

namespace fcc::cuda {

namespace {

// Device scratch of the kernels (per-channel partial sums of BatchNorm
// and bias-gradient reductions, per-channel coefficients). 16 MiB holds
// 128 partial sums of 2 doubles for 8192 channels, far beyond any layer
// fcc compiles; kernels fall back to fewer partial sums when it does not.
constexpr size_t kScratchBytes = size_t(16) << 20;
// The reductions' completion counters (internal.h) follow each stream's
// scratch in the same allocation, zeroed once.
constexpr size_t kCounterBytes = size_t(kReduceCounters) * sizeof(unsigned);
// cuBLAS workspace: NVIDIA recommends 32 MiB on Hopper (4 MiB before) and
// an explicit workspace is required for cuBLAS calls inside a graph
// capture to be replayable without allocations. cublasLtMatmul (gemm.cpp)
// uses the same buffer: all calls are ordered on the one stream.
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

struct Context {
  bool initialised = false;
  int device = -1;
  cudaStream_t stream = nullptr;
  cudnnHandle_t cudnn = nullptr;
  cublasHandle_t cublas = nullptr;
  cublasLtHandle_t cublasLt = nullptr;
  void *cublasWorkspace = nullptr;
  void *scratch = nullptr;
  void *workspace = nullptr;
  size_t workspaceBytes = 0;
  std::vector<void *> retiredWorkspaces;
  std::string description;
  std::string deviceKey;
  int multiprocessors = 1;
  // The side stream and what it owns (see the file comment).
  cudaStream_t sideStream = nullptr;
  cudnnHandle_t sideCudnn = nullptr;
  void *sideScratch = nullptr;
  void *sideWorkspace = nullptr;
  size_t sideWorkspaceBytes = 0;
  cudaEvent_t forkEvent = nullptr, joinEvent = nullptr;
  // cudaDeviceGetStreamPriorityRange: numerically lower is more urgent.
  int lowestPriority = 0, highestPriority = 0;
  bool sidePending = false; // side work the main stream has not joined
  bool serial = false;      // FCC_CUDA_SERIAL=1: no side stream
};

Context ctx;
// Between side_begin and side_end on this thread: the calls of this thread
// go to the side stream (another thread's, say a data loader's, do not).
thread_local bool onSide = false;

// "1" switches on, as common.cuh's envFlag.
bool envFlag(const char *name) {
  const char *v = std::getenv(name);
  return v && std::strcmp(v, "1") == 0;
}

// Errors: the latest message and the sticky flag. A mutex because a
// trainer's data-loading thread may call the copy functions.
std::mutex errorMutex;
std::string lastMessage;
bool stickyError = false;

// Timing cache.
std::mutex cacheMutex;
std::string cachePath;
bool cacheLoaded = false;
bool cacheDirty = false;
std::map<std::string, CachedAlgo> cacheEntries;

void loadCacheLocked() {
  cacheLoaded = true;
  if (cachePath.empty())
    return;
  std::ifstream in(cachePath);
  if (!in)
    return; // No file yet: the first run creates it.
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    // key \t algo \t math \t workspace \t ms
    std::vector<std::string> fields;
    size_t start = 0;
    while (true) {
      size_t tab = line.find('\t', start);
      fields.push_back(line.substr(start, tab - start));
      if (tab == std::string::npos)
        break;
      start = tab + 1;
    }
    if (fields.size() != 5 || fields[0].empty())
      continue;
    CachedAlgo a;
    char *end = nullptr;
    long algo = std::strtol(fields[1].c_str(), &end, 10);
    if (*end || algo < 0)
      continue;
    long math = std::strtol(fields[2].c_str(), &end, 10);
    if (*end || math < 0)
      continue;
    unsigned long long ws = std::strtoull(fields[3].c_str(), &end, 10);
    if (*end)
      continue;
    a.algo = int(algo);
    a.mathType = int(math);
    a.workspace = size_t(ws);
    a.milliseconds = std::strtof(fields[4].c_str(), nullptr);
    // Choices measured in this process win over the file's.
    cacheEntries.emplace(fields[0], a);
  }
}

void releaseContext() {
  if (ctx.sideStream)
    cudaStreamSynchronize(ctx.sideStream);
  if (ctx.stream)
    cudaStreamSynchronize(ctx.stream);
  // gemm.cpp's cuBLASLt plans, before the handle they were made for.
  releaseGemmPlans();
  if (ctx.cublasLt)
    cublasLtDestroy(ctx.cublasLt);
  if (ctx.cublas)
    cublasDestroy(ctx.cublas);
  if (ctx.cudnn)
    cudnnDestroy(ctx.cudnn);
  if (ctx.sideCudnn)
    cudnnDestroy(ctx.sideCudnn);
  for (void *p : ctx.retiredWorkspaces)
    cudaFree(p);
  for (void *p : {ctx.workspace, ctx.sideWorkspace, ctx.sideScratch})
    if (p)
      cudaFree(p);
  if (ctx.cublasWorkspace)
    cudaFree(ctx.cublasWorkspace);
  if (ctx.scratch)
    cudaFree(ctx.scratch);
  for (cudaEvent_t e : {ctx.forkEvent, ctx.joinEvent})
    if (e)
      cudaEventDestroy(e);
  if (ctx.sideStream)
    cudaStreamDestroy(ctx.sideStream);
  if (ctx.stream)
    cudaStreamDestroy(ctx.stream);
  ctx = Context();
  onSide = false;
}

std::string describeDevice(int device) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError(); // Not sticky: only a description failed.
    return "CUDA device " + std::to_string(device);
  }
  return format("%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major,
                prop.minor, prop.multiProcessorCount,
                double(prop.totalGlobalMem) / double(size_t(1) << 30));
}

} // namespace

//===--- Errors -------------------------------------------------------------===//

std::string format(const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  int size = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string out(size > 0 ? size_t(size) : 0, '\0');
  if (size > 0)
    std::vsnprintf(out.data(), out.size() + 1, fmt, args);
  va_end(args);
  return out;
}

int setError(int code, const std::string &message) {
  std::lock_guard<std::mutex> lock(errorMutex);
  lastMessage = message;
  return code;
}

void setAsyncError(const std::string &message) {
  std::lock_guard<std::mutex> lock(errorMutex);
  lastMessage = message;
  stickyError = true;
}

int cudaCheck(cudaError_t e, const char *fn, const char *what) {
  if (e == cudaSuccess)
    return FCC_OK;
  // Consume the runtime's per-thread error state, or the next
  // checkLaunch would blame this failure (say, an allocation) on a kernel.
  // Device faults stay sticky in CUDA regardless.
  cudaGetLastError();
  return setError(FCC_ERR_BACKEND,
                  format("%s: %s: %s", fn, what, cudaGetErrorString(e)));
}

bool cudaCheckAsync(cudaError_t e, const char *fn, const char *what) {
  if (e == cudaSuccess)
    return true;
  cudaGetLastError(); // As in cudaCheck.
  setAsyncError(format("%s: %s: %s", fn, what, cudaGetErrorString(e)));
  return false;
}

void clearTransientErrors() { cudaGetLastError(); }

bool checkLaunch(const char *fn) {
  return cudaCheckAsync(cudaGetLastError(), fn, "kernel launch failed");
}

//===--- Context accessors ----------------------------------------------------===//

bool initialised() { return ctx.initialised; }

bool ready(const char *fn) {
  if (ctx.initialised) {
    // What checkLaunch reads next must be this function's launch.
    clearTransientErrors();
    return true;
  }
  setAsyncError(format("%s: the CUDA runtime is not initialised (call "
                       "fcc_cuda_init first)",
                       fn));
  return false;
}

cudaStream_t stream() { return onSide ? ctx.sideStream : ctx.stream; }
bool onSideStream() { return onSide; }
int multiprocessors() { return ctx.multiprocessors; }
cudnnHandle_t cudnnHandle() { return onSide ? ctx.sideCudnn : ctx.cudnn; }
cublasHandle_t cublasHandle() { return ctx.cublas; }
cublasLtHandle_t cublasLtHandle() { return ctx.cublasLt; }
void *cublasWorkspace() { return ctx.cublasWorkspace; }
size_t cublasWorkspaceSize() {
  return ctx.cublasWorkspace ? kCublasWorkspaceBytes : 0;
}

void *scratch(size_t bytes, const char *fn) {
  if (bytes > kScratchBytes) {
    setAsyncError(format("%s: needs %zu bytes of kernel scratch, more than "
                         "the %zu the runtime has",
                         fn, bytes, kScratchBytes));
    return nullptr;
  }
  return onSide ? ctx.sideScratch : ctx.scratch;
}

size_t scratchCapacity() { return kScratchBytes; }

unsigned *reduceCounters() {
  return reinterpret_cast<unsigned *>(
      static_cast<char *>(onSide ? ctx.sideScratch : ctx.scratch) +
      kScratchBytes);
}

namespace {
int growWorkspace(void *&buffer, size_t &size, size_t bytes, const char *fn) {
  if (bytes <= size)
    return FCC_OK;
  if (capturing())
    return setError(FCC_ERR_INVALID,
                    format("%s: cannot grow the cuDNN workspace during graph "
                           "capture (create plans before capturing)",
                           fn));
  void *p = nullptr;
  if (int rc = cudaCheck(cudaMalloc(&p, bytes), fn,
                         format("allocating a %zu-byte cuDNN workspace", bytes)
                             .c_str()))
    return rc;
  if (buffer)
    ctx.retiredWorkspaces.push_back(buffer);
  buffer = p;
  size = bytes;
  return FCC_OK;
}
} // namespace

int reserveWorkspace(size_t bytes, size_t sideBytes, const char *fn) {
  if (int rc = growWorkspace(ctx.workspace, ctx.workspaceBytes, bytes, fn))
    return rc;
  return growWorkspace(ctx.sideWorkspace, ctx.sideWorkspaceBytes, sideBytes,
                       fn);
}

void *workspace() { return onSide ? ctx.sideWorkspace : ctx.workspace; }
size_t workspaceSize() {
  return onSide ? ctx.sideWorkspaceBytes : ctx.workspaceBytes;
}

bool capturing() {
  if (!ctx.stream)
    return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(ctx.stream, &status) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return status != cudaStreamCaptureStatusNone;
}

//===--- Timing cache ---------------------------------------------------------===//

std::string deviceKey() { return ctx.deviceKey; }

bool cacheLookup(const std::string &key, CachedAlgo &out) {
  std::lock_guard<std::mutex> lock(cacheMutex);
  if (!cacheLoaded)
    loadCacheLocked();
  auto it = cacheEntries.find(key);
  if (it == cacheEntries.end())
    return false;
  out = it->second;
  return true;
}

void cacheStore(const std::string &key, const CachedAlgo &value) {
  std::lock_guard<std::mutex> lock(cacheMutex);
  if (!cacheLoaded)
    loadCacheLocked();
  cacheEntries[key] = value;
  cacheDirty = true;
}

void cacheFlush() {
  std::lock_guard<std::mutex> lock(cacheMutex);
  if (!cacheDirty || cachePath.empty())
    return;
  if (!cacheLoaded)
    loadCacheLocked();
  // Write next to the target and rename, so that a reader (or a crash)
  // never sees half a file.
  std::string tmp = cachePath + ".tmp." + std::to_string(long(getpid()));
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) {
      setError(FCC_ERR_BACKEND,
               format("fcc_cuda_shutdown: cannot write the timing cache %s",
                      tmp.c_str()));
      return;
    }
    out << "# fcc cuDNN timing cache v1: key\talgo\tmath type\tworkspace "
           "bytes\tmilliseconds\n";
    for (const auto &[key, a] : cacheEntries)
      out << key << '\t' << a.algo << '\t' << a.mathType << '\t'
          << a.workspace << '\t' << format("%.4f", double(a.milliseconds))
          << '\n';
    if (!out) {
      setError(FCC_ERR_BACKEND,
               format("fcc_cuda_shutdown: writing the timing cache %s failed",
                      tmp.c_str()));
      std::remove(tmp.c_str());
      return;
    }
  }
  if (std::rename(tmp.c_str(), cachePath.c_str()) != 0) {
    setError(FCC_ERR_BACKEND,
             format("fcc_cuda_shutdown: cannot rename %s to %s: %s",
                    tmp.c_str(), cachePath.c_str(), std::strerror(errno)));
    std::remove(tmp.c_str());
    return;
  }
  cacheDirty = false;
  // The next context reads the file again: other processes may have added
  // choices meanwhile (what this process measured stays and wins).
  cacheLoaded = false;
}

} // namespace fcc::cuda

using namespace fcc::cuda;

//===--- Device, stream ---------------------------------------------------------===//

namespace {

// A stream's kernel scratch with its zeroed reduction counters after it.
int allocateScratch(void *&p, const char *fn, const char *what) {
  if (int rc = cudaCheck(cudaMalloc(&p, kScratchBytes + kCounterBytes), fn,
                         what))
    return rc;
  // cudaMemset runs on the legacy default stream, which our non-blocking
  // streams do not wait for: finish it before any kernel can count.
  if (int rc = cudaCheck(
          cudaMemset(static_cast<char *>(p) + kScratchBytes, 0, kCounterBytes),
          fn, "zeroing the reduction counters"))
    return rc;
  return cudaCheck(cudaDeviceSynchronize(), fn,
                   "zeroing the reduction counters");
}

// The side stream, its cuDNN handle, scratch and events (fcc_cuda_init).
int createSideStream(const char *fn) {
  ctx.serial = envFlag("FCC_CUDA_SERIAL");
  if (int rc = cudaCheck(cudaStreamCreateWithPriority(&ctx.sideStream,
                                                      cudaStreamNonBlocking,
                                                      ctx.lowestPriority),
                         fn, "creating the side stream"))
    return rc;
  for (cudaEvent_t *e : {&ctx.forkEvent, &ctx.joinEvent})
    if (int rc = cudaCheck(cudaEventCreateWithFlags(e, cudaEventDisableTiming),
                           fn, "cudaEventCreateWithFlags"))
      return rc;
  if (int rc = allocateScratch(ctx.sideScratch, fn,
                               "allocating the side stream's kernel scratch"))
    return rc;
  cudnnStatus_t ds = cudnnCreate(&ctx.sideCudnn);
  if (ds != CUDNN_STATUS_SUCCESS) {
    ctx.sideCudnn = nullptr;
    return setError(FCC_ERR_BACKEND, format("%s: cudnnCreate (side stream): %s",
                                            fn, cudnnGetErrorString(ds)));
  }
  ds = cudnnSetStream(ctx.sideCudnn, ctx.sideStream);
  if (ds != CUDNN_STATUS_SUCCESS)
    return setError(FCC_ERR_BACKEND,
                    format("%s: cudnnSetStream (side stream): %s", fn,
                           cudnnGetErrorString(ds)));
  return FCC_OK;
}

// The main stream waits for the side stream's work queued so far.
bool joinSide(const char *fn) {
  if (!ctx.sidePending)
    return true;
  ctx.sidePending = false;
  return cudaCheckAsync(cudaEventRecord(ctx.joinEvent, ctx.sideStream), fn,
                        "cudaEventRecord (side stream)") &&
         cudaCheckAsync(cudaStreamWaitEvent(ctx.stream, ctx.joinEvent, 0), fn,
                        "cudaStreamWaitEvent (joining the side stream)");
}

} // namespace

extern "C" int fcc_cuda_device_count(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    // No driver, or no device: clear the (non-sticky) runtime error so that
    // it does not surface in a later call.
    cudaGetLastError();
    return 0;
  }
  return count;
}

extern "C" int fcc_cuda_init(int device) {
  const char *fn = "fcc_cuda_init";
  if (ctx.initialised) {
    if (ctx.device == device)
      return FCC_OK;
    return setError(FCC_ERR_INVALID,
                    format("%s: already initialised on device %d (call "
                           "fcc_cuda_shutdown before switching to %d)",
                           fn, ctx.device, device));
  }
  const int count = fcc_cuda_device_count();
  if (count == 0)
    return setError(FCC_ERR_UNSUPPORTED, "no CUDA device found");
  if (device < 0 || device >= count)
    return setError(FCC_ERR_INVALID,
                    format("%s: device %d does not exist (%d CUDA device%s)",
                           fn, device, count, count == 1 ? "" : "s"));
  {
    std::lock_guard<std::mutex> lock(errorMutex);
    lastMessage.clear();
    stickyError = false;
  }
  auto fail = [&](int rc) {
    releaseContext();
    return rc;
  };
  if (int rc = cudaCheck(cudaSetDevice(device), fn, "cudaSetDevice"))
    return fail(rc);
  ctx.device = device;
  cudaDeviceProp prop;
  if (int rc = cudaCheck(cudaGetDeviceProperties(&prop, device), fn,
                         "cudaGetDeviceProperties"))
    return fail(rc);
  ctx.multiprocessors = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
  ctx.description = describeDevice(device);
  ctx.deviceKey = format("%s|sm_%d%d|cudnn%zu", prop.name, prop.major,
                         prop.minor, size_t(cudnnGetVersion()));
  // Non-blocking: work other libraries put on the legacy default stream
  // does not serialise with ours (everything of fcc is on this stream or
  // the side stream). Highest priority: see the file comment.
  if (int rc = cudaCheck(cudaDeviceGetStreamPriorityRange(
                             &ctx.lowestPriority, &ctx.highestPriority),
                         fn, "cudaDeviceGetStreamPriorityRange"))
    return fail(rc);
  if (int rc = cudaCheck(cudaStreamCreateWithPriority(&ctx.stream,
                                                      cudaStreamNonBlocking,
                                                      ctx.highestPriority),
                         fn, "cudaStreamCreateWithPriority"))
    return fail(rc);
  if (int rc = allocateScratch(ctx.scratch, fn,
                               "allocating the kernel scratch"))
    return fail(rc);
  if (int rc = cudaCheck(cudaMalloc(&ctx.cublasWorkspace,
                                    kCublasWorkspaceBytes),
                         fn, "allocating the cuBLAS workspace"))
    return fail(rc);

  cudnnStatus_t ds = cudnnCreate(&ctx.cudnn);
  if (ds != CUDNN_STATUS_SUCCESS) {
    ctx.cudnn = nullptr;
    return fail(setError(FCC_ERR_BACKEND,
                         format("%s: cudnnCreate: %s", fn,
                                cudnnGetErrorString(ds))));
  }
  ds = cudnnSetStream(ctx.cudnn, ctx.stream);
  if (ds != CUDNN_STATUS_SUCCESS)
    return fail(setError(FCC_ERR_BACKEND,
                         format("%s: cudnnSetStream: %s", fn,
                                cudnnGetErrorString(ds))));
  if (int rc = createSideStream(fn))
    return fail(rc);

  cublasStatus_t bs = cublasCreate(&ctx.cublas);
  if (bs != CUBLAS_STATUS_SUCCESS) {
    ctx.cublas = nullptr;
    return fail(setError(FCC_ERR_BACKEND,
                         format("%s: cublasCreate: %s", fn,
                                cublasGetStatusString(bs))));
  }
  bs = cublasSetStream(ctx.cublas, ctx.stream);
  if (bs == CUBLAS_STATUS_SUCCESS)
    bs = cublasSetWorkspace(ctx.cublas, ctx.cublasWorkspace,
                            kCublasWorkspaceBytes);
  // fp32 accumulation everywhere (cuda_kernels.h): no TF32 (the default
  // math mode keeps fp32 GEMMs in fp32) and no reduced-precision split-K
  // reductions for half outputs.
  if (bs == CUBLAS_STATUS_SUCCESS)
    bs = cublasSetMathMode(
        ctx.cublas,
        cublasMath_t(CUBLAS_DEFAULT_MATH |
                     CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
  if (bs != CUBLAS_STATUS_SUCCESS)
    return fail(setError(FCC_ERR_BACKEND,
                         format("%s: configuring cuBLAS: %s", fn,
                                cublasGetStatusString(bs))));
  // cuBLASLt (linear layers, gemm.cpp): the stream and workspace are
  // arguments of each cublasLtMatmul.
  bs = cublasLtCreate(&ctx.cublasLt);
  if (bs != CUBLAS_STATUS_SUCCESS) {
    ctx.cublasLt = nullptr;
    return fail(setError(FCC_ERR_BACKEND,
                         format("%s: cublasLtCreate: %s", fn,
                                cublasGetStatusString(bs))));
  }
  // Library set-up may leave a harmless runtime error behind (a probe that
  // failed); it must not surface as the first kernel's launch failure.
  clearTransientErrors();
  ctx.initialised = true;
  return FCC_OK;
}

extern "C" void fcc_cuda_shutdown(void) {
  cacheFlush();
  if (ctx.stream)
    cudaCheckAsync(cudaStreamSynchronize(ctx.stream), "fcc_cuda_shutdown",
                   "waiting for the stream");
  releaseContext();
}

extern "C" const char *fcc_cuda_last_error(void) {
  // A per-thread copy: the pointer stays valid while another thread records
  // a new error.
  thread_local std::string copy;
  std::lock_guard<std::mutex> lock(errorMutex);
  copy = lastMessage;
  return copy.c_str();
}

extern "C" const char *fcc_cuda_device_description(void) {
  thread_local std::string copy;
  if (ctx.initialised)
    copy = ctx.description;
  else if (fcc_cuda_device_count() > 0)
    copy = describeDevice(0);
  else
    copy = "no CUDA device";
  return copy.c_str();
}

extern "C" void *fcc_cuda_stream(void) { return ctx.stream; }

extern "C" int fcc_cuda_synchronize(void) {
  const char *fn = "fcc_cuda_synchronize";
  if (!ctx.initialised)
    return setError(FCC_ERR_INVALID,
                    format("%s: the CUDA runtime is not initialised", fn));
  joinSide(fn);
  cudaCheckAsync(cudaStreamSynchronize(ctx.stream), fn,
                 "a queued kernel or copy failed");
  // Errors of launches that no API call has reported yet.
  cudaCheckAsync(cudaGetLastError(), fn, "pending CUDA error");
  std::lock_guard<std::mutex> lock(errorMutex);
  return stickyError ? FCC_ERR_BACKEND : FCC_OK;
}

//===--- Memory -----------------------------------------------------------------===//

extern "C" void *fcc_cuda_malloc(int64_t bytes) {
  const char *fn = "fcc_cuda_malloc";
  if (!ctx.initialised) {
    setError(FCC_ERR_INVALID,
             format("%s: the CUDA runtime is not initialised", fn));
    return nullptr;
  }
  if (bytes < 0) {
    setError(FCC_ERR_INVALID,
             format("%s: negative size %lld", fn, (long long)bytes));
    return nullptr;
  }
  // cudaMalloc(0) may return NULL, which callers take for failure: every
  // buffer gets at least one allocation granule.
  const size_t size = bytes > 0 ? size_t(bytes) : 256;
  void *p = nullptr;
  if (cudaCheck(cudaMalloc(&p, size), fn,
                format("allocating %zu bytes", size).c_str()) != FCC_OK)
    return nullptr;
  // Zero-filled on the stream: every use of the buffer comes later on the
  // same stream.
  if (cudaCheck(cudaMemsetAsync(p, 0, size, ctx.stream), fn,
                "zero-filling") != FCC_OK) {
    cudaFree(p);
    return nullptr;
  }
  return p;
}

extern "C" void fcc_cuda_free(void *p) {
  if (p)
    cudaCheckAsync(cudaFree(p), "fcc_cuda_free", "cudaFree");
}

extern "C" int fcc_cuda_copy_to_device(void *dst, const void *src,
                                       int64_t bytes) {
  const char *fn = "fcc_cuda_copy_to_device";
  if (!ctx.initialised)
    return setError(FCC_ERR_INVALID, format("%s: not initialised", fn));
  if (bytes <= 0)
    return bytes == 0 ? FCC_OK
                      : setError(FCC_ERR_INVALID,
                                 format("%s: negative size", fn));
  return cudaCheck(cudaMemcpyAsync(dst, src, size_t(bytes),
                                   cudaMemcpyHostToDevice, ctx.stream),
                   fn, "cudaMemcpyAsync");
}

extern "C" int fcc_cuda_copy_to_host(void *dst, const void *src,
                                     int64_t bytes) {
  const char *fn = "fcc_cuda_copy_to_host";
  if (!ctx.initialised)
    return setError(FCC_ERR_INVALID, format("%s: not initialised", fn));
  if (bytes < 0)
    return setError(FCC_ERR_INVALID, format("%s: negative size", fn));
  if (!joinSide(fn))
    return FCC_ERR_BACKEND;
  if (bytes > 0)
    if (!cudaCheckAsync(cudaMemcpyAsync(dst, src, size_t(bytes),
                                        cudaMemcpyDeviceToHost, ctx.stream),
                        fn, "cudaMemcpyAsync"))
      return FCC_ERR_BACKEND;
  // Waiting reports failures of everything queued before: they are sticky,
  // as the data read back may be garbage.
  if (!cudaCheckAsync(cudaStreamSynchronize(ctx.stream), fn,
                      "waiting for the stream"))
    return FCC_ERR_BACKEND;
  return FCC_OK;
}

extern "C" int fcc_cuda_copy(void *dst, const void *src, int64_t bytes) {
  const char *fn = "fcc_cuda_copy";
  if (!ctx.initialised)
    return setError(FCC_ERR_INVALID, format("%s: not initialised", fn));
  if (bytes < 0)
    return setError(FCC_ERR_INVALID, format("%s: negative size", fn));
  if (bytes == 0 || dst == src)
    return FCC_OK;
  return cudaCheck(cudaMemcpyAsync(dst, src, size_t(bytes),
                                   cudaMemcpyDefault, stream()),
                   fn, "cudaMemcpyAsync");
}

extern "C" int fcc_cuda_zero(void *dst, int64_t bytes) {
  const char *fn = "fcc_cuda_zero";
  if (!ctx.initialised)
    return setError(FCC_ERR_INVALID, format("%s: not initialised", fn));
  if (bytes < 0)
    return setError(FCC_ERR_INVALID, format("%s: negative size", fn));
  if (bytes == 0)
    return FCC_OK;
  return cudaCheck(cudaMemsetAsync(dst, 0, size_t(bytes), stream()), fn,
                   "cudaMemsetAsync");
}

extern "C" void *fcc_cuda_host_alloc(int64_t bytes) {
  const char *fn = "fcc_cuda_host_alloc";
  if (bytes < 0) {
    setError(FCC_ERR_INVALID, format("%s: negative size", fn));
    return nullptr;
  }
  const size_t size = bytes > 0 ? size_t(bytes) : 1;
  void *p = nullptr;
  if (cudaCheck(cudaMallocHost(&p, size), fn,
                format("allocating %zu pinned bytes", size).c_str()) !=
      FCC_OK)
    return nullptr;
  std::memset(p, 0, size);
  return p;
}

extern "C" void fcc_cuda_host_free(void *p) {
  if (p)
    cudaCheckAsync(cudaFreeHost(p), "fcc_cuda_host_free", "cudaFreeHost");
}

extern "C" void fcc_cuda_memory(int64_t *used, int64_t *total) {
  size_t freeBytes = 0, totalBytes = 0;
  if (cudaMemGetInfo(&freeBytes, &totalBytes) != cudaSuccess) {
    cudaGetLastError();
    freeBytes = totalBytes = 0;
  }
  if (used)
    *used = int64_t(totalBytes - freeBytes);
  if (total)
    *total = int64_t(totalBytes);
}

//===--- Graphs -------------------------------------------------------------------===//

extern "C" int fcc_cuda_graph_begin(void) {
  const char *fn = "fcc_cuda_graph_begin";
  if (!ctx.initialised)
    return setError(FCC_ERR_INVALID, format("%s: not initialised", fn));
  if (onSide)
    return setError(FCC_ERR_INVALID,
                    format("%s: called on the side stream (before side_end)",
                           fn));
  // Side work queued before the capture joins the main stream first: a
  // capture may not wait on an event recorded outside it.
  if (!joinSide(fn))
    return FCC_ERR_BACKEND;
  // Thread-local mode: only this thread's unsafe calls (allocation,
  // synchronisation) invalidate the capture; a loader thread that allocates
  // pinned memory does not.
  return cudaCheck(
      cudaStreamBeginCapture(ctx.stream, cudaStreamCaptureModeThreadLocal),
      fn, "cudaStreamBeginCapture");
}

extern "C" int fcc_cuda_graph_end(void **graph_exec) {
  const char *fn = "fcc_cuda_graph_end";
  if (!ctx.initialised)
    return setError(FCC_ERR_INVALID, format("%s: not initialised", fn));
  if (!graph_exec)
    return setError(FCC_ERR_INVALID, format("%s: null result pointer", fn));
  *graph_exec = nullptr;
  // Every stream that joined the capture must have rejoined the main one.
  onSide = false;
  joinSide(fn);
  cudaGraph_t graph = nullptr;
  if (int rc = cudaCheck(cudaStreamEndCapture(ctx.stream, &graph), fn,
                         "cudaStreamEndCapture (was something in the "
                         "captured region not capturable?)"))
    return rc;
  cudaGraphExec_t exec = nullptr;
  // The nodes keep the priorities of the streams they were captured from
  // (see the file comment) rather than taking the launch stream's.
  int rc = cudaCheck(cudaGraphInstantiate(&exec, graph,
                                          cudaGraphInstantiateFlagUseNodePriority),
                     fn, "cudaGraphInstantiate");
  cudaGraphDestroy(graph);
  if (rc == FCC_OK)
    *graph_exec = exec;
  return rc;
}

extern "C" int fcc_cuda_graph_launch(void *graph_exec) {
  const char *fn = "fcc_cuda_graph_launch";
  if (!ctx.initialised || !graph_exec)
    return setError(FCC_ERR_INVALID,
                    format("%s: not initialised or null graph", fn));
  return cudaCheck(
      cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph_exec), ctx.stream),
      fn, "cudaGraphLaunch");
}

extern "C" void fcc_cuda_graph_destroy(void *graph_exec) {
  if (graph_exec)
    cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph_exec));
}

//===--- The side stream ----------------------------------------------------===//

extern "C" void fcc_cuda_side_begin(void) {
  const char *fn = "fcc_cuda_side_begin";
  if (!ready(fn) || ctx.serial)
    return;
  if (onSide) {
    setAsyncError(format("%s: already on the side stream (side_begin twice "
                         "without side_end)",
                         fn));
    return;
  }
  // Fork: the side stream waits for everything queued on the main stream.
  if (!cudaCheckAsync(cudaEventRecord(ctx.forkEvent, ctx.stream), fn,
                      "cudaEventRecord (main stream)") ||
      !cudaCheckAsync(cudaStreamWaitEvent(ctx.sideStream, ctx.forkEvent, 0),
                      fn, "cudaStreamWaitEvent (forking the side stream)"))
    return;
  onSide = true;
  ctx.sidePending = true;
}

extern "C" void fcc_cuda_side_end(void) {
  if (ctx.serial)
    return;
  if (!onSide) {
    setAsyncError("fcc_cuda_side_end: not on the side stream (side_end "
                  "without side_begin)");
    return;
  }
  onSide = false;
}

extern "C" void fcc_cuda_side_join(void) {
  const char *fn = "fcc_cuda_side_join";
  if (!ready(fn) || ctx.serial)
    return;
  if (onSide) {
    setAsyncError(format("%s: called on the side stream (before side_end)",
                         fn));
    return;
  }
  joinSide(fn);
}

extern "C" void fcc_cuda_set_timing_cache(const char *path) {
  std::lock_guard<std::mutex> lock(cacheMutex);
  std::string next = path ? path : "";
  if (next == cachePath)
    return;
  // A new file: read it at the next lookup, merging with what this
  // process measured, and write the merged set at shutdown.
  cachePath = next;
  cacheLoaded = false;
  if (!cacheEntries.empty())
    cacheDirty = true;
}
