/*===- init.h - PyTorch-default parameter initialisation (C API) -----------===*
 *
 * One definition of "the initial value of a parameter" shared by the model zoo
 * (`fcc-models --with-weights --seed N`) and generated trainers (parameters
 * that a graph-only model leaves uninitialised), so both give the same weights
 * for the same seed and parameter name.
 *
 * The scheme is PyTorch's default for Conv2d/Linear/BatchNorm2d:
 *  - weight: Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), +1/sqrt(fan_in))
 *  - bias:   U(-1/sqrt(fan_in), +1/sqrt(fan_in)) with the owning weight's fan_in
 *  - BN scale 1, BN shift 0, running mean 0, running variance 1.
 * Random draws come from fcc_random_uniform(seed, fnv1a64(name), i), so each
 * parameter's values depend only on (seed, name), not on the order of params.
 *===----------------------------------------------------------------------===*/
#ifndef FCC_RUNTIME_INIT_H
#define FCC_RUNTIME_INIT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Parameter roles; the numeric values are shared with the fcc dialect's
 * ParamRole enum (ir/FccAttrs.td). */
enum fcc_param_role {
  FCC_ROLE_WEIGHT = 0,
  FCC_ROLE_BIAS = 1,
  FCC_ROLE_BN_SCALE = 2,
  FCC_ROLE_BN_SHIFT = 3,
  FCC_ROLE_RUNNING_MEAN = 4,
  FCC_ROLE_RUNNING_VAR = 5,
  FCC_ROLE_OTHER = 6
};

/* 64-bit FNV-1a hash of a NUL-terminated string. */
uint64_t fcc_fnv1a64(const char *s);

/* Writes `count` initial values for the parameter `name` with the given role.
 * fan_in is used by weights and biases (ignored otherwise) and must be > 0 for
 * them. Returns 0, or 1 for an invalid role/fan_in. */
int fcc_param_init(int role, const char *name, int64_t count, int64_t fan_in,
                   uint64_t seed, float *out);

#ifdef __cplusplus
}
#endif

#endif /* FCC_RUNTIME_INIT_H */
