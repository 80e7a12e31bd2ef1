/*===- comm_cuda.h - Compression and NCCL collectives of GPU trainers -----===*
 *
 * The GPU counterpart of the fcc_comm_* entry points of comm.h, called by
 * the code `fcc compile --target cuda` generates for the compression and
 * collective ops of @train_step (ir/FccCommOps.td). Gradients, payloads and
 * gathered rows are device memory; compression runs in the kernels of
 * cuda_compress.h and the payloads travel through NCCL, both enqueued on the
 * runtime's one stream (fcc_cuda_stream), so a captured train step replays
 * them. Nothing here synchronises, allocates or reads device data on the
 * host after fcc_comm_cuda_init / fcc_comm_cuda_reserve /
 * fcc_comm_cuda_gather_buffer (all called by the program's setup, before
 * any capture).
 *
 * Ranks: the host runtime (comm.h) starts MPI under a launcher; this one
 * creates an NCCL communicator over the same ranks, its unique id broadcast
 * by MPI (fcc_comm_broadcast). On one rank there is no NCCL: collectives are
 * device copies. FCC_COMM_NCCL=1 in the environment creates a one-rank NCCL
 * communicator anyway (to exercise the NCCL path on a single GPU).
 *
 * Seeds: the step seed is a device pointer (the step's fcc_hyper.seed); a
 * kernel derives each tensor's shared and private seeds from it with the
 * functions of comm_seeds.h, exactly as the CPU runtime does on the host.
 *
 * Payload sizes are static on the GPU: threshold payloads (whose used size
 * is known only on the device) travel padded to their capacity, so what a
 * step sends is known when the code is generated; the generated step reports
 * it with fcc_comm_cuda_account. Time spent compressing and communicating is
 * measured on the device (the GPU's global timer around each call, when
 * there are several ranks) and read by fcc_comm_take_stats.
 *
 * Errors are sticky errors of the CUDA runtime (fcc_cuda_last_error), which
 * the trainer checks when it synchronises.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_COMM_CUDA_H
#define FCC_RUNTIME_COMM_CUDA_H

#include "fcc/runtime/compress.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* After fcc_comm_init (comm.h) and fcc_cuda_init, on every rank together:
 * joins the NCCL communicator of the ranks. Returns 0, or 1 with a message
 * in err. Also registers the device statistics with fcc_comm_take_stats. */
int fcc_comm_cuda_init(char *err, size_t errsize);
void fcc_comm_cuda_finalize(void);
/* "NCCL 2.28.9, 8 ranks" or "one GPU, no NCCL". */
const char *fcc_comm_cuda_describe(void);

/* Setup: grows the shared compression workspace to what compressor c needs
 * for n entries. Returns 0, or non-zero (fcc_cuda_last_error) when the
 * allocation failed. */
int fcc_comm_cuda_reserve(const fcc_compressor *c, int64_t n);
/* Setup: a device buffer of size() * capacity bytes for
 * fcc_comm_cuda_allgather (NULL on failure), owned by the runtime. */
void *fcc_comm_cuda_gather_buffer(int64_t capacity);

/* ---- entry points of generated code (device memory) ---- */

void fcc_comm_cuda_compress(const fcc_compressor *c, int64_t tensor,
                            const float *g, int64_t n,
                            const uint64_t *step_seed, void *payload);
void fcc_comm_cuda_decompress(const fcc_compressor *c, int64_t tensor,
                              const void *payload, int64_t n,
                              const uint64_t *step_seed, float *out);
void fcc_comm_cuda_decompress_mean(const fcc_compressor *c, int64_t tensor,
                                   const void *rows, int64_t capacity,
                                   int64_t n, const uint64_t *step_seed,
                                   float *out);
void fcc_comm_cuda_residual(const fcc_compressor *c, int64_t tensor,
                            const float *g, const void *payload, int64_t n,
                            const uint64_t *step_seed, float *out);
void fcc_comm_cuda_allreduce_f32(const float *in, float *out, int64_t n,
                                 int average);
void fcc_comm_cuda_allreduce_payload(const fcc_compressor *c, const void *in,
                                     void *out, int64_t bytes, int64_t n,
                                     int average);
/* rows + r * capacity = rank r's payload, all capacity bytes of it. */
void fcc_comm_cuda_allgather(const fcc_compressor *c, const void *payload,
                             int64_t n, int64_t capacity, void *rows);
/* Flattening and unflattening gradients: items[i].dst[0..n) =
 * items[i].src[0..n) for every item, device memory, in one kernel launch
 * per FCC_COMM_CUDA_COPY_BATCH items (the table travels as kernel
 * arguments, so a captured graph keeps it and the host array can go). */
typedef struct fcc_copy_item {
  float *dst;
  const float *src;
  int64_t n;
} fcc_copy_item;
#define FCC_COMM_CUDA_COPY_BATCH 64
void fcc_comm_cuda_copy_many(const fcc_copy_item *items, int count);

/* After each train step: the payload bytes and collectives of one step
 * (counted when there are several ranks). */
void fcc_comm_cuda_account(uint64_t bytes, uint64_t collectives);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FCC_RUNTIME_COMM_CUDA_H */
