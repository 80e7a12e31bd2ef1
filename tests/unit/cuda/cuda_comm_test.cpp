//===- cuda_comm_test.cpp - GPU compression ops against the CPU runtime ---===//
//
// The entry points generated CUDA trainers call for the compression and
// collective ops (runtime/comm/comm_cuda.cu) must give exactly what the CPU
// trainer's (runtime/comm/comm.cpp) give on one rank: the same payload bytes
// from the same step seed and tensor id (the seeds derived on the device
// from a device step seed), the same decompressed, rank-averaged and
// residual gradients, plain copies for the collectives, and a step seed read
// when a captured graph runs. Several ranks (NCCL) need several GPUs and are
// checked by bench/gpu-check.sh's multi-rank part where there are.
//
// Compiled once, linked into cuda_kernels_test (skips without a GPU) and
// cuda_kernels_emulated_test (the code in the host emulation of CUDA).
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/comm.h"
#include "fcc/runtime/comm_cuda.h"
#include "fcc/runtime/compress.h"
#include "fcc/runtime/cuda_kernels.h"

#include "cuda_test.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace {

using namespace fcc::testing;

class CudaComm : public CudaDeviceTest {
protected:
  void SetUp() override {
    CudaDeviceTest::SetUp();
    if (IsSkipped() || HasFatalFailure())
      return;
    char err[256] = "";
    ASSERT_EQ(fcc_comm_cuda_init(err, sizeof err), 0) << err;
  }
  void TearDown() override {
    if (!IsSkipped())
      fcc_comm_cuda_finalize();
    CudaDeviceTest::TearDown();
  }
};

Floats gradient(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  Floats g(static_cast<size_t>(n));
  for (float &x : g)
    x = normal(rng);
  g[size_t(n / 2)] = 0.0f;
  return g;
}

const char *const kSpecs[] = {
    "randomk:0.1", "randomk:0.25:unbiased", "topk:0.05", "thresholdv:0.001",
    "adaptive-threshold", "terngrad", "qsgd:255", "qsgd:7:bucket=64",
    "fp16", "bf16"};

TEST_F(CudaComm, OneRankMatchesTheCpuRuntime) {
  const uint64_t stepSeed = 0x123456789abcull;
  for (int64_t n : {1000, 4097})
    for (const char *spec : kSpecs)
      for (int64_t tensor : {0, 7}) {
        SCOPED_TRACE(std::string(spec) + " n=" + std::to_string(n) +
                     " tensor=" + std::to_string(tensor));
        const fcc_compressor c = parse(spec);
        const Floats g = gradient(n, uint32_t(n + tensor));
        const int64_t capacity = fcc_compress_capacity(&c, n);
        ASSERT_EQ(fcc_comm_cuda_reserve(&c, n), 0) << fcc_cuda_last_error();

        // The CPU runtime on one rank.
        Bytes cpuPayload(static_cast<size_t>(capacity)),
            cpuRows(static_cast<size_t>(capacity));
        fcc_comm_compress(&c, tensor, g.data(), n, stepSeed,
                          cpuPayload.data());
        const int64_t used =
            fcc_compress_payload_bytes(&c, cpuPayload.data(), n);
        cpuPayload.resize(size_t(used));
        const size_t count = static_cast<size_t>(n);
        Floats cpuOut(count), cpuMean(count), cpuResidual(count);
        fcc_comm_decompress(&c, tensor, cpuPayload.data(), n, stepSeed,
                            cpuOut.data());
        fcc_comm_allgather(&c, cpuPayload.data(), n, capacity,
                           cpuRows.data());
        fcc_comm_decompress_mean(&c, tensor, cpuRows.data(), capacity, n,
                                 stepSeed, cpuMean.data());
        fcc_comm_residual(&c, tensor, g.data(), cpuPayload.data(), n,
                          stepSeed, cpuResidual.data());

        // The GPU runtime, the step seed in device memory.
        Dev dg(4 * n), seed(8), payload(capacity), out(4 * n), mean(4 * n),
            residual(4 * n);
        void *rows = fcc_comm_cuda_gather_buffer(capacity);
        ASSERT_NE(rows, nullptr) << fcc_cuda_last_error();
        put(dg.get(), g.data(), 4 * n);
        put(seed.get(), &stepSeed, 8);
        const auto *s = reinterpret_cast<const uint64_t *>(seed.get());
        const auto *gd = reinterpret_cast<const float *>(dg.get());
        fcc_comm_cuda_compress(&c, tensor, gd, n, s, payload.get());
        fcc_comm_cuda_decompress(&c, tensor, payload.get(), n, s,
                                 reinterpret_cast<float *>(out.get()));
        fcc_comm_cuda_allgather(&c, payload.get(), n, capacity, rows);
        fcc_comm_cuda_decompress_mean(&c, tensor, rows, capacity, n, s,
                                      reinterpret_cast<float *>(mean.get()));
        fcc_comm_cuda_residual(&c, tensor, gd, payload.get(), n, s,
                               reinterpret_cast<float *>(residual.get()));
        ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();

        EXPECT_TRUE(sameBytes(getBytes(payload.get(), used), cpuPayload));
        EXPECT_TRUE(sameFloats(getFloats(out.get(), n), cpuOut));
        EXPECT_TRUE(sameFloats(getFloats(mean.get(), n), cpuMean));
        EXPECT_TRUE(sameFloats(getFloats(residual.get(), n), cpuResidual));
      }
}

// One rank: the all-reduces copy (no averaging over one rank), as the CPU
// runtime's do.
TEST_F(CudaComm, OneRankCollectivesAreCopies) {
  const int64_t n = 777;
  const Floats g = gradient(n, 3);
  Dev in(4 * n), out(4 * n);
  put(in.get(), g.data(), 4 * n);
  fcc_comm_cuda_allreduce_f32(reinterpret_cast<const float *>(in.get()),
                              reinterpret_cast<float *>(out.get()), n, 1);
  EXPECT_TRUE(sameFloats(getFloats(out.get(), n), g));
  const fcc_compressor half = parse("fp16");
  Dev payload(2 * n), summed(2 * n);
  Bytes cpu(static_cast<size_t>(2 * n));
  fcc_compress(&half, g.data(), n, 0, 0, cpu.data());
  put(payload.get(), cpu.data(), 2 * n);
  fcc_comm_cuda_allreduce_payload(&half, payload.get(), summed.get(), 2 * n, n,
                                  1);
  EXPECT_TRUE(sameBytes(getBytes(summed.get(), 2 * n), cpu));
  // Nothing is sent, so nothing is counted.
  fcc_comm_stats stats{};
  fcc_comm_take_stats(&stats);
  fcc_comm_cuda_account(1000, 3);
  fcc_comm_take_stats(&stats);
  EXPECT_EQ(stats.bytes_sent, 0u);
  EXPECT_EQ(stats.collectives, 0u);
}

// Flattening and unflattening: one launch per 64 copies, every item
// exactly copied (sizes from 0 up, more items than one batch holds), and
// nothing else written.
TEST_F(CudaComm, CopyManyCopiesEveryItem) {
  const int count = FCC_COMM_CUDA_COPY_BATCH + 7;
  std::vector<int64_t> sizes, offsets;
  int64_t total = 0;
  for (int i = 0; i < count; ++i) {
    sizes.push_back(i % 5 == 0 ? 0 : (i * 37) % 300 + 1);
    offsets.push_back(total);
    total += sizes.back() + 1; // one guard float between items
  }
  const Floats src = gradient(total, 9);
  Dev in(4 * total), out(4 * total);
  put(in.get(), src.data(), 4 * total);
  Floats sentinel(static_cast<size_t>(total), -7.0f);
  put(out.get(), sentinel.data(), 4 * total);
  auto *s = reinterpret_cast<const float *>(in.get());
  auto *d = reinterpret_cast<float *>(out.get());
  std::vector<fcc_copy_item> items;
  for (int i = 0; i < count; ++i)
    items.push_back({d + offsets[size_t(i)], s + offsets[size_t(i)],
                     sizes[size_t(i)]});
  fcc_comm_cuda_copy_many(items.data(), count);
  items.clear(); // the launch keeps its own copy of the table
  Floats want = sentinel;
  for (int i = 0; i < count; ++i)
    for (int64_t k = 0; k < sizes[size_t(i)]; ++k)
      want[size_t(offsets[size_t(i)] + k)] = src[size_t(offsets[size_t(i)] + k)];
  EXPECT_TRUE(sameFloats(getFloats(out.get(), total), want));
}

// A captured compression reads the step seed when the graph runs, so each
// replay compresses with that step's seeds (RandomK positions, QSGD's
// rounding).
TEST_F(CudaComm, CapturedCompressionReadsEachStepsSeed) {
  const int64_t n = 2048;
  const Floats g = gradient(n, 11);
  for (const char *spec : {"randomk:0.1", "qsgd:15"}) {
    SCOPED_TRACE(spec);
    const fcc_compressor c = parse(spec);
    const int64_t capacity = fcc_compress_capacity(&c, n);
    ASSERT_EQ(fcc_comm_cuda_reserve(&c, n), 0) << fcc_cuda_last_error();
    Dev dg(4 * n), seed(8), payload(capacity);
    put(dg.get(), g.data(), 4 * n);
    const uint64_t first = 1;
    put(seed.get(), &first, 8);
    ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
    void *graph = nullptr;
    ASSERT_EQ(fcc_cuda_graph_begin(), 0) << fcc_cuda_last_error();
    fcc_comm_cuda_compress(&c, 5, reinterpret_cast<const float *>(dg.get()),
                           n, reinterpret_cast<const uint64_t *>(seed.get()),
                           payload.get());
    ASSERT_EQ(fcc_cuda_graph_end(&graph), 0) << fcc_cuda_last_error();
    for (uint64_t step : {uint64_t(42), uint64_t(43)}) {
      put(seed.get(), &step, 8);
      ASSERT_EQ(fcc_cuda_graph_launch(graph), 0) << fcc_cuda_last_error();
      ASSERT_EQ(fcc_cuda_synchronize(), 0) << fcc_cuda_last_error();
      Bytes cpu(static_cast<size_t>(capacity));
      fcc_comm_compress(&c, 5, g.data(), n, step, cpu.data());
      EXPECT_TRUE(sameBytes(getBytes(payload.get(), capacity), cpu))
          << "step seed " << step;
    }
    fcc_cuda_graph_destroy(graph);
  }
}

TEST_F(CudaComm, UseBeforeInitIsAStickyError) {
  fcc_comm_cuda_finalize();
  {
    const fcc_compressor c = parse("topk:0.5");
    Dev g(64), seed(8), payload(fcc_compress_capacity(&c, 16));
    fcc_comm_cuda_compress(&c, 0, reinterpret_cast<const float *>(g.get()),
                           16, reinterpret_cast<const uint64_t *>(seed.get()),
                           payload.get());
    EXPECT_NE(fcc_cuda_synchronize(), 0);
    EXPECT_NE(std::string(fcc_cuda_last_error()).find("fcc_comm_cuda_init"),
              std::string::npos)
        << fcc_cuda_last_error();
  }
  // A fresh start clears the sticky error for the next tests.
  fcc_cuda_shutdown();
  ASSERT_EQ(fcc_cuda_init(0), 0) << fcc_cuda_last_error();
  char err[256] = "";
  ASSERT_EQ(fcc_comm_cuda_init(err, sizeof err), 0) << err;
}

} // namespace
