"""What every backend of an op shares: the op's contract beyond its forward value.

- the accumulation dtype (:func:`accumulation_dtype`) and SSIM's kept taps (:func:`kept_taps`)
  and output size (:func:`ssim_out_size`), so that no backend decides them on its own;
- the plain-PyTorch formulations that double backward differentiates (``*_reference_vjp``):
  every backend's first-order kernel is exact, and under ``create_graph=True`` the wiring
  (:mod:`._wiring`) switches to these.

Backend modules (``*_torch``, ``*_triton``, ``*_ext``) import from here, never from each other.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..core import loss_reference as lref
from ..core import reference as ref
from ..core.reference import gaussian_taps
from ._wiring import differentiable_vjp

HALF = (torch.float16, torch.bfloat16)


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype every backend accumulates in for inputs like ``x``: float64 for float64, else
    float32 (half-precision inputs are loaded and stored in their own dtype)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def ssim_out_size(h: int, w: int, window_size: int, padding: str) -> tuple[int, int]:
    """(H', W') of the SSIM map: the input's size for ``"same"``, the valid range otherwise."""
    return (h, w) if padding == "same" else (h - window_size + 1, w - window_size + 1)


@functools.lru_cache(maxsize=64)
def kept_taps(window_size: int, sigma: float, dtype: torch.dtype) -> tuple[tuple[float, ...], int]:
    """The SSIM window's taps that every backend applies: ``(taps, lo)``, the normalised Gaussian
    taps of :func:`hfkernels.core.reference.gaussian_taps` from index ``lo`` on, ``len(taps) <= window_size``.

    The one rule, for every backend (torch, Triton, and the C++/CUDA kernels, which receive the
    result): the leading and trailing taps below half an ulp of the centre tap in ``dtype`` (the
    accumulation dtype: float64 for float64 inputs, else float32) are dropped; ``t_i < t_c eps/2``
    cannot change a sum that holds the centre term. A window of 48 at sigma 1.5 keeps 17 taps in
    float32 and 25 in float64.
    """
    t = gaussian_taps(window_size, sigma)
    keep = (t >= t[window_size // 2] * (torch.finfo(dtype).eps / 2)).nonzero().flatten()
    lo, hi = int(keep[0]), int(keep[-1])
    return tuple(float(v) for v in t[lo : hi + 1]), lo


def ssim_from_stats(mu1, mu2, e11, e22, e12, c1: float, c2: float) -> torch.Tensor:
    """Pointwise SSIM from filtered E[x], E[y], E[x^2], E[y^2], E[xy], with the clamps of
    ``loss_reference.ssim_map`` (variances >= 0, |covariance| <= their mean)."""
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = (e11 - mu11).clamp_min(0)
    s2 = (e22 - mu22).clamp_min(0)
    bound = 0.5 * (s1 + s2)
    s12 = torch.clamp(e12 - mu12, -bound, bound)
    return ((2 * mu12 + c1) * (2.0 * s12 + c2)) / ((mu11 + mu22 + c1) * (s1 + s2 + c2))


def ssim_autograd(x, y, window_size: int, sigma: float, c1: float, c2: float, padding: str) -> torch.Tensor:
    """The "ssim" op's contract (B,) in plain differentiable PyTorch: two 1-D ``conv2d`` passes
    with every tap, then :func:`ssim_from_stats`. Half precision is computed in float32."""
    taps = tuple(gaussian_taps(window_size, sigma).tolist())
    return ssim_autograd_kept(x, y, taps, 0, window_size, c1, c2, padding)


def ssim_autograd_kept(x, y, taps, lo: int, window_size: int, c1: float, c2: float, padding: str) -> torch.Tensor:
    """:func:`ssim_autograd` with only the window's taps ``taps`` from index ``lo`` on (as
    :func:`kept_taps` gives them): the exact, differentiable function of an op that receives
    its taps, for its double backward. x, y (B,C,H,W) -> (B,)."""
    dtype = x.dtype
    if dtype in HALF:
        x, y = x.float(), y.float()
    b, c, h, w = x.shape
    t = torch.tensor(taps, dtype=torch.float64).to(dtype=x.dtype, device=x.device)
    planes = torch.stack([x, y, x * x, y * y, x * y]).reshape(5 * b * c, 1, h, w)
    if padding == "same":
        planes = F.pad(planes, lref.same_padding(window_size))
    # output pixel q reads window taps lo..lo+k-1, i.e. padded rows/columns q+lo .. q+lo+k-1
    cut = window_size - lo - len(taps)
    planes = planes[..., lo : planes.shape[-2] - cut, lo : planes.shape[-1] - cut]
    st = F.conv2d(F.conv2d(planes, t.view(1, 1, 1, -1)), t.view(1, 1, -1, 1))
    st = st.view(5, b, c, st.shape[-2], st.shape[-1])
    return ssim_from_stats(*st.unbind(0), c1, c2).flatten(1).mean(1).to(dtype)


def ssim_reference_vjp(grad, x, y, window_size, sigma, c1, c2, padding, save=None):
    """Differentiable gradients (x, y) of the "ssim" op, for any backend's double backward.
    ``save`` (the forward's flag, which the wiring passes along) does not change them."""
    return differentiable_vjp(
        lambda a, b: ssim_autograd(a, b, window_size, sigma, c1, c2, padding), grad, x, y
    )


def gradient_max_reference_vjp(grad, a, b, f):
    """Differentiable gradients (a, b, f) of the "gradient_max" op, for double backward."""
    return differentiable_vjp(lref.gradient_max, grad, a, b, f)


def saved_or_recomputed(coefs: torch.Tensor, x: torch.Tensor, recompute) -> torch.Tensor:
    """SSIM's derivative maps for its backward: those the forward saved, or, when it saved none
    (no input required grad then, e.g. a graph built under ``no_grad`` and re-entered),
    ``recompute()``. The Triton backend recomputes inside its backward kernel instead."""
    return coefs if coefs.numel() or x.numel() == 0 else recompute()


def fuse_reference_vjp(grad, vis, ir, mu, levels: int):
    """Differentiable gradients (vis, ir, mu) of ``fuse``, for any backend's double backward."""
    return differentiable_vjp(lambda a, b, m: ref.fuse(a, b, m, levels), grad, vis, ir, mu)
