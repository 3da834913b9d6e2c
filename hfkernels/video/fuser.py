"""Streaming video fusion: two frame sequences in, fused frames out, a batch at a time.

:class:`VideoFuser` pairs the frames of a visible and an infrared sequence by index, computes
their guidance through :class:`~hfkernels.video.temporal.TemporalGuidance` (reduced resolution,
every k-th frame, moving average with cut resets) and fuses each batch with
:func:`hfkernels.fuse_color`. Decoding runs a batch ahead and encoding a batch behind, each in
a worker thread (FFmpeg releases the GIL), so they overlap the fusion; at most three batches of
frames are held at once, so a clip of any length streams in bounded memory. :func:`fuse_video` is the one-call form.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import torch

from .. import fuse_color
from .. import guidance as G
from .io import FrameSequence, FrameWriter, open_frames
from .temporal import TemporalGuidance

#: guidance settings per kind of guidance: (scale, every), chosen on the three M3SVD clips
#: (benchmarks/video_fps.py; table in benchmarks/RESULTS.md) so that 640x480 runs in real time on a
#: 2-core CPU with per-frame VIF and Qabf within 0.01 of full guidance on every frame
PRESETS = {"map": (1.0, 1), "network": (0.5, 2)}
#: weight of the previous map in the moving average, when smoothing is on
ALPHA = 0.5
#: mean absolute change of the sources' luma thumbnails (in [0, 1]) that counts as a scene cut
CUT = 0.1
#: luma change (in [0, 1]) over which the moving average lets go of the previous map (e^-1)
MOTION = 0.03


@dataclass
class FusedBatch:
    """Consecutive fused frames ``start .. start + B - 1``: vis (B, 3, H, W), ir (B, 1, H, W),
    mu (B, 1, H, W) and fused (B, 3, H, W), float32 in [0, 1] on the fuser's device."""

    start: int
    vis: torch.Tensor
    ir: torch.Tensor
    mu: torch.Tensor
    fused: torch.Tensor


_DONE = object()


def background(items, depth: int = 1):
    """Iterate ``items`` in a worker thread, at most ``depth`` items ahead: decoding (FFmpeg
    releases the GIL) then overlaps the fusion. An exception there is raised here; leaving the
    loop early stops the worker and closes ``items`` in its thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        it = iter(items)
        try:
            for item in it:
                q.put((True, item))
                if stop.is_set():
                    return
            q.put((True, _DONE))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((False, e))
        finally:
            if hasattr(it, "close"):
                it.close()

    t = threading.Thread(target=work, name="hfkernels-video-read", daemon=True)
    t.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a worker waiting to put
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        t.join()


class _WriteBehind:
    """``put(frames)`` hands frames to ``writer.write`` in a worker thread (one batch queued),
    so encoding overlaps the fusion of the next batch; ``finish()`` waits and raises what the
    worker raised."""

    def __init__(self, writer):
        self.writer, self.error = writer, None
        self.q: queue.Queue = queue.Queue(maxsize=1)
        self.t = threading.Thread(target=self._work, name="hfkernels-video-write", daemon=True)
        self.t.start()

    def _work(self):
        while True:
            item = self.q.get()
            if item is _DONE:
                return
            if self.error is None:
                try:
                    self.writer.write(item)
                except BaseException as e:  # noqa: BLE001 - raised by put/finish
                    self.error = e

    def put(self, frames) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(frames)

    def finish(self) -> None:
        self.q.put(_DONE)
        self.t.join()
        if self.error is not None:
            raise self.error


def _source(x, mode: str, name: str):
    if isinstance(x, FrameSequence):
        return x
    if isinstance(x, (str, os.PathLike)):
        return open_frames(x, mode)
    if isinstance(x, torch.Tensor):
        if x.dim() != 4:
            raise ValueError(f"{name} as a tensor must be (T, C, H, W), got {tuple(x.shape)}")
        return x
    try:
        iter(x)
    except TypeError:
        raise TypeError(f"{name} must be a video file, a frame folder or an iterable of frames, "
                        f"got {type(x).__name__}") from None
    return x


def _where(src, name: str) -> str:
    return str(src.path) if isinstance(src, FrameSequence) else name


def check_pair(vis, ir, *, shortest: bool = False) -> None:
    """Refuse two sequences that cannot be paired frame by frame, before any frame is decoded:
    different frame sizes, different frame rates (two video files) or, unless ``shortest``,
    different lengths where both are known. ValueError naming both files."""
    if not (isinstance(vis, FrameSequence) and isinstance(ir, FrameSequence)):
        return
    if vis.size != ir.size:
        raise ValueError(f"frame sizes differ at frame 0: {vis.path} is {vis.size[1]}x{vis.size[0]}, "
                         f"{ir.path} is {ir.size[1]}x{ir.size[0]}")
    if vis.names is None and ir.names is None and vis.rate != ir.rate:
        raise ValueError(f"frame rates differ: {vis.path} has {float(vis.rate):g} fps, {ir.path} "
                         f"{float(ir.rate):g} fps; frames are paired by index, so re-time one clip first")
    if not shortest and vis.length is not None and ir.length is not None and vis.length != ir.length:
        raise ValueError(f"lengths differ: {vis.path} has {vis.length} frames, {ir.path} {ir.length} "
                         "(use shortest=True / --shortest to stop at the end of the shorter one)")


class VideoFuser:
    """Fuse a visible and an infrared frame sequence, streaming.

    Args:
        mu: ``"heuristic"``, a constant in [0, 1], a guidance callable ``mu_fn(vis, ir) -> mu``,
            or None for the packaged trained guide (as :func:`hfkernels.guidance.resolve`).
        checkpoint: a training run folder or ``.safetensors`` model whose network gives ``mu``.
        levels, backend: as :func:`hfkernels.fuse_color` (default backend: the best available,
            the C++ ``cpu`` kernels on a CPU).
        device: where guidance and fusion run (default: CPU).
        batch: frames fused per call; memory holds at most 3 batches of frames (the one being
            fused, one decoded ahead in a worker thread, one being decoded).
        scale, every: guidance resolution (fraction of the frame side) and period in frames;
            None takes :data:`PRESETS` (``"network"`` for a trained network, else ``"map"``).
        smooth: moving average of ``mu`` over time (weight :data:`ALPHA` on the previous map,
            restarting at scene cuts); None: on (see docs/design.md, section 13).
        alpha, motion, cut: the moving average's weight, its motion gate (None: none) and the cut
            threshold (:class:`TemporalGuidance`).
        shortest: pair frames up to the end of the shorter sequence instead of refusing
            sequences of different lengths.
    """

    def __init__(self, mu=None, *, checkpoint=None, levels: int = 4, backend: str | None = None, device=None,
                 batch: int = 8, scale: float | None = None, every: int | None = None, smooth: bool | None = None,
                 alpha: float = ALPHA, cut: float = CUT, motion: float | None = MOTION, shortest: bool = False):
        self.device = torch.device(device or "cpu")
        self.mu_fn = mu if callable(mu) else G.resolve(mu, checkpoint, self.device)
        self.kind = "network" if hasattr(self.mu_fn, "model") else "map"
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        d_scale, d_every = PRESETS[self.kind]
        self.scale = d_scale if scale is None else scale
        self.every = d_every if every is None else every
        self.smooth = True if smooth is None else bool(smooth)
        self.alpha, self.cut, self.motion = (alpha if self.smooth else 0.0), cut, motion
        self.levels, self.backend, self.batch, self.shortest = levels, backend, batch, shortest
        TemporalGuidance(self.mu_fn, scale=self.scale, every=self.every, alpha=self.alpha, cut=self.cut,
                         motion=self.motion)  # checks

    def settings(self) -> dict:
        """The fuser's choices, for records: guidance kind, scale, every, smoothing, alpha, cut."""
        return {"guidance": self.kind, "scale": self.scale, "every": self.every, "smooth": self.smooth,
                "alpha": self.alpha, "motion": self.motion, "cut": self.cut, "batch": self.batch, "levels": self.levels}

    def _pairs(self, vis, ir):
        """(vis, ir) frame tensors by index; a sequence that ends first is an error naming it."""
        missing = object()
        i = 0
        for a, b in itertools.zip_longest(iter(vis), iter(ir), fillvalue=missing):
            if a is missing or b is missing:
                if self.shortest:
                    return
                short, other = (vis, ir) if a is missing else (ir, vis)
                raise ValueError(f"{_where(short, 'vis' if a is missing else 'ir')} ends at frame {i}, "
                                 f"{_where(other, 'ir' if a is missing else 'vis')} goes on; pass shortest=True "
                                 "(--shortest) to stop at the end of the shorter one")
            yield a, b
            i += 1

    def batches(self, vis, ir):
        """Iterate :class:`FusedBatch` over two sequences (each a video file, a frame folder, a
        :class:`~hfkernels.video.io.FrameSequence`, a (T, C, H, W) tensor or an iterable of
        (C, H, W) frames in [0, 1]; vis RGB or gray, ir gray or RGB)."""
        vis, ir = _source(vis, "rgb", "vis"), _source(ir, "gray", "ir")
        check_pair(vis, ir, shortest=self.shortest)
        guide = TemporalGuidance(self.mu_fn, scale=self.scale, every=self.every, alpha=self.alpha, cut=self.cut,
                         motion=self.motion)
        for start, v, r in background(self._chunks(vis, ir)):
            v, r = v.to(self.device), r.to(self.device)
            with torch.no_grad():
                mu = guide(v, r)
                fused = fuse_color(v, r, mu, self.levels, backend=self.backend)
            yield FusedBatch(start, v, r, mu, fused)

    def _chunks(self, vis, ir):
        """``(start, vis (B,C,H,W), ir (B,C,H,W))`` of consecutive frames, ``batch`` at a time."""
        pairs = self._pairs(vis, ir)
        start = 0
        while True:
            chunk = list(itertools.islice(pairs, self.batch))
            if not chunk:
                return
            v = _stack([a for a, _ in chunk], "vis", start)
            r = _stack([b for _, b in chunk], "ir", start)
            if v.shape[-2:] != r.shape[-2:]:
                raise ValueError(f"frame sizes differ at frame {start}: {_where(vis, 'vis')} is "
                                 f"{v.shape[-1]}x{v.shape[-2]}, {_where(ir, 'ir')} is {r.shape[-1]}x{r.shape[-2]}")
            yield start, v, r
            start += len(chunk)

    def frames(self, vis, ir):
        """Iterate the fused frames (3, H, W) of two sequences (as :meth:`batches`)."""
        for b in self.batches(vis, ir):
            yield from b.fused

    def write(self, vis, ir, out, *, rate=None, codec: str | None = None, overwrite: bool = False,
              progress=None) -> dict:
        """Fuse two sequences into ``out`` (a video file or a frame folder; see
        :class:`~hfkernels.video.io.FrameWriter`), which appears only once complete.

        ``rate``: output frames per second (default: the visible clip's). ``progress``: called
        with each :class:`FusedBatch` after it is written. Returns ``{"frames", "seconds", "fps",
        "out", **settings}``.
        """
        vis, ir = _source(vis, "rgb", "vis"), _source(ir, "gray", "ir")
        for name, src in (("vis", vis), ("ir", ir)):
            if isinstance(src, FrameSequence) and os.path.lexists(out) and os.path.samefile(src.path, out):
                raise ValueError(f"out {out} is the input {name}: refusing to write over an input")
        if rate is None:
            rate = vis.rate if isinstance(vis, FrameSequence) else Fraction(25)
        names = vis.names if isinstance(vis, FrameSequence) else None
        check_pair(vis, ir, shortest=self.shortest)
        t0 = time.perf_counter()
        with FrameWriter(out, rate, codec, names, overwrite=overwrite) as w:
            behind = _WriteBehind(w)
            try:
                for b in self.batches(vis, ir):
                    behind.put(b.fused)
                    if progress is not None:
                        progress(b)
            finally:
                behind.finish()
        seconds = time.perf_counter() - t0
        return {"frames": w.count, "seconds": seconds, "fps": w.count / seconds if seconds > 0 else float("inf"),
                "out": str(out), **self.settings()}


def _stack(frames, name: str, start: int) -> torch.Tensor:
    out = []
    for k, f in enumerate(frames):
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"{name} frame {start + k} must be a tensor, got {type(f).__name__}")
        if f.dim() == 4 and f.shape[0] == 1:
            f = f[0]
        if f.dim() != 3 or f.shape[0] not in (1, 3):
            raise ValueError(f"{name} frame {start + k} must be (1|3, H, W), got {tuple(f.shape)}")
        if out and f.shape != out[0].shape:
            raise ValueError(f"{name} frame {start + k} has shape {tuple(f.shape)}, frame {start} {tuple(out[0].shape)}")
        out.append(f.float())
    return torch.stack(out)


def fuse_video(vis, ir, out=None, *, mu=None, checkpoint=None, **options):
    """Fuse a visible and an infrared video (files, frame folders or iterables of frames).

    Args:
        vis: visible sequence (first source; RGB or gray): a video file, a folder of numbered
            frames, a (T, C, H, W) tensor or an iterable of (C, H, W) frames in [0, 1].
        ir: infrared sequence, paired with ``vis`` frame by frame (same size and length).
        out: where to write (a video file or a folder); None returns an iterator instead.
        mu, checkpoint: the guidance (as :class:`VideoFuser`; default: the packaged guide).
        **options: :class:`VideoFuser` settings (``batch``, ``scale``, ``every``, ``smooth``,
            ``shortest``, ...) and, with ``out``, ``rate``, ``codec``, ``overwrite``, ``progress``.

    Returns:
        With ``out``: ``{"frames", "seconds", "fps", "out", ...}``; without: an iterator of fused
        frames (3, H, W) in [0, 1], computed a batch at a time as it is consumed.

    Example:
        >>> vis, ir = torch.rand(5, 3, 48, 64), torch.rand(5, 1, 48, 64)
        >>> len(list(fuse_video(vis, ir, mu="heuristic")))
        5
    """
    write_keys = {"rate", "codec", "overwrite", "progress"}
    wopts = {k: options.pop(k) for k in list(options) if k in write_keys}
    fuser = VideoFuser(mu, checkpoint=checkpoint, **options)
    if out is None:
        if wopts:
            raise TypeError(f"{', '.join(sorted(wopts))} need out=")
        return fuser.frames(vis, ir)
    return fuser.write(vis, ir, out, **wopts)


__all__ = ["VideoFuser", "FusedBatch", "fuse_video", "check_pair", "PRESETS", "ALPHA", "CUT"]
