// Framework-free CUDA kernels of the training-loss ops (SSIM, Sobel gradient-max): launchers over
// raw pointers and a cudaStream_t, no torch headers. The torch glue is loss_cuda.cpp; the
// algorithm mirrors the CPU kernels in csrc/cpu/loss_cpu.cpp (the same kept taps, passed in by
// the caller; same clamp and tie conventions, same fixed Sobel order). Inputs float / __half / __nv_bfloat16,
// accumulation in float, sums of a whole image in double.
//
// Images are contiguous planes p = b*C + c of (H, W). Workspaces are allocated by the caller.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace hfk_loss_cuda {

constexpr int kBlock = 256;     // threads per block along a row
constexpr int kMaxTaps = 512;   // kept taps passed by value to the kernels

// Number of double partial sums the SSIM forward writes (one per block): P * Ho * ceil(Wo/kBlock).
inline int64_t ssim_partials(int64_t P, int64_t Ho, int64_t Wo) {
  return P * Ho * ((Wo + kBlock - 1) / kBlock);
}
// Same for the gradient-max forward: P * H * ceil(W/kBlock).
inline int64_t gm_partials(int64_t P, int64_t H, int64_t W) {
  return P * H * ((W + kBlock - 1) / kBlock);
}

// The SSIM window: a window of `size` Gaussian taps of which the `n` kept ones `taps[0..n-1]`
// (chosen by the caller, n <= kMaxTaps) sit at indices lo..lo+n-1; "same" (zero) or "valid" padding.
struct SsimWindow {
  const double* taps;
  int n, lo;
  int64_t size;
  bool same;
};

// ssim forward: out (B,) per-image mean SSIM (B = P / C); coefs (P, 5, Ho, Wo) or nullptr;
// hbuf workspace (P, 5, H, Wo) floats; partials workspace ssim_partials(...) doubles.
template <typename T>
cudaError_t ssim_forward(const T* x, const T* y, int64_t P, int64_t C, int64_t H, int64_t W,
                         const SsimWindow& win, float c1, float c2, T* out, float* coefs, float* hbuf,
                         double* partials, cudaStream_t stream);

// ssim backward: gx, gy (P, H, W) from grad (B,) and the forward's coefs; vbuf workspace
// (P, 5, H, Wo) floats.
template <typename T>
cudaError_t ssim_backward(const T* grad, const T* x, const T* y, const float* coefs, int64_t P,
                          int64_t C, int64_t H, int64_t W, const SsimWindow& win, float* vbuf, T* gx,
                          T* gy, cudaStream_t stream);

// gradient-max forward: out (0-dim); partials workspace gm_partials(...) doubles.
template <typename T>
cudaError_t gradient_max_forward(const T* a, const T* b, const T* f, int64_t P, int64_t H,
                                 int64_t W, T* out, double* partials, cudaStream_t stream);

// gradient-max backward: ga, gb, gf (P, H, W) from grad (0-dim); cbuf workspace (6, P, H, W).
template <typename T>
cudaError_t gradient_max_backward(const T* grad, const T* a, const T* b, const T* f, int64_t P,
                                  int64_t H, int64_t W, float* cbuf, T* ga, T* gb, T* gf,
                                  cudaStream_t stream);

}  // namespace hfk_loss_cuda
