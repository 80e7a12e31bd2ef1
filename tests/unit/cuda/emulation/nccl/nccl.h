/*===- nccl.h - The part of NCCL's API the CUDA emulation provides --------===*
 *
 * Tests only: runtime/comm/comm_cuda.cu compiled for the host emulation
 * includes this instead of NCCL's header; emu_nccl.cpp implements it over
 * MPI (MPI_COMM_WORLD of the trainer's ranks) on host memory, which is the
 * emulation's device memory. Only what comm_cuda.cu calls is declared.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_TESTS_EMU_NCCL_H
#define FCC_TESTS_EMU_NCCL_H

#include <cuda_runtime.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ncclComm *ncclComm_t;
typedef struct {
  char internal[128];
} ncclUniqueId;
typedef enum {
  ncclSuccess = 0,
  ncclInvalidArgument = 4,
  ncclInternalError = 3
} ncclResult_t;
typedef enum {
  ncclUint8 = 1,
  ncclFloat16 = 6,
  ncclFloat32 = 7,
  ncclBfloat16 = 9
} ncclDataType_t;
typedef enum { ncclSum = 0 } ncclRedOp_t;

const char *ncclGetErrorString(ncclResult_t result);
const char *ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclGetVersion(int *version);
ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id,
                              int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff,
                           size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* FCC_TESTS_EMU_NCCL_H */
