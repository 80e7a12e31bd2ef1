//===- cuda_kernels_test.cpp - The CUDA runtime against the CPU kernels ---===//
//
// Every function of cuda_kernels.h on random inputs, compared with the CPU
// kernel it mirrors (runtime/cpu, which runtime_kernels_test checks against
// double-precision references): fp32, and fp16/bf16 where the storage type
// matters (inputs rounded to the half type, the CPU result rounded the same
// way). Where the GPU performs the same float operations in the same order
// (elementwise maps, broadcasting, pooling, casts, dropout masks, SGD, EMA,
// batch building) the results must be bit-identical; where it sums in a
// different order (reductions in double, cuDNN, cuBLAS) or calls the CUDA
// math library (exp, expm1) they must agree to a tolerance. Also: graph
// capture replaying with step-varying device scalars, the device-side loss
// scale update against a host reference of the trainer's rule, the timing
// cache, and the sticky error model.
//
// Without a CUDA device every test is skipped (GTEST_SKIP), so the test
// passes on CPU-only CI machines; it must compile everywhere the CUDA
// runtime is built.
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/cpu_kernels.h"
#include "fcc/runtime/cuda_kernels.h"
#include "fcc/runtime/program.h"

#include "Augment.h"

#include "cuda_test.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Floats = std::vector<float>;

using fcc::testing::CudaDeviceTest;
bool haveDevice() { return fcc::testing::haveCudaDevice(); }

// Every test: skipped without a device (cuda_test.h).
using Cuda = CudaDeviceTest;

//===--- Device buffers ---------------------------------------------------===//

// A zero-filled device buffer, freed with the object.
// Sets an environment variable (the kernels' A/B switches, read at each
// call) for a scope; unset after it.
class ScopedEnv {
public:
  ScopedEnv(const char *name, const char *value) : name_(name) {
    setenv(name, value, 1);
  }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv &) = delete;
  ScopedEnv &operator=(const ScopedEnv &) = delete;

private:
  const char *name_;
};

class Buffer {
public:
  explicit Buffer(int64_t bytes) : bytes_(bytes) {
    p_ = fcc_cuda_malloc(bytes);
    EXPECT_NE(p_, nullptr) << fcc_cuda_last_error();
  }
  ~Buffer() { fcc_cuda_free(p_); }
  Buffer(const Buffer &) = delete;
  Buffer &operator=(const Buffer &) = delete;
  void *get() const { return p_; }
  float *f() const { return static_cast<float *>(p_); }
  int64_t bytes() const { return bytes_; }

private:
  void *p_ = nullptr;
  int64_t bytes_ = 0;
};

int64_t elementSize(int dtype) { return dtype == FCC_DTYPE_F32 ? 4 : 2; }

// Host floats -> device tensor of type dtype (converted on the device by
// fcc_cuda_cast, so values must already be representable to compare
// exactly).
std::unique_ptr<Buffer> upload(const Floats &v, int dtype = FCC_DTYPE_F32) {
  const int64_t n = int64_t(v.size());
  auto f32 = std::make_unique<Buffer>(std::max<int64_t>(n, 1) * 4);
  if (n > 0)
    EXPECT_EQ(fcc_cuda_copy_to_device(f32->get(), v.data(), n * 4), 0)
        << fcc_cuda_last_error();
  if (dtype == FCC_DTYPE_F32)
    return f32;
  auto out = std::make_unique<Buffer>(std::max<int64_t>(n, 1) * 2);
  fcc_cuda_cast(f32->get(), FCC_DTYPE_F32, out->get(), dtype, n);
  return out;
}

std::unique_ptr<Buffer> uploadBytes(const void *data, int64_t bytes) {
  auto b = std::make_unique<Buffer>(std::max<int64_t>(bytes, 1));
  if (bytes > 0)
    EXPECT_EQ(fcc_cuda_copy_to_device(b->get(), data, bytes), 0)
        << fcc_cuda_last_error();
  return b;
}

// Device tensor of type dtype -> host floats.
Floats download(const void *p, int64_t n, int dtype = FCC_DTYPE_F32) {
  Floats out(size_t(std::max<int64_t>(n, 0)));
  if (n <= 0)
    return out;
  if (dtype == FCC_DTYPE_F32) {
    EXPECT_EQ(fcc_cuda_copy_to_host(out.data(), p, n * 4), 0)
        << fcc_cuda_last_error();
    return out;
  }
  Buffer f32(n * 4);
  fcc_cuda_cast(p, dtype, f32.get(), FCC_DTYPE_F32, n);
  EXPECT_EQ(fcc_cuda_copy_to_host(out.data(), f32.get(), n * 4), 0)
      << fcc_cuda_last_error();
  return out;
}

//===--- Host data ------------------------------------------------------------===//

Floats randomFloats(std::mt19937 &rng, size_t n, float lo = -1.0f,
                    float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Floats v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

// Values on a coarse grid: many exact ties (pooling arg-max order).
Floats gridFloats(std::mt19937 &rng, size_t n) {
  std::uniform_int_distribution<int> dist(-4, 4);
  Floats v(n);
  for (float &x : v)
    x = 0.25f * float(dist(rng));
  return v;
}

// Rounds in place to the storage type (what a device tensor of that type
// holds).
void roundTo(Floats &v, int dtype) {
  if (dtype == FCC_DTYPE_F16)
    fcc_cpu_round_f16(v.data(), int64_t(v.size()));
  else if (dtype == FCC_DTYPE_BF16)
    fcc_cpu_round_bf16(v.data(), int64_t(v.size()));
}

Floats rounded(Floats v, int dtype) {
  roundTo(v, dtype);
  return v;
}

// |got - want| <= atol + rtol * (|want| + scale) elementwise (NaN matches
// NaN); rtol = atol = 0 demands bit-identical values (up to NaN payloads
// and the sign of zero).
::testing::AssertionResult near(const Floats &got, const Floats &want,
                                double rtol, double atol = 0.0,
                                double scale = 0.0) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != " << want.size();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    bool ok;
    if (std::isnan(w) || std::isnan(g))
      ok = std::isnan(w) && std::isnan(g);
    else if (std::isinf(w) || std::isinf(g))
      ok = g == w;
    else
      ok = std::fabs(g - w) <= atol + rtol * (std::fabs(w) + scale);
    if (!ok && bad++ == 0)
      first = i;
  }
  if (bad == 0)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << want.size() << " elements differ; first at "
         << first << ": got " << got[first] << ", expected " << want[first];
}

double maxAbs(const Floats &v) {
  double m = 0.0;
  for (float x : v)
    m = std::max(m, std::fabs(double(x)));
  return m;
}

// Tolerance of results that are only rounded to the storage type once
// more than on the CPU (or computed in another order): a few units in the
// last place of the type.
double typeTolerance(int dtype) {
  switch (dtype) {
  case FCC_DTYPE_F16:
    return 2e-3; // 2^-10 mantissa
  case FCC_DTYPE_BF16:
    return 1.6e-2; // 2^-7 mantissa
  default:
    return 2e-6;
  }
}

const int kHalfTypes[] = {FCC_DTYPE_F32, FCC_DTYPE_F16, FCC_DTYPE_BF16};

std::string typeName(int dtype) {
  return dtype == FCC_DTYPE_F32 ? "f32" : dtype == FCC_DTYPE_F16 ? "f16"
                                                                 : "bf16";
}

//===----------------------------------------------------------------------===//
// Casts
//===----------------------------------------------------------------------===//

TEST_F(Cuda, CastRoundsLikeTheCpu) {
  Floats v = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f,
              -65520.0f, 1e-8f, 6e-8f, 3e-5f, 5.96e-8f, 2.98e-8f,
              1.00048828125f, 1.000732421875f, 1.0009765625f, 3.0e38f,
              INFINITY, -INFINITY, NAN, 1.00390625f, 1.005859375f};
  std::mt19937 rng(1);
  for (float x : randomFloats(rng, 4000, -70000.0f, 70000.0f))
    v.push_back(x);
  for (float x : randomFloats(rng, 4000, -1e-4f, 1e-4f))
    v.push_back(x);
  const int64_t n = int64_t(v.size());
  ASSERT_NE(n % 4, 0);
  // n elements one per thread; n rounded down to a multiple of 4, four
  // per thread (16-byte vectors of floats).
  for (int64_t count : {n, n / 4 * 4})
    for (int to : {FCC_DTYPE_F16, FCC_DTYPE_BF16}) {
      const Floats w(v.begin(), v.begin() + count);
      auto x = upload(w);
      Buffer half(count * 2), back(count * 4);
      fcc_cuda_cast(x->get(), FCC_DTYPE_F32, half.get(), to, count);
      fcc_cuda_cast(half.get(), to, back.get(), FCC_DTYPE_F32, count);
      EXPECT_TRUE(near(download(back.get(), count), rounded(w, to), 0.0))
          << typeName(to) << " " << count;
    }
  // Half to half: through fp32, rounding once more.
  auto x = upload(v);
  Buffer f16(n * 2), bf16(n * 2);
  fcc_cuda_cast(x->get(), FCC_DTYPE_F32, f16.get(), FCC_DTYPE_F16, n);
  fcc_cuda_cast(f16.get(), FCC_DTYPE_F16, bf16.get(), FCC_DTYPE_BF16, n);
  EXPECT_TRUE(near(download(bf16.get(), n, FCC_DTYPE_BF16),
                   rounded(rounded(v, FCC_DTYPE_F16), FCC_DTYPE_BF16), 0.0));
  // Same type: a copy.
  Buffer copy(n * 4);
  fcc_cuda_cast(x->get(), FCC_DTYPE_F32, copy.get(), FCC_DTYPE_F32, n);
  EXPECT_TRUE(near(download(copy.get(), n), v, 0.0));
}

// Several casts in one launch (the train step's master weights): each item
// as fcc_cuda_cast rounds it (CPU rounding as the reference), whatever its
// count and alignment (vectors of four or single elements per item), and
// nothing outside an item's count is written.
TEST_F(Cuda, CastMultiMatchesSingleCasts) {
  std::mt19937 rng(3);
  const Floats v = randomFloats(rng, 3000, -70000.0f, 70000.0f);
  // {first element, count}: vector-friendly, odd count, misaligned start
  // (one float past a 16-byte boundary), empty-ish, the largest.
  const std::pair<int64_t, int64_t> parts[] = {
      {0, 400}, {400, 37}, {441, 100}, {544, 1}, {548, 2452}};
  auto x = upload(v);
  for (int to : {FCC_DTYPE_F16, FCC_DTYPE_BF16})
    for (const char *scalar : {"0", "1"}) {
      SCOPED_TRACE(typeName(to) + (scalar[0] == '1' ? " FCC_CUDA_SCALAR=1" : ""));
      ScopedEnv env("FCC_CUDA_SCALAR", scalar);
      Buffer y(3000 * 2 + 16);
      // Sentinel bytes everywhere: the gaps between items must keep them.
      std::vector<unsigned char> sentinel(3000 * 2 + 16, 0x7b);
      ASSERT_EQ(fcc_cuda_copy_to_device(y.get(), sentinel.data(), int64_t(sentinel.size())), 0);
      std::vector<fcc_cuda_cast_item> items;
      int64_t most = 0;
      for (auto [at, count] : parts) {
        items.push_back({x->f() + at, static_cast<char *>(y.get()) + 2 * at,
                         count});
        most = std::max(most, count);
      }
      auto table = uploadBytes(items.data(),
                               int64_t(items.size() * sizeof(fcc_cuda_cast_item)));
      fcc_cuda_cast_multi(static_cast<const fcc_cuda_cast_item *>(table->get()),
                          int(items.size()), FCC_DTYPE_F32, to, most);
      const Floats got = download(y.get(), 3000, to);
      for (auto [at, count] : parts) {
        const Floats want =
            rounded(Floats(v.begin() + at, v.begin() + at + count), to);
        EXPECT_TRUE(near(Floats(got.begin() + at, got.begin() + at + count),
                         want, 0.0))
            << "item at " << at;
      }
      // Elements 437..440 and 541..543 belong to no item.
      std::vector<unsigned char> raw(3000 * 2);
      ASSERT_EQ(fcc_cuda_copy_to_host(raw.data(), y.get(), int64_t(raw.size())), 0);
      for (int64_t e : {437, 440, 541, 543})
        EXPECT_EQ(raw[size_t(2 * e)], 0x7b) << "element " << e << " written";
    }
}

//===----------------------------------------------------------------------===//
// Elementwise maps
//===----------------------------------------------------------------------===//

TEST_F(Cuda, ActivationsAffineMulFlip) {
  std::mt19937 rng(2);
  const int64_t n = 2, c = 3, h = 5, w = 7, count = n * c * h * w;
  for (int dtype : kHalfTypes) {
    SCOPED_TRACE(typeName(dtype));
    const Floats x = rounded(randomFloats(rng, count, -3.0f, 3.0f), dtype);
    const Floats dy = rounded(randomFloats(rng, count), dtype);
    auto dx_ = upload(x, dtype), ddy = upload(dy, dtype);
    Buffer out(count * 4);
    const float alpha = 1.3f;
    Floats want(count);

    fcc_cuda_relu_forward(dx_->get(), out.get(), count, dtype);
    fcc_cpu_relu_forward(x.data(), want.data(), count);
    EXPECT_TRUE(near(download(out.get(), count, dtype), rounded(want, dtype), 0.0));

    fcc_cuda_relu_backward(dx_->get(), ddy->get(), out.get(), count, dtype);
    fcc_cpu_relu_backward(x.data(), dy.data(), want.data(), count);
    EXPECT_TRUE(near(download(out.get(), count, dtype), rounded(want, dtype), 0.0));

    // expm1f/expf of the CUDA math library: an ulp or two from glibc's.
    fcc_cuda_celu_forward(dx_->get(), alpha, out.get(), count, dtype);
    fcc_cpu_celu_forward(x.data(), alpha, want.data(), count);
    EXPECT_TRUE(near(download(out.get(), count, dtype), rounded(want, dtype),
                     typeTolerance(dtype)));

    fcc_cuda_celu_backward(dx_->get(), ddy->get(), alpha, out.get(), count,
                           dtype);
    fcc_cpu_celu_backward(x.data(), dy.data(), alpha, want.data(), count);
    EXPECT_TRUE(near(download(out.get(), count, dtype), rounded(want, dtype),
                     typeTolerance(dtype)));

    fcc_cuda_affine(dx_->get(), -0.7f, 0.25f, out.get(), count, dtype);
    fcc_cpu_affine(x.data(), -0.7f, 0.25f, want.data(), count);
    EXPECT_TRUE(near(download(out.get(), count, dtype), rounded(want, dtype), 0.0));

    fcc_cuda_mul_elementwise(dx_->get(), ddy->get(), out.get(), count, dtype);
    fcc_cpu_mul_elementwise(x.data(), dy.data(), want.data(), count);
    EXPECT_TRUE(near(download(out.get(), count, dtype), rounded(want, dtype), 0.0));

    fcc_cuda_flip_w(dx_->get(), n, c, h, w, out.get(), dtype);
    fcc_cpu_flip_w(x.data(), n, c, h, w, want.data());
    EXPECT_TRUE(near(download(out.get(), count, dtype), want, 0.0));

    // In place (the memory planner lets relu write over its input).
    auto inPlace = upload(x, dtype);
    fcc_cuda_relu_forward(inPlace->get(), inPlace->get(), count, dtype);
    fcc_cpu_relu_forward(x.data(), want.data(), count);
    EXPECT_TRUE(near(download(inPlace->get(), count, dtype), want, 0.0));
  }
}

//===----------------------------------------------------------------------===//
// Broadcasting and reductions
//===----------------------------------------------------------------------===//

int64_t product(const std::vector<int64_t> &s) {
  int64_t p = 1;
  for (int64_t v : s)
    p *= v;
  return p;
}

TEST_F(Cuda, BinaryBroadcasting) {
  struct Shapes {
    std::vector<int64_t> a, b, y;
  };
  // The same-shape cases take 16-byte vectors when the count allows (120
  // elements) and single elements otherwise (105).
  const Shapes cases[] = {
      {{2, 3, 4, 5}, {2, 3, 4, 5}, {2, 3, 4, 5}},
      {{3, 5, 7}, {3, 5, 7}, {3, 5, 7}},
      {{2, 3, 4, 5}, {1, 3, 1, 1}, {2, 3, 4, 5}},
      {{2, 1, 4, 1}, {1, 3, 1, 5}, {2, 3, 4, 5}},
      {{2, 3, 4, 5}, {1, 1, 1, 1}, {2, 3, 4, 5}},
      {{1, 1, 1, 5}, {2, 3, 4, 5}, {2, 3, 4, 5}},
      {{7, 1}, {1, 9}, {7, 9}},
      {{}, {}, {}},
  };
  std::mt19937 rng(3);
  for (int dtype : {FCC_DTYPE_F32, FCC_DTYPE_F16}) {
    for (const Shapes &s : cases) {
      const int rank = int(s.y.size());
      Floats a = rounded(randomFloats(rng, size_t(product(s.a))), dtype);
      Floats b = rounded(randomFloats(rng, size_t(product(s.b)), 0.5f, 2.0f),
                         dtype);
      auto da = upload(a, dtype), db = upload(b, dtype);
      const int64_t count = product(s.y);
      Buffer y(count * 4);
      for (int op = FCC_BINARY_ADD; op <= FCC_BINARY_DIV; ++op) {
        SCOPED_TRACE(typeName(dtype) + " rank " + std::to_string(rank) +
                     " op " + std::to_string(op));
        ASSERT_EQ(fcc_cuda_binary(op, da->get(), s.a.data(), db->get(),
                                  s.b.data(), s.y.data(), rank, y.get(), dtype),
                  0)
            << fcc_cuda_last_error();
        Floats want(static_cast<size_t>(count));
        ASSERT_EQ(fcc_cpu_binary(op, a.data(), s.a.data(), b.data(),
                                 s.b.data(), s.y.data(), rank, want.data()),
                  FCC_OK);
        EXPECT_TRUE(near(download(y.get(), count, dtype), rounded(want, dtype),
                         0.0));
      }
    }
  }
  // Shapes that do not broadcast: an error code and a message naming the
  // function, nothing sticky.
  const int64_t a[] = {2, 3}, b[] = {3, 2}, y[] = {2, 3};
  Buffer buf(64);
  EXPECT_EQ(fcc_cuda_binary(FCC_BINARY_ADD, buf.get(), a, buf.get(), b, y, 2,
                            buf.get(), FCC_DTYPE_F32),
            FCC_ERR_INVALID);
  EXPECT_NE(std::string(fcc_cuda_last_error()).find("fcc_cuda_binary"),
            std::string::npos);
}

TEST_F(Cuda, ReduceSumTo) {
  struct Shapes {
    std::vector<int64_t> x, y;
  };
  const Shapes cases[] = {
      {{4, 3, 5, 6}, {1, 3, 1, 1}}, {{4, 3, 5, 6}, {4, 1, 5, 1}},
      {{4, 3, 5, 6}, {1, 1, 1, 6}}, {{4, 3, 5, 6}, {4, 3, 5, 6}},
      {{4, 3, 5, 6}, {1, 1, 1, 1}}, {{64, 2, 40}, {1, 2, 1}}, // long: per block
      {{37, 10}, {1, 10}},
  };
  std::mt19937 rng(4);
  for (int dtype : {FCC_DTYPE_F32, FCC_DTYPE_F16}) {
    for (const Shapes &s : cases) {
      SCOPED_TRACE(typeName(dtype) + " " + std::to_string(product(s.x)) +
                   " -> " + std::to_string(product(s.y)));
      const Floats x = rounded(randomFloats(rng, size_t(product(s.x))), dtype);
      auto dx = upload(x, dtype);
      Buffer y(product(s.y) * 4);
      ASSERT_EQ(fcc_cuda_reduce_sum_to(dx->get(), s.x.data(), s.y.data(),
                                       int(s.x.size()), y.get(), dtype),
                0)
          << fcc_cuda_last_error();
      Floats want(static_cast<size_t>(product(s.y)));
      ASSERT_EQ(fcc_cpu_reduce_sum_to(x.data(), s.x.data(), s.y.data(),
                                      int(s.x.size()), want.data()),
                FCC_OK);
      // Double sums in another order: the float results agree to an ulp
      // of the magnitude of the summands.
      EXPECT_TRUE(near(download(y.get(), product(s.y), dtype),
                       rounded(want, dtype), typeTolerance(dtype), 1e-6));
    }
  }
}

TEST_F(Cuda, Softmax) {
  std::mt19937 rng(5);
  struct Shape {
    int64_t outer, dim, inner;
  };
  for (int dtype : {FCC_DTYPE_F32, FCC_DTYPE_F16})
    for (Shape s : {Shape{3, 7, 1}, Shape{2, 5, 6}, Shape{1, 1000, 1}}) {
      const int64_t count = s.outer * s.dim * s.inner;
      const Floats x = rounded(randomFloats(rng, size_t(count), -5.0f, 5.0f),
                               dtype);
      auto dx = upload(x, dtype);
      Buffer y(count * 4);
      fcc_cuda_softmax(dx->get(), s.outer, s.dim, s.inner, y.get(), dtype);
      Floats want(static_cast<size_t>(count));
      fcc_cpu_softmax(x.data(), s.outer, s.dim, s.inner, want.data());
      EXPECT_TRUE(near(download(y.get(), count, dtype), rounded(want, dtype),
                       typeTolerance(dtype) * 4, 1e-7))
          << typeName(dtype) << " " << s.outer << "x" << s.dim << "x"
          << s.inner;
    }
}

//===----------------------------------------------------------------------===//
// Dropout (bit-identical Philox masks) and graph capture
//===----------------------------------------------------------------------===//

TEST_F(Cuda, DropoutMaskIsBitIdentical) {
  const int64_t count = 1001; // not a multiple of the Philox block
  for (float ratio : {0.3f, 0.0f, 1.0f, 0.9f}) {
    for (uint64_t seed : {uint64_t(0), uint64_t(12345678901234567ull)}) {
      auto dseed = uploadBytes(&seed, sizeof seed);
      const uint64_t stream = 0x300000000ull + 7;
      Buffer mask(count * 4);
      fcc_cuda_dropout_mask(static_cast<const uint64_t *>(dseed->get()),
                            stream, ratio, mask.get(), count, FCC_DTYPE_F32);
      Floats want(count);
      fcc_cpu_dropout_mask(seed, stream, ratio, want.data(), count);
      EXPECT_TRUE(near(download(mask.get(), count), want, 0.0))
          << "ratio " << ratio << " seed " << seed;
      // Half masks hold the rounded keep factor.
      Buffer half(count * 2);
      fcc_cuda_dropout_mask(static_cast<const uint64_t *>(dseed->get()),
                            stream, ratio, half.get(), count, FCC_DTYPE_F16);
      EXPECT_TRUE(near(download(half.get(), count, FCC_DTYPE_F16),
                       rounded(want, FCC_DTYPE_F16), 0.0));
    }
  }
}

TEST_F(Cuda, GraphReplaysWithTheStepsScalars) {
  const int64_t count = 517;
  uint64_t seed = 1;
  auto dseed = uploadBytes(&seed, sizeof seed);
  Buffer mask(count * 4);
  ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
  ASSERT_EQ(fcc_cuda_graph_begin(), 0) << fcc_cuda_last_error();
  fcc_cuda_dropout_mask(static_cast<const uint64_t *>(dseed->get()), 5, 0.5f,
                        mask.get(), count, FCC_DTYPE_F32);
  fcc_cuda_affine(mask.get(), 3.0f, 1.0f, mask.get(), count, FCC_DTYPE_F32);
  void *exec = nullptr;
  ASSERT_EQ(fcc_cuda_graph_end(&exec), 0) << fcc_cuda_last_error();
  ASSERT_NE(exec, nullptr);
  for (uint64_t step : {uint64_t(11), uint64_t(99), uint64_t(1) << 40}) {
    ASSERT_EQ(fcc_cuda_copy_to_device(dseed->get(), &step, sizeof step), 0);
    ASSERT_EQ(fcc_cuda_graph_launch(exec), 0) << fcc_cuda_last_error();
    Floats want(count);
    fcc_cpu_dropout_mask(step, 5, 0.5f, want.data(), count);
    fcc_cpu_affine(want.data(), 3.0f, 1.0f, want.data(), count);
    EXPECT_TRUE(near(download(mask.get(), count), want, 0.0)) << step;
  }
  fcc_cuda_graph_destroy(exec);
}

//===----------------------------------------------------------------------===//
// Pooling
//===----------------------------------------------------------------------===//

// NCHW <-> NHWC copies of an n x c x h x w tensor.
Floats toNhwc(const Floats &v, int64_t n, int64_t c, int64_t h, int64_t w) {
  Floats out(v.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < c; ++k)
      for (int64_t p = 0; p < h * w; ++p)
        out[size_t((i * h * w + p) * c + k)] = v[size_t((i * c + k) * h * w + p)];
  return out;
}
Floats fromNhwc(const Floats &v, int64_t n, int64_t c, int64_t h, int64_t w) {
  Floats out(v.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < c; ++k)
      for (int64_t p = 0; p < h * w; ++p)
        out[size_t((i * c + k) * h * w + p)] = v[size_t((i * h * w + p) * c + k)];
  return out;
}

TEST_F(Cuda, Pooling) {
  struct Config {
    const char *name;
    int64_t kh, kw, sh, sw, pt, pl, pb, pr, dh, dw;
    int ceil, includePad;
    int64_t h = 9, w = 8;
  };
  // The first five take the general kernels (the 9-row input is not
  // covered by 2x2/2 windows); the others the tiled ones (windows that
  // exactly cover the input, as ResNet9's 2x2/2 and global pools), which
  // also get a NaN and a window of -inf below; the "group" ones take 2x2
  // windows in groups (rows of 16-byte vectors: 4 windows of halves, 2 of
  // floats; 6 output columns hold whole groups of floats only).
  const Config configs[] = {
      {"2x2s2", 2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 0, 0},
      {"3x3s2p1", 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0},
      {"3x3s1p1", 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1},
      {"3x2s2ceil", 3, 2, 2, 2, 1, 0, 1, 1, 1, 1, 1, 1},
      {"3x3s1d2", 3, 3, 1, 1, 2, 1, 2, 1, 2, 2, 1, 0},
      {"2x2s2tiled", 2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 0, 0, 8, 6},
      {"4x3s4x3tiled", 4, 3, 4, 3, 0, 0, 0, 0, 1, 1, 0, 0, 8, 6},
      {"2x2s2group", 2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 0, 0, 4, 16},
      {"2x2s2group_fp32_only", 2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 0, 0, 2, 12},
  };
  std::mt19937 rng(6);
  for (int dtype : {FCC_DTYPE_F32, FCC_DTYPE_F16})
    for (const Config &cfg : configs) {
      SCOPED_TRACE(std::string(cfg.name) + " " + typeName(dtype));
      fcc_pool2d_desc d{};
      d.n = 2, d.c = 3, d.h = cfg.h, d.w = cfg.w;
      d.kh = cfg.kh, d.kw = cfg.kw, d.stride_h = cfg.sh, d.stride_w = cfg.sw;
      d.pad_t = cfg.pt, d.pad_l = cfg.pl, d.pad_b = cfg.pb, d.pad_r = cfg.pr;
      d.dil_h = cfg.dh, d.dil_w = cfg.dw;
      d.ceil_mode = cfg.ceil, d.count_include_pad = cfg.includePad;
      ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
      const int64_t in = d.n * d.c * d.h * d.w, out = d.n * d.c * d.oh * d.ow;
      Floats x = gridFloats(rng, size_t(in)); // ties: first max wins
      if (cfg.h != 9) {
        x[size_t(d.w + 1)] = std::nanf(""); // a NaN wins its window
        for (int64_t i = 0; i < d.kh; ++i)  // the last plane's last window
          for (int64_t j = 0; j < d.kw; ++j)
            x[size_t(in - 1 - i * d.w - j)] = -INFINITY;
      }
      const Floats dy = rounded(randomFloats(rng, size_t(out)), dtype);
      auto dx_ = upload(x, dtype), ddy = upload(dy, dtype);
      Buffer y(out * 4), dx(in * 4);
      Floats want(static_cast<size_t>(out)), wantDx(static_cast<size_t>(in));

      fcc_cuda_max_pool2d_forward(&d, dx_->get(), y.get(), dtype);
      fcc_cpu_max_pool2d_forward(&d, x.data(), want.data());
      EXPECT_TRUE(near(download(y.get(), out, dtype), want, 0.0));
      fcc_cuda_max_pool2d_backward(&d, dx_->get(), ddy->get(), dx.get(), dtype);
      fcc_cpu_max_pool2d_backward(&d, x.data(), dy.data(), wantDx.data());
      EXPECT_TRUE(near(download(dx.get(), in, dtype), rounded(wantDx, dtype), 0.0));

      fcc_cuda_avg_pool2d_forward(&d, dx_->get(), y.get(), dtype);
      fcc_cpu_avg_pool2d_forward(&d, x.data(), want.data());
      EXPECT_TRUE(near(download(y.get(), out, dtype), rounded(want, dtype), 0.0));
      fcc_cuda_avg_pool2d_backward(&d, ddy->get(), dx.get(), dtype);
      fcc_cpu_avg_pool2d_backward(&d, dy.data(), wantDx.data());
      EXPECT_TRUE(near(download(dx.get(), in, dtype), rounded(wantDx, dtype), 0.0));
    }
}

// fcc_cuda_transpose_layout both ways and fcc_cuda_flip_w_nhwc, against
// host index arithmetic.
TEST_F(Cuda, LayoutTransposeAndNhwcFlip) {
  std::mt19937 rng(17);
  const int64_t n = 3, c = 5, h = 4, w = 7, count = n * c * h * w;
  for (int dtype : {FCC_DTYPE_F32, FCC_DTYPE_F16}) {
    SCOPED_TRACE(typeName(dtype));
    const Floats x = rounded(randomFloats(rng, size_t(count)), dtype);
    auto dX = upload(x, dtype);
    Buffer t(count * 4), back(count * 4), flipped(count * 4);
    fcc_cuda_transpose_layout(dX->get(), n, c, h * w, FCC_LAYOUT_NHWC, t.get(),
                              dtype);
    EXPECT_TRUE(near(download(t.get(), count, dtype), toNhwc(x, n, c, h, w), 0.0));
    fcc_cuda_transpose_layout(t.get(), n, c, h * w, FCC_LAYOUT_NCHW,
                              back.get(), dtype);
    EXPECT_TRUE(near(download(back.get(), count, dtype), x, 0.0));
    // The NHWC flip is the NCHW flip seen through the transposes.
    fcc_cuda_flip_w_nhwc(t.get(), n, c, h, w, flipped.get(), dtype);
    Floats want(x.size());
    for (int64_t r = 0; r < n * c * h; ++r)
      for (int64_t j = 0; j < w; ++j)
        want[size_t(r * w + j)] = x[size_t(r * w + (w - 1 - j))];
    EXPECT_TRUE(near(fromNhwc(download(flipped.get(), count, dtype), n, c, h, w),
                     want, 0.0));
  }
}

// NHWC max pooling (windows that tile the input) against the CPU's NCHW
// kernels on the same values, with a NaN and a window of -inf; other
// pooling is refused by name in NHWC, and the CPU refuses NHWC.
TEST_F(Cuda, PoolingNhwc) {
  struct Config {
    const char *name;
    int64_t kh, kw, h, w;
  };
  const Config configs[] = {{"2x2", 2, 2, 6, 4}, {"4x3", 4, 3, 8, 6},
                            {"global", 4, 4, 4, 4}};
  std::mt19937 rng(16);
  // 35 channels: one per thread; 40: 16-byte vectors of channels.
  for (int64_t c : {35, 40})
  for (int dtype : {FCC_DTYPE_F32, FCC_DTYPE_F16})
    for (const Config &cfg : configs) {
      SCOPED_TRACE(std::string(cfg.name) + " " + typeName(dtype) + " c=" +
                   std::to_string(c));
      fcc_pool2d_desc d{};
      d.n = 2, d.c = c, d.h = cfg.h, d.w = cfg.w;
      d.kh = cfg.kh, d.kw = cfg.kw, d.stride_h = cfg.kh, d.stride_w = cfg.kw;
      ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
      fcc_pool2d_desc dn = d;
      dn.layout = FCC_LAYOUT_NHWC;
      const int64_t in = d.n * d.c * d.h * d.w, out = d.n * d.c * d.oh * d.ow;
      Floats x = gridFloats(rng, size_t(in)); // ties: first max wins
      x[size_t(d.w + 1)] = std::nanf("");    // a NaN wins its window
      for (int64_t i = 0; i < d.kh; ++i)     // the last plane's last window
        for (int64_t j = 0; j < d.kw; ++j)
          x[size_t(in - 1 - i * d.w - j)] = -INFINITY;
      const Floats dy = rounded(randomFloats(rng, size_t(out)), dtype);
      auto dX = upload(toNhwc(x, d.n, d.c, d.h, d.w), dtype);
      auto dDy = upload(toNhwc(dy, d.n, d.c, d.oh, d.ow), dtype);
      Buffer y(out * 4), dx(in * 4);
      Floats want(static_cast<size_t>(out)), wantDx(static_cast<size_t>(in));
      fcc_cuda_max_pool2d_forward(&dn, dX->get(), y.get(), dtype);
      fcc_cpu_max_pool2d_forward(&d, x.data(), want.data());
      EXPECT_TRUE(near(fromNhwc(download(y.get(), out, dtype), d.n, d.c, d.oh,
                                d.ow),
                       want, 0.0));
      fcc_cuda_max_pool2d_backward(&dn, dX->get(), dDy->get(), dx.get(), dtype);
      fcc_cpu_max_pool2d_backward(&d, x.data(), dy.data(), wantDx.data());
      EXPECT_TRUE(near(fromNhwc(download(dx.get(), in, dtype), d.n, d.c, d.h,
                                d.w),
                       rounded(wantDx, dtype), 0.0));
    }

  fcc_pool2d_desc d{};
  d.n = 1, d.c = 2, d.h = 5, d.w = 5, d.kh = d.kw = 3, d.stride_h = 2,
  d.stride_w = 2, d.layout = FCC_LAYOUT_NHWC;
  ASSERT_EQ(fcc_pool2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
  Floats hx(50), hy(8);
  fcc_cpu_max_pool2d_forward(&d, hx.data(), hy.data());
  EXPECT_NE(std::string(fcc_cpu_last_error()).find("NCHW activations only"),
            std::string::npos)
      << fcc_cpu_last_error();
  Buffer x(50 * 4), y(8 * 4);
  fcc_cuda_max_pool2d_forward(&d, x.get(), y.get(), FCC_DTYPE_F32);
  EXPECT_NE(fcc_cuda_synchronize(), 0);
  EXPECT_NE(std::string(fcc_cuda_last_error())
                .find("fcc_cuda_max_pool2d_forward: NHWC layout: only max "
                      "pooling whose windows tile"),
            std::string::npos)
      << fcc_cuda_last_error();
  fcc_cuda_shutdown(); // the error is sticky: a new context starts clean
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
}

//===----------------------------------------------------------------------===//
// Batch normalisation
//===----------------------------------------------------------------------===//

TEST_F(Cuda, BatchNorm) {
  std::mt19937 rng(7);
  const float eps = 1e-5f;
  // 3 x 37 elements per channel: one block per channel in the reductions;
  // 4 x 4096: 8 blocks (segments) per channel, whose last to finish adds
  // the partial sums.
  struct Shape {
    int64_t n, c, hw;
  };
  // FCC_CUDA_FINISH_KERNEL=1: the partial sums added by a second launch
  // instead (the A/B switch), with the same results.
  for (const char *finish : {"0", "1"})
  for (const Shape sh : {Shape{3, 4, 37}, Shape{4, 3, 4096}})
  for (int dtype : kHalfTypes) {
    ScopedEnv env("FCC_CUDA_FINISH_KERNEL", finish);
    const int64_t n = sh.n, c = sh.c, hw = sh.hw, count = n * c * hw;
    SCOPED_TRACE(std::string(typeName(dtype)) + " hw " + std::to_string(hw) +
                 " finish kernel " + finish);
    Floats x = randomFloats(rng, size_t(count), -2.0f, 2.0f);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] += 3.0f; // a mean far from zero
    roundTo(x, dtype);
    const Floats dy = rounded(randomFloats(rng, size_t(count)), dtype);
    const Floats scale = randomFloats(rng, size_t(c), 0.5f, 1.5f);
    const Floats shift = randomFloats(rng, size_t(c), -0.5f, 0.5f);
    const Floats mean = randomFloats(rng, size_t(c), -0.3f, 0.3f);
    const Floats var = randomFloats(rng, size_t(c), 0.5f, 2.0f);
    auto dX = upload(x, dtype), dDy = upload(dy, dtype);
    auto dScale = upload(scale), dShift = upload(shift), dMean = upload(mean),
         dVar = upload(var);
    Buffer y(count * 4), bm(c * 4), bv(c * 4), dx(count * 4), ds(c * 4),
        dsh(c * 4);
    const double tol = typeTolerance(dtype) * 4;

    fcc_cuda_batch_norm_inference(dX->get(), dScale->f(), dShift->f(),
                                  dMean->f(), dVar->f(), eps, n, c, hw, y.get(),
                                  dtype);
    Floats want(static_cast<size_t>(count));
    fcc_cpu_batch_norm_inference(x.data(), scale.data(), shift.data(),
                                 mean.data(), var.data(), eps, n, c, hw,
                                 want.data());
    EXPECT_TRUE(near(download(y.get(), count, dtype), rounded(want, dtype), 0.0));

    fcc_cuda_batch_norm_train_forward(dX->get(), dScale->f(), dShift->f(), eps,
                                      n, c, hw, y.get(), bm.f(), bv.f(), dtype);
    Floats wantMean(static_cast<size_t>(c)), wantVar(static_cast<size_t>(c));
    fcc_cpu_batch_norm_train_forward(x.data(), scale.data(), shift.data(), eps,
                                     n, c, hw, want.data(), wantMean.data(),
                                     wantVar.data());
    EXPECT_TRUE(near(download(bm.get(), c), wantMean, 1e-6));
    EXPECT_TRUE(near(download(bv.get(), c), wantVar, 1e-6));
    EXPECT_TRUE(near(download(y.get(), count, dtype), rounded(want, dtype), tol,
                     1e-6));

    // Backward with the CPU's statistics on both sides.
    auto cpuMean = upload(wantMean), cpuVar = upload(wantVar);
    fcc_cuda_batch_norm_backward(dX->get(), dDy->get(), dScale->f(),
                                 cpuMean->f(), cpuVar->f(), eps, n, c, hw,
                                 dx.get(), ds.f(), dsh.f(), dtype);
    Floats wantDx(static_cast<size_t>(count)), wantDs(static_cast<size_t>(c)), wantDsh(static_cast<size_t>(c));
    fcc_cpu_batch_norm_backward(x.data(), dy.data(), scale.data(),
                                wantMean.data(), wantVar.data(), eps, n, c, hw,
                                wantDx.data(), wantDs.data(), wantDsh.data());
    EXPECT_TRUE(near(download(ds.get(), c), wantDs, 1e-5, 1e-6));
    EXPECT_TRUE(near(download(dsh.get(), c), wantDsh, 1e-5, 1e-6));
    EXPECT_TRUE(near(download(dx.get(), count, dtype), rounded(wantDx, dtype),
                     tol, 1e-6, maxAbs(wantDx)));
    // Optional outputs may be null.
    fcc_cuda_batch_norm_backward(dX->get(), dDy->get(), dScale->f(),
                                 cpuMean->f(), cpuVar->f(), eps, n, c, hw,
                                 nullptr, nullptr, dsh.f(), dtype);
    EXPECT_TRUE(near(download(dsh.get(), c), wantDsh, 1e-5, 1e-6));
  }

  // Running statistics: PyTorch (unbiased) and ONNX conventions.
  const Floats bm = {0.5f, -1.0f, 2.0f}, bv = {1.0f, 0.25f, 3.0f};
  for (int unbiased : {0, 1}) {
    Floats rm = {0.1f, 0.2f, 0.3f}, rv = {1.0f, 2.0f, 0.5f};
    auto dRm = upload(rm), dRv = upload(rv), dBm = upload(bm), dBv = upload(bv);
    fcc_cuda_batch_norm_update_running(dRm->f(), dRv->f(), dBm->f(), dBv->f(),
                                       0.1f, unbiased, 512, 3);
    fcc_cpu_batch_norm_update_running(rm.data(), rv.data(), bm.data(),
                                      bv.data(), 0.1f, unbiased, 512, 3);
    EXPECT_TRUE(near(download(dRm->get(), 3), rm, 0.0));
    EXPECT_TRUE(near(download(dRv->get(), 3), rv, 0.0));
  }
  // Several BatchNorms in one launch (the train step's): each item exactly
  // as the CPU updates it, with its own momentum, convention, count and
  // channels (a single sample: the biased variance).
  {
    struct Case {
      float momentum;
      int unbiased;
      int64_t count, c;
    };
    const Case cases[] = {{0.1f, 1, 512, 3}, {0.25f, 0, 512, 2},
                          {0.1f, 1, 1, 3}, {0.5f, 1, 7, 1}};
    std::vector<Floats> rms, rvs;
    std::vector<std::unique_ptr<Buffer>> dev;
    std::vector<fcc_cuda_running_item> items;
    for (const Case &k : cases) {
      Floats rm = {0.1f, 0.2f, 0.3f}, rv = {1.0f, 2.0f, 0.5f};
      rm.resize(size_t(k.c));
      rv.resize(size_t(k.c));
      dev.push_back(upload(rm));
      dev.push_back(upload(rv));
      dev.push_back(upload(bm));
      dev.push_back(upload(bv));
      const size_t at = dev.size() - 4;
      items.push_back({dev[at]->f(), dev[at + 1]->f(), dev[at + 2]->f(),
                       dev[at + 3]->f(), k.momentum, k.unbiased, k.count, k.c});
      fcc_cpu_batch_norm_update_running(rm.data(), rv.data(), bm.data(),
                                        bv.data(), k.momentum, k.unbiased,
                                        k.count, k.c);
      rms.push_back(rm);
      rvs.push_back(rv);
    }
    auto table = uploadBytes(items.data(),
                             int64_t(items.size() * sizeof(items[0])));
    fcc_cuda_batch_norm_update_running_multi(
        static_cast<const fcc_cuda_running_item *>(table->get()),
        int(items.size()), 3);
    for (size_t i = 0; i < items.size(); ++i) {
      EXPECT_TRUE(near(download(dev[4 * i]->get(), cases[i].c), rms[i], 0.0))
          << "running mean " << i;
      EXPECT_TRUE(near(download(dev[4 * i + 1]->get(), cases[i].c), rvs[i], 0.0))
          << "running var " << i;
    }
  }
}

// Random inputs of a fused BatchNorm test, rounded to dtype: x in [-2, 2),
// scale in [0.5, 1.5) but negative in channel `negative`, statistics, the
// residual (when asked) and dy.
struct BnActInputs {
  Floats x, scale, shift, mean, var, residual, dy;
};
BnActInputs bnActInputs(std::mt19937 &rng, const fcc_bn_act_desc &d,
                        bool residual, int dtype, size_t negative) {
  const int64_t in = d.n * d.c * d.h * d.w, out = d.n * d.c * d.oh * d.ow;
  BnActInputs v;
  v.x = rounded(randomFloats(rng, size_t(in), -2.0f, 2.0f), dtype);
  v.scale = randomFloats(rng, size_t(d.c), 0.5f, 1.5f);
  v.scale[negative] = -v.scale[negative];
  v.shift = randomFloats(rng, size_t(d.c), -0.5f, 0.5f);
  v.mean = randomFloats(rng, size_t(d.c), -0.3f, 0.3f);
  v.var = randomFloats(rng, size_t(d.c), 0.5f, 2.0f);
  if (residual)
    v.residual = rounded(randomFloats(rng, size_t(out)), dtype);
  v.dy = rounded(randomFloats(rng, size_t(out)), dtype);
  return v;
}

// The CUDA fused BatchNorm kernels with activations in `layout` against the
// CPU's (NCHW) on the same values: inference, training forward (statistics
// and output) and backward; with a residual, also the residual as output.
void checkBnAct(const fcc_bn_act_desc &d, int layout, const BnActInputs &v,
                int dtype) {
  const int64_t in = d.n * d.c * d.h * d.w, out = d.n * d.c * d.oh * d.ow;
  const bool nhwc = layout == FCC_LAYOUT_NHWC;
  fcc_bn_act_desc dg = d;
  dg.layout = layout;
  // Activations to the device and back in `layout`.
  auto put = [&](const Floats &a, int64_t h, int64_t w) {
    return upload(nhwc ? toNhwc(a, d.n, d.c, h, w) : a, dtype);
  };
  auto get = [&](const Buffer &b, int64_t h, int64_t w) {
    const Floats a = download(b.get(), d.n * d.c * h * w, dtype);
    return nhwc ? fromNhwc(a, d.n, d.c, h, w) : a;
  };
  auto dX = put(v.x, d.h, d.w), dDy = put(v.dy, d.oh, d.ow);
  auto dScale = upload(v.scale), dShift = upload(v.shift),
       dMean = upload(v.mean), dVar = upload(v.var);
  const bool residual = !v.residual.empty();
  std::unique_ptr<Buffer> dRes;
  if (residual)
    dRes = put(v.residual, d.oh, d.ow);
  const void *res = dRes ? dRes->get() : nullptr;
  const float *cres = residual ? v.residual.data() : nullptr;
  Buffer y(out * 4), bm(d.c * 4), bv(d.c * 4), dx(in * 4), ds(d.c * 4),
      dsh(d.c * 4);
  const double tol = typeTolerance(dtype) * 4;

  fcc_cuda_bn_act_inference(&dg, dX->get(), dScale->f(), dShift->f(),
                            dMean->f(), dVar->f(), res, y.get(), dtype);
  Floats want(static_cast<size_t>(out));
  fcc_cpu_bn_act_inference(&d, v.x.data(), v.scale.data(), v.shift.data(),
                           v.mean.data(), v.var.data(), cres, want.data());
  EXPECT_TRUE(near(get(y, d.oh, d.ow), rounded(want, dtype),
                   d.activation == FCC_ACT_CELU ? tol : 0.0, 1e-7));

  fcc_cuda_bn_act_train_forward(&dg, dX->get(), dScale->f(), dShift->f(), res,
                                y.get(), bm.f(), bv.f(), dtype);
  Floats wantMean(static_cast<size_t>(d.c)), wantVar(static_cast<size_t>(d.c));
  fcc_cpu_bn_act_train_forward(&d, v.x.data(), v.scale.data(), v.shift.data(),
                               cres, want.data(), wantMean.data(),
                               wantVar.data());
  EXPECT_TRUE(near(download(bm.get(), d.c), wantMean, 1e-6, 1e-7));
  EXPECT_TRUE(near(download(bv.get(), d.c), wantVar, 1e-6));
  EXPECT_TRUE(near(get(y, d.oh, d.ow), rounded(want, dtype), tol, 1e-6));

  // Backward with the CPU's statistics, so that both route the pooling
  // gradient through the same arg-maxes.
  auto cpuMean = upload(wantMean), cpuVar = upload(wantVar);
  fcc_cuda_bn_act_backward(&dg, dX->get(), dDy->get(), dScale->f(),
                           dShift->f(), cpuMean->f(), cpuVar->f(), dx.get(),
                           ds.f(), dsh.f(), dtype);
  Floats wantDx(static_cast<size_t>(in)), wantDs(static_cast<size_t>(d.c)),
      wantDsh(static_cast<size_t>(d.c));
  fcc_cpu_bn_act_backward(&d, v.x.data(), v.dy.data(), v.scale.data(),
                          v.shift.data(), wantMean.data(), wantVar.data(),
                          wantDx.data(), wantDs.data(), wantDsh.data());
  EXPECT_TRUE(near(download(ds.get(), d.c), wantDs, 1e-5, 1e-6));
  EXPECT_TRUE(near(download(dsh.get(), d.c), wantDsh, 1e-5, 1e-6));
  EXPECT_TRUE(near(get(dx, d.h, d.w), rounded(wantDx, dtype), tol, 1e-6,
                   maxAbs(wantDx)));

  // The residual may be the output (the planner writes y over it).
  if (residual) {
    auto alias = put(v.residual, d.oh, d.ow);
    fcc_cuda_bn_act_inference(&dg, dX->get(), dScale->f(), dShift->f(),
                              dMean->f(), dVar->f(), alias->get(),
                              alias->get(), dtype);
    fcc_cpu_bn_act_inference(&d, v.x.data(), v.scale.data(), v.shift.data(),
                             v.mean.data(), v.var.data(), cres, want.data());
    EXPECT_TRUE(near(get(*alias, d.oh, d.ow), rounded(want, dtype), 0.0, 1e-7));
  }
}

TEST_F(Cuda, FusedBatchNormActivation) {
  struct Config {
    const char *name;
    int act;
    float alpha;
    int64_t kh, kw, sh, sw;
    bool residual;
    int64_t h = 7, w = 6; // an even plane: the sweeps without pooling take pairs
  };
  const Config configs[] = {
      {"relu", FCC_ACT_RELU, 1.0f, 0, 0, 0, 0, false},
      {"relu_residual_odd", FCC_ACT_RELU, 1.0f, 0, 0, 0, 0, true, 5, 5},
      {"celu", FCC_ACT_CELU, 0.3f, 0, 0, 0, 0, false},
      {"none_residual", FCC_ACT_NONE, 1.0f, 0, 0, 0, 0, true},
      {"relu_pool2_residual", FCC_ACT_RELU, 1.0f, 2, 2, 2, 2, true},
      {"celu_pool3s2", FCC_ACT_CELU, 0.5f, 3, 3, 2, 2, false},
      {"relu_pool3s1", FCC_ACT_RELU, 1.0f, 3, 3, 1, 1, false},
      {"relu_global", FCC_ACT_RELU, 1.0f, 7, 6, 7, 6, false},
      // Tiled pools (stride = window, the plane exactly covered): the
      // kernels take one window per thread.
      {"relu_pool2_tiled_residual", FCC_ACT_RELU, 1.0f, 2, 2, 2, 2, true, 8, 6},
      {"celu_pool2_tiled", FCC_ACT_CELU, 0.4f, 2, 2, 2, 2, false, 6, 4},
      {"celu_pool4x3_tiled", FCC_ACT_CELU, 0.7f, 4, 3, 4, 3, false, 8, 6},
      {"none_pool2x1_tiled", FCC_ACT_NONE, 1.0f, 2, 1, 2, 1, true, 4, 5},
      // Planes of whole 16-byte vectors (8 halves, 4 floats): the sweeps
      // and reductions without pooling take a vector per thread, and 2x2
      // tiled pools a group of windows (4 halves, 2 floats: rows of 16 and
      // 8 windows) per thread; 6 x 12 takes 16-byte vectors only in fp32
      // (pairs and single windows in half precision).
      {"relu_vec", FCC_ACT_RELU, 1.0f, 0, 0, 0, 0, false, 4, 8},
      {"celu_vec_residual", FCC_ACT_CELU, 0.6f, 0, 0, 0, 0, true, 8, 8},
      {"none_vec_fp32_only", FCC_ACT_NONE, 1.0f, 0, 0, 0, 0, true, 6, 6},
      {"relu_pool2_group_residual", FCC_ACT_RELU, 1.0f, 2, 2, 2, 2, true, 4,
       32},
      {"celu_pool2_group", FCC_ACT_CELU, 0.4f, 2, 2, 2, 2, false, 6, 16},
      {"relu_pool2_group_fp32_only", FCC_ACT_RELU, 1.0f, 2, 2, 2, 2, false, 2,
       12},
      // 3 x 128 x 128 elements per channel: several blocks (segments) per
      // channel in the reductions, the last of which adds the partial sums.
      {"celu_segments_residual", FCC_ACT_CELU, 0.3f, 0, 0, 0, 0, true, 128,
       128},
      {"relu_pool2_segments", FCC_ACT_RELU, 1.0f, 2, 2, 2, 2, false, 128, 128},
  };
  std::mt19937 rng(8);
  for (int dtype : kHalfTypes)
    for (const Config &cfg : configs) {
      SCOPED_TRACE(std::string(cfg.name) + " " + typeName(dtype));
      fcc_bn_act_desc d{};
      d.n = 3, d.c = 4, d.h = cfg.h, d.w = cfg.w;
      d.activation = cfg.act, d.alpha = cfg.alpha, d.eps = 1e-5f;
      d.pool_kh = cfg.kh, d.pool_kw = cfg.kw, d.pool_sh = cfg.sh,
      d.pool_sw = cfg.sw;
      ASSERT_EQ(fcc_bn_act_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
      checkBnAct(d, FCC_LAYOUT_NCHW,
                 bnActInputs(rng, d, cfg.residual, dtype, 0), dtype);
    }
}

// The NHWC kernels: every configuration whose pooling NHWC takes (none, or
// windows that tile), with 37 channels (more than one block of 32 channel
// lanes, not a multiple: one channel per thread) and 48 (whole 16-byte
// vectors of channels, 8 halves or 4 floats, per thread without pooling).
TEST_F(Cuda, FusedBatchNormActivationNhwc) {
  struct Config {
    const char *name;
    int act;
    float alpha;
    int64_t k, kw; // pool window = stride; 0: none
    bool residual;
    int64_t h, w;
  };
  const Config configs[] = {
      {"relu", FCC_ACT_RELU, 1.0f, 0, 0, false, 5, 6},
      {"celu_residual", FCC_ACT_CELU, 0.3f, 0, 0, true, 3, 3},
      {"relu_pool2_residual", FCC_ACT_RELU, 1.0f, 2, 2, true, 4, 6},
      {"celu_pool2", FCC_ACT_CELU, 0.6f, 2, 2, false, 6, 4},
      {"none_pool3x2", FCC_ACT_NONE, 1.0f, 3, 2, true, 6, 4},
      {"relu_global", FCC_ACT_RELU, 1.0f, 4, 4, false, 4, 4},
  };
  std::mt19937 rng(18);
  for (int64_t c : {37, 48})
  for (int dtype : kHalfTypes)
    for (const Config &cfg : configs) {
      SCOPED_TRACE(std::string(cfg.name) + " " + typeName(dtype) + " c=" +
                   std::to_string(c));
      fcc_bn_act_desc d{};
      d.n = 3, d.c = c, d.h = cfg.h, d.w = cfg.w;
      d.activation = cfg.act, d.alpha = cfg.alpha, d.eps = 1e-5f;
      d.pool_kh = d.pool_sh = cfg.k, d.pool_kw = d.pool_sw = cfg.kw;
      ASSERT_EQ(fcc_bn_act_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
      checkBnAct(d, FCC_LAYOUT_NHWC,
                 bnActInputs(rng, d, cfg.residual, dtype, 1), dtype);
    }
}

// A pool that does not tile its input is refused in NHWC, by name; the CPU
// kernels refuse NHWC.
TEST_F(Cuda, FusedBatchNormNhwcRefusesOverlappingPools) {
  fcc_bn_act_desc d{};
  d.n = 2, d.c = 3, d.h = 5, d.w = 5;
  d.activation = FCC_ACT_RELU, d.alpha = 1.0f, d.eps = 1e-5f;
  d.pool_kh = d.pool_kw = 3, d.pool_sh = d.pool_sw = 2;
  d.layout = FCC_LAYOUT_NHWC;
  ASSERT_EQ(fcc_bn_act_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
  Buffer x(d.n * d.c * d.h * d.w * 4), y(d.n * d.c * d.oh * d.ow * 4),
      stats(d.c * 4 * 4);
  Floats hx(size_t(d.n * d.c * d.h * d.w)), hy(size_t(d.n * d.c * d.oh * d.ow)),
      hs(size_t(d.c), 1.0f), hm(size_t(d.c)), hv(size_t(d.c));
  fcc_cpu_bn_act_train_forward(&d, hx.data(), hs.data(), hs.data(), nullptr,
                               hy.data(), hm.data(), hv.data());
  EXPECT_NE(std::string(fcc_cpu_last_error()).find("NCHW activations only"),
            std::string::npos)
      << fcc_cpu_last_error();
  fcc_cuda_bn_act_train_forward(&d, x.get(), stats.f(), stats.f(), nullptr,
                                y.get(), stats.f() + d.c, stats.f() + 2 * d.c,
                                FCC_DTYPE_F32);
  EXPECT_NE(fcc_cuda_synchronize(), 0);
  EXPECT_NE(std::string(fcc_cuda_last_error()).find("does not tile"),
            std::string::npos)
      << fcc_cuda_last_error();
  // A new context starts clean (the error is sticky).
  fcc_cuda_shutdown();
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
}

TEST_F(Cuda, FoldBatchNorm) {
  std::mt19937 rng(9);
  const int64_t k = 5, perK = 3 * 3 * 3;
  for (int dtype : kHalfTypes)
    for (bool withBias : {true, false}) {
      const Floats w = rounded(randomFloats(rng, size_t(k * perK)), dtype);
      const Floats b = rounded(randomFloats(rng, size_t(k)), dtype);
      const Floats scale = randomFloats(rng, size_t(k), 0.5f, 1.5f);
      const Floats shift = randomFloats(rng, size_t(k));
      const Floats mean = randomFloats(rng, size_t(k));
      const Floats var = randomFloats(rng, size_t(k), 0.5f, 2.0f);
      auto dW = upload(w, dtype), dB = upload(b, dtype);
      auto dScale = upload(scale), dShift = upload(shift), dMean = upload(mean),
           dVar = upload(var);
      Buffer wOut(k * perK * 4), bOut(k * 4);
      fcc_cuda_fold_bn(dW->get(), withBias ? dB->get() : nullptr, dScale->f(),
                       dShift->f(), dMean->f(), dVar->f(), 1e-5f, k, perK,
                       wOut.get(), bOut.get(), dtype);
      Floats wantW(static_cast<size_t>(k * perK)), wantB(static_cast<size_t>(k));
      fcc_cpu_fold_bn(w.data(), withBias ? b.data() : nullptr, scale.data(),
                      shift.data(), mean.data(), var.data(), 1e-5f, k, perK,
                      wantW.data(), wantB.data());
      EXPECT_TRUE(near(download(wOut.get(), k * perK, dtype),
                       rounded(wantW, dtype), 0.0));
      EXPECT_TRUE(near(download(bOut.get(), k, dtype), rounded(wantB, dtype), 0.0));
    }
}

//===----------------------------------------------------------------------===//
// Convolution (cuDNN) and GEMM (cuBLAS)
//===----------------------------------------------------------------------===//

struct ConvCase {
  const char *name;
  fcc_conv2d_desc d;
};

fcc_conv2d_desc convDesc(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                         int64_t r, int64_t s, int64_t stride, int64_t pt,
                         int64_t pl, int64_t pb, int64_t pr, int64_t dil,
                         int64_t groups) {
  fcc_conv2d_desc d{};
  d.n = n, d.c = c, d.h = h, d.w = w, d.k = k, d.r = r, d.s = s;
  d.stride_h = d.stride_w = stride;
  d.pad_t = pt, d.pad_l = pl, d.pad_b = pb, d.pad_r = pr;
  d.dil_h = d.dil_w = dil;
  d.groups = groups;
  return d;
}

// Checks all three directions of one plan against oneDNN.
// The CUDA plan (activations in `layout`) against the CPU's NCHW kernels.
void checkConv(const fcc_conv2d_desc &desc, int dtype, std::mt19937 &rng,
               int layout = FCC_LAYOUT_NCHW) {
  fcc_conv2d_desc d = desc;
  ASSERT_EQ(fcc_conv2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
  const int64_t xn = d.n * d.c * d.h * d.w,
                wn = d.k * (d.c / d.groups) * d.r * d.s,
                yn = d.n * d.k * d.oh * d.ow;
  const bool nhwc = layout == FCC_LAYOUT_NHWC;
  // Device copies of activations, and activations read back, in `layout`.
  auto in = [&](const Floats &v, int64_t c, int64_t hw) {
    return nhwc ? toNhwc(v, d.n, c, hw, 1) : v;
  };
  auto out = [&](const Floats &v, int64_t c, int64_t hw) {
    return nhwc ? fromNhwc(v, d.n, c, hw, 1) : v;
  };
  const Floats x = rounded(randomFloats(rng, size_t(xn)), dtype);
  const Floats w = rounded(randomFloats(rng, size_t(wn)), dtype);
  const Floats bias = rounded(randomFloats(rng, size_t(d.k)), dtype);
  const Floats dy = rounded(randomFloats(rng, size_t(yn)), dtype);
  auto dX = upload(in(x, d.c, d.h * d.w), dtype), dW = upload(w, dtype),
       dBias = upload(bias, dtype), dDy = upload(in(dy, d.k, d.oh * d.ow), dtype);
  Buffer y(yn * 4), dx(xn * 4), dw(wn * 4), db(d.k * 4);

  fcc_conv2d_desc dg = d;
  dg.layout = layout;
  fcc_cuda_conv2d_plan *plan = fcc_cuda_conv2d_create(&dg, dtype);
  ASSERT_NE(plan, nullptr) << fcc_cuda_last_error();
  fcc_conv2d_plan *cpu = fcc_cpu_conv2d_create(&d);
  ASSERT_NE(cpu, nullptr) << fcc_cpu_last_error();
  // fp32: true fp32 arithmetic in another order (no TF32). Half types:
  // products of rounded inputs accumulated in fp32, the output rounded.
  const double rtol = dtype == FCC_DTYPE_F32 ? 1e-5 : typeTolerance(dtype) * 2;
  const double fanIn = double(d.c / d.groups * d.r * d.s);

  ASSERT_EQ(fcc_cuda_conv2d_forward(plan, dX->get(), dW->get(), dBias->get(),
                                    y.get()),
            0)
      << fcc_cuda_last_error();
  Floats want(static_cast<size_t>(yn));
  ASSERT_EQ(fcc_cpu_conv2d_forward(cpu, x.data(), w.data(), bias.data(),
                                   want.data()),
            FCC_OK);
  EXPECT_TRUE(near(out(download(y.get(), yn, dtype), d.k, d.oh * d.ow), want, rtol, 0.0, fanIn))
      << "forward";
  ASSERT_EQ(fcc_cuda_conv2d_forward(plan, dX->get(), dW->get(), nullptr,
                                    y.get()),
            0)
      << fcc_cuda_last_error();
  ASSERT_EQ(fcc_cpu_conv2d_forward(cpu, x.data(), w.data(), nullptr,
                                   want.data()),
            FCC_OK);
  EXPECT_TRUE(near(out(download(y.get(), yn, dtype), d.k, d.oh * d.ow), want, rtol, 0.0, fanIn))
      << "forward without bias";

  ASSERT_EQ(fcc_cuda_conv2d_backward_data(plan, dDy->get(), dW->get(),
                                          dx.get()),
            0)
      << fcc_cuda_last_error();
  Floats wantDx(static_cast<size_t>(xn));
  ASSERT_EQ(fcc_cpu_conv2d_backward_data(cpu, dy.data(), w.data(),
                                         wantDx.data()),
            FCC_OK);
  EXPECT_TRUE(near(out(download(dx.get(), xn, dtype), d.c, d.h * d.w), wantDx, rtol, 0.0,
                   double(d.k * d.r * d.s)))
      << "backward data";

  ASSERT_EQ(fcc_cuda_conv2d_backward_filter(plan, dX->get(), dDy->get(),
                                            dw.get(), db.get()),
            0)
      << fcc_cuda_last_error();
  Floats wantDw(static_cast<size_t>(wn)), wantDb(static_cast<size_t>(d.k));
  ASSERT_EQ(fcc_cpu_conv2d_backward_filter(cpu, x.data(), dy.data(),
                                           wantDw.data(), wantDb.data()),
            FCC_OK);
  const double sumLen = double(d.n * d.oh * d.ow);
  EXPECT_TRUE(near(download(dw.get(), wn, dtype), wantDw, rtol, 0.0, sumLen))
      << "backward filter";
  EXPECT_TRUE(near(download(db.get(), d.k, dtype), rounded(wantDb, dtype),
                   typeTolerance(dtype), 1e-6))
      << "bias gradient";
  fcc_cuda_conv2d_destroy(plan);
  fcc_cpu_conv2d_destroy(cpu);
}

TEST_F(Cuda, Convolution) {
  const ConvCase cases[] = {
      {"3x3p1", convDesc(2, 3, 9, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1)},
      {"3x3s2p1", convDesc(2, 8, 10, 10, 16, 3, 3, 2, 1, 1, 1, 1, 1, 1)},
      {"grouped_dilated", convDesc(2, 4, 11, 11, 6, 3, 3, 1, 2, 2, 2, 2, 2, 2)},
      {"1x1", convDesc(3, 16, 5, 5, 8, 1, 1, 1, 0, 0, 0, 0, 1, 1)},
      // Asymmetric but exact with the begin pads alone.
      {"asymmetric_ok", convDesc(1, 2, 8, 8, 3, 3, 3, 2, 1, 1, 0, 0, 1, 1)},
  };
  std::mt19937 rng(10);
  for (int dtype : kHalfTypes)
    for (const ConvCase &c : cases) {
      SCOPED_TRACE(std::string(c.name) + " " + typeName(dtype));
      checkConv(c.d, dtype, rng);
      // NHWC activations (KRSC filters inside the plan); grouped
      // convolutions are NCHW only.
      if (c.d.groups == 1) {
        SCOPED_TRACE("NHWC");
        checkConv(c.d, dtype, rng, FCC_LAYOUT_NHWC);
      }
    }
  // Asymmetric padding cuDNN cannot express: refused with a message.
  fcc_conv2d_desc bad = convDesc(1, 2, 5, 5, 3, 3, 3, 1, 1, 1, 0, 0, 1, 1);
  EXPECT_EQ(fcc_cuda_conv2d_create(&bad, FCC_DTYPE_F32), nullptr);
  EXPECT_NE(std::string(fcc_cuda_last_error()).find("asymmetric"),
            std::string::npos);
}

// The side stream (fcc-overlap-weight-grads): a weight gradient queued on
// it, captured into a graph with a data gradient and a weight gradient (with
// bias gradient: kernel scratch) of the same plan on the main stream, gives
// exactly what the same calls give one after another on the main stream.
// On a GPU the two streams run concurrently, so a buffer they shared (the
// plan's KRSC filter, the cuDNN workspace, the scratch) would show as a
// difference; in the emulation the side work runs at the join.
TEST_F(Cuda, SideStreamWeightGradientsInAGraph) {
  for (int layout : {FCC_LAYOUT_NCHW, FCC_LAYOUT_NHWC})
    for (int dtype : {FCC_DTYPE_F32, FCC_DTYPE_F16}) {
      SCOPED_TRACE(std::string(layout == FCC_LAYOUT_NHWC ? "NHWC " : "NCHW ") +
                   typeName(dtype));
      fcc_conv2d_desc d = convDesc(8, 16, 12, 12, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1);
      ASSERT_EQ(fcc_conv2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
      d.layout = layout;
      const int64_t xn = d.n * d.c * d.h * d.w, wn = d.k * d.c * d.r * d.s,
                    yn = d.n * d.k * d.oh * d.ow;
      std::mt19937 rng(77);
      auto random = [&](int64_t n) {
        return upload(rounded(randomFloats(rng, size_t(n)), dtype), dtype);
      };
      auto x1 = random(xn), dy1 = random(yn), x2 = random(xn),
           dy2 = random(yn), w2 = random(wn);
      fcc_cuda_conv2d_plan *plan = fcc_cuda_conv2d_create(&d, dtype);
      ASSERT_NE(plan, nullptr) << fcc_cuda_last_error();
      // dw1 (with its bias gradient) on the side stream if `side`, then
      // dx2 and dw2 (with bias gradient) of the same plan on the main one.
      struct Outputs {
        Buffer dw1, db1, dx2, dw2, db2;
      };
      auto calls = [&](Outputs &o, bool side) {
        if (side)
          fcc_cuda_side_begin();
        EXPECT_EQ(fcc_cuda_conv2d_backward_filter(plan, x1->get(), dy1->get(),
                                                  o.dw1.get(), o.db1.get()),
                  0)
            << fcc_cuda_last_error();
        if (side)
          fcc_cuda_side_end();
        EXPECT_EQ(fcc_cuda_conv2d_backward_data(plan, dy2->get(), w2->get(),
                                                o.dx2.get()),
                  0)
            << fcc_cuda_last_error();
        EXPECT_EQ(fcc_cuda_conv2d_backward_filter(plan, x2->get(), dy2->get(),
                                                  o.dw2.get(), o.db2.get()),
                  0)
            << fcc_cuda_last_error();
        if (side)
          fcc_cuda_side_join();
      };
      auto read = [&](const Outputs &o) {
        return std::vector<Floats>{download(o.dw1.get(), wn, dtype),
                                   download(o.db1.get(), d.k, dtype),
                                   download(o.dx2.get(), xn, dtype),
                                   download(o.dw2.get(), wn, dtype),
                                   download(o.db2.get(), d.k, dtype)};
      };
      const int64_t es = elementSize(dtype);
      // One after another on the main stream: the reference.
      Outputs serial{Buffer(wn * es), Buffer(d.k * es), Buffer(xn * es),
                     Buffer(wn * es), Buffer(d.k * es)};
      calls(serial, false);
      const std::vector<Floats> want = read(serial);
      // The first weight gradient on the side stream, first without a
      // graph (as a trainer's warm-up step: the side stream's cuDNN handle
      // does its first-call set-up outside any capture), then in a graph.
      Outputs o{Buffer(wn * es), Buffer(d.k * es), Buffer(xn * es),
                Buffer(wn * es), Buffer(d.k * es)};
      calls(o, true);
      ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
      {
        SCOPED_TRACE("without a graph");
        EXPECT_EQ(read(o), want);
      }
      ASSERT_EQ(fcc_cuda_graph_begin(), 0) << fcc_cuda_last_error();
      calls(o, true);
      void *graph = nullptr;
      ASSERT_EQ(fcc_cuda_graph_end(&graph), 0) << fcc_cuda_last_error();
      for (int replay = 0; replay < 3; ++replay) {
        SCOPED_TRACE("replay " + std::to_string(replay));
        ASSERT_EQ(fcc_cuda_zero(o.dw1.get(), wn * es), 0);
        ASSERT_EQ(fcc_cuda_zero(o.db1.get(), d.k * es), 0);
        ASSERT_EQ(fcc_cuda_graph_launch(graph), 0) << fcc_cuda_last_error();
        ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
        const std::vector<Floats> got = read(o);
        const char *names[] = {"dw1 (side)", "dbias1 (side)", "dx2", "dw2",
                               "dbias2"};
        for (int i = 0; i < 5; ++i)
          EXPECT_EQ(got[i], want[i]) << names[i];
      }
      fcc_cuda_graph_destroy(graph);
      fcc_cuda_conv2d_destroy(plan);
    }
  // Misuse is reported, not ignored (FCC_CUDA_SERIAL=1 makes the side
  // calls no-ops).
  const char *serial = std::getenv("FCC_CUDA_SERIAL");
  if (serial && std::string(serial) == "1")
    return;
  fcc_cuda_side_end();
  EXPECT_NE(fcc_cuda_synchronize(), 0);
  EXPECT_NE(std::string(fcc_cuda_last_error()).find("side"), std::string::npos)
      << fcc_cuda_last_error();
  fcc_cuda_shutdown();
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
}

// Side work queued before a capture begins is not part of the graph: it
// runs (the capture may not wait on an event recorded outside it), and a
// capture begun on the side stream is refused. Forward and data-gradient
// convolutions and GEMMs refuse the side stream (its workspace is sized for
// weight gradients; one KRSC filter copy per plan; one cuBLAS workspace).
TEST_F(Cuda, SideStreamAroundCapturesAndWhatItRefuses) {
  const char *serial = std::getenv("FCC_CUDA_SERIAL");
  if (serial && std::string(serial) == "1")
    GTEST_SKIP() << "FCC_CUDA_SERIAL=1: the side calls are no-ops";
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 4.0f};
  const int64_t bytes = int64_t(values.size() * sizeof(float));
  auto src = upload(values, FCC_DTYPE_F32);
  Buffer dst(bytes);
  ASSERT_EQ(fcc_cuda_zero(dst.get(), bytes), 0);
  fcc_cuda_side_begin();
  ASSERT_EQ(fcc_cuda_copy(dst.get(), src->get(), bytes), 0);
  fcc_cuda_side_end();
  ASSERT_EQ(fcc_cuda_graph_begin(), 0) << fcc_cuda_last_error();
  void *graph = nullptr;
  ASSERT_EQ(fcc_cuda_graph_end(&graph), 0) << fcc_cuda_last_error();
  ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
  EXPECT_EQ(download(dst.get(), int64_t(values.size()), FCC_DTYPE_F32), values)
      << "the side stream's copy before the capture did not run";
  fcc_cuda_graph_destroy(graph);

  fcc_conv2d_desc d = convDesc(1, 2, 4, 4, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1);
  ASSERT_EQ(fcc_conv2d_desc_finalize(&d), FCC_OK) << fcc_cpu_last_error();
  fcc_cuda_conv2d_plan *plan = fcc_cuda_conv2d_create(&d, FCC_DTYPE_F32);
  ASSERT_NE(plan, nullptr) << fcc_cuda_last_error();
  Buffer x(32 * 4), w(36 * 4), y(32 * 4);

  // (No ASSERT between side_begin and side_end: a test that returned there
  // would leave the thread on the side stream for the tests after it.)
  fcc_cuda_side_begin();
  const int begun = fcc_cuda_graph_begin();
  EXPECT_NE(begun, 0);
  EXPECT_NE(std::string(fcc_cuda_last_error()).find("side stream"),
            std::string::npos)
      << fcc_cuda_last_error();
  if (begun == 0) { // close the capture the runtime should have refused
    fcc_cuda_side_end();
    void *unwanted = nullptr;
    fcc_cuda_graph_end(&unwanted);
    fcc_cuda_graph_destroy(unwanted);
    fcc_cuda_side_begin();
  }
  EXPECT_NE(fcc_cuda_conv2d_forward(plan, x.get(), w.get(), nullptr, y.get()),
            0);
  EXPECT_NE(std::string(fcc_cuda_last_error()).find("fcc_cuda_conv2d_forward"),
            std::string::npos)
      << fcc_cuda_last_error();
  EXPECT_NE(fcc_cuda_conv2d_backward_data(plan, y.get(), w.get(), x.get()), 0);
  EXPECT_NE(
      std::string(fcc_cuda_last_error()).find("fcc_cuda_conv2d_backward_data"),
      std::string::npos)
      << fcc_cuda_last_error();
  EXPECT_NE(fcc_cuda_gemm(0, 0, 2, 2, 2, 1.0f, x.get(), w.get(), 0.0f,
                          nullptr, 0, 0, y.get(), FCC_DTYPE_F32),
            0);
  EXPECT_NE(std::string(fcc_cuda_last_error()).find("fcc_cuda_gemm"),
            std::string::npos)
      << fcc_cuda_last_error();
  fcc_cuda_side_end();
  fcc_cuda_side_join();
  fcc_cuda_conv2d_destroy(plan);
  fcc_cuda_shutdown();
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
}

TEST_F(Cuda, TimingCacheIsWrittenAndReused) {
  char path[] = "/tmp/fcc-cuda-timing-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  std::remove(path); // the runtime creates it
  fcc_cuda_shutdown();
  fcc_cuda_set_timing_cache(path);
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
  std::mt19937 rng(11);
  const fcc_conv2d_desc d = convDesc(2, 3, 9, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1);
  checkConv(d, FCC_DTYPE_F32, rng);
  fcc_cuda_shutdown();

  // One line per (GPU, shape, type, direction) measured in this process,
  // each keyed by this GPU.
  std::string device = fcc_cuda_device_description();
  device = device.substr(0, device.find(" (sm_"));
  std::string prefix; // "GPU|sm_XY|cudnnN"
  int entries = 0, ours = 0;
  {
    std::ifstream in(path);
    ASSERT_TRUE(in.good()) << "no timing cache at " << path;
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#')
        continue;
      ++entries;
      EXPECT_EQ(line.find(device + "|"), 0u) << line;
      ours += line.find("|f32|n=2,c=3,h=9,w=9,k=4,r=3,s=3,") !=
              std::string::npos;
      if (prefix.empty()) {
        size_t bar = line.find('|');
        bar = line.find('|', bar + 1);
        bar = line.find('|', bar + 1);
        prefix = line.substr(0, bar);
      }
    }
  }
  EXPECT_GE(entries, 3);
  EXPECT_EQ(ours, 3); // forward, backward data, backward filter

  // A choice cuDNN rejects (another machine's file, a corrupt entry) is
  // measured again instead of failing; the file is re-read at the next use.
  {
    std::ofstream out(path, std::ios::app);
    for (const char *dir : {"fwd", "bwd_data", "bwd_filter"})
      out << prefix << "|" << dir
          << "|f32|n=1,c=2,h=6,w=6,k=2,r=3,s=3,stride=1x1,pad=1x1,dil=1x1,"
             "g=1\t9999\t0\t0\t1.0\n";
    out << "garbage line without tabs\n";
  }
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
  checkConv(d, FCC_DTYPE_F32, rng);
  checkConv(convDesc(1, 2, 6, 6, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1), FCC_DTYPE_F32,
            rng);
  fcc_cuda_shutdown();
  {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    EXPECT_EQ(text.str().find("\t9999\t"), std::string::npos)
        << "the rejected choice was replaced";
    EXPECT_EQ(text.str().find("garbage"), std::string::npos);
  }
  fcc_cuda_set_timing_cache(nullptr);
  std::remove(path);
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
}

TEST_F(Cuda, Gemm) {
  std::mt19937 rng(12);
  struct Bias {
    int64_t rows, cols; // 0x0: none
    float beta;
  };
  // fcc_cuda_gemm against fcc_cpu_gemm for one case. `offset` elements
  // shift every device pointer off the allocation's 256-byte alignment
  // (cuBLASLt's heuristic must then pick algorithms that accept it).
  auto check = [&](int dtype, int ta, int tb, int64_t m, int64_t n, int64_t k,
                   Bias bias, int64_t offset = 0) {
    SCOPED_TRACE(typeName(dtype) + " " + std::to_string(m) + "x" +
                 std::to_string(n) + "x" + std::to_string(k) + " trans " +
                 std::to_string(ta) + std::to_string(tb) + " bias " +
                 std::to_string(bias.rows) + "x" + std::to_string(bias.cols) +
                 " beta " + std::to_string(bias.beta) + " offset " +
                 std::to_string(offset));
    const size_t off = size_t(offset);
    const Floats a = rounded(randomFloats(rng, size_t(m * k) + off), dtype);
    const Floats b = rounded(randomFloats(rng, size_t(k * n) + off), dtype);
    const Floats c = rounded(
        randomFloats(rng,
                     size_t(std::max<int64_t>(bias.rows * bias.cols, 1)) + off),
        dtype);
    auto dA = upload(a, dtype), dB = upload(b, dtype), dC = upload(c, dtype);
    // y starts as NaN: with beta 0 (no bias, or the fused epilogue) the
    // GEMM must not read it.
    auto dY = upload(Floats(size_t(m * n) + off, std::nanf("")), dtype);
    const int64_t es = elementSize(dtype);
    auto at = [&](const Buffer &buf) {
      return static_cast<char *>(buf.get()) + offset * es;
    };
    const float alpha = 0.75f;
    const void *cp = bias.rows ? at(*dC) : nullptr;
    ASSERT_EQ(fcc_cuda_gemm(ta, tb, m, n, k, alpha, at(*dA), at(*dB),
                            bias.beta, cp, bias.rows, bias.cols, at(*dY),
                            dtype),
              0)
        << fcc_cuda_last_error();
    Floats want(static_cast<size_t>(m * n));
    fcc_cpu_gemm(ta, tb, m, n, k, alpha, a.data() + off, b.data() + off,
                 bias.beta, bias.rows ? c.data() + off : nullptr, bias.rows,
                 bias.cols, want.data());
    const double rtol =
        dtype == FCC_DTYPE_F32 ? 1e-5 : typeTolerance(dtype) * 2;
    Floats got = download(dY->get(), m * n + offset, dtype);
    got.erase(got.begin(), got.begin() + offset);
    EXPECT_TRUE(near(got, want, rtol, 0.0, double(k)));
  };

  // Every bias shape (1xN with beta 1 is the fused epilogue of cuBLASLt,
  // the rest the expand-then-beta path), every transpose, every type.
  const int64_t m = 7, n = 5, k = 9;
  const Bias biases[] = {{0, 0, 0.0f}, {1, n, 1.0f},   {1, n, 1.5f},
                         {m, 1, 1.5f}, {m, 1, 1.0f},   {1, 1, 1.5f},
                         {m, n, 1.5f}, {m, n, 1.0f},   {1, n, 0.0f}};
  for (int dtype : kHalfTypes)
    for (int ta : {0, 1})
      for (int tb : {0, 1})
        for (Bias bias : biases)
          check(dtype, ta, tb, m, n, k, bias);
  // The same shapes again (cached plans), then other shapes: a larger one
  // (tensor-core sizes, multiple of 8), one with odd sizes, a vector
  // (M = 1), and pointers not aligned to 16 bytes (the epilogue then
  // takes the expand path).
  for (int dtype : kHalfTypes) {
    for (int rep = 0; rep < 2; ++rep) {
      check(dtype, 0, 1, m, n, k, {1, n, 1.0f});
      check(dtype, 0, 0, m, n, k, {0, 0, 0.0f});
    }
    check(dtype, 0, 1, 64, 48, 96, {1, 48, 1.0f});
    check(dtype, 1, 0, 64, 48, 96, {1, 48, 1.0f});
    check(dtype, 0, 0, 64, 48, 96, {64, 1, 1.5f});
    check(dtype, 0, 1, 33, 17, 131, {1, 17, 1.0f});
    check(dtype, 1, 1, 1, 10, 3, {1, 10, 1.0f});
    check(dtype, 0, 1, 13, 6, 11, {1, 6, 1.0f}, 1);
    check(dtype, 1, 0, 13, 6, 11, {1, 6, 1.5f}, 1);
    check(dtype, 0, 1, 64, 48, 96, {1, 48, 1.0f}, 3);
  }

  // The first call of a shape may be made while a graph is being captured
  // (by a library caller; trainers warm up first): planning must not
  // enqueue, allocate or synchronise, and the graph must replay correctly.
  {
    const int64_t gm = 11, gn = 19, gk = 23;
    const Floats a = randomFloats(rng, size_t(gm * gk));
    const Floats b = randomFloats(rng, size_t(gn * gk));
    const Floats c = randomFloats(rng, size_t(gn));
    auto dA = upload(a), dB = upload(b), dC = upload(c);
    Buffer y(gm * gn * 4), y2(gm * gn * 4);
    ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
    ASSERT_EQ(fcc_cuda_graph_begin(), 0) << fcc_cuda_last_error();
    const int rc1 = fcc_cuda_gemm(0, 1, gm, gn, gk, 1.0f, dA->get(), dB->get(),
                                  1.0f, dC->get(), 1, gn, y.get(),
                                  FCC_DTYPE_F32);
    const int rc2 = fcc_cuda_gemm(0, 1, gm, gn, gk, 0.5f, dA->get(), dB->get(),
                                  2.0f, dC->get(), 1, gn, y2.get(),
                                  FCC_DTYPE_F32);
    void *exec = nullptr;
    const int rcEnd = fcc_cuda_graph_end(&exec);
    ASSERT_EQ(rc1, 0) << fcc_cuda_last_error();
    ASSERT_EQ(rc2, 0) << fcc_cuda_last_error();
    ASSERT_EQ(rcEnd, 0) << fcc_cuda_last_error();
    ASSERT_NE(exec, nullptr);
    ASSERT_EQ(fcc_cuda_graph_launch(exec), 0) << fcc_cuda_last_error();
    Floats want(size_t(gm * gn)), want2(size_t(gm * gn));
    fcc_cpu_gemm(0, 1, gm, gn, gk, 1.0f, a.data(), b.data(), 1.0f, c.data(),
                 1, gn, want.data());
    fcc_cpu_gemm(0, 1, gm, gn, gk, 0.5f, a.data(), b.data(), 2.0f, c.data(),
                 1, gn, want2.data());
    EXPECT_TRUE(near(download(y.get(), gm * gn), want, 1e-5, 0.0, double(gk)));
    EXPECT_TRUE(
        near(download(y2.get(), gm * gn), want2, 1e-5, 0.0, double(gk)));
    fcc_cuda_graph_destroy(exec);
    ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
  }

  {
    // Empty inner dimension: beta * c.
    const Floats c = {1.0f, 2.0f, 3.0f};
    auto dC = upload(c);
    Buffer y(2 * 3 * 4);
    ASSERT_EQ(fcc_cuda_gemm(0, 0, 2, 3, 0, 1.0f, y.get(), y.get(), 2.0f,
                            dC->get(), 1, 3, y.get(), FCC_DTYPE_F32),
              0)
        << fcc_cuda_last_error();
    EXPECT_TRUE(near(download(y.get(), 6), {2, 4, 6, 2, 4, 6}, 0.0));
    // A bias that does not broadcast.
    EXPECT_EQ(fcc_cuda_gemm(0, 0, 2, 3, 1, 1.0f, y.get(), y.get(), 1.0f,
                            dC->get(), 2, 2, y.get(), FCC_DTYPE_F32),
              FCC_ERR_INVALID);
    EXPECT_NE(std::string(fcc_cuda_last_error()).find("fcc_cuda_gemm"),
              std::string::npos);
  }
  // The plans are released by shutdown and made again after init.
  fcc_cuda_shutdown();
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
  check(FCC_DTYPE_F32, 0, 1, m, n, k, {1, n, 1.0f});
}

//===----------------------------------------------------------------------===//
// Loss and metrics
//===----------------------------------------------------------------------===//

TEST_F(Cuda, LossMetricsAndGradient) {
  std::mt19937 rng(13);
  const int64_t n = 37, classes = 10;
  const Floats logits = randomFloats(rng, size_t(n * classes), -4.0f, 4.0f);
  std::vector<int32_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    labels[size_t(i)] = i % 7 == 3 ? FCC_IGNORE_LABEL : int32_t(rng() % classes);
  auto dLogits = upload(logits);
  auto dLabels = uploadBytes(labels.data(), n * 4);
  const int32_t *lab = static_cast<const int32_t *>(dLabels->get());
  for (float ls : {0.0f, 0.2f}) {
    for (float lossGrad : {1.0f, 512.0f}) {
      SCOPED_TRACE("label smoothing " + std::to_string(ls) + " loss grad " +
                   std::to_string(lossGrad));
      auto dLs = upload({ls}), dLg = upload({lossGrad});
      Buffer metrics(FCC_NUM_METRICS * 4), grad(n * classes * 4);
      // Twice: the metrics accumulate.
      for (int rep = 0; rep < 2; ++rep) {
        fcc_cuda_metric_loss(metrics.f(), dLogits->f(), lab, n, classes,
                             dLs->f());
        fcc_cuda_metric_correct(metrics.f(), dLogits->f(), lab, n, classes);
      }
      fcc_cuda_softmax_xent_grad(dLogits->f(), lab, n, classes, dLs->f(),
                                 dLg->f(), grad.f());
      float want[FCC_NUM_METRICS] = {0, 0, 0};
      Floats wantGrad(static_cast<size_t>(n * classes));
      for (int rep = 0; rep < 2; ++rep) {
        const double mean = fcc_cpu_softmax_xent(
            logits.data(), labels.data(), n, classes, ls, nullptr, nullptr,
            nullptr);
        want[FCC_METRIC_LOSS_SUM] += float(mean * double(n));
        want[FCC_METRIC_CORRECT] += float(
            fcc_cpu_count_correct(logits.data(), labels.data(), n, classes));
      }
      fcc_cpu_softmax_xent(logits.data(), labels.data(), n, classes, ls,
                           nullptr, wantGrad.data(), nullptr);
      if (lossGrad != 1.0f)
        fcc_cpu_affine(wantGrad.data(), lossGrad, 0.0f, wantGrad.data(),
                       n * classes);
      const Floats got = download(metrics.get(), FCC_NUM_METRICS);
      EXPECT_NEAR(got[FCC_METRIC_LOSS_SUM], want[FCC_METRIC_LOSS_SUM],
                  1e-5 * std::fabs(want[FCC_METRIC_LOSS_SUM]));
      EXPECT_EQ(got[FCC_METRIC_CORRECT], want[FCC_METRIC_CORRECT]);
      EXPECT_EQ(got[FCC_METRIC_SKIPPED], 0.0f);
      EXPECT_TRUE(near(download(grad.get(), n * classes), wantGrad, 1e-6,
                       1e-9 * lossGrad));
    }
  }
}

//===----------------------------------------------------------------------===//
// Optimizer, EMA, loss scaling
//===----------------------------------------------------------------------===//

TEST_F(Cuda, SgdUpdateMulti) {
  std::mt19937 rng(14);
  const int64_t counts[] = {1000, 3, 257};
  const float lrMult[] = {1.0f, 64.0f, 1.0f}, wdMult[] = {1.0f, 1.0f / 64, 0.0f};
  for (int nesterov : {0, 1})
    for (int scaled : {0, 1})
      for (float applyValue : {1.0f, 0.0f}) {
        if (!scaled && applyValue == 0.0f)
          continue;
        SCOPED_TRACE("nesterov " + std::to_string(nesterov) + " scaled " +
                     std::to_string(scaled) + " apply " +
                     std::to_string(applyValue));
        fcc_hyper hyper{};
        hyper.lr = 0.4f;
        hyper.momentum = 0.9f;
        hyper.weight_decay = 5e-4f;
        hyper.nesterov = float(nesterov);
        hyper.loss_scale = 1024.0f;
        auto dHyper = uploadBytes(&hyper, sizeof hyper);
        auto dApply = upload({applyValue});
        std::vector<Floats> params, grads, bufs;
        std::vector<std::unique_ptr<Buffer>> dev;
        std::vector<fcc_cuda_sgd_item> items;
        for (int i = 0; i < 3; ++i) {
          params.push_back(randomFloats(rng, size_t(counts[i])));
          grads.push_back(randomFloats(rng, size_t(counts[i]), -100.0f, 100.0f));
          bufs.push_back(randomFloats(rng, size_t(counts[i])));
          dev.push_back(upload(params.back()));
          dev.push_back(upload(grads.back()));
          dev.push_back(upload(bufs.back()));
          fcc_cuda_sgd_item it{};
          it.param = dev[dev.size() - 3]->f();
          it.grad = dev[dev.size() - 2]->f();
          it.buf = dev[dev.size() - 1]->f();
          it.count = counts[i];
          it.lr_mult = lrMult[i];
          it.wd_mult = wdMult[i];
          items.push_back(it);
        }
        auto dItems = uploadBytes(items.data(),
                                  int64_t(items.size() * sizeof(items[0])));
        const float *gradScale =
            scaled ? reinterpret_cast<const float *>(
                         static_cast<const char *>(dHyper->get()) +
                         offsetof(fcc_hyper, loss_scale))
                   : nullptr;
        fcc_cuda_sgd_update_multi(
            static_cast<const fcc_cuda_sgd_item *>(dItems->get()), 3, 1000,
            dHyper->get(), gradScale, scaled ? dApply->f() : nullptr);
        for (int i = 0; i < 3; ++i) {
          // The generated CPU code's expressions: lr * mult, wd * mult.
          const float lr = hyper.lr * lrMult[i], wd = hyper.weight_decay * wdMult[i];
          if (scaled)
            fcc_cpu_sgd_update_scaled(params[i].data(), grads[i].data(),
                                      bufs[i].data(), counts[i], lr,
                                      hyper.momentum, wd, nesterov,
                                      hyper.loss_scale, applyValue != 0.0f);
          else
            fcc_cpu_sgd_update(params[i].data(), grads[i].data(),
                               bufs[i].data(), counts[i], lr, hyper.momentum,
                               wd, nesterov);
          EXPECT_TRUE(near(download(items[i].param, counts[i]), params[i], 0.0));
          EXPECT_TRUE(near(download(items[i].buf, counts[i]), bufs[i], 0.0));
        }
      }
}

TEST_F(Cuda, EmaUpdateMulti) {
  std::mt19937 rng(15);
  const int64_t counts[] = {5, 1000, 64};
  std::vector<Floats> emas, values;
  std::vector<std::unique_ptr<Buffer>> dev;
  std::vector<float *> emaPtrs;
  std::vector<const float *> valuePtrs;
  for (int i = 0; i < 3; ++i) {
    emas.push_back(randomFloats(rng, size_t(counts[i])));
    values.push_back(randomFloats(rng, size_t(counts[i])));
    dev.push_back(upload(emas.back()));
    emaPtrs.push_back(dev.back()->f());
    dev.push_back(upload(values.back()));
    valuePtrs.push_back(dev.back()->f());
  }
  auto dEmas = uploadBytes(emaPtrs.data(), 3 * sizeof(float *));
  auto dValues = uploadBytes(valuePtrs.data(), 3 * sizeof(float *));
  auto dCounts = uploadBytes(counts, sizeof counts);
  const float decay = 0.99f * 0.99f;
  auto dDecay = upload({decay});
  fcc_cuda_ema_update_multi(static_cast<float *const *>(dEmas->get()),
                            static_cast<const float *const *>(dValues->get()),
                            static_cast<const int64_t *>(dCounts->get()), 3,
                            1000, dDecay->f());
  for (int i = 0; i < 3; ++i) {
    fcc_cpu_ema_update(emas[i].data(), values[i].data(), decay, counts[i]);
    EXPECT_TRUE(near(download(emaPtrs[i], counts[i]), emas[i], 0.0));
  }
}

TEST_F(Cuda, FiniteChecksAndSkippedMetric) {
  Floats clean(300, 1.0f), overflow(300, 2.0f);
  overflow[123] = INFINITY;
  Floats nan(10, 0.0f);
  nan[9] = NAN;
  auto dClean = upload(clean), dOverflow = upload(overflow), dNan = upload(nan);
  Buffer finite(4), metrics(FCC_NUM_METRICS * 4);
  fcc_cuda_finite_begin(finite.f());
  fcc_cuda_finite_and(finite.f(), dClean->f(), 300);
  fcc_cuda_metric_skipped(metrics.f(), finite.f());
  EXPECT_EQ(download(finite.get(), 1)[0], 1.0f);
  EXPECT_EQ(download(metrics.get(), 3)[FCC_METRIC_SKIPPED], 0.0f);
  for (const Buffer *bad : {dOverflow.get(), dNan.get()}) {
    fcc_cuda_finite_begin(finite.f());
    fcc_cuda_finite_and(finite.f(), dClean->f(), 300);
    fcc_cuda_finite_and(finite.f(), bad->f(), bad == dNan.get() ? 10 : 300);
    fcc_cuda_finite_and(finite.f(), dClean->f(), 300);
    fcc_cuda_metric_skipped(metrics.f(), finite.f());
    EXPECT_EQ(download(finite.get(), 1)[0], 0.0f);
  }
  EXPECT_EQ(download(metrics.get(), 3)[FCC_METRIC_SKIPPED], 2.0f);
  // All tensors in one launch: clean ones, then each bad one at every
  // position of the table.
  auto multi = [&](std::vector<const Buffer *> tensors) {
    std::vector<const float *> ptrs;
    std::vector<int64_t> counts;
    for (const Buffer *t : tensors) {
      ptrs.push_back(t->f());
      counts.push_back(t == dNan.get() ? 10 : 300);
    }
    auto dPtrs = uploadBytes(ptrs.data(), int64_t(ptrs.size() * sizeof(void *)));
    auto dCounts = uploadBytes(counts.data(), int64_t(counts.size() * 8));
    fcc_cuda_finite_begin(finite.f());
    fcc_cuda_finite_and_multi(finite.f(),
                              static_cast<const float *const *>(dPtrs->get()),
                              static_cast<const int64_t *>(dCounts->get()),
                              int(tensors.size()), 300);
    return download(finite.get(), 1)[0];
  };
  EXPECT_EQ(multi({dClean.get(), dClean.get()}), 1.0f);
  for (const Buffer *bad : {dOverflow.get(), dNan.get()}) {
    EXPECT_EQ(multi({bad, dClean.get(), dClean.get()}), 0.0f);
    EXPECT_EQ(multi({dClean.get(), bad, dClean.get()}), 0.0f);
    EXPECT_EQ(multi({dClean.get(), dClean.get(), bad}), 0.0f);
  }
}

// The trainer's dynamic loss scale on the device, step by step, against a
// host reference of the rule (Trainer.cpp's, written out again here):
// a skipped step halves the scale (at least 1), `window` clean steps in a
// row double it (at most 1e30). Each step is what a generated fp16 step
// and the CUDA backend enqueue: the loss gradient scaled by the device's
// hyper->loss_scale, the finite check (plus an injected overflow where the
// sequence says so), the skipped metric, then the update. Sequences, per
// character: 'c' a clean step, 's' a skipped one (a gradient overflows),
// 'i' a step whose staged loss scale is +inf (--debug-inject-overflow:
// copied over hyper->loss_scale as stageHyper does; the gradient scaled by
// it overflows), 'r' the trainer taking the metrics (accumulator and
// last_skipped zeroed, as BackendCuda's takeMetrics does). Every sequence
// runs eagerly and as one captured graph replayed per step.
TEST_F(Cuda, LossScaleUpdate) {
  struct HostScale {
    double scale;
    int64_t clean;
    void step(bool skipped, int64_t window) {
      if (skipped) {
        scale = std::max(1.0, scale / 2);
        clean = 0;
      } else if (++clean >= window) {
        scale = std::min(1e30, scale * 2);
        clean = 0;
      }
    }
  };
  struct Sequence {
    const char *name;
    double scale;
    int64_t clean, window;
    const char *steps;
    std::vector<double> scales; // after each step (by hand)
  };
  const Sequence sequences[] = {
      // From 1024 with window 2: doubles after 2 clean steps, a skip halves
      // and restarts the count; a skip right after the metrics were taken
      // (accumulator back at 0) is seen; several skips in a row.
      {"window 2", 1024.0, 0, 2, "cccscccrsccrccsss",
       {1024, 2048, 2048, 1024, 1024, 2048, 2048, 1024, 1024, 2048, 2048,
        4096, 2048, 1024, 512}},
      // Resumed with one clean step already counted.
      {"window 2, resumed", 1024.0, 1, 2, "ccsc", {2048, 2048, 1024, 1024}},
      // Window 1 at the lower clamp: 4 -> 2 -> 1 -> 1, then doubling.
      {"window 1, min 1", 4.0, 0, 1, "sssccrcs", {2, 1, 1, 2, 4, 8, 4}},
      // Window 1 at the upper clamp: 3e29 -> 6e29 -> 1e30 (not 1.2e30).
      {"window 1, max 1e30", 3e29, 0, 1, "cccscc",
       {6e29, 1e30, 1e30, 5e29, 1e30, 1e30}},
      // The trainer's injected overflow: 65536 -> 32768, and the steps
      // after it run with the halved scale.
      {"injected +inf", 65536.0, 0, 2000, "cciccricc",
       {65536, 65536, 32768, 32768, 32768, 16384, 16384, 16384}},
      {"injected +inf, window 1", 8.0, 0, 1, "icisc", {4, 8, 4, 2, 4}},
  };

  std::mt19937 rng(21);
  const int64_t n = 6, classes = 5;
  const Floats logits = randomFloats(rng, size_t(n * classes), -3.0f, 3.0f);
  std::vector<int32_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    labels[size_t(i)] = int32_t(rng() % classes);
  auto dLogits = upload(logits);
  auto dLabels = uploadBytes(labels.data(), n * 4);
  const int32_t *lab = static_cast<const int32_t *>(dLabels->get());

  fcc_hyper host{};
  host.lr = 0.125f;
  host.momentum = 0.875f;
  host.weight_decay = 5e-4f;
  host.nesterov = 1.0f;
  host.label_smoothing = 0.25f;
  host.seed = 0x123456789abcdefULL;
  const float inf = std::numeric_limits<float>::infinity();

  for (bool graph : {false, true})
    for (const Sequence &seq : sequences) {
      SCOPED_TRACE(std::string(seq.name) + (graph ? ", graph" : ", eager"));
      Buffer state(sizeof(fcc_cuda_loss_scale_state)),
          hyper(sizeof(fcc_hyper)), metrics(FCC_NUM_METRICS * 4),
          finite(4), grad(n * classes * 4), overflow(4);
      auto *dState = static_cast<fcc_cuda_loss_scale_state *>(state.get());
      auto *dHyper = static_cast<fcc_hyper *>(hyper.get());
      // As BackendCuda::setLossScale: the state, then the first scale.
      fcc_cuda_loss_scale_state s0{};
      s0.scale = seq.scale;
      s0.clean_steps = seq.clean;
      host.loss_scale = float(seq.scale);
      ASSERT_EQ(fcc_cuda_copy_to_device(dState, &s0, sizeof s0), 0);
      ASSERT_EQ(fcc_cuda_copy_to_device(dHyper, &host, sizeof host), 0);
      auto enqueueStep = [&] {
        fcc_cuda_finite_begin(finite.f());
        fcc_cuda_softmax_xent_grad(dLogits->f(), lab, n, classes, nullptr,
                                   &dHyper->loss_scale, grad.f());
        fcc_cuda_finite_and(finite.f(), grad.f(), n * classes);
        fcc_cuda_finite_and(finite.f(), overflow.f(), 1);
        fcc_cuda_metric_skipped(metrics.f(), finite.f());
        fcc_cuda_loss_scale_update(dState, dHyper, metrics.f(), seq.window);
      };
      void *exec = nullptr;
      if (graph) {
        ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
        ASSERT_EQ(fcc_cuda_graph_begin(), 0) << fcc_cuda_last_error();
        enqueueStep();
        ASSERT_EQ(fcc_cuda_graph_end(&exec), 0) << fcc_cuda_last_error();
        ASSERT_NE(exec, nullptr);
      }

      HostScale ref{seq.scale, seq.clean};
      std::vector<double> trace;
      float skippedSinceTaken = 0;
      int index = 0;
      for (const char *c = seq.steps; *c; ++c, ++index) {
        SCOPED_TRACE("at '" + std::string(1, *c) + "' (character " +
                     std::to_string(index) + " of " + seq.steps + ")");
        if (*c == 'r') {
          ASSERT_EQ(fcc_cuda_zero(metrics.get(), FCC_NUM_METRICS * 4), 0);
          ASSERT_EQ(fcc_cuda_zero(&dState->last_skipped, sizeof(float)), 0);
          skippedSinceTaken = 0;
          continue;
        }
        const float bad = *c == 's' ? inf : 0.0f;
        ASSERT_EQ(fcc_cuda_copy_to_device(overflow.get(), &bad, 4), 0);
        if (*c == 'i')
          ASSERT_EQ(fcc_cuda_copy_to_device(&dHyper->loss_scale, &inf,
                                            sizeof inf),
                    0);
        if (graph)
          ASSERT_EQ(fcc_cuda_graph_launch(exec), 0) << fcc_cuda_last_error();
        else
          enqueueStep();
        const bool skipped = *c != 'c';
        ref.step(skipped, seq.window);
        trace.push_back(ref.scale);
        skippedSinceTaken += skipped ? 1.0f : 0.0f;

        fcc_cuda_loss_scale_state got{};
        fcc_hyper gotHyper{};
        ASSERT_EQ(fcc_cuda_copy_to_host(&got, dState, sizeof got), 0)
            << fcc_cuda_last_error();
        ASSERT_EQ(fcc_cuda_copy_to_host(&gotHyper, dHyper, sizeof gotHyper),
                  0);
        EXPECT_EQ(got.scale, ref.scale);
        EXPECT_EQ(got.clean_steps, ref.clean);
        EXPECT_EQ(got.last_skipped, skippedSinceTaken);
        EXPECT_EQ(download(metrics.get(), FCC_NUM_METRICS)[FCC_METRIC_SKIPPED],
                  skippedSinceTaken);
        EXPECT_EQ(download(finite.get(), 1)[0], skipped ? 0.0f : 1.0f);
        // The next step's scale, as the host trainer would stage it; the
        // rest of the hyper-parameters untouched.
        EXPECT_EQ(gotHyper.loss_scale, float(ref.scale));
        fcc_hyper want = host;
        want.loss_scale = float(ref.scale);
        EXPECT_EQ(std::memcmp(&gotHyper, &want, sizeof want), 0);
      }
      if (exec)
        fcc_cuda_graph_destroy(exec);
      // The reference itself against the scales worked out by hand.
      EXPECT_EQ(trace, seq.scales);
    }
}

TEST_F(Cuda, LossScaleUpdateRejectsBadArguments) {
  Buffer state(sizeof(fcc_cuda_loss_scale_state)), hyper(sizeof(fcc_hyper)),
      metrics(FCC_NUM_METRICS * 4);
  fcc_cuda_loss_scale_update(
      static_cast<fcc_cuda_loss_scale_state *>(state.get()), hyper.get(),
      metrics.f(), 0);
  EXPECT_NE(fcc_cuda_synchronize(), 0);
  EXPECT_NE(
      std::string(fcc_cuda_last_error()).find("fcc_cuda_loss_scale_update"),
      std::string::npos)
      << fcc_cuda_last_error();
  fcc_cuda_shutdown();
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
}

//===----------------------------------------------------------------------===//
// Batches, memory, errors
//===----------------------------------------------------------------------===//

TEST_F(Cuda, BuildBatchMatchesAugment) {
  std::mt19937 rng(16);
  const int64_t images = 6, channels = 3, height = 8, width = 7;
  const int64_t image = channels * height * width;
  std::vector<uint8_t> pixels(size_t(images * image));
  for (uint8_t &p : pixels)
    p = uint8_t(rng() & 0xff);
  const std::vector<int64_t> index = {3, 0, 5, 5, 1};
  const int64_t count = int64_t(index.size());
  const Floats mean = {120.5f, 110.25f, 99.0f},
               invStd = {1.0f / 60.0f, 1.0f / 55.5f, 1.0f / 62.0f};
  fcc::trainer::AugmentConfig config;
  config.pad = 2;
  config.flip = true;
  config.cutout = 3;
  std::vector<int32_t> draws;
  std::vector<fcc::trainer::ExampleAugment> augs;
  for (int64_t i = 0; i < count; ++i) {
    augs.push_back(fcc::trainer::drawAugmentation(config, height, width, 7, 2,
                                                  index[size_t(i)] * 31 + i));
    const auto &a = augs.back();
    for (int32_t v : {a.dy, a.dx, a.flip, a.cy, a.cx})
      draws.push_back(v);
  }
  augs[1].cy = 0, augs[1].cx = width - 1; // cutout clipped at the corner
  draws[5 * 1 + 3] = 0, draws[5 * 1 + 4] = int32_t(width - 1);
  augs[2].flip = 1, draws[5 * 2 + 2] = 1;

  auto dPixels = uploadBytes(pixels.data(), int64_t(pixels.size()));
  auto dIndex = uploadBytes(index.data(), count * 8);
  auto dDraws = uploadBytes(draws.data(), int64_t(draws.size() * 4));
  auto dMean = upload(mean), dInvStd = upload(invStd);
  for (int dtype : kHalfTypes)
    for (bool augment : {true, false})
    for (int layout : {FCC_LAYOUT_NCHW, FCC_LAYOUT_NHWC}) {
      SCOPED_TRACE(typeName(dtype) + (augment ? " augmented" : " plain") +
                   (layout == FCC_LAYOUT_NHWC ? " NHWC" : " NCHW"));
      Buffer out(count * image * 4);
      fcc_cuda_build_batch(
          static_cast<const uint8_t *>(dPixels->get()),
          static_cast<const int64_t *>(dIndex->get()),
          augment ? static_cast<const int32_t *>(dDraws->get()) : nullptr,
          count, channels, height, width, dMean->f(), dInvStd->f(),
          augment ? config.pad : 0, augment ? config.cutout : 0, out.get(),
          dtype, layout);
      Floats want(static_cast<size_t>(count * image)), normalised(static_cast<size_t>(image));
      for (int64_t i = 0; i < count; ++i) {
        fcc::trainer::normaliseImage(pixels.data() + index[size_t(i)] * image,
                                     channels, height, width, mean.data(),
                                     invStd.data(),
                                     augment ? normalised.data()
                                             : want.data() + i * image);
        if (augment)
          fcc::trainer::augmentImage(normalised.data(), channels, height,
                                     width, config, augs[size_t(i)],
                                     want.data() + i * image);
      }
      Floats got = download(out.get(), count * image, dtype);
      if (layout == FCC_LAYOUT_NHWC)
        got = fromNhwc(got, count, channels, height, width);
      EXPECT_TRUE(near(got, rounded(want, dtype), 0.0));
    }
}

TEST_F(Cuda, MemoryAndCopies) {
  Buffer b(1000);
  std::vector<uint8_t> host(1000, 0xab);
  ASSERT_EQ(fcc_cuda_copy_to_host(host.data(), b.get(), 1000), 0);
  EXPECT_TRUE(std::all_of(host.begin(), host.end(),
                          [](uint8_t v) { return v == 0; }))
      << "fcc_cuda_malloc is zero-filled";
  void *pinned = fcc_cuda_host_alloc(1000);
  ASSERT_NE(pinned, nullptr) << fcc_cuda_last_error();
  std::memset(pinned, 7, 1000);
  ASSERT_EQ(fcc_cuda_copy_to_device(b.get(), pinned, 1000), 0);
  Buffer c(1000);
  ASSERT_EQ(fcc_cuda_copy(c.get(), b.get(), 600), 0);
  ASSERT_EQ(fcc_cuda_zero(c.get(), 100), 0);
  ASSERT_EQ(fcc_cuda_copy_to_host(host.data(), c.get(), 1000), 0);
  for (int i = 0; i < 1000; ++i)
    ASSERT_EQ(host[size_t(i)], i < 100 ? 0 : i < 600 ? 7 : 0) << i;
  fcc_cuda_host_free(pinned);
  int64_t used = -1, total = -1;
  fcc_cuda_memory(&used, &total);
  EXPECT_GT(total, 0);
  EXPECT_GT(used, 0);
  EXPECT_LE(used, total);
  EXPECT_NE(fcc_cuda_stream(), nullptr);
  EXPECT_NE(std::string(fcc_cuda_device_description()).find("sm_"),
            std::string::npos);
}

TEST_F(Cuda, ErrorsOfKernelsAreSticky) {
  Buffer b(64);
  fcc_cuda_relu_forward(b.get(), b.get(), 4, 7); // no such dtype
  EXPECT_NE(fcc_cuda_synchronize(), 0);
  EXPECT_NE(std::string(fcc_cuda_last_error()).find("fcc_cuda_relu_forward"),
            std::string::npos)
      << fcc_cuda_last_error();
  EXPECT_NE(fcc_cuda_synchronize(), 0) << "sticky";
  // A new context starts clean.
  fcc_cuda_shutdown();
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
  EXPECT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
}

} // namespace

// Without a device: the runtime says so, and nothing else is tried.
TEST(CudaWithoutDevice, InitReportsNoDevice) {
  if (haveDevice())
    GTEST_SKIP() << "a CUDA device is present";
  EXPECT_EQ(fcc_cuda_device_count(), 0);
  EXPECT_NE(fcc_cuda_init(0), 0);
  EXPECT_STREQ(fcc_cuda_last_error(), "no CUDA device found");
}
