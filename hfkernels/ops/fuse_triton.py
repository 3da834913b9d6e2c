"""Triton backend (``"triton"``) of the guidance-weighted pyramid fusion, forward and backward.

The op is linear in its sources: with ``D = ir - vis`` (``ir`` broadcast over channels),

    out = vis + collapse(mu_k * pyr(D)_k),

because ``pyr`` and ``collapse`` are linear and ``collapse(pyr(x)) == x``. So only ONE pyramid
(of ``D``) is built, and never at full resolution: ``D`` is formed on the fly from ``vis`` and
``ir`` wherever level 0 is read.

Notation (as in ``hfkernels/core/reference.py``): ``G_0 = D``, ``G_{k+1} = down(G_k)``,
``L_k = G_k - up(G_{k+1})`` (k < L), ``L_L = G_L``; ``U_k = up(., size of level k)`` (transposed
convolution x2, then the bilinear size fix for odd sizes); ``mu_k`` = bilinear resize of ``mu`` to
level k (align_corners=False, identity at level 0).

Forward (2 L kernel launches, each a single pass over one level):

1. ``_down_kernel``, k = 0..L-1: ``G_{k+1} = down(G_k)`` (separable 5x5 blur and stride 2 in one
   kernel; at k = 0 it reads ``ir - vis`` through the inputs' strides). At the top level it also
   writes ``R_L = mu_L * G_L``.
2. ``_up_blend_kernel``, k = L-1..0: ``R_k = up(R_{k+1}) + mu_k * (G_k - up(G_{k+1}))`` — both
   ups (transposed conv + bilinear size fix), the Laplacian, the per-level bilinear ``mu_k`` and
   the blend in one gather pass; at k = 0 it writes ``vis + R_0`` in ``vis``'s dtype.

Backward, with ``H_k = U_{k-1}^T H_{k-1}`` (``H_0`` = incoming gradient: the adjoint of the
collapse, level by level), ``E_k = mu_k * H_k``, ``S_k = E_k - U_{k-1}^T E_{k-1}`` (``S_0 = E_0``):
the gradient w.r.t. the Gaussian levels is ``Q_L = S_L``, ``Q_k = S_k + down^T(Q_{k+1})``, and

    grad_ir = Q_0 (summed over channels when ir broadcasts),  grad_vis = grad - Q_0,
    grad_mu = sum_k resize_k^T(m_k),  m_k = sum_c L_k * H_k.

3. ``_up_adjoint_kernel``, k = 1..L: ``H_k``, ``E_k`` and ``S_k`` from level k-1 in one gather
   pass (the adjoint of up-with-size-fix is evaluated in closed form per candidate source row).
4. ``_down_adjoint_kernel``, k = L..1: ``Q_k`` (in place over ``S_k``) and ``m_k`` (one program
   loops over the channels so the channel sum needs no second pass).
5. ``_final_kernel``, level 0: ``Q_0``, ``grad_vis``, ``grad_ir`` (channel sum in registers),
   ``m_0`` and ``grad_mu = m_0 + sum_k resize_k^T(m_k)``, gathering every level's ``m_k`` at once —
   with step 3's first level, the only full-resolution passes of the backward.

What is stored for backward, and why: the inputs (``vis``, ``ir``, ``mu``, no copies) and the
coarse Gaussian levels ``G_1..G_L`` of ``D`` in one packed buffer (1/3 of one input's size,
float32 or float64) — the forward builds them anyway, and ``grad_mu`` needs every Laplacian level
``L_k``; keeping them saves the backward a second full-resolution pass over ``vis`` and ``ir``.
``D = G_0``, the Laplacian levels and the blended/collapsed pyramids are never stored: they are
recomputed where they are read. The backward's own temporaries (``H``, ``E``, ``S/Q``: 1/3 of
``grad`` each; ``m``: 1/3 of ``mu``) are coarse levels only.

All arithmetic is in float32 (float64 for float64 inputs); float16/bfloat16 are loaded and stored
in their own dtype. Inputs may have any strides; outputs and temporaries are contiguous.

Registration: ``hfkernels::fuse_triton`` (returns the output and the saved buffer) and
``hfkernels::fuse_triton_backward`` are ``torch.library.triton_op``s launching through
``wrap_triton`` (tiles from :class:`hfkernels.ops._host.Tiling`), wired for autograd by
:func:`hfkernels.ops._wiring.wire` with explicit fake implementations (under
``TRITON_INTERPRET=1`` ``wrap_triton`` cannot trace, so the fakes only compute shapes). If triton
cannot be imported this module registers nothing.
"""
from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install: the registry reports why "triton" is absent
    triton = None

from ..core.backends import implements
from ._contracts import accumulation_dtype, fuse_reference_vjp
from ._host import Tiling
from ._wiring import wire

if triton is not None:
    # 1-D Gaussian taps of the pyramid kernel (sigma 1, offsets -2..2, sum 1), in float64 here;
    # kernels materialise them in their compute dtype (a python float times a float64 tensor
    # keeps full precision).
    _Z = 1.0 + 2.0 * math.exp(-0.5) + 2.0 * math.exp(-2.0)
    _T0 = tl.constexpr(1.0 / _Z)
    _T1 = tl.constexpr(math.exp(-0.5) / _Z)
    _T2 = tl.constexpr(math.exp(-2.0) / _Z)

    # Layout shared by all kernels: a program owns a BH x BW tile whose rows run over the
    # stacked planes (row g = plane * h + r), so tiles of small levels cover many planes at
    # once; columns are contiguous in memory (coalesced loads and stores). Every gather is
    # separable: the per-column candidate source indices, weights and masks are computed once
    # per tile as tuples of [1, BW] vectors; the row candidates are visited in a runtime loop
    # (computed per iteration, [BH, 1]) that loads and accumulates one candidate row at a time.
    # The runtime row loop is what keeps these kernels small: fully unrolled, the compiler
    # hoists every tap's load and address (the 7 x 7 gather of _up_adjoint_kernel took 255
    # registers and spilled on sm_90; benchmarks/resources.py measures them all).

    @triton.jit
    def _one(ACC64: tl.constexpr):
        """A scalar 1 in the compute dtype (float64 if ACC64 else float32)."""
        if ACC64:
            one = tl.full([], 1.0, tl.float64)
        else:
            one = tl.full([], 1.0, tl.float32)
        return one

    @triton.jit
    def _tap(d, one):
        """t_d, the 1-D pyramid tap at integer offset(s) d (zero for |d| > 2), in one's dtype."""
        ad = tl.abs(d)
        return tl.where(ad == 0, one * _T0, tl.where(ad == 1, one * _T1, tl.where(ad == 2, one * _T2, one * 0.0)))

    @triton.jit
    def _linear(dst, n_in, n_out, one):
        """PyTorch's bilinear source taps (align_corners=False) of destination indices ``dst``
        when resizing n_in -> n_out: value = (1 - lam) * x[i0] + lam * x[i1]."""
        scale = (n_in * one) / (n_out * one)
        src = tl.maximum((dst.to(one.dtype) + 0.5) * scale - 0.5, 0.0)
        i0 = tl.minimum(src.to(tl.int32), n_in - 1)  # src >= 0, so truncation is floor
        i1 = tl.where(i0 < n_in - 1, i0 + 1, i0)
        return i0, i1, src - i0.to(one.dtype)

    # One candidate of each 1-D gather: (source indices, weights, masks) of candidate ``a`` for
    # destination indices ``p`` (1-D vectors; ``ok`` masks p). ``a`` is a compile-time constant
    # for columns and a loop variable for rows.

    @triton.jit
    def _down_cand(p, ok, n, a, one):
        """down() from length n, a = 0..4: source 2p - 2 + a, weight t_{a-2}."""
        i = 2 * p - 2 + a
        return i, _tap(a - 2, one), ok & (i >= 0) & (i < n)

    @triton.jit
    def _up_cand(p, ok, nc, n, FIX: tl.constexpr, a, one):
        """up(., n) from nc. The transposed convolution gives fine index q the taps 2 t_{q - 2i};
        with the size fix (FIX: n = 2 nc - 1) q runs over the bilinear sources i0 (weight
        1 - lam) and i1 (lam) of p in the 2 nc grid. Coarse candidates: i = p//2 - 1 + a
        (a = 0..2), or i0//2 - 1 + a (a = 0..3) with the fix."""
        if FIX:
            i0, i1, lam = _linear(p, 2 * nc, n, one)
            i = i0 // 2 - 1 + a
            w = 2.0 * ((1.0 - lam) * _tap(i0 - 2 * i, one) + lam * _tap(i1 - 2 * i, one))
        else:
            i = p // 2 - 1 + a
            w = 2.0 * _tap(p - 2 * i, one)
        return i, w, ok & (i >= 0) & (i < nc)

    @triton.jit
    def _up_adj_cand(i, ok, nc, nf, FIX: tl.constexpr, a, one):
        """Adjoint of up(., nf) from nc, gathered from the fine side: fine index s fed by coarse
        indices i. Without the fix: s = 2i - 2 + a (a = 0..4), weight 2 t_{s-2i}. With it
        (nf = 2 nc - 1, a downscale by 1 + 1/nf) the bilinear source of s is s (1 - lam) and
        s + 1 (lam), exactly in floating point for nf < 2^23, so s = 2i - 3 + a (a = 0..6)
        covers every contribution and lam repeats the forward's arithmetic."""
        if FIX:
            s = 2 * i - 3 + a
            sf = s.to(one.dtype)
            lam = (sf + 0.5) * (((2 * nc) * one) / (nf * one)) - 0.5 - sf
            w = 2.0 * ((1.0 - lam) * _tap(a - 3, one) + lam * _tap(a - 2, one))
        else:
            s = 2 * i - 2 + a
            w = 2.0 * _tap(a - 2, one)
        return s, w, ok & (s >= 0) & (s < nf)

    @triton.jit
    def _down_adj_cand(p, ok, nc, a, one):
        """Adjoint of down() to nc: coarse index i = p//2 - 1 + a (a = 0..2) whose window covers
        fine index p, weight t_{p - 2i}."""
        i = p // 2 - 1 + a
        return i, _tap(p - 2 * i, one), ok & (i >= 0) & (i < nc)

    @triton.jit
    def _resize_adj_cand(p, ok, n_full, n, a, one):
        """Adjoint of the bilinear resize n_full -> n, gathered at full-resolution indices p:
        candidate a (0..3) around the inverse map; the weight repeats the forward's arithmetic
        and keeps the share that lands on p, so no rounded inverse decides a match."""
        centre = (p.to(one.dtype) + 0.5) * ((n * one) / (n_full * one)) - 0.5  # >= -0.5
        i = (centre + 1.0).to(tl.int32) - 2 + a  # floor(centre) - 1 + a
        i0, i1, lam = _linear(i, n_full, n, one)
        v = ok & (i >= 0) & (i < n)
        w = tl.where(i0 == p, 1.0 - lam, 0.0) + tl.where(i1 == p, lam, 0.0)
        return i, tl.where(v, w, 0.0), v

    # Column tuples: every candidate of a gather at columns j as [1, BW] vectors (a weight
    # that does not depend on j stays a scalar).

    @triton.jit
    def _cols(idx, wgt, val, i, w, v):
        return idx + (i[None, :],), wgt + (w,), val + (v[None, :],)

    @triton.jit
    def _down_cols(j, ok, n, one):
        idx, wgt, val = (), (), ()
        for a in tl.static_range(5):
            i, w, v = _down_cand(j, ok, n, a, one)
            idx, wgt, val = _cols(idx, wgt, val, i, w, v)
        return idx, wgt, val

    @triton.jit
    def _up_cols(j, ok, nc, n, FIX: tl.constexpr, one):
        idx, wgt, val = (), (), ()
        for a in tl.static_range(3 + FIX):
            i, w, v = _up_cand(j, ok, nc, n, FIX, a, one)
            idx, wgt, val = _cols(idx, wgt, val, i, w[None, :], v)
        return idx, wgt, val

    @triton.jit
    def _up_adj_cols(j, ok, nc, nf, FIX: tl.constexpr, one):
        idx, wgt, val = (), (), ()
        for a in tl.static_range(5 + 2 * FIX):
            i, w, v = _up_adj_cand(j, ok, nc, nf, FIX, a, one)
            if FIX:
                w = w[None, :]
            idx, wgt, val = _cols(idx, wgt, val, i, w, v)
        return idx, wgt, val

    @triton.jit
    def _down_adj_cols(j, ok, nc, one):
        idx, wgt, val = (), (), ()
        for a in tl.static_range(3):
            i, w, v = _down_adj_cand(j, ok, nc, a, one)
            idx, wgt, val = _cols(idx, wgt, val, i, w[None, :], v)
        return idx, wgt, val

    @triton.jit
    def _resize_adj_cols(j, ok, n_full, n, one):
        idx, wgt, val = (), (), ()
        for a in tl.static_range(4):
            i, w, v = _resize_adj_cand(j, ok, n_full, n, a, one)
            idx, wgt, val = _cols(idx, wgt, val, i, w[None, :], v)
        return idx, wgt, val

    @triton.jit
    def _gather_row(ptr, row, ci, cw, cv, rv, N: tl.constexpr, one):
        """sum_e cw[e] * ptr[row + ci[e]] over one candidate row: ``row`` [BH, 1] offsets, ``rv``
        [BH, 1] its mask, ci/cw/cv the column tuples (N candidates)."""
        p = ptr + row
        acc = tl.zeros([row.shape[0], ci[0].shape[1]], dtype=one.dtype)
        for e in tl.static_range(N):
            acc += cw[e] * tl.load(p + ci[e], mask=rv & cv[e], other=0.0).to(one.dtype)
        return acc

    @triton.jit
    def _bilinear_at(mu_ptr, rbase, r, j, H0, W0, h, w, smh, smw, one):
        """mu (H0 x W0) resized bilinearly (align_corners=False) to h x w, at rows r (with
        per-row plane offsets rbase) and columns j. Source indices are clamped into range, so
        no mask is needed."""
        r0, r1, lr = _linear(r, H0, h, one)
        c0, c1, lc = _linear(j, W0, w, one)
        p0 = mu_ptr + (rbase + r0 * smh)[:, None]
        p1 = mu_ptr + (rbase + r1 * smh)[:, None]
        o0 = (c0 * smw)[None, :]
        o1 = (c1 * smw)[None, :]
        lr = lr[:, None]
        lc = lc[None, :]
        top = (1.0 - lc) * tl.load(p0 + o0).to(one.dtype) + lc * tl.load(p0 + o1).to(one.dtype)
        bot = (1.0 - lc) * tl.load(p1 + o0).to(one.dtype) + lc * tl.load(p1 + o1).to(one.dtype)
        return (1.0 - lr) * top + lr * bot

    @triton.jit
    def _tile(nrows, h, w, BH: tl.constexpr, BW: tl.constexpr):
        """This program's (BH x BW) tile over ``nrows`` stacked rows of planes h rows high and w
        wide: (g, okr, plane, r, j, okc). Rows past the end alias the last one (stores are masked)."""
        g = tl.program_id(0) * BH + tl.arange(0, BH)
        gc = tl.minimum(g, nrows - 1)
        plane = gc // h
        j = tl.program_id(1) * BW + tl.arange(0, BW)
        return g, g < nrows, plane, gc - plane * h, j, j < w

    # ------------------------------------------------------------------------------------------
    # Forward kernels (rows over all B*C planes of the output level)

    @triton.jit
    def _down_kernel(
        x_ptr, x2_ptr, y_ptr, mu_ptr, r_ptr,
        C, h, w, ho, wo, H0, W0, nrows,
        sxb, sxc, sxh, sxw, s2b, s2c, s2h, s2w, smb, smh, smw,
        SUB: tl.constexpr, BLEND: tl.constexpr, ACC64: tl.constexpr,
        BH: tl.constexpr, BW: tl.constexpr,
    ):
        """G_{k+1} = down(G_k): y (ho x wo planes, contiguous) = 5x5 blur of x (h x w, strided),
        zero padding, stride 2 — separable, one pass.

        SUB: the source is x - x2 (level 0: D = ir - vis, each through its own strides).
        BLEND: also write r = mu_{k+1} * G_{k+1} (the top of the blended pyramid)."""
        one = _one(ACC64)
        g, okr, plane, r, j, okc = _tile(nrows, ho, wo, BH, BW)
        b = (plane // C).to(tl.int64)
        c = plane.to(tl.int64) - b * C
        ci, cw, cv = _down_cols(j, okc, w, one)
        cx = ()
        c2 = ()
        for e in tl.static_range(5):
            cx = cx + (ci[e] * sxw,)
            c2 = c2 + (ci[e] * s2w,)
        xrow = b * sxb + c * sxc
        x2row = b * s2b + c * s2c
        acc = tl.zeros([BH, BW], dtype=one.dtype)
        for a in range(5):
            ri, rw, rv = _down_cand(r, okr, h, a, one)
            xr = x_ptr + (xrow + ri * sxh)[:, None]
            x2r = x2_ptr + (x2row + ri * s2h)[:, None]
            racc = tl.zeros([BH, BW], dtype=one.dtype)
            for e in tl.static_range(5):
                m = rv[:, None] & cv[e]
                v = tl.load(xr + cx[e], mask=m, other=0.0).to(one.dtype)
                if SUB:  # D = ir - vis per tap, as the reference forms it
                    v = v - tl.load(x2r + c2[e], mask=m, other=0.0).to(one.dtype)
                racc += cw[e] * v
            acc += rw * racc
        om = okr[:, None] & okc[None, :]
        off = (g.to(tl.int64) * wo)[:, None] + j[None, :]
        tl.store(y_ptr + off, acc, mask=om)
        if BLEND:
            mk = _bilinear_at(mu_ptr, b * smb, r, j, H0, W0, ho, wo, smh, smw, one)
            tl.store(r_ptr + off, mk * acc, mask=om)

    @triton.jit
    def _up_blend_kernel(
        r_ptr, g_ptr, gk_ptr, vis_ptr, mu_ptr, out_ptr,
        C, ch, cw, h, w, H0, W0, nrows,
        skb, skc, skh, skw, svb, svc, svh, svw, smb, smh, smw,
        FIRST: tl.constexpr, FIX_H: tl.constexpr, FIX_W: tl.constexpr, ACC64: tl.constexpr,
        BH: tl.constexpr, BW: tl.constexpr,
    ):
        """R_k = up(R_{k+1}) + mu_k * (G_k - up(G_{k+1})) on level k (h x w): both ups with the
        size fix, the Laplacian, mu_k and the blend in one gather pass.

        r_ptr, g_ptr: level k+1 (ch x cw planes, contiguous) of the blended and Gaussian
        pyramids; gk_ptr: G_k through strides. FIRST (k = 0): G_0 = gk - vis = ir - vis,
        mu_0 = mu, and vis + R_0 goes to out_ptr in its dtype; otherwise mu_k is the bilinear
        resize of mu and R_k goes to out_ptr (contiguous)."""
        one = _one(ACC64)
        g, okr, plane, r, j, okc = _tile(nrows, h, w, BH, BW)
        b = (plane // C).to(tl.int64)
        c = plane.to(tl.int64) - b * C
        ci, cwt, cv = _up_cols(j, okc, cw, w, FIX_W, one)
        cbase = plane.to(tl.int64) * ch * cw
        acc_r = tl.zeros([BH, BW], dtype=one.dtype)
        acc_g = tl.zeros([BH, BW], dtype=one.dtype)
        for a in range(3 + FIX_H):
            ri, rw, rv = _up_cand(r, okr, ch, h, FIX_H, a, one)
            row = (cbase + ri * cw)[:, None]
            acc_r += rw[:, None] * _gather_row(r_ptr, row, ci, cwt, cv, rv[:, None], 3 + FIX_W, one)
            acc_g += rw[:, None] * _gather_row(g_ptr, row, ci, cwt, cv, rv[:, None], 3 + FIX_W, one)
        om = okr[:, None] & okc[None, :]
        gk = tl.load(gk_ptr + (b * skb + c * skc + r * skh)[:, None] + (j * skw)[None, :],
                     mask=om, other=0.0).to(one.dtype)
        if FIRST:
            vis = tl.load(vis_ptr + (b * svb + c * svc + r * svh)[:, None] + (j * svw)[None, :],
                          mask=om, other=0.0).to(one.dtype)
            mk = tl.load(mu_ptr + (b * smb + r * smh)[:, None] + (j * smw)[None, :],
                         mask=om, other=0.0).to(one.dtype)
            res = vis + acc_r + mk * ((gk - vis) - acc_g)
        else:
            mk = _bilinear_at(mu_ptr, b * smb, r, j, H0, W0, h, w, smh, smw, one)
            res = acc_r + mk * (gk - acc_g)
        off = (g.to(tl.int64) * w)[:, None] + j[None, :]
        tl.store(out_ptr + off, res.to(out_ptr.dtype.element_ty), mask=om)

    # ------------------------------------------------------------------------------------------
    # Backward kernels

    @triton.jit
    def _up_adjoint_kernel(
        h_ptr, e_ptr, mu_ptr, ho_ptr, eo_ptr, so_ptr,
        C, hf, wf, h, w, H0, W0, nrows,
        shb, shc, shh, shw, smb, smh, smw,
        FIRST: tl.constexpr, FIX_H: tl.constexpr, FIX_W: tl.constexpr, ACC64: tl.constexpr,
        BH: tl.constexpr, BW: tl.constexpr,
    ):
        """Level k >= 1 of the fine-to-coarse backward pass (rows over all B*C planes):
        H_k = up^T(H_{k-1}), E_k = mu_k H_k, S_k = E_k - up^T(E_{k-1}).

        h_ptr / e_ptr: level k-1 (hf x wf), read through the same strides. FIRST (k = 1):
        H_0 = grad and E_0 = mu * grad is formed on the fly (e_ptr unused)."""
        one = _one(ACC64)
        g, okr, plane, r, j, okc = _tile(nrows, h, w, BH, BW)
        b = (plane // C).to(tl.int64)
        c = plane.to(tl.int64) - b * C
        sj, cwt, cv = _up_adj_cols(j, okc, w, wf, FIX_W, one)
        ch_ = ()
        cm = ()
        for e in tl.static_range(5 + 2 * FIX_W):
            ch_ = ch_ + (sj[e] * shw,)
            cm = cm + (sj[e] * smw,)
        hrow = b * shb + c * shc
        mrow = b * smb
        acc_h = tl.zeros([BH, BW], dtype=one.dtype)
        acc_e = tl.zeros([BH, BW], dtype=one.dtype)
        for a in range(5 + 2 * FIX_H):
            si, rw, rv = _up_adj_cand(r, okr, h, hf, FIX_H, a, one)
            if FIX_H:
                rw = rw[:, None]
            rv = rv[:, None]
            hrow_a = (hrow + si * shh)[:, None]
            if FIRST:  # E_0 = mu * grad, formed per tap
                hp = h_ptr + hrow_a
                mp = mu_ptr + (mrow + si * smh)[:, None]
                racc_h = tl.zeros([BH, BW], dtype=one.dtype)
                racc_e = tl.zeros([BH, BW], dtype=one.dtype)
                for e in tl.static_range(5 + 2 * FIX_W):
                    m = rv & cv[e]
                    hv = tl.load(hp + ch_[e], mask=m, other=0.0).to(one.dtype)
                    racc_h += cwt[e] * hv
                    racc_e += cwt[e] * (hv * tl.load(mp + cm[e], mask=m, other=0.0).to(one.dtype))
            else:
                racc_h = _gather_row(h_ptr, hrow_a, ch_, cwt, cv, rv, 5 + 2 * FIX_W, one)
                racc_e = _gather_row(e_ptr, hrow_a, ch_, cwt, cv, rv, 5 + 2 * FIX_W, one)
            acc_h += rw * racc_h
            acc_e += rw * racc_e
        mk = _bilinear_at(mu_ptr, b * smb, r, j, H0, W0, h, w, smh, smw, one)
        ek = mk * acc_h
        om = okr[:, None] & okc[None, :]
        off = (g.to(tl.int64) * w)[:, None] + j[None, :]
        tl.store(ho_ptr + off, acc_h, mask=om)
        tl.store(eo_ptr + off, ek, mask=om)
        tl.store(so_ptr + off, ek - acc_e, mask=om)

    @triton.jit
    def _down_adjoint_kernel(
        q_ptr, qc_ptr, g_ptr, gc_ptr, hk_ptr, m_ptr,
        C, h, w, ch, cw, nrows,
        TOP: tl.constexpr, FIX_H: tl.constexpr, FIX_W: tl.constexpr, ACC64: tl.constexpr,
        BH: tl.constexpr, BW: tl.constexpr,
    ):
        """Level k >= 1 of the coarse-to-fine backward pass (rows over the B images, a loop over
        channels): Q_k = S_k + down^T(Q_{k+1}) (in place: q_ptr holds S_k), and mu_k's
        gradient m_k = sum_c (G_k - up(G_{k+1})) * H_k. TOP (k = L): Q_L = S_L, L_L = G_L.
        All buffers contiguous; level k+1 (ch x cw planes) in qc_ptr, gc_ptr."""
        one = _one(ACC64)
        g, okr, b, r, j, okc = _tile(nrows, h, w, BH, BW)
        om = okr[:, None] & okc[None, :]
        mk = tl.zeros([BH, BW], dtype=one.dtype)
        # Loop-invariant column candidates are rebuilt per channel (disable_licm): kept live
        # across the loop they cost more registers than the integer work.
        for c in tl.range(C, disable_licm=True):
            plane = b.to(tl.int64) * C + c
            off = (plane * h + r)[:, None] * w + j[None, :]
            gv = tl.load(g_ptr + off, mask=om, other=0.0)
            if TOP:
                lap = gv
            else:
                cbase = plane * ch * cw
                qj, qcw, qcv = _down_adj_cols(j, okc, cw, one)
                uj, ucw, ucv = _up_cols(j, okc, cw, w, FIX_W, one)
                q = tl.load(q_ptr + off, mask=om, other=0.0)
                for a in range(3):
                    qi, qrw, qrv = _down_adj_cand(r, okr, ch, a, one)
                    q += qrw[:, None] * _gather_row(qc_ptr, (cbase + qi * cw)[:, None], qj, qcw, qcv,
                                                    qrv[:, None], 3, one)
                tl.store(q_ptr + off, q, mask=om)
                up_g = tl.zeros([BH, BW], dtype=one.dtype)
                for a in range(3 + FIX_H):
                    ui, urw, urv = _up_cand(r, okr, ch, h, FIX_H, a, one)
                    up_g += urw[:, None] * _gather_row(gc_ptr, (cbase + ui * cw)[:, None], uj, ucw, ucv,
                                                       urv[:, None], 3 + FIX_W, one)
                lap = gv - up_g
            mk += lap * tl.load(hk_ptr + off, mask=om, other=0.0)
        tl.store(m_ptr + (g.to(tl.int64) * w)[:, None] + j[None, :], mk, mask=om)

    @triton.jit
    def _final_kernel(
        grad_ptr, vis_ptr, ir_ptr, mu_ptr, q1_ptr, g1_ptr, m_ptr, gvis_ptr, gir_ptr, gmu_ptr,
        B, C, H, W, ch, cw,
        sgb, sgc, sgh, sgw, svb, svc, svh, svw, sib, sic, sih, siw, smb, smh, smw,
        LEVELS: tl.constexpr, IR_BCAST: tl.constexpr, FIX_H: tl.constexpr, FIX_W: tl.constexpr,
        ACC64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
    ):
        """Level 0 of the backward (rows over the B images, a loop over channels):
        Q_0 = mu * grad + down^T(Q_1); grad_vis = grad - Q_0; grad_ir = Q_0 (summed over
        channels when IR_BCAST; ir's channel stride is then 0); m_0 = sum_c (D - up(G_1)) grad
        and grad_mu = m_0 + sum_{k=1..LEVELS} resize_k^T(m_k). m_ptr packs m_1..m_L
        ((B, 1, h_k, w_k) each, contiguous, in order); the level sizes are recomputed here."""
        one = _one(ACC64)
        g, okr, b, r, j, okc = _tile(B * H, H, W, BH, BW)
        b = b.to(tl.int64)
        om = okr[:, None] & okc[None, :]
        mu = tl.load(mu_ptr + (b * smb + r * smh)[:, None] + (j * smw)[None, :], mask=om, other=0.0).to(one.dtype)
        m0 = tl.zeros([BH, BW], dtype=one.dtype)
        gir_sum = tl.zeros([BH, BW], dtype=one.dtype)
        # Loop-invariant offsets and column candidates are rebuilt per channel (disable_licm):
        # kept live across the loop they cost more registers than the integer work.
        for c in tl.range(C, disable_licm=True):
            qj, qcw, qcv = _down_adj_cols(j, okc, cw, one)
            uj, ucw, ucv = _up_cols(j, okc, cw, W, FIX_W, one)
            gv = tl.load(grad_ptr + (b * sgb + c * sgc + r * sgh)[:, None] + (j * sgw)[None, :],
                         mask=om, other=0.0).to(one.dtype)
            cbase = (b * C + c) * ch * cw
            q = mu * gv
            for a in range(3):
                qi, qrw, qrv = _down_adj_cand(r, okr, ch, a, one)
                q += qrw[:, None] * _gather_row(q1_ptr, (cbase + qi * cw)[:, None], qj, qcw, qcv,
                                                qrv[:, None], 3, one)
            up_g = tl.zeros([BH, BW], dtype=one.dtype)
            for a in range(3 + FIX_H):
                ui, urw, urv = _up_cand(r, okr, ch, H, FIX_H, a, one)
                up_g += urw[:, None] * _gather_row(g1_ptr, (cbase + ui * cw)[:, None], uj, ucw, ucv,
                                                   urv[:, None], 3 + FIX_W, one)
            v = tl.load(vis_ptr + (b * svb + c * svc + r * svh)[:, None] + (j * svw)[None, :],
                        mask=om, other=0.0).to(one.dtype)
            x = tl.load(ir_ptr + (b * sib + c * sic + r * sih)[:, None] + (j * siw)[None, :],
                        mask=om, other=0.0).to(one.dtype)
            m0 += ((x - v) - up_g) * gv
            out_off = ((b * C + c) * H + r)[:, None] * W + j[None, :]
            tl.store(gvis_ptr + out_off, (gv - q).to(gvis_ptr.dtype.element_ty), mask=om)
            if IR_BCAST:
                gir_sum += q
            else:
                tl.store(gir_ptr + out_off, q.to(gir_ptr.dtype.element_ty), mask=om)
        mrow = (b * H + r)[:, None] * W + j[None, :]
        if IR_BCAST:
            tl.store(gir_ptr + mrow, gir_sum.to(gir_ptr.dtype.element_ty), mask=om)
        # mu's gradient: the adjoint of every level's resize, gathered at full resolution (a
        # runtime loop over levels: unrolled, all levels' taps are in flight at once and the
        # kernel spills)
        hk = H
        wk = W
        lvl = b * 0  # int64 offset of level k in m_ptr
        for k in range(LEVELS):
            hk = (hk + 1) // 2
            wk = (wk + 1) // 2
            kj, kcw, kcv = _resize_adj_cols(j, okc, W, wk, one)
            kbase = lvl + b * hk * wk
            for a in range(4):
                ki, krw, krv = _resize_adj_cand(r, okr, H, hk, a, one)
                m0 += krw[:, None] * _gather_row(m_ptr, (kbase + ki * wk)[:, None], kj, kcw, kcv,
                                                 krv[:, None], 4, one)
            lvl += B * hk * wk
        tl.store(gmu_ptr + mrow, m0.to(gmu_ptr.dtype.element_ty), mask=om)


# ----------------------------------------------------------------------------------------------
# Host side


def _sizes(h: int, w: int, levels: int) -> list[tuple[int, int]]:
    """(h_k, w_k) of levels 0..levels (ceil halving)."""
    out = [(h, w)]
    for _ in range(levels):
        h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out


def _pack(buf: torch.Tensor, n: int, c: int, sizes) -> list[torch.Tensor]:
    """Views (n, c, h_k, w_k) of consecutive levels of a flat packed buffer."""
    views, off = [], 0
    for h, w in sizes:
        views.append(buf[off:off + n * c * h * w].view(n, c, h, w))
        off += n * c * h * w
    return views


def _numel(n: int, c: int, sizes) -> int:
    return sum(n * c * h * w for h, w in sizes)


# GPU: 256-element tiles, two elements per thread at 4 warps: every element a thread owns
# multiplies the registers its gathers hold (at 512 the heaviest kernels need over 100
# registers, at 256 at most about 80 on the paper's shapes; see benchmarks/resources.py).
_TILES = Tiling(256, 16384)


if triton is not None:
    from torch.library import triton_op, wrap_triton

    @triton_op("hfkernels::fuse_triton", mutates_args=())
    def fuse_triton_fwd(
        vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (out (B,C,H,W) in vis.dtype, packed G_1..G_L of ir - vis, saved for backward)."""
        n, c, h, w = vis.shape
        cdt = accumulation_dtype(vis)
        acc64 = cdt == torch.float64
        sizes = _sizes(h, w, levels)
        irx = ir.expand(n, c, h, w)  # channel stride 0 when ir broadcasts
        mst = (mu.stride(0), mu.stride(2), mu.stride(3))
        gbuf = torch.empty(_numel(n, c, sizes[1:]), dtype=cdt, device=vis.device)
        rbuf = torch.empty_like(gbuf)
        gl, rl = _pack(gbuf, n, c, sizes[1:]), _pack(rbuf, n, c, sizes[1:])
        out = torch.empty((n, c, h, w), dtype=vis.dtype, device=vis.device)
        for k in range(levels):  # G_{k+1} = down(G_k); R_L = mu_L G_L at the top
            src = irx if k == 0 else gl[k - 1]
            (hi, wi), (ho, wo) = sizes[k], sizes[k + 1]
            _TILES.launch(
                wrap_triton(_down_kernel), n * c * ho, wo,
                src, vis, gl[k], mu, rl[k],
                c, hi, wi, ho, wo, h, w, n * c * ho,
                *src.stride(), *vis.stride(), *mst,
                SUB=k == 0, BLEND=k == levels - 1, ACC64=acc64,
            )
        for k in reversed(range(levels)):  # R_k = up(R_{k+1}) + mu_k (G_k - up(G_{k+1}))
            (hk, wk), (hc, wc) = sizes[k], sizes[k + 1]
            gk = irx if k == 0 else gl[k - 1]
            _TILES.launch(
                wrap_triton(_up_blend_kernel), n * c * hk, wk,
                rl[k], gl[k], gk, vis, mu, out if k == 0 else rl[k - 1],
                c, hc, wc, hk, wk, h, w, n * c * hk,
                *gk.stride(), *vis.stride(), *mst,
                FIRST=k == 0, FIX_H=hk != 2 * hc, FIX_W=wk != 2 * wc, ACC64=acc64,
            )
        return out, gbuf

    @triton_op("hfkernels::fuse_triton_backward", mutates_args=())
    def fuse_triton_bwd(
        grad: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor,
        gbuf: torch.Tensor, levels: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients (vis, ir, mu) of fuse given d(loss)/d(out) = grad and the saved G_1..G_L."""
        n, c, h, w = vis.shape
        cir = ir.shape[1]
        acc64 = vis.dtype == torch.float64
        sizes = _sizes(h, w, levels)
        irx = ir.expand(n, c, h, w)
        mst = (mu.stride(0), mu.stride(2), mu.stride(3))
        gl = _pack(gbuf, n, c, sizes[1:])
        hl, el, sl = (_pack(torch.empty_like(gbuf), n, c, sizes[1:]) for _ in range(3))
        mbuf = torch.empty(_numel(n, 1, sizes[1:]), dtype=gbuf.dtype, device=vis.device)
        ml = _pack(mbuf, n, 1, sizes[1:])
        for k in range(1, levels + 1):  # H_k, E_k, S_k from level k-1
            (hf, wf), (hk, wk) = sizes[k - 1], sizes[k]
            hsrc = grad if k == 1 else hl[k - 2]
            esrc = grad if k == 1 else el[k - 2]
            _TILES.launch(
                wrap_triton(_up_adjoint_kernel), n * c * hk, wk,
                hsrc, esrc, mu, hl[k - 1], el[k - 1], sl[k - 1],
                c, hf, wf, hk, wk, h, w, n * c * hk,
                *hsrc.stride(), *mst,
                FIRST=k == 1, FIX_H=hf != 2 * hk, FIX_W=wf != 2 * wk, ACC64=acc64,
            )
        for k in range(levels, 0, -1):  # Q_k (over S_k) and m_k
            top = k == levels
            (hk, wk), (hc, wc) = sizes[k], sizes[min(k + 1, levels)]
            nxt = k if top else k + 1  # level k+1's buffers (unused at the top)
            _TILES.launch(
                wrap_triton(_down_adjoint_kernel), n * hk, wk,
                sl[k - 1], sl[nxt - 1], gl[k - 1], gl[nxt - 1], hl[k - 1], ml[k - 1],
                c, hk, wk, hc, wc, n * hk,
                TOP=top, FIX_H=(not top) and hk != 2 * hc, FIX_W=(not top) and wk != 2 * wc,
                ACC64=acc64,
            )
        gvis = torch.empty((n, c, h, w), dtype=vis.dtype, device=vis.device)
        gir = torch.empty((n, cir, h, w), dtype=ir.dtype, device=ir.device)
        gmu = torch.empty((n, 1, h, w), dtype=mu.dtype, device=mu.device)
        hc, wc = sizes[1]
        _TILES.launch(
            wrap_triton(_final_kernel), n * h, w,
            grad, vis, irx, mu, sl[0], gl[0], mbuf, gvis, gir, gmu,
            n, c, h, w, hc, wc,
            *grad.stride(), *vis.stride(), *irx.stride(), *mst,
            LEVELS=levels, IR_BCAST=cir == 1 and c > 1, FIX_H=h != 2 * hc, FIX_W=w != 2 * wc,
            ACC64=acc64,
        )
        return gvis, gir, gmu

    # Explicit fake: shapes only. triton_op would trace the body instead, which needs real
    # Triton kernels (under TRITON_INTERPRET=1 they would run).
    def _fake_fwd(vis, ir, mu, levels):
        n, c, h, w = vis.shape
        return vis.new_empty(vis.shape), vis.new_empty(_numel(n, c, _sizes(h, w, levels)[1:]), dtype=accumulation_dtype(vis))

    # the backward reads the inputs and the saved G_1..G_L: (grad, vis, ir, mu, gbuf, levels)
    wire(fuse_triton_fwd, tensors=3, kernel=fuse_triton_bwd, reference=fuse_reference_vjp, fake=_fake_fwd,
         backward_op=fuse_triton_bwd)

    @implements("fuse", "triton")
    def fuse_triton(vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int) -> torch.Tensor:
        """Pyramid fusion with the Triton kernels; shapes as :func:`hfkernels.fuse` (validated there)."""
        return fuse_triton_fwd(vis, ir, mu, levels)[0]
