// BatchNorm (+ ReLU6) for the MindSpore twin (fp32, NCHW).
//
// Entry points (inputs first, then the outputs):
// With batch statistics (training), optionally fused with the ReLU6 after it:
//   bn[_relu6]_train_forward (x[N,C,H,W], gamma[C], beta[C], moving_mean[C], moving_variance[C],
//                             eps_momentum[2]) -> y, saved[2,C] (mean, invstd), new moving mean, variance
//   bn_train_grad            (dy, x, gamma, saved)                -> dx, dgamma[C], dbeta[C]
//   bn_relu6_train_grad      (dy, x, gamma, beta, saved)          -> dx, dgamma[C], dbeta[C]
// On its moving statistics (eval mode, or training with frozen BatchNorm), folded into a per-channel
// scale = gamma / sqrt(var + eps) and shift = beta - mean * scale, optionally with ReLU6:
//   affine[_relu6]           (x, scale[C], shift[C])              -> y = x * scale + shift (clamped to [0, 6])
//   affine[_relu6]_grad      (dy, x, scale, shift)                -> dx, dscale[C], dshift[C]
// (the gradients of gamma and beta follow from dscale and dshift in MindSpore).
// Folded into the convolution before it: its weight and bias in one call (s = gamma / sqrt(var + eps)),
// and their backward (mean and var are constants there, as frozen statistics):
//   bn_fold                  (w[C,...], gamma, beta, mean, var, eps_momentum[2]) -> w * s (per row), beta - mean * s
//   bn_fold_grad             (dw'[C,...], db'[C], w, gamma, mean, var, eps_momentum) -> dw, dgamma[C] (dbeta = db')
// The convolutions' bias forms, the bias's backward:
//   bias_grad                (dy[N,C,H,W])                        -> db[C]
//   bias_relu6_grad          (dy, y)                              -> dz (dy where 0 < y < 6), db[C]
#include "common.h"

namespace mbv2 {
namespace {

// ---- BatchNorm in training (batch statistics), optionally followed by ReLU6 ----
//
// Forward: per channel c over its N planes (M = N*H*W values): mean and the
// biased variance (each plane's sum and centred sum of squares, combined in
// double with Chan's formula, so one pass over memory and no cancellation),
// then y = (x - mean) * (gamma * invstd) + beta, clamped to [0, 6] for the
// fused ReLU6. saved[2, C] = (mean, invstd = 1 / sqrt(var + eps)) for the
// backward; the moving statistics come out updated by MindSpore's rule,
// moving * (1 - momentum) + batch * momentum (momentum: the primitive's, 0.1
// for nn.BatchNorm2d(momentum=0.9)), with the unbiased variance var * M / (M -
// 1) as MindSpore's BatchNorm (NaN for M = 1 as there). Backward: the pre-activation p is
// recomputed from x with the forward's very operations (bit-identical, so x
// is read instead of y), g = dy where 0 < p <= 6 (MindSpore's ReLU6 gradient,
// which passes at exactly 6; torch's stops there), else 0; z = (x - mean) *
// invstd: dbeta = sum g, dgamma = sum g z, dx = gamma invstd (g - dbeta / M -
// z dgamma / M). Work is split over channels (no reduction across threads);
// sums are float over runs of SUM_RUN values, then double.

// Sum and centred sum of squares of one plane (len values), Chan-combined into (count, mean, m2).
void plane_moments(const float* __restrict__ x, int64_t len, double& count, double& mean, double& m2) {
  const double plane_mean = plane_sum(x, len) / static_cast<double>(len);
  const float centre = static_cast<float>(plane_mean);
  double squares = 0.0, shift = 0.0;  // shift: sum (x - centre), ~0, corrects centre's rounding
  for (int64_t start = 0; start < len; start += SUM_RUN) {
    const int64_t end = std::min(len, start + SUM_RUN);
    float q = 0.0f, d = 0.0f;
#pragma omp simd reduction(+ : q, d)
    for (int64_t i = start; i < end; ++i) {
      const float v = x[i] - centre;
      q += v * v;
      d += v;
    }
    squares += q;
    shift += d;
  }
  const double n_b = static_cast<double>(len);
  const double plane_m2 = squares - shift * shift / n_b;
  const double mean_b = static_cast<double>(centre) + shift / n_b;
  const double n = count + n_b;
  const double delta = mean_b - mean;
  mean += delta * n_b / n;
  m2 += plane_m2 + delta * delta * count * n_b / n;
  count = n;
}

// (x, gamma, beta, moving_mean, moving_variance, eps_momentum[2]) ->
// (y, saved[2, C], new moving_mean, new moving_variance); with `relu6`, y is clamped to [0, 6].
int bn_train_forward(const Args& a, bool relu6) {
  if (a.nparam != 10 || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], c = a.shape(0)[1], h = a.shape(0)[2], w = a.shape(0)[3];
  for (int i : {1, 2, 3, 4, 8, 9}) {
    if (!a.is_vector(i, c)) return 1;
  }
  if (!a.is_vector(5, 2) || !a.is(6, n, c, h, w) || !a.is_matrix(7, 2, c)) return 1;
  const float* x = a.in(0);
  const float* gamma = a.in(1);
  const float* beta = a.in(2);
  const float* moving_mean = a.in(3);
  const float* moving_variance = a.in(4);
  const double eps = a.in(5)[0];
  const float momentum = a.in(5)[1];
  float* y = a.out(6);
  float* stats = a.out(7);
  float* new_mean = a.out(8);
  float* new_variance = a.out(9);
  const int64_t plane = h * w;
  const double values = static_cast<double>(n * plane);
  parallel_for(c, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      double count = 0.0, mean = 0.0, m2 = 0.0;
      for (int64_t b = 0; b < n && plane > 0; ++b) plane_moments(x + (b * c + ch) * plane, plane, count, mean, m2);
      const double var = values > 0 ? std::max(0.0, m2) / values : 0.0;
      const double invstd = 1.0 / std::sqrt(var + eps);
      stats[ch] = static_cast<float>(mean);
      stats[c + ch] = static_cast<float>(invstd);
      const float unbiased = static_cast<float>(var * values / (values - 1.0));
      new_mean[ch] = moving_mean[ch] * (1.0f - momentum) + stats[ch] * momentum;
      new_variance[ch] = moving_variance[ch] * (1.0f - momentum) + unbiased * momentum;
      // m and scale exactly as the backward rebuilds them from stats (same pre-activation there).
      const float m = stats[ch];
      const float scale = gamma[ch] * stats[c + ch];
      const float shift = beta[ch];
      for (int64_t b = 0; b < n; ++b) {
        const float* __restrict__ in = x + (b * c + ch) * plane;
        float* __restrict__ out = y + (b * c + ch) * plane;
        if (relu6) {
#pragma omp simd
          for (int64_t i = 0; i < plane; ++i) out[i] = std::min(std::max((in[i] - m) * scale + shift, 0.0f), 6.0f);
        } else {
#pragma omp simd
          for (int64_t i = 0; i < plane; ++i) out[i] = (in[i] - m) * scale + shift;
        }
      }
    }
  });
  return 0;
}

// Whether ReLU6 passes the gradient at pre-activation p (as MindSpore's ReLU6Grad: 0 < p <= 6).
inline float relu6_pass(float p, float g) { return (p > 0.0f && p <= 6.0f) ? g : 0.0f; }

// (dy, x, gamma[, beta], saved[2, C]) -> (dx, dgamma, dbeta); with `relu6` (beta given), ReLU6's
// gradient masks dy, decided on the pre-activation rebuilt from x.
int bn_train_grad(const Args& a, bool relu6) {
  const int base = relu6 ? 1 : 0;  // beta sits at index 3 when present
  if (a.nparam != 7 + base || !a.is(1, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(1)[0], c = a.shape(1)[1], h = a.shape(1)[2], w = a.shape(1)[3];
  if (!a.is(0, n, c, h, w) || !a.is_vector(2, c) || (relu6 && !a.is_vector(3, c)) ||
      !a.is_matrix(3 + base, 2, c) || !a.is(4 + base, n, c, h, w) || !a.is_vector(5 + base, c) ||
      !a.is_vector(6 + base, c))
    return 1;
  const float* dy = a.in(0);
  const float* x = a.in(1);
  const float* gamma = a.in(2);
  const float* beta = relu6 ? a.in(3) : nullptr;
  const float* stats = a.in(3 + base);
  float* dx = a.out(4 + base);
  float* dgamma_out = a.out(5 + base);
  float* dbeta_out = a.out(6 + base);
  const int64_t plane = h * w;
  const double values = static_cast<double>(n * plane);
  parallel_for(c, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      const float m = stats[ch];
      const float invstd = stats[c + ch];
      const float scale = gamma[ch] * invstd;  // the forward's pre-activation: (x - m) * scale + shift
      const float shift = relu6 ? beta[ch] : 0.0f;
      double sum_g = 0.0, sum_gx = 0.0;  // sum g, sum g (x - mean)
      for (int64_t b = 0; b < n; ++b) {
        const float* __restrict__ d = dy + (b * c + ch) * plane;
        const float* __restrict__ in = x + (b * c + ch) * plane;
        for (int64_t start = 0; start < plane; start += SUM_RUN) {
          const int64_t stop = std::min(plane, start + SUM_RUN);
          float sg = 0.0f, sgx = 0.0f;
          if (relu6) {
#pragma omp simd reduction(+ : sg, sgx)
            for (int64_t i = start; i < stop; ++i) {
              const float g = relu6_pass((in[i] - m) * scale + shift, d[i]);
              sg += g;
              sgx += g * (in[i] - m);
            }
          } else {
#pragma omp simd reduction(+ : sg, sgx)
            for (int64_t i = start; i < stop; ++i) {
              sg += d[i];
              sgx += d[i] * (in[i] - m);
            }
          }
          sum_g += sg;
          sum_gx += sgx;
        }
      }
      const double dgamma = sum_gx * invstd;
      dgamma_out[ch] = static_cast<float>(dgamma);
      dbeta_out[ch] = static_cast<float>(sum_g);
      // dx = k * (g - mean_g - (x - mean) * coef), k = gamma * invstd, coef = invstd^2 * sum g (x - mean) / M
      const float k = scale;
      const float mean_g = values > 0 ? static_cast<float>(sum_g / values) : 0.0f;
      const float coef = values > 0 ? static_cast<float>(dgamma * invstd / values) : 0.0f;
      for (int64_t b = 0; b < n; ++b) {
        const float* __restrict__ d = dy + (b * c + ch) * plane;
        const float* __restrict__ in = x + (b * c + ch) * plane;
        float* __restrict__ o = dx + (b * c + ch) * plane;
        if (relu6) {
#pragma omp simd
          for (int64_t i = 0; i < plane; ++i) {
            const float g = relu6_pass((in[i] - m) * scale + shift, d[i]);
            o[i] = k * (g - mean_g - (in[i] - m) * coef);
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < plane; ++i) o[i] = k * (d[i] - mean_g - (in[i] - m) * coef);
        }
      }
    }
  });
  return 0;
}

// (x, scale[C], shift[C]) -> y = x * scale + shift, with `relu6` clamped to [0, 6]: a BatchNorm on
// its moving statistics (folded into scale and shift), and ReLU6, in one pass.
int affine_forward(const Args& a, bool relu6) {
  if (a.nparam != 4 || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], c = a.shape(0)[1], h = a.shape(0)[2], w = a.shape(0)[3];
  if (!a.is_vector(1, c) || !a.is_vector(2, c) || !a.is(3, n, c, h, w)) return 1;
  const float* x = a.in(0);
  const float* scale = a.in(1);
  const float* shift = a.in(2);
  float* y = a.out(3);
  const int64_t plane = h * w;
  parallel_for(n * c, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float k = scale[p % c], b = shift[p % c];
      const float* __restrict__ in = x + p * plane;
      float* __restrict__ out = y + p * plane;
      if (relu6) {
#pragma omp simd
        for (int64_t i = 0; i < plane; ++i) out[i] = std::min(std::max(in[i] * k + b, 0.0f), 6.0f);
      } else {
#pragma omp simd
        for (int64_t i = 0; i < plane; ++i) out[i] = in[i] * k + b;
      }
    }
  });
  return 0;
}

// (dy, x, scale[C], shift[C]) -> (dx, dscale[C], dshift[C]) of affine_forward: g = dy (with `relu6`,
// masked by ReLU6's gradient on the pre-activation x * scale + shift, rebuilt as the forward did),
// dx = g * scale, dscale = sum g x, dshift = sum g. Split over channels (no reduction across
// threads); sums are float over runs of SUM_RUN values, then double.
int affine_grad(const Args& a, bool relu6) {
  if (a.nparam != 7 || !a.is(1, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(1)[0], c = a.shape(1)[1], h = a.shape(1)[2], w = a.shape(1)[3];
  if (!a.is(0, n, c, h, w) || !a.is_vector(2, c) || !a.is_vector(3, c) || !a.is(4, n, c, h, w) ||
      !a.is_vector(5, c) || !a.is_vector(6, c))
    return 1;
  const float* dy = a.in(0);
  const float* x = a.in(1);
  const float* scale = a.in(2);
  const float* shift = a.in(3);
  float* dx = a.out(4);
  float* dscale = a.out(5);
  float* dshift = a.out(6);
  const int64_t plane = h * w;
  parallel_for(c, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      const float k = scale[ch], b = shift[ch];
      double sum_g = 0.0, sum_gx = 0.0;
      for (int64_t img = 0; img < n; ++img) {
        const float* __restrict__ d = dy + (img * c + ch) * plane;
        const float* __restrict__ in = x + (img * c + ch) * plane;
        float* __restrict__ o = dx + (img * c + ch) * plane;
        for (int64_t start = 0; start < plane; start += SUM_RUN) {
          const int64_t stop = std::min(plane, start + SUM_RUN);
          float sg = 0.0f, sgx = 0.0f;
          if (relu6) {
#pragma omp simd reduction(+ : sg, sgx)
            for (int64_t i = start; i < stop; ++i) {
              const float g = relu6_pass(in[i] * k + b, d[i]);
              o[i] = g * k;
              sg += g;
              sgx += g * in[i];
            }
          } else {
#pragma omp simd reduction(+ : sg, sgx)
            for (int64_t i = start; i < stop; ++i) {
              o[i] = d[i] * k;
              sg += d[i];
              sgx += d[i] * in[i];
            }
          }
          sum_g += sg;
          sum_gx += sgx;
        }
      }
      dscale[ch] = static_cast<float>(sum_gx);
      dshift[ch] = static_cast<float>(sum_g);
    }
  });
  return 0;
}

// The backward of a folded BatchNorm's bias (the bias[_relu6] forward forms, in training with frozen
// BatchNorm): (dy, y) -> (dz, db[C]), dz = dy where 0 < y < 6, else 0 (ReLU6's gradient read from
// the clamped output: y == 6 stops it, where ops.ReLU6 passes a pre-activation of exactly 6), and
// db = sum of dz per channel; without
// `relu6`, (dy) -> db. One pass; split over channels, sums as in affine_grad.
int bias_grad(const Args& a, bool relu6) {
  if (a.nparam != (relu6 ? 4 : 2) || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], c = a.shape(0)[1], h = a.shape(0)[2], w = a.shape(0)[3];
  if (relu6 && (!a.is(1, n, c, h, w) || !a.is(2, n, c, h, w) || !a.is_vector(3, c))) return 1;
  if (!relu6 && !a.is_vector(1, c)) return 1;
  const float* dy = a.in(0);
  const float* y = relu6 ? a.in(1) : nullptr;
  float* dz = relu6 ? a.out(2) : nullptr;
  float* db = a.out(relu6 ? 3 : 1);
  const int64_t plane = h * w;
  parallel_for(c, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      double sum = 0.0;
      for (int64_t img = 0; img < n; ++img) {
        const int64_t offset = (img * c + ch) * plane;
        const float* __restrict__ d = dy + offset;
        for (int64_t start = 0; start < plane; start += SUM_RUN) {
          const int64_t stop = std::min(plane, start + SUM_RUN);
          float run = 0.0f;
          if (relu6) {
            run = relu6_gate_run(d, y + offset, dz + offset, start, stop);
          } else {
#pragma omp simd reduction(+ : run)
            for (int64_t i = start; i < stop; ++i) run += d[i];
          }
          sum += run;
        }
      }
      db[ch] = static_cast<float>(sum);
    }
  });
  return 0;
}

// ---- BatchNorm on its moving statistics folded into the convolution before it ----
//
// One call per layer in place of MindSpore's sqrt, add, div, reshape, two muls and a sub: on the 52 layers
// of an eval forward those small ops cost more to dispatch than to compute. The same operations in the
// same order as that formula (correctly rounded sqrt and division; no fused multiply-add, hence the
// attribute), so the values are MindSpore's bit for bit.

}  // namespace

// folded[c, :] = w[c, :] * s, bias[c] = beta - mean * s, s = gamma / sqrt(var + eps), for c < channels (rows of
// `row` values): bn_fold's values, and those of the block passes that fold their own layers.
__attribute__((optimize("fp-contract=off"))) void fold_batch_norm(const float* w, int64_t channels, int64_t row,
                                                                  const float* gamma, const float* beta, const float* mean,
                                                                  const float* var, float eps, float* folded, float* bias) {
  for (int64_t ch = 0; ch < channels; ++ch) {
    const float scale = gamma[ch] / std::sqrt(var[ch] + eps);
    const float* src = w + ch * row;
    float* dst = folded + ch * row;
    for (int64_t i = 0; i < row; ++i) dst[i] = src[i] * scale;
    const float shift = mean[ch] * scale;
    bias[ch] = beta[ch] - shift;
  }
}

namespace {

// (w[C, rest...], gamma[C], beta[C], mean[C], var[C], eps_momentum[2]) -> (w * s per row, beta - mean * s).
int bn_fold(const Args& a) {
  if (a.nparam != 8 || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t c = a.shape(0)[0], row = a.shape(0)[1] * a.shape(0)[2] * a.shape(0)[3];
  for (int i = 1; i <= 4; ++i)
    if (!a.is_vector(i, c)) return 1;
  if (!a.is_vector(5, 2) || !a.is(6, c, a.shape(0)[1], a.shape(0)[2], a.shape(0)[3]) || !a.is_vector(7, c)) return 1;
  fold_batch_norm(a.in(0), c, row, a.in(1), a.in(2), a.in(3), a.in(4), a.in(5)[0], a.out(6), a.out(7));
  return 0;
}

// (dw'[C, rest...], db'[C], w, gamma, mean, var, eps_momentum[2]) -> (dw, dgamma[C]): with r = 1 / sqrt(var + eps),
// dw = dw' * s per row, dgamma = r (sum over the row of dw' w - mean db'). Row sums in double.
int bn_fold_grad(const Args& a) {
  if (a.nparam != 9 || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t c = a.shape(0)[0], row = a.shape(0)[1] * a.shape(0)[2] * a.shape(0)[3];
  if (!a.is_vector(1, c) || !a.is(2, c, a.shape(0)[1], a.shape(0)[2], a.shape(0)[3])) return 1;
  for (int i = 3; i <= 5; ++i)
    if (!a.is_vector(i, c)) return 1;
  if (!a.is_vector(6, 2) || !a.is(7, c, a.shape(0)[1], a.shape(0)[2], a.shape(0)[3]) || !a.is_vector(8, c)) return 1;
  const float *dfolded = a.in(0), *dbias = a.in(1), *w = a.in(2), *gamma = a.in(3), *mean = a.in(4), *var = a.in(5);
  const float eps = a.in(6)[0];
  float *dw = a.out(7), *dgamma = a.out(8);
  for (int64_t ch = 0; ch < c; ++ch) {
    const float root = std::sqrt(var[ch] + eps), scale = gamma[ch] / root;
    const float* g = dfolded + ch * row;
    const float* src = w + ch * row;
    float* dst = dw + ch * row;
    double dot = 0.0;
    for (int64_t i = 0; i < row; ++i) {
      dst[i] = g[i] * scale;
      dot += static_cast<double>(g[i]) * src[i];
    }
    dgamma[ch] = static_cast<float>((dot - static_cast<double>(mean[ch]) * dbias[ch]) / root);
  }
  return 0;
}

}  // namespace

MBV2_ENTRY(bn_fold, bn_fold(args))
MBV2_ENTRY(bn_fold_grad, bn_fold_grad(args))
MBV2_ENTRY(bn_train_forward, bn_train_forward(args, false))
MBV2_ENTRY(bn_relu6_train_forward, bn_train_forward(args, true))
MBV2_ENTRY(bn_train_grad, bn_train_grad(args, false))
MBV2_ENTRY(bn_relu6_train_grad, bn_train_grad(args, true))
MBV2_ENTRY(affine, affine_forward(args, false))
MBV2_ENTRY(affine_relu6, affine_forward(args, true))
MBV2_ENTRY(affine_grad, affine_grad(args, false))
MBV2_ENTRY(affine_relu6_grad, affine_grad(args, true))
MBV2_ENTRY(bias_grad, bias_grad(args, false))
MBV2_ENTRY(bias_relu6_grad, bias_grad(args, true))

}  // namespace mbv2
