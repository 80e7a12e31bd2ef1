//===- emu.h - Host emulation of the CUDA execution model (tests only) ----===//
//
// Force-included (-include) into the kernel sources of runtime/cuda after
// preprocess.py has rewritten their `kernel<<<grid, block, ...>>>(args)`
// launches into fcc_emu_launch calls, so that g++ compiles them as host code
// and cuda_kernels_test can run the kernels' real code on a machine without
// a GPU (CI). The emulation:
//  - runs a launch's blocks one after another; the threads of a block run in
//    order on the calling thread, or, for kernels that synchronise their
//    block (__syncthreads), on a pool of std::threads, one per thread of the
//    block, meeting at a barrier;
//  - turns __shared__ into function-local statics (one block at a time);
//  - provides the device intrinsics the kernels use;
//  - keeps the storage types: cuda_fp16.h/cuda_bf16.h convert on the host
//    with the same round-to-nearest-even as the device.
// What it cannot check: device arithmetic (the CUDA math library's expf,
// nvcc's -fmad=false), launch limits, timing, and cuDNN/cuBLAS/NCCL
// themselves (emu_dnn.cpp and emu_nccl.cpp stand in for them with the CPU
// kernels and MPI).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TESTS_CUDA_EMU_H
#define FCC_TESTS_CUDA_EMU_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

extern thread_local dim3 blockIdx, threadIdx;
extern dim3 blockDim, gridDim;

void fcc_emu_sync();
#define __syncthreads() fcc_emu_sync()

// One launch: body() runs once per thread with blockIdx/threadIdx set.
// The _sync variant gives every thread of a block its own std::thread.
void fcc_emu_launch(dim3 grid, dim3 block, std::function<void()> body);
void fcc_emu_launch_sync(dim3 grid, dim3 block, std::function<void()> body);
// Other stream work (copies, collectives): runs now, or is recorded into
// the graph being captured.
void fcc_emu_enqueue(std::function<void()> work);
bool fcc_emu_capturing();

inline uint32_t __umulhi(uint32_t a, uint32_t b) {
  return uint32_t((uint64_t(a) * b) >> 32);
}
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline double __longlong_as_double(long long v) {
  double f;
  std::memcpy(&f, &v, 8);
  return f;
}
using std::isfinite;
using std::isnan;

// Bit casts, bit counts and the 64-bit high product (compress.cu).
inline unsigned __float_as_uint(float v) {
  unsigned u;
  std::memcpy(&u, &v, 4);
  return u;
}
inline float __uint_as_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(int(v)); }
inline unsigned long long __umul64hi(unsigned long long a,
                                     unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

// Atomics: real atomic operations, since the threads of a synchronising
// kernel's block run concurrently (the others run one after another).
inline unsigned atomicAdd(unsigned *p, unsigned v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned long long atomicAdd(unsigned long long *p,
                                    unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned atomicOr(unsigned *p, unsigned v) {
  return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned atomicCAS(unsigned *p, unsigned compare, unsigned value) {
  __atomic_compare_exchange_n(p, &compare, value, false, __ATOMIC_SEQ_CST,
                              __ATOMIC_SEQ_CST);
  return compare;
}
// Memory fence and the L2-only load of the last-block reductions: the
// emulated blocks share one memory, so a full fence and a plain load.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <class T> inline T __ldcg(const T *p) { return *p; }
inline unsigned atomicMax(unsigned *p, unsigned v) {
  unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false,
                                                 __ATOMIC_SEQ_CST,
                                                 __ATOMIC_SEQ_CST)) {
  }
  return old;
}
inline unsigned atomicMin(unsigned *p, unsigned v) {
  unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old > v && !__atomic_compare_exchange_n(p, &old, v, false,
                                                 __ATOMIC_SEQ_CST,
                                                 __ATOMIC_SEQ_CST)) {
  }
  return old;
}

#endif // FCC_TESTS_CUDA_EMU_H
