// Torch glue of the CUDA loss kernels (csrc/cuda/loss_kernels.cu) for the CUDA dispatch key of
// the hfkernels_ext loss ops (schemas in csrc/cpu/loss_cpu.cpp). Built only where torch has CUDA.
// Checks arguments, makes inputs contiguous, allocates outputs and workspaces through torch's
// caching allocator, and launches on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

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

void check_cuda(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, what, ": ", e == cudaErrorInvalidValue
                                               ? "window keeps more taps than the CUDA kernels take"
                                               : cudaGetErrorString(e));
}

void check_dtype(const at::Tensor& t, const char* op) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, op,
              " (cuda backend): dtype must be float32, float16 or bfloat16, got ", s);
}

void check_ssim_args(const at::Tensor& x, const at::Tensor& y, int64_t w, double sigma) {
  TORCH_CHECK(x.dim() == 4, "ssim: x must be (B,C,H,W), got ", x.dim(), " dimensions");
  TORCH_CHECK(x.sizes() == y.sizes(), "ssim: x and y must have the same shape, got ", x.sizes(),
              " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "ssim: x and y must have the same dtype");
  TORCH_CHECK(x.device() == y.device(), "ssim: x and y must be on the same device");
  TORCH_CHECK(w >= 1, "ssim: window_size must be >= 1, got ", w);
  TORCH_CHECK(w <= x.size(2) && w <= x.size(3), "ssim: window_size ", w,
              " is larger than the image ", x.size(2), "x", x.size(3));
  TORCH_CHECK(sigma > 0, "ssim: sigma must be > 0, got ", sigma);
  check_dtype(x, "ssim");
}

std::tuple<at::Tensor, at::Tensor> ssim_forward_cuda(const at::Tensor& x_, const at::Tensor& y_,
                                                     int64_t w, double sigma, double c1, double c2,
                                                     bool same, bool save_coefs) {
  check_ssim_args(x_, y_, w, sigma);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = B * C;
  const int64_t Ho = same ? H : H - w + 1, Wo = same ? W : W - w + 1;
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor out = at::empty({B}, x.options());
  at::Tensor coefs = save_coefs ? at::empty({B, C, 5, Ho, Wo}, f32) : at::empty({0}, f32);
  if (x.numel() == 0) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
    return {out, coefs};
  }
  at::Tensor hbuf = at::empty({P, 5, H, Wo}, f32);
  at::Tensor partials = at::empty({K::ssim_partials(P, Ho, Wo)}, x.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
                                      check_cuda(K::ssim_forward(
                                                     ptr<scalar_t>(x), ptr<scalar_t>(y), P, C, H,
                                                     W, w, sigma, same, static_cast<float>(c1),
                                                     static_cast<float>(c2), ptr<scalar_t>(out),
                                                     save_coefs ? coefs.data_ptr<float>() : nullptr,
                                                     hbuf.data_ptr<float>(),
                                                     partials.data_ptr<double>(), stream),
                                                 "ssim_forward");
                                    });
  return {out, coefs};
}

std::tuple<at::Tensor, at::Tensor> ssim_backward_cuda(const at::Tensor& grad_,
                                                      const at::Tensor& x_, const at::Tensor& y_,
                                                      const at::Tensor& coefs_, int64_t w,
                                                      double sigma, bool same) {
  check_ssim_args(x_, y_, w, sigma);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = B * C;
  const int64_t Ho = same ? H : H - w + 1, Wo = same ? W : W - w + 1;
  TORCH_CHECK(coefs_.numel() == P * 5 * Ho * Wo,
              "ssim_backward: coefs do not match the inputs (was ssim_forward called with "
              "save_coefs=True?)");
  TORCH_CHECK(grad_.numel() == B, "ssim_backward: grad must have B elements");
  const at::Tensor coefs = coefs_.to(at::kFloat).contiguous();
  const at::Tensor grad = grad_.to(x.scalar_type()).contiguous();
  at::Tensor gx = at::empty_like(x), gy = at::empty_like(y);
  if (x.numel() == 0) return {gx, gy};
  at::Tensor vbuf = at::empty({P, 5, H, Wo}, x.options().dtype(at::kFloat));
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
          check_cuda(K::ssim_backward(ptr<scalar_t>(grad), ptr<scalar_t>(x), ptr<scalar_t>(y),
                                      coefs.data_ptr<float>(), P, C, H, W, w, sigma, same,
                                      vbuf.data_ptr<float>(), ptr<scalar_t>(gx),
                                      ptr<scalar_t>(gy), stream),
                     "ssim_backward");
        });
  return {gx, gy};
}

void check_gm_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& f) {
  TORCH_CHECK(f.dim() == 4, "gradient_max: f must be (B,C,H,W), got ", f.dim(), " dimensions");
  TORCH_CHECK(a.sizes() == f.sizes() && b.sizes() == f.sizes(),
              "gradient_max: a, b and f must have the same shape, got ", a.sizes(), ", ",
              b.sizes(), " and ", f.sizes());
  TORCH_CHECK(a.scalar_type() == f.scalar_type() && b.scalar_type() == f.scalar_type(),
              "gradient_max: a, b and f must have the same dtype");
  check_dtype(f, "gradient_max");
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
          check_cuda(K::gradient_max_forward(ptr<scalar_t>(a), ptr<scalar_t>(b), ptr<scalar_t>(f),
                                             P, H, W, ptr<scalar_t>(out),
                                             partials.data_ptr<double>(), stream),
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
          check_cuda(K::gradient_max_backward(ptr<scalar_t>(grad), ptr<scalar_t>(a),
                                              ptr<scalar_t>(b), ptr<scalar_t>(f), P, H, W,
                                              cbuf.data_ptr<float>(), ptr<scalar_t>(ga),
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
