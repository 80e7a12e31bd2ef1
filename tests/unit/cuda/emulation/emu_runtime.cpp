//===- emu_runtime.cpp - Emulated context of the CUDA runtime (tests only) ===//
//
// Stands in for runtime/cuda/context.cpp (and the CUDA runtime library) in
// cuda_kernels_emulated_test: "device" memory is host memory, the stream is
// the calling thread, a graph is the list of launches recorded between
// graph_begin and graph_end, and the internal.h services (errors, scratch)
// behave like the real ones. The kernel sources (elementwise.cu,
// batchnorm.cu, training.cu, compress.cu, comm_cuda.cu) are linked
// unchanged apart from their launch syntax (preprocess.py). Copies and
// memsets on the stream are recorded into a graph being captured, like
// launches. Convolutions and GEMMs run on the CPU kernels (emu_dnn.cpp);
// NCCL runs over MPI (emu_nccl.cpp).
//
// The side stream (fcc_cuda_side_*): work queued on it is held back and
// runs (or is recorded into the graph being captured) at the next
// fcc_cuda_side_join, the latest moment the real side stream may run it.
// A memory plan that let the main stream reuse a side op's buffers before
// the join, or read its results early, computes different values here than
// the CPU target does (tests/lit/e2e/cuda-emulated.test compares them).
//
//===----------------------------------------------------------------------===//
#include "emu.h"

#include "internal.h"

#include <barrier>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <thread>
#include <vector>

thread_local dim3 blockIdx, threadIdx;
dim3 blockDim, gridDim;

namespace {

// Worker threads for the blocks of synchronising kernels, kept across
// launches (creating 256 threads per block would dominate the test's time).
// One block at a time: the workers start together, meet at the block's
// barrier for each __syncthreads, and report when the block is done.
class BlockPool {
public:
  explicit BlockPool(unsigned size)
      : size_(size), start_(size + 1), done_(size + 1), block_(size) {
    for (unsigned t = 0; t < size; ++t)
      threads_.emplace_back([this, t] { work(t); });
  }
  ~BlockPool() {
    stop_ = true;
    start_.arrive_and_wait();
    for (std::thread &th : threads_)
      th.join();
  }
  unsigned size() const { return size_; }
  std::barrier<> &blockBarrier() { return block_; }
  void runBlock(dim3 b, const std::function<void()> &body) {
    block = b;
    body_ = &body;
    start_.arrive_and_wait();
    done_.arrive_and_wait();
  }

private:
  void work(unsigned t) {
    while (true) {
      start_.arrive_and_wait(); // the barrier publishes block, body_, stop_
      if (stop_)
        return;
      blockIdx = block;
      threadIdx = dim3(t, 0, 0);
      (*body_)();
      done_.arrive_and_wait();
    }
  }

  unsigned size_;
  std::barrier<> start_, done_, block_;
  std::vector<std::thread> threads_;
  dim3 block;
  const std::function<void()> *body_ = nullptr;
  bool stop_ = false;
};

// One pool per block size, kept (kernels of different block sizes
// alternate in a training step).
std::map<unsigned, std::unique_ptr<BlockPool>> pools;
std::barrier<> *blockBarrier = nullptr; // of the block running now
bool capturingNow = false;
using Graph = std::vector<std::function<void()>>;
Graph *graph = nullptr;
bool onSide = false;
Graph sideQueue; // side-stream work not yet joined

void run(dim3 grid, dim3 block, const std::function<void()> &body,
         bool sync) {
  gridDim = grid;
  blockDim = block;
  BlockPool *pool = nullptr;
  if (sync) {
    std::unique_ptr<BlockPool> &p = pools[block.x];
    if (!p)
      p = std::make_unique<BlockPool>(block.x);
    pool = p.get();
  }
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        const dim3 b(bx, by, bz);
        if (sync) {
          blockBarrier = &pool->blockBarrier();
          pool->runBlock(b, body);
          blockBarrier = nullptr;
          continue;
        }
        blockIdx = b;
        for (unsigned t = 0; t < block.x; ++t) {
          threadIdx = dim3(t, 0, 0);
          body();
        }
      }
}


[[noreturn]] void die(const char *what) {
  std::fprintf(stderr, "CUDA emulation: %s\n", what);
  std::abort();
}

// The main stream waits for the side stream: its held-back work runs now.
void joinSide() {
  Graph work;
  work.swap(sideQueue);
  for (auto &w : work)
    fcc_emu_enqueue(std::move(w));
}

} // namespace

void fcc_emu_enqueue(std::function<void()> work) {
  if (onSide)
    sideQueue.push_back(std::move(work));
  else if (capturingNow)
    graph->push_back(std::move(work));
  else
    work();
}

bool fcc_emu_capturing() { return capturingNow; }

void fcc_emu_sync() {
  if (!blockBarrier)
    die("__syncthreads in a kernel launched without fcc_emu_launch_sync "
        "(add it to SYNC_KERNELS in preprocess.py)");
  blockBarrier->arrive_and_wait();
}

// A launch is stream work like any other: run now, held for the side
// stream's join, or recorded into the graph being captured.
void fcc_emu_launch(dim3 grid, dim3 block, std::function<void()> body) {
  fcc_emu_enqueue([=] { run(grid, block, body, false); });
}

void fcc_emu_launch_sync(dim3 grid, dim3 block, std::function<void()> body) {
  fcc_emu_enqueue([=] { run(grid, block, body, true); });
}

// The CUDA runtime functions the kernel sources call themselves.
extern "C" cudaError_t cudaGetLastError(void) { return cudaSuccess; }
extern "C" const char *cudaGetErrorString(cudaError_t) {
  return "emulated CUDA error";
}
extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src,
                                       size_t count, cudaMemcpyKind kind,
                                       cudaStream_t) {
  if (kind == cudaMemcpyDeviceToHost && capturingNow)
    die("a copy to the host inside a captured graph");
  fcc_emu_enqueue([=] { std::memmove(dst, src, count); });
  return cudaSuccess;
}
extern "C" cudaError_t cudaMemsetAsync(void *p, int value, size_t count,
                                       cudaStream_t) {
  fcc_emu_enqueue([=] { std::memset(p, value, count); });
  return cudaSuccess;
}
// Emulated launches run when they are made: the stream is always idle.
extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t) {
  return cudaSuccess;
}

namespace fcc::cuda {

namespace {
std::string lastMessage;
bool sticky = false, ready_ = false;
void *scratchBuffer = nullptr;
constexpr size_t kScratchBytes = size_t(16) << 20; // as context.cpp
} // namespace

std::string format(const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  char buf[4096];
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  return buf;
}
int setError(int code, const std::string &message) {
  lastMessage = message;
  return code;
}
void setAsyncError(const std::string &message) {
  lastMessage = message;
  sticky = true;
}
int cudaCheck(cudaError_t e, const char *fn, const char *what) {
  return e == cudaSuccess
             ? FCC_OK
             : setError(FCC_ERR_BACKEND, format("%s: %s", fn, what));
}
bool cudaCheckAsync(cudaError_t e, const char *fn, const char *what) {
  if (e != cudaSuccess)
    setAsyncError(format("%s: %s", fn, what));
  return e == cudaSuccess;
}
bool checkLaunch(const char *) { return true; }
void clearTransientErrors() {}
bool initialised() { return ready_; }
bool ready(const char *fn) {
  if (!ready_)
    setAsyncError(format("%s: the CUDA runtime is not initialised", fn));
  return ready_;
}
cudaStream_t stream() { return reinterpret_cast<cudaStream_t>(1); }
bool onSideStream() { return onSide; }
int multiprocessors() { return 1; }
void *scratch(size_t bytes, const char *fn) {
  if (bytes > kScratchBytes) {
    setAsyncError(format("%s: scratch of %zu bytes", fn, bytes));
    return nullptr;
  }
  return scratchBuffer;
}
size_t scratchCapacity() { return kScratchBytes; }
// One set for both streams: their work runs one call at a time here.
unsigned reduceCounterArray[kReduceCounters];
unsigned *reduceCounters() { return reduceCounterArray; }
int reserveWorkspace(size_t, size_t, const char *) { return FCC_OK; }
void *workspace() { return nullptr; }
size_t workspaceSize() { return 0; }
bool capturing() { return capturingNow; }
std::string deviceKey() { return "emulated"; }
bool cacheLookup(const std::string &, CachedAlgo &) { return false; }
void cacheStore(const std::string &, const CachedAlgo &) {}
void cacheFlush() {}

} // namespace fcc::cuda

using namespace fcc::cuda;

extern "C" {

// FCC_EMU_DEVICES=N pretends to have N devices (emulated multi-rank runs
// give each rank its own "GPU").
int fcc_cuda_device_count(void) {
  const char *n = std::getenv("FCC_EMU_DEVICES");
  return n && std::atoi(n) > 0 ? std::atoi(n) : 1;
}
int fcc_cuda_init(int) {
  if (!ready_) {
    // Scratch starts as NaN bytes: a kernel that reads scratch it did not
    // write in the same call shows up as NaN results.
    scratchBuffer = std::malloc(kScratchBytes);
    std::memset(scratchBuffer, 0xff, kScratchBytes);
  }
  ready_ = true;
  sticky = false;
  lastMessage.clear();
  return FCC_OK;
}
void fcc_cuda_shutdown(void) {
  std::free(scratchBuffer);
  scratchBuffer = nullptr;
  ready_ = false;
}
const char *fcc_cuda_last_error(void) { return lastMessage.c_str(); }
const char *fcc_cuda_device_description(void) {
  return "CUDA emulation (sm_00, 1 SMs, 0.0 GiB)";
}
void *fcc_cuda_stream(void) { return reinterpret_cast<void *>(1); }
int fcc_cuda_synchronize(void) {
  joinSide();
  return sticky ? FCC_ERR_BACKEND : FCC_OK;
}
void *fcc_cuda_malloc(int64_t bytes) {
  return std::calloc(size_t(bytes > 0 ? bytes : 256), 1);
}
void fcc_cuda_free(void *p) { std::free(p); }
int fcc_cuda_copy_to_device(void *dst, const void *src, int64_t bytes) {
  std::memcpy(dst, src, size_t(bytes));
  return FCC_OK;
}
int fcc_cuda_copy_to_host(void *dst, const void *src, int64_t bytes) {
  joinSide();
  std::memcpy(dst, src, size_t(bytes));
  return sticky ? FCC_ERR_BACKEND : FCC_OK;
}
// Device copies and zeroing are stream work, as in context.cpp (through
// the emulated cudaMemcpyAsync / cudaMemsetAsync above).
int fcc_cuda_copy(void *dst, const void *src, int64_t bytes) {
  cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDefault, stream());
  return FCC_OK;
}
int fcc_cuda_zero(void *dst, int64_t bytes) {
  cudaMemsetAsync(dst, 0, size_t(bytes), stream());
  return FCC_OK;
}
void *fcc_cuda_host_alloc(int64_t bytes) {
  return std::calloc(size_t(bytes > 0 ? bytes : 1), 1);
}
void fcc_cuda_host_free(void *p) { std::free(p); }
void fcc_cuda_memory(int64_t *used, int64_t *total) {
  *used = 1;
  *total = 2;
}
int fcc_cuda_graph_begin(void) {
  if (onSide)
    return setError(FCC_ERR_INVALID, "fcc_cuda_graph_begin: called on the "
                                     "side stream (before side_end)");
  joinSide(); // side work queued before the capture is not part of it
  capturingNow = true;
  graph = new Graph();
  return FCC_OK;
}
int fcc_cuda_graph_end(void **exec) {
  onSide = false;
  joinSide();
  capturingNow = false;
  *exec = graph;
  graph = nullptr;
  return FCC_OK;
}
int fcc_cuda_graph_launch(void *exec) {
  for (auto &step : *static_cast<Graph *>(exec))
    step();
  return FCC_OK;
}
void fcc_cuda_graph_destroy(void *exec) { delete static_cast<Graph *>(exec); }
void fcc_cuda_set_timing_cache(const char *) {}
// FCC_CUDA_SERIAL=1: everything on the main stream, as on a GPU.
static bool serialStreams() {
  const char *v = std::getenv("FCC_CUDA_SERIAL");
  return v && std::strcmp(v, "1") == 0;
}
void fcc_cuda_side_begin(void) {
  if (onSide)
    setAsyncError("fcc_cuda_side_begin: already on the side stream");
  onSide = !serialStreams();
}
void fcc_cuda_side_end(void) {
  if (!onSide && !serialStreams())
    setAsyncError("fcc_cuda_side_end: not on the side stream");
  onSide = false;
}
void fcc_cuda_side_join(void) {
  if (onSide)
    setAsyncError("fcc_cuda_side_join: called on the side stream");
  joinSide();
}

} // extern "C"
