//===- elementwise_test.cpp - Tests of the elementwise kernels -----------===//
//
// ReLU/CELU (forward against double references, backward against finite
// differences), broadcasting binary ops and sum-to-shape against an
// index-by-index reference, the affine map, and dropout masks.
//
//===----------------------------------------------------------------------===//
#include "test_util.h"

#include <cstring>

using namespace fcc::test;

namespace {

double celuRef(double x, double alpha) {
  return std::max(0.0, x) + std::min(0.0, alpha * (std::exp(x / alpha) - 1.0));
}

TEST(Activation, ReluForwardBackward) {
  std::mt19937 rng(1);
  std::vector<float> x = distinctFloats(rng, 1001),
                     dy = randomFloats(rng, 1001);
  Vec xd = toDouble(x), dyd = toDouble(dy);
  auto relu = [](const Vec &v) {
    Vec y(v.size());
    for (size_t i = 0; i < v.size(); ++i)
      y[i] = std::max(0.0, v[i]);
    return y;
  };
  std::vector<float> y(x.size(), NAN), dx(x.size(), NAN);
  fcc_cpu_relu_forward(x.data(), y.data(), int64_t(x.size()));
  EXPECT_TRUE(allClose(y, relu(xd), 0, 0));
  fcc_cpu_relu_backward(x.data(), dy.data(), dx.data(), int64_t(x.size()));
  EXPECT_TRUE(allClose(dx, numericGrad(relu, xd, dyd, 1e-6), 1e-7, 1e-7));
  // In place: dx aliases dy.
  fcc_cpu_relu_backward(x.data(), dy.data(), dy.data(), int64_t(x.size()));
  EXPECT_EQ(std::memcmp(dx.data(), dy.data(), dx.size() * 4), 0);
}

TEST(Activation, CeluForwardBackward) {
  std::mt19937 rng(2);
  std::vector<float> x = distinctFloats(rng, 777), dy = randomFloats(rng, 777);
  for (float &v : x)
    v *= 4.0f; // cover the saturating region of exp
  Vec xd = toDouble(x), dyd = toDouble(dy);
  for (double alpha : {1.0, 0.5, 2.5}) {
    auto celu = [&](const Vec &v) {
      Vec y(v.size());
      for (size_t i = 0; i < v.size(); ++i)
        y[i] = celuRef(v[i], alpha);
      return y;
    };
    std::vector<float> y(x.size(), NAN), dx(x.size(), NAN);
    fcc_cpu_celu_forward(x.data(), float(alpha), y.data(), int64_t(x.size()));
    EXPECT_TRUE(allClose(y, celu(xd), 1e-6, 1e-7)) << "alpha " << alpha;
    fcc_cpu_celu_backward(x.data(), dy.data(), float(alpha), dx.data(),
                          int64_t(x.size()));
    EXPECT_TRUE(allClose(dx, numericGrad(celu, xd, dyd), 1e-5, 1e-7))
        << "alpha " << alpha;
  }
}

TEST(Activation, CeluHandComputed) {
  // celu(-1, alpha=1) = e^-1 - 1 = -0.6321206; celu(-1, alpha=2) =
  // 2 (e^-0.5 - 1) = -0.7869387; celu(3, *) = 3.
  // Backward at -1, alpha 2: e^-0.5 = 0.6065307.
  const float x[3] = {-1, -1, 3};
  float y[3];
  fcc_cpu_celu_forward(x, 1.0f, y, 1);
  fcc_cpu_celu_forward(x + 1, 2.0f, y + 1, 2);
  EXPECT_TRUE(allClose(y, {-0.6321206, -0.7869387, 3.0}, 1e-6));
  const float dy[2] = {1, 1};
  float dx[2];
  fcc_cpu_celu_backward(x + 1, dy, 2.0f, dx, 2);
  EXPECT_TRUE(allClose(dx, {0.6065307, 1.0}, 1e-6));
}

TEST(Elementwise, AffineAndMul) {
  // 2 * [1, -2, 3] + 0.5 = [2.5, -3.5, 6.5]; in place.
  float x[3] = {1, -2, 3};
  fcc_cpu_affine(x, 2.0f, 0.5f, x, 3);
  EXPECT_TRUE(allClose(x, {2.5, -3.5, 6.5}, 0, 0));
  const float mask[3] = {0, 2, 0.5f};
  float y[3];
  fcc_cpu_mul_elementwise(x, mask, y, 3);
  EXPECT_TRUE(allClose(y, {0, -7, 3.25}, 0, 0));
}

//===----------------------------------------------------------------------===//
// Broadcasting
//===----------------------------------------------------------------------===//

using Shape = std::vector<int64_t>;

int64_t numel(const Shape &s) {
  int64_t n = 1;
  for (int64_t d : s)
    n *= d;
  return n;
}

// Flat index into `shape` of the broadcast counterpart of output index `i`.
int64_t broadcastIndex(int64_t i, const Shape &yShape, const Shape &shape) {
  int64_t index = 0, stride = 1;
  for (int d = int(yShape.size()) - 1; d >= 0; --d) {
    int64_t coord = i % yShape[d];
    i /= yShape[d];
    if (shape[d] != 1)
      index += coord * stride;
    stride *= shape[d];
  }
  return index;
}

double applyOp(int op, double a, double b) {
  switch (op) {
  case FCC_BINARY_ADD:
    return a + b;
  case FCC_BINARY_SUB:
    return a - b;
  case FCC_BINARY_MUL:
    return a * b;
  default:
    return a / b;
  }
}

struct BroadcastCase {
  Shape a, b, y;
};

void PrintTo(const BroadcastCase &c, std::ostream *os) {
  auto print = [&](const Shape &s) {
    *os << "[";
    for (size_t i = 0; i < s.size(); ++i)
      *os << (i ? "," : "") << s[i];
    *os << "]";
  };
  print(c.a), *os << " op ", print(c.b), *os << " -> ", print(c.y);
}

class Broadcast : public ::testing::TestWithParam<BroadcastCase> {};

TEST_P(Broadcast, BinaryMatchesReference) {
  const BroadcastCase &bc = GetParam();
  std::mt19937 rng(31);
  std::vector<float> a = randomFloats(rng, numel(bc.a));
  std::vector<float> b = randomFloats(rng, numel(bc.b), 0.5f, 2.0f);
  for (int op = FCC_BINARY_ADD; op <= FCC_BINARY_DIV; ++op) {
    std::vector<float> y(numel(bc.y), NAN);
    ASSERT_EQ(fcc_cpu_binary(op, a.data(), bc.a.data(), b.data(), bc.b.data(),
                             bc.y.data(), int(bc.y.size()), y.data()),
              FCC_OK)
        << fcc_cpu_last_error();
    Vec ref(y.size());
    for (int64_t i = 0; i < int64_t(ref.size()); ++i)
      ref[i] = applyOp(op, a[broadcastIndex(i, bc.y, bc.a)],
                       b[broadcastIndex(i, bc.y, bc.b)]);
    EXPECT_TRUE(allClose(y, ref, 1e-7, 1e-7)) << "op " << op;
  }
}

TEST_P(Broadcast, ReduceSumToIsTheAdjointOfBroadcast) {
  // Reducing dy from y's shape to b's shape is the gradient of broadcasting b.
  const BroadcastCase &bc = GetParam();
  std::mt19937 rng(32);
  std::vector<float> dy = randomFloats(rng, numel(bc.y));
  std::vector<float> db(numel(bc.b), NAN);
  ASSERT_EQ(fcc_cpu_reduce_sum_to(dy.data(), bc.y.data(), bc.b.data(),
                                  int(bc.y.size()), db.data()),
            FCC_OK)
      << fcc_cpu_last_error();
  Vec ref(db.size(), 0.0), mag(db.size(), 0.0);
  for (int64_t i = 0; i < int64_t(dy.size()); ++i) {
    ref[broadcastIndex(i, bc.y, bc.b)] += dy[i];
    mag[broadcastIndex(i, bc.y, bc.b)] += std::fabs(dy[i]);
  }
  EXPECT_TRUE(allClose(db, ref, 1e-6, 1e-7, &mag));
  // The reference is the finite-difference gradient of L = sum dy * bcast(b).
  auto bcast = [&](const Vec &v) {
    Vec out(dy.size());
    for (int64_t i = 0; i < int64_t(out.size()); ++i)
      out[i] = v[broadcastIndex(i, bc.y, bc.b)];
    return out;
  };
  EXPECT_TRUE(allCloseD(
      ref, numericGrad(bcast, Vec(db.size(), 0.5), toDouble(dy)), 1e-8, 1e-8));
}

// clang-format off
INSTANTIATE_TEST_SUITE_P(
    Shapes, Broadcast,
    ::testing::Values(
        BroadcastCase{{2, 3, 4}, {2, 3, 4}, {2, 3, 4}},           // equal
        BroadcastCase{{5, 7}, {1, 1}, {5, 7}},                    // scalar b
        BroadcastCase{{1, 1}, {5, 7}, {5, 7}},                    // scalar a
        BroadcastCase{{2, 3, 4}, {1, 3, 1}, {2, 3, 4}},           // per channel
        BroadcastCase{{4, 6, 5, 5}, {1, 6, 1, 1}, {4, 6, 5, 5}},  // NCHW bias
        BroadcastCase{{2, 1, 4}, {1, 3, 1}, {2, 3, 4}},           // both
        BroadcastCase{{3, 300}, {1, 300}, {3, 300}},              // row bias
        BroadcastCase{{37, 3}, {37, 1}, {37, 3}},                 // column
        BroadcastCase{{2, 1, 3, 1, 2}, {1, 4, 3, 5, 1}, {2, 4, 3, 5, 2}},
        BroadcastCase{{1, 2, 1, 2, 1, 2, 1, 2}, {2, 1, 2, 1, 2, 1, 2, 1},
                      {2, 2, 2, 2, 2, 2, 2, 2}},                  // rank 8
        BroadcastCase{{3, 1}, {3, 1}, {3, 1}},                    // size-1 dims
        BroadcastCase{{6}, {1}, {6}},
        BroadcastCase{{}, {}, {}}));                               // rank 0
// clang-format on

TEST(Broadcast, ReduceSumToThreadIndependent) {
  Shape x = {8, 64, 14, 14}, y = {1, 64, 1, 1}, row = {1, 64, 14, 14};
  std::mt19937 rng(33);
  std::vector<float> in = randomFloats(rng, numel(x));
  std::vector<float> a(64), b(64), c(numel(row)), d(numel(row));
  fcc_cpu_set_num_threads(1);
  ASSERT_EQ(fcc_cpu_reduce_sum_to(in.data(), x.data(), y.data(), 4, a.data()),
            FCC_OK);
  ASSERT_EQ(fcc_cpu_reduce_sum_to(in.data(), x.data(), row.data(), 4, c.data()),
            FCC_OK);
  fcc_cpu_set_num_threads(2);
  ASSERT_EQ(fcc_cpu_reduce_sum_to(in.data(), x.data(), y.data(), 4, b.data()),
            FCC_OK);
  ASSERT_EQ(fcc_cpu_reduce_sum_to(in.data(), x.data(), row.data(), 4, d.data()),
            FCC_OK);
  fcc_cpu_set_num_threads(0);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  EXPECT_EQ(std::memcmp(c.data(), d.data(), c.size() * 4), 0);
}

TEST(Broadcast, HandComputed) {
  // [[1, 2, 3], [4, 5, 6]] - [10, 20, 30] = [[-9, -18, -27], [-6, -15, -24]];
  // sum to [1, 3]: [5, 7, 9]; sum to [2, 1]: [6, 15]; sum to [1, 1]: 21.
  const float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {10, 20, 30};
  const int64_t as[2] = {2, 3}, bs[2] = {1, 3}, cs[2] = {2, 1}, ss[2] = {1, 1};
  float y[6], r[3];
  ASSERT_EQ(fcc_cpu_binary(FCC_BINARY_SUB, a, as, b, bs, as, 2, y), FCC_OK);
  EXPECT_TRUE(allClose(y, {-9, -18, -27, -6, -15, -24}, 0, 0));
  ASSERT_EQ(fcc_cpu_reduce_sum_to(a, as, bs, 2, r), FCC_OK);
  EXPECT_TRUE(allClose(r, {5, 7, 9}, 0, 0));
  ASSERT_EQ(fcc_cpu_reduce_sum_to(a, as, cs, 2, r), FCC_OK);
  EXPECT_TRUE(allClose(r, {6, 15}, 0, 0));
  ASSERT_EQ(fcc_cpu_reduce_sum_to(a, as, ss, 2, r), FCC_OK);
  EXPECT_EQ(r[0], 21.0f);
}

TEST(Broadcast, Errors) {
  const float a[6] = {}, b[6] = {};
  float y[6];
  const int64_t s23[2] = {2, 3}, s32[2] = {3, 2}, s13[2] = {1, 3};
  EXPECT_EQ(fcc_cpu_binary(FCC_BINARY_ADD, a, s23, b, s32, s23, 2, y),
            FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "do not broadcast"))
      << fcc_cpu_last_error();
  EXPECT_EQ(fcc_cpu_binary(7, a, s23, b, s23, s23, 2, y), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "unknown op"));
  int64_t big[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  EXPECT_EQ(fcc_cpu_binary(FCC_BINARY_ADD, a, big, b, big, big, 9, y),
            FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "rank"));
  // Sum-to a shape that is not a broadcast source of x.
  EXPECT_EQ(fcc_cpu_reduce_sum_to(a, s13, s23, 2, y), FCC_ERR_INVALID);
  EXPECT_TRUE(contains(fcc_cpu_last_error(), "reduce_sum_to"));
}

//===----------------------------------------------------------------------===//
// Dropout
//===----------------------------------------------------------------------===//

TEST(Dropout, MaskFollowsTheGenerator) {
  const int64_t count = 20000;
  const float ratio = 0.3f;
  std::vector<float> mask(count, NAN);
  fcc_cpu_dropout_mask(42, 7, ratio, mask.data(), count);
  int64_t kept = 0;
  for (int64_t i = 0; i < count; ++i) {
    bool keep = fcc_random_uniform(42, 7, uint64_t(i)) >= ratio;
    ASSERT_EQ(mask[i], keep ? 1.0f / 0.7f : 0.0f) << "element " << i;
    kept += keep;
  }
  // 14000 expected; the binomial std is ~65, so 5 sigma is ~325.
  EXPECT_NEAR(double(kept), 14000.0, 325.0);
}

TEST(Dropout, ReproducibleAndStreamDependent) {
  const int64_t count = 4096;
  std::vector<float> a(count), b(count), c(count);
  fcc_cpu_set_num_threads(1);
  fcc_cpu_dropout_mask(1, 2, 0.5f, a.data(), count);
  fcc_cpu_set_num_threads(2);
  fcc_cpu_dropout_mask(1, 2, 0.5f, b.data(), count);
  fcc_cpu_dropout_mask(1, 3, 0.5f, c.data(), count);
  fcc_cpu_set_num_threads(0);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), count * 4), 0);
  EXPECT_NE(std::memcmp(a.data(), c.data(), count * 4), 0);
}

TEST(Dropout, EdgeRatios) {
  std::vector<float> mask(100, NAN);
  fcc_cpu_dropout_mask(5, 0, 0.0f, mask.data(), 100);
  EXPECT_TRUE(allClose(mask, Vec(100, 1.0), 0, 0));
  fcc_cpu_dropout_mask(5, 0, 1.0f, mask.data(), 100); // documented: all zero
  EXPECT_TRUE(allClose(mask, Vec(100, 0.0), 0, 0));
}

} // namespace
