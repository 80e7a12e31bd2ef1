//===- FccAttrs.td - fcc attributes ------------------------------*- tablegen -*-===//
//
// #fcc.param: what a model-function argument is (name, role, trainable).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_ATTRS_TD
#define FCC_ATTRS_TD

include "ir/FccDialect.td"
include "mlir/IR/EnumAttr.td"

// Numeric values are shared with runtime/include/fcc/runtime/init.h.
def Fcc_ParamRole : I32EnumAttr<"ParamRole", "role of a model parameter", [
    I32EnumAttrCase<"weight", 0>,
    I32EnumAttrCase<"bias", 1>,
    I32EnumAttrCase<"bn_scale", 2>,
    I32EnumAttrCase<"bn_shift", 3>,
    I32EnumAttrCase<"running_mean", 4>,
    I32EnumAttrCase<"running_var", 5>,
    I32EnumAttrCase<"other", 6>]> {
  let cppNamespace = "::fcc";
  let genSpecializedAttr = 0;
}

def Fcc_BoolParameter : AttrParameter<"bool", "boolean"> {
  let parser = "::fcc::parseBoolParameter($_parser)";
  let printer = "$_printer << ($_self ? \"true\" : \"false\")";
}

def Fcc_ParamAttr : AttrDef<Fcc_Dialect, "Param"> {
  let mnemonic = "param";
  let summary = "Describes a model parameter argument";
  let description = [{
    `name` is the parameter's name in the source model (PyTorch state_dict
    style, e.g. "layer1.conv.weight"); `role` says how the network uses it;
    `trainable` is false for values that get no gradient (ONNX Constant-node
    values, BatchNorm running statistics).

    Example: `#fcc.param<name = "fc.weight", role = weight, trainable = true>`
  }];
  let parameters = (ins StringRefParameter<"parameter name">:$name,
                        EnumParameter<Fcc_ParamRole>:$role,
                        Fcc_BoolParameter:$trainable);
  let assemblyFormat = "`<` struct(params) `>`";
}

#endif // FCC_ATTRS_TD
