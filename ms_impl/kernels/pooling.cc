// Global average pooling, the head's first op (fp32, NCHW).
//
// Entry points (inputs first, then the outputs):
//   global_average_pool       (x[N,C,H,W])             -> y[N,C] = the mean of each plane
//   global_average_pool_grad  (dy[N,C], x[N,C,H,W])    -> dx[N,C,H,W] = dy / (H*W) everywhere (x only for its shape)
//
// MindSpore's own mean over (2, 3) took 9-16 ms for a batch of 32 at 7x7x1280 (2M floats) on the
// reference machine, a tenth of the network's eval forward; one pass here is memory bound.
// Each plane is summed by common.h's plane_sum (float runs, added in double).
#include "common.h"

namespace mbv2 {
namespace {

int global_average_pool(const Args& a) {
  if (a.nparam != 2 || !a.is(0, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(0)[0], c = a.shape(0)[1], pixels = a.shape(0)[2] * a.shape(0)[3];
  if (!a.is_matrix(1, n, c) || pixels == 0) return 1;
  const float* x = a.in(0);
  float* y = a.out(1);
  parallel_for(n * c, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane)
      y[plane] = static_cast<float>(plane_sum(x + plane * pixels, pixels) / static_cast<double>(pixels));
  });
  return 0;
}

int global_average_pool_grad(const Args& a) {
  if (a.nparam != 3 || !a.is(1, -1, -1, -1, -1)) return 1;
  const int64_t n = a.shape(1)[0], c = a.shape(1)[1], h = a.shape(1)[2], w = a.shape(1)[3], pixels = h * w;
  if (!a.is_matrix(0, n, c) || !a.is(2, n, c, h, w) || pixels == 0) return 1;
  const float* dy = a.in(0);
  float* dx = a.out(2);
  const float count = static_cast<float>(pixels);
  parallel_for(n * c, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const float value = dy[plane] / count;
      std::fill(dx + plane * pixels, dx + (plane + 1) * pixels, value);
    }
  });
  return 0;
}

}  // namespace

MBV2_ENTRY(global_average_pool, global_average_pool(args))
MBV2_ENTRY(global_average_pool_grad, global_average_pool_grad(args))

}  // namespace mbv2
