//===- init.cpp - PyTorch-default parameter initialisation ----------------===//
//
// Implements fcc/runtime/init.h: the single definition of a parameter's
// initial value, shared by the model zoo (`fcc-models --with-weights`) and by
// generated trainers, so both produce bit-identical weights for the same
// (seed, parameter name). Random values are a pure function of
// (seed, fnv1a64(name), element index), independent of parameter order.
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/init.h"
#include "fcc/runtime/cpu_kernels.h"

#include <cmath>

extern "C" uint64_t fcc_fnv1a64(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull; // FNV offset basis
  for (; s && *s; ++s) {
    h ^= static_cast<unsigned char>(*s);
    h *= 0x100000001b3ull; // FNV prime
  }
  return h;
}

namespace {
void fill(float *out, int64_t count, float value) {
  for (int64_t i = 0; i < count; ++i)
    out[i] = value;
}
} // namespace

extern "C" int fcc_param_init(int role, const char *name, int64_t count,
                              int64_t fan_in, uint64_t seed, float *out) {
  if (count < 0 || (count > 0 && !out))
    return 1;
  switch (role) {
  case FCC_ROLE_WEIGHT:
  case FCC_ROLE_BIAS: {
    // Kaiming-uniform with a = sqrt(5) has gain sqrt(2 / (1 + 5)) and bound
    // gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in): the same bound as PyTorch's
    // default bias init. u in [0, 1) gives values in [-bound, bound).
    if (fan_in <= 0 || !name)
      return 1;
    double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    uint64_t stream = fcc_fnv1a64(name);
    for (int64_t i = 0; i < count; ++i) {
      double u = fcc_random_uniform(seed, stream, static_cast<uint64_t>(i));
      out[i] = static_cast<float>((2.0 * u - 1.0) * bound);
    }
    return 0;
  }
  case FCC_ROLE_BN_SCALE:
  case FCC_ROLE_RUNNING_VAR:
    fill(out, count, 1.0f);
    return 0;
  case FCC_ROLE_BN_SHIFT:
  case FCC_ROLE_RUNNING_MEAN:
    fill(out, count, 0.0f);
    return 0;
  default:
    // FCC_ROLE_OTHER has no default initialisation: such parameters need an
    // explicit initial value.
    return 1;
  }
}
