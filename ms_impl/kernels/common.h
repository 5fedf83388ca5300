// The MindSpore twin's CPU kernels: what every kernel file shares (ms_impl/kernels/*.cc, one library).
//
// MindSpore 2.10 hands oneDNN plain NCHW tensors for the twin's layers and gets its reference (scalar)
// implementation: a depthwise 3x3 layer ran ~14x slower than PyTorch's, the stem ~27x, and 1x1
// convolutions and BatchNorm + ReLU6 were the next costs (docs/design.md section 7). These
// kernels are registered through `mindspore.ops.Custom(func_type="aot")` by ms_impl/fast_conv/, which
// compiles every .cc file here into one shared library (one thread pool, one build, one cache entry).
//
// Files, by op (each lists its entry points at its top):
//   threads.cc              the persistent thread pool, per-thread scratch, mbv2_set_threads / mbv2_thread_count
//   dense3x3.cc             dense 3x3 convolutions (the stem): forward (+ bias, ReLU6), gradients
//   depthwise.cc            depthwise 3x3 convolutions: forward (+ bias, ReLU6; + the expansion's bias and
//                           ReLU6 on the input), gradients, the fused backward of the folded forms
//   pointwise.cc            1x1 convolutions as packed matrix products: forward (+ bias, ReLU6), gradients
//   expansion_depthwise.cc  a block's expanding 1x1 and depthwise layers in one pass, and the whole block
//                           (+ projection, + residual) in one pass, channel-blocked for small planes (inference)
//   batchnorm.cc            BatchNorm (+ ReLU6) with batch statistics, on moving statistics (affine), and
//                           the gradient of a folded BatchNorm's bias
//   pooling.cc              the head's global average pooling, forward and gradient
//
// Calling convention (MindSpore's AOT signature): every entry point takes (nparam, params, ndims, shapes,
// dtypes, stream, extra), inputs first, then the outputs, and returns 0, or 1 when a dtype or any shape
// disagrees with its documented signature, or when the call fails (an allocation or a thread): no C++
// exception crosses into MindSpore, which raises on a non-zero status (MBV2_ENTRY below).
//
// Scheme of the 3x3 kernels: every input plane is copied once into a zero-padded plane ((H+2) rows). For
// stride 2 each padded row is stored de-interleaved (even columns, then odd columns), so that for every
// kernel column kw the taps x[s*ow + kw] of one output row are a contiguous run: all inner loops are
// unit-stride and vectorize. Work is split over a persistent pool of threads (threads.cc).
#ifndef MBV2_KERNELS_COMMON_H_
#define MBV2_KERNELS_COMMON_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

// ---- instruction sets and vector width ----
// 16 floats per vector where the target has AVX-512F, else 8 (AVX2). Two check builds run the 16-float code on
// a CPU without AVX-512 (ms_impl/fast_conv/build.py, MBV2_KERNEL_LANES): MBV2_LANES=16 builds its layout from
// portable vector code (GCC splits each vector in two), and MBV2_SIMDE_AVX512 also takes its AVX-512
// intrinsics from SIMDe's portable headers, so the code is the AVX-512 build's line for line.
#if defined(MBV2_SIMDE_AVX512) && !defined(__AVX512F__)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define MBV2_AVX512_INTRINSICS 1
#elif defined(__AVX512F__)
#define MBV2_AVX512_INTRINSICS 1
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif
#if defined(MBV2_AVX512_INTRINSICS) || (defined(MBV2_LANES) && MBV2_LANES == 16)
#define MBV2_VEC 16
#else
#define MBV2_VEC 8
#endif
#if MBV2_VEC == 8 && defined(__AVX__)
#define MBV2_AVX_INTRINSICS 1  // 8-float vectors are __m256: the AVX intrinsics apply
#endif
#if MBV2_VEC == 8 && defined(__AVX2__)
#define MBV2_AVX2_INTRINSICS 1
#endif

namespace mbv2 {

// ---- geometry of a 3x3 layer (padding 1, stride 1 or 2) ----

struct Geometry {
  int64_t height, width;        // input plane
  int64_t out_height, out_width;
  int stride;
  int64_t even_len;             // stride 2: padded columns 0, 2, 4, ... stored first
  int64_t pitch;                // floats per padded row
  int64_t plane;                // floats per padded plane

  Geometry(int64_t h, int64_t w, int s) : height(h), width(w), stride(s) {
    out_height = (h - 1) / s + 1;
    out_width = (w - 1) / s + 1;
    const int64_t padded = w + 2;
    even_len = (padded + 1) / 2;
    pitch = (s == 1 ? padded : even_len + padded / 2) + 1;  // +1: tap "even + 1" stays in bounds
    plane = (h + 2) * pitch;
  }

  // Offset, within a padded row, of padded column j (input column j - 1).
  int64_t column(int64_t j) const { return stride == 1 ? j : (j % 2 == 0 ? j / 2 : even_len + j / 2); }
  // Offset of the run holding taps x[s*ow + kw], ow = 0.. , within a padded row.
  int64_t tap(int kw) const { return stride == 1 ? kw : (kw == 1 ? even_len : kw / 2); }
};

// ---- vector width (MBV2_VEC above) ----
#if MBV2_VEC == 16
constexpr int VEC = 16;
constexpr int MR = 12;  // 24 accumulators + 2 B vectors + 1 broadcast of 32 vector registers
#else
constexpr int VEC = 8;
constexpr int MR = 6;  // 12 accumulators + 2 + 1 of 16 (AVX2)
#endif

// ---- vectors ----
typedef float vecf __attribute__((vector_size(VEC * sizeof(float))));
typedef float vecf_u __attribute__((vector_size(VEC * sizeof(float)), aligned(alignof(float)), may_alias));

inline vecf load(const float* p) { return *reinterpret_cast<const vecf_u*>(p); }
inline void store(float* p, vecf v) { *reinterpret_cast<vecf_u*>(p) = v; }
// One float in every lane. The intrinsics compile to one broadcast load; GCC turns `vecf{} + v` into an
// add and a shuffle, which halves the tile's speed.
#if defined(MBV2_AVX512_INTRINSICS)
inline vecf splat(const float* p) { return (vecf)_mm512_set1_ps(*p); }
#elif defined(MBV2_AVX_INTRINSICS)
inline vecf splat(const float* p) { return (vecf)_mm256_broadcast_ss(p); }
#else
inline vecf splat(const float* p) { return vecf{} + *p; }
#endif

// min(max(v, 0), 6) as one max and one min. The operand order keeps std::min(std::max(v, 0.0f), 6.0f) exactly:
// the instructions return their second operand for a NaN and for equal values (-0 stays -0, as there),
// where GCC's own vectorisation of std::min/max takes a compare and a blend each (twice the time).
inline vecf relu6(vecf v) {
#if defined(MBV2_AVX512_INTRINSICS)
  return (vecf)_mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(_mm512_setzero_ps(), (__m512)v));
#elif defined(MBV2_AVX_INTRINSICS)
  return (vecf)_mm256_min_ps(_mm256_set1_ps(6.0f), _mm256_max_ps(_mm256_setzero_ps(), (__m256)v));
#else
  const vecf zero = vecf{}, six = zero + 6.0f;
  v = v < zero ? zero : v;
  return six < v ? six : v;
#endif
}

// ---- threads (threads.cc): one persistent pool per process, created on first use ----

// Runs body(begin, end) over [0, total) split into chunks over the pool's threads; throws if a chunk threw
// (the entry point then returns 1).
void parallel_for(int64_t total, const std::function<void(int64_t, int64_t)>& body);

// The thread count parallel_for will use next.
int64_t threads_now();

// A scratch buffer of at least `floats` floats per thread, kept between calls (the pool's threads live as
// long as the process). One buffer per thread: a kernel holds one pointer into it at a time.
float* scratch(int64_t floats);

// ---- BatchNorm folding (batchnorm.cc) ----

// folded[c, :] = w[c, :] * s, bias[c] = beta - mean * s, s = gamma / sqrt(var + eps), for every one of `channels`
// rows of `row` values (no FMA contraction: the same values wherever a fold is computed).
void fold_batch_norm(const float* w, int64_t channels, int64_t row, const float* gamma, const float* beta,
                     const float* mean, const float* var, float eps, float* folded, float* bias);

// ---- the arguments of one call ----

inline bool is_f32(const char* dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }

// The arguments of one call, checked: every shape the header promises, so a caller's mistake
// is an error (return 1), never an out-of-bounds access.
struct Args {
  int nparam;
  void** params;
  int* ndims;
  int64_t** shapes;
  const char** dtypes;

  // Parameter i is an fp32 tensor of shape (a, b, c, d); a negative entry is not compared.
  bool is(int i, int64_t a, int64_t b, int64_t c, int64_t d) const {
    if (i >= nparam || ndims[i] != 4 || !is_f32(dtypes[i])) return false;
    const int64_t want[4] = {a, b, c, d};
    for (int k = 0; k < 4; ++k) {
      if (want[k] >= 0 ? shapes[i][k] != want[k] : shapes[i][k] < 0) return false;
    }
    return true;
  }
  // Parameter i is an fp32 vector of length n.
  bool is_vector(int i, int64_t n) const {
    return i < nparam && ndims[i] == 1 && is_f32(dtypes[i]) && shapes[i][0] == n;
  }
  // Parameter i is an fp32 matrix of shape (r, c).
  bool is_matrix(int i, int64_t r, int64_t c) const {
    return i < nparam && ndims[i] == 2 && is_f32(dtypes[i]) && shapes[i][0] == r && shapes[i][1] == c;
  }
  const int64_t* shape(int i) const { return shapes[i]; }
  const float* in(int i) const { return static_cast<const float*>(params[i]); }
  float* out(int i) const { return static_cast<float*>(params[i]); }
};

// ---- plane helpers of the 3x3 kernels (dense3x3.cc, depthwise.cc, expansion_depthwise.cc) ----

// Sums over a plane: float over runs of SUM_RUN values (vectorized), the runs added in double.
constexpr int64_t SUM_RUN = 256;

// The sum of len values: float over runs of SUM_RUN values (vectorized), the runs added in double.
inline double plane_sum(const float* __restrict__ x, int64_t len) {
  double total = 0.0;
  for (int64_t start = 0; start < len; start += SUM_RUN) {
    const int64_t end = std::min(len, start + SUM_RUN);
    float run = 0.0f;
#pragma omp simd reduction(+ : run)
    for (int64_t i = start; i < end; ++i) run += x[i];
    total += run;
  }
  return total;
}

// y = min(max(y + bias, 0), 6) over one plane: the folded BatchNorm and ReLU6 of inference.
inline void bias_relu6_plane(float* __restrict__ y, int64_t count, float bias) {
  const vecf b = splat(&bias);
  int64_t i = 0;
  for (; i + VEC <= count; i += VEC) store(y + i, relu6(load(y + i) + b));
  for (; i < count; ++i) y[i] = std::min(std::max(y[i] + bias, 0.0f), 6.0f);
}

// Copies one input row (W values, each through `f`) into its padded row (layout of Geometry): padded
// columns 0 and W + 1 and the spare last float zero, every other float written.
template <typename F>
inline void pad_row_with(const Geometry& g, const float* __restrict__ in, float* __restrict__ row, F f) {
  const int64_t right = g.column(g.width + 1), pairs = g.width / 2;
  row[0] = 0.0f;
  row[right] = 0.0f;
  row[g.pitch - 1] = 0.0f;
  if (g.stride == 1) {
#pragma omp simd
    for (int64_t i = 0; i < g.width; ++i) row[1 + i] = f(in[i]);
  } else {
    float* __restrict__ odd = row + g.even_len;
    float* __restrict__ even = row + 1;
    // input column iw sits at padded column iw + 1: even iw -> odd half, odd iw -> even half.
    for (int64_t m = 0; m < pairs; ++m) {
      odd[m] = f(in[2 * m]);
      even[m] = f(in[2 * m + 1]);
    }
    if (g.width % 2) odd[pairs] = f(in[g.width - 1]);
  }
}

// Stores v = in[j0 .. j0 + VEC) of one input row (j0 even) where pad_row_with puts them in its padded row: at
// stride 1 as they are, after padded column 0; at stride 2 de-interleaved, in[j0 + 2q] (padded column
// j0 + 2q + 1) into the odd half, in[j0 + 2q + 1] into the even half. The border is not written.
inline void store_in_padded_row(const Geometry& g, float* row, int64_t j0, vecf v) {
  if (g.stride == 1) {
    store(row + 1 + j0, v);
    return;
  }
  float* evens = row + g.even_len + j0 / 2;
  float* odds = row + 1 + j0 / 2;
#if defined(MBV2_AVX512_INTRINSICS)
  const __m512 p = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15), (__m512)v);
  _mm256_storeu_ps(evens, _mm512_castps512_ps256(p));
  _mm256_storeu_ps(odds, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1)));
#elif defined(MBV2_AVX2_INTRINSICS)
  const __m256 p = _mm256_permutevar8x32_ps((__m256)v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
  _mm_storeu_ps(evens, _mm256_castps256_ps128(p));
  _mm_storeu_ps(odds, _mm256_extractf128_ps(p, 1));
#else
  for (int q = 0; q < VEC / 2; ++q) {
    evens[q] = v[2 * q];
    odds[q] = v[2 * q + 1];
  }
#endif
}

// store_in_padded_row of the NR values lo = in[j0 .. j0 + VEC), hi = in[j0 + VEC .. j0 + NR) (j0 even, all in the
// row): at stride 2 the evens of both vectors in one store and the odds in another.
inline void store_pair_in_padded_row(const Geometry& g, float* row, int64_t j0, vecf lo, vecf hi) {
#if defined(MBV2_AVX2_INTRINSICS)
  if (g.stride == 2) {
    // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6] -> [lo0 lo2 lo4 lo6 hi0 hi2 hi4 hi6], and the odd lanes alike.
    const __m256 evens = _mm256_shuffle_ps((__m256)lo, (__m256)hi, 0x88), odds = _mm256_shuffle_ps((__m256)lo, (__m256)hi, 0xDD);
    _mm256_storeu_ps(row + g.even_len + j0 / 2, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(evens), 0xD8)));
    _mm256_storeu_ps(row + 1 + j0 / 2, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odds), 0xD8)));
    return;
  }
#endif
  store_in_padded_row(g, row, j0, lo);
  store_in_padded_row(g, row, j0 + VEC, hi);
}

// The border of a padded row that store_in_padded_row filled: padded columns 0 and W + 1 and the spare last float.
inline void zero_padded_row_border(const Geometry& g, float* row) {
  row[0] = 0.0f;
  row[g.column(g.width + 1)] = 0.0f;
  row[g.pitch - 1] = 0.0f;
}

// Copies one H x W plane into a zero-padded plane (layout of Geometry), each value through `f`.
template <typename F>
inline void pad_plane_with(const Geometry& g, const float* __restrict__ src, float* __restrict__ dst, F f) {
  // Only the border is zeroed: the top and bottom rows, and in every row padded columns 0 and W + 1
  // and the spare last float; every other float is written from src.
  std::memset(dst, 0, sizeof(float) * g.pitch);
  std::memset(dst + (g.height + 1) * g.pitch, 0, sizeof(float) * g.pitch);
  for (int64_t h = 0; h < g.height; ++h) pad_row_with(g, src + h * g.width, dst + (h + 1) * g.pitch, f);
}

inline void pad_plane(const Geometry& g, const float* __restrict__ src, float* __restrict__ dst) {
  pad_plane_with(g, src, dst, [](float v) { return v; });
}

// pad_plane of relu6(src + bias): the padding stays 0 (it pads the activation).
inline void pad_plane_bias_relu6(const Geometry& g, const float* __restrict__ src, float bias, float* __restrict__ dst) {
  pad_plane_with(g, src, dst, [bias](float v) { return std::min(std::max(v + bias, 0.0f), 6.0f); });
}

// Outputs per chunk of forward_rows_flat (on the stack).
constexpr int64_t FLAT_FLOATS = 2048;

// The sum every 3x3 forward computes for one output vector, taps in this order (w0 * top-left first); the
// contraction into FMAs is the compiler's, the same wherever it is written this way.
inline __attribute__((always_inline)) vecf taps3x3(const vecf* w, vecf a0, vecf a1, vecf a2, vecf b0, vecf b1, vecf b2,
                                                   vecf c0, vecf c1, vecf c2) {
  return w[0] * a0 + w[1] * a1 + w[2] * a2 + w[3] * b0 + w[4] * b1 + w[5] * b2 + w[6] * c0 + w[7] * c1 + w[8] * c2;
}

// forward_rows where an output row holds at least one vector: explicit vectors along the row, the last one
// overlapping the one before where the width is not a whole number of vectors (its outputs computed twice,
// the same way). At stride 1 two output rows share a pass: their middle input rows are loaded once (12
// loads for 18 products instead of 18). Measured per output vector against the compiler's own loops
// (AVX2): 14x14 29 -> 17 cycles, 28x28 19 -> 13, 56x56 12 -> 11; stride 2, 56 -> 28: 57 -> 19.
// Each output vector v is stored as epilogue(v).
template <typename Epilogue>
inline __attribute__((always_inline)) void forward_rows_vectors_with(const Geometry& g, const float* padded,
                                                                     const float* w, float* y, int64_t rows,
                                                                     Epilogue epilogue) {
  const int64_t wo = g.out_width, pitch = g.pitch, t0 = g.tap(0), t1 = g.tap(1), t2 = g.tap(2);
  vecf wv[9];
  for (int k = 0; k < 9; ++k) wv[k] = splat(w + k);
  int64_t oh = 0;
  if (g.stride == 1) {
    for (; oh + 2 <= rows; oh += 2) {
      const float* r0 = padded + oh * pitch;
      const float *r1 = r0 + pitch, *r2 = r1 + pitch, *r3 = r2 + pitch;
      float* out = y + oh * wo;
      for (int64_t j = 0; j < wo; j += VEC) {
        const int64_t o = j + VEC <= wo ? j : wo - VEC;
        const vecf b0 = load(r1 + o), b1 = load(r1 + o + 1), b2 = load(r1 + o + 2);
        const vecf c0 = load(r2 + o), c1 = load(r2 + o + 1), c2 = load(r2 + o + 2);
        store(out + o, epilogue(taps3x3(wv, load(r0 + o), load(r0 + o + 1), load(r0 + o + 2), b0, b1, b2, c0, c1, c2)));
        store(out + wo + o, epilogue(taps3x3(wv, b0, b1, b2, c0, c1, c2, load(r3 + o), load(r3 + o + 1), load(r3 + o + 2))));
      }
    }
  }
  for (; oh < rows; ++oh) {
    const float* top = padded + (g.stride * oh) * pitch;
    const float *mid = top + pitch, *bot = mid + pitch;
    float* out = y + oh * wo;
    for (int64_t j = 0; j < wo; j += VEC) {
      const int64_t o = j + VEC <= wo ? j : wo - VEC;
      store(out + o, epilogue(taps3x3(wv, load(top + t0 + o), load(top + t1 + o), load(top + t2 + o), load(mid + t0 + o),
                                      load(mid + t1 + o), load(mid + t2 + o), load(bot + t0 + o), load(bot + t1 + o),
                                      load(bot + t2 + o))));
    }
  }
}

inline void forward_rows_vectors(const Geometry& g, const float* padded, const float* w, float* y, int64_t rows) {
  forward_rows_vectors_with(g, padded, w, y, rows, [](vecf v) { return v; });
}

// forward_rows at stride 1 where a row is narrower than a vector (7x7 on AVX2), the rows flattened: output
// (oh, ow) is the run's element oh * pitch + ow, whose taps are at fixed offsets (kh * pitch + kw) in the
// padded rows, so one unit-stride loop covers many rows; the pitch - Wo elements between rows are computed
// and dropped. The same expression per output as the other forms: the same values, bit for bit. The last
// row stops at its Wo-th output, so no tap reads past the padded row after it.
inline void forward_rows_flat(const Geometry& g, const float* __restrict__ padded, const float* w,
                              float* __restrict__ y, int64_t rows) {
  const int64_t wo = g.out_width, pitch = g.pitch, rows_per_chunk = FLAT_FLOATS / pitch;
  const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8];
  float run[FLAT_FLOATS];
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
    const int64_t r1 = std::min(rows, r0 + rows_per_chunk), count = (r1 - r0 - 1) * pitch + wo;
    const float* top = padded + r0 * pitch;
    const float* __restrict__ a0 = top;
    const float* __restrict__ a1 = top + 1;
    const float* __restrict__ a2 = top + 2;
    const float* __restrict__ b0 = top + pitch;
    const float* __restrict__ b1 = top + pitch + 1;
    const float* __restrict__ b2 = top + pitch + 2;
    const float* __restrict__ c0 = top + 2 * pitch;
    const float* __restrict__ c1 = top + 2 * pitch + 1;
    const float* __restrict__ c2 = top + 2 * pitch + 2;
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) {
      run[i] = w0 * a0[i] + w1 * a1[i] + w2 * a2[i] + w3 * b0[i] + w4 * b1[i] + w5 * b2[i] + w6 * c0[i] + w7 * c1[i] +
               w8 * c2[i];
    }
    for (int64_t oh = r0; oh < r1; ++oh) std::memcpy(y + oh * wo, run + (oh - r0) * pitch, sizeof(float) * wo);
  }
}

// `rows` output rows = correlation of padded rows with the 3x3 kernel w: `padded` is the padded row of the
// first one's top taps (padded row stride * oh of a whole plane), `y` its output row.
inline void forward_rows(const Geometry& g, const float* __restrict__ padded, const float* w, float* __restrict__ y,
                         int64_t rows) {
  if (g.out_width >= VEC) {
    forward_rows_vectors(g, padded, w, y, rows);
    return;
  }
  if (g.stride == 1 && g.pitch * 2 <= FLAT_FLOATS) {
    forward_rows_flat(g, padded, w, y, rows);
    return;
  }
  const int64_t wo = g.out_width;
  const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8];
  const int64_t t0 = g.tap(0), t1 = g.tap(1), t2 = g.tap(2);
  for (int64_t oh = 0; oh < rows; ++oh) {
    float* __restrict__ out = y + oh * wo;
    // All 9 taps in one pass: each output element is loaded/stored once.
    const float* top = padded + (g.stride * oh) * g.pitch;
    const float* mid = top + g.pitch;
    const float* bot = mid + g.pitch;
    const float* __restrict__ a0 = top + t0;
    const float* __restrict__ a1 = top + t1;
    const float* __restrict__ a2 = top + t2;
    const float* __restrict__ b0 = mid + t0;
    const float* __restrict__ b1 = mid + t1;
    const float* __restrict__ b2 = mid + t2;
    const float* __restrict__ c0 = bot + t0;
    const float* __restrict__ c1 = bot + t1;
    const float* __restrict__ c2 = bot + t2;
#pragma omp simd
    for (int64_t ow = 0; ow < wo; ++ow) {
      out[ow] = w0 * a0[ow] + w1 * a1[ow] + w2 * a2[ow] + w3 * b0[ow] + w4 * b1[ow] + w5 * b2[ow] + w6 * c0[ow] +
                w7 * c1[ow] + w8 * c2[ow];
    }
  }
}

// forward_rows then bias_relu6_plane over those rows: min(max(conv + bias, 0), 6), the same values; where an
// output row holds a vector, in the same pass (no second pass over the rows).
inline void forward_rows_bias_relu6(const Geometry& g, const float* __restrict__ padded, const float* w, float bias,
                                    float* __restrict__ y, int64_t rows) {
  if (g.out_width >= VEC) {
    const vecf b = splat(&bias);
    forward_rows_vectors_with(g, padded, w, y, rows, [b](vecf v) { return relu6(v + b); });
    return;
  }
  forward_rows(g, padded, w, y, rows);
  bias_relu6_plane(y, rows * g.out_width, bias);
}

// y (Ho x Wo) = correlation of the padded plane with the 3x3 kernel w.
inline void forward_plane(const Geometry& g, const float* __restrict__ padded, const float* w, float* __restrict__ y) {
  forward_rows(g, padded, w, y, g.out_height);
}

// acc[9] += the 9 dot products of dy with the shifted taps of a padded plane.
inline void weight_grad_plane(const Geometry& g, const float* __restrict__ padded, const float* __restrict__ dy,
                       double* acc) {
  const int64_t wo = g.out_width;
  const int64_t t0 = g.tap(0), t1 = g.tap(1), t2 = g.tap(2);
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
    // All 9 taps in one pass over the row (dy read once); per-row float sums (vectorized),
    // rows summed in double: stable for large planes.
    const float* top = padded + (g.stride * oh) * g.pitch;
    const float* mid = top + g.pitch;
    const float* bot = mid + g.pitch;
    const float* __restrict__ a0 = top + t0;
    const float* __restrict__ a1 = top + t1;
    const float* __restrict__ a2 = top + t2;
    const float* __restrict__ b0 = mid + t0;
    const float* __restrict__ b1 = mid + t1;
    const float* __restrict__ b2 = mid + t2;
    const float* __restrict__ c0 = bot + t0;
    const float* __restrict__ c1 = bot + t1;
    const float* __restrict__ c2 = bot + t2;
    const float* __restrict__ d = dy + oh * wo;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
    for (int64_t ow = 0; ow < wo; ++ow) {
      const float v = d[ow];
      s0 += a0[ow] * v;
      s1 += a1[ow] * v;
      s2 += a2[ow] * v;
      s3 += b0[ow] * v;
      s4 += b1[ow] * v;
      s5 += b2[ow] * v;
      s6 += c0[ow] * v;
      s7 += c1[ow] * v;
      s8 += c2[ow] * v;
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

// g[i] = d[i] where 0 < y[i] < 6, else 0 (ReLU6's gradient read from its clamped output y), over
// [start, stop); returns the run's float sum of g. The one masked sum of bias_relu6_grad and the
// fused depthwise backwards: the same loop everywhere, so their sums agree bit for bit.
inline __attribute__((always_inline)) float relu6_gate_run(const float* __restrict__ d, const float* __restrict__ y,
                                                           float* __restrict__ g, int64_t start, int64_t stop) {
  float run = 0.0f;
#pragma omp simd reduction(+ : run)
  for (int64_t i = start; i < stop; ++i) {
    g[i] = (y[i] > 0.0f && y[i] < 6.0f) ? d[i] : 0.0f;
    run += g[i];
  }
  return run;
}

// relu6_gate_run over a whole plane in runs of SUM_RUN, the runs added to `sum` in double.
inline void relu6_gate_plane(const float* d, const float* y, float* g, int64_t count, double& sum) {
  for (int64_t start = 0; start < count; start += SUM_RUN) sum += relu6_gate_run(d, y, g, start, std::min(count, start + SUM_RUN));
}

// ---- the register tile of the 1x1 products (pointwise.cc, expansion_depthwise.cc) ----
//
// One tile is MR rows x NR columns of a matrix product (`tile_product`): per step of the shared depth,
// two vectors of a B panel meet MR broadcasts of an A panel. Both operands are packed first into
// contiguous, zero-padded panels (A: [depth][MR], B: [depth][NR]), so the tile reads memory
// sequentially whatever the layer's shape.
constexpr int NR = 2 * VEC;

struct Tile {
  vecf acc[MR][2];
};

// acc = A^T B over `depth` steps: step k's MR broadcasts from a_at(k) + r * a_row (r < MR), its two B vectors at
// b_row(k) .. + NR. Every index is a compile-time constant after unrolling: an index known only at run time would
// keep the accumulators in memory. The sums are local (copied out at the end): accumulating into `t` itself
// keeps them in memory.
template <typename ARow, typename BRow>
inline __attribute__((always_inline)) void tile_product_of(ARow a_at, int64_t a_row, BRow b_row, int64_t depth,
                                                           Tile& t) {
  vecf acc[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = vecf{};
  for (int64_t k = 0; k < depth; ++k) {
    const float* a = a_at(k);
    const float* b = b_row(k);
    const vecf b0 = load(b), b1 = load(b + VEC);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const vecf w = splat(a + r * a_row);
      acc[r][0] += w * b0;
      acc[r][1] += w * b1;
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    t.acc[r][0] = acc[r][0];
    t.acc[r][1] = acc[r][1];
  }
}

// The tile over a packed A panel, [depth][MR].
template <typename BRow>
inline __attribute__((always_inline)) void tile_product_of(const float* __restrict__ a, BRow b_row, int64_t depth,
                                                           Tile& t) {
  tile_product_of([a](int64_t k) { return a + k * MR; }, 1, b_row, depth, t);
}

// The tile with A read in place: row r of A is a + r * a_row, its `depth` values contiguous (an NHWC pixel's
// channels), over a packed B panel.
inline __attribute__((always_inline)) void tile_product_a_rows(const float* __restrict__ a, int64_t a_row,
                                                               const float* __restrict__ b, int64_t depth, Tile& t) {
  tile_product_of([a](int64_t k) { return a + k; }, a_row, [b](int64_t k) { return b + k * NR; }, depth, t);
}

// The tile over a packed B panel, [depth][NR].
inline __attribute__((always_inline)) void tile_product(const float* __restrict__ a, const float* __restrict__ b,
                                                        int64_t depth, Tile& t) {
  tile_product_of(a, [b](int64_t k) { return b + k * NR; }, depth, t);
}

// The tile with B read in place: step k's two vectors are rows[k][offset .. offset + NR), runs of any layout
// (the dense 3x3 forward's taps in its padded planes), so no B panel is packed.
inline __attribute__((always_inline)) void tile_product_rows(const float* __restrict__ a, const float* const* rows,
                                                             int64_t offset, int64_t depth, Tile& t) {
  tile_product_of(a, [rows, offset](int64_t k) { return rows[k] + offset; }, depth, t);
}

// One tile row of NR outputs at `out`, the first `valid` of them stored (valid < NR: the end of a row or of
// the columns), each plus the `residual` at the same place when one is given.
inline __attribute__((always_inline)) void store_tile_row(float* out, vecf lo, vecf hi, int64_t valid,
                                                          const float* residual) {
  if (valid == NR) {
    if (residual != nullptr) {
      lo += load(residual);
      hi += load(residual + VEC);
    }
    store(out, lo);
    store(out + VEC, hi);
  } else {
    float values[NR];
    store(values, lo);
    store(values + VEC, hi);
    for (int64_t j = 0; j < valid; ++j) out[j] = residual != nullptr ? values[j] + residual[j] : values[j];
  }
}

// A tile row's epilogue: + *bias (when given), then ReLU6 (with `relu6`): one add, then the clamps. Every
// product that feeds a ReLU6 layer ends here, so its two forms (pointwise_product, pointwise_columns) agree bit for bit.
inline __attribute__((always_inline)) void bias_relu6_epilogue(vecf& lo, vecf& hi, const float* bias, bool relu6) {
  if (bias != nullptr) {
    lo += splat(bias);
    hi += splat(bias);
  }
  if (relu6) {
    lo = mbv2::relu6(lo);
    hi = mbv2::relu6(hi);
  }
}

// Row panels of the (rows x depth) matrix A[i, j] = a[i * row_stride + j * col_stride]:
// packed[panel][j][r], rows past the end zero.
inline std::vector<float> pack_rows(const float* a, int64_t rows, int64_t depth, int64_t row_stride, int64_t col_stride) {
  const int64_t panels = (rows + MR - 1) / MR;
  std::vector<float> packed(panels * depth * MR, 0.0f);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < depth; ++j) packed[((i / MR) * depth + j) * MR + i % MR] = a[i * row_stride + j * col_stride];
  return packed;
}

}  // namespace mbv2

// Exported from the library (built with -fvisibility=hidden: nothing else is).
#define MBV2_EXPORT extern "C" __attribute__((visibility("default")))

// One entry point `name` computing `call` (an int status) from `args` (an mbv2::Args), used inside namespace
// mbv2 (`call` names the file's kernels; the symbol is the bare `name`). Nothing may cross the
// extern "C" boundary into MindSpore: an exception there (allocation, thread creation) would call
// std::terminate and abort the process without a Python traceback.
#define MBV2_ENTRY(name, call)                                                                              \
  MBV2_EXPORT int name(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, \
                       void*) {                                                                             \
    try {                                                                                                   \
      const mbv2::Args args{nparam, params, ndims, shapes, dtypes};                                         \
      return call;                                                                                          \
    } catch (...) {                                                                                         \
      return 1;                                                                                             \
    }                                                                                                       \
  }

#endif  // MBV2_KERNELS_COMMON_H_
