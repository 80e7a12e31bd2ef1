//===- HostTensor.cpp - Compile-time tensors and shape-glue folding -------===//
#include "frontend/HostTensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>

using namespace fcc;
using onnx::TensorProto;

namespace {
[[noreturn]] void fail(const std::string &msg) { throw ImportError(msg); }

int64_t product(const std::vector<int64_t> &shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

float halfToFloat(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else { // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400));
      bits = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16ToFloat(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <typename T> std::vector<T> readRaw(const std::string &raw, int64_t n) {
  if (int64_t(raw.size()) != n * int64_t(sizeof(T)))
    fail("tensor raw_data has " + std::to_string(raw.size()) +
         " bytes, expected " + std::to_string(n * sizeof(T)));
  std::vector<T> v(n);
  if (n)
    std::memcpy(v.data(), raw.data(), raw.size());
  return v;
}

// Strides of a row-major shape.
std::vector<int64_t> stridesOf(const std::vector<int64_t> &shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (int64_t k = int64_t(shape.size()) - 2; k >= 0; --k)
    s[k] = s[k + 1] * shape[k + 1];
  return s;
}

const onnx::AttributeProto *findAttr(const onnx::NodeProto &node,
                                     const std::string &name) {
  for (const auto &a : node.attribute())
    if (a.name() == name)
      return &a;
  return nullptr;
}

int64_t attrInt(const onnx::NodeProto &node, const std::string &name,
                int64_t def) {
  auto *a = findAttr(node, name);
  return a ? a->i() : def;
}
} // namespace

bool HostTensor::isFloat() const {
  return dtype == TensorProto::FLOAT || dtype == TensorProto::DOUBLE ||
         dtype == TensorProto::FLOAT16 || dtype == TensorProto::BFLOAT16;
}

int64_t HostTensor::numel() const { return product(shape); }

std::vector<int64_t> HostTensor::toInts() const {
  std::vector<int64_t> out(numel());
  for (int64_t k = 0; k < numel(); ++k)
    out[k] = asInt(k);
  return out;
}

std::vector<float> HostTensor::toFloat32() const {
  std::vector<float> out(numel());
  for (int64_t k = 0; k < numel(); ++k)
    out[k] = float(asDouble(k));
  return out;
}

HostTensor HostTensor::ints(std::vector<int64_t> values,
                            std::vector<int64_t> shape) {
  HostTensor t;
  t.dtype = TensorProto::INT64;
  t.shape = std::move(shape);
  t.i = std::move(values);
  return t;
}

HostTensor HostTensor::floats(std::vector<double> values,
                              std::vector<int64_t> shape, int32_t dtype) {
  HostTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.f = std::move(values);
  return t;
}

std::string fcc::onnxTypeName(int32_t dtype) {
  switch (dtype) {
  case TensorProto::FLOAT: return "float";
  case TensorProto::UINT8: return "uint8";
  case TensorProto::INT8: return "int8";
  case TensorProto::UINT16: return "uint16";
  case TensorProto::INT16: return "int16";
  case TensorProto::INT32: return "int32";
  case TensorProto::INT64: return "int64";
  case TensorProto::STRING: return "string";
  case TensorProto::BOOL: return "bool";
  case TensorProto::FLOAT16: return "float16";
  case TensorProto::DOUBLE: return "double";
  case TensorProto::UINT32: return "uint32";
  case TensorProto::UINT64: return "uint64";
  case TensorProto::COMPLEX64: return "complex64";
  case TensorProto::COMPLEX128: return "complex128";
  case TensorProto::BFLOAT16: return "bfloat16";
  default: return "type#" + std::to_string(dtype);
  }
}

HostTensor HostTensor::fromProto(const TensorProto &p) {
  HostTensor t;
  t.dtype = p.data_type();
  for (int64_t d : p.dims()) {
    if (d < 0)
      fail("tensor '" + p.name() + "' has a negative dimension");
    t.shape.push_back(d);
  }
  int64_t count = 1;
  for (int64_t d : t.shape)
    if (d != 0 && count > (int64_t(1) << 40) / d)
      fail("tensor '" + p.name() + "' is implausibly large (dims " +
           [&] {
             std::string s;
             for (int64_t x : t.shape)
               s += (s.empty() ? "" : "x") + std::to_string(x);
             return s;
           }() + ")");
    else
      count *= d;
  if (p.data_location() == TensorProto::EXTERNAL)
    fail("tensor '" + p.name() +
         "' uses external data, which fcc does not read; save the model with "
         "its weights inside the .onnx file");
  int64_t n = product(t.shape);
  const bool raw = p.has_raw_data();
  const std::string &r = p.raw_data();
  auto checkCount = [&](int64_t have) {
    if (have != n)
      fail("tensor '" + p.name() + "' holds " + std::to_string(have) +
           " values but its dims say " + std::to_string(n));
  };
  switch (t.dtype) {
  case TensorProto::FLOAT: {
    std::vector<float> v = raw ? readRaw<float>(r, n)
                               : std::vector<float>(p.float_data().begin(),
                                                    p.float_data().end());
    checkCount(v.size());
    t.f.assign(v.begin(), v.end());
    break;
  }
  case TensorProto::DOUBLE: {
    std::vector<double> v = raw ? readRaw<double>(r, n)
                                : std::vector<double>(p.double_data().begin(),
                                                      p.double_data().end());
    checkCount(v.size());
    t.f = std::move(v);
    break;
  }
  case TensorProto::FLOAT16:
  case TensorProto::BFLOAT16: {
    std::vector<uint16_t> bits;
    if (raw)
      bits = readRaw<uint16_t>(r, n);
    else
      for (int32_t b : p.int32_data())
        bits.push_back(uint16_t(b));
    checkCount(bits.size());
    for (uint16_t b : bits)
      t.f.push_back(t.dtype == TensorProto::FLOAT16 ? halfToFloat(b)
                                                    : bf16ToFloat(b));
    break;
  }
  case TensorProto::INT64: {
    t.i = raw ? readRaw<int64_t>(r, n)
              : std::vector<int64_t>(p.int64_data().begin(),
                                     p.int64_data().end());
    checkCount(t.i.size());
    break;
  }
  case TensorProto::INT32:
  case TensorProto::INT16:
  case TensorProto::INT8:
  case TensorProto::UINT16:
  case TensorProto::UINT8:
  case TensorProto::BOOL: {
    if (raw) {
      switch (t.dtype) {
      case TensorProto::INT32:
        for (int32_t v : readRaw<int32_t>(r, n)) t.i.push_back(v);
        break;
      case TensorProto::INT16:
        for (int16_t v : readRaw<int16_t>(r, n)) t.i.push_back(v);
        break;
      case TensorProto::UINT16:
        for (uint16_t v : readRaw<uint16_t>(r, n)) t.i.push_back(v);
        break;
      case TensorProto::INT8:
        for (int8_t v : readRaw<int8_t>(r, n)) t.i.push_back(v);
        break;
      default: // UINT8, BOOL
        for (uint8_t v : readRaw<uint8_t>(r, n)) t.i.push_back(v);
        break;
      }
    } else {
      for (int32_t v : p.int32_data())
        t.i.push_back(v);
    }
    checkCount(t.i.size());
    break;
  }
  case TensorProto::UINT32:
  case TensorProto::UINT64: {
    if (raw) {
      if (t.dtype == TensorProto::UINT32)
        for (uint32_t v : readRaw<uint32_t>(r, n)) t.i.push_back(v);
      else
        for (uint64_t v : readRaw<uint64_t>(r, n)) t.i.push_back(int64_t(v));
    } else {
      for (uint64_t v : p.uint64_data())
        t.i.push_back(int64_t(v));
    }
    checkCount(t.i.size());
    break;
  }
  default:
    fail("tensor '" + p.name() + "' has element type " +
         onnxTypeName(t.dtype) + ", which fcc does not support");
  }
  return t;
}

int64_t fcc::normalizeAxis(int64_t axis, int64_t rank, const std::string &what) {
  if (axis < -rank || axis >= rank)
    fail(what + " " + std::to_string(axis) + " is out of range for rank " +
         std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

namespace {
// Elementwise binary op with numpy broadcasting; integer semantics when both
// operands are integers (Div truncates toward zero like ONNX's int Div).
HostTensor broadcastBinary(const std::string &op, const HostTensor &a,
                           const HostTensor &b) {
  size_t rank = std::max(a.shape.size(), b.shape.size());
  std::vector<int64_t> as(rank, 1), bs(rank, 1), ys(rank, 1);
  std::copy(a.shape.begin(), a.shape.end(), as.begin() + (rank - a.shape.size()));
  std::copy(b.shape.begin(), b.shape.end(), bs.begin() + (rank - b.shape.size()));
  for (size_t k = 0; k < rank; ++k) {
    if (as[k] != bs[k] && as[k] != 1 && bs[k] != 1)
      fail(op + ": shapes do not broadcast");
    ys[k] = as[k] == 1 ? bs[k] : as[k];
  }
  auto sa = stridesOf(as), sb = stridesOf(bs), sy = stridesOf(ys);
  int64_t n = product(ys);
  bool isFloat = a.isFloat() || b.isFloat();
  HostTensor y;
  y.dtype = isFloat ? (a.isFloat() ? a.dtype : b.dtype) : a.dtype;
  y.shape = ys;
  for (int64_t idx = 0; idx < n; ++idx) {
    int64_t ia = 0, ib = 0, rem = idx;
    for (size_t k = 0; k < rank; ++k) {
      int64_t c = rem / sy[k];
      rem %= sy[k];
      ia += (as[k] == 1 ? 0 : c) * sa[k];
      ib += (bs[k] == 1 ? 0 : c) * sb[k];
    }
    if (isFloat) {
      double x = a.asDouble(ia), z = b.asDouble(ib);
      y.f.push_back(op == "Add" ? x + z : op == "Sub" ? x - z
                    : op == "Mul" ? x * z : x / z);
    } else {
      int64_t x = a.i[ia], z = b.i[ib];
      if (op == "Div" && z == 0)
        fail("Div: integer division by zero");
      y.i.push_back(op == "Add" ? x + z : op == "Sub" ? x - z
                    : op == "Mul" ? x * z : x / z);
    }
  }
  return y;
}

HostTensor castTo(const HostTensor &x, int32_t to) {
  HostTensor y;
  y.dtype = to;
  y.shape = x.shape;
  bool toFloat = to == TensorProto::FLOAT || to == TensorProto::DOUBLE ||
                 to == TensorProto::FLOAT16 || to == TensorProto::BFLOAT16;
  for (int64_t k = 0; k < x.numel(); ++k) {
    if (toFloat) {
      double v = x.asDouble(k);
      y.f.push_back(to == TensorProto::FLOAT ? double(float(v)) : v);
    } else if (to == TensorProto::BOOL) {
      y.i.push_back(x.asDouble(k) != 0.0);
    } else {
      y.i.push_back(x.isFloat() ? int64_t(std::trunc(x.f[k])) : x.i[k]);
    }
  }
  return y;
}

// Gathers along `axis` (the constant case of ONNX Gather).
HostTensor gather(const HostTensor &data, const HostTensor &indices,
                  int64_t axis) {
  int64_t r = data.rank();
  axis = normalizeAxis(axis, r, "Gather axis");
  std::vector<int64_t> outShape(data.shape.begin(), data.shape.begin() + axis);
  outShape.insert(outShape.end(), indices.shape.begin(), indices.shape.end());
  outShape.insert(outShape.end(), data.shape.begin() + axis + 1, data.shape.end());
  int64_t outer = product({data.shape.begin(), data.shape.begin() + axis});
  int64_t inner = product({data.shape.begin() + axis + 1, data.shape.end()});
  int64_t dim = data.shape[axis];
  HostTensor y;
  y.dtype = data.dtype;
  y.shape = outShape;
  auto idx = indices.toInts();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j : idx) {
      if (j < -dim || j >= dim)
        fail("Gather: index " + std::to_string(j) + " out of range for size " +
             std::to_string(dim));
      if (j < 0)
        j += dim;
      for (int64_t in = 0; in < inner; ++in) {
        int64_t src = (o * dim + j) * inner + in;
        if (data.isFloat())
          y.f.push_back(data.f[src]);
        else
          y.i.push_back(data.i[src]);
      }
    }
  return y;
}

HostTensor concat(const std::vector<const HostTensor *> &xs, int64_t axis) {
  const HostTensor &first = *xs.front();
  int64_t r = first.rank();
  axis = normalizeAxis(axis, r, "Concat axis");
  std::vector<int64_t> shape = first.shape;
  shape[axis] = 0;
  for (auto *x : xs) {
    if (x->rank() != r)
      fail("Concat: inputs have different ranks");
    for (int64_t k = 0; k < r; ++k)
      if (k != axis && x->shape[k] != first.shape[k])
        fail("Concat: inputs differ outside the concatenation axis");
    shape[axis] += x->shape[axis];
  }
  int64_t outer = product({shape.begin(), shape.begin() + axis});
  HostTensor y;
  y.dtype = first.dtype;
  y.shape = shape;
  for (int64_t o = 0; o < outer; ++o)
    for (auto *x : xs) {
      int64_t chunk = product({x->shape.begin() + axis, x->shape.end()});
      for (int64_t k = 0; k < chunk; ++k) {
        if (y.isFloat())
          y.f.push_back(x->asDouble(o * chunk + k));
        else
          y.i.push_back(x->asInt(o * chunk + k));
      }
    }
  return y;
}

HostTensor slice(const HostTensor &data, std::vector<int64_t> starts,
                 std::vector<int64_t> ends, std::vector<int64_t> axes,
                 std::vector<int64_t> steps) {
  int64_t r = data.rank();
  if (axes.empty())
    for (int64_t k = 0; k < int64_t(starts.size()); ++k)
      axes.push_back(k);
  if (steps.empty())
    steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() ||
      steps.size() != starts.size())
    fail("Slice: starts/ends/axes/steps have different lengths");
  std::vector<int64_t> lo(r, 0), step(r, 1), count(data.shape);
  for (size_t k = 0; k < starts.size(); ++k) {
    int64_t a = normalizeAxis(axes[k], r, "Slice axis");
    int64_t dim = data.shape[a], s = steps[k];
    if (s == 0)
      fail("Slice: step 0");
    int64_t b = starts[k], e = ends[k];
    if (b < 0) b += dim;
    if (e < 0) e += dim;
    if (s > 0) {
      b = std::clamp<int64_t>(b, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      count[a] = e > b ? (e - b + s - 1) / s : 0;
    } else {
      b = std::clamp<int64_t>(b, -1, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      count[a] = b > e ? (b - e - s - 1) / (-s) : 0;
    }
    lo[a] = b;
    step[a] = s;
  }
  auto sd = stridesOf(data.shape), sc = stridesOf(count);
  HostTensor y;
  y.dtype = data.dtype;
  y.shape = count;
  for (int64_t idx = 0; idx < product(count); ++idx) {
    int64_t src = 0, rem = idx;
    for (int64_t k = 0; k < r; ++k) {
      int64_t c = rem / sc[k];
      rem %= sc[k];
      src += (lo[k] + c * step[k]) * sd[k];
    }
    if (data.isFloat())
      y.f.push_back(data.f[src]);
    else
      y.i.push_back(data.i[src]);
  }
  return y;
}

std::vector<int64_t> attrInts(const onnx::NodeProto &node,
                              const std::string &name) {
  auto *a = findAttr(node, name);
  if (!a)
    return {};
  return {a->ints().begin(), a->ints().end()};
}

// Axes of Unsqueeze/Squeeze: an attribute before opset 13, an input after.
std::vector<int64_t> axesOf(const onnx::NodeProto &node, int64_t opset,
                            const std::vector<const HostTensor *> &inputs) {
  if (opset < 13)
    return attrInts(node, "axes");
  if (inputs.size() > 1 && inputs[1])
    return inputs[1]->toInts();
  return {};
}
} // namespace

bool fcc::foldConstantNode(const onnx::NodeProto &node, int64_t opset,
                           const std::vector<const HostTensor *> &in,
                           std::vector<HostTensor> &out) {
  const std::string &op = node.op_type();
  auto need = [&](size_t n) {
    if (in.size() < n || !in[n - 1])
      fail(op + " expects at least " + std::to_string(n) + " inputs");
  };
  if (op == "Identity") {
    need(1);
    out.push_back(*in[0]);
  } else if (op == "Shape") {
    need(1);
    int64_t r = in[0]->rank();
    int64_t start = attrInt(node, "start", 0), end = attrInt(node, "end", r);
    if (start < 0) start += r;
    if (end < 0) end += r;
    start = std::clamp<int64_t>(start, 0, r);
    end = std::clamp<int64_t>(end, 0, r);
    std::vector<int64_t> dims;
    for (int64_t k = start; k < end; ++k)
      dims.push_back(in[0]->shape[k]);
    int64_t n = int64_t(dims.size());
    out.push_back(HostTensor::ints(std::move(dims), {n}));
  } else if (op == "Size") {
    need(1);
    out.push_back(HostTensor::ints({in[0]->numel()}, {}));
  } else if (op == "Gather") {
    need(2);
    out.push_back(gather(*in[0], *in[1], attrInt(node, "axis", 0)));
  } else if (op == "Unsqueeze") {
    need(1);
    HostTensor y = *in[0];
    auto axes = axesOf(node, opset, in);
    int64_t r = y.rank() + int64_t(axes.size());
    for (int64_t &a : axes)
      a = normalizeAxis(a, r, "Unsqueeze axis");
    std::sort(axes.begin(), axes.end());
    for (int64_t a : axes)
      y.shape.insert(y.shape.begin() + a, 1);
    out.push_back(std::move(y));
  } else if (op == "Squeeze") {
    need(1);
    HostTensor y = *in[0];
    auto axes = axesOf(node, opset, in);
    std::vector<int64_t> shape;
    for (int64_t &a : axes)
      a = normalizeAxis(a, y.rank(), "Squeeze axis");
    for (int64_t k = 0; k < y.rank(); ++k) {
      bool drop = axes.empty() ? y.shape[k] == 1
                               : std::count(axes.begin(), axes.end(), k) > 0;
      if (drop && y.shape[k] != 1)
        fail("Squeeze: dimension " + std::to_string(k) + " is not 1");
      if (!drop)
        shape.push_back(y.shape[k]);
    }
    y.shape = shape;
    out.push_back(std::move(y));
  } else if (op == "Concat") {
    for (auto *x : in)
      if (!x)
        fail("Concat: missing input");
    out.push_back(concat(in, attrInt(node, "axis", 0)));
  } else if (op == "Cast") {
    need(1);
    out.push_back(castTo(*in[0], int32_t(attrInt(node, "to", TensorProto::FLOAT))));
  } else if (op == "Slice") {
    need(1);
    if (opset < 10) {
      out.push_back(slice(*in[0], attrInts(node, "starts"), attrInts(node, "ends"),
                          attrInts(node, "axes"), {}));
    } else {
      need(3);
      auto opt = [&](size_t k) {
        return k < in.size() && in[k] ? in[k]->toInts() : std::vector<int64_t>{};
      };
      out.push_back(slice(*in[0], in[1]->toInts(), in[2]->toInts(), opt(3), opt(4)));
    }
  } else if (op == "Reshape" || op == "Flatten") {
    need(1);
    HostTensor y = *in[0];
    if (op == "Flatten") {
      int64_t axis = attrInt(node, "axis", 1);
      if (axis < 0) axis += y.rank();
      y.shape = {product({in[0]->shape.begin(), in[0]->shape.begin() + axis}),
                 product({in[0]->shape.begin() + axis, in[0]->shape.end()})};
    } else {
      need(2);
      auto target = in[1]->toInts();
      int64_t known = 1, infer = -1;
      for (size_t k = 0; k < target.size(); ++k) {
        if (target[k] == 0 && !attrInt(node, "allowzero", 0))
          target[k] = k < in[0]->shape.size() ? in[0]->shape[k] : 1;
        if (target[k] == -1)
          infer = int64_t(k);
        else
          known *= target[k];
      }
      if (infer >= 0)
        target[infer] = known ? y.numel() / known : 0;
      if (product(target) != y.numel())
        fail("Reshape: element count changes");
      y.shape = target;
    }
    out.push_back(std::move(y));
  } else if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div") {
    need(2);
    out.push_back(broadcastBinary(op, *in[0], *in[1]));
  } else if (op == "Transpose") {
    need(1);
    const HostTensor &x = *in[0];
    int64_t r = x.rank();
    std::vector<int64_t> perm = attrInts(node, "perm");
    if (perm.empty())
      for (int64_t k = r - 1; k >= 0; --k)
        perm.push_back(k);
    if (int64_t(perm.size()) != r)
      fail("Transpose: perm has the wrong length");
    std::vector<int64_t> shape(r);
    for (int64_t k = 0; k < r; ++k)
      shape[k] = x.shape[normalizeAxis(perm[k], r, "Transpose perm")];
    auto sx = stridesOf(x.shape), sy = stridesOf(shape);
    HostTensor y;
    y.dtype = x.dtype;
    y.shape = shape;
    for (int64_t idx = 0; idx < x.numel(); ++idx) {
      int64_t src = 0, rem = idx;
      for (int64_t k = 0; k < r; ++k) {
        src += (rem / sy[k]) * sx[perm[k] < 0 ? perm[k] + r : perm[k]];
        rem %= sy[k];
      }
      if (x.isFloat())
        y.f.push_back(x.f[src]);
      else
        y.i.push_back(x.i[src]);
    }
    out.push_back(std::move(y));
  } else if (op == "Neg") {
    need(1);
    HostTensor y = *in[0];
    for (double &v : y.f) v = -v;
    for (int64_t &v : y.i) v = -v;
    out.push_back(std::move(y));
  } else if (op == "ConstantOfShape") {
    need(1);
    HostTensor y = HostTensor::floats({}, in[0]->toInts());
    double value = 0;
    for (const auto &a : node.attribute())
      if (a.name() == "value") {
        HostTensor v = HostTensor::fromProto(a.t());
        y.dtype = v.dtype;
        value = v.asDouble(0);
      }
    if (y.isFloat())
      y.f.assign(y.numel(), value);
    else
      y.i.assign(y.numel(), int64_t(value));
    out.push_back(std::move(y));
  } else if (op == "Range") {
    need(3);
    HostTensor y;
    y.dtype = in[0]->dtype;
    double start = in[0]->asDouble(0), limit = in[1]->asDouble(0),
           delta = in[2]->asDouble(0);
    if (delta == 0)
      fail("Range: delta is 0");
    int64_t n = std::max<int64_t>(0, int64_t(std::ceil((limit - start) / delta)));
    for (int64_t k = 0; k < n; ++k) {
      if (y.isFloat())
        y.f.push_back(start + k * delta);
      else
        y.i.push_back(int64_t(start) + k * int64_t(delta));
    }
    y.shape = {n};
    out.push_back(std::move(y));
  } else {
    return false;
  }
  return true;
}
