"""C++/CUDA extension backends ("cpu", "cuda") of the fused pyramid fusion.

The kernels are the C++ ops ``torch.ops.hfkernels_ext.fuse`` and ``fuse_backward`` (schemas in
``csrc/cpu/fuse_cpu.cpp``; CPU kernels there, CUDA kernels in ``csrc/cuda/``). This module gives
them an autograd formula and fake (meta) implementations through ``torch.library``, so they work
with ``torch.autograd.gradcheck`` and ``torch.compile(fullgraph=True)``.

What autograd stores for the backward: only the three inputs (references, no copies); the
backward kernel recomputes the small pyramid levels it needs (see the C++ comments). Under
``create_graph=True`` the backward differentiates the reference instead (double backward; see
:mod:`hfkernels.ops.fuse_torch`).

When the extension is not built (``hfkernels._ext.ERROR``) or was built without these ops, this
module imports cleanly and registers nothing.
"""
from __future__ import annotations

import torch

from .. import _ext
from ..backends import implements
from .fuse_torch import fuse_reference_vjp


def _has_ops() -> bool:
    if _ext.ERROR is not None:
        return False
    try:
        ns = torch.ops.hfkernels_ext
        return hasattr(ns, "fuse") and hasattr(ns, "fuse_backward")
    except (AttributeError, RuntimeError):
        return False


AVAILABLE = _has_ops()


def _fake_fuse(vis, ir, mu, levels):
    # contiguous (B, C, H, W) in vis's dtype, as the kernels return
    return vis.new_empty(vis.shape)


def _fake_fuse_backward(grad, vis, ir, mu, levels):
    return vis.new_empty(vis.shape), ir.new_empty(ir.shape), mu.new_empty(mu.shape)


def _setup_context(ctx, inputs, output):
    vis, ir, mu, levels = inputs
    ctx.save_for_backward(vis, ir, mu)
    ctx.levels = levels


def _backward(ctx, grad):
    vis, ir, mu = ctx.saved_tensors
    need = ctx.needs_input_grad
    if not any(need[:3]):
        return None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: the kernel is first-order only
        return (*fuse_reference_vjp(grad, vis, ir, mu, ctx.levels), None)
    gv, gi, gm = torch.ops.hfkernels_ext.fuse_backward(grad, vis, ir, mu, ctx.levels)
    return (gv if need[0] else None), (gi if need[1] else None), (gm if need[2] else None), None


def fuse(vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int) -> torch.Tensor:
    """Fused pyramid fusion on the extension: vis (B,C,H,W), ir (B,1|C,H,W), mu (B,1,H,W) ->
    (B,C,H,W). Inputs are validated by :func:`hfkernels.fuse`; any strides are accepted."""
    return torch.ops.hfkernels_ext.fuse(vis, ir, mu, levels)


if AVAILABLE:
    torch.library.register_fake("hfkernels_ext::fuse")(_fake_fuse)
    torch.library.register_fake("hfkernels_ext::fuse_backward")(_fake_fuse_backward)
    torch.library.register_autograd("hfkernels_ext::fuse", _backward, setup_context=_setup_context)
    implements("fuse", "cpu", "cuda")(fuse)
