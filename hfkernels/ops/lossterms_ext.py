"""The elementwise terms of ``FusionLoss`` (intensity max, consistency, colour, and the lumas the
SSIM and gradient terms read) as one differentiable op, ``"lossterms"``, for the ``"cpu"``
backend (written in PyTorch; it sits beside the extension's SSIM and gradient kernels, whose
backend it serves). The reference composition is :mod:`.lossterms_torch`.

Why: composed from ATen ops these terms are about fifty small kernels forward and backward, each
a parallel region; on a CPU shared with other busy processes every region waits for a thread
that is not running, and libgomp spins while it waits (``GOMP_SPINCOUNT`` helps only if set
before torch loads, which ``import hfkernels`` cannot do once torch is imported). Here the
forward is one pass of a dozen vector ops and the backward is written out (a handful more), all in
a single-threaded region: the terms are memory-bound, so one thread costs little quiet and
nothing waits under load.

``lossterms(A, B, F, ir_compose) -> (max_term, consist, color, gA, gB, gF)``: A, B, F (N, 3, H, W)
(a 1-channel infrared image expanded to 3), float32 or float64; the three terms
are 0-dim, the lumas (N, 1, H, W). Values and gradients are those of
:func:`hfkernels.loss_reference.fusion_loss` (torch's conventions at the kinks of ``abs``:
subgradient 0; at ties of the max-intensity choice, A).
"""
from __future__ import annotations

import contextlib

import torch

from ..core import ext as _ext
from ..core import reference as ref
from ..core.backends import implements


@contextlib.contextmanager
def _one_thread():
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _luma_t(g: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`hfkernels.reference.luma`: (N, 1, H, W) -> (N, 3, H, W)."""
    w = torch.tensor(ref.LUMA, dtype=g.dtype)
    return g * w.view(1, 3, 1, 1)


class _LossTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, B, F, ir_compose):
        with _one_thread():
            gA, gB, gF = ref.luma(A), ref.luma(B), ref.luma(F)
            use_b = B.mean(1, keepdim=True) > A.mean(1, keepdim=True)
            d_max = F - torch.where(use_b, B, A)
            d1, d2 = gF - gA, gF - gB
            (cbA, crA), (cbF, crF) = ref.chroma(A), ref.chroma(F)
            d_cb, d_cr = cbF - cbA, crF - crA
            max_term = d_max.abs().mean()
            consist = (d1.abs().mean() + ir_compose * d2.abs().mean()) / 2
            color = d_cb.abs().mean() + d_cr.abs().mean()
            ctx.save_for_backward(use_b, d_max.sign(), d1.sign(), d2.sign(), d_cb.sign(), d_cr.sign())
        ctx.ir_compose = ir_compose
        return max_term, consist, color, gA, gB, gF

    @staticmethod
    def backward(ctx, g_max, g_cons, g_col, g_gA, g_gB, g_gF):
        use_b, s_max, s1, s2, s_cb, s_cr = ctx.saved_tensors
        ic = ctx.ir_compose
        with _one_thread():
            n3, n1 = s_max.numel(), s1.numel()
            e_max = s_max * (g_max / n3)  # d max_term / d F
            # luma-space gradients (N, 1, H, W) of F, A, B
            c1, c2 = s1 * (g_cons / (2 * n1)), s2 * (g_cons * ic / (2 * n1))
            lf, la, lb = c1 + c2, -c1, -c2
            if g_gF is not None:
                lf = lf + g_gF
            if g_gA is not None:
                la = la + g_gA
            if g_gB is not None:
                lb = lb + g_gB
            cb, cr = s_cb * (g_col / n1), s_cr * (g_col / n1)
            w_cb = torch.tensor(ref.CB, dtype=cb.dtype).view(1, 3, 1, 1)
            w_cr = torch.tensor(ref.CR, dtype=cr.dtype).view(1, 3, 1, 1)
            chroma_t = cb * w_cb + cr * w_cr
            dF = e_max + _luma_t(lf) + chroma_t
            dA = torch.where(use_b, 0.0, -e_max) + _luma_t(la) - chroma_t
            dB = torch.where(use_b, -e_max, 0.0) + _luma_t(lb)
        return dA, dB, dF, None


def lossterms_cpu(A, B, F, ir_compose: float):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (A, B, F)):
        return _LossTerms.apply(A, B, F, float(ir_compose))
    with torch.no_grad():
        return _LossTerms.forward(_NoCtx(), A, B, F, float(ir_compose))


class _NoCtx:
    def save_for_backward(self, *a):
        pass


# the "cpu" backend is the extension's: without it the backend registers nothing at all
if _ext.ERROR is None:
    implements("lossterms", "cpu")(lossterms_cpu)

__all__ = ["lossterms_cpu"]
