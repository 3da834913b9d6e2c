// Argument checks and output geometry of the hfkernels_ext ops, shared by the CPU kernels
// (csrc/cpu) and the CUDA glue (csrc/cuda): both backends reject the same inputs with the same
// messages, and only the dtype lists differ (each backend passes its own).
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <vector>

namespace hfk_ext {

// `what` names the op and backend in the message, e.g. "ssim (cpu backend)"; `names` spells the
// accepted dtypes for the user ("float32 or float64").
inline void check_dtype(const at::Tensor& t, const char* what, std::initializer_list<at::ScalarType> ok,
                        const char* names) {
  bool found = false;
  for (const auto s : ok) found = found || t.scalar_type() == s;
  TORCH_CHECK(found, what, ": dtype must be ", names, ", got ", t.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// ssim_forward / ssim_backward

// Planes P = B*C of (H, W) images; outputs (Ho, Wo); `pad` zero rows/columns before the image.
struct SsimGeom {
  int64_t B, C, P, H, W, Ho, Wo, pad;
};

// A window of `window_size` Gaussian taps of which `taps` are the kept ones, the first at index
// `lo` (computed once in Python: hfkernels.ops.loss_torch.kept_taps), as x and y (B,C,H,W) see it.
inline SsimGeom check_ssim(const at::Tensor& x, const at::Tensor& y, at::ArrayRef<double> taps, int64_t lo,
                           int64_t w, bool same) {
  TORCH_CHECK(x.dim() == 4, "ssim: x must be (B,C,H,W), got ", x.dim(), " dimensions");
  TORCH_CHECK(x.sizes() == y.sizes(), "ssim: x and y must have the same shape, got ", x.sizes(), " and ",
              y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "ssim: x and y must have the same dtype");
  TORCH_CHECK(x.device() == y.device(), "ssim: x and y must be on the same device");
  TORCH_CHECK(w >= 1, "ssim: window_size must be >= 1, got ", w);
  TORCH_CHECK(w <= x.size(2) && w <= x.size(3), "ssim: window_size ", w, " is larger than the image ",
              x.size(2), "x", x.size(3));
  const auto n = static_cast<int64_t>(taps.size());
  TORCH_CHECK(n >= 1 && lo >= 0 && lo + n <= w, "ssim: the ", n, " kept taps from index ", lo,
              " do not fit in a window of ", w);
  SsimGeom g;
  g.B = x.size(0);
  g.C = x.size(1);
  g.P = g.B * g.C;
  g.H = x.size(2);
  g.W = x.size(3);
  g.pad = same ? w / 2 : 0;
  g.Ho = same ? g.H : g.H - w + 1;
  g.Wo = same ? g.W : g.W - w + 1;
  return g;
}

// The backward's extra inputs: grad (B,) and the forward's coefficient maps (B,C,5,Ho,Wo).
inline void check_ssim_backward(const at::Tensor& grad, const at::Tensor& coefs, const SsimGeom& g) {
  TORCH_CHECK(coefs.numel() == g.P * 5 * g.Ho * g.Wo,
              "ssim_backward: coefs do not match the inputs (was ssim_forward called with save_coefs=True?)");
  TORCH_CHECK(grad.numel() == g.B, "ssim_backward: grad must have B elements");
}

// Taps indexed by window position (zero outside the kept range lo..hi), in the kernels' type.
template <typename T>
struct WindowTaps {
  std::vector<T> t;
  int lo, hi;
  WindowTaps(at::ArrayRef<double> kept, int64_t lo_, int64_t w)
      : t(static_cast<size_t>(w), T(0)), lo(static_cast<int>(lo_)),
        hi(static_cast<int>(lo_ + static_cast<int64_t>(kept.size())) - 1) {
    for (size_t i = 0; i < kept.size(); ++i) t[lo + i] = static_cast<T>(kept[i]);
  }
};

// ---------------------------------------------------------------------------------------------
// gradient_max_forward / gradient_max_backward

inline void check_gradient_max(const at::Tensor& a, const at::Tensor& b, const at::Tensor& f) {
  TORCH_CHECK(f.dim() == 4, "gradient_max: f must be (B,C,H,W), got ", f.dim(), " dimensions");
  TORCH_CHECK(a.sizes() == f.sizes() && b.sizes() == f.sizes(),
              "gradient_max: a, b and f must have the same shape, got ", a.sizes(), ", ", b.sizes(), " and ",
              f.sizes());
  TORCH_CHECK(a.scalar_type() == f.scalar_type() && b.scalar_type() == f.scalar_type(),
              "gradient_max: a, b and f must have the same dtype");
  TORCH_CHECK(a.device() == f.device() && b.device() == f.device(),
              "gradient_max: a, b and f must be on the same device");
}

// ---------------------------------------------------------------------------------------------
// fuse / fuse_backward

// `max_levels` is the backend's own limit (the CUDA tables are fixed-size arrays; the CPU has none).
inline void check_fuse(const at::Tensor& vis, const at::Tensor& ir, const at::Tensor& mu, int64_t levels,
                       int64_t max_levels) {
  TORCH_CHECK(vis.dim() == 4 && ir.dim() == 4 && mu.dim() == 4, "hfkernels_ext::fuse: vis, ir, mu must be 4-D");
  TORCH_CHECK(levels >= 1, "hfkernels_ext::fuse: levels must be >= 1, got ", levels);
  TORCH_CHECK(levels <= max_levels, "hfkernels_ext::fuse: levels must be at most ", max_levels,
              " on this backend, got ", levels);
  TORCH_CHECK(vis.numel() > 0, "hfkernels_ext::fuse: vis must not be empty");
  TORCH_CHECK(ir.scalar_type() == vis.scalar_type() && mu.scalar_type() == vis.scalar_type(),
              "hfkernels_ext::fuse: vis, ir, mu must share one dtype");
  TORCH_CHECK(ir.device() == vis.device() && mu.device() == vis.device(),
              "hfkernels_ext::fuse: vis, ir, mu must be on one device");
  const auto B = vis.size(0), C = vis.size(1), H = vis.size(2), W = vis.size(3);
  TORCH_CHECK(ir.size(0) == B && (ir.size(1) == 1 || ir.size(1) == C) && ir.size(2) == H && ir.size(3) == W,
              "hfkernels_ext::fuse: ir must be (B, 1|C, H, W) like vis ", vis.sizes(), ", got ", ir.sizes());
  TORCH_CHECK(mu.size(0) == B && mu.size(1) == 1 && mu.size(2) == H && mu.size(3) == W,
              "hfkernels_ext::fuse: mu must be (B, 1, H, W), got ", mu.sizes());
}

// The checked inputs of fuse / fuse_backward, contiguous; `grad` (the backward's, optional) in
// vis's dtype. A CUDA caller sets its device guard first: the copies are made on that device.
struct FuseInputs {
  at::Tensor vis, ir, mu, grad;
};

inline FuseInputs fuse_inputs(const at::Tensor& vis, const at::Tensor& ir, const at::Tensor& mu, int64_t levels,
                              int64_t max_levels, const at::Tensor& grad = at::Tensor()) {
  check_fuse(vis, ir, mu, levels, max_levels);
  FuseInputs in{vis.contiguous(), ir.contiguous(), mu.contiguous(), at::Tensor()};
  if (grad.defined()) {
    TORCH_CHECK(grad.sizes() == vis.sizes(), "hfkernels_ext::fuse_backward: grad must have vis's shape");
    in.grad = grad.to(vis.scalar_type()).contiguous();
  }
  return in;
}

}  // namespace hfk_ext
