"""Reference backend of the op ``"lossterms"`` (FusionLoss's elementwise terms and lumas; see
:mod:`.lossterms_ext`): the plain composition of :func:`hfkernels.core.loss_reference.fusion_loss`,
differentiated by autograd."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import loss_reference as lref
from ..core.backends import implements


@implements("lossterms", "torch")
def lossterms_torch(A, B, F_, ir_compose: float):
    """A, B, F_ (N, 3, H, W) -> (max_term, consist, color, gA, gB, gF), as the released loss."""
    gA, gB, gF = lref.luma(A), lref.luma(B), lref.luma(F_)
    target = torch.where(B.mean(1, keepdim=True) > A.mean(1, keepdim=True), B, A)
    max_term = F.l1_loss(F_, target)
    consist = (F.l1_loss(gF, gA) + ir_compose * F.l1_loss(gF, gB)) / 2
    (cbA, crA), (cbF, crF) = lref.chroma(A), lref.chroma(F_)
    color = F.l1_loss(cbF, cbA) + F.l1_loss(crF, crA)
    return max_term, consist, color, gA, gB, gF


__all__ = ["lossterms_torch"]
