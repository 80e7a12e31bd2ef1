/*===- cuda_compress.h - Gradient compressors on the GPU (C API) ----------===*
 *
 * The compressors of compress.h on device memory: the same methods, the same
 * packed formats and the same random streams, so a payload made here is
 * byte-identical to the one fcc_compress makes on the CPU from the same
 * gradient and seeds, and either side decodes the other's payloads.
 *
 * Conventions (as cuda_kernels.h): g, payload, out and workspace are device
 * pointers; everything is enqueued on the runtime's one stream
 * (fcc_cuda_stream) and is asynchronous; bad arguments and failed launches
 * are sticky errors (fcc_cuda_synchronize / fcc_cuda_last_error). The
 * compressor c and the sizes are read on the host when the call is made.
 *
 * CUDA graphs: no function here synchronises with the host, copies to or
 * from the host, or allocates, so every call can be captured. Data-dependent
 * sizes stay on the device: the count of a threshold payload is computed,
 * written into the payload and used by the later kernels of the same call
 * without the host reading it. The seeds of fcc_cuda_compress /
 * fcc_cuda_decompress_add are kernel arguments, so a captured call replays
 * with the seeds of capture time; the *_dseed variants read them from device
 * memory when the kernels run (a captured graph then sees each step's seeds,
 * like fcc_cuda_dropout_mask).
 *
 * Payloads have no alignment requirement (a row of an allgather buffer may
 * start anywhere); aligned payloads use wider loads and stores.
 *
 * The workspace is device memory of fcc_cuda_compress_workspace_bytes(c, n)
 * bytes (0 for none, fp16 and bf16, which need none: NULL is fine then),
 * used by one call at a time; its contents need no initialisation and do not
 * matter between calls. One workspace serves compress and decompress_add.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_CUDA_COMPRESS_H
#define FCC_RUNTIME_CUDA_COMPRESS_H

#include "fcc/runtime/compress.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes of device workspace that fcc_cuda_compress and
 * fcc_cuda_decompress_add need for n entries (0 when none is needed): about
 * n/4 bytes for the thresholds and randomk (a mask and a prefix count per 32
 * entries), n/2 + 8 KiB for topk, plus 25 to 41 bytes per kept entry for
 * randomk's sampling (k = fcc_compress_k); 256 bytes for terngrad; 4 bytes
 * per bucket plus 24 bytes per 8192 entries for qsgd. */
int64_t fcc_cuda_compress_workspace_bytes(const fcc_compressor *c, int64_t n);

/* fcc_compress on the GPU: compresses g[0..n) (device) into payload
 * (device, fcc_compress_capacity(c, n) bytes available). Returns the payload
 * bytes for the fixed-size methods (fcc_compress_payload_bytes); for
 * thresholdv and adaptive-threshold, whose size depends on the data, it
 * returns the capacity: the actual size is
 * fcc_compress_payload_bytes(c, header, n) of the payload's first 4 bytes
 * (the count), which stay on the device; bytes past the actual size are not
 * written. Returns -1 (sticky error) on bad arguments (n < 0, n >= 2^31,
 * no workspace where one is needed, unknown method). */
int64_t fcc_cuda_compress(const fcc_compressor *c, const float *g, int64_t n,
                          uint64_t shared_seed, uint64_t private_seed,
                          void *payload, void *workspace);
/* The same with the seeds read from device memory (uint64_t each) when the
 * kernels run. */
int64_t fcc_cuda_compress_dseed(const fcc_compressor *c, const float *g,
                                int64_t n, const uint64_t *shared_seed,
                                const uint64_t *private_seed, void *payload,
                                void *workspace);

/* fcc_decompress_add on the GPU: out[i] += scale * decompress(payload)[i]
 * for i < n (payload and out on the device). shared_seed must be the one
 * compress used (randomk). */
void fcc_cuda_decompress_add(const fcc_compressor *c, const void *payload,
                             int64_t n, uint64_t shared_seed, float scale,
                             float *out, void *workspace);
void fcc_cuda_decompress_add_dseed(const fcc_compressor *c,
                                   const void *payload, int64_t n,
                                   const uint64_t *shared_seed, float scale,
                                   float *out, void *workspace);

/* fcc_payload_sum / fcc_payload_scale on device payloads (summable methods;
 * nothing for the others). No workspace. */
void fcc_cuda_payload_sum(const fcc_compressor *c, void *inout,
                          const void *in, int64_t n);
void fcc_cuda_payload_scale(const fcc_compressor *c, void *payload, int64_t n,
                            float scale);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FCC_RUNTIME_CUDA_COMPRESS_H */
