"""C++ extension backends ("cpu", "cuda") of the loss ops "ssim" and "gradient_max".

The kernels live in ``csrc/cpu/loss_cpu.cpp`` (CPU) and ``csrc/cuda/loss_kernels.cu`` +
``csrc/cuda/loss_cuda.cpp`` (CUDA) as ``hfkernels_ext::*`` ops (schemas in ``csrc/registry.cpp``):

- ``ssim_forward(x, y, taps, lo, window_size, c1, c2, same, save_coefs) -> (ssim (B,), coefs)``:
  ``taps``/``lo`` are the window's kept taps (:func:`hfkernels.ops.loss_torch.kept_taps`, the
  rule every backend shares); ``coefs`` (B, C, 5, Ho, Wo) are the per-output-pixel derivatives
  the backward filters; they are only written when a gradient will be needed (otherwise an
  empty tensor).
- ``ssim_backward(grad (B,), x, y, coefs, taps, lo, window_size, same) -> (grad_x, grad_y)``.
- ``gradient_max_forward(a, b, f) -> 0-dim`` and
  ``gradient_max_backward(grad, a, b, f) -> (grad_a, grad_b, grad_f)``.

What SSIM saves for backward (``x``, ``y`` and ``coefs``) and why is the same on every backend:
see :mod:`hfkernels.ops.loss_torch`. This module wires the ops for autograd (double backward
through the plain PyTorch formulation, as every backend: :mod:`hfkernels.ops._wiring`) and fake
tensors, and registers them with the backend registry. Without a built extension it
imports cleanly and registers nothing (``hfkernels.backends`` then says why).
"""
from __future__ import annotations

import torch

from ..core import ext as _ext
from ..core.backends import implements
from ._contracts import (
    accumulation_dtype,
    gradient_max_reference_vjp,
    kept_taps,
    saved_or_recomputed,
    ssim_autograd_kept,
    ssim_out_size,
)
from ._wiring import differentiable_vjp, wants_grad, wire

if _ext.ERROR is None:
    _ops = torch.ops.hfkernels_ext

    # -- ssim ------------------------------------------------------------------------------

    def _ssim_forward_fake(x, y, taps, lo, window_size, c1, c2, same, save_coefs):
        b, c, h, w = x.shape
        ho, wo = ssim_out_size(h, w, window_size, "same" if same else "valid")
        shape = (b, c, 5, ho, wo) if save_coefs else (0,)
        return x.new_empty((b,)), x.new_empty(shape, dtype=accumulation_dtype(x))

    def _ssim_backward(grad, x, y, coefs, taps, lo, window_size, c1, c2, same, save):
        coefs = saved_or_recomputed(
            coefs, x, lambda: _ops.ssim_forward(x, y, taps, lo, window_size, c1, c2, same, True)[1])
        return _ops.ssim_backward(grad, x, y, coefs, taps, lo, window_size, same)

    def _ssim_reference(grad, x, y, taps, lo, window_size, c1, c2, same, save):
        padding = "same" if same else "valid"
        fn = lambda a, b: ssim_autograd_kept(a, b, taps, lo, window_size, c1, c2, padding)  # noqa: E731
        return differentiable_vjp(fn, grad, x, y)

    wire("hfkernels_ext::ssim_forward", tensors=2, kernel=_ssim_backward, reference=_ssim_reference,
         fake=_ssim_forward_fake, backward_op="hfkernels_ext::ssim_backward")

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
        save = wants_grad(x, y)
        taps, lo = kept_taps(int(window_size), float(sigma), accumulation_dtype(x))
        value, _ = _ops.ssim_forward(
            x, y, list(taps), lo, int(window_size), float(c1), float(c2), padding == "same", save
        )
        return value

    # -- gradient_max ------------------------------------------------------------------------

    wire("hfkernels_ext::gradient_max_forward", tensors=3, kernel=_ops.gradient_max_backward,
         reference=gradient_max_reference_vjp, fake=lambda a, b, f: f.new_empty(()),
         backward_op="hfkernels_ext::gradient_max_backward")

    def gradient_max_ext(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """mean| |Sx f| - max(|Sx a|, |Sx b|) | + the same for Sy; a, b, f (B,C,H,W); 0-dim."""
        return _ops.gradient_max_forward(a, b, f)

    implements("ssim", "cpu", "cuda")(ssim_ext)
    implements("gradient_max", "cpu", "cuda")(gradient_max_ext)
