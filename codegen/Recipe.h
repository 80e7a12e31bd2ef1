//===- Recipe.h - Named training recipes --------------------------*- C++ -*-===//
//
// `fcc compile --recipe NAME` picks the compile-time defaults of a trainer's
// run-time flags (and the per-group optimizer multipliers, which are baked
// into the update). All learning rates are for the mean loss over the batch.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_CODEGEN_RECIPE_H
#define FCC_CODEGEN_RECIPE_H

#include <optional>
#include <string>
#include <vector>

namespace fcc {

struct Recipe {
  std::string name;
  std::string summary;
  int epochs = 24;
  std::string lrKnots;
  float momentum = 0.9f;
  bool nesterov = true;
  float weightDecay = 5e-4f;
  float labelSmoothing = 0.0f;
  float emaDecay = 0.0f; // 0 = off
  int emaEvery = 1;
  bool tta = false;
  int cutout = 0;
  bool flip = true;
  int cropPad = 4;
  double biasLrMult = 1.0;
  double biasWdMult = 1.0;
};

/// The recipes fcc knows, in the order `--help` lists them.
const std::vector<Recipe> &recipes();
std::optional<Recipe> findRecipe(const std::string &name);

} // namespace fcc

#endif // FCC_CODEGEN_RECIPE_H
