"""C++/CUDA extension backends ("cpu", "cuda") of the fused pyramid fusion.

The kernels are the C++ ops ``torch.ops.hfkernels_ext.fuse`` and ``fuse_backward`` (schemas in
``csrc/cpu/fuse_cpu.cpp``; CPU kernels there, CUDA kernels in ``csrc/cuda/``). This module gives
them an autograd formula and fake (meta) implementations through ``torch.library``, so they work
with ``torch.autograd.gradcheck`` and ``torch.compile(fullgraph=True)``.

What autograd stores for the backward: only the three inputs (references, no copies); the
backward kernel recomputes the small pyramid levels it needs (see the C++ comments). The
autograd wiring, double backward included, is :mod:`hfkernels.ops._wiring`'s.

When the extension is not built (``hfkernels._ext.ERROR``) or was built without these ops, this
module imports cleanly and registers nothing.
"""
from __future__ import annotations

import torch

from .. import _ext
from ..backends import implements
from ._wiring import wire
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


def fuse(vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int) -> torch.Tensor:
    """Fused pyramid fusion on the extension: vis (B,C,H,W), ir (B,1|C,H,W), mu (B,1,H,W) ->
    (B,C,H,W). Inputs are validated by :func:`hfkernels.fuse`; any strides are accepted."""
    return torch.ops.hfkernels_ext.fuse(vis, ir, mu, levels)


if AVAILABLE:
    wire(
        "hfkernels_ext::fuse", tensors=3, kernel=torch.ops.hfkernels_ext.fuse_backward,
        reference=fuse_reference_vjp, fake=lambda vis, ir, mu, levels: vis.new_empty(vis.shape),
        backward_op="hfkernels_ext::fuse_backward",
    )
    implements("fuse", "cpu", "cuda")(fuse)
