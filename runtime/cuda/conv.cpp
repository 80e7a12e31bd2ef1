//===- conv.cpp - 2-D convolution through cuDNN ---------------------------===//
//
// A plan holds the cuDNN descriptors of one convolution shape and storage
// type (NCHW or NHWC tensors, KCRS filters, groups, dilation) and the
// algorithm of each direction: forward, backward data, backward filter.
//
// Algorithm selection, like TensorRT tactics: when a plan is created, each
// direction's algorithm is taken from the timing cache (internal.h) if this
// GPU and cuDNN version measured this shape and type before, and otherwise
// measured with cudnnFind*AlgorithmEx on temporary buffers and recorded in
// the cache. Among the measured algorithms (cuDNN sorts them by time) the
// fastest *deterministic* one that fits the search workspace is chosen, so
// that two runs with the same seed compute the same gradients (cuDNN's
// non-deterministic backward algorithms accumulate with atomics); only if
// none is deterministic the fastest of all. A cached choice is re-validated
// with cudnnGet*WorkspaceSize and re-measured if cuDNN no longer accepts it.
// (On an H200 the fastest algorithm of every ResNet9 shape was
// deterministic or within 2% of one.) Two environment variables serve
// experiments: FCC_CUDNN_LOG=1 prints every measured candidate, and
// FCC_CUDNN_EXACT=1 leaves out the FFT and Winograd algorithms (cached
// under their own keys): their fp32 filter gradients were 3.7e-3 from
// float64 on ResNet9's first step against 1.4e-3 without them.
//
// Numerics: fp32 plans use CUDNN_FMA_MATH, i.e. true fp32 arithmetic (the
// default math type lets cuDNN use TF32 tensor cores on Ampere and later,
// which would round inputs to 10 mantissa bits and break the parity with
// the CPU target). fp16/bf16 plans compute in fp32 (convolution compute
// type FLOAT) on tensor cores (CUDNN_TENSOR_OP_MATH during the search, then
// the math type cuDNN reports for the chosen algorithm).
//
// The bias is added by a small kernel in fp32 (addChannelBias,
// elementwise.cu; cudnnAddTensor does not take bf16 everywhere), and its
// gradient is a per-channel sum in double in a fixed order (channelSum,
// batchnorm.cu), like the CPU kernel and unlike
// cudnnConvolutionBackwardBias.
//
// Padding: cuDNN's convolution descriptor has one pad per dimension
// (symmetric). An asymmetric pair (pad_t, pad_b) is exact with the begin pad
// alone when the output size it gives is the same, since end padding that
// no window reaches changes nothing; other asymmetric pads are rejected
// with FCC_ERR_UNSUPPORTED.
//
// Layout: activations NCHW or NHWC (desc.layout). Filters are KCRS in fcc's
// buffers either way; an NHWC plan gives cuDNN KRSC filters (its
// tensor-core kernels want every operand channels-last) from buffers of its
// own: the forward and data-gradient calls first transpose w into one, the
// filter gradient is computed into another and transposed back into dw
// (fcc_cuda_transpose_layout; ResNet9's filters are 6.6 M values, a few
// microseconds). The bias add and bias gradient read NHWC as n * h * w
// planes of one element.
//
// The plans take all their workspace from the context's shared cuDNN
// workspace of the stream they run on (the side stream has its own, sized
// for the filter gradients that fcc-overlap-weight-grads puts there), which
// is grown when a plan is created (never at run time), so execution is
// capturable into a CUDA graph.
//
//===----------------------------------------------------------------------===//
#include "handles.h"

#include "fcc/runtime/window.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

using namespace fcc::cuda;

namespace {

enum Direction { kForward = 0, kBackwardData = 1, kBackwardFilter = 2 };
const char *const kDirectionNames[3] = {"fwd", "bwd_data", "bwd_filter"};

// The largest workspace an algorithm may use, offered to the search.
// Generous (the fastest algorithms for large CIFAR/ImageNet layers need
// tens to hundreds of MiB) but bounded, because the shared workspace grows
// to the largest chosen one. Halved until it can be allocated.
constexpr size_t kSearchWorkspaceBytes = size_t(512) << 20;

} // namespace

struct fcc_cuda_conv2d_plan {
  fcc_conv2d_desc desc{};
  int dtype = FCC_DTYPE_F32;
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  // One convolution descriptor per direction: each carries the math type
  // of its own algorithm.
  cudnnConvolutionDescriptor_t conv[3] = {nullptr, nullptr, nullptr};
  cudnnConvolutionFwdAlgo_t fwdAlgo{};
  cudnnConvolutionBwdDataAlgo_t bwdDataAlgo{};
  cudnnConvolutionBwdFilterAlgo_t bwdFilterAlgo{};
  size_t workspace[3] = {0, 0, 0};
  // NHWC plans: the filter as KRSC (forward, data gradient; main stream
  // only) and the filter gradient as KRSC, one buffer per stream
  // (krscGrad[onSideStream()]): a weight gradient may run on the side stream
  // while the main stream runs a data gradient or a weight gradient of the
  // same plan (two layers of one shape).
  void *krsc = nullptr, *krscGrad[2] = {nullptr, nullptr};

  bool nhwc() const { return desc.layout == FCC_LAYOUT_NHWC; }
  int64_t filterCount() const {
    return desc.k * (desc.c / desc.groups) * desc.r * desc.s;
  }
  // The output as the per-channel kernels (bias add and gradient) see it:
  // n planes of oh * ow elements per channel, or, NHWC, n * oh * ow planes
  // of one element.
  int64_t outputPlanes() const {
    return nhwc() ? desc.n * desc.oh * desc.ow : desc.n;
  }
  int64_t outputPlaneSize() const { return nhwc() ? 1 : desc.oh * desc.ow; }

  ~fcc_cuda_conv2d_plan() {
    for (void *b : {krsc, krscGrad[0], krscGrad[1]})
      if (b)
        cudaFree(b);
    if (x)
      cudnnDestroyTensorDescriptor(x);
    if (y)
      cudnnDestroyTensorDescriptor(y);
    if (w)
      cudnnDestroyFilterDescriptor(w);
    for (cudnnConvolutionDescriptor_t c : conv)
      if (c)
        cudnnDestroyConvolutionDescriptor(c);
  }
};

namespace {

// Records "<fn>: <what>: <cuDNN error string>" and returns FCC_ERR_BACKEND
// if s is an error.
int cudnnCheck(cudnnStatus_t s, const char *fn, const char *what) {
  if (s == CUDNN_STATUS_SUCCESS)
    return FCC_OK;
  return setError(FCC_ERR_BACKEND,
                  format("%s: %s: %s", fn, what, cudnnGetErrorString(s)));
}

cudnnDataType_t cudnnType(int dtype) {
  switch (dtype) {
  case FCC_DTYPE_F16:
    return CUDNN_DATA_HALF;
  case FCC_DTYPE_BF16:
    return CUDNN_DATA_BFLOAT16;
  default:
    return CUDNN_DATA_FLOAT;
  }
}

// Checks d as fcc_conv2d_desc_finalize does and fills oh/ow (the CUDA
// runtime does not link the CPU kernels, so the rules are re-applied here
// from window.h).
int finalizeDesc(const char *fn, fcc_conv2d_desc &d) {
  if (d.n <= 0 || d.c <= 0 || d.h <= 0 || d.w <= 0 || d.k <= 0 || d.r <= 0 ||
      d.s <= 0)
    return setError(FCC_ERR_INVALID,
                    format("%s: shapes must be positive, got n=%lld c=%lld "
                           "h=%lld w=%lld k=%lld r=%lld s=%lld",
                           fn, (long long)d.n, (long long)d.c, (long long)d.h,
                           (long long)d.w, (long long)d.k, (long long)d.r,
                           (long long)d.s));
  if (d.stride_h <= 0 || d.stride_w <= 0 || d.dil_h <= 0 || d.dil_w <= 0)
    return setError(FCC_ERR_INVALID,
                    format("%s: strides and dilations must be positive", fn));
  if (d.pad_t < 0 || d.pad_l < 0 || d.pad_b < 0 || d.pad_r < 0)
    return setError(FCC_ERR_INVALID, format("%s: pads must be non-negative", fn));
  if (d.layout != FCC_LAYOUT_NCHW && d.layout != FCC_LAYOUT_NHWC)
    return setError(FCC_ERR_INVALID,
                    format("%s: unknown layout %d", fn, d.layout));
  if (d.layout == FCC_LAYOUT_NHWC && d.groups != 1)
    return setError(FCC_ERR_UNSUPPORTED,
                    format("%s: NHWC layout: grouped convolutions (groups = "
                           "%lld) are NCHW only",
                           fn, (long long)d.groups));
  if (d.groups <= 0 || d.c % d.groups != 0 || d.k % d.groups != 0)
    return setError(FCC_ERR_INVALID,
                    format("%s: input channels (%lld) and output channels "
                           "(%lld) must be divisible by groups (%lld)",
                           fn, (long long)d.c, (long long)d.k,
                           (long long)d.groups));
  const int64_t oh = fcc_window_output_size_rule(d.h, d.r, d.stride_h, d.pad_t,
                                                 d.pad_b, d.dil_h, 0);
  const int64_t ow = fcc_window_output_size_rule(d.w, d.s, d.stride_w, d.pad_l,
                                                 d.pad_r, d.dil_w, 0);
  if (oh <= 0 || ow <= 0)
    return setError(FCC_ERR_INVALID,
                    format("%s: empty output: the dilated kernel does not fit "
                           "the padded input",
                           fn));
  if ((d.oh != 0 || d.ow != 0) && (d.oh != oh || d.ow != ow))
    return setError(FCC_ERR_INVALID,
                    format("%s: descriptor output size %lldx%lld does not "
                           "match the computed %lldx%lld",
                           fn, (long long)d.oh, (long long)d.ow,
                           (long long)oh, (long long)ow));
  d.oh = oh;
  d.ow = ow;
  // cuDNN's legacy descriptors take int.
  const int64_t dims[] = {d.n, d.c, d.h, d.w, d.k, d.r, d.s, d.oh, d.ow};
  for (int64_t v : dims)
    if (v > INT_MAX)
      return setError(FCC_ERR_UNSUPPORTED,
                      format("%s: dimension %lld exceeds cuDNN's int range", fn,
                             (long long)v));
  return FCC_OK;
}

// The symmetric pad cuDNN gets for one dimension (see the file comment), or
// -1 if the asymmetric pair cannot be expressed.
int64_t symmetricPad(int64_t in, int64_t kernel, int64_t stride, int64_t begin,
                     int64_t end, int64_t dil, int64_t out) {
  if (begin == end)
    return begin;
  return fcc_window_output_size_rule(in, kernel, stride, begin, begin, dil,
                                     0) == out
             ? begin
             : -1;
}

std::string shapeKey(const fcc_conv2d_desc &d, int64_t padH, int64_t padW,
                     int dtype) {
  return format("%s|n=%lld,c=%lld,h=%lld,w=%lld,k=%lld,r=%lld,s=%lld,"
                "stride=%lldx%lld,pad=%lldx%lld,dil=%lldx%lld,g=%lld%s",
                dtypeName(dtype), (long long)d.n, (long long)d.c,
                (long long)d.h, (long long)d.w, (long long)d.k, (long long)d.r,
                (long long)d.s, (long long)d.stride_h, (long long)d.stride_w,
                (long long)padH, (long long)padW, (long long)d.dil_h,
                (long long)d.dil_w, (long long)d.groups,
                d.layout == FCC_LAYOUT_NHWC ? ",nhwc" : "");
}

// Device buffers for the algorithm search, allocated at the first direction
// that is not in the cache and freed when the plan is created.
struct SearchBuffers {
  void *x = nullptr, *w = nullptr, *y = nullptr, *ws = nullptr;
  size_t wsBytes = 0;
  bool allocated = false;
  ~SearchBuffers() {
    for (void *p : {x, w, y, ws})
      if (p)
        cudaFree(p);
  }
  int allocate(const fcc_cuda_conv2d_plan &p, const char *fn) {
    if (allocated)
      return FCC_OK;
    allocated = true;
    const fcc_conv2d_desc &d = p.desc;
    const size_t e = size_t(dtypeSize(p.dtype));
    const size_t xBytes = size_t(d.n * d.c * d.h * d.w) * e;
    const size_t wBytes = size_t(d.k * (d.c / d.groups) * d.r * d.s) * e;
    const size_t yBytes = size_t(d.n * d.k * d.oh * d.ow) * e;
    if (int rc = cudaCheck(cudaMalloc(&x, xBytes), fn,
                           "allocating the search input"))
      return rc;
    if (int rc = cudaCheck(cudaMalloc(&w, wBytes), fn,
                           "allocating the search filter"))
      return rc;
    if (int rc = cudaCheck(cudaMalloc(&y, yBytes), fn,
                           "allocating the search output"))
      return rc;
    // Zeros: timing does not depend on the values, and no algorithm sees
    // NaN patterns from uninitialised memory.
    cudaStream_t s = stream();
    if (int rc = cudaCheck(cudaMemsetAsync(x, 0, xBytes, s), fn, "memset"))
      return rc;
    if (int rc = cudaCheck(cudaMemsetAsync(w, 0, wBytes, s), fn, "memset"))
      return rc;
    if (int rc = cudaCheck(cudaMemsetAsync(y, 0, yBytes, s), fn, "memset"))
      return rc;
    // The largest search workspace the GPU can give, from the cap down.
    for (size_t bytes = kSearchWorkspaceBytes; bytes >= (size_t(1) << 20);
         bytes /= 2) {
      if (cudaMalloc(&ws, bytes) == cudaSuccess) {
        wsBytes = bytes;
        break;
      }
      cudaGetLastError(); // An allocation failure is not sticky.
      ws = nullptr;
    }
    return FCC_OK;
  }
};

// Sets the math type of one direction's descriptor for the storage type:
// fp32 always FMA (no TF32), half types as the algorithm was measured.
int setMath(const fcc_cuda_conv2d_plan &p, Direction dir, int measured,
            const char *fn) {
  const cudnnMathType_t math = p.dtype == FCC_DTYPE_F32
                                   ? CUDNN_FMA_MATH
                                   : cudnnMathType_t(measured);
  return cudnnCheck(cudnnSetConvolutionMathType(p.conv[dir], math), fn,
                    "cudnnSetConvolutionMathType");
}

// The workspace the algorithm needs with the descriptor's current math
// type; false if cuDNN does not support it for this configuration.
bool workspaceFor(const fcc_cuda_conv2d_plan &p, Direction dir, int algo,
                  size_t &bytes) {
  cudnnHandle_t h = cudnnHandle();
  cudnnStatus_t s = CUDNN_STATUS_NOT_SUPPORTED;
  switch (dir) {
  case kForward:
    s = cudnnGetConvolutionForwardWorkspaceSize(
        h, p.x, p.w, p.conv[dir], p.y, cudnnConvolutionFwdAlgo_t(algo), &bytes);
    break;
  case kBackwardData:
    s = cudnnGetConvolutionBackwardDataWorkspaceSize(
        h, p.w, p.y, p.conv[dir], p.x, cudnnConvolutionBwdDataAlgo_t(algo),
        &bytes);
    break;
  case kBackwardFilter:
    s = cudnnGetConvolutionBackwardFilterWorkspaceSize(
        h, p.x, p.y, p.conv[dir], p.w, cudnnConvolutionBwdFilterAlgo_t(algo),
        &bytes);
    break;
  }
  return s == CUDNN_STATUS_SUCCESS;
}

// One measured candidate, direction-independent.
struct Candidate {
  int algo;
  int mathType;
  float ms;
  bool deterministic;
};

// The first `returned` results of a cuDNN search (any direction's perf
// type), keeping those that ran successfully.
template <class Perf>
void appendSuccessful(const std::vector<Perf> &perf, int returned,
                      std::vector<Candidate> &out) {
  for (int i = 0; i < returned; ++i)
    if (perf[size_t(i)].status == CUDNN_STATUS_SUCCESS)
      out.push_back({int(perf[size_t(i)].algo), int(perf[size_t(i)].mathType),
                     perf[size_t(i)].time,
                     perf[size_t(i)].determinism == CUDNN_DETERMINISTIC});
}

// Runs the search of one direction; candidates in cuDNN's order (fastest
// first), only those that ran successfully.
int measure(fcc_cuda_conv2d_plan &p, Direction dir, SearchBuffers &buf,
            std::vector<Candidate> &out, const char *fn) {
  cudnnHandle_t h = cudnnHandle();
  // Search with tensor cores allowed for half types (the reported math
  // type of each result then says what it used); FMA for fp32.
  if (int rc = setMath(p, dir, CUDNN_TENSOR_OP_MATH, fn))
    return rc;
  int maxCount = 0, returned = 0;
  out.clear();
  switch (dir) {
  case kForward: {
    if (int rc = cudnnCheck(cudnnGetConvolutionForwardAlgorithmMaxCount(
                                h, &maxCount),
                            fn, "cudnnGetConvolutionForwardAlgorithmMaxCount"))
      return rc;
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(size_t(std::max(maxCount, 1)));
    if (int rc = cudnnCheck(cudnnFindConvolutionForwardAlgorithmEx(
                                h, p.x, buf.x, p.w, buf.w, p.conv[dir], p.y,
                                buf.y, int(perf.size()), &returned,
                                perf.data(), buf.ws, buf.wsBytes),
                            fn, "cudnnFindConvolutionForwardAlgorithmEx"))
      return rc;
    appendSuccessful(perf, returned, out);
    break;
  }
  case kBackwardData: {
    if (int rc = cudnnCheck(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(
                                h, &maxCount),
                            fn,
                            "cudnnGetConvolutionBackwardDataAlgorithmMaxCount"))
      return rc;
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(
        size_t(std::max(maxCount, 1)));
    // dy is the search output buffer, dx the search input buffer.
    if (int rc = cudnnCheck(cudnnFindConvolutionBackwardDataAlgorithmEx(
                                h, p.w, buf.w, p.y, buf.y, p.conv[dir], p.x,
                                buf.x, int(perf.size()), &returned,
                                perf.data(), buf.ws, buf.wsBytes),
                            fn, "cudnnFindConvolutionBackwardDataAlgorithmEx"))
      return rc;
    appendSuccessful(perf, returned, out);
    break;
  }
  case kBackwardFilter: {
    if (int rc = cudnnCheck(
            cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &maxCount),
            fn, "cudnnGetConvolutionBackwardFilterAlgorithmMaxCount"))
      return rc;
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(
        size_t(std::max(maxCount, 1)));
    if (int rc = cudnnCheck(cudnnFindConvolutionBackwardFilterAlgorithmEx(
                                h, p.x, buf.x, p.y, buf.y, p.conv[dir], p.w,
                                buf.w, int(perf.size()), &returned,
                                perf.data(), buf.ws, buf.wsBytes),
                            fn,
                            "cudnnFindConvolutionBackwardFilterAlgorithmEx"))
      return rc;
    appendSuccessful(perf, returned, out);
    break;
  }
  }
  return FCC_OK;
}

void setAlgo(fcc_cuda_conv2d_plan &p, Direction dir, int algo, size_t bytes) {
  switch (dir) {
  case kForward:
    p.fwdAlgo = cudnnConvolutionFwdAlgo_t(algo);
    break;
  case kBackwardData:
    p.bwdDataAlgo = cudnnConvolutionBwdDataAlgo_t(algo);
    break;
  case kBackwardFilter:
    p.bwdFilterAlgo = cudnnConvolutionBwdFilterAlgo_t(algo);
    break;
  }
  p.workspace[dir] = bytes;
}

// FFT and Winograd algorithms transform the operands and round in the
// transformed domain: their error is relative to the operands' magnitude,
// not the result's, which matters for filter gradients that cancel heavily.
bool isTransformAlgo(Direction dir, int algo) {
  switch (dir) {
  case kForward:
    return algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT ||
           algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
           algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD ||
           algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
  case kBackwardData:
    return algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT ||
           algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
           algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD ||
           algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
  case kBackwardFilter:
    return algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT ||
           algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
           algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD ||
           algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
  }
  return false;
}

// FCC_CUDNN_EXACT=1 (experiment): only direct and GEMM-based algorithms.
bool exactOnly() {
  const char *v = std::getenv("FCC_CUDNN_EXACT");
  return v && *v && std::string(v) != "0";
}

// Chooses the algorithm of one direction (cache, else search) and sets the
// descriptor's math type accordingly.
int chooseAlgorithm(fcc_cuda_conv2d_plan &p, Direction dir,
                    const std::string &key, SearchBuffers &buf,
                    const char *fn) {
  CachedAlgo cached;
  if (cacheLookup(key, cached)) {
    size_t bytes = 0;
    if (setMath(p, dir, cached.mathType, fn) == FCC_OK &&
        workspaceFor(p, dir, cached.algo, bytes)) {
      setAlgo(p, dir, cached.algo, bytes);
      return FCC_OK;
    }
    // Not accepted any more (another cuDNN build under the same version
    // number?): measure again.
  }
  if (int rc = buf.allocate(p, fn))
    return rc;
  std::vector<Candidate> candidates;
  if (int rc = measure(p, dir, buf, candidates, fn))
    return rc;
  if (const char *v = std::getenv("FCC_CUDNN_LOG"); v && *v && *v != '0')
    for (const Candidate &c : candidates)
      std::fprintf(stderr, "cudnn-search %s algo=%d math=%d ms=%.4f det=%d\n",
                   key.c_str(), c.algo, c.mathType, double(c.ms),
                   int(c.deterministic));
  // Deterministic candidates first, each group in cuDNN's (time) order.
  std::stable_partition(candidates.begin(), candidates.end(),
                        [](const Candidate &c) { return c.deterministic; });
  for (const Candidate &c : candidates) {
    size_t bytes = 0;
    if (exactOnly() && isTransformAlgo(dir, c.algo))
      continue;
    if (setMath(p, dir, c.mathType, fn) != FCC_OK ||
        !workspaceFor(p, dir, c.algo, bytes) || bytes > buf.wsBytes)
      continue;
    setAlgo(p, dir, c.algo, bytes);
    cacheStore(key, {c.algo, c.mathType, bytes, c.ms});
    return FCC_OK;
  }
  return setError(FCC_ERR_BACKEND,
                  format("%s: cuDNN has no usable %s algorithm for %s", fn,
                         kDirectionNames[dir], key.c_str()));
}

int createDescriptors(fcc_cuda_conv2d_plan &p, int64_t padH, int64_t padW,
                      const char *fn) {
  const fcc_conv2d_desc &d = p.desc;
  const cudnnDataType_t type = cudnnType(p.dtype);
  if (int rc = cudnnCheck(cudnnCreateTensorDescriptor(&p.x), fn,
                          "cudnnCreateTensorDescriptor"))
    return rc;
  if (int rc = cudnnCheck(cudnnCreateTensorDescriptor(&p.y), fn,
                          "cudnnCreateTensorDescriptor"))
    return rc;
  if (int rc = cudnnCheck(cudnnCreateFilterDescriptor(&p.w), fn,
                          "cudnnCreateFilterDescriptor"))
    return rc;
  // NHWC: channels-last activations and KRSC filters (see the file comment).
  const cudnnTensorFormat_t layout =
      p.nhwc() ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  if (int rc = cudnnCheck(
          cudnnSetTensor4dDescriptor(p.x, layout, type, int(d.n), int(d.c),
                                     int(d.h), int(d.w)),
          fn, "input descriptor"))
    return rc;
  if (int rc = cudnnCheck(
          cudnnSetTensor4dDescriptor(p.y, layout, type, int(d.n), int(d.k),
                                     int(d.oh), int(d.ow)),
          fn, "output descriptor"))
    return rc;
  if (int rc = cudnnCheck(
          cudnnSetFilter4dDescriptor(p.w, type, layout, int(d.k),
                                     int(d.c / d.groups), int(d.r), int(d.s)),
          fn, "filter descriptor"))
    return rc;
  for (int dir = 0; dir < 3; ++dir) {
    if (int rc = cudnnCheck(cudnnCreateConvolutionDescriptor(&p.conv[dir]), fn,
                            "cudnnCreateConvolutionDescriptor"))
      return rc;
    // Cross-correlation (what ONNX and PyTorch call convolution), fp32
    // compute for every storage type.
    if (int rc = cudnnCheck(cudnnSetConvolution2dDescriptor(
                                p.conv[dir], int(padH), int(padW),
                                int(d.stride_h), int(d.stride_w), int(d.dil_h),
                                int(d.dil_w), CUDNN_CROSS_CORRELATION,
                                CUDNN_DATA_FLOAT),
                            fn, "convolution descriptor"))
      return rc;
    if (int rc = cudnnCheck(
            cudnnSetConvolutionGroupCount(p.conv[dir], int(d.groups)), fn,
            "cudnnSetConvolutionGroupCount"))
      return rc;
  }
  // cuDNN's idea of the output shape must be ours.
  int on = 0, ok = 0, ooh = 0, oow = 0;
  if (int rc = cudnnCheck(cudnnGetConvolution2dForwardOutputDim(
                              p.conv[0], p.x, p.w, &on, &ok, &ooh, &oow),
                          fn, "cudnnGetConvolution2dForwardOutputDim"))
    return rc;
  if (on != d.n || ok != d.k || ooh != d.oh || oow != d.ow)
    return setError(FCC_ERR_BACKEND,
                    format("%s: cuDNN computes output %dx%dx%dx%d, expected "
                           "%lldx%lldx%lldx%lld",
                           fn, on, ok, ooh, oow, (long long)d.n,
                           (long long)d.k, (long long)d.oh, (long long)d.ow));
  return FCC_OK;
}

// The filter cuDNN reads: w itself (NCHW), or w transposed into the plan's
// KRSC buffer (NHWC).
const void *filterForCudnn(const fcc_cuda_conv2d_plan &p, const void *w) {
  if (!p.nhwc())
    return w;
  const fcc_conv2d_desc &d = p.desc;
  fcc_cuda_transpose_layout(w, d.k, d.c / d.groups, d.r * d.s,
                            FCC_LAYOUT_NHWC, p.krsc, p.dtype);
  return p.krsc;
}

} // namespace

extern "C" fcc_cuda_conv2d_plan *fcc_cuda_conv2d_create(const fcc_conv2d_desc *d,
                                                        int dtype) {
  const char *fn = "fcc_cuda_conv2d_create";
  if (!initialised()) {
    setError(FCC_ERR_INVALID,
             format("%s: the CUDA runtime is not initialised", fn));
    return nullptr;
  }
  if (!d) {
    setError(FCC_ERR_INVALID, format("%s: null descriptor", fn));
    return nullptr;
  }
  if (dtypeSize(dtype) == 0) {
    setError(FCC_ERR_INVALID, format("%s: unknown dtype %d", fn, dtype));
    return nullptr;
  }
  if (capturing()) {
    setError(FCC_ERR_INVALID, format("%s: plans measure algorithms and "
                                     "cannot be created during graph capture",
                                     fn));
    return nullptr;
  }
  auto plan = std::make_unique<fcc_cuda_conv2d_plan>();
  plan->desc = *d;
  plan->dtype = dtype;
  fcc_conv2d_desc &desc = plan->desc;
  if (finalizeDesc(fn, desc) != FCC_OK)
    return nullptr;
  const int64_t padH = symmetricPad(desc.h, desc.r, desc.stride_h, desc.pad_t,
                                    desc.pad_b, desc.dil_h, desc.oh);
  const int64_t padW = symmetricPad(desc.w, desc.s, desc.stride_w, desc.pad_l,
                                    desc.pad_r, desc.dil_w, desc.ow);
  if (padH < 0 || padW < 0) {
    setError(FCC_ERR_UNSUPPORTED,
             format("%s: asymmetric padding (top %lld, bottom %lld, left "
                    "%lld, right %lld) is not supported by cuDNN's "
                    "convolution descriptor",
                    fn, (long long)desc.pad_t, (long long)desc.pad_b,
                    (long long)desc.pad_l, (long long)desc.pad_r));
    return nullptr;
  }
  if (createDescriptors(*plan, padH, padW, fn) != FCC_OK)
    return nullptr;
  if (plan->nhwc())
    for (void **b : {&plan->krsc, &plan->krscGrad[0], &plan->krscGrad[1]})
      if (cudaCheck(cudaMalloc(b, size_t(plan->filterCount() *
                                         dtypeSize(dtype))),
                    fn, "allocating a KRSC filter"))
        return nullptr;

  SearchBuffers buffers;
  size_t most = 0;
  for (int dir = 0; dir < 3; ++dir) {
    std::string key = deviceKey() + "|" + kDirectionNames[dir] + "|" +
                      shapeKey(desc, padH, padW, dtype) +
                      (exactOnly() ? "|exact" : "");
    if (chooseAlgorithm(*plan, Direction(dir), key, buffers, fn) != FCC_OK)
      return nullptr;
    most = std::max(most, plan->workspace[dir]);
  }
  // Wait for the search (and its memsets) before the buffers are freed.
  if (cudaCheck(cudaStreamSynchronize(stream()), fn, "waiting for the search"))
    return nullptr;
  // cuDNN's search may leave failed attempts (allocations of algorithms
  // that did not fit) in the runtime's error state.
  clearTransientErrors();
  // The side stream runs weight gradients only (fcc-overlap-weight-grads).
  if (reserveWorkspace(most, plan->workspace[kBackwardFilter], fn) != FCC_OK)
    return nullptr;
  return plan.release();
}

extern "C" void fcc_cuda_conv2d_destroy(fcc_cuda_conv2d_plan *p) { delete p; }

extern "C" int fcc_cuda_conv2d_forward(fcc_cuda_conv2d_plan *p, const void *x,
                                       const void *w, const void *bias,
                                       void *y) {
  const char *fn = "fcc_cuda_conv2d_forward";
  if (!p || !x || !w || !y)
    return setError(FCC_ERR_INVALID, format("%s: null argument", fn));
  if (int rc = refuseSideStream(fn))
    return rc;
  // alpha/beta are float for every storage type but double.
  const float one = 1.0f, zero = 0.0f;
  if (int rc = cudnnCheck(
          cudnnConvolutionForward(cudnnHandle(), &one, p->x, x, p->w,
                                  filterForCudnn(*p, w), p->conv[kForward],
                                  p->fwdAlgo, workspace(), workspaceSize(),
                                  &zero, p->y, y),
          fn, "cudnnConvolutionForward"))
    return rc;
  if (bias && !addChannelBias(y, bias, p->outputPlanes(), p->desc.k,
                              p->outputPlaneSize(), p->dtype, fn))
    return FCC_ERR_BACKEND;
  return FCC_OK;
}

extern "C" int fcc_cuda_conv2d_backward_data(fcc_cuda_conv2d_plan *p,
                                             const void *dy, const void *w,
                                             void *dx) {
  const char *fn = "fcc_cuda_conv2d_backward_data";
  if (!p || !dy || !w || !dx)
    return setError(FCC_ERR_INVALID, format("%s: null argument", fn));
  if (int rc = refuseSideStream(fn))
    return rc;
  const float one = 1.0f, zero = 0.0f;
  return cudnnCheck(cudnnConvolutionBackwardData(
                        cudnnHandle(), &one, p->w, filterForCudnn(*p, w), p->y,
                        dy, p->conv[kBackwardData], p->bwdDataAlgo, workspace(),
                        workspaceSize(), &zero, p->x, dx),
                    fn, "cudnnConvolutionBackwardData");
}

extern "C" int fcc_cuda_conv2d_backward_filter(fcc_cuda_conv2d_plan *p,
                                               const void *x, const void *dy,
                                               void *dw, void *dbias) {
  const char *fn = "fcc_cuda_conv2d_backward_filter";
  if (!p || !x || !dy || !dw)
    return setError(FCC_ERR_INVALID, format("%s: null argument", fn));
  const float one = 1.0f, zero = 0.0f;
  void *krscGrad = p->krscGrad[onSideStream() ? 1 : 0];
  if (int rc = cudnnCheck(cudnnConvolutionBackwardFilter(
                              cudnnHandle(), &one, p->x, x, p->y, dy,
                              p->conv[kBackwardFilter], p->bwdFilterAlgo,
                              workspace(), workspaceSize(), &zero, p->w,
                              p->nhwc() ? krscGrad : dw),
                          fn, "cudnnConvolutionBackwardFilter"))
    return rc;
  const fcc_conv2d_desc &d = p->desc;
  if (p->nhwc())
    fcc_cuda_transpose_layout(krscGrad, d.k, d.c / d.groups, d.r * d.s,
                              FCC_LAYOUT_NCHW, dw, p->dtype);
  if (dbias && !channelSum(dy, p->outputPlanes(), d.k, p->outputPlaneSize(),
                           dbias, p->dtype, fn))
    return FCC_ERR_BACKEND;
  return FCC_OK;
}
