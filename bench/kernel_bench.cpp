//===- kernel_bench.cpp - ResNet9's GPU kernels, one by one, side by side -===//
//
// fcc-kernel-bench: times the two kinds of work that fill a ResNet9 training
// step on the GPU (bench/RESULTS.md, "Where a training step's time goes") at
// the step's own shapes (batch --batch, fp16), so that a change to either
// can be judged in seconds of device time, without training:
//
//  bn    fcc's fused BatchNorm + activation (+ 2x2 max pool) (+ residual)
//        training forward and backward (runtime/cuda/batchnorm.cu) for each
//        of the model's eight BatchNorms (--model resnet9-bot, the default
//        and what gpu-check trains: pools before the BatchNorms, CELU;
//        resnet9: ReLU, pools fused after them), NCHW and NHWC, with the
//        default kernels (16-byte vectors, groups of pooling windows), with
//        FCC_CUDA_SCALAR=1 (pairs, one window per thread), with
//        FCC_CUDA_FINISH_KERNEL=1 (each reduction's partial sums added by a
//        second launch, not by its last block) and, pooled layers, with
//        FCC_BN_GENERAL=1 (per element). Bandwidth counts
//        the least traffic each call
//        needs (forward: read x, write y, read the residual; backward: read
//        x and dy, write dx), against the device's peak.
//  pool  the max pools that run alone (resnet9-bot: three 2x2 and the
//        global 4x4; resnet9: the global one), forward and backward, the
//        same variants but per element.
//  conv  cuDNN's fastest algorithm (cudnnFind*AlgorithmEx, then timed) for
//        the forward, data-gradient and filter-gradient convolution of each
//        of ResNet9's convolution shapes, with activations NCHW (cuDNN
//        transposes around its tensor-core kernels) and NHWC (filters KRSC,
//        or KCRS to see whether cuDNN takes the mixed form); and fcc's own
//        plans, NCHW and NHWC (what the trainers run: the fastest
//        deterministic algorithm, NHWC with its KRSC filter transposes).
//
// Totals weight each layer by how often a step runs it. Exit status 2 when
// there is no GPU, 1 on an error of the runtime. Built a second time against
// the host emulation of CUDA (fcc-kernel-bench-emulated, tests only): the bn
// part, timed by the host clock, checks the tool's own plumbing in CI
// (tests/lit/tools/kernel-bench.test); its numbers mean nothing.
//
//   fcc-kernel-bench [--model resnet9-bot|resnet9] [--parts bn,pool,conv]
//                    [--layers NAME,...] [--batch 512] [--iters 20]
//
// --layers keeps the BatchNorms, pools and convolutions of those names
// (prep, layer1, layer1.res1, layer1.res2, layer1.res, layer2, layer3, ...,
// pool).
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/cpu_kernels.h"
#include "fcc/runtime/cuda_kernels.h"

#include <cuda_fp16.h>
#ifndef FCC_KERNEL_BENCH_EMULATED
#include <cuda_runtime_api.h>
#include <cudnn.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string model = "resnet9-bot";
  bool bn = true, pool = true;
#ifdef FCC_KERNEL_BENCH_EMULATED
  bool conv = false; // cuDNN is not emulated
#else
  bool conv = true;
#endif
  std::vector<std::string> layers; // empty: all
  bool wants(const char *name) const {
    return layers.empty() ||
           std::find(layers.begin(), layers.end(), name) != layers.end();
  }
  int64_t batch = 512;
  int iters = 20;
};

[[noreturn]] void usage(const char *why) {
  std::fprintf(stderr,
               "fcc-kernel-bench: %s\nusage: fcc-kernel-bench [--model "
               "resnet9-bot|resnet9] [--parts bn,pool,conv] [--layers "
               "NAME,...] [--batch N] [--iters N]\n",
               why);
  std::exit(64);
}

Options parse(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: fcc-kernel-bench [--model resnet9-bot|resnet9] "
                  "[--parts bn,pool,conv] [--layers NAME,...] [--batch N] "
                  "[--iters N]\n");
      std::exit(0);
    }
    if (i + 1 >= argc)
      usage(("missing value for " + a).c_str());
    const std::string v = argv[++i];
    if (a == "--parts") {
      o.bn = o.pool = o.conv = false;
      size_t start = 0;
      while (start <= v.size()) {
        const size_t end = std::min(v.find(',', start), v.size());
        const std::string p = v.substr(start, end - start);
        if (p == "bn")
          o.bn = true;
        else if (p == "pool")
          o.pool = true;
        else if (p == "conv")
          o.conv = true;
        else
          usage(("--parts: unknown part '" + p + "' (bn, pool, conv)").c_str());
        start = end + 1;
      }
    } else if (a == "--model") {
      if (v != "resnet9-bot" && v != "resnet9")
        usage(("--model: unknown model '" + v + "' (resnet9-bot, resnet9)")
                  .c_str());
      o.model = v;
    } else if (a == "--layers") {
      size_t start = 0;
      while (start <= v.size()) {
        const size_t end = std::min(v.find(',', start), v.size());
        if (end > start)
          o.layers.push_back(v.substr(start, end - start));
        start = end + 1;
      }
      if (o.layers.empty())
        usage("--layers: expected layer names");
    } else if (a == "--batch" || a == "--iters") {
      char *end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (!end || *end || n < 1 || n > 65536)
        usage((a + ": expected an integer in [1, 65536], got '" + v + "'")
                  .c_str());
      if (a == "--batch")
        o.batch = n;
      else
        o.iters = int(n);
    } else {
      usage(("unknown flag " + a).c_str());
    }
  }
  return o;
}

[[noreturn]] void fail(const std::string &what) {
  std::fprintf(stderr, "fcc-kernel-bench: %s\n", what.c_str());
  std::exit(1);
}

// A device buffer of `count` fp16 values, uniform in [lo, hi).
void *randomHalf(int64_t count, float lo, float hi, std::mt19937 &rng) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<__half> h(static_cast<size_t>(count));
  for (__half &v : h)
    v = __float2half(u(rng));
  void *d = fcc_cuda_malloc(2 * count);
  if (!d || fcc_cuda_copy_to_device(d, h.data(), 2 * count) != 0)
    fail(std::string("device memory: ") + fcc_cuda_last_error());
  return d;
}

float *randomFloat(int64_t count, float lo, float hi, std::mt19937 &rng) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> h(static_cast<size_t>(count));
  for (float &v : h)
    v = u(rng);
  void *d = fcc_cuda_malloc(4 * count);
  if (!d || fcc_cuda_copy_to_device(d, h.data(), 4 * count) != 0)
    fail(std::string("device memory: ") + fcc_cuda_last_error());
  return static_cast<float *>(d);
}

// Milliseconds per call of f on fcc's stream: 3 warm-up calls, then iters
// calls between two events.
template <class F> double timeMs(int iters, F f) {
  for (int i = 0; i < 3; ++i)
    f();
#ifdef FCC_KERNEL_BENCH_EMULATED
  fcc_cuda_synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i)
    f();
  if (fcc_cuda_synchronize() != 0)
    fail(std::string("a timed call failed: ") + fcc_cuda_last_error());
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now() - t0)
             .count() /
         iters;
#else
  cudaStream_t s = static_cast<cudaStream_t>(fcc_cuda_stream());
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a, s);
  for (int i = 0; i < iters; ++i)
    f();
  cudaEventRecord(b, s);
  cudaEventSynchronize(b);
  float ms = 0.0f;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (fcc_cuda_synchronize() != 0)
    fail(std::string("a timed call failed: ") + fcc_cuda_last_error());
  return double(ms) / iters;
#endif
}

//===----------------------------------------------------------------------===//
// BatchNorm
//===----------------------------------------------------------------------===//

struct BnLayer {
  const char *name;
  int64_t c, hw; // input channels, height = width
  bool pool, residual;
  int times; // per training step
};

// resnet9 (fcc-models, at its default width): conv -> BatchNorm + ReLU
// (-> 2x2 max pool, fused) per layer, then a global 4x4 max pool.
const BnLayer kResnet9Bn[] = {
    {"prep", 64, 32, false, false, 1},
    {"layer1", 128, 32, true, false, 1},
    {"layer1.res1", 128, 16, false, false, 1},
    {"layer1.res2", 128, 16, false, true, 1},
    {"layer2", 256, 16, true, false, 1},
    {"layer3", 512, 8, true, false, 1},
    {"layer3.res1", 512, 4, false, false, 1},
    {"layer3.res2", 512, 4, false, true, 1},
};
// resnet9-bot (what gpu-check trains): conv -> 2x2 max pool -> BatchNorm +
// CELU, so the BatchNorms see the pooled maps and the pools run alone.
const BnLayer kResnet9BotBn[] = {
    {"prep", 64, 32, false, false, 1},
    {"layer1", 128, 16, false, false, 1},
    {"layer1.res1", 128, 16, false, false, 1},
    {"layer1.res2", 128, 16, false, true, 1},
    {"layer2", 256, 8, false, false, 1},
    {"layer3", 512, 4, false, false, 1},
    {"layer3.res1", 512, 4, false, false, 1},
    {"layer3.res2", 512, 4, false, true, 1},
};

struct PoolLayer {
  const char *name;
  int64_t c, hw, k; // input channels, height = width, window = stride
};
const PoolLayer kResnet9Pools[] = {{"pool", 512, 4, 4}};
const PoolLayer kResnet9BotPools[] = {{"layer1", 128, 32, 2},
                                      {"layer2", 256, 16, 2},
                                      {"layer3", 512, 8, 2},
                                      {"pool", 512, 4, 4}};

struct Model {
  const char *name;
  const BnLayer *bn;
  size_t bnCount;
  int activation;
  float alpha;
  const PoolLayer *pools;
  size_t poolCount;
};
const Model kModels[] = {
    {"resnet9-bot", kResnet9BotBn, std::size(kResnet9BotBn), FCC_ACT_CELU,
     0.3f, kResnet9BotPools, std::size(kResnet9BotPools)},
    {"resnet9", kResnet9Bn, std::size(kResnet9Bn), FCC_ACT_RELU, 1.0f,
     kResnet9Pools, std::size(kResnet9Pools)},
};

// One kernel variant of a table row: activations' layout, and the
// environment (FCC_CUDA_SCALAR=1, FCC_BN_GENERAL=1, FCC_CUDA_FINISH_KERNEL=1)
// its kernels run under.
struct KernelVariant {
  const char *name;
  int layout;
  bool scalar, general, finishKernel = false;
};

// Runs f() with the environment of kernel variant v: its switches set to 1
// or unset as asked; all unset afterwards.
template <class F> void withEnv(const KernelVariant &v, F f) {
  const std::pair<const char *, bool> vars[] = {
      {"FCC_CUDA_SCALAR", v.scalar},
      {"FCC_BN_GENERAL", v.general},
      {"FCC_CUDA_FINISH_KERNEL", v.finishKernel}};
  for (auto [name, on] : vars)
    if (on)
      setenv(name, "1", 1);
    else
      unsetenv(name);
  f();
  for (auto [name, on] : vars)
    unsetenv(name);
}

void freeAll(std::initializer_list<void *> buffers) {
  for (void *p : buffers)
    fcc_cuda_free(p);
}

void benchBn(const Options &o, const Model &m, double peakBytes) {
  std::printf("## %s: fused BatchNorm + %s (+ pool) (+ residual), fp16, "
              "batch %lld\n\n",
              m.name, m.activation == FCC_ACT_CELU ? "CELU" : "ReLU",
              static_cast<long long>(o.batch));
  std::printf("| layer | C x H x W | pool | kernels | forward ms | GB/s | of "
              "peak | backward ms | GB/s | of peak |\n");
  std::printf("|---|---|---|---|---:|---:|---:|---:|---:|---:|\n");
  std::mt19937 rng(1);
  // Variants (the same random buffers; NHWC reads them as NHWC): the
  // default kernels (16-byte vectors, groups of pooling windows), the same
  // with FCC_CUDA_SCALAR=1 (pairs, one window per thread), with
  // FCC_CUDA_FINISH_KERNEL=1 (a second launch per reduction), and for
  // pooled layers FCC_BN_GENERAL=1 (per element); NCHW and NHWC.
  static const KernelVariant kVariants[] = {
      {"NCHW", FCC_LAYOUT_NCHW, false, false},
      {"NCHW scalar", FCC_LAYOUT_NCHW, true, false},
      {"NCHW per element", FCC_LAYOUT_NCHW, true, true},
      {"NHWC", FCC_LAYOUT_NHWC, false, false},
      {"NHWC scalar", FCC_LAYOUT_NHWC, true, false},
      {"NCHW finish kernel", FCC_LAYOUT_NCHW, false, false, true},
      {"NHWC finish kernel", FCC_LAYOUT_NHWC, false, false, true},
  };
  constexpr size_t kCount = std::size(kVariants);
  double total[kCount] = {};
  for (size_t li = 0; li < m.bnCount; ++li) {
    const BnLayer &l = m.bn[li];
    if (!o.wants(l.name))
      continue;
    fcc_bn_act_desc d{};
    d.n = o.batch, d.c = l.c, d.h = l.hw, d.w = l.hw;
    d.activation = m.activation, d.alpha = m.alpha, d.eps = 1e-5f;
    if (l.pool)
      d.pool_kh = d.pool_kw = d.pool_sh = d.pool_sw = 2;
    if (fcc_bn_act_desc_finalize(&d) != 0)
      fail(std::string("bn descriptor: ") + fcc_cpu_last_error());
    const int64_t in = d.n * d.c * d.h * d.w, out = d.n * d.c * d.oh * d.ow;
    void *x = randomHalf(in, -2.0f, 2.0f, rng);
    void *dy = randomHalf(out, -1.0f, 1.0f, rng);
    void *res = l.residual ? randomHalf(out, -1.0f, 1.0f, rng) : nullptr;
    void *y = fcc_cuda_malloc(2 * out), *dx = fcc_cuda_malloc(2 * in);
    float *scale = randomFloat(l.c, 0.5f, 1.5f, rng);
    float *shift = randomFloat(l.c, -0.5f, 0.5f, rng);
    float *bm = randomFloat(l.c, 0.0f, 0.0f, rng);
    float *bv = randomFloat(l.c, 1.0f, 1.0f, rng);
    float *ds = randomFloat(l.c, 0.0f, 0.0f, rng);
    float *dsh = randomFloat(l.c, 0.0f, 0.0f, rng);
    const double fwdBytes = 2.0 * double(in + out + (res ? out : 0));
    const double bwdBytes = 2.0 * double(2 * in + out);
    for (size_t vi = 0; vi < kCount; ++vi) {
      const KernelVariant &v = kVariants[vi];
      if (v.general && !l.pool)
        continue; // no per-element kernels without pooling
      d.layout = v.layout;
      double f = 0.0, b = 0.0;
      withEnv(v, [&] {
        f = timeMs(o.iters, [&] {
          fcc_cuda_bn_act_train_forward(&d, x, scale, shift, res, y, bm, bv,
                                        FCC_DTYPE_F16);
        });
        b = timeMs(o.iters, [&] {
          fcc_cuda_bn_act_backward(&d, x, dy, scale, shift, bm, bv, dx, ds,
                                   dsh, FCC_DTYPE_F16);
        });
      });
      const double fr = fwdBytes / (f * 1e-3), br = bwdBytes / (b * 1e-3);
      std::printf("| %s | %lldx%lldx%lld | %s | %s | %.3f | %.0f | %.0f%% | "
                  "%.3f | %.0f | %.0f%% |\n",
                  l.name, static_cast<long long>(l.c),
                  static_cast<long long>(l.hw), static_cast<long long>(l.hw),
                  l.pool ? "2x2" : "-", v.name, f, fr * 1e-9,
                  100.0 * fr / peakBytes, b, br * 1e-9,
                  100.0 * br / peakBytes);
      total[vi] += l.times * (f + b);
    }
    freeAll({x, dy, res, y, dx, scale, shift, bm, bv, ds, dsh});
  }
  std::printf("\nBatchNorm per training step (forward + backward, the "
              "layers above): NCHW %.3f ms, FCC_CUDA_SCALAR=1 %.3f ms "
              "(scalar / vector %.2f); NHWC %.3f ms, FCC_CUDA_SCALAR=1 %.3f "
              "ms (scalar / vector %.2f); NCHW / NHWC %.2f; "
              "FCC_CUDA_FINISH_KERNEL=1 (a second launch per reduction): "
              "NCHW %.3f ms, NHWC %.3f ms (finish kernel / last block %.2f, "
              "%.2f)\n\n",
              total[0], total[1], total[1] / total[0], total[3], total[4],
              total[4] / total[3], total[0] / total[3], total[5], total[6],
              total[5] / total[0], total[6] / total[3]);
}

// The max pools that run alone (not fused into a BatchNorm), forward and
// backward, NCHW and NHWC, with and without 16-byte vectors.
void benchPool(const Options &o, const Model &m, double peakBytes) {
  std::printf("## %s: max pooling, fp16, batch %lld\n\n", m.name,
              static_cast<long long>(o.batch));
  std::printf("| layer | C x H x W | window | kernels | forward ms | GB/s | "
              "of peak | backward ms | GB/s | of peak |\n");
  std::printf("|---|---|---|---|---:|---:|---:|---:|---:|---:|\n");
  std::mt19937 rng(2);
  static const KernelVariant kVariants[] = {
      {"NCHW", FCC_LAYOUT_NCHW, false, false},
      {"NCHW scalar", FCC_LAYOUT_NCHW, true, false},
      {"NHWC", FCC_LAYOUT_NHWC, false, false},
      {"NHWC scalar", FCC_LAYOUT_NHWC, true, false}};
  constexpr size_t kCount = std::size(kVariants);
  double total[kCount] = {};
  for (size_t li = 0; li < m.poolCount; ++li) {
    const PoolLayer &l = m.pools[li];
    if (!o.wants(l.name))
      continue;
    fcc_pool2d_desc d{};
    d.n = o.batch, d.c = l.c, d.h = l.hw, d.w = l.hw;
    d.kh = d.kw = d.stride_h = d.stride_w = l.k;
    if (fcc_pool2d_desc_finalize(&d) != 0)
      fail(std::string("pool descriptor: ") + fcc_cpu_last_error());
    const int64_t in = d.n * d.c * d.h * d.w, out = d.n * d.c * d.oh * d.ow;
    void *x = randomHalf(in, -2.0f, 2.0f, rng);
    void *dy = randomHalf(out, -1.0f, 1.0f, rng);
    void *y = fcc_cuda_malloc(2 * out), *dx = fcc_cuda_malloc(2 * in);
    const double fwdBytes = 2.0 * double(in + out);
    const double bwdBytes = 2.0 * double(2 * in + out);
    for (size_t vi = 0; vi < kCount; ++vi) {
      const KernelVariant &v = kVariants[vi];
      d.layout = v.layout;
      double f = 0.0, b = 0.0;
      withEnv(v, [&] {
        f = timeMs(o.iters, [&] {
          fcc_cuda_max_pool2d_forward(&d, x, y, FCC_DTYPE_F16);
        });
        b = timeMs(o.iters, [&] {
          fcc_cuda_max_pool2d_backward(&d, x, dy, dx, FCC_DTYPE_F16);
        });
      });
      const double fr = fwdBytes / (f * 1e-3), br = bwdBytes / (b * 1e-3);
      std::printf("| %s | %lldx%lldx%lld | %lldx%lld | %s | %.3f | %.0f | "
                  "%.0f%% | %.3f | %.0f | %.0f%% |\n",
                  l.name, static_cast<long long>(l.c),
                  static_cast<long long>(l.hw), static_cast<long long>(l.hw),
                  static_cast<long long>(l.k), static_cast<long long>(l.k),
                  v.name, f, fr * 1e-9, 100.0 * fr / peakBytes, b, br * 1e-9,
                  100.0 * br / peakBytes);
      total[vi] += f + b;
    }
    freeAll({x, dy, y, dx});
  }
  std::printf("\nMax pooling per training step (forward + backward, the "
              "layers above): NCHW %.3f ms, FCC_CUDA_SCALAR=1 %.3f ms "
              "(scalar / vector %.2f); NHWC %.3f ms, FCC_CUDA_SCALAR=1 %.3f "
              "ms (scalar / vector %.2f)\n\n",
              total[0], total[1], total[1] / total[0], total[2], total[3],
              total[3] / total[2]);
}

#ifndef FCC_KERNEL_BENCH_EMULATED
//===----------------------------------------------------------------------===//
// Convolutions through cuDNN, NCHW against NHWC
//===----------------------------------------------------------------------===//

struct ConvShape {
  const char *name;
  int c, k, hw;
  int times;        // per training step
  bool dataGradient; // the first convolution has no input gradient
};

const ConvShape kConvs[] = {
    {"prep", 3, 64, 32, 1, false},     {"layer1", 64, 128, 32, 1, true},
    {"layer1.res", 128, 128, 16, 2, true}, {"layer2", 128, 256, 16, 1, true},
    {"layer3", 256, 512, 8, 1, true},  {"layer3.res", 512, 512, 4, 2, true},
};

// Activation and filter formats of one measurement.
struct Layout {
  const char *name;
  cudnnTensorFormat_t act, filter;
};
const Layout kLayouts[] = {
    {"NCHW", CUDNN_TENSOR_NCHW, CUDNN_TENSOR_NCHW},
    {"NHWC", CUDNN_TENSOR_NHWC, CUDNN_TENSOR_NHWC},
    {"NHWC+KCRS", CUDNN_TENSOR_NHWC, CUDNN_TENSOR_NCHW},
};
constexpr int kLayoutCount = 3;
constexpr size_t kWorkspace = size_t(512) << 20;

bool ok(cudnnStatus_t s, const char *what, std::string &err) {
  if (s == CUDNN_STATUS_SUCCESS)
    return true;
  err = std::string(what) + ": " + cudnnGetErrorString(s);
  return false;
}

// Milliseconds per call of the fastest algorithm of one direction (0 =
// forward, 1 = data gradient, 2 = filter gradient), or -1 with err set.
double convMs(cudnnHandle_t h, const ConvShape &cs, const Layout &lay,
              int64_t n, int dir, int iters, void *x, void *w, void *y,
              void *ws, std::string &err) {
  cudnnTensorDescriptor_t xd, yd;
  cudnnFilterDescriptor_t wd;
  cudnnConvolutionDescriptor_t cd;
  cudnnCreateTensorDescriptor(&xd);
  cudnnCreateTensorDescriptor(&yd);
  cudnnCreateFilterDescriptor(&wd);
  cudnnCreateConvolutionDescriptor(&cd);
  double ms = -1.0;
  auto run = [&]() -> bool {
    if (!ok(cudnnSetTensor4dDescriptor(xd, lay.act, CUDNN_DATA_HALF, int(n),
                                       cs.c, cs.hw, cs.hw),
            "x descriptor", err) ||
        !ok(cudnnSetTensor4dDescriptor(yd, lay.act, CUDNN_DATA_HALF, int(n),
                                       cs.k, cs.hw, cs.hw),
            "y descriptor", err) ||
        !ok(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_HALF, lay.filter, cs.k,
                                       cs.c, 3, 3),
            "w descriptor", err) ||
        !ok(cudnnSetConvolution2dDescriptor(cd, 1, 1, 1, 1, 1, 1,
                                            CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT),
            "convolution descriptor", err) ||
        !ok(cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH),
            "math type", err))
      return false;
    const float one = 1.0f, zero = 0.0f;
    constexpr int kMax = 16;
    int returned = 0;
    int algo = -1;
    if (dir == 0) {
      cudnnConvolutionFwdAlgoPerf_t perf[kMax];
      if (!ok(cudnnFindConvolutionForwardAlgorithmEx(h, xd, x, wd, w, cd, yd,
                                                     y, kMax, &returned, perf,
                                                     ws, kWorkspace),
              "cudnnFindConvolutionForwardAlgorithmEx", err))
        return false;
      for (int i = 0; i < returned && algo < 0; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS)
          algo = int(perf[i].algo);
      if (algo < 0)
        return ok(CUDNN_STATUS_NOT_SUPPORTED, "no forward algorithm", err);
      ms = timeMs(iters, [&] {
        cudnnConvolutionForward(h, &one, xd, x, wd, w, cd,
                                cudnnConvolutionFwdAlgo_t(algo), ws,
                                kWorkspace, &zero, yd, y);
      });
    } else if (dir == 1) {
      cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
      if (!ok(cudnnFindConvolutionBackwardDataAlgorithmEx(
                  h, wd, w, yd, y, cd, xd, x, kMax, &returned, perf, ws,
                  kWorkspace),
              "cudnnFindConvolutionBackwardDataAlgorithmEx", err))
        return false;
      for (int i = 0; i < returned && algo < 0; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS)
          algo = int(perf[i].algo);
      if (algo < 0)
        return ok(CUDNN_STATUS_NOT_SUPPORTED, "no data-gradient algorithm",
                  err);
      ms = timeMs(iters, [&] {
        cudnnConvolutionBackwardData(h, &one, wd, w, yd, y, cd,
                                     cudnnConvolutionBwdDataAlgo_t(algo), ws,
                                     kWorkspace, &zero, xd, x);
      });
    } else {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
      if (!ok(cudnnFindConvolutionBackwardFilterAlgorithmEx(
                  h, xd, x, yd, y, cd, wd, w, kMax, &returned, perf, ws,
                  kWorkspace),
              "cudnnFindConvolutionBackwardFilterAlgorithmEx", err))
        return false;
      for (int i = 0; i < returned && algo < 0; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS)
          algo = int(perf[i].algo);
      if (algo < 0)
        return ok(CUDNN_STATUS_NOT_SUPPORTED, "no filter-gradient algorithm",
                  err);
      ms = timeMs(iters, [&] {
        cudnnConvolutionBackwardFilter(h, &one, xd, x, yd, y, cd,
                                       cudnnConvolutionBwdFilterAlgo_t(algo),
                                       ws, kWorkspace, &zero, wd, w);
      });
    }
    return true;
  };
  if (!run())
    ms = -1.0;
  cudnnDestroyConvolutionDescriptor(cd);
  cudnnDestroyFilterDescriptor(wd);
  cudnnDestroyTensorDescriptor(yd);
  cudnnDestroyTensorDescriptor(xd);
  return ms;
}

// fcc's own convolution plan of a shape (runtime/cuda/conv.cpp: the
// fastest deterministic algorithm, from the timing cache or measured; NHWC
// plans transpose filters to KRSC and back), or null with err set.
fcc_cuda_conv2d_plan *fccPlan(const ConvShape &cs, int64_t n, int layout,
                              std::string &err) {
  fcc_conv2d_desc d{};
  d.n = n, d.c = cs.c, d.h = cs.hw, d.w = cs.hw, d.k = cs.k, d.r = 3, d.s = 3;
  d.stride_h = d.stride_w = 1;
  d.pad_t = d.pad_l = d.pad_b = d.pad_r = 1;
  d.dil_h = d.dil_w = 1;
  d.groups = 1;
  d.layout = layout;
  fcc_cuda_conv2d_plan *p = fcc_cuda_conv2d_create(&d, FCC_DTYPE_F16);
  if (!p)
    err = fcc_cuda_last_error();
  return p;
}

// Milliseconds per call of one direction of an fcc plan (what a trainer
// runs, filter transposes included).
double fccConvMs(fcc_cuda_conv2d_plan *p, int dir, int iters, void *x,
                 void *w, void *y) {
  return timeMs(iters, [&] {
    if (dir == 0)
      fcc_cuda_conv2d_forward(p, x, w, nullptr, y);
    else if (dir == 1)
      fcc_cuda_conv2d_backward_data(p, y, w, x);
    else
      fcc_cuda_conv2d_backward_filter(p, x, y, w, nullptr);
  });
}

void benchConv(const Options &o) {
  std::printf("## Convolutions, fp16 (fp32 accumulation, tensor-op math), "
              "batch %lld, ms per call: cuDNN's fastest algorithm per "
              "layout, and fcc's plans (fastest deterministic algorithm; "
              "NHWC with its filter transposes)\n\n",
              static_cast<long long>(o.batch));
  cudnnHandle_t h;
  std::string err;
  if (!ok(cudnnCreate(&h), "cudnnCreate", err))
    fail(err);
  cudnnSetStream(h, static_cast<cudaStream_t>(fcc_cuda_stream()));
  void *ws = fcc_cuda_malloc(int64_t(kWorkspace));
  if (!ws)
    fail(std::string("workspace: ") + fcc_cuda_last_error());
  std::printf("| conv | C->K @ HxW | direction | cuDNN NCHW | cuDNN NHWC | "
              "cuDNN NHWC+KCRS | NCHW / NHWC | fcc NCHW | fcc NHWC | "
              "fcc NCHW / NHWC |\n"
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
  double fccTotal[2] = {0, 0};
  bool fccComplete[2] = {true, true};
  static const char *const kDir[] = {"forward", "data gradient",
                                     "filter gradient"};
  double total[kLayoutCount] = {0, 0, 0};
  bool complete[kLayoutCount] = {true, true, true};
  std::vector<std::string> notes;
  std::mt19937 rng(2);
  for (const ConvShape &cs : kConvs) {
    if (!o.wants(cs.name))
      continue;
    const int64_t n = o.batch;
    void *x = randomHalf(n * cs.c * cs.hw * cs.hw, -1.0f, 1.0f, rng);
    void *y = randomHalf(n * cs.k * cs.hw * cs.hw, -1.0f, 1.0f, rng);
    void *w = randomHalf(int64_t(cs.k) * cs.c * 9, -0.1f, 0.1f, rng);
    fcc_cuda_conv2d_plan *plans[2];
    for (int l = 0; l < 2; ++l) {
      plans[l] = fccPlan(cs, n, l == 0 ? FCC_LAYOUT_NCHW : FCC_LAYOUT_NHWC,
                         err);
      if (!plans[l]) {
        fccComplete[l] = false;
        notes.push_back(std::string(cs.name) + " fcc " +
                        (l == 0 ? "NCHW" : "NHWC") + " plan: " + err);
      }
    }
    for (int dir = 0; dir < 3; ++dir) {
      if (dir == 1 && !cs.dataGradient)
        continue;
      double ms[kLayoutCount];
      for (int l = 0; l < kLayoutCount; ++l) {
        ms[l] = convMs(h, cs, kLayouts[l], n, dir, o.iters, x, w, y, ws, err);
        if (ms[l] < 0) {
          complete[l] = false;
          notes.push_back(std::string(cs.name) + " " + kDir[dir] + " " +
                          kLayouts[l].name + ": " + err);
        } else {
          total[l] += cs.times * ms[l];
        }
      }
      char cell[kLayoutCount][32], ratio[32] = "-";
      for (int l = 0; l < kLayoutCount; ++l)
        if (ms[l] < 0)
          std::snprintf(cell[l], sizeof cell[l], "unsupported");
        else
          std::snprintf(cell[l], sizeof cell[l], "%.3f", ms[l]);
      if (ms[0] > 0 && ms[1] > 0)
        std::snprintf(ratio, sizeof ratio, "%.2f", ms[0] / ms[1]);
      double fms[2] = {-1.0, -1.0};
      char fcell[2][32], fratio[32] = "-";
      for (int l = 0; l < 2; ++l) {
        if (plans[l]) {
          fms[l] = fccConvMs(plans[l], dir, o.iters, x, w, y);
          fccTotal[l] += cs.times * fms[l];
          std::snprintf(fcell[l], sizeof fcell[l], "%.3f", fms[l]);
        } else {
          std::snprintf(fcell[l], sizeof fcell[l], "unsupported");
        }
      }
      if (fms[0] > 0 && fms[1] > 0)
        std::snprintf(fratio, sizeof fratio, "%.2f", fms[0] / fms[1]);
      std::printf("| %s | %d->%d @ %dx%d | %s | %s | %s | %s | %s | %s | %s "
                  "| %s |\n",
                  cs.name, cs.c, cs.k, cs.hw, cs.hw, kDir[dir], cell[0],
                  cell[1], cell[2], ratio, fcell[0], fcell[1], fratio);
    }
    for (fcc_cuda_conv2d_plan *p : plans)
      fcc_cuda_conv2d_destroy(p);
    fcc_cuda_free(x);
    fcc_cuda_free(y);
    fcc_cuda_free(w);
  }
  std::printf("\nConvolutions per training step (the layers above, all "
              "directions):");
  for (int l = 0; l < kLayoutCount; ++l)
    std::printf(" %s %.3f ms%s%s", kLayouts[l].name, total[l],
                complete[l] ? "" : " (incomplete)",
                l + 1 < kLayoutCount ? "," : "");
  if (total[1] > 0)
    std::printf("; NCHW / NHWC %.2f", total[0] / total[1]);
  std::printf("; fcc NCHW %.3f ms%s, fcc NHWC %.3f ms%s", fccTotal[0],
              fccComplete[0] ? "" : " (incomplete)", fccTotal[1],
              fccComplete[1] ? "" : " (incomplete)");
  if (fccTotal[1] > 0)
    std::printf("; fcc NCHW / NHWC %.2f", fccTotal[0] / fccTotal[1]);
  std::printf("\n");
  for (const std::string &note : notes)
    std::printf("  %s\n", note.c_str());
  std::printf("\n");
  fcc_cuda_free(ws);
  cudnnDestroy(h);
}
#endif // FCC_KERNEL_BENCH_EMULATED

// Every --layers name must name a BatchNorm layer or a convolution.
const Model &modelOf(const Options &o) {
  for (const Model &m : kModels)
    if (o.model == m.name)
      return m;
  usage(("--model: unknown model '" + o.model + "'").c_str());
}

// --layers names a BatchNorm, pool or convolution of the model.
void checkLayers(const Options &o) {
  const Model &m = modelOf(o);
  std::string known;
  auto add = [&](const char *name) {
    if ((" " + known + ",").find(std::string(" ") + name + ",") ==
        std::string::npos)
      known += (known.empty() ? "" : ", ") + std::string(name);
  };
  for (size_t i = 0; i < m.bnCount; ++i)
    add(m.bn[i].name);
  for (size_t i = 0; i < m.poolCount; ++i)
    add(m.pools[i].name);
#ifndef FCC_KERNEL_BENCH_EMULATED
  for (const ConvShape &c : kConvs)
    add(c.name);
#endif
  for (const std::string &name : o.layers)
    if ((", " + known + ",").find(", " + name + ",") == std::string::npos)
      usage(("--layers: unknown layer '" + name + "' (" + known + ")")
                .c_str());
}

} // namespace

int main(int argc, char **argv) {
  const Options o = parse(argc, argv);
  checkLayers(o);
  if (fcc_cuda_device_count() <= 0) {
    std::fprintf(stderr, "fcc-kernel-bench: no CUDA device found\n");
    return 2;
  }
  if (fcc_cuda_init(0) != 0)
    fail(std::string("fcc_cuda_init: ") + fcc_cuda_last_error());
#ifdef FCC_KERNEL_BENCH_EMULATED
  if (o.conv)
    usage("--parts conv: cuDNN is not emulated (use --parts bn,pool)");
  const double peak = 1e9; // placeholder: emulated times mean nothing
  std::printf("GPU: %s (timings of the emulation mean nothing); %d timed "
              "calls each\n\n",
              fcc_cuda_device_description(), o.iters);
  if (o.bn)
    benchBn(o, modelOf(o), peak);
  if (o.pool)
    benchPool(o, modelOf(o), peak);
#else
  int device = 0, clockKHz = 0, busBits = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&clockKHz, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&busBits, cudaDevAttrGlobalMemoryBusWidth, device);
  const double peak = double(clockKHz) * 1e3 * double(busBits) * 2.0 / 8.0;
  std::printf("GPU: %s, cuDNN %zu, peak memory bandwidth %.0f GB/s; %d "
              "timed calls each\n\n",
              fcc_cuda_device_description(), cudnnGetVersion(), peak * 1e-9,
              o.iters);
  if (o.bn)
    benchBn(o, modelOf(o), peak);
  if (o.pool)
    benchPool(o, modelOf(o), peak);
  if (o.conv)
    benchConv(o);
#endif
  fcc_cuda_shutdown();
  return 0;
}
