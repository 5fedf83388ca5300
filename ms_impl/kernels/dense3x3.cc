// Dense 3x3 convolutions (groups = 1; padding 1, stride 1 or 2, fp32, NCHW): the stem of MobileNetV2.
//
// Entry points (inputs first, then the outputs; Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1):
//   dense_forward_s{1,2}     (x[N,Ci,H,W], w[Co,Ci,3,3]) -> y[N,Co,Ho,Wo]
//   dense_forward_bias_relu6_s{1,2} (x, w, b[Co])        -> y = min(max(conv + b, 0), 6)
//   dense_grad_input_s{1,2}  (dy, w, x)                  -> dx[N,Ci,H,W]
//   dense_grad_weight_s{1,2} (x, dy)                     -> dw[Co,Ci,3,3]
//
// The forward is a matrix product per output row on the register tile of common.h, its taps read in place
// from the padded planes (dense_forward). The input gradient scatters dy into a padded plane of the
// forward's layout and copies its interior out; the weight gradient is 9 dot products per plane pair.
// Layers with few input channels (the stem) are split over images, so an image's padded planes are read
// once while all output channels use them.
#include "common.h"

namespace mbv2 {
namespace {

// The padded input rows of a forward task, in floats: they stay in L2 while every output channel reads them.
constexpr int64_t WINDOW_FLOATS = 32 << 10;

// padded (+)= transpose correlation of dy with w (the input gradient, before unpadding).
void scatter_plane(const Geometry& g, const float* __restrict__ dy, const float* w, float* padded) {
  const int64_t wo = g.out_width;
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
    const float* __restrict__ d = dy + oh * wo;
    for (int kh = 0; kh < 3; ++kh) {
      float* row = padded + (g.stride * oh + kh) * g.pitch;
      // One loop per tap: for stride 1 the three runs overlap, so they must not share a loop.
      for (int kw = 0; kw < 3; ++kw) {
        float* __restrict__ a = row + g.tap(kw);
        const float wk = w[kh * 3 + kw];
#pragma omp simd
        for (int64_t ow = 0; ow < wo; ++ow) a[ow] += wk * d[ow];
      }
    }
  }
}

// dx (H x W) (+)= interior of a padded plane.
void unpad_plane(const Geometry& g, const float* __restrict__ padded, float* __restrict__ dx, bool accumulate) {
  for (int64_t h = 0; h < g.height; ++h) {
    const float* __restrict__ row = padded + (h + 1) * g.pitch;
    float* __restrict__ out = dx + h * g.width;
    if (g.stride == 1) {
      if (accumulate) {
        for (int64_t iw = 0; iw < g.width; ++iw) out[iw] += row[iw + 1];
      } else {
        std::memcpy(out, row + 1, sizeof(float) * g.width);
      }
    } else {
      // Input column iw sits at padded column iw + 1: even iw in the odd half, odd iw in the even half.
      const float* __restrict__ odd = row + g.even_len;
      if (accumulate) {
        for (int64_t iw = 0; iw < g.width; iw += 2) out[iw] += odd[iw / 2];
        for (int64_t iw = 1; iw < g.width; iw += 2) out[iw] += row[(iw + 1) / 2];
      } else {
        for (int64_t iw = 0; iw < g.width; iw += 2) out[iw] = odd[iw / 2];
        for (int64_t iw = 1; iw < g.width; iw += 2) out[iw] = row[(iw + 1) / 2];
      }
    }
  }
}

// Pads every (image, channel) plane of x once: the dense kernels reuse each many times.
std::vector<float> pad_all(const Geometry& g, const float* x, int64_t planes) {
  std::vector<float> padded(planes * g.plane);
  const int64_t in_plane = g.height * g.width;
  parallel_for(planes, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) pad_plane(g, x + p * in_plane, padded.data() + p * g.plane);
  });
  return padded;
}

// (x, w[, bias]) -> y; with `fused`, y = relu6(conv + bias[co]). A matrix product per output row: A = the
// weights packed as ci*9 by co (pack_rows), B = NR consecutive outputs of the row, its ci*9 steps read in
// place from the padded input rows (in Geometry's layout every tap of a row is one contiguous run), so each
// input value meets MR output channels from registers. Tasks: (image, band of output rows); a task pads
// the input rows of its band, which stay in cache.
int dense_forward(const Args& a, int stride, bool fused) {
  if (a.nparam != (fused ? 4 : 3) || !a.is(0, -1, -1, -1, -1) || !a.is(1, -1, -1, 3, 3)) return 1;
  const int64_t n = a.shape(0)[0], ci = a.shape(0)[1], co = a.shape(1)[0];
  const Geometry g(a.shape(0)[2], a.shape(0)[3], stride);
  const int y_index = fused ? 3 : 2;
  if (a.shape(1)[1] != ci || !a.is(y_index, n, co, g.out_height, g.out_width)) return 1;
  if (fused && !a.is_vector(2, co)) return 1;
  if (ci == 0 || g.height == 0 || g.width == 0) return 1;  // no input to convolve (and no window to size)
  const int64_t depth = ci * 9, panels = (co + MR - 1) / MR;
  const std::vector<float> packed = pack_rows(a.in(1), co, depth, depth, 1);
  const float* x = a.in(0);
  const float* bias = fused ? a.in(2) : nullptr;
  float* y = a.out(y_index);
  const int64_t ho = g.out_height, wo = g.out_width;
  // Bands of output rows whose padded input rows stay in L2 (WINDOW_FLOATS), and enough tasks for every thread.
  int64_t band_rows = ho;
  // (rows compared with WINDOW_FLOATS / floats per row: the product of a huge plane's sizes would overflow)
  while (band_rows > 1 && stride * (band_rows - 1) + 3 > WINDOW_FLOATS / (ci * g.pitch)) band_rows = (band_rows + 1) / 2;
  while (band_rows > 1 && n * ((ho + band_rows - 1) / band_rows) < 2 * threads_now()) band_rows = (band_rows + 1) / 2;
  const int64_t bands = (ho + band_rows - 1) / band_rows, window_rows = stride * (band_rows - 1) + 3;
  parallel_for(n * bands, [&](int64_t begin, int64_t end) {
    // The band's padded rows of each input channel; + NR: a row's last, partial tile reads up to NR floats
    // past the row (those lanes are never stored).
    float* window = scratch(ci * window_rows * g.pitch + NR);
    std::vector<const float*> taps(depth);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / bands, oh_begin = task % bands * band_rows, oh_end = std::min(ho, oh_begin + band_rows);
      const int64_t first = stride * oh_begin, last = stride * (oh_end - 1) + 3;  // padded rows [first, last)
      for (int64_t i = 0; i < ci; ++i)
        for (int64_t r = first; r < last; ++r) {
          float* row = window + (i * window_rows + r - first) * g.pitch;
          if (r == 0 || r == g.height + 1) {
            std::memset(row, 0, sizeof(float) * g.pitch);
          } else {
            pad_row_with(g, x + ((b * ci + i) * g.height + r - 1) * g.width, row, [](float v) { return v; });
          }
        }
      for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
        for (int64_t i = 0; i < ci; ++i)
          for (int kh = 0; kh < 3; ++kh)
            for (int kw = 0; kw < 3; ++kw)
              taps[(i * 3 + kh) * 3 + kw] = window + (i * window_rows + stride * oh + kh - first) * g.pitch + g.tap(kw);
        for (int64_t ow0 = 0; ow0 < wo; ow0 += NR) {
          const int64_t valid = std::min<int64_t>(NR, wo - ow0);
          for (int64_t mb = 0; mb < panels; ++mb) {
            const int64_t m0 = mb * MR;
            const int valid_rows = static_cast<int>(std::min<int64_t>(MR, co - m0));
            Tile tile;
            tile_product_rows(packed.data() + mb * depth * MR, taps.data(), ow0, depth, tile);
#pragma GCC unroll 16
            for (int r = 0; r < MR; ++r) {
              if (r >= valid_rows) break;
              vecf lo = tile.acc[r][0], hi = tile.acc[r][1];
              bias_relu6_epilogue(lo, hi, fused ? bias + m0 + r : nullptr, fused);
              store_tile_row(y + ((b * co + m0 + r) * ho + oh) * wo + ow0, lo, hi, valid, nullptr);
            }
          }
        }
      }
    }
  });
  return 0;
}

int dense_grad_input(const Args& a, int stride) {
  if (a.nparam != 4 || !a.is(2, -1, -1, -1, -1) || !a.is(1, -1, -1, 3, 3)) return 1;
  const int64_t n = a.shape(2)[0], ci = a.shape(2)[1], co = a.shape(1)[0];
  const Geometry g(a.shape(2)[2], a.shape(2)[3], stride);
  if (a.shape(1)[1] != ci || !a.is(0, n, co, g.out_height, g.out_width) || !a.is(3, n, ci, g.height, g.width))
    return 1;
  const float* dy = a.in(0);
  const float* w = a.in(1);
  float* dx = a.out(3);
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  parallel_for(n * ci, [&](int64_t begin, int64_t end) {
    float* padded = scratch(g.plane);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / ci, i = p % ci;
      std::fill(padded, padded + g.plane, 0.0f);
      for (int64_t o = 0; o < co; ++o)
        scatter_plane(g, dy + (b * co + o) * out_plane, w + (o * ci + i) * 9, padded);
      unpad_plane(g, padded, dx + p * in_plane, false);
    }
  });
  return 0;
}

int dense_grad_weight(const Args& a, int stride) {
  if (a.nparam != 3 || !a.is(0, -1, -1, -1, -1) || !a.is(1, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], ci = a.shape(0)[1], co = a.shape(1)[1];
  const Geometry g(a.shape(0)[2], a.shape(0)[3], stride);
  if (!a.is(1, n, co, g.out_height, g.out_width) || !a.is(2, co, ci, 3, 3)) return 1;
  const float* x = a.in(0);
  const float* dy = a.in(1);
  float* dw = a.out(2);
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  const int64_t taps = co * ci * 9;
  if (n * taps <= (int64_t{1} << 22) && ci * g.plane <= (int64_t{1} << 20)) {
    // Few weights (the stem): split over images, each image's planes read once (its ci padded planes stay
    // in cache while every output channel meets them); one double sum per image and weight, added up
    // in image order afterwards, so the result does not depend on the thread count.
    std::vector<double> partial(n * taps, 0.0);
    parallel_for(n, [&](int64_t begin, int64_t end) {
      float* padded = scratch(ci * g.plane);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t i = 0; i < ci; ++i) pad_plane(g, x + (b * ci + i) * in_plane, padded + i * g.plane);
        double* acc = partial.data() + b * taps;
        for (int64_t o = 0; o < co; ++o)
          for (int64_t i = 0; i < ci; ++i)
            weight_grad_plane(g, padded + i * g.plane, dy + (b * co + o) * out_plane, acc + (o * ci + i) * 9);
      }
    });
    for (int64_t t = 0; t < taps; ++t) {
      double sum = 0.0;
      for (int64_t b = 0; b < n; ++b) sum += partial[b * taps + t];
      dw[t] = static_cast<float>(sum);
    }
    return 0;
  }
  const std::vector<float> padded = pad_all(g, x, n * ci);
  parallel_for(co * ci, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t o = p / ci, i = p % ci;
      double acc[9] = {0};
      for (int64_t b = 0; b < n; ++b)
        weight_grad_plane(g, padded.data() + (b * ci + i) * g.plane, dy + (b * co + o) * out_plane, acc);
      for (int k = 0; k < 9; ++k) dw[p * 9 + k] = static_cast<float>(acc[k]);
    }
  });
  return 0;
}

}  // namespace

MBV2_ENTRY(dense_forward_s1, dense_forward(args, 1, false))
MBV2_ENTRY(dense_forward_s2, dense_forward(args, 2, false))
MBV2_ENTRY(dense_forward_bias_relu6_s1, dense_forward(args, 1, true))
MBV2_ENTRY(dense_forward_bias_relu6_s2, dense_forward(args, 2, true))
MBV2_ENTRY(dense_grad_input_s1, dense_grad_input(args, 1))
MBV2_ENTRY(dense_grad_input_s2, dense_grad_input(args, 2))
MBV2_ENTRY(dense_grad_weight_s1, dense_grad_weight(args, 1))
MBV2_ENTRY(dense_grad_weight_s2, dense_grad_weight(args, 2))

}  // namespace mbv2
