"""Histogram metrics, batched with ``bincount``: EN (entropy) and MI (mutual information).

- EN: entropy of a 256-bin histogram of F (paper: all channels, truncated levels,
  ``-sum p log2(p + 1e-7)``; standard: gray F, rounded levels, non-empty bins).
- MI = MI(gray A, gray F) + MI(gray B, gray F) in bits, from 256x256 joint histograms.

Protocol details: docs/design.md, sections 8.1 and 8.2.
"""
from __future__ import annotations

import torch

from ._prep import Prepared, quantised

BINS = 256


def histogram(lv: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Per-row histogram: (R, N) int64 levels in [0, bins) -> (R, bins) float64 counts."""
    r = lv.shape[0]
    off = torch.arange(r, device=lv.device, dtype=torch.int64)[:, None] * bins
    return torch.bincount((lv + off).reshape(-1), minlength=r * bins).reshape(r, bins).double()


def joint_histogram(x: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Per-row joint histogram of two (R, N) level tensors -> (R, bins, bins) float64 counts."""
    return histogram(x * bins + y, bins * bins).reshape(x.shape[0], bins, bins)


def entropy(counts: torch.Tensor, dims, eps: float | None = None) -> torch.Tensor:
    """Shannon entropy in bits of histograms ``counts`` over ``dims``.

    ``eps=None`` skips empty bins; otherwise ``-sum p log2(p + eps)`` over all bins.
    """
    p = counts / counts.sum(dim=dims, keepdim=True)
    if eps is None:
        terms = torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p))
    else:
        terms = p * torch.log2(p + eps)
    return -terms.sum(dim=dims)


def en_prepared(x: Prepared) -> torch.Tensor:
    if x.protocol == "paper":
        lv = quantised(x.f.flatten(1), "paper")
        # the published eps makes a one-level histogram -log2(1 + 1e-7) < 0; entropy is >= 0
        return entropy(histogram(lv), dims=-1, eps=1e-7).clamp_min(0.0)
    return entropy(histogram(x.gray_levels[2]), dims=-1).clamp_min(0.0)


def mutual_information(lx: torch.Tensor, ly: torch.Tensor) -> torch.Tensor:
    """MI in bits between two (R, N) int64 level tensors (values 0..255) -> (R,) float64."""
    j = joint_histogram(lx, ly)
    return entropy(j.sum(2), -1) + entropy(j.sum(1), -1) - entropy(j, (-2, -1))


def mi_prepared(x: Prepared) -> torch.Tensor:
    lv = x.gray_levels  # (3, B, N)
    src = torch.cat([lv[0], lv[1]])  # A then B, (2B, N)
    fus = torch.cat([lv[2], lv[2]])
    mi = mutual_information(src, fus)
    return mi[: x.batch] + mi[x.batch :]
