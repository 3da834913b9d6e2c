"""Reference ("torch") backend of the fusion ops, registered as torch.library custom ops.

``hfkernels::fuse_torch`` is opaque to autograd and torch.compile: its backward is another
custom op that differentiates the reference formulation with ``torch.func.vjp``, so gradcheck
and ``torch.compile(fullgraph=True)`` both work. Autograd saves the three inputs (references,
no copies). The wiring (and double backward through :func:`hfkernels.ops._contracts.fuse_reference_vjp`) is :mod:`hfkernels.ops._wiring`'s.
"""
from __future__ import annotations

import torch

from ..core import reference as ref
from ..core.backends import implements
from ._contracts import fuse_reference_vjp
from ._wiring import wire


@torch.library.custom_op("hfkernels::fuse_torch", mutates_args=())
def fuse_torch(vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int) -> torch.Tensor:
    return ref.fuse(vis, ir, mu, levels).contiguous()


@torch.library.custom_op("hfkernels::fuse_torch_backward", mutates_args=())
def fuse_torch_backward(
    grad: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, vjp = torch.func.vjp(lambda a, b, m: ref.fuse(a, b, m, levels), vis, ir, mu)
    return tuple(g.contiguous() for g in vjp(grad))


wire(
    fuse_torch, tensors=3, kernel=fuse_torch_backward, reference=fuse_reference_vjp,
    fake=lambda vis, ir, mu, levels: vis.new_empty(vis.shape), backward_op=fuse_torch_backward,
)

implements("fuse", "torch")(lambda vis, ir, mu, levels: fuse_torch(vis, ir, mu, levels))
implements("laplacian_pyramid", "torch")(ref.laplacian_pyramid)
implements("reconstruct", "torch")(ref.reconstruct)
