//===- compress.cpp - Gradient compressors of data-parallel training ------===//
//
// Implements runtime/include/fcc/runtime/compress.h: spec parsing, payload
// sizes, and the CPU compressors and decompressors in the packed formats
// documented there.
//
// The stochastic methods (terngrad, qsgd) and the 16-bit casts run in
// parallel over chunks of 64 entries: a chunk owns whole bytes of every bit
// field (64 entries of b bits are 8b bytes), and every random draw is indexed
// by the entry, so the result does not depend on the thread count. The
// sparsifiers scan serially in index order, which is what their encodings
// need. Reductions that round (the QSGD norms) are serial within a bucket.
//
//===----------------------------------------------------------------------===//
#include "internal.h"
#include "fcc/runtime/compress.h"

#include "fcc/runtime/cpu_kernels.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "compressed payloads are little-endian; add byte swaps");

namespace {

using Byte = unsigned char;

//===----------------------------------------------------------------------===//
// Unaligned little-endian fields and bit conversions
//===----------------------------------------------------------------------===//

template <typename T> T load(const Byte *p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T> void store(Byte *p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

using fcc::cpu::bitsOf;
using fcc::cpu::floatOf;

const float kNaN = std::numeric_limits<float>::quiet_NaN();

// The fp16 bit pattern of x, rounded to nearest even by fcc_round_f16 (the
// one rounding of the runtime, half.cpp); the rounded float is then an exact
// fp16 value and only changes encoding here.
uint16_t f16BitsOf(float x) {
  uint32_t u = bitsOf(fcc_round_f16(x));
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) // NaN: quiet, top payload bits kept
    return uint16_t(sign | 0x7e00u | ((mag >> 13) & 0x3ffu));
  if (mag == 0x7f800000u)
    return uint16_t(sign | 0x7c00u);
  if (mag < 0x38800000u) // below 2^-14: zero or subnormal, m * 2^-24
    return uint16_t(sign | uint32_t(floatOf(mag) * 16777216.0f));
  // Normal: rebias the exponent (127 -> 15), keep the top 10 mantissa bits.
  return uint16_t(sign | (((mag >> 23) - 112u) << 10) | ((mag >> 13) & 0x3ffu));
}

float floatOfF16(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0) // zero or subnormal: exact in float
    return floatOf(sign | bitsOf(float(mantissa) * (1.0f / 16777216.0f)));
  if (exponent == 31)
    return floatOf(sign | 0x7f800000u | mantissa << 13);
  return floatOf(sign | (exponent + 112u) << 23 | mantissa << 13);
}

// bfloat16 is the top half of a float; fcc_round_bf16 rounds to nearest even.
uint16_t bf16BitsOf(float x) {
  return uint16_t(bitsOf(fcc_round_bf16(x)) >> 16);
}
float floatOfBf16(uint16_t h) { return floatOf(uint32_t(h) << 16); }

// |x| as an integer key: ordering the keys orders the magnitudes, with every
// NaN above +inf.
uint32_t magnitudeKey(float x) { return bitsOf(x) & 0x7fffffffu; }
constexpr uint32_t kInfKey = 0x7f800000u;

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

//===----------------------------------------------------------------------===//
// Bit fields (LSB first)
//===----------------------------------------------------------------------===//

class BitWriter {
public:
  explicit BitWriter(Byte *p) : p(p) {}
  void put(uint32_t value, int bits) {
    acc |= uint64_t(value) << count;
    count += bits;
    while (count >= 8) {
      *p++ = Byte(acc);
      acc >>= 8;
      count -= 8;
    }
  }
  void flush() {
    if (count > 0)
      *p++ = Byte(acc);
    acc = 0;
    count = 0;
  }

private:
  Byte *p;
  uint64_t acc = 0;
  int count = 0;
};

class BitReader {
public:
  explicit BitReader(const Byte *p) : p(p) {}
  uint32_t get(int bits) {
    while (count < bits) {
      acc |= uint64_t(*p++) << count;
      count += 8;
    }
    uint32_t v = uint32_t(acc & ((uint64_t(1) << bits) - 1));
    acc >>= bits;
    count -= bits;
    return v;
  }

private:
  const Byte *p;
  uint64_t acc = 0;
  int count = 0;
};

// Entries per parallel chunk: whole bytes of every bit field.
constexpr int64_t kChunk = 64;

// Below these sizes the loops run serially: a parallel region costs more than
// it saves on the many small gradients (biases, BatchNorm parameters).
constexpr int64_t kParallelEntries = 1 << 15;
constexpr int64_t kParallelChunks = kParallelEntries / kChunk;

//===----------------------------------------------------------------------===//
// Parameters and sizes
//===----------------------------------------------------------------------===//

int qsgdLevels(const fcc_compressor *c) {
  return c->levels > 0 ? c->levels : FCC_COMPRESS_QSGD_DEFAULT_LEVELS;
}

// ceil(log2(S + 1)): the bit width of S.
int qsgdBits(int levels) {
  int bits = 0;
  for (uint32_t s = uint32_t(levels); s != 0; s >>= 1)
    ++bits;
  return bits;
}

int64_t qsgdBucket(const fcc_compressor *c, int64_t n) {
  return c->bucket > 0 ? c->bucket : n;
}

int64_t qsgdBuckets(const fcc_compressor *c, int64_t n) {
  return n > 0 ? ceilDiv(n, qsgdBucket(c, n)) : 0;
}

// The topk encoding of c kept entries out of n: the bitmap when it is
// strictly smaller than the index list.
bool useBitmap(int64_t n, int64_t c) { return ceilDiv(n, 8) < 4 * c; }

int64_t sparseBytes(int64_t n, int64_t c) {
  return useBitmap(n, c) ? ceilDiv(n, 8) + 4 * c : 8 * c;
}

bool isThreshold(int method) {
  return method == FCC_COMPRESS_THRESHOLDV ||
         method == FCC_COMPRESS_ADAPTIVE_THRESHOLD;
}

//===----------------------------------------------------------------------===//
// Sparse encodings (topk, thresholds)
//===----------------------------------------------------------------------===//

// Writes the kept entries (ascending indices) of g[0..n) in the topk encoding;
// returns the bytes written.
int64_t encodeSparse(const float *g, int64_t n,
                     const std::vector<int32_t> &kept, Byte *p) {
  int64_t c = int64_t(kept.size());
  Byte *values;
  if (useBitmap(n, c)) {
    int64_t mapBytes = ceilDiv(n, 8);
    std::memset(p, 0, size_t(mapBytes));
    for (int32_t i : kept)
      p[i >> 3] |= Byte(1u << (i & 7));
    values = p + mapBytes;
  } else {
    for (int64_t j = 0; j < c; ++j)
      store<int32_t>(p + 4 * j, kept[size_t(j)]);
    values = p + 4 * c;
  }
  for (int64_t j = 0; j < c; ++j)
    store<float>(values + 4 * j, g[kept[size_t(j)]]);
  return sparseBytes(n, c);
}

// out[i] += scale * value for the c entries of a topk encoding.
void decodeSparseAdd(const Byte *p, int64_t n, int64_t c, float scale,
                     float *out) {
  if (useBitmap(n, c)) {
    const Byte *values = p + ceilDiv(n, 8);
    int64_t j = 0;
    for (int64_t byte = 0; byte < ceilDiv(n, 8) && j < c; ++byte) {
      for (unsigned bits = p[byte]; bits != 0 && j < c; bits &= bits - 1) {
        int64_t i = byte * 8 + __builtin_ctz(bits);
        if (i < n)
          out[i] += scale * load<float>(values + 4 * j);
        ++j;
      }
    }
  } else {
    const Byte *values = p + 4 * c;
    for (int64_t j = 0; j < c; ++j) {
      int64_t i = load<int32_t>(p + 4 * j);
      if (i >= 0 && i < n)
        out[i] += scale * load<float>(values + 4 * j);
    }
  }
}

// The k entries of largest magnitude (ties to the lower index), ascending.
std::vector<int32_t> topkIndices(const float *g, int64_t n, int64_t k) {
  std::vector<int32_t> kept;
  kept.reserve(size_t(k));
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i)
      kept.push_back(int32_t(i));
    return kept;
  }
  if (k <= 0)
    return kept;
  // The k-th largest key, then everything above it and the first entries
  // equal to it: exactly the first k of the order (key desc, index asc).
  std::vector<uint32_t> keys(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    keys[size_t(i)] = magnitudeKey(g[i]);
  std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(),
                   std::greater<uint32_t>());
  uint32_t kth = keys[size_t(k - 1)];
  int64_t above = 0;
  for (int64_t i = 0; i < n; ++i)
    above += magnitudeKey(g[i]) > kth;
  int64_t equalLeft = k - above;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t key = magnitudeKey(g[i]);
    if (key > kth || (key == kth && equalLeft-- > 0))
      kept.push_back(int32_t(i));
  }
  return kept;
}

// The entries kept by thresholdv / adaptive-threshold, ascending: those with
// |g| >= V, and every NaN.
std::vector<int32_t> thresholdIndices(const fcc_compressor *c, const float *g,
                                      int64_t n) {
  double v = c->threshold;
  if (c->method == FCC_COMPRESS_ADAPTIVE_THRESHOLD) {
    uint32_t maxKey = 0; // the largest non-NaN magnitude
    for (int64_t i = 0; i < n; ++i) {
      uint32_t key = magnitudeKey(g[i]);
      if (key <= kInfKey)
        maxKey = std::max(maxKey, key);
    }
    // max/2 in double is exact; max == 0 keeps nothing (but NaNs).
    v = maxKey == 0 ? std::numeric_limits<double>::infinity()
                    : double(floatOf(maxKey)) / 2;
  }
  std::vector<int32_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    float x = g[i];
    if (std::isnan(x) || double(std::fabs(x)) >= v)
      kept.push_back(int32_t(i));
  }
  return kept;
}

//===----------------------------------------------------------------------===//
// RandomK positions (Floyd's sampling)
//===----------------------------------------------------------------------===//

// A uniform integer in [0, bound) for Floyd's step j: Lemire's
// multiply-and-reject on 64-bit words, word a of step j being
// u32(32j + 2a) << 32 | u32(32j + 2a + 1). The rejection (probability below
// bound / 2^64 per word) makes it exact; the 16th word is accepted as is.
__extension__ typedef unsigned __int128 U128;

uint64_t floydDraw(uint64_t seed, uint64_t j, uint64_t bound) {
  const uint64_t stream = FCC_COMPRESS_STREAM_RANDOMK;
  for (uint64_t attempt = 0;; ++attempt) {
    uint64_t index = 32 * j + 2 * attempt;
    uint64_t x = uint64_t(fcc_random_u32(seed, stream, index)) << 32 |
                 fcc_random_u32(seed, stream, index + 1);
    U128 m = U128(x) * bound;
    uint64_t low = uint64_t(m);
    if (low >= bound || attempt == 15 ||
        low >= (uint64_t(0) - bound) % bound) // 2^64 mod bound
      return uint64_t(m >> 64);
  }
}

//===----------------------------------------------------------------------===//
// TernGrad and QSGD
//===----------------------------------------------------------------------===//

// TernGrad's scale: the largest magnitude (NaN above inf, see magnitudeKey).
float terngradScale(const float *g, int64_t n) {
  uint32_t maxKey = 0;
  bool parallel = n >= kParallelEntries;
#pragma omp parallel for schedule(static) reduction(max : maxKey) if (parallel)
  for (int64_t i = 0; i < n; ++i)
    maxKey = std::max(maxKey, magnitudeKey(g[i]));
  return floatOf(maxKey);
}

int64_t compressTerngrad(const float *g, int64_t n, uint64_t seed, Byte *p) {
  float s = terngradScale(g, n);
  store<float>(p, s);
  Byte *codes = p + 4;
  bool live = std::isfinite(s) && s > 0;
  int64_t chunks = ceilDiv(n, kChunk);
#pragma omp parallel for schedule(static) if (chunks >= kParallelChunks)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    BitWriter w(codes + chunk * (kChunk / 4));
    int64_t end = std::min(n, (chunk + 1) * kChunk);
    for (int64_t i = chunk * kChunk; i < end; ++i) {
      uint32_t code = 0;
      if (live && g[i] != 0) {
        double prob = double(std::fabs(g[i])) / double(s);
        if (prob >= 1 ||
            double(fcc_random_uniform(seed, FCC_COMPRESS_STREAM_TERNGRAD,
                                      uint64_t(i))) < prob)
          code = g[i] < 0 ? 2 : 1;
      }
      w.put(code, 2);
    }
    w.flush();
  }
  return 4 + ceilDiv(n, 4);
}

void decompressTerngrad(const Byte *p, int64_t n, float scale, float *out) {
  float s = load<float>(p);
  const Byte *codes = p + 4;
  bool finite = std::isfinite(s);
  const float value[4] = {0.0f, s, -s, 0.0f};
  int64_t chunks = ceilDiv(n, kChunk);
#pragma omp parallel for schedule(static) if (chunks >= kParallelChunks)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    BitReader r(codes + chunk * (kChunk / 4));
    int64_t end = std::min(n, (chunk + 1) * kChunk);
    for (int64_t i = chunk * kChunk; i < end; ++i) {
      uint32_t code = r.get(2);
      out[i] += scale * (finite ? value[code] : kNaN);
    }
  }
}

int64_t compressQsgd(const fcc_compressor *c, const float *g, int64_t n,
                     uint64_t seed, Byte *p) {
  const int levels = qsgdLevels(c);
  const int bits = qsgdBits(levels);
  const int64_t bucket = qsgdBucket(c, n), buckets = qsgdBuckets(c, n);
  // Norms in double, serially within a bucket (deterministic), rounded to
  // the fp32 that travels; quantisation uses the rounded norm, so that the
  // decoded values are unbiased for what the receiver sees.
  std::vector<float> norms(static_cast<size_t>(buckets));
#pragma omp parallel for schedule(static) if (n >= kParallelEntries)
  for (int64_t b = 0; b < buckets; ++b) {
    double sum = 0;
    int64_t end = std::min(n, (b + 1) * bucket);
    for (int64_t i = b * bucket; i < end; ++i)
      sum += double(g[i]) * double(g[i]);
    norms[size_t(b)] = float(std::sqrt(sum));
    store<float>(p + 4 * b, norms[size_t(b)]);
  }
  Byte *levelArea = p + 4 * buckets;
  Byte *signArea = levelArea + ceilDiv(n * bits, 8);
  int64_t chunks = ceilDiv(n, kChunk);
#pragma omp parallel for schedule(static) if (chunks >= kParallelChunks)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    BitWriter lw(levelArea + chunk * (kChunk / 8) * bits);
    BitWriter sw(signArea + chunk * (kChunk / 8));
    int64_t end = std::min(n, (chunk + 1) * kChunk);
    for (int64_t i = chunk * kChunk; i < end; ++i) {
      float norm = norms[size_t(i / bucket)];
      uint32_t level = 0;
      if (std::isfinite(norm) && norm > 0 && g[i] != 0) {
        double r = double(std::fabs(g[i])) * levels / double(norm);
        double floor = std::floor(r);
        double frac = r - floor;
        level = uint32_t(floor);
        if (frac > 0 &&
            double(fcc_random_uniform(seed, FCC_COMPRESS_STREAM_QSGD,
                                      uint64_t(i))) < frac)
          ++level;
        level = std::min(level, uint32_t(levels));
      }
      lw.put(level, bits);
      sw.put(g[i] < 0 ? 1 : 0, 1);
    }
    lw.flush();
    sw.flush();
  }
  return 4 * buckets + ceilDiv(n * bits, 8) + ceilDiv(n, 8);
}

void decompressQsgd(const fcc_compressor *c, const Byte *p, int64_t n,
                    float scale, float *out) {
  const int levels = qsgdLevels(c);
  const int bits = qsgdBits(levels);
  const int64_t bucket = qsgdBucket(c, n), buckets = qsgdBuckets(c, n);
  const Byte *levelArea = p + 4 * buckets;
  const Byte *signArea = levelArea + ceilDiv(n * bits, 8);
  int64_t chunks = ceilDiv(n, kChunk);
#pragma omp parallel for schedule(static) if (chunks >= kParallelChunks)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    BitReader lr(levelArea + chunk * (kChunk / 8) * bits);
    BitReader sr(signArea + chunk * (kChunk / 8));
    int64_t end = std::min(n, (chunk + 1) * kChunk);
    for (int64_t i = chunk * kChunk; i < end; ++i) {
      float norm = load<float>(p + 4 * (i / bucket));
      uint32_t level = lr.get(bits);
      bool negative = sr.get(1) != 0;
      float v = std::isfinite(norm)
                    ? float(double(norm) * double(level) / double(levels))
                    : kNaN;
      out[i] += scale * (negative ? -v : v);
    }
  }
}

//===----------------------------------------------------------------------===//
// Spec parsing
//===----------------------------------------------------------------------===//

const char *const kExpected =
    "expected one of none, fp16, bf16, randomk:K[:unbiased], topk:K, "
    "thresholdv:V, adaptive-threshold, terngrad, qsgd[:S[:bucket=B]]";

std::vector<std::string_view> splitColons(std::string_view s) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t colon = s.find(':', start);
    if (colon == std::string_view::npos) {
      parts.push_back(s.substr(start));
      return parts;
    }
    parts.push_back(s.substr(start, colon - start));
    start = colon + 1;
  }
}

bool isDigit(char ch) { return ch >= '0' && ch <= '9'; }

// A plain decimal: [+-] (digits [. digits*] | . digits) [(e|E) [+-] digits],
// finite in double. No hex, inf, nan or spaces.
bool parseNumber(std::string_view s, double &value) {
  size_t i = 0, n = s.size();
  if (i < n && (s[i] == '+' || s[i] == '-'))
    ++i;
  size_t numberStart = i;
  size_t intDigits = 0, fracDigits = 0;
  while (i < n && isDigit(s[i]))
    ++i, ++intDigits;
  if (i < n && s[i] == '.') {
    ++i;
    while (i < n && isDigit(s[i]))
      ++i, ++fracDigits;
  }
  if (intDigits + fracDigits == 0)
    return false;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < n && (s[i] == '+' || s[i] == '-'))
      ++i;
    size_t expDigits = 0;
    while (i < n && isDigit(s[i]))
      ++i, ++expDigits;
    if (expDigits == 0)
      return false;
  }
  if (i != n)
    return false;
  // from_chars: locale-independent; it takes no '+'.
  double magnitude;
  auto [end, ec] = std::from_chars(s.data() + numberStart, s.data() + n,
                                   magnitude, std::chars_format::general);
  if (ec != std::errc() || end != s.data() + n || !std::isfinite(magnitude))
    return false;
  value = s[0] == '-' ? -magnitude : magnitude;
  return true;
}

// Decimal digits only, at most max.
bool parseInteger(std::string_view s, int64_t max, int64_t &value) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), isDigit))
    return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  return ec == std::errc() && end == s.data() + s.size() && value <= max;
}

void writeError(char *err, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

void writeError(char *err, size_t errsize, const char *fmt, ...) {
  if (!err || errsize == 0)
    return;
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(err, errsize, fmt, args);
  va_end(args);
}

// The shortest decimal that parses back to v.
std::string formatNumber(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return ec == std::errc() ? std::string(buf, end) : std::string("nan");
}

} // namespace

//===----------------------------------------------------------------------===//
// C API
//===----------------------------------------------------------------------===//

extern "C" int fcc_compressor_parse(const char *spec, fcc_compressor *out,
                                    char *err, size_t errsize) {
  if (err && errsize > 0)
    err[0] = '\0';
  std::string_view text = spec ? spec : "";
  if (text.empty()) {
    writeError(err, errsize, "empty compression spec (%s)", kExpected);
    return 1;
  }
  std::vector<std::string_view> parts = splitColons(text);
  std::string_view name = parts[0];
  size_t args = parts.size() - 1;
  fcc_compressor c{};
  auto fail = [&](const char *what) {
    writeError(err, errsize, "%s: %s", spec, what);
    return 1;
  };
  auto noArguments = [&]() {
    return args == 0 ? 0 : fail("this method takes no parameters");
  };
  // K of randomk/topk from parts[1].
  auto parseRatio = [&](const char *usage) {
    if (args < 1 || parts[1].empty())
      return fail(usage);
    if (!parseNumber(parts[1], c.ratio) || !(c.ratio > 0 && c.ratio <= 1))
      return fail("K must be in (0, 1]");
    return 0;
  };

  if (name == "none" || name == "fp16" || name == "bf16" ||
      name == "adaptive-threshold" || name == "terngrad") {
    c.method = name == "none"                 ? FCC_COMPRESS_NONE
               : name == "fp16"               ? FCC_COMPRESS_FP16
               : name == "bf16"               ? FCC_COMPRESS_BF16
               : name == "adaptive-threshold" ? FCC_COMPRESS_ADAPTIVE_THRESHOLD
                                              : FCC_COMPRESS_TERNGRAD;
    if (noArguments())
      return 1;
  } else if (name == "randomk") {
    c.method = FCC_COMPRESS_RANDOMK;
    if (parseRatio("missing K (expected randomk:K[:unbiased], 0 < K <= 1)"))
      return 1;
    if (args >= 2) {
      if (parts[2] != "unbiased")
        return fail("expected ':unbiased' after K");
      c.unbiased = 1;
    }
    if (args > 2)
      return fail("unexpected text after ':unbiased'");
  } else if (name == "topk") {
    c.method = FCC_COMPRESS_TOPK;
    if (parseRatio("missing K (expected topk:K, 0 < K <= 1)"))
      return 1;
    if (args > 1)
      return fail("unexpected text after K");
  } else if (name == "thresholdv") {
    c.method = FCC_COMPRESS_THRESHOLDV;
    if (args < 1 || parts[1].empty())
      return fail("missing V (expected thresholdv:V, V >= 0)");
    if (!parseNumber(parts[1], c.threshold) || !(c.threshold >= 0))
      return fail("V must be a finite number >= 0");
    c.threshold += 0.0; // -0 -> +0
    if (args > 1)
      return fail("unexpected text after V");
  } else if (name == "qsgd") {
    c.method = FCC_COMPRESS_QSGD;
    c.levels = FCC_COMPRESS_QSGD_DEFAULT_LEVELS;
    if (args >= 1) {
      int64_t levels;
      if (!parseInteger(parts[1], std::numeric_limits<int>::max(), levels) ||
          levels < 1)
        return fail("S must be an integer >= 1 (and < 2^31)");
      c.levels = int(levels);
    }
    if (args >= 2) {
      std::string_view b = parts[2];
      constexpr std::string_view prefix = "bucket=";
      if (b.substr(0, prefix.size()) != prefix)
        return fail("expected ':bucket=B' after S");
      if (!parseInteger(b.substr(prefix.size()),
                        std::numeric_limits<int64_t>::max(), c.bucket) ||
          c.bucket < 1)
        return fail("bucket B must be an integer >= 1");
    }
    if (args > 2)
      return fail("unexpected text after ':bucket=B'");
  } else {
    writeError(err, errsize, "%s: unknown method (%s)", spec, kExpected);
    return 1;
  }
  if (out)
    *out = c;
  return 0;
}

extern "C" void fcc_compressor_format(const fcc_compressor *c, char *buf,
                                      size_t size) {
  std::string s;
  switch (c->method) {
  case FCC_COMPRESS_NONE:
    s = "none";
    break;
  case FCC_COMPRESS_FP16:
    s = "fp16";
    break;
  case FCC_COMPRESS_BF16:
    s = "bf16";
    break;
  case FCC_COMPRESS_RANDOMK:
    s = "randomk:" + formatNumber(c->ratio) + (c->unbiased ? ":unbiased" : "");
    break;
  case FCC_COMPRESS_TOPK:
    s = "topk:" + formatNumber(c->ratio);
    break;
  case FCC_COMPRESS_THRESHOLDV:
    s = "thresholdv:" + formatNumber(c->threshold + 0.0);
    break;
  case FCC_COMPRESS_ADAPTIVE_THRESHOLD:
    s = "adaptive-threshold";
    break;
  case FCC_COMPRESS_TERNGRAD:
    s = "terngrad";
    break;
  case FCC_COMPRESS_QSGD:
    s = "qsgd:" + std::to_string(qsgdLevels(c));
    if (c->bucket > 0)
      s += ":bucket=" + std::to_string(c->bucket);
    break;
  default:
    s = "invalid-method-" + std::to_string(c->method);
    break;
  }
  if (buf && size > 0)
    std::snprintf(buf, size, "%s", s.c_str());
}

extern "C" int64_t fcc_compress_k(const fcc_compressor *c, int64_t n) {
  if (c->method != FCC_COMPRESS_RANDOMK && c->method != FCC_COMPRESS_TOPK)
    return 0;
  if (n <= 0)
    return 0;
  double ratio = c->ratio;
  if (!(ratio > 0))
    return 1;
  if (ratio >= 1)
    return n;
  double t = ratio * double(n);
  double nearest = std::nearbyint(t);
  double k = std::fabs(t - nearest) <= 1e-9 * nearest ? nearest : std::ceil(t);
  return std::clamp<int64_t>(int64_t(k), 1, n);
}

extern "C" int fcc_compress_qsgd_levels(const fcc_compressor *c) {
  return qsgdLevels(c);
}

extern "C" int fcc_compress_qsgd_bits(const fcc_compressor *c) {
  return qsgdBits(qsgdLevels(c));
}

extern "C" int fcc_compress_fixed_size(const fcc_compressor *c) {
  return !isThreshold(c->method);
}

extern "C" int fcc_compress_summable(const fcc_compressor *c) {
  return c->method == FCC_COMPRESS_NONE || c->method == FCC_COMPRESS_FP16 ||
         c->method == FCC_COMPRESS_BF16 || c->method == FCC_COMPRESS_RANDOMK;
}

extern "C" int64_t fcc_compress_capacity(const fcc_compressor *c, int64_t n) {
  if (n < 0)
    return 0;
  switch (c->method) {
  case FCC_COMPRESS_NONE:
    return 4 * n;
  case FCC_COMPRESS_FP16:
  case FCC_COMPRESS_BF16:
    return 2 * n;
  case FCC_COMPRESS_RANDOMK:
    return 4 * fcc_compress_k(c, n);
  case FCC_COMPRESS_TOPK:
    return sparseBytes(n, fcc_compress_k(c, n));
  case FCC_COMPRESS_THRESHOLDV:
  case FCC_COMPRESS_ADAPTIVE_THRESHOLD:
    return 4 + sparseBytes(n, n);
  case FCC_COMPRESS_TERNGRAD:
    return 4 + ceilDiv(n, 4);
  case FCC_COMPRESS_QSGD:
    return 4 * qsgdBuckets(c, n) + ceilDiv(n * qsgdBits(qsgdLevels(c)), 8) +
           ceilDiv(n, 8);
  default:
    return 0;
  }
}

extern "C" int64_t fcc_compress_payload_bytes(const fcc_compressor *c,
                                              const void *payload, int64_t n) {
  if (!isThreshold(c->method))
    return fcc_compress_capacity(c, n);
  int64_t count = load<int32_t>(static_cast<const Byte *>(payload));
  return 4 + sparseBytes(n, std::clamp<int64_t>(count, 0, n));
}

extern "C" void fcc_randomk_indices(uint64_t shared_seed, int64_t n, int64_t k,
                                    int64_t *out) {
  k = std::clamp<int64_t>(k, 0, n);
  if (k == 0)
    return;
  // Floyd: for j = n-k .. n-1 draw t in [0, j]; take t, or j if t is taken.
  // The set is the same whichever structure records it: a bitmap when it is
  // small next to k, otherwise a hash set sorted at the end.
  if (n / 256 <= k) {
    std::vector<uint64_t> taken(static_cast<size_t>(ceilDiv(n, 64)), 0);
    for (int64_t j = n - k; j < n; ++j) {
      int64_t t = int64_t(floydDraw(shared_seed, uint64_t(j), uint64_t(j) + 1));
      if (taken[size_t(t >> 6)] >> (t & 63) & 1)
        t = j;
      taken[size_t(t >> 6)] |= uint64_t(1) << (t & 63);
    }
    int64_t m = 0;
    for (size_t w = 0; w < taken.size(); ++w)
      for (uint64_t bits = taken[w]; bits != 0; bits &= bits - 1)
        out[m++] = int64_t(w) * 64 + __builtin_ctzll(bits);
    return;
  }
  std::unordered_set<int64_t> taken;
  taken.reserve(size_t(2 * k));
  for (int64_t j = n - k; j < n; ++j) {
    int64_t t = int64_t(floydDraw(shared_seed, uint64_t(j), uint64_t(j) + 1));
    if (!taken.insert(t).second)
      taken.insert(j);
  }
  int64_t m = 0;
  for (int64_t t : taken)
    out[m++] = t;
  std::sort(out, out + k);
}

namespace {
// RandomK's positions for one (seed, n, k), shared by the compression, the
// decompression of every rank's payload and the error-feedback residual of
// a step: a small per-thread cache of the latest draws saves recomputing
// Floyd's sampling several times per tensor and step.
const std::vector<int64_t> &randomkPositions(uint64_t seed, int64_t n,
                                             int64_t k) {
  struct Entry {
    uint64_t seed = 0;
    int64_t n = -1, k = -1;
    std::vector<int64_t> idx;
  };
  thread_local Entry cache[4];
  thread_local unsigned next = 0;
  for (Entry &e : cache)
    if (e.seed == seed && e.n == n && e.k == k)
      return e.idx;
  Entry &e = cache[next++ % 4];
  e.seed = seed;
  e.n = n;
  e.k = k;
  e.idx.resize(static_cast<size_t>(k));
  fcc_randomk_indices(seed, n, k, e.idx.data());
  return e.idx;
}
} // namespace

extern "C" int64_t fcc_compress(const fcc_compressor *c, const float *g,
                                int64_t n, uint64_t shared_seed,
                                uint64_t private_seed, void *payload) {
  Byte *p = static_cast<Byte *>(payload);
  if (n < 0)
    return 0;
  switch (c->method) {
  case FCC_COMPRESS_NONE:
    if (n > 0)
      std::memcpy(p, g, size_t(4 * n));
    return 4 * n;
  case FCC_COMPRESS_FP16:
  case FCC_COMPRESS_BF16: {
    bool f16 = c->method == FCC_COMPRESS_FP16;
#pragma omp parallel for schedule(static) if (n >= kParallelEntries)
    for (int64_t i = 0; i < n; ++i)
      store<uint16_t>(p + 2 * i, f16 ? f16BitsOf(g[i]) : bf16BitsOf(g[i]));
    return 2 * n;
  }
  case FCC_COMPRESS_RANDOMK: {
    int64_t k = fcc_compress_k(c, n);
    const std::vector<int64_t> &idx = randomkPositions(shared_seed, n, k);
    for (int64_t j = 0; j < k; ++j)
      store<float>(p + 4 * j, g[idx[size_t(j)]]);
    return 4 * k;
  }
  case FCC_COMPRESS_TOPK:
    return encodeSparse(g, n, topkIndices(g, n, fcc_compress_k(c, n)), p);
  case FCC_COMPRESS_THRESHOLDV:
  case FCC_COMPRESS_ADAPTIVE_THRESHOLD: {
    std::vector<int32_t> kept = thresholdIndices(c, g, n);
    store<int32_t>(p, int32_t(kept.size()));
    return 4 + encodeSparse(g, n, kept, p + 4);
  }
  case FCC_COMPRESS_TERNGRAD:
    return compressTerngrad(g, n, private_seed, p);
  case FCC_COMPRESS_QSGD:
    return compressQsgd(c, g, n, private_seed, p);
  default:
    return 0;
  }
}

extern "C" void fcc_decompress_add(const fcc_compressor *c, const void *payload,
                                   int64_t n, uint64_t shared_seed, float scale,
                                   float *out) {
  const Byte *p = static_cast<const Byte *>(payload);
  if (n <= 0)
    return;
  switch (c->method) {
  case FCC_COMPRESS_NONE:
#pragma omp parallel for schedule(static) if (n >= kParallelEntries)
    for (int64_t i = 0; i < n; ++i)
      out[i] += scale * load<float>(p + 4 * i);
    return;
  case FCC_COMPRESS_FP16:
  case FCC_COMPRESS_BF16: {
    bool f16 = c->method == FCC_COMPRESS_FP16;
#pragma omp parallel for schedule(static) if (n >= kParallelEntries)
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h = load<uint16_t>(p + 2 * i);
      out[i] += scale * (f16 ? floatOfF16(h) : floatOfBf16(h));
    }
    return;
  }
  case FCC_COMPRESS_RANDOMK: {
    int64_t k = fcc_compress_k(c, n);
    const std::vector<int64_t> &idx = randomkPositions(shared_seed, n, k);
    float factor = c->unbiased ? float(double(n) / double(k)) : 1.0f;
    for (int64_t j = 0; j < k; ++j) {
      float v = load<float>(p + 4 * j);
      out[idx[size_t(j)]] += scale * (c->unbiased ? v * factor : v);
    }
    return;
  }
  case FCC_COMPRESS_TOPK:
    decodeSparseAdd(p, n, fcc_compress_k(c, n), scale, out);
    return;
  case FCC_COMPRESS_THRESHOLDV:
  case FCC_COMPRESS_ADAPTIVE_THRESHOLD: {
    int64_t count = std::clamp<int64_t>(load<int32_t>(p), 0, n);
    decodeSparseAdd(p + 4, n, count, scale, out);
    return;
  }
  case FCC_COMPRESS_TERNGRAD:
    decompressTerngrad(p, n, scale, out);
    return;
  case FCC_COMPRESS_QSGD:
    decompressQsgd(c, p, n, scale, out);
    return;
  default:
    return;
  }
}

extern "C" void fcc_payload_scale(const fcc_compressor *c, void *payload,
                                  int64_t n, float scale) {
  Byte *a = static_cast<Byte *>(payload);
  switch (c->method) {
  case FCC_COMPRESS_NONE:
  case FCC_COMPRESS_RANDOMK: {
    int64_t count = c->method == FCC_COMPRESS_NONE ? n : fcc_compress_k(c, n);
    for (int64_t i = 0; i < count; ++i)
      store<float>(a + 4 * i, load<float>(a + 4 * i) * scale);
    return;
  }
  case FCC_COMPRESS_FP16:
    for (int64_t i = 0; i < n; ++i)
      store<uint16_t>(a + 2 * i,
                      f16BitsOf(floatOfF16(load<uint16_t>(a + 2 * i)) * scale));
    return;
  case FCC_COMPRESS_BF16:
    for (int64_t i = 0; i < n; ++i)
      store<uint16_t>(a + 2 * i,
                      bf16BitsOf(floatOfBf16(load<uint16_t>(a + 2 * i)) * scale));
    return;
  default:
    return;
  }
}

extern "C" void fcc_payload_sum(const fcc_compressor *c, void *inout,
                                const void *in, int64_t n) {
  Byte *a = static_cast<Byte *>(inout);
  const Byte *b = static_cast<const Byte *>(in);
  switch (c->method) {
  case FCC_COMPRESS_NONE:
  case FCC_COMPRESS_RANDOMK: {
    int64_t count = c->method == FCC_COMPRESS_NONE ? n : fcc_compress_k(c, n);
#pragma omp parallel for schedule(static) if (count >= kParallelEntries)
    for (int64_t i = 0; i < count; ++i)
      store<float>(a + 4 * i, load<float>(a + 4 * i) + load<float>(b + 4 * i));
    return;
  }
  case FCC_COMPRESS_FP16:
#pragma omp parallel for schedule(static) if (n >= kParallelEntries)
    for (int64_t i = 0; i < n; ++i)
      store<uint16_t>(a + 2 * i,
                      f16BitsOf(floatOfF16(load<uint16_t>(a + 2 * i)) +
                                floatOfF16(load<uint16_t>(b + 2 * i))));
    return;
  case FCC_COMPRESS_BF16:
#pragma omp parallel for schedule(static) if (n >= kParallelEntries)
    for (int64_t i = 0; i < n; ++i)
      store<uint16_t>(a + 2 * i,
                      bf16BitsOf(floatOfBf16(load<uint16_t>(a + 2 * i)) +
                                 floatOfBf16(load<uint16_t>(b + 2 * i))));
    return;
  default:
    return;
  }
}
