"""C++ extension backends ("cpu", "cuda") of the loss ops "ssim" and "gradient_max".

The kernels live in ``csrc/cpu/loss_cpu.cpp`` (CPU, also the op schemas) and
``csrc/cuda/loss_kernels.cu`` + ``csrc/cuda/loss_cuda.cpp`` (CUDA) as ``hfkernels_ext::*`` ops:

- ``ssim_forward(x, y, window_size, sigma, c1, c2, same, save_coefs) -> (ssim (B,), coefs)``:
  ``coefs`` (B, C, 5, Ho, Wo) are the per-output-pixel derivatives the backward filters; they are
  only written when a gradient will be needed (otherwise an empty tensor).
- ``ssim_backward(grad (B,), x, y, coefs, window_size, sigma, same) -> (grad_x, grad_y)``.
- ``gradient_max_forward(a, b, f) -> 0-dim`` and
  ``gradient_max_backward(grad, a, b, f) -> (grad_a, grad_b, grad_f)``.

Under ``create_graph=True`` the backward differentiates the plain PyTorch formulation instead
(the kernels are first-order only; see :mod:`hfkernels.ops.loss_torch`). This module gives the
forward ops their autograd formula and fake (meta) implementation through
``torch.library`` and registers them with the backend registry. Without a built extension it
imports cleanly and registers nothing (``hfkernels.backends`` then says why).
"""
from __future__ import annotations

import torch

from .. import _ext
from ..backends import implements
from .loss_torch import gradient_max_reference_vjp, ssim_reference_vjp

_PADDINGS = ("valid", "same")


def _out_size(h: int, w: int, window_size: int, same: bool) -> tuple[int, int]:
    return (h, w) if same else (h - window_size + 1, w - window_size + 1)


def _coef_dtype(x: torch.Tensor) -> torch.dtype:
    # Half-precision inputs keep their backward coefficients in float32 (the CUDA kernels
    # accumulate in float32).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


if _ext.ERROR is None:
    _ops = torch.ops.hfkernels_ext

    # -- ssim ------------------------------------------------------------------------------

    @torch.library.register_fake("hfkernels_ext::ssim_forward")
    def _ssim_forward_fake(x, y, window_size, sigma, c1, c2, same, save_coefs):
        b, c, h, w = x.shape
        ho, wo = _out_size(h, w, window_size, same)
        coefs = (
            x.new_empty((b, c, 5, ho, wo), dtype=_coef_dtype(x))
            if save_coefs
            else x.new_empty((0,), dtype=_coef_dtype(x))
        )
        return x.new_empty((b,)), coefs

    @torch.library.register_fake("hfkernels_ext::ssim_backward")
    def _ssim_backward_fake(grad, x, y, coefs, window_size, sigma, same):
        return torch.empty_like(x), torch.empty_like(y)

    def _ssim_setup(ctx, inputs, output):
        x, y, window_size, sigma, c1, c2, same, _ = inputs
        _, coefs = output
        ctx.mark_non_differentiable(coefs)
        ctx.save_for_backward(x, y, coefs)
        ctx.args = (window_size, sigma, c1, c2, same)

    def _ssim_backward(ctx, grad, _grad_coefs):
        x, y, coefs = ctx.saved_tensors
        window_size, sigma, c1, c2, same = ctx.args
        if torch.is_grad_enabled():  # create_graph=True: the kernels are first-order only
            gx, gy = ssim_reference_vjp(grad, x, y, window_size, sigma, c1, c2, "same" if same else "valid")
            return gx, gy, None, None, None, None, None, None
        if coefs.numel() == 0 and x.numel() > 0:
            # The forward ran without saving (no input required grad at the time): recompute.
            _, coefs = _ops.ssim_forward(x, y, window_size, sigma, c1, c2, same, True)
        gx, gy = _ops.ssim_backward(grad, x, y, coefs, window_size, sigma, same)
        return gx, gy, None, None, None, None, None, None

    torch.library.register_autograd(
        "hfkernels_ext::ssim_forward", _ssim_backward, setup_context=_ssim_setup
    )

    def ssim_ext(
        x: torch.Tensor,
        y: torch.Tensor,
        window_size: int,
        sigma: float,
        c1: float,
        c2: float,
        padding: str,
    ) -> torch.Tensor:
        """Per-image mean SSIM, shape (B,), of x, y (B,C,H,W); ``window_size <= min(H, W)``."""
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        save = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
        value, _ = _ops.ssim_forward(
            x, y, int(window_size), float(sigma), float(c1), float(c2), padding == "same", save
        )
        return value

    # -- gradient_max ------------------------------------------------------------------------

    @torch.library.register_fake("hfkernels_ext::gradient_max_forward")
    def _gm_forward_fake(a, b, f):
        return f.new_empty(())

    @torch.library.register_fake("hfkernels_ext::gradient_max_backward")
    def _gm_backward_fake(grad, a, b, f):
        return torch.empty_like(a), torch.empty_like(b), torch.empty_like(f)

    def _gm_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _gm_backward(ctx, grad):
        a, b, f = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the kernels are first-order only
            return gradient_max_reference_vjp(grad, a, b, f)
        return _ops.gradient_max_backward(grad, a, b, f)

    torch.library.register_autograd(
        "hfkernels_ext::gradient_max_forward", _gm_backward, setup_context=_gm_setup
    )

    def gradient_max_ext(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """mean| |Sx f| - max(|Sx a|, |Sx b|) | + the same for Sy; a, b, f (B,C,H,W); 0-dim."""
        return _ops.gradient_max_forward(a, b, f)

    implements("ssim", "cpu", "cuda")(ssim_ext)
    implements("gradient_max", "cpu", "cuda")(gradient_max_ext)
