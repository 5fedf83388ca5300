// 3x3 convolutions (padding 1, stride 1 or 2, fp32, NCHW) for MindSpore's CPU backend.
//
// MindSpore 2.10 hands oneDNN plain NCHW tensors for these layers and gets its
// reference (scalar) implementation: a depthwise 3x3 layer of MobileNetV2 runs
// ~14x slower than PyTorch's, the stem ~27x (docs/design.md section 7). These
// kernels are registered through `mindspore.ops.Custom(func_type="aot")` by
// ms_impl/fast_conv.py, which also builds this file.
//
// Entry points (MindSpore AOT signature; inputs first, then the output):
//   dw_forward_s{1,2}    (x[N,C,H,W], w[C,1,3,3])        -> y[N,C,Ho,Wo]
//   dw_grad_input_s{1,2} (dy[N,C,Ho,Wo], w, x)           -> dx[N,C,H,W]   (x only for its shape)
//   dw_grad_weight_s{1,2}(x, dy)                         -> dw[C,1,3,3]
//   dense_forward_s{1,2}     (x[N,Ci,H,W], w[Co,Ci,3,3]) -> y[N,Co,Ho,Wo]
//   dense_grad_input_s{1,2}  (dy, w, x)                  -> dx[N,Ci,H,W]
//   dense_grad_weight_s{1,2} (x, dy)                     -> dw[Co,Ci,3,3]
// with Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1. Each returns 0, or 1 on a
// dtype or shape mismatch (MindSpore then raises).
//
// Scheme: every input plane is copied once into a zero-padded plane
// ((H+2) rows). For stride 2 each padded row is stored de-interleaved (even
// columns, then odd columns), so that for every kernel column kw the taps
// x[s*ow + kw] of one output row are a contiguous run: all inner loops are
// unit-stride and vectorize. Gradients w.r.t. the input: at stride 1 the
// forward pass of dy with the flipped kernel; at stride 2 a scatter into a
// padded plane of the same layout, interior copied out. Gradients w.r.t. the
// weight are 9 dot products per plane pair. Work is split over the cores with
// std::thread (thread count: $MBV2_KERNEL_THREADS, else the CPUs this process
// may run on).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include <sched.h>

namespace {

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

int thread_count() {
  if (const char* env = std::getenv("MBV2_KERNEL_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs body(worker, begin, end) over [0, total) split into contiguous chunks.
void parallel_for(int64_t total, const std::function<void(int, int64_t, int64_t)>& body) {
  const int workers = static_cast<int>(std::min<int64_t>(thread_count(), total));
  if (workers <= 1) {
    if (total > 0) body(0, 0, total);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  const int64_t chunk = (total + workers - 1) / workers;
  for (int t = 1; t < workers; ++t) {
    const int64_t begin = t * chunk, end = std::min(total, begin + chunk);
    if (begin < end) pool.emplace_back(body, t, begin, end);
  }
  body(0, 0, std::min(total, chunk));
  for (auto& th : pool) th.join();
}

// Copies one H x W plane into a zero-padded plane (layout of Geometry).
void pad_plane(const Geometry& g, const float* __restrict__ src, float* __restrict__ dst) {
  std::memset(dst, 0, sizeof(float) * g.plane);
  for (int64_t h = 0; h < g.height; ++h) {
    float* __restrict__ row = dst + (h + 1) * g.pitch;
    const float* __restrict__ in = src + h * g.width;
    if (g.stride == 1) {
      std::memcpy(row + 1, in, sizeof(float) * g.width);
    } else {
      float* __restrict__ odd = row + g.even_len;
      // input column iw sits at padded column iw + 1: odd iw -> even column.
      for (int64_t iw = 0; iw < g.width; iw += 2) odd[iw / 2] = in[iw];
      for (int64_t iw = 1; iw < g.width; iw += 2) row[(iw + 1) / 2] = in[iw];
    }
  }
}

// y (Ho x Wo) (+)= correlation of the padded plane with the 3x3 kernel w.
void forward_plane(const Geometry& g, const float* __restrict__ padded, const float* w, float* __restrict__ y,
                   bool accumulate) {
  const int64_t wo = g.out_width;
  const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8];
  const int64_t t0 = g.tap(0), t1 = g.tap(1), t2 = g.tap(2);
  for (int64_t oh = 0; oh < g.out_height; ++oh) {
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
      const float sum = w0 * a0[ow] + w1 * a1[ow] + w2 * a2[ow] + w3 * b0[ow] + w4 * b1[ow] + w5 * b2[ow] +
                        w6 * c0[ow] + w7 * c1[ow] + w8 * c2[ow];
      out[ow] = accumulate ? out[ow] + sum : sum;
    }
  }
}

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
      for (int64_t iw = 0; iw < g.width; ++iw) {
        const float v = row[g.column(iw + 1)];
        out[iw] = accumulate ? out[iw] + v : v;
      }
    }
  }
}

// acc[9] += the 9 dot products of dy with the shifted taps of a padded plane.
void weight_grad_plane(const Geometry& g, const float* __restrict__ padded, const float* __restrict__ dy,
                       double* acc) {
  const int64_t wo = g.out_width;
  for (int kh = 0; kh < 3; ++kh) {
    for (int kw = 0; kw < 3; ++kw) {
      // Per-row float sums (vectorized), rows summed in double: stable for large planes.
      double total = 0.0;
      for (int64_t oh = 0; oh < g.out_height; ++oh) {
        const float* __restrict__ a = padded + (g.stride * oh + kh) * g.pitch + g.tap(kw);
        const float* __restrict__ d = dy + oh * wo;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t ow = 0; ow < wo; ++ow) sum += a[ow] * d[ow];
        total += sum;
      }
      acc[kh * 3 + kw] += total;
    }
  }
}

bool is_f32(const char* dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }

bool shapes_agree(int nparam, const int* ndims, int64_t** shapes, const char** dtypes) {
  for (int i = 0; i < nparam; ++i) {
    if (ndims[i] != 4 || !is_f32(dtypes[i])) return false;
  }
  return true;
}

// ---- depthwise: channel c of x meets channel c of w ----

int dw_forward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, int stride) {
  if (nparam != 3 || !shapes_agree(nparam, ndims, shapes, dtypes)) return 1;
  const int64_t* xs = shapes[0];
  const int64_t n = xs[0], c = xs[1];
  const Geometry g(xs[2], xs[3], stride);
  if (shapes[1][0] != c || shapes[2][2] != g.out_height || shapes[2][3] != g.out_width) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[2]);
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  parallel_for(n * c, [&](int, int64_t begin, int64_t end) {
    std::vector<float> padded(g.plane);
    for (int64_t p = begin; p < end; ++p) {
      pad_plane(g, x + p * in_plane, padded.data());
      forward_plane(g, padded.data(), w + (p % c) * 9, y + p * out_plane, false);
    }
  });
  return 0;
}

int dw_grad_input(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, int stride) {
  if (nparam != 4 || !shapes_agree(nparam, ndims, shapes, dtypes)) return 1;
  const int64_t* xs = shapes[3];
  const int64_t n = xs[0], c = xs[1];
  const Geometry g(xs[2], xs[3], stride);
  if (shapes[0][2] != g.out_height || shapes[0][3] != g.out_width || shapes[1][0] != c) return 1;
  const float* dy = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  float* dx = static_cast<float*>(params[3]);
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  parallel_for(n * c, [&](int, int64_t begin, int64_t end) {
    std::vector<float> padded(g.plane);
    for (int64_t p = begin; p < end; ++p) {
      const float* wp = w + (p % c) * 9;
      if (stride == 1) {
        // Stride 1: the input gradient is the forward pass of dy with the kernel flipped (one pass per row).
        float flipped[9];
        for (int k = 0; k < 9; ++k) flipped[k] = wp[8 - k];
        pad_plane(g, dy + p * out_plane, padded.data());
        forward_plane(g, padded.data(), flipped, dx + p * in_plane, false);
      } else {
        std::fill(padded.begin(), padded.end(), 0.0f);
        scatter_plane(g, dy + p * out_plane, wp, padded.data());
        unpad_plane(g, padded.data(), dx + p * in_plane, false);
      }
    }
  });
  return 0;
}

int dw_grad_weight(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, int stride) {
  if (nparam != 3 || !shapes_agree(nparam, ndims, shapes, dtypes)) return 1;
  const int64_t* xs = shapes[0];
  const int64_t n = xs[0], c = xs[1];
  const Geometry g(xs[2], xs[3], stride);
  if (shapes[1][2] != g.out_height || shapes[1][3] != g.out_width || shapes[2][0] != c) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* dy = static_cast<const float*>(params[1]);
  float* dw = static_cast<float*>(params[2]);
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  // Split over channels: each worker owns whole rows of dw, no reduction across workers.
  parallel_for(c, [&](int, int64_t begin, int64_t end) {
    std::vector<float> padded(g.plane);
    for (int64_t ch = begin; ch < end; ++ch) {
      double acc[9] = {0};
      for (int64_t b = 0; b < n; ++b) {
        const int64_t p = b * c + ch;
        pad_plane(g, x + p * in_plane, padded.data());
        weight_grad_plane(g, padded.data(), dy + p * out_plane, acc);
      }
      for (int k = 0; k < 9; ++k) dw[ch * 9 + k] = static_cast<float>(acc[k]);
    }
  });
  return 0;
}

// ---- dense (groups = 1): output channel co sums over all input channels ----

// Pads every (image, channel) plane of x once: the dense kernels reuse each many times.
std::vector<float> pad_all(const Geometry& g, const float* x, int64_t planes) {
  std::vector<float> padded(planes * g.plane);
  const int64_t in_plane = g.height * g.width;
  parallel_for(planes, [&](int, int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) pad_plane(g, x + p * in_plane, padded.data() + p * g.plane);
  });
  return padded;
}

int dense_forward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, int stride) {
  if (nparam != 3 || !shapes_agree(nparam, ndims, shapes, dtypes)) return 1;
  const int64_t* xs = shapes[0];
  const int64_t n = xs[0], ci = xs[1], co = shapes[1][0];
  const Geometry g(xs[2], xs[3], stride);
  if (shapes[1][1] != ci || shapes[2][1] != co || shapes[2][2] != g.out_height || shapes[2][3] != g.out_width)
    return 1;
  const float* w = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[2]);
  const std::vector<float> padded = pad_all(g, static_cast<const float*>(params[0]), n * ci);
  const int64_t out_plane = g.out_height * g.out_width;
  parallel_for(n * co, [&](int, int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / co, o = p % co;
      for (int64_t i = 0; i < ci; ++i)
        forward_plane(g, padded.data() + (b * ci + i) * g.plane, w + (o * ci + i) * 9, y + p * out_plane, i > 0);
    }
  });
  return 0;
}

int dense_grad_input(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, int stride) {
  if (nparam != 4 || !shapes_agree(nparam, ndims, shapes, dtypes)) return 1;
  const int64_t* xs = shapes[3];
  const int64_t n = xs[0], ci = xs[1], co = shapes[1][0];
  const Geometry g(xs[2], xs[3], stride);
  if (shapes[1][1] != ci || shapes[0][1] != co || shapes[0][2] != g.out_height || shapes[0][3] != g.out_width)
    return 1;
  const float* dy = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  float* dx = static_cast<float*>(params[3]);
  const int64_t in_plane = g.height * g.width, out_plane = g.out_height * g.out_width;
  parallel_for(n * ci, [&](int, int64_t begin, int64_t end) {
    std::vector<float> padded(g.plane);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / ci, i = p % ci;
      std::fill(padded.begin(), padded.end(), 0.0f);
      for (int64_t o = 0; o < co; ++o)
        scatter_plane(g, dy + (b * co + o) * out_plane, w + (o * ci + i) * 9, padded.data());
      unpad_plane(g, padded.data(), dx + p * in_plane, false);
    }
  });
  return 0;
}

int dense_grad_weight(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, int stride) {
  if (nparam != 3 || !shapes_agree(nparam, ndims, shapes, dtypes)) return 1;
  const int64_t* xs = shapes[0];
  const int64_t n = xs[0], ci = xs[1], co = shapes[1][1];
  const Geometry g(xs[2], xs[3], stride);
  if (shapes[1][2] != g.out_height || shapes[1][3] != g.out_width || shapes[2][0] != co || shapes[2][1] != ci)
    return 1;
  const float* dy = static_cast<const float*>(params[1]);
  float* dw = static_cast<float*>(params[2]);
  const std::vector<float> padded = pad_all(g, static_cast<const float*>(params[0]), n * ci);
  const int64_t out_plane = g.out_height * g.out_width;
  parallel_for(co * ci, [&](int, int64_t begin, int64_t end) {
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

#define MBV2_ENTRY(name, impl, stride)                                                                   \
  extern "C" int name(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, \
                      void*) {                                                                           \
    return impl(nparam, params, ndims, shapes, dtypes, stride);                                          \
  }

MBV2_ENTRY(dw_forward_s1, dw_forward, 1)
MBV2_ENTRY(dw_forward_s2, dw_forward, 2)
MBV2_ENTRY(dw_grad_input_s1, dw_grad_input, 1)
MBV2_ENTRY(dw_grad_input_s2, dw_grad_input, 2)
MBV2_ENTRY(dw_grad_weight_s1, dw_grad_weight, 1)
MBV2_ENTRY(dw_grad_weight_s2, dw_grad_weight, 2)
MBV2_ENTRY(dense_forward_s1, dense_forward, 1)
MBV2_ENTRY(dense_forward_s2, dense_forward, 2)
MBV2_ENTRY(dense_grad_input_s1, dense_grad_input, 1)
MBV2_ENTRY(dense_grad_input_s2, dense_grad_input, 2)
MBV2_ENTRY(dense_grad_weight_s1, dense_grad_weight, 1)
MBV2_ENTRY(dense_grad_weight_s2, dense_grad_weight, 2)
