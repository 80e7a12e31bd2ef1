//===- common.cuh - Device helpers shared by the CUDA kernels (private) ---===//
//
// Storage-type conversions (fp32 arithmetic on fp32/fp16/bf16 storage,
// rounding to nearest even on every store, exactly as the CPU target's
// emulation in runtime/cpu/half.cpp), the dtype dispatch of the host
// wrappers, Philox-4x32-10 (bit-identical to runtime/cpu/random.cpp), the
// reflection index of the data augmentation, and a deterministic block
// reduction.
//
// The library is compiled with -fmad=false: nvcc would otherwise contract
// a * b + c into fused multiply-adds, whose single rounding differs from
// the CPU target's two (g++ for x86-64 has no FMA by default), and the
// kernels are meant to reproduce the CPU kernels' arithmetic.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_RUNTIME_CUDA_COMMON_CUH
#define FCC_RUNTIME_CUDA_COMMON_CUH

#include "internal.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace fcc::cuda {

//===--- Storage types ------------------------------------------------------===//

__device__ __forceinline__ float toFloat(float v) { return v; }
__device__ __forceinline__ float toFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float toFloat(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <class T> __device__ __forceinline__ T fromFloat(float v);
template <> __device__ __forceinline__ float fromFloat<float>(float v) {
  return v;
}
// Round to nearest, ties to even; overflow to infinity (fcc_round_f16).
template <> __device__ __forceinline__ __half fromFloat<__half>(float v) {
  return __float2half_rn(v);
}
// Round to nearest, ties to even (fcc_round_bf16).
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Records a sticky "<fn>: unknown dtype <d>" error.
inline void badDtype(const char *fn, int dtype) {
  setAsyncError(format("%s: unknown dtype %d (expected FCC_DTYPE_F32, F16 "
                       "or BF16)",
                       fn, dtype));
}

// Runs the lambda given as the remaining arguments with `T` bound to the
// storage type of DTYPE (float, __half or __nv_bfloat16); an unknown dtype
// is a sticky error naming FN. The lambda is defined inside each case, so
// its body sees that case's T:
//   FCC_CUDA_DISPATCH(dtype, fn, [&] { kernel<T><<<g, b, 0, s>>>(...); });
#define FCC_CUDA_DISPATCH(DTYPE, FN, ...)                                      \
  do {                                                                         \
    switch (DTYPE) {                                                           \
    case FCC_DTYPE_F32: {                                                      \
      using T = float;                                                         \
      __VA_ARGS__();                                                           \
    } break;                                                                   \
    case FCC_DTYPE_F16: {                                                      \
      using T = __half;                                                        \
      __VA_ARGS__();                                                           \
    } break;                                                                   \
    case FCC_DTYPE_BF16: {                                                     \
      using T = __nv_bfloat16;                                                 \
      __VA_ARGS__();                                                           \
    } break;                                                                   \
    default:                                                                   \
      ::fcc::cuda::badDtype(FN, DTYPE);                                        \
    }                                                                          \
  } while (0)

// Grid-stride loop over [0, count).
#define FCC_GRID_LOOP(I, COUNT)                                                \
  for (int64_t I = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;             \
       I < (COUNT); I += int64_t(blockDim.x) * gridDim.x)

// e / d for non-negative e and positive d. GPUs emulate 64-bit division
// in software (tens of instructions); almost every index of a real tensor
// fits 32 bits, whose division is a few instructions.
__device__ __forceinline__ int64_t divIndex(int64_t e, int64_t d) {
  return ((uint64_t(e) | uint64_t(d)) >> 32) == 0
             ? int64_t(uint32_t(e) / uint32_t(d))
             : e / d;
}

//===--- Vectors -------------------------------------------------------------===//
//
// The BatchNorm and pooling kernels are memory-bound, and 2-byte accesses,
// one per thread, keep too few bytes in flight to reach HBM's bandwidth
// (H200, call 3: the fused BatchNorm kernels took 3.3 ms for about 0.4 ms
// of traffic); where the shape and alignment allow, a thread loads and
// stores V neighbours at once (16 bytes: 8 halves or 4 floats).

template <class T, int V> struct alignas(V * sizeof(T)) Vec {
  T v[V];
};

// Elements of T in 16 bytes.
template <class T> constexpr int kVec16 = int(16 / sizeof(T));

// Vector q of a tensor (element q * V).
template <int V, class T>
__device__ __forceinline__ Vec<T, V> loadVec(const T *p, int64_t q) {
  return reinterpret_cast<const Vec<T, V> *>(p)[q];
}
template <int V, class T>
__device__ __forceinline__ void storeVec(T *p, int64_t q, const Vec<T, V> &v) {
  reinterpret_cast<Vec<T, V> *>(p)[q] = v;
}

// Whether every buffer (null ones ignored) is aligned to `bytes`.
inline bool aligned(std::initializer_list<const void *> buffers, size_t bytes) {
  for (const void *p : buffers)
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0)
      return false;
  return true;
}

// The most elements a kernel with a grid-stride int index may take: its
// stride is at most 2^20 blocks x 1024 threads, so an index below 2^30
// plus the stride cannot pass 2^31 - 1 before the loop ends (the tiled
// pooling and fused BatchNorm kernels).
constexpr int64_t kMaxInt32GridElements = int64_t(1) << 30;

// Whether the environment variable `name` is "1": the kernels' switches
// for side-by-side measurements (fcc-kernel-bench), read at each call, i.e.
// when a CUDA graph is captured, not when it replays.
inline bool envFlag(const char *name) {
  const char *v = std::getenv(name);
  return v && std::strcmp(v, "1") == 0;
}

// The grid of a multi-tensor launch: one tensor per blockIdx.y, blocks
// along x for `maxCount` work items (the largest tensor's), four per thread
// (the kernels loop grid-stride). Every tensor gets the largest one's
// blocks and the ones past its own count exit at once, so one item per
// thread made most blocks empty: resnet9-bot's SGD update (tensors of up
// to 2.4 M elements) launched about 240k blocks for 25k with work. Four
// per thread still gives the largest tensor more threads than a GPU holds
// at once. False when there is nothing to launch, when the runtime is not
// ready (see ready()) and, with a sticky error naming `fn`, when there are
// more tensors than a grid's y takes.
inline bool multiTensorGrid(const char *fn, int num, int64_t maxCount,
                            dim3 &grid) {
  if (num <= 0 || maxCount <= 0 || !ready(fn))
    return false;
  constexpr int kMaxGridY = 65535;
  if (num > kMaxGridY) {
    setAsyncError(
        format("%s: %d tensors; at most %d per call", fn, num, kMaxGridY));
    return false;
  }
  grid = dim3(blocksFor((maxCount + 3) / 4), unsigned(num));
  return true;
}

// FCC_CUDA_SCALAR=1 turns the 16-byte vectors off (the kernels before
// them: one element, pair or pooling window per thread).
inline bool vectorsEnabled() { return !envFlag("FCC_CUDA_SCALAR"); }

// The widest vector (16 bytes, then a pair if `pairs`, else one element)
// that divides `run` (the elements that share a vector's per-vector state:
// a plane, a row of channels, a whole tensor) and to which every buffer
// (null ones ignored) is aligned.
template <class T>
int vectorWidth(int64_t run, std::initializer_list<const void *> buffers,
                bool pairs) {
  if (vectorsEnabled() && run % kVec16<T> == 0 && aligned(buffers, 16))
    return kVec16<T>;
  if (pairs && run % 2 == 0 && aligned(buffers, 2 * sizeof(T)))
    return 2;
  return 1;
}

// G neighbouring 2x2 windows of a tiled pooling (stride = window) of an
// NCHW plane: two rows of 2G taps, one vector load each. Groups are laid
// out like windows of 2 x 2G taps over oh x ow/G, so group o starts at
// tiledWindowBase(o, oh, ow / G, 2, 2 * G) and its first output is o * G.
template <class T, int G> struct WindowGroup {
  Vec<T, 2 * G> r0, r1; // the group's two rows of taps
  __device__ __forceinline__ WindowGroup(const T *x, int64_t base, int w)
      : r0(loadVec<2 * G>(x + base, 0)), r1(loadVec<2 * G>(x + base + w, 0)) {}
  // Window i's taps in row-major order.
  __device__ __forceinline__ void taps(int i, float (&xs)[4]) const {
    xs[0] = toFloat(r0.v[2 * i]);
    xs[1] = toFloat(r0.v[2 * i + 1]);
    xs[2] = toFloat(r1.v[2 * i]);
    xs[3] = toFloat(r1.v[2 * i + 1]);
  }
};

// Windows per thread of a tiled pooling: kVec16 / 2 (a WindowGroup) for
// 2x2 windows when a row of ow outputs holds whole groups and the buffers
// are aligned (input-shaped ones to 16 bytes, output-shaped ones to a
// group), else 1.
template <class T>
int windowGroupFor(int64_t kh, int64_t kw, int64_t ow,
                   std::initializer_list<const void *> in,
                   std::initializer_list<const void *> out) {
  constexpr int G = kVec16<T> / 2;
  return vectorsEnabled() && kh == 2 && kw == 2 && ow % G == 0 &&
                 aligned(in, 16) && aligned(out, G * sizeof(T))
             ? G
             : 1;
}

// The first-maximum scan of max pooling (runtime/cpu/pool.cpp's
// firstMaxIndex): feed a window's taps in row-major order; the first NaN
// wins, else the first of the largest values, and a window of -inf keeps
// its first tap. Shared by the pooling and fused BatchNorm kernels.
struct FirstMax {
  float max = -INFINITY;
  int64_t best = -1, firstNaN = -1;
  __device__ __forceinline__ void take(float v, int64_t pos) {
    if (best < 0)
      best = pos;
    if (isnan(v)) {
      if (firstNaN < 0)
        firstNaN = pos;
    } else if (v > max) {
      max = v;
      best = pos;
    }
  }
  __device__ __forceinline__ bool sawNaN() const { return firstNaN >= 0; }
  __device__ __forceinline__ int64_t index() const {
    return sawNaN() ? firstNaN : best;
  }
};

// The quiet NaN std::numeric_limits<float>::quiet_NaN() has (0x7fc00000).
__device__ __forceinline__ float quietNaN() { return __int_as_float(0x7fc00000); }

// Offset of the first tap of tiled pooling window o (planes x oh x ow
// windows of kh x kw over planes of oh*kh x ow*kw elements: windows that
// neither overlap nor leave gaps). 32-bit index math: the callers check
// that the tensor has fewer than 2^31 elements.
__device__ __forceinline__ int64_t tiledWindowBase(int o, int oh, int ow,
                                                   int kh, int kw) {
  const int c = o % ow, t = o / ow, r = t % oh, p = t / oh;
  return (int64_t(p) * oh * kh + r * kh) * (ow * kw) + c * kw;
}

// e % d for non-negative e and positive d, 32-bit when both fit.
__device__ __forceinline__ int64_t modIndex(int64_t e, int64_t d) {
  return e - divIndex(e, d) * d;
}

//===--- Philox-4x32-10 (runtime/cpu/random.cpp) -----------------------------===//

// Fills out[0..3] with the block `block` of stream (seed, streamId): the
// random words number 4*block .. 4*block+3 of fcc_random_u32.
__device__ __forceinline__ void philoxBlock(uint64_t seed, uint64_t streamId,
                                            uint64_t block, uint32_t out[4]) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = uint32_t(block), c1 = uint32_t(block >> 32);
  uint32_t c2 = uint32_t(streamId), c3 = uint32_t(streamId >> 32);
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = __umulhi(kM1, c2), lo1 = kM1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// fcc_random_uniform's mapping of 32 random bits to [0, 1): the 24 high
// bits, exactly representable.
__device__ __forceinline__ float uniformOf(uint32_t bits) {
  return float(bits >> 8) * (1.0f / 16777216.0f);
}

//===--- Block reduction -------------------------------------------------------===//

// Sums a and b over the kThreads threads of the block in a fixed tree
// order (deterministic); every thread gets the result. All threads must
// call it; it may be called repeatedly (it ends with a barrier, so the next
// call cannot overwrite the shared sums while a thread still reads them).
__device__ __forceinline__ void blockSum2(double &a, double &b) {
  __shared__ double sa[kThreads], sb[kThreads];
  const int t = threadIdx.x;
  sa[t] = a;
  sb[t] = b;
  __syncthreads();
#pragma unroll
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (t < half) {
      sa[t] += sa[t + half];
      sb[t] += sb[t + half];
    }
    __syncthreads();
  }
  a = sa[0];
  b = sb[0];
  __syncthreads();
}

} // namespace fcc::cuda

#endif // FCC_RUNTIME_CUDA_COMMON_CUH
