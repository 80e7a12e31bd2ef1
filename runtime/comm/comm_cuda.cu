//===- comm_cuda.cu - Compression and NCCL collectives of GPU trainers ----===//
//
// Implements fcc/runtime/comm_cuda.h on top of the GPU compressors
// (cuda_compress.h) and NCCL:
//  - summable payloads (dense fp32, fp16, bf16, RandomK values) are summed by
//    ncclAllReduce in their own type and scaled to the mean afterwards, as
//    the CPU runtime does with MPI;
//  - the other payloads are ncclAllGather-ed, capacity bytes per rank, and
//    every rank decompresses and averages the rows;
//  - the shared and private seeds of each tensor are derived on the device
//    from the step seed (comm_seeds.h), so that a captured graph replays
//    each step with that step's seeds;
//  - with several ranks the GPU's global timer is read before and after
//    every call (two one-thread kernels), and the sums are read on the host
//    once per epoch by fcc_comm_take_stats.
// Built without NCCL (FCC_COMM_NCCL=0, no NCCL at build time), the same
// file serves one rank and refuses several with a clear message.
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/comm.h"
#include "fcc/runtime/comm_cuda.h"
#include "fcc/runtime/comm_seeds.h"
#include "fcc/runtime/cuda_compress.h"

#include "internal.h" // runtime/cuda: stream, errors

#if FCC_COMM_NCCL
#include <nccl.h>
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace fcc::cuda;

namespace {

// Device words: [0] the last mark, [1] compress ns, [2] communicate ns,
// [3..4] the shared and private seeds of the current call.
enum : int { kMark = 0, kCompressNs = 1, kCommNs = 2, kSeeds = 3, kWords = 5 };

struct State {
  bool ready = false;
  bool timed = false; // several ranks (or forced NCCL): measure on device
  int rank = 0, size = 1;
  uint64_t *words = nullptr;      // kWords device words
  void *workspace = nullptr;      // compression workspace (device)
  int64_t workspaceBytes = 0;
  std::vector<void *> buffers;    // gather buffers, workspaces replaced
  uint64_t bytes = 0, collectives = 0;
  std::string description = "one GPU, no NCCL";
#if FCC_COMM_NCCL
  ncclComm_t comm = nullptr;
#endif
} S;

cudaStream_t str() { return stream(); }

__device__ uint64_t globalTimer() {
  uint64_t t = 0;
#ifdef __CUDA_ARCH__ // (the host emulation of the tests has no timer)
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
#endif
  return t;
}

__global__ void markKernel(uint64_t *words) { words[kMark] = globalTimer(); }

__global__ void elapsedKernel(uint64_t *words, int slot) {
  words[slot] += globalTimer() - words[kMark];
}

__global__ void seedsKernel(const uint64_t *step_seed, int64_t tensor,
                            int rank, uint64_t *words) {
  words[kSeeds] = fcc_comm_shared_seed(*step_seed, tensor);
  words[kSeeds + 1] = fcc_comm_private_seed(*step_seed, tensor, rank);
}

/// A batch of copies, passed by value (kernel arguments: 64 x 24 bytes).
struct CopyBatch {
  fcc_copy_item items[FCC_COMM_CUDA_COPY_BATCH];
  int count;
};

__global__ void copyManyKernel(CopyBatch batch) {
  const fcc_copy_item it = batch.items[blockIdx.y];
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < it.n;
       i += stride)
    it.dst[i] = it.src[i];
}

/// Adds the device time of its scope to words[slot] (several ranks only).
struct DeviceTimer {
  int slot;
  explicit DeviceTimer(int slot) : slot(slot) {
    if (S.timed) {
      markKernel<<<1, 1, 0, str()>>>(S.words);
      checkLaunch("fcc_comm_cuda (timer)");
    }
  }
  ~DeviceTimer() {
    if (S.timed) {
      const int into = slot;
      elapsedKernel<<<1, 1, 0, str()>>>(S.words, into);
      checkLaunch("fcc_comm_cuda (timer)");
    }
  }
};

bool usable(const char *fn) {
  if (!S.ready) {
    setAsyncError(format("%s: fcc_comm_cuda_init has not run", fn));
    return false;
  }
  return ready(fn);
}

/// Derives the tensor's seeds into S.words[kSeeds..].
const uint64_t *seeds(const uint64_t *step_seed, int64_t tensor,
                      const char *fn) {
  seedsKernel<<<1, 1, 0, str()>>>(step_seed, tensor, S.rank, S.words);
  checkLaunch(fn);
  return S.words + kSeeds;
}

void copy(void *dst, const void *src, int64_t bytes, const char *fn) {
  if (dst != src && bytes > 0)
    cudaCheckAsync(cudaMemcpyAsync(dst, src, size_t(bytes),
                                   cudaMemcpyDeviceToDevice, str()),
                   fn, "cudaMemcpyAsync");
}

void zero(void *dst, int64_t bytes, const char *fn) {
  if (bytes > 0)
    cudaCheckAsync(cudaMemsetAsync(dst, 0, size_t(bytes), str()), fn,
                   "cudaMemsetAsync");
}

#if FCC_COMM_NCCL
bool ncclOk(ncclResult_t r, const char *fn, const char *what) {
  if (r == ncclSuccess)
    return true;
  const char *detail = S.comm ? ncclGetLastError(S.comm) : "";
  setAsyncError(format("%s: %s: %s%s%s", fn, what, ncclGetErrorString(r),
                       detail && *detail ? ": " : "", detail ? detail : ""));
  return false;
}

ncclDataType_t payloadType(const fcc_compressor *c) {
  switch (c->method) {
  case FCC_COMPRESS_FP16:
    return ncclFloat16;
  case FCC_COMPRESS_BF16:
    return ncclBfloat16;
  default:
    return ncclFloat32;
  }
}
#endif

void takeStats(fcc_comm_stats *add) {
  add->bytes_sent = S.bytes;
  add->collectives = S.collectives;
  S.bytes = S.collectives = 0;
  if (!S.timed || !S.words)
    return;
  uint64_t host[kWords] = {};
  if (cudaMemcpyAsync(host, S.words, sizeof host, cudaMemcpyDeviceToHost,
                      str()) != cudaSuccess ||
      cudaStreamSynchronize(str()) != cudaSuccess)
    return; // a sticky error the trainer reports when it synchronises
  add->compress_seconds = 1e-9 * double(host[kCompressNs]);
  add->comm_seconds = 1e-9 * double(host[kCommNs]);
  cudaMemsetAsync(S.words + kCompressNs, 0, 2 * sizeof(uint64_t), str());
}

} // namespace

extern "C" {

int fcc_comm_cuda_init(char *err, size_t errsize) {
  S.rank = fcc_comm_rank();
  S.size = fcc_comm_size();
  const char *force = std::getenv("FCC_COMM_NCCL");
  const bool nccl = S.size > 1 || (force && std::strcmp(force, "1") == 0);
  S.words = static_cast<uint64_t *>(fcc_cuda_malloc(kWords * 8));
  if (!S.words) {
    std::snprintf(err, errsize, "%s", fcc_cuda_last_error());
    return 1;
  }
  if (nccl) {
#if FCC_COMM_NCCL
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (S.rank == 0) {
      ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) {
        std::snprintf(err, errsize, "ncclGetUniqueId: %s",
                      ncclGetErrorString(r));
        return 1;
      }
    }
    fcc_comm_broadcast(&id, sizeof id, 0);
    ncclResult_t r = ncclCommInitRank(&S.comm, S.size, id, S.rank);
    if (r != ncclSuccess) {
      std::snprintf(err, errsize,
                    "rank %d of %d: ncclCommInitRank: %s (one GPU per rank; "
                    "NCCL_DEBUG=WARN tells more)",
                    S.rank, S.size, ncclGetErrorString(r));
      S.comm = nullptr;
      return 1;
    }
    int version = 0;
    ncclGetVersion(&version);
    S.description = format("NCCL %d.%d.%d, %d rank%s", version / 10000,
                           (version / 100) % 100, version % 100, S.size,
                           S.size == 1 ? "" : "s");
    S.timed = true;
#else
    std::snprintf(err, errsize,
                  "%d ranks, but this trainer was built without NCCL (fcc "
                  "found no NCCL when it was built): it runs on one GPU",
                  S.size);
    return 1;
#endif
  }
  S.ready = true;
  fcc_comm_set_stats_source(takeStats);
  return 0;
}

void fcc_comm_cuda_finalize(void) {
  fcc_comm_set_stats_source(nullptr);
#if FCC_COMM_NCCL
  if (S.comm)
    ncclCommDestroy(S.comm);
  S.comm = nullptr;
#endif
  for (void *p : S.buffers)
    fcc_cuda_free(p);
  S.buffers.clear();
  fcc_cuda_free(S.workspace);
  fcc_cuda_free(S.words);
  S = State{};
}

const char *fcc_comm_cuda_describe(void) { return S.description.c_str(); }

int fcc_comm_cuda_reserve(const fcc_compressor *c, int64_t n) {
  int64_t bytes = fcc_cuda_compress_workspace_bytes(c, n);
  if (bytes <= S.workspaceBytes)
    return 0;
  void *p = fcc_cuda_malloc(bytes);
  if (!p)
    return 1;
  // The old buffer is not referenced by any captured graph yet (setup runs
  // before capture), so it can go at once.
  fcc_cuda_free(S.workspace);
  S.workspace = p;
  S.workspaceBytes = bytes;
  return 0;
}

void *fcc_comm_cuda_gather_buffer(int64_t capacity) {
  void *p = fcc_cuda_malloc(capacity * int64_t(std::max(S.size, 1)));
  if (p)
    S.buffers.push_back(p);
  return p;
}

void fcc_comm_cuda_compress(const fcc_compressor *c, int64_t tensor,
                            const float *g, int64_t n,
                            const uint64_t *step_seed, void *payload) {
  const char *fn = "fcc_comm_cuda_compress";
  if (!usable(fn))
    return;
  DeviceTimer t(kCompressNs);
  const uint64_t *s = seeds(step_seed, tensor, fn);
  fcc_cuda_compress_dseed(c, g, n, s, s + 1, payload, S.workspace);
}

void fcc_comm_cuda_decompress(const fcc_compressor *c, int64_t tensor,
                              const void *payload, int64_t n,
                              const uint64_t *step_seed, float *out) {
  const char *fn = "fcc_comm_cuda_decompress";
  if (!usable(fn))
    return;
  DeviceTimer t(kCompressNs);
  const uint64_t *s = seeds(step_seed, tensor, fn);
  zero(out, n * 4, fn);
  fcc_cuda_decompress_add_dseed(c, payload, n, s, 1.0f, out, S.workspace);
}

void fcc_comm_cuda_decompress_mean(const fcc_compressor *c, int64_t tensor,
                                   const void *rows, int64_t capacity,
                                   int64_t n, const uint64_t *step_seed,
                                   float *out) {
  const char *fn = "fcc_comm_cuda_decompress_mean";
  if (!usable(fn))
    return;
  DeviceTimer t(kCompressNs);
  const uint64_t *s = seeds(step_seed, tensor, fn);
  zero(out, n * 4, fn);
  const float scale = 1.0f / float(S.size);
  for (int r = 0; r < S.size; ++r)
    fcc_cuda_decompress_add_dseed(
        c, static_cast<const char *>(rows) + int64_t(r) * capacity, n, s,
        scale, out, S.workspace);
}

void fcc_comm_cuda_residual(const fcc_compressor *c, int64_t tensor,
                            const float *g, const void *payload, int64_t n,
                            const uint64_t *step_seed, float *out) {
  const char *fn = "fcc_comm_cuda_residual";
  if (!usable(fn))
    return;
  DeviceTimer t(kCompressNs);
  const uint64_t *s = seeds(step_seed, tensor, fn);
  copy(out, g, n * 4, fn);
  fcc_cuda_decompress_add_dseed(c, payload, n, s, -1.0f, out, S.workspace);
}

void fcc_comm_cuda_allreduce_f32(const float *in, float *out, int64_t n,
                                 int average) {
  const char *fn = "fcc_comm_cuda_allreduce_f32";
  if (!usable(fn))
    return;
#if FCC_COMM_NCCL
  if (S.comm) {
    DeviceTimer t(kCommNs);
    if (!ncclOk(ncclAllReduce(in, out, size_t(n), ncclFloat32, ncclSum,
                              S.comm, str()),
                fn, "ncclAllReduce"))
      return;
    if (average && S.size > 1) {
      fcc_compressor dense{};
      dense.method = FCC_COMPRESS_NONE;
      fcc_cuda_payload_scale(&dense, out, n, 1.0f / float(S.size));
    }
    return;
  }
#endif
  (void)average;
  copy(out, in, n * 4, fn);
}

void fcc_comm_cuda_allreduce_payload(const fcc_compressor *c, const void *in,
                                     void *out, int64_t bytes, int64_t n,
                                     int average) {
  const char *fn = "fcc_comm_cuda_allreduce_payload";
  if (!usable(fn))
    return;
#if FCC_COMM_NCCL
  if (S.comm) {
    DeviceTimer t(kCommNs);
    const ncclDataType_t type = payloadType(c);
    const int64_t width = type == ncclFloat32 ? 4 : 2;
    if (!ncclOk(ncclAllReduce(in, out, size_t(bytes / width), type, ncclSum,
                              S.comm, str()),
                fn, "ncclAllReduce"))
      return;
    if (average && S.size > 1)
      fcc_cuda_payload_scale(c, out, n, 1.0f / float(S.size));
    return;
  }
#endif
  (void)c;
  (void)n;
  (void)average;
  copy(out, in, bytes, fn);
}

void fcc_comm_cuda_allgather(const fcc_compressor *c, const void *payload,
                             int64_t n, int64_t capacity, void *rows) {
  const char *fn = "fcc_comm_cuda_allgather";
  (void)c;
  (void)n;
  if (!usable(fn))
    return;
#if FCC_COMM_NCCL
  if (S.comm) {
    DeviceTimer t(kCommNs);
    ncclOk(ncclAllGather(payload, rows, size_t(capacity), ncclUint8, S.comm,
                         str()),
           fn, "ncclAllGather");
    return;
  }
#endif
  copy(rows, payload, capacity, fn);
}

void fcc_comm_cuda_copy_many(const fcc_copy_item *items, int count) {
  const char *fn = "fcc_comm_cuda_copy_many";
  if (count < 0 || (count > 0 && !items)) {
    setAsyncError(format("%s: bad table (%d items)", fn, count));
    return;
  }
  if (!ready(fn))
    return;
  for (int first = 0; first < count; first += FCC_COMM_CUDA_COPY_BATCH) {
    CopyBatch batch{};
    batch.count = std::min(count - first, int(FCC_COMM_CUDA_COPY_BATCH));
    int64_t largest = 0;
    for (int i = 0; i < batch.count; ++i) {
      batch.items[i] = items[first + i];
      largest = std::max(largest, batch.items[i].n);
    }
    if (largest == 0)
      continue;
    // blockIdx.y picks the item; x blocks stride over its entries.
    const dim3 grid(blocksFor(std::min<int64_t>(largest, int64_t(1) << 22)),
                    unsigned(batch.count));
    copyManyKernel<<<grid, kThreads, 0, str()>>>(batch);
    checkLaunch(fn);
  }
}

void fcc_comm_cuda_account(uint64_t bytes, uint64_t collectives) {
  if (S.size > 1) {
    S.bytes += bytes;
    S.collectives += collectives;
  }
}

} // extern "C"
