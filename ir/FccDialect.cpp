//===- FccDialect.cpp - fcc dialect registration --------------------------===//
#include "ir/FccDialect.h"

#include "mlir/Interfaces/FunctionInterfaces.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace fcc;

#include "ir/FccDialect.cpp.inc"
#include "ir/FccEnums.cpp.inc"
#define GET_ATTRDEF_CLASSES
#include "ir/FccAttrs.cpp.inc"

void FccDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "ir/FccOps.cpp.inc"
      >();
  registerAttributes();
}

void FccDialect::registerAttributes() {
  addAttributes<
#define GET_ATTRDEF_LIST
#include "ir/FccAttrs.cpp.inc"
      >();
}

FailureOr<bool> fcc::parseBoolParameter(AsmParser &parser) {
  if (succeeded(parser.parseOptionalKeyword("true")))
    return true;
  if (succeeded(parser.parseOptionalKeyword("false")))
    return false;
  return parser.emitError(parser.getCurrentLocation(),
                          "expected 'true' or 'false'");
}

ParamAttr fcc::getParamAttr(FunctionOpInterface func, unsigned index) {
  return func.getArgAttrOfType<ParamAttr>(index, FccDialect::kParamAttrName);
}
