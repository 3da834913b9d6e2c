"""Triton backend (``"triton"``) of the loss ops "ssim" and "gradient_max", forward and backward.

SSIM (planes = B*C stacked images, window taps without those below the dtype's resolution, see
``loss_torch.kept_taps``):

1. ``_ssim_h_kernel``: one pass over x and y computes the horizontally filtered five statistics
   (x, y, x^2, y^2, xy) -> ``h`` (5, planes, H, W').
2. ``_ssim_v_kernel``: the vertical filter of ``h``, then the SSIM formula with its clamps, in
   registers. Forward mode writes the SSIM map (planes, H', W'), reduced per image by torch;
   backward mode (given d loss / d map per plane) writes the five derivatives d map / d stat
   scaled by it, ``G`` (5, planes, H', W'), following autograd's conventions at the clamps.
3. ``_rows_filter_kernel``: the transposed vertical filter of ``G`` -> (5, planes, H, W').
4. ``_ssim_hT_kernel``: the transposed horizontal filter, combined with the chain rule through
   the statistics (``gx = G_x + 2 x G_xx + y G_xy``, likewise gy) -> gradients in x's dtype.

What is saved for backward is what every backend saves (see :mod:`hfkernels.ops.loss_torch`):
the inputs and, when an input requires grad, the five derivative maps of step 2 for an incoming
gradient of 1 (``G`` (5, planes, H', W'), written by a second launch of ``_ssim_v_kernel``
in backward mode); the backward scales them per plane and runs steps 3-4. A backward without
them recomputes steps 1-2.

Gradient max: ``_gmax_fwd_kernel`` computes the three Sobel pairs (replicate padding, evaluated
in the fixed order of ``loss_reference.sobel_replicate``) and per-tile partial sums of both L1
terms; backward computes the six per-pixel coefficients d loss / d Sobel response
(``_gmax_coef_kernel``, autograd's sign/maximum conventions) and applies the adjoint Sobel with
replicate padding (``_gmax_adjoint_kernel``: per axis, a source index plus an extra one at the
clamped borders).

Arithmetic is float32 (float64 for float64 inputs); half inputs are loaded in their dtype.
Inputs are made contiguous; offsets are 64-bit, so tensors past 2^31 elements are addressed
correctly. Registration as in ``fuse_triton``: ``torch.library.triton_op``s wired by
:func:`hfkernels.ops._wiring.wire`, tiles from :class:`hfkernels.ops._host.Tiling`. Without
triton this module registers nothing.
"""
from __future__ import annotations

from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install: the registry reports why "triton" is absent
    triton = None

from ..core.backends import implements
from ._contracts import (
    accumulation_dtype,
    gradient_max_reference_vjp,
    kept_taps,
    ssim_out_size,
    ssim_reference_vjp,
)
from ._host import Tiling, geometry
from ._wiring import wants_grad, wire

if triton is not None:

    @triton.jit
    def _acc_zero(BH: tl.constexpr, BW: tl.constexpr, ACC64: tl.constexpr):
        if ACC64:
            z = tl.zeros([BH, BW], dtype=tl.float64)
        else:
            z = tl.zeros([BH, BW], dtype=tl.float32)
        return z

    # Offsets are int64: the row index g runs over planes * H, and g * W or a statistic's
    # index times its plane-stack size passes 2^31 long before any single index does.

    @triton.jit
    def _rows(BH: tl.constexpr):
        """This program's rows as a [BH, 1] int64 vector."""
        return tl.program_id(0).to(tl.int64) * BH + tl.arange(0, BH)[:, None]

    @triton.jit
    def _cols(BW: tl.constexpr):
        """This program's columns as a [1, BW] vector."""
        return tl.program_id(1) * BW + tl.arange(0, BW)[None, :]

    @triton.jit
    def _zeros5(BH: tl.constexpr, BW: tl.constexpr, ACC64: tl.constexpr):
        """Five zero accumulators, one per statistic (x, y, x^2, y^2, xy)."""
        # five separate tensors: never one object aliased five times (the interpreter runs on arrays)
        return (_acc_zero(BH, BW, ACC64), _acc_zero(BH, BW, ACC64), _acc_zero(BH, BW, ACC64),
                _acc_zero(BH, BW, ACC64), _acc_zero(BH, BW, ACC64))

    @triton.jit
    def _store5(ptr, n, o, v0, v1, v2, v3, v4, mask):
        """Store five maps at ptr + s * n + o, s = 0..4 (a statistic's index times its size)."""
        tl.store(ptr + o, v0, mask=mask)
        tl.store(ptr + n + o, v1, mask=mask)
        tl.store(ptr + 2 * n + o, v2, mask=mask)
        tl.store(ptr + 3 * n + o, v3, mask=mask)
        tl.store(ptr + 4 * n + o, v4, mask=mask)

    @triton.jit
    def _filter5(src, n, base, pos, step, lim, OFF, K, taps, ok,
                 ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        """sum_j taps[j] src[s * n + base + (pos + OFF + j) * step] for the five maps s = 0..4,
        with zero outside 0 <= pos + OFF + j < lim: one 1-D filter pass over stacked statistics."""
        a0, a1, a2, a3, a4 = _zeros5(BH, BW, ACC64)
        for j in range(K):
            r = pos + OFF + j
            m = ok & (r >= 0) & (r < lim)
            t = tl.load(taps + j)
            i = base + r * step
            a0 += t * tl.load(src + i, mask=m, other=0.0)
            a1 += t * tl.load(src + n + i, mask=m, other=0.0)
            a2 += t * tl.load(src + 2 * n + i, mask=m, other=0.0)
            a3 += t * tl.load(src + 3 * n + i, mask=m, other=0.0)
            a4 += t * tl.load(src + 4 * n + i, mask=m, other=0.0)
        return a0, a1, a2, a3, a4

    @triton.jit
    def _i64(x):
        """A size argument as int64 (ints equal to 1 arrive as constants, hence tl.cast)."""
        return tl.cast(x, tl.int64)

    @triton.jit
    def _ssim_h_kernel(x, y, taps, h, NROWS, W, WO, OFF, K,
                       ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        """h[s, g, q] = sum_j taps[j] stat_s[g, q + OFF + j]; rows g over planes*H."""
        g = _rows(BH)
        q = _cols(BW)
        ok = (g < NROWS) & (q < WO)
        sx, sy, sxx, syy, sxy = _zeros5(BH, BW, ACC64)
        for j in range(K):
            c = q + OFF + j
            m = ok & (c >= 0) & (c < W)
            t = tl.load(taps + j)
            xv = tl.load(x + g * W + c, mask=m, other=0.0).to(t.dtype)
            yv = tl.load(y + g * W + c, mask=m, other=0.0).to(t.dtype)
            sx += t * xv
            sy += t * yv
            sxx += t * (xv * xv)
            syy += t * (yv * yv)
            sxy += t * (xv * yv)
        _store5(h, _i64(NROWS) * WO, g * WO + q, sx, sy, sxx, syy, sxy, ok)

    @triton.jit
    def _ssim_v_kernel(h, taps, consts, gscale, out, NP, H, HO, WO, OFF, K,
                       BACKWARD: tl.constexpr, ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        """Vertical filter of h (5, NP, H, WO) and the SSIM formula on rows g over NP*HO, with
        consts = [C1, C2] in the compute dtype."""
        c1 = tl.load(consts)
        c2 = tl.load(consts + 1)
        g = _rows(BH)
        q = _cols(BW)
        nrows = _i64(NP) * HO
        ok = (g < nrows) & (q < WO)
        plane = g // HO
        p = g % HO
        mu1, mu2, e11, e22, e12 = _filter5(h, _i64(NP) * H * WO, plane * H * WO + q, p, WO, H, OFF, K, taps, ok,
                                           ACC64, BH, BW)
        mu11 = mu1 * mu1
        mu22 = mu2 * mu2
        mu12 = mu1 * mu2
        v1 = e11 - mu11
        v2 = e22 - mu22
        s1 = tl.maximum(v1, 0.0)
        s2 = tl.maximum(v2, 0.0)
        bnd = 0.5 * (s1 + s2)
        v12 = e12 - mu12
        s12 = tl.minimum(tl.maximum(v12, -bnd), bnd)
        a1 = 2 * mu12 + c1
        a2 = 2.0 * s12 + c2
        b1 = mu11 + mu22 + c1
        b2 = s1 + s2 + c2
        den = b1 * b2
        smap = (a1 * a2) / den
        o = g * WO + q
        if BACKWARD:
            gs = tl.load(gscale + plane, mask=g < nrows, other=0.0).to(smap.dtype)
            ga1 = gs * a2 / den
            ga2 = gs * a1 / den
            gden = -gs * smap / den
            gb1 = gden * b2
            gb2 = gden * b1
            gs12 = 2.0 * ga2
            # torch.clamp(v12, -bnd, bnd): the value gets the gradient inside [min, max]; min
            # when below it (and min < max); max when above it (or max < min)
            g12 = tl.where((v12 >= -bnd) & (v12 <= bnd), gs12, 0.0)
            gmin = tl.where((v12 < -bnd) & (-bnd < bnd), gs12, 0.0)
            gmax = tl.where((v12 > bnd) | (bnd < -bnd), gs12, 0.0)
            gbnd = gmax - gmin
            g1 = tl.where(v1 >= 0, gb2 + 0.5 * gbnd, 0.0)  # clamp_min passes at v >= 0
            g2 = tl.where(v2 >= 0, gb2 + 0.5 * gbnd, 0.0)
            gm1 = 2 * mu2 * ga1 + 2 * mu1 * gb1 - 2 * mu1 * g1 - mu2 * g12
            gm2 = 2 * mu1 * ga1 + 2 * mu2 * gb1 - 2 * mu2 * g2 - mu1 * g12
            _store5(out, nrows * WO, o, gm1, gm2, g1, g2, g12, ok)
        else:
            tl.store(out + o, smap, mask=ok)

    @triton.jit
    def _rows_filter_kernel(src, taps, dst, NS, HIN, HOUT, W, OFF, K,
                            ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        """dst[s, r] = sum_j taps[j] src[s, r + OFF + j] (zero outside 0..HIN-1); rows over NS*HOUT."""
        g = _rows(BH)
        q = _cols(BW)
        ok = (g < _i64(NS) * HOUT) & (q < W)
        s = g // HOUT
        r = g % HOUT
        acc = _acc_zero(BH, BW, ACC64)
        for j in range(K):
            rr = r + OFF + j
            m = ok & (rr >= 0) & (rr < HIN)
            acc += tl.load(taps + j) * tl.load(src + (s * HIN + rr) * W + q, mask=m, other=0.0)
        tl.store(dst + g * W + q, acc, mask=ok)

    @triton.jit
    def _ssim_hT_kernel(gv, x, y, taps, gx, gy, NROWS, W, WO, OFF, K,
                        ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        """Transposed horizontal filter of gv (5, NROWS, WO) and the chain rule to x, y."""
        g = _rows(BH)
        q = _cols(BW)
        ok = (g < NROWS) & (q < W)
        a0, a1, a2, a3, a4 = _filter5(gv, _i64(NROWS) * WO, g * WO, q, 1, WO, OFF, K, taps, ok, ACC64, BH, BW)
        o = g * W + q
        xv = tl.load(x + o, mask=ok, other=0.0).to(a0.dtype)
        yv = tl.load(y + o, mask=ok, other=0.0).to(a0.dtype)
        tl.store(gx + o, (a0 + 2 * xv * a2 + yv * a4).to(gx.dtype.element_ty), mask=ok)
        tl.store(gy + o, (a1 + 2 * yv * a3 + xv * a4).to(gy.dtype.element_ty), mask=ok)

    # -- gradient max ---------------------------------------------------------------------------

    @triton.jit
    def _sobel(img, base, rm, r, rp, cm, c, cp, W, m, ACC64: tl.constexpr):
        """(gx, gy) of one image at rows r (neighbours rm, rp) and columns c (cm, cp), clamped
        indices, in the order of loss_reference.sobel_replicate."""
        if ACC64:
            dt = tl.float64
        else:
            dt = tl.float32
        p_mm = tl.load(img + base + rm * W + cm, mask=m, other=0.0).to(dt)
        p_mc = tl.load(img + base + rm * W + c, mask=m, other=0.0).to(dt)
        p_mp = tl.load(img + base + rm * W + cp, mask=m, other=0.0).to(dt)
        p_cm = tl.load(img + base + r * W + cm, mask=m, other=0.0).to(dt)
        p_cp = tl.load(img + base + r * W + cp, mask=m, other=0.0).to(dt)
        p_pm = tl.load(img + base + rp * W + cm, mask=m, other=0.0).to(dt)
        p_pc = tl.load(img + base + rp * W + c, mask=m, other=0.0).to(dt)
        p_pp = tl.load(img + base + rp * W + cp, mask=m, other=0.0).to(dt)
        gx = ((p_mp - p_mm) + 2 * (p_cp - p_cm)) + (p_pp - p_pm)
        gy = ((p_pm - p_mm) + 2 * (p_pc - p_mc)) + (p_pp - p_mp)
        return gx, gy

    @triton.jit
    def _tile(H, W, NP, BH: tl.constexpr, BW: tl.constexpr):
        """(g, r, c, m, base): rows g over NP*H (int64), row r in its plane, columns c, mask and
        the plane's offset."""
        g = _rows(BH)
        c = tl.program_id(1) * BW + tl.arange(0, BW)[None, :]
        m = (g < _i64(NP) * H) & (c < W)
        base = (g // H) * H * W
        r = g % H
        return g, r, c, m, base

    @triton.jit
    def _sobel3(a, b, f, NP, H, W, ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        """This program's tile of the Sobel pairs of a, b and f: (o, m, ax, ay, bx, by, fx, fy),
        o the flat offsets and m the mask."""
        g, r, c, m, base = _tile(H, W, NP, BH, BW)
        rm, rp = tl.maximum(r - 1, 0), tl.minimum(r + 1, H - 1)
        cm, cp = tl.maximum(c - 1, 0), tl.minimum(c + 1, W - 1)
        ax, ay = _sobel(a, base, rm, r, rp, cm, c, cp, W, m, ACC64)
        bx, by = _sobel(b, base, rm, r, rp, cm, c, cp, W, m, ACC64)
        fx, fy = _sobel(f, base, rm, r, rp, cm, c, cp, W, m, ACC64)
        return g * W + c, m, ax, ay, bx, by, fx, fy

    @triton.jit
    def _gmax_fwd_kernel(a, b, f, part, NP, H, W, ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        o, m, ax, ay, bx, by, fx, fy = _sobel3(a, b, f, NP, H, W, ACC64, BH, BW)
        lx = tl.abs(tl.abs(fx) - tl.maximum(tl.abs(ax), tl.abs(bx)))
        ly = tl.abs(tl.abs(fy) - tl.maximum(tl.abs(ay), tl.abs(by)))
        lx = tl.where(m, lx, 0.0)
        ly = tl.where(m, ly, 0.0)
        pid = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        npg = tl.num_programs(0) * tl.num_programs(1)
        tl.store(part + pid, tl.sum(tl.sum(lx, 1), 0))
        tl.store(part + npg + pid, tl.sum(tl.sum(ly, 1), 0))

    @triton.jit
    def _sign(v):
        return (v > 0).to(v.dtype) - (v < 0).to(v.dtype)

    @triton.jit
    def _coefs(fv, av, bv, gs):
        """d loss / d (Sobel f, Sobel a, Sobel b) of |(|fv| - max(|av|, |bv|))| * gs."""
        sd = _sign(tl.abs(fv) - tl.maximum(tl.abs(av), tl.abs(bv)))
        gmx = -gs * sd
        aa = tl.abs(av)
        bb = tl.abs(bv)
        # torch.maximum: the larger gets it all, ties split it in halves
        ga = tl.where(aa > bb, gmx, tl.where(aa == bb, gmx / 2, 0.0))
        gb = tl.where(bb > aa, gmx, tl.where(aa == bb, gmx / 2, 0.0))
        return gs * sd * _sign(fv), ga * _sign(av), gb * _sign(bv)

    @triton.jit
    def _gmax_coef_kernel(a, b, f, grad, coef, NP, H, W,
                          ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        """coef (6, NP, H, W): d loss / d [f_x, a_x, b_x, f_y, a_y, b_y] Sobel responses, for
        grad = d loss / d (one pixel's term), already divided by the pixel count."""
        o, m, ax, ay, bx, by, fx, fy = _sobel3(a, b, f, NP, H, W, ACC64, BH, BW)
        gs = tl.load(grad).to(ax.dtype)
        cfx, cax, cbx = _coefs(fx, ax, bx, gs)
        cfy, cay, cby = _coefs(fy, ay, by, gs)
        n = _i64(NP) * H * W
        tl.store(coef + o, cfx, mask=m)
        tl.store(coef + n + o, cax, mask=m)
        tl.store(coef + 2 * n + o, cbx, mask=m)
        tl.store(coef + 3 * n + o, cfy, mask=m)
        tl.store(coef + 4 * n + o, cay, mask=m)
        tl.store(coef + 5 * n + o, cby, mask=m)

    @triton.jit
    def _adj_term(cx, cy, base, rr, okr, cc, okc, m, W, wx: tl.constexpr, wy: tl.constexpr):
        mm = m & okr & okc
        i = base + rr * W + cc
        v = wx * tl.load(cx + i, mask=mm, other=0.0)
        if wy != 0:
            v += wy * tl.load(cy + i, mask=mm, other=0.0)
        return v

    @triton.jit
    def _adj_axis(i, d: tl.constexpr, n):
        """The sources along one axis (length n) that tap d (offset d - 1) of a replicate-padded
        Sobel maps onto index i: (i1, ok1, ok2), i1 = i - (d - 1) where ok1 (inside), and i
        itself where ok2 (the clamped border: i == 0 for d == 0, i == n - 1 for d == 2)."""
        i1 = i - (d - 1)
        ok1 = (i1 >= 0) & (i1 < n)
        if d == 0:
            ok2 = i == 0
        elif d == 2:
            ok2 = i == n - 1
        else:
            ok2 = i < 0
        return i1, ok1, ok2

    @triton.jit
    def _adjoint(cx, cy, base, r, c, H, W, m, ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        """Adjoint of the replicate-padded Sobel pair: sum over sources p and taps d with
        clamp(p + d) == (r, c). Per axis and tap d the sources are p = i - d (if inside) and,
        at a clamped border (i == 0, d == -1 or i == n-1, d == +1), p = i itself."""
        acc = _acc_zero(BH, BW, ACC64)
        for di in tl.static_range(3):
            for dj in tl.static_range(3):
                # Sobel x: K = s[di] v[dj]; Sobel y: K = v[di] s[dj]; s = (1,2,1), v = (-1,0,1)
                wx = (2 - (di - 1) * (di - 1)) * (dj - 1)
                wy = (di - 1) * (2 - (dj - 1) * (dj - 1))
                if wx != 0 or wy != 0:
                    r1, ok_r1, ok_r2 = _adj_axis(r, di, H)
                    c1, ok_c1, ok_c2 = _adj_axis(c, dj, W)
                    acc += _adj_term(cx, cy, base, r1, ok_r1, c1, ok_c1, m, W, wx, wy)
                    acc += _adj_term(cx, cy, base, r1, ok_r1, c, ok_c2, m, W, wx, wy)
                    acc += _adj_term(cx, cy, base, r, ok_r2, c1, ok_c1, m, W, wx, wy)
                    acc += _adj_term(cx, cy, base, r, ok_r2, c, ok_c2, m, W, wx, wy)
        return acc

    @triton.jit
    def _gmax_adjoint_kernel(coef, ga, gb, gf, NP, H, W, ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
        g, r, c, m, base = _tile(H, W, NP, BH, BW)
        n = _i64(NP) * H * W
        o = g * W + c
        vf = _adjoint(coef, coef + 3 * n, base, r, c, H, W, m, ACC64, BH, BW)
        va = _adjoint(coef + n, coef + 4 * n, base, r, c, H, W, m, ACC64, BH, BW)
        vb = _adjoint(coef + 2 * n, coef + 5 * n, base, r, c, H, W, m, ACC64, BH, BW)
        tl.store(gf + o, vf.to(gf.dtype.element_ty), mask=m)
        tl.store(ga + o, va.to(ga.dtype.element_ty), mask=m)
        tl.store(gb + o, vb.to(gb.dtype.element_ty), mask=m)


# 512-element tiles on GPUs (these kernels hold less per element than fuse's gathers)
_TILES = Tiling(512, 8192)


if triton is not None:
    from torch.library import triton_op, wrap_triton

    def _taps(window_size, sigma, cdt, device):
        taps, lo = kept_taps(window_size, sigma, cdt)
        return torch.tensor(taps, dtype=cdt, device=device), len(taps), lo

    def _ssim_plan(x, window_size, sigma, padding):
        """(taps tensor, k, ox, wo, oy, ho, ACC64) of an SSIM on x (B,C,H,W)."""
        cdt = accumulation_dtype(x)
        taps, k, lo = _taps(window_size, sigma, cdt, x.device)
        h, w = x.shape[-2:]
        return (taps, k, *geometry(w, window_size, lo, padding), *geometry(h, window_size, lo, padding),
                cdt == torch.float64)

    def _ssim_stats_h(x, y, plan):
        taps, k, ox, wo, _, _, acc64 = plan
        b, c, h, w = x.shape
        hbuf = torch.empty((5, b * c, h, wo), dtype=taps.dtype, device=x.device)
        _TILES.launch(wrap_triton(_ssim_h_kernel), b * c * h, wo, x, y, taps, hbuf, b * c * h, w, wo, ox, k,
                      ACC64=acc64)
        return hbuf

    def _ssim_consts(c1, c2, plan, device):
        """[C1, C2] as a tensor in the compute dtype: a Python float argument reaches a compiled
        kernel as float32, which would cost float64 SSIM about 1e-8 of relative accuracy."""
        return torch.tensor([c1, c2], dtype=plan[0].dtype, device=device)

    def _ssim_vertical(x, hbuf, plan, gscale, out, consts, backward):
        """Step 2 of the module docstring: the SSIM map (forward) or G for gscale (backward)."""
        taps, k, _, wo, oy, ho, acc64 = plan
        b, c, h, _ = x.shape
        _TILES.launch(wrap_triton(_ssim_v_kernel), b * c * ho, wo, hbuf, taps, consts, gscale, out,
                      b * c, h, ho, wo, oy, k, BACKWARD=backward, ACC64=acc64)
        return out

    @triton_op("hfkernels::ssim_triton", mutates_args=())
    def ssim_triton_fwd(x: torch.Tensor, y: torch.Tensor, window_size: int, sigma: float,
                        c1: float, c2: float, padding: str, save: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-image mean SSIM (B,) in x's dtype, G for a gradient of 1 (5, B*C, H', W') if
        ``save`` else an empty tensor)."""
        plan = _ssim_plan(x, window_size, sigma, padding)
        taps, _, _, wo, _, ho, _ = plan
        b, c = x.shape[:2]
        hbuf = _ssim_stats_h(x, y, plan)
        smap = torch.empty((b * c, ho, wo), dtype=taps.dtype, device=x.device)
        consts = _ssim_consts(c1, c2, plan, x.device)
        _ssim_vertical(x, hbuf, plan, smap, smap, consts, False)
        coefs = taps.new_empty(0)
        if save:
            coefs = torch.empty((5, b * c, ho, wo), dtype=taps.dtype, device=x.device)
            _ssim_vertical(x, hbuf, plan, torch.ones(b * c, dtype=taps.dtype, device=x.device), coefs, consts, True)
        return smap.view(b, -1).mean(1).to(x.dtype), coefs

    @triton_op("hfkernels::ssim_triton_backward", mutates_args=())
    def ssim_triton_bwd(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, window_size: int,
                        sigma: float, c1: float, c2: float, padding: str,
                        coefs: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients (x, y) for d loss / d ssim = grad (B,), from the forward's G (``coefs``) or,
        when None, recomputing steps 1-2."""
        plan = _ssim_plan(x, window_size, sigma, padding)
        taps, k, ox, wo, oy, ho, acc64 = plan
        b, c, h, w = x.shape
        # d loss / d map for every pixel of plane (b, c): grad[b] / (C H' W')
        gscale = (grad.to(taps.dtype) / (c * ho * wo)).repeat_interleave(c).contiguous()
        if coefs is None:
            gmaps = torch.empty((5, b * c, ho, wo), dtype=taps.dtype, device=x.device)
            _ssim_vertical(x, _ssim_stats_h(x, y, plan), plan, gscale, gmaps, _ssim_consts(c1, c2, plan, x.device),
                           True)
        else:
            gmaps = coefs * gscale.view(1, b * c, 1, 1)
        flipped = taps.flip(0).contiguous()
        gv = torch.empty((5, b * c, h, wo), dtype=taps.dtype, device=x.device)
        _TILES.launch(wrap_triton(_rows_filter_kernel), 5 * b * c * h, wo, gmaps, flipped, gv, 5 * b * c, ho, h, wo,
                      -oy - (k - 1), k, ACC64=acc64)
        gx, gy = torch.empty_like(x), torch.empty_like(y)
        _TILES.launch(wrap_triton(_ssim_hT_kernel), b * c * h, w, gv, x, y, flipped, gx, gy, b * c * h, w, wo,
                      -ox - (k - 1), k, ACC64=acc64)
        return gx, gy

    def _ssim_fake(x, y, window_size, sigma, c1, c2, padding, save=False):
        b, c, h, w = x.shape
        ho, wo = ssim_out_size(h, w, window_size, padding)
        return x.new_empty(b), x.new_empty((5, b * c, ho, wo) if save else (0,), dtype=accumulation_dtype(x))

    def _ssim_backward(grad, x, y, coefs, window_size, sigma, c1, c2, padding, save):
        saved = coefs if coefs.numel() else None  # none saved: the backward recomputes them
        return ssim_triton_bwd(grad.contiguous(), x, y, window_size, sigma, c1, c2, padding, saved)

    wire(ssim_triton_fwd, tensors=2, kernel=_ssim_backward, fake=_ssim_fake, backward_op=ssim_triton_bwd,
         reference=ssim_reference_vjp)

    @triton_op("hfkernels::gradient_max_triton", mutates_args=())
    def gmax_triton_fwd(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        n, c, h, w = f.shape
        cdt = accumulation_dtype(f)
        grid, _, _ = _TILES.grid(n * c * h, w)
        part = torch.empty((2, grid[0] * grid[1]), dtype=cdt, device=f.device)
        _TILES.launch(wrap_triton(_gmax_fwd_kernel), n * c * h, w, a, b, f, part, n * c, h, w,
                      ACC64=cdt == torch.float64)
        numel = f.numel()
        return (part[0].sum() / numel + part[1].sum() / numel).to(f.dtype)

    @triton_op("hfkernels::gradient_max_triton_backward", mutates_args=())
    def gmax_triton_bwd(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                        f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, c, h, w = f.shape
        cdt = accumulation_dtype(f)
        acc64 = cdt == torch.float64
        coef = torch.empty((6, n * c, h, w), dtype=cdt, device=f.device)
        # the 1/numel scale is applied here, in the compute dtype: a Python float argument would
        # reach a compiled kernel as float32
        scaled = grad.to(cdt) / f.numel()
        _TILES.launch(wrap_triton(_gmax_coef_kernel), n * c * h, w, a, b, f, scaled, coef, n * c, h, w, ACC64=acc64)
        ga, gb, gf = torch.empty_like(a), torch.empty_like(b), torch.empty_like(f)
        _TILES.launch(wrap_triton(_gmax_adjoint_kernel), n * c * h, w, coef, ga, gb, gf, n * c, h, w, ACC64=acc64)
        return ga, gb, gf

    wire(gmax_triton_fwd, tensors=3, reference=gradient_max_reference_vjp, fake=lambda a, b, f: f.new_empty(()),
         kernel=lambda grad, a, b, f: gmax_triton_bwd(grad.contiguous(), a, b, f), backward_op=gmax_triton_bwd)

    @implements("ssim", "triton")
    def ssim_triton(x, y, window_size: int, sigma: float, c1: float, c2: float, padding: str) -> torch.Tensor:
        """Per-image mean SSIM (B,) with the Triton kernels (arguments validated by the caller)."""
        return ssim_triton_fwd(x.contiguous(), y.contiguous(), window_size, float(sigma), float(c1), float(c2),
                               padding, wants_grad(x, y))[0]

    @implements("gradient_max", "triton")
    def gradient_max_triton(a, b, f) -> torch.Tensor:
        """0-dim gradient-max loss with the Triton kernels."""
        return gmax_triton_fwd(a.contiguous(), b.contiguous(), f.contiguous())
