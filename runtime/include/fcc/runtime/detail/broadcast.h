//===- broadcast.h - Broadcast shape simplification shared by the runtimes ===//
//
// Internal to runtime/ (not part of the kernel APIs): the host-side
// analysis behind fcc_cpu_binary / fcc_cpu_reduce_sum_to and their CUDA
// counterparts, so both targets check shapes with the same rules and
// messages and iterate the same simplified dimensions: size-1 dimensions of
// the result are dropped and neighbours that broadcast alike are merged;
// each dimension carries the element strides of the two operands (0 where
// an operand is broadcast).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_RUNTIME_DETAIL_BROADCAST_H
#define FCC_RUNTIME_DETAIL_BROADCAST_H

#include "fcc/runtime/cpu_kernels.h" // FCC_MAX_RANK

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace fcc::runtime_detail {

struct BroadcastDim {
  int64_t size;
  int64_t strideA, strideB;
};

// Checks that aShape and bShape (rank entries each, right-aligned) broadcast
// to yShape and fills `dims` (outermost first). Returns "" on success,
// otherwise what is wrong (callers prefix their name).
inline std::string simplifyBroadcast(const int64_t *aShape,
                                     const int64_t *bShape,
                                     const int64_t *yShape, int rank,
                                     std::vector<BroadcastDim> &dims) {
  char buf[160];
  if (rank < 0 || rank > FCC_MAX_RANK) {
    std::snprintf(buf, sizeof buf, "rank %d is outside [0, %d]", rank,
                  FCC_MAX_RANK);
    return buf;
  }
  for (int i = 0; i < rank; ++i) {
    if (yShape[i] < 0) {
      std::snprintf(buf, sizeof buf, "negative size %lld in dimension %d",
                    (long long)yShape[i], i);
      return buf;
    }
    if ((aShape[i] != 1 && aShape[i] != yShape[i]) ||
        (bShape[i] != 1 && bShape[i] != yShape[i])) {
      std::snprintf(buf, sizeof buf,
                    "dimension %d: sizes %lld and %lld do not broadcast to "
                    "%lld",
                    i, (long long)aShape[i], (long long)bShape[i],
                    (long long)yShape[i]);
      return buf;
    }
  }
  // Walk from the innermost dimension outwards, tracking contiguous strides.
  std::vector<BroadcastDim> reversed;
  int64_t strideA = 1, strideB = 1;
  bool prevA = false, prevB = false; // broadcast flags of the last kept dim
  for (int i = rank - 1; i >= 0; --i) {
    if (yShape[i] == 1)
      continue;
    bool bcastA = aShape[i] == 1, bcastB = bShape[i] == 1;
    if (!reversed.empty() && bcastA == prevA && bcastB == prevB) {
      reversed.back().size *= yShape[i]; // same pattern: merge
    } else {
      reversed.push_back(
          {yShape[i], bcastA ? 0 : strideA, bcastB ? 0 : strideB});
      prevA = bcastA;
      prevB = bcastB;
    }
    strideA *= aShape[i];
    strideB *= bShape[i];
  }
  dims.assign(reversed.rbegin(), reversed.rend());
  return "";
}

} // namespace fcc::runtime_detail

#endif // FCC_RUNTIME_DETAIL_BROADCAST_H
