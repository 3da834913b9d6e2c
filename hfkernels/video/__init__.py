"""Video fusion: two frame sequences (video files through PyAV, or folders of numbered frames)
fused into one, streaming, with guidance that is cheap enough for real time on a CPU and stable
over time.

- :func:`fuse_video` / :class:`VideoFuser`: the fusion (:mod:`.fuser`);
- :func:`open_frames`, :class:`FrameWriter`: reading and writing sequences (:mod:`.io`);
- :class:`TemporalGuidance`: reduced-resolution, every-k-th-frame guidance with a moving average
  that restarts at scene cuts (:mod:`.temporal`);
- :func:`evaluate_video`: per-frame metrics and flicker of a fused sequence (:mod:`.scores`).

The temporal measure itself is :func:`hfkernels.metrics.flicker`. Design: docs/design.md, section 13.
"""
from __future__ import annotations

from .fuser import ALPHA, CUT, PRESETS, FusedBatch, VideoFuser, check_pair, fuse_video
from .io import (
           CODECS,
           VIDEO_FORMATS,
           FrameSequence,
           FrameWriter,
           av_version,
           is_video,
           open_frames,
           require_av,
)
from .scores import FLICKER, evaluate_video, score_batches
from .temporal import TemporalGuidance

__all__ = ["fuse_video", "VideoFuser", "FusedBatch", "check_pair", "PRESETS", "ALPHA", "CUT", "open_frames",
           "FrameSequence", "FrameWriter", "CODECS", "VIDEO_FORMATS", "is_video", "av_version", "require_av",
           "TemporalGuidance", "evaluate_video", "score_batches", "FLICKER"]
