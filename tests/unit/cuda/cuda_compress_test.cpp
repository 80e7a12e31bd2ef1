//===- cuda_compress_test.cpp - GPU compressors against the CPU's ---------===//
//
// fcc_cuda_compress (runtime/cuda/compress.cu) must produce the same payload
// bytes as fcc_compress (runtime/cpu/compress.cpp) for every method, size and
// seed, and fcc_cuda_decompress_add / payload_sum / payload_scale the same
// results as the CPU's (bit-identical floats; NaN payload bits of decoded
// floats aside). Inputs: gradient-like values, a coarse grid (many exact
// magnitude ties: topk's tie-break by index), a wide exponent range (fp16 /
// bf16 rounding, subnormals, overflow), and non-finite values. Payloads are
// also placed at odd device addresses (allgather rows have no alignment).
//
// Compiled once, linked into cuda_kernels_test (skips without a GPU) and
// cuda_kernels_emulated_test (the kernels' code in the host emulation).
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/compress.h"
#include "fcc/runtime/cuda_compress.h"
#include "fcc/runtime/cuda_kernels.h"

#include "cuda_test.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace fcc::testing;
bool haveDevice() { return fcc::testing::haveCudaDevice(); }

using CudaCompress = CudaDeviceTest;

//===--- Inputs ---------------------------------------------------------------===//

enum Pattern { kGradient, kGrid, kWide, kNonFinite };

Floats makeInput(Pattern pattern, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Floats v(static_cast<size_t>(n));
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  std::uniform_int_distribution<int> grid(-4, 4), exponent(-40, 20),
      percent(0, 99);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  for (int64_t i = 0; i < n; ++i) {
    float x = 0.0f;
    switch (pattern) {
    case kGradient:
      x = normal(rng);
      if (percent(rng) < 3) // some exact zeros, both signs
        x = percent(rng) < 50 ? 0.0f : -0.0f;
      break;
    case kGrid:
      x = 0.25f * float(grid(rng));
      break;
    case kWide:
    case kNonFinite:
      x = std::ldexp(mantissa(rng), exponent(rng)) *
          (percent(rng) < 50 ? -1.0f : 1.0f);
      if (pattern == kNonFinite) {
        const int r = percent(rng);
        uint32_t bits = 0;
        if (r < 2)
          bits = 0x7fc00000u | uint32_t(percent(rng)); // quiet NaN, payload
        else if (r < 3)
          bits = 0xffa00000u | uint32_t(percent(rng)); // signalling, negative
        else if (r < 5)
          bits = r == 3 ? 0x7f800000u : 0xff800000u; // +-inf
        if (bits)
          std::memcpy(&x, &bits, 4);
      }
      break;
    }
    v[size_t(i)] = x;
  }
  return v;
}

// The CPU's payload of g (exactly its used bytes).
Bytes cpuPayload(const fcc_compressor &c, const Floats &g, uint64_t shared,
                 uint64_t priv) {
  const int64_t n = int64_t(g.size());
  Bytes p(size_t(std::max<int64_t>(fcc_compress_capacity(&c, n), 1)));
  const int64_t used = fcc_compress(&c, g.data(), n, shared, priv, p.data());
  p.resize(size_t(used));
  return p;
}

// Compresses g on the device (payload at offset bytes into its buffer) and
// checks the payload against the CPU's; then decompress_add with `scale`
// onto a base vector, against the CPU's.
void checkMethod(const std::string &spec, const Floats &g, uint64_t shared,
                 uint64_t priv, int offset, bool deviceSeeds = false) {
  SCOPED_TRACE(spec + " n=" + std::to_string(g.size()) + " seeds=" +
               std::to_string(shared) + "/" + std::to_string(priv) +
               " offset=" + std::to_string(offset) +
               (deviceSeeds ? " (device seeds)" : ""));
  const fcc_compressor c = parse(spec);
  const int64_t n = int64_t(g.size());
  const Bytes want = cpuPayload(c, g, shared, priv);
  const int64_t capacity = fcc_compress_capacity(&c, n);

  Dev dg(4 * n), payload(capacity + offset),
      ws(fcc_cuda_compress_workspace_bytes(&c, n)), seeds(16);
  put(dg.get(), g.data(), 4 * n);
  const uint64_t seedValues[2] = {shared, priv};
  put(seeds.get(), seedValues, 16);
  unsigned char *p = payload.get() + offset;
  const int64_t returned =
      deviceSeeds
          ? fcc_cuda_compress_dseed(
                &c, reinterpret_cast<const float *>(dg.get()), n,
                reinterpret_cast<const uint64_t *>(seeds.get()),
                reinterpret_cast<const uint64_t *>(seeds.get()) + 1, p,
                ws.get())
          : fcc_cuda_compress(&c, reinterpret_cast<const float *>(dg.get()), n,
                              shared, priv, p, ws.get());
  EXPECT_EQ(returned, fcc_compress_fixed_size(&c) ? int64_t(want.size())
                                                  : capacity);
  Bytes got = getBytes(p, capacity);
  ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
  EXPECT_EQ(fcc_compress_payload_bytes(&c, got.data(), n),
            int64_t(want.size()));
  got.resize(std::min(got.size(), want.size()));
  ASSERT_TRUE(sameBytes(got, want));

  // Decompression of the (identical) payload onto a base vector.
  for (float scale : {-0.5f}) {
    Floats base = makeInput(kGradient, n, 99);
    Floats cpu = base;
    fcc_decompress_add(&c, want.data(), n, shared, scale, cpu.data());
    Dev out(4 * n);
    put(out.get(), base.data(), 4 * n);
    if (deviceSeeds)
      fcc_cuda_decompress_add_dseed(
          &c, p, n, reinterpret_cast<const uint64_t *>(seeds.get()), scale,
          reinterpret_cast<float *>(out.get()), ws.get());
    else
      fcc_cuda_decompress_add(&c, p, n, shared, scale,
                              reinterpret_cast<float *>(out.get()), ws.get());
    EXPECT_TRUE(sameFloats(getFloats(out.get(), n), cpu)) << "scale " << scale;
  }
}

const char *const kSpecs[] = {
    "none",        "fp16",           "bf16",
    "randomk:0.1", "randomk:0.01:unbiased", "randomk:0.7",
    "randomk:1",   "randomk:0.001",  "topk:0.1",  "topk:0.003",
    "topk:0.5",    "topk:1",         "thresholdv:0.001",
    "thresholdv:0", "thresholdv:1000", "adaptive-threshold",
    "terngrad",    "qsgd",           "qsgd:1",
    "qsgd:4",      "qsgd:7:bucket=100", "qsgd:65535:bucket=9000",
    "qsgd:3:bucket=1"};

//===--- Tests -------------------------------------------------------------------===//

TEST_F(CudaCompress, PayloadsMatchTheCpu) {
  const int64_t sizes[] = {1, 7, 1000, 4097, 100000};
  for (int64_t n : sizes) {
    for (const char *spec : kSpecs) {
      // The largest size once (emulation time), the others with two seeds.
      const int runs = n >= 100000 ? 1 : 2;
      for (int r = 0; r < runs; ++r) {
        const uint64_t shared = 1234567 + 77 * uint64_t(r);
        const uint64_t priv = 0x9e3779b97f4a7c15ull ^ uint64_t(r);
        const Pattern pattern = r == 0 ? kGradient : kWide;
        checkMethod(spec, makeInput(pattern, n, uint32_t(n + r)), shared, priv,
                    /*offset=*/r == 0 ? 0 : 1);
        if (HasFatalFailure())
          return;
      }
    }
  }
}

// Exact magnitude ties: topk keeps the lower indices of the k-th key.
TEST_F(CudaCompress, TopkTiesGoToTheLowerIndex) {
  for (int64_t n : {7, 1000, 4097, 100000})
    for (const char *spec : {"topk:0.1", "topk:0.37", "topk:0.9",
                             "adaptive-threshold", "thresholdv:0.5"}) {
      checkMethod(spec, makeInput(kGrid, n, uint32_t(n)), 5, 6, 3);
      if (HasFatalFailure())
        return;
    }
}

// NaN and infinities: passed through, kept, or turned into NaN scales
// exactly as on the CPU (the QSGD norm of a NaN bucket keeps the first NaN's
// bits; terngrad's scale is the largest key, NaN above inf).
TEST_F(CudaCompress, NonFiniteInputs) {
  for (int64_t n : {7, 1000, 20000})
    for (const char *spec : kSpecs) {
      checkMethod(spec, makeInput(kNonFinite, n, uint32_t(3 * n)), 11, 12, 2);
      if (HasFatalFailure())
        return;
    }
}

// A single NaN in a large bucket (the parallel norm path) and an infinity.
TEST_F(CudaCompress, QsgdNormOfLargeBuckets) {
  const int64_t n = 50000;
  Floats g = makeInput(kGradient, n, 17);
  checkMethod("qsgd", g, 1, 2, 0);
  checkMethod("qsgd:15:bucket=20000", g, 1, 2, 0);
  Floats withNaN = g;
  uint32_t nanBits = 0xff812345u, nanBits2 = 0x7fc00001u;
  std::memcpy(&withNaN[30001], &nanBits, 4);
  std::memcpy(&withNaN[40000], &nanBits2, 4);
  checkMethod("qsgd", withNaN, 1, 2, 0);
  checkMethod("qsgd:15:bucket=20000", withNaN, 1, 2, 0);
  Floats withInf = g;
  withInf[12345] = -std::numeric_limits<float>::infinity();
  checkMethod("qsgd", withInf, 1, 2, 0);
  // Values near FLT_MAX: the norm overflows fp32.
  Floats huge = g;
  huge[7] = 3e38f;
  huge[9] = -3e38f;
  checkMethod("qsgd", huge, 1, 2, 0);
}

// A bucket whose serial double sum (the CPU's) and exact sum of squares
// round to different float norms: g0^2 + g1^2 just below the square of a
// float midpoint, then thousands of entries whose squares (2^-54) the serial
// sum drops one by one but an exact (or parallel) sum keeps. The GPU's
// parallel norm must notice the ambiguity and redo the serial sum.
TEST_F(CudaCompress, QsgdNormAtAFloatRoundingBoundary) {
  const int64_t tiny = 9998, n = tiny + 2; // > 8192: the parallel norm path
  const float g0 = 1.0f + 5 * std::ldexp(1.0f, -23);
  const double mid = double(g0) + std::ldexp(1.0, -24); // a float midpoint
  const float tinyValue = std::ldexp(1.0f, -27);        // squares to 2^-54
  auto serial = [&](float g1) {
    double sum = 0;
    sum += double(g0) * double(g0);
    sum += double(g1) * double(g1);
    for (int64_t i = 0; i < tiny; ++i)
      sum += double(tinyValue) * double(tinyValue);
    return sum;
  };
  float g1 = float(std::sqrt(mid * mid - double(g0) * double(g0)));
  bool found = false;
  for (int step = 0; step < 100000 && !found; ++step) {
    const double cpu = serial(g1);
    const double exact = double(g0) * double(g0) + double(g1) * double(g1) +
                         double(tiny) * std::ldexp(1.0, -54);
    if (float(std::sqrt(cpu)) != float(std::sqrt(exact)))
      found = true;
    else
      g1 = std::nextafter(g1, 0.0f);
  }
  ASSERT_TRUE(found) << "no boundary case constructed";
  Floats g(static_cast<size_t>(n), tinyValue);
  g[0] = g0;
  g[1] = g1;
  checkMethod("qsgd", g, 1, 2, 0);
  std::swap(g[0], g[5000]); // the big entries elsewhere in the bucket
  checkMethod("qsgd:3", g, 1, 2, 1);
}

// The seeds from device memory give the same payloads.
TEST_F(CudaCompress, DeviceSeeds) {
  for (const char *spec :
       {"randomk:0.05", "randomk:0.5:unbiased", "terngrad", "qsgd:9"})
    checkMethod(spec, makeInput(kGradient, 4097, 8), 42, 43, 0, true);
}

// Compression and decompression captured once in a graph and replayed with
// each step's gradient and seeds (device memory): no host round trip inside.
TEST_F(CudaCompress, GraphReplaysWithEachStepsSeeds) {
  const int64_t n = 4097;
  for (const char *spec : {"randomk:0.05:unbiased", "topk:0.02",
                           "adaptive-threshold", "terngrad", "qsgd:5"}) {
    SCOPED_TRACE(spec);
    const fcc_compressor c = parse(spec);
    const int64_t capacity = fcc_compress_capacity(&c, n);
    Dev dg(4 * n), payload(capacity), out(4 * n),
        ws(fcc_cuda_compress_workspace_bytes(&c, n)), seeds(16);
    const uint64_t *shared = reinterpret_cast<const uint64_t *>(seeds.get());
    float *dout = reinterpret_cast<float *>(out.get());
    ASSERT_EQ(fcc_cuda_graph_begin(), 0) << fcc_cuda_last_error();
    fcc_cuda_compress_dseed(&c, reinterpret_cast<const float *>(dg.get()), n,
                            shared, shared + 1, payload.get(), ws.get());
    fcc_cuda_decompress_add_dseed(&c, payload.get(), n, shared, 1.0f, dout,
                                  ws.get());
    void *graph = nullptr;
    ASSERT_EQ(fcc_cuda_graph_end(&graph), 0) << fcc_cuda_last_error();
    for (uint32_t step = 0; step < 3; ++step) {
      const Floats g = makeInput(kGradient, n, 1000 + step);
      const uint64_t seedValues[2] = {7 + step, 70 + step};
      const Floats zeros(static_cast<size_t>(n), 0.0f);
      put(dg.get(), g.data(), 4 * n);
      put(seeds.get(), seedValues, 16);
      put(out.get(), zeros.data(), 4 * n);
      ASSERT_EQ(fcc_cuda_graph_launch(graph), 0) << fcc_cuda_last_error();
      const Bytes want = cpuPayload(c, g, seedValues[0], seedValues[1]);
      Bytes got = getBytes(payload.get(), capacity);
      got.resize(want.size());
      EXPECT_TRUE(sameBytes(got, want)) << "step " << step;
      Floats cpu = zeros;
      fcc_decompress_add(&c, want.data(), n, seedValues[0], 1.0f, cpu.data());
      EXPECT_TRUE(sameFloats(getFloats(out.get(), n), cpu)) << "step " << step;
    }
    fcc_cuda_graph_destroy(graph);
  }
}

// payload_sum / payload_scale of the summable methods on CPU-made payloads.
TEST_F(CudaCompress, PayloadSumAndScaleMatchTheCpu) {
  for (int64_t n : {1, 7, 1000, 4097})
    for (const char *spec : {"none", "fp16", "bf16", "randomk:0.1",
                             "randomk:0.5:unbiased"})
      for (Pattern pattern : {kGradient, kWide, kNonFinite}) {
        SCOPED_TRACE(std::string(spec) + " n=" + std::to_string(n) +
                     " pattern=" + std::to_string(int(pattern)));
        const fcc_compressor c = parse(spec);
        Floats big = makeInput(kWide, n, 5);
        for (float &x : big) // fp16 sums that overflow to infinity
          x *= 4096.0f;
        const Bytes a = cpuPayload(c, makeInput(pattern, n, 1), 3, 4);
        const Bytes b = cpuPayload(c, pattern == kWide ? big
                                                       : makeInput(pattern, n, 2),
                                   3, 4);
        const int64_t bytes = int64_t(a.size());
        Dev da(bytes + 1), db(bytes + 3);
        // The sum in place of b's copy too (inout == in).
        for (bool self : {false, true}) {
          Bytes cpu = a;
          fcc_payload_sum(&c, cpu.data(), self ? cpu.data() : b.data(), n);
          put(da.get() + 1, a.data(), bytes);
          put(db.get() + 3, b.data(), bytes);
          fcc_cuda_payload_sum(&c, da.get() + 1,
                               self ? da.get() + 1 : db.get() + 3, n);
          EXPECT_TRUE(sameBytes(getBytes(da.get() + 1, bytes), cpu))
              << "sum, self " << self;
        }
        for (float scale : {0.25f, 3.0f, -1e30f, 0.0f}) {
          Bytes cpu = a;
          fcc_payload_scale(&c, cpu.data(), n, scale);
          put(da.get() + 1, a.data(), bytes);
          fcc_cuda_payload_scale(&c, da.get() + 1, n, scale);
          EXPECT_TRUE(sameBytes(getBytes(da.get() + 1, bytes), cpu))
              << "scale " << scale;
        }
      }
}

// A payload made on the CPU decodes the same on the GPU (and the GPU's was
// checked byte for byte above): residual g - decompress(compress(g)).
TEST_F(CudaCompress, ErrorFeedbackResidual) {
  const int64_t n = 4097;
  const Floats g = makeInput(kGradient, n, 77);
  for (const char *spec : {"topk:0.01", "randomk:0.1:unbiased", "qsgd:15",
                           "terngrad", "adaptive-threshold"}) {
    SCOPED_TRACE(spec);
    const fcc_compressor c = parse(spec);
    const Bytes payload = cpuPayload(c, g, 8, 9);
    Floats cpu = g;
    fcc_decompress_add(&c, payload.data(), n, 8, -1.0f, cpu.data());
    Dev dp(int64_t(payload.size())), out(4 * n),
        ws(fcc_cuda_compress_workspace_bytes(&c, n));
    put(dp.get(), payload.data(), int64_t(payload.size()));
    put(out.get(), g.data(), 4 * n);
    fcc_cuda_decompress_add(&c, dp.get(), n, 8, -1.0f,
                            reinterpret_cast<float *>(out.get()), ws.get());
    EXPECT_TRUE(sameFloats(getFloats(out.get(), n), cpu));
  }
}

// Larger sizes and more seeds (minutes in the emulation; run with
// --gtest_also_run_disabled_tests --gtest_filter=CudaCompress.DISABLED_*).
TEST_F(CudaCompress, DISABLED_LargeSizes) {
  for (int64_t n : {int64_t(1) << 20, int64_t(3000017)})
    for (const char *spec :
         {"randomk:0.001", "randomk:0.3", "randomk:1:unbiased", "topk:0.001",
          "topk:0.2", "thresholdv:0.002", "adaptive-threshold", "terngrad",
          "qsgd", "qsgd:255:bucket=100000", "qsgd:5:bucket=777", "fp16"})
      for (int r = 0; r < 2; ++r) {
        checkMethod(spec, makeInput(r ? kGrid : kGradient, n, uint32_t(r)),
                    uint64_t(r) + 100, uint64_t(r) + 200, r);
        if (HasFatalFailure())
          return;
      }
}

// Bad arguments are sticky errors, and nothing is launched.
TEST_F(CudaCompress, BadArgumentsAreStickyErrors) {
  const fcc_compressor c = parse("topk:0.1");
  EXPECT_EQ(fcc_cuda_compress_workspace_bytes(&c, 0), 0);
  EXPECT_GT(fcc_cuda_compress_workspace_bytes(&c, 100), 0);
  const fcc_compressor none = parse("none");
  EXPECT_EQ(fcc_cuda_compress_workspace_bytes(&none, 1000), 0);
  {
    Dev payload(64);
    EXPECT_EQ(
        fcc_cuda_compress(&c, nullptr, 100, 1, 2, payload.get(), nullptr), -1);
  }
  EXPECT_NE(std::string(fcc_cuda_last_error()).find("workspace"),
            std::string::npos)
      << fcc_cuda_last_error();
  EXPECT_NE(fcc_cuda_synchronize(), 0) << "sticky";
  // A new context starts clean.
  fcc_cuda_shutdown();
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
}

} // namespace
