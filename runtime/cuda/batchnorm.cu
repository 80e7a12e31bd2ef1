//===- batchnorm.cu - BatchNorm, fused BatchNorm + activation, folding ----===//
//
// Batch normalisation over (N, H, W) per channel, the fused
// BatchNorm + activation (+ max pool) (+ residual) kernels of fcc.bn_act,
// folding an inference BatchNorm into the convolution before it, and the
// per-channel sum that is a convolution's bias gradient.
//
// Per-channel reductions run in one launch, deterministically:
//  1. a grid of (segments x channels) blocks; each thread accumulates its
//     strided share of the channel's n*h*w elements in double, the block
//     sums its threads in a fixed tree, and each block writes one pair of
//     partial sums to the context's scratch;
//  2. the channel's last block to finish (a completion counter per
//     channel) adds the channel's partial sums in segment order, one thread
//     per channel, and derives what the next launch needs (statistics,
//     coefficients) from them. (Until 2026-12 this was a second launch,
//     channelFinishKernel, which FCC_CUDA_FINISH_KERNEL=1 still uses.)
// The number of segments depends only on the shape and the vector width
// (enough blocks to fill any GPU, at least 8 elements per thread), so
// results are the same on every run and every GPU. The vector width
// depends on the shape, the buffers' alignment and FCC_CUDA_SCALAR: with
// FCC_CUDA_SCALAR=1 the sums group elements differently and results differ
// by roundings (FCC_CUDA_FINISH_KERNEL=1 changes nothing: same partial
// sums, added in the same order).
//
// Arithmetic mirrors runtime/cpu/batch_norm.cpp and fused.cpp formula by
// formula, including which quantities are rounded to float:
//  - unfused training forward: two passes (mean, then centred squares)
//    and normalisation with the double statistics;
//  - fused training forward: one pass of sums shifted by the channel's
//    first element, and normalisation with the statistics rounded to float
//    (what the backward gets, so its recomputed activations and pooling
//    arg-maxes are bit-identical to the forward's);
//  - per-channel coefficients in double: mul = scale / sqrt(var + eps)
//    (inference) or scale * (1 / sqrt(var + eps)) (training), invStd =
//    1 / sqrt(var + eps), k = scale * invStd, mean(dz), mean(dz * xhat);
//  - unfused: z = float((double(x) - mean) * mul + shift) and
//    dx = float(k * (dz - mean(dz) - xhat * mean(dz * xhat))), xhat in
//    double;
//  - fused: the same formulas in float, with the coefficients rounded to
//    float (as cuDNN and PyTorch; in double, the conversions to and from
//    fp64 ran at a quarter of the fp32 rate): z = (x - mean) * mul + shift,
//    xhat = (x - mean) * invStd, dx = k * ((dz - mean(dz)) - xhat *
//    mean(dz * xhat));
//  - backward sums dshift = sum dz, dscale = sum dz * xhat in double;
//    activations in float.
// Only the order in which the double sums are added differs from the CPU.
//
// The fused backward computes dz (the gradient before the activation, with
// dy routed to the first maximum of each pooling window) in both of its
// sweeps rather than storing it: dx may be half precision, and dz must stay
// fp32 between the sweeps as on the CPU. When the pooling tiles its input
// (ResNet9's 2x2/2 pools), the fused kernels take one pooling window per
// thread (tiledFused): the backward finds each window's first maximum once
// instead of once per tap, with 32-bit index math.
//
//===----------------------------------------------------------------------===//
#include "common.cuh"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>

using namespace fcc::cuda;

namespace {

// Number of partial sums per channel at most, and the least work per
// thread that justifies another segment.
constexpr int64_t kMaxSegments = 128;
constexpr int64_t kMinItemsPerThread = 8;

// An NCHW tensor seen per channel: n planes of hw elements per channel.
struct Layout {
  int64_t n = 0, c = 0, hw = 0;
  uint32_t hw32 = 0;  // hw, for 32-bit index arithmetic
  uint64_t count = 0; // n * hw elements per channel (< 2^32)
};

// What the kernels of one call pass from launch to launch per channel:
// computed in double; the unfused kernels use them so, the fused ones
// rounded to float (f, set by roundCoef).
struct ChannelCoef {
  double mean;      // subtracted by the normalisation
  double mul;       // scale / std, in the form of the kernel (see above)
  double shift;     // BatchNorm shift
  double invStd;    // 1 / sqrt(var + eps) (training forms)
  double k;         // backward: scale * invStd
  double meanG;     // backward: sum dz / M
  double meanGXhat; // backward: sum dz * xhat / M
  struct {
    float mean, mul, shift, invStd, k, meanG, meanGXhat;
  } f;
};

// Sets the float coefficients from the double ones (the fields a launch
// has not set yet are rounded too, and set again when they are).
__device__ __forceinline__ void roundCoef(ChannelCoef &c) {
  c.f.mean = float(c.mean);
  c.f.mul = float(c.mul);
  c.f.shift = float(c.shift);
  c.f.invStd = float(c.invStd);
  c.f.k = float(c.k);
  c.f.meanG = float(c.meanG);
  c.f.meanGXhat = float(c.meanGXhat);
}

struct Scratch {
  ChannelCoef *coef = nullptr;
  double2 *partials = nullptr;
  int segments = 1;
};

// Checks the shape and carves the context's scratch into per-channel
// coefficients and partial sums, one per segment of perSegment of a
// channel's n * hw items. False (sticky error) if impossible.
bool prepare(const char *fn, int64_t n, int64_t c, int64_t hw, Layout &l,
             Scratch &s,
             int64_t perSegment = int64_t(kThreads) * kMinItemsPerThread,
             int64_t maxSegments = kMaxSegments) {
  if (n <= 0 || c <= 0 || hw <= 0)
    return false; // Nothing to do (the CPU kernels do nothing either).
  if (!ready(fn))
    return false;
  // Reductions put channels on gridDim.y and index a channel's elements
  // with 32 bits.
  constexpr int64_t kMaxGridY = 65535;
  if (c > kMaxGridY) {
    setAsyncError(format("%s: %lld channels; at most %lld are supported", fn,
                         (long long)c, (long long)kMaxGridY));
    return false;
  }
  if (n * hw >= (int64_t(1) << 32)) {
    setAsyncError(format("%s: %lld elements per channel; fewer than 2^32 are "
                         "supported",
                         fn, (long long)(n * hw)));
    return false;
  }
  l.n = n;
  l.c = c;
  l.hw = hw;
  l.hw32 = uint32_t(hw);
  l.count = uint64_t(n * hw);
  // Coefficients first, 256-byte aligned, then the partial sums.
  const size_t coefBytes = (size_t(c) * sizeof(ChannelCoef) + 255) / 256 * 256;
  int64_t segments = (int64_t(l.count) + perSegment - 1) / perSegment;
  segments = std::max<int64_t>(1, std::min(segments, maxSegments));
  const size_t capacity = scratchCapacity();
  const int64_t fit =
      capacity > coefBytes
          ? int64_t((capacity - coefBytes) / (size_t(c) * sizeof(double2)))
          : 0;
  segments = std::min(segments, fit);
  if (segments < 1) {
    setAsyncError(format("%s: %lld channels do not fit the kernel scratch", fn,
                         (long long)c));
    return false;
  }
  char *base = static_cast<char *>(
      scratch(coefBytes + size_t(c * segments) * sizeof(double2), fn));
  if (!base)
    return false;
  s.coef = reinterpret_cast<ChannelCoef *>(base);
  s.partials = reinterpret_cast<double2 *>(base + coefBytes);
  s.segments = int(segments);
  return true;
}

//===----------------------------------------------------------------------===//
// The per-channel reduction
//===----------------------------------------------------------------------===//
//
// One launch: blocks (segments x channels) write partial sums, and the
// last block of each channel (or NHWC channel group) to finish adds them in
// segment order and calls the Fin (the statistics, coefficients, gradient
// sums) - the CUDA programming guide's threadfence pattern on a counter
// per channel (reduceCounters(), zero between calls). The sums and their
// order are those of channelFinishKernel, the second launch this replaced;
// FCC_CUDA_FINISH_KERNEL=1 brings that launch back (A/B measurements).

bool separateFinish() { return envFlag("FCC_CUDA_FINISH_KERNEL"); }

// A channel's two totals: its partial sums added in segment order (read
// from L2: other blocks wrote them). Both ways of finishing use it, so
// they give the same sums.
__device__ __forceinline__ double2 channelTotals(const double2 *partials,
                                                 int64_t ch, int segments) {
  double a = 0.0, b = 0.0;
  for (int s = 0; s < segments; ++s) {
    const double2 v = __ldcg(&partials[ch * segments + s]);
    a += v.x;
    b += v.y;
  }
  return make_double2(a, b);
}

// Called by every thread of a block after it wrote its partial sums of
// channels ch0 .. ch0 + channels - 1 (segment blockIdx.x): the block that
// finishes last (by `counter`) adds each channel's partials in segment
// order (from L2: other blocks wrote them), calls fin and zeroes the
// counter for the next reduction on this stream.
template <class Fin>
__device__ void finishInLastBlock(Fin fin, const double2 *partials,
                                  int segments, int64_t ch0, int channels,
                                  unsigned *counter) {
  __shared__ bool last;
  __threadfence(); // this thread's partials before the block counts done
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence(); // and the block's, seen through the barrier
    last = atomicAdd(counter, 1u) == unsigned(segments - 1);
  }
  __syncthreads();
  if (!last)
    return;
  __threadfence(); // the other blocks' partials, counted done, after this
  if (int(threadIdx.x) < channels) {
    const int64_t ch = ch0 + threadIdx.x;
    const double2 t = channelTotals(partials, ch, segments);
    fin(ch, t.x, t.y);
  }
  if (threadIdx.x == 0)
    *counter = 0;
}

// Op(ch, plane, j) -> (a, b): the contribution of element j of plane
// `plane` (= n * c + ch) to the channel's two sums.
// The thread's element e = i * hw + j of the channel advances by the
// stride in (i, j) form, with one carry, so the loop divides only once.
// With counters, the channel's last block finishes (fin); without, the
// caller launches channelFinishKernel.
template <class Op, class Fin>
__global__ void __launch_bounds__(kThreads)
    channelPartialsKernel(Op op, Fin fin, Layout l, int segments,
                          double2 *partials, unsigned *counters) {
  const int64_t ch = blockIdx.y;
  const uint32_t stride = uint32_t(segments) * kThreads; // <= 2^15
  const uint32_t si = stride / l.hw32, sj = stride - si * l.hw32;
  uint64_t e = uint64_t(blockIdx.x) * kThreads + threadIdx.x;
  uint32_t i = uint32_t(e) / l.hw32, j = uint32_t(e) - i * l.hw32;
  double a = 0.0, b = 0.0;
  for (; e < l.count; e += stride) { // l.count < 2^32 by prepare()
    const double2 v = op(ch, int64_t(i) * l.c + ch, int64_t(j));
    a += v.x;
    b += v.y;
    i += si;
    j += sj;
    if (j >= l.hw32) {
      j -= l.hw32;
      ++i;
    }
  }
  blockSum2(a, b);
  if (threadIdx.x == 0)
    partials[ch * segments + blockIdx.x] = make_double2(a, b);
  if (counters) // uniform over the block
    finishInLastBlock(fin, partials, segments, ch, 1, counters + ch);
}

// Fin(ch, a, b) with the channel's totals, summed in segment order.
template <class Fin>
__global__ void channelFinishKernel(Fin fin, const double2 *partials,
                                    int segments, int64_t c) {
  FCC_GRID_LOOP(ch, c) {
    const double2 t = channelTotals(partials, ch, segments);
    fin(ch, t.x, t.y);
  }
}

// After a partial-sums launch (channelPartialsKernel, nhwcPartialsKernel)
// with `counters` (its last blocks finished) or without (the second
// launch, channelFinishKernel, finishes).
template <class Fin>
bool finishReduction(const char *fn, const Layout &l, const Scratch &s,
                     Fin fin, const unsigned *counters) {
  if (!checkLaunch(fn))
    return false;
  if (counters)
    return true;
  channelFinishKernel<<<blocksFor(l.c), kThreads, 0, stream()>>>(
      fin, s.partials, s.segments, l.c);
  return checkLaunch(fn);
}

template <class Op, class Fin>
bool channelReduce(const char *fn, const Layout &l, const Scratch &s, Op op,
                   Fin fin) {
  const dim3 grid(unsigned(s.segments), unsigned(l.c));
  unsigned *counters = separateFinish() ? nullptr : reduceCounters();
  channelPartialsKernel<<<grid, kThreads, 0, stream()>>>(
      op, fin, l, s.segments, s.partials, counters);
  return finishReduction(fn, l, s, fin, counters);
}

//===----------------------------------------------------------------------===//
// Vectors
//===----------------------------------------------------------------------===//

// Without pooling, the fused sweeps and reductions take V neighbours of a
// plane per thread (one 16-byte load or store per tensor where they can,
// else pairs, else single elements; one index division and one set of
// channel coefficients per vector), and with 2x2 tiled pooling a thread
// takes V/2 neighbouring windows (a WindowGroup). Each element's arithmetic
// is the scalar kernels'.

// Calls f(std::integral_constant<int, V>()) for a width of vectorWidth
// (Pairs: as vectorWidth's `pairs`; without, no kernels for pairs are
// instantiated).
template <class T, bool Pairs, class F> void withVectorWidth(int v, F f) {
  if (v == kVec16<T>)
    f(std::integral_constant<int, kVec16<T>>());
  else if (Pairs && v == 2)
    f(std::integral_constant<int, Pairs ? 2 : 1>());
  else
    f(std::integral_constant<int, 1>());
}

//===----------------------------------------------------------------------===//
// Element functions
//===----------------------------------------------------------------------===//

// The unfused kernels' normalisation: in double, rounded to float.
__device__ __forceinline__ float normaliseUnfused(const ChannelCoef &k,
                                                  float x) {
  return float((double(x) - k.mean) * k.mul + k.shift);
}

// The fused kernels' (fused.cpp's): in float, coefficients rounded to float.
__device__ __forceinline__ float normalise(const ChannelCoef &k, float x) {
  return (x - k.f.mean) * k.f.mul + k.f.shift;
}

__device__ __forceinline__ float xhatOf(const ChannelCoef &k, float x) {
  return (x - k.f.mean) * k.f.invStd;
}

// As fused.cpp's activate / activationGrad.
__device__ __forceinline__ float activate(int act, float z, float alpha) {
  switch (act) {
  case FCC_ACT_RELU:
    return z > 0.0f ? z : 0.0f;
  case FCC_ACT_CELU:
    return z > 0.0f ? z : alpha * expm1f(z / alpha);
  default:
    return z;
  }
}

__device__ __forceinline__ float activationGrad(int act, float z, float g,
                                                float alpha) {
  switch (act) {
  case FCC_ACT_RELU:
    return z > 0.0f ? g : 0.0f;
  case FCC_ACT_CELU:
    return z > 0.0f ? g : g * expf(z / alpha);
  default:
    return g;
  }
}

// The geometry of a fused kernel (fcc_bn_act_desc after finalize).
struct FusedGeom {
  int64_t h, w, oh, ow;
  int64_t kh, kw, sh, sw; // pool window and strides; kh == 0: no pooling
  int act;
  float alpha;
};

// Index in the plane of the first tap of pooling window (oh, ow) holding
// the window's maximum of act(normalise(x)) (the first NaN if any): fused.cpp's
// windowMax + firstMaxIndex in one pass.
template <class T>
__device__ int64_t fusedFirstMax(const T *plane, const FusedGeom &g,
                                 const ChannelCoef &k, int64_t oh,
                                 int64_t ow) {
  FirstMax scan;
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t pos = (oh * g.sh + i) * g.w + ow * g.sw + j;
      scan.take(activate(g.act, normalise(k, toFloat(plane[pos])), g.alpha),
                pos);
    }
  return scan.index();
}

// dz of element j of plane p: dy routed through the pooling (the sum, in
// the CPU's window order, of the gradients of the windows whose first
// maximum is j) times the activation's derivative at z = normalise(x).
template <class T>
__device__ float fusedDz(const T *x, const T *dy, const FusedGeom &g,
                         const ChannelCoef &k, int64_t p, int64_t j) {
  const int64_t hw = g.h * g.w;
  const T *plane = x + p * hw;
  const float z = normalise(k, toFloat(plane[j]));
  float grad;
  if (g.kh == 0) {
    grad = toFloat(dy[p * hw + j]);
  } else {
    const T *dyPlane = dy + p * g.oh * g.ow;
    const int64_t r = j / g.w, c = j - r * g.w;
    grad = 0.0f;
    // Windows containing (r, c) in (oh, ow) order: the output index grows
    // as the tap index falls.
    for (int64_t i = g.kh - 1; i >= 0; --i) {
      const int64_t tr = r - i;
      if (tr < 0 || tr % g.sh != 0 || tr / g.sh >= g.oh)
        continue;
      const int64_t oh = tr / g.sh;
      for (int64_t jj = g.kw - 1; jj >= 0; --jj) {
        const int64_t tc = c - jj;
        if (tc < 0 || tc % g.sw != 0 || tc / g.sw >= g.ow)
          continue;
        const int64_t ow = tc / g.sw;
        if (fusedFirstMax(plane, g, k, oh, ow) == j)
          grad += toFloat(dyPlane[oh * g.ow + ow]);
      }
    }
  }
  return activationGrad(g.act, z, grad, g.alpha);
}

// dx of one element from its x and its gradient dz before the BatchNorm,
// k * (dz - mean(dz) - xhat * mean(dz * xhat)): in double (unfused) ...
__device__ __forceinline__ float bnGradInputUnfused(const ChannelCoef &k,
                                                    float x, float dz) {
  const double xhat = (double(x) - k.mean) * k.invStd;
  return float(k.k * (double(dz) - k.meanG - xhat * k.meanGXhat));
}

// ... and in float (fused).
__device__ __forceinline__ float bnGradInput(const ChannelCoef &k, float x,
                                             float dz) {
  return k.f.k * ((dz - k.f.meanG) - xhatOf(k, x) * k.f.meanGXhat);
}

// The taps of one pooling window, loaded (row-major): the window's pooled
// value, the maximum of act(normalise(x)) (NaN if a tap is NaN) ...
template <int Taps>
__device__ __forceinline__ float pooledTaps(const float (&xs)[Taps],
                                            const FusedGeom &g,
                                            const ChannelCoef &k) {
  FirstMax scan;
#pragma unroll
  for (int t = 0; t < Taps; ++t)
    scan.take(activate(g.act, normalise(k, xs[t]), g.alpha), t);
  return scan.sawNaN() ? quietNaN() : scan.max;
}

// ... and f(t, x, dz) for each tap t, dz being fusedDz's value for it: the
// window's gradient gy at its first maximum, 0 elsewhere, through the
// activation's derivative.
template <int Taps, class F>
__device__ __forceinline__ void windowTapGrads(const float (&xs)[Taps],
                                               float gy, const FusedGeom &g,
                                               const ChannelCoef &k, F f) {
  float zs[Taps];
  FirstMax scan;
#pragma unroll
  for (int t = 0; t < Taps; ++t) {
    zs[t] = normalise(k, xs[t]);
    scan.take(activate(g.act, zs[t], g.alpha), t);
  }
  const int64_t best = scan.index();
#pragma unroll
  for (int t = 0; t < Taps; ++t)
    f(t, xs[t], activationGrad(g.act, zs[t], t == best ? gy : 0.0f, g.alpha));
}

// Tiled pooling (ResNet9's 2x2/2 pools: windows that neither overlap nor
// leave gaps, see tiledFused): every input element lies in exactly one
// window, so the backward takes one window per thread instead of one
// element (whose fusedDz searches every window holding it, with 64-bit
// index division, and rescans each window's taps).
//
// tiledFusedWindow walks window o (first tap at plane offset `base`) and
// calls f(offset, x, dz) for each tap (windowTapGrads; the window's
// gradient is 0 + dy, as fusedDz's sum of one term). K > 0: the window is
// K x K (a compile-time size: the loops unroll and the taps stay in
// registers); K = 0: the size is read from g and the second scan reloads
// and renormalises.
// Tap (i, j) is at base + i * rowStride + j * colStride (NCHW: w and 1;
// NHWC: w * c and c).
template <int K, class T, class F>
__device__ __forceinline__ void tiledFusedWindow(const T *x, const T *dy,
                                                 const FusedGeom &g,
                                                 const ChannelCoef &k,
                                                 int64_t base,
                                                 int64_t rowStride,
                                                 int64_t colStride, int64_t o,
                                                 F f) {
  const float gy = 0.0f + toFloat(dy[o]);
  if constexpr (K > 0) {
    float xs[K * K];
#pragma unroll
    for (int t = 0; t < K * K; ++t)
      xs[t] = toFloat(x[base + (t / K) * rowStride + (t % K) * colStride]);
    windowTapGrads(xs, gy, g, k, [&](int t, float xv, float dz) {
      f(base + (t / K) * rowStride + (t % K) * colStride, xv, dz);
    });
  } else {
    const int kh = int(g.kh), kw = int(g.kw);
    FirstMax scan;
    for (int i = 0; i < kh; ++i)
      for (int j = 0; j < kw; ++j)
        scan.take(activate(g.act,
                           normalise(k, toFloat(x[base + i * rowStride +
                                                  j * colStride])),
                           g.alpha),
                  i * kw + j);
    const int64_t best = scan.index();
    for (int i = 0; i < kh; ++i)
      for (int j = 0; j < kw; ++j) {
        const int64_t e = base + i * rowStride + j * colStride;
        const float xv = toFloat(x[e]);
        f(e, xv,
          activationGrad(g.act, normalise(k, xv),
                         i * kw + j == best ? gy : 0.0f, g.alpha));
      }
  }
}

// fusedForwardKernel's pooled value of a tiled window (taps as in
// tiledFusedWindow).
template <int K, class T>
__device__ __forceinline__ float tiledPooled(const T *x, int64_t base,
                                             int64_t rowStride,
                                             int64_t colStride,
                                             const FusedGeom &g,
                                             const ChannelCoef &k) {
  if constexpr (K > 0) {
    float xs[K * K];
#pragma unroll
    for (int t = 0; t < K * K; ++t)
      xs[t] = toFloat(x[base + (t / K) * rowStride + (t % K) * colStride]);
    return pooledTaps(xs, g, k);
  } else {
    FirstMax scan;
    for (int i = 0; i < int(g.kh); ++i)
      for (int j = 0; j < int(g.kw); ++j)
        scan.take(activate(g.act,
                           normalise(k, toFloat(x[base + i * rowStride +
                                                  j * colStride])),
                           g.alpha),
                  i * int(g.kw) + j);
    return scan.sawNaN() ? quietNaN() : scan.max;
  }
}

// Calls f(std::integral_constant<int, K>()) with the K of tiledFusedWindow:
// 2 for 2x2 windows (ResNet9's pools), else 0.
template <class F> void withWindowSize(const FusedGeom &g, F f) {
  if (g.kh == 2 && g.kw == 2)
    f(std::integral_constant<int, 2>());
  else
    f(std::integral_constant<int, 0>());
}

// Whether the pooling tiles its input: stride = window, the input exactly
// covered (every element in exactly one window).
bool poolTiles(const FusedGeom &g) {
  return g.kh != 0 && g.sh == g.kh && g.sw == g.kw && g.h == g.oh * g.kh &&
         g.w == g.ow * g.kw;
}

// Whether the fused kernels may take the pooling window by window: tiled
// windows (poolTiles) and 32-bit indices (kMaxInt32GridElements).
// FCC_BN_GENERAL=1 in the environment turns this off (the per-element
// kernels every geometry can take), for side-by-side measurements
// (fcc-kernel-bench); it is read at each call, i.e. when a CUDA graph is
// captured, not when it replays.
bool tiledFused(const FusedGeom &g, int64_t planes) {
  return !envFlag("FCC_BN_GENERAL") && poolTiles(g) &&
         planes * g.h * g.w <= kMaxInt32GridElements;
}

//===----------------------------------------------------------------------===//
// Reduction operands and finishers
//===----------------------------------------------------------------------===//

// One element's terms of the backward's sums, (dz, dz * xhat), added in
// double: xhat in double (unfused) ...
__device__ __forceinline__ double2 gradTermsUnfused(const ChannelCoef &k,
                                                    float x, float dz) {
  const double v = double(dz);
  return make_double2(v, v * (double(x) - k.mean) * k.invStd);
}

// ... or in float (fused; the product of two floats is exact in double).
__device__ __forceinline__ double2 gradTerms(const ChannelCoef &k, float x,
                                             float dz) {
  const double v = double(dz);
  return make_double2(v, v * double(xhatOf(k, x)));
}

template <class T> struct SumOp {
  const T *x;
  int64_t hw;
  __device__ double2 operator()(int64_t, int64_t p, int64_t j) const {
    return make_double2(double(toFloat(x[p * hw + j])), 0.0);
  }
};

template <class T> struct CentredSquaresOp {
  const T *x;
  int64_t hw;
  const ChannelCoef *coef;
  __device__ double2 operator()(int64_t ch, int64_t p, int64_t j) const {
    const double centred = double(toFloat(x[p * hw + j])) - coef[ch].mean;
    return make_double2(centred * centred, 0.0);
  }
};

// Sums of x - K, (x - K)^2 with K the channel's first element, over
// vector jv (V elements) of plane p.
template <class T, int V> struct ShiftedSumsOp {
  const T *x;
  int64_t hw;
  __device__ double2 operator()(int64_t ch, int64_t p, int64_t jv) const {
    const Vec<T, V> v = loadVec<V>(x + p * hw, jv);
    const double k = double(toFloat(x[ch * hw]));
    double a = 0.0, b = 0.0;
#pragma unroll
    for (int h = 0; h < V; ++h) {
      const double t = double(toFloat(v.v[h])) - k;
      a += t;
      b += t * t;
    }
    return make_double2(a, b);
  }
};

template <class T> struct BnGradOp {
  const T *x, *dy;
  int64_t hw;
  const ChannelCoef *coef;
  __device__ double2 operator()(int64_t ch, int64_t p, int64_t j) const {
    return gradTermsUnfused(coef[ch], toFloat(x[p * hw + j]),
                            toFloat(dy[p * hw + j]));
  }
};

// The backward's terms of element j of plane p, with pooling (fusedDz's
// search: the per-element kernels) ...
template <class T> struct FusedGradOp {
  const T *x, *dy;
  FusedGeom g;
  const ChannelCoef *coef;
  __device__ double2 operator()(int64_t ch, int64_t p, int64_t j) const {
    const ChannelCoef &k = coef[ch];
    return gradTerms(k, toFloat(x[p * g.h * g.w + j]),
                     fusedDz(x, dy, g, k, p, j));
  }
};

// ... and without, summed over vector jv of plane p.
template <class T, int V> struct FusedGradVecOp {
  const T *x, *dy;
  FusedGeom g;
  const ChannelCoef *coef;
  __device__ double2 operator()(int64_t ch, int64_t p, int64_t jv) const {
    const ChannelCoef k = coef[ch];
    const int64_t plane = p * g.h * g.w;
    const Vec<T, V> xs = loadVec<V>(x + plane, jv),
                    gs = loadVec<V>(dy + plane, jv);
    double a = 0.0, b = 0.0;
#pragma unroll
    for (int h = 0; h < V; ++h) {
      const float xv = toFloat(xs.v[h]);
      const double2 t = gradTerms(
          k, xv,
          activationGrad(g.act, normalise(k, xv), toFloat(gs.v[h]), g.alpha));
      a += t.x;
      b += t.y;
    }
    return make_double2(a, b);
  }
};

// FusedGradOp summed over tiled window q of plane p (a Layout of windows:
// hw = oh * ow), taps in row-major order.
template <class T, int K> struct TiledFusedGradOp {
  const T *x, *dy;
  FusedGeom g;
  const ChannelCoef *coef;
  __device__ double2 operator()(int64_t ch, int64_t p, int64_t q) const {
    const ChannelCoef &k = coef[ch];
    const int oh = int(g.oh), ow = int(g.ow);
    const int o = int(p) * oh * ow + int(q);
    double a = 0.0, b = 0.0;
    tiledFusedWindow<K>(x, dy, g, k,
                        tiledWindowBase(o, oh, ow, int(g.kh), int(g.kw)), g.w,
                        1, o, [&](int64_t, float xv, float dz) {
                          const double2 t = gradTerms(k, xv, dz);
                          a += t.x;
                          b += t.y;
                        });
    return make_double2(a, b);
  }
};

struct MeanFin {
  double count;
  float *batchMean;
  ChannelCoef *coef;
  __device__ void operator()(int64_t ch, double sum, double) const {
    const double mean = sum / count;
    coef[ch].mean = mean;
    batchMean[ch] = float(mean);
  }
};

struct VarFin {
  double count;
  float eps;
  const float *scale, *shift;
  float *batchVar;
  ChannelCoef *coef;
  __device__ void operator()(int64_t ch, double sq, double) const {
    const double var = sq / count;
    const double invStd = 1.0 / sqrt(var + double(eps));
    batchVar[ch] = float(var);
    coef[ch].invStd = invStd;
    coef[ch].mul = double(scale[ch]) * invStd;
    coef[ch].shift = double(shift[ch]);
  }
};

template <class T> struct ShiftedFin {
  const T *x;
  int64_t firstStride; // the channel's first element: x[ch * firstStride]
  double count;
  float eps;
  const float *scale, *shift;
  float *batchMean, *batchVar;
  ChannelCoef *coef;
  __device__ void operator()(int64_t ch, double s1, double s2) const {
    const double k = double(toFloat(x[ch * firstStride]));
    const double shifted = s1 / count;
    const double rawVar = s2 / count - shifted * shifted;
    const float mean = float(k + shifted);
    // std::max(rawVar, 0.0): NaN stays NaN (fmax would give 0).
    const float var = float(rawVar < 0.0 ? 0.0 : rawVar);
    batchMean[ch] = mean;
    batchVar[ch] = var;
    ChannelCoef c{};
    c.mean = double(mean);
    c.invStd = 1.0 / sqrt(double(var) + double(eps));
    c.mul = double(scale[ch]) * c.invStd;
    c.shift = double(shift[ch]);
    roundCoef(c);
    coef[ch] = c;
  }
};

struct GradFin {
  double count;
  const float *scale;
  float *dscale, *dshift;
  ChannelCoef *coef;
  __device__ void operator()(int64_t ch, double sumG, double sumGXhat) const {
    if (dshift)
      dshift[ch] = float(sumG);
    if (dscale)
      dscale[ch] = float(sumGXhat);
    ChannelCoef &k = coef[ch];
    k.k = double(scale[ch]) * k.invStd;
    k.meanG = sumG / count;
    k.meanGXhat = sumGXhat / count;
    roundCoef(k);
  }
};

template <class T> struct StoreSumFin {
  T *out;
  __device__ void operator()(int64_t ch, double sum, double) const {
    out[ch] = fromFloat<T>(float(sum));
  }
};

//===----------------------------------------------------------------------===//
// Elementwise sweeps
//===----------------------------------------------------------------------===//

// Coefficients from given statistics. Inference: mul = scale / sqrt(var +
// eps) (fcc_cpu_batch_norm_inference); training: invStd = 1 / sqrt(var +
// eps), mul = scale * invStd (the statistics the training forward
// reported). shift may be null (the unfused backward does not use it).
__global__ void coefKernel(const float *scale, const float *shift,
                           const float *mean, const float *var, float eps,
                           bool training, int64_t c, ChannelCoef *coef) {
  FCC_GRID_LOOP(ch, c) {
    ChannelCoef k{};
    k.mean = double(mean[ch]);
    const double root = sqrt(double(var[ch]) + double(eps));
    k.invStd = 1.0 / root;
    k.mul = training ? double(scale[ch]) * k.invStd : double(scale[ch]) / root;
    k.shift = shift ? double(shift[ch]) : 0.0;
    roundCoef(k);
    coef[ch] = k;
  }
}

template <class T>
__global__ void normaliseKernel(const T *x, T *y, int64_t c, int64_t hw,
                                int64_t total, const ChannelCoef *coef) {
  FCC_GRID_LOOP(e, total) {
    const int64_t ch = modIndex(divIndex(e, hw), c);
    y[e] = fromFloat<T>(normaliseUnfused(coef[ch], toFloat(x[e])));
  }
}

template <class T>
__global__ void bnBackwardKernel(const T *x, const T *dy, T *dx, int64_t c,
                                 int64_t hw, int64_t total,
                                 const ChannelCoef *coef) {
  FCC_GRID_LOOP(e, total) {
    const ChannelCoef &k = coef[modIndex(divIndex(e, hw), c)];
    dx[e] = fromFloat<T>(bnGradInputUnfused(k, toFloat(x[e]), toFloat(dy[e])));
  }
}

// One thread per output element: normalise, activate, max-pool (taps in
// row-major order, NaN propagates), add the residual (which may be y).
template <class T>
__global__ void fusedForwardKernel(const T *x, const T *residual, T *y,
                                   FusedGeom g, int64_t c, int64_t total,
                                   const ChannelCoef *coef) {
  const int64_t outPlane = g.oh * g.ow;
  FCC_GRID_LOOP(o, total) {
    const int64_t p = divIndex(o, outPlane), q = o - p * outPlane;
    const ChannelCoef &k = coef[modIndex(p, c)];
    float v;
    if (g.kh == 0) {
      v = activate(g.act, normalise(k, toFloat(x[o])), g.alpha);
    } else {
      const int64_t oh = q / g.ow, ow = q - oh * g.ow;
      const T *plane = x + p * g.h * g.w;
      float m = -INFINITY;
      bool nan = false;
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) {
          const float a = activate(
              g.act,
              normalise(k, toFloat(plane[(oh * g.sh + i) * g.w + ow * g.sw + j])),
              g.alpha);
          m = a > m ? a : m;
          nan |= isnan(a);
        }
      v = nan ? __int_as_float(0x7fc00000) : m;
    }
    if (residual)
      v = v + toFloat(residual[o]);
    y[o] = fromFloat<T>(v);
  }
}

// The forward kernels' last step for output vector q: y = value(h) (+ the
// residual, read before y is written: it may be y).
template <int V, class T, class F>
__device__ __forceinline__ void storeForward(T *y, const T *residual,
                                             int64_t q, F value) {
  Vec<T, V> res{};
  if (residual)
    res = loadVec<V>(residual, q);
  Vec<T, V> out;
#pragma unroll
  for (int h = 0; h < V; ++h) {
    float v = value(h);
    if (residual)
      v = v + toFloat(res.v[h]);
    out.v[h] = fromFloat<T>(v);
  }
  storeVec<V>(y, q, out);
}

template <class T, int V>
__global__ void fusedForwardVecKernel(const T *x, const T *residual, T *y,
                                      FusedGeom g, int64_t c, int64_t vectors,
                                      const ChannelCoef *coef) {
  const int64_t planeVectors = g.h * g.w / V;
  FCC_GRID_LOOP(q, vectors) {
    const ChannelCoef k = coef[modIndex(divIndex(q, planeVectors), c)];
    const Vec<T, V> in = loadVec<V>(x, q);
    storeForward<V>(y, residual, q, [&](int h) {
      return activate(g.act, normalise(k, toFloat(in.v[h])), g.alpha);
    });
  }
}

template <class T, int V>
__global__ void fusedBackwardVecKernel(const T *x, const T *dy, T *dx,
                                       FusedGeom g, int64_t c, int64_t vectors,
                                       const ChannelCoef *coef) {
  const int64_t planeVectors = g.h * g.w / V;
  FCC_GRID_LOOP(q, vectors) {
    const ChannelCoef k = coef[modIndex(divIndex(q, planeVectors), c)];
    const Vec<T, V> xs = loadVec<V>(x, q), gs = loadVec<V>(dy, q);
    Vec<T, V> out;
#pragma unroll
    for (int h = 0; h < V; ++h) {
      const float xv = toFloat(xs.v[h]);
      const float dz = activationGrad(g.act, normalise(k, xv),
                                      toFloat(gs.v[h]), g.alpha);
      out.v[h] = fromFloat<T>(bnGradInput(k, xv, dz));
    }
    storeVec<V>(dx, q, out);
  }
}

template <class T>
__global__ void fusedBackwardKernel(const T *x, const T *dy, T *dx,
                                    FusedGeom g, int64_t c, int64_t total,
                                    const ChannelCoef *coef) {
  const int64_t hw = g.h * g.w;
  FCC_GRID_LOOP(e, total) {
    const int64_t p = divIndex(e, hw), j = e - p * hw;
    const ChannelCoef &k = coef[modIndex(p, c)];
    dx[e] = fromFloat<T>(bnGradInput(k, toFloat(x[e]), fusedDz(x, dy, g, k, p, j)));
  }
}

// Tiled pooling, one thread per window (= output element): the forward
// of fusedForwardKernel with 32-bit index math; the backward writes dx for
// every tap of its window.
template <class T, int K>
__global__ void tiledFusedForwardKernel(const T *x, const T *residual, T *y,
                                        FusedGeom g, int c, int count,
                                        const ChannelCoef *coef) {
  const int oh = int(g.oh), ow = int(g.ow);
  const int kh = K > 0 ? K : int(g.kh), kw = K > 0 ? K : int(g.kw);
  const int w = int(g.w), outPlane = oh * ow;
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < count;
       o += blockDim.x * gridDim.x) {
    float v = tiledPooled<K>(x, tiledWindowBase(o, oh, ow, kh, kw), w, 1, g,
                             coef[(o / outPlane) % c]);
    if (residual)
      v = v + toFloat(residual[o]);
    y[o] = fromFloat<T>(v);
  }
}

template <class T, int K>
__global__ void tiledFusedBackwardKernel(const T *x, const T *dy, T *dx,
                                         FusedGeom g, int c, int count,
                                         const ChannelCoef *coef) {
  const int oh = int(g.oh), ow = int(g.ow);
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < count;
       o += blockDim.x * gridDim.x) {
    const ChannelCoef &k = coef[(o / (oh * ow)) % c];
    tiledFusedWindow<K>(x, dy, g, k,
                        tiledWindowBase(o, oh, ow, int(g.kh), int(g.kw)), g.w,
                        1, o, [&](int64_t e, float xv, float dz) {
                          dx[e] = fromFloat<T>(bnGradInput(k, xv, dz));
                        });
  }
}

// 2x2 tiled pooling with G neighbouring windows per thread (WindowGroup):
// group o's first output is o * G. Used when windowGroupFor allows it.
template <class T, int G>
__global__ void tiledGroupForwardKernel(const T *x, const T *residual, T *y,
                                        FusedGeom g, int c, int groups,
                                        const ChannelCoef *coef) {
  const int oh = int(g.oh), owg = int(g.ow) / G, w = int(g.w);
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < groups;
       o += blockDim.x * gridDim.x) {
    const ChannelCoef k = coef[(o / (oh * owg)) % c];
    const WindowGroup<T, G> in(x, tiledWindowBase(o, oh, owg, 2, 2 * G), w);
    storeForward<G>(y, residual, o, [&](int i) {
      float xs[4];
      in.taps(i, xs);
      return pooledTaps(xs, g, k);
    });
  }
}

template <class T, int G>
__global__ void tiledGroupBackwardKernel(const T *x, const T *dy, T *dx,
                                         FusedGeom g, int c, int groups,
                                         const ChannelCoef *coef) {
  const int oh = int(g.oh), owg = int(g.ow) / G, w = int(g.w);
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < groups;
       o += blockDim.x * gridDim.x) {
    const ChannelCoef k = coef[(o / (oh * owg)) % c];
    const int64_t base = tiledWindowBase(o, oh, owg, 2, 2 * G);
    const WindowGroup<T, G> in(x, base, w);
    const Vec<T, G> gy = loadVec<G>(dy, o);
    Vec<T, 2 * G> d0, d1;
#pragma unroll
    for (int i = 0; i < G; ++i) {
      float xs[4];
      in.taps(i, xs);
      windowTapGrads(xs, 0.0f + toFloat(gy.v[i]), g, k,
                     [&](int t, float xv, float dz) {
                       const T v = fromFloat<T>(bnGradInput(k, xv, dz));
                       if (t < 2)
                         d0.v[2 * i + t] = v;
                       else
                         d1.v[2 * i + t - 2] = v;
                     });
    }
    storeVec<2 * G>(dx + base, 0, d0);
    storeVec<2 * G>(dx + base + w, 0, d1);
  }
}

// TiledFusedGradOp over group q of plane p (a Layout of oh * ow / G
// groups), windows left to right.
template <class T, int G> struct TiledGroupGradOp {
  const T *x, *dy;
  FusedGeom g;
  const ChannelCoef *coef;
  __device__ double2 operator()(int64_t ch, int64_t p, int64_t q) const {
    const ChannelCoef k = coef[ch];
    const int oh = int(g.oh), owg = int(g.ow) / G;
    const int o = int(p) * oh * owg + int(q);
    const WindowGroup<T, G> in(x, tiledWindowBase(o, oh, owg, 2, 2 * G),
                               int(g.w));
    const Vec<T, G> gy = loadVec<G>(dy, o);
    double a = 0.0, b = 0.0;
#pragma unroll
    for (int i = 0; i < G; ++i) {
      float xs[4];
      in.taps(i, xs);
      windowTapGrads(xs, 0.0f + toFloat(gy.v[i]), g, k,
                     [&](int, float xv, float dz) {
                       const double2 t = gradTerms(k, xv, dz);
                       a += t.x;
                       b += t.y;
                     });
    }
    return make_double2(a, b);
  }
};


// Bessel's correction of the running variance; a single sample has no
// unbiased estimate, so it falls back to the biased variance (as the CPU).
__host__ __device__ inline double besselCorrection(int unbiased,
                                                   int64_t count) {
  return unbiased && count > 1 ? double(count) / double(count - 1) : 1.0;
}

__device__ __forceinline__ void updateRunning(float *runningMean,
                                              float *runningVar,
                                              const float *batchMean,
                                              const float *batchVar, double m,
                                              double correction, int64_t ch) {
  runningMean[ch] =
      float((1.0 - m) * runningMean[ch] + m * double(batchMean[ch]));
  runningVar[ch] = float((1.0 - m) * runningVar[ch] +
                         m * double(batchVar[ch]) * correction);
}

__global__ void updateRunningKernel(float *runningMean, float *runningVar,
                                    const float *batchMean,
                                    const float *batchVar, double momentum,
                                    double correction, int64_t c) {
  FCC_GRID_LOOP(ch, c) {
    updateRunning(runningMean, runningVar, batchMean, batchVar, momentum,
                  correction, ch);
  }
}

// fcc_cuda_batch_norm_update_running_multi: item blockIdx.y.
__global__ void updateRunningMultiKernel(const fcc_cuda_running_item *items) {
  const fcc_cuda_running_item it = items[blockIdx.y];
  const double correction = besselCorrection(it.unbiased, it.count);
  FCC_GRID_LOOP(ch, it.c) {
    updateRunning(it.running_mean, it.running_var, it.batch_mean,
                  it.batch_var, double(it.momentum), correction, ch);
  }
}

template <class T>
__global__ void foldBnKernel(const T *w, const T *b, const float *scale,
                             const float *shift, const float *mean,
                             const float *var, float eps, int64_t k,
                             int64_t perK, T *wOut, T *bOut) {
  FCC_GRID_LOOP(e, k * perK) {
    const int64_t o = divIndex(e, perK);
    const double m = double(scale[o]) / sqrt(double(var[o]) + double(eps));
    wOut[e] = fromFloat<T>(float(double(toFloat(w[e])) * m));
  }
  FCC_GRID_LOOP(o, k) {
    const double m = double(scale[o]) / sqrt(double(var[o]) + double(eps));
    const double bias = b ? double(toFloat(b[o])) : 0.0;
    bOut[o] = fromFloat<T>(float((bias - double(mean[o])) * m + double(shift[o])));
  }
}

// fcc_bn_act_desc_finalize's checks (the CUDA runtime does not link the CPU
// kernels); oh/ow must match what it computes when they are set.
bool fusedGeom(const fcc_bn_act_desc *d, FusedGeom &g, const char *fn) {
  if (!d) {
    setAsyncError(format("%s: null descriptor", fn));
    return false;
  }
  auto bad = [&](const char *why) {
    setAsyncError(format("%s: invalid descriptor: %s", fn, why));
    return false;
  };
  if (d->n <= 0 || d->c <= 0 || d->h <= 0 || d->w <= 0)
    return bad("the input shape must be positive");
  if (d->activation < FCC_ACT_NONE || d->activation > FCC_ACT_CELU)
    return bad("unknown activation");
  if (d->activation == FCC_ACT_CELU && d->alpha == 0.0f)
    return bad("CELU alpha must be non-zero");
  if (d->layout != FCC_LAYOUT_NCHW && d->layout != FCC_LAYOUT_NHWC)
    return bad("unknown layout");
  g.h = d->h;
  g.w = d->w;
  g.act = d->activation;
  g.alpha = d->alpha;
  g.kh = g.kw = 0;
  g.sh = g.sw = 1;
  g.oh = d->h;
  g.ow = d->w;
  if (d->pool_kh != 0 || d->pool_kw != 0) {
    if (d->pool_kh <= 0 || d->pool_kw <= 0 || d->pool_sh <= 0 ||
        d->pool_sw <= 0)
      return bad("pool kernel and strides must be positive");
    if (d->pool_kh > d->h || d->pool_kw > d->w)
      return bad("the pool window does not fit the input");
    g.kh = d->pool_kh;
    g.kw = d->pool_kw;
    g.sh = d->pool_sh;
    g.sw = d->pool_sw;
    g.oh = (d->h - d->pool_kh) / d->pool_sh + 1;
    g.ow = (d->w - d->pool_kw) / d->pool_sw + 1;
  }
  if ((d->oh != 0 || d->ow != 0) && (d->oh != g.oh || d->ow != g.ow))
    return bad("oh/ow do not match the pooling (call fcc_bn_act_desc_finalize)");
  return true;
}

} // namespace

//===----------------------------------------------------------------------===//
// C API: BatchNorm
//===----------------------------------------------------------------------===//

extern "C" void fcc_cuda_batch_norm_inference(const void *x, const float *scale,
                                              const float *shift,
                                              const float *mean,
                                              const float *var, float eps,
                                              int64_t n, int64_t c, int64_t hw,
                                              void *y, int dtype) {
  const char *fn = "fcc_cuda_batch_norm_inference";
  Layout l;
  Scratch s;
  if (!prepare(fn, n, c, hw, l, s))
    return;
  coefKernel<<<blocksFor(c), kThreads, 0, stream()>>>(scale, shift, mean, var,
                                                      eps, false, c, s.coef);
  if (!checkLaunch(fn))
    return;
  const int64_t total = n * c * hw;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    normaliseKernel<T><<<blocksFor(total), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), static_cast<T *>(y), c, hw, total, s.coef);
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_batch_norm_train_forward(
    const void *x, const float *scale, const float *shift, float eps,
    int64_t n, int64_t c, int64_t hw, void *y, float *batch_mean,
    float *batch_var, int dtype) {
  const char *fn = "fcc_cuda_batch_norm_train_forward";
  Layout l;
  Scratch s;
  if (!prepare(fn, n, c, hw, l, s))
    return;
  const double count = double(n * hw);
  const int64_t total = n * c * hw;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    const T *xt = static_cast<const T *>(x);
    // Two passes for an accurate variance: the mean, then centred squares.
    if (!channelReduce(fn, l, s, SumOp<T>{xt, hw},
                       MeanFin{count, batch_mean, s.coef}))
      return;
    if (!channelReduce(fn, l, s, CentredSquaresOp<T>{xt, hw, s.coef},
                       VarFin{count, eps, scale, shift, batch_var, s.coef}))
      return;
    normaliseKernel<T><<<blocksFor(total), kThreads, 0, stream()>>>(
        xt, static_cast<T *>(y), c, hw, total, s.coef);
    checkLaunch(fn);
  });
}

extern "C" void fcc_cuda_batch_norm_update_running(
    float *running_mean, float *running_var, const float *batch_mean,
    const float *batch_var, float momentum, int unbiased, int64_t count,
    int64_t c) {
  const char *fn = "fcc_cuda_batch_norm_update_running";
  if (c <= 0 || !ready(fn))
    return;
  updateRunningKernel<<<blocksFor(c), kThreads, 0, stream()>>>(
      running_mean, running_var, batch_mean, batch_var, double(momentum),
      besselCorrection(unbiased, count), c);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_batch_norm_update_running_multi(
    const fcc_cuda_running_item *items, int num, int64_t max_c) {
  const char *fn = "fcc_cuda_batch_norm_update_running_multi";
  dim3 grid;
  if (!multiTensorGrid(fn, num, max_c, grid))
    return;
  updateRunningMultiKernel<<<grid, kThreads, 0, stream()>>>(items);
  checkLaunch(fn);
}

extern "C" void fcc_cuda_batch_norm_backward(
    const void *x, const void *dy, const float *scale, const float *batch_mean,
    const float *batch_var, float eps, int64_t n, int64_t c, int64_t hw,
    void *dx, float *dscale, float *dshift, int dtype) {
  const char *fn = "fcc_cuda_batch_norm_backward";
  Layout l;
  Scratch s;
  if (!prepare(fn, n, c, hw, l, s))
    return;
  coefKernel<<<blocksFor(c), kThreads, 0, stream()>>>(
      scale, nullptr, batch_mean, batch_var, eps, true, c, s.coef);
  if (!checkLaunch(fn))
    return;
  const double count = double(n * hw);
  const int64_t total = n * c * hw;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    const T *xt = static_cast<const T *>(x);
    const T *dyt = static_cast<const T *>(dy);
    if (!channelReduce(fn, l, s, BnGradOp<T>{xt, dyt, hw, s.coef},
                       GradFin{count, scale, dscale, dshift, s.coef}))
      return;
    if (!dx)
      return;
    bnBackwardKernel<T><<<blocksFor(total), kThreads, 0, stream()>>>(
        xt, dyt, static_cast<T *>(dx), c, hw, total, s.coef);
    checkLaunch(fn);
  });
}

// The fused forward sweep: with tiled pooling a window (or a group of
// windows) per thread, without pooling a vector per thread, else the
// per-element kernel.
template <class T>
void launchFusedForward(const T *x, const T *residual, T *y,
                        const FusedGeom &g, int64_t c, int64_t total,
                        const ChannelCoef *coef) {
  if (tiledFused(g, total / (g.oh * g.ow))) {
    constexpr int kG = kVec16<T> / 2;
    if (windowGroupFor<T>(g.kh, g.kw, g.ow, {x}, {y, residual}) == kG)
      tiledGroupForwardKernel<T, kG>
          <<<blocksFor(total / kG), kThreads, 0, stream()>>>(
              x, residual, y, g, int(c), int(total / kG), coef);
    else
      withWindowSize(g, [&](auto size) {
        constexpr int K = decltype(size)::value;
        tiledFusedForwardKernel<T, K>
            <<<blocksFor(total), kThreads, 0, stream()>>>(
                x, residual, y, g, int(c), int(total), coef);
      });
  } else if (g.kh == 0) {
    withVectorWidth<T, true>(
        vectorWidth<T>(g.h * g.w, {x, y, residual}, true), [&](auto width) {
          constexpr int V = decltype(width)::value;
          fusedForwardVecKernel<T, V>
              <<<blocksFor(total / V), kThreads, 0, stream()>>>(
                  x, residual, y, g, c, total / V, coef);
        });
  } else {
    fusedForwardKernel<T><<<blocksFor(total), kThreads, 0, stream()>>>(
        x, residual, y, g, c, total, coef);
  }
}

//===----------------------------------------------------------------------===//
// NHWC: channels innermost
//===----------------------------------------------------------------------===//
//
// An NHWC tensor is a matrix of rows (n, h, w) by c channels. A thread takes
// V neighbouring channels of one row at a time (a 16-byte vector when c is
// a multiple of it and the buffers are aligned, else V = 1), or one channel
// of one tiled pooling window (withNhwcKernel). The
// per-channel reduction gives each block 32 neighbouring channels (32 / V
// channel lanes) and 8 V row lanes, which the block adds in a fixed order;
// in the sweeps neighbouring threads take neighbouring channel vectors.
// Per-element arithmetic is the NCHW kernels' (normalise, activate,
// FirstMax, bnGradInput), so only the order of the double sums differs.
// Pooling must tile the input (tiledFused's condition).

namespace {

constexpr int kNhwcChannels = 32; // channels per block of the reduction

// Partial sums over items (rows or pooling windows) of V neighbouring
// channels ch0 .. ch0 + V - 1: op(ch0, item, a, b) adds channel ch0 + h's
// terms to a[h] and b[h]. Item = blockIdx.x * rowLanes + rowLane, advancing
// by segments * rowLanes.
template <int V, class Op, class Fin>
__global__ void __launch_bounds__(kThreads)
    nhwcPartialsKernel(Op op, Fin fin, int64_t items, int64_t c, int segments,
                       double2 *partials, unsigned *counters) {
  constexpr int kLanes = kNhwcChannels / V, kRowLanes = kThreads / kLanes;
  const int t = threadIdx.x, lane = t % kLanes, rowLane = t / kLanes;
  const int64_t ch0 = int64_t(blockIdx.y) * kNhwcChannels + lane * V;
  double a[V], b[V];
#pragma unroll
  for (int h = 0; h < V; ++h)
    a[h] = b[h] = 0.0;
  if (ch0 < c) // c is a multiple of V: the whole vector is in range
    for (int64_t r = int64_t(blockIdx.x) * kRowLanes + rowLane; r < items;
         r += int64_t(segments) * kRowLanes)
      op(ch0, r, a, b);
  __shared__ double sa[V][kThreads], sb[V][kThreads];
#pragma unroll
  for (int h = 0; h < V; ++h) {
    sa[h][t] = a[h];
    sb[h][t] = b[h];
  }
  __syncthreads();
  for (int half = kRowLanes / 2; half > 0; half >>= 1) {
    if (rowLane < half)
#pragma unroll
      for (int h = 0; h < V; ++h) {
        sa[h][t] += sa[h][t + half * kLanes];
        sb[h][t] += sb[h][t + half * kLanes];
      }
    __syncthreads();
  }
  if (rowLane == 0 && ch0 < c)
#pragma unroll
    for (int h = 0; h < V; ++h)
      partials[(ch0 + h) * segments + blockIdx.x] =
          make_double2(sa[h][t], sb[h][t]);
  if (counters) { // uniform over the block
    const int64_t first = int64_t(blockIdx.y) * kNhwcChannels;
    finishInLastBlock(fin, partials, segments, first,
                      int(c - first < kNhwcChannels ? c - first : kNhwcChannels),
                      counters + blockIdx.y);
  }
}

// prepare() for nhwcReduce<V> over n * perImage items per channel: a block
// covers 32 channels, so few channels need many segments to fill the GPU
// (ResNet9's first layer: 64 channels, 2 channel blocks); aim for 1024
// blocks, at least 8 items per thread.
template <int V>
bool prepareNhwc(const char *fn, const fcc_bn_act_desc *d, int64_t perImage,
                 Layout &l, Scratch &s) {
  const int64_t channelBlocks = (d->c + kNhwcChannels - 1) / kNhwcChannels;
  return prepare(fn, d->n, d->c, perImage, l, s,
                 int64_t(kThreads / (kNhwcChannels / V)) * kMinItemsPerThread,
                 std::max<int64_t>(kMaxSegments, 1024 / channelBlocks));
}

template <int V, class Op, class Fin>
bool nhwcReduce(const char *fn, const Layout &l, const Scratch &s, Op op,
                Fin fin) {
  const dim3 grid(unsigned(s.segments),
                  unsigned((l.c + kNhwcChannels - 1) / kNhwcChannels));
  unsigned *counters = separateFinish() ? nullptr : reduceCounters();
  nhwcPartialsKernel<V><<<grid, kThreads, 0, stream()>>>(
      op, fin, int64_t(l.count), l.c, s.segments, s.partials, counters);
  return finishReduction(fn, l, s, fin, counters);
}

// First element of tiled window `win` (n, oh, ow) of channel ch.
__device__ __forceinline__ int64_t nhwcWindowBase(const FusedGeom &g,
                                                  int64_t c, int64_t win,
                                                  int64_t ch) {
  const int64_t outPlane = g.oh * g.ow;
  const int64_t n = divIndex(win, outPlane), q = win - n * outPlane;
  const int64_t oh = divIndex(q, g.ow), ow = q - oh * g.ow;
  return ((n * g.h + oh * g.kh) * g.w + ow * g.kw) * c + ch;
}

// Sums of x - K, (x - K)^2 over rows, K = x[ch] (row 0: ShiftedSumsOp's
// first element of the channel).
template <class T, int V> struct NhwcShiftedSumsOp {
  const T *x;
  int64_t c;
  __device__ void operator()(int64_t ch0, int64_t r, double (&a)[V],
                             double (&b)[V]) const {
    const Vec<T, V> v = loadVec<V>(x + r * c + ch0, 0),
                    k = loadVec<V>(x + ch0, 0);
#pragma unroll
    for (int h = 0; h < V; ++h) {
      const double t = double(toFloat(v.v[h])) - double(toFloat(k.v[h]));
      a[h] += t;
      b[h] += t * t;
    }
  }
};

// FusedGradVecOp per row.
template <class T, int V> struct NhwcGradOp {
  const T *x, *dy;
  FusedGeom g;
  int64_t c;
  const ChannelCoef *coef;
  __device__ void operator()(int64_t ch0, int64_t r, double (&a)[V],
                             double (&b)[V]) const {
    const Vec<T, V> xs = loadVec<V>(x + r * c + ch0, 0),
                    gs = loadVec<V>(dy + r * c + ch0, 0);
#pragma unroll
    for (int h = 0; h < V; ++h) {
      const ChannelCoef k = coef[ch0 + h];
      const float xv = toFloat(xs.v[h]);
      const double2 t = gradTerms(
          k, xv,
          activationGrad(g.act, normalise(k, xv), toFloat(gs.v[h]), g.alpha));
      a[h] += t.x;
      b[h] += t.y;
    }
  }
};

// TiledFusedGradOp per window, one channel (NhwcReduce with V = 1).
template <class T, int K> struct NhwcTiledGradOp {
  const T *x, *dy;
  FusedGeom g;
  int64_t c;
  const ChannelCoef *coef;
  __device__ void operator()(int64_t ch, int64_t win, double (&a)[1],
                             double (&b)[1]) const {
    const ChannelCoef &k = coef[ch];
    tiledFusedWindow<K>(x, dy, g, k, nhwcWindowBase(g, c, win, ch), g.w * c,
                        c, win * c + ch, [&](int64_t, float xv, float dz) {
                          const double2 t = gradTerms(k, xv, dz);
                          a[0] += t.x;
                          b[0] += t.y;
                        });
  }
};

template <class T, int V>
__global__ void nhwcForwardKernel(const T *x, const T *residual, T *y,
                                  FusedGeom g, int64_t c, int64_t vectors,
                                  const ChannelCoef *coef) {
  FCC_GRID_LOOP(q, vectors) {
    const int64_t ch0 = modIndex(q * V, c);
    const Vec<T, V> in = loadVec<V>(x, q);
    storeForward<V>(y, residual, q, [&](int h) {
      return activate(g.act, normalise(coef[ch0 + h], toFloat(in.v[h])),
                      g.alpha);
    });
  }
}

// One thread per output element (window, channel).
template <class T, int K>
__global__ void nhwcTiledForwardKernel(const T *x, const T *residual, T *y,
                                       FusedGeom g, int64_t c, int64_t total,
                                       const ChannelCoef *coef) {
  FCC_GRID_LOOP(o, total) {
    const int64_t win = divIndex(o, c), ch = o - win * c;
    storeForward<1>(y, residual, o, [&](int) {
      return tiledPooled<K>(x, nhwcWindowBase(g, c, win, ch), g.w * c, c, g,
                            coef[ch]);
    });
  }
}

template <class T, int V>
__global__ void nhwcBackwardKernel(const T *x, const T *dy, T *dx,
                                   FusedGeom g, int64_t c, int64_t vectors,
                                   const ChannelCoef *coef) {
  FCC_GRID_LOOP(q, vectors) {
    const int64_t ch0 = modIndex(q * V, c);
    const Vec<T, V> xs = loadVec<V>(x, q), gs = loadVec<V>(dy, q);
    Vec<T, V> out;
#pragma unroll
    for (int h = 0; h < V; ++h) {
      const ChannelCoef k = coef[ch0 + h];
      const float xv = toFloat(xs.v[h]);
      const float dz = activationGrad(g.act, normalise(k, xv),
                                      toFloat(gs.v[h]), g.alpha);
      out.v[h] = fromFloat<T>(bnGradInput(k, xv, dz));
    }
    storeVec<V>(dx, q, out);
  }
}

template <class T, int K>
__global__ void nhwcTiledBackwardKernel(const T *x, const T *dy, T *dx,
                                        FusedGeom g, int64_t c,
                                        int64_t total, const ChannelCoef *coef) {
  FCC_GRID_LOOP(o, total) {
    const int64_t win = divIndex(o, c), ch = o - win * c;
    const ChannelCoef &k = coef[ch];
    tiledFusedWindow<K>(x, dy, g, k, nhwcWindowBase(g, c, win, ch), g.w * c,
                        c, o, [&](int64_t e, float xv, float dz) {
                          dx[e] = fromFloat<T>(bnGradInput(k, xv, dz));
                        });
  }
}

// NHWC pooling must tile: every other geometry is refused.
bool nhwcGeom(const fcc_bn_act_desc *d, const FusedGeom &g, const char *fn) {
  if (g.kh == 0 || poolTiles(g))
    return true;
  setAsyncError(format("%s: NHWC layout: the %lldx%lld pool with strides "
                       "%lldx%lld does not tile the %lldx%lld input (NHWC "
                       "takes pools whose stride is the window and whose "
                       "windows cover the input)",
                       fn, (long long)g.kh, (long long)g.kw, (long long)g.sh,
                       (long long)g.sw, (long long)d->h, (long long)d->w));
  return false;
}

// Calls f(std::integral_constant<int, K>(), std::integral_constant<int,
// V>()): without pooling K = -1 and V the channel vector width v
// (vectorWidth over the channels); with pooling the window size of
// withWindowSize and one channel per thread (V = 1: with channel vectors
// the window kernels, taps x channels x activation all unrolled, doubled
// the runtime's code size, and no trained model needs them: resnet9-bot
// pools before its BatchNorms, resnet9 runs NCHW by default).
template <class T, class F> void withNhwcKernel(const FusedGeom &g, int v, F f) {
  if (g.kh == 0)
    withVectorWidth<T, false>(
        v, [&](auto width) { f(std::integral_constant<int, -1>(), width); });
  else
    withWindowSize(g, [&](auto size) {
      f(size, std::integral_constant<int, 1>());
    });
}

template <class T, int K, int V>
void nhwcForward(const T *x, const T *residual, T *y, const FusedGeom &g,
                 int64_t c, int64_t total, const ChannelCoef *coef) {
  if constexpr (K < 0)
    nhwcForwardKernel<T, V><<<blocksFor(total / V), kThreads, 0, stream()>>>(
        x, residual, y, g, c, total / V, coef);
  else
    nhwcTiledForwardKernel<T, K>
        <<<blocksFor(total), kThreads, 0, stream()>>>(x, residual, y, g, c,
                                                      total, coef);
}

void nhwcTrainForward(const fcc_bn_act_desc *d, const FusedGeom &g,
                      const void *x, const float *scale, const float *shift,
                      const void *residual, void *y, float *batchMean,
                      float *batchVar, int dtype, const char *fn) {
  if (!nhwcGeom(d, g, fn))
    return;
  const double count = double(d->n * d->h * d->w);
  const int64_t total = d->n * d->c * g.oh * g.ow;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    const T *xt = static_cast<const T *>(x);
    const T *rt = static_cast<const T *>(residual);
    T *yt = static_cast<T *>(y);
    withNhwcKernel<T>(g, vectorWidth<T>(d->c, {xt, rt, yt}, false), [&](auto size,
                                                                 auto width) {
      constexpr int K = decltype(size)::value, V = decltype(width)::value;
      Layout l;
      Scratch s;
      if (!prepareNhwc<V>(fn, d, d->h * d->w, l, s) ||
          !nhwcReduce<V>(fn, l, s, NhwcShiftedSumsOp<T, V>{xt, d->c},
                         ShiftedFin<T>{xt, 1, count, d->eps, scale, shift,
                                       batchMean, batchVar, s.coef}))
        return;
      nhwcForward<T, K, V>(xt, rt, yt, g, d->c, total, s.coef);
      checkLaunch(fn);
    });
  });
}

void nhwcInference(const fcc_bn_act_desc *d, const FusedGeom &g,
                   const void *x, const float *scale, const float *shift,
                   const float *mean, const float *var, const void *residual,
                   void *y, int dtype, const char *fn) {
  Layout l;
  Scratch s;
  if (!nhwcGeom(d, g, fn) || !prepareNhwc<1>(fn, d, d->h * d->w, l, s))
    return;
  coefKernel<<<blocksFor(d->c), kThreads, 0, stream()>>>(
      scale, shift, mean, var, d->eps, false, d->c, s.coef);
  if (!checkLaunch(fn))
    return;
  const int64_t total = d->n * d->c * g.oh * g.ow;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    const T *xt = static_cast<const T *>(x);
    const T *rt = static_cast<const T *>(residual);
    T *yt = static_cast<T *>(y);
    withNhwcKernel<T>(g, vectorWidth<T>(d->c, {xt, rt, yt}, false), [&](auto size,
                                                                 auto width) {
      constexpr int K = decltype(size)::value, V = decltype(width)::value;
      nhwcForward<T, K, V>(xt, rt, yt, g, d->c, total, s.coef);
    });
  });
  checkLaunch(fn);
}

void nhwcBackward(const fcc_bn_act_desc *d, const FusedGeom &g, const void *x,
                  const void *dy, const float *scale, const float *shift,
                  const float *batchMean, const float *batchVar, void *dx,
                  float *dscale, float *dshift, int dtype, const char *fn) {
  if (!nhwcGeom(d, g, fn))
    return;
  const double count = double(d->n * d->h * d->w);
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    const T *xt = static_cast<const T *>(x);
    const T *dyt = static_cast<const T *>(dy);
    T *dxt = static_cast<T *>(dx);
    withNhwcKernel<T>(g, vectorWidth<T>(d->c, {xt, dyt, dxt}, false), [&](auto size,
                                                                   auto width) {
      constexpr int K = decltype(size)::value, V = decltype(width)::value;
      Layout l;
      Scratch s;
      if (!prepareNhwc<V>(fn, d, g.kh ? g.oh * g.ow : d->h * d->w, l, s))
        return;
      coefKernel<<<blocksFor(d->c), kThreads, 0, stream()>>>(
          scale, shift, batchMean, batchVar, d->eps, true, d->c, s.coef);
      if (!checkLaunch(fn))
        return;
      const GradFin fin{count, scale, dscale, dshift, s.coef};
      if constexpr (K < 0) {
        if (!nhwcReduce<V>(fn, l, s,
                           NhwcGradOp<T, V>{xt, dyt, g, d->c, s.coef}, fin))
          return;
        const int64_t vectors = d->n * d->c * d->h * d->w / V;
        nhwcBackwardKernel<T, V><<<blocksFor(vectors), kThreads, 0, stream()>>>(
            xt, dyt, dxt, g, d->c, vectors, s.coef);
      } else {
        if (!nhwcReduce<V>(fn, l, s,
                           NhwcTiledGradOp<T, K>{xt, dyt, g, d->c, s.coef},
                           fin))
          return;
        const int64_t windows = d->n * d->c * g.oh * g.ow;
        nhwcTiledBackwardKernel<T, K>
            <<<blocksFor(windows), kThreads, 0, stream()>>>(
                xt, dyt, dxt, g, d->c, windows, s.coef);
      }
      checkLaunch(fn);
    });
  });
}

} // namespace

//===----------------------------------------------------------------------===//
// C API: fused BatchNorm + activation (+ pool) (+ residual)
//===----------------------------------------------------------------------===//

extern "C" void fcc_cuda_bn_act_train_forward(const fcc_bn_act_desc *d,
                                              const void *x, const float *scale,
                                              const float *shift,
                                              const void *residual, void *y,
                                              float *batch_mean,
                                              float *batch_var, int dtype) {
  const char *fn = "fcc_cuda_bn_act_train_forward";
  FusedGeom g;
  Layout l;
  Scratch s;
  if (!ready(fn) || !fusedGeom(d, g, fn))
    return;
  if (d->layout == FCC_LAYOUT_NHWC)
    return nhwcTrainForward(d, g, x, scale, shift, residual, y, batch_mean,
                            batch_var, dtype, fn);
  const int64_t hw = d->h * d->w;
  const double count = double(d->n * hw);
  const int64_t total = d->n * d->c * g.oh * g.ow;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    const T *xt = static_cast<const T *>(x);
    bool ok = false;
    withVectorWidth<T, false>(vectorWidth<T>(hw, {xt}, false), [&](auto width) {
      constexpr int V = decltype(width)::value;
      ok = prepare(fn, d->n, d->c, hw / V, l, s) &&
           channelReduce(fn, l, s, ShiftedSumsOp<T, V>{xt, hw},
                         ShiftedFin<T>{xt, hw, count, d->eps, scale, shift,
                                       batch_mean, batch_var, s.coef});
    });
    if (!ok)
      return;
    launchFusedForward<T>(xt, static_cast<const T *>(residual),
                          static_cast<T *>(y), g, d->c, total, s.coef);
    checkLaunch(fn);
  });
}

extern "C" void fcc_cuda_bn_act_inference(const fcc_bn_act_desc *d,
                                          const void *x, const float *scale,
                                          const float *shift, const float *mean,
                                          const float *var,
                                          const void *residual, void *y,
                                          int dtype) {
  const char *fn = "fcc_cuda_bn_act_inference";
  FusedGeom g;
  Layout l;
  Scratch s;
  if (!ready(fn) || !fusedGeom(d, g, fn))
    return;
  if (d->layout == FCC_LAYOUT_NHWC)
    return nhwcInference(d, g, x, scale, shift, mean, var, residual, y, dtype,
                         fn);
  if (!prepare(fn, d->n, d->c, d->h * d->w, l, s))
    return;
  coefKernel<<<blocksFor(d->c), kThreads, 0, stream()>>>(
      scale, shift, mean, var, d->eps, false, d->c, s.coef);
  if (!checkLaunch(fn))
    return;
  const int64_t total = d->n * d->c * g.oh * g.ow;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    launchFusedForward<T>(static_cast<const T *>(x),
                          static_cast<const T *>(residual),
                          static_cast<T *>(y), g, d->c, total, s.coef);
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_bn_act_backward(const fcc_bn_act_desc *d,
                                         const void *x, const void *dy,
                                         const float *scale, const float *shift,
                                         const float *batch_mean,
                                         const float *batch_var, void *dx,
                                         float *dscale, float *dshift,
                                         int dtype) {
  const char *fn = "fcc_cuda_bn_act_backward";
  FusedGeom g;
  Layout l;
  Scratch s;
  if (!ready(fn) || !fusedGeom(d, g, fn))
    return;
  if (d->layout == FCC_LAYOUT_NHWC)
    return nhwcBackward(d, g, x, dy, scale, shift, batch_mean, batch_var, dx,
                        dscale, dshift, dtype, fn);
  // The reductions run over a Layout of the items a thread takes: vectors
  // of a plane, tiled windows or groups of them, or (per-element kernels)
  // elements. start(items) carves the scratch for that many items per
  // plane and computes the channel coefficients.
  const bool tiled = tiledFused(g, d->n * d->c);
  auto start = [&](int64_t items) {
    if (!prepare(fn, d->n, d->c, items, l, s))
      return false;
    coefKernel<<<blocksFor(d->c), kThreads, 0, stream()>>>(
        scale, shift, batch_mean, batch_var, d->eps, true, d->c, s.coef);
    return checkLaunch(fn);
  };
  const double count = double(d->n * d->h * d->w);
  const int64_t hw = d->h * d->w, total = d->n * d->c * hw;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    const T *xt = static_cast<const T *>(x);
    const T *dyt = static_cast<const T *>(dy);
    // After start(): s.coef is set there.
    auto fin = [&] { return GradFin{count, scale, dscale, dshift, s.coef}; };
    T *dxt = static_cast<T *>(dx);
    if (tiled) {
      const int64_t windows = d->n * d->c * g.oh * g.ow;
      if (const int G = windowGroupFor<T>(g.kh, g.kw, g.ow, {xt, dxt}, {dyt}); G > 1) {
        constexpr int kG = kVec16<T> / 2;
        if (!start(g.oh * g.ow / G) ||
            !channelReduce(fn, l, s, TiledGroupGradOp<T, kG>{xt, dyt, g, s.coef},
                           fin()))
          return;
        tiledGroupBackwardKernel<T, kG>
            <<<blocksFor(windows / G), kThreads, 0, stream()>>>(
                xt, dyt, dxt, g, int(d->c), int(windows / G), s.coef);
        checkLaunch(fn);
        return;
      }
      withWindowSize(g, [&](auto size) {
        constexpr int K = decltype(size)::value;
        if (!start(g.oh * g.ow) ||
            !channelReduce(fn, l, s,
                           TiledFusedGradOp<T, K>{xt, dyt, g, s.coef}, fin()))
          return;
        tiledFusedBackwardKernel<T, K>
            <<<blocksFor(windows), kThreads, 0, stream()>>>(
                xt, dyt, dxt, g, int(d->c), int(windows), s.coef);
        checkLaunch(fn);
      });
      return;
    }
    if (g.kh != 0) { // pooling that does not tile: per element
      if (!start(hw) ||
          !channelReduce(fn, l, s, FusedGradOp<T>{xt, dyt, g, s.coef}, fin()))
        return;
      fusedBackwardKernel<T><<<blocksFor(total), kThreads, 0, stream()>>>(
          xt, dyt, dxt, g, d->c, total, s.coef);
      checkLaunch(fn);
      return;
    }
    // The reduction reads x and dy (16-byte vectors or elements), the sweep
    // also writes dx (16-byte vectors, pairs or elements).
    bool ok = false;
    withVectorWidth<T, false>(vectorWidth<T>(hw, {xt, dyt}, false), [&](auto width) {
      constexpr int V = decltype(width)::value;
      ok = start(hw / V) &&
           channelReduce(fn, l, s, FusedGradVecOp<T, V>{xt, dyt, g, s.coef},
                         fin());
    });
    if (!ok)
      return;
    withVectorWidth<T, true>(vectorWidth<T>(hw, {xt, dyt, dxt}, true), [&](auto width) {
      constexpr int V = decltype(width)::value;
      fusedBackwardVecKernel<T, V>
          <<<blocksFor(total / V), kThreads, 0, stream()>>>(
              xt, dyt, dxt, g, d->c, total / V, s.coef);
    });
    checkLaunch(fn);
  });
}

extern "C" void fcc_cuda_fold_bn(const void *w, const void *b,
                                 const float *scale, const float *shift,
                                 const float *mean, const float *var, float eps,
                                 int64_t k, int64_t per_k, void *w_out,
                                 void *b_out, int dtype) {
  const char *fn = "fcc_cuda_fold_bn";
  if (k <= 0 || per_k < 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    foldBnKernel<T><<<blocksFor(std::max(k * per_k, k)), kThreads, 0,
                      stream()>>>(static_cast<const T *>(w),
                                  static_cast<const T *>(b), scale, shift, mean,
                                  var, eps, k, per_k, static_cast<T *>(w_out),
                                  static_cast<T *>(b_out));
  });
  checkLaunch(fn);
}

namespace fcc::cuda {

bool channelSum(const void *x, int64_t n, int64_t c, int64_t hw, void *out,
                int dtype, const char *fn) {
  Layout l;
  Scratch s;
  if (n <= 0 || c <= 0 || hw <= 0)
    return true;
  if (!prepare(fn, n, c, hw, l, s))
    return false;
  bool ok = false;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    ok = channelReduce(fn, l, s, SumOp<T>{static_cast<const T *>(x), hw},
                       StoreSumFin<T>{static_cast<T *>(out)});
  });
  return ok;
}

} // namespace fcc::cuda
