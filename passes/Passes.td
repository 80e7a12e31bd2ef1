//===- Passes.td - fcc pass definitions ----------------------*- tablegen -*-===//
#ifndef FCC_PASSES_TD
#define FCC_PASSES_TD

include "mlir/Pass/PassBase.td"

#endif // FCC_PASSES_TD
