"""The paper's hand-made guidance and its per-pixel baseline, with their argument checks.

Kept apart from :mod:`hfkernels.fusion` because the guidance network (:mod:`hfkernels.models`)
builds on the heuristic map while ``fusion.fuse_color`` asks :mod:`hfkernels.guidance` for its
default map: both import this module, neither imports the other. Semantics: docs/design.md,
section 5.
"""
from __future__ import annotations

import torch

from . import _validate as V
from . import reference as ref


def _heuristic_inputs(vis, ir, value_range) -> tuple[float, float]:
    V.tensor4d(vis, "vis")
    V.tensor4d(ir, "ir")
    V.same_device_dtype(vis, "vis", ir=ir)
    for name, t in (("vis", vis), ("ir", ir)):
        if t.shape[1] not in (1, 3):
            raise ValueError(f"{name} must have 1 or 3 channels, got {t.shape[1]} (shape {tuple(t.shape)})")
    if vis.shape[0] != ir.shape[0] or vis.shape[-2:] != ir.shape[-2:]:
        raise ValueError(
            f"ir has shape {tuple(ir.shape)}, incompatible with vis {tuple(vis.shape)}: "
            "batch size, height and width must agree"
        )
    return V.value_range(value_range)


def heuristic_guidance(vis, ir, value_range=(0.0, 1.0)) -> torch.Tensor:
    """The paper's hand-made guidance map (docs/design.md, section 5).

    Args:
        vis: (B, 1|3, H, W) first source; 3-channel images enter through their luma.
        ir: (B, 1|3, H, W) second source, same batch size, height and width.
        value_range: ``(low, high)`` of both images, finite with ``low < high``.

    Returns:
        (B, 1, H, W) map in [0, 1] in ``vis``'s dtype (1 favours ``ir``).

    Example:
        >>> heuristic_guidance(torch.rand(2, 3, 20, 30), torch.rand(2, 1, 20, 30)).shape
        torch.Size([2, 1, 20, 30])
    """
    vr = _heuristic_inputs(vis, ir, value_range)
    return ref.heuristic_guidance(vis, ir, vr)


def heuristic_blend(vis, ir, value_range=(0.0, 1.0)) -> torch.Tensor:
    """The paper's per-pixel baseline ``(1 - w) vis + w ir`` (docs/design.md, section 5).

    Args:
        vis: (B, 1|3, H, W).
        ir: (B, 1|3, H, W): 1 channel is used for every channel of ``vis``; 3 channels with a
            1-channel ``vis`` enter through their luma.
        value_range: as :func:`heuristic_guidance`.

    Returns:
        Tensor of ``vis``'s shape and dtype.

    Example:
        >>> heuristic_blend(torch.rand(1, 3, 24, 24), torch.rand(1, 1, 24, 24)).shape
        torch.Size([1, 3, 24, 24])
    """
    vr = _heuristic_inputs(vis, ir, value_range)
    return ref.heuristic_blend(vis, ir, vr)


__all__ = ["heuristic_guidance", "heuristic_blend"]
