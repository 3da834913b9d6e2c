"""Reference ("torch") backend of the fusion ops, registered as torch.library custom ops.

``hfkernels::fuse_torch`` is opaque to autograd and torch.compile: its backward is another
custom op that differentiates the reference formulation with ``torch.func.vjp``, so gradcheck
and ``torch.compile(fullgraph=True)`` both work.

Double backward, for every backend: a backward kernel (this module's custom op, the C++ and
Triton ones) is first-order only. When autograd runs a backward with ``create_graph=True``
(grad mode is then on inside it), each backend's backward calls :func:`differentiable_vjp` on
the reference formulation instead, so the gradient it returns is itself differentiable and
gradgradcheck passes on every backend. Plain ``backward()`` keeps the fast kernels.
"""
from __future__ import annotations

import torch

from .. import reference as ref
from ..backends import implements


def differentiable_vjp(fn, grad, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``vjp(fn, inputs)(grad)`` recorded by autograd, so that it can be differentiated again.

    For a backward run under ``create_graph=True``: ``fn`` is a plain-PyTorch (reference)
    formulation of the op, ``inputs`` the saved inputs (connected to the outer graph where they
    require grad) and ``grad`` the incoming cotangent. Returns one gradient per input (zeros
    where ``fn`` does not use it).
    """
    with torch.enable_grad():
        xs = [t if t.requires_grad else t.detach().requires_grad_() for t in inputs]
        out = fn(*xs)
        gs = torch.autograd.grad(out, xs, grad, create_graph=True, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(gs, xs))


def fuse_reference_vjp(grad, vis, ir, mu, levels: int):
    """Differentiable gradients (vis, ir, mu) of ``fuse``, for any backend's double backward."""
    return differentiable_vjp(lambda a, b, m: ref.fuse(a, b, m, levels), grad, vis, ir, mu)


@torch.library.custom_op("hfkernels::fuse_torch", mutates_args=())
def fuse_torch(vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int) -> torch.Tensor:
    return ref.fuse(vis, ir, mu, levels).contiguous()


@fuse_torch.register_fake
def _(vis, ir, mu, levels):
    return vis.new_empty(vis.shape)


@torch.library.custom_op("hfkernels::fuse_torch_backward", mutates_args=())
def fuse_torch_backward(
    grad: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, vjp = torch.func.vjp(lambda a, b, m: ref.fuse(a, b, m, levels), vis, ir, mu)
    return tuple(g.contiguous() for g in vjp(grad))


@fuse_torch_backward.register_fake
def _(grad, vis, ir, mu, levels):
    return vis.new_empty(vis.shape), ir.new_empty(ir.shape), mu.new_empty(mu.shape)


def _setup(ctx, inputs, output):
    vis, ir, mu, levels = inputs
    ctx.save_for_backward(vis, ir, mu)
    ctx.levels = levels


def _backward(ctx, grad):
    vis, ir, mu = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the custom op below is first-order only
        return (*fuse_reference_vjp(grad, vis, ir, mu, ctx.levels), None)
    gv, gi, gm = fuse_torch_backward(grad, vis, ir, mu, ctx.levels)
    return gv, gi, gm, None


fuse_torch.register_autograd(_backward, setup_context=_setup)

implements("fuse", "torch")(lambda vis, ir, mu, levels: fuse_torch(vis, ir, mu, levels))
implements("laplacian_pyramid", "torch")(ref.laplacian_pyramid)
implements("reconstruct", "torch")(ref.reconstruct)
