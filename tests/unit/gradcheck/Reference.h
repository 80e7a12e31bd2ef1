//===- Reference.h - float64 reference implementations of fcc ops -*- C++
//-*-===//
//
// Independent double-precision implementations of the fcc ops the gradient
// checks use (written from the op definitions in ir/FccOps.td and
// ir/FccTrainingOps.td, not from runtime/cpu): GradCheckTest.cpp compares the
// per-op VJPs against finite differences of these, NetworkGradCheckTest.cpp
// interprets whole networks with them.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TESTS_UNIT_GRADCHECK_REFERENCE_H
#define FCC_TESTS_UNIT_GRADCHECK_REFERENCE_H

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

namespace fcc::gradcheck {

using Vec = std::vector<double>;
using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape &s) {
  int64_t n = 1;
  for (int64_t d : s)
    n *= d;
  return n;
}

struct ConvP {
  int64_t sh = 1, sw = 1, pt = 0, pl = 0, pb = 0, pr = 0, dh = 1, dw = 1, g = 1;
};

inline Shape convShape(const Shape &xs, const Shape &ws, const ConvP &p) {
  int64_t oh = (xs[2] + p.pt + p.pb - ((ws[2] - 1) * p.dh + 1)) / p.sh + 1;
  int64_t ow = (xs[3] + p.pl + p.pr - ((ws[3] - 1) * p.dw + 1)) / p.sw + 1;
  return {xs[0], ws[0], oh, ow};
}

inline Vec conv2d(const Vec &x, const Shape &xs, const Vec &w, const Shape &ws,
                  const Vec *b, const ConvP &p) {
  Shape ys = convShape(xs, ws, p);
  int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3];
  int64_t K = ws[0], Cg = ws[1], R = ws[2], S = ws[3], Kg = K / p.g;
  EXPECT_EQ(Cg * p.g, C);
  Vec y(numel(ys));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      int64_t g = k / Kg;
      for (int64_t oh = 0; oh < ys[2]; ++oh)
        for (int64_t ow = 0; ow < ys[3]; ++ow) {
          double acc = b ? (*b)[k] : 0.0;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < R; ++r)
              for (int64_t s = 0; s < S; ++s) {
                int64_t ih = oh * p.sh + r * p.dh - p.pt;
                int64_t iw = ow * p.sw + s * p.dw - p.pl;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W)
                  continue;
                acc += x[((n * C + g * Cg + c) * H + ih) * W + iw] *
                       w[((k * Cg + c) * R + r) * S + s];
              }
          y[((n * K + k) * ys[2] + oh) * ys[3] + ow] = acc;
        }
    }
  return y;
}

// Training-mode batch normalisation: batch mean and biased batch variance
// over every dimension but 1.
inline Vec batchNormTrain(const Vec &x, const Shape &xs, const Vec &scale,
                          const Vec &shift, double eps) {
  int64_t N = xs[0], C = xs[1], HW = numel(xs) / (N * C);
  Vec y(x.size());
  for (int64_t c = 0; c < C; ++c) {
    double mean = 0, var = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i)
        mean += x[(n * C + c) * HW + i];
    mean /= double(N * HW);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        double d = x[(n * C + c) * HW + i] - mean;
        var += d * d;
      }
    var /= double(N * HW);
    double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        int64_t j = (n * C + c) * HW + i;
        y[j] = scale[c] * (x[j] - mean) * inv + shift[c];
      }
  }
  return y;
}

inline Vec relu(const Vec &x) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    y[i] = x[i] > 0 ? x[i] : 0.0;
  return y;
}

inline Vec celu(const Vec &x, double alpha) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    y[i] = std::max(0.0, x[i]) +
           std::min(0.0, alpha * (std::exp(x[i] / alpha) - 1));
  return y;
}

struct PoolP {
  int64_t kh = 2, kw = 2, sh = 1, sw = 1, pt = 0, pl = 0, pb = 0, pr = 0,
          dh = 1, dw = 1;
  bool ceil = false, cip = false;
};

// PyTorch's rule: floor/ceil of the window count, and with ceil_mode the last
// window must start inside the input or the begin padding.
inline int64_t poolDim(int64_t in, int64_t k, int64_t s, int64_t p0, int64_t p1,
                       int64_t d, bool ceil) {
  int64_t num = in + p0 + p1 - ((k - 1) * d + 1);
  int64_t out = (ceil ? (num + s - 1) / s : num / s) + 1;
  if (ceil && (out - 1) * s >= in + p0)
    --out;
  return out;
}

inline Shape poolShape(const Shape &xs, const PoolP &p) {
  return {xs[0], xs[1], poolDim(xs[2], p.kh, p.sh, p.pt, p.pb, p.dh, p.ceil),
          poolDim(xs[3], p.kw, p.sw, p.pl, p.pr, p.dw, p.ceil)};
}

inline Vec maxPool(const Vec &x, const Shape &xs, const PoolP &p) {
  Shape ys = poolShape(xs, p);
  int64_t H = xs[2], W = xs[3];
  Vec y(numel(ys));
  for (int64_t nc = 0; nc < xs[0] * xs[1]; ++nc)
    for (int64_t oh = 0; oh < ys[2]; ++oh)
      for (int64_t ow = 0; ow < ys[3]; ++ow) {
        double m = -INFINITY;
        for (int64_t i = 0; i < p.kh; ++i)
          for (int64_t j = 0; j < p.kw; ++j) {
            int64_t ih = oh * p.sh - p.pt + i * p.dh,
                    iw = ow * p.sw - p.pl + j * p.dw;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W)
              m = std::max(m, x[(nc * H + ih) * W + iw]);
          }
        y[(nc * ys[2] + oh) * ys[3] + ow] = m;
      }
  return y;
}

// Smallest gap between the largest and second largest value of any window
// (distance to a max-pooling kink).
inline double maxPoolMargin(const Vec &x, const Shape &xs, const PoolP &p) {
  Shape ys = poolShape(xs, p);
  int64_t H = xs[2], W = xs[3];
  double margin = INFINITY;
  for (int64_t nc = 0; nc < xs[0] * xs[1]; ++nc)
    for (int64_t oh = 0; oh < ys[2]; ++oh)
      for (int64_t ow = 0; ow < ys[3]; ++ow) {
        double m1 = -INFINITY, m2 = -INFINITY;
        for (int64_t i = 0; i < p.kh; ++i)
          for (int64_t j = 0; j < p.kw; ++j) {
            int64_t ih = oh * p.sh - p.pt + i * p.dh,
                    iw = ow * p.sw - p.pl + j * p.dw;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W)
              continue;
            double v = x[(nc * H + ih) * W + iw];
            if (v > m1) {
              m2 = m1;
              m1 = v;
            } else if (v > m2) {
              m2 = v;
            }
          }
        margin = std::min(margin, m1 - m2);
      }
  return margin;
}

inline Vec avgPool(const Vec &x, const Shape &xs, const PoolP &p) {
  Shape ys = poolShape(xs, p);
  int64_t H = xs[2], W = xs[3];
  Vec y(numel(ys));
  for (int64_t nc = 0; nc < xs[0] * xs[1]; ++nc)
    for (int64_t oh = 0; oh < ys[2]; ++oh)
      for (int64_t ow = 0; ow < ys[3]; ++ow) {
        // Window clipped to the padded image [-pad_begin, in + pad_end).
        int64_t h0 = oh * p.sh - p.pt, w0 = ow * p.sw - p.pl;
        int64_t h1 = std::min(h0 + p.kh, H + p.pb),
                w1 = std::min(w0 + p.kw, W + p.pr);
        int64_t padded = (h1 - h0) * (w1 - w0);
        int64_t hs = std::max<int64_t>(h0, 0), ws = std::max<int64_t>(w0, 0);
        int64_t he = std::min(h1, H), we = std::min(w1, W);
        double sum = 0;
        for (int64_t ih = hs; ih < he; ++ih)
          for (int64_t iw = ws; iw < we; ++iw)
            sum += x[(nc * H + ih) * W + iw];
        double div = p.cip ? double(padded) : double((he - hs) * (we - ws));
        y[(nc * ys[2] + oh) * ys[3] + ow] = sum / div;
      }
  return y;
}

// numpy broadcasting of two operands to `out`.
inline Vec broadcastBinary(const Vec &a, const Shape &as, const Vec &b,
                           const Shape &bs, const Shape &out,
                           const std::function<double(double, double)> &op) {
  size_t rank = out.size();
  auto align = [&](const Shape &s) {
    Shape r(rank - s.size(), 1);
    r.insert(r.end(), s.begin(), s.end());
    return r;
  };
  Shape aa = align(as), ba = align(bs);
  Vec y(numel(out));
  std::vector<int64_t> idx(rank, 0);
  for (int64_t i = 0; i < numel(out); ++i) {
    int64_t rem = i;
    for (size_t d = rank; d-- > 0;) {
      idx[d] = rem % out[d];
      rem /= out[d];
    }
    int64_t ia = 0, ib = 0;
    for (size_t d = 0; d < rank; ++d) {
      ia = ia * aa[d] + (aa[d] == 1 ? 0 : idx[d]);
      ib = ib * ba[d] + (ba[d] == 1 ? 0 : idx[d]);
    }
    y[i] = op(a[ia], b[ib]);
  }
  return y;
}

// alpha * op(A) op(B) + beta * C, C broadcast to M x N.
inline Vec linear(const Vec &A, const Shape &as, const Vec &B, const Shape &bs,
                  const Vec *C, const Shape &cs, bool ta, bool tb, double alpha,
                  double beta) {
  int64_t M = ta ? as[1] : as[0], K = ta ? as[0] : as[1],
          N = tb ? bs[0] : bs[1];
  Vec y(M * N, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k)
        acc += (ta ? A[k * M + m] : A[m * K + k]) *
               (tb ? B[n * K + k] : B[k * N + n]);
      y[m * N + n] = alpha * acc;
    }
  if (C) {
    Vec bias = broadcastBinary(Vec(M * N, 0.0), {M, N}, *C, cs, {M, N},
                               [](double, double c) { return c; });
    for (int64_t i = 0; i < M * N; ++i)
      y[i] += beta * bias[i];
  }
  return y;
}

inline Vec flipW(const Vec &x, const Shape &xs) {
  Vec y(x.size());
  int64_t W = xs[3];
  for (int64_t r = 0; r < numel(xs) / W; ++r)
    for (int64_t w = 0; w < W; ++w)
      y[r * W + w] = x[r * W + (W - 1 - w)];
  return y;
}

// mean_i -sum_j q_ij log softmax(logits_i)_j, q = (1-ls) onehot + ls / C.
inline double softmaxXent(const Vec &logits, int64_t N, int64_t C,
                          const Vec &labels, double ls) {
  double total = 0;
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY;
    for (int64_t j = 0; j < C; ++j)
      m = std::max(m, logits[i * C + j]);
    double z = 0;
    for (int64_t j = 0; j < C; ++j)
      z += std::exp(logits[i * C + j] - m);
    double lse = m + std::log(z);
    for (int64_t j = 0; j < C; ++j) {
      double q = ls / double(C) + (j == int64_t(labels[i]) ? 1.0 - ls : 0.0);
      total -= q * (logits[i * C + j] - lse);
    }
  }
  return total / double(N);
}

// Philox4x32-10 (Salmon et al., SC'11), written from the paper.
inline std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> c,
                                             uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c[0],
             p1 = uint64_t(0xCD9E8D57u) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k0, uint32_t(p1),
         uint32_t(p0 >> 32) ^ c[3] ^ k1, uint32_t(p0)};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// Inverted-dropout mask: element i kept iff uniform number i of (seed,
// stream) >= ratio; kept elements are 1 / (1 - ratio).
inline Vec dropoutMask(uint64_t seed, uint64_t stream, float ratio,
                       int64_t count) {
  Vec m(count);
  for (int64_t i = 0; i < count; ++i) {
    uint64_t block = uint64_t(i) / 4;
    auto w = philox4x32_10({uint32_t(block), uint32_t(block >> 32),
                            uint32_t(stream), uint32_t(stream >> 32)},
                           uint32_t(seed), uint32_t(seed >> 32));
    double u = double(w[i % 4] >> 8) / 16777216.0;
    m[i] = u >= double(ratio) ? 1.0 / (1.0 - double(ratio)) : 0.0;
  }
  return m;
}

} // namespace fcc::gradcheck

#endif // FCC_TESTS_UNIT_GRADCHECK_REFERENCE_H
