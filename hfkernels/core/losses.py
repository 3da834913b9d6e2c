"""Public training losses: ``ssim``, ``ssim_per_image``, ``ssim_loss``, ``gradient_max_loss`` and
``FusionLoss``.

Each function validates its arguments, works out the constants (window shrunk to the image,
C1/C2 from the data range) and calls the backend that :func:`hfkernels.backends.select` picks
for the op ``"ssim"`` or ``"gradient_max"``. The contracts of those two ops (taps, padding
geometry, clamps, Sobel summation order, gradient conventions at ties) and the loss terms are
in docs/design.md, section 6; the plain transcription of the released loss, against which all
of this is tested, is :mod:`hfkernels.loss_reference`.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..ops._contracts import accumulation_dtype
from . import loss_reference as lref
from . import validate
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
    validate.same_device_dtype(ref, ref_name, **others)
    for name, t in others.items():
        if t.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {ref_name} has {tuple(ref.shape)}")


def _ssim_args(x, y, window_size, sigma, data_range, padding):
    validate.tensor4d(x, "x")
    validate.tensor4d(y, "y")
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
    """Mean SSIM of each image pair over channels and positions, shape (B,); arguments as :func:`ssim`.

    Example:
        >>> x = torch.rand(3, 1, 16, 16)
        >>> ssim_per_image(x, x).tolist()
        [1.0, 1.0, 1.0]
    """
    w, sigma, c1, c2 = _ssim_args(x, y, window_size, sigma, data_range, padding)
    _, impl = select("ssim", x.device, x.dtype, backend)
    return impl(x, y, w, sigma, c1, c2, padding)


def ssim(x, y, window_size: int = 11, sigma: float = 1.5, data_range=1.0, padding: str = "valid",
         *, backend: str | None = None) -> torch.Tensor:
    """Mean structural similarity of x and y, a 0-dim tensor, differentiable in both.

    The training loss's SSIM of two images (Gaussian window, the fast ops). Not
    :func:`hfkernels.metrics.ssim`, the evaluation metric, which scores a fusion against both
    sources (SSIM(A, F) + SSIM(B, F), 0 to 2) by the published protocol.

    Args:
        x, y: (B, C, H, W) images of one shape, floating dtype and device.
        window_size: Gaussian window side (>= 1), shrunk to ``min(window_size, H, W)``; an even
            window is off-centre (centre tap ``window_size // 2``).
        sigma: Gaussian standard deviation (> 0).
        data_range: dynamic range L (C1 = (0.01 L)^2, C2 = (0.03 L)^2); ``None`` applies the
            released rule to ``x`` (docs/design.md, section 6.1).
        padding: ``"valid"`` (window inside the image) or ``"same"`` (zero padding).
        backend: see :func:`hfkernels.available_backends`.

    Returns:
        0-dim tensor: the mean over images, channels and positions.

    Example:
        >>> x = torch.rand(2, 3, 32, 32)
        >>> float(ssim(x, x))
        1.0
    """
    return ssim_per_image(x, y, window_size, sigma, data_range, padding, backend=backend).mean()


def ssim_loss(x, y, window_size: int = 11, sigma: float = 1.5, data_range=1.0, padding: str = "valid",
              *, backend: str | None = None) -> torch.Tensor:
    """``1 - ssim(...)``, a 0-dim tensor; arguments as :func:`ssim`."""
    return 1.0 - ssim(x, y, window_size, sigma, data_range, padding, backend=backend)


def gradient_max_loss(a, b, f, *, backend: str | None = None) -> torch.Tensor:
    """Sobel gradient-max loss of a fused image against its sources (docs/design.md, section 6.2).

    ``L1(|Sx f|, max(|Sx a|, |Sx b|)) + L1(|Sy f|, max(|Sy a|, |Sy b|))``, replicate padding.

    Args:
        a, b: (B, C, H, W) sources; f: (B, C, H, W) fused image; one shape, dtype and device.
        backend: see :func:`hfkernels.available_backends`.

    Returns:
        0-dim tensor, differentiable in all three.

    Example:
        >>> a = torch.rand(1, 1, 8, 8)
        >>> float(gradient_max_loss(a, a, a))
        0.0
    """
    validate.tensor4d(a, "a")
    validate.tensor4d(b, "b")
    validate.tensor4d(f, "f")
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


_W = lref.RELEASED_WEIGHTS


class FusionLoss(nn.Module):
    """The paper's released training loss, before the training scale of 0.1.

    ``total = max + consist + grad + ssim + color``, each term multiplied by its weight; the
    terms are defined in docs/design.md, section 6.3 (plain form: :mod:`hfkernels.loss_reference`).

    Args:
        max_w, consist_w, grad_w, ssim_w, ssim_ir_w, ir_compose, color_w: term weights (the
            released defaults); from ``ssim_w`` on by keyword only.
        window_size: SSIM window (sigma 1.5, valid padding, released data-range rule).
        **released: the released loss's keyword names as aliases (:data:`RELEASED_NAMES`:
            ``max_ratio``, ``consist_ratio``, ``grad_ratio``, ``ssim_ratio``, ``ssim_ir_ratio``,
            ``color_ratio``, ``ssim_window_size``; ``max_mode="l1"``, ``consist_mode="l1"``).
        backend: a backend implementing ``"ssim"`` and ``"gradient_max"`` (checked here; whether
            it runs on the inputs' device is known only at the call).
        check_range: raise ``ValueError`` when ``vis`` or ``ir`` leaves [-1 - 1e-3, 1 + 1e-3] or
            holds NaN (one min/max and one host synchronisation per call). A [0, 255] input would
            otherwise train silently against other SSIM constants. ``fused`` is not checked: a
            Laplacian fusion may overshoot. False accepts any range, as the released code does.

    Shape:
        ``forward(vis, ir, fused, return_terms=False)``: vis (B, 3, H, W), ir (B, 1|3, H, W),
        fused (B, 3, H, W), all in [-1, 1]. Returns the 0-dim total, or ``(total, terms)`` with
        the weighted terms ``{"max", "consist", "grad", "ssim", "color"}``. Computed in float32
        with autocast off (float64 stays float64).

    Example:
        >>> vis, ir = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 1, 64, 64) * 2 - 1
        >>> total, terms = FusionLoss()(vis, ir, vis, return_terms=True)
        >>> sorted(terms)
        ['color', 'consist', 'grad', 'max', 'ssim']
    """

    #: the released loss's keyword names, accepted as aliases (a released script then changes by
    #: its import line only); its ``max_mode``/``consist_mode`` take only the released "l1"
    RELEASED_NAMES = {"max_ratio": "max_w", "consist_ratio": "consist_w", "grad_ratio": "grad_w",
                      "ssim_ratio": "ssim_w", "ssim_ir_ratio": "ssim_ir_w", "color_ratio": "color_w",
                      "ssim_window_size": "window_size"}

    def __init__(self, max_w=_W["max_w"], consist_w=_W["consist_w"], grad_w=_W["grad_w"], *, ssim_w=_W["ssim_w"],
                 ssim_ir_w=_W["ssim_ir_w"], ir_compose=_W["ir_compose"], color_w=_W["color_w"],
                 window_size=lref.RELEASED_WINDOW, backend: str | None = None, check_range: bool = True,
                 **released):
        super().__init__()
        # keyword-only past grad_w: the released loss orders ssim_ir before ssim, so a positional
        # call would swap them silently
        given = dict(max_w=max_w, consist_w=consist_w, grad_w=grad_w, ssim_w=ssim_w, ssim_ir_w=ssim_ir_w,
                     color_w=color_w, window_size=window_size)
        defaults = dict(_W, window_size=lref.RELEASED_WINDOW)
        for name, v in released.items():
            if name in ("max_mode", "consist_mode"):
                if v != "l1":
                    raise ValueError(f"{name} must be 'l1' (the only mode the released loss is used with), got {v!r}")
                continue
            ours = self.RELEASED_NAMES.get(name)
            if ours is None:
                raise TypeError(f"FusionLoss got an unexpected keyword argument {name!r}")
            if given[ours] != defaults[ours]:
                raise TypeError(f"FusionLoss got both {ours} and its released name {name}")
            given[ours] = v
        max_w, consist_w, grad_w, ssim_w, ssim_ir_w, color_w, window_size = (
            given[k] for k in ("max_w", "consist_w", "grad_w", "ssim_w", "ssim_ir_w", "color_w", "window_size"))
        for name, v in (("max_w", max_w), ("consist_w", consist_w), ("grad_w", grad_w), ("ssim_w", ssim_w),
                        ("ssim_ir_w", ssim_ir_w), ("ir_compose", ir_compose), ("color_w", color_w)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite number, got {v!r}")
        self.weights = dict(max_w=float(max_w), consist_w=float(consist_w), grad_w=float(grad_w),
                            ssim_w=float(ssim_w), ssim_ir_w=float(ssim_ir_w), ir_compose=float(ir_compose),
                            color_w=float(color_w))
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
        validate.tensor4d(vis, "vis")
        validate.tensor4d(ir, "ir")
        validate.tensor4d(fused, "fused")
        if vis.shape[1] != 3:
            raise ValueError(f"vis must have 3 channels (RGB), got shape {tuple(vis.shape)}")
        _same_shape(vis, "vis", fused=fused)
        validate.same_device_dtype(vis, "vis", ir=ir)
        if ir.shape[1] not in (1, 3) or ir.shape[0] != vis.shape[0] or ir.shape[-2:] != vis.shape[-2:]:
            raise ValueError(f"ir must have shape (B, 1 or 3, H, W) matching vis {tuple(vis.shape)}, "
                             f"got {tuple(ir.shape)}")
        if self.check_range:
            _check_signed_unit_range(vis=vis, ir=ir)
        dt = accumulation_dtype(vis)
        with torch.autocast(vis.device.type, enabled=False):
            return self._loss(vis.to(dt), ir.to(dt), fused.to(dt), return_terms)

    def _loss(self, A, ir, F_, return_terms):
        bk = self.backend
        total, terms = lref.fusion_loss(
            A, ir, F_, **self.weights, window_size=self.window_size,
            ssim_loss_fn=lambda x, y, ws, sigma, dr: ssim_loss(x, y, ws, sigma, dr, backend=bk),
            gradient_max_fn=lambda a, b, f: gradient_max_loss(a, b, f, backend=bk),
            # one op forward and backward where the backend has it (hfkernels.ops.lossterms_cpu)
            elementwise_fn=_fused_terms(A, bk),
        )
        return (total, terms) if return_terms else total


def _fused_terms(x: torch.Tensor, backend: str | None):
    """The elementwise terms of FusionLoss as one op (``"lossterms"``) of the backend the loss
    runs its SSIM on, or None where that backend has none (the composition is then inline)."""
    name, _ = select("ssim", x.device, x.dtype, backend)
    return get_backend(name).ops.get("lossterms")


__all__ = ["ssim", "ssim_per_image", "ssim_loss", "gradient_max_loss", "FusionLoss"]
