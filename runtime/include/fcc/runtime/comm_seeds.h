/*===- comm_seeds.h - The random seeds of gradient compression ------------===*
 *
 * Each compression op of a step draws from two Philox streams:
 *  - the shared seed, equal on every rank (RandomK's positions, so that only
 *    the values travel), a function of the step's seed and the tensor id;
 *  - the private seed, different on every rank (stochastic rounding of
 *    TernGrad and QSGD), the shared seed mixed with the rank.
 * Host code (runtime/comm/comm.cpp) and device code (the CUDA
 * communication runtime derives them on the GPU from the step seed a
 * captured graph reads) use these same inline functions, so that CPU and
 * GPU trainers compress identically.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_COMM_SEEDS_H
#define FCC_RUNTIME_COMM_SEEDS_H

#include <stdint.h>

#if defined(__CUDACC__)
#define FCC_COMM_HD __host__ __device__
#else
#define FCC_COMM_HD
#endif

/* SplitMix64's finaliser: a bijective 64-bit mix. */
static inline FCC_COMM_HD uint64_t fcc_comm_splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* Randomness every rank shares for `tensor` in the step of `step_seed`. */
static inline FCC_COMM_HD uint64_t fcc_comm_shared_seed(uint64_t step_seed,
                                                        int64_t tensor) {
  return fcc_comm_splitmix(step_seed ^
                           fcc_comm_splitmix((uint64_t)tensor + 1));
}

/* Rank `rank`'s own randomness for `tensor` in that step. */
static inline FCC_COMM_HD uint64_t fcc_comm_private_seed(uint64_t step_seed,
                                                         int64_t tensor,
                                                         int rank) {
  return fcc_comm_splitmix(fcc_comm_shared_seed(step_seed, tensor) ^
                           fcc_comm_splitmix(0x5eed0000ull + (uint64_t)rank));
}

#endif /* FCC_RUNTIME_COMM_SEEDS_H */
