"""Reference ("torch") backend of the fusion ops, registered as torch.library custom ops.

``hfkernels::fuse_torch`` is opaque to autograd and torch.compile: its backward is another
custom op that differentiates the reference formulation with ``torch.func.vjp``, so gradcheck
and ``torch.compile(fullgraph=True)`` both work.
"""
from __future__ import annotations

import torch

from .. import reference as ref
from ..backends import implements


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
    gv, gi, gm = fuse_torch_backward(grad, vis, ir, mu, ctx.levels)
    return gv, gi, gm, None


fuse_torch.register_autograd(_backward, setup_context=_setup)

implements("fuse", "torch")(lambda vis, ir, mu, levels: fuse_torch(vis, ir, mu, levels))
implements("laplacian_pyramid", "torch")(ref.laplacian_pyramid)
implements("reconstruct", "torch")(ref.reconstruct)
