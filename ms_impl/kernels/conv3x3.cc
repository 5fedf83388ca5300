// 3x3 convolutions (padding 1, stride 1 or 2, fp32, NCHW) and BatchNorm (+ ReLU6) for MindSpore's CPU backend.
//
// MindSpore 2.10 hands oneDNN plain NCHW tensors for these layers and gets its
// reference (scalar) implementation: a depthwise 3x3 layer of MobileNetV2 runs
// ~14x slower than PyTorch's, the stem ~27x (docs/design.md section 7). These
// kernels are registered through `mindspore.ops.Custom(func_type="aot")` by
// ms_impl/fast_conv.py, which also builds this file.
//
// Entry points (MindSpore AOT signature; inputs first, then the outputs):
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
//   dense_forward_s{1,2}     (x[N,Ci,H,W], w[Co,Ci,3,3]) -> y[N,Co,Ho,Wo]
//   dense_forward_bias_relu6_s{1,2} (x, w, b[Co])        -> y = min(max(conv + b, 0), 6)
//   dense_grad_input_s{1,2}  (dy, w, x)                  -> dx[N,Ci,H,W]
//   dense_grad_weight_s{1,2} (x, dy)                     -> dw[Co,Ci,3,3]
// with Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1.
// BatchNorm with batch statistics (training), optionally fused with the ReLU6 after it:
//   bn[_relu6]_train_forward (x[N,C,H,W], gamma[C], beta[C], moving_mean[C], moving_variance[C],
//                             eps_momentum[2]) -> y, saved[2,C] (mean, invstd), new moving mean, variance
//   bn_train_grad            (dy, x, gamma, saved)                -> dx, dgamma[C], dbeta[C]
//   bn_relu6_train_grad      (dy, x, gamma, beta, saved)          -> dx, dgamma[C], dbeta[C]
// BatchNorm on its moving statistics (eval mode, or training with frozen BatchNorm), folded into a
// per-channel scale = gamma / sqrt(var + eps) and shift = beta - mean * scale, optionally with ReLU6:
//   affine[_relu6]           (x, scale[C], shift[C])              -> y = x * scale + shift (clamped to [0, 6])
//   affine[_relu6]_grad      (dy, x, scale, shift)                -> dx, dscale[C], dshift[C]
// Pointwise (1x1, stride 1) convolutions, matrix products over packed panels (see "pointwise" below):
//   pw_forward_s1            (x[N,K,H,W], w[M,K,1,1])             -> y[N,M,H,W]
//   pw_forward_bias_s1       (x, w, b[M])                         -> y = conv + b (a folded BatchNorm)
//   pw_forward_bias_relu6_s1 (x, w, b[M])                         -> y = min(max(conv + b, 0), 6)
//   pw_grad_input_s1         (dy[N,M,H,W], w, x)                  -> dx[N,K,H,W]   (x only for its shape)
//   pw_grad_weight_s1        (x, dy)                              -> dw[M,K,1,1]
// A block's expansion and depthwise layers in one pass (inference, both BatchNorms folded):
//   pw_dw_forward_s{1,2}     (x[N,K,H,W], we[M,K,1,1], be[M], wd[M,1,3,3], bd[M]) -> y[N,M,Ho,Wo] =
//                            relu6(dwconv(relu6(conv1x1(x, we) + be), wd) + bd), the expansion never stored
// The backward of the bias forms above (training with frozen BatchNorm folded into the convolution):
//   bias_grad                (dy[N,C,H,W])                        -> db[C]
//   bias_relu6_grad          (dy, y)                              -> dz (dy where 0 < y < 6), db[C]
// (the gradients of gamma and beta follow from dscale and dshift in MindSpore). Despite the file name, all of the MindSpore twin's
// CPU kernels live here: one library, one thread pool, one build. Each returns 0, or 1 when a
// dtype or any of the shapes above disagrees, or when the call fails (an
// allocation or a thread): no C++ exception crosses into MindSpore, which
// raises on a non-zero status. `mbv2_set_threads(n)` sets the thread count.
// The bias_relu6 forms serve layers with a BatchNorm on its moving statistics folded into w and b
// (inference, and training with frozen BatchNorm).
//
// Scheme: every input plane is copied once into a zero-padded plane
// ((H+2) rows). For stride 2 each padded row is stored de-interleaved (even
// columns, then odd columns), so that for every kernel column kw the taps
// x[s*ow + kw] of one output row are a contiguous run: all inner loops are
// unit-stride and vectorize. Gradients w.r.t. the input: at stride 1 the
// forward pass of dy with the flipped kernel; at stride 2, depthwise, gathered
// row by row (gather_plane_s2), dense, a scatter into a padded plane of the
// same layout, interior copied out. Gradients w.r.t. the weight are 9 dot
// products per plane pair. Dense layers with few input channels (the stem)
// are split over images, so an image's padded planes are read once while all
// output channels use them. Work is split over a persistent pool of threads
// (created on first use, see ThreadPool).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <sched.h>
#include <unistd.h>

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

// ---- threads: one persistent pool per process, created on first use ----
//
// Spawning threads on every call costs more than the work on the 7x7 layers at
// batch 1, so the workers are created once and wait on a condition variable.
// The pool is never destroyed (no join at exit, no destructor-order problems);
// a forked child, which inherits the pool's state but not its threads, builds
// its own. Calls into the pool are serialized: two kernels running at once
// would only oversubscribe the cores.

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : owner_(getpid()) {
    for (int t = 1; t < threads; ++t) {
      try {
        workers_.emplace_back([this] { work(); });
      } catch (...) {
        break;  // thread creation failed: run with the workers we have
      }
    }
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  bool owned_by_this_process() const { return owner_ == getpid(); }

  // Runs body(begin, end) over [0, total) in chunks, on the workers and the calling thread.
  // Returns false if any chunk threw (the exception is not rethrown across threads).
  bool run(int64_t total, int64_t chunk, const std::function<void(int64_t, int64_t)>& body) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      total_ = total;
      chunk_ = chunk;
      next_.store(0);
      pending_ = static_cast<int>(workers_.size());
      failed_ = false;
      ++generation_;
    }
    wake_.notify_all();
    const bool ok = drain();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    body_ = nullptr;
    return ok && !failed_;
  }

 private:
  bool drain() {
    bool ok = true;
    for (;;) {
      const int64_t begin = next_.fetch_add(chunk_);
      if (begin >= total_) break;
      try {
        (*body_)(begin, std::min(total_, begin + chunk_));
      } catch (...) {
        ok = false;
      }
    }
    return ok;
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
      }
      const bool ok = drain();
      std::lock_guard<std::mutex> lock(mutex_);
      if (!ok) failed_ = true;
      if (--pending_ == 0) done_.notify_one();
    }
  }

  const pid_t owner_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t total_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  int pending_ = 0;
  bool failed_ = false;
  uint64_t generation_ = 0;
};

std::atomic<int> requested_threads{0};  // 0: not set through mbv2_set_threads
std::mutex pool_mutex;                   // serializes parallel_for calls and pool (re)creation
ThreadPool* pool = nullptr;              // intentionally leaked, see above

int default_thread_count() {
  if (const char* env = std::getenv("MBV2_KERNEL_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

struct KernelFailure {};  // a worker's chunk threw: the entry point returns 1

// Runs body(begin, end) over [0, total) split into chunks over the pool's threads.
void parallel_for(int64_t total, const std::function<void(int64_t, int64_t)>& body) {
  if (total <= 0) return;
  std::lock_guard<std::mutex> lock(pool_mutex);
  const int wanted = requested_threads.load() > 0 ? requested_threads.load() : default_thread_count();
  if (pool == nullptr || !pool->owned_by_this_process() || pool->size() != wanted) {
    // A pool of another size (or another process's) is abandoned, not joined: its threads,
    // if any exist here, stay parked on their condition variable.
    pool = wanted > 1 ? new ThreadPool(wanted) : nullptr;
  }
  const int workers = pool == nullptr ? 1 : static_cast<int>(std::min<int64_t>(pool->size(), total));
  if (workers <= 1) {
    body(0, total);
    return;
  }
  // A few chunks per thread: balances uneven planes and a core busy with another process.
  const int64_t chunk = std::max<int64_t>(1, total / (4 * workers));
  if (!pool->run(total, chunk, body)) throw KernelFailure();
}

// The thread count parallel_for will use next.
int64_t mbv2_threads_now() {
  return requested_threads.load() > 0 ? requested_threads.load() : default_thread_count();
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

// Copies one H x W plane into a zero-padded plane (layout of Geometry), each value through `f`.
template <typename F>
inline void pad_plane_with(const Geometry& g, const float* __restrict__ src, float* __restrict__ dst, F f) {
  // Only the border is zeroed: the top and bottom rows, and in every row padded columns 0 and W + 1
  // and the spare last float; every other float is written from src.
  std::memset(dst, 0, sizeof(float) * g.pitch);
  std::memset(dst + (g.height + 1) * g.pitch, 0, sizeof(float) * g.pitch);
  for (int64_t h = 0; h < g.height; ++h) pad_row_with(g, src + h * g.width, dst + (h + 1) * g.pitch, f);
}

void pad_plane(const Geometry& g, const float* __restrict__ src, float* __restrict__ dst) {
  pad_plane_with(g, src, dst, [](float v) { return v; });
}

// pad_plane of relu6(src + bias): the padding stays 0 (it pads the activation).
void pad_plane_bias_relu6(const Geometry& g, const float* __restrict__ src, float bias, float* __restrict__ dst) {
  pad_plane_with(g, src, dst, [bias](float v) { return std::min(std::max(v + bias, 0.0f), 6.0f); });
}

// `rows` output rows (+)= correlation of padded rows with the 3x3 kernel w: `padded` is the padded
// row of the first one's top taps (padded row stride * oh of a whole plane), `y` its output row.
void forward_rows(const Geometry& g, const float* __restrict__ padded, const float* w, float* __restrict__ y,
                  int64_t rows, bool accumulate) {
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
      const float sum = w0 * a0[ow] + w1 * a1[ow] + w2 * a2[ow] + w3 * b0[ow] + w4 * b1[ow] + w5 * b2[ow] +
                        w6 * c0[ow] + w7 * c1[ow] + w8 * c2[ow];
      out[ow] = accumulate ? out[ow] + sum : sum;
    }
  }
}

// y (Ho x Wo) (+)= correlation of the padded plane with the 3x3 kernel w.
void forward_plane(const Geometry& g, const float* __restrict__ padded, const float* w, float* __restrict__ y,
                   bool accumulate) {
  forward_rows(g, padded, w, y, g.out_height, accumulate);
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

// acc[9] += the 9 dot products of dy with the shifted taps of a padded plane.
void weight_grad_plane(const Geometry& g, const float* __restrict__ padded, const float* __restrict__ dy,
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

bool is_f32(const char* dtype) { return std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "float") == 0; }

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

// A scratch buffer per thread, kept between calls (the pool's threads live as long as the process).
float* scratch(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

// Sums over a plane: float over runs of SUM_RUN values (vectorized), the runs added in double.
constexpr int64_t SUM_RUN = 256;

// y = min(max(y + bias, 0), 6) over one plane: the folded BatchNorm and ReLU6 of inference.
void bias_relu6_plane(float* __restrict__ y, int64_t count, float bias) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) y[i] = std::min(std::max(y[i] + bias, 0.0f), 6.0f);
}

// x = min(max(z + bias, 0), 6) over one plane, into another: the same values as the 1x1 kernel's
// bias + ReLU6 epilogue (one add, then the clamps), so moving it here changes no result.
void bias_relu6_copy(const float* __restrict__ z, int64_t count, float bias, float* __restrict__ x) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) x[i] = std::min(std::max(z[i] + bias, 0.0f), 6.0f);
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

// ---- depthwise: channel c of x meets channel c of w ----

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
      forward_plane(g, padded, w + (p % c) * 9, y + p * out_plane, false);
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
        forward_plane(g, padded, flipped, dx + p * in_plane, false);
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
          forward_plane(g, grad_padded, flipped, input_grad, false);
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

// ---- dense (groups = 1): output channel co sums over all input channels ----

// Pads every (image, channel) plane of x once: the dense kernels reuse each many times.
std::vector<float> pad_all(const Geometry& g, const float* x, int64_t planes) {
  std::vector<float> padded(planes * g.plane);
  const int64_t in_plane = g.height * g.width;
  parallel_for(planes, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) pad_plane(g, x + p * in_plane, padded.data() + p * g.plane);
  });
  return padded;
}

// (x, w[, bias]) -> y; with `fused`, y = relu6(conv + bias[co]).
int dense_forward(const Args& a, int stride, bool fused) {
  if (a.nparam != (fused ? 4 : 3) || !a.is(0, -1, -1, -1, -1) || !a.is(1, -1, -1, 3, 3)) return 1;
  const int64_t n = a.shape(0)[0], ci = a.shape(0)[1], co = a.shape(1)[0];
  const Geometry g(a.shape(0)[2], a.shape(0)[3], stride);
  const int y_index = fused ? 3 : 2;
  if (a.shape(1)[1] != ci || !a.is(y_index, n, co, g.out_height, g.out_width)) return 1;
  if (fused && !a.is_vector(2, co)) return 1;
  const float* w = a.in(1);
  const float* bias = fused ? a.in(2) : nullptr;
  float* y = a.out(y_index);
  const int64_t out_plane = g.out_height * g.out_width;
  if (n >= 2 && ci * g.plane <= (int64_t{1} << 20)) {
    // Few input channels (the stem): split over images; an image's ci padded planes stay in cache
    // while every output channel is computed from them.
    const float* x = a.in(0);
    const int64_t in_plane = g.height * g.width;
    parallel_for(n, [&](int64_t begin, int64_t end) {
      float* padded = scratch(ci * g.plane);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t i = 0; i < ci; ++i) pad_plane(g, x + (b * ci + i) * in_plane, padded + i * g.plane);
        for (int64_t o = 0; o < co; ++o) {
          float* out = y + (b * co + o) * out_plane;
          for (int64_t i = 0; i < ci; ++i) forward_plane(g, padded + i * g.plane, w + (o * ci + i) * 9, out, i > 0);
          if (fused) bias_relu6_plane(out, out_plane, bias[o]);
        }
      }
    });
    return 0;
  }
  const std::vector<float> padded = pad_all(g, a.in(0), n * ci);
  parallel_for(n * co, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / co, o = p % co;
      for (int64_t i = 0; i < ci; ++i)
        forward_plane(g, padded.data() + (b * ci + i) * g.plane, w + (o * ci + i) * 9, y + p * out_plane, i > 0);
      if (fused) bias_relu6_plane(y + p * out_plane, out_plane, bias[o]);
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
  double total = 0.0;
  for (int64_t start = 0; start < len; start += SUM_RUN) {
    const int64_t end = std::min(len, start + SUM_RUN);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = start; i < end; ++i) s += x[i];
    total += s;
  }
  const double plane_mean = total / static_cast<double>(len);
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


// ---- pointwise (1x1) convolutions: matrix products over packed panels ----
//
// In NCHW a 1x1 convolution is Y_b[M, P] = W[M, K] X_b[K, P] for every image b (P = H*W pixels).
// All three products run on one register tile of MR rows x NR columns (`tile_product`): per step of
// the shared depth, two vectors of a B panel meet MR broadcasts of an A panel. Both operands are
// packed first into contiguous, zero-padded panels (A: [depth][MR], B: [depth][NR]), so the tile
// reads memory sequentially whatever the layer's shape. The columns of the forward and the
// input gradient run over all images' pixels (column q is pixel q % P of image q / P), so a
// 7x7 layer's 49 pixels fill whole tiles too.
//   forward:        A = W (M x K),   B = X columns,  out Y (+ bias, ReLU6)
//   input gradient: A = W^T (K x M), B = dY columns, out dX
//   weight grad.:   A = dY (M x Q),  B = X^T (Q x K) with Q = N*P, out dW: the depth is the
//                   pixels of all images, in chunks of CHUNK; each thread owns whole row panels of
//                   dW and sums them in a fixed order, so the result does not depend on the thread count.
#if defined(__AVX512F__)
constexpr int VEC = 16;
constexpr int MR = 12;  // 24 accumulators + 2 B vectors + 1 broadcast of 32 vector registers
#else
constexpr int VEC = 8;
constexpr int MR = 6;  // 12 accumulators + 2 + 1 of 16 (AVX2)
#endif
constexpr int NR = 2 * VEC;
constexpr int64_t PACKED_BYTES = 256 << 10;  // a task's packed B panels: they stay in L2 for every row panel
constexpr int64_t MAX_TILES_PER_TASK = 64;
constexpr int64_t CHUNK = 512;         // pixels per packed chunk of the weight gradient
typedef float vecf __attribute__((vector_size(VEC * sizeof(float))));
typedef float vecf_u __attribute__((vector_size(VEC * sizeof(float)), aligned(alignof(float)), may_alias));

inline vecf load(const float* p) { return *reinterpret_cast<const vecf_u*>(p); }
inline void store(float* p, vecf v) { *reinterpret_cast<vecf_u*>(p) = v; }
// One float in every lane. The intrinsics compile to one broadcast load; GCC turns `vecf{} + v` into an
// add and a shuffle, which halves the tile's speed.
#if defined(__AVX512F__)
inline vecf splat(const float* p) { return (vecf)_mm512_set1_ps(*p); }
#elif defined(__AVX__)
inline vecf splat(const float* p) { return (vecf)_mm256_broadcast_ss(p); }
#else
inline vecf splat(const float* p) { return vecf{} + *p; }
#endif

struct Tile {
  vecf acc[MR][2];
};

// acc = A_panel[depth][MR]^T B_panel[depth][NR]. Every index is a compile-time constant after unrolling:
// an index known only at run time would keep the accumulators in memory.
// The sums are local (copied out at the end): accumulating into `t` itself keeps them in memory.
inline __attribute__((always_inline)) void tile_product(const float* __restrict__ a, const float* __restrict__ b,
                                                        int64_t depth, Tile& t) {
  vecf acc[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = vecf{};
  for (int64_t k = 0; k < depth; ++k) {
    const vecf b0 = load(b + k * NR), b1 = load(b + k * NR + VEC);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const vecf w = splat(a + k * MR + r);
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

// A tile row's epilogue: + *bias (when given), then ReLU6 (with `relu6`): one add, then the clamps. Every
// product that feeds a ReLU6 layer ends here, so its two forms (pointwise_product, pointwise_columns) agree bit for bit.
inline __attribute__((always_inline)) void bias_relu6_epilogue(vecf& lo, vecf& hi, const float* bias, bool relu6) {
  if (bias != nullptr) {
    lo += splat(bias);
    hi += splat(bias);
  }
  if (relu6) {
    const float six_value = 6.0f;
    const vecf zero = vecf{}, six = splat(&six_value);
    lo = lo < zero ? zero : (lo > six ? six : lo);
    hi = hi < zero ? zero : (hi > six ? six : hi);
  }
}

// Row panels of the (rows x depth) matrix A[i, j] = a[i * row_stride + j * col_stride]:
// packed[panel][j][r], rows past the end zero.
std::vector<float> pack_rows(const float* a, int64_t rows, int64_t depth, int64_t row_stride, int64_t col_stride) {
  const int64_t panels = (rows + MR - 1) / MR;
  std::vector<float> packed(panels * depth * MR, 0.0f);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < depth; ++j) packed[((i / MR) * depth + j) * MR + i % MR] = a[i * row_stride + j * col_stride];
  return packed;
}

// Y[b, rows, P] = A X_b (+ bias, relu6) for all images: A packed by pack_rows (rows x depth), X [n, depth, P].
void pointwise_product(const std::vector<float>& a, int64_t rows, int64_t depth, const float* x, int64_t n,
                       int64_t pixels, float* y, const float* bias, bool relu6) {
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
#pragma GCC unroll 16
          for (int r = 0; r < MR; ++r) {
            if (r >= valid_rows) break;
            vecf lo = tile.acc[r][0], hi = tile.acc[r][1];
            bias_relu6_epilogue(lo, hi, bias == nullptr ? nullptr : bias + m0 + r, relu6);
            if (whole) {
              float* out = y + (b0 * rows + m0 + r) * pixels + p0;
              store(out, lo);
              store(out + VEC, hi);
            } else {
              float row[NR];
              store(row, lo);
              store(row + VEC, hi);
              for (int64_t j = 0; j < NR && q0 + j < columns; ++j) {
                const int64_t q = q0 + j;
                y[((q / pixels) * rows + m0 + r) * pixels + q % pixels] = row[j];
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

// (dy[N,M,H,W], w[M,K,1,1], x[N,K,H,W]) -> dx[N,K,H,W] = W^T dY per image (x only for its shape).
int pw_grad_input(const Args& a) {
  if (a.nparam != 4 || !a.is(2, -1, -1, -1, -1) || !a.is(1, -1, a.shape(2)[1], 1, 1)) return 1;
  const int64_t n = a.shape(2)[0], k = a.shape(2)[1], h = a.shape(2)[2], w = a.shape(2)[3], m = a.shape(1)[0];
  if (!a.is(0, n, m, h, w) || !a.is(3, n, k, h, w)) return 1;
  pointwise_product(pack_rows(a.in(1), k, m, 1, k), k, m, a.in(0), n, h * w, a.out(3), nullptr, false);
  return 0;
}

// ---- expansion + depthwise in one pass (inference) ----
//
// A block's expanding 1x1 layer writes its widest tensor (96 channels at 112x112 in the first blocks) for
// the depthwise layer to read back: twice the tensor through memory. Here each task (one image, a group of
// the expansion's channels) computes the expansion a band of input rows at a time into a window of padded
// rows that stays in cache (L2/L3: WINDOW_FLOATS), and the depthwise layer consumes the window at once. Every value is computed
// as by pw_forward_bias_relu6 then dw_forward_bias_relu6 (the same tile products and epilogue, the same
// depthwise rows), so the output is theirs bit for bit.

// A task's window and expansion rows, in floats: steps of many rows (past L2: fewer, longer products and
// depthwise runs measured faster than windows within L2, 96K floats, which were slower than two passes).
constexpr int64_t WINDOW_FLOATS = 256 << 10;

// Rows of panels [p0, p1) of the packed A times columns [col0, col1) of one image's X (depth x pixels),
// + bias, ReLU6 (pointwise_product's epilogue): out[(r - p0 MR) * out_stride + col - col0]. `panels`:
// scratch for the B panels of the columns, ceil((col1 - col0) / NR) * depth * NR floats.
void pointwise_columns(const float* a, int64_t rows, int64_t depth, const float* x, int64_t pixels, int64_t col0,
                       int64_t col1, int64_t p0, int64_t p1, const float* bias, float* out, int64_t out_stride,
                       float* panels) {
  const int64_t columns = col1 - col0, tiles = (columns + NR - 1) / NR;
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
        bias_relu6_epilogue(lo, hi, bias + m0 + r, true);
        float* row = out + (m0 - p0 * MR + r) * out_stride + c0;
        if (valid == NR) {
          store(row, lo);
          store(row + VEC, hi);
        } else {
          float values[NR];
          store(values, lo);
          store(values + VEC, hi);
          for (int64_t j = 0; j < valid; ++j) row[j] = values[j];
        }
      }
    }
  }
}

// (x[N,K,H,W], we[M,K,1,1], be[M], wd[M,1,3,3], bd[M]) -> y[N,M,Ho,Wo] =
// relu6(dwconv(relu6(conv1x1(x, we) + be), wd) + bd): pw_forward_bias_relu6 then dw_forward_bias_relu6.
int pw_dw_forward(const Args& a, int stride) {
  if (a.nparam != 6 || !a.is(0, -1, -1, -1, -1) || !a.is(1, -1, a.shape(0)[1], 1, 1)) return 1;
  const int64_t n = a.shape(0)[0], k = a.shape(0)[1], h = a.shape(0)[2], w = a.shape(0)[3], m = a.shape(1)[0];
  const Geometry g(h, w, stride);
  if (!a.is_vector(2, m) || !a.is(3, m, 1, 3, 3) || !a.is_vector(4, m) || !a.is(5, n, m, g.out_height, g.out_width))
    return 1;
  const std::vector<float> packed = pack_rows(a.in(1), m, k, k, 1);
  const float *x = a.in(0), *expand_bias = a.in(2), *wd = a.in(3), *bias = a.in(4);
  float* y = a.out(5);
  const int64_t ho = g.out_height, wo = g.out_width, panels_total = (m + MR - 1) / MR;
  // Channel groups: enough tasks for every thread (batch 1 too), and one output row's window in budget.
  auto window_floats = [&](int64_t channels, int64_t rows_out) {
    const int64_t window_rows = stride * (rows_out - 1) + 3, new_rows = std::max(window_rows, stride * rows_out);
    return channels * (window_rows * g.pitch + new_rows * w);
  };
  int64_t groups = 1;
  while (groups < panels_total &&
         (n * groups < 2 * mbv2_threads_now() || window_floats((panels_total + groups - 1) / groups * MR, 1) > WINDOW_FLOATS))
    ++groups;
  const int64_t group_panels = (panels_total + groups - 1) / groups;
  groups = (panels_total + group_panels - 1) / group_panels;
  int64_t rows_out = 1;  // output rows per step: as many as the budget allows
  while (rows_out < ho && window_floats(group_panels * MR, rows_out + 1) <= WINDOW_FLOATS) ++rows_out;
  const int64_t window_rows = stride * (rows_out - 1) + 3, new_rows = std::max(window_rows, stride * rows_out);
  const int64_t max_columns = new_rows * w, tiles = (max_columns + NR - 1) / NR;
  parallel_for(n * groups, [&](int64_t begin, int64_t end) {
    const int64_t channels_max = group_panels * MR, window_plane = window_rows * g.pitch;
    float* window = scratch(channels_max * (window_plane + max_columns) + tiles * k * NR);
    float* expanded = window + channels_max * window_plane;
    float* panels = expanded + channels_max * max_columns;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t img = task / groups, p0 = (task % groups) * group_panels;
      const int64_t p1 = std::min(panels_total, p0 + group_panels), c0 = p0 * MR, c1 = std::min(m, p1 * MR);
      const float* image = x + img * k * h * w;
      int64_t held_begin = 0, held_end = 0;  // padded rows in the window: [held_begin, held_end)
      for (int64_t o0 = 0; o0 < ho; o0 += rows_out) {
        const int64_t o1 = std::min(ho, o0 + rows_out);
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
        if (in_end > in_begin)
          pointwise_columns(packed.data(), m, k, image, h * w, in_begin * w, in_end * w, p0, p1, expand_bias, expanded,
                            max_columns, panels);
        for (int64_t c = c0; c < c1; ++c) {
          float* plane = window + (c - c0) * window_plane;
          for (int64_t r = fresh_begin; r < need_end; ++r) {
            float* row = plane + (r - need_begin) * g.pitch;
            if (r == 0 || r == h + 1) {
              std::memset(row, 0, sizeof(float) * g.pitch);
            } else {
              pad_row_with(g, expanded + (c - c0) * max_columns + (r - 1 - in_begin) * w, row, [](float v) { return v; });
            }
          }
          float* out = y + ((img * m + c) * ho + o0) * wo;
          forward_rows(g, plane, wd + c * 9, out, o1 - o0, false);
          bias_relu6_plane(out, (o1 - o0) * wo, bias[c]);
        }
        held_begin = need_begin;
        held_end = need_end;
      }
    }
  });
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
  const int64_t shares = std::min<int64_t>(row_blocks, mbv2_threads_now());
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
  const int64_t blocks = std::min<int64_t>(split, mbv2_threads_now());
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

}  // namespace

// Nothing may cross the extern "C" boundary into MindSpore: an exception there (allocation,
// thread creation) would call std::terminate and abort the process without a Python traceback.
#define MBV2_ENTRY(name, call)                                                                           \
  extern "C" int name(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, \
                      void*) {                                                                           \
    try {                                                                                                \
      const Args args{nparam, params, ndims, shapes, dtypes};                                            \
      return call;                                                                                       \
    } catch (...) {                                                                                      \
      return 1;                                                                                          \
    }                                                                                                    \
  }

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
MBV2_ENTRY(dense_forward_s1, dense_forward(args, 1, false))
MBV2_ENTRY(dense_forward_s2, dense_forward(args, 2, false))
MBV2_ENTRY(dense_forward_bias_relu6_s1, dense_forward(args, 1, true))
MBV2_ENTRY(dense_forward_bias_relu6_s2, dense_forward(args, 2, true))
MBV2_ENTRY(dense_grad_input_s1, dense_grad_input(args, 1))
MBV2_ENTRY(dense_grad_input_s2, dense_grad_input(args, 2))
MBV2_ENTRY(dense_grad_weight_s1, dense_grad_weight(args, 1))
MBV2_ENTRY(dense_grad_weight_s2, dense_grad_weight(args, 2))
MBV2_ENTRY(bn_train_forward, bn_train_forward(args, false))
MBV2_ENTRY(bn_relu6_train_forward, bn_train_forward(args, true))
MBV2_ENTRY(bn_train_grad, bn_train_grad(args, false))
MBV2_ENTRY(bn_relu6_train_grad, bn_train_grad(args, true))
MBV2_ENTRY(affine, affine_forward(args, false))
MBV2_ENTRY(affine_relu6, affine_forward(args, true))
MBV2_ENTRY(affine_grad, affine_grad(args, false))
MBV2_ENTRY(affine_relu6_grad, affine_grad(args, true))
MBV2_ENTRY(pw_forward_s1, pw_forward(args, false, false))
MBV2_ENTRY(pw_forward_bias_s1, pw_forward(args, true, false))
MBV2_ENTRY(pw_forward_bias_relu6_s1, pw_forward(args, true, true))
MBV2_ENTRY(pw_grad_input_s1, pw_grad_input(args))
MBV2_ENTRY(pw_dw_forward_s1, pw_dw_forward(args, 1))
MBV2_ENTRY(pw_dw_forward_s2, pw_dw_forward(args, 2))
MBV2_ENTRY(pw_grad_weight_s1, pw_grad_weight(args))
MBV2_ENTRY(bias_grad, bias_grad(args, false))
MBV2_ENTRY(bias_relu6_grad, bias_grad(args, true))

// Thread count of the kernels from now on (n > 0), or back to the default (n <= 0):
// $MBV2_KERNEL_THREADS, else the CPUs this process may run on. Called by fast_conv.py
// through ctypes (the same loaded library as MindSpore's, so the same pool).
extern "C" void mbv2_set_threads(int n) { requested_threads.store(n > 0 ? n : 0); }

// The thread count the next call will use.
extern "C" int mbv2_thread_count() {
  const int n = requested_threads.load();
  return n > 0 ? n : default_thread_count();
}
