//===- main.cpp - main() of a generated trainer ---------------------------===//
//
// Linked (as fcc_trainer_main) with the translation unit `fcc compile`
// generates, which defines fcc_generated_program().
//
//===----------------------------------------------------------------------===//
#include "Trainer.h"

int main(int argc, char **argv) {
  return fcc::trainer::run(fcc_generated_program(), argc, argv);
}
