// Pointwise (1x1, stride 1) convolutions (fp32, NCHW): matrix products over packed panels.
//
// Entry points (inputs first, then the outputs):
//   pw_forward_s1            (x[N,K,H,W], w[M,K,1,1])             -> y[N,M,H,W]
//   pw_forward_bias_s1       (x, w, b[M])                         -> y = conv + b (a folded BatchNorm)
//   pw_forward_bias_relu6_s1 (x, w, b[M])                         -> y = min(max(conv + b, 0), 6)
//   pw_forward_bias_add_s1   (x, w, b[M], r[N,M,H,W])             -> y = (conv + b) + r (a residual block's
//                                                                    projection: the add in the epilogue)
//   pw_grad_input_s1         (dy[N,M,H,W], w, x)                  -> dx[N,K,H,W]   (x only for its shape)
//   pw_grad_weight_s1        (x, dy)                              -> dw[M,K,1,1]
//
// In NCHW a 1x1 convolution is Y_b[M, P] = W[M, K] X_b[K, P] for every image b (P = H*W pixels). All three
// products run on the register tile of common.h. The columns of the forward and the input gradient run
// over all images' pixels (column q is pixel q % P of image q / P), so a 7x7 layer's 49 pixels fill whole
// tiles too.
//   forward:        A = W (M x K),   B = X columns,  out Y (+ bias, ReLU6)
//   input gradient: A = W^T (K x M), B = dY columns, out dX
//   weight grad.:   A = dY (M x Q),  B = X^T (Q x K) with Q = N*P, out dW: the depth is the
//                   pixels of all images, in chunks of CHUNK; each thread owns whole row panels of
//                   dW and sums them in a fixed order, so the result does not depend on the thread count.
#include "common.h"

namespace mbv2 {
namespace {

constexpr int64_t PACKED_BYTES = 256 << 10;  // a task's packed B panels: they stay in L2 for every row panel
constexpr int64_t MAX_TILES_PER_TASK = 64;
constexpr int64_t CHUNK = 512;         // pixels per packed chunk of the weight gradient

// Y[b, rows, P] = A X_b (+ bias, relu6) (+ residual) for all images: A packed by pack_rows (rows x depth),
// X [n, depth, P], residual (when given) shaped like Y. The residual is added after the bias, as a separate
// add of the two would: the same value bit for bit, without a pass of its own over Y.
void pointwise_product(const std::vector<float>& a, int64_t rows, int64_t depth, const float* x, int64_t n,
                       int64_t pixels, float* y, const float* bias, bool relu6, const float* residual = nullptr) {
  const int64_t columns = n * pixels, tiles = (columns + NR - 1) / NR;
  // Tiles per task: long runs of each input row (a few streams at a time, few pages), while the
  // task's B panels stay within PACKED_BYTES of cache and there are tasks for every thread.
  const int64_t fit = std::max<int64_t>(1, PACKED_BYTES / (depth * NR * int64_t{sizeof(float)}));
  const int64_t per_task = std::max<int64_t>(1, std::min({fit, MAX_TILES_PER_TASK, tiles / 16}));
  const int64_t tasks = (tiles + per_task - 1) / per_task, row_panels = (rows + MR - 1) / MR;
  parallel_for(tasks, [&](int64_t begin, int64_t end) {
    float* panels = scratch(per_task * depth * NR);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t0 = task * per_task, t1 = std::min(tiles, t0 + per_task);
      // B panels of the task's columns, zero past the last. Whole tiles row by row: each input row is
      // read as one run over the task's columns.
      int64_t t = t0;
      while (t < t1) {
        const int64_t b0 = t * NR / pixels, p0 = t * NR % pixels;
        int64_t whole_end = t;  // tiles [t, whole_end) lie within image b0
        while (whole_end < t1 && (whole_end * NR) / pixels == b0 && (whole_end * NR) % pixels + NR <= pixels) ++whole_end;
        if (whole_end == t) break;
        for (int64_t k = 0; k < depth; ++k) {
          const float* src = x + (b0 * depth + k) * pixels + p0;
          for (int64_t u = t; u < whole_end; ++u) {
            float* dst = panels + ((u - t0) * depth + k) * NR;
            store(dst, load(src + (u - t) * NR));
            store(dst + VEC, load(src + (u - t) * NR + VEC));
          }
        }
        t = whole_end;
      }
      for (; t < t1; ++t) {
        float* panel = panels + (t - t0) * depth * NR;
        const int64_t q0 = t * NR, p0 = q0 % pixels;
        if (p0 + NR <= pixels) {
          const int64_t b0 = q0 / pixels;
          for (int64_t k = 0; k < depth; ++k) {
            store(panel + k * NR, load(x + (b0 * depth + k) * pixels + p0));
            store(panel + k * NR + VEC, load(x + (b0 * depth + k) * pixels + p0 + VEC));
          }
        } else {
          for (int64_t j = 0; j < NR; ++j) {
            const int64_t q = q0 + j, b = q / pixels, p = q % pixels;
            for (int64_t k = 0; k < depth; ++k) panel[k * NR + j] = q < columns ? x[(b * depth + k) * pixels + p] : 0.0f;
          }
        }
      }
      for (int64_t mb = 0; mb < row_panels; ++mb) {
        const int64_t m0 = mb * MR;
        const int valid_rows = static_cast<int>(std::min<int64_t>(MR, rows - m0));
        for (int64_t t = t0; t < t1; ++t) {
          Tile tile;
          tile_product(a.data() + mb * depth * MR, panels + (t - t0) * depth * NR, depth, tile);
          const int64_t q0 = t * NR, b0 = q0 / pixels, p0 = q0 % pixels;
          const bool whole = p0 + NR <= pixels;  // the tile's columns are consecutive pixels of one image
          // Else where column j of row 0 goes (image q / P, pixel q % P), counted once per tile, not per row.
          int64_t column_offset[NR];
          const int64_t valid = std::min<int64_t>(NR, columns - q0);
          if (!whole) {
            for (int64_t j = 0, b = b0, p = p0; j < valid; ++j) {
              column_offset[j] = b * rows * pixels + p;
              if (++p == pixels) {
                p = 0;
                ++b;
              }
            }
          }
#pragma GCC unroll 16
          for (int r = 0; r < MR; ++r) {
            if (r >= valid_rows) break;
            vecf lo = tile.acc[r][0], hi = tile.acc[r][1];
            bias_relu6_epilogue(lo, hi, bias == nullptr ? nullptr : bias + m0 + r, relu6);
            if (whole) {
              const int64_t offset = (b0 * rows + m0 + r) * pixels + p0;
              if (residual != nullptr) {
                lo += load(residual + offset);
                hi += load(residual + offset + VEC);
              }
              store(y + offset, lo);
              store(y + offset + VEC, hi);
            } else {
              float row[NR];
              store(row, lo);
              store(row + VEC, hi);
              for (int64_t j = 0; j < valid; ++j) {
                const int64_t offset = column_offset[j] + (m0 + r) * pixels;
                y[offset] = residual != nullptr ? row[j] + residual[offset] : row[j];
              }
            }
          }
        }
      }
    }
  });
}

// (x[N,K,H,W], w[M,K,1,1][, bias[M]]) -> y[N,M,H,W] = conv (+ bias, relu6 with `relu6`).
int pw_forward(const Args& a, bool with_bias, bool relu6) {
  const int y_index = with_bias ? 3 : 2;
  if (a.nparam != y_index + 1 || !a.is(0, -1, -1, -1, -1) || !a.is(1, -1, a.shape(0)[1], 1, 1)) return 1;
  const int64_t n = a.shape(0)[0], k = a.shape(0)[1], h = a.shape(0)[2], w = a.shape(0)[3], m = a.shape(1)[0];
  if (!a.is(y_index, n, m, h, w) || (with_bias && !a.is_vector(2, m))) return 1;
  pointwise_product(pack_rows(a.in(1), m, k, k, 1), m, k, a.in(0), n, h * w, a.out(y_index),
                    with_bias ? a.in(2) : nullptr, relu6);
  return 0;
}

// (x[N,K,H,W], w[M,K,1,1], bias[M], residual[N,M,H,W]) -> y = (conv + bias) + residual.
int pw_forward_bias_add(const Args& a) {
  if (a.nparam != 5 || !a.is(0, -1, -1, -1, -1) || !a.is(1, -1, a.shape(0)[1], 1, 1)) return 1;
  const int64_t n = a.shape(0)[0], k = a.shape(0)[1], h = a.shape(0)[2], w = a.shape(0)[3], m = a.shape(1)[0];
  if (!a.is_vector(2, m) || !a.is(3, n, m, h, w) || !a.is(4, n, m, h, w)) return 1;
  pointwise_product(pack_rows(a.in(1), m, k, k, 1), m, k, a.in(0), n, h * w, a.out(4), a.in(2), false, a.in(3));
  return 0;
}

// (dy[N,M,H,W], w[M,K,1,1], x[N,K,H,W]) -> dx[N,K,H,W] = W^T dY per image (x only for its shape).
int pw_grad_input(const Args& a) {
  if (a.nparam != 4 || !a.is(2, -1, -1, -1, -1) || !a.is(1, -1, a.shape(2)[1], 1, 1)) return 1;
  const int64_t n = a.shape(2)[0], k = a.shape(2)[1], h = a.shape(2)[2], w = a.shape(2)[3], m = a.shape(1)[0];
  if (!a.is(0, n, m, h, w) || !a.is(3, n, k, h, w)) return 1;
  pointwise_product(pack_rows(a.in(1), k, m, 1, k), k, m, a.in(0), n, h * w, a.out(3), nullptr, false);
  return 0;
}

// dW[rows r0*MR.., cols c0*NR..] of panels [r0, r1) x [c0, c1): the chunks packed and multiplied in
// order, each tile's sums added to `sums` (padded to whole panels) chunk after chunk.
void weight_grad_block(const float* x, const float* dy, int64_t n, int64_t k, int64_t m, int64_t pixels, int64_t r0,
                       int64_t r1, int64_t c0, int64_t c1, float* dw) {
  const int64_t columns = n * pixels, width = (c1 - c0) * NR;
  const int64_t row_end = std::min(m, r1 * MR), col_end = std::min(k, c1 * NR);
  float* a_panels = scratch((r1 - r0) * CHUNK * MR + (c1 - c0) * CHUNK * NR);
  float* b_panels = a_panels + (r1 - r0) * CHUNK * MR;
  std::vector<float> sums((r1 - r0) * MR * width, 0.0f);
  for (int64_t q0 = 0; q0 < columns; q0 += CHUNK) {
    const int64_t len = std::min(CHUNK, columns - q0);
    // Pack the chunk (depth = its pixels): dY rows as A panels, X rows as B panels (X^T), zero past the ends.
    std::fill(a_panels, a_panels + (r1 - r0) * CHUNK * MR, 0.0f);
    std::fill(b_panels, b_panels + (c1 - c0) * CHUNK * NR, 0.0f);
    for (int64_t q = q0; q < q0 + len;) {
      const int64_t b = q / pixels, p = q % pixels, run = std::min(q0 + len - q, pixels - p);  // within one image
      for (int64_t i = r0 * MR; i < row_end; ++i) {
        const float* src = dy + (b * m + i) * pixels + p;
        float* dst = a_panels + ((i / MR - r0) * CHUNK + (q - q0)) * MR + i % MR;
        for (int64_t j = 0; j < run; ++j) dst[j * MR] = src[j];
      }
      for (int64_t i = c0 * NR; i < col_end; ++i) {
        const float* src = x + (b * k + i) * pixels + p;
        float* dst = b_panels + ((i / NR - c0) * CHUNK + (q - q0)) * NR + i % NR;
        for (int64_t j = 0; j < run; ++j) dst[j * NR] = src[j];
      }
      q += run;
    }
    for (int64_t mb = r0; mb < r1; ++mb) {
      for (int64_t kb = c0; kb < c1; ++kb) {
        Tile tile;
        tile_product(a_panels + (mb - r0) * CHUNK * MR, b_panels + (kb - c0) * CHUNK * NR, len, tile);
        float* out = sums.data() + (mb - r0) * MR * width + (kb - c0) * NR;
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          float* row = out + r * width;
          store(row, load(row) + tile.acc[r][0]);
          store(row + VEC, load(row + VEC) + tile.acc[r][1]);
        }
      }
    }
  }
  for (int64_t i = r0 * MR; i < row_end; ++i)
    std::memcpy(dw + i * k + c0 * NR, sums.data() + (i - r0 * MR) * width, sizeof(float) * (col_end - c0 * NR));
}

// The weight gradient of layers with many pixels per image and few channels (MobileNetV2's 112x112
// to 28x28 layers) as dot products along the pixels, without packing: a tile of DOT_ROWS rows of dY
// and DOT_COLS rows of X keeps DOT_ROWS x DOT_COLS vector sums in registers; per vector of pixels it
// loads DOT_COLS X vectors, then each dY vector meets them (12 FMAs per 7 loads). There the packed
// product spends most of its time packing (its depth is the pixels, both operands transposed).
// Chunks of DOT_CHUNK pixels of one image keep a tile's rows in L1 while every tile of the thread's
// rows passes; the chunk's vector sums are added to per-(m, k) vector sums, reduced to floats at the
// end in a fixed lane order. Threads own whole dW rows: the result does not depend on their count.
constexpr int DOT_ROWS = 4;
constexpr int DOT_COLS = 3;
constexpr int64_t DOT_CHUNK = 512;
constexpr int64_t DOT_MIN_PIXELS = 784;  // 28x28; below, the packed product is faster (measured)

template <int R, int C>
void dot_tile(const float* const* dy_rows, const float* const* x_rows, int64_t len, float* sums, int64_t sums_stride) {
  vecf acc[R][C];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) acc[r][c] = vecf{};
  int64_t j = 0;
  for (; j + VEC <= len; j += VEC) {
    vecf xv[C];
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) xv[c] = load(x_rows[c] + j);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vecf d = load(dy_rows[r] + j);
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) acc[r][c] += d * xv[c];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float tail = 0.0f;
      for (int64_t t = j; t < len; ++t) tail += dy_rows[r][t] * x_rows[c][t];
      float* sum = sums + (r * sums_stride + c) * VEC;  // unaligned: C++14 vectors do not over-align
      store(sum, load(sum) + acc[r][c]);
      sum[0] += tail;
    }
  }
}

typedef void (*DotTileFn)(const float* const*, const float* const*, int64_t, float*, int64_t);
template <int R>
constexpr DotTileFn dot_tile_for(int c) {
  return c == 1 ? dot_tile<R, 1> : (c == 2 ? dot_tile<R, 2> : dot_tile<R, 3>);
}

void weight_grad_dot(const float* x, const float* dy, int64_t n, int64_t k, int64_t m, int64_t pixels, float* dw) {
  static const DotTileFn tiles[DOT_ROWS][DOT_COLS] = {
      {dot_tile_for<1>(1), dot_tile_for<1>(2), dot_tile_for<1>(3)},
      {dot_tile_for<2>(1), dot_tile_for<2>(2), dot_tile_for<2>(3)},
      {dot_tile_for<3>(1), dot_tile_for<3>(2), dot_tile_for<3>(3)},
      {dot_tile_for<4>(1), dot_tile_for<4>(2), dot_tile_for<4>(3)}};
  // One contiguous share of the row blocks per thread: each share streams all of X once.
  const int64_t row_blocks = (m + DOT_ROWS - 1) / DOT_ROWS;
  const int64_t shares = std::min<int64_t>(row_blocks, threads_now());
  parallel_for(shares, [&](int64_t first, int64_t last) {
    const int64_t r0 = row_blocks * first / shares * DOT_ROWS, r1 = std::min(m, row_blocks * last / shares * DOT_ROWS);
    std::vector<float> sums((r1 - r0) * k * VEC, 0.0f);
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t p0 = 0; p0 < pixels; p0 += DOT_CHUNK) {
        const int64_t len = std::min(DOT_CHUNK, pixels - p0);
        for (int64_t i = r0; i < r1; i += DOT_ROWS) {
          const int rows = static_cast<int>(std::min<int64_t>(DOT_ROWS, r1 - i));
          const float* dy_rows[DOT_ROWS];
          for (int r = 0; r < rows; ++r) dy_rows[r] = dy + (b * m + i + r) * pixels + p0;
          for (int64_t c0 = 0; c0 < k; c0 += DOT_COLS) {
            const int cols = static_cast<int>(std::min<int64_t>(DOT_COLS, k - c0));
            const float* x_rows[DOT_COLS];
            for (int c = 0; c < cols; ++c) x_rows[c] = x + (b * k + c0 + c) * pixels + p0;
            tiles[rows - 1][cols - 1](dy_rows, x_rows, len, sums.data() + ((i - r0) * k + c0) * VEC, k);
          }
        }
      }
    }
    for (int64_t i = r0; i < r1; ++i)
      for (int64_t c = 0; c < k; ++c) {
        const float* lanes = sums.data() + ((i - r0) * k + c) * VEC;
        float total = 0.0f;
        for (int v = 0; v < VEC; ++v) total += lanes[v];
        dw[i * k + c] = total;
      }
  });
}

// (x[N,K,H,W], dy[N,M,H,W]) -> dw[M,K,1,1] = sum over images and pixels of dY_b X_b^T.
int pw_grad_weight(const Args& a) {
  if (a.nparam != 3 || !a.is(0, -1, -1, -1, -1) || !a.is(1, a.shape(0)[0], -1, a.shape(0)[2], a.shape(0)[3]))
    return 1;
  const int64_t n = a.shape(0)[0], k = a.shape(0)[1], m = a.shape(1)[1], pixels = a.shape(0)[2] * a.shape(0)[3];
  if (!a.is(2, m, k, 1, 1)) return 1;
  if (pixels >= DOT_MIN_PIXELS) {
    weight_grad_dot(a.in(0), a.in(1), n, k, m, pixels, a.out(2));
    return 0;
  }
  const int64_t row_panels = (m + MR - 1) / MR, col_panels = (k + NR - 1) / NR;
  // One block per thread along the larger side of dW: each packs its share of that side and all of the
  // smaller one (packed once per thread, not once per small task).
  const bool split_rows = row_panels * MR >= col_panels * NR;
  const int64_t split = split_rows ? row_panels : col_panels;
  const int64_t blocks = std::min<int64_t>(split, threads_now());
  parallel_for(blocks, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t lo = split * block / blocks, hi = split * (block + 1) / blocks;
      if (split_rows)
        weight_grad_block(a.in(0), a.in(1), n, k, m, pixels, lo, hi, 0, col_panels, a.out(2));
      else
        weight_grad_block(a.in(0), a.in(1), n, k, m, pixels, 0, row_panels, lo, hi, a.out(2));
    }
  });
  return 0;
}

}  // namespace

MBV2_ENTRY(pw_forward_s1, pw_forward(args, false, false))
MBV2_ENTRY(pw_forward_bias_s1, pw_forward(args, true, false))
MBV2_ENTRY(pw_forward_bias_relu6_s1, pw_forward(args, true, true))
MBV2_ENTRY(pw_forward_bias_add_s1, pw_forward_bias_add(args))
MBV2_ENTRY(pw_grad_input_s1, pw_grad_input(args))
MBV2_ENTRY(pw_grad_weight_s1, pw_grad_weight(args))

}  // namespace mbv2
