"""Plain PyTorch transcription of the paper's released training loss: the oracle for the loss ops.

Written for clarity, not speed: SSIM filters with a dense 2-D Gaussian window (five grouped
``conv2d`` calls, as the released code does), Sobel and the elementwise terms are spelled out.
The released formulation, written plainly. Everything is differentiable through autograd, so the gradients
here are the ones every backend must reproduce.

Two places where this file pins down what the released code leaves to floating point (both are
no-ops in exact arithmetic, so the values are the released ones):

- SSIM variances are clamped at 0 and the covariance to ``[-(s1+s2)/2, (s1+s2)/2]`` (a bound
  that Cauchy-Schwarz and AM-GM guarantee exactly). Rounding can make ``E[x^2] - mu^2`` slightly
  negative; with the clamps a constant image compared with itself gives exactly 1 and no NaN.
- Sobel responses are evaluated in one fixed order, ``(d_top + 2 d_mid) + d_bottom`` with
  ``d = right - left`` (and the transposed form for y), instead of a convolution whose
  accumulation order depends on the library. The gradient-max term has kinks where
  ``|Sobel a| == |Sobel b|`` or ``|Sobel f|`` equals their max; a fixed order makes every
  backend see the same ties (a flat region gives exactly 0), so gradients agree exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# BT.601 luma and chroma come from the reference module (one definition of the coefficients);
# they are re-exported here because the released loss is written in their terms.
from .reference import chroma, gaussian_taps, luma


def released_data_range(x: torch.Tensor) -> float:
    """The released rule for L: 255 if max(x) > 128 else 1, minus -1 if min(x) < -0.5 else 0."""
    max_val = 255.0 if float(x.detach().max()) > 128 else 1.0
    min_val = -1.0 if float(x.detach().min()) < -0.5 else 0.0
    return max_val - min_val


def gaussian_window(size: int, sigma: float, channels: int, dtype, device) -> torch.Tensor:
    """Dense (channels, 1, size, size) window: outer product of :func:`gaussian_taps`."""
    t = gaussian_taps(size, sigma)
    return torch.outer(t, t).to(dtype=dtype, device=device).expand(channels, 1, size, size).contiguous()


def same_padding(window_size: int) -> tuple[int, int, int, int]:
    """``F.pad`` amounts for "same" SSIM: the centre tap ``w//2`` sits on the output pixel, so an
    even window gets one more row/column of zeros before than after."""
    before = window_size // 2
    after = window_size - 1 - before
    return (before, after, before, after)


def ssim_map(x, y, window_size=11, sigma=1.5, data_range=1.0, padding="valid") -> torch.Tensor:
    """Per-pixel SSIM map of x, y (B,C,H,W) -> (B,C,H',W') with the dense 2-D window.

    The window is shrunk to ``min(window_size, H, W)``; ``data_range=None`` applies
    :func:`released_data_range` to ``x``; ``padding`` "valid" (H' = H - w + 1) or "same"
    (zero padding, H' = H).
    """
    _, c, h, w_ = x.shape
    w = min(window_size, h, w_)
    L = released_data_range(x) if data_range is None else float(data_range)
    win = gaussian_window(w, sigma, c, x.dtype, x.device)
    if padding == "same":
        pad = same_padding(w)
        x, y = F.pad(x, pad), F.pad(y, pad)

    def filt(t):
        return F.conv2d(t, win, groups=c)

    mu1, mu2 = filt(x), filt(y)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = (filt(x * x) - mu1_sq).clamp_min(0)
    sigma2_sq = (filt(y * y) - mu2_sq).clamp_min(0)
    bound = 0.5 * (sigma1_sq + sigma2_sq)
    sigma12 = torch.clamp(filt(x * y) - mu1_mu2, -bound, bound)
    c1 = (0.01 * L) ** 2
    c2 = (0.03 * L) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma1_sq + sigma2_sq + c2
    return ((2 * mu1_mu2 + c1) * v1) / ((mu1_sq + mu2_sq + c1) * v2)


def ssim_per_image(x, y, window_size=11, sigma=1.5, data_range=1.0, padding="valid") -> torch.Tensor:
    """Mean SSIM of each image over channels and positions, shape (B,)."""
    return ssim_map(x, y, window_size, sigma, data_range, padding).flatten(1).mean(1)


def ssim(x, y, window_size=11, sigma=1.5, data_range=1.0, padding="valid") -> torch.Tensor:
    """Mean SSIM over everything (the released ``ssim(...)`` with ``size_average=True``)."""
    return ssim_map(x, y, window_size, sigma, data_range, padding).mean()


def ssim_loss(x, y, window_size=11, sigma=1.5, data_range=1.0, padding="valid") -> torch.Tensor:
    return 1.0 - ssim(x, y, window_size, sigma, data_range, padding)


def sobel_replicate(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel (gx, gy) of x (B,C,H,W) with replicate padding, same size, in the fixed order
    ``gx = (d[i-1] + 2 d[i]) + d[i+1]`` with ``d[r] = p[r, j+1] - p[r, j-1]`` (gy transposed).

    Equal to cross-correlation with ``[[-1,0,1],[-2,0,2],[-1,0,1]]`` (and its transpose).
    """
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    d = p[..., :, 2:] - p[..., :, :-2]  # (.., H+2, W)
    gx = (d[..., :-2, :] + 2 * d[..., 1:-1, :]) + d[..., 2:, :]
    e = p[..., 2:, :] - p[..., :-2, :]  # (.., H, W+2)
    gy = (e[..., :, :-2] + 2 * e[..., :, 1:-1]) + e[..., :, 2:]
    return gx, gy


def gradient_max(a, b, f) -> torch.Tensor:
    """``mean(| |Sx f| - max(|Sx a|, |Sx b|) |) + mean(| |Sy f| - max(|Sy a|, |Sy b|) |)``."""
    ax, ay = sobel_replicate(a)
    bx, by = sobel_replicate(b)
    fx, fy = sobel_replicate(f)
    lx = F.l1_loss(fx.abs(), torch.maximum(ax.abs(), bx.abs()))
    ly = F.l1_loss(fy.abs(), torch.maximum(ay.abs(), by.abs()))
    return lx + ly


#: the released loss's weights and SSIM window: the defaults of :func:`fusion_loss` and of
#: :class:`hfkernels.FusionLoss`, stated once
RELEASED_WEIGHTS = dict(max_w=10.0, consist_w=2.0, grad_w=40.0, ssim_w=1.0, ssim_ir_w=1.0, ir_compose=2.0, color_w=2.0)
RELEASED_WINDOW = 48


def fusion_loss(
    vis, ir, fused, max_w=RELEASED_WEIGHTS["max_w"], consist_w=RELEASED_WEIGHTS["consist_w"],
    grad_w=RELEASED_WEIGHTS["grad_w"], ssim_w=RELEASED_WEIGHTS["ssim_w"], ssim_ir_w=RELEASED_WEIGHTS["ssim_ir_w"],
    ir_compose=RELEASED_WEIGHTS["ir_compose"], color_w=RELEASED_WEIGHTS["color_w"], window_size=RELEASED_WINDOW,
    *, ssim_loss_fn=None, gradient_max_fn=None, elementwise_fn=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The released loss before the 0.1 training scale: ``(total, weighted terms)``.

    vis (B,3,H,W), ir (B,1|3,H,W) (1 channel is repeated to 3), fused (B,3,H,W), all in [-1,1].
    Terms: "max", "consist", "grad", "ssim", "color", each already multiplied by its weight.
    The colour term is ``L1(Cb_A, Cb_F) + L1(Cr_A, Cr_F)``.

    ``ssim_loss_fn(x, y, window_size, sigma, data_range)`` and ``gradient_max_fn(a, b, f)``
    default to this module's plain versions; :class:`hfkernels.FusionLoss` passes the fast ops,
    so the composition of the terms is written once, here. ``elementwise_fn(A, B3, F, ir_compose)
    -> (max_term, consist, color, gA, gB, gF)`` (B3: ir with 3 channels) replaces the elementwise
    terms and the lumas below by one op (the ``cpu`` backend's ``"lossterms"``).
    """
    ssim_loss_fn = ssim_loss_fn or ssim_loss
    gradient_max_fn = gradient_max_fn or gradient_max
    A, F_ = vis, fused
    B = ir.repeat(1, 3, 1, 1) if ir.shape[1] == 1 else ir
    if elementwise_fn is not None:
        max_term, consist, color, gA, gB, gF = elementwise_fn(A, B, F_, ir_compose)
    else:
        gA, gB, gF = luma(A), luma(B), luma(F_)

        use_b = B.mean(1, keepdim=True) > A.mean(1, keepdim=True)
        target = torch.where(use_b, B, A)
        max_term = F.l1_loss(F_, target)

        consist = (F.l1_loss(gF, gA) + ir_compose * F.l1_loss(gF, gB)) / 2

        cbA, crA = chroma(A)
        cbF, crF = chroma(F_)
        color = F.l1_loss(cbF, cbA) + F.l1_loss(crF, crA)

    ssim_term = ssim_loss_fn(A, F_, window_size, 1.5, None) + ssim_ir_w * ssim_loss_fn(gB, gF, window_size, 1.5, None)

    grad = gradient_max_fn(gA, gB, gF)

    terms = {
        "max": max_w * max_term,
        "consist": consist_w * consist,
        "grad": grad_w * grad,
        "ssim": ssim_w * ssim_term,
        "color": color_w * color,
    }
    total = terms["max"] + terms["consist"] + terms["grad"] + terms["ssim"] + terms["color"]
    return total, terms


__all__ = [
    "released_data_range", "gaussian_window", "same_padding", "ssim_map", "ssim_per_image", "ssim",
    "ssim_loss", "sobel_replicate", "gradient_max", "luma", "chroma", "fusion_loss", "RELEASED_WEIGHTS",
    "RELEASED_WINDOW",
]
