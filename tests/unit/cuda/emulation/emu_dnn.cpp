//===- emu_dnn.cpp - Convolutions and GEMMs of the CUDA emulation ---------===//
//
// Stands in for runtime/cuda/conv.cpp (cuDNN) and gemm.cpp (cuBLASLt) in
// the host emulation, so that whole generated CUDA trainers run on a
// machine without a GPU (tests/lit/e2e/cuda-emulated.test): each call
// converts its operands from the storage type to float (with the emulated
// fcc_cuda_cast kernel), runs the CPU kernel of the same semantics
// (runtime/cpu: oneDNN, OpenBLAS) and rounds the results back to the
// storage type, as stream work (run now, or recorded into a graph being
// captured and run when it replays); NHWC activations are transposed to
// NCHW and back around the CPU kernels (the real plans hand cuDNN NHWC and
// KRSC filters). This checks everything around the library calls (plans,
// pointers, storage types, graph capture); the libraries themselves are
// checked on a GPU by cuda_kernels_test.
//
//===----------------------------------------------------------------------===//
#include "emu.h"

#include "internal.h"

#include "fcc/runtime/cpu_kernels.h"

#include <vector>

using namespace fcc::cuda;

struct fcc_cuda_conv2d_plan {
  fcc_conv2d_desc desc;
  fcc_conv2d_plan *cpu; // always NCHW
  int dtype;
  bool nhwc; // the activations are NHWC: transposed around the CPU kernels
};

namespace {

int64_t inputCount(const fcc_conv2d_desc &d) { return d.n * d.c * d.h * d.w; }
int64_t outputCount(const fcc_conv2d_desc &d) {
  return d.n * d.k * d.oh * d.ow;
}
int64_t filterCount(const fcc_conv2d_desc &d) {
  return d.k * (d.c / d.groups) * d.r * d.s;
}

/// A float copy of `count` values of storage type dtype (NULL: empty).
std::vector<float> widen(const void *x, int64_t count, int dtype) {
  std::vector<float> out(x ? static_cast<size_t>(count) : 0);
  if (x && count > 0)
    fcc_cuda_cast(x, dtype, out.data(), FCC_DTYPE_F32, count);
  return out;
}
/// Stores float values into y with storage type dtype.
void narrow(const std::vector<float> &v, void *y, int dtype) {
  if (y && !v.empty())
    fcc_cuda_cast(v.data(), FCC_DTYPE_F32, y, dtype, int64_t(v.size()));
}

/// NCHW <-> NHWC of an n x c x hw tensor on the host (toNhwc: NCHW in).
std::vector<float> relayout(const std::vector<float> &v, int64_t n, int64_t c,
                            int64_t hw, bool toNhwc) {
  std::vector<float> out(v.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t p = 0; p < hw; ++p) {
        const size_t nchw = size_t((i * c + ch) * hw + p),
                     nhwc = size_t((i * hw + p) * c + ch);
        if (toNhwc)
          out[nhwc] = v[nchw];
        else
          out[nchw] = v[nhwc];
      }
  return out;
}

/// The plan's input (or output) activations, NCHW for the CPU kernels.
std::vector<float> inputNchw(const fcc_cuda_conv2d_plan *p,
                             std::vector<float> v) {
  const fcc_conv2d_desc &d = p->desc;
  return p->nhwc ? relayout(v, d.n, d.c, d.h * d.w, false) : v;
}
std::vector<float> outputNchw(const fcc_cuda_conv2d_plan *p,
                              std::vector<float> v) {
  const fcc_conv2d_desc &d = p->desc;
  return p->nhwc ? relayout(v, d.n, d.k, d.oh * d.ow, false) : v;
}

/// A failed CPU kernel: sticky, as a failed kernel of the stream would be.
void cpuFailed(const char *fn) {
  setAsyncError(format("%s (emulated): %s", fn, fcc_cpu_last_error()));
}

} // namespace

extern "C" {

fcc_cuda_conv2d_plan *fcc_cuda_conv2d_create(const fcc_conv2d_desc *d,
                                             int dtype) {
  if (!d || dtypeSize(dtype) == 0) {
    setError(FCC_ERR_INVALID, "fcc_cuda_conv2d_create: bad arguments");
    return nullptr;
  }
  fcc_conv2d_desc desc = *d; // with its output size
  fcc_conv2d_desc nchw = desc;
  nchw.layout = FCC_LAYOUT_NCHW;
  fcc_conv2d_plan *cpu = fcc_conv2d_desc_finalize(&desc) == 0
                             ? fcc_cpu_conv2d_create(&nchw)
                             : nullptr;
  if (!cpu) {
    setError(FCC_ERR_UNSUPPORTED, format("fcc_cuda_conv2d_create (emulated): %s",
                                         fcc_cpu_last_error()));
    return nullptr;
  }
  return new fcc_cuda_conv2d_plan{desc, cpu, dtype,
                                  desc.layout == FCC_LAYOUT_NHWC};
}

void fcc_cuda_conv2d_destroy(fcc_cuda_conv2d_plan *p) {
  if (!p)
    return;
  fcc_cpu_conv2d_destroy(p->cpu);
  delete p;
}

int fcc_cuda_conv2d_forward(fcc_cuda_conv2d_plan *p, const void *x,
                            const void *w, const void *bias, void *y) {
  if (int rc = refuseSideStream("fcc_cuda_conv2d_forward"))
    return rc;
  fcc_emu_enqueue([=] {
    const fcc_conv2d_desc &d = p->desc;
    std::vector<float> xf = inputNchw(p, widen(x, inputCount(d), p->dtype)),
                       wf = widen(w, filterCount(d), p->dtype),
                       bf = widen(bias, d.k, p->dtype),
                       yf(static_cast<size_t>(outputCount(d)));
    if (fcc_cpu_conv2d_forward(p->cpu, xf.data(), wf.data(),
                               bias ? bf.data() : nullptr, yf.data()) != 0)
      return cpuFailed("fcc_cuda_conv2d_forward");
    narrow(p->nhwc ? relayout(yf, d.n, d.k, d.oh * d.ow, true) : yf, y,
           p->dtype);
  });
  return FCC_OK;
}

int fcc_cuda_conv2d_backward_data(fcc_cuda_conv2d_plan *p, const void *dy,
                                  const void *w, void *dx) {
  if (int rc = refuseSideStream("fcc_cuda_conv2d_backward_data"))
    return rc;
  fcc_emu_enqueue([=] {
    const fcc_conv2d_desc &d = p->desc;
    std::vector<float> dyf = outputNchw(p, widen(dy, outputCount(d), p->dtype)),
                       wf = widen(w, filterCount(d), p->dtype),
                       dxf(static_cast<size_t>(inputCount(d)));
    if (fcc_cpu_conv2d_backward_data(p->cpu, dyf.data(), wf.data(),
                                     dxf.data()) != 0)
      return cpuFailed("fcc_cuda_conv2d_backward_data");
    narrow(p->nhwc ? relayout(dxf, d.n, d.c, d.h * d.w, true) : dxf, dx,
           p->dtype);
  });
  return FCC_OK;
}

int fcc_cuda_conv2d_backward_filter(fcc_cuda_conv2d_plan *p, const void *x,
                                    const void *dy, void *dw, void *dbias) {
  fcc_emu_enqueue([=] {
    const fcc_conv2d_desc &d = p->desc;
    std::vector<float> xf = inputNchw(p, widen(x, inputCount(d), p->dtype)),
                       dyf = outputNchw(p, widen(dy, outputCount(d), p->dtype)),
                       dwf(static_cast<size_t>(filterCount(d))),
                       dbf(dbias ? static_cast<size_t>(d.k) : 0);
    if (fcc_cpu_conv2d_backward_filter(p->cpu, xf.data(), dyf.data(),
                                       dwf.data(),
                                       dbias ? dbf.data() : nullptr) != 0)
      return cpuFailed("fcc_cuda_conv2d_backward_filter");
    narrow(dwf, dw, p->dtype);
    narrow(dbf, dbias, p->dtype);
  });
  return FCC_OK;
}

int fcc_cuda_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const void *a, const void *b, float beta,
                  const void *c, int64_t c_rows, int64_t c_cols, void *y,
                  int dtype) {
  if (dtypeSize(dtype) == 0)
    return setError(FCC_ERR_INVALID, "fcc_cuda_gemm: unknown dtype");
  if (int rc = refuseSideStream("fcc_cuda_gemm"))
    return rc;
  fcc_emu_enqueue([=] {
    std::vector<float> af = widen(a, m * k, dtype),
                       bf = widen(b, k * n, dtype),
                       cf = widen(c, c_rows * c_cols, dtype),
                       yf(static_cast<size_t>(m * n));
    fcc_cpu_gemm(trans_a, trans_b, m, n, k, alpha, af.data(), bf.data(),
                 beta, c ? cf.data() : nullptr, c_rows, c_cols, yf.data());
    narrow(yf, y, dtype);
  });
  return FCC_OK;
}

} // extern "C"
