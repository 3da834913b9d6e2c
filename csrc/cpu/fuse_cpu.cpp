// CPU kernels of the fused pyramid fusion `hfkernels_ext::fuse` and its backward (schemas in
// csrc/registry.cpp, argument checks in csrc/ext_checks.h).
//
// Math (as in hfkernels/core/reference.py): the blend is linear in (vis, ir), so with D = ir - vis
//   out = vis + collapse(mu_k * L_k(D))
// needs ONE pyramid, of D. Writing G_k for the Gaussian levels of D (G_0 = D, G_{k+1} = dn G_k)
// and U_k for the up step from level k+1 to level k (transposed conv + bilinear size fix), the
// collapse R_L = mu_L G_L, R_k = U_k R_{k+1} + mu_k (G_k - U_k G_{k+1}) gives out = vis + R_0.
//
// Forward passes (each one at::parallel_for over output rows of all planes):
//   mu_k = resize(mu) (per batch item, shared by all channels), G_1 = dn(ir - vis) (D is formed
//   on the fly, never stored), G_{k+1} = dn(G_k), then the fused up + size fix + blend passes
//   k = L-1..0; the last writes out = vis + U_0 R_1 + mu (ir - vis - U_0 G_1) directly.
//   Only the small levels (k >= 1, a third of the input in total) are ever materialised.
// Backward (grad g): Gamma = collapse^T(g) level by level (Gamma_0 = g, Gamma_{k+1} = U_k^T Gamma_k),
//   h_k = mu_k Gamma_k, c_k = h_k - U_{k-1}^T h_{k-1}, grad_D = pyr^T(h) = c_0 + dn^T(c_1 + dn^T(...)),
//   grad_vis = g - grad_D, grad_ir = grad_D (summed over channels when broadcast),
//   grad_mu = sum_k resize_k^T(sum_c L_k(D) Gamma_k).
// What is stored for the backward: nothing but the inputs (vis, ir, mu) autograd keeps anyway;
// the backward recomputes the small Gaussian levels of D (one read of vis and ir) instead of
// saving them, and reads each full-size tensor (g, vis, ir, mu) at most twice.
//
// Each 2-D step is separable: a vertical combination of whole rows (contiguous, vectorised by the
// compiler) followed by a horizontal banded gather. The tables come from fuse_plan.h, shared with
// the CUDA backend.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <initializer_list>
#include <limits>
#include <vector>

#include "../ext_checks.h"
#include "fuse_plan.h"

namespace hfk {
namespace {

template <typename T>
inline const T* weights(const Ell& e);
template <>
inline const float* weights<float>(const Ell& e) {
  return e.wf.data();
}
template <>
inline const double* weights<double>(const Ell& e) {
  return e.w.data();
}

// ---------------------------------------------------------------------------------------------
// Vertical combinations: acc[x] = sum_s w_s * f(row r_s)[x] over the non-zero taps of row i of V.
// vcomb zeroes the accumulators, then calls add(w_s, r_s) once per non-zero tap; the variants
// below differ only in what one tap adds (each a contiguous, vectorisable loop over x).

template <typename T, typename Add>
inline void vcomb(const Ell& V, int64_t i, int64_t n, std::initializer_list<T*> accs, const Add& add) {
  for (T* acc : accs)
    for (int64_t x = 0; x < n; ++x) acc[x] = T(0);
  const int64_t* id = V.idx.data() + i * V.width;
  const T* w = weights<T>(V) + i * V.width;
  for (int64_t s = 0; s < V.width; ++s)
    if (w[s] != T(0)) add(w[s], id[s]);
}

template <typename T, typename RowA>
inline void vcomb1(const Ell& V, int64_t i, int64_t n, T* __restrict acc, RowA ra) {
  vcomb<T>(V, i, n, {acc}, [&](T ws, int64_t r) {
    const T* __restrict a = ra(r);
    for (int64_t x = 0; x < n; ++x) acc[x] += ws * a[x];
  });
}

// Two streams through the same operator (shared weights and row indices).
template <typename T, typename RowA, typename RowB>
inline void vcomb2(const Ell& V, int64_t i, int64_t n, T* __restrict acc_a, T* __restrict acc_b, RowA ra,
                   RowB rb) {
  vcomb<T>(V, i, n, {acc_a, acc_b}, [&](T ws, int64_t r) {
    const T* __restrict a = ra(r);
    const T* __restrict b = rb(r);
    for (int64_t x = 0; x < n; ++x) {
      acc_a[x] += ws * a[x];
      acc_b[x] += ws * b[x];
    }
  });
}

// acc = V (a - b): the down step of D = ir - vis without materialising D.
template <typename T, typename RowA, typename RowB>
inline void vcomb_diff(const Ell& V, int64_t i, int64_t n, T* __restrict acc, RowA ra, RowB rb) {
  vcomb<T>(V, i, n, {acc}, [&](T ws, int64_t r) {
    const T* __restrict a = ra(r);
    const T* __restrict b = rb(r);
    for (int64_t x = 0; x < n; ++x) acc[x] += ws * (a[x] - b[x]);
  });
}

// acc_a = V a, acc_p = V (a * m): the adjoint up step of Gamma and of mu * Gamma together.
template <typename T, typename RowA, typename RowM>
inline void vcomb_and_prod(const Ell& V, int64_t i, int64_t n, T* __restrict acc_a, T* __restrict acc_p,
                           RowA ra, RowM rm) {
  vcomb<T>(V, i, n, {acc_a, acc_p}, [&](T ws, int64_t r) {
    const T* __restrict a = ra(r);
    const T* __restrict m = rm(r);
    for (int64_t x = 0; x < n; ++x) {
      acc_a[x] += ws * a[x];
      acc_p[x] += ws * (a[x] * m[x]);
    }
  });
}

inline bool row_is_zero(const Ell& V, int64_t i) {
  for (int64_t s = 0; s < V.width; ++s)
    if (V.w[i * V.width + s] != 0.0) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Horizontal banded gathers: out[j] = sum_s w[j][s] v[idx[j][s]] (one or two streams).

template <int K, typename T>
inline void hgather_k(int64_t n, const int64_t* __restrict id, const T* __restrict w, const T* __restrict v,
                      T* __restrict out) {
  for (int64_t j = 0; j < n; ++j) {
    T s = T(0);
    for (int k = 0; k < K; ++k) s += w[j * K + k] * v[id[j * K + k]];
    out[j] = s;
  }
}

template <int K, typename T>
inline void hgather2_k(int64_t n, const int64_t* __restrict id, const T* __restrict w, const T* __restrict a,
                       const T* __restrict b, T* __restrict oa, T* __restrict ob) {
  for (int64_t j = 0; j < n; ++j) {
    T sa = T(0), sb = T(0);
    for (int k = 0; k < K; ++k) {
      const T wk = w[j * K + k];
      const int64_t c = id[j * K + k];
      sa += wk * a[c];
      sb += wk * b[c];
    }
    oa[j] = sa;
    ob[j] = sb;
  }
}

// Polyphase forms of the two structured operators (no resize at this level); `v` must have two
// zero elements before index 0 and after index n_in - 1 (see PadBuf), so the loops have no
// border branches. Stride-2 reads / interleaved writes, which GCC vectorises with shuffles.
template <typename T>
struct Taps {
  T t0, t1, t2;
  explicit Taps(double s) {
    double t[5];
    pyramid_taps(t);
    t0 = T(s * t[0]);
    t1 = T(s * t[1]);
    t2 = T(s * t[2]);
  }
};

template <typename T>
inline void poly_down(const Ell& H, const T* __restrict v, T* __restrict out) {
  const Taps<T> k(H.scale);
  const int64_t n = H.n_out;
  for (int64_t j = 0; j < n; ++j)
    out[j] = k.t0 * (v[2 * j - 2] + v[2 * j + 2]) + k.t1 * (v[2 * j - 1] + v[2 * j + 1]) + k.t2 * v[2 * j];
}

template <typename T>
inline void poly_up(const Ell& H, const T* __restrict v, T* __restrict out) {
  const Taps<T> k(H.scale);
  const int64_t pairs = H.n_out / 2;  // n_out is 2 n_in, or 2 n_in - 1 (cropped adjoint of down)
  for (int64_t m = 0; m < pairs; ++m) {
    out[2 * m] = k.t0 * (v[m - 1] + v[m + 1]) + k.t2 * v[m];
    out[2 * m + 1] = k.t1 * (v[m] + v[m + 1]);
  }
  if (H.n_out & 1) {
    const int64_t m = pairs;
    out[2 * m] = k.t0 * (v[m - 1] + v[m + 1]) + k.t2 * v[m];
  }
}

template <typename T>
inline void hgather(const Ell& H, const T* v, T* out) {
  if (H.kind == Ell::kPolyDown) return poly_down(H, v, out);
  if (H.kind == Ell::kPolyUp) return poly_up(H, v, out);
  const int64_t* id = H.idx.data();
  const T* w = weights<T>(H);
  switch (H.width) {
    case 1: return hgather_k<1>(H.n_out, id, w, v, out);
    case 2: return hgather_k<2>(H.n_out, id, w, v, out);
    case 3: return hgather_k<3>(H.n_out, id, w, v, out);
    case 4: return hgather_k<4>(H.n_out, id, w, v, out);
    case 5: return hgather_k<5>(H.n_out, id, w, v, out);
    case 6: return hgather_k<6>(H.n_out, id, w, v, out);
    default:
      for (int64_t j = 0; j < H.n_out; ++j) {
        T s = T(0);
        for (int64_t k = 0; k < H.width; ++k) s += w[j * H.width + k] * v[id[j * H.width + k]];
        out[j] = s;
      }
  }
}

template <typename T>
inline void hgather2(const Ell& H, const T* a, const T* b, T* oa, T* ob) {
  if (H.kind != Ell::kGeneric) {
    hgather(H, a, oa);
    hgather(H, b, ob);
    return;
  }
  const int64_t* id = H.idx.data();
  const T* w = weights<T>(H);
  switch (H.width) {
    case 1: return hgather2_k<1>(H.n_out, id, w, a, b, oa, ob);
    case 2: return hgather2_k<2>(H.n_out, id, w, a, b, oa, ob);
    case 3: return hgather2_k<3>(H.n_out, id, w, a, b, oa, ob);
    case 4: return hgather2_k<4>(H.n_out, id, w, a, b, oa, ob);
    case 5: return hgather2_k<5>(H.n_out, id, w, a, b, oa, ob);
    case 6: return hgather2_k<6>(H.n_out, id, w, a, b, oa, ob);
    default:
      hgather(H, a, oa);
      hgather(H, b, ob);
  }
}

// Per-task scratch rows, each with two zero elements on either side (for poly_down/poly_up).
template <typename T>
struct PadBuf {
  std::vector<T> mem;
  int64_t stride;
  PadBuf(int rows, int64_t n) : mem(static_cast<size_t>(rows * (n + 4)), T(0)), stride(n + 4) {}
  T* row(int r) { return mem.data() + r * stride + 2; }
};

// ---------------------------------------------------------------------------------------------

// Rows [0, planes * rows) in parallel; fn(begin, end) gets a contiguous range of (plane, row)
// pairs. The grain keeps tiny levels on one thread.
template <typename F>
inline void par_rows(int64_t planes, int64_t rows, int64_t cols, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, planes * rows, grain, fn);
}

template <typename T>
struct Fuse {
  int L;
  int64_t B, C, Cir, H, W;
  std::shared_ptr<const DimPlan> hplan, wplan;  // shared, cached (fuse_plan.h)
  const DimPlan& hp;
  const DimPlan& wp;
  at::TensorOptions opt;

  Fuse(const at::Tensor& vis, const at::Tensor& ir, int levels)
      : L(levels), B(vis.size(0)), C(vis.size(1)), Cir(ir.size(1)), H(vis.size(2)), W(vis.size(3)),
        hplan(cached_dim_plan(H, levels)), wplan(cached_dim_plan(W, levels)), hp(*hplan), wp(*wplan),
        opt(vis.options()) {}

  int64_t h(int k) const { return hp.n[k]; }
  int64_t w(int k) const { return wp.n[k]; }
  int64_t sz(int k) const { return h(k) * w(k); }
  int64_t ir_plane(int64_t p) const { return (p / C) * Cir + (Cir == 1 ? 0 : p % C); }
  at::Tensor level(int k, int64_t planes) const { return at::empty({planes, h(k), w(k)}, opt); }

  // mu_k = resize(mu, level k), k = 1..L, each (B, h_k, w_k); entry 0 unused (mu itself).
  std::vector<at::Tensor> mu_levels(const T* mu) const {
    std::vector<at::Tensor> out(L + 1);
    for (int k = 1; k <= L; ++k) {
      out[k] = level(k, B);
      T* o = out[k].template data_ptr<T>();
      const int64_t hk = h(k), wk = w(k);
      par_rows(B, hk, W, [&](int64_t b0, int64_t b1) {
        PadBuf<T> pb(1, W);
        T* acc = pb.row(0);
        for (int64_t t = b0; t < b1; ++t) {
          const int64_t b = t / hk, i = t % hk;
          const T* src = mu + b * H * W;
          vcomb1(hp.rmu[k], i, W, acc, [&](int64_t r) { return src + r * W; });
          hgather(wp.rmu[k], acc, o + (b * hk + i) * wk);
        }
      });
    }
    return out;
  }

  // Gaussian levels G_1..G_L of D = ir - vis, each (B*C, h_k, w_k); entry 0 unused (D).
  std::vector<at::Tensor> gauss_levels(const T* vis, const T* ir) const {
    std::vector<at::Tensor> g(L + 1);
    const int64_t P = B * C;
    for (int k = 0; k < L; ++k) {
      g[k + 1] = level(k + 1, P);
      T* o = g[k + 1].template data_ptr<T>();
      const T* src = k == 0 ? nullptr : g[k].template data_ptr<T>();
      const int64_t hn = h(k + 1), wn = w(k + 1), wc = w(k), sc = sz(k);
      par_rows(P, hn, wc, [&](int64_t b0, int64_t b1) {
        PadBuf<T> pb(1, wc);
        T* acc = pb.row(0);
        for (int64_t t = b0; t < b1; ++t) {
          const int64_t p = t / hn, i = t % hn;
          if (k == 0) {
            const T* a = ir + ir_plane(p) * sc;
            const T* v = vis + p * sc;
            vcomb_diff(hp.dn[0], i, wc, acc, [&](int64_t r) { return a + r * wc; },
                       [&](int64_t r) { return v + r * wc; });
          } else {
            const T* s = src + p * sc;
            vcomb1(hp.dn[k], i, wc, acc, [&](int64_t r) { return s + r * wc; });
          }
          hgather(wp.dn[k], acc, o + (p * hn + i) * wn);
        }
      });
    }
    return g;
  }

  at::Tensor forward(const T* vis, const T* ir, const T* mu) const {
    const int64_t P = B * C;
    auto mus = mu_levels(mu);
    auto g = gauss_levels(vis, ir);
    // R_L = mu_L G_L
    at::Tensor r = level(L, P);
    {
      T* ro = r.template data_ptr<T>();
      const T* gl = g[L].template data_ptr<T>();
      const T* ml = mus[L].template data_ptr<T>();
      const int64_t s = sz(L);
      at::parallel_for(0, P, std::max<int64_t>(1, 16384 / s), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const T* m = ml + (p / C) * s;
          for (int64_t x = 0; x < s; ++x) ro[p * s + x] = m[x] * gl[p * s + x];
        }
      });
    }
    at::Tensor out = at::empty({B, C, H, W}, opt);
    for (int k = L - 1; k >= 0; --k) {
      const bool last = k == 0;
      at::Tensor rk = last ? out : level(k, P);
      T* ro = rk.template data_ptr<T>();
      const T* rn = r.template data_ptr<T>();
      const T* gn = g[k + 1].template data_ptr<T>();
      const T* gk = last ? nullptr : g[k].template data_ptr<T>();
      const T* mk = last ? mu : mus[k].template data_ptr<T>();
      const int64_t hk = h(k), wk = w(k), wn = w(k + 1), sn = sz(k + 1);
      par_rows(P, hk, wk, [&](int64_t b0, int64_t b1) {
        PadBuf<T> pn(2, wn), pk(2, wk);
        T *as = pn.row(0), *ag = pn.row(1), *us = pk.row(0), *ug = pk.row(1);
        for (int64_t t = b0; t < b1; ++t) {
          const int64_t p = t / hk, i = t % hk;
          const T* rs = rn + p * sn;
          const T* gs = gn + p * sn;
          vcomb2(hp.up[k], i, wn, as, ag, [&](int64_t q) { return rs + q * wn; },
                 [&](int64_t q) { return gs + q * wn; });
          hgather2(wp.up[k], as, ag, us, ug);
          const T* __restrict m = mk + ((p / C) * hk + i) * wk;
          T* __restrict o = ro + (p * hk + i) * wk;
          if (last) {
            const T* __restrict v = vis + (p * hk + i) * wk;
            const T* __restrict a = ir + (ir_plane(p) * hk + i) * wk;
            for (int64_t x = 0; x < wk; ++x) o[x] = v[x] + us[x] + m[x] * ((a[x] - v[x]) - ug[x]);
          } else {
            const T* __restrict gg = gk + (p * hk + i) * wk;
            for (int64_t x = 0; x < wk; ++x) o[x] = us[x] + m[x] * (gg[x] - ug[x]);
          }
        }
      });
      r = rk;
    }
    return out;
  }

  // Returns (grad_vis, grad_ir, grad_mu).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const T* gr, const T* vis, const T* ir,
                                                          const T* mu) const {
    const int64_t P = B * C;
    auto mus = mu_levels(mu);
    auto g = gauss_levels(vis, ir);
    // Gamma_{k+1} = U_k^T Gamma_k and V_{k+1} = U_k^T (mu_k Gamma_k), k = 0..L-1.
    std::vector<at::Tensor> gam(L + 1), vv(L + 1);
    for (int k = 0; k < L; ++k) {
      gam[k + 1] = level(k + 1, P);
      vv[k + 1] = level(k + 1, P);
      T* og = gam[k + 1].template data_ptr<T>();
      T* ov = vv[k + 1].template data_ptr<T>();
      const T* src = k == 0 ? gr : gam[k].template data_ptr<T>();
      const T* mk = k == 0 ? mu : mus[k].template data_ptr<T>();
      const int64_t hn = h(k + 1), wn = w(k + 1), wk = w(k), sk = sz(k);
      par_rows(P, hn, wk, [&](int64_t b0, int64_t b1) {
        PadBuf<T> pk(2, wk);
        T *aa = pk.row(0), *ap = pk.row(1);
        for (int64_t t = b0; t < b1; ++t) {
          const int64_t p = t / hn, i = t % hn;
          const T* s = src + p * sk;
          const T* m = mk + (p / C) * sk;
          vcomb_and_prod(hp.upT[k], i, wk, aa, ap, [&](int64_t r) { return s + r * wk; },
                         [&](int64_t r) { return m + r * wk; });
          hgather2(wp.upT[k], aa, ap, og + (p * hn + i) * wn, ov + (p * hn + i) * wn);
        }
      });
    }
    // T_k = mu_k Gamma_k - V_k + dn^T T_{k+1} (T_L without the last term), stored in place of
    // V_k; gmu_k = sum_c L_k(D) Gamma_k per batch item, L_k = G_k - U_k G_{k+1} (L_L = G_L).
    std::vector<at::Tensor> gmu(L + 1);
    for (int k = L; k >= 1; --k) {
      gmu[k] = level(k, B);
      T* om = gmu[k].template data_ptr<T>();
      T* tk = vv[k].template data_ptr<T>();
      const T* gk = g[k].template data_ptr<T>();
      const T* gm = gam[k].template data_ptr<T>();
      const T* mk = mus[k].template data_ptr<T>();
      const T* tn = k < L ? vv[k + 1].template data_ptr<T>() : nullptr;
      const T* gn = k < L ? g[k + 1].template data_ptr<T>() : nullptr;
      const int64_t hk = h(k), wk = w(k);
      const int64_t wn = k < L ? w(k + 1) : 1, sn = k < L ? sz(k + 1) : 1;
      par_rows(B, hk, C * wk, [&](int64_t b0, int64_t b1) {
        PadBuf<T> pn(2, wn), pk(2, wk);
        T *a1 = pn.row(0), *a2 = pn.row(1), *dt = pk.row(0), *ug = pk.row(1);
        for (int64_t t = b0; t < b1; ++t) {
          const int64_t b = t / hk, i = t % hk;
          T* __restrict gmo = om + (b * hk + i) * wk;
          const T* __restrict m = mk + (b * hk + i) * wk;
          for (int64_t x = 0; x < wk; ++x) gmo[x] = T(0);
          for (int64_t c = 0; c < C; ++c) {
            const int64_t p = b * C + c;
            const int64_t o = (p * hk + i) * wk;
            T* __restrict tt = tk + o;
            const T* __restrict gg = gk + o;
            const T* __restrict ga = gm + o;
            if (k < L) {
              const T* ts = tn + p * sn;
              const T* gs = gn + p * sn;
              vcomb1(hp.dnT[k], i, wn, a1, [&](int64_t r) { return ts + r * wn; });
              hgather(wp.dnT[k], a1, dt);
              vcomb1(hp.up[k], i, wn, a2, [&](int64_t r) { return gs + r * wn; });
              hgather(wp.up[k], a2, ug);
              for (int64_t x = 0; x < wk; ++x) {
                tt[x] = m[x] * ga[x] - tt[x] + dt[x];
                gmo[x] += (gg[x] - ug[x]) * ga[x];
              }
            } else {
              for (int64_t x = 0; x < wk; ++x) {
                tt[x] = m[x] * ga[x] - tt[x];
                gmo[x] += gg[x] * ga[x];
              }
            }
          }
        }
      });
    }
    // Level 0: grad_D = mu g + dn^T T_1, grad_vis = g - grad_D, grad_ir = grad_D (channel sum
    // when broadcast), grad_mu = sum_c (D - U_0 G_1) g + sum_k resize_k^T gmu_k.
    at::Tensor gvis = at::empty({B, C, H, W}, opt);
    at::Tensor gir = at::empty({B, Cir, H, W}, opt);
    at::Tensor gmu0 = at::empty({B, 1, H, W}, opt);
    {
      T* ov = gvis.template data_ptr<T>();
      T* oi = gir.template data_ptr<T>();
      T* om = gmu0.template data_ptr<T>();
      const T* t1 = vv[1].template data_ptr<T>();
      const T* g1 = g[1].template data_ptr<T>();
      const int64_t wn = w(1), sn = sz(1), s0 = H * W;
      int64_t wmax = 1;
      for (int k = 1; k <= L; ++k) wmax = std::max(wmax, w(k));
      const bool bcast = Cir == 1 && C > 1;
      par_rows(B, H, C * W, [&](int64_t b0, int64_t b1) {
        PadBuf<T> pn(2, wn), p0(3, W), pm(1, wmax);
        T *a1 = pn.row(0), *a2 = pn.row(1), *dt = p0.row(0), *ug = p0.row(1), *tmp = p0.row(2), *ak = pm.row(0);
        for (int64_t t = b0; t < b1; ++t) {
          const int64_t b = t / H, i = t % H;
          const int64_t row = i * W;
          T* __restrict gmo = om + b * s0 + row;
          const T* __restrict m = mu + b * s0 + row;
          T* __restrict gio = oi + b * Cir * s0 + row;
          for (int64_t x = 0; x < W; ++x) gmo[x] = T(0);
          if (bcast)
            for (int64_t x = 0; x < W; ++x) gio[x] = T(0);
          for (int64_t c = 0; c < C; ++c) {
            const int64_t p = b * C + c;
            const T* ts = t1 + p * sn;
            const T* gs = g1 + p * sn;
            vcomb1(hp.dnT[0], i, wn, a1, [&](int64_t r) { return ts + r * wn; });
            hgather(wp.dnT[0], a1, dt);
            vcomb1(hp.up[0], i, wn, a2, [&](int64_t r) { return gs + r * wn; });
            hgather(wp.up[0], a2, ug);
            const T* __restrict gg = gr + p * s0 + row;
            const T* __restrict v = vis + p * s0 + row;
            const T* __restrict a = ir + ir_plane(p) * s0 + row;
            T* __restrict gvo = ov + p * s0 + row;
            T* __restrict gi = bcast ? gio : oi + ir_plane(p) * s0 + row;
            if (bcast) {
              for (int64_t x = 0; x < W; ++x) {
                const T gd = m[x] * gg[x] + dt[x];
                gvo[x] = gg[x] - gd;
                gi[x] += gd;
                gmo[x] += ((a[x] - v[x]) - ug[x]) * gg[x];
              }
            } else {
              for (int64_t x = 0; x < W; ++x) {
                const T gd = m[x] * gg[x] + dt[x];
                gvo[x] = gg[x] - gd;
                gi[x] = gd;
                gmo[x] += ((a[x] - v[x]) - ug[x]) * gg[x];
              }
            }
          }
          for (int k = 1; k <= L; ++k) {
            if (row_is_zero(hp.rmuT[k], i)) continue;  // most rows of coarse levels
            const T* src = gmu[k].template data_ptr<T>() + b * sz(k);
            const int64_t wk = w(k);
            vcomb1(hp.rmuT[k], i, wk, ak, [&](int64_t r) { return src + r * wk; });
            hgather(wp.rmuT[k], ak, tmp);
            for (int64_t x = 0; x < W; ++x) gmo[x] += tmp[x];
          }
        }
      });
    }
    return {gvis, gir, gmu0};
  }
};

at::Tensor fuse_cpu(const at::Tensor& vis, const at::Tensor& ir, const at::Tensor& mu, int64_t levels) {
  const auto in = hfk_ext::fuse_inputs(vis, ir, mu, levels, std::numeric_limits<int64_t>::max());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(in.vis.scalar_type(), "hfkernels_ext::fuse", [&] {
    const Fuse<scalar_t> f(in.vis, in.ir, static_cast<int>(levels));
    out = f.forward(in.vis.data_ptr<scalar_t>(), in.ir.data_ptr<scalar_t>(), in.mu.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fuse_backward_cpu(const at::Tensor& grad, const at::Tensor& vis,
                                                                 const at::Tensor& ir, const at::Tensor& mu,
                                                                 int64_t levels) {
  const auto in = hfk_ext::fuse_inputs(vis, ir, mu, levels, std::numeric_limits<int64_t>::max(), grad);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(in.vis.scalar_type(), "hfkernels_ext::fuse_backward", [&] {
    const Fuse<scalar_t> f(in.vis, in.ir, static_cast<int>(levels));
    out = f.backward(in.grad.data_ptr<scalar_t>(), in.vis.data_ptr<scalar_t>(), in.ir.data_ptr<scalar_t>(),
                     in.mu.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace
}  // namespace hfk

TORCH_LIBRARY_IMPL(hfkernels_ext, CPU, m) {
  m.impl("fuse", &hfk::fuse_cpu);
  m.impl("fuse_backward", &hfk::fuse_backward_cpu);
}
