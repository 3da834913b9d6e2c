"""Scores of a fused video: the image metrics on every frame (or every k-th) and the flicker of
every consecutive pair of frames (:func:`hfkernels.metrics.flicker`), streaming."""
from __future__ import annotations

import math

import torch

from ..metrics import FlickerMeter, check_names, evaluate
from .fuser import FusedBatch, VideoFuser, _source, _stack, check_pair
from .io import FrameSequence

#: name of the temporal measure in score rows
FLICKER = "flicker"


def score_batches(batches, names=None, protocol: str = "paper", every: int = 1, progress=None) -> dict:
    """Score a stream of :class:`~hfkernels.video.fuser.FusedBatch` (in frame order).

    Args:
        names: image metrics (:func:`hfkernels.metrics.check_names`; None: all).
        every: compute the image metrics on frames 0, k, 2k, ... only (flicker: every frame).
        progress: called with each batch once it is scored.

    Returns:
        ``{"frames": {index: {metric: value, "flicker": value (NaN for frame 0)}}, "mean":
        {metric: mean over scored frames, "flicker": mean over frames 1..T-1}, "count": T}``;
        a frame without image metrics holds only its flicker.
    """
    names = check_names(names)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    meter, rows, count = FlickerMeter(), {}, 0
    for b in batches:
        n = b.fused.shape[0]
        fl = meter.update(b.vis, b.ir, b.fused)
        sel = [i for i in range(n) if (b.start + i) % every == 0]
        vals = {}
        if sel:
            idx = torch.tensor(sel, device=b.vis.device)
            vals = evaluate(b.vis[idx], b.ir[idx], b.fused[idx].clamp(0, 1), names, protocol)
        for i in range(n):
            rows[b.start + i] = {}
        for j, i in enumerate(sel):
            rows[b.start + i] = {m: float(v[j]) for m, v in vals.items()}
        for i in range(n):
            rows[b.start + i][FLICKER] = float(fl[i])
        count += n
        if progress is not None:
            progress(b)
    mean = {}
    for m in names:
        xs = [r[m] for r in rows.values() if m in r]
        mean[m] = math.fsum(xs) / len(xs) if xs else float("nan")
    mean[FLICKER] = meter.mean
    return {"frames": rows, "mean": mean, "count": count}


def _fused_batches(vis, ir, fused, batch: int):
    """FusedBatch of three sequences read together (mu is None: a stored video has none)."""
    vis, ir, fused = _source(vis, "rgb", "vis"), _source(ir, "gray", "ir"), _source(fused, "rgb", "fused")
    check_pair(vis, ir)
    check_pair(vis, fused)
    it = [iter(s) for s in (vis, ir, fused)]
    start = 0
    while True:
        chunk = []
        for _ in range(batch):
            got = [next(x, None) for x in it]
            if all(g is None for g in got):
                break
            if any(g is None for g in got):
                ended = [str(s.path) if isinstance(s, FrameSequence) else n
                         for s, n, g in zip((vis, ir, fused), ("vis", "ir", "fused"), got) if g is None]
                raise ValueError(f"{', '.join(ended)} ends at frame {start + len(chunk)} while the others go on")
            chunk.append(got)
        if not chunk:
            return
        v, r, f = (_stack([c[k] for c in chunk], n, start) for k, n in enumerate(("vis", "ir", "fused")))
        if not (v.shape[-2:] == r.shape[-2:] == f.shape[-2:]):
            raise ValueError(f"frame sizes differ at frame {start}")
        yield FusedBatch(start, v, r, None, f)
        start += len(chunk)


def evaluate_video(vis, ir, fused=None, *, fuser: VideoFuser | None = None, names=None, protocol: str = "paper",
                   every: int = 1, batch: int = 8, progress=None) -> dict:
    """Per-frame metrics and flicker of a fused video (see :func:`score_batches` for the result).

    ``fused``: the fused sequence to score (a video file, a frame folder or frames); None fuses
    ``vis`` and ``ir`` on the fly with ``fuser`` (default: ``VideoFuser()``, the packaged guide),
    in float, without the rounding of a written file.
    """
    if fused is None:
        batches = (fuser or VideoFuser()).batches(vis, ir)
    else:
        if fuser is not None:
            raise ValueError("give fused or fuser, not both")
        batches = _fused_batches(vis, ir, fused, batch)
    return score_batches(batches, names, protocol, every, progress)


__all__ = ["FLICKER", "score_batches", "evaluate_video"]
