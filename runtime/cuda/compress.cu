//===- compress.cu - Gradient compressors on the GPU ----------------------===//
//
// Implements include/fcc/runtime/cuda_compress.h: the compressors of
// compress.h on device memory, producing payloads byte-identical to the CPU's
// (runtime/cpu/compress.cpp) for the same gradient and seeds. Every method
// runs as a fixed sequence of kernels whose launch sizes depend only on
// (method, n): no host synchronisation, so a call can be captured in a graph.
//
//  - none, fp16, bf16: one thread per entry; the fp16/bf16 roundings are the
//    CPU's (half.cpp's fcc_round_f16/bf16 and compress.cpp's re-encoding)
//    written out with the same float operations.
//  - Sparse outputs (topk, thresholds, randomk's positions) are built as
//    32-bit keep masks, one per 32 entries (the topk bitmap encoding is these
//    masks' bytes), then a device-wide exclusive scan of their popcounts gives
//    each kept entry its slot in index order (a stable compaction), and a
//    thread per word writes its entries.
//  - topk: an exact radix select of the k-th largest magnitude key
//    (bits & 0x7fffffff, NaN above inf) in three histogram passes over 10, 10
//    and 11 bits, keeping the count of keys equal to it that still belong to
//    the top k; the masks then hold "key > kth" and "key == kth", and the scan
//    of both counts keeps the first equalLeft equal keys by index: ties go to
//    the lower index exactly as on the CPU.
//  - thresholds: a mask of isnan(x) || |x| >= V (V from a max reduction of
//    the non-NaN keys for adaptive-threshold); the count comes out of the
//    scan on the device and selects the encoding there.
//  - randomk: Floyd's sampling computed in parallel on the device (see
//    "RandomK positions" below), marked in the masks and compacted to sorted
//    positions; compress gathers g at them, decompress scatters into out.
//  - terngrad: a max reduction of the keys, then a thread per output byte
//    (4 entries, one Philox block) draws and packs.
//  - qsgd: the bucket norms (see "QSGD norms" for how the CPU's serial double
//    sum is reproduced), then a thread per 8 entries (two Philox blocks, b
//    whole bytes of levels, one sign byte) quantises and packs.
//
// Arithmetic follows the CPU operation by operation (the library is compiled
// with -fmad=false); NaN payload bits that x86 propagates (the QSGD norm of
// a NaN bucket, the sums and scalings of payloads) are reproduced explicitly,
// since GPUs return a canonical NaN instead.
//
// The kernels whose names end in SyncKernel synchronise their blocks
// (tests/unit/cuda/emulation/preprocess.py runs them with real threads).
//
//===----------------------------------------------------------------------===//
#include "common.cuh"

#include "fcc/runtime/cuda_compress.h"

#include <cmath>
#include <cstdint>

using namespace fcc::cuda;

namespace {

using Byte = unsigned char;

//===----------------------------------------------------------------------===//
// Bits, unaligned payload fields
//===----------------------------------------------------------------------===//

__device__ __forceinline__ uint32_t bitsOf(float f) {
  return __float_as_uint(f);
}
__device__ __forceinline__ float floatOf(uint32_t u) {
  return __uint_as_float(u);
}

// |x| as an ordered key, NaN above +inf (compress.cpp's magnitudeKey).
__device__ __forceinline__ uint32_t magnitudeKey(float x) {
  return bitsOf(x) & 0x7fffffffu;
}
constexpr uint32_t kInfKey = 0x7f800000u;

__device__ __forceinline__ bool aligned(const void *p, uintptr_t a) {
  return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0;
}

// Little-endian fields at any address (payloads have no alignment).
__device__ __forceinline__ uint32_t loadU32(const Byte *p) {
  if (aligned(p, 4))
    return *reinterpret_cast<const uint32_t *>(p);
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 |
         uint32_t(p[3]) << 24;
}
__device__ __forceinline__ void storeU32(Byte *p, uint32_t v) {
  if (aligned(p, 4)) {
    *reinterpret_cast<uint32_t *>(p) = v;
    return;
  }
  p[0] = Byte(v);
  p[1] = Byte(v >> 8);
  p[2] = Byte(v >> 16);
  p[3] = Byte(v >> 24);
}
__device__ __forceinline__ uint16_t loadU16(const Byte *p) {
  if (aligned(p, 2))
    return *reinterpret_cast<const uint16_t *>(p);
  return uint16_t(p[0] | p[1] << 8);
}
__device__ __forceinline__ void storeU16(Byte *p, uint16_t v) {
  if (aligned(p, 2)) {
    *reinterpret_cast<uint16_t *>(p) = v;
    return;
  }
  p[0] = Byte(v);
  p[1] = Byte(v >> 8);
}
__device__ __forceinline__ float loadF32(const Byte *p) {
  return floatOf(loadU32(p));
}
__device__ __forceinline__ void storeF32(Byte *p, float v) {
  storeU32(p, bitsOf(v));
}

__device__ __forceinline__ int64_t ceilDivD(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The topk encoding of c kept entries out of n: the bitmap when strictly
// smaller than the index list (compress.cpp's useBitmap).
__device__ __forceinline__ bool useBitmap(int64_t n, int64_t c) {
  return ceilDivD(n, 8) < 4 * c;
}

//===----------------------------------------------------------------------===//
// x86 NaN propagation
//===----------------------------------------------------------------------===//

// The CPU runtime's payload sums and scalings are SSE adds and multiplies:
// a NaN operand comes out quieted (the first one if both are NaN), and an
// invalid operation (inf - inf, 0 * inf) gives the "indefinite" NaN
// 0xffc00000. The GPU gives 0x7fffffff for all of them; these restore the
// CPU's bits (only when the result is NaN: finite arithmetic is IEEE on
// both).
__device__ __forceinline__ float quiet(float x) {
  return floatOf(bitsOf(x) | 0x00400000u);
}
__device__ __forceinline__ float sseNaN(float r, float a, float b) {
  if (!isnan(r))
    return r;
  return isnan(a) ? quiet(a) : isnan(b) ? quiet(b) : floatOf(0xffc00000u);
}
__device__ __forceinline__ float sseAdd(float a, float b) {
  return sseNaN(a + b, a, b);
}
__device__ __forceinline__ float sseMul(float a, float b) {
  return sseNaN(a * b, a, b);
}

//===----------------------------------------------------------------------===//
// fp16 / bf16 (half.cpp and compress.cpp, operation by operation)
//===----------------------------------------------------------------------===//

__device__ float roundF16(float x) {
  uint32_t u = bitsOf(x);
  uint32_t sign = u & 0x80000000u;
  uint32_t mag = u & 0x7fffffffu;
  if (mag >= 0x7f800000u)
    return x;
  if (mag >= 0x477ff000u)
    return floatOf(sign | 0x7f800000u);
  int exponent = int(mag >> 23) - 127;
  int quantumExp = exponent >= -14 ? exponent - 10 : -24;
  float a = floatOf(mag);
  float quantum = ldexpf(1.0f, quantumExp);
  float r = rintf(a / quantum) * quantum;
  return floatOf(sign | bitsOf(r));
}

__device__ uint16_t f16BitsOf(float x) {
  uint32_t u = bitsOf(roundF16(x));
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u)
    return uint16_t(sign | 0x7e00u | ((mag >> 13) & 0x3ffu));
  if (mag == 0x7f800000u)
    return uint16_t(sign | 0x7c00u);
  if (mag < 0x38800000u)
    return uint16_t(sign | uint32_t(floatOf(mag) * 16777216.0f));
  return uint16_t(sign | (((mag >> 23) - 112u) << 10) | ((mag >> 13) & 0x3ffu));
}

__device__ float floatOfF16(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0)
    return floatOf(sign | bitsOf(float(mantissa) * (1.0f / 16777216.0f)));
  if (exponent == 31)
    return floatOf(sign | 0x7f800000u | mantissa << 13);
  return floatOf(sign | (exponent + 112u) << 23 | mantissa << 13);
}

__device__ __forceinline__ uint16_t bf16BitsOf(float x) {
  uint32_t u = bitsOf(x);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return uint16_t((u | 0x00400000u) >> 16);
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return uint16_t((u & 0xffff0000u) >> 16);
}
__device__ __forceinline__ float floatOfBf16(uint16_t h) {
  return floatOf(uint32_t(h) << 16);
}

//===----------------------------------------------------------------------===//
// Device state and block helpers
//===----------------------------------------------------------------------===//

// Per-call scalars in the workspace.
struct State {
  uint32_t prefix, prefixMask, remaining; // radix select of topk
  uint32_t maxKey;                        // terngrad, adaptive-threshold
  uint32_t totalA, totalE;                // popcounts of the masks
};

// The seeds: by value, or read from device memory in the kernel.
struct Seed {
  const uint64_t *ptr;
  uint64_t value;
};
__device__ __forceinline__ uint64_t seedOf(Seed s) {
  return s.ptr ? *s.ptr : s.value;
}

// Mask words per scan tile (kThreads threads x 8 words).
constexpr int kWordsPerThread = 8;
constexpr int64_t kTileWords = int64_t(kThreads) * kWordsPerThread;

// Exclusive scan of (a, e) over the block (blockDim.x == kThreads) in a fixed
// order; returns the block totals. All threads must call it.
__device__ void blockScan2(uint32_t &a, uint32_t &e, uint32_t &totA,
                           uint32_t &totE) {
  __shared__ uint32_t sa[kThreads], se[kThreads];
  __shared__ uint32_t ga[kThreads / 16], ge[kThreads / 16];
  const int t = threadIdx.x;
  sa[t] = a;
  se[t] = e;
  __syncthreads();
  if (t < kThreads / 16) {
    uint32_t ra = 0, re = 0;
    for (int j = 16 * t; j < 16 * t + 16; ++j) {
      uint32_t x = sa[j], y = se[j];
      sa[j] = ra;
      se[j] = re;
      ra += x;
      re += y;
    }
    ga[t] = ra;
    ge[t] = re;
  }
  __syncthreads();
  uint32_t pa = 0, pe = 0, ta = 0, te = 0;
  for (int g = 0; g < kThreads / 16; ++g) {
    if (g == t / 16) {
      pa = ta;
      pe = te;
    }
    ta += ga[g];
    te += ge[g];
  }
  a = pa + sa[t];
  e = pe + se[t];
  totA = ta;
  totE = te;
  __syncthreads();
}

// Reductions over the block in a fixed order (every thread gets the result).
struct MaxU32 {
  __device__ uint32_t operator()(uint32_t a, uint32_t b) const {
    return a > b ? a : b;
  }
};
// QSGD's partial sums: sum of squares, their weights, first NaN.
struct Partial {
  double s, w;
  int64_t nan;
};
struct AddPartial {
  __device__ Partial operator()(Partial a, Partial b) const {
    return Partial{a.s + b.s, a.w + b.w, a.nan < b.nan ? a.nan : b.nan};
  }
};

template <class T, class Op> __device__ T blockReduce(T v, Op op) {
  __shared__ T s[kThreads];
  const int t = threadIdx.x;
  s[t] = v;
  __syncthreads();
  if (t < kThreads / 16) {
    T r = s[16 * t];
    for (int j = 16 * t + 1; j < 16 * t + 16; ++j)
      r = op(r, s[j]);
    s[16 * t] = r;
  }
  __syncthreads();
  T r = s[0];
  for (int g = 1; g < kThreads / 16; ++g)
    r = op(r, s[16 * g]);
  __syncthreads();
  return r;
}

__device__ __forceinline__ uint32_t lowBits(int j) {
  return j >= 32 ? 0xffffffffu : (1u << j) - 1u;
}

// The lowest m set bits of x.
__device__ __forceinline__ uint32_t lowestSetBits(uint32_t x, int m) {
  uint32_t rest = x;
  for (int c = 0; c < m && rest != 0; ++c)
    rest &= rest - 1;
  return x ^ rest;
}

//===----------------------------------------------------------------------===//
// Generic kernels
//===----------------------------------------------------------------------===//

__global__ void initStateKernel(State *st, uint32_t remaining) {
  st->prefix = 0;
  st->prefixMask = 0;
  st->remaining = remaining;
  st->maxKey = 0;
  st->totalA = 0;
  st->totalE = 0;
}

__global__ void fillKernel(uint32_t *p, int64_t count, uint32_t value) {
  FCC_GRID_LOOP(i, count) { p[i] = value; }
}

// st->maxKey = max of the magnitude keys of g (without NaNs if skipNaN).
__global__ void maxKeySyncKernel(const float *g, int64_t n, bool skipNaN,
                                 State *st) {
  uint32_t m = 0;
  FCC_GRID_LOOP(i, n) {
    const uint32_t key = magnitudeKey(g[i]);
    if (!(skipNaN && key > kInfKey) && key > m)
      m = key;
  }
  m = blockReduce(m, MaxU32());
  if (threadIdx.x == 0 && m != 0)
    atomicMax(&st->maxKey, m);
}

//===--- Scan of the masks' popcounts ----------------------------------------===//

// tileA/E[t] = popcounts of the masks of tile t (maskE may be null: 0).
__global__ void tileSumsSyncKernel(const uint32_t *maskA,
                                   const uint32_t *maskE, int64_t words,
                                   uint32_t *tileA, uint32_t *tileE,
                                   int64_t tiles) {
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    uint32_t a = 0, e = 0;
    const int64_t first = tile * kTileWords + int64_t(threadIdx.x) * kWordsPerThread;
    for (int j = 0; j < kWordsPerThread; ++j) {
      const int64_t w = first + j;
      if (w < words) {
        a += __popc(maskA[w]);
        if (maskE)
          e += __popc(maskE[w]);
      }
    }
    uint32_t ta, te;
    blockScan2(a, e, ta, te);
    if (threadIdx.x == 0) {
      tileA[tile] = ta;
      tileE[tile] = te;
    }
  }
}

// Exclusive scan of the tile sums in place (one block); totals into st.
__global__ void tileScanSyncKernel(uint32_t *tileA, uint32_t *tileE,
                                   int64_t tiles, State *st) {
  uint32_t carryA = 0, carryE = 0;
  for (int64_t base = 0; base < tiles; base += kThreads) {
    const int64_t t = base + threadIdx.x;
    uint32_t a = t < tiles ? tileA[t] : 0, e = t < tiles ? tileE[t] : 0;
    uint32_t ta, te;
    blockScan2(a, e, ta, te);
    if (t < tiles) {
      tileA[t] = carryA + a;
      tileE[t] = carryE + e;
    }
    carryA += ta;
    carryE += te;
  }
  if (threadIdx.x == 0) {
    st->totalA = carryA;
    st->totalE = carryE;
  }
}

// prefA/E[w] = popcounts of the masks before word w.
__global__ void wordPrefixSyncKernel(const uint32_t *maskA,
                                     const uint32_t *maskE, int64_t words,
                                     const uint32_t *tileA,
                                     const uint32_t *tileE, int64_t tiles,
                                     uint32_t *prefA, uint32_t *prefE) {
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t first = tile * kTileWords + int64_t(threadIdx.x) * kWordsPerThread;
    uint32_t ca[kWordsPerThread], ce[kWordsPerThread];
    uint32_t a = 0, e = 0;
    for (int j = 0; j < kWordsPerThread; ++j) {
      const int64_t w = first + j;
      ca[j] = w < words ? __popc(maskA[w]) : 0;
      ce[j] = w < words && maskE ? __popc(maskE[w]) : 0;
      a += ca[j];
      e += ce[j];
    }
    uint32_t ta, te;
    blockScan2(a, e, ta, te);
    a += tileA[tile];
    e += tileE[tile];
    for (int j = 0; j < kWordsPerThread; ++j) {
      const int64_t w = first + j;
      if (w < words) {
        prefA[w] = a;
        if (prefE)
          prefE[w] = e;
      }
      a += ca[j];
      e += ce[j];
    }
  }
}

//===--- Sparse encodings (topk, thresholds) ---------------------------------===//

// Calls f(j, g[base + j]) for j < m (m <= 32 entries of one mask word), with
// 16-byte loads when the word is whole and aligned.
template <class F>
__device__ __forceinline__ void forWord(const float *g, int64_t base, int m,
                                        F f) {
  const float *row = g + base;
  if (m == 32 && aligned(row, 16)) {
    const float4 *v = reinterpret_cast<const float4 *>(row);
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const float4 x = v[q];
      f(4 * q, x.x);
      f(4 * q + 1, x.y);
      f(4 * q + 2, x.z);
      f(4 * q + 3, x.w);
    }
    return;
  }
  for (int j = 0; j < m; ++j)
    f(j, row[j]);
}

// The entries of g[0..n) as 32-bit masks: word w covers 32w .. 32w+31.
// topk: A = key > kth, E = key == kth (kth = st->prefix after the select);
// all: A = every entry (k == n).
__global__ void topkMaskKernel(const float *g, int64_t n, int64_t words,
                               const State *st, bool all, uint32_t *maskA,
                               uint32_t *maskE) {
  const uint32_t kth = all ? 0 : st->prefix;
  FCC_GRID_LOOP(w, words) {
    uint32_t a = 0, e = 0;
    const int64_t base = 32 * w;
    const int m = int(n - base < 32 ? n - base : 32);
    if (all) {
      a = lowBits(m);
    } else {
      forWord(g, base, m, [&](int j, float x) {
        const uint32_t key = magnitudeKey(x);
        a |= uint32_t(key > kth) << j;
        e |= uint32_t(key == kth) << j;
      });
    }
    maskA[w] = a;
    maskE[w] = e;
  }
}

// thresholdv (v) / adaptive-threshold (v = max non-NaN |g| / 2): A = isnan(x)
// || |x| >= v.
__global__ void thresholdMaskKernel(const float *g, int64_t n, int64_t words,
                                    double v, bool adaptive, const State *st,
                                    uint32_t *maskA) {
  if (adaptive) {
    const uint32_t maxKey = st->maxKey;
    v = maxKey == 0 ? double(INFINITY) : double(floatOf(maxKey)) / 2;
  }
  FCC_GRID_LOOP(w, words) {
    uint32_t a = 0;
    const int64_t base = 32 * w;
    const int m = int(n - base < 32 ? n - base : 32);
    forWord(g, base, m, [&](int j, float x) {
      a |= uint32_t(isnan(x) || double(fabsf(x)) >= v) << j;
    });
    maskA[w] = a;
  }
}

// The kept mask of word w: A, and the first `equalLeft` E bits overall.
__device__ __forceinline__ uint32_t keptMask(uint32_t a, uint32_t e,
                                             uint32_t pe, uint32_t equalLeft) {
  if (e == 0 || pe >= equalLeft)
    return a;
  return a | lowestSetBits(e, int(equalLeft - pe));
}

// Writes the topk encoding of the kept entries (at p; a threshold payload's
// count first, at p - 4). count < 0: the count is st->totalA (thresholds).
__global__ void sparseWriteKernel(const float *g, int64_t n, int64_t words,
                                  const uint32_t *maskA, const uint32_t *maskE,
                                  const uint32_t *prefA, const uint32_t *prefE,
                                  const State *st, int64_t count, bool topk,
                                  Byte *p, Byte *header) {
  const int64_t c = count >= 0 ? count : int64_t(st->totalA);
  const uint32_t equalLeft = topk && maskE ? st->remaining : 0;
  const bool bitmap = useBitmap(n, c);
  const int64_t mapBytes = ceilDivD(n, 8);
  Byte *indices = p, *values = bitmap ? p + mapBytes : p + 4 * c;
  FCC_GRID_LOOP(w, words) {
    if (w == 0 && header)
      storeU32(header, uint32_t(c));
    const uint32_t e = maskE ? maskE[w] : 0u;
    const uint32_t pe = maskE ? prefE[w] : 0u;
    const uint32_t kept = keptMask(maskA[w], e, pe, equalLeft);
    if (bitmap) {
      if (4 * w + 4 <= mapBytes)
        storeU32(p + 4 * w, kept);
      else
        for (int b = 0; 4 * w + b < mapBytes; ++b)
          p[4 * w + b] = Byte(kept >> (8 * b));
    }
    int64_t slot = int64_t(prefA[w]) + (pe < equalLeft ? pe : equalLeft);
    for (uint32_t bits = kept; bits != 0; bits &= bits - 1) {
      const int64_t i = 32 * w + (__ffs(bits) - 1);
      if (!bitmap)
        storeU32(indices + 4 * slot, uint32_t(i));
      storeF32(values + 4 * slot, g[i]);
      ++slot;
    }
  }
}

// The count of a sparse payload: `count`, or the clamped int32 at header.
__device__ __forceinline__ int64_t sparseCount(const Byte *header,
                                               int64_t count, int64_t n) {
  if (!header)
    return count;
  int64_t c = int32_t(loadU32(header));
  return c < 0 ? 0 : c > n ? n : c;
}

// Decoding, bitmap encoding: the bitmap's bytes into masks (zeros when the
// payload uses the index encoding).
__global__ void bitmapToMasksKernel(const Byte *p, const Byte *header,
                                    int64_t count, int64_t n, int64_t words,
                                    uint32_t *maskA) {
  const bool bitmap = useBitmap(n, sparseCount(header, count, n));
  const int64_t mapBytes = ceilDivD(n, 8);
  FCC_GRID_LOOP(w, words) {
    uint32_t m = 0;
    if (bitmap && 4 * w + 4 <= mapBytes)
      m = loadU32(p + 4 * w);
    else if (bitmap)
      for (int b = 0; 4 * w + b < mapBytes; ++b)
        m |= uint32_t(p[4 * w + b]) << (8 * b);
    maskA[w] = m;
  }
}

// out[i] += scale * value for the bitmap encoding: the j-th set bit (bits
// past n count too, as on the CPU) takes value j, for j < c.
__global__ void bitmapDecodeKernel(const Byte *p, const Byte *header,
                                   int64_t count, int64_t n, int64_t words,
                                   const uint32_t *maskA,
                                   const uint32_t *prefA, float scale,
                                   float *out) {
  const int64_t c = sparseCount(header, count, n);
  if (!useBitmap(n, c))
    return;
  const Byte *values = p + ceilDivD(n, 8);
  FCC_GRID_LOOP(w, words) {
    int64_t j = prefA[w];
    for (uint32_t bits = maskA[w]; bits != 0 && j < c; bits &= bits - 1) {
      const int64_t i = 32 * w + (__ffs(bits) - 1);
      if (i < n)
        out[i] += scale * loadF32(values + 4 * j);
      ++j;
    }
  }
}

// out[i] += scale * value for the index encoding.
__global__ void indexDecodeKernel(const Byte *p, const Byte *header,
                                  int64_t count, int64_t n, float scale,
                                  float *out) {
  const int64_t c = sparseCount(header, count, n);
  if (useBitmap(n, c))
    return;
  FCC_GRID_LOOP(j, c) {
    const int64_t i = int32_t(loadU32(p + 4 * j));
    if (i >= 0 && i < n)
      out[i] += scale * loadF32(p + 4 * c + 4 * j);
  }
}

//===--- TopK: radix select ---------------------------------------------------===//

// Digits of the 31-bit keys, most significant first.
constexpr int kPasses = 3;
constexpr int kDigitShift[kPasses] = {21, 11, 0};
constexpr int kDigitBits[kPasses] = {10, 10, 11};
constexpr int kMaxBins = 1 << 11;

// hist[d] += number of keys with the selected prefix and digit d.
__global__ void histSyncKernel(const float *g, int64_t n, const State *st,
                               uint32_t *hist, int shift, int bits) {
  __shared__ uint32_t local[kMaxBins];
  const int bins = 1 << bits;
  for (int b = threadIdx.x; b < bins; b += blockDim.x)
    local[b] = 0;
  __syncthreads();
  const uint32_t prefix = st->prefix, prefixMask = st->prefixMask;
  const uint32_t digitMask = uint32_t(bins - 1);
  FCC_GRID_LOOP(i, n) {
    const uint32_t key = magnitudeKey(g[i]);
    if ((key & prefixMask) == prefix)
      atomicAdd(&local[(key >> shift) & digitMask], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x)
    if (local[b] != 0)
      atomicAdd(&hist[b], local[b]);
}

// Picks the digit of the k-th largest key (st->remaining-th among those with
// the prefix) and clears the histogram for the next pass.
__global__ void selectKernel(State *st, uint32_t *hist, int shift, int bits) {
  const int bins = 1 << bits;
  uint32_t remaining = st->remaining, above = 0;
  int digit = 0;
  for (int d = bins - 1; d >= 0; --d) {
    if (above + hist[d] >= remaining) {
      digit = d;
      break;
    }
    above += hist[d];
  }
  st->remaining = remaining - above;
  st->prefix |= uint32_t(digit) << shift;
  st->prefixMask |= uint32_t(bins - 1) << shift;
  for (int d = 0; d < bins; ++d)
    hist[d] = 0;
}

//===--- RandomK positions -------------------------------------------------===//
//
// Floyd's sampling (compress.h): for steps j = n-k .. n-1, t_j = a uniform
// draw in [0, j] (a pure function of the seed and j), and the step takes t_j
// unless it is taken already, else j. The draws are independent, only the
// "taken" test is sequential, and it can be decided in parallel:
//  - every value t_j ends up in the set (taken at step j or before);
//  - step j falls back to j iff t_j == j, or t_j was drawn by an earlier
//    step (a duplicate), or t_j >= n-k and step t_j itself fell back (values
//    enter the set only as draws or as the fallback of their own step, and
//    step t_j < j already ran).
// So fallback(j) = A_j || (t_j >= n-k && fallback(t_j)), A_j = (t_j == j ||
// duplicate_j): an OR along the chain j > t_j > t_(t_j) > ..., which every
// thread follows down (the chains are short: each link is uniform below the
// last). Duplicates are found with a hash table (t -> first step drawing it).
// The set is {t_j} + {j : fallback(j)}, k positions, marked in the masks.

constexpr uint32_t kEmpty = 0xffffffffu;

__device__ uint64_t floydDraw(uint64_t seed, uint64_t j, uint64_t bound) {
  for (uint64_t attempt = 0;; ++attempt) {
    const uint64_t index = 32 * j + 2 * attempt; // even: one Philox block
    uint32_t words[4];
    philoxBlock(seed, FCC_COMPRESS_STREAM_RANDOMK, index >> 2, words);
    const int w = int(index & 3);
    const uint64_t x = uint64_t(words[w]) << 32 | words[w + 1];
    const uint64_t low = x * bound;
    if (low >= bound || attempt == 15 || low >= (uint64_t(0) - bound) % bound)
      return __umul64hi(x, bound);
  }
}

__device__ __forceinline__ uint32_t hashSlot(uint32_t t, int logSlots) {
  return uint32_t(t * 2654435769u) >> (32 - logSlots);
}

// draws[s] = t of step j = n-k+s; the hash table keeps the first step of
// every value.
__global__ void floydDrawKernel(Seed seed, int64_t n, int64_t k,
                                uint32_t *draws, uint32_t *keys,
                                uint32_t *firstStep, int logSlots) {
  const uint64_t s0 = seedOf(seed);
  const uint32_t mask = uint32_t((uint64_t(1) << logSlots) - 1);
  FCC_GRID_LOOP(s, k) {
    const uint64_t j = uint64_t(n - k + s);
    const uint32_t t = uint32_t(floydDraw(s0, j, j + 1));
    draws[s] = t;
    for (uint32_t slot = hashSlot(t, logSlots);; slot = (slot + 1) & mask) {
      const uint32_t prev = atomicCAS(&keys[slot], kEmpty, t);
      if (prev == kEmpty || prev == t) {
        atomicMin(&firstStep[slot], uint32_t(s));
        break;
      }
    }
  }
}

// flags[s] = A_s: t == j or an earlier step drew t.
__global__ void floydFlagKernel(int64_t n, int64_t k, const uint32_t *draws,
                                const uint32_t *keys,
                                const uint32_t *firstStep, int logSlots,
                                Byte *flags) {
  const uint32_t mask = uint32_t((uint64_t(1) << logSlots) - 1);
  FCC_GRID_LOOP(s, k) {
    const uint32_t t = draws[s];
    uint32_t slot = hashSlot(t, logSlots);
    while (keys[slot] != t)
      slot = (slot + 1) & mask;
    flags[s] = Byte(int64_t(t) == n - k + s || firstStep[slot] != uint32_t(s));
  }
}

// Marks the k positions in the (zeroed) masks.
__global__ void floydMarkKernel(int64_t n, int64_t k, const uint32_t *draws,
                                const Byte *flags, uint32_t *maskA) {
  const int64_t base = n - k;
  FCC_GRID_LOOP(s, k) {
    const uint32_t t = draws[s];
    atomicOr(&maskA[t >> 5], 1u << (t & 31));
    int64_t x = s;
    bool fallback;
    while (true) {
      if (flags[x]) {
        fallback = true;
        break;
      }
      const int64_t tx = draws[x];
      if (tx < base) {
        fallback = false;
        break;
      }
      x = tx - base;
    }
    if (fallback) {
      const uint32_t j = uint32_t(base + s);
      atomicOr(&maskA[j >> 5], 1u << (j & 31));
    }
  }
}

// idx[0..k) = the marked positions, ascending.
__global__ void maskIndicesKernel(const uint32_t *maskA,
                                  const uint32_t *prefA, int64_t words,
                                  uint32_t *idx) {
  FCC_GRID_LOOP(w, words) {
    int64_t slot = prefA[w];
    for (uint32_t bits = maskA[w]; bits != 0; bits &= bits - 1)
      idx[slot++] = uint32_t(32 * w + (__ffs(bits) - 1));
  }
}

__global__ void gatherKernel(const float *g, const uint32_t *idx, int64_t k,
                             Byte *p) {
  FCC_GRID_LOOP(j, k) { storeF32(p + 4 * j, g[idx[j]]); }
}

__global__ void scatterAddKernel(const Byte *p, const uint32_t *idx, int64_t k,
                                 float scale, bool unbiased, float factor,
                                 float *out) {
  FCC_GRID_LOOP(j, k) {
    const float v = loadF32(p + 4 * j);
    out[idx[j]] += scale * (unbiased ? v * factor : v);
  }
}

//===--- TernGrad ----------------------------------------------------------===//

// One thread per code byte: entries 4b .. 4b+3, Philox block b.
__global__ void terngradPackKernel(const float *g, int64_t n, Seed seed,
                                   const State *st, Byte *p) {
  const float s = floatOf(st->maxKey);
  const bool live = isfinite(s) && s > 0;
  const uint64_t s0 = seedOf(seed);
  FCC_GRID_LOOP(b, ceilDivD(n, 4)) {
    if (b == 0)
      storeF32(p, s);
    uint32_t draws[4];
    philoxBlock(s0, FCC_COMPRESS_STREAM_TERNGRAD, uint64_t(b), draws);
    uint32_t byte = 0;
    for (int q = 0; q < 4; ++q) {
      const int64_t i = 4 * b + q;
      if (i >= n)
        break;
      const float x = g[i];
      uint32_t code = 0;
      if (live && x != 0) {
        const double prob = double(fabsf(x)) / double(s);
        if (prob >= 1 || double(uniformOf(draws[q])) < prob)
          code = x < 0 ? 2 : 1;
      }
      byte |= code << (2 * q);
    }
    p[4 + b] = Byte(byte);
  }
}

__global__ void terngradDecodeKernel(const Byte *p, int64_t n, float scale,
                                     float *out) {
  const float s = loadF32(p);
  const bool finite = isfinite(s);
  FCC_GRID_LOOP(i, n) {
    const uint32_t code = (p[4 + (i >> 2)] >> (2 * (i & 3))) & 3u;
    const float v = code == 1 ? s : code == 2 ? -s : 0.0f;
    out[i] += scale * (finite ? v : floatOf(0x7fc00000u));
  }
}

//===--- QSGD ----------------------------------------------------------------===//
//
// Norms. The CPU sums double(g)^2 serially in index order within a bucket
// and rounds sqrt of the sum to float. The squares are exact in double, but
// the serial sum rounds at every step, so a parallel sum can differ in the
// last bits, and once in a while that changes the float norm.
//  - Many small buckets (serialBuckets below): one thread per bucket sums
//    serially, exactly as the CPU.
//  - Otherwise a block per chunk of a bucket sums in parallel (S_g), together
//    with a rigorous bound on how far the CPU's serial sum S' can be from it:
//      |S' - S| <= u * sum_{i>=2} s_i * (1 + gamma)   (S exact, s_i its
//      prefix sums, u = 2^-53), where sum_{i>=2} s_i = sum_j t_j * (m -
//      max(j, 1)) =: W (t_j the squares, j from 0) is summed in the same
//      pass, and |S_g - S| <= depth * u * S_g for a summation tree of that
//      depth. If float(sqrt(lo)) == float(sqrt(hi)) at the ends of
//      [S_g - bound, S_g + bound], that is the CPU's norm (sqrt and rounding
//      are monotone). Otherwise a float rounding boundary lies inside the
//      interval (rare: the interval is about m * 1e-16 wide relative to S
//      and float midpoints are ~1e-7 apart, so ~1% of 16M-entry buckets,
//      ~0.06% of 1M-entry ones) and the bucket's block redoes the CPU's
//      serial sum: the block stages the squares in shared memory and one
//      thread adds them in order (~4 ns per entry: ~70 ms for 16M entries).
//
// A NaN in the bucket: x86 keeps the first NaN through the sum (addsd keeps
// its first operand's NaN), sqrt and the conversion to float, so the norm is
// that entry's bits, quieted.

constexpr int kEntriesPerThread = 32;
constexpr int64_t kTaskEntries = int64_t(kThreads) * kEntriesPerThread;
constexpr int kStage = 2048; // squares staged per step of the serial redo

__device__ __forceinline__ float normOfSum(double sum) {
  return float(sqrt(sum));
}

// The CPU's serial norm of g[begin, end), by one thread.
__device__ float serialNorm(const float *g, int64_t begin, int64_t end) {
  double sum = 0;
  int64_t nan = -1;
  for (int64_t i = begin; i < end; ++i) {
    const float x = g[i];
    if (nan < 0 && isnan(x))
      nan = i;
    sum += double(x) * double(x);
  }
  return nan >= 0 ? quiet(g[nan]) : normOfSum(sum);
}

__global__ void qsgdSerialNormKernel(const float *g, int64_t n, int64_t bucket,
                                     int64_t buckets, float *norms, Byte *p) {
  FCC_GRID_LOOP(b, buckets) {
    const int64_t end = (b + 1) * bucket < n ? (b + 1) * bucket : n;
    const float norm = serialNorm(g, b * bucket, end);
    norms[b] = norm;
    storeF32(p + 4 * b, norm);
  }
}

// Partial sums of task t = chunk t % perBucket of bucket t / perBucket:
// sum of squares, their weights (see above), and the first NaN (or max).
__global__ void qsgdPartialSyncKernel(const float *g, int64_t n,
                                      int64_t bucket, int64_t perBucket,
                                      int64_t tasks, double *partS,
                                      double *partW, int64_t *partNaN) {
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t b = task / perBucket, chunk = task % perBucket;
    const int64_t bucketBegin = b * bucket;
    const int64_t bucketEnd = bucketBegin + bucket < n ? bucketBegin + bucket : n;
    const int64_t m = bucketEnd - bucketBegin;
    const int64_t begin = bucketBegin + chunk * kTaskEntries;
    const int64_t end = begin + kTaskEntries < bucketEnd ? begin + kTaskEntries
                                                         : bucketEnd;
    double s = 0, w = 0;
    int64_t nan = INT64_MAX;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const float x = g[i];
      if (isnan(x) && i < nan)
        nan = i;
      const double t = double(x) * double(x);
      const int64_t j = i - bucketBegin;
      s += t;
      w += t * double(m - (j > 1 ? j : 1));
    }
    const Partial r = blockReduce(Partial{s, w, nan}, AddPartial());
    if (threadIdx.x == 0) {
      partS[task] = r.s;
      partW[task] = r.w;
      partNaN[task] = r.nan;
    }
  }
}

// A block per bucket: the norm from the bucket's partial sums, or the serial
// redo when the bound leaves it ambiguous (see above). depth bounds the
// summation tree of S_g.
__global__ void qsgdFinalNormSyncKernel(const float *g, int64_t n,
                                        int64_t bucket, int64_t buckets,
                                        int64_t perBucket, double depth,
                                        const double *partS,
                                        const double *partW,
                                        const int64_t *partNaN, float *norms,
                                        Byte *p) {
  __shared__ double stage[kStage];
  __shared__ int redo;
  const int t = threadIdx.x;
  for (int64_t b = blockIdx.x; b < buckets; b += gridDim.x) {
    Partial mine{0, 0, INT64_MAX};
    for (int64_t c = t; c < perBucket; c += kThreads) {
      const int64_t task = b * perBucket + c;
      mine = AddPartial()(mine, Partial{partS[task], partW[task], partNaN[task]});
    }
    const Partial r = blockReduce(mine, AddPartial());
    const int64_t begin = b * bucket;
    const int64_t end = begin + bucket < n ? begin + bucket : n;
    float norm = 0;
    if (t == 0) {
      redo = 0;
      if (r.nan != INT64_MAX) {
        norm = quiet(g[r.nan]);
      } else if (!isfinite(r.s)) {
        norm = normOfSum(r.s); // +inf: an infinite entry
      } else {
        const double u = 1.1102230246251565e-16; // 2^-53
        const double bound = u * (1.01 * r.w + depth * r.s);
        const double lo = r.s - bound > 0 ? r.s - bound : 0.0;
        const float a = normOfSum(lo), z = normOfSum(r.s + bound);
        norm = a;
        redo = a != z;
      }
    }
    __syncthreads();
    if (redo) { // the CPU's serial sum, staged through shared memory
      double sum = 0;
      for (int64_t base = begin; base < end; base += kStage) {
        const int count = int(end - base < kStage ? end - base : kStage);
        for (int j = t; j < count; j += kThreads) {
          const double x = double(g[base + j]);
          stage[j] = x * x;
        }
        __syncthreads();
        if (t == 0)
          for (int j = 0; j < count; ++j)
            sum += stage[j];
        __syncthreads();
      }
      norm = normOfSum(sum);
    }
    if (t == 0) {
      norms[b] = norm;
      storeF32(p + 4 * b, norm);
    }
    __syncthreads(); // redo is read by every thread above
  }
}

// Buckets summed by one thread each: many small ones.
bool serialBuckets(int64_t bucket, int64_t buckets) {
  return bucket <= 64 || (bucket <= 2048 && buckets >= 64);
}

// One thread per 8 entries (group q): levels into `bits` bytes at
// levels + q * bits (fewer for the last group), signs into byte q.
__global__ void qsgdPackKernel(const float *g, int64_t n, int64_t bucket,
                               int levels, int bits, Seed seed,
                               const float *norms, Byte *levelArea,
                               Byte *signArea) {
  const uint64_t s0 = seedOf(seed);
  FCC_GRID_LOOP(q, ceilDivD(n, 8)) {
    uint32_t draws[8];
    philoxBlock(s0, FCC_COMPRESS_STREAM_QSGD, uint64_t(2 * q), draws);
    philoxBlock(s0, FCC_COMPRESS_STREAM_QSGD, uint64_t(2 * q + 1), draws + 4);
    Byte *out = levelArea + q * bits;
    uint64_t acc = 0;
    int count = 0;
    uint32_t signs = 0;
    const int64_t first = 8 * q;
    const int m = int(n - first < 8 ? n - first : 8);
    for (int e = 0; e < m; ++e) {
      const int64_t i = first + e;
      const float x = g[i];
      const float norm = norms[divIndex(i, bucket)];
      uint32_t level = 0;
      if (isfinite(norm) && norm > 0 && x != 0) {
        const double r = double(fabsf(x)) * double(levels) / double(norm);
        const double fl = floor(r);
        const double frac = r - fl;
        level = uint32_t(fl);
        if (frac > 0 && double(uniformOf(draws[e])) < frac)
          ++level;
        level = level < uint32_t(levels) ? level : uint32_t(levels);
      }
      acc |= uint64_t(level) << count;
      count += bits;
      while (count >= 8) {
        *out++ = Byte(acc);
        acc >>= 8;
        count -= 8;
      }
      signs |= uint32_t(x < 0) << e;
    }
    if (count > 0)
      *out = Byte(acc);
    signArea[q] = Byte(signs);
  }
}

__global__ void qsgdDecodeKernel(const Byte *p, int64_t n, int64_t bucket,
                                 int levels, int bits, const Byte *levelArea,
                                 const Byte *signArea, float scale,
                                 float *out) {
  FCC_GRID_LOOP(i, n) {
    const float norm = loadF32(p + 4 * divIndex(i, bucket));
    const int64_t bit = i * bits;
    const int shift = int(bit & 7);
    const int bytes = (shift + bits + 7) / 8;
    uint64_t acc = 0;
    for (int b = 0; b < bytes; ++b)
      acc |= uint64_t(levelArea[(bit >> 3) + b]) << (8 * b);
    const uint32_t level =
        uint32_t((acc >> shift) & ((uint64_t(1) << bits) - 1));
    const bool negative = (signArea[i >> 3] >> (i & 7)) & 1;
    const float v =
        isfinite(norm)
            ? float(double(norm) * double(level) / double(levels))
            : floatOf(0x7fc00000u);
    out[i] += scale * (negative ? -v : v);
  }
}

//===--- none, fp16, bf16 -------------------------------------------------===//

__global__ void copyKernel(const float *g, int64_t n, Byte *p) {
  FCC_GRID_LOOP(i, n) { storeF32(p + 4 * i, g[i]); }
}

__global__ void castKernel(const float *g, int64_t n, bool f16, Byte *p) {
  FCC_GRID_LOOP(i, n) {
    storeU16(p + 2 * i, f16 ? f16BitsOf(g[i]) : bf16BitsOf(g[i]));
  }
}

__global__ void noneDecodeKernel(const Byte *p, int64_t n, float scale,
                                 float *out) {
  FCC_GRID_LOOP(i, n) { out[i] += scale * loadF32(p + 4 * i); }
}

__global__ void castDecodeKernel(const Byte *p, int64_t n, bool f16,
                                 float scale, float *out) {
  FCC_GRID_LOOP(i, n) {
    const uint16_t h = loadU16(p + 2 * i);
    out[i] += scale * (f16 ? floatOfF16(h) : floatOfBf16(h));
  }
}

// inout += in (fp32 entries, or fp16/bf16 added in float and rounded).
// When both entries are NaN, the CPU build keeps inout's NaN for fp32 and
// in's for fp16/bf16 (g++ emits addss with the operands in that order; the
// NaN bits of such sums are not part of compress.h's contract, this just
// keeps the bytes equal to the x86 build's).
__global__ void payloadSumKernel(Byte *a, const Byte *b, int64_t count,
                                 int kind) {
  FCC_GRID_LOOP(i, count) {
    if (kind == 0) {
      storeF32(a + 4 * i, sseAdd(loadF32(a + 4 * i), loadF32(b + 4 * i)));
    } else if (kind == 1) {
      storeU16(a + 2 * i, f16BitsOf(sseAdd(floatOfF16(loadU16(b + 2 * i)),
                                           floatOfF16(loadU16(a + 2 * i)))));
    } else {
      storeU16(a + 2 * i, bf16BitsOf(sseAdd(floatOfBf16(loadU16(b + 2 * i)),
                                            floatOfBf16(loadU16(a + 2 * i)))));
    }
  }
}

__global__ void payloadScaleKernel(Byte *a, int64_t count, int kind,
                                   float scale) {
  FCC_GRID_LOOP(i, count) {
    if (kind == 0) {
      storeF32(a + 4 * i, sseMul(loadF32(a + 4 * i), scale));
    } else if (kind == 1) {
      storeU16(a + 2 * i,
               f16BitsOf(sseMul(floatOfF16(loadU16(a + 2 * i)), scale)));
    } else {
      storeU16(a + 2 * i,
               bf16BitsOf(sseMul(floatOfBf16(loadU16(a + 2 * i)), scale)));
    }
  }
}

// Threshold payloads of n == 0: a zero count.
__global__ void zeroCountKernel(Byte *p) { storeU32(p, 0); }

//===----------------------------------------------------------------------===//
// Host side
//===----------------------------------------------------------------------===//

// The thresholds: the methods whose payload size depends on the data.
bool isThreshold(const fcc_compressor *c) {
  return !fcc_compress_fixed_size(c);
}

// Workspace regions of one (method, n), each 256-byte aligned.
struct Layout {
  int64_t words = 0, tiles = 0, k = 0;
  int logSlots = 0;
  int64_t bucket = 0, buckets = 0, perBucket = 0, tasks = 0;
  size_t state = 0, hist = 0, maskA = 0, maskE = 0, prefA = 0, prefE = 0,
         tileA = 0, tileE = 0, idx = 0, draws = 0, flags = 0, keys = 0,
         firstStep = 0, norms = 0, partS = 0, partW = 0, partNaN = 0;
  size_t total = 0;

  size_t take(size_t bytes) {
    size_t at = total;
    total += (bytes + 255) / 256 * 256;
    return at;
  }
};

Layout layoutOf(const fcc_compressor *c, int64_t n) {
  Layout L;
  const int m = c->method;
  if (n <= 0)
    return L;
  const bool masks = m == FCC_COMPRESS_TOPK || isThreshold(c) ||
                     m == FCC_COMPRESS_RANDOMK;
  const bool needsState = masks || m == FCC_COMPRESS_TERNGRAD;
  if (needsState)
    L.state = L.take(sizeof(State));
  if (m == FCC_COMPRESS_TOPK)
    L.hist = L.take(kMaxBins * sizeof(uint32_t));
  if (masks) {
    L.words = ceilDiv(n, 32);
    L.tiles = ceilDiv(L.words, kTileWords);
    const size_t wordBytes = size_t(L.words) * 4;
    L.maskA = L.take(wordBytes);
    L.prefA = L.take(wordBytes);
    if (m == FCC_COMPRESS_TOPK) { // "equal to the k-th key" masks
      L.maskE = L.take(wordBytes);
      L.prefE = L.take(wordBytes);
    }
    L.tileA = L.take(size_t(L.tiles) * 4);
    L.tileE = L.take(size_t(L.tiles) * 4);
  }
  if (m == FCC_COMPRESS_RANDOMK) {
    L.k = fcc_compress_k(c, n);
    L.logSlots = 1;
    while ((int64_t(1) << L.logSlots) < 2 * L.k)
      ++L.logSlots;
    const size_t slots = size_t(1) << L.logSlots;
    L.idx = L.take(size_t(L.k) * 4);
    L.draws = L.take(size_t(L.k) * 4);
    L.flags = L.take(size_t(L.k));
    L.keys = L.take(slots * 4);
    L.firstStep = L.take(slots * 4);
  }
  if (m == FCC_COMPRESS_QSGD) {
    L.bucket = c->bucket > 0 ? c->bucket : n;
    L.buckets = ceilDiv(n, L.bucket);
    L.norms = L.take(size_t(L.buckets) * 4);
    if (!serialBuckets(L.bucket, L.buckets)) {
      L.perBucket = ceilDiv(L.bucket, kTaskEntries);
      L.tasks = L.buckets * L.perBucket;
      L.partS = L.take(size_t(L.tasks) * 8);
      L.partW = L.take(size_t(L.tasks) * 8);
      L.partNaN = L.take(size_t(L.tasks) * 8);
    }
  }
  return L;
}

template <class T> T *at(void *workspace, size_t offset) {
  return reinterpret_cast<T *>(static_cast<Byte *>(workspace) + offset);
}

// Blocks of the grid-stride kernels that synchronise (a few per SM: their
// blocks do the work of many).
unsigned syncBlocks(int64_t count) {
  const int64_t cap = int64_t(multiprocessors()) * 4;
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return unsigned(blocks < 1 ? 1 : blocks < cap ? blocks : cap);
}
unsigned tileBlocks(int64_t tiles) {
  const int64_t cap = int64_t(multiprocessors()) * 8;
  return unsigned(tiles < 1 ? 1 : tiles < cap ? tiles : cap);
}

// Scan of the masks' popcounts into prefA/prefE and st->totalA/E.
void scanMasks(const Layout &L, void *ws, bool withE) {
  uint32_t *maskA = at<uint32_t>(ws, L.maskA);
  uint32_t *maskE = withE ? at<uint32_t>(ws, L.maskE) : nullptr;
  uint32_t *tileA = at<uint32_t>(ws, L.tileA), *tileE = at<uint32_t>(ws, L.tileE);
  uint32_t *prefA = at<uint32_t>(ws, L.prefA);
  uint32_t *prefE = withE ? at<uint32_t>(ws, L.prefE) : nullptr;
  State *st = at<State>(ws, L.state);
  const int64_t words = L.words, tiles = L.tiles;
  tileSumsSyncKernel<<<tileBlocks(tiles), kThreads, 0, stream()>>>(
      maskA, maskE, words, tileA, tileE, tiles);
  tileScanSyncKernel<<<1, kThreads, 0, stream()>>>(tileA, tileE, tiles, st);
  wordPrefixSyncKernel<<<tileBlocks(tiles), kThreads, 0, stream()>>>(
      maskA, maskE, words, tileA, tileE, tiles, prefA, prefE);
}

// The sorted randomk positions into idx (L.k of them).
void randomkPositions(const Layout &L, void *ws, int64_t n, Seed seed) {
  const int64_t k = L.k, words = L.words;
  const int logSlots = L.logSlots;
  const int64_t slots = int64_t(1) << logSlots;
  State *st = at<State>(ws, L.state);
  uint32_t *draws = at<uint32_t>(ws, L.draws), *keys = at<uint32_t>(ws, L.keys);
  uint32_t *firstStep = at<uint32_t>(ws, L.firstStep);
  uint32_t *maskA = at<uint32_t>(ws, L.maskA), *prefA = at<uint32_t>(ws, L.prefA);
  uint32_t *idx = at<uint32_t>(ws, L.idx);
  Byte *flags = at<Byte>(ws, L.flags);
  initStateKernel<<<1, 1, 0, stream()>>>(st, 0u);
  fillKernel<<<blocksFor(slots), kThreads, 0, stream()>>>(keys, slots, kEmpty);
  fillKernel<<<blocksFor(slots), kThreads, 0, stream()>>>(firstStep, slots,
                                                          kEmpty);
  fillKernel<<<blocksFor(words), kThreads, 0, stream()>>>(maskA, words, 0u);
  floydDrawKernel<<<blocksFor(k), kThreads, 0, stream()>>>(
      seed, n, k, draws, keys, firstStep, logSlots);
  floydFlagKernel<<<blocksFor(k), kThreads, 0, stream()>>>(
      n, k, draws, keys, firstStep, logSlots, flags);
  floydMarkKernel<<<blocksFor(k), kThreads, 0, stream()>>>(n, k, draws, flags,
                                                           maskA);
  scanMasks(L, ws, false);
  maskIndicesKernel<<<blocksFor(words), kThreads, 0, stream()>>>(maskA, prefA,
                                                                 words, idx);
}

// Writes the topk encoding of g into p (count: k, or -1 for a threshold
// payload, whose count goes to header = p - 4).
void writeSparse(const Layout &L, void *ws, const float *g, int64_t n,
                 int64_t count, bool topk, Byte *p, Byte *header) {
  const int64_t words = L.words;
  uint32_t *maskA = at<uint32_t>(ws, L.maskA);
  uint32_t *maskE = topk ? at<uint32_t>(ws, L.maskE) : nullptr;
  uint32_t *prefA = at<uint32_t>(ws, L.prefA);
  uint32_t *prefE = topk ? at<uint32_t>(ws, L.prefE) : nullptr;
  State *st = at<State>(ws, L.state);
  scanMasks(L, ws, topk);
  sparseWriteKernel<<<blocksFor(words), kThreads, 0, stream()>>>(
      g, n, words, maskA, maskE, prefA, prefE, st, count, topk, p, header);
}

int64_t compress(const char *fn, const fcc_compressor *c, const float *g,
                 int64_t n, Seed shared, Seed priv, void *payload,
                 void *workspace) {
  if (!c || n < 0 || n > INT32_MAX) {
    setAsyncError(format("%s: bad arguments (n = %lld; n must be in [0, "
                         "2^31))",
                         fn, static_cast<long long>(n)));
    return -1;
  }
  const int64_t capacity = fcc_compress_capacity(c, n);
  const Layout L = layoutOf(c, n);
  if (c->method < FCC_COMPRESS_NONE || c->method > FCC_COMPRESS_QSGD) {
    setAsyncError(format("%s: unknown method %d", fn, c->method));
    return -1;
  }
  if (L.total > 0 && !workspace) {
    setAsyncError(format("%s: no workspace (%zu bytes needed)", fn, L.total));
    return -1;
  }
  if (!ready(fn))
    return -1;
  Byte *p = static_cast<Byte *>(payload);
  void *ws = workspace;
  if (n == 0) {
    if (isThreshold(c))
      zeroCountKernel<<<1, 1, 0, stream()>>>(p);
    checkLaunch(fn);
    return capacity;
  }
  State *st = at<State>(ws, L.state); // unused without a workspace
  switch (c->method) {
  case FCC_COMPRESS_NONE:
    copyKernel<<<blocksFor(n), kThreads, 0, stream()>>>(g, n, p);
    break;
  case FCC_COMPRESS_FP16:
  case FCC_COMPRESS_BF16: {
    const bool f16 = c->method == FCC_COMPRESS_FP16;
    castKernel<<<blocksFor(n), kThreads, 0, stream()>>>(g, n, f16, p);
    break;
  }
  case FCC_COMPRESS_RANDOMK: {
    randomkPositions(L, ws, n, shared);
    const uint32_t *idx = at<uint32_t>(ws, L.idx);
    const int64_t k = L.k;
    gatherKernel<<<blocksFor(k), kThreads, 0, stream()>>>(g, idx, k, p);
    break;
  }
  case FCC_COMPRESS_TOPK: {
    const int64_t k = fcc_compress_k(c, n);
    const bool all = k >= n;
    const int64_t words = L.words;
    uint32_t *hist = at<uint32_t>(ws, L.hist);
    uint32_t *maskA = at<uint32_t>(ws, L.maskA), *maskE = at<uint32_t>(ws, L.maskE);
    initStateKernel<<<1, 1, 0, stream()>>>(st, uint32_t(k));
    if (!all) {
      fillKernel<<<blocksFor(kMaxBins), kThreads, 0, stream()>>>(hist, kMaxBins,
                                                                 0u);
      for (int pass = 0; pass < kPasses; ++pass) {
        const int shift = kDigitShift[pass], bits = kDigitBits[pass];
        histSyncKernel<<<syncBlocks(n), kThreads, 0, stream()>>>(g, n, st, hist,
                                                                 shift, bits);
        selectKernel<<<1, 1, 0, stream()>>>(st, hist, shift, bits);
      }
    }
    topkMaskKernel<<<blocksFor(words), kThreads, 0, stream()>>>(
        g, n, words, st, all, maskA, maskE);
    writeSparse(L, ws, g, n, k, true, p, nullptr);
    break;
  }
  case FCC_COMPRESS_THRESHOLDV:
  case FCC_COMPRESS_ADAPTIVE_THRESHOLD: {
    const bool adaptive = c->method == FCC_COMPRESS_ADAPTIVE_THRESHOLD;
    const int64_t words = L.words;
    const double v = c->threshold;
    uint32_t *maskA = at<uint32_t>(ws, L.maskA);
    initStateKernel<<<1, 1, 0, stream()>>>(st, 0u);
    if (adaptive)
      maxKeySyncKernel<<<syncBlocks(n), kThreads, 0, stream()>>>(g, n, true,
                                                                 st);
    thresholdMaskKernel<<<blocksFor(words), kThreads, 0, stream()>>>(
        g, n, words, v, adaptive, st, maskA);
    writeSparse(L, ws, g, n, -1, false, p + 4, p);
    break;
  }
  case FCC_COMPRESS_TERNGRAD:
    initStateKernel<<<1, 1, 0, stream()>>>(st, 0u);
    maxKeySyncKernel<<<syncBlocks(n), kThreads, 0, stream()>>>(g, n, false, st);
    terngradPackKernel<<<blocksFor(ceilDiv(n, 4)), kThreads, 0, stream()>>>(
        g, n, priv, st, p);
    break;
  case FCC_COMPRESS_QSGD: {
    const int levels = fcc_compress_qsgd_levels(c),
              bits = fcc_compress_qsgd_bits(c);
    const int64_t bucket = L.bucket, buckets = L.buckets;
    float *norms = at<float>(ws, L.norms);
    if (serialBuckets(bucket, buckets)) {
      qsgdSerialNormKernel<<<blocksFor(buckets), kThreads, 0, stream()>>>(
          g, n, bucket, buckets, norms, p);
    } else {
      const int64_t perBucket = L.perBucket, tasks = L.tasks;
      double *partS = at<double>(ws, L.partS), *partW = at<double>(ws, L.partW);
      int64_t *partNaN = at<int64_t>(ws, L.partNaN);
      // Additions on the longest path of S_g: kEntriesPerThread in a thread,
      // 16 + 16 in each block reduction, then perBucket / kThreads.
      const double depth =
          double(kEntriesPerThread + 64 + ceilDiv(perBucket, kThreads) + 16);
      qsgdPartialSyncKernel<<<tileBlocks(tasks), kThreads, 0, stream()>>>(
          g, n, bucket, perBucket, tasks, partS, partW, partNaN);
      qsgdFinalNormSyncKernel<<<tileBlocks(buckets), kThreads, 0, stream()>>>(
          g, n, bucket, buckets, perBucket, depth, partS, partW, partNaN,
          norms, p);
    }
    Byte *levelArea = p + 4 * buckets;
    Byte *signArea = levelArea + ceilDiv(n * bits, 8);
    qsgdPackKernel<<<blocksFor(ceilDiv(n, 8)), kThreads, 0, stream()>>>(
        g, n, bucket, levels, bits, priv, norms, levelArea, signArea);
    break;
  }
  }
  checkLaunch(fn);
  return capacity;
}

void decompressAdd(const char *fn, const fcc_compressor *c,
                   const void *payload, int64_t n, Seed shared, float scale,
                   float *out, void *workspace) {
  if (!c || n < 0 || n > INT32_MAX) {
    setAsyncError(format("%s: bad arguments (n = %lld; n must be in [0, "
                         "2^31))",
                         fn, static_cast<long long>(n)));
    return;
  }
  if (n == 0)
    return;
  const Layout L = layoutOf(c, n);
  if (L.total > 0 && !workspace) {
    setAsyncError(format("%s: no workspace (%zu bytes needed)", fn, L.total));
    return;
  }
  if (!ready(fn))
    return;
  const Byte *p = static_cast<const Byte *>(payload);
  void *ws = workspace;
  switch (c->method) {
  case FCC_COMPRESS_NONE:
    noneDecodeKernel<<<blocksFor(n), kThreads, 0, stream()>>>(p, n, scale, out);
    break;
  case FCC_COMPRESS_FP16:
  case FCC_COMPRESS_BF16: {
    const bool f16 = c->method == FCC_COMPRESS_FP16;
    castDecodeKernel<<<blocksFor(n), kThreads, 0, stream()>>>(p, n, f16, scale,
                                                              out);
    break;
  }
  case FCC_COMPRESS_RANDOMK: {
    randomkPositions(L, ws, n, shared);
    const uint32_t *idx = at<uint32_t>(ws, L.idx);
    const int64_t k = L.k;
    const bool unbiased = c->unbiased != 0;
    const float factor = unbiased ? float(double(n) / double(k)) : 1.0f;
    scatterAddKernel<<<blocksFor(k), kThreads, 0, stream()>>>(
        p, idx, k, scale, unbiased, factor, out);
    break;
  }
  case FCC_COMPRESS_TOPK:
  case FCC_COMPRESS_THRESHOLDV:
  case FCC_COMPRESS_ADAPTIVE_THRESHOLD: {
    const bool threshold = isThreshold(c);
    const Byte *header = threshold ? p : nullptr;
    const Byte *data = threshold ? p + 4 : p;
    const int64_t count = threshold ? -1 : fcc_compress_k(c, n);
    const int64_t words = L.words;
    uint32_t *maskA = at<uint32_t>(ws, L.maskA), *prefA = at<uint32_t>(ws, L.prefA);
    State *st = at<State>(ws, L.state);
    // The encoding: known here for topk, read on the device for thresholds
    // (both paths are launched; the one that does not apply returns).
    const bool maybeBitmap = threshold || ceilDiv(n, 8) < 4 * count;
    const bool maybeIndex = threshold || !maybeBitmap;
    if (maybeBitmap) {
      initStateKernel<<<1, 1, 0, stream()>>>(st, 0u);
      bitmapToMasksKernel<<<blocksFor(words), kThreads, 0, stream()>>>(
          data, header, count, n, words, maskA);
      scanMasks(L, ws, false);
      bitmapDecodeKernel<<<blocksFor(words), kThreads, 0, stream()>>>(
          data, header, count, n, words, maskA, prefA, scale, out);
    }
    if (maybeIndex)
      indexDecodeKernel<<<blocksFor(threshold ? n : count), kThreads, 0,
                          stream()>>>(data, header, count, n, scale, out);
    break;
  }
  case FCC_COMPRESS_TERNGRAD:
    terngradDecodeKernel<<<blocksFor(n), kThreads, 0, stream()>>>(p, n, scale,
                                                                  out);
    break;
  case FCC_COMPRESS_QSGD: {
    const int levels = fcc_compress_qsgd_levels(c),
              bits = fcc_compress_qsgd_bits(c);
    const int64_t bucket = c->bucket > 0 ? c->bucket : n;
    const int64_t buckets = ceilDiv(n, bucket);
    const Byte *levelArea = p + 4 * buckets;
    const Byte *signArea = levelArea + ceilDiv(n * bits, 8);
    qsgdDecodeKernel<<<blocksFor(n), kThreads, 0, stream()>>>(
        p, n, bucket, levels, bits, levelArea, signArea, scale, out);
    break;
  }
  default:
    setAsyncError(format("%s: unknown method %d", fn, c->method));
    return;
  }
  checkLaunch(fn);
}

} // namespace

extern "C" int64_t fcc_cuda_compress_workspace_bytes(const fcc_compressor *c,
                                                     int64_t n) {
  return c ? int64_t(layoutOf(c, n).total) : 0;
}

extern "C" int64_t fcc_cuda_compress(const fcc_compressor *c, const float *g,
                                     int64_t n, uint64_t shared_seed,
                                     uint64_t private_seed, void *payload,
                                     void *workspace) {
  return compress("fcc_cuda_compress", c, g, n, Seed{nullptr, shared_seed},
                  Seed{nullptr, private_seed}, payload, workspace);
}

extern "C" int64_t fcc_cuda_compress_dseed(const fcc_compressor *c,
                                           const float *g, int64_t n,
                                           const uint64_t *shared_seed,
                                           const uint64_t *private_seed,
                                           void *payload, void *workspace) {
  const char *fn = "fcc_cuda_compress_dseed";
  if (!shared_seed || !private_seed) {
    setAsyncError(format("%s: null seed pointer", fn));
    return -1;
  }
  return compress(fn, c, g, n, Seed{shared_seed, 0}, Seed{private_seed, 0},
                  payload, workspace);
}

extern "C" void fcc_cuda_decompress_add(const fcc_compressor *c,
                                        const void *payload, int64_t n,
                                        uint64_t shared_seed, float scale,
                                        float *out, void *workspace) {
  decompressAdd("fcc_cuda_decompress_add", c, payload, n,
                Seed{nullptr, shared_seed}, scale, out, workspace);
}

extern "C" void fcc_cuda_decompress_add_dseed(const fcc_compressor *c,
                                              const void *payload, int64_t n,
                                              const uint64_t *shared_seed,
                                              float scale, float *out,
                                              void *workspace) {
  const char *fn = "fcc_cuda_decompress_add_dseed";
  if (!shared_seed) {
    setAsyncError(format("%s: null seed pointer", fn));
    return;
  }
  decompressAdd(fn, c, payload, n, Seed{shared_seed, 0}, scale, out,
                workspace);
}

namespace {
// A summable payload of n entries: its entry kind (0 fp32, 1 fp16, 2 bf16)
// and entry count (k values for randomk).
struct SummableEntries {
  int kind;
  int64_t count;
};
SummableEntries summableEntries(const fcc_compressor *c, int64_t n) {
  const int kind = c->method == FCC_COMPRESS_FP16   ? 1
                   : c->method == FCC_COMPRESS_BF16 ? 2
                                                    : 0;
  return {kind, c->method == FCC_COMPRESS_RANDOMK ? fcc_compress_k(c, n) : n};
}
} // namespace

extern "C" void fcc_cuda_payload_sum(const fcc_compressor *c, void *inout,
                                     const void *in, int64_t n) {
  const char *fn = "fcc_cuda_payload_sum";
  if (!c || n <= 0 || !fcc_compress_summable(c) || !ready(fn))
    return;
  const SummableEntries e = summableEntries(c, n);
  Byte *a = static_cast<Byte *>(inout);
  const Byte *b = static_cast<const Byte *>(in);
  payloadSumKernel<<<blocksFor(e.count), kThreads, 0, stream()>>>(
      a, b, e.count, e.kind);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_payload_scale(const fcc_compressor *c, void *payload,
                                       int64_t n, float scale) {
  const char *fn = "fcc_cuda_payload_scale";
  if (!c || n <= 0 || !fcc_compress_summable(c) || !ready(fn))
    return;
  const SummableEntries e = summableEntries(c, n);
  Byte *a = static_cast<Byte *>(payload);
  payloadScaleKernel<<<blocksFor(e.count), kThreads, 0, stream()>>>(
      a, e.count, e.kind, scale);
  checkLaunch(fn);
}
