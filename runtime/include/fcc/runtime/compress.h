/*===- compress.h - Gradient compressors of data-parallel training (C API) -===*
 *
 * The compressors of fcc's compressed data-parallel training: a rank packs
 * its gradient g[0..n) into a byte payload (fcc_compress), the payloads of all
 * ranks meet in a collective (allreduce for the summable methods, allgather
 * for the others), and every rank adds the decoded result into its dense
 * gradient (fcc_decompress_add). The payload bytes are the bytes on the wire,
 * so these formats are the contract between the CPU runtime, the CUDA runtime
 * and fcc.compress / fcc.decompress in the IR (ir/FccCommOps.td).
 *
 * Methods and their spec strings (fcc_compressor_parse):
 *  none                 no compression: n fp32 values
 *  fp16, bf16           n 16-bit values, round to nearest even
 *  randomk:K[:unbiased] K*n entries at random positions all ranks share
 *  topk:K               the K*n entries of largest magnitude
 *  thresholdv:V         the entries with |g| >= V
 *  adaptive-threshold   the entries with |g| >= max|g| / 2
 *  terngrad             TernGrad (Wen et al. 2017): s * {-1, 0, +1}
 *  qsgd[:S[:bucket=B]]  QSGD (Alistarh et al. 2017): S levels per bucket norm
 *
 * Packed formats. Payloads are byte buffers with no alignment guarantee;
 * multi-byte fields are little-endian (read and written with memcpy). Bit
 * fields are LSB-first: entry i lives at bit i % 8 of byte i / 8 (or, for
 * QSGD's b-bit levels, bits [i*b, i*b + b) of the level area, LSB first).
 * ceil8(n) below is ceil(n / 8), the bytes of an n-entry bitmap.
 *  none        n fp32                                             4n bytes
 *  fp16/bf16   n fp16 / bf16 bit patterns                         2n bytes
 *  randomk     k fp32 values g[idx_j], idx = fcc_randomk_indices
 *              (shared_seed, n, k) in ascending order             4k bytes
 *  topk        k = fcc_compress_k(n) kept entries (largest |g|, ties to the
 *              lower index), in one of two encodings chosen by n and k alone:
 *              bitmap  (when ceil8(n) + 4k < 8k): a ceil8(n)-byte bitmap of
 *                      the kept positions, then the k fp32 values in index
 *                      order                                      ceil8(n) + 4k
 *              index   (otherwise): k int32 indices ascending, then the k
 *                      fp32 values                                8k bytes
 *  thresholdv, adaptive-threshold
 *              int32 count c, then the topk encoding of the c kept entries
 *              (bitmap when ceil8(n) + 4c < 8c)      4 + min(8c, ceil8(n) + 4c)
 *              The capacity is that size for c = n.
 *  terngrad    fp32 s = max|g|, then 2 bits per entry (0 = 0, 1 = +s,
 *              2 = -s)                                            4 + ceil(n/4)
 *  qsgd        nb = ceil(n / B) fp32 bucket norms (B = n when bucket == 0),
 *              then a b = ceil(log2(S + 1))-bit level per entry
 *              (ceil(n*b/8) bytes), then a ceil8(n)-byte sign bitmap (set =
 *              negative)                       4nb + ceil(n*b/8) + ceil8(n)
 * Entry indices are int32 on the wire: n must be below 2^31.
 *
 * Randomness comes from Philox (fcc_random_u32 / fcc_random_uniform in
 * cpu_kernels.h) on the streams FCC_COMPRESS_STREAM_* below, so every
 * implementation (CPU, CUDA) draws the same numbers:
 *  - randomk: Floyd's sampling; step j (j = n-k .. n-1) draws a uniform
 *    integer in [0, j] from 64-bit words w = u32(idx) << 32 | u32(idx + 1),
 *    idx = 32*j + 2*attempt, by Lemire's multiply-and-reject method (exact:
 *    a word is rejected with probability below (j+1)/2^64; the 16th attempt
 *    is accepted as is). The k positions are then sorted.
 *  - terngrad: entry i is kept iff uniform(private_seed, TERNGRAD, i) < |g_i|/s
 *    (the ratio in double).
 *  - qsgd: with norm the bucket's fp32 norm (the double l2 norm rounded to
 *    float) and r = |g_i| * S / norm in double, the level is floor(r) + 1 iff
 *    uniform(private_seed, QSGD, i) < r - floor(r), else floor(r); it decodes
 *    to sign * (float)(norm * level / S) (in double, then rounded). A zero-norm
 *    bucket decodes to zeros.
 *
 * Signs: an entry is negative when g_i < 0 (-0 counts as positive).
 *
 * Non-finite gradients. none, fp16, bf16, and the kept values of randomk pass
 * non-finite values through. topk orders magnitudes by their bit patterns, so
 * NaN counts as larger than +inf and is kept first; the thresholds always
 * keep NaNs (adaptive-threshold takes V from the largest non-NaN magnitude).
 * terngrad's s is the largest magnitude in topk's order (NaN if any entry is
 * NaN), qsgd's norms are NaN/inf when their bucket holds one, and a
 * non-finite scale decodes to NaN for every entry it covers, so a finite
 * check after decompression still sees the overflow. A QSGD norm that
 * overflows fp32 (only for values near FLT_MAX) counts as non-finite.
 *
 * Decompression adds: out[i] += scale * v_i, where v_i is the decoded value
 * (for unbiased randomk v_j = value_j * (float)((double)n / k)). With scale -1
 * onto a copy of g this is the error-feedback residual g - decompress(...).
 *
 * Determinism: every function is a pure function of its arguments; results
 * do not depend on the number of OpenMP threads.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_COMPRESS_H
#define FCC_RUNTIME_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fcc_compress_method {
  FCC_COMPRESS_NONE = 0,
  FCC_COMPRESS_FP16,
  FCC_COMPRESS_BF16,
  FCC_COMPRESS_RANDOMK,
  FCC_COMPRESS_TOPK,
  FCC_COMPRESS_THRESHOLDV,
  FCC_COMPRESS_ADAPTIVE_THRESHOLD,
  FCC_COMPRESS_TERNGRAD,
  FCC_COMPRESS_QSGD
} fcc_compress_method;

/* Philox streams of the compressors' random draws ("FCCRANDK", "FCCTERNG",
 * "FCCQSGD\0" in ASCII; the high byte keeps them apart from the trainer's
 * tagged streams, runtime/trainer/Augment.cpp). */
#define FCC_COMPRESS_STREAM_RANDOMK 0x46434352414E444BULL
#define FCC_COMPRESS_STREAM_TERNGRAD 0x4643435445524E47ULL
#define FCC_COMPRESS_STREAM_QSGD 0x4643435153474400ULL

/* The default number of QSGD levels (spec "qsgd"). */
#define FCC_COMPRESS_QSGD_DEFAULT_LEVELS 255

typedef struct fcc_compressor {
  int method;       /* fcc_compress_method */
  double ratio;     /* randomk/topk: K, fraction kept, 0 < K <= 1 */
  double threshold; /* thresholdv: V >= 0 (keep |g| >= V) */
  int levels;       /* qsgd: S >= 1 quantization states (<= 0: 255) */
  int64_t bucket;   /* qsgd: entries per norm; <= 0 = the whole tensor */
  int unbiased;     /* randomk: scale kept values by n/k on decompression */
} fcc_compressor;

/* Parses a method spec: "none", "fp16", "bf16", "randomk:K", "topk:K",
 * "thresholdv:V", "adaptive-threshold", "terngrad", "qsgd" (S=255),
 * "qsgd:S", "qsgd:S:bucket=B". randomk also accepts a ":unbiased" suffix
 * ("randomk:0.01:unbiased"). Numbers are plain decimals ("0.01", "1e-3");
 * S (1 <= S <= 2^31-1) and B (>= 1) are integers. Returns 0 on success, with
 * the fields a method does not use zero. Otherwise writes a one-line message
 * that starts with the spec ("topk:2: K must be in (0, 1]") into err (at most
 * errsize bytes, NUL-terminated; err may be NULL) and returns 1, leaving *out
 * unchanged. out may be NULL (validation only). */
int fcc_compressor_parse(const char *spec, fcc_compressor *out, char *err,
                         size_t errsize);
/* The canonical spec string of c, which parses back to the same compressor:
 * "qsgd:S" or "qsgd:S:bucket=B" for qsgd, the shortest decimal that
 * round-trips for K and V. Truncated to size bytes (NUL-terminated). */
void fcc_compressor_format(const fcc_compressor *c, char *buf, size_t size);

/* randomk/topk: k = ceil(K * n) clamped to [1, n] (0 when n == 0). The
 * ceiling forgives a relative error of 1e-9, so that decimal fractions give
 * the intended k (0.07 * 100 is 7.000000000000001 in double: k = 7). 0 for
 * the other methods. */
int64_t fcc_compress_k(const fcc_compressor *c, int64_t n);
/* 1 when every payload of n entries has the same size (all but the
 * thresholds). */
int fcc_compress_fixed_size(const fcc_compressor *c);
/* qsgd: the number of levels S (FCC_COMPRESS_QSGD_DEFAULT_LEVELS when the
 * spec gave none) and the bit width of a level, ceil(log2(S + 1)). */
int fcc_compress_qsgd_levels(const fcc_compressor *c);
int fcc_compress_qsgd_bits(const fcc_compressor *c);
/* 1 when payloads of different ranks can be summed elementwise (none, fp16,
 * bf16, randomk): they travel by allreduce; the others by allgather. */
int fcc_compress_summable(const fcc_compressor *c);
/* Bytes of the largest payload of n entries (the exact size for fixed-size
 * methods). */
int64_t fcc_compress_capacity(const fcc_compressor *c, int64_t n);
/* Bytes actually used by a payload of n entries (reads the count of threshold
 * payloads). */
int64_t fcc_compress_payload_bytes(const fcc_compressor *c,
                                   const void *payload, int64_t n);

/* Compresses g[0..n) into payload (fcc_compress_capacity bytes available);
 * returns the bytes used (fcc_compress_payload_bytes of the result).
 * shared_seed: randomness all ranks share (randomk's positions);
 * private_seed: this rank's randomness (terngrad's and qsgd's stochastic
 * rounding). */
int64_t fcc_compress(const fcc_compressor *c, const float *g, int64_t n,
                     uint64_t shared_seed, uint64_t private_seed,
                     void *payload);
/* out[i] += scale * decompress(payload)[i] for i < n. shared_seed must be the
 * one compress used (randomk). */
void fcc_decompress_add(const fcc_compressor *c, const void *payload,
                        int64_t n, uint64_t shared_seed, float scale,
                        float *out);
/* inout += in, elementwise, for summable payloads of n entries (none/randomk:
 * fp32 adds; fp16/bf16: add in float, then round to the payload type). Does
 * nothing for the other methods. inout and in may be the same buffer. */
void fcc_payload_sum(const fcc_compressor *c, void *inout, const void *in,
                     int64_t n);
/* payload *= scale, elementwise, for summable payloads of n entries (the
 * mean of an all-reduced sum); fp16/bf16 entries are scaled in float and
 * rounded back. Does nothing for the other methods. */
void fcc_payload_scale(const fcc_compressor *c, void *payload, int64_t n,
                       float scale);
/* The positions randomk keeps: k distinct indices in [0, n), sorted
 * ascending, uniform without replacement (every k-subset equally likely), a
 * pure function of (shared_seed, n, k). Requires 0 <= k <= n. */
void fcc_randomk_indices(uint64_t shared_seed, int64_t n, int64_t k,
                         int64_t *out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FCC_RUNTIME_COMPRESS_H */
