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


def en_counts(x: Prepared) -> torch.Tensor:
    """(B, 256) float64 level counts EN is the entropy of; counts of row bands add up."""
    if x.protocol == "paper":
        return histogram(quantised(x.f.flatten(1), "paper"))
    return histogram(x.gray_levels[2])


def en_from_counts(counts: torch.Tensor, protocol: str) -> torch.Tensor:
    """EN (B,) from :func:`en_counts` (B, 256)."""
    # the published eps makes a one-level histogram -log2(1 + 1e-7) < 0; entropy is >= 0
    return entropy(counts, dims=-1, eps=1e-7 if protocol == "paper" else None).clamp_min(0.0)


def en_prepared(x: Prepared) -> torch.Tensor:
    return en_from_counts(en_counts(x), x.protocol)


def mi_counts(x: Prepared) -> torch.Tensor:
    """(2B, 256, 256) float64 joint histograms of (gray A, gray F) then (gray B, gray F); counts
    of row bands add up."""
    lv = x.gray_levels  # (3, B, N)
    return joint_histogram(torch.cat([lv[0], lv[1]]), torch.cat([lv[2], lv[2]]))


def mi_from_counts(j: torch.Tensor) -> torch.Tensor:
    """MI (B,) in bits from :func:`mi_counts` (2B, 256, 256)."""
    mi = entropy(j.sum(2), -1) + entropy(j.sum(1), -1) - entropy(j, (-2, -1))
    b = j.shape[0] // 2
    return mi[:b] + mi[b:]


def mi_prepared(x: Prepared) -> torch.Tensor:
    return mi_from_counts(mi_counts(x))
