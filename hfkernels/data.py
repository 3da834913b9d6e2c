"""Paired image folders for training and evaluation.

- :func:`find_sets` recognises the common layouts of a folder and returns its named pair sets.
- :class:`PairDataset` holds the pairs of one or more sets; every file is checked when it is
  built and *all* problems (unmatched names, unreadable files, size mismatches) are reported at
  once in a :class:`DataError`.
- :func:`epoch_batches` buckets images by size so every batch holds images of one size (images
  are never resized unless ``max_size`` asks for it, and then with their aspect ratio kept).
- :class:`BatchLoader` yields float batches on the training device, from a uint8 cache of the
  decoded set when it fits (on a GPU: in device memory, so epochs do no decoding at all).

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

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .io import PairingError, describe_unmatched, match_pairs, read_image

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


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return h, w


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
                    sa, sb = _header_size(a), _header_size(b)
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


def epoch_batches(sizes, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                  rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches (lists of item indices) of one epoch, for process ``rank`` of ``world``.

    Items are bucketed by size, so each batch holds images of one size; the last batch of a
    bucket may be smaller. With ``shuffle`` the order inside buckets and of the batches is a
    permutation that depends only on ``(seed, epoch)`` — a resumed run sees the same order.
    With ``world > 1`` the batch list is padded (wrapping round) to a multiple of ``world`` and
    dealt out, so every process runs the same number of steps (DDP needs that).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sizes):
        buckets.setdefault(tuple(s), []).append(i)
    batches = []
    for key in sorted(buckets):
        idx = buckets[key]
        if shuffle:
            idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        batches += [idx[k:k + batch_size] for k in range(0, len(idx), batch_size)]
    if shuffle:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
    if world > 1:
        n = math.ceil(len(batches) / world) * world
        batches = [batches[k % len(batches)] for k in range(n)][rank::world]
    return batches


def cache_fits(dataset, device, cache="auto", host_limit_bytes: int = 2 << 30) -> bool:
    """Whether to decode ``dataset`` once into a uint8 cache on ``device``.

    ``cache``: True/False force it; ``"auto"`` caches when the uint8 set fits in a third of the
    free GPU memory (CUDA) or in ``host_limit_bytes`` (CPU).
    """
    if cache is True or cache is False:
        return cache
    need = sum(4 * h * w for h, w in dataset.sizes)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need < free // 3
    return need < host_limit_bytes


class BatchLoader:
    """Iterates the batches of one epoch as float32 ``(vis (B,3,H,W), ir (B,1,H,W))`` in [0, 1]
    on ``device``.

    With a cache, every item is decoded once (on first use) and kept as uint8 on the device;
    without, a ``DataLoader`` with ``num_workers`` processes decodes each epoch.
    """

    def __init__(self, dataset, batch_size: int, device="cpu", cache="auto", num_workers: int = 0,
                 seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.dataset, self.batch_size, self.device = dataset, batch_size, torch.device(device)
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self.num_workers = num_workers
        self.cached = cache_fits(dataset, self.device, cache)
        self._cache: list | None = [None] * len(dataset) if self.cached else None

    def batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.dataset.sizes, self.batch_size, self.seed, epoch, self.shuffle,
                             self.rank, self.world)

    def _item(self, i: int):
        if self._cache[i] is None:
            vis, ir = self.dataset[i]
            self._cache[i] = (vis.to(self.device), ir.to(self.device))
        return self._cache[i]

    def epoch(self, epoch: int):
        """Yields ``(indices, vis, ir)`` for every batch of ``epoch``."""
        batches = self.batches(epoch)
        if self.cached:
            for idx in batches:
                items = [self._item(i) for i in idx]
                yield idx, _floats([v for v, _ in items]), _floats([r for _, r in items])
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.num_workers,
            collate_fn=_collate, pin_memory=self.device.type == "cuda",
        )
        for idx, (vis, ir) in zip(batches, loader):
            yield idx, _floats([vis.to(self.device, non_blocking=True)]), _floats([ir.to(self.device, non_blocking=True)])

    def __len__(self) -> int:
        return len(self.batches(0))


def _collate(items):
    return torch.stack([v for v, _ in items]), torch.stack([r for _, r in items])


def _floats(parts: list[torch.Tensor]) -> torch.Tensor:
    x = torch.stack(parts) if parts[0].dim() == 3 else torch.cat(parts)
    return x.float().div_(255)


__all__ = ["DataError", "PairSet", "find_sets", "fit_size", "PairDataset", "epoch_batches", "cache_fits",
           "BatchLoader", "to_uint8"]
