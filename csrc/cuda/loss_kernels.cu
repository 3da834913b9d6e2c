// CUDA kernels of the training-loss ops; see loss_kernels.cuh. Framework-free: CUDA headers only.
//
// SSIM forward: (1) horizontal pass of x, y, x², y², xy over every input row -> hbuf;
// (2) vertical pass + SSIM map + backward coefficients + one double partial sum per block;
// (3) per-image reduction of the partials in a fixed order (deterministic).
// SSIM backward: (1) transposed vertical pass of the five coefficient maps -> vbuf;
// (2) transposed horizontal pass combined with x and y -> gx, gy.
// Gradient-max: Sobel (replicate padding, the reference's fixed order) per pixel; the backward
// writes six coefficient maps and then gathers the adjoint of "replicate-pad, correlate".
#include "loss_kernels.cuh"

#include "convert.cuh"

namespace hfk_loss_cuda {
namespace {

using hfk_cuda_convert::from_f;
using hfk_cuda_convert::to_f;

// The kept taps, passed to the kernels by value (they live in the parameter space).
struct Taps {
  float t[kMaxTaps];  // t[i - lo] for the kept taps i = lo..hi
  int lo, hi;
};

Taps make_taps(const SsimWindow& win) {
  Taps r;
  r.lo = win.lo;
  r.hi = win.lo + win.n - 1;
  for (int i = 0; i < win.n; ++i) r.t[i] = static_cast<float>(win.taps[i]);
  return r;
}

// Sum of one double per thread over the block; the result is valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double sh[kBlock];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

// ------------------------------------------------------------------------------------------
// SSIM

template <typename T>
__global__ void ssim_hpass(const T* __restrict__ x, const T* __restrict__ y, int64_t H, int64_t W,
                           int64_t Wo, int64_t pad, Taps tp, float* __restrict__ hbuf) {
  const int64_t q = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x;
  const int64_t k = blockIdx.y, p = blockIdx.z;
  if (q >= Wo) return;
  const T* xr = x + (p * H + k) * W;
  const T* yr = y + (p * H + k) * W;
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;
  for (int i = tp.lo; i <= tp.hi; ++i) {
    const int64_t m = q + i - pad;
    if (m < 0 || m >= W) continue;  // zero padding
    const float t = tp.t[i - tp.lo];
    const float a = to_f(xr[m]), b = to_f(yr[m]);
    s0 += t * a;
    s1 += t * b;
    s2 += t * (a * a);
    s3 += t * (b * b);
    s4 += t * (a * b);
  }
  const int64_t plane = H * Wo;
  float* o = hbuf + p * 5 * plane + k * Wo + q;
  o[0] = s0;
  o[plane] = s1;
  o[2 * plane] = s2;
  o[3 * plane] = s3;
  o[4 * plane] = s4;
}

__global__ void ssim_vpass(const float* __restrict__ hbuf, int64_t H, int64_t Ho, int64_t Wo,
                           int64_t pad, Taps tp, float c1, float c2, float* __restrict__ coefs,
                           double* __restrict__ partials) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x;
  const int64_t q = blockIdx.y, p = blockIdx.z;
  double contrib = 0;
  if (j < Wo) {
    const int64_t plane = H * Wo;
    const float* hb = hbuf + p * 5 * plane + j;
    float st[5] = {0, 0, 0, 0, 0};
    for (int i = tp.lo; i <= tp.hi; ++i) {
      const int64_t k = q + i - pad;
      if (k < 0 || k >= H) continue;
      const float t = tp.t[i - tp.lo];
      for (int s = 0; s < 5; ++s) st[s] += t * hb[s * plane + k * Wo];
    }
    const float a = st[0], b = st[1];
    const float vx_raw = st[2] - a * a, vy_raw = st[3] - b * b;
    const float vx = vx_raw > 0 ? vx_raw : 0.f;
    const float vy = vy_raw > 0 ? vy_raw : 0.f;
    const float bound = 0.5f * (vx + vy);
    const float cxy_raw = st[4] - a * b;
    const float cxy = cxy_raw < -bound ? -bound : (cxy_raw > bound ? bound : cxy_raw);
    const float n1 = 2 * a * b + c1, n2 = 2 * cxy + c2;
    const float d1 = a * a + b * b + c1, d2 = vx + vy + c2;
    const float den = d1 * d2;
    const float s = __fdiv_rn(n1 * n2, den);  // exact division: equal terms give exactly 1
    contrib = s;
    if (coefs != nullptr) {
      // torch.clamp / clamp_min gradient conventions, as on the CPU.
      const float inv = 1.f / den;
      const float dc = 2 * n1 * inv;
      float dxy = 0, dbound = 0;
      if (cxy_raw < -bound) {
        dbound = -bound < bound ? -dc : 0.f;
      } else if (cxy_raw > bound) {
        dbound = dc;
      } else {
        dxy = dc;
      }
      const float dv = -s / d2 + 0.5f * dbound;
      const float dvx = vx_raw >= 0 ? dv : 0.f;
      const float dvy = vy_raw >= 0 ? dv : 0.f;
      const float dmx = 2 * b * n2 * inv - 2 * a * s / d1;
      const float dmy = 2 * a * n2 * inv - 2 * b * s / d1;
      const int64_t oplane = Ho * Wo;
      float* o = coefs + p * 5 * oplane + q * Wo + j;
      o[0] = dmx - 2 * a * dvx - b * dxy;
      o[oplane] = dmy - 2 * b * dvy - a * dxy;
      o[2 * oplane] = dvx;
      o[3 * oplane] = dvy;
      o[4 * oplane] = dxy;
    }
  }
  const double total = block_sum(contrib);
  if (threadIdx.x == 0) partials[(p * Ho + q) * gridDim.x + blockIdx.x] = total;
}

// out[b] = sum of the partials of planes b*C .. b*C+C-1, divided by n.
template <typename T>
__global__ void reduce_per_image(const double* __restrict__ partials, int64_t per_image, double n,
                                 T* __restrict__ out) {
  const int64_t b = blockIdx.x;
  double s = 0;
  for (int64_t k = threadIdx.x; k < per_image; k += kBlock) s += partials[b * per_image + k];
  const double total = block_sum(s);
  if (threadIdx.x == 0) out[b] = from_f<T>(static_cast<float>(total / n));
}

__global__ void ssim_vt(const float* __restrict__ coefs, int64_t H, int64_t Ho, int64_t Wo,
                        int64_t pad, Taps tp, float* __restrict__ vbuf) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x;
  const int64_t k = blockIdx.y, p = blockIdx.z;
  if (j >= Wo) return;
  const int64_t oplane = Ho * Wo, plane = H * Wo;
  const float* cf = coefs + p * 5 * oplane + j;
  float v[5] = {0, 0, 0, 0, 0};
  for (int i = tp.lo; i <= tp.hi; ++i) {
    const int64_t q = k + pad - i;  // output row that input row k fed through tap i
    if (q < 0 || q >= Ho) continue;
    const float t = tp.t[i - tp.lo];
    for (int s = 0; s < 5; ++s) v[s] += t * cf[s * oplane + q * Wo];
  }
  float* o = vbuf + p * 5 * plane + k * Wo + j;
  for (int s = 0; s < 5; ++s) o[s * plane] = v[s];
}

template <typename T>
__global__ void ssim_ht(const float* __restrict__ vbuf, const T* __restrict__ grad,
                        const T* __restrict__ x, const T* __restrict__ y, int64_t C, int64_t H,
                        int64_t W, int64_t Wo, int64_t pad, Taps tp, float inv_n,
                        T* __restrict__ gx, T* __restrict__ gy) {
  const int64_t m = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x;
  const int64_t k = blockIdx.y, p = blockIdx.z;
  if (m >= W) return;
  const int64_t plane = H * Wo;
  const float* vb = vbuf + p * 5 * plane + k * Wo;
  float f[5] = {0, 0, 0, 0, 0};
  for (int i = tp.lo; i <= tp.hi; ++i) {
    const int64_t n = m + pad - i;
    if (n < 0 || n >= Wo) continue;
    const float t = tp.t[i - tp.lo];
    for (int s = 0; s < 5; ++s) f[s] += t * vb[s * plane + n];
  }
  const float sc = to_f(grad[p / C]) * inv_n;
  const int64_t o = (p * H + k) * W + m;
  const float a = to_f(x[o]), b = to_f(y[o]);
  gx[o] = from_f<T>(sc * (f[0] + 2 * a * f[2] + b * f[4]));
  gy[o] = from_f<T>(sc * (f[1] + 2 * b * f[3] + a * f[4]));
}

// ------------------------------------------------------------------------------------------
// Gradient-max

// Sobel responses at (i, j) with replicate padding, in the reference's fixed order:
// gx = (d[i-1] + 2 d[i]) + d[i+1], d[r] = v[r][j+1] - v[r][j-1]; gy transposed.
template <typename T>
__device__ __forceinline__ void sobel_at(const T* pl, int64_t H, int64_t W, int64_t i, int64_t j,
                                         float* gx, float* gy) {
  const int64_t r[3] = {i > 0 ? i - 1 : 0, i, i < H - 1 ? i + 1 : H - 1};
  const int64_t c[3] = {j > 0 ? j - 1 : 0, j, j < W - 1 ? j + 1 : W - 1};
  float d[3], e[3];
  for (int u = 0; u < 3; ++u) {
    d[u] = __fsub_rn(to_f(pl[r[u] * W + c[2]]), to_f(pl[r[u] * W + c[0]]));
    e[u] = __fsub_rn(to_f(pl[r[2] * W + c[u]]), to_f(pl[r[0] * W + c[u]]));
  }
  *gx = __fadd_rn(__fadd_rn(d[0], 2.f * d[1]), d[2]);
  *gy = __fadd_rn(__fadd_rn(e[0], 2.f * e[1]), e[2]);
}

template <typename T>
__global__ void gm_forward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                  const T* __restrict__ f, int64_t H, int64_t W,
                                  double* __restrict__ partials) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x;
  const int64_t i = blockIdx.y, p = blockIdx.z;
  double contrib = 0;
  if (j < W) {
    const int64_t off = p * H * W;
    float ax, ay, bx, by, fx, fy;
    sobel_at(a + off, H, W, i, j, &ax, &ay);
    sobel_at(b + off, H, W, i, j, &bx, &by);
    sobel_at(f + off, H, W, i, j, &fx, &fy);
    const float mx = fmaxf(fabsf(ax), fabsf(bx)), my = fmaxf(fabsf(ay), fabsf(by));
    contrib = static_cast<double>(fabsf(fabsf(fx) - mx)) + static_cast<double>(fabsf(fabsf(fy) - my));
  }
  const double total = block_sum(contrib);
  if (threadIdx.x == 0) partials[(p * H + i) * gridDim.x + blockIdx.x] = total;
}

__device__ __forceinline__ float sgnf(float v) { return static_cast<float>((v > 0) - (v < 0)); }

template <typename T>
__global__ void gm_coef_kernel(const T* __restrict__ grad, const T* __restrict__ a,
                               const T* __restrict__ b, const T* __restrict__ f, int64_t P,
                               int64_t H, int64_t W, float inv_n, float* __restrict__ cbuf) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x;
  const int64_t i = blockIdx.y, p = blockIdx.z;
  if (j >= W) return;
  const int64_t off = p * H * W, n = P * H * W, o = off + i * W + j;
  float g[6];  // ax ay bx by fx fy
  sobel_at(a + off, H, W, i, j, &g[0], &g[1]);
  sobel_at(b + off, H, W, i, j, &g[2], &g[3]);
  sobel_at(f + off, H, W, i, j, &g[4], &g[5]);
  const float sc = to_f(*grad) * inv_n;
  for (int d = 0; d < 2; ++d) {
    const float aa = fabsf(g[d]), ab = fabsf(g[2 + d]);
    const float s = sc * sgnf(fabsf(g[4 + d]) - fmaxf(aa, ab));
    // torch.maximum: the larger side takes the gradient; ties split it in half.
    const float wa = aa > ab ? 1.f : (aa == ab ? 0.5f : 0.f);
    cbuf[d * n + o] = -s * wa * sgnf(g[d]);
    cbuf[(2 + d) * n + o] = -s * (1.f - wa) * sgnf(g[2 + d]);
    cbuf[(4 + d) * n + o] = s * sgnf(g[4 + d]);
  }
}

// Adjoint of "replicate-pad by 1, then correlate with Sobel-x / Sobel-y" at pixel (i, j):
// the full correlation G[u][v] = sum K[di][dj] c[u-di][v-dj] (padded coordinates u, v), summed over
// the padded positions that replicate padding maps onto (i, j).
__device__ float sobel_adjoint_at(const float* cx, const float* cy, int64_t H, int64_t W,
                                  int64_t i, int64_t j) {
  int64_t us[3], vs[3];
  int nu = 0, nv = 0;
  us[nu++] = i + 1;
  if (i == 0) us[nu++] = 0;
  if (i == H - 1) us[nu++] = H + 1;
  vs[nv++] = j + 1;
  if (j == 0) vs[nv++] = 0;
  if (j == W - 1) vs[nv++] = W + 1;
  const float sv[3] = {1.f, 2.f, 1.f}, sd[3] = {-1.f, 0.f, 1.f};
  float acc = 0;
  for (int a = 0; a < nu; ++a)
    for (int b = 0; b < nv; ++b)
      for (int di = 0; di < 3; ++di) {
        const int64_t r = us[a] - di;
        if (r < 0 || r >= H) continue;
        for (int dj = 0; dj < 3; ++dj) {
          const int64_t c = vs[b] - dj;
          if (c < 0 || c >= W) continue;
          // Sx[di][dj] = (1,2,1)[di] * (-1,0,1)[dj]; Sy[di][dj] = Sx[dj][di].
          acc += sv[di] * sd[dj] * cx[r * W + c] + sd[di] * sv[dj] * cy[r * W + c];
        }
      }
  return acc;
}

template <typename T>
__global__ void gm_adjoint_kernel(const float* __restrict__ cbuf, int64_t P, int64_t H, int64_t W,
                                  T* __restrict__ ga, T* __restrict__ gb, T* __restrict__ gf) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x;
  const int64_t i = blockIdx.y, p = blockIdx.z;
  if (j >= W) return;
  const int64_t off = p * H * W, n = P * H * W, o = off + i * W + j;
  T* dst[3] = {ga, gb, gf};
  for (int t = 0; t < 3; ++t)
    dst[t][o] = from_f<T>(sobel_adjoint_at(cbuf + 2 * t * n + off, cbuf + (2 * t + 1) * n + off,
                                           H, W, i, j));
}

inline dim3 row_grid(int64_t n, int64_t rows, int64_t planes) {
  return dim3(static_cast<unsigned>((n + kBlock - 1) / kBlock), static_cast<unsigned>(rows),
              static_cast<unsigned>(planes));
}

}  // namespace

// Padding and output size of the window over an (H, W) image.
struct Geom {
  int64_t pad, Ho, Wo;
};

inline Geom geom(const SsimWindow& win, int64_t H, int64_t W) {
  const int64_t w = win.size;
  return {win.same ? w / 2 : 0, win.same ? H : H - w + 1, win.same ? W : W - w + 1};
}

template <typename T>
cudaError_t ssim_forward(const T* x, const T* y, int64_t P, int64_t C, int64_t H, int64_t W,
                         const SsimWindow& win, float c1, float c2, T* out, float* coefs, float* hbuf,
                         double* partials, cudaStream_t stream) {
  if (win.n < 1 || win.n > kMaxTaps) return cudaErrorInvalidValue;
  const Taps tp = make_taps(win);
  const auto [pad, Ho, Wo] = geom(win, H, W);
  ssim_hpass<T><<<row_grid(Wo, H, P), kBlock, 0, stream>>>(x, y, H, W, Wo, pad, tp, hbuf);
  const dim3 g = row_grid(Wo, Ho, P);
  ssim_vpass<<<g, kBlock, 0, stream>>>(hbuf, H, Ho, Wo, pad, tp, c1, c2, coefs, partials);
  const int64_t per_image = C * Ho * g.x;
  reduce_per_image<T><<<static_cast<unsigned>(P / C), kBlock, 0, stream>>>(
      partials, per_image, static_cast<double>(C * Ho * Wo), out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t ssim_backward(const T* grad, const T* x, const T* y, const float* coefs, int64_t P,
                          int64_t C, int64_t H, int64_t W, const SsimWindow& win, float* vbuf, T* gx,
                          T* gy, cudaStream_t stream) {
  if (win.n < 1 || win.n > kMaxTaps) return cudaErrorInvalidValue;
  const Taps tp = make_taps(win);
  const auto [pad, Ho, Wo] = geom(win, H, W);
  ssim_vt<<<row_grid(Wo, H, P), kBlock, 0, stream>>>(coefs, H, Ho, Wo, pad, tp, vbuf);
  const float inv_n = static_cast<float>(1.0 / static_cast<double>(C * Ho * Wo));
  ssim_ht<T><<<row_grid(W, H, P), kBlock, 0, stream>>>(vbuf, grad, x, y, C, H, W, Wo, pad, tp,
                                                         inv_n, gx, gy);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gradient_max_forward(const T* a, const T* b, const T* f, int64_t P, int64_t H,
                                 int64_t W, T* out, double* partials, cudaStream_t stream) {
  const dim3 g = row_grid(W, H, P);
  gm_forward_kernel<T><<<g, kBlock, 0, stream>>>(a, b, f, H, W, partials);
  reduce_per_image<T><<<1, kBlock, 0, stream>>>(partials, P * H * g.x,
                                                 static_cast<double>(P * H * W), out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gradient_max_backward(const T* grad, const T* a, const T* b, const T* f, int64_t P,
                                  int64_t H, int64_t W, float* cbuf, T* ga, T* gb, T* gf,
                                  cudaStream_t stream) {
  const dim3 g = row_grid(W, H, P);
  const float inv_n = static_cast<float>(1.0 / static_cast<double>(P * H * W));
  gm_coef_kernel<T><<<g, kBlock, 0, stream>>>(grad, a, b, f, P, H, W, inv_n, cbuf);
  gm_adjoint_kernel<T><<<g, kBlock, 0, stream>>>(cbuf, P, H, W, ga, gb, gf);
  return cudaGetLastError();
}

#define HFK_INSTANTIATE(T)                                                                     \
  template cudaError_t ssim_forward<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, \
                                       const SsimWindow&, float, float, T*, float*, float*,    \
                                       double*, cudaStream_t);                                 \
  template cudaError_t ssim_backward<T>(const T*, const T*, const T*, const float*, int64_t,   \
                                        int64_t, int64_t, int64_t, const SsimWindow&, float*,  \
                                        T*, T*, cudaStream_t);                                 \
  template cudaError_t gradient_max_forward<T>(const T*, const T*, const T*, int64_t, int64_t, \
                                               int64_t, T*, double*, cudaStream_t);            \
  template cudaError_t gradient_max_backward<T>(const T*, const T*, const T*, const T*,        \
                                                int64_t, int64_t, int64_t, float*, T*, T*, T*, \
                                                cudaStream_t);

HFK_INSTANTIATE(float)
HFK_INSTANTIATE(__half)
HFK_INSTANTIATE(__nv_bfloat16)

}  // namespace hfk_loss_cuda
