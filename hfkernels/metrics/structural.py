"""Structural metrics on gray images 0..255, in float64: SSIM, SCD and CC.

- SSIM = SSIM(gray A, gray F) + SSIM(gray B, gray F): 11x11 Gaussian window (sigma 1.5), valid
  region, unclamped variances. ``paper`` uses C1 = 0.01^2, C2 = 0.03^2 (what the released code's
  double scaling by 255 amounts to), ``standard`` (0.01 * 255)^2 and (0.03 * 255)^2.
- CC = (r(A, F) + r(B, F)) / 2 and SCD = r(F - B, A) + r(F - A, B), Pearson correlations over
  all pixels, from the 3x3 covariance matrix of A, B, F; 0 where a factor has no variance.

Derivations and the degenerate-input rules: docs/design.md, sections 8.2, 8.5 and 8.7.
"""
from __future__ import annotations

import torch

from ..core.filters import filter_valid_sums, matlab_gaussian
from ._prep import MetricUnavailable, Prepared

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def ssim_constants(protocol: str):
    if protocol == "paper":
        return 0.01**2, 0.03**2
    return (0.01 * 255) ** 2, (0.03 * 255) ** 2


def ssim_pairs(maps: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """Mean SSIM of A and of B against F.

    Args:
        maps: (B, 8, H, W) float64 [A, B, F, A^2, B^2, F^2, AF, BF] (``Prepared.moment_maps``),
            H, W >= 11.
    Returns:
        (B, 2) float64.
    """
    return ssim_map(maps, c1, c2).mean(dim=(-3, -2, -1))


def ssim_map(maps: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """The SSIM maps of A and B against F over the valid (H - 10) x (W - 10) windows of ``maps``
    (as in :func:`ssim_pairs`), (B, 2, ...) in a blocked layout: only for sums and means."""
    taps = matlab_gaussian(SSIM_WINDOW, SSIM_SIGMA, dtype=maps.dtype, device=maps.device)
    m = filter_valid_sums(maps, taps)  # blocked layout: fine for elementwise maths and a mean
    mu, sq, cross = m[:, :3], m[:, 3:6], m[:, 6:8]
    mx, my = mu[:, :2], mu[:, 2:]
    mm = mu * mu
    var = sq - mm  # sx^2, sy^2 (not clamped, as the released code)
    sxy = torch.addcmul(cross, mx, my, value=-1.0)
    num = (mx * my).mul_(2.0).add_(c1).mul_(sxy.mul_(2.0).add_(c2))
    den = (mm[:, :2] + mm[:, 2:]).add_(c1).mul_((var[:, :2] + var[:, 2:]).add_(c2))
    return num.div_(den)


def check_ssim_size(h: int, w: int) -> None:
    if min(h, w) < SSIM_WINDOW:
        raise MetricUnavailable(f"SSIM needs images of at least 11x11 pixels, got {w}x{h}")


def ssim_prepared(x: Prepared) -> torch.Tensor:
    check_ssim_size(*x.gray64.shape[-2:])
    return ssim_pairs(x.moment_maps, *ssim_constants(x.protocol)).sum(dim=1)


#: N var(X) at or below this fraction of sum(X^2) counts as no variance (docs/design.md, section 8.7)
FLAT = 1e-12


def _covariances(x: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, 3) float64 N * covariance matrix of gray A, B, F (N = pixels per image), and the
    (B, 3, 3) raw sums of products it comes from (for the no-variance tolerance).

    From the sums of ``Prepared.moment_maps`` (shared with VIF and SSIM) plus sum(A B): one
    reduction instead of centred copies. The sums are exact for integer levels (< 2^53); for
    other values the cancellation in ``S_xy - S_x S_y / N`` costs ~1e-12 relative, far below
    the metrics' precision.
    """
    if "cov" not in x.cache:
        g = x.gray64
        x.cache["cov"] = covariances(moment_sums(g, x.moment_maps), g.shape[-2] * g.shape[-1])
    return x.cache["cov"]


def moment_sums(g: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """(B, 9) float64 sums of A, B, F, AA, BB, FF, AF, BF, AB: what CC and SCD need (row bands
    add up), from g (B, 3, H, W) gray A, B, F (``Prepared.gray64``) and its ``moment_maps``."""
    sab = torch.einsum("bhw,bhw->b", g[:, 0], g[:, 1])
    return torch.cat([maps.sum(dim=(-2, -1)), sab[:, None]], dim=1)


def covariances(sums: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N * covariance, raw sums of products), each (B, 3, 3), from :func:`moment_sums` over N
    pixels (see :func:`_covariances`)."""
    s, sab = sums[:, :8], sums[:, 8]
    m = torch.empty(s.shape[0], 3, 3, dtype=s.dtype, device=s.device)
    m[:, [0, 1, 2], [0, 1, 2]] = s[:, 3:6]
    m[:, 0, 2] = m[:, 2, 0] = s[:, 6]
    m[:, 1, 2] = m[:, 2, 1] = s[:, 7]
    m[:, 0, 1] = m[:, 1, 0] = sab
    return m - s[:, :3, None] * s[:, None, :3] / n, m


def _corr(cxy, cxx, cyy, sxx, syy) -> torch.Tensor:
    """Pearson r from N-scaled (co)variances; 0 where X or Y has no variance (cxx <= FLAT sxx,
    sxx the raw sum of squares)."""
    flat = (cxx <= FLAT * sxx) | (cyy <= FLAT * syy)
    r = cxy / torch.sqrt(cxx.clamp_min(0) * cyy.clamp_min(0)).clamp_min(1e-300)
    return torch.where(flat, 0.0, r.clamp(-1.0, 1.0))


def cc_prepared(x: Prepared) -> torch.Tensor:
    return cc_from_covariances(*_covariances(x))


def scd_prepared(x: Prepared) -> torch.Tensor:
    return scd_from_covariances(*_covariances(x))


def cc_from_covariances(c: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """CC (B,) from :func:`covariances`."""
    caa, cbb, cff = c[:, 0, 0], c[:, 1, 1], c[:, 2, 2]
    saa, sbb, sff = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    return (_corr(c[:, 0, 2], caa, cff, saa, sff) + _corr(c[:, 1, 2], cbb, cff, sbb, sff)) / 2


def scd_from_covariances(c: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """SCD (B,) from :func:`covariances`."""
    caa, cbb, cff = c[:, 0, 0], c[:, 1, 1], c[:, 2, 2]
    cab, caf, cbf = c[:, 0, 1], c[:, 0, 2], c[:, 1, 2]
    saa, sbb, sff = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    # r(F - B, A) + r(F - A, B), by bilinearity of the covariance; sum((F - B)^2) <= 2 (FF + BB)
    r1 = _corr(caf - cab, cff + cbb - 2 * cbf, caa, 2 * (sff + sbb), saa)
    r2 = _corr(cbf - cab, cff + caa - 2 * caf, cbb, 2 * (sff + saa), sbb)
    return r1 + r2
