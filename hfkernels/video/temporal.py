"""Guidance over time: ``mu`` computed on small frames, every k-th frame, smoothed by an
exponential moving average that restarts at scene cuts (design: docs/design.md, section 13).

``mu`` is a smooth map (the heuristic blurs it with a 9-tap Gaussian, the fusion resizes it
to every pyramid level), so it is computed on frames shrunk by ``scale`` and enlarged
(bilinear) to the frame size, and the per-frame work of a guidance network falls by ``1/scale^2``.
Between guidance frames the last map is kept. A *cut* is a frame whose small luma thumbnails
(both sources) differ from the previous frame's by more than ``cut`` on average; there the map
is computed afresh and the average restarts, so no map of the old scene leaks into the new one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.fusion import heuristic_guidance
from ..core.reference import luma
from ..guidance.models import forward_pair, residual_mu

#: side of the thumbnails compared for cut detection (their longer side, in pixels)
THUMB = 64


def shrink(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size) by area averaging (an exact box filter at integer factors)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="area")


def enlarge(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear (half-pixel centres)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``size`` (H, W) times ``scale``, at least 1x1."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


class TemporalGuidance:
    """Guidance maps for consecutive frames, fed batch by batch in order.

    Args:
        mu_fn: ``mu_fn(vis, ir) -> mu`` (see :mod:`hfkernels.guidance`).
        scale: guidance resolution relative to the frames, in (0, 1].
        every: compute a map on every ``every``-th frame (and at cuts); keep it in between.
        alpha: weight of the previous smoothed map in the moving average, in [0, 1); 0 = off.
        motion: where a source's luma changed by ``d`` (at guidance resolution) since the last
            computed map, the previous map's weight is ``alpha * exp(-d / motion)``: still
            regions are averaged, moving ones follow the new map. None: no gating.
        cut: mean absolute thumbnail change (in [0, 1]) above which a frame starts a new scene.

    ``__call__(vis (B,3|1,H,W), ir (B,1|3,H,W)) -> mu (B,1,H,W)`` in [0, 1]; ``cuts`` lists the
    frame indices where the average restarted, ``computed`` counts the frames whose map was
    computed.
    """

    def __init__(self, mu_fn, *, scale: float = 1.0, every: int = 1, alpha: float = 0.0, cut: float = 0.1,
                 motion: float | None = None):
        if not callable(mu_fn):
            raise TypeError(f"mu_fn must be callable, got {type(mu_fn).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
            raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
            raise ValueError(f"alpha must be a number in [0, 1), got {alpha!r}")
        if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not cut > 0:
            raise ValueError(f"cut must be a positive number, got {cut!r}")
        if motion is not None and (isinstance(motion, bool) or not isinstance(motion, (int, float)) or not motion > 0):
            raise ValueError(f"motion must be a positive number or None, got {motion!r}")
        self.mu_fn, self.scale, self.every, self.alpha, self.cut = mu_fn, float(scale), every, float(alpha), float(cut)
        self.motion = None if motion is None else float(motion)
        # A residual guide is the heuristic map corrected in logit space by the U-Net. At reduced
        # resolution only the correction is computed small (and smoothed); the heuristic, whose
        # edges Qabf rewards, is computed on the full frame and corrected with it.
        model = getattr(mu_fn, "model", None)
        self.residual = model if (getattr(mu_fn, "guide", None) == "residual" and self.scale < 1) else None
        self.frame, self.computed, self.cuts = 0, 0, []
        self._mu = self._thumb = self._luma = None  # last map, thumbnails, small lumas of its frame
        self._since = 0  # frames since the last computed map

    @torch.no_grad()
    def __call__(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        n, size = vis.shape[0], tuple(vis.shape[-2:])
        gsize = scaled_size(size, self.scale)
        # every full-resolution pass costs as much as the fusion: shrink once, work on the small frames
        small_v, small_i = shrink(vis, gsize), shrink(ir, gsize)
        tsize = scaled_size(gsize, min(1.0, THUMB / max(gsize)))
        thumbs = torch.cat([shrink(luma(small_v), tsize), shrink(luma(small_i), tsize)], 1)
        prev = thumbs.new_empty((0,) + thumbs.shape[1:]) if self._thumb is None else self._thumb
        seq = torch.cat([prev, thumbs])
        change = (seq[1:] - seq[:-1]).abs().flatten(1).mean(1).tolist() if seq.shape[0] > 1 else []
        change = ([float("inf")] if self._thumb is None else []) + change  # the first frame starts a scene
        cut = [c > self.cut for c in change]
        fresh, since = [], self._since
        for i in range(n):
            since = 0 if (cut[i] or since + 1 >= self.every) else since + 1
            fresh.append(since == 0)
        self._since = since
        idx = [i for i in range(n) if fresh[i]]
        new = {}
        if idx:
            sel = torch.tensor(idx, device=vis.device)
            if self.residual is not None:
                dev = next(self.residual.parameters()).device
                mus = forward_pair(self.residual, small_v[sel].to(dev).float(), small_i[sel].to(dev).float(),
                                   fast=False, return_logit=True)[2].float().to(vis.device)
            else:
                mus = self.mu_fn(small_v[sel], small_i[sel]).float().clamp(0, 1)
            new = dict(zip(idx, mus))
            self.computed += len(idx)
        lumas = torch.cat([luma(small_v), luma(small_i)], 1) if self.motion is not None else None
        out = []
        mu, last = self._mu, self._luma
        for i in range(n):
            if cut[i]:
                mu = new[i]
                if self.frame + i > 0:
                    self.cuts.append(self.frame + i)
            elif i in new and self.alpha:
                w = self.alpha
                if lumas is not None:
                    d = (lumas[i] - last).abs().amax(0, keepdim=True)
                    w = self.alpha * torch.exp(-d / self.motion)
                mu = torch.lerp(new[i], mu, w)
            elif i in new:
                mu = new[i]
            if i in new and lumas is not None:
                last = lumas[i]
            out.append(mu)
        self._mu, self._thumb, self._luma = mu, thumbs[-1:], last
        self.frame += n
        if self.residual is not None:  # the smoothed maps are corrections (logits)
            return residual_mu(heuristic_guidance(vis, ir), enlarge(torch.stack(out), size)).to(vis.dtype)
        return enlarge(torch.stack(out), size).clamp_(0, 1).to(vis.dtype)


__all__ = ["TemporalGuidance", "shrink", "enlarge", "scaled_size", "THUMB"]
