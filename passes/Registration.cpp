//===- Registration.cpp - Registers every fcc pass ------------------------===//
#include "passes/Passes.h"

namespace fcc {
#define GEN_PASS_REGISTRATION
#include "passes/Passes.h.inc"
} // namespace fcc

void fcc::registerAllPasses() { registerFccPasses(); }
