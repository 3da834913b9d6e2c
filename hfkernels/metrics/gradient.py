"""Gradient metrics: Qabf, Nabf (edge transfer and artifacts), AG, SF. All on gray images 0..255.

Qabf (Xydeas & Petrovic): Sobel gx, gy (zero padding, same size; the released code's signs,
gx = left - right and gy = below - above, see :func:`sobel_xy`); strength g = sqrt(gx^2 + gy^2),
angle a = atan(gy / gx) (pi/2 where gx = 0). For a source S and the fused F:

    G_SF = gF / gS if gS > gF, gS / gF if gS < gF; where gS == gF: gF (paper) or 1 (standard)
    A_SF = 1 - |aS - aF| / (pi/2)
    Q_SF = 0.9994 / (1 + exp(-15 (G_SF - 0.5))) * 0.9879 / (1 + exp(-22 (A_SF - 0.8)))
    Qabf = sum(Q_AF gA + Q_BF gB) / sum(gA + gB)

The paper's ``gF where equal`` is the released code's quirk (the textbook ratio is 1 there).

Nabf (Kumar & Dass' modified fusion-artifact measure N_abf^m), from the same Q_SF and strengths:

    Nabf = sum(AM ((1 - Q_AF) gA + (1 - Q_BF) gB)) / sum(gA + gB),  AM = [gF > gA and gF > gB]

Both are means of per-pixel scores weighted by the source strengths gA, gB. Where the sources
have no edge at all (gA + gB = 0 everywhere, e.g. both all-zero) the weights are taken equal:
Qabf = mean(Q_AF + Q_BF) / 2, Nabf = mean(AM ((1 - Q_AF) + (1 - Q_BF))) / 2 -- the plain mean,
which a weighted mean with vanishing weights has no better value for. So an F without edges
scores Nabf = 0, and one that adds edges to edge-free sources scores the fraction of pixels
where it does. (Constant non-zero images have edges at the zero-padded border.)

AG (average gradient), forward differences over the (H-1) x (W-1) pixels that have both:
    AG = mean(sqrt(((F[i+1,j] - F[i,j])^2 + (F[i,j+1] - F[i,j])^2) / 2))
SF (spatial frequency): SF = sqrt(RF^2 + CF^2), RF^2 = mean over horizontal neighbours of
    (F[i,j+1] - F[i,j])^2, CF^2 = the same over vertical neighbours.
An image one pixel high (or wide) has no vertical (horizontal) neighbours: that difference is
taken as 0 (RF^2 or CF^2 = 0; AG over the W-1 (H-1) pixels with the other difference), and a 1x1
image has SF = AG = 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._prep import Prepared

_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8


def sobel_xy(x: torch.Tensor):
    """Sobel gx, gy of (B, C, H, W) with zero padding; each (B, C, H, W).

    The signs follow the released evaluation (MATLAB ``conv2`` with the usual Sobel kernels, one
    of which it flips): gx = left - right and gy = below - above, each column/row weighted 1-2-1.
    They matter: the angle is atan(gy / gx) but pi/2 where gx == 0, and with the opposite
    relative sign such pixels compare against angles of the wrong sign (Qabf off by ~1e-4 on
    real images). Separable, by shifted slices: a 3x3 ``conv2d`` is several times slower on
    CPUs. Exact for integer levels in float32 (all partial sums are small integers)."""
    xp = F.pad(x, (1, 1, 1, 1))
    dx = xp[..., :, :-2] - xp[..., :, 2:]  # (B, C, H+2, W): left - right
    sy = xp[..., :, 2:] + xp[..., :, :-2]
    sy += 2.0 * xp[..., :, 1:-1]  # (B, C, H+2, W): horizontal [1, 2, 1]
    gx = dx[..., :-2, :] + dx[..., 2:, :]
    gx += 2.0 * dx[..., 1:-1, :]
    gy = sy[..., 2:, :] - sy[..., :-2, :]  # below - above
    return gx, gy


#: |gx| at or below this counts as gx == 0 for the angle. The Sobel response of level-exact
#: images is an integer; 8-bit data that reached us with float rounding (e.g. float32 v/255 cast
#: to float64 and scaled) leaves |gx| ~ 1e-5 where it should be 0, and the angle would then be
#: -pi/2 instead of the protocol's pi/2 -- a jump, not a rounding error.
GX_ZERO = 1e-3


def strength_angle(gx: torch.Tensor, gy: torch.Tensor):
    g = torch.addcmul(gx * gx, gy, gy).sqrt_()
    zero = gx.abs() <= GX_ZERO
    a = torch.div(gy, gx.masked_fill(zero, 1.0)).atan_().masked_fill_(zero, math.pi / 2)
    return g, a


def edge_preservation(gs, as_, gf, af, protocol: str) -> torch.Tensor:
    """Per-pixel Q_SF (broadcast shape of the inputs)."""
    # min/max is the ratio of either branch; where gS == gF (both 0 included, where min/max is
    # 0/0) the protocol's value replaces it
    g_sf = torch.minimum(gs, gf).div_(torch.maximum(gs, gf))
    g_sf = torch.where(gs == gf, gf if protocol == "paper" else 1.0, g_sf)
    # _TG / (1 + exp(_KG (G - _DG))) * _TA / (1 + exp(_KA (A - _DA))), A = 1 - |aS - aF| / (pi/2)
    qg = g_sf.sub_(_DG).mul_(_KG).exp_().add_(1.0)
    a_sf = (as_ - af).abs_().mul_(-1.0 / (math.pi / 2)).add_(1.0 - _DA)
    qa = a_sf.mul_(_KA).exp_().add_(1.0)
    return qg.mul_(qa).reciprocal_().mul_(_TG * _TA)


def _sobel(x: Prepared):
    """Sobel gx, gy of gray A, B, F, each (B, 3, H, W), built once per batch."""
    if "sobel" not in x.cache:  # shared by Qabf and Nabf
        x.cache["sobel"] = sobel_xy(torch.cat([x.ga, x.gb, x.gf], dim=1))
    return x.cache["sobel"]


def _q_maps(x: Prepared):
    if "q_maps" not in x.cache:  # shared by Qabf and Nabf
        x.cache["q_maps"] = _compute_q_maps(x)
    return x.cache["q_maps"]


def _compute_q_maps(x: Prepared):
    """Strengths g (B, 3, H, W) of A, B, F and the weighted Q_SF * gS (B, 2, H, W) of A, B."""
    gx, gy = _sobel(x)  # (B, 3, H, W): A, B, F
    g, a = strength_angle(gx, gy)
    q = edge_preservation(g[:, :2], a[:, :2], g[:, 2:], a[:, 2:], x.protocol)  # (B, 2, H, W)
    return g, q.mul_(g[:, :2])


def _equal_weight_q(x: Prepared, idx: torch.Tensor):
    """For the images ``idx`` (whose sources have no edges): Q_SF (n, 2, H, W) unweighted, and
    the strengths g (n, 3, H, W)."""
    gx, gy = _sobel(x)
    g, a = strength_angle(gx[idx], gy[idx])
    return edge_preservation(g[:, :2], a[:, :2], g[:, 2:], a[:, 2:], x.protocol), g


def qabf_prepared(x: Prepared) -> torch.Tensor:
    g, qg = _q_maps(x)
    den = g[:, :2].sum(dim=(1, 2, 3), dtype=torch.float64)
    out = qg.sum(dim=(1, 2, 3), dtype=torch.float64) / den
    none = (den == 0).nonzero().flatten()
    if none.numel():  # no source edges: equal weights (module docstring)
        q, _ = _equal_weight_q(x, none)
        out[none] = q.mean(dim=(1, 2, 3), dtype=torch.float64)
    return out


def nabf_prepared(x: Prepared) -> torch.Tensor:
    g, qg = _q_maps(x)
    gs, gf = g[:, :2], g[:, 2:]
    am = (gf > gs).all(dim=1, keepdim=True)
    art = torch.where(am, gs - qg, 0.0)  # (1 - Q_SF) gS where F's edge beats both sources'
    den = gs.sum(dim=(1, 2, 3), dtype=torch.float64)
    out = art.sum(dim=(1, 2, 3), dtype=torch.float64) / den
    none = (den == 0).nonzero().flatten()
    if none.numel():  # no source edges: equal weights (module docstring)
        q, gn = _equal_weight_q(x, none)
        amn = (gn[:, 2:] > gn[:, :2]).all(dim=1, keepdim=True)
        out[none] = torch.where(amn, 1.0 - q, 0.0).mean(dim=(1, 2, 3), dtype=torch.float64)
    return out


def _neighbour_differences(f: torch.Tensor):
    """Forward differences (dx, dy) of f (B, C, H, W) over the pixels that have both neighbours,
    each (B, C, max(H-1, 1), max(W-1, 1)); a missing direction (H or W = 1) gives zeros."""
    h, w = f.shape[-2:]
    rows, cols = max(h - 1, 1), max(w - 1, 1)
    zero = f.new_zeros(*f.shape[:-2], rows, cols)
    dx = f[..., :rows, 1:] - f[..., :rows, :-1] if w > 1 else zero
    dy = f[..., 1:, :cols] - f[..., :-1, :cols] if h > 1 else zero
    return dx, dy


def ag_prepared(x: Prepared) -> torch.Tensor:
    dx, dy = _neighbour_differences(x.gf)
    return torch.sqrt((dx * dx + dy * dy) / 2.0).mean(dim=(1, 2, 3), dtype=torch.float64)


def sf_prepared(x: Prepared) -> torch.Tensor:
    f = x.gf
    h, w = f.shape[-2:]
    zero = f.new_zeros(f.shape[0], dtype=torch.float64)
    dx = f[..., :, 1:] - f[..., :, :-1]
    dy = f[..., 1:, :] - f[..., :-1, :]
    # an image one pixel high (wide) has no vertical (horizontal) neighbours: that term is 0
    rf2 = (dx * dx).mean(dim=(1, 2, 3), dtype=torch.float64) if w > 1 else zero
    cf2 = (dy * dy).mean(dim=(1, 2, 3), dtype=torch.float64) if h > 1 else zero
    return torch.sqrt(rf2 + cf2)


# ---------------------------------------------------------------------------- row-band sums
# The metrics above as sums over a band of rows, which add up over bands to the same values
# (hfkernels.metrics.tiled): every term is per pixel, with a reach of one row (Sobel, forward
# differences), so a band needs one row of context above and below.


def edge_sums(g3: torch.Tensor, top: int, rows: int, protocol: str) -> torch.Tensor:
    """Qabf/Nabf sums over rows ``top .. top + rows - 1`` of a band.

    Args:
        g3: (B, 3, h, W) gray A, B, F (0..255) of the band with its context: a row above and
            below the counted rows unless the band ends at the image's border there.
    Returns:
        (B, 5) float64: sum of Q_SF gS, of gS, of the artifact terms (1 - Q_SF) gS [AM], and the
        unweighted sums of Q_SF and of (1 - Q_SF) [AM] for the equal-weight case (see
        :func:`edge_from_sums`).
    """
    gx, gy = sobel_xy(g3)
    g, a = strength_angle(gx[..., top:top + rows, :], gy[..., top:top + rows, :])
    gs, gf = g[:, :2], g[:, 2:]
    q = edge_preservation(gs, a[:, :2], gf, a[:, 2:], protocol)
    am = (gf > gs).all(dim=1, keepdim=True)
    dims = dict(dim=(1, 2, 3), dtype=torch.float64)
    q_sum, art_eq = q.sum(**dims), torch.where(am, 1.0 - q, 0.0).sum(**dims)
    qg = q.mul_(gs)  # the same operations as qabf_prepared / nabf_prepared, pixel for pixel
    art = torch.where(am, gs - qg, 0.0)
    return torch.stack([qg.sum(**dims), gs.sum(**dims), art.sum(**dims), q_sum, art_eq], dim=1)


def edge_from_sums(s: torch.Tensor, pixels: int):
    """(Qabf, Nabf), each (B,), from :func:`edge_sums` added over an image of ``pixels`` pixels;
    equal weights where the sources have no edges (module docstring)."""
    den = s[:, 1]
    none = den == 0
    qabf = torch.where(none, s[:, 3] / (2 * pixels), s[:, 0] / den)
    nabf = torch.where(none, s[:, 4] / (2 * pixels), s[:, 2] / den)
    return qabf, nabf


def sf_ag_sums(e: torch.Tensor, rows: int) -> torch.Tensor:
    """SF and AG sums over the first ``rows`` rows of e (B, 1, h, W), gray F of a band with the
    row below it (h = rows + 1) unless the band ends at the image's bottom (h = rows).

    Returns (B, 3) float64: the sums of squared horizontal differences within the rows, of squared
    vertical differences to the next row, and of the AG terms (see :func:`sf_ag_from_sums`).
    """
    dims = dict(dim=(1, 2, 3), dtype=torch.float64)
    zero = e.new_zeros(e.shape[0], dtype=torch.float64)
    h, w = e.shape[-2:]
    dx = e[..., :rows, 1:] - e[..., :rows, :-1]
    dy = e[..., 1:, :] - e[..., :-1, :]
    rf = (dx * dx).sum(**dims) if w > 1 else zero
    cf = (dy * dy).sum(**dims) if h > 1 else zero
    if h > 1:  # the bottom row of the image has no AG term
        dx, dy = _neighbour_differences(e)
        ag = torch.sqrt((dx * dx + dy * dy) / 2.0).sum(**dims)
    else:
        ag = zero
    return torch.stack([rf, cf, ag], dim=1)


def sf_ag_from_sums(s: torch.Tensor, h: int, w: int):
    """(SF, AG), each (B,), from :func:`sf_ag_sums` added over an h x w image with h >= 2."""
    rf2 = s[:, 0] / (h * (w - 1)) if w > 1 else torch.zeros_like(s[:, 0])
    sf = torch.sqrt(rf2 + s[:, 1] / ((h - 1) * w))
    return sf, s[:, 2] / ((h - 1) * max(w - 1, 1))
