// Framework-free plan of the pyramid-fusion op: the 1-D linear operators of every pyramid level,
// as small banded ("ELL") tables. Shared by the CPU kernels (fuse_cpu.cpp) and the CUDA torch glue
// (../cuda/fuse_cuda.cpp, which uploads the same tables for the device kernels), so both backends
// apply literally the same operators.
//
// Every 2-D step of the pyramid is separable: out[i][j] = sum_r V[i][r] sum_c H[j][c] x[r][c],
// with one 1-D operator V along rows (height) and one H along columns (width). The operators,
// for level sizes n_0 = n and n_{k+1} = ceil(n_k / 2) (as in hfkernels/core/reference.py):
//   dn[k]   n_k     -> n_{k+1}  down: 5-tap Gaussian, zero padding 2, stride 2
//   up[k]   n_{k+1} -> n_k      up: transposed conv with 2*taps (4K = (2t)(2t)^T), stride 2,
//                               padding 2, output padding 1 (size 2 n_{k+1}), then the bilinear
//                               size fix to n_k (align_corners False) when 2 n_{k+1} != n_k
//   upT[k]  n_k     -> n_{k+1}  adjoint of up[k]   (backward: adjoint of the collapse)
//   dnT[k]  n_{k+1} -> n_k      adjoint of dn[k]   (backward: adjoint of the decomposition)
//   rmu[k]  n_0     -> n_k      bilinear resize of mu to level k (k >= 1; rmu[0] unused)
//   rmuT[k] n_k     -> n_0      its adjoint (backward: gradient of mu)
// Adjoints are exact transposes of the forward tables, so the backward is the adjoint of the
// forward by construction.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace hfk {

// 1-D pyramid taps exp(-d^2/2), d = -2..2, normalised to sum 1 (the 2-D kernel K is t t^T).
inline void pyramid_taps(double t[5]) {
  double s = 0.0;
  for (int a = 0; a < 5; ++a) {
    const double d = a - 2;
    t[a] = std::exp(-d * d / 2.0);
    s += t[a];
  }
  for (int a = 0; a < 5; ++a) t[a] /= s;
}

// A sparse matrix by rows: rows[i] = {(input index, weight)}; duplicates merged.
struct Sparse {
  int64_t n_out = 0, n_in = 0;
  std::vector<std::vector<std::pair<int64_t, double>>> rows;
  Sparse(int64_t o, int64_t i) : n_out(o), n_in(i), rows(static_cast<size_t>(o)) {}
  void add(int64_t r, int64_t c, double w) {
    for (auto& e : rows[r])
      if (e.first == c) {
        e.second += w;
        return;
      }
    rows[r].emplace_back(c, w);
  }
};

inline Sparse down_op(int64_t n) {
  double t[5];
  pyramid_taps(t);
  Sparse s((n + 1) / 2, n);
  for (int64_t i = 0; i < s.n_out; ++i)
    for (int a = 0; a < 5; ++a) {
      const int64_t r = 2 * i + a - 2;
      if (r >= 0 && r < n) s.add(i, r, t[a]);
    }
  return s;
}

// One dimension of conv_transpose2d with 4K, stride 2, padding 2, output padding 1: n -> 2n.
inline Sparse convT_op(int64_t n) {
  double t[5];
  pyramid_taps(t);
  Sparse s(2 * n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int a = 0; a < 5; ++a) {
      const int64_t p = 2 * i + a - 2;
      if (p >= 0 && p < 2 * n) s.add(p, i, 2.0 * t[a]);
    }
  return s;
}

// Bilinear resize along one dimension as torch computes it (align_corners False, no antialias):
// src = (dst + 0.5) * n_in / n_out - 0.5, clamped at 0; identity when the sizes match.
inline Sparse resize_op(int64_t n_in, int64_t n_out) {
  Sparse s(n_out, n_in);
  const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
  for (int64_t q = 0; q < n_out; ++q) {
    if (n_in == n_out) {
      s.add(q, q, 1.0);
      continue;
    }
    double src = scale * (q + 0.5) - 0.5;
    if (src < 0) src = 0;
    int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), n_in - 1);
    const int64_t i1 = std::min(i0 + 1, n_in - 1);
    const double l = std::min(std::max(src - i0, 0.0), 1.0);
    s.add(q, i0, 1.0 - l);
    s.add(q, i1, l);
  }
  return s;
}

inline Sparse compose(const Sparse& a, const Sparse& b) {  // a after b
  Sparse s(a.n_out, b.n_in);
  for (int64_t i = 0; i < a.n_out; ++i)
    for (const auto& ea : a.rows[i])
      for (const auto& eb : b.rows[ea.first]) s.add(i, eb.first, ea.second * eb.second);
  return s;
}

inline Sparse transpose(const Sparse& a) {
  Sparse s(a.n_in, a.n_out);
  for (int64_t i = 0; i < a.n_out; ++i)
    for (const auto& e : a.rows[i]) s.add(e.first, i, e.second);
  return s;
}

// Fixed-width band table: output i reads idx[i*width + s] with weight w[i*width + s]; short rows
// are padded with weight 0 at a valid index, so kernels loop without branches.
struct Ell {
  int64_t n_out = 0, n_in = 0, width = 1;
  // Structure a CPU fast path may exploit (the tables stay authoritative; CUDA ignores it):
  // kPolyDown: out[j] = scale * sum_a t[a] v[2j+a-2]; kPolyUp: out[2m+e] = scale * sum_i t[2m+e-2i+2] v[i]
  // (both with zeros outside [0, n_in)).
  enum Kind { kGeneric = 0, kPolyDown = 1, kPolyUp = 2 } kind = kGeneric;
  double scale = 1.0;
  std::vector<int64_t> idx;
  std::vector<double> w;
  std::vector<float> wf;  // the same weights in float (float kernels, CUDA)
};

inline Ell to_ell(const Sparse& s) {
  Ell e;
  e.n_out = s.n_out;
  e.n_in = s.n_in;
  e.width = 1;
  for (const auto& r : s.rows) e.width = std::max<int64_t>(e.width, static_cast<int64_t>(r.size()));
  e.idx.assign(static_cast<size_t>(e.n_out * e.width), 0);
  e.w.assign(static_cast<size_t>(e.n_out * e.width), 0.0);
  for (int64_t i = 0; i < e.n_out; ++i) {
    auto row = s.rows[i];
    std::sort(row.begin(), row.end());
    for (int64_t k = 0; k < e.width; ++k) {
      const bool real = k < static_cast<int64_t>(row.size());
      e.idx[i * e.width + k] = real ? row[k].first : (row.empty() ? 0 : row.back().first);
      e.w[i * e.width + k] = real ? row[k].second : 0.0;
    }
  }
  e.wf.assign(e.w.begin(), e.w.end());
  return e;
}

inline Ell tagged(Ell e, Ell::Kind kind, double scale) {
  e.kind = kind;
  e.scale = scale;
  return e;
}

// All tables of one dimension for `levels` levels.
struct DimPlan {
  int levels = 0;
  std::vector<int64_t> n;  // n[0..levels]
  std::vector<Ell> dn, up, upT, dnT, rmu, rmuT;
};

inline DimPlan make_dim_plan(int64_t n0, int levels) {
  DimPlan p;
  p.levels = levels;
  p.n.push_back(n0);
  for (int k = 0; k < levels; ++k) p.n.push_back((p.n.back() + 1) / 2);
  for (int k = 0; k < levels; ++k) {
    const Sparse d = down_op(p.n[k]);
    const Sparse u = compose(resize_op(2 * p.n[k + 1], p.n[k]), convT_op(p.n[k + 1]));
    const bool even = 2 * p.n[k + 1] == p.n[k];  // no bilinear size fix at this level
    p.dn.push_back(tagged(to_ell(d), Ell::kPolyDown, 1.0));
    p.dnT.push_back(tagged(to_ell(transpose(d)), Ell::kPolyUp, 1.0));
    p.up.push_back(even ? tagged(to_ell(u), Ell::kPolyUp, 2.0) : to_ell(u));
    p.upT.push_back(even ? tagged(to_ell(transpose(u)), Ell::kPolyDown, 2.0) : to_ell(transpose(u)));
  }
  for (int k = 0; k <= levels; ++k) {
    const Sparse r = resize_op(n0, p.n[k]);
    p.rmu.push_back(to_ell(r));
    p.rmuT.push_back(to_ell(transpose(r)));
  }
  return p;
}

// Plans depend only on (size, levels) and are rebuilt otherwise on every call (a few thousand
// small allocations for a 640-wide image): keep the recent ones.
inline std::shared_ptr<const DimPlan> cached_dim_plan(int64_t n0, int levels) {
  static std::mutex mutex;
  static std::map<std::pair<int64_t, int>, std::shared_ptr<const DimPlan>> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find({n0, levels});
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();
  auto plan = std::make_shared<const DimPlan>(make_dim_plan(n0, levels));
  cache.emplace(std::make_pair(n0, levels), plan);
  return plan;
}

}  // namespace hfk
