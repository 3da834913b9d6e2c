// CUDA kernels of the fused pyramid fusion: one thread per output element, each evaluating the
// separable banded operators of fuse_plan.h directly (sum over the row taps of the sum over the
// column taps). The passes and their order are those of csrc/cpu/fuse_cpu.cpp, whose tests cover
// the algorithm; this file only has to express the same arithmetic on the device.
#include "fuse_kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "convert.cuh"

namespace hfk {
namespace cuda {
namespace {

using hfk_cuda_convert::from_f;
using hfk_cuda_convert::to_f;

// Plane loaders: value at (row r, column c) of one plane.
template <typename T>
struct Load {
  const T* p;
  int w;
  __device__ __forceinline__ float operator()(int r, int c) const { return to_f(p[(int64_t)r * w + c]); }
};

template <typename T>
struct LoadDiff {  // a - b (D = ir - vis)
  const T* a;
  const T* b;
  int w;
  __device__ __forceinline__ float operator()(int r, int c) const {
    const int64_t o = (int64_t)r * w + c;
    return to_f(a[o]) - to_f(b[o]);
  }
};

template <typename T, typename M>
struct LoadProd {  // a * m (mu_k Gamma_k)
  const T* a;
  const M* m;
  int w;
  __device__ __forceinline__ float operator()(int r, int c) const {
    const int64_t o = (int64_t)r * w + c;
    return to_f(a[o]) * to_f(m[o]);
  }
};

// sum_s V[i][s] sum_t H[j][t] x[V.idx][H.idx]
template <typename F>
__device__ __forceinline__ float sep_at(const DEll& V, const DEll& H, int i, int j, const F& x) {
  float acc = 0.f;
  for (int s = 0; s < V.width; ++s) {
    const float wv = V.w[i * V.width + s];
    if (wv == 0.f) continue;
    const int r = V.idx[i * V.width + s];
    float row = 0.f;
    for (int t = 0; t < H.width; ++t) {
      const float wh = H.w[j * H.width + t];
      if (wh != 0.f) row += wh * x(r, H.idx[j * H.width + t]);
    }
    acc += wv * row;
  }
  return acc;
}

#define HFK_GRID_LOOP(n) \
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < (n); t += (int64_t)gridDim.x * blockDim.x)

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return (int)(b < 65535 * 8 ? (b < 1 ? 1 : b) : 65535 * 8);
}

// mu_k = resize(mu): out (B, hk, wk) float, mu (B, H, W).
template <typename T>
__global__ void mu_level_kernel(float* out, const T* mu, int B, int H, int W, int hk, int wk, DEll V, DEll Hh) {
  HFK_GRID_LOOP((int64_t)B * hk * wk) {
    const int j = (int)(t % wk), i = (int)((t / wk) % hk), b = (int)(t / ((int64_t)wk * hk));
    out[t] = sep_at(V, Hh, i, j, Load<T>{mu + (int64_t)b * H * W, W});
  }
}

// G_1 = dn(ir - vis): out (P, h1, w1).
template <typename T>
__global__ void down_diff_kernel(float* out, const T* vis, const T* ir, int P, int C, int Cir, int H, int W, int h1,
                                 int w1, DEll V, DEll Hh) {
  HFK_GRID_LOOP((int64_t)P * h1 * w1) {
    const int j = (int)(t % w1), i = (int)((t / w1) % h1), p = (int)(t / ((int64_t)w1 * h1));
    const int pi = (p / C) * Cir + (Cir == 1 ? 0 : p % C);
    const int64_t s0 = (int64_t)H * W;
    out[t] = sep_at(V, Hh, i, j, LoadDiff<T>{ir + pi * s0, vis + p * s0, W});
  }
}

// out (P, hn, wn) = dn(src) with src (P, hk, wk) float.
__global__ void down_kernel(float* out, const float* src, int P, int hk, int wk, int hn, int wn, DEll V, DEll Hh) {
  HFK_GRID_LOOP((int64_t)P * hn * wn) {
    const int j = (int)(t % wn), i = (int)((t / wn) % hn), p = (int)(t / ((int64_t)wn * hn));
    out[t] = sep_at(V, Hh, i, j, Load<float>{src + (int64_t)p * hk * wk, wk});
  }
}

// R_L = mu_L G_L.
__global__ void scale_kernel(float* out, const float* g, const float* mu, int P, int C, int64_t s) {
  HFK_GRID_LOOP((int64_t)P * s) {
    const int64_t p = t / s;
    out[t] = mu[(p / C) * s + t % s] * g[t];
  }
}

// R_k = U R_{k+1} + mu_k (G_k - U G_{k+1}), k >= 1, all float.
__global__ void up_blend_kernel(float* out, const float* rn, const float* gn, const float* gk, const float* mk, int P,
                                int C, int hk, int wk, int hn, int wn, DEll V, DEll Hh) {
  HFK_GRID_LOOP((int64_t)P * hk * wk) {
    const int j = (int)(t % wk), i = (int)((t / wk) % hk), p = (int)(t / ((int64_t)wk * hk));
    const int64_t sn = (int64_t)hn * wn;
    const float us = sep_at(V, Hh, i, j, Load<float>{rn + p * sn, wn});
    const float ug = sep_at(V, Hh, i, j, Load<float>{gn + p * sn, wn});
    const float m = mk[((int64_t)(p / C) * hk + i) * wk + j];
    out[t] = us + m * (gk[t] - ug);
  }
}

// out = vis + U R_1 + mu (ir - vis - U G_1).
template <typename T>
__global__ void up_blend_last_kernel(T* out, const T* vis, const T* ir, const T* mu, const float* r1, const float* g1,
                                     int P, int C, int Cir, int H, int W, int h1, int w1, DEll V, DEll Hh) {
  HFK_GRID_LOOP((int64_t)P * H * W) {
    const int j = (int)(t % W), i = (int)((t / W) % H), p = (int)(t / ((int64_t)W * H));
    const int64_t s1 = (int64_t)h1 * w1, s0 = (int64_t)H * W, o = (int64_t)i * W + j;
    const int pi = (p / C) * Cir + (Cir == 1 ? 0 : p % C);
    const float us = sep_at(V, Hh, i, j, Load<float>{r1 + p * s1, w1});
    const float ug = sep_at(V, Hh, i, j, Load<float>{g1 + p * s1, w1});
    const float v = to_f(vis[t]);
    const float a = to_f(ir[pi * s0 + o]);
    const float m = to_f(mu[(p / C) * s0 + o]);
    out[t] = from_f<T>(v + us + m * ((a - v) - ug));
  }
}

// Gamma_{k+1} = U^T Gamma_k, V_{k+1} = U^T (mu_k Gamma_k); src/m of type S/M, outputs float.
template <typename S, typename M>
__global__ void adj_up_kernel(float* og, float* ov, const S* src, const M* mk, int P, int C, int hk, int wk, int hn,
                              int wn, DEll V, DEll Hh) {
  HFK_GRID_LOOP((int64_t)P * hn * wn) {
    const int j = (int)(t % wn), i = (int)((t / wn) % hn), p = (int)(t / ((int64_t)wn * hn));
    const int64_t sk = (int64_t)hk * wk;
    og[t] = sep_at(V, Hh, i, j, Load<S>{src + p * sk, wk});
    ov[t] = sep_at(V, Hh, i, j, LoadProd<S, M>{src + p * sk, mk + (int64_t)(p / C) * sk, wk});
  }
}

// Level k >= 1 of the backward, one thread per (b, i, j) looping over channels:
// T_k = mu_k Gamma_k - V_k + dn^T T_{k+1} (in place of V_k), gmu_k = sum_c (G_k - U G_{k+1}) Gamma_k.
__global__ void level_bwd_kernel(float* tk, float* gmu, const float* gk, const float* gam, const float* mk,
                                 const float* tn, const float* gn, int B, int C, int hk, int wk, int hn, int wn,
                                 bool top, DEll dnTV, DEll dnTH, DEll upV, DEll upH) {
  HFK_GRID_LOOP((int64_t)B * hk * wk) {
    const int j = (int)(t % wk), i = (int)((t / wk) % hk), b = (int)(t / ((int64_t)wk * hk));
    const int64_t sk = (int64_t)hk * wk, sn = (int64_t)hn * wn, o = (int64_t)i * wk + j;
    const float m = mk[b * sk + o];
    float acc = 0.f;
    for (int c = 0; c < C; ++c) {
      const int64_t p = (int64_t)b * C + c;
      const float ga = gam[p * sk + o];
      float tv = m * ga - tk[p * sk + o];
      float lk = gk[p * sk + o];
      if (!top) {
        tv += sep_at(dnTV, dnTH, i, j, Load<float>{tn + p * sn, wn});
        lk -= sep_at(upV, upH, i, j, Load<float>{gn + p * sn, wn});
      }
      tk[p * sk + o] = tv;
      acc += lk * ga;
    }
    gmu[t] = acc;
  }
}

struct MuGrads {  // gmu_k and their adjoint resize tables, k = 1..L
  const float* g[kMaxLevels + 1];
  DEll v[kMaxLevels + 1], h[kMaxLevels + 1];
  int w[kMaxLevels + 1];
  int64_t s[kMaxLevels + 1];
};

// Level 0: grad_D = mu g + dn^T T_1, grad_vis = g - grad_D, grad_ir = grad_D (summed over channels
// when broadcast), grad_mu = sum_c (D - U G_1) g + sum_k resize_k^T gmu_k.
template <typename T>
__global__ void level0_bwd_kernel(T* gvis, T* gir, T* gmu, const T* gr, const T* vis, const T* ir, const T* mu,
                                  const float* t1, const float* g1, int B, int C, int Cir, int H, int W, int h1, int w1,
                                  int L, DEll dnTV, DEll dnTH, DEll upV, DEll upH, MuGrads mg) {
  HFK_GRID_LOOP((int64_t)B * H * W) {
    const int j = (int)(t % W), i = (int)((t / W) % H), b = (int)(t / ((int64_t)W * H));
    const int64_t s0 = (int64_t)H * W, s1 = (int64_t)h1 * w1, o = (int64_t)i * W + j;
    const bool bcast = Cir == 1 && C > 1;
    const float m = to_f(mu[b * s0 + o]);
    float gm = 0.f, gi = 0.f;
    for (int c = 0; c < C; ++c) {
      const int64_t p = (int64_t)b * C + c;
      const int64_t pi = (int64_t)b * Cir + (Cir == 1 ? 0 : c);
      const float g = to_f(gr[p * s0 + o]);
      const float v = to_f(vis[p * s0 + o]);
      const float a = to_f(ir[pi * s0 + o]);
      const float dt = sep_at(dnTV, dnTH, i, j, Load<float>{t1 + p * s1, w1});
      const float ug = sep_at(upV, upH, i, j, Load<float>{g1 + p * s1, w1});
      const float gd = m * g + dt;
      gvis[p * s0 + o] = from_f<T>(g - gd);
      if (bcast)
        gi += gd;
      else
        gir[pi * s0 + o] = from_f<T>(gd);
      gm += ((a - v) - ug) * g;
    }
    if (bcast) gir[(int64_t)b * s0 + o] = from_f<T>(gi);
    for (int k = 1; k <= L; ++k) gm += sep_at(mg.v[k], mg.h[k], i, j, Load<float>{mg.g[k] + b * mg.s[k], mg.w[k]});
    gmu[b * s0 + o] = from_f<T>(gm);
  }
}

// Workspace layout (floats): per level k = 1..L: mu_k (B), G_k (P), R_k or Gamma_k (P), V_k (P),
// gmu_k (B); sizes in units of level k's plane.
struct Layout {
  float* mu[kMaxLevels + 1];
  float* g[kMaxLevels + 1];
  float* r[kMaxLevels + 1];
  float* v[kMaxLevels + 1];
  float* gm[kMaxLevels + 1];
  size_t total = 0;
};

Layout layout(const FuseShape& s, const DDim& h, const DDim& w, bool backward, float* base) {
  Layout l{};
  const size_t P = (size_t)s.B * s.C;
  size_t off = 0;
  auto take = [&](size_t n) {
    float* p = base ? base + off : nullptr;
    off += n;
    return p;
  };
  for (int k = 1; k <= s.L; ++k) {
    const size_t sz = (size_t)h.n[k] * w.n[k];
    l.mu[k] = take(s.B * sz);
    l.g[k] = take(P * sz);
    l.r[k] = take(P * sz);
    if (backward) {
      l.v[k] = take(P * sz);
      l.gm[k] = take(s.B * sz);
    }
  }
  l.total = off;
  return l;
}

template <typename T>
void mu_and_gauss(const FuseShape& s, const DDim& h, const DDim& w, const T* vis, const T* ir, const T* mu,
                  const Layout& l, cudaStream_t st) {
  const int P = s.B * s.C, H = h.n[0], W = w.n[0];
  for (int k = 1; k <= s.L; ++k) {
    const int64_t n = (int64_t)s.B * h.n[k] * w.n[k];
    mu_level_kernel<T><<<blocks_for(n), kThreads, 0, st>>>(l.mu[k], mu, s.B, H, W, h.n[k], w.n[k], h.rmu[k], w.rmu[k]);
  }
  down_diff_kernel<T><<<blocks_for((int64_t)P * h.n[1] * w.n[1]), kThreads, 0, st>>>(
      l.g[1], vis, ir, P, s.C, s.Cir, H, W, h.n[1], w.n[1], h.dn[0], w.dn[0]);
  for (int k = 1; k < s.L; ++k)
    down_kernel<<<blocks_for((int64_t)P * h.n[k + 1] * w.n[k + 1]), kThreads, 0, st>>>(
        l.g[k + 1], l.g[k], P, h.n[k], w.n[k], h.n[k + 1], w.n[k + 1], h.dn[k], w.dn[k]);
}

}  // namespace

size_t fuse_workspace_floats(const FuseShape& s, const DDim& h, const DDim& w, bool backward) {
  return layout(s, h, w, backward, nullptr).total;
}

template <typename T>
cudaError_t fuse_forward(const FuseShape& s, const DDim& h, const DDim& w, const T* vis, const T* ir, const T* mu,
                         T* out, float* workspace, cudaStream_t st) {
  if (s.L < 1 || s.L > kMaxLevels) return cudaErrorInvalidValue;
  const Layout l = layout(s, h, w, false, workspace);
  const int P = s.B * s.C, L = s.L;
  mu_and_gauss(s, h, w, vis, ir, mu, l, st);
  const int64_t sl = (int64_t)h.n[L] * w.n[L];
  scale_kernel<<<blocks_for(P * sl), kThreads, 0, st>>>(l.r[L], l.g[L], l.mu[L], P, s.C, sl);
  for (int k = L - 1; k >= 1; --k)
    up_blend_kernel<<<blocks_for((int64_t)P * h.n[k] * w.n[k]), kThreads, 0, st>>>(
        l.r[k], l.r[k + 1], l.g[k + 1], l.g[k], l.mu[k], P, s.C, h.n[k], w.n[k], h.n[k + 1], w.n[k + 1], h.up[k],
        w.up[k]);
  up_blend_last_kernel<T><<<blocks_for((int64_t)P * h.n[0] * w.n[0]), kThreads, 0, st>>>(
      out, vis, ir, mu, l.r[1], l.g[1], P, s.C, s.Cir, h.n[0], w.n[0], h.n[1], w.n[1], h.up[0], w.up[0]);
  return cudaGetLastError();
}

template <typename T>
cudaError_t fuse_backward(const FuseShape& s, const DDim& h, const DDim& w, const T* grad, const T* vis,
                          const T* ir, const T* mu, T* grad_vis, T* grad_ir, T* grad_mu, float* workspace,
                          cudaStream_t st) {
  if (s.L < 1 || s.L > kMaxLevels) return cudaErrorInvalidValue;
  const Layout l = layout(s, h, w, true, workspace);  // r[k] holds Gamma_k, v[k] holds V_k then T_k
  const int P = s.B * s.C, L = s.L;
  mu_and_gauss(s, h, w, vis, ir, mu, l, st);
  adj_up_kernel<T, T><<<blocks_for((int64_t)P * h.n[1] * w.n[1]), kThreads, 0, st>>>(
      l.r[1], l.v[1], grad, mu, P, s.C, h.n[0], w.n[0], h.n[1], w.n[1], h.upT[0], w.upT[0]);
  for (int k = 1; k < L; ++k)
    adj_up_kernel<float, float><<<blocks_for((int64_t)P * h.n[k + 1] * w.n[k + 1]), kThreads, 0, st>>>(
        l.r[k + 1], l.v[k + 1], l.r[k], l.mu[k], P, s.C, h.n[k], w.n[k], h.n[k + 1], w.n[k + 1], h.upT[k], w.upT[k]);
  for (int k = L; k >= 1; --k) {
    const bool top = k == L;
    const int kn = top ? k : k + 1;  // unused tables/pointers at the top level
    level_bwd_kernel<<<blocks_for((int64_t)s.B * h.n[k] * w.n[k]), kThreads, 0, st>>>(
        l.v[k], l.gm[k], l.g[k], l.r[k], l.mu[k], top ? nullptr : l.v[kn], top ? nullptr : l.g[kn], s.B, s.C, h.n[k],
        w.n[k], h.n[kn], w.n[kn], top, h.dnT[top ? 0 : k], w.dnT[top ? 0 : k], h.up[top ? 0 : k],
        w.up[top ? 0 : k]);
  }
  MuGrads mg{};
  for (int k = 1; k <= L; ++k) {
    mg.g[k] = l.gm[k];
    mg.v[k] = h.rmuT[k];
    mg.h[k] = w.rmuT[k];
    mg.w[k] = w.n[k];
    mg.s[k] = (int64_t)h.n[k] * w.n[k];
  }
  level0_bwd_kernel<T><<<blocks_for((int64_t)s.B * h.n[0] * w.n[0]), kThreads, 0, st>>>(
      grad_vis, grad_ir, grad_mu, grad, vis, ir, mu, l.v[1], l.g[1], s.B, s.C, s.Cir, h.n[0], w.n[0], h.n[1], w.n[1],
      L, h.dnT[0], w.dnT[0], h.up[0], w.up[0], mg);
  return cudaGetLastError();
}

#define HFK_INSTANTIATE(T)                                                                                         \
  template cudaError_t fuse_forward<T>(const FuseShape&, const DDim&, const DDim&, const T*, const T*, const T*, T*, \
                                       float*, cudaStream_t);                                                      \
  template cudaError_t fuse_backward<T>(const FuseShape&, const DDim&, const DDim&, const T*, const T*, const T*,   \
                                        const T*, T*, T*, T*, float*, cudaStream_t);

HFK_INSTANTIATE(float)
HFK_INSTANTIATE(__half)
HFK_INSTANTIATE(__nv_bfloat16)

}  // namespace cuda
}  // namespace hfk
