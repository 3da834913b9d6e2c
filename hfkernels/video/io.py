"""Frame sequences in and out: video files through PyAV (FFmpeg), and folders of numbered frames.

A *sequence* is a video file (mp4, mkv, avi, mov, webm: whatever FFmpeg decodes) or a folder of
numbered image frames (``0000.png, 0001.png, ...``, taken in the numbers' order). :func:`open_frames`
reads one lazily, a frame at a time: ``(C, H, W)`` float32 in [0, 1], C = 3 (``"rgb"``) or 1
(``"gray"``), the decoding :mod:`hfkernels.io` uses for image pairs. :class:`FrameWriter` writes
fused frames to a video file (H.264 by default, FFV1 for lossless measurement) or to a folder of
PNG frames, under a temporary name renamed to the final one only when every frame is written, so
a failed run leaves nothing under the final name.

Every error is a ValueError that names the file and, once decoding has started, the frame.
PyAV is imported on first use, so this module imports without it; :func:`require_av` gives the
install hint when it is missing.
"""
from __future__ import annotations

import os
import re
import shutil
from fractions import Fraction
from pathlib import Path

import torch

from ..io import IMAGE_EXTS, is_image, read_image, to_uint8, write_image
from ..io.files import _create_temp

#: file suffixes read and written as video containers (FFmpeg's muxer name for writing)
VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi",
                 ".webm": "webm"}
#: codecs a writer accepts: H.264 for viewing, FFV1 (lossless, 8-bit planar RGB) for measurement
CODECS = ("h264", "ffv1")
#: frame rate of a folder of frames, which stores none
DEFAULT_RATE = Fraction(25)


def require_av():
    """The ``av`` module (PyAV), or ImportError saying how to install it."""
    try:
        import av
    except ImportError as e:
        raise ImportError("video files need PyAV: pip install 'hfkernels[video]' (or pip install av)") from e
    return av


def av_version() -> str | None:
    """PyAV's version, or None where it is not installed (for ``hfkernels info``)."""
    try:
        return require_av().__version__
    except ImportError:
        return None


def is_video(path) -> bool:
    """Whether ``path`` names a video file by its suffix."""
    return Path(path).suffix.lower() in VIDEO_FORMATS


def _frame_key(p: Path):
    # numbered frames sort by their number ("9.png" before "10.png"), other names by text
    nums = re.findall(r"\d+", p.stem)
    return (int(nums[-1]) if nums else -1, p.name)


def frame_files(folder) -> list[Path]:
    """The image files of a frame folder in frame order (by the last number in each name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of frames")
    files = sorted((p for p in folder.iterdir() if p.is_file() and is_image(p)), key=_frame_key)
    if not files:
        raise ValueError(f"{folder} holds no image frames ({', '.join(IMAGE_EXTS)})")
    return files


class FrameSequence:
    """A video file or a frame folder read lazily; iterate for ``(C, H, W)`` float32 frames.

    Attributes (known after construction, before any frame is decoded): ``path``, ``mode``
    (``"rgb"`` or ``"gray"``), ``size`` ``(H, W)``, ``rate`` (frames per second, a Fraction;
    :data:`DEFAULT_RATE` for a folder), ``length`` (frame count, or None where the container does
    not say), ``names`` (a folder's file names, else None).
    """

    def __init__(self, path, mode: str = "rgb"):
        if mode not in ("rgb", "gray"):
            raise ValueError(f"mode must be 'rgb' or 'gray', got {mode!r}")
        self.path, self.mode = Path(path), mode
        if not self.path.exists():
            raise ValueError(f"{self.path} does not exist")
        if self.path.is_dir():
            self._files = frame_files(self.path)
            self.names = [p.name for p in self._files]
            self.length, self.rate = len(self._files), DEFAULT_RATE
            self.size = tuple(self._read_file(0).shape[-2:])
        else:
            self._files = self.names = None
            self._probe()

    # -- video files ----------------------------------------------------------------------------

    def _open(self):
        av = require_av()
        try:
            container = av.open(str(self.path), "r")
        except (av.FFmpegError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read video {self.path}: {_why(e)}") from None
        if not container.streams.video:
            container.close()
            raise ValueError(f"cannot read video {self.path}: it holds no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.name is None:
            container.close()
            raise ValueError(f"cannot read video {self.path}: no decoder for its video codec")
        stream.thread_type = "AUTO"  # frame threads: decoding overlaps the fusion's own threads
        return container, stream

    def _probe(self):
        container, stream = self._open()
        try:
            cc = stream.codec_context
            self.size = (cc.height, cc.width)
            rate = stream.average_rate or stream.guessed_rate
            self.rate = Fraction(rate) if rate else DEFAULT_RATE
            self.length = stream.frames or None
            if not cc.width or not cc.height:
                raise ValueError(f"cannot read video {self.path}: its video stream has no frame size")
        finally:
            container.close()

    def _video_frames(self):
        av = require_av()
        container, stream = self._open()
        fmt = "rgb24" if self.mode == "rgb" else "gray"
        i = 0
        try:
            frames = container.decode(stream)
            while True:
                try:
                    frame = next(frames)
                    arr = frame.to_ndarray(format=fmt)
                except StopIteration:
                    break
                except av.FFmpegError as e:
                    raise ValueError(f"cannot decode {self.path} at frame {i}: {_why(e)}") from None
                t = torch.from_numpy(arr)
                t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
                self._check_size(t, i)
                yield t.float().div_(255)
                i += 1
        finally:
            container.close()
        if i == 0:
            raise ValueError(f"cannot decode {self.path}: no frame could be decoded")
        if self.length is not None and i < self.length:
            raise ValueError(f"{self.path} is truncated: it ends at frame {i}, its header announces {self.length} frames")

    # -- frame folders --------------------------------------------------------------------------

    def _read_file(self, i: int) -> torch.Tensor:
        try:
            return read_image(self._files[i], self.mode)
        except ValueError as e:
            raise ValueError(f"frame {i}: {e}") from None

    def _folder_frames(self):
        for i in range(len(self._files)):
            t = self._read_file(i)
            self._check_size(t, i)
            yield t

    def _check_size(self, t: torch.Tensor, i: int) -> None:
        if tuple(t.shape[-2:]) != self.size:
            where = self._files[i] if self._files is not None else self.path
            raise ValueError(f"{where}: frame {i} is {t.shape[-1]}x{t.shape[-2]}, the sequence's first frame "
                             f"{self.size[1]}x{self.size[0]}")

    def __iter__(self):
        return self._folder_frames() if self._files is not None else self._video_frames()

    def __repr__(self) -> str:
        return (f"FrameSequence({str(self.path)!r}, {self.mode!r}, {self.size[1]}x{self.size[0]}, "
                f"{float(self.rate):g} fps, {self.length if self.length is not None else '?'} frames)")


def _why(e: BaseException) -> str:
    # FFmpeg errors carry "[Errno N] text: 'path'"; the path is said once already
    return getattr(e, "strerror", None) or str(e)


def open_frames(path, mode: str = "rgb") -> FrameSequence:
    """Open a video file or a folder of numbered frames for reading (see :class:`FrameSequence`).

    Raises ValueError naming ``path`` when it is missing, not decodable (corrupt, no video
    stream, no decoder), or a folder without image frames; ImportError without PyAV (video only).
    """
    return FrameSequence(path, mode)


# ------------------------------------------------------------------------------------------------
# writing


def _temp_sibling(path: Path, folder: bool) -> Path:
    """A new temporary file (or, ``folder``, an empty folder) beside ``path``, under the name
    rule of every atomic write here (``.NAME.XXXXXXXX.tmp``)."""
    fd, tmp = _create_temp(path.parent, path.name)
    os.close(fd)
    if folder:
        tmp.unlink()
        tmp.mkdir()
    return tmp


class FrameWriter:
    """Write frames to a video file or a folder of PNG frames; the output appears under its
    final name only when :meth:`close` succeeds.

    Args:
        path: a video file (suffix in :data:`VIDEO_FORMATS`) or a folder (frames as PNG).
        rate: frames per second (video; a number or Fraction).
        codec: ``"h264"`` (default; yuv420p, CRF 18) or ``"ffv1"`` (lossless RGB; mkv or avi).
        names: file names of the frames in a folder (default ``000000.png, ...``).
        overwrite: replace an existing file, or frames of the same names in an existing folder.

    Use as a context manager: leaving it by an exception calls :meth:`abort` (the temporary file
    or folder is removed). ``write(frames)`` takes (B, 3, H, W) or (3, H, W) in [0, 1].
    """

    def __init__(self, path, rate=DEFAULT_RATE, codec: str | None = None, names=None, *,
                 overwrite: bool = False, crf: int = 18, preset: str = "veryfast"):
        self.path = Path(path)
        self.video = is_video(self.path)
        if codec is not None and codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
        if codec is not None and not self.video:
            raise ValueError(f"codec {codec!r} needs a video file name ({', '.join(VIDEO_FORMATS)}), got {self.path}")
        self.codec = codec or "h264"
        if self.codec == "ffv1" and VIDEO_FORMATS[self.path.suffix.lower()] not in ("matroska", "avi"):
            raise ValueError(f"codec 'ffv1' needs an .mkv or .avi file, got {self.path}")
        try:
            self.rate = Fraction(rate).limit_denominator(1_000_000)
        except (TypeError, ValueError):
            raise ValueError(f"rate must be a positive number, got {rate!r}") from None
        if self.rate <= 0:
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        if self.path.exists() and not overwrite and (self.video or not self.path.is_dir()):
            raise ValueError(f"{self.path} already exists; pass overwrite=True (--overwrite) to replace it")
        self.names, self.crf, self.preset, self.overwrite = names, crf, preset, overwrite
        self.count, self._container, self._stream, self._closed = 0, None, None, False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_sibling(self.path, folder=not self.video)

    def _start(self, h: int, w: int):
        av = require_av()
        self._container = av.open(str(self._tmp), "w", format=VIDEO_FORMATS[self.path.suffix.lower()])
        if self.codec == "h264":
            s = self._container.add_stream("libx264", rate=self.rate)
            # 4:2:0 needs even sizes; odd frames keep full chroma instead of being cropped
            s.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
            s.options = {"crf": str(self.crf), "preset": self.preset}
        else:
            s = self._container.add_stream("ffv1", rate=self.rate)
            s.pix_fmt = "bgr0"  # packed RGB: lossless for the 8-bit RGB frames written
        s.width, s.height = w, h
        s.thread_type = "AUTO"
        self._stream = s

    def write(self, frames: torch.Tensor) -> None:
        """Append frames: (B, 3, H, W) or (3, H, W) (1 channel is written as gray), in [0, 1]."""
        if self._closed:
            raise ValueError(f"writer for {self.path} is closed")
        if frames.dim() == 3:
            frames = frames[None]
        if frames.dim() != 4 or frames.shape[1] not in (1, 3):
            raise ValueError(f"frames must be (B, 1|3, H, W) or (1|3, H, W), got {tuple(frames.shape)}")
        if not self.video:
            for f in frames:
                write_image(self._tmp / self._name(self.count), f)
                self.count += 1
            return
        av = require_av()
        if frames.shape[1] == 1:
            frames = frames.expand(-1, 3, -1, -1)
        if self._container is None:
            self._start(*frames.shape[-2:])
        elif (self._stream.height, self._stream.width) != tuple(frames.shape[-2:]):
            raise ValueError(f"{self.path}: frame {self.count} is {frames.shape[-1]}x{frames.shape[-2]}, "
                             f"the video is {self._stream.width}x{self._stream.height}")
        arr = to_uint8(frames.detach().float()).permute(0, 2, 3, 1).cpu().numpy()
        for a in arr:
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = self.count
            self._container.mux(self._stream.encode(frame))
            self.count += 1

    def _name(self, i: int) -> str:
        if self.names is not None and i < len(self.names):
            return Path(self.names[i]).with_suffix(".png").name
        return f"{i:06d}.png"

    def close(self) -> Path:
        """Finish the output and move it to its final name; returns that path."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            if self.count == 0:
                raise ValueError(f"no frame was written to {self.path}")
            if self.video:
                self._container.mux(self._stream.encode(None))
                self._container.close()
                self._container = None
                os.replace(self._tmp, self.path)
            else:
                self._finish_folder()
        except BaseException:
            self._cleanup()
            raise
        return self.path

    def _finish_folder(self) -> None:
        if not self.path.exists():
            os.replace(self._tmp, self.path)
            return
        taken = [n for n in os.listdir(self._tmp) if os.path.lexists(self.path / n)]
        if taken and not self.overwrite:
            raise ValueError(f"{self.path / taken[0]} already exists ({len(taken)} frame file(s)); "
                             "pass overwrite=True (--overwrite) to replace them")
        for n in sorted(os.listdir(self._tmp)):
            os.replace(self._tmp / n, self.path / n)
        self._tmp.rmdir()

    def _cleanup(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the container is being thrown away
                pass
            self._container = None
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        else:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop everything written so far (nothing appears under the final name)."""
        self._closed = True
        self._cleanup()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


__all__ = ["VIDEO_FORMATS", "CODECS", "DEFAULT_RATE", "require_av", "av_version", "is_video", "frame_files",
           "FrameSequence", "open_frames", "FrameWriter"]
