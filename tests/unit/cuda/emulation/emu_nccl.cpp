//===- emu_nccl.cpp - NCCL of the CUDA emulation, over MPI ----------------===//
//
// Implements emulation/nccl/nccl.h for emulated CUDA trainers started by
// mpirun (tests/lit/e2e/cuda-emulated.test): a communicator is the MPI
// ranks of the job (one rank without MPI, as FCC_COMM_NCCL=1 gives), and a
// collective is an MPI_Allgather of the ranks' buffers followed by a sum
// in rank order (half types added pairwise in half precision, like the CPU
// runtime's MPI operators). Collectives are stream work: they run when the
// emulated stream reaches them, i.e. at once or when a captured graph
// replays (fcc_emu_enqueue).
//
//===----------------------------------------------------------------------===//
#include "emu.h"

#include "nccl.h"

#include "fcc/runtime/compress.h"

#include <mpi.h>

#include <cstring>
#include <vector>

struct ncclComm {
  int rank = 0, size = 1;
};

namespace {

size_t widthOf(ncclDataType_t t) {
  switch (t) {
  case ncclFloat16:
  case ncclBfloat16:
    return 2;
  case ncclFloat32:
    return 4;
  default:
    return 1;
  }
}

bool withMpi() {
  int ready = 0;
  MPI_Initialized(&ready);
  return ready != 0;
}

/// Every rank's `bytes` bytes at `send`, rank after rank.
std::vector<unsigned char> gather(const void *send, size_t bytes,
                                  const ncclComm &c) {
  std::vector<unsigned char> all(bytes * size_t(c.size));
  if (c.size == 1 || !withMpi())
    std::memcpy(all.data(), send, bytes);
  else
    MPI_Allgather(send, int(bytes), MPI_BYTE, all.data(), int(bytes),
                  MPI_BYTE, MPI_COMM_WORLD);
  return all;
}

} // namespace

extern "C" {

const char *ncclGetErrorString(ncclResult_t r) {
  return r == ncclSuccess ? "no error" : "emulated NCCL error";
}
const char *ncclGetLastError(ncclComm_t) { return ""; }
ncclResult_t ncclGetVersion(int *version) {
  *version = 0; // "NCCL 0.0.0": the emulation
  return ncclSuccess;
}
ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  std::memset(id, 0, sizeof *id);
  std::strcpy(id->internal, "fcc-emulated-nccl");
  return ncclSuccess;
}
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id,
                              int rank) {
  if (std::strcmp(id.internal, "fcc-emulated-nccl") != 0 || nranks < 1 ||
      rank < 0 || rank >= nranks)
    return ncclInvalidArgument;
  int worldSize = 1;
  if (withMpi())
    MPI_Comm_size(MPI_COMM_WORLD, &worldSize);
  if (worldSize != nranks)
    return ncclInvalidArgument;
  *comm = new ncclComm{rank, nranks};
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count,
                           ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t) {
  if (op != ncclSum || !comm || widthOf(type) == 1)
    return ncclInvalidArgument;
  const ncclComm c = *comm;
  fcc_emu_enqueue([=] {
    const size_t bytes = count * widthOf(type);
    std::vector<unsigned char> all = gather(send, bytes, c);
    fcc_compressor sum{};
    sum.method = type == ncclFloat16    ? FCC_COMPRESS_FP16
                 : type == ncclBfloat16 ? FCC_COMPRESS_BF16
                                        : FCC_COMPRESS_NONE;
    std::memcpy(recv, all.data(), bytes);
    for (int r = 1; r < c.size; ++r)
      fcc_payload_sum(&sum, recv, all.data() + size_t(r) * bytes,
                      int64_t(count));
  });
  return ncclSuccess;
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count,
                           ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t) {
  if (!comm)
    return ncclInvalidArgument;
  const ncclComm c = *comm;
  fcc_emu_enqueue([=] {
    std::vector<unsigned char> all = gather(send, count * widthOf(type), c);
    std::memcpy(recv, all.data(), all.size());
  });
  return ncclSuccess;
}

} // extern "C"
