"""Public fusion API: ``fuse``, ``fuse_color``, ``laplacian_pyramid``, ``reconstruct``."""
from __future__ import annotations

import torch

from . import _validate as V
from . import reference as ref
from ._validate import max_levels
from .backends import select


def fuse(vis, ir, mu, levels: int = 4, *, backend: str | None = None, check: bool = False) -> torch.Tensor:
    """Blend two images level by level of their Laplacian pyramids, guided by ``mu``.

    Args:
        vis: (B, C, H, W) first source (``mu = 0`` selects it).
        ir: (B, 1, H, W) — used for every channel of ``vis`` — or (B, C, H, W) second source.
        mu: (B, 1, H, W) guidance in [0, 1] (``mu = 1`` selects ``ir``).
        levels: number of Laplacian levels (>= 1); the pyramid has ``levels + 1`` tensors.
            Levels past ``max_levels(H, W) = ceil(log2(max(H, W)))`` would only add 1x1 levels,
            which leave the result unchanged but for rounding (the blend of a 1x1 level is
            linear and collapses back), so they are skipped: any ``levels`` costs at most that.
        backend: ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"torch"``; default: ``HFK_BACKEND``, else
            the best available for the device.
        check: if True, raise ``ValueError`` when ``mu`` leaves [0, 1] or any input holds NaN/inf.
            Unchecked, NaNs propagate to the output pixels they touch.

    Returns:
        (B, C, H, W) tensor of ``vis``'s dtype. Differentiable with respect to all three inputs.
        Any H, W >= 1; all inputs must share one floating dtype and one device.
    """
    V.fusion_inputs(vis, ir, mu, levels, check)
    _, impl = select("fuse", vis.device, vis.dtype, backend)
    return impl(vis, ir, mu, min(levels, max_levels(*vis.shape[-2:])))


def laplacian_pyramid(x, levels: int = 4, *, backend: str | None = None) -> list[torch.Tensor]:
    """Laplacian pyramid of x (B, C, H, W): ``[L_0 .. L_{levels-1}, G_levels]``; L_k has the size
    of the k-th Gaussian level (``ceil`` halving each time).

    ``levels`` is at most ``max_levels(H, W) = ceil(log2(max(H, W)))`` (at least 1), where
    ``G_levels`` is 1x1; more raises ``ValueError`` (the extra levels would be 1x1 copies).
    """
    V.tensor4d(x, "x")
    V.levels_for_size(levels, *x.shape[-2:])
    _, impl = select("laplacian_pyramid", x.device, x.dtype, backend)
    return impl(x, levels)


def reconstruct(pyr, *, backend: str | None = None) -> torch.Tensor:
    """Collapse a pyramid made by :func:`laplacian_pyramid` back to a (B, C, H, W) image."""
    if isinstance(pyr, torch.Tensor) or not hasattr(pyr, "__len__") or len(pyr) < 2:
        raise TypeError("pyr must be a list of at least 2 tensors, as laplacian_pyramid returns")
    for i, t in enumerate(pyr):
        V.tensor4d(t, f"pyr[{i}]")
    V.same_device_dtype(pyr[0], "pyr[0]", **{f"pyr[{i}]": t for i, t in enumerate(pyr[1:], 1)})
    for i in range(1, len(pyr)):
        h, w = pyr[i - 1].shape[-2:]
        want = ((h + 1) // 2, (w + 1) // 2)
        if tuple(pyr[i].shape[-2:]) != want or pyr[i].shape[:2] != pyr[0].shape[:2]:
            raise ValueError(
                f"pyr[{i}] has shape {tuple(pyr[i].shape)}; expected {tuple(pyr[0].shape[:2]) + want}"
            )
    _, impl = select("reconstruct", pyr[0].device, pyr[0].dtype, backend)
    return impl(list(pyr))


def fuse_color(vis_rgb, ir, mu, levels: int = 4, *, backend: str | None = None, check: bool = False) -> torch.Tensor:
    """The paper's colour path: RGB (B,3,H,W) in [0,1] -> YCbCr, fuse Y with ``ir``, keep Cb/Cr,
    back to RGB, clamped to [0, 1].

    ``ir`` is (B,1,H,W) or (B,3,H,W) (its luma is used); ``mu`` is (B,1,H,W). A 1-channel
    ``vis_rgb`` is fused directly (and clamped). ``levels`` as :func:`fuse`. Returns (B, C, H, W).
    """
    V.tensor4d(vis_rgb, "vis_rgb")
    V.tensor4d(ir, "ir")
    if vis_rgb.shape[1] not in (1, 3):
        raise ValueError(f"vis_rgb must have 1 or 3 channels, got {vis_rgb.shape[1]}")
    if ir.shape[1] not in (1, 3):
        raise ValueError(f"ir must have 1 or 3 channels, got {ir.shape[1]}")
    ir_y = ref.luma(ir)
    if vis_rgb.shape[1] == 1:
        return fuse(vis_rgb, ir_y, mu, levels, backend=backend, check=check).clamp(0, 1)
    ycc = ref.rgb_to_ycbcr(vis_rgb)
    y = fuse(ycc[:, :1], ir_y, mu, levels, backend=backend, check=check)
    return ref.ycbcr_to_rgb(torch.cat([y, ycc[:, 1:]], dim=1)).clamp(0, 1)


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
    """The paper's hand-made guidance map (B,1,H,W) in [0,1] for vis (B,1|3,H,W), ir (B,1|3,H,W),
    both in ``value_range`` = (low, high), finite with low < high (default [0,1]); 3-channel
    images enter through their luma. See :func:`hfkernels.reference.heuristic_guidance`."""
    vr = _heuristic_inputs(vis, ir, value_range)
    return ref.heuristic_guidance(vis, ir, vr)


def heuristic_blend(vis, ir, value_range=(0.0, 1.0)) -> torch.Tensor:
    """The paper's per-pixel heuristic baseline ``(1 - w) vis + w ir``, shape of vis (B,1|3,H,W).

    ``ir`` (B,1|3,H,W): a 1-channel ``ir`` is used for every channel of a 3-channel ``vis``; a
    3-channel ``ir`` with a 1-channel ``vis`` enters through its luma (as in :func:`fuse_color`).
    ``value_range`` as :func:`heuristic_guidance`.
    """
    vr = _heuristic_inputs(vis, ir, value_range)
    return ref.heuristic_blend(vis, ir, vr)
