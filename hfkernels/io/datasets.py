"""Paired image folders for training and evaluation: the one layout reader both use.

- :func:`find_sets` recognises the common layouts of a folder and returns its named pair sets.
- :class:`PairDataset` holds the pairs of one or more sets; every file is checked when it is
  built and *all* problems (unmatched names, unreadable files, size mismatches) are reported at
  once in a :class:`DataError`.

Layouts recognised by :func:`find_sets` (first match wins):

- ``VIS_DIR,IR_DIR`` — two explicit folders, comma separated;
- ``DIR/{vi,ir}`` (also ``vis``/``visible``, ``ir``/``infrared``/``lwir``, any case) — RoadScene,
  TNO, and any folder of this shape;
- ``DIR/{train,test}/{vi,ir}`` — MSRS: the ``split`` argument picks the sub-folder (training
  uses ``train``, evaluation ``test``), falling back to whichever exists;
- ``DIR`` named ``X-Y`` holding ``X`` and ``Y`` — Harvard ``CT-MRI``, ``PET-MRI``, ``SPECT-MRI``:
  the first name (the functional/CT image) is the first source, the MRI the second;
- otherwise every sub-folder that matches one of the above (e.g. the ``Harvard`` folder itself).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .files import (
    PairingError,
    describe_unmatched,
    header_size,
    match_pairs,
    read_image,
)

VIS_NAMES = ("vi", "vis", "visible", "rgb")
IR_NAMES = ("ir", "infrared", "lwir", "thermal")


class DataError(ValueError):
    """A data folder that cannot be used as it is; the message lists every file at fault."""


@dataclass(frozen=True)
class PairSet:
    """A named pair of folders: first source (visible) and second source (infrared)."""

    name: str
    vis_dir: Path
    ir_dir: Path


def _child(folder: Path, names) -> Path | None:
    """The sub-folder of ``folder`` whose lower-case name is in ``names`` (first in that order)."""
    subs = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    for n in names:
        if n in subs:
            return subs[n]
    return None


def find_sets(spec, split: str = "train") -> list[PairSet]:
    """The pair sets a data argument names (see the module docstring for the layouts)."""
    spec = str(spec)
    if "," in spec:
        parts = [Path(p) for p in spec.split(",")]
        if len(parts) != 2:
            raise DataError(f"expected 'VIS_DIR,IR_DIR', got {spec!r}")
        for p in parts:
            if not p.is_dir():
                raise DataError(f"not a folder: {p}")
        return [PairSet(f"{parts[0].parent.name or parts[0].name}", parts[0], parts[1])]
    root = Path(spec)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist" if not root.exists() else f"not a folder: {root}")
    found = _find(root, split, root.name, depth=0)
    if not found:
        subs = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"no image pairs found in {root}: expected {root}/vi + {root}/ir, {root}/train|test/vi+ir "
            f"(MSRS), or {root}/X + {root}/Y for a folder named X-Y (Harvard); "
            f"its sub-folders are: {', '.join(subs) or '(none)'}"
        )
    return found


def _find(folder: Path, split: str, name: str, depth: int) -> list[PairSet]:
    vis, ir = _child(folder, VIS_NAMES), _child(folder, IR_NAMES)
    if vis and ir:
        return [PairSet(name, vis, ir)]
    splits = {s: _child(folder, (s,)) for s in ("train", "test")}
    if any(splits.values()):
        order = [split] + [s for s in ("train", "test") if s != split]
        for s in order:
            if splits.get(s) is not None:
                got = _find(splits[s], split, f"{name}-{s}", depth + 1)
                if got:
                    return got
    if "-" in folder.name:
        first, second = folder.name.split("-", 1)
        a, b = _child(folder, (first.lower(),)), _child(folder, (second.lower(),))
        if a and b:
            return [PairSet(name, a, b)]
    if depth >= 1:
        return []
    out: list[PairSet] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        out += _find(sub, split, f"{name}/{sub.name}", depth + 1)
    return out


def fit_size(h: int, w: int, max_size: int | None) -> tuple[int, int]:
    """(h, w) scaled down (aspect kept, rounded, >= 1) so that max(h, w) <= max_size."""
    if not max_size or max(h, w) <= max_size:
        return h, w
    s = max_size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


class PairDataset(torch.utils.data.Dataset):
    """The image pairs of one or more :class:`PairSet` (or data arguments for :func:`find_sets`).

    ``ds[i] -> (vis uint8 (3, H, W), ir uint8 (1, H, W))``: the first source as RGB (a gray one is
    repeated to 3 channels), the second as one gray channel, resized only when ``max_size`` is
    given. ``ds.sizes[i]`` is item i's (H, W) and ``ds.names[i]`` its file name.

    Raises :class:`DataError` listing every unmatched, unreadable or mismatched file.
    """

    def __init__(self, sets, max_size: int | None = None, split: str = "train"):
        if isinstance(sets, (str, Path, PairSet)):
            sets = [sets]
        resolved: list[PairSet] = []
        for s in sets:
            resolved += [s] if isinstance(s, PairSet) else find_sets(s, split)
        if max_size is not None and (isinstance(max_size, bool) or int(max_size) < 1):
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        self.sets, self.max_size = resolved, max_size
        self.name = "+".join(s.name for s in resolved)
        problems: list[str] = []
        self.pairs: list[tuple[Path, Path]] = []
        self.sizes: list[tuple[int, int]] = []
        self.names: list[str] = []
        for s in resolved:
            try:
                res = match_pairs(s.vis_dir, s.ir_dir, strict=False)
            except (PairingError, FileNotFoundError) as e:
                problems.append(str(e))
                continue
            if res.only_a or res.only_b:
                problems.append(describe_unmatched(s.vis_dir, s.ir_dir, res))
            for a, b in res.pairs:
                try:
                    sa, sb = header_size(a), header_size(b)
                except Exception as e:  # noqa: BLE001 - PIL raises many types; report them all
                    problems.append(f"unreadable image in pair {a} / {b}: {e}")
                    continue
                if sa != sb:
                    problems.append(f"size mismatch: {a} is {sa[0]}x{sa[1]}, {b} is {sb[0]}x{sb[1]} (HxW)")
                    continue
                self.pairs.append((a, b))
                self.sizes.append(fit_size(*sa, max_size))
                self.names.append(a.name)
        if problems:
            lines = "\n".join(problems)
            raise DataError(f"cannot use the data in {', '.join(str(s.vis_dir.parent) for s in resolved)}:\n{lines}")
        if not self.pairs:
            raise DataError(f"no image pairs in {self.name}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        a, b = self.pairs[i]
        vis = read_image(a, "rgb")
        ir = read_image(b, "gray")
        h, w = self.sizes[i]
        if vis.shape[-2:] != (h, w):
            # antialiased bilinear: a downscale that keeps the aspect (see fit_size)
            vis = F.interpolate(vis[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
            ir = F.interpolate(ir[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
        if vis.shape[-2:] != ir.shape[-2:]:
            raise DataError(f"size mismatch after decoding: {a} {tuple(vis.shape)} / {b} {tuple(ir.shape)}")
        return to_uint8(vis), to_uint8(ir)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


__all__ = ["DataError", "PairSet", "find_sets", "fit_size", "PairDataset", "to_uint8"]
