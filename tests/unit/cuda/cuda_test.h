//===- cuda_test.h - Shared fixture of the CUDA runtime tests ---*- C++ -*-===//
//
// Every CUDA test is skipped without a device; otherwise it runs on an
// initialised runtime (fcc_cuda_init is idempotent) and must leave no sticky
// error. The same test objects run on a GPU and in the host emulation.
// Also: device buffers, copies and exact comparisons of the compressor and
// communication tests.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TESTS_CUDA_TEST_H
#define FCC_TESTS_CUDA_TEST_H

#include "fcc/runtime/compress.h"
#include "fcc/runtime/cuda_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace fcc::testing {

inline bool haveCudaDevice() {
  static const int count = fcc_cuda_device_count();
  return count > 0;
}

class CudaDeviceTest : public ::testing::Test {
protected:
  void SetUp() override {
    if (!haveCudaDevice())
      GTEST_SKIP() << "no CUDA device";
    ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
  }
  void TearDown() override {
    if (haveCudaDevice() && !IsSkipped())
      EXPECT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
  }
};

using Floats = std::vector<float>;
using Bytes = std::vector<unsigned char>;

// A device buffer (zero-filled), freed with the object.
class Dev {
public:
  explicit Dev(int64_t bytes) : p_(fcc_cuda_malloc(std::max<int64_t>(bytes, 1))) {
    EXPECT_NE(p_, nullptr) << fcc_cuda_last_error();
  }
  ~Dev() { fcc_cuda_free(p_); }
  Dev(const Dev &) = delete;
  Dev &operator=(const Dev &) = delete;
  unsigned char *get() const { return static_cast<unsigned char *>(p_); }

private:
  void *p_;
};

inline void put(void *dst, const void *src, int64_t bytes) {
  if (bytes > 0)
    ASSERT_EQ(fcc_cuda_copy_to_device(dst, src, bytes), 0)
        << fcc_cuda_last_error();
}
inline Bytes getBytes(const void *src, int64_t bytes) {
  Bytes out(size_t(std::max<int64_t>(bytes, 0)));
  if (bytes > 0)
    EXPECT_EQ(fcc_cuda_copy_to_host(out.data(), src, bytes), 0)
        << fcc_cuda_last_error();
  return out;
}
inline Floats getFloats(const void *src, int64_t n) {
  Floats out(size_t(std::max<int64_t>(n, 0)));
  if (n > 0)
    EXPECT_EQ(fcc_cuda_copy_to_host(out.data(), src, n * 4), 0)
        << fcc_cuda_last_error();
  return out;
}

inline fcc_compressor parse(const std::string &spec) {
  fcc_compressor c{};
  char err[256];
  EXPECT_EQ(fcc_compressor_parse(spec.c_str(), &c, err, sizeof err), 0) << err;
  return c;
}

// Byte-identical buffers.
inline ::testing::AssertionResult sameBytes(const Bytes &got, const Bytes &want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != " << want.size();
  for (size_t i = 0; i < want.size(); ++i)
    if (got[i] != want[i]) {
      size_t bad = 0;
      for (size_t j = i; j < want.size(); ++j)
        bad += got[j] != want[j];
      return ::testing::AssertionFailure()
             << bad << " of " << want.size() << " bytes differ; first at "
             << i << ": got " << int(got[i]) << ", expected " << int(want[i]);
    }
  return ::testing::AssertionSuccess();
}

// Bit-identical floats, except that any NaN matches any NaN.
inline ::testing::AssertionResult sameFloats(const Floats &got, const Floats &want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != " << want.size();
  for (size_t i = 0; i < want.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (a != b && !(std::isnan(got[i]) && std::isnan(want[i])))
      return ::testing::AssertionFailure()
             << "first difference at " << i << ": got " << got[i] << " (0x"
             << std::hex << a << "), expected " << want[i] << " (0x" << b
             << ")";
  }
  return ::testing::AssertionSuccess();
}

} // namespace fcc::testing

#endif // FCC_TESTS_CUDA_TEST_H
