// CPU kernels of the training-loss ops hfkernels_ext::ssim_* and gradient_max_* (schemas in
// csrc/registry.cpp, argument checks in csrc/ext_checks.h, shared with the CUDA glue).
//
// SSIM. The 2-D Gaussian window is the outer product of 1-D taps, so the five local statistics
// (W*x, W*y, W*x², W*y², W*xy) come from one horizontal pass over each input row followed by one
// vertical pass over the filtered rows. The forward also writes, per output pixel, the five
// coefficients the backward needs (d ssim / d mu_x folded with the variance terms, and so on), so
// the backward is just the transposed (flipped) separable filter of those maps plus a per-pixel
// combination with x and y:
//   dS/dx = W^T A_x + 2 x W^T D_xx + y W^T D_xy,   dS/dy = W^T A_y + 2 y W^T D_yy + x W^T D_xy.
// Only the kept taps (chosen by the caller) are applied.
//
// Gradient-max. 3x3 Sobel with replicate padding; the backward builds six per-pixel coefficient
// maps (d loss / d Sobel response) and applies the adjoint of "replicate-pad, then correlate":
// a full correlation with the flipped kernel whose border rows/columns fold back onto the edge.
//
// Work is split over rows of all (image, channel) planes together, so a 3-channel image keeps
// every thread busy; sums are reduced per row into a buffer and then added in a fixed order, so
// results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "../ext_checks.h"

// The SSIM filters are the hot loops: compile them twice, for the baseline ISA and for AVX2+FMA,
// and pick one at run time (HFK_CPU_ISA=baseline forces the baseline, e.g. to test it).
namespace hfk_loss {
namespace isa_base {
#define HFK_VEC_BYTES 16
#include "loss_cpu_ssim.h"
#undef HFK_VEC_BYTES
}  // namespace isa_base
}  // namespace hfk_loss

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define HFK_LOSS_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=off")  // see HFK_FMA_ROWS in loss_cpu_ssim.h
namespace hfk_loss {
namespace isa_avx2 {
#define HFK_VEC_BYTES 32
#define HFK_FMA_ROWS 1
#include "loss_cpu_ssim.h"
#undef HFK_VEC_BYTES
#undef HFK_FMA_ROWS
}  // namespace isa_avx2
}  // namespace hfk_loss
#pragma GCC pop_options
#else
namespace hfk_loss {
namespace isa_avx2 = isa_base;
}
#endif

namespace hfk_loss {
namespace {

// Rows per parallel chunk for the Sobel (gradient_max) loops: a row costs a few dozen flops per
// pixel, so a fixed 16-row grain opened a parallel region (and woke every OpenMP thread) for
// images of a few thousand pixels, where the fork/join costs more than the work and, on a loaded
// machine, waits for a descheduled thread. About 16K pixels per chunk keeps those serial.
inline int64_t sobel_grain(int64_t W) {
  return std::max<int64_t>(16, 16384 / std::max<int64_t>(W, 1));
}

bool use_avx2() {
#ifdef HFK_LOSS_AVX2
  static const bool ok = [] {
    const char* env = std::getenv("HFK_CPU_ISA");
    if (env != nullptr && std::strcmp(env, "baseline") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

// ------------------------------------------------------------------------------------------
// SSIM forward

using hfk_ext::SsimGeom;
using hfk_ext::WindowTaps;

void check_cpu_dtype(const at::Tensor& t, const char* what) {
  hfk_ext::check_dtype(t, what, {at::kFloat, at::kDouble}, "float32 or float64");
}

template <typename T>
void ssim_forward_cpu_impl(const at::Tensor& x, const at::Tensor& y, const SsimGeom& g,
                           const WindowTaps<T>& tp, double c1, double c2, bool save,
                           at::Tensor& out, at::Tensor& coefs) {
  std::vector<double> rowsum(g.P * g.Ho, 0.0);
  auto kernel = use_avx2() ? &isa_avx2::ssim_fwd_kernel<T> : &isa_base::ssim_fwd_kernel<T>;
  kernel(x.data_ptr<T>(), y.data_ptr<T>(), g.P, g.H, g.W, g.Ho, g.Wo, g.pad, tp.t.data(), tp.lo,
         tp.hi, static_cast<T>(c1), static_cast<T>(c2), save ? coefs.data_ptr<T>() : nullptr,
         rowsum.data());
  // Per-image mean in a fixed order, so the result does not depend on the thread count.
  const double n = static_cast<double>(g.C * g.Ho * g.Wo);
  T* op = out.data_ptr<T>();
  for (int64_t b = 0; b < g.B; ++b) {
    double sum = 0;
    for (int64_t k = b * g.C * g.Ho; k < (b + 1) * g.C * g.Ho; ++k) sum += rowsum[k];
    op[b] = static_cast<T>(sum / n);
  }
}

std::tuple<at::Tensor, at::Tensor> ssim_forward_cpu(const at::Tensor& x_, const at::Tensor& y_,
                                                    at::ArrayRef<double> taps, int64_t lo, int64_t w,
                                                    double c1, double c2, bool same,
                                                    bool save_coefs) {
  const SsimGeom g = hfk_ext::check_ssim(x_, y_, taps, lo, w, same);
  check_cpu_dtype(x_, "ssim (cpu backend)");
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  at::Tensor out = at::empty({x.size(0)}, x.options());
  at::Tensor coefs = save_coefs ? at::empty({x.size(0), x.size(1), 5, g.Ho, g.Wo}, x.options())
                                : at::empty({0}, x.options());
  if (x.numel() == 0) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());  // mean of nothing, like torch.mean
    return {out, coefs};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hfk_ssim_forward_cpu", [&] {
    ssim_forward_cpu_impl<scalar_t>(x, y, g, WindowTaps<scalar_t>(taps, lo, w), c1, c2,
                                    save_coefs, out, coefs);
  });
  return {out, coefs};
}

// ------------------------------------------------------------------------------------------
// SSIM backward

template <typename T>
void ssim_backward_cpu_impl(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                            const at::Tensor& coefs, const SsimGeom& g, const WindowTaps<T>& tp,
                            at::Tensor& gx, at::Tensor& gy) {
  const double inv_n = 1.0 / static_cast<double>(g.C * g.Ho * g.Wo);
  const T* gp = grad.data_ptr<T>();
  std::vector<T> scale(g.P);
  for (int64_t p = 0; p < g.P; ++p) scale[p] = static_cast<T>(gp[p / g.C] * inv_n);
  auto kernel = use_avx2() ? &isa_avx2::ssim_bwd_kernel<T> : &isa_base::ssim_bwd_kernel<T>;
  kernel(x.data_ptr<T>(), y.data_ptr<T>(), coefs.data_ptr<T>(), scale.data(), g.P, g.H, g.W,
         g.Ho, g.Wo, g.pad, tp.t.data(), tp.lo, tp.hi, gx.data_ptr<T>(), gy.data_ptr<T>());
}

std::tuple<at::Tensor, at::Tensor> ssim_backward_cpu(const at::Tensor& grad_,
                                                     const at::Tensor& x_, const at::Tensor& y_,
                                                     const at::Tensor& coefs_,
                                                     at::ArrayRef<double> taps, int64_t lo,
                                                     int64_t w, bool same) {
  const SsimGeom g = hfk_ext::check_ssim(x_, y_, taps, lo, w, same);
  hfk_ext::check_ssim_backward(grad_, coefs_, g);
  check_cpu_dtype(x_, "ssim (cpu backend)");
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const at::Tensor coefs = coefs_.contiguous().to(x.scalar_type());
  const at::Tensor grad = grad_.contiguous().to(x.scalar_type());
  at::Tensor gx = at::empty_like(x), gy = at::empty_like(y);
  if (x.numel() == 0) return {gx, gy};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hfk_ssim_backward_cpu", [&] {
    ssim_backward_cpu_impl<scalar_t>(grad, x, y, coefs, g, WindowTaps<scalar_t>(taps, lo, w), gx,
                                     gy);
  });
  return {gx, gy};
}

// ------------------------------------------------------------------------------------------
// Gradient-max

void check_gm_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& f) {
  hfk_ext::check_gradient_max(a, b, f);
  check_cpu_dtype(f, "gradient_max (cpu backend)");
}

// Sobel responses of row i of a plane (H, W) with replicate padding; pad is scratch of 3*(W+2).
template <typename scalar_t, typename acc_t>
inline void sobel_row(const scalar_t* plane, int64_t H, int64_t W, int64_t i, acc_t* pad,
                      acc_t* gx, acc_t* gy) {
  const scalar_t* rows[3] = {plane + std::max<int64_t>(i - 1, 0) * W, plane + i * W,
                             plane + std::min<int64_t>(i + 1, H - 1) * W};
  for (int r = 0; r < 3; ++r) {
    acc_t* d = pad + r * (W + 2);
    for (int64_t j = 0; j < W; ++j) d[j + 1] = static_cast<acc_t>(rows[r][j]);
    d[0] = d[1];
    d[W + 1] = d[W];
  }
  const acc_t *m = pad, *c = pad + (W + 2), *p = pad + 2 * (W + 2);
  for (int64_t j = 0; j < W; ++j) {
    gx[j] = ((m[j + 2] - m[j]) + 2 * (c[j + 2] - c[j])) + (p[j + 2] - p[j]);
    // The reference's fixed order: (d_left + 2 d_mid) + d_right, d = bottom - top.
    gy[j] = ((p[j] - m[j]) + 2 * (p[j + 1] - m[j + 1])) + (p[j + 2] - m[j + 2]);
  }
}

template <typename acc_t>
inline acc_t sgn(acc_t v) {
  return static_cast<acc_t>((v > 0) - (v < 0));
}

template <typename scalar_t>
void gm_forward_impl(const at::Tensor& a, const at::Tensor& b, const at::Tensor& f,
                     at::Tensor& out) {
  using acc_t = scalar_t;
  const int64_t P = f.size(0) * f.size(1), H = f.size(2), W = f.size(3);
  const scalar_t* src[3] = {a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), f.data_ptr<scalar_t>()};
  std::vector<double> rowsum(P * H);
  at::parallel_for(0, P * H, sobel_grain(W), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(3 * (W + 2) + 6 * W);
    acc_t* pad = scratch.data();
    acc_t* g = pad + 3 * (W + 2);  // ax ay bx by fx fy
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t p = idx / H, i = idx % H;
      for (int t = 0; t < 3; ++t)
        sobel_row(src[t] + p * H * W, H, W, i, pad, g + 2 * t * W, g + (2 * t + 1) * W);
      const acc_t *ax = g, *ay = g + W, *bx = g + 2 * W, *by = g + 3 * W, *fx = g + 4 * W,
                  *fy = g + 5 * W;
      acc_t s = 0;
      for (int64_t j = 0; j < W; ++j) {
        const acc_t mx = std::max(std::abs(ax[j]), std::abs(bx[j]));
        const acc_t my = std::max(std::abs(ay[j]), std::abs(by[j]));
        s += std::abs(std::abs(fx[j]) - mx) + std::abs(std::abs(fy[j]) - my);
      }
      rowsum[idx] = static_cast<double>(s);
    }
  });
  double s = 0;
  for (double v : rowsum) s += v;
  out.fill_(s / static_cast<double>(P * H * W));
}

at::Tensor gradient_max_forward_cpu(const at::Tensor& a_, const at::Tensor& b_,
                                    const at::Tensor& f_) {
  check_gm_args(a_, b_, f_);
  const at::Tensor a = a_.contiguous(), b = b_.contiguous(), f = f_.contiguous();
  at::Tensor out = at::empty({}, f.options());
  if (f.numel() == 0) return out.fill_(std::numeric_limits<double>::quiet_NaN());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "hfk_gradient_max_forward_cpu",
                             [&] { gm_forward_impl<scalar_t>(a, b, f, out); });
  return out;
}

// Adjoint of "replicate-pad by 1, then Sobel-x/Sobel-y correlate" for row i of a plane:
// out[j] += (Sx^T cx + Sy^T cy)[i][j]. cx, cy are the (H, W) coefficient planes; scratch holds
// 2*(W+4) + (W+2).
template <typename acc_t>
inline void sobel_adjoint_row(const acc_t* cx, const acc_t* cy, int64_t H, int64_t W, int64_t i,
                              acc_t* scratch, acc_t* out) {
  acc_t* tx = scratch;              // zero-padded by 2 on the left and right
  acc_t* ty = tx + (W + 4);
  acc_t* gp = ty + (W + 4);         // one row of the full correlation, padded coordinates
  // Padded rows u that fold onto row i: u = i+1, plus the top/bottom border rows.
  int64_t us[3];
  int nu = 0;
  us[nu++] = i + 1;
  if (i == 0) us[nu++] = 0;
  if (i == H - 1) us[nu++] = H + 1;
  for (int n = 0; n < nu; ++n) {
    const int64_t u = us[n];
    std::fill(tx, tx + 2 * (W + 4), acc_t(0));
    // Vertical part: Sx's column weights are (1,2,1), Sy's (-1,0,1), for di = 0,1,2 at row u-di.
    for (int di = 0; di < 3; ++di) {
      const int64_t r = u - di;
      if (r < 0 || r >= H) continue;
      const acc_t wx = di == 1 ? 2 : 1;
      const acc_t wy = di == 0 ? -1 : (di == 2 ? 1 : 0);
      const acc_t* rx = cx + r * W;
      const acc_t* ry = cy + r * W;
      for (int64_t j = 0; j < W; ++j) tx[j + 2] += wx * rx[j];
      if (wy != 0)
        for (int64_t j = 0; j < W; ++j) ty[j + 2] += wy * ry[j];
    }
    // Horizontal part: Sx's row weights (-1,0,1), Sy's (1,2,1), for dj = 0,1,2 at column v-dj.
    for (int64_t v = 0; v < W + 2; ++v)
      gp[v] = (tx[v] - tx[v + 2]) + (ty[v + 2] + 2 * ty[v + 1] + ty[v]);
    // Fold the padded columns onto the edge columns.
    for (int64_t j = 0; j < W; ++j) out[j] += gp[j + 1];
    out[0] += gp[0];
    out[W - 1] += gp[W + 1];
  }
}

template <typename scalar_t>
void gm_backward_impl(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b,
                      const at::Tensor& f, at::Tensor& ga, at::Tensor& gb, at::Tensor& gf) {
  using acc_t = scalar_t;
  const int64_t P = f.size(0) * f.size(1), H = f.size(2), W = f.size(3);
  const acc_t sc = static_cast<acc_t>(grad.item<double>()) / static_cast<acc_t>(P * H * W);
  const scalar_t* src[3] = {a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), f.data_ptr<scalar_t>()};
  // Coefficient maps d loss / d (Sobel response): (6, P, H, W), order ax ay bx by fx fy.
  at::Tensor cbuf = at::empty({6, P, H, W}, f.options());
  acc_t* cb = cbuf.data_ptr<acc_t>();
  const int64_t plane = P * H * W;
  at::parallel_for(0, P * H, sobel_grain(W), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(3 * (W + 2) + 6 * W);
    acc_t* pad = scratch.data();
    acc_t* g = pad + 3 * (W + 2);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t p = idx / H, i = idx % H;
      for (int t = 0; t < 3; ++t)
        sobel_row(src[t] + p * H * W, H, W, i, pad, g + 2 * t * W, g + (2 * t + 1) * W);
      const int64_t o = (p * H + i) * W;
      for (int d = 0; d < 2; ++d) {  // d = 0: x responses, 1: y responses
        const acc_t *ra = g + d * W, *rb = g + (2 + d) * W, *rf = g + (4 + d) * W;
        acc_t* ca = cb + d * plane + o;
        acc_t* cbb = cb + (2 + d) * plane + o;
        acc_t* cff = cb + (4 + d) * plane + o;
        for (int64_t j = 0; j < W; ++j) {
          const acc_t aa = std::abs(ra[j]), ab = std::abs(rb[j]);
          const acc_t m = std::max(aa, ab);
          const acc_t s = sc * sgn(std::abs(rf[j]) - m);
          // torch.maximum: the larger side takes the gradient; ties split it in half.
          const acc_t wa = aa > ab ? acc_t(1) : (aa == ab ? acc_t(0.5) : acc_t(0));
          cff[j] = s * sgn(rf[j]);
          ca[j] = -s * wa * sgn(ra[j]);
          cbb[j] = -s * (acc_t(1) - wa) * sgn(rb[j]);
        }
      }
    }
  });
  scalar_t* dst[3] = {ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), gf.data_ptr<scalar_t>()};
  at::parallel_for(0, P * H, sobel_grain(W), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(3 * W + 10 + W);
    acc_t* acc = scratch.data() + 3 * W + 10;
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t p = idx / H, i = idx % H;
      for (int t = 0; t < 3; ++t) {
        std::fill(acc, acc + W, acc_t(0));
        const acc_t* cx = cb + (2 * t) * plane + p * H * W;
        const acc_t* cy = cb + (2 * t + 1) * plane + p * H * W;
        sobel_adjoint_row(cx, cy, H, W, i, scratch.data(), acc);
        scalar_t* d = dst[t] + (p * H + i) * W;
        for (int64_t j = 0; j < W; ++j) d[j] = static_cast<scalar_t>(acc[j]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gradient_max_backward_cpu(const at::Tensor& grad,
                                                                         const at::Tensor& a_,
                                                                         const at::Tensor& b_,
                                                                         const at::Tensor& f_) {
  check_gm_args(a_, b_, f_);
  const at::Tensor a = a_.contiguous(), b = b_.contiguous(), f = f_.contiguous();
  at::Tensor ga = at::empty_like(a), gb = at::empty_like(b), gf = at::empty_like(f);
  if (f.numel() == 0) return {ga, gb, gf};
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "hfk_gradient_max_backward_cpu",
                             [&] { gm_backward_impl<scalar_t>(grad, a, b, f, ga, gb, gf); });
  return {ga, gb, gf};
}

}  // namespace
}  // namespace hfk_loss

TORCH_LIBRARY_IMPL(hfkernels_ext, CPU, m) {
  m.impl("ssim_forward", &hfk_loss::ssim_forward_cpu);
  m.impl("ssim_backward", &hfk_loss::ssim_backward_cpu);
  m.impl("gradient_max_forward", &hfk_loss::gradient_max_forward_cpu);
  m.impl("gradient_max_backward", &hfk_loss::gradient_max_backward_cpu);
}
