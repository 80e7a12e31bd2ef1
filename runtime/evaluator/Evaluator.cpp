//===- Evaluator.cpp - Runs fcc model functions on the CPU kernels --------===//
//
// Each op of the function body is dispatched to its kernel; values live in a
// map from SSA value to host tensor. Simple and obviously faithful rather than
// fast: it is a reference, not a trainer.
//
//===----------------------------------------------------------------------===//
#include "runtime/evaluator/Evaluator.h"

#include "fcc/runtime/cpu_kernels.h"
#include "fcc/runtime/init.h"
#include "ir/FccDialect.h"
#include "ir/FccFusedOps.h"
#include "ir/ModelUtils.h"
#include "ir/ShapeInference.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/TypeSwitch.h"

#include <cmath>
#include <cstring>

using namespace mlir;
using namespace fcc;

int64_t Tensor::numel() const { return numElements(shape); }

Tensor Tensor::zeros(std::vector<int64_t> shape) {
  Tensor t;
  t.shape = std::move(shape);
  t.data.assign(t.numel(), 0.0f);
  return t;
}

namespace {

llvm::Error error(const llvm::Twine &msg) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), msg);
}

std::vector<int64_t> shapeOf(Value v) {
  auto s = cast<ShapedType>(v.getType()).getShape();
  return {s.begin(), s.end()};
}

/// Reads a float32 elements attribute (dense or dense_resource).
llvm::Expected<Tensor> tensorFromAttr(Attribute attr) {
  auto type = cast<ShapedType>(cast<TypedAttr>(attr).getType());
  Tensor t;
  t.shape = {type.getShape().begin(), type.getShape().end()};
  if (auto res = dyn_cast<DenseResourceElementsAttr>(attr)) {
    AsmResourceBlob *blob = res.getRawHandle().getBlob();
    if (!blob)
      return error("initial value '" + res.getRawHandle().getKey() +
                   "' has no data (elided?)");
    ArrayRef<char> bytes = blob->getData();
    if (!type.getElementType().isF32() ||
        int64_t(bytes.size()) != t.numel() * 4)
      return error("initial value '" + res.getRawHandle().getKey() +
                   "' is not a float32 blob of the right size");
    t.data.resize(t.numel());
    std::memcpy(t.data.data(), bytes.data(), bytes.size());
    return t;
  }
  auto dense = dyn_cast<DenseElementsAttr>(attr);
  if (!dense)
    return error("unsupported constant attribute");
  if (type.getElementType().isF32()) {
    for (float v : dense.getValues<float>())
      t.data.push_back(v);
  } else if (type.getElementType().isInteger(64)) {
    t.isInt = true;
    for (int64_t v : dense.getValues<int64_t>())
      t.ints.push_back(v);
  } else {
    return error("unsupported constant element type");
  }
  return t;
}

/// Shapes of a and b right-aligned to `rank` dimensions.
std::vector<int64_t> alignShape(const std::vector<int64_t> &s, size_t rank) {
  std::vector<int64_t> out(rank - s.size(), 1);
  out.insert(out.end(), s.begin(), s.end());
  return out;
}

fcc_conv2d_desc convDesc(const std::vector<int64_t> &x,
                         const std::vector<int64_t> &w, ArrayRef<int64_t> strides,
                         ArrayRef<int64_t> pads, ArrayRef<int64_t> dilations,
                         int64_t groups) {
  fcc_conv2d_desc d{};
  d.n = x[0], d.c = x[1], d.h = x[2], d.w = x[3];
  d.k = w[0], d.r = w[2], d.s = w[3];
  d.stride_h = strides[0], d.stride_w = strides[1];
  d.pad_t = pads[0], d.pad_l = pads[1], d.pad_b = pads[2], d.pad_r = pads[3];
  d.dil_h = dilations[0], d.dil_w = dilations[1];
  d.groups = groups;
  return d;
}

fcc_pool2d_desc poolDesc(const std::vector<int64_t> &x, ArrayRef<int64_t> kernel,
                         ArrayRef<int64_t> strides, ArrayRef<int64_t> pads,
                         bool ceilMode) {
  fcc_pool2d_desc d{};
  d.n = x[0], d.c = x[1], d.h = x[2], d.w = x[3];
  d.kh = kernel[0], d.kw = kernel[1];
  d.stride_h = strides[0], d.stride_w = strides[1];
  d.pad_t = pads[0], d.pad_l = pads[1], d.pad_b = pads[2], d.pad_r = pads[3];
  d.dil_h = d.dil_w = 1;
  d.ceil_mode = ceilMode;
  return d;
}

class Interpreter {
public:
  Interpreter(func::FuncOp func, const EvalOptions &opts)
      : func(func), opts(opts) {}

  llvm::Expected<std::vector<Tensor>> run(const std::vector<Tensor> &inputs);

private:
  llvm::Error eval(Operation *op);
  const Tensor &get(Value v) { return values.find(v)->second; }
  Tensor &result(Value v) {
    Tensor &t = values[v];
    t = Tensor::zeros(shapeOf(v));
    return t;
  }
  llvm::Error binary(Operation *op, int kind, Value a, Value b, Value out);
  std::vector<int32_t> labelsOf(Value v) {
    const Tensor &t = get(v);
    return std::vector<int32_t>(t.ints.begin(), t.ints.end());
  }

  func::FuncOp func;
  const EvalOptions &opts;
  llvm::DenseMap<Value, Tensor> values;
  uint64_t dropoutStream = 0;
};

llvm::Error Interpreter::binary(Operation *op, int kind, Value a, Value b,
                                Value out) {
  const Tensor &x = get(a), &y = get(b);
  Tensor &z = result(out);
  size_t rank = z.shape.size();
  if (rank > FCC_MAX_RANK)
    return error("rank " + llvm::Twine(rank) + " exceeds the kernel limit");
  auto xs = alignShape(x.shape, rank), ys = alignShape(y.shape, rank);
  if (fcc_cpu_binary(kind, x.data.data(), xs.data(), y.data.data(), ys.data(),
                     z.shape.data(), int(rank), z.data.data()) != FCC_OK)
    return error(fcc_cpu_last_error());
  return llvm::Error::success();
}

llvm::Error Interpreter::eval(Operation *op) {
  using llvm::Error;
  return llvm::TypeSwitch<Operation *, Error>(op)
      .Case<arith::ConstantOp>([&](auto c) -> Error {
        auto t = tensorFromAttr(c.getValue());
        if (!t)
          return t.takeError();
        values[c.getResult()] = std::move(*t);
        return Error::success();
      })
      .Case<Conv2DOp>([&](Conv2DOp c) -> Error {
        fcc_conv2d_desc d =
            convDesc(shapeOf(c.getInput()), shapeOf(c.getWeight()),
                     c.getStrides(), c.getPads(), c.getDilations(), c.getGroups());
        if (fcc_conv2d_desc_finalize(&d) != FCC_OK)
          return error(fcc_cpu_last_error());
        fcc_conv2d_plan *plan = fcc_cpu_conv2d_create(&d);
        if (!plan)
          return error(fcc_cpu_last_error());
        Tensor &y = result(c.getOutput());
        int rc = fcc_cpu_conv2d_forward(
            plan, get(c.getInput()).data.data(), get(c.getWeight()).data.data(),
            c.getBias() ? get(c.getBias()).data.data() : nullptr, y.data.data());
        fcc_cpu_conv2d_destroy(plan);
        if (rc != FCC_OK)
          return error(fcc_cpu_last_error());
        return Error::success();
      })
      .Case<BatchNormOp>([&](BatchNormOp bn) -> Error {
        auto xs = shapeOf(bn.getInput());
        int64_t n = xs[0], ch = xs[1], hw = numElements(xs) / (n * ch);
        float eps = bn.getEpsilon().convertToFloat();
        const float *x = get(bn.getInput()).data.data();
        const float *scale = get(bn.getScale()).data.data();
        const float *shift = get(bn.getShift()).data.data();
        Tensor &y = result(bn.getOutput());
        if (!bn.getTraining()) {
          fcc_cpu_batch_norm_inference(x, scale, shift,
                                       get(bn.getRunningMean()).data.data(),
                                       get(bn.getRunningVar()).data.data(), eps,
                                       n, ch, hw, y.data.data());
          return Error::success();
        }
        std::vector<float> mean(ch), var(ch);
        fcc_cpu_batch_norm_train_forward(x, scale, shift, eps, n, ch, hw,
                                         y.data.data(), mean.data(), var.data());
        Tensor rm = get(bn.getRunningMean()), rv = get(bn.getRunningVar());
        fcc_cpu_batch_norm_update_running(
            rm.data.data(), rv.data.data(), mean.data(), var.data(),
            bn.getMomentum().convertToFloat(), bn.getRunningVarUnbiased(),
            n * hw, ch);
        values[bn.getNewRunningMean()] = std::move(rm);
        values[bn.getNewRunningVar()] = std::move(rv);
        Tensor bm, bv;
        bm.shape = bv.shape = {ch};
        bm.data = std::move(mean);
        bv.data = std::move(var);
        values[bn.getBatchMean()] = std::move(bm);
        values[bn.getBatchVar()] = std::move(bv);
        return Error::success();
      })
      .Case<ReluOp>([&](ReluOp r) -> Error {
        const Tensor &x = get(r.getInput());
        fcc_cpu_relu_forward(x.data.data(), result(r.getOutput()).data.data(),
                             x.numel());
        return Error::success();
      })
      .Case<CeluOp>([&](CeluOp r) -> Error {
        const Tensor &x = get(r.getInput());
        fcc_cpu_celu_forward(x.data.data(), r.getAlpha().convertToFloat(),
                             result(r.getOutput()).data.data(), x.numel());
        return Error::success();
      })
      .Case<MaxPool2DOp, AvgPool2DOp>([&](auto p) -> Error {
        fcc_pool2d_desc d = poolDesc(shapeOf(p.getInput()), p.getKernel(),
                                     p.getStrides(), p.getPads(),
                                     p.getCeilMode());
        constexpr bool isMax = std::is_same_v<decltype(p), MaxPool2DOp>;
        if constexpr (isMax) {
          d.dil_h = p.getDilations()[0], d.dil_w = p.getDilations()[1];
        } else {
          d.count_include_pad = p.getCountIncludePad();
        }
        if (fcc_pool2d_desc_finalize(&d) != FCC_OK)
          return error(fcc_cpu_last_error());
        Tensor &y = result(p.getOutput());
        if constexpr (isMax)
          fcc_cpu_max_pool2d_forward(&d, get(p.getInput()).data.data(),
                                     y.data.data());
        else
          fcc_cpu_avg_pool2d_forward(&d, get(p.getInput()).data.data(),
                                     y.data.data());
        return Error::success();
      })
      .Case<AddOp>([&](AddOp a) -> Error {
        return binary(op, FCC_BINARY_ADD, a.getLhs(), a.getRhs(), a.getOutput());
      })
      .Case<MulOp>([&](MulOp m) -> Error {
        if (m.getRhs())
          return binary(op, FCC_BINARY_MUL, m.getLhs(), m.getRhs(),
                        m.getOutput());
        const Tensor &x = get(m.getLhs());
        fcc_cpu_affine(x.data.data(), float(m.getScalar()->convertToDouble()), 0.0f,
                       result(m.getOutput()).data.data(), x.numel());
        return Error::success();
      })
      .Case<LinearOp>([&](LinearOp l) -> Error {
        auto a = shapeOf(l.getInput()), w = shapeOf(l.getWeight());
        int64_t m = l.getTransA() ? a[1] : a[0], k = l.getTransA() ? a[0] : a[1];
        int64_t n = l.getTransB() ? w[0] : w[1];
        const float *c = nullptr;
        int64_t cRows = 0, cCols = 0;
        if (l.getBias()) {
          auto bs = shapeOf(l.getBias());
          c = get(l.getBias()).data.data();
          cRows = bs.size() == 2 ? bs[0] : 1;
          cCols = bs.empty() ? 1 : bs.back();
        }
        fcc_cpu_gemm(l.getTransA(), l.getTransB(), m, n, k,
                     l.getAlpha().convertToFloat(), get(l.getInput()).data.data(),
                     get(l.getWeight()).data.data(),
                     l.getBeta().convertToFloat(), c, cRows, cCols,
                     result(l.getOutput()).data.data());
        return Error::success();
      })
      .Case<FlattenOp, ReshapeOp>([&](auto r) -> Error {
        Tensor t = get(r.getInput());
        t.shape = shapeOf(r.getOutput());
        values[r.getOutput()] = std::move(t);
        return Error::success();
      })
      .Case<DropoutOp>([&](DropoutOp d) -> Error {
        const Tensor &x = get(d.getInput());
        Tensor &y = result(d.getOutput());
        if (!d.getTraining()) {
          y.data = x.data;
          return Error::success();
        }
        std::vector<float> mask(x.numel());
        fcc_cpu_dropout_mask(opts.seed, dropoutStream++,
                             d.getRatio().convertToFloat(), mask.data(),
                             x.numel());
        fcc_cpu_mul_elementwise(x.data.data(), mask.data(), y.data.data(),
                                x.numel());
        return Error::success();
      })
      .Case<SoftmaxOp>([&](SoftmaxOp s) -> Error {
        auto xs = shapeOf(s.getInput());
        int64_t axis = s.getAxis() < 0 ? s.getAxis() + xs.size() : s.getAxis();
        int64_t outer = numElements(ArrayRef<int64_t>(xs).take_front(axis));
        int64_t inner = numElements(ArrayRef<int64_t>(xs).drop_front(axis + 1));
        fcc_cpu_softmax(get(s.getInput()).data.data(), outer, xs[axis], inner,
                        result(s.getOutput()).data.data());
        return Error::success();
      })
      .Case<Conv2DGradInputOp, Conv2DGradWeightOp>([&](auto g) -> Error {
        constexpr bool isInput = std::is_same_v<decltype(g), Conv2DGradInputOp>;
        std::vector<int64_t> x, w;
        if constexpr (isInput) {
          x = shapeOf(g.getInputGrad());
          w = shapeOf(g.getWeight());
        } else {
          x = shapeOf(g.getInput());
          w = shapeOf(g.getWeightGrad());
        }
        fcc_conv2d_desc d = convDesc(x, w, g.getStrides(), g.getPads(),
                                     g.getDilations(), g.getGroups());
        if (fcc_conv2d_desc_finalize(&d) != FCC_OK)
          return error(fcc_cpu_last_error());
        fcc_conv2d_plan *plan = fcc_cpu_conv2d_create(&d);
        if (!plan)
          return error(fcc_cpu_last_error());
        int rc;
        if constexpr (isInput)
          rc = fcc_cpu_conv2d_backward_data(
              plan, get(g.getOutputGrad()).data.data(),
              get(g.getWeight()).data.data(),
              result(g.getInputGrad()).data.data());
        else
          rc = fcc_cpu_conv2d_backward_filter(
              plan, get(g.getInput()).data.data(),
              get(g.getOutputGrad()).data.data(),
              result(g.getWeightGrad()).data.data(), nullptr);
        fcc_cpu_conv2d_destroy(plan);
        if (rc != FCC_OK)
          return error(fcc_cpu_last_error());
        return Error::success();
      })
      .Case<BatchNormGradOp>([&](BatchNormGradOp g) -> Error {
        auto xs = shapeOf(g.getInput());
        int64_t n = xs[0], ch = xs[1], hw = numElements(xs) / (n * ch);
        fcc_cpu_batch_norm_backward(
            get(g.getInput()).data.data(), get(g.getOutputGrad()).data.data(),
            get(g.getScale()).data.data(), get(g.getBatchMean()).data.data(),
            get(g.getBatchVar()).data.data(), g.getEpsilon().convertToFloat(),
            n, ch, hw, result(g.getInputGrad()).data.data(),
            result(g.getScaleGrad()).data.data(),
            result(g.getShiftGrad()).data.data());
        return Error::success();
      })
      .Case<BnActOp>([&](BnActOp f) -> Error {
        fcc_bn_act_desc d = bnActDescriptor(f);
        const float *x = get(f.getInput()).data.data();
        const float *scale = get(f.getScale()).data.data();
        const float *shift = get(f.getShift()).data.data();
        const float *residual =
            f.getResidual() ? get(f.getResidual()).data.data() : nullptr;
        float *y = result(f.getOutput()).data.data();
        if (!f.getTraining()) {
          fcc_cpu_bn_act_inference(&d, x, scale, shift,
                                   get(f.getRunningMean()).data.data(),
                                   get(f.getRunningVar()).data.data(),
                                   residual, y);
          return Error::success();
        }
        Tensor bm = Tensor::zeros({d.c}), bv = Tensor::zeros({d.c});
        fcc_cpu_bn_act_train_forward(&d, x, scale, shift, residual, y,
                                     bm.data.data(), bv.data.data());
        Tensor rm = get(f.getRunningMean()), rv = get(f.getRunningVar());
        fcc_cpu_batch_norm_update_running(
            rm.data.data(), rv.data.data(), bm.data.data(), bv.data.data(),
            f.getMomentum().convertToFloat(), f.getRunningVarUnbiased(),
            d.n * d.h * d.w, d.c);
        values[f.getNewRunningMean()] = std::move(rm);
        values[f.getNewRunningVar()] = std::move(rv);
        values[f.getBatchMean()] = std::move(bm);
        values[f.getBatchVar()] = std::move(bv);
        return Error::success();
      })
      .Case<BnActGradOp>([&](BnActGradOp g) -> Error {
        fcc_bn_act_desc d = bnActDescriptor(g);
        const float *x = get(g.getInput()).data.data();
        const float *dy = get(g.getOutputGrad()).data.data();
        float *dx = result(g.getInputGrad()).data.data();
        float *dscale = result(g.getScaleGrad()).data.data();
        float *dshift = result(g.getShiftGrad()).data.data();
        fcc_cpu_bn_act_backward(&d, x, dy, get(g.getScale()).data.data(),
                                get(g.getShift()).data.data(),
                                get(g.getBatchMean()).data.data(),
                                get(g.getBatchVar()).data.data(), dx, dscale,
                                dshift);
        return Error::success();
      })
      .Case<FoldBnOp>([&](FoldBnOp f) -> Error {
        auto ws = shapeOf(f.getWeight());
        int64_t k = ws[0], perK = numElements(ws) / k;
        float *w = result(f.getFoldedWeight()).data.data();
        float *b = result(f.getFoldedBias()).data.data();
        fcc_cpu_fold_bn(get(f.getWeight()).data.data(),
                        f.getBias() ? get(f.getBias()).data.data() : nullptr,
                        get(f.getScale()).data.data(),
                        get(f.getShift()).data.data(),
                        get(f.getMean()).data.data(),
                        get(f.getVar()).data.data(),
                        f.getEpsilon().convertToFloat(), k, perK, w, b);
        return Error::success();
      })
      .Case<ReluGradOp>([&](ReluGradOp g) -> Error {
        const Tensor &x = get(g.getInput());
        fcc_cpu_relu_backward(x.data.data(), get(g.getOutputGrad()).data.data(),
                              result(g.getInputGrad()).data.data(), x.numel());
        return Error::success();
      })
      .Case<CeluGradOp>([&](CeluGradOp g) -> Error {
        const Tensor &x = get(g.getInput());
        fcc_cpu_celu_backward(x.data.data(), get(g.getOutputGrad()).data.data(),
                              g.getAlpha().convertToFloat(),
                              result(g.getInputGrad()).data.data(), x.numel());
        return Error::success();
      })
      .Case<MaxPool2DGradOp>([&](MaxPool2DGradOp g) -> Error {
        fcc_pool2d_desc d = poolDesc(shapeOf(g.getInput()), g.getKernel(),
                                     g.getStrides(), g.getPads(), g.getCeilMode());
        d.dil_h = g.getDilations()[0], d.dil_w = g.getDilations()[1];
        if (fcc_pool2d_desc_finalize(&d) != FCC_OK)
          return error(fcc_cpu_last_error());
        fcc_cpu_max_pool2d_backward(&d, get(g.getInput()).data.data(),
                                    get(g.getOutputGrad()).data.data(),
                                    result(g.getInputGrad()).data.data());
        return Error::success();
      })
      .Case<AvgPool2DGradOp>([&](AvgPool2DGradOp g) -> Error {
        fcc_pool2d_desc d = poolDesc(shapeOf(g.getInputGrad()), g.getKernel(),
                                     g.getStrides(), g.getPads(), g.getCeilMode());
        d.count_include_pad = g.getCountIncludePad();
        if (fcc_pool2d_desc_finalize(&d) != FCC_OK)
          return error(fcc_cpu_last_error());
        fcc_cpu_avg_pool2d_backward(&d, get(g.getOutputGrad()).data.data(),
                                    result(g.getInputGrad()).data.data());
        return Error::success();
      })
      .Case<ReduceSumOp>([&](ReduceSumOp r) -> Error {
        std::vector<int64_t> xs = shapeOf(r.getInput()), kept = xs;
        for (int64_t a : r.getAxes())
          kept[a] = 1;
        if (xs.empty()) {
          result(r.getOutput()).data = get(r.getInput()).data;
          return Error::success();
        }
        if (fcc_cpu_reduce_sum_to(get(r.getInput()).data.data(), xs.data(),
                                  kept.data(), int(xs.size()),
                                  result(r.getOutput()).data.data()) != FCC_OK)
          return error(fcc_cpu_last_error());
        return Error::success();
      })
      .Case<DropoutMaskOp>([&](DropoutMaskOp d) -> Error {
        Tensor &m = result(d.getMask());
        fcc_cpu_dropout_mask(uint64_t(get(d.getSeed()).ints.at(0)),
                             uint64_t(d.getStream()),
                             d.getRatio().convertToFloat(), m.data.data(),
                             m.numel());
        return Error::success();
      })
      .Case<SoftmaxXentOp, SoftmaxXentGradOp>([&](auto x) -> Error {
        auto ls = shapeOf(x.getLogits());
        std::vector<int32_t> labels = labelsOf(x.getLabels());
        float smoothing = get(x.getLabelSmoothing()).data.at(0);
        double loss;
        if constexpr (std::is_same_v<decltype(x), SoftmaxXentOp>) {
          loss = fcc_cpu_softmax_xent(get(x.getLogits()).data.data(),
                                      labels.data(), ls[0], ls[1], smoothing,
                                      nullptr, nullptr, nullptr);
          result(x.getLoss()).data = {float(loss)};
        } else {
          Tensor &g = result(x.getLogitsGrad());
          loss = fcc_cpu_softmax_xent(get(x.getLogits()).data.data(),
                                      labels.data(), ls[0], ls[1], smoothing,
                                      nullptr, g.data.data(), nullptr);
          fcc_cpu_affine(g.data.data(), get(x.getLossGrad()).data.at(0), 0.0f,
                         g.data.data(), g.numel());
        }
        if (std::isnan(loss))
          return error(fcc_cpu_last_error());
        return Error::success();
      })
      .Case<CountCorrectOp>([&](CountCorrectOp c) -> Error {
        auto ls = shapeOf(c.getLogits());
        std::vector<int32_t> labels = labelsOf(c.getLabels());
        result(c.getCount()).data = {float(fcc_cpu_count_correct(
            get(c.getLogits()).data.data(), labels.data(), ls[0], ls[1]))};
        return Error::success();
      })
      .Case<FlipOp>([&](FlipOp f) -> Error {
        auto xs = shapeOf(f.getInput());
        fcc_cpu_flip_w(get(f.getInput()).data.data(), xs[0], xs[1], xs[2],
                       xs[3], result(f.getOutput()).data.data());
        return Error::success();
      })
      .Case<SgdUpdateOp>([&](SgdUpdateOp u) -> Error {
        Tensor p = get(u.getParam()), buf = get(u.getMomentumBuffer());
        auto scalar = [&](Value v) { return get(v).data.at(0); };
        fcc_cpu_sgd_update_scaled(
            p.data.data(), get(u.getGrad()).data.data(), buf.data.data(),
            p.numel(), scalar(u.getLr()) * u.getLrMult().convertToFloat(),
            scalar(u.getMomentum()),
            scalar(u.getWeightDecay()) * u.getWdMult().convertToFloat(),
            scalar(u.getNesterov()) != 0.0f,
            u.getGradScale() ? scalar(u.getGradScale()) : 1.0f,
            u.getApply() ? scalar(u.getApply()) != 0.0f : 1);
        values[u.getNewParam()] = std::move(p);
        values[u.getNewMomentumBuffer()] = std::move(buf);
        return Error::success();
      })
      .Case<CastOp>([&](CastOp c) -> Error {
        // Rounding to the result type happens for every half result below.
        values[c.getOutput()] = get(c.getInput());
        return Error::success();
      })
      .Case<GradsFiniteOp>([&](GradsFiniteOp g) -> Error {
        int finite = 1;
        for (Value v : g.getGrads())
          finite &= fcc_cpu_all_finite(get(v).data.data(), get(v).numel());
        result(g.getFinite()).data = {float(finite)};
        result(g.getSkipped()).data = {float(1 - finite)};
        return Error::success();
      })
      .Case<EmaUpdateOp>([&](EmaUpdateOp e) -> Error {
        Tensor ema = get(e.getEma());
        fcc_cpu_ema_update(ema.data.data(), get(e.getValue()).data.data(),
                           get(e.getDecay()).data.at(0), ema.numel());
        values[e.getNewEma()] = std::move(ema);
        return Error::success();
      })
      .Default([&](Operation *o) -> Error {
        return error("the evaluator does not support '" +
                     o->getName().getStringRef() + "'");
      });
}

llvm::Expected<std::vector<Tensor>>
Interpreter::run(const std::vector<Tensor> &inputs) {
  Block &body = func.getBody().front();
  unsigned nData = numDataInputs(func);
  if (inputs.size() != nData)
    return error("the function has " + llvm::Twine(nData) +
                 " non-parameter arguments but " + llvm::Twine(inputs.size()) +
                 " were given");
  // One entry per value, reserved up front: inserting a result must not
  // rehash the map while the op's kernel holds references to its operands
  // (get) and other results (result).
  size_t entries = body.getNumArguments();
  for (Operation &op : body)
    entries += op.getNumResults();
  values.reserve(entries);
  unsigned dataIndex = 0;
  for (unsigned i = 0; i < func.getNumArguments(); ++i) {
    Value arg = body.getArgument(i);
    auto expected = shapeOf(arg);
    ParamAttr p = getParamAttr(func, i);
    if (!p) {
      const Tensor &in = inputs[dataIndex++];
      if (in.shape != expected)
        return error("argument '" + argumentName(func, i) + "' has shape " +
                     formatShape(in.shape) + " but the function expects " +
                     formatShape(expected));
      Type et = cast<ShapedType>(arg.getType()).getElementType();
      if (in.isInt != isa<IntegerType>(et))
        return error("argument '" + argumentName(func, i) + "' must be " +
                     (in.isInt ? "floating-point" : "integer"));
      values[arg] = in;
      continue;
    }
    auto given = opts.params.find(p.getName().str());
    if (given != opts.params.end()) {
      if (given->second.shape != expected)
        return error("parameter '" + p.getName() + "' given with shape " +
                     formatShape(given->second.shape) + ", expected " +
                     formatShape(expected));
      values[arg] = given->second;
      continue;
    }
    auto init = initialParameterValue(func, i, opts.seed);
    if (!init)
      return init.takeError();
    values[arg] = std::move(*init);
  }
  for (Operation &op : body.without_terminator()) {
    if (auto err = eval(&op))
      return llvm::createStringError(
          llvm::inconvertibleErrorCode(),
          "evaluating '" + op.getName().getStringRef().str() + "': " +
              llvm::toString(std::move(err)));
    // Half-precision results hold only half-representable values (the CPU
    // emulation of 16-bit storage; runtime/cpu/half.cpp).
    for (Value r : op.getResults()) {
      Type et = cast<ShapedType>(r.getType()).getElementType();
      Tensor &t = values[r];
      if (et.isF16())
        fcc_cpu_round_f16(t.data.data(), t.numel());
      else if (et.isBF16())
        fcc_cpu_round_bf16(t.data.data(), t.numel());
    }
  }
  std::vector<Tensor> results;
  for (Value v : body.getTerminator()->getOperands())
    results.push_back(get(v));
  return results;
}

} // namespace

llvm::Expected<Tensor> fcc::initialParameterValue(func::FuncOp func,
                                                  unsigned argIndex,
                                                  uint64_t seed) {
  ParamAttr p = getParamAttr(func, argIndex);
  if (!p)
    return error("argument " + llvm::Twine(argIndex) + " is not a parameter");
  if (auto init = func.getArgAttr(argIndex, FccDialect::kInitAttrName))
    return tensorFromAttr(init);
  Tensor t = Tensor::zeros(shapeOf(func.getArgument(argIndex)));
  int64_t fanIn = 1;
  if (p.getRole() == ParamRole::weight || p.getRole() == ParamRole::bias) {
    auto f = computeFanIn(func, argIndex);
    if (!f)
      return error("parameter '" + p.getName() +
                   "' has no initial value and no conv/linear use to derive "
                   "its initialisation from");
    fanIn = *f;
  } else if (p.getRole() == ParamRole::other) {
    return error("parameter '" + p.getName() +
                 "' has no initial value and no known role");
  }
  std::string name = p.getName().str();
  if (fcc_param_init(int(p.getRole()), name.c_str(), t.numel(), fanIn, seed,
                     t.data.data()) != 0)
    return error("cannot initialise parameter '" + name + "'");
  return t;
}

llvm::Expected<std::vector<Tensor>>
fcc::evaluateNamed(func::FuncOp func, const std::map<std::string, Tensor> &values,
                   EvalOptions options) {
  std::vector<Tensor> inputs;
  for (unsigned i = 0; i < func.getNumArguments(); ++i) {
    if (ParamAttr p = getParamAttr(func, i)) {
      auto it = values.find(p.getName().str());
      if (it != values.end())
        options.params[it->first] = it->second;
      continue;
    }
    std::string key = argumentName(func, i);
    auto it = values.find(key);
    if (it == values.end())
      return error("no value for argument '" + key + "'");
    inputs.push_back(it->second);
  }
  return evaluate(func, inputs, options);
}

llvm::Expected<std::vector<Tensor>>
fcc::evaluate(func::FuncOp func, const std::vector<Tensor> &inputs,
              const EvalOptions &options) {
  return Interpreter(func, options).run(inputs);
}
