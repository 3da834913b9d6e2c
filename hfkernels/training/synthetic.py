"""Procedurally generated visible/infrared scene pairs, made by code (nothing downloaded).

They give ``hfkernels train`` a built-in default job and the tests a data set that is always
there. Each scene has what makes fusion worth doing: information that only one sensor sees.

- visible only: fine texture (ground, foliage), building windows, lane markings, colour;
- infrared only: warm targets (people, cars) that are dark and low-contrast in the visible image,
  and everything behind a fog bank that washes the visible image out;
- both: the horizon and building outlines (with different contrast and polarity).

A night factor darkens the visible image (and adds more sensor noise), as in MSRS night scenes.
Pair ``i`` of a set with seed ``s`` depends on ``(s, i)`` only, so sets are reproducible and
items can be made in any order.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..io import to_uint8, write_image


def _noise(h: int, w: int, g: torch.Generator, octaves=(4, 8, 16, 32), decay: float = 0.6) -> torch.Tensor:
    """Multi-octave value noise (H, W), roughly zero-mean, unit-ish amplitude."""
    out = torch.zeros(h, w)
    amp = 1.0
    for cells in octaves:
        gh, gw = max(2, math.ceil(h * cells / max(h, w))), max(2, math.ceil(w * cells / max(h, w)))
        grid = torch.randn(1, 1, gh, gw, generator=g)
        out += amp * F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)[0, 0]
        amp *= decay
    return out / 1.6


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def make_pair(height: int = 96, width: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One scene: ``vis`` (3, H, W) RGB and ``ir`` (1, H, W), float32 in [0, 1]."""
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    h, w = height, width
    yy = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) / max(h - 1, 1)
    xx = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w) / max(w - 1, 1)
    night = _u(g) < 0.5
    light = _u(g, 0.12, 0.35) if night else _u(g, 0.7, 1.0)

    horizon = _u(g, 0.3, 0.55) + 0.04 * _noise(1, w, g, octaves=(3, 6))[0]
    sky = yy < horizon[None, :]
    ground = ~sky

    # visible: sky gradient, textured ground, colour
    sky_rgb = torch.tensor([0.45, 0.6, 0.85]) if not night else torch.tensor([0.15, 0.17, 0.3])
    vis = sky_rgb[:, None, None] * (0.75 + 0.35 * yy)[None]
    tex = _noise(h, w, g, octaves=(8, 24, 64), decay=0.8)
    ground_rgb = torch.tensor([_u(g, 0.3, 0.5), _u(g, 0.4, 0.6), _u(g, 0.25, 0.4)])
    vis = torch.where(ground[None], ground_rgb[:, None, None] * (1 + 0.35 * tex)[None], vis)
    # infrared: cold sky, ground warmth varies slowly (IR sees little fine texture)
    ir = 0.15 + 0.1 * yy
    ir = torch.where(ground, 0.4 + 0.08 * _noise(h, w, g, octaves=(3, 6)) + 0.05 * tex * 0.3, ir)

    # a road with lane markings (visible only: the paint has no thermal contrast)
    road = ground & ((xx - 0.5).abs() < 0.08 + 0.4 * (yy - horizon[None, :]).clamp(min=0))
    vis = torch.where(road[None], torch.full((3, 1, 1), 0.35) + 0.03 * tex[None], vis)
    ir = torch.where(road, ir + 0.05, ir)
    lane = road & ((xx - 0.5).abs() < 0.006 + 0.01 * yy) & ((yy * 14).frac() < 0.5)
    vis = torch.where(lane[None], torch.full((3, 1, 1), 0.95), vis)

    # buildings on the horizon: windows are visible-only detail, walls mildly warm
    for _ in range(int(_u(g, 1, 4))):
        x0, bw = _u(g, 0.0, 0.85), _u(g, 0.08, 0.22)
        top = float(horizon.mean()) - _u(g, 0.1, 0.25)
        box = (xx >= x0) & (xx < x0 + bw) & (yy >= top) & (yy < horizon[None, :] + 0.02)
        wall = torch.tensor([_u(g, 0.4, 0.7), _u(g, 0.35, 0.6), _u(g, 0.3, 0.55)])
        win = box & ((xx * w / 6).frac() < 0.45) & ((yy * h / 8).frac() < 0.45)
        vis = torch.where(box[None], wall[:, None, None], vis)
        vis = torch.where(win[None], torch.full((3, 1, 1), 0.95 if night else 0.2), vis)
        ir = torch.where(box, torch.full_like(ir, _u(g, 0.45, 0.6)), ir)

    # warm targets: people (tall ellipses) and cars (wide boxes), dark in the visible image
    for _ in range(int(_u(g, 2, 6))):
        cx, cy = _u(g, 0.05, 0.95), _u(g, float(horizon.mean()) + 0.05, 0.95)
        scale = 0.25 + cy  # nearer (lower) objects are larger
        if _u(g) < 0.6:
            rx, ry = 0.018 * scale, 0.08 * scale
            obj = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        else:
            rx, ry = 0.07 * scale, 0.035 * scale
            obj = ((xx - cx).abs() < rx) & ((yy - cy).abs() < ry)
        vis = torch.where(obj[None], vis * 0.6 + 0.04, vis)
        ir = torch.where(obj, torch.full_like(ir, _u(g, 0.8, 0.98)) + 0.03 * tex, ir)

    # a fog bank: washes the visible image out, infrared sees through it
    if _u(g) < 0.5:
        fx, fy, fr = _u(g), _u(g, 0.3, 0.8), _u(g, 0.15, 0.35)
        fog = torch.exp(-(((xx - fx) ** 2 + (yy - fy) ** 2) / (fr * fr))) * _u(g, 0.5, 0.85)
        vis = vis * (1 - fog[None]) + fog[None] * 0.75

    vis = vis * light + (0.02 if night else 0.0)
    vis = vis + torch.randn(3, h, w, generator=g) * (0.02 if night else 0.008)
    ir = ir + torch.randn(h, w, generator=g) * 0.01
    return vis.clamp(0, 1).float(), ir.clamp(0, 1)[None].float()


class SyntheticPairs(torch.utils.data.Dataset):
    """``n`` generated pairs of one size, with the interface of :class:`hfkernels.io.PairDataset`:
    ``ds[i] -> (vis uint8 (3,H,W), ir uint8 (1,H,W))``, ``ds.sizes``, ``ds.names``, ``ds.name``."""

    def __init__(self, n: int = 32, size: tuple[int, int] = (96, 128), seed: int = 0, name: str = "synthetic"):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.size, self.seed, self.name = n, (int(size[0]), int(size[1])), int(seed), name
        self.sizes = [self.size] * n
        self.names = [f"{name}-{seed}-{i:04d}" for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        vis, ir = make_pair(*self.size, seed=self.seed * 1_000_003 + i)
        return to_uint8(vis), to_uint8(ir)


def write_pairs(folder, n: int = 8, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """Write ``n`` generated pairs as PNG files ``folder/vi/NNNN.png`` and ``folder/ir/NNNN.png``."""
    folder = Path(folder)
    ds = SyntheticPairs(n, size, seed)
    for i in range(n):
        vis, ir = ds[i]
        write_image(folder / "vi" / f"{i:04d}.png", vis.float() / 255)
        write_image(folder / "ir" / f"{i:04d}.png", ir.float() / 255)
    return folder


__all__ = ["make_pair", "SyntheticPairs", "write_pairs"]
