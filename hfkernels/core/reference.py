"""Pure-PyTorch reference semantics: the oracle every backend is tested against.

Everything here is written literally, for
clarity, not speed. All functions take NCHW tensors and are differentiable through autograd.
Half-precision inputs are computed in float32 and cast back, the same accumulation the GPU
backends use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .validate import levels as _check_levels
from .validate import max_levels

# BT.601 full-range coefficients (R, G, B weights) of Y, Cb and Cr: the one definition in the
# package (the losses, the models' input and the fusion helpers all use these).
LUMA = (0.299, 0.587, 0.114)
CB = (-0.168736, -0.331264, 0.5)
CR = (0.5, -0.418688, -0.081312)


def _mix(x: torch.Tensor, w) -> torch.Tensor:
    """w[0] R + w[1] G + w[2] B of a (B,3,H,W) image, shape (B,1,H,W)."""
    return w[0] * x[:, 0:1] + w[1] * x[:, 1:2] + w[2] * x[:, 2:3]


def gaussian_taps(size: int, sigma: float, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """1-D Gaussian taps ``exp(-(i - size//2)^2 / (2 sigma^2))`` for i in 0..size-1, summing to 1.

    For even ``size`` the window is off-centre (its centre tap is ``size//2``), as the released
    SSIM does.
    """
    d = torch.arange(size, dtype=torch.float64, device=device) - size // 2
    t = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return (t / t.sum()).to(dtype)


def pyramid_kernel(dtype=torch.float64, device=None) -> torch.Tensor:
    """The 5x5 pyramid kernel K (sigma 1, separable, sum 1) as a (5, 5) tensor."""
    t = gaussian_taps(5, 1.0, device=device)
    return torch.outer(t, t).to(dtype)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _per_channel(x: torch.Tensor, fn) -> torch.Tensor:
    b, c, h, w = x.shape
    y = fn(x.reshape(b * c, 1, h, w))
    return y.reshape(b, c, y.shape[-2], y.shape[-1])


def _planes_conv(t: torch.Tensor, k: torch.Tensor, padding=0) -> torch.Tensor:
    """Filter each plane of ``t`` (N, 1, H, W) with each kernel of ``k`` (O, 1, kh, kw) ->
    (N, O, H', W'). The planes go in as the channels of one image (a depthwise convolution):
    with the planes as a batch, ATen's CPU convolution of a one-channel image costs 3-15x more
    per plane as soon as there are two or more (measured at 480x640 on the 2-core CPU)."""
    n, o = t.shape[0], k.shape[0]
    y = F.conv2d(t.reshape(1, n, *t.shape[-2:]), k.repeat(n, 1, 1, 1), padding=padding, groups=n)
    return y.reshape(n, o, *y.shape[-2:])


def down(x: torch.Tensor) -> torch.Tensor:
    """Blur with K (zero padding 2) and keep every second pixel: (B,C,H,W) -> (B,C,ceil(H/2),ceil(W/2))."""
    k = pyramid_kernel(x.dtype, x.device)[None, None]
    return _per_channel(x, lambda t: F.conv2d(t, k, padding=2, stride=2))


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize (align_corners False, no antialias); identity when the size already matches."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def up(x: torch.Tensor, size) -> torch.Tensor:
    """Transposed convolution with 4K (stride 2, padding 2, output padding 1) to (2h, 2w),
    then a bilinear resize to ``size`` when that differs (odd sizes)."""
    k = 4.0 * pyramid_kernel(x.dtype, x.device)[None, None]
    y = _per_channel(
        x, lambda t: F.conv_transpose2d(t, k, stride=2, padding=2, output_padding=1)
    )
    return resize(y, size)


def laplacian_pyramid(x: torch.Tensor, levels: int = 4) -> list[torch.Tensor]:
    """Laplacian pyramid ``[L_0, ..., L_{levels-1}, G_levels]`` (``levels + 1`` tensors)."""
    _check_levels(levels)
    dt = x.dtype
    g = x.to(_work_dtype(x))
    out = []
    for _ in range(levels):
        nxt = down(g)
        out.append(g - up(nxt, g.shape[-2:]))
        g = nxt
    out.append(g)
    return [t.to(dt) for t in out]


def reconstruct(pyr) -> torch.Tensor:
    """Collapse a Laplacian pyramid: ``R = base``, then ``R = up(R, size(L_k)) + L_k`` downwards."""
    pyr = list(pyr)
    dt = pyr[0].dtype
    r = pyr[-1].to(_work_dtype(pyr[-1]))
    for lap in reversed(pyr[:-1]):
        lap = lap.to(r.dtype)
        r = up(r, lap.shape[-2:]) + lap
    return r.to(dt)


def fuse(vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Guidance-weighted pyramid fusion: collapse of ``(1 - mu_k) * A_k + mu_k * B_k``.

    vis (B,C,H,W); ir (B,1,H,W) (used for every channel) or (B,C,H,W); mu (B,1,H,W).
    Returns (B,C,H,W) in vis's dtype.

    Levels past :func:`max_levels` are skipped: they would be 1x1 levels, where ``mu_k`` is one
    value per image, so their blend is linear and ``up(base) + L_k`` gives back the blend of
    the 1x1 Gaussian level they start from; computing them changes the result by rounding only
    (at most one unit in the last place of [0, 1] data, measured).
    """
    _check_levels(levels)
    levels = min(levels, max_levels(*vis.shape[-2:]))
    dt = vis.dtype
    wd = _work_dtype(vis)
    a = laplacian_pyramid(vis.to(wd), levels)
    b = laplacian_pyramid(ir.to(wd).expand_as(vis), levels)
    m = mu.to(wd)
    blended = []
    for ak, bk in zip(a, b):
        mk = resize(m, ak.shape[-2:])
        blended.append((1 - mk) * ak + mk * bk)
    return reconstruct(blended).to(dt)


def luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of a (B,3,H,W) image; a 1-channel image is returned as is. Shape (B,1,H,W)."""
    if x.shape[1] == 1:
        return x
    return _mix(x, LUMA)


def chroma(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BT.601 (Cb, Cr) of a (B,3,H,W) image without the 0.5 offset, each (B,1,H,W)."""
    return _mix(x, CB), _mix(x, CR)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> YCbCr (BT.601 full range, Cb/Cr offset by 0.5)."""
    cb, cr = chroma(x)
    return torch.cat([_mix(x, LUMA), cb + 0.5, cr + 0.5], dim=1)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (no clamping)."""
    y, cb, cr = x[:, 0:1], x[:, 1:2] - 0.5, x[:, 2:3] - 0.5
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return torch.cat([r, g, b], dim=1)


def sobel(x: torch.Tensor, padding: str = "zeros") -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel responses (gx, gy) of a (B,C,H,W) image, same size; padding "zeros" or "replicate"."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    k = torch.stack([kx, kx.t()])[:, None]
    mode = {"zeros": "constant", "replicate": "replicate"}[padding]

    def run(t):
        return _planes_conv(F.pad(t, (1, 1, 1, 1), mode=mode), k)

    b, c, h, w = x.shape
    g = run(x.reshape(b * c, 1, h, w)).reshape(b, c, 2, h, w)
    return g[:, :, 0], g[:, :, 1]


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with zero padding (odd ``size``), same output size."""
    t = gaussian_taps(size, sigma, dtype=x.dtype, device=x.device)
    p = size // 2

    def run(u):
        u = _planes_conv(u, t.view(1, 1, 1, size), padding=(0, p))
        return _planes_conv(u, t.view(1, 1, size, 1), padding=(p, 0))

    return _per_channel(x, run)


def _to_signed(x: torch.Tensor, value_range) -> torch.Tensor:
    lo, hi = (float(v) for v in value_range)
    return (x - lo) * (2.0 / (hi - lo)) - 1.0


def heuristic_guidance(vis: torch.Tensor, ir: torch.Tensor, value_range=(0.0, 1.0)) -> torch.Tensor:
    """The paper's hand-made guidance map w in [0,1], shape (B,1,H,W).

    Inputs are mapped from ``value_range`` to [-1,1]; a = luma(vis), b = luma(ir);
    w = sigmoid(3 ((b - a) + 0.5 (|grad b| - |grad a|))), blurred (9 taps, sigma 3), clamped.
    """
    dt = vis.dtype
    wd = _work_dtype(vis)
    a = luma(_to_signed(vis.to(wd), value_range))
    b = luma(_to_signed(ir.to(wd), value_range))

    def mag(t):
        gx, gy = sobel(t, "zeros")
        return torch.sqrt(gx * gx + gy * gy + 1e-12)

    w = torch.sigmoid(3.0 * ((b - a) + 0.5 * (mag(b) - mag(a))))
    return gaussian_blur(w, 9, 3.0).clamp(0.0, 1.0).to(dt)


def heuristic_blend(vis: torch.Tensor, ir: torch.Tensor, value_range=(0.0, 1.0)) -> torch.Tensor:
    """The paper's "heuristic weight map" baseline: per-pixel (1 - w) vis + w ir with w blurred
    once more (11 taps, sigma 3.5) and clamped. Shape of vis (B,1|3,H,W): a 3-channel ir with
    a 1-channel vis enters through its luma."""
    w = heuristic_guidance(vis, ir, value_range)
    w = gaussian_blur(w.to(_work_dtype(w)), 11, 3.5).clamp(0.0, 1.0)
    if vis.shape[1] == 1:
        ir = luma(ir)
    out = (1 - w) * vis.to(w.dtype) + w * ir.to(w.dtype)
    return out.to(vis.dtype)


__all__ = [
    "LUMA", "CB", "CR", "gaussian_taps", "pyramid_kernel", "down", "up", "resize", "laplacian_pyramid",
    "reconstruct", "fuse", "max_levels", "luma", "chroma", "rgb_to_ycbcr", "ycbcr_to_rgb", "sobel", "gaussian_blur",
    "heuristic_guidance", "heuristic_blend"
]
