"""Argument checks shared by the public ops: each error names the argument at fault."""
from __future__ import annotations

import math
import numbers

import torch


def tensor4d(x, name: str, *, batch_optional: bool = False) -> torch.Tensor:
    """``x`` as a non-empty floating (B, C, H, W) tensor; with ``batch_optional`` a (C, H, W)
    tensor is accepted too and returned as (1, C, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if batch_optional and x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        if batch_optional:
            raise ValueError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
        hint = " (add a batch dimension with .unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return x


def same_device_dtype(ref: torch.Tensor, ref_name: str, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; cast it with .to({ref_name}.dtype)"
            )


def levels(levels) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise TypeError(f"levels must be an int, got {type(levels).__name__}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    return levels


def max_levels(h: int, w: int) -> int:
    """Most pyramid levels an H x W image has (at least 1).

    Each level halves the size, rounding up, so ``ceil(log2(max(H, W)))`` levels reach 1x1;
    a further level would only add another 1x1 level.
    """
    return max(1, (max(int(h), int(w)) - 1).bit_length())


def levels_for_size(lv, h: int, w: int, name: str = "levels") -> int:
    """``levels(lv)``, and no more than :func:`max_levels` for an H x W image (ValueError)."""
    levels(lv)
    most = max_levels(h, w)
    if lv > most:
        raise ValueError(
            f"{name}={lv} is more than a {h}x{w} image has: at most {most} "
            f"(level {most} is 1x1 already; more levels would only repeat 1x1 levels)"
        )
    return lv


def value_range(v, name: str = "value_range") -> tuple[float, float]:
    """A pair ``(low, high)`` of finite numbers with ``low < high``, as floats."""
    if not isinstance(v, (tuple, list)):
        raise TypeError(f"{name} must be a pair (low, high) of numbers, got {type(v).__name__}")
    if len(v) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {len(v)} values")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"{name} must be a pair (low, high) of numbers, got {v!r:.80}")
    lo, hi = float(v[0]), float(v[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be finite with low < high, got ({lo:g}, {hi:g})")
    return lo, hi


def fusion_inputs(vis, ir, mu, lv, check: bool = False) -> None:
    """Validate ``fuse`` arguments: vis (B,C,H,W), ir (B,1|C,H,W), mu (B,1,H,W)."""
    tensor4d(vis, "vis")
    tensor4d(ir, "ir")
    tensor4d(mu, "mu")
    same_device_dtype(vis, "vis", ir=ir, mu=mu)
    b, c, h, w = vis.shape
    for name, t in (("ir", ir), ("mu", mu)):
        if t.shape[0] != b:
            raise ValueError(f"{name} has batch size {t.shape[0]} but vis has {b}")
        if tuple(t.shape[-2:]) != (h, w):
            raise ValueError(
                f"{name} has spatial size {tuple(t.shape[-2:])} but vis has {(h, w)}"
            )
    if ir.shape[1] not in (1, c):
        raise ValueError(f"ir must have 1 or {c} channels (like vis), got {ir.shape[1]}")
    if mu.shape[1] != 1:
        raise ValueError(f"mu must have 1 channel, got {mu.shape[1]} (shape {tuple(mu.shape)})")
    levels(lv)
    if check:
        for name, t in (("vis", vis), ("ir", ir), ("mu", mu)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(mu.min()), float(mu.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"mu must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
