// Depthwise 3x3 convolutions (padding 1, stride 1 or 2, fp32, NCHW): channel c of x meets channel c of w.
//
// Entry points (inputs first, then the outputs; Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1):
//   dw_forward_s{1,2}    (x[N,C,H,W], w[C,1,3,3])        -> y[N,C,Ho,Wo]
//   dw_forward_bias_relu6_s{1,2} (x, w, b[C])            -> y = min(max(conv + b, 0), 6)
//   dw_grad_input_s{1,2} (dy[N,C,Ho,Wo], w, x)           -> dx[N,C,H,W]   (x only for its shape)
//   dw_grad_weight_s{1,2}(x, dy)                         -> dw[C,1,3,3]
//   dw_bias_relu6_grad_s{1,2} (dy, y, x, w)              -> dx, dw, db[C]: the whole backward of
//                        dw_forward_bias_relu6 (y its output), in one pass per plane
//   dw_forward_relu6_input_s{1,2} (z, a[C], w, b[C])      -> y = min(max(conv(x, w) + b, 0), 6) with
//                        x = min(max(z + a, 0), 6): the expanding 1x1 layer's folded bias and ReLU6 applied
//                        where the depthwise layer reads its output z (which is stored without them)
//   dw_relu6_input_grad_s{1,2} (dy, y, z, a, w)           -> dz, dw, db[C], da[C]: its whole backward
// The bias_relu6 forms serve layers with a BatchNorm on its moving statistics folded into w and b
// (inference, and training with frozen BatchNorm).
//
// Gradients w.r.t. the input: at stride 1 the forward pass of dy with the flipped kernel; at stride 2
// gathered row by row (gather_plane_s2). Gradients w.r.t. the weight are 9 dot products per plane.
#include "common.h"

namespace mbv2 {
namespace {

// Stride 1: acc[9] += the 9 dot products of dy with the shifted taps of a padded plane, as 9 flat dot
// products over the whole plane: dy is first laid out with the padded plane's pitch (zeros in the
// columns past Wo), so tap (kh, kw) of element j is padded[j + kh * pitch + kw] for every j. One
// vectorized loop per plane, however narrow the rows (7x7 planes too), and one reduction per plane.
// `work`: Ho * pitch floats.
void weight_grad_plane_flat(const Geometry& g, const float* __restrict__ padded, const float* __restrict__ dy,
                            double* acc, float* __restrict__ work) {
  const int64_t wo = g.out_width, pitch = g.pitch, len = g.out_height * pitch;
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
    std::memcpy(work + oh * pitch, dy + oh * wo, sizeof(float) * wo);
    std::memset(work + oh * pitch + wo, 0, sizeof(float) * (pitch - wo));
  }
  const float* __restrict__ a0 = padded;
  const float* __restrict__ a1 = padded + 1;
  const float* __restrict__ a2 = padded + 2;
  const float* __restrict__ b0 = padded + pitch;
  const float* __restrict__ b1 = padded + pitch + 1;
  const float* __restrict__ b2 = padded + pitch + 2;
  const float* __restrict__ c0 = padded + 2 * pitch;
  const float* __restrict__ c1 = padded + 2 * pitch + 1;
  const float* __restrict__ c2 = padded + 2 * pitch + 2;
  const float* __restrict__ d = work;
  // Runs of 16 rows summed in float, then in double (large planes stay accurate).
  const int64_t run = 16 * pitch;
  for (int64_t start = 0; start < len; start += run) {
    const int64_t stop = std::min(len, start + run);
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
    for (int64_t j = start; j < stop; ++j) {
      const float v = d[j];
      s0 += a0[j] * v;
      s1 += a1[j] * v;
      s2 += a2[j] * v;
      s3 += b0[j] * v;
      s4 += b1[j] * v;
      s5 += b2[j] * v;
      s6 += c0[j] * v;
      s7 += c1[j] * v;
      s8 += c2[j] * v;
    }
    acc[0] += s0;
    acc[1] += s1;
    acc[2] += s2;
    acc[3] += s3;
    acc[4] += s4;
    acc[5] += s5;
    acc[6] += s6;
    acc[7] += s7;
    acc[8] += s8;
  }
}

// x = min(max(z + bias, 0), 6) over one plane, into another: the same values as the 1x1 kernel's
// bias + ReLU6 epilogue (one add, then the clamps), so moving it here changes no result.
void bias_relu6_copy(const float* __restrict__ z, int64_t count, float bias, float* __restrict__ x) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) x[i] = std::min(std::max(z[i] + bias, 0.0f), 6.0f);
}

// y = conv(x, w), per (image, channel) plane (split over planes); with `bias`, y = relu6(conv + bias[c]).
// With `in_bias` too, `input` is the expansion's product z and x = relu6(z + in_bias), applied where
// each plane is padded (dw_forward_relu6_input); without, `input` is x.
void depthwise_forward(const Geometry& g, int64_t n, int64_t c, const float* input, const float* in_bias,
                       const float* w, const float* bias, float* y) {
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  parallel_for(n * c, [&](int64_t begin, int64_t end) {
    float* padded = scratch(g.plane);
    for (int64_t p = begin; p < end; ++p) {
      if (in_bias != nullptr) {
        pad_plane_bias_relu6(g, input + p * in_plane, in_bias[p % c], padded);
      } else {
        pad_plane(g, input + p * in_plane, padded);
      }
      forward_plane(g, padded, w + (p % c) * 9, y + p * out_plane);
      if (bias != nullptr) bias_relu6_plane(y + p * out_plane, out_plane, bias[p % c]);
    }
  });
}

// (x, w[, bias]) -> y; with `fused`, y = relu6(conv + bias[c]).
int dw_forward(const Args& a, int stride, bool fused) {
  if (a.nparam != (fused ? 4 : 3) || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], c = a.shape(0)[1];
  const Geometry g(a.shape(0)[2], a.shape(0)[3], stride);
  const int y_index = fused ? 3 : 2;
  if (!a.is(1, c, 1, 3, 3) || !a.is(y_index, n, c, g.out_height, g.out_width)) return 1;
  if (fused && !a.is_vector(2, c)) return 1;
  depthwise_forward(g, n, c, a.in(0), nullptr, a.in(1), fused ? a.in(2) : nullptr, a.out(y_index));
  return 0;
}

// dx (H x W) = the stride-2 input gradient of dy (Ho x Wo) through the 3x3 kernel w, gathered: input
// row ih = 2 oh + kh - 1 meets dy row (ih + 1 - kh) / 2, so an even row takes kernel row 1 of dy row
// ih / 2, an odd row kernel rows 0 and 2 of dy rows ih / 2 + 1 and ih / 2; columns alike. Each dx
// element is written once (no read-modify-write passes). `work`: (Ho + 1) (Wo + 1) + 2 (Wo + 1) floats.
void gather_plane_s2(const Geometry& g, const float* __restrict__ dy, const float* w, float* __restrict__ dx,
                     float* work) {
  const int64_t ho = g.out_height, wo = g.out_width, pitch = wo + 1;
  float* __restrict__ rows = work;  // dy with a zero row and a zero column appended
  float* __restrict__ even = work + (ho + 1) * pitch;
  float* __restrict__ odd = even + pitch;
  for (int64_t oh = 0; oh < ho; ++oh) {
    std::memcpy(rows + oh * pitch, dy + oh * wo, sizeof(float) * wo);
    rows[oh * pitch + wo] = 0.0f;
  }
  std::memset(rows + ho * pitch, 0, sizeof(float) * pitch);
  const int64_t evens = (g.width + 1) / 2, odds = g.width / 2;
  for (int64_t ih = 0; ih < g.height; ++ih) {
    const int64_t r = ih / 2;
    if (ih % 2 == 0) {
      const float* __restrict__ d = rows + r * pitch;
      const float w3 = w[3], w4 = w[4], w5 = w[5];
#pragma omp simd
      for (int64_t m = 0; m < evens; ++m) even[m] = w4 * d[m];
#pragma omp simd
      for (int64_t m = 0; m < odds; ++m) odd[m] = w3 * d[m + 1] + w5 * d[m];
    } else {
      const float* __restrict__ d0 = rows + (r + 1) * pitch;  // kernel row 0
      const float* __restrict__ d2 = rows + r * pitch;        // kernel row 2
      const float w0 = w[0], w1 = w[1], w2 = w[2], w6 = w[6], w7 = w[7], w8 = w[8];
#pragma omp simd
      for (int64_t m = 0; m < evens; ++m) even[m] = w1 * d0[m] + w7 * d2[m];
#pragma omp simd
      for (int64_t m = 0; m < odds; ++m) odd[m] = w0 * d0[m + 1] + w2 * d0[m] + w6 * d2[m + 1] + w8 * d2[m];
    }
    float* __restrict__ out = dx + ih * g.width;
    for (int64_t m = 0; m < odds; ++m) {
      out[2 * m] = even[m];
      out[2 * m + 1] = odd[m];
    }
    if (evens > odds) out[2 * odds] = even[odds];
  }
}

int dw_grad_input(const Args& a, int stride) {
  if (a.nparam != 4 || !a.is(2, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(2)[0], c = a.shape(2)[1];
  const Geometry g(a.shape(2)[2], a.shape(2)[3], stride);
  if (!a.is(0, n, c, g.out_height, g.out_width) || !a.is(1, c, 1, 3, 3) || !a.is(3, n, c, g.height, g.width))
    return 1;
  const float* dy = a.in(0);
  const float* w = a.in(1);
  float* dx = a.out(3);
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  const int64_t work = std::max(g.plane, (g.out_height + 3) * (g.out_width + 1));
  parallel_for(n * c, [&](int64_t begin, int64_t end) {
    float* padded = scratch(work);
    for (int64_t p = begin; p < end; ++p) {
      const float* wp = w + (p % c) * 9;
      if (stride == 1) {
        // Stride 1: the input gradient is the forward pass of dy with the kernel flipped (one pass per row).
        float flipped[9];
        for (int k = 0; k < 9; ++k) flipped[k] = wp[8 - k];
        pad_plane(g, dy + p * out_plane, padded);
        forward_plane(g, padded, flipped, dx + p * in_plane);
      } else {
        gather_plane_s2(g, dy + p * out_plane, wp, dx + p * in_plane, padded);
      }
    }
  });
  return 0;
}

int dw_grad_weight(const Args& a, int stride) {
  if (a.nparam != 3 || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], c = a.shape(0)[1];
  const Geometry g(a.shape(0)[2], a.shape(0)[3], stride);
  if (!a.is(1, n, c, g.out_height, g.out_width) || !a.is(2, c, 1, 3, 3)) return 1;
  const float* x = a.in(0);
  const float* dy = a.in(1);
  float* dw = a.out(2);
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  // Split over channels: each worker owns whole rows of dw, no reduction across workers.
  parallel_for(c, [&](int64_t begin, int64_t end) {
    float* padded = scratch(g.plane + g.out_height * g.pitch);
    float* work = padded + g.plane;
    for (int64_t ch = begin; ch < end; ++ch) {
      double acc[9] = {0};
      for (int64_t b = 0; b < n; ++b) {
        const int64_t p = b * c + ch;
        pad_plane(g, x + p * in_plane, padded);
        if (stride == 1) {
          weight_grad_plane_flat(g, padded, dy + p * out_plane, acc, work);
        } else {
          weight_grad_plane(g, padded, dy + p * out_plane, acc);
        }
      }
      for (int k = 0; k < 9; ++k) dw[ch * 9 + k] = static_cast<float>(acc[k]);
    }
  });
  return 0;
}

// The backward of a depthwise layer with its folded BatchNorm and ReLU6 (training with frozen
// BatchNorm), split over channels: g = dy where 0 < y < 6, dw = the weight gradient of (x, g),
// db = sum of g, and the input gradient of g into dx. Without `in_bias`, `input` is the layer's input
// x and dx its gradient (dw_bias_relu6_grad). With it, `input` is the expansion's product z, the layer's
// input is x = relu6(z + in_bias), and dx is the gradient of z: the input gradient gated where
// 0 < x < 6, summed into da (dw_relu6_input_grad). Per channel and image, g, x and the ungated input
// gradient live in scratch planes only; dy, y and the input are read once and dx written once. Every
// sum runs in the order of the separate kernels (dw_grad_input, dw_grad_weight, bias_relu6_grad), so
// the results are theirs bit for bit.
void depthwise_bias_relu6_backward(const Geometry& g, int64_t n, int64_t c, const float* dy, const float* y,
                                   const float* input, const float* in_bias, const float* w, float* dx, float* dw,
                                   float* db, float* da) {
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  const int64_t grad_work = std::max(g.plane, (g.out_height + 3) * (g.out_width + 1));
  parallel_for(c, [&](int64_t begin, int64_t end) {
    float* gated = scratch(out_plane + grad_work + g.plane + g.out_height * g.pitch + (in_bias != nullptr ? 2 * in_plane : 0));
    float* grad_padded = gated + out_plane;
    float* x_padded = grad_padded + grad_work;
    float* flat = x_padded + g.plane;
    float* activated = in_bias != nullptr ? flat + g.out_height * g.pitch : nullptr;  // with in_bias only
    float* ungated = in_bias != nullptr ? activated + in_plane : nullptr;
    for (int64_t ch = begin; ch < end; ++ch) {
      const float* wp = w + ch * 9;
      float flipped[9];
      for (int k = 0; k < 9; ++k) flipped[k] = wp[8 - k];
      double acc[9] = {0};
      double bias_sum = 0.0, in_bias_sum = 0.0;
      for (int64_t b = 0; b < n; ++b) {
        const int64_t p = b * c + ch;
        relu6_gate_plane(dy + p * out_plane, y + p * out_plane, gated, out_plane, bias_sum);
        float* input_grad = in_bias != nullptr ? ungated : dx + p * in_plane;
        if (g.stride == 1) {
          pad_plane(g, gated, grad_padded);
          forward_plane(g, grad_padded, flipped, input_grad);
        } else {
          gather_plane_s2(g, gated, wp, input_grad, grad_padded);
        }
        const float* x = input + p * in_plane;
        if (in_bias != nullptr) {
          bias_relu6_copy(x, in_plane, in_bias[ch], activated);
          relu6_gate_plane(ungated, activated, dx + p * in_plane, in_plane, in_bias_sum);
          x = activated;
        }
        pad_plane(g, x, x_padded);
        if (g.stride == 1) {
          weight_grad_plane_flat(g, x_padded, gated, acc, flat);
        } else {
          weight_grad_plane(g, x_padded, gated, acc);
        }
      }
      for (int k = 0; k < 9; ++k) dw[ch * 9 + k] = static_cast<float>(acc[k]);
      db[ch] = static_cast<float>(bias_sum);
      if (in_bias != nullptr) da[ch] = static_cast<float>(in_bias_sum);
    }
  });
}

// (dy, y, x, w) -> (dx, dw, db[C]): the whole backward of dw_forward_bias_relu6 (y its output).
int dw_bias_relu6_grad(const Args& a, int stride) {
  if (a.nparam != 7 || !a.is(2, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(2)[0], c = a.shape(2)[1];
  const Geometry g(a.shape(2)[2], a.shape(2)[3], stride);
  if (!a.is(0, n, c, g.out_height, g.out_width) || !a.is(1, n, c, g.out_height, g.out_width) ||
      !a.is(3, c, 1, 3, 3) || !a.is(4, n, c, g.height, g.width) || !a.is(5, c, 1, 3, 3) || !a.is_vector(6, c))
    return 1;
  depthwise_bias_relu6_backward(g, n, c, a.in(0), a.in(1), a.in(2), nullptr, a.in(3), a.out(4), a.out(5), a.out(6),
                                nullptr);
  return 0;
}

// The depthwise layer of an inverted residual block with the expanding 1x1 layer's folded bias and
// ReLU6 moved in (training with frozen BatchNorm, InvertedResidual.expanded_depthwise in ms_impl/mobilenetv2.py):
// (z, a, w, b) -> y = relu6(conv(x, w) + b), x = relu6(z + a). The 1x1 layer stores its product z
// alone; x exists per plane only, where this layer pads its input, and its backward (above) gates the
// input gradient itself, so the block's widest tensor is no longer masked, written and read back by a
// bias_relu6_grad pass of its own. The values are those of the two layers' separate kernels.
int dw_forward_relu6_input(const Args& a, int stride) {
  if (a.nparam != 5 || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], c = a.shape(0)[1];
  const Geometry g(a.shape(0)[2], a.shape(0)[3], stride);
  if (!a.is_vector(1, c) || !a.is(2, c, 1, 3, 3) || !a.is_vector(3, c) || !a.is(4, n, c, g.out_height, g.out_width))
    return 1;
  depthwise_forward(g, n, c, a.in(0), a.in(1), a.in(2), a.in(3), a.out(4));
  return 0;
}

// (dy, y, z, a, w) -> (dz, dw, db[C], da[C]): the whole backward of dw_forward_relu6_input.
int dw_relu6_input_grad(const Args& a, int stride) {
  if (a.nparam != 9 || !a.is(2, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(2)[0], c = a.shape(2)[1];
  const Geometry g(a.shape(2)[2], a.shape(2)[3], stride);
  if (!a.is(0, n, c, g.out_height, g.out_width) || !a.is(1, n, c, g.out_height, g.out_width) || !a.is_vector(3, c) ||
      !a.is(4, c, 1, 3, 3) || !a.is(5, n, c, g.height, g.width) || !a.is(6, c, 1, 3, 3) || !a.is_vector(7, c) ||
      !a.is_vector(8, c))
    return 1;
  depthwise_bias_relu6_backward(g, n, c, a.in(0), a.in(1), a.in(2), a.in(3), a.in(4), a.out(5), a.out(6), a.out(7),
                                a.out(8));
  return 0;
}

}  // namespace

MBV2_ENTRY(dw_forward_s1, dw_forward(args, 1, false))
MBV2_ENTRY(dw_forward_s2, dw_forward(args, 2, false))
MBV2_ENTRY(dw_forward_bias_relu6_s1, dw_forward(args, 1, true))
MBV2_ENTRY(dw_forward_bias_relu6_s2, dw_forward(args, 2, true))
MBV2_ENTRY(dw_grad_input_s1, dw_grad_input(args, 1))
MBV2_ENTRY(dw_grad_input_s2, dw_grad_input(args, 2))
MBV2_ENTRY(dw_grad_weight_s1, dw_grad_weight(args, 1))
MBV2_ENTRY(dw_grad_weight_s2, dw_grad_weight(args, 2))
MBV2_ENTRY(dw_bias_relu6_grad_s1, dw_bias_relu6_grad(args, 1))
MBV2_ENTRY(dw_bias_relu6_grad_s2, dw_bias_relu6_grad(args, 2))
MBV2_ENTRY(dw_forward_relu6_input_s1, dw_forward_relu6_input(args, 1))
MBV2_ENTRY(dw_forward_relu6_input_s2, dw_forward_relu6_input(args, 2))
MBV2_ENTRY(dw_relu6_input_grad_s1, dw_relu6_input_grad(args, 1))
MBV2_ENTRY(dw_relu6_input_grad_s2, dw_relu6_input_grad(args, 2))

}  // namespace mbv2
