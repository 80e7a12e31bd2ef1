//===- compress_bench.cpp - Throughput of the gradient compressors --------===//
//
// fcc-compress-bench: for every compression method and gradient size, the
// time of one compress and one decompress_add, as GB/s of the fp32 gradient
// (4n bytes / time), on the CPU (runtime/cpu/compress.cpp, OpenMP threads as
// OMP_NUM_THREADS) and, when built with the CUDA runtime and a device is
// present, on the GPU (runtime/cuda/compress.cu), where it also prints the
// fraction of the device's peak memory bandwidth that rate is (peak = memory
// clock * bus width * 2 / 8, from cudaDeviceGetAttribute). Only the input's
// bytes count: a compressor also writes its payload and may read g several
// times (topk: 5 passes), so the traffic is higher than the rate shows.
// The GPU payload of every case is checked against the CPU's, byte for byte.
//
//   fcc-compress-bench [--sizes 1048576,16777216] [--methods a,b,...]
//                      [--cpu-only | --gpu-only] [--min-seconds 0.3]
//
// Inputs are gradient-like: normal(0, 1e-3) with 3% exact zeros.
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/compress.h"

#ifdef FCC_COMPRESS_BENCH_CUDA
#include "fcc/runtime/cuda_compress.h"
#include "fcc/runtime/cuda_kernels.h"

#include <cuda_runtime_api.h>
#endif

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

const char *const kDefaultMethods =
    "none,fp16,bf16,randomk:0.01,topk:0.01,topk:0.001,thresholdv:0.002,"
    "adaptive-threshold,terngrad,qsgd,qsgd:15:bucket=512";

std::vector<std::string> split(const std::string &s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty())
      out.push_back(item);
  return out;
}

std::vector<float> gradient(int64_t n) {
  std::mt19937 rng(12345);
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  std::uniform_int_distribution<int> percent(0, 99);
  std::vector<float> g(static_cast<size_t>(n));
  for (float &x : g)
    x = percent(rng) < 3 ? 0.0f : normal(rng);
  return g;
}

// Seconds per call of fn: runs it until minSeconds have passed (at least 3
// times, after one warm-up call).
double timeIt(const std::function<void()> &fn, double minSeconds) {
  fn();
  int reps = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  while (reps < 3 || elapsed < minSeconds) {
    fn();
    ++reps;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  }
  return elapsed / reps;
}

std::string sizeName(int64_t n) {
  char buf[32];
  if (n % (1 << 20) == 0)
    std::snprintf(buf, sizeof buf, "%lldM", static_cast<long long>(n >> 20));
  else
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

void runCpu(const std::vector<std::string> &methods,
            const std::vector<int64_t> &sizes, double minSeconds) {
  std::printf("CPU (runtime/cpu/compress.cpp), %d OpenMP threads\n\n",
              omp_get_max_threads());
  std::printf("| method | n | payload bytes | compress GB/s | decompress GB/s |\n");
  std::printf("|---|---:|---:|---:|---:|\n");
  for (int64_t n : sizes) {
    const std::vector<float> g = gradient(n);
    std::vector<float> out(static_cast<size_t>(n), 0.0f);
    for (const std::string &spec : methods) {
      fcc_compressor c{};
      char err[256];
      if (fcc_compressor_parse(spec.c_str(), &c, err, sizeof err)) {
        std::fprintf(stderr, "%s\n", err);
        std::exit(2);
      }
      std::vector<unsigned char> payload(
          static_cast<size_t>(fcc_compress_capacity(&c, n)));
      int64_t used = 0;
      // A new seed every call, as every training step has: RandomK's
      // positions are then drawn each time (the runtime caches them only
      // within a step).
      uint64_t seed = 1;
      const double tc = timeIt(
          [&] {
            ++seed;
            used = fcc_compress(&c, g.data(), n, seed, seed + 1,
                                payload.data());
          },
          minSeconds);
      const double td = timeIt(
          [&] {
            ++seed;
            fcc_decompress_add(&c, payload.data(), n, seed, 1.0f, out.data());
          },
          minSeconds);
      const double bytes = 4.0 * double(n);
      std::printf("| %s | %s | %lld | %.2f | %.2f |\n", spec.c_str(),
                  sizeName(n).c_str(), static_cast<long long>(used),
                  bytes / tc * 1e-9, bytes / td * 1e-9);
      std::fflush(stdout);
    }
  }
  std::printf("\n");
}

#ifdef FCC_COMPRESS_BENCH_CUDA

bool check(int rc, const char *what) {
  if (rc != 0 || fcc_cuda_synchronize() != 0) {
    std::fprintf(stderr, "%s: %s\n", what, fcc_cuda_last_error());
    return false;
  }
  return true;
}

// Seconds per call of fn on the runtime's stream (CUDA events).
double timeGpu(const std::function<void()> &fn, double minSeconds) {
  cudaStream_t s = static_cast<cudaStream_t>(fcc_cuda_stream());
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  fn();
  fcc_cuda_synchronize();
  int reps = 1;
  double seconds = 0;
  while (true) {
    cudaEventRecord(a, s);
    for (int r = 0; r < reps; ++r)
      fn();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    seconds = ms * 1e-3 / reps;
    if (ms * 1e-3 >= minSeconds || reps >= (1 << 16))
      break;
    reps *= 4;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return seconds;
}

void runGpu(const std::vector<std::string> &methods,
            const std::vector<int64_t> &sizes, double minSeconds) {
  if (fcc_cuda_device_count() == 0 || fcc_cuda_init(0) != 0) {
    std::printf("GPU: no CUDA device (%s)\n\n", fcc_cuda_last_error());
    return;
  }
  int device = 0, clockKHz = 0, busBits = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&clockKHz, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&busBits, cudaDevAttrGlobalMemoryBusWidth, device);
  // Double data rate: two transfers per clock.
  const double peak = double(clockKHz) * 1e3 * double(busBits) * 2.0 / 8.0;
  std::printf("GPU: %s, peak memory bandwidth %.0f GB/s (memory clock %d "
              "MHz x %d bits x 2)\n\n",
              fcc_cuda_device_description(), peak * 1e-9, clockKHz / 1000,
              busBits);
  std::printf("| method | n | payload bytes | compress GB/s | of peak | "
              "decompress GB/s | of peak | same bytes as CPU |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---|\n");
  for (int64_t n : sizes) {
    const std::vector<float> g = gradient(n);
    float *dg = static_cast<float *>(fcc_cuda_malloc(4 * n));
    float *dout = static_cast<float *>(fcc_cuda_malloc(4 * n));
    if (!dg || !dout || fcc_cuda_copy_to_device(dg, g.data(), 4 * n) != 0) {
      std::fprintf(stderr, "GPU buffers: %s\n", fcc_cuda_last_error());
      std::exit(1);
    }
    for (const std::string &spec : methods) {
      fcc_compressor c{};
      fcc_compressor_parse(spec.c_str(), &c, nullptr, 0);
      const int64_t capacity = fcc_compress_capacity(&c, n);
      void *payload = fcc_cuda_malloc(capacity);
      void *ws = fcc_cuda_malloc(fcc_cuda_compress_workspace_bytes(&c, n));
      fcc_cuda_compress(&c, dg, n, 1, 2, payload, ws);
      if (!check(0, spec.c_str()))
        std::exit(1);
      // The payload against the CPU's.
      std::vector<unsigned char> cpu(static_cast<size_t>(capacity)),
          gpu(static_cast<size_t>(capacity));
      const int64_t used = fcc_compress(&c, g.data(), n, 1, 2, cpu.data());
      fcc_cuda_copy_to_host(gpu.data(), payload, capacity);
      const bool same =
          fcc_compress_payload_bytes(&c, gpu.data(), n) == used &&
          std::memcmp(cpu.data(), gpu.data(), size_t(used)) == 0;
      const double tc = timeGpu(
          [&] { fcc_cuda_compress(&c, dg, n, 1, 2, payload, ws); },
          minSeconds);
      const double td = timeGpu(
          [&] {
            fcc_cuda_decompress_add(&c, payload, n, 1, 1.0f, dout, ws);
          },
          minSeconds);
      if (!check(0, spec.c_str()))
        std::exit(1);
      const double bytes = 4.0 * double(n);
      const double rc = bytes / tc, rd = bytes / td;
      std::printf("| %s | %s | %lld | %.1f | %.0f%% | %.1f | %.0f%% | %s |\n",
                  spec.c_str(), sizeName(n).c_str(),
                  static_cast<long long>(used), rc * 1e-9, 100 * rc / peak,
                  rd * 1e-9, 100 * rd / peak, same ? "yes" : "NO");
      std::fflush(stdout);
      fcc_cuda_free(payload);
      fcc_cuda_free(ws);
    }
    fcc_cuda_free(dg);
    fcc_cuda_free(dout);
  }
  std::printf("\n");
}

#endif // FCC_COMPRESS_BENCH_CUDA

} // namespace

int main(int argc, char **argv) {
  std::vector<int64_t> sizes = {int64_t(1) << 20, int64_t(1) << 24};
  std::vector<std::string> methods = split(kDefaultMethods);
  bool cpu = true, gpu = true;
  double minSeconds = 0.3;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--sizes") {
      sizes.clear();
      for (const std::string &s : split(value()))
        sizes.push_back(std::atoll(s.c_str()));
    } else if (arg == "--methods") {
      methods = split(value());
    } else if (arg == "--cpu-only") {
      gpu = false;
    } else if (arg == "--gpu-only") {
      cpu = false;
    } else if (arg == "--min-seconds") {
      minSeconds = std::atof(value().c_str());
    } else {
      std::fprintf(stderr,
                   "usage: %s [--sizes N,...] [--methods SPEC,...] "
                   "[--cpu-only | --gpu-only] [--min-seconds S]\n",
                   argv[0]);
      return 2;
    }
  }
  for (const std::string &spec : methods) {
    char err[256];
    if (fcc_compressor_parse(spec.c_str(), nullptr, err, sizeof err)) {
      std::fprintf(stderr, "%s\n", err);
      return 2;
    }
  }
  if (cpu)
    runCpu(methods, sizes, minSeconds);
#ifdef FCC_COMPRESS_BENCH_CUDA
  if (gpu)
    runGpu(methods, sizes, minSeconds);
#else
  if (gpu)
    std::printf("GPU: not built (no CUDA runtime in this build)\n");
#endif
  return 0;
}
