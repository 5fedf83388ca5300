// A block's expansion and depthwise layers in one pass, and the whole inverted residual block in one pass
// (inference, every BatchNorm folded; fp32, NCHW).
//
// Entry points (inputs first, then the outputs; Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1):
//   pw_dw_forward_s{1,2}      (x[N,K,H,W], we[M,K,1,1], be[M], wd[M,1,3,3], bd[M]) -> y[N,M,Ho,Wo] =
//                             relu6(dwconv(relu6(conv1x1(x, we) + be), wd) + bd), the expansion never stored
//   block_forward_s{1,2}      (x, we, be, wd, bd, wp[P,M,1,1], bp[P]) -> y[N,P,Ho,Wo] =
//                             conv1x1(pw_dw_forward(x, we, be, wd, bd), wp) + bp, neither hidden tensor stored
//   block_forward_residual_s1 (the same, P = K) -> y = (conv1x1(...) + bp) + x
//   dw_block_forward_s{1,2}, dw_block_forward_residual_s1  (x, wd[K,1,3,3], bd[K], wp[P,K,1,1], bp[P]) -> y:
//                             the same for a block without an expansion (its depthwise layer reads x)
//   block_forward_bn_s{1,2}, block_forward_bn_residual_s1, dw_block_forward_bn_{s1,s2,residual_s1}
//                             (x, then per layer: w, gamma, beta, mean, var, eps_momentum[2]) -> y: the same
//                             blocks with their BatchNorms (moving statistics) folded inside the call, as bn_fold
#include "common.h"

namespace mbv2 {
namespace {

// A block's expanding 1x1 layer writes its widest tensor (96 channels at 112x112 in the first blocks) for
// the depthwise layer to read back: twice the tensor through memory. Here each task (one image, a group of
// the expansion's channels) computes the expansion a band of input rows at a time into a window of padded
// rows that stays in cache (L2/L3: WINDOW_FLOATS), and the depthwise layer consumes the window at once. Every value is computed
// as by pw_forward_bias_relu6 then dw_forward_bias_relu6 (the same tile products and epilogue, the same
// depthwise rows), so the output is theirs bit for bit.

// A task's window and expansion rows, in floats: steps of many rows (past L2: fewer, longer products and
// depthwise runs measured faster than windows within L2, 96K floats, which were slower than two passes).
constexpr int64_t WINDOW_FLOATS = 256 << 10;

// Rows of panels [p0, p1) of the packed A times `columns` columns of packed B panels ([tile][depth][NR]),
// + bias (+ ReLU6 with `relu6`) (pointwise_product's epilogue), each tile row handed to
// store(row, first column, lo, hi, valid columns).
template <typename Store>
void panel_product_to(const float* a, int64_t rows, int64_t depth, const float* panels, int64_t columns, int64_t p0,
                      int64_t p1, const float* bias, bool relu6, Store store) {
  const int64_t tiles = (columns + NR - 1) / NR;
  for (int64_t mb = p0; mb < p1; ++mb) {
    const int64_t m0 = mb * MR;
    const int valid_rows = static_cast<int>(std::min<int64_t>(MR, rows - m0));
    for (int64_t t = 0; t < tiles; ++t) {
      Tile tile;
      tile_product(a + mb * depth * MR, panels + t * depth * NR, depth, tile);
      const int64_t c0 = t * NR, valid = std::min<int64_t>(NR, columns - c0);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        if (r >= valid_rows) break;
        vecf lo = tile.acc[r][0], hi = tile.acc[r][1];
        bias_relu6_epilogue(lo, hi, bias + m0 + r, relu6);
        store(m0 + r, c0, lo, hi, valid);
      }
    }
  }
}

// panel_product_to storing NCHW (+ residual, laid out as out): out[(r - p0 MR) * out_stride + col].
void panel_product(const float* a, int64_t rows, int64_t depth, const float* panels, int64_t columns, int64_t p0,
                   int64_t p1, const float* bias, bool relu6, float* out, int64_t out_stride, const float* residual) {
  panel_product_to(a, rows, depth, panels, columns, p0, p1, bias, relu6,
                   [=](int64_t row, int64_t col, vecf lo, vecf hi, int64_t valid) {
                     const int64_t offset = (row - p0 * MR) * out_stride + col;
                     store_tile_row(out + offset, lo, hi, valid, residual != nullptr ? residual + offset : nullptr);
                   });
}

// The B panels of columns [col0, col1) of one image's X (depth x pixels), ceil((col1 - col0) / NR) * depth * NR
// floats at `panels`, zero past col1.
void pack_columns(const float* x, int64_t depth, int64_t pixels, int64_t col0, int64_t col1, float* panels) {
  const int64_t tiles = (col1 - col0 + NR - 1) / NR;
  for (int64_t t = 0; t < tiles; ++t) {
    float* panel = panels + t * depth * NR;
    const int64_t c0 = col0 + t * NR;
    if (c0 + NR <= col1) {
      for (int64_t k = 0; k < depth; ++k) {
        store(panel + k * NR, load(x + k * pixels + c0));
        store(panel + k * NR + VEC, load(x + k * pixels + c0 + VEC));
      }
    } else {
      for (int64_t k = 0; k < depth; ++k)
        for (int64_t j = 0; j < NR; ++j) panel[k * NR + j] = c0 + j < col1 ? x[k * pixels + c0 + j] : 0.0f;
    }
  }
}

// Rows of panels [p0, p1) of the packed A times columns [col0, col1) of one image's X (depth x pixels),
// + bias (+ ReLU6 with `relu6`) (+ residual, laid out as out) (pointwise_product's epilogue):
// out[(r - p0 MR) * out_stride + col - col0]. `panels`: scratch for the B panels of the columns
// (pack_columns).
void pointwise_columns(const float* a, int64_t rows, int64_t depth, const float* x, int64_t pixels, int64_t col0,
                       int64_t col1, int64_t p0, int64_t p1, const float* bias, bool relu6, float* out,
                       int64_t out_stride, const float* residual, float* panels) {
  pack_columns(x, depth, pixels, col0, col1, panels);
  panel_product(a, rows, depth, panels, col1 - col0, p0, p1, bias, relu6, out, out_stride, residual);
}

// ---- the late blocks in a channel-blocked layout ----
//
// Where the planes are small (28x28 and below in MobileNetV2), the pass above pays per plane and per row: a
// padded copy of every channel's plane, rows of 7 or 14 pixels that fill no whole vector, a 49-pixel image
// that leaves a quarter of its last 16-pixel tile empty. There the block runs with channels in the vector
// (NR channels per group), as ONNX Runtime and OpenVINO run these layers: the expansion's tile is MR pixels x
// NR channels, written straight into a zero-bordered window of the image, [group][padded pixel][NR]; the
// depthwise layer sums 9 taps of whole channel vectors per output pixel into the hidden tensor, [pixel][channel];
// the projection's tile is MR of those pixels (its A rows read in place) x NR output channels, stored NCHW.
// Every value is computed with the same operations in the same order as the NCHW path (the products over the
// same depth in the same order, the 9 taps in the same order, the same bias and ReLU6), so the output is the
// same bit for bit.

// Output pixels per image at most for the channel-blocked form (28x28: measured equal at 28x28 with stride 1,
// 15% faster from 56x56 at stride 2, slower at 56x56).
constexpr int64_t BLOCKED_MAX_PIXELS = 784;

// Row panels of B = W^T for a 1x1 layer's weights w[out][depth]: [tile of NR outputs][depth][NR], zero past
// `out` (the projection's B panels, or the expansion's, in the channel-blocked form).
std::vector<float> pack_transposed(const float* w, int64_t out, int64_t depth) {
  const int64_t tiles = (out + NR - 1) / NR;
  std::vector<float> panels(tiles * depth * NR, 0.0f);
  for (int64_t c = 0; c < out; ++c)
    for (int64_t j = 0; j < depth; ++j) panels[((c / NR) * depth + j) * NR + c % NR] = w[c * depth + j];
  return panels;
}

#if defined(MBV2_AVX2_INTRINSICS)
// r[i] = element i of each of 8 rows -> r[j] = row j's 8 elements: the 8 x 8 transpose of AVX2 registers.
inline void transpose8(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#endif

// A tile of MR pixels (rows) x NR channels (columns) + bias[channel], stored NCHW: out[(c0 + j) * pixels + p0 + r]
// for r < rows, j < channels, each plus skip at the same place when given (the residual). The same values as
// store_tile_row's, stored transposed.
inline void store_transposed_tile(const Tile& tile, const float* bias, int64_t pixels, int64_t p0, int64_t c0,
                                  int64_t rows, int64_t channels, float* out, const float* skip) {
  const vecf b0 = load(bias), b1 = load(bias + VEC);
#if defined(MBV2_AVX2_INTRINSICS)
  // Each half of the tile (8 channels) transposed in registers: one masked store of the MR pixels per channel.
  static_assert(MR <= 8, "a tile's pixels fit one AVX2 vector");
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rows)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int half = 0; half < 2; ++half) {
    __m256 v[8];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) v[r] = (__m256)(tile.acc[r][half] + (half == 0 ? b0 : b1));
    for (int r = MR; r < 8; ++r) v[r] = _mm256_setzero_ps();
    transpose8(v);
    const int64_t first = half * VEC, last = std::min<int64_t>(channels, first + VEC);
    for (int64_t j = first; j < last; ++j) {
      const int64_t offset = (c0 + j) * pixels + p0;
      __m256 value = v[j - first];
      if (skip != nullptr) value = _mm256_add_ps(value, _mm256_maskload_ps(skip + offset, mask));
      _mm256_maskstore_ps(out + offset, mask, value);
    }
  }
#else
  float values[MR][NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    store(values[r], tile.acc[r][0] + b0);
    store(values[r] + VEC, tile.acc[r][1] + b1);
  }
  for (int64_t j = 0; j < channels; ++j) {
    float* dst = out + (c0 + j) * pixels + p0;
    if (skip != nullptr) {
      const float* add = skip + (c0 + j) * pixels + p0;
      for (int64_t r = 0; r < rows; ++r) dst[r] = values[r][j] + add[r];
    } else {
      for (int64_t r = 0; r < rows; ++r) dst[r] = values[r][j];
    }
  }
#endif
}

void blocked_block(const float* x, int64_t n, int64_t k, int64_t h, int64_t w, int stride, const float* we,
                   const float* be, const float* wd, const float* bd, int64_t m, const float* wp, const float* bp,
                   int64_t out_channels, bool residual, float* y) {
  const int64_t groups = (m + NR - 1) / NR, pitch = w + 2, padded = (h + 2) * pitch;
  const int64_t ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1, pixels_in = h * w, pixels_out = ho * wo;
  const int64_t in_panels = (pixels_in + MR - 1) / MR, out_panels = (pixels_out + MR - 1) / MR;
  const int64_t hidden_row = groups * NR, out_tiles = (out_channels + NR - 1) / NR;
  // The expansion's and the projection's weights as B panels [tile][depth][NR]; the biases and the depthwise
  // weights per group of NR channels (zero past m, past out_channels).
  const std::vector<float> expand_panels = pack_transposed(we, m, k), projection_panels = pack_transposed(wp, out_channels, m);
  std::vector<float> expand_bias(groups * NR, 0.0f), taps(groups * 9 * NR, 0.0f), depthwise_bias(groups * NR, 0.0f);
  std::vector<float> projection_bias(out_tiles * NR, 0.0f);
  std::copy(be, be + m, expand_bias.begin());
  std::copy(bd, bd + m, depthwise_bias.begin());
  std::copy(bp, bp + out_channels, projection_bias.begin());
  for (int64_t c = 0; c < m; ++c)
    for (int t = 0; t < 9; ++t) taps[((c / NR) * 9 + t) * NR + c % NR] = wd[c * 9 + t];
  // Where input pixel p sits in its group's window (no division per tile row).
  std::vector<int64_t> window_offset(pixels_in);
  for (int64_t p = 0; p < pixels_in; ++p) window_offset[p] = ((p / w + 1) * pitch + p % w + 1) * NR;
  // Where output pixel p's top-left tap sits in the window.
  std::vector<int64_t> tap_offset(pixels_out);
  for (int64_t p = 0; p < pixels_out; ++p) tap_offset[p] = (stride * (p / wo) * pitch + stride * (p % wo)) * NR;
  parallel_for(n, [&](int64_t begin, int64_t end) {
    float* a_panels = scratch(in_panels * k * MR + groups * padded * NR + out_panels * MR * hidden_row);
    float* window = a_panels + in_panels * k * MR;  // [group][padded pixel][NR]
    float* hidden = window + groups * padded * NR;  // the depthwise output: [pixel][channel], rows to MR's multiple
    // The rows past the last pixel feed only tile rows that are not stored; zero, they read no stale scratch.
    std::fill(hidden + pixels_out * hidden_row, hidden + out_panels * MR * hidden_row, 0.0f);
    for (int64_t img = begin; img < end; ++img) {
      const float* image = x + img * k * pixels_in;
      // A panels of the expansion: MR pixels each, [k][MR], zero past the last pixel.
      for (int64_t pb = 0; pb < in_panels; ++pb)
        for (int64_t j = 0; j < k; ++j)
          for (int r = 0; r < MR; ++r) {
            const int64_t p = pb * MR + r;
            a_panels[(pb * k + j) * MR + r] = p < pixels_in ? image[j * pixels_in + p] : 0.0f;
          }
      // The window's border pixels are the depthwise layer's zero padding.
      for (int64_t group = 0; group < groups; ++group) {
        float* plane = window + group * padded * NR;
        for (int64_t q = 0; q < pitch; ++q) {
          std::memset(plane + q * NR, 0, sizeof(float) * NR);
          std::memset(plane + ((h + 1) * pitch + q) * NR, 0, sizeof(float) * NR);
        }
        for (int64_t r = 1; r <= h; ++r) {
          std::memset(plane + r * pitch * NR, 0, sizeof(float) * NR);
          std::memset(plane + (r * pitch + w + 1) * NR, 0, sizeof(float) * NR);
        }
      }
      // The expansion: relu6(x^T we^T + be), tile = MR pixels x NR channels, into the window.
      for (int64_t group = 0; group < groups; ++group) {
        const vecf b0 = load(expand_bias.data() + group * NR), b1 = load(expand_bias.data() + group * NR + VEC);
        for (int64_t pb = 0; pb < in_panels; ++pb) {
          Tile tile;
          tile_product(a_panels + pb * k * MR, expand_panels.data() + group * k * NR, k, tile);
#pragma GCC unroll 16
          for (int r = 0; r < MR; ++r) {
            const int64_t p = pb * MR + r;
            if (p >= pixels_in) break;
            float* dst = window + group * padded * NR + window_offset[p];
            store(dst, relu6(tile.acc[r][0] + b0));
            store(dst + VEC, relu6(tile.acc[r][1] + b1));
          }
        }
      }
      // The depthwise layer on channel vectors, + bias, ReLU6, into the hidden tensor.
      for (int64_t group = 0; group < groups; ++group) {
        vecf lo[9], hi[9];
        for (int t = 0; t < 9; ++t) {
          lo[t] = load(taps.data() + (group * 9 + t) * NR);
          hi[t] = load(taps.data() + (group * 9 + t) * NR + VEC);
        }
        const vecf b0 = load(depthwise_bias.data() + group * NR), b1 = load(depthwise_bias.data() + group * NR + VEC);
        const float* plane = window + group * padded * NR;
        for (int64_t p = 0; p < pixels_out; ++p) {
          const float* top = plane + tap_offset[p];
          const float *mid = top + pitch * NR, *bot = mid + pitch * NR;
          float* dst = hidden + p * hidden_row + group * NR;
          store(dst, relu6(taps3x3(lo, load(top), load(top + NR), load(top + 2 * NR), load(mid), load(mid + NR),
                                   load(mid + 2 * NR), load(bot), load(bot + NR), load(bot + 2 * NR)) + b0));
          store(dst + VEC, relu6(taps3x3(hi, load(top + VEC), load(top + NR + VEC), load(top + 2 * NR + VEC),
                                         load(mid + VEC), load(mid + NR + VEC), load(mid + 2 * NR + VEC),
                                         load(bot + VEC), load(bot + NR + VEC), load(bot + 2 * NR + VEC)) + b1));
        }
      }
      // The projection: hidden times the B panels, + bias (+ the block's input), stored NCHW. The loop keeps in
      // cache whichever operand is re-read: the pixel panels' rows while every output tile passes (the hidden
      // tensor larger than the weights: large planes), or one tile's B panel while every pixel panel passes.
      float* out = y + img * out_channels * pixels_out;
      const float* skip = residual ? image : nullptr;
      auto project = [&](int64_t pb, int64_t t) {
        Tile tile;
        tile_product_a_rows(hidden + pb * MR * hidden_row, hidden_row, projection_panels.data() + t * m * NR, m, tile);
        store_transposed_tile(tile, projection_bias.data() + t * NR, pixels_out, pb * MR, t * NR,
                              std::min<int64_t>(MR, pixels_out - pb * MR), std::min<int64_t>(NR, out_channels - t * NR),
                              out, skip);
      };
      if (pixels_out > out_channels) {
        for (int64_t pb = 0; pb < out_panels; ++pb)
          for (int64_t t = 0; t < out_tiles; ++t) project(pb, t);
      } else {
        for (int64_t t = 0; t < out_tiles; ++t)
          for (int64_t pb = 0; pb < out_panels; ++pb) project(pb, t);
      }
    }
  });
}

// What follows the depthwise layer in the pass: nothing (its output is the result), or the block's projection,
// whose product reads the depthwise output from cache a step of rows at a time (neither hidden tensor stored).
enum class Projection { NONE, PLAIN, RESIDUAL };

// The layers of one pass, every BatchNorm folded: the expansion's weights we[M,K] and bias be[M] (null for a
// block without one: M = K), the depthwise layer's wd[M,9], bd[M], and the projection's wp[P,M], bp[P] (null
// without the projection: P = M).
struct PassLayers {
  const float *we, *be, *wd, *bd, *wp, *bp;
  int64_t m, out_channels;
};

// The pass over x[N,K,H,W] into y (pw_dw_forward's layers and output), shapes checked by the caller.
void run_pass(const float* x, int64_t n, int64_t k, int64_t h, int64_t w, int stride, const PassLayers& layers,
              Projection projection, float* y) {
  const bool project = projection != Projection::NONE, expand = layers.we != nullptr;
  const int64_t m = layers.m, out_channels = layers.out_channels;
  const float *expand_bias = layers.be, *wd = layers.wd, *bias = layers.bd, *projection_bias = layers.bp;
  const Geometry g(h, w, stride);
  const int64_t ho = g.out_height, wo = g.out_width, panels_total = (m + MR - 1) / MR;
  // Small planes with a batch for every thread: the channel-blocked form (the same values).
  if (project && expand && ho * wo <= BLOCKED_MAX_PIXELS && n >= 2 * threads_now()) {
    blocked_block(x, n, k, h, w, stride, layers.we, expand_bias, wd, bias, m, layers.wp, projection_bias, out_channels,
                  projection == Projection::RESIDUAL, y);
    return;
  }
  const std::vector<float> packed_projection = project ? pack_rows(layers.wp, out_channels, m, m, 1) : std::vector<float>();
  const std::vector<float> packed = expand ? pack_rows(layers.we, m, k, k, 1) : std::vector<float>();
  // Where every vector of the expansion's tile rows lies in one input row (W a whole number of vectors), the
  // product stores them straight into the window's padded rows; else into rows of their own, then copied.
  const bool into_window = expand && w % VEC == 0;
  auto window_floats = [&](int64_t channels, int64_t rows_out) {
    const int64_t window_rows = stride * (rows_out - 1) + 3, new_rows = std::max(window_rows, stride * rows_out);
    return channels * (window_rows * g.pitch + (expand && !into_window ? new_rows * w : 0) + (project ? rows_out * wo : 0));
  };
  // Tasks: (image, group of channels, band of output rows). Without the projection the channels split into
  // groups: enough tasks for every thread (batch 1 too), one output row's window in budget. The projection
  // needs every channel of a pixel, so there the output rows split into bands instead (a band recomputes the
  // expansion rows its first step shares with the band above).
  int64_t groups = 1, bands = 1;
  if (project) {
    while (bands < ho && n * bands < 2 * threads_now()) ++bands;
  } else {
    while (groups < panels_total &&
           (n * groups < 2 * threads_now() || window_floats((panels_total + groups - 1) / groups * MR, 1) > WINDOW_FLOATS))
      ++groups;
  }
  const int64_t group_panels = (panels_total + groups - 1) / groups, band_rows = (ho + bands - 1) / bands;
  groups = (panels_total + group_panels - 1) / group_panels;
  bands = (ho + band_rows - 1) / band_rows;
  int64_t rows_out = 1;  // output rows per step: as many as the budget allows
  while (rows_out < band_rows && window_floats(group_panels * MR, rows_out + 1) <= WINDOW_FLOATS) ++rows_out;
  const int64_t window_rows = stride * (rows_out - 1) + 3, new_rows = std::max(window_rows, stride * rows_out);
  const int64_t expand_columns = expand ? new_rows * w : 0, max_columns = into_window ? 0 : expand_columns;
  const int64_t step_columns = rows_out * wo;
  const int64_t panel_floats = std::max(((expand_columns + NR - 1) / NR) * k, project ? ((step_columns + NR - 1) / NR) * m : 0) * NR;
  parallel_for(n * groups * bands, [&](int64_t begin, int64_t end) {
    const int64_t channels_max = group_panels * MR, window_plane = window_rows * g.pitch;
    float* window = scratch(channels_max * (window_plane + max_columns + (project ? step_columns : 0)) + panel_floats);
    float* expanded = window + channels_max * window_plane;
    float* hidden = expanded + channels_max * max_columns;  // the depthwise output of a step (projection only)
    float* panels = hidden + (project ? channels_max * step_columns : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t img = task / (groups * bands), group = task / bands % groups, band = task % bands;
      const int64_t p0 = group * group_panels, p1 = std::min(panels_total, p0 + group_panels);
      const int64_t c0 = p0 * MR, c1 = std::min(m, p1 * MR);
      const int64_t band_begin = band * band_rows, band_end = std::min(ho, band_begin + band_rows);
      const float* image = x + img * k * h * w;
      int64_t held_begin = 0, held_end = 0;  // padded rows in the window: [held_begin, held_end)
      for (int64_t o0 = band_begin; o0 < band_end; o0 += rows_out) {
        const int64_t o1 = std::min(band_end, o0 + rows_out);
        const int64_t need_begin = stride * o0, need_end = stride * (o1 - 1) + 3;  // padded rows
        // Keep the rows both steps need (at the window's top), then compute the new ones after them.
        const int64_t keep_begin = std::max(need_begin, held_begin), keep = std::max<int64_t>(0, held_end - keep_begin);
        if (keep > 0 && keep_begin > held_begin)
          for (int64_t c = c0; c < c1; ++c) {
            float* plane = window + (c - c0) * window_plane;
            std::memmove(plane, plane + (keep_begin - held_begin) * g.pitch, sizeof(float) * keep * g.pitch);
          }
        const int64_t fresh_begin = need_begin + keep;
        // Padded row r holds input row r - 1; rows 0 and H + 1 are the zero padding.
        const int64_t in_begin = std::max<int64_t>(fresh_begin - 1, 0), in_end = std::min<int64_t>(need_end - 1, h);
        if (expand && in_end > in_begin && into_window) {
          // Column col of the step is pixel (in_begin + col / W, col % W): padded row in_begin + col / W + 1.
          float* first_row = window + (in_begin + 1 - need_begin) * g.pitch;
          pack_columns(image, k, h * w, in_begin * w, in_end * w, panels);
          // The last tile's column, and where it goes: its padded row, its column, whether its NR values lie in
          // that row.
          int64_t tile_col = -1, row_offset = 0, j = 0;
          bool in_row = false;
          panel_product_to(packed.data(), m, k, panels, (in_end - in_begin) * w, p0, p1, expand_bias, true,
                           [&](int64_t channel, int64_t col, vecf lo, vecf hi, int64_t valid) {
                             if (col != tile_col) {  // once per tile, not per row: a division
                               tile_col = col;
                               row_offset = col / w * g.pitch;
                               j = col % w;
                               in_row = valid == NR && j + NR <= w;
                             }
                             float* row = first_row + (channel - c0) * window_plane + row_offset;
                             if (in_row) {
                               store_pair_in_padded_row(g, row, j, lo, hi);
                               return;
                             }
                             store_in_padded_row(g, row, j, lo);
                             if (valid > VEC) {
                               if (j + VEC < w)
                                 store_in_padded_row(g, row, j + VEC, hi);
                               else
                                 store_in_padded_row(g, row + g.pitch, 0, hi);
                             }
                           });
        } else if (expand && in_end > in_begin) {
          pointwise_columns(packed.data(), m, k, image, h * w, in_begin * w, in_end * w, p0, p1, expand_bias, true,
                            expanded, max_columns, nullptr, panels);
        }
        for (int64_t c = c0; c < c1; ++c) {
          float* plane = window + (c - c0) * window_plane;
          for (int64_t r = fresh_begin; r < need_end; ++r) {
            float* row = plane + (r - need_begin) * g.pitch;
            if (r == 0 || r == h + 1) {
              std::memset(row, 0, sizeof(float) * g.pitch);
            } else if (into_window) {
              zero_padded_row_border(g, row);
            } else {
              const float* source = expand ? expanded + (c - c0) * max_columns + (r - 1 - in_begin) * w
                                           : image + (c * h + r - 1) * w;
              pad_row_with(g, source, row, [](float v) { return v; });
            }
          }
          float* out = project ? hidden + (c - c0) * step_columns : y + ((img * m + c) * ho + o0) * wo;
          forward_rows_bias_relu6(g, plane, wd + c * 9, bias[c], out, o1 - o0);
        }
        if (project) {
          const int64_t plane_out = ho * wo;
          const float* residual = projection == Projection::RESIDUAL ? image + o0 * wo : nullptr;
          pointwise_columns(packed_projection.data(), out_channels, m, hidden, step_columns, 0, (o1 - o0) * wo, 0,
                            (out_channels + MR - 1) / MR, projection_bias, false,
                            y + img * out_channels * plane_out + o0 * wo, plane_out, residual, panels);
        }
        held_begin = need_begin;
        held_end = need_end;
      }
    }
  });
}

// With the expansion (`expand`) and without the projection: (x[N,K,H,W], we[M,K,1,1], be[M], wd[M,1,3,3],
// bd[M]) -> y[N,M,Ho,Wo] = relu6(dwconv(relu6(conv1x1(x, we) + be), wd) + bd): pw_forward_bias_relu6 then
// dw_forward_bias_relu6. With the projection, two more inputs (wp[P,M,1,1], bp[P]) and y[N,P,Ho,Wo] =
// conv1x1(that, wp) + bp (+ x, RESIDUAL): pw_forward_bias (pw_forward_bias_add) after them, bit for bit.
// Without the expansion (a block whose depthwise layer reads its input, M = K) there is no we, be.
int pw_dw_forward(const Args& a, int stride, bool expand, Projection projection) {
  const bool project = projection != Projection::NONE;
  const int dw_index = expand ? 3 : 1, projection_index = dw_index + 2, y_index = projection_index + (project ? 2 : 0);
  if (a.nparam != y_index + 1 || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], k = a.shape(0)[1], h = a.shape(0)[2], w = a.shape(0)[3];
  if (expand && !a.is(1, -1, k, 1, 1)) return 1;
  const int64_t m = expand ? a.shape(1)[0] : k;
  const Geometry g(h, w, stride);
  if ((expand && !a.is_vector(2, m)) || !a.is(dw_index, m, 1, 3, 3) || !a.is_vector(dw_index + 1, m)) return 1;
  if (project && (!a.is(projection_index, -1, m, 1, 1) || !a.is_vector(projection_index + 1, a.shape(projection_index)[0])))
    return 1;
  const int64_t out_channels = project ? a.shape(projection_index)[0] : m;
  if (projection == Projection::RESIDUAL && (stride != 1 || out_channels != k)) return 1;
  if (!a.is(y_index, n, out_channels, g.out_height, g.out_width)) return 1;
  if (k == 0 || m == 0 || h == 0 || w == 0) return 1;  // an empty layer (and no window to size)
  const PassLayers layers{expand ? a.in(1) : nullptr, expand ? a.in(2) : nullptr, a.in(dw_index), a.in(dw_index + 1),
                          project ? a.in(projection_index) : nullptr, project ? a.in(projection_index + 1) : nullptr,
                          m, out_channels};
  run_pass(a.in(0), n, k, h, w, stride, layers, projection, a.out(y_index));
  return 0;
}

// The whole block with its BatchNorms on their moving statistics, folded here: (x, then per layer (w, gamma,
// beta, mean, var, eps_momentum[2]): the expansion's (with `expand`), the depthwise layer's, the projection's)
// -> y = block_forward(x, bn_fold of each layer...): each fold as bn_fold computes it, so the output is the
// same bit for bit as bn_fold's outputs fed to block_forward, without an op call per fold.
int block_forward_bn(const Args& a, int stride, bool expand, Projection projection) {
  const int layer_count = expand ? 3 : 2, y_index = 1 + 6 * layer_count;
  if (a.nparam != y_index + 1 || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], k = a.shape(0)[1], h = a.shape(0)[2], w = a.shape(0)[3];
  const int e = 1, d = expand ? 7 : 1, p = d + 6;  // the first input of each layer
  if (expand && !a.is(e, -1, k, 1, 1)) return 1;
  const int64_t m = expand ? a.shape(e)[0] : k;
  if (!a.is(d, m, 1, 3, 3) || !a.is(p, -1, m, 1, 1)) return 1;
  const int64_t out_channels = a.shape(p)[0];
  for (int first = 1; first < y_index; first += 6) {
    const int64_t channels = a.shape(first)[0];
    for (int i = 1; i <= 4; ++i)
      if (!a.is_vector(first + i, channels)) return 1;
    if (!a.is_vector(first + 5, 2)) return 1;
  }
  const Geometry g(h, w, stride);
  if (projection == Projection::RESIDUAL && (stride != 1 || out_channels != k)) return 1;
  if (!a.is(y_index, n, out_channels, g.out_height, g.out_width)) return 1;
  if (k == 0 || m == 0 || h == 0 || w == 0) return 1;
  // Folded weights and biases, the layers in order.
  std::vector<float> folded[3], biases[3];
  for (int layer = 0, first = 1; layer < layer_count; ++layer, first += 6) {
    const int64_t channels = a.shape(first)[0], row = a.shape(first)[1] * a.shape(first)[2] * a.shape(first)[3];
    folded[layer].resize(channels * row);
    biases[layer].resize(channels);
    fold_batch_norm(a.in(first), channels, row, a.in(first + 1), a.in(first + 2), a.in(first + 3), a.in(first + 4),
                    a.in(first + 5)[0], folded[layer].data(), biases[layer].data());
  }
  const int dw_layer = expand ? 1 : 0;
  const PassLayers layers{expand ? folded[0].data() : nullptr, expand ? biases[0].data() : nullptr,
                          folded[dw_layer].data(), biases[dw_layer].data(), folded[dw_layer + 1].data(),
                          biases[dw_layer + 1].data(), m, out_channels};
  run_pass(a.in(0), n, k, h, w, stride, layers, projection, a.out(y_index));
  return 0;
}

}  // namespace

MBV2_ENTRY(pw_dw_forward_s1, pw_dw_forward(args, 1, true, Projection::NONE))
MBV2_ENTRY(pw_dw_forward_s2, pw_dw_forward(args, 2, true, Projection::NONE))
MBV2_ENTRY(block_forward_s1, pw_dw_forward(args, 1, true, Projection::PLAIN))
MBV2_ENTRY(block_forward_s2, pw_dw_forward(args, 2, true, Projection::PLAIN))
MBV2_ENTRY(block_forward_residual_s1, pw_dw_forward(args, 1, true, Projection::RESIDUAL))
MBV2_ENTRY(dw_block_forward_s1, pw_dw_forward(args, 1, false, Projection::PLAIN))
MBV2_ENTRY(dw_block_forward_s2, pw_dw_forward(args, 2, false, Projection::PLAIN))
MBV2_ENTRY(dw_block_forward_residual_s1, pw_dw_forward(args, 1, false, Projection::RESIDUAL))
MBV2_ENTRY(block_forward_bn_s1, block_forward_bn(args, 1, true, Projection::PLAIN))
MBV2_ENTRY(block_forward_bn_s2, block_forward_bn(args, 2, true, Projection::PLAIN))
MBV2_ENTRY(block_forward_bn_residual_s1, block_forward_bn(args, 1, true, Projection::RESIDUAL))
MBV2_ENTRY(dw_block_forward_bn_s1, block_forward_bn(args, 1, false, Projection::PLAIN))
MBV2_ENTRY(dw_block_forward_bn_s2, block_forward_bn(args, 2, false, Projection::PLAIN))
MBV2_ENTRY(dw_block_forward_bn_residual_s1, block_forward_bn(args, 1, false, Projection::RESIDUAL))

}  // namespace mbv2
