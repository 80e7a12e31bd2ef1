//===- cuda_test.h - Shared fixture of the CUDA runtime tests ---*- C++ -*-===//
//
// Every CUDA test is skipped without a device; otherwise it runs on an
// initialised runtime (fcc_cuda_init is idempotent) and must leave no sticky
// error. The same test objects run on a GPU and in the host emulation.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TESTS_CUDA_TEST_H
#define FCC_TESTS_CUDA_TEST_H

#include "fcc/runtime/cuda_kernels.h"

#include <gtest/gtest.h>

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

} // namespace fcc::testing

#endif // FCC_TESTS_CUDA_TEST_H
