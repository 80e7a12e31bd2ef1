/*===- comm.h - Ranks and collectives of data-parallel training -----------===*
 *
 * One process per rank. A trainer started by mpirun (OpenMPI, MPICH or any
 * PMI/PMIx launcher) takes its rank and the world size from MPI; started on
 * its own it is rank 0 of 1 and never touches MPI. Generated code calls the
 * fcc_comm_* entry points below for the compression and collective ops of
 * @train_step (ir/FccCommOps.td); the trainer uses the rest.
 *
 * Every collective is non-blocking MPI polled to completion with a deadline
 * (fcc_comm_init's timeout): when a rank dies the others stop within that
 * time with a message instead of hanging. The statistics count what this
 * rank hands to MPI: the payload bytes of each collective (an all-reduce of
 * B bytes counts B, whatever algorithm MPI uses underneath), the number of
 * collectives, and the time spent compressing and communicating. On one
 * rank nothing is sent and nothing is counted.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_COMM_H
#define FCC_RUNTIME_COMM_H

#include "fcc/runtime/compress.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Starts MPI when a launcher set up this process (OMPI_COMM_WORLD_SIZE,
 * PMI_SIZE or PMIX_RANK in the environment). timeout_seconds bounds the wait
 * of any collective (<= 0: forever). Returns 0, or 1 with a message in err. */
int fcc_comm_init(int *argc, char ***argv, double timeout_seconds, char *err,
                  size_t errsize);
void fcc_comm_finalize(void);
int fcc_comm_rank(void);
int fcc_comm_size(void);
/* This rank's index among the ranks of its node (processes sharing memory)
 * and their number: a GPU trainer uses local_rank's GPU. */
int fcc_comm_local_rank(void);
int fcc_comm_local_size(void);
/* "MPI (Open MPI v4.1.4)" or "one process, no MPI". */
const char *fcc_comm_describe(void);
/* Ends every rank of the job (MPI_Abort) or, alone, this process. */
void fcc_comm_abort(int code);

/* ---- entry points of generated code (host memory) ---- */

/* payload = compress(g): seeds derived from the step seed and `tensor`
 * (RandomK's positions shared by all ranks, stochastic rounding per rank). */
void fcc_comm_compress(const fcc_compressor *c, int64_t tensor,
                       const float *g, int64_t n, uint64_t step_seed,
                       void *payload);
/* out = decompress(payload). */
void fcc_comm_decompress(const fcc_compressor *c, int64_t tensor,
                         const void *payload, int64_t n, uint64_t step_seed,
                         float *out);
/* out = mean over ranks r of decompress(rows + r * capacity). */
void fcc_comm_decompress_mean(const fcc_compressor *c, int64_t tensor,
                              const void *rows, int64_t capacity, int64_t n,
                              uint64_t step_seed, float *out);
/* out = g - decompress(payload) (error feedback). */
void fcc_comm_residual(const fcc_compressor *c, int64_t tensor,
                       const float *g, const void *payload, int64_t n,
                       uint64_t step_seed, float *out);
/* out = sum (or mean) over ranks of in; in == out is allowed. */
void fcc_comm_allreduce_f32(const float *in, float *out, int64_t n,
                            int average);
/* The same for a summable payload (fp16/bf16 sum in half precision) of
 * `bytes` bytes encoding n gradient entries. */
void fcc_comm_allreduce_payload(const fcc_compressor *c, const void *in,
                                void *out, int64_t bytes, int64_t n,
                                int average);
/* A buffer of size() * capacity bytes for fcc_comm_allgather, owned by the
 * runtime (freed by fcc_comm_finalize). */
void *fcc_comm_gather_buffer(int64_t capacity);
/* rows + r * capacity = rank r's payload (only its used bytes move). */
void fcc_comm_allgather(const fcc_compressor *c, const void *payload,
                        int64_t n, int64_t capacity, void *rows);

/* ---- trainer ---- */

/* x = elementwise sum (or, with max != 0, maximum) over ranks, in place. */
void fcc_comm_allreduce_f64(double *x, int64_t n, int max);
/* out[r] = rank r's value. */
void fcc_comm_allgather_u64(uint64_t value, uint64_t *out);
/* Whether any rank passed a non-zero flag. */
int fcc_comm_any(int flag);
/* Copies root's `bytes` bytes at data to every rank (NCCL's unique id). */
void fcc_comm_broadcast(void *data, int64_t bytes, int root);

typedef struct fcc_comm_stats {
  uint64_t bytes_sent;    /* payload bytes handed to collectives */
  uint64_t collectives;   /* number of collectives */
  double compress_seconds; /* compress, decompress, residual */
  double comm_seconds;    /* inside collectives (waiting included) */
} fcc_comm_stats;
/* Copies the statistics since the last call and resets them. */
void fcc_comm_take_stats(fcc_comm_stats *out);
/* Another source of statistics (the GPU collectives of
 * fcc/runtime/comm_cuda.h): fcc_comm_take_stats adds what `take` reports
 * (since its last call) to its own. NULL removes it. */
void fcc_comm_set_stats_source(void (*take)(fcc_comm_stats *add));

#ifdef __cplusplus
}
#endif

#endif /* FCC_RUNTIME_COMM_H */
