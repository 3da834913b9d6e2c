"""Public fusion API: ``fuse``, ``fuse_color``, ``laplacian_pyramid``, ``reconstruct``, and the
paper's hand-made guidance (``heuristic_guidance``) with its per-pixel baseline (``heuristic_blend``).

The exact semantics every backend matches (kernel, borders, odd sizes, the per-level ``mu``,
colour) are in docs/design.md, section 4; the heuristic map and baselines in section 5.
"""
from __future__ import annotations

import torch

from . import reference as ref
from . import validate
from .backends import select
from .validate import max_levels


def fuse(vis, ir, mu, levels: int = 4, *, backend: str | None = None, check: bool = False) -> torch.Tensor:
    """Blend two images level by level of their Laplacian pyramids, guided by ``mu``.

    Args:
        vis: (B, C, H, W) first source (``mu = 0`` selects it).
        ir: (B, 1, H, W) -- used for every channel of ``vis`` -- or (B, C, H, W) second source.
        mu: (B, 1, H, W) guidance in [0, 1] (``mu = 1`` selects ``ir``).
        levels: Laplacian levels (>= 1); capped at ``ceil(log2(max(H, W)))``, which changes
            only rounding (docs/design.md, section 4.4).
        backend: ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"torch"``; default: ``HFK_BACKEND``,
            else the best available (docs/design.md, section 9).
        check: raise ``ValueError`` if ``mu`` leaves [0, 1] or any input is NaN/inf
            (unchecked, NaNs reach the output pixels they touch).

    Returns:
        (B, C, H, W) in ``vis``'s dtype, differentiable in all three inputs. Any H, W >= 1; the
        inputs share one floating dtype and one device.

    Example:
        >>> vis, ir = torch.rand(2, 3, 31, 40), torch.rand(2, 1, 31, 40)
        >>> fuse(vis, ir, torch.full((2, 1, 31, 40), 0.25)).shape
        torch.Size([2, 3, 31, 40])
    """
    mu = _accepted_mu(vis, mu)
    validate.fusion_inputs(vis, ir, mu, levels, check)
    _, impl = select("fuse", vis.device, vis.dtype, backend)
    return impl(vis, ir, mu, min(levels, max_levels(*vis.shape[-2:])))


def _accepted_mu(vis, mu):
    """``mu`` as the released fusion accepts it where the meaning is clear: a batch-1 map for
    a batch (broadcast), and a half-precision map beside float32 images inside autocast (what a
    network under autocast produces; cast up, as autocast would). Anything else is left to the
    checks, which name it."""
    if not (isinstance(vis, torch.Tensor) and isinstance(mu, torch.Tensor)) or vis.dim() != 4 or mu.dim() != 4:
        return mu
    if (mu.is_floating_point() and vis.is_floating_point() and mu.dtype != vis.dtype
            and mu.dtype in (torch.float16, torch.bfloat16) and vis.dtype == torch.float32
            and mu.device == vis.device and torch.is_autocast_enabled(vis.device.type)):
        mu = mu.to(vis.dtype)
    if mu.shape[0] == 1 and vis.shape[0] > 1 and mu.shape[1:] == (1, *vis.shape[-2:]):
        mu = mu.expand(vis.shape[0], -1, -1, -1).contiguous()
    return mu


def laplacian_pyramid(x, levels: int = 4, *, backend: str | None = None) -> list[torch.Tensor]:
    """Laplacian pyramid ``[L_0, ..., L_{levels-1}, G_levels]`` of an image.

    Args:
        x: (B, C, H, W) floating tensor.
        levels: 1 .. ``ceil(log2(max(H, W)))`` (more raises ``ValueError``: level
            ``max_levels`` is already 1x1).

    Returns:
        ``levels + 1`` tensors; entry k is (B, C, H_k, W_k) with ``H_{k+1} = ceil(H_k / 2)``.
        Semantics: docs/design.md, section 4.3.

    Example:
        >>> [tuple(t.shape[-2:]) for t in laplacian_pyramid(torch.rand(1, 1, 5, 8), levels=2)]
        [(5, 8), (3, 4), (2, 2)]
    """
    validate.tensor4d(x, "x")
    validate.levels_for_size(levels, *x.shape[-2:])
    _, impl = select("laplacian_pyramid", x.device, x.dtype, backend)
    return impl(x, levels)


def reconstruct(pyr, *, backend: str | None = None) -> torch.Tensor:
    """Collapse a pyramid made by :func:`laplacian_pyramid` back to a (B, C, H, W) image.

    ``pyr``: a list of at least 2 tensors, each level half the size of the one before (ceil).

    Example:
        >>> x = torch.rand(1, 3, 9, 7, dtype=torch.float64)
        >>> torch.allclose(reconstruct(laplacian_pyramid(x, 3)), x)
        True
    """
    if isinstance(pyr, torch.Tensor) or not hasattr(pyr, "__len__") or len(pyr) < 2:
        raise TypeError("pyr must be a list of at least 2 tensors, as laplacian_pyramid returns")
    for i, t in enumerate(pyr):
        validate.tensor4d(t, f"pyr[{i}]")
    validate.same_device_dtype(pyr[0], "pyr[0]", **{f"pyr[{i}]": t for i, t in enumerate(pyr[1:], 1)})
    for i in range(1, len(pyr)):
        h, w = pyr[i - 1].shape[-2:]
        want = ((h + 1) // 2, (w + 1) // 2)
        if tuple(pyr[i].shape[-2:]) != want or pyr[i].shape[:2] != pyr[0].shape[:2]:
            raise ValueError(
                f"pyr[{i}] has shape {tuple(pyr[i].shape)}; expected {tuple(pyr[0].shape[:2]) + want}"
            )
    _, impl = select("reconstruct", pyr[0].device, pyr[0].dtype, backend)
    return impl(list(pyr))


def _warn_range(**tensors) -> None:
    """Warn about inputs clearly outside [0, 1] (e.g. 0-255): ``fuse_color`` clamps its result
    to [0, 1], which would silently saturate most pixels of such an image."""
    import warnings

    for name, t in tensors.items():
        if t.is_floating_point() and t.numel():
            lo, hi = (float(v) for v in torch.aminmax(t.detach()))
            if hi > 1.5 or lo < -0.5:
                warnings.warn(f"fuse_color: {name} holds values in [{lo:g}, {hi:g}], not [0, 1]; the result is "
                              "clamped to [0, 1], so most pixels saturate (divide 8-bit images by 255)",
                              UserWarning, stacklevel=3)


def with_luma(vis_rgb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``vis_rgb`` (B, 3, H, W) in [0, 1] with its BT.601 luma replaced by ``y`` (B, 1, H, W) in
    [0, 1], chroma kept, clamped to [0, 1] (B, 3, H, W); a (B, 1, H, W) ``vis_rgb`` gives ``y``.
    The colour path of a network that outputs the fused luminance itself (guide kind ``direct``)."""
    validate.tensor4d(vis_rgb, "vis_rgb")
    validate.tensor4d(y, "y")
    if y.shape[1] != 1 or y.shape[0] != vis_rgb.shape[0] or y.shape[-2:] != vis_rgb.shape[-2:]:
        raise ValueError(f"y must be (B, 1, H, W) matching vis_rgb {tuple(vis_rgb.shape)}, got {tuple(y.shape)}")
    if vis_rgb.shape[1] == 1:
        return y.to(vis_rgb.dtype).clamp(0, 1)
    return _replace_luma(vis_rgb, ref.luma(vis_rgb), y.to(vis_rgb.dtype))


def _replace_luma(vis_rgb: torch.Tensor, y_vis: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Keeping Cb, Cr and replacing Y adds the same (y - Y) to R, G and B (the inverse transform
    # has weight 1 on Y for each), so no full YCbCr round trip is needed: the round trip made a
    # 640x480 frame ~20x slower than the fusion itself (agrees to ~1e-6).
    return (vis_rgb + (y - y_vis)).clamp(0, 1)


def fuse_color(vis_rgb, ir, mu=None, levels: int = 4, *, backend: str | None = None,
               check: bool = False) -> torch.Tensor:
    """The paper's colour path: fuse the luma (BT.601 YCbCr) with ``ir``, keep the chroma.

    Args:
        vis_rgb: (B, 3, H, W) RGB in [0, 1], or (B, 1, H, W), which is fused directly.
        ir: (B, 1, H, W), or (B, 3, H, W), which enters through its luma.
        mu: (B, 1, H, W) guidance in [0, 1]; None (default) asks
            :func:`hfkernels.guidance.default_guidance` for it -- the trained guide shipped with
            the package (computed without gradient), or the heuristic map where none is
            installed. ``mu=hfkernels.heuristic_guidance(vis_rgb, ir)`` gives the hand-made map.
        levels, backend, check: as :func:`fuse`.

    Returns:
        (B, C, H, W) RGB of ``vis_rgb``'s channel count, clamped to [0, 1]
        (docs/design.md, section 4.6). Inputs clearly outside [0, 1] (such as 0-255 images)
        give a ``UserWarning`` (not checked when ``mu`` requires grad, i.e. in training).

    Example:
        >>> fuse_color(torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)).shape
        torch.Size([1, 3, 16, 16])
    """
    validate.tensor4d(vis_rgb, "vis_rgb")
    validate.tensor4d(ir, "ir")
    if vis_rgb.shape[1] not in (1, 3):
        raise ValueError(f"vis_rgb must have 1 or 3 channels, got {vis_rgb.shape[1]}")
    if ir.shape[1] not in (1, 3):
        raise ValueError(f"ir must have 1 or 3 channels, got {ir.shape[1]}")
    if not (mu is not None and mu.requires_grad):  # not inside a training step: one sync is cheap
        _warn_range(vis_rgb=vis_rgb, ir=ir)
    if mu is None:
        # imported here so that `import hfkernels` does not load the network code (lazy exports)
        from ..guidance import default_guidance

        validate.same_device_dtype(vis_rgb, "vis_rgb", ir=ir)
        mu = default_guidance()(vis_rgb, ir).to(vis_rgb.dtype)
    ir_y = ref.luma(ir)
    if vis_rgb.shape[1] == 1:
        return fuse(vis_rgb, ir_y, mu, levels, backend=backend, check=check).clamp(0, 1)
    # The fused Y is clamped to [0, 1] first, as the released colour path clamps Y before
    # converting back: an overshooting luma would otherwise shift the hue (up to 26/255 measured).
    y = ref.luma(vis_rgb)
    return _replace_luma(vis_rgb, y, fuse(y, ir_y, mu, levels, backend=backend, check=check).clamp(0, 1))


def _heuristic_inputs(vis, ir, value_range) -> tuple[float, float]:
    validate.tensor4d(vis, "vis")
    validate.tensor4d(ir, "ir")
    validate.same_device_dtype(vis, "vis", ir=ir)
    for name, t in (("vis", vis), ("ir", ir)):
        if t.shape[1] not in (1, 3):
            raise ValueError(f"{name} must have 1 or 3 channels, got {t.shape[1]} (shape {tuple(t.shape)})")
    if vis.shape[0] != ir.shape[0] or vis.shape[-2:] != ir.shape[-2:]:
        raise ValueError(
            f"ir has shape {tuple(ir.shape)}, incompatible with vis {tuple(vis.shape)}: "
            "batch size, height and width must agree"
        )
    return validate.value_range(value_range)


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


class LaplacianPyramidFusion(torch.nn.Module):
    """:func:`fuse` as a module, for scripts that hold the fusion as one (``.to(...)``,
    ``state_dict()`` and the like work; it has no parameters).

    Args:
        num_levels: pyramid levels (>= 1), as ``levels`` of :func:`fuse`.
        backend: as :func:`fuse`.

    ``forward(vis, ir, mu)``: vis (B, C, H, W), ir (B, 1|C, H, W), mu (B|1, 1, H, W) ->
    (B, C, H, W), differentiable in all three.

    Example:
        >>> LaplacianPyramidFusion(num_levels=4)(torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8),
        ...                                       torch.rand(1, 1, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, num_levels: int = 4, *, backend: str | None = None):
        super().__init__()
        self.num_levels = validate.levels(num_levels)
        self.backend = backend

    def forward(self, vis, ir, mu):
        return fuse(vis, ir, mu, self.num_levels, backend=self.backend)

    def extra_repr(self) -> str:
        return f"num_levels={self.num_levels}, backend={self.backend!r}"
