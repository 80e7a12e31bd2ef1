//===- internal.h - Shared helpers of the CPU kernels (private) ----------===//
//
// Error reporting (the thread-local message behind fcc_cpu_last_error) and a
// few small utilities used by several kernel files. Not installed; only the
// sources in runtime/cpu include it.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_RUNTIME_CPU_INTERNAL_H
#define FCC_RUNTIME_CPU_INTERNAL_H

#include "fcc/runtime/cpu_kernels.h"

#include <cstdint>
#include <cstring>
#include <string>

namespace fcc::cpu {

// Records `message` as this thread's last error and returns `code`, so that
// failing paths read `return setError(FCC_ERR_INVALID, "...")`.
int setError(int code, std::string message);

// printf-style formatting into a std::string (for error messages).
std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// The bits of a float and back (memcpy: no aliasing questions).
inline uint32_t bitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float floatOf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

} // namespace fcc::cpu

#endif // FCC_RUNTIME_CPU_INTERNAL_H
