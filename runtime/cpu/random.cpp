//===- random.cpp - Counter-based random numbers (Philox-4x32-10) ---------===//
//
// Stateless generator: the value number `index` of stream (seed, stream) is a
// pure function, so initialisation, dropout masks and data augmentation are
// reproducible regardless of thread count or the order work is done in.
// Reference: Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11).
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/cpu_kernels.h"

namespace {
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t &hi, uint32_t &lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

// One 4x32 block for counter (c0..c3) and key (k0, k1).
void philox4x32(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kPhiloxM0, ctr[0], hi0, lo0);
    mulhilo(kPhiloxM1, ctr[2], hi1, lo1);
    uint32_t n0 = hi1 ^ ctr[1] ^ k0, n2 = hi0 ^ ctr[3] ^ k1;
    ctr[0] = n0;
    ctr[1] = lo1;
    ctr[2] = n2;
    ctr[3] = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}
} // namespace

extern "C" uint32_t fcc_random_u32(uint64_t seed, uint64_t stream,
                                   uint64_t index) {
  // Counter = (index / 4, stream); key = seed. Each block yields 4 words.
  uint64_t block = index >> 2;
  uint32_t ctr[4] = {uint32_t(block), uint32_t(block >> 32), uint32_t(stream),
                     uint32_t(stream >> 32)};
  philox4x32(ctr, uint32_t(seed), uint32_t(seed >> 32));
  return ctr[index & 3];
}

extern "C" float fcc_random_uniform(uint64_t seed, uint64_t stream,
                                    uint64_t index) {
  return float(fcc_random_u32(seed, stream, index) >> 8) * (1.0f / 16777216.0f);
}
