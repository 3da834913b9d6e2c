"""VIF: multi-scale pixel-domain visual information fidelity (``vifp_mscale``), in float64.

``VIF = VIF(gray A, gray F) + VIF(gray B, gray F)``, the same in both protocols, over four
scales with Gaussian windows of 17, 9, 5 and 3 taps and noise variance 2. The threshold cascade,
why it runs in float64, and the value 1 for a source without texture (where the formula is
0/0) are in docs/design.md, sections 8.3 and 8.7.
"""
from __future__ import annotations

import torch

from ..core.filters import filter_valid, filter_valid_sums, matlab_gaussian
from ._prep import MetricUnavailable, Prepared, moment_maps

EPS = 1e-10
SIGMA_NSQ = 2.0
SCALES = (1, 2, 3, 4)


def window_size(scale: int) -> int:
    """Taps of scale 1..4's Gaussian window: 17, 9, 5, 3."""
    return 2 ** (5 - scale) + 1


def window(scale: int, x: torch.Tensor) -> torch.Tensor:
    """The 1-D taps of scale ``scale``'s Gaussian window (sigma = taps / 5), in x's dtype and device."""
    n = window_size(scale)
    return matlab_gaussian(n, n / 5.0, dtype=x.dtype, device=x.device)


def downsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Scale ``scale`` - 1's images -> scale ``scale``'s: filter with that scale's window, then
    keep every second row and column; (..., (H - n) // 2 + 1, (W - n) // 2 + 1)."""
    x = filter_valid(x, window(scale, x), stride=2)
    if x.stride(-1) != 1:
        # filter_valid stores its result transposed; VIF's sums do not depend on the
        # orientation, and building the maps from a transposed view would be slow
        x = x.transpose(-2, -1)
    return x


def scale_terms(x: torch.Tensor, scale: int, maps: torch.Tensor | None = None):
    """Numerator and denominator sums of VIF(A, F) and VIF(B, F) at one scale.

    Args:
        x: (B, 3, H, W) float64 gray A, B, F at that scale, H, W >= the window.
        maps: optionally ``moment_maps(x)``, already built (shared with SSIM).
    Returns:
        (num, den), each (B, 2) float64: sums over the valid windows, so those of row bands
        that overlap by the window less one row add up.
    """
    # local moments, in a layout good only for the elementwise maths and sums below
    m = filter_valid_sums(moment_maps(x) if maps is None else maps, window(scale, x))
    mu, sq, cross = m[:, :3], m[:, 3:6], m[:, 6:8]
    s = torch.addcmul(sq, mu, mu, value=-1.0).clamp_min_(0)  # variances of A, B, F
    s1, s2 = s[:, :2], s[:, 2:]
    s12 = torch.addcmul(cross, mu[:, :2], mu[:, 2:], value=-1.0)
    flat1 = s1 < EPS
    g = s12 / (s1 + EPS)
    # the threshold cascade above, in fewer full-size passes: g is zeroed where s1 or s2 is
    # below EPS or g < 0, and a zero g contributes log10(1) = 0 whatever sv is
    g.masked_fill_(flat1 | (s2 < EPS) | (g < 0), 0.0)
    sv = torch.addcmul(s2, g, s12, value=-1.0).clamp_min_(EPS).add_(SIGMA_NSQ)
    t = (g * g).mul_(s1).div_(sv).add_(1.0).log10_()
    num = t.sum(dim=(-3, -2, -1))
    den = s1.masked_fill(flat1, 0.0).div_(SIGMA_NSQ).add_(1.0).log10_().sum(dim=(-3, -2, -1))
    return num, den


def vif_terms(x: torch.Tensor, maps: torch.Tensor | None = None):
    """Numerator and denominator sums of VIF(A, F) and VIF(B, F) over the four scales.

    Args:
        x: (B, 3, H, W) float64 gray A, B, F.
        maps: optionally ``moment_maps(x)``, already built (shared with SSIM).
    Returns:
        (num, den), each (B, 2) float64.
    """
    num = x.new_zeros(x.shape[0], 2)
    den = x.new_zeros(x.shape[0], 2)
    for scale in SCALES:
        if scale > 1:
            x, maps = downsample(x, scale), None
        n, d = scale_terms(x, scale, maps)
        num += n
        den += d
    return num, den


def vif_from_terms(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """VIF (B,) from :func:`vif_terms`' (B, 2) sums."""
    # den == 0 only for a source without texture, where num == 0 as well (docs/design.md, 8.7)
    # (== 0, not <= 0: anything else, NaN included, must show through)
    return torch.where(den == 0, 1.0, num / den).sum(dim=1)


#: smallest height/width for which all four scales have a full window
MIN_SIZE = 41


def check_size(h: int, w: int) -> None:
    if min(h, w) < MIN_SIZE:
        raise MetricUnavailable(
            f"VIF needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels (four scales of 'valid' "
            f"windows), got {w}x{h}"
        )


def vif_prepared(x: Prepared) -> torch.Tensor:
    g = x.gray64
    check_size(*g.shape[-2:])
    return vif_from_terms(*vif_terms(g, x.moment_maps))
