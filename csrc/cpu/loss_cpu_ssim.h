// SSIM CPU kernels over raw pointers, included twice by loss_cpu.cpp: once for the baseline ISA
// and once inside `#pragma GCC target("avx2,fma")`, chosen at run time. No #includes here (the
// includer brings <ATen/Parallel.h>, <algorithm>, <vector>), no inline namespaces.
//
// Layout: planes p = b*C + c of contiguous (H, W) images. Window taps t[lo..hi] (the kept ones),
// `pad` zero rows/columns before the image (w/2 for "same", 0 for "valid").

// HFK_VEC_BYTES (16 or 32, set by the includer) is the SIMD width these loops are written for,
// with GCC/Clang vector extensions so the same source serves SSE and AVX2.
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(HFK_VEC_BYTES)));
};

#define HFK_LD(v, p) __builtin_memcpy(&(v), (p), sizeof(v))
#define HFK_ST(p, v) __builtin_memcpy((p), &(v), sizeof(v))

// With HFK_FMA_ROWS the filter sums (only they) may contract into fused multiply-adds; the
// per-pixel SSIM formula below is compiled without contraction, so x == y gives identical
// numerator and denominator terms and a constant image gives exactly 1.
#ifdef HFK_FMA_ROWS
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#endif

// out[j] = sum_r w[r] * rows[r][j] for j < n. Four vectors of columns stay in registers while
// all rows are added, so each input value is loaded once and `out` is written once.
template <typename T>
__attribute__((noinline)) void wsum_rows(const T* const* rows, const T* w, int nr, T* __restrict__ out, int64_t n) {
  using V = typename VecOf<T>::type;
  constexpr int NV = HFK_VEC_BYTES / sizeof(T);
  int64_t j = 0;
  for (; j + 4 * NV <= n; j += 4 * NV) {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int r = 0; r < nr; ++r) {
      const T* s = rows[r] + j;
      const T t = w[r];
      V v0, v1, v2, v3;
      HFK_LD(v0, s);
      HFK_LD(v1, s + NV);
      HFK_LD(v2, s + 2 * NV);
      HFK_LD(v3, s + 3 * NV);
      a0 += v0 * t;
      a1 += v1 * t;
      a2 += v2 * t;
      a3 += v3 * t;
    }
    HFK_ST(out + j, a0);
    HFK_ST(out + j + NV, a1);
    HFK_ST(out + j + 2 * NV, a2);
    HFK_ST(out + j + 3 * NV, a3);
  }
  for (; j + NV <= n; j += NV) {
    V a0 = {};
    for (int r = 0; r < nr; ++r) {
      V v0;
      HFK_LD(v0, rows[r] + j);
      a0 += v0 * w[r];
    }
    HFK_ST(out + j, a0);
  }
  for (; j < n; ++j) {
    T a = T(0);
    for (int r = 0; r < nr; ++r) a += w[r] * rows[r][j];
    out[j] = a;
  }
}

#undef HFK_LD
#undef HFK_ST

#ifdef HFK_FMA_ROWS
#pragma GCC pop_options
#endif

// SSIM at one pixel from its five filtered statistics; with o != nullptr also the five backward
// coefficients o[0..4][j]: A_x, A_y, D_xx, D_yy, D_xy.
template <typename T>
inline T ssim_pixel(T a, T b, T exx, T eyy, T exy, T c1, T c2, T* const* o, int64_t j) {
  const T vx_raw = exx - a * a, vy_raw = eyy - b * b;
  const T vx = vx_raw > 0 ? vx_raw : T(0);
  const T vy = vy_raw > 0 ? vy_raw : T(0);
  // Cauchy-Schwarz/AM-GM: |sxy| <= (sxx + syy)/2 exactly; rounding can break it, so the
  // covariance is clamped like the reference (a constant image then gives exactly 1).
  const T bound = T(0.5) * (vx + vy);
  const T cxy_raw = exy - a * b;
  const T cxy = cxy_raw < -bound ? -bound : (cxy_raw > bound ? bound : cxy_raw);
  const T n1 = 2 * a * b + c1, n2 = 2 * cxy + c2;
  const T d1 = a * a + b * b + c1, d2 = vx + vy + c2;
  const T den = d1 * d2;
  const T s = (n1 * n2) / den;  // a division: equal numerator and denominator give 1
  if (o != nullptr) {
    // torch.clamp / clamp_min gradient conventions: the input gets the gradient where it lies
    // in [min, max] (ends included); otherwise the active bound does, the lower one only while
    // min < max.
    const T inv = T(1) / den;
    const T dc = 2 * n1 * inv;  // d S / d (clamped covariance)
    const bool below = cxy_raw < -bound, above = cxy_raw > bound;
    const T dxy = (below || above) ? T(0) : dc;
    const T dbound = above ? dc : ((below && -bound < bound) ? -dc : T(0));
    const T dv = -s / d2 + T(0.5) * dbound;
    const T dvx = vx_raw >= 0 ? dv : T(0);
    const T dvy = vy_raw >= 0 ? dv : T(0);
    const T dmx = 2 * b * n2 * inv - 2 * a * s / d1;
    const T dmy = 2 * a * n2 * inv - 2 * b * s / d1;
    o[0][j] = dmx - 2 * a * dvx - b * dxy;
    o[1][j] = dmy - 2 * b * dvy - a * dxy;
    o[2][j] = dvx;
    o[3][j] = dvy;
    o[4][j] = dxy;
  }
  return s;
}

// Forward: per-plane-row sums of the SSIM map into rowsum (P*Ho), and, if coefs != nullptr, the
// five backward coefficient maps (P, 5, Ho, Wo): A_x, A_y, D_xx, D_yy, D_xy.
//
// Each thread walks a contiguous range of output rows. Input rows are filtered horizontally once
// into a ring of the last R = hi-lo+1 rows (L2-resident), and each output row is the weighted sum
// of the ring rows under the window.
template <typename T>
void ssim_fwd_kernel(const T* xp, const T* yp, int64_t P, int64_t H, int64_t W, int64_t Ho,
                     int64_t Wo, int64_t pad, const T* taps, int lo, int hi, T c1, T c2,
                     T* coefs, double* rowsum) {
  const int R = hi - lo + 1;
  // Padded input row: index m in [mL, mR] with zeros outside [0, W).
  const int64_t mL = lo - pad, mR = Wo - 1 + hi - pad, L = mR - mL + 1;
  at::parallel_for(0, P * Ho, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> padrow(5 * L, T(0));
    std::vector<T> ring(static_cast<size_t>(R) * 5 * Wo);
    std::vector<T> st(5 * Wo);
    std::vector<const T*> hrows(R), vrows(R);
    std::vector<T> vw(R);
    const T* htaps = taps + lo;
    const int64_t c0 = std::max<int64_t>(0, mL), c1e = std::min<int64_t>(W, mR + 1);
    int64_t cur_p = -1, next_k = 0;
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t p = idx / Ho, q = idx % Ho;
      if (p != cur_p) {
        cur_p = p;
        next_k = 0;
      }
      const int64_t k_lo = std::max<int64_t>(0, q + lo - pad);
      const int64_t k_hi = std::min<int64_t>(H - 1, q + hi - pad);
      for (int64_t k = std::max(next_k, k_lo); k <= k_hi; ++k) {
        // Horizontal pass of input row k into ring slot k % R.
        const T* xr = xp + (p * H + k) * W;
        const T* yr = yp + (p * H + k) * W;
        T* b0 = padrow.data() - mL;  // b0[m] for m in [mL, mR]
        T* b1 = b0 + L;
        T* b2 = b1 + L;
        T* b3 = b2 + L;
        T* b4 = b3 + L;
        for (int64_t m = c0; m < c1e; ++m) {
          const T a = xr[m], b = yr[m];
          b0[m] = a;
          b1[m] = b;
          b2[m] = a * a;
          b3[m] = b * b;
          b4[m] = a * b;
        }
        T* slot = ring.data() + static_cast<size_t>(k % R) * 5 * Wo;
        for (int s = 0; s < 5; ++s) {
          const T* base = padrow.data() + s * L;
          for (int i = 0; i < R; ++i) hrows[i] = base + i;
          wsum_rows(hrows.data(), htaps, R, slot + s * Wo, Wo);
        }
      }
      next_k = std::max(next_k, k_hi + 1);
      // Vertical pass: rows k_lo..k_hi with taps t[k - q + pad].
      const int nr = static_cast<int>(k_hi - k_lo + 1);
      for (int s = 0; s < 5; ++s) {
        for (int r = 0; r < nr; ++r) {
          const int64_t k = k_lo + r;
          vrows[r] = ring.data() + (static_cast<size_t>(k % R) * 5 + s) * Wo;
          vw[r] = taps[k - q + pad];
        }
        wsum_rows(vrows.data(), vw.data(), nr, st.data() + s * Wo, Wo);
      }
      const T* mx = st.data();
      const T* my = mx + Wo;
      const T* exx = my + Wo;
      const T* eyy = exx + Wo;
      const T* exy = eyy + Wo;
      T* o[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
      if (coefs != nullptr)
        for (int s = 0; s < 5; ++s) o[s] = coefs + ((p * 5 + s) * Ho + q) * Wo;
      T sum = T(0);  // one row; rows are added in double by the caller
      // Two loops, so the one without coefficients stays branch-free.
      if (coefs == nullptr) {
        for (int64_t j = 0; j < Wo; ++j) sum += ssim_pixel<T>(mx[j], my[j], exx[j], eyy[j], exy[j], c1, c2, nullptr, j);
      } else {
        for (int64_t j = 0; j < Wo; ++j) sum += ssim_pixel<T>(mx[j], my[j], exx[j], eyy[j], exy[j], c1, c2, o, j);
      }
      rowsum[idx] = static_cast<double>(sum);
    }
  });
}

// Backward: gx, gy (P, H, W) from the coefficient maps (P, 5, Ho, Wo) and the per-plane scale
// d loss / d ssim_b / (C*Ho*Wo). Per input row: the transposed vertical filter of the five maps,
// then the transposed horizontal filter, then
//   gx = A_x' + 2 x D_xx' + y D_xy',  gy = A_y' + 2 y D_yy' + x D_xy'   (' = filtered).
template <typename T>
void ssim_bwd_kernel(const T* xp, const T* yp, const T* coefs, const T* scale, int64_t P,
                     int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t pad, const T* taps,
                     int lo, int hi, T* gxp, T* gyp) {
  const int R = hi - lo + 1;
  // Vertically filtered row, padded: index n in [nL, nR], zeros outside [0, Wo).
  const int64_t nL = pad - hi, nR = W - 1 + pad - lo, L = nR - nL + 1;
  at::parallel_for(0, P * H, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> vpad(5 * L, T(0));
    std::vector<T> f(5 * W);
    std::vector<const T*> vrows(R), hrows(static_cast<size_t>(5) * R);
    std::vector<T> vw(R), hw(R);
    for (int s = 0; s < 5; ++s)
      for (int i = lo; i <= hi; ++i) {
        // f[m] += t_i * v[m + pad - i]
        hrows[s * R + (i - lo)] = vpad.data() + s * L + (pad - i - nL);
        hw[i - lo] = taps[i];
      }
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t p = idx / H, k = idx % H;
      for (int s = 0; s < 5; ++s) {
        int nr = 0;
        for (int i = lo; i <= hi; ++i) {
          const int64_t q = k + pad - i;  // output row that input row k fed through tap i
          if (q < 0 || q >= Ho) continue;
          vrows[nr] = coefs + ((p * 5 + s) * Ho + q) * Wo;
          vw[nr++] = taps[i];
        }
        T* v = vpad.data() + s * L - nL;  // v[n] for n in [nL, nR]; [0, Wo) written here
        if (nr == 0) {
          std::fill(v, v + Wo, T(0));
        } else {
          wsum_rows(vrows.data(), vw.data(), nr, v, Wo);
        }
        wsum_rows(hrows.data() + s * R, hw.data(), R, f.data() + s * W, W);
      }
      const T sc = scale[p];
      const T* xr = xp + (p * H + k) * W;
      const T* yr = yp + (p * H + k) * W;
      T* gxr = gxp + (p * H + k) * W;
      T* gyr = gyp + (p * H + k) * W;
      const T *fax = f.data(), *fay = fax + W, *fxx = fay + W, *fyy = fxx + W, *fxy = fyy + W;
      for (int64_t j = 0; j < W; ++j) {
        const T a = xr[j], b = yr[j];
        gxr[j] = sc * (fax[j] + 2 * a * fxx[j] + b * fxy[j]);
        gyr[j] = sc * (fay[j] + 2 * b * fyy[j] + a * fxy[j]);
      }
    }
  });
}
