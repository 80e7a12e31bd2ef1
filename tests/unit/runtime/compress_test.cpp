//===- compress_test.cpp - Tests of the gradient compressors --------------===//
//
// runtime/cpu/compress.cpp against references written here: spec parsing and
// its error messages, payload sizes against hand-derived formulas, payload
// bytes of small hand-worked cases, the sparsifiers against sorted
// references, RandomK's positions against an independent Floyd sampler and
// for uniformity, TernGrad and QSGD against reference quantisers (bit-exact
// with the documented Philox draws) and statistically (unbiased, variance),
// fp16/bf16 against F16C and a hand-written bf16 rounding, accumulation, the
// allreduce sum and the error-feedback identity.
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/compress.h"
#include "fcc/runtime/cpu_kernels.h"

#include <gtest/gtest.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using Bytes = std::vector<unsigned char>;

fcc_compressor parse(const std::string &spec) {
  fcc_compressor c;
  char err[256];
  int rc = fcc_compressor_parse(spec.c_str(), &c, err, sizeof(err));
  EXPECT_EQ(rc, 0) << spec << ": " << err;
  return c;
}

std::string format(const fcc_compressor &c) {
  char buf[128];
  fcc_compressor_format(&c, buf, sizeof(buf));
  return buf;
}

uint32_t bitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float floatOf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Exact equality, NaN equal to NaN (and -0 to 0: decompression adds onto a
// buffer, and 0 + -0 is +0).
void expectSameFloats(const std::vector<float> &got,
                      const std::vector<float> &want, const std::string &what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_TRUE(got[i] == want[i] ||
                (std::isnan(got[i]) && std::isnan(want[i])))
        << what << ": entry " << i << " got " << got[i] << " want " << want[i];
}

constexpr unsigned char kGuard = 0xAB;
constexpr size_t kGuardBytes = 32;

// Compresses into a buffer of capacity + guard bytes and checks that nothing
// past the returned size is written and that the size bookkeeping agrees.
Bytes compress(const fcc_compressor &c, const std::vector<float> &g,
               uint64_t shared = 1, uint64_t priv = 2) {
  int64_t n = int64_t(g.size());
  int64_t cap = fcc_compress_capacity(&c, n);
  Bytes buf(size_t(cap) + kGuardBytes, kGuard);
  int64_t used = fcc_compress(&c, g.data(), n, shared, priv, buf.data());
  EXPECT_LE(used, cap) << format(c);
  EXPECT_EQ(used, fcc_compress_payload_bytes(&c, buf.data(), n)) << format(c);
  if (fcc_compress_fixed_size(&c)) {
    EXPECT_EQ(used, cap) << format(c);
  }
  for (size_t i = size_t(used); i < buf.size(); ++i)
    if (buf[i] != kGuard) {
      ADD_FAILURE() << format(c) << ": byte " << i << " written past the "
                    << used << "-byte payload";
      break;
    }
  buf.resize(size_t(used));
  return buf;
}

std::vector<float> decompress(const fcc_compressor &c, const Bytes &payload,
                              int64_t n, uint64_t shared = 1) {
  std::vector<float> out(static_cast<size_t>(n), 0.0f);
  fcc_decompress_add(&c, payload.data(), n, shared, 1.0f, out.data());
  return out;
}

std::vector<float> randomGrad(std::mt19937 &rng, size_t n) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> g(n);
  for (float &x : g)
    x = dist(rng);
  return g;
}

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

const char *const kAllSpecs[] = {"none",
                                 "fp16",
                                 "bf16",
                                 "randomk:0.01",
                                 "randomk:0.3:unbiased",
                                 "topk:0.01",
                                 "topk:0.5",
                                 "thresholdv:0.5",
                                 "adaptive-threshold",
                                 "terngrad",
                                 "qsgd",
                                 "qsgd:1",
                                 "qsgd:4",
                                 "qsgd:16:bucket=100",
                                 "qsgd:3:bucket=64"};

//===----------------------------------------------------------------------===//
// Parsing and formatting
//===----------------------------------------------------------------------===//

TEST(CompressParse, ValidSpecsFields) {
  struct Case {
    const char *spec;
    int method;
    double ratio, threshold;
    int levels;
    int64_t bucket;
    int unbiased;
    const char *canonical;
  } cases[] = {
      {"none", FCC_COMPRESS_NONE, 0, 0, 0, 0, 0, "none"},
      {"fp16", FCC_COMPRESS_FP16, 0, 0, 0, 0, 0, "fp16"},
      {"bf16", FCC_COMPRESS_BF16, 0, 0, 0, 0, 0, "bf16"},
      {"randomk:0.01", FCC_COMPRESS_RANDOMK, 0.01, 0, 0, 0, 0, "randomk:0.01"},
      {"randomk:0.01:unbiased", FCC_COMPRESS_RANDOMK, 0.01, 0, 0, 0, 1,
       "randomk:0.01:unbiased"},
      {"randomk:1", FCC_COMPRESS_RANDOMK, 1, 0, 0, 0, 0, "randomk:1"},
      {"topk:0.001", FCC_COMPRESS_TOPK, 0.001, 0, 0, 0, 0, "topk:0.001"},
      {"topk:1e-3", FCC_COMPRESS_TOPK, 0.001, 0, 0, 0, 0, "topk:0.001"},
      {"topk:.25", FCC_COMPRESS_TOPK, 0.25, 0, 0, 0, 0, "topk:0.25"},
      {"topk:+0.5", FCC_COMPRESS_TOPK, 0.5, 0, 0, 0, 0, "topk:0.5"},
      {"topk:1.", FCC_COMPRESS_TOPK, 1, 0, 0, 0, 0, "topk:1"},
      {"thresholdv:0", FCC_COMPRESS_THRESHOLDV, 0, 0, 0, 0, 0, "thresholdv:0"},
      {"thresholdv:2.5e-4", FCC_COMPRESS_THRESHOLDV, 0, 2.5e-4, 0, 0, 0,
       "thresholdv:0.00025"},
      {"thresholdv:3", FCC_COMPRESS_THRESHOLDV, 0, 3, 0, 0, 0, "thresholdv:3"},
      {"adaptive-threshold", FCC_COMPRESS_ADAPTIVE_THRESHOLD, 0, 0, 0, 0, 0,
       "adaptive-threshold"},
      {"terngrad", FCC_COMPRESS_TERNGRAD, 0, 0, 0, 0, 0, "terngrad"},
      {"qsgd", FCC_COMPRESS_QSGD, 0, 0, 255, 0, 0, "qsgd:255"},
      {"qsgd:1", FCC_COMPRESS_QSGD, 0, 0, 1, 0, 0, "qsgd:1"},
      {"qsgd:255", FCC_COMPRESS_QSGD, 0, 0, 255, 0, 0, "qsgd:255"},
      {"qsgd:16:bucket=512", FCC_COMPRESS_QSGD, 0, 0, 16, 512, 0,
       "qsgd:16:bucket=512"},
      {"qsgd:2147483647", FCC_COMPRESS_QSGD, 0, 0, 2147483647, 0, 0,
       "qsgd:2147483647"},
  };
  for (const Case &t : cases) {
    SCOPED_TRACE(t.spec);
    fcc_compressor c = parse(t.spec);
    EXPECT_EQ(c.method, t.method);
    EXPECT_EQ(c.ratio, t.ratio);
    EXPECT_EQ(c.threshold, t.threshold);
    EXPECT_EQ(c.levels, t.levels);
    EXPECT_EQ(c.bucket, t.bucket);
    EXPECT_EQ(c.unbiased, t.unbiased);
    EXPECT_EQ(format(c), t.canonical);
    // Round trip: the canonical form parses to the same compressor and is a
    // fixed point of format.
    fcc_compressor back = parse(format(c));
    EXPECT_EQ(std::memcmp(&back, &c, sizeof(c)), 0);
    EXPECT_EQ(format(back), t.canonical);
  }
}

TEST(CompressParse, RatiosRoundTripExactly) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> dist(1e-9, 1.0);
  for (int t = 0; t < 200; ++t) {
    fcc_compressor c{};
    c.method = t % 2 ? FCC_COMPRESS_TOPK : FCC_COMPRESS_THRESHOLDV;
    (t % 2 ? c.ratio : c.threshold) = dist(rng);
    fcc_compressor back = parse(format(c));
    EXPECT_EQ(back.ratio, c.ratio) << format(c);
    EXPECT_EQ(back.threshold, c.threshold) << format(c);
  }
}

TEST(CompressParse, BadSpecsAreRejectedWithTheSpecInTheMessage) {
  struct Case {
    const char *spec;
    const char *reason; // a substring the message must contain
  } cases[] = {
      {"topk:2", "K must be in (0, 1]"},
      {"topk:0", "K must be in (0, 1]"},
      {"topk:-0", "K must be in (0, 1]"},
      {"topk:", "K"},
      {"topk", "K"},
      {"topk:0.1x", "K"},
      {"topk: 0.1", "K"},
      {"topk:0.1 ", "K"},
      {"topk:0x1p-3", "K"},
      {"topk:inf", "K"},
      {"topk:nan", "K"},
      {"topk:.", "K"},
      {"topk:1e", "K"},
      {"topk:0.1:0.2", "unexpected"},
      {"randomk:-1", "K must be in (0, 1]"},
      {"randomk:1.5", "K must be in (0, 1]"},
      {"randomk:0.1:biased", "unbiased"},
      {"randomk:0.1:unbiased:x", "unexpected"},
      {"qsgd:0", "S must be an integer >= 1"},
      {"qsgd:1.5", "S must be an integer >= 1"},
      {"qsgd:-3", "S must be an integer >= 1"},
      {"qsgd:", "S must be an integer >= 1"},
      {"qsgd:2147483648", "S must be an integer >= 1"},
      {"qsgd:255:bucket=0", "bucket"},
      {"qsgd:255:bucket=", "bucket"},
      {"qsgd:255:bucket=-4", "bucket"},
      {"qsgd:255:bucket=1.5", "bucket"},
      {"qsgd:255:buckets=4", "bucket"},
      {"qsgd:255:bucket=4:x", "unexpected"},
      {"thresholdv:-1", "V must be"},
      {"thresholdv:nan", "V must be"},
      {"thresholdv:1e999", "V must be"},
      {"thresholdv", "V"},
      {"none:1", "no parameters"},
      {"terngrad:2", "no parameters"},
      {"foo", "unknown method"},
      {"TOPK:0.1", "unknown method"},
      {"top-k:0.1", "unknown method"},
      {" none", "unknown method"},
      {"", "expected one of"},
  };
  for (const Case &t : cases) {
    SCOPED_TRACE(t.spec);
    fcc_compressor c;
    std::memset(&c, 0x5a, sizeof(c));
    fcc_compressor before = c;
    char err[512] = "untouched";
    EXPECT_NE(fcc_compressor_parse(t.spec, &c, err, sizeof(err)), 0);
    std::string msg = err;
    EXPECT_NE(msg.find(t.spec), std::string::npos) << msg;
    EXPECT_NE(msg.find(t.reason), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    if (*t.spec) {
      EXPECT_EQ(msg.rfind(std::string(t.spec) + ": ", 0), 0u) << msg;
    }
    EXPECT_EQ(std::memcmp(&c, &before, sizeof(c)), 0) << "out modified";
  }
  // The unknown-method message lists the methods.
  char err[512];
  fcc_compressor c;
  fcc_compressor_parse("foo", &c, err, sizeof(err));
  for (const char *name :
       {"none", "fp16", "bf16", "randomk", "topk", "thresholdv",
        "adaptive-threshold", "terngrad", "qsgd"})
    EXPECT_NE(std::string(err).find(name), std::string::npos) << name;
  // A short buffer truncates (NUL-terminated); a null one is allowed.
  char small[8];
  std::memset(small, 'x', sizeof(small));
  EXPECT_EQ(fcc_compressor_parse("topk:2", &c, small, sizeof(small)), 1);
  EXPECT_EQ(std::string(small), "topk:2:");
  EXPECT_EQ(fcc_compressor_parse("topk:2", &c, nullptr, 0), 1);
  EXPECT_EQ(fcc_compressor_parse(nullptr, &c, nullptr, 0), 1);
}

//===----------------------------------------------------------------------===//
// k, sizes and properties
//===----------------------------------------------------------------------===//

TEST(CompressSizes, K) {
  auto k = [](const char *spec, int64_t n) {
    fcc_compressor c = parse(spec);
    return fcc_compress_k(&c, n);
  };
  EXPECT_EQ(k("topk:0.01", 1000), 10);
  EXPECT_EQ(k("topk:0.01", 1001), 11); // 10.01 -> 11
  EXPECT_EQ(k("topk:0.01", 0), 0);
  EXPECT_EQ(k("topk:0.01", 1), 1);
  EXPECT_EQ(k("topk:0.01", 99), 1);
  EXPECT_EQ(k("topk:1", 4097), 4097);
  EXPECT_EQ(k("randomk:0.5", 7), 4);
  // 0.07 * 100 == 7.000000000000001 in double: still k = 7.
  EXPECT_EQ(k("randomk:0.07", 100), 7);
  EXPECT_EQ(k("topk:0.29", 100), 29); // 28.999999999999996
  EXPECT_EQ(k("topk:0.3", 1000000), 300000);
  EXPECT_EQ(k("topk:1e-9", 1000000), 1);
  EXPECT_EQ(k("qsgd", 1000), 0);
}

// The payload size of every method, written out from the formats.
int64_t expectedCapacity(const std::string &spec, int64_t n) {
  auto bitmap = [](int64_t n) { return ceilDiv(n, 8); };
  auto sparse = [&](int64_t c) { return std::min(8 * c, bitmap(n) + 4 * c); };
  auto kOf = [&](double ratio) {
    // ceil(ratio * n) for the ratios used below, in exact integer arithmetic.
    int64_t per1000 = int64_t(std::lround(ratio * 1000));
    return n == 0 ? 0 : std::max<int64_t>(1, ceilDiv(n * per1000, 1000));
  };
  if (spec == "none")
    return 4 * n;
  if (spec == "fp16" || spec == "bf16")
    return 2 * n;
  if (spec == "randomk:0.01")
    return 4 * kOf(0.01);
  if (spec == "randomk:0.3:unbiased")
    return 4 * kOf(0.3);
  if (spec == "topk:0.01")
    return sparse(kOf(0.01));
  if (spec == "topk:0.5")
    return sparse(kOf(0.5));
  if (spec == "thresholdv:0.5" || spec == "adaptive-threshold")
    return 4 + sparse(n);
  if (spec == "terngrad")
    return 4 + ceilDiv(n, 4);
  if (spec == "qsgd") // 8 bits per level
    return (n ? 4 : 0) + n + bitmap(n);
  if (spec == "qsgd:1") // 1 bit
    return (n ? 4 : 0) + 2 * bitmap(n);
  if (spec == "qsgd:4") // 3 bits
    return (n ? 4 : 0) + ceilDiv(3 * n, 8) + bitmap(n);
  if (spec == "qsgd:16:bucket=100") // 5 bits, ceil(n/100) norms
    return 4 * ceilDiv(n, 100) + ceilDiv(5 * n, 8) + bitmap(n);
  if (spec == "qsgd:3:bucket=64") // 2 bits
    return 4 * ceilDiv(n, 64) + ceilDiv(2 * n, 8) + bitmap(n);
  ADD_FAILURE() << "no formula for " << spec;
  return -1;
}

TEST(CompressSizes, HandDerivedValues) {
  auto cap = [](const char *spec, int64_t n) {
    fcc_compressor c = parse(spec);
    return fcc_compress_capacity(&c, n);
  };
  EXPECT_EQ(cap("qsgd:255", 1000), 4 + 1000 + 125);
  EXPECT_EQ(cap("qsgd", 1000), 1129);
  EXPECT_EQ(cap("qsgd:255:bucket=512", 1000), 8 + 1000 + 125);
  EXPECT_EQ(cap("qsgd:7", 1000), 4 + 375 + 125); // 3 bits
  EXPECT_EQ(cap("qsgd:8", 1000), 4 + 500 + 125); // 4 bits
  EXPECT_EQ(cap("qsgd:2", 7), 4 + 2 + 1);        // 14 bits -> 2 bytes
  EXPECT_EQ(cap("topk:0.01", 1000), 80);         // k = 10, index
  EXPECT_EQ(cap("topk:0.05", 1000), 125 + 200);  // k = 50, bitmap
  EXPECT_EQ(cap("topk:0.032", 1000), 125 + 128); // k = 32: 253 < 256, bitmap
  EXPECT_EQ(cap("topk:0.031", 1000), 248);       // k = 31: 125 + 124 > 248
  EXPECT_EQ(cap("topk:0.5", 1000), 125 + 2000);
  EXPECT_EQ(cap("topk:0.01", 1), 5); // k = 1: 1 + 4 < 8
  EXPECT_EQ(cap("randomk:0.01", 1000), 40);
  EXPECT_EQ(cap("thresholdv:1", 1000), 4 + 125 + 4000);
  EXPECT_EQ(cap("terngrad", 1000), 254);
  EXPECT_EQ(cap("terngrad", 1), 5);
  EXPECT_EQ(cap("none", 1000), 4000);
  EXPECT_EQ(cap("bf16", 1000), 2000);
}

TEST(CompressSizes, EveryMethodAndSize) {
  std::mt19937 rng(11);
  for (int64_t n : {0, 1, 7, 8, 63, 64, 65, 1000, 4097}) {
    std::vector<float> g = randomGrad(rng, size_t(n));
    for (const char *spec : kAllSpecs) {
      SCOPED_TRACE(std::string(spec) + " n=" + std::to_string(n));
      fcc_compressor c = parse(spec);
      int64_t cap = fcc_compress_capacity(&c, n);
      EXPECT_EQ(cap, expectedCapacity(spec, n));
      Bytes p = compress(c, g); // checks used == payload_bytes, guards
      if (fcc_compress_fixed_size(&c)) {
        EXPECT_EQ(int64_t(p.size()), cap);
      }
    }
  }
}

TEST(CompressSizes, Properties) {
  std::map<std::string, std::pair<int, int>> want = {
      // spec -> (fixed size, summable)
      {"none", {1, 1}},
      {"fp16", {1, 1}},
      {"bf16", {1, 1}},
      {"randomk:0.1", {1, 1}},
      {"topk:0.1", {1, 0}},
      {"thresholdv:0.1", {0, 0}},
      {"adaptive-threshold", {0, 0}},
      {"terngrad", {1, 0}},
      {"qsgd", {1, 0}}};
  for (auto &[spec, props] : want) {
    fcc_compressor c = parse(spec);
    EXPECT_EQ(fcc_compress_fixed_size(&c), props.first) << spec;
    EXPECT_EQ(fcc_compress_summable(&c), props.second) << spec;
  }
}

//===----------------------------------------------------------------------===//
// Hand-worked payload bytes
//===----------------------------------------------------------------------===//

Bytes f32Bytes(float v) {
  Bytes b(4);
  std::memcpy(b.data(), &v, 4);
  return b;
}

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes &p : parts)
    out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(CompressBytes, TopkBitmapAndIndex) {
  // n = 16, topk:0.25 -> k = 4; bitmap (2 bytes) + 16 < 32: bitmap.
  std::vector<float> g = {0.1f, -5.0f, 0.2f, 3.0f, 0.0f, 0.0f, 0.0f, 0.0f,
                          0.0f, 2.0f,  0.0f, 0.0f, 0.0f, 0.0f, 0.0f, -3.0f};
  // |g| sorted: 5 (1), 3 (3), 3 (15), 2 (9) -> positions 1, 3, 9, 15.
  Bytes want = concat({{0x0a, 0x82},
                       f32Bytes(-5.0f),
                       f32Bytes(3.0f),
                       f32Bytes(2.0f),
                       f32Bytes(-3.0f)});
  EXPECT_EQ(compress(parse("topk:0.25"), g), want);
  // topk:0.0625 -> k = 1: 2 + 4 < 8: still the bitmap.
  EXPECT_EQ(compress(parse("topk:0.0625"), g),
            concat({{0x02, 0x00}, f32Bytes(-5.0f)}));
  // n = 1000, k = 2: index encoding (16 < 125 + 8).
  std::vector<float> big(1000, 0.0f);
  big[700] = 1.0f;
  big[3] = -2.0f;
  big[999] = 0.5f;
  Bytes idx(8);
  int32_t i0 = 3, i1 = 700;
  std::memcpy(idx.data(), &i0, 4);
  std::memcpy(idx.data() + 4, &i1, 4);
  EXPECT_EQ(compress(parse("topk:0.002"), big),
            concat({idx, f32Bytes(-2.0f), f32Bytes(1.0f)}));
}

TEST(CompressBytes, EncodingBoundary) {
  // n = 1024: ceil(n/8) = 128. k = 32: 128 + 128 == 256, not smaller: index.
  // k = 33: 128 + 132 < 264: bitmap.
  std::vector<float> g(1024, 0.001f);
  for (int i = 10; i < 43; ++i)
    g[size_t(i)] = 1.0f;
  Bytes p = compress(parse("topk:0.03125"), g);
  ASSERT_EQ(p.size(), 256u);
  int32_t first, last;
  std::memcpy(&first, p.data(), 4);
  std::memcpy(&last, p.data() + 4 * 31, 4);
  EXPECT_EQ(first, 10);
  EXPECT_EQ(last, 41);
  fcc_compressor c33{};
  c33.method = FCC_COMPRESS_TOPK;
  c33.ratio = 33.0 / 1024;
  ASSERT_EQ(fcc_compress_k(&c33, 1024), 33);
  p = compress(c33, g);
  ASSERT_EQ(p.size(), 128u + 132u);
  EXPECT_EQ(p[0], 0x00);
  EXPECT_EQ(p[1], 0xfc); // 10..15
  EXPECT_EQ(p[5], 0x07); // 40..42
  EXPECT_EQ(p[6], 0x00);
}

TEST(CompressBytes, Thresholds) {
  std::vector<float> g = {0.5f, -0.25f, -0.5f, 0.49999997f, 1.0f};
  // thresholdv:0.5 keeps 0, 2, 4 (c = 3): bitmap 1 + 12 < 24.
  Bytes count(4);
  int32_t three = 3;
  std::memcpy(count.data(), &three, 4);
  Bytes want =
      concat({count, {0x15}, f32Bytes(0.5f), f32Bytes(-0.5f), f32Bytes(1.0f)});
  EXPECT_EQ(compress(parse("thresholdv:0.5"), g), want);
  // adaptive: max 1 -> V = 0.5, the same entries.
  EXPECT_EQ(compress(parse("adaptive-threshold"), g), want);
  // Nothing kept: just the count.
  EXPECT_EQ(compress(parse("thresholdv:2"), g), Bytes(4, 0));
}

TEST(CompressBytes, TernGradDeterministicEntries) {
  // Every |g| is 0 or s = 1: no randomness. Codes 1, 2, 0, 2, 1.
  std::vector<float> g = {1.0f, -1.0f, 0.0f, -1.0f, 1.0f};
  Bytes want = concat({f32Bytes(1.0f), {1 | 2 << 2 | 0 << 4 | 2 << 6, 1}});
  for (uint64_t seed : {1, 2, 3})
    EXPECT_EQ(compress(parse("terngrad"), g, 0, seed), want);
}

TEST(CompressBytes, QsgdIntegerLevels) {
  // norm 5, S = 5: r = 3, 4, 0 exactly -> levels 3, 4, 0 at any seed; 3 bits.
  std::vector<float> g = {3.0f, -4.0f, 0.0f};
  Bytes want = concat({f32Bytes(5.0f), {3 | 4 << 3, 0}, {0x02}});
  for (uint64_t seed : {1, 2, 3}) {
    fcc_compressor c = parse("qsgd:5");
    Bytes p = compress(c, g, 0, seed);
    EXPECT_EQ(p, want);
    expectSameFloats(decompress(c, p, 3), g, "qsgd:5");
  }
}

//===----------------------------------------------------------------------===//
// TopK and thresholds against sorted references
//===----------------------------------------------------------------------===//

// The dense vector that keeps the k entries first in (|g| desc, index asc).
std::vector<float> topkReference(const std::vector<float> &g, int64_t k) {
  std::vector<int64_t> order(g.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    float fa = std::fabs(g[size_t(a)]), fb = std::fabs(g[size_t(b)]);
    return fa != fb ? fa > fb : a < b;
  });
  std::vector<float> out(g.size(), 0.0f);
  for (int64_t j = 0; j < k; ++j)
    out[size_t(order[size_t(j)])] = g[size_t(order[size_t(j)])];
  return out;
}

// Many ties: magnitudes from a small set, random signs, some zeros.
std::vector<float> tiedGrad(std::mt19937 &rng, size_t n) {
  const float mags[] = {0.0f, 0.25f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 1e-3f};
  std::vector<float> g(n);
  for (float &x : g)
    x = mags[rng() % 8] * (rng() % 2 ? -1.0f : 1.0f);
  return g;
}

TEST(CompressTopk, MatchesSortedReference) {
  std::mt19937 rng(5);
  for (int64_t n : {1, 7, 100, 1000, 4097}) {
    for (bool ties : {false, true}) {
      std::vector<float> g =
          ties ? tiedGrad(rng, size_t(n)) : randomGrad(rng, size_t(n));
      for (double ratio : {0.001, 0.01, 0.02, 0.05, 0.1, 0.3, 0.9, 1.0}) {
        fcc_compressor c{};
        c.method = FCC_COMPRESS_TOPK;
        c.ratio = ratio;
        int64_t k = fcc_compress_k(&c, n);
        SCOPED_TRACE(format(c) + " n=" + std::to_string(n) +
                     (ties ? " ties" : ""));
        Bytes p = compress(c, g);
        bool bitmap = ceilDiv(n, 8) + 4 * k < 8 * k;
        EXPECT_EQ(int64_t(p.size()), bitmap ? ceilDiv(n, 8) + 4 * k : 8 * k);
        expectSameFloats(decompress(c, p, n), topkReference(g, k), "topk");
      }
    }
  }
}

TEST(CompressTopk, BothEncodingsExercised) {
  // n = 1000: k = 10 is the index encoding, k = 300 the bitmap.
  std::mt19937 rng(6);
  std::vector<float> g = tiedGrad(rng, 1000);
  for (auto [spec, size] : {std::pair<const char *, int64_t>{"topk:0.01", 80},
                            {"topk:0.3", 125 + 1200}}) {
    fcc_compressor c = parse(spec);
    Bytes p = compress(c, g);
    EXPECT_EQ(int64_t(p.size()), size) << spec;
    expectSameFloats(decompress(c, p, 1000),
                     topkReference(g, fcc_compress_k(&c, 1000)), spec);
  }
}

std::vector<float> thresholdReference(const std::vector<float> &g, double v,
                                      int64_t &count) {
  std::vector<float> out(g.size(), 0.0f);
  count = 0;
  for (size_t i = 0; i < g.size(); ++i)
    if (std::fabs(double(g[i])) >= v)
      out[i] = g[i], ++count;
  return out;
}

TEST(CompressThreshold, KeepsExactlyTheEntriesAtOrAboveV) {
  std::mt19937 rng(7);
  for (int64_t n : {1, 8, 1000, 4097}) {
    std::vector<float> g = tiedGrad(rng, size_t(n));
    g[0] = -1.5f; // boundary values equal to V are kept
    // V = 1.5 keeps few (index encoding), 0.25 most (bitmap), 0 all.
    for (double v : {1.5, 1.4999999, 1.5000001, 0.25, 1e-3, 0.0, 4.0}) {
      fcc_compressor c{};
      c.method = FCC_COMPRESS_THRESHOLDV;
      c.threshold = v;
      SCOPED_TRACE(format(c) + " n=" + std::to_string(n));
      int64_t count;
      std::vector<float> want = thresholdReference(g, v, count);
      Bytes p = compress(c, g);
      int32_t stored;
      std::memcpy(&stored, p.data(), 4);
      EXPECT_EQ(stored, count);
      EXPECT_EQ(int64_t(p.size()),
                4 + std::min(8 * count, ceilDiv(n, 8) + 4 * count));
      expectSameFloats(decompress(c, p, n), want, "thresholdv");
    }
  }
}

TEST(CompressThreshold, AdaptiveUsesHalfTheMax) {
  std::mt19937 rng(8);
  for (int64_t n : {1, 9, 1000, 4097}) {
    std::vector<float> g = randomGrad(rng, size_t(n));
    float maxAbs = 0;
    for (float x : g)
      maxAbs = std::max(maxAbs, std::fabs(x));
    // Put entries exactly at, just below and just above max/2.
    if (n >= 9) {
      g[1] = maxAbs / 2;
      g[2] = -std::nextafter(maxAbs / 2, 0.0f);
      g[3] = -std::nextafter(maxAbs / 2, 1e30f);
    }
    SCOPED_TRACE(n);
    int64_t count;
    std::vector<float> want = thresholdReference(g, double(maxAbs) / 2, count);
    if (n >= 9) {
      EXPECT_NE(want[1], 0.0f);
      EXPECT_EQ(want[2], 0.0f);
      EXPECT_NE(want[3], 0.0f);
    }
    fcc_compressor c = parse("adaptive-threshold");
    Bytes p = compress(c, g);
    int32_t stored;
    std::memcpy(&stored, p.data(), 4);
    EXPECT_EQ(stored, count);
    expectSameFloats(decompress(c, p, n), want, "adaptive");
  }
  // max == 0 keeps nothing; subnormal max keeps |g| >= max/2 exactly.
  fcc_compressor c = parse("adaptive-threshold");
  std::vector<float> zeros(100, 0.0f);
  zeros[5] = -0.0f;
  Bytes p = compress(c, zeros);
  EXPECT_EQ(p, Bytes(4, 0));
  float tiny = std::numeric_limits<float>::denorm_min();
  std::vector<float> sub = {tiny, 0.0f, -tiny, 0.0f};
  expectSameFloats(decompress(c, compress(c, sub), 4), sub, "subnormal max");
}

//===----------------------------------------------------------------------===//
// RandomK
//===----------------------------------------------------------------------===//

std::vector<int64_t> indices(uint64_t seed, int64_t n, int64_t k) {
  std::vector<int64_t> idx(static_cast<size_t>(k), -1);
  fcc_randomk_indices(seed, n, k, idx.data());
  return idx;
}

// Floyd's sampling as documented in compress.h, written independently.
std::vector<int64_t> floydReference(uint64_t seed, int64_t n, int64_t k) {
  const uint64_t stream = FCC_COMPRESS_STREAM_RANDOMK;
  std::set<int64_t> taken;
  for (int64_t j = n - k; j < n; ++j) {
    uint64_t bound = uint64_t(j) + 1, t = 0;
    for (uint64_t a = 0; a < 16; ++a) {
      uint64_t w = uint64_t(fcc_random_u32(seed, stream, 32 * j + 2 * a))
                       << 32 |
                   fcc_random_u32(seed, stream, 32 * j + 2 * a + 1);
      unsigned __int128 m = (unsigned __int128)w * bound;
      t = uint64_t(m >> 64);
      uint64_t threshold = (uint64_t(0) - bound) % bound; // 2^64 mod bound
      if (uint64_t(m) >= threshold)
        break;
    }
    if (!taken.insert(int64_t(t)).second)
      taken.insert(j);
  }
  return std::vector<int64_t>(taken.begin(), taken.end());
}

TEST(CompressRandomk, IndicesAreAPureSortedDistinctSample) {
  for (auto [n, k] : {std::pair<int64_t, int64_t>{1000, 10},
                      {1000, 1000},
                      {1000, 999},
                      {7, 3},
                      {1, 1},
                      {100000, 10},
                      {100000, 5000},
                      {3000, 10}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " k=" + std::to_string(k));
    std::set<std::vector<int64_t>> seen;
    for (uint64_t seed = 0; seed < 20; ++seed) {
      std::vector<int64_t> idx = indices(seed, n, k);
      EXPECT_EQ(idx, indices(seed, n, k)); // pure
      EXPECT_EQ(idx, floydReference(seed, n, k));
      for (size_t j = 0; j < idx.size(); ++j) {
        EXPECT_GE(idx[j], 0);
        EXPECT_LT(idx[j], n);
        if (j > 0) {
          EXPECT_LT(idx[j - 1], idx[j]);
        }
      }
      seen.insert(idx);
    }
    // Different seeds (steps) give different positions, unless there is only
    // one (or a handful of) possible subsets.
    if (k < n && n > 7) {
      EXPECT_EQ(seen.size(), 20u);
    }
    if (k == n) {
      EXPECT_EQ(seen.size(), 1u);
    }
  }
  fcc_randomk_indices(1, 10, 0, nullptr); // k = 0 writes nothing
}

TEST(CompressRandomk, PositionsAreUniform) {
  const int T = 20000;
  // Dense (bitmap) and sparse (hash set) bookkeeping of Floyd's sampler.
  for (auto [n, k] : {std::pair<int64_t, int64_t>{50, 10}, {3000, 10}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " k=" + std::to_string(k));
    std::vector<int64_t> hits(static_cast<size_t>(n), 0);
    for (uint64_t seed = 0; seed < uint64_t(T); ++seed)
      for (int64_t i : indices(seed * 7919 + 1, n, k))
        ++hits[size_t(i)];
    double p = double(k) / double(n);
    double mean = T * p, var = T * p * (1 - p);
    double chi2 = 0;
    for (int64_t h : hits)
      chi2 += (double(h) - mean) * (double(h) - mean) / var;
    // E[chi2] ~= n; 6 standard deviations of a chi-square with n dof.
    EXPECT_LT(chi2, double(n) + 6 * std::sqrt(2.0 * double(n)));
    if (n <= 100) {
      for (int64_t i = 0; i < n; ++i)
        EXPECT_LE(std::fabs(double(hits[size_t(i)]) - mean), 4 * std::sqrt(var))
            << "position " << i;
    }
  }
  // Every 3-subset of 6 positions equally likely (20 subsets, T/20 each).
  std::map<std::vector<int64_t>, int> subsets;
  for (uint64_t seed = 0; seed < uint64_t(T); ++seed)
    ++subsets[indices(seed, 6, 3)];
  EXPECT_EQ(subsets.size(), 20u);
  double p = 1.0 / 20, sigma = std::sqrt(T * p * (1 - p));
  for (auto &[subset, count] : subsets)
    EXPECT_LE(std::fabs(count - T * p), 4 * sigma);
}

TEST(CompressRandomk, DecompressScattersTheSampledValues) {
  std::mt19937 rng(9);
  for (int64_t n : {1, 7, 1000, 4097}) {
    std::vector<float> g = randomGrad(rng, size_t(n));
    for (const char *spec : {"randomk:0.01", "randomk:0.3:unbiased",
                             "randomk:1", "randomk:0.01:unbiased"}) {
      fcc_compressor c = parse(spec);
      int64_t k = fcc_compress_k(&c, n);
      SCOPED_TRACE(std::string(spec) + " n=" + std::to_string(n));
      for (uint64_t seed : {3, 4}) {
        std::vector<int64_t> idx = indices(seed, n, k);
        Bytes p = compress(c, g, seed, 99);
        ASSERT_EQ(int64_t(p.size()), 4 * k);
        std::vector<float> want(static_cast<size_t>(n), 0.0f);
        for (size_t j = 0; j < idx.size(); ++j) {
          float v;
          std::memcpy(&v, p.data() + 4 * j, 4);
          EXPECT_EQ(v, g[size_t(idx[j])]); // values in index order
          want[size_t(idx[j])] = g[size_t(idx[j])];
        }
        std::vector<float> got = decompress(c, p, n, seed);
        double factor = c.unbiased ? double(n) / double(k) : 1.0;
        for (int64_t i = 0; i < n; ++i)
          EXPECT_NEAR(got[size_t(i)], want[size_t(i)] * factor,
                      1e-6 * std::fabs(want[size_t(i)] * factor))
              << i;
      }
    }
  }
  // n/k exact (100): bitwise.
  fcc_compressor c = parse("randomk:0.01:unbiased");
  std::vector<float> g = randomGrad(rng, 1000);
  std::vector<float> got = decompress(c, compress(c, g, 5), 1000, 5);
  for (int64_t i : indices(5, 1000, 10))
    EXPECT_EQ(got[size_t(i)], g[size_t(i)] * 100.0f);
}

//===----------------------------------------------------------------------===//
// TernGrad and QSGD: reference quantisers and statistics
//===----------------------------------------------------------------------===//

// The decoded TernGrad vector for a private seed, from the documented draws.
std::vector<float> terngradReference(const std::vector<float> &g,
                                     uint64_t seed) {
  float s = 0;
  for (float x : g)
    s = std::max(s, std::fabs(x));
  std::vector<float> out(g.size(), 0.0f);
  if (s == 0)
    return out;
  for (size_t i = 0; i < g.size(); ++i) {
    double p = std::fabs(double(g[i])) / double(s);
    float u = fcc_random_uniform(seed, FCC_COMPRESS_STREAM_TERNGRAD, i);
    if (double(u) < p)
      out[i] = g[i] < 0 ? -s : s;
  }
  return out;
}

// The fp32 l2 norms of the buckets (computed in double).
std::vector<float> bucketNorms(const std::vector<float> &g, int64_t bucket) {
  std::vector<float> norms;
  for (size_t b = 0; b < g.size(); b += size_t(bucket)) {
    double sum = 0;
    for (size_t i = b; i < std::min(g.size(), b + size_t(bucket)); ++i)
      sum += double(g[i]) * double(g[i]);
    norms.push_back(float(std::sqrt(sum)));
  }
  return norms;
}

std::vector<float> qsgdReference(const std::vector<float> &g, int levels,
                                 int64_t bucket, uint64_t seed) {
  std::vector<float> norms = bucketNorms(g, bucket);
  std::vector<float> out(g.size(), 0.0f);
  for (size_t i = 0; i < g.size(); ++i) {
    double norm = norms[i / size_t(bucket)];
    if (norm == 0)
      continue;
    double r = std::fabs(double(g[i])) * levels / norm;
    double l = std::floor(r);
    if (double(fcc_random_uniform(seed, FCC_COMPRESS_STREAM_QSGD, i)) < r - l)
      l += 1;
    float v = float(norm * l / levels);
    out[i] = g[i] < 0 ? -v : v;
  }
  return out;
}

TEST(CompressStochastic, MatchesReferenceQuantisersBitExactly) {
  std::mt19937 rng(10);
  // 40000 entries run in parallel (compress.cpp's kParallelEntries).
  for (int64_t n : {1, 7, 64, 65, 1000, 4097, 40000}) {
    std::vector<float> g = randomGrad(rng, size_t(n));
    if (n > 10)
      g[3] = 0.0f, g[5] = -0.0f;
    for (uint64_t seed : {1, 77}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " seed=" + std::to_string(seed));
      fcc_compressor t = parse("terngrad");
      expectSameFloats(decompress(t, compress(t, g, 0, seed), n),
                       terngradReference(g, seed), "terngrad");
      for (auto [spec, levels, bucket] :
           {std::tuple<const char *, int, int64_t>{"qsgd", 255, 0},
            {"qsgd:1", 1, 0},
            {"qsgd:4", 4, 0},
            {"qsgd:16:bucket=100", 16, 100},
            {"qsgd:3:bucket=64", 3, 64},
            {"qsgd:1000:bucket=7", 1000, 7}}) {
        fcc_compressor c = parse(spec);
        Bytes p = compress(c, g, 0, seed);
        std::vector<float> norms = bucketNorms(g, bucket ? bucket : n);
        ASSERT_GE(p.size(), 4 * norms.size());
        for (size_t b = 0; b < norms.size(); ++b) {
          float stored;
          std::memcpy(&stored, p.data() + 4 * b, 4);
          EXPECT_EQ(stored, norms[b]) << spec << " bucket " << b;
        }
        expectSameFloats(decompress(c, p, n),
                         qsgdReference(g, levels, bucket ? bucket : n, seed),
                         spec);
      }
    }
  }
}

// A fixed gradient of 64 entries: zeros, negatives, magnitudes from 2.48 down
// to 2^-6 (small enough to quantise coarsely, large enough that every
// non-deterministic entry rounds up or down often in T draws, so that the
// normal approximation behind the 4-sigma bound holds).
std::vector<float> statGrad() {
  std::vector<float> g(64);
  for (int i = 0; i < 64; ++i) {
    float mag = std::ldexp(1.0f + float(i % 5) * 0.37f, -(i % 7));
    g[size_t(i)] = (i % 3 == 0 ? -1.0f : 1.0f) * mag;
  }
  g[7] = g[20] = g[41] = 0.0f;
  g[33] = -0.0f;
  return g;
}

struct Stats {
  std::vector<double> mean;
  std::vector<bool> constant; // every sample equal to the first
  std::vector<float> first;
  double meanSquaredError = 0; // E ||Q(g) - g||^2
};

Stats sample(const fcc_compressor &c, const std::vector<float> &g, int T) {
  size_t n = g.size();
  Stats s;
  s.mean.assign(n, 0.0);
  s.constant.assign(n, true);
  for (int t = 0; t < T; ++t) {
    std::vector<float> q = decompress(
        c, compress(c, g, 0, 1000003ull * uint64_t(t) + 17), int64_t(n));
    if (t == 0)
      s.first = q;
    for (size_t i = 0; i < n; ++i) {
      EXPECT_TRUE(std::isfinite(q[i]));
      s.mean[i] += q[i];
      s.constant[i] = s.constant[i] && q[i] == s.first[i];
      double e = double(q[i]) - double(g[i]);
      s.meanSquaredError += e * e;
    }
  }
  for (double &m : s.mean)
    m /= T;
  s.meanSquaredError /= T;
  return s;
}

// Per-entry check of unbiasedness: within 4 sigma of g, or exact where the
// variance is zero.
void expectUnbiased(const Stats &s, const std::vector<float> &g,
                    const std::vector<double> &variance, int T) {
  for (size_t i = 0; i < g.size(); ++i) {
    if (variance[i] == 0) {
      EXPECT_TRUE(s.constant[i]) << "entry " << i;
      EXPECT_EQ(s.first[i], g[i]) << "entry " << i;
    } else {
      EXPECT_LE(std::fabs(s.mean[i] - g[i]), 4 * std::sqrt(variance[i] / T))
          << "entry " << i << " g=" << g[i] << " mean=" << s.mean[i];
    }
  }
}

TEST(CompressStochastic, TernGradIsUnbiasedWithItsVariance) {
  const int T = 20000;
  std::vector<float> g = statGrad();
  double s = 0, l1 = 0, l2sq = 0;
  for (float x : g) {
    s = std::max(s, std::fabs(double(x)));
    l1 += std::fabs(double(x));
    l2sq += double(x) * double(x);
  }
  std::vector<double> variance(g.size());
  double total = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    variance[i] = s * std::fabs(double(g[i])) - double(g[i]) * double(g[i]);
    total += variance[i];
  }
  // The entry at the max and the zeros are deterministic.
  size_t argmax = 0;
  for (size_t i = 0; i < g.size(); ++i)
    if (std::fabs(g[i]) > std::fabs(g[argmax]))
      argmax = i;
  EXPECT_EQ(variance[argmax], 0.0);
  EXPECT_EQ(variance[7], 0.0);
  Stats st = sample(parse("terngrad"), g, T);
  expectUnbiased(st, g, variance, T);
  EXPECT_NEAR(total, s * l1 - l2sq, 1e-12 * s * l1);
  EXPECT_NEAR(st.meanSquaredError, total, 0.03 * total);
}

TEST(CompressStochastic, QsgdIsUnbiasedWithItsVariance) {
  const int T = 20000;
  std::vector<float> g = statGrad();
  for (auto [spec, levels, bucket] :
       {std::tuple<const char *, int, int64_t>{"qsgd:1", 1, 64},
        {"qsgd:4", 4, 64},
        {"qsgd:255", 255, 64},
        {"qsgd:2:bucket=16", 2, 16},
        {"qsgd:8:bucket=10", 8, 10}}) {
    SCOPED_TRACE(spec);
    std::vector<float> norms = bucketNorms(g, bucket);
    std::vector<double> variance(g.size());
    double total = 0, bound = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      double norm = norms[i / size_t(bucket)];
      double r = norm > 0 ? std::fabs(double(g[i])) * levels / norm : 0;
      double p = r - std::floor(r);
      variance[i] = (norm / levels) * (norm / levels) * p * (1 - p);
      total += variance[i];
    }
    // QSGD's bound per bucket of d entries: min(d/S^2, sqrt(d)/S) ||g_b||^2.
    for (size_t b = 0; b < norms.size(); ++b) {
      double d = double(
          std::min<size_t>(size_t(bucket), g.size() - b * size_t(bucket)));
      bound += std::min(d / (double(levels) * levels), std::sqrt(d) / levels) *
               double(norms[b]) * double(norms[b]);
    }
    EXPECT_LE(total, bound);
    Stats st = sample(parse(spec), g, T);
    expectUnbiased(st, g, variance, T);
    EXPECT_NEAR(st.meanSquaredError, total, 0.03 * total);
    EXPECT_LE(st.meanSquaredError, 1.03 * bound);
  }
}

TEST(CompressStochastic, AllZeroAndNonFinite) {
  for (int64_t n : {1, 64, 1000}) {
    std::vector<float> zeros(static_cast<size_t>(n), 0.0f);
    for (const char *spec : kAllSpecs) {
      fcc_compressor c = parse(spec);
      std::vector<float> q = decompress(c, compress(c, zeros), n);
      expectSameFloats(q, zeros, spec);
    }
  }
  // A non-finite entry makes TernGrad's scale and its QSGD bucket NaN.
  std::vector<float> g(200, 0.5f);
  g[150] = std::numeric_limits<float>::infinity();
  std::vector<float> q =
      decompress(parse("terngrad"), compress(parse("terngrad"), g), 200);
  for (float x : q)
    EXPECT_TRUE(std::isnan(x));
  fcc_compressor c = parse("qsgd:4:bucket=100");
  q = decompress(c, compress(c, g), 200);
  for (int i = 0; i < 200; ++i)
    EXPECT_EQ(std::isnan(q[size_t(i)]), i >= 100) << i;
  // TopK keeps a NaN first; thresholds keep it.
  g[150] = std::numeric_limits<float>::quiet_NaN();
  for (const char *spec :
       {"topk:0.005", "thresholdv:1", "adaptive-threshold"}) {
    fcc_compressor s = parse(spec);
    q = decompress(s, compress(s, g), 200);
    EXPECT_TRUE(std::isnan(q[150])) << spec;
  }
}

//===----------------------------------------------------------------------===//
// fp16 / bf16
//===----------------------------------------------------------------------===//

// Inputs over the whole float range: random bit patterns, plus values near
// the fp16 and bf16 rounding boundaries and specials.
std::vector<float> wideFloats(std::mt19937 &rng, size_t n) {
  std::vector<float> v;
  for (size_t i = 0; i < n; ++i)
    v.push_back(floatOf(uint32_t(rng())));
  std::uniform_real_distribution<float> small(-70000.0f, 70000.0f);
  for (size_t i = 0; i < n; ++i)
    v.push_back(small(rng) * std::ldexp(1.0f, -int(rng() % 40)));
  for (float x : {0.0f,
                  -0.0f,
                  65504.0f,
                  65519.0f,
                  65520.0f,
                  -65520.0f,
                  std::ldexp(1.0f, -24),
                  std::ldexp(1.0f, -25),
                  3 * std::ldexp(1.0f, -25),
                  1.0f + std::ldexp(1.0f, -11),
                  1.0f + std::ldexp(1.0f, -8),
                  1.0f + 3 * std::ldexp(1.0f, -8),
                  std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::denorm_min(),
                  floatOf(0x7f7f8000u),
                  floatOf(0x7f7f7fffu),
                  floatOf(0x3f808000u),
                  floatOf(0x3f818000u)})
    v.push_back(x);
  return v;
}

uint16_t f16Reference(float x) {
  return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// bf16 round to nearest even, by comparing the distances to the two
// neighbours (truncated and one ulp up) in double.
uint16_t bf16Reference(float x) {
  uint32_t u = bitsOf(x);
  uint32_t lo = u & 0xffff0000u;
  if (lo == u)
    return uint16_t(u >> 16);
  uint32_t hiBits = lo + 0x10000u; // magnitude one bf16 ulp up
  double a = std::fabs(double(x)), dlo = std::fabs(double(floatOf(lo)));
  double dhi = (hiBits & 0x7fffffffu) == 0x7f800000u
                   ? std::ldexp(1.0, 128) // the step past the largest finite
                   : std::fabs(double(floatOf(hiBits)));
  double toLo = a - dlo, toHi = dhi - a;
  bool up = toHi < toLo || (toHi == toLo && (lo >> 16 & 1u));
  return uint16_t((up ? hiBits : lo) >> 16);
}

float bf16Value(uint16_t h) { return floatOf(uint32_t(h) << 16); }

TEST(CompressHalf, Fp16MatchesF16C) {
  std::mt19937 rng(12);
  std::vector<float> g = wideFloats(rng, 3000);
  fcc_compressor c = parse("fp16");
  Bytes p = compress(c, g);
  int64_t n = int64_t(g.size());
  std::vector<float> q = decompress(c, p, n);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p.data() + 2 * i, 2);
    if (std::isnan(g[size_t(i)])) {
      EXPECT_EQ(h & 0x7c00, 0x7c00);
      EXPECT_NE(h & 0x3ff, 0);
      EXPECT_TRUE(std::isnan(q[size_t(i)]));
      continue;
    }
    ASSERT_EQ(h, f16Reference(g[size_t(i)])) << "x=" << g[size_t(i)];
    ASSERT_EQ(q[size_t(i)], _cvtsh_ss(h)); // (-0 decodes onto +0 as +0)
  }
}

TEST(CompressHalf, Bf16MatchesHandRounding) {
  std::mt19937 rng(13);
  std::vector<float> g = wideFloats(rng, 3000);
  fcc_compressor c = parse("bf16");
  Bytes p = compress(c, g);
  int64_t n = int64_t(g.size());
  std::vector<float> q = decompress(c, p, n);
  // Hand-checked: 0x3f808000 ties to 0x3f80, 0x3f818000 ties to 0x3f82,
  // 0x7f7f8000 ties to infinity.
  EXPECT_EQ(bf16Reference(floatOf(0x3f808000u)), 0x3f80);
  EXPECT_EQ(bf16Reference(floatOf(0x3f818000u)), 0x3f82);
  EXPECT_EQ(bf16Reference(floatOf(0x7f7f8000u)), 0x7f80);
  EXPECT_EQ(bf16Reference(floatOf(0x7f7f7fffu)), 0x7f7f);
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p.data() + 2 * i, 2);
    if (std::isnan(g[size_t(i)])) {
      EXPECT_TRUE(std::isnan(bf16Value(h)));
      EXPECT_TRUE(std::isnan(q[size_t(i)]));
      continue;
    }
    ASSERT_EQ(h, bf16Reference(g[size_t(i)])) << "x=" << g[size_t(i)];
    ASSERT_EQ(q[size_t(i)], bf16Value(h));
  }
}

TEST(CompressHalf, LargeTensorsInParallel) {
  std::mt19937 rng(17);
  std::vector<float> g = wideFloats(rng, 30000); // 60020 entries
  int64_t n = int64_t(g.size());
  for (bool f16 : {true, false}) {
    fcc_compressor c = parse(f16 ? "fp16" : "bf16");
    Bytes p = compress(c, g);
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(g[size_t(i)]))
        continue;
      uint16_t h;
      std::memcpy(&h, p.data() + 2 * i, 2);
      ASSERT_EQ(h,
                f16 ? f16Reference(g[size_t(i)]) : bf16Reference(g[size_t(i)]))
          << i;
    }
  }
}

//===----------------------------------------------------------------------===//
// Thread-count independence
//===----------------------------------------------------------------------===//

TEST(CompressDeterminism, PayloadsDoNotDependOnTheThreadCount) {
  std::mt19937 rng(18);
  const int64_t n = 100003;
  std::vector<float> g = randomGrad(rng, size_t(n));
  int threads = fcc_cpu_get_num_threads();
  for (const char *spec : kAllSpecs) {
    SCOPED_TRACE(spec);
    fcc_compressor c = parse(spec);
    fcc_cpu_set_num_threads(1);
    Bytes one = compress(c, g, 41, 42);
    std::vector<float> dOne = decompress(c, one, n, 41);
    fcc_cpu_set_num_threads(3);
    Bytes three = compress(c, g, 41, 42);
    std::vector<float> dThree = decompress(c, three, n, 41);
    fcc_cpu_set_num_threads(0);
    EXPECT_EQ(one, three);
    expectSameFloats(dOne, dThree, "decompressed");
  }
  fcc_cpu_set_num_threads(threads);
}

//===----------------------------------------------------------------------===//
// Accumulation, payload sums and error feedback
//===----------------------------------------------------------------------===//

TEST(CompressAccumulate, DecompressAddAppliesScaleOntoOut) {
  std::mt19937 rng(14);
  for (const char *spec : kAllSpecs) {
    SCOPED_TRACE(spec);
    fcc_compressor c = parse(spec);
    int64_t n = 1000;
    std::vector<float> g = randomGrad(rng, size_t(n));
    Bytes p = compress(c, g, 21, 22);
    std::vector<float> d = decompress(c, p, n, 21);
    for (float scale : {0.5f, -2.0f, 0.0f}) {
      std::vector<float> out = randomGrad(rng, size_t(n)), want = out;
      for (int64_t i = 0; i < n; ++i)
        want[size_t(i)] += scale * d[size_t(i)];
      fcc_decompress_add(&c, p.data(), n, 21, scale, out.data());
      expectSameFloats(out, want, "accumulate");
    }
  }
}

TEST(CompressAccumulate, PayloadSum) {
  std::mt19937 rng(15);
  const int64_t n = 1000;
  std::vector<float> g1 = randomGrad(rng, n), g2 = randomGrad(rng, n);
  // none and randomk: fp32 sums of the (shared-position) values.
  for (const char *spec : {"none", "randomk:0.05", "randomk:0.05:unbiased"}) {
    SCOPED_TRACE(spec);
    fcc_compressor c = parse(spec);
    Bytes a = compress(c, g1, 8), b = compress(c, g2, 8);
    fcc_payload_sum(&c, a.data(), b.data(), n);
    std::vector<float> sum(n);
    for (int64_t i = 0; i < n; ++i)
      sum[size_t(i)] = g1[size_t(i)] + g2[size_t(i)];
    expectSameFloats(decompress(c, a, n, 8),
                     decompress(c, compress(c, sum, 8), n, 8), "sum");
  }
  // fp16 / bf16: add the decoded values in float, round to the type.
  for (bool f16 : {true, false}) {
    fcc_compressor c = parse(f16 ? "fp16" : "bf16");
    std::vector<float> h1 = wideFloats(rng, 500), h2 = wideFloats(rng, 500);
    int64_t m = int64_t(h1.size());
    Bytes a = compress(c, h1), b = compress(c, h2);
    Bytes orig = a;
    fcc_payload_sum(&c, a.data(), b.data(), m);
    for (int64_t i = 0; i < m; ++i) {
      uint16_t x, y, s;
      std::memcpy(&x, orig.data() + 2 * i, 2);
      std::memcpy(&y, b.data() + 2 * i, 2);
      std::memcpy(&s, a.data() + 2 * i, 2);
      float sum =
          f16 ? _cvtsh_ss(x) + _cvtsh_ss(y) : bf16Value(x) + bf16Value(y);
      if (std::isnan(sum)) {
        EXPECT_TRUE(std::isnan(f16 ? _cvtsh_ss(s) : bf16Value(s)));
        continue;
      }
      ASSERT_EQ(s, f16 ? f16Reference(sum) : bf16Reference(sum))
          << (f16 ? "fp16 " : "bf16 ") << i;
    }
  }
  // Non-summable methods are left alone.
  fcc_compressor q = parse("qsgd");
  Bytes a = compress(q, g1), b = compress(q, g2), orig = a;
  fcc_payload_sum(&q, a.data(), b.data(), n);
  EXPECT_EQ(a, orig);
}

TEST(CompressAccumulate, ErrorFeedbackResidualIsExact) {
  std::mt19937 rng(16);
  for (int64_t n : {1, 7, 1000, 4097}) {
    std::vector<float> g = randomGrad(rng, size_t(n));
    for (const char *spec : kAllSpecs) {
      SCOPED_TRACE(std::string(spec) + " n=" + std::to_string(n));
      fcc_compressor c = parse(spec);
      Bytes p = compress(c, g, 31, 32);
      std::vector<float> d = decompress(c, p, n, 31);
      std::vector<float> residual = g;
      fcc_decompress_add(&c, p.data(), n, 31, -1.0f, residual.data());
      std::vector<float> want(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        want[size_t(i)] = g[size_t(i)] - d[size_t(i)];
      expectSameFloats(residual, want, "residual");
      // none is lossless: its residual is exactly zero.
      if (std::string(spec) == "none") {
        for (float r : residual)
          EXPECT_EQ(r, 0.0f);
      }
    }
  }
}

} // namespace
