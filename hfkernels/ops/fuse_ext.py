"""C++/CUDA extension backends ("cpu", "cuda") of the fused pyramid fusion.

The kernels are the C++ ops ``torch.ops.hfkernels_ext.fuse`` and ``fuse_backward`` (schemas in
``csrc/registry.cpp``; CPU kernels in ``csrc/cpu/``, CUDA kernels in ``csrc/cuda/``). This module gives
them an autograd formula and fake (meta) implementations through ``torch.library``, so they work
with ``torch.autograd.gradcheck`` and ``torch.compile(fullgraph=True)``.

What autograd stores for the backward: only the three inputs (references, no copies); the
backward kernel recomputes the small pyramid levels it needs (see the C++ comments). The
autograd wiring, double backward included, is :mod:`hfkernels.ops._wiring`'s.

When the extension is not built (``hfkernels.core.ext.ERROR``), this module imports cleanly and
registers nothing (the extension always has every op of ``csrc/registry.cpp``: the build test
checks it).
"""
from __future__ import annotations

import torch

from ..core import ext as _ext
from ..core.backends import implements
from ._contracts import fuse_reference_vjp
from ._wiring import wire


def fuse(vis: torch.Tensor, ir: torch.Tensor, mu: torch.Tensor, levels: int) -> torch.Tensor:
    """Fused pyramid fusion on the extension: vis (B,C,H,W), ir (B,1|C,H,W), mu (B,1,H,W) ->
    (B,C,H,W). Inputs are validated by :func:`hfkernels.fuse`; any strides are accepted."""
    return torch.ops.hfkernels_ext.fuse(vis, ir, mu, levels)


if _ext.ERROR is None:
    wire(
        "hfkernels_ext::fuse", tensors=3, kernel=torch.ops.hfkernels_ext.fuse_backward,
        reference=fuse_reference_vjp, fake=lambda vis, ir, mu, levels: vis.new_empty(vis.shape),
        backward_op="hfkernels_ext::fuse_backward",
    )
    implements("fuse", "cpu", "cuda")(fuse)
