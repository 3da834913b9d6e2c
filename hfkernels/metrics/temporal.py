"""Temporal measure of a fused video: flicker, the frame-to-frame change of the fused video that
neither source's change accounts for (definition: docs/design.md, section 13.3).

For consecutive frames t-1, t with luma A (visible), B (infrared) and F (fused), and the changes
dA = A_t - A_{t-1}, dB, dF, the flicker of frame t is the mean over pixels of the distance from
dF to the interval [min(dA, dB), max(dA, dB)]:

    flicker_t = mean( relu(dF - max(dA, dB)) + relu(min(dA, dB) - dF) ) * 255

in 8-bit grey levels. A fusion ``F = (1 - w) A + w B`` with a weight ``w`` constant over time
changes by ``(1 - w) dA + w dB``, which lies in that interval: its flicker is 0 however much the
scene moves. A weight that changes by ``dw`` adds ``dw (B - A)``, the flicker a guidance map
unstable in time causes, and so does noise the fusion adds. The clip's value is the mean over
its frames t = 1 .. T-1. Lower is better.
"""
from __future__ import annotations

import torch

from ..core.reference import luma
from ._prep import check_inputs


def _luma(x: torch.Tensor) -> torch.Tensor:
    return luma(x.to(torch.float32 if x.dtype != torch.float64 else x.dtype))


@torch.no_grad()
def flicker(prev, cur) -> torch.Tensor:
    """Flicker of fused frames against their predecessors.

    Args:
        prev: ``(vis, ir, fused)`` of frames t-1, each (B, 1|3, H, W) in [0, 1] (or (C, H, W)).
        cur: ``(vis, ir, fused)`` of frames t, the same sizes as ``prev``.

    Returns:
        (B,) float64: per frame pair, the mean distance (8-bit grey levels) of the fused luma's
        change from the interval the two sources' luma changes span.

    Example:
        >>> a0, b0, a1, b1 = (torch.rand(1, 1, 8, 8) for _ in range(4))
        >>> float(flicker((a0, b0, (a0 + b0) / 2), (a1, b1, (a1 + b1) / 2)))  # constant weights
        0.0
    """
    for name, t in (("prev", prev), ("cur", cur)):
        if not isinstance(t, (tuple, list)) or len(t) != 3:
            raise TypeError(f"{name} must be a (vis, ir, fused) tuple")
    p = check_inputs(*prev, check_range=False)
    c = check_inputs(*cur, check_range=False)
    for name, a, b in zip(("vis", "ir", "fused"), p, c):
        if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:]:
            raise ValueError(f"cur {name} has shape {tuple(b.shape)}, prev {name} {tuple(a.shape)}: "
                             "batch size, height and width must agree")
    da, db, df = (_luma(b) - _luma(a) for a, b in zip(p, c))
    hi, lo = torch.maximum(da, db), torch.minimum(da, db)
    d = torch.relu(df - hi) + torch.relu(lo - df)
    return d.flatten(1).double().mean(1) * 255.0


class FlickerMeter:
    """Flicker of a stream, fed in order: ``update(vis, ir, fused)`` with consecutive frames
    (B, 1|3, H, W) returns the (B,) flicker of each against its predecessor (the first frame
    of the stream has none: NaN); ``mean`` is the clip's value (NaN before two frames)."""

    def __init__(self):
        self._prev = None
        self.values: list[float] = []

    def update(self, vis, ir, fused) -> torch.Tensor:
        cur = check_inputs(vis, ir, fused, check_range=False)
        n = cur[0].shape[0]
        out = torch.full((n,), float("nan"), dtype=torch.float64)
        seq = cur if self._prev is None else tuple(torch.cat([a, b]) for a, b in zip(self._prev, cur))
        if seq[0].shape[0] > 1:
            vals = flicker(tuple(t[:-1] for t in seq), tuple(t[1:] for t in seq)).cpu()
            out[n - vals.shape[0]:] = vals
            self.values += vals.tolist()
        self._prev = tuple(t[-1:] for t in cur)
        return out

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")


__all__ = ["flicker", "FlickerMeter"]
