//===- elementwise.cu - Activations, broadcasting, pooling, softmax -------===//
//
// The kernels that map tensors to tensors without per-channel statistics:
// ReLU/CELU forward and backward, the affine map, numpy-broadcasting binary
// ops and their backward (reduce_sum_to), softmax, the horizontal flip,
// casts between storage types, dropout masks, max/average pooling forward
// and backward, and the bias additions of the GEMM and the convolution.
//
// Every kernel reproduces the arithmetic of its CPU counterpart
// (runtime/cpu/elementwise.cpp, pool.cpp, softmax.cpp, optim.cpp, half.cpp):
// the same float or double operations in the same order, on values loaded
// from the storage type and rounded back to it once per output. Reductions
// that the CPU does in double are done in double, in an order fixed by the
// shapes (never by atomics), so results are deterministic. Two kinds of
// difference remain: transcendental functions (expf, expm1f, exp) of the
// CUDA math library may differ from glibc's by an ulp, and long sums in
// double are added in a different (but fixed) order.
//
// Pooling backward is a gather, not a scatter: every input element visits
// the windows that contain it in the CPU's (row, column) order, recomputes
// each window's first maximum and adds the gradients routed to it. That
// reproduces the CPU's float accumulation order exactly and needs neither
// atomics nor an index tensor.
//
//===----------------------------------------------------------------------===//
#include "common.cuh"

#include "fcc/runtime/detail/broadcast.h"

#include <algorithm>
#include <vector>

using namespace fcc::cuda;

namespace {

//===----------------------------------------------------------------------===//
// Activations and other elementwise maps
//===----------------------------------------------------------------------===//

template <class T>
__global__ void reluForwardKernel(const T *x, T *y, int64_t count) {
  FCC_GRID_LOOP(i, count) {
    const float v = toFloat(x[i]);
    y[i] = fromFloat<T>(v > 0.0f ? v : 0.0f);
  }
}

template <class T>
__global__ void reluBackwardKernel(const T *x, const T *dy, T *dx,
                                   int64_t count) {
  FCC_GRID_LOOP(i, count) {
    const float g = toFloat(dy[i]);
    dx[i] = fromFloat<T>(toFloat(x[i]) > 0.0f ? g : 0.0f);
  }
}

template <class T>
__global__ void celuForwardKernel(const T *x, float alpha, T *y,
                                  int64_t count) {
  FCC_GRID_LOOP(i, count) {
    const float v = toFloat(x[i]);
    y[i] = fromFloat<T>(v > 0.0f ? v : alpha * expm1f(v / alpha));
  }
}

template <class T>
__global__ void celuBackwardKernel(const T *x, const T *dy, float alpha, T *dx,
                                   int64_t count) {
  FCC_GRID_LOOP(i, count) {
    const float v = toFloat(x[i]), g = toFloat(dy[i]);
    dx[i] = fromFloat<T>(v > 0.0f ? g : g * expf(v / alpha));
  }
}

template <class T>
__global__ void affineKernel(const T *x, float alpha, float beta, T *y,
                             int64_t count) {
  FCC_GRID_LOOP(i, count) { y[i] = fromFloat<T>(toFloat(x[i]) * alpha + beta); }
}

template <class T>
__global__ void mulKernel(const T *x, const T *mask, T *y, int64_t count) {
  FCC_GRID_LOOP(i, count) {
    y[i] = fromFloat<T>(toFloat(x[i]) * toFloat(mask[i]));
  }
}

template <class T>
__global__ void flipWKernel(const T *x, int64_t rows, int64_t w,
                            int64_t inner, T *y) {
  // Rows of w columns of `inner` neighbouring elements (NCHW: 1; NHWC: the
  // channels of a pixel).
  FCC_GRID_LOOP(i, rows * w * inner) {
    const int64_t q = divIndex(i, inner), e = i - q * inner;
    const int64_t r = divIndex(q, w), j = q - r * w;
    y[i] = x[(r * w + (w - 1 - j)) * inner + e];
  }
}

// NCHW <-> NHWC: y[n, p, ch] = x[n, ch, p] (toNhwc) or the inverse, one
// thread per output element.
template <class T>
__global__ void transposeLayoutKernel(const T *x, int64_t n, int64_t c,
                                      int64_t hw, bool toNhwc, T *y) {
  FCC_GRID_LOOP(o, n * c * hw) {
    if (toNhwc) {
      const int64_t q = divIndex(o, c), ch = o - q * c;
      const int64_t i = divIndex(q, hw), p = q - i * hw;
      y[o] = x[(i * c + ch) * hw + p];
    } else {
      const int64_t q = divIndex(o, hw), p = o - q * hw;
      const int64_t i = divIndex(q, c), ch = q - i * c;
      y[o] = x[(i * hw + p) * c + ch];
    }
  }
}

template <class From, class To>
__global__ void castKernel(const From *x, To *y, int64_t count) {
  FCC_GRID_LOOP(i, count) { y[i] = fromFloat<To>(toFloat(x[i])); }
}

// Four elements per thread (a 16-byte load of floats, an 8-byte store of
// halves, or the reverse).
template <class From, class To>
__device__ __forceinline__ void castVec4(const From *x, To *y, int64_t q) {
  const Vec<From, 4> in = loadVec<4>(x, q);
  Vec<To, 4> out;
#pragma unroll
  for (int h = 0; h < 4; ++h)
    out.v[h] = fromFloat<To>(toFloat(in.v[h]));
  storeVec<4>(y, q, out);
}

template <class From, class To>
__global__ void castVec4Kernel(const From *x, To *y, int64_t vectors) {
  FCC_GRID_LOOP(q, vectors) { castVec4(x, y, q); }
}

// fcc_cuda_cast_multi: item blockIdx.y, four elements per thread where the
// item's count and pointers allow it (the same for every block of the
// item), else one.
template <class From, class To>
__global__ void castMultiKernel(const fcc_cuda_cast_item *items, int vectors) {
  const fcc_cuda_cast_item it = items[blockIdx.y];
  const From *x = static_cast<const From *>(it.x);
  To *y = static_cast<To *>(it.y);
  if (vectors && it.count % 4 == 0 &&
      reinterpret_cast<uintptr_t>(x) % (4 * sizeof(From)) == 0 &&
      reinterpret_cast<uintptr_t>(y) % (4 * sizeof(To)) == 0) {
    FCC_GRID_LOOP(q, it.count / 4) { castVec4(x, y, q); }
    return;
  }
  FCC_GRID_LOOP(i, it.count) { y[i] = fromFloat<To>(toFloat(x[i])); }
}

// One thread per Philox block of four elements (random words 4b .. 4b+3).
template <class T>
__global__ void dropoutKernel(const uint64_t *seed, uint64_t streamId,
                              float ratio, float keep, T *mask,
                              int64_t count) {
  const uint64_t s = *seed;
  FCC_GRID_LOOP(b, (count + 3) / 4) {
    uint32_t bits[4];
    philoxBlock(s, streamId, uint64_t(b), bits);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * b + k;
      if (i < count)
        mask[i] = fromFloat<T>(uniformOf(bits[k]) >= ratio ? keep : 0.0f);
    }
  }
}

// y[i, j] = c[i or 0, j or 0] (* scale).
template <class T>
__global__ void broadcastMatrixKernel(const T *c, int64_t cRows, int64_t cCols,
                                      int64_t m, int64_t n, float scale,
                                      bool applyScale, T *y) {
  FCC_GRID_LOOP(e, m * n) {
    const int64_t i = e / n, j = e - i * n;
    const T v = c[(cRows == 1 ? 0 : i) * cCols + (cCols == 1 ? 0 : j)];
    y[e] = applyScale ? fromFloat<T>(toFloat(v) * scale) : v;
  }
}

// y[n, ch, :] += bias[ch] (the bias of a convolution).
template <class T>
__global__ void addChannelBiasKernel(T *y, const T *bias, int64_t c,
                                     int64_t hw, int64_t total) {
  FCC_GRID_LOOP(e, total) {
    const int64_t ch = modIndex(divIndex(e, hw), c);
    y[e] = fromFloat<T>(toFloat(y[e]) + toFloat(bias[ch]));
  }
}

//===----------------------------------------------------------------------===//
// Broadcasting
//===----------------------------------------------------------------------===//

// Simplified broadcast (as elementwise.cpp): dimensions of size 1 dropped,
// neighbours that broadcast alike merged; strides 0 where broadcast.
struct BroadcastDims {
  int rank = 0;
  int64_t size[FCC_MAX_RANK] = {};
  int64_t strideA[FCC_MAX_RANK] = {};
  int64_t strideB[FCC_MAX_RANK] = {};
};

// The shared simplification (detail/broadcast.h) into the fixed-size form a
// kernel takes by value; errors recorded as "<fn>: ...".
int simplifyBroadcast(const char *fn, const int64_t *aShape,
                      const int64_t *bShape, const int64_t *yShape, int rank,
                      BroadcastDims &out) {
  std::vector<fcc::runtime_detail::BroadcastDim> dims;
  std::string why =
      fcc::runtime_detail::simplifyBroadcast(aShape, bShape, yShape, rank, dims);
  if (!why.empty())
    return setError(FCC_ERR_INVALID, std::string(fn) + ": " + why);
  out = BroadcastDims();
  out.rank = int(dims.size());
  for (int i = 0; i < out.rank; ++i) {
    out.size[i] = dims[size_t(i)].size;
    out.strideA[i] = dims[size_t(i)].strideA;
    out.strideB[i] = dims[size_t(i)].strideB;
  }
  return FCC_OK;
}

template <class T>
__global__ void binaryKernel(int op, const T *a, const T *b, T *y,
                             BroadcastDims d, int64_t total) {
  FCC_GRID_LOOP(e, total) {
    int64_t offA = 0, offB = 0;
    if (d.rank == 1) {
      offA = e * d.strideA[0];
      offB = e * d.strideB[0];
    } else {
      int64_t rest = e;
      for (int i = d.rank - 1; i >= 0; --i) {
        const int64_t idx = rest % d.size[i];
        rest /= d.size[i];
        offA += idx * d.strideA[i];
        offB += idx * d.strideB[i];
      }
    }
    const float u = toFloat(a[offA]), v = toFloat(b[offB]);
    float r;
    switch (op) {
    case FCC_BINARY_ADD:
      r = u + v;
      break;
    case FCC_BINARY_SUB:
      r = u - v;
      break;
    case FCC_BINARY_MUL:
      r = u * v;
      break;
    default:
      r = u / v;
      break;
    }
    y[e] = fromFloat<T>(r);
  }
}

// binaryKernel for operands of y's shape (one dimension of stride 1 after
// simplification, e.g. a residual's gradient sum): V elements per thread.
template <class T, int V>
__global__ void binarySameShapeKernel(int op, const T *a, const T *b, T *y,
                                      int64_t vectors) {
  FCC_GRID_LOOP(q, vectors) {
    const Vec<T, V> u = loadVec<V>(a, q), v = loadVec<V>(b, q);
    Vec<T, V> r;
#pragma unroll
    for (int h = 0; h < V; ++h) {
      const float x = toFloat(u.v[h]), z = toFloat(v.v[h]);
      r.v[h] = fromFloat<T>(op == FCC_BINARY_ADD   ? x + z
                            : op == FCC_BINARY_SUB ? x - z
                            : op == FCC_BINARY_MUL ? x * z
                                                   : x / z);
    }
    storeVec<V>(y, q, r);
  }
}

// reduce_sum_to: the kept dimensions (y's, in order) and the reduced ones,
// each with its x stride.
struct ReduceDims {
  int kept = 0, reduced = 0;
  int64_t keptSize[FCC_MAX_RANK] = {}, keptStride[FCC_MAX_RANK] = {};
  int64_t redSize[FCC_MAX_RANK] = {}, redStride[FCC_MAX_RANK] = {};
  int64_t reduceCount = 1;
};

__device__ __forceinline__ int64_t keptOffset(const ReduceDims &d, int64_t e) {
  int64_t off = 0;
  for (int i = d.kept - 1; i >= 0; --i) {
    off += (e % d.keptSize[i]) * d.keptStride[i];
    e /= d.keptSize[i];
  }
  return off;
}

// One thread per y element; the reduced elements in row-major order (the
// CPU's order) with an odometer instead of divisions.
template <class T>
__global__ void reduceSumThreadKernel(const T *x, ReduceDims d, int64_t yTotal,
                                      T *y) {
  FCC_GRID_LOOP(e, yTotal) {
    const T *base = x + keptOffset(d, e);
    int64_t idx[FCC_MAX_RANK] = {};
    int64_t off = 0;
    double sum = 0.0;
    for (int64_t r = 0; r < d.reduceCount; ++r) {
      sum += double(toFloat(base[off]));
      for (int i = d.reduced - 1; i >= 0; --i) {
        off += d.redStride[i];
        if (++idx[i] < d.redSize[i])
          break;
        off -= d.redStride[i] * d.redSize[i];
        idx[i] = 0;
      }
    }
    y[e] = fromFloat<T>(float(sum));
  }
}

// One block per y element, for long reductions: threads take the reduced
// elements round-robin, then a fixed-order tree sums the block.
template <class T>
__global__ void __launch_bounds__(kThreads)
    reduceSumBlockKernel(const T *x, ReduceDims d, int64_t yTotal, T *y) {
  for (int64_t e = blockIdx.x; e < yTotal; e += gridDim.x) {
    const T *base = x + keptOffset(d, e);
    double sum = 0.0, unused = 0.0;
    for (int64_t r = threadIdx.x; r < d.reduceCount; r += kThreads) {
      int64_t off = 0, rest = r;
      for (int i = d.reduced - 1; i >= 0; --i) {
        off += (rest % d.redSize[i]) * d.redStride[i];
        rest /= d.redSize[i];
      }
      sum += double(toFloat(base[off]));
    }
    blockSum2(sum, unused);
    if (threadIdx.x == 0)
      y[e] = fromFloat<T>(float(sum));
  }
}

//===----------------------------------------------------------------------===//
// Softmax
//===----------------------------------------------------------------------===//

// One thread per (outer, inner) column. The maximum starts from the first
// element for contiguous rows (std::max_element) and from -inf for strided
// ones (std::max), like softmax.cpp, so NaNs behave the same; exponentials
// in float, their sum in double.
template <class T>
__global__ void softmaxKernel(const T *x, int64_t outer, int64_t dim,
                              int64_t inner, T *y) {
  FCC_GRID_LOOP(col, outer * inner) {
    const int64_t o = col / inner, i = col - o * inner;
    const T *src = x + o * dim * inner + i;
    T *dst = y + o * dim * inner + i;
    float max = inner == 1 ? toFloat(src[0]) : -INFINITY;
    for (int64_t j = inner == 1 ? 1 : 0; j < dim; ++j) {
      const float v = toFloat(src[j * inner]);
      max = max < v ? v : max;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < dim; ++j)
      sum += double(expf(toFloat(src[j * inner]) - max));
    const float inv = float(1.0 / sum);
    for (int64_t j = 0; j < dim; ++j)
      dst[j * inner] = fromFloat<T>(expf(toFloat(src[j * inner]) - max) * inv);
  }
}

//===----------------------------------------------------------------------===//
// Pooling
//===----------------------------------------------------------------------===//

// Index in the plane of the first tap of window (oh, ow), in row-major
// window order, holding the window's maximum (the first NaN if any tap is
// NaN): pool.cpp's windowMax + firstMaxIndex in one pass. Only taps inside
// the input take part (padding never wins).
template <class T>
__device__ int64_t firstMaxIndex(const fcc_pool2d_desc &d, const T *plane,
                                 int64_t oh, int64_t ow) {
  const int64_t rs = oh * d.stride_h - d.pad_t, cs = ow * d.stride_w - d.pad_l;
  FirstMax scan;
  for (int64_t i = 0; i < d.kh; ++i) {
    const int64_t r = rs + i * d.dil_h;
    if (r < 0 || r >= d.h)
      continue;
    for (int64_t j = 0; j < d.kw; ++j) {
      const int64_t c = cs + j * d.dil_w;
      if (c >= 0 && c < d.w)
        scan.take(toFloat(plane[r * d.w + c]), r * d.w + c);
    }
  }
  return scan.index();
}

// Tiled pooling: windows that neither overlap nor leave gaps (no padding or
// dilation, stride = window, the input exactly covered), as in ResNet9's
// 2x2/2 and global pools. Then each input element lies in exactly one
// window and one thread per window does the whole window: the forward reads
// it once, the backward finds its first maximum once and writes every tap
// (the general backward gathers per input element, finding each window's
// maximum once per tap). Index math in 32 bits, hence the size limit
// (kMaxInt32GridElements).
bool poolTiles(const fcc_pool2d_desc &d) {
  return d.pad_t == 0 && d.pad_b == 0 && d.pad_l == 0 && d.pad_r == 0 &&
         d.dil_h == 1 && d.dil_w == 1 && d.stride_h == d.kh &&
         d.stride_w == d.kw && d.h == d.oh * d.kh && d.w == d.ow * d.kw;
}
bool tiledPool32(const fcc_pool2d_desc &d) {
  return poolTiles(d) && d.n * d.c * d.h * d.w <= kMaxInt32GridElements;
}

// The first tap of a tiled window holding its maximum (the first NaN if any
// tap is NaN; a window of -inf: its first tap): firstMaxIndex's rule. Tap
// (i, j) is src[i * rowStride + j * colStride] (NCHW: w and 1; NHWC: w * c
// and c).
template <class T>
__device__ __forceinline__ FirstMax tiledWindowMax(const T *src,
                                                   int64_t rowStride,
                                                   int64_t colStride, int kh,
                                                   int kw) {
  FirstMax scan;
  for (int i = 0; i < kh; ++i)
    for (int j = 0; j < kw; ++j)
      scan.take(toFloat(src[i * rowStride + j * colStride]), i * kw + j);
  return scan;
}

template <class T>
__global__ void maxPoolTiledForwardKernel(int planes, int oh, int ow, int kh,
                                          int kw, const T *x, T *y) {
  const int w = ow * kw, count = planes * oh * ow;
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < count;
       o += blockDim.x * gridDim.x) {
    const FirstMax scan =
        tiledWindowMax(x + tiledWindowBase(o, oh, ow, kh, kw), w, 1, kh, kw);
    y[o] = fromFloat<T>(scan.sawNaN() ? quietNaN() : scan.max);
  }
}

template <class T>
__global__ void maxPoolTiledBackwardKernel(int planes, int oh, int ow, int kh,
                                           int kw, const T *x, const T *dy,
                                           T *dx) {
  const int w = ow * kw, count = planes * oh * ow;
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < count;
       o += blockDim.x * gridDim.x) {
    const int64_t base = tiledWindowBase(o, oh, ow, kh, kw);
    const int64_t best = tiledWindowMax(x + base, w, 1, kh, kw).index();
    // 0 + dy as in the gathering kernel (a -0 gradient becomes +0).
    const T g = fromFloat<T>(0.0f + toFloat(dy[o]));
    const T zero = fromFloat<T>(0.0f);
    for (int i = 0; i < kh; ++i)
      for (int j = 0; j < kw; ++j)
        dx[base + i * w + j] = i * kw + j == best ? g : zero;
  }
}

// 2x2 tiled pooling with G neighbouring windows per thread (WindowGroup:
// two 16-byte row loads instead of four 2-byte ones per window).
template <class T, int G>
__device__ __forceinline__ FirstMax groupWindowMax(const WindowGroup<T, G> &in,
                                                   int i) {
  float xs[4];
  in.taps(i, xs);
  FirstMax scan;
#pragma unroll
  for (int t = 0; t < 4; ++t)
    scan.take(xs[t], t);
  return scan;
}

template <class T, int G>
__global__ void maxPoolGroupForwardKernel(int planes, int oh, int ow,
                                          const T *x, T *y) {
  const int owg = ow / G, count = planes * oh * owg;
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < count;
       o += blockDim.x * gridDim.x) {
    const WindowGroup<T, G> in(x, tiledWindowBase(o, oh, owg, 2, 2 * G),
                               2 * ow);
    Vec<T, G> out;
#pragma unroll
    for (int i = 0; i < G; ++i) {
      const FirstMax scan = groupWindowMax(in, i);
      out.v[i] = fromFloat<T>(scan.sawNaN() ? quietNaN() : scan.max);
    }
    storeVec<G>(y, o, out);
  }
}

template <class T, int G>
__global__ void maxPoolGroupBackwardKernel(int planes, int oh, int ow,
                                           const T *x, const T *dy, T *dx) {
  const int owg = ow / G, w = 2 * ow, count = planes * oh * owg;
  for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < count;
       o += blockDim.x * gridDim.x) {
    const int64_t base = tiledWindowBase(o, oh, owg, 2, 2 * G);
    const WindowGroup<T, G> in(x, base, w);
    const Vec<T, G> gy = loadVec<G>(dy, o);
    const T zero = fromFloat<T>(0.0f);
    Vec<T, 2 * G> d0, d1;
#pragma unroll
    for (int i = 0; i < G; ++i) {
      const int64_t best = groupWindowMax(in, i).index();
      // 0 + dy as in the gathering kernel (a -0 gradient becomes +0).
      const T g = fromFloat<T>(0.0f + toFloat(gy.v[i]));
      d0.v[2 * i] = best == 0 ? g : zero;
      d0.v[2 * i + 1] = best == 1 ? g : zero;
      d1.v[2 * i] = best == 2 ? g : zero;
      d1.v[2 * i + 1] = best == 3 ? g : zero;
    }
    storeVec<2 * G>(dx + base, 0, d0);
    storeVec<2 * G>(dx + base + w, 0, d1);
  }
}


// NHWC tiled pooling: one thread per V output elements (a window's V
// neighbouring channels, a 16-byte vector when the channels and buffers
// allow, else one), neighbouring threads on neighbouring channels; taps and
// their order as the NCHW tiled kernels'.
__device__ __forceinline__ int64_t nhwcPoolBase(const fcc_pool2d_desc &d,
                                                int64_t win, int64_t ch) {
  const int64_t outPlane = d.oh * d.ow;
  const int64_t n = divIndex(win, outPlane), q = win - n * outPlane;
  const int64_t oh = divIndex(q, d.ow), ow = q - oh * d.ow;
  return ((n * d.h + oh * d.kh) * d.w + ow * d.kw) * d.c + ch;
}

// tiledWindowMax of the V channels of an NHWC window.
template <int V, class T>
__device__ __forceinline__ void nhwcWindowMax(const T *x, int64_t base,
                                              const fcc_pool2d_desc &d,
                                              FirstMax (&scan)[V]) {
  for (int64_t i = 0; i < d.kh; ++i)
    for (int64_t j = 0; j < d.kw; ++j) {
      const Vec<T, V> v = loadVec<V>(x + base + (i * d.w + j) * d.c, 0);
#pragma unroll
      for (int h = 0; h < V; ++h)
        scan[h].take(toFloat(v.v[h]), i * d.kw + j);
    }
}

template <class T, int V>
__global__ void maxPoolNhwcForwardKernel(fcc_pool2d_desc d, const T *x,
                                         T *y) {
  FCC_GRID_LOOP(q, d.n * d.oh * d.ow * d.c / V) {
    const int64_t win = divIndex(q * V, d.c);
    FirstMax scan[V];
    nhwcWindowMax(x, nhwcPoolBase(d, win, q * V - win * d.c), d, scan);
    Vec<T, V> out;
#pragma unroll
    for (int h = 0; h < V; ++h)
      out.v[h] = fromFloat<T>(scan[h].sawNaN() ? quietNaN() : scan[h].max);
    storeVec<V>(y, q, out);
  }
}

template <class T, int V>
__global__ void maxPoolNhwcBackwardKernel(fcc_pool2d_desc d, const T *x,
                                          const T *dy, T *dx) {
  FCC_GRID_LOOP(q, d.n * d.oh * d.ow * d.c / V) {
    const int64_t win = divIndex(q * V, d.c);
    const int64_t base = nhwcPoolBase(d, win, q * V - win * d.c);
    FirstMax scan[V];
    nhwcWindowMax(x, base, d, scan);
    const Vec<T, V> gy = loadVec<V>(dy, q);
    const T zero = fromFloat<T>(0.0f);
    for (int64_t i = 0; i < d.kh; ++i)
      for (int64_t j = 0; j < d.kw; ++j) {
        Vec<T, V> out;
#pragma unroll
        for (int h = 0; h < V; ++h)
          // 0 + dy as in the gathering kernel (a -0 gradient becomes +0).
          out.v[h] = i * d.kw + j == scan[h].index()
                         ? fromFloat<T>(0.0f + toFloat(gy.v[h]))
                         : zero;
        // Indexed in vectors (base and c are multiples of V), so that nvcc
        // stores the vector at once (from a pointer at an element offset it
        // stored it element by element).
        storeVec<V>(dx, (base + (i * d.w + j) * d.c) / V, out);
      }
  }
}


template <class T>
__global__ void maxPoolForwardKernel(fcc_pool2d_desc d, const T *x, T *y) {
  FCC_GRID_LOOP(o, d.n * d.c * d.oh * d.ow) {
    const int64_t t = divIndex(o, d.ow), ow = o - t * d.ow, p = divIndex(t, d.oh),
                  oh = t - p * d.oh;
    const T *plane = x + p * d.h * d.w;
    const int64_t rs = oh * d.stride_h - d.pad_t, cs = ow * d.stride_w - d.pad_l;
    float m = -INFINITY;
    bool nan = false;
    for (int64_t i = 0; i < d.kh; ++i) {
      const int64_t r = rs + i * d.dil_h;
      if (r < 0 || r >= d.h)
        continue;
      for (int64_t j = 0; j < d.kw; ++j) {
        const int64_t c = cs + j * d.dil_w;
        if (c < 0 || c >= d.w)
          continue;
        const float v = toFloat(plane[r * d.w + c]);
        m = v > m ? v : m;
        nan |= isnan(v);
      }
    }
    y[o] = fromFloat<T>(nan ? quietNaN() : m);
  }
}

// Calls f(oh, ow) for every window that contains input (r, c), in the
// CPU's (oh, ow) order: the output index grows as the tap index falls.
template <class F>
__device__ __forceinline__ void forEachWindow(const fcc_pool2d_desc &d,
                                              int64_t r, int64_t c, F f) {
  for (int64_t i = d.kh - 1; i >= 0; --i) {
    const int64_t tr = r + d.pad_t - i * d.dil_h;
    if (tr < 0 || tr % d.stride_h != 0)
      continue;
    const int64_t oh = tr / d.stride_h;
    if (oh >= d.oh)
      continue;
    for (int64_t j = d.kw - 1; j >= 0; --j) {
      const int64_t tc = c + d.pad_l - j * d.dil_w;
      if (tc < 0 || tc % d.stride_w != 0)
        continue;
      const int64_t ow = tc / d.stride_w;
      if (ow >= d.ow)
        continue;
      f(oh, ow);
    }
  }
}

template <class T>
__global__ void maxPoolBackwardKernel(fcc_pool2d_desc d, const T *x,
                                      const T *dy, T *dx) {
  FCC_GRID_LOOP(e, d.n * d.c * d.h * d.w) {
    const int64_t t = divIndex(e, d.w), c = e - t * d.w, p = divIndex(t, d.h),
                  r = t - p * d.h;
    const T *plane = x + p * d.h * d.w;
    const T *grad = dy + p * d.oh * d.ow;
    const int64_t self = r * d.w + c;
    float g = 0.0f;
    forEachWindow(d, r, c, [&](int64_t oh, int64_t ow) {
      if (firstMaxIndex(d, plane, oh, ow) == self)
        g += toFloat(grad[oh * d.ow + ow]);
    });
    dx[e] = fromFloat<T>(g);
  }
}

// pool.cpp's avgDivisor: taps inside the padded input if count_include_pad,
// else taps inside the real input.
__device__ double avgDivisor(const fcc_pool2d_desc &d, int64_t oh,
                             int64_t ow) {
  int64_t realR = 0, padR = 0, realC = 0, padC = 0;
  for (int64_t i = 0; i < d.kh; ++i) {
    const int64_t r = oh * d.stride_h - d.pad_t + i * d.dil_h;
    realR += r >= 0 && r < d.h;
    padR += r >= -d.pad_t && r < d.h + d.pad_b;
  }
  for (int64_t j = 0; j < d.kw; ++j) {
    const int64_t c = ow * d.stride_w - d.pad_l + j * d.dil_w;
    realC += c >= 0 && c < d.w;
    padC += c >= -d.pad_l && c < d.w + d.pad_r;
  }
  return d.count_include_pad ? double(padR) * double(padC)
                             : double(realR) * double(realC);
}

template <class T>
__global__ void avgPoolForwardKernel(fcc_pool2d_desc d, const T *x, T *y) {
  FCC_GRID_LOOP(o, d.n * d.c * d.oh * d.ow) {
    const int64_t t = divIndex(o, d.ow), ow = o - t * d.ow, p = divIndex(t, d.oh),
                  oh = t - p * d.oh;
    const T *plane = x + p * d.h * d.w;
    const int64_t rs = oh * d.stride_h - d.pad_t, cs = ow * d.stride_w - d.pad_l;
    double sum = 0.0;
    for (int64_t i = 0; i < d.kh; ++i) {
      const int64_t r = rs + i * d.dil_h;
      if (r < 0 || r >= d.h)
        continue;
      for (int64_t j = 0; j < d.kw; ++j) {
        const int64_t c = cs + j * d.dil_w;
        if (c >= 0 && c < d.w)
          sum += double(toFloat(plane[r * d.w + c]));
      }
    }
    y[o] = fromFloat<T>(float(sum / avgDivisor(d, oh, ow)));
  }
}

template <class T>
__global__ void avgPoolBackwardKernel(fcc_pool2d_desc d, const T *dy, T *dx) {
  FCC_GRID_LOOP(e, d.n * d.c * d.h * d.w) {
    const int64_t t = divIndex(e, d.w), c = e - t * d.w, p = divIndex(t, d.h),
                  r = t - p * d.h;
    const T *grad = dy + p * d.oh * d.ow;
    float g = 0.0f;
    forEachWindow(d, r, c, [&](int64_t oh, int64_t ow) {
      g += float(double(toFloat(grad[oh * d.ow + ow])) /
                 avgDivisor(d, oh, ow));
    });
    dx[e] = fromFloat<T>(g);
  }
}

// The pooling descriptor with dilation 0 read as 1 ("unset", as
// fcc_pool2d_desc_finalize does), or false if it is not usable.
bool poolDesc(const fcc_pool2d_desc *in, fcc_pool2d_desc &d, const char *fn) {
  if (!in) {
    setAsyncError(format("%s: null descriptor", fn));
    return false;
  }
  d = *in;
  if (d.dil_h == 0)
    d.dil_h = 1;
  if (d.dil_w == 0)
    d.dil_w = 1;
  if (d.n <= 0 || d.c <= 0 || d.h <= 0 || d.w <= 0 || d.kh <= 0 || d.kw <= 0 ||
      d.stride_h <= 0 || d.stride_w <= 0 || d.dil_h < 0 || d.dil_w < 0 ||
      d.oh <= 0 || d.ow <= 0) {
    setAsyncError(format("%s: invalid descriptor (call "
                         "fcc_pool2d_desc_finalize first)",
                         fn));
    return false;
  }
  if (d.layout != FCC_LAYOUT_NCHW && d.layout != FCC_LAYOUT_NHWC) {
    setAsyncError(format("%s: unknown layout %d", fn, d.layout));
    return false;
  }
  return true;
}

// NHWC pooling: max pooling whose windows tile the input (no padding or
// dilation, stride = window, the input exactly covered); false (sticky
// error naming fn) for anything else.
bool nhwcPoolOk(const fcc_pool2d_desc &d, bool isMax, const char *fn) {
  if (isMax && poolTiles(d))
    return true;
  setAsyncError(format("%s: NHWC layout: only max pooling whose windows tile "
                       "the input (stride = window, no padding) is supported",
                       fn));
  return false;
}

} // namespace

//===----------------------------------------------------------------------===//
// C API
//===----------------------------------------------------------------------===//

extern "C" void fcc_cuda_relu_forward(const void *x, void *y, int64_t count,
                                      int dtype) {
  const char *fn = "fcc_cuda_relu_forward";
  if (count <= 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    reluForwardKernel<T><<<blocksFor(count), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), static_cast<T *>(y), count);
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_relu_backward(const void *x, const void *dy, void *dx,
                                       int64_t count, int dtype) {
  const char *fn = "fcc_cuda_relu_backward";
  if (count <= 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    reluBackwardKernel<T><<<blocksFor(count), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), static_cast<const T *>(dy),
        static_cast<T *>(dx), count);
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_celu_forward(const void *x, float alpha, void *y,
                                      int64_t count, int dtype) {
  const char *fn = "fcc_cuda_celu_forward";
  if (count <= 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    celuForwardKernel<T><<<blocksFor(count), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), alpha, static_cast<T *>(y), count);
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_celu_backward(const void *x, const void *dy,
                                       float alpha, void *dx, int64_t count,
                                       int dtype) {
  const char *fn = "fcc_cuda_celu_backward";
  if (count <= 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    celuBackwardKernel<T><<<blocksFor(count), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), static_cast<const T *>(dy), alpha,
        static_cast<T *>(dx), count);
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_affine(const void *x, float alpha, float beta,
                                void *y, int64_t count, int dtype) {
  const char *fn = "fcc_cuda_affine";
  if (count <= 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    affineKernel<T><<<blocksFor(count), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), alpha, beta, static_cast<T *>(y), count);
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_mul_elementwise(const void *x, const void *mask,
                                         void *y, int64_t count, int dtype) {
  const char *fn = "fcc_cuda_mul_elementwise";
  if (count <= 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    mulKernel<T><<<blocksFor(count), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), static_cast<const T *>(mask),
        static_cast<T *>(y), count);
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_flip_w(const void *x, int64_t n, int64_t c,
                                int64_t h, int64_t w, void *y, int dtype) {
  const char *fn = "fcc_cuda_flip_w";
  const int64_t rows = n * c * h;
  if (rows <= 0 || w <= 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    flipWKernel<T><<<blocksFor(rows * w), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), rows, w, int64_t(1), static_cast<T *>(y));
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_flip_w_nhwc(const void *x, int64_t n, int64_t c,
                                     int64_t h, int64_t w, void *y,
                                     int dtype) {
  const char *fn = "fcc_cuda_flip_w_nhwc";
  const int64_t rows = n * h;
  if (rows <= 0 || w <= 0 || c <= 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    flipWKernel<T><<<blocksFor(rows * w * c), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), rows, w, c, static_cast<T *>(y));
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_transpose_layout(const void *x, int64_t n, int64_t c,
                                          int64_t hw, int to, void *y,
                                          int dtype) {
  const char *fn = "fcc_cuda_transpose_layout";
  if (n <= 0 || c <= 0 || hw <= 0 || !ready(fn))
    return;
  if (to != FCC_LAYOUT_NCHW && to != FCC_LAYOUT_NHWC) {
    setAsyncError(format("%s: unknown layout %d", fn, to));
    return;
  }
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    transposeLayoutKernel<T><<<blocksFor(n * c * hw), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), n, c, hw, to == FCC_LAYOUT_NHWC,
        static_cast<T *>(y));
  });
  checkLaunch(fn);
}

namespace {
template <class From, class To>
void launchCastTo(const From *x, To *y, int64_t count) {
  if (vectorsEnabled() && count % 4 == 0 &&
      aligned({x}, 4 * sizeof(From)) && aligned({y}, 4 * sizeof(To)))
    castVec4Kernel<From, To>
        <<<blocksFor(count / 4), kThreads, 0, stream()>>>(x, y, count / 4);
  else
    castKernel<From, To>
        <<<blocksFor(count), kThreads, 0, stream()>>>(x, y, count);
}

template <class From>
void launchCast(const From *x, void *y, int to, int64_t count,
                const char *fn) {
  switch (to) {
  case FCC_DTYPE_F32:
    launchCastTo(x, static_cast<float *>(y), count);
    break;
  case FCC_DTYPE_F16:
    launchCastTo(x, static_cast<__half *>(y), count);
    break;
  case FCC_DTYPE_BF16:
    launchCastTo(x, static_cast<__nv_bfloat16 *>(y), count);
    break;
  default:
    badDtype(fn, to);
  }
}
} // namespace

extern "C" void fcc_cuda_cast(const void *x, int from, void *y, int to,
                              int64_t count) {
  const char *fn = "fcc_cuda_cast";
  if (count <= 0 || !ready(fn))
    return;
  if (dtypeSize(from) == 0 || dtypeSize(to) == 0) {
    badDtype(fn, dtypeSize(from) == 0 ? from : to);
    return;
  }
  if (from == to) {
    if (x != y)
      cudaCheckAsync(cudaMemcpyAsync(y, x, size_t(count * dtypeSize(from)),
                                     cudaMemcpyDeviceToDevice, stream()),
                     fn, "cudaMemcpyAsync");
    return;
  }
  FCC_CUDA_DISPATCH(from, fn, [&] {
    launchCast<T>(static_cast<const T *>(x), y, to, count, fn);
  });
  checkLaunch(fn);
}

namespace {
template <class From>
void launchCastMulti(const fcc_cuda_cast_item *items, dim3 grid, int to,
                     const char *fn) {
  const int vectors = vectorsEnabled() ? 1 : 0;
  switch (to) {
  case FCC_DTYPE_F32:
    castMultiKernel<From, float>
        <<<grid, kThreads, 0, stream()>>>(items, vectors);
    break;
  case FCC_DTYPE_F16:
    castMultiKernel<From, __half>
        <<<grid, kThreads, 0, stream()>>>(items, vectors);
    break;
  case FCC_DTYPE_BF16:
    castMultiKernel<From, __nv_bfloat16>
        <<<grid, kThreads, 0, stream()>>>(items, vectors);
    break;
  default:
    badDtype(fn, to);
  }
}
} // namespace

extern "C" void fcc_cuda_cast_multi(const fcc_cuda_cast_item *items, int num,
                                    int from, int to, int64_t max_count) {
  const char *fn = "fcc_cuda_cast_multi";
  dim3 grid;
  if (!multiTensorGrid(fn, num, max_count, grid))
    return;
  if (dtypeSize(from) == 0 || dtypeSize(to) == 0) {
    badDtype(fn, dtypeSize(from) == 0 ? from : to);
    return;
  }
  if (from == to) {
    setAsyncError(format("%s: the same type in and out (copies are not "
                         "batched)",
                         fn));
    return;
  }
  FCC_CUDA_DISPATCH(from, fn, [&] {
    launchCastMulti<T>(items, grid, to, fn);
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_dropout_mask(const uint64_t *seed, uint64_t stream_,
                                      float ratio, void *mask, int64_t count,
                                      int dtype) {
  const char *fn = "fcc_cuda_dropout_mask";
  if (count <= 0 || !ready(fn))
    return;
  if (dtypeSize(dtype) == 0) {
    badDtype(fn, dtype);
    return;
  }
  // ratio >= 1 drops everything (zero bits are 0 in every storage type);
  // ratio <= 0 keeps everything with a mask of ones (fcc_cpu_dropout_mask).
  if (ratio >= 1.0f) {
    cudaCheckAsync(cudaMemsetAsync(mask, 0, size_t(count * dtypeSize(dtype)),
                                   stream()),
                   fn, "cudaMemsetAsync");
    return;
  }
  const float keep = ratio > 0.0f ? 1.0f / (1.0f - ratio) : 1.0f;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    dropoutKernel<T><<<blocksFor((count + 3) / 4), kThreads, 0, stream()>>>(
        seed, stream_, ratio, keep, static_cast<T *>(mask), count);
  });
  checkLaunch(fn);
}

extern "C" int fcc_cuda_binary(int op, const void *a, const int64_t *a_shape,
                               const void *b, const int64_t *b_shape,
                               const int64_t *y_shape, int rank, void *y,
                               int dtype) {
  const char *fn = "fcc_cuda_binary";
  if (!initialised())
    return setError(FCC_ERR_INVALID,
                    format("%s: the CUDA runtime is not initialised", fn));
  if (op < FCC_BINARY_ADD || op > FCC_BINARY_DIV)
    return setError(FCC_ERR_INVALID, format("%s: unknown op %d", fn, op));
  if (dtypeSize(dtype) == 0)
    return setError(FCC_ERR_INVALID, format("%s: unknown dtype %d", fn, dtype));
  BroadcastDims dims;
  if (int rc = simplifyBroadcast(fn, a_shape, b_shape, y_shape, rank, dims))
    return rc;
  int64_t total = 1;
  for (int i = 0; i < rank; ++i)
    total *= y_shape[i];
  if (total == 0)
    return FCC_OK;
  clearTransientErrors();
  const bool sameShape =
      dims.rank == 1 && dims.strideA[0] == 1 && dims.strideB[0] == 1;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    constexpr int kV = kVec16<T>;
    const T *at = static_cast<const T *>(a), *bt = static_cast<const T *>(b);
    T *yt = static_cast<T *>(y);
    if (sameShape && vectorWidth<T>(total, {at, bt, yt}, false) == kV)
      binarySameShapeKernel<T, kV>
          <<<blocksFor(total / kV), kThreads, 0, stream()>>>(op, at, bt, yt,
                                                             total / kV);
    else
      binaryKernel<T><<<blocksFor(total), kThreads, 0, stream()>>>(
          op, at, bt, yt, dims, total);
  });
  return checkLaunch(fn) ? FCC_OK : FCC_ERR_BACKEND;
}

extern "C" int fcc_cuda_reduce_sum_to(const void *x, const int64_t *x_shape,
                                      const int64_t *y_shape, int rank,
                                      void *y, int dtype) {
  const char *fn = "fcc_cuda_reduce_sum_to";
  if (!initialised())
    return setError(FCC_ERR_INVALID,
                    format("%s: the CUDA runtime is not initialised", fn));
  if (dtypeSize(dtype) == 0)
    return setError(FCC_ERR_INVALID, format("%s: unknown dtype %d", fn, dtype));
  if (rank < 0 || rank > FCC_MAX_RANK)
    return setError(FCC_ERR_INVALID, format("%s: rank %d is outside [0, %d]",
                                            fn, rank, FCC_MAX_RANK));
  for (int i = 0; i < rank; ++i)
    if (y_shape[i] != 1 && y_shape[i] != x_shape[i])
      return setError(FCC_ERR_INVALID,
                      format("%s: dimension %d: target size %lld must be 1 or "
                             "the input size %lld",
                             fn, i, (long long)y_shape[i],
                             (long long)x_shape[i]));
  // As the CPU: a = x (never broadcast), b = y; strideB 0 marks a reduced
  // dimension, strideA is x's stride.
  BroadcastDims dims;
  if (int rc = simplifyBroadcast(fn, x_shape, y_shape, x_shape, rank, dims))
    return rc;
  int64_t xTotal = 1, yTotal = 1;
  for (int i = 0; i < rank; ++i) {
    xTotal *= x_shape[i];
    yTotal *= y_shape[i];
  }
  if (yTotal == 0)
    return FCC_OK;
  if (xTotal == 0) // Sums over nothing.
    return cudaCheck(cudaMemsetAsync(y, 0, size_t(yTotal * dtypeSize(dtype)),
                                     stream()),
                     fn, "cudaMemsetAsync");
  ReduceDims rd;
  for (int i = 0; i < dims.rank; ++i) {
    if (dims.strideB[i] != 0) {
      rd.keptSize[rd.kept] = dims.size[i];
      rd.keptStride[rd.kept++] = dims.strideA[i];
    } else {
      rd.redSize[rd.reduced] = dims.size[i];
      rd.redStride[rd.reduced++] = dims.strideA[i];
      rd.reduceCount *= dims.size[i];
    }
  }
  // A block per output once a sum is long enough to keep 256 threads busy;
  // a thread per output otherwise (many short sums, e.g. a bias gradient
  // of a linear layer).
  constexpr int64_t kBlockReduceMin = 2048;
  const bool perBlock = rd.reduceCount >= kBlockReduceMin;
  clearTransientErrors();
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    if (perBlock)
      reduceSumBlockKernel<T>
          <<<unsigned(std::min<int64_t>(yTotal, int64_t(1) << 20)), kThreads,
             0, stream()>>>(static_cast<const T *>(x), rd, yTotal,
                            static_cast<T *>(y));
    else
      reduceSumThreadKernel<T><<<blocksFor(yTotal), kThreads, 0, stream()>>>(
          static_cast<const T *>(x), rd, yTotal, static_cast<T *>(y));
  });
  return checkLaunch(fn) ? FCC_OK : FCC_ERR_BACKEND;
}

extern "C" void fcc_cuda_softmax(const void *x, int64_t outer, int64_t dim,
                                 int64_t inner, void *y, int dtype) {
  const char *fn = "fcc_cuda_softmax";
  if (outer <= 0 || dim <= 0 || inner <= 0 || !ready(fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    softmaxKernel<T><<<blocksFor(outer * inner), kThreads, 0, stream()>>>(
        static_cast<const T *>(x), outer, dim, inner, static_cast<T *>(y));
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_max_pool2d_forward(const fcc_pool2d_desc *desc,
                                            const void *x, void *y,
                                            int dtype) {
  const char *fn = "fcc_cuda_max_pool2d_forward";
  fcc_pool2d_desc d;
  if (!ready(fn) || !poolDesc(desc, d, fn))
    return;
  if (d.layout == FCC_LAYOUT_NHWC && !nhwcPoolOk(d, true, fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    const T *xt = static_cast<const T *>(x);
    T *yt = static_cast<T *>(y);
    const int64_t outputs = d.n * d.c * d.oh * d.ow;
    constexpr int kV = kVec16<T>, kG = kV / 2;
    if (d.layout == FCC_LAYOUT_NHWC) {
      if (vectorWidth<T>(d.c, {xt, yt}, false) == kV)
        maxPoolNhwcForwardKernel<T, kV>
            <<<blocksFor(outputs / kV), kThreads, 0, stream()>>>(d, xt, yt);
      else
        maxPoolNhwcForwardKernel<T, 1>
            <<<blocksFor(outputs), kThreads, 0, stream()>>>(d, xt, yt);
    } else if (tiledPool32(d) && windowGroupFor<T>(d.kh, d.kw, d.ow, {xt}, {yt}) == kG) {
      maxPoolGroupForwardKernel<T, kG>
          <<<blocksFor(outputs / kG), kThreads, 0, stream()>>>(
              int(d.n * d.c), int(d.oh), int(d.ow), xt, yt);
    } else if (tiledPool32(d)) {
      maxPoolTiledForwardKernel<T>
          <<<blocksFor(outputs), kThreads, 0, stream()>>>(
              int(d.n * d.c), int(d.oh), int(d.ow), int(d.kh), int(d.kw), xt,
              yt);
    } else {
      maxPoolForwardKernel<T>
          <<<blocksFor(outputs), kThreads, 0, stream()>>>(d, xt, yt);
    }
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_max_pool2d_backward(const fcc_pool2d_desc *desc,
                                             const void *x, const void *dy,
                                             void *dx, int dtype) {
  const char *fn = "fcc_cuda_max_pool2d_backward";
  fcc_pool2d_desc d;
  if (!ready(fn) || !poolDesc(desc, d, fn))
    return;
  if (d.layout == FCC_LAYOUT_NHWC && !nhwcPoolOk(d, true, fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    const T *xt = static_cast<const T *>(x);
    const T *dyt = static_cast<const T *>(dy);
    T *dxt = static_cast<T *>(dx);
    const int64_t outputs = d.n * d.c * d.oh * d.ow;
    constexpr int kV = kVec16<T>, kG = kV / 2;
    if (d.layout == FCC_LAYOUT_NHWC) {
      if (vectorWidth<T>(d.c, {xt, dyt, dxt}, false) == kV)
        maxPoolNhwcBackwardKernel<T, kV>
            <<<blocksFor(outputs / kV), kThreads, 0, stream()>>>(d, xt, dyt,
                                                                 dxt);
      else
        maxPoolNhwcBackwardKernel<T, 1>
            <<<blocksFor(outputs), kThreads, 0, stream()>>>(d, xt, dyt, dxt);
    } else if (tiledPool32(d) && windowGroupFor<T>(d.kh, d.kw, d.ow, {xt, dxt}, {dyt}) == kG) {
      maxPoolGroupBackwardKernel<T, kG>
          <<<blocksFor(outputs / kG), kThreads, 0, stream()>>>(
              int(d.n * d.c), int(d.oh), int(d.ow), xt, dyt, dxt);
    } else if (tiledPool32(d)) {
      maxPoolTiledBackwardKernel<T>
          <<<blocksFor(outputs), kThreads, 0, stream()>>>(
              int(d.n * d.c), int(d.oh), int(d.ow), int(d.kh), int(d.kw), xt,
              dyt, dxt);
    } else {
      maxPoolBackwardKernel<T>
          <<<blocksFor(d.n * d.c * d.h * d.w), kThreads, 0, stream()>>>(
              d, xt, dyt, dxt);
    }
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_avg_pool2d_forward(const fcc_pool2d_desc *desc,
                                            const void *x, void *y,
                                            int dtype) {
  const char *fn = "fcc_cuda_avg_pool2d_forward";
  fcc_pool2d_desc d;
  if (!ready(fn) || !poolDesc(desc, d, fn))
    return;
  if (d.layout == FCC_LAYOUT_NHWC && !nhwcPoolOk(d, false, fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    avgPoolForwardKernel<T>
        <<<blocksFor(d.n * d.c * d.oh * d.ow), kThreads, 0, stream()>>>(
            d, static_cast<const T *>(x), static_cast<T *>(y));
  });
  checkLaunch(fn);
}

extern "C" void fcc_cuda_avg_pool2d_backward(const fcc_pool2d_desc *desc,
                                             const void *dy, void *dx,
                                             int dtype) {
  const char *fn = "fcc_cuda_avg_pool2d_backward";
  fcc_pool2d_desc d;
  if (!ready(fn) || !poolDesc(desc, d, fn))
    return;
  if (d.layout == FCC_LAYOUT_NHWC && !nhwcPoolOk(d, false, fn))
    return;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    avgPoolBackwardKernel<T>
        <<<blocksFor(d.n * d.c * d.h * d.w), kThreads, 0, stream()>>>(
            d, static_cast<const T *>(dy), static_cast<T *>(dx));
  });
  checkLaunch(fn);
}

namespace fcc::cuda {

bool broadcastMatrix(const void *c, int64_t c_rows, int64_t c_cols, int64_t m,
                     int64_t n, float scale, bool apply_scale, void *y,
                     int dtype, const char *fn) {
  if (m * n <= 0)
    return true;
  clearTransientErrors();
  bool ok = true;
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    broadcastMatrixKernel<T><<<blocksFor(m * n), kThreads, 0, stream()>>>(
        static_cast<const T *>(c), c_rows, c_cols, m, n, scale, apply_scale,
        static_cast<T *>(y));
  });
  ok = checkLaunch(fn);
  return ok;
}

bool addChannelBias(void *y, const void *bias, int64_t n, int64_t c,
                    int64_t hw, int dtype, const char *fn) {
  const int64_t total = n * c * hw;
  if (total <= 0)
    return true;
  clearTransientErrors(); // e.g. left by cuDNN's convolution just before
  FCC_CUDA_DISPATCH(dtype, fn, [&] {
    addChannelBiasKernel<T><<<blocksFor(total), kThreads, 0, stream()>>>(
        static_cast<T *>(y), static_cast<const T *>(bias), c, hw, total);
  });
  return checkLaunch(fn);
}

} // namespace fcc::cuda
