// Torch glue of the CUDA loss kernels (csrc/cuda/loss_kernels.cu) for the CUDA dispatch key of
// the hfkernels_ext loss ops (schemas in csrc/registry.cpp, argument checks in csrc/ext_checks.h). Built only where torch has CUDA.
// Checks arguments, makes inputs contiguous, allocates outputs and workspaces through torch's
// caching allocator, and launches on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "../ext_checks.h"
#include "loss_kernels.cuh"

namespace hfk_loss_cuda_glue {
namespace {

namespace K = hfk_loss_cuda;

// torch scalar type -> CUDA element type.
template <typename S>
struct CudaType;
template <>
struct CudaType<float> {
  using type = float;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename S>
typename CudaType<S>::type* ptr(const at::Tensor& t) {
  return reinterpret_cast<typename CudaType<S>::type*>(t.data_ptr<S>());
}

// Calls f(S{}) with S the torch element type of dtype s (float32, float16, bfloat16).
template <typename F>
void dispatch(at::ScalarType s, F&& f) {
  switch (s) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "unsupported dtype ", s);
  }
}

void check_launch(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, what, ": ", cudaGetErrorString(e));
}

void check_cuda_dtype(const at::Tensor& t, const char* what) {
  hfk_ext::check_dtype(t, what, {at::kFloat, at::kHalf, at::kBFloat16}, "float32, float16 or bfloat16");
}

hfk_ext::SsimGeom check_ssim(const at::Tensor& x, const at::Tensor& y, at::ArrayRef<double> taps, int64_t lo,
                             int64_t w, bool same) {
  const hfk_ext::SsimGeom g = hfk_ext::check_ssim(x, y, taps, lo, w, same);
  check_cuda_dtype(x, "ssim (cuda backend)");
  TORCH_CHECK(static_cast<int64_t>(taps.size()) <= K::kMaxTaps, "ssim (cuda backend): ", taps.size(),
              " kept taps, more than the kernels take (", K::kMaxTaps, ")");
  return g;
}

std::tuple<at::Tensor, at::Tensor> ssim_forward_cuda(const at::Tensor& x_, const at::Tensor& y_,
                                                     at::ArrayRef<double> taps, int64_t lo, int64_t w,
                                                     double c1, double c2, bool same, bool save_coefs) {
  const hfk_ext::SsimGeom g = check_ssim(x_, y_, taps, lo, w, same);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor out = at::empty({g.B}, x.options());
  at::Tensor coefs = save_coefs ? at::empty({g.B, g.C, 5, g.Ho, g.Wo}, f32) : at::empty({0}, f32);
  if (x.numel() == 0) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
    return {out, coefs};
  }
  at::Tensor hbuf = at::empty({g.P, 5, g.H, g.Wo}, f32);
  at::Tensor partials = at::empty({K::ssim_partials(g.P, g.Ho, g.Wo)}, x.options().dtype(at::kDouble));
  const K::SsimWindow win{taps.data(), static_cast<int>(taps.size()), static_cast<int>(lo), w, same};
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    check_launch(K::ssim_forward(ptr<scalar_t>(x), ptr<scalar_t>(y), g.P, g.C, g.H, g.W, win,
                                 static_cast<float>(c1), static_cast<float>(c2), ptr<scalar_t>(out),
                                 save_coefs ? coefs.data_ptr<float>() : nullptr, hbuf.data_ptr<float>(),
                                 partials.data_ptr<double>(), stream),
                 "ssim_forward");
  });
  return {out, coefs};
}

std::tuple<at::Tensor, at::Tensor> ssim_backward_cuda(const at::Tensor& grad_, const at::Tensor& x_,
                                                      const at::Tensor& y_, const at::Tensor& coefs_,
                                                      at::ArrayRef<double> taps, int64_t lo, int64_t w,
                                                      bool same) {
  const hfk_ext::SsimGeom g = check_ssim(x_, y_, taps, lo, w, same);
  hfk_ext::check_ssim_backward(grad_, coefs_, g);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const at::Tensor coefs = coefs_.to(at::kFloat).contiguous();
  const at::Tensor grad = grad_.to(x.scalar_type()).contiguous();
  at::Tensor gx = at::empty_like(x), gy = at::empty_like(y);
  if (x.numel() == 0) return {gx, gy};
  at::Tensor vbuf = at::empty({g.P, 5, g.H, g.Wo}, x.options().dtype(at::kFloat));
  const K::SsimWindow win{taps.data(), static_cast<int>(taps.size()), static_cast<int>(lo), w, same};
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    check_launch(K::ssim_backward(ptr<scalar_t>(grad), ptr<scalar_t>(x), ptr<scalar_t>(y), coefs.data_ptr<float>(),
                                  g.P, g.C, g.H, g.W, win, vbuf.data_ptr<float>(), ptr<scalar_t>(gx),
                                  ptr<scalar_t>(gy), stream),
                 "ssim_backward");
  });
  return {gx, gy};
}

void check_gm_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& f) {
  hfk_ext::check_gradient_max(a, b, f);
  check_cuda_dtype(f, "gradient_max (cuda backend)");
}

at::Tensor gradient_max_forward_cuda(const at::Tensor& a_, const at::Tensor& b_,
                                     const at::Tensor& f_) {
  check_gm_args(a_, b_, f_);
  const c10::cuda::CUDAGuard guard(f_.device());
  const at::Tensor a = a_.contiguous(), b = b_.contiguous(), f = f_.contiguous();
  const int64_t P = f.size(0) * f.size(1), H = f.size(2), W = f.size(3);
  at::Tensor out = at::empty({}, f.options());
  if (f.numel() == 0) return out.fill_(std::numeric_limits<double>::quiet_NaN());
  at::Tensor partials = at::empty({K::gm_partials(P, H, W)}, f.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(f.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    check_launch(K::gradient_max_forward(ptr<scalar_t>(a), ptr<scalar_t>(b), ptr<scalar_t>(f), P, H, W,
                                         ptr<scalar_t>(out), partials.data_ptr<double>(), stream),
                 "gradient_max_forward");
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gradient_max_backward_cuda(const at::Tensor& grad_,
                                                                          const at::Tensor& a_,
                                                                          const at::Tensor& b_,
                                                                          const at::Tensor& f_) {
  check_gm_args(a_, b_, f_);
  const c10::cuda::CUDAGuard guard(f_.device());
  const at::Tensor a = a_.contiguous(), b = b_.contiguous(), f = f_.contiguous();
  const int64_t P = f.size(0) * f.size(1), H = f.size(2), W = f.size(3);
  at::Tensor ga = at::empty_like(a), gb = at::empty_like(b), gf = at::empty_like(f);
  if (f.numel() == 0) return {ga, gb, gf};
  const at::Tensor grad = grad_.to(f.scalar_type()).contiguous();
  at::Tensor cbuf = at::empty({6, P, H, W}, f.options().dtype(at::kFloat));
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(f.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    check_launch(K::gradient_max_backward(ptr<scalar_t>(grad), ptr<scalar_t>(a), ptr<scalar_t>(b),
                                          ptr<scalar_t>(f), P, H, W, cbuf.data_ptr<float>(), ptr<scalar_t>(ga),
                                          ptr<scalar_t>(gb), ptr<scalar_t>(gf), stream),
                 "gradient_max_backward");
  });
  return {ga, gb, gf};
}

}  // namespace
}  // namespace hfk_loss_cuda_glue

TORCH_LIBRARY_IMPL(hfkernels_ext, CUDA, m) {
  m.impl("ssim_forward", &hfk_loss_cuda_glue::ssim_forward_cuda);
  m.impl("ssim_backward", &hfk_loss_cuda_glue::ssim_backward_cuda);
  m.impl("gradient_max_forward", &hfk_loss_cuda_glue::gradient_max_forward_cuda);
  m.impl("gradient_max_backward", &hfk_loss_cuda_glue::gradient_max_backward_cuda);
}
