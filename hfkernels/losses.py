"""Public training losses: ``ssim``, ``ssim_loss``, ``gradient_max_loss`` and ``FusionLoss``.

Each function validates its arguments, works out the constants, and calls the backend chosen by
:func:`hfkernels.backends.select` for one of two ops. The contracts every backend implements:

``"ssim"``: ``impl(x, y, window_size, sigma, c1, c2, padding) -> (B,)`` per-image mean SSIM over
    channels and positions. x, y (B,C,H,W) of one shape, dtype and device; ``window_size <=
    min(H, W)`` (the caller shrinks it); Gaussian taps ``exp(-(i - w//2)^2 / (2 sigma^2))``,
    i = 0..w-1, normalised (even windows are off-centre); ``padding`` "valid" (output
    (H-w+1, W-w+1)) or "same" (zero padding, output (H, W), output pixel p sees input
    ``p - w//2 + i`` through tap i — so an even window has w//2 zero rows before, w//2 - 1 after).
    With ``s1 = max(E[x^2] - mu1^2, 0)``, ``s2`` likewise, ``s12 = clamp(E[xy] - mu1 mu2,
    -(s1+s2)/2, (s1+s2)/2)``: ``ssim = (2 mu1 mu2 + c1)(2 s12 + c2) / ((mu1^2 + mu2^2 + c1)(s1 + s2
    + c2))``. Differentiable in x and y, with torch's conventions at the clamps. Taps below the
    dtype's resolution may be dropped.
``"gradient_max"``: ``impl(a, b, f) -> 0-dim``: ``mean(| |Sx f| - max(|Sx a|, |Sx b|) |) +
    mean(| |Sy f| - max(|Sy a|, |Sy b|) |)``, 3x3 Sobel with replicate padding evaluated as
    ``(d_top + 2 d_mid) + d_bottom`` (``d = right - left``; transposed for y) so that ties are
    the same in every backend. Differentiable in a, b, f with autograd's conventions:
    ``d|v|/dv = sign(v)`` (0 at 0), ``maximum`` splits its gradient equally at ties.

The plain transcription of the released loss, against which all of this is tested, is
:mod:`hfkernels.loss_reference`.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from . import _validate as V
from . import loss_reference as lref
from .backends import get_backend, select

_PADDINGS = ("valid", "same")


def _int_arg(v, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def _positive(v, name: str, allow_none: bool = False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        kind = "a number or None" if allow_none else "a number"
        raise TypeError(f"{name} must be {kind}, got {type(v).__name__}")
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {v}")
    return v


def _same_shape(ref: torch.Tensor, ref_name: str, **others: torch.Tensor) -> None:
    V.same_device_dtype(ref, ref_name, **others)
    for name, t in others.items():
        if t.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {ref_name} has {tuple(ref.shape)}")


def _ssim_args(x, y, window_size, sigma, data_range, padding):
    V.tensor4d(x, "x")
    V.tensor4d(y, "y")
    _same_shape(x, "x", y=y)
    window_size = _int_arg(window_size, "window_size", 1)
    sigma = _positive(sigma, "sigma")
    data_range = _positive(data_range, "data_range", allow_none=True)
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    h, w = x.shape[-2:]
    window_size = min(window_size, h, w)
    L = lref.released_data_range(x) if data_range is None else data_range
    return window_size, sigma, (0.01 * L) ** 2, (0.03 * L) ** 2


def ssim_per_image(x, y, window_size: int = 11, sigma: float = 1.5, data_range=1.0, padding: str = "valid",
                   *, backend: str | None = None) -> torch.Tensor:
    """Mean SSIM of each image pair, shape (B,); arguments as :func:`ssim`."""
    w, sigma, c1, c2 = _ssim_args(x, y, window_size, sigma, data_range, padding)
    _, impl = select("ssim", x.device, x.dtype, backend)
    return impl(x, y, w, sigma, c1, c2, padding)


def ssim(x, y, window_size: int = 11, sigma: float = 1.5, data_range=1.0, padding: str = "valid",
         *, backend: str | None = None) -> torch.Tensor:
    """Mean structural similarity of x and y, a 0-dim tensor, differentiable in both.

    Args:
        x, y: (B, C, H, W) images of one shape, floating dtype and device.
        window_size: Gaussian window side (>= 1), shrunk to ``min(window_size, H, W)``; an even
            window is off-centre (its centre tap is ``window_size // 2``).
        sigma: Gaussian standard deviation (> 0).
        data_range: dynamic range L (C1 = (0.01 L)^2, C2 = (0.03 L)^2); ``None`` applies the
            released rule to ``x``: 255 if max(x) > 128 else 1, minus -1 if min(x) < -0.5 else 0.
        padding: "valid" (the window stays inside the image) or "same" (zero padding).
        backend: see :func:`hfkernels.available_backends`.

    Returns the mean over images, channels and positions (all images share one size, so it is
    also the mean of the per-image means).
    """
    return ssim_per_image(x, y, window_size, sigma, data_range, padding, backend=backend).mean()


def ssim_loss(x, y, window_size: int = 11, sigma: float = 1.5, data_range=1.0, padding: str = "valid",
              *, backend: str | None = None) -> torch.Tensor:
    """``1 - ssim(...)``, a 0-dim tensor."""
    return 1.0 - ssim(x, y, window_size, sigma, data_range, padding, backend=backend)


def gradient_max_loss(a, b, f, *, backend: str | None = None) -> torch.Tensor:
    """Sobel gradient-max loss of a fused image f against sources a, b (all (B,C,H,W)):
    ``L1(|Sx f|, max(|Sx a|, |Sx b|)) + L1(|Sy f|, max(|Sy a|, |Sy b|))`` with replicate padding.
    Returns a 0-dim tensor, differentiable in all three."""
    V.tensor4d(a, "a")
    V.tensor4d(b, "b")
    V.tensor4d(f, "f")
    _same_shape(f, "f", a=a, b=b)
    _, impl = select("gradient_max", f.device, f.dtype, backend)
    return impl(a, b, f)


#: slack of FusionLoss's input-range check: images mapped by ``x * 2 - 1`` from [0, 1] are exact
_RANGE_SLACK = 1e-3


def _check_signed_unit_range(**tensors: torch.Tensor) -> None:
    """Raise ValueError naming the first tensor with values outside [-1, 1] (+- slack) or NaN."""
    named = [(n, t) for n, t in tensors.items() if t.numel() > 0]
    if not named:
        return
    with torch.no_grad():  # one host synchronisation for all of them
        ext = torch.stack([v.float() for _, t in named for v in torch.aminmax(t.detach())]).tolist()
    for (name, _), lo, hi in zip(named, ext[0::2], ext[1::2]):
        if not (lo >= -1.0 - _RANGE_SLACK and hi <= 1.0 + _RANGE_SLACK):  # NaN fails too
            raise ValueError(f"{name} must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]; map [0, 1] "
                             "images with x * 2 - 1, or build FusionLoss(check_range=False) to accept any range")


class FusionLoss(nn.Module):
    """The paper's released training loss (plain form in ``hfkernels/loss_reference.py``), before the 0.1 scale.

    ``total = max_w * L1(target, F) + consist_w * (L1(gray A, gray F) + ir_compose * L1(gray B,
    gray F)) / 2 + grad_w * gradient_max(gray A, gray B, gray F) + ssim_w * (ssim_loss(A, F) +
    ssim_ir_w * ssim_loss(gray B, gray F)) + color_w * (L1(Cb A, Cb F) + L1(Cr A, Cr F))`` with
    A = vis, B = ir (repeated to 3 channels), F = fused, target = B where the channel mean of B
    exceeds that of A, else A; SSIM with sigma 1.5, valid padding and the released data-range rule.

    ``forward(vis, ir, fused, return_terms=False)``: vis (B,3,H,W), ir (B,1|3,H,W), fused
    (B,3,H,W), all in [-1, 1]. Returns the 0-dim total, or ``(total, terms)`` with the weighted
    terms ``{"max", "consist", "grad", "ssim", "color"}``. Under autocast the loss is computed in
    float32 (float64 inputs stay float64); the result has that dtype.

    ``backend`` is checked here (a known name, implementing "ssim" and "gradient_max"); whether it
    runs on the inputs' device is known only at the call.

    Input range: with ``check_range=True`` (default) a call raises ValueError when ``vis`` or
    ``ir`` holds values outside [-1 - 1e-3, 1 + 1e-3] (or NaN): a [0, 255] or otherwise wrong
    range would otherwise train silently against other SSIM constants (the data-range rule
    adapts to it) and other loss weights. ``fused`` is not checked: a Laplacian fusion of
    in-range sources may overshoot [-1, 1]. The check is one min/max reduction of the sources
    and one host synchronisation per call (the SSIM data-range rule already synchronises
    twice). ``check_range=False`` skips it and accepts any range, as the released code does.
    """

    def __init__(self, max_w=10.0, consist_w=2.0, grad_w=40.0, ssim_w=1.0, ssim_ir_w=1.0, ir_compose=2.0,
                 color_w=2.0, window_size=48, backend: str | None = None, check_range: bool = True):
        super().__init__()
        for name, v in (("max_w", max_w), ("consist_w", consist_w), ("grad_w", grad_w), ("ssim_w", ssim_w),
                        ("ssim_ir_w", ssim_ir_w), ("ir_compose", ir_compose), ("color_w", color_w)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite number, got {v!r}")
        self.weights = dict(max=float(max_w), consist=float(consist_w), grad=float(grad_w), ssim=float(ssim_w),
                            ssim_ir=float(ssim_ir_w), ir_compose=float(ir_compose), color=float(color_w))
        self.window_size = _int_arg(window_size, "window_size", 1)
        if backend is not None:
            if not isinstance(backend, str):
                raise TypeError(f"backend must be a string or None, got {type(backend).__name__}")
            missing = [op for op in ("ssim", "gradient_max") if op not in get_backend(backend).ops]
            if missing:
                raise ValueError(f"backend {backend!r} does not implement {' and '.join(missing)}, "
                                 "which FusionLoss needs")
        if not isinstance(check_range, bool):
            raise TypeError(f"check_range must be a bool, got {type(check_range).__name__}")
        self.backend = backend
        self.check_range = check_range

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return f"{w}, window_size={self.window_size}, backend={self.backend!r}, check_range={self.check_range}"

    def forward(self, vis, ir, fused, return_terms: bool = False):
        V.tensor4d(vis, "vis")
        V.tensor4d(ir, "ir")
        V.tensor4d(fused, "fused")
        if vis.shape[1] != 3:
            raise ValueError(f"vis must have 3 channels (RGB), got shape {tuple(vis.shape)}")
        _same_shape(vis, "vis", fused=fused)
        V.same_device_dtype(vis, "vis", ir=ir)
        if ir.shape[1] not in (1, 3) or ir.shape[0] != vis.shape[0] or ir.shape[-2:] != vis.shape[-2:]:
            raise ValueError(f"ir must have shape (B, 1 or 3, H, W) matching vis {tuple(vis.shape)}, "
                             f"got {tuple(ir.shape)}")
        if self.check_range:
            _check_signed_unit_range(vis=vis, ir=ir)
        dt = torch.float64 if vis.dtype == torch.float64 else torch.float32
        with torch.autocast(vis.device.type, enabled=False):
            return self._loss(vis.to(dt), ir.to(dt), fused.to(dt), return_terms)

    def _loss(self, A, ir, F_, return_terms):
        w, bk = self.weights, self.backend
        B = ir.expand(-1, 3, -1, -1) if ir.shape[1] == 1 else ir
        gA, gB, gF = lref.luma(A), lref.luma(B), lref.luma(F_)

        ws = self.window_size
        ssim_term = ssim_loss(A, F_, ws, 1.5, None, backend=bk) + w["ssim_ir"] * ssim_loss(gB, gF, ws, 1.5, None, backend=bk)

        target = torch.where(B.mean(1, keepdim=True) > A.mean(1, keepdim=True), B, A)
        max_term = (F_ - target).abs().mean()
        consist = ((gF - gA).abs().mean() + w["ir_compose"] * (gF - gB).abs().mean()) / 2
        (cbA, crA), (cbF, crF) = lref.chroma(A), lref.chroma(F_)
        color = (cbF - cbA).abs().mean() + (crF - crA).abs().mean()
        grad = gradient_max_loss(gA, gB, gF, backend=bk)

        terms = {
            "max": w["max"] * max_term,
            "consist": w["consist"] * consist,
            "grad": w["grad"] * grad,
            "ssim": w["ssim"] * ssim_term,
            "color": w["color"] * color,
        }
        total = terms["max"] + terms["consist"] + terms["grad"] + terms["ssim"] + terms["color"]
        return (total, terms) if return_terms else total


__all__ = ["ssim", "ssim_per_image", "ssim_loss", "gradient_max_loss", "FusionLoss"]
