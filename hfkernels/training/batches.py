"""Training batches from a :class:`hfkernels.io.PairDataset`.

- :func:`epoch_batches` deals the items into batches of ``batch_size``. With ``crop`` (the
  trainer's default) every batch takes ``batch_size`` items of one permutation of the whole set,
  and :class:`BatchLoader` cuts one random window of one size out of each, so a set of many sizes
  (RoadScene has 159) still gives full batches; without, items are bucketed by size, so each batch
  holds whole images of one size (most buckets of a mixed set hold one or two images). Images are
  never resized unless ``max_size`` asks for it, and then with their aspect ratio kept.
- :class:`BatchLoader` yields float batches on the training device, from a uint8 cache of the
  decoded set when it fits (on a GPU: in device memory, so epochs do no decoding at all).
"""
from __future__ import annotations

import math

import torch


def epoch_batches(sizes, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                  rank: int = 0, world: int = 1, crop: int | None = None) -> list[list[int]]:
    """The batches (lists of item indices) of one epoch, for process ``rank`` of ``world``.

    Without ``crop``, items are bucketed by size, so each batch holds whole images of one size;
    the last batch of a bucket may be smaller. With ``crop`` (the loader cuts every item of a
    batch to one size), batches are consecutive runs of one permutation of all items: each holds
    ``batch_size`` items but the last of the epoch. With ``shuffle`` the order is a permutation
    that depends only on ``(seed, epoch)`` — a resumed run sees the same order. With ``world > 1``
    the batch list is padded (wrapping round) to a multiple of ``world`` and dealt out, so every
    process runs the same number of steps (DDP needs that).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    if crop:
        idx = torch.randperm(len(sizes), generator=g).tolist() if shuffle else list(range(len(sizes)))
        batches = [idx[k:k + batch_size] for k in range(0, len(idx), batch_size)]
    else:
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


def crop_window(h: int, w: int, ch: int, cw: int, generator: torch.Generator) -> tuple[int, int]:
    """A uniformly random top-left corner ``(y, x)`` of a ``ch x cw`` window inside ``h x w``."""
    y = int(torch.randint(h - ch + 1, (1,), generator=generator))
    x = int(torch.randint(w - cw + 1, (1,), generator=generator))
    return y, x


class BatchLoader:
    """Iterates the batches of one epoch as float32 ``(vis (B,3,h,w), ir (B,1,h,w))`` in [0, 1]
    on ``device``.

    ``crop``: each batch is cut to one size, ``h = min(crop, smallest height in the batch)`` (and
    ``w`` likewise), every item at its own random window (drawn from ``(seed, epoch, rank)``, so
    a resumed run sees the same windows); None: whole images, batches of one size (see
    :func:`epoch_batches`). With a cache, every item is decoded once (on first use) and kept as
    uint8 on the device; without, a ``DataLoader`` with ``num_workers`` processes decodes each epoch.
    """

    def __init__(self, dataset, batch_size: int, device="cpu", cache="auto", num_workers: int = 0,
                 seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1, crop: int | None = None):
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
            raise ValueError(f"crop must be a positive int or None, got {crop!r}")
        self.dataset, self.batch_size, self.device = dataset, batch_size, torch.device(device)
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self.num_workers, self.crop = num_workers, crop
        self.cached = cache_fits(dataset, self.device, cache)
        self._cache: list | None = [None] * len(dataset) if self.cached else None

    def batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.dataset.sizes, self.batch_size, self.seed, epoch, self.shuffle,
                             self.rank, self.world, self.crop)

    def _cut(self, items: list, generator: torch.Generator) -> list:
        """The items of one batch cut to one size (see the class docstring); as they are without crop."""
        if not self.crop:
            return items
        ch = min(self.crop, *(v.shape[-2] for v, _ in items))
        cw = min(self.crop, *(v.shape[-1] for v, _ in items))
        out = []
        for v, r in items:
            y, x = crop_window(v.shape[-2], v.shape[-1], ch, cw, generator)
            out.append((v[..., y:y + ch, x:x + cw], r[..., y:y + ch, x:x + cw]))
        return out

    def _item(self, i: int):
        if self._cache[i] is None:
            vis, ir = self.dataset[i]
            self._cache[i] = (vis.to(self.device), ir.to(self.device))
        return self._cache[i]

    def epoch(self, epoch: int):
        """Yields ``(indices, vis, ir)`` for every batch of ``epoch``."""
        batches = self.batches(epoch)
        g = torch.Generator().manual_seed(int(self.seed) * 100_003 + int(epoch) + 7_919 * (self.rank + 1))
        if self.cached:
            for idx in batches:
                items = self._cut([self._item(i) for i in idx], g)
                yield idx, _floats([v for v, _ in items]), _floats([r for _, r in items])
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.num_workers,
            collate_fn=_as_list, pin_memory=self.device.type == "cuda",
        )
        for idx, items in zip(batches, loader):
            items = self._cut(items, g)
            yield (idx, _floats([v.to(self.device, non_blocking=True) for v, _ in items]),
                   _floats([r.to(self.device, non_blocking=True) for _, r in items]))

    def __len__(self) -> int:
        return len(self.batches(0))


def _as_list(items):
    """The DataLoader's collate: the items as they are (the loader crops, then stacks them)."""
    return items


def _floats(parts: list[torch.Tensor]) -> torch.Tensor:
    """uint8 items (C, H, W) of one size -> float (B, C, H, W) in [0, 1]."""
    return torch.stack(parts).float().div_(255)


__all__ = ["epoch_batches", "cache_fits", "crop_window", "BatchLoader"]
