"""Training batches from a :class:`hfkernels.io.PairDataset`.

- :func:`epoch_batches` buckets images by size so every batch holds images of one size (images
  are never resized unless ``max_size`` asks for it, and then with their aspect ratio kept).
- :class:`BatchLoader` yields float batches on the training device, from a uint8 cache of the
  decoded set when it fits (on a GPU: in device memory, so epochs do no decoding at all).
"""
from __future__ import annotations

import math

import torch


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


__all__ = ["epoch_batches", "cache_fits", "BatchLoader"]
